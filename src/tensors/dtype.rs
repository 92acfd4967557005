//! The element types an update file may hold, and their conversion to numbers.

use half::{bf16, f16};

/// A packed element type. Integers and booleans are read only when a session includes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F16,
    BF16,
    F32,
    F64,
    Int { bytes: u8, signed: bool },
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::Int { bytes, .. } => bytes as usize,
            Dtype::Bool => 1,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(self, Dtype::Int { .. } | Dtype::Bool)
    }

    /// The NumPy name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::Bool => "bool",
            Dtype::Int { bytes, signed } => match (bytes, signed) {
                (1, true) => "int8",
                (2, true) => "int16",
                (4, true) => "int32",
                (8, true) => "int64",
                (1, false) => "uint8",
                (2, false) => "uint16",
                (4, false) => "uint32",
                _ => "uint64",
            },
        }
    }

    /// Reads one element from exactly [`Dtype::size`] bytes.
    pub(crate) fn read(self, bytes: &[u8], big_endian: bool) -> f64 {
        let mut word = [0u8; 8];
        let n = self.size().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        if big_endian {
            word[..n].reverse();
        }
        let (w2, w4) = ([word[0], word[1]], [word[0], word[1], word[2], word[3]]);
        match self {
            Dtype::F16 => f16::from_le_bytes(w2).to_f64(),
            Dtype::BF16 => bf16::from_le_bytes(w2).to_f64(),
            Dtype::F32 => f32::from_le_bytes(w4) as f64,
            Dtype::F64 => f64::from_le_bytes(word),
            Dtype::Bool => (word[0] != 0) as u8 as f64,
            Dtype::Int { bytes, signed } => {
                let raw = u64::from_le_bytes(word);
                if signed {
                    // Sign-extend from the element's width.
                    let shift = 64 - 8 * bytes as u32;
                    (((raw << shift) as i64) >> shift) as f64
                } else {
                    raw as f64
                }
            }
        }
    }

    /// An integer type of `bytes` bytes, if that width exists.
    pub(super) fn int(bytes: u64, signed: bool) -> Option<Dtype> {
        matches!(bytes, 1 | 2 | 4 | 8).then_some(Dtype::Int {
            bytes: bytes as u8,
            signed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_reads_its_numbers_in_both_byte_orders() {
        let cases: Vec<(Dtype, Vec<u8>, f64)> = vec![
            (Dtype::F16, f16::from_f32(-2.5).to_le_bytes().to_vec(), -2.5),
            (Dtype::BF16, bf16::from_f32(3.0).to_le_bytes().to_vec(), 3.0),
            (Dtype::F32, 1.25f32.to_le_bytes().to_vec(), 1.25),
            (Dtype::F64, (-1e-3f64).to_le_bytes().to_vec(), -1e-3),
            (Dtype::Bool, vec![7], 1.0),
            (
                Dtype::Int {
                    bytes: 1,
                    signed: true,
                },
                vec![0xff],
                -1.0,
            ),
            (
                Dtype::Int {
                    bytes: 2,
                    signed: true,
                },
                (-300i16).to_le_bytes().to_vec(),
                -300.0,
            ),
            (
                Dtype::Int {
                    bytes: 4,
                    signed: false,
                },
                u32::MAX.to_le_bytes().to_vec(),
                u32::MAX as f64,
            ),
            (
                Dtype::Int {
                    bytes: 8,
                    signed: true,
                },
                (-5i64).to_le_bytes().to_vec(),
                -5.0,
            ),
        ];
        for (dtype, le, value) in cases {
            assert_eq!(le.len(), dtype.size(), "{}", dtype.name());
            assert_eq!(dtype.read(&le, false), value, "{}", dtype.name());
            let be: Vec<u8> = le.iter().rev().copied().collect();
            assert_eq!(dtype.read(&be, true), value, "{} big-endian", dtype.name());
        }
    }
}
