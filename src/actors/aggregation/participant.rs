//! The participant's side of the actor, and joining a session in any role: a plan arrives, is
//! checked against this node's policy and stored; as a participant the node has its one-time
//! key drawn, delivers each member its seeds, prepares its encryption ahead, seals its update
//! once, records the body's digest, uploads it, and forgets the key when the session ends.

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tokio_util::task::AbortOnDropHandle;

use super::*;
use crate::crypto::kahe::{self, PreparedEncryption, SealedUpdate};
use crate::crypto::CryptoError;
use crate::session::messages::PIECE_BYTES;
use crate::session::roles::member::MemberState;
use crate::session::roles::participant::{ParticipantEffect, ParticipantInput, ParticipantState};
use crate::session::{records, Update};

/// A session this node takes part in, as participant, member or both.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Joined {
    pub(super) plan: SessionPlan,
    pub(super) participant: Option<ParticipantState>,
    pub(super) member: Option<MemberState>,
    pub(super) joined_ms: u64,
    pub(super) finished_ms: Option<u64>,
    /// `Done` or `Failed` once the coordinator said the session ended.
    pub(super) ended: Option<Phase>,
    pub(super) failure: Option<String>,
}

impl Joined {
    pub(super) fn phase(&self) -> Phase {
        self.ended.unwrap_or(Phase::Collecting)
    }
}

/// A participant's encryption of zero for one session, drawn as soon as the plan arrives,
/// while the update is still being trained; the submission takes it and only adds the values.
/// Dropping it aborts the wait (the drawing itself finishes on its blocking thread, and its
/// result is wiped).
pub(super) struct Preparation {
    task: AbortOnDropHandle<Result<Budgeted, SessionError>>,
    /// Set once the drawing succeeded: what `prepared` reports.
    pub(super) ready: Arc<AtomicBool>,
}

/// A prepared encryption with its share of the budget, given back when it is dropped.
struct Budgeted {
    prepared: PreparedEncryption,
    _reservation: Reservation,
}

struct Reservation {
    bytes: u64,
    held: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A sealed update on its way to being persisted and uploaded.
pub(super) struct SealedForUpload {
    sealed: SealedUpdate,
    encrypt_ms: f64,
    prepared: bool,
}

/// Uploads an update piece by piece; each piece is acknowledged only once the coordinator has
/// it on disk.
async fn upload(
    peer_client: &PeerClient,
    plan: &SessionPlan,
    bytes: &[u8],
    clipped: u64,
) -> Result<(u32, f64), SessionError> {
    // The envelope's own digest names the whole update: no second pass over it.
    let digest = crate::crypto::wire::envelope_digest(bytes)
        .ok_or(SessionError::Unavailable("the sealed update"))?;
    let pieces: Vec<&[u8]> = bytes.chunks(PIECE_BYTES).collect();
    let count = pieces.len() as u32;
    let start = Instant::now();
    for (index, piece) in pieces.iter().enumerate() {
        let piece = Piece {
            session: &plan.id,
            digest,
            index: index as u32,
            count,
            clipped,
            bytes: piece,
        };
        match peer_client
            .send_within_limit(&plan.coordinator, || piece.encode())
            .await?
        {
            AggReply::PieceAck { complete: true, .. } => break,
            AggReply::PieceAck { .. } => {}
            other => {
                return Err(PeerFailure::remote(
                    plan.coordinator.clone(),
                    format!("unexpected answer {other:?}"),
                )
                .into())
            }
        }
    }
    Ok((count, start.elapsed().as_secs_f64() * 1e3))
}

/// The integer weight a weighted session's update is sealed with; refuses a missing weight, a
/// weight for an unweighted session, and one that is not a whole number in 1..=max_weight.
fn check_weight(
    id: &str,
    max_weight: Option<u32>,
    weight: Option<f64>,
) -> Result<Option<u32>, SessionError> {
    match (max_weight, weight) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(SessionError::BadInput(format!(
            "session `{id}` is not a weighted mean: give no weight"
        ))),
        (Some(max), None) => Err(SessionError::BadInput(format!(
            "session `{id}` is a weighted mean: give the update's weight (a whole number in \
             1..={max}, e.g. its number of examples)"
        ))),
        (Some(max), Some(w)) if w.fract() == 0.0 && (1.0..=max as f64).contains(&w) => {
            Ok(Some(w as u32))
        }
        (Some(max), Some(w)) => Err(SessionError::BadInput(format!(
            "weight {w} is not a whole number in 1..={max} (the session's max_weight)"
        ))),
    }
}

impl AggregationActor {
    pub(super) async fn persist_joined(&self, joined: &Joined) -> Result<(), SessionError> {
        let key = records::joined(&joined.plan.id);
        self.store.put(trees::SESSIONS, key.as_bytes(), joined)?;
        self.flush().await
    }

    /// A plan from its coordinator: checked (the roster against its parameters, this node's
    /// policy), stored, and acted on for each role this node plays. The same plan again is
    /// acknowledged; another plan under the same id is refused.
    pub(super) async fn join(&mut self, from: &str, plan: SessionPlan) -> Result<(), SessionError> {
        plan.check_coordinator(from)?;
        plan.check_received()?;
        let roster = plan.roster();
        self.policy.check(&roster, &plan.params)?;
        let me = self.me();
        if plan.coordinator != me && self.coordinated.contains_key(&plan.id) {
            return Err(SessionError::Duplicate(format!(
                "session id `{}` is taken on this node by a session it coordinates",
                plan.id
            )));
        }
        if let Some(existing) = self.joined.get(&plan.id) {
            if existing.plan != plan {
                return Err(SessionError::Duplicate(format!(
                    "session `{}` is already known with another plan",
                    plan.id
                )));
            }
            return Ok(());
        }
        // A new session is refused while the disk runs low; one already joined (a plan sent
        // again) is answered above, so work in flight goes on.
        self.store.ensure_room()?;
        let member = plan.member_index(&me);
        if member.is_none() && !plan.is_participant(&me) {
            return Err(SessionError::NotAllowed {
                peer: me,
                role: "a participant or member",
                session: plan.id.clone(),
            });
        }
        // Last of the checks: it may drop sessions that are over to make room.
        self.check_quotas(from, &plan)?;
        let (participant, effects) = if plan.is_participant(&me) {
            let (state, effects) = ParticipantState::join(roster.clone());
            (Some(state), effects)
        } else {
            (None, Vec::new())
        };
        let joined = Joined {
            member: member.map(|index| MemberState::new(roster, index)),
            participant,
            plan: plan.clone(),
            joined_ms: now_ms(),
            finished_ms: None,
            ended: None,
            failure: None,
        };
        self.persist_joined(&joined).await?;
        info!(session = %plan.id, member = ?member, participant = joined.participant.is_some(),
            "joined session");
        self.joined.insert(plan.id.clone(), joined);
        for effect in effects {
            self.run_participant_effect(&plan.id, effect).await;
        }
        Ok(())
    }

    /// After a restart: the participant's step is repeated.
    pub(super) fn resume_joined(&mut self, id: &str) {
        let Some(joined) = self.joined.get(id) else {
            return;
        };
        let Some(effects) = joined.participant.as_ref().map(|p| p.resume()) else {
            return;
        };
        let id = id.to_string();
        // Effects that need the key actor run in tasks of their own: the actor cannot wait
        // for it while loading.
        for effect in effects {
            match effect {
                ParticipantEffect::Forget => self.forget(&id),
                ParticipantEffect::DeliverSeeds(members) => self.deliver_seeds(&id, members),
                ParticipantEffect::Prepare => self.start_preparing(&id),
                // Drawn (once) by the seed deliveries, before any seed leaves.
                ParticipantEffect::GenerateKey => {}
            }
        }
    }

    async fn run_participant_effect(&mut self, id: &str, effect: ParticipantEffect) {
        match effect {
            // Persisted before any seed leaves: the deliveries below start after it.
            ParticipantEffect::GenerateKey => {
                let Some(joined) = self.joined.get(id) else {
                    return;
                };
                let committee = match joined.plan.context() {
                    Ok(c) => c.committee(),
                    Err(e) => {
                        warn!(session = %id, error = %e, "cannot draw the key");
                        return;
                    }
                };
                if let Err(e) = self.keys.create_key(id, committee).await {
                    warn!(session = %id, error = %e, "cannot draw the key");
                }
            }
            ParticipantEffect::DeliverSeeds(members) => self.deliver_seeds(id, members),
            ParticipantEffect::Prepare => self.start_preparing(id),
            ParticipantEffect::Forget => self.forget(id),
        }
    }

    /// Sends each member its seeds, retrying (members may not have the plan yet) until the
    /// session's deadline.
    fn deliver_seeds(&mut self, id: &str, members: Vec<u32>) {
        let Some(joined) = self.joined.get(id) else {
            return;
        };
        let plan = joined.plan.clone();
        let digest = plan.digest();
        let deadline = Instant::now() + Duration::from_secs(plan.deadline_secs);
        let committee = match plan.context() {
            Ok(c) => c.committee(),
            Err(_) => return,
        };
        for member in members {
            let Some(peer) = plan.committee.get(member as usize).cloned() else {
                continue;
            };
            let (keys, peer_client, session) =
                (self.keys.clone(), self.peer_client.clone(), id.to_string());
            let span = info_span!("seeds", session = %id, member);
            self.spawn_work(
                async move {
                    // A member refuses seeds for a plan that has not reached it yet, as happens
                    // to a coordinator that takes part (it joins at once): the first retries
                    // come quickly, then once a second.
                    let mut backoff =
                        Backoff::new(Duration::from_millis(25), Duration::from_secs(1));
                    let mut drawn = false;
                    loop {
                        // The key is drawn and persisted before any seed leaves, by the first
                        // try only: a session dropped meanwhile (it ended, or expired) has had
                        // its key deleted, and must not have one drawn again.
                        let sent = async {
                            if !drawn {
                                keys.create_key(&session, committee).await?;
                                drawn = true;
                            }
                            let bundle = keys.bundle(&session, member).await?;
                            let msg = AggMsg::Seeds {
                                session: session.clone(),
                                plan_digest: digest,
                                bundle,
                            };
                            peer_client.send_retrying(&peer, &msg).await
                        }
                        .await;
                        match sent {
                            Ok(AggReply::Ack) => {
                                return Some(TaskDone::SeedsAcked { session, member })
                            }
                            Ok(other) => {
                                warn!(?other, "unexpected answer to the seeds");
                                return None;
                            }
                            Err(e) if Instant::now() < deadline => {
                                debug!(error = %e, "seeds not delivered yet; retrying");
                                backoff.wait().await;
                            }
                            Err(e) => {
                                warn!(error = %e, "seeds not delivered before the deadline");
                                return None;
                            }
                        }
                    }
                },
                span,
            );
        }
    }

    pub(super) async fn seeds_acked(&mut self, id: &str, member: u32) {
        let Some(mut joined) = self.joined.get(id).cloned() else {
            return;
        };
        let Some(p) = joined.participant.as_mut() else {
            return;
        };
        if p.handle(ParticipantInput::SeedsAcked { member }).is_err() {
            return;
        }
        if self.persist_joined(&joined).await.is_ok() {
            self.joined.insert(id.to_string(), joined);
        }
    }

    /// Starts drawing this participant's encryption of zero, if the budget has room for it.
    fn start_preparing(&mut self, id: &str) {
        let Some(joined) = self.joined.get(id) else {
            return;
        };
        let Ok(context) = joined.plan.context() else {
            return;
        };
        let bytes = kahe::wire::update_len(&context) as u64;
        if self.prepared.contains_key(id) {
            return;
        }
        let held = self.prepared_bytes.load(Ordering::Acquire);
        if held.saturating_add(bytes) > self.prepare_budget {
            debug!(session = %id, bytes, held, budget = self.prepare_budget,
                "not preparing the encryption ahead: over the budget");
            return;
        }
        // Only this actor adds to the count: the check above stays true until here.
        self.prepared_bytes.fetch_add(bytes, Ordering::AcqRel);
        let reservation = Reservation {
            bytes,
            held: self.prepared_bytes.clone(),
        };
        let (keys, metrics, session) = (self.keys.clone(), self.metrics.clone(), id.to_string());
        let ready = Arc::new(AtomicBool::new(false));
        let set_ready = ready.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let prepared = keys.prepare(&session, context).await;
            metrics
                .crypto_duration
                .get_or_create(&OpLabels { op: "prepare" })
                .observe(start.elapsed().as_secs_f64());
            set_ready.store(prepared.is_ok(), Ordering::Release);
            prepared.map(|prepared| Budgeted {
                prepared,
                _reservation: reservation,
            })
        });
        self.prepared.insert(
            id.to_string(),
            Preparation {
                task: AbortOnDropHandle::new(task),
                ready,
            },
        );
    }

    /// Participant side of a submission: checked, then sealed and written in a task; the
    /// actor records it before its upload starts.
    pub(super) fn submit(&mut self, id: String, update: Update, reply: Reply<SubmitReceipt>) {
        let Update { values, weight } = update;
        let checked = (|| {
            let joined = self
                .joined
                .get(&id)
                .ok_or_else(|| SessionError::UnknownSession(id.clone()))?;
            let plan = joined.plan.clone();
            let mut participant =
                joined
                    .participant
                    .clone()
                    .ok_or_else(|| SessionError::NotAllowed {
                        peer: self.me(),
                        role: "a participant",
                        session: id.clone(),
                    })?;
            if joined.ended.is_some() {
                return Err(SessionError::WrongPhase {
                    session: id.clone(),
                    phase: joined.phase(),
                    what: "submissions are closed".into(),
                });
            }
            if self.uploading.contains(&id) {
                return Err(SessionError::Duplicate(format!(
                    "this node is already submitting to session `{id}`"
                )));
            }
            participant.handle(ParticipantInput::Submit)?;
            self.store.ensure_room()?;
            if values.len() as u64 != plan.length {
                return Err(SessionError::BadInput(format!(
                    "the session takes {} values; the update has {}",
                    plan.length,
                    values.len()
                )));
            }
            // Refused here, before the preparation is taken: sealing consumes it.
            if let Some(index) = values.iter().position(|v| v.is_nan()) {
                return Err(CryptoError::NonFinite { index }.into());
            }
            let weight = check_weight(&id, plan.params.max_weight, weight)?;
            Ok((plan, weight))
        })();
        let (plan, weight) = match checked {
            Ok(v) => v,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.uploading.insert(id.clone());
        let preparation = self.prepared.remove(&id).map(|p| p.task);
        let (keys, metrics) = (self.keys.clone(), self.metrics.clone());
        let span = info_span!("submit", session = %id);
        self.spawn_work(
            async move {
                let start = Instant::now();
                let sealed = async {
                    let context = plan.context()?;
                    // A preparation that failed is replaced by a whole encryption.
                    let prepared = match preparation {
                        Some(task) => match task.await {
                            Ok(Ok(p)) => Some(p),
                            _ => None,
                        },
                        None => None,
                    };
                    let was_prepared = prepared.is_some();
                    let budgeted = match prepared {
                        Some(p) => p.prepared,
                        None => keys.prepare(&plan.id, context).await?,
                    };
                    let sealed = tokio::task::spawn_blocking(move || match weight {
                        Some(w) => budgeted.seal_weighted(&values, w),
                        None => budgeted.seal(&values),
                    })
                    .await
                    .map_err(|_| SessionError::Unavailable("encryption"))??;
                    Ok::<_, SessionError>((sealed, was_prepared))
                }
                .await;
                let encrypt_ms = start.elapsed().as_secs_f64() * 1e3;
                metrics
                    .crypto_duration
                    .get_or_create(&OpLabels { op: "encrypt" })
                    .observe(encrypt_ms / 1e3);
                Some(match sealed {
                    Ok((sealed, prepared)) => TaskDone::Sealed {
                        session: plan.id.clone(),
                        sealed: Box::new(SealedForUpload {
                            sealed,
                            encrypt_ms,
                            prepared,
                        }),
                        reply,
                    },
                    Err(e) => TaskDone::Uploaded {
                        session: plan.id.clone(),
                        result: Err(e),
                        reply: Some(reply),
                    },
                })
            },
            span,
        );
    }

    /// The sealed body's digest is recorded, durably, before any of it leaves: the key has
    /// made its one body, and only an update that seals to the same bytes may be sent again.
    /// The body itself is not stored: the key seals an update deterministically, so after a
    /// restart or a failed upload the same update, submitted again, is sealed again and sent.
    /// (Storing it for a resend wrote every submission's megabytes to disk; a 50-participant
    /// round of a million values spent about a third of its time on those writes.)
    pub(super) async fn sealed(
        &mut self,
        id: &str,
        sealed: SealedForUpload,
        reply: Reply<SubmitReceipt>,
    ) {
        let recorded = async {
            let mut joined = self
                .joined
                .get(id)
                .cloned()
                .ok_or_else(|| SessionError::UnknownSession(id.to_string()))?;
            let p = joined
                .participant
                .as_mut()
                .ok_or(SessionError::Unavailable("the participant state"))?;
            let again = p.submitted == Some(sealed.sealed.digest);
            p.handle(ParticipantInput::Sealed {
                digest: sealed.sealed.digest,
            })?;
            if !again {
                self.persist_joined(&joined).await?;
                self.joined.insert(id.to_string(), joined);
            }
            Ok::<_, SessionError>(())
        }
        .await;
        if let Err(e) = recorded {
            self.uploading.remove(id);
            let _ = reply.send(Err(e));
            return;
        }
        let Some(plan) = self.joined.get(id).map(|j| j.plan.clone()) else {
            return;
        };
        let peer_client = self.peer_client.clone();
        let span = info_span!("upload", session = %id);
        self.spawn_work(
            async move {
                let SealedForUpload {
                    sealed,
                    encrypt_ms,
                    prepared,
                } = sealed;
                let result = upload(&peer_client, &plan, &sealed.bytes, sealed.clipped)
                    .await
                    .map(|(pieces, upload_ms)| SubmitReceipt {
                        session: plan.id.clone(),
                        values: plan.length,
                        clipped: sealed.clipped,
                        bytes_sent: sealed.bytes.len() as u64,
                        pieces,
                        digest: hex::encode(sealed.digest),
                        encrypt_ms,
                        upload_ms,
                        prepared,
                    });
                Some(TaskDone::Uploaded {
                    session: plan.id.clone(),
                    result,
                    reply: Some(reply),
                })
            },
            span,
        );
    }

    pub(super) async fn uploaded(
        &mut self,
        id: &str,
        result: Result<SubmitReceipt, SessionError>,
        reply: Option<Reply<SubmitReceipt>>,
    ) {
        self.uploading.remove(id);
        match &result {
            Ok(receipt) => {
                if let Some(mut joined) = self.joined.get(id).cloned() {
                    let digest = hex::decode(&receipt.digest)
                        .ok()
                        .and_then(|d| <[u8; 32]>::try_from(d).ok());
                    if let (Some(p), Some(digest)) = (joined.participant.as_mut(), digest) {
                        if p.handle(ParticipantInput::Submitted { digest }).is_ok()
                            && self.persist_joined(&joined).await.is_ok()
                        {
                            self.joined.insert(id.to_string(), joined);
                        }
                    }
                }
            }
            Err(e) => warn!(session = %id, error = %e, "upload failed"),
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Drops what only served this node's part in a session: the preparation and, in the key
    /// actor, every secret.
    pub(super) fn forget(&mut self, id: &str) {
        self.prepared.remove(id);
        let (keys, session) = (self.keys.clone(), id.to_string());
        self.spawn_work(
            async move {
                if let Err(e) = keys.forget(&session).await {
                    warn!(%session, error = %e, "could not forget the session's secrets");
                }
                None
            },
            info_span!("forget", session = %id),
        );
    }

    /// A joined session, for a notice only its coordinator may send.
    fn joined_from_coordinator(&self, from: &str, session: &str) -> Result<Joined, SessionError> {
        let joined = self
            .joined
            .get(session)
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))?;
        joined.plan.check_coordinator(from)?;
        Ok(joined.clone())
    }

    /// The coordinator's word that the session ended (with the result, for a participant: the
    /// coordinator tells a member that takes part through the result only, so that no client
    /// reads `done` here and then finds no result): the roles' machines forget, and the
    /// session is recorded as over.
    pub(super) async fn receive_end(
        &mut self,
        from: &str,
        session: &str,
        reason: Option<String>,
    ) -> Result<(), SessionError> {
        let mut joined = self.joined_from_coordinator(from, session)?;
        if joined.ended.is_some() {
            return Ok(());
        }
        if let Some(p) = joined.participant.as_mut() {
            p.handle(ParticipantInput::Ended {
                from,
                failure: reason.clone(),
            })?;
        }
        if let Some(m) = joined.member.as_mut() {
            use crate::session::roles::member::MemberInput;
            m.handle(MemberInput::Ended { from }, 0)?;
        }
        joined.ended = Some(if reason.is_some() {
            Phase::Failed
        } else {
            Phase::Done
        });
        joined.failure = reason;
        joined.finished_ms = Some(now_ms());
        self.persist_joined(&joined).await?;
        self.joined.insert(session.to_string(), joined);
        self.forget(session);
        Ok(())
    }

    pub(super) async fn receive_result(
        &mut self,
        from: &str,
        result: PackedResult,
    ) -> Result<(), SessionError> {
        let joined = self.joined_from_coordinator(from, result.session())?;
        if result.value_count()? != joined.plan.length {
            return Err(SessionError::BadInput(
                "the result has the wrong length".into(),
            ));
        }
        let session = result.session().to_string();
        if !self.coordinated.contains_key(&session) {
            put_result(&self.store, session.clone(), result).await?;
        }
        self.receive_end(from, &session, None).await
    }
}
