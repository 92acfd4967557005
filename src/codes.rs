//! The stable error codes the actors answer with, over HTTP and to peers, and what each means
//! for the one who asked: one table for the session and inference errors (the API adds a few
//! of its own, such as `bad_json`), so that a code keeps its
//! HTTP status wherever it is raised and across a hop between nodes. Depends on nothing else
//! in the crate.

/// Whose failure a code reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The request: the asker can act on it (change the request, wait, go elsewhere). A peer's
    /// refusal with such a code is passed on to the client as it is.
    Request,
    /// The answering node itself (its store, its peers, its actors): passed on across a hop
    /// as the peer's failure, `remote`.
    Node,
}

/// Every code with its HTTP status and side.
const CODES: [(&str, u16, Side); 23] = [
    // The request's shape or content.
    ("bad_input", 400, Side::Request),
    ("crypto", 400, Side::Request),
    ("invalid_spec", 400, Side::Request),
    ("invalid_model", 400, Side::Request),
    ("unsupported_scheme", 400, Side::Request),
    ("wrong_context", 400, Side::Request),
    ("wrong_shape", 400, Side::Request),
    ("not_allowed", 403, Side::Request),
    // What it names does not exist.
    ("unknown_session", 404, Side::Request),
    ("unknown_model", 404, Side::Request),
    ("unknown_context", 404, Side::Request),
    // It clashes with what exists.
    ("wrong_phase", 409, Side::Request),
    ("duplicate", 409, Side::Request),
    ("no_result", 409, Side::Request),
    // It asks for more than is allowed.
    ("over_budget", 413, Side::Request),
    ("quota_exceeded", 429, Side::Request),
    ("rate_limited", 429, Side::Request),
    ("insufficient_storage", 507, Side::Request),
    ("store_unavailable", 503, Side::Request),
    // The node's own failures.
    ("store", 500, Side::Node),
    ("remote", 502, Side::Node),
    ("unreachable", 502, Side::Node),
    ("unavailable", 503, Side::Node),
];

/// The HTTP status of `code` (500 for a code not in the table).
pub fn http_status(code: &str) -> u16 {
    CODES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or(500, |(_, status, _)| *status)
}

/// A peer's refusal `code` as this node passes it on: the code itself when the asker can act
/// on it, `None` when it reports the peer's own failure (or is unknown here).
pub fn passed_on(code: &str) -> Option<&'static str> {
    CODES
        .iter()
        .find(|(c, _, side)| *c == code && *side == Side::Request)
        .map(|(c, _, _)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_once_with_a_status_of_its_class() {
        for (i, (code, status, side)) in CODES.iter().enumerate() {
            assert!(
                !CODES[..i].iter().any(|(c, _, _)| c == code),
                "{code} twice"
            );
            assert_eq!(http_status(code), *status);
            match side {
                Side::Request => assert!(
                    (400..500).contains(status) || [503, 507].contains(status),
                    "{code}"
                ),
                Side::Node => assert!((500..600).contains(status), "{code}"),
            }
        }
        assert_eq!(http_status("no_such_code"), 500);
        assert_eq!(passed_on("duplicate"), Some("duplicate"));
        assert_eq!(passed_on("store"), None);
        assert_eq!(passed_on("unreachable"), None);
        assert_eq!(passed_on("made_up"), None);
    }
}
