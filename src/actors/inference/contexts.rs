//! Client contexts of this node: made with a fresh key, kept in the store with the secret key
//! (which never leaves the node), and cached in memory once read.

use super::{blocking, InferenceActor, Reply, TaskDone};
use crate::inference::records;
use crate::inference::scheme::{ClientContext, ClientKey};
use crate::inference::{ContextInfo, InferenceActorError, Scheme};
use crate::store::trees;

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

fn new_context_id() -> String {
    use rand::RngCore;
    let mut id = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut id);
    format!("ctx_{}", hex::encode(id))
}

impl InferenceActor {
    pub(super) fn create_context(&mut self, scheme: Scheme, reply: Reply<ContextInfo>) {
        if let Err(e) = self.store.ensure_room() {
            let _ = reply.send(Err(e.into()));
            return;
        }
        let store = self.store.clone();
        self.spawn(async move {
            let id = new_context_id();
            // Key generation takes seconds for mlp (the evaluation key): off the executor.
            let made = blocking("key generation (it panicked)", move || {
                let created_ms = crate::session::now_ms();
                let new = ClientKey::generate(scheme);
                let info = ContextInfo {
                    fhe_context_id: id.clone(),
                    scheme,
                    params: new.key.params_name().to_string(),
                    key_id: new.key.key_id_hex(),
                    created_ms,
                    evaluation_key_bytes: new.evaluation_key.as_ref().map(|e| e.len() as u64),
                };
                let record = ContextRecord {
                    info: info.clone(),
                    secret: new.secret.to_vec(),
                };
                store.put(trees::CONTEXTS, &records::context(&id), &record)?;
                if let Some(eval) = &new.evaluation_key {
                    // The client's own copy, uploaded to model nodes on first use.
                    store.put_bytes(trees::CONTEXTS, &records::own_eval_key(&id), eval)?;
                }
                store.flush()?;
                Ok(ClientContext { info, key: new.key })
            })
            .await;
            match made {
                Ok(ctx) => Some(TaskDone::ContextReady(Box::new(ctx), reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    None
                }
            }
        });
    }

    pub(super) fn list_contexts(&self) -> Result<Vec<ContextInfo>, InferenceActorError> {
        Ok(self
            .store
            .scan_prefix::<ContextRecord>(trees::CONTEXTS, records::CONTEXTS.as_bytes())?
            .into_iter()
            .map(|(_, r)| r.info.clone())
            .collect())
    }

    pub(super) fn delete_context(&mut self, id: &str) -> Result<(), InferenceActorError> {
        self.context(id)?;
        self.contexts.remove(id);
        self.store.remove(trees::CONTEXTS, &records::context(id))?;
        self.store
            .remove(trees::CONTEXTS, &records::own_eval_key(id))?;
        self.store.flush()?;
        Ok(())
    }

    /// A context of this node, from memory or the store.
    pub(super) fn context(&mut self, id: &str) -> Result<ClientContext, InferenceActorError> {
        if let Some(c) = self.contexts.get(id) {
            return Ok(c.clone());
        }
        let record: ContextRecord = self
            .store
            .get(trees::CONTEXTS, &records::context(id))?
            .ok_or_else(|| InferenceActorError::UnknownContext(id.to_string()))?;
        let ctx = ClientContext {
            info: record.info.clone(),
            key: ClientKey::from_secret(record.info.scheme, &record.secret)?,
        };
        self.contexts.insert(id.to_string(), ctx.clone());
        Ok(ctx)
    }
}
