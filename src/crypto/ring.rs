//! Exact negacyclic products of a torus polynomial by a *binary* polynomial in
//! `Z_{2^w}[X]/(X^N + 1)`, on tfhe-ntt's multi-prime 32-bit NTT.
//!
//! tfhe's own generic convolution falls back to Karatsuba for `u128` (≈1.7 M values/s here);
//! the products we need always have one binary operand (encryption randomness `r`, secret
//! key share `s_i`), for which tfhe-ntt's `native_binary{64,128}` plans reconstruct the exact
//! integer product by CRT. We keep the per-prime NTT form of fixed operands (public key,
//! secret share) so each chunk costs one forward and one inverse transform.

use tfhe::core_crypto::commons::math::random::{RandomGenerable, TUniform, Uniform, UniformBinary};
use tfhe::core_crypto::prelude::{Encryptable, UnsignedTorus};
use tfhe_ntt::prime32::Plan as PrimePlan;
use zeroize::Zeroize;

/// The 30-bit primes of tfhe-ntt's 32-bit CRT plans, in its order (`primes32::P0..P4`): the
/// binary64 plan uses the first three, the binary128 plan all five. Their product exceeds
/// `2 · N · 2^BITS` for every supported `N`, so the CRT reconstruction is exact.
const PRIMES: [u32; 5] = [
    0b0011_1111_0101_1010_0000_0000_0000_0001,
    0b0011_1111_0101_1101_0000_0000_0000_0001,
    0b0011_1111_0111_0110_0000_0000_0000_0001,
    0b0011_1111_1000_0010_0000_0000_0000_0001,
    0b0011_1111_1010_1100_0000_0000_0000_0001,
];

/// A torus scalar (`u64` or `u128`) with everything the scheme needs from tfhe and tfhe-ntt.
pub trait Torus:
    UnsignedTorus
    + Encryptable<Uniform, TUniform<Self>>
    + Encryptable<TUniform<Self>, TUniform<Self>>
    + RandomGenerable<UniformBinary>
    + Zeroize
    + Send
    + Sync
    + 'static
{
    /// Number of CRT primes the binary plan for this width uses.
    const PRIME_COUNT: usize;
    /// tfhe-ntt's binary plan for this width (used for its CRT reconstruction).
    type Plan: Send + Sync;

    fn new_plan(n: usize) -> Option<Self::Plan>;
    /// Residues of `values` modulo each CRT prime, in coefficient order.
    fn residues(values: &[Self], residues: &mut [Vec<u32>]);
    /// Inverse transforms (consuming the residues) and CRT-reconstructs into `out`.
    fn plan_inv(plan: &Self::Plan, out: &mut [Self], residues: &mut [Vec<u32>]);

    fn to_u128(self) -> u128;
    /// Truncates to this width (wrapping).
    fn from_u128(v: u128) -> Self;
}

impl Torus for u64 {
    const PRIME_COUNT: usize = 3;
    type Plan = tfhe_ntt::native_binary64::Plan32;

    fn new_plan(n: usize) -> Option<Self::Plan> {
        Self::Plan::try_new(n)
    }
    fn residues(values: &[Self], r: &mut [Vec<u32>]) {
        let [p0, p1, p2] = r else {
            unreachable!("three residue buffers")
        };
        for (i, &v) in values.iter().enumerate() {
            p0[i] = (v % PRIMES[0] as u64) as u32;
            p1[i] = (v % PRIMES[1] as u64) as u32;
            p2[i] = (v % PRIMES[2] as u64) as u32;
        }
    }
    fn plan_inv(plan: &Self::Plan, out: &mut [Self], r: &mut [Vec<u32>]) {
        let [p0, p1, p2] = r else {
            unreachable!("three residue buffers")
        };
        plan.inv(out, p0, p1, p2);
    }
    fn to_u128(self) -> u128 {
        self as u128
    }
    fn from_u128(v: u128) -> Self {
        v as u64
    }
}

impl Torus for u128 {
    const PRIME_COUNT: usize = 5;
    type Plan = tfhe_ntt::native_binary128::Plan32;

    fn new_plan(n: usize) -> Option<Self::Plan> {
        Self::Plan::try_new(n)
    }
    fn residues(values: &[Self], r: &mut [Vec<u32>]) {
        let [p0, p1, p2, p3, p4] = r else {
            unreachable!("five residue buffers")
        };
        // tfhe-ntt reduces with a generic u128 `%`; splitting into 64-bit halves lets the
        // compiler use multiply-by-reciprocal for each constant prime (several times faster).
        for (i, &v) in values.iter().enumerate() {
            let (hi, lo) = ((v >> 64) as u64, v as u64);
            p0[i] = reduce_u128::<{ PRIMES[0] }>(hi, lo);
            p1[i] = reduce_u128::<{ PRIMES[1] }>(hi, lo);
            p2[i] = reduce_u128::<{ PRIMES[2] }>(hi, lo);
            p3[i] = reduce_u128::<{ PRIMES[3] }>(hi, lo);
            p4[i] = reduce_u128::<{ PRIMES[4] }>(hi, lo);
        }
    }
    fn plan_inv(plan: &Self::Plan, out: &mut [Self], r: &mut [Vec<u32>]) {
        let [p0, p1, p2, p3, p4] = r else {
            unreachable!("five residue buffers")
        };
        plan.inv(out, p0, p1, p2, p3, p4);
    }
    fn to_u128(self) -> u128 {
        self
    }
    fn from_u128(v: u128) -> Self {
        v
    }
}

#[inline(always)]
fn reduce_u128<const P: u32>(hi: u64, lo: u64) -> u32 {
    let p = P as u64;
    // 2^64 mod p, folded at compile time.
    let two64 = ((1u128 << 64) % P as u128) as u64;
    (((hi % p) * two64 + lo % p) % p) as u32
}

/// A polynomial in NTT form: one residue vector per CRT prime.
#[derive(Clone)]
pub struct NttPoly {
    residues: Vec<Vec<u32>>,
}

impl Zeroize for NttPoly {
    fn zeroize(&mut self) {
        for r in &mut self.residues {
            r.zeroize();
        }
    }
}

/// Negacyclic ring `Z_{2^BITS}[X]/(X^N + 1)` with exact products by binary polynomials.
pub struct BinaryRing<T: Torus> {
    n: usize,
    plan: T::Plan,
    primes: Vec<PrimePlan>,
}

impl<T: Torus> BinaryRing<T> {
    /// `None` when tfhe-ntt has no plan for `n` (it supports powers of two from 32 to 2^16).
    pub fn new(n: usize) -> Option<Self> {
        if !(32..=1 << 16).contains(&n) || !n.is_power_of_two() {
            return None;
        }
        let plan = T::new_plan(n)?;
        let primes = PRIMES[..T::PRIME_COUNT]
            .iter()
            .map(|&p| PrimePlan::try_new(n, p))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { n, plan, primes })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    fn empty(&self) -> NttPoly {
        NttPoly {
            residues: vec![vec![0u32; self.n]; T::PRIME_COUNT],
        }
    }

    /// NTT form of an arbitrary torus polynomial.
    pub fn forward(&self, poly: &[T]) -> NttPoly {
        let mut out = self.empty();
        self.forward_into(poly, &mut out);
        out
    }

    /// [`Self::forward`] into `out` (one from [`Self::scratch`]), without allocating.
    pub fn forward_into(&self, poly: &[T], out: &mut NttPoly) {
        assert_eq!(poly.len(), self.n);
        T::residues(poly, &mut out.residues);
        self.transform(out);
    }

    /// NTT form of a polynomial with coefficients in {0, 1}.
    pub fn forward_binary(&self, poly: &[T]) -> NttPoly {
        let mut out = self.empty();
        self.forward_binary_into(poly, &mut out);
        out
    }

    /// [`Self::forward_binary`] into `out` (one from [`Self::scratch`]), without allocating.
    pub fn forward_binary_into(&self, poly: &[T], out: &mut NttPoly) {
        assert_eq!(poly.len(), self.n);
        debug_assert!(poly.iter().all(|&c| c <= T::ONE));
        for r in &mut out.residues {
            for (dst, &c) in r.iter_mut().zip(poly) {
                *dst = (c == T::ONE) as u32;
            }
        }
        self.transform(out);
    }

    /// `out = lhs · rhs mod (X^N + 1, 2^BITS)`, exact when one factor is binary.
    /// `scratch` is overwritten (pass one from [`Self::scratch`] to avoid allocating).
    pub fn product(&self, lhs: &NttPoly, rhs: &NttPoly, out: &mut [T], scratch: &mut NttPoly) {
        assert_eq!(out.len(), self.n);
        for ((s, (l, r)), prime) in scratch
            .residues
            .iter_mut()
            .zip(lhs.residues.iter().zip(&rhs.residues))
            .zip(&self.primes)
        {
            s.copy_from_slice(l);
            prime.mul_assign_normalize(s, r);
        }
        T::plan_inv(&self.plan, out, &mut scratch.residues);
    }

    fn transform(&self, poly: &mut NttPoly) {
        for (r, prime) in poly.residues.iter_mut().zip(&self.primes) {
            prime.fwd(r);
        }
    }

    pub fn scratch(&self) -> NttPoly {
        self.empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tfhe::core_crypto::algorithms::slice_algorithms::slice_semi_reverse_negacyclic_convolution;

    fn schoolbook<T: Torus>(lhs: &[T], rhs: &[T]) -> Vec<T> {
        let n = lhs.len();
        let mut out = vec![T::ZERO; n];
        for i in 0..n {
            for j in 0..n {
                let p = lhs[i].wrapping_mul(rhs[j]);
                if i + j < n {
                    out[i + j] = out[i + j].wrapping_add(p);
                } else {
                    out[i + j - n] = out[i + j - n].wrapping_sub(p);
                }
            }
        }
        out
    }

    fn check<T: Torus>(n: usize, seed: u64) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let lhs: Vec<T> = (0..n).map(|_| T::from_u128(rng.gen())).collect();
        let rhs: Vec<T> = (0..n).map(|_| T::from_u128(rng.gen_range(0..2))).collect();
        let ring = BinaryRing::<T>::new(n).unwrap();
        let mut out = vec![T::ZERO; n];
        let mut scratch = ring.scratch();
        ring.product(
            &ring.forward(&lhs),
            &ring.forward_binary(&rhs),
            &mut out,
            &mut scratch,
        );
        assert_eq!(out, schoolbook(&lhs, &rhs));
        // Same as tfhe's own convolution (which multiplies by the reversed rhs).
        let mut rev = rhs.clone();
        rev.reverse();
        let mut tfhe_out = vec![T::ZERO; n];
        slice_semi_reverse_negacyclic_convolution(&mut tfhe_out, &lhs, &rev);
        assert_eq!(out, tfhe_out);
    }

    #[test]
    fn binary_product_is_exact_u64() {
        check::<u64>(64, 1);
        check::<u64>(256, 2);
    }

    #[test]
    fn binary_product_is_exact_u128() {
        check::<u128>(64, 3);
        check::<u128>(512, 4);
    }

    #[test]
    fn extreme_values_reconstruct_exactly() {
        // All-max lhs times all-ones rhs: the largest integer the CRT must recover.
        let n = 128;
        let ring = BinaryRing::<u128>::new(n).unwrap();
        let lhs = vec![u128::MAX; n];
        let rhs = vec![1u128; n];
        let mut out = vec![0u128; n];
        let mut s = ring.scratch();
        ring.product(
            &ring.forward(&lhs),
            &ring.forward_binary(&rhs),
            &mut out,
            &mut s,
        );
        assert_eq!(out, schoolbook(&lhs, &rhs));
    }

    #[test]
    fn unsupported_sizes_are_refused() {
        assert!(BinaryRing::<u64>::new(1000).is_none());
        assert!(BinaryRing::<u64>::new(16).is_none());
    }
}
