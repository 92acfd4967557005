//! safetensors files (what `safetensors.torch.save` and `safetensors.numpy.save` write): read
//! as update bodies, written for results.

use std::borrow::Cow;
use std::collections::HashMap;

use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};

use super::{malformed, Body, Dtype, Elements, Layout, Tensor, TensorError};

/// The named arrays of a safetensors body, their data borrowed from it.
pub fn parse_safetensors(body: &[u8]) -> Result<Body<'_>, TensorError> {
    let file = SafeTensors::deserialize(body)
        .map_err(|e| malformed(format!("not a valid safetensors file: {e}")))?;
    let mut tensors = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        let dtype = match view.dtype() {
            StDtype::F16 => Dtype::F16,
            StDtype::BF16 => Dtype::BF16,
            StDtype::F32 => Dtype::F32,
            StDtype::F64 => Dtype::F64,
            StDtype::BOOL => Dtype::Bool,
            StDtype::I8 => Dtype::Int {
                bytes: 1,
                signed: true,
            },
            StDtype::I16 => Dtype::Int {
                bytes: 2,
                signed: true,
            },
            StDtype::I32 => Dtype::Int {
                bytes: 4,
                signed: true,
            },
            StDtype::I64 => Dtype::Int {
                bytes: 8,
                signed: true,
            },
            StDtype::U8 => Dtype::Int {
                bytes: 1,
                signed: false,
            },
            StDtype::U16 => Dtype::Int {
                bytes: 2,
                signed: false,
            },
            StDtype::U32 => Dtype::Int {
                bytes: 4,
                signed: false,
            },
            StDtype::U64 => Dtype::Int {
                bytes: 8,
                signed: false,
            },
            other => {
                return Err(TensorError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        tensors.push((
            name.to_string(),
            Tensor {
                shape: view.shape().iter().map(|&d| d as u64).collect(),
                elements: Elements::Bytes {
                    dtype,
                    big_endian: false,
                    data: Cow::Borrowed(view.data()),
                },
            },
        ));
    }
    Ok(Body::Named(tensors))
}

/// One `f64` tensor to write.
struct F64Tensor<'v> {
    shape: Vec<usize>,
    values: &'v [f64],
}

impl View for F64Tensor<'_> {
    fn dtype(&self) -> StDtype {
        StDtype::F64
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.values.len() * 8
    }
}

/// `values` (a session's flat vector) as a safetensors file of `f64` tensors named and shaped
/// by `layout`, with `metadata` in its `__metadata__`.
pub fn write_safetensors(
    layout: &Layout,
    values: &[f64],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, TensorError> {
    if values.len() != layout.length() {
        return Err(TensorError::Layout(format!(
            "{} values for a layout of {}",
            values.len(),
            layout.length()
        )));
    }
    let tensors = layout.split(values).map(|(name, shape, values)| {
        let shape = shape.iter().map(|&d| d as usize).collect();
        (name, F64Tensor { shape, values })
    });
    safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| malformed(format!("the result cannot be written as safetensors: {e}")))
}
