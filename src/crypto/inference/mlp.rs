//! Scheme `mlp`: quantised networks on tfhe shortint, linear layers as integer combinations of
//! ciphertexts (no bootstrap), one programmable bootstrap per neuron for activation and
//! requantisation (see [`super::quant`]).
//!
//! Inputs travel as one seeded RLWE ciphertext under the shortint GLWE key (a 16-byte seed
//! and 8 bytes a value, encrypted with the parameter set's own GLWE noise, i.e. exactly what
//! `ClientKey::encrypt` would draw); the evaluator extracts coefficient `i` as the LWE
//! ciphertext of input `i` under the big key, which is what a KS-PBS bootstrap takes.
//! Results are LWE ciphertexts whose masks are rounded to [`MLP_RESULT_BITS`] bits (rounding
//! noise ≤ 2^41 for m2c2, ≤ 2^42 for m3c3 at 2^-128, counted in the decryption budget of
//! [`super::quant`]; at the parameter set's own Δ it is also far below the modulus-switch
//! noise the set budgets for every bootstrap input).

use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tfhe::conformance::ParameterSetConformant;
use tfhe::core_crypto::prelude::LweCiphertext;
use tfhe::shortint::ciphertext::{Degree, MaxDegree, NoiseLevel};
use tfhe::shortint::client_key::atomic_pattern::AtomicPatternClientKey;
use tfhe::shortint::parameters::{
    AtomicPatternKind, AtomicPatternParameters, CarryModulus, MessageModulus,
};
use tfhe::shortint::server_key::LookupTableOwned;
use tfhe::shortint::{Ciphertext, ClientKey, CompressedServerKey, PBSOrder, ServerKey};
use tfhe::{Unversionize, Versionize};
use zeroize::{Zeroize, Zeroizing};

use super::keyid::InferenceKeyId;
use super::model::check_input;
pub use super::quant::MLP_RESULT_BITS;
use super::quant::{MlpInputSpec, MlpParams, OutputDecode, QuantizedModel};
use super::rlwe::{self, RlweSecret, SEED_BYTES};
use super::wire::{self, InferenceWire, Kind};
use super::InferenceError;

/// Results may encode outputs at most 2^MAX_OUTPUT_WIDEN below the parameter set's Δ.
const MAX_OUTPUT_WIDEN: u32 = 8;
/// Largest number of outputs of an mlp result.
pub const MAX_MLP_OUTPUTS: usize = 1 << 12;

/// tfhe's versioned (backward-compatible) form of a key, bincode-encoded.
fn versioned_bytes<T: Versionize>(value: &T) -> Vec<u8> {
    wire::serialize(&value.versionize()).unwrap_or_default()
}

/// Inverse of [`versioned_bytes`], reading at most `bytes.len()` bytes.
fn from_versioned_bytes<T: Unversionize>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, InferenceError> {
    let versioned: T::VersionedOwned = wire::deserialize_with_limit(bytes)
        .map_err(|reason| InferenceError::Malformed { what, reason })?;
    T::unversionize(versioned).map_err(|e| InferenceError::Malformed {
        what,
        reason: e.to_string(),
    })
}

fn spec_digest(spec: &MlpInputSpec) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("fhenode 2026 mlp input spec v1");
    h.update(&wire::serialize(spec).unwrap_or_default());
    *h.finalize().as_bytes()
}

/// The client's shortint key. Zeroized on drop (tfhe's key types are not zeroizing: the
/// secret polynomial is overwritten here), redacted in `Debug`.
pub struct MlpClientKey {
    params: MlpParams,
    key_id: InferenceKeyId,
    /// Always `Some` outside `drop`.
    key: Option<ClientKey>,
    secret: RlweSecret,
}

impl Drop for MlpClientKey {
    fn drop(&mut self) {
        // tfhe's key types do not zeroize themselves: take the key apart and wipe both
        // secret keys (the GLWE key and the small LWE key).
        if let Some(key) = self.key.take() {
            match key.atomic_pattern {
                AtomicPatternClientKey::Standard(ap) => {
                    let (glwe, lwe, _, _) = ap.into_raw_parts();
                    glwe.into_container().zeroize();
                    lwe.into_container().zeroize();
                }
                AtomicPatternClientKey::KeySwitch32(_) => {}
            }
        }
    }
}

impl fmt::Debug for MlpClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlpClientKey")
            .field("params", &self.params)
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl MlpClientKey {
    /// A fresh client key (milliseconds; the evaluation key is derived separately).
    pub fn generate(params: MlpParams) -> Self {
        Self::from_key(params, ClientKey::new(params.shortint()))
    }

    fn from_key(params: MlpParams, key: ClientKey) -> Self {
        let bits = Zeroizing::new(key.encryption_key().as_ref().to_vec());
        let key_id = InferenceKeyId::derive("mlp", params.name(), &bits);
        MlpClientKey {
            params,
            key_id,
            key: Some(key),
            secret: RlweSecret::from_bits(bits),
        }
    }

    fn key(&self) -> &ClientKey {
        // Only `drop` takes the key out.
        self.key
            .as_ref()
            .unwrap_or_else(|| unreachable!("client key used after drop"))
    }

    pub fn key_id(&self) -> InferenceKeyId {
        self.key_id
    }

    pub fn params(&self) -> MlpParams {
        self.params
    }

    /// The evaluation (server) key to upload to a model node, seeded-compressed
    /// (≈ 29 MiB for m2c2, ≈ 270 MiB for m3c3; seconds to generate).
    pub fn evaluation_key(&self) -> MlpEvaluationKey {
        MlpEvaluationKey {
            params: self.params,
            key_id: self.key_id,
            key: CompressedServerKey::new(self.key()),
        }
    }

    /// Quantises and encrypts `input` for a model published with `spec`.
    pub fn encrypt(
        &self,
        spec: &MlpInputSpec,
        input: &[f32],
    ) -> Result<MlpCiphertext, InferenceError> {
        spec.validate()?;
        if spec.params != self.params {
            return Err(InferenceError::ParamsMismatch {
                what: "mlp input spec",
                expected: self.params.name().into(),
                got: spec.params.name().into(),
            });
        }
        check_input(input, spec.quantizers.len())?;
        let levels: Vec<u64> = input
            .iter()
            .zip(&spec.quantizers)
            .map(|(&v, q)| q.quantize(v as f64))
            .collect();
        Ok(self.encrypt_levels(spec_digest(spec), &levels))
    }

    fn encrypt_levels(&self, spec: [u8; 32], levels: &[u64]) -> MlpCiphertext {
        let n = self.params.lwe_dimension();
        let d = self.params.delta_log2();
        let plaintexts: Vec<u64> = levels.iter().map(|&l| l << d).collect();
        let seed = rlwe::fresh_seed();
        let (_, noise) = self.key().encryption_key_and_noise();
        let mut gen = rlwe::noise_generator();
        let mut bodies = Vec::with_capacity(levels.len());
        for (c, chunk) in plaintexts.chunks(n).enumerate() {
            bodies.extend(
                self.secret
                    .encrypt_chunk(&seed, c as u32, chunk, noise, &mut gen),
            );
        }
        MlpCiphertext {
            params: self.params,
            key_id: self.key_id,
            spec,
            seed,
            bodies,
        }
    }

    /// Decrypts a result to its output levels (the integers [`QuantizedModel::eval_levels`]
    /// computes).
    pub fn decrypt_levels(&self, result: &MlpResult) -> Result<Vec<u64>, InferenceError> {
        if result.key_id != self.key_id {
            return Err(InferenceError::WrongKey {
                what: "mlp result",
                expected: self.key_id,
                got: result.key_id,
            });
        }
        if result.params != self.params {
            return Err(InferenceError::ParamsMismatch {
                what: "mlp result",
                expected: self.params.name().into(),
                got: result.params.name().into(),
            });
        }
        result.validate()?;
        let n = self.params.lwe_dimension();
        let d = result.delta_log2;
        // Levels run over [0, 2^(63 − d)): the padding bit above them must be clear.
        let levels = 1u64 << (63 - d);
        let width = (MLP_RESULT_BITS / 8) as usize;
        let mut mask = vec![0u64; n];
        result
            .bodies
            .iter()
            .enumerate()
            .map(|(j, &body)| {
                rlwe::unpack(
                    &result.masks[j * n * width..(j + 1) * n * width],
                    MLP_RESULT_BITS,
                    &mut mask,
                );
                let phase = self.secret.phase(&mask, body);
                let level = phase.wrapping_add(1u64 << (d - 1)) >> d;
                if level >= levels {
                    Err(InferenceError::Decryption(format!(
                        "output {j} decrypted outside the message space (padding bit set)"
                    )))
                } else {
                    Ok(level)
                }
            })
            .collect()
    }

    /// Decrypts and dequantises a result into the model's outputs.
    pub fn decrypt(&self, result: &MlpResult) -> Result<Vec<f64>, InferenceError> {
        let levels = self.decrypt_levels(result)?;
        Ok(levels
            .iter()
            .zip(&result.decode)
            .map(|(&l, d)| d.decode(l))
            .collect())
    }
}

/// The compressed server key a client uploads (seeded: masks are re-derived on load).
pub struct MlpEvaluationKey {
    params: MlpParams,
    key_id: InferenceKeyId,
    key: CompressedServerKey,
}

impl fmt::Debug for MlpEvaluationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlpEvaluationKey")
            .field("params", &self.params)
            .field("key_id", &self.key_id)
            .finish()
    }
}

fn conformance(params: MlpParams) -> (AtomicPatternParameters, MaxDegree) {
    let p = params.shortint();
    (
        AtomicPatternParameters::from(p),
        MaxDegree::from_msg_carry_modulus(p.message_modulus, p.carry_modulus),
    )
}

#[derive(Clone, Serialize, Deserialize)]
#[doc(hidden)]
pub struct EvaluationKeyRepr {
    params: MlpParams,
    key_id: InferenceKeyId,
    #[serde(with = "serde_bytes")]
    tfhe: Vec<u8>,
}

impl MlpEvaluationKey {
    pub fn params(&self) -> MlpParams {
        self.params
    }
    pub fn key_id(&self) -> InferenceKeyId {
        self.key_id
    }

    /// Decompresses into a ready server key (≈ 1 s for m2c2, ≈ 9 s for m3c3).
    pub fn into_server_key(self) -> MlpServerKey {
        MlpServerKey {
            params: self.params,
            key_id: self.key_id,
            key: self.key.decompress(),
        }
    }
}

impl InferenceWire for MlpEvaluationKey {
    const KIND: Kind = Kind::MlpEvaluationKey;
    const DEFAULT_MAX_LEN: usize = 512 << 20;
    type Repr = EvaluationKeyRepr;
    fn to_repr(&self) -> std::borrow::Cow<'_, Self::Repr> {
        std::borrow::Cow::Owned(EvaluationKeyRepr {
            params: self.params,
            key_id: self.key_id,
            tfhe: versioned_bytes(&self.key),
        })
    }
    fn from_repr(repr: Self::Repr) -> Result<Self, InferenceError> {
        let key: CompressedServerKey = from_versioned_bytes(&repr.tfhe, "evaluation key")?;
        if !key.is_conformant(&conformance(repr.params)) {
            return Err(InferenceError::Malformed {
                what: "evaluation key",
                reason: format!("not a server key for {}", repr.params),
            });
        }
        Ok(MlpEvaluationKey {
            params: repr.params,
            key_id: repr.key_id,
            key,
        })
    }
}

/// A decompressed server key, ready to evaluate (hold it in a bounded cache: ≈ 115 MiB for
/// m2c2, ≈ 875 MiB for m3c3).
pub struct MlpServerKey {
    params: MlpParams,
    key_id: InferenceKeyId,
    key: ServerKey,
}

impl fmt::Debug for MlpServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlpServerKey")
            .field("params", &self.params)
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl MlpServerKey {
    /// Decodes an uploaded evaluation key and decompresses it.
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Self, InferenceError> {
        Ok(MlpEvaluationKey::from_bytes(bytes, max_len)?.into_server_key())
    }

    pub fn params(&self) -> MlpParams {
        self.params
    }
    pub fn key_id(&self) -> InferenceKeyId {
        self.key_id
    }

    fn ciphertext(&self, lwe: Vec<u64>) -> Ciphertext {
        let p = self.params.shortint();
        Ciphertext::new(
            LweCiphertext::from_container(lwe, p.ciphertext_modulus),
            Degree::new(self.params.modulus() - 1),
            NoiseLevel::NOMINAL,
            MessageModulus(p.message_modulus.0),
            CarryModulus(p.carry_modulus.0),
            AtomicPatternKind::Standard(PBSOrder::KeyswitchBootstrap),
        )
    }

    /// The bootstrap accumulator for `table` (one entry per accumulator value 0..p), with the
    /// outputs encoded at Δ = 2^out_delta_log2. At the parameter set's own Δ this is tfhe's
    /// `generate_lookup_table`; below it (outputs that are only decrypted) the same box
    /// layout is filled by hand: p boxes of N/p coefficients, the first half box negated and
    /// rotated to the end (tfhe's `fill_accumulator_with_encoding`).
    fn lookup_table(&self, table: &[u64], out_delta_log2: u32) -> LookupTableOwned {
        let value = |a: u64| table.get(a as usize).copied().unwrap_or(0);
        let mut lut = self.key.generate_lookup_table(value);
        if out_delta_log2 != self.params.delta_log2() {
            let p = self.params.modulus() as usize;
            let mut body = lut.acc.get_mut_body();
            let coefficients = body.as_mut();
            let box_size = coefficients.len() / p;
            for (a, chunk) in coefficients.chunks_mut(box_size).enumerate() {
                chunk.fill(value(a as u64).wrapping_shl(out_delta_log2));
            }
            let half = box_size / 2;
            for c in coefficients[..half].iter_mut() {
                *c = c.wrapping_neg();
            }
            coefficients.rotate_left(half);
        }
        lut
    }

    /// One programmable bootstrap of a fresh encryption (for benchmarks: the unit cost).
    pub fn bench_single_pbs(&self) -> std::time::Duration {
        let n = self.params.lwe_dimension();
        // A random mask (an all-zero one would take tfhe's trivial shortcut).
        let mut lwe = vec![0u64; n + 1];
        rlwe::expand_mask(&rlwe::fresh_seed(), 0, &mut lwe[..n]);
        let ct = self.ciphertext(lwe);
        let lut = self.key.generate_lookup_table(|x| x);
        let t = std::time::Instant::now();
        let out = self.key.apply_lookup_table(&ct, &lut);
        let elapsed = t.elapsed();
        let _ = std::hint::black_box(out);
        elapsed
    }

    /// Evaluates `model` on an encrypted input. Refuses a ciphertext under another key, for
    /// other parameters or quantised for another model.
    pub fn evaluate(
        &self,
        model: &QuantizedModel,
        ct: &MlpCiphertext,
    ) -> Result<MlpResult, InferenceError> {
        ct.validate()?;
        if ct.key_id != self.key_id {
            return Err(InferenceError::WrongKey {
                what: "mlp ciphertext",
                expected: self.key_id,
                got: ct.key_id,
            });
        }
        for (what, got) in [("mlp ciphertext", ct.params), ("model", model.params)] {
            if got != self.params {
                return Err(InferenceError::ParamsMismatch {
                    what,
                    expected: self.params.name().into(),
                    got: got.name().into(),
                });
            }
        }
        if ct.bodies.len() != model.inputs() || ct.spec != spec_digest(&model.input_spec()) {
            return Err(InferenceError::ModelMismatch {
                what: "mlp ciphertext",
                reason: format!(
                    "{} inputs quantised for another model (this one takes {})",
                    ct.bodies.len(),
                    model.inputs()
                ),
            });
        }
        let n = self.params.lwe_dimension();
        let n_in = model.inputs();
        let chunks = n_in.div_ceil(n);
        let masks: Vec<Vec<u64>> = (0..chunks)
            .into_par_iter()
            .map(|c| {
                let mut a = vec![0u64; n];
                rlwe::expand_mask(&ct.seed, c as u32, &mut a);
                a
            })
            .collect();

        let mut current: Vec<Ciphertext> = Vec::new();
        for (index, layer) in model.layers.iter().enumerate() {
            let accs: Vec<Vec<u64>> = layer
                .neurons
                .par_iter()
                .map(|nrn| {
                    let mut lwe = vec![0u64; n + 1];
                    if index == 0 {
                        // Σ_i k_i·(coefficient i of each chunk), as in the linear scheme.
                        let (mask, body) = lwe.split_at_mut(n);
                        for (c, a) in masks.iter().enumerate() {
                            let lo = c * n;
                            let hi = (lo + n).min(n_in);
                            rlwe::weight_product(&nrn.weights[lo..hi], a, mask);
                        }
                        mask.reverse();
                        body[0] = rlwe::dot_signed(&nrn.weights, &ct.bodies);
                    } else {
                        for (&k, x) in nrn.weights.iter().zip(&current) {
                            if k != 0 {
                                rlwe::axpy(&mut lwe, k as u64, x.ct.as_ref());
                            }
                        }
                    }
                    lwe[n] = lwe[n].wrapping_add(nrn.offset << layer.in_delta_log2);
                    lwe
                })
                .collect();
            current = match &layer.tables {
                Some(tables) => accs
                    .into_par_iter()
                    .zip(tables.par_iter())
                    .map(|(lwe, table)| {
                        let lut = self.lookup_table(table, layer.out_delta_log2);
                        self.key.apply_lookup_table(&self.ciphertext(lwe), &lut)
                    })
                    .collect(),
                None => accs.into_iter().map(|lwe| self.ciphertext(lwe)).collect(),
            };
        }
        let width = (MLP_RESULT_BITS / 8) as usize;
        let mut masks_out = Vec::with_capacity(current.len() * n * width);
        let mut bodies = Vec::with_capacity(current.len());
        for c in &current {
            let data = c.ct.as_ref();
            rlwe::pack(&data[..n], MLP_RESULT_BITS, &mut masks_out);
            bodies.push(data[n]);
        }
        Ok(MlpResult {
            params: self.params,
            key_id: ct.key_id,
            delta_log2: model.output_delta_log2(),
            decode: model.output_decode(),
            masks: masks_out,
            bodies,
        })
    }
}

/// An encrypted, quantised input: a mask seed and one body per value.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpCiphertext {
    pub params: MlpParams,
    pub key_id: InferenceKeyId,
    /// Digest of the [`MlpInputSpec`] the input was quantised with.
    pub spec: [u8; 32],
    pub seed: [u8; SEED_BYTES],
    pub bodies: Vec<u64>,
}

impl fmt::Debug for MlpCiphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlpCiphertext")
            .field("params", &self.params)
            .field("key_id", &self.key_id)
            .field("values", &self.bodies.len())
            .finish()
    }
}

impl MlpCiphertext {
    pub fn key_id(&self) -> InferenceKeyId {
        self.key_id
    }

    pub(crate) fn validate(&self) -> Result<(), InferenceError> {
        if self.bodies.is_empty() || self.bodies.len() > super::model::MAX_WIDTH {
            return Err(InferenceError::Malformed {
                what: "mlp ciphertext",
                reason: format!("{} values", self.bodies.len()),
            });
        }
        Ok(())
    }
}

/// Encrypted outputs: one LWE ciphertext each under the big key (masks rounded), plus how to
/// turn each decrypted level into a float.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpResult {
    pub params: MlpParams,
    pub key_id: InferenceKeyId,
    /// log2 of the Δ the outputs are encoded at (levels run up to 2^(63 − delta_log2)).
    pub delta_log2: u32,
    pub decode: Vec<OutputDecode>,
    #[serde(with = "serde_bytes")]
    pub masks: Vec<u8>,
    pub bodies: Vec<u64>,
}

impl fmt::Debug for MlpResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlpResult")
            .field("params", &self.params)
            .field("key_id", &self.key_id)
            .field("outputs", &self.bodies.len())
            .finish()
    }
}

impl MlpResult {
    pub fn key_id(&self) -> InferenceKeyId {
        self.key_id
    }

    pub fn outputs(&self) -> usize {
        self.bodies.len()
    }

    pub(crate) fn validate(&self) -> Result<(), InferenceError> {
        let bad = |reason: String| {
            Err(InferenceError::Malformed {
                what: "mlp result",
                reason,
            })
        };
        let outputs = self.bodies.len();
        if outputs == 0 || outputs > MAX_MLP_OUTPUTS {
            return bad(format!("{outputs} outputs"));
        }
        if self.decode.len() != outputs {
            return bad(format!(
                "{} decoders for {outputs} outputs",
                self.decode.len()
            ));
        }
        let top = self.params.delta_log2();
        if !(top.saturating_sub(MAX_OUTPUT_WIDEN)..=top).contains(&self.delta_log2) {
            return bad(format!("delta_log2 {}", self.delta_log2));
        }
        if let Some(e) = self.decode.iter().find_map(|d| d.validate().err()) {
            return bad(e);
        }
        let expected = outputs * self.params.lwe_dimension() * (MLP_RESULT_BITS / 8) as usize;
        if self.masks.len() != expected {
            return bad(format!(
                "{} mask bytes, expected {expected}",
                self.masks.len()
            ));
        }
        Ok(())
    }
}

wire::plain_wire!(MlpCiphertext, Kind::MlpCiphertext, 1 << 20);
wire::plain_wire!(MlpResult, Kind::MlpResult, 256 << 20);

/// Client-key record for local persistence. The tfhe blob holds the secret: zeroized on drop.
#[derive(Clone, Serialize, Deserialize)]
#[doc(hidden)]
pub struct MlpClientKeyRepr {
    params: MlpParams,
    key_id: InferenceKeyId,
    #[serde(with = "serde_bytes")]
    tfhe: Vec<u8>,
}

impl Drop for MlpClientKeyRepr {
    fn drop(&mut self) {
        self.tfhe.zeroize();
    }
}

impl MlpClientKey {
    /// The key's persistent form (secret: keep it in the node's key store only).
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let repr = MlpClientKeyRepr {
            params: self.params,
            key_id: self.key_id,
            tfhe: versioned_bytes(self.key()),
        };
        let payload = Zeroizing::new(wire::serialize(&repr).unwrap_or_default());
        Zeroizing::new(wire::frame(Kind::MlpClientKey, &payload))
    }

    /// Loads a key written by [`Self::to_secret_bytes`]; the key id is recomputed and must
    /// match the recorded one.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, InferenceError> {
        let payload = wire::unframe(Kind::MlpClientKey, bytes, 16 << 20)?;
        let repr: MlpClientKeyRepr = wire::deserialize(Kind::MlpClientKey, payload)?;
        let key: ClientKey = from_versioned_bytes(&repr.tfhe, "mlp client key")?;
        let expected = repr.params.shortint();
        let got = key.parameters();
        if got.message_modulus() != expected.message_modulus
            || got.carry_modulus() != expected.carry_modulus
            || got.glwe_dimension() != expected.glwe_dimension
            || got.polynomial_size() != expected.polynomial_size
            || got.lwe_dimension() != expected.lwe_dimension
            || key.encryption_key().as_ref().len() != repr.params.lwe_dimension()
        {
            return Err(InferenceError::Malformed {
                what: "mlp client key",
                reason: format!("the key does not have the parameters of {}", repr.params),
            });
        }
        let loaded = Self::from_key(repr.params, key);
        if loaded.key_id != repr.key_id {
            return Err(InferenceError::Malformed {
                what: "mlp client key",
                reason: "recorded key id does not match the key".into(),
            });
        }
        Ok(loaded)
    }
}

#[cfg(test)]
pub(crate) fn encrypt_levels_for_tests(
    key: &MlpClientKey,
    model: &QuantizedModel,
    levels: &[u64],
) -> MlpCiphertext {
    key.encrypt_levels(spec_digest(&model.input_spec()), levels)
}

#[cfg(test)]
pub(crate) fn shortint_decrypt_for_tests(
    key: &MlpClientKey,
    sk: &MlpServerKey,
    levels: &[u64],
) -> Vec<u64> {
    // Builds shortint ciphertexts from our seeded RLWE encryption and decrypts them with
    // tfhe's own decryption: checks the extraction convention against tfhe.
    let n = key.params.lwe_dimension();
    let ct = key.encrypt_levels([0; 32], levels);
    let mut a = vec![0u64; n];
    rlwe::expand_mask(&ct.seed, 0, &mut a);
    ct.bodies
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let mut lwe = vec![0u64; n + 1];
            rlwe::extract_mask(&a, i, &mut lwe[..n]);
            lwe[n] = b;
            key.key().decrypt_message_and_carry(&sk.ciphertext(lwe))
        })
        .collect()
}

/// Noise (phase − message, signed) of `count` bootstrap outputs: checks tfhe's noise formula,
/// which the wide outputs rely on, against the real thing.
#[cfg(test)]
pub(crate) fn pbs_noise_for_tests(key: &MlpClientKey, sk: &MlpServerKey, count: usize) -> Vec<i64> {
    let n = key.params.lwe_dimension();
    let d = key.params.delta_log2();
    let levels: Vec<u64> = (0..count as u64)
        .map(|i| i % key.params.modulus())
        .collect();
    let ct = key.encrypt_levels([0; 32], &levels);
    let mut a = vec![0u64; n];
    rlwe::expand_mask(&ct.seed, 0, &mut a);
    let lut = sk.key.generate_lookup_table(|x| x);
    ct.bodies
        .par_iter()
        .enumerate()
        .map(|(i, &b)| {
            let mut lwe = vec![0u64; n + 1];
            rlwe::extract_mask(&a, i, &mut lwe[..n]);
            lwe[n] = b;
            let out = sk.key.apply_lookup_table(&sk.ciphertext(lwe), &lut);
            let data = out.ct.as_ref();
            let phase = key.secret.phase(&data[..n], data[n]);
            phase.wrapping_sub(levels[i] << d) as i64
        })
        .collect()
}
