//! Keys: per-session secret shares, the commit-then-reveal key ceremony, the collective
//! compact public key, and encryption under it.

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::commons::math::random::{CompressionSeed, Seed};
use tfhe::core_crypto::prelude::{
    generate_binary_lwe_secret_key, new_seeder, CiphertextModulus, DefaultRandomGenerator,
    LweDimension, LweSecretKey, SecretRandomGenerator, SeededLweCompactPublicKey,
};
use zeroize::Zeroizing;

use super::aggregate::{DecryptionRequest, PartialDecryption};
use super::codec::{self, pack_rounded, pack_rounded_into};
use super::engine::ProfileTorus;
use super::params::{Profile, ProfileParams, SessionParams};
use super::ring::{NttPoly, Torus};
use super::rng::{os_seed, ChunkRandomness, FloodingStream};
use super::wire::{self, Kind, Wire};
use super::{typed, CryptoError, Typed};

fn hex8(bytes: &[u8]) -> String {
    hex::encode(&bytes[..8])
}

/// Binds keys and ciphertexts to one session: BLAKE3 of the session id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionTag(pub [u8; 32]);

impl SessionTag {
    pub fn derive(session_id: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("fhenode 2026 session tag v1");
        h.update(session_id.as_bytes());
        SessionTag(*h.finalize().as_bytes())
    }
}

impl fmt::Debug for SessionTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionTag({})", hex8(&self.0))
    }
}

/// Identifies a collective public key: BLAKE3 over its parameters, session and body.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 32]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex8(&self.0))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex8(&self.0))
    }
}

/// The public mask `a` every member derives from the session's CRS seed, expanded by tfhe's
/// CSPRNG exactly as tfhe's seeded compact public keys are.
fn crs_mask<T: ProfileTorus>(params: &SessionParams, tag: &SessionTag) -> Vec<T> {
    let seeded = SeededLweCompactPublicKey::new(
        T::ZERO,
        LweDimension(T::ring().n()),
        CompressionSeed::from(crs_seed(params, tag)),
        CiphertextModulus::new_native(),
    );
    let pk = seeded.decompress_into_lwe_compact_public_key();
    pk.get_mask().as_ref().to_vec()
}

/// The common reference string seed: every member derives the same public mask `a` from it.
fn crs_seed(params: &SessionParams, tag: &SessionTag) -> Seed {
    let mut h = blake3::Hasher::new_derive_key("fhenode 2026 crs v1");
    h.update(&tag.0);
    h.update(params.profile.name().as_bytes());
    let mut s = [0u8; 16];
    s.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Seed(u128::from_le_bytes(s))
}

fn torus_to_bytes<T: Torus>(values: &[T]) -> Vec<u8> {
    let width = T::BITS / 8;
    let mut out = Vec::with_capacity(values.len() * width);
    for &v in values {
        out.extend_from_slice(&v.to_u128().to_le_bytes()[..width]);
    }
    out
}

fn torus_from_bytes<T: Torus>(bytes: &[u8], what: &'static str) -> Result<Vec<T>, CryptoError> {
    let width = T::BITS / 8;
    if !bytes.len().is_multiple_of(width) {
        return Err(CryptoError::Malformed {
            what,
            reason: format!(
                "{} bytes is not a whole number of {width}-byte coefficients",
                bytes.len()
            ),
        });
    }
    let mut out = vec![T::ZERO; bytes.len() / width];
    codec::unpack_into(bytes, (width * 8) as u32, &mut out);
    Ok(out)
}

/// A member's commitment to its public-key share, published before any share is revealed so
/// that no member can choose its share as a function of the others' (rogue-key attack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCommitment {
    pub tag: SessionTag,
    pub member: u32,
    pub digest: [u8; 32],
}

/// A member's public-key share: the bodies `b_{i,l} = a·rev(s_{i,l}) + e_{i,l}`, one per body slot
/// `l` of a chunk, all under the CRS mask `a` (full width, little-endian, one after the other).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyShare {
    pub profile: Profile,
    pub tag: SessionTag,
    pub member: u32,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl fmt::Debug for PublicKeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeyShare")
            .field("profile", &self.profile)
            .field("tag", &self.tag)
            .field("member", &self.member)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl PublicKeyShare {
    pub fn commitment(&self) -> KeyCommitment {
        let mut h = blake3::Hasher::new_derive_key("fhenode 2026 key share commitment v1");
        h.update(self.profile.name().as_bytes());
        h.update(&self.tag.0);
        h.update(&self.member.to_le_bytes());
        h.update(&self.body);
        KeyCommitment {
            tag: self.tag,
            member: self.member,
            digest: *h.finalize().as_bytes(),
        }
    }

    pub(crate) fn expected_len(profile: Profile) -> usize {
        let p = profile.params();
        p.chunk_values() * (p.torus_bits / 8) as usize
    }
}

struct SecretPoly<T: Torus> {
    /// Binary coefficients of the secrets s_{i,l}, one polynomial per body slot, in order.
    bits: Zeroizing<Vec<T>>,
    /// NTT form of reverse(s_{i,l}) per slot, the operands of every partial decryption.
    rev_ntt: Vec<Zeroizing<NttPoly>>,
}

impl<T: ProfileTorus> SecretPoly<T> {
    fn from_bits(bits: Zeroizing<Vec<T>>) -> Self {
        let rev_ntt = bits
            .chunks(T::ring().n())
            .map(|s| {
                let mut rev = Zeroizing::new(s.to_vec());
                rev.reverse();
                Zeroizing::new(T::ring().forward_binary(&rev))
            })
            .collect();
        SecretPoly { bits, rev_ntt }
    }

    fn generate(params: &SessionParams, tag: &SessionTag) -> (Self, Vec<T>) {
        let p = params.profile.params();
        let n = p.ring_dim;
        let mut seeder = new_seeder();
        let mut bits = Zeroizing::new(vec![T::ZERO; p.chunk_values()]);
        {
            let mut secret_gen =
                SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
            let mut key = LweSecretKey::from_container(&mut bits[..]);
            generate_binary_lwe_secret_key(&mut key, &mut secret_gen);
        }
        let secret = Self::from_bits(bits);
        // What tfhe's seeded compact public key generation computes, once per slot, with the
        // same `a` for every slot: a·rev(s_{i,l}) + e_{i,l}. The product runs on our exact NTT
        // (tfhe falls back to Karatsuba for u128, 8 times slower at eight slots per member).
        let ring = T::ring();
        let a_ntt = ring.forward(&crs_mask::<T>(params, tag));
        let mut body = vec![T::ZERO; p.chunk_values()];
        // Holds a·rev(s) before its noise: as secret as s.
        let mut scratch = Zeroizing::new(ring.scratch());
        for (out, s) in body.chunks_mut(n).zip(&secret.rev_ntt) {
            ring.product(&a_ntt, s, out, &mut scratch);
        }
        ChunkRandomness::new(&os_seed(), "keygen", 0).add_t_uniform(&mut body, p.noise_log2);
        (secret, body)
    }

    /// d_j = (M · rev(s_{i,l}))[N−1−j'] + flooding_j for every value j of every chunk, where
    /// value j sits in body slot l at position j' of its chunk's mask.
    fn partial(
        &self,
        mask: &[u8],
        length: usize,
        flood_key: &[u8; 32],
        flood_log2: u32,
        keep: u32,
    ) -> Vec<u8> {
        let ring = T::ring();
        let n = ring.n();
        let p = T::PROFILE.params();
        let chunk_values = p.chunk_values();
        let mask_width = codec::packed_width(p.mask_keep_bits);
        // Buffers reused from chunk to chunk by each worker (as in encryption). The unflooded
        // products d_i − f_i must not outlive this call: those buffers are zeroizing.
        let work = || {
            (
                vec![T::ZERO; n],
                ring.scratch(),
                Zeroizing::new(vec![T::ZERO; n]),
                Zeroizing::new(ring.scratch()),
                Zeroizing::new(Vec::<T>::with_capacity(chunk_values)),
            )
        };
        let chunks: Vec<Vec<u8>> = mask
            .par_chunks(n * mask_width)
            .enumerate()
            .map_init(work, |(m, m_ntt, prod, scratch, d), (c, mask_bytes)| {
                let count = (length - c * chunk_values).min(chunk_values);
                codec::unpack_into(mask_bytes, p.mask_keep_bits, m);
                ring.forward_into(m, m_ntt);
                d.clear();
                let mut flood = FloodingStream::new(flood_key, c as u64, flood_log2);
                for (l, secret) in self.rev_ntt.iter().enumerate().take(count.div_ceil(n)) {
                    ring.product(m_ntt, secret, prod, scratch);
                    let here = (count - l * n).min(n);
                    d.extend((0..here).map(|j| prod[n - 1 - j].wrapping_add(flood.sample::<T>())));
                }
                let mut out = Vec::new();
                pack_rounded(d, keep, &mut out);
                out
            })
            .collect();
        chunks.concat()
    }
}

/// A committee member's secret share of one session's key. Zeroized on drop, redacted in
/// `Debug`, serialized only through [`Self::to_secret_bytes`] (for the key store). It answers
/// at most one decryption request: the same request again gets the same bytes back (its flooding
/// noise is drawn from a PRF of a per-share secret and the request digest, so a retry reveals
/// nothing new and nothing but the digest has to be remembered), any other is refused
/// ([`CryptoError::KeyAlreadyUsed`]).
pub struct SecretKeyShare {
    params: SessionParams,
    tag: SessionTag,
    member: u32,
    secret: Typed<SecretPoly<u128>, SecretPoly<u64>>,
    collective: Option<KeyId>,
    /// Keys the flooding-noise PRF; as secret as the share itself.
    flood_secret: Zeroizing<[u8; 32]>,
    /// Digest of the one request this share answered.
    answered: Option<[u8; 32]>,
}

impl fmt::Debug for SecretKeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeyShare")
            .field("profile", &self.params.profile)
            .field("tag", &self.tag)
            .field("member", &self.member)
            .field("collective", &self.collective)
            .field("answered", &self.answered.is_some())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What the key store persists. The secret bits live in a zeroizing buffer.
#[derive(Serialize, Deserialize)]
struct SecretRecord {
    version: u16,
    params: SessionParams,
    tag: SessionTag,
    member: u32,
    collective: Option<KeyId>,
    answered: Option<[u8; 32]>,
    flood_secret: [u8; 32],
    #[serde(with = "serde_bytes")]
    bits: Vec<u8>,
}

impl Drop for SecretRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bits);
        zeroize::Zeroize::zeroize(&mut self.flood_secret);
    }
}

/// 2: flooding noise from a PRF, `answered` holds only the request digest.
/// 3: one secret polynomial per body slot.
/// 4: flooding from a ChaCha20 keystream. A share that may have answered with the earlier
///    stream is refused rather than answer the same request again with different flooding
///    (two floodings of one value could be averaged).
const SECRET_RECORD_VERSION: u16 = 4;

impl SecretKeyShare {
    /// Draws a fresh secret share for `member` (0-based index into the committee) and its
    /// public share. Publish `public.commitment()` first, the share only once every member's
    /// commitment is in.
    pub fn generate(
        params: &SessionParams,
        tag: SessionTag,
        member: u32,
    ) -> Result<(Self, PublicKeyShare), CryptoError> {
        params.validate()?;
        if member >= params.committee {
            return Err(CryptoError::InvalidParams(format!(
                "member index {member} outside a committee of {}",
                params.committee
            )));
        }
        let (secret, body) = match params.profile {
            Profile::Secure => {
                let (s, b) = SecretPoly::<u128>::generate(params, &tag);
                (Typed::Secure(s), torus_to_bytes(&b))
            }
            Profile::Fast => {
                let (s, b) = SecretPoly::<u64>::generate(params, &tag);
                (Typed::Fast(s), torus_to_bytes(&b))
            }
        };
        let share = SecretKeyShare {
            params: params.clone(),
            tag,
            member,
            secret,
            collective: None,
            flood_secret: os_seed(),
            answered: None,
        };
        let public = PublicKeyShare {
            profile: params.profile,
            tag,
            member,
            body,
        };
        Ok((share, public))
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }
    pub fn tag(&self) -> SessionTag {
        self.tag
    }
    pub fn member(&self) -> u32 {
        self.member
    }
    pub fn collective(&self) -> Option<KeyId> {
        self.collective
    }
    /// The digest of the decryption request this share answered, if any.
    pub fn answered(&self) -> Option<[u8; 32]> {
        self.answered
    }

    /// Records which collective key this share belongs to, after checking that the key was
    /// built from this member's own share (by commitment) for this session.
    pub fn bind(
        &mut self,
        key: &CollectivePublicKey,
        own_share: &PublicKeyShare,
    ) -> Result<(), CryptoError> {
        if key.tag != self.tag || own_share.tag != self.tag {
            return Err(CryptoError::WrongSession {
                what: "collective key",
            });
        }
        if key.params != self.params {
            return Err(CryptoError::InvalidParams(
                "collective key was made with other session parameters".into(),
            ));
        }
        let expected = own_share.commitment().digest;
        if key.commitments.get(self.member as usize) != Some(&expected) {
            return Err(CryptoError::Ceremony(format!(
                "collective key does not contain member {}'s share",
                self.member
            )));
        }
        match self.collective {
            Some(id) if id != key.key_id => Err(CryptoError::Ceremony(
                "share already bound to another collective key".into(),
            )),
            _ => {
                self.collective = Some(key.key_id);
                Ok(())
            }
        }
    }

    /// This member's partial decryption of the aggregate in `request`. Checks the request is
    /// for this session and key, has between `min_contributors` and the session's declared
    /// participants, and that this share never answered a different request.
    pub fn partial_decrypt(
        &mut self,
        request: &DecryptionRequest,
        min_contributors: u32,
    ) -> Result<PartialDecryption, CryptoError> {
        let digest = request.digest();
        if self.answered.is_some_and(|prev| prev != digest) {
            return Err(CryptoError::KeyAlreadyUsed);
        }
        if request.tag != self.tag {
            return Err(CryptoError::WrongSession {
                what: "decryption request",
            });
        }
        if request.profile != self.params.profile {
            return Err(CryptoError::ProfileMismatch {
                expected: self.params.profile,
                got: request.profile,
            });
        }
        let Some(key_id) = self.collective else {
            return Err(CryptoError::DecryptionRefused(
                "this share was never bound to a collective key".into(),
            ));
        };
        if request.key_id != key_id {
            return Err(CryptoError::WrongKey {
                what: "decryption request",
            });
        }
        request.validate()?;
        let contributors = request.contributors.len() as u32;
        if contributors < min_contributors.max(1) {
            return Err(CryptoError::DecryptionRefused(format!(
                "{contributors} contributors is below the minimum of {min_contributors}"
            )));
        }
        if contributors > self.params.participants {
            return Err(CryptoError::DecryptionRefused(format!(
                "{contributors} contributors exceeds the session's {} participants (noise budget)",
                self.params.participants
            )));
        }
        let budget = self.params.budget();
        let flood_key = Zeroizing::new(blake3::keyed_hash(&self.flood_secret, &digest).into());
        let length = request.length as usize;
        let values = typed!(&self.secret, s => s.partial(
            &request.mask, length, &flood_key, budget.flood_log2, budget.partial_keep_bits
        ));
        let partial = PartialDecryption {
            tag: self.tag,
            key_id,
            request_digest: digest,
            member: self.member,
            keep_bits: budget.partial_keep_bits,
            values,
        };
        self.answered = Some(digest);
        Ok(partial)
    }

    #[cfg(test)]
    pub(crate) fn secret_bits_for_tests(&self) -> Vec<u128> {
        typed!(&self.secret, s => s.bits.iter().map(|b| b.to_u128()).collect())
    }

    /// The share as bytes for the key store (zeroized when dropped). Never log or send these.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let bits: Vec<u8> =
            typed!(&self.secret, s => s.bits.iter().map(|b| b.to_u128() as u8).collect());
        let record = SecretRecord {
            version: SECRET_RECORD_VERSION,
            params: self.params.clone(),
            tag: self.tag,
            member: self.member,
            collective: self.collective,
            answered: self.answered,
            flood_secret: *self.flood_secret,
            bits,
        };
        Zeroizing::new(bincode::serialize(&record).expect("in-memory serialization of plain data"))
    }

    /// Inverse of [`Self::to_secret_bytes`]; refuses anything malformed.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        use bincode::Options;
        let record: SecretRecord = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(bytes.len() as u64)
            .deserialize(bytes)
            .map_err(|e| CryptoError::Malformed {
                what: "secret key share",
                reason: e.to_string(),
            })?;
        if record.version != SECRET_RECORD_VERSION {
            return Err(CryptoError::Malformed {
                what: "secret key share",
                reason: format!("unknown record version {}", record.version),
            });
        }
        record.params.validate()?;
        let len = record.params.profile.params().chunk_values();
        if record.bits.len() != len || record.bits.iter().any(|&b| b > 1) {
            return Err(CryptoError::Malformed {
                what: "secret key share",
                reason: "secret is not the profile's number of binary polynomials".into(),
            });
        }
        fn lift<T: ProfileTorus>(bits: &[u8]) -> SecretPoly<T> {
            SecretPoly::from_bits(Zeroizing::new(
                bits.iter().map(|&b| T::from_u128(b as u128)).collect(),
            ))
        }
        let secret = match record.params.profile {
            Profile::Secure => Typed::Secure(lift::<u128>(&record.bits)),
            Profile::Fast => Typed::Fast(lift::<u64>(&record.bits)),
        };
        Ok(SecretKeyShare {
            params: record.params.clone(),
            tag: record.tag,
            member: record.member,
            secret,
            collective: record.collective,
            flood_secret: Zeroizing::new(record.flood_secret),
            answered: record.answered,
        })
    }
}

/// Runs a whole key ceremony inside one process: every member's share, the commitments, the
/// reveal, the collective key, and each share bound to it. For benchmarks, demos and tests; a
/// real committee runs the same steps on separate nodes.
pub fn local_ceremony(
    params: &SessionParams,
    tag: SessionTag,
) -> Result<(Vec<SecretKeyShare>, CollectivePublicKey), CryptoError> {
    let mut ceremony = KeyCeremony::new(params.clone(), tag)?;
    let generated = (0..params.committee)
        .map(|member| SecretKeyShare::generate(params, tag, member))
        .collect::<Result<Vec<_>, _>>()?;
    for (_, public) in &generated {
        ceremony.add_commitment(public.commitment())?;
    }
    for (_, public) in &generated {
        ceremony.add_share(public.clone())?;
    }
    let key = ceremony.finish()?;
    let shares = generated
        .into_iter()
        .map(|(mut share, public)| share.bind(&key, &public).map(|()| share))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((shares, key))
}

/// Collects commitments, then shares, and sums them into the collective key. Pure state: the
/// session protocol feeds it whatever arrives and asks whether it is complete.
#[derive(Debug, Clone)]
pub struct KeyCeremony {
    params: SessionParams,
    tag: SessionTag,
    commitments: Vec<Option<KeyCommitment>>,
    shares: Vec<Option<PublicKeyShare>>,
}

impl KeyCeremony {
    pub fn new(params: SessionParams, tag: SessionTag) -> Result<Self, CryptoError> {
        params.validate()?;
        let k = params.committee as usize;
        Ok(KeyCeremony {
            params,
            tag,
            commitments: vec![None; k],
            shares: vec![None; k],
        })
    }

    fn check_member(&self, tag: &SessionTag, member: u32) -> Result<usize, CryptoError> {
        if *tag != self.tag {
            return Err(CryptoError::WrongSession {
                what: "key ceremony message",
            });
        }
        if member >= self.params.committee {
            return Err(CryptoError::Ceremony(format!(
                "member {member} is outside the committee of {}",
                self.params.committee
            )));
        }
        Ok(member as usize)
    }

    /// Records a commitment; the same one again is harmless, a different one is refused.
    pub fn add_commitment(&mut self, c: KeyCommitment) -> Result<(), CryptoError> {
        let i = self.check_member(&c.tag, c.member)?;
        match &self.commitments[i] {
            Some(prev) if *prev != c => Err(CryptoError::Ceremony(format!(
                "member {} sent a second, different commitment",
                c.member
            ))),
            _ => {
                self.commitments[i] = Some(c);
                Ok(())
            }
        }
    }

    pub fn all_committed(&self) -> bool {
        self.commitments.iter().all(Option::is_some)
    }

    /// Records a revealed share. Refused before every commitment is in (commit-then-reveal),
    /// or when it does not match its member's commitment.
    pub fn add_share(&mut self, share: PublicKeyShare) -> Result<(), CryptoError> {
        let i = self.check_member(&share.tag, share.member)?;
        if share.profile != self.params.profile {
            return Err(CryptoError::ProfileMismatch {
                expected: self.params.profile,
                got: share.profile,
            });
        }
        if !self.all_committed() {
            return Err(CryptoError::Ceremony(
                "a share was revealed before every member committed".into(),
            ));
        }
        if share.body.len() != PublicKeyShare::expected_len(share.profile) {
            return Err(CryptoError::Malformed {
                what: "public key share",
                reason: format!(
                    "{} bytes, expected {}",
                    share.body.len(),
                    PublicKeyShare::expected_len(share.profile)
                ),
            });
        }
        if Some(share.commitment()) != self.commitments[i] {
            return Err(CryptoError::Ceremony(format!(
                "member {}'s share does not match its commitment",
                share.member
            )));
        }
        self.shares[i] = Some(share);
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        self.shares.iter().all(Option::is_some)
    }

    /// Members whose commitment or share is still missing.
    pub fn missing(&self) -> Vec<u32> {
        (0..self.params.committee)
            .filter(|&i| self.shares[i as usize].is_none())
            .collect()
    }

    /// Sums the shares' bodies into the collective public key `(a, Σ b_i)`.
    pub fn finish(&self) -> Result<CollectivePublicKey, CryptoError> {
        if !self.is_complete() {
            return Err(CryptoError::Ceremony(format!(
                "shares missing from members {:?}",
                self.missing()
            )));
        }
        let shares: Vec<&PublicKeyShare> = self.shares.iter().flatten().collect();
        let body = match self.params.profile {
            Profile::Secure => sum_bodies::<u128>(&shares)?,
            Profile::Fast => sum_bodies::<u64>(&shares)?,
        };
        let commitments = shares.iter().map(|s| s.commitment().digest).collect();
        CollectivePublicKey::from_parts(self.params.clone(), self.tag, commitments, body)
    }
}

fn sum_bodies<T: Torus>(shares: &[&PublicKeyShare]) -> Result<Vec<u8>, CryptoError> {
    let mut acc: Option<Vec<T>> = None;
    for s in shares {
        let b = torus_from_bytes::<T>(&s.body, "public key share")?;
        match &mut acc {
            None => acc = Some(b),
            Some(a) => a
                .iter_mut()
                .zip(&b)
                .for_each(|(x, y)| *x = x.wrapping_add(*y)),
        }
    }
    Ok(torus_to_bytes(&acc.unwrap_or_default()))
}

/// The public key material every encryption and the centring correction needs, in NTT form.
pub(crate) struct PkCore<T: Torus> {
    a_ntt: NttPoly,
    /// One body per slot.
    b_ntt: Vec<NttPoly>,
    /// Encryption of zero with all-ones randomness and no noise: a·1, and reverse(b_l·1) for
    /// every slot, one after the other.
    pub(crate) ones_mask: Vec<T>,
    pub(crate) ones_body_rev: Vec<T>,
}

impl<T: ProfileTorus> PkCore<T> {
    fn new(params: &SessionParams, tag: &SessionTag, body: &[u8]) -> Result<Self, CryptoError> {
        let b = torus_from_bytes::<T>(body, "collective key")?;
        let ring = T::ring();
        let n = ring.n();
        let expected = T::PROFILE.params().chunk_values();
        if b.len() != expected {
            return Err(CryptoError::Malformed {
                what: "collective key",
                reason: format!("{} coefficients, expected {expected}", b.len()),
            });
        }
        let a_ntt = ring.forward(&crs_mask::<T>(params, tag));
        let b_ntt: Vec<NttPoly> = b.chunks(n).map(|body| ring.forward(body)).collect();
        let ones = ring.forward_binary(&vec![T::ONE; n]);
        let mut scratch = ring.scratch();
        let mut ones_mask = vec![T::ZERO; n];
        ring.product(&a_ntt, &ones, &mut ones_mask, &mut scratch);
        let mut ones_body_rev = vec![T::ZERO; expected];
        for (out, body) in ones_body_rev.chunks_mut(n).zip(&b_ntt) {
            ring.product(body, &ones, out, &mut scratch);
            out.reverse();
        }
        Ok(PkCore {
            a_ntt,
            b_ntt,
            ones_mask,
            ones_body_rev,
        })
    }

    /// Encrypts zero into one chunk of `count` ≤ L·N values under one binary randomness r:
    /// mask = a·r + e1 and, for value j at position j' of slot l, body_j = (b_l·r)[N−1−j'] + e2_j;
    /// then rounds both straight into `out`, the chunk's place in the wire message. Only the slots
    /// the chunk fills are computed. [`seal_chunks`] adds the message m_j to the rounded bodies.
    fn encrypt_zero_chunk(
        &self,
        count: usize,
        gen_seed: &[u8; 32],
        index: u32,
        work: &mut EncryptWork<T>,
        out: &mut [u8],
    ) {
        let ring = T::ring();
        let n = ring.n();
        let p = T::PROFILE.params();
        let mut randomness = ChunkRandomness::new(gen_seed, "encrypt", index as u64);
        randomness.fill_binary(&mut work.r);
        ring.forward_binary_into(&work.r, &mut work.r_ntt);
        ring.product(&self.a_ntt, &work.r_ntt, &mut work.mask, &mut work.ntt);
        randomness.add_t_uniform(&mut work.mask, p.noise_log2);
        work.body.clear();
        for (slot, start) in self.b_ntt.iter().zip((0..count).step_by(n)) {
            ring.product(slot, &work.r_ntt, &mut work.product, &mut work.ntt);
            let br = &work.product;
            work.body
                .extend((0..(count - start).min(n)).map(|j| br[n - 1 - j]));
        }
        randomness.add_t_uniform(&mut work.body, p.noise_log2);
        let layout = ChunkLayout::new(p, count);
        debug_assert_eq!(out.len(), layout.len());
        let (head, rest) = out.split_at_mut(CHUNK_HEAD);
        head[..4].copy_from_slice(&index.to_le_bytes());
        head[4..8].copy_from_slice(&(count as u32).to_le_bytes());
        head[8..].copy_from_slice(&(layout.mask as u64).to_le_bytes());
        let (mask, rest) = rest.split_at_mut(layout.mask);
        pack_rounded_into(&work.mask, p.mask_keep_bits, mask);
        let (body_len, body) = rest.split_at_mut(8);
        body_len.copy_from_slice(&(layout.body as u64).to_le_bytes());
        pack_rounded_into(&work.body, p.body_keep_bits, body);
    }

    /// Encrypts zero for an update of `length` values, chunk by chunk in parallel, each into
    /// its own region of `out` (the update's chunks in their wire form).
    fn encrypt_zero_into(&self, length: usize, seed: &[u8; 32], out: &mut [u8]) {
        let p = T::PROFILE.params();
        let n = p.chunk_values();
        out.par_chunks_mut(ChunkLayout::new(p, n).len())
            .enumerate()
            .for_each_init(EncryptWork::new, |work, (c, region)| {
                let count = (length - c * n).min(n);
                self.encrypt_zero_chunk(count, seed, c as u32, work, region);
            });
    }
}

/// Adds the encoded `values` to the rounded bodies of prepared chunks (`out`, the update's
/// chunks in their wire form), chunk by chunk in parallel. Returns how many values were
/// clipped. Exact because Δ = 2^(B−w) is a multiple of the body's rounding step (w ≤ keep bits):
/// the result is the rounding of body + m, byte for byte (`codec::add_to_packed`).
fn seal_chunks<T: ProfileTorus>(
    params: &SessionParams,
    values: &[f32],
    seed: &[u8; 32],
    out: &mut [u8],
) -> Result<u64, CryptoError> {
    let p = T::PROFILE.params();
    let n = p.chunk_values();
    out.par_chunks_mut(ChunkLayout::new(p, n).len())
        .zip(values.par_chunks(n))
        .enumerate()
        .map_init(
            || Vec::<T>::with_capacity(n),
            |plaintexts, (c, (region, chunk))| {
                plaintexts.resize(chunk.len(), T::ZERO);
                let mut stochastic = ChunkRandomness::new(seed, "rounding", c as u64);
                let clipped =
                    codec::encode_into(params, chunk, plaintexts, c * n, || stochastic.unit())?;
                let body = ChunkLayout::new(p, chunk.len()).body_offset();
                codec::add_to_packed(plaintexts, p.body_keep_bits, &mut region[body..]);
                Ok(clipped)
            },
        )
        .try_reduce(|| 0, |a, b| Ok(a + b))
}

/// Index, count and the mask's length prefix: the fixed head of a chunk's wire form.
const CHUNK_HEAD: usize = 4 + 4 + 8;

/// Where a chunk of `count` values lies in its wire form, bincode's layout of
/// [`EncryptedChunk`]: the head, the packed mask, the body's u64 length, the packed body.
struct ChunkLayout {
    mask: usize,
    body: usize,
}

impl ChunkLayout {
    fn new(p: &ProfileParams, count: usize) -> Self {
        ChunkLayout {
            mask: p.ring_dim * codec::packed_width(p.mask_keep_bits),
            body: count * codec::packed_width(p.body_keep_bits),
        }
    }

    fn len(&self) -> usize {
        self.body_offset() + self.body
    }

    /// Where the packed body starts.
    fn body_offset(&self) -> usize {
        CHUNK_HEAD + self.mask + 8
    }
}

/// Buffers an encryption worker reuses from chunk to chunk: fresh buffers of hundreds of KiB
/// per chunk cost a page fault (and the kernel's zeroing) per 4 KiB. The randomness r and its
/// transform are wiped when the work is dropped.
struct EncryptWork<T: Torus> {
    r: Zeroizing<Vec<T>>,
    r_ntt: Zeroizing<NttPoly>,
    ntt: Zeroizing<NttPoly>,
    mask: Vec<T>,
    product: Zeroizing<Vec<T>>,
    /// b·r + e2 before the message is added: the pad that hides it.
    body: Zeroizing<Vec<T>>,
}

impl<T: ProfileTorus> EncryptWork<T> {
    fn new() -> Self {
        let ring = T::ring();
        let p = T::PROFILE.params();
        EncryptWork {
            r: Zeroizing::new(vec![T::ZERO; ring.n()]),
            r_ntt: Zeroizing::new(ring.scratch()),
            ntt: Zeroizing::new(ring.scratch()),
            mask: vec![T::ZERO; ring.n()],
            product: Zeroizing::new(vec![T::ZERO; ring.n()]),
            body: Zeroizing::new(Vec::with_capacity(p.chunk_values())),
        }
    }
}

/// The session's collective public key `(a, Σ b_i)`, whose secret `Σ s_i` nobody holds.
#[derive(Clone)]
pub struct CollectivePublicKey {
    params: SessionParams,
    tag: SessionTag,
    key_id: KeyId,
    /// Each member's share commitment, by member index (lets a member check its share is in).
    commitments: Vec<[u8; 32]>,
    body: Vec<u8>,
    pub(crate) core: Typed<Arc<PkCore<u128>>, Arc<PkCore<u64>>>,
}

impl fmt::Debug for CollectivePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectivePublicKey")
            .field("profile", &self.params.profile)
            .field("tag", &self.tag)
            .field("key_id", &self.key_id)
            .field("committee", &self.commitments.len())
            .finish()
    }
}

/// Serialized form of a collective key: `a` is re-derived from the session's CRS seed.
#[derive(Clone, Serialize, Deserialize)]
#[doc(hidden)]
pub struct CollectiveKeyWire {
    params: SessionParams,
    tag: SessionTag,
    commitments: Vec<[u8; 32]>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

impl CollectivePublicKey {
    fn from_parts(
        params: SessionParams,
        tag: SessionTag,
        commitments: Vec<[u8; 32]>,
        body: Vec<u8>,
    ) -> Result<Self, CryptoError> {
        params.validate()?;
        if commitments.len() != params.committee as usize {
            return Err(CryptoError::Malformed {
                what: "collective key",
                reason: format!(
                    "{} share commitments for a committee of {}",
                    commitments.len(),
                    params.committee
                ),
            });
        }
        let core = match params.profile {
            Profile::Secure => Typed::Secure(Arc::new(PkCore::<u128>::new(&params, &tag, &body)?)),
            Profile::Fast => Typed::Fast(Arc::new(PkCore::<u64>::new(&params, &tag, &body)?)),
        };
        let mut h = blake3::Hasher::new_derive_key("fhenode 2026 collective key id v1");
        h.update(&bincode::serialize(&params).expect("plain data"));
        h.update(&tag.0);
        for c in &commitments {
            h.update(c);
        }
        h.update(&body);
        let key_id = KeyId(*h.finalize().as_bytes());
        Ok(CollectivePublicKey {
            params,
            tag,
            key_id,
            commitments,
            body,
            core,
        })
    }

    pub(crate) fn to_wire(&self) -> CollectiveKeyWire {
        CollectiveKeyWire {
            params: self.params.clone(),
            tag: self.tag,
            commitments: self.commitments.clone(),
            body: self.body.clone(),
        }
    }

    pub(crate) fn from_wire(w: CollectiveKeyWire) -> Result<Self, CryptoError> {
        Self::from_parts(w.params, w.tag, w.commitments, w.body)
    }

    #[cfg(test)]
    pub(crate) fn tfhe_public_key_for_tests_u64(
        &self,
    ) -> tfhe::core_crypto::prelude::LweCompactPublicKeyOwned<u64> {
        // Slot 0 alone is an ordinary tfhe compact public key.
        let mut body = torus_from_bytes::<u64>(&self.body, "collective key").unwrap();
        body.truncate(Profile::Fast.params().ring_dim);
        SeededLweCompactPublicKey::from_container(
            body,
            CompressionSeed::from(crs_seed(&self.params, &self.tag)),
            CiphertextModulus::new_native(),
        )
        .decompress_into_lwe_compact_public_key()
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }
    pub fn tag(&self) -> SessionTag {
        self.tag
    }
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Encrypts an update of any length (split into chunks of L·N values, in parallel) straight
    /// into its wire form, the bytes of [`EncryptedUpdate::to_bytes`]. Returns them and how many
    /// values were clipped to ±clip. The same as [`Self::prepare`] then
    /// [`PreparedEncryption::seal`].
    pub fn encrypt_to_bytes(&self, values: &[f32]) -> Result<(Vec<u8>, u64), CryptoError> {
        self.prepare(values.len() as u64)?.seal(values)
    }

    /// [`Self::encrypt_to_bytes`], decoded.
    pub fn encrypt(&self, values: &[f32]) -> Result<(EncryptedUpdate, u64), CryptoError> {
        let (bytes, clipped) = self.encrypt_to_bytes(values)?;
        Ok((EncryptedUpdate::from_bytes(&bytes, bytes.len())?, clipped))
    }

    /// Draws the encryption of zero for an update of `length` values: every ring product and
    /// all the noise, which is nearly all of encryption's work. A participant does this while
    /// its update is still being trained; sealing it with the values is then a pass of
    /// additions and one hash.
    pub fn prepare(&self, length: u64) -> Result<PreparedEncryption, CryptoError> {
        if length == 0 {
            return Err(CryptoError::LengthMismatch {
                expected: 1,
                got: 0,
            });
        }
        let p = self.params.profile.params();
        // Sealing adds m_j to the rounded body, exact only while Δ is a multiple of the
        // rounding step; `SessionParams` never breaks this, a hand-made one is refused.
        if self.params.plaintext_bits > p.body_keep_bits {
            return Err(CryptoError::InvalidParams(format!(
                "{} plaintext bits do not fit the {} body bits kept on the wire",
                self.params.plaintext_bits, p.body_keep_bits
            )));
        }
        let values = usize::try_from(length)
            .map_err(|_| CryptoError::InvalidParams(format!("{length} values do not fit")))?;
        let chunks = p.chunks(length);
        // The update's fields before its chunks, as bincode writes them (a struct is its
        // fields in order; the chunk vector's length is a u64).
        let head =
            wire::payload_bytes(&(self.params.profile, self.tag, self.key_id, length, chunks));
        let full = ChunkLayout::new(p, p.chunk_values()).len();
        let last = values - (chunks as usize - 1) * p.chunk_values();
        let payload = head.len() + (chunks as usize - 1) * full + ChunkLayout::new(p, last).len();
        let seed = os_seed();
        let mut frame = wire::frame_unsealed(Kind::EncryptedUpdate, payload);
        let (fields, chunks) = wire::frame_payload_mut(&mut frame).split_at_mut(head.len());
        fields.copy_from_slice(&head);
        typed!(&self.core, core => core.encrypt_zero_into(values, &seed, chunks));
        Ok(PreparedEncryption {
            params: self.params.clone(),
            key_id: self.key_id,
            length,
            head: head.len(),
            seed,
            frame: Zeroizing::new(frame),
        })
    }
}

/// An update's encryption of zero under a collective key, drawn before the update exists
/// ([`CollectivePublicKey::prepare`]). Secret until sealed: its bodies minus the sent
/// ciphertext's would give the message away, so it is wiped when dropped, never cloned, and
/// [`Self::seal`] consumes it (its randomness serves exactly one update).
pub struct PreparedEncryption {
    params: SessionParams,
    key_id: KeyId,
    length: u64,
    /// Bytes of the update's fields before its chunks, in the payload.
    head: usize,
    /// Also keys the stochastic rounding of the values.
    seed: Zeroizing<[u8; 32]>,
    /// The wire message with m = 0 and no digest yet.
    frame: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for PreparedEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedEncryption")
            .field("profile", &self.params.profile)
            .field("key_id", &self.key_id)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl PreparedEncryption {
    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Adds the encoded `values` and writes the digest: the update's wire form, exactly what
    /// [`CollectivePublicKey::encrypt_to_bytes`] makes from the same randomness. Returns it and
    /// how many values were clipped to ±clip.
    pub fn seal(mut self, values: &[f32]) -> Result<(Vec<u8>, u64), CryptoError> {
        if values.len() as u64 != self.length {
            return Err(CryptoError::LengthMismatch {
                expected: self.length,
                got: values.len() as u64,
            });
        }
        let chunks = &mut wire::frame_payload_mut(&mut self.frame)[self.head..];
        let clipped = match self.params.profile {
            Profile::Secure => seal_chunks::<u128>(&self.params, values, &self.seed, chunks),
            Profile::Fast => seal_chunks::<u64>(&self.params, values, &self.seed, chunks),
        }?;
        wire::seal_frame(&mut self.frame);
        // Sealed, it is the public ciphertext: no longer wiped.
        Ok((std::mem::take(&mut *self.frame), clipped))
    }
}

/// One ciphertext chunk: up to L·N values sharing one mask polynomial, rounded for the wire.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedChunk {
    pub index: u32,
    pub count: u32,
    #[serde(with = "serde_bytes")]
    pub mask: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl fmt::Debug for EncryptedChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptedChunk(#{}, {} values)", self.index, self.count)
    }
}

impl EncryptedChunk {
    /// Checks the chunk's shape for `profile`, as chunk `index` of an update of `length`.
    pub fn validate(&self, profile: Profile, index: usize, length: u64) -> Result<(), CryptoError> {
        self.view().validate(profile, index, length)
    }

    fn view(&self) -> EncryptedChunkRef<'_> {
        EncryptedChunkRef {
            index: self.index,
            count: self.count,
            mask: &self.mask,
            body: &self.body,
        }
    }
}

impl EncryptedChunkRef<'_> {
    /// Checks the chunk's shape for `profile`, as chunk `index` of an update of `length`.
    pub fn validate(&self, profile: Profile, index: usize, length: u64) -> Result<(), CryptoError> {
        let p = profile.params();
        let n = p.chunk_values() as u64;
        let expected_count = (length - index as u64 * n).min(n);
        let bad = |reason: String| {
            Err(CryptoError::Malformed {
                what: "ciphertext chunk",
                reason,
            })
        };
        if self.index as usize != index {
            return bad(format!("chunk {} found at position {index}", self.index));
        }
        if self.count as u64 != expected_count {
            return bad(format!(
                "chunk {index} holds {} values, expected {expected_count}",
                self.count
            ));
        }
        let mask_len = p.ring_dim * codec::packed_width(p.mask_keep_bits);
        if self.mask.len() != mask_len {
            return bad(format!(
                "chunk {index} mask is {} bytes, expected {mask_len}",
                self.mask.len()
            ));
        }
        let body_len = self.count as usize * codec::packed_width(p.body_keep_bits);
        if self.body.len() != body_len {
            return bad(format!(
                "chunk {index} body is {} bytes, expected {body_len}",
                self.body.len()
            ));
        }
        Ok(())
    }
}

/// A participant's encrypted update, bound to a session and a collective key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedUpdate {
    pub profile: Profile,
    pub tag: SessionTag,
    pub key_id: KeyId,
    pub length: u64,
    pub chunks: Vec<EncryptedChunk>,
}

impl fmt::Debug for EncryptedUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedUpdate")
            .field("profile", &self.profile)
            .field("key_id", &self.key_id)
            .field("length", &self.length)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl EncryptedUpdate {
    /// Checks every chunk's shape; says which is wrong.
    pub fn validate(&self) -> Result<(), CryptoError> {
        self.view().validate()
    }

    /// The update as borrowed slices, the form the accumulator reads.
    pub fn view(&self) -> EncryptedUpdateRef<'_> {
        EncryptedUpdateRef {
            profile: self.profile,
            tag: self.tag,
            key_id: self.key_id,
            length: self.length,
            chunks: self.chunks.iter().map(EncryptedChunk::view).collect(),
        }
    }

    /// Payload bytes (masks and bodies), the figure behind "bytes per parameter".
    pub fn payload_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.mask.len() + c.body.len())
            .sum()
    }
}

/// An encrypted update read in place from its wire form (`serde` borrows the masks and bodies
/// from the message): the coordinator checks and sums megabytes of ciphertext without copying
/// them out. Same encoding as [`EncryptedUpdate`].
#[derive(Deserialize)]
pub struct EncryptedUpdateRef<'a> {
    pub profile: Profile,
    pub tag: SessionTag,
    pub key_id: KeyId,
    pub length: u64,
    #[serde(borrow)]
    pub chunks: Vec<EncryptedChunkRef<'a>>,
}

/// One chunk of an [`EncryptedUpdateRef`].
#[derive(Deserialize)]
pub struct EncryptedChunkRef<'a> {
    pub index: u32,
    pub count: u32,
    pub mask: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> EncryptedUpdateRef<'a> {
    /// Decodes and shape-checks an update of at most `max_len` bytes, borrowing from `bytes`.
    pub fn from_bytes(bytes: &'a [u8], max_len: usize) -> Result<Self, CryptoError> {
        let update: Self = wire::decode_borrowed(Kind::EncryptedUpdate, bytes, max_len, true)?;
        update.validate()?;
        Ok(update)
    }

    /// [`Self::from_bytes`] without checking the envelope's digest again: for bytes that
    /// passed it already and have been held in memory since.
    pub(crate) fn from_checked_bytes(bytes: &'a [u8]) -> Result<Self, CryptoError> {
        let update: Self = wire::decode_borrowed(Kind::EncryptedUpdate, bytes, bytes.len(), false)?;
        update.validate()?;
        Ok(update)
    }

    /// Checks every chunk's shape; says which is wrong.
    pub fn validate(&self) -> Result<(), CryptoError> {
        let expected_chunks = self.profile.params().chunks(self.length);
        if self.length == 0 || self.chunks.len() as u64 != expected_chunks {
            return Err(CryptoError::Malformed {
                what: "encrypted update",
                reason: format!(
                    "{} chunks for {} values, expected {expected_chunks}",
                    self.chunks.len(),
                    self.length
                ),
            });
        }
        for (i, c) in self.chunks.iter().enumerate() {
            c.validate(self.profile, i, self.length)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tfhe::core_crypto::algorithms::slice_algorithms::slice_semi_reverse_negacyclic_convolution;

    /// Each slot's public body is what tfhe's seeded compact public-key generation computes,
    /// `a ⊛ s_l` (tfhe's semi-reverse convolution) plus noise within TUniform's support.
    fn shares_are_tfhe_public_keys<T: ProfileTorus>(slots: &[usize]) {
        let params = SessionParams::recommended(T::PROFILE, 4, 2, 8.0).unwrap();
        let tag = SessionTag::derive("keygen-check");
        let (share, public) = SecretKeyShare::generate(&params, tag, 1).unwrap();
        let n = T::ring().n();
        let body = torus_from_bytes::<T>(&public.body, "test").unwrap();
        let bits = share.secret_bits_for_tests();
        let a = crs_mask::<T>(&params, &tag);
        let bound = 1u128 << T::PROFILE.params().noise_log2;
        for &l in slots {
            let s: Vec<T> = bits[l * n..(l + 1) * n]
                .iter()
                .map(|&b| T::from_u128(b))
                .collect();
            let mut exact = vec![T::ZERO; n];
            slice_semi_reverse_negacyclic_convolution(&mut exact, &a, &s);
            for (j, (&b, &e)) in body[l * n..(l + 1) * n].iter().zip(&exact).enumerate() {
                let noise = b.wrapping_sub(e);
                let magnitude = noise.to_u128().min(noise.wrapping_neg().to_u128());
                assert!(
                    magnitude <= bound,
                    "slot {l}, coefficient {j}: noise {magnitude}"
                );
            }
        }
    }

    #[test]
    fn fast_shares_are_tfhe_public_keys() {
        shares_are_tfhe_public_keys::<u64>(&[0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn secure_shares_are_tfhe_public_keys() {
        shares_are_tfhe_public_keys::<u128>(&[0, 7]);
    }
}
