//! The coordinator's session: deliver the plan to the committee, then to the participants;
//! collect bodies until everyone submitted or the deadline; ask the members which seeds they
//! hold; fix the contributor set S and the answering members T; gather one key release per
//! member of T (re-assigning the sets among the rest if one fails); combine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Roster;
use crate::crypto::kahe::Committee;
use crate::session::{Phase, SessionError, Timings};

/// A complete, validated submission as the coordinator records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionMeta {
    pub digest: [u8; 32],
    pub clipped: u64,
    pub bytes: u64,
}

/// The persisted state of a coordinated session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorState {
    pub roster: Roster,
    pub phase: Phase,
    /// Members that stored the plan.
    pub plan_acks: BTreeSet<u32>,
    pub submitted: BTreeMap<String, SubmissionMeta>,
    /// Closing: what each member that answered says it holds (absent: no answer yet; empty
    /// for a member that could not be reached).
    pub holdings: BTreeMap<u32, BTreeSet<String>>,
    /// S, fixed at the end of closing (sorted).
    pub contributors: Vec<String>,
    /// T: members that hold the seeds of every contributor and may be asked.
    pub answering: Vec<u32>,
    /// Member per set ([`Committee::sets`]) of the current request.
    pub assignment: Vec<u32>,
    /// Counts assignments: a release answers one, and one for an earlier assignment (still
    /// in flight when a member failed) is ignored.
    pub generation: u32,
    /// Members of the current assignment whose releases arrived (kept in memory only).
    #[serde(skip)]
    pub released: BTreeSet<u32>,
    /// The sum over S is ready (in memory only).
    #[serde(skip)]
    pub summed: bool,
    pub timings: Timings,
    pub failure: Option<String>,
    pub clipped: u64,
    /// Peers that acknowledged the end notice (the result, or the failure): never sent it
    /// again, after a restart either.
    pub notified: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorEvent {
    /// The actor persisted the new session.
    Start,
    PlanStored {
        member: u32,
    },
    SubmissionComplete {
        participant: String,
        meta: SubmissionMeta,
    },
    /// A member's answer to the holdings query; `None` when it could not be reached.
    Holdings {
        member: u32,
        held: Option<Vec<String>>,
    },
    /// The bodies of S are summed.
    Summed,
    /// A member's release for assignment `generation` arrived and was checked.
    Released {
        member: u32,
        generation: u32,
    },
    /// A member of T could not release for assignment `generation` (unreachable, refused, or
    /// its release was malformed).
    ReleaseFailed {
        member: u32,
        generation: u32,
        reason: String,
    },
    /// The result is decoded and stored.
    Combined,
    /// `peer` acknowledged the end notice (result or failure).
    Notified {
        peer: String,
    },
    /// Time passes: deadlines are checked.
    Tick,
    Fail {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorEffect {
    /// Send the plan to these members (retrying until the deadline).
    DeliverPlanToMembers(Vec<u32>),
    /// Send the plan to every participant.
    DeliverPlanToParticipants,
    /// Ask these members which contributors' seeds they hold.
    QueryHoldings(Vec<u32>),
    /// Sum the bodies of these contributors.
    Accumulate {
        contributors: Vec<String>,
    },
    /// Ask each member of assignment `generation` for its release of S.
    RequestReleases {
        members: Vec<u32>,
        generation: u32,
    },
    /// Subtract the releases and decode.
    Combine,
    PublishResult,
    PublishFailure,
}

impl CoordinatorState {
    pub fn new(roster: Roster, now_ms: u64) -> Self {
        CoordinatorState {
            roster,
            phase: Phase::Proposed,
            plan_acks: BTreeSet::new(),
            submitted: BTreeMap::new(),
            holdings: BTreeMap::new(),
            contributors: Vec::new(),
            answering: Vec::new(),
            assignment: Vec::new(),
            generation: 0,
            released: BTreeSet::new(),
            summed: false,
            timings: Timings {
                created_ms: now_ms,
                ..Default::default()
            },
            failure: None,
            clipped: 0,
            notified: BTreeSet::new(),
        }
    }

    fn k(&self) -> u32 {
        self.roster.committee.len() as u32
    }

    fn committee(&self) -> Result<Committee, SessionError> {
        Ok(Committee::new(self.k(), self.roster.threshold)?)
    }

    fn all_members(&self) -> Vec<u32> {
        (0..self.k()).collect()
    }

    /// Deadline of the current phase, in Unix milliseconds: `deadline_secs` for the plan's
    /// delivery, for collecting from the opening, and for closing and decrypting together.
    pub fn phase_deadline_ms(&self) -> Option<u64> {
        let span = self.roster.deadline_secs.saturating_mul(1000);
        let t = &self.timings;
        match self.phase {
            Phase::Proposed => Some(t.created_ms + span),
            Phase::Collecting => t.opened_ms.map(|o| o + span),
            Phase::Closing | Phase::Decrypting => t.closed_ms.map(|c| c + span),
            Phase::Done | Phase::Failed => None,
        }
    }

    /// Members of the current assignment (those with at least one set).
    pub fn assigned_members(&self) -> Vec<u32> {
        let set: BTreeSet<u32> = self.assignment.iter().copied().collect();
        set.into_iter().collect()
    }

    fn fail(&mut self, reason: String, now_ms: u64) -> Vec<CoordinatorEffect> {
        self.phase = Phase::Failed;
        self.failure = Some(reason);
        self.timings.finished_ms = Some(now_ms);
        vec![CoordinatorEffect::PublishFailure]
    }

    fn close(&mut self, now_ms: u64) -> Vec<CoordinatorEffect> {
        self.phase = Phase::Closing;
        self.timings.closed_ms = Some(now_ms);
        self.holdings.clear();
        vec![CoordinatorEffect::QueryHoldings(self.all_members())]
    }

    /// Effects to perform again after a restart, for the phase the session is in.
    pub fn resume(&mut self) -> Vec<CoordinatorEffect> {
        self.released.clear();
        self.summed = false;
        match self.phase {
            Phase::Proposed => {
                let missing = self
                    .all_members()
                    .into_iter()
                    .filter(|m| !self.plan_acks.contains(m))
                    .collect();
                vec![CoordinatorEffect::DeliverPlanToMembers(missing)]
            }
            Phase::Collecting => vec![CoordinatorEffect::DeliverPlanToParticipants],
            Phase::Closing => {
                self.holdings.clear();
                vec![CoordinatorEffect::QueryHoldings(self.all_members())]
            }
            // The same S and assignment: members answer them again, byte for byte.
            Phase::Decrypting => vec![
                CoordinatorEffect::Accumulate {
                    contributors: self.contributors.clone(),
                },
                CoordinatorEffect::RequestReleases {
                    members: self.assigned_members(),
                    generation: self.generation,
                },
            ],
            Phase::Done => vec![CoordinatorEffect::PublishResult],
            Phase::Failed => vec![CoordinatorEffect::PublishFailure],
        }
    }

    /// Applies one event. Events that do not fit the phase are refused and change nothing.
    pub fn handle(
        &mut self,
        event: CoordinatorEvent,
        now_ms: u64,
    ) -> Result<Vec<CoordinatorEffect>, SessionError> {
        let wrong = |s: &Self, what: &str| SessionError::WrongPhase {
            session: s.roster.id.clone(),
            phase: s.phase,
            what: what.to_string(),
        };
        match (self.phase, event) {
            (phase, CoordinatorEvent::Notified { peer }) if phase.is_terminal() => {
                if self.roster.peers_include(&peer) {
                    self.notified.insert(peer);
                }
                Ok(Vec::new())
            }
            (phase, CoordinatorEvent::Fail { reason }) if !phase.is_terminal() => {
                Ok(self.fail(reason, now_ms))
            }
            (Phase::Proposed, CoordinatorEvent::Start) => {
                Ok(vec![CoordinatorEffect::DeliverPlanToMembers(
                    self.all_members(),
                )])
            }
            (phase, CoordinatorEvent::PlanStored { member }) if !phase.is_terminal() => {
                if member >= self.k() {
                    return Err(SessionError::BadInput(format!(
                        "no committee member {member}"
                    )));
                }
                self.plan_acks.insert(member);
                // Participants may start once t members can take their seeds; the rest keep
                // being sent the plan.
                if phase == Phase::Proposed && self.plan_acks.len() as u32 >= self.roster.threshold
                {
                    self.phase = Phase::Collecting;
                    self.timings.opened_ms = Some(now_ms);
                    return Ok(vec![CoordinatorEffect::DeliverPlanToParticipants]);
                }
                Ok(Vec::new())
            }
            (Phase::Collecting, CoordinatorEvent::SubmissionComplete { participant, meta }) => {
                if !self.roster.is_participant(&participant) {
                    return Err(self.roster.not_participant(&participant));
                }
                if self.submitted.contains_key(&participant) {
                    return Err(SessionError::Duplicate(format!(
                        "participant {participant} already submitted to session `{}`",
                        self.roster.id
                    )));
                }
                self.submitted.insert(participant, meta);
                if self.submitted.len() == self.roster.participants.len() {
                    return Ok(self.close(now_ms));
                }
                Ok(Vec::new())
            }
            (Phase::Closing, CoordinatorEvent::Holdings { member, held }) => {
                if member >= self.k() {
                    return Err(SessionError::BadInput(format!(
                        "no committee member {member}"
                    )));
                }
                let held = held
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| self.submitted.contains_key(p))
                    .collect();
                self.holdings.insert(member, held);
                if (self.holdings.len() as u32) < self.k() {
                    return Ok(Vec::new());
                }
                self.fix_contributors(now_ms)
            }
            (Phase::Decrypting, CoordinatorEvent::Summed) => {
                self.summed = true;
                Ok(self.combine_if_ready())
            }
            (Phase::Decrypting, CoordinatorEvent::Released { generation, .. })
            | (Phase::Decrypting, CoordinatorEvent::ReleaseFailed { generation, .. })
                if generation != self.generation =>
            {
                Ok(Vec::new())
            }
            (Phase::Decrypting, CoordinatorEvent::Released { member, .. }) => {
                if !self.assignment.contains(&member) {
                    return Err(SessionError::BadInput(format!(
                        "member {member} has no set in the current assignment"
                    )));
                }
                self.released.insert(member);
                Ok(self.combine_if_ready())
            }
            (Phase::Decrypting, CoordinatorEvent::ReleaseFailed { member, reason, .. }) => {
                if !self.assignment.contains(&member) {
                    return Ok(Vec::new());
                }
                self.reassign_without(member, &reason, now_ms)
            }
            (Phase::Decrypting, CoordinatorEvent::Combined) => {
                self.phase = Phase::Done;
                self.timings.finished_ms = Some(now_ms);
                Ok(vec![CoordinatorEffect::PublishResult])
            }
            (phase, CoordinatorEvent::Tick) => {
                let Some(deadline) = self.phase_deadline_ms() else {
                    return Ok(Vec::new());
                };
                if now_ms < deadline {
                    return Ok(Vec::new());
                }
                let reason = match phase {
                    Phase::Collecting => {
                        let have = self.submitted.len() as u32;
                        if have >= self.roster.min_participants {
                            return Ok(self.close(now_ms));
                        }
                        let missing: Vec<&String> = self
                            .roster
                            .participants
                            .iter()
                            .filter(|p| !self.submitted.contains_key(*p))
                            .collect();
                        format!(
                            "only {have} of the required {} participants submitted before the \
                             deadline; waited for {}",
                            self.roster.min_participants,
                            named(missing)
                        )
                    }
                    // Members that never answered the holdings query hold nothing: one
                    // that hangs rather than disconnects must not cost the round.
                    Phase::Closing => {
                        for m in 0..self.k() {
                            self.holdings.entry(m).or_default();
                        }
                        return self.fix_contributors(now_ms);
                    }
                    Phase::Decrypting => {
                        let assigned = self.assigned_members();
                        let waited = assigned
                            .iter()
                            .filter(|m| !self.released.contains(*m))
                            .filter_map(|m| self.roster.committee.get(*m as usize))
                            .collect();
                        format!(
                            "the committee did not release the keys in time; waited for {}",
                            named(waited)
                        )
                    }
                    _ => {
                        let waited = (0..self.k())
                            .filter(|m| !self.plan_acks.contains(m))
                            .filter_map(|m| self.roster.committee.get(m as usize))
                            .collect();
                        format!(
                            "only {} of the {} committee members needed stored the plan in \
                             time; waited for {}",
                            self.plan_acks.len(),
                            self.roster.threshold,
                            named(waited)
                        )
                    }
                };
                Ok(self.fail(reason, now_ms))
            }
            (_, event) => Err(wrong(self, &format!("{event:?} does not fit"))),
        }
    }

    /// Chooses S and T from the members' holdings: the T (of at least t responding members)
    /// whose common holdings cover the most submissions, the largest such T on a tie (the sets
    /// spread over more members).
    fn fix_contributors(&mut self, now_ms: u64) -> Result<Vec<CoordinatorEffect>, SessionError> {
        let committee = self.committee()?;
        let t = committee.threshold();
        let mut best: Option<(BTreeSet<String>, Vec<u32>)> = None;
        for group in 0u32..(1 << self.k()) {
            if group.count_ones() < t {
                continue;
            }
            let members: Vec<u32> = (0..self.k()).filter(|m| group & (1 << m) != 0).collect();
            let mut common: BTreeSet<String> = self.submitted.keys().cloned().collect();
            for m in &members {
                let held = self.holdings.get(m).cloned().unwrap_or_default();
                common.retain(|p| held.contains(p));
            }
            let better = match &best {
                None => true,
                Some((s, tm)) => (common.len(), members.len()) > (s.len(), tm.len()),
            };
            if better {
                best = Some((common, members));
            }
        }
        let (s, members) = best.unwrap_or_default();
        if (s.len() as u32) < self.roster.min_participants.max(1) {
            let reason = format!(
                "only {} submissions have their seeds held by {} committee members (threshold); \
                 {} are required",
                s.len(),
                t,
                self.roster.min_participants
            );
            return Ok(self.fail(reason, now_ms));
        }
        self.contributors = s.into_iter().collect();
        self.clipped = self
            .contributors
            .iter()
            .filter_map(|p| self.submitted.get(p))
            .map(|m| m.clipped)
            .sum();
        self.answering = members;
        self.assignment = committee.assign(&self.answering)?;
        self.generation += 1;
        self.phase = Phase::Decrypting;
        self.timings.decrypting_ms = Some(now_ms);
        Ok(vec![
            CoordinatorEffect::Accumulate {
                contributors: self.contributors.clone(),
            },
            CoordinatorEffect::RequestReleases {
                members: self.assigned_members(),
                generation: self.generation,
            },
        ])
    }

    /// Drops a failed member from T and spreads the sets over the rest, for the same S.
    fn reassign_without(
        &mut self,
        member: u32,
        reason: &str,
        now_ms: u64,
    ) -> Result<Vec<CoordinatorEffect>, SessionError> {
        let committee = self.committee()?;
        self.answering.retain(|&m| m != member);
        if (self.answering.len() as u32) < committee.threshold() {
            let why = format!(
                "committee member {} could not release its keys ({reason}), and fewer than the \
                 threshold {} of the members holding every contributor's seeds remain",
                self.roster.member_name(member),
                committee.threshold()
            );
            return Ok(self.fail(why, now_ms));
        }
        self.assignment = committee.assign(&self.answering)?;
        self.generation += 1;
        // Releases are bound to their assignment: all are asked again under the new one.
        self.released.clear();
        Ok(vec![CoordinatorEffect::RequestReleases {
            members: self.assigned_members(),
            generation: self.generation,
        }])
    }

    fn combine_if_ready(&self) -> Vec<CoordinatorEffect> {
        let all_in = self
            .assigned_members()
            .iter()
            .all(|m| self.released.contains(m));
        if self.summed && all_in {
            vec![CoordinatorEffect::Combine]
        } else {
            Vec::new()
        }
    }
}

/// The peers a deadline waited for, as a failure reason names them.
fn named(peers: Vec<&String>) -> String {
    if peers.is_empty() {
        return "no one in particular".into();
    }
    peers
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::testing::roster;
    use super::*;
    use CoordinatorEffect as E;
    use CoordinatorEvent as V;

    fn meta(i: u8) -> SubmissionMeta {
        SubmissionMeta {
            digest: [i; 32],
            clipped: i as u64,
            bytes: 10,
        }
    }

    /// A session of 5 members (t = 4) and 4 participants, collecting.
    fn collecting() -> CoordinatorState {
        let mut s = CoordinatorState::new(roster(5, 4, 4, 2), 0);
        assert_eq!(
            s.handle(V::Start, 1).unwrap(),
            vec![E::DeliverPlanToMembers(vec![0, 1, 2, 3, 4])]
        );
        for m in 0..3 {
            assert!(s.handle(V::PlanStored { member: m }, 2).unwrap().is_empty());
        }
        assert_eq!(
            s.handle(V::PlanStored { member: 3 }, 3).unwrap(),
            vec![E::DeliverPlanToParticipants]
        );
        assert_eq!(s.phase, Phase::Collecting);
        // A late member's acknowledgement is recorded.
        s.handle(V::PlanStored { member: 4 }, 4).unwrap();
        s
    }

    fn submit_all(s: &mut CoordinatorState) -> Vec<CoordinatorEffect> {
        let mut last = Vec::new();
        for i in 0..4u8 {
            last = s
                .handle(
                    V::SubmissionComplete {
                        participant: format!("p{i}"),
                        meta: meta(i),
                    },
                    10,
                )
                .unwrap();
        }
        last
    }

    fn submission(i: u8) -> CoordinatorEvent {
        V::SubmissionComplete {
            participant: format!("p{i}"),
            meta: meta(i),
        }
    }

    /// Member `member` answers the holdings query with `names`.
    fn holdings(member: u32, names: &[&str]) -> CoordinatorEvent {
        V::Holdings {
            member,
            held: held(names),
        }
    }

    fn held(names: &[&str]) -> Option<Vec<String>> {
        Some(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn an_absent_member_is_left_out_of_t_and_the_sum_is_over_every_body() {
        let mut s = collecting();
        assert_eq!(
            submit_all(&mut s),
            vec![E::QueryHoldings(vec![0, 1, 2, 3, 4])]
        );
        let all = &["p0", "p1", "p2", "p3"];
        for m in 0..4 {
            assert!(s.handle(holdings(m, all), 11).unwrap().is_empty());
        }
        // Member 4 was killed: unreachable.
        let effects = s
            .handle(
                V::Holdings {
                    member: 4,
                    held: None,
                },
                12,
            )
            .unwrap();
        assert_eq!(s.phase, Phase::Decrypting);
        assert_eq!(s.contributors, vec!["p0", "p1", "p2", "p3"]);
        assert_eq!(s.answering, vec![0, 1, 2, 3]);
        assert_eq!(s.clipped, 6);
        assert_eq!(
            effects,
            vec![
                E::Accumulate {
                    contributors: s.contributors.clone()
                },
                E::RequestReleases {
                    members: vec![0, 1, 2, 3],
                    generation: 1
                }
            ]
        );
        s.handle(V::Summed, 13).unwrap();
        for m in 0..3 {
            assert!(s
                .handle(
                    V::Released {
                        member: m,
                        generation: 1
                    },
                    13
                )
                .unwrap()
                .is_empty());
        }
        assert_eq!(
            s.handle(
                V::Released {
                    member: 3,
                    generation: 1
                },
                14
            )
            .unwrap(),
            vec![E::Combine]
        );
        assert_eq!(s.handle(V::Combined, 15).unwrap(), vec![E::PublishResult]);
        assert_eq!(s.phase, Phase::Done);
    }

    #[test]
    fn a_body_whose_seeds_too_few_members_hold_is_left_out() {
        let mut s = collecting();
        submit_all(&mut s);
        // p3's seeds reached only members 0 and 1.
        s.handle(holdings(0, &["p0", "p1", "p2", "p3"]), 11)
            .unwrap();
        s.handle(holdings(1, &["p0", "p1", "p2", "p3"]), 11)
            .unwrap();
        for m in 2..5 {
            s.handle(holdings(m, &["p0", "p1", "p2"]), 11).unwrap();
        }
        assert_eq!(s.contributors, vec!["p0", "p1", "p2"]);
        assert_eq!(s.answering, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_member_failing_to_release_is_replaced_for_the_same_set() {
        let mut s = collecting();
        submit_all(&mut s);
        let all = &["p0", "p1", "p2", "p3"];
        for m in 0..5 {
            s.handle(holdings(m, all), 11).unwrap();
        }
        assert_eq!(s.answering, vec![0, 1, 2, 3, 4]);
        let contributors = s.contributors.clone();
        s.handle(V::Summed, 12).unwrap();
        s.handle(
            V::Released {
                member: 0,
                generation: 1,
            },
            12,
        )
        .unwrap();
        let effects = s
            .handle(
                V::ReleaseFailed {
                    member: 2,
                    generation: 1,
                    reason: "unreachable".into(),
                },
                13,
            )
            .unwrap();
        assert_eq!(
            effects,
            vec![E::RequestReleases {
                members: vec![0, 1, 3, 4],
                generation: 2
            }]
        );
        assert_eq!(s.contributors, contributors);
        assert!(s.released.is_empty());
        // A release still in flight under the first assignment is ignored.
        let stale = V::Released {
            member: 1,
            generation: 1,
        };
        assert!(s.handle(stale, 13).unwrap().is_empty());
        assert!(s.released.is_empty());
        // One more failure leaves 3 < t.
        let effects = s
            .handle(
                V::ReleaseFailed {
                    member: 4,
                    generation: 2,
                    reason: "refused".into(),
                },
                14,
            )
            .unwrap();
        assert_eq!(effects, vec![E::PublishFailure]);
        assert!(s.failure.unwrap().contains("threshold"));
    }

    #[test]
    fn too_few_held_bodies_fail_the_session_with_the_reason() {
        let mut s = collecting();
        submit_all(&mut s);
        for m in 0..5 {
            s.handle(holdings(m, &["p0"]), 11).unwrap();
        }
        assert_eq!(s.phase, Phase::Failed);
        assert!(s.failure.as_ref().unwrap().contains("are required"));
    }

    #[test]
    fn deadlines_close_or_fail_and_restarts_repeat_the_step() {
        let mut s = collecting();
        s.handle(submission(0), 10).unwrap();
        let deadline = s.phase_deadline_ms().unwrap();
        assert!(s.handle(V::Tick, deadline - 1).unwrap().is_empty());
        assert_eq!(
            s.handle(V::Tick, deadline).unwrap(),
            vec![E::PublishFailure]
        );

        let mut s = collecting();
        s.handle(submission(0), 10).unwrap();
        s.handle(submission(1), 10).unwrap();
        let deadline = s.phase_deadline_ms().unwrap();
        assert_eq!(
            s.handle(V::Tick, deadline).unwrap(),
            vec![E::QueryHoldings(vec![0, 1, 2, 3, 4])]
        );
        for m in 0..5 {
            s.handle(holdings(m, &["p0", "p1"]), deadline).unwrap();
        }
        s.handle(
            V::Released {
                member: 0,
                generation: 1,
            },
            deadline,
        )
        .unwrap();
        // Restarted from the persisted state: the same S and assignment are asked again.
        let mut back: CoordinatorState =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        let members = back.assigned_members();
        assert_eq!(
            back.resume(),
            vec![
                E::Accumulate {
                    contributors: vec!["p0".into(), "p1".into()]
                },
                E::RequestReleases {
                    members,
                    generation: 1
                }
            ]
        );
        assert!(back.released.is_empty());
        assert_eq!(back.assignment, s.assignment);
    }

    #[test]
    fn strangers_duplicates_and_misplaced_events_are_refused() {
        let mut s = collecting();
        let e = s.handle(
            V::SubmissionComplete {
                participant: "zz".into(),
                meta: meta(0),
            },
            10,
        );
        assert_eq!(e.unwrap_err().code(), "not_allowed");
        s.handle(submission(0), 10).unwrap();
        let e = s.handle(
            V::SubmissionComplete {
                participant: "p0".into(),
                meta: meta(1),
            },
            10,
        );
        assert_eq!(e.unwrap_err().code(), "duplicate");
        assert_eq!(
            s.handle(
                V::Released {
                    member: 0,
                    generation: 1
                },
                10
            )
            .unwrap_err()
            .code(),
            "wrong_phase"
        );
        assert_eq!(
            s.handle(V::PlanStored { member: 9 }, 10)
                .unwrap_err()
                .code(),
            "bad_input"
        );
        assert_eq!(s.submitted.len(), 1);
    }

    #[test]
    fn a_member_that_never_answers_the_holdings_query_is_left_out_at_the_deadline() {
        let mut s = collecting();
        submit_all(&mut s);
        let all = &["p0", "p1", "p2", "p3"];
        for m in 0..4 {
            s.handle(holdings(m, all), 11).unwrap();
        }
        let deadline = s.phase_deadline_ms().unwrap();
        let effects = s.handle(V::Tick, deadline).unwrap();
        assert_eq!(s.phase, Phase::Decrypting);
        assert_eq!(s.answering, vec![0, 1, 2, 3]);
        assert_eq!(effects.len(), 2);
    }

    #[test]
    fn a_plan_that_t_members_never_store_fails() {
        let mut s = CoordinatorState::new(roster(3, 2, 2, 2), 0);
        s.handle(V::Start, 0).unwrap();
        s.handle(V::PlanStored { member: 0 }, 1).unwrap();
        let deadline = s.phase_deadline_ms().unwrap();
        assert_eq!(
            s.handle(V::Tick, deadline).unwrap(),
            vec![E::PublishFailure]
        );
        let reason = s.failure.unwrap();
        assert!(reason.contains("stored the plan"), "{reason}");
        assert!(reason.ends_with("waited for m1, m2"), "{reason}");
    }

    #[test]
    fn deadline_failures_name_whom_they_waited_for() {
        let mut s = collecting();
        s.handle(submission(2), 10).unwrap();
        let deadline = s.phase_deadline_ms().unwrap();
        s.handle(V::Tick, deadline).unwrap();
        let reason = s.failure.clone().unwrap();
        assert!(reason.ends_with("waited for p0, p1, p3"), "{reason}");

        let mut s = collecting();
        submit_all(&mut s);
        for m in 0..5 {
            s.handle(holdings(m, &["p0", "p1", "p2", "p3"]), 20)
                .unwrap();
        }
        let members = s.assigned_members();
        s.handle(
            V::Released {
                member: members[0],
                generation: s.generation,
            },
            21,
        )
        .unwrap();
        let deadline = s.phase_deadline_ms().unwrap();
        s.handle(V::Tick, deadline).unwrap();
        let reason = s.failure.unwrap();
        let waited: Vec<String> = members[1..].iter().map(|m| format!("m{m}")).collect();
        assert!(
            reason.ends_with(&format!("waited for {}", waited.join(", "))),
            "{reason}"
        );
    }
}
