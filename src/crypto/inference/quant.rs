//! Quantisation of a float network for the `mlp` scheme, in the manner of Concrete ML:
//! few-bit unsigned activations with per-neuron affine quantisers, small integer weights
//! with one scale per neuron, and accumulators that provably stay inside the shortint
//! message-and-carry space with the padding bit clear.
//!
//! For layer inputs `q_i ∈ [0, 2^b)` that stand for `lo_i + step_i·q_i`, neuron `j` computes
//! `z_j = Σ_i w_ji (lo_i + step_i q_i) + b_j = t_j·Σ_i k_ji q_i + c_j + (rounding)`, with
//! `u_ji = w_ji·step_i`, `k_ji = round(u_ji / t_j)` and `c_j = b_j + Σ_i w_ji lo_i`. The scale
//! `t_j` is the smallest for which `Σ_i |k_ji|·(2^b − 1) ≤ p − 1` (p = message × carry
//! modulus) and `‖k_j‖₂` is at most the 2-norm the tfhe parameter set was designed for; the
//! ciphertext then holds `acc_j = Σ_i k_ji q_i + offset_j ∈ [0, p)` where `offset_j` lifts the
//! most negative possible sum to 0. One programmable bootstrap per neuron reads a table over
//! those p values: activation, then requantisation to the next layer's `2^b` levels.
//!
//! The last layer is only decrypted, never bootstrapped, so only the decryption noise bounds
//! it: without activation it returns its accumulators, and when its inputs are bootstrap
//! outputs the previous tables encode them at Δ/2^r so that the accumulator may span
//! p·2^r levels (with ‖k‖₂ held below what decrypts at Δ/2^r: 13.4 σ of tfhe's own
//! bootstrap-noise formula with 25 % head-room, plus the result rounding); r is chosen for the
//! finest weights. With an activation its table outputs use p·2^r levels the same way.
//! [`QuantizedModel::eval_levels`] is the exact integer model the encrypted evaluation
//! reproduces.

use std::fmt;

use serde::{Deserialize, Serialize};
use tfhe::shortint::parameters::v1_8::V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_TUNIFORM_2M128;
use tfhe::shortint::parameters::{ClassicPBSParameters, PARAM_MESSAGE_2_CARRY_2_KS_PBS};

use super::model::{check_input, Activation, Model};
use super::InferenceError;

/// The shortint parameter set of an `mlp` context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MlpParams {
    /// `PARAM_MESSAGE_2_CARRY_2_KS_PBS` (= `V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`):
    /// 4-bit accumulators, N = 2048, designed 2-norm 5, p-fail 2^-129.6.
    #[serde(rename = "m2c2")]
    Message2Carry2,
    /// `V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_TUNIFORM_2M128`: 6-bit accumulators, N = 8192,
    /// designed 2-norm 9, p-fail 2^-129.
    #[serde(rename = "m3c3")]
    Message3Carry3,
}

impl MlpParams {
    pub const ALL: [MlpParams; 2] = [MlpParams::Message2Carry2, MlpParams::Message3Carry3];

    pub fn name(self) -> &'static str {
        match self {
            MlpParams::Message2Carry2 => "shortint-m2c2-ks-pbs-tuniform-2m128",
            MlpParams::Message3Carry3 => "shortint-m3c3-ks-pbs-tuniform-2m128",
        }
    }

    /// The tfhe parameter set.
    pub fn shortint(self) -> ClassicPBSParameters {
        match self {
            MlpParams::Message2Carry2 => PARAM_MESSAGE_2_CARRY_2_KS_PBS,
            MlpParams::Message3Carry3 => V1_8_PARAM_MESSAGE_3_CARRY_3_KS_PBS_TUNIFORM_2M128,
        }
    }

    /// p = message modulus × carry modulus: accumulators live in [0, p).
    pub fn modulus(self) -> u64 {
        let p = self.shortint();
        p.message_modulus.0 * p.carry_modulus.0
    }

    /// The largest ‖k‖₂ of a linear combination of fresh/bootstrapped ciphertexts the set
    /// was designed to bootstrap correctly (tfhe's "2-norm", its `max_noise_level`).
    pub fn max_norm2(self) -> f64 {
        match self {
            MlpParams::Message2Carry2 => 5.0,
            MlpParams::Message3Carry3 => 9.0,
        }
    }

    /// Dimension of the key inputs and outputs are encrypted under (k·N).
    pub fn lwe_dimension(self) -> usize {
        let p = self.shortint();
        p.glwe_dimension.0 * p.polynomial_size.0
    }

    /// LWE dimension n, GLWE dimension k and polynomial size N, as key-size factors.
    fn key_dimensions(self) -> (u64, u64, u64) {
        let p = self.shortint();
        (
            p.lwe_dimension.0 as u64,
            p.glwe_dimension.0 as u64,
            p.polynomial_size.0 as u64,
        )
    }

    /// Bytes of the compressed (seeded) evaluation key a client uploads: the bootstrapping
    /// key's bodies (n·(k+1)·l·N words) and key-switching key's bodies (k·N·l_ks words).
    /// m2c2: ≈ 30 MB; m3c3: ≈ 283 MB.
    pub fn evaluation_key_bytes(self) -> u64 {
        let p = self.shortint();
        let (n, k, big_n) = self.key_dimensions();
        let bsk = n * (k + 1) * p.pbs_level.0 as u64 * big_n;
        let ksk = k * big_n * p.ks_level.0 as u64;
        8 * (bsk + ksk)
    }

    /// Memory of the decompressed server key (Fourier bootstrapping key + full key-switching
    /// key), what a node must budget per cached context. m2c2: ≈ 120 MB; m3c3: ≈ 1.06 GB.
    pub fn server_key_bytes(self) -> u64 {
        let p = self.shortint();
        let (n, k, big_n) = self.key_dimensions();
        let fourier_bsk = n * (k + 1) * p.pbs_level.0 as u64 * (k + 1) * (big_n / 2) * 16;
        let ksk = k * big_n * p.ks_level.0 as u64 * (n + 1) * 8;
        fourier_bsk + ksk
    }

    /// Δ: where a value sits on the torus (one padding bit above the p levels).
    pub fn delta_log2(self) -> u32 {
        63 - self.modulus().trailing_zeros()
    }
}

impl fmt::Display for MlpParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Declared ranges of the model's inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRange {
    /// Every input lies in [min, max].
    Global { min: f32, max: f32 },
    /// Input i lies in ranges[i].
    PerFeature(Vec<(f32, f32)>),
}

/// How a network is quantised for the `mlp` scheme.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    pub params: MlpParams,
    /// Bits of each encrypted input (levels 0..2^bits).
    pub input_bits: u32,
    /// Bits of each hidden activation.
    pub activation_bits: u32,
    /// Input ranges; if absent, taken from the calibration samples. Values outside are
    /// clamped (saturated), as in Concrete ML.
    pub input_range: Option<InputRange>,
    /// Representative inputs: set the input ranges when none are declared, and narrow the
    /// hidden activations' ranges (which otherwise cover every reachable value).
    #[serde(default)]
    pub calibration: Vec<Vec<f32>>,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            params: MlpParams::Message2Carry2,
            input_bits: 2,
            activation_bits: 2,
            input_range: None,
            calibration: Vec::new(),
        }
    }
}

impl MlpConfig {
    pub fn with_range(params: MlpParams, min: f32, max: f32) -> Self {
        MlpConfig {
            params,
            input_range: Some(InputRange::Global { min, max }),
            ..Self::default()
        }
    }

    fn validate(&self, inputs: usize) -> Result<(), InferenceError> {
        let p_bits = self.params.modulus().trailing_zeros();
        for (name, b) in [
            ("input_bits", self.input_bits),
            ("activation_bits", self.activation_bits),
        ] {
            if b == 0 || b >= p_bits {
                return Err(InferenceError::InvalidConfig(format!(
                    "{name} = {b} must be in 1..={} for {}",
                    p_bits - 1,
                    self.params
                )));
            }
        }
        match &self.input_range {
            Some(InputRange::Global { min, max }) => check_range(*min, *max, None)?,
            Some(InputRange::PerFeature(r)) => {
                if r.len() != inputs {
                    return Err(InferenceError::InvalidConfig(format!(
                        "{} input ranges for {inputs} inputs",
                        r.len()
                    )));
                }
                for (i, &(lo, hi)) in r.iter().enumerate() {
                    check_range(lo, hi, Some(i))?;
                }
            }
            None if self.calibration.is_empty() => {
                return Err(InferenceError::InvalidConfig(
                    "the mlp scheme needs input_range or calibration samples".into(),
                ))
            }
            None => {}
        }
        for (s, sample) in self.calibration.iter().enumerate() {
            check_input(sample, inputs).map_err(|e| {
                InferenceError::InvalidConfig(format!("calibration sample {s}: {e}"))
            })?;
        }
        Ok(())
    }
}

fn check_range(lo: f32, hi: f32, index: Option<usize>) -> Result<(), InferenceError> {
    if lo.is_finite() && hi.is_finite() && lo < hi {
        Ok(())
    } else {
        Err(InferenceError::InvalidConfig(format!(
            "input range{} [{lo}, {hi}] must be finite with min < max",
            index.map(|i| format!(" {i}")).unwrap_or_default()
        )))
    }
}

/// `v ↦ clamp(round((v − lo)/step), 0, levels − 1)`, standing for `lo + step·q`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantizer {
    pub lo: f64,
    pub step: f64,
    pub levels: u64,
}

impl Quantizer {
    fn over(lo: f64, hi: f64, levels: u64) -> Self {
        let step = if hi > lo {
            (hi - lo) / (levels - 1) as f64
        } else {
            1.0
        };
        Quantizer { lo, step, levels }
    }

    pub fn quantize(&self, v: f64) -> u64 {
        let q = ((v - self.lo) / self.step).round();
        if q.is_nan() || q <= 0.0 {
            0
        } else {
            (q as u64).min(self.levels - 1)
        }
    }

    pub fn dequantize(&self, q: u64) -> f64 {
        self.lo + self.step * q as f64
    }

    pub(crate) fn validate(&self, max_levels: u64) -> Result<(), String> {
        if !(self.lo.is_finite() && self.step.is_finite() && self.step > 0.0) {
            return Err(format!("quantizer lo {} step {}", self.lo, self.step));
        }
        if !(2..=max_levels).contains(&self.levels) {
            return Err(format!("quantizer with {} levels", self.levels));
        }
        Ok(())
    }
}

/// How the client turns one decrypted output level into a float: `scale·(level − offset) + shift`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputDecode {
    pub scale: f64,
    pub offset: u64,
    pub shift: f64,
}

impl OutputDecode {
    pub fn decode(&self, level: u64) -> f64 {
        self.scale * (level as f64 - self.offset as f64) + self.shift
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.scale.is_finite() && self.shift.is_finite() && self.offset < 1 << 16 {
            Ok(())
        } else {
            Err(format!("output decode {self:?}"))
        }
    }
}

/// One neuron: integer weights, the offset that makes its accumulator non-negative, and the
/// affine map from accumulator to pre-activation `z = scale·(acc − offset) + shift`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QNeuron {
    pub(crate) weights: Vec<i64>,
    pub(crate) offset: u64,
    pub(crate) scale: f64,
    pub(crate) shift: f64,
}

/// One quantised layer. `tables` (one per neuron, p entries) when it bootstraps.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QLayer {
    pub(crate) neurons: Vec<QNeuron>,
    pub(crate) tables: Option<Vec<Vec<u64>>>,
    /// Quantizers of the table outputs (the next layer's inputs, or the model's outputs).
    pub(crate) out_quant: Vec<Quantizer>,
    /// log2 of the Δ the layer's inputs are encoded at.
    pub(crate) in_delta_log2: u32,
    /// log2 of the Δ its outputs are encoded at (the tables' encoding when it bootstraps;
    /// below the parameter set's Δ when the output is only decrypted, never bootstrapped).
    pub(crate) out_delta_log2: u32,
}

/// What a client needs to encrypt an input for a quantised model (public).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpInputSpec {
    pub params: MlpParams,
    pub quantizers: Vec<Quantizer>,
}

impl MlpInputSpec {
    pub(crate) fn validate(&self) -> Result<(), InferenceError> {
        let p = self.params.modulus();
        if self.quantizers.is_empty() || self.quantizers.len() > super::model::MAX_WIDTH {
            return Err(InferenceError::Malformed {
                what: "mlp input spec",
                reason: format!("{} inputs", self.quantizers.len()),
            });
        }
        for (i, q) in self.quantizers.iter().enumerate() {
            q.validate(p / 2).map_err(|r| InferenceError::Malformed {
                what: "mlp input spec",
                reason: format!("input {i}: {r}"),
            })?;
        }
        Ok(())
    }
}

/// A network quantised for the `mlp` scheme; deterministic in (model, config).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedModel {
    pub(crate) params: MlpParams,
    pub(crate) input_quant: Vec<Quantizer>,
    pub(crate) layers: Vec<QLayer>,
    pub(crate) digest: [u8; 32],
}

impl QuantizedModel {
    /// Quantises `model` (validated first) under `config`.
    pub fn compile(model: &Model, config: &MlpConfig) -> Result<Self, InferenceError> {
        model.validate()?;
        let n_in = model.inputs();
        config.validate(n_in)?;
        let p = config.params.modulus();
        let in_levels = 1u64 << config.input_bits;
        let act_levels = 1u64 << config.activation_bits;

        // Input quantizers: declared ranges, else calibration min/max.
        let ranges: Vec<(f64, f64)> = match &config.input_range {
            Some(InputRange::Global { min, max }) => vec![(*min as f64, *max as f64); n_in],
            Some(InputRange::PerFeature(r)) => {
                r.iter().map(|&(a, b)| (a as f64, b as f64)).collect()
            }
            None => (0..n_in)
                .map(|i| {
                    let (lo, hi) = config
                        .calibration
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
                            (lo.min(s[i] as f64), hi.max(s[i] as f64))
                        });
                    if hi > lo {
                        (lo, hi)
                    } else {
                        (lo - 0.5, lo + 0.5)
                    }
                })
                .collect(),
        };
        let input_quant: Vec<Quantizer> = ranges
            .iter()
            .map(|&(lo, hi)| Quantizer::over(lo, hi, in_levels))
            .collect();

        // Float activations of the calibration samples, per layer and neuron: (min, max).
        let calib: Vec<Vec<(f64, f64)>> = calibration_ranges(model, &config.calibration);

        let params = config.params;
        let delta = params.delta_log2();
        let mut layers: Vec<QLayer> = Vec::with_capacity(model.layers.len());
        let mut current = input_quant.clone();
        for (index, layer) in model.layers.iter().enumerate() {
            let last = index + 1 == model.layers.len();
            let q_max = current[0].levels - 1;
            let bootstraps = !last || layer.activation != Activation::None;
            let rows: Vec<(Vec<f64>, f64)> = layer
                .weights
                .iter()
                .zip(&layer.biases)
                .map(|(row, &bias)| {
                    let u = row
                        .iter()
                        .zip(&current)
                        .map(|(&w, q)| w as f64 * q.step)
                        .collect();
                    let c = bias as f64
                        + row
                            .iter()
                            .zip(&current)
                            .map(|(&w, q)| w as f64 * q.lo)
                            .sum::<f64>();
                    (u, c)
                })
                .collect();
            // A last layer without activation is only decrypted: when its inputs come out of
            // bootstraps it may use 2^r times the accumulator range with the previous tables
            // encoding at Δ/2^r, as long as the decryption noise allows (pick the r that gives
            // the finest weights). Every other layer feeds a bootstrap: p levels, tfhe's 2-norm.
            let widen = if !bootstraps && index > 0 {
                (0..=MAX_WIDEN)
                    .filter(|&r| decrypt_norm_limit(params, r) >= 1.0)
                    .map(|r| {
                        let budget = ((p << r) - 1) / q_max;
                        let limit = decrypt_norm_limit(params, r);
                        let worst = rows
                            .iter()
                            .map(|(u, _)| quantize_row(u, budget, limit).1)
                            .fold(0f64, f64::max);
                        (r, worst)
                    })
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map_or(0, |(r, _)| r)
            } else {
                0
            };
            let (budget, norm_limit) = if widen > 0 || (!bootstraps && index > 0) {
                (
                    ((p << widen) - 1) / q_max,
                    decrypt_norm_limit(params, widen),
                )
            } else {
                ((p - 1) / q_max, params.max_norm2())
            };
            if widen > 0 {
                if let Some(prev) = layers.last_mut() {
                    prev.out_delta_log2 = delta - widen;
                }
            }
            let in_delta_log2 = layers.last().map_or(delta, |l| l.out_delta_log2);
            let neurons: Vec<QNeuron> = rows
                .iter()
                .map(|(u, c)| {
                    let (k, t) = quantize_row(u, budget, norm_limit);
                    let offset = k
                        .iter()
                        .filter(|&&v| v < 0)
                        .map(|&v| v.unsigned_abs() * q_max)
                        .sum::<u64>();
                    QNeuron {
                        weights: k,
                        offset,
                        scale: t,
                        shift: *c,
                    }
                })
                .collect();
            // A bootstrapped last layer is decrypted too: its table outputs may use
            // p·2^r levels at Δ/2^r.
            let out_widen = if bootstraps && last {
                (0..=MAX_WIDEN)
                    .filter(|&r| decrypt_norm_limit(params, r) >= 1.0)
                    .max()
                    .unwrap_or(0)
            } else {
                0
            };
            let (tables, out_quant) = if bootstraps {
                let levels = if last { p << out_widen } else { act_levels };
                let mut tables = Vec::with_capacity(neurons.len());
                let mut quants = Vec::with_capacity(neurons.len());
                for (j, nrn) in neurons.iter().enumerate() {
                    let reach = reach(nrn, q_max);
                    let z = |a: u64| nrn.scale * (a as f64 - nrn.offset as f64) + nrn.shift;
                    let (mut lo, mut hi) = (0..=reach)
                        .map(|a| layer.activation.apply(z(a)))
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), y| {
                            (l.min(y), h.max(y))
                        });
                    if let Some(&(clo, chi)) = calib.get(index).and_then(|r| r.get(j)) {
                        if clo.max(lo) < chi.min(hi) {
                            lo = clo.max(lo);
                            hi = chi.min(hi);
                        }
                    }
                    let q = Quantizer::over(lo, hi, levels);
                    tables.push(
                        (0..p)
                            .map(|a| q.quantize(layer.activation.apply(z(a))))
                            .collect(),
                    );
                    quants.push(q);
                }
                (Some(tables), quants)
            } else {
                (None, Vec::new())
            };
            if !out_quant.is_empty() {
                current = out_quant.clone();
            }
            layers.push(QLayer {
                neurons,
                tables,
                out_quant,
                in_delta_log2,
                out_delta_log2: if bootstraps {
                    delta - out_widen
                } else {
                    in_delta_log2
                },
            });
        }
        Ok(QuantizedModel {
            params: config.params,
            input_quant,
            layers,
            digest: model.digest(),
        })
    }

    pub fn params(&self) -> MlpParams {
        self.params
    }

    pub fn inputs(&self) -> usize {
        self.input_quant.len()
    }

    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.neurons.len())
    }

    /// Digest of the float model this was compiled from.
    pub fn model_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// What the client encrypts against (publish this with the model).
    pub fn input_spec(&self) -> MlpInputSpec {
        MlpInputSpec {
            params: self.params,
            quantizers: self.input_quant.clone(),
        }
    }

    /// Programmable bootstraps one inference costs (one per bootstrapped neuron).
    pub fn pbs_count(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| l.tables.is_some())
            .map(|l| l.neurons.len())
            .sum()
    }

    /// How the client turns each output level into a float.
    pub fn output_decode(&self) -> Vec<OutputDecode> {
        let Some(last) = self.layers.last() else {
            return Vec::new();
        };
        if last.tables.is_some() {
            last.out_quant
                .iter()
                .map(|q| OutputDecode {
                    scale: q.step,
                    offset: 0,
                    shift: q.lo,
                })
                .collect()
        } else {
            last.neurons
                .iter()
                .map(|n| OutputDecode {
                    scale: n.scale,
                    offset: n.offset,
                    shift: n.shift,
                })
                .collect()
        }
    }

    /// log2 of the Δ the model's outputs are encoded at.
    pub(crate) fn output_delta_log2(&self) -> u32 {
        self.layers
            .last()
            .map_or(self.params.delta_log2(), |l| l.out_delta_log2)
    }

    /// The input levels a client encrypts.
    pub fn quantize_input(&self, input: &[f32]) -> Result<Vec<u64>, InferenceError> {
        check_input(input, self.inputs())?;
        Ok(input
            .iter()
            .zip(&self.input_quant)
            .map(|(&v, q)| q.quantize(v as f64))
            .collect())
    }

    /// The exact integer model: the output levels the encrypted evaluation decrypts to.
    pub fn eval_levels(&self, input: &[f32]) -> Result<Vec<u64>, InferenceError> {
        let mut q = self.quantize_input(input)?;
        for layer in &self.layers {
            let acc: Vec<u64> = layer
                .neurons
                .iter()
                .map(|n| {
                    let s = n
                        .weights
                        .iter()
                        .zip(&q)
                        .fold(n.offset as i64, |a, (&k, &x)| a + k * x as i64);
                    debug_assert!((0..1i64 << (63 - layer.in_delta_log2)).contains(&s));
                    s as u64
                })
                .collect();
            q = match &layer.tables {
                Some(t) => acc.iter().zip(t).map(|(&a, t)| t[a as usize]).collect(),
                None => acc,
            };
        }
        Ok(q)
    }

    /// The quantised model's outputs as floats (what the client gets after decoding).
    pub fn eval_plain(&self, input: &[f32]) -> Result<Vec<f64>, InferenceError> {
        let levels = self.eval_levels(input)?;
        Ok(levels
            .iter()
            .zip(self.output_decode())
            .map(|(&l, d)| d.decode(l))
            .collect())
    }
}

/// The most a last layer's range is widened (2^MAX_WIDEN × p levels).
const MAX_WIDEN: u32 = 6;

/// Bits kept of each result-mask coefficient of scheme `mlp` (`super::mlp`): here, where the
/// decryption budget counts their rounding, so that `mlp` imports this module and not the
/// other way round.
pub const MLP_RESULT_BITS: u32 = 32;

/// Decryption failure target for outputs that are decrypted but never bootstrapped: tfhe's
/// own 2^-128 criterion (13.4 σ of a Gaussian is beyond 2^-130).
const DECRYPT_SIGMAS: f64 = 13.4;

/// Head-room on tfhe's formula for the bootstrap output noise (measured within ~10% of it,
/// see `mlp_bootstrap_noise_matches_tfhe_formula`).
const FORMULA_MARGIN: f64 = 1.25;

/// Standard deviation (absolute, on the 2^64 torus) of the noise of a bootstrap's output,
/// from tfhe's own noise formula for its TUniform parameter sets (FFT error included).
pub(crate) fn pbs_output_std(params: MlpParams) -> f64 {
    use tfhe::core_crypto::commons::noise_formulas::lwe_programmable_bootstrap::pbs_variance_132_bits_security_tuniform_fft_mul;
    let p = params.shortint();
    let v = pbs_variance_132_bits_security_tuniform_fft_mul(
        p.lwe_dimension,
        p.glwe_dimension,
        p.polynomial_size,
        p.pbs_base_log,
        p.pbs_level,
        53.0,
        2f64.powi(64),
    );
    v.0.sqrt() * 2f64.powi(64)
}

/// Largest ‖k‖₂ of a combination of bootstrap outputs encoded at Δ/2^r that still decrypts
/// (noise and the result-mask rounding below Δ/2^(r+1), at [`DECRYPT_SIGMAS`]).
pub(crate) fn decrypt_norm_limit(params: MlpParams, r: u32) -> f64 {
    let n = params.lwe_dimension() as f64;
    let half = 2f64.powi(params.delta_log2() as i32 - r as i32 - 1);
    let rounding =
        super::rlwe::hoeffding(2f64.powi(64 - MLP_RESULT_BITS as i32), n.sqrt(), 128.0) + n;
    ((half - rounding) / (DECRYPT_SIGMAS * FORMULA_MARGIN * pbs_output_std(params))).max(0.0)
}

/// Largest accumulator a neuron can reach: Σ|k|·q_max.
fn reach(n: &QNeuron, q_max: u64) -> u64 {
    n.weights.iter().map(|k| k.unsigned_abs() * q_max).sum()
}

/// Integer weights for one neuron: the smallest scale t with Σ|round(u/t)| ≤ budget and
/// ‖round(u/t)‖₂ ≤ max_norm.
fn quantize_row(u: &[f64], budget: u64, max_norm: f64) -> (Vec<i64>, f64) {
    let l1: f64 = u.iter().map(|v| v.abs()).sum();
    if l1 == 0.0 || !l1.is_finite() {
        return (vec![0; u.len()], 1.0);
    }
    let mut t = l1 / budget as f64;
    loop {
        let k: Vec<i64> = u.iter().map(|&v| (v / t).round() as i64).collect();
        let s1: u64 = k.iter().map(|v| v.unsigned_abs()).sum();
        let s2 = (k.iter().map(|&v| (v * v) as f64).sum::<f64>()).sqrt();
        if s1 <= budget && s2 <= max_norm {
            return (k, t);
        }
        t *= 1.0 + 1.0 / 256.0;
    }
}

/// Per layer and neuron, the (min, max) of the float model's activations on the samples.
fn calibration_ranges(model: &Model, samples: &[Vec<f32>]) -> Vec<Vec<(f64, f64)>> {
    if samples.is_empty() {
        return Vec::new();
    }
    let mut ranges: Vec<Vec<(f64, f64)>> = model
        .layers
        .iter()
        .map(|l| vec![(f64::INFINITY, f64::NEG_INFINITY); l.outputs()])
        .collect();
    for s in samples {
        let mut x: Vec<f64> = s.iter().map(|&v| v as f64).collect();
        for (li, layer) in model.layers.iter().enumerate() {
            x = layer
                .weights
                .iter()
                .zip(&layer.biases)
                .map(|(row, &b)| {
                    layer.activation.apply(
                        row.iter()
                            .zip(&x)
                            .fold(b as f64, |a, (&w, &v)| a + w as f64 * v),
                    )
                })
                .collect();
            for (r, &y) in ranges[li].iter_mut().zip(&x) {
                *r = (r.0.min(y), r.1.max(y));
            }
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::inference::model::Layer;

    #[test]
    fn row_quantisation_respects_both_budgets() {
        let (k, t) = quantize_row(&[0.5, -0.25, 0.1, 3.0], 21, 9.0);
        let s1: u64 = k.iter().map(|v| v.unsigned_abs()).sum();
        let s2 = (k.iter().map(|&v| (v * v) as f64).sum::<f64>()).sqrt();
        assert!(s1 <= 21 && s2 <= 9.0, "{k:?}");
        assert!(t > 0.0);
        assert_eq!(quantize_row(&[0.0, 0.0], 5, 5.0).0, vec![0, 0]);
    }

    #[test]
    fn accumulators_stay_in_range_and_tables_match() {
        let model = Model {
            layers: vec![
                Layer {
                    weights: vec![vec![1.0, -2.0, 0.5], vec![-0.3, 0.2, 0.9]],
                    biases: vec![0.1, -0.4],
                    activation: Activation::Relu,
                },
                Layer {
                    weights: vec![vec![1.0, -1.0]],
                    biases: vec![0.0],
                    activation: Activation::None,
                },
            ],
        };
        for params in MlpParams::ALL {
            let q =
                QuantizedModel::compile(&model, &MlpConfig::with_range(params, -1.0, 1.0)).unwrap();
            assert_eq!(q.pbs_count(), 2);
            let p = params.modulus();
            for layer in &q.layers {
                for n in &layer.neurons {
                    let q_max = 3;
                    assert!(reach(n, q_max) < 1 << (63 - layer.in_delta_log2));
                    if layer.tables.is_some() {
                        assert!(reach(n, q_max) < p);
                    }
                }
            }
            for r in 0..=MAX_WIDEN {
                eprintln!(
                    "{params}: σ_pbs = 2^{:.2}, decryptable ‖k‖₂ at Δ/2^{r}: {:.2}",
                    pbs_output_std(params).log2(),
                    decrypt_norm_limit(params, r)
                );
            }
            eprintln!(
                "{params}: output Δ = 2^{} (parameter set Δ = 2^{})",
                q.output_delta_log2(),
                params.delta_log2()
            );
            // Quantised output tracks the float one.
            for x in [[0.0f32, 0.0, 0.0], [1.0, -1.0, 0.5], [-0.7, 0.3, 0.9]] {
                let f = model.eval_plain(&x).unwrap()[0] as f64;
                let qv = q.eval_plain(&x).unwrap()[0];
                assert!((f - qv).abs() < 1.5, "{params}: {f} vs {qv}");
            }
        }
    }

    #[test]
    fn missing_ranges_are_refused() {
        let model = Model::linear(vec![vec![1.0]], vec![0.0]);
        let cfg = MlpConfig::default();
        assert!(matches!(
            QuantizedModel::compile(&model, &cfg),
            Err(InferenceError::InvalidConfig(_))
        ));
        let cfg = MlpConfig {
            calibration: vec![vec![0.5], vec![-0.5]],
            ..MlpConfig::default()
        };
        let q = QuantizedModel::compile(&model, &cfg).unwrap();
        assert_eq!(q.input_quant[0].lo, -0.5);
    }
}
