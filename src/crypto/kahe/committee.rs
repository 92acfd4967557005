//! Replicated secret sharing over a committee of k members with threshold t: one seed per
//! maximal unqualified set A (|A| = t − 1), held by every member outside A. Any t members hold
//! every seed (no set of t − 1 contains all of them); any t − 1 members miss the seed of the
//! set they form.

use serde::{Deserialize, Serialize};

use super::super::CryptoError;

/// Committee size and threshold, checked: 1 ≤ k ≤ 16 and k/2 < t ≤ k.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committee {
    size: u32,
    threshold: u32,
}

/// A set of members as a bit mask (bit j: member j).
pub type MemberSet = u32;

impl Committee {
    pub const MAX_SIZE: u32 = 16;

    pub fn new(size: u32, threshold: u32) -> Result<Self, CryptoError> {
        if size == 0 || size > Self::MAX_SIZE {
            return Err(CryptoError::InvalidParams(format!(
                "committee = {size} is outside 1..={}",
                Self::MAX_SIZE
            )));
        }
        if 2 * threshold <= size || threshold > size {
            return Err(CryptoError::InvalidParams(format!(
                "threshold = {threshold} must satisfy committee/2 < threshold <= committee \
                 (committee = {size})"
            )));
        }
        Ok(Committee { size, threshold })
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// The maximal unqualified sets, in a fixed order (increasing masks): set index i in every
    /// message means `sets()[i]`.
    pub fn sets(&self) -> Vec<MemberSet> {
        let want = self.threshold - 1;
        (0u32..(1 << self.size))
            .filter(|m| m.count_ones() == want)
            .collect()
    }

    /// Whether `member` holds the seed of `set`: it does unless it belongs to the set.
    pub fn holds(member: u32, set: MemberSet) -> bool {
        set & (1 << member) == 0
    }

    /// Indices (into [`Committee::sets`]) of the sets whose seeds `member` holds.
    pub fn sets_held_by(&self, member: u32) -> Vec<u32> {
        self.sets()
            .iter()
            .enumerate()
            .filter(|(_, &s)| Self::holds(member, s))
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Assigns every set to one member of `answering` that holds it, spreading the sets evenly
    /// (each to the eligible member with the fewest so far; ties to the lowest index).
    /// `answering` must name at least t distinct members: then every set has a holder.
    pub fn assign(&self, answering: &[u32]) -> Result<Vec<u32>, CryptoError> {
        let mut members: Vec<u32> = answering.to_vec();
        members.sort_unstable();
        members.dedup();
        if members.len() != answering.len() || members.iter().any(|&m| m >= self.size) {
            return Err(CryptoError::InvalidParams(format!(
                "answering members {answering:?} must be distinct and below {}",
                self.size
            )));
        }
        if (members.len() as u32) < self.threshold {
            return Err(CryptoError::InvalidParams(format!(
                "{} answering members, fewer than the threshold {}",
                members.len(),
                self.threshold
            )));
        }
        let mut load = vec![0usize; self.size as usize];
        self.sets()
            .into_iter()
            .map(|set| {
                let holder = members
                    .iter()
                    .copied()
                    .filter(|&m| Self::holds(m, set))
                    .min_by_key(|&m| (load[m as usize], m))
                    .ok_or_else(|| {
                        CryptoError::InvalidParams(format!(
                            "no answering member holds set {set:#b}"
                        ))
                    })?;
                load[holder as usize] += 1;
                Ok(holder)
            })
            .collect()
    }

    /// Checks an assignment (one member per set, each holding its set) and returns the set
    /// indices given to `member`.
    pub fn assigned_to(&self, assignment: &[u32], member: u32) -> Result<Vec<u32>, CryptoError> {
        let sets = self.sets();
        if assignment.len() != sets.len() {
            return Err(CryptoError::InvalidParams(format!(
                "the assignment names {} sets where the committee has {}",
                assignment.len(),
                sets.len()
            )));
        }
        for (&set, &holder) in sets.iter().zip(assignment) {
            if holder >= self.size || !Self::holds(holder, set) {
                return Err(CryptoError::InvalidParams(format!(
                    "set {set:#b} is assigned to member {holder}, which does not hold it"
                )));
            }
        }
        Ok(assignment
            .iter()
            .enumerate()
            .filter(|(_, &h)| h == member)
            .map(|(i, _)| i as u32)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binomial(n: u32, k: u32) -> usize {
        (0..k).fold(1usize, |acc, i| acc * (n - i) as usize / (i + 1) as usize)
    }

    #[test]
    fn any_t_members_hold_every_seed_and_no_t_minus_one_do() {
        for k in 1..=7u32 {
            for t in (k / 2 + 1)..=k {
                let c = Committee::new(k, t).unwrap();
                let sets = c.sets();
                assert_eq!(sets.len(), binomial(k, t - 1), "k={k} t={t}");
                for group in 0u32..(1 << k) {
                    let covers = sets
                        .iter()
                        .all(|&s| (0..k).any(|j| group & (1 << j) != 0 && Committee::holds(j, s)));
                    assert_eq!(
                        covers,
                        group.count_ones() >= t,
                        "k={k} t={t} group={group:#b}"
                    );
                }
            }
        }
    }

    #[test]
    fn assignments_cover_every_set_from_any_t_members() {
        let c = Committee::new(5, 4).unwrap();
        for group in 0u32..32 {
            let members: Vec<u32> = (0..5).filter(|j| group & (1 << j) != 0).collect();
            match c.assign(&members) {
                Ok(a) => {
                    assert!(members.len() >= 4);
                    let mut total = 0;
                    for &m in &members {
                        total += c.assigned_to(&a, m).unwrap().len();
                    }
                    assert_eq!(total, c.sets().len());
                }
                Err(e) => {
                    assert!(members.len() < 4, "{members:?}: {e}");
                }
            }
        }
        assert!(c.assign(&[0, 0, 1, 2]).is_err());
        assert!(c.assign(&[0, 1, 2, 9]).is_err());
    }

    #[test]
    fn forged_assignments_are_refused() {
        let c = Committee::new(3, 2).unwrap();
        // Sets {0}, {1}, {2}: member 0 does not hold set {0}.
        assert!(c.assigned_to(&[0, 0, 0], 0).is_err());
        assert!(c.assigned_to(&[1, 0], 0).is_err());
        assert_eq!(c.assigned_to(&[1, 0, 0], 0).unwrap(), vec![1, 2]);
    }

    #[test]
    fn bad_thresholds_are_refused() {
        assert!(Committee::new(4, 2).is_err());
        assert!(Committee::new(3, 4).is_err());
        assert!(Committee::new(0, 0).is_err());
        assert!(Committee::new(17, 10).is_err());
    }
}
