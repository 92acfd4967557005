//! The stable error codes the actors answer with, over HTTP and to peers: one table for the
//! session and inference errors (the API adds a few of its own, such as `bad_json`), so that a
//! code keeps its HTTP status wherever it is raised and across a hop between nodes. Depends on
//! nothing else in the crate.

/// A family of peer messages, each with the refusals its peers may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Aggregation sessions (`Request::Aggregation`).
    Session,
    /// Encrypted inference between a client's node and a model node (`Request::Inference`).
    Inference,
}

use Family::{Inference, Session};

/// Every code: its HTTP status, and the families in which a peer's refusal with it is passed
/// on to the client as it is (the asker can act on it: change the request, wait, go
/// elsewhere). Any other refusal reports the peer's own failure and reaches the client as
/// `remote` (502).
const CODES: [(&str, u16, &[Family]); 23] = [
    // The request's shape or content.
    ("bad_input", 400, &[Session, Inference]),
    ("crypto", 400, &[Session, Inference]),
    ("invalid_spec", 400, &[Session]),
    ("invalid_model", 400, &[Inference]),
    ("unsupported_scheme", 400, &[]),
    ("wrong_context", 400, &[Inference]),
    ("wrong_shape", 400, &[Inference]),
    ("not_allowed", 403, &[Session]),
    // What it names does not exist.
    ("unknown_session", 404, &[Session]),
    ("unknown_model", 404, &[Inference]),
    ("unknown_context", 404, &[Inference]),
    // It clashes with what exists.
    ("wrong_phase", 409, &[Session]),
    ("duplicate", 409, &[Session]),
    ("no_result", 409, &[Session]),
    // It asks for more than is allowed, or than there is room for.
    ("over_budget", 413, &[Inference]),
    ("quota_exceeded", 429, &[Session]),
    ("rate_limited", 429, &[Session]),
    ("insufficient_storage", 507, &[Session, Inference]),
    ("store_unavailable", 503, &[Session, Inference]),
    // The answering node's own failures.
    ("store", 500, &[]),
    ("remote", 502, &[]),
    ("unreachable", 502, &[]),
    ("unavailable", 503, &[]),
];

/// The HTTP status of `code` (500 for a code not in the table).
pub fn http_status(code: &str) -> u16 {
    CODES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or(500, |(_, status, _)| *status)
}

/// A refusal `code` from a peer of `family` as this node passes it on: the code itself when
/// the asker can act on it, `None` when it reports the peer's own failure (or is unknown).
pub fn passed_on(family: Family, code: &str) -> Option<&'static str> {
    CODES
        .iter()
        .find(|(c, _, families)| *c == code && families.contains(&family))
        .map(|(c, _, _)| *c)
}

/// How a call to a peer failed, as the asking actor reports it: the variant that
/// `SessionError` and `InferenceActorError` share (each carries it as `Peer`).
#[derive(Debug, thiserror::Error)]
pub enum PeerFailure {
    /// The peer's own failure, or an answer that makes no sense: `remote` (502).
    #[error("peer {peer}: {message}")]
    Remote { peer: String, message: String },
    /// The peer refused with a code the asker can act on ([`passed_on`]): the code and its
    /// status are kept across the hop, the message is the peer's own.
    #[error("peer {peer}: {message}")]
    Refused {
        peer: String,
        code: &'static str,
        message: String,
    },
    /// The peer could not be reached: `unreachable` (502).
    #[error("peer {peer} is unreachable: {message}")]
    Unreachable { peer: String, message: String },
}

impl PeerFailure {
    pub fn remote(peer: impl Into<String>, message: impl Into<String>) -> Self {
        PeerFailure::Remote {
            peer: peer.into(),
            message: message.into(),
        }
    }

    pub fn unreachable(peer: impl Into<String>, message: impl Into<String>) -> Self {
        PeerFailure::Unreachable {
            peer: peer.into(),
            message: message.into(),
        }
    }

    /// A refusal `code` from a peer of `family`: kept when the asker can act on it, else the
    /// peer's own failure (`remote`, 502), its message naming the peer's code.
    pub fn refusal(family: Family, peer: String, code: &str, message: String) -> Self {
        match passed_on(family, code) {
            Some(code) => PeerFailure::Refused {
                peer,
                code,
                message,
            },
            None => PeerFailure::Remote {
                peer,
                message: format!("{code}: {message}"),
            },
        }
    }

    /// The stable code it answers with.
    pub fn code(&self) -> &'static str {
        match self {
            PeerFailure::Remote { .. } => "remote",
            PeerFailure::Refused { code, .. } => code,
            PeerFailure::Unreachable { .. } => "unreachable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_once_and_only_the_askers_refusals_pass() {
        for (i, (code, status, families)) in CODES.iter().enumerate() {
            assert!(
                !CODES[..i].iter().any(|(c, _, _)| c == code),
                "{code} twice"
            );
            assert_eq!(http_status(code), *status);
            if (500..600).contains(status) && !families.is_empty() {
                assert!(
                    [503, 507].contains(status),
                    "{code}: a node failure passes on"
                );
            }
        }
        assert_eq!(http_status("no_such_code"), 500);
        assert_eq!(passed_on(Session, "duplicate"), Some("duplicate"));
        assert_eq!(passed_on(Inference, "duplicate"), None);
        assert_eq!(passed_on(Inference, "over_budget"), Some("over_budget"));
        assert_eq!(passed_on(Session, "over_budget"), None);
        for node_failure in ["store", "unreachable", "remote", "unavailable", "made_up"] {
            assert_eq!(passed_on(Session, node_failure), None);
            assert_eq!(passed_on(Inference, node_failure), None);
        }
        let kept = PeerFailure::refusal(Session, "p".into(), "duplicate", "taken".into());
        assert_eq!(
            (kept.code(), kept.to_string().as_str()),
            ("duplicate", "peer p: taken")
        );
        let own = PeerFailure::refusal(Inference, "p".into(), "store", "disk full".into());
        assert_eq!(
            (own.code(), own.to_string().as_str()),
            ("remote", "peer p: store: disk full")
        );
        assert_eq!(PeerFailure::unreachable("p", "gone").code(), "unreachable");
    }
}
