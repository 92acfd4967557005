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
use crate::crypto::kahe::KaheParams;

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

    /// A member or a participant: the peers told how the session ended.
    pub fn peers_include(&self, peer: &str) -> bool {
        self.is_participant(peer) || self.member_index(peer).is_some()
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

    /// Checks a roster received from a peer against the parameters its plan binds: every
    /// role runs this on receipt, since the coordinator's own validation proves nothing to
    /// others. A committee member listed twice would receive the seeds of several indices: at t
    /// indices, every seed.
    pub fn validate(&self, params: &KaheParams) -> Result<(), SessionError> {
        let bad = |field: &str, reason: String| SessionError::InvalidSpec {
            field: field.to_string(),
            reason,
        };
        let distinct = |list: &[String]| {
            let set: std::collections::BTreeSet<&String> = list.iter().collect();
            set.len() == list.len()
        };
        if !distinct(&self.committee) {
            return Err(bad("committee", "a member is listed twice".into()));
        }
        if !distinct(&self.participants) {
            return Err(bad("participants", "a participant is listed twice".into()));
        }
        params.validate()?;
        if self.committee.len() as u32 != params.committee || self.threshold != params.threshold {
            return Err(bad(
                "committee",
                format!(
                    "{} members with threshold {} where the parameters say {} and {}",
                    self.committee.len(),
                    self.threshold,
                    params.committee,
                    params.threshold
                ),
            ));
        }
        if self.participants.is_empty()
            || self.participants.len() as u64 > params.participants as u64
        {
            return Err(bad(
                "participants",
                format!(
                    "{} participants where the parameters allow 1..={}",
                    self.participants.len(),
                    params.participants
                ),
            ));
        }
        if self.min_participants == 0 || self.min_participants as usize > self.participants.len() {
            return Err(bad(
                "min_participants",
                format!(
                    "{} is outside 1..={}",
                    self.min_participants,
                    self.participants.len()
                ),
            ));
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
    /// Checks a received plan (its roster against its parameters, then the policy) before
    /// joining it, in any role.
    pub fn check(&self, roster: &Roster, params: &KaheParams) -> Result<(), SessionError> {
        roster.validate(params)?;
        let profile = params.profile.name();
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
    use crate::crypto::Profile;

    fn params(profile: Profile, k: u32, t: u32) -> KaheParams {
        KaheParams::recommended(profile, 10, k, t, 8.0, 20).unwrap()
    }

    #[test]
    fn the_local_floor_and_profile_list_are_enforced() {
        let policy = LocalPolicy {
            min_contributors_floor: 2,
            allowed_profiles: vec!["secure".into()],
        };
        let secure = params(Profile::Secure, 3, 2);
        policy.check(&roster(3, 2, 5, 2), &secure).unwrap();
        let e = policy.check(&roster(3, 2, 5, 1), &secure).unwrap_err();
        assert!(e.to_string().contains("min_contributors_floor"), "{e}");
        let e = policy
            .check(&roster(3, 2, 5, 3), &params(Profile::Fast, 3, 2))
            .unwrap_err();
        assert!(e.to_string().contains("profile fast"), "{e}");
    }

    #[test]
    fn a_received_roster_must_match_its_parameters_and_list_no_one_twice() {
        let p = params(Profile::Secure, 3, 2);
        roster(3, 2, 5, 2).validate(&p).unwrap();
        // A coordinator listing its own peer at several member indices would collect every
        // seed; one listing a participant twice would count it twice.
        let mut r = roster(3, 2, 5, 2);
        r.committee[2] = r.committee[0].clone();
        assert!(r
            .validate(&p)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let mut r = roster(3, 2, 5, 2);
        r.participants[1] = r.participants[0].clone();
        assert!(r.validate(&p).is_err());
        // Roster and parameters disagree on the committee, threshold or participant count.
        assert!(roster(4, 3, 5, 2).validate(&p).is_err());
        assert!(roster(3, 3, 5, 2).validate(&p).is_err());
        assert!(roster(3, 2, 11, 2).validate(&p).is_err());
        assert!(roster(3, 2, 5, 6).validate(&p).is_err());
        assert!(roster(3, 2, 5, 0).validate(&p).is_err());
    }
}
