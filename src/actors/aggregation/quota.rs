//! What one coordinator may make this node hold, and for how long: sessions not yet over
//! (`aggregation.max_sessions_per_peer`), the bytes they hold
//! (`aggregation.max_pending_bytes`), new plans a minute
//! (`aggregation.plans_per_minute_per_peer`); joined sessions their coordinator never ended
//! expire once no coordinator can still run them; and at every start what sessions over or
//! gone left behind (secrets, upload trees) is removed, so a restart reclaims it.

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::*;
use crate::session::records;

/// A result's bytes beside its values: ids, counts, shapes.
const RESULT_FRAME: u64 = 4096;

/// How often joined sessions are checked for expiry.
pub(super) const EXPIRY_EVERY: Duration = Duration::from_secs(60);

pub(super) struct Quotas {
    pub(super) max_sessions_per_peer: u32,
    pub(super) max_pending_bytes: u64,
    /// `aggregation.expire_grace_secs`: after a session's three deadlines (plan delivery;
    /// collecting; closing and decrypting) no coordinator runs it any more; the grace covers
    /// clocks that differ and a coordinator that restarts late.
    pub(super) expire_grace_ms: u64,
    plans_per_minute: u32,
    plans: DefaultKeyedRateLimiter<String>,
    /// [`held_bytes`] of the joined sessions, by session, with whether it was over: a plan is
    /// sized once in each state.
    held: HashMap<String, (bool, u64)>,
}

impl Quotas {
    pub(super) fn new(
        max_sessions_per_peer: u32,
        max_pending_bytes: u64,
        plans_per_minute: u32,
        expire_grace: Duration,
    ) -> Self {
        let n = NonZeroU32::new(plans_per_minute).unwrap_or(NonZeroU32::MIN);
        Quotas {
            max_sessions_per_peer,
            max_pending_bytes,
            expire_grace_ms: expire_grace.as_millis() as u64,
            plans_per_minute: n.get(),
            plans: RateLimiter::hashmap(Quota::per_minute(n)),
            held: HashMap::new(),
        }
    }
}

/// Bytes a session holds on this node: its plan (stored with this node's state) and, as a
/// participant, its result (8 bytes a value at most) for as long as the record is kept; until
/// it is over, also as a member one seed bundle per participant, and as a participant its
/// update (the encryption prepared ahead in memory, then the sealed update on its way out).
pub(super) fn held_bytes(plan: &SessionPlan, me: &str, over: bool) -> u64 {
    let mut bytes = bincode::serialized_size(plan).unwrap_or(u64::MAX);
    if plan.is_participant(me) {
        bytes = bytes.saturating_add(plan.length.saturating_mul(8).saturating_add(RESULT_FRAME));
    }
    if over {
        return bytes;
    }
    let Ok(context) = plan.context() else {
        return bytes;
    };
    if let Some(member) = plan.member_index(me) {
        let sets = context.committee().sets_held_by(member).len() as u64;
        // A bundle: its member, its set indices and their 32-byte seeds, and framing.
        let bundle = 16 + sets * (4 + 32);
        bytes = bytes.saturating_add(bundle.saturating_mul(plan.participants.len() as u64));
    }
    if plan.is_participant(me) {
        bytes = bytes.saturating_add(crate::crypto::kahe::wire::update_len(&context) as u64);
    }
    bytes
}

/// When a joined session that never ended is dropped, in Unix milliseconds.
pub(super) fn expires_at_ms(joined: &Joined, grace_ms: u64) -> u64 {
    expiry_ms(joined.joined_ms, joined.plan.deadline_secs, grace_ms)
}

/// A session known since `since_ms` is over everywhere by this time (Unix milliseconds): its
/// three deadlines and the grace have passed.
pub(super) fn expiry_ms(since_ms: u64, deadline_secs: u64, grace_ms: u64) -> u64 {
    since_ms
        .saturating_add(deadline_secs.saturating_mul(3 * 1000))
        .saturating_add(grace_ms)
}

impl AggregationActor {
    /// Refuses a new plan from `from` that would take this node over one of that
    /// coordinator's quotas, before anything is written. A coordinator's own sessions (it
    /// takes part in them) are its operator's: they count against nothing.
    pub(super) fn check_quotas(
        &mut self,
        from: &str,
        plan: &SessionPlan,
    ) -> Result<(), SessionError> {
        let me = self.me();
        if from == me {
            return Ok(());
        }
        // First, and whatever follows: a coordinator over its other quotas must not make this
        // node size its sessions again for free, plan after plan.
        if self.quotas.plans.check_key(&from.to_string()).is_err() {
            return Err(SessionError::RateLimited(format!(
                "coordinator {from} sent more than {} new plans in a minute \
                 (aggregation.plans_per_minute_per_peer); try again later",
                self.quotas.plans_per_minute
            )));
        }
        let quotas = &mut self.quotas;
        let (mut open, mut pending) = (0usize, 0u64);
        // Sessions of this coordinator that are over, oldest first: what may make room.
        let mut over: Vec<(u64, String, u64)> = Vec::new();
        for j in self.joined.values().filter(|j| j.plan.coordinator == from) {
            let ended = j.ended.is_some();
            let cached = quotas.held.get(&j.plan.id).filter(|(o, _)| *o == ended);
            let bytes = match cached {
                Some((_, bytes)) => *bytes,
                None => {
                    let bytes = held_bytes(&j.plan, &me, ended);
                    quotas.held.insert(j.plan.id.clone(), (ended, bytes));
                    bytes
                }
            };
            pending = pending.saturating_add(bytes);
            if ended {
                over.push((j.finished_ms.unwrap_or(0), j.plan.id.clone(), bytes));
            } else {
                open += 1;
            }
        }
        if open >= quotas.max_sessions_per_peer as usize {
            return Err(SessionError::QuotaExceeded(format!(
                "this node already holds {open} sessions of coordinator {from} that are not \
                 over (aggregation.max_sessions_per_peer)"
            )));
        }
        let wanted = held_bytes(plan, &me, false);
        let max = quotas.max_pending_bytes;
        over.sort();
        let mut room_from = Vec::new();
        let mut freed = 0u64;
        for (_, id, bytes) in over {
            if pending.saturating_sub(freed).saturating_add(wanted) <= max {
                break;
            }
            freed = freed.saturating_add(bytes);
            room_from.push(id);
        }
        if pending.saturating_sub(freed).saturating_add(wanted) > max {
            return Err(SessionError::QuotaExceeded(format!(
                "this session would hold {wanted} bytes on this node, and coordinator {from}'s \
                 sessions already hold {pending} of the {max} allowed, {freed} of them in \
                 sessions that are over (aggregation.max_pending_bytes)"
            )));
        }
        for id in room_from {
            self.drop_over(&id, from)?;
        }
        Ok(())
    }

    /// Drops a session that is over, its record and its result, to make room for its
    /// coordinator's next one.
    fn drop_over(&mut self, id: &str, coordinator: &str) -> Result<(), SessionError> {
        self.store.remove(trees::RESULTS, id.as_bytes())?;
        self.drop_joined(id)?;
        info!(session = %id, %coordinator,
            "dropped a session that is over, with its result, to make room for its coordinator's \
             next one (aggregation.max_pending_bytes)");
        Ok(())
    }

    /// Drops a joined session's record, then what this actor keeps of it in memory.
    fn drop_joined(&mut self, id: &str) -> Result<Option<Joined>, SessionError> {
        self.store
            .remove(trees::SESSIONS, records::joined(id).as_bytes())?;
        self.quotas.held.remove(id);
        Ok(self.joined.remove(id))
    }

    /// Drops the joined sessions their coordinator never ended and no longer can: the
    /// record, the preparation and every secret.
    pub(super) fn expire_joined(&mut self, now_ms: u64) {
        for id in self.drop_expired(now_ms) {
            self.forget(&id);
        }
        self.quotas.plans.retain_recent();
    }

    /// Drops the records of the joined sessions that expired by `now_ms` and returns their
    /// ids; their secrets are the caller's to delete (at start, `reclaim` deletes them all in
    /// one pass).
    pub(super) fn drop_expired(&mut self, now_ms: u64) -> Vec<String> {
        let expired: Vec<String> = self
            .joined
            .iter()
            .filter(|(id, j)| {
                j.ended.is_none()
                    && !self.coordinated.contains_key(*id)
                    && now_ms >= expires_at_ms(j, self.quotas.expire_grace_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut dropped = Vec::with_capacity(expired.len());
        for id in expired {
            // The record goes first: secrets left by a crash after it are removed at the next
            // start (`reclaim`), while a record without its secrets would be a session that
            // can no longer go on.
            match self.drop_joined(&id) {
                Ok(joined) => {
                    self.metrics.sessions_expired.inc();
                    info!(session = %id, coordinator = ?joined.map(|j| j.plan.coordinator),
                        "session expired: its coordinator never ended it within its deadlines");
                    dropped.push(id);
                }
                Err(e) => warn!(session = %id, error = %e, "could not drop an expired session"),
            }
        }
        dropped
    }

    /// At start, after the sessions are loaded (and what expired while the node was down is
    /// dropped): deletes the secrets of every session that is over or gone (a node that
    /// stopped between a session's end and its secrets' deletion), and drops the upload trees
    /// of sessions that are over or that this node does not coordinate. A session whose record
    /// cannot be read is left alone: it may be live.
    pub(super) async fn reclaim(&mut self, unreadable: &BTreeSet<String>) {
        let live: BTreeSet<String> = self
            .joined
            .iter()
            .filter(|(_, j)| j.ended.is_none())
            .map(|(id, _)| id.clone())
            .chain(unreadable.iter().cloned())
            .collect();
        match self.keys.keep_only(live).await {
            Ok(0) => {}
            Ok(n) => info!(
                sessions = n,
                "deleted the secrets of sessions that are over"
            ),
            Err(e) => warn!(error = %e, "could not delete the secrets of sessions that are over"),
        }
        let dead: BTreeSet<String> = self
            .store
            .upload_owners(trees::SUBMISSIONS)
            .into_iter()
            .filter_map(|owner| owner.split_once('/').map(|(s, _)| s.to_string()))
            .filter(|s| {
                !unreadable.contains(s)
                    && self
                        .coordinated
                        .get(s)
                        .is_none_or(|c| c.machine.phase.is_terminal())
            })
            .collect();
        for session in dead {
            self.cleanup(&session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::spec::SessionSpec;

    /// A plan of `peers[1..4]` as committee and the rest as participants, by `peers[0]`.
    fn plan(peers: &[String], length: u64) -> SessionPlan {
        let spec = SessionSpec {
            length: Some(length),
            committee: peers[1..4].to_vec(),
            threshold: Some(2),
            participants: peers[4..].to_vec(),
            min_participants: Some(2),
            ..Default::default()
        };
        let coordinator: PeerId = peers[0].parse().unwrap();
        spec.validate(coordinator, Profile::Fast).unwrap()
    }

    fn peers(n: usize) -> Vec<String> {
        (0..n).map(|_| PeerId::random().to_string()).collect()
    }

    #[test]
    fn a_sessions_held_bytes_grow_with_its_roles_and_length_and_shrink_when_it_is_over() {
        let peers = peers(8);
        let plan = plan(&peers, 100_000);
        let stranger = PeerId::random().to_string();
        let only_plan = held_bytes(&plan, &stranger, false);
        assert!(only_plan > 0);
        assert_eq!(held_bytes(&plan, &stranger, true), only_plan);
        // peers[1] is a member only, peers[4] a participant only.
        assert!(
            held_bytes(&plan, &peers[1], false) > only_plan,
            "a member holds seeds"
        );
        assert_eq!(
            held_bytes(&plan, &peers[1], true),
            only_plan,
            "until the end"
        );
        let update = crate::crypto::kahe::wire::update_len(&plan.context().unwrap()) as u64;
        let result = 8 * 100_000 + RESULT_FRAME;
        let participant = held_bytes(&plan, &peers[4], false);
        assert_eq!(participant, only_plan + update + result);
        assert_eq!(held_bytes(&plan, &peers[4], true), only_plan + result);
        let longer = super::tests::plan(&peers, 200_000);
        assert!(held_bytes(&longer, &peers[4], false) > participant);
    }

    #[test]
    fn a_joined_session_expires_after_every_deadline_and_the_grace() {
        let joined = Joined {
            joined_ms: 1_000,
            plan: plan(&peers(6), 10),
            participant: None,
            member: None,
            finished_ms: None,
            ended: None,
            failure: None,
        };
        let deadline_ms = joined.plan.deadline_secs * 1000;
        assert_eq!(expires_at_ms(&joined, 7), 1_000 + 3 * deadline_ms + 7);
    }
}
