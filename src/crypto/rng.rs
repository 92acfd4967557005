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

    /// Overwrites `out` with the next `out.len()` bytes: what is left in the buffer, then the
    /// cipher straight into `out` (no copy through the buffer, for whole polynomials).
    fn fill(&mut self, out: &mut [u8]) {
        let buffered = (KEYSTREAM_BUFFER - self.pos).min(out.len());
        let (head, tail) = out.split_at_mut(buffered);
        head.copy_from_slice(&self.buffer[self.pos..self.pos + buffered]);
        self.pos += buffered;
        tail.fill(0);
        self.cipher.apply_keystream(tail);
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

    /// Fills `out` with the next `out.len()` 64-bit words, the same words `next_u64` would
    /// give one by one.
    pub(crate) fn fill_u64(&mut self, out: &mut [u64]) {
        self.keystream.fill(bytemuck::cast_slice_mut(out));
        for w in out.iter_mut() {
            *w = u64::from_le(*w);
        }
    }

    /// Fills `out` with the next `out.len()` 32-bit words (little-endian).
    pub(crate) fn fill_u32(&mut self, out: &mut [u32]) {
        self.keystream.fill(bytemuck::cast_slice_mut(out));
        for w in out.iter_mut() {
            *w = u32::from_le(*w);
        }
    }

    /// `out.len()` TUniform(b) samples, b ≤ 30: b+2 uniform bits u of a 32-bit word give
    /// (u >> 1) + (u & 1) on [0, 2^(b+1)] with half weight at both ends, centred by −2^b. The
    /// words are drawn in bulk into `words` (scratch of the same length, left holding
    /// keystream) and mapped in a loop the compiler vectorises.
    pub(crate) fn fill_t_uniform(&mut self, b: u32, words: &mut [u32], out: &mut [i64]) {
        assert!(b + 2 <= 32 && words.len() == out.len());
        self.fill_u32(words);
        let (mask, centre) = (((1u64 << (b + 2)) - 1) as u32, 1i64 << b);
        for (e, &w) in out.iter_mut().zip(words.iter()) {
            let u = w & mask;
            *e = ((u >> 1) + (u & 1)) as i64 - centre;
        }
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
        let n = 170_000;
        let (mut words, mut samples) = (vec![0u32; n], vec![0i64; n]);
        r.fill_t_uniform(3, &mut words, &mut samples);
        let mut counts = [0u32; 17];
        for &v in &samples {
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
        // The widest noise a profile may use reaches its ends.
        r.fill_t_uniform(30, &mut words, &mut samples);
        assert!(samples.iter().all(|v| v.abs() <= 1 << 30));
        assert!(samples.iter().any(|v| v.abs() > 1 << 29));
        let u = r.unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn bulk_draws_are_the_stream_in_order() {
        // Odd lengths and a bulk draw after single words cross the buffer's edge; the words
        // are the stream's bytes, little-endian, whatever the draw's size.
        let (mut one, mut bulk) = (
            ChunkRandomness::new(&[5u8; 32], "s", 1),
            ChunkRandomness::new(&[5u8; 32], "s", 1),
        );
        let singles: Vec<u64> = (0..3).map(|_| one.next_u64()).collect();
        let mut first = [0u64; 3];
        bulk.fill_u64(&mut first);
        assert_eq!(singles, first);
        let mut words = vec![0u64; 301];
        bulk.fill_u64(&mut words);
        assert_eq!(words, (0..301).map(|_| one.next_u64()).collect::<Vec<_>>());
        let mut halves = vec![0u32; 518];
        bulk.fill_u32(&mut halves);
        let pairs: Vec<u64> = (0..259).map(|_| one.next_u64()).collect();
        let split: Vec<u32> = pairs
            .iter()
            .flat_map(|&w| [w as u32, (w >> 32) as u32])
            .collect();
        assert_eq!(halves, split);
        assert_eq!(bulk.next_u64(), one.next_u64());
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
