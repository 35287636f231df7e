//! `thumbnail`: a small JPEG of the whole frame over a noisy digital link (a baseline
//! for the captions of Multi-SC at a comparable number of channel uses).
//!
//! The frame is downscaled by `scale` (Lanczos-3, each side rounded, at least 1 pixel),
//! JPEG-encoded at `quality`, and its bytes cross the graph's `[channel]` as the object
//! slice of `image_channel` does: the same modulation, fading and AWGN (`coding = "none"`,
//! uncoded; or `"ldpc"`, 5G NR LDPC at `rate`, where a failed block loses the thumbnail),
//! with noise drawn from the graph seed, the stage and the frame (stream 0). The receiver
//! side decodes the bytes: `thumbnail` is the decoded image, absent when the bytes no
//! longer decode to an image of the sent size (`thumbnail_lost = 1`; the frame goes on and
//! the reconstructor falls back to a flat grey background). `bits` (bits sent, coded bits
//! with LDPC), `bit_errors` and `channel_uses` (complex symbols, pilots included) count
//! the link under the same names as the texts' link, since the thumbnail takes the texts'
//! place at `reconstruct`; `thumbnail_bytes` is the JPEG's size. Only what crossed the link
//! leaves this stage (plus `frame_size`, which the receiver is assumed to know).
//!
//! The receiver is `reconstruct model = "thumbnail_sr"` (ESRGAN-slim, `thumbnail_sr.rs`).

use dataflow_engine::{
    BuildContext, Built, Fields, Image, Input, KeyProblem, OutPort, Outputs, Ports, Rect, Role, Stage, StageError,
    StageKind, Value,
};
use dataflow_engine::{Field, FieldType};
use dataflow_models::channel::{Coherence, Csi, Fading, FadingModel, Modulation, SnrUnit};
use image::imageops::{self, FilterType};
use image::RgbImage;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::image_channel::Coding;
use crate::util::{encode_jpeg, Link};

/// Keys of `thumbnail` (channel keys inherited from `[channel]`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailConfig {
    /// Signal-to-noise ratio Es/N0 in dB.
    #[serde(default = "default_snr")]
    pub snr_db: f64,
    /// Modulation.
    #[serde(default = "default_modulation")]
    pub modulation: Modulation,
    /// An error-free link (bits are still counted).
    #[serde(default)]
    pub ideal: bool,
    /// Fading: `awgn` (none), `rayleigh` or `rician` (as `image_channel`).
    #[serde(default)]
    pub model: FadingModel,
    /// Rician K factor in dB; only with `model = "rician"`.
    #[serde(default)]
    pub k_factor: Option<f64>,
    /// How long one fading gain lasts: `"symbol"`, N channel uses or `"message"` (default).
    #[serde(default)]
    pub coherence: Coherence,
    /// What the receiver knows of the gain: `"perfect"` (default) or `{ pilots = N }`.
    #[serde(default)]
    pub csi: Csi,
    /// Unit of `snr_db`: `esn0` (the default) or `ebn0`.
    #[serde(default)]
    pub snr_unit: SnrUnit,
    /// Downscaling factor of each side, 1..=64 (match an ESRGAN-slim scale: 2, 3, 4 or 8).
    #[serde(default = "default_scale")]
    pub scale: u32,
    /// JPEG quality, 1..=100.
    #[serde(default = "default_quality")]
    pub quality: u8,
    /// Channel coding.
    #[serde(default = "default_coding")]
    pub coding: Coding,
    /// LDPC code rate with `coding = "ldpc"`, in (0, 0.95].
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Maximum LDPC decoder iterations.
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// The image field to send.
    #[serde(default = "default_field")]
    pub field: String,
}

fn default_snr() -> f64 {
    10.0
}
fn default_modulation() -> Modulation {
    Modulation::Bpsk
}
fn default_scale() -> u32 {
    8
}
fn default_quality() -> u8 {
    50
}
fn default_coding() -> Coding {
    Coding::None
}
fn default_rate() -> f64 {
    0.5
}
fn default_iterations() -> usize {
    10
}
fn default_field() -> String {
    "image".into()
}

/// The `thumbnail` kind.
pub struct Thumbnail;

struct Run {
    link: Link,
    scale: u32,
    quality: u8,
    coding: Coding,
    rate: f64,
    iterations: usize,
    field: String,
    stage: String,
}

/// The thumbnail size of a `w` × `h` frame at `scale`.
pub fn thumbnail_size(w: u32, h: u32, scale: u32) -> (u32, u32) {
    let side = |v: u32| ((f64::from(v) / f64::from(scale.max(1))).round() as u32).max(1);
    (side(w), side(h))
}

/// The received bytes as an RGB image of `size`, or `None` when they do not decode to one.
fn decode(bytes: &[u8], size: (u32, u32)) -> Option<RgbImage> {
    // The JPEG decoder may panic on corrupted input; a panic is a lost thumbnail.
    std::panic::catch_unwind(|| {
        let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).ok()?;
        let rgb = img.to_rgb8();
        (rgb.dimensions() == size).then_some(rgb)
    })
    .ok()
    .flatten()
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let frame = crate::util::image_field(&msg, &self.field, &self.stage)?.to_rgb();
        let (w, h) = frame.dimensions();
        let size = thumbnail_size(w, h, self.scale);
        let small = imageops::resize(&frame, size.0, size.1, FilterType::Lanczos3);
        let bytes = encode_jpeg(&image::DynamicImage::ImageRgb8(small), self.quality)?;
        let (received, bits, bit_errors, channel_uses) = match self.coding {
            Coding::None => {
                let t = self.link.send(&bytes, msg.id.seq, 0)?;
                (t.received, t.bits, t.bit_errors, t.symbols)
            }
            Coding::Ldpc => {
                let t = self
                    .link
                    .send_coded(&bytes, msg.id.seq, 0, self.rate, self.iterations)?;
                // A failed transport block is lost whole.
                let received = if t.ok { t.received } else { Vec::new() };
                (received, t.coded_bits, t.bit_errors, t.symbols)
            }
        };
        let mut fields = Fields::new();
        match decode(&received, size) {
            Some(img) => {
                fields.insert("thumbnail", Value::Image(Image::from_rgb(img)));
                fields.insert("thumbnail_lost", Value::Number(0.0));
            }
            None => {
                tracing::warn!(stage = %self.stage, frame = %msg.id, bit_errors, "thumbnail does not decode after the channel; the frame goes on without it");
                fields.insert("thumbnail_lost", Value::Number(1.0));
            }
        }
        let frame_size = Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        };
        fields.insert("frame_size", Value::Rect(frame_size));
        fields.insert("thumbnail_bytes", Value::Number(bytes.len() as f64));
        fields.insert("bits", Value::Number(bits as f64));
        fields.insert("bit_errors", Value::Number(bit_errors as f64));
        fields.insert("channel_uses", Value::Number(channel_uses as f64));
        out.emit(msg.derive(fields));
        Ok(())
    }
}

impl StageKind for Thumbnail {
    type Config = ThumbnailConfig;
    const NAME: &'static str = "thumbnail";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Sends a downscaled JPEG of the frame over the channel; an undecodable thumbnail is dropped and reported.";
    const CHANNEL: bool = true;

    fn validate(c: &Self::Config) -> Vec<KeyProblem> {
        let mut problems: Vec<KeyProblem> = fading(c).err().into_iter().collect();
        if !(1..=64).contains(&c.scale) {
            problems.push(KeyProblem {
                key: "scale",
                message: format!(
                    "`scale` must be 1..=64 (2, 3, 4 or 8 match an ESRGAN-slim network), got {}",
                    c.scale
                ),
            });
        }
        if !(1..=100).contains(&c.quality) {
            problems.push(KeyProblem {
                key: "quality",
                message: format!("`quality` must be 1..=100, got {}", c.quality),
            });
        }
        problems
    }

    fn ports(c: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::new("out")
                .with("thumbnail", FieldType::Image)
                .with("frame_size", FieldType::Rect)
                .with_each(
                    &[
                        "thumbnail_lost",
                        "thumbnail_bytes",
                        "bits",
                        "bit_errors",
                        "channel_uses",
                    ],
                    FieldType::Number,
                )],
            requires: vec![Field::new(c.field.clone(), FieldType::Image)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        crate::util::check_ldpc_settings(c.rate, c.iterations)?;
        let fading = fading(c).map_err(|p| StageError::input(p.message))?;
        let rate = match c.coding {
            Coding::None => 1.0,
            Coding::Ldpc => c.rate,
        };
        let es_n0 = c.snr_unit.es_n0_db(c.snr_db, c.modulation.bits_per_symbol(), rate);
        Ok(Built::Stage(Box::new(Run {
            link: Link::new(es_n0, fading, c.modulation, c.ideal, ctx)?,
            scale: c.scale,
            quality: c.quality,
            coding: c.coding,
            rate: c.rate,
            iterations: c.iterations,
            field: c.field.clone(),
            stage: ctx.stage.clone(),
        })))
    }
}

/// The fading of the config's channel keys, or the key to blame.
fn fading(c: &ThumbnailConfig) -> Result<Fading, KeyProblem> {
    crate::util::fading_keys(c.model, c.k_factor, c.coherence, c.csi)
}
