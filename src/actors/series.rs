//! The series actor: runs multi-round series (`crate::session::series`) on the coordinator.
//! It owns the series records; each series' next step (wait for the last round to stop
//! collecting, then open the next) runs in its `JoinSet` and reports back to its loop, which
//! records the step and starts the following one. Unfinished series resume at start.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::aggregation::AggregationHandle;
use super::{stopped, Backoff, Mailbox};
use crate::codes::PeerFailure;
use crate::session::series::{
    collection_over, RoundInfo, SeriesInfo, SeriesRecord, SeriesSpec, SeriesStep,
};
use crate::session::{now_ms, records, SessionError};
use crate::store::{trees, Store};

/// How long one wait on a round's phase lasts before it is asked again.
const PHASE_POLL: Duration = Duration::from_secs(30);
/// Longest wait between two tries of a step that failed for a while.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

enum Command {
    Create(
        Box<SeriesSpec>,
        oneshot::Sender<Result<SeriesInfo, SessionError>>,
    ),
    Get(String, oneshot::Sender<Result<SeriesInfo, SessionError>>),
    List(oneshot::Sender<Result<Vec<SeriesInfo>, SessionError>>),
}

/// Typed access to the series actor.
#[derive(Clone)]
pub struct SeriesHandle {
    mailbox: Mailbox<Command>,
}

impl SeriesHandle {
    /// Starts a series coordinated by this node: round 1 opens at once.
    pub async fn create(&self, spec: SeriesSpec) -> Result<SeriesInfo, SessionError> {
        self.mailbox
            .ask(|r| Command::Create(Box::new(spec), r))
            .await
            .map_err(stopped)?
    }

    pub async fn get(&self, id: &str) -> Result<SeriesInfo, SessionError> {
        let id = id.to_string();
        self.mailbox
            .ask(|r| Command::Get(id, r))
            .await
            .map_err(stopped)?
    }

    pub async fn list(&self) -> Result<Vec<SeriesInfo>, SessionError> {
        self.mailbox.ask(Command::List).await.map_err(stopped)?
    }

    pub fn mailbox_depth(&self) -> usize {
        self.mailbox.depth()
    }
}

/// What the series actor needs.
pub struct SeriesDeps {
    pub store: Store,
    pub aggregation: AggregationHandle,
}

/// A step's outcome: the round it opened, or why it could not.
struct StepDone {
    series: String,
    round: u32,
    outcome: Result<(), String>,
}

struct SeriesActor {
    deps: SeriesDeps,
    series: BTreeMap<String, SeriesRecord>,
    steps: JoinSet<StepDone>,
    rx: mpsc::Receiver<Command>,
}

pub fn spawn(
    deps: SeriesDeps,
    cancel: CancellationToken,
) -> (SeriesHandle, impl std::future::Future<Output = ()>) {
    let (mailbox, rx) = Mailbox::new("series", 64);
    let actor = SeriesActor {
        deps,
        series: BTreeMap::new(),
        steps: JoinSet::new(),
        rx,
    };
    (SeriesHandle { mailbox }, actor.run(cancel))
}

/// Whether an error may pass if asked again: the aggregation actor stopping or restarting, a
/// store or a peer failing for a while. Anything else (a spec refused, a round gone) stops the
/// series.
fn transient(e: &SessionError) -> bool {
    matches!(
        e,
        SessionError::Unavailable(_)
            | SessionError::Store(_)
            | SessionError::Peer(PeerFailure::Unreachable { .. })
    )
}

/// `call` until it succeeds or fails for good, waiting longer after each transient failure.
/// The series actor aborts the step when it stops, so retrying never outlives the node.
async fn persist<T, F: std::future::Future<Output = Result<T, SessionError>>>(
    call: impl Fn() -> F,
) -> Result<T, SessionError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), MAX_RETRY_DELAY);
    loop {
        match call().await {
            Err(e) if transient(&e) => {
                warn!(error = %e, "retrying");
                backoff.wait().await;
            }
            other => return other,
        }
    }
}

/// Waits until `step.after` stops collecting (the coordinator's view), then opens the step's
/// round. A round that already exists (opened before a restart) counts as opened.
async fn run_step(aggregation: AggregationHandle, step: SeriesStep) -> Result<(), String> {
    if let Some(previous) = &step.after {
        loop {
            let info = persist(|| aggregation.get(previous))
                .await
                .map_err(|e| e.to_string())?;
            if collection_over(info.phase) {
                break;
            }
            // Bounded so that a lost wake-up costs one poll, not the series.
            let _ = tokio::time::timeout(PHASE_POLL, aggregation.wait_change(previous, info.phase))
                .await;
        }
    }
    match persist(|| aggregation.create(step.spec.clone())).await {
        Ok(_) | Err(SessionError::Duplicate(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

impl SeriesActor {
    async fn run(mut self, cancel: CancellationToken) {
        self.resume();
        loop {
            tokio::select! {
                // Stopping comes first: a step cut short by the node stopping is no outcome.
                biased;
                _ = cancel.cancelled() => break,
                command = self.rx.recv() => match command {
                    Some(c) => self.handle(c).await,
                    None => break,
                },
                Some(done) = self.steps.join_next(), if !self.steps.is_empty() => match done {
                    Ok(done) => self.step_done(done),
                    Err(e) => warn!(error = %e, "a series step ended abnormally"),
                },
            }
        }
        self.steps.abort_all();
        info!("series actor stopped");
    }

    /// Loads every stored series and continues the unfinished ones.
    fn resume(&mut self) {
        let stored = self
            .deps
            .store
            .scan_prefix::<SeriesRecord>(trees::SESSIONS, records::SERIES.as_bytes());
        match stored {
            Ok(stored) => {
                for (_, record) in stored {
                    self.series.insert(record.id.clone(), record.clone());
                    self.start_next(&record);
                }
            }
            Err(e) => warn!(error = %e, "series records cannot be read"),
        }
    }

    fn start_next(&mut self, record: &SeriesRecord) {
        let Some(step) = record.next_step() else {
            return;
        };
        let (series, round) = (record.id.clone(), step.round);
        let aggregation = self.deps.aggregation.clone();
        let span = info_span!("series", series = %series, round);
        self.steps.spawn(
            async move {
                let outcome = run_step(aggregation, step).await;
                StepDone {
                    series,
                    round,
                    outcome,
                }
            }
            .instrument(span),
        );
    }

    fn step_done(&mut self, done: StepDone) {
        let Some(record) = self.series.get_mut(&done.series) else {
            return;
        };
        match &done.outcome {
            Ok(()) => {
                info!(series = %done.series, round = done.round, "round opened");
                record.opened(done.round);
            }
            Err(reason) => {
                warn!(series = %done.series, round = done.round, %reason, "round could not open");
                record.failed(done.round, reason);
            }
        }
        let record = record.clone();
        if let Err(e) = self.save(&record) {
            warn!(series = %record.id, error = %e, "series record not saved");
        }
        self.start_next(&record);
    }

    fn save(&self, record: &SeriesRecord) -> Result<(), SessionError> {
        let key = records::series(&record.id);
        self.deps
            .store
            .put(trees::SESSIONS, key.as_bytes(), record)?;
        self.deps.store.flush()?;
        Ok(())
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Create(spec, reply) => {
                let _ = reply.send(self.create(*spec).await);
            }
            Command::Get(id, reply) => {
                let answer = match self.series.get(&id).cloned() {
                    Some(record) => Ok(self.info(&record).await),
                    None => Err(SessionError::UnknownSession(format!(
                        "{id} (no such series)"
                    ))),
                };
                let _ = reply.send(answer);
            }
            Command::List(reply) => {
                let records: Vec<SeriesRecord> = self.series.values().cloned().collect();
                let mut infos = Vec::with_capacity(records.len());
                for record in &records {
                    infos.push(self.info(record).await);
                }
                let _ = reply.send(Ok(infos));
            }
        }
    }

    async fn create(&mut self, spec: SeriesSpec) -> Result<SeriesInfo, SessionError> {
        let generated = format!("r-{}", hex::encode(rand::random::<[u8; 6]>()));
        let record = SeriesRecord::new(spec, generated, now_ms())?;
        if self.series.contains_key(&record.id) {
            return Err(SessionError::Duplicate(format!(
                "series `{}` already exists",
                record.id
            )));
        }
        // Every round has round 1's spec but its id: opening it now refuses a bad spec (or a
        // taken session id) to the caller, before anything is stored.
        let mut record = record;
        self.deps.aggregation.create(record.round_spec(1)).await?;
        record.opened(1);
        self.save(&record)?;
        self.series.insert(record.id.clone(), record.clone());
        self.start_next(&record);
        info!(series = %record.id, rounds = record.rounds, "series created");
        Ok(self.info(&record).await)
    }

    /// The series with each opened round's phase as the coordinator sees it.
    async fn info(&self, record: &SeriesRecord) -> SeriesInfo {
        let mut rounds = Vec::with_capacity(record.opened as usize);
        for round in 1..=record.opened {
            let session = record.session(round);
            let round_info = match self.deps.aggregation.get(&session).await {
                Ok(info) => RoundInfo {
                    round,
                    session,
                    phase: info.phase,
                    submissions: info.submissions,
                    failure: info.failure,
                },
                Err(e) => RoundInfo {
                    round,
                    session,
                    phase: crate::session::Phase::Failed,
                    submissions: 0,
                    failure: Some(e.to_string()),
                },
            };
            rounds.push(round_info);
        }
        let finished = record.failure.is_some()
            || (record.opened == record.rounds && rounds.iter().all(|r| r.phase.is_terminal()));
        SeriesInfo {
            id: record.id.clone(),
            planned_rounds: record.rounds,
            rounds,
            finished,
            failure: record.failure.clone(),
            created_ms: record.created_ms,
        }
    }
}
