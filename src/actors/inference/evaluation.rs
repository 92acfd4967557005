//! Evaluation on the model node: the bounded pool, the cache of loaded evaluation keys, the
//! keys clients upload in pieces, and the one-call flow that evaluates an inline model.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tracing::info;

use super::{InferenceActor, Reply, StoringKey, TaskDone};
use crate::crypto::inference::{InferenceWire, MlpEvaluationKey, MlpParams, MlpServerKey, Model};
use crate::inference::messages::{self, Batch, InferReply, KEY_PIECE_BYTES};
use crate::inference::records;
use crate::inference::registry::CompiledModel;
use crate::inference::scheme::MAX_EVAL_KEY_BYTES;
use crate::inference::{InferOutcome, InferenceActorError, ModelOptions, ModelRecord};
use crate::metrics::{InferenceLabels, NodeMetrics, SchemeLabels};
use crate::net::Response;
use crate::store::pieces::Upload;
use crate::store::{trees, Store};

/// One evaluation on the model node, as it ends.
pub(super) struct Evaluation {
    /// The result batch, one row per input row.
    pub batch: Vec<u8>,
    /// Time spent evaluating (loading the key aside).
    pub computation_ms: f64,
    pub pbs: u64,
    pub rows: usize,
    pub outputs: usize,
}

/// How an evaluation's requester hears its end.
pub(super) type OnDone = Box<dyn FnOnce(Result<Evaluation, InferenceActorError>) + Send>;

/// Where the evaluation key of a prepared evaluation comes from.
enum KeySource {
    /// The scheme needs none (linear).
    None,
    Cached(Arc<MlpServerKey>),
    /// Read from the store at `at` and cached under `slot`, unless the slot's key is replaced
    /// meanwhile (its `generation` then differs).
    Stored {
        slot: String,
        generation: u64,
        at: Vec<u8>,
        context: String,
    },
}

/// An evaluation checked and ready to run.
pub(super) struct Prepared {
    compiled: Arc<CompiledModel>,
    batch: Batch,
    key: KeySource,
}

/// An evaluation under way: waiting for its key, or running.
pub(super) struct EvaluationJob {
    compiled: Arc<CompiledModel>,
    batch: Batch,
    started: Instant,
    on_done: OnDone,
    /// The span of the request, which the evaluation runs in after its key is loaded.
    span: tracing::Span,
}

/// Loaded evaluation keys within a byte budget, least recently used out first.
pub(super) struct EvalKeyCache<K = Arc<MlpServerKey>> {
    keys: HashMap<String, (K, u64)>,
    order: VecDeque<String>,
    bytes: u64,
    /// How often each slot's stored key was replaced: a copy read before is not cached.
    generations: HashMap<String, u64>,
}

impl<K> Default for EvalKeyCache<K> {
    fn default() -> Self {
        EvalKeyCache {
            keys: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            generations: HashMap::new(),
        }
    }
}

impl<K: Clone> EvalKeyCache<K> {
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

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

    /// The stored key of `slot` is replaced: the copy in memory, and any read under way, are
    /// stale.
    fn replaced(&mut self, slot: &str) {
        self.remove(slot);
        *self.generations.entry(slot.to_string()).or_default() += 1;
    }

    fn generation(&self, slot: &str) -> u64 {
        self.generations.get(slot).copied().unwrap_or(0)
    }
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
    super::blocking("an inference worker (it panicked)", job).await
}

/// Evaluates every row of `batch` (blocking), timing the evaluation alone.
fn evaluate_timed(
    model: &CompiledModel,
    key: Option<&MlpServerKey>,
    batch: &Batch,
) -> Result<Evaluation, InferenceActorError> {
    let t = Instant::now();
    let (out, pbs) = model.compiled.evaluate_rows(key, batch)?;
    Ok(Evaluation {
        batch: out,
        computation_ms: t.elapsed().as_secs_f64() * 1e3,
        pbs,
        rows: batch.rows.len(),
        outputs: model.info.outputs,
    })
}

/// Counts a request by its outcome: served, refused (the client's fault) or failed.
pub(super) fn count_outcome(metrics: &NodeMetrics, scheme: &'static str, outcome: &'static str) {
    metrics
        .inference_requests
        .get_or_create(&InferenceLabels { scheme, outcome })
        .inc();
}

/// Records how a request that started at `started` ended.
fn finished<T>(
    metrics: &NodeMetrics,
    scheme: &'static str,
    started: Instant,
    result: &Result<T, InferenceActorError>,
) {
    metrics
        .inference_duration
        .get_or_create(&SchemeLabels { scheme })
        .observe(started.elapsed().as_secs_f64());
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

impl InferenceActor {
    /// Refuses up front a model whose evaluation key would not fit the memory budget.
    pub(super) fn check_budget(&self, params: MlpParams) -> Result<(), InferenceActorError> {
        let need = params.server_key_bytes();
        if need > self.limits.memory_budget_bytes {
            return Err(InferenceActorError::OverBudget(format!(
                "the evaluation key needs about {need} bytes loaded; the budget is {}",
                self.limits.memory_budget_bytes
            )));
        }
        Ok(())
    }

    /// Checks an evaluation of `model` for `peer`'s ciphertexts made under `context`, and
    /// finds its evaluation key.
    pub(super) fn prepare(
        &mut self,
        peer: &str,
        model: &str,
        context: &str,
        batch: Batch,
    ) -> Result<Prepared, InferenceActorError> {
        let compiled = self.models.get(model)?;
        let scheme = compiled.info.scheme;
        if batch.scheme != scheme {
            return Err(InferenceActorError::WrongContext(format!(
                "model `{model}` is {scheme}; the ciphertext was made for {}",
                batch.scheme
            )));
        }
        let key = match compiled.compiled.eval_key_params() {
            None => KeySource::None,
            Some(params) => {
                let slot = records::eval_slot(peer, context);
                match self.eval_keys.get(&slot) {
                    Some(key) => KeySource::Cached(key),
                    None => {
                        self.check_budget(params)?;
                        // A node that is its own model node uses its context's own copy.
                        let at = if peer == self.me.to_string() {
                            records::own_eval_key(context)
                        } else {
                            records::eval_key(&slot)
                        };
                        KeySource::Stored {
                            generation: self.eval_keys.generation(&slot),
                            slot,
                            at,
                            context: context.to_string(),
                        }
                    }
                }
            }
        };
        Ok(Prepared {
            compiled,
            batch,
            key,
        })
    }

    /// Runs a prepared evaluation on the pool, reading its key first when it is not loaded
    /// (hundreds of MB, digest-checked: on the pool too); `on_done` hears how it ends.
    pub(super) fn evaluate(&mut self, prepared: Prepared, on_done: OnDone) {
        let job = EvaluationJob {
            compiled: prepared.compiled,
            batch: prepared.batch,
            started: Instant::now(),
            on_done,
            span: tracing::Span::current(),
        };
        match prepared.key {
            KeySource::None => self.run_evaluation(job, None),
            KeySource::Cached(key) => self.run_evaluation(job, Some(key)),
            KeySource::Stored {
                slot,
                generation,
                at,
                context,
            } => {
                let (pool, metrics, store) =
                    (self.pool.clone(), self.metrics.clone(), self.store.clone());
                self.spawn(async move {
                    let key = on_pool(&pool, &metrics, move || {
                        let bytes = store.get_bytes(trees::CONTEXTS, &at)?.ok_or_else(|| {
                            InferenceActorError::WrongContext(format!(
                                "this node holds no evaluation key for context `{context}`; upload it first"
                            ))
                        })?;
                        Ok(Arc::new(MlpServerKey::from_bytes(
                            &bytes,
                            MAX_EVAL_KEY_BYTES,
                        )?))
                    })
                    .await;
                    Some(TaskDone::EvalKeyLoaded {
                        slot,
                        generation,
                        key,
                        job: Box::new(job),
                    })
                });
            }
        }
    }

    /// A key read for `job`: cached for the next request, then used.
    pub(super) fn eval_key_loaded(
        &mut self,
        slot: String,
        generation: u64,
        key: Result<Arc<MlpServerKey>, InferenceActorError>,
        job: EvaluationJob,
    ) {
        let span = job.span.clone();
        let _in_request = span.enter();
        match key {
            Ok(key) => {
                if generation == self.eval_keys.generation(&slot) {
                    let bytes = key.params().server_key_bytes();
                    self.eval_keys.insert(
                        slot,
                        key.clone(),
                        bytes,
                        self.limits.memory_budget_bytes,
                    );
                    self.metrics
                        .eval_key_cache_bytes
                        .set(self.eval_keys.bytes as i64);
                }
                self.run_evaluation(job, Some(key));
            }
            Err(e) => {
                let result = Err(e);
                finished(
                    &self.metrics,
                    job.compiled.info.scheme.name(),
                    job.started,
                    &result,
                );
                (job.on_done)(result);
            }
        }
    }

    fn run_evaluation(&mut self, job: EvaluationJob, key: Option<Arc<MlpServerKey>>) {
        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
        self.spawn_answering(async move {
            let EvaluationJob {
                compiled,
                batch,
                started,
                on_done,
                ..
            } = job;
            let scheme = compiled.info.scheme.name();
            let result = on_pool(&pool, &metrics, move || {
                evaluate_timed(&compiled, key.as_deref(), &batch)
            })
            .await;
            if let Ok(done) = &result {
                metrics.inference_pbs.inc_by(done.pbs);
            }
            finished(&metrics, scheme, started, &result);
            on_done(result);
        });
    }

    /// The original service's one call: compile the inline model, encrypt `rows` under
    /// `context`, evaluate here, answer the encrypted result.
    pub(super) fn inline(
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
        self.spawn_answering(async move {
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
                let cts = ctx.encrypt_rows(&compiled.compiled.spec(), &rows)?;
                let done = evaluate_timed(&compiled, ctx.key.server_key().as_ref(), &cts)?;
                Ok(InferOutcome {
                    encrypted_result: done.batch,
                    result_shape: [done.rows, done.outputs],
                    computation_time_ms: done.computation_ms,
                    pbs: done.pbs,
                    peer: None,
                })
            })
            .await;
            finished(&metrics, scheme.name(), started, &answer);
            let _ = reply.send(answer);
        });
    }

    // --- evaluation keys uploaded by clients ---------------------------------------------

    /// The key id of the evaluation key stored in `slot`, if any.
    pub(super) fn stored_eval_key_id(
        &self,
        slot: &str,
    ) -> Result<Option<[u8; 32]>, InferenceActorError> {
        let tree = self.store.tree(trees::CONTEXTS)?;
        let Some(bytes) = tree.get(records::eval_key_id(slot))? else {
            return Ok(None);
        };
        Ok(<[u8; 32]>::try_from(bytes.as_ref()).ok())
    }

    /// One piece of an evaluation key from a client. Once every piece is in, the whole key
    /// (up to 512 MB) is assembled, checked and stored on the pool; the actor then drops the
    /// cached copy and answers every sender waiting on it ([`Self::eval_key_stored`]).
    pub(super) fn eval_key_piece(
        &mut self,
        slot: String,
        digest: [u8; 32],
        index: u32,
        count: u32,
        bytes: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<Response>,
    ) {
        if let Some(storing) = self.storing.get_mut(&slot) {
            // The same key sent again while it is being stored hears how that ends;
            // another key waits until it has.
            if storing.digest == digest {
                storing.waiting.push(reply);
            } else {
                let _ = reply.send(super::peers::error_response(
                    &InferenceActorError::Unavailable(
                        "another evaluation key for this context is being stored",
                    ),
                ));
            }
            return;
        }
        let upload = match self.put_eval_key_piece(&slot, digest, index, count, bytes) {
            Ok(None) => {
                let _ = reply.send(Response::Inference(messages::encode(
                    &InferReply::PieceAck { complete: false },
                )));
                return;
            }
            Ok(Some(upload)) => upload,
            Err(e) => {
                let _ = reply.send(super::peers::error_response(&e));
                return;
            }
        };
        self.storing.insert(
            slot.clone(),
            StoringKey {
                digest,
                waiting: vec![reply],
            },
        );
        let store = self.store.clone();
        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
        self.spawn(async move {
            let outcome = {
                let slot = slot.clone();
                on_pool(&pool, &metrics, move || {
                    store_eval_key(&store, &slot, upload)
                })
                .await
            };
            Some(TaskDone::EvalKeyStored { slot, outcome })
        });
    }

    /// Stores one piece of an evaluation key. Returns the upload once every piece is in, for
    /// [`store_eval_key`] to check and keep.
    fn put_eval_key_piece(
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

    /// The upload of an evaluation key into `slot` is over: every sender hears how.
    pub(super) fn eval_key_stored(
        &mut self,
        slot: String,
        outcome: Result<(), InferenceActorError>,
    ) {
        if outcome.is_ok() {
            self.eval_keys.replaced(&slot);
            self.metrics
                .eval_key_cache_bytes
                .set(self.eval_keys.bytes as i64);
        }
        let response = match &outcome {
            Ok(()) => {
                Response::Inference(messages::encode(&InferReply::PieceAck { complete: true }))
            }
            Err(e) => super::peers::error_response(e),
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
        // A replaced key: its copy goes, and a read begun before is told apart.
        cache.insert("c".into(), 6, 10, 100);
        let before = cache.generation("c");
        cache.replaced("c");
        assert_eq!(cache.get("c"), None);
        assert_ne!(cache.generation("c"), before);
        assert_eq!(cache.generation("never"), 0);
    }

    #[test]
    fn server_key_memory_is_hundreds_of_megabytes_for_2_2() {
        let bytes = MlpParams::Message2Carry2.server_key_bytes();
        assert!(bytes > 10 << 20 && bytes < 2 << 30, "{bytes}");
    }
}
