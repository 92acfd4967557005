//! The participant's side of the actor: joining an opened session, preparing the encryption
//! ahead, encrypting and uploading an update, and taking the result or the failure.

use super::*;

/// A session as a participant or member sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Joined {
    pub(super) plan: SessionPlan,
    pub(super) commitments: Vec<KeyCommitment>,
    /// Persisted apart (`JOINED_SHARES_PREFIX`), once, when the session opens; dropped, in
    /// memory and in the store, once it is over. Shared: a joined state is copied per step.
    #[serde(skip)]
    pub(super) shares: Arc<Vec<PublicKeyShare>>,
    pub(super) phase: Phase,
    pub(super) opened_ms: u64,
    pub(super) submitted: Option<String>,
    pub(super) finished_ms: Option<u64>,
    pub(super) failure: Option<String>,
}

/// A participant's encryption of zero for one session, drawn on a blocking thread as soon as
/// the session opens, while the update is still being trained; the submission takes it and
/// only adds the values. A preparation dropped while still running finishes its work and
/// drops the result (a blocking thread cannot be stopped midway); the result is wiped, and
/// its budget is released only then.
pub(super) struct Preparation {
    pub(super) task: tokio::task::JoinHandle<Result<Budgeted, CryptoError>>,
    /// Set once the drawing succeeded: what `prepared` reports (a failed drawing leaves the
    /// submission to encrypt in full).
    pub(super) ready: Arc<AtomicBool>,
}

/// A prepared encryption with its share of the budget, given back when it is dropped.
pub(super) struct Budgeted {
    pub(super) prepared: PreparedEncryption,
    pub(super) _reservation: Reservation,
}

pub(super) struct Reservation {
    pub(super) bytes: u64,
    pub(super) held: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Encrypts an update off the executor and uploads it piece by piece; each piece is
/// acknowledged only once the coordinator has it on disk.
pub(super) async fn upload(
    link: &Link,
    metrics: &NodeMetrics,
    plan: &SessionPlan,
    key: Arc<CollectivePublicKey>,
    preparation: Option<tokio::task::JoinHandle<Result<Budgeted, CryptoError>>>,
    values: Vec<f32>,
) -> Result<SubmitReceipt, SessionError> {
    let start = Instant::now();
    let n = values.len() as u64;
    let prepared = match preparation {
        // A preparation that failed (it cannot, for a valid plan) is replaced by a whole
        // encryption rather than failing the submission.
        Some(task) => match task.await {
            Ok(Ok(p)) if p.prepared.key_id() == key.key_id() && p.prepared.length() == n => Some(p),
            Ok(Err(e)) => {
                warn!(error = %e, "the prepared encryption failed; encrypting in full");
                None
            }
            _ => None,
        },
        None => None,
    };
    let was_prepared = prepared.is_some();
    let (bytes, clipped) = tokio::task::spawn_blocking(move || match prepared {
        Some(p) => p.prepared.seal(&values),
        None => key.encrypt_to_bytes(&values),
    })
    .await
    .map_err(|_| SessionError::Unavailable("encryption"))??;
    let encrypt = start.elapsed();
    metrics
        .crypto_duration
        .get_or_create(&OpLabels { op: "encrypt" })
        .observe(encrypt.as_secs_f64());
    // The envelope's own digest names the whole update: no second pass over it.
    let digest = crate::crypto::wire::envelope_digest(&bytes)
        .ok_or(SessionError::Unavailable("encryption"))?;
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
        match link
            .send_retrying_with(&plan.coordinator, || piece.encode())
            .await?
        {
            AggReply::PieceAck { complete: true, .. } => break,
            AggReply::PieceAck { .. } => {}
            other => {
                return Err(SessionError::Remote {
                    peer: plan.coordinator.clone(),
                    message: format!("unexpected answer {other:?}"),
                })
            }
        }
    }
    Ok(SubmitReceipt {
        session: plan.id.clone(),
        values: n,
        clipped,
        bytes_sent: bytes.len() as u64,
        pieces: count,
        digest: hex::encode(digest),
        encrypt_ms: encrypt.as_secs_f64() * 1e3,
        upload_ms: start.elapsed().as_secs_f64() * 1e3,
        prepared: was_prepared,
    })
}

impl AggregationActor {
    pub(super) async fn persist_joined(&self, joined: &Joined) -> Result<(), SessionError> {
        let key = format!("{JOINED_PREFIX}{}", joined.plan.id);
        self.store.put(trees::SESSIONS, key.as_bytes(), joined)?;
        self.flush().await
    }

    /// A coordinator that also takes part gets no result or failure notice from itself: its
    /// own joined record is closed here, when the session it coordinates ends.
    pub(super) async fn close_own_joined(
        &mut self,
        id: &str,
        phase: Phase,
        failure: Option<String>,
    ) {
        let Some(mut joined) = self.joined.get(id).cloned() else {
            return;
        };
        if !joined.phase.is_terminal() {
            joined.phase = phase;
            joined.failure = failure;
            joined.finished_ms = Some(now_ms());
            if let Err(e) = self.persist_joined(&joined).await {
                warn!(session = %id, error = %e, "could not record the end of the session");
            }
            self.joined.insert(id.to_string(), joined);
        }
        self.leave(id);
    }

    /// The collective key of a session this node joined: cached, or rebuilt from its shares.
    pub(super) fn joined_key(
        &mut self,
        id: &str,
    ) -> Result<Arc<CollectivePublicKey>, SessionError> {
        let joined = &self.joined;
        cached_key(&mut self.joined_keys, id, || {
            let joined = joined
                .get(id)
                .ok_or_else(|| SessionError::UnknownSession(id.to_string()))?;
            collective_key(&joined.plan, &joined.commitments, joined.shares.iter())
        })
    }

    /// A joined session is over (its result or failure is in, or, on its coordinator, it
    /// ended): drops what only served it. The cached collective key (about 2 MB in transform
    /// form), an encryption prepared and never used, and the stored key shares.
    pub(super) fn leave(&mut self, session: &str) {
        self.joined_keys.remove(session);
        self.prepared.remove(session);
        if let Some(joined) = self.joined.get_mut(session) {
            joined.shares = Arc::default();
        }
        let key = format!("{JOINED_SHARES_PREFIX}{session}");
        if let Err(e) = self.store.remove(trees::SESSIONS, key.as_bytes()) {
            warn!(%session, error = %e, "could not drop a finished session's key shares");
        }
    }

    /// Starts drawing this participant's encryption of zero for a session that just opened,
    /// if the budget has room for it.
    pub(super) fn start_preparing(&mut self, plan: &SessionPlan, key: Arc<CollectivePublicKey>) {
        let bytes = plan.params.profile.params().ciphertext_bytes(plan.length);
        if self.prepared.contains_key(&plan.id) {
            return;
        }
        let held = self.prepared_bytes.load(Ordering::Acquire);
        if held.saturating_add(bytes) > self.prepare_budget {
            debug!(session = %plan.id, bytes, held, budget = self.prepare_budget,
                "not preparing the encryption ahead: over the budget");
            return;
        }
        // Only this actor adds to the count: the check above stays true until here.
        self.prepared_bytes.fetch_add(bytes, Ordering::AcqRel);
        let reservation = Reservation {
            bytes,
            held: self.prepared_bytes.clone(),
        };
        let (length, metrics) = (plan.length, self.metrics.clone());
        let ready = Arc::new(AtomicBool::new(false));
        let set_ready = ready.clone();
        let task = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let prepared = key.prepare(length);
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
        self.prepared
            .insert(plan.id.clone(), Preparation { task, ready });
    }

    /// Participant side of a submission: checks, then encrypts and uploads in a task.
    pub(super) fn submit(&mut self, id: String, values: Vec<f32>, reply: Reply<SubmitReceipt>) {
        let checked = (|| {
            let joined = self
                .joined
                .get(&id)
                .ok_or_else(|| SessionError::UnknownSession(id.clone()))?;
            let plan = joined.plan.clone();
            if !plan.is_participant(&self.me()) {
                return Err(SessionError::NotAllowed {
                    peer: self.me(),
                    role: "a participant",
                    session: id.clone(),
                });
            }
            if joined.submitted.is_some() || self.uploading.contains(&id) {
                return Err(SessionError::Duplicate(format!(
                    "this node already submitted to session `{id}`"
                )));
            }
            if joined.phase != Phase::Open {
                return Err(SessionError::WrongPhase {
                    session: id.clone(),
                    phase: joined.phase,
                    what: "submissions are closed".into(),
                });
            }
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
            let key = self.joined_key(&id)?;
            Ok((plan, key))
        })();
        let (plan, key) = match checked {
            Ok(v) => v,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.uploading.insert(id.clone());
        let preparation = self.prepared.remove(&id).map(|p| p.task);
        let link = self.link.clone();
        let metrics = self.metrics.clone();
        let span = info_span!("submit", session = %id);
        // Among the actor's tasks: an upload retries for seconds, and must not encrypt and send
        // on after the node has stopped. The submitter is answered once the actor recorded it.
        self.spawn_work(
            async move {
                let result = upload(&link, &metrics, &plan, key, preparation, values).await;
                Some(Internal::Uploaded {
                    session: id,
                    result,
                    reply,
                })
            },
            span,
        );
    }

    /// A participant or member learns of an open session. Returns what the key actor must
    /// bind when this node is a member.
    #[allow(clippy::type_complexity)]
    pub(super) async fn open(
        &mut self,
        from: &str,
        plan: SessionPlan,
        commitments: Vec<KeyCommitment>,
        shares: Vec<PublicKeyShare>,
    ) -> Result<Option<(SessionPlan, Vec<KeyCommitment>, Vec<PublicKeyShare>)>, SessionError> {
        plan.check_coordinator(from)?;
        if plan.length == 0 || plan.length > crate::session::spec::MAX_LENGTH {
            return Err(SessionError::BadInput(format!(
                "a session of {} values; at most {} are allowed",
                plan.length,
                crate::session::spec::MAX_LENGTH
            )));
        }
        let me = self.me();
        if plan.coordinator != me && self.coordinated.contains_key(&plan.id) {
            return Err(SessionError::Duplicate(format!(
                "session id `{}` is taken on this node by a session it coordinates",
                plan.id
            )));
        }
        let member = plan.member_index(&me).is_some();
        if !member && !plan.is_participant(&me) {
            return Err(SessionError::NotAllowed {
                peer: me,
                role: "a participant or member",
                session: plan.id.clone(),
            });
        }
        plan.params.validate()?;
        let shares = Arc::new(shares);
        if let Some(existing) = self.joined.get(&plan.id) {
            if existing.plan != plan {
                return Err(SessionError::Duplicate(format!(
                    "session `{}` is already open with another plan",
                    plan.id
                )));
            }
        } else {
            // The shares are checked against their commitments before the key is accepted,
            // and stored, off the executor (milliseconds of hashing and transforms, and a
            // 1.5 MB write, at every participant).
            let key = {
                let (plan, commitments) = (plan.clone(), commitments.clone());
                let (shares, store) = (shares.clone(), self.store.clone());
                tokio::task::spawn_blocking(move || {
                    let key = collective_key(&plan, &commitments, shares.iter())?;
                    let refs: Vec<&PublicKeyShare> = shares.iter().collect();
                    put_shares(&store, JOINED_SHARES_PREFIX, &plan.id, &refs)?;
                    Ok::<_, SessionError>(key)
                })
                .await
                .map_err(|_| SessionError::Unavailable("the key check"))??
            };
            let joined = Joined {
                plan: plan.clone(),
                commitments: commitments.clone(),
                shares: shares.clone(),
                phase: Phase::Open,
                opened_ms: now_ms(),
                submitted: None,
                finished_ms: None,
                failure: None,
            };
            self.persist_joined(&joined).await?;
            let key = Arc::new(key);
            self.joined_keys.insert(plan.id.clone(), key.clone());
            self.joined.insert(plan.id.clone(), joined);
            info!(session = %plan.id, member, "session opened");
            if plan.is_participant(&me) {
                self.start_preparing(&plan, key);
            }
        }
        Ok(member.then(|| (plan, commitments, Arc::unwrap_or_clone(shares))))
    }

    /// A joined session, for a notice only its coordinator may send.
    pub(super) fn joined_from_coordinator(
        &self,
        from: &str,
        session: &str,
    ) -> Result<Joined, SessionError> {
        let joined = self
            .joined
            .get(session)
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))?;
        joined.plan.check_coordinator(from)?;
        Ok(joined.clone())
    }

    pub(super) async fn receive_failure(
        &mut self,
        from: &str,
        session: &str,
        reason: String,
    ) -> Result<(), SessionError> {
        let mut joined = self.joined_from_coordinator(from, session)?;
        if joined.phase == Phase::Done {
            return Ok(());
        }
        joined.phase = Phase::Failed;
        joined.failure = Some(reason);
        joined.finished_ms = Some(now_ms());
        self.persist_joined(&joined).await?;
        self.joined.insert(session.to_string(), joined);
        self.leave(session);
        Ok(())
    }

    pub(super) async fn receive_result(
        &mut self,
        from: &str,
        result: SessionResult,
    ) -> Result<(), SessionError> {
        let mut joined = self.joined_from_coordinator(from, &result.session)?;
        if result.values.len() as u64 != joined.plan.length {
            return Err(SessionError::BadInput(
                "the result has the wrong length".into(),
            ));
        }
        let session = result.session.clone();
        if !self.coordinated.contains_key(&session) {
            put_result(&self.store, result).await?;
        }
        joined.phase = Phase::Done;
        joined.finished_ms = Some(now_ms());
        self.persist_joined(&joined).await?;
        self.joined.insert(session.clone(), joined);
        self.leave(&session);
        Ok(())
    }
}
