//! JSON updates and results: `{"values": [...]}` (or a bare array) for a flat update,
//! `{"tensors": {name: nested lists}}` for named ones, either with an optional `"weight"`; a
//! result's tensors as nested lists.

use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Body, Elements, Layout, Tensor, TensorError};

/// Deepest nesting of a JSON tensor (a tensor of this many dimensions is already unusual).
const MAX_JSON_DIMS: usize = 32;

/// Refuses a JSON body holding more than `max` numbers before it is parsed: parsed, each
/// number takes 8 bytes however short its text (`0,` is two), so a body of small numbers would
/// cost four times its own size, and many times the update it claims to be.
pub fn check_json_numbers(body: &[u8], max: u64) -> Result<(), TensorError> {
    let (mut count, mut in_string, mut escaped, mut in_number) = (0u64, false, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        let numeric = b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
        if numeric && !in_number {
            count += 1;
            if count > max {
                return Err(TensorError::Json(format!(
                    "the body holds more than {max} numbers, more than the update can take"
                )));
            }
        }
        in_number = numeric;
        in_string = b == b'"';
    }
    Ok(())
}

/// A JSON update body and the weight it carries, if any.
pub fn parse_json(body: &[u8]) -> Result<(Body<'static>, Option<f64>), TensorError> {
    let bare_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let bad_json = |e: serde_json::Error| TensorError::Json(e.to_string());
    if bare_array {
        let values: Vec<f64> = serde_json::from_slice(body).map_err(bad_json)?;
        return Ok((Body::Flat(Elements::Numbers(values)), None));
    }
    let update: JsonUpdate = serde_json::from_slice(body).map_err(bad_json)?;
    let body = match (update.values, update.tensors) {
        (Some(values), None) => Body::Flat(Elements::Numbers(values)),
        (None, Some(TensorMap(tensors))) => Body::Named(tensors),
        (Some(_), Some(_)) => {
            return Err(TensorError::Json(
                "give `values` or `tensors`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(TensorError::Json(
                "the update needs `values` or `tensors`".into(),
            ))
        }
    };
    Ok((body, update.weight))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonUpdate {
    values: Option<Vec<f64>>,
    tensors: Option<TensorMap>,
    weight: Option<f64>,
}

/// `{name: nested lists}`, in the order written.
struct TensorMap(Vec<(String, Tensor<'static>)>);

impl<'de> Deserialize<'de> for TensorMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = TensorMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of named tensors (nested lists of numbers)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TensorMap, A::Error> {
                let mut tensors = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let mut nested = Nested::default();
                    map.next_value_seed(Level {
                        nested: &mut nested,
                        depth: 0,
                    })?;
                    let shape = nested
                        .shape()
                        .map_err(|e| serde::de::Error::custom(format!("tensor `{name}`: {e}")))?;
                    tensors.push((
                        name,
                        Tensor {
                            shape,
                            elements: Elements::Numbers(nested.values),
                        },
                    ));
                }
                Ok(TensorMap(tensors))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

/// A nested list being read: the length seen at each depth, the depth of the numbers.
#[derive(Default)]
struct Nested {
    lengths: Vec<Option<u64>>,
    leaf_depth: Option<usize>,
    values: Vec<f64>,
}

impl Nested {
    /// The shape, once every list at one depth had one length and every number one depth.
    fn shape(&self) -> Result<Vec<u64>, String> {
        let depth = self.leaf_depth.unwrap_or(self.lengths.len());
        if self.lengths.len() != depth {
            return Err("lists and numbers are mixed at one depth".into());
        }
        self.lengths
            .iter()
            .map(|l| l.ok_or_else(|| "the lists are ragged".to_string()))
            .collect()
    }
}

/// One value of a nested list, at `depth`.
struct Level<'n> {
    nested: &'n mut Nested,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a list of them")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        match self.nested.leaf_depth {
            Some(d) if d != self.depth => Err(E::custom("the lists are ragged")),
            _ => {
                self.nested.leaf_depth = Some(self.depth);
                self.nested.values.push(v);
                Ok(())
            }
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        if self.depth >= MAX_JSON_DIMS {
            return Err(A::Error::custom(format!(
                "more than {MAX_JSON_DIMS} dimensions"
            )));
        }
        let mut count = 0u64;
        while seq
            .next_element_seed(Level {
                nested: &mut *self.nested,
                depth: self.depth + 1,
            })?
            .is_some()
        {
            count += 1;
        }
        let lengths = &mut self.nested.lengths;
        if lengths.len() <= self.depth {
            lengths.resize(self.depth + 1, None);
        }
        match lengths[self.depth] {
            None => lengths[self.depth] = Some(count),
            Some(n) if n != count => return Err(A::Error::custom("the lists are ragged")),
            Some(_) => {}
        }
        Ok(())
    }
}

/// A result's tensors as JSON: `{name: nested lists}` in name order (a 0-d tensor is a number).
pub struct NestedTensors<'a> {
    layout: &'a Layout,
    values: &'a [f64],
}

impl<'a> NestedTensors<'a> {
    /// `values` is the session's flat vector, as long as `layout`.
    pub fn new(layout: &'a Layout, values: &'a [f64]) -> Self {
        NestedTensors { layout, values }
    }
}

impl Serialize for NestedTensors<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, shape, values) in self.layout.split(self.values) {
            map.serialize_entry(name, &NestedList { shape, values })?;
        }
        map.end()
    }
}

struct NestedList<'v> {
    shape: &'v [u64],
    values: &'v [f64],
}

impl Serialize for NestedList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some((&outer, inner)) = self.shape.split_first() else {
            return serializer.serialize_f64(self.values.first().copied().unwrap_or(0.0));
        };
        let mut seq = serializer.serialize_seq(Some(outer as usize))?;
        let step = (self.values.len() / outer.max(1) as usize).max(1);
        for chunk in self.values.chunks(step).take(outer as usize) {
            seq.serialize_element(&NestedList {
                shape: inner,
                values: chunk,
            })?;
        }
        seq.end()
    }
}
