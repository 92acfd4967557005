//! The cryptography of fhenode, pure and synchronous: no I/O, no async, no storage.
//!
//! - [`kahe`]: one-shot secure aggregation by key-additive RLWE with a threshold committee
//!   that only handles keys (`docs/CRYPTO.md` Part A).
//! - [`inference`]: encrypted inference, linear layers on RLWE and activations by tfhe's
//!   programmable bootstrapping.
//! - [`params`] (profile names), [`codec`] and [`ring`] (the power-of-two torus rounding and
//!   binary-secret products that inference uses), [`wire`] (the envelope every message shares).

pub mod codec;
pub mod inference;
pub mod kahe;
pub mod params;
pub mod ring;
mod rng;
pub mod wire;

pub use params::{Profile, Rounding};

/// Everything that can go wrong in the crypto layer. Every variant says what was wrong with
/// the input; none of them leaves a key, preparation or accumulator half-changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error("value at index {index} is NaN")]
    NonFinite { index: usize },
    #[error("profile mismatch: expected {expected}, got {got}")]
    ProfileMismatch { expected: Profile, got: Profile },
    #[error("{what} belongs to another session")]
    WrongSession { what: &'static str },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("length mismatch: expected {expected} values, got {got}")]
    LengthMismatch { expected: u64, got: u64 },
    #[error("contributor {0:?} already added")]
    DuplicateContributor(String),
    #[error("decryption refused: {0}")]
    DecryptionRefused(String),
    #[error("combine: {0}")]
    Combine(String),
    #[error("wire format: {0}")]
    Wire(String),
    #[error("the plaintext sum overflowed: {0}")]
    Overflow(String),
}
