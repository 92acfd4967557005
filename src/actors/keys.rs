//! The key actor: the only place secret material lives. As a participant a node's one-time
//! key (one seed per set of members) is drawn here, persisted before any seed leaves, and used
//! for the one encryption the session allows; as a committee member the seed bundles it
//! receives are kept here, and key releases are computed here. Every secret is flushed before
//! the answer that depends on it leaves, and deleted (only digests stay elsewhere) when its
//! session ends.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{stopped, ActorError, Mailbox};
use crate::crypto::kahe::{
    self, Committee, ParticipantKey, PreparedEncryption, ReleaseRequest, Seed, SeedBundle,
    SessionContext,
};
use crate::metrics::{NodeMetrics, OutcomeLabels};
use crate::session::{records, SessionError};
use crate::store::Store;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KeysStatus {
    /// Secret records held: participant keys and member seed bundles.
    pub secrets: usize,
}

/// A participant's key as stored.
#[derive(Serialize, Deserialize)]
struct KeyRecord {
    committee: Committee,
    seeds: Zeroizing<Vec<Seed>>,
    /// Drives the encryption's noise and rounding: the same update seals to the same bytes.
    encryption_seed: Zeroizing<Seed>,
}

type Reply<T> = oneshot::Sender<Result<T, SessionError>>;

enum Command {
    Status(oneshot::Sender<KeysStatus>),
    /// Draws (once) and persists this node's key for a session.
    CreateKey {
        session: String,
        committee: Committee,
        reply: Reply<()>,
    },
    Bundle {
        session: String,
        member: u32,
        reply: Reply<SeedBundle>,
    },
    Prepare {
        context: Box<SessionContext>,
        session: String,
        reply: Reply<PreparedEncryption>,
    },
    StoreBundle {
        session: String,
        participant: String,
        bundle: Box<SeedBundle>,
        reply: Reply<()>,
    },
    Release {
        session: String,
        member: u32,
        context: Box<SessionContext>,
        request: Box<ReleaseRequest>,
        reply: Reply<Vec<u8>>,
    },
    Forget {
        session: String,
        reply: Reply<()>,
    },
    /// Deletes the secrets of every session not in `live`; answers how many sessions had some.
    KeepOnly {
        live: std::collections::BTreeSet<String>,
        reply: Reply<usize>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Status(_) => "Status",
            Command::CreateKey { .. } => "CreateKey",
            Command::Bundle { .. } => "Bundle",
            Command::Prepare { .. } => "Prepare",
            Command::StoreBundle { .. } => "StoreBundle",
            Command::Release { .. } => "Release",
            Command::Forget { .. } => "Forget",
            Command::KeepOnly { .. } => "KeepOnly",
        })
    }
}

#[derive(Clone, Debug)]
pub struct KeysHandle {
    mailbox: Mailbox<Command>,
}

impl KeysHandle {
    pub fn mailbox_depth(&self) -> usize {
        self.mailbox.depth()
    }
    pub fn is_running(&self) -> bool {
        !self.mailbox.is_closed()
    }
    pub async fn status(&self) -> Result<KeysStatus, ActorError> {
        self.mailbox.ask(Command::Status).await
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SessionError> {
        self.mailbox.ask(make).await.map_err(stopped)?
    }

    /// Draws this node's one-time key for `session` and persists it; a key already drawn is
    /// kept (the seeds may already be with members).
    pub async fn create_key(
        &self,
        session: &str,
        committee: Committee,
    ) -> Result<(), SessionError> {
        let session = session.to_string();
        self.ask(|reply| Command::CreateKey {
            session,
            committee,
            reply,
        })
        .await
    }

    /// The seeds member `member` receives of this node's key.
    pub async fn bundle(&self, session: &str, member: u32) -> Result<SeedBundle, SessionError> {
        let session = session.to_string();
        self.ask(|reply| Command::Bundle {
            session,
            member,
            reply,
        })
        .await
    }

    /// This node's encryption of zero for the session (drawn on the blocking pool).
    pub async fn prepare(
        &self,
        session: &str,
        context: SessionContext,
    ) -> Result<PreparedEncryption, SessionError> {
        let session = session.to_string();
        self.ask(|reply| Command::Prepare {
            context: Box::new(context),
            session,
            reply,
        })
        .await
    }

    /// Persists a participant's bundle (checked by the caller) before the caller acknowledges.
    pub async fn store_bundle(
        &self,
        session: &str,
        participant: &str,
        bundle: SeedBundle,
    ) -> Result<(), SessionError> {
        let (session, participant) = (session.to_string(), participant.to_string());
        self.ask(|reply| Command::StoreBundle {
            session,
            participant,
            bundle: Box::new(bundle),
            reply,
        })
        .await
    }

    /// Member `member`'s key release for `request` (computed on the blocking pool). The caller
    /// has checked and persisted the contributor set.
    pub async fn release(
        &self,
        session: &str,
        member: u32,
        context: SessionContext,
        request: ReleaseRequest,
    ) -> Result<Vec<u8>, SessionError> {
        let session = session.to_string();
        self.ask(|reply| Command::Release {
            session,
            member,
            context: Box::new(context),
            request: Box::new(request),
            reply,
        })
        .await
    }

    /// Deletes every secret of a session.
    pub async fn forget(&self, session: &str) -> Result<(), SessionError> {
        let session = session.to_string();
        self.ask(|reply| Command::Forget { session, reply }).await
    }

    /// Deletes every secret of the sessions not in `live` (at start: a node that stopped
    /// between a session's end and its secrets' deletion deletes them then); answers how many
    /// sessions had some.
    pub async fn keep_only(
        &self,
        live: std::collections::BTreeSet<String>,
    ) -> Result<usize, SessionError> {
        self.ask(|reply| Command::KeepOnly { live, reply }).await
    }
}

struct KeysActor {
    store: Store,
    metrics: NodeMetrics,
    rx: mpsc::Receiver<Command>,
}

pub fn spawn(
    store: Store,
    metrics: NodeMetrics,
    cancel: CancellationToken,
) -> (KeysHandle, impl std::future::Future<Output = ()>) {
    let (mailbox, rx) = Mailbox::new("keys", 64);
    let actor = KeysActor { store, metrics, rx };
    (KeysHandle { mailbox }, actor.run(cancel))
}

/// The stored key of `session`, if any.
fn load_key(store: &Store, session: &str) -> Result<Option<ParticipantKey>, SessionError> {
    let key = records::participant_key(session);
    match store.get::<KeyRecord>(records::SECRETS_TREE, key.as_bytes())? {
        None => Ok(None),
        Some(record) => Ok(Some(ParticipantKey::from_seeds(
            record.committee,
            record.seeds,
            record.encryption_seed,
        )?)),
    }
}

fn missing_key(session: &str) -> SessionError {
    SessionError::UnknownSession(format!("{session} (this node holds no key for it)"))
}

impl KeysActor {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.rx.recv() => match command {
                    Some(c) => self.handle(c).await,
                    None => break,
                },
            }
        }
        info!("keys actor stopped");
    }

    async fn flush(&self) -> Result<(), SessionError> {
        self.store.flush_async().await?;
        Ok(())
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let secrets = self
                    .store
                    .tree(records::SECRETS_TREE)
                    .map(|t| t.len())
                    .unwrap_or(0);
                let _ = reply.send(KeysStatus { secrets });
            }
            Command::CreateKey {
                session,
                committee,
                reply,
            } => {
                let _ = reply.send(self.create_key(&session, committee).await);
            }
            Command::Bundle {
                session,
                member,
                reply,
            } => {
                let bundle = load_key(&self.store, &session).and_then(|key| {
                    let key = key.ok_or_else(|| missing_key(&session))?;
                    if member >= key.committee().size() {
                        return Err(SessionError::BadInput(format!("no member {member}")));
                    }
                    Ok(key.bundle_for(member))
                });
                let _ = reply.send(bundle);
            }
            Command::Prepare {
                context,
                session,
                reply,
            } => {
                // Drawing the pad is a fraction of a second of CPU per million values: off the
                // actor, with the key read there too.
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || {
                    let result = load_key(&store, &session).and_then(|key| {
                        let key = key.ok_or_else(|| missing_key(&session))?;
                        Ok(key.prepare(&context)?)
                    });
                    let _ = reply.send(result);
                });
            }
            Command::StoreBundle {
                session,
                participant,
                bundle,
                reply,
            } => {
                let key = records::member_seeds(&session, &participant);
                let stored = self
                    .store
                    .put(records::SECRETS_TREE, key.as_bytes(), &*bundle)
                    .map_err(SessionError::from);
                let result = match stored {
                    Ok(()) => self.flush().await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Command::Release {
                session,
                member,
                context,
                request,
                reply,
            } => {
                let (store, metrics) = (self.store.clone(), self.metrics.clone());
                tokio::task::spawn_blocking(move || {
                    let result = release(&store, &session, member, &context, &request);
                    let outcome = if result.is_ok() {
                        "answered"
                    } else {
                        "refused"
                    };
                    metrics
                        .key_releases
                        .get_or_create(&OutcomeLabels { outcome })
                        .inc();
                    if let Err(e) = &result {
                        warn!(%session, error = %e, "key release refused");
                    }
                    let _ = reply.send(result);
                });
            }
            Command::Forget { session, reply } => {
                let _ = reply.send(self.forget(&session).await);
            }
            Command::KeepOnly { live, reply } => {
                let _ = reply.send(self.keep_only(&live).await);
            }
        }
    }

    async fn create_key(&self, session: &str, committee: Committee) -> Result<(), SessionError> {
        if load_key(&self.store, session)?.is_some() {
            return Ok(());
        }
        let key = ParticipantKey::generate(committee);
        let record = KeyRecord {
            committee,
            seeds: Zeroizing::new(key.seeds().to_vec()),
            encryption_seed: Zeroizing::new(*key.encryption_seed()),
        };
        let id = records::participant_key(session);
        self.store
            .put(records::SECRETS_TREE, id.as_bytes(), &record)?;
        self.flush().await
    }

    async fn keep_only(
        &self,
        live: &std::collections::BTreeSet<String>,
    ) -> Result<usize, SessionError> {
        // One pass over the secrets' keys, one flush: `forget` per session would scan and
        // flush once each.
        let tree = records::SECRETS_TREE;
        let mut dead_sessions = std::collections::BTreeSet::new();
        let mut dead_keys = Vec::new();
        for key in self.store.tree(tree)?.iter().keys() {
            let key = key?;
            let session = std::str::from_utf8(&key)
                .ok()
                .and_then(records::secret_session);
            if let Some(session) = session.filter(|s| !live.contains(*s)) {
                dead_sessions.insert(session.to_string());
                dead_keys.push(key);
            }
        }
        for key in &dead_keys {
            self.store.remove(tree, key)?;
        }
        if !dead_keys.is_empty() {
            self.flush().await?;
        }
        Ok(dead_sessions.len())
    }

    async fn forget(&self, session: &str) -> Result<(), SessionError> {
        let tree = records::SECRETS_TREE;
        self.store
            .remove(tree, records::participant_key(session).as_bytes())?;
        let prefix = records::member_seeds_prefix(session);
        let keys: Vec<sled::IVec> = self
            .store
            .tree(tree)?
            .scan_prefix(prefix.as_bytes())
            .keys()
            .filter_map(Result::ok)
            .collect();
        for key in keys {
            self.store.remove(tree, &key)?;
        }
        self.flush().await
    }
}

/// Loads the bundles of `request`'s contributors and computes the release (blocking).
fn release(
    store: &Store,
    session: &str,
    member: u32,
    context: &SessionContext,
    request: &ReleaseRequest,
) -> Result<Vec<u8>, SessionError> {
    let mut bundles = std::collections::BTreeMap::new();
    for p in &request.contributors {
        let key = records::member_seeds(session, p);
        if let Some(bundle) = store.get::<SeedBundle>(records::SECRETS_TREE, key.as_bytes())? {
            bundles.insert(p.clone(), bundle);
        }
    }
    Ok(kahe::release(context, member, request, |p| bundles.get(p))?)
}
