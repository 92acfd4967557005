//! Encrypted inference as the node offers it: client contexts, registered
//! models, the messages model nodes exchange, and what the API reports. The cryptography is
//! in [`crate::crypto::inference`]; the actor that runs it is [`crate::actors::inference`].

pub mod formats;
pub mod messages;
pub mod records;
pub mod registry;
pub mod scheme;

use serde::{Deserialize, Serialize};

use crate::crypto::inference::{InferenceError, Model};

/// The inference schemes fhenode implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Affine models on fixed-point RLWE ciphertexts, no bootstrapping.
    Linear,
    /// Small quantised networks, one programmable bootstrap per hidden neuron.
    Mlp,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Linear => "linear",
            Scheme::Mlp => "mlp",
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The original FHE service's (scheme, provider) pairs and the fhenode scheme that replaces
/// each (documented in README "Encrypted inference").
pub const LEGACY_SCHEMES: [(&str, &str, Scheme); 5] = [
    ("ckks", "tenseal", Scheme::Linear),
    ("bfv", "tenseal", Scheme::Linear),
    ("concrete", "concrete", Scheme::Mlp),
    ("linear", "fhenode", Scheme::Linear),
    ("mlp", "fhenode", Scheme::Mlp),
];

fn supported_schemes() -> String {
    LEGACY_SCHEMES
        .iter()
        .map(|(s, p, to)| format!("{s} ({p}) → {to}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Maps a request of the original service to a scheme; `provider` may be omitted.
pub fn map_legacy_scheme(
    scheme: &str,
    provider: Option<&str>,
) -> Result<Scheme, InferenceActorError> {
    let scheme_lc = scheme.to_ascii_lowercase();
    let provider_lc = provider.map(str::to_ascii_lowercase);
    let by_scheme: Vec<&(&str, &str, Scheme)> = LEGACY_SCHEMES
        .iter()
        .filter(|(s, _, _)| *s == scheme_lc)
        .collect();
    if by_scheme.is_empty() {
        return Err(InferenceActorError::UnsupportedScheme(format!(
            "unknown scheme `{scheme}`; supported: {}",
            supported_schemes()
        )));
    }
    match provider_lc {
        None => Ok(by_scheme[0].2),
        Some(p) => by_scheme
            .iter()
            .find(|(_, prov, _)| *prov == p || (p == "concrete-ml" && *prov == "concrete"))
            .map(|(_, _, to)| *to)
            .ok_or_else(|| {
                InferenceActorError::UnsupportedScheme(format!(
                    "unknown provider `{p}` for scheme `{scheme}`; supported: {}",
                    supported_schemes()
                ))
            }),
    }
}

/// A client context as listed (the secret key never leaves the node that made it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ContextInfo {
    pub fhe_context_id: String,
    pub scheme: Scheme,
    pub params: String,
    /// Public identifier of the context's key, carried by every ciphertext made with it.
    pub key_id: String,
    pub created_ms: u64,
    /// Size of the evaluation key a model node needs (mlp), in bytes.
    pub evaluation_key_bytes: Option<u64>,
}

/// How a registered model is compiled.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelOptions {
    /// `linear` or `mlp`; by default `linear` when no layer has an activation.
    pub scheme: Option<Scheme>,
    /// linear: every input satisfies |x| ≤ input_bound (default 256).
    pub input_bound: Option<f64>,
    /// mlp: every input lies in [min, max] (default: taken from `calibration`, else [-1, 1]).
    pub input_range: Option<(f32, f32)>,
    /// mlp: representative inputs for the quantisation ranges.
    #[serde(default)]
    pub calibration: Vec<Vec<f32>>,
}

/// A model as registered and persisted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelRecord {
    pub name: String,
    /// Stored as JSON: activations are internally tagged, which bincode cannot read back.
    #[serde(with = "as_json")]
    pub model: Model,
    pub options: ModelOptions,
    pub created_ms: u64,
}

mod as_json {
    use serde::{de::Error as _, ser::Error as _, Deserialize, Deserializer, Serializer};

    use crate::crypto::inference::Model;

    pub fn serialize<S: Serializer>(model: &Model, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::to_string(model).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Model, D::Error> {
        serde_json::from_str(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A registered model as listed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub scheme: Scheme,
    pub inputs: usize,
    pub outputs: usize,
    pub layers: usize,
    pub activations: Vec<String>,
    /// Programmable bootstraps per inference (mlp).
    pub pbs: usize,
    /// linear: largest |encrypted − float| per output for inputs within the bound.
    pub error_bound: Option<f64>,
    pub created_ms: u64,
}

/// What a client's node learns of a model from its model node (this node, or a peer over
/// libp2p): enough to choose the scheme of a context for it and to encrypt for it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelSpec {
    pub name: String,
    pub scheme: Scheme,
    /// The parameter set of the model's ciphertexts (a context's `params` names the same).
    pub params: String,
    pub inputs: usize,
    /// linear: every input satisfies |x| ≤ input_bound.
    pub input_bound: Option<f64>,
    /// mlp: the [min, max] each input is quantised over (values outside are clamped).
    pub input_ranges: Option<Vec<[f64; 2]>>,
    /// The model node (`None`: this node).
    pub peer: Option<String>,
}

impl ModelSpec {
    /// The public facts of `spec`, the input encoding of model `name` on `peer`.
    pub fn new(name: &str, spec: &messages::InputSpec, peer: Option<String>) -> ModelSpec {
        let (params, inputs, input_bound, input_ranges) = match spec {
            messages::InputSpec::Linear(s) => {
                (s.params.name(), s.inputs as usize, Some(s.bound), None)
            }
            messages::InputSpec::Mlp(s) => (
                s.params.name(),
                s.quantizers.len(),
                None,
                Some(
                    s.quantizers
                        .iter()
                        .map(|q| [q.lo, q.dequantize(q.levels.saturating_sub(1))])
                        .collect(),
                ),
            ),
        };
        ModelSpec {
            name: name.to_string(),
            scheme: spec.scheme(),
            params: params.to_string(),
            inputs,
            input_bound,
            input_ranges,
            peer,
        }
    }
}

/// One encrypted evaluation, as the client's node reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InferOutcome {
    /// A [`messages::Batch`] of results, one per input row.
    #[serde(skip)]
    pub encrypted_result: Vec<u8>,
    pub result_shape: [usize; 2],
    /// Evaluation time on the model node.
    pub computation_time_ms: f64,
    pub pbs: u64,
    /// The model node (`None`: this node).
    pub peer: Option<String>,
}

/// A decrypted batch: one row of outputs per input row.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Decrypted {
    pub values: Vec<Vec<f64>>,
    pub result_shape: [usize; 2],
}

/// What the inference actor answers a request with when it cannot serve it (the scheme's own
/// cryptographic failures are `crypto::inference::InferenceError`, carried inside).
#[derive(Debug, thiserror::Error)]
pub enum InferenceActorError {
    #[error("{0}")]
    UnsupportedScheme(String),
    #[error("unknown fhe context `{0}`")]
    UnknownContext(String),
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    #[error("bad input: {0}")]
    BadInput(String),
    /// A model of that name exists and the caller did not ask to replace it.
    #[error("{0}")]
    Duplicate(String),
    #[error("{0}")]
    WrongContext(String),
    #[error("{0}")]
    Crypto(#[from] InferenceError),
    #[error("over the memory budget: {0}")]
    OverBudget(String),
    /// A call to a model node failed: unreachable, refused, or the node's own failure.
    #[error(transparent)]
    Peer(#[from] crate::codes::PeerFailure),
    /// The store failed: full, failing, or a record that cannot be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreFailure),
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
}

impl InferenceActorError {
    /// A stable code for API and wire errors.
    pub fn code(&self) -> &'static str {
        match self {
            InferenceActorError::UnsupportedScheme(_) => "unsupported_scheme",
            InferenceActorError::UnknownContext(_) => "unknown_context",
            InferenceActorError::UnknownModel(_) => "unknown_model",
            InferenceActorError::BadInput(_) => "bad_input",
            InferenceActorError::Duplicate(_) => "duplicate",
            InferenceActorError::WrongContext(_) => "wrong_context",
            InferenceActorError::Crypto(e) => InferenceActorError::code_of(e),
            InferenceActorError::OverBudget(_) => "over_budget",
            InferenceActorError::Peer(failure) => failure.code(),
            InferenceActorError::Store(failure) => failure.code(),
            InferenceActorError::Unavailable(_) => "unavailable",
        }
    }

    /// The code of a scheme's own failure.
    pub fn code_of(e: &InferenceError) -> &'static str {
        match e {
            InferenceError::WrongKey { .. } => "wrong_context",
            InferenceError::InputLength { .. } => "wrong_shape",
            InferenceError::InvalidLayer { .. } | InferenceError::InvalidModel(_) => {
                "invalid_model"
            }
            _ => "crypto",
        }
    }

    /// The HTTP status that fits ([`crate::codes`]).
    pub fn http_status(&self) -> u16 {
        crate::codes::http_status(self.code())
    }

    /// Rebuilds an error a peer reported by code (so a remote "unknown model" stays a 404),
    /// as [`crate::codes::PeerFailure::refusal`] keeps it.
    pub fn from_remote(peer: String, code: &str, message: String) -> InferenceActorError {
        crate::codes::PeerFailure::refusal(crate::codes::Family::Inference, peer, code, message)
            .into()
    }
}

impl From<sled::Error> for InferenceActorError {
    fn from(e: sled::Error) -> Self {
        crate::store::StoreFailure::from(e).into()
    }
}

impl From<crate::store::StoreError> for InferenceActorError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::store::StoreFailure::from(e).into()
    }
}

/// Checks a model name: it is a key in the store and a path segment in the API.
pub fn check_model_name(name: &str) -> Result<(), InferenceActorError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(InferenceActorError::BadInput(format!(
            "model name `{name}` must be 1..=128 characters of A-Z a-z 0-9 - _ ."
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_schemes_map_and_unknown_ones_list_the_supported() {
        assert_eq!(
            map_legacy_scheme("ckks", Some("tenseal")).unwrap(),
            Scheme::Linear
        );
        assert_eq!(
            map_legacy_scheme("CONCRETE", Some("concrete-ml")).unwrap(),
            Scheme::Mlp
        );
        assert_eq!(map_legacy_scheme("bfv", None).unwrap(), Scheme::Linear);
        let e = map_legacy_scheme("bgv", Some("openfhe")).unwrap_err();
        assert_eq!(e.http_status(), 400);
        assert!(e.to_string().contains("ckks (tenseal)"), "{e}");
        let e = map_legacy_scheme("ckks", Some("seal")).unwrap_err();
        assert!(e.to_string().contains("provider `seal`"), "{e}");
    }

    #[test]
    fn model_names_are_checked() {
        assert!(check_model_name("mnist-logreg_v1.2").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "white space",
            &"x".repeat(129),
        ] {
            assert!(check_model_name(bad).is_err(), "{bad}");
        }
    }
}
