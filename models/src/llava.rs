//! LLaVA-Interleave-Qwen-0.5B captions: the paper tier of the `caption` stage.
//!
//! - Paper: Multi-SC uses "a lightweight LLaVA" with Qwen1.5-0.5B; model card
//!   <https://huggingface.co/llava-hf/llava-interleave-qwen-0.5b-hf> (SigLIP-so400m/14 at 384 px,
//!   729 image tokens, Qwen1.5-0.5B text model).
//! - Export: `python models/export/llava.py --out assets/models/llava` (internet, real weights);
//!   `--tiny-random --out models/fixtures/llava` gives the test fixture with the same classes and
//!   tensor names. The folder holds `onnx/{vision_encoder,embed_tokens,decoder_model_merged}.onnx`,
//!   `tokenizer.json` and `export.json` (prompt template, image token, pre-processing, stop tokens).
//! - Tensors: `vision_encoder`: `pixel_values` f32 `[b, 3, S, S]` → `image_features` f32
//!   `[b, N, hidden]`; `embed_tokens`: `input_ids` i64 `[b, s]` → `inputs_embeds` f32 `[b, s, hidden]`;
//!   `decoder_model_merged`: `inputs_embeds`, `attention_mask` i64 `[b, past + s]`, `position_ids`
//!   i64 `[b, s]`, `past_key_values.{i}.key/value` f32 `[b, kv_heads, past, head_dim]` → `logits`
//!   f32 `[b, 1, vocab]` (the last position only; exports made before this give `[b, s, vocab]`,
//!   ~456 MB a tile at the prefill for the real model, and are still read),
//!   `present.{i}.key/value` (a past of length 0 is "no past").
//!
//! Pre-processing is the SigLIP processor's ([`siglip_pixel_values`]): RGB, bicubic resize to
//! S×S with antialias as PIL and torchvision do it ([`resize_bicubic_antialiased`]), `x / 255`, then
//! `(x − mean) / std`. The prompt is the checkpoint's chat template around the paper's query
//! ([`QUERY`]) with `<image>` expanded to N image tokens, whose embeddings are replaced by the
//! image features. Decoding: greedy or sampled, with the KV cache (or without, for checks),
//! until a stop token or `max_new_tokens`; a batch of tiles of the same size runs in one call.
//! Under CUDA the KV cache stays in GPU memory between steps (an I/O binding, see
//! [`Llava::set_bind_cache`]); only the logits come back to the host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;
use ort::session::SessionInputValue;
use ort::value::DynValue;
use serde::Deserialize;

use crate::error::ModelError;
use crate::provider::{ActiveProvider, SessionOptions};
use crate::session::{load_session, tensor_f32, tensor_i64, IoSpec, LoadedSession, RunOutputs, TensorSpec};
use crate::textgen::{read_export_json, Decoding, Picker, TextTokenizer};

/// The paper's captioning query.
pub const QUERY: &str = "Relay a brief, clear account of the picture shown.";
/// Where `dataflow` looks for the export, relative to the assets folder.
pub const ASSET_DIR: &str = "models/llava";
/// The command that makes the export (run from the repository root, with internet).
pub const EXPORT_COMMAND: &str = "python models/export/llava.py --out assets/models/llava";
/// The export script, relative to the repository root.
pub const SCRIPT: &str = "models/export/llava.py";

/// The export folder: `explicit`, else `assets/models/llava`; the error says the export command.
pub fn locate_export(explicit: Option<&Path>) -> Result<std::path::PathBuf, ModelError> {
    crate::textgen::locate_export(explicit, ASSET_DIR, SCRIPT)
}

/// `export.json` of an export: what the Rust side needs besides the ONNX files.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaExport {
    /// The checkpoint (or `tiny-random`).
    pub model: String,
    /// The chat-rendered prompt with `{query}` where the query goes.
    pub prompt_template: String,
    /// The image placeholder token, e.g. `<image>`.
    pub image_token: String,
    /// Its id.
    pub image_token_id: u32,
    /// Image tokens per image (rows of `image_features`).
    pub image_seq_length: usize,
    /// Model input size `[height, width]`.
    pub image_size: [u32; 2],
    /// Per-channel mean after rescaling.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    pub image_std: [f32; 3],
    /// Pixel rescale factor (1/255).
    pub rescale_factor: f32,
    /// Tokens that end a caption.
    pub stop_token_ids: Vec<u32>,
    /// Decoder layers.
    pub num_layers: usize,
    /// Key/value heads of the cache.
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the embeddings.
    pub hidden_size: usize,
    /// Vocabulary size (width of `logits`).
    pub vocab_size: usize,
}

/// Generation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// Most new tokens per caption.
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub decoding: Decoding,
    /// Feed the KV cache back (the normal case); `false` re-runs the whole sequence each step.
    pub use_cache: bool,
    /// Stop at the export's stop tokens (`false`: always `max_new_tokens`, for benchmarks).
    pub stop_at_stop_tokens: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 48,
            decoding: Decoding::Greedy,
            use_cache: true,
            stop_at_stop_tokens: true,
        }
    }
}

/// One generated caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    /// New token ids, the stop token left out.
    pub ids: Vec<u32>,
    /// Their text, special tokens left out.
    pub text: String,
}

/// The captions of one call and where the time went.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    /// One caption per image, in order.
    pub captions: Vec<Caption>,
    /// Vision encoder, embedding and the first decoder run.
    pub prefill: Duration,
    /// Every later decoder step (the decode loop).
    pub decode: Duration,
    /// Decoder steps after the prefill.
    pub decode_steps: usize,
    /// Bytes the decode steps (after the prefill) copied between the host and the
    /// provider's memory: the new token's ids and embeddings, the attention mask and
    /// positions written in, the embeddings and logits read out; and, on a GPU without the
    /// cache bound to it ([`Llava::set_bind_cache`]), the KV cache: the past copied in and
    /// the `present.*` values copied out each step. On the CPU, and with the cache bound,
    /// each step's `present.*` values are fed back as the next step's `past_key_values.*`
    /// where they are.
    pub host_bytes: u64,
    /// Size of the KV cache fed back at the last step, in bytes.
    pub kv_bytes: u64,
}

impl Generation {
    /// [`host_bytes`](Self::host_bytes) per decode step (0 without decode steps).
    pub fn host_bytes_per_step(&self) -> u64 {
        self.host_bytes.checked_div(self.decode_steps as u64).unwrap_or(0)
    }
}

/// A LLaVA export loaded into three sessions.
#[derive(Debug)]
pub struct Llava {
    vision: LoadedSession,
    embed: LoadedSession,
    decoder: LoadedSession,
    tokenizer: TextTokenizer,
    export: LlavaExport,
    dir: PathBuf,
    /// Run the decoder through an I/O binding that keeps `present.*` in the provider's memory.
    bind_cache: bool,
}

impl Llava {
    /// The tensors of the three files for an export described by `e`.
    pub fn io_specs(e: &LlavaExport) -> [IoSpec; 3] {
        let (h, w) = (i64::from(e.image_size[0]), i64::from(e.image_size[1]));
        let hidden = e.hidden_size as i64;
        let vision = IoSpec::new()
            .input(TensorSpec::f32("pixel_values", &[-1, 3, h, w]))
            .output(TensorSpec::f32("image_features", &[-1, -1, hidden]));
        let embed = IoSpec::new()
            .input(TensorSpec::i64("input_ids", &[-1, -1]))
            .output(TensorSpec::f32("inputs_embeds", &[-1, -1, hidden]));
        let mut decoder = IoSpec::new()
            .input(TensorSpec::f32("inputs_embeds", &[-1, -1, hidden]))
            .input(TensorSpec::i64("attention_mask", &[-1, -1]))
            .input(TensorSpec::i64("position_ids", &[-1, -1]))
            .output(TensorSpec::f32("logits", &[-1, -1, e.vocab_size as i64]));
        let cache = [-1, e.num_key_value_heads as i64, -1, e.head_dim as i64];
        for i in 0..e.num_layers {
            for kind in ["key", "value"] {
                decoder = decoder
                    .input(TensorSpec::f32(format!("past_key_values.{i}.{kind}"), &cache))
                    .output(TensorSpec::f32(format!("present.{i}.{kind}"), &cache));
            }
        }
        [vision, embed, decoder]
    }

    /// Loads the export in `dir` (checking every file's tensors against `export.json`).
    pub fn load(dir: impl AsRef<Path>, options: &SessionOptions) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let export: LlavaExport = read_export_json(dir, EXPORT_COMMAND)?;
        let [vs, es, ds] = Self::io_specs(&export);
        let onnx = dir.join("onnx");
        let vision = load_session(onnx.join("vision_encoder.onnx"), options, &vs)?;
        let embed = load_session(onnx.join("embed_tokens.onnx"), options, &es)?;
        let decoder = load_session(onnx.join("decoder_model_merged.onnx"), options, &ds)?;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"))?;
        match tokenizer.token_id(&export.image_token) {
            Some(id) if id == export.image_token_id => {}
            other => {
                return Err(ModelError::Invalid(format!(
                    "{}: the tokenizer gives `{}` the id {other:?}, export.json says {}",
                    dir.display(),
                    export.image_token,
                    export.image_token_id
                )))
            }
        }
        Ok(Llava {
            vision,
            embed,
            bind_cache: decoder.provider() == ActiveProvider::Cuda,
            decoder,
            tokenizer,
            export,
            dir: dir.to_path_buf(),
        })
    }

    /// Whether the decoder keeps its KV cache in the provider's memory between steps (an
    /// I/O binding that leaves `present.*` on the device and feeds it back from there) rather
    /// than in host memory. On by default under CUDA, where an unbound cache crosses the bus
    /// twice a step; off by default on the CPU, where both ways give the same tokens and
    /// nothing crosses.
    pub fn set_bind_cache(&mut self, bind: bool) {
        self.bind_cache = bind;
    }

    /// See [`set_bind_cache`](Self::set_bind_cache).
    pub fn binds_cache(&self) -> bool {
        self.bind_cache
    }

    /// What `export.json` says.
    pub fn export(&self) -> &LlavaExport {
        &self.export
    }

    /// The export folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The provider the decoder runs on.
    pub fn provider(&self) -> ActiveProvider {
        self.decoder.provider()
    }

    /// The prompt's token ids for `query`, with the image placeholder expanded.
    pub fn prompt_ids(&self, query: &str) -> Result<Vec<u32>, ModelError> {
        let e = &self.export;
        let text = e
            .prompt_template
            .replace("{query}", query)
            .replace(&e.image_token, &e.image_token.repeat(e.image_seq_length));
        self.tokenizer.encode(&text, false)
    }

    /// `pixel_values` of `images` (NCHW, the processor's pre-processing, [`siglip_pixel_values`]).
    pub fn pixel_values(&self, images: &[&RgbImage]) -> Vec<f32> {
        let e = &self.export;
        let mut out = Vec::new();
        for img in images {
            out.extend(siglip_pixel_values(
                img,
                e.image_size,
                e.rescale_factor,
                e.image_mean,
                e.image_std,
            ));
        }
        out
    }

    /// One caption of `image` for the paper's query.
    pub fn caption(&mut self, image: &RgbImage, options: &GenerateOptions) -> Result<Caption, ModelError> {
        let mut g = self.generate(&[image], QUERY, options)?;
        g.captions
            .pop()
            .ok_or_else(|| ModelError::Invalid("LLaVA returned no caption".into()))
    }

    /// Captions of `images` for `query` in one batch (one row per image; sampling seeds
    /// row `r` with the decoding's seed + `r`).
    pub fn generate(
        &mut self,
        images: &[&RgbImage],
        query: &str,
        options: &GenerateOptions,
    ) -> Result<Generation, ModelError> {
        let base = match options.decoding {
            Decoding::Greedy => 0,
            Decoding::Sample { seed, .. } => seed,
        };
        let seeds: Vec<u64> = (0..images.len()).map(|r| base.wrapping_add(r as u64)).collect();
        self.generate_seeded(images, query, options, &seeds)
    }

    /// [`generate`](Self::generate) with row `r` sampled from `seeds[r]`: a batch of tiles
    /// gives each the caption it gets alone with its own seed. All rows share the prompt
    /// (same query, the same number of image tokens), so no row needs padding; a row that
    /// reached a stop token keeps its caption while the others decode.
    pub fn generate_seeded(
        &mut self,
        images: &[&RgbImage],
        query: &str,
        options: &GenerateOptions,
        seeds: &[u64],
    ) -> Result<Generation, ModelError> {
        let b = images.len();
        check_batch(images, seeds)?;
        if b == 0 {
            return Ok(Generation::default());
        }
        let e = self.export.clone();
        let started = Instant::now();
        let (embeds, s) = self.prompt_embeds(images, query)?;
        let hidden = e.hidden_size;

        let mut picker = Picker::with_seeds(options.decoding, seeds)?;
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut done = vec![false; b];
        let mut past = self.empty_past(b)?;
        // Without the cache the whole sequence's embeddings are kept and re-run.
        let mut all_embeds = if options.use_cache { Vec::new() } else { embeds.clone() };
        let mut step_embeds = embeds;
        let mut step_len = s;
        let mut prefill = Duration::ZERO;
        let mut decode_started = None;
        let mut steps = 0;
        let (mut host_bytes, mut kv_bytes) = (0u64, 0u64);
        for step in 0..options.max_new_tokens {
            // The sequence's length so far: the prompt and one token per earlier step.
            let total = s + step;
            let (seq_embeds, seq_len, past_len) = if options.use_cache {
                (std::mem::take(&mut step_embeds), step_len, total - step_len)
            } else {
                (all_embeds.clone(), total, 0)
            };
            let mut inputs = step_inputs(b, hidden, seq_embeds, seq_len, past_len, total)?;
            let fresh_past;
            let past_now = if options.use_cache {
                std::mem::take(&mut past)
            } else {
                fresh_past = self.empty_past(b)?;
                fresh_past
            };
            inputs.extend(past_now);
            let kv = |len: usize| kv_cache_bytes(&e, b, len);
            if step > 0 {
                host_bytes += self.step_host_bytes(b, seq_len, past_len, total);
            }
            if options.use_cache {
                kv_bytes = kv(past_len);
            }
            let mut res = self.run_decoder(inputs)?;
            let (lshape, logits) = res.f32("logits")?;
            let positions = check_logits(&lshape, b, seq_len, e.vocab_size)?;
            let stops: &[u32] = if options.stop_at_stop_tokens {
                &e.stop_token_ids
            } else {
                &[]
            };
            let next = pick_next(
                &mut picker,
                logits,
                positions,
                e.vocab_size,
                stops,
                &mut done,
                &mut generated,
            );
            if step == 0 {
                prefill = started.elapsed();
            } else {
                steps += 1;
            }
            if done.iter().all(|&d| d) || step + 1 == options.max_new_tokens {
                break;
            }
            if decode_started.is_none() {
                decode_started = Some(Instant::now());
            }
            if options.use_cache {
                past = take_presents(&mut res, e.num_layers)?;
            }
            let new = self.embed_ids(&next, b, 1)?;
            // The new token's ids in, its embeddings out.
            host_bytes += (8 * b + 4 * b * hidden) as u64;
            if options.use_cache {
                step_embeds = new;
                step_len = 1;
            } else {
                all_embeds = append_rows(&all_embeds, &new, b, hidden);
            }
        }
        let decode = decode_started.map(|t| t.elapsed()).unwrap_or_default();
        Ok(Generation {
            captions: self.captions(generated)?,
            prefill,
            decode,
            decode_steps: steps,
            host_bytes,
            kv_bytes,
        })
    }

    /// The decoded text of each row's ids.
    fn captions(&self, generated: Vec<Vec<u32>>) -> Result<Vec<Caption>, ModelError> {
        generated
            .into_iter()
            .map(|ids| {
                let text = self.tokenizer.decode(&ids)?.trim().to_string();
                Ok(Caption { ids, text })
            })
            .collect()
    }

    /// Bytes a decode step moves between host and device: written in, the embeddings, mask
    /// and positions (8-byte ids); read out, the logits; and, on CUDA with the cache not
    /// bound, the past in (empty without the cache) and the presents out.
    fn step_host_bytes(&self, b: usize, seq_len: usize, past_len: usize, total: usize) -> u64 {
        let e = &self.export;
        let written = 4 * b * seq_len * e.hidden_size + 8 * b * total + 8 * b * seq_len;
        let mut bytes = (written + 4 * b * e.vocab_size) as u64;
        if self.decoder.provider() == ActiveProvider::Cuda && !self.bind_cache {
            bytes += kv_cache_bytes(e, b, past_len) + kv_cache_bytes(e, b, total);
        }
        bytes
    }

    /// The prompt's embeddings for each image, `[b, s, hidden]` flattened, with the image
    /// token rows replaced by the vision encoder's features; and the prompt length `s`.
    fn prompt_embeds(&mut self, images: &[&RgbImage], query: &str) -> Result<(Vec<f32>, usize), ModelError> {
        let e = self.export.clone();
        let prompt: Vec<i64> = self.prompt_ids(query)?.into_iter().map(i64::from).collect();
        let (b, s, hidden) = (images.len(), prompt.len(), e.hidden_size);

        // Image features, then the prompt's embeddings with the image rows replaced.
        let (h, w) = (e.image_size[0] as usize, e.image_size[1] as usize);
        let pixels = tensor_f32(&[b, 3, h, w], self.pixel_values(images))?;
        let out = self.vision.run(vec![("pixel_values".into(), pixels.into())])?;
        let (fshape, feats) = out.f32("image_features")?;
        if fshape != [b, e.image_seq_length, hidden] {
            return Err(ModelError::Invalid(format!(
                "image_features has shape {fshape:?}, expected [{b}, {}, {hidden}]",
                e.image_seq_length
            )));
        }
        let ids: Vec<i64> = (0..b).flat_map(|_| prompt.iter().copied()).collect();
        let mut embeds = self.embed_ids(&ids, b, s)?;
        let image_id = i64::from(e.image_token_id);
        let positions: Vec<usize> = (0..s).filter(|&i| prompt[i] == image_id).collect();
        if positions.len() != e.image_seq_length {
            return Err(ModelError::Invalid(format!(
                "the prompt has {} image tokens, the vision encoder gives {}",
                positions.len(),
                e.image_seq_length
            )));
        }
        for row in 0..b {
            for (j, &p) in positions.iter().enumerate() {
                let dst = (row * s + p) * hidden;
                let src = (row * e.image_seq_length + j) * hidden;
                embeds[dst..dst + hidden].copy_from_slice(&feats[src..src + hidden]);
            }
        }
        Ok((embeds, s))
    }

    /// One decoder run, through the I/O binding that keeps `present.*` in the provider's
    /// memory when [`bind_cache`](Self::set_bind_cache) is on.
    fn run_decoder(&mut self, inputs: Vec<(String, DynValue)>) -> Result<RunOutputs, ModelError> {
        if !self.bind_cache {
            let inputs: Vec<(String, SessionInputValue<'_>)> =
                inputs.into_iter().map(|(name, value)| (name, value.into())).collect();
            return self.decoder.run(inputs);
        }
        let names: Vec<String> = (0..self.export.num_layers)
            .flat_map(|i| ["key", "value"].map(|kind| format!("present.{i}.{kind}")))
            .collect();
        let keep: Vec<&str> = names.iter().map(String::as_str).collect();
        self.decoder.run_bound(inputs, &keep)
    }

    fn embed_ids(&mut self, ids: &[i64], b: usize, s: usize) -> Result<Vec<f32>, ModelError> {
        let input = tensor_i64(&[b, s], ids.to_vec())?;
        let out = self.embed.run(vec![("input_ids".into(), input.into())])?;
        let (shape, data) = out.f32("inputs_embeds")?;
        if shape != [b, s, self.export.hidden_size] {
            return Err(ModelError::Invalid(format!("inputs_embeds has shape {shape:?}")));
        }
        Ok(data.to_vec())
    }

    fn empty_past(&self, b: usize) -> Result<Vec<(String, DynValue)>, ModelError> {
        let e = &self.export;
        let mut past = Vec::with_capacity(2 * e.num_layers);
        for i in 0..e.num_layers {
            for kind in ["key", "value"] {
                let shape = [b, e.num_key_value_heads, 0, e.head_dim];
                past.push((format!("past_key_values.{i}.{kind}"), tensor_f32(&shape, Vec::new())?));
            }
        }
        Ok(past)
    }
}

/// The SigLIP processor's pre-processing of one image (`[3, h, w]` for `size = [h, w]`), as
/// transformers 5's `SiglipImageProcessor` does it: resize the uint8 image to `size` with
/// antialiased bicubic ([`resize_bicubic_antialiased`]), then `x * rescale_factor` and
/// `(x - mean) / std`.
pub fn siglip_pixel_values(
    img: &RgbImage,
    size: [u32; 2],
    rescale_factor: f32,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    let (h, w) = (size[0], size[1]);
    let resized;
    let img = if img.dimensions() == (w, h) {
        img
    } else {
        resized = resize_bicubic_antialiased(img, w, h);
        &resized
    };
    let plane = (h * w) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let x = f32::from(px[c]) * rescale_factor;
            out[c * plane + i] = (x - mean[c]) / std[c];
        }
    }
    out
}

/// Fixed-point precision of the resampling weights (PIL's `PRECISION_BITS` for 8-bit images).
const PRECISION_BITS: u32 = 22;

/// PIL's `BICUBIC` kernel (Keys, a = -0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For every output position along one axis: the first input index and the fixed-point weights
/// (PIL's `precompute_coeffs` and `normalize_coeffs_8bpc`).
fn bicubic_taps(input: u32, output: u32) -> Vec<(usize, Vec<i64>)> {
    let scale = f64::from(input) / f64::from(output);
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let one = f64::from(1u32 << PRECISION_BITS);
    (0..output)
        .map(|xx| {
            let center = (f64::from(xx) + 0.5) * scale;
            // C's `(int)` truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(i64::from(input)).max(xmin as i64) as usize;
            let k: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = k.iter().sum();
            let fixed = k
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    (w * one + if w < 0.0 { -0.5 } else { 0.5 }) as i64
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// One pass of the separable resize: along x (`horizontal`) or y, rounding to uint8.
fn resample_pass(img: &RgbImage, size: u32, horizontal: bool) -> RgbImage {
    let (w, h) = img.dimensions();
    let taps = bicubic_taps(if horizontal { w } else { h }, size);
    let (ow, oh) = if horizontal { (size, h) } else { (w, size) };
    RgbImage::from_fn(ow, oh, |x, y| {
        let (start, weights) = &taps[if horizontal { x } else { y } as usize];
        let mut px = [0u8; 3];
        for (c, out) in px.iter_mut().enumerate() {
            let mut acc: i64 = 1 << (PRECISION_BITS - 1);
            for (i, k) in weights.iter().enumerate() {
                let at = (*start + i) as u32;
                let v = if horizontal {
                    img.get_pixel(at, y)
                } else {
                    img.get_pixel(x, at)
                };
                acc += i64::from(v[c]) * k;
            }
            *out = (acc >> PRECISION_BITS).clamp(0, 255) as u8;
        }
        image::Rgb(px)
    })
}

/// PIL's antialiased bicubic resize of an 8-bit image (`Image.resize(size, BICUBIC)`), which
/// torchvision's uint8 `resize(..., BICUBIC, antialias=True)` reproduces: the Keys kernel
/// (a = -0.5) widened by the scale factor when shrinking, sampled at pixel centres, a horizontal
/// pass then a vertical one, each rounded and clamped to uint8. The `image` crate's `CatmullRom`
/// is the same kernel but runs the vertical pass first in f32 without the clamp in between, which
/// differs by up to 25 levels at sharp edges when enlarging (`models/tests/preprocess_parity.rs`).
pub fn resize_bicubic_antialiased(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut out = if width != img.width() {
        resample_pass(img, width, true)
    } else {
        img.clone()
    };
    if height != out.height() {
        out = resample_pass(&out, height, false);
    }
    out
}

/// A decoder step's inputs but the cache: embeddings `[b, seq_len, hidden]`, a mask of ones
/// over `total` positions, and positions `past_len..total` for each row.
/// One seed per image, and no empty image.
fn check_batch(images: &[&RgbImage], seeds: &[u64]) -> Result<(), ModelError> {
    if seeds.len() != images.len() {
        return Err(ModelError::Invalid(format!(
            "{} images but {} seeds",
            images.len(),
            seeds.len()
        )));
    }
    match images.iter().find(|i| i.width() == 0 || i.height() == 0) {
        Some(img) => Err(ModelError::Invalid(format!(
            "cannot caption an empty image ({}x{})",
            img.width(),
            img.height()
        ))),
        None => Ok(()),
    }
}

/// `b` rows of embeddings `[b, t, hidden]` (row-major) with row `r` of `new` (`[b, hidden]`)
/// appended to row `r`: `[b, t + 1, hidden]`.
fn append_rows(all: &[f32], new: &[f32], b: usize, hidden: usize) -> Vec<f32> {
    let t = all.len() / (b * hidden).max(1);
    let mut grown = Vec::with_capacity(all.len() + new.len());
    for row in 0..b {
        grown.extend_from_slice(&all[row * t * hidden..(row + 1) * t * hidden]);
        grown.extend_from_slice(&new[row * hidden..(row + 1) * hidden]);
    }
    grown
}

fn step_inputs(
    b: usize,
    hidden: usize,
    embeds: Vec<f32>,
    seq_len: usize,
    past_len: usize,
    total: usize,
) -> Result<Vec<(String, DynValue)>, ModelError> {
    let positions = (0..b).flat_map(|_| (past_len..total).map(|p| p as i64)).collect();
    Ok(vec![
        ("inputs_embeds".into(), tensor_f32(&[b, seq_len, hidden], embeds)?),
        ("attention_mask".into(), tensor_i64(&[b, total], vec![1; b * total])?),
        ("position_ids".into(), tensor_i64(&[b, seq_len], positions)?),
    ])
}

/// Bytes of a KV cache of `len` positions for `b` rows (f32 keys and values, every layer).
fn kv_cache_bytes(e: &LlavaExport, b: usize, len: usize) -> u64 {
    (2 * e.num_layers * b * e.num_key_value_heads * len * e.head_dim * 4) as u64
}

/// Each row's next token from its last logits; a row that picks one of `stops` is done, and
/// a done row keeps picking (its draws stay aligned) without growing its caption.
fn pick_next(
    picker: &mut Picker,
    logits: &[f32],
    positions: usize,
    vocab: usize,
    stops: &[u32],
    done: &mut [bool],
    generated: &mut [Vec<u32>],
) -> Vec<i64> {
    let mut next = Vec::with_capacity(done.len());
    for row in 0..done.len() {
        let at = (row * positions + positions - 1) * vocab;
        let token = picker.pick(row, &logits[at..at + vocab]);
        if !done[row] {
            if stops.contains(&token) {
                done[row] = true;
            } else {
                generated[row].push(token);
            }
        }
        next.push(i64::from(token));
    }
    next
}

/// The last position of each row's logits, `[b, 1, vocab]` (or, from older exports, every
/// position, `[b, seq_len, vocab]`): the positions per row.
fn check_logits(lshape: &[usize], b: usize, seq_len: usize, vocab: usize) -> Result<usize, ModelError> {
    let positions = lshape.get(1).copied().unwrap_or(0);
    if lshape.len() != 3 || lshape[0] != b || lshape[2] != vocab || (positions != 1 && positions != seq_len) {
        return Err(ModelError::Invalid(format!(
            "logits has shape {lshape:?}, expected [{b}, 1, {vocab}] (or [{b}, {seq_len}, {vocab}])"
        )));
    }
    Ok(positions)
}

/// The decoder's `present.*` outputs as the next step's `past_key_values.*` inputs.
fn take_presents(res: &mut RunOutputs, layers: usize) -> Result<Vec<(String, DynValue)>, ModelError> {
    let mut past = Vec::with_capacity(2 * layers);
    for i in 0..layers {
        for kind in ["key", "value"] {
            past.push((
                format!("past_key_values.{i}.{kind}"),
                res.take(&format!("present.{i}.{kind}"))?,
            ));
        }
    }
    Ok(past)
}
