//! `jscc`: the deep JSCC baseline (Bourtsoulatze et al. 2019) as one stage —
//! encoder → power-normalised complex symbols → fading (`model`, `coherence`, `csi`;
//! none by default) and AWGN at average Es/N0 `snr_db` → equalisation by the
//! (estimated) gain → decoder. `channel_uses` counts the complex symbols, pilots
//! included; `bits` is 0 (the symbols are analog).
//!
//! The channel sits inside the stage between the two ONNX sessions, with the noise
//! seeded by graph, stage and frame like every channel stage, so `--snr` and sweeps
//! drive it as they drive the digital links. The network degrades gracefully with the
//! SNR instead of falling off a cliff; the checkpoint is trained at one SNR
//! (`models/weights/deep_jscc/snr10`, see its `training.json`).

use std::path::PathBuf;

use dataflow_engine::{
    BuildContext, Built, Image, Input, KeyProblem, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value,
};
use dataflow_engine::{Field, FieldType};
use dataflow_models::channel::{channel_rng, Channel, Coherence, Csi, Fading, FadingModel, SnrUnit};
use dataflow_models::jscc::DeepJscc;
use dataflow_models::provider::SessionOptions;
use dataflow_monitoring::names;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::image_field;

/// Keys of `jscc` (channel keys inherited from `[channel]`).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct JsccConfig {
    /// Signal-to-noise ratio Es/N0 in dB.
    #[serde(default = "default_snr")]
    pub snr_db: f64,
    /// A noiseless channel.
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
    /// Unit of `snr_db`: `esn0` (Es/N0) only; `ebn0` is refused, as the analog symbols carry
    /// no bits.
    #[serde(default)]
    pub snr_unit: SnrUnit,
    /// Folder holding `encoder.onnx` and `decoder.onnx` (from `models/export/deep_jscc.py`).
    #[serde(default = "default_dir")]
    pub model_dir: PathBuf,
    /// ONNX Runtime session options (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

fn default_snr() -> f64 {
    10.0
}
fn default_dir() -> PathBuf {
    PathBuf::from("models/weights/deep_jscc/snr10")
}

/// The `jscc` kind.
pub struct Jscc;

struct Run {
    model: DeepJscc,
    channel: Channel,
    seed: u64,
    stage: String,
    inference: metrics::Histogram,
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = image_field(&msg, "image", &self.stage)?.to_rgb();
        let mut rng = channel_rng(self.seed, &self.stage, msg.id.seq, msg.part.index);
        let started = std::time::Instant::now();
        let sent = self
            .model
            .transmit(&img, &self.channel, &mut rng)
            .map_err(|e| StageError::new("model", format!("deep JSCC on frame {} failed: {e}", msg.id)))?;
        self.inference.record(started.elapsed().as_secs_f64());
        let mut fields = msg.fields.clone();
        fields.insert("image", Value::Image(Image::from_rgb(sent.image)));
        fields.insert("channel_uses", Value::Number(sent.channel_uses as f64));
        fields.insert("bits", Value::Number(0.0));
        fields.insert(
            "channel_uses_per_pixel",
            Value::Number(sent.channel_uses as f64 / (f64::from(img.width()) * f64::from(img.height()))),
        );
        out.emit(msg.derive(fields));
        Ok(())
    }
}

fn model_dir(c: &JsccConfig, ctx: &BuildContext) -> Result<PathBuf, String> {
    let dir = ctx.resolve(&c.model_dir);
    for f in ["encoder.onnx", "decoder.onnx"] {
        if !dir.join(f).is_file() {
            return Err(format!(
                "deep JSCC model {} is missing; train one with `python models/export/deep_jscc.py --images DIR --snr 10 --out {}` (see models/README.md)",
                dir.join(f).display(),
                c.model_dir.display()
            ));
        }
    }
    Ok(dir)
}

impl StageKind for Jscc {
    type Config = JsccConfig;
    const NAME: &'static str = "jscc";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Deep JSCC baseline: CNN encoder, power-normalised symbols over fading and AWGN, equalisation, CNN decoder.";
    const CHANNEL: bool = true;

    fn describe(c: &Self::Config) -> Option<String> {
        Some(format!("deep JSCC ({})", c.model_dir.display()))
    }

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out")
                .with("image", FieldType::Image)
                .with_each(&["channel_uses", "channel_uses_per_pixel", "bits"], FieldType::Number)],
            requires: vec![Field::new("image", FieldType::Image)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn validate(c: &Self::Config) -> Vec<KeyProblem> {
        fading(c).err().into_iter().collect()
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        model_dir(c, ctx).err().into_iter().collect()
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let fading = fading(c).map_err(|p| StageError::input(p.message))?;
        let channel = Channel::new(if c.ideal { f64::INFINITY } else { c.snr_db }, fading)
            .map_err(|e| StageError::input(e.to_string()))?;
        if !c.snr_db.is_finite() {
            return Err(StageError::input(format!(
                "`snr_db` must be a finite number, got {}",
                c.snr_db
            )));
        }
        let dir = model_dir(c, ctx).map_err(StageError::io)?;
        let model = DeepJscc::load(&dir, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
        metrics::gauge!(names::CHANNEL_SNR_DB, names::LABEL_STAGE => ctx.stage.clone()).set(c.snr_db);
        let inference = metrics::histogram!(names::MODEL_INFERENCE_SECONDS,
            names::LABEL_MODEL => "deep_jscc", names::LABEL_PROVIDER => model.provider().as_str());
        Ok(Built::Stage(Box::new(Run {
            model,
            channel,
            seed: ctx.seed,
            stage: ctx.stage.clone(),
            inference,
        })))
    }
}

/// The fading of the config's channel keys, or the key to blame; `snr_unit = "ebn0"` has
/// no meaning for analog symbols.
fn fading(c: &JsccConfig) -> Result<Fading, KeyProblem> {
    if c.snr_unit == SnrUnit::Ebn0 {
        return Err(KeyProblem {
            key: "snr_unit",
            message: "`snr_unit = \"ebn0\"` needs bits, but deep JSCC sends analog symbols; use `snr_unit = \"esn0\"` (set it on this stage to override [channel])".into(),
        });
    }
    crate::util::fading_keys(c.model, c.k_factor, c.coherence, c.csi)
}
