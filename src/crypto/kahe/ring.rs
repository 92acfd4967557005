//! Arithmetic in R_q = Z_q[X]/(X^N + 1) for q = 2^64 − 2^32 + 1 (the "Goldilocks" prime, which
//! tfhe-ntt transforms with a dedicated reduction): uniform polynomials drawn straight in the
//! evaluation domain, products by one inverse transform, and the modulus switch to the wire.

use std::sync::OnceLock;

use tfhe_ntt::prime64::Plan;
use zeroize::Zeroizing;

use super::super::rng::ChunkRandomness;

/// The ciphertext modulus q = 2^64 − 2^32 + 1. 2N divides q − 1 for every N ≤ 2^31.
pub const Q: u64 = 0xffff_ffff_0000_0001;
/// log2(q), for the error bound (q is 2^64 to within 2^−32 relative).
pub const Q_LOG2: f64 = 64.0;

/// The negacyclic NTT plan of dimension `n` (2048 or 4096), built once per process.
pub fn plan(n: usize) -> &'static Plan {
    static P2048: OnceLock<Plan> = OnceLock::new();
    static P4096: OnceLock<Plan> = OnceLock::new();
    let cell = match n {
        2048 => &P2048,
        4096 => &P4096,
        other => panic!("unsupported ring dimension {other}"),
    };
    // q is prime and 2n | q − 1 for both dimensions: the plan always exists.
    cell.get_or_init(|| Plan::try_new(n, Q).expect("Goldilocks NTT plan"))
}

/// Fills `out` with coefficients uniform mod q, from the stream `label`/`index` under `key`:
/// `out.len()` words drawn in bulk, then each word ≥ q (probability 2^−32 each), in order,
/// replaced by the stream's next word below q. Read as the evaluation form of a polynomial,
/// that polynomial is uniform too: the transform is a bijection.
pub fn expand_uniform(key: &[u8; 32], label: &str, index: u64, out: &mut [u64]) {
    let mut stream = ChunkRandomness::new(key, label, index);
    stream.fill_u64(out);
    for x in out.iter_mut().filter(|x| **x >= Q) {
        *x = loop {
            let w = stream.next_u64();
            if w < Q {
                break w;
            }
        };
    }
}

/// `acc += x` coefficient-wise mod q.
pub fn add_assign(acc: &mut [u64], x: &[u64]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a = add_mod(*a, b);
    }
}

#[inline(always)]
pub fn add_mod(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    // a + b < 2q < 2^65: subtract q once when the sum reached it (or wrapped past 2^64).
    if carry || s >= Q {
        s.wrapping_sub(Q)
    } else {
        s
    }
}

/// A signed integer (|x| < q/2) as an element of Z_q.
#[inline(always)]
pub fn from_signed(x: i64) -> u64 {
    if x >= 0 {
        x as u64
    } else {
        Q - x.unsigned_abs()
    }
}

/// `out = a · key` for two polynomials in evaluation form, written in coefficient form.
/// `out` starts as a copy of `a_eval` and is transformed in place.
pub fn product_into(n: usize, a_eval: &[u64], key_eval: &[u64], out: &mut [u64]) {
    let plan = plan(n);
    out.copy_from_slice(a_eval);
    plan.mul_assign_normalize(out, key_eval);
    plan.inv(out);
}

/// The modulus switch x ↦ k ≈ x · 2^bits / q mod 2^bits, off by at most ½ + 2^(bits−63) (not
/// ½: the exact rounding took a 128-bit product and a correction per value, which kept the
/// loops scalar; with this switch and bulk keystream draws, encryption's CPU fell ~15%). With q = 2^64 − c, c = 2^32 − 1, and x = h·2^32 + l:
/// x·2^64/q = x + x·c/q = x + h + (l·c − h)/q, so T = x + h (never above 2^64 − 1) is within
/// 1 + 2^−31 of x·2^64/q, and k = ⌊T/2^(64−bits) + ½⌋ within ½ + 2^(bits−63) of x·2^bits/q.
/// The error bound (`params.rs`) counts that per switched term.
#[derive(Clone, Copy, Debug)]
pub struct Switch {
    shift: u32,
    half: u64,
    mask: u64,
}

impl Switch {
    pub fn new(bits: u32) -> Self {
        assert!((8..=56).contains(&bits), "wire width {bits} out of range");
        Switch {
            shift: 64 - bits,
            half: 1u64 << (63 - bits),
            mask: (1u64 << bits) - 1,
        }
    }

    /// Largest |k − x·2^bits/q| of a switched value (besides the wrap mod 2^bits).
    pub fn max_error(bits: u32) -> f64 {
        0.5 + 2f64.powi(bits as i32 - 63)
    }

    #[inline(always)]
    pub fn apply(self, x: u64) -> u64 {
        let t = x + (x >> 32);
        // A carry out of the addition is 2^bits after the shift: nothing, mod 2^bits.
        (t.wrapping_add(self.half) >> self.shift) & self.mask
    }
}

/// A polynomial's worth of wiped scratch space.
pub fn scratch(n: usize) -> Zeroizing<Vec<u64>> {
    Zeroizing::new(vec![0u64; n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schoolbook(a: &[u64], b: &[u64]) -> Vec<u64> {
        let n = a.len();
        let mut out = vec![0u128; n];
        let q = Q as u128;
        for (i, &ai) in a.iter().enumerate() {
            for (j, &bj) in b.iter().enumerate() {
                let p = ai as u128 * bj as u128 % q;
                let k = i + j;
                if k < n {
                    out[k] = (out[k] + p) % q;
                } else {
                    out[k - n] = (out[k - n] + q - p) % q;
                }
            }
        }
        out.into_iter().map(|x| x as u64).collect()
    }

    #[test]
    fn products_in_evaluation_form_are_negacyclic_products() {
        let n = 2048;
        let mut a = vec![0u64; n];
        let mut r = vec![0u64; n];
        expand_uniform(&[1; 32], "a", 0, &mut a);
        expand_uniform(&[2; 32], "r", 0, &mut r);
        let mut prod = vec![0u64; n];
        product_into(n, &a, &r, &mut prod);
        // Coefficient forms of both operands, multiplied the slow way.
        let (mut a_coef, mut r_coef) = (a.clone(), r.clone());
        let p = plan(n);
        p.normalize(&mut a_coef);
        p.inv(&mut a_coef);
        p.normalize(&mut r_coef);
        p.inv(&mut r_coef);
        assert_eq!(prod, schoolbook(&a_coef, &r_coef));
    }

    #[test]
    fn expansion_is_deterministic_and_in_range() {
        let mut x = vec![0u64; 4096];
        let mut y = vec![0u64; 4096];
        expand_uniform(&[7; 32], "a", 3, &mut x);
        expand_uniform(&[7; 32], "a", 3, &mut y);
        assert_eq!(x, y);
        assert!(x.iter().all(|&v| v < Q));
        expand_uniform(&[7; 32], "a", 4, &mut y);
        assert_ne!(x, y);
    }

    proptest! {
        #[test]
        fn switching_stays_within_its_bound(
            x in prop_oneof![0..Q, (Q - (1 << 40))..Q, 0..(1u64 << 40)],
            bits in 8u32..=56,
        ) {
            // |k − x·2^bits/q| ≤ ½ + 2^(bits−63), k taken as the one of k, k + 2^bits (k is
            // known mod 2^bits) nearest: 2^63·|k·q − x·2^bits| ≤ (2^62 + 2^bits)·q, exactly.
            let k = Switch::new(bits).apply(x) as i128;
            let target = (x as i128) << bits;
            let q = Q as i128;
            let off = [k, k + (1i128 << bits)]
                .into_iter()
                .map(|k| (k * q - target).unsigned_abs())
                .min()
                .unwrap_or(u128::MAX);
            let allowed = ((1u128 << 62) + (1u128 << bits)) * Q as u128;
            prop_assert!(off <= allowed >> 63, "x = {x}, bits = {bits}, k = {k}");
        }

        #[test]
        fn modular_addition_matches_u128(a in 0..Q, b in 0..Q) {
            prop_assert_eq!(add_mod(a, b) as u128, (a as u128 + b as u128) % Q as u128);
        }

        #[test]
        fn signed_values_embed(x in -(1i64 << 62)..(1i64 << 62)) {
            prop_assert_eq!(from_signed(x) as i128, (x as i128).rem_euclid(Q as i128));
        }
    }
}
