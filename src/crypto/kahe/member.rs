//! A committee member's answer to a decryption request: the keys of the sets assigned to it,
//! summed over the contributor set S, times every public polynomial: D_j = a·Σ_A Σ_{P∈S} r_{P,A}.
//! It releases key material for that one sum; it has no secret of its own.

use rayon::prelude::*;

use super::super::wire::seal_frame;
use super::super::CryptoError;
use super::codec::write_fields;
use super::participant::{expand_key, SeedBundle};
use super::ring::{self, add_assign, Switch};
use super::wire::{release_frame, ReleaseHeader};
use super::{ReleaseRequest, SessionContext};

/// Computes member `member`'s key release for `request`. `seeds(p)` gives the bundle this
/// member holds of contributor `p`. Refuses a request whose assignment gives this member a set
/// it does not hold or no set at all, and a contributor whose seeds it lacks. Deterministic:
/// the same request always gets the same bytes.
pub fn release<'a>(
    ctx: &SessionContext,
    member: u32,
    request: &ReleaseRequest,
    seeds: impl Fn(&str) -> Option<&'a SeedBundle>,
) -> Result<Vec<u8>, CryptoError> {
    let committee = ctx.committee();
    request.check(ctx)?;
    let mine = committee.assigned_to(&request.assignment, member)?;
    if mine.is_empty() {
        return Err(CryptoError::DecryptionRefused(format!(
            "no set is assigned to member {member}"
        )));
    }
    let bundles = request
        .contributors
        .iter()
        .map(|p| {
            let bundle = seeds(p).ok_or_else(|| {
                CryptoError::DecryptionRefused(format!(
                    "member {member} holds no seeds of contributor {p}"
                ))
            })?;
            bundle.check(committee, member)?;
            Ok(bundle)
        })
        .collect::<Result<Vec<_>, CryptoError>>()?;
    let n = ctx.ring_dim();
    // R̂ = Σ_{A mine} Σ_{P∈S} Expand(σ_{P,A}): the keys are summed first, so the update's
    // length costs one product per polynomial whatever the number of sets and contributors.
    let key = bundles
        .par_iter()
        .map(|bundle| {
            let mut sum = ring::scratch(n);
            let mut part = ring::scratch(n);
            for &set in &mine {
                // `check` above made the bundle hold every set this member holds.
                if let Some(seed) = bundle.seed(set) {
                    expand_key(seed, n, &mut part);
                    add_assign(&mut sum, &part);
                }
            }
            sum
        })
        .reduce(
            || ring::scratch(n),
            |mut a, b| {
                add_assign(&mut a, &b);
                a
            },
        );
    let header = ReleaseHeader {
        contributors_digest: request.contributors_digest(ctx),
        member,
        sets: mine,
    };
    let (mut frame, bodies_at) = release_frame(ctx, &header);
    let crs = ctx.crs_key();
    let width = ctx.params.wire_bytes();
    let switch = Switch::new(ctx.params.wire_bits);
    let payload = super::super::wire::frame_payload_mut(&mut frame);
    payload[bodies_at..]
        .par_chunks_mut(n * width)
        .enumerate()
        .for_each_init(
            || (ring::scratch(n), ring::scratch(n)),
            |(a, product), (i, out)| {
                super::public_poly(&crs, i as u64, a);
                ring::product_into(n, a, &key, product);
                for x in product.iter_mut() {
                    *x = switch.apply(*x);
                }
                write_fields(out, width, product);
            },
        );
    seal_frame(&mut frame);
    Ok(frame)
}
