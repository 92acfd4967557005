//! Dealer-free threshold secure aggregation on tfhe's `core_crypto` (see `docs/CRYPTO.md`).
//!
//! Pure and synchronous: no I/O, no async, no storage. The flow, with the type each step
//! produces:
//!
//! 1. committee members: [`SecretKeyShare::generate`] → [`KeyCommitment`] first, then the
//!    [`PublicKeyShare`]; anyone runs a [`KeyCeremony`] → [`CollectivePublicKey`];
//! 2. participants: [`CollectivePublicKey::encrypt`] → [`EncryptedUpdate`];
//! 3. aggregator: [`Accumulator::add`] per update, then [`Accumulator::finish`] →
//!    [`Aggregate`] + [`DecryptionRequest`];
//! 4. members: [`SecretKeyShare::partial_decrypt`] → [`PartialDecryption`] (once per key);
//! 5. aggregator: [`Aggregate::combine`] → [`DecryptedSum`].

mod aggregate;
pub mod codec;
mod engine;
pub mod inference;
pub mod kahe;
mod keys;
pub mod params;
pub mod ring;
mod rng;
pub mod wire;

#[cfg(test)]
mod tests;

pub use aggregate::{
    Accumulator, Aggregate, CheckedUpdate, DecryptedSum, DecryptionRequest, PartialDecryption,
};
pub use keys::{
    local_ceremony, CollectivePublicKey, EncryptedChunk, EncryptedChunkRef, EncryptedUpdate,
    EncryptedUpdateRef, KeyCeremony, KeyCommitment, KeyId, PreparedEncryption, PublicKeyShare,
    SecretKeyShare, SessionTag,
};
pub use params::{NoiseBudget, Profile, ProfileParams, Rounding, SessionParams};

/// Everything that can go wrong in the crypto layer. Every variant says what was wrong with
/// the input; none of them leaves a key, accumulator or aggregate half-changed.
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
    #[error("{what} was made for another collective key")]
    WrongKey { what: &'static str },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("length mismatch: expected {expected} values, got {got}")]
    LengthMismatch { expected: u64, got: u64 },
    #[error("key ceremony: {0}")]
    Ceremony(String),
    #[error("contributor {0:?} already added")]
    DuplicateContributor(String),
    #[error("decryption refused: {0}")]
    DecryptionRefused(String),
    #[error("this key share already produced a partial decryption for another ciphertext; a second one would leak the share")]
    KeyAlreadyUsed,
    #[error("combine: {0}")]
    Combine(String),
    #[error("wire format: {0}")]
    Wire(String),
    #[error("the plaintext sum overflowed: {0}")]
    Overflow(String),
}

/// A value that exists once per torus width: `Secure` is u128, `Fast` is u64.
#[derive(Clone)]
pub(crate) enum Typed<A, B> {
    Secure(A),
    Fast(B),
}

/// Runs the same generic code on whichever width a [`Typed`] holds.
macro_rules! typed {
    ($value:expr, $bind:pat => $body:expr) => {
        match $value {
            $crate::crypto::Typed::Secure($bind) => $body,
            $crate::crypto::Typed::Fast($bind) => $body,
        }
    };
}
pub(crate) use typed;
