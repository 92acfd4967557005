//! A result's values as they are stored and sent to participants: the exact fixed-point sums
//! they were computed from, in as few bytes as the largest needs, instead of 8-byte floats.
//! A mean of ten 20-bit updates takes 4 bytes per value instead of 8, which halves the write
//! (and its fsync) the coordinator makes before it reports a round done, and every copy of the
//! result sent to a participant. Values that are not such sums are kept as floats: packing is
//! checked value by value to give back the same bits.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How many values, spread over the result, choose the fraction bits before all are checked.
const SAMPLE: usize = 256;
/// Finest scale tried: a value's sum must fit an f64's mantissa.
const MAX_FRAC_BITS: u32 = 52;

/// A result's values, packed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) enum PackedValues {
    /// Value j is `(S_j · 2^−frac_bits) / divisor`, computed in that order (as the combine
    /// computes it), with the sums S_j as `width`-byte little-endian two's complement.
    Fixed {
        frac_bits: u8,
        divisor: f64,
        width: u8,
        #[serde(with = "serde_bytes")]
        sums: Vec<u8>,
    },
    Floats(Vec<f64>),
}

/// Bytes of the two's complement of `x`, sign included.
fn bytes_for(x: i64) -> usize {
    let magnitude_bits = 64 - (if x < 0 { !x } else { x }).leading_zeros() as usize;
    (magnitude_bits + 1).div_ceil(8)
}

struct Scale {
    up: f64,
    down: f64,
    divisor: f64,
}

impl Scale {
    fn new(frac_bits: u32, divisor: f64) -> Self {
        Scale {
            up: 2f64.powi(frac_bits as i32) * divisor,
            down: 2f64.powi(-(frac_bits as i32)),
            divisor,
        }
    }

    fn value(&self, sum: i64) -> f64 {
        sum as f64 * self.down / self.divisor
    }

    /// The sum `v` was computed from at this scale, if it gives back exactly `v`.
    #[inline]
    fn sum_of(&self, v: f64) -> Option<i64> {
        let x = v * self.up;
        // NaN and infinities fail the comparison too.
        if x.is_nan() || x.abs() >= (1u64 << 52) as f64 {
            return None;
        }
        // Rounded half away from zero by truncation (`round` is a libm call, and the check
        // below catches any sum this misses).
        let s = (x + 0.5f64.copysign(x)) as i64;
        (self.value(s).to_bits() == v.to_bits()).then_some(s)
    }
}

impl PackedValues {
    /// Packs `values`, each meant as a sum scaled by 2^−f and divided by `divisor` (the
    /// contributors of a mean, 1 for a sum, the total weight of a weighted mean).
    pub(super) fn pack(values: &[f64], divisor: f64) -> Self {
        let usable = divisor.is_finite() && divisor > 0.0;
        usable
            .then(|| Self::fixed(values, divisor))
            .flatten()
            .unwrap_or_else(|| PackedValues::Floats(values.to_vec()))
    }

    fn fixed(values: &[f64], divisor: f64) -> Option<Self> {
        let step = (values.len() / SAMPLE).max(1);
        let sample: Vec<f64> = values.iter().step_by(step).copied().collect();
        let frac_bits = (0..=MAX_FRAC_BITS).find(|&f| {
            let scale = Scale::new(f, divisor);
            sample.iter().all(|&v| scale.sum_of(v).is_some())
        })?;
        let scale = Scale::new(frac_bits, divisor);
        // Millions of values, when the coordinator stores a result: on both cores.
        let sums = values
            .par_iter()
            .map(|&v| scale.sum_of(v))
            .collect::<Option<Vec<i64>>>()?;
        let width = sums.par_iter().map(|&s| bytes_for(s)).max().unwrap_or(1);
        let mut packed = vec![0u8; sums.len() * width];
        packed
            .par_chunks_mut(width * 4096)
            .zip(sums.par_chunks(4096))
            .for_each(|(out, sums)| {
                for (o, s) in out.chunks_exact_mut(width).zip(sums) {
                    o.copy_from_slice(&s.to_le_bytes()[..width]);
                }
            });
        Some(PackedValues::Fixed {
            frac_bits: frac_bits as u8,
            divisor,
            width: width as u8,
            sums: packed,
        })
    }

    /// How many values these are, or why these bytes are no packing of any.
    pub(super) fn len(&self) -> Result<usize, String> {
        let (frac_bits, divisor, width, sums) = match self {
            PackedValues::Floats(values) => return Ok(values.len()),
            PackedValues::Fixed {
                frac_bits,
                divisor,
                width,
                sums,
            } => (*frac_bits as u32, *divisor, *width as usize, sums),
        };
        if frac_bits > MAX_FRAC_BITS
            || !(divisor.is_finite() && divisor > 0.0)
            || !(1..=8).contains(&width)
        {
            return Err(format!(
                "packed values with {frac_bits} fraction bits, divisor {divisor} and {width}-byte \
                 sums"
            ));
        }
        if !sums.len().is_multiple_of(width) {
            return Err(format!(
                "{} bytes of packed sums are no whole number of {width}-byte sums",
                sums.len()
            ));
        }
        Ok(sums.len() / width)
    }

    /// The values, or why these bytes are no packing of any.
    pub(super) fn unpack(self) -> Result<Vec<f64>, String> {
        self.len()?;
        let (frac_bits, divisor, width, sums) = match self {
            PackedValues::Floats(values) => return Ok(values),
            PackedValues::Fixed {
                frac_bits,
                divisor,
                width,
                sums,
            } => (frac_bits as u32, divisor, width as usize, sums),
        };
        let scale = Scale::new(frac_bits, divisor);
        let shift = 64 - 8 * width as u32;
        Ok(sums
            .par_chunks_exact(width)
            .map(|b| {
                let mut word = [0u8; 8];
                word[..width].copy_from_slice(b);
                // Sign-extended from the top bit of the width.
                scale.value((i64::from_le_bytes(word) << shift) >> shift)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_packed_result_is_a_stored_result_byte_for_byte() {
        use crate::session::{PackedResult, ResultKind, SessionResult};
        let result = SessionResult {
            session: "s".into(),
            kind: ResultKind::Mean,
            contributors: 3,
            contributor_ids: vec!["a".into(), "b".into(), "c".into()],
            clipped: 1,
            error_bound: 1e-6,
            total_weight: None,
            values: (0..1000)
                .map(|i| (i as f64 - 500.0) / 1024.0 / 3.0)
                .collect(),
        };
        let bytes = bincode::serialize(&result).unwrap();
        let stored: PackedResult = bincode::deserialize(&bytes).unwrap();
        assert_eq!(bincode::serialize(&stored).unwrap(), bytes);
        let mut bad = stored.clone();
        assert_eq!(stored.session(), "s");
        assert_eq!(stored.value_count().unwrap(), 1000);
        assert_eq!(stored.unpack().unwrap(), result);
        let read: SessionResult = bincode::deserialize(&bytes).unwrap();
        assert_eq!(read, result);
        // A width no packing has is refused when counted, before anything is stored.
        if let PackedValues::Fixed { width, .. } = &mut bad.0.values {
            *width = 9;
        }
        assert!(bad.value_count().is_err());
    }

    fn round_trip(values: &[f64], divisor: f64) -> PackedValues {
        let packed = PackedValues::pack(values, divisor);
        let bytes = bincode::serialize(&packed).unwrap();
        let back: PackedValues = bincode::deserialize(&bytes).unwrap();
        let unpacked = back.unpack().unwrap();
        assert_eq!(unpacked.len(), values.len());
        for (a, b) in unpacked.iter().zip(values) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
        }
        packed
    }

    #[test]
    fn a_mean_of_fixed_point_sums_packs_into_the_bytes_its_sums_need() {
        // Ten contributors, 20 fraction bits, sums up to 10·8·2^20 < 2^27: four bytes each.
        let k = 10u32;
        let values: Vec<f64> = (0..10_000i64)
            .map(|i| ((i * 7919) % (80 << 20) - (40 << 20)) as f64 * 2f64.powi(-20) / k as f64)
            .collect();
        match round_trip(&values, k as f64) {
            PackedValues::Fixed {
                frac_bits, width, ..
            } => assert_eq!((frac_bits, width), (20, 4)),
            other => panic!("not packed: {:?}", std::mem::discriminant(&other)),
        }
    }

    #[test]
    fn values_that_are_no_such_sums_stay_floats() {
        let values = [0.1, std::f64::consts::PI, f64::NAN, -0.0, 1e300];
        let packed = PackedValues::pack(&values, 3.0);
        let PackedValues::Floats(kept) = &packed else {
            panic!("packed values that are no sums");
        };
        assert_eq!(kept.len(), values.len());
        assert!(PackedValues::pack(&[], 1.0).unpack().unwrap().is_empty());
    }

    #[test]
    fn malformed_packings_are_refused() {
        let bad = |frac_bits, divisor, width, sums: Vec<u8>| {
            PackedValues::Fixed {
                frac_bits,
                divisor,
                width,
                sums,
            }
            .unpack()
            .is_err()
        };
        assert!(bad(20, 1.0, 0, vec![]));
        assert!(bad(20, 1.0, 9, vec![0; 9]));
        assert!(bad(20, 0.0, 4, vec![0; 4]));
        assert!(bad(20, f64::NAN, 4, vec![0; 4]));
        assert!(bad(20, -2.0, 4, vec![0; 4]));
        assert!(bad(60, 1.0, 4, vec![0; 4]));
        assert!(bad(20, 1.0, 4, vec![0; 5]));
    }

    proptest! {
        #[test]
        fn packing_gives_back_the_same_bits(
            sums in proptest::collection::vec(-(1i64 << 40)..(1i64 << 40), 0..300),
            frac_bits in 0u32..=40,
            divisor in prop_oneof![(1u32..1000).prop_map(f64::from), 1.0f64..1e6],
            noise in proptest::collection::vec(any::<f64>(), 0..4),
        ) {
            let scale = Scale::new(frac_bits, divisor);
            let mut values: Vec<f64> = sums.iter().map(|&s| scale.value(s)).collect();
            round_trip(&values, divisor);
            // Arbitrary floats among them: still exact, whatever the packing.
            values.extend(noise);
            round_trip(&values, divisor);
        }

        #[test]
        fn any_bytes_unpack_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(packed) = bincode::deserialize::<PackedValues>(&bytes) {
                let _ = packed.unpack();
            }
        }
    }
}
