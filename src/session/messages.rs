//! Messages of the session protocol, carried as `Request::Aggregation` / `Response::Aggregation`
//! bytes over `/fhenode/rpc/1`. bincode, size-limited on decode.

use bincode::Options;
use serde::{Deserialize, Serialize};

use crate::crypto::{DecryptionRequest, KeyCommitment, PartialDecryption, PublicKeyShare};

use super::{SessionError, SessionPlan, SessionResult};

/// Size of one submission piece. Well under the default request limit, so that a piece is
/// acknowledged (durable) quickly and a retransmission costs little.
pub const PIECE_BYTES: usize = 4 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AggMsg {
    /// Coordinator → member: draw a key share for this session, answer with its commitment.
    KeygenCommit { plan: SessionPlan },
    /// Coordinator → member: every member's commitment is in; reveal your public share.
    KeygenReveal {
        session: String,
        commitments: Vec<KeyCommitment>,
    },
    /// Coordinator → participants and members: the session is open. Each node rebuilds the
    /// collective key from the shares and checks them against the commitments itself.
    Open {
        plan: SessionPlan,
        commitments: Vec<KeyCommitment>,
        shares: Vec<PublicKeyShare>,
    },
    /// Participant → coordinator: one piece of an encrypted update's wire bytes.
    SubmitPiece {
        session: String,
        /// BLAKE3 of the whole update's wire bytes.
        digest: [u8; 32],
        index: u32,
        count: u32,
        /// Values the participant clipped (reported with every piece, counted once).
        clipped: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Coordinator → member: decrypt the aggregate, once.
    Decrypt {
        session: String,
        request: DecryptionRequest,
    },
    /// Coordinator → participants and members: the result.
    Result { result: SessionResult },
    /// Coordinator → participants and members: the session failed.
    Failed { session: String, reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AggReply {
    Commitment(KeyCommitment),
    Share(PublicKeyShare),
    Ack,
    /// The piece is durable; `complete` when the whole update is in and valid.
    PieceAck {
        index: u32,
        complete: bool,
    },
    Partial(PartialDecryption),
}

impl AggMsg {
    pub fn session(&self) -> &str {
        match self {
            AggMsg::KeygenCommit { plan } | AggMsg::Open { plan, .. } => &plan.id,
            AggMsg::KeygenReveal { session, .. }
            | AggMsg::SubmitPiece { session, .. }
            | AggMsg::Decrypt { session, .. }
            | AggMsg::Failed { session, .. } => session,
            AggMsg::Result { result } => &result.session,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            AggMsg::KeygenCommit { .. } => "keygen_commit",
            AggMsg::KeygenReveal { .. } => "keygen_reveal",
            AggMsg::Open { .. } => "open",
            AggMsg::SubmitPiece { .. } => "submit_piece",
            AggMsg::Decrypt { .. } => "decrypt",
            AggMsg::Result { .. } => "result",
            AggMsg::Failed { .. } => "failed",
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, SessionError> {
    bincode::serialize(value).map_err(|e| SessionError::BadInput(e.to_string()))
}

/// Decodes a message, refusing trailing bytes and any length field larger than the input.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, SessionError> {
    bincode::options()
        .with_fixint_encoding()
        .with_limit(bytes.len() as u64)
        .reject_trailing_bytes()
        .deserialize(bytes)
        .map_err(|e| SessionError::BadInput(format!("malformed session message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let msg = AggMsg::SubmitPiece {
            session: "s".into(),
            digest: [1; 32],
            index: 2,
            count: 3,
            clipped: 4,
            bytes: vec![5; 10],
        };
        let back: AggMsg = decode(&encode(&msg).unwrap()).unwrap();
        assert_eq!(back.kind(), "submit_piece");
        assert_eq!(back.session(), "s");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<AggMsg>(&bytes);
            let _ = decode::<AggReply>(&bytes);
        }
    }
}
