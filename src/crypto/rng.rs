//! Randomness: 256-bit OS seeds, and derived ChaCha12 streams (one per polynomial, so that
//! polynomials can be encrypted in parallel) for public polynomials, key expansion, noise and
//! stochastic rounding.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use rand::RngCore;
use zeroize::Zeroizing;

/// 256 bits from the operating system.
pub(crate) fn os_seed() -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut seed[..]);
    seed
}

/// One derived stream: ChaCha12 keyed by a seed derived from the master key with BLAKE3 in
/// keyed mode, a PRF, so the streams' seeds are independent and uniform. It hands out words in
/// bulk from a buffered keystream. The cipher state (zeroized by the crate on drop) and the
/// buffer are wiped: for key expansion and noise they are secrets.
///
/// Twelve rounds, not twenty: the best known attacks reach seven, twelve is what `rand`'s
/// `StdRng` uses, and the keystream was over a quarter of an encryption's CPU with ChaCha20
/// (`docs/CRYPTO.md` A.4).
pub(crate) struct ChunkRandomness {
    keystream: Keystream,
}

/// Keystream drawn at a time: 16 ChaCha blocks, what the AVX2 backend makes in four passes.
const KEYSTREAM_BUFFER: usize = 1024;

/// A ChaCha12 keystream handed out a few bytes at a time through a wiped buffer.
struct Keystream {
    cipher: chacha20::ChaCha12,
    buffer: Zeroizing<[u8; KEYSTREAM_BUFFER]>,
    pos: usize,
}

impl Keystream {
    fn new(key: &[u8; 32]) -> Self {
        Keystream {
            cipher: chacha20::ChaCha12::new(key.into(), &[0u8; 12].into()),
            buffer: Zeroizing::new([0u8; KEYSTREAM_BUFFER]),
            pos: KEYSTREAM_BUFFER,
        }
    }

    /// The next N bytes (N divides the buffer's size).
    fn next<const N: usize>(&mut self) -> [u8; N] {
        const { assert!(N > 0 && KEYSTREAM_BUFFER.is_multiple_of(N)) };
        if self.pos == KEYSTREAM_BUFFER {
            self.buffer.fill(0);
            self.cipher.apply_keystream(&mut self.buffer[..]);
            self.pos = 0;
        }
        let mut b = [0u8; N];
        b.copy_from_slice(&self.buffer[self.pos..self.pos + N]);
        self.pos += N;
        b
    }
}

/// The seed of stream `index` under `key` for `label`: keyed BLAKE3, a PRF.
fn stream_seed(key: &[u8; 32], label: &[u8], index: u64) -> Zeroizing<[u8; 32]> {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(label);
    h.update(&index.to_le_bytes());
    Zeroizing::new(*h.finalize().as_bytes())
}

impl ChunkRandomness {
    pub(crate) fn new(master: &[u8; 32], label: &str, index: u64) -> Self {
        let seed = stream_seed(master, label.as_bytes(), index);
        ChunkRandomness {
            keystream: Keystream::new(&seed),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes(self.keystream.next())
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes(self.keystream.next())
    }

    /// One TUniform(b) sample as a signed integer (b ≤ 61): b+2 uniform bits u give
    /// (u >> 1) + (u & 1) on [0, 2^(b+1)] with half weight at both ends, centred by −2^b.
    /// The bits come from a 32-bit word while they fit (b ≤ 30: noise draws half the
    /// keystream it would from 64-bit words).
    pub(crate) fn t_uniform_i64(&mut self, b: u32) -> i64 {
        let word = if b + 2 <= 32 {
            self.next_u32() as u64
        } else {
            self.next_u64()
        };
        let u = word & ((1u64 << (b + 2)) - 1);
        ((u >> 1) + (u & 1)) as i64 - (1i64 << b)
    }

    /// A uniform sample on [0, 1) with 53 bits of precision.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_t_uniform() {
        // TUniform(3): all on [−8, 8], the ends with half the weight of the 15 inner values.
        let mut r = ChunkRandomness::new(&[3u8; 32], "noise", 0);
        let mut counts = [0u32; 17];
        let n = 170_000;
        for _ in 0..n {
            let v = r.t_uniform_i64(3);
            assert!((-8..=8).contains(&v), "{v}");
            counts[(v + 8) as usize] += 1;
        }
        let inner = n as f64 / 16.0;
        for (i, &c) in counts.iter().enumerate() {
            let e = if i == 0 || i == 16 {
                inner / 2.0
            } else {
                inner
            };
            assert!((c as f64 - e).abs() < 0.08 * e, "bucket {i}: {c} vs {e}");
        }
        let u = r.unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn wide_noise_draws_whole_words() {
        // b + 2 > 32: the 64-bit path, still on [−2^b, 2^b] and reaching beyond 2^31.
        let mut r = ChunkRandomness::new(&[4u8; 32], "noise", 0);
        let samples: Vec<i64> = (0..4096).map(|_| r.t_uniform_i64(40)).collect();
        assert!(samples.iter().all(|v| v.abs() <= 1 << 40));
        assert!(samples.iter().any(|v| v.abs() > 1 << 32));
    }

    #[test]
    fn streams_differ_by_index_key_and_label() {
        let first = |key: u8, label: &str, index: u64| {
            ChunkRandomness::new(&[key; 32], label, index).next_u64()
        };
        let a = first(1, "a", 0);
        assert_eq!(a, first(1, "a", 0));
        assert!(a != first(1, "a", 1) && a != first(2, "a", 0) && a != first(1, "b", 0));
    }
}
