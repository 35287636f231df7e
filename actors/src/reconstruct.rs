//! `reconstruct`: rebuilds the frame at the receiver (Multi-SC, §II-B).
//!
//! A joining stage: it waits for the corrected texts of a frame and its received
//! object slice (from different inputs) and emits `image`, the reconstruction.
//! `model = "composite"` (offline tier) paints each tile region from the colour and
//! brightness words of its text and places the received object slice at its box.
//! A lost slice or lost texts still give an image (from what arrived).
//!
//! `model = "sd_ip_adapter"` (paper tier, eq. 8–10): Stable Diffusion 1.5 with IP-Adapter,
//! exported by `models/export/sd_ip_adapter.py` (folder `model_dir`, default
//! `assets/models/sd15_ip`). The corrected texts are the text prompt, combined as `prompt_mode`
//! says (CLIP sees 77 tokens; four ~42-token captions are ~170): `"concat"` (default) encodes
//! each caption on its own (in 75-token chunks) and concatenates the states, `"regional"` draws
//! tile k's caption in tile k's region of the latent (MultiDiffusion) blended with a global
//! prompt of all captions at weight `global_weight` (β, default 0.3), `"truncate"` joins them and
//! cuts at 77 tokens, warning how many were dropped (see `dataflow_models::sd`). The received
//! object slice (its transparent part white) is the image prompt with weight `ip_scale` (λ;
//! 0 or a lost slice = text only); `steps`, `guidance_scale`, `scheduler` (`ddim` or
//! `euler_ancestral`). With `strength > 0` the loop starts (img2img) from the `composite`
//! reconstruction, noised to that strength. The noise seed is drawn from the graph seed, the
//! stage and the frame (as the channel stages do) unless `seed` fixes it. The image is
//! generated at `generate_size` (default: the export's size) and resized to the frame's; any
//! multiple of 8 px works with a current export (an export made before `size_multiple` takes
//! multiples of 64, and the graph check says so with the nearest sizes).
//! Fields added: `sd_seconds` (the whole generation), `sd_unet_evals` (UNet batch rows, over
//! all steps), `sd_tokens_dropped` (CLIP tokens cut by `"truncate"`) and `sd_batched_with`
//! (the frames whose UNet calls this one shared, itself included; 1 when it ran alone).
//!
//! With the reserved `batch = { max, wait_ms }` key the stage gets several complete frames
//! per call and SD generates them in one `generate_batch`: frames with the same size,
//! scheduler, steps, strength and λ share one UNet call per step (frames × guidance rows);
//! a frame the model refuses fails alone. `sd_seconds` then runs from the call's start to
//! that frame's image (the frames of a call share their UNet time).

use std::path::PathBuf;
use std::time::Duration;

use dataflow_engine::tagged::Tagged;
use dataflow_engine::{
    BuildContext, Built, Fields, FrameId, Image, Input, Joined, OutPort, Outputs, Part, Ports, Rect, Role, Stage,
    StageError, StageKind, Value,
};
use dataflow_engine::{Field, FieldType};
use dataflow_models::channel::channel_rng;
use dataflow_models::composite;
use dataflow_models::provider::SessionOptions;
use dataflow_models::schedulers::SchedulerKind;
use dataflow_models::sd::{self, GenerateOptions, GenerateRequest, Generated, PromptMode, SdIpAdapter};
use dataflow_monitoring::names;
use image::imageops::{self, FilterType};
use image::{RgbImage, RgbaImage};
use rand::RngCore;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::util::merge_joined;

/// Keys of `reconstruct`, by model.
#[derive(Debug, JsonSchema)]
#[serde(tag = "model", rename_all = "snake_case")]
#[schemars(transform = dataflow_engine::tagged::mark_default::<ReconstructConfig>)]
pub enum ReconstructConfig {
    /// Background from the text's colour words, object slice on top (offline tier; the default).
    Composite(CompositeKeys),
    /// Stable Diffusion 1.5 + IP-Adapter (paper tier, exported by `models/export/sd_ip_adapter.py`).
    SdIpAdapter(SdIpAdapterKeys),
    /// The received thumbnail upscaled by ESRGAN-slim, object slice on top (`thumbnail_sr.rs`).
    ThumbnailSr(ThumbnailSrKeys),
}

impl Tagged for ReconstructConfig {
    const DEFAULT: &'static str = "composite";
    const MODELS: &'static [&'static str] = &["composite", "sd_ip_adapter", "thumbnail_sr"];
    fn model<'de, D: Deserializer<'de>>(model: &str, keys: D) -> Result<Self, D::Error> {
        match model {
            "sd_ip_adapter" => SdIpAdapterKeys::deserialize(keys).map(Self::SdIpAdapter),
            "thumbnail_sr" => ThumbnailSrKeys::deserialize(keys).map(Self::ThumbnailSr),
            _ => CompositeKeys::deserialize(keys).map(Self::Composite),
        }
    }
}

impl<'de> Deserialize<'de> for ReconstructConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        dataflow_engine::tagged::deserialize(d)
    }
}

impl ReconstructConfig {
    /// The keys every model has.
    pub fn common(&self) -> &ReconstructCommon {
        match self {
            ReconstructConfig::Composite(k) => &k.common,
            ReconstructConfig::SdIpAdapter(k) => &k.common,
            ReconstructConfig::ThumbnailSr(k) => &k.common,
        }
    }
}

/// Keys of `reconstruct` whatever the model.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReconstructCommon {
    /// How long to wait for the texts or the slice of a frame.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Output size when the frame does not say (`[width, height]`).
    #[serde(default = "default_size")]
    pub size: [u32; 2],
}

/// Keys of `model = "composite"`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CompositeKeys {
    /// Keys of every model.
    #[serde(flatten)]
    pub common: ReconstructCommon,
}

/// Keys of `model = "thumbnail_sr"`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ThumbnailSrKeys {
    /// Keys of every model.
    #[serde(flatten)]
    pub common: ReconstructCommon,
    /// ONNX Runtime session options of ESRGAN-slim (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

/// Keys of `model = "sd_ip_adapter"`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SdIpAdapterKeys {
    /// Keys of every model.
    #[serde(flatten)]
    pub common: ReconstructCommon,
    /// The export folder (default `assets/models/sd15_ip`).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Denoising steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Classifier-free guidance scale (no guidance at 1 or less).
    #[serde(default = "default_guidance")]
    pub guidance_scale: f32,
    /// λ of eq. 10, the weight of the image prompt (0 = text to image).
    #[serde(default = "default_ip_scale")]
    pub ip_scale: f32,
    /// `ddim` or `euler_ancestral`.
    #[serde(default = "default_scheduler")]
    pub scheduler: SchedulerKind,
    /// img2img strength from the `composite` reconstruction (0 = from pure noise).
    #[serde(default)]
    pub strength: f32,
    /// A fixed noise seed for every frame (default: from the graph seed, stage and frame).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Generation size `[width, height]`, positive multiples of 8 (default: the export's,
    /// 512×512; exports made before `size_multiple` in `export.json` need multiples of 64).
    #[serde(default)]
    pub generate_size: Option<[u32; 2]>,
    /// How the tile captions become the text prompt: `concat` (each caption encoded on its
    /// own, states concatenated), `regional` (tile k's caption draws tile k's region) or
    /// `truncate` (joined and cut at 77 CLIP tokens, with a warning).
    #[serde(default)]
    pub prompt_mode: PromptMode,
    /// `prompt_mode = "regional"`: β in [0, 1], the global prompt's (all captions) share of
    /// the noise prediction inside a captioned tile.
    #[serde(default = "default_global_weight")]
    pub global_weight: f32,
    /// ONNX Runtime session options of SD (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

fn default_steps() -> usize {
    30
}
fn default_guidance() -> f32 {
    7.5
}
fn default_ip_scale() -> f32 {
    0.6
}
fn default_global_weight() -> f32 {
    sd::DEFAULT_GLOBAL_WEIGHT
}
fn default_scheduler() -> SchedulerKind {
    SchedulerKind::Ddim
}

fn default_timeout() -> u64 {
    30_000
}
fn default_size() -> [u32; 2] {
    [512, 512]
}

/// The `reconstruct` kind.
pub struct Reconstruct;

/// The SD model and how each frame is generated.
struct Diffusion {
    model: Box<SdIpAdapter>,
    options: GenerateOptions,
    fixed_seed: Option<u64>,
    graph_seed: u64,
    stage: String,
    /// `dataflow_model_inference_seconds` (each frame's share of a generate call),
    /// `dataflow_model_host_bytes_total` and `dataflow_model_steps_total` (UNet calls).
    inference: metrics::Histogram,
    host_bytes: metrics::Counter,
    unet_calls: metrics::Counter,
}

/// The host bytes and UNet calls of one [`SdIpAdapter::generate_batch`], each call once: the
/// images of a group share its calls and each reports the group's whole calls, so `k` images
/// with the same figures and `batched_with = n` count `k / n` times those figures.
fn unet_totals<'a>(generated: impl Iterator<Item = &'a Generated>) -> (u64, u64) {
    let mut same: std::collections::BTreeMap<(u64, usize, usize), u64> = std::collections::BTreeMap::new();
    for g in generated {
        *same
            .entry((g.host_bytes, g.unet_calls, g.batched_with.max(1)))
            .or_default() += 1;
    }
    same.into_iter().fold((0, 0), |(bytes, calls), ((b, c, n), k)| {
        (bytes + b * k / n as u64, calls + c as u64 * k / n as u64)
    })
}

struct Run {
    size: [u32; 2],
    diffusion: Option<Diffusion>,
}

/// An RGBA slice flattened on white (the image prompt).
fn on_white(slice: &image::RgbaImage) -> RgbImage {
    RgbImage::from_fn(slice.width(), slice.height(), |x, y| {
        let p = slice.get_pixel(x, y);
        let a = u16::from(p[3]);
        let mix = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])])
    })
}

/// A joined frame read for reconstruction: its merged fields and what the models need.
struct FrameIn {
    fields: Fields,
    size: (u32, u32),
    texts: Vec<Option<String>>,
    grid: (usize, usize),
    slice: Option<RgbaImage>,
    place: Option<Rect>,
}

impl FrameIn {
    fn read(j: &Joined, default_size: [u32; 2]) -> FrameIn {
        let fields = merge_joined(j);
        let (w, h) = match fields.rect("frame_size") {
            Some(r) => (r.width, r.height),
            None => (default_size[0], default_size[1]),
        };
        let texts: Vec<Option<String>> = match (
            fields.texts("corrected"),
            fields.text("corrected"),
            fields.texts("texts"),
        ) {
            (Some(t), _, _) => t.to_vec(),
            (None, Some(t), _) => vec![Some(t.to_string())],
            (None, None, Some(t)) => t.to_vec(),
            _ => Vec::new(),
        };
        let rows = fields.number("grid_rows").unwrap_or(1.0).max(1.0) as usize;
        let cols = fields.number("grid_cols").unwrap_or(1.0).max(1.0) as usize;
        let slice = fields.image("slice").map(|s| s.to_rgba());
        let place = fields.rect("box");
        FrameIn {
            fields,
            size: (w.max(1), h.max(1)),
            texts,
            grid: (rows, cols),
            slice,
            place,
        }
    }

    /// The `composite` reconstruction (text colours, object slice at its box).
    fn composite(&self) -> RgbImage {
        let object = match (&self.slice, self.place) {
            (Some(s), Some(b)) => Some((s, b.x, b.y)),
            _ => None,
        };
        composite::reconstruct(&self.texts, self.grid, self.size, object)
    }
}

/// What SD takes for one frame besides its captions.
struct Prompts {
    image_prompt: Option<RgbImage>,
    init: Option<RgbImage>,
    options: GenerateOptions,
}

impl Diffusion {
    /// The image prompt, the img2img start and the options (this frame's seed) of `f`.
    fn prompts(&self, f: &FrameIn, frame: FrameId) -> Prompts {
        let seed = self
            .fixed_seed
            .unwrap_or_else(|| channel_rng(self.graph_seed, &self.stage, frame.seq, 0).next_u64());
        Prompts {
            image_prompt: f.slice.as_ref().map(on_white),
            init: (self.options.strength > 0.0).then(|| f.composite()),
            options: GenerateOptions { seed, ..self.options },
        }
    }

    /// Generates the frames of a batch in one [`SdIpAdapter::generate_batch`] call (frames it
    /// can group share their UNet calls); one result per frame, a frame the model refuses
    /// failing alone.
    fn generate(&mut self, frames: &[(FrameId, FrameIn)]) -> Vec<Result<Generated, StageError>> {
        let prompts: Vec<Prompts> = frames.iter().map(|(id, f)| self.prompts(f, *id)).collect();
        let requests: Vec<GenerateRequest<'_>> = frames
            .iter()
            .zip(&prompts)
            .map(|((_, f), p)| GenerateRequest {
                captions: &f.texts,
                grid: f.grid,
                image_prompt: p.image_prompt.as_ref(),
                init: p.init.as_ref(),
                options: &p.options,
            })
            .collect();
        let t0 = std::time::Instant::now();
        let generated = self.model.generate_batch(&requests);
        let share = t0.elapsed().as_secs_f64() / requests.len().max(1) as f64;
        requests.iter().for_each(|_| self.inference.record(share));
        let (bytes, calls) = unet_totals(generated.iter().filter_map(|g| g.as_ref().ok()));
        self.host_bytes.increment(bytes);
        self.unet_calls.increment(calls);
        frames
            .iter()
            .zip(generated)
            .map(|((id, _), g)| {
                g.map_err(|e| {
                    StageError::new(
                        "model",
                        format!("stage `{}`: frame {id}: SD generation failed: {e}", self.stage),
                    )
                })
            })
            .collect()
    }

    /// Adds a generated frame's figures to `fields` and returns its image at `size`.
    fn finish(&self, frame: FrameId, g: Generated, size: (u32, u32), fields: &mut Fields) -> RgbImage {
        tracing::debug!(stage = %self.stage, frame = %frame, steps = g.steps_run, unet_evals = g.unet_evals,
            unet_seconds = g.unet_time.as_secs_f64(), batched_with = g.batched_with, "reconstructed");
        if g.tokens_dropped > 0 {
            tracing::warn!(stage = %self.stage, frame = %frame, dropped = g.tokens_dropped,
                "prompt_mode = \"truncate\": {} CLIP tokens past 77 dropped from the joined captions; \
                 set prompt_mode = \"concat\" or \"regional\" to keep every caption", g.tokens_dropped);
        }
        fields.insert("sd_seconds", Value::Number(g.total_time.as_secs_f64()));
        fields.insert("sd_unet_evals", Value::Number(g.unet_evals as f64));
        fields.insert("sd_tokens_dropped", Value::Number(g.tokens_dropped as f64));
        fields.insert("sd_batched_with", Value::Number(g.batched_with as f64));
        if g.image.dimensions() == size {
            g.image
        } else {
            imageops::resize(&g.image, size.0, size.1, FilterType::Triangle)
        }
    }
}

/// Emits the reconstruction `img` of joined frame `j` with `fields`.
fn emit(j: &Joined, mut fields: Fields, img: RgbImage, out: &mut Outputs) {
    let Some(first) = j.any() else { return };
    fields.insert("image", Value::Image(Image::from_rgb(img)));
    fields.insert("lost_inputs", Value::Number(j.lost() as f64));
    out.emit(first.derive_part(Part::WHOLE, fields));
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        self.process_batch(vec![input], std::slice::from_mut(out))
            .pop()
            .unwrap_or(Ok(()))
    }

    /// The frames of a batch: with SD, one `generate_batch` over all of them (see
    /// [`Diffusion::generate`]); `composite` goes frame by frame.
    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        // Frames with something to reconstruct, with their index in the batch; the others
        // (no part arrived, not a joined frame) emit nothing.
        let joined: Vec<(usize, Joined)> = inputs
            .into_iter()
            .enumerate()
            .filter_map(|(i, input)| match input {
                Input::Joined(j) if j.any().is_some() => Some((i, j)),
                _ => None,
            })
            .collect();
        let mut results: Vec<Result<(), StageError>> = (0..outs.len()).map(|_| Ok(())).collect();
        let frames: Vec<(FrameId, FrameIn)> = joined
            .iter()
            .map(|(_, j)| (j.id, FrameIn::read(j, self.size)))
            .collect();
        let Some(d) = &mut self.diffusion else {
            for ((i, j), (_, f)) in joined.iter().zip(frames) {
                let img = f.composite();
                emit(j, f.fields, img, &mut outs[*i]);
            }
            return results;
        };
        let generated = d.generate(&frames);
        for (((i, j), (_, mut f)), g) in joined.iter().zip(frames).zip(generated) {
            match g {
                Ok(g) => {
                    let img = d.finish(j.id, g, f.size, &mut f.fields);
                    emit(j, f.fields, img, &mut outs[*i]);
                }
                Err(e) => results[*i] = Err(e),
            }
        }
        results
    }
}

impl StageKind for Reconstruct {
    type Config = ReconstructConfig;
    const NAME: &'static str = "reconstruct";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Rebuilds the frame from the corrected texts and the received object slice.";
    /// With `batch`, SD generates the frames of a batch together (`Run::process_batch`).
    const BATCH: bool = true;

    fn validate(c: &Self::Config) -> Vec<dataflow_engine::KeyProblem> {
        let mut problems: Vec<_> = dataflow_engine::check_timeout_ms("timeout_ms", c.common().timeout_ms)
            .into_iter()
            .collect();
        if let ReconstructConfig::SdIpAdapter(c) = c {
            problems.extend(validate_sd(c));
        }
        problems
    }

    fn ports(c: &Self::Config) -> Ports {
        let out = OutPort::forwarding("out")
            .with("image", FieldType::Image)
            .with("lost_inputs", FieldType::Number);
        let (out, needs) = match c {
            ReconstructConfig::ThumbnailSr(_) => (
                out.with_each(&["sr_scale", "sr_seconds"], FieldType::Number),
                Field::new("thumbnail_lost", FieldType::Number),
            ),
            // `corrected` is a text or texts (`correct` keeps its input's type).
            ReconstructConfig::SdIpAdapter(_) => (
                out.with_each(
                    &["sd_seconds", "sd_unet_evals", "sd_tokens_dropped", "sd_batched_with"],
                    FieldType::Number,
                ),
                Field::new("corrected", FieldType::Any),
            ),
            ReconstructConfig::Composite(_) => (out, Field::new("corrected", FieldType::Any)),
        };
        Ports {
            outputs: vec![out],
            requires: vec![needs],
            join: Some(Duration::from_millis(c.common().timeout_ms.max(1))),
            heavy: true,
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        match c {
            ReconstructConfig::Composite(_) => Vec::new(),
            ReconstructConfig::ThumbnailSr(_) => crate::thumbnail_sr::check(ctx),
            ReconstructConfig::SdIpAdapter(c) => match sd_dir(c, ctx) {
                Err(e) => vec![e.message],
                Ok(dir) => check_generate_size(c, &dir),
            },
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let diffusion = match c {
            ReconstructConfig::Composite(_) => None,
            ReconstructConfig::ThumbnailSr(c) => return crate::thumbnail_sr::build(c, ctx),
            ReconstructConfig::SdIpAdapter(c) => {
                if c.steps == 0 || !(0.0..=1.0).contains(&c.strength) {
                    return Err(StageError::input("`steps` must be at least 1 and `strength` in [0, 1]"));
                }
                let dir = sd_dir(c, ctx)?;
                let model = SdIpAdapter::load(&dir, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
                let size = c.generate_size.unwrap_or(model.export().size);
                tracing::info!(stage = %ctx.stage, model = %dir.display(), provider = %model.provider(), steps = c.steps, "SD + IP-Adapter loaded");
                let labels = [
                    (names::LABEL_MODEL, "sd_ip_adapter"),
                    (names::LABEL_PROVIDER, model.provider().as_str()),
                ];
                Some(Diffusion {
                    model: Box::new(model),
                    options: GenerateOptions {
                        steps: c.steps,
                        guidance_scale: c.guidance_scale,
                        ip_scale: c.ip_scale,
                        scheduler: c.scheduler,
                        seed: 0,
                        strength: c.strength,
                        size,
                        prompt_mode: c.prompt_mode,
                        global_weight: c.global_weight,
                    },
                    fixed_seed: c.seed,
                    graph_seed: ctx.seed,
                    stage: ctx.stage.clone(),
                    inference: metrics::histogram!(names::MODEL_INFERENCE_SECONDS, &labels),
                    host_bytes: metrics::counter!(names::MODEL_HOST_BYTES, &labels),
                    unet_calls: metrics::counter!(names::MODEL_STEPS, &labels),
                })
            }
        };
        Ok(Built::Stage(Box::new(Run {
            size: c.common().size,
            diffusion,
        })))
    }
}

/// `generate_size` against the export's `size_multiple` (read from `export.json` only).
fn check_generate_size(c: &SdIpAdapterKeys, dir: &std::path::Path) -> Vec<String> {
    let checked = sd::read_export(dir).and_then(|e| e.check_size(c.generate_size.unwrap_or(e.size)));
    match checked {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!(
            "reconstruct model = \"sd_ip_adapter\" ({}): generate_size: {e}",
            dir.display()
        )],
    }
}

/// The SD-only key values validation refuses.
fn validate_sd(c: &SdIpAdapterKeys) -> impl Iterator<Item = dataflow_engine::KeyProblem> {
    dataflow_engine::check_range(
        "global_weight",
        f64::from(c.global_weight),
        0.0,
        1.0,
        "(the global prompt's share)",
    )
    .into_iter()
    .chain(c.generate_size.and_then(|[w, h]| {
        (w == 0 || h == 0 || !w.is_multiple_of(8) || !h.is_multiple_of(8)).then(|| dataflow_engine::KeyProblem {
            key: "generate_size",
            message: format!(
                "`generate_size` = [{w}, {h}]: both sides must be positive multiples of 8 px \
                 (SD's latent is 1/8 of the image), e.g. [{}, {}]",
                (w / 8 * 8).max(8),
                (h / 8 * 8).max(8)
            ),
        })
    }))
}

fn sd_dir(c: &SdIpAdapterKeys, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let explicit = c.model_dir.as_deref().map(|d| ctx.resolve(d));
    sd::locate_export(explicit.as_deref())
        .map_err(|e| StageError::io(format!("reconstruct model = \"sd_ip_adapter\": {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A generated image with these UNet figures (the rest does not matter here).
    fn generated(host_bytes: u64, unet_calls: usize, batched_with: usize) -> Generated {
        Generated {
            image: RgbImage::new(1, 1),
            steps_run: unet_calls,
            unet_time: Duration::ZERO,
            total_time: Duration::ZERO,
            unet_calls,
            unet_evals: unet_calls,
            tokens_dropped: 0,
            batched_with,
            unet_bytes: sd::UnetBytes::default(),
            host_bytes,
        }
    }

    /// A group of three sharing 7 calls of 1001 bytes counts them once; an image alone with
    /// the same figures counts its own; a group of two with one image failed counts half.
    #[test]
    fn shared_unet_calls_are_counted_once() {
        let batch = [
            generated(1001, 7, 3),
            generated(1001, 7, 3),
            generated(1001, 7, 3),
            generated(1001, 7, 1),
        ];
        assert_eq!(unet_totals(batch.iter()), (2002, 14));
        let half = [generated(1000, 8, 2)];
        assert_eq!(unet_totals(half.iter()), (500, 4));
        assert_eq!(unet_totals(std::iter::empty()), (0, 0));
    }

    fn sd_keys(size: [u32; 2]) -> SdIpAdapterKeys {
        match sd_config(size) {
            ReconstructConfig::SdIpAdapter(k) => k,
            other => panic!("not the SD model: {other:?}"),
        }
    }

    fn sd_config(size: [u32; 2]) -> ReconstructConfig {
        serde_json::from_value(serde_json::json!({"model": "sd_ip_adapter", "generate_size": size})).unwrap()
    }

    /// The committed fixture's `export.json`, optionally without `size_multiple` (an export made
    /// before the UNet was traced with skip-sized upsampling), in a folder of its own.
    fn export_dir(legacy: bool) -> tempfile::TempDir {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/sd15_ip/export.json");
        let mut e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        if legacy {
            e.as_object_mut().unwrap().remove("size_multiple");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("export.json"), e.to_string()).unwrap();
        dir
    }

    #[test]
    fn generate_size_520_passes_the_check_and_an_old_export_is_refused_with_the_nearest_sizes() {
        let dir = export_dir(false);
        assert!(Reconstruct::validate(&sd_config([520, 520])).is_empty());
        assert_eq!(
            check_generate_size(&sd_keys([520, 520]), dir.path()),
            Vec::<String>::new()
        );
        let old = export_dir(true);
        let problems = check_generate_size(&sd_keys([520, 520]), old.path());
        assert_eq!(problems.len(), 1, "{problems:?}");
        let msg = &problems[0];
        for want in ["generate_size", "multiples of 64", "512 or 576", "sd_ip_adapter.py"] {
            assert!(msg.contains(want), "{want} in {msg}");
        }
        assert!(msg.contains(&old.path().display().to_string()), "{msg}");
        assert!(check_generate_size(&sd_keys([512, 576]), old.path()).is_empty());
    }

    #[test]
    fn a_generate_size_off_the_8_px_grid_is_refused_at_validation() {
        let problems = Reconstruct::validate(&sd_config([520, 517]));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "generate_size");
        assert!(problems[0].message.contains("[520, 512]"), "{}", problems[0].message);
    }
}
