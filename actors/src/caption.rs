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

use dataflow_engine::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
use dataflow_models::attributes::{describe_tile_named, named_in_tile, Named, TilePosition};
use dataflow_models::detect;
use dataflow_models::isnet::BBox;
use dataflow_models::llava::{self, GenerateOptions, Llava};
use dataflow_models::provider::SessionOptions;
use dataflow_models::textgen::Decoding;
use dataflow_monitoring::names;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::image_field;

/// Captioning models.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CaptionModel {
    /// Deterministic describer of colours, brightness and the object mask (offline tier).
    Attributes,
    /// LLaVA-Interleave-Qwen-0.5B (paper tier, exported by `models/export/llava.py`).
    Llava,
}

/// Keys of `caption`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CaptionConfig {
    /// Which captioner.
    #[serde(default = "default_model")]
    pub model: CaptionModel,
    /// LLaVA: the export folder (default `assets/models/llava`).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// LLaVA: the question asked about each tile (default: the paper's query).
    #[serde(default)]
    pub query: Option<String>,
    /// LLaVA: most new tokens per caption.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// LLaVA: `{ mode = "greedy" }` (default) or `{ mode = "sample", temperature = 0.7,
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

fn default_model() -> CaptionModel {
    CaptionModel::Attributes
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
}

impl Stage for LlavaRun {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = image_field(&msg, "image", &self.stage)?;
        if img.width == 0 || img.height == 0 {
            return Err(StageError::input(format!("frame {}: the tile is empty", msg.id)));
        }
        let rgb = img.to_rgb();
        let mut options = self.options;
        if let Decoding::Sample { seed, .. } = &mut options.decoding {
            // Reproducible per graph seed, frame and tile, whatever replica draws.
            *seed = seed
                .wrapping_add(self.seed)
                .wrapping_add(msg.id.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_add(u64::from(msg.part.index).wrapping_mul(0xD1B5_4A32_D192_ED03))
                .wrapping_add(u64::from(msg.id.stream) << 48);
        }
        let gen = self
            .model
            .generate(&[&rgb], &self.query, &options)
            .map_err(|e| StageError::new("model", format!("captioning frame {} failed: {e}", msg.id)))?;
        self.inference.record((gen.prefill + gen.decode).as_secs_f64());
        let text = gen.captions.into_iter().next().map(|c| c.text).unwrap_or_default();
        let mut fields = msg.fields.clone();
        fields.insert("text", Value::Text(Arc::from(text.as_str())));
        out.emit(msg.derive(fields));
        Ok(())
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
    const DOC: &'static str = "Describes each tile (or frame) in a few English sentences.";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::passing("out", &["text"])],
            requires: vec!["image".into()],
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        match c.model {
            CaptionModel::Attributes => Vec::new(),
            CaptionModel::Llava => llava_dir(c, ctx).err().map(|e| vec![e.message]).unwrap_or_default(),
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        match c.model {
            CaptionModel::Attributes => Ok(Built::Stage(Box::new(Run {
                stage: ctx.stage.clone(),
            }))),
            CaptionModel::Llava => {
                if c.max_new_tokens == 0 {
                    return Err(StageError::input("`max_new_tokens` must be at least 1"));
                }
                let dir = llava_dir(c, ctx)?;
                let model = Llava::load(&dir, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
                let inference = metrics::histogram!(names::MODEL_INFERENCE_SECONDS,
                    names::LABEL_MODEL => "llava", names::LABEL_PROVIDER => model.provider().as_str());
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

fn llava_dir(c: &CaptionConfig, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let explicit = c.model_dir.as_deref().map(|d| ctx.resolve(d));
    llava::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("caption model = \"llava\": {e}")))
}
