//! Seeded RLWE (tfhe's GLWE with k = 1) over the native `u64` torus, shared by both schemes.
//!
//! A ciphertext of up to N values is one mask polynomial `a`, expanded from a 16-byte seed,
//! and one body coefficient per value: `b_i = (a·s)_i + e_i + m_i`. Only the seed and the
//! bodies travel (8 bytes a value). Coefficient `i` of `(a, b)` is an LWE ciphertext under
//! the flattened key (tfhe's sample extraction), which is what the shortint scheme feeds to
//! its bootstraps; the linear scheme instead multiplies `(a, b)` by a weight polynomial and
//! extracts one coefficient per output.

use std::sync::OnceLock;

use rand::RngCore;
use tfhe::core_crypto::commons::math::random::{DefaultRandomGenerator, RandomGenerator, Seed};
use tfhe::core_crypto::prelude::{
    generate_binary_lwe_secret_key, new_seeder, DynamicDistribution, LweSecretKey,
    SecretRandomGenerator,
};
use zeroize::Zeroizing;

use crate::crypto::codec;
use crate::crypto::ring::{BinaryRing, NttPoly};

/// Bytes of a mask seed.
pub const SEED_BYTES: usize = 16;

/// Below this many values per chunk, `(a·s)_i` is computed directly (N multiply-adds per
/// value) rather than through the NTT (a fixed ~20 µs).
const DIRECT_MAX: usize = 24;

/// The binary-ring NTT plan for dimension `n` (one per supported size, built on first use).
pub(crate) fn ring(n: usize) -> Option<&'static BinaryRing<u64>> {
    static R2048: OnceLock<Option<BinaryRing<u64>>> = OnceLock::new();
    static R4096: OnceLock<Option<BinaryRing<u64>>> = OnceLock::new();
    static R8192: OnceLock<Option<BinaryRing<u64>>> = OnceLock::new();
    let cell = match n {
        2048 => &R2048,
        4096 => &R4096,
        8192 => &R8192,
        _ => return None,
    };
    cell.get_or_init(|| BinaryRing::new(n)).as_ref()
}

/// A fresh seed from the operating system.
pub(crate) fn fresh_seed() -> [u8; SEED_BYTES] {
    let mut s = [0u8; SEED_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// Mask polynomial `chunk` of the ciphertext with `seed`: tfhe's AES-128-CTR generator
/// stream keyed by a BLAKE3 derivation of (seed, chunk), so chunks expand independently (and
/// in parallel); generated in bulk by [`super::prg`].
pub(crate) fn expand_mask(seed: &[u8; SEED_BYTES], chunk: u32, out: &mut [u64]) {
    let mut h = blake3::Hasher::new_derive_key("fhenode 2026 inference mask v1");
    h.update(seed);
    h.update(&chunk.to_le_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&h.finalize().as_bytes()[..16]);
    super::prg::fill_u64(&key, out);
}

/// A binary secret polynomial of dimension N, with the NTT form used for long chunks.
pub(crate) struct RlweSecret {
    bits: Zeroizing<Vec<u64>>,
    ntt: OnceLock<Zeroizing<NttPoly>>,
}

impl RlweSecret {
    pub(crate) fn generate(n: usize) -> Self {
        let mut seeder = new_seeder();
        let mut bits = Zeroizing::new(vec![0u64; n]);
        let mut gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
        generate_binary_lwe_secret_key(&mut LweSecretKey::from_container(&mut bits[..]), &mut gen);
        Self::from_bits(bits)
    }

    pub(crate) fn from_bits(bits: Zeroizing<Vec<u64>>) -> Self {
        RlweSecret {
            bits,
            ntt: OnceLock::new(),
        }
    }

    pub(crate) fn bits(&self) -> &[u64] {
        &self.bits
    }

    pub(crate) fn n(&self) -> usize {
        self.bits.len()
    }

    /// `(a·s)_i` for `i < count` (negacyclic), written to `out[..count]`.
    fn mask_times_secret(&self, a: &[u64], count: usize, out: &mut [u64]) {
        let n = self.n();
        let s = &self.bits[..];
        match ring(n) {
            Some(ring) if count > DIRECT_MAX => {
                let s_ntt = self
                    .ntt
                    .get_or_init(|| Zeroizing::new(ring.forward_binary(s)));
                let mut full = Zeroizing::new(vec![0u64; n]);
                let mut scratch = Zeroizing::new(ring.scratch());
                ring.product(&ring.forward(a), s_ntt, &mut full, &mut scratch);
                out[..count].copy_from_slice(&full[..count]);
            }
            _ => {
                // (a·s)_i = Σ_{l≤i} a_{i−l} s_l − Σ_{l>i} a_{N+i−l} s_l, on the reversed mask so
                // both sums run over contiguous memory (and branch-free in the secret).
                let rev: Vec<u64> = a.iter().rev().copied().collect();
                for (i, o) in out[..count].iter_mut().enumerate() {
                    let pos = dot_binary(&rev[n - 1 - i..], &s[..=i]);
                    let neg = dot_binary(&rev[..n - 1 - i], &s[i + 1..]);
                    *o = pos.wrapping_sub(neg);
                }
            }
        }
    }

    /// Encrypts `plaintexts` (already scaled, ≤ N of them) as chunk `chunk` of the ciphertext
    /// with mask seed `seed`; returns the bodies.
    pub(crate) fn encrypt_chunk(
        &self,
        seed: &[u8; SEED_BYTES],
        chunk: u32,
        plaintexts: &[u64],
        noise: DynamicDistribution<u64>,
        noise_gen: &mut RandomGenerator<DefaultRandomGenerator>,
    ) -> Vec<u64> {
        let n = self.n();
        debug_assert!(plaintexts.len() <= n);
        let mut a = vec![0u64; n];
        expand_mask(seed, chunk, &mut a);
        let mut body = Zeroizing::new(vec![0u64; plaintexts.len()]);
        self.mask_times_secret(&a, plaintexts.len(), &mut body);
        noise_gen.unsigned_integer_slice_wrapping_add_random_from_distribution_assign(
            &mut body[..],
            noise,
        );
        body.iter()
            .zip(plaintexts)
            .map(|(b, m)| b.wrapping_add(*m))
            .collect()
    }

    /// The phase `b − ⟨mask, s⟩` of an LWE ciphertext under the flattened key.
    pub(crate) fn phase(&self, mask: &[u64], body: u64) -> u64 {
        body.wrapping_sub(dot_binary(mask, &self.bits))
    }
}

/// A noise generator seeded from the operating system (AES-CTR, secret seed).
pub(crate) fn noise_generator() -> RandomGenerator<DefaultRandomGenerator> {
    let mut s = Zeroizing::new([0u8; 16]);
    rand::rngs::OsRng.fill_bytes(&mut s[..]);
    RandomGenerator::new(Seed(u128::from_le_bytes(*s)))
}

/// `out += (Σ_i w_i X^(N−1−i)) · a` in Z_{2^64}[X]/(X^N + 1), directly: X^(N−1−i)·a has
/// coefficient `−a_{l+i+1}` at l < N−1−i and `a_{l+i+1−N}` at l ≥ N−1−i.
pub(crate) fn weight_product(w: &[i64], a: &[u64], out: &mut [u64]) {
    let n = a.len();
    for (i, &wi) in w.iter().enumerate() {
        if wi == 0 {
            continue;
        }
        let k = wi as u64;
        let split = n - 1 - i;
        let (lo, hi) = out.split_at_mut(split);
        for (o, s) in lo.iter_mut().zip(&a[i + 1..]) {
            *o = o.wrapping_sub(s.wrapping_mul(k));
        }
        for (o, s) in hi.iter_mut().zip(&a[..=i]) {
            *o = o.wrapping_add(s.wrapping_mul(k));
        }
    }
}

/// `Σ_i w_i·b_i` (wrapping) with signed weights.
#[inline]
pub(crate) fn dot_signed(w: &[i64], b: &[u64]) -> u64 {
    w.iter().zip(b).fold(0u64, |acc, (&x, &y)| {
        acc.wrapping_add((x as u64).wrapping_mul(y))
    })
}

/// `Σ_i a_i·s_i` for a binary `s`, as masked additions: branch-free in `s` (constant time)
/// and vectorisable (x86 has no 64-bit vector multiply before AVX-512).
#[inline]
pub(crate) fn dot_binary(a: &[u64], s: &[u64]) -> u64 {
    a.iter()
        .zip(s)
        .fold(0u64, |acc, (x, b)| acc.wrapping_add(x & b.wrapping_neg()))
}

/// `acc += k · src` (wrapping), the LWE linear-algebra primitive.
#[inline]
pub(crate) fn axpy(acc: &mut [u64], k: u64, src: &[u64]) {
    for (a, s) in acc.iter_mut().zip(src) {
        *a = a.wrapping_add(s.wrapping_mul(k));
    }
}

/// The LWE mask of coefficient `c` of a GLWE ciphertext with mask `a` (tfhe's sample
/// extraction for k = 1): `m_l = a_{c−l}` for `l ≤ c`, `−a_{N+c−l}` for `l > c`.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn extract_mask(a: &[u64], c: usize, out: &mut [u64]) {
    let n = a.len();
    for l in 0..=c {
        out[l] = a[c - l];
    }
    for l in c + 1..n {
        out[l] = a[n + c - l].wrapping_neg();
    }
}

/// Rounds each coefficient to its top `keep_bits` and packs it little-endian
/// (`keep_bits / 8` bytes per coefficient): the "modulus switch" that shrinks results.
pub(crate) fn pack(values: &[u64], keep_bits: u32, out: &mut Vec<u8>) {
    codec::pack_rounded::<u64>(values, keep_bits, out);
}

/// Inverse of [`pack`]: `out[i] = top_i · 2^(64 − keep_bits)`.
pub(crate) fn unpack(bytes: &[u8], keep_bits: u32, out: &mut [u64]) {
    codec::unpack_into::<u64>(bytes, keep_bits, out);
}

/// Hoeffding bound, at failure probability `2^-failure_log2`, on `|Σ_i k_i·u_i|` where the
/// `u_i` are independent, zero-mean and each within an interval of width `width`:
/// `P(|S| ≥ t) ≤ 2·exp(−2t² / (width² Σ k_i²))`.
pub(crate) fn hoeffding(width: f64, l2_norm: f64, failure_log2: f64) -> f64 {
    width * l2_norm * ((failure_log2 + 1.0) * std::f64::consts::LN_2 / 2.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schoolbook(a: &[u64], s: &[u64]) -> Vec<u64> {
        let n = a.len();
        let mut out = vec![0u64; n];
        for i in 0..n {
            for j in 0..n {
                let p = a[i].wrapping_mul(s[j]);
                if i + j < n {
                    out[i + j] = out[i + j].wrapping_add(p);
                } else {
                    out[i + j - n] = out[i + j - n].wrapping_sub(p);
                }
            }
        }
        out
    }

    #[test]
    fn direct_and_ntt_products_agree_with_schoolbook() {
        let sk = RlweSecret::generate(2048);
        let mut a = vec![0u64; 2048];
        expand_mask(&[3u8; 16], 0, &mut a);
        let full = schoolbook(&a, sk.bits());
        for count in [1, 4, DIRECT_MAX, DIRECT_MAX + 1, 2048] {
            let mut out = vec![0u64; count];
            sk.mask_times_secret(&a, count, &mut out);
            assert_eq!(out, full[..count], "count {count}");
        }
    }

    #[test]
    fn extracted_coefficients_decrypt() {
        let sk = RlweSecret::generate(2048);
        let seed = fresh_seed();
        let pts: Vec<u64> = (0..40u64).map(|i| i << 50).collect();
        let mut g = noise_generator();
        let bodies = sk.encrypt_chunk(
            &seed,
            7,
            &pts,
            DynamicDistribution::new_t_uniform(17),
            &mut g,
        );
        let mut a = vec![0u64; 2048];
        expand_mask(&seed, 7, &mut a);
        let mut m = vec![0u64; 2048];
        for (i, (&b, &p)) in bodies.iter().zip(&pts).enumerate() {
            extract_mask(&a, i, &mut m);
            let e = sk.phase(&m, b).wrapping_sub(p) as i64;
            assert!(e.unsigned_abs() <= 1 << 17, "coefficient {i}: noise {e}");
        }
    }

    #[test]
    fn masks_differ_by_chunk_and_seed() {
        let mut a = vec![0u64; 8];
        let mut b = vec![0u64; 8];
        let mut c = vec![0u64; 8];
        expand_mask(&[1; 16], 0, &mut a);
        expand_mask(&[1; 16], 1, &mut b);
        expand_mask(&[2; 16], 0, &mut c);
        assert!(a != b && a != c);
        let mut again = vec![0u64; 8];
        expand_mask(&[1; 16], 0, &mut again);
        assert_eq!(a, again);
    }

    #[test]
    fn hoeffding_matches_the_textbook_figure() {
        // 2^-64 with unit width and norm: sqrt(65 ln 2 / 2) ≈ 4.75.
        let t = hoeffding(1.0, 1.0, 64.0);
        assert!((t - 4.746).abs() < 1e-2, "{t}");
    }
}
