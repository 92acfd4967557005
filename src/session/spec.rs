//! Session specifications as users write them, and their validated form.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::crypto::kahe::{KaheParams, SessionContext, DEFAULT_FRAC_BITS};
use crate::crypto::Profile;
use crate::tensors::IntegerPolicy;

use super::roles::Roster;

use super::SessionError;

/// What the session returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    #[default]
    Mean,
    Sum,
    /// Σ wᵢxᵢ / Σ wᵢ over integer weights wᵢ ≤ `max_weight` (e.g. numbers of examples), each
    /// encrypted with its update; only Σ wᵢ is revealed beside the mean.
    #[serde(rename = "weighted_mean")]
    WeightedMean,
}

/// A session as a user asks for it (`POST /v1/sessions`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// Session id; generated when absent. 1–64 characters of `[A-Za-z0-9._-]`.
    #[serde(default)]
    pub id: Option<String>,
    /// Number of parameters per update. Give this or `shapes`.
    #[serde(default)]
    pub length: Option<u64>,
    /// Named tensor shapes (`[]` for a 0-d tensor), concatenated in name order (C order inside
    /// each): updates may then be sent as named tensors, and the result comes back as them.
    #[serde(default)]
    pub shapes: Option<BTreeMap<String, Vec<u64>>>,
    /// Whether integer tensors (e.g. batch-norm counters) are converted and aggregated like
    /// the others (`include`) or refused by name (`refuse`, the default).
    #[serde(default)]
    pub integers: IntegerPolicy,
    /// Crypto profile; the node's configured default when absent.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// Key-committee members (peer ids).
    pub committee: Vec<String>,
    /// Members needed to decrypt, committee/2 < threshold ≤ committee; the committee size
    /// (every member) when absent. Up to committee − threshold members may be absent at
    /// decryption; the coordinator with up to 2·threshold − committee − 1 members learns only
    /// the sum.
    #[serde(default)]
    pub threshold: Option<u32>,
    /// Participants allowed to submit (peer ids).
    pub participants: Vec<String>,
    /// Fewest contributors the result may be computed from.
    #[serde(default)]
    pub min_participants: Option<u32>,
    /// Values are clipped to [-clip, clip]. Default 8.
    #[serde(default)]
    pub clip: Option<f64>,
    /// Fixed-point fraction bits. Default 20.
    #[serde(default)]
    pub frac_bits: Option<u32>,
    #[serde(default)]
    pub result: ResultKind,
    /// A weighted mean's largest weight (an integer, 1..=2^32−1); required for
    /// `weighted_mean`, refused otherwise. Each doubling costs the ciphertext one plaintext bit.
    #[serde(default)]
    pub max_weight: Option<u32>,
    /// Collecting stops this many seconds after the session opens. Default 300.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

/// Longest tensor name (PyTorch's are dotted paths, well under this).
pub const MAX_TENSOR_NAME_BYTES: usize = 256;

/// Largest update a session may declare: 2^26 parameters (~1.5 GB of ciphertext on `secure`).
pub const MAX_LENGTH: u64 = 1 << 26;
pub const MAX_DEADLINE_SECS: u64 = 7 * 24 * 3600;

/// A validated session: everything every node needs to play its part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionPlan {
    pub id: String,
    pub coordinator: String,
    pub length: u64,
    pub shapes: Option<BTreeMap<String, Vec<u64>>>,
    pub integers: IntegerPolicy,
    pub committee: Vec<String>,
    /// Members needed to decrypt.
    pub threshold: u32,
    pub participants: Vec<String>,
    pub min_participants: u32,
    pub result: ResultKind,
    pub deadline_secs: u64,
    pub params: KaheParams,
}

fn invalid(field: &str, reason: impl Into<String>) -> SessionError {
    SessionError::InvalidSpec {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn peer_list(field: &str, ids: &[String]) -> Result<Vec<String>, SessionError> {
    let mut seen = BTreeSet::new();
    for id in ids {
        PeerId::from_str(id)
            .map_err(|e| invalid(field, format!("`{id}` is not a peer id: {e}")))?;
        if !seen.insert(id.clone()) {
            return Err(invalid(field, format!("`{id}` is listed twice")));
        }
    }
    Ok(ids.to_vec())
}

/// The length named tensors of these shapes add up to, checking each name and shape.
fn shapes_length(shapes: &BTreeMap<String, Vec<u64>>) -> Result<u64, SessionError> {
    if shapes.is_empty() {
        return Err(invalid("shapes", "empty"));
    }
    let mut total: u64 = 0;
    for (name, dims) in shapes {
        if name.is_empty()
            || name.len() > MAX_TENSOR_NAME_BYTES
            || name.chars().any(char::is_control)
        {
            return Err(invalid(
                "shapes",
                format!(
                    "tensor name {name:?} must be 1–{MAX_TENSOR_NAME_BYTES} bytes without \
                     control characters"
                ),
            ));
        }
        if dims.contains(&0) {
            return Err(invalid(
                "shapes",
                format!("tensor `{name}` has an empty dimension"),
            ));
        }
        let size = dims
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| invalid("shapes", format!("tensor `{name}` is too large")))?;
        total = total
            .checked_add(size)
            .ok_or_else(|| invalid("shapes", "total size overflows"))?;
    }
    Ok(total)
}

/// 1–64 characters of `[A-Za-z0-9._-]`, and not `.` or `..`: an id is a path segment of the
/// API, where those two name no session.
pub fn valid_session_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl SessionSpec {
    /// Checks every field and fixes the crypto parameters. `coordinator` is the creating node.
    pub fn validate(
        &self,
        coordinator: PeerId,
        default_profile: Profile,
    ) -> Result<SessionPlan, SessionError> {
        let id = match &self.id {
            Some(id) if valid_session_id(id) => id.clone(),
            Some(id) => {
                return Err(invalid(
                    "id",
                    format!("`{id}` must be 1–64 characters of A–Z a–z 0–9 . _ -"),
                ))
            }
            None => {
                let bytes: [u8; 8] = rand::random();
                format!(
                    "s-{}",
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            }
        };
        let length = match (&self.length, &self.shapes) {
            (Some(_), Some(_)) => {
                return Err(invalid("length", "give `length` or `shapes`, not both"))
            }
            (None, None) => return Err(invalid("length", "required (or `shapes`)")),
            (Some(n), None) => *n,
            (None, Some(shapes)) => shapes_length(shapes)?,
        };
        if length == 0 || length > MAX_LENGTH {
            return Err(invalid(
                "length",
                format!("{length} is outside 1..={MAX_LENGTH}"),
            ));
        }
        let committee = peer_list("committee", &self.committee)?;
        if committee.is_empty() {
            return Err(invalid("committee", "at least one member is required"));
        }
        let threshold = self.threshold.unwrap_or(committee.len() as u32);
        let participants = peer_list("participants", &self.participants)?;
        if participants.is_empty() {
            return Err(invalid(
                "participants",
                "at least one participant is required",
            ));
        }
        let min_participants = self.min_participants.unwrap_or(participants.len() as u32);
        if min_participants == 0 || min_participants as usize > participants.len() {
            return Err(invalid(
                "min_participants",
                format!("{min_participants} is outside 1..={}", participants.len()),
            ));
        }
        let deadline_secs = self.deadline_secs.unwrap_or(300);
        if deadline_secs == 0 || deadline_secs > MAX_DEADLINE_SECS {
            return Err(invalid(
                "deadline_secs",
                format!("{deadline_secs} is outside 1..={MAX_DEADLINE_SECS}"),
            ));
        }
        let profile = self.profile.unwrap_or(default_profile);
        let clip = self.clip.unwrap_or(8.0);
        let field_of = |e: &crate::crypto::CryptoError| {
            let m = e.to_string();
            let field = [
                "max_weight",
                "threshold",
                "frac_bits",
                "committee",
                "participants",
                "clip",
                "plaintext_bits",
                "wire_bits",
            ]
            .into_iter()
            .find(|f| m.contains(f))
            .unwrap_or("params");
            invalid(field, m)
        };
        let max_weight = match (self.result, self.max_weight) {
            (ResultKind::WeightedMean, None) => {
                return Err(invalid("max_weight", "required for `weighted_mean`"))
            }
            (ResultKind::WeightedMean, Some(0)) => {
                return Err(invalid("max_weight", "must be at least 1"))
            }
            (ResultKind::WeightedMean, w) => w,
            (_, Some(_)) => {
                return Err(invalid(
                    "max_weight",
                    "only a `weighted_mean` session takes weights",
                ))
            }
            (_, None) => None,
        };
        let params = KaheParams::recommended_weighted(
            profile,
            participants.len() as u32,
            committee.len() as u32,
            threshold,
            clip,
            self.frac_bits.unwrap_or(DEFAULT_FRAC_BITS),
            max_weight,
        )
        .map_err(|e| field_of(&e))?;
        Ok(SessionPlan {
            id,
            coordinator: coordinator.to_string(),
            length,
            shapes: self.shapes.clone(),
            integers: self.integers,
            committee,
            threshold,
            participants,
            min_participants,
            result: self.result,
            deadline_secs,
            params,
        })
    }
}

impl SessionPlan {
    pub fn member_index(&self, peer: &str) -> Option<u32> {
        self.committee
            .iter()
            .position(|p| p == peer)
            .map(|i| i as u32)
    }
    pub fn is_participant(&self, peer: &str) -> bool {
        self.participants.iter().any(|p| p == peer)
    }
    /// Refuses a protocol message that only the coordinator may send.
    pub fn check_coordinator(&self, from: &str) -> Result<(), SessionError> {
        if from == self.coordinator {
            return Ok(());
        }
        Err(SessionError::NotAllowed {
            peer: from.to_string(),
            role: "the coordinator",
            session: self.id.clone(),
        })
    }
    /// The digest that names this plan: it binds the id, roster and parameters, and seeds the
    /// public polynomials of every ciphertext and release of the session.
    pub fn digest(&self) -> [u8; 32] {
        let bytes = bincode::serialize(self).unwrap_or_default();
        blake3::derive_key("fhenode 2026 session plan v1", &bytes)
    }

    /// Checks a plan received from a coordinator as the coordinator's own API checked its
    /// spec: the length, the id (it names records and files), the deadline (it bounds every
    /// wait and the session's expiry), and what [`SessionPlan::context`] checks.
    pub fn check_received(&self) -> Result<(), SessionError> {
        if self.length == 0 || self.length > MAX_LENGTH {
            return Err(SessionError::BadInput(format!(
                "a session of {} values; at most {MAX_LENGTH} are allowed",
                self.length
            )));
        }
        if !valid_session_id(&self.id) {
            return Err(SessionError::BadInput(format!(
                "`{}` is not a session id",
                self.id
            )));
        }
        if self.deadline_secs == 0 || self.deadline_secs > MAX_DEADLINE_SECS {
            return Err(SessionError::BadInput(format!(
                "a deadline of {} s; 1 to {MAX_DEADLINE_SECS} are allowed",
                self.deadline_secs
            )));
        }
        self.context().map(|_| ())
    }

    /// What the crypto layer needs of the session. Refuses a plan (a peer's, when joining)
    /// whose `shapes` are not tensors that add up to its `length`: the update's layout is
    /// made from the shapes.
    pub fn context(&self) -> Result<SessionContext, SessionError> {
        if let Some(shapes) = &self.shapes {
            let total = shapes_length(shapes)?;
            if total != self.length {
                return Err(invalid(
                    "shapes",
                    format!(
                        "the tensors hold {total} values where the plan's length is {}",
                        self.length
                    ),
                ));
            }
        }
        Ok(SessionContext::new(
            self.params.clone(),
            self.digest(),
            self.params.coefficients(self.length),
        )?)
    }

    /// Who plays which part: what the role machines need.
    pub fn roster(&self) -> Roster {
        Roster {
            id: self.id.clone(),
            coordinator: self.coordinator.clone(),
            committee: self.committee.clone(),
            threshold: self.threshold,
            participants: self.participants.clone(),
            min_participants: self.min_participants,
            deadline_secs: self.deadline_secs,
        }
    }

    /// Every member and participant, once each, in order.
    pub fn peers(&self) -> Vec<&String> {
        let mut peers: Vec<&String> = self.committee.iter().chain(&self.participants).collect();
        peers.sort();
        peers.dedup();
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<String> {
        (0..n).map(|_| PeerId::random().to_string()).collect()
    }

    fn spec() -> SessionSpec {
        SessionSpec {
            length: Some(1000),
            committee: peers(3),
            participants: peers(5),
            min_participants: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn a_received_plan_is_checked_as_its_spec_was() {
        let plan = spec().validate(PeerId::random(), Profile::Secure).unwrap();
        plan.check_received().unwrap();
        let broken = [
            SessionPlan {
                id: "../x".into(),
                ..plan.clone()
            },
            SessionPlan {
                deadline_secs: 0,
                ..plan.clone()
            },
            SessionPlan {
                deadline_secs: MAX_DEADLINE_SECS + 1,
                ..plan.clone()
            },
            SessionPlan {
                length: 0,
                ..plan.clone()
            },
            SessionPlan {
                length: MAX_LENGTH + 1,
                ..plan.clone()
            },
        ];
        for bad in broken {
            let e = bad.check_received().unwrap_err();
            assert_eq!(e.code(), "bad_input", "{e}");
        }
    }

    #[test]
    fn a_good_spec_validates_with_defaults() {
        let plan = spec().validate(PeerId::random(), Profile::Secure).unwrap();
        assert!(plan.id.starts_with("s-"));
        assert_eq!(plan.params.committee, 3);
        assert_eq!(plan.threshold, 3);
        assert_eq!(plan.params.participants, 5);
        assert_eq!(plan.params.frac_bits, 20);
        plan.context().unwrap();
        let mut other = plan.clone();
        other.min_participants = 2;
        assert_ne!(plan.digest(), other.digest());
        assert_eq!(plan.result, ResultKind::Mean);
    }

    #[test]
    fn bad_specs_name_the_field() {
        type Mutation = Box<dyn Fn(&mut SessionSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("length", Box::new(|s| s.length = None)),
            ("length", Box::new(|s| s.length = Some(0))),
            ("committee", Box::new(|s| s.committee = vec!["nope".into()])),
            ("committee", Box::new(|s| s.committee = vec![])),
            ("threshold", Box::new(|s| s.threshold = Some(1))),
            ("threshold", Box::new(|s| s.threshold = Some(4))),
            (
                "participants",
                Box::new(|s| s.participants.push(s.participants[0].clone())),
            ),
            (
                "min_participants",
                Box::new(|s| s.min_participants = Some(6)),
            ),
            ("deadline_secs", Box::new(|s| s.deadline_secs = Some(0))),
            ("id", Box::new(|s| s.id = Some("../etc".into()))),
            ("id", Box::new(|s| s.id = Some("..".into()))),
            ("id", Box::new(|s| s.id = Some(".".into()))),
            ("clip", Box::new(|s| s.clip = Some(1e-300))),
            (
                "frac_bits",
                Box::new(|s| {
                    s.clip = Some(0.5);
                    s.frac_bits = Some(0);
                }),
            ),
            ("frac_bits", Box::new(|s| s.frac_bits = Some(41))),
            ("clip", Box::new(|s| s.clip = Some(f64::NAN))),
            (
                "max_weight",
                Box::new(|s| s.result = ResultKind::WeightedMean),
            ),
            ("max_weight", Box::new(|s| s.max_weight = Some(10))),
            (
                "max_weight",
                Box::new(|s| {
                    s.result = ResultKind::WeightedMean;
                    s.max_weight = Some(u32::MAX);
                }),
            ),
            (
                "max_weight",
                Box::new(|s| {
                    s.result = ResultKind::WeightedMean;
                    s.max_weight = Some(0);
                }),
            ),
            (
                "shapes",
                Box::new(|s| {
                    s.length = None;
                    s.shapes = Some(BTreeMap::from([("w".to_string(), vec![3, 0])]));
                }),
            ),
            (
                "shapes",
                Box::new(|s| {
                    s.length = None;
                    s.shapes = Some(BTreeMap::from([(String::new(), vec![3])]));
                }),
            ),
            (
                "shapes",
                Box::new(|s| {
                    s.length = None;
                    s.shapes = Some(BTreeMap::from([("a\nb".to_string(), vec![3])]));
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            match s.validate(PeerId::random(), Profile::Secure) {
                Err(SessionError::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn shapes_define_the_length() {
        let mut s = spec();
        s.length = None;
        s.shapes = Some(BTreeMap::from([
            ("a".into(), vec![3, 4]),
            ("b".into(), vec![5]),
            ("scalar".into(), vec![]),
        ]));
        assert_eq!(
            s.validate(PeerId::random(), Profile::Fast).unwrap().length,
            18
        );
    }
}
