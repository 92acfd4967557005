//! Encrypted-inference routes: client contexts, the model registry, the
//! encrypt → infer → decrypt calls, and the original FHE service's one-call endpoint
//! `POST /v1/ml-zk/fhe/inference`.
//!
//! Ciphertexts travel as hex strings of a [`crate::inference::messages::Batch`]. Models are
//! registered as JSON (`{"layers":[…]}` or the original single-layer `{"weights","biases"}`)
//! or as a safetensors file ([`parse_safetensors`], a pure function).

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use libp2p::PeerId;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::error::{body_error, json_rejection};
use super::openapi::binary_body;
use super::{route, ApiError, ApiState, Route};
use crate::crypto::inference::model::MAX_LAYERS;
use crate::crypto::inference::{Activation, InferenceError, Layer, Model};
use crate::inference::messages::unhex;
use crate::inference::{
    map_legacy_scheme, ContextInfo, Decrypted, InferenceActorError, ModelInfo, ModelOptions,
    ModelSpec, Scheme,
};

/// Bodies and hex strings longer than this are converted off the async workers.
const INLINE_BYTES: usize = 1 << 20;

binary_body!(
    SafetensorsModel,
    "application/safetensors",
    "A safetensors file: tensors `<i>.weight` [outputs, inputs] and `<i>.bias` [outputs] (or \
     the same under `layers.`), F32, F64, F16 or BF16; its metadata's `activations` is a comma \
     list with one per layer, e.g. `relu,none` (all `none` when absent)."
);

/// Content types accepted for a safetensors model body.
pub const SAFETENSORS_CONTENT_TYPES: [&str; 3] = [
    "application/octet-stream",
    "application/safetensors",
    "application/x-safetensors",
];

/// The inference routes, all under `/v1` (the caller adds the token middleware).
pub fn routes() -> Vec<Route> {
    vec![
        route(Method::POST, "/v1/fhe/contexts", create_context),
        route(Method::GET, "/v1/fhe/contexts", list_contexts),
        route(Method::GET, "/v1/fhe/contexts/{id}", show_context),
        route(Method::DELETE, "/v1/fhe/contexts/{id}", delete_context),
        route(Method::POST, "/v1/models", add_model),
        route(Method::GET, "/v1/models", list_models),
        route(Method::GET, "/v1/models/{name}", show_model),
        route(Method::GET, "/v1/models/{name}/spec", model_spec),
        route(Method::POST, "/v1/fhe/encrypt", encrypt),
        route(Method::POST, "/v1/fhe/infer", infer),
        route(Method::POST, "/v1/fhe/decrypt", decrypt),
        route(Method::POST, "/v1/ml-zk/fhe/inference", legacy_inference),
    ]
}

impl From<InferenceActorError> for ApiError {
    fn from(e: InferenceActorError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = e.code(), error = %e, "inference request failed");
        }
        ApiError::new(status, e.code(), e.to_string())
    }
}

// --- request and answer shapes -------------------------------------------------------------

/// `POST /v1/fhe/contexts`
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContextRequest {
    /// `linear`, `mlp`, or a scheme of the original service (`ckks`, `bfv`, `concrete`).
    pub scheme: String,
    /// The original service's provider (`tenseal`, `concrete`); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The original service's provider parameters (e.g. TenSEAL's `poly_modulus_degree`):
    /// accepted and ignored, fhenode always uses its vetted parameter set (named in the
    /// answer's `params`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub params: Option<serde_json::Value>,
}

/// `POST /v1/fhe/encrypt`
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    pub fhe_context_id: String,
    pub model: String,
    /// The model node's peer id (absent: this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Input rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_data: Option<Vec<Vec<f32>>>,
    /// One input row (instead of `input_data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Vec<f32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EncryptResponse {
    pub fhe_context_id: String,
    /// Hex of a ciphertext batch, one ciphertext per row.
    pub ciphertext: String,
    pub rows: usize,
}

/// `POST /v1/fhe/infer`
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    pub fhe_context_id: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Hex, as `/v1/fhe/encrypt` answered it.
    pub ciphertext: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferResponse {
    pub fhe_context_id: String,
    /// Hex of the result batch; only the context's node can decrypt it.
    pub encrypted_result: String,
    /// `[rows, outputs]`
    pub result_shape: [usize; 2],
    /// Evaluation time on the model node.
    pub computation_time_ms: f64,
    /// Programmable bootstraps run (mlp).
    pub pbs: u64,
    /// The model node (`null`: this node).
    pub peer: Option<String>,
}

/// `POST /v1/fhe/decrypt`
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptRequest {
    pub fhe_context_id: String,
    pub encrypted_result: String,
}

/// The original service's answer to `POST /v1/ml-zk/fhe/inference`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
// Its name in the OpenAPI document, which predates the Rust name.
#[schema(as = SeedInferenceResponse)]
pub struct LegacyInferenceResponse {
    pub fhe_context_id: String,
    pub encrypted_result: String,
    pub result_shape: [usize; 2],
    pub computation_time_ms: f64,
}

/// The original service's request (extra fields are ignored, as the original did).
#[derive(Clone, Debug, Deserialize, ToSchema)]
// Its name in the OpenAPI document, which predates the Rust name.
#[schema(as = SeedInferenceRequest)]
struct LegacyInferenceRequest {
    scheme: String,
    #[serde(default)]
    provider: Option<String>,
    input_data: Vec<Vec<f32>>,
    #[schema(inline)]
    model: LegacyModel,
    /// Reuse this context instead of creating one.
    #[serde(default)]
    fhe_context_id: Option<String>,
}

/// A model inline: `layers`, or one layer's `weights`, `biases` and `activation`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
// Its name in the OpenAPI document, which predates the Rust name.
#[schema(as = SeedModel)]
struct LegacyModel {
    #[serde(default)]
    layers: Option<Vec<LayerBody>>,
    #[serde(default)]
    weights: Option<Vec<Vec<f32>>>,
    #[serde(default)]
    biases: Option<Vec<f32>>,
    #[serde(default, deserialize_with = "de_activation")]
    activation: Option<Activation>,
}

/// `POST /v1/models` as JSON: a model (`layers`, or one layer's `weights`/`biases`/
/// `activation`), its name, and how it is compiled.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    layers: Option<Vec<LayerBody>>,
    #[serde(default)]
    weights: Option<Vec<Vec<f32>>>,
    #[serde(default)]
    biases: Option<Vec<f32>>,
    #[serde(default, deserialize_with = "de_activation")]
    activation: Option<Activation>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    input_bound: Option<f64>,
    #[serde(default)]
    #[schema(value_type = Option<[f32; 2]>, min_items = 2, max_items = 2)]
    input_range: Option<(f32, f32)>,
    #[serde(default)]
    calibration: Vec<Vec<f32>>,
}

/// A layer as JSON: the crypto layer's shape, with an activation also accepted by name.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Layer)]
struct LayerBody {
    weights: Vec<Vec<f32>>,
    biases: Vec<f32>,
    #[serde(default, deserialize_with = "de_activation")]
    activation: Option<Activation>,
}

impl From<LayerBody> for Layer {
    fn from(l: LayerBody) -> Layer {
        Layer {
            weights: l.weights,
            biases: l.biases,
            activation: l.activation.unwrap_or_default(),
        }
    }
}

/// An activation by name: `none` (also `identity`, `linear`), `relu`, `sigmoid`.
pub fn activation_by_name(name: &str) -> Result<Activation, String> {
    match name.trim().to_ascii_lowercase().as_str() {
        "" | "none" | "identity" | "linear" => Ok(Activation::None),
        "relu" => Ok(Activation::Relu),
        "sigmoid" => Ok(Activation::Sigmoid),
        other => Err(format!(
            "unknown activation `{other}`; use none, relu, sigmoid, or \
             {{\"kind\":\"table\",\"min\",\"max\",\"values\"}}"
        )),
    }
}

/// An activation as the API reads it ([`de_activation`]): a name, or the crypto layer's shape.
impl PartialSchema for Activation {
    fn schema() -> RefOr<Schema> {
        let name = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["none", "identity", "linear", "relu", "sigmoid"]));
        let kind = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["none", "relu", "sigmoid", "table"]));
        let number = || ObjectBuilder::new().schema_type(Type::Number);
        let tagged = ObjectBuilder::new()
            .property("kind", kind)
            .required("kind")
            .property(
                "min",
                number().description(Some("table: the lowest input.")),
            )
            .property(
                "max",
                number().description(Some("table: the highest input.")),
            )
            .property(
                "values",
                utoipa::openapi::schema::ArrayBuilder::new()
                    .items(number())
                    .description(Some(
                        "table: the outputs at evenly spaced inputs from `min` to `max`.",
                    )),
            );
        OneOfBuilder::new()
            .item(name)
            .item(tagged)
            .description(Some(
                "By name (`none`, also `identity` or `linear`; `relu`; `sigmoid`), or as \
                 `{\"kind\": \"none\"|\"relu\"|\"sigmoid\"}` or \
                 `{\"kind\": \"table\", \"min\", \"max\", \"values\"}`.",
            ))
            .into()
    }
}

impl ToSchema for Activation {
    fn name() -> std::borrow::Cow<'static, str> {
        "Activation".into()
    }
}

/// An activation as a name (`"relu"`) or in the crypto layer's shape (`{"kind":"relu"}`).
fn de_activation<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Activation>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(name)) => activation_by_name(&name)
            .map(Some)
            .map_err(D::Error::custom),
        Some(other) => serde_json::from_value(other)
            .map(Some)
            .map_err(|e| D::Error::custom(format!("invalid activation: {e}"))),
    }
}

/// Builds a model from `layers`, or from one layer's `weights` and `biases`.
fn build_model(
    layers: Option<Vec<LayerBody>>,
    weights: Option<Vec<Vec<f32>>>,
    biases: Option<Vec<f32>>,
    activation: Option<Activation>,
) -> Result<Model, ApiError> {
    match (layers, weights, biases) {
        (Some(layers), None, None) if activation.is_none() => Ok(Model {
            layers: layers.into_iter().map(Layer::from).collect(),
        }),
        (Some(_), _, _) => Err(bad_input(
            "give either `layers` or one layer's `weights` and `biases`, not both",
        )),
        (None, Some(weights), Some(biases)) => Ok(Model {
            layers: vec![Layer {
                weights,
                biases,
                activation: activation.unwrap_or_default(),
            }],
        }),
        (None, _, _) => Err(bad_input(
            "a model needs `layers`, or `weights` (outputs × inputs) and `biases`",
        )),
    }
}

/// A model's scheme by fhenode's or the original service's name.
fn parse_scheme(name: &str, provider: Option<&str>) -> Result<Scheme, ApiError> {
    Ok(map_legacy_scheme(name, provider)?)
}

fn bad_input(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_input", message)
}

fn bad_json(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_json", message)
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>, state: &ApiState) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| json_rejection(e, state.max_body_bytes))
}

fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

/// A peer id from a request, `None` when absent or empty.
pub fn parse_peer(peer: Option<&str>) -> Result<Option<PeerId>, ApiError> {
    match peer.map(str::trim) {
        None | Some("") => Ok(None),
        Some(p) => PeerId::from_str(p)
            .map(Some)
            .map_err(|e| bad_input(format!("`{p}` is not a peer id: {e}"))),
    }
}

/// Parses hex off the async workers when it is long.
async fn unhex_body(text: String, what: &str) -> Result<Vec<u8>, ApiError> {
    let parsed = if text.len() <= INLINE_BYTES {
        unhex(&text)
    } else {
        super::off_executor(move || unhex(&text)).await?
    };
    parsed.map_err(|e| bad_input(format!("`{what}`: {e}")))
}

async fn hex_answer(bytes: Vec<u8>) -> Result<String, ApiError> {
    if bytes.len() <= INLINE_BYTES / 2 {
        Ok(hex::encode(&bytes))
    } else {
        super::off_executor(move || hex::encode(&bytes)).await
    }
}

// --- contexts ------------------------------------------------------------------------------

/// Create a client context: parameters and a fresh key (the secret key never leaves this node).
#[utoipa::path(
    post,
    path = "/v1/fhe/contexts",
    operation_id = "create_context",
    tag = "inference",
    request_body = CreateContextRequest,
    responses(
        (status = 201, description = "Created; `Location` names the context.", body = ContextInfo,
            headers(("location" = String, description = "`/v1/fhe/contexts/{id}`"))),
        (status = 400, description = "`bad_json`, or `unsupported_scheme` (the message lists the supported schemes and providers).", body = ApiError),
        (status = 413, description = "`payload_too_large`.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/json`.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn create_context(
    State(state): State<ApiState>,
    body: Result<Json<CreateContextRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(body, &state)?;
    let scheme = parse_scheme(&request.scheme, request.provider.as_deref())?;
    if request.params.is_some() {
        tracing::debug!("context parameters of the original service ignored");
    }
    let info = state.inference.create_context(scheme).await?;
    Ok(super::created(
        &info,
        &format!("/v1/fhe/contexts/{}", info.fhe_context_id),
    ))
}

/// `GET /v1/fhe/contexts`
#[derive(Serialize, ToSchema)]
struct ContextList {
    contexts: Vec<ContextInfo>,
}

/// This node's contexts.
#[utoipa::path(
    get,
    path = "/v1/fhe/contexts",
    operation_id = "list_contexts",
    tag = "inference",
    responses(
        (status = 200, description = "The contexts.", body = ContextList),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn list_contexts(State(state): State<ApiState>) -> Result<Json<ContextList>, ApiError> {
    let contexts = state.inference.list_contexts().await?;
    Ok(Json(ContextList { contexts }))
}

async fn find_context(state: &ApiState, id: &str) -> Result<ContextInfo, ApiError> {
    state
        .inference
        .list_contexts()
        .await?
        .into_iter()
        .find(|c| c.fhe_context_id == id)
        .ok_or_else(|| InferenceActorError::UnknownContext(id.to_string()).into())
}

/// One context.
#[utoipa::path(
    get,
    path = "/v1/fhe/contexts/{id}",
    operation_id = "get_context",
    tag = "inference",
    params(("id" = String, Path, description = "The context id (`fhe_context_id`).")),
    responses(
        (status = 200, description = "The context.", body = ContextInfo),
        (status = 404, description = "`unknown_context`.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn show_context(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ContextInfo>, ApiError> {
    let id = path_param(path)?;
    Ok(Json(find_context(&state, &id).await?))
}

/// Delete a context and its keys.
#[utoipa::path(
    delete,
    path = "/v1/fhe/contexts/{id}",
    operation_id = "delete_context",
    tag = "inference",
    params(("id" = String, Path, description = "The context id (`fhe_context_id`).")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`unknown_context`.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn delete_context(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_param(path)?;
    state.inference.delete_context(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- models --------------------------------------------------------------------------------

/// `?name=&scheme=&input_bound=` of a model upload (safetensors bodies carry no JSON).
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ModelQuery {
    /// The model's name (required for a safetensors body; a JSON body may carry it instead).
    #[serde(default)]
    pub name: Option<String>,
    /// `linear` or `mlp` (or an original name such as `ckks`); overrides the body's.
    #[serde(default)]
    pub scheme: Option<String>,
    /// linear: every input satisfies |x| ≤ input_bound; overrides the body's.
    #[serde(default)]
    pub input_bound: Option<f64>,
    /// Replace a model of the same name (without it, such a model is a `409 duplicate`).
    #[serde(default)]
    pub replace: bool,
}

/// How a model body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    Json,
    Safetensors,
}

/// The model format named by a `Content-Type` header (parameters ignored).
pub fn model_format(content_type: Option<&str>) -> Result<ModelFormat, ApiError> {
    let unsupported = |message: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    };
    const SUPPORTED: &str =
        "application/json, or a safetensors file as application/octet-stream or application/safetensors";
    let Some(content_type) = content_type else {
        return Err(unsupported(format!(
            "a Content-Type is required: {SUPPORTED}"
        )));
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" {
        Ok(ModelFormat::Json)
    } else if SAFETENSORS_CONTENT_TYPES.contains(&essence.as_str()) {
        Ok(ModelFormat::Safetensors)
    } else {
        Err(unsupported(format!(
            "Content-Type `{content_type}` is not supported for models; use {SUPPORTED}"
        )))
    }
}

/// What a model upload registers: a name, the float model and its compile options.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelUpload {
    pub name: String,
    pub model: Model,
    pub options: ModelOptions,
}

/// Parses a model upload body (pure): JSON or safetensors, with the query's name and options.
pub fn parse_model_upload(
    format: ModelFormat,
    query: &ModelQuery,
    body: &[u8],
) -> Result<ModelUpload, ApiError> {
    let scheme = query
        .scheme
        .as_deref()
        .map(|s| parse_scheme(s, None))
        .transpose()?;
    match format {
        ModelFormat::Json => {
            let b: ModelBody = serde_json::from_slice(body).map_err(|e| bad_json(e.to_string()))?;
            let name = match (b.name, &query.name) {
                (Some(a), Some(q)) if &a != q => {
                    return Err(bad_input(format!(
                        "the body names the model `{a}`, the query `{q}`"
                    )))
                }
                (Some(a), _) => a,
                (None, Some(q)) => q.clone(),
                (None, None) => {
                    return Err(bad_input(
                        "a model needs a name: `name` in the body or `?name=`",
                    ))
                }
            };
            let model = build_model(b.layers, b.weights, b.biases, b.activation)?;
            let body_scheme = b
                .scheme
                .as_deref()
                .map(|s| parse_scheme(s, None))
                .transpose()?;
            Ok(ModelUpload {
                name,
                model,
                options: ModelOptions {
                    scheme: scheme.or(body_scheme),
                    input_bound: query.input_bound.or(b.input_bound),
                    input_range: b.input_range,
                    calibration: b.calibration,
                },
            })
        }
        ModelFormat::Safetensors => {
            let name = query
                .name
                .clone()
                .ok_or_else(|| bad_input("a safetensors model needs its name in `?name=`"))?;
            Ok(ModelUpload {
                name,
                model: parse_safetensors(body)?,
                options: ModelOptions {
                    scheme,
                    input_bound: query.input_bound,
                    ..ModelOptions::default()
                },
            })
        }
    }
}

fn invalid_layer(layer: usize, reason: String) -> ApiError {
    InferenceActorError::Crypto(InferenceError::InvalidLayer { layer, reason }).into()
}

/// A tensor's values as `f32` (from F32, F64, F16 or BF16).
fn tensor_values(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, ApiError> {
    let values = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(bad_input(format!(
                "tensor `{name}` is {other:?}; use F32, F64, F16 or BF16"
            )))
        }
    };
    Ok(values)
}

/// Which layer and part a tensor name holds: `<i>.weight`, `<i>.bias`, or the same under
/// `layers.`.
fn tensor_slot(name: &str) -> Option<(usize, bool)> {
    let rest = name.strip_prefix("layers.").unwrap_or(name);
    let (index, part) = rest.split_once('.')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || index.len() > 6 {
        return None;
    }
    let index: usize = index.parse().ok()?;
    match part {
        "weight" => Some((index, true)),
        "bias" => Some((index, false)),
        _ => None,
    }
}

/// A model from a safetensors file: tensors `<i>.weight` (`[outputs, inputs]`) and
/// `<i>.bias` (`[outputs]`, zeros when absent), also accepted under `layers.<i>.`;
/// activations from the metadata key `activations`, a comma list with one per layer
/// (`relu,none`; all `none` when the key is absent).
pub fn parse_safetensors(bytes: &[u8]) -> Result<Model, ApiError> {
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad_input(format!("not a safetensors file: {e}")))?;
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| bad_input(format!("not a safetensors file: {e}")))?;
    // Layer index → (weight, bias) as (shape, values).
    type Part = Option<(Vec<usize>, Vec<f32>)>;
    let mut layers: BTreeMap<usize, (Part, Part)> = BTreeMap::new();
    for (name, view) in tensors.iter() {
        let (index, is_weight) = tensor_slot(name).ok_or_else(|| {
            bad_input(format!(
                "tensor `{name}` is not `<i>.weight` or `<i>.bias` (or `layers.<i>.weight` / `layers.<i>.bias`)"
            ))
        })?;
        if index >= MAX_LAYERS {
            return Err(bad_input(format!(
                "tensor `{name}`: layer {index} is beyond the limit of {MAX_LAYERS} layers"
            )));
        }
        let values = tensor_values(name, view.dtype(), view.data())?;
        let entry = layers.entry(index).or_default();
        let slot = if is_weight {
            &mut entry.0
        } else {
            &mut entry.1
        };
        if slot.is_some() {
            return Err(invalid_layer(
                index,
                format!("tensor `{name}` duplicates another name for the same tensor"),
            ));
        }
        *slot = Some((view.shape().to_vec(), values));
    }
    if layers.is_empty() {
        return Err(InferenceActorError::Crypto(InferenceError::InvalidModel(
            "the safetensors file holds no `<i>.weight` tensor".into(),
        ))
        .into());
    }
    let count = layers.len();
    let activations: Vec<Activation> = match metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("activations"))
    {
        None => vec![Activation::None; count],
        Some(list) => {
            let parsed = list
                .split(',')
                .map(activation_by_name)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad_input(format!("metadata `activations`: {e}")))?;
            if parsed.len() != count {
                return Err(bad_input(format!(
                    "metadata `activations` names {} activation(s) for {count} layer(s)",
                    parsed.len()
                )));
            }
            parsed
        }
    };
    let mut model = Model { layers: Vec::new() };
    for ((index, (weight, bias)), activation) in layers.into_iter().zip(activations) {
        let expected = model.layers.len();
        if index != expected {
            return Err(invalid_layer(
                expected,
                format!("no `{expected}.weight` tensor (the next layer found is {index})"),
            ));
        }
        let Some((shape, values)) = weight else {
            return Err(invalid_layer(index, format!("no `{index}.weight` tensor")));
        };
        let [outputs, inputs] = shape[..] else {
            return Err(invalid_layer(
                index,
                format!("weight has shape {shape:?}; expected [outputs, inputs]"),
            ));
        };
        if outputs == 0 || inputs == 0 {
            return Err(invalid_layer(
                index,
                format!("weight has shape {shape:?}; both dimensions must be positive"),
            ));
        }
        let weights: Vec<Vec<f32>> = values.chunks_exact(inputs).map(<[f32]>::to_vec).collect();
        let biases = match bias {
            None => vec![0.0; outputs],
            Some((shape, values)) => {
                if shape.len() != 1 {
                    return Err(invalid_layer(
                        index,
                        format!("bias has shape {shape:?}; expected [{outputs}]"),
                    ));
                }
                values
            }
        };
        model.layers.push(Layer {
            weights,
            biases,
            activation,
        });
    }
    model.validate().map_err(InferenceActorError::from)?;
    Ok(model)
}

/// Register a model: JSON, or a safetensors file with its name in `?name=`; a model of the
/// same name is replaced only with `?replace=true`.
#[utoipa::path(
    post,
    path = "/v1/models",
    operation_id = "register_model",
    tag = "inference",
    params(ModelQuery),
    request_body(
        description = "The model.",
        content(
            (ModelBody = "application/json"),
            (inline(SafetensorsModel) = "application/safetensors"),
            (inline(SafetensorsModel) = "application/x-safetensors"),
            (inline(SafetensorsModel) = "application/octet-stream"),
        )
    ),
    responses(
        (status = 201, description = "Registered; `Location` names the model.", body = ModelInfo,
            headers(("location" = String, description = "`/v1/models/{name}`"))),
        (status = 400, description = "`bad_json`, `bad_input`, `bad_request` (a query parameter), `unsupported_scheme`, or `invalid_model` (the message names the layer).", body = ApiError),
        (status = 409, description = "`duplicate`: a model of this name exists (use `?replace=true`).", body = ApiError),
        (status = 413, description = "`payload_too_large`.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn add_model(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ModelQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the Content-Type header is not valid text",
            )
        })?),
    };
    let format = model_format(content_type)?;
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let body = body.map_err(|e| body_error(e.status(), e.body_text(), state.max_body_bytes))?;
    let replace = query.replace;
    let upload = if body.len() <= INLINE_BYTES {
        parse_model_upload(format, &query, &body)?
    } else {
        super::off_executor(move || parse_model_upload(format, &query, &body)).await??
    };
    let info = state
        .inference
        .add_model(&upload.name, upload.model, upload.options, replace)
        .await?;
    Ok(super::created(&info, &format!("/v1/models/{}", info.name)))
}

/// `GET /v1/models`
#[derive(Serialize, ToSchema)]
struct ModelList {
    models: Vec<ModelInfo>,
}

/// The models registered on this node.
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "list_models",
    tag = "inference",
    responses(
        (status = 200, description = "The models.", body = ModelList),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn list_models(State(state): State<ApiState>) -> Result<Json<ModelList>, ApiError> {
    let models = state.inference.list_models().await?;
    Ok(Json(ModelList { models }))
}

/// One registered model.
#[utoipa::path(
    get,
    path = "/v1/models/{name}",
    operation_id = "get_model",
    tag = "inference",
    params(("name" = String, Path, description = "The model's name.")),
    responses(
        (status = 200, description = "The model.", body = ModelInfo),
        (status = 404, description = "`unknown_model`.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn show_model(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelInfo>, ApiError> {
    let name = path_param(path)?;
    state
        .inference
        .list_models()
        .await?
        .into_iter()
        .find(|m| m.name == name)
        .map(Json)
        .ok_or_else(|| InferenceActorError::UnknownModel(name).into())
}

/// `?peer=` of `GET /v1/models/{name}/spec`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SpecQuery {
    /// The model node's peer id (absent: this node).
    #[serde(default)]
    pub peer: Option<String>,
}

/// A model's scheme, parameter set and inputs, from this node or a peer.
///
/// `GET /v1/models/{name}/spec[?peer=PEER_ID]`: the scheme, parameter set and inputs of a model
/// on this node or, with `peer`, as that node tells them over libp2p: what a client needs to
/// make a context for a model it cannot list.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/spec",
    operation_id = "get_model_spec",
    tag = "inference",
    params(("name" = String, Path, description = "The model's name."), SpecQuery),
    responses(
        (status = 200, description = "The model's spec.", body = ModelSpec),
        (status = 400, description = "`bad_input` (a bad peer id) or `bad_request` (an unknown query parameter).", body = ApiError),
        (status = 404, description = "`unknown_model` (on this node, or on the peer).", body = ApiError),
        (status = 502, description = "`remote` or `unreachable`: the model node failed.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn model_spec(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<SpecQuery>, QueryRejection>,
) -> Result<Json<ModelSpec>, ApiError> {
    let name = path_param(path)?;
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let peer = parse_peer(query.peer.as_deref())?;
    Ok(Json(state.inference.model_spec(&name, peer).await?))
}

// --- encrypted calls -----------------------------------------------------------------------

/// The input rows of a request: `input_data` (rows) or `input` (one row), not both.
fn input_rows(
    input_data: Option<Vec<Vec<f32>>>,
    input: Option<Vec<f32>>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    match (input_data, input) {
        (Some(rows), None) => Ok(rows),
        (None, Some(row)) => Ok(vec![row]),
        (Some(_), Some(_)) => Err(bad_input(
            "give `input_data` (rows) or `input` (one row), not both",
        )),
        (None, None) => Err(bad_input(
            "`input_data` (rows) or `input` (one row) is required",
        )),
    }
}

/// Encrypt input rows under a context of this node for a model (here or on `peer`).
#[utoipa::path(
    post,
    path = "/v1/fhe/encrypt",
    operation_id = "encrypt",
    tag = "inference",
    request_body = EncryptRequest,
    responses(
        (status = 200, description = "The ciphertext batch.", body = EncryptResponse),
        (status = 400, description = "`bad_json`, `bad_input` (a bad peer id, no input), `wrong_shape` (input length), `wrong_context` (the context's and the model's schemes differ), `crypto` (an input outside the model's bound).", body = ApiError),
        (status = 404, description = "`unknown_context` or `unknown_model`.", body = ApiError),
        (status = 413, description = "`payload_too_large`.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/json`.", body = ApiError),
        (status = 502, description = "`remote` or `unreachable`: the model node failed.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn encrypt(
    State(state): State<ApiState>,
    body: Result<Json<EncryptRequest>, JsonRejection>,
) -> Result<Json<EncryptResponse>, ApiError> {
    let request = json_body(body, &state)?;
    let peer = parse_peer(request.peer.as_deref())?;
    let rows = input_rows(request.input_data, request.input)?;
    let count = rows.len();
    let batch = state
        .inference
        .encrypt(&request.fhe_context_id, &request.model, peer, rows)
        .await?;
    Ok(Json(EncryptResponse {
        fhe_context_id: request.fhe_context_id,
        ciphertext: hex_answer(batch).await?,
        rows: count,
    }))
}

/// Evaluate a model on a ciphertext batch, here or on `peer`: ciphertext in, ciphertext out.
///
/// With `peer`, the context's evaluation key is uploaded to that node first when it lacks it.
#[utoipa::path(
    post,
    path = "/v1/fhe/infer",
    operation_id = "infer",
    tag = "inference",
    request_body = InferRequest,
    responses(
        (status = 200, description = "The encrypted result.", body = InferResponse),
        (status = 400, description = "`bad_json`, `bad_input` (bad hex, a malformed batch, a bad peer id), `wrong_context` (a ciphertext made under another context), `crypto` (a ciphertext made for another model).", body = ApiError),
        (status = 404, description = "`unknown_context` or `unknown_model`.", body = ApiError),
        (status = 413, description = "`payload_too_large`, or `over_budget` (the evaluation key would not fit the model node's memory budget).", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/json`.", body = ApiError),
        (status = 502, description = "`remote` or `unreachable`: the model node failed.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn infer(
    State(state): State<ApiState>,
    body: Result<Json<InferRequest>, JsonRejection>,
) -> Result<Json<InferResponse>, ApiError> {
    let request = json_body(body, &state)?;
    let peer = parse_peer(request.peer.as_deref())?;
    let batch = unhex_body(request.ciphertext, "ciphertext").await?;
    let outcome = state
        .inference
        .infer(&request.fhe_context_id, &request.model, peer, batch)
        .await?;
    Ok(Json(InferResponse {
        fhe_context_id: request.fhe_context_id,
        encrypted_result: hex_answer(outcome.encrypted_result).await?,
        result_shape: outcome.result_shape,
        computation_time_ms: outcome.computation_time_ms,
        pbs: outcome.pbs,
        peer: outcome.peer,
    }))
}

/// Decrypt an encrypted result with its context's key.
#[utoipa::path(
    post,
    path = "/v1/fhe/decrypt",
    operation_id = "decrypt",
    tag = "inference",
    request_body = DecryptRequest,
    responses(
        (status = 200, description = "The values.", body = Decrypted),
        (status = 400, description = "`bad_json`, `bad_input` (bad hex, a malformed batch), `wrong_context` (a result made under another context).", body = ApiError),
        (status = 404, description = "`unknown_context`.", body = ApiError),
        (status = 413, description = "`payload_too_large`.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/json`.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn decrypt(
    State(state): State<ApiState>,
    body: Result<Json<DecryptRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(body, &state)?;
    let batch = unhex_body(request.encrypted_result, "encrypted_result").await?;
    let decrypted = state
        .inference
        .decrypt(&request.fhe_context_id, batch)
        .await?;
    Ok(Json(decrypted).into_response())
}

/// The original FHE service's one call: encrypt, evaluate an inline model, answer ciphertext.
///
/// `POST /v1/ml-zk/fhe/inference`: the original service's one call. Creates a context of the
/// mapped scheme (or reuses `fhe_context_id`), encrypts `input_data` under it, evaluates the
/// inline model on this node, and answers the encrypted result; `/v1/fhe/decrypt` with the
/// context id opens it.
#[utoipa::path(
    post,
    path = "/v1/ml-zk/fhe/inference",
    operation_id = "run_seed_inference",
    tag = "inference",
    request_body = LegacyInferenceRequest,
    responses(
        (status = 200, description = "The encrypted result; `/v1/fhe/decrypt` with the context id opens it.", body = LegacyInferenceResponse),
        (status = 400, description = "`bad_json`, `bad_input`, `unsupported_scheme` (the message lists the supported schemes and providers), `invalid_model` (the message names the layer), `wrong_shape`, `wrong_context`.", body = ApiError),
        (status = 404, description = "`unknown_context` (`fhe_context_id` given but unknown).", body = ApiError),
        (status = 413, description = "`payload_too_large`.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/json`.", body = ApiError),
        (status = 503, description = "`unavailable`: the inference actor is not running.", body = ApiError),
    )
)]
async fn legacy_inference(
    State(state): State<ApiState>,
    body: Result<Json<LegacyInferenceRequest>, JsonRejection>,
) -> Result<Json<LegacyInferenceResponse>, ApiError> {
    let request = json_body(body, &state)?;
    let scheme = parse_scheme(&request.scheme, request.provider.as_deref())?;
    let m = request.model;
    let model = build_model(m.layers, m.weights, m.biases, m.activation)?;
    // Refuse what cannot work before making a context for it.
    model.validate().map_err(InferenceActorError::from)?;
    let rows = request.input_data;
    if rows.is_empty() {
        return Err(bad_input("`input_data` holds no rows"));
    }
    if let Some((i, row)) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != model.inputs())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "wrong_shape",
            format!(
                "input row {i} has {} values, the model expects {}",
                row.len(),
                model.inputs()
            ),
        ));
    }
    let (context, created) = match request.fhe_context_id {
        Some(id) => {
            let info = find_context(&state, &id).await?;
            if info.scheme != scheme {
                return Err(InferenceActorError::WrongContext(format!(
                    "context `{id}` is {}; scheme `{}` maps to {scheme}",
                    info.scheme, request.scheme
                ))
                .into());
            }
            (id, false)
        }
        None => (
            state.inference.create_context(scheme).await?.fhe_context_id,
            true,
        ),
    };
    let outcome = match state
        .inference
        .infer_inline(&context, model, ModelOptions::default(), rows)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            if created {
                // Nobody can use a context whose id was never handed out.
                let _ = state.inference.delete_context(&context).await;
            }
            return Err(e.into());
        }
    };
    Ok(Json(LegacyInferenceResponse {
        fhe_context_id: context,
        encrypted_result: hex_answer(outcome.encrypted_result).await?,
        result_shape: outcome.result_shape,
        computation_time_ms: outcome.computation_time_ms,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn st(tensors: &[(&str, Vec<usize>, Vec<f32>)], activations: Option<&str>) -> Vec<u8> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let meta = activations.map(|a| HashMap::from([("activations".to_string(), a.to_string())]));
        safetensors::serialize(views, meta).unwrap()
    }

    fn message(r: Result<Model, ApiError>) -> (u16, &'static str, String) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.code, e.message)
    }

    #[test]
    fn safetensors_models_parse() {
        let body = st(
            &[
                ("0.weight", vec![2, 3], vec![1., 2., 3., 4., 5., 6.]),
                ("0.bias", vec![2], vec![0.5, -0.5]),
                ("layers.1.weight", vec![1, 2], vec![1., -1.]),
            ],
            Some("relu, none"),
        );
        let m = parse_safetensors(&body).unwrap();
        assert_eq!(m.layers.len(), 2);
        assert_eq!(
            m.layers[0].weights,
            vec![vec![1., 2., 3.], vec![4., 5., 6.]]
        );
        assert_eq!(m.layers[0].activation, Activation::Relu);
        assert_eq!(m.layers[1].biases, vec![0.0]);
        assert_eq!(m.layers[1].activation, Activation::None);
    }

    #[test]
    fn bad_safetensors_name_the_layer() {
        let body = st(
            &[
                ("0.weight", vec![2, 3], vec![0.; 6]),
                ("0.bias", vec![2], vec![0.; 2]),
                ("1.weight", vec![1, 4], vec![0.; 4]),
            ],
            None,
        );
        let (status, code, msg) = message(parse_safetensors(&body));
        assert_eq!((status, code), (400, "invalid_model"));
        assert!(msg.contains("layer 1"), "{msg}");
        let body = st(&[("0.weight", vec![6], vec![0.; 6])], None);
        let (_, _, msg) = message(parse_safetensors(&body));
        assert!(msg.contains("layer 0") && msg.contains("[6]"), "{msg}");
        let body = st(&[("1.weight", vec![1, 1], vec![0.])], None);
        let (_, _, msg) = message(parse_safetensors(&body));
        assert!(msg.contains("layer 0"), "{msg}");
        let body = st(&[("fc.weight", vec![1, 1], vec![0.])], None);
        assert!(message(parse_safetensors(&body)).2.contains("fc.weight"));
        let body = st(&[("0.weight", vec![1, 1], vec![0.])], Some("relu,relu"));
        assert!(message(parse_safetensors(&body)).2.contains("2 activation"));
        let body = st(&[("0.weight", vec![1, 1], vec![0.])], Some("tanh"));
        assert!(message(parse_safetensors(&body)).2.contains("tanh"));
        assert_eq!(message(parse_safetensors(b"garbage")).1, "bad_input");
        assert_eq!(message(parse_safetensors(&[])).1, "bad_input");
    }

    #[test]
    fn half_precision_tensors_convert() {
        let halves = [0x3c00u16, 0xc000, 0x3555, 0x0001, 0x7bff, 0x0000, 0x7c00];
        let bytes: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
        let values = tensor_values("w", Dtype::F16, &bytes).unwrap();
        assert_eq!(
            &values[..6],
            &[1.0, -2.0, 0.333_251_95, 5.960_464_5e-8, 65504.0, 0.0]
        );
        assert!(values[6].is_infinite());
        // bfloat16 is the high half of an f32.
        let bytes: Vec<u8> = [0x3f80u16, 0xc040]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        assert_eq!(
            tensor_values("w", Dtype::BF16, &bytes).unwrap(),
            vec![1.0, -3.0]
        );
    }

    #[test]
    fn json_models_in_both_shapes() {
        let q = ModelQuery::default();
        let seed = br#"{"name":"m","weights":[[0.1,0.2]],"biases":[0.5],"activation":"relu"}"#;
        let up = parse_model_upload(ModelFormat::Json, &q, seed).unwrap();
        assert_eq!(up.name, "m");
        assert_eq!(up.model.layers[0].activation, Activation::Relu);
        let layers = br#"{"name":"n","scheme":"ckks","input_range":[-1,1],
            "layers":[{"weights":[[1,2]],"biases":[0],"activation":{"kind":"sigmoid"}}]}"#;
        let up = parse_model_upload(ModelFormat::Json, &q, layers).unwrap();
        assert_eq!(up.options.scheme, Some(Scheme::Linear));
        assert_eq!(up.options.input_range, Some((-1.0, 1.0)));
        assert_eq!(up.model.layers[0].activation, Activation::Sigmoid);
        for bad in [
            &br#"{"weights":[[1]],"biases":[0]}"#[..],
            br#"{"name":"x","weights":[[1]]}"#,
            br#"{"name":"x","layers":[],"weights":[[1]],"biases":[0]}"#,
            br#"{"name":"x","weights":[[1]],"biases":[0],"extra":1}"#,
            br#"{"name":"x","weights":[[1]],"biases":[0],"activation":"tanh"}"#,
            br#"{"name":"x","weights":[[1]],"biases":[0],"scheme":"bgv"}"#,
        ] {
            let e = parse_model_upload(ModelFormat::Json, &q, bad).unwrap_err();
            assert_eq!(
                e.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn peers_and_formats() {
        assert_eq!(parse_peer(None).unwrap(), None);
        assert_eq!(parse_peer(Some("")).unwrap(), None);
        let id = PeerId::random();
        assert_eq!(parse_peer(Some(&id.to_string())).unwrap(), Some(id));
        let e = parse_peer(Some("not-a-peer")).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "bad_input"));
        assert_eq!(
            model_format(Some("application/json; charset=utf-8")).unwrap(),
            ModelFormat::Json
        );
        assert_eq!(
            model_format(Some("application/safetensors")).unwrap(),
            ModelFormat::Safetensors
        );
        assert_eq!(
            model_format(Some("text/csv")).unwrap_err().status.as_u16(),
            415
        );
        assert_eq!(model_format(None).unwrap_err().status.as_u16(), 415);
    }

    #[test]
    fn inference_errors_keep_code_and_status() {
        let e: ApiError = InferenceActorError::UnknownModel("m".into()).into();
        assert_eq!((e.status.as_u16(), e.code), (404, "unknown_model"));
        let e: ApiError = InferenceActorError::OverBudget("x".into()).into();
        assert_eq!((e.status.as_u16(), e.code), (413, "over_budget"));
        let e: ApiError = InferenceActorError::Unavailable("the inference actor").into();
        assert_eq!((e.status.as_u16(), e.code), (503, "unavailable"));
    }
}
