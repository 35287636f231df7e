//! BART spelling correction: the paper tier of the `correct` stage.
//!
//! - Paper: Multi-SC corrects the received texts with a BART model (Lewis et al., "BART:
//!   Denoising Sequence-to-Sequence Pre-training", ACL 2020). Default checkpoint
//!   `oliverguhr/spelling-correction-english-base` (BART-base fine-tuned for English spelling
//!   correction, MIT): <https://huggingface.co/oliverguhr/spelling-correction-english-base>.
//! - Export: `python models/export/bart.py --out assets/models/bart` (internet);
//!   `--tiny-random --out models/fixtures/bart` gives the test fixture (same class, same tensors).
//! - Tensors (optimum's seq2seq layout): `encoder_model.onnx`: `input_ids`, `attention_mask` i64
//!   `[b, S]` → `last_hidden_state` f32 `[b, S, d]`; `decoder_model.onnx` (first step):
//!   `input_ids` i64 `[b, t]`, `encoder_attention_mask`, `encoder_hidden_states` → `logits` f32
//!   `[b, t, vocab]`, `present.{i}.{decoder,encoder}.{key,value}` f32 `[b, heads, t|S, head_dim]`;
//!   `decoder_with_past_model.onnx`: `input_ids` `[b, 1]`, `encoder_attention_mask`,
//!   `past_key_values.{i}.{decoder,encoder}.{key,value}` → `logits`, `present.{i}.decoder.*`.
//!
//! The encoder runs once; the decoder starts from `decoder_start_token_id`, forces
//! `forced_bos_token_id` first when the export says so, and stops at `eos_token_id`. Greedy by
//! default; beam search of a configurable width (length penalty, early stopping as in
//! `transformers`' `generate(num_beams=B, early_stopping=True)`).

use std::path::{Path, PathBuf};

use ort::session::SessionInputValue;
use ort::value::DynValue;
use serde::Deserialize;

use crate::error::ModelError;
use crate::provider::{ActiveProvider, SessionOptions};
use crate::session::{load_session, tensor_f32, tensor_i64, IoSpec, LoadedSession, RunOutputs, TensorSpec};
use crate::textgen::{argmax, log_softmax, read_export_json, TextTokenizer};

/// Where `dataflow` looks for the export, relative to the assets folder.
pub const ASSET_DIR: &str = "models/bart";
/// The command that makes the export (run from the repository root, with internet).
pub const EXPORT_COMMAND: &str = "python models/export/bart.py --out assets/models/bart";
/// The export script, relative to the repository root.
pub const SCRIPT: &str = "models/export/bart.py";

/// The export folder: `explicit`, else `assets/models/bart`; the error says the export command.
pub fn locate_export(explicit: Option<&Path>) -> Result<std::path::PathBuf, ModelError> {
    crate::textgen::locate_export(explicit, ASSET_DIR, SCRIPT)
}

/// `export.json` of a BART export.
#[derive(Debug, Clone, Deserialize)]
pub struct BartExport {
    /// The checkpoint (or `tiny-random`).
    pub model: String,
    /// First decoder token.
    pub decoder_start_token_id: u32,
    /// Token forced right after it, if any.
    pub forced_bos_token_id: Option<u32>,
    /// End of sequence.
    pub eos_token_id: u32,
    /// Longest input (learned positions).
    pub max_position_embeddings: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Model width.
    pub d_model: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
}

/// Correction settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrectOptions {
    /// Most new tokens (the input's length plus a margin is a good bound).
    pub max_new_tokens: usize,
    /// Beam width; 1 is greedy.
    pub beams: usize,
    /// Exponent of the length normalisation of finished beams.
    pub length_penalty: f32,
    /// Feed the decoder's KV cache back (normal); `false` re-runs the whole prefix each step.
    pub use_cache: bool,
}

impl Default for CorrectOptions {
    fn default() -> Self {
        CorrectOptions {
            max_new_tokens: 64,
            beams: 1,
            length_penalty: 1.0,
            use_cache: true,
        }
    }
}

/// A BART export loaded into three sessions.
#[derive(Debug)]
pub struct Bart {
    encoder: LoadedSession,
    first: LoadedSession,
    step: LoadedSession,
    tokenizer: TextTokenizer,
    export: BartExport,
    dir: PathBuf,
}

/// The caches of the running beams: one value per `past_key_values.*` name.
type Cache = Vec<(String, DynValue)>;

impl Bart {
    /// The tensors of the three files.
    pub fn io_specs(e: &BartExport) -> [IoSpec; 3] {
        let d = e.d_model as i64;
        let vocab = e.vocab_size as i64;
        let kv = [-1, e.num_heads as i64, -1, e.head_dim as i64];
        let encoder = IoSpec::new()
            .input(TensorSpec::i64("input_ids", &[-1, -1]))
            .input(TensorSpec::i64("attention_mask", &[-1, -1]))
            .output(TensorSpec::f32("last_hidden_state", &[-1, -1, d]));
        let mut first = IoSpec::new()
            .input(TensorSpec::i64("input_ids", &[-1, -1]))
            .input(TensorSpec::i64("encoder_attention_mask", &[-1, -1]))
            .input(TensorSpec::f32("encoder_hidden_states", &[-1, -1, d]))
            .output(TensorSpec::f32("logits", &[-1, -1, vocab]));
        let mut step = IoSpec::new()
            .input(TensorSpec::i64("input_ids", &[-1, -1]))
            .input(TensorSpec::i64("encoder_attention_mask", &[-1, -1]))
            .output(TensorSpec::f32("logits", &[-1, -1, vocab]));
        for i in 0..e.num_layers {
            for part in ["decoder", "encoder"] {
                for kind in ["key", "value"] {
                    first = first.output(TensorSpec::f32(format!("present.{i}.{part}.{kind}"), &kv));
                    step = step.input(TensorSpec::f32(format!("past_key_values.{i}.{part}.{kind}"), &kv));
                }
            }
            for kind in ["key", "value"] {
                step = step.output(TensorSpec::f32(format!("present.{i}.decoder.{kind}"), &kv));
            }
        }
        [encoder, first, step]
    }

    /// Loads the export in `dir`.
    pub fn load(dir: impl AsRef<Path>, options: &SessionOptions) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let export: BartExport = read_export_json(dir, EXPORT_COMMAND)?;
        let [es, fs, ss] = Self::io_specs(&export);
        Ok(Bart {
            encoder: load_session(dir.join("encoder_model.onnx"), options, &es)?,
            first: load_session(dir.join("decoder_model.onnx"), options, &fs)?,
            step: load_session(dir.join("decoder_with_past_model.onnx"), options, &ss)?,
            tokenizer: TextTokenizer::load(&dir.join("tokenizer.json"))?,
            export,
            dir: dir.to_path_buf(),
        })
    }

    /// What `export.json` says.
    pub fn export(&self) -> &BartExport {
        &self.export
    }

    /// The export folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The provider the decoder runs on.
    pub fn provider(&self) -> ActiveProvider {
        self.step.provider()
    }

    /// The corrected `text`.
    pub fn correct(&mut self, text: &str, options: &CorrectOptions) -> Result<String, ModelError> {
        if text.trim().is_empty() {
            return Ok(text.to_string());
        }
        let mut ids = self.tokenizer.encode(text, true)?;
        let limit = self.export.max_position_embeddings;
        if ids.len() > limit {
            // Keep the framing token at the end (`</s>`).
            let last = ids[ids.len() - 1];
            ids.truncate(limit - 1);
            ids.push(last);
        }
        let out = self.generate_ids(&ids, options)?;
        Ok(self.tokenizer.decode(&out)?.trim().to_string())
    }

    /// Token ids of the input `text` (with `<s> … </s>`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer.encode(text, true)
    }

    /// The generated ids for `input_ids` (after the start token, eos left out).
    pub fn generate_ids(&mut self, input_ids: &[u32], options: &CorrectOptions) -> Result<Vec<u32>, ModelError> {
        if input_ids.is_empty() {
            return Ok(Vec::new());
        }
        if options.beams == 0 {
            return Err(ModelError::Invalid("beams must be at least 1".into()));
        }
        // The decoder's learned positions bound the output: the start token and every fed
        // token take one.
        let mut options = *options;
        options.max_new_tokens = options
            .max_new_tokens
            .min(self.export.max_position_embeddings.saturating_sub(1));
        let options = &options;
        let s = input_ids.len();
        let ids: Vec<i64> = input_ids.iter().map(|&t| i64::from(t)).collect();
        let out = self.encoder.run(vec![
            ("input_ids".into(), tensor_i64(&[1, s], ids)?.into()),
            ("attention_mask".into(), tensor_i64(&[1, s], vec![1; s])?.into()),
        ])?;
        let (shape, hidden) = out.f32("last_hidden_state")?;
        if shape != [1, s, self.export.d_model] {
            return Err(ModelError::Invalid(format!("last_hidden_state has shape {shape:?}")));
        }
        let hidden = hidden.to_vec();
        if options.beams == 1 {
            self.greedy(&hidden, s, options)
        } else {
            self.beam_search(&hidden, s, options)
        }
    }

    fn greedy(&mut self, hidden: &[f32], s: usize, options: &CorrectOptions) -> Result<Vec<u32>, ModelError> {
        let e = self.export.clone();
        let mut prefix = vec![e.decoder_start_token_id];
        let mut res = self.run_first(&prefix, hidden, s, 1)?;
        let mut cross = Cache::new();
        let mut out = Vec::new();
        for k in 0..options.max_new_tokens {
            let next = match (k, e.forced_bos_token_id) {
                (0, Some(bos)) => bos,
                _ => {
                    let (shape, logits) = res.f32("logits")?;
                    let t = shape[1];
                    argmax(&logits[(t - 1) * e.vocab_size..t * e.vocab_size]) as u32
                }
            };
            if next == e.eos_token_id {
                break;
            }
            out.push(next);
            prefix.push(next);
            if k + 1 == options.max_new_tokens {
                break;
            }
            res = if options.use_cache {
                if k == 0 {
                    cross = self.take_cache(&mut res, "encoder")?;
                }
                let past = self.take_cache(&mut res, "decoder")?;
                self.run_step(&[next], s, past, &cross)?
            } else {
                self.run_first(&prefix, hidden, s, 1)?
            };
        }
        Ok(out)
    }

    fn beam_search(&mut self, hidden: &[f32], s: usize, options: &CorrectOptions) -> Result<Vec<u32>, ModelError> {
        let e = self.export.clone();
        let width = options.beams;
        let vocab = e.vocab_size;
        // Running beams: generated tokens (after the start token) and summed log-probabilities.
        let mut beams: Vec<(Vec<u32>, f32)> = vec![(Vec::new(), 0.0)];
        let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
        let mut res = self.run_first(&[e.decoder_start_token_id], hidden, s, 1)?;
        // The cross-attention cache of one row, and expanded to the running beams.
        let mut cross_one = Cache::new();
        let mut cross = Cache::new();
        for k in 0..options.max_new_tokens {
            let (shape, logits) = res.f32("logits")?;
            let t = shape[1];
            let mut candidates: Vec<(f32, usize, u32)> = Vec::with_capacity(beams.len() * vocab);
            for (bi, (_, score)) in beams.iter().enumerate() {
                match (k, e.forced_bos_token_id) {
                    (0, Some(bos)) => candidates.push((*score, bi, bos)),
                    _ => {
                        let at = (bi * t + t - 1) * vocab;
                        let lp = log_softmax(&logits[at..at + vocab]);
                        candidates.extend(lp.iter().enumerate().map(|(tok, l)| (score + l, bi, tok as u32)));
                    }
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            candidates.truncate(2 * width);
            let mut next: Vec<(usize, u32, f32)> = Vec::with_capacity(width);
            for (rank, &(score, bi, tok)) in candidates.iter().enumerate() {
                if tok == e.eos_token_id {
                    if rank < width {
                        let len = beams[bi].0.len() + 1;
                        finished.push((beams[bi].0.clone(), score / (len as f32).powf(options.length_penalty)));
                    }
                } else if next.len() < width {
                    next.push((bi, tok, score));
                }
            }
            finished.sort_by(|a, b| b.1.total_cmp(&a.1));
            finished.truncate(width);
            if finished.len() >= width || next.is_empty() {
                beams.clear();
                break;
            }
            let order: Vec<usize> = next.iter().map(|n| n.0).collect();
            beams = next
                .iter()
                .map(|&(bi, tok, score)| {
                    let mut toks = beams[bi].0.clone();
                    toks.push(tok);
                    (toks, score)
                })
                .collect();
            if k + 1 == options.max_new_tokens {
                break;
            }
            let last: Vec<u32> = beams
                .iter()
                .map(|b| b.0.last().copied().unwrap_or(e.eos_token_id))
                .collect();
            res = if options.use_cache {
                if k == 0 {
                    cross_one = self.take_cache(&mut res, "encoder")?;
                }
                if cross.is_empty() || rows_of(&cross)? != beams.len() {
                    cross = reorder(&cross_one, &vec![0; beams.len()])?;
                }
                let past = reorder(&self.take_cache(&mut res, "decoder")?, &order)?;
                self.run_step(&last, s, past, &cross)?
            } else {
                let n = beams.len();
                let mut flat = Vec::with_capacity(n * (k + 2));
                for (toks, _) in &beams {
                    flat.push(e.decoder_start_token_id);
                    flat.extend_from_slice(toks);
                }
                self.run_first(&flat, hidden, s, n)?
            };
        }
        for (toks, score) in beams {
            let len = toks.len().max(1);
            finished.push((toks, score / (len as f32).powf(options.length_penalty)));
        }
        finished.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(finished.into_iter().next().map(|f| f.0).unwrap_or_default())
    }

    /// The first decoder (no past) on `rows` rows of `prefix` (row-major `[rows, len]`).
    fn run_first(&mut self, prefix: &[u32], hidden: &[f32], s: usize, rows: usize) -> Result<RunOutputs, ModelError> {
        let t = prefix.len() / rows;
        let d = self.export.d_model;
        let mut states = Vec::with_capacity(rows * s * d);
        for _ in 0..rows {
            states.extend_from_slice(hidden);
        }
        self.first.run(vec![
            (
                "input_ids".into(),
                tensor_i64(&[rows, t], prefix.iter().map(|&x| i64::from(x)).collect())?.into(),
            ),
            (
                "encoder_attention_mask".into(),
                tensor_i64(&[rows, s], vec![1; rows * s])?.into(),
            ),
            (
                "encoder_hidden_states".into(),
                tensor_f32(&[rows, s, d], states)?.into(),
            ),
        ])
    }

    /// One step with the past: `past` (self-attention, owned, fed as is) and `cross`
    /// (cross-attention, borrowed: the same every step).
    fn run_step(&mut self, last: &[u32], s: usize, past: Cache, cross: &Cache) -> Result<RunOutputs, ModelError> {
        let rows = last.len();
        let mut inputs: Vec<(String, SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                tensor_i64(&[rows, 1], last.iter().map(|&x| i64::from(x)).collect())?.into(),
            ),
            (
                "encoder_attention_mask".into(),
                tensor_i64(&[rows, s], vec![1; rows * s])?.into(),
            ),
        ];
        for (name, value) in past {
            inputs.push((name, value.into()));
        }
        for (name, value) in cross {
            inputs.push((name.clone(), value.into()));
        }
        self.step.run(inputs)
    }

    /// The presents of `part` (`decoder` or `encoder`) of a run, renamed as the next past.
    fn take_cache(&self, res: &mut RunOutputs, part: &str) -> Result<Cache, ModelError> {
        let mut cache = Vec::with_capacity(2 * self.export.num_layers);
        for i in 0..self.export.num_layers {
            for kind in ["key", "value"] {
                let value = res.take(&format!("present.{i}.{part}.{kind}"))?;
                cache.push((format!("past_key_values.{i}.{part}.{kind}"), value));
            }
        }
        Ok(cache)
    }
}

fn rows_of(cache: &Cache) -> Result<usize, ModelError> {
    match cache.first() {
        Some((name, v)) => Ok(crate::session::view_f32(v, name)?.0[0]),
        None => Ok(0),
    }
}

/// Rows of every cache tensor gathered in `order` (beam `j` continues beam `order[j]`).
fn reorder(cache: &Cache, order: &[usize]) -> Result<Cache, ModelError> {
    cache
        .iter()
        .map(|(name, value)| {
            let (shape, data) = crate::session::view_f32(value, name)?;
            let row: usize = shape[1..].iter().product();
            let mut out = Vec::with_capacity(order.len() * row);
            for &o in order {
                out.extend_from_slice(&data[o * row..(o + 1) * row]);
            }
            let mut new_shape = shape.clone();
            new_shape[0] = order.len();
            Ok((name.clone(), tensor_f32(&new_shape, out)?))
        })
        .collect()
}
