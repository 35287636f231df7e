//! `image_channel`: the object slice over a noisy digital link.
//!
//! The slice's colour is JPEG-encoded at `quality` and its alpha (the object
//! mask) as a grayscale JPEG; both byte streams cross the same modulation, fading and
//! AWGN as the captions (`coding = "none"`, uncoded; or `coding = "ldpc"`, 5G NR LDPC
//! at `rate` with layered decoding, where a failed block loses the slice), with noise seeded by graph,
//! stage and frame. A slice whose bytes no longer decode is reported and dropped:
//! the frame goes on without it (`slice_lost = 1`) and the receiver rebuilds
//! from text alone — the cliff effect of a digital link. `slice_bits` counts the bits
//! sent (coded bits with LDPC) and `slice_channel_uses` the complex symbols (pilots
//! included); they carry the `slice_` prefix because the slice joins the texts' message
//! at `reconstruct`, whose own `bits` and `channel_uses` they must not overwrite.

use dataflow_engine::{
    BuildContext, Built, Image, Input, KeyProblem, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value,
};
use dataflow_engine::{Field, FieldType};
use dataflow_models::channel::{Coherence, Csi, Fading, FadingModel, Modulation, SnrUnit};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::{encode_jpeg, Link};

/// Channel coding of the slice.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Coding {
    /// Uncoded bits.
    None,
    /// 5G NR LDPC (TS 38.212) at `rate`, layered min-sum decoding; a failed block loses the slice.
    Ldpc,
}

/// Keys of `image_channel` (channel keys inherited from `[channel]`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageChannelConfig {
    /// Signal-to-noise ratio Es/N0 in dB.
    #[serde(default = "default_snr")]
    pub snr_db: f64,
    /// Modulation.
    #[serde(default = "default_modulation")]
    pub modulation: Modulation,
    /// An error-free link (bits are still counted).
    #[serde(default)]
    pub ideal: bool,
    /// Fading: `awgn` (none), `rayleigh` or `rician`. `snr_db` stays the average Es/N0
    /// (E|h|² = 1); the receiver equalises by the (estimated) gain.
    #[serde(default)]
    pub model: FadingModel,
    /// Rician K factor in dB (line-of-sight over scattered power); only with `model = "rician"`.
    #[serde(default)]
    pub k_factor: Option<f64>,
    /// How long one fading gain lasts: `"symbol"` (fast fading), N channel uses including
    /// pilots (block fading) or `"message"` (quasi-static, one gain per message; the default).
    #[serde(default)]
    pub coherence: Coherence,
    /// What the receiver knows of the gain: `"perfect"` (default) or `{ pilots = N }`, N pilot
    /// symbols per coherence block and a least-squares estimate; pilots count as channel uses.
    #[serde(default)]
    pub csi: Csi,
    /// Unit of `snr_db`: `esn0` (Es/N0, the default) or `ebn0` (Eb/N0, converted with the
    /// modulation's bits per symbol and the code rate).
    #[serde(default)]
    pub snr_unit: SnrUnit,
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
}

fn default_rate() -> f64 {
    0.5
}
fn default_iterations() -> usize {
    10
}

fn default_snr() -> f64 {
    10.0
}
fn default_modulation() -> Modulation {
    Modulation::Bpsk
}
fn default_quality() -> u8 {
    75
}
fn default_coding() -> Coding {
    Coding::None
}

/// The `image_channel` kind.
pub struct ImageChannel;

struct Run {
    link: Link,
    quality: u8,
    stage: String,
    coding: Coding,
    rate: f64,
    iterations: usize,
}

/// What one byte stream's crossing gave: the bytes received, bits sent, bit errors,
/// channel uses.
struct Crossed {
    received: Vec<u8>,
    bits: u64,
    bit_errors: u64,
    channel_uses: u64,
}

impl Run {
    fn send(&self, bytes: &[u8], seq: u64, stream: u32) -> Result<Crossed, StageError> {
        Ok(match self.coding {
            Coding::None => {
                let t = self.link.send(bytes, seq, stream)?;
                Crossed {
                    received: t.received,
                    bits: t.bits,
                    bit_errors: t.bit_errors,
                    channel_uses: t.symbols,
                }
            }
            Coding::Ldpc => {
                let t = self.link.send_coded(bytes, seq, stream, self.rate, self.iterations)?;
                // A failed transport block is lost whole, as a digital link loses it.
                Crossed {
                    received: if t.ok { t.received } else { Vec::new() },
                    bits: t.coded_bits,
                    bit_errors: t.bit_errors,
                    channel_uses: t.symbols,
                }
            }
        })
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let mut fields = msg.fields.clone();
        let Some(slice) = msg.fields.image("slice") else {
            // No object in this frame: nothing to send.
            fields.insert("slice_bits", Value::Number(0.0));
            fields.insert("slice_bit_errors", Value::Number(0.0));
            fields.insert("slice_channel_uses", Value::Number(0.0));
            fields.insert("slice_lost", Value::Number(0.0));
            out.emit(msg.derive(fields));
            return Ok(());
        };
        let rgba = slice.to_rgba();
        let (w, h) = rgba.dimensions();
        let rgb = image::RgbImage::from_fn(w, h, |x, y| {
            let p = rgba.get_pixel(x, y);
            image::Rgb([p[0], p[1], p[2]])
        });
        let alpha = image::GrayImage::from_fn(w, h, |x, y| image::Luma([rgba.get_pixel(x, y)[3]]));
        let colour_bytes = encode_jpeg(&image::DynamicImage::ImageRgb8(rgb), self.quality)?;
        let alpha_bytes = encode_jpeg(&image::DynamicImage::ImageLuma8(alpha), self.quality)?;
        // Two independent draws: the part index 0/1 picks the stream of each.
        let tc = self.send(&colour_bytes, msg.id.seq, 0)?;
        let ta = self.send(&alpha_bytes, msg.id.seq, 1)?;
        let bits = tc.bits + ta.bits;
        let bit_errors = tc.bit_errors + ta.bit_errors;
        let channel_uses = tc.channel_uses + ta.channel_uses;
        let decoded = std::panic::catch_unwind(|| {
            let c = image::load_from_memory_with_format(&tc.received, image::ImageFormat::Jpeg)
                .ok()?
                .to_rgb8();
            let a = image::load_from_memory_with_format(&ta.received, image::ImageFormat::Jpeg)
                .ok()?
                .to_luma8();
            if c.dimensions() != (w, h) || a.dimensions() != (w, h) {
                return None;
            }
            Some(image::RgbaImage::from_fn(w, h, |x, y| {
                let p = c.get_pixel(x, y);
                image::Rgba([p[0], p[1], p[2], a.get_pixel(x, y)[0]])
            }))
        })
        .ok()
        .flatten();
        fields.remove("slice");
        match decoded {
            Some(img) => {
                fields.insert("slice", Value::Image(Image::from_rgba(img)));
                fields.insert("slice_lost", Value::Number(0.0));
            }
            None => {
                tracing::warn!(stage = %self.stage, frame = %msg.id, bit_errors, "object slice does not decode after the channel; the frame goes on without it");
                fields.insert("slice_lost", Value::Number(1.0));
            }
        }
        fields.insert(
            "slice_bytes",
            Value::Number((colour_bytes.len() + alpha_bytes.len()) as f64),
        );
        fields.insert("slice_bits", Value::Number(bits as f64));
        fields.insert("slice_bit_errors", Value::Number(bit_errors as f64));
        fields.insert("slice_channel_uses", Value::Number(channel_uses as f64));
        out.emit(msg.derive(fields));
        Ok(())
    }
}

impl StageKind for ImageChannel {
    type Config = ImageChannelConfig;
    const NAME: &'static str = "image_channel";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Sends the object slice as JPEG over QAM, fading and AWGN; an undecodable slice is dropped and reported.";
    const CHANNEL: bool = true;

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            // `slice` is replaced by the received one, or removed when it was lost.
            outputs: vec![OutPort::forwarding("out").with("slice", FieldType::Image).with_each(
                &[
                    "slice_bytes",
                    "slice_bits",
                    "slice_bit_errors",
                    "slice_channel_uses",
                    "slice_lost",
                ],
                FieldType::Number,
            )],
            requires: vec![Field::new("frame_size", FieldType::Rect)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn validate(c: &Self::Config) -> Vec<KeyProblem> {
        fading(c).err().into_iter().collect()
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        crate::util::check_ldpc_settings(c.rate, c.iterations)?;
        let fading = fading(c).map_err(|p| StageError::input(p.message))?;
        let rate = match c.coding {
            Coding::None => 1.0,
            Coding::Ldpc => c.rate,
        };
        let es_n0 = c.snr_unit.es_n0_db(c.snr_db, c.modulation.bits_per_symbol(), rate);
        if !(1..=100).contains(&c.quality) {
            return Err(StageError::input(format!(
                "`quality` must be 1..=100, got {}",
                c.quality
            )));
        }
        Ok(Built::Stage(Box::new(Run {
            link: Link::new(es_n0, fading, c.modulation, c.ideal, ctx)?,
            quality: c.quality,
            stage: ctx.stage.clone(),
            coding: c.coding,
            rate: c.rate,
            iterations: c.iterations,
        })))
    }
}

/// The fading of the config's channel keys, or the key to blame.
fn fading(c: &ImageChannelConfig) -> Result<Fading, KeyProblem> {
    crate::util::fading_keys(c.model, c.k_factor, c.coherence, c.csi)
}
