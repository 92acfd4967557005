//! Ring profiles and session parameters of key-additive aggregation, with the error bound that
//! sizes the plaintext and wire widths from the session's participant count (`docs/CRYPTO.md`
//! A.3). The formulas here are the single source of truth; the tests check them against measured
//! decodings.

use serde::{Deserialize, Serialize};

use super::super::params::{Profile, Rounding};
use super::super::CryptoError;
use super::ring::{Switch, Q_LOG2};

/// The fixed numbers of a profile under key-additive aggregation.
#[derive(Debug, PartialEq, Eq)]
pub struct RingProfile {
    pub name: &'static str,
    /// Ring dimension N: each polynomial carries N values.
    pub ring_dim: usize,
    /// Encryption noise TUniform(noise_log2): uniform on [−2^b, 2^b], half weight at the ends.
    pub noise_log2: u32,
    /// Largest number of participants a session may declare.
    pub max_participants: u32,
    /// Largest committee a session may declare (every participant sends C(k−1, t−1) seeds to
    /// each member, and the sets number C(k, t−1): 252 at k = 10).
    pub max_committee: u32,
}

pub static SECURE_RING: RingProfile = RingProfile {
    name: "secure",
    ring_dim: 4096,
    noise_log2: 17,
    max_participants: 1024,
    max_committee: 10,
};

pub static FAST_RING: RingProfile = RingProfile {
    name: "fast",
    ring_dim: 2048,
    noise_log2: 17,
    max_participants: 1024,
    max_committee: 10,
};

/// The ring profile of a named profile.
pub fn ring_profile(profile: Profile) -> &'static RingProfile {
    match profile {
        Profile::Secure => &SECURE_RING,
        Profile::Fast => &FAST_RING,
    }
}

/// Widest wire field: the modulus switched to must stay well below q.
pub const MAX_WIRE_BITS: u32 = 56;

/// Default fixed-point fraction bits: finer than Flower's default quantisation.
pub const DEFAULT_FRAC_BITS: u32 = 20;

/// The largest |fixed-point value| one clipped value encodes to: ⌈clip·2^f⌉ (rounding to
/// nearest or stochastically may round clip·2^f up).
fn max_fixed(clip: f64, frac_bits: u32) -> f64 {
    (clip * (1u64 << frac_bits) as f64).ceil()
}

/// Everything that fixes how a session encodes, encrypts and decrypts; bound into the session
/// plan's digest, hence into every ciphertext and key release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KaheParams {
    pub profile: Profile,
    /// Largest number of contributors.
    pub participants: u32,
    /// Committee size k.
    pub committee: u32,
    /// Members needed to decrypt, k/2 < t ≤ k.
    pub threshold: u32,
    /// Values are clipped to [−clip, clip].
    pub clip: f64,
    pub frac_bits: u32,
    /// Plaintext modulus 2^plaintext_bits: holds the sum of `participants` clipped values.
    pub plaintext_bits: u32,
    /// Bits of each body and key-release coefficient on the wire (the modulus switched to).
    pub wire_bits: u32,
    pub rounding: Rounding,
    /// A weighted sum's largest weight: each update is sealed multiplied by its integer weight
    /// w ≤ max_weight, with one more coefficient carrying w itself (`None`: unweighted).
    pub max_weight: Option<u32>,
}

impl KaheParams {
    /// The narrowest plaintext that holds the sum without wrap-around, and the narrowest
    /// byte-aligned wire width that decodes it exactly.
    pub fn recommended(
        profile: Profile,
        participants: u32,
        committee: u32,
        threshold: u32,
        clip: f64,
        frac_bits: u32,
    ) -> Result<Self, CryptoError> {
        Self::recommended_weighted(
            profile,
            participants,
            committee,
            threshold,
            clip,
            frac_bits,
            None,
        )
    }

    /// [`KaheParams::recommended`] for sums of updates multiplied by integer weights of at
    /// most `max_weight` (`None`: unweighted): the plaintext grows by log2(max_weight) bits.
    pub fn recommended_weighted(
        profile: Profile,
        participants: u32,
        committee: u32,
        threshold: u32,
        clip: f64,
        frac_bits: u32,
        max_weight: Option<u32>,
    ) -> Result<Self, CryptoError> {
        if frac_bits > 40 {
            return Err(CryptoError::InvalidParams(format!(
                "frac_bits = {frac_bits} exceeds 40"
            )));
        }
        let mut params = KaheParams {
            profile,
            participants,
            committee,
            threshold,
            clip,
            frac_bits,
            plaintext_bits: 0,
            wire_bits: 0,
            rounding: Rounding::Nearest,
            max_weight,
        };
        // |Σm| < 2^(w−1): one bit for the sign, and a strict bound.
        params.plaintext_bits = (params.sum_log2().floor() as i64 + 2).max(2) as u32;
        params.wire_bits = (1..=MAX_WIRE_BITS / 8)
            .map(|b| b * 8)
            .find(|&bits| {
                params.error_bound_log2(bits) < bits as f64 - params.plaintext_bits as f64 - 1.0
            })
            .ok_or_else(|| {
                CryptoError::InvalidParams(format!(
                    "no wire width up to {MAX_WIRE_BITS} bits decodes a {}-bit \
                     plaintext of {participants} participants{}",
                    params.plaintext_bits,
                    match max_weight {
                        Some(w) => format!(" with max_weight {w}: lower max_weight"),
                        None => String::new(),
                    }
                ))
            })?;
        params.validate()?;
        Ok(params)
    }

    pub fn ring(&self) -> &'static RingProfile {
        ring_profile(self.profile)
    }

    /// log2 of the worst case |error| of a decoded coefficient, in units of the wire modulus
    /// 2^bits: every switched term (K bodies and at most k releases) is off by at most
    /// ½ + 2^(bits−63) (`Switch`), and the summed encryption noise Σe (|e| ≤ 2^b each) scales
    /// by 2^bits/q. Deterministic: every term is bounded, no tail estimate is needed.
    pub fn error_bound_log2(&self, bits: u32) -> f64 {
        let k = self.participants.max(1) as f64;
        let switching = (k + self.committee.max(1) as f64) * Switch::max_error(bits);
        let noise = k * 2f64.powi(self.ring().noise_log2 as i32) * 2f64.powf(bits as f64 - Q_LOG2);
        (switching + noise).log2()
    }

    /// The largest |plaintext| one honest participant puts in a coefficient: its largest
    /// encoded value, times its largest weight (whose own coefficient encodes w·2^f).
    pub fn largest_encoded(&self) -> f64 {
        match self.max_weight {
            None => max_fixed(self.clip, self.frac_bits),
            Some(w) => {
                let one = (1u64 << self.frac_bits) as f64;
                w as f64 * max_fixed(self.clip, self.frac_bits).max(one)
            }
        }
    }

    /// log2 of the largest |sum| of one coefficient.
    fn sum_log2(&self) -> f64 {
        (self.participants.max(1) as f64 * self.largest_encoded()).log2()
    }

    /// Coefficients an update of `values` values takes: one more for a weighted sum's weight.
    pub fn coefficients(&self, values: u64) -> u64 {
        values + self.max_weight.is_some() as u64
    }

    /// Δ' = 2^(wire_bits − plaintext_bits): the plaintext's scale in a wire coefficient.
    pub fn delta_log2(&self) -> u32 {
        self.wire_bits - self.plaintext_bits
    }

    /// Bytes of one wire coefficient.
    pub fn wire_bytes(&self) -> usize {
        (self.wire_bits / 8) as usize
    }

    /// Polynomials an update of `length` values takes.
    pub fn polys(&self, length: u64) -> u64 {
        length.div_ceil(self.ring().ring_dim as u64)
    }

    /// Bytes of the bodies of an update of `length` values (the wire form adds a fixed header).
    pub fn body_bytes(&self, length: u64) -> u64 {
        length.saturating_mul(self.wire_bytes() as u64)
    }

    /// Refuses anything that could wrap, decode wrongly, or break a profile limit, naming it.
    pub fn validate(&self) -> Result<(), CryptoError> {
        let ring = self.ring();
        let bad = |m: String| Err(CryptoError::InvalidParams(m));
        if self.participants == 0 || self.participants > ring.max_participants {
            return bad(format!(
                "participants = {} is outside 1..={} for profile {}",
                self.participants, ring.max_participants, ring.name
            ));
        }
        if self.committee == 0 || self.committee > ring.max_committee {
            return bad(format!(
                "committee = {} is outside 1..={} for profile {}",
                self.committee, ring.max_committee, ring.name
            ));
        }
        // Two disjoint answering sets could otherwise release keys for two contributor sets.
        // (The bound first: a peer's plan may carry any threshold, and 2·t must not overflow.)
        if self.threshold > self.committee || 2 * self.threshold <= self.committee {
            return bad(format!(
                "threshold = {} must satisfy committee/2 < threshold <= committee (committee = {})",
                self.threshold, self.committee
            ));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad(format!(
                "clip = {} must be a positive finite number",
                self.clip
            ));
        }
        // Below one unit of the fixed point, every value in range encodes to 0 (or ±1 by
        // rounding): the session would aggregate rounding noise.
        if self.clip * 2f64.powi(self.frac_bits as i32) < 1.0 {
            // Blame what can fix it: no frac_bits up to 40 helps a clip below 2^-40.
            return bad(if self.clip < 2f64.powi(-40) {
                format!(
                    "clip = {} is below the finest fixed-point step (2^-40): every value would \
                     encode to 0; raise clip",
                    self.clip
                )
            } else {
                format!(
                    "frac_bits = {} gives a fixed-point step above clip = {}: every value \
                     would encode to 0; raise frac_bits",
                    self.frac_bits, self.clip
                )
            });
        }
        if self.frac_bits > 40 {
            return bad(format!("frac_bits = {} exceeds 40", self.frac_bits));
        }
        if self.wire_bits == 0
            || !self.wire_bits.is_multiple_of(8)
            || self.wire_bits > MAX_WIRE_BITS
        {
            return bad(format!(
                "wire_bits = {} must be a multiple of 8 in 8..={MAX_WIRE_BITS}",
                self.wire_bits
            ));
        }
        if self.plaintext_bits < 2 || self.plaintext_bits >= self.wire_bits {
            return bad(format!(
                "plaintext_bits = {} must be in 2..{}",
                self.plaintext_bits, self.wire_bits
            ));
        }
        if self.max_weight == Some(0) {
            return bad("max_weight = 0: weights are at least 1".to_string());
        }
        let sum_log2 = self.sum_log2();
        if sum_log2 >= (self.plaintext_bits - 1) as f64 {
            let weight = match self.max_weight {
                Some(w) => format!(" · max_weight {w}"),
                None => String::new(),
            };
            return bad(format!(
                "participants · clip · 2^frac_bits{weight} = 2^{sum_log2:.2} reaches the \
                 plaintext limit 2^{}: lower frac_bits, clip{} or participants, or widen \
                 plaintext_bits",
                self.plaintext_bits - 1,
                if weight.is_empty() {
                    ""
                } else {
                    ", max_weight"
                }
            ));
        }
        let err = self.error_bound_log2(self.wire_bits);
        if err >= (self.delta_log2() - 1) as f64 {
            return bad(format!(
                "wire_bits = {}: the switching error 2^{err:.2} of {} participants reaches \
                 half the plaintext scale 2^{}: widen wire_bits",
                self.wire_bits,
                self.participants,
                self.delta_log2() - 1
            ));
        }
        Ok(())
    }

    /// Largest |error| of one decoded value of a sum of `contributors` values (rounding to
    /// fixed point; the decoding itself is exact).
    pub fn sum_error_bound(&self, contributors: u32) -> f64 {
        contributors as f64 * self.per_value_error_bound()
    }

    /// Largest |error| of the decoded mean.
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
    fn ten_participants_cost_four_bytes_and_a_thousand_six() {
        // 10 participants: |Σm| < 2^27 (w = 28), and 15 roundings of at most ½ stay below
        // Δ'/2 = 8 at 32 bits.
        let p = KaheParams::recommended(Profile::Secure, 10, 5, 4, 8.0, 20).unwrap();
        assert_eq!(p.wire_bits, 32, "{p:?}");
        assert_eq!(p.plaintext_bits, 28, "{p:?}");
        let p = KaheParams::recommended(Profile::Secure, 1000, 10, 6, 8.0, 20).unwrap();
        assert_eq!(p.wire_bits, 48, "{p:?}");
        // Precision at least Flower's: ≤ 2.5e-6 on the mean of values in ±8.
        assert!(p.mean_error_bound() <= 2.5e-6);
    }

    #[test]
    fn the_plaintext_holds_sums_of_rounded_up_clipped_values() {
        // clip·2^20 = 44739242.5 rounds up to 44739243: three of them need w = 29.
        let clip = 44739242.5 / (1u64 << 20) as f64;
        let p = KaheParams::recommended(Profile::Fast, 3, 3, 2, clip, 20).unwrap();
        assert!(3 * 44739243i64 < 1 << (p.plaintext_bits - 1), "{p:?}");
    }

    #[test]
    fn noise_words_fit_32_bits() {
        // Encryption draws TUniform(b) samples from 32-bit words in bulk.
        for ring in [&SECURE_RING, &FAST_RING] {
            assert!(ring.noise_log2 + 2 <= 32, "{}", ring.name);
        }
    }

    #[test]
    fn thresholds_at_or_below_half_are_refused() {
        for (k, t) in [(4, 2), (5, 2), (2, 1), (6, 3), (3, 4)] {
            let e = KaheParams::recommended(Profile::Fast, 10, k, t, 8.0, 20).unwrap_err();
            assert!(e.to_string().contains("threshold"), "{k},{t}: {e}");
        }
        for (k, t) in [(1, 1), (2, 2), (3, 2), (5, 3), (7, 4), (10, 6)] {
            KaheParams::recommended(Profile::Fast, 10, k, t, 8.0, 20).unwrap();
        }
    }

    #[test]
    fn limits_are_named() {
        let mut p = KaheParams::recommended(Profile::Secure, 100, 3, 2, 8.0, 20).unwrap();
        p.frac_bits += 2;
        assert!(p.validate().unwrap_err().to_string().contains("frac_bits"));
        let mut p = KaheParams::recommended(Profile::Secure, 100, 3, 2, 8.0, 20).unwrap();
        p.wire_bits = p.plaintext_bits.div_ceil(8) * 8;
        assert!(p.validate().unwrap_err().to_string().contains("wire_bits"));
        assert!(KaheParams::recommended(Profile::Fast, 1025, 3, 2, 8.0, 20)
            .unwrap_err()
            .to_string()
            .contains("participants"));
        assert!(KaheParams::recommended(Profile::Secure, 10, 11, 6, 8.0, 20)
            .unwrap_err()
            .to_string()
            .contains("committee"));
    }
}
