//! The aggregation actor: runs the key-additive session protocol (`docs/PROTOCOL.md`) for every
//! role this node plays, one file per role, each driving the pure machine of its role
//! (`session::roles`): the actor persists the new state first, then performs the effects.
//!
//! - [`coordinator`]: delivers the plan, receives submission pieces, sums, asks for holdings
//!   and releases, combines.
//! - [`participant`]: joins, has its key drawn, delivers seeds, prepares, seals and uploads.
//! - [`member`]: stores seeds, answers holdings, releases keys for one contributor set.
//!
//! This module holds the handle, the loop, what every role shares (loading, session info,
//! inbound routing) and [`peer_client`], the way tasks reach peers. Spawned work runs in a
//! [`JoinSet`](tokio::task::JoinSet) polled in the loop: it dies with the actor, and what it
//! returns is handled here.

mod coordinator;
mod handle;
mod member;
mod participant;
mod peer_client;
mod quota;
mod submissions;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::keys::KeysHandle;
use super::{stopped, Backoff, Mailbox};
use crate::codes::PeerFailure;
use crate::crypto::kahe::Aggregate;
use crate::crypto::Profile;
use crate::metrics::{NodeMetrics, OpLabels, PhaseLabels};
use crate::net::{NetworkHandle, Response};
use crate::session::messages::{self, AggMsg, AggReply, Piece};
use crate::session::roles::coordinator::{CoordinatorEvent, SubmissionMeta};
use crate::session::roles::LocalPolicy;
use crate::session::{
    now_ms, PackedResult, Phase, Roles, SessionError, SessionInfo, SessionPlan, SessionResult,
    SessionSpec, SubmitReceipt, Timings,
};
use crate::store::{trees, Store};

use coordinator::Coordinated;
pub use handle::AggregationHandle;
use handle::{Command, Reply};
use participant::{Joined, Preparation};
use peer_client::PeerClient;
use submissions::{count_submission, RunningSum};

/// Participants a result is pushed to concurrently.
const RESULT_SENDS_AT_ONCE: usize = 8;

/// What the actor's own background work hands back to its loop (through [`Tasks`]).
enum TaskDone {
    /// An event for a coordinated session's machine.
    Event(String, CoordinatorEvent),
    /// The bodies of S are summed (coordinator).
    Summed {
        session: String,
        aggregate: Box<Aggregate>,
    },
    /// A member's release arrived for assignment `generation` (coordinator).
    Released {
        session: String,
        member: u32,
        generation: u32,
        bytes: Vec<u8>,
    },
    /// The sum is decrypted (coordinator); `attempt` counts the tries to store it.
    Combined {
        session: String,
        result: Box<SessionResult>,
        attempt: u32,
    },
    /// A submission piece is written (coordinator).
    PieceStored {
        session: String,
        from: String,
        index: u32,
        stored: Result<submissions::StoredPiece, SessionError>,
        reply: oneshot::Sender<Response>,
    },
    /// A participant's last piece is in and its whole upload checked (coordinator).
    UploadChecked {
        session: String,
        from: String,
        index: u32,
        meta: SubmissionMeta,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Response>,
    },
    /// A member holds this node's seeds (participant).
    SeedsAcked { session: String, member: u32 },
    /// This node's update is sealed: to persist before it is uploaded (participant).
    Sealed {
        session: String,
        sealed: Box<participant::SealedForUpload>,
        reply: Reply<SubmitReceipt>,
    },
    /// This node's upload ended; the submitter, if any, is answered once it is recorded.
    Uploaded {
        session: String,
        result: Result<SubmitReceipt, SessionError>,
        reply: Option<Reply<SubmitReceipt>>,
    },
}

type BoxedAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<AggReply, SessionError>> + Send>>;

/// A piece of background work: what it returns is handled in the actor's loop.
type Work = std::pin::Pin<Box<dyn std::future::Future<Output = Option<TaskDone>> + Send>>;

/// The actor's background work: polled in its own loop, and aborted with it.
type Tasks = tokio::task::JoinSet<Option<TaskDone>>;

/// The wire answer to a peer's message.
fn reply_response(result: Result<AggReply, SessionError>) -> Response {
    match result {
        Ok(r) => messages::encode(&r)
            .map(Response::Aggregation)
            .unwrap_or_else(|e| error_response(&e)),
        Err(e) => {
            debug!(error = %e, "refused");
            error_response(&e)
        }
    }
}

fn error_response(e: &SessionError) -> Response {
    Response::error(e.code(), e.to_string())
}

struct AggregationActor {
    peer_client: PeerClient,
    identity: libp2p::identity::Keypair,
    store: Store,
    /// What one coordinator may make this node hold.
    quotas: quota::Quotas,
    /// When joined sessions are next checked for expiry.
    next_expiry: Instant,
    keys: KeysHandle,
    metrics: NodeMetrics,
    default_profile: Profile,
    policy: LocalPolicy,
    rx: mpsc::Receiver<Command>,
    coordinated: BTreeMap<String, Coordinated>,
    joined: BTreeMap<String, Joined>,
    /// The sum over S being decrypted, by session (coordinator; rebuilt after a restart).
    aggregates: HashMap<String, Arc<Aggregate>>,
    /// Releases received for the current assignment, by session: (generation, member → bytes).
    /// Not persisted: after a restart members are asked again and answer identically.
    releases: HashMap<String, (u32, BTreeMap<u32, Vec<u8>>)>,
    /// Sessions whose upload from this node is under way.
    uploading: HashSet<String>,
    /// Running sums of the updates accepted so far, by session (coordinator).
    running: HashMap<String, RunningSum>,
    phase_since: HashMap<String, Instant>,
    /// Encryptions of zero drawn ahead for the sessions this node submits to, by session.
    prepared: HashMap<String, Preparation>,
    /// Bytes prepared encryptions hold, within `prepare_budget`: counted from the start of
    /// their drawing until they are sealed or dropped, wherever they are by then.
    prepared_bytes: Arc<AtomicU64>,
    prepare_budget: u64,
    tasks: Tasks,
    /// Callers waiting for a session to leave a phase (long polls), by session.
    waiting: HashMap<String, Vec<(Phase, Reply<SessionInfo>)>>,
}

pub struct AggregationDeps {
    pub me: PeerId,
    /// The node's identity: a member signs its attestations with it.
    pub identity: libp2p::identity::Keypair,
    pub store: Store,
    pub network: NetworkHandle,
    pub keys: KeysHandle,
    pub metrics: NodeMetrics,
    pub default_profile: Profile,
    /// `aggregation.prepare_budget_bytes`: memory for encryptions prepared ahead (0: none).
    pub prepare_budget_bytes: u64,
    /// What this node accepts of other nodes' plans.
    pub policy: LocalPolicy,
    /// `p2p.unreachable_after_secs`: how long a client's upload retries an unreachable
    /// coordinator.
    pub unreachable_after: Duration,
    /// `aggregation.max_sessions_per_peer`.
    pub max_sessions_per_peer: u32,
    /// `aggregation.max_pending_bytes`.
    pub max_pending_bytes: u64,
    /// `aggregation.plans_per_minute_per_peer`.
    pub plans_per_minute_per_peer: u32,
    /// `aggregation.expire_grace_secs`.
    pub expire_grace: Duration,
}

pub fn spawn(
    deps: AggregationDeps,
    cancel: CancellationToken,
) -> (AggregationHandle, impl std::future::Future<Output = ()>) {
    let (mailbox, rx) = Mailbox::new("aggregation", 256);
    let actor = AggregationActor {
        identity: deps.identity,
        peer_client: PeerClient {
            me: deps.me,
            network: deps.network,
            mailbox: mailbox.clone(),
            unreachable_after: deps.unreachable_after,
        },
        store: deps.store,
        quotas: quota::Quotas::new(
            deps.max_sessions_per_peer,
            deps.max_pending_bytes,
            deps.plans_per_minute_per_peer,
            deps.expire_grace,
        ),
        next_expiry: Instant::now() + quota::EXPIRY_EVERY,
        keys: deps.keys,
        metrics: deps.metrics,
        default_profile: deps.default_profile,
        policy: deps.policy,
        rx,
        coordinated: BTreeMap::new(),
        joined: BTreeMap::new(),
        aggregates: HashMap::new(),
        releases: HashMap::new(),
        uploading: HashSet::new(),
        running: HashMap::new(),
        phase_since: HashMap::new(),
        prepared: HashMap::new(),
        prepared_bytes: Arc::default(),
        prepare_budget: deps.prepare_budget_bytes,
        tasks: Tasks::new(),
        waiting: HashMap::new(),
    };
    (AggregationHandle { mailbox }, actor.run(cancel))
}

/// Stores session `id`'s result off the executor: megabytes, packed (a [`SessionResult`] is
/// packed as it is serialised, a [`PackedResult`] already is: the same bytes), written to a
/// file of its own and synced on the spot (`Store::put_bytes`).
async fn put_result<R: serde::Serialize + Send + 'static>(
    store: &Store,
    id: String,
    result: R,
) -> Result<(), SessionError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.put(trees::RESULTS, id.as_bytes(), &result))
        .await
        .map_err(|_| SessionError::Unavailable("the store"))??;
    Ok(())
}

/// Makes every write so far durable, timing it for the flush-latency metric.
async fn timed_flush(store: &Store, metrics: &NodeMetrics) -> Result<(), SessionError> {
    let start = Instant::now();
    store.flush_async().await?;
    metrics
        .store_flush_duration
        .observe(start.elapsed().as_secs_f64());
    Ok(())
}

/// Runs crypto work on the blocking pool, timed by op; failures become a session's reason.
async fn timed_blocking<T: Send + 'static>(
    metrics: &NodeMetrics,
    op: &'static str,
    job: impl FnOnce() -> Result<T, SessionError> + Send + 'static,
) -> Result<T, String> {
    let start = Instant::now();
    let outcome = crate::runtime::off_executor(job).await;
    metrics
        .crypto_duration
        .get_or_create(&OpLabels { op })
        .observe(start.elapsed().as_secs_f64());
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{op} failed: {e}")),
        Err(_) => Err(format!("{op} panicked")),
    }
}

impl AggregationActor {
    /// Runs `work` among the actor's tasks, in `span`.
    fn spawn_work(
        &mut self,
        work: impl std::future::Future<Output = Option<TaskDone>> + Send + 'static,
        span: tracing::Span,
    ) {
        self.tasks.spawn(work.instrument(span));
    }

    /// Answers a request when `answer` is ready, from a task, so the actor serves others
    /// meanwhile.
    fn answer_later(
        &mut self,
        answer: BoxedAnswer,
        reply: oneshot::Sender<Response>,
        span: tracing::Span,
    ) {
        self.spawn_work(
            async move {
                let _ = reply.send(reply_response(answer.await));
                None
            },
            span,
        );
    }

    async fn run(mut self, cancel: CancellationToken) {
        match self.load() {
            // Only what is known to be over is reclaimed: never after a load that failed.
            Ok(unreadable) => self.reclaim(&unreadable).await,
            Err(e) => error!(error = %e, "could not load sessions from the store"),
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.rx.recv() => match command {
                    Some(c) => self.handle(c).await,
                    None => break,
                },
                _ = tick.tick() => self.tick().await,
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok(Some(finished)) = done {
                        self.task_done(finished).await;
                    }
                }
            }
            self.answer_waiting();
        }
        info!("aggregation actor stopped");
    }

    /// The session records under `prefix` that can be read, and the ids of those that cannot.
    /// One that cannot is logged and left in the store: it must not keep the others from
    /// loading.
    fn readable_sessions<V: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        unreadable: &mut BTreeSet<String>,
    ) -> Result<Vec<V>, SessionError> {
        let mut readable = Vec::new();
        for (key, value) in self
            .store
            .scan_prefix_each::<V>(trees::SESSIONS, prefix.as_bytes())?
        {
            match value {
                Ok(v) => readable.push(v),
                Err(e) => {
                    error!(key = %String::from_utf8_lossy(&key), error = %e,
                        "cannot read a stored session; it is skipped");
                    let id = key.get(prefix.len()..).unwrap_or_default();
                    unreadable.insert(String::from_utf8_lossy(id).into_owned());
                }
            }
        }
        Ok(readable)
    }

    /// Loads every readable session and resumes each where it stopped; returns the ids of the
    /// sessions that cannot be read (their state is left alone).
    fn load(&mut self) -> Result<BTreeSet<String>, SessionError> {
        use crate::session::records;
        let mut unreadable = BTreeSet::new();
        for state in self.readable_sessions::<Coordinated>(records::COORDINATED, &mut unreadable)? {
            debug!(session = %state.plan.id, phase = %state.machine.phase, "loaded session");
            self.coordinated.insert(state.plan.id.clone(), state);
        }
        for joined in self.readable_sessions::<Joined>(records::JOINED, &mut unreadable)? {
            self.joined.insert(joined.plan.id.clone(), joined);
        }
        // What expired while the node was down is dropped before anything resumes: resuming
        // would deliver its seeds again. Its secrets go with the others `reclaim` deletes.
        self.drop_expired(now_ms());
        let ids: Vec<String> = self.joined.keys().cloned().collect();
        for id in ids {
            self.resume_joined(&id);
        }
        let ids: Vec<String> = self.coordinated.keys().cloned().collect();
        for id in ids {
            let Some(state) = self.coordinated.get_mut(&id) else {
                continue;
            };
            let effects = state.machine.resume();
            if effects.is_empty() {
                continue;
            }
            info!(session = %id, "resuming session");
            self.phase_since.insert(id.clone(), Instant::now());
            for effect in effects {
                self.run_coordinator_effect(&id, effect);
            }
        }
        self.update_phase_gauge();
        Ok(unreadable)
    }

    fn update_phase_gauge(&self) {
        for phase in Phase::ALL {
            let n = self
                .coordinated
                .values()
                .filter(|s| s.machine.phase == phase)
                .count();
            self.metrics
                .sessions
                .get_or_create(&PhaseLabels {
                    phase: phase.name(),
                })
                .set(n as i64);
        }
    }

    async fn tick(&mut self) {
        if Instant::now() >= self.next_expiry {
            self.next_expiry = Instant::now() + quota::EXPIRY_EVERY;
            self.expire_joined(now_ms());
        }
        let active: Vec<String> = self
            .coordinated
            .values()
            .filter(|s| !s.machine.phase.is_terminal())
            .map(|s| s.plan.id.clone())
            .collect();
        for id in active {
            self.apply(&id, CoordinatorEvent::Tick).await;
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Create(spec, reply) => {
                let _ = reply.send(self.create(*spec).await);
            }
            Command::List(reply) => {
                let mut ids: Vec<&String> =
                    self.coordinated.keys().chain(self.joined.keys()).collect();
                ids.sort();
                ids.dedup();
                let list = ids
                    .into_iter()
                    .filter_map(|id| self.info(id).ok())
                    .collect();
                let _ = reply.send(list);
            }
            Command::Get(id, reply) => {
                let _ = reply.send(self.info(&id));
            }
            Command::WaitChange(id, seen, reply) => match self.info(&id) {
                Ok(info) if info.phase == seen => {
                    self.waiting.entry(id).or_default().push((seen, reply));
                }
                other => {
                    let _ = reply.send(other);
                }
            },
            Command::Submit(id, update, reply) => self.submit(id, update, reply),
            Command::Result(id, reply) => {
                // A result is megabytes read from its file and checked: off the actor.
                let (store, missing) = (self.store.clone(), self.no_result(&id));
                self.tasks.spawn_blocking(move || {
                    let result = match store.get::<SessionResult>(trees::RESULTS, id.as_bytes()) {
                        Ok(Some(result)) => Ok(result),
                        Ok(None) => Err(missing),
                        Err(e) => Err(e.into()),
                    };
                    let _ = reply.send(result);
                    None
                });
            }
            Command::Inbound { peer, bytes, reply } => self.inbound(peer, bytes, reply).await,
        }
    }

    fn me(&self) -> String {
        self.peer_client.me.to_string()
    }

    /// Makes every write so far durable, timing it for the flush-latency metric.
    async fn flush(&self) -> Result<(), SessionError> {
        timed_flush(&self.store, &self.metrics).await
    }

    async fn task_done(&mut self, done: TaskDone) {
        match done {
            TaskDone::Event(id, event) => {
                if let Some(e) = self.apply(&id, event).await {
                    debug!(session = %id, error = %e, "event not applied");
                }
            }
            TaskDone::Summed { session, aggregate } => {
                if !self.coordinated.contains_key(&session) {
                    return;
                }
                self.aggregates
                    .insert(session.clone(), Arc::from(aggregate));
                self.apply(&session, CoordinatorEvent::Summed).await;
            }
            TaskDone::Released {
                session,
                member,
                generation,
                bytes,
            } => {
                let Some(state) = self.coordinated.get(&session) else {
                    return;
                };
                if state.machine.generation != generation {
                    return;
                }
                let entry = self
                    .releases
                    .entry(session.clone())
                    .or_insert_with(|| (generation, BTreeMap::new()));
                if entry.0 != generation {
                    *entry = (generation, BTreeMap::new());
                }
                entry.1.insert(member, bytes);
                self.apply(&session, CoordinatorEvent::Released { member, generation })
                    .await;
            }
            TaskDone::Combined {
                session,
                result,
                attempt,
            } => {
                if !self.coordinated.contains_key(&session) {
                    return;
                }
                let store = self.store.clone();
                let id = session.clone();
                // Handed back on failure: a decrypted sum is never dropped for want of disk.
                let stored = tokio::task::spawn_blocking(move || {
                    store
                        .put(trees::RESULTS, id.as_bytes(), &result)
                        .map_err(|e| (e, result))
                })
                .await;
                match stored {
                    Ok(Ok(())) => {
                        self.apply(&session, CoordinatorEvent::Combined).await;
                        self.cleanup(&session);
                    }
                    Ok(Err((e, result))) if e.kind() != crate::store::FailureKind::Corrupt => {
                        let delay = Duration::from_millis(500 << attempt.min(5));
                        warn!(%session, error = %e, attempt, retry_in_ms = delay.as_millis() as u64,
                            "cannot store the result; retrying");
                        let span = info_span!("session", %session);
                        self.spawn_work(
                            async move {
                                tokio::time::sleep(delay).await;
                                Some(TaskDone::Combined {
                                    session,
                                    result,
                                    attempt: attempt + 1,
                                })
                            },
                            span,
                        );
                    }
                    Ok(Err((e, _))) => error!(%session, error = %e, "cannot store the result"),
                    Err(e) => error!(%session, error = %e, "the result's write did not finish"),
                }
            }
            TaskDone::PieceStored {
                session,
                from,
                index,
                stored,
                reply,
            } => self.piece_stored(session, from, index, stored, reply),
            TaskDone::UploadChecked {
                session,
                from,
                index,
                meta,
                bytes,
                reply,
            } => {
                let result = self
                    .accept_upload(&session, &from, index, meta, bytes)
                    .await;
                count_submission(&self.metrics, &result);
                let _ = reply.send(reply_response(result));
            }
            TaskDone::SeedsAcked { session, member } => self.seeds_acked(&session, member).await,
            TaskDone::Sealed {
                session,
                sealed,
                reply,
            } => self.sealed(&session, *sealed, reply).await,
            TaskDone::Uploaded {
                session,
                result,
                reply,
            } => self.uploaded(&session, result, reply).await,
        }
    }

    /// Answers the long polls whose session left the phase they saw (phases change in many
    /// places, all inside this loop: checked once per turn, for the sessions waited on only),
    /// and drops those whose caller gave up.
    fn answer_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting);
        for (id, waiters) in waiting {
            let info = self.info(&id);
            let still: Vec<_> = waiters
                .into_iter()
                .filter_map(|(seen, reply)| match &info {
                    _ if reply.is_closed() => None,
                    Ok(info) if info.phase == seen => Some((seen, reply)),
                    Ok(info) => {
                        let _ = reply.send(Ok(info.clone()));
                        None
                    }
                    Err(_) => {
                        let _ = reply.send(Err(SessionError::UnknownSession(id.clone())));
                        None
                    }
                })
                .collect();
            if !still.is_empty() {
                self.waiting.insert(id, still);
            }
        }
    }

    fn info(&self, id: &str) -> Result<SessionInfo, SessionError> {
        if let Some(s) = self.coordinated.get(id) {
            let m = &s.machine;
            let mut info = self.plan_info(&s.plan, m.phase, true);
            info.members_ready = m.plan_acks.len();
            info.submissions = m.submitted.len();
            info.releases = m.released.len();
            info.timings = m.timings.clone();
            info.failure = m.failure.clone();
            // A coordinator that takes part reports its participant side too.
            if let Some(p) = self.joined.get(id).and_then(|j| j.participant.as_ref()) {
                info.seeds_delivered = p.acked.len();
            }
            return Ok(info);
        }
        let j = self
            .joined
            .get(id)
            .ok_or_else(|| SessionError::UnknownSession(id.to_string()))?;
        let mut info = self.plan_info(&j.plan, j.phase(), false);
        if let Some(p) = &j.participant {
            info.seeds_delivered = p.acked.len();
            info.submissions = usize::from(p.submitted.is_some());
        }
        if let Some(m) = &j.member {
            info.seeds_held = m.seeds.len();
        }
        info.failure = j.failure.clone();
        info.timings = Timings {
            created_ms: j.joined_ms,
            opened_ms: Some(j.joined_ms),
            finished_ms: j.finished_ms,
            ..Default::default()
        };
        Ok(info)
    }

    /// What a session's plan says, with this node's roles; counts start at zero.
    fn plan_info(&self, plan: &SessionPlan, phase: Phase, coordinator: bool) -> SessionInfo {
        let me = self.me();
        SessionInfo {
            id: plan.id.clone(),
            phase,
            roles: Roles {
                coordinator,
                committee: plan.member_index(&me).is_some(),
                participant: plan.is_participant(&me),
            },
            coordinator: plan.coordinator.clone(),
            profile: plan.params.profile.to_string(),
            length: plan.length,
            shapes: plan.shapes.clone(),
            integers: plan.integers,
            max_weight: plan.params.max_weight,
            result_kind: plan.result,
            committee: plan.committee.len(),
            threshold: plan.threshold,
            participants: plan.participants.len(),
            min_participants: plan.min_participants,
            members_ready: 0,
            seeds_delivered: 0,
            seeds_held: 0,
            submissions: 0,
            releases: 0,
            deadline_secs: plan.deadline_secs,
            timings: Timings::default(),
            failure: None,
            prepared: self
                .prepared
                .get(&plan.id)
                .is_some_and(|p| p.ready.load(Ordering::Acquire)),
        }
    }

    /// Why a session has no result to give, when none is stored.
    fn no_result(&self, id: &str) -> SessionError {
        let info = match self.info(id) {
            Ok(info) => info,
            Err(e) => return e,
        };
        let phase = info.phase;
        if phase == Phase::Failed {
            let reason = info.failure.unwrap_or_default();
            return SessionError::WrongPhase {
                session: id.to_string(),
                phase,
                what: format!("no result: {reason}"),
            };
        }
        SessionError::NoResult {
            session: id.to_string(),
            phase,
        }
    }

    async fn inbound(&mut self, peer: PeerId, bytes: Vec<u8>, reply: oneshot::Sender<Response>) {
        // Pieces carry megabytes: read in place rather than copied into an owned message.
        match Piece::decode(&bytes) {
            Some(Ok(piece)) => {
                let span =
                    info_span!("inbound", %peer, kind = "submit_piece", session = %piece.session);
                self.inbound_piece(peer.to_string(), piece, reply, span);
                return;
            }
            Some(Err(e)) => {
                let _ = reply.send(error_response(&e));
                return;
            }
            None => {}
        }
        let msg: AggMsg = match messages::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                let _ = reply.send(error_response(&e));
                return;
            }
        };
        let from = peer.to_string();
        let span = info_span!("inbound", %peer, kind = msg.kind(), session = %msg.session());
        let answer: BoxedAnswer = match msg {
            AggMsg::Plan { plan } => {
                let r = self.join(&from, plan).await.map(|()| AggReply::Ack);
                Box::pin(async move { r })
            }
            AggMsg::Seeds {
                session,
                plan_digest,
                bundle,
            } => {
                let r = self
                    .receive_seeds(&from, &session, plan_digest, bundle)
                    .await
                    .map(|()| AggReply::Ack);
                Box::pin(async move { r })
            }
            AggMsg::Holdings {
                session,
                participants,
            } => {
                let r = self
                    .holdings(&from, &session, &participants)
                    .map(AggReply::Held);
                Box::pin(async move { r })
            }
            AggMsg::Pin {
                session,
                contributors,
            } => {
                let r = self
                    .pin(&from, &session, &contributors)
                    .await
                    .map(AggReply::Pinned);
                Box::pin(async move { r })
            }
            AggMsg::Release {
                session,
                request,
                pins,
            } => match self.release(&from, &session, request, &pins).await {
                Ok(answer) => answer,
                Err(e) => Box::pin(async move { Err(e) }),
            },
            // Pieces are decoded borrowed before this match; this arm only keeps it total.
            AggMsg::SubmitPiece {
                session,
                digest,
                index,
                count,
                clipped,
                bytes,
            } => {
                let piece = Piece {
                    session: &session,
                    digest,
                    index,
                    count,
                    clipped,
                    bytes: &bytes,
                };
                self.inbound_piece(from, piece, reply, span);
                return;
            }
            AggMsg::Result { result } => {
                let r = self
                    .receive_result(&from, result)
                    .await
                    .map(|()| AggReply::Ack);
                Box::pin(async move { r })
            }
            AggMsg::Ended { session, reason } => {
                let r = self
                    .receive_end(&from, &session, reason)
                    .await
                    .map(|()| AggReply::Ack);
                Box::pin(async move { r })
            }
        };
        self.answer_later(answer, reply, span);
    }
}
