//! Model files as clients upload them: JSON (`{"layers":[…]}` or the original service's
//! single-layer `{"weights","biases","activation"}`) and safetensors (tensors `<i>.weight` and
//! `<i>.bias`, activations in the metadata). Pure functions: the API reads the body and the
//! query, this turns them into a float [`Model`] and its compile options.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use super::{map_legacy_scheme, InferenceActorError, ModelOptions, Scheme};
use crate::crypto::inference::model::MAX_LAYERS;
use crate::crypto::inference::{Activation, InferenceError, Layer, Model};

/// Why a model body cannot be read; each carries the API code it answers with.
#[derive(Debug, thiserror::Error)]
pub enum ModelFormatError {
    /// The JSON body does not parse (`bad_json`).
    #[error("{0}")]
    Json(String),
    /// The body parses but does not describe a model (`bad_input`).
    #[error("{0}")]
    Input(String),
    /// The model it describes is invalid (`invalid_model`, naming the layer).
    #[error(transparent)]
    Model(#[from] InferenceError),
    /// The body names a scheme fhenode does not offer (`unsupported_scheme`).
    #[error(transparent)]
    Scheme(#[from] InferenceActorError),
}

impl ModelFormatError {
    /// The stable code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            ModelFormatError::Json(_) => "bad_json",
            ModelFormatError::Input(_) => "bad_input",
            ModelFormatError::Model(e) => InferenceActorError::code_of(e),
            ModelFormatError::Scheme(e) => e.code(),
        }
    }

    /// Every one is the client's fault: 400.
    pub fn http_status(&self) -> u16 {
        400
    }
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
pub struct LayerBody {
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

/// An activation as a name (`"relu"`) or in the crypto layer's shape (`{"kind":"relu"}`).
pub fn de_activation<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Activation>, D::Error> {
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
pub fn build_model(
    layers: Option<Vec<LayerBody>>,
    weights: Option<Vec<Vec<f32>>>,
    biases: Option<Vec<f32>>,
    activation: Option<Activation>,
) -> Result<Model, ModelFormatError> {
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

/// How a model body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    Json,
    Safetensors,
}

/// What a model upload registers: a name, the float model and its compile options.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelUpload {
    pub name: String,
    pub model: Model,
    pub options: ModelOptions,
}

/// What an upload names beside its body (the API's query string); each overrides the body's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UploadOptions {
    pub name: Option<String>,
    pub scheme: Option<Scheme>,
    pub input_bound: Option<f64>,
}

/// Parses a model upload body (pure): JSON or safetensors, with the upload's name and options.
pub fn parse_model(
    format: ModelFormat,
    query: &UploadOptions,
    body: &[u8],
) -> Result<ModelUpload, ModelFormatError> {
    let scheme = query.scheme;
    match format {
        ModelFormat::Json => {
            let b: ModelBody =
                serde_json::from_slice(body).map_err(|e| ModelFormatError::Json(e.to_string()))?;
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
                .map(|s| map_legacy_scheme(s, None))
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

fn invalid_layer(layer: usize, reason: String) -> ModelFormatError {
    ModelFormatError::Model(InferenceError::InvalidLayer { layer, reason })
}

fn bad_input(message: impl Into<String>) -> ModelFormatError {
    ModelFormatError::Input(message.into())
}

/// A tensor's values as `f32` (from F32, F64, F16 or BF16), read as update files are.
fn tensor_values(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, ModelFormatError> {
    use crate::tensors::Dtype as Element;
    let element = match dtype {
        Dtype::F32 => Element::F32,
        Dtype::F64 => Element::F64,
        Dtype::F16 => Element::F16,
        Dtype::BF16 => Element::BF16,
        other => {
            return Err(bad_input(format!(
                "tensor `{name}` is {other:?}; use F32, F64, F16 or BF16"
            )))
        }
    };
    Ok(data
        .chunks_exact(element.size())
        .map(|c| element.read(c, false) as f32)
        .collect())
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
pub fn parse_safetensors(bytes: &[u8]) -> Result<Model, ModelFormatError> {
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
        return Err(ModelFormatError::Model(InferenceError::InvalidModel(
            "the safetensors file holds no `<i>.weight` tensor".into(),
        )));
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
    model.validate()?;
    Ok(model)
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

    fn message(r: Result<Model, ModelFormatError>) -> (u16, &'static str, String) {
        let e = r.unwrap_err();
        (e.http_status(), e.code(), e.to_string())
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
        let q = UploadOptions::default();
        let seed = br#"{"name":"m","weights":[[0.1,0.2]],"biases":[0.5],"activation":"relu"}"#;
        let up = parse_model(ModelFormat::Json, &q, seed).unwrap();
        assert_eq!(up.name, "m");
        assert_eq!(up.model.layers[0].activation, Activation::Relu);
        let layers = br#"{"name":"n","scheme":"ckks","input_range":[-1,1],
            "layers":[{"weights":[[1,2]],"biases":[0],"activation":{"kind":"sigmoid"}}]}"#;
        let up = parse_model(ModelFormat::Json, &q, layers).unwrap();
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
            let e = parse_model(ModelFormat::Json, &q, bad).unwrap_err();
            assert_eq!(e.http_status(), 400, "{}", String::from_utf8_lossy(bad));
        }
    }
}
