//! The client's flows: learn a model's input encoding, encrypt for it, have it evaluated (here
//! or on a peer), decrypt the result.

use libp2p::PeerId;

use super::evaluation::Evaluation;
use super::peers::{remote_infer, remote_spec};
use super::{blocking, InferenceActor, Reply};
use crate::inference::messages::{Batch, InputSpec};
use crate::inference::scheme::{ClientContext, MAX_BATCH_BYTES};
use crate::inference::{Decrypted, InferOutcome, InferenceActorError, ModelSpec};

impl InferenceActor {
    pub(super) fn model_spec(
        &mut self,
        model: String,
        peer: Option<PeerId>,
        reply: Reply<ModelSpec>,
    ) {
        match self.local_spec(&model, peer) {
            Some(spec) => {
                let _ = reply.send(spec.map(|s| ModelSpec::new(&model, &s, None)));
            }
            None => {
                let network = self.network.clone();
                self.spawn_answering(async move {
                    let answer = remote_spec(&network, peer, &model)
                        .await
                        .map(|s| ModelSpec::new(&model, &s, peer.map(|p| p.to_string())));
                    let _ = reply.send(answer);
                });
            }
        }
    }

    /// The spec of a model on this node, or `None` when it lives on a peer.
    fn local_spec(
        &mut self,
        model: &str,
        peer: Option<PeerId>,
    ) -> Option<Result<InputSpec, InferenceActorError>> {
        match peer {
            Some(p) if p != self.me => None,
            _ => Some(self.models.get(model).map(|m| m.compiled.spec())),
        }
    }

    pub(super) fn encrypt(
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
        self.spawn_answering(async move {
            let answer = async {
                let spec = match local {
                    Some(spec) => spec?,
                    None => remote_spec(&network, peer, &model).await?,
                };
                blocking("encryption (it panicked)", move || {
                    ctx.encrypt_rows(&spec, &rows).map(|b| b.to_bytes())
                })
                .await
            }
            .await;
            let _ = reply.send(answer);
        });
    }

    /// A batch of this node's `context`, parsed and checked.
    fn own_batch(
        &mut self,
        context: &str,
        batch: &[u8],
        what: &str,
    ) -> Result<(ClientContext, Batch), InferenceActorError> {
        let ctx = self.context(context)?;
        let parsed = Batch::from_bytes(batch, MAX_BATCH_BYTES)?;
        ctx.check_batch(&parsed, what)?;
        Ok((ctx, parsed))
    }

    pub(super) fn infer(
        &mut self,
        context: String,
        model: String,
        peer: Option<PeerId>,
        batch: Vec<u8>,
        reply: Reply<InferOutcome>,
    ) {
        let (ctx, parsed) = match self.own_batch(&context, &batch, "ciphertext") {
            Ok(v) => v,
            Err(e) => {
                super::evaluation::count_outcome(&self.metrics, "unknown", "refused");
                let _ = reply.send(Err(e));
                return;
            }
        };
        match peer {
            Some(p) if p != self.me => {
                let (network, store) = (self.network.clone(), self.store.clone());
                self.spawn_answering(async move {
                    let rows = parsed.rows.len();
                    let answer = remote_infer(&network, &store, p, &ctx, &model, batch, rows).await;
                    let _ = reply.send(answer);
                });
            }
            _ => {
                let me = self.me.to_string();
                match self.prepare(&me, &model, &context, parsed) {
                    Ok(prepared) => self.evaluate(
                        prepared,
                        Box::new(move |result: Result<Evaluation, _>| {
                            let _ = reply.send(result.map(|done| InferOutcome {
                                encrypted_result: done.batch,
                                result_shape: [done.rows, done.outputs],
                                computation_time_ms: done.computation_ms,
                                pbs: done.pbs,
                                peer: None,
                            }));
                        }),
                    ),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    pub(super) fn decrypt(&mut self, context: String, batch: Vec<u8>, reply: Reply<Decrypted>) {
        match self.own_batch(&context, &batch, "encrypted result") {
            Ok((ctx, parsed)) => self.spawn_answering(async move {
                let answer = blocking("decryption (it panicked)", move || {
                    ctx.decrypt_rows(&parsed)
                })
                .await;
                let _ = reply.send(answer);
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}
