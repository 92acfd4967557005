//! The aggregation actor: one state machine per secure-aggregation session, persisted at
//! every transition (DESIGN §4).

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{ActorError, Mailbox};
use crate::store::{trees, Store};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AggregationStatus {
    /// Sessions held in the store.
    pub sessions: usize,
}

#[derive(Debug)]
enum Command {
    Status(oneshot::Sender<AggregationStatus>),
}

#[derive(Clone, Debug)]
pub struct AggregationHandle {
    mailbox: Mailbox<Command>,
}

impl AggregationHandle {
    pub fn mailbox_depth(&self) -> usize {
        self.mailbox.depth()
    }
    pub fn is_running(&self) -> bool {
        !self.mailbox.is_closed()
    }
    pub async fn status(&self) -> Result<AggregationStatus, ActorError> {
        self.mailbox.ask(Command::Status).await
    }
}

struct AggregationActor {
    store: Store,
    rx: mpsc::Receiver<Command>,
}

pub fn spawn(store: Store, cancel: CancellationToken) -> (AggregationHandle, impl std::future::Future<Output = ()>) {
    let (mailbox, rx) = Mailbox::new("aggregation", 64);
    let actor = AggregationActor { store, rx };
    (AggregationHandle { mailbox }, actor.run(cancel))
}

impl AggregationActor {
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
        info!("aggregation actor stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let sessions = self.store.tree(trees::SESSIONS).map(|t| t.len()).unwrap_or(0);
                let _ = reply.send(AggregationStatus { sessions });
            }
        }
    }
}
