//! A participant's session: on the plan it draws its one-time key (persisted before any seed
//! leaves), sends every member its seeds directly and prepares its encryption; it seals one
//! body once at least t members hold its seeds, records the body's digest before uploading
//! it, and deletes the key when the session ends. The key seals an update deterministically:
//! after a restart or a failed upload the same update may be submitted again (it seals to the
//! recorded digest), another one is refused.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Roster;
use crate::session::{Phase, SessionError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParticipantPhase {
    /// Key drawn; seeds being delivered; waiting for the update.
    Joined,
    /// The body is sealed, its digest recorded, and it is being uploaded (or its upload was
    /// cut short): the key has served its one body. Only an update that seals to the same
    /// digest may be sent again: a second encryption under the same key and public
    /// polynomials would reveal the difference of the two updates.
    Sealed,
    /// The body is with the coordinator, durably.
    Submitted,
    Done,
    Failed,
}

/// The persisted state of a participant's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantState {
    pub roster: Roster,
    pub phase: ParticipantPhase,
    /// Members that acknowledged (durably hold) this participant's seeds.
    pub acked: BTreeSet<u32>,
    /// The sealed body's digest (recorded before any of it leaves).
    pub submitted: Option<[u8; 32]>,
    pub failure: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantEffect {
    /// Draw the one-time key and persist it (before any seed is sent).
    GenerateKey,
    /// Send these members their seed bundles (retrying until the session's deadline).
    DeliverSeeds(Vec<u32>),
    /// Draw the encryption of zero ahead of the update.
    Prepare,
    /// Delete the key and any preparation.
    Forget,
}

#[derive(Clone, Debug)]
pub enum ParticipantInput<'a> {
    /// A member acknowledged the seeds.
    SeedsAcked { member: u32 },
    /// The local user submits: may the update be sealed now?
    Submit,
    /// The body is sealed; its upload starts once this is recorded.
    Sealed { digest: [u8; 32] },
    /// The coordinator holds the body durably.
    Submitted { digest: [u8; 32] },
    /// The coordinator's word that the session ended, with a failure reason if it failed.
    Ended {
        from: &'a str,
        failure: Option<String>,
    },
}

impl ParticipantState {
    /// Joins a session whose plan arrived (the caller checked the local policy). Returns the
    /// state and what to do first.
    pub fn join(roster: Roster) -> (Self, Vec<ParticipantEffect>) {
        let members = (0..roster.committee.len() as u32).collect();
        let state = ParticipantState {
            roster,
            phase: ParticipantPhase::Joined,
            acked: BTreeSet::new(),
            submitted: None,
            failure: None,
        };
        (
            state,
            vec![
                ParticipantEffect::GenerateKey,
                ParticipantEffect::DeliverSeeds(members),
                ParticipantEffect::Prepare,
            ],
        )
    }

    /// After a restart: deliver to the members still missing, and prepare again (a preparation
    /// lives only in memory). A sealed body is not kept: it is sent again when its update is
    /// submitted again.
    pub fn resume(&self) -> Vec<ParticipantEffect> {
        match self.phase {
            ParticipantPhase::Joined => {
                let missing: Vec<u32> = (0..self.roster.committee.len() as u32)
                    .filter(|m| !self.acked.contains(m))
                    .collect();
                let mut effects = Vec::new();
                if !missing.is_empty() {
                    effects.push(ParticipantEffect::DeliverSeeds(missing));
                }
                effects.push(ParticipantEffect::Prepare);
                effects
            }
            ParticipantPhase::Sealed => vec![ParticipantEffect::Prepare],
            ParticipantPhase::Submitted => Vec::new(),
            ParticipantPhase::Done | ParticipantPhase::Failed => vec![ParticipantEffect::Forget],
        }
    }

    pub fn session_phase(&self) -> Phase {
        match self.phase {
            ParticipantPhase::Joined | ParticipantPhase::Sealed | ParticipantPhase::Submitted => {
                Phase::Collecting
            }
            ParticipantPhase::Done => Phase::Done,
            ParticipantPhase::Failed => Phase::Failed,
        }
    }

    fn wrong(&self, what: &str) -> SessionError {
        SessionError::WrongPhase {
            session: self.roster.id.clone(),
            phase: self.session_phase(),
            what: what.to_string(),
        }
    }

    /// Applies one input. A refused input changes nothing.
    pub fn handle(
        &mut self,
        input: ParticipantInput<'_>,
    ) -> Result<Vec<ParticipantEffect>, SessionError> {
        match input {
            ParticipantInput::SeedsAcked { member } => {
                if member as usize >= self.roster.committee.len() {
                    return Err(SessionError::BadInput(format!(
                        "no committee member {member}"
                    )));
                }
                self.acked.insert(member);
                Ok(Vec::new())
            }
            ParticipantInput::Submit => {
                if !matches!(
                    self.phase,
                    ParticipantPhase::Joined | ParticipantPhase::Sealed
                ) {
                    return Err(self.wrong("this node has already submitted its update"));
                }
                // Fewer than t holders: the body could never be decrypted, and its seeds are
                // still on their way (delivery retries until the deadline).
                let t = self.roster.threshold as usize;
                if self.acked.len() < t {
                    return Err(SessionError::Unavailable(
                        "the committee (fewer than threshold members hold this node's seeds yet)",
                    ));
                }
                Ok(Vec::new())
            }
            ParticipantInput::Sealed { digest } => match self.phase {
                ParticipantPhase::Joined => {
                    self.phase = ParticipantPhase::Sealed;
                    self.submitted = Some(digest);
                    Ok(Vec::new())
                }
                // The same update sealed again: the same bytes may go out again.
                ParticipantPhase::Sealed if self.submitted == Some(digest) => Ok(Vec::new()),
                ParticipantPhase::Sealed => Err(SessionError::Duplicate(format!(
                    "this node's key for session `{}` already sealed another update, whose \
                     upload did not finish; only that same update can be submitted again (two \
                     bodies under one key would reveal the difference of the two updates)",
                    self.roster.id
                ))),
                _ => Err(self.wrong("this node's key has already sealed its one body")),
            },
            ParticipantInput::Submitted { digest } => {
                if self.phase != ParticipantPhase::Sealed || self.submitted != Some(digest) {
                    return Err(self.wrong("no sealed body with that digest is being uploaded"));
                }
                self.phase = ParticipantPhase::Submitted;
                Ok(Vec::new())
            }
            ParticipantInput::Ended { from, failure } => {
                self.roster.check_coordinator(from)?;
                if matches!(
                    self.phase,
                    ParticipantPhase::Done | ParticipantPhase::Failed
                ) {
                    return Ok(Vec::new());
                }
                self.phase = if failure.is_some() {
                    ParticipantPhase::Failed
                } else {
                    ParticipantPhase::Done
                };
                self.failure = failure;
                Ok(vec![ParticipantEffect::Forget])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::roster;
    use super::*;

    #[test]
    fn joining_draws_the_key_before_delivering_and_prepares() {
        let (state, effects) = ParticipantState::join(roster(3, 2, 4, 2));
        assert_eq!(
            effects,
            vec![
                ParticipantEffect::GenerateKey,
                ParticipantEffect::DeliverSeeds(vec![0, 1, 2]),
                ParticipantEffect::Prepare
            ]
        );
        assert_eq!(state.phase, ParticipantPhase::Joined);
    }

    #[test]
    fn a_body_goes_out_only_once_t_members_hold_the_seeds_and_only_once() {
        let (mut s, _) = ParticipantState::join(roster(3, 2, 4, 2));
        s.handle(ParticipantInput::SeedsAcked { member: 2 })
            .unwrap();
        assert_eq!(
            s.handle(ParticipantInput::Submit).unwrap_err().code(),
            "unavailable"
        );
        assert!(s
            .handle(ParticipantInput::SeedsAcked { member: 5 })
            .is_err());
        s.handle(ParticipantInput::SeedsAcked { member: 0 })
            .unwrap();
        s.handle(ParticipantInput::Submit).unwrap();
        assert!(s
            .handle(ParticipantInput::Submitted { digest: [1; 32] })
            .is_err());
        s.handle(ParticipantInput::Sealed { digest: [1; 32] })
            .unwrap();
        // Sealed: the same update may be sealed and sent again (after a restart it is prepared
        // again first); another one may not.
        assert_eq!(s.resume(), vec![ParticipantEffect::Prepare]);
        s.handle(ParticipantInput::Submit).unwrap();
        s.handle(ParticipantInput::Sealed { digest: [1; 32] })
            .unwrap();
        assert_eq!(
            s.handle(ParticipantInput::Sealed { digest: [2; 32] })
                .unwrap_err()
                .code(),
            "duplicate"
        );
        assert_eq!(s.submitted, Some([1; 32]));
        assert!(s
            .handle(ParticipantInput::Submitted { digest: [2; 32] })
            .is_err());
        s.handle(ParticipantInput::Submitted { digest: [1; 32] })
            .unwrap();
        assert_eq!(
            s.handle(ParticipantInput::Submit).unwrap_err().code(),
            "wrong_phase"
        );
        assert_eq!(s.submitted, Some([1; 32]));
        assert!(s.resume().is_empty());
    }

    #[test]
    fn resuming_delivers_to_the_missing_members_and_the_end_forgets_the_key() {
        let (mut s, _) = ParticipantState::join(roster(3, 2, 4, 2));
        s.handle(ParticipantInput::SeedsAcked { member: 1 })
            .unwrap();
        assert_eq!(
            s.resume(),
            vec![
                ParticipantEffect::DeliverSeeds(vec![0, 2]),
                ParticipantEffect::Prepare
            ]
        );
        let e = s.handle(ParticipantInput::Ended {
            from: "p1",
            failure: None,
        });
        assert_eq!(e.unwrap_err().code(), "not_allowed");
        let effects = s
            .handle(ParticipantInput::Ended {
                from: "coord",
                failure: Some("deadline".into()),
            })
            .unwrap();
        assert_eq!(effects, vec![ParticipantEffect::Forget]);
        assert_eq!(s.phase, ParticipantPhase::Failed);
        assert_eq!(s.resume(), vec![ParticipantEffect::Forget]);
    }
}
