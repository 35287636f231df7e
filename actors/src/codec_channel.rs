//! `codec_channel`: the digital baseline of the paper (BPG + LDPC), as one stage.
//!
//! image → codec at the highest quality that fits `bpp` → 5G NR LDPC (TS 38.212:
//! CRC, segmentation, base graph 1 or 2, rate matching to `rate`) → Gray QAM → fading
//! (`model`, `coherence`, `csi`; none by default) and AWGN at average Es/N0 `snr_db` →
//! equalisation → max-log LLRs scaled by |ĥ|² → layered BP decoding (`decoder`, `iterations`) → codec
//! decode. When any code block fails (no convergence or a CRC error) the image is lost,
//! as a digital link loses it: the frame goes on with the fallback image — a flat image
//! of `fallback_rgb`, the Kodak24 mean colour by default, as the literature scores a lost
//! image — and `image_lost = 1`, and the loss is counted and logged. Noise is seeded by
//! graph, stage and frame. The codec result for an image is cached on disk (it does not
//! depend on the SNR), so a sweep encodes each image once. `bits` counts the coded bits
//! sent and `channel_uses` the complex symbols, pilots included.

use dataflow_engine::{
    BuildContext, Built, Image, Input, KeyProblem, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value,
};
use dataflow_engine::{Field, FieldType};
use dataflow_models::channel::{channel_rng, Coherence, Csi, Fading, FadingModel, Modulation, SnrUnit};
use dataflow_models::codec::{BudgetCache, Codec};
use dataflow_models::ldpc::{transmit_coded_over, BaseGraph, CheckRule, CodedLink};
use dataflow_monitoring::names;
use schemars::JsonSchema;
use serde::Deserialize;

/// Keys of `codec_channel` (channel keys inherited from `[channel]`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodecChannelConfig {
    /// Signal-to-noise ratio Es/N0 in dB.
    #[serde(default = "default_snr")]
    pub snr_db: f64,
    /// Modulation (the LDPC output is Gray-mapped onto it).
    #[serde(default = "default_modulation")]
    pub modulation: Modulation,
    /// An error-free link.
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
    /// Image codec: `heif` (HEVC intra, the stand-in for BPG), `avif` or `jpeg`.
    #[serde(default = "default_codec")]
    pub codec: Codec,
    /// Byte budget in bits per pixel; the codec quality is bisected to fit it.
    #[serde(default = "default_bpp")]
    pub bpp: f64,
    /// LDPC code rate after rate matching, in (0, 0.95].
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Base graph: 1, 2, or 0 to choose as TS 38.212 §7.2.2 does.
    #[serde(default)]
    pub base_graph: u8,
    /// Decoder check rule: `min_sum` (normalised, 0.75) or `sum_product`.
    #[serde(default = "default_decoder")]
    pub decoder: String,
    /// Maximum decoder iterations.
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// Colour of the image put in place of a lost one.
    #[serde(default = "default_fallback")]
    pub fallback_rgb: [u8; 3],
    /// Cache codec results on disk (`~/.cache/dataflow/codec`).
    #[serde(default = "yes")]
    pub cache: bool,
}

fn default_snr() -> f64 {
    10.0
}
fn default_modulation() -> Modulation {
    Modulation::Bpsk
}
fn default_codec() -> Codec {
    Codec::Heif
}
/// `bpp` when a stage does not say.
const DEFAULT_BPP: f64 = 0.1;
fn default_bpp() -> f64 {
    DEFAULT_BPP
}
fn default_rate() -> f64 {
    0.5
}
fn default_decoder() -> String {
    "min_sum".into()
}
fn default_iterations() -> usize {
    10
}
/// The mean colour of the Kodak24 images (models/README.md says how it was measured).
fn default_fallback() -> [u8; 3] {
    [119, 110, 92]
}
fn yes() -> bool {
    true
}

/// The `codec_channel` kind.
pub struct CodecChannel;

struct Run {
    stage: String,
    seed: u64,
    snr_db: f64,
    fading: Fading,
    modulation: Modulation,
    ideal: bool,
    codec: Codec,
    bpp: f64,
    rate: f64,
    force: Option<BaseGraph>,
    rule: CheckRule,
    iterations: usize,
    fallback: [u8; 3],
    cache: Option<BudgetCache>,
    bits: metrics::Counter,
    bit_errors: metrics::Counter,
}

impl Run {
    fn encode(&self, img: &image::RgbImage, budget: usize) -> Result<dataflow_models::codec::Encoded, StageError> {
        let r = match &self.cache {
            Some(c) => c.encode(img, self.codec, budget),
            None => dataflow_models::codec::encode_to_budget(img, self.codec, budget),
        };
        r.map_err(|e| StageError::new("codec", e.to_string()))
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = crate::util::image_field(&msg, "image", &self.stage)?.to_rgb();
        let (w, h) = img.dimensions();
        let budget = ((self.bpp * f64::from(w) * f64::from(h) / 8.0).floor() as usize).max(1);
        let enc = self.encode(&img, budget)?;
        let link = CodedLink {
            modulation: self.modulation,
            snr_db: if self.ideal { f64::INFINITY } else { self.snr_db },
            rate: self.rate,
            base_graph: self.force,
            rule: self.rule,
            iterations: self.iterations,
        };
        let mut rng = channel_rng(self.seed, &self.stage, msg.id.seq, msg.part.index);
        let decoded = transmit_coded_over(&enc.bytes, &link, &self.fading, &mut rng)
            .map_err(|e| StageError::input(format!("stage `{}`: {e}", self.stage)))?;
        self.bits.increment(decoded.coded_bits);
        self.bit_errors.increment(decoded.bit_errors);
        let received = if decoded.ok {
            match self.codec.decode(&decoded.received) {
                Ok(i) if i.dimensions() == (w, h) => Some(i),
                Ok(_) | Err(_) => None,
            }
        } else {
            None
        };
        let mut fields = msg.fields.clone();
        let lost = received.is_none();
        let image = received.unwrap_or_else(|| image::RgbImage::from_pixel(w, h, image::Rgb(self.fallback)));
        if lost {
            tracing::warn!(stage = %self.stage, frame = %msg.id, blocks_failed = decoded.blocks_failed, blocks = decoded.blocks, "image lost on the digital link; the frame goes on with the mean-colour fallback");
        }
        fields.insert("image", Value::Image(Image::from_rgb(image)));
        fields.insert("image_lost", Value::Number(f64::from(u8::from(lost))));
        fields.insert("codec_bytes", Value::Number(enc.bytes.len() as f64));
        fields.insert("codec_quality", Value::Number(f64::from(enc.quality)));
        fields.insert("over_budget", Value::Number(f64::from(u8::from(enc.over_budget))));
        fields.insert("bits", Value::Number(decoded.coded_bits as f64));
        fields.insert("bit_errors", Value::Number(decoded.bit_errors as f64));
        fields.insert("channel_uses", Value::Number(decoded.symbols as f64));
        fields.insert("code_blocks", Value::Number(decoded.blocks as f64));
        fields.insert("blocks_failed", Value::Number(decoded.blocks_failed as f64));
        fields.insert("ldpc_iterations", Value::Number(decoded.iterations as f64));
        out.emit(msg.derive(fields));
        Ok(())
    }
}

impl StageKind for CodecChannel {
    type Config = CodecChannelConfig;
    const NAME: &'static str = "codec_channel";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "BPG-LDPC family baseline: image codec to a byte budget, 5G NR LDPC, QAM, fading and AWGN, BP decoding; a failed block loses the image.";
    const CHANNEL: bool = true;
    const SWEEP: dataflow_engine::SweepRole = dataflow_engine::SweepRole::Budget {
        key: "bpp",
        default: DEFAULT_BPP,
        noiseless: "ideal",
    };

    fn describe(c: &Self::Config) -> Option<String> {
        Some(format!("{} + 5G NR LDPC", c.codec.describe()))
    }

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out").with("image", FieldType::Image).with_each(
                &[
                    "image_lost",
                    "codec_bytes",
                    "codec_quality",
                    "over_budget",
                    "bits",
                    "bit_errors",
                    "channel_uses",
                    "code_blocks",
                    "blocks_failed",
                    "ldpc_iterations",
                ],
                FieldType::Number,
            )],
            requires: vec![Field::new("image", FieldType::Image)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn validate(c: &Self::Config) -> Vec<KeyProblem> {
        fading(c).err().into_iter().collect()
    }

    fn check(c: &Self::Config, _ctx: &BuildContext) -> Vec<String> {
        match c.codec.check_available() {
            Ok(()) => vec![],
            Err(e) => vec![e.to_string()],
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        if !c.snr_db.is_finite() {
            return Err(StageError::input(format!(
                "`snr_db` must be a finite number, got {}",
                c.snr_db
            )));
        }
        if !(c.bpp > 0.0 && c.bpp.is_finite()) {
            return Err(StageError::input(format!(
                "`bpp` must be a positive number, got {}",
                c.bpp
            )));
        }
        crate::util::check_ldpc_settings(c.rate, c.iterations)?;
        let fading = fading(c).map_err(|p| StageError::input(p.message))?;
        let snr_db = c.snr_unit.es_n0_db(c.snr_db, c.modulation.bits_per_symbol(), c.rate);
        let force = match c.base_graph {
            0 => None,
            1 => Some(BaseGraph::Bg1),
            2 => Some(BaseGraph::Bg2),
            n => {
                return Err(StageError::input(format!(
                    "`base_graph` must be 0 (auto), 1 or 2, got {n}"
                )))
            }
        };
        let rule: CheckRule = c.decoder.parse().map_err(StageError::input)?;
        c.codec
            .check_available()
            .map_err(|e| StageError::input(e.to_string()))?;
        let labels = [
            (names::LABEL_STAGE, ctx.stage.clone()),
            (names::LABEL_MODULATION, c.modulation.to_string()),
        ];
        metrics::gauge!(names::CHANNEL_SNR_DB, names::LABEL_STAGE => ctx.stage.clone()).set(snr_db);
        Ok(Built::Stage(Box::new(Run {
            stage: ctx.stage.clone(),
            seed: ctx.seed,
            snr_db,
            fading,
            modulation: c.modulation,
            ideal: c.ideal,
            codec: c.codec,
            bpp: c.bpp,
            rate: c.rate,
            force,
            rule,
            iterations: c.iterations,
            fallback: c.fallback_rgb,
            cache: if c.cache {
                BudgetCache::default_dir().map(BudgetCache::new)
            } else {
                None
            },
            bits: metrics::counter!(names::CHANNEL_BITS, &labels),
            bit_errors: metrics::counter!(names::CHANNEL_BIT_ERRORS, &labels),
        })))
    }
}

/// The fading of the config's channel keys, or the key to blame.
fn fading(c: &CodecChannelConfig) -> Result<Fading, KeyProblem> {
    crate::util::fading_keys(c.model, c.k_factor, c.coherence, c.csi)
}
