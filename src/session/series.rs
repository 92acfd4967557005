//! Multi-round series (`POST /v1/series`): R sessions of one spec with the same committee and
//! participants, one per training round. Round r + 1 opens (its participants' encryptions
//! are prepared) as soon as round r stops collecting, so a participant that trains on round
//! r's result submits into a session that is already waiting. Pure: what to do next follows
//! from the record alone; the series actor performs it.

use serde::{Deserialize, Deserializer, Serialize};

use super::spec::valid_session_id;
use super::{Phase, SessionError, SessionSpec};

/// Most rounds one series may run.
pub const MAX_ROUNDS: u32 = 10_000;
/// Longest series id: `{id}-{round}` must stay a valid session id (64 characters).
pub const MAX_SERIES_ID_LEN: usize = 58;

/// A series as a user asks for it: the session fields, plus `rounds`; `id` names the series
/// (its rounds are sessions `{id}-1` … `{id}-R`).
#[derive(Clone, Debug)]
pub struct SeriesSpec {
    pub id: Option<String>,
    pub rounds: u32,
    pub session: SessionSpec,
}

impl Serialize for SeriesSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut fields = match serde_json::to_value(&self.session).map_err(S::Error::custom)? {
            serde_json::Value::Object(fields) => fields,
            _ => return Err(S::Error::custom("a session spec is an object")),
        };
        fields.insert("rounds".into(), self.rounds.into());
        match &self.id {
            Some(id) => fields.insert("id".into(), id.clone().into()),
            None => fields.remove("id"),
        };
        fields.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SeriesSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // The session's own fields sit beside `rounds`: take the series' fields out and read
        // the rest as a session spec, which refuses unknown fields.
        let mut fields = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let rounds = fields
            .remove("rounds")
            .ok_or_else(|| D::Error::missing_field("rounds"))?;
        let rounds = u32::deserialize(rounds).map_err(D::Error::custom)?;
        let id = match fields.remove("id") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(String::deserialize(v).map_err(D::Error::custom)?),
        };
        let session = SessionSpec::deserialize(serde_json::Value::Object(fields))
            .map_err(D::Error::custom)?;
        Ok(SeriesSpec {
            id,
            rounds,
            session,
        })
    }
}

/// A series as the coordinator keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesRecord {
    pub id: String,
    pub rounds: u32,
    /// Every round's spec but its id.
    pub template: SessionSpec,
    /// Rounds opened so far (1..=opened exist).
    pub opened: u32,
    /// Why the series stopped opening rounds early, if it did.
    pub failure: Option<String>,
    pub created_ms: u64,
}

/// The next thing a series does.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesStep {
    /// The round whose collection must end first (none before the first round).
    pub after: Option<String>,
    /// The round to open then, and its spec.
    pub round: u32,
    pub spec: SessionSpec,
}

fn invalid(field: &str, reason: impl Into<String>) -> SessionError {
    SessionError::InvalidSpec {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl SeriesRecord {
    /// A new series, checked: its id and round count. (The session spec is checked by
    /// validating round 1's, which the caller does.)
    pub fn new(spec: SeriesSpec, generated_id: String, now_ms: u64) -> Result<Self, SessionError> {
        let id = spec.id.unwrap_or(generated_id);
        if !valid_session_id(&id) || id.len() > MAX_SERIES_ID_LEN {
            return Err(invalid(
                "id",
                format!("`{id}` must be 1–{MAX_SERIES_ID_LEN} characters of A–Z a–z 0–9 . _ -"),
            ));
        }
        if !(1..=MAX_ROUNDS).contains(&spec.rounds) {
            return Err(invalid(
                "rounds",
                format!("{} is outside 1..={MAX_ROUNDS}", spec.rounds),
            ));
        }
        Ok(SeriesRecord {
            id,
            rounds: spec.rounds,
            template: SessionSpec {
                id: None,
                ..spec.session
            },
            opened: 0,
            failure: None,
            created_ms: now_ms,
        })
    }

    /// Session id of `round` (1-based).
    pub fn session(&self, round: u32) -> String {
        format!("{}-{round}", self.id)
    }

    /// The spec of `round`: the template under the round's session id.
    pub fn round_spec(&self, round: u32) -> SessionSpec {
        SessionSpec {
            id: Some(self.session(round)),
            ..self.template.clone()
        }
    }

    /// What to do next: open the next round once the last one opened stops collecting; `None`
    /// once every round is open or the series stopped.
    pub fn next_step(&self) -> Option<SeriesStep> {
        if self.failure.is_some() || self.opened >= self.rounds {
            return None;
        }
        let round = self.opened + 1;
        Some(SeriesStep {
            after: (self.opened > 0).then(|| self.session(self.opened)),
            round,
            spec: self.round_spec(round),
        })
    }

    /// Round `round` is open: the next step may follow.
    pub fn opened(&mut self, round: u32) {
        self.opened = self.opened.max(round);
    }

    /// The series cannot open round `round`: it stops there.
    pub fn failed(&mut self, round: u32, reason: &str) {
        self.failure = Some(format!("round {round} could not open: {reason}"));
    }
}

/// Whether a round stopped collecting: the next round may open.
pub fn collection_over(phase: Phase) -> bool {
    phase > Phase::Collecting
}

/// One round as `GET /v1/series/{id}` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoundInfo {
    pub round: u32,
    pub session: String,
    pub phase: Phase,
    /// Complete submissions the coordinator holds.
    pub submissions: usize,
    pub failure: Option<String>,
}

/// What `GET /v1/series/{id}` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeriesInfo {
    pub id: String,
    /// Rounds the series runs in all.
    pub planned_rounds: u32,
    /// The rounds opened so far, in order.
    pub rounds: Vec<RoundInfo>,
    /// Every round opened and ended.
    pub finished: bool,
    pub failure: Option<String>,
    pub created_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<SeriesSpec, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn a_series_spec_is_a_session_spec_with_rounds() {
        let s = spec(serde_json::json!({
            "id": "fl", "rounds": 3, "length": 4, "committee": ["a"], "participants": ["b"],
            "result": "weighted_mean", "max_weight": 10,
        }))
        .unwrap();
        assert_eq!((s.id.as_deref(), s.rounds), (Some("fl"), 3));
        assert_eq!(s.session.max_weight, Some(10));
        assert!(spec(
            serde_json::json!({"rounds": 2, "committee": [], "participants": [], "lenght": 4})
        )
        .unwrap_err()
        .to_string()
        .contains("unknown field `lenght`"));
        assert!(
            spec(serde_json::json!({"committee": [], "participants": []}))
                .unwrap_err()
                .to_string()
                .contains("missing field `rounds`")
        );
        assert!(
            spec(serde_json::json!({"rounds": -1, "committee": [], "participants": []})).is_err()
        );
    }

    #[test]
    fn a_series_spec_writes_what_it_reads() {
        let s = spec(serde_json::json!({"id": "s", "rounds": 2, "length": 3, "committee": ["a"], "participants": ["b"]})).unwrap();
        let back = spec(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(
            (back.id, back.rounds, back.session),
            (s.id, s.rounds, s.session)
        );
    }

    #[test]
    fn rounds_open_one_after_another_and_stop_at_the_last_or_a_failure() {
        let s = spec(
            serde_json::json!({"rounds": 3, "length": 4, "committee": [], "participants": []}),
        )
        .unwrap();
        let mut record = SeriesRecord::new(s, "gen".into(), 5).unwrap();
        assert_eq!(record.id, "gen");
        let first = record.next_step().unwrap();
        assert_eq!((first.after, first.round), (None, 1));
        assert_eq!(first.spec.id.as_deref(), Some("gen-1"));
        assert_eq!(first.spec.length, Some(4));
        record.opened(1);
        let second = record.next_step().unwrap();
        assert_eq!((second.after.as_deref(), second.round), (Some("gen-1"), 2));
        // Opening again after a restart changes nothing.
        record.opened(2);
        record.opened(1);
        assert_eq!(record.next_step().unwrap().round, 3);
        record.opened(3);
        assert_eq!(record.next_step(), None);

        let mut stopped = SeriesRecord::new(
            spec(
                serde_json::json!({"rounds": 3, "length": 4, "committee": [], "participants": []}),
            )
            .unwrap(),
            "x".into(),
            0,
        )
        .unwrap();
        stopped.failed(1, "invalid spec");
        assert_eq!(stopped.next_step(), None);
        assert!(stopped.failure.unwrap().contains("round 1"));
    }

    #[test]
    fn bad_series_ids_and_round_counts_are_named() {
        let base = || {
            spec(serde_json::json!({"rounds": 1, "length": 4, "committee": [], "participants": []}))
                .unwrap()
        };
        let with = |id: Option<&str>, rounds: u32| SeriesSpec {
            id: id.map(str::to_string),
            rounds,
            ..base()
        };
        for (s, field) in [
            (with(Some(&"a".repeat(59)), 1), "id"),
            (with(Some("a/b"), 1), "id"),
            (with(None, 0), "rounds"),
            (with(None, MAX_ROUNDS + 1), "rounds"),
        ] {
            match SeriesRecord::new(s, "gen".into(), 0) {
                Err(SessionError::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let longest =
            SeriesRecord::new(with(Some(&"a".repeat(58)), MAX_ROUNDS), "g".into(), 0).unwrap();
        assert!(valid_session_id(&longest.session(MAX_ROUNDS)));
    }

    #[test]
    fn a_round_opens_the_next_once_it_stops_collecting() {
        assert!(!collection_over(Phase::Proposed));
        assert!(!collection_over(Phase::Collecting));
        assert!(collection_over(Phase::Closing));
        assert!(collection_over(Phase::Failed));
    }
}
