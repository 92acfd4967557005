//! A committee member's session: it stores each participant's seeds (the bundles themselves
//! live in the keys store; the state keeps their digests), tells the coordinator which it
//! holds, and releases keys for exactly one contributor set S, also across restarts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Roster;
use crate::crypto::kahe::{ReleaseRequest, SessionContext};
use crate::session::{Phase, SessionError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberPhase {
    /// Receiving seeds.
    Holding,
    /// Keys were released for one contributor set; only that set is answered again.
    Released,
    /// The session ended; the seeds are deleted.
    Ended,
}

/// The persisted state of a member's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub roster: Roster,
    pub index: u32,
    pub phase: MemberPhase,
    /// Digest of each participant's stored seed bundle.
    pub seeds: BTreeMap<String, [u8; 32]>,
    /// The digest of the one contributor set this member releases keys for.
    pub released_for: Option<[u8; 32]>,
}

/// What a peer asks of a member.
#[derive(Clone, Copy, Debug)]
pub enum MemberInput<'a> {
    /// A participant delivers its seed bundle (already checked for shape by the caller).
    Seeds { from: &'a str, digest: [u8; 32] },
    /// The coordinator asks which of these participants' seeds this member holds.
    Holdings {
        from: &'a str,
        participants: &'a [String],
    },
    /// The coordinator asks for the keys of a contributor set under an assignment of the sets;
    /// `context` is the session's (the plan digest binds S's digest to it).
    Release {
        from: &'a str,
        request: &'a ReleaseRequest,
        context: &'a SessionContext,
    },
    /// The coordinator says the session is over (done or failed).
    Ended { from: &'a str },
}

/// What the actor does with an accepted input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberDecision {
    /// Persist the bundle, then the state, then acknowledge.
    StoreSeeds,
    /// The same bundle again: acknowledge, store nothing.
    AlreadyHeld,
    /// Answer with these participants (those asked whose seeds are held).
    Held(Vec<String>),
    /// Compute the release; when `first`, the state (now naming S) is persisted before any
    /// byte of it leaves the node.
    Release { first: bool },
    /// Delete the seeds and persist the ended state.
    Forget,
}

impl MemberState {
    pub fn new(roster: Roster, index: u32) -> Self {
        MemberState {
            roster,
            index,
            phase: MemberPhase::Holding,
            seeds: BTreeMap::new(),
            released_for: None,
        }
    }

    /// The session phase a member's phase corresponds to, for reports and errors.
    pub fn session_phase(&self) -> Phase {
        match self.phase {
            MemberPhase::Holding => Phase::Collecting,
            MemberPhase::Released => Phase::Decrypting,
            MemberPhase::Ended => Phase::Done,
        }
    }

    fn wrong(&self, what: &str) -> SessionError {
        SessionError::WrongPhase {
            session: self.roster.id.clone(),
            phase: self.session_phase(),
            what: format!("member {}: {what}", self.index),
        }
    }

    /// Applies one input with the node's `floor` (fewest contributors it releases keys for).
    /// A refused input changes nothing.
    pub fn handle(
        &mut self,
        input: MemberInput<'_>,
        floor: u32,
    ) -> Result<MemberDecision, SessionError> {
        if self.phase == MemberPhase::Ended {
            return Err(self.wrong("the session has ended"));
        }
        match input {
            MemberInput::Seeds { from, digest } => {
                if !self.roster.is_participant(from) {
                    return Err(self.roster.not_participant(from));
                }
                match self.seeds.get(from) {
                    Some(held) if *held == digest => Ok(MemberDecision::AlreadyHeld),
                    Some(_) => Err(SessionError::Duplicate(format!(
                        "participant {from} already delivered different seeds for session `{}`",
                        self.roster.id
                    ))),
                    // Seeds that arrive after the release cannot be used: refusing them tells
                    // the participant its body will not count.
                    None if self.phase == MemberPhase::Released => {
                        Err(self.wrong("keys were already released; late seeds are refused"))
                    }
                    None => {
                        self.seeds.insert(from.to_string(), digest);
                        Ok(MemberDecision::StoreSeeds)
                    }
                }
            }
            MemberInput::Holdings { from, participants } => {
                self.roster.check_coordinator(from)?;
                Ok(MemberDecision::Held(
                    participants
                        .iter()
                        .filter(|p| self.seeds.contains_key(*p))
                        .cloned()
                        .collect(),
                ))
            }
            MemberInput::Release {
                from,
                request,
                context,
            } => {
                self.roster.check_coordinator(from)?;
                // Every check runs before S is fixed: a refused request fixes nothing.
                request.check(context)?;
                let mine = context
                    .committee()
                    .assigned_to(&request.assignment, self.index)?;
                if mine.is_empty() {
                    return Err(SessionError::BadInput(format!(
                        "the assignment gives member {} no set",
                        self.index
                    )));
                }
                let digest = request.contributors_digest(context);
                let contributors = &request.contributors;
                if let Some(fixed) = self.released_for {
                    if fixed != digest {
                        return Err(SessionError::Duplicate(format!(
                            "member {} already released keys for another contributor set of \
                             session `{}`; it answers no other",
                            self.index, self.roster.id
                        )));
                    }
                    return Ok(MemberDecision::Release { first: false });
                }
                let needed = self.roster.min_participants.max(floor);
                if (contributors.len() as u32) < needed {
                    return Err(SessionError::BadInput(format!(
                        "{} contributors, fewer than the {needed} this member requires \
                         (min_participants {}, local floor {floor})",
                        contributors.len(),
                        self.roster.min_participants
                    )));
                }
                if let Some(stranger) = contributors.iter().find(|c| !self.roster.is_participant(c))
                {
                    return Err(self.roster.not_participant(stranger));
                }
                let missing: Vec<&String> = contributors
                    .iter()
                    .filter(|c| !self.seeds.contains_key(*c))
                    .collect();
                if !missing.is_empty() {
                    return Err(SessionError::BadInput(format!(
                        "member {} holds no seeds of {missing:?}",
                        self.index
                    )));
                }
                self.released_for = Some(digest);
                self.phase = MemberPhase::Released;
                Ok(MemberDecision::Release { first: true })
            }
            MemberInput::Ended { from } => {
                self.roster.check_coordinator(from)?;
                self.phase = MemberPhase::Ended;
                Ok(MemberDecision::Forget)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::roster;
    use super::*;
    use crate::crypto::kahe::KaheParams;
    use crate::crypto::Profile;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn context() -> SessionContext {
        let params = KaheParams::recommended(Profile::Fast, 4, 3, 2, 8.0, 20).unwrap();
        SessionContext::new(params, [1; 32], 10).unwrap()
    }

    /// A request for `s` with sets spread over members 0 and 1.
    fn request(s: &[&str]) -> ReleaseRequest {
        ReleaseRequest {
            contributors: names(s),
            assignment: context().committee().assign(&[0, 1]).unwrap(),
        }
    }

    fn ask(
        m: &mut MemberState,
        r: &ReleaseRequest,
        from: &str,
        floor: u32,
    ) -> Result<MemberDecision, SessionError> {
        let ctx = context();
        m.handle(
            MemberInput::Release {
                from,
                request: r,
                context: &ctx,
            },
            floor,
        )
    }

    fn member() -> MemberState {
        let mut m = MemberState::new(roster(3, 2, 4, 2), 1);
        for p in ["p0", "p1", "p2"] {
            let d = [p.as_bytes()[1]; 32];
            assert_eq!(
                m.handle(MemberInput::Seeds { from: p, digest: d }, 2)
                    .unwrap(),
                MemberDecision::StoreSeeds
            );
        }
        m
    }

    #[test]
    fn seeds_are_taken_once_per_participant_and_only_from_participants() {
        let mut m = member();
        let again = MemberInput::Seeds {
            from: "p0",
            digest: [b'0'; 32],
        };
        assert_eq!(m.handle(again, 2).unwrap(), MemberDecision::AlreadyHeld);
        let other = MemberInput::Seeds {
            from: "p0",
            digest: [9; 32],
        };
        assert_eq!(m.handle(other, 2).unwrap_err().code(), "duplicate");
        let stranger = MemberInput::Seeds {
            from: "coord",
            digest: [9; 32],
        };
        assert_eq!(m.handle(stranger, 2).unwrap_err().code(), "not_allowed");
        assert_eq!(m.seeds.len(), 3);
    }

    #[test]
    fn holdings_answer_the_coordinator_only() {
        let mut m = member();
        let ps = names(&["p0", "p3", "p2"]);
        let held = m.handle(
            MemberInput::Holdings {
                from: "coord",
                participants: &ps,
            },
            2,
        );
        assert_eq!(held.unwrap(), MemberDecision::Held(names(&["p0", "p2"])));
        let e = m.handle(
            MemberInput::Holdings {
                from: "p0",
                participants: &ps,
            },
            2,
        );
        assert_eq!(e.unwrap_err().code(), "not_allowed");
    }

    #[test]
    fn keys_are_released_for_one_contributor_set_only() {
        let mut m = member();
        let s = request(&["p0", "p1"]);
        assert_eq!(
            ask(&mut m, &s, "coord", 2).unwrap(),
            MemberDecision::Release { first: true }
        );
        assert_eq!(
            ask(&mut m, &s, "coord", 2).unwrap(),
            MemberDecision::Release { first: false }
        );
        // The same S under another assignment is answered too.
        let mut other_assignment = s.clone();
        other_assignment.assignment = context().committee().assign(&[1, 2]).unwrap();
        assert!(ask(&mut m, &other_assignment, "coord", 2).is_ok());
        let s2 = request(&["p0", "p2"]);
        assert_eq!(
            ask(&mut m, &s2, "coord", 2).unwrap_err().code(),
            "duplicate"
        );
        // After a restart (the persisted state), still only the first set.
        let mut restarted: MemberState =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(
            ask(&mut restarted, &s2, "coord", 2).unwrap_err().code(),
            "duplicate"
        );
        assert_eq!(
            ask(&mut restarted, &s, "coord", 2).unwrap(),
            MemberDecision::Release { first: false }
        );
        // Late seeds are refused once released.
        let late = MemberInput::Seeds {
            from: "p3",
            digest: [3; 32],
        };
        assert!(restarted.handle(late, 2).is_err());
    }

    #[test]
    fn requests_it_cannot_or_must_not_answer_are_refused_without_fixing_the_set() {
        let mut m = member();
        // Not the coordinator; too few for the plan, for the local floor; a stranger; a
        // participant whose seeds it lacks; a repeated contributor; an assignment that gives
        // this member nothing.
        assert_eq!(
            ask(&mut m, &request(&["p0", "p1"]), "p0", 2)
                .unwrap_err()
                .code(),
            "not_allowed"
        );
        assert_eq!(
            ask(&mut m, &request(&["p0"]), "coord", 1)
                .unwrap_err()
                .code(),
            "bad_input"
        );
        assert_eq!(
            ask(&mut m, &request(&["p0", "p1"]), "coord", 3)
                .unwrap_err()
                .code(),
            "bad_input"
        );
        assert_eq!(
            ask(&mut m, &request(&["p0", "zz"]), "coord", 2)
                .unwrap_err()
                .code(),
            "not_allowed"
        );
        let e = ask(&mut m, &request(&["p0", "p3"]), "coord", 2).unwrap_err();
        assert!(e.to_string().contains("holds no seeds"), "{e}");
        assert!(ask(&mut m, &request(&["p0", "p0"]), "coord", 2).is_err());
        let mut elsewhere = request(&["p0", "p1"]);
        elsewhere.assignment = context().committee().assign(&[0, 2]).unwrap();
        assert!(ask(&mut m, &elsewhere, "coord", 2)
            .unwrap_err()
            .to_string()
            .contains("no set"));
        assert_eq!(m.released_for, None);
        assert_eq!(m.phase, MemberPhase::Holding);
        // The session's end forgets, and nothing is answered afterwards.
        assert_eq!(
            m.handle(MemberInput::Ended { from: "coord" }, 2).unwrap(),
            MemberDecision::Forget
        );
        assert!(ask(&mut m, &request(&["p0", "p1"]), "coord", 2).is_err());
    }
}
