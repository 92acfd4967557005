//! The key-additive session protocol (`docs/PROTOCOL.md`) as one pure state machine per role:
//! `handle(state, input, now)` changes the state and says what to do; the aggregation actor
//! persists the new state, performs the effects and feeds their outcomes back. No I/O here.
//!
//! - [`coordinator`]: delivers the plan, collects bodies, fixes the contributor set S and the
//!   answering members T, gathers the key releases, combines.
//! - [`participant`]: draws its one-time key, sends each member its seeds, submits once.
//! - [`member`]: stores seeds, says which it holds, releases keys for one S per session.

pub mod coordinator;
pub mod member;
pub mod participant;

use serde::{Deserialize, Serialize};

use super::SessionError;

/// Who plays which part in a session: what the machines need of its plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    pub id: String,
    pub coordinator: String,
    /// Committee members; a member's index is its position here.
    pub committee: Vec<String>,
    /// Members needed to decrypt, k/2 < t ≤ k.
    pub threshold: u32,
    /// The allow-list of participants.
    pub participants: Vec<String>,
    pub min_participants: u32,
    pub deadline_secs: u64,
}

impl Roster {
    pub fn member_index(&self, peer: &str) -> Option<u32> {
        self.committee
            .iter()
            .position(|m| m == peer)
            .map(|i| i as u32)
    }

    pub fn is_participant(&self, peer: &str) -> bool {
        self.participants.iter().any(|p| p == peer)
    }

    pub fn member_name(&self, index: u32) -> &str {
        self.committee
            .get(index as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }

    /// Refuses a message that only the coordinator may send.
    pub fn check_coordinator(&self, from: &str) -> Result<(), SessionError> {
        if from != self.coordinator {
            return Err(SessionError::NotAllowed {
                peer: from.to_string(),
                role: "the coordinator",
                session: self.id.clone(),
            });
        }
        Ok(())
    }

    fn not_participant(&self, peer: &str) -> SessionError {
        SessionError::NotAllowed {
            peer: peer.to_string(),
            role: "a participant",
            session: self.id.clone(),
        }
    }
}

/// What this node accepts of sessions other nodes create, whatever their plans say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPolicy {
    /// Fewest contributors a session this node takes part in may be decrypted with: the
    /// coordinator's own participants count toward `min_participants` (Sybils), so a node
    /// refuses sessions that would let its update be isolated among them.
    pub min_contributors_floor: u32,
    /// Profiles this node accepts.
    pub allowed_profiles: Vec<String>,
}

impl LocalPolicy {
    /// Checks a plan's shape against the policy before joining it, in any role.
    pub fn check(&self, roster: &Roster, profile: &str) -> Result<(), SessionError> {
        if roster.min_participants < self.min_contributors_floor {
            return Err(SessionError::NotAllowed {
                peer: roster.coordinator.clone(),
                role: "a coordinator whose min_participants meets this node's floor",
                session: format!(
                    "{} (min_participants {} < aggregation.min_contributors_floor {})",
                    roster.id, roster.min_participants, self.min_contributors_floor
                ),
            });
        }
        if !self.allowed_profiles.iter().any(|p| p == profile) {
            return Err(SessionError::NotAllowed {
                peer: roster.coordinator.clone(),
                role: "a coordinator of an allowed profile",
                session: format!(
                    "{} (profile {profile}; this node allows {:?})",
                    roster.id, self.allowed_profiles
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Roster;

    /// A roster of `k` members (threshold `t`) and `n` participants named m0.., p0...
    pub fn roster(k: u32, t: u32, n: u32, min: u32) -> Roster {
        Roster {
            id: "s1".into(),
            coordinator: "coord".into(),
            committee: (0..k).map(|i| format!("m{i}")).collect(),
            threshold: t,
            participants: (0..n).map(|i| format!("p{i}")).collect(),
            min_participants: min,
            deadline_secs: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::roster;
    use super::*;

    #[test]
    fn the_local_floor_and_profile_list_are_enforced() {
        let policy = LocalPolicy {
            min_contributors_floor: 2,
            allowed_profiles: vec!["secure".into()],
        };
        policy.check(&roster(3, 2, 5, 2), "secure").unwrap();
        let e = policy.check(&roster(3, 2, 5, 1), "secure").unwrap_err();
        assert!(e.to_string().contains("min_contributors_floor"), "{e}");
        let e = policy.check(&roster(3, 2, 5, 3), "fast").unwrap_err();
        assert!(e.to_string().contains("profile fast"), "{e}");
    }
}
