//! Scheme `linear`: affine models `W·x + b` on fixed-point values in seeded RLWE ciphertexts,
//! with clear weights and no bootstrapping.
//!
//! # Parameters
//! The client's key is a binary polynomial of dimension N = 2048 and every fresh body carries
//! TUniform(17) noise on the native 2^64 torus: exactly the GLWE side (k = 1, N = 2048,
//! `glwe_noise_distribution = TUniform(17)`) of tfhe's default 128-bit parameter set
//! `PARAM_MESSAGE_2_CARRY_2_KS_PBS` (= `V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`),
//! which tfhe vetted with the lattice estimator for ≥ 128-bit security of RLWE samples under a
//! binary key. We publish nothing else under the key (no public key, no evaluation key), so
//! an attacker sees at most the same kind of samples.
//!
//! # Encoding
//! Input `x` (|x| ≤ `input_bound`) becomes `x_q = round(x·2^fx)`, placed at Δ = 2^d; row `j`'s
//! weights become `round(w·2^fw_j)` and its bias `round(b·2^(fx+fw_j))·Δ`. The evaluator
//! multiplies the ciphertext by the weight polynomial `P_j = Σ_i w_ji X^(N−1−i)`, whose
//! coefficient N−1 holds `Σ_i w_ji·x_i` exactly (the other coefficients, which also see the
//! unsent bodies, are never read), and extracts it as one LWE ciphertext per output.
//!
//! # Noise
//! Output noise is `Σ_i w_q,i e_i`; with |e_i| ≤ 2^17, Hoeffding's inequality bounds it by
//! `2^18·‖w_q‖₂·sqrt((f+1)·ln2/2)` except with probability 2^-f, f = [`FAILURE_LOG2`] = 64
//! (≈ 13 standard deviations of the actual noise). Rounding each of the N result-mask
//! coefficients to `result_bits` adds at most `2^(64−result_bits)·sqrt(N)·sqrt((f+1)ln2/2)`
//! (+ N for the rounding bias), same probability (so a decoded output is wrong with probability
//! below 2^-63). [`LinearModel::compile`] picks
//! (fx, fw_j, d) so that the sum stays below Δ/2 and every possible result
//! `|Σ w_q x_q + b_q| ≤ ‖w_q‖₁·⌊B·2^fx⌉ + |b_q|` stays below 2^(63−d), then minimises the
//! fixed-point error over the declared input box; the decoded value is then exact in fixed
//! point and [`LinearModel::error_bound`] is the whole error against the float model.

use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::DynamicDistribution;
use tfhe_ntt::native64::Plan32;
use zeroize::Zeroizing;

use super::keyid::InferenceKeyId;
use super::model::{check_input, Model};
use super::rlwe::{self, RlweSecret, SEED_BYTES};
use super::InferenceError;

/// LWE/RLWE dimension of the linear scheme.
pub const LINEAR_N: usize = 2048;
/// Fresh noise is TUniform(`LINEAR_NOISE_LOG2`): uniform on [−2^17, 2^17], ends half weight.
pub const LINEAR_NOISE_LOG2: u32 = 17;
/// Each decoded output is wrong with probability at most 2^-FAILURE_LOG2 (Hoeffding).
pub const FAILURE_LOG2: f64 = 64.0;
/// Largest input bound a configuration may declare.
pub const MAX_INPUT_BOUND: f64 = (1u64 << 30) as f64;
/// Largest number of inputs and outputs of a linear model.
pub const MAX_LINEAR_INPUTS: usize = 1 << 16;
pub const MAX_LINEAR_OUTPUTS: usize = 1 << 12;

const FX_MAX: u32 = 40;
const FW_MAX: u32 = 44;
/// Weight polynomials in NTT form are kept when rows × chunks is at most this (40 KiB each).
const PRECOMPUTE_MAX: usize = 256;
/// Chunks with at most this many inputs are multiplied directly instead of through the NTT.
const DIRECT_MAX: usize = 48;

/// The parameter set of a linear ciphertext (recorded in every ciphertext and key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinearParams {
    /// RLWE N = 2048, TUniform(17), q = 2^64 (see the module documentation).
    #[serde(rename = "rlwe2048-tu17")]
    Rlwe2048,
}

impl LinearParams {
    pub fn name(self) -> &'static str {
        match self {
            LinearParams::Rlwe2048 => "rlwe2048-tu17",
        }
    }
    pub fn n(self) -> usize {
        LINEAR_N
    }
    fn noise(self) -> DynamicDistribution<u64> {
        DynamicDistribution::new_t_uniform(LINEAR_NOISE_LOG2)
    }
}

impl fmt::Display for LinearParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a linear model is compiled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearConfig {
    /// Every input must satisfy |x| ≤ input_bound (larger values are refused at encryption).
    /// Default 256: covers standardised features and raw 8-bit pixels. The client knows its
    /// input, so it may declare the smallest power of two above max|x| for more precision.
    pub input_bound: f64,
    /// Bits kept of each result-mask coefficient (a multiple of 8 in 16..=64). Default 40:
    /// 5 bytes a coefficient instead of 8, for at most one bit of precision.
    pub result_bits: u32,
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig {
            input_bound: 256.0,
            result_bits: 40,
        }
    }
}

impl LinearConfig {
    pub fn with_input_bound(input_bound: f64) -> Self {
        LinearConfig {
            input_bound,
            ..Self::default()
        }
    }

    /// The smallest power-of-two bound (≥ 1) that covers `input`: what a client that knows its
    /// input declares for the best precision.
    pub fn for_input(input: &[f32]) -> Self {
        let m = input
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f64, |m, &v| m.max((v as f64).abs()));
        let bound = if m <= 1.0 {
            1.0
        } else {
            2f64.powi(m.log2().ceil() as i32)
        };
        Self::with_input_bound(bound.min(MAX_INPUT_BOUND))
    }

    pub fn validate(&self) -> Result<(), InferenceError> {
        if !(self.input_bound.is_finite()
            && self.input_bound > 0.0
            && self.input_bound <= MAX_INPUT_BOUND)
        {
            return Err(InferenceError::InvalidConfig(format!(
                "input_bound = {} must be in (0, 2^30]",
                self.input_bound
            )));
        }
        if !(16..=64).contains(&self.result_bits) || !self.result_bits.is_multiple_of(8) {
            return Err(InferenceError::InvalidConfig(format!(
                "result_bits = {} must be a multiple of 8 in 16..=64",
                self.result_bits
            )));
        }
        Ok(())
    }
}

/// What a client needs to encrypt an input for a compiled linear model (public).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearInputSpec {
    pub params: LinearParams,
    /// Number of input values.
    pub inputs: u32,
    /// Fixed-point fraction bits of each input (fx).
    pub frac_bits: u32,
    /// log2 of the plaintext scaling Δ (d).
    pub delta_log2: u32,
    /// Declared bound on |x|.
    pub bound: f64,
}

impl LinearInputSpec {
    pub(crate) fn validate(&self) -> Result<(), InferenceError> {
        let bad = |m: String| {
            Err(InferenceError::Malformed {
                what: "linear input spec",
                reason: m,
            })
        };
        if self.inputs == 0 || self.inputs as usize > MAX_LINEAR_INPUTS {
            return bad(format!("{} inputs", self.inputs));
        }
        if self.frac_bits > FX_MAX || !(1..=63).contains(&self.delta_log2) {
            return bad(format!(
                "frac_bits {} / delta_log2 {}",
                self.frac_bits, self.delta_log2
            ));
        }
        if !(self.bound.is_finite() && self.bound > 0.0 && self.bound <= MAX_INPUT_BOUND) {
            return bad(format!("bound {}", self.bound));
        }
        // The largest quantised input at Δ must not wrap.
        let xq = (self.bound * 2f64.powi(self.frac_bits as i32)).round();
        if xq.log2() + self.delta_log2 as f64 >= 63.0 {
            return bad("bound · 2^frac_bits · Δ overflows the torus".into());
        }
        Ok(())
    }

    pub(crate) fn chunks(&self) -> usize {
        (self.inputs as usize).div_ceil(LINEAR_N)
    }
}

/// The client's secret key for the linear scheme. Zeroized on drop, redacted in `Debug`.
pub struct LinearClientKey {
    pub(crate) params: LinearParams,
    pub(crate) key_id: InferenceKeyId,
    pub(crate) secret: RlweSecret,
}

impl fmt::Debug for LinearClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinearClientKey")
            .field("params", &self.params)
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl LinearClientKey {
    /// A fresh key (≈ 0.1 ms).
    pub fn generate() -> Self {
        let params = LinearParams::Rlwe2048;
        Self::from_secret(params, RlweSecret::generate(params.n()))
    }

    pub(crate) fn from_secret(params: LinearParams, secret: RlweSecret) -> Self {
        let key_id = InferenceKeyId::derive("linear", params.name(), secret.bits());
        LinearClientKey {
            params,
            key_id,
            secret,
        }
    }

    pub fn key_id(&self) -> InferenceKeyId {
        self.key_id
    }

    pub fn params(&self) -> LinearParams {
        self.params
    }

    /// Encrypts `input` for a model compiled with `spec` (refuses a wrong length, NaN/∞ and
    /// values beyond the declared bound, naming the index).
    pub fn encrypt(
        &self,
        spec: &LinearInputSpec,
        input: &[f32],
    ) -> Result<LinearCiphertext, InferenceError> {
        spec.validate()?;
        if spec.params != self.params {
            return Err(InferenceError::ParamsMismatch {
                what: "input spec",
                expected: self.params.name().into(),
                got: spec.params.name().into(),
            });
        }
        check_input(input, spec.inputs as usize)?;
        let scale = 2f64.powi(spec.frac_bits as i32);
        let mut plaintexts = Vec::with_capacity(input.len());
        for (index, &v) in input.iter().enumerate() {
            let v = v as f64;
            if v.abs() > spec.bound {
                return Err(InferenceError::OutOfRange {
                    index,
                    value: v,
                    bound: spec.bound,
                });
            }
            let q = (v * scale).round() as i64;
            plaintexts.push((q as u64).wrapping_shl(spec.delta_log2));
        }
        let seed = rlwe::fresh_seed();
        let mut noise = rlwe::noise_generator();
        let mut bodies = Vec::with_capacity(input.len());
        for (c, chunk) in plaintexts.chunks(LINEAR_N).enumerate() {
            bodies.extend(self.secret.encrypt_chunk(
                &seed,
                c as u32,
                chunk,
                self.params.noise(),
                &mut noise,
            ));
        }
        Ok(LinearCiphertext {
            key_id: self.key_id,
            spec: *spec,
            seed,
            bodies,
        })
    }

    /// Decrypts a result into the model's outputs (as floats).
    pub fn decrypt(&self, result: &LinearResult) -> Result<Vec<f64>, InferenceError> {
        if result.key_id != self.key_id {
            return Err(InferenceError::WrongKey {
                what: "linear result",
                expected: self.key_id,
                got: result.key_id,
            });
        }
        if result.params != self.params {
            return Err(InferenceError::ParamsMismatch {
                what: "linear result",
                expected: self.params.name().into(),
                got: result.params.name().into(),
            });
        }
        result.validate()?;
        let n = self.params.n();
        let width = (result.result_bits / 8) as usize;
        let d = result.delta_log2;
        let mut mask = vec![0u64; n];
        Ok(result
            .frac_bits
            .iter()
            .enumerate()
            .map(|(j, &frac)| {
                rlwe::unpack(
                    &result.masks[j * n * width..(j + 1) * n * width],
                    result.result_bits,
                    &mut mask,
                );
                let phase = self.secret.phase(&mask, result.bodies[j]);
                decode(phase, d) as f64 / 2f64.powi(frac as i32)
            })
            .collect())
    }
}

/// Rounds a phase to the nearest multiple of 2^d and reads it as a signed integer.
fn decode(phase: u64, d: u32) -> i64 {
    let rounded = phase.wrapping_add(1u64 << (d - 1)) >> d;
    // Sign-extend the (64 − d)-bit value.
    ((rounded << d) as i64) >> d
}

/// An encrypted input: a mask seed and one 64-bit body per value.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearCiphertext {
    pub key_id: InferenceKeyId,
    pub spec: LinearInputSpec,
    pub seed: [u8; SEED_BYTES],
    pub bodies: Vec<u64>,
}

impl fmt::Debug for LinearCiphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinearCiphertext")
            .field("key_id", &self.key_id)
            .field("spec", &self.spec)
            .field("values", &self.bodies.len())
            .finish()
    }
}

impl LinearCiphertext {
    pub(crate) fn validate(&self) -> Result<(), InferenceError> {
        self.spec.validate()?;
        if self.bodies.len() != self.spec.inputs as usize {
            return Err(InferenceError::Malformed {
                what: "linear ciphertext",
                reason: format!(
                    "{} bodies for {} inputs",
                    self.bodies.len(),
                    self.spec.inputs
                ),
            });
        }
        Ok(())
    }

    pub fn key_id(&self) -> InferenceKeyId {
        self.key_id
    }
}

/// The encrypted outputs: one LWE ciphertext (N rounded mask coefficients + a body) each.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearResult {
    pub params: LinearParams,
    pub key_id: InferenceKeyId,
    pub delta_log2: u32,
    pub result_bits: u32,
    /// Fixed-point fraction bits of each output (fx + fw_j).
    pub frac_bits: Vec<u32>,
    /// outputs × N coefficients, `result_bits / 8` bytes each.
    #[serde(with = "serde_bytes")]
    pub masks: Vec<u8>,
    pub bodies: Vec<u64>,
}

impl fmt::Debug for LinearResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinearResult")
            .field("key_id", &self.key_id)
            .field("outputs", &self.bodies.len())
            .field("result_bits", &self.result_bits)
            .finish()
    }
}

impl LinearResult {
    pub fn outputs(&self) -> usize {
        self.bodies.len()
    }

    pub fn key_id(&self) -> InferenceKeyId {
        self.key_id
    }

    pub(crate) fn validate(&self) -> Result<(), InferenceError> {
        let bad = |m: String| {
            Err(InferenceError::Malformed {
                what: "linear result",
                reason: m,
            })
        };
        let outputs = self.bodies.len();
        if outputs == 0 || outputs > MAX_LINEAR_OUTPUTS {
            return bad(format!("{outputs} outputs"));
        }
        if !(16..=64).contains(&self.result_bits) || !self.result_bits.is_multiple_of(8) {
            return bad(format!("result_bits {}", self.result_bits));
        }
        if !(1..=63).contains(&self.delta_log2) {
            return bad(format!("delta_log2 {}", self.delta_log2));
        }
        if self.frac_bits.len() != outputs {
            return bad(format!(
                "{} scales for {outputs} outputs",
                self.frac_bits.len()
            ));
        }
        if let Some(f) = self.frac_bits.iter().find(|&&f| f > FX_MAX + FW_MAX) {
            return bad(format!("frac_bits {f}"));
        }
        let expected = outputs * self.params.n() * (self.result_bits / 8) as usize;
        if self.masks.len() != expected {
            return bad(format!(
                "{} mask bytes, expected {expected}",
                self.masks.len()
            ));
        }
        Ok(())
    }
}

/// One output row, quantised.
#[derive(Clone, Debug)]
struct Row {
    weights: Vec<i64>,
    bias: i64,
    weight_frac_bits: u32,
}

/// The float affine map a linear model computes (for error bounds).
#[derive(Clone, Debug)]
struct Affine {
    w: Vec<Vec<f64>>,
    b: Vec<f64>,
}

/// A model compiled for the linear scheme: quantised rows, the input spec to publish, and the
/// weight polynomials in NTT form. Deterministic in (model, config).
#[derive(Clone)]
pub struct LinearModel {
    spec: LinearInputSpec,
    result_bits: u32,
    rows: Vec<Row>,
    affine: Affine,
    error_bound: f64,
    digest: [u8; 32],
    /// Per row, per chunk: the weight polynomial's NTT residues (5 primes), pre-normalised.
    ntt: Option<Vec<Vec<[Vec<u32>; 5]>>>,
}

impl fmt::Debug for LinearModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinearModel")
            .field("spec", &self.spec)
            .field("outputs", &self.rows.len())
            .field("result_bits", &self.result_bits)
            .field("error_bound", &self.error_bound)
            .finish()
    }
}

/// Per-row tables over the candidate weight precisions.
struct RowTables {
    /// For fw = 0..=FW_MAX: (‖w_q‖₁, ‖w_q‖₂, Σ|ŵ−w|, Σ|ŵ|), or None if w_q would overflow.
    by_fw: Vec<Option<(f64, f64, f64, f64)>>,
}

fn row_tables(w: &[f64]) -> RowTables {
    let by_fw = (0..=FW_MAX)
        .map(|fw| {
            let s = 2f64.powi(fw as i32);
            let mut l1 = 0f64;
            let mut l2 = 0f64;
            let mut err = 0f64;
            for &v in w {
                let q = (v * s).round();
                if q.abs() >= 2f64.powi(52) {
                    return None;
                }
                l1 += q.abs();
                l2 += q * q;
                err += (q / s - v).abs();
            }
            Some((l1, l2.sqrt(), err, l1 / s))
        })
        .collect();
    RowTables { by_fw }
}

/// The (bound on the) noise of a result before decoding, for a row with ‖w_q‖₁, ‖w_q‖₂.
fn noise_bound(l1: f64, l2: f64, result_bits: u32) -> f64 {
    let fresh_width = 2f64.powi(LINEAR_NOISE_LOG2 as i32 + 1);
    let fresh = rlwe::hoeffding(fresh_width, l2, FAILURE_LOG2)
        .min(l1 * 2f64.powi(LINEAR_NOISE_LOG2 as i32));
    let round = if result_bits == 64 {
        0.0
    } else {
        rlwe::hoeffding(
            2f64.powi(64 - result_bits as i32),
            (LINEAR_N as f64).sqrt(),
            FAILURE_LOG2,
        ) + LINEAR_N as f64
    };
    fresh + round
}

/// The best fw for one row at (fx, d), with its error bound; None if nothing fits.
fn best_fw(
    t: &RowTables,
    bias: f64,
    fx: u32,
    d: u32,
    bound: f64,
    result_bits: u32,
) -> Option<(u32, f64)> {
    let xq = (bound * 2f64.powi(fx as i32)).round();
    let noise_limit = 2f64.powi(d as i32 - 1);
    let range_limit = 2f64.powi(63 - d as i32) * (1.0 - 2f64.powi(-40)) - 1.0;
    let mut best: Option<(u32, f64)> = None;
    for (fw, entry) in t.by_fw.iter().enumerate() {
        let Some((l1, l2, werr, wabs)) = *entry else {
            break;
        };
        let scale = 2f64.powi((fx + fw as u32) as i32);
        let bq = (bias * scale).round();
        if noise_bound(l1, l2, result_bits) >= noise_limit {
            break; // noise only grows with fw
        }
        if l1 * xq + bq.abs() > range_limit {
            continue;
        }
        let err = bound * werr + wabs * 2f64.powi(-(fx as i32) - 1) + (bq / scale - bias).abs();
        if best.is_none_or(|(_, e)| err < e) {
            best = Some((fw as u32, err));
        }
    }
    best
}

impl LinearModel {
    /// Compiles an affine model (every activation `None`; layers are composed) for inputs
    /// bounded by `config.input_bound`: chooses (fx, fw_j, d) with the smallest worst-case error
    /// that the noise and range budget allows.
    pub fn compile(model: &Model, config: &LinearConfig) -> Result<Self, InferenceError> {
        model.validate()?;
        config.validate()?;
        let (w, b) = model.compose_affine().ok_or_else(|| {
            let (i, l) = model
                .layers
                .iter()
                .enumerate()
                .find(|(_, l)| l.activation != super::Activation::None)
                .map(|(i, l)| (i, l.activation.name()))
                .unwrap_or((0, "?"));
            InferenceError::Unsupported(format!(
                "scheme linear evaluates affine models only, but layer {i} has activation {l}; \
                 use scheme mlp"
            ))
        })?;
        let n_in = model.inputs();
        let n_out = w.len();
        if n_in > MAX_LINEAR_INPUTS || n_out > MAX_LINEAR_OUTPUTS {
            return Err(InferenceError::Unsupported(format!(
                "scheme linear takes at most {MAX_LINEAR_INPUTS} inputs and \
                 {MAX_LINEAR_OUTPUTS} outputs, the model has {n_in} and {n_out}"
            )));
        }
        let tables: Vec<RowTables> = w.par_iter().map(|r| row_tables(r)).collect();
        let bound = config.input_bound;
        let k = config.result_bits;
        // For every fx, the best common d: minimise the worst row's error.
        let best = (0..=FX_MAX)
            .into_par_iter()
            .filter_map(|fx| {
                let xq = (bound * 2f64.powi(fx as i32)).round();
                let mut best: Option<(f64, u32, u32, Vec<u32>)> = None;
                for d in 1..=62u32 {
                    if xq.log2() + d as f64 >= 62.0 {
                        break;
                    }
                    let mut worst = 0f64;
                    let mut fws = Vec::with_capacity(n_out);
                    for (t, &bias) in tables.iter().zip(&b) {
                        match best_fw(t, bias, fx, d, bound, k) {
                            Some((fw, e)) => {
                                worst = worst.max(e);
                                fws.push(fw);
                            }
                            None => {
                                worst = f64::INFINITY;
                                break;
                            }
                        }
                    }
                    if worst.is_finite() && best.as_ref().is_none_or(|(e, ..)| worst < *e) {
                        best = Some((worst, fx, d, fws));
                    }
                }
                best
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let Some((error_bound, fx, d, fws)) = best else {
            return Err(InferenceError::Infeasible(format!(
                "no fixed-point encoding of this model fits 64-bit ciphertexts for inputs \
                 bounded by {bound}: lower input_bound or the weights' magnitude"
            )));
        };
        let rows: Vec<Row> = w
            .iter()
            .zip(&b)
            .zip(&fws)
            .map(|((r, &bias), &fw)| {
                let s = 2f64.powi(fw as i32);
                Row {
                    weights: r.iter().map(|&v| (v * s).round() as i64).collect(),
                    bias: (bias * 2f64.powi((fx + fw) as i32)).round() as i64,
                    weight_frac_bits: fw,
                }
            })
            .collect();
        let spec = LinearInputSpec {
            params: LinearParams::Rlwe2048,
            inputs: n_in as u32,
            frac_bits: fx,
            delta_log2: d,
            bound,
        };
        let mut compiled = LinearModel {
            spec,
            result_bits: k,
            rows,
            affine: Affine { w, b },
            error_bound,
            digest: model.digest(),
            ntt: None,
        };
        let chunks = spec.chunks();
        let needs_ntt = (0..chunks).any(|c| chunk_len(n_in, c) > DIRECT_MAX);
        if needs_ntt && n_out * chunks <= PRECOMPUTE_MAX {
            let plan = plan()?;
            compiled.ntt = Some(
                compiled
                    .rows
                    .par_iter()
                    .map(|row| {
                        (0..chunks)
                            .map(|c| weight_poly_ntt(plan, row, n_in, c))
                            .collect()
                    })
                    .collect(),
            );
        }
        Ok(compiled)
    }

    /// What the client encrypts against (publish this with the model).
    pub fn input_spec(&self) -> LinearInputSpec {
        self.spec
    }

    pub fn inputs(&self) -> usize {
        self.spec.inputs as usize
    }

    pub fn outputs(&self) -> usize {
        self.rows.len()
    }

    /// Digest of the float model this was compiled from.
    pub fn model_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Worst-case |decrypted − float model| over every input with |x_i| ≤ bound (the
    /// encrypted result equals the fixed-point result except with probability ≤ 2^-64).
    pub fn error_bound(&self) -> f64 {
        self.error_bound
    }

    /// The fixed-point error bound for one particular input (tighter than [`Self::error_bound`]).
    pub fn error_bound_for(&self, input: &[f32]) -> Result<Vec<f64>, InferenceError> {
        check_input(input, self.inputs())?;
        let fx = self.spec.frac_bits;
        let sx = 2f64.powi(fx as i32);
        let x: Vec<f64> = input.iter().map(|&v| v as f64).collect();
        let xh: Vec<f64> = x.iter().map(|v| (v * sx).round() / sx).collect();
        Ok(self
            .rows
            .iter()
            .zip(&self.affine.w)
            .zip(&self.affine.b)
            .map(|((row, w), &b)| {
                let sw = 2f64.powi(row.weight_frac_bits as i32);
                let mut e = (row.bias as f64 / (sx * sw) - b).abs();
                for (((&q, &wf), &xi), &xhi) in row.weights.iter().zip(w).zip(&x).zip(&xh) {
                    let wh = q as f64 / sw;
                    e += (wh - wf).abs() * xi.abs() + wh.abs() * (xhi - xi).abs();
                }
                e
            })
            .collect())
    }

    /// The exact fixed-point result the encrypted evaluation decrypts to (the integer
    /// reference, decoded to floats).
    pub fn eval_quantized(&self, input: &[f32]) -> Result<Vec<f64>, InferenceError> {
        check_input(input, self.inputs())?;
        let sx = 2f64.powi(self.spec.frac_bits as i32);
        let xq: Vec<i128> = input
            .iter()
            .map(|&v| ((v as f64) * sx).round() as i128)
            .collect();
        Ok(self
            .rows
            .iter()
            .map(|row| {
                let acc = row
                    .weights
                    .iter()
                    .zip(&xq)
                    .fold(row.bias as i128, |a, (&w, &x)| a + w as i128 * x);
                acc as f64 / (sx * 2f64.powi(row.weight_frac_bits as i32))
            })
            .collect())
    }

    /// Evaluates the model on an encrypted input. Refuses a ciphertext made for another spec
    /// (input count, encoding, parameters); the result carries the ciphertext's key id.
    pub fn evaluate(&self, ct: &LinearCiphertext) -> Result<LinearResult, InferenceError> {
        ct.validate()?;
        if ct.spec != self.spec {
            return Err(InferenceError::ModelMismatch {
                what: "linear ciphertext",
                reason: format!(
                    "encrypted for {:?}, the model expects {:?}",
                    ct.spec, self.spec
                ),
            });
        }
        let n = LINEAR_N;
        let n_in = self.inputs();
        let chunks = self.spec.chunks();
        let d = self.spec.delta_log2;
        let width = (self.result_bits / 8) as usize;
        // Expand each chunk's mask once (and its NTT form if any chunk is long).
        let expand = |c: usize| {
            let mut a = vec![0u64; n];
            rlwe::expand_mask(&ct.seed, c as u32, &mut a);
            a
        };
        // (rayon's wake-up costs more than one 16 KiB expansion)
        let masks: Vec<Vec<u64>> = if chunks > 1 {
            (0..chunks).into_par_iter().map(expand).collect()
        } else {
            (0..chunks).map(expand).collect()
        };
        let long = (0..chunks).any(|c| chunk_len(n_in, c) > DIRECT_MAX);
        let (plan, mask_ntt) = if long {
            let plan = plan()?;
            let ntt: Vec<[Vec<u32>; 5]> = masks.par_iter().map(|a| forward(plan, a)).collect();
            (Some(plan), ntt)
        } else {
            (None, Vec::new())
        };
        let row_output = |(j, row): (usize, &Row)| -> (Vec<u8>, u64) {
            let mut a_out = vec![0u64; n];
            let mut acc: Option<[Vec<u32>; 5]> = None;
            for (c, a) in masks.iter().enumerate() {
                let lo = c * n;
                let len = chunk_len(n_in, c);
                let w = &row.weights[lo..lo + len];
                match plan {
                    Some(plan) if len > DIRECT_MAX => {
                        let owned;
                        let p = match &self.ntt {
                            Some(t) => &t[j][c],
                            None => {
                                owned = weight_poly_ntt(plan, row, n_in, c);
                                &owned
                            }
                        };
                        let acc = acc.get_or_insert_with(|| std::array::from_fn(|_| vec![0u32; n]));
                        mul_accumulate(plan, acc, p, &mask_ntt[c]);
                    }
                    _ => rlwe::weight_product(w, a, &mut a_out),
                }
            }
            if let (Some(plan), Some(mut acc)) = (plan, acc) {
                let mut prod = vec![0u64; n];
                let [p0, p1, p2, p3, p4] = &mut acc;
                plan.inv(&mut prod, p0, p1, p2, p3, p4);
                for (o, p) in a_out.iter_mut().zip(&prod) {
                    *o = o.wrapping_add(*p);
                }
            }
            // Extract coefficient N−1: LWE mask m_l = A_{N−1−l}.
            a_out.reverse();
            let mut packed = Vec::with_capacity(n * width);
            rlwe::pack(&a_out, self.result_bits, &mut packed);
            let body = rlwe::dot_signed(&row.weights, &ct.bodies)
                .wrapping_add((row.bias as u64).wrapping_shl(d));
            (packed, body)
        };
        let outs: Vec<(Vec<u8>, u64)> = if self.rows.len() > 1 && (n_in > 64 || long) {
            self.rows.par_iter().enumerate().map(row_output).collect()
        } else {
            self.rows.iter().enumerate().map(row_output).collect()
        };
        let mut masks_out = Vec::with_capacity(outs.len() * n * width);
        let mut bodies = Vec::with_capacity(outs.len());
        for (m, b) in outs {
            masks_out.extend_from_slice(&m);
            bodies.push(b);
        }
        Ok(LinearResult {
            params: self.spec.params,
            key_id: ct.key_id,
            delta_log2: d,
            result_bits: self.result_bits,
            frac_bits: self
                .rows
                .iter()
                .map(|r| self.spec.frac_bits + r.weight_frac_bits)
                .collect(),
            masks: masks_out,
            bodies,
        })
    }
}

use super::wire::{self as inference_wire, Kind};

inference_wire::plain_wire!(LinearCiphertext, Kind::LinearCiphertext, 1 << 20);
inference_wire::plain_wire!(LinearResult, Kind::LinearResult, 80 << 20);

/// Client-key record for local persistence: the secret's N bits, packed.
#[derive(Serialize, Deserialize)]
struct LinearKeyRecord {
    params: LinearParams,
    key_id: InferenceKeyId,
    #[serde(with = "serde_bytes")]
    bits: Vec<u8>,
}

impl Drop for LinearKeyRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bits);
    }
}

impl LinearClientKey {
    /// The key's persistent form (secret: keep it in the node's key store only).
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let bits = self.secret.bits();
        let mut packed = vec![0u8; bits.len() / 8];
        for (i, &b) in bits.iter().enumerate() {
            packed[i / 8] |= ((b & 1) as u8) << (i % 8);
        }
        let record = LinearKeyRecord {
            params: self.params,
            key_id: self.key_id,
            bits: packed,
        };
        let payload = Zeroizing::new(inference_wire::serialize(&record).unwrap_or_default());
        Zeroizing::new(inference_wire::frame(Kind::LinearClientKey, &payload))
    }

    /// Loads a key written by [`Self::to_secret_bytes`]; the key id is recomputed and must
    /// match the recorded one.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, InferenceError> {
        let payload = inference_wire::unframe(Kind::LinearClientKey, bytes, 1 << 16)?;
        let record: LinearKeyRecord = inference_wire::deserialize(Kind::LinearClientKey, payload)?;
        let n = record.params.n();
        if record.bits.len() != n / 8 {
            return Err(InferenceError::Malformed {
                what: "linear client key",
                reason: format!("{} key bytes, expected {}", record.bits.len(), n / 8),
            });
        }
        let bits: Zeroizing<Vec<u64>> = Zeroizing::new(
            (0..n)
                .map(|i| ((record.bits[i / 8] >> (i % 8)) & 1) as u64)
                .collect(),
        );
        let key = Self::from_secret(record.params, RlweSecret::from_bits(bits));
        if key.key_id != record.key_id {
            return Err(InferenceError::Malformed {
                what: "linear client key",
                reason: "recorded key id does not match the key".into(),
            });
        }
        Ok(key)
    }
}

fn chunk_len(n_in: usize, c: usize) -> usize {
    (n_in - c * LINEAR_N).min(LINEAR_N)
}

fn plan() -> Result<&'static Plan32, InferenceError> {
    static PLAN: std::sync::OnceLock<Option<Plan32>> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| Plan32::try_new(LINEAR_N))
        .as_ref()
        .ok_or_else(|| InferenceError::Unsupported("no NTT plan for N = 2048".into()))
}

fn forward(plan: &Plan32, poly: &[u64]) -> [Vec<u32>; 5] {
    let n = poly.len();
    let mut r: [Vec<u32>; 5] = std::array::from_fn(|_| vec![0u32; n]);
    let [p0, p1, p2, p3, p4] = &mut r;
    plan.fwd(poly, p0, p1, p2, p3, p4);
    r
}

/// NTT form (normalised by 1/N) of chunk `c`'s weight polynomial `Σ_i w_i X^(N−1−i)`.
fn weight_poly_ntt(plan: &Plan32, row: &Row, n_in: usize, c: usize) -> [Vec<u32>; 5] {
    let lo = c * LINEAR_N;
    let len = chunk_len(n_in, c);
    let mut p = vec![0u64; LINEAR_N];
    for (i, &w) in row.weights[lo..lo + len].iter().enumerate() {
        p[LINEAR_N - 1 - i] = w as u64;
    }
    let mut r = forward(plan, &p);
    plan.ntt_0().normalize(&mut r[0]);
    plan.ntt_1().normalize(&mut r[1]);
    plan.ntt_2().normalize(&mut r[2]);
    plan.ntt_3().normalize(&mut r[3]);
    plan.ntt_4().normalize(&mut r[4]);
    r
}

fn mul_accumulate(
    plan: &Plan32,
    acc: &mut [Vec<u32>; 5],
    lhs: &[Vec<u32>; 5],
    rhs: &[Vec<u32>; 5],
) {
    plan.ntt_0().mul_accumulate(&mut acc[0], &lhs[0], &rhs[0]);
    plan.ntt_1().mul_accumulate(&mut acc[1], &lhs[1], &rhs[1]);
    plan.ntt_2().mul_accumulate(&mut acc[2], &lhs[2], &rhs[2]);
    plan.ntt_3().mul_accumulate(&mut acc[3], &lhs[3], &rhs[3]);
    plan.ntt_4().mul_accumulate(&mut acc[4], &lhs[4], &rhs[4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rounds_and_sign_extends() {
        let d = 20;
        for v in [-5i64, -1, 0, 1, 7, (1 << 42) - 1, -(1 << 42)] {
            for noise in [-(1i64 << 18), 0, (1 << 19) - 1] {
                let phase = ((v as u64) << d).wrapping_add(noise as u64);
                assert_eq!(decode(phase, d), v, "v {v} noise {noise}");
            }
        }
    }

    #[test]
    fn direct_product_matches_ntt() {
        let mut a = vec![0u64; LINEAR_N];
        rlwe::expand_mask(&[9; 16], 0, &mut a);
        let w: Vec<i64> = (0..100).map(|i| (i * 37 % 19) - 9).collect();
        let row = Row {
            weights: w.clone(),
            bias: 0,
            weight_frac_bits: 0,
        };
        let mut direct = vec![0u64; LINEAR_N];
        rlwe::weight_product(&w, &a, &mut direct);
        let plan = plan().unwrap();
        let p = weight_poly_ntt(plan, &row, 100, 0);
        let mut acc: [Vec<u32>; 5] = std::array::from_fn(|_| vec![0u32; LINEAR_N]);
        mul_accumulate(plan, &mut acc, &p, &forward(plan, &a));
        let mut prod = vec![0u64; LINEAR_N];
        let [p0, p1, p2, p3, p4] = &mut acc;
        plan.inv(&mut prod, p0, p1, p2, p3, p4);
        assert_eq!(direct, prod);
    }
}
