//! The node's actors besides the network: each is a tokio task that owns its state and is
//! reached through a cloneable handle over a bounded mailbox (request + oneshot reply).

pub mod aggregation;
pub mod inference;
pub mod keys;
pub mod series;

pub use crate::runtime::{ActorError, Backoff, Mailbox};

/// A stopped actor, as the session layer reports it.
pub(crate) fn stopped(e: ActorError) -> crate::session::SessionError {
    let ActorError::Stopped(name) = e;
    crate::session::SessionError::Unavailable(name)
}
