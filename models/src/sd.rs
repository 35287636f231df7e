//! Stable Diffusion 1.5 with IP-Adapter: the paper tier of `reconstruct` (Multi-SC §II-B, §III-D).
//!
//! - Papers: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
//!   CVPR 2022; Ye et al., "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image
//!   Diffusion Models", arXiv:2308.06721. Multi-SC eq. 8–10: the corrected texts are the text
//!   prompt, the received object slice the image prompt; the decoupled cross-attention adds
//!   λ · Attention(Q, K_ip, V_ip) to the text cross-attention, λ = 0 being text-to-image.
//! - Checkpoints: `stable-diffusion-v1-5/stable-diffusion-v1-5` (CreativeML OpenRAIL-M) and
//!   `h94/IP-Adapter` `models/ip-adapter_sd15.bin` with its ViT-H/14 image encoder (Apache-2.0).
//! - Export: `python models/export/sd_ip_adapter.py --out assets/models/sd15_ip` (internet; `--fp16`
//!   for half-precision weights behind the same f32 tensors); `--tiny-random --out
//!   models/fixtures/sd15_ip` gives the test fixture.
//! - Tensors (B batch, D text width, E image-embedding width, S encoder size, h×w = H/8 × W/8):
//!   `text_encoder.onnx` `input_ids` i64 `[B, 77]` → `last_hidden_state` f32 `[B, 77, D]`;
//!   `image_encoder.onnx` `pixel_values` f32 `[B, 3, S, S]` → `image_embeds` f32 `[B, E]`;
//!   `image_proj.onnx` `image_embeds` → `ip_tokens` f32 `[B, 4, D]`;
//!   `unet.onnx` `sample` f32 `[B, 4, h, w]`, `timestep` f32 `[1]`, `encoder_hidden_states`
//!   f32 `[B, L, D]` (L any multiple of 77: `prompt_mode = "concat"` chunks),
//!   `ip_tokens`, `ip_scale` f32 `[1]` → `noise_pred` f32 `[B, 4, h, w]`;
//!   `vae_encoder.onnx` `image` f32 `[B, 3, H, W]` in `[-1, 1]` → `latent_mean` (unscaled);
//!   `vae_decoder.onnx` `latent` (divided by the scaling factor) → `image` in `[-1, 1]`.
//! - Sizes: any multiple of `size_multiple` px (`export.json`, 8): the UNet is traced with
//!   diffusers' skip-sized upsampling, so e.g. 520×520 (latent 65 → 33 → 17 → 9 and back) works.
//!   Exports made before `size_multiple` traced plain doubling and take multiples of 64 only;
//!   [`SdExport::check_size`] refuses other sizes with the nearest valid ones.
//! - Weights: a graph past 2 GiB keeps them in one `<name>.onnx.data` beside it (the fp32 UNet
//!   and ViT-H image encoder); ONNX Runtime reads it relative to the graph's path.
//!
//! The loop is diffusers' `StableDiffusionPipeline` / `StableDiffusionImg2ImgPipeline` with an
//! IP-Adapter: prompt and empty prompt padded to 77 tokens with the pad token, classifier-free
//! guidance `ε_u + g (ε_c − ε_u)` when `g > 1` (batch of two: empty prompt with the projection
//! of a zero image embedding, then the prompt with the slice's tokens), the scheduler of
//! [`crate::schedulers`], the VAE decoder. The image prompt is pre-processed as
//! `CLIPImageProcessor` does (shorter side to S, bicubic; centre crop; `x/255`; CLIP mean/std).
//! Differences: the start noise comes from a ChaCha8 generator seeded by the caller, not from
//! PyTorch's generator; img2img starts from the VAE's latent mean rather than a sample of it.
//!
//! # Several captions: [`PromptMode`]
//!
//! CLIP's text encoder sees 77 tokens, and four ~42-token tile captions joined are ~170, so
//! cutting at 77 (diffusers' `truncation=True`, [`PromptMode::Truncate`]) loses tiles 2–4.
//! - [`PromptMode::Concat`]: each caption is cut into chunks of 75 tokens, each chunk encoded
//!   on its own as `<|startoftext|> … <|endoftext|>` padded to 77, and the states of all
//!   chunks concatenated along the sequence axis (SD's cross-attention takes any length; the
//!   technique of A1111's WebUI and `compel`). The unconditional row is the empty prompt's 77
//!   states repeated to the same length. One UNet call per step on 2 rows, as `Truncate`.
//! - [`PromptMode::Regional`]: MultiDiffusion (Bar-Tal et al., "MultiDiffusion: Fusing
//!   Diffusion Paths for Controlled Image Generation", ICML 2023, region-based generation):
//!   every step predicts the noise once per tile caption (tile k's chunks alone) and once for
//!   the global prompt (all captions, as `Concat`), each guided against the shared
//!   unconditional row, and blends them per latent pixel:
//!   `ε = β·ε_global + (1 − β)·ε_tile(pixel)`, β = [`GenerateOptions::global_weight`]
//!   (default [`DEFAULT_GLOBAL_WEIGHT`] = 0.3; a tile without a caption gets `ε_global`).
//!   The tiles are [`crate::composite::tile_rect`] of the latent, the same split as the
//!   sender's. The noise step of DDIM and Euler ancestral is linear in ε for a fixed state
//!   and noise, so blending ε equals MultiDiffusion's blending of the per-region updates.
//!   Cost: `tiles + 2` UNet rows per step instead of 2, in one call per distinct text length.
//!
//! # Several images: [`SdIpAdapter::generate_batch`]
//!
//! Images of the same size, scheduler, steps, img2img start and λ (the UNet takes one
//! timestep and one `ip_scale` per call) share their UNet calls: each step runs once per text
//! length on the rows of all of them (frames × guidance branches × prompts), each image with
//! its own prompts, image prompt, seed and guidance scale; other images form groups of their
//! own. The rows are independent, so a batched image equals the image generated alone: bit for
//! bit on this machine's CPU (`tests/it/sd_batch.rs` allows 1e-5 on the noise prediction and one
//! 8-bit level on the image, for kernels that sum in another order at another batch size). A
//! request the model cannot take fails alone, and a failed shared call is re-run image by image.
//!
//! # The conditioning stays where the UNet runs
//!
//! Of the UNet's inputs only `sample` and `timestep` change between the steps of a denoising run.
//! [`SdIpAdapter::prepare_conditioning`] groups the text rows, image-prompt tokens and λ of a run
//! (all images of a batch, per text length) once before the first step and, with
//! [`SdIpAdapter::set_bind_conditioning`] on (the default), places them in the UNet's provider
//! memory: under CUDA one host→device copy per run instead of one per step (≈ 2.2 MB per step
//! for SD 1.5 with four regional captions). The scheduler stays on the host on the latents.
//! [`Generated::host_bytes`] counts the bytes the UNet calls move ([`UnetBytes::counted`]).
//!
//! Repeating a row's states k times changes nothing mathematically (softmax over k copies of
//! each key divides each weight by k and sums k equal values), which is why the empty prompt
//! can be repeated to any chunk count.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::imageops::{self, FilterType};
use image::RgbImage;
use ort::value::DynValue;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Deserialize;

use crate::error::ModelError;
use crate::provider::{ActiveProvider, SessionOptions};
use crate::schedulers::{NoiseSchedule, Scheduler, SchedulerKind};
use crate::session::{load_session, tensor_f32, tensor_i64, IoSpec, LoadedSession, TensorSpec};
use crate::textgen::{read_export_json, TextTokenizer};

/// Where `dataflow` looks for the export, relative to the assets folder.
pub const ASSET_DIR: &str = "models/sd15_ip";
/// The export script, relative to the repository root.
pub const SCRIPT: &str = "models/export/sd_ip_adapter.py";
/// The command that makes the export (run from the repository root, with internet).
pub const EXPORT_COMMAND: &str = "python models/export/sd_ip_adapter.py --out assets/models/sd15_ip";

/// The export folder: `explicit`, else `assets/models/sd15_ip`; the error says the export command.
pub fn locate_export(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    crate::textgen::locate_export(explicit, ASSET_DIR, SCRIPT)
}

/// `export.json` of the export in `dir` (cheap: no model is loaded), for checking a graph.
pub fn read_export(dir: &Path) -> Result<SdExport, ModelError> {
    read_export_json(dir, EXPORT_COMMAND)
}

/// β of [`PromptMode::Regional`]: the global prompt's share of the noise prediction inside a
/// captioned tile. 0.3 lets the tile's own caption dominate its region (what that device saw
/// is drawn where it was) while the global prompt, which sees every caption, keeps the scene
/// coherent across tile borders. Not tuned on the real checkpoint (no GPU here).
pub const DEFAULT_GLOBAL_WEIGHT: f32 = 0.3;

/// How the captions of one image become SD's text conditioning (module docs, "Several captions").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptMode {
    /// The captions joined and cut at 77 CLIP tokens (diffusers' behaviour); the rest is dropped.
    Truncate,
    /// Every caption (in 75-token chunks) encoded on its own, the states concatenated.
    #[default]
    Concat,
    /// Tile k's caption conditions tile k's region, blended with a global prompt (MultiDiffusion).
    Regional,
}

/// `export.json` of an SD + IP-Adapter export.
#[derive(Debug, Clone, Deserialize)]
pub struct SdExport {
    /// Text length (77).
    pub max_length: usize,
    /// `<|startoftext|>`, opening every prompt chunk.
    pub bos_token_id: u32,
    /// `<|endoftext|>`, closing every prompt.
    pub eos_token_id: u32,
    /// The padding token (`<|endoftext|>` for SD 1.5).
    pub pad_token_id: u32,
    /// Text width D (768).
    pub cross_attention_dim: usize,
    /// Image-embedding width E (1024 for ViT-H/14).
    pub image_embed_dim: usize,
    /// Image-prompt tokens (4 for `ip-adapter_sd15`).
    pub num_ip_tokens: usize,
    /// The image encoder's input side S (224).
    pub image_size: u32,
    /// CLIP mean.
    pub image_mean: [f32; 3],
    /// CLIP standard deviation.
    pub image_std: [f32; 3],
    /// Latent channels (4).
    pub latent_channels: usize,
    /// Image pixels per latent pixel along a side (8).
    pub vae_scale_factor: u32,
    /// The VAE's latent scaling factor (0.18215).
    pub scaling_factor: f32,
    /// The checkpoint's native output size `[W, H]`.
    pub size: [u32; 2],
    /// Output sides must be multiples of this (8). Absent in exports made before the UNet was
    /// traced with skip-sized upsampling: those take multiples of [`LEGACY_SIZE_MULTIPLE`].
    #[serde(default)]
    pub size_multiple: Option<u32>,
    /// The training noise schedule.
    pub scheduler: NoiseSchedule,
}

/// The size multiple of an export without `size_multiple`: its UNet doubles at each of SD 1.5's
/// three upsamplers, so the latent must be a multiple of 8, the image of 64.
pub const LEGACY_SIZE_MULTIPLE: u32 = 64;

impl SdExport {
    /// Output sides must be multiples of this.
    pub fn size_multiple(&self) -> u32 {
        self.size_multiple.unwrap_or(LEGACY_SIZE_MULTIPLE).max(1)
    }

    /// `Ok` when `[w, h]` is a size this export generates; otherwise an error naming the nearest
    /// valid sizes (and, for an old export, the command that lifts the limit).
    pub fn check_size(&self, [w, h]: [u32; 2]) -> Result<(), ModelError> {
        let m = self.size_multiple();
        if w > 0 && h > 0 && w.is_multiple_of(m) && h.is_multiple_of(m) {
            return Ok(());
        }
        let near = |v: u32| {
            let down = (v / m * m).max(m);
            let up = v.div_ceil(m).max(1) * m;
            if down == up {
                format!("{up}")
            } else {
                format!("{down} or {up}")
            }
        };
        let why = if self.size_multiple.is_none() {
            format!(
                " (this export's UNet was traced with plain 2× upsampling; re-export it with \
                 `{EXPORT_COMMAND}` to generate at any multiple of 8)"
            )
        } else {
            String::new()
        };
        Err(ModelError::Invalid(format!(
            "the output size must be positive multiples of {m} px, got {w}×{h}: use a width of {} \
             and a height of {}{why}",
            near(w),
            near(h)
        )))
    }
}

/// How one image is generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// Inference steps.
    pub steps: usize,
    /// Classifier-free guidance scale g (no guidance at g ≤ 1).
    pub guidance_scale: f32,
    /// λ of eq. 10: weight of the image prompt (0 = text only).
    pub ip_scale: f32,
    /// The scheduler.
    pub scheduler: SchedulerKind,
    /// Seed of the start noise (and of Euler's ancestral noise).
    pub seed: u64,
    /// img2img strength in `[0, 1]`: 0 starts from pure noise; otherwise the init image's latents
    /// noised to step `steps − ⌊steps · strength⌋`.
    pub strength: f32,
    /// Output size `[W, H]`, multiples of 8.
    pub size: [u32; 2],
    /// How several captions become the text conditioning.
    pub prompt_mode: PromptMode,
    /// β of [`PromptMode::Regional`], in `[0, 1]` (ignored by the other modes).
    pub global_weight: f32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            steps: 30,
            guidance_scale: 7.5,
            ip_scale: 0.6,
            scheduler: SchedulerKind::Ddim,
            seed: 0,
            strength: 0.0,
            size: [512, 512],
            prompt_mode: PromptMode::Concat,
            global_weight: DEFAULT_GLOBAL_WEIGHT,
        }
    }
}

/// Where a conditional prompt applies in the latent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Area {
    /// Every latent pixel, with this weight.
    Everywhere(f32),
    /// Row-major tile `index` of a `grid = (rows, cols)` split, with this weight (0 outside).
    Tile {
        /// The tile.
        index: usize,
        /// `(rows, cols)`.
        grid: (usize, usize),
        /// Weight inside the tile.
        weight: f32,
    },
}

/// The prompts of one image, encoded: one or more conditional prompts with their [`Area`]s,
/// the empty prompt for classifier-free guidance, and the image-prompt tokens.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Text states of each conditional prompt, `len × D` with `len` a multiple of 77.
    pub texts: Vec<Vec<f32>>,
    /// Where each prompt of `texts` applies (same order); the noise predictions are blended
    /// per latent pixel with these weights.
    pub areas: Vec<Area>,
    /// The empty prompt's states (`77 × D`), the unconditional row under guidance.
    pub empty_text: Vec<f32>,
    /// Image-prompt tokens, `4 × D` each: `[zero embedding's, the slice's]` with guidance,
    /// `[the slice's]` without.
    pub ip: Vec<f32>,
    /// λ.
    pub ip_scale: f32,
    /// g.
    pub guidance_scale: f32,
    /// CLIP tokens cut off by [`PromptMode::Truncate`] (0 in the other modes).
    pub tokens_dropped: usize,
}

/// What [`SdIpAdapter::generate`] gives.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The image at the requested size.
    pub image: RgbImage,
    /// Denoising steps run (fewer than `steps` with img2img).
    pub steps_run: usize,
    /// Time in the UNet (all steps).
    pub unet_time: Duration,
    /// Time of the whole call.
    pub total_time: Duration,
    /// UNet session runs (one per step and distinct text length).
    pub unet_calls: usize,
    /// UNet evaluations: batch rows over all runs (2 per step for `truncate`/`concat` with
    /// guidance, `tiles + 2` for `regional`).
    pub unet_evals: usize,
    /// CLIP tokens cut off by [`PromptMode::Truncate`].
    pub tokens_dropped: usize,
    /// Images whose UNet calls this image shared in [`SdIpAdapter::generate_batch`], itself
    /// included (1 when it ran alone).
    pub batched_with: usize,
    /// What each step's UNet calls that this image took part in carry (whole calls, shared
    /// with the images of its batch).
    pub unet_bytes: UnetBytes,
    /// Bytes those calls moved between host memory and the UNet's provider memory over the
    /// denoising loop, counted as [`UnetBytes::counted`] says for the provider and
    /// [`SdIpAdapter::set_bind_conditioning`].
    pub host_bytes: u64,
}

impl Generated {
    /// [`host_bytes`](Self::host_bytes) per denoising step (0 without steps).
    pub fn host_bytes_per_step(&self) -> u64 {
        self.host_bytes.checked_div(self.steps_run as u64).unwrap_or(0)
    }
}

/// An SD 1.5 + IP-Adapter export: six sessions, a tokenizer, and the two unconditional inputs.
#[derive(Debug)]
pub struct SdIpAdapter {
    export: SdExport,
    tokenizer: TextTokenizer,
    text_encoder: LoadedSession,
    image_encoder: LoadedSession,
    image_proj: LoadedSession,
    unet: LoadedSession,
    vae_encoder: LoadedSession,
    vae_decoder: LoadedSession,
    empty_text: Vec<f32>,
    zero_ip: Vec<f32>,
    /// The UNet's text length when the export fixes it (77 before `prompt_mode`), else `None`.
    fixed_text_len: Option<usize>,
    /// Whether the denoising loop places its conditioning in the provider's memory once.
    bind_conditioning: bool,
}

impl SdIpAdapter {
    /// Loads the export in `dir`, checking each file's tensors against `export.json`.
    pub fn load(dir: impl AsRef<Path>, options: &SessionOptions) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let e: SdExport = read_export_json(dir, EXPORT_COMMAND)?;
        let (d, l, s, n) = (
            e.cross_attention_dim as i64,
            e.max_length as i64,
            i64::from(e.image_size),
            e.num_ip_tokens as i64,
        );
        let c = e.latent_channels as i64;
        let load = |file: &str, spec: IoSpec| load_session(dir.join(file), options, &spec);
        let text_encoder = load(
            "text_encoder.onnx",
            IoSpec::new()
                .input(TensorSpec::i64("input_ids", &[-1, l]))
                .output(TensorSpec::f32("last_hidden_state", &[-1, l, d])),
        )?;
        let image_encoder = load(
            "image_encoder.onnx",
            IoSpec::new()
                .input(TensorSpec::f32("pixel_values", &[-1, 3, s, s]))
                .output(TensorSpec::f32("image_embeds", &[-1, e.image_embed_dim as i64])),
        )?;
        let image_proj = load(
            "image_proj.onnx",
            IoSpec::new()
                .input(TensorSpec::f32("image_embeds", &[-1, e.image_embed_dim as i64]))
                .output(TensorSpec::f32("ip_tokens", &[-1, n, d])),
        )?;
        let unet = load(
            "unet.onnx",
            IoSpec::new()
                .input(TensorSpec::f32("sample", &[-1, c, -1, -1]))
                .input(TensorSpec::f32("timestep", &[1]))
                .input(TensorSpec::f32("encoder_hidden_states", &[-1, -1, d]))
                .input(TensorSpec::f32("ip_tokens", &[-1, n, d]))
                .input(TensorSpec::f32("ip_scale", &[1]))
                .output(TensorSpec::f32("noise_pred", &[-1, c, -1, -1])),
        )?;
        let vae_encoder = load(
            "vae_encoder.onnx",
            IoSpec::new()
                .input(TensorSpec::f32("image", &[-1, 3, -1, -1]))
                .output(TensorSpec::f32("latent_mean", &[-1, c, -1, -1])),
        )?;
        let vae_decoder = load(
            "vae_decoder.onnx",
            IoSpec::new()
                .input(TensorSpec::f32("latent", &[-1, c, -1, -1]))
                .output(TensorSpec::f32("image", &[-1, 3, -1, -1])),
        )?;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"))?;
        let fixed_text_len = unet
            .inputs()
            .iter()
            .find(|t| t.name == "encoder_hidden_states")
            .and_then(|t| t.shape.get(1))
            .and_then(|&n| usize::try_from(n).ok());
        let mut sd = SdIpAdapter {
            export: e,
            tokenizer,
            text_encoder,
            image_encoder,
            image_proj,
            unet,
            vae_encoder,
            vae_decoder,
            empty_text: Vec::new(),
            zero_ip: Vec::new(),
            fixed_text_len,
            bind_conditioning: true,
        };
        sd.empty_text = sd.encode_text("")?;
        sd.zero_ip = sd.project(&vec![0.0; sd.export.image_embed_dim])?;
        Ok(sd)
    }

    /// What `export.json` says.
    pub fn export(&self) -> &SdExport {
        &self.export
    }

    /// The provider the UNet runs on.
    pub fn provider(&self) -> ActiveProvider {
        self.unet.provider()
    }

    /// Whether a denoising run places the UNet inputs that do not change between its steps
    /// (the text rows, the image-prompt tokens and λ) in the UNet's provider memory once, before
    /// the first step, and feeds them from there at every step through an I/O binding; only
    /// `sample` and `timestep` are then written and `noise_pred` read per step. Off, every step
    /// builds them into fresh host tensors, which a CUDA UNet copies to the GPU at each call.
    /// On by default; both ways give the same images (bit for bit on the CPU).
    pub fn set_bind_conditioning(&mut self, bind: bool) {
        self.bind_conditioning = bind;
    }

    /// See [`set_bind_conditioning`](Self::set_bind_conditioning).
    pub fn binds_conditioning(&self) -> bool {
        self.bind_conditioning
    }

    /// Token ids of `text` as SD's `CLIPTokenizer(padding="max_length", truncation=True)`
    /// gives them: `<|startoftext|> … <|endoftext|>`, cut to 77, padded with the pad token.
    pub fn token_ids(&self, text: &str) -> Result<Vec<i64>, ModelError> {
        let l = self.export.max_length;
        let mut ids = self.tokenizer.encode(text, true)?;
        if ids.len() > l {
            ids.truncate(l - 1);
            ids.push(self.export.eos_token_id);
        }
        ids.resize(l, self.export.pad_token_id);
        Ok(ids.into_iter().map(i64::from).collect())
    }

    /// The text encoder's last hidden state for `text`, `77 × D`.
    pub fn encode_text(&mut self, text: &str) -> Result<Vec<f32>, ModelError> {
        let ids = self.token_ids(text)?;
        self.encode_chunks(&[ids])
    }

    /// CLIP tokens of `text` without its start and end tokens.
    pub fn prompt_tokens(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let mut ids = self.tokenizer.encode(text, true)?;
        if ids.last() == Some(&self.export.eos_token_id) {
            ids.pop();
        }
        if ids.first() == Some(&self.export.bos_token_id) {
            ids.remove(0);
        }
        Ok(ids)
    }

    /// [`PromptMode::Concat`]'s chunks of `text`: its tokens in runs of 75, each as
    /// `<|startoftext|> … <|endoftext|>` padded to 77 (one chunk, the empty prompt's, for "").
    pub fn chunk_ids(&self, text: &str) -> Result<Vec<Vec<i64>>, ModelError> {
        let l = self.export.max_length;
        let body = l.saturating_sub(2).max(1);
        let ids = self.prompt_tokens(text)?;
        let chunk = |c: &[u32]| {
            let mut v = Vec::with_capacity(l);
            v.push(self.export.bos_token_id);
            v.extend_from_slice(c);
            v.push(self.export.eos_token_id);
            v.resize(l, self.export.pad_token_id);
            v.into_iter().map(i64::from).collect::<Vec<i64>>()
        };
        if ids.is_empty() {
            return Ok(vec![chunk(&[])]);
        }
        Ok(ids.chunks(body).map(chunk).collect())
    }

    /// The text encoder's states of every chunk (77 ids each) in one batch, concatenated along
    /// the sequence axis: `(77 · chunks) × D`.
    pub fn encode_chunks(&mut self, chunks: &[Vec<i64>]) -> Result<Vec<f32>, ModelError> {
        let l = self.export.max_length;
        if chunks.is_empty() || chunks.iter().any(|c| c.len() != l) {
            return Err(ModelError::Invalid(format!(
                "the text encoder takes chunks of {l} token ids, got lengths {:?}",
                chunks.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        let ids: Vec<i64> = chunks.concat();
        let out = self
            .text_encoder
            .run(vec![("input_ids".into(), tensor_i64(&[chunks.len(), l], ids)?.into())])?;
        Ok(out.f32("last_hidden_state")?.1.to_vec())
    }

    /// The image encoder's projected embedding of `img` (`E` values).
    pub fn image_embeds(&mut self, img: &RgbImage) -> Result<Vec<f32>, ModelError> {
        let s = self.export.image_size;
        let px = clip_pixels(img, s, self.export.image_mean, self.export.image_std);
        let shape = [1, 3, s as usize, s as usize];
        let out = self
            .image_encoder
            .run_f32(&[("pixel_values", &shape, &px)], &["image_embeds"])?;
        out.into_iter()
            .next()
            .map(|t| t.data)
            .ok_or_else(|| ModelError::Invalid("the image encoder returned nothing".into()))
    }

    /// IP-Adapter's projection of an image embedding to the image-prompt tokens (`4 × D`).
    pub fn project(&mut self, embeds: &[f32]) -> Result<Vec<f32>, ModelError> {
        let shape = [1, embeds.len()];
        let out = self
            .image_proj
            .run_f32(&[("image_embeds", &shape, embeds)], &["ip_tokens"])?;
        out.into_iter()
            .next()
            .map(|t| t.data)
            .ok_or_else(|| ModelError::Invalid("the image projection returned nothing".into()))
    }

    /// Encodes the prompt (and the empty prompt under guidance) and the image prompt. Without
    /// an image prompt the adapter's tokens are those of a zero embedding and λ is set to 0.
    /// The prompt is cut at 77 tokens, as diffusers does ([`PromptMode::Truncate`]).
    pub fn condition(
        &mut self,
        prompt: &str,
        image_prompt: Option<&RgbImage>,
        ip_scale: f32,
        guidance_scale: f32,
    ) -> Result<Conditioning, ModelError> {
        let texts = vec![self.encode_text(prompt)?];
        let dropped = self.dropped_tokens(prompt)?;
        self.conditioning(
            texts,
            vec![Area::Everywhere(1.0)],
            dropped,
            image_prompt,
            ip_scale,
            guidance_scale,
        )
    }

    /// Encodes the captions of one image (`captions[k]` is row-major tile k of `grid`, `None`
    /// when lost) as `o.prompt_mode` says, and the image prompt (see [`Self::condition`]).
    pub fn condition_captions(
        &mut self,
        captions: &[Option<String>],
        grid: (usize, usize),
        image_prompt: Option<&RgbImage>,
        o: &GenerateOptions,
    ) -> Result<Conditioning, ModelError> {
        let (ip_scale, g) = (o.ip_scale, o.guidance_scale);
        let said: Vec<(usize, &str)> = captions
            .iter()
            .enumerate()
            .filter_map(|(k, c)| c.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(|c| (k, c)))
            .collect();
        if o.prompt_mode == PromptMode::Truncate {
            let joined = said.iter().map(|(_, c)| *c).collect::<Vec<_>>().join(" ");
            return self.condition(&joined, image_prompt, ip_scale, g);
        }
        let mut per_caption = Vec::with_capacity(said.len());
        for (_, c) in &said {
            per_caption.push(self.chunk_ids(c)?);
        }
        let all: Vec<Vec<i64>> = per_caption.iter().flatten().cloned().collect();
        let all = if all.is_empty() { self.chunk_ids("")? } else { all };
        let states = self.encode_chunks(&all)?;
        let tiles = grid.0.max(1) * grid.1.max(1);
        if o.prompt_mode == PromptMode::Concat || tiles == 1 {
            return self.conditioning(vec![states], vec![Area::Everywhere(1.0)], 0, image_prompt, ip_scale, g);
        }
        if captions.len() > tiles {
            return Err(ModelError::Invalid(format!(
                "prompt_mode = \"regional\" needs one caption per tile: got {} captions for a {}×{} grid; \
                 use prompt_mode = \"concat\"",
                captions.len(),
                grid.0,
                grid.1
            )));
        }
        let beta = o.global_weight;
        if !(0.0..=1.0).contains(&beta) {
            return Err(ModelError::Invalid(format!(
                "global_weight must be in [0, 1], got {beta}"
            )));
        }
        let row = self.export.max_length * self.export.cross_attention_dim;
        let (mut texts, mut areas) = (vec![states.clone()], vec![Area::Everywhere(beta)]);
        let mut at = 0;
        for ((k, _), chunks) in said.iter().zip(&per_caption) {
            let n = chunks.len() * row;
            texts.push(states[at..at + n].to_vec());
            areas.push(Area::Tile {
                index: *k,
                grid,
                weight: 1.0 - beta,
            });
            at += n;
        }
        self.conditioning(texts, areas, 0, image_prompt, ip_scale, g)
    }

    /// Tokens of `prompt` past the 75 that fit in one 77-token prompt.
    fn dropped_tokens(&self, prompt: &str) -> Result<usize, ModelError> {
        let n = self.prompt_tokens(prompt)?.len();
        Ok(n.saturating_sub(self.export.max_length.saturating_sub(2)))
    }

    fn conditioning(
        &mut self,
        texts: Vec<Vec<f32>>,
        areas: Vec<Area>,
        tokens_dropped: usize,
        image_prompt: Option<&RgbImage>,
        ip_scale: f32,
        guidance_scale: f32,
    ) -> Result<Conditioning, ModelError> {
        let (cond_ip, ip_scale) = match image_prompt {
            Some(img) => {
                let e = self.image_embeds(img)?;
                (self.project(&e)?, ip_scale)
            }
            None => (self.zero_ip.clone(), 0.0),
        };
        let ip = if guidance_scale > 1.0 {
            [self.zero_ip.clone(), cond_ip].concat()
        } else {
            cond_ip
        };
        Ok(Conditioning {
            texts,
            areas,
            empty_text: self.empty_text.clone(),
            ip,
            ip_scale,
            guidance_scale,
            tokens_dropped,
        })
    }

    /// The guided noise prediction for `sample` (`4 × h × w`, already scaled for the scheduler)
    /// at timestep `t`: each prompt of `c` guided against the empty prompt, blended by their
    /// [`Area`]s. Rows of the same text length share one UNet call (the empty prompt rides with
    /// the shortest rows, repeated to their length).
    pub fn guided_noise(
        &mut self,
        c: &Conditioning,
        sample: &[f32],
        t: f32,
        hw: (usize, usize),
    ) -> Result<Vec<f32>, ModelError> {
        let mut out = self.guided_noise_batch(&[(c, sample)], t, hw)?;
        Ok(out.pop().map(|g| g.eps).unwrap_or_default())
    }

    /// [`Self::guided_noise`] of several images at the same timestep, latent size and λ: the
    /// rows of all images that share a text length go in one UNet call, each image's rows in
    /// the order [`Self::guided_noise`] gives them alone (the empty prompt, then its prompts).
    /// One denoising step: [`Self::prepare_conditioning`], then [`Self::guided_noise_prepared`]
    /// (a loop prepares once and runs every step on the prepared conditioning).
    pub fn guided_noise_batch(
        &mut self,
        frames: &[(&Conditioning, &[f32])],
        t: f32,
        hw: (usize, usize),
    ) -> Result<Vec<GuidedNoise>, ModelError> {
        let Some(&(c0, s0)) = frames.first() else {
            return Ok(Vec::new());
        };
        let odd = frames
            .iter()
            .position(|(c, s)| c.ip_scale.to_bits() != c0.ip_scale.to_bits() || s.len() != s0.len());
        if let Some(k) = odd {
            return Err(ModelError::Invalid(format!(
                "image {k} of the UNet batch has another ip_scale or latent size than image 0; \
                 batch only images that share both"
            )));
        }
        let conds: Vec<&Conditioning> = frames.iter().map(|(c, _)| *c).collect();
        let prepared = self.prepare_conditioning(&conds, hw)?;
        let samples: Vec<&[f32]> = frames.iter().map(|(_, s)| *s).collect();
        self.guided_noise_prepared(&prepared, &samples, t)
    }

    /// The UNet inputs of a denoising run of the images `conds` (latent size `hw`, one λ) that
    /// stay the same at every step, built once: per text length, the rows of every image that
    /// has prompts of that length (its empty prompt with its shortest rows, then those prompts)
    /// and their image-prompt tokens; with [`bind_conditioning`](Self::set_bind_conditioning)
    /// on, placed in the UNet's provider memory (the GPU's under CUDA) once.
    pub fn prepare_conditioning(
        &mut self,
        conds: &[&Conditioning],
        hw: (usize, usize),
    ) -> Result<PreparedConditioning, ModelError> {
        let d = self.export.cross_attention_dim.max(1);
        let ip_scale = conds.first().map_or(0.0, |c| c.ip_scale);
        if let Some(k) = conds.iter().position(|c| c.ip_scale.to_bits() != ip_scale.to_bits()) {
            return Err(ModelError::Invalid(format!(
                "image {k} of the UNet batch has another ip_scale than image 0; batch only images \
                 that share it"
            )));
        }
        // Each image's distinct text lengths (first seen first), and those of all images.
        let lens: Vec<Vec<usize>> = conds
            .iter()
            .map(|c| distinct(c.texts.iter().map(|x| x.len() / d)))
            .collect();
        let mut calls = Vec::new();
        let mut bytes = vec![UnetBytes::default(); conds.len()];
        for len in distinct(lens.iter().flatten().copied()) {
            if let Some(fixed) = self.fixed_text_len.filter(|&f| f != len) {
                return Err(ModelError::Invalid(format!(
                    "this export's UNet takes exactly {fixed} text tokens, the prompt needs {len}: \
                     re-export it with `{EXPORT_COMMAND}` (the text axis is dynamic since prompt_mode), \
                     or use prompt_mode = \"truncate\""
                )));
            }
            let CallRows { text, ip, slots } = self.call_rows(conds, &lens, len)?;
            let call = UnetBytes::of_call(&self.export, slots.len(), len, hw);
            for k in distinct(slots.iter().map(|&(k, _)| k)) {
                bytes[k] = bytes[k] + call;
            }
            calls.push(self.prepared_call(len, slots, text, ip, ip_scale)?);
        }
        let frames = conds
            .iter()
            .zip(&lens)
            .map(|(c, lens)| FrameGuide {
                guidance_scale: c.guidance_scale,
                areas: c.areas.clone(),
                texts: c.texts.len(),
                calls: lens.len(),
            })
            .collect();
        Ok(PreparedConditioning {
            calls,
            frames,
            hw,
            ip_scale,
            bytes,
            bound: self.bind_conditioning,
        })
    }

    /// The text rows, image-prompt rows and row owners `(image, None = empty prompt | Some(i)
    /// = prompt i)` of the UNet call on text length `len`.
    fn call_rows(&self, conds: &[&Conditioning], lens: &[Vec<usize>], len: usize) -> Result<CallRows, ModelError> {
        let (d, l) = (self.export.cross_attention_dim.max(1), self.export.max_length);
        let (mut text, mut ip, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (k, c) in conds.iter().enumerate().filter(|(k, _)| lens[*k].contains(&len)) {
            let guide = c.guidance_scale > 1.0;
            let (zero_ip, cond_ip) = c.ip.split_at(if guide { c.ip.len() / 2 } else { 0 });
            // The empty prompt rides with the image's shortest rows (its repeats cost attention).
            if guide && lens[k].iter().min() == Some(&len) {
                if !len.is_multiple_of(l) || c.empty_text.len() != l * d {
                    return Err(ModelError::Invalid(format!(
                        "text states of {len} tokens are not whole {l}-token chunks"
                    )));
                }
                (0..len / l).for_each(|_| text.extend_from_slice(&c.empty_text));
                ip.extend_from_slice(zero_ip);
                slots.push((k, None));
            }
            for i in (0..c.texts.len()).filter(|&i| c.texts[i].len() == len * d) {
                text.extend_from_slice(&c.texts[i]);
                ip.extend_from_slice(cond_ip);
                slots.push((k, Some(i)));
            }
        }
        Ok(CallRows { text, ip, slots })
    }

    /// One prepared UNet call: its rows kept on the host, or (bound) their tensors and λ in
    /// the provider's memory.
    fn prepared_call(
        &self,
        len: usize,
        slots: Vec<Slot>,
        text: Vec<f32>,
        ip: Vec<f32>,
        ip_scale: f32,
    ) -> Result<PreparedCall, ModelError> {
        if !self.bind_conditioning {
            return Ok(PreparedCall {
                len,
                slots,
                inputs: CallInputs::Host { text, ip },
            });
        }
        let (rows, d, n) = (slots.len(), self.export.cross_attention_dim, self.export.num_ip_tokens);
        let place = |name: &str, shape: &[usize], data: Vec<f32>| -> Result<(String, DynValue), ModelError> {
            Ok((name.to_string(), self.unet.to_provider(tensor_f32(shape, data)?)?))
        };
        let values = vec![
            place("encoder_hidden_states", &[rows, len, d], text)?,
            place("ip_tokens", &[rows, n, d], ip)?,
            place("ip_scale", &[1], vec![ip_scale])?,
        ];
        Ok(PreparedCall {
            len,
            slots,
            inputs: CallInputs::Bound(values),
        })
    }

    /// One denoising step of the images of `p` on their latents `samples` (`4 × h × w` each,
    /// already scaled for the scheduler, in the order they were prepared) at timestep `t`:
    /// one UNet call per text length, writing only `sample` and `timestep` and reading
    /// `noise_pred`; each image's prompts guided and blended as [`Self::guided_noise`] does.
    pub fn guided_noise_prepared(
        &mut self,
        p: &PreparedConditioning,
        samples: &[&[f32]],
        t: f32,
    ) -> Result<Vec<GuidedNoise>, ModelError> {
        let (h, w) = p.hw;
        let n = self.export.latent_channels * h * w;
        if samples.len() != p.frames.len() || samples.iter().any(|s| s.len() != n) {
            return Err(ModelError::Invalid(format!(
                "the UNet step got latents of {:?} values for {} prepared images of {n} values each \
                 ({} channels × {h} × {w}): prepare the conditioning for the images and size denoised",
                samples.iter().map(|s| s.len()).collect::<Vec<_>>(),
                p.frames.len(),
                self.export.latent_channels
            )));
        }
        let mut cond: Vec<Vec<Vec<f32>>> = p.frames.iter().map(|f| vec![Vec::new(); f.texts]).collect();
        let mut uncond = vec![Vec::new(); samples.len()];
        let mut rows = vec![0usize; samples.len()];
        for call in &p.calls {
            let mut sample = Vec::with_capacity(call.slots.len() * n);
            for &(k, _) in &call.slots {
                sample.extend_from_slice(samples[k]);
            }
            let eps = self.unet_call(call, sample, t, p.hw, p.ip_scale)?;
            for (&(k, slot), e) in call.slots.iter().zip(eps.chunks(n.max(1))) {
                rows[k] += 1;
                match slot {
                    None => uncond[k] = e.to_vec(),
                    Some(i) => cond[k][i] = e.to_vec(),
                }
            }
        }
        Ok(p.frames
            .iter()
            .zip(cond)
            .zip(uncond)
            .zip(rows)
            .map(|(((f, cond), uncond), rows)| GuidedNoise {
                eps: guide_and_blend(f.guidance_scale, &f.areas, cond, &uncond, p.hw),
                unet_calls: f.calls,
                unet_evals: rows,
            })
            .collect())
    }

    /// One UNet run of a prepared call, `sample` holding each row's latents (`4 × h × w`) one
    /// after the other. Unbound, the text and image-prompt rows go in as fresh host tensors
    /// (copied to the GPU by this run under CUDA); bound, as the values placed once.
    fn unet_call(
        &mut self,
        call: &PreparedCall,
        sample: Vec<f32>,
        t: f32,
        (h, w): (usize, usize),
        ip_scale: f32,
    ) -> Result<Vec<f32>, ModelError> {
        let (d, n, ch) = (
            self.export.cross_attention_dim,
            self.export.num_ip_tokens,
            self.export.latent_channels,
        );
        let rows = call.slots.len();
        let sample = tensor_f32(&[rows, ch, h, w], sample)?;
        let timestep = tensor_f32(&[1], vec![t])?;
        let out = match &call.inputs {
            CallInputs::Host { text, ip } => self.unet.run(vec![
                ("sample".into(), sample.into()),
                ("timestep".into(), timestep.into()),
                (
                    "encoder_hidden_states".into(),
                    tensor_f32(&[rows, call.len, d], text.clone())?.into(),
                ),
                ("ip_tokens".into(), tensor_f32(&[rows, n, d], ip.clone())?.into()),
                ("ip_scale".into(), tensor_f32(&[1], vec![ip_scale])?.into()),
            ])?,
            CallInputs::Bound(fixed) => {
                let mut inputs: Vec<(String, &DynValue)> =
                    vec![("sample".into(), &sample), ("timestep".into(), &timestep)];
                inputs.extend(fixed.iter().map(|(name, value)| (name.clone(), value)));
                self.unet.run_bound(inputs, &[])?
            }
        };
        Ok(out.f32("noise_pred")?.1.to_vec())
    }

    /// Runs scheduler steps `first..` from `latents`, drawing Euler's noise from `rng`; the
    /// conditioning is prepared once ([`Self::prepare_conditioning`]) for all steps.
    pub fn denoise(
        &mut self,
        c: &Conditioning,
        sched: &Scheduler,
        mut latents: Vec<f32>,
        first: usize,
        hw: (usize, usize),
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<f32>, ModelError> {
        if first >= sched.timesteps().len() {
            return Ok(latents);
        }
        let prepared = self.prepare_conditioning(&[c], hw)?;
        for i in first..sched.timesteps().len() {
            let x = sched.scale_model_input(i, &latents);
            let eps = self
                .guided_noise_prepared(&prepared, &[&x], sched.timesteps()[i] as f32)?
                .pop()
                .map(|g| g.eps)
                .unwrap_or_default();
            let noise = match sched.kind() {
                SchedulerKind::Ddim => Vec::new(),
                SchedulerKind::EulerAncestral => normal(rng, latents.len()),
            };
            latents = sched.step(i, &eps, &latents, &noise);
        }
        Ok(latents)
    }

    /// The img2img start: the VAE's latent mean of `img` (at its own size) times the scaling factor.
    pub fn encode_latents(&mut self, img: &RgbImage) -> Result<Vec<f32>, ModelError> {
        let (w, h) = img.dimensions();
        let x = crate::lpips::to_signed_nchw(img);
        let out = self
            .vae_encoder
            .run_f32(&[("image", &[1, 3, h as usize, w as usize], &x)], &["latent_mean"])?;
        let k = self.export.scaling_factor;
        out.into_iter()
            .next()
            .map(|t| t.data.into_iter().map(|v| v * k).collect())
            .ok_or_else(|| ModelError::Invalid("the VAE encoder returned nothing".into()))
    }

    /// Decodes latents (`4 × h × w`, scaled) to an RGB image of `8w × 8h`.
    pub fn decode(&mut self, latents: &[f32], (h, w): (usize, usize)) -> Result<RgbImage, ModelError> {
        let k = self.export.scaling_factor;
        let z: Vec<f32> = latents.iter().map(|v| v / k).collect();
        let out = self
            .vae_decoder
            .run_f32(&[("latent", &[1, self.export.latent_channels, h, w], &z)], &["image"])?;
        let t = out
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::Invalid("the VAE decoder returned nothing".into()))?;
        let (ih, iw) = (t.shape[2], t.shape[3]);
        let plane = ih * iw;
        let px = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
        Ok(RgbImage::from_fn(iw as u32, ih as u32, |x, y| {
            let i = y as usize * iw + x as usize;
            image::Rgb([px(t.data[i]), px(t.data[plane + i]), px(t.data[2 * plane + i])])
        }))
    }

    /// Generates one image from `prompt`, the image prompt `image_prompt` (weight λ), and with
    /// `strength > 0` from `init` (resized to the output size) as the img2img start.
    pub fn generate(
        &mut self,
        prompt: &str,
        image_prompt: Option<&RgbImage>,
        init: Option<&RgbImage>,
        o: &GenerateOptions,
    ) -> Result<Generated, ModelError> {
        self.generate_captions(&[Some(prompt.to_string())], (1, 1), image_prompt, init, o)
    }

    /// [`Self::generate`] from the captions of a `grid = (rows, cols)` of tiles (`captions[k]`
    /// row-major tile k, `None` when lost), combined as `o.prompt_mode` says.
    pub fn generate_captions(
        &mut self,
        captions: &[Option<String>],
        grid: (usize, usize),
        image_prompt: Option<&RgbImage>,
        init: Option<&RgbImage>,
        o: &GenerateOptions,
    ) -> Result<Generated, ModelError> {
        let request = GenerateRequest {
            captions,
            grid,
            image_prompt,
            init,
            options: o,
        };
        self.generate_batch(&[request])
            .pop()
            .unwrap_or_else(|| Err(ModelError::Invalid("the generation gave no image".into())))
    }

    /// [`Self::generate_captions`] for several images, one result per request in order. Images
    /// with the same size, scheduler, steps, img2img start and λ share every UNet call: per step
    /// one call per text length on all their rows (frames × guidance branches × prompts), each
    /// with its own prompts, image prompt, seed and guidance scale; the others go in groups of
    /// their own. A request the model cannot take fails alone; when a shared UNet call fails,
    /// its images are run again one by one so that only the one at fault fails.
    ///
    /// [`Generated::unet_time`] is its group's time in the UNet, [`Generated::total_time`] the
    /// time from the start of this call to the image.
    pub fn generate_batch(&mut self, requests: &[GenerateRequest<'_>]) -> Vec<Result<Generated, ModelError>> {
        let t0 = Instant::now();
        let mut done: Vec<Option<Result<Job, ModelError>>> = (0..requests.len()).map(|_| None).collect();
        let mut groups: Vec<Vec<(usize, Job)>> = Vec::new();
        for (k, r) in requests.iter().enumerate() {
            match self.prepare(r) {
                Err(e) => done[k] = Some(Err(e)),
                Ok(job) => match groups.iter_mut().find(|g| g[0].1.shares_calls(&job)) {
                    Some(g) => g.push((k, job)),
                    None => groups.push(vec![(k, job)]),
                },
            }
        }
        for group in groups {
            for (k, r) in self.run_group(group) {
                done[k] = Some(r);
            }
        }
        done.into_iter()
            .map(|r| {
                let j = r.unwrap_or_else(|| Err(ModelError::Invalid("an image of the batch was not run".into())))?;
                let image = self.decode(&j.latents, j.hw)?;
                Ok(Generated {
                    image,
                    steps_run: j.steps_run,
                    unet_time: j.unet_time,
                    total_time: t0.elapsed(),
                    unet_calls: j.unet_calls,
                    unet_evals: j.unet_evals,
                    tokens_dropped: j.c.tokens_dropped,
                    batched_with: j.batched_with,
                    unet_bytes: j.unet_bytes,
                    host_bytes: j.host_bytes,
                })
            })
            .collect()
    }

    /// Checks a request, encodes its prompts and draws its start latents.
    fn prepare(&mut self, r: &GenerateRequest<'_>) -> Result<Job, ModelError> {
        let o = r.options;
        let f = self.export.vae_scale_factor.max(1);
        let [w, h] = o.size;
        self.export.check_size(o.size)?;
        if !w.is_multiple_of(f) || !h.is_multiple_of(f) {
            return Err(ModelError::Invalid(format!(
                "the output size must be a multiple of the VAE's {f} px, got {w}×{h}"
            )));
        }
        if !(0.0..=1.0).contains(&o.strength) {
            return Err(ModelError::Invalid(format!(
                "strength must be in [0, 1], got {}",
                o.strength
            )));
        }
        let hw = ((h / f) as usize, (w / f) as usize);
        let sched = Scheduler::new(o.scheduler, &self.export.scheduler, o.steps)?;
        let c = self.condition_captions(r.captions, r.grid, r.image_prompt, o)?;
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
        let n = self.export.latent_channels * hw.0 * hw.1;
        let noise = normal(&mut rng, n);
        let (latents, first) = match r.init {
            Some(img) if o.strength > 0.0 => {
                let first = sched.img2img_start(o.strength);
                let img = if img.dimensions() == (w, h) {
                    img.clone()
                } else {
                    imageops::resize(img, w, h, FilterType::Triangle)
                };
                let x0 = self.encode_latents(&img)?;
                if first >= o.steps {
                    (x0, first)
                } else {
                    (sched.add_noise(first, &x0, &noise), first)
                }
            }
            _ => {
                let s = sched.init_noise_sigma();
                (noise.iter().map(|v| v * s).collect(), 0)
            }
        };
        Ok(Job {
            c,
            sched,
            latents,
            first,
            hw,
            rng,
            steps_run: o.steps.saturating_sub(first),
            unet_time: Duration::ZERO,
            unet_calls: 0,
            unet_evals: 0,
            batched_with: 1,
            unet_bytes: UnetBytes::default(),
            host_bytes: 0,
        })
    }

    /// Denoises a group of images that share their UNet calls; when a shared call fails, each
    /// image is run again alone from its start latents.
    fn run_group(&mut self, mut group: Vec<(usize, Job)>) -> Vec<(usize, Result<Job, ModelError>)> {
        let saved: Vec<(Vec<f32>, ChaCha8Rng)> = match group.len() {
            1 => Vec::new(),
            _ => group.iter().map(|(_, j)| (j.latents.clone(), j.rng.clone())).collect(),
        };
        let tu = Instant::now();
        match self.denoise_jobs(&mut group) {
            Ok(()) => {
                let (unet_time, n) = (tu.elapsed(), group.len());
                group
                    .into_iter()
                    .map(|(k, mut j)| {
                        (j.unet_time, j.batched_with) = (unet_time, n);
                        (k, Ok(j))
                    })
                    .collect()
            }
            Err(e) if saved.is_empty() => group.first().map(|(k, _)| vec![(*k, Err(e))]).unwrap_or_default(),
            Err(_) => {
                let mut out = Vec::with_capacity(group.len());
                for ((k, mut j), (latents, rng)) in group.into_iter().zip(saved) {
                    (j.latents, j.rng, j.unet_calls, j.unet_evals) = (latents, rng, 0, 0);
                    (j.unet_bytes, j.host_bytes) = (UnetBytes::default(), 0);
                    out.extend(self.run_group(vec![(k, j)]));
                }
                out
            }
        }
    }

    /// Runs the scheduler steps of a group of images that share their UNet calls, on their
    /// conditioning prepared once for all steps.
    fn denoise_jobs(&mut self, group: &mut [(usize, Job)]) -> Result<(), ModelError> {
        let Some((_, j0)) = group.first() else {
            return Ok(());
        };
        let (first, hw, kind) = (j0.first, j0.hw, j0.sched.kind());
        let timesteps = j0.sched.timesteps().to_vec();
        if first >= timesteps.len() {
            return Ok(());
        }
        let conds: Vec<&Conditioning> = group.iter().map(|(_, j)| &j.c).collect();
        let prepared = self.prepare_conditioning(&conds, hw)?;
        for (i, &t) in timesteps.iter().enumerate().skip(first) {
            let xs: Vec<Vec<f32>> = group
                .iter()
                .map(|(_, j)| j.sched.scale_model_input(i, &j.latents))
                .collect();
            let samples: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
            let guided = self.guided_noise_prepared(&prepared, &samples, t as f32)?;
            for ((_, j), g) in group.iter_mut().zip(guided) {
                let noise = match kind {
                    SchedulerKind::Ddim => Vec::new(),
                    SchedulerKind::EulerAncestral => normal(&mut j.rng, j.latents.len()),
                };
                j.latents = j.sched.step(i, &g.eps, &j.latents, &noise);
                j.unet_calls += g.unet_calls;
                j.unet_evals += g.unet_evals;
            }
        }
        let (steps, provider) = (timesteps.len() - first, self.unet.provider());
        for (k, (_, j)) in group.iter_mut().enumerate() {
            j.unet_bytes = prepared.bytes(k);
            j.host_bytes = j.unet_bytes.counted(steps, provider, prepared.is_bound());
        }
        Ok(())
    }
}

/// One image of [`SdIpAdapter::generate_batch`]: the arguments of
/// [`SdIpAdapter::generate_captions`].
#[derive(Debug, Clone, Copy)]
pub struct GenerateRequest<'a> {
    /// Row-major tile captions (`None` when lost); one caption for a plain prompt.
    pub captions: &'a [Option<String>],
    /// `(rows, cols)` of the tiles.
    pub grid: (usize, usize),
    /// The image prompt (weight λ).
    pub image_prompt: Option<&'a RgbImage>,
    /// The img2img start, used when `options.strength > 0`.
    pub init: Option<&'a RgbImage>,
    /// How the image is generated.
    pub options: &'a GenerateOptions,
}

/// An image of a batch between its preparation and its decoding.
struct Job {
    c: Conditioning,
    sched: Scheduler,
    latents: Vec<f32>,
    first: usize,
    hw: (usize, usize),
    rng: ChaCha8Rng,
    steps_run: usize,
    unet_time: Duration,
    unet_calls: usize,
    unet_evals: usize,
    batched_with: usize,
    unet_bytes: UnetBytes,
    host_bytes: u64,
}

impl Job {
    /// Whether both images can share every UNet call: same timesteps (and sigmas), latent size
    /// and λ, the UNet taking one timestep and one λ per call.
    fn shares_calls(&self, o: &Job) -> bool {
        self.hw == o.hw
            && self.first == o.first
            && self.sched.kind() == o.sched.kind()
            && self.sched.timesteps() == o.sched.timesteps()
            && self.sched.sigmas() == o.sched.sigmas()
            && self.c.ip_scale.to_bits() == o.c.ip_scale.to_bits()
    }
}

/// One image's share of a batched UNet step ([`SdIpAdapter::guided_noise_batch`]).
#[derive(Debug, Clone)]
pub struct GuidedNoise {
    /// The guided (and blended) noise prediction.
    pub eps: Vec<f32>,
    /// UNet calls the image took part in.
    pub unet_calls: usize,
    /// The image's rows in them.
    pub unet_evals: usize,
}

/// The UNet inputs of a denoising run that do not change between its steps
/// ([`SdIpAdapter::prepare_conditioning`]): per text length, the rows of every image and, with
/// [`SdIpAdapter::set_bind_conditioning`] on, their values in the UNet's provider memory.
#[derive(Debug)]
pub struct PreparedConditioning {
    calls: Vec<PreparedCall>,
    frames: Vec<FrameGuide>,
    hw: (usize, usize),
    ip_scale: f32,
    /// Per image: what each step's calls it takes part in carry.
    bytes: Vec<UnetBytes>,
    bound: bool,
}

impl PreparedConditioning {
    /// Images prepared.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no image was prepared.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// UNet calls per step (one per distinct text length).
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// What each step's UNet calls that image `k` takes part in carry (whole calls).
    pub fn bytes(&self, k: usize) -> UnetBytes {
        self.bytes.get(k).copied().unwrap_or_default()
    }

    /// Whether the conditioning was placed in the provider's memory (bound).
    pub fn is_bound(&self) -> bool {
        self.bound
    }
}

/// What [`guide_and_blend`] needs of an image's [`Conditioning`] at every step.
#[derive(Debug)]
struct FrameGuide {
    guidance_scale: f32,
    areas: Vec<Area>,
    /// Prompts (`Conditioning::texts`).
    texts: usize,
    /// UNet calls the image takes part in per step.
    calls: usize,
}

/// One UNet call of every step: text length, row owners `(image, None = empty prompt |
/// Some(i) = prompt i)` and the inputs that stay the same.
#[derive(Debug)]
struct PreparedCall {
    len: usize,
    slots: Vec<Slot>,
    inputs: CallInputs,
}

/// The owner of a UNet row: `(image, None)` for its empty prompt, `(image, Some(i))` for its
/// prompt `i`.
type Slot = (usize, Option<usize>);

/// The rows of one UNet call as [`SdIpAdapter::prepare_conditioning`] gathers them.
struct CallRows {
    text: Vec<f32>,
    ip: Vec<f32>,
    slots: Vec<Slot>,
}

/// The text and image-prompt rows of a prepared call.
#[derive(Debug)]
enum CallInputs {
    /// On the host, made into fresh tensors at every step (the unbound path).
    Host { text: Vec<f32>, ip: Vec<f32> },
    /// `encoder_hidden_states`, `ip_tokens` and `ip_scale`, in the provider's memory.
    Bound(Vec<(String, DynValue)>),
}

/// Bytes the UNet calls of one denoising step move between host memory and the UNet's
/// provider memory, by what they carry (every tensor is f32).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnetBytes {
    /// New at every step: `sample` and `timestep` written in, `noise_pred` read out.
    pub step: u64,
    /// The same at every step of a run: `encoder_hidden_states`, `ip_tokens`, `ip_scale`.
    pub conditioning: u64,
}

impl UnetBytes {
    /// One UNet call on `rows` batch rows of `len` text tokens, latents `h × w`, with the widths
    /// of export `e`: `sample` and `noise_pred` `rows × C × h × w` each and `timestep` one value;
    /// `encoder_hidden_states` `rows × len × D`, `ip_tokens` `rows × N × D` and `ip_scale` one.
    pub fn of_call(e: &SdExport, rows: usize, len: usize, (h, w): (usize, usize)) -> Self {
        let latents = rows * e.latent_channels * h * w;
        let conditioning = rows * (len + e.num_ip_tokens) * e.cross_attention_dim;
        UnetBytes {
            step: 4 * (2 * latents + 1) as u64,
            conditioning: 4 * (conditioning + 1) as u64,
        }
    }

    /// The bytes a denoising run of `steps` steps counts ([`Generated::host_bytes`]), LLaVA's
    /// convention (`Generation::host_bytes`): the per-step part at every step; the
    /// conditioning at every step on CUDA without binding (fresh host tensors that each call
    /// copies to the GPU), and once otherwise: bound, it is copied to the GPU once before the
    /// first step; on the CPU, whose provider memory is host memory, it is written once and no
    /// bus is crossed at any step, bound or not (as LLaVA does not count its KV cache there).
    pub fn counted(self, steps: usize, provider: ActiveProvider, bound: bool) -> u64 {
        if steps == 0 {
            return 0;
        }
        let steps = steps as u64;
        let conditioning_copies = if provider == ActiveProvider::Cuda && !bound {
            steps
        } else {
            1
        };
        self.step * steps + self.conditioning * conditioning_copies
    }
}

impl std::ops::Add for UnetBytes {
    type Output = UnetBytes;

    fn add(self, o: UnetBytes) -> UnetBytes {
        UnetBytes {
            step: self.step + o.step,
            conditioning: self.conditioning + o.conditioning,
        }
    }
}

/// Classifier-free guidance `ε_u + g (ε_c − ε_u)` of each prompt's prediction (when g > 1),
/// then the predictions blended by their areas.
fn guide_and_blend(g: f32, areas: &[Area], mut cond: Vec<Vec<f32>>, uncond: &[f32], hw: (usize, usize)) -> Vec<f32> {
    if g > 1.0 {
        for e in &mut cond {
            e.iter_mut().zip(uncond).for_each(|(c, &u)| *c = u + g * (*c - u));
        }
    }
    if cond.len() == 1 {
        return cond.pop().unwrap_or_default();
    }
    blend(&cond, areas, hw)
}

/// The distinct values of `it`, first seen first.
fn distinct(it: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut out = Vec::new();
    for v in it {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Noise predictions (`channels × h × w` each) blended per latent pixel by their areas'
/// weights; a pixel no area weighs gets the first prediction.
fn blend(eps: &[Vec<f32>], areas: &[Area], (h, w): (usize, usize)) -> Vec<f32> {
    let plane = h * w;
    let first = eps.first().cloned().unwrap_or_default();
    if plane == 0 {
        return first;
    }
    let mut num = vec![0f32; first.len()];
    let mut den = vec![0f32; plane];
    for (e, area) in eps.iter().zip(areas) {
        let (x0, y0, x1, y1, weight) = match *area {
            Area::Everywhere(weight) => (0, 0, w, h, weight),
            Area::Tile { index, grid, weight } => {
                let (x, y, tw, th) = crate::composite::tile_rect(index, grid, (w as u32, h as u32));
                let (x, y) = (x as usize, y as usize);
                (x, y, x + tw as usize, y + th as usize, weight)
            }
        };
        for y in y0..y1.min(h) {
            for x in x0..x1.min(w) {
                let p = y * w + x;
                den[p] += weight;
                for c in (p..num.len().min(e.len())).step_by(plane) {
                    num[c] += weight * e[c];
                }
            }
        }
    }
    for (i, v) in num.iter_mut().enumerate() {
        let d = den[i % plane];
        *v = if d > 0.0 { *v / d } else { first[i] };
    }
    num
}

/// transformers' `get_resize_output_image_size(size, default_to_square=False)`: the shorter side
/// becomes `size`, the longer `int(size · long / short)` (integer division, i.e. truncated).
pub fn shortest_edge_size((w, h): (u32, u32), size: u32) -> (u32, u32) {
    let (short, long) = (u64::from(w.min(h).max(1)), u64::from(w.max(h)));
    let long = (u64::from(size) * long / short).max(u64::from(size)) as u32;
    if w <= h {
        (size, long)
    } else {
        (long, size)
    }
}

/// `n` standard-normal draws.
pub fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// `CLIPImageProcessor` (transformers 5, SD 1.5's `feature_extractor`): shorter side to `size`
/// and the longer to `int(size · long / short)` (truncated, as transformers does), bicubic
/// (Catmull-Rom, a = −0.5, widened when shrinking as torchvision's antialias); centre crop
/// `size × size` at `int((side − size) / 2)`; `x / 255`; `(x − mean) / std`; f32 NCHW. An image
/// already `size × size` is not resampled.
pub fn clip_pixels(img: &RgbImage, size: u32, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let img = if (w, h) == (size, size) {
        img.clone()
    } else {
        let (nw, nh) = shortest_edge_size((w, h), size);
        let r = imageops::resize(img, nw, nh, FilterType::CatmullRom);
        imageops::crop_imm(&r, (nw - size) / 2, (nh - size) / 2, size, size).to_image()
    };
    let plane = (size * size) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(p[c]) / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{blend, shortest_edge_size, Area};

    #[test]
    fn the_long_side_is_truncated_as_transformers_does_not_rounded() {
        // 224 · 500 / 333 = 336.3 and 224 · 299 / 200 = 334.9: int() gives 336 and 334.
        assert_eq!(shortest_edge_size((500, 333), 224), (336, 224));
        assert_eq!(shortest_edge_size((200, 299), 224), (224, 334));
        assert_eq!(shortest_edge_size((50, 41), 32), (39, 32));
        assert_eq!(shortest_edge_size((64, 64), 32), (32, 32));
    }

    #[test]
    fn regional_blend_weighs_each_tile_with_the_global_prompt_and_a_lost_tile_gets_the_global() {
        // 1 channel, 2×2 latent, 2×2 grid: one latent pixel per tile.
        let global = vec![10.0; 4];
        let tile0 = vec![1.0, 99.0, 99.0, 99.0];
        let tile3 = vec![99.0, 99.0, 99.0, 3.0];
        let beta = 0.25;
        let tile = |index| Area::Tile {
            index,
            grid: (2, 2),
            weight: 1.0 - beta,
        };
        let eps = blend(
            &[global, tile0, tile3],
            &[Area::Everywhere(beta), tile(0), tile(3)],
            (2, 2),
        );
        let want = [
            beta * 10.0 + (1.0 - beta) * 1.0,
            10.0,
            10.0,
            beta * 10.0 + (1.0 - beta) * 3.0,
        ];
        for (a, b) in eps.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{eps:?} vs {want:?}");
        }
    }

    #[test]
    fn a_pixel_no_area_covers_takes_the_first_prediction() {
        let eps = blend(
            &[vec![5.0; 4], vec![7.0; 4]],
            &[
                Area::Everywhere(0.0),
                Area::Tile {
                    index: 0,
                    grid: (1, 2),
                    weight: 1.0,
                },
            ],
            (2, 2),
        );
        assert_eq!(eps, vec![7.0, 5.0, 7.0, 5.0]);
    }
}
