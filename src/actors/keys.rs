//! The key actor: the only place secret material lives. It hands out commitments, public-key
//! shares and partial decryptions, never secrets. Every change to a share (drawn, bound,
//! answered) is flushed to the store before the answer leaves, so a restart can neither lose a
//! share nor make it answer twice.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn};
use zeroize::{Zeroize, Zeroizing};

use super::{stopped, ActorError, Mailbox};
use crate::crypto::{
    DecryptionRequest, KeyCommitment, PartialDecryption, PublicKeyShare, SecretKeyShare, SessionTag,
};
use crate::metrics::{NodeMetrics, OutcomeLabels};
use crate::session::machine::collective_key;
use crate::session::{SessionError, SessionPlan};
use crate::store::{trees, Store};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KeysStatus {
    /// Session key shares held in the store.
    pub key_shares: usize,
}

/// One session's share as stored: the plan it was drawn for, its public half, and the secret
/// in the crypto layer's own serialised form.
#[derive(Serialize, Deserialize)]
struct MemberRecord {
    plan: SessionPlan,
    member: u32,
    public: PublicKeyShare,
    commitments: Option<Vec<KeyCommitment>>,
    bound: bool,
    #[serde(with = "serde_bytes")]
    secret: Vec<u8>,
}

impl Drop for MemberRecord {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

type Reply<T> = oneshot::Sender<Result<T, SessionError>>;

enum Command {
    Status(oneshot::Sender<KeysStatus>),
    Commit {
        me: String,
        from: String,
        plan: Box<SessionPlan>,
        reply: Reply<KeyCommitment>,
    },
    Reveal {
        from: String,
        session: String,
        commitments: Vec<KeyCommitment>,
        reply: Reply<PublicKeyShare>,
    },
    Bind {
        from: String,
        plan: Box<SessionPlan>,
        commitments: Vec<KeyCommitment>,
        shares: Vec<PublicKeyShare>,
        reply: Reply<()>,
    },
    Decrypt {
        from: String,
        session: String,
        request: Box<DecryptionRequest>,
        reply: Reply<PartialDecryption>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Status(_) => "Status",
            Command::Commit { .. } => "Commit",
            Command::Reveal { .. } => "Reveal",
            Command::Bind { .. } => "Bind",
            Command::Decrypt { .. } => "Decrypt",
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

    /// Draws this node's share for `plan` (once; asking again returns the same commitment).
    pub async fn commit(
        &self,
        me: String,
        from: String,
        plan: SessionPlan,
    ) -> Result<KeyCommitment, SessionError> {
        self.mailbox
            .ask(|reply| Command::Commit {
                me,
                from,
                plan: Box::new(plan),
                reply,
            })
            .await
            .map_err(stopped)?
    }

    /// Reveals the public share once every member's commitment is known.
    pub async fn reveal(
        &self,
        from: String,
        session: String,
        commitments: Vec<KeyCommitment>,
    ) -> Result<PublicKeyShare, SessionError> {
        self.mailbox
            .ask(|reply| Command::Reveal {
                from,
                session,
                commitments,
                reply,
            })
            .await
            .map_err(stopped)?
    }

    /// Binds the share to the collective key rebuilt from all revealed shares.
    pub async fn bind(
        &self,
        from: String,
        plan: SessionPlan,
        commitments: Vec<KeyCommitment>,
        shares: Vec<PublicKeyShare>,
    ) -> Result<(), SessionError> {
        self.mailbox
            .ask(|reply| Command::Bind {
                from,
                plan: Box::new(plan),
                commitments,
                shares,
                reply,
            })
            .await
            .map_err(stopped)?
    }

    /// This member's partial decryption of the session's aggregate: once per session.
    pub async fn decrypt(
        &self,
        from: String,
        session: String,
        request: DecryptionRequest,
    ) -> Result<PartialDecryption, SessionError> {
        self.mailbox
            .ask(|reply| Command::Decrypt {
                from,
                session,
                request: Box::new(request),
                reply,
            })
            .await
            .map_err(stopped)?
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

    fn load(&self, session: &str) -> Result<MemberRecord, SessionError> {
        self.store
            .get::<MemberRecord>(trees::KEYS, session.as_bytes())?
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))
    }

    async fn save(&self, record: &MemberRecord) -> Result<(), SessionError> {
        self.store
            .put(trees::KEYS, record.plan.id.as_bytes(), record)?;
        self.store.flush_async().await?;
        Ok(())
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let key_shares = self.store.tree(trees::KEYS).map(|t| t.len()).unwrap_or(0);
                let _ = reply.send(KeysStatus { key_shares });
            }
            Command::Commit {
                me,
                from,
                plan,
                reply,
            } => {
                let span = info_span!("keygen", session = %plan.id);
                let _ = reply.send(self.commit(&me, &from, *plan).await.inspect_err(|e| {
                    let _g = span.enter();
                    warn!(error = %e, "key generation refused");
                }));
            }
            Command::Reveal {
                from,
                session,
                commitments,
                reply,
            } => {
                let _ = reply.send(self.reveal(&from, &session, commitments).await);
            }
            Command::Bind {
                from,
                plan,
                commitments,
                shares,
                reply,
            } => {
                let _ = reply.send(self.bind(&from, &plan, commitments, shares).await);
            }
            Command::Decrypt {
                from,
                session,
                request,
                reply,
            } => {
                let result = self.decrypt(&from, &session, *request).await;
                let outcome = match &result {
                    Ok(_) => "answered",
                    Err(_) => "refused",
                };
                self.metrics
                    .partial_decryptions
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc();
                if let Err(e) = &result {
                    warn!(%session, error = %e, "partial decryption refused");
                }
                let _ = reply.send(result);
            }
        }
    }

    async fn commit(
        &mut self,
        me: &str,
        from: &str,
        plan: SessionPlan,
    ) -> Result<KeyCommitment, SessionError> {
        plan.check_coordinator(from)?;
        let member = plan
            .member_index(me)
            .ok_or_else(|| SessionError::NotAllowed {
                peer: me.to_string(),
                role: "a committee member",
                session: plan.id.clone(),
            })?;
        plan.params.validate()?;
        if let Some(existing) = self
            .store
            .get::<MemberRecord>(trees::KEYS, plan.id.as_bytes())?
        {
            // A retransmitted request gets the same answer; a different plan under a used id
            // would mean a second key for one session tag.
            if existing.plan == plan {
                return Ok(existing.public.commitment());
            }
            return Err(SessionError::Duplicate(format!(
                "session id `{}` already has a key share for a different plan",
                plan.id
            )));
        }
        let tag = SessionTag::derive(&plan.id);
        let params = plan.params.clone();
        let (share, public) =
            tokio::task::spawn_blocking(move || SecretKeyShare::generate(&params, tag, member))
                .await
                .map_err(|_| SessionError::Unavailable("key generation"))??;
        let record = MemberRecord {
            plan,
            member,
            public,
            commitments: None,
            bound: false,
            secret: share.to_secret_bytes().to_vec(),
        };
        self.save(&record).await?;
        Ok(record.public.commitment())
    }

    async fn reveal(
        &mut self,
        from: &str,
        session: &str,
        commitments: Vec<KeyCommitment>,
    ) -> Result<PublicKeyShare, SessionError> {
        let mut record = self.load(session)?;
        record.plan.check_coordinator(from)?;
        if commitments.len() != record.plan.committee.len() {
            return Err(SessionError::BadInput(format!(
                "{} commitments for a committee of {}",
                commitments.len(),
                record.plan.committee.len()
            )));
        }
        let own = record.public.commitment();
        if commitments.get(record.member as usize) != Some(&own) {
            return Err(SessionError::BadInput(
                "the commitment list does not carry this member's commitment".into(),
            ));
        }
        match &record.commitments {
            Some(seen) if *seen != commitments => {
                return Err(SessionError::Duplicate(
                    "shares were already revealed against other commitments".into(),
                ))
            }
            Some(_) => {}
            None => {
                record.commitments = Some(commitments);
                self.save(&record).await?;
            }
        }
        Ok(record.public.clone())
    }

    async fn bind(
        &mut self,
        from: &str,
        plan: &SessionPlan,
        commitments: Vec<KeyCommitment>,
        shares: Vec<PublicKeyShare>,
    ) -> Result<(), SessionError> {
        let mut record = self.load(&plan.id)?;
        record.plan.check_coordinator(from)?;
        if *plan != record.plan {
            // Refused as before; the message could say "different plan" (noted on #4).
            return Err(SessionError::NotAllowed {
                peer: from.to_string(),
                role: "the coordinator",
                session: record.plan.id.clone(),
            });
        }
        if record.bound {
            return Ok(());
        }
        if record.commitments.as_ref() != Some(&commitments) {
            return Err(SessionError::BadInput(
                "the key does not use the commitments this member revealed against".into(),
            ));
        }
        // Milliseconds of hashing and transforms: off the executor.
        let plan = plan.clone();
        let record = tokio::task::spawn_blocking(move || {
            let key = collective_key(&plan, &commitments, &shares)?;
            let mut share = SecretKeyShare::from_secret_bytes(&record.secret)?;
            share.bind(&key, &record.public)?;
            record.secret.zeroize();
            record.secret = share.to_secret_bytes().to_vec();
            record.bound = true;
            Ok::<_, SessionError>(record)
        })
        .await
        .map_err(|_| SessionError::Unavailable("the key binding"))??;
        self.save(&record).await
    }

    async fn decrypt(
        &mut self,
        from: &str,
        session: &str,
        request: DecryptionRequest,
    ) -> Result<PartialDecryption, SessionError> {
        let mut record = self.load(session)?;
        let plan = record.plan.clone();
        plan.check_coordinator(from)?;
        if !record.bound {
            return Err(SessionError::WrongPhase {
                session: session.to_string(),
                phase: crate::session::Phase::Keygen,
                what: "this member's share is not bound to a collective key yet".into(),
            });
        }
        if let Some(stranger) = request
            .contributors
            .iter()
            .find(|c| !plan.is_participant(c))
        {
            return Err(SessionError::NotAllowed {
                peer: stranger.clone(),
                role: "a participant",
                session: plan.id.clone(),
            });
        }
        if (request.contributors.len() as u32) < plan.min_participants {
            return Err(SessionError::BadInput(format!(
                "the aggregate has {} contributors; the session requires at least {}",
                request.contributors.len(),
                plan.min_participants
            )));
        }
        let min = plan.min_participants;
        // Rebuilding the share (a transform per slot) and decrypting: off the executor.
        let secret = Zeroizing::new(std::mem::take(&mut record.secret));
        let (share, result) = tokio::task::spawn_blocking(move || {
            let mut share = SecretKeyShare::from_secret_bytes(&secret)?;
            let result = share.partial_decrypt(&request, min);
            Ok::<_, SessionError>((share, result))
        })
        .await
        .map_err(|_| SessionError::Unavailable("partial decryption"))??;
        let partial = result.map_err(|e| match e {
            crate::crypto::CryptoError::KeyAlreadyUsed => SessionError::Duplicate(format!(
                "this member already decrypted a different aggregate for session `{session}`; it answers once"
            )),
            other => other.into(),
        })?;
        // Durable before it leaves: after a crash the share must still know it answered.
        record.secret = share.to_secret_bytes().to_vec();
        self.save(&record).await?;
        Ok(partial)
    }
}
