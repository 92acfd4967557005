//! The rounding ("modulus switching") that drops the noise-only low bits of power-of-two torus
//! coefficients for the wire, packed in whole bytes (encrypted inference's ciphertexts).

use super::ring::Torus;

/// Bytes per coefficient when keeping `keep_bits` top bits (always whole bytes).
pub const fn packed_width(keep_bits: u32) -> usize {
    (keep_bits / 8) as usize
}

/// Runs `$body` with `$w` bound to a width in bytes as a constant, so that loops over fixed
/// width fields compile to straight-line code. The listed widths get an arm each; any other
/// width runs as the last one (callers validate widths first). By default 1..=16 bytes (the
/// packed torus coefficients); the aggregation fields list 1..=7.
macro_rules! with_width {
    ($width:expr, $w:ident => $body:expr) => {
        $crate::crypto::codec::with_width!(
            $width,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15; 16],
            $w => $body
        )
    };
    ($width:expr, [$($n:literal),+; $last:literal], $w:ident => $body:expr) => {
        match $width {
            $(
                $n => {
                    const $w: usize = $n;
                    $body
                }
            )+
            _ => {
                const $w: usize = $last;
                $body
            }
        }
    };
}
pub(crate) use with_width;

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
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
        fn u64_packing_round_trips(v in any::<u64>()) {
            let mut bytes = Vec::new();
            pack_rounded(&[v], 48, &mut bytes);
            let mut out = [0u64; 1];
            unpack_into(&bytes, 48, &mut out);
            prop_assert!((out[0].wrapping_sub(v) as i64).unsigned_abs() <= 1 << 15);
        }
    }
}
