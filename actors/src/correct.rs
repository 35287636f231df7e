//! `correct`: repairs the received texts (Multi-SC receiver, §II-B).
//!
//! `model = "symspell"` (offline tier): SymSpell compound correction with the
//! English unigram and bigram dictionaries of the `symspellpy` package. Reads
//! `texts` (or `text`) and adds `corrected`; numbers and punctuation are kept.
//!
//! `model = "noisy_channel"` (offline tier, channel-aware): for each received text, the
//! most likely sent text under bit flips at the link's bit error rate (the message's
//! `ber_expected`, from `text_channel`, or the `ber` key) and a bigram language model
//! (wordsegment counts in `assets/ngram`, the SymSpell dictionaries, the captioner's
//! sentences); see `dataflow_models::noisy_channel`.
//!
//! `model = "bart"` (paper tier): a BART seq2seq spelling corrector exported by
//! `models/export/bart.py` (default checkpoint `oliverguhr/spelling-correction-english-base`),
//! the encoder once per text and the decoder with its KV cache. Decoding uses the checkpoint's
//! generation settings recorded in the export's `export.json` (bart-base fine-tunes: 4 beams,
//! `no_repeat_ngram_size` 3, early stopping, forced BOS/EOS) and a token limit sized from the
//! input (`n + n/2 + 10` new tokens for `n` input tokens, capped by the checkpoint's `max_length`);
//! the keys `beams`, `no_repeat_ngram_size` and `max_new_tokens` override them.

use std::path::PathBuf;
use std::sync::Arc;

use dataflow_engine::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
use dataflow_models::bart::{self, Bart, CorrectOptions};
use dataflow_models::noisy_channel::{NoisyChannel, NoisyChannelOptions};
use dataflow_models::provider::SessionOptions;
use dataflow_models::symspell::Corrector;
use schemars::JsonSchema;
use serde::Deserialize;

/// Correction models.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CorrectModel {
    /// SymSpell compound correction (offline tier).
    Symspell,
    /// No correction: `corrected` = received (for comparisons).
    None,
    /// A BART spelling corrector (paper tier, exported by `models/export/bart.py`).
    Bart,
    /// Channel-aware correction: bit-flip likelihoods and a bigram language model (offline tier).
    NoisyChannel,
}

/// Keys of `correct`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CorrectConfig {
    /// Which corrector.
    #[serde(default = "default_model")]
    pub model: CorrectModel,
    /// Folder holding the SymSpell dictionaries (default: the set-up's `assets/symspell`).
    #[serde(default)]
    pub dictionary: Option<PathBuf>,
    /// BART: the export folder (default `assets/models/bart`).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// BART: beam width (1 = greedy); default: the checkpoint's `num_beams` (export.json).
    #[serde(default)]
    pub beams: Option<usize>,
    /// BART: no n-gram of this many tokens repeats (0 = no rule); default: the checkpoint's.
    #[serde(default)]
    pub no_repeat_ngram_size: Option<usize>,
    /// BART: most new tokens per text, a fixed limit; default: sized from each text's length
    /// (`n + n/2 + 10` for `n` input tokens, capped by the checkpoint's `max_length`).
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// noisy_channel: folder holding the wordsegment `unigrams.txt` and `bigrams.txt`
    /// (default: the set-up's `assets/ngram`).
    #[serde(default)]
    pub ngram_dir: Option<PathBuf>,
    /// noisy_channel: the bit error rate to assume; default: the message's `ber_expected`
    /// (set by `text_channel`), else 0.01.
    #[serde(default)]
    pub ber: Option<f64>,
    /// noisy_channel: weight of the captioner's sentences in the language model (0–1).
    #[serde(default = "default_domain_weight")]
    pub domain_weight: f64,
    /// ONNX Runtime session options for BART (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

fn default_domain_weight() -> f64 {
    NoisyChannelOptions::default().domain_weight
}

/// Bit error rate assumed by `noisy_channel` when neither `ber` nor `ber_expected` says.
const FALLBACK_BER: f64 = 0.01;

fn default_model() -> CorrectModel {
    CorrectModel::Symspell
}

/// The `correct` kind.
pub struct Correct;

enum Fixer {
    Symspell(Box<Corrector>),
    Bart(Box<Bart>, CorrectOptions),
    NoisyChannel(Box<NoisyChannel>),
    None,
}

struct Run {
    corrector: Fixer,
    /// The `ber` key, which overrides the message's `ber_expected`.
    ber: Option<f64>,
}

impl Run {
    fn fix(&mut self, t: &str, ber: f64) -> Result<String, StageError> {
        match &mut self.corrector {
            Fixer::Symspell(c) => Ok(c.correct(t)),
            Fixer::NoisyChannel(c) => Ok(c.correct(t, ber)),
            Fixer::Bart(b, options) => b
                .correct(t, options)
                .map_err(|e| StageError::new("model", format!("BART correction failed: {e}"))),
            Fixer::None => Ok(t.to_string()),
        }
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let mut fields = msg.fields.clone();
        let ber = self.ber.or(msg.fields.number("ber_expected")).unwrap_or(FALLBACK_BER);
        if let Some(texts) = msg.fields.texts("texts") {
            let fixed: Vec<Option<String>> = texts
                .iter()
                .map(|t| t.as_deref().map(|t| self.fix(t, ber)).transpose())
                .collect::<Result<_, _>>()?;
            fields.insert("corrected", Value::Texts(Arc::from(fixed)));
        } else if let Some(t) = msg.fields.text("text") {
            fields.insert("corrected", Value::Text(Arc::from(self.fix(t, ber)?.as_str())));
        } else {
            return Err(StageError::input(format!(
                "frame {} has neither `texts` nor `text` to correct",
                msg.id
            )));
        }
        out.emit(msg.derive(fields));
        Ok(())
    }
}

fn bart_dir(c: &CorrectConfig, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let explicit = c.model_dir.as_deref().map(|d| ctx.resolve(d));
    bart::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("correct model = \"bart\": {e}")))
}

fn dictionary_dir(c: &CorrectConfig, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let dir = match &c.dictionary {
        Some(d) => ctx.resolve(d),
        None => dataflow_models::assets::asset_path("symspell")
            .map_err(|e| StageError::io(format!("{e}; run `scripts/setup-assets` (or `make setup`)")))?,
    };
    let uni = dir.join(dataflow_models::symspell::UNIGRAM_FILE);
    if !uni.is_file() {
        return Err(StageError::io(format!(
            "SymSpell dictionary {} is missing; run `scripts/setup-assets` (or `make setup`) to fetch it",
            uni.display()
        )));
    }
    Ok(dir)
}

fn ngram_dir(c: &CorrectConfig, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let dir = match &c.ngram_dir {
        Some(d) => ctx.resolve(d),
        None => dataflow_models::assets::asset_path("ngram")
            .map_err(|e| StageError::io(format!("{e}; run `scripts/setup-assets` (or `make setup`)")))?,
    };
    let uni = dir.join(dataflow_models::ngram::UNIGRAM_FILE);
    if !uni.is_file() {
        return Err(StageError::io(format!(
            "n-gram counts {} are missing; run `scripts/setup-assets` (or `make setup`) to fetch them",
            uni.display()
        )));
    }
    Ok(dir)
}

fn build_noisy_channel(c: &CorrectConfig, ctx: &BuildContext) -> Result<Fixer, StageError> {
    if !(0.0..=1.0).contains(&c.domain_weight) {
        return Err(StageError::input(format!(
            "`domain_weight` must be in 0–1, got {}",
            c.domain_weight
        )));
    }
    if let Some(b) = c.ber {
        if !(0.0..=0.5).contains(&b) {
            return Err(StageError::input(format!("`ber` must be in 0–0.5, got {b}")));
        }
    }
    let (ngrams, dict) = (ngram_dir(c, ctx)?, dictionary_dir(c, ctx)?);
    let t0 = std::time::Instant::now();
    let options = NoisyChannelOptions {
        domain_weight: c.domain_weight,
        ..NoisyChannelOptions::default()
    };
    let model = NoisyChannel::load(&ngrams, Some(&dict), options)
        .map_err(|e| StageError::io(format!("correct model = \"noisy_channel\": {e}")))?;
    tracing::info!(stage = %ctx.stage, words = model.model().len(), bigrams = model.model().bigram_count(), seconds = t0.elapsed().as_secs_f64(), "noisy-channel language model loaded");
    Ok(Fixer::NoisyChannel(Box::new(model)))
}

fn build_bart(c: &CorrectConfig, ctx: &BuildContext) -> Result<Fixer, StageError> {
    if c.beams == Some(0) || c.max_new_tokens == Some(0) {
        return Err(StageError::input(
            "correct: `beams` and `max_new_tokens` must be at least 1 (or left out for the export's settings)",
        ));
    }
    let dir = bart_dir(c, ctx)?;
    let model = Bart::load(&dir, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
    let mut options = model.default_options();
    if let Some(b) = c.beams {
        options.beams = b;
    }
    if let Some(n) = c.no_repeat_ngram_size {
        options.no_repeat_ngram_size = n;
    }
    if let Some(m) = c.max_new_tokens {
        options.max_new_tokens = m;
        options.size_from_input = false;
    }
    tracing::info!(stage = %ctx.stage, model = %dir.display(), provider = %model.provider(), beams = options.beams, no_repeat_ngram_size = options.no_repeat_ngram_size, early_stopping = ?options.early_stopping, forced_eos = options.forced_eos, "BART corrector loaded");
    Ok(Fixer::Bart(Box::new(model), options))
}

impl StageKind for Correct {
    type Config = CorrectConfig;
    const NAME: &'static str = "correct";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Corrects the received texts (SymSpell compound correction, channel-aware noisy-channel decoding, or BART).";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::passing("out", &["corrected"])],
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        let found = match c.model {
            CorrectModel::None => return Vec::new(),
            CorrectModel::Symspell => dictionary_dir(c, ctx).map(|_| ()),
            CorrectModel::Bart => bart_dir(c, ctx).map(|_| ()),
            CorrectModel::NoisyChannel => ngram_dir(c, ctx).and_then(|_| dictionary_dir(c, ctx)).map(|_| ()),
        };
        found.err().map(|e| vec![e.message]).unwrap_or_default()
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let corrector = match c.model {
            CorrectModel::None => Fixer::None,
            CorrectModel::NoisyChannel => build_noisy_channel(c, ctx)?,
            CorrectModel::Bart => build_bart(c, ctx)?,
            CorrectModel::Symspell => {
                let dir = dictionary_dir(c, ctx)?;
                let t0 = std::time::Instant::now();
                let corr = Corrector::load_dir(&dir).map_err(|e| StageError::io(format!("{}: {e}", dir.display())))?;
                tracing::info!(stage = %ctx.stage, words = corr.symspell().word_count(), seconds = t0.elapsed().as_secs_f64(), "SymSpell dictionaries loaded");
                Fixer::Symspell(Box::new(corr))
            }
        };
        Ok(Built::Stage(Box::new(Run { corrector, ber: c.ber })))
    }
}
