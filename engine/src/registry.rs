//! The registry of stage kinds, type-erased so a graph can name any of them.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::value::MapDeserializer;

use crate::stage::{BuildContext, Built, KeyProblem, Ports, Role, StageError, StageKind};
use crate::sweep_role::SweepRole;
use crate::tagged::{Models, TAG};

/// A config that has been deserialised for its kind; it can describe its ports and build replicas.
pub trait Configured: Send + Sync {
    /// Ports for this config.
    fn ports(&self) -> Ports;
    /// Values of the kind's own keys that validation refuses.
    fn validate(&self) -> Vec<KeyProblem> {
        Vec::new()
    }
    /// Resource checks (second validation pass).
    fn check(&self, ctx: &BuildContext) -> Vec<String>;
    /// Builds one replica.
    fn build(&self, ctx: &BuildContext) -> Result<Built, StageError>;
    /// What stands in for what, for a sweep's report ([`StageKind::describe`]).
    fn describe(&self) -> Option<String> {
        None
    }
}

/// Why a stage's keys did not deserialise.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("key `{path}`: ") })]
pub struct ConfigError {
    /// Dotted path of the offending key inside the stage (empty when unknown).
    pub path: String,
    /// What serde said.
    pub message: String,
}

/// A stage kind with its config type erased.
pub trait ErasedKind: Send + Sync {
    /// Kind name.
    fn name(&self) -> &'static str;
    /// Role.
    fn role(&self) -> Role;
    /// One-line description.
    fn doc(&self) -> &'static str;
    /// Whether `[channel]` defaults apply.
    fn channel(&self) -> bool;
    /// Why the kind runs as one replica only, if it does ([`StageKind::ONE_REPLICA`]).
    fn one_replica(&self) -> Option<&'static str>;
    /// Whether the kind takes the reserved `batch` key ([`StageKind::BATCH`]).
    fn batch(&self) -> bool;
    /// The part its stages play in `dataflow sweep` ([`StageKind::SWEEP`]).
    fn sweep(&self) -> SweepRole;
    /// JSON Schema of the kind's own keys.
    fn schema(&self) -> serde_json::Value;
    /// Names of the kind's own keys (of every model, for a [`crate::tagged::Tagged`] config).
    fn keys(&self) -> Vec<String>;
    /// Each model's keys, for a kind whose config is [`crate::tagged::Tagged`] on `model`.
    fn models(&self) -> Option<Models>;
    /// Deserialises the kind's keys strictly.
    fn configure(&self, table: toml::Table) -> Result<Arc<dyn Configured>, ConfigError>;
}

struct Adapter<K>(PhantomData<fn() -> K>);

struct ConfiguredAdapter<K: StageKind> {
    config: K::Config,
    /// The model of a tagged config.
    model: Option<String>,
}

impl<K: StageKind> Configured for ConfiguredAdapter<K> {
    fn ports(&self) -> Ports {
        K::ports(&self.config)
    }
    fn validate(&self) -> Vec<KeyProblem> {
        K::validate(&self.config)
    }
    fn check(&self, ctx: &BuildContext) -> Vec<String> {
        K::check(&self.config, ctx)
    }
    fn build(&self, ctx: &BuildContext) -> Result<Built, StageError> {
        K::build(&self.config, ctx)
    }
    fn describe(&self) -> Option<String> {
        K::describe(&self.config).or_else(|| self.model.clone())
    }
}

impl<K: StageKind> ErasedKind for Adapter<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn role(&self) -> Role {
        K::ROLE
    }
    fn doc(&self) -> &'static str {
        K::DOC
    }
    fn channel(&self) -> bool {
        K::CHANNEL
    }
    fn one_replica(&self) -> Option<&'static str> {
        K::ONE_REPLICA
    }
    fn batch(&self) -> bool {
        K::BATCH
    }
    fn sweep(&self) -> SweepRole {
        K::SWEEP
    }
    fn schema(&self) -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(K::Config)).unwrap_or_default()
    }
    fn keys(&self) -> Vec<String> {
        let schema = self.schema();
        if let Some(models) = Models::of_schema(&schema) {
            let all: BTreeSet<String> = models.keys.into_values().flatten().collect();
            return all.into_iter().collect();
        }
        schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }
    fn models(&self) -> Option<Models> {
        Models::of_schema(&self.schema())
    }
    fn configure(&self, table: toml::Table) -> Result<Arc<dyn Configured>, ConfigError> {
        let (result, model) = match self.models() {
            None => (
                serde_path_to_error::deserialize::<_, K::Config>(toml::Value::Table(table)),
                None,
            ),
            Some(models) => {
                let model = match table.get(TAG) {
                    Some(toml::Value::String(m)) => m.clone(),
                    _ => models.default.clone(),
                };
                let de = tag_first(table, &models.default);
                (serde_path_to_error::deserialize::<_, K::Config>(de), Some(model))
            }
        };
        match result {
            Ok(config) => Ok(Arc::new(ConfiguredAdapter::<K> { config, model })),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                Err(ConfigError {
                    path,
                    message: e.into_inner().message().to_string(),
                })
            }
        }
    }
}

/// The keys of a tagged config with `model` first (the default when the stage does not
/// say), so [`crate::tagged::deserialize`] reads the others in place and an error keeps
/// its key.
fn tag_first(
    mut table: toml::Table,
    default: &str,
) -> MapDeserializer<'static, std::vec::IntoIter<(String, toml::Value)>, toml::de::Error> {
    let model = table
        .remove(TAG)
        .unwrap_or_else(|| toml::Value::String(default.to_string()));
    let mut keys = vec![(TAG.to_string(), model)];
    keys.extend(table);
    MapDeserializer::new(keys.into_iter())
}

/// Every stage kind a graph may name.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn ErasedKind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers kind `K` (replacing one of the same name).
    pub fn register<K: StageKind>(&mut self) -> &mut Self {
        self.kinds.insert(K::NAME, Arc::new(Adapter::<K>(PhantomData)));
        self
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ErasedKind>> {
        self.kinds.get(name)
    }

    /// All kinds in name order.
    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn ErasedKind>> {
        self.kinds.values()
    }

    /// Kind names in name order.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::ConfigError;

    #[test]
    fn a_config_error_names_its_key_as_validation_does() {
        let e = ConfigError {
            path: "snr_db".into(),
            message: "invalid type: string \"loud\", expected f64".into(),
        };
        assert_eq!(
            e.to_string(),
            "key `snr_db`: invalid type: string \"loud\", expected f64"
        );
        let whole = ConfigError {
            path: String::new(),
            message: "missing field `snr_db`".into(),
        };
        let as_error: &dyn std::error::Error = &whole;
        assert_eq!(as_error.to_string(), "missing field `snr_db`");
    }
}
