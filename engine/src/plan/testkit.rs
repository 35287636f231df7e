//! Small stage kinds and helpers for the passes' unit tests. The kinds are only
//! validated, never built: validation needs their names, keys and ports.

use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::tables::Header;
use super::{read_stages, table_of, tables, Ctx, Raw};
use crate::graph::GraphSource;
use crate::message::FieldType;
use crate::registry::Registry;
use crate::stage::{
    check_range_opt, BuildContext, Built, Field, KeyProblem, OutPort, Ports, Role, StageError, StageKind,
};

fn never_built() -> Result<Built, StageError> {
    Err(StageError::new("build", "the validation tests' kinds are never built"))
}

/// No keys of its own.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NoKeys {}

/// A source of `image`.
pub(super) struct Src;
impl StageKind for Src {
    type Config = NoKeys;
    const NAME: &'static str = "src";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "frames with an `image`";
    fn ports(_: &NoKeys) -> Ports {
        Ports {
            outputs: vec![OutPort::new("out").with("image", FieldType::Image)],
            ..Ports::default()
        }
    }
    fn build(_: &NoKeys, _: &BuildContext) -> Result<Built, StageError> {
        never_built()
    }
}

/// Keys of `map`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MapConfig {
    /// The field it needs, `name` (of any type) or `name: type` (default `image: image`).
    #[serde(default)]
    need: Option<String>,
    /// A field it adds on `out`, as `name: type`.
    #[serde(default)]
    add: Option<String>,
    /// A fraction.
    #[serde(default)]
    rate: Option<f64>,
}

/// `name: type` as a field; a bare `name` is of any type.
fn field(text: &str) -> Field {
    match text.split_once(':') {
        Some((n, t)) => Field::new(n.trim(), FieldType::parse(t.trim()).expect("a known type")),
        None => Field::new(text, FieldType::Any),
    }
}

/// Needs one field, adds `tile` (and `add`) on `out`, passes its input on `side`.
pub(super) struct Map;
impl StageKind for Map {
    type Config = MapConfig;
    const NAME: &'static str = "map";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "adds a tile";
    fn ports(c: &MapConfig) -> Ports {
        let mut out = OutPort::forwarding("out").with("tile", FieldType::Rect);
        if let Some(f) = c.add.as_deref().map(field) {
            out = out.with(&f.name, f.ty);
        }
        Ports {
            outputs: vec![out, OutPort::forwarding("side")],
            requires: vec![field(c.need.as_deref().unwrap_or("image: image"))],
            ..Ports::default()
        }
    }
    fn validate(c: &MapConfig) -> Vec<KeyProblem> {
        check_range_opt("rate", c.rate, 0.0, 1.0, "(a fraction)")
            .into_iter()
            .collect()
    }
    fn build(_: &MapConfig, _: &BuildContext) -> Result<Built, StageError> {
        never_built()
    }
}

/// Joins `image` and `text` by frame.
pub(super) struct Join;
impl StageKind for Join {
    type Config = NoKeys;
    const NAME: &'static str = "join";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "joins an image and a text";
    fn ports(_: &NoKeys) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out")],
            requires: vec![
                Field::new("image", FieldType::Image),
                Field::new("text", FieldType::Text),
            ],
            join: Some(Duration::from_secs(1)),
            heavy: false,
        }
    }
    fn build(_: &NoKeys, _: &BuildContext) -> Result<Built, StageError> {
        never_built()
    }
}

/// A sink that owns one file.
pub(super) struct Sink;
impl StageKind for Sink {
    type Config = NoKeys;
    const NAME: &'static str = "sink";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "writes one file";
    const ONE_REPLICA: Option<&'static str> = Some("it owns one file");
    fn ports(_: &NoKeys) -> Ports {
        Ports::default()
    }
    fn build(_: &NoKeys, _: &BuildContext) -> Result<Built, StageError> {
        never_built()
    }
}

/// Keys of `noise`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NoiseConfig {
    /// Signal-to-noise ratio.
    #[allow(dead_code)]
    snr_db: f64,
}

/// A channel kind: inherits `[channel] snr_db`.
pub(super) struct Noise;
impl StageKind for Noise {
    type Config = NoiseConfig;
    const NAME: &'static str = "noise";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "adds noise";
    const CHANNEL: bool = true;
    fn ports(_: &NoiseConfig) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out")],
            ..Ports::default()
        }
    }
    fn build(_: &NoiseConfig, _: &BuildContext) -> Result<Built, StageError> {
        never_built()
    }
}

/// Keys of `describe`'s `model = "plain"` (the default).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PlainKeys {
    /// Most words.
    #[allow(dead_code)]
    #[serde(default)]
    words: Option<u32>,
}

/// Keys of `describe`'s `model = "neural"`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NeuralKeys {
    /// Export folder.
    #[allow(dead_code)]
    #[serde(default)]
    model_dir: Option<String>,
    /// Most new tokens.
    #[allow(dead_code)]
    #[serde(default)]
    max_tokens: Option<u32>,
}

/// Keys of `describe`, by model.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(tag = "model", rename_all = "snake_case")]
#[schemars(transform = crate::tagged::mark_default::<DescribeConfig>)]
pub(super) enum DescribeConfig {
    /// Plain words.
    Plain(PlainKeys),
    /// A network.
    Neural(NeuralKeys),
}

impl crate::tagged::Tagged for DescribeConfig {
    const DEFAULT: &'static str = "plain";
    const MODELS: &'static [&'static str] = &["plain", "neural"];
    fn model<'de, D: serde::Deserializer<'de>>(model: &str, keys: D) -> Result<Self, D::Error> {
        match model {
            "neural" => NeuralKeys::deserialize(keys).map(Self::Neural),
            _ => PlainKeys::deserialize(keys).map(Self::Plain),
        }
    }
}

impl<'de> Deserialize<'de> for DescribeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::tagged::deserialize(d)
    }
}

/// A kind with two models, whose keys differ.
pub(super) struct Describe;
impl StageKind for Describe {
    type Config = DescribeConfig;
    const NAME: &'static str = "describe";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "describes a frame";
    fn ports(_: &DescribeConfig) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out").with("text", FieldType::Text)],
            ..Ports::default()
        }
    }
    fn build(_: &DescribeConfig, _: &BuildContext) -> Result<Built, StageError> {
        never_built()
    }
}

/// The kinds above.
pub(super) fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Src>()
        .register::<Map>()
        .register::<Join>()
        .register::<Sink>()
        .register::<Noise>()
        .register::<Describe>();
    r
}

/// A graph from text.
pub(super) fn source(text: &str) -> GraphSource {
    match GraphSource::from_text(Path::new("test.toml"), text.to_string(), &[]) {
        Ok(s) => s,
        Err(d) => panic!("the test graph does not parse: {d}"),
    }
}

/// Runs `f` on a fresh context and returns the messages of the errors it found.
pub(super) fn errors_of<'a>(src: &'a GraphSource, f: impl FnOnce(&mut Ctx<'a>)) -> Vec<String> {
    let mut cx = Ctx::new(src);
    f(&mut cx);
    cx.errors.into_iter().map(|d| d.message).collect()
}

/// Passes 1 to 3: the header, the stages read so far and the `[stage]` table.
pub(super) fn passes_until(cx: &mut Ctx) -> (Header, Vec<Raw>, toml::Table) {
    let header = tables::check(cx, &registry());
    let stages_t = table_of(&cx.src.values, "stage");
    let raws = read_stages(cx, &registry(), &header, &stages_t);
    (header, raws, stages_t)
}
