//! Versioned wire envelope for everything the crypto layer sends or stores:
//!
//! ```text
//! "FHEN" | version: u8 | kind: u8 | bincode payload | BLAKE3(all previous bytes): 32 bytes
//! ```
//!
//! Decoding checks the size limit first, then magic, version, kind and digest, and only then
//! parses the payload with a byte limit equal to its length: a hostile length prefix fails
//! instead of allocating. Trailing bytes are refused. Each message is then shape-checked.

use super::CryptoError;

pub const MAGIC: [u8; 4] = *b"FHEN";
pub const VERSION: u8 = 1;
const HEADER: usize = 6;
const DIGEST: usize = 32;

/// What a message is; a message of one kind never decodes as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A key-additive encrypted update (`crypto::kahe`). Kinds 1–7 were the committee-key
    /// scheme's messages, which no longer exist.
    Update = 8,
    /// A committee member's key release (`crypto::kahe`).
    KeyRelease = 9,
}

/// Frames an already serialised `payload` in the envelope. Shared by both message families
/// (this one and [`crate::crypto::inference::wire`]); the magic keeps them apart.
pub(crate) fn frame(magic: [u8; 4], version: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(magic, version, kind, payload.len(), |out| {
        out.extend_from_slice(payload)
    })
}

/// [`frame`] for a payload of `payload_len` bytes that `write` appends.
fn frame_with(
    magic: [u8; 4],
    version: u8,
    kind: u8,
    payload_len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload_len + DIGEST);
    out.extend_from_slice(&magic);
    out.push(version);
    out.push(kind);
    write(&mut out);
    let digest = blake3::hash(&out);
    out.extend_from_slice(digest.as_bytes());
    out
}

/// A frame for a payload of exactly `payload_len` zero bytes, without the digest: megabyte
/// messages built in parallel (encrypted updates) are written in place through
/// [`frame_payload_mut`], skipping a serialisation copy, and may still change there (a prepared
/// encryption gets its message later). [`seal_frame`] writes the digest once it is final.
pub(crate) fn frame_unsealed(kind: Kind, payload_len: usize) -> Vec<u8> {
    let mut out = vec![0u8; HEADER + payload_len + DIGEST];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = kind as u8;
    out
}

/// Writes the digest of a frame made by [`frame_unsealed`] over everything before it.
pub(crate) fn seal_frame(frame: &mut [u8]) {
    let end = frame.len() - DIGEST;
    let digest = blake3::hash(&frame[..end]);
    frame[end..].copy_from_slice(digest.as_bytes());
}

/// Size of a frame around a payload of `payload_len` bytes.
pub(crate) const fn framed_len(payload_len: usize) -> usize {
    HEADER + payload_len + DIGEST
}

/// Checks an envelope of `kind` and at most `max_len` bytes and returns its raw payload, for
/// messages laid out by hand.
pub(crate) fn unframe_kind(kind: Kind, bytes: &[u8], max_len: usize) -> Result<&[u8], CryptoError> {
    unframe(MAGIC, VERSION, "fhenode", kind as u8, bytes, max_len)
        .map_err(|m| CryptoError::Wire(format!("{kind:?}: {m}")))
}

/// The payload region of a frame made by [`frame_unsealed`].
pub(crate) fn frame_payload_mut(frame: &mut [u8]) -> &mut [u8] {
    let end = frame.len() - DIGEST;
    &mut frame[HEADER..end]
}

/// The digest an envelope ends with: BLAKE3 of everything before it, so it names the whole
/// message (checked when it is read). `None` for anything too short to be a message.
pub fn envelope_digest(bytes: &[u8]) -> Option<[u8; 32]> {
    let tail = bytes.len().checked_sub(DIGEST).filter(|&t| t >= HEADER)?;
    bytes[tail..].try_into().ok()
}

/// Checks an envelope of at most `max_len` bytes (size, magic, version, kind, digest, in that
/// order) and returns its payload; `family` names the message family in errors.
pub(crate) fn unframe<'a>(
    magic: [u8; 4],
    version: u8,
    family: &str,
    kind: u8,
    bytes: &'a [u8],
    max_len: usize,
) -> Result<&'a [u8], String> {
    if bytes.len() > max_len {
        return Err(format!(
            "{} bytes exceeds the limit of {max_len}",
            bytes.len()
        ));
    }
    if bytes.len() < HEADER + DIGEST {
        return Err(format!("truncated: {} bytes", bytes.len()));
    }
    if bytes[..4] != magic {
        return Err(format!("not an {family} message (bad magic)"));
    }
    if bytes[4] != version {
        return Err(format!(
            "unsupported version {} (this node speaks {version})",
            bytes[4]
        ));
    }
    if bytes[5] != kind {
        return Err(format!(
            "message kind {} where {kind} was expected",
            bytes[5]
        ));
    }
    let (body, digest) = bytes.split_at(bytes.len() - DIGEST);
    if blake3::hash(body).as_bytes() != digest {
        return Err("digest mismatch: the message was truncated or altered".into());
    }
    Ok(&body[HEADER..])
}

/// BLAKE3 digest of a message's wire bytes (e.g. to acknowledge a submission).
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}
