//! Fixed-point encoding of floats and the packed little-endian fields of the wire bodies.

use super::super::params::Rounding;
use super::super::CryptoError;
use super::params::KaheParams;

/// Encodes one float as the signed fixed-point integer `round(clip(v) · 2^frac_bits)`;
/// returns it and whether it was clipped. NaN is refused; ±∞ clips. `uniform` supplies [0, 1)
/// samples for stochastic rounding.
#[inline(always)]
pub fn encode_fixed(
    params: &KaheParams,
    value: f32,
    index: usize,
    uniform: &mut impl FnMut() -> f64,
) -> Result<(i64, bool), CryptoError> {
    let v = value as f64;
    if v.is_nan() {
        return Err(CryptoError::NonFinite { index });
    }
    let clip = params.clip;
    let (c, clipped) = if v > clip {
        (clip, true)
    } else if v < -clip {
        (-clip, true)
    } else {
        (v, false)
    };
    let scaled = c * (1u64 << params.frac_bits) as f64;
    let fixed = match params.rounding {
        Rounding::Nearest => round_half_away(scaled),
        Rounding::Stochastic => {
            let floor = scaled.floor();
            (floor + ((uniform() < scaled - floor) as u8 as f64)) as i64
        }
    };
    Ok((fixed, clipped))
}

/// The wire-field addends (`field_of`) of `values` encoded with rounding to nearest, into
/// `out`; returns how many values were clipped. The same numbers as [`encode_fixed`] value by
/// value, in a loop without branches or errors (NaN is refused before: it would clip to
/// ±clip here), which the compiler keeps tight: the per-value call with its error path cost
/// about a tenth of an encryption.
pub fn nearest_addends(params: &KaheParams, values: &[f32], out: &mut [u64]) -> u64 {
    let clip = params.clip;
    let scale = (1u64 << params.frac_bits) as f64;
    let plaintext_mask = (1u64 << params.plaintext_bits) - 1;
    let shift = params.delta_log2();
    let mut clipped = 0u64;
    for (o, &v) in out.iter_mut().zip(values) {
        let v = v as f64;
        clipped += (v.abs() > clip) as u64;
        let fixed = round_half_away(v.clamp(-clip, clip) * scale);
        *o = ((fixed as u64) & plaintext_mask) << shift;
    }
    clipped
}

/// `x.round() as i64` for |x| < 2^62, without the libm call `f64::round` compiles to on a
/// baseline x86-64 target: the cast truncates natively, and `x − trunc(x)` is exact.
#[inline(always)]
fn round_half_away(x: f64) -> i64 {
    let t = x as i64;
    let frac = x - t as f64;
    t + (frac >= 0.5) as i64 - (frac <= -0.5) as i64
}

/// Reads the signed w-bit plaintext a wire coefficient carries: round to the nearest multiple
/// of Δ' = 2^(bits − w), then read mod 2^w as signed.
pub fn decode_field(params: &KaheParams, x: u64) -> i64 {
    let shift = params.delta_log2();
    let w = params.plaintext_bits;
    let v = (x.wrapping_add(1u64 << (shift - 1)) >> shift) & ((1u64 << w) - 1);
    if v >= 1u64 << (w - 1) {
        v as i64 - (1i64 << w)
    } else {
        v as i64
    }
}

/// The wire-field addend that carries the fixed-point value `fixed`: (fixed mod 2^w) · Δ'.
#[inline(always)]
pub fn field_of(params: &KaheParams, fixed: i64) -> u64 {
    ((fixed as u64) & ((1u64 << params.plaintext_bits) - 1)) << params.delta_log2()
}

/// Reads field `i` of `W` bytes.
#[inline(always)]
pub fn read_field<const W: usize>(bytes: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..W].copy_from_slice(&bytes[i * W..i * W + W]);
    u64::from_le_bytes(b)
}

/// Writes field `i` of `W` bytes (the value's low 8·W bits).
#[inline(always)]
pub fn write_field<const W: usize>(bytes: &mut [u8], i: usize, value: u64) {
    bytes[i * W..i * W + W].copy_from_slice(&value.to_le_bytes()[..W]);
}

/// Writes `values` as consecutive fields of `width` bytes, as many as `bytes` holds.
pub fn write_fields(bytes: &mut [u8], width: usize, values: &[u64]) {
    with_field_width!(width, W => {
        for (field, v) in bytes.chunks_exact_mut(W).zip(values) {
            field.copy_from_slice(&v.to_le_bytes()[..W]);
        }
    })
}

/// Runs `$body` with `$w` bound to the field width in bytes as a constant (1..=7, the wire
/// widths of `KaheParams`).
macro_rules! with_field_width {
    ($width:expr, $w:ident => $body:expr) => {
        $crate::crypto::codec::with_width!($width, [1, 2, 3, 4, 5, 6; 7], $w => $body)
    };
}
pub(crate) use with_field_width;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::params::Profile;
    use proptest::prelude::*;

    fn params() -> KaheParams {
        KaheParams::recommended(Profile::Fast, 10, 3, 2, 8.0, 20).unwrap()
    }

    proptest! {
        #[test]
        fn fields_round_trip(values in proptest::collection::vec(any::<u64>(), 1..40), w in 1usize..=7) {
            let mut bytes = vec![0u8; values.len() * w];
            let mask = if w == 8 { u64::MAX } else { (1u64 << (8 * w)) - 1 };
            with_field_width!(w, W => {
                for (i, &v) in values.iter().enumerate() {
                    write_field::<W>(&mut bytes, i, v);
                }
                for (i, &v) in values.iter().enumerate() {
                    prop_assert_eq!(read_field::<W>(&bytes, i), v & mask);
                }
            });
        }

        #[test]
        fn fixed_values_survive_a_field_and_errors_below_half_a_step(fixed in -(1i64 << 26)..(1i64 << 26), err in any::<i64>()) {
            let p = params();
            // Any error strictly inside ±Δ'/2.
            let half = 1i64 << (p.delta_log2() - 1);
            let err = err.rem_euclid(2 * half - 1) - (half - 1);
            let x = field_of(&p, fixed).wrapping_add(err as u64) & ((1u64 << p.wire_bits) - 1);
            prop_assert_eq!(decode_field(&p, x), fixed);
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
        let sum: i64 = (0..10_000)
            .map(|_| encode_fixed(&p, 0.1, 0, &mut next).unwrap().0)
            .sum();
        let mean = sum as f64 / 10_000.0 / 4.0;
        assert!((mean - 0.1).abs() < 0.005, "{mean}");
    }

    proptest! {
        #[test]
        fn nearest_addends_match_encoding_value_by_value(
            values in proptest::collection::vec(
                prop_oneof![any::<f32>().prop_filter("not NaN", |v| !v.is_nan()), -9.0f32..9.0],
                1..64,
            ),
        ) {
            let p = params();
            let mut out = vec![0u64; values.len()];
            let clipped = nearest_addends(&p, &values, &mut out);
            let mut expected_clipped = 0;
            for (i, &v) in values.iter().enumerate() {
                let (fixed, c) = encode_fixed(&p, v, i, &mut || 0.0).unwrap();
                expected_clipped += c as u64;
                prop_assert_eq!(out[i], field_of(&p, fixed), "value {}", v);
            }
            prop_assert_eq!(clipped, expected_clipped);
        }
    }

    #[test]
    fn clipping_and_nan() {
        let p = params();
        let mut u = || 0.5;
        assert_eq!(encode_fixed(&p, 1.5, 0, &mut u).unwrap(), (3 << 19, false));
        assert_eq!(encode_fixed(&p, -9.0, 0, &mut u).unwrap(), (-8 << 20, true));
        assert_eq!(
            encode_fixed(&p, f32::INFINITY, 0, &mut u).unwrap(),
            (8 << 20, true)
        );
        assert_eq!(
            encode_fixed(&p, f32::NAN, 7, &mut u).unwrap_err(),
            CryptoError::NonFinite { index: 7 }
        );
    }
}
