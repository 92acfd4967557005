//! Encrypted inference: a client's input stays encrypted under the client's own key while a
//! node evaluates a model on it; only the client decrypts. Pure and synchronous (no I/O).
//!
//! Two schemes:
//!
//! * **`linear`** ([`linear`]): affine models `W·x + b` (several layers without activation are
//!   composed) on fixed-point values in seeded RLWE ciphertexts, no bootstrapping:
//!   1. node: [`LinearModel::compile`] (`Model` + [`LinearConfig`]) → publishes
//!      [`LinearModel::input_spec`];
//!   2. client: [`LinearClientKey::generate`], [`LinearClientKey::encrypt`] →
//!      [`LinearCiphertext`] (16-byte seed + 8 bytes a value);
//!   3. node: [`LinearModel::evaluate`] → [`LinearResult`];
//!   4. client: [`LinearClientKey::decrypt`] → outputs, within [`LinearModel::error_bound`]
//!      of the float model.
//! * **`mlp`** ([`mlp`], [`quant`]): small networks with ReLU / sigmoid / table activations,
//!   quantised like Concrete ML, one tfhe shortint programmable bootstrap per neuron:
//!   1. node: [`QuantizedModel::compile`] (`Model` + [`MlpConfig`]) → publishes
//!      [`QuantizedModel::input_spec`];
//!   2. client (once per context): [`MlpClientKey::generate`],
//!      [`MlpClientKey::evaluation_key`] → upload its bytes; node:
//!      [`MlpServerKey::from_bytes`];
//!   3. client: [`MlpClientKey::encrypt`] → [`MlpCiphertext`]; node:
//!      [`MlpServerKey::evaluate`] → [`MlpResult`]; client: [`MlpClientKey::decrypt`]
//!      (floats) or [`MlpClientKey::decrypt_levels`] (the exact integers
//!      [`QuantizedModel::eval_levels`] computes).
//!
//! Security: the client's key never leaves it (both schemes use tfhe-vetted 128-bit
//! parameters, see [`linear`] and [`MlpParams`]); the evaluating node learns nothing about
//! inputs or outputs. The schemes do **not** hide the model from the client: result masks
//! are deterministic functions of the weights and of masks the client knows, so a client can
//! recover the weights (fine for the seed API, which sends the model in the request; a model
//! owner who needs weight privacy would have to re-randomise results, which needs a public
//! key and noise flooding, not implemented).
//!
//! Every ciphertext, result and evaluation key carries the [`InferenceKeyId`] of its client
//! key and its parameter set; anything mixed across contexts is refused with
//! [`InferenceError::WrongKey`] / [`InferenceError::ParamsMismatch`]. Wire forms:
//! [`InferenceWire`] (versioned, size-limited, digest-checked; client keys through
//! `to_secret_bytes` / `from_secret_bytes`).

pub mod bench;
mod keyid;
pub mod linear;
pub mod mlp;
pub mod model;
mod prg;
pub mod quant;
mod rlwe;
pub mod wire;

#[cfg(test)]
mod tests;

pub use keyid::InferenceKeyId;
pub use linear::{
    LinearCiphertext, LinearClientKey, LinearConfig, LinearInputSpec, LinearModel, LinearParams,
    LinearResult,
};
pub use mlp::{MlpCiphertext, MlpClientKey, MlpEvaluationKey, MlpResult, MlpServerKey};
pub use model::{Activation, Layer, Model};
pub use quant::{InputRange, MlpConfig, MlpInputSpec, MlpParams, OutputDecode, QuantizedModel};
pub use wire::InferenceWire;

/// The scheme names fhenode implements (for API error messages).
pub const SCHEMES: [&str; 2] = ["linear", "mlp"];

/// Everything that can go wrong in encrypted inference; every variant says what was wrong.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum InferenceError {
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("invalid model: layer {layer}: {reason}")]
    InvalidLayer { layer: usize, reason: String },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("cannot compile the model: {0}")]
    Infeasible(String),
    #[error("input has {got} values, the model expects {expected}")]
    InputLength { expected: usize, got: usize },
    #[error("input value at index {index} is not finite")]
    NonFinite { index: usize },
    #[error("input value at index {index} = {value} is outside the declared bound ±{bound}")]
    OutOfRange {
        index: usize,
        value: f64,
        bound: f64,
    },
    #[error("{what} belongs to another key (key id {got}, expected {expected})")]
    WrongKey {
        what: &'static str,
        expected: InferenceKeyId,
        got: InferenceKeyId,
    },
    #[error("{what} uses parameters {got}, expected {expected}")]
    ParamsMismatch {
        what: &'static str,
        expected: String,
        got: String,
    },
    #[error("{what} does not match this model: {reason}")]
    ModelMismatch { what: &'static str, reason: String },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("decryption failed: {0}")]
    Decryption(String),
    #[error("wire format: {0}")]
    Wire(String),
}
