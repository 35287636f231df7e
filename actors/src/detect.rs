//! `detect`: the COCO-80 objects of each frame (CenterNet, `dataflow_models::detect`).
//!
//! Adds `objects`: the detections above `score_threshold`, best first, at most
//! `max_objects`, as JSON text `[{"class": "person", "score": 0.61, "box": [x, y, w, h]}]`
//! with boxes in frame pixels (text crosses machines and lands in CSV files as it is;
//! read it back with `dataflow_models::detect::from_json`). A frame with nothing found
//! gets `[]`. The default threshold was measured on photos (BENCHMARKS.md §12).
//! In Multi-SC it runs on the transmitter, before `segment`, so that the captioner can name
//! the main object and the sheet can draw the boxes on the original.
//!
//! Under the reserved `batch = { max, wait_ms }` key the frames of a batch, of any sizes,
//! go through CenterNet in one call (`Detector::detect_batch`; each is resized to 512²
//! anyway) with the same `objects` as one at a time; a frame without an image fails alone.

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
        self.process_batch(vec![input], std::slice::from_mut(out))
            .pop()
            .unwrap_or(Ok(()))
    }

    /// The frames' images in one model call; a frame without a usable image fails alone.
    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        let mut results: Vec<Result<(), StageError>> = Vec::with_capacity(inputs.len());
        let (mut images, mut members) = (Vec::new(), Vec::new());
        for (i, input) in inputs.iter().enumerate() {
            results.push(match input {
                Input::Message { msg, .. } => image_field(msg, "image", &self.stage).map(|img| {
                    images.push(img.to_rgb());
                    members.push(i);
                }),
                Input::Joined(_) => Ok(()),
            });
        }
        let refs: Vec<&image::RgbImage> = images.iter().collect();
        let found = self.model.detect_batch(&refs, self.options);
        for (&i, found) in members.iter().zip(found) {
            let Input::Message { msg, .. } = &inputs[i] else {
                continue;
            };
            results[i] = match found {
                Ok(found) => {
                    self.inference.record(found.inference.as_secs_f64());
                    let mut fields = msg.fields.clone();
                    fields.insert("objects", Value::Text(Arc::from(detect::to_json(&found.objects))));
                    outs[i].emit(msg.derive(fields));
                    Ok(())
                }
                Err(e) => Err(StageError::new(
                    "model",
                    format!("stage `{}`: detection on frame {} failed: {e}", self.stage, msg.id),
                )),
            };
        }
        results
    }
}

impl StageKind for Detect {
    type Config = DetectConfig;
    const NAME: &'static str = "detect";
    const ROLE: Role = Role::Transform;
    /// CenterNet runs the frames of a batch in one call (`Run::process_batch`).
    const BATCH: bool = true;
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

#[cfg(test)]
mod tests {
    use dataflow_engine::{Fields, Image, Outputs};

    use super::*;
    use crate::testkit::input;

    fn sample(name: &str) -> Fields {
        let path = dataflow_models::assets::asset_path(format!("samples/{name}")).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        Fields::new().with("image", Value::Image(Image::from_rgb(img)))
    }

    /// A batch of four sample photos (four sizes) and a frame without an image: that frame
    /// fails alone, and each other frame gets the `objects` it gets on its own.
    #[test]
    fn a_batch_emits_what_one_frame_at_a_time_emits() {
        let model = match dataflow_models::assets::asset_path(detect::CENTERNET) {
            Ok(p) if p.is_file() && dataflow_models::runtime::runtime().is_ok() => p,
            other => {
                assert!(!dataflow_models::assets::assets_required(), "{other:?}");
                println!("skipped: no CenterNet or ONNX Runtime; run scripts/setup-assets");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::testkit::context("detect", "detect", dir.path());
        let cfg: DetectConfig = serde_json::from_value(serde_json::json!({
            "model_path": model, "provider": "cpu", "intra_threads": 1
        }))
        .unwrap();
        let Built::Stage(mut stage) = Detect::build(&cfg, &ctx).unwrap() else {
            panic!("detect is a stage")
        };
        let frames = || {
            vec![
                input(0, sample("astronaut.png")),
                input(1, sample("chelsea.png")),
                input(2, Fields::new().with("name", Value::Text("no image".into()))),
                input(3, sample("coffee.png")),
                input(4, sample("motorcycle_left.png")),
            ]
        };
        let mut outs: Vec<Outputs> = (0..5).map(|_| Outputs::default()).collect();
        let results = stage.process_batch(frames(), &mut outs);
        let missing = results[2].as_ref().unwrap_err();
        assert_eq!(missing.class, "input");
        assert!(missing.message.contains("has no image field `image`"), "{missing}");
        assert_eq!(outs.iter().map(Outputs::len).collect::<Vec<_>>(), [1, 1, 0, 1, 1]);
        for (k, frame) in frames().into_iter().enumerate().filter(|(k, _)| *k != 2) {
            assert!(results[k].is_ok(), "frame {k}: {:?}", results[k]);
            let mut alone = Outputs::default();
            stage.process(frame, &mut alone).unwrap();
            // The frames were made twice: compare what follows their timestamps.
            let fields = |o: &Outputs| {
                let text = format!("{o:?}");
                text[text.find("fields:").unwrap_or(0)..].to_string()
            };
            let (batched, alone) = (fields(&outs[k]), fields(&alone));
            assert_eq!(batched, alone, "frame {k}");
            assert!(
                batched.contains("\\\"class\\\""),
                "frame {k} found something: {batched}"
            );
        }
    }
}
