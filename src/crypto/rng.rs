//! Randomness: OS-seeded, per-chunk derived ChaCha20 streams (so chunks can be encrypted in
//! parallel), and the flooding-noise stream for partial decryptions.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use rand::RngCore;
use zeroize::Zeroizing;

use super::ring::Torus;

/// 256 bits from the operating system.
pub(crate) fn os_seed() -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut seed[..]);
    seed
}

/// The randomness of one chunk's encryption (and of its stochastic rounding): ChaCha20 keyed by
/// a seed derived from the master seed with BLAKE3 in keyed mode, a PRF, so the chunks' seeds
/// are independent and uniform and chunks can be encrypted in parallel. It hands out words in
/// bulk; tfhe's generator hands out one byte per call, which made sampling the largest single
/// cost of encrypting a chunk. The cipher state (zeroized by the crate on drop), its buffered
/// keystream and the drawn words are all wiped: they are the encryption's (and, at key
/// generation, the key share's) secrets.
pub(crate) struct ChunkRandomness {
    keystream: Keystream,
    words: Zeroizing<Vec<u64>>,
}

/// Keystream drawn at a time: 16 ChaCha blocks, what the AVX2 backend makes in four passes.
const KEYSTREAM_BUFFER: usize = 1024;

/// A ChaCha20 keystream handed out a few bytes at a time through a wiped buffer. The cipher
/// state is zeroized by the crate on drop.
struct Keystream {
    cipher: chacha20::ChaCha20,
    buffer: Zeroizing<[u8; KEYSTREAM_BUFFER]>,
    pos: usize,
}

impl Keystream {
    fn new(key: &[u8; 32]) -> Self {
        Keystream {
            cipher: chacha20::ChaCha20::new(key.into(), &[0u8; 12].into()),
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

/// The seed of stream `index` under `key` for `label`: keyed BLAKE3, a PRF, so the streams'
/// seeds are independent and uniform.
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
            words: Zeroizing::new(Vec::new()),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes(self.keystream.next())
    }

    /// One TUniform(b) sample as a signed integer (b ≤ 61).
    pub(crate) fn t_uniform_i64(&mut self, b: u32) -> i64 {
        let u = self.next_u64() & ((1u64 << (b + 2)) - 1);
        ((u >> 1) + (u & 1)) as i64 - (1i64 << b)
    }

    fn fill_words(&mut self, n: usize) {
        self.words.clear();
        self.words.resize(n, 0);
        for w in self.words.iter_mut() {
            *w = u64::from_le_bytes(self.keystream.next());
        }
    }

    /// Uniform binary coefficients.
    pub(crate) fn fill_binary<T: Torus>(&mut self, out: &mut [T]) {
        self.fill_words(out.len().div_ceil(64));
        for (j, x) in out.iter_mut().enumerate() {
            *x = T::from_u128(((self.words[j / 64] >> (j % 64)) & 1) as u128);
        }
    }

    /// Adds TUniform(bound_log2) noise to each value (bound_log2 ≤ 61).
    pub(crate) fn add_t_uniform<T: Torus>(&mut self, values: &mut [T], bound_log2: u32) {
        assert!(
            bound_log2 <= 61,
            "TUniform bound 2^{bound_log2} is too wide"
        );
        self.fill_words(values.len());
        let mask = (1u64 << (bound_log2 + 2)) - 1;
        for (x, &w) in values.iter_mut().zip(self.words.iter()) {
            *x = x.wrapping_add(t_uniform((w & mask) as u128, bound_log2));
        }
        self.words.fill(0);
    }

    /// A uniform sample on [0, 1) with 53 bits of precision.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Flooding noise TUniform(bound_log2), drawn from a ChaCha20 keystream whose key is derived
/// with keyed BLAKE3 (a PRF) from the caller's key and the stream index. ChaCha20 rather than
/// BLAKE3's own output stream: it is several times faster on AVX2, and a partial decryption
/// draws 16 bytes per value. The cipher state (zeroized by the crate on drop) and the buffer are
/// wiped: a leaked flooding sample would un-flood a share.
pub(crate) struct FloodingStream {
    keystream: Keystream,
    bound_log2: u32,
}

impl FloodingStream {
    pub(crate) fn new(key: &[u8; 32], stream_index: u64, bound_log2: u32) -> Self {
        let stream_key = stream_seed(key, b"fhenode/flooding/v2", stream_index);
        Self {
            keystream: Keystream::new(&stream_key),
            bound_log2,
        }
    }

    fn next_u128(&mut self) -> u128 {
        u128::from_le_bytes(self.keystream.next())
    }

    /// One sample of TUniform(b).
    pub(crate) fn sample<T: Torus>(&mut self) -> T {
        let b = self.bound_log2;
        t_uniform(self.next_u128() & ((1u128 << (b + 2)) - 1), b)
    }
}

/// TUniform(b) from b+2 uniform bits u: (u >> 1) + (u & 1) is on [0, 2^(b+1)] with half weight
/// at both ends; subtracting 2^b centres it on [−2^b, 2^b].
fn t_uniform<T: Torus>(u: u128, b: u32) -> T {
    T::from_u128(((u >> 1) + (u & 1)).wrapping_sub(1u128 << b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks samples of TUniform(3): all on [−8, 8], the ends with half the weight of the 15
    /// inner values (1/32 vs 1/16).
    fn assert_t_uniform_3(samples: impl Iterator<Item = i128>) {
        let mut counts = [0u32; 17];
        let mut n = 0;
        for v in samples {
            assert!((-8..=8).contains(&v), "{v}");
            counts[(v + 8) as usize] += 1;
            n += 1;
        }
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
    fn flooding_is_t_uniform() {
        let mut s = FloodingStream::new(&[7u8; 32], 0, 3);
        assert_t_uniform_3((0..160_000).map(|_| s.sample::<u64>() as i64 as i128));
    }

    #[test]
    fn chunk_noise_is_t_uniform_and_bits_are_binary() {
        let mut r = ChunkRandomness::new(&[3u8; 32], "encrypt", 0);
        let mut values = vec![0u128; 170_000];
        r.add_t_uniform(&mut values, 3);
        assert_t_uniform_3(values.iter().map(|&v| v as i128));
        let mut bits = vec![7u64; 10_000];
        r.fill_binary(&mut bits);
        let ones = bits.iter().filter(|&&b| b == 1).count();
        assert!(bits.iter().all(|&b| b <= 1));
        assert!((4_700..5_300).contains(&ones), "{ones}");
        let u = r.unit();
        assert!((0.0..1.0).contains(&u));
        let mut other = ChunkRandomness::new(&[3u8; 32], "encrypt", 1);
        let mut again = ChunkRandomness::new(&[3u8; 32], "encrypt", 0);
        assert_ne!(other.unit(), again.unit(), "chunks get independent streams");
    }

    #[test]
    fn streams_differ_by_index_and_key() {
        let a: u64 = FloodingStream::new(&[1u8; 32], 0, 40).sample();
        let b: u64 = FloodingStream::new(&[1u8; 32], 1, 40).sample();
        let c: u64 = FloodingStream::new(&[2u8; 32], 0, 40).sample();
        assert!(a != b && a != c);
    }
}
