//! The aggregation actor: runs the session protocol (DESIGN §4) for every role this node plays.
//!
//! - As coordinator it drives a [`Coordinated`] state machine: each event is applied, the new
//!   state is flushed to sled, and only then are its effects performed (requests to members and
//!   participants, summing, combining) in tasks that report back as events.
//! - As participant it keeps the opened session, rebuilds the collective key itself, encrypts
//!   local updates off the executor and uploads them in acknowledged pieces.
//! - As committee member it relays key-share requests to the key actor.

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

const COORD_PREFIX: &str = "coord/";
const JOINED_PREFIX: &str = "joined/";
/// The public key shares of a session, kept apart from the state records above: they are
/// large and written once, the states small and written at every step.
const COORD_SHARES_PREFIX: &str = "coord-shares/";
const JOINED_SHARES_PREFIX: &str = "joined-shares/";
/// Participants a result is pushed to concurrently.
const RESULT_SENDS_AT_ONCE: usize = 8;
const SEND_ATTEMPTS: u32 = 8;

/// A session as a participant or member sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Joined {
    plan: SessionPlan,
    commitments: Vec<KeyCommitment>,
    /// Persisted apart (`JOINED_SHARES_PREFIX`), once, when the session opens; dropped, in
    /// memory and in the store, once it is over. Shared: a joined state is copied per step.
    #[serde(skip)]
    shares: Arc<Vec<PublicKeyShare>>,
    phase: Phase,
    opened_ms: u64,
    submitted: Option<String>,
    finished_ms: Option<u64>,
    failure: Option<String>,
}

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
    /// Outcomes of the actor's own background work.
    Internal(Internal),
}

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
    Submitted {
        session: String,
        digest: String,
    },
    UploadFailed {
        session: String,
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
            Command::Internal(_) => "Internal",
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

/// Answers a request when `answer` is ready, from a task, so the actor serves others meanwhile.
fn answer_in_task(answer: BoxedAnswer, reply: oneshot::Sender<Response>, span: tracing::Span) {
    tokio::spawn(
        async move {
            let _ = reply.send(reply_response(answer.await));
        }
        .instrument(span),
    );
}

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

/// Everything a background task needs to talk to peers and report back.
#[derive(Clone)]
struct Link {
    me: PeerId,
    network: NetworkHandle,
    mailbox: Mailbox<Command>,
}

impl Link {
    /// Sends a session message and waits for the answer; messages to this node itself go
    /// through the actor's own mailbox.
    async fn send(&self, peer: &str, msg: &AggMsg) -> Result<AggReply, SessionError> {
        self.send_encoded(peer, messages::encode(msg)?).await
    }

    /// [`Link::send`] for a message already encoded.
    async fn send_encoded(&self, peer: &str, bytes: Vec<u8>) -> Result<AggReply, SessionError> {
        let peer_id: PeerId = peer
            .parse()
            .map_err(|_| SessionError::BadInput(format!("`{peer}` is not a peer id")))?;
        let response = if peer_id == self.me {
            let me = self.me;
            self.mailbox
                .ask(|reply| Command::Inbound {
                    peer: me,
                    bytes,
                    reply,
                })
                .await
                .map_err(stopped)?
        } else {
            self.network
                .request(peer_id, Request::Aggregation(bytes))
                .await
                .map_err(|e| match e {
                    NetError::Outbound { .. } | NetError::Stopped => SessionError::Unreachable {
                        peer: peer.to_string(),
                        message: e.to_string(),
                    },
                    other => SessionError::Remote {
                        peer: peer.to_string(),
                        message: other.to_string(),
                    },
                })?
        };
        match response {
            Response::Aggregation(bytes) => messages::decode(&bytes),
            // A peer that is starting or stopping answers `unavailable`: worth another try.
            Response::Error { code, message } if code == "unavailable" => {
                Err(SessionError::Unreachable {
                    peer: peer.to_string(),
                    message,
                })
            }
            Response::Error { code, message } => Err(SessionError::Remote {
                peer: peer.to_string(),
                message: format!("{code}: {message}"),
            }),
            other => Err(SessionError::Remote {
                peer: peer.to_string(),
                message: format!("unexpected answer {other:?}"),
            }),
        }
    }

    /// [`Link::send`], retried with backoff while the failure is a transport one.
    async fn send_retrying(&self, peer: &str, msg: &AggMsg) -> Result<AggReply, SessionError> {
        self.send_retrying_with(peer, || messages::encode(msg))
            .await
    }

    /// Sends what `encode` makes, encoding it again for each retry (the network consumes
    /// the bytes, and copying them ahead of a retry that rarely comes would cost as much).
    async fn send_retrying_with(
        &self,
        peer: &str,
        encode: impl Fn() -> Result<Vec<u8>, SessionError>,
    ) -> Result<AggReply, SessionError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send_encoded(peer, encode()?).await {
                Err(SessionError::Unreachable { message, .. }) if attempt < SEND_ATTEMPTS => {
                    debug!(%peer, %message, attempt, "retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    async fn report(&self, internal: Internal) {
        let _ = self.mailbox.send(Command::Internal(internal)).await;
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
    cancel: CancellationToken,
}

/// A participant's encryption of zero for one session, drawn on a blocking thread as soon as
/// the session opens, while the update is still being trained; the submission takes it and
/// only adds the values. A preparation dropped while still running finishes its work and
/// drops the result (a blocking thread cannot be stopped midway); the result is wiped, and
/// its budget is released only then.
struct Preparation {
    task: tokio::task::JoinHandle<Result<Budgeted, CryptoError>>,
    /// Set once the drawing succeeded: what `prepared` reports (a failed drawing leaves the
    /// submission to encrypt in full).
    ready: Arc<AtomicBool>,
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

/// A coordinator's running sum: each accepted update is added on a blocking thread as soon as
/// its upload is checked, so closing only has to finish the sum instead of reading every
/// update back from the store. Dropping it ends the thread.
struct RunningSum {
    jobs: std::sync::mpsc::Sender<SumJob>,
    /// Who was handed to the thread, in order.
    added: Vec<String>,
}

type SumOutcome = Result<(Aggregate, DecryptionRequest), SessionError>;

enum SumJob {
    Add(String, CheckedUpdate),
    Finish(oneshot::Sender<SumOutcome>),
}

impl RunningSum {
    fn start(key: Arc<CollectivePublicKey>, length: u64) -> Self {
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

    fn add(&mut self, who: &str, update: CheckedUpdate) {
        if self.jobs.send(SumJob::Add(who.to_string(), update)).is_ok() {
            self.added.push(who.to_string());
        }
    }

    /// The finished sum, if it holds exactly `contributors`.
    async fn finish(self, contributors: &[(String, [u8; 32])]) -> Option<SumOutcome> {
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
        cancel: cancel.clone(),
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

/// Whose upload pieces these are: one participant in one session (session ids and peer ids
/// hold no `/`, so a session's owners share the prefix `{session}/`).
fn piece_owner(session: &str, peer: &str) -> String {
    format!("{session}/{peer}")
}

/// The largest wire size an update of this plan can have: anything bigger is refused before
/// it is stored.
fn max_update_bytes(plan: &SessionPlan) -> u64 {
    let p = plan.params.profile.params();
    let chunks = p.chunks(plan.length);
    // ≤ 16 bytes per mask and body coefficient, plus framing.
    (chunks * p.ring_dim as u64 + plan.length) * 16 + 4096 + chunks * 64
}

impl AggregationActor {
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
                tokio::task::spawn_blocking(move || {
                    let result = match store.get::<SessionResult>(trees::RESULTS, id.as_bytes()) {
                        Ok(Some(result)) => Ok(result),
                        Ok(None) => Err(missing),
                        Err(e) => Err(e.into()),
                    };
                    let _ = reply.send(result);
                });
            }
            Command::Inbound { peer, bytes, reply } => self.inbound(peer, bytes, reply).await,
            Command::Internal(internal) => self.internal(internal).await,
        }
    }

    fn me(&self) -> String {
        self.link.me.to_string()
    }

    async fn create(&mut self, spec: SessionSpec) -> Result<SessionInfo, SessionError> {
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
        tokio::spawn(async move {
            if let Err(e) = network.publish(announcement.to_string().into_bytes()).await {
                debug!(error = %e, "session announcement not published");
            }
        });
        self.info(&id)
    }

    /// Makes every write so far durable, timing it for the flush-latency metric.
    async fn flush(&self) -> Result<(), SessionError> {
        timed_flush(&self.store, &self.metrics).await
    }

    /// Persists a coordinated session; its shares too when `shares_changed`.
    async fn persist_coordinated(
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

    async fn persist_joined(&self, joined: &Joined) -> Result<(), SessionError> {
        let key = format!("{JOINED_PREFIX}{}", joined.plan.id);
        self.store.put(trees::SESSIONS, key.as_bytes(), joined)?;
        self.flush().await
    }

    fn load_shares(
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
    async fn apply(&mut self, id: &str, event: Event) -> Option<SessionError> {
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

    /// A coordinator that also takes part gets no result or failure notice from itself: its
    /// own joined record is closed here, when the session it coordinates ends.
    async fn close_own_joined(&mut self, id: &str, phase: Phase, failure: Option<String>) {
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

    /// The collective key of a session this node coordinates: cached, or rebuilt from its shares.
    fn coordinated_key(&mut self, id: &str) -> Result<Arc<CollectivePublicKey>, SessionError> {
        let coordinated = &self.coordinated;
        cached_key(&mut self.coordinated_keys, id, || {
            coordinated
                .get(id)
                .ok_or_else(|| SessionError::UnknownSession(id.to_string()))?
                .collective_key()
        })
    }

    /// The collective key of a session this node joined: cached, or rebuilt from its shares.
    fn joined_key(&mut self, id: &str) -> Result<Arc<CollectivePublicKey>, SessionError> {
        let joined = &self.joined;
        cached_key(&mut self.joined_keys, id, || {
            let joined = joined
                .get(id)
                .ok_or_else(|| SessionError::UnknownSession(id.to_string()))?;
            collective_key(&joined.plan, &joined.commitments, joined.shares.iter())
        })
    }

    /// Starts an effect's work in a task; its outcome comes back as an [`Internal`] message.
    fn perform(&mut self, id: &str, effect: Effect) {
        let Some(state) = self.coordinated.get(id) else {
            return;
        };
        let plan = state.plan.clone();
        let link = self.link.clone();
        let session = id.to_string();
        let span = info_span!("session", session = %id);
        let cancel = self.cancel.clone();
        let metrics = self.metrics.clone();
        let spawn = |fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
            let (cancel, span) = (cancel.clone(), span.clone());
            tokio::spawn(
                async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = fut => {}
                    }
                }
                .instrument(span),
            );
        };
        match effect {
            Effect::RequestCommitments { members } => {
                let msg = AggMsg::KeygenCommit { plan: plan.clone() };
                ask_members(
                    &spawn,
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
                    &spawn,
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
                spawn(Box::pin(async move {
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
                    link.report(Internal::Event(session, event)).await;
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
                        let link = link.clone();
                        spawn(Box::pin(async move {
                            link.report(Internal::Event(
                                session,
                                Event::Fail {
                                    reason: e.to_string(),
                                },
                            ))
                            .await;
                        }));
                        return;
                    }
                };
                let store = self.store.clone();
                let running = self.running.remove(id);
                spawn(Box::pin(async move {
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
                    link.report(internal).await;
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
                    &spawn,
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
                spawn(Box::pin(async move {
                    let Ok(partials) = partials else {
                        let reason = "a partial decryption is missing".to_string();
                        link.report(Internal::Event(session, Event::Fail { reason }))
                            .await;
                        return;
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
                    link.report(internal).await;
                }));
            }
            Effect::PublishFailure => {
                let msg = AggMsg::Failed {
                    session: session.clone(),
                    reason: state.failure.clone().unwrap_or_default(),
                };
                spawn(Box::pin(async move {
                    let me = link.me.to_string();
                    for peer in plan.peers().into_iter().filter(|p| **p != me) {
                        // Peers that never saw the session open answer `unknown_session`.
                        if let Err(e) = link.send(peer, &msg).await {
                            debug!(%peer, error = %e, "failure notice not delivered");
                        }
                    }
                }));
            }
            Effect::PublishResult => {
                let (store, id) = (self.store.clone(), id.to_string());
                spawn(Box::pin(async move {
                    let read = tokio::task::spawn_blocking(move || {
                        store.get::<SessionResult>(trees::RESULTS, id.as_bytes())
                    });
                    let result = match read.await {
                        Ok(Ok(Some(result))) => result,
                        Ok(Err(e)) => {
                            warn!(error = %e, "could not read the result to publish");
                            return;
                        }
                        _ => return,
                    };
                    // Encoded once, then sent to a few participants at a time: one by one, a
                    // million-value result took longer to deliver than the round to compute.
                    let msg = match messages::encode(&AggMsg::Result { result }) {
                        Ok(msg) => msg,
                        Err(e) => {
                            warn!(error = %e, "could not encode the result");
                            return;
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
                }));
            }
        }
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
            Internal::Submitted { session, digest } => {
                self.uploading.remove(&session);
                if let Some(mut joined) = self.joined.get(&session).cloned() {
                    joined.submitted = Some(digest);
                    if self.persist_joined(&joined).await.is_ok() {
                        self.joined.insert(session, joined);
                    }
                }
            }
            Internal::UploadFailed { session } => {
                self.uploading.remove(&session);
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

    /// A joined session is over (its result or failure is in, or, on its coordinator, it
    /// ended): drops what only served it. The cached collective key (about 2 MB in transform
    /// form), an encryption prepared and never used, and the stored key shares.
    fn leave(&mut self, session: &str) {
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
    fn start_preparing(&mut self, plan: &SessionPlan, key: Arc<CollectivePublicKey>) {
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

    /// Drops a finished session's ciphertexts; the result and the state stay.
    fn cleanup(&mut self, session: &str) {
        // Removing tens of blobs is file-system work: off the actor.
        let (store, owners) = (self.store.clone(), format!("{session}/"));
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.drop_uploads(trees::SUBMISSIONS, &owners) {
                warn!(error = %e, "could not drop a finished session's submissions");
            }
        });
        self.coordinated_keys.remove(session);
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

    /// Participant side of a submission: checks, then encrypts and uploads in a task.
    fn submit(&mut self, id: String, values: Vec<f32>, reply: Reply<SubmitReceipt>) {
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
        let cancel = self.cancel.clone();
        tokio::spawn(
            async move {
                // Dies with the actor: an upload retries for seconds, and must not encrypt
                // and send on after the node has stopped.
                let result = tokio::select! {
                    _ = cancel.cancelled() => return,
                    result = upload(&link, &metrics, &plan, key, preparation, values) => result,
                };
                let internal = match &result {
                    Ok(receipt) => Internal::Submitted {
                        session: id.clone(),
                        digest: receipt.digest.clone(),
                    },
                    Err(_) => Internal::UploadFailed {
                        session: id.clone(),
                    },
                };
                link.report(internal).await;
                let _ = reply.send(result);
            }
            .instrument(span),
        );
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
        let answer_later = |fut: BoxedAnswer, reply| answer_in_task(fut, reply, span);
        match msg {
            AggMsg::KeygenCommit { plan } => answer_later(
                Box::pin(
                    async move { keys.commit(me, from, plan).await.map(AggReply::Commitment) },
                ),
                reply,
            ),
            AggMsg::KeygenReveal {
                session,
                commitments,
            } => answer_later(
                Box::pin(async move {
                    keys.reveal(from, session, commitments)
                        .await
                        .map(AggReply::Share)
                }),
                reply,
            ),
            AggMsg::Decrypt { session, request } => answer_later(
                Box::pin(async move {
                    keys.decrypt(from, session, request)
                        .await
                        .map(AggReply::Partial)
                }),
                reply,
            ),
            AggMsg::Open {
                plan,
                commitments,
                shares,
            } => {
                let result = self.open(&from, plan, commitments, shares).await;
                match result {
                    Ok(Some(bind)) => answer_later(
                        Box::pin(async move {
                            let (plan, commitments, shares) = bind;
                            keys.bind(from, plan, commitments, shares)
                                .await
                                .map(|()| AggReply::Ack)
                        }),
                        reply,
                    ),
                    Ok(None) => answer_later(Box::pin(async { Ok(AggReply::Ack) }), reply),
                    Err(e) => answer_later(Box::pin(async move { Err(e) }), reply),
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
                answer_later(Box::pin(async move { r }), reply);
            }
            AggMsg::Result { result } => {
                let r = self
                    .receive_result(&from, result)
                    .await
                    .map(|()| AggReply::Ack);
                answer_later(Box::pin(async move { r }), reply);
            }
        }
    }

    /// A submission piece: stored, then acknowledged once durable; the last one is checked
    /// with the whole upload first.
    fn inbound_piece(
        &mut self,
        from: String,
        piece: Piece<'_>,
        reply: oneshot::Sender<Response>,
        task_span: tracing::Span,
    ) {
        let answer_later = |fut: BoxedAnswer, reply| answer_in_task(fut, reply, task_span.clone());
        let (session, index, len) = (piece.session.to_string(), piece.index, piece.bytes.len());
        let stored = self.store_piece(&from, &piece);
        if stored.is_ok() {
            self.metrics.submission_bytes.inc_by(len as u64);
        }
        let (store, metrics, link) = (self.store.clone(), self.metrics.clone(), self.link.clone());
        match stored {
            Err(e) => {
                let result = Err(e);
                count_submission(&self.metrics, &result);
                answer_later(Box::pin(async move { result }), reply);
            }
            Ok(StoredPiece::AlreadyAccepted) => answer_later(
                Box::pin(async move {
                    Ok(AggReply::PieceAck {
                        index,
                        complete: true,
                    })
                }),
                reply,
            ),
            // Acknowledged once durable; the actor serves others meanwhile.
            Ok(StoredPiece::Partial) => answer_later(
                Box::pin(async move {
                    timed_flush(&store, &metrics).await?;
                    Ok(AggReply::PieceAck {
                        index,
                        complete: false,
                    })
                }),
                reply,
            ),
            // Durable, then assembled and checked off the actor, then accepted by it.
            Ok(StoredPiece::Last(upload)) => {
                tokio::spawn(
                    async move {
                        let checked = match timed_flush(&store, &metrics).await {
                            Ok(()) => tokio::task::spawn_blocking(move || upload.check())
                                .await
                                .unwrap_or(Err(SessionError::Unavailable("upload check"))),
                            Err(e) => Err(e),
                        };
                        match checked {
                            Ok((meta, update)) => {
                                link.report(Internal::UploadChecked {
                                    session,
                                    from,
                                    index,
                                    meta,
                                    update,
                                    reply,
                                })
                                .await
                            }
                            Err(e) => {
                                let result = Err(e);
                                count_submission(&metrics, &result);
                                let _ = reply.send(reply_response(result));
                            }
                        }
                    }
                    .instrument(task_span),
                );
            }
        }
    }

    /// A participant or member learns of an open session. Returns what the key actor must
    /// bind when this node is a member.
    #[allow(clippy::type_complexity)]
    async fn open(
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
    fn joined_from_coordinator(&self, from: &str, session: &str) -> Result<Joined, SessionError> {
        let joined = self
            .joined
            .get(session)
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))?;
        joined.plan.check_coordinator(from)?;
        Ok(joined.clone())
    }

    async fn receive_failure(
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

    async fn receive_result(
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

    /// Coordinator side of a submission piece: checked and stored (not yet flushed: the caller
    /// acknowledges it only after a flush, which concurrent pieces share).
    fn store_piece(&mut self, from: &str, piece: &Piece<'_>) -> Result<StoredPiece, SessionError> {
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
    async fn accept_upload(
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

/// What storing one piece led to.
enum StoredPiece {
    /// More pieces are to come.
    Partial,
    /// The participant's update was already accepted (a retransmission).
    AlreadyAccepted,
    /// This was the last piece: the whole upload is to be checked.
    Last(Box<CompleteUpload>),
}

struct CompleteUpload {
    upload: Upload,
    plan: SessionPlan,
    key: Arc<CollectivePublicKey>,
    meta: SubmissionMeta,
}

impl CompleteUpload {
    /// Assembles and checks the upload (blocking); a bad upload is dropped whole.
    fn check(mut self) -> Result<(SubmissionMeta, CheckedUpdate), SessionError> {
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

/// Counts a submission piece's outcome; pieces that are neither the last nor refused are not
/// submissions yet.
fn count_submission(metrics: &NodeMetrics, result: &Result<AggReply, SessionError>) {
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

type Spawner<'a> = dyn Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) + 'a;

/// Sends `msg` to each of `members` (committee indices) in its own task; `expect` turns the
/// awaited answer into what the actor is told, and anything else fails the session.
fn ask_members(
    spawn: &Spawner<'_>,
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
        spawn(Box::pin(async move {
            let internal = match link.send_retrying(&peer, &msg).await {
                Ok(reply) => expect(session.clone(), member, reply).unwrap_or_else(|| {
                    let why = format!("gave an unexpected answer to {}", msg.kind());
                    Internal::Event(session, fail_event(&peer, &why))
                }),
                Err(e) => Internal::Event(session, fail_event(&peer, &e.to_string())),
            };
            link.report(internal).await;
        }));
    }
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

fn fail_event(peer: &str, why: &str) -> Event {
    Event::Fail {
        reason: format!("{peer}: {why}"),
    }
}

/// Checks an assembled upload: its envelope's digest is the one the participant announced
/// (and matches its bytes), and it is an update of this session under its key.
fn check_update(
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
fn accumulate(
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

/// Encrypts an update off the executor and uploads it piece by piece; each piece is
/// acknowledged only once the coordinator has it on disk.
async fn upload(
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
