//! Key identifiers: every ciphertext, result and evaluation key names the client key it
//! belongs to, so that work under another context is refused before any computation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// BLAKE3 (derive-key mode) over the scheme, parameter set and secret key: one-way, so it
/// reveals nothing about the key, and recomputed whenever a key is loaded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InferenceKeyId(pub [u8; 32]);

impl InferenceKeyId {
    pub(crate) fn derive(scheme: &str, params: &str, secret: &[u64]) -> Self {
        let mut h = blake3::Hasher::new_derive_key("fhenode 2026 inference key id v1");
        h.update(scheme.as_bytes());
        h.update(&[0]);
        h.update(params.as_bytes());
        h.update(&[0]);
        for s in secret {
            h.update(&s.to_le_bytes());
        }
        InferenceKeyId(*h.finalize().as_bytes())
    }

    /// Full lowercase hex (64 characters), e.g. for a context id.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for InferenceKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InferenceKeyId({self})")
    }
}

impl fmt::Display for InferenceKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
