//! `caption`: a short text per tile (or per frame).
//!
//! `model = "attributes"` (offline tier) describes a tile from its pixels and its
//! part of the object mask: where the tile is, whether the main object is in it,
//! its colours, size and position, and the background's colours and brightness.
//! Deterministic, plain dictionary words, never empty. A message without a
//! `tile` field is described as a whole image (the single-text baseline).

use std::sync::Arc;

use dataflow_engine::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
use dataflow_models::attributes::{describe_image, describe_tile, TilePosition};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::image_field;

/// Captioning models.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CaptionModel {
    /// Deterministic describer of colours, brightness and the object mask (offline tier).
    Attributes,
}

/// Keys of `caption`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptionConfig {
    /// Which captioner.
    #[serde(default = "default_model")]
    pub model: CaptionModel,
}

fn default_model() -> CaptionModel {
    CaptionModel::Attributes
}

/// The `caption` kind.
pub struct Caption;

struct Run {
    stage: String,
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
            if msg.fields.get("tile").is_some() {
                describe_tile(&rgb, mask.as_ref(), pos)
            } else {
                describe_image(&rgb, mask.as_ref())
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

    fn build(_: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(Run {
            stage: ctx.stage.clone(),
        })))
    }
}
