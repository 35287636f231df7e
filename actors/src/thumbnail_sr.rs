//! `reconstruct model = "thumbnail_sr"`: the receiver of the thumbnail baseline.
//!
//! The received thumbnail (field `thumbnail` of the `thumbnail` stage) is upscaled with
//! ESRGAN-slim (`dataflow_models::esrgan`) to the frame's size and the received object
//! slice is composited over it at its box (`dataflow_models::composite`), as the
//! `composite` model does over its painted background. The network is the one whose scale
//! is the largest of ×2, ×3, ×4, ×8 not above the size ratio (×4 for `scale = 4`, ×8 for
//! `scale = 8`); what is left (rounded thumbnail sides, other ratios) is a Lanczos-3
//! resize to the exact frame size. A lost thumbnail gives a flat neutral grey (128) under
//! the slice, and a lost slice the upscaled thumbnail alone. Fields added: `image`,
//! `lost_inputs`, `sr_scale` (the network used; 1 when none fit or the thumbnail was
//! lost) and `sr_seconds` (model time).
//!
//! This is a model of the `reconstruct` kind (its keys: `timeout_ms`, `size` for frames
//! that do not say their size, and the ONNX Runtime session keys); `reconstruct.rs`
//! dispatches here from `build`.

use std::collections::BTreeMap;

use dataflow_engine::{BuildContext, Built, Image, Input, Outputs, Part, Stage, StageError, Value};
use dataflow_models::composite::{self, NEUTRAL};
use dataflow_models::esrgan::{self, Upscaler};
use image::imageops::{self, FilterType};
use image::RgbImage;

use crate::reconstruct::ThumbnailSrKeys;
use crate::util::merge_joined;

/// The ESRGAN-slim networks, by scale, and the output size of frames that do not say it.
struct Run {
    upscalers: BTreeMap<u32, Upscaler>,
    size: [u32; 2],
    stage: String,
}

/// Every missing network file, as `check` reports it (with the command that fetches it).
pub fn check(ctx: &BuildContext) -> Vec<String> {
    esrgan::SCALES
        .iter()
        .filter_map(|&s| crate::util::model_file(None, &esrgan::model_file(s), ctx).err())
        .map(|e| format!("reconstruct model = \"thumbnail_sr\": {}", e.message))
        .collect()
}

/// Loads the four networks; see the module docs.
pub fn build(c: &ThumbnailSrKeys, ctx: &BuildContext) -> Result<Built, StageError> {
    let mut upscalers = BTreeMap::new();
    for scale in esrgan::SCALES {
        let path = crate::util::model_file(None, &esrgan::model_file(scale), ctx)?;
        let up = Upscaler::load(&path, scale, &c.session)
            .map_err(|e| StageError::new("model", format!("reconstruct model = \"thumbnail_sr\": {e}")))?;
        upscalers.insert(scale, up);
    }
    tracing::info!(stage = %ctx.stage, scales = ?esrgan::SCALES, "ESRGAN-slim loaded");
    Ok(Built::Stage(Box::new(Run {
        upscalers,
        size: c.common.size,
        stage: ctx.stage.clone(),
    })))
}

/// The largest network scale not above the size ratio of `from` to `to`, if any.
pub fn pick_scale(from: (u32, u32), to: (u32, u32)) -> Option<u32> {
    let ratio = (f64::from(to.0) / f64::from(from.0.max(1))).min(f64::from(to.1) / f64::from(from.1.max(1)));
    // 2 % slack: a rounded thumbnail side makes an exact ×8 look like ×7.9.
    esrgan::SCALES
        .iter()
        .rev()
        .copied()
        .find(|&s| f64::from(s) <= ratio * 1.02)
}

impl Run {
    /// The background: the thumbnail upscaled to `(w, h)`, or flat grey without one.
    fn background(
        &mut self,
        thumb: Option<RgbImage>,
        (w, h): (u32, u32),
        frame: &str,
    ) -> Result<(RgbImage, u32, f64), StageError> {
        let Some(thumb) = thumb else {
            return Ok((RgbImage::from_pixel(w, h, image::Rgb(NEUTRAL)), 1, 0.0));
        };
        let (up, scale, seconds) = match pick_scale(thumb.dimensions(), (w, h)) {
            Some(s) => {
                let net = self.upscalers.get_mut(&s).ok_or_else(|| {
                    StageError::new(
                        "model",
                        format!("stage `{}`: no ESRGAN ×{s} network loaded", self.stage),
                    )
                })?;
                let u = net.upscale(&thumb).map_err(|e| {
                    StageError::new(
                        "model",
                        format!("stage `{}`, frame {frame}: ESRGAN ×{s} failed: {e}", self.stage),
                    )
                })?;
                (u.image, s, u.inference.as_secs_f64())
            }
            None => (thumb, 1, 0.0),
        };
        let img = if up.dimensions() == (w, h) {
            up
        } else {
            imageops::resize(&up, w, h, FilterType::Lanczos3)
        };
        Ok((img, scale, seconds))
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Joined(j) = input else { return Ok(()) };
        let Some(first) = j.any() else { return Ok(()) };
        let mut fields = merge_joined(&j);
        let (w, h) = match fields.rect("frame_size") {
            Some(r) => (r.width.max(1), r.height.max(1)),
            None => (self.size[0].max(1), self.size[1].max(1)),
        };
        let thumb = fields.remove("thumbnail").and_then(|v| match v {
            Value::Image(i) => Some(i.to_rgb()),
            _ => None,
        });
        let (mut img, scale, seconds) = self.background(thumb, (w, h), &j.id.to_string())?;
        if let (Some(slice), Some(b)) = (fields.image("slice"), fields.rect("box")) {
            composite::composite_over(&mut img, &slice.to_rgba(), b.x, b.y);
        }
        fields.insert("image", Value::Image(Image::from_rgb(img)));
        fields.insert("lost_inputs", Value::Number(j.lost() as f64));
        fields.insert("sr_scale", Value::Number(f64::from(scale)));
        fields.insert("sr_seconds", Value::Number(seconds));
        out.emit(first.derive_part(Part::WHOLE, fields));
        Ok(())
    }
}
