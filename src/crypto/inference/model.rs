//! The float model a node registers: dense layers with an activation each, validated once
//! and evaluated in the clear as the reference every encrypted result is checked against.

use serde::{Deserialize, Serialize};

use super::InferenceError;

/// Largest layer width (inputs or outputs) a model may declare.
pub const MAX_WIDTH: usize = 1 << 16;
/// Largest number of layers.
pub const MAX_LAYERS: usize = 64;
/// Largest number of entries of a [`Activation::Table`].
pub const MAX_TABLE: usize = 1 << 12;

/// What a layer applies to its affine output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Activation {
    /// Identity: the layer is affine.
    #[default]
    None,
    /// `max(0, z)`.
    Relu,
    /// `1 / (1 + e^-z)`.
    Sigmoid,
    /// A custom lookup table: `z` is clamped to `[min, max]`, mapped to the nearest of
    /// `values.len()` evenly spaced points (`min` → `values[0]`, `max` → `values[last]`), and
    /// the value stored there is returned. Encrypted evaluation quantises `z` first and reads
    /// the same table, so any function of one variable can be expressed this way.
    Table {
        min: f32,
        max: f32,
        values: Vec<f32>,
    },
}

impl Activation {
    pub fn name(&self) -> &'static str {
        match self {
            Activation::None => "none",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Table { .. } => "table",
        }
    }

    /// The activation in double precision (the reference the encrypted paths are held to).
    pub fn apply(&self, z: f64) -> f64 {
        match self {
            Activation::None => z,
            Activation::Relu => z.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
            Activation::Table { min, max, values } => {
                let (lo, hi) = (*min as f64, *max as f64);
                let last = values.len().saturating_sub(1);
                let t = if hi > lo {
                    ((z.clamp(lo, hi) - lo) / (hi - lo) * last as f64).round()
                } else {
                    0.0
                };
                values
                    .get((t as usize).min(last))
                    .map_or(0.0, |&v| v as f64)
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        if let Activation::Table { min, max, values } = self {
            if !(min.is_finite() && max.is_finite() && min < max) {
                return Err(format!(
                    "table activation needs finite min < max, got [{min}, {max}]"
                ));
            }
            if values.len() < 2 || values.len() > MAX_TABLE {
                return Err(format!(
                    "table activation needs 2..={MAX_TABLE} values, got {}",
                    values.len()
                ));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(format!("table activation value {i} is not finite"));
            }
        }
        Ok(())
    }
}

/// One dense layer: `activation(weights · x + biases)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// `outputs × inputs`, row-major: `weights[j][i]` multiplies input `i` into output `j`.
    pub weights: Vec<Vec<f32>>,
    /// One per output.
    pub biases: Vec<f32>,
    #[serde(default)]
    pub activation: Activation,
}

impl Layer {
    pub fn inputs(&self) -> usize {
        self.weights.first().map_or(0, Vec::len)
    }
    pub fn outputs(&self) -> usize {
        self.weights.len()
    }
}

/// A feed-forward network of dense layers (a single affine layer is the seed's "linear model").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub layers: Vec<Layer>,
}

impl Model {
    /// One affine layer `w · x + b` (the original service's `{"weights", "biases"}` model).
    pub fn linear(weights: Vec<Vec<f32>>, biases: Vec<f32>) -> Self {
        Model {
            layers: vec![Layer {
                weights,
                biases,
                activation: Activation::None,
            }],
        }
    }

    pub fn inputs(&self) -> usize {
        self.layers.first().map_or(0, Layer::inputs)
    }

    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, Layer::outputs)
    }

    /// Refuses any shape the schemes cannot evaluate, naming the layer and what is wrong.
    pub fn validate(&self) -> Result<(), InferenceError> {
        if self.layers.is_empty() {
            return Err(InferenceError::InvalidModel(
                "the model has no layers".into(),
            ));
        }
        if self.layers.len() > MAX_LAYERS {
            return Err(InferenceError::InvalidModel(format!(
                "{} layers exceed the limit of {MAX_LAYERS}",
                self.layers.len()
            )));
        }
        let mut previous: Option<usize> = None;
        for (index, layer) in self.layers.iter().enumerate() {
            let bad = |reason: String| {
                Err(InferenceError::InvalidLayer {
                    layer: index,
                    reason,
                })
            };
            let outputs = layer.weights.len();
            if outputs == 0 {
                return bad("weights are empty (no output rows)".into());
            }
            let inputs = layer.weights[0].len();
            if inputs == 0 {
                return bad("weight row 0 is empty (no inputs)".into());
            }
            if outputs > MAX_WIDTH || inputs > MAX_WIDTH {
                return bad(format!(
                    "{outputs} × {inputs} weights exceed the width limit of {MAX_WIDTH}"
                ));
            }
            if let Some((r, row)) = layer
                .weights
                .iter()
                .enumerate()
                .find(|(_, row)| row.len() != inputs)
            {
                return bad(format!(
                    "ragged weights: row {r} has {} values, row 0 has {inputs}",
                    row.len()
                ));
            }
            if layer.biases.len() != outputs {
                return bad(format!(
                    "{} biases for {outputs} weight rows",
                    layer.biases.len()
                ));
            }
            if let Some(expected) = previous {
                if inputs != expected {
                    return bad(format!(
                        "takes {inputs} inputs but layer {} produces {expected} outputs",
                        index - 1
                    ));
                }
            }
            for (r, row) in layer.weights.iter().enumerate() {
                if let Some(c) = row.iter().position(|w| !w.is_finite()) {
                    return bad(format!("weight [{r}][{c}] is not finite"));
                }
            }
            if let Some(r) = layer.biases.iter().position(|b| !b.is_finite()) {
                return bad(format!("bias {r} is not finite"));
            }
            layer.activation.validate().or_else(bad)?;
            previous = Some(outputs);
        }
        Ok(())
    }

    /// The float reference, computed in double precision and returned as `f32`.
    pub fn eval_plain(&self, input: &[f32]) -> Result<Vec<f32>, InferenceError> {
        let x: Vec<f64> = input.iter().map(|&v| v as f64).collect();
        Ok(self
            .eval_plain_f64(&x)?
            .into_iter()
            .map(|v| v as f32)
            .collect())
    }

    /// [`Self::eval_plain`] without the final rounding to `f32`.
    pub fn eval_plain_f64(&self, input: &[f64]) -> Result<Vec<f64>, InferenceError> {
        self.validate()?;
        check_input(input, self.inputs())?;
        let mut x = input.to_vec();
        for layer in &self.layers {
            x = layer
                .weights
                .iter()
                .zip(&layer.biases)
                .map(|(row, &b)| {
                    let z = row
                        .iter()
                        .zip(&x)
                        .fold(b as f64, |acc, (&w, &v)| acc + w as f64 * v);
                    layer.activation.apply(z)
                })
                .collect();
        }
        Ok(x)
    }

    /// The model as one affine map `W·x + b` in double precision, when every activation is
    /// [`Activation::None`] (composed layer by layer); `None` otherwise.
    pub fn compose_affine(&self) -> Option<(Vec<Vec<f64>>, Vec<f64>)> {
        let first = self.layers.first()?;
        if self.layers.iter().any(|l| l.activation != Activation::None) {
            return None;
        }
        let mut w: Vec<Vec<f64>> = first
            .weights
            .iter()
            .map(|r| r.iter().map(|&v| v as f64).collect())
            .collect();
        let mut b: Vec<f64> = first.biases.iter().map(|&v| v as f64).collect();
        for layer in &self.layers[1..] {
            let n_in = w.first().map_or(0, Vec::len);
            let mut w2 = vec![vec![0f64; n_in]; layer.outputs()];
            let mut b2 = vec![0f64; layer.outputs()];
            for (j, row) in layer.weights.iter().enumerate() {
                b2[j] = layer.biases[j] as f64;
                for (k, &v) in row.iter().enumerate() {
                    let v = v as f64;
                    b2[j] += v * b[k];
                    for (dst, &src) in w2[j].iter_mut().zip(&w[k]) {
                        *dst += v * src;
                    }
                }
            }
            w = w2;
            b = b2;
        }
        Some((w, b))
    }

    /// Stable digest of the model (BLAKE3 over its bincode form): names a compiled model.
    pub fn digest(&self) -> [u8; 32] {
        let bytes = bincode::serialize(self).unwrap_or_default();
        let mut h = blake3::Hasher::new_derive_key("fhenode 2026 inference model v1");
        h.update(&bytes);
        *h.finalize().as_bytes()
    }
}

/// Refuses an input of the wrong length or with a NaN/∞, naming the first bad index.
pub(crate) fn check_input<T: Copy + Into<f64>>(
    input: &[T],
    expected: usize,
) -> Result<(), InferenceError> {
    if input.len() != expected {
        return Err(InferenceError::InputLength {
            expected,
            got: input.len(),
        });
    }
    if let Some(index) = input.iter().position(|&v| !v.into().is_finite()) {
        return Err(InferenceError::NonFinite { index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(w: Vec<Vec<f32>>, b: Vec<f32>, a: Activation) -> Layer {
        Layer {
            weights: w,
            biases: b,
            activation: a,
        }
    }

    #[test]
    fn seed_example_plain() {
        let m = Model::linear(vec![vec![0.1, 0.2, 0.3, 0.4]], vec![0.5]);
        let y = m.eval_plain(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((y[0] - 3.5).abs() < 1e-6);
    }

    #[test]
    fn bad_shapes_name_the_layer() {
        let ok = layer(vec![vec![1.0, 2.0]; 3], vec![0.0; 3], Activation::Relu);
        let cases: Vec<(Model, usize, &str)> = vec![
            (
                Model {
                    layers: vec![
                        ok.clone(),
                        layer(vec![vec![1.0, 2.0]], vec![0.0], Activation::None),
                    ],
                },
                1,
                "layer 0 produces 3",
            ),
            (
                Model {
                    layers: vec![layer(
                        vec![vec![1.0, 2.0], vec![1.0]],
                        vec![0.0; 2],
                        Activation::None,
                    )],
                },
                0,
                "ragged",
            ),
            (
                Model {
                    layers: vec![
                        ok.clone(),
                        layer(vec![vec![1.0; 3]], vec![0.0; 2], Activation::None),
                    ],
                },
                1,
                "2 biases for 1 weight rows",
            ),
            (
                Model {
                    layers: vec![layer(
                        vec![vec![1.0, f32::NAN]],
                        vec![0.0],
                        Activation::None,
                    )],
                },
                0,
                "weight [0][1] is not finite",
            ),
            (
                Model {
                    layers: vec![layer(
                        vec![vec![1.0]],
                        vec![f32::INFINITY],
                        Activation::None,
                    )],
                },
                0,
                "bias 0",
            ),
            (
                Model {
                    layers: vec![ok.clone(), layer(vec![], vec![], Activation::None)],
                },
                1,
                "empty",
            ),
            (
                Model {
                    layers: vec![layer(
                        vec![vec![1.0]],
                        vec![0.0],
                        Activation::Table {
                            min: 1.0,
                            max: 0.0,
                            values: vec![0.0, 1.0],
                        },
                    )],
                },
                0,
                "min < max",
            ),
        ];
        for (model, index, needle) in cases {
            let e = model.validate().unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, InferenceError::InvalidLayer { layer, .. } if layer == index),
                "{msg}"
            );
            assert!(msg.contains(needle), "{msg} lacks {needle:?}");
        }
        assert!(Model { layers: vec![] }
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no layers"));
    }

    #[test]
    fn composition_matches_layer_by_layer() {
        let m = Model {
            layers: vec![
                layer(
                    vec![vec![1.0, -2.0], vec![0.5, 0.25], vec![3.0, 1.0]],
                    vec![0.1, 0.2, 0.3],
                    Activation::None,
                ),
                layer(vec![vec![1.0, 1.0, -1.0]], vec![-0.5], Activation::None),
            ],
        };
        let (w, b) = m.compose_affine().unwrap();
        let x = [0.7f64, -1.3];
        let direct = m.eval_plain_f64(&x).unwrap()[0];
        let composed = w[0][0] * x[0] + w[0][1] * x[1] + b[0];
        assert!((direct - composed).abs() < 1e-12);
    }

    #[test]
    fn table_activation_reads_nearest_point() {
        let t = Activation::Table {
            min: -1.0,
            max: 1.0,
            values: vec![10.0, 20.0, 30.0],
        };
        assert_eq!(t.apply(-5.0), 10.0);
        assert_eq!(t.apply(0.1), 20.0);
        assert_eq!(t.apply(0.6), 30.0);
    }

    #[test]
    fn inputs_are_checked() {
        let m = Model::linear(vec![vec![1.0, 1.0]], vec![0.0]);
        assert!(matches!(
            m.eval_plain(&[1.0]),
            Err(InferenceError::InputLength {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            m.eval_plain(&[1.0, f32::NAN]),
            Err(InferenceError::NonFinite { index: 1 })
        ));
    }

    #[test]
    fn json_shape() {
        let json = r#"{"layers":[{"weights":[[0.1,0.2]],"biases":[0.5],"activation":{"kind":"relu"}},
                      {"weights":[[1.0]],"biases":[0.0]}]}"#;
        let m: Model = serde_json::from_str(json).unwrap();
        assert_eq!(m.layers[0].activation, Activation::Relu);
        assert_eq!(m.layers[1].activation, Activation::None);
        m.validate().unwrap();
    }
}
