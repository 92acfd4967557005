//! One call to a peer, as every actor makes it: send a request, and sort what comes back into
//! the answer's bytes or one of three failures. Each actor turns an [`RpcError`] into its own
//! error type; how often to try again is [`crate::runtime::Retry`]'s.

use libp2p::PeerId;

use super::protocol::{Request, Response};
use super::{NetError, NetworkHandle};

/// Why a call to a peer brought no answer of the kind asked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The request did not reach the peer or its answer did not come back (no connection, a
    /// dropped stream, a timeout, the network stopped): another try may pass.
    #[error("peer {peer} is unreachable: {message}")]
    Unreachable { peer: String, message: String },
    /// The peer answered with an error: its stable `code` and its own message.
    #[error("peer {peer}: {code}: {message}")]
    Refused {
        peer: String,
        code: String,
        message: String,
    },
    /// The request was not sent: it is over `p2p.max_request_bytes`.
    #[error("peer {peer}: {message}")]
    NotSent { peer: String, message: String },
    /// The answer is of another kind than the request's.
    #[error("peer {peer}: {message}")]
    Unexpected { peer: String, message: String },
}

/// Sends `request` to `peer` and returns the bytes of an answer of the same kind.
pub async fn call(
    network: &NetworkHandle,
    peer: PeerId,
    request: Request,
) -> Result<Vec<u8>, RpcError> {
    let kind = Kind::of(&request);
    let response = network
        .request(peer, request)
        .await
        .map_err(|e| not_answered(&peer.to_string(), e))?;
    answer(&peer.to_string(), kind, response)
}

/// Why a request to `peer` brought no answer, as the network says.
fn not_answered(peer: &str, e: NetError) -> RpcError {
    let (peer, message) = (peer.to_string(), e.to_string());
    match e {
        NetError::Outbound { .. } | NetError::Stopped => RpcError::Unreachable { peer, message },
        NetError::RequestTooLarge { .. } => RpcError::NotSent { peer, message },
        // Dialling, publishing and setting up are not requests.
        NetError::Dial { .. } | NetError::Publish(_) | NetError::Setup(_) => {
            RpcError::Unexpected { peer, message }
        }
    }
}

/// The message families a request carries, each answered in kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Aggregation,
    Inference,
    /// Echo and sink requests, answered in kinds of their own (not through [`call`]).
    Other,
}

impl Kind {
    fn of(request: &Request) -> Kind {
        match request {
            Request::Aggregation(_) => Kind::Aggregation,
            Request::Inference(_) => Kind::Inference,
            Request::Echo(_) | Request::Sink(_) => Kind::Other,
        }
    }
}

/// Sorts a `response` to a request of `kind` from `peer` (also what a node answers itself).
pub fn answer(peer: &str, kind: Kind, response: Response) -> Result<Vec<u8>, RpcError> {
    match (kind, response) {
        (Kind::Aggregation, Response::Aggregation(bytes))
        | (Kind::Inference, Response::Inference(bytes)) => Ok(bytes),
        (_, Response::Error { code, message }) => Err(RpcError::Refused {
            peer: peer.to_string(),
            code,
            message,
        }),
        (_, other) => Err(RpcError::Unexpected {
            peer: peer.to_string(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_sorted_by_kind_and_code() {
        let ok = answer("p", Kind::Inference, Response::Inference(vec![1]));
        assert_eq!(ok, Ok(vec![1]));
        let refused = answer(
            "p",
            Kind::Aggregation,
            Response::error("unknown_session", "no such session"),
        );
        assert_eq!(
            refused,
            Err(RpcError::Refused {
                peer: "p".into(),
                code: "unknown_session".into(),
                message: "no such session".into(),
            })
        );
        let crossed = answer("p", Kind::Aggregation, Response::Inference(vec![1]));
        assert!(matches!(crossed, Err(RpcError::Unexpected { .. })));
    }

    #[test]
    fn a_request_too_large_is_not_sent_and_a_lost_one_is_unreachable() {
        let too_large = NetError::RequestTooLarge {
            size: 70 << 20,
            limit: 64 << 20,
        };
        assert!(matches!(
            not_answered("p", too_large),
            RpcError::NotSent { .. }
        ));
        assert!(matches!(
            not_answered("p", NetError::Stopped),
            RpcError::Unreachable { .. }
        ));
    }
}
