//! `detect`: the COCO-80 objects of each frame (CenterNet, `dataflow_models::detect`).
//!
//! Adds `objects`: the detections above `score_threshold`, best first, at most
//! `max_objects`, as JSON text `[{"class": "person", "score": 0.61, "box": [x, y, w, h]}]`
//! with boxes in frame pixels (text crosses machines and lands in CSV files as it is;
//! read it back with `dataflow_models::detect::from_json`). A frame with nothing found
//! gets `[]`. The default threshold was measured on photos (BENCHMARKS.md §12).
//! In Multi-SC it runs on the transmitter, before `segment`, so that the captioner can name
//! the main object and the sheet can draw the boxes on the original.

use std::path::PathBuf;
use std::sync::Arc;

use dataflow_engine::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
use dataflow_engine::{Field, FieldType};
use dataflow_models::detect::{self, DetectOptions, Detector};
use dataflow_models::provider::SessionOptions;
use dataflow_monitoring::names;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::{image_field, model_file};

/// Keys of `detect`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DetectConfig {
    /// Lowest score kept (0–1).
    #[serde(default = "default_threshold")]
    pub score_threshold: f32,
    /// Most objects kept per frame.
    #[serde(default = "default_max_objects")]
    pub max_objects: usize,
    /// A converted CenterNet to use instead of the set-up's asset.
    #[serde(default)]
    pub model_path: Option<PathBuf>,
    /// ONNX Runtime session options (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

fn default_threshold() -> f32 {
    detect::DEFAULT_SCORE_THRESHOLD
}
fn default_max_objects() -> usize {
    detect::DEFAULT_MAX_OBJECTS
}

/// The `detect` kind.
pub struct Detect;

struct Run {
    model: Detector,
    options: DetectOptions,
    stage: String,
    inference: metrics::Histogram,
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = image_field(&msg, "image", &self.stage)?.to_rgb();
        let found = self.model.detect(&img, self.options).map_err(|e| {
            StageError::new(
                "model",
                format!("stage `{}`: detection on frame {} failed: {e}", self.stage, msg.id),
            )
        })?;
        self.inference.record(found.inference.as_secs_f64());
        let mut fields = msg.fields.clone();
        fields.insert("objects", Value::Text(Arc::from(detect::to_json(&found.objects))));
        out.emit(msg.derive(fields));
        Ok(())
    }
}

impl StageKind for Detect {
    type Config = DetectConfig;
    const NAME: &'static str = "detect";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Detects COCO-80 objects (CenterNet): adds `objects` (class, score, box in frame pixels).";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            // `objects`: the detections as JSON text.
            outputs: vec![OutPort::forwarding("out").with("objects", FieldType::Text)],
            requires: vec![Field::new("image", FieldType::Image)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = options(c) {
            problems.push(e.message);
        }
        if let Err(e) = model_file(c.model_path.as_deref(), detect::CENTERNET, ctx) {
            problems.push(e.message);
        }
        problems
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let options = options(c)?;
        let path = model_file(c.model_path.as_deref(), detect::CENTERNET, ctx)?;
        let model = Detector::load(&path, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
        let inference = metrics::histogram!(names::MODEL_INFERENCE_SECONDS,
            names::LABEL_MODEL => "centernet", names::LABEL_PROVIDER => model.provider().as_str());
        tracing::info!(stage = %ctx.stage, replica = ctx.replica, model = %path.display(), provider = %model.provider(), "detector loaded");
        Ok(Built::Stage(Box::new(Run {
            model,
            options,
            stage: ctx.stage.clone(),
            inference,
        })))
    }
}

fn options(c: &DetectConfig) -> Result<DetectOptions, StageError> {
    if !(0.0..=1.0).contains(&c.score_threshold) {
        return Err(StageError::input(format!(
            "`score_threshold` must be between 0 and 1, got {}",
            c.score_threshold
        )));
    }
    Ok(DetectOptions {
        score_threshold: c.score_threshold,
        max_objects: c.max_objects,
    })
}
