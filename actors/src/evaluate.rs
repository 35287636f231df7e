//! `evaluate`: per-frame quality of the reconstruction and of the text link.
//!
//! A joining stage with two inputs: the reference (the source's frame, first
//! input) and the receiver's output (second input). It adds, per frame:
//! `psnr_db`, `ssim`, `cosine` (pixel cosine similarity), `bleu1`/`bleu4` of the
//! corrected texts against the sent texts and `bleu1_received`/`bleu4_received`
//! of the uncorrected received texts (BLEU with smoothing method 1 of Chen &
//! Cherry 2014, see `dataflow_models::quality`), `ber` over every bit sent for
//! the frame (texts and slice) and `bits_sent`; the reference is kept as `original`.
//!
//! Paper-tier metrics, when configured: `lpips = true` adds `lpips` (LPIPS v0.1 AlexNet, the
//! export of `models/export/lpips.py`, folder `lpips_dir`, default `assets/models/lpips-onnx`).
//! `clip = true` adds `clip_cosine`, the cosine similarity of the CLIP image embeddings
//! (`models/export/clip.py`, folder `clip_dir`, default `assets/models/clip`).
//! A configured metric whose export is missing stops the run before it starts, naming the
//! export command.

use std::path::PathBuf;
use std::time::Duration;

use dataflow_engine::{
    BuildContext, Built, Input, OutPort, Outputs, Part, Ports, Role, Stage, StageError, StageKind, Value,
};
use dataflow_models::clip::{self, ClipImage};
use dataflow_models::lpips::{self, Lpips};
use dataflow_models::provider::SessionOptions;
use dataflow_models::quality;
use dataflow_monitoring::names;
use schemars::JsonSchema;
use serde::Deserialize;

/// Keys of `evaluate`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EvaluateConfig {
    /// How long to wait for the reconstruction of a frame.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Adds `lpips`, the LPIPS v0.1 (AlexNet) distance of the reconstruction to the original.
    #[serde(default)]
    pub lpips: bool,
    /// LPIPS export folder (default `assets/models/lpips-onnx`, made by `models/export/lpips.py`).
    #[serde(default)]
    pub lpips_dir: Option<PathBuf>,
    /// Adds `clip_cosine`, the cosine similarity of the CLIP image embeddings.
    #[serde(default)]
    pub clip: bool,
    /// CLIP export folder (default `assets/models/clip`, made by `models/export/clip.py`).
    #[serde(default)]
    pub clip_dir: Option<PathBuf>,
    /// ONNX Runtime session options of the metric models (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

fn default_timeout() -> u64 {
    60_000
}

/// The `evaluate` kind.
pub struct Evaluate;

struct Run {
    stage: String,
    psnr: metrics::Histogram,
    ssim: metrics::Histogram,
    cosine: metrics::Histogram,
    bleu: metrics::Histogram,
    /// LPIPS session, when `lpips = true`.
    lpips: Option<(Lpips, metrics::Histogram)>,
    /// CLIP image tower, when `clip = true`.
    clip: Option<ClipImage>,
}

fn joined_texts(v: Option<&[Option<String>]>) -> String {
    v.map(|t| t.iter().flatten().cloned().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Joined(j) = input else { return Ok(()) };
        let reference = j.parts.first().and_then(|p| p.first()).and_then(|m| m.as_ref());
        let received = j.parts.get(1).and_then(|p| p.first()).and_then(|m| m.as_ref());
        let (Some(reference), Some(received)) = (reference, received) else {
            return Err(StageError::new(
                "lost",
                format!(
                    "stage `{}`: frame {} lost its {} before evaluation",
                    self.stage,
                    j.id,
                    if reference.is_none() {
                        "reference"
                    } else {
                        "reconstruction"
                    }
                ),
            ));
        };
        let orig = reference
            .fields
            .image("image")
            .ok_or_else(|| StageError::input(format!("frame {}: the reference has no `image`", j.id)))?;
        let recon = received
            .fields
            .image("image")
            .ok_or_else(|| StageError::input(format!("frame {}: the reconstruction has no `image`", j.id)))?;
        let (o, r) = (orig.to_rgb(), recon.to_rgb());
        let mut fields = received.fields.clone();
        let psnr = quality::psnr(&o, &r);
        let ssim = quality::ssim(&o, &r);
        let cosine = quality::pixel_cosine(&o, &r);
        self.psnr.record(psnr);
        self.ssim.record(ssim);
        self.cosine.record(cosine);
        fields.insert("psnr_db", Value::Number(psnr));
        fields.insert("ssim", Value::Number(ssim));
        fields.insert("cosine", Value::Number(cosine));
        if let Some((model, hist)) = &mut self.lpips {
            let d = model
                .distance(&o, &r)
                .map_err(|e| StageError::new("model", format!("frame {}: LPIPS failed: {e}", j.id)))?;
            hist.record(d);
            fields.insert("lpips", Value::Number(d));
        }
        if let Some(model) = &mut self.clip {
            let c = model
                .cosine(&o, &r)
                .map_err(|e| StageError::new("model", format!("frame {}: CLIP failed: {e}", j.id)))?;
            fields.insert("clip_cosine", Value::Number(c));
        }
        let sent = match received.fields.texts("sent_texts") {
            Some(t) => joined_texts(Some(t)),
            None => received.fields.text("sent").unwrap_or_default().to_string(),
        };
        if !sent.is_empty() {
            let corrected = match received.fields.texts("corrected") {
                Some(t) => joined_texts(Some(t)),
                None => received.fields.text("corrected").unwrap_or_default().to_string(),
            };
            let raw = match received.fields.texts("texts") {
                Some(t) => joined_texts(Some(t)),
                None => received.fields.text("text").unwrap_or_default().to_string(),
            };
            let b4 = quality::bleu4(&corrected, &sent);
            self.bleu.record(b4);
            fields.insert("bleu1", Value::Number(quality::bleu1(&corrected, &sent)));
            fields.insert("bleu4", Value::Number(b4));
            fields.insert("bleu1_received", Value::Number(quality::bleu1(&raw, &sent)));
            fields.insert("bleu4_received", Value::Number(quality::bleu4(&raw, &sent)));
        }
        let f = &received.fields;
        let bits = f.number("bits").unwrap_or(0.0) + f.number("slice_bits").unwrap_or(0.0);
        let errors = f.number("bit_errors").unwrap_or(0.0) + f.number("slice_bit_errors").unwrap_or(0.0);
        fields.insert("bits_sent", Value::Number(bits));
        fields.insert("ber", Value::Number(if bits > 0.0 { errors / bits } else { 0.0 }));
        fields.insert("original", Value::Image(orig.clone()));
        out.emit(received.derive_part(Part::WHOLE, fields));
        Ok(())
    }
}

impl StageKind for Evaluate {
    type Config = EvaluateConfig;
    const NAME: &'static str = "evaluate";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "PSNR, SSIM, cosine, BLEU and BER of each frame (inputs: reference, then reconstruction).";

    fn ports(c: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::passing("out", &added(c))],
            requires: vec!["image".into()],
            join: Some(Duration::from_millis(c.timeout_ms.max(1))),
            heavy: true,
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        let mut problems: Vec<String> = two_inputs(ctx).err().map(|e| vec![e.message]).unwrap_or_default();
        if c.lpips {
            problems.extend(lpips_dir(c, ctx).err().map(|e| e.message));
        }
        if c.clip {
            problems.extend(clip_dir(c, ctx).err().map(|e| e.message));
        }
        problems
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        two_inputs(ctx)?;
        let g = ctx.graph.clone();
        let lpips = if c.lpips {
            let dir = lpips_dir(c, ctx)?;
            let model = Lpips::load(&dir, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
            tracing::info!(stage = %ctx.stage, model = %dir.display(), "LPIPS loaded");
            Some((
                model,
                metrics::histogram!(names::QUALITY_LPIPS, names::LABEL_GRAPH => g.clone()),
            ))
        } else {
            None
        };
        let clip = if c.clip {
            let dir = clip_dir(c, ctx)?;
            let model = ClipImage::load(&dir, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
            tracing::info!(stage = %ctx.stage, model = %dir.display(), "CLIP image tower loaded");
            Some(model)
        } else {
            None
        };
        Ok(Built::Stage(Box::new(Run {
            stage: ctx.stage.clone(),
            psnr: metrics::histogram!(names::QUALITY_PSNR_DB, names::LABEL_GRAPH => g.clone()),
            ssim: metrics::histogram!(names::QUALITY_SSIM, names::LABEL_GRAPH => g.clone()),
            cosine: metrics::histogram!(names::QUALITY_COSINE, names::LABEL_GRAPH => g.clone()),
            bleu: metrics::histogram!(names::QUALITY_BLEU, names::LABEL_GRAPH => g),
            lpips,
            clip,
        })))
    }
}

/// The fields `evaluate` adds with this configuration.
fn added(c: &EvaluateConfig) -> Vec<&'static str> {
    let mut f = vec!["psnr_db", "ssim", "cosine", "bits_sent", "ber", "original"];
    if c.lpips {
        f.push("lpips");
    }
    if c.clip {
        f.push("clip_cosine");
    }
    f
}

fn lpips_dir(c: &EvaluateConfig, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let explicit = c.lpips_dir.as_deref().map(|d| ctx.resolve(d));
    lpips::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("evaluate lpips = true: {e}")))
}

fn two_inputs(ctx: &BuildContext) -> Result<(), StageError> {
    if ctx.inputs.len() == 2 {
        Ok(())
    } else {
        Err(StageError::input(format!(
            "`evaluate` takes exactly two inputs, the reference then the reconstruction; got {:?}",
            ctx.inputs
        )))
    }
}

fn clip_dir(c: &EvaluateConfig, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let explicit = c.clip_dir.as_deref().map(|d| ctx.resolve(d));
    clip::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("evaluate clip = true: {e}")))
}
