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

/// Blocking work that panicked: tokio's report of it (the panic's message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);

/// Runs `job`, CPU-bound or blocking (encryption, evaluation, a store read of megabytes), on
/// tokio's blocking pool, so that the async workers go on serving everything else.
pub async fn off_executor<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Panicked> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| Panicked(e.to_string()))
}

/// How long to go on trying something that may fail for a while (a peer that cannot be
/// reached, a peer's rate limit): waits of a [`Backoff`], until `attempts` tries have been
/// made or `until` has passed, whichever is first. The first try is always made.
#[derive(Debug)]
pub struct Retry {
    pub backoff: Backoff,
    /// Tries in all (`u32::MAX`: no bound but the time).
    pub attempts: u32,
    /// No try starts after this (`None`: no bound but the count).
    pub until: Option<tokio::time::Instant>,
}

/// How a [`Retry`] ended without success.
#[derive(Debug)]
pub struct GaveUp<E> {
    /// The last failure.
    pub error: E,
    /// Tries made.
    pub attempts: u32,
    /// Whether the tries ran out (`true`), or a failure that does not pass ended them.
    pub exhausted: bool,
}

impl Retry {
    /// Makes `attempt` until it succeeds, fails in a way `passes` does not accept, or the tries
    /// run out; `retrying` hears of every failure tried again (to log it).
    pub async fn run<T, E, F>(
        mut self,
        mut attempt: impl FnMut() -> F,
        passes: impl Fn(&E) -> bool,
        mut retrying: impl FnMut(u32, &E),
    ) -> Result<T, GaveUp<E>>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if !passes(&error) {
                return Err(GaveUp {
                    error,
                    attempts,
                    exhausted: false,
                });
            }
            let left = self.until.map_or(std::time::Duration::MAX, |until| {
                until.saturating_duration_since(tokio::time::Instant::now())
            });
            if attempts >= self.attempts || left.is_zero() {
                return Err(GaveUp {
                    error,
                    attempts,
                    exhausted: true,
                });
            }
            retrying(attempts, &error);
            self.backoff.wait_at_most(left).await;
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_retry_stops_at_success_a_lasting_failure_its_count_or_its_time() {
        let ms = Duration::from_millis;
        let retry = |attempts, until: Option<Duration>| Retry {
            backoff: Backoff::new(ms(100), ms(100)),
            attempts,
            until: until.map(|d| tokio::time::Instant::now() + d),
        };
        let passes = |e: &&str| *e == "again";
        // Succeeds on the third try.
        let mut tries = 0;
        let got = retry(5, None)
            .run(
                || {
                    tries += 1;
                    let now = tries;
                    async move {
                        if now < 3 {
                            Err("again")
                        } else {
                            Ok(now)
                        }
                    }
                },
                passes,
                |_, _| {},
            )
            .await;
        assert_eq!(got.ok(), Some(3));
        // A failure that does not pass ends it at once.
        let gave_up = retry(5, None)
            .run(|| async { Err::<(), _>("no") }, passes, |_, _| {})
            .await
            .unwrap_err();
        assert_eq!((gave_up.attempts, gave_up.exhausted), (1, false));
        // The count runs out, every retry heard.
        let mut heard = Vec::new();
        let gave_up = retry(4, None)
            .run(
                || async { Err::<(), _>("again") },
                passes,
                |n, _| heard.push(n),
            )
            .await
            .unwrap_err();
        assert_eq!((gave_up.attempts, gave_up.exhausted), (4, true));
        assert_eq!(heard, vec![1, 2, 3]);
        // The time runs out: tries at 0, 100, 200 and 250 ms (the last wait is cut short).
        let started = tokio::time::Instant::now();
        let gave_up = retry(u32::MAX, Some(ms(250)))
            .run(|| async { Err::<(), _>("again") }, passes, |_, _| {})
            .await
            .unwrap_err();
        assert_eq!((gave_up.attempts, gave_up.exhausted), (4, true));
        assert_eq!(started.elapsed(), ms(250));
    }
}
