//! The coordinator's side: bodies summed as they arrive (wrapping, in the wire modulus), the
//! contributor set fixed at close, and the key releases subtracted to decode the sum.

use std::collections::BTreeSet;

use rayon::prelude::*;

use super::super::CryptoError;
use super::codec::{decode_field, read_field, with_field_width};
use super::wire::{parse_release, update_bodies};
use super::{ReleaseRequest, SessionContext};

/// Sums encrypted updates in place. A refused update changes nothing.
pub struct Accumulator {
    ctx: SessionContext,
    sums: Vec<u64>,
    contributors: BTreeSet<String>,
}

/// Values summed per parallel task.
const BLOCK: usize = 1 << 14;

/// `sums[i] += field i of bodies`, wrapping mod 2^bits.
fn add_fields(sums: &mut [u64], bodies: &[u8], width: usize, mask: u64, sign: Sign) {
    sums.par_chunks_mut(BLOCK)
        .zip(bodies.par_chunks(BLOCK * width))
        .for_each(|(s, b)| {
            with_field_width!(width, W => {
                for (j, x) in s.iter_mut().enumerate() {
                    let f = read_field::<W>(b, j);
                    *x = match sign {
                        Sign::Add => x.wrapping_add(f),
                        Sign::Subtract => x.wrapping_sub(f),
                    } & mask;
                }
            })
        });
}

#[derive(Clone, Copy)]
enum Sign {
    Add,
    Subtract,
}

impl Accumulator {
    pub fn new(ctx: &SessionContext) -> Self {
        Accumulator {
            ctx: ctx.clone(),
            sums: vec![0; ctx.length as usize],
            contributors: BTreeSet::new(),
        }
    }

    pub fn contributors(&self) -> usize {
        self.contributors.len()
    }

    /// Checks `bytes` (envelope, session, shape) and `contributor` (new, within the declared
    /// number of participants) before adding anything.
    pub fn add(&mut self, contributor: &str, bytes: &[u8]) -> Result<(), CryptoError> {
        let bodies = update_bodies(&self.ctx, bytes)?;
        if self.contributors.contains(contributor) {
            return Err(CryptoError::DuplicateContributor(contributor.to_string()));
        }
        if self.contributors.len() as u32 >= self.ctx.params.participants {
            return Err(CryptoError::InvalidParams(format!(
                "the session declared at most {} participants",
                self.ctx.params.participants
            )));
        }
        let p = &self.ctx.params;
        add_fields(
            &mut self.sums,
            bodies,
            p.wire_bytes(),
            mask(p.wire_bits),
            Sign::Add,
        );
        self.contributors.insert(contributor.to_string());
        Ok(())
    }

    /// Fixes the contributor set: what the committee is asked to release keys for.
    pub fn finish(self) -> Aggregate {
        Aggregate {
            ctx: self.ctx,
            sums: self.sums,
            contributors: self.contributors.into_iter().collect(),
        }
    }
}

fn mask(bits: u32) -> u64 {
    (1u64 << bits) - 1
}

/// The sum of the bodies of a fixed contributor set.
pub struct Aggregate {
    ctx: SessionContext,
    sums: Vec<u64>,
    contributors: Vec<String>,
}

/// A decrypted sum.
#[derive(Clone, Debug, PartialEq)]
pub struct DecryptedSum {
    pub contributors: Vec<String>,
    /// The sum of the contributors' fixed-point values, as floats.
    pub sum: Vec<f64>,
}

impl Aggregate {
    /// Contributors, sorted.
    pub fn contributors(&self) -> &[String] {
        &self.contributors
    }

    /// The request to send to the answering members under `assignment` (one member per set).
    pub fn request(&self, assignment: Vec<u32>) -> ReleaseRequest {
        ReleaseRequest {
            contributors: self.contributors.clone(),
            assignment,
        }
    }

    /// Subtracts the releases (each with the committee index of the member that sent it) from
    /// the sum and decodes the signed fixed-point sums (mod 2^w). Every set of the request's
    /// assignment must be covered by exactly the release of its assigned member; every release
    /// must be for this session and this contributor set, from a member with a set.
    pub fn combine_fixed(
        &self,
        request: &ReleaseRequest,
        releases: &[(u32, &[u8])],
    ) -> Result<Vec<i64>, CryptoError> {
        let p = &self.ctx.params;
        let phase = self.phase(request, releases)?;
        Ok(phase.par_iter().map(|&x| decode_field(p, x)).collect())
    }

    /// Σ bodies − Σ releases per value, in the wire modulus: Δ'·Σm plus the error.
    pub(crate) fn phase(
        &self,
        request: &ReleaseRequest,
        releases: &[(u32, &[u8])],
    ) -> Result<Vec<u64>, CryptoError> {
        let ctx = &self.ctx;
        let committee = ctx.committee();
        request.check(ctx)?;
        if request.contributors != self.contributors {
            return Err(CryptoError::Combine(
                "the request names another contributor set than the aggregate's".into(),
            ));
        }
        let digest = request.contributors_digest(ctx);
        let mut covered = vec![false; committee.sets().len()];
        let mut parsed = Vec::with_capacity(releases.len());
        for &(sender, bytes) in releases {
            let (header, bodies) = parse_release(ctx, bytes)?;
            if header.member != sender {
                return Err(CryptoError::Combine(format!(
                    "member {sender} sent a release made out as member {}'s",
                    header.member
                )));
            }
            if header.contributors_digest != digest {
                return Err(CryptoError::Combine(format!(
                    "member {}'s release is for another contributor set",
                    header.member
                )));
            }
            let expected = committee.assigned_to(&request.assignment, header.member)?;
            if expected.is_empty() || header.sets != expected {
                return Err(CryptoError::Combine(format!(
                    "member {} released sets {:?} where it was assigned {expected:?}",
                    header.member, header.sets
                )));
            }
            for &s in &header.sets {
                if std::mem::replace(&mut covered[s as usize], true) {
                    return Err(CryptoError::Combine(format!(
                        "set {s} is released twice (member {})",
                        header.member
                    )));
                }
            }
            parsed.push(bodies);
        }
        if let Some(missing) = covered.iter().position(|c| !c) {
            return Err(CryptoError::Combine(format!(
                "no release covers set {missing}"
            )));
        }
        let p = &ctx.params;
        let mut phase = self.sums.clone();
        for bodies in parsed {
            add_fields(
                &mut phase,
                bodies,
                p.wire_bytes(),
                mask(p.wire_bits),
                Sign::Subtract,
            );
        }
        Ok(phase)
    }

    /// [`Aggregate::combine_fixed`], checked against the contributors' clipped range and
    /// scaled to floats. An honest sum is at most K·⌈clip·2^f⌉ in magnitude (times the largest
    /// weight in a weighted sum): anything beyond is a corrupt body or release, reported rather
    /// than published.
    pub fn combine(
        &self,
        request: &ReleaseRequest,
        releases: &[(u32, &[u8])],
    ) -> Result<DecryptedSum, CryptoError> {
        let fixed = self.combine_fixed(request, releases)?;
        let p = &self.ctx.params;
        let k = self.contributors.len() as f64;
        let limit = (k * p.largest_encoded()) as i64;
        if let Some(index) = fixed.iter().position(|v| v.abs() > limit) {
            return Err(CryptoError::Overflow(format!(
                "value {index} decodes outside the clipped range of {} contributors: a body \
                 or a release is corrupt",
                self.contributors.len()
            )));
        }
        let scale = 1.0 / (1u64 << p.frac_bits) as f64;
        let sum = fixed.iter().map(|&v| v as f64 * scale).collect();
        Ok(DecryptedSum {
            contributors: self.contributors.clone(),
            sum,
        })
    }
}
