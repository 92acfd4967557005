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

use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::DynamicDistribution;
use zeroize::Zeroizing;

use super::keyid::InferenceKeyId;
use super::model::check_input;
use super::rlwe::{self, RlweSecret, SEED_BYTES};
use super::wire::{self as inference_wire, Kind};
use super::InferenceError;

mod model;
pub use model::LinearModel;

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
}
