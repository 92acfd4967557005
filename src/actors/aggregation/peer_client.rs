//! How the actor's tasks reach peers: request-response over the network, or this node's own
//! mailbox for messages to itself, with retries for transport failures.

use super::*;
use crate::net::rpc::{self, Kind, RpcError};
use crate::net::Request;
use crate::runtime::{GaveUp, Retry};

const SEND_ATTEMPTS: u32 = 8;

/// Longest wait between two attempts of [`PeerClient::send_plan`]: a rate limit refills a plan
/// within seconds.
const PLAN_RETRY_MAX: Duration = Duration::from_secs(10);

/// Longest wait between two attempts of [`PeerClient::deliver`].
const NOTICE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Attempts of [`PeerClient::send_briefly`]: 0.2 + 0.4 + 0.8 s of backoff.
const BRIEF_ATTEMPTS: u32 = 4;

/// What [`PeerClient::send_briefly`] allows for an answer's size on top of
/// `p2p.unreachable_after_secs`: a member computes a release (a pass over the session's
/// length) and sends it, so a large session's answer is given a second per 2 MiB (16 Mbit/s:
/// a 64 MiB release has 37 s, within `p2p.request_timeout_secs`' default of 120 s).
const BRIEF_BYTES_PER_SEC: u64 = 2 << 20;

/// Everything a background task needs to talk to peers, or to this node through its mailbox.
#[derive(Clone)]
pub(super) struct PeerClient {
    pub(super) me: PeerId,
    pub(super) network: NetworkHandle,
    pub(super) mailbox: Mailbox<Command>,
    /// `p2p.unreachable_after_secs`: how long [`PeerClient::send_within_limit`] retries.
    pub(super) unreachable_after: Duration,
}

impl From<RpcError> for SessionError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Unreachable { peer, message } => {
                PeerFailure::unreachable(peer, message).into()
            }
            // A peer that is starting or stopping answers `unavailable`: worth another try.
            RpcError::Refused {
                peer,
                code,
                message,
            } if code == "unavailable" => PeerFailure::unreachable(peer, message).into(),
            RpcError::Refused {
                peer,
                code,
                message,
            } => SessionError::from_remote(peer, &code, message),
            RpcError::NotSent { peer, message } | RpcError::Unexpected { peer, message } => {
                PeerFailure::remote(peer, message).into()
            }
        }
    }
}

/// Whether a failure to reach a peer may pass with time.
fn unreachable(e: &SessionError) -> bool {
    matches!(e, SessionError::Peer(PeerFailure::Unreachable { .. }))
}

/// Retries of `attempts` tries, waits from 200 ms doubling to `max_wait`, none started after
/// `until`.
fn retry(attempts: u32, max_wait: Duration, until: Option<tokio::time::Instant>) -> Retry {
    Retry {
        backoff: Backoff::new(Duration::from_millis(200), max_wait),
        attempts,
        until,
    }
}

/// The instant Unix milliseconds `at_ms` will be.
fn instant_of(at_ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms()))
}

/// Says how often an unreachable peer was tried, in the error's message.
fn gave_up(gave_up: GaveUp<SessionError>, why: impl FnOnce(u32) -> String) -> SessionError {
    match gave_up.error {
        SessionError::Peer(PeerFailure::Unreachable { peer, message }) if gave_up.exhausted => {
            PeerFailure::unreachable(peer, format!("{message}{}", why(gave_up.attempts))).into()
        }
        error => error,
    }
}

impl PeerClient {
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
        let answer = if peer_id == self.me {
            let me = self.me;
            let response = self
                .mailbox
                .ask(|reply| Command::Inbound {
                    peer: me,
                    bytes,
                    reply,
                })
                .await
                .map_err(stopped)?;
            rpc::answer(peer, Kind::Aggregation, response)
        } else {
            rpc::call(&self.network, peer_id, Request::Aggregation(bytes)).await
        };
        messages::decode(&answer?)
    }

    /// [`PeerClient::send_encoded`], retried with backoff while the failure is a transport one, at
    /// most [`SEND_ATTEMPTS`] times.
    pub(super) async fn send_retrying(
        &self,
        peer: &str,
        msg: &AggMsg,
    ) -> Result<AggReply, SessionError> {
        retry(SEND_ATTEMPTS, Duration::from_secs(5), None)
            .run(
                || async { self.send_encoded(peer, messages::encode(msg)?).await },
                unreachable,
                |attempt, e| debug!(%peer, error = %e, attempt, "retrying"),
            )
            .await
            .map_err(|g| g.error)
    }

    /// [`PeerClient::send_encoded`] to a committee member while the round waits on it: a few quick
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
        retry(BRIEF_ATTEMPTS, Duration::from_secs(5), Some(deadline))
            .run(
                || async {
                    let sent = self.send_encoded(peer, messages::encode(msg)?);
                    tokio::time::timeout_at(deadline, sent)
                        .await
                        .unwrap_or_else(|_| {
                            Err(PeerFailure::unreachable(
                                peer,
                                format!("no answer within {:.1} s", within.as_secs_f64()),
                            )
                            .into())
                        })
                },
                unreachable,
                |attempt, e| debug!(%peer, error = %e, attempt, "retrying"),
            )
            .await
            .map_err(|g| g.error)
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
        retry(u32::MAX, PLAN_RETRY_MAX, Some(instant_of(until_ms)))
            .run(
                || async { self.send_encoded(peer, messages::encode(msg)?).await },
                |e| {
                    matches!(
                        e,
                        SessionError::Peer(
                            PeerFailure::Unreachable { .. }
                                | PeerFailure::Refused {
                                    code: "rate_limited"
                                        | "quota_exceeded"
                                        | "insufficient_storage",
                                    ..
                                }
                        )
                    )
                },
                |_, e| debug!(%peer, error = %e, "plan not stored yet; retrying"),
            )
            .await
            .map_err(|g| g.error)
    }

    /// [`PeerClient::send_encoded`] for a client that waits on the answer: transport failures are retried
    /// only until `p2p.unreachable_after_secs` have passed since the first attempt, and then
    /// reported as the peer being unreachable. An attempt under way is not cut short: a
    /// reachable peer receiving a large piece may take longer than that.
    pub(super) async fn send_within_limit(
        &self,
        peer: &str,
        encode: impl Fn() -> Result<Vec<u8>, SessionError>,
    ) -> Result<AggReply, SessionError> {
        let start = Instant::now();
        let until = tokio::time::Instant::now() + self.unreachable_after;
        retry(u32::MAX, Duration::from_secs(5), Some(until))
            .run(
                || async { self.send_encoded(peer, encode()?).await },
                unreachable,
                |_, e| debug!(%peer, error = %e, "retrying"),
            )
            .await
            .map_err(|g| {
                gave_up(g, |_| {
                    format!(
                        " (gave up after {:.1} s, p2p.unreachable_after_secs)",
                        start.elapsed().as_secs_f64()
                    )
                })
            })
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
        retry(u32::MAX, NOTICE_RETRY_MAX, Some(instant_of(give_up_at_ms)))
            .run(
                || async { self.send_encoded(peer, encode()?).await },
                unreachable,
                |attempt, e| {
                    if attempt.is_multiple_of(10) {
                        warn!(%peer, error = %e, attempt, "a notice still waits for its peer");
                    }
                },
            )
            .await
            .map_err(|g| {
                gave_up(g, |attempts| {
                    format!(
                        "; given up after {attempts} attempts: the peer has dropped the session \
                         by now"
                    )
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_failures_become_session_errors() {
        let (peer, message) = ("p".to_string(), "m".to_string());
        let of = |e: RpcError| SessionError::from(e).code();
        let refused = |code: &str| RpcError::Refused {
            peer: peer.clone(),
            code: code.into(),
            message: message.clone(),
        };
        // A peer starting or stopping is worth another try, as a transport failure is.
        assert_eq!(of(refused("unavailable")), "unreachable");
        assert_eq!(
            of(RpcError::Unreachable {
                peer: peer.clone(),
                message: message.clone()
            }),
            "unreachable"
        );
        // A refusal the client can act on keeps its code; the peer's own failure is `remote`.
        assert_eq!(of(refused("duplicate")), "duplicate");
        assert_eq!(of(refused("store")), "remote");
        assert_eq!(of(refused("over_budget")), "remote");
        // Too large to send is not retried: no try can pass.
        assert_eq!(
            of(RpcError::NotSent {
                peer: peer.clone(),
                message: message.clone()
            }),
            "remote"
        );
    }
}
