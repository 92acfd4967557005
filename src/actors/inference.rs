//! The inference actor: model registry and encrypted evaluation on a bounded blocking pool
//! (DESIGN §3.2).

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{ActorError, Mailbox};
use crate::store::{trees, Store};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InferenceStatus {
    /// Models registered in the store.
    pub models: usize,
}

#[derive(Debug)]
enum Command {
    Status(oneshot::Sender<InferenceStatus>),
}

#[derive(Clone, Debug)]
pub struct InferenceHandle {
    mailbox: Mailbox<Command>,
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
}

struct InferenceActor {
    store: Store,
    rx: mpsc::Receiver<Command>,
}

pub fn spawn(
    store: Store,
    cancel: CancellationToken,
) -> (InferenceHandle, impl std::future::Future<Output = ()>) {
    let (mailbox, rx) = Mailbox::new("inference", 64);
    let actor = InferenceActor { store, rx };
    (InferenceHandle { mailbox }, actor.run(cancel))
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

    fn handle(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let models = self.store.tree(trees::MODELS).map(|t| t.len()).unwrap_or(0);
                let _ = reply.send(InferenceStatus { models });
            }
        }
    }
}
