//! Configs whose keys depend on the model: a kind with several models (`caption` with
//! `model = "attributes" | "llava"`, ...) declares its config as an enum tagged on `model`,
//! one variant per model, each variant a struct of that model's keys. Validation then
//! refuses a key of another model by name (`plan::kinds`), and the graph's JSON Schema
//! says which keys go with which model (`oneOf`, one branch per model).
//!
//! The enum derives `JsonSchema` with `#[serde(tag = "model", rename_all = "snake_case")]`
//! and `#[schemars(transform = ...)]` calling [`mark_default`], and implements
//! `Deserialize` by calling [`deserialize`] (serde's own tagged enums buffer their keys,
//! which loses the key a wrong value came from, and cannot default the tag):
//!
//! ```ignore
//! impl Tagged for CaptionConfig {
//!     const DEFAULT: &'static str = "attributes";
//!     const MODELS: &'static [&'static str] = &["attributes", "llava"];
//!     fn model<'de, D: Deserializer<'de>>(model: &str, keys: D) -> Result<Self, D::Error> {
//!         match model {
//!             "llava" => LlavaKeys::deserialize(keys).map(Self::Llava),
//!             _ => AttributesKeys::deserialize(keys).map(Self::Attributes),
//!         }
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, MapDeserializer};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The key that picks the model.
pub const TAG: &str = "model";

/// A config enum tagged on [`TAG`], one variant per model.
pub trait Tagged: Sized {
    /// The model of a stage that does not say `model = ...`.
    const DEFAULT: &'static str;
    /// Every model, as written after `model =`.
    const MODELS: &'static [&'static str];
    /// Deserialises the keys of `model` (one of [`Tagged::MODELS`]; the tag is taken out).
    fn model<'de, D: Deserializer<'de>>(model: &str, keys: D) -> Result<Self, D::Error>;
}

/// Deserialises a [`Tagged`] config. When `model` is the first key (as validation passes
/// it) the other keys are read in place, so an error keeps the key it came from;
/// otherwise they are gathered first.
pub fn deserialize<'de, T: Tagged, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(TaggedVisitor::<T>(PhantomData))
}

struct TaggedVisitor<T>(PhantomData<fn() -> T>);

impl<'de, T: Tagged> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a table of keys with `{TAG}` one of {}", T::MODELS.join(", "))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let first: Option<String> = map.next_key()?;
        if first.as_deref() == Some(TAG) {
            let model = map.next_value_seed(ModelSeed::<T>(PhantomData))?;
            return T::model(model, MapAccessDeserializer::new(map));
        }
        let mut keys: Vec<(String, toml::Value)> = Vec::new();
        if let Some(k) = first {
            keys.push((k, map.next_value()?));
        }
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value()?;
            keys.push((k, v));
        }
        let model = match keys.iter().position(|(k, _)| k == TAG) {
            None => T::DEFAULT,
            Some(i) => match keys.remove(i).1 {
                toml::Value::String(s) => known::<T, A::Error>(&s)?,
                other => {
                    return Err(de::Error::invalid_type(
                        de::Unexpected::Other(other.type_str()),
                        &"a model name",
                    ))
                }
            },
        };
        let rest = MapDeserializer::<_, toml::de::Error>::new(keys.into_iter());
        T::model(model, rest).map_err(|e| de::Error::custom(e.message()))
    }
}

/// Reads the value of `model` as one of `T`'s models (so a wrong one is reported at its key).
struct ModelSeed<T>(PhantomData<fn() -> T>);

impl<'de, T: Tagged> de::DeserializeSeed<'de> for ModelSeed<T> {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        let model = String::deserialize(d)?;
        known::<T, D::Error>(&model)
    }
}

/// `model` as one of `T`'s models, or serde's "unknown variant" error.
fn known<T: Tagged, E: de::Error>(model: &str) -> Result<&'static str, E> {
    T::MODELS
        .iter()
        .copied()
        .find(|m| *m == model)
        .ok_or_else(|| E::unknown_variant(model, T::MODELS))
}

/// A schemars transform for a [`Tagged`] enum's schema: in the branch of `T::DEFAULT`,
/// `model` is optional and documented as the default.
pub fn mark_default<T: Tagged>(schema: &mut schemars::Schema) {
    let Some(branches) = schema.get_mut("oneOf").and_then(|b| b.as_array_mut()) else {
        return;
    };
    for b in branches {
        if branch_model(b) != Some(T::DEFAULT) {
            continue;
        }
        if let Some(tag) = b
            .pointer_mut(&format!("/properties/{TAG}"))
            .and_then(|t| t.as_object_mut())
        {
            tag.insert("default".into(), T::DEFAULT.into());
        }
        if let Some(required) = b.get_mut("required").and_then(|r| r.as_array_mut()) {
            required.retain(|k| k != TAG);
        }
    }
}

/// The model of one `oneOf` branch (`properties.model.const`, or a one-name `enum`).
fn branch_model(b: &serde_json::Value) -> Option<&str> {
    let tag = b.get("properties")?.get(TAG)?;
    tag.get("const")
        .and_then(|c| c.as_str())
        .or_else(|| tag.get("enum")?.as_array()?.first()?.as_str())
}

/// What validation needs to know of a kind whose config is [`Tagged`], read from its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Models {
    /// The model used when a stage does not say.
    pub default: String,
    /// Each model's keys (`model` included), models in name order.
    pub keys: BTreeMap<String, Vec<String>>,
}

impl Models {
    /// Reads a tagged config's JSON Schema; `None` for a config that is not tagged on `model`.
    pub fn of_schema(schema: &serde_json::Value) -> Option<Models> {
        let branches = schema.get("oneOf")?.as_array()?;
        let mut keys = BTreeMap::new();
        let mut default = None;
        for b in branches {
            let model = branch_model(b)?;
            if b.pointer(&format!("/properties/{TAG}/default")).is_some() {
                default = Some(model.to_string());
            }
            let mut k = Vec::new();
            collect_keys(b, schema, &mut k);
            k.sort();
            k.dedup();
            keys.insert(model.to_string(), k);
        }
        Some(Models {
            default: default?,
            keys,
        })
    }

    /// The models, other than `model`, that have key `key`.
    pub fn owners_of<'a>(&'a self, key: &'a str, model: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.keys
            .iter()
            .filter(move |(m, k)| m.as_str() != model && k.iter().any(|k| k == key))
            .map(|(m, _)| m.as_str())
    }
}

/// One graph-schema branch per model of a tagged kind schema `ks`: the model and the
/// properties of its keys (`model` included), `$ref`s looked up with `resolve`;
/// `None` for a schema that is not tagged.
pub fn branches(
    ks: &serde_json::Value,
    resolve: &dyn Fn(&str) -> Option<serde_json::Value>,
) -> Option<Vec<(String, serde_json::Map<String, serde_json::Value>)>> {
    let mut out = Vec::new();
    for b in ks.get("oneOf")?.as_array()? {
        let model = branch_model(b)?.to_string();
        let mut props = serde_json::Map::new();
        merge_properties(b, resolve, &mut props);
        out.push((model, props));
    }
    Some(out)
}

/// Properties of a schema node, following `$ref` and `allOf`.
fn merge_properties(
    node: &serde_json::Value,
    resolve: &dyn Fn(&str) -> Option<serde_json::Value>,
    out: &mut serde_json::Map<String, serde_json::Value>,
) {
    if let Some(p) = node.get("properties").and_then(|p| p.as_object()) {
        out.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(target) = node.get("$ref").and_then(|r| r.as_str()).and_then(resolve) {
        merge_properties(&target, resolve, out);
    }
    for all in node.get("allOf").and_then(|a| a.as_array()).into_iter().flatten() {
        merge_properties(all, resolve, out);
    }
}

/// Property names of a schema node, following `$ref` (into `root`'s `$defs`) and `allOf`.
fn collect_keys(node: &serde_json::Value, root: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(p) = node.get("properties").and_then(|p| p.as_object()) {
        out.extend(p.keys().cloned());
    }
    if let Some(r) = node.get("$ref").and_then(|r| r.as_str()) {
        if let Some(target) = r.strip_prefix('#').and_then(|ptr| root.pointer(ptr)) {
            collect_keys(target, root, out);
        }
    }
    for all in node.get("allOf").and_then(|a| a.as_array()).into_iter().flatten() {
        collect_keys(all, root, out);
    }
}

#[cfg(test)]
mod tests {
    use schemars::JsonSchema;
    use serde::{Deserialize, Deserializer};

    use super::{Models, Tagged};

    /// `model = "small"`.
    #[derive(Debug, PartialEq, Deserialize, JsonSchema)]
    struct Small {
        /// Size.
        #[serde(default)]
        size: u32,
    }

    /// `model = "big"`.
    #[derive(Debug, PartialEq, Deserialize, JsonSchema)]
    struct Big {
        /// Layers.
        layers: u32,
    }

    #[derive(Debug, PartialEq, JsonSchema)]
    #[serde(tag = "model", rename_all = "snake_case")]
    #[schemars(transform = super::mark_default::<Config>)]
    enum Config {
        Small(Small),
        Big(Big),
    }

    impl Tagged for Config {
        const DEFAULT: &'static str = "small";
        const MODELS: &'static [&'static str] = &["small", "big"];
        fn model<'de, D: Deserializer<'de>>(model: &str, keys: D) -> Result<Self, D::Error> {
            match model {
                "big" => Big::deserialize(keys).map(Self::Big),
                _ => Small::deserialize(keys).map(Self::Small),
            }
        }
    }

    impl<'de> Deserialize<'de> for Config {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::deserialize(d)
        }
    }

    #[test]
    fn the_model_picks_the_keys_wherever_it_is_written() {
        let parse = |s: &str| toml::from_str::<Config>(s).map_err(|e| e.message().to_string());
        assert_eq!(parse("size = 3"), Ok(Config::Small(Small { size: 3 })));
        assert_eq!(parse("layers = 2\nmodel = \"big\""), Ok(Config::Big(Big { layers: 2 })));
        assert_eq!(parse("model = \"big\"\nlayers = 2"), Ok(Config::Big(Big { layers: 2 })));
        assert_eq!(
            parse("model = \"huge\""),
            Err("unknown variant `huge`, expected `small` or `big`".into())
        );
        assert_eq!(parse("model = \"big\""), Err("missing field `layers`".into()));
        assert_eq!(
            parse("model = 3"),
            Err("invalid type: integer `3`, expected a string".into())
        );
        let json: Config = serde_json::from_value(serde_json::json!({"layers": 4, "model": "big"})).expect("json");
        assert_eq!(json, Config::Big(Big { layers: 4 }));
    }

    #[test]
    fn the_schema_says_each_models_keys_and_the_default() {
        let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("a schema");
        let models = Models::of_schema(&schema).expect("a tagged schema");
        assert_eq!(models.default, "small");
        let keys: Vec<(&str, Vec<&str>)> = models
            .keys
            .iter()
            .map(|(m, k)| (m.as_str(), k.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            keys,
            [("big", vec!["layers", "model"]), ("small", vec!["model", "size"])]
        );
        let branches = schema["oneOf"].as_array().expect("oneOf");
        let small = branches
            .iter()
            .find(|b| b["properties"]["model"].get("default").is_some())
            .expect("default branch");
        assert!(
            !small["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|k| k == "model")),
            "{small}"
        );
        let big = branches
            .iter()
            .find(|b| b["properties"]["model"].get("default").is_none())
            .expect("big branch");
        assert!(
            big["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|k| k == "model")),
            "{big}"
        );
        assert_eq!(models.owners_of("layers", "small").collect::<Vec<_>>(), ["big"]);
    }
}
