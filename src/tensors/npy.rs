//! NumPy `.npy` files (versions 1–3): one array of a plain dtype, C order (or Fortran order
//! where that lays the values out the same way).

use std::borrow::Cow;

use npyz::{DType, Endianness, NpyHeader, Order, TypeChar};

use super::{element_count, malformed, Dtype, Elements, Tensor, TensorError};

/// The NPY format's magic string.
pub const NPY_MAGIC: &[u8] = b"\x93NUMPY";
/// Largest NPY header accepted (numpy itself refuses headers over 10 000 bytes by default).
pub const MAX_NPY_HEADER_BYTES: usize = 16 * 1024;
/// Deepest bracket nesting accepted in an NPY header (a plain array's header has 1 or 2).
const MAX_NPY_HEADER_NESTING: usize = 16;

/// An NPY file's array, its data borrowed from `body`. `name` names it in errors (an `.npz`
/// member's name, or `None` for a body that is one `.npy` file).
pub fn parse_npy<'a>(body: &'a [u8], name: Option<&str>) -> Result<Tensor<'a>, TensorError> {
    let (shape, dtype, big_endian, data_at) = read_header(body, name)?;
    Ok(Tensor {
        shape,
        elements: Elements::Bytes {
            dtype,
            big_endian,
            data: Cow::Borrowed(&body[data_at..]),
        },
    })
}

/// An NPY file's array, owning its data (the header is cut off the front of `file`).
pub(super) fn parse_npy_owned(
    mut file: Vec<u8>,
    name: &str,
) -> Result<Tensor<'static>, TensorError> {
    let (shape, dtype, big_endian, data_at) = read_header(&file, Some(name))?;
    file.drain(..data_at);
    Ok(Tensor {
        shape,
        elements: Elements::Bytes {
            dtype,
            big_endian,
            data: Cow::Owned(file),
        },
    })
}

/// Shape, dtype, byte order and where the data begins; checks that the data is exactly as
/// long as the shape needs.
fn read_header(
    body: &[u8],
    name: Option<&str>,
) -> Result<(Vec<u64>, Dtype, bool, usize), TensorError> {
    let what = match name {
        Some(name) => format!("NPY file `{name}`"),
        None => "NPY file".to_string(),
    };
    // Check the pre-header here, so that a declared header length can never make us (or
    // npyz) allocate more than the body holds.
    if !body.starts_with(NPY_MAGIC) {
        return Err(malformed(format!(
            "not an {what}: the `\\x93NUMPY` magic is missing"
        )));
    }
    let truncated = || malformed(format!("the {what} is truncated"));
    let (len_at, len_bytes) = match body.get(6) {
        Some(1) => (8, 2),
        Some(2) | Some(3) => (8, 4),
        Some(v) => {
            return Err(malformed(format!(
                "{what}: format version {v} is not supported (1, 2 or 3)"
            )))
        }
        None => return Err(truncated()),
    };
    let header_len = match body.get(len_at..len_at + len_bytes) {
        Some(&[a, b]) => u16::from_le_bytes([a, b]) as usize,
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => return Err(truncated()),
    };
    if header_len > MAX_NPY_HEADER_BYTES {
        return Err(malformed(format!(
            "the {what}'s header is {header_len} bytes; at most {MAX_NPY_HEADER_BYTES} are accepted"
        )));
    }
    let data_at = len_at + len_bytes + header_len;
    let Some(header_text) = body.get(len_at + len_bytes..data_at) else {
        return Err(truncated());
    };
    if nesting_depth(header_text) > MAX_NPY_HEADER_NESTING {
        return Err(malformed(format!(
            "the {what}'s header is nested too deeply"
        )));
    }
    let header = NpyHeader::from_reader(&mut &body[..data_at])
        .map_err(|e| malformed(format!("the {what}'s header is invalid: {e}")))?;
    let npy_dtype = header.dtype();
    let unsupported = || TensorError::UnsupportedDtype {
        name: name.unwrap_or("values").to_string(),
        dtype: format!("{} (NumPy {})", kind_of(&npy_dtype), npy_dtype.descr()),
    };
    let DType::Plain(ts) = &npy_dtype else {
        return Err(unsupported());
    };
    let size = ts.size_field();
    let dtype = match ts.type_char() {
        TypeChar::Float => match size {
            2 => Dtype::F16,
            4 => Dtype::F32,
            8 => Dtype::F64,
            _ => return Err(unsupported()),
        },
        TypeChar::Int => Dtype::int(size, true).ok_or_else(unsupported)?,
        TypeChar::Uint => Dtype::int(size, false).ok_or_else(unsupported)?,
        TypeChar::Bool if size == 1 => Dtype::Bool,
        _ => return Err(unsupported()),
    };
    let big_endian = ts.endianness() == Endianness::Big;
    let shape = header.shape().to_vec();
    // Fortran order lays the values out differently unless at most one axis is longer than 1.
    if header.order() == Order::Fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(malformed(format!(
            "the {what}'s array of shape {shape:?} is in Fortran order; save a C-ordered array \
             (numpy.ascontiguousarray)"
        )));
    }
    let expected = element_count(&shape)
        .and_then(|n| n.checked_mul(dtype.size() as u64))
        .ok_or_else(|| malformed(format!("the {what}'s shape {shape:?} is too large")))?;
    let data_len = (body.len() - data_at) as u64;
    if expected != data_len {
        return Err(malformed(format!(
            "the {what}'s array of shape {shape:?} and dtype {} needs {expected} data bytes; \
             the file has {data_len}",
            npy_dtype.descr()
        )));
    }
    Ok((shape, dtype, big_endian, data_at))
}

/// "integer", "complex"…: what kind of number a refused dtype holds.
fn kind_of(dtype: &DType) -> &'static str {
    match dtype {
        DType::Plain(ts) => match ts.type_char() {
            TypeChar::Int | TypeChar::Uint => "integer",
            TypeChar::Complex => "complex",
            TypeChar::Float => "float",
            TypeChar::Bool => "bool",
            _ => "non-numeric",
        },
        _ => "structured",
    }
}

/// The deepest nesting of brackets in an NPY header's text.
fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in text {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}
