//! The two schemes side by side: a client's key, a compiled model, and what each does with a
//! batch of rows (encrypt, evaluate, decrypt). This is the only place that matches on the
//! scheme: the registry and the actor call these and never look inside. Everything here is
//! synchronous and CPU-bound; callers run it off the executor.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::messages::{self, Batch, InputSpec};
use super::{ContextInfo, Decrypted, InferenceActorError, ModelOptions, Scheme};
use crate::crypto::inference::{
    Activation, InferenceWire, LinearCiphertext, LinearClientKey, LinearConfig, LinearModel,
    LinearResult, MlpCiphertext, MlpClientKey, MlpConfig, MlpParams, MlpResult, MlpServerKey,
    Model, QuantizedModel,
};

/// Largest ciphertext or result batch accepted.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Largest evaluation key accepted (m3c3 keys are ≈ 270 MiB compressed).
pub const MAX_EVAL_KEY_BYTES: usize = 512 << 20;

/// The parameter set of every new mlp context and of models compiled without a range.
const MLP_PARAMS: MlpParams = MlpParams::Message2Carry2;

/// A client key of either scheme.
#[derive(Clone)]
pub enum ClientKey {
    Linear(Arc<LinearClientKey>),
    Mlp(Arc<MlpClientKey>),
}

/// A fresh client key and what the store keeps of it.
pub struct NewKey {
    pub key: ClientKey,
    /// The secret key's bytes.
    pub secret: Zeroizing<Vec<u8>>,
    /// The evaluation key a model node needs (mlp), as uploaded.
    pub evaluation_key: Option<Vec<u8>>,
}

impl ClientKey {
    /// A fresh key of `scheme` (seconds for mlp: the evaluation key is derived too).
    pub fn generate(scheme: Scheme) -> NewKey {
        match scheme {
            Scheme::Linear => {
                let k = LinearClientKey::generate();
                NewKey {
                    secret: k.to_secret_bytes(),
                    key: ClientKey::Linear(Arc::new(k)),
                    evaluation_key: None,
                }
            }
            Scheme::Mlp => {
                let k = MlpClientKey::generate(MLP_PARAMS);
                NewKey {
                    secret: k.to_secret_bytes(),
                    evaluation_key: Some(k.evaluation_key().to_bytes()),
                    key: ClientKey::Mlp(Arc::new(k)),
                }
            }
        }
    }

    /// A stored key back from its secret bytes.
    pub fn from_secret(scheme: Scheme, secret: &[u8]) -> Result<Self, InferenceActorError> {
        Ok(match scheme {
            Scheme::Linear => {
                ClientKey::Linear(Arc::new(LinearClientKey::from_secret_bytes(secret)?))
            }
            Scheme::Mlp => ClientKey::Mlp(Arc::new(MlpClientKey::from_secret_bytes(secret)?)),
        })
    }

    /// The parameter set's name.
    pub fn params_name(&self) -> &'static str {
        match self {
            ClientKey::Linear(k) => k.params().name(),
            ClientKey::Mlp(k) => k.params().name(),
        }
    }

    /// The key's public id, as ciphertexts carry it.
    pub fn key_id_hex(&self) -> String {
        match self {
            ClientKey::Linear(k) => k.key_id().to_hex(),
            ClientKey::Mlp(k) => k.key_id().to_hex(),
        }
    }

    /// The id of the evaluation key a model node must hold first (mlp); `None` when the scheme
    /// needs none.
    pub fn evaluation_key_id(&self) -> Option<[u8; 32]> {
        match self {
            ClientKey::Linear(_) => None,
            ClientKey::Mlp(k) => Some(k.key_id().0),
        }
    }

    /// The server key for evaluating on this node (the one-call flow), if the scheme needs one.
    pub fn server_key(&self) -> Option<MlpServerKey> {
        match self {
            ClientKey::Linear(_) => None,
            ClientKey::Mlp(k) => Some(k.evaluation_key().into_server_key()),
        }
    }

    /// The number of outputs in one encrypted result row (0 when it does not parse).
    pub fn result_outputs(&self, row: &[u8]) -> usize {
        match self {
            ClientKey::Linear(_) => {
                LinearResult::from_bytes(row, MAX_BATCH_BYTES).map_or(0, |r| r.outputs())
            }
            ClientKey::Mlp(_) => {
                MlpResult::from_bytes(row, MAX_BATCH_BYTES).map_or(0, |r| r.outputs())
            }
        }
    }
}

/// A client context of this node: its public facts and its key.
#[derive(Clone)]
pub struct ClientContext {
    pub info: ContextInfo,
    pub key: ClientKey,
}

impl ClientContext {
    /// Refuses a batch made under another context.
    pub fn check_batch(&self, batch: &Batch, what: &str) -> Result<(), InferenceActorError> {
        if batch.key_id != self.info.key_id || batch.scheme != self.info.scheme {
            return Err(InferenceActorError::WrongContext(format!(
                "the {what} was made under another context (key {}), not `{}`",
                batch.key_id, self.info.fhe_context_id
            )));
        }
        Ok(())
    }

    /// Encrypts `rows` for a model with input encoding `spec`.
    pub fn encrypt_rows(
        &self,
        spec: &InputSpec,
        rows: &[Vec<f32>],
    ) -> Result<Batch, InferenceActorError> {
        if rows.is_empty() || rows.len() > messages::MAX_BATCH_ROWS {
            return Err(InferenceActorError::BadInput(format!(
                "1..={} input rows, got {}",
                messages::MAX_BATCH_ROWS,
                rows.len()
            )));
        }
        let cts = match (&self.key, spec) {
            (ClientKey::Linear(k), InputSpec::Linear(s)) => rows
                .iter()
                .map(|r| k.encrypt(s, r).map(|c| c.to_bytes()))
                .collect::<Result<Vec<_>, _>>()?,
            (ClientKey::Mlp(k), InputSpec::Mlp(s)) => rows
                .iter()
                .map(|r| k.encrypt(s, r).map(|c| c.to_bytes()))
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(InferenceActorError::WrongContext(format!(
                    "context `{}` is {}; the model is {}",
                    self.info.fhe_context_id,
                    self.info.scheme,
                    spec.scheme()
                )))
            }
        };
        Ok(Batch::new(self.info.scheme, self.info.key_id.clone(), cts))
    }

    /// Decrypts a result batch.
    pub fn decrypt_rows(&self, batch: &Batch) -> Result<Decrypted, InferenceActorError> {
        let values = batch
            .rows
            .iter()
            .map(|row| match &self.key {
                ClientKey::Linear(k) => k.decrypt(&LinearResult::from_bytes(row, MAX_BATCH_BYTES)?),
                ClientKey::Mlp(k) => k.decrypt(&MlpResult::from_bytes(row, MAX_BATCH_BYTES)?),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = values.first().map_or(0, Vec::len);
        Ok(Decrypted {
            result_shape: [values.len(), outputs],
            values,
        })
    }
}

/// The scheme a model is compiled for: the one asked for, else `linear` when no layer has an
/// activation and `mlp` when one does.
pub fn scheme_for(model: &Model, options: &ModelOptions) -> Scheme {
    let has_activation = model
        .layers
        .iter()
        .any(|l| l.activation != Activation::None);
    match options.scheme {
        Some(s) => s,
        None if has_activation => Scheme::Mlp,
        None => Scheme::Linear,
    }
}

/// A model compiled for its scheme.
pub enum Compiled {
    Linear(LinearModel),
    Mlp(QuantizedModel),
}

impl Compiled {
    /// Compiles `model` for `scheme`. `rows`, the inputs of a one-call request, stand in for
    /// the bound (linear) or the calibration (mlp) when the options give none.
    pub fn compile(
        model: &Model,
        scheme: Scheme,
        options: &ModelOptions,
        rows: Option<&[Vec<f32>]>,
    ) -> Result<Self, InferenceActorError> {
        Ok(match scheme {
            Scheme::Linear => {
                let config = match (options.input_bound, rows) {
                    (Some(b), _) => LinearConfig::with_input_bound(b),
                    (None, Some(rows)) => {
                        let all: Vec<f32> = rows.iter().flatten().copied().collect();
                        LinearConfig::for_input(&all)
                    }
                    (None, None) => LinearConfig::default(),
                };
                Compiled::Linear(LinearModel::compile(model, &config)?)
            }
            Scheme::Mlp => {
                let mut config = match options.input_range {
                    Some((lo, hi)) => MlpConfig::with_range(MLP_PARAMS, lo, hi),
                    None => MlpConfig::default(),
                };
                config.calibration = options.calibration.clone();
                if let (None, Some(rows)) = (&options.input_range, rows) {
                    config.calibration.extend(rows.iter().cloned());
                }
                if config.input_range.is_none() && config.calibration.is_empty() {
                    config = MlpConfig::with_range(MLP_PARAMS, -1.0, 1.0);
                }
                Compiled::Mlp(QuantizedModel::compile(model, &config)?)
            }
        })
    }

    /// Programmable bootstraps per row (0 for linear).
    pub fn pbs_per_row(&self) -> usize {
        match self {
            Compiled::Linear(_) => 0,
            Compiled::Mlp(q) => q.pbs_count(),
        }
    }

    /// linear: the largest |encrypted − float| per output for inputs within the bound.
    pub fn error_bound(&self) -> Option<f64> {
        match self {
            Compiled::Linear(m) => Some(m.error_bound()),
            Compiled::Mlp(_) => None,
        }
    }

    /// The input encoding a client encrypts for.
    pub fn spec(&self) -> InputSpec {
        match self {
            Compiled::Linear(m) => InputSpec::Linear(m.input_spec()),
            Compiled::Mlp(q) => InputSpec::Mlp(q.input_spec()),
        }
    }

    /// The parameters of the evaluation key it needs loaded (mlp); `None` when it needs none.
    pub fn eval_key_params(&self) -> Option<MlpParams> {
        match self {
            Compiled::Linear(_) => None,
            Compiled::Mlp(q) => Some(q.params()),
        }
    }

    /// Evaluates every row of `batch`; returns the result batch and the PBS count.
    pub fn evaluate_rows(
        &self,
        server_key: Option<&MlpServerKey>,
        batch: &Batch,
    ) -> Result<(Vec<u8>, u64), InferenceActorError> {
        let (rows, pbs) = match (self, server_key) {
            (Compiled::Linear(m), _) => {
                let rows = batch
                    .rows
                    .iter()
                    .map(|row| {
                        let ct = LinearCiphertext::from_bytes(row, MAX_BATCH_BYTES)?;
                        Ok(m.evaluate(&ct)?.to_bytes())
                    })
                    .collect::<Result<Vec<_>, InferenceActorError>>()?;
                (rows, 0)
            }
            (Compiled::Mlp(q), Some(key)) => {
                let rows = batch
                    .rows
                    .iter()
                    .map(|row| {
                        let ct = MlpCiphertext::from_bytes(row, MAX_BATCH_BYTES)?;
                        Ok(key.evaluate(q, &ct)?.to_bytes())
                    })
                    .collect::<Result<Vec<_>, InferenceActorError>>()?;
                let pbs = (q.pbs_count() * batch.rows.len()) as u64;
                (rows, pbs)
            }
            (Compiled::Mlp(_), None) => {
                return Err(InferenceActorError::WrongContext(
                    "no evaluation key for this context".into(),
                ))
            }
        };
        Ok((
            Batch::new(batch.scheme, batch.key_id.clone(), rows).to_bytes(),
            pbs,
        ))
    }
}

/// The smallest evaluation key any model on this node can need, loaded.
pub fn smallest_server_key_bytes() -> u64 {
    MLP_PARAMS.server_key_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::inference::Layer;

    fn layer(activation: Activation) -> Layer {
        Layer {
            weights: vec![vec![0.5, -0.25]],
            biases: vec![0.1],
            activation,
        }
    }

    #[test]
    fn the_scheme_follows_the_activations_unless_asked() {
        let affine = Model {
            layers: vec![layer(Activation::None)],
        };
        let relu = Model {
            layers: vec![layer(Activation::Relu)],
        };
        let none = ModelOptions::default();
        assert_eq!(scheme_for(&affine, &none), Scheme::Linear);
        assert_eq!(scheme_for(&relu, &none), Scheme::Mlp);
        let asked = ModelOptions {
            scheme: Some(Scheme::Mlp),
            ..ModelOptions::default()
        };
        assert_eq!(scheme_for(&affine, &asked), Scheme::Mlp);
    }

    #[test]
    fn a_linear_round_trip_and_a_batch_of_another_context_is_refused() {
        let model = Model {
            layers: vec![layer(Activation::None)],
        };
        let compiled =
            Compiled::compile(&model, Scheme::Linear, &ModelOptions::default(), None).unwrap();
        assert_eq!(
            (compiled.pbs_per_row(), compiled.eval_key_params()),
            (0, None)
        );
        let context = |id: &str| {
            let new = ClientKey::generate(Scheme::Linear);
            ClientContext {
                info: ContextInfo {
                    fhe_context_id: id.into(),
                    scheme: Scheme::Linear,
                    params: new.key.params_name().into(),
                    key_id: new.key.key_id_hex(),
                    created_ms: 0,
                    evaluation_key_bytes: None,
                },
                key: new.key,
            }
        };
        let (mine, other) = (context("a"), context("b"));
        let batch = mine
            .encrypt_rows(&compiled.spec(), &[vec![1.0, 2.0]])
            .unwrap();
        let (result, pbs) = compiled.evaluate_rows(None, &batch).unwrap();
        assert_eq!(pbs, 0);
        let result = Batch::from_bytes(&result, MAX_BATCH_BYTES).unwrap();
        mine.check_batch(&result, "result").unwrap();
        assert!(other.check_batch(&result, "result").is_err());
        assert_eq!(mine.key.result_outputs(&result.rows[0]), 1);
        let decrypted = mine.decrypt_rows(&result).unwrap();
        assert_eq!(decrypted.result_shape, [1, 1]);
        assert!((decrypted.values[0][0] - 0.1).abs() < 1e-2, "{decrypted:?}");
        // A key restored from its secret reads the same results.
        let restored = ClientKey::from_secret(
            Scheme::Linear,
            &match &mine.key {
                ClientKey::Linear(k) => k.to_secret_bytes(),
                ClientKey::Mlp(_) => unreachable!(),
            },
        )
        .unwrap();
        assert_eq!(restored.key_id_hex(), mine.info.key_id);
    }
}
