//! Aggregation: streaming wrapping addition of encrypted updates, the decryption request sent
//! to the committee, and combining partial decryptions into the decoded sum.

use std::collections::HashSet;
use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::codec::{self, decode_fixed, fixed_to_f64, pack_rounded};
use super::engine::ProfileTorus;
use super::keys::{
    CollectivePublicKey, EncryptedUpdate, EncryptedUpdateRef, KeyId, PkCore, SessionTag,
};
use super::params::{Profile, SessionParams};
use super::{typed, CryptoError, Typed};

#[derive(Clone)]
struct Sums<T> {
    /// One mask polynomial (N coefficients) per chunk.
    masks: Vec<T>,
    /// One body per value.
    bodies: Vec<T>,
}

impl<T: ProfileTorus> Sums<T> {
    fn new(length: usize) -> Self {
        let p = T::PROFILE.params();
        Sums {
            masks: vec![T::ZERO; p.chunks(length as u64) as usize * p.ring_dim],
            bodies: vec![T::ZERO; length],
        }
    }

    fn add(&mut self, update: &EncryptedUpdateRef<'_>) {
        let p = T::PROFILE.params();
        self.masks
            .par_chunks_mut(p.ring_dim)
            .zip(self.bodies.par_chunks_mut(p.chunk_values()))
            .zip(update.chunks.par_iter())
            .for_each(|((mask, body), chunk)| {
                codec::unpack_add_assign(chunk.mask, p.mask_keep_bits, mask);
                codec::unpack_add_assign(chunk.body, p.body_keep_bits, body);
            });
    }

    /// Subtracts ⌊K/2⌋ encryptions of zero with all-ones randomness: the binary randomness has
    /// mean 1/2, so without this the e·r noise term of a sum grows linearly in K, not as √K.
    fn centre(&mut self, pk: &PkCore<T>, contributors: usize) {
        let h = T::from_u128((contributors / 2) as u128);
        self.masks.par_chunks_mut(pk.ones_mask.len()).for_each(|m| {
            for (x, &o) in m.iter_mut().zip(&pk.ones_mask) {
                *x = x.wrapping_sub(o.wrapping_mul(h));
            }
        });
        self.bodies
            .par_chunks_mut(pk.ones_body_rev.len())
            .for_each(|b| {
                for (x, &o) in b.iter_mut().zip(&pk.ones_body_rev) {
                    *x = x.wrapping_sub(o.wrapping_mul(h));
                }
            });
    }
}

/// Streams encrypted updates into a running sum, in place. Each update is checked whole
/// before any of it is added, so a refused update changes nothing.
pub struct Accumulator {
    key: CollectivePublicKey,
    length: u64,
    contributors: Vec<String>,
    seen: HashSet<String>,
    sums: Typed<Sums<u128>, Sums<u64>>,
}

impl fmt::Debug for Accumulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accumulator")
            .field("key_id", &self.key.key_id())
            .field("length", &self.length)
            .field("contributors", &self.contributors.len())
            .finish()
    }
}

impl Accumulator {
    pub fn new(key: &CollectivePublicKey, length: u64) -> Result<Self, CryptoError> {
        if length == 0 || length > u32::MAX as u64 {
            return Err(CryptoError::InvalidParams(format!(
                "update length {length} is outside 1..={}",
                u32::MAX
            )));
        }
        let sums = match key.params().profile {
            Profile::Secure => Typed::Secure(Sums::new(length as usize)),
            Profile::Fast => Typed::Fast(Sums::new(length as usize)),
        };
        Ok(Accumulator {
            key: key.clone(),
            length,
            contributors: Vec::new(),
            seen: HashSet::new(),
            sums,
        })
    }

    /// Adds `contributor`'s update. Refuses a second update from the same contributor, more
    /// contributors than the session declared, and anything for another session, key, profile
    /// or length.
    pub fn add(&mut self, contributor: &str, update: &EncryptedUpdate) -> Result<(), CryptoError> {
        let update = update.view();
        check_belongs(&self.key, self.length, &update)?;
        update.validate()?;
        self.add_view(contributor, &update)
    }

    /// [`Self::add`] for an update checked on arrival, read in place from its wire bytes.
    pub fn add_checked(
        &mut self,
        contributor: &str,
        update: &CheckedUpdate,
    ) -> Result<(), CryptoError> {
        if update.key_id != self.key.key_id() {
            return Err(CryptoError::WrongKey {
                what: "encrypted update",
            });
        }
        if update.length != self.length {
            return Err(CryptoError::LengthMismatch {
                expected: self.length,
                got: update.length,
            });
        }
        let view = EncryptedUpdateRef::from_checked_bytes(&update.bytes)?;
        self.add_view(contributor, &view)
    }

    fn add_view(
        &mut self,
        contributor: &str,
        update: &EncryptedUpdateRef<'_>,
    ) -> Result<(), CryptoError> {
        if self.seen.contains(contributor) {
            return Err(CryptoError::DuplicateContributor(contributor.to_string()));
        }
        let params = self.key.params();
        if self.contributors.len() as u32 >= params.participants {
            return Err(CryptoError::InvalidParams(format!(
                "the session declared {} participants; no more updates fit its noise budget",
                params.participants
            )));
        }
        typed!(&mut self.sums, s => s.add(update));
        self.seen.insert(contributor.to_string());
        self.contributors.push(contributor.to_string());
        Ok(())
    }

    pub fn contributors(&self) -> &[String] {
        &self.contributors
    }

    /// Ends accumulation: applies the randomness centring and returns the aggregate (kept by
    /// the aggregator) and the request for the committee (the masks only).
    pub fn finish(mut self) -> Result<(Aggregate, DecryptionRequest), CryptoError> {
        if self.contributors.is_empty() {
            return Err(CryptoError::DecryptionRefused(
                "no contributions to aggregate".into(),
            ));
        }
        let k = self.contributors.len();
        match (&mut self.sums, &self.key.core) {
            (Typed::Secure(s), Typed::Secure(pk)) => s.centre(pk, k),
            (Typed::Fast(s), Typed::Fast(pk)) => s.centre(pk, k),
            _ => unreachable!("sums and key are built from the same profile"),
        }
        let params = self.key.params().clone();
        let mut mask = Vec::new();
        let keep = params.profile.params().mask_keep_bits;
        typed!(&self.sums, s => pack_rounded(&s.masks, keep, &mut mask));
        let request = DecryptionRequest {
            profile: params.profile,
            tag: self.key.tag(),
            key_id: self.key.key_id(),
            length: self.length,
            contributors: self.contributors.clone(),
            mask,
        };
        let bodies = match self.sums {
            Typed::Secure(s) => Typed::Secure(s.bodies),
            Typed::Fast(s) => Typed::Fast(s.bodies),
        };
        let aggregate = Aggregate {
            params,
            tag: self.key.tag(),
            key_id: self.key.key_id(),
            length: self.length,
            contributors: self.contributors,
            request_digest: request.digest(),
            bodies,
        };
        Ok((aggregate, request))
    }
}

/// Refuses an update made for another session, key, profile or length.
fn check_belongs(
    key: &CollectivePublicKey,
    length: u64,
    update: &EncryptedUpdateRef<'_>,
) -> Result<(), CryptoError> {
    let profile = key.params().profile;
    if update.profile != profile {
        return Err(CryptoError::ProfileMismatch {
            expected: profile,
            got: update.profile,
        });
    }
    if update.tag != key.tag() {
        return Err(CryptoError::WrongSession {
            what: "encrypted update",
        });
    }
    if update.key_id != key.key_id() {
        return Err(CryptoError::WrongKey {
            what: "encrypted update",
        });
    }
    if update.length != length {
        return Err(CryptoError::LengthMismatch {
            expected: length,
            got: update.length,
        });
    }
    Ok(())
}

/// An encrypted update's wire bytes, checked whole on arrival (envelope digest, session, key,
/// length, every chunk's shape). The coordinator keeps these rather than a decoded copy, and
/// [`Accumulator::add_checked`] reads them in place.
pub struct CheckedUpdate {
    bytes: Vec<u8>,
    key_id: KeyId,
    length: u64,
}

impl fmt::Debug for CheckedUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedUpdate")
            .field("key_id", &self.key_id)
            .field("length", &self.length)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl CheckedUpdate {
    /// Checks `bytes` (at most `max_len`) as an update of `length` values under `key`.
    pub fn check(
        bytes: Vec<u8>,
        max_len: usize,
        key: &CollectivePublicKey,
        length: u64,
    ) -> Result<Self, CryptoError> {
        check_belongs(
            key,
            length,
            &EncryptedUpdateRef::from_bytes(&bytes, max_len)?,
        )?;
        Ok(CheckedUpdate {
            bytes,
            key_id: key.key_id(),
            length,
        })
    }

    /// Size of the wire form.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }
}

/// What the committee receives: the aggregate's masks (rounded like ciphertexts) and who
/// contributed. Every partial decryption is bound to its digest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecryptionRequest {
    pub profile: Profile,
    pub tag: SessionTag,
    pub key_id: KeyId,
    pub length: u64,
    pub contributors: Vec<String>,
    #[serde(with = "serde_bytes")]
    pub mask: Vec<u8>,
}

impl fmt::Debug for DecryptionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptionRequest")
            .field("profile", &self.profile)
            .field("key_id", &self.key_id)
            .field("length", &self.length)
            .field("contributors", &self.contributors.len())
            .finish()
    }
}

impl DecryptionRequest {
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("fhenode 2026 decryption request v1");
        h.update(self.profile.name().as_bytes());
        h.update(&self.tag.0);
        h.update(&self.key_id.0);
        h.update(&self.length.to_le_bytes());
        h.update(&(self.contributors.len() as u64).to_le_bytes());
        for c in &self.contributors {
            h.update(&(c.len() as u64).to_le_bytes());
            h.update(c.as_bytes());
        }
        h.update(&self.mask);
        *h.finalize().as_bytes()
    }

    pub fn validate(&self) -> Result<(), CryptoError> {
        let p = self.profile.params();
        let chunks = p.chunks(self.length) as usize;
        let expected = chunks * p.ring_dim * codec::packed_width(p.mask_keep_bits);
        if self.length == 0 || self.mask.len() != expected {
            return Err(CryptoError::Malformed {
                what: "decryption request",
                reason: format!(
                    "mask is {} bytes for {} values, expected {expected}",
                    self.mask.len(),
                    self.length
                ),
            });
        }
        let unique: HashSet<&String> = self.contributors.iter().collect();
        if unique.len() != self.contributors.len() {
            return Err(CryptoError::Malformed {
                what: "decryption request",
                reason: "a contributor is listed twice".into(),
            });
        }
        Ok(())
    }
}

/// One member's share of the decryption, bound to the request it answers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDecryption {
    pub tag: SessionTag,
    pub key_id: KeyId,
    pub request_digest: [u8; 32],
    pub member: u32,
    pub keep_bits: u32,
    #[serde(with = "serde_bytes")]
    pub values: Vec<u8>,
}

impl fmt::Debug for PartialDecryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialDecryption")
            .field("member", &self.member)
            .field("key_id", &self.key_id)
            .field("bytes", &self.values.len())
            .finish()
    }
}

/// The aggregator's side of the aggregate: the bodies, which with every member's partial
/// decryption give the sum.
#[derive(Clone)]
pub struct Aggregate {
    params: SessionParams,
    tag: SessionTag,
    key_id: KeyId,
    length: u64,
    contributors: Vec<String>,
    request_digest: [u8; 32],
    bodies: Typed<Vec<u128>, Vec<u64>>,
}

impl fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregate")
            .field("key_id", &self.key_id)
            .field("length", &self.length)
            .field("contributors", &self.contributors.len())
            .finish()
    }
}

/// The decrypted, decoded sum of all contributions.
#[derive(Clone, Debug, PartialEq)]
pub struct DecryptedSum {
    pub contributors: u32,
    pub sum: Vec<f64>,
    /// Largest |error| of each sum value from fixed-point rounding.
    pub sum_error_bound: f64,
    /// Largest |error| of each mean value.
    pub mean_error_bound: f64,
}

impl DecryptedSum {
    pub fn mean(&self) -> Vec<f64> {
        let k = self.contributors.max(1) as f64;
        self.sum.iter().map(|s| s / k).collect()
    }
}

impl Aggregate {
    pub fn contributors(&self) -> &[String] {
        &self.contributors
    }
    #[cfg(test)]
    pub(crate) fn bodies_for_tests(&self) -> &Typed<Vec<u128>, Vec<u64>> {
        &self.bodies
    }

    pub fn request_digest(&self) -> [u8; 32] {
        self.request_digest
    }

    /// Combines one partial decryption from every committee member into the decoded sum.
    pub fn combine(&self, partials: &[PartialDecryption]) -> Result<DecryptedSum, CryptoError> {
        let committee = self.params.committee as usize;
        let budget = self.params.budget();
        let width = codec::packed_width(budget.partial_keep_bits);
        let mut seen = vec![false; committee];
        for p in partials {
            if p.tag != self.tag {
                return Err(CryptoError::WrongSession {
                    what: "partial decryption",
                });
            }
            if p.key_id != self.key_id {
                return Err(CryptoError::WrongKey {
                    what: "partial decryption",
                });
            }
            if p.request_digest != self.request_digest {
                return Err(CryptoError::Combine(format!(
                    "member {}'s partial answers another decryption request",
                    p.member
                )));
            }
            let m = p.member as usize;
            if m >= committee {
                return Err(CryptoError::Combine(format!(
                    "member {} is outside the committee of {committee}",
                    p.member
                )));
            }
            if std::mem::replace(&mut seen[m], true) {
                return Err(CryptoError::Combine(format!(
                    "two partials from member {m}"
                )));
            }
            if p.keep_bits != budget.partial_keep_bits
                || p.values.len() != self.length as usize * width
            {
                return Err(CryptoError::Malformed {
                    what: "partial decryption",
                    reason: format!(
                        "member {}: {} bytes at {} bits, expected {} at {}",
                        p.member,
                        p.values.len(),
                        p.keep_bits,
                        self.length as usize * width,
                        budget.partial_keep_bits
                    ),
                });
            }
        }
        let missing: Vec<usize> = (0..committee).filter(|&m| !seen[m]).collect();
        if !missing.is_empty() {
            return Err(CryptoError::Combine(format!(
                "partial decryptions missing from members {missing:?}"
            )));
        }
        let fixed = typed!(&self.bodies, b => self.decode(b, partials, budget.partial_keep_bits));
        // A sum outside what the contributors could have produced means a corrupt partial or
        // ciphertext: report it rather than return garbage.
        let k = self.contributors.len() as f64;
        let limit = k * (self.params.clip * 2f64.powi(self.params.frac_bits as i32) + 1.0);
        if let Some((i, v)) = fixed
            .iter()
            .enumerate()
            .find(|(_, v)| (**v as f64).abs() > limit)
        {
            return Err(CryptoError::Overflow(format!(
                "value {i} decodes to {v}, beyond the largest possible sum ({limit}): a partial \
                 decryption or ciphertext is corrupt"
            )));
        }
        Ok(DecryptedSum {
            contributors: self.contributors.len() as u32,
            sum: fixed
                .iter()
                .map(|&v| fixed_to_f64(&self.params, v))
                .collect(),
            sum_error_bound: self.params.sum_error_bound(self.contributors.len() as u32),
            mean_error_bound: self.params.mean_error_bound(),
        })
    }

    fn decode<T: ProfileTorus>(
        &self,
        bodies: &[T],
        partials: &[PartialDecryption],
        keep: u32,
    ) -> Vec<i64> {
        let mut phase = bodies.to_vec();
        let width = codec::packed_width(keep);
        for p in partials {
            phase
                .par_chunks_mut(4096)
                .zip(p.values.par_chunks(4096 * width))
                .for_each(|(ph, bytes)| {
                    let mut d = vec![T::ZERO; ph.len()];
                    codec::unpack_into(bytes, keep, &mut d);
                    for (x, y) in ph.iter_mut().zip(&d) {
                        *x = x.wrapping_sub(*y);
                    }
                });
        }
        phase
            .par_iter()
            .map(|&x| decode_fixed(&self.params, x))
            .collect()
    }
}
