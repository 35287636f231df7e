//! `reconstruct`: rebuilds the frame at the receiver (Multi-SC, §II-B).
//!
//! A joining stage: it waits for the corrected texts of a frame and its received
//! object slice (from different inputs) and emits `image`, the reconstruction.
//! `model = "composite"` (offline tier) paints each tile region from the colour and
//! brightness words of its text and places the received object slice at its box.
//! A lost slice or lost texts still give an image (from what arrived).

use std::time::Duration;

use dataflow_engine::{
    BuildContext, Built, Image, Input, OutPort, Outputs, Part, Ports, Role, Stage, StageError, StageKind, Value,
};
use dataflow_models::composite;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::merge_joined;

/// Reconstruction models.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReconstructModel {
    /// Background from the text's colour words, object slice on top (offline tier).
    Composite,
}

/// Keys of `reconstruct`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconstructConfig {
    /// Which reconstructor.
    #[serde(default = "default_model")]
    pub model: ReconstructModel,
    /// How long to wait for the texts or the slice of a frame.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Output size when the frame does not say (`[width, height]`).
    #[serde(default = "default_size")]
    pub size: [u32; 2],
}

fn default_model() -> ReconstructModel {
    ReconstructModel::Composite
}
fn default_timeout() -> u64 {
    30_000
}
fn default_size() -> [u32; 2] {
    [512, 512]
}

/// The `reconstruct` kind.
pub struct Reconstruct;

struct Run {
    size: [u32; 2],
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Joined(j) = input else { return Ok(()) };
        let Some(first) = j.any() else { return Ok(()) };
        let mut fields = merge_joined(&j);
        let (w, h) = match fields.rect("frame_size") {
            Some(r) => (r.width, r.height),
            None => (self.size[0], self.size[1]),
        };
        let texts: Vec<Option<String>> = match (
            fields.texts("corrected"),
            fields.text("corrected"),
            fields.texts("texts"),
        ) {
            (Some(t), _, _) => t.to_vec(),
            (None, Some(t), _) => vec![Some(t.to_string())],
            (None, None, Some(t)) => t.to_vec(),
            _ => Vec::new(),
        };
        let rows = fields.number("grid_rows").unwrap_or(1.0).max(1.0) as usize;
        let cols = fields.number("grid_cols").unwrap_or(1.0).max(1.0) as usize;
        let slice = fields.image("slice").map(|s| s.to_rgba());
        let place = fields.rect("box");
        let object = match (&slice, place) {
            (Some(s), Some(b)) => Some((s, b.x, b.y)),
            _ => None,
        };
        let img = composite::reconstruct(&texts, (rows, cols), (w.max(1), h.max(1)), object);
        fields.insert("image", Value::Image(Image::from_rgb(img)));
        fields.insert("lost_inputs", Value::Number(j.lost() as f64));
        out.emit(first.derive_part(Part::WHOLE, fields));
        Ok(())
    }
}

impl StageKind for Reconstruct {
    type Config = ReconstructConfig;
    const NAME: &'static str = "reconstruct";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Rebuilds the frame from the corrected texts and the received object slice.";

    fn ports(c: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::passing("out", &["image"])],
            requires: vec!["corrected".into()],
            join: Some(Duration::from_millis(c.timeout_ms.max(1))),
            heavy: true,
        }
    }

    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(Run { size: c.size })))
    }
}
