//! `segment`: the main object of each frame (Multi-SC transmitter, Fig. 1).
//!
//! `model = "isnet"` (offline tier) runs ISNet general-use through ONNX Runtime;
//! `model = "fcn"` (paper tier) runs FCN-ResNet50 (VOC) from `models/export/fcn.py`, whose
//! main object is the largest non-background class: it adds its VOC `label` to both ports.
//! Port `out` carries the frame on with `mask` (saliency, gray), `slice` (the
//! object cut out, RGBA with the mask as alpha), `box` and `frame_size`; port
//! `slice` carries only what the image channel sends: `slice`, `box`,
//! `frame_size` and the frame's `name`. A frame without a salient object has
//! no `slice`/`box` (the caption says so, the receiver rebuilds from text alone).

use std::path::PathBuf;

use dataflow_engine::tagged::Tagged;
use dataflow_engine::{
    BuildContext, Built, Fields, Image, Input, OutPort, Outputs, Ports, Rect, Role, Stage, StageError, StageKind, Value,
};
use dataflow_engine::{Field, FieldType, PortId};
use dataflow_models::fcn::{self, Fcn};
use dataflow_models::isnet::{self, Isnet};
use dataflow_models::provider::SessionOptions;
use dataflow_monitoring::names;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::util::{image_field, model_file};

/// ISNet exports shipped by the set-up.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IsnetVariant {
    /// fp32, 88 MB.
    Medium,
    /// uint8 dynamically quantised, 44 MB.
    Small,
}

/// Keys of `segment`, by model.
#[derive(Debug, JsonSchema)]
#[serde(tag = "model", rename_all = "snake_case")]
#[schemars(transform = dataflow_engine::tagged::mark_default::<SegmentConfig>)]
pub enum SegmentConfig {
    /// ISNet general-use (offline tier, from the set-up's assets; the default).
    Isnet(IsnetKeys),
    /// FCN-ResNet50, PASCAL VOC classes (paper tier, exported by `models/export/fcn.py`).
    Fcn(FcnKeys),
}

impl Tagged for SegmentConfig {
    const DEFAULT: &'static str = "isnet";
    const MODELS: &'static [&'static str] = &["isnet", "fcn"];
    fn model<'de, D: Deserializer<'de>>(model: &str, keys: D) -> Result<Self, D::Error> {
        match model {
            "fcn" => FcnKeys::deserialize(keys).map(Self::Fcn),
            _ => IsnetKeys::deserialize(keys).map(Self::Isnet),
        }
    }
}

impl<'de> Deserialize<'de> for SegmentConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        dataflow_engine::tagged::deserialize(d)
    }
}

/// Keys of `model = "isnet"`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct IsnetKeys {
    /// ISNet export to use.
    #[serde(default = "default_variant")]
    pub variant: IsnetVariant,
    /// A model file to use instead of the set-up's asset.
    #[serde(default)]
    pub model_path: Option<PathBuf>,
    /// ONNX Runtime session options (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

/// Keys of `model = "fcn"`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct FcnKeys {
    /// The FCN export folder (default `assets/models/fcn`).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Shorter side the frame is resized to before the model (default: the export's
    /// preset, 520 px for torchvision's weights; 0 keeps the frame's size).
    #[serde(default)]
    pub resize: Option<u32>,
    /// ONNX Runtime session options (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

fn default_variant() -> IsnetVariant {
    IsnetVariant::Medium
}

impl FcnKeys {
    fn fcn_dir(&self, ctx: &BuildContext) -> Result<PathBuf, StageError> {
        let explicit = self.model_dir.as_deref().map(|d| ctx.resolve(d));
        fcn::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("segment model = \"fcn\": {e}")))
    }
}

impl IsnetKeys {
    fn relative(&self) -> &'static str {
        match self.variant {
            IsnetVariant::Medium => isnet::MEDIUM,
            IsnetVariant::Small => isnet::SMALL,
        }
    }
}

/// The `segment` kind.
pub struct Segment;

/// The loaded segmenter of one replica.
enum Segmenter {
    Isnet(Isnet),
    Fcn(Fcn),
}

struct Run {
    model: Segmenter,
    stage: String,
    inference: metrics::Histogram,
    /// Port `out`: the frame with its mask.
    out: PortId,
    /// Port `slice`: the object slice alone.
    slice: PortId,
}

/// What both segmenters give the stage.
struct Found {
    mask: image::GrayImage,
    object: Option<isnet::ObjectSlice>,
    label: Option<String>,
    inference: std::time::Duration,
}

impl Segmenter {
    /// Segments `images` in one batched run (ISNet: one call; FCN: one call per input size).
    fn segment_batch(&mut self, images: &[&image::RgbImage]) -> Vec<Result<Found, dataflow_models::error::ModelError>> {
        match self {
            Segmenter::Isnet(m) => m
                .segment_batch(images)
                .into_iter()
                .map(|r| {
                    r.map(|seg| Found {
                        mask: seg.mask,
                        object: seg.object,
                        label: None,
                        inference: seg.inference,
                    })
                })
                .collect(),
            Segmenter::Fcn(m) => m
                .segment_batch(images)
                .into_iter()
                .map(|r| {
                    r.map(|seg| {
                        let (object, label) = match seg.main {
                            Some(main) => (Some(main.object), Some(main.label)),
                            None => (None, None),
                        };
                        Found {
                            mask: seg.mask,
                            object,
                            label,
                            inference: seg.inference,
                        }
                    })
                })
                .collect(),
        }
    }
}

fn rect(b: &isnet::BBox) -> Rect {
    Rect {
        x: b.x,
        y: b.y,
        width: b.width,
        height: b.height,
    }
}

impl Run {
    /// The frame's image, or why the frame cannot be segmented.
    fn image_of(&self, input: &Input) -> Result<Option<image::RgbImage>, StageError> {
        match input {
            Input::Message { msg, .. } => Ok(Some(image_field(msg, "image", &self.stage)?.to_rgb())),
            Input::Joined(_) => Ok(None),
        }
    }

    /// Emits the frame with its segmentation on `out` and the slice on `slice`.
    fn emit(&self, msg: &dataflow_engine::Message, img: &image::RgbImage, seg: Found, out: &mut Outputs) {
        self.inference.record(seg.inference.as_secs_f64());
        let size = Rect {
            x: 0,
            y: 0,
            width: img.width(),
            height: img.height(),
        };
        let mut slice_fields = Fields::new().with("frame_size", Value::Rect(size));
        if let Some(n) = msg.fields.get("name") {
            slice_fields.insert("name", n.clone());
        }
        let mut fields = msg.fields.clone();
        fields.insert("mask", Value::Image(Image::from_gray(seg.mask)));
        fields.insert("frame_size", Value::Rect(size));
        if matches!(self.model, Segmenter::Fcn(_)) {
            // The VOC class of the main object; "background" when there is none.
            let label = Value::Text(std::sync::Arc::from(seg.label.as_deref().unwrap_or("background")));
            fields.insert("label", label.clone());
            slice_fields.insert("label", label);
        }
        if let Some(obj) = seg.object {
            let slice = Value::Image(Image::from_rgba(obj.image));
            let b = Value::Rect(rect(&obj.bbox));
            fields.insert("slice", slice.clone());
            fields.insert("box", b.clone());
            slice_fields.insert("slice", slice);
            slice_fields.insert("box", b);
        }
        out.send(self.out, msg.derive(fields));
        out.send(self.slice, msg.derive(slice_fields));
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        self.process_batch(vec![input], std::slice::from_mut(out))
            .pop()
            .unwrap_or(Ok(()))
    }

    /// The frames' images in one batched model run; a frame without a usable image, or one
    /// the model refuses, fails alone.
    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        let mut results: Vec<Result<(), StageError>> = Vec::with_capacity(inputs.len());
        let mut images = Vec::new();
        let mut members = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match self.image_of(input) {
                Ok(Some(img)) => {
                    images.push(img);
                    members.push(i);
                }
                Ok(None) => {}
                Err(e) => results.push(Err(e)),
            }
            if results.len() == i {
                results.push(Ok(()));
            }
        }
        let refs: Vec<&image::RgbImage> = images.iter().collect();
        let found = self.model.segment_batch(&refs);
        for ((&i, img), seg) in members.iter().zip(&images).zip(found) {
            let Input::Message { msg, .. } = &inputs[i] else {
                continue;
            };
            results[i] = match seg {
                Ok(seg) => {
                    self.emit(msg, img, seg, &mut outs[i]);
                    Ok(())
                }
                Err(e) => Err(StageError::new(
                    "model",
                    format!("segmentation of frame {} failed: {e}", msg.id),
                )),
            };
        }
        results
    }
}

impl StageKind for Segment {
    type Config = SegmentConfig;
    const NAME: &'static str = "segment";
    const ROLE: Role = Role::Transform;
    /// ISNet and FCN run a batch of frames in one model call.
    const BATCH: bool = true;
    const DOC: &'static str =
        "Segments the main object: mask, object slice and its box (ISNet), plus its VOC label (FCN).";

    fn ports(c: &Self::Config) -> Ports {
        // `slice` and `box` only when an object was found; `name` on `slice` when the
        // input had one.
        let mut out = OutPort::forwarding("out")
            .with_each(&["mask", "slice"], FieldType::Image)
            .with_each(&["frame_size", "box"], FieldType::Rect);
        let mut slice = OutPort::new("slice")
            .with("slice", FieldType::Image)
            .with_each(&["frame_size", "box"], FieldType::Rect)
            .with("name", FieldType::Text);
        if matches!(c, SegmentConfig::Fcn(_)) {
            out = out.with("label", FieldType::Text);
            slice = slice.with("label", FieldType::Text);
        }
        Ports {
            outputs: vec![out, slice],
            requires: vec![Field::new("image", FieldType::Image)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        let found = match c {
            SegmentConfig::Isnet(c) => model_file(c.model_path.as_deref(), c.relative(), ctx).map(|_| ()),
            SegmentConfig::Fcn(c) => c.fcn_dir(ctx).map(|_| ()),
        };
        match found {
            Ok(()) => Vec::new(),
            Err(e) => vec![e.message],
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let model_err = |e: dataflow_models::error::ModelError| StageError::new("model", e.to_string());
        let (model, name, path, provider) = match c {
            SegmentConfig::Isnet(c) => {
                let path = model_file(c.model_path.as_deref(), c.relative(), ctx)?;
                let m = Isnet::load(&path, &c.session).map_err(model_err)?;
                let provider = m.provider();
                (Segmenter::Isnet(m), "isnet", path, provider)
            }
            SegmentConfig::Fcn(c) => {
                let dir = c.fcn_dir(ctx)?;
                let mut m = Fcn::load(&dir, &c.session).map_err(model_err)?;
                if let Some(side) = c.resize {
                    m = m.with_resize((side > 0).then_some(side));
                }
                let provider = m.provider();
                (Segmenter::Fcn(m), "fcn", dir, provider)
            }
        };
        let inference = metrics::histogram!(names::MODEL_INFERENCE_SECONDS,
            names::LABEL_MODEL => name, names::LABEL_PROVIDER => provider.as_str());
        tracing::info!(stage = %ctx.stage, replica = ctx.replica, model = %path.display(), provider = %provider, "segmenter loaded");
        Ok(Built::Stage(Box::new(Run {
            model,
            stage: ctx.stage.clone(),
            inference,
            out: ctx.output("out")?,
            slice: ctx.output("slice")?,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::input;

    fn image(w: u32, h: u32) -> Fields {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 5) as u8, 200]));
        Fields::new().with("image", Value::Image(Image::from_rgb(img)))
    }

    /// A batch of four frames where one has no image and one an empty image: those two
    /// fail alone (as `input` and `model` errors), the others emit on both ports.
    #[test]
    fn a_batch_with_corrupt_frames_fails_those_frames_only() {
        if let Err(e) = dataflow_models::runtime::runtime() {
            assert!(!dataflow_models::assets::assets_required(), "{e}");
            println!("skipped: {e}");
            return;
        }
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/isnet_like.onnx");
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = crate::testkit::context("segment", "segment", dir.path());
        let cfg: SegmentConfig = serde_json::from_value(serde_json::json!({
            "model": "isnet", "model_path": fixture, "provider": "cpu", "intra_threads": 1
        }))
        .unwrap();
        ctx.outputs = Segment::ports(&cfg).outputs;
        let Built::Stage(mut stage) = Segment::build(&cfg, &ctx).unwrap() else {
            panic!("segment is a stage")
        };
        let inputs = vec![
            input(0, image(64, 48)),
            input(1, Fields::new().with("name", Value::Text("no image".into()))),
            input(2, image(0, 0)),
            input(3, image(32, 40)),
        ];
        let mut outs: Vec<Outputs> = (0..4).map(|_| Outputs::default()).collect();
        let results = stage.process_batch(inputs, &mut outs);
        assert_eq!(results.len(), 4);
        assert!(results[0].is_ok() && results[3].is_ok(), "{results:?}");
        let missing = results[1].as_ref().unwrap_err();
        assert_eq!(missing.class, "input");
        assert!(missing.message.contains("has no image field `image`"), "{missing}");
        let empty = results[2].as_ref().unwrap_err();
        assert_eq!(empty.class, "model");
        assert!(empty.message.contains("empty image"), "{empty}");
        let counts: Vec<usize> = outs.iter().map(Outputs::len).collect();
        assert_eq!(counts, [2, 0, 0, 2]);
    }
}
