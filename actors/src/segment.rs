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

use dataflow_engine::{
    BuildContext, Built, Fields, Image, Input, OutPort, Outputs, Ports, Rect, Role, Stage, StageError, StageKind, Value,
};
use dataflow_models::fcn::{self, Fcn};
use dataflow_models::isnet::{self, Isnet};
use dataflow_models::provider::SessionOptions;
use dataflow_monitoring::names;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::{image_field, model_file};

/// Segmentation models.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SegmentModel {
    /// ISNet general-use (offline tier, from the set-up's assets).
    Isnet,
    /// FCN-ResNet50, PASCAL VOC classes (paper tier, exported by `models/export/fcn.py`).
    Fcn,
}

/// ISNet exports shipped by the set-up.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IsnetVariant {
    /// fp32, 88 MB.
    Medium,
    /// uint8 dynamically quantised, 44 MB.
    Small,
}

/// Keys of `segment`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SegmentConfig {
    /// Which segmentation model.
    #[serde(default = "default_model")]
    pub model: SegmentModel,
    /// ISNet export to use.
    #[serde(default = "default_variant")]
    pub variant: IsnetVariant,
    /// A model file to use instead of the set-up's asset (ISNet).
    #[serde(default)]
    pub model_path: Option<PathBuf>,
    /// The FCN export folder (default `assets/models/fcn`).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// FCN: shorter side the frame is resized to before the model (default: the export's
    /// preset, 520 px for torchvision's weights; 0 keeps the frame's size).
    #[serde(default)]
    pub resize: Option<u32>,
    /// ONNX Runtime session options (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

fn default_model() -> SegmentModel {
    SegmentModel::Isnet
}
fn default_variant() -> IsnetVariant {
    IsnetVariant::Medium
}

impl SegmentConfig {
    fn fcn_dir(&self, ctx: &BuildContext) -> Result<PathBuf, StageError> {
        let explicit = self.model_dir.as_deref().map(|d| ctx.resolve(d));
        fcn::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("segment model = \"fcn\": {e}")))
    }

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
}

/// What both segmenters give the stage.
struct Found {
    mask: image::GrayImage,
    object: Option<isnet::ObjectSlice>,
    label: Option<String>,
    inference: std::time::Duration,
}

impl Segmenter {
    fn segment(&mut self, img: &image::RgbImage) -> Result<Found, dataflow_models::error::ModelError> {
        Ok(match self {
            Segmenter::Isnet(m) => {
                let seg = m.segment(img)?;
                Found {
                    mask: seg.mask,
                    object: seg.object,
                    label: None,
                    inference: seg.inference,
                }
            }
            Segmenter::Fcn(m) => {
                let seg = m.segment(img)?;
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
            }
        })
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

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = image_field(&msg, "image", &self.stage)?.to_rgb();
        let seg = self
            .model
            .segment(&img)
            .map_err(|e| StageError::new("model", format!("segmentation of frame {} failed: {e}", msg.id)))?;
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
        out.send(0, msg.derive(fields));
        out.send(1, msg.derive(slice_fields));
        Ok(())
    }
}

impl StageKind for Segment {
    type Config = SegmentConfig;
    const NAME: &'static str = "segment";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Segments the main object: mask, object slice and its box (ISNet), plus its VOC label (FCN).";

    fn ports(c: &Self::Config) -> Ports {
        let (out, slice): (&[&str], &[&str]) = match c.model {
            SegmentModel::Isnet => (&["mask", "frame_size"], &["frame_size"]),
            SegmentModel::Fcn => (&["mask", "frame_size", "label"], &["frame_size", "label"]),
        };
        Ports {
            outputs: vec![OutPort::passing("out", out), OutPort::fresh("slice", slice)],
            requires: vec!["image".into()],
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        let found = match c.model {
            SegmentModel::Isnet => model_file(c.model_path.as_deref(), c.relative(), ctx).map(|_| ()),
            SegmentModel::Fcn => c.fcn_dir(ctx).map(|_| ()),
        };
        match found {
            Ok(()) => Vec::new(),
            Err(e) => vec![e.message],
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let model_err = |e: dataflow_models::error::ModelError| StageError::new("model", e.to_string());
        let (model, name, path, provider) = match c.model {
            SegmentModel::Isnet => {
                let path = model_file(c.model_path.as_deref(), c.relative(), ctx)?;
                let m = Isnet::load(&path, &c.session).map_err(model_err)?;
                let provider = m.provider();
                (Segmenter::Isnet(m), "isnet", path, provider)
            }
            SegmentModel::Fcn => {
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
        })))
    }
}
