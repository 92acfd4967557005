//! Randomness: OS-seeded, per-chunk derived seeds for tfhe's AES-CTR generator (so chunks can
//! be encrypted in parallel), and the flooding-noise stream for partial decryptions.

use rand::RngCore;
use tfhe::core_crypto::commons::math::random::{DefaultRandomGenerator, RandomGenerator, Seed};
use zeroize::Zeroizing;

use super::ring::Torus;

/// 256 bits from the operating system.
pub(crate) fn os_seed() -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut seed[..]);
    seed
}

/// A tfhe generator for one unit of parallel work, derived from a master seed: BLAKE3 in
/// keyed mode is a PRF, so derived seeds are independent and uniformly distributed.
pub(crate) fn derived_generator(
    master: &[u8; 32],
    label: &str,
    index: u64,
) -> RandomGenerator<DefaultRandomGenerator> {
    let mut h = blake3::Hasher::new_keyed(master);
    h.update(label.as_bytes());
    h.update(&index.to_le_bytes());
    let out = Zeroizing::new(*h.finalize().as_bytes());
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&out[..16]);
    RandomGenerator::new(Seed(u128::from_le_bytes(seed)))
}

/// Flooding noise TUniform(bound_log2), drawn from a keyed BLAKE3 output stream. The stream
/// state and buffers are zeroized on drop: a leaked flooding sample would un-flood a share.
pub(crate) struct FloodingStream {
    reader: Zeroizing<blake3::OutputReader>,
    buffer: Zeroizing<[u8; 1024]>,
    pos: usize,
    bound_log2: u32,
}

impl FloodingStream {
    pub(crate) fn new(key: &[u8; 32], stream_index: u64, bound_log2: u32) -> Self {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(b"fhenode/flooding/v1");
        h.update(&stream_index.to_le_bytes());
        let reader = Zeroizing::new(h.finalize_xof());
        Self {
            reader,
            buffer: Zeroizing::new([0u8; 1024]),
            pos: 1024,
            bound_log2,
        }
    }

    fn next_u128(&mut self) -> u128 {
        if self.pos == self.buffer.len() {
            self.reader.fill(&mut self.buffer[..]);
            self.pos = 0;
        }
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.buffer[self.pos..self.pos + 16]);
        self.pos += 16;
        let v = u128::from_le_bytes(b);
        b.fill(0);
        v
    }

    /// One sample of TUniform(b): draw b+2 bits u; (u >> 1) + (u & 1) is on [0, 2^(b+1)]
    /// with half weight at both ends; subtract 2^b.
    pub(crate) fn sample<T: Torus>(&mut self) -> T {
        let b = self.bound_log2;
        let u = self.next_u128() & ((1u128 << (b + 2)) - 1);
        let v = (u >> 1) + (u & 1);
        T::from_u128(v.wrapping_sub(1u128 << b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flooding_is_t_uniform() {
        let mut s = FloodingStream::new(&[7u8; 32], 0, 3);
        let mut counts = [0u32; 17];
        let n = 160_000;
        for _ in 0..n {
            let v = s.sample::<u64>() as i64;
            assert!((-8..=8).contains(&v));
            counts[(v + 8) as usize] += 1;
        }
        // Ends have half the weight of the 15 inner values: 1/32 vs 1/16.
        let expect_inner = n as f64 / 16.0;
        for (i, &c) in counts.iter().enumerate() {
            let e = if i == 0 || i == 16 {
                expect_inner / 2.0
            } else {
                expect_inner
            };
            assert!((c as f64 - e).abs() < 0.08 * e, "bucket {i}: {c} vs {e}");
        }
    }

    #[test]
    fn streams_differ_by_index_and_key() {
        let a: u64 = FloodingStream::new(&[1u8; 32], 0, 40).sample();
        let b: u64 = FloodingStream::new(&[1u8; 32], 1, 40).sample();
        let c: u64 = FloodingStream::new(&[2u8; 32], 0, 40).sample();
        assert!(a != b && a != c);
    }
}
