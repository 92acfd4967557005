//! Where values come from: the `FHENODE__SECTION__KEY` environment source, and the provenance
//! of each value that error messages name.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use ::config::{Environment, Source, Value, ValueKind};

use super::*;

/// `FHENODE__SECTION__KEY` variables. Values stay strings (the `config` crate parses numbers
/// and booleans when deserializing), so a token such as `0123…` or `1e10…` reaches us verbatim;
/// the list keys are split on commas, blanks dropped, so an empty value means an empty list.
#[derive(Clone, Debug)]
pub(super) struct EnvSource(Environment);

impl EnvSource {
    pub(super) fn new(vars: Option<HashMap<String, String>>) -> Self {
        EnvSource(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .source(vars),
        )
    }
}

impl Source for EnvSource {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<::config::Map<String, Value>, ::config::ConfigError> {
        let mut vars = self.0.collect()?;
        vars.retain(|key, _| !key.is_empty());
        for key in LIST_KEYS {
            if let Some(value) = vars.get_mut(key) {
                if let ValueKind::String(text) = &value.kind {
                    let origin = value.origin().map(str::to_owned);
                    let items: Vec<Value> = text
                        .split(',')
                        .map(str::trim)
                        .filter(|item| !item.is_empty())
                        .map(|item| Value::new(origin.as_ref(), item))
                        .collect();
                    *value = Value::new(origin.as_ref(), ValueKind::Array(items));
                }
            }
        }
        Ok(vars)
    }
}

/// The environment variable that sets `key` (`p2p.listen` => `FHENODE__P2P__LISTEN`).
pub fn env_var_name(key: &str) -> String {
    let key = key.split('[').next().unwrap_or(key);
    let mut name = String::from(ENV_PREFIX);
    for part in key.split('.') {
        name.push_str(ENV_SEPARATOR);
        name.push_str(&part.to_ascii_uppercase());
    }
    name
}

/// Where each value of a load came from, to say so in error messages.
pub(super) struct Provenance {
    pub(super) layered: ::config::Config,
    /// The file read, if any: every value whose origin is not the environment came from it.
    pub(super) file: Option<PathBuf>,
    pub(super) cli: HashSet<&'static str>,
}

impl Provenance {
    fn origin(&self, key: &str) -> Option<String> {
        if self.cli.contains(key) {
            return Some("the command line".to_owned());
        }
        // `Config::get` would deserialize the value and lose its origin; walk the tree instead.
        let path = key.split('[').next().unwrap_or(key);
        let mut value = &self.layered.cache;
        for part in path.split('.') {
            match &value.kind {
                ValueKind::Table(table) => value = table.get(part)?,
                _ => return None,
            }
        }
        match (value.origin()?, &self.file) {
            ("the environment", _) => Some(format!("environment variable {}", env_var_name(key))),
            (_, Some(file)) => Some(format!("`{}`", file.display())),
            (other, None) => Some(other.to_owned()),
        }
    }

    /// Appends to an `Invalid` error the layer that set its key, where one did.
    pub(super) fn annotate(&self, error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Invalid { key, reason } => match self.origin(&key) {
                Some(origin) => ConfigError::Invalid {
                    reason: format!("{reason} (set by {origin})"),
                    key,
                },
                None => ConfigError::Invalid { key, reason },
            },
            other => other,
        }
    }

    pub(super) fn check_unknown_keys(&self) -> Result<(), ConfigError> {
        let ValueKind::Table(root) = &self.layered.cache.kind else {
            return Ok(());
        };
        let mut unknown: Vec<(String, &'static str, &'static [&'static str])> = Vec::new();
        for (section, known) in schema() {
            let table = if section.is_empty() {
                root
            } else {
                match root.get(section).map(|v| &v.kind) {
                    Some(ValueKind::Table(table)) => table,
                    _ => continue,
                }
            };
            for key in table.keys() {
                if !known.contains(&key.as_str()) {
                    let full = if section.is_empty() {
                        key.clone()
                    } else {
                        format!("{section}.{key}")
                    };
                    unknown.push((full, section, known));
                }
            }
        }
        unknown.sort_by(|a, b| a.0.cmp(&b.0));
        match unknown.into_iter().next() {
            None => Ok(()),
            Some((key, section, known)) => {
                let scope = if section.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in [{section}]")
                };
                Err(invalid(
                    &key,
                    format!("unknown key; the keys {scope} are: {}", known.join(", ")),
                ))
            }
        }
    }
}

/// Maps a `config` crate error to ours: `Invalid` where it names a key, else `Load`.
pub(super) fn from_config_error(error: ::config::ConfigError) -> ConfigError {
    use ::config::ConfigError as E;
    // The Rust names of the sections must not show through in messages.
    let tidy = |text: String| {
        [
            "struct Config",
            "struct P2pConfig",
            "struct ApiConfig",
            "struct AggregationConfig",
            "struct InferenceConfig",
            "struct StoreConfig",
            "struct LogConfig",
        ]
        .iter()
        .fold(text, |text, name| text.replace(name, "a table"))
    };
    match error {
        E::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => ConfigError::Invalid {
            reason: tidy(format!("invalid type: {unexpected}, expected {expected}")),
            key,
        },
        E::At {
            error,
            key: Some(key),
            ..
        } => ConfigError::Invalid {
            reason: tidy(error.to_string()),
            key,
        },
        E::NotFound(key) => ConfigError::Invalid {
            key,
            reason: "missing".to_owned(),
        },
        other => ConfigError::Load(tidy(other.to_string())),
    }
}
