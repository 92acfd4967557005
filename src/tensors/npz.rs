//! NumPy `.npz` archives (`numpy.savez`, `numpy.savez_compressed`): a zip of `.npy` files, one
//! per named array.

use std::io::{Cursor, Read};

use super::npy::parse_npy_owned;
use super::{malformed, Body, TensorError};

/// How a zip file (and so an `.npz`) begins.
pub const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The arrays of an `.npz` body, named as `numpy.savez` named them (the member name without
/// its `.npy`). The members may decompress to at most `max_bytes` in all: a small compressed
/// body cannot make the node hold more than a session's update can need.
pub fn parse_npz(body: &[u8], max_bytes: u64) -> Result<Body<'static>, TensorError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(body))
        .map_err(|e| malformed(format!("not a valid .npz (zip) file: {e}")))?;
    let mut tensors = Vec::with_capacity(archive.len());
    let mut budget = max_bytes;
    for i in 0..archive.len() {
        let mut member = archive
            .by_index(i)
            .map_err(|e| malformed(format!("the .npz member {i} cannot be read: {e}")))?;
        if member.is_dir() {
            continue;
        }
        let file_name = member
            .name()
            .map_err(|e| malformed(format!("the .npz member {i} has no usable name: {e}")))?
            .to_string();
        let Some(name) = file_name.strip_suffix(".npy") else {
            return Err(malformed(format!(
                "the .npz member `{file_name}` is not an .npy file"
            )));
        };
        let declared = member.size();
        if declared > budget {
            return Err(malformed(format!(
                "the .npz members decompress to more than the {max_bytes} bytes this session's \
                 update can need"
            )));
        }
        let mut file = Vec::with_capacity(declared as usize);
        (&mut member)
            .take(declared + 1)
            .read_to_end(&mut file)
            .map_err(|e| malformed(format!("the .npz member `{file_name}` is corrupt: {e}")))?;
        if file.len() as u64 != declared {
            return Err(malformed(format!(
                "the .npz member `{file_name}` does not hold the {declared} bytes it declares"
            )));
        }
        budget -= declared;
        tensors.push((name.to_string(), parse_npy_owned(file, name)?));
    }
    Ok(Body::Named(tensors))
}
