//! The inference actor: client contexts (the secret key never leaves this
//! node), the model registry, evaluation keys uploaded by clients, and encrypted evaluation
//! on a bounded blocking pool.
//!
//! The actor owns its maps; anything slow (key generation, encryption, evaluation, loading an
//! evaluation key, talking to a peer) runs in a task that answers the caller directly and
//! tells the actor what to cache through an internal message.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{stopped, ActorError, Mailbox};
use crate::config::InferenceConfig;
use crate::crypto::inference::{
    InferenceWire, LinearCiphertext, LinearClientKey, LinearConfig, LinearModel, LinearResult,
    MlpCiphertext, MlpClientKey, MlpConfig, MlpEvaluationKey, MlpParams, MlpResult, MlpServerKey,
    Model, QuantizedModel,
};
use crate::inference::messages::{self, Batch, InferMsg, InferReply, InputSpec, KEY_PIECE_BYTES};
use crate::inference::records;
use crate::inference::{
    check_model_name, ContextInfo, Decrypted, InferOutcome, InferenceActorError, ModelInfo,
    ModelOptions, ModelRecord, ModelSpec, Scheme,
};
use crate::metrics::{InferenceLabels, NodeMetrics, SchemeLabels};
use crate::net::{NetworkHandle, Request, Response};
use crate::store::pieces::Upload;
use crate::store::{trees, Store};

/// Largest ciphertext or result batch accepted.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Largest evaluation key accepted (m3c3 keys are ≈ 270 MiB compressed).
pub const MAX_EVAL_KEY_BYTES: usize = 512 << 20;

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
    Internal(Internal),
}

enum Internal {
    ContextReady(Box<ClientContext>),
    EvalKeyLoaded {
        slot: String,
        key: Arc<MlpServerKey>,
        bytes: u64,
    },
    /// The upload of an evaluation key into `slot` is over: stored (the copy in memory is
    /// stale), or refused.
    EvalKeyStored {
        slot: String,
        outcome: Result<(), InferenceActorError>,
    },
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
            Command::Internal(_) => "Internal",
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
            Err(_) => Response::Error {
                code: "unavailable".into(),
                message: "the inference actor is stopped".into(),
            },
        }
    }
}

/// A client key of either scheme.
#[derive(Clone)]
enum ClientKey {
    Linear(Arc<LinearClientKey>),
    Mlp(Arc<MlpClientKey>),
}

#[derive(Clone)]
struct ClientContext {
    info: ContextInfo,
    key: ClientKey,
}

/// What the store keeps for a context: public facts and the secret key's bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContextRecord {
    info: ContextInfo,
    #[serde(with = "serde_bytes")]
    secret: Vec<u8>,
}

impl Drop for ContextRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

/// A model compiled for its scheme.
enum Compiled {
    Linear(LinearModel),
    Mlp(QuantizedModel),
}

struct CompiledModel {
    info: ModelInfo,
    compiled: Compiled,
}

impl CompiledModel {
    fn compile(
        record: &ModelRecord,
        rows: Option<&[Vec<f32>]>,
    ) -> Result<Self, InferenceActorError> {
        check_model_name(&record.name)?;
        let model = &record.model;
        model.validate()?;
        let has_activation = model
            .layers
            .iter()
            .any(|l| l.activation != crate::crypto::inference::Activation::None);
        let scheme = match record.options.scheme {
            Some(s) => s,
            None if has_activation => Scheme::Mlp,
            None => Scheme::Linear,
        };
        let activations = model
            .layers
            .iter()
            .map(|l| l.activation.name().to_string())
            .collect();
        let (compiled, pbs, error_bound) = match scheme {
            Scheme::Linear => {
                let config = match (record.options.input_bound, rows) {
                    (Some(b), _) => LinearConfig::with_input_bound(b),
                    (None, Some(rows)) => {
                        let all: Vec<f32> = rows.iter().flatten().copied().collect();
                        LinearConfig::for_input(&all)
                    }
                    (None, None) => LinearConfig::default(),
                };
                let m = LinearModel::compile(model, &config)?;
                let bound = m.error_bound();
                (Compiled::Linear(m), 0, Some(bound))
            }
            Scheme::Mlp => {
                let mut config = match record.options.input_range {
                    Some((lo, hi)) => MlpConfig::with_range(MlpParams::Message2Carry2, lo, hi),
                    None => MlpConfig::default(),
                };
                config.calibration = record.options.calibration.clone();
                if let (None, Some(rows)) = (&record.options.input_range, rows) {
                    config.calibration.extend(rows.iter().cloned());
                }
                if config.input_range.is_none() && config.calibration.is_empty() {
                    config = MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0);
                }
                let q = QuantizedModel::compile(model, &config)?;
                let pbs = q.pbs_count();
                (Compiled::Mlp(q), pbs, None)
            }
        };
        Ok(CompiledModel {
            info: ModelInfo {
                name: record.name.clone(),
                scheme,
                inputs: model.inputs(),
                outputs: model.outputs(),
                layers: model.layers.len(),
                activations,
                pbs,
                error_bound,
                created_ms: record.created_ms,
            },
            compiled,
        })
    }

    fn spec(&self) -> InputSpec {
        match &self.compiled {
            Compiled::Linear(m) => InputSpec::Linear(m.input_spec()),
            Compiled::Mlp(q) => InputSpec::Mlp(q.input_spec()),
        }
    }
}

/// Loaded evaluation keys within a byte budget, least recently used out first.
struct EvalKeyCache<K = Arc<MlpServerKey>> {
    keys: HashMap<String, (K, u64)>,
    order: VecDeque<String>,
    bytes: u64,
}

impl<K> Default for EvalKeyCache<K> {
    fn default() -> Self {
        EvalKeyCache {
            keys: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<K: Clone> EvalKeyCache<K> {
    fn get(&mut self, slot: &str) -> Option<K> {
        let key = self.keys.get(slot)?.0.clone();
        self.order.retain(|s| s != slot);
        self.order.push_back(slot.to_string());
        Some(key)
    }

    fn insert(&mut self, slot: String, key: K, bytes: u64, budget: u64) {
        self.remove(&slot);
        while self.bytes + bytes > budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, b)) = self.keys.remove(&old) {
                self.bytes -= b;
            }
        }
        self.bytes += bytes;
        self.order.push_back(slot.clone());
        self.keys.insert(slot, (key, bytes));
    }

    fn remove(&mut self, slot: &str) {
        if let Some((_, b)) = self.keys.remove(slot) {
            self.bytes -= b;
            self.order.retain(|s| s != slot);
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
    mailbox: Mailbox<Command>,
    contexts: HashMap<String, ClientContext>,
    models: HashMap<String, Arc<CompiledModel>>,
    eval_keys: EvalKeyCache,
    /// Evaluation keys being assembled and stored, by slot: the upload's digest and the
    /// senders waiting for the outcome. One at a time per slot, so two uploads can neither
    /// assemble the same pieces twice nor discard each other's.
    storing: HashMap<String, StoringKey>,
    pool: Arc<Semaphore>,
    cancel: CancellationToken,
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
    let smallest_key = MlpParams::Message2Carry2.server_key_bytes();
    if deps.limits.memory_budget_bytes < smallest_key {
        warn!(
            budget = deps.limits.memory_budget_bytes,
            key_bytes = smallest_key,
            "inference.memory_budget_bytes is below an mlp evaluation key: every mlp evaluation on this node will be refused"
        );
    }
    let actor = InferenceActor {
        me: deps.me,
        store: deps.store,
        network: deps.network,
        metrics: deps.metrics,
        pool: Arc::new(Semaphore::new(deps.limits.workers.max(1))),
        limits: deps.limits,
        rx,
        mailbox: mailbox.clone(),
        contexts: HashMap::new(),
        models: HashMap::new(),
        eval_keys: EvalKeyCache::default(),
        storing: HashMap::new(),
        cancel: cancel.clone(),
    };
    (InferenceHandle { mailbox }, actor.run(cancel))
}

fn new_context_id() -> String {
    use rand::RngCore;
    let mut id = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut id);
    format!("ctx_{}", hex::encode(id))
}

/// Runs `job` on the blocking pool once one of the pool's permits is free, counting the wait
/// in the queue-depth gauge.
async fn on_pool<T: Send + 'static>(
    pool: &Semaphore,
    metrics: &NodeMetrics,
    job: impl FnOnce() -> Result<T, InferenceActorError> + Send + 'static,
) -> Result<T, InferenceActorError> {
    metrics.inference_queue_depth.inc();
    let permit = pool.acquire().await;
    metrics.inference_queue_depth.dec();
    let _permit = permit.map_err(|_| InferenceActorError::Unavailable("the inference pool"))?;
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|_| InferenceActorError::Unavailable("an inference worker (it panicked)"))?
}

fn count(
    metrics: &NodeMetrics,
    scheme: &'static str,
    result: &Result<impl Sized, InferenceActorError>,
) {
    count_outcome(
        metrics,
        scheme,
        match result {
            Ok(_) => "ok",
            Err(e) if e.http_status() < 500 => "refused",
            Err(_) => "failed",
        },
    );
}

fn count_outcome(metrics: &NodeMetrics, scheme: &'static str, outcome: &'static str) {
    metrics
        .inference_requests
        .get_or_create(&InferenceLabels { scheme, outcome })
        .inc();
}

impl InferenceActor {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.rx.recv() => match command {
                    Some(c) => self.handle(c),
                    None => break,
                },
            }
        }
        info!("inference actor stopped");
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = fut => {}
                }
            }
            .in_current_span(),
        );
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let models = self.store.tree(trees::MODELS).map(|t| t.len()).unwrap_or(0);
                let contexts = self
                    .store
                    .tree(trees::CONTEXTS)
                    .map(|t| t.scan_prefix(records::CONTEXTS).count())
                    .unwrap_or(0);
                let _ = reply.send(InferenceStatus {
                    models,
                    contexts,
                    cached_eval_keys: self.eval_keys.keys.len(),
                });
            }
            Command::CreateContext(scheme, reply) => self.create_context(scheme, reply),
            Command::ListContexts(reply) => {
                let list = self
                    .store
                    .scan_prefix::<ContextRecord>(trees::CONTEXTS, records::CONTEXTS.as_bytes())
                    .map(|all| all.into_iter().map(|(_, r)| r.info.clone()).collect())
                    .map_err(InferenceActorError::from);
                let _ = reply.send(list);
            }
            Command::DeleteContext(id, reply) => {
                let result = self.delete_context(&id);
                let _ = reply.send(result);
            }
            Command::AddModel(record, replace, reply) => self.add_model(*record, replace, reply),
            Command::ListModels(reply) => {
                let _ = reply.send(self.list_models());
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
            Command::Internal(Internal::ContextReady(ctx)) => {
                self.contexts.insert(ctx.info.fhe_context_id.clone(), *ctx);
            }
            Command::Internal(Internal::EvalKeyLoaded { slot, key, bytes }) => {
                self.eval_keys
                    .insert(slot, key, bytes, self.limits.memory_budget_bytes);
                self.metrics
                    .eval_key_cache_bytes
                    .set(self.eval_keys.bytes as i64);
            }
            Command::Internal(Internal::EvalKeyStored { slot, outcome }) => {
                if outcome.is_ok() {
                    self.eval_keys.remove(&slot);
                    self.metrics
                        .eval_key_cache_bytes
                        .set(self.eval_keys.bytes as i64);
                }
                let response = match &outcome {
                    Ok(()) => Response::Inference(messages::encode(&InferReply::PieceAck {
                        complete: true,
                    })),
                    Err(e) => error_response(e),
                };
                for reply in self
                    .storing
                    .remove(&slot)
                    .map(|s| s.waiting)
                    .unwrap_or_default()
                {
                    let _ = reply.send(response.clone());
                }
            }
        }
    }

    // --- contexts (client side) ---------------------------------------------------------

    fn create_context(&self, scheme: Scheme, reply: Reply<ContextInfo>) {
        if let Err(e) = self.store.ensure_room() {
            let _ = reply.send(Err(e.into()));
            return;
        }
        let (store, mailbox) = (self.store.clone(), self.mailbox.clone());
        self.spawn(async move {
            let id = new_context_id();
            // Key generation takes seconds for mlp (the evaluation key): off the executor.
            let made = tokio::task::spawn_blocking(move || -> Result<_, InferenceActorError> {
                let created_ms = crate::session::now_ms();
                let (key, params, secret, eval_key) = match scheme {
                    Scheme::Linear => {
                        let k = LinearClientKey::generate();
                        let secret = k.to_secret_bytes();
                        let params = k.params().name().to_string();
                        (ClientKey::Linear(Arc::new(k)), params, secret, None)
                    }
                    Scheme::Mlp => {
                        let k = MlpClientKey::generate(MlpParams::Message2Carry2);
                        let secret = k.to_secret_bytes();
                        let params = k.params().name().to_string();
                        let eval = k.evaluation_key().to_bytes();
                        (ClientKey::Mlp(Arc::new(k)), params, secret, Some(eval))
                    }
                };
                let key_id = match &key {
                    ClientKey::Linear(k) => k.key_id().to_hex(),
                    ClientKey::Mlp(k) => k.key_id().to_hex(),
                };
                let info = ContextInfo {
                    fhe_context_id: id.clone(),
                    scheme,
                    params,
                    key_id,
                    created_ms,
                    evaluation_key_bytes: eval_key.as_ref().map(|e| e.len() as u64),
                };
                let record = ContextRecord {
                    info: info.clone(),
                    secret: secret.to_vec(),
                };
                store.put(trees::CONTEXTS, &records::context(&id), &record)?;
                if let Some(eval) = eval_key {
                    // The client's own copy, uploaded to model nodes on first use.
                    store.put_bytes(trees::CONTEXTS, &records::own_eval_key(&id), &eval)?;
                }
                store.flush()?;
                Ok(ClientContext { info, key })
            })
            .await
            .unwrap_or(Err(InferenceActorError::Unavailable(
                "key generation (it panicked)",
            )));
            let answer = match made {
                Ok(ctx) => {
                    let info = ctx.info.clone();
                    let _ = mailbox
                        .send(Command::Internal(Internal::ContextReady(Box::new(ctx))))
                        .await;
                    Ok(info)
                }
                Err(e) => Err(e),
            };
            let _ = reply.send(answer);
        });
    }

    fn delete_context(&mut self, id: &str) -> Result<(), InferenceActorError> {
        self.context(id)?;
        self.contexts.remove(id);
        self.store.remove(trees::CONTEXTS, &records::context(id))?;
        self.store
            .remove(trees::CONTEXTS, &records::own_eval_key(id))?;
        self.store.flush()?;
        Ok(())
    }

    /// A context of this node, from memory or the store.
    fn context(&mut self, id: &str) -> Result<ClientContext, InferenceActorError> {
        if let Some(c) = self.contexts.get(id) {
            return Ok(c.clone());
        }
        let record: ContextRecord = self
            .store
            .get(trees::CONTEXTS, &records::context(id))?
            .ok_or_else(|| InferenceActorError::UnknownContext(id.to_string()))?;
        let key = match record.info.scheme {
            Scheme::Linear => ClientKey::Linear(Arc::new(LinearClientKey::from_secret_bytes(
                &record.secret,
            )?)),
            Scheme::Mlp => {
                ClientKey::Mlp(Arc::new(MlpClientKey::from_secret_bytes(&record.secret)?))
            }
        };
        let ctx = ClientContext {
            info: record.info.clone(),
            key,
        };
        self.contexts.insert(id.to_string(), ctx.clone());
        Ok(ctx)
    }

    // --- models (model node) -------------------------------------------------------------

    fn add_model(&self, record: ModelRecord, replace: bool, reply: Reply<ModelInfo>) {
        let store = self.store.clone();
        self.spawn(async move {
            let answer = tokio::task::spawn_blocking(move || {
                let exists = store.get_bytes(trees::MODELS, &records::model(&record.name))?;
                if exists.is_some() && !replace {
                    return Err(InferenceActorError::Duplicate(format!(
                        "model `{}` exists; register with `?replace=true` to replace it",
                        record.name
                    )));
                }
                store.ensure_room()?;
                let compiled = CompiledModel::compile(&record, None)?;
                store.put(trees::MODELS, &records::model(&record.name), &record)?;
                store.flush()?;
                Ok(compiled.info)
            })
            .await
            .unwrap_or(Err(InferenceActorError::Unavailable(
                "model compilation (it panicked)",
            )));
            let _ = reply.send(answer);
        });
    }

    fn list_models(&mut self) -> Result<Vec<ModelInfo>, InferenceActorError> {
        let names: Vec<String> = self
            .store
            .scan_prefix::<ModelRecord>(trees::MODELS, b"")?
            .into_iter()
            .map(|(_, r)| r.name.clone())
            .collect();
        names
            .iter()
            .map(|n| self.model(n).map(|m| m.info.clone()))
            .collect()
    }

    /// A registered model, compiled (cached until the record changes).
    fn model(&mut self, name: &str) -> Result<Arc<CompiledModel>, InferenceActorError> {
        let record: ModelRecord = self
            .store
            .get(trees::MODELS, &records::model(name))?
            .ok_or_else(|| InferenceActorError::UnknownModel(name.to_string()))?;
        if let Some(m) = self.models.get(name) {
            if m.info.created_ms == record.created_ms {
                return Ok(m.clone());
            }
        }
        let compiled = Arc::new(CompiledModel::compile(&record, None)?);
        self.models.insert(name.to_string(), compiled.clone());
        Ok(compiled)
    }

    fn model_spec(&mut self, model: String, peer: Option<PeerId>, reply: Reply<ModelSpec>) {
        match self.local_spec(&model, peer) {
            Some(spec) => {
                let _ = reply.send(spec.map(|s| ModelSpec::new(&model, &s, None)));
            }
            None => {
                let network = self.network.clone();
                self.spawn(async move {
                    let answer = remote_spec(&network, peer, &model)
                        .await
                        .map(|s| ModelSpec::new(&model, &s, peer.map(|p| p.to_string())));
                    let _ = reply.send(answer);
                });
            }
        }
    }

    // --- client flows --------------------------------------------------------------------

    fn encrypt(
        &mut self,
        context: String,
        model: String,
        peer: Option<PeerId>,
        rows: Vec<Vec<f32>>,
        reply: Reply<Vec<u8>>,
    ) {
        let ctx = match self.context(&context) {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let local = self.local_spec(&model, peer);
        let network = self.network.clone();
        self.spawn(async move {
            let answer = async {
                let spec = match local {
                    Some(spec) => spec?,
                    None => remote_spec(&network, peer, &model).await?,
                };
                tokio::task::spawn_blocking(move || {
                    encrypt_rows(&ctx, &spec, &rows).map(|b| b.to_bytes())
                })
                .await
                .map_err(|_| InferenceActorError::Unavailable("encryption (it panicked)"))?
            }
            .await;
            let _ = reply.send(answer);
        });
    }

    /// The spec of a model on this node, or `None` when it lives on a peer.
    /// Refuses up front a model whose evaluation key would not fit the memory budget.
    fn check_budget(&self, params: MlpParams) -> Result<(), InferenceActorError> {
        let need = params.server_key_bytes();
        if need > self.limits.memory_budget_bytes {
            return Err(InferenceActorError::OverBudget(format!(
                "the evaluation key needs about {need} bytes loaded; the budget is {}",
                self.limits.memory_budget_bytes
            )));
        }
        Ok(())
    }

    fn local_spec(
        &mut self,
        model: &str,
        peer: Option<PeerId>,
    ) -> Option<Result<InputSpec, InferenceActorError>> {
        match peer {
            Some(p) if p != self.me => None,
            _ => Some(self.model(model).map(|m| m.spec())),
        }
    }

    fn infer(
        &mut self,
        context: String,
        model: String,
        peer: Option<PeerId>,
        batch: Vec<u8>,
        reply: Reply<InferOutcome>,
    ) {
        let checked = (|| {
            let ctx = self.context(&context)?;
            let parsed = Batch::from_bytes(&batch, MAX_BATCH_BYTES)?;
            check_batch(&ctx, &parsed, "ciphertext")?;
            Ok((ctx, parsed))
        })();
        let (ctx, parsed) = match checked {
            Ok(v) => v,
            Err(e) => {
                count_outcome(&self.metrics, "unknown", "refused");
                let _ = reply.send(Err(e));
                return;
            }
        };
        match peer {
            Some(p) if p != self.me => {
                let (network, store) = (self.network.clone(), self.store.clone());
                self.spawn(async move {
                    let rows = parsed.rows.len();
                    let answer = remote_infer(&network, &store, p, &ctx, &model, batch, rows).await;
                    let _ = reply.send(answer);
                });
            }
            _ => {
                let me = self.me.to_string();
                let started = self.evaluate(&me, &model, &context, parsed);
                self.spawn(async move {
                    let answer = match started {
                        Ok(fut) => fut
                            .await
                            .map(|(batch, ms, pbs, rows, outputs)| InferOutcome {
                                encrypted_result: batch,
                                result_shape: [rows, outputs],
                                computation_time_ms: ms,
                                pbs,
                                peer: None,
                            }),
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(answer);
                });
            }
        }
    }

    fn decrypt(&mut self, context: String, batch: Vec<u8>, reply: Reply<Decrypted>) {
        let checked = (|| {
            let ctx = self.context(&context)?;
            let parsed = Batch::from_bytes(&batch, MAX_BATCH_BYTES)?;
            check_batch(&ctx, &parsed, "encrypted result")?;
            Ok((ctx, parsed))
        })();
        match checked {
            Ok((ctx, parsed)) => self.spawn(async move {
                let answer = tokio::task::spawn_blocking(move || decrypt_rows(&ctx, &parsed))
                    .await
                    .unwrap_or(Err(InferenceActorError::Unavailable(
                        "decryption (it panicked)",
                    )));
                let _ = reply.send(answer);
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn inline(
        &mut self,
        context: String,
        model: Model,
        options: ModelOptions,
        rows: Vec<Vec<f32>>,
        reply: Reply<InferOutcome>,
    ) {
        let ctx = match self.context(&context) {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
        self.spawn(async move {
            let scheme = ctx.info.scheme;
            let started = Instant::now();
            let answer = on_pool(&pool, &metrics, move || {
                let record = ModelRecord {
                    name: "inline".into(),
                    model,
                    options: ModelOptions {
                        scheme: Some(ctx.info.scheme),
                        ..options
                    },
                    created_ms: 0,
                };
                let compiled = CompiledModel::compile(&record, Some(&rows))?;
                let cts = encrypt_rows(&ctx, &compiled.spec(), &rows)?;
                let server_key = match &ctx.key {
                    ClientKey::Mlp(k) => Some(Arc::new(k.evaluation_key().into_server_key())),
                    ClientKey::Linear(_) => None,
                };
                let t = Instant::now();
                let (batch, pbs) = evaluate_rows(&compiled, server_key.as_deref(), &cts)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                Ok(InferOutcome {
                    encrypted_result: batch,
                    result_shape: [rows.len(), compiled.info.outputs],
                    computation_time_ms: ms,
                    pbs,
                    peer: None,
                })
            })
            .await;
            metrics
                .inference_duration
                .get_or_create(&SchemeLabels {
                    scheme: scheme.name(),
                })
                .observe(started.elapsed().as_secs_f64());
            count(&metrics, scheme.name(), &answer);
            let _ = reply.send(answer);
        });
    }

    // --- model node ----------------------------------------------------------------------

    /// Starts evaluating `model` for `peer`'s ciphertexts; the returned future runs it on the
    /// pool and yields (result batch, evaluation ms, PBS count, rows, outputs).
    #[allow(clippy::type_complexity)]
    fn evaluate(
        &mut self,
        peer: &str,
        model: &str,
        context: &str,
        batch: Batch,
    ) -> Result<
        impl std::future::Future<
            Output = Result<(Vec<u8>, f64, u64, usize, usize), InferenceActorError>,
        >,
        InferenceActorError,
    > {
        let compiled = self.model(model)?;
        let scheme = compiled.info.scheme;
        if batch.scheme != scheme {
            return Err(InferenceActorError::WrongContext(format!(
                "model `{model}` is {scheme}; the ciphertext was made for {}",
                batch.scheme
            )));
        }
        let slot = records::eval_slot(peer, context);
        let cached = self.eval_keys.get(&slot);
        // Where the key to load is stored: read (hundreds of MB, digest-checked) on the pool.
        let mut load: Option<Vec<u8>> = None;
        if let (Compiled::Mlp(q), None) = (&compiled.compiled, &cached) {
            self.check_budget(q.params())?;
            // A node that is its own model node uses its context's own copy of the key.
            load = Some(if peer == self.me.to_string() {
                records::own_eval_key(context)
            } else {
                records::eval_key(&slot)
            });
        }
        let (pool, metrics, mailbox, store) = (
            self.pool.clone(),
            self.metrics.clone(),
            self.mailbox.clone(),
            self.store.clone(),
        );
        let context = context.to_string();
        Ok(async move {
            let started = Instant::now();
            let result = async {
                let key = match (cached, load) {
                    (Some(k), _) => Some(k),
                    (None, Some(stored)) => {
                        let loaded = on_pool(&pool, &metrics, move || {
                            let bytes = store.get_bytes(trees::CONTEXTS, &stored)?.ok_or_else(|| {
                                InferenceActorError::WrongContext(format!(
                                    "this node holds no evaluation key for context `{context}`; upload it first"
                                ))
                            })?;
                            Ok(Arc::new(MlpServerKey::from_bytes(
                                &bytes,
                                MAX_EVAL_KEY_BYTES,
                            )?))
                        })
                        .await?;
                        let _ = mailbox
                            .send(Command::Internal(Internal::EvalKeyLoaded {
                                slot,
                                key: loaded.clone(),
                                bytes: loaded.params().server_key_bytes(),
                            }))
                            .await;
                        Some(loaded)
                    }
                    (None, None) => None,
                };
                let rows = batch.rows.len();
                let outputs = compiled.info.outputs;
                let compiled = compiled.clone();
                on_pool(&pool, &metrics, move || {
                    let t = Instant::now();
                    let (out, pbs) = evaluate_rows(&compiled, key.as_deref(), &batch)?;
                    Ok((out, t.elapsed().as_secs_f64() * 1e3, pbs, rows, outputs))
                })
                .await
            }
            .await;
            metrics
                .inference_duration
                .get_or_create(&SchemeLabels {
                    scheme: scheme.name(),
                })
                .observe(started.elapsed().as_secs_f64());
            if let Ok((_, _, pbs, _, _)) = &result {
                metrics.inference_pbs.inc_by(*pbs);
            }
            count(&metrics, scheme.name(), &result);
            result
        })
    }

    fn inbound(&mut self, peer: PeerId, bytes: Vec<u8>, reply: oneshot::Sender<Response>) {
        let span = info_span!("inference_inbound", %peer);
        let _enter = span.enter();
        let msg: InferMsg = match messages::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                let _ = reply.send(error_response(&e));
                return;
            }
        };
        debug!(kind = msg.kind(), "inference request");
        let from = peer.to_string();
        let answer = |r: Result<InferReply, InferenceActorError>| match r {
            Ok(r) => Response::Inference(messages::encode(&r)),
            Err(e) => error_response(&e),
        };
        match msg {
            // A peer asks before it uploads an evaluation key: refuse there what the budget
            // cannot hold, not after tens of megabytes have crossed the network.
            InferMsg::Spec { model } => {
                let r = self.model(&model).and_then(|m| {
                    if let Compiled::Mlp(q) = &m.compiled {
                        self.check_budget(q.params())?;
                    }
                    Ok(InferReply::Spec(m.spec()))
                });
                let _ = reply.send(answer(r));
            }
            InferMsg::HasEvalKey { context, key_id } => {
                let slot = records::eval_slot(&from, &context);
                let r = self
                    .stored_eval_key_id(&slot)
                    .map(|held| InferReply::HasEvalKey(held.is_some_and(|id| id == key_id)));
                let _ = reply.send(answer(r));
            }
            InferMsg::EvalKeyPiece {
                context,
                digest,
                index,
                count,
                bytes,
            } => {
                let slot = records::eval_slot(&from, &context);
                if let Some(storing) = self.storing.get_mut(&slot) {
                    // The same key sent again while it is being stored hears how that ends;
                    // another key waits until it has.
                    if storing.digest == digest {
                        storing.waiting.push(reply);
                    } else {
                        let _ = reply.send(answer(Err(InferenceActorError::Unavailable(
                            "another evaluation key for this context is being stored",
                        ))));
                    }
                    return;
                }
                match self.eval_key_piece(&slot, digest, index, count, bytes) {
                    Ok(None) => {
                        let _ = reply.send(answer(Ok(InferReply::PieceAck { complete: false })));
                    }
                    Ok(Some(upload)) => {
                        // The whole key (up to 512 MB) is assembled, checked and stored on the
                        // pool; the actor drops the cached copy, then answers the sender.
                        self.storing.insert(
                            slot.clone(),
                            StoringKey {
                                digest,
                                waiting: vec![reply],
                            },
                        );
                        let (store, mailbox) = (self.store.clone(), self.mailbox.clone());
                        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
                        self.spawn(
                            async move {
                                let outcome = {
                                    let slot = slot.clone();
                                    on_pool(&pool, &metrics, move || {
                                        store_eval_key(&store, &slot, upload)
                                    })
                                    .await
                                };
                                let _ = mailbox
                                    .send(Command::Internal(Internal::EvalKeyStored {
                                        slot,
                                        outcome,
                                    }))
                                    .await;
                            }
                            .in_current_span(),
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(answer(Err(e)));
                    }
                }
            }
            InferMsg::Evaluate {
                model,
                context,
                batch,
            } => {
                let started = Batch::from_bytes(&batch, MAX_BATCH_BYTES)
                    .and_then(|b| self.evaluate(&from, &model, &context, b));
                match started {
                    Ok(fut) => self.spawn(
                        async move {
                            let r = fut
                                .await
                                .map(|(batch, ms, pbs, _, _)| InferReply::Evaluated {
                                    batch,
                                    computation_ms: ms,
                                    pbs,
                                });
                            let _ = reply.send(answer(r));
                        }
                        .in_current_span(),
                    ),
                    Err(e) => {
                        count_outcome(&self.metrics, "unknown", "refused");
                        let _ = reply.send(error_response(&e));
                    }
                }
            }
        }
    }

    /// The key id of the evaluation key stored in `slot`, if any.
    fn stored_eval_key_id(&self, slot: &str) -> Result<Option<[u8; 32]>, InferenceActorError> {
        let tree = self.store.tree(trees::CONTEXTS)?;
        let Some(bytes) = tree.get(records::eval_key_id(slot))? else {
            return Ok(None);
        };
        Ok(<[u8; 32]>::try_from(bytes.as_ref()).ok())
    }

    /// Stores one piece of an evaluation key. Returns the upload once every piece is in, for
    /// [`store_eval_key`] to check and keep.
    fn eval_key_piece(
        &mut self,
        slot: &str,
        digest: [u8; 32],
        index: u32,
        count: u32,
        bytes: Vec<u8>,
    ) -> Result<Option<Upload>, InferenceActorError> {
        let max_pieces = MAX_EVAL_KEY_BYTES.div_ceil(KEY_PIECE_BYTES) as u32;
        if count == 0 || count > max_pieces || index >= count || bytes.len() > KEY_PIECE_BYTES {
            return Err(InferenceActorError::BadInput(format!(
                "evaluation-key piece {index} of {count} ({} bytes) does not fit a key of at most {MAX_EVAL_KEY_BYTES} bytes",
                bytes.len()
            )));
        }
        if index == 0 {
            self.store.ensure_room()?;
        }
        let upload = Upload::open(&self.store, records::EVAL_PIECES, slot, digest)?;
        if upload.put(index, bytes)? < count {
            return Ok(None);
        }
        Ok(Some(upload))
    }
}

/// Assembles a complete evaluation-key upload, checks it against its digest and decodes its
/// envelope and parameters, and keeps it (compressed, as uploaded) for lazy loading.
fn store_eval_key(store: &Store, slot: &str, upload: Upload) -> Result<(), InferenceActorError> {
    let mut whole = Vec::new();
    let intact = upload.assemble(&mut whole)?;
    upload.discard()?;
    if !intact {
        return Err(InferenceActorError::BadInput(
            "the assembled evaluation key does not match its digest".into(),
        ));
    }
    let key = MlpEvaluationKey::from_bytes(&whole, MAX_EVAL_KEY_BYTES)?;
    store.put_bytes(trees::CONTEXTS, &records::eval_key(slot), &whole)?;
    store
        .tree(trees::CONTEXTS)?
        .insert(records::eval_key_id(slot), &key.key_id().0[..])?;
    store.flush()?;
    info!(%slot, "evaluation key stored");
    Ok(())
}

fn error_response(e: &InferenceActorError) -> Response {
    Response::error(e.code(), e.to_string())
}

fn check_batch(ctx: &ClientContext, batch: &Batch, what: &str) -> Result<(), InferenceActorError> {
    if batch.key_id != ctx.info.key_id || batch.scheme != ctx.info.scheme {
        return Err(InferenceActorError::WrongContext(format!(
            "the {what} was made under another context (key {}), not `{}`",
            batch.key_id, ctx.info.fhe_context_id
        )));
    }
    Ok(())
}

fn encrypt_rows(
    ctx: &ClientContext,
    spec: &InputSpec,
    rows: &[Vec<f32>],
) -> Result<Batch, InferenceActorError> {
    if rows.is_empty() || rows.len() > messages::MAX_BATCH_ROWS {
        return Err(InferenceActorError::BadInput(format!(
            "1..={} input rows, got {}",
            messages::MAX_BATCH_ROWS,
            rows.len()
        )));
    }
    let cts = match (&ctx.key, spec) {
        (ClientKey::Linear(k), InputSpec::Linear(s)) => rows
            .iter()
            .map(|r| k.encrypt(s, r).map(|c| c.to_bytes()))
            .collect::<Result<Vec<_>, _>>()?,
        (ClientKey::Mlp(k), InputSpec::Mlp(s)) => rows
            .iter()
            .map(|r| k.encrypt(s, r).map(|c| c.to_bytes()))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(InferenceActorError::WrongContext(format!(
                "context `{}` is {}; the model is {}",
                ctx.info.fhe_context_id,
                ctx.info.scheme,
                spec.scheme()
            )))
        }
    };
    Ok(Batch::new(ctx.info.scheme, ctx.info.key_id.clone(), cts))
}

fn decrypt_rows(ctx: &ClientContext, batch: &Batch) -> Result<Decrypted, InferenceActorError> {
    let values = batch
        .rows
        .iter()
        .map(|row| match &ctx.key {
            ClientKey::Linear(k) => k.decrypt(&LinearResult::from_bytes(row, MAX_BATCH_BYTES)?),
            ClientKey::Mlp(k) => k.decrypt(&MlpResult::from_bytes(row, MAX_BATCH_BYTES)?),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = values.first().map_or(0, Vec::len);
    Ok(Decrypted {
        result_shape: [values.len(), outputs],
        values,
    })
}

/// Evaluates every row (blocking); returns the result batch and the PBS count.
fn evaluate_rows(
    model: &CompiledModel,
    server_key: Option<&MlpServerKey>,
    batch: &Batch,
) -> Result<(Vec<u8>, u64), InferenceActorError> {
    let (rows, pbs) = match (&model.compiled, server_key) {
        (Compiled::Linear(m), _) => {
            let rows = batch
                .rows
                .iter()
                .map(|row| {
                    let ct = LinearCiphertext::from_bytes(row, MAX_BATCH_BYTES)?;
                    Ok(m.evaluate(&ct)?.to_bytes())
                })
                .collect::<Result<Vec<_>, InferenceActorError>>()?;
            (rows, 0)
        }
        (Compiled::Mlp(q), Some(key)) => {
            let rows = batch
                .rows
                .iter()
                .map(|row| {
                    let ct = MlpCiphertext::from_bytes(row, MAX_BATCH_BYTES)?;
                    Ok(key.evaluate(q, &ct)?.to_bytes())
                })
                .collect::<Result<Vec<_>, InferenceActorError>>()?;
            let pbs = (q.pbs_count() * batch.rows.len()) as u64;
            (rows, pbs)
        }
        (Compiled::Mlp(_), None) => {
            return Err(InferenceActorError::WrongContext(
                "no evaluation key for this context".into(),
            ))
        }
    };
    Ok((
        Batch::new(batch.scheme, batch.key_id.clone(), rows).to_bytes(),
        pbs,
    ))
}

async fn ask_peer(
    network: &NetworkHandle,
    peer: PeerId,
    msg: &InferMsg,
) -> Result<InferReply, InferenceActorError> {
    let response = network
        .request(peer, Request::Inference(messages::encode(msg)))
        .await
        .map_err(|e| InferenceActorError::Unreachable {
            peer: peer.to_string(),
            message: e.to_string(),
        })?;
    match response {
        Response::Inference(bytes) => messages::decode(&bytes),
        Response::Error { code, message } => Err(InferenceActorError::from_remote(
            peer.to_string(),
            &code,
            message,
        )),
        other => Err(InferenceActorError::Remote {
            peer: peer.to_string(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

async fn remote_spec(
    network: &NetworkHandle,
    peer: Option<PeerId>,
    model: &str,
) -> Result<InputSpec, InferenceActorError> {
    let peer = peer.ok_or(InferenceActorError::Unavailable("a model node"))?;
    match ask_peer(
        network,
        peer,
        &InferMsg::Spec {
            model: model.to_string(),
        },
    )
    .await?
    {
        InferReply::Spec(spec) => Ok(spec),
        other => Err(InferenceActorError::Remote {
            peer: peer.to_string(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

/// Client side of a remote evaluation: the evaluation key first if the model node lacks it.
async fn remote_infer(
    network: &NetworkHandle,
    store: &Store,
    peer: PeerId,
    ctx: &ClientContext,
    model: &str,
    batch: Vec<u8>,
    rows: usize,
) -> Result<InferOutcome, InferenceActorError> {
    let context = ctx.info.fhe_context_id.clone();
    let unexpected = |r: InferReply| InferenceActorError::Remote {
        peer: peer.to_string(),
        message: format!("unexpected answer {r:?}"),
    };
    if let ClientKey::Mlp(key) = &ctx.key {
        let key_id = key.key_id().0;
        let has = ask_peer(
            network,
            peer,
            &InferMsg::HasEvalKey {
                context: context.clone(),
                key_id,
            },
        )
        .await?;
        if !matches!(has, InferReply::HasEvalKey(true)) {
            // Hundreds of MB read, digest-checked and hashed: on the blocking pool.
            let (store, own) = (store.clone(), context.clone());
            let (bytes, digest) = tokio::task::spawn_blocking(move || {
                let bytes = store
                    .get_bytes(trees::CONTEXTS, &records::own_eval_key(&own))?
                    .ok_or_else(|| {
                        InferenceActorError::Store(format!(
                            "the evaluation key of `{own}` is missing"
                        ))
                    })?;
                let digest = *blake3::hash(&bytes).as_bytes();
                Ok::<_, InferenceActorError>((bytes, digest))
            })
            .await
            .map_err(|_| InferenceActorError::Unavailable("reading the evaluation key"))??;
            let pieces: Vec<&[u8]> = bytes.chunks(KEY_PIECE_BYTES).collect();
            let count = pieces.len() as u32;
            let started = Instant::now();
            for (index, piece) in pieces.iter().enumerate() {
                let msg = InferMsg::EvalKeyPiece {
                    context: context.clone(),
                    digest,
                    index: index as u32,
                    count,
                    bytes: piece.to_vec(),
                };
                match ask_peer(network, peer, &msg).await? {
                    InferReply::PieceAck { .. } => {}
                    other => return Err(unexpected(other)),
                }
            }
            info!(%peer, bytes = bytes.len(), ms = started.elapsed().as_millis() as u64, "evaluation key uploaded");
        }
    }
    let msg = InferMsg::Evaluate {
        model: model.to_string(),
        context,
        batch,
    };
    match ask_peer(network, peer, &msg).await? {
        InferReply::Evaluated {
            batch,
            computation_ms,
            pbs,
        } => {
            let result = Batch::from_bytes(&batch, MAX_BATCH_BYTES)?;
            if result.key_id != ctx.info.key_id || result.rows.len() != rows {
                warn!(%peer, "model node answered a result that does not fit the request");
                return Err(InferenceActorError::Remote {
                    peer: peer.to_string(),
                    message: "the result does not fit the request".into(),
                });
            }
            let outputs = match &ctx.key {
                ClientKey::Linear(_) => result
                    .rows
                    .first()
                    .and_then(|r| LinearResult::from_bytes(r, MAX_BATCH_BYTES).ok())
                    .map_or(0, |r| r.outputs()),
                ClientKey::Mlp(_) => result
                    .rows
                    .first()
                    .and_then(|r| MlpResult::from_bytes(r, MAX_BATCH_BYTES).ok())
                    .map_or(0, |r| r.outputs()),
            };
            Ok(InferOutcome {
                encrypted_result: batch,
                result_shape: [rows, outputs],
                computation_time_ms: computation_ms,
                pbs,
                peer: Some(peer.to_string()),
            })
        }
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_key_cache_stays_within_budget_and_evicts_least_recently_used() {
        let mut cache: EvalKeyCache<u32> = EvalKeyCache::default();
        cache.insert("a".into(), 1, 40, 100);
        cache.insert("b".into(), 2, 40, 100);
        assert_eq!(cache.get("a"), Some(1)); // a is now the most recent
        cache.insert("c".into(), 3, 40, 100); // evicts b
        assert_eq!(cache.get("b"), None);
        assert_eq!((cache.get("a"), cache.get("c")), (Some(1), Some(3)));
        assert_eq!(cache.bytes, 80);
        cache.insert("a".into(), 4, 60, 100); // replaces a: 40 + 60 fits exactly
        assert_eq!((cache.get("c"), cache.bytes), (Some(3), 100));
        cache.insert("a".into(), 5, 61, 100); // one byte more: c goes
        assert_eq!(cache.get("c"), None);
        assert_eq!((cache.get("a"), cache.bytes), (Some(5), 61));
        cache.remove("a");
        assert_eq!((cache.bytes, cache.order.len()), (0, 0));
    }

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

    #[test]
    fn server_key_memory_is_hundreds_of_megabytes_for_2_2() {
        let bytes = MlpParams::Message2Carry2.server_key_bytes();
        assert!(bytes > 10 << 20 && bytes < 2 << 30, "{bytes}");
    }
}
