//! Parameter profiles and the noise budget that turns them into session limits.
//!
//! Every figure here is derived in `docs/CRYPTO.md`; the formulas below are the single source
//! of truth and the tests in `crypto::tests` check them against measured noise.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use super::CryptoError;

/// A named parameter set, recorded in every key and ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// u128 torus, ring dimension 4096, TUniform(30): tfhe's 128-bit noise-squashing lattice,
    /// flooding with 40 bits of statistical distance. The default.
    #[default]
    Secure,
    /// u64 torus, n = 2048, TUniform(17): tfhe's vetted compact-PKE parameters, for one-time
    /// per-session keys, with small flooding (see `docs/CRYPTO.md` for the leakage argument).
    Fast,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::Secure, Profile::Fast];

    pub fn params(self) -> &'static ProfileParams {
        match self {
            Profile::Secure => &SECURE,
            Profile::Fast => &FAST,
        }
    }

    pub fn name(self) -> &'static str {
        self.params().name
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "secure" => Ok(Profile::Secure),
            "fast" => Ok(Profile::Fast),
            other => Err(CryptoError::InvalidParams(format!(
                "unknown profile {other:?}; supported: secure, fast"
            ))),
        }
    }
}

/// The fixed numbers of a profile.
#[derive(Debug, PartialEq, Eq)]
pub struct ProfileParams {
    pub name: &'static str,
    /// Bits of the torus (ciphertext modulus q = 2^torus_bits).
    pub torus_bits: u32,
    /// Ring / LWE dimension N.
    pub ring_dim: usize,
    /// Bodies sharing one mask: a chunk holds `bodies_per_mask · N` values, under one
    /// encryption randomness r and as many independent key polynomials (docs/CRYPTO.md §1).
    pub bodies_per_mask: usize,
    /// Public-key and encryption noise: TUniform(noise_log2), uniform on [-2^b, 2^b].
    pub noise_log2: u32,
    /// Bits kept of each mask coefficient on the wire (the rest are rounded away).
    pub mask_keep_bits: u32,
    /// Bits kept of each body coefficient on the wire.
    pub body_keep_bits: u32,
    /// Largest number of contributors a session of this profile may declare.
    pub max_participants: u32,
    /// Largest committee a session of this profile may declare.
    pub max_committee: u32,
    /// Flooding noise is 2^flood_margin_bits times the worst-case aggregate noise.
    pub flood_margin_bits: u32,
}

impl ProfileParams {
    /// Values per ciphertext chunk: one mask polynomial and `bodies_per_mask` bodies.
    pub fn chunk_values(&self) -> usize {
        self.ring_dim * self.bodies_per_mask
    }

    /// Chunks an update of `length` values takes.
    pub fn chunks(&self, length: u64) -> u64 {
        length.div_ceil(self.chunk_values() as u64)
    }

    /// Masks and bodies of an encrypted update of `length` values, in bytes: all of its wire
    /// form but a few hundred bytes of framing.
    pub fn ciphertext_bytes(&self, length: u64) -> u64 {
        let mask = (self.ring_dim * super::codec::packed_width(self.mask_keep_bits)) as u64;
        let body = super::codec::packed_width(self.body_keep_bits) as u64;
        self.chunks(length)
            .saturating_mul(mask)
            .saturating_add(length.saturating_mul(body))
    }
}

pub static SECURE: ProfileParams = ProfileParams {
    name: "secure",
    torus_bits: 128,
    ring_dim: 4096,
    bodies_per_mask: 8,
    noise_log2: 30,
    mask_keep_bits: 96,
    body_keep_bits: 88,
    max_participants: 1024,
    max_committee: 16,
    flood_margin_bits: 40,
};

pub static FAST: ProfileParams = ProfileParams {
    name: "fast",
    torus_bits: 64,
    ring_dim: 2048,
    bodies_per_mask: 8,
    noise_log2: 17,
    mask_keep_bits: 48,
    body_keep_bits: 40,
    max_participants: 256,
    max_committee: 8,
    flood_margin_bits: 2,
};

/// "Worst case" for a noise sum is `TAIL_SIGMAS` standard deviations: the sums here are of
/// thousands of independent bounded terms (CLT), and a Gaussian exceeds 10σ with probability
/// below 2^-75 per coefficient.
pub const TAIL_SIGMAS: f64 = 10.0;

/// Variance of TUniform(b): uniform on [-2^b, 2^b] with half weight on the two ends.
pub fn t_uniform_variance(b: u32) -> f64 {
    (2f64.powi(2 * b as i32 + 1) + 1.0) / 6.0
}

/// Noise figures (as log2 of absolute torus units) for a session of `participants`
/// contributors and `committee` key holders. See `docs/CRYPTO.md` §3 for the derivation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NoiseBudget {
    /// Standard deviation of one fresh ciphertext's phase noise (no rounding).
    pub fresh_std_log2: f64,
    /// Standard deviation added by rounding one ciphertext for the wire.
    pub compression_std_log2: f64,
    /// Standard deviation of the centred sum of `participants` wire ciphertexts, including the
    /// rounding of the aggregate mask sent to the committee.
    pub aggregate_std_log2: f64,
    /// Worst-case |noise| of that sum: TAIL_SIGMAS standard deviations.
    pub aggregate_bound_log2: f64,
    /// Each member's flooding noise is TUniform(flood_log2).
    pub flood_log2: u32,
    /// Bits kept of each partial-decryption coefficient on the wire.
    pub partial_keep_bits: u32,
    /// Worst case of everything the combiner sees: aggregate + all flooding + partial rounding.
    pub total_bound_log2: f64,
    /// Largest plaintext width w with total noise < Δ/2 = 2^(q_bits - w - 1).
    pub max_plaintext_bits: u32,
}

impl NoiseBudget {
    pub fn compute(profile: Profile, participants: u32, committee: u32) -> Self {
        let p = profile.params();
        let n = p.ring_dim as f64;
        let k = committee.max(1) as f64;
        let big_k = participants.max(1) as f64;
        let sigma2 = t_uniform_variance(p.noise_log2);
        // Collective secret s = Σ s_i of k binary shares: E[s_j²] = k/4 + k²/4.
        let s2 = k * (k + 1.0) / 4.0;
        // Fresh phase noise: e·r + e2 − e1·s, with e = Σ e_i (variance kσ²) and r binary.
        // The e·r term is given with the randomness centred (variance of r − 1/2 is 1/4);
        // the accumulator's correction makes that the right figure for sums.
        let fresh = n * sigma2 * s2 + sigma2 + n * k * sigma2 / 4.0;
        let mask_drop = (p.torus_bits - p.mask_keep_bits) as i32;
        let body_drop = (p.torus_bits - p.body_keep_bits) as i32;
        let round_mask = n * s2 * 2f64.powi(2 * mask_drop) / 12.0;
        let round_body = 2f64.powi(2 * body_drop) / 12.0;
        let compression = round_mask + round_body;
        // Sum of K: independent terms add; e·(Σr − ⌊K/2⌋) has per-coefficient variance ≤ K/4 + 1/4.
        let var_k = big_k * (n * sigma2 * s2 + sigma2 + compression)
            + (big_k / 4.0 + 0.25) * n * k * sigma2
            + round_mask;
        let aggregate_std = var_k.sqrt();
        let aggregate_bound = TAIL_SIGMAS * aggregate_std;
        let flood_log2 = aggregate_bound.log2().ceil() as u32 + p.flood_margin_bits;
        // Rounding partials keeps their error ≤ 2^(flood − 8) per member: byte-aligned width.
        let min_keep = p.torus_bits - (flood_log2 - 7);
        let partial_keep_bits = min_keep.div_ceil(8) * 8;
        let partial_round = 2f64.powi((p.torus_bits - partial_keep_bits) as i32 - 1);
        let total = aggregate_bound + k * 2f64.powi(flood_log2 as i32) + k * partial_round;
        let total_log2 = total.log2();
        // Need total < 2^(q − w − 1)  ⇔  w < q − 1 − log2(total).
        let max_w = (p.torus_bits as f64 - 1.0 - total_log2).ceil() as i64 - 1;
        NoiseBudget {
            fresh_std_log2: fresh.sqrt().log2(),
            compression_std_log2: compression.sqrt().log2(),
            aggregate_std_log2: aggregate_std.log2(),
            aggregate_bound_log2: aggregate_bound.log2(),
            flood_log2,
            partial_keep_bits,
            total_bound_log2: total_log2,
            max_plaintext_bits: max_w.clamp(0, 62) as u32,
        }
    }
}

/// How floats are rounded to fixed point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// Round to nearest: error ≤ 2^-(frac_bits+1) per value, deterministic.
    #[default]
    Nearest,
    /// Unbiased stochastic rounding: error < 2^-frac_bits per value, zero mean.
    Stochastic,
}

/// Everything that fixes how a session encodes, encrypts and decrypts. Agreed by all parties
/// at session creation and bound into every key and ciphertext digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionParams {
    pub profile: Profile,
    /// Largest number of contributors (participants that may submit).
    pub participants: u32,
    /// Number of key-committee members (n-of-n).
    pub committee: u32,
    /// Values are clipped to [-clip, clip].
    pub clip: f64,
    /// Fixed-point fraction bits.
    pub frac_bits: u32,
    /// Plaintext modulus 2^plaintext_bits.
    pub plaintext_bits: u32,
    pub rounding: Rounding,
}

impl SessionParams {
    /// The most precise parameters for this session shape: the widest plaintext the noise
    /// budget allows and the most fraction bits that cannot overflow.
    pub fn recommended(
        profile: Profile,
        participants: u32,
        committee: u32,
        clip: f64,
    ) -> Result<Self, CryptoError> {
        let budget = NoiseBudget::compute(profile, participants, committee);
        let w = budget.max_plaintext_bits;
        // Largest f with participants · clip · 2^f < 2^(w-1).
        let headroom = (w as f64 - 1.0) - (participants.max(1) as f64 * clip).log2();
        let frac_bits = (headroom.ceil() as i64 - 1).clamp(0, 52) as u32;
        let params = SessionParams {
            profile,
            participants,
            committee,
            clip,
            frac_bits,
            plaintext_bits: w,
            rounding: Rounding::Nearest,
        };
        params.validate()?;
        Ok(params)
    }

    /// Refuses anything that could overflow, decrypt wrongly, or breaks a profile limit, with a
    /// message naming the limit.
    pub fn validate(&self) -> Result<(), CryptoError> {
        let p = self.profile.params();
        let bad = |m: String| Err(CryptoError::InvalidParams(m));
        if self.participants == 0 || self.participants > p.max_participants {
            return bad(format!(
                "participants = {} is outside 1..={} for profile {}",
                self.participants, p.max_participants, p.name
            ));
        }
        if self.committee == 0 || self.committee > p.max_committee {
            return bad(format!(
                "committee = {} is outside 1..={} for profile {}",
                self.committee, p.max_committee, p.name
            ));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad(format!(
                "clip = {} must be a positive finite number",
                self.clip
            ));
        }
        if self.frac_bits > 52 {
            return bad(format!("frac_bits = {} exceeds 52", self.frac_bits));
        }
        let budget = NoiseBudget::compute(self.profile, self.participants, self.committee);
        if self.plaintext_bits < 2 || self.plaintext_bits > budget.max_plaintext_bits {
            return bad(format!(
                "plaintext_bits = {} is outside 2..={}: the noise of {} participants and a \
                 committee of {} under profile {} leaves room for at most {} bits",
                self.plaintext_bits,
                budget.max_plaintext_bits,
                self.participants,
                self.committee,
                p.name,
                budget.max_plaintext_bits
            ));
        }
        // participants · clip · 2^frac_bits must stay below 2^(w-1): the sum may not wrap.
        let sum_log2 = (self.participants as f64).log2() + self.clip.log2() + self.frac_bits as f64;
        let limit = (self.plaintext_bits - 1) as f64;
        if sum_log2 >= limit {
            return bad(format!(
                "participants · clip · 2^frac_bits = 2^{sum_log2:.2} reaches the plaintext \
                 limit 2^(plaintext_bits-1) = 2^{limit}: lower frac_bits (at most {}), clip or \
                 participants",
                ((limit - (self.participants as f64).log2() - self.clip.log2()).ceil() as i64 - 1)
                    .max(0)
            ));
        }
        Ok(())
    }

    pub fn budget(&self) -> NoiseBudget {
        NoiseBudget::compute(self.profile, self.participants, self.committee)
    }

    /// Largest |error| of one decoded value of a sum of `contributors` values, from rounding.
    pub fn sum_error_bound(&self, contributors: u32) -> f64 {
        contributors as f64 * self.per_value_error_bound()
    }

    /// Largest |error| of the decoded mean, from rounding.
    pub fn mean_error_bound(&self) -> f64 {
        self.per_value_error_bound()
    }

    fn per_value_error_bound(&self) -> f64 {
        let ulp = 2f64.powi(-(self.frac_bits as i32));
        match self.rounding {
            Rounding::Nearest => ulp / 2.0,
            Rounding::Stochastic => ulp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_meets_its_promises_at_its_limits() {
        let b = NoiseBudget::compute(Profile::Secure, 1000, 16);
        // 40 bits of flooding over the worst-case aggregate.
        assert!(
            b.flood_log2 as f64 - b.aggregate_bound_log2 >= 40.0,
            "{b:?}"
        );
        // Precision at least Flower's: ≤ 2.5e-6 on the mean of values in ±8.
        let p = SessionParams::recommended(Profile::Secure, 1000, 16, 8.0).unwrap();
        assert!(p.mean_error_bound() <= 2.5e-6, "{p:?}");
        // And the largest session the profile allows still works.
        SessionParams::recommended(Profile::Secure, 1024, 16, 8.0).unwrap();
    }

    #[test]
    fn fast_profile_has_a_usable_plaintext() {
        let b = NoiseBudget::compute(Profile::Fast, 256, 8);
        assert!(b.max_plaintext_bits >= 24, "{b:?}");
        let p = SessionParams::recommended(Profile::Fast, 10, 3, 8.0).unwrap();
        assert!(p.frac_bits >= 16, "{p:?}");
    }

    #[test]
    fn overflow_is_refused_naming_the_limit() {
        let mut p = SessionParams::recommended(Profile::Secure, 100, 3, 8.0).unwrap();
        p.frac_bits += 1;
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("frac_bits"), "{e}");
        let mut p = SessionParams::recommended(Profile::Secure, 100, 3, 8.0).unwrap();
        p.plaintext_bits += 1;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("plaintext_bits"));
        assert!(SessionParams::recommended(Profile::Fast, 257, 3, 8.0)
            .unwrap_err()
            .to_string()
            .contains("participants"));
        assert!(SessionParams::recommended(Profile::Secure, 10, 17, 8.0)
            .unwrap_err()
            .to_string()
            .contains("committee"));
    }

    #[test]
    fn profile_names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
        }
        assert!("ckks".parse::<Profile>().is_err());
    }
}
