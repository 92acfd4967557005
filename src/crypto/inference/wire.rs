//! Versioned wire envelope for encrypted inference, the same shape as
//! [`crate::crypto::wire`] with its own magic so the two families never decode as each other:
//!
//! ```text
//! "FHEI" | version: u8 | kind: u8 | bincode payload | BLAKE3(all previous bytes): 32 bytes
//! ```
//!
//! Decoding checks the size limit first, then magic, version, kind and digest, and only then
//! parses the payload with a byte limit equal to its length (a hostile length prefix fails
//! instead of allocating); trailing bytes are refused; then every message is shape-checked.
//! Nothing decoded from bytes is unwrapped.

use std::borrow::Cow;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::InferenceError;

pub const MAGIC: [u8; 4] = *b"FHEI";
pub const VERSION: u8 = 1;

/// What a message is; a message of one kind never decodes as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    LinearCiphertext = 1,
    LinearResult = 2,
    MlpCiphertext = 3,
    MlpResult = 4,
    LinearClientKey = 5,
    MlpClientKey = 6,
    MlpEvaluationKey = 7,
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Frames `payload` (already serialised) as a message of `kind`, in the envelope the crypto
/// layer's own messages use ([`crate::crypto::wire::frame`]) under this family's magic.
pub(crate) fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    crate::crypto::wire::frame(MAGIC, VERSION, kind as u8, payload)
}

/// Checks the envelope of a message of `kind` (≤ `max_len` bytes) and returns its payload.
pub(crate) fn unframe(kind: Kind, bytes: &[u8], max_len: usize) -> Result<&[u8], InferenceError> {
    crate::crypto::wire::unframe(
        MAGIC,
        VERSION,
        "fhenode inference",
        kind as u8,
        bytes,
        max_len,
    )
    .map_err(|m| InferenceError::Wire(format!("{kind:?}: {m}")))
}

pub(crate) fn serialize<T: Serialize>(value: &T) -> Result<Vec<u8>, InferenceError> {
    options()
        .serialize(value)
        .map_err(|e| InferenceError::Wire(format!("serialization: {e}")))
}

pub(crate) fn deserialize<T: DeserializeOwned>(
    kind: Kind,
    payload: &[u8],
) -> Result<T, InferenceError> {
    options()
        .with_limit(payload.len() as u64)
        .deserialize(payload)
        .map_err(|e| InferenceError::Wire(format!("{kind:?}: payload: {e}")))
}

/// Decodes plain bincode (fixed-int, no trailing bytes) reading at most `bytes.len()` bytes.
pub(crate) fn deserialize_with_limit<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    options()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(|e| e.to_string())
}

/// A message of the inference family.
pub trait InferenceWire: Sized {
    const KIND: Kind;
    /// Largest encoding accepted by default (callers may pass a smaller limit).
    const DEFAULT_MAX_LEN: usize;
    type Repr: Serialize + DeserializeOwned + Clone;
    fn to_repr(&self) -> Cow<'_, Self::Repr>;
    fn from_repr(repr: Self::Repr) -> Result<Self, InferenceError>;

    fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain in-memory data cannot fail (no maps with non-string keys, no
        // unbounded sequences); an empty payload would simply fail to decode.
        let payload = serialize(self.to_repr().as_ref()).unwrap_or_default();
        frame(Self::KIND, &payload)
    }

    /// Decodes and checks a message of at most `max_len` bytes.
    fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Self, InferenceError> {
        let payload = unframe(Self::KIND, bytes, max_len)?;
        Self::from_repr(deserialize(Self::KIND, payload)?)
    }
}

macro_rules! plain_wire {
    ($ty:ty, $kind:expr, $max:expr) => {
        impl $crate::crypto::inference::wire::InferenceWire for $ty {
            const KIND: $crate::crypto::inference::wire::Kind = $kind;
            const DEFAULT_MAX_LEN: usize = $max;
            type Repr = $ty;
            fn to_repr(&self) -> std::borrow::Cow<'_, Self::Repr> {
                std::borrow::Cow::Borrowed(self)
            }
            fn from_repr(v: Self::Repr) -> Result<Self, $crate::crypto::inference::InferenceError> {
                v.validate()?;
                Ok(v)
            }
        }
    };
}
pub(crate) use plain_wire;
