//! Calls between a client's node and a model node: the requests a peer sends here
//! ([`InferenceActor::inbound`]), and this node's requests to a model node.

use std::time::Instant;

use libp2p::PeerId;
use tokio::sync::oneshot;
use tracing::{debug, info, info_span, warn};

use super::evaluation::Evaluation;
use super::{blocking, InferenceActor};
use crate::codes::PeerFailure;
use crate::inference::messages::{self, Batch, InferMsg, InferReply, InputSpec, KEY_PIECE_BYTES};
use crate::inference::records;
use crate::inference::scheme::{ClientContext, MAX_BATCH_BYTES};
use crate::inference::{InferOutcome, InferenceActorError};
use crate::net::rpc::{self, RpcError};
use crate::net::{NetworkHandle, Request, Response};
use crate::store::{trees, Store, StoreFailure};

impl From<RpcError> for InferenceActorError {
    fn from(e: RpcError) -> Self {
        match e {
            // A request that could not be sent (too large) is reported as before this module
            // existed: the model node is out of reach for it.
            RpcError::Unreachable { peer, message } | RpcError::NotSent { peer, message } => {
                PeerFailure::unreachable(peer, message).into()
            }
            RpcError::Refused {
                peer,
                code,
                message,
            } => InferenceActorError::from_remote(peer, &code, message),
            RpcError::Unexpected { peer, message } => PeerFailure::remote(peer, message).into(),
        }
    }
}

pub(super) fn error_response(e: &InferenceActorError) -> Response {
    Response::error(e.code(), e.to_string())
}

fn answer(r: Result<InferReply, InferenceActorError>) -> Response {
    match r {
        Ok(r) => Response::Inference(messages::encode(&r)),
        Err(e) => error_response(&e),
    }
}

impl InferenceActor {
    /// A request from a peer (inside `Request::Inference`).
    pub(super) fn inbound(
        &mut self,
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Response>,
    ) {
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
        match msg {
            // A peer asks before it uploads an evaluation key: refuse there what the budget
            // cannot hold, not after tens of megabytes have crossed the network.
            InferMsg::Spec { model } => {
                let r = self.models.get(&model).and_then(|m| {
                    if let Some(params) = m.compiled.eval_key_params() {
                        self.check_budget(params)?;
                    }
                    Ok(InferReply::Spec(m.compiled.spec()))
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
                self.eval_key_piece(slot, digest, index, count, bytes, reply);
            }
            InferMsg::Evaluate {
                model,
                context,
                batch,
            } => {
                let prepared = Batch::from_bytes(&batch, MAX_BATCH_BYTES)
                    .and_then(|b| self.prepare(&from, &model, &context, b));
                match prepared {
                    Ok(prepared) => self.evaluate(
                        prepared,
                        Box::new(move |result: Result<Evaluation, _>| {
                            let _ = reply.send(answer(result.map(|done| InferReply::Evaluated {
                                batch: done.batch,
                                computation_ms: done.computation_ms,
                                pbs: done.pbs,
                            })));
                        }),
                    ),
                    Err(e) => {
                        super::evaluation::count_outcome(&self.metrics, "unknown", "refused");
                        let _ = reply.send(error_response(&e));
                    }
                }
            }
        }
    }
}

async fn ask_peer(
    network: &NetworkHandle,
    peer: PeerId,
    msg: &InferMsg,
) -> Result<InferReply, InferenceActorError> {
    let bytes = rpc::call(network, peer, Request::Inference(messages::encode(msg))).await?;
    messages::decode(&bytes)
}

/// A model node's answer of another kind than the request's.
fn unexpected(peer: PeerId, answer: InferReply) -> InferenceActorError {
    PeerFailure::remote(peer.to_string(), format!("unexpected answer {answer:?}")).into()
}

pub(super) async fn remote_spec(
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
        other => Err(unexpected(peer, other)),
    }
}

/// Client side of a remote evaluation: the evaluation key first if the model node lacks it.
pub(super) async fn remote_infer(
    network: &NetworkHandle,
    store: &Store,
    peer: PeerId,
    ctx: &ClientContext,
    model: &str,
    batch: Vec<u8>,
    rows: usize,
) -> Result<InferOutcome, InferenceActorError> {
    let context = ctx.info.fhe_context_id.clone();
    if let Some(key_id) = ctx.key.evaluation_key_id() {
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
            let (bytes, digest) = blocking("reading the evaluation key", move || {
                let bytes = store
                    .get_bytes(trees::CONTEXTS, &records::own_eval_key(&own))?
                    .ok_or_else(|| {
                        InferenceActorError::Store(StoreFailure::Corrupt(format!(
                            "the evaluation key of `{own}` is missing"
                        )))
                    })?;
                let digest = *blake3::hash(&bytes).as_bytes();
                Ok((bytes, digest))
            })
            .await?;
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
                    other => return Err(unexpected(peer, other)),
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
                return Err(PeerFailure::remote(
                    peer.to_string(),
                    "the result does not fit the request",
                )
                .into());
            }
            let outputs = result.rows.first().map_or(0, |r| ctx.key.result_outputs(r));
            Ok(InferOutcome {
                encrypted_result: batch,
                result_shape: [rows, outputs],
                computation_time_ms: computation_ms,
                pbs,
                peer: Some(peer.to_string()),
            })
        }
        other => Err(unexpected(peer, other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_failures_become_inference_errors() {
        let of = |e: RpcError| InferenceActorError::from(e).code();
        let refused = |code: &str| RpcError::Refused {
            peer: "p".into(),
            code: code.into(),
            message: "m".into(),
        };
        assert_eq!(of(refused("unknown_model")), "unknown_model");
        assert_eq!(of(refused("over_budget")), "over_budget");
        assert_eq!(of(refused("duplicate")), "remote");
        assert_eq!(of(refused("unavailable")), "remote");
        let not_sent = RpcError::NotSent {
            peer: "p".into(),
            message: "request of 70000000 bytes exceeds p2p.max_request_bytes".into(),
        };
        assert_eq!(of(not_sent), "unreachable");
    }
}
