//! The coordinator's side of the actor: creating sessions, applying events to their machines
//! (`session::roles::coordinator`) and performing the effects, receiving submission pieces,
//! summing, and combining the members' releases.

use super::*;
use crate::crypto::kahe::{self, ReleaseRequest};
use crate::metrics::OutcomeLabels;
use crate::session::records;
use crate::session::roles::coordinator::{CoordinatorEffect, CoordinatorState};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::submissions::{accumulate, count_submission, PieceWrite, RunningSum, StoredPiece};
use crate::session::messages::{Attestation, PIECE_BYTES};

/// A coordinated session as stored: its plan and its machine's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Coordinated {
    pub(super) plan: SessionPlan,
    pub(super) machine: CoordinatorState,
}

fn fail(reason: impl Into<String>) -> CoordinatorEvent {
    CoordinatorEvent::Fail {
        reason: reason.into(),
    }
}

/// Asks each of `members` to pin `contributors` and gathers the attestations that came back
/// (a member that cannot be reached or refuses simply adds none).
fn gather_pins(
    peer_client: PeerClient,
    session: String,
    committee: &[String],
    members: &[u32],
    contributors: Vec<String>,
) -> futures::future::BoxFuture<'static, Vec<Attestation>> {
    let asks: Vec<_> = members
        .iter()
        .filter_map(|&m| committee.get(m as usize).map(|peer| (m, peer.clone())))
        .collect();
    let msg = AggMsg::Pin {
        session,
        contributors,
    };
    Box::pin(async move {
        let answers = futures::future::join_all(asks.iter().map(|(member, peer)| {
            let msg = &msg;
            let peer_client = &peer_client;
            async move {
                // An attestation is a signature: the answer's size adds nothing.
                match peer_client.send_briefly(peer, msg, 0).await {
                    Ok(AggReply::Pinned(signature)) => Some(Attestation {
                        member: *member,
                        signature,
                    }),
                    Ok(_) => None,
                    Err(e) => {
                        warn!(%peer, error = %e, "member did not attest the contributor set");
                        None
                    }
                }
            }
        }))
        .await;
        answers.into_iter().flatten().collect()
    })
}

impl AggregationActor {
    pub(super) async fn create(&mut self, spec: SessionSpec) -> Result<SessionInfo, SessionError> {
        let plan = spec.validate(self.peer_client.me, self.default_profile)?;
        self.store.ensure_room()?;
        if self.coordinated.contains_key(&plan.id) || self.joined.contains_key(&plan.id) {
            return Err(SessionError::Duplicate(format!(
                "session `{}` already exists",
                plan.id
            )));
        }
        plan.context()?;
        let id = plan.id.clone();
        let span = info_span!("session", session = %id);
        span.in_scope(|| {
            info!(
                length = plan.length,
                committee = plan.committee.len(),
                threshold = plan.threshold,
                participants = plan.participants.len(),
                wire_bits = plan.params.wire_bits,
                "session created"
            )
        });
        let state = Coordinated {
            machine: CoordinatorState::new(plan.roster(), now_ms()),
            plan,
        };
        self.persist_coordinated(&state).await?;
        self.coordinated.insert(id.clone(), state);
        self.phase_since.insert(id.clone(), Instant::now());
        self.apply(&id, CoordinatorEvent::Start).await;
        // A small announcement on gossipsub, for operators and dashboards; the protocol itself
        // runs over request-response.
        let announcement =
            serde_json::json!({"session": id, "coordinator": self.me(), "event": "created"});
        let network = self.peer_client.network.clone();
        self.spawn_work(
            async move {
                if let Err(e) = network.publish(announcement.to_string().into_bytes()).await {
                    debug!(error = %e, "session announcement not published");
                }
                None
            },
            span,
        );
        self.info(&id)
    }

    async fn persist_coordinated(&self, state: &Coordinated) -> Result<(), SessionError> {
        let key = records::coordinated(&state.plan.id);
        self.store.put(trees::SESSIONS, key.as_bytes(), state)?;
        self.flush().await
    }

    /// Applies an event to a coordinated session: new state, persisted, then its effects.
    pub(super) async fn apply(
        &mut self,
        id: &str,
        event: CoordinatorEvent,
    ) -> Option<SessionError> {
        let state = self.coordinated.get(id)?;
        let mut next = state.clone();
        let before = next.machine.phase;
        let effects = match next.machine.handle(event, now_ms()) {
            Ok(effects) => effects,
            Err(e) => return Some(e),
        };
        if next == *state {
            // Nothing to persist (the start, or a step repeated); what it asks is still done.
            for effect in effects {
                self.run_coordinator_effect(id, effect);
            }
            return None;
        }
        if let Err(e) = self.persist_coordinated(&next).await {
            warn!(session = %id, error = %e, "cannot persist session; the event is dropped");
            return Some(e);
        }
        let after = next.machine.phase;
        if after != before {
            let span = info_span!("session", session = %id);
            span.in_scope(|| match &next.machine.failure {
                Some(reason) if after == Phase::Failed => warn!(%reason, "session failed"),
                _ => info!(from = %before, to = %after, "phase"),
            });
            if let Some(since) = self.phase_since.insert(id.to_string(), Instant::now()) {
                self.metrics
                    .phase_duration
                    .get_or_create(&PhaseLabels {
                        phase: before.name(),
                    })
                    .observe(since.elapsed().as_secs_f64());
            }
            if after.is_terminal() {
                self.metrics
                    .session_outcomes
                    .get_or_create(&OutcomeLabels {
                        outcome: after.name(),
                    })
                    .inc();
                self.aggregates.remove(id);
                self.running.remove(id);
                self.releases.remove(id);
            }
        }
        self.coordinated.insert(id.to_string(), next);
        self.update_phase_gauge();
        for effect in effects {
            self.run_coordinator_effect(id, effect);
        }
        None
    }

    /// Starts an effect's work among the actor's tasks; its outcome comes back to the loop as
    /// a [`TaskDone`].
    pub(super) fn run_coordinator_effect(&mut self, id: &str, effect: CoordinatorEffect) {
        let span = info_span!("session", session = %id);
        let mut work = Vec::new();
        self.effect_work(id, effect, &mut work);
        for w in work {
            self.spawn_work(w, span.clone());
        }
    }

    /// The work an effect takes, pushed onto `work`.
    fn effect_work(&mut self, id: &str, effect: CoordinatorEffect, work: &mut Vec<Work>) {
        let Some(state) = self.coordinated.get(id) else {
            return;
        };
        let plan = state.plan.clone();
        let machine = &state.machine;
        let peer_client = self.peer_client.clone();
        let session = id.to_string();
        let metrics = self.metrics.clone();
        // End notices are retried until every peer that joined has dropped the session anyway.
        let give_up_at_ms = quota::expiry_ms(
            machine.timings.created_ms,
            plan.deadline_secs,
            self.quotas.expire_grace_ms,
        );
        // Plans are retried until the phase's deadline says whether enough peers stored them.
        let plan_until_ms = machine
            .phase_deadline_ms()
            .unwrap_or_else(|| now_ms().saturating_add(plan.deadline_secs.saturating_mul(1000)));
        match effect {
            CoordinatorEffect::DeliverPlanToMembers(members) => {
                for member in members {
                    let (peer_client, plan, session) =
                        (peer_client.clone(), plan.clone(), session.clone());
                    let Some(peer) = plan.committee.get(member as usize).cloned() else {
                        continue;
                    };
                    work.push(Box::pin(async move {
                        let msg = AggMsg::Plan { plan };
                        match peer_client.send_plan(&peer, &msg, plan_until_ms).await {
                            Ok(AggReply::Ack) => Some(TaskDone::Event(
                                session,
                                CoordinatorEvent::PlanStored { member },
                            )),
                            Ok(other) => {
                                warn!(%peer, ?other, "unexpected answer to the plan");
                                None
                            }
                            // The deadline says whether enough members stored it.
                            Err(e) => {
                                warn!(%peer, error = %e, "member did not store the plan");
                                None
                            }
                        }
                    }));
                }
            }
            CoordinatorEffect::DeliverPlanToParticipants => {
                work.push(Box::pin(async move {
                    let msg = AggMsg::Plan { plan: plan.clone() };
                    let sends = plan
                        .participants
                        .iter()
                        .map(|p| peer_client.send_plan(p, &msg, plan_until_ms));
                    let results = futures::future::join_all(sends).await;
                    for (peer, r) in plan.participants.iter().zip(results) {
                        if let Err(e) = r {
                            warn!(%peer, error = %e, "participant did not get the plan");
                        }
                    }
                    None
                }));
            }
            CoordinatorEffect::QueryHoldings(members) => {
                let participants: Vec<String> = machine.submitted.keys().cloned().collect();
                for member in members {
                    let Some(peer) = plan.committee.get(member as usize).cloned() else {
                        continue;
                    };
                    let msg = AggMsg::Holdings {
                        session: session.clone(),
                        participants: participants.clone(),
                    };
                    let (peer_client, session) = (peer_client.clone(), session.clone());
                    work.push(Box::pin(async move {
                        // A list of peer ids: the answer's size adds nothing.
                        let held = match peer_client.send_briefly(&peer, &msg, 0).await {
                            Ok(AggReply::Held(held)) => Some(held),
                            Ok(_) => None,
                            Err(e) => {
                                warn!(%peer, error = %e, "member did not say which seeds it holds");
                                None
                            }
                        };
                        Some(TaskDone::Event(
                            session,
                            CoordinatorEvent::Holdings { member, held },
                        ))
                    }));
                }
            }
            CoordinatorEffect::Accumulate { contributors } => {
                let with_digests: Vec<(String, [u8; 32])> = contributors
                    .iter()
                    .filter_map(|c| machine.submitted.get(c).map(|m| (c.clone(), m.digest)))
                    .collect();
                let context = match plan.context() {
                    Ok(c) => c,
                    Err(e) => {
                        let reason = e.to_string();
                        work.push(Box::pin(async move {
                            Some(TaskDone::Event(session, fail(reason)))
                        }));
                        return;
                    }
                };
                let store = self.store.clone();
                let running = self.running.remove(id);
                work.push(Box::pin(async move {
                    let start = Instant::now();
                    let finished = match running {
                        Some(sum) => sum.finish(&contributors).await,
                        None => None,
                    };
                    let outcome = match finished {
                        Some(Ok(sum)) => {
                            metrics
                                .crypto_duration
                                .get_or_create(&OpLabels { op: "accumulate" })
                                .observe(start.elapsed().as_secs_f64());
                            Ok(sum)
                        }
                        // After a restart, or when S leaves a body out: from the store.
                        _ => {
                            let job = move || accumulate(&store, &plan, &context, &with_digests);
                            timed_blocking(&metrics, "accumulate", job).await
                        }
                    };
                    Some(match outcome {
                        Ok(aggregate) => TaskDone::Summed {
                            session,
                            aggregate: Box::new(aggregate),
                        },
                        Err(reason) => TaskDone::Event(session, fail(reason)),
                    })
                }));
            }
            CoordinatorEffect::RequestReleases {
                members,
                generation,
            } => {
                let request = ReleaseRequest {
                    contributors: machine.contributors.clone(),
                    assignment: machine.assignment.clone(),
                };
                // Every member of T first pins S and attests it; the releases carry the
                // attestations (members release only against t of them). Asked again after a
                // re-assignment or a restart, a member attests the same S again.
                let pins = gather_pins(
                    peer_client.clone(),
                    session.clone(),
                    &plan.committee,
                    &machine.answering,
                    machine.contributors.clone(),
                )
                .shared();
                // A release is as long as an update's bodies.
                let release_bytes = plan.context().map_or(0, |c| c.body_bytes() as u64);
                for member in members {
                    let Some(peer) = plan.committee.get(member as usize).cloned() else {
                        continue;
                    };
                    let (peer_client, session, request) =
                        (peer_client.clone(), session.clone(), request.clone());
                    let pins = pins.clone();
                    work.push(Box::pin(async move {
                        let msg = AggMsg::Release {
                            session: session.clone(),
                            request,
                            pins: pins.await,
                        };
                        let failed = |reason: String| {
                            Some(TaskDone::Event(
                                session.clone(),
                                CoordinatorEvent::ReleaseFailed {
                                    member,
                                    generation,
                                    reason,
                                },
                            ))
                        };
                        match peer_client.send_briefly(&peer, &msg, release_bytes).await {
                            Ok(AggReply::Release(bytes)) => Some(TaskDone::Released {
                                session: session.clone(),
                                member,
                                generation,
                                bytes,
                            }),
                            Ok(_) => failed("an unexpected answer".into()),
                            Err(e) => failed(e.to_string()),
                        }
                    }));
                }
            }
            CoordinatorEffect::Combine => {
                let Some(aggregate) = self.aggregates.get(id).cloned() else {
                    return;
                };
                let request = ReleaseRequest {
                    contributors: machine.contributors.clone(),
                    assignment: machine.assignment.clone(),
                };
                let releases: Vec<(u32, Vec<u8>)> = self
                    .releases
                    .get(id)
                    .filter(|(g, _)| *g == machine.generation)
                    .map(|(_, r)| r.iter().map(|(m, b)| (*m, b.clone())).collect())
                    .unwrap_or_default();
                let clipped = machine.clipped;
                let contributor_ids = machine.contributors.clone();
                work.push(Box::pin(async move {
                    let job = move || {
                        let refs: Vec<(u32, &[u8])> =
                            releases.iter().map(|(m, b)| (*m, b.as_slice())).collect();
                        Ok(aggregate.combine(&request, &refs)?)
                    };
                    Some(match timed_blocking(&metrics, "combine", job).await {
                        Ok(sum) => {
                            let k = sum.contributors.len() as u32;
                            match SessionResult::from_sum(&plan, sum.sum, k) {
                                Ok(r) => TaskDone::Combined {
                                    session: session.clone(),
                                    result: Box::new(SessionResult {
                                        session,
                                        contributor_ids,
                                        clipped,
                                        ..r
                                    }),
                                    attempt: 0,
                                },
                                Err(reason) => TaskDone::Event(session, fail(reason)),
                            }
                        }
                        Err(reason) => TaskDone::Event(session, fail(reason)),
                    })
                }));
            }
            CoordinatorEffect::PublishFailure => {
                let reason = machine.failure.clone().unwrap_or_default();
                let msg = AggMsg::Ended {
                    session: session.clone(),
                    reason: Some(reason),
                };
                let to = unnotified(&plan.peers(), &machine.notified);
                deliver_to_each(work, &peer_client, &session, &msg, to, give_up_at_ms);
            }
            CoordinatorEffect::PublishResult => {
                // Members only need to know it is over, to forget the seeds; told apart, so
                // that an absent member does not hold up the result. A member that also
                // takes part learns it from the result itself: it is done once it holds it.
                let ended = AggMsg::Ended {
                    session: session.clone(),
                    reason: None,
                };
                let members_only: Vec<&String> = plan
                    .committee
                    .iter()
                    .filter(|p| !plan.is_participant(p))
                    .collect();
                let to = unnotified(&members_only, &machine.notified);
                deliver_to_each(work, &peer_client, &session, &ended, to, give_up_at_ms);
                let participants: Vec<&String> = plan.participants.iter().collect();
                let to = unnotified(&participants, &machine.notified);
                if to.is_empty() {
                    return;
                }
                // Read and encoded once, by the first delivery, then sent to a few
                // participants at a time: one by one, a million-value result took longer to
                // deliver than the round to compute.
                let encoded: Arc<tokio::sync::OnceCell<Option<Vec<u8>>>> = Arc::default();
                let at_once = Arc::new(tokio::sync::Semaphore::new(RESULT_SENDS_AT_ONCE));
                for peer in to {
                    let (peer_client, session, store) =
                        (peer_client.clone(), session.clone(), self.store.clone());
                    let (encoded, at_once) = (encoded.clone(), at_once.clone());
                    work.push(Box::pin(async move {
                        // The first try holds a turn; an unreachable participant's retries
                        // do not, so that it cannot hold up the others.
                        let (first, msg) = {
                            let _turn = at_once.acquire().await.ok()?;
                            let msg = encoded
                                .get_or_init(|| encoded_result(store, session.clone()))
                                .await
                                .as_ref()?;
                            (peer_client.send_encoded(&peer, msg.clone()).await, msg)
                        };
                        let delivered = match first {
                            Err(SessionError::Peer(PeerFailure::Unreachable { .. })) => {
                                peer_client
                                    .deliver(&peer, || Ok(msg.clone()), give_up_at_ms)
                                    .await
                            }
                            other => other,
                        };
                        notice_outcome(session, peer, delivered)
                    }));
                }
            }
        }
    }

    /// Drops a finished session's ciphertexts; the result and the state stay.
    pub(super) fn cleanup(&mut self, session: &str) {
        // Removing tens of blobs is file-system work: off the actor.
        let (store, owners) = (self.store.clone(), records::pieces_prefix(session));
        self.tasks.spawn_blocking(move || {
            if let Err(e) = store.drop_uploads(trees::SUBMISSIONS, &owners) {
                warn!(error = %e, "could not drop a finished session's submissions");
            }
            None
        });
    }

    /// A submission piece: checked by the actor, written on the blocking pool (a piece is
    /// megabytes: written on the actor's thread, it held every other session up), then
    /// acknowledged once durable; the last one is checked with the whole upload first.
    pub(super) fn inbound_piece(
        &mut self,
        from: String,
        piece: Piece<'_>,
        reply: oneshot::Sender<Response>,
        span: tracing::Span,
    ) {
        let index = piece.index;
        let write = match self.check_piece(&from, &piece) {
            Ok(Some(write)) => write,
            Ok(None) => {
                let ack = AggReply::PieceAck {
                    index,
                    complete: true,
                };
                self.answer_later(Box::pin(async move { Ok(ack) }), reply, span);
                return;
            }
            Err(e) => {
                let result = Err(e);
                count_submission(&self.metrics, &result);
                self.answer_later(Box::pin(async move { result }), reply, span);
                return;
            }
        };
        let (session, len, metrics) = (
            piece.session.to_string(),
            piece.bytes.len() as u64,
            self.metrics.clone(),
        );
        self.spawn_work(
            async move {
                let stored = tokio::task::spawn_blocking(move || write.write())
                    .await
                    .unwrap_or(Err(SessionError::Unavailable("piece storage")));
                if stored.is_ok() {
                    metrics.submission_bytes.inc_by(len);
                }
                Some(TaskDone::PieceStored {
                    session,
                    from,
                    index,
                    stored,
                    reply,
                })
            },
            span,
        );
    }

    /// A piece is written: acknowledged once durable, or its upload checked when it was the
    /// last. A piece written after its session ended (it passed the checks just before) is
    /// dropped with its owner's tree, which the session's cleanup may have missed.
    pub(super) fn piece_stored(
        &mut self,
        session: String,
        from: String,
        index: u32,
        stored: Result<StoredPiece, SessionError>,
        reply: oneshot::Sender<Response>,
    ) {
        let span = info_span!("inbound", peer = %from, kind = "submit_piece", %session);
        let live = self
            .coordinated
            .get(&session)
            .is_some_and(|s| !s.machine.phase.is_terminal());
        let stored = match stored {
            Ok(_) if !live => {
                let (store, owner) = (self.store.clone(), records::piece_owner(&session, &from));
                self.tasks.spawn_blocking(move || {
                    if let Err(e) = store.drop_uploads(trees::SUBMISSIONS, &owner) {
                        warn!(error = %e, "could not drop a late piece");
                    }
                    None
                });
                Err(SessionError::UnknownSession(session.clone()))
            }
            other => other,
        };
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        match stored {
            Err(e) => {
                let result = Err(e);
                count_submission(&self.metrics, &result);
                self.answer_later(Box::pin(async move { result }), reply, span);
            }
            // Acknowledged once durable; the actor serves others meanwhile.
            Ok(StoredPiece::Partial) => self.answer_later(
                Box::pin(async move {
                    timed_flush(&store, &metrics).await?;
                    Ok(AggReply::PieceAck {
                        index,
                        complete: false,
                    })
                }),
                reply,
                span,
            ),
            // Durable, then assembled and checked off the actor, then accepted by it.
            Ok(StoredPiece::Last(upload)) => {
                self.spawn_work(
                    async move {
                        let checked = match timed_flush(&store, &metrics).await {
                            Ok(()) => tokio::task::spawn_blocking(move || upload.check())
                                .await
                                .unwrap_or(Err(SessionError::Unavailable("upload check"))),
                            Err(e) => Err(e),
                        };
                        match checked {
                            Ok((meta, bytes)) => Some(TaskDone::UploadChecked {
                                session,
                                from,
                                index,
                                meta,
                                bytes,
                                reply,
                            }),
                            Err(e) => {
                                let result = Err(e);
                                count_submission(&metrics, &result);
                                let _ = reply.send(reply_response(result));
                                None
                            }
                        }
                    },
                    span,
                );
            }
        }
    }

    /// Coordinator side of a submission piece: the checks that need the session's state.
    /// `None` when the participant's update is already accepted (a retransmission).
    fn check_piece(
        &self,
        from: &str,
        piece: &Piece<'_>,
    ) -> Result<Option<PieceWrite>, SessionError> {
        let &Piece {
            session,
            digest,
            index,
            count,
            clipped,
            bytes,
        } = piece;
        let state = self
            .coordinated
            .get(session)
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))?;
        let plan = &state.plan;
        if !plan.is_participant(from) {
            return Err(SessionError::NotAllowed {
                peer: from.to_string(),
                role: "a participant",
                session: session.to_string(),
            });
        }
        if let Some(done) = state.machine.submitted.get(from) {
            // A retransmission of the accepted update is harmless; anything else is a second
            // submission.
            if done.digest == digest {
                return Ok(None);
            }
            return Err(SessionError::Duplicate(format!(
                "participant {from} already submitted to session `{session}`"
            )));
        }
        // A coordinator back from a restart may still be proposing while the participants
        // (told by the members) already upload: worth another try, not a refusal.
        if state.machine.phase == Phase::Proposed {
            return Err(SessionError::Unavailable(
                "the session, still being proposed on its coordinator,",
            ));
        }
        if state.machine.phase != Phase::Collecting {
            return Err(SessionError::WrongPhase {
                session: session.to_string(),
                phase: state.machine.phase,
                what: "it does not take submissions".into(),
            });
        }
        let context = plan.context()?;
        let max = kahe::wire::update_len(&context) as u64;
        if count == 0
            || index >= count
            || bytes.is_empty()
            || bytes.len() > PIECE_BYTES
            || count as u64 > max.div_ceil(PIECE_BYTES as u64)
        {
            return Err(SessionError::BadInput(format!(
                "piece {index} of {count} with {} bytes does not fit an update of {max} bytes",
                bytes.len()
            )));
        }
        // A new upload waits for room; the rest of one under way is taken.
        if index == 0 {
            self.store.ensure_room()?;
        }
        Ok(Some(PieceWrite {
            store: self.store.clone(),
            owner: records::piece_owner(session, from),
            index,
            count,
            // sled copies a value into its own buffer anyway: made here, moved to the writer.
            bytes: sled::IVec::from(bytes),
            context,
            meta: SubmissionMeta {
                digest,
                clipped,
                bytes: 0,
            },
        }))
    }

    /// Accepts a checked upload: the running sum gets it first (so that a close this event
    /// triggers finds it there), then the session records it.
    pub(super) async fn accept_upload(
        &mut self,
        session: &str,
        from: &str,
        index: u32,
        meta: SubmissionMeta,
        bytes: Vec<u8>,
    ) -> Result<AggReply, SessionError> {
        let state = self
            .coordinated
            .get(session)
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))?;
        let complete = AggReply::PieceAck {
            index,
            complete: true,
        };
        if let Some(done) = state.machine.submitted.get(from) {
            if done.digest == meta.digest {
                return Ok(complete);
            }
        }
        let first = state.machine.submitted.is_empty();
        // A running sum is only started with the first update: after a restart mid-collection
        // the sum is read back from the store at closing instead.
        if !self.running.contains_key(session) && first {
            let context = state.plan.context()?;
            self.running
                .insert(session.to_string(), RunningSum::start(context));
        }
        if let Some(sum) = self.running.get_mut(session) {
            sum.add(from, bytes);
        }
        let event = CoordinatorEvent::SubmissionComplete {
            participant: from.to_string(),
            meta,
        };
        match self.apply(session, event).await {
            Some(e) => Err(e),
            None => Ok(complete),
        }
    }
}

/// The peers of `peers` that have not acknowledged the end notice yet.
fn unnotified(peers: &[&String], notified: &std::collections::BTreeSet<String>) -> Vec<String> {
    peers
        .iter()
        .filter(|p| !notified.contains(p.as_str()))
        .map(|p| p.to_string())
        .collect()
}

/// Delivers `msg` to each of `peers`, each in a task of its own, until it answers or the
/// session is over everywhere (`give_up_at_ms`).
fn deliver_to_each(
    work: &mut Vec<Work>,
    peer_client: &PeerClient,
    session: &str,
    msg: &AggMsg,
    peers: Vec<String>,
    give_up_at_ms: u64,
) {
    for peer in peers {
        let (peer_client, msg, session) = (peer_client.clone(), msg.clone(), session.to_string());
        work.push(Box::pin(async move {
            let delivered = peer_client
                .deliver(&peer, || messages::encode(&msg), give_up_at_ms)
                .await;
            notice_outcome(session, peer, delivered)
        }));
    }
}

/// A notice's delivery: acknowledged (recorded, never sent again), or refused for good.
fn notice_outcome(
    session: String,
    peer: String,
    delivered: Result<AggReply, SessionError>,
) -> Option<TaskDone> {
    // A refusal (a peer that never saw the plan) is as final as an acknowledgement: asking
    // again cannot help.
    if let Err(e) = delivered {
        debug!(%peer, error = %e, "end notice refused");
    }
    Some(TaskDone::Event(
        session,
        CoordinatorEvent::Notified { peer },
    ))
}

/// The stored result of `session`, encoded as the message that delivers it.
async fn encoded_result(store: Store, session: String) -> Option<Vec<u8>> {
    let read = tokio::task::spawn_blocking(move || {
        store.get::<PackedResult>(trees::RESULTS, session.as_bytes())
    });
    let result = match read.await {
        Ok(Ok(Some(result))) => result,
        Ok(Err(e)) => {
            warn!(error = %e, "could not read the result to publish");
            return None;
        }
        _ => return None,
    };
    match messages::encode(&AggMsg::Result { result }) {
        Ok(msg) => Some(msg),
        Err(e) => {
            warn!(error = %e, "could not encode the result");
            None
        }
    }
}
