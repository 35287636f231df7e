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
//!   `unet.onnx` `sample` f32 `[B, 4, h, w]`, `timestep` f32 `[1]`, `encoder_hidden_states`,
//!   `ip_tokens`, `ip_scale` f32 `[1]` → `noise_pred` f32 `[B, 4, h, w]`;
//!   `vae_encoder.onnx` `image` f32 `[B, 3, H, W]` in `[-1, 1]` → `latent_mean` (unscaled);
//!   `vae_decoder.onnx` `latent` (divided by the scaling factor) → `image` in `[-1, 1]`.
//!
//! The loop is diffusers' `StableDiffusionPipeline` / `StableDiffusionImg2ImgPipeline` with an
//! IP-Adapter: prompt and empty prompt padded to 77 tokens with the pad token, classifier-free
//! guidance `ε_u + g (ε_c − ε_u)` when `g > 1` (batch of two: empty prompt with the projection
//! of a zero image embedding, then the prompt with the slice's tokens), the scheduler of
//! [`crate::schedulers`], the VAE decoder. The image prompt is pre-processed as
//! `CLIPImageProcessor` does (shorter side to S, bicubic; centre crop; `x/255`; CLIP mean/std).
//! Differences: the start noise comes from a ChaCha8 generator seeded by the caller, not from
//! PyTorch's generator; img2img starts from the VAE's latent mean rather than a sample of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::imageops::{self, FilterType};
use image::RgbImage;
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

/// `export.json` of an SD + IP-Adapter export.
#[derive(Debug, Clone, Deserialize)]
pub struct SdExport {
    /// Text length (77).
    pub max_length: usize,
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
    /// The training noise schedule.
    pub scheduler: NoiseSchedule,
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
        }
    }
}

/// The prompts of one image, encoded: rows `[empty, prompt]` with guidance, `[prompt]` without.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Text states, `rows × 77 × D`.
    pub text: Vec<f32>,
    /// Image-prompt tokens, `rows × 4 × D`.
    pub ip: Vec<f32>,
    /// λ.
    pub ip_scale: f32,
    /// g.
    pub guidance_scale: f32,
}

impl Conditioning {
    fn rows(&self) -> usize {
        if self.guidance_scale > 1.0 {
            2
        } else {
            1
        }
    }
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
                .input(TensorSpec::f32("encoder_hidden_states", &[-1, l, d]))
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
        let l = self.export.max_length;
        let out = self
            .text_encoder
            .run(vec![("input_ids".into(), tensor_i64(&[1, l], ids)?.into())])?;
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
    pub fn condition(
        &mut self,
        prompt: &str,
        image_prompt: Option<&RgbImage>,
        ip_scale: f32,
        guidance_scale: f32,
    ) -> Result<Conditioning, ModelError> {
        let cond_text = self.encode_text(prompt)?;
        let (cond_ip, ip_scale) = match image_prompt {
            Some(img) => {
                let e = self.image_embeds(img)?;
                (self.project(&e)?, ip_scale)
            }
            None => (self.zero_ip.clone(), 0.0),
        };
        let (text, ip) = if guidance_scale > 1.0 {
            (
                [self.empty_text.clone(), cond_text].concat(),
                [self.zero_ip.clone(), cond_ip].concat(),
            )
        } else {
            (cond_text, cond_ip)
        };
        Ok(Conditioning {
            text,
            ip,
            ip_scale,
            guidance_scale,
        })
    }

    /// The guided noise prediction for `sample` (`4 × h × w`, already scaled for the scheduler)
    /// at timestep `t`: one UNet call on the batch of [`Conditioning`] rows.
    pub fn guided_noise(
        &mut self,
        c: &Conditioning,
        sample: &[f32],
        t: f32,
        (h, w): (usize, usize),
    ) -> Result<Vec<f32>, ModelError> {
        let rows = c.rows();
        let (d, l, n, ch) = (
            self.export.cross_attention_dim,
            self.export.max_length,
            self.export.num_ip_tokens,
            self.export.latent_channels,
        );
        let batch: Vec<f32> = (0..rows).flat_map(|_| sample.iter().copied()).collect();
        let out = self.unet.run(vec![
            ("sample".into(), tensor_f32(&[rows, ch, h, w], batch)?.into()),
            ("timestep".into(), tensor_f32(&[1], vec![t])?.into()),
            (
                "encoder_hidden_states".into(),
                tensor_f32(&[rows, l, d], c.text.clone())?.into(),
            ),
            ("ip_tokens".into(), tensor_f32(&[rows, n, d], c.ip.clone())?.into()),
            ("ip_scale".into(), tensor_f32(&[1], vec![c.ip_scale])?.into()),
        ])?;
        let (_, eps) = out.f32("noise_pred")?;
        if rows == 1 {
            return Ok(eps.to_vec());
        }
        let (u, cnd) = eps.split_at(eps.len() / 2);
        let g = c.guidance_scale;
        Ok(u.iter().zip(cnd).map(|(&u, &c)| u + g * (c - u)).collect())
    }

    /// Runs scheduler steps `first..` from `latents`, drawing Euler's noise from `rng`.
    pub fn denoise(
        &mut self,
        c: &Conditioning,
        sched: &Scheduler,
        mut latents: Vec<f32>,
        first: usize,
        hw: (usize, usize),
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<f32>, ModelError> {
        for i in first..sched.timesteps().len() {
            let x = sched.scale_model_input(i, &latents);
            let eps = self.guided_noise(c, &x, sched.timesteps()[i] as f32, hw)?;
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
        let t0 = Instant::now();
        let f = self.export.vae_scale_factor;
        let [w, h] = o.size;
        if w == 0 || h == 0 || w % f != 0 || h % f != 0 {
            return Err(ModelError::Invalid(format!(
                "the output size must be a positive multiple of {f}, got {w}×{h}"
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
        let c = self.condition(prompt, image_prompt, o.ip_scale, o.guidance_scale)?;
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
        let n = self.export.latent_channels * hw.0 * hw.1;
        let noise = normal(&mut rng, n);
        let (latents, first) = match init {
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
        let tu = Instant::now();
        let latents = self.denoise(&c, &sched, latents, first, hw, &mut rng)?;
        let unet_time = tu.elapsed();
        let image = self.decode(&latents, hw)?;
        Ok(Generated {
            image,
            steps_run: o.steps.saturating_sub(first),
            unet_time,
            total_time: t0.elapsed(),
        })
    }
}

/// `n` standard-normal draws.
pub fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// `CLIPImageProcessor`: shorter side to `size` (bicubic), centre crop `size × size`, `x / 255`,
/// `(x − mean) / std`, as f32 NCHW. An image already `size × size` is not resampled.
pub fn clip_pixels(img: &RgbImage, size: u32, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let img = if (w, h) == (size, size) {
        img.clone()
    } else {
        let scale = size as f32 / w.min(h).max(1) as f32;
        let (nw, nh) = (
            ((w as f32 * scale).round() as u32).max(size),
            ((h as f32 * scale).round() as u32).max(size),
        );
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
