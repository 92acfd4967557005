//! The coordinator's side of the actor: creating sessions, applying events to their state
//! machines and performing the effects, receiving submission pieces, and summing.

use super::*;

/// A coordinator's running sum: each accepted update is added on a blocking thread as soon as
/// its upload is checked, so closing only has to finish the sum instead of reading every
/// update back from the store. Dropping it ends the thread.
pub(super) struct RunningSum {
    jobs: std::sync::mpsc::Sender<SumJob>,
    /// Who was handed to the thread, in order.
    added: Vec<String>,
}

pub(super) type SumOutcome = Result<(Aggregate, DecryptionRequest), SessionError>;

pub(super) enum SumJob {
    Add(String, CheckedUpdate),
    Finish(oneshot::Sender<SumOutcome>),
}

impl RunningSum {
    pub(super) fn start(key: Arc<CollectivePublicKey>, length: u64) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<SumJob>();
        tokio::task::spawn_blocking(move || {
            let mut acc = Accumulator::new(&key, length).map_err(SessionError::from);
            while let Ok(job) = rx.recv() {
                match job {
                    SumJob::Add(who, update) => {
                        if let Ok(sum) = acc.as_mut() {
                            if let Err(e) = sum.add_checked(&who, &update) {
                                acc = Err(e.into());
                            }
                        }
                    }
                    SumJob::Finish(reply) => {
                        let _ = reply.send(acc.and_then(|sum| Ok(sum.finish()?)));
                        return;
                    }
                }
            }
        });
        RunningSum {
            jobs,
            added: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, who: &str, update: CheckedUpdate) {
        if self.jobs.send(SumJob::Add(who.to_string(), update)).is_ok() {
            self.added.push(who.to_string());
        }
    }

    /// The finished sum, if it holds exactly `contributors`.
    pub(super) async fn finish(self, contributors: &[(String, [u8; 32])]) -> Option<SumOutcome> {
        let mut added = self.added.clone();
        let mut wanted: Vec<String> = contributors.iter().map(|(c, _)| c.clone()).collect();
        added.sort();
        wanted.sort();
        if added != wanted {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.jobs.send(SumJob::Finish(tx)).ok()?;
        rx.await.ok()
    }
}

/// Whose upload pieces these are: one participant in one session (session ids and peer ids
/// hold no `/`, so a session's owners share the prefix `{session}/`).
pub(super) fn piece_owner(session: &str, peer: &str) -> String {
    format!("{session}/{peer}")
}

/// The largest wire size an update of this plan can have: anything bigger is refused before
/// it is stored.
pub(super) fn max_update_bytes(plan: &SessionPlan) -> u64 {
    let p = plan.params.profile.params();
    let chunks = p.chunks(plan.length);
    // ≤ 16 bytes per mask and body coefficient, plus framing.
    (chunks * p.ring_dim as u64 + plan.length) * 16 + 4096 + chunks * 64
}

/// What storing one piece led to.
pub(super) enum StoredPiece {
    /// More pieces are to come.
    Partial,
    /// The participant's update was already accepted (a retransmission).
    AlreadyAccepted,
    /// This was the last piece: the whole upload is to be checked.
    Last(Box<CompleteUpload>),
}

pub(super) struct CompleteUpload {
    upload: Upload,
    plan: SessionPlan,
    key: Arc<CollectivePublicKey>,
    meta: SubmissionMeta,
}

impl CompleteUpload {
    /// Assembles and checks the upload (blocking); a bad upload is dropped whole.
    pub(super) fn check(mut self) -> Result<(SubmissionMeta, CheckedUpdate), SessionError> {
        let mut whole = Vec::new();
        let checked = match self.upload.concat(&mut whole) {
            Ok(()) => check_update(whole, self.meta.digest, &self.plan, &self.key),
            Err(e) => Err(e.into()),
        };
        match checked {
            Ok(update) => {
                self.meta.bytes = update.wire_len() as u64;
                Ok((self.meta, update))
            }
            Err(e) => {
                let _ = self.upload.remove();
                Err(e)
            }
        }
    }
}

/// Counts a submission piece's outcome; pieces that are neither the last nor refused are not
/// submissions yet.
pub(super) fn count_submission(metrics: &NodeMetrics, result: &Result<AggReply, SessionError>) {
    let outcome = match result {
        Ok(AggReply::PieceAck { complete: true, .. }) => "accepted",
        Ok(_) => return,
        Err(SessionError::Duplicate(_)) => "duplicate",
        Err(SessionError::NotAllowed { .. }) => "not_allowed",
        Err(SessionError::UnknownSession(_)) => "unknown_session",
        Err(_) => "refused",
    };
    metrics
        .submissions
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

/// Sends `msg` to each of `members` (committee indices) in its own task; `expect` turns the
/// awaited answer into what the actor is told, and anything else fails the session.
pub(super) fn ask_members(
    work: &mut Vec<Work>,
    link: &Link,
    plan: &SessionPlan,
    members: Vec<u32>,
    msg: AggMsg,
    expect: fn(String, u32, AggReply) -> Option<Internal>,
) {
    for member in members {
        let (link, msg) = (link.clone(), msg.clone());
        let session = plan.id.clone();
        let peer = plan.committee[member as usize].clone();
        work.push(Box::pin(async move {
            let internal = match link.send_retrying(&peer, &msg).await {
                Ok(reply) => expect(session.clone(), member, reply).unwrap_or_else(|| {
                    let why = format!("gave an unexpected answer to {}", msg.kind());
                    Internal::Event(session, fail_event(&peer, &why))
                }),
                Err(e) => Internal::Event(session, fail_event(&peer, &e.to_string())),
            };
            Some(internal)
        }));
    }
}

pub(super) fn fail_event(peer: &str, why: &str) -> Event {
    Event::Fail {
        reason: format!("{peer}: {why}"),
    }
}

/// Checks an assembled upload: its envelope's digest is the one the participant announced
/// (and matches its bytes), and it is an update of this session under its key.
pub(super) fn check_update(
    bytes: Vec<u8>,
    digest: [u8; 32],
    plan: &SessionPlan,
    key: &CollectivePublicKey,
) -> Result<CheckedUpdate, SessionError> {
    if crate::crypto::wire::envelope_digest(&bytes) != Some(digest) {
        return Err(SessionError::BadInput(
            "the assembled update does not match its digest".into(),
        ));
    }
    let max = max_update_bytes(plan) as usize;
    Ok(CheckedUpdate::check(bytes, max, key, plan.length)?)
}

/// Sums the stored updates of `contributors` (blocking: runs on the blocking pool).
pub(super) fn accumulate(
    store: &Store,
    plan: &SessionPlan,
    key: &CollectivePublicKey,
    contributors: &[(String, [u8; 32])],
) -> Result<(Aggregate, DecryptionRequest), SessionError> {
    let mut acc = Accumulator::new(key, plan.length)?;
    for (who, digest) in contributors {
        let upload = Upload::open(
            store,
            trees::SUBMISSIONS,
            &piece_owner(&plan.id, who),
            *digest,
        )?;
        let mut bytes = Vec::new();
        upload.concat(&mut bytes)?;
        let update = check_update(bytes, *digest, plan, key).map_err(|e| {
            SessionError::Store(format!(
                "the stored update of {who} is missing or damaged: {e}"
            ))
        })?;
        acc.add_checked(who, &update)?;
    }
    Ok(acc.finish()?)
}

impl AggregationActor {
    pub(super) async fn create(&mut self, spec: SessionSpec) -> Result<SessionInfo, SessionError> {
        let plan = spec.validate(self.link.me, self.default_profile)?;
        if self.coordinated.contains_key(&plan.id) || self.joined.contains_key(&plan.id) {
            return Err(SessionError::Duplicate(format!(
                "session `{}` already exists",
                plan.id
            )));
        }
        let id = plan.id.clone();
        let span = info_span!("session", session = %id);
        span.in_scope(|| {
            info!(
                length = plan.length,
                committee = plan.committee.len(),
                participants = plan.participants.len(),
                "session created"
            )
        });
        let state = Coordinated::new(plan, now_ms());
        self.persist_coordinated(&state, false).await?;
        self.coordinated.insert(id.clone(), state);
        self.phase_since.insert(id.clone(), Instant::now());
        self.apply(&id, Event::Start).await;
        // A small announcement on gossipsub, for operators and dashboards; the protocol itself
        // runs over request-response.
        let announcement =
            serde_json::json!({"session": id, "coordinator": self.me(), "event": "created"});
        let network = self.link.network.clone();
        self.spawn_work(
            async move {
                if let Err(e) = network.publish(announcement.to_string().into_bytes()).await {
                    debug!(error = %e, "session announcement not published");
                }
                None
            },
            info_span!("session", session = %id),
        );
        self.info(&id)
    }

    /// Persists a coordinated session; its shares too when `shares_changed`.
    pub(super) async fn persist_coordinated(
        &self,
        state: &Coordinated,
        shares_changed: bool,
    ) -> Result<(), SessionError> {
        if shares_changed {
            let shares: Vec<&PublicKeyShare> = state.shares.values().map(|s| &**s).collect();
            put_shares(&self.store, COORD_SHARES_PREFIX, &state.plan.id, &shares)?;
        }
        let key = format!("{COORD_PREFIX}{}", state.plan.id);
        self.store.put(trees::SESSIONS, key.as_bytes(), state)?;
        self.flush().await
    }

    pub(super) fn load_shares(
        &self,
        prefix: &str,
        session: &str,
    ) -> Result<Vec<PublicKeyShare>, SessionError> {
        let key = format!("{prefix}{session}");
        Ok(self
            .store
            .get::<Vec<PublicKeyShare>>(trees::SESSIONS, key.as_bytes())?
            .unwrap_or_default())
    }

    /// Applies an event to a coordinated session: new state, persisted, then its effects.
    pub(super) async fn apply(&mut self, id: &str, event: Event) -> Option<SessionError> {
        let state = self.coordinated.get(id)?;
        let mut next = state.clone();
        let before = next.phase;
        let effects = match next.handle(event, now_ms()) {
            Ok(effects) => effects,
            Err(e) => return Some(e),
        };
        if next == *state {
            return None;
        }
        if next.phase.is_terminal() {
            // Over, however far the key got: nothing needs the shares any more (512 KiB per
            // member; `info` reports how many arrived). Stored empty below.
            next.shares.clear();
        }
        // Shares are added during keygen (each bound by its member's commitment) and cleared
        // once the session is over.
        let shares_changed = next.shares.len() != state.shares.len();
        if let Err(e) = self.persist_coordinated(&next, shares_changed).await {
            warn!(session = %id, error = %e, "cannot persist session; the event is dropped");
            return Some(e);
        }
        let after = next.phase;
        if after != before {
            let span = info_span!("session", session = %id);
            span.in_scope(|| match &next.failure {
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
                self.partials.remove(id);
            }
        }
        let ended = (after != before && after.is_terminal()).then(|| next.failure.clone());
        self.coordinated.insert(id.to_string(), next);
        self.update_phase_gauge();
        for effect in effects {
            self.perform(id, effect);
        }
        if let Some(failure) = ended {
            self.close_own_joined(id, after, failure).await;
        }
        None
    }

    /// The collective key of a session this node coordinates: cached, or rebuilt from its shares.
    pub(super) fn coordinated_key(
        &mut self,
        id: &str,
    ) -> Result<Arc<CollectivePublicKey>, SessionError> {
        let coordinated = &self.coordinated;
        cached_key(&mut self.coordinated_keys, id, || {
            coordinated
                .get(id)
                .ok_or_else(|| SessionError::UnknownSession(id.to_string()))?
                .collective_key()
        })
    }

    /// Starts an effect's work among the actor's tasks; its outcome comes back to the loop as
    /// an [`Internal`].
    pub(super) fn perform(&mut self, id: &str, effect: Effect) {
        let span = info_span!("session", session = %id);
        let mut work = Vec::new();
        self.effect_work(id, effect, &mut work);
        for w in work {
            self.spawn_work(w, span.clone());
        }
    }

    /// The work an effect takes, pushed onto `work`.
    fn effect_work(&mut self, id: &str, effect: Effect, work: &mut Vec<Work>) {
        let Some(state) = self.coordinated.get(id) else {
            return;
        };
        let plan = state.plan.clone();
        let link = self.link.clone();
        let session = id.to_string();
        let metrics = self.metrics.clone();
        match effect {
            Effect::RequestCommitments { members } => {
                let msg = AggMsg::KeygenCommit { plan: plan.clone() };
                ask_members(
                    work,
                    &link,
                    &plan,
                    members,
                    msg,
                    |session, member, reply| match reply {
                        AggReply::Commitment(commitment) => Some(Internal::Event(
                            session,
                            Event::Commitment { member, commitment },
                        )),
                        _ => None,
                    },
                );
            }
            Effect::RequestShares {
                members,
                commitments,
            } => {
                let msg = AggMsg::KeygenReveal {
                    session: session.clone(),
                    commitments,
                };
                ask_members(
                    work,
                    &link,
                    &plan,
                    members,
                    msg,
                    |session, member, reply| match reply {
                        AggReply::Share(share) => {
                            Some(Internal::Event(session, Event::Share { member, share }))
                        }
                        _ => None,
                    },
                );
            }
            Effect::DeliverKey => {
                let msg = AggMsg::Open {
                    plan: plan.clone(),
                    commitments: state.commitments.values().cloned().collect(),
                    shares: state.shares.values().map(|s| (**s).clone()).collect(),
                };
                work.push(Box::pin(async move {
                    let peers = plan.peers();
                    let sends = peers.iter().map(|p| link.send_retrying(p, &msg));
                    let results = futures::future::join_all(sends).await;
                    let mut event = Event::KeyDelivered;
                    for (peer, r) in peers.iter().zip(results) {
                        match r {
                            Ok(_) => {}
                            // Without every member's bound share the sum cannot be decrypted.
                            Err(e) if plan.member_index(peer).is_some() => {
                                event =
                                    fail_event(peer, &format!("could not open the session: {e}"));
                            }
                            Err(e) => warn!(%peer, error = %e, "participant did not get the key"),
                        }
                    }
                    Some(Internal::Event(session, event))
                }));
            }
            Effect::Accumulate { contributors } => {
                let contributors: Vec<(String, [u8; 32])> = contributors
                    .into_iter()
                    .filter_map(|c| state.submitted.get(&c).map(|m| (c, m.digest)))
                    .collect();
                let key = match self.coordinated_key(id) {
                    Ok(k) => k,
                    Err(e) => {
                        let reason = e.to_string();
                        work.push(Box::pin(async move {
                            Some(Internal::Event(session, Event::Fail { reason }))
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
                        // After a restart, or if the running sum went wrong: from the store.
                        _ => {
                            let job = move || accumulate(&store, &plan, &key, &contributors);
                            timed_blocking(&metrics, "accumulate", job).await
                        }
                    };
                    let internal = match outcome {
                        Ok((aggregate, request)) => Internal::Accumulated {
                            session,
                            aggregate: Box::new(aggregate),
                            request: Box::new(request),
                        },
                        Err(reason) => Internal::Event(session, Event::Fail { reason }),
                    };
                    Some(internal)
                }));
            }
            Effect::RequestPartials { members } => {
                let Some((_, request)) = self.aggregates.get(id).cloned() else {
                    return;
                };
                let msg = AggMsg::Decrypt {
                    session: session.clone(),
                    request,
                };
                ask_members(
                    work,
                    &link,
                    &plan,
                    members,
                    msg,
                    |session, member, reply| match reply {
                        AggReply::Partial(p) => Some(Internal::Partial {
                            session,
                            member,
                            partial: Box::new(p),
                        }),
                        _ => None,
                    },
                );
            }
            Effect::Combine => {
                let Some((aggregate, _)) = self.aggregates.get(id).cloned() else {
                    return;
                };
                let received = self.partials.get(id);
                let partials: Result<Vec<PartialDecryption>, u32> = (0..plan.committee.len()
                    as u32)
                    .map(|m| received.and_then(|r| r.get(&m)).cloned().ok_or(m))
                    .collect();
                let clipped = state.clipped;
                let contributor_ids = state.contributors.clone();
                work.push(Box::pin(async move {
                    let Ok(partials) = partials else {
                        let reason = "a partial decryption is missing".to_string();
                        return Some(Internal::Event(session, Event::Fail { reason }));
                    };
                    let job = move || aggregate.combine(&partials).map_err(SessionError::from);
                    let internal = match timed_blocking(&metrics, "combine", job).await {
                        Ok(sum) => {
                            let (values, error_bound) = match plan.result {
                                ResultKind::Mean => (sum.mean(), sum.mean_error_bound),
                                ResultKind::Sum => (sum.sum.clone(), sum.sum_error_bound),
                            };
                            Internal::Combined {
                                session: session.clone(),
                                result: Box::new(SessionResult {
                                    session,
                                    kind: plan.result,
                                    contributors: sum.contributors,
                                    contributor_ids,
                                    clipped,
                                    error_bound,
                                    values,
                                }),
                            }
                        }
                        Err(reason) => Internal::Event(session, Event::Fail { reason }),
                    };
                    Some(internal)
                }));
            }
            Effect::PublishFailure => {
                let msg = AggMsg::Failed {
                    session: session.clone(),
                    reason: state.failure.clone().unwrap_or_default(),
                };
                work.push(Box::pin(async move {
                    let me = link.me.to_string();
                    for peer in plan.peers().into_iter().filter(|p| **p != me) {
                        // Peers that never saw the session open answer `unknown_session`.
                        if let Err(e) = link.send(peer, &msg).await {
                            debug!(%peer, error = %e, "failure notice not delivered");
                        }
                    }
                    None
                }));
            }
            Effect::PublishResult => {
                let (store, id) = (self.store.clone(), id.to_string());
                work.push(Box::pin(async move {
                    let read = tokio::task::spawn_blocking(move || {
                        store.get::<SessionResult>(trees::RESULTS, id.as_bytes())
                    });
                    let result = match read.await {
                        Ok(Ok(Some(result))) => result,
                        Ok(Err(e)) => {
                            warn!(error = %e, "could not read the result to publish");
                            return None;
                        }
                        _ => return None,
                    };
                    // Encoded once, then sent to a few participants at a time: one by one, a
                    // million-value result took longer to deliver than the round to compute.
                    let msg = match messages::encode(&AggMsg::Result { result }) {
                        Ok(msg) => msg,
                        Err(e) => {
                            warn!(error = %e, "could not encode the result");
                            return None;
                        }
                    };
                    let me = link.me.to_string();
                    let (link, msg) = (&link, &msg);
                    futures::stream::iter(plan.participants.iter().filter(|p| **p != me))
                        .for_each_concurrent(RESULT_SENDS_AT_ONCE, |peer| async move {
                            if let Err(e) = link.send_retrying_with(peer, || Ok(msg.clone())).await
                            {
                                warn!(%peer, error = %e, "could not deliver the result");
                            }
                        })
                        .await;
                    None
                }));
            }
        }
    }

    /// Drops a finished session's ciphertexts; the result and the state stay.
    pub(super) fn cleanup(&mut self, session: &str) {
        // Removing tens of blobs is file-system work: off the actor.
        let (store, owners) = (self.store.clone(), format!("{session}/"));
        self.tasks.spawn_blocking(move || {
            if let Err(e) = store.drop_uploads(trees::SUBMISSIONS, &owners) {
                warn!(error = %e, "could not drop a finished session's submissions");
            }
            None
        });
        self.coordinated_keys.remove(session);
    }

    /// A submission piece: stored, then acknowledged once durable; the last one is checked
    /// with the whole upload first.
    pub(super) fn inbound_piece(
        &mut self,
        from: String,
        piece: Piece<'_>,
        reply: oneshot::Sender<Response>,
        task_span: tracing::Span,
    ) {
        let (session, index, len) = (piece.session.to_string(), piece.index, piece.bytes.len());
        let stored = self.store_piece(&from, &piece);
        if stored.is_ok() {
            self.metrics.submission_bytes.inc_by(len as u64);
        }
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        match stored {
            Err(e) => {
                let result = Err(e);
                count_submission(&self.metrics, &result);
                self.answer_later(Box::pin(async move { result }), reply, task_span);
            }
            Ok(StoredPiece::AlreadyAccepted) => self.answer_later(
                Box::pin(async move {
                    Ok(AggReply::PieceAck {
                        index,
                        complete: true,
                    })
                }),
                reply,
                task_span,
            ),
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
                task_span,
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
                            Ok((meta, update)) => Some(Internal::UploadChecked {
                                session,
                                from,
                                index,
                                meta,
                                update,
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
                    task_span,
                );
            }
        }
    }

    /// Coordinator side of a submission piece: checked and stored (not yet flushed: the caller
    /// acknowledges it only after a flush, which concurrent pieces share).
    pub(super) fn store_piece(
        &mut self,
        from: &str,
        piece: &Piece<'_>,
    ) -> Result<StoredPiece, SessionError> {
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
        let plan = state.plan.clone();
        if !plan.is_participant(from) {
            return Err(SessionError::NotAllowed {
                peer: from.to_string(),
                role: "a participant",
                session: session.to_string(),
            });
        }
        if let Some(done) = state.submitted.get(from) {
            // A retransmission of the accepted update is harmless; anything else is a second
            // submission.
            if done.digest == digest {
                return Ok(StoredPiece::AlreadyAccepted);
            }
            return Err(SessionError::Duplicate(format!(
                "participant {from} already submitted to session `{session}`"
            )));
        }
        if state.phase != Phase::Collecting {
            return Err(SessionError::WrongPhase {
                session: session.to_string(),
                phase: state.phase,
                what: "it does not take submissions".into(),
            });
        }
        let max = max_update_bytes(&plan);
        if count == 0
            || index >= count
            || bytes.is_empty()
            || bytes.len() > PIECE_BYTES
            || count as u64 * PIECE_BYTES as u64 > max + PIECE_BYTES as u64
        {
            return Err(SessionError::BadInput(format!(
                "piece {index} of {count} with {} bytes does not fit an update of at most {max} bytes",
                bytes.len()
            )));
        }
        let upload = Upload::open(
            &self.store,
            trees::SUBMISSIONS,
            &piece_owner(session, from),
            digest,
        )?;
        if upload.put(index, bytes)? < count {
            return Ok(StoredPiece::Partial);
        }
        let key = self.coordinated_key(session)?;
        Ok(StoredPiece::Last(Box::new(CompleteUpload {
            upload,
            plan,
            key,
            meta: SubmissionMeta {
                digest,
                clipped,
                bytes: 0,
            },
        })))
    }

    /// Accepts a checked upload: the running sum gets it first (so that a close this event
    /// triggers finds it there), then the session records it.
    pub(super) async fn accept_upload(
        &mut self,
        session: &str,
        from: &str,
        index: u32,
        meta: SubmissionMeta,
        update: CheckedUpdate,
    ) -> Result<AggReply, SessionError> {
        let state = self
            .coordinated
            .get(session)
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))?;
        let complete = AggReply::PieceAck {
            index,
            complete: true,
        };
        if let Some(done) = state.submitted.get(from) {
            if done.digest == meta.digest {
                return Ok(complete);
            }
        }
        let (first, length) = (state.submitted.is_empty(), state.plan.length);
        // A running sum is only started with the first update: after a restart mid-collection
        // the sum is read back from the store at closing instead.
        if !self.running.contains_key(session) && first {
            let key = self.coordinated_key(session)?;
            self.running
                .insert(session.to_string(), RunningSum::start(key, length));
        }
        if let Some(sum) = self.running.get_mut(session) {
            sum.add(from, update);
        }
        let event = Event::SubmissionComplete {
            participant: from.to_string(),
            meta,
        };
        match self.apply(session, event).await {
            Some(e) => Err(e),
            None => Ok(complete),
        }
    }
}
