//! What nodes send each other for encrypted inference (inside `Request::Inference`), and the
//! batch envelope the API hands out as `encrypted_result` / ciphertext hex.

use bincode::Options;
use serde::{Deserialize, Serialize};

use super::{InferenceActorError, Scheme};
use crate::crypto::inference::{LinearInputSpec, MlpInputSpec};

/// Evaluation keys travel in pieces of at most this many bytes.
pub const KEY_PIECE_BYTES: usize = 4 << 20;
/// Most rows one request may carry.
pub const MAX_BATCH_ROWS: usize = 1024;

/// What a client's node asks a model node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum InferMsg {
    /// The model's public input encoding (what a client needs to encrypt for it).
    Spec { model: String },
    /// Does the model node hold the evaluation key of this context?
    HasEvalKey { context: String, key_id: [u8; 32] },
    /// One piece of a context's evaluation key; the key is taken when all pieces are in.
    EvalKeyPiece {
        context: String,
        digest: [u8; 32],
        index: u32,
        count: u32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Evaluate `model` on a batch of ciphertexts made under `context`.
    Evaluate {
        model: String,
        context: String,
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
    },
}

impl InferMsg {
    pub fn kind(&self) -> &'static str {
        match self {
            InferMsg::Spec { .. } => "spec",
            InferMsg::HasEvalKey { .. } => "has_eval_key",
            InferMsg::EvalKeyPiece { .. } => "eval_key_piece",
            InferMsg::Evaluate { .. } => "evaluate",
        }
    }
}

/// A model's public input encoding.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum InputSpec {
    Linear(LinearInputSpec),
    Mlp(MlpInputSpec),
}

impl InputSpec {
    pub fn scheme(&self) -> Scheme {
        match self {
            InputSpec::Linear(_) => Scheme::Linear,
            InputSpec::Mlp(_) => Scheme::Mlp,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum InferReply {
    Spec(InputSpec),
    HasEvalKey(bool),
    PieceAck {
        complete: bool,
    },
    Evaluated {
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
        computation_ms: f64,
        pbs: u64,
    },
}

/// Ciphertexts or results for several input rows, all under one context's key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Batch {
    pub version: u8,
    pub scheme: Scheme,
    /// The client key's id (hex of the crypto layer's key id).
    pub key_id: String,
    pub rows: Vec<serde_bytes::ByteBuf>,
}

pub const BATCH_VERSION: u8 = 1;

impl Batch {
    pub fn new(scheme: Scheme, key_id: String, rows: Vec<Vec<u8>>) -> Batch {
        Batch {
            version: BATCH_VERSION,
            scheme,
            key_id,
            rows: rows.into_iter().map(serde_bytes::ByteBuf::from).collect(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain in-memory data: serialising cannot fail.
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .serialize(self)
            .unwrap_or_default()
    }

    /// Decodes a batch of at most `max_len` bytes, refusing anything malformed or empty.
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Batch, InferenceActorError> {
        if bytes.len() > max_len {
            return Err(InferenceActorError::BadInput(format!(
                "ciphertext of {} bytes exceeds the limit of {max_len}",
                bytes.len()
            )));
        }
        let batch: Batch = decode(bytes).map_err(|e| {
            InferenceActorError::BadInput(format!("malformed ciphertext batch: {e}"))
        })?;
        if batch.version != BATCH_VERSION {
            return Err(InferenceActorError::BadInput(format!(
                "ciphertext batch version {} is not supported",
                batch.version
            )));
        }
        if batch.rows.is_empty() || batch.rows.len() > MAX_BATCH_ROWS {
            return Err(InferenceActorError::BadInput(format!(
                "a batch holds 1..={MAX_BATCH_ROWS} rows, this one {}",
                batch.rows.len()
            )));
        }
        Ok(batch)
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .serialize(value)
        .unwrap_or_default()
}

/// Decodes a message, refusing trailing bytes and any length larger than the input.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, InferenceActorError> {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(bytes.len() as u64)
        .reject_trailing_bytes()
        .deserialize(bytes)
        .map_err(|e| InferenceActorError::BadInput(format!("malformed inference message: {e}")))
}

/// Parses hex (either case, optional `0x`), refusing anything else.
pub fn unhex(text: &str) -> Result<Vec<u8>, InferenceActorError> {
    let t = text.trim();
    hex::decode(t.strip_prefix("0x").unwrap_or(t)).map_err(|e| {
        InferenceActorError::BadInput(match e {
            hex::FromHexError::OddLength => "hex has an odd number of digits".into(),
            hex::FromHexError::InvalidHexCharacter { index, .. } => {
                format!("invalid hex at offset {index}")
            }
            other => other.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn batches_round_trip_and_refuse_garbage() {
        let b = Batch::new(Scheme::Linear, "ab".into(), vec![vec![1, 2, 3], vec![]]);
        let bytes = b.to_bytes();
        assert_eq!(Batch::from_bytes(&bytes, 1 << 20).unwrap(), b);
        assert!(Batch::from_bytes(&bytes, 4).is_err());
        assert!(Batch::from_bytes(&bytes[..bytes.len() - 1], 1 << 20).is_err());
        let empty = Batch::new(Scheme::Mlp, "ab".into(), vec![]);
        assert!(Batch::from_bytes(&empty.to_bytes(), 1 << 20).is_err());
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(unhex(&hex::encode(&bytes)).unwrap(), bytes);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Batch::from_bytes(&bytes, 1 << 20);
            let _ = decode::<InferMsg>(&bytes);
            let _ = decode::<InferReply>(&bytes);
            let _ = unhex(&String::from_utf8_lossy(&bytes));
        }
    }
}
