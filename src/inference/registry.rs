//! The models a model node serves: registered in the store (one [`ModelRecord`] per name),
//! compiled on first use and kept compiled until their record changes.

use std::collections::HashMap;
use std::sync::Arc;

use super::records;
use super::scheme::{scheme_for, Compiled};
use super::{check_model_name, InferenceActorError, ModelInfo, ModelRecord};
use crate::store::{trees, Store};

/// A registered (or inline) model, compiled for its scheme, and what is listed of it.
pub struct CompiledModel {
    pub info: ModelInfo,
    pub compiled: Compiled,
}

impl CompiledModel {
    /// Checks and compiles `record` (blocking: seconds for a large mlp). `rows` are the inputs
    /// of a one-call request, used for the ranges when the options give none.
    pub fn compile(
        record: &ModelRecord,
        rows: Option<&[Vec<f32>]>,
    ) -> Result<Self, InferenceActorError> {
        check_model_name(&record.name)?;
        let model = &record.model;
        // Compiling validates the model first.
        let scheme = scheme_for(model, &record.options);
        let compiled = Compiled::compile(model, scheme, &record.options, rows)?;
        Ok(CompiledModel {
            info: ModelInfo {
                name: record.name.clone(),
                scheme,
                inputs: model.inputs(),
                outputs: model.outputs(),
                layers: model.layers.len(),
                activations: model
                    .layers
                    .iter()
                    .map(|l| l.activation.name().to_string())
                    .collect(),
                pbs: compiled.pbs_per_row(),
                error_bound: compiled.error_bound(),
                created_ms: record.created_ms,
            },
            compiled,
        })
    }
}

/// Registers `record` (blocking): refuses a name in use unless `replace`, compiles it once to
/// check it, and stores it.
pub fn register(
    store: &Store,
    record: &ModelRecord,
    replace: bool,
) -> Result<ModelInfo, InferenceActorError> {
    let key = records::model(&record.name);
    if !replace && store.tree(trees::MODELS)?.contains_key(&key)? {
        return Err(InferenceActorError::Duplicate(format!(
            "model `{}` exists; register with `?replace=true` to replace it",
            record.name
        )));
    }
    store.ensure_room()?;
    let compiled = CompiledModel::compile(record, None)?;
    store.put(trees::MODELS, &key, record)?;
    store.flush()?;
    Ok(compiled.info)
}

/// The registered models, compiled on demand; owned by the inference actor.
pub struct Registry {
    store: Store,
    compiled: HashMap<String, Arc<CompiledModel>>,
}

impl Registry {
    pub fn new(store: Store) -> Self {
        Registry {
            store,
            compiled: HashMap::new(),
        }
    }

    /// How many models are registered.
    pub fn count(&self) -> usize {
        self.store.tree(trees::MODELS).map(|t| t.len()).unwrap_or(0)
    }

    /// A registered model, compiled (cached until the record changes).
    pub fn get(&mut self, name: &str) -> Result<Arc<CompiledModel>, InferenceActorError> {
        let record: ModelRecord = self
            .store
            .get(trees::MODELS, &records::model(name))?
            .ok_or_else(|| InferenceActorError::UnknownModel(name.to_string()))?;
        self.compiled(&record)
    }

    /// `record` compiled: the cached copy unless the record changed since.
    fn compiled(
        &mut self,
        record: &ModelRecord,
    ) -> Result<Arc<CompiledModel>, InferenceActorError> {
        if let Some(m) = self.compiled.get(&record.name) {
            if m.info.created_ms == record.created_ms {
                return Ok(m.clone());
            }
        }
        let compiled = Arc::new(CompiledModel::compile(record, None)?);
        self.compiled.insert(record.name.clone(), compiled.clone());
        Ok(compiled)
    }

    /// Every registered model as listed.
    pub fn list(&mut self) -> Result<Vec<ModelInfo>, InferenceActorError> {
        self.store
            .scan_prefix::<ModelRecord>(trees::MODELS, b"")?
            .into_iter()
            .map(|(_, record)| self.compiled(&record).map(|m| m.info.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::inference::{Activation, Layer, Model};
    use crate::inference::{ModelOptions, Scheme};

    fn record(name: &str, created_ms: u64, bias: f32) -> ModelRecord {
        ModelRecord {
            name: name.into(),
            model: Model {
                layers: vec![Layer {
                    weights: vec![vec![1.0, 2.0]],
                    biases: vec![bias],
                    activation: Activation::None,
                }],
            },
            options: ModelOptions::default(),
            created_ms,
        }
    }

    #[test]
    fn models_register_once_replace_on_request_and_recompile_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut registry = Registry::new(store.clone());
        assert_eq!(registry.count(), 0);
        assert_eq!(
            registry.get("m").err().map(|e| e.code()),
            Some("unknown_model")
        );
        let info = register(&store, &record("m", 1, 0.0), false).unwrap();
        assert_eq!(
            (info.scheme, info.inputs, info.outputs),
            (Scheme::Linear, 2, 1)
        );
        let e = register(&store, &record("m", 2, 0.5), false).unwrap_err();
        assert_eq!(e.code(), "duplicate");
        assert_eq!(registry.get("m").unwrap().info.created_ms, 1);
        register(&store, &record("m", 2, 0.5), true).unwrap();
        assert_eq!(registry.get("m").unwrap().info.created_ms, 2);
        assert_eq!(registry.list().unwrap().len(), 1);
        let e = register(&store, &record("a/b", 3, 0.0), false).unwrap_err();
        assert_eq!(e.code(), "bad_input");
        assert_eq!(registry.count(), 1);
    }
}
