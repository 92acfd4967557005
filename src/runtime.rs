//! What every actor runs on, the network actor included: the mailbox a handle sends through,
//! the error of an actor that stopped, and the backoff of retried work. Depends on nothing
//! else in the crate, so that any layer may use it.

use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActorError {
    #[error("the {0} actor has stopped")]
    Stopped(&'static str),
}

/// Waits between tries of something that failed for a while: `first`, then twice as long each
/// time, up to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: std::time::Duration,
    max: std::time::Duration,
}

impl Backoff {
    pub fn new(first: std::time::Duration, max: std::time::Duration) -> Self {
        Backoff { next: first, max }
    }

    /// Sleeps the present wait, and doubles the next.
    pub async fn wait(&mut self) {
        self.wait_at_most(std::time::Duration::MAX).await;
    }

    /// [`Backoff::wait`], sleeping no longer than `limit`.
    pub async fn wait_at_most(&mut self, limit: std::time::Duration) {
        tokio::time::sleep(self.next.min(limit)).await;
        self.next = (self.next * 2).min(self.max);
    }
}

/// The sending half of an actor's mailbox, shared by its handle.
#[derive(Debug)]
pub struct Mailbox<C> {
    name: &'static str,
    tx: mpsc::Sender<C>,
}

impl<C> Clone for Mailbox<C> {
    fn clone(&self) -> Self {
        Mailbox {
            name: self.name,
            tx: self.tx.clone(),
        }
    }
}

impl<C> Mailbox<C> {
    pub fn new(name: &'static str, capacity: usize) -> (Self, mpsc::Receiver<C>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Mailbox { name, tx }, rx)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Messages waiting to be handled.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether the actor's task is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Sends a command without waiting for an answer.
    pub async fn send(&self, command: C) -> Result<(), ActorError> {
        self.tx
            .send(command)
            .await
            .map_err(|_| ActorError::Stopped(self.name))
    }

    /// Sends the command built around a reply channel and awaits the reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> C,
    ) -> Result<T, ActorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ActorError::Stopped(self.name))?;
        rx.await.map_err(|_| ActorError::Stopped(self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_backoff_doubles_its_wait_up_to_its_cap() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(1), ms(4));
        let mut seen = vec![backoff.next];
        for _ in 0..3 {
            backoff.wait().await;
            seen.push(backoff.next);
        }
        assert_eq!(seen, vec![ms(1), ms(2), ms(4), ms(4)]);
    }
}
