//! Messages of the session protocol, carried as `Request::Aggregation` / `Response::Aggregation`
//! bytes over `/fhenode/rpc/1`. bincode, size-limited on decode.

use bincode::Options;
use serde::{Deserialize, Serialize};

use crate::crypto::kahe::{ReleaseRequest, SeedBundle};

use super::{PackedResult, SessionError, SessionPlan};

/// Size of one submission piece. Well under the default request limit, so that a piece is
/// acknowledged (durable) quickly and a retransmission costs little.
pub const PIECE_BYTES: usize = 4 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AggMsg {
    /// Coordinator → members, then participants: the session exists. Each checks it against
    /// its local policy, stores it and acknowledges.
    Plan { plan: SessionPlan },
    /// Participant → member, directly: the seeds of the sets this member holds, for the plan
    /// with this digest. Stored before the acknowledgement.
    Seeds {
        session: String,
        plan_digest: [u8; 32],
        bundle: SeedBundle,
    },
    /// Participant → coordinator: one piece of an encrypted update's wire bytes. Encoded
    /// and decoded without copying the piece through [`Piece`], which must stay in step.
    SubmitPiece {
        session: String,
        /// The update's envelope digest (its last 32 bytes: BLAKE3 of all before them).
        digest: [u8; 32],
        index: u32,
        count: u32,
        /// Values the participant clipped (reported with every piece, counted once).
        clipped: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Coordinator → member: which of these participants' seeds do you hold?
    Holdings {
        session: String,
        participants: Vec<String>,
    },
    /// Coordinator → member: release the keys of this contributor set, for the sets assigned
    /// to you; `pins` are the members' attestations that they pinned this set (at least t
    /// must verify).
    Release {
        session: String,
        request: ReleaseRequest,
        pins: Vec<Attestation>,
    },
    /// Coordinator → participants: the result.
    Result { result: PackedResult },
    /// Coordinator → participants and members: the session ended (a failure when `reason`).
    Ended {
        session: String,
        reason: Option<String>,
    },
    /// Coordinator → member: pin this contributor set (sorted) and attest it.
    Pin {
        session: String,
        contributors: Vec<String>,
    },
}

/// A member's signature, by its node identity, over [`pin_statement`] of a contributor set.
///
/// [`pin_statement`]: super::roles::member::pin_statement
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The member's committee index.
    pub member: u32,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AggReply {
    Ack,
    /// The piece is durable; `complete` when the whole update is in and valid.
    PieceAck {
        index: u32,
        complete: bool,
    },
    /// The participants (of those asked) whose seeds this member holds.
    Held(Vec<String>),
    /// A key release's wire bytes.
    Release(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The member's attestation of the contributor set it pinned.
    Pinned(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl AggMsg {
    pub fn session(&self) -> &str {
        match self {
            AggMsg::Plan { plan } => &plan.id,
            AggMsg::Seeds { session, .. }
            | AggMsg::SubmitPiece { session, .. }
            | AggMsg::Holdings { session, .. }
            | AggMsg::Release { session, .. }
            | AggMsg::Ended { session, .. }
            | AggMsg::Pin { session, .. } => session,
            AggMsg::Result { result } => result.session(),
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            AggMsg::Plan { .. } => "plan",
            AggMsg::Seeds { .. } => "seeds",
            AggMsg::SubmitPiece { .. } => "submit_piece",
            AggMsg::Holdings { .. } => "holdings",
            AggMsg::Release { .. } => "release",
            AggMsg::Result { .. } => "result",
            AggMsg::Ended { .. } => "ended",
            AggMsg::Pin { .. } => "pin",
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, SessionError> {
    // Not `bincode::serialize`, which sizes the value in a first pass over megabytes.
    let mut out = Vec::new();
    bincode::serialize_into(&mut out, value).map_err(|e| SessionError::BadInput(e.to_string()))?;
    Ok(out)
}

fn options() -> impl Options {
    bincode::options()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Decodes a message, refusing trailing bytes and any length field larger than the input.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, SessionError> {
    options()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(|e| SessionError::BadInput(format!("malformed session message: {e}")))
}

/// [`AggMsg::SubmitPiece`] with borrowed fields: the same bytes on the wire (bincode writes
/// an enum as its u32 variant index, then the variant's fields), without copying megabytes
/// of piece into and out of an owned message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece<'a> {
    pub session: &'a str,
    pub digest: [u8; 32],
    pub index: u32,
    pub count: u32,
    pub clipped: u64,
    #[serde(with = "serde_bytes")]
    pub bytes: &'a [u8],
}

/// `SubmitPiece`'s position in [`AggMsg`].
const SUBMIT_PIECE: u32 = 2;

impl Piece<'_> {
    /// The message's bytes, exactly as `encode(&AggMsg::SubmitPiece { .. })` would write them.
    pub fn encode(&self) -> Result<Vec<u8>, SessionError> {
        let size = options()
            .serialized_size(self)
            .map_err(|e| SessionError::BadInput(e.to_string()))?;
        let mut out = Vec::with_capacity(4 + size as usize);
        out.extend_from_slice(&SUBMIT_PIECE.to_le_bytes());
        options()
            .serialize_into(&mut out, self)
            .map_err(|e| SessionError::BadInput(e.to_string()))?;
        Ok(out)
    }

    /// `None` when `bytes` is another message; else the piece, borrowing from `bytes`.
    pub fn decode(bytes: &[u8]) -> Option<Result<Piece<'_>, SessionError>> {
        let (tag, rest) = bytes.split_first_chunk::<4>()?;
        (u32::from_le_bytes(*tag) == SUBMIT_PIECE).then(|| decode(rest))
    }
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
            let _ = Piece::decode(&bytes);
        }

        /// The borrowed piece is the owned message, byte for byte, both ways.
        #[test]
        fn piece_is_submit_piece_on_the_wire(
            session in "[a-z0-9-]{0,12}",
            digest in any::<[u8; 32]>(),
            index in any::<u32>(),
            count in any::<u32>(),
            clipped in any::<u64>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let owned = encode(&AggMsg::SubmitPiece {
                session: session.clone(), digest, index, count, clipped, bytes: bytes.clone(),
            }).unwrap();
            let piece = Piece { session: &session, digest, index, count, clipped, bytes: &bytes };
            prop_assert_eq!(&piece.encode().unwrap(), &owned);
            prop_assert_eq!(Piece::decode(&owned).unwrap().unwrap(), piece);
            let other = encode(&AggMsg::Ended { session, reason: Some("x".into()) }).unwrap();
            prop_assert!(Piece::decode(&other).is_none());
        }
    }
}
