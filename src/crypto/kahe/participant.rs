//! A participant's one-time key (one OS seed per maximal unqualified set), the seeds each
//! member receives, and encryption in two steps: the pad `a·r + e` prepared when the session
//! opens, the update added when it is ready.

use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::super::params::Rounding;
use super::super::rng::{os_seed, ChunkRandomness};
use super::super::wire::{envelope_digest, seal_frame};
use super::super::CryptoError;
use super::codec::{
    encode_fixed, field_of, nearest_addends, read_field, with_field_width, write_field,
    write_fields,
};
use super::committee::Committee;
use super::ring::{self, add_assign, add_mod, expand_uniform, from_signed, Switch};
use super::wire::{update_bodies_mut, update_frame};
use super::SessionContext;

/// Label of the stream that expands a key seed into its polynomial.
const KEY_LABEL: &str = "fhenode/kahe/key/v3";
/// Label of the encryption noise streams, one per polynomial.
const NOISE_LABEL: &str = "fhenode/kahe/noise/v3";
/// Label of the stochastic-rounding streams, one per polynomial.
const ROUNDING_LABEL: &str = "fhenode/kahe/rounding/v2";

/// One seed of 256 bits.
pub type Seed = [u8; 32];

/// The polynomial (evaluation form, uniform mod q) a seed expands to.
pub(crate) fn expand_key(seed: &Seed, n: usize, out: &mut [u64]) {
    debug_assert_eq!(out.len(), n);
    expand_uniform(seed, KEY_LABEL, 0, out);
}

/// A participant's one-time key r_P = Σ_A Expand(σ_A): seed `i` belongs to set `i` of
/// [`Committee::sets`]. Secret until the session ends; wiped on drop, redacted in `Debug`.
///
/// Beside the key seeds, one more OS seed drives the encryption's noise and stochastic
/// rounding, so that the one body a key makes is a function of the key and the update: the
/// same update sealed again (after a restart, or a failed upload) gives the same bytes, which
/// the node may send again, while another update gives other bytes, which it must not send
/// (their difference with the first would reveal the difference of the updates; the node
/// records the first body's digest before any of it leaves). No body has to be stored.
pub struct ParticipantKey {
    committee: Committee,
    seeds: Zeroizing<Vec<Seed>>,
    encryption_seed: Zeroizing<Seed>,
}

impl fmt::Debug for ParticipantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParticipantKey({} seeds, redacted)", self.seeds.len())
    }
}

impl ParticipantKey {
    /// Draws one seed per set from the operating system.
    pub fn generate(committee: Committee) -> Self {
        let seeds = committee
            .sets()
            .iter()
            .map(|_| *os_seed())
            .collect::<Vec<_>>();
        ParticipantKey {
            committee,
            seeds: Zeroizing::new(seeds),
            encryption_seed: os_seed(),
        }
    }

    /// A key from its stored seeds.
    pub fn from_seeds(
        committee: Committee,
        seeds: Zeroizing<Vec<Seed>>,
        encryption_seed: Zeroizing<Seed>,
    ) -> Result<Self, CryptoError> {
        if seeds.len() != committee.sets().len() {
            return Err(CryptoError::Malformed {
                what: "participant key",
                reason: format!(
                    "{} seeds where the committee has {} sets",
                    seeds.len(),
                    committee.sets().len()
                ),
            });
        }
        Ok(ParticipantKey {
            committee,
            seeds,
            encryption_seed,
        })
    }

    /// The seeds, to persist.
    pub fn seeds(&self) -> &[Seed] {
        &self.seeds
    }

    /// The seed of the encryption's noise and rounding, to persist with the key seeds.
    pub fn encryption_seed(&self) -> &Seed {
        &self.encryption_seed
    }

    pub fn committee(&self) -> Committee {
        self.committee
    }

    /// What member `member` receives: the seed of every set it does not belong to.
    pub fn bundle_for(&self, member: u32) -> SeedBundle {
        let sets = self.committee.sets_held_by(member);
        let seeds = sets.iter().map(|&i| self.seeds[i as usize]).collect();
        SeedBundle {
            member,
            sets,
            seeds: Zeroizing::new(seeds),
        }
    }

    /// r̂ = Σ_A Expand(σ_A), in evaluation form.
    fn key_eval(&self, n: usize) -> Zeroizing<Vec<u64>> {
        let mut key = ring::scratch(n);
        let mut part = ring::scratch(n);
        for seed in self.seeds.iter() {
            expand_key(seed, n, &mut part);
            add_assign(&mut key, &part);
        }
        key
    }

    /// Draws the encryption of zero for the session: every body `switch(a_i·r + e_i)`, written
    /// straight into the update's wire frame. Only [`PreparedEncryption::seal`] adds values.
    pub fn prepare(&self, ctx: &SessionContext) -> Result<PreparedEncryption, CryptoError> {
        if self.committee != ctx.committee() {
            return Err(CryptoError::InvalidParams(
                "the key was made for another committee".into(),
            ));
        }
        let n = ctx.ring_dim();
        let key = self.key_eval(n);
        let noise_seed = &self.encryption_seed;
        let crs = ctx.crs_key();
        let width = ctx.params.wire_bytes();
        let switch = Switch::new(ctx.params.wire_bits);
        let noise_log2 = ctx.params.ring().noise_log2;
        let mut frame = Zeroizing::new(update_frame(ctx));
        let bodies = update_bodies_mut(&mut frame);
        // Each step a whole polynomial at a time, in loops the compiler vectorises.
        bodies.par_chunks_mut(n * width).enumerate().for_each_init(
            || {
                let noise = (Zeroizing::new(vec![0u32; n]), Zeroizing::new(vec![0i64; n]));
                (ring::scratch(n), ring::scratch(n), noise)
            },
            |(a, pad, (words, noise)), (i, out)| {
                super::public_poly(&crs, i as u64, a);
                ring::product_into(n, a, &key, pad);
                ChunkRandomness::new(noise_seed, NOISE_LABEL, i as u64)
                    .fill_t_uniform(noise_log2, words, noise);
                for (x, &e) in pad.iter_mut().zip(noise.iter()) {
                    *x = switch.apply(add_mod(*x, from_signed(e)));
                }
                write_fields(out, width, pad);
            },
        );
        Ok(PreparedEncryption {
            ctx: ctx.clone(),
            frame: Some(frame),
            rounding_seed: self.encryption_seed.clone(),
        })
    }

    /// Encrypts in one step: [`ParticipantKey::prepare`], then [`PreparedEncryption::seal`].
    pub fn encrypt(
        &self,
        ctx: &SessionContext,
        values: &[f32],
    ) -> Result<SealedUpdate, CryptoError> {
        self.prepare(ctx)?.seal(values)
    }
}

/// The seeds one member holds of one participant: `seeds[i]` is the seed of set `sets[i]`.
/// Sent over the authenticated channel and stored by the member until the session ends.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedBundle {
    pub member: u32,
    pub sets: Vec<u32>,
    pub seeds: Zeroizing<Vec<Seed>>,
}

impl fmt::Debug for SeedBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SeedBundle {{ member: {}, sets: {:?}, seeds: redacted }}",
            self.member, self.sets
        )
    }
}

impl SeedBundle {
    /// Checks the bundle is exactly what `member` of `committee` should hold.
    pub fn check(&self, committee: Committee, member: u32) -> Result<(), CryptoError> {
        if self.member != member
            || member >= committee.size()
            || self.sets != committee.sets_held_by(member)
            || self.seeds.len() != self.sets.len()
        {
            return Err(CryptoError::Malformed {
                what: "seed bundle",
                reason: format!(
                    "member {} with {} sets and {} seeds is not what member {member} of a \
                     committee of {} holds",
                    self.member,
                    self.sets.len(),
                    self.seeds.len(),
                    committee.size()
                ),
            });
        }
        Ok(())
    }

    /// The seed of set `set`, if this bundle holds it.
    pub fn seed(&self, set: u32) -> Option<&Seed> {
        let i = self.sets.binary_search(&set).ok()?;
        self.seeds.get(i)
    }

    /// A digest of the bundle, to recognise a repeated delivery without keeping a second copy.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("fhenode 2026 kahe seed bundle v1");
        h.update(&self.member.to_le_bytes());
        for (s, seed) in self.sets.iter().zip(self.seeds.iter()) {
            h.update(&s.to_le_bytes());
            h.update(seed);
        }
        *h.finalize().as_bytes()
    }
}

/// An update's encryption of zero, waiting for its values. As secret as the update it will
/// carry (sent bodies minus these are the message): never cloned, wiped on drop, and consumed
/// by the one seal that uses it.
pub struct PreparedEncryption {
    ctx: SessionContext,
    frame: Option<Zeroizing<Vec<u8>>>,
    /// The key's encryption seed: stochastic rounding draws from it (see [`ParticipantKey`]).
    rounding_seed: Zeroizing<Seed>,
}

impl fmt::Debug for PreparedEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PreparedEncryption({} values, {})",
            self.ctx.length,
            if self.frame.is_some() {
                "unsealed"
            } else {
                "used"
            }
        )
    }
}

/// An encrypted update's wire bytes.
#[derive(Clone, Debug)]
pub struct SealedUpdate {
    pub bytes: Vec<u8>,
    /// Values clipped to ±clip.
    pub clipped: u64,
    /// The envelope digest: names the update.
    pub digest: [u8; 32],
}

impl PreparedEncryption {
    /// Bytes it holds (its share of a preparation budget).
    pub fn size(&self) -> usize {
        self.frame.as_ref().map_or(0, |f| f.len())
    }

    /// Adds the encoded values into the prepared bodies and seals the envelope. A wrong length
    /// or a NaN is refused before anything is used: the preparation stays available.
    pub fn seal(mut self, values: &[f32]) -> Result<SealedUpdate, CryptoError> {
        self.seal_in_place(values, None)
    }

    /// [`PreparedEncryption::seal`] of a weighted sum's update: every encoded value multiplied
    /// by `weight` (exactly, in the plaintext ring), and `weight` itself in the last coefficient.
    pub fn seal_weighted(
        mut self,
        values: &[f32],
        weight: u32,
    ) -> Result<SealedUpdate, CryptoError> {
        self.seal_in_place(values, Some(weight))
    }

    /// [`PreparedEncryption::seal`] (or [`PreparedEncryption::seal_weighted`]) that leaves the
    /// preparation in place when it refuses.
    pub fn seal_in_place(
        &mut self,
        values: &[f32],
        weight: Option<u32>,
    ) -> Result<SealedUpdate, CryptoError> {
        let ctx = &self.ctx;
        let params = &ctx.params;
        let expected = ctx.length - params.max_weight.is_some() as u64;
        if values.len() as u64 != expected {
            return Err(CryptoError::LengthMismatch {
                expected,
                got: values.len() as u64,
            });
        }
        match (params.max_weight, weight) {
            (None, None) => {}
            (Some(max), Some(w)) if (1..=max).contains(&w) => {}
            (Some(max), Some(w)) => {
                return Err(CryptoError::InvalidParams(format!(
                    "weight {w} is outside 1..={max}"
                )))
            }
            (Some(_), None) => {
                return Err(CryptoError::InvalidParams(
                    "a weighted sum's update needs its weight".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(CryptoError::InvalidParams(
                    "an unweighted sum's update takes no weight".into(),
                ))
            }
        }
        if let Some(index) = values.iter().position(|v| v.is_nan()) {
            return Err(CryptoError::NonFinite { index });
        }
        let mut frame = self.frame.take().ok_or_else(|| {
            CryptoError::InvalidParams("this prepared encryption was already sealed".into())
        })?;
        let n = ctx.ring_dim();
        let width = params.wire_bytes();
        let mask = (1u64 << params.wire_bits) - 1;
        // Multiplying a field by w multiplies its plaintext by w mod 2^plaintext_bits: the
        // weighted value exactly, since the plaintext is sized for max_weight.
        let multiplier = weight.unwrap_or(1) as u64;
        let bodies = update_bodies_mut(&mut frame);
        let clipped: Result<u64, CryptoError> = bodies
            .par_chunks_mut(n * width)
            .zip(values.par_chunks(n))
            .enumerate()
            .map_init(
                || Zeroizing::new(vec![0u64; n]),
                |addends, (i, (out, vals))| {
                    let addends = &mut addends[..vals.len()];
                    let clipped = match params.rounding {
                        Rounding::Nearest => nearest_addends(params, vals, addends),
                        Rounding::Stochastic => {
                            let mut rng =
                                ChunkRandomness::new(&self.rounding_seed, ROUNDING_LABEL, i as u64);
                            let mut uniform = || rng.unit();
                            let mut clipped = 0u64;
                            for (j, (a, &v)) in addends.iter_mut().zip(vals).enumerate() {
                                let (fixed, c) = encode_fixed(params, v, i * n + j, &mut uniform)?;
                                clipped += c as u64;
                                *a = field_of(params, fixed);
                            }
                            clipped
                        }
                    };
                    if multiplier != 1 {
                        addends.iter_mut().for_each(|a| *a = a.wrapping_mul(multiplier));
                    }
                    with_field_width!(width, W => {
                        for (j, &a) in addends.iter().enumerate() {
                            write_field::<W>(out, j, read_field::<W>(out, j).wrapping_add(a) & mask);
                        }
                    });
                    Ok(clipped)
                },
            )
            .sum();
        if let Some(w) = weight {
            // The weight's coefficient: w · 2^f, i.e. the value 1 weighted.
            let at = values.len();
            let field = field_of(params, (w as i64) << params.frac_bits);
            let out = &mut bodies[(at / n) * n * width..];
            with_field_width!(width, W => {
                let sum = read_field::<W>(out, at % n).wrapping_add(field);
                write_field::<W>(out, at % n, sum & mask);
            });
        }
        let clipped = clipped?;
        seal_frame(&mut frame);
        let bytes = std::mem::take(&mut *frame);
        let digest = envelope_digest(&bytes).unwrap_or_default();
        Ok(SealedUpdate {
            bytes,
            clipped,
            digest,
        })
    }
}
