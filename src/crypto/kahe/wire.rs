//! Wire forms of encrypted updates and key releases: the crate's envelope (magic, version,
//! kind, payload, BLAKE3 digest) around a fixed little-endian header and the packed bodies,
//! written and read in place (megabytes; no serialisation copy).
//!
//! ```text
//! update:  plan digest 32 | profile u8 | wire bits u8 | length u64 | bodies: length × wire bytes
//! release: plan digest 32 | contributors digest 32 | member u32 | wire bits u8 | length u64 |
//!          set count u32 | set indices u32 × count | bodies: length × wire bytes
//! ```

use super::super::params::Profile;
use super::super::wire::{self as envelope, Kind};
use super::super::CryptoError;
use super::SessionContext;

pub(crate) const UPDATE_HEADER: usize = 32 + 1 + 1 + 8;
const RELEASE_FIXED: usize = 32 + 32 + 4 + 1 + 8 + 4;

fn profile_byte(p: Profile) -> u8 {
    match p {
        Profile::Secure => 0,
        Profile::Fast => 1,
    }
}

fn malformed(what: &'static str, reason: impl Into<String>) -> CryptoError {
    CryptoError::Malformed {
        what,
        reason: reason.into(),
    }
}

/// Total wire size of an update of the context's length.
pub fn update_len(ctx: &SessionContext) -> usize {
    envelope::framed_len(UPDATE_HEADER + ctx.body_bytes())
}

/// An unsealed update frame with its header written and zeroed bodies.
pub(crate) fn update_frame(ctx: &SessionContext) -> Vec<u8> {
    let mut frame = envelope::frame_unsealed(Kind::Update, UPDATE_HEADER + ctx.body_bytes());
    let payload = envelope::frame_payload_mut(&mut frame);
    payload[..32].copy_from_slice(&ctx.plan_digest);
    payload[32] = profile_byte(ctx.params.profile);
    payload[33] = ctx.params.wire_bits as u8;
    payload[34..42].copy_from_slice(&ctx.length.to_le_bytes());
    frame
}

/// The bodies of an update frame.
pub(crate) fn update_bodies_mut(frame: &mut [u8]) -> &mut [u8] {
    &mut envelope::frame_payload_mut(frame)[UPDATE_HEADER..]
}

/// Checks an update's envelope and header against the session and returns its bodies.
pub fn update_bodies<'a>(ctx: &SessionContext, bytes: &'a [u8]) -> Result<&'a [u8], CryptoError> {
    let payload = envelope::unframe_kind(Kind::Update, bytes, update_len(ctx))?;
    let what = "encrypted update";
    if payload.len() != UPDATE_HEADER + ctx.body_bytes() {
        return Err(malformed(
            what,
            format!(
                "{} payload bytes where a session of {} values has {}",
                payload.len(),
                ctx.length,
                UPDATE_HEADER + ctx.body_bytes()
            ),
        ));
    }
    if payload[..32] != ctx.plan_digest {
        return Err(CryptoError::WrongSession { what });
    }
    if payload[32] != profile_byte(ctx.params.profile) || payload[33] as u32 != ctx.params.wire_bits
    {
        return Err(malformed(
            what,
            "profile or wire width differs from the session's",
        ));
    }
    if payload[34..42] != ctx.length.to_le_bytes() {
        return Err(CryptoError::LengthMismatch {
            expected: ctx.length,
            got: u64::from_le_bytes(payload[34..42].try_into().unwrap_or_default()),
        });
    }
    Ok(&payload[UPDATE_HEADER..])
}

/// A key release's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseHeader {
    pub contributors_digest: [u8; 32],
    pub member: u32,
    /// Indices of the sets whose keys this release carries.
    pub sets: Vec<u32>,
}

/// Total wire size of a release carrying `sets` set indices.
pub fn release_len(ctx: &SessionContext, sets: usize) -> usize {
    envelope::framed_len(RELEASE_FIXED + 4 * sets + ctx.body_bytes())
}

/// An unsealed release frame with its header written; returns it and the bodies' offset.
pub(crate) fn release_frame(ctx: &SessionContext, header: &ReleaseHeader) -> (Vec<u8>, usize) {
    let sets = header.sets.len();
    let mut frame = envelope::frame_unsealed(
        Kind::KeyRelease,
        RELEASE_FIXED + 4 * sets + ctx.body_bytes(),
    );
    let p = envelope::frame_payload_mut(&mut frame);
    p[..32].copy_from_slice(&ctx.plan_digest);
    p[32..64].copy_from_slice(&header.contributors_digest);
    p[64..68].copy_from_slice(&header.member.to_le_bytes());
    p[68] = ctx.params.wire_bits as u8;
    p[69..77].copy_from_slice(&ctx.length.to_le_bytes());
    p[77..81].copy_from_slice(&(sets as u32).to_le_bytes());
    for (i, s) in header.sets.iter().enumerate() {
        p[81 + 4 * i..85 + 4 * i].copy_from_slice(&s.to_le_bytes());
    }
    (frame, RELEASE_FIXED + 4 * sets)
}

/// Checks a release's envelope and header against the session and returns both parts.
pub fn parse_release<'a>(
    ctx: &SessionContext,
    bytes: &'a [u8],
) -> Result<(ReleaseHeader, &'a [u8]), CryptoError> {
    let what = "key release";
    let max_sets = ctx.committee().sets().len();
    let payload = envelope::unframe_kind(Kind::KeyRelease, bytes, release_len(ctx, max_sets))?;
    if payload.len() < RELEASE_FIXED {
        return Err(malformed(what, "truncated header"));
    }
    if payload[..32] != ctx.plan_digest {
        return Err(CryptoError::WrongSession { what });
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]]);
    let member = u32_at(64);
    if payload[68] as u32 != ctx.params.wire_bits || payload[69..77] != ctx.length.to_le_bytes() {
        return Err(malformed(
            what,
            "wire width or length differs from the session's",
        ));
    }
    let count = u32_at(77) as usize;
    if count > max_sets || payload.len() != RELEASE_FIXED + 4 * count + ctx.body_bytes() {
        return Err(malformed(
            what,
            format!("{count} sets in {} payload bytes", payload.len()),
        ));
    }
    let sets = (0..count).map(|i| u32_at(RELEASE_FIXED + 4 * i)).collect();
    let mut contributors_digest = [0u8; 32];
    contributors_digest.copy_from_slice(&payload[32..64]);
    Ok((
        ReleaseHeader {
            contributors_digest,
            member,
            sets,
        },
        &payload[RELEASE_FIXED + 4 * count..],
    ))
}
