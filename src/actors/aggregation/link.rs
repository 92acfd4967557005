//! How the actor's tasks reach peers: request-response over the network, or this node's own
//! mailbox for messages to itself, with retries for transport failures.

use super::*;
use crate::net::{NetError, Request};

const SEND_ATTEMPTS: u32 = 8;

/// Longest wait between two attempts of [`Link::send_plan`]: a rate limit refills a plan
/// within seconds.
const PLAN_RETRY_MAX: Duration = Duration::from_secs(10);

/// Longest wait between two attempts of [`Link::deliver`].
const NOTICE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Attempts of [`Link::send_briefly`]: 0.2 + 0.4 + 0.8 s of backoff.
const BRIEF_ATTEMPTS: u32 = 4;

/// What [`Link::send_briefly`] allows for an answer's size on top of
/// `p2p.unreachable_after_secs`: a member computes a release (a pass over the session's
/// length) and sends it, so a large session's answer is given a second per 2 MiB (16 Mbit/s:
/// a 64 MiB release has 37 s, within `p2p.request_timeout_secs`' default of 120 s).
const BRIEF_BYTES_PER_SEC: u64 = 2 << 20;

/// Everything a background task needs to talk to peers, or to this node through its mailbox.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) me: PeerId,
    pub(super) network: NetworkHandle,
    pub(super) mailbox: Mailbox<Command>,
    /// `p2p.unreachable_after_secs`: how long [`Link::send_within_limit`] retries.
    pub(super) unreachable_after: Duration,
}

impl Link {
    /// Sends an encoded session message and waits for the answer; messages to this node
    /// itself go through the actor's own mailbox.
    pub(super) async fn send_encoded(
        &self,
        peer: &str,
        bytes: Vec<u8>,
    ) -> Result<AggReply, SessionError> {
        let peer_id: PeerId = peer
            .parse()
            .map_err(|_| SessionError::BadInput(format!("`{peer}` is not a peer id")))?;
        let response = if peer_id == self.me {
            let me = self.me;
            self.mailbox
                .ask(|reply| Command::Inbound {
                    peer: me,
                    bytes,
                    reply,
                })
                .await
                .map_err(stopped)?
        } else {
            self.network
                .request(peer_id, Request::Aggregation(bytes))
                .await
                .map_err(|e| match e {
                    NetError::Outbound { .. } | NetError::Stopped => SessionError::Unreachable {
                        peer: peer.to_string(),
                        message: e.to_string(),
                    },
                    other => SessionError::Remote {
                        peer: peer.to_string(),
                        message: other.to_string(),
                    },
                })?
        };
        match response {
            Response::Aggregation(bytes) => messages::decode(&bytes),
            // A peer that is starting or stopping answers `unavailable`: worth another try.
            Response::Error { code, message } if code == "unavailable" => {
                Err(SessionError::Unreachable {
                    peer: peer.to_string(),
                    message,
                })
            }
            Response::Error { code, message } => {
                Err(SessionError::from_remote(peer.to_string(), &code, message))
            }
            other => Err(SessionError::Remote {
                peer: peer.to_string(),
                message: format!("unexpected answer {other:?}"),
            }),
        }
    }

    /// [`Link::send_encoded`], retried with backoff while the failure is a transport one, at
    /// most [`SEND_ATTEMPTS`] times.
    pub(super) async fn send_retrying(
        &self,
        peer: &str,
        msg: &AggMsg,
    ) -> Result<AggReply, SessionError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send_encoded(peer, messages::encode(msg)?).await {
                Err(SessionError::Unreachable { message, .. }) if attempt < SEND_ATTEMPTS => {
                    debug!(%peer, %message, attempt, "retrying");
                    backoff.wait().await;
                }
                other => return other,
            }
        }
    }

    /// [`Link::send_encoded`] to a committee member while the round waits on it: a few quick
    /// retries, all within `p2p.unreachable_after_secs` plus a second per [`BRIEF_BYTES_PER_SEC`] of
    /// `answer_bytes`, since an absent member is replaced rather than waited for. The bound
    /// covers an attempt under way too: a member that is up but frozen (stopped, swapping,
    /// wedged) holds its connection open and would otherwise be waited for until
    /// `p2p.request_timeout_secs`, once per attempt.
    pub(super) async fn send_briefly(
        &self,
        peer: &str,
        msg: &AggMsg,
        answer_bytes: u64,
    ) -> Result<AggReply, SessionError> {
        let within =
            self.unreachable_after + Duration::from_secs(answer_bytes / BRIEF_BYTES_PER_SEC);
        let deadline = tokio::time::Instant::now() + within;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent =
                tokio::time::timeout_at(deadline, self.send_encoded(peer, messages::encode(msg)?));
            let message = match sent.await {
                Err(_) => format!("no answer within {:.1} s", within.as_secs_f64()),
                Ok(Err(SessionError::Unreachable { message, .. })) => message,
                Ok(other) => return other,
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if attempt >= BRIEF_ATTEMPTS || left.is_zero() {
                return Err(SessionError::Unreachable {
                    peer: peer.to_string(),
                    message,
                });
            }
            debug!(%peer, %message, attempt, "retrying");
            backoff.wait_at_most(left).await;
        }
    }

    /// Delivers a plan until the peer stores it or refuses it for good, up to `until_ms`
    /// (Unix milliseconds: the phase's deadline). Besides transport failures, refusals that
    /// pass with time are retried: a peer's rate limit or quota on plans
    /// (`rate_limited`, `quota_exceeded`) and a peer short of disk.
    pub(super) async fn send_plan(
        &self,
        peer: &str,
        msg: &AggMsg,
        until_ms: u64,
    ) -> Result<AggReply, SessionError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), PLAN_RETRY_MAX);
        loop {
            let error = match self.send_encoded(peer, messages::encode(msg)?).await {
                Err(
                    e @ (SessionError::Unreachable { .. }
                    | SessionError::Refused {
                        code: "rate_limited" | "quota_exceeded" | "insufficient_storage",
                        ..
                    }),
                ) => e,
                other => return other,
            };
            let left = Duration::from_millis(until_ms.saturating_sub(now_ms()));
            if left.is_zero() {
                return Err(error);
            }
            debug!(%peer, %error, "plan not stored yet; retrying");
            backoff.wait_at_most(left).await;
        }
    }

    /// [`Link::send_encoded`] for a client that waits on the answer: transport failures are retried
    /// only until `p2p.unreachable_after_secs` have passed since the first attempt, and then
    /// reported as the peer being unreachable. An attempt under way is not cut short: a
    /// reachable peer receiving a large piece may take longer than that.
    pub(super) async fn send_within_limit(
        &self,
        peer: &str,
        encode: impl Fn() -> Result<Vec<u8>, SessionError>,
    ) -> Result<AggReply, SessionError> {
        let start = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.send_encoded(peer, encode()?).await {
                Err(SessionError::Unreachable { message, .. }) => {
                    let left = self.unreachable_after.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Err(SessionError::Unreachable {
                            peer: peer.to_string(),
                            message: format!(
                                "{message} (gave up after {:.1} s, p2p.unreachable_after_secs)",
                                start.elapsed().as_secs_f64()
                            ),
                        });
                    }
                    debug!(%peer, %message, "retrying");
                    backoff.wait_at_most(left).await;
                }
                other => return other,
            }
        }
    }

    /// Delivers a notice (a result, an end) until the peer answers, however long it stays
    /// unreachable, up to `give_up_at_ms` (Unix milliseconds: by then the peer has dropped the
    /// session, see `quota::expires_at_ms`): waits grow to [`NOTICE_RETRY_MAX`], and the task
    /// ends with the actor. Any answer, a refusal included (a peer that never saw the plan),
    /// ends the delivery. The first attempt is always made.
    pub(super) async fn deliver(
        &self,
        peer: &str,
        encode: impl Fn() -> Result<Vec<u8>, SessionError>,
        give_up_at_ms: u64,
    ) -> Result<AggReply, SessionError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), NOTICE_RETRY_MAX);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.send_encoded(peer, encode()?).await {
                Err(SessionError::Unreachable { message, .. }) => {
                    let left = Duration::from_millis(give_up_at_ms.saturating_sub(now_ms()));
                    if left.is_zero() {
                        return Err(SessionError::Unreachable {
                            peer: peer.to_string(),
                            message: format!(
                                "{message}; given up after {attempt} attempts: the peer has \
                                 dropped the session by now"
                            ),
                        });
                    }
                    if attempt.is_multiple_of(10) {
                        warn!(%peer, %message, attempt, "a notice still waits for its peer");
                    }
                    backoff.wait_at_most(left).await;
                }
                other => return other,
            }
        }
    }
}
