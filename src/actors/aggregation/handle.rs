//! The aggregation actor's mailbox: the commands it takes and the handle that sends them.

use libp2p::PeerId;
use tokio::sync::oneshot;

use super::error_response;
use crate::actors::{stopped, Mailbox};
use crate::net::Response;
use crate::session::{
    Phase, SessionError, SessionInfo, SessionResult, SessionSpec, SubmitReceipt, Update,
};

pub(super) type Reply<T> = oneshot::Sender<Result<T, SessionError>>;

pub(super) enum Command {
    Create(Box<SessionSpec>, Reply<SessionInfo>),
    List(oneshot::Sender<Vec<SessionInfo>>),
    Get(String, Reply<SessionInfo>),
    /// Answers once session `.0` is no longer in phase `.1` (at once if it is not).
    WaitChange(String, Phase, Reply<SessionInfo>),
    Submit(String, Update, Reply<SubmitReceipt>),
    Result(String, Reply<SessionResult>),
    Inbound {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Response>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Create(..) => "Create",
            Command::List(_) => "List",
            Command::Get(..) => "Get",
            Command::WaitChange(..) => "WaitChange",
            Command::Submit(..) => "Submit",
            Command::Result(..) => "Result",
            Command::Inbound { .. } => "Inbound",
        })
    }
}

#[derive(Clone, Debug)]
pub struct AggregationHandle {
    pub(super) mailbox: Mailbox<Command>,
}

impl AggregationHandle {
    pub fn mailbox_depth(&self) -> usize {
        self.mailbox.depth()
    }
    pub fn is_running(&self) -> bool {
        !self.mailbox.is_closed()
    }

    /// Creates a session with this node as coordinator and delivers its plan.
    pub async fn create(&self, spec: SessionSpec) -> Result<SessionInfo, SessionError> {
        self.mailbox
            .ask(|r| Command::Create(Box::new(spec), r))
            .await
            .map_err(stopped)?
    }

    pub async fn list(&self) -> Result<Vec<SessionInfo>, SessionError> {
        self.mailbox.ask(Command::List).await.map_err(stopped)
    }

    pub async fn get(&self, id: &str) -> Result<SessionInfo, SessionError> {
        let id = id.to_string();
        self.mailbox
            .ask(|r| Command::Get(id, r))
            .await
            .map_err(stopped)?
    }

    /// Session `id` once its phase is no longer `seen` (at once if it already is not). The
    /// caller bounds the wait; dropping the future withdraws it.
    pub async fn wait_change(&self, id: &str, seen: Phase) -> Result<SessionInfo, SessionError> {
        let id = id.to_string();
        self.mailbox
            .ask(|r| Command::WaitChange(id, seen, r))
            .await
            .map_err(stopped)?
    }

    /// This node as a participant: encrypts the update locally and uploads it to the
    /// coordinator; returns once the coordinator holds the whole update durably.
    pub async fn submit(
        &self,
        id: &str,
        update: impl Into<Update>,
    ) -> Result<SubmitReceipt, SessionError> {
        let (id, update) = (id.to_string(), update.into());
        self.mailbox
            .ask(|r| Command::Submit(id, update, r))
            .await
            .map_err(stopped)?
    }

    pub async fn result(&self, id: &str) -> Result<SessionResult, SessionError> {
        let id = id.to_string();
        self.mailbox
            .ask(|r| Command::Result(id, r))
            .await
            .map_err(stopped)?
    }

    /// A session message from `peer`, answered with the response to send back.
    pub async fn inbound(&self, peer: PeerId, bytes: Vec<u8>) -> Response {
        match self
            .mailbox
            .ask(|reply| Command::Inbound { peer, bytes, reply })
            .await
        {
            Ok(response) => response,
            Err(e) => error_response(&stopped(e)),
        }
    }
}
