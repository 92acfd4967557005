//! Encrypted-inference routes: client contexts, the model registry, the
//! encrypt → infer → decrypt calls, and the original FHE service's one-call endpoint
//! `POST /v1/ml-zk/fhe/inference`.
//!
//! Ciphertexts travel as hex strings of a [`crate::inference::messages::Batch`]. Models are
//! registered as JSON (`{"layers":[…]}` or the original single-layer `{"weights","biases"}`)
//! or as a safetensors file; [`crate::inference::formats`] reads both.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::error::{body_error, json_rejection};
use super::openapi::binary_body;
use super::{route, ApiError, ApiState, Route};
use crate::crypto::inference::Activation;
use crate::inference::formats::{
    build_model, de_activation, parse_model, LayerBody, ModelBody, ModelFormatError, UploadOptions,
};
pub use crate::inference::formats::{ModelFormat, ModelUpload};
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

impl From<ModelFormatError> for ApiError {
    fn from(e: ModelFormatError) -> Self {
        ApiError::new(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
            e.code(),
            e.to_string(),
        )
    }
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

/// A model's scheme by fhenode's or the original service's name.
fn parse_scheme(name: &str, provider: Option<&str>) -> Result<Scheme, ApiError> {
    Ok(map_legacy_scheme(name, provider)?)
}

fn bad_input(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_input", message)
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

/// Parses a model upload body (pure): JSON or safetensors, with the query's name and options.
pub fn parse_model_upload(
    format: ModelFormat,
    query: &ModelQuery,
    body: &[u8],
) -> Result<ModelUpload, ApiError> {
    let options = UploadOptions {
        name: query.name.clone(),
        scheme: query
            .scheme
            .as_deref()
            .map(|s| parse_scheme(s, None))
            .transpose()?,
        input_bound: query.input_bound,
    };
    Ok(parse_model(format, &options, body)?)
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
    use super::*;

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
