//! Secure-aggregation sessions (`docs/PROTOCOL.md`): the spec users write, the pure machine of each role,
//! machine, the messages nodes exchange, and what the API reports.

pub mod messages;
mod packed;
mod phase;
pub mod records;
pub mod roles;
pub mod series;
pub mod spec;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::CryptoError;
use crate::tensors::{IntegerPolicy, Layout};
pub use phase::Phase;
pub use spec::{ResultKind, SessionPlan, SessionSpec};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid session spec: `{field}`: {reason}")]
    InvalidSpec { field: String, reason: String },
    #[error("unknown session `{0}`")]
    UnknownSession(String),
    #[error("session `{session}` is {phase}: {what}")]
    WrongPhase {
        session: String,
        phase: Phase,
        what: String,
    },
    #[error("peer {peer} is not {role} of session `{session}`")]
    NotAllowed {
        peer: String,
        role: &'static str,
        session: String,
    },
    #[error("{0}")]
    Duplicate(String),
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("session `{session}` has no result yet ({phase})")]
    NoResult { session: String, phase: Phase },
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// A call to a peer failed: unreachable, refused, or the peer's own failure.
    #[error(transparent)]
    Peer(#[from] crate::codes::PeerFailure),
    /// The store failed: full, failing, or a record that cannot be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreFailure),
    /// A peer asks this node to hold more than its quota allows.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A peer sends new plans faster than `aggregation.plans_per_minute_per_peer`.
    #[error("{0}")]
    RateLimited(String),
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
}

impl SessionError {
    /// A stable code for API and wire errors.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::InvalidSpec { .. } => "invalid_spec",
            SessionError::UnknownSession(_) => "unknown_session",
            SessionError::WrongPhase { .. } => "wrong_phase",
            SessionError::NotAllowed { .. } => "not_allowed",
            SessionError::Duplicate(_) => "duplicate",
            SessionError::BadInput(_) => "bad_input",
            SessionError::NoResult { .. } => "no_result",
            SessionError::Crypto(_) => "crypto",
            SessionError::Peer(failure) => failure.code(),
            SessionError::Store(failure) => failure.code(),
            SessionError::QuotaExceeded(_) => "quota_exceeded",
            SessionError::RateLimited(_) => "rate_limited",
            SessionError::Unavailable(_) => "unavailable",
        }
    }

    /// The HTTP status that fits ([`crate::codes`]).
    pub fn http_status(&self) -> u16 {
        crate::codes::http_status(self.code())
    }
}

impl SessionError {
    /// A peer's refusal with `code`, as [`crate::codes::PeerFailure::refusal`] keeps it.
    pub fn from_remote(peer: String, code: &str, message: String) -> SessionError {
        crate::codes::PeerFailure::refusal(crate::codes::Family::Session, peer, code, message)
            .into()
    }
}

impl From<sled::Error> for SessionError {
    fn from(e: sled::Error) -> Self {
        crate::store::StoreFailure::from(e).into()
    }
}

impl From<crate::store::StoreError> for SessionError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::store::StoreFailure::from(e).into()
    }
}

/// This node's part in a session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Roles {
    pub coordinator: bool,
    pub committee: bool,
    pub participant: bool,
}

/// Unix-epoch milliseconds of each phase change (absent: not reached).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    pub created_ms: u64,
    pub opened_ms: Option<u64>,
    pub closed_ms: Option<u64>,
    pub decrypting_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

/// What `GET /v1/sessions/{id}` reports.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionInfo {
    pub id: String,
    pub phase: Phase,
    pub roles: Roles,
    pub coordinator: String,
    #[schema(value_type = crate::crypto::Profile)]
    pub profile: String,
    pub length: u64,
    /// Named tensor shapes, when the session has them (else one flat vector of `length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shapes: Option<BTreeMap<String, Vec<u64>>>,
    /// Whether integer tensors are aggregated or refused.
    #[serde(default)]
    pub integers: IntegerPolicy,
    /// A weighted mean's largest weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u32>,
    pub result_kind: ResultKind,
    pub committee: usize,
    /// Members needed to decrypt.
    pub threshold: u32,
    pub participants: usize,
    pub min_participants: u32,
    /// Coordinator: members that stored the plan.
    pub members_ready: usize,
    /// Participant: members that hold this node's seeds (it submits once `threshold` do).
    pub seeds_delivered: usize,
    /// Member: participants whose seeds this node holds.
    pub seeds_held: usize,
    /// Complete submissions (coordinator), or 1/0 for this participant's own.
    pub submissions: usize,
    /// Key releases received for the current assignment (coordinator).
    pub releases: usize,
    pub deadline_secs: u64,
    pub timings: Timings,
    pub failure: Option<String>,
    /// This participant's encryption of zero is drawn and waits for its update: submitting
    /// will only add the values (`aggregation.prepare_budget_bytes`).
    #[serde(default)]
    pub prepared: bool,
}

impl SessionInfo {
    /// Where each named tensor lies in the session's vector of values.
    pub fn layout(&self) -> Layout {
        Layout::new(self.shapes.as_ref(), self.length)
    }
}

/// A participant's update: its values in the session's order, and its weight in a weighted
/// mean (its number of examples).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    pub values: Vec<f32>,
    pub weight: Option<f64>,
}

impl Update {
    pub fn weighted(values: Vec<f32>, weight: f64) -> Self {
        Update {
            values,
            weight: Some(weight),
        }
    }
}

impl From<Vec<f32>> for Update {
    fn from(values: Vec<f32>) -> Self {
        Update {
            values,
            weight: None,
        }
    }
}

/// The answer to a local participant's submission: the coordinator has it durably.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubmitReceipt {
    pub session: String,
    pub values: u64,
    pub clipped: u64,
    pub bytes_sent: u64,
    pub pieces: u32,
    pub digest: String,
    /// The update's encryption: sealing the encryption prepared when the session opened
    /// (waiting for it if it was still being drawn), or all of it.
    pub encrypt_ms: f64,
    pub upload_ms: f64,
    /// Whether the update was sealed into a prepared encryption.
    #[serde(default)]
    pub prepared: bool,
}

/// A finished session's result. Serialised as its fields; in binary forms (the store, peer
/// messages) the values are packed as the fixed-point sums they come from (`packed.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionResult {
    pub session: String,
    pub kind: ResultKind,
    pub contributors: u32,
    pub contributor_ids: Vec<String>,
    /// Values clipped by the contributors, in total.
    pub clipped: u64,
    /// Largest |error| of each value from fixed-point rounding.
    pub error_bound: f64,
    /// A weighted mean's Σ wᵢ, the one thing it reveals beside the mean.
    pub total_weight: Option<f64>,
    pub values: Vec<f64>,
}

/// [`SessionResult`]'s fields, with the values in either form.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename = "SessionResult")]
struct ResultFields<S, I, V> {
    session: S,
    kind: ResultKind,
    contributors: u32,
    contributor_ids: I,
    clipped: u64,
    error_bound: f64,
    /// Always written (null when unweighted): binary forms have no optional fields.
    #[serde(default)]
    total_weight: Option<f64>,
    values: V,
}

impl SessionResult {
    /// The result of a session's decrypted sums (one per coefficient, scaled to values):
    /// divided by the contributors for a mean, by the weights' sum (the last coefficient) for
    /// a weighted mean. Refuses a weighted sum whose weights add up to less than one per
    /// contributor: every honest weight is at least 1, so some contributor lied about its own.
    pub fn from_sum(
        plan: &SessionPlan,
        mut sums: Vec<f64>,
        contributors: u32,
    ) -> Result<SessionResult, String> {
        let params = &plan.params;
        let k = contributors.max(1) as f64;
        let (error_bound, total_weight) = match plan.result {
            ResultKind::Mean => (params.mean_error_bound(), None),
            ResultKind::Sum => (params.sum_error_bound(contributors), None),
            ResultKind::WeightedMean => {
                let total = sums.pop().unwrap_or(0.0);
                if total.is_nan() || total < k {
                    return Err(format!(
                        "the weights of {contributors} contributors add up to {total}: some \
                         contributor sealed a weight below 1"
                    ));
                }
                // A weighted average of values each off by at most the mean's bound.
                (params.mean_error_bound(), Some(total))
            }
        };
        if sums.len() as u64 != plan.length {
            return Err(format!(
                "{} sums decrypted for a session of {} values",
                sums.len(),
                plan.length
            ));
        }
        let mut result = SessionResult {
            session: plan.id.clone(),
            kind: plan.result,
            contributors,
            contributor_ids: Vec::new(),
            clipped: 0,
            error_bound,
            total_weight,
            values: sums,
        };
        let divisor = result.divisor();
        if divisor != 1.0 {
            result.values.iter_mut().for_each(|v| *v /= divisor);
        }
        Ok(result)
    }

    /// What each value's sum was divided by.
    fn divisor(&self) -> f64 {
        match self.kind {
            ResultKind::Mean => self.contributors.max(1) as f64,
            ResultKind::Sum => 1.0,
            ResultKind::WeightedMean => self.total_weight.unwrap_or(1.0),
        }
    }

    fn fields<V>(&self, values: V) -> ResultFields<&str, &[String], V> {
        ResultFields {
            session: &self.session,
            kind: self.kind,
            contributors: self.contributors,
            contributor_ids: &self.contributor_ids,
            clipped: self.clipped,
            error_bound: self.error_bound,
            total_weight: self.total_weight,
            values,
        }
    }
}

impl Serialize for SessionResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.fields(&self.values[..]).serialize(serializer)
        } else {
            let packed = packed::PackedValues::pack(&self.values, self.divisor());
            self.fields(packed).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for SessionResult {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        type Owned<V> = ResultFields<String, Vec<String>, V>;
        if deserializer.is_human_readable() {
            Ok(Owned::<Vec<f64>>::deserialize(deserializer)?.into_result(Ok)?)
        } else {
            PackedResult::deserialize(deserializer)?
                .unpack()
                .map_err(serde::de::Error::custom)
        }
    }
}

impl<V> ResultFields<String, Vec<String>, V> {
    fn into_result<E>(
        self,
        values: impl FnOnce(V) -> Result<Vec<f64>, E>,
    ) -> Result<SessionResult, E> {
        Ok(SessionResult {
            values: values(self.values)?,
            session: self.session,
            kind: self.kind,
            contributors: self.contributors,
            contributor_ids: self.contributor_ids,
            clipped: self.clipped,
            error_bound: self.error_bound,
            total_weight: self.total_weight,
        })
    }
}

/// A result in its binary form (store records, peer messages): the fields of a
/// [`SessionResult`], the values packed; a `SessionResult` serialises to the same bytes. A participant checks it and stores it as it came, and
/// the coordinator sends it as it stored it: neither unpacks a million values into floats to
/// pack them again. Values are unpacked when a client reads them.
#[derive(Clone, Serialize, Deserialize)]
pub struct PackedResult(ResultFields<String, Vec<String>, packed::PackedValues>);

impl PackedResult {
    pub fn session(&self) -> &str {
        &self.0.session
    }

    /// How many values it holds; refuses a packing that is no packing of any values.
    pub fn value_count(&self) -> Result<u64, SessionError> {
        self.0
            .values
            .len()
            .map(|n| n as u64)
            .map_err(|e| SessionError::BadInput(format!("malformed result: {e}")))
    }

    pub fn unpack(self) -> Result<SessionResult, SessionError> {
        self.0
            .into_result(|p| p.unpack())
            .map_err(|e| SessionError::BadInput(format!("malformed result: {e}")))
    }
}

impl std::fmt::Debug for PackedResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedResult")
            .field("session", &self.0.session)
            .field("contributors", &self.0.contributors)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_refusal_keeps_its_code_and_status_across_the_hop() {
        for (code, status) in [
            ("duplicate", 409),
            ("wrong_phase", 409),
            ("no_result", 409),
            ("not_allowed", 403),
            ("unknown_session", 404),
            ("bad_input", 400),
            ("invalid_spec", 400),
        ] {
            let e = SessionError::from_remote("p".into(), code, "why".into());
            assert_eq!((e.code(), e.http_status()), (code, status));
            assert_eq!(e.to_string(), "peer p: why");
        }
        // A code the client cannot act on is the peer's failure: a 502 that names it.
        let e = SessionError::from_remote("p".into(), "store", "disk full".into());
        assert_eq!((e.code(), e.http_status()), ("remote", 502));
        assert!(e.to_string().contains("store: disk full"), "{e}");
    }
}
