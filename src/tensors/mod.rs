//! Named tensors: the arrays of a model update (a `state_dict`) as files carry them, and their
//! place in a session's flat vector of values. Pure: bytes in, values out, no I/O.
//!
//! A session's `shapes` fix each tensor's name and shape; the flat vector is their
//! concatenation in name order (C order inside each tensor), which is what the secure
//! aggregation adds up. An update may come as named tensors (safetensors, `.npz`, JSON
//! `{"tensors": …}`), matched to the layout by name whatever their order in the file, or as
//! one flat array (JSON `values`, raw `f32`, `.npy`) of the whole length.

mod dtype;
mod json;
mod npy;
mod npz;
mod safetensors_file;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

pub use dtype::Dtype;
pub use json::{parse_json, NestedTensors};
pub use npy::{parse_npy, MAX_NPY_HEADER_BYTES, NPY_MAGIC};
pub use npz::{parse_npz, ZIP_MAGIC};
pub use safetensors_file::{parse_safetensors, write_safetensors};

/// Why an update body could not be read or does not fit its session.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TensorError {
    /// The body is not a well-formed file of its format.
    #[error("{0}")]
    Malformed(String),
    /// A format this node does not read.
    #[error("{0}")]
    UnsupportedFormat(String),
    /// An integer tensor in a session that does not include them.
    #[error(
        "tensor `{name}` has integer dtype {dtype}: integer buffers (e.g. batch-norm counters) \
         are not aggregated unless the session says `\"integers\": \"include\"`; leave it out of \
         the update and of the session's shapes"
    )]
    Integer { name: String, dtype: String },
    /// A dtype that is not a real number.
    #[error(
        "tensor `{name}` has dtype {dtype}, which is not supported; use float32, float64, \
         float16 or bfloat16"
    )]
    UnsupportedDtype { name: String, dtype: String },
    /// NaN, an infinity, or a number outside the `f32` range.
    #[error("{place} is {value}; values must be finite float32 numbers")]
    NotFinite { place: String, value: f64 },
    /// The tensors do not match the session's shapes.
    #[error("{0}")]
    Layout(String),
    /// A JSON body that is not JSON, or not of the update's shape.
    #[error("{0}")]
    Json(String),
}

fn malformed(message: impl Into<String>) -> TensorError {
    TensorError::Malformed(message.into())
}

/// How an update body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateFormat {
    /// `{"values": [...]}`, a bare array, or `{"tensors": {name: nested lists}}`.
    Json,
    /// Little-endian `f32`s (or an `.npy` or `.npz` file, recognised by its magic).
    Raw,
    /// A NumPy `.npy` file: one array.
    Npy,
    /// A NumPy `.npz` archive: named arrays.
    Npz,
    /// A safetensors file: named arrays.
    Safetensors,
}

/// Room in an update body for what is not values: file headers, tensor names and shapes.
const BODY_OVERHEAD_BYTES: u64 = 1 << 20;
/// Bytes a value may take in a JSON body: the longest `f64` Python or JavaScript writes
/// (`-1.2345678901234567e-300`, 24 characters), a separator and indentation.
const JSON_BYTES_PER_VALUE: u64 = 40;

impl UpdateFormat {
    /// The largest body of this format an update of `length` values can be: `f64` values for
    /// the binary forms, [`JSON_BYTES_PER_VALUE`] per value for JSON, and the overhead.
    /// Anything longer is refused unread, whatever it holds.
    pub fn max_body_bytes(self, length: u64) -> u64 {
        let per_value = match self {
            UpdateFormat::Json => JSON_BYTES_PER_VALUE,
            _ => 8,
        };
        length
            .saturating_mul(per_value)
            .saturating_add(BODY_OVERHEAD_BYTES)
    }

    /// The media type that names it.
    pub fn media_type(self) -> &'static str {
        match self {
            UpdateFormat::Json => "application/json",
            UpdateFormat::Raw => "application/octet-stream",
            UpdateFormat::Npy => "application/x-npy",
            UpdateFormat::Npz => "application/x-npz",
            UpdateFormat::Safetensors => "application/safetensors",
        }
    }

    /// The format a media type names (its parameters, such as `charset`, ignored).
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        let essence = media_type.split(';').next().unwrap_or("").trim();
        let format = match essence.to_ascii_lowercase().as_str() {
            "application/json" => UpdateFormat::Json,
            "application/octet-stream" => UpdateFormat::Raw,
            "application/x-npy" | "application/npy" => UpdateFormat::Npy,
            "application/x-npz" | "application/npz" | "application/zip" => UpdateFormat::Npz,
            "application/safetensors" | "application/x-safetensors" => UpdateFormat::Safetensors,
            _ => return None,
        };
        Some(format)
    }

    /// Every media type [`UpdateFormat::from_media_type`] reads, for error messages.
    pub const SUPPORTED: &'static str = "application/json, application/safetensors, \
        application/x-npz, application/x-npy or application/octet-stream (raw float32)";

    /// The file extension that suggests it (`.json`, `.npy`, `.npz`, `.safetensors`; anything
    /// else is raw `f32`).
    pub fn from_extension(extension: &str) -> Self {
        match extension.to_ascii_lowercase().as_str() {
            "json" => UpdateFormat::Json,
            "npy" => UpdateFormat::Npy,
            "npz" => UpdateFormat::Npz,
            "safetensors" => UpdateFormat::Safetensors,
            _ => UpdateFormat::Raw,
        }
    }
}

/// Reads an update body of `format`: its arrays, and the weight a JSON body carries. An `.npz`
/// may unpack to at most `max_unpacked_bytes`.
pub fn read_body(
    format: UpdateFormat,
    body: &[u8],
    max_unpacked_bytes: u64,
) -> Result<(Body<'_>, Option<f64>), TensorError> {
    let arrays = match format {
        UpdateFormat::Json => {
            json::check_json_numbers(body, max_unpacked_bytes / 8)?;
            return parse_json(body);
        }
        UpdateFormat::Raw if body.starts_with(NPY_MAGIC) => {
            Body::Flat(parse_npy(body, None)?.elements)
        }
        UpdateFormat::Raw if body.starts_with(ZIP_MAGIC) => parse_npz(body, max_unpacked_bytes)?,
        UpdateFormat::Raw => parse_raw_f32(body)?,
        UpdateFormat::Npy => Body::Flat(parse_npy(body, None)?.elements),
        UpdateFormat::Npz => parse_npz(body, max_unpacked_bytes)?,
        UpdateFormat::Safetensors => parse_safetensors(body)?,
    };
    Ok((arrays, None))
}

/// Little-endian `f32`s, 4 bytes each.
pub fn parse_raw_f32(body: &[u8]) -> Result<Body<'_>, TensorError> {
    if !body.len().is_multiple_of(4) {
        return Err(malformed(format!(
            "a raw float32 body must be a multiple of 4 bytes long; this one is {} bytes",
            body.len()
        )));
    }
    Ok(Body::Flat(Elements::Bytes {
        dtype: Dtype::F32,
        big_endian: false,
        data: Cow::Borrowed(body),
    }))
}

/// The elements of one array, as read from a body.
#[derive(Clone, Debug, PartialEq)]
pub enum Elements<'a> {
    /// Packed numbers of one dtype, as a file stores them.
    Bytes {
        dtype: Dtype,
        big_endian: bool,
        data: Cow<'a, [u8]>,
    },
    /// Numbers already parsed (JSON).
    Numbers(Vec<f64>),
}

impl Elements<'_> {
    /// How many elements it holds.
    pub fn len(&self) -> u64 {
        match self {
            Elements::Bytes { dtype, data, .. } => (data.len() / dtype.size()) as u64,
            Elements::Numbers(values) => values.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses integer elements, named as tensor `name`, unless `integers` includes them.
    fn refuse_integers(&self, name: &str, integers: IntegerPolicy) -> Result<(), TensorError> {
        match self {
            Elements::Bytes { dtype, .. }
                if dtype.is_integer() && integers == IntegerPolicy::Refuse =>
            {
                Err(TensorError::Integer {
                    name: name.to_string(),
                    dtype: dtype.name().to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Converts every element into `out` (exactly as long), refusing non-finite values, values
    /// outside the `f32` range and integers unless `integers` includes them. `name` names the
    /// tensor in errors (`None`: a flat update).
    fn convert_into(
        &self,
        name: Option<&str>,
        integers: IntegerPolicy,
        out: &mut [f32],
    ) -> Result<(), TensorError> {
        let place = |i: usize| match name {
            Some(name) => format!("tensor `{name}` value {i}"),
            None => format!("value {i}"),
        };
        let check = |i: usize, v: f64| -> Result<f32, TensorError> {
            let narrowed = v as f32;
            if narrowed.is_finite() {
                Ok(narrowed)
            } else {
                Err(TensorError::NotFinite {
                    place: place(i),
                    value: v,
                })
            }
        };
        match self {
            Elements::Numbers(values) => {
                for (i, (&v, o)) in values.iter().zip(out.iter_mut()).enumerate() {
                    *o = check(i, v)?;
                }
            }
            Elements::Bytes {
                dtype,
                big_endian,
                data,
            } => {
                self.refuse_integers(name.unwrap_or("values"), integers)?;
                let size = dtype.size();
                for (i, (bytes, o)) in data.chunks_exact(size).zip(out.iter_mut()).enumerate() {
                    *o = check(i, dtype.read(bytes, *big_endian))?;
                }
            }
        }
        Ok(())
    }
}

/// One named array read from a body.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<'a> {
    pub shape: Vec<u64>,
    pub elements: Elements<'a>,
}

/// An update body, read.
#[derive(Clone, Debug, PartialEq)]
pub enum Body<'a> {
    /// One array of the whole length (its shape, if any, ignored).
    Flat(Elements<'a>),
    /// Named arrays, in the order the file lists them.
    Named(Vec<(String, Tensor<'a>)>),
}

/// Whether integer tensors are aggregated (converted to floats) or refused by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum IntegerPolicy {
    #[default]
    Refuse,
    Include,
}

/// Elements in a tensor of `shape`, `None` on overflow.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// Where each named tensor lies in a session's flat vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// In name order, each with its range of the flat vector.
    tensors: Vec<(String, Vec<u64>, Range<usize>)>,
    length: usize,
    /// Whether the session named its tensors (else one tensor `values` of the whole length).
    named: bool,
}

/// The tensor name a session without `shapes` gives its one flat vector.
pub const FLAT_NAME: &str = "values";

impl Layout {
    /// The layout of a session with `shapes` (concatenated in name order), or of one flat
    /// vector of `length` values named [`FLAT_NAME`].
    pub fn new(shapes: Option<&BTreeMap<String, Vec<u64>>>, length: u64) -> Self {
        let Some(shapes) = shapes else {
            return Layout {
                tensors: vec![(FLAT_NAME.to_string(), vec![length], 0..length as usize)],
                length: length as usize,
                named: false,
            };
        };
        let mut at = 0usize;
        let tensors = shapes
            .iter()
            .map(|(name, shape)| {
                let n = element_count(shape).unwrap_or(0) as usize;
                let range = at..at + n;
                at += n;
                (name.clone(), shape.clone(), range)
            })
            .collect();
        Layout {
            tensors,
            length: at,
            named: true,
        }
    }

    /// Values in the flat vector.
    pub fn length(&self) -> usize {
        self.length
    }

    /// Whether the session named its tensors (`shapes`).
    pub fn is_named(&self) -> bool {
        self.named
    }

    /// Each tensor's name, shape and values, in name order.
    pub fn split<'v, T>(&self, values: &'v [T]) -> impl Iterator<Item = (&str, &[u64], &'v [T])> {
        self.tensors.iter().filter_map(move |(name, shape, range)| {
            values
                .get(range.clone())
                .map(|v| (name.as_str(), shape.as_slice(), v))
        })
    }

    /// The flat vector of an update body: named tensors put in their places (every one of the
    /// session's names exactly once, each of its shape), or a flat array of the whole length.
    pub fn flatten(
        &self,
        body: &Body<'_>,
        integers: IntegerPolicy,
    ) -> Result<Vec<f32>, TensorError> {
        let mut out = vec![0f32; self.length];
        match body {
            Body::Flat(elements) => {
                self.check_length(elements.len(), "the update")?;
                elements.convert_into(None, integers, &mut out)?;
            }
            Body::Named(tensors) if !self.named => {
                // A session without shapes takes one array of its length, whatever its name.
                let [(name, tensor)] = tensors.as_slice() else {
                    return Err(TensorError::Layout(format!(
                        "the session has no `shapes`: send one array of {} values, not {} tensors",
                        self.length,
                        tensors.len()
                    )));
                };
                self.check_length(tensor.elements.len(), &format!("tensor `{name}`"))?;
                tensor
                    .elements
                    .convert_into(Some(name), integers, &mut out)?;
            }
            Body::Named(tensors) => {
                let mut seen = vec![false; self.tensors.len()];
                for (name, tensor) in tensors {
                    let Ok(i) = self
                        .tensors
                        .binary_search_by(|(n, _, _)| n.as_str().cmp(name))
                    else {
                        // An integer buffer of a state_dict is named as what it is.
                        tensor.elements.refuse_integers(name, integers)?;
                        return Err(TensorError::Layout(format!(
                            "tensor `{name}` is not one of the session's tensors ({})",
                            self.names_listed()
                        )));
                    };
                    let (_, shape, range) = &self.tensors[i];
                    if std::mem::replace(&mut seen[i], true) {
                        return Err(TensorError::Layout(format!(
                            "tensor `{name}` is given twice"
                        )));
                    }
                    if &tensor.shape != shape {
                        return Err(TensorError::Layout(format!(
                            "tensor `{name}` has shape {:?}; the session expects {shape:?}",
                            tensor.shape
                        )));
                    }
                    if tensor.elements.len() != range.len() as u64 {
                        return Err(malformed(format!(
                            "tensor `{name}` of shape {shape:?} holds {} values",
                            tensor.elements.len()
                        )));
                    }
                    tensor
                        .elements
                        .convert_into(Some(name), integers, &mut out[range.clone()])?;
                }
                let missing: Vec<&str> = self
                    .tensors
                    .iter()
                    .zip(&seen)
                    .filter(|(_, seen)| !**seen)
                    .map(|((name, _, _), _)| name.as_str())
                    .collect();
                if !missing.is_empty() {
                    return Err(TensorError::Layout(format!(
                        "the update lacks tensor{} {}",
                        if missing.len() == 1 { "" } else { "s" },
                        listed(&missing)
                    )));
                }
            }
        }
        Ok(out)
    }

    fn check_length(&self, got: u64, what: &str) -> Result<(), TensorError> {
        if got == self.length as u64 {
            Ok(())
        } else {
            Err(TensorError::Layout(format!(
                "{what} holds {got} values; the session's length is {}",
                self.length
            )))
        }
    }

    fn names_listed(&self) -> String {
        let names: Vec<&str> = self.tensors.iter().map(|(n, _, _)| n.as_str()).collect();
        listed(&names)
    }
}

/// Up to 8 names, quoted, then how many more.
fn listed(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests;
