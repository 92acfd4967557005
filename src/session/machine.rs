//! The coordinator's view of a session as a pure state machine: `handle(state, event, now)`
//! changes the state and returns the effects to perform. No I/O here: the aggregation actor
//! persists the new state, then performs the effects, and feeds their outcomes back as events.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::crypto::{CollectivePublicKey, KeyCeremony, KeyCommitment, PublicKeyShare, SessionTag};

use super::{SessionError, SessionPlan, Timings};

/// Ordered as a session moves through them (`Failed` last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Created, not yet sent to the committee.
    Proposed,
    /// Committee members commit to and reveal key shares.
    Keygen,
    /// The collective key is being delivered.
    Open,
    /// Participants submit encrypted updates.
    Collecting,
    /// Submissions are being summed.
    Closing,
    /// The committee decrypts the sum.
    Decrypting,
    Done,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Proposed,
        Phase::Keygen,
        Phase::Open,
        Phase::Collecting,
        Phase::Closing,
        Phase::Decrypting,
        Phase::Done,
        Phase::Failed,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Proposed => "proposed",
            Phase::Keygen => "keygen",
            Phase::Open => "open",
            Phase::Collecting => "collecting",
            Phase::Closing => "closing",
            Phase::Decrypting => "decrypting",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A complete, validated submission as the coordinator records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionMeta {
    pub digest: [u8; 32],
    pub clipped: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The actor has persisted the new session: start key generation.
    Start,
    Commitment {
        member: u32,
        commitment: KeyCommitment,
    },
    Share {
        member: u32,
        share: PublicKeyShare,
    },
    /// Every participant and member has the collective key (or was tried).
    KeyDelivered,
    SubmissionComplete {
        participant: String,
        meta: SubmissionMeta,
    },
    /// Time passes: deadlines are checked.
    Tick,
    /// The sum is computed; its decryption request has this digest.
    Aggregated {
        request_digest: [u8; 32],
    },
    Partial {
        member: u32,
    },
    /// The sum is decrypted and the result stored.
    Combined,
    /// Something the protocol cannot recover from.
    Fail {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Ask each member (index) for its key-share commitment.
    RequestCommitments { members: Vec<u32> },
    /// Ask each member to reveal its public share.
    RequestShares {
        members: Vec<u32>,
        commitments: Vec<KeyCommitment>,
    },
    /// Send the plan, commitments and shares to every participant and member.
    DeliverKey,
    /// Sum the submissions of these participants.
    Accumulate { contributors: Vec<String> },
    /// Ask each member for its partial decryption.
    RequestPartials { members: Vec<u32> },
    /// Combine the partials and decode.
    Combine,
    /// Push the result to the participants.
    PublishResult,
    /// Tell the participants and members the session failed, and why.
    PublishFailure,
}

/// The coordinator's persisted session state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coordinated {
    pub plan: SessionPlan,
    pub phase: Phase,
    pub commitments: BTreeMap<u32, KeyCommitment>,
    /// Persisted apart from the rest (by the aggregation actor, when they change): they are
    /// the bulk of the state (512 KiB per member `secure`) and change only during keygen.
    /// Shared, so that the copy each transition makes of the state does not copy them.
    #[serde(skip)]
    pub shares: BTreeMap<u32, Arc<PublicKeyShare>>,
    /// How many shares arrived: still known once the shares are dropped at the session's end.
    #[serde(default)]
    pub shares_received: usize,
    pub submitted: BTreeMap<String, SubmissionMeta>,
    pub contributors: Vec<String>,
    pub request_digest: Option<[u8; 32]>,
    pub partials: BTreeSet<u32>,
    pub timings: Timings,
    pub failure: Option<String>,
    pub clipped: u64,
}

impl Coordinated {
    pub fn new(plan: SessionPlan, now_ms: u64) -> Self {
        Coordinated {
            plan,
            phase: Phase::Proposed,
            commitments: BTreeMap::new(),
            shares: BTreeMap::new(),
            shares_received: 0,
            submitted: BTreeMap::new(),
            contributors: Vec::new(),
            request_digest: None,
            partials: BTreeSet::new(),
            timings: Timings {
                created_ms: now_ms,
                ..Default::default()
            },
            failure: None,
            clipped: 0,
        }
    }

    fn members(&self) -> impl Iterator<Item = u32> + '_ {
        0..self.plan.committee.len() as u32
    }

    fn missing<T>(&self, have: &BTreeMap<u32, T>) -> Vec<u32> {
        self.members().filter(|m| !have.contains_key(m)).collect()
    }

    /// Deadline of the current phase, in Unix milliseconds. Every waiting phase gets
    /// `deadline_secs`; collecting counts from the opening.
    pub fn phase_deadline_ms(&self) -> Option<u64> {
        let span = self.plan.deadline_secs.saturating_mul(1000);
        let t = &self.timings;
        match self.phase {
            Phase::Proposed | Phase::Keygen | Phase::Open => Some(t.created_ms + span),
            Phase::Collecting => t.opened_ms.map(|o| o + span),
            Phase::Closing | Phase::Decrypting => t.closed_ms.map(|c| c + span),
            Phase::Done | Phase::Failed => None,
        }
    }

    /// The collective key, rebuilt from the revealed shares (checked against commitments).
    pub fn collective_key(&self) -> Result<CollectivePublicKey, SessionError> {
        collective_key(
            &self.plan,
            self.commitments.values(),
            self.shares.values().map(|s| &**s),
        )
    }

    fn fail(&mut self, reason: String, now_ms: u64) -> Vec<Effect> {
        self.phase = Phase::Failed;
        self.failure = Some(reason);
        self.timings.finished_ms = Some(now_ms);
        vec![Effect::PublishFailure]
    }

    fn close(&mut self, now_ms: u64) -> Vec<Effect> {
        self.phase = Phase::Closing;
        self.timings.closed_ms = Some(now_ms);
        self.contributors = self.submitted.keys().cloned().collect();
        self.clipped = self.submitted.values().map(|m| m.clipped).sum();
        vec![Effect::Accumulate {
            contributors: self.contributors.clone(),
        }]
    }

    /// Effects to perform again after a restart, for the phase the session is in.
    pub fn resume(&self) -> Vec<Effect> {
        match self.phase {
            Phase::Proposed => Vec::new(),
            Phase::Keygen if self.commitments.len() < self.plan.committee.len() => {
                vec![Effect::RequestCommitments {
                    members: self.missing(&self.commitments),
                }]
            }
            Phase::Keygen => vec![Effect::RequestShares {
                members: self.missing(&self.shares),
                commitments: self.commitments.values().cloned().collect(),
            }],
            Phase::Open => vec![Effect::DeliverKey],
            Phase::Collecting => Vec::new(),
            Phase::Failed => vec![Effect::PublishFailure],
            Phase::Closing => vec![Effect::Accumulate {
                contributors: self.contributors.clone(),
            }],
            // Re-summing the same stored submissions gives the same request, which members
            // answer again from their record.
            Phase::Decrypting => vec![Effect::Accumulate {
                contributors: self.contributors.clone(),
            }],
            Phase::Done => vec![Effect::PublishResult],
        }
    }

    /// Applies one event. Events that do not fit the phase are refused and change nothing.
    pub fn handle(&mut self, event: Event, now_ms: u64) -> Result<Vec<Effect>, SessionError> {
        let wrong = |s: &Self, what: &str| SessionError::WrongPhase {
            session: s.plan.id.clone(),
            phase: s.phase,
            what: what.to_string(),
        };
        let committee = self.plan.committee.len();
        match (self.phase, event) {
            (_, Event::Fail { reason }) if !self.phase.is_terminal() => {
                Ok(self.fail(reason, now_ms))
            }
            (Phase::Proposed, Event::Start) => {
                self.phase = Phase::Keygen;
                Ok(vec![Effect::RequestCommitments {
                    members: self.members().collect(),
                }])
            }
            (Phase::Keygen, Event::Commitment { member, commitment }) => {
                if member as usize >= committee || commitment.member != member {
                    return Err(SessionError::BadInput(format!(
                        "commitment for member {member} is misaddressed"
                    )));
                }
                if self.commitments.len() == committee {
                    return Err(wrong(self, "all commitments are already in"));
                }
                self.commitments.entry(member).or_insert(commitment);
                if self.commitments.len() == committee {
                    return Ok(vec![Effect::RequestShares {
                        members: self.members().collect(),
                        commitments: self.commitments.values().cloned().collect(),
                    }]);
                }
                Ok(Vec::new())
            }
            (Phase::Keygen, Event::Share { member, share }) => {
                let Some(commitment) = self.commitments.get(&member) else {
                    return Err(SessionError::BadInput(format!(
                        "share from member {member} before its commitment"
                    )));
                };
                if self.commitments.len() < committee {
                    return Err(wrong(
                        self,
                        "shares are revealed only after every commitment",
                    ));
                }
                if share.member != member || share.commitment() != *commitment {
                    // A share that does not match its commitment is a rogue-key attempt or a
                    // broken member: the session cannot go on with it.
                    let reason = format!(
                        "committee member {} revealed a key share that does not match its commitment",
                        self.plan.committee.get(member as usize).map(String::as_str).unwrap_or("?")
                    );
                    return Ok(self.fail(reason, now_ms));
                }
                self.shares.insert(member, Arc::new(share));
                self.shares_received = self.shares.len();
                if self.shares.len() == committee {
                    if let Err(e) = self.collective_key() {
                        return Ok(self.fail(format!("key ceremony failed: {e}"), now_ms));
                    }
                    self.phase = Phase::Open;
                    return Ok(vec![Effect::DeliverKey]);
                }
                Ok(Vec::new())
            }
            (Phase::Open, Event::KeyDelivered) => {
                self.phase = Phase::Collecting;
                self.timings.opened_ms = Some(now_ms);
                Ok(Vec::new())
            }
            (Phase::Collecting, Event::SubmissionComplete { participant, meta }) => {
                if !self.plan.is_participant(&participant) {
                    return Err(SessionError::NotAllowed {
                        peer: participant,
                        role: "a participant",
                        session: self.plan.id.clone(),
                    });
                }
                if self.submitted.contains_key(&participant) {
                    return Err(SessionError::Duplicate(format!(
                        "participant {participant} already submitted to session `{}`",
                        self.plan.id
                    )));
                }
                self.submitted.insert(participant, meta);
                if self.submitted.len() == self.plan.participants.len() {
                    return Ok(self.close(now_ms));
                }
                Ok(Vec::new())
            }
            (phase, Event::Tick) => {
                let Some(deadline) = self.phase_deadline_ms() else {
                    return Ok(Vec::new());
                };
                if now_ms < deadline {
                    return Ok(Vec::new());
                }
                let reason = match phase {
                    Phase::Collecting => {
                        let have = self.submitted.len() as u32;
                        if have >= self.plan.min_participants {
                            return Ok(self.close(now_ms));
                        }
                        format!(
                            "only {have} of the required {} participants submitted before the deadline",
                            self.plan.min_participants
                        )
                    }
                    Phase::Proposed | Phase::Keygen | Phase::Open => {
                        let waiting = if self.commitments.len() < committee {
                            self.missing(&self.commitments)
                        } else {
                            self.missing(&self.shares)
                        };
                        let missing: Vec<&str> = waiting
                            .into_iter()
                            .filter_map(|m| self.plan.committee.get(m as usize).map(String::as_str))
                            .collect();
                        format!("key generation did not finish in time; waiting for {missing:?}")
                    }
                    _ => {
                        let missing: Vec<&str> = self
                            .members()
                            .filter(|m| !self.partials.contains(m))
                            .filter_map(|m| self.plan.committee.get(m as usize).map(String::as_str))
                            .collect();
                        format!("decryption did not finish in time; waiting for {missing:?}")
                    }
                };
                Ok(self.fail(reason, now_ms))
            }
            (Phase::Closing, Event::Aggregated { request_digest }) => {
                self.phase = Phase::Decrypting;
                self.request_digest = Some(request_digest);
                self.timings.decrypting_ms = Some(now_ms);
                Ok(vec![Effect::RequestPartials {
                    members: self
                        .members()
                        .filter(|m| !self.partials.contains(m))
                        .collect(),
                }])
            }
            (Phase::Decrypting, Event::Aggregated { request_digest }) => {
                // After a restart the sum is recomputed: it must be the same one.
                if self.request_digest != Some(request_digest) {
                    return Ok(self.fail(
                        "the recomputed sum differs from the one sent for decryption".into(),
                        now_ms,
                    ));
                }
                // Partials live only in the coordinator's memory, so after a restart every
                // member is asked again; each answers the same request with the same bytes.
                self.partials.clear();
                Ok(vec![Effect::RequestPartials {
                    members: self.members().collect(),
                }])
            }
            (Phase::Decrypting, Event::Partial { member }) => {
                if member as usize >= committee {
                    return Err(SessionError::BadInput(format!(
                        "no committee member {member}"
                    )));
                }
                self.partials.insert(member);
                if self.partials.len() == committee {
                    return Ok(vec![Effect::Combine]);
                }
                Ok(Vec::new())
            }
            (Phase::Decrypting, Event::Combined) => {
                self.phase = Phase::Done;
                self.timings.finished_ms = Some(now_ms);
                Ok(vec![Effect::PublishResult])
            }
            (_, event) => Err(wrong(
                self,
                &format!("{event:?} does not apply")
                    .chars()
                    .take(120)
                    .collect::<String>(),
            )),
        }
    }
}

/// Rebuilds a session's collective key from revealed shares, checking each against its
/// commitment. Every node that uses the key does this itself rather than trusting a key.
pub fn collective_key<'a>(
    plan: &SessionPlan,
    commitments: impl IntoIterator<Item = &'a KeyCommitment>,
    shares: impl IntoIterator<Item = &'a PublicKeyShare>,
) -> Result<CollectivePublicKey, SessionError> {
    let mut ceremony = KeyCeremony::new(plan.params.clone(), SessionTag::derive(&plan.id))?;
    for c in commitments {
        ceremony.add_commitment(*c)?;
    }
    for s in shares {
        ceremony.add_share(s.clone())?;
    }
    Ok(ceremony.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Profile, SecretKeyShare};
    use crate::session::SessionSpec;
    use libp2p::PeerId;

    fn plan(participants: usize, min: u32) -> SessionPlan {
        SessionSpec {
            id: Some("m".into()),
            length: Some(10),
            profile: Some(Profile::Fast),
            committee: (0..2).map(|_| PeerId::random().to_string()).collect(),
            participants: (0..participants)
                .map(|_| PeerId::random().to_string())
                .collect(),
            min_participants: Some(min),
            deadline_secs: Some(10),
            ..Default::default()
        }
        .validate(PeerId::random(), Profile::Fast)
        .unwrap()
    }

    fn meta() -> SubmissionMeta {
        SubmissionMeta {
            digest: [0; 32],
            clipped: 1,
            bytes: 100,
        }
    }

    /// Drives a session through key generation to collecting.
    fn opened(participants: usize, min: u32) -> Coordinated {
        let plan = plan(participants, min);
        let mut s = Coordinated::new(plan.clone(), 0);
        assert_eq!(
            s.handle(Event::Start, 0).unwrap(),
            vec![Effect::RequestCommitments {
                members: vec![0, 1]
            }]
        );
        let tag = SessionTag::derive(&plan.id);
        let generated: Vec<_> = (0..2)
            .map(|m| SecretKeyShare::generate(&plan.params, tag, m).unwrap())
            .collect();
        // A share before all commitments is refused.
        assert!(s
            .handle(
                Event::Share {
                    member: 0,
                    share: generated[0].1.clone()
                },
                1
            )
            .is_err());
        for (m, (_, public)) in generated.iter().enumerate() {
            let effects = s
                .handle(
                    Event::Commitment {
                        member: m as u32,
                        commitment: public.commitment(),
                    },
                    1,
                )
                .unwrap();
            assert_eq!(effects.len(), m);
        }
        for (m, (_, public)) in generated.iter().enumerate() {
            s.handle(
                Event::Share {
                    member: m as u32,
                    share: public.clone(),
                },
                2,
            )
            .unwrap();
        }
        assert_eq!(s.phase, Phase::Open);
        assert_eq!(s.shares_received, 2);
        s.handle(Event::KeyDelivered, 3).unwrap();
        assert_eq!(s.phase, Phase::Collecting);
        s
    }

    #[test]
    fn full_run_to_done() {
        let mut s = opened(2, 2);
        let p = s.plan.participants.clone();
        assert!(s
            .handle(
                Event::SubmissionComplete {
                    participant: p[0].clone(),
                    meta: meta()
                },
                4
            )
            .unwrap()
            .is_empty());
        let dup = s.handle(
            Event::SubmissionComplete {
                participant: p[0].clone(),
                meta: meta(),
            },
            4,
        );
        assert!(matches!(dup, Err(SessionError::Duplicate(_))));
        let stranger = s.handle(
            Event::SubmissionComplete {
                participant: PeerId::random().to_string(),
                meta: meta(),
            },
            4,
        );
        assert!(matches!(stranger, Err(SessionError::NotAllowed { .. })));
        let effects = s
            .handle(
                Event::SubmissionComplete {
                    participant: p[1].clone(),
                    meta: meta(),
                },
                5,
            )
            .unwrap();
        assert!(
            matches!(&effects[..], [Effect::Accumulate { contributors }] if contributors.len() == 2)
        );
        assert_eq!(s.clipped, 2);
        s.handle(
            Event::Aggregated {
                request_digest: [9; 32],
            },
            6,
        )
        .unwrap();
        assert!(s
            .handle(Event::Partial { member: 0 }, 7)
            .unwrap()
            .is_empty());
        assert_eq!(
            s.handle(Event::Partial { member: 1 }, 7).unwrap(),
            vec![Effect::Combine]
        );
        assert_eq!(
            s.handle(Event::Combined, 8).unwrap(),
            vec![Effect::PublishResult]
        );
        assert_eq!(s.phase, Phase::Done);
        // Terminal: nothing more applies, and a restart republishes the result.
        assert!(s.handle(Event::Partial { member: 0 }, 9).is_err());
        assert_eq!(s.resume(), vec![Effect::PublishResult]);
    }

    #[test]
    fn deadline_closes_with_enough_and_fails_without() {
        let mut s = opened(3, 2);
        let p = s.plan.participants.clone();
        s.handle(
            Event::SubmissionComplete {
                participant: p[0].clone(),
                meta: meta(),
            },
            4,
        )
        .unwrap();
        assert!(s.handle(Event::Tick, 3 + 9_999).unwrap().is_empty());
        let mut failing = s.clone();
        assert_eq!(
            failing.handle(Event::Tick, 3 + 10_000).unwrap(),
            vec![Effect::PublishFailure]
        );
        assert_eq!(failing.phase, Phase::Failed);
        assert!(failing
            .failure
            .as_deref()
            .unwrap()
            .contains("only 1 of the required 2"));

        s.handle(
            Event::SubmissionComplete {
                participant: p[1].clone(),
                meta: meta(),
            },
            5,
        )
        .unwrap();
        let effects = s.handle(Event::Tick, 3 + 10_000).unwrap();
        assert!(
            matches!(&effects[..], [Effect::Accumulate { contributors }] if contributors.len() == 2)
        );
    }

    #[test]
    fn mismatched_share_fails_the_session() {
        let plan = plan(1, 1);
        let mut s = Coordinated::new(plan.clone(), 0);
        s.handle(Event::Start, 0).unwrap();
        let tag = SessionTag::derive(&plan.id);
        let a = SecretKeyShare::generate(&plan.params, tag, 0).unwrap().1;
        let b = SecretKeyShare::generate(&plan.params, tag, 1).unwrap().1;
        let rogue = SecretKeyShare::generate(&plan.params, tag, 1).unwrap().1;
        s.handle(
            Event::Commitment {
                member: 0,
                commitment: a.commitment(),
            },
            1,
        )
        .unwrap();
        s.handle(
            Event::Commitment {
                member: 1,
                commitment: b.commitment(),
            },
            1,
        )
        .unwrap();
        s.handle(
            Event::Share {
                member: 1,
                share: rogue,
            },
            2,
        )
        .unwrap();
        assert_eq!(s.phase, Phase::Failed);
        assert_eq!(s.shares_received, 0, "a rogue share is not counted");
        assert!(s.failure.unwrap().contains("does not match its commitment"));
    }

    #[test]
    fn keygen_times_out_naming_the_missing_member() {
        let plan = plan(1, 1);
        let mut s = Coordinated::new(plan.clone(), 0);
        s.handle(Event::Start, 0).unwrap();
        s.handle(Event::Tick, 10_000).unwrap();
        assert_eq!(s.phase, Phase::Failed);
        assert!(s.failure.unwrap().contains(&plan.committee[0]));
    }
}
