//! `caption`: a short text per tile (or per frame).
//!
//! `model = "attributes"` (offline tier) describes a tile from its pixels and its
//! part of the object mask: where the tile is, whether the main object is in it,
//! its colours, size and position, and the background's colours and brightness.
//! Deterministic, plain dictionary words, never empty. A message without a
//! `tile` field is described as a whole image (the single-text baseline).
//! When the frame went through `detect` (field `objects`, with the segmenter's `box`),
//! the caption names the main object's COCO class and the other objects in the tile
//! (`dataflow_models::attributes::named_in_tile`).

use std::path::PathBuf;
use std::sync::Arc;

use dataflow_engine::tagged::Tagged;
use dataflow_engine::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
use dataflow_engine::{Field, FieldType};
use dataflow_models::attributes::{describe_tile_named, named_in_tile, Named, TilePosition};
use dataflow_models::detect;
use dataflow_models::isnet::BBox;
use dataflow_models::llava::{self, GenerateOptions, Llava};
use dataflow_models::provider::SessionOptions;
use dataflow_models::textgen::Decoding;
use dataflow_monitoring::names;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::util::image_field;

/// Keys of `caption`, by model.
#[derive(Debug, JsonSchema)]
#[serde(tag = "model", rename_all = "snake_case")]
#[schemars(transform = dataflow_engine::tagged::mark_default::<CaptionConfig>)]
pub enum CaptionConfig {
    /// Deterministic describer of colours, brightness and the object mask (offline tier; the default).
    Attributes(AttributesKeys),
    /// LLaVA-Interleave-Qwen-0.5B (paper tier, exported by `models/export/llava.py`).
    Llava(LlavaKeys),
}

impl Tagged for CaptionConfig {
    const DEFAULT: &'static str = "attributes";
    const MODELS: &'static [&'static str] = &["attributes", "llava"];
    fn model<'de, D: Deserializer<'de>>(model: &str, keys: D) -> Result<Self, D::Error> {
        match model {
            "llava" => LlavaKeys::deserialize(keys).map(Self::Llava),
            _ => AttributesKeys::deserialize(keys).map(Self::Attributes),
        }
    }
}

impl<'de> Deserialize<'de> for CaptionConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        dataflow_engine::tagged::deserialize(d)
    }
}

/// Keys of `model = "attributes"`: none.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AttributesKeys {}

/// Keys of `model = "llava"`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct LlavaKeys {
    /// The export folder (default `assets/models/llava`).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// The question asked about each tile (default: the paper's query).
    #[serde(default)]
    pub query: Option<String>,
    /// Most new tokens per caption.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// `{ mode = "greedy" }` (default) or `{ mode = "sample", temperature = 0.7,
    /// top_k = 50, top_p = 0.9 }`; sampling is seeded from the graph seed, frame and tile.
    #[serde(default)]
    pub decoding: Decoding,
    /// ONNX Runtime session options (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

fn default_max_new_tokens() -> usize {
    48
}

/// The `caption` kind.
pub struct Caption;

struct Run {
    stage: String,
}

/// LLaVA captions of one replica.
struct LlavaRun {
    model: Llava,
    stage: String,
    query: String,
    options: GenerateOptions,
    seed: u64,
    inference: metrics::Histogram,
    /// `dataflow_model_host_bytes_total` and `dataflow_model_steps_total` of this model.
    host_bytes: metrics::Counter,
    steps: metrics::Counter,
}

impl LlavaRun {
    /// The tile of `msg` as RGB, or why it cannot be captioned.
    fn tile(&self, msg: &dataflow_engine::Message) -> Result<image::RgbImage, StageError> {
        let img = image_field(msg, "image", &self.stage)?;
        if img.width == 0 || img.height == 0 {
            return Err(StageError::input(format!("frame {}: the tile is empty", msg.id)));
        }
        Ok(img.to_rgb())
    }

    /// The sampling seed of this tile: reproducible per graph seed, frame and tile,
    /// whatever replica or batch draws it.
    fn seed_of(&self, msg: &dataflow_engine::Message) -> u64 {
        match self.options.decoding {
            Decoding::Greedy => 0,
            Decoding::Sample { seed, .. } => seed
                .wrapping_add(self.seed)
                .wrapping_add(msg.id.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_add(u64::from(msg.part.index).wrapping_mul(0xD1B5_4A32_D192_ED03))
                .wrapping_add(u64::from(msg.id.stream) << 48),
        }
    }
}

impl Stage for LlavaRun {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        self.process_batch(vec![input], std::slice::from_mut(out))
            .pop()
            .unwrap_or(Ok(()))
    }

    /// The tiles of the batch in one `generate` (one row each, own seed, own stop); a tile
    /// without an image or an empty one fails alone.
    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        let mut results: Vec<Result<(), StageError>> = Vec::with_capacity(inputs.len());
        let (mut members, mut tiles, mut seeds) = (Vec::new(), Vec::new(), Vec::new());
        for (i, input) in inputs.iter().enumerate() {
            let Input::Message { msg, .. } = input else {
                results.push(Ok(()));
                continue;
            };
            match self.tile(msg) {
                Ok(rgb) => {
                    members.push(i);
                    tiles.push(rgb);
                    seeds.push(self.seed_of(msg));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if members.is_empty() {
            return results;
        }
        let refs: Vec<&image::RgbImage> = tiles.iter().collect();
        let gen = self.model.generate_seeded(&refs, &self.query, &self.options, &seeds);
        let gen = match gen {
            Ok(gen) => gen,
            Err(e) => {
                for &i in &members {
                    let id = inputs[i].frame();
                    results[i] = Err(StageError::new("model", format!("captioning frame {id} failed: {e}")));
                }
                return results;
            }
        };
        self.host_bytes.increment(gen.host_bytes);
        self.steps.increment(gen.decode_steps as u64);
        // Each tile's share of the batch's model time.
        let share = (gen.prefill + gen.decode).as_secs_f64() / members.len() as f64;
        let mut captions = gen.captions.into_iter();
        for &i in &members {
            let Input::Message { msg, .. } = &inputs[i] else {
                continue;
            };
            self.inference.record(share);
            let text = captions.next().map(|c| c.text).unwrap_or_default();
            let mut fields = msg.fields.clone();
            fields.insert("text", Value::Text(Arc::from(text.as_str())));
            outs[i].emit(msg.derive(fields));
        }
        results
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = image_field(&msg, "image", &self.stage)?;
        let rows = msg.fields.number("grid_rows").unwrap_or(1.0).max(1.0) as usize;
        let cols = msg.fields.number("grid_cols").unwrap_or(1.0).max(1.0) as usize;
        let pos = TilePosition {
            index: msg.part.index as usize,
            rows,
            cols,
        };
        let text = if img.width == 0 || img.height == 0 {
            format!("{}: this part of the image is empty.", pos.words())
        } else {
            let rgb = img.to_rgb();
            let mask = msg
                .fields
                .image("mask")
                .filter(|m| (m.width, m.height) == (img.width, img.height))
                .map(|m| m.to_gray());
            let named = named_objects(&msg, (img.width, img.height), &self.stage);
            if msg.fields.get("tile").is_some() {
                describe_tile_named(&rgb, mask.as_ref(), pos, &named)
            } else {
                describe_tile_named(&rgb, mask.as_ref(), TilePosition::WHOLE, &named)
            }
        };
        let mut fields = msg.fields.clone();
        fields.insert("text", Value::Text(Arc::from(text.as_str())));
        out.emit(msg.derive(fields));
        Ok(())
    }
}

impl StageKind for Caption {
    type Config = CaptionConfig;
    const NAME: &'static str = "caption";
    const ROLE: Role = Role::Transform;
    /// LLaVA captions a batch of tiles in one `generate`; `attributes` goes one by one.
    const BATCH: bool = true;
    const DOC: &'static str = "Describes each tile (or frame) in a few English sentences.";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out").with("text", FieldType::Text)],
            requires: vec![Field::new("image", FieldType::Image)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        match c {
            CaptionConfig::Attributes(_) => Vec::new(),
            CaptionConfig::Llava(l) => llava_dir(l, ctx).err().map(|e| vec![e.message]).unwrap_or_default(),
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        match c {
            CaptionConfig::Attributes(_) => Ok(Built::Stage(Box::new(Run {
                stage: ctx.stage.clone(),
            }))),
            CaptionConfig::Llava(c) => {
                if c.max_new_tokens == 0 {
                    return Err(StageError::input("`max_new_tokens` must be at least 1"));
                }
                let dir = llava_dir(c, ctx)?;
                let model = Llava::load(&dir, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
                let labels = [
                    (names::LABEL_MODEL, "llava"),
                    (names::LABEL_PROVIDER, model.provider().as_str()),
                ];
                let inference = metrics::histogram!(names::MODEL_INFERENCE_SECONDS, &labels);
                let host_bytes = metrics::counter!(names::MODEL_HOST_BYTES, &labels);
                let steps = metrics::counter!(names::MODEL_STEPS, &labels);
                tracing::info!(stage = %ctx.stage, replica = ctx.replica, model = %dir.display(), provider = %model.provider(), "captioner loaded");
                Ok(Built::Stage(Box::new(LlavaRun {
                    model,
                    stage: ctx.stage.clone(),
                    query: c.query.clone().unwrap_or_else(|| llava::QUERY.to_string()),
                    options: GenerateOptions {
                        max_new_tokens: c.max_new_tokens,
                        decoding: c.decoding,
                        ..GenerateOptions::default()
                    },
                    seed: ctx.seed,
                    inference,
                    host_bytes,
                    steps,
                })))
            }
        }
    }
}

/// The objects of `detect` this tile's caption names: none without an `objects` field
/// (or with one that cannot be read, which is logged and skipped).
fn named_objects(msg: &dataflow_engine::Message, size: (u32, u32), stage: &str) -> Named {
    let Some(text) = msg.fields.text("objects") else {
        return Named::default();
    };
    let objects = match detect::from_json(text) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(stage = %stage, frame = %msg.id, error = %e, "ignoring unreadable `objects`");
            return Named::default();
        }
    };
    let bbox = |r: dataflow_engine::Rect| BBox {
        x: r.x,
        y: r.y,
        width: r.width,
        height: r.height,
    };
    let tile = msg.fields.rect("tile").map(bbox).unwrap_or(BBox {
        x: 0,
        y: 0,
        width: size.0,
        height: size.1,
    });
    let main_box = msg.fields.rect("box").map(bbox);
    named_in_tile(&objects, main_box.as_ref(), &tile)
}

fn llava_dir(c: &LlavaKeys, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let explicit = c.model_dir.as_deref().map(|d| ctx.resolve(d));
    llava::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("caption model = \"llava\": {e}")))
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::testkit::input;
    use dataflow_engine::{Fields, Image};

    fn tile(w: u32, h: u32) -> Fields {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 90]));
        Fields::new().with("image", Value::Image(Image::from_rgb(img)))
    }

    /// LLaVA over a batch of four tiles where one has no image and one is empty: those two
    /// fail alone as `input` errors, the other two get their caption.
    #[test]
    fn a_llava_batch_with_corrupt_tiles_fails_those_tiles_only() {
        if let Err(e) = dataflow_models::runtime::runtime() {
            assert!(!dataflow_models::assets::assets_required(), "{e}");
            println!("skipped: {e}");
            return;
        }
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/llava");
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::testkit::context("caption", "caption", dir.path());
        let cfg: CaptionConfig = serde_json::from_value(serde_json::json!({
            "model": "llava", "model_dir": fixture, "max_new_tokens": 4, "provider": "cpu", "intra_threads": 1
        }))
        .unwrap();
        let Built::Stage(mut stage) = Caption::build(&cfg, &ctx).unwrap() else {
            panic!("caption is a stage")
        };
        let inputs = vec![
            input(0, tile(40, 30)),
            input(1, Fields::new()),
            input(2, tile(0, 5)),
            input(3, tile(32, 32)),
        ];
        let mut outs: Vec<Outputs> = (0..4).map(|_| Outputs::default()).collect();
        let results = stage.process_batch(inputs, &mut outs);
        assert!(results[0].is_ok() && results[3].is_ok(), "{results:?}");
        let missing = results[1].as_ref().unwrap_err();
        assert_eq!(missing.class, "input");
        assert!(missing.message.contains("has no image field `image`"), "{missing}");
        let empty = results[2].as_ref().unwrap_err();
        assert!(empty.message.contains("the tile is empty"), "{empty}");
        let counts: Vec<usize> = outs.iter().map(Outputs::len).collect();
        assert_eq!(counts, [1, 0, 0, 1]);
    }
}
