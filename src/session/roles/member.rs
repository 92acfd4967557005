//! A committee member's session: it stores each participant's seeds (the bundles themselves
//! live in the keys store; the state keeps their digests), tells the coordinator which it
//! holds, pins exactly one contributor set S (also across restarts) and attests it, and
//! releases keys for S only once at least t members attest the same S.
//!
//! Why the attestations: members that each release for a different set let a coordinator
//! combine the releases linearly. With k = 3, t = 2 and three members pinned to S1, S2 and
//! S3 = S1 ∪ S2 (disjoint), every set's key follows from the other two, so S1 = {P, Sybil}
//! exposes P. An honest member pins one set only, so t attestations of S and t of S' ≠ S
//! share at least 2t − k members, all of whom must be colluding: with fewer colluders every
//! honest release is for the same S (docs/CRYPTO.md A.5).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Roster;
use crate::crypto::kahe::{
    check_contributors, contributors_digest, ReleaseRequest, SessionContext,
};
use crate::session::{Phase, SessionError};

/// What a member signs, with its node identity, to attest that it pinned the contributor set
/// with this digest (the digest binds the session's plan, hence the session).
pub fn pin_statement(contributors_digest: &[u8; 32]) -> Vec<u8> {
    [&b"fhenode pin v1\0"[..], contributors_digest].concat()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberPhase {
    /// Receiving seeds.
    Holding,
    /// One contributor set is pinned: only that set is attested and answered.
    Pinned,
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
    /// The digest of the one contributor set this member attests and releases keys for.
    pub pinned: Option<[u8; 32]>,
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
    /// The coordinator asks this member to pin the contributor set S and attest it; `context`
    /// is the session's (the plan digest binds S's digest to it).
    Pin {
        from: &'a str,
        contributors: &'a [String],
        context: &'a SessionContext,
    },
    /// The coordinator asks for the keys of a contributor set under an assignment of the sets.
    /// `attested` holds the committee indices whose attestations of this set the caller
    /// verified.
    Release {
        from: &'a str,
        request: &'a ReleaseRequest,
        context: &'a SessionContext,
        attested: &'a BTreeSet<u32>,
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
    /// Attest S; when `first`, the state (now naming S) is persisted before the attestation
    /// leaves the node.
    Pin { first: bool },
    /// Compute the release.
    Release,
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
            pinned: None,
        }
    }

    /// The session phase a member's phase corresponds to, for reports and errors.
    pub fn session_phase(&self) -> Phase {
        match self.phase {
            MemberPhase::Holding => Phase::Collecting,
            MemberPhase::Pinned => Phase::Decrypting,
            MemberPhase::Ended => Phase::Done,
        }
    }

    fn other_set(&self) -> SessionError {
        SessionError::Duplicate(format!(
            "member {} pinned another contributor set of session `{}`; it attests and answers \
             no other",
            self.index, self.roster.id
        ))
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
            // The end told again (a participant's result follows the members' notice) is
            // no news; anything else after the end is refused.
            if let MemberInput::Ended { from } = input {
                self.roster.check_coordinator(from)?;
                return Ok(MemberDecision::Forget);
            }
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
                    // Seeds that arrive after S is pinned cannot be used: refusing them tells
                    // the participant its body will not count.
                    None if self.phase == MemberPhase::Pinned => {
                        Err(self
                            .wrong("the contributor set is already pinned; late seeds are refused"))
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
            MemberInput::Pin {
                from,
                contributors,
                context,
            } => {
                self.roster.check_coordinator(from)?;
                // Every check runs before S is pinned: a refused request pins nothing.
                check_contributors(context, contributors)?;
                let digest = contributors_digest(context, contributors);
                if let Some(pinned) = self.pinned {
                    return if pinned == digest {
                        Ok(MemberDecision::Pin { first: false })
                    } else {
                        Err(self.other_set())
                    };
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
                self.pinned = Some(digest);
                self.phase = MemberPhase::Pinned;
                Ok(MemberDecision::Pin { first: true })
            }
            MemberInput::Release {
                from,
                request,
                context,
                attested,
            } => {
                self.roster.check_coordinator(from)?;
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
                match self.pinned {
                    None => return Err(self.wrong("no contributor set is pinned yet")),
                    Some(pinned) if pinned != request.contributors_digest(context) => {
                        return Err(self.other_set())
                    }
                    Some(_) => {}
                }
                let t = self.roster.threshold;
                if (attested.len() as u32) < t {
                    return Err(SessionError::BadInput(format!(
                        "{} members attest this contributor set; keys are released only when \
                         the threshold {t} do, so that no other set can be answered",
                        attested.len()
                    )));
                }
                Ok(MemberDecision::Release)
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

    /// Asks `m` to pin the set of `r`.
    fn ask(
        m: &mut MemberState,
        r: &ReleaseRequest,
        from: &str,
        floor: u32,
    ) -> Result<MemberDecision, SessionError> {
        let ctx = context();
        m.handle(
            MemberInput::Pin {
                from,
                contributors: &r.contributors,
                context: &ctx,
            },
            floor,
        )
    }

    /// Asks `m` for its release of `r`, with the attestations of `attested`.
    fn release(
        m: &mut MemberState,
        r: &ReleaseRequest,
        attested: &[u32],
    ) -> Result<MemberDecision, SessionError> {
        let ctx = context();
        let attested: BTreeSet<u32> = attested.iter().copied().collect();
        m.handle(
            MemberInput::Release {
                from: "coord",
                request: r,
                context: &ctx,
                attested: &attested,
            },
            2,
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
    fn one_contributor_set_is_pinned_and_released_only_with_t_attestations() {
        let mut m = member();
        let s = request(&["p0", "p1"]);
        // Nothing is released before S is pinned.
        assert_eq!(
            release(&mut m, &s, &[0, 1]).unwrap_err().code(),
            "wrong_phase"
        );
        assert_eq!(
            ask(&mut m, &s, "coord", 2).unwrap(),
            MemberDecision::Pin { first: true }
        );
        assert_eq!(
            ask(&mut m, &s, "coord", 2).unwrap(),
            MemberDecision::Pin { first: false }
        );
        // Fewer than t = 2 attestations: refused.
        assert_eq!(release(&mut m, &s, &[1]).unwrap_err().code(), "bad_input");
        assert_eq!(
            release(&mut m, &s, &[0, 1]).unwrap(),
            MemberDecision::Release
        );
        // The same S under another assignment is answered too.
        let mut other_assignment = s.clone();
        other_assignment.assignment = context().committee().assign(&[1, 2]).unwrap();
        assert!(release(&mut m, &other_assignment, &[1, 2]).is_ok());
        let s2 = request(&["p0", "p2"]);
        assert_eq!(
            ask(&mut m, &s2, "coord", 2).unwrap_err().code(),
            "duplicate"
        );
        assert_eq!(
            release(&mut m, &s2, &[0, 1, 2]).unwrap_err().code(),
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
            MemberDecision::Pin { first: false }
        );
        assert_eq!(
            release(&mut restarted, &s, &[0, 1]).unwrap(),
            MemberDecision::Release
        );
        // Late seeds are refused once pinned.
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
        assert!(release(&mut m, &elsewhere, &[0, 1, 2])
            .unwrap_err()
            .to_string()
            .contains("no set"));
        assert_eq!(m.pinned, None);
        assert_eq!(m.phase, MemberPhase::Holding);
        // The session's end forgets, and nothing is answered afterwards.
        assert_eq!(
            m.handle(MemberInput::Ended { from: "coord" }, 2).unwrap(),
            MemberDecision::Forget
        );
        // Told again: no news; from anyone else: refused.
        assert_eq!(
            m.handle(MemberInput::Ended { from: "coord" }, 2).unwrap(),
            MemberDecision::Forget
        );
        assert!(m.handle(MemberInput::Ended { from: "p0" }, 2).is_err());
        assert!(ask(&mut m, &request(&["p0", "p1"]), "coord", 2).is_err());
    }
}
