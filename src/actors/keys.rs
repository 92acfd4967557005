//! The key actor: the only place secret material lives. It hands out public keys, public-key
//! shares and partial decryptions, never secrets.

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{ActorError, Mailbox};
use crate::store::{trees, Store};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KeysStatus {
    /// Session key shares held in the store.
    pub key_shares: usize,
}

#[derive(Debug)]
enum Command {
    Status(oneshot::Sender<KeysStatus>),
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
}

struct KeysActor {
    store: Store,
    rx: mpsc::Receiver<Command>,
}

pub fn spawn(store: Store, cancel: CancellationToken) -> (KeysHandle, impl std::future::Future<Output = ()>) {
    let (mailbox, rx) = Mailbox::new("keys", 64);
    let actor = KeysActor { store, rx };
    (KeysHandle { mailbox }, actor.run(cancel))
}

impl KeysActor {
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
        info!("keys actor stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let key_shares = self.store.tree(trees::KEYS).map(|t| t.len()).unwrap_or(0);
                let _ = reply.send(KeysStatus { key_shares });
            }
        }
    }
}
