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
//! `forced_bos_token_id` first when the export says so, and stops at `eos_token_id`.
//!
//! Decoding follows `transformers`' `generate` (5.x) with the checkpoint's generation settings,
//! which `export.json` carries under `generation` ([`CorrectOptions::from_export`]): greedy or
//! beam search (`num_beams`), `no_repeat_ngram_size` (an n-gram of the decoder's tokens, start
//! token included, never repeats), `min_length` (no `</s>` before it), forced BOS at the first
//! step and forced EOS at the last, length penalty and the three `early_stopping` rules. The
//! fixture's `generation.json` holds PyTorch's ids for these settings; `models/tests/bart_generate.rs`
//! checks them.
//!
//! Batches ([`Bart::generate_batch`], [`Bart::correct_batch`]): the texts share one encoder run
//! and one decoder call per step, greedy one row per text, beam search one row per running
//! beam of each text (`bart/beam.rs`); each text gets the ids it gets alone (scores within
//! 1e-5: `models/tests/it/batch.rs`).
//!
//! KV cache (issue 20, item 3): under CUDA the caches stay in GPU memory between steps
//! ([`Bart::set_bind_cache`]): the first decoder's `present.*` (self- and cross-attention) and
//! each step's `present.*.decoder.*` are kept there by I/O bindings, the cross-attention cache
//! from the first run is fed to every step where it is, and beam search gathers rows there
//! (`bart/gather.rs`); only ids, masks, logits and row indices cross. [`Bart::decode_stats`]
//! counts the bytes per step; `models/tests/it/binding.rs` checks both ways give the same ids.
//!
//! Token limit: the checkpoint's `max_length` when it sets one, else sized from the input
//! ([`Bart::token_limit`]): `n + n/2 + 10` new tokens for `n` input tokens. A spelling fix is
//! about as long as its input in BPE tokens, so this never cuts a correction the way a fixed
//! 64 (or transformers' fallback `max_length = 20`) cuts a 40-token caption, and a degenerate
//! loop on a short text still ends soon. Always capped by the decoder's learned positions.

use std::path::{Path, PathBuf};

use ort::session::SessionInputValue;
use ort::value::{DynValue, ValueType};
use serde::Deserialize;

use crate::error::ModelError;
use crate::provider::{ActiveProvider, SessionOptions};
use crate::session::{load_session, tensor_f32, tensor_i64, IoSpec, LoadedSession, RunOutputs, TensorSpec};
use crate::textgen::{argmax, log_softmax, read_export_json, TextTokenizer};

mod beam;
mod gather;

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
    /// The checkpoint's generation settings (absent in exports made before they were recorded).
    #[serde(default)]
    pub generation: GenerationSettings,
}

/// The generation settings of the checkpoint (`transformers`' `GenerationConfig` names); `None`
/// where the checkpoint sets none (then `transformers`' defaults hold: greedy, no n-gram rule,
/// length penalty 1, heuristic early stopping, no minimum).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationSettings {
    /// Beam width.
    pub num_beams: Option<usize>,
    /// No n-gram of this size occurs twice in the output.
    pub no_repeat_ngram_size: Option<usize>,
    /// When beam search stops.
    pub early_stopping: Option<EarlyStopping>,
    /// Exponent of the length normalisation of finished beams.
    pub length_penalty: Option<f32>,
    /// Token forced at the first step.
    pub forced_bos_token_id: Option<u32>,
    /// Token forced at the last step (when the limit is reached).
    pub forced_eos_token_id: Option<u32>,
    /// Most decoder tokens, start token included.
    pub max_length: Option<usize>,
    /// Fewest decoder tokens before `</s>`, start token included.
    pub min_length: Option<usize>,
    /// First decoder token.
    pub decoder_start_token_id: Option<u32>,
}

/// `transformers`' `early_stopping` of beam search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `false`: stop when the best running beam, scored at its current length, cannot beat the
    /// worst of `beams` finished hypotheses.
    #[default]
    Heuristic,
    /// `true`: stop as soon as `beams` hypotheses are finished.
    Done,
    /// `"never"`: as `Heuristic`, but with a positive length penalty the running beam is scored
    /// at the longest possible length (canonical beam search).
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(EarlyStopping::Done),
            Raw::Flag(false) => Ok(EarlyStopping::Heuristic),
            Raw::Word(w) if w == "never" => Ok(EarlyStopping::Never),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "early_stopping must be true, false or \"never\", got {w:?}"
            ))),
        }
    }
}

/// Margin of the input-sized token limit ([`Bart::token_limit`]).
pub const LIMIT_MARGIN: usize = 10;

/// Correction settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrectOptions {
    /// Most new tokens (`</s>` included); always capped by the decoder's learned positions.
    pub max_new_tokens: usize,
    /// Also cap the new tokens at `n + n/2 + LIMIT_MARGIN` for `n` input tokens.
    pub size_from_input: bool,
    /// Beam width; 1 is greedy.
    pub beams: usize,
    /// Exponent of the length normalisation of finished beams.
    pub length_penalty: f32,
    /// No n-gram of this many tokens occurs twice (0: no rule).
    pub no_repeat_ngram_size: usize,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// Force `</s>` (the export's `forced_eos_token_id`) as the last token when the limit is reached.
    pub forced_eos: bool,
    /// Fewest decoder tokens (start token included) before `</s>` may come.
    pub min_length: usize,
    /// Feed the decoder's KV cache back (normal); `false` re-runs the whole prefix each step.
    pub use_cache: bool,
}

impl Default for CorrectOptions {
    /// Plain decoding: greedy, 64 new tokens, no n-gram rule, no forced EOS, no minimum (beam
    /// search, when asked for, stops when `beams` hypotheses are done). The `correct` stage uses
    /// [`CorrectOptions::from_export`] instead.
    fn default() -> Self {
        CorrectOptions {
            max_new_tokens: 64,
            size_from_input: false,
            beams: 1,
            length_penalty: 1.0,
            no_repeat_ngram_size: 0,
            early_stopping: EarlyStopping::Done,
            forced_eos: false,
            min_length: 0,
            use_cache: true,
        }
    }
}

impl CorrectOptions {
    /// The checkpoint's own settings (`export.json`'s `generation`), with `transformers`'
    /// defaults where it sets none, and the token limit sized from the input.
    pub fn from_export(e: &BartExport) -> Self {
        let g = &e.generation;
        CorrectOptions {
            max_new_tokens: g.max_length.map_or(usize::MAX, |m| m.saturating_sub(1).max(1)),
            size_from_input: true,
            beams: g.num_beams.unwrap_or(1).max(1),
            length_penalty: g.length_penalty.unwrap_or(1.0),
            no_repeat_ngram_size: g.no_repeat_ngram_size.unwrap_or(0),
            early_stopping: g.early_stopping.unwrap_or_default(),
            forced_eos: g.forced_eos_token_id.is_some(),
            min_length: g.min_length.unwrap_or(0),
            use_cache: true,
        }
    }
}

/// A BART export loaded into three sessions (and the cache gather of `bart/gather.rs`).
#[derive(Debug)]
pub struct Bart {
    encoder: LoadedSession,
    first: LoadedSession,
    step: LoadedSession,
    /// Gathers cache rows in the provider's memory (beam reorder, cross cache per row).
    gather: gather::CacheGather,
    tokenizer: TextTokenizer,
    export: BartExport,
    dir: PathBuf,
    /// Run the decoders through I/O bindings that keep `present.*` in the provider's memory.
    bind_cache: bool,
    /// Decoder steps and host bytes since load or the last [`Bart::take_decode_stats`].
    stats: DecodeStats,
}

/// Decoder steps (runs after the first decoder run of a call) and the bytes they moved
/// between the host and the provider's memory: the new tokens' ids and the encoder
/// attention mask written in, the logits read out, and, with the cache bound
/// ([`Bart::set_bind_cache`]), the row indices of the caches gathered on the provider (beam
/// search); on a GPU without the cache bound, also the self-attention past and the
/// cross-attention cache copied in and the `present.*` values copied out each step (beam
/// search reorders them on the host). On the CPU, and with the cache bound, the caches are fed
/// where they are. Without the KV cache (`use_cache = false`) a step re-runs the first decoder
/// on the whole prefix: its ids, mask and encoder states in, its logits out (and on a GPU
/// without binding its `present.*` out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Decoder steps.
    pub decode_steps: usize,
    /// Bytes moved between host and provider memory by those steps.
    pub host_bytes: u64,
    /// Bytes of the caches those steps read and wrote (the past and the cross-attention cache
    /// in, the `present.*` values out), wherever they were: part of
    /// [`host_bytes`](Self::host_bytes) on a GPU with the cache not bound, else not (on the
    /// CPU, `host_bytes + cache_bytes` is what the unbound path would count under CUDA).
    pub cache_bytes: u64,
}

impl DecodeStats {
    /// [`host_bytes`](Self::host_bytes) per decode step (0 without decode steps).
    pub fn host_bytes_per_step(&self) -> u64 {
        self.host_bytes.checked_div(self.decode_steps as u64).unwrap_or(0)
    }

    /// [`cache_bytes`](Self::cache_bytes) per decode step (0 without decode steps).
    pub fn cache_bytes_per_step(&self) -> u64 {
        self.cache_bytes.checked_div(self.decode_steps as u64).unwrap_or(0)
    }
}

/// A generated sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    /// Ids after the start token, `</s>` left out.
    pub ids: Vec<u32>,
    /// Beam search: the hypothesis' score, summed log-probability / generated length ^ length
    /// penalty (`transformers`' `sequences_scores`); greedy: `None`.
    pub score: Option<f32>,
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
        let step = load_session(dir.join("decoder_with_past_model.onnx"), options, &ss)?;
        let gather = gather::CacheGather::new(
            2 * export.num_layers,
            export.num_heads,
            export.head_dim,
            options,
            step.provider(),
        )?;
        Ok(Bart {
            encoder: load_session(dir.join("encoder_model.onnx"), options, &es)?,
            first: load_session(dir.join("decoder_model.onnx"), options, &fs)?,
            bind_cache: step.provider() == ActiveProvider::Cuda,
            step,
            gather,
            tokenizer: TextTokenizer::load(&dir.join("tokenizer.json"))?,
            export,
            dir: dir.to_path_buf(),
            stats: DecodeStats::default(),
        })
    }

    /// Whether the decoders keep the KV cache in the provider's memory between steps (I/O
    /// bindings that leave `present.*` there and feed them back from there, the cross-attention
    /// cache fed to every step where it is, beam search gathering rows there: `bart/gather.rs`)
    /// rather than in host memory. On by default under CUDA, where an unbound cache crosses the
    /// bus twice a step; off by default on the CPU, where both ways give the same ids, nothing
    /// crosses, and the binding and gather runs cost a little time per step (BENCHMARKS.md §25).
    pub fn set_bind_cache(&mut self, bind: bool) {
        self.bind_cache = bind;
    }

    /// See [`set_bind_cache`](Self::set_bind_cache).
    pub fn binds_cache(&self) -> bool {
        self.bind_cache
    }

    /// Decoder steps and host bytes since load or the last [`take_decode_stats`](Self::take_decode_stats).
    pub fn decode_stats(&self) -> DecodeStats {
        self.stats
    }

    /// [`decode_stats`](Self::decode_stats), starting the count anew.
    pub fn take_decode_stats(&mut self) -> DecodeStats {
        std::mem::take(&mut self.stats)
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

    /// The default settings of this export ([`CorrectOptions::from_export`]).
    pub fn default_options(&self) -> CorrectOptions {
        CorrectOptions::from_export(&self.export)
    }

    /// Most new tokens (`</s>` included) for an input of `input_len` tokens: `max_new_tokens`,
    /// with `size_from_input` also `input_len + input_len / 2 + LIMIT_MARGIN`, and never more
    /// than the decoder's learned positions allow (the start token and every fed token take one).
    pub fn token_limit(&self, input_len: usize, options: &CorrectOptions) -> usize {
        let mut limit = options
            .max_new_tokens
            .min(self.export.max_position_embeddings.saturating_sub(1));
        if options.size_from_input {
            limit = limit.min(input_len + input_len / 2 + LIMIT_MARGIN);
        }
        limit
    }

    /// The generated ids for `input_ids` (after the start token, eos left out).
    pub fn generate_ids(&mut self, input_ids: &[u32], options: &CorrectOptions) -> Result<Vec<u32>, ModelError> {
        self.generate(input_ids, options).map(|g| g.ids)
    }

    /// The generated sequence for `input_ids`, with its beam-search score.
    pub fn generate(&mut self, input_ids: &[u32], options: &CorrectOptions) -> Result<Generated, ModelError> {
        if options.beams == 0 {
            return Err(ModelError::Invalid("beams must be at least 1".into()));
        }
        self.check_input(input_ids)?;
        let limit = self.token_limit(input_ids.len(), options);
        if input_ids.is_empty() || limit == 0 {
            return Ok(Generated::default());
        }
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
            let ids = self.greedy(&hidden, s, limit, options)?;
            Ok(Generated { ids, score: None })
        } else {
            self.beam_search(&hidden, s, limit, options)
        }
    }

    /// Input ids the export can take: no more than its learned positions, each in its vocabulary.
    fn check_input(&self, input_ids: &[u32]) -> Result<(), ModelError> {
        let e = &self.export;
        if input_ids.len() > e.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "{} input tokens, but the BART export in {} takes at most {}; shorten the text",
                input_ids.len(),
                self.dir.display(),
                e.max_position_embeddings
            )));
        }
        if let Some(bad) = input_ids.iter().find(|&&t| t as usize >= e.vocab_size) {
            return Err(ModelError::Invalid(format!(
                "input token id {bad} is outside the vocabulary ({} ids) of the BART export in {}; \
                 encode the text with that export's tokenizer.json",
                e.vocab_size,
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Log-probabilities of the token after `seq` (the decoder's tokens so far, start token
    /// included) from its `logits`, through `transformers`' logits processors: min length,
    /// no-repeat n-grams, forced BOS at the first step and forced EOS at step `limit`.
    fn next_log_probs(&self, logits: &[f32], seq: &[u32], limit: usize, o: &CorrectOptions) -> Vec<f32> {
        let e = &self.export;
        let cur = seq.len();
        let forced_eos = e.generation.forced_eos_token_id.unwrap_or(e.eos_token_id);
        // Forced EOS comes after forced BOS in transformers' list, so it wins when both apply.
        let forced = if o.forced_eos && cur == limit {
            Some(forced_eos)
        } else if cur == 1 {
            e.forced_bos_token_id
        } else {
            None
        };
        if let Some(tok) = forced {
            let mut lp = vec![f32::NEG_INFINITY; logits.len()];
            if let Some(x) = lp.get_mut(tok as usize) {
                *x = 0.0;
            }
            return lp;
        }
        let mut lp = log_softmax(logits);
        if cur < o.min_length {
            if let Some(x) = lp.get_mut(e.eos_token_id as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
        let n = o.no_repeat_ngram_size;
        if n > 0 && cur >= n {
            // Every earlier n-gram that starts with the last n-1 tokens bans its last token.
            let prefix = &seq[cur + 1 - n..];
            for w in seq.windows(n) {
                if w[..n - 1] == *prefix {
                    if let Some(x) = lp.get_mut(w[n - 1] as usize) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
        }
        lp
    }

    fn greedy(&mut self, hidden: &[f32], s: usize, limit: usize, o: &CorrectOptions) -> Result<Vec<u32>, ModelError> {
        let e = self.export.clone();
        let vocab = e.vocab_size;
        let mut seq = vec![e.decoder_start_token_id];
        let mut res = self.run_first(&seq, hidden, s, 1)?;
        let mut cross = Cache::new();
        for k in 0..limit {
            let next = {
                let (shape, logits) = res.f32("logits")?;
                let t = shape[1];
                argmax(&self.next_log_probs(&logits[(t - 1) * vocab..t * vocab], &seq, limit, o)) as u32
            };
            if next == e.eos_token_id {
                break;
            }
            seq.push(next);
            if k + 1 == limit {
                break;
            }
            res = if o.use_cache {
                if k == 0 {
                    cross = self.take_cache(&mut res, "encoder")?;
                }
                let past = self.take_cache(&mut res, "decoder")?;
                self.run_step(&[next], &vec![1; s], s, past, &cross)?
            } else {
                self.count_uncached_step(1, seq.len(), s);
                self.run_first(&seq, hidden, s, 1)?
            };
        }
        Ok(seq[1..].to_vec())
    }

    /// The first decoder (no past) on `rows` rows of `prefix` (row-major `[rows, len]`).
    fn run_first(&mut self, prefix: &[u32], hidden: &[f32], s: usize, rows: usize) -> Result<RunOutputs, ModelError> {
        let t = prefix.len() / rows;
        let d = self.export.d_model;
        let mut states = Vec::with_capacity(rows * s * d);
        for _ in 0..rows {
            states.extend_from_slice(hidden);
        }
        self.run_first_on(vec![
            (
                "input_ids".into(),
                tensor_i64(&[rows, t], prefix.iter().map(|&x| i64::from(x)).collect())?,
            ),
            (
                "encoder_attention_mask".into(),
                tensor_i64(&[rows, s], vec![1; rows * s])?,
            ),
            ("encoder_hidden_states".into(), tensor_f32(&[rows, s, d], states)?),
        ])
    }

    /// The first decoder on `inputs`; with the cache bound every `present.*` stays in the
    /// provider's memory.
    fn run_first_on(&mut self, inputs: Vec<(String, DynValue)>) -> Result<RunOutputs, ModelError> {
        if !self.bind_cache {
            return self.first.run(inputs.into_iter().map(|(n, v)| (n, v.into())).collect());
        }
        let names = self.present_names(&["decoder", "encoder"]);
        let keep: Vec<&str> = names.iter().map(String::as_str).collect();
        self.first.run_bound(inputs, &keep)
    }

    /// One step with the past: the last tokens, the encoder attention mask of each row
    /// (`[rows, s]`), `past` (self-attention, fed as is) and `cross` (cross-attention,
    /// borrowed: fed to every step). With the cache bound the presents stay in the provider's
    /// memory and the caches are used where they are.
    fn run_step(
        &mut self,
        last: &[u32],
        mask: &[i64],
        s: usize,
        past: Cache,
        cross: &Cache,
    ) -> Result<RunOutputs, ModelError> {
        let rows = last.len();
        let ids = tensor_i64(&[rows, 1], last.iter().map(|&x| i64::from(x)).collect())?;
        let mask = tensor_i64(&[rows, s], mask.to_vec())?;
        let t = cache_dims(&past)?.1;
        let caches = self.cache_bytes(rows, t) + self.cache_bytes(rows, s) + self.cache_bytes(rows, t + 1);
        // The ids and the mask in, the logits `[rows, 1, vocab]` out.
        self.count_step(
            (8 * rows + 8 * rows * s + 4 * rows * self.export.vocab_size) as u64,
            caches,
        );
        let mut inputs: Vec<(String, &DynValue)> =
            vec![("input_ids".into(), &ids), ("encoder_attention_mask".into(), &mask)];
        inputs.extend(past.iter().chain(cross).map(|(name, value)| (name.clone(), value)));
        if !self.bind_cache {
            let inputs: Vec<(String, SessionInputValue<'_>)> =
                inputs.into_iter().map(|(name, value)| (name, value.into())).collect();
            return self.step.run(inputs);
        }
        let names = self.present_names(&["decoder"]);
        let keep: Vec<&str> = names.iter().map(String::as_str).collect();
        self.step.run_bound(inputs, &keep)
    }

    /// `cache` with rows `order` (new row `j` is row `order[j]`): with the cache bound on the
    /// provider, where it is (`bart/gather.rs`; only the indices cross), else on the host.
    fn gather_rows(&mut self, cache: &Cache, order: &[usize]) -> Result<Cache, ModelError> {
        if !self.bind_cache {
            return reorder(cache, order);
        }
        self.stats.host_bytes += 8 * order.len() as u64;
        self.gather.gather(cache, order)
    }

    /// `present.{i}.{part}.{key,value}` of every layer, for each of `parts`.
    fn present_names(&self, parts: &[&str]) -> Vec<String> {
        let mut names = Vec::with_capacity(2 * parts.len() * self.export.num_layers);
        for i in 0..self.export.num_layers {
            for part in parts {
                for kind in ["key", "value"] {
                    names.push(format!("present.{i}.{part}.{kind}"));
                }
            }
        }
        names
    }

    /// Bytes of `rows` rows of one part (self or cross attention) of the cache over `len`
    /// positions: f32 keys and values of every layer.
    fn cache_bytes(&self, rows: usize, len: usize) -> u64 {
        let e = &self.export;
        (2 * e.num_layers * rows * e.num_heads * len * e.head_dim * 4) as u64
    }

    /// Counts a decode step ([`DecodeStats`]) that moves `other` bytes between host and
    /// provider memory besides `caches` bytes of caches, which cross too when the cache is
    /// not bound on a GPU.
    fn count_step(&mut self, other: u64, caches: u64) {
        self.stats.decode_steps += 1;
        self.stats.cache_bytes += caches;
        self.stats.host_bytes += other;
        if self.step.provider() == ActiveProvider::Cuda && !self.bind_cache {
            self.stats.host_bytes += caches;
        }
    }

    /// Counts an uncached step: the first decoder on `rows` prefixes of `t` tokens (ids, mask
    /// and encoder states in, logits `[rows, t, vocab]` out; its presents are the caches).
    fn count_uncached_step(&mut self, rows: usize, t: usize, s: usize) {
        let e = &self.export;
        let other = 8 * rows * t + 8 * rows * s + 4 * rows * s * e.d_model + 4 * rows * t * e.vocab_size;
        let caches = self.cache_bytes(rows, t) + self.cache_bytes(rows, s);
        self.count_step(other as u64, caches);
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

/// Batched correction: several texts in one encoder run and one decode loop.
impl Bart {
    /// [`correct`](Self::correct) of each text, in one batch ([`generate_batch`](Self::generate_batch)).
    /// A text that cannot be encoded fails alone.
    pub fn correct_batch(&mut self, texts: &[&str], options: &CorrectOptions) -> Vec<Result<String, ModelError>> {
        let mut results: Vec<Option<Result<String, ModelError>>> = Vec::with_capacity(texts.len());
        let (mut rows, mut inputs) = (Vec::new(), Vec::new());
        for (i, text) in texts.iter().enumerate() {
            if text.trim().is_empty() {
                results.push(Some(Ok(text.to_string())));
                continue;
            }
            match self.tokenizer.encode(text, true) {
                Ok(mut ids) => {
                    let max = self.export.max_position_embeddings;
                    if ids.len() > max {
                        let last = ids[ids.len() - 1];
                        ids.truncate(max - 1);
                        ids.push(last);
                    }
                    rows.push(i);
                    inputs.push(ids);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let generated = self.generate_batch(&inputs, options);
        for (&i, g) in rows.iter().zip(generated) {
            results[i] = Some(g.and_then(|g| Ok(self.tokenizer.decode(&g.ids)?.trim().to_string())));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ModelError::Invalid("BART did not run this text".into()))))
            .collect()
    }

    /// [`generate`](Self::generate) of each input. With the KV cache (`use_cache`) every input
    /// runs in one batch: greedy one row per input, beam search one row per running beam of
    /// each input (`models/src/bart/beam.rs`); the inputs right-padded to the longest with an
    /// attention mask of 0 on the padding, each input stopping on its own. An input the export
    /// cannot take fails alone; when the shared run fails, the inputs run one by one, so the
    /// error lands on the input that causes it. Without the cache the inputs run one by one.
    pub fn generate_batch(
        &mut self,
        inputs: &[Vec<u32>],
        options: &CorrectOptions,
    ) -> Vec<Result<Generated, ModelError>> {
        if !options.use_cache || options.beams == 0 {
            return inputs.iter().map(|ids| self.generate(ids, options)).collect();
        }
        let mut results: Vec<Option<Result<Generated, ModelError>>> = Vec::with_capacity(inputs.len());
        let (mut rows, mut batch, mut limits) = (Vec::new(), Vec::new(), Vec::new());
        for (i, ids) in inputs.iter().enumerate() {
            let limit = self.token_limit(ids.len(), options);
            results.push(match self.check_input(ids) {
                Err(e) => Some(Err(e)),
                Ok(()) if ids.is_empty() || limit == 0 => Some(Ok(Generated::default())),
                Ok(()) => {
                    rows.push(i);
                    batch.push(ids.clone());
                    limits.push(limit);
                    None
                }
            });
        }
        if !batch.is_empty() {
            let shared = if options.beams == 1 {
                self.greedy_batch(&batch, &limits, options).map(|seqs| {
                    seqs.into_iter()
                        .map(|ids| Generated { ids, score: None })
                        .collect::<Vec<_>>()
                })
            } else {
                self.beam_batch(&batch, &limits, options)
            };
            match shared {
                Ok(outs) => {
                    for (&i, g) in rows.iter().zip(outs) {
                        results[i] = Some(Ok(g));
                    }
                }
                Err(e) => {
                    let texts = batch.len();
                    tracing::warn!(error = %e, texts, "the batched BART run failed; running its texts one by one");
                    for (&i, ids) in rows.iter().zip(&batch) {
                        results[i] = Some(self.generate(ids, options));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ModelError::Invalid("BART did not run this input".into()))))
            .collect()
    }

    /// Greedy ids (after the start token, eos left out) of each input (token limit `limits`,
    /// each at least 1), in one batch.
    fn greedy_batch(
        &mut self,
        inputs: &[Vec<u32>],
        limits: &[usize],
        o: &CorrectOptions,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let e = self.export.clone();
        let (b, vocab, d) = (inputs.len(), e.vocab_size, e.d_model);
        let (s, mask, hidden) = self.encode_padded(inputs)?;
        let mut seqs: Vec<Vec<u32>> = vec![vec![e.decoder_start_token_id]; b];
        let mut done: Vec<bool> = limits.iter().map(|&l| l == 0).collect();
        let mut res = self.run_first_on(vec![
            (
                "input_ids".into(),
                tensor_i64(&[b, 1], vec![i64::from(e.decoder_start_token_id); b])?,
            ),
            ("encoder_attention_mask".into(), tensor_i64(&[b, s], mask.clone())?),
            ("encoder_hidden_states".into(), tensor_f32(&[b, s, d], hidden)?),
        ])?;
        let cross = self.take_cache(&mut res, "encoder")?;
        for k in 0.. {
            let mut last = Vec::with_capacity(b);
            {
                let (shape, logits) = res.f32("logits")?;
                let t = shape[1];
                for row in 0..b {
                    let at = (row * t + t - 1) * vocab;
                    let next = argmax(&self.next_log_probs(&logits[at..at + vocab], &seqs[row], limits[row], o)) as u32;
                    if !done[row] {
                        if next == e.eos_token_id {
                            done[row] = true;
                        } else {
                            seqs[row].push(next);
                            done[row] = k + 1 == limits[row];
                        }
                    }
                    last.push(next);
                }
            }
            if done.iter().all(|&x| x) {
                break;
            }
            let past = self.take_cache(&mut res, "decoder")?;
            res = self.run_step(&last, &mask, s, past, &cross)?;
        }
        Ok(seqs.into_iter().map(|seq| seq[1..].to_vec()).collect())
    }
}

/// `(rows, positions)` of a cache (of its first tensor; `(0, 0)` when empty), wherever it is.
fn cache_dims(cache: &Cache) -> Result<(usize, usize), ModelError> {
    let Some((name, value)) = cache.first() else {
        return Ok((0, 0));
    };
    match value.dtype() {
        ValueType::Tensor { shape, .. } if shape.len() == 4 => Ok((shape[0].max(0) as usize, shape[2].max(0) as usize)),
        other => Err(ModelError::Invalid(format!(
            "cache tensor `{name}` is {other}, expected a tensor [rows, heads, positions, head_dim]"
        ))),
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
