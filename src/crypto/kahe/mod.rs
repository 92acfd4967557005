//! One-shot secure aggregation by key-additive RLWE with a threshold committee that only ever
//! handles keys (`docs/CRYPTO.md`). There is no decryption key: each participant encrypts under
//! a one-time key r_P = Σ_A Expand(σ_{P,A}), one seed per maximal unqualified set A of members,
//! and the committee releases a·Σ_{P∈S} r_P for the one contributor set S the coordinator fixed.
//!
//! 1. participants: [`ParticipantKey::generate`]; [`ParticipantKey::bundle_for`] each member;
//!    [`ParticipantKey::prepare`] → [`PreparedEncryption::seal`] → wire bytes;
//! 2. coordinator: [`Accumulator::add`] per update, [`Accumulator::finish`] → [`Aggregate`],
//!    [`Committee::assign`] and [`Aggregate::request`] → [`ReleaseRequest`];
//! 3. members: [`release`] → key release bytes (for one S per session: the caller's rule);
//! 4. coordinator: [`Aggregate::combine`] → [`DecryptedSum`].

mod aggregate;
pub mod codec;
mod committee;
mod member;
pub mod params;
mod participant;
pub mod ring;
pub mod wire;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use super::CryptoError;

pub use aggregate::{Accumulator, Aggregate, DecryptedSum};
pub use committee::{Committee, MemberSet};
pub use member::release;
pub use params::{KaheParams, RingProfile, DEFAULT_FRAC_BITS};
pub use participant::{ParticipantKey, PreparedEncryption, SealedUpdate, Seed, SeedBundle};

/// Label of the stream that expands the public polynomials a_i.
const CRS_LABEL: &str = "fhenode/kahe/a/v3";

/// What every party derives from the session plan: the parameters, the plan's digest (which
/// binds them, the roster and the id) and the update length.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionContext {
    pub params: KaheParams,
    pub plan_digest: [u8; 32],
    pub length: u64,
    committee: Committee,
}

impl SessionContext {
    pub fn new(
        params: KaheParams,
        plan_digest: [u8; 32],
        length: u64,
    ) -> Result<Self, CryptoError> {
        params.validate()?;
        let committee = Committee::new(params.committee, params.threshold)?;
        if length == 0 || length > MAX_LENGTH {
            return Err(CryptoError::InvalidParams(format!(
                "length = {length} is outside 1..={MAX_LENGTH}"
            )));
        }
        Ok(SessionContext {
            params,
            plan_digest,
            length,
            committee,
        })
    }

    pub fn committee(&self) -> Committee {
        self.committee
    }

    pub fn ring_dim(&self) -> usize {
        self.params.ring().ring_dim
    }

    /// Bytes of an update's (or a release's) bodies.
    pub fn body_bytes(&self) -> usize {
        self.params.body_bytes(self.length) as usize
    }

    /// The key the public polynomials are expanded from: nobody chooses them.
    pub(crate) fn crs_key(&self) -> [u8; 32] {
        blake3::derive_key("fhenode 2026 kahe crs v1", &self.plan_digest)
    }
}

/// Longest update: 2^28 values (1 GiB of f32).
pub const MAX_LENGTH: u64 = 1 << 28;

/// Polynomial `index` of the public randomness, in evaluation form.
pub(crate) fn public_poly(crs_key: &[u8; 32], index: u64, out: &mut [u64]) {
    ring::expand_uniform(crs_key, CRS_LABEL, index, out);
}

/// What the coordinator asks of the answering members: release keys for `contributors` (S,
/// sorted, distinct) under `assignment` (member per set of [`Committee::sets`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub contributors: Vec<String>,
    pub assignment: Vec<u32>,
}

impl ReleaseRequest {
    /// Shape checks every party makes: S as [`check_contributors`] wants it, and an
    /// assignment with one holder per set.
    pub fn check(&self, ctx: &SessionContext) -> Result<(), CryptoError> {
        check_contributors(ctx, &self.contributors)?;
        ctx.committee().assigned_to(&self.assignment, 0).map(|_| ())
    }

    /// The digest that names S (canonical: the set sorted), bound to the session. A member
    /// answers for one such digest per session.
    pub fn contributors_digest(&self, ctx: &SessionContext) -> [u8; 32] {
        contributors_digest(ctx, &self.contributors)
    }
}

/// A contributor set's shape: not empty, sorted and distinct, not larger than declared.
pub fn check_contributors(
    ctx: &SessionContext,
    contributors: &[String],
) -> Result<(), CryptoError> {
    if contributors.is_empty() {
        return Err(CryptoError::DecryptionRefused("no contributors".into()));
    }
    if !contributors.windows(2).all(|w| w[0] < w[1]) {
        return Err(CryptoError::DecryptionRefused(
            "contributors must be sorted and distinct".into(),
        ));
    }
    if contributors.len() as u64 > ctx.params.participants as u64 {
        return Err(CryptoError::DecryptionRefused(format!(
            "{} contributors where the session declared at most {}",
            contributors.len(),
            ctx.params.participants
        )));
    }
    Ok(())
}

/// Digest of a sorted contributor set under a session.
pub fn contributors_digest(ctx: &SessionContext, contributors: &[String]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("fhenode 2026 kahe contributors v1");
    h.update(&ctx.plan_digest);
    h.update(&(contributors.len() as u64).to_le_bytes());
    for c in contributors {
        h.update(&(c.len() as u64).to_le_bytes());
        h.update(c.as_bytes());
    }
    *h.finalize().as_bytes()
}
