//! The inference actor: client contexts (the secret key never leaves this
//! node), the model registry, evaluation keys uploaded by clients, and encrypted evaluation
//! on a bounded blocking pool.
//!
//! The actor owns its maps; anything slow (key generation, encryption, evaluation, loading an
//! evaluation key, talking to a peer) runs in a task of its [`JoinSet`], which answers the
//! caller directly and hands back to the loop what the actor must cache ([`TaskDone`]).
//! The scheme-specific work is in [`crate::inference::scheme`]; here are the loop and the
//! handle ([`mod@self`]), client contexts ([`contexts`]), the client's flows ([`client`]),
//! evaluation on the model node ([`evaluation`]) and peer calls ([`peers`]).

mod client;
mod contexts;
mod evaluation;
mod peers;

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::{stopped, ActorError, Mailbox};
use crate::config::InferenceConfig;
use crate::crypto::inference::{MlpServerKey, Model};
use crate::inference::registry::Registry;
use crate::inference::scheme::{smallest_server_key_bytes, ClientContext};
use crate::inference::{
    records, ContextInfo, Decrypted, InferOutcome, InferenceActorError, ModelInfo, ModelOptions,
    ModelRecord, ModelSpec, Scheme,
};
use crate::metrics::NodeMetrics;
use crate::net::{NetworkHandle, Response};
use crate::store::{trees, Store};

use evaluation::{EvalKeyCache, EvaluationJob};

/// How the actor runs: pool size and memory budget (the `[inference]` configuration section).
#[derive(Clone, Debug)]
pub struct InferenceLimits {
    /// Evaluations running at once (each may use several cores through rayon).
    pub workers: usize,
    /// Memory allowed for loaded evaluation keys; a request whose key would not fit even
    /// after evicting every other key is refused.
    pub memory_budget_bytes: u64,
}

impl From<&InferenceConfig> for InferenceLimits {
    fn from(config: &InferenceConfig) -> Self {
        InferenceLimits {
            workers: config.workers,
            memory_budget_bytes: config.memory_budget_bytes,
        }
    }
}

/// The configuration's defaults: 2 workers, 4 GiB.
impl Default for InferenceLimits {
    fn default() -> Self {
        InferenceLimits::from(&InferenceConfig::default())
    }
}

pub struct InferenceDeps {
    pub me: PeerId,
    pub store: Store,
    pub network: NetworkHandle,
    pub metrics: NodeMetrics,
    pub limits: InferenceLimits,
}

#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct InferenceStatus {
    /// Models registered in the store.
    pub models: usize,
    pub contexts: usize,
    pub cached_eval_keys: usize,
}

type Reply<T> = oneshot::Sender<Result<T, InferenceActorError>>;

enum Command {
    Status(oneshot::Sender<InferenceStatus>),
    CreateContext(Scheme, Reply<ContextInfo>),
    ListContexts(Reply<Vec<ContextInfo>>),
    DeleteContext(String, Reply<()>),
    /// A model to register, and whether it may replace one of the same name.
    AddModel(Box<ModelRecord>, bool, Reply<ModelInfo>),
    ListModels(Reply<Vec<ModelInfo>>),
    Spec {
        model: String,
        peer: Option<PeerId>,
        reply: Reply<ModelSpec>,
    },
    Encrypt {
        context: String,
        model: String,
        peer: Option<PeerId>,
        rows: Vec<Vec<f32>>,
        reply: Reply<Vec<u8>>,
    },
    Infer {
        context: String,
        model: String,
        peer: Option<PeerId>,
        batch: Vec<u8>,
        reply: Reply<InferOutcome>,
    },
    Decrypt {
        context: String,
        batch: Vec<u8>,
        reply: Reply<Decrypted>,
    },
    /// Encrypt, evaluate an inline (unregistered) model here, answer the encrypted result.
    Inline {
        context: String,
        model: Box<Model>,
        options: ModelOptions,
        rows: Vec<Vec<f32>>,
        reply: Reply<InferOutcome>,
    },
    Inbound {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Response>,
    },
}

/// What a task of the actor hands back to its loop.
enum TaskDone {
    /// A new context is made and stored: cache it, then answer its creator.
    ContextReady(Box<ClientContext>, Reply<ContextInfo>),
    /// An evaluation key is read from the store for `job`: cache it (when it loaded), then run
    /// or fail the job.
    EvalKeyLoaded {
        slot: String,
        /// The slot's generation when the read began ([`EvalKeyCache`]).
        generation: u64,
        key: Result<Arc<MlpServerKey>, InferenceActorError>,
        job: Box<EvaluationJob>,
    },
    /// The upload of an evaluation key into `slot` is over: stored (the copy in memory is
    /// stale), or refused.
    EvalKeyStored {
        slot: String,
        outcome: Result<(), InferenceActorError>,
    },
}

type Tasks = JoinSet<Option<TaskDone>>;

/// Runs `job` off the executor (not on the evaluation pool, which is for evaluations); a
/// panic answers that `what` is unavailable.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    job: impl FnOnce() -> Result<T, InferenceActorError> + Send + 'static,
) -> Result<T, InferenceActorError> {
    crate::runtime::off_executor(job)
        .await
        .unwrap_or(Err(InferenceActorError::Unavailable(what)))
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Status(_) => "Status",
            Command::CreateContext(..) => "CreateContext",
            Command::ListContexts(_) => "ListContexts",
            Command::DeleteContext(..) => "DeleteContext",
            Command::AddModel(..) => "AddModel",
            Command::ListModels(_) => "ListModels",
            Command::Spec { .. } => "Spec",
            Command::Encrypt { .. } => "Encrypt",
            Command::Infer { .. } => "Infer",
            Command::Decrypt { .. } => "Decrypt",
            Command::Inline { .. } => "Inline",
            Command::Inbound { .. } => "Inbound",
        })
    }
}

#[derive(Clone, Debug)]
pub struct InferenceHandle {
    mailbox: Mailbox<Command>,
}

fn gone(e: ActorError) -> InferenceActorError {
    let _ = stopped(e);
    InferenceActorError::Unavailable("the inference actor")
}

impl InferenceHandle {
    pub fn mailbox_depth(&self) -> usize {
        self.mailbox.depth()
    }
    pub fn is_running(&self) -> bool {
        !self.mailbox.is_closed()
    }
    pub async fn status(&self) -> Result<InferenceStatus, ActorError> {
        self.mailbox.ask(Command::Status).await
    }
    /// A new client context: parameters and a fresh secret key, kept on this node.
    pub async fn create_context(&self, scheme: Scheme) -> Result<ContextInfo, InferenceActorError> {
        self.mailbox
            .ask(|r| Command::CreateContext(scheme, r))
            .await
            .map_err(gone)?
    }
    pub async fn list_contexts(&self) -> Result<Vec<ContextInfo>, InferenceActorError> {
        self.mailbox
            .ask(Command::ListContexts)
            .await
            .map_err(gone)?
    }
    pub async fn delete_context(&self, id: &str) -> Result<(), InferenceActorError> {
        let id = id.to_string();
        self.mailbox
            .ask(|r| Command::DeleteContext(id, r))
            .await
            .map_err(gone)?
    }
    /// Registers a model under `name`; it is compiled once to check it. A model of that name
    /// is replaced only when `replace` says so (else `duplicate`).
    pub async fn add_model(
        &self,
        name: &str,
        model: Model,
        options: ModelOptions,
        replace: bool,
    ) -> Result<ModelInfo, InferenceActorError> {
        let record = ModelRecord {
            name: name.to_string(),
            model,
            options,
            created_ms: crate::session::now_ms(),
        };
        self.mailbox
            .ask(|r| Command::AddModel(Box::new(record), replace, r))
            .await
            .map_err(gone)?
    }
    pub async fn list_models(&self) -> Result<Vec<ModelInfo>, InferenceActorError> {
        self.mailbox.ask(Command::ListModels).await.map_err(gone)?
    }
    /// The scheme, parameter set and inputs of `model` on `peer` (`None`: this node), which a
    /// client needs to make a context for it; a peer is asked over libp2p.
    pub async fn model_spec(
        &self,
        model: &str,
        peer: Option<PeerId>,
    ) -> Result<ModelSpec, InferenceActorError> {
        let model = model.to_string();
        self.mailbox
            .ask(|reply| Command::Spec { model, peer, reply })
            .await
            .map_err(gone)?
    }
    /// Encrypts `rows` under `context` for `model` on `peer` (`None`: this node). Returns a
    /// ciphertext batch.
    pub async fn encrypt(
        &self,
        context: &str,
        model: &str,
        peer: Option<PeerId>,
        rows: Vec<Vec<f32>>,
    ) -> Result<Vec<u8>, InferenceActorError> {
        let (context, model) = (context.to_string(), model.to_string());
        self.mailbox
            .ask(|reply| Command::Encrypt {
                context,
                model,
                peer,
                rows,
                reply,
            })
            .await
            .map_err(gone)?
    }
    /// Evaluates `model` on `peer` (`None`: here) on a ciphertext batch made under `context`,
    /// uploading the context's evaluation key first when the model node lacks it.
    pub async fn infer(
        &self,
        context: &str,
        model: &str,
        peer: Option<PeerId>,
        batch: Vec<u8>,
    ) -> Result<InferOutcome, InferenceActorError> {
        let (context, model) = (context.to_string(), model.to_string());
        self.mailbox
            .ask(|reply| Command::Infer {
                context,
                model,
                peer,
                batch,
                reply,
            })
            .await
            .map_err(gone)?
    }
    /// Decrypts a result batch with `context`'s key.
    pub async fn decrypt(
        &self,
        context: &str,
        batch: Vec<u8>,
    ) -> Result<Decrypted, InferenceActorError> {
        let context = context.to_string();
        self.mailbox
            .ask(|reply| Command::Decrypt {
                context,
                batch,
                reply,
            })
            .await
            .map_err(gone)?
    }
    /// The original service's one-call flow: encrypt `rows` under `context`, evaluate the
    /// inline `model` here, answer the encrypted result.
    pub async fn infer_inline(
        &self,
        context: &str,
        model: Model,
        options: ModelOptions,
        rows: Vec<Vec<f32>>,
    ) -> Result<InferOutcome, InferenceActorError> {
        let context = context.to_string();
        self.mailbox
            .ask(|reply| Command::Inline {
                context,
                model: Box::new(model),
                options,
                rows,
                reply,
            })
            .await
            .map_err(gone)?
    }
    /// A request from a peer (inside `Request::Inference`).
    pub async fn inbound(&self, peer: PeerId, bytes: Vec<u8>) -> Response {
        match self
            .mailbox
            .ask(|reply| Command::Inbound { peer, bytes, reply })
            .await
        {
            Ok(r) => r,
            Err(_) => Response::error("unavailable", "the inference actor is stopped"),
        }
    }
}

struct InferenceActor {
    me: PeerId,
    store: Store,
    network: NetworkHandle,
    metrics: NodeMetrics,
    limits: InferenceLimits,
    rx: mpsc::Receiver<Command>,
    contexts: HashMap<String, ClientContext>,
    models: Registry,
    eval_keys: EvalKeyCache,
    /// Evaluation keys being assembled and stored, by slot: the upload's digest and the
    /// senders waiting for the outcome. One at a time per slot, so two uploads can neither
    /// assemble the same pieces twice nor discard each other's.
    storing: HashMap<String, StoringKey>,
    pool: Arc<Semaphore>,
    tasks: Tasks,
}

struct StoringKey {
    digest: [u8; 32],
    waiting: Vec<oneshot::Sender<Response>>,
}

pub fn spawn(
    deps: InferenceDeps,
    cancel: CancellationToken,
) -> (InferenceHandle, impl std::future::Future<Output = ()>) {
    let (mailbox, rx) = Mailbox::new("inference", 64);
    let smallest_key = smallest_server_key_bytes();
    if deps.limits.memory_budget_bytes < smallest_key {
        warn!(
            budget = deps.limits.memory_budget_bytes,
            key_bytes = smallest_key,
            "inference.memory_budget_bytes is below an mlp evaluation key: every mlp evaluation on this node will be refused"
        );
    }
    let actor = InferenceActor {
        me: deps.me,
        models: Registry::new(deps.store.clone()),
        store: deps.store,
        network: deps.network,
        metrics: deps.metrics,
        pool: Arc::new(Semaphore::new(deps.limits.workers.max(1))),
        limits: deps.limits,
        rx,
        contexts: HashMap::new(),
        eval_keys: EvalKeyCache::default(),
        storing: HashMap::new(),
        tasks: Tasks::new(),
    };
    (InferenceHandle { mailbox }, actor.run(cancel))
}

impl InferenceActor {
    async fn run(mut self, cancel: CancellationToken) {
        // Once every handle is gone no command comes, but the work under way still answers.
        let mut open = true;
        while open || !self.tasks.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.rx.recv(), if open => match command {
                    Some(c) => self.handle(c),
                    None => open = false,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok(Some(finished)) = done {
                        self.task_done(finished);
                    }
                }
            }
        }
        // What finished already is handed over (a context made and stored is answered);
        // dropping the actor aborts the rest, and blocking work already started runs out alone.
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok(Some(finished)) = done {
                self.task_done(finished);
            }
        }
        info!("inference actor stopped");
    }

    /// Runs `work` among the actor's tasks, in the current span.
    fn spawn(
        &mut self,
        work: impl std::future::Future<Output = Option<TaskDone>> + Send + 'static,
    ) {
        self.tasks.spawn(work.in_current_span());
    }

    /// Runs `work`, which answers its caller itself and hands nothing back.
    fn spawn_answering(&mut self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.spawn(async move {
            work.await;
            None
        });
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let contexts = self
                    .store
                    .tree(trees::CONTEXTS)
                    .map(|t| t.scan_prefix(records::CONTEXTS).count())
                    .unwrap_or(0);
                let _ = reply.send(InferenceStatus {
                    models: self.models.count(),
                    contexts,
                    cached_eval_keys: self.eval_keys.len(),
                });
            }
            Command::CreateContext(scheme, reply) => self.create_context(scheme, reply),
            Command::ListContexts(reply) => {
                let _ = reply.send(self.list_contexts());
            }
            Command::DeleteContext(id, reply) => {
                let _ = reply.send(self.delete_context(&id));
            }
            Command::AddModel(record, replace, reply) => self.add_model(*record, replace, reply),
            Command::ListModels(reply) => {
                let _ = reply.send(self.models.list());
            }
            Command::Spec { model, peer, reply } => self.model_spec(model, peer, reply),
            Command::Encrypt {
                context,
                model,
                peer,
                rows,
                reply,
            } => self.encrypt(context, model, peer, rows, reply),
            Command::Infer {
                context,
                model,
                peer,
                batch,
                reply,
            } => self.infer(context, model, peer, batch, reply),
            Command::Decrypt {
                context,
                batch,
                reply,
            } => self.decrypt(context, batch, reply),
            Command::Inline {
                context,
                model,
                options,
                rows,
                reply,
            } => self.inline(context, *model, options, rows, reply),
            Command::Inbound { peer, bytes, reply } => self.inbound(peer, bytes, reply),
        }
    }

    fn task_done(&mut self, done: TaskDone) {
        match done {
            TaskDone::ContextReady(ctx, reply) => {
                let info = ctx.info.clone();
                self.contexts.insert(info.fhe_context_id.clone(), *ctx);
                let _ = reply.send(Ok(info));
            }
            TaskDone::EvalKeyLoaded {
                slot,
                generation,
                key,
                job,
            } => self.eval_key_loaded(slot, generation, key, *job),
            TaskDone::EvalKeyStored { slot, outcome } => self.eval_key_stored(slot, outcome),
        }
    }

    // --- models (model node) -------------------------------------------------------------

    fn add_model(&mut self, record: ModelRecord, replace: bool, reply: Reply<ModelInfo>) {
        let store = self.store.clone();
        self.spawn_answering(async move {
            let answer = blocking("model compilation (it panicked)", move || {
                crate::inference::registry::register(&store, &record, replace)
            })
            .await;
            let _ = reply.send(answer);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_inference_section() {
        let defaults = InferenceLimits::default();
        assert_eq!(
            (defaults.workers, defaults.memory_budget_bytes),
            (2, 4 << 30)
        );
        let limits = InferenceLimits::from(&InferenceConfig {
            workers: 5,
            memory_budget_bytes: 1 << 20,
        });
        assert_eq!((limits.workers, limits.memory_budget_bytes), (5, 1 << 20));
    }
}
