//! Where session records live in the store: one function per record family, so that no actor
//! formats a key of its own. Session and peer ids hold no `/`, so a session's records of one
//! family share the prefix `{family}/{session}/`.

use crate::store::trees;

/// A session this node coordinates (`trees::SESSIONS`).
pub const COORDINATED: &str = "coord/";
/// A session this node takes part in as participant or member (`trees::SESSIONS`).
pub const JOINED: &str = "joined/";

pub fn coordinated(session: &str) -> String {
    format!("{COORDINATED}{session}")
}

pub fn joined(session: &str) -> String {
    format!("{JOINED}{session}")
}

/// A series this node coordinates (`trees::SESSIONS`).
pub const SERIES: &str = "series/";

pub fn series(id: &str) -> String {
    format!("{SERIES}{id}")
}

/// Tree of the secrets below.
pub const SECRETS_TREE: &str = trees::KEYS;

/// This node's one-time key as a participant of `session` (`trees::KEYS`).
pub fn participant_key(session: &str) -> String {
    format!("participant/{session}")
}

/// The seeds this node holds, as a member of `session`, of `participant` (`trees::KEYS`).
pub fn member_seeds(session: &str, participant: &str) -> String {
    format!("{}{participant}", member_seeds_prefix(session))
}

/// Every seed bundle this node holds for `session`.
pub fn member_seeds_prefix(session: &str) -> String {
    format!("seeds/{session}/")
}

/// The session a secret's key (either family above) belongs to.
pub fn secret_session(key: &str) -> Option<&str> {
    if let Some(session) = key.strip_prefix("participant/") {
        return Some(session);
    }
    key.strip_prefix("seeds/")?
        .split_once('/')
        .map(|(session, _)| session)
}

/// Upload pieces of one participant in one session (`trees::SUBMISSIONS`).
pub fn piece_owner(session: &str, participant: &str) -> String {
    format!("{session}/{participant}")
}

/// Every participant's pieces in a session.
pub fn pieces_prefix(session: &str) -> String {
    format!("{session}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_key_names_its_session() {
        assert_eq!(secret_session(&participant_key("s1")), Some("s1"));
        assert_eq!(secret_session(&member_seeds("s2", "12D3Koo")), Some("s2"));
        assert_eq!(secret_session("seeds/s3"), None);
        assert_eq!(secret_session("other/s4"), None);
    }
}
