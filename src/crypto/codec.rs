//! Fixed-point encoding of floats into the plaintext space, and the rounding ("modulus
//! switching") that drops the noise-only low bits of coefficients for the wire.

use super::params::{Rounding, SessionParams};
use super::ring::Torus;
use super::CryptoError;

/// Encodes `values` into torus plaintexts `Δ · (round(clip(v) · 2^frac) mod 2^w)`, with
/// Δ = 2^(BITS − w). Returns how many values were clipped. NaN is refused; ±∞ clips.
/// `uniform` supplies [0, 1) samples for stochastic rounding.
pub fn encode_into<T: Torus>(
    params: &SessionParams,
    values: &[f32],
    out: &mut [T],
    first_index: usize,
    mut uniform: impl FnMut() -> f64,
) -> Result<u64, CryptoError> {
    debug_assert_eq!(values.len(), out.len());
    let scale = 2f64.powi(params.frac_bits as i32);
    let clip = params.clip;
    let shift = T::BITS as u32 - params.plaintext_bits;
    let mut clipped = 0u64;
    for (i, (&v, o)) in values.iter().zip(out.iter_mut()).enumerate() {
        let v = v as f64;
        if v.is_nan() {
            return Err(CryptoError::NonFinite {
                index: first_index + i,
            });
        }
        let c = if v > clip {
            clipped += 1;
            clip
        } else if v < -clip {
            clipped += 1;
            -clip
        } else {
            v
        };
        let scaled = c * scale;
        let fixed = match params.rounding {
            Rounding::Nearest => round_half_away(scaled),
            Rounding::Stochastic => {
                let floor = scaled.floor();
                (floor + ((uniform() < scaled - floor) as u8 as f64)) as i64
            }
        };
        // Two's complement then shift: the top w bits hold `fixed mod 2^w`.
        *o = T::from_u128((fixed as i128 as u128) << shift);
    }
    Ok(clipped)
}

/// `x.round() as i64` for |x| < 2^62, without the libm call `f64::round` compiles to on a
/// baseline x86-64 target (it was a tenth of encryption's time): the cast truncates natively,
/// and the fraction `x − trunc(x)` is exact.
#[inline(always)]
fn round_half_away(x: f64) -> i64 {
    let t = x as i64;
    let frac = x - t as f64;
    t + (frac >= 0.5) as i64 - (frac <= -0.5) as i64
}

/// Decodes a noisy phase into the signed fixed-point integer it carries (round to nearest
/// multiple of Δ, then interpret mod 2^w as signed).
pub fn decode_fixed<T: Torus>(params: &SessionParams, phase: T) -> i64 {
    let w = params.plaintext_bits;
    let shift = T::BITS as u32 - w;
    let half_delta = T::ONE << (shift as usize - 1);
    let v = (phase.wrapping_add(half_delta) >> shift as usize).to_u128();
    let modulus = 1u128 << w;
    let v = v & (modulus - 1);
    if v >= modulus / 2 {
        v as i64 - modulus as i64
    } else {
        v as i64
    }
}

pub fn fixed_to_f64(params: &SessionParams, fixed: i64) -> f64 {
    fixed as f64 / 2f64.powi(params.frac_bits as i32)
}

/// Bytes per coefficient when keeping `keep_bits` top bits (always whole bytes).
pub const fn packed_width(keep_bits: u32) -> usize {
    (keep_bits / 8) as usize
}

/// Runs `$body` with `$w` bound to the packed width as a constant (1..=16 bytes).
macro_rules! with_width {
    ($width:expr, $w:ident => $body:expr) => {
        match $width {
            1 => {
                const $w: usize = 1;
                $body
            }
            2 => {
                const $w: usize = 2;
                $body
            }
            3 => {
                const $w: usize = 3;
                $body
            }
            4 => {
                const $w: usize = 4;
                $body
            }
            5 => {
                const $w: usize = 5;
                $body
            }
            6 => {
                const $w: usize = 6;
                $body
            }
            7 => {
                const $w: usize = 7;
                $body
            }
            8 => {
                const $w: usize = 8;
                $body
            }
            9 => {
                const $w: usize = 9;
                $body
            }
            10 => {
                const $w: usize = 10;
                $body
            }
            11 => {
                const $w: usize = 11;
                $body
            }
            12 => {
                const $w: usize = 12;
                $body
            }
            13 => {
                const $w: usize = 13;
                $body
            }
            14 => {
                const $w: usize = 14;
                $body
            }
            15 => {
                const $w: usize = 15;
                $body
            }
            _ => {
                const $w: usize = 16;
                $body
            }
        }
    };
}

/// Appends each value rounded to its top `keep_bits` bits (round to nearest), little-endian.
pub fn pack_rounded<T: Torus>(values: &[T], keep_bits: u32, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + values.len() * packed_width(keep_bits), 0);
    pack_rounded_into(values, keep_bits, &mut out[start..]);
}

/// [`pack_rounded`] into a slice of exactly `values.len() · packed_width(keep_bits)` bytes:
/// encryption writes straight into its wire message with it.
pub fn pack_rounded_into<T: Torus>(values: &[T], keep_bits: u32, out: &mut [u8]) {
    let width = packed_width(keep_bits);
    debug_assert_eq!(out.len(), values.len() * width);
    let drop = T::BITS - keep_bits as usize;
    let half = if drop == 0 {
        T::ZERO
    } else {
        T::ONE << (drop - 1)
    };
    with_width!(width, W => {
        for (&v, o) in values.iter().zip(out.chunks_exact_mut(W)) {
            let top = if drop == 0 { v } else { v.wrapping_add(half) >> drop };
            o.copy_from_slice(&top.to_u128().to_le_bytes()[..W]);
        }
    })
}

#[inline(always)]
fn read_top<T: Torus, const W: usize>(chunk: &[u8], drop: usize) -> T {
    let mut buf = [0u8; 16];
    // A fixed-width copy: compiles to a couple of moves instead of a memcpy call.
    buf[..W].copy_from_slice(&chunk[..W]);
    let v = T::from_u128(u128::from_le_bytes(buf));
    if drop == 0 {
        v
    } else {
        v << drop
    }
}

/// Inverse of [`pack_rounded`]: `out[i] = value_i · 2^(BITS − keep_bits)`.
pub fn unpack_into<T: Torus>(bytes: &[u8], keep_bits: u32, out: &mut [T]) {
    let width = packed_width(keep_bits);
    debug_assert_eq!(bytes.len(), out.len() * width);
    let drop = T::BITS - keep_bits as usize;
    with_width!(width, W => {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(W)) {
            *o = read_top::<T, W>(c, drop);
        }
    })
}

/// `acc[i] = acc[i] + value_i · 2^(BITS − keep_bits)` (wrapping): the accumulator's hot loop.
pub fn unpack_add_assign<T: Torus>(bytes: &[u8], keep_bits: u32, acc: &mut [T]) {
    let width = packed_width(keep_bits);
    debug_assert_eq!(bytes.len(), acc.len() * width);
    let drop = T::BITS - keep_bits as usize;
    with_width!(width, W => {
        for (a, c) in acc.iter_mut().zip(bytes.chunks_exact(W)) {
            *a = a.wrapping_add(read_top::<T, W>(c, drop));
        }
    })
}

/// `packed_i = (packed_i + value_i / 2^(BITS − keep_bits)) mod 2^keep_bits`, in place. For
/// values whose low `BITS − keep_bits` bits are zero (plaintexts, when w ≤ keep_bits) this turns
/// the packing of x into exactly the packing of x + value: rounding looks only at bits the value
/// does not touch. Sealing a prepared encryption of zero adds the message this way.
pub fn add_to_packed<T: Torus>(values: &[T], keep_bits: u32, packed: &mut [u8]) {
    let width = packed_width(keep_bits);
    debug_assert_eq!(packed.len(), values.len() * width);
    let drop = T::BITS - keep_bits as usize;
    let keep_mask = u128::MAX >> (128 - keep_bits);
    with_width!(width, W => {
        for (&v, c) in values.iter().zip(packed.chunks_exact_mut(W)) {
            let top = read_top::<T, W>(c, 0).to_u128();
            let add = if drop == 0 { v } else { v >> drop };
            let sum = top.wrapping_add(add.to_u128()) & keep_mask;
            c.copy_from_slice(&sum.to_le_bytes()[..W]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::params::Profile;
    use proptest::prelude::*;

    fn params() -> SessionParams {
        SessionParams::recommended(Profile::Secure, 10, 3, 8.0).unwrap()
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips_within_half_ulp(v in -8.0f32..=8.0) {
            let p = params();
            let mut out = [0u128; 1];
            encode_into(&p, &[v], &mut out, 0, || 0.5).unwrap();
            let back = fixed_to_f64(&p, decode_fixed(&p, out[0]));
            prop_assert!((back - v as f64).abs() <= p.mean_error_bound());
        }

        #[test]
        fn packing_round_trips_up_to_rounding(v in any::<u128>(), keep in prop::sample::select(vec![40u32, 88, 96, 128])) {
            let mut bytes = Vec::new();
            pack_rounded(&[v], keep, &mut bytes);
            prop_assert_eq!(bytes.len(), packed_width(keep));
            let mut out = [0u128; 1];
            unpack_into(&bytes, keep, &mut out);
            let err = out[0].wrapping_sub(v) as i128;
            let half = if keep == 128 { 0 } else { 1i128 << (127 - keep) };
            prop_assert!(err.unsigned_abs() <= half as u128, "err {} half {}", err, half);
        }

        #[test]
        fn adding_to_packed_values_packs_the_sum(
            x in any::<u128>(),
            top in any::<u128>(),
            w in 1u32..=40,
            keep in prop::sample::select(vec![44u32, 88, 96, 128]),
        ) {
            // A plaintext: w top bits, the rest zero (w ≤ keep, as every profile has).
            let m = top & !(u128::MAX >> w);
            let (mut packed, mut direct) = (Vec::new(), Vec::new());
            pack_rounded(&[x], keep, &mut packed);
            add_to_packed(&[m], keep, &mut packed);
            pack_rounded(&[x.wrapping_add(m)], keep, &mut direct);
            prop_assert_eq!(&packed, &direct);
            let (x64, m64) = (x as u64, (m >> 64) as u64 & !(u64::MAX >> w.min(40)));
            let (mut packed, mut direct) = (Vec::new(), Vec::new());
            pack_rounded(&[x64], 40, &mut packed);
            add_to_packed(&[m64], 40, &mut packed);
            pack_rounded(&[x64.wrapping_add(m64)], 40, &mut direct);
            prop_assert_eq!(packed, direct);
        }

        #[test]
        fn u64_packing_round_trips(v in any::<u64>()) {
            let mut bytes = Vec::new();
            pack_rounded(&[v], 48, &mut bytes);
            let mut out = [0u64; 1];
            unpack_into(&bytes, 48, &mut out);
            prop_assert!((out[0].wrapping_sub(v) as i64).unsigned_abs() <= 1 << 15);
        }
    }

    proptest! {
        #[test]
        fn rounding_matches_f64_round(x in -1e18f64..1e18, i in -(1i64 << 53)..(1i64 << 53)) {
            prop_assert_eq!(round_half_away(x), x.round() as i64);
            let half = i as f64 + 0.5;
            prop_assert_eq!(round_half_away(half), half.round() as i64);
        }
    }

    #[test]
    fn clipping_is_counted_and_nan_refused() {
        let p = params();
        let mut out = [0u128; 4];
        let clipped =
            encode_into(&p, &[9.0, -1e9, f32::INFINITY, 8.0], &mut out, 0, || 0.5).unwrap();
        assert_eq!(clipped, 3);
        assert_eq!(fixed_to_f64(&p, decode_fixed(&p, out[0])), 8.0);
        assert_eq!(fixed_to_f64(&p, decode_fixed(&p, out[1])), -8.0);
        let e = encode_into(&p, &[1.0, f32::NAN], &mut out[..2], 7, || 0.5).unwrap_err();
        assert!(e.to_string().contains("index 8"), "{e}");
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let mut p = params();
        p.rounding = Rounding::Stochastic;
        p.frac_bits = 2;
        // 0.1 · 4 = 0.4: rounds up 40% of the time.
        let mut state = 0u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut sum = 0i64;
        for _ in 0..10_000 {
            let mut out = [0u128; 1];
            encode_into(&p, &[0.1], &mut out, 0, &mut next).unwrap();
            sum += decode_fixed(&p, out[0]);
        }
        let mean = sum as f64 / 10_000.0 / 4.0;
        assert!((mean - 0.1).abs() < 0.005, "{mean}");
    }
}
