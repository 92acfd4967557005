//! The aggregation actor: runs the session protocol (DESIGN §4) for every role this node plays,
//! one file per role.
//!
//! - [`coordinator`]: drives a [`Coordinated`] state machine: each event is applied, the new
//!   state is flushed to sled, and only then are its effects performed (requests to members and
//!   participants, summing, combining) in tasks whose outcomes come back as events.
//! - [`participant`]: keeps the opened session, rebuilds the collective key itself, encrypts
//!   local updates off the executor and uploads them in acknowledged pieces.
//! - As committee member it relays key-share requests to the key actor (`inbound`).
//!
//! This module holds the actor's handle, its loop, what every role shares (loading, session
//! info, inbound routing) and [`link`], the way tasks reach peers.

mod coordinator;
mod link;
mod participant;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::keys::KeysHandle;
use super::{stopped, Mailbox};
use crate::crypto::{
    Accumulator, Aggregate, CheckedUpdate, CollectivePublicKey, CryptoError, DecryptionRequest,
    KeyCommitment, PartialDecryption, PreparedEncryption, Profile, PublicKeyShare,
};
use crate::metrics::{NodeMetrics, OpLabels, OutcomeLabels, PhaseLabels};
use crate::net::{NetError, NetworkHandle, Request, Response};
use crate::session::machine::{collective_key, SubmissionMeta};
use crate::session::messages::{self, AggMsg, AggReply, Piece, PIECE_BYTES};
use crate::session::{
    now_ms, Coordinated, Effect, Event, Phase, ResultKind, Roles, SessionError, SessionInfo,
    SessionPlan, SessionResult, SessionSpec, SubmitReceipt, Timings,
};
use crate::store::pieces::Upload;
use crate::store::{trees, Store};

use coordinator::{count_submission, RunningSum};
use link::Link;
use participant::{Joined, Preparation};

const COORD_PREFIX: &str = "coord/";

const JOINED_PREFIX: &str = "joined/";

/// The public key shares of a session, kept apart from the state records above: they are
/// large and written once, the states small and written at every step.
const COORD_SHARES_PREFIX: &str = "coord-shares/";

const JOINED_SHARES_PREFIX: &str = "joined-shares/";

/// Participants a result is pushed to concurrently.
const RESULT_SENDS_AT_ONCE: usize = 8;

type Reply<T> = oneshot::Sender<Result<T, SessionError>>;

enum Command {
    Create(Box<SessionSpec>, Reply<SessionInfo>),
    List(oneshot::Sender<Vec<SessionInfo>>),
    Get(String, Reply<SessionInfo>),
    Submit(String, Vec<f32>, Reply<SubmitReceipt>),
    Result(String, Reply<SessionResult>),
    Inbound {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Response>,
    },
}

/// What the actor's own background work hands back to its loop (through [`Tasks`]).
enum Internal {
    Event(String, Event),
    Accumulated {
        session: String,
        aggregate: Box<Aggregate>,
        request: Box<DecryptionRequest>,
    },
    Partial {
        session: String,
        member: u32,
        partial: Box<PartialDecryption>,
    },
    Combined {
        session: String,
        result: Box<SessionResult>,
    },
    /// This node's upload ended; the submitter is answered once the actor has recorded it.
    Uploaded {
        session: String,
        result: Result<SubmitReceipt, SessionError>,
        reply: Reply<SubmitReceipt>,
    },
    /// A participant's last piece is in and its whole upload checked (coordinator).
    UploadChecked {
        session: String,
        from: String,
        index: u32,
        meta: SubmissionMeta,
        update: CheckedUpdate,
        reply: oneshot::Sender<Response>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Create(..) => "Create",
            Command::List(_) => "List",
            Command::Get(..) => "Get",
            Command::Submit(..) => "Submit",
            Command::Result(..) => "Result",
            Command::Inbound { .. } => "Inbound",
        })
    }
}

#[derive(Clone, Debug)]
pub struct AggregationHandle {
    mailbox: Mailbox<Command>,
}

impl AggregationHandle {
    pub fn mailbox_depth(&self) -> usize {
        self.mailbox.depth()
    }
    pub fn is_running(&self) -> bool {
        !self.mailbox.is_closed()
    }

    /// Creates a session with this node as coordinator and starts key generation.
    pub async fn create(&self, spec: SessionSpec) -> Result<SessionInfo, SessionError> {
        self.mailbox
            .ask(|r| Command::Create(Box::new(spec), r))
            .await
            .map_err(stopped)?
    }

    pub async fn list(&self) -> Result<Vec<SessionInfo>, SessionError> {
        self.mailbox.ask(Command::List).await.map_err(stopped)
    }

    pub async fn get(&self, id: &str) -> Result<SessionInfo, SessionError> {
        let id = id.to_string();
        self.mailbox
            .ask(|r| Command::Get(id, r))
            .await
            .map_err(stopped)?
    }

    /// This node as a participant: encrypts `values` locally and uploads them to the
    /// coordinator; returns once the coordinator holds the whole update durably.
    pub async fn submit(&self, id: &str, values: Vec<f32>) -> Result<SubmitReceipt, SessionError> {
        let id = id.to_string();
        self.mailbox
            .ask(|r| Command::Submit(id, values, r))
            .await
            .map_err(stopped)?
    }

    pub async fn result(&self, id: &str) -> Result<SessionResult, SessionError> {
        let id = id.to_string();
        self.mailbox
            .ask(|r| Command::Result(id, r))
            .await
            .map_err(stopped)?
    }

    /// A session message from `peer`, answered with the response to send back.
    pub async fn inbound(&self, peer: PeerId, bytes: Vec<u8>) -> Response {
        match self
            .mailbox
            .ask(|reply| Command::Inbound { peer, bytes, reply })
            .await
        {
            Ok(response) => response,
            Err(e) => error_response(&stopped(e)),
        }
    }
}

type BoxedAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<AggReply, SessionError>> + Send>>;

/// A piece of background work: what it returns is handled in the actor's loop.
type Work = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Internal>> + Send>>;

/// The actor's background work: polled in its own loop, and aborted with it.
type Tasks = tokio::task::JoinSet<Option<Internal>>;

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
    Response::Error {
        code: e.code().to_string(),
        message: e.to_string(),
    }
}

struct AggregationActor {
    link: Link,
    store: Store,
    keys: KeysHandle,
    metrics: NodeMetrics,
    default_profile: Profile,
    rx: mpsc::Receiver<Command>,
    coordinated: BTreeMap<String, Coordinated>,
    joined: BTreeMap<String, Joined>,
    /// Collective keys of the sessions this node coordinates, by session. Kept apart from
    /// the joined sessions' keys: an Open from another peer must never replace the key this
    /// node checks its own session's uploads against.
    coordinated_keys: HashMap<String, Arc<CollectivePublicKey>>,
    /// Collective keys of the sessions this node joined, by session.
    joined_keys: HashMap<String, Arc<CollectivePublicKey>>,
    /// The sum being decrypted and its request, by session (coordinator).
    aggregates: HashMap<String, (Arc<Aggregate>, DecryptionRequest)>,
    uploading: HashSet<String>,
    /// Running sums of the updates accepted so far, by session (coordinator).
    running: HashMap<String, RunningSum>,
    /// Partial decryptions received, by session and member (coordinator). Not persisted: after
    /// a restart members are asked again and answer identically.
    partials: HashMap<String, BTreeMap<u32, PartialDecryption>>,
    phase_since: HashMap<String, Instant>,
    /// Encryptions of zero drawn ahead for the sessions this node submits to, by session.
    prepared: HashMap<String, Preparation>,
    /// Bytes prepared encryptions hold, within `prepare_budget`: counted from the start of
    /// their drawing until they are sealed or dropped, wherever they are by then.
    prepared_bytes: Arc<AtomicU64>,
    prepare_budget: u64,
    tasks: Tasks,
}

pub struct AggregationDeps {
    pub me: PeerId,
    pub store: Store,
    pub network: NetworkHandle,
    pub keys: KeysHandle,
    pub metrics: NodeMetrics,
    pub default_profile: Profile,
    /// `aggregation.prepare_budget_bytes`: memory for encryptions prepared ahead (0: none).
    pub prepare_budget_bytes: u64,
}

pub fn spawn(
    deps: AggregationDeps,
    cancel: CancellationToken,
) -> (AggregationHandle, impl std::future::Future<Output = ()>) {
    let (mailbox, rx) = Mailbox::new("aggregation", 256);
    let actor = AggregationActor {
        link: Link {
            me: deps.me,
            network: deps.network,
            mailbox: mailbox.clone(),
        },
        store: deps.store,
        keys: deps.keys,
        metrics: deps.metrics,
        default_profile: deps.default_profile,
        rx,
        coordinated: BTreeMap::new(),
        joined: BTreeMap::new(),
        coordinated_keys: HashMap::new(),
        joined_keys: HashMap::new(),
        aggregates: HashMap::new(),
        uploading: HashSet::new(),
        running: HashMap::new(),
        partials: HashMap::new(),
        phase_since: HashMap::new(),
        prepared: HashMap::new(),
        prepared_bytes: Arc::default(),
        prepare_budget: deps.prepare_budget_bytes,
        tasks: Tasks::new(),
    };
    (AggregationHandle { mailbox }, actor.run(cancel))
}

/// Stores a session's result off the executor: megabytes, written to a file of its own and
/// synced on the spot (`Store::put_bytes`).
async fn put_result(store: &Store, result: SessionResult) -> Result<(), SessionError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.put(trees::RESULTS, result.session.as_bytes(), &result)
    })
    .await
    .map_err(|_| SessionError::Unavailable("the store"))??;
    Ok(())
}

/// A session's key from `cache`, else built by `build` and cached.
fn cached_key(
    cache: &mut HashMap<String, Arc<CollectivePublicKey>>,
    id: &str,
    build: impl FnOnce() -> Result<CollectivePublicKey, SessionError>,
) -> Result<Arc<CollectivePublicKey>, SessionError> {
    if let Some(key) = cache.get(id) {
        return Ok(key.clone());
    }
    let key = Arc::new(build()?);
    cache.insert(id.to_string(), key.clone());
    Ok(key)
}

/// Stores a session's public key shares under `{prefix}{session}`.
fn put_shares(
    store: &Store,
    prefix: &str,
    session: &str,
    shares: &[&PublicKeyShare],
) -> Result<(), SessionError> {
    let key = format!("{prefix}{session}");
    Ok(store.put(trees::SESSIONS, key.as_bytes(), &shares)?)
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
    let outcome = tokio::task::spawn_blocking(job).await;
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
        work: impl std::future::Future<Output = Option<Internal>> + Send + 'static,
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
            Ok((broken, broken_joined)) => {
                // Failed for good: the unreadable shares record goes, so the next start does
                // not meet it again.
                for (id, reason) in broken {
                    self.apply(&id, Event::Fail { reason }).await;
                    let shares = format!("{COORD_SHARES_PREFIX}{id}");
                    if let Err(e) = self.store.remove(trees::SESSIONS, shares.as_bytes()) {
                        warn!(session = %id, error = %e, "cannot drop the unreadable key shares");
                    }
                }
                for id in broken_joined {
                    if let Some(joined) = self.joined.get(&id).cloned() {
                        if let Err(e) = self.persist_joined(&joined).await {
                            warn!(session = %id, error = %e, "cannot record the failure");
                        }
                    }
                    self.leave(&id);
                }
            }
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
                    if let Ok(Some(internal)) = done {
                        self.internal(internal).await;
                    }
                }
            }
        }
        info!("aggregation actor stopped");
    }

    /// The session records under `prefix` that can be read. One that cannot is logged and left
    /// in the store: it must not keep the others from loading.
    fn readable_sessions<V: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<V>, SessionError> {
        Ok(self
            .store
            .scan_prefix_each::<V>(trees::SESSIONS, prefix.as_bytes())?
            .into_iter()
            .filter_map(|(key, value)| {
                value
                    .map_err(|e| {
                        error!(key = %String::from_utf8_lossy(&key), error = %e,
                            "cannot read a stored session; it is skipped");
                    })
                    .ok()
            })
            .collect())
    }

    /// Loads every readable session and resumes the coordinated ones where they stopped. A
    /// session whose key shares cannot be read fails with the reason: returned (coordinated
    /// ones with the reason, joined ones by id) for `run` to fail them for good once loading
    /// is done.
    #[allow(clippy::type_complexity)]
    fn load(&mut self) -> Result<(Vec<(String, String)>, Vec<String>), SessionError> {
        let mut broken = Vec::new();
        let mut broken_joined = Vec::new();
        for mut state in self.readable_sessions::<Coordinated>(COORD_PREFIX)? {
            debug!(session = %state.plan.id, phase = %state.phase, "loaded session");
            // An ended session's shares were dropped; only a live one needs them.
            if !state.phase.is_terminal() {
                match self.load_shares(COORD_SHARES_PREFIX, &state.plan.id) {
                    Ok(shares) => {
                        state.shares = shares
                            .into_iter()
                            .map(|share| (share.member, Arc::new(share)))
                            .collect()
                    }
                    Err(e) => broken.push((
                        state.plan.id.clone(),
                        format!("its key shares cannot be read: {e}"),
                    )),
                }
            }
            self.coordinated.insert(state.plan.id.clone(), state);
        }
        for mut joined in self.readable_sessions::<Joined>(JOINED_PREFIX)? {
            if !joined.phase.is_terminal() {
                match self.load_shares(JOINED_SHARES_PREFIX, &joined.plan.id) {
                    Ok(shares) => joined.shares = Arc::new(shares),
                    Err(e) => {
                        let reason = format!("its key shares cannot be read: {e}");
                        warn!(session = %joined.plan.id, %reason, "joined session failed");
                        joined.phase = Phase::Failed;
                        joined.failure = Some(reason);
                        joined.finished_ms = Some(now_ms());
                        broken_joined.push(joined.plan.id.clone());
                    }
                }
            }
            self.joined.insert(joined.plan.id.clone(), joined);
        }
        // Sessions still waiting for this node's update get their preparation drawn again
        // (it lives in memory only).
        let me = self.me();
        let waiting: Vec<SessionPlan> = self
            .joined
            .values()
            .filter(|j| {
                j.phase == Phase::Open
                    && j.submitted.is_none()
                    && j.plan.is_participant(&me)
                    && !broken.iter().any(|(id, _)| *id == j.plan.id)
                    && !self
                        .coordinated
                        .get(&j.plan.id)
                        .is_some_and(|c| c.phase.is_terminal())
            })
            .map(|j| j.plan.clone())
            .collect();
        for plan in waiting {
            match self.joined_key(&plan.id) {
                Ok(key) => self.start_preparing(&plan, key),
                Err(e) => warn!(session = %plan.id, error = %e, "cannot rebuild the key"),
            }
        }
        let resume: Vec<(String, Vec<Effect>)> = self
            .coordinated
            .values()
            .filter(|s| !broken.iter().any(|(id, _)| *id == s.plan.id))
            .map(|s| (s.plan.id.clone(), s.resume()))
            .filter(|(_, e)| !e.is_empty())
            .collect();
        for (id, effects) in resume {
            info!(session = %id, "resuming session");
            self.phase_since.insert(id.clone(), Instant::now());
            for effect in effects {
                self.perform(&id, effect);
            }
        }
        self.update_phase_gauge();
        Ok((broken, broken_joined))
    }

    fn update_phase_gauge(&self) {
        for phase in Phase::ALL {
            let n = self
                .coordinated
                .values()
                .filter(|s| s.phase == phase)
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
        let active: Vec<String> = self
            .coordinated
            .values()
            .filter(|s| !s.phase.is_terminal())
            .map(|s| s.plan.id.clone())
            .collect();
        for id in active {
            self.apply(&id, Event::Tick).await;
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
            Command::Submit(id, values, reply) => self.submit(id, values, reply),
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
        self.link.me.to_string()
    }

    /// Makes every write so far durable, timing it for the flush-latency metric.
    async fn flush(&self) -> Result<(), SessionError> {
        timed_flush(&self.store, &self.metrics).await
    }

    async fn internal(&mut self, internal: Internal) {
        match internal {
            Internal::Event(id, event) => {
                if let Some(e) = self.apply(&id, event).await {
                    debug!(session = %id, error = %e, "event not applied");
                }
            }
            Internal::Accumulated {
                session,
                aggregate,
                request,
            } => {
                // What the committee is asked to decrypt is known by its digest (in the
                // session state) and the contributors; the sum itself is rebuilt on restart.
                let digest = request.digest();
                self.aggregates
                    .insert(session.clone(), (Arc::from(aggregate), *request));
                self.apply(
                    &session,
                    Event::Aggregated {
                        request_digest: digest,
                    },
                )
                .await;
            }
            Internal::Partial {
                session,
                member,
                partial,
            } => {
                if !self.coordinated.contains_key(&session) {
                    return;
                }
                self.partials
                    .entry(session.clone())
                    .or_default()
                    .insert(member, *partial);
                self.apply(&session, Event::Partial { member }).await;
            }
            Internal::Combined { session, result } => {
                if !self.coordinated.contains_key(&session) {
                    return;
                }
                if let Err(e) = put_result(&self.store, *result).await {
                    warn!(%session, error = %e, "cannot store the result");
                    return;
                }
                self.apply(&session, Event::Combined).await;
                self.cleanup(&session);
            }
            Internal::Uploaded {
                session,
                result,
                reply,
            } => {
                self.uploading.remove(&session);
                if let Ok(receipt) = &result {
                    if let Some(mut joined) = self.joined.get(&session).cloned() {
                        joined.submitted = Some(receipt.digest.clone());
                        if self.persist_joined(&joined).await.is_ok() {
                            self.joined.insert(session, joined);
                        }
                    }
                }
                let _ = reply.send(result);
            }
            Internal::UploadChecked {
                session,
                from,
                index,
                meta,
                update,
                reply,
            } => {
                let result = self
                    .accept_upload(&session, &from, index, meta, update)
                    .await;
                count_submission(&self.metrics, &result);
                let _ = reply.send(reply_response(result));
            }
        }
    }

    fn info(&self, id: &str) -> Result<SessionInfo, SessionError> {
        if let Some(s) = self.coordinated.get(id) {
            let mut info = self.plan_info(&s.plan, s.phase, true);
            info.key_shares = s.shares_received;
            info.submissions = s.submitted.len();
            info.partial_decryptions = s.partials.len();
            info.timings = s.timings.clone();
            info.failure = s.failure.clone();
            return Ok(info);
        }
        let j = self
            .joined
            .get(id)
            .ok_or_else(|| SessionError::UnknownSession(id.to_string()))?;
        let mut info = self.plan_info(&j.plan, j.phase, false);
        // A session is joined only with every member's share.
        info.key_shares = j.commitments.len();
        info.submissions = usize::from(j.submitted.is_some());
        info.failure = j.failure.clone();
        info.timings = Timings {
            created_ms: j.opened_ms,
            opened_ms: Some(j.opened_ms),
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
            result_kind: plan.result,
            committee: plan.committee.len(),
            participants: plan.participants.len(),
            min_participants: plan.min_participants,
            key_shares: 0,
            submissions: 0,
            partial_decryptions: 0,
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
        let me = self.me();
        let span = info_span!("inbound", %peer, kind = msg.kind(), session = %msg.session());
        let task_span = span.clone();
        let keys = self.keys.clone();
        // Key-actor work runs in a task so this actor keeps serving while a share is drawn.
        match msg {
            AggMsg::KeygenCommit { plan } => self.answer_later(
                Box::pin(
                    async move { keys.commit(me, from, plan).await.map(AggReply::Commitment) },
                ),
                reply,
                span.clone(),
            ),
            AggMsg::KeygenReveal {
                session,
                commitments,
            } => self.answer_later(
                Box::pin(async move {
                    keys.reveal(from, session, commitments)
                        .await
                        .map(AggReply::Share)
                }),
                reply,
                span.clone(),
            ),
            AggMsg::Decrypt { session, request } => self.answer_later(
                Box::pin(async move {
                    keys.decrypt(from, session, request)
                        .await
                        .map(AggReply::Partial)
                }),
                reply,
                span.clone(),
            ),
            AggMsg::Open {
                plan,
                commitments,
                shares,
            } => {
                let result = self.open(&from, plan, commitments, shares).await;
                match result {
                    Ok(Some(bind)) => self.answer_later(
                        Box::pin(async move {
                            let (plan, commitments, shares) = bind;
                            keys.bind(from, plan, commitments, shares)
                                .await
                                .map(|()| AggReply::Ack)
                        }),
                        reply,
                        span.clone(),
                    ),
                    Ok(None) => self.answer_later(
                        Box::pin(async { Ok(AggReply::Ack) }),
                        reply,
                        span.clone(),
                    ),
                    Err(e) => {
                        self.answer_later(Box::pin(async move { Err(e) }), reply, span.clone())
                    }
                }
            }
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
                self.inbound_piece(from, piece, reply, task_span);
            }
            AggMsg::Failed { session, reason } => {
                let r = self
                    .receive_failure(&from, &session, reason)
                    .await
                    .map(|()| AggReply::Ack);
                self.answer_later(Box::pin(async move { r }), reply, span.clone());
            }
            AggMsg::Result { result } => {
                let r = self
                    .receive_result(&from, result)
                    .await
                    .map(|()| AggReply::Ack);
                self.answer_later(Box::pin(async move { r }), reply, span.clone());
            }
        }
    }
}
