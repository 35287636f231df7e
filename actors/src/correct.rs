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
//! the encoder once per text and the decoder with its KV cache; a batch of frames runs all its
//! texts in one padded batch (greedy or beam search, `Bart::correct_batch`). Decoding uses the
//! checkpoint's generation settings recorded in the export's `export.json` (bart-base fine-tunes: 4 beams,
//! `no_repeat_ngram_size` 3, early stopping, forced BOS/EOS) and a token limit sized from the
//! input (`n + n/2 + 10` new tokens for `n` input tokens, capped by the checkpoint's `max_length`);
//! the keys `beams`, `no_repeat_ngram_size` and `max_new_tokens` override them.

use std::path::PathBuf;
use std::sync::Arc;

use dataflow_engine::tagged::Tagged;
use dataflow_engine::FieldType;
use dataflow_engine::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
use dataflow_models::bart::{self, Bart, CorrectOptions};
use dataflow_models::noisy_channel::{NoisyChannel, NoisyChannelOptions};
use dataflow_models::provider::SessionOptions;
use dataflow_models::symspell::Corrector;
use dataflow_monitoring::names;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

/// Keys of `correct`, by model.
#[derive(Debug, JsonSchema)]
#[serde(tag = "model", rename_all = "snake_case")]
#[schemars(transform = dataflow_engine::tagged::mark_default::<CorrectConfig>)]
pub enum CorrectConfig {
    /// SymSpell compound correction (offline tier; the default).
    Symspell(SymspellKeys),
    /// No correction: `corrected` = received (for comparisons).
    None(NoKeys),
    /// A BART spelling corrector (paper tier, exported by `models/export/bart.py`).
    Bart(BartKeys),
    /// Channel-aware correction: bit-flip likelihoods and a bigram language model (offline tier).
    NoisyChannel(NoisyChannelKeys),
}

impl Tagged for CorrectConfig {
    const DEFAULT: &'static str = "symspell";
    const MODELS: &'static [&'static str] = &["symspell", "none", "bart", "noisy_channel"];
    fn model<'de, D: Deserializer<'de>>(model: &str, keys: D) -> Result<Self, D::Error> {
        match model {
            "none" => NoKeys::deserialize(keys).map(Self::None),
            "bart" => BartKeys::deserialize(keys).map(Self::Bart),
            "noisy_channel" => NoisyChannelKeys::deserialize(keys).map(Self::NoisyChannel),
            _ => SymspellKeys::deserialize(keys).map(Self::Symspell),
        }
    }
}

impl<'de> Deserialize<'de> for CorrectConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        dataflow_engine::tagged::deserialize(d)
    }
}

/// Keys of `model = "none"`: none.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct NoKeys {}

/// Keys of `model = "symspell"`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SymspellKeys {
    /// Folder holding the SymSpell dictionaries (default: the set-up's `assets/symspell`).
    #[serde(default)]
    pub dictionary: Option<PathBuf>,
}

/// Keys of `model = "bart"`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct BartKeys {
    /// The export folder (default `assets/models/bart`).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Beam width (1 = greedy); default: the checkpoint's `num_beams` (export.json).
    #[serde(default)]
    pub beams: Option<usize>,
    /// No n-gram of this many tokens repeats (0 = no rule); default: the checkpoint's.
    #[serde(default)]
    pub no_repeat_ngram_size: Option<usize>,
    /// Most new tokens per text, a fixed limit; default: sized from each text's length
    /// (`n + n/2 + 10` for `n` input tokens, capped by the checkpoint's `max_length`).
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// ONNX Runtime session options (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

/// Keys of `model = "noisy_channel"`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct NoisyChannelKeys {
    /// Folder holding the SymSpell dictionaries (default: the set-up's `assets/symspell`).
    #[serde(default)]
    pub dictionary: Option<PathBuf>,
    /// Folder holding the wordsegment `unigrams.txt` and `bigrams.txt`
    /// (default: the set-up's `assets/ngram`).
    #[serde(default)]
    pub ngram_dir: Option<PathBuf>,
    /// The bit error rate to assume; default: the message's `ber_expected`
    /// (set by `text_channel`), else 0.01.
    #[serde(default)]
    pub ber: Option<f64>,
    /// Weight of the captioner's sentences in the language model (0–1).
    #[serde(default = "default_domain_weight")]
    pub domain_weight: f64,
}

fn default_domain_weight() -> f64 {
    NoisyChannelOptions::default().domain_weight
}

/// Bit error rate assumed by `noisy_channel` when neither `ber` nor `ber_expected` says.
const FALLBACK_BER: f64 = 0.01;

/// The `correct` kind.
pub struct Correct;

enum Fixer {
    Symspell(Box<Corrector>),
    Bart(Box<Bart>, CorrectOptions, StepCounters),
    NoisyChannel(Box<NoisyChannel>),
    None,
}

/// `dataflow_model_inference_seconds`, `dataflow_model_host_bytes_total` and
/// `dataflow_model_steps_total` of a BART stage.
struct StepCounters {
    inference: metrics::Histogram,
    host_bytes: metrics::Counter,
    steps: metrics::Counter,
}

impl StepCounters {
    fn new(bart: &Bart) -> Self {
        let labels = [
            (names::LABEL_MODEL, "bart"),
            (names::LABEL_PROVIDER, bart.provider().as_str()),
        ];
        StepCounters {
            inference: metrics::histogram!(names::MODEL_INFERENCE_SECONDS, &labels),
            host_bytes: metrics::counter!(names::MODEL_HOST_BYTES, &labels),
            steps: metrics::counter!(names::MODEL_STEPS, &labels),
        }
    }

    /// Records a call of `took` on `texts` texts (each text's share of it) and adds the
    /// decode steps and host bytes of `bart` since the last call.
    fn record(&self, bart: &mut Bart, took: std::time::Duration, texts: usize) {
        let share = took.as_secs_f64() / texts.max(1) as f64;
        for _ in 0..texts {
            self.inference.record(share);
        }
        let stats = bart.take_decode_stats();
        self.host_bytes.increment(stats.host_bytes);
        self.steps.increment(stats.decode_steps as u64);
    }
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
            Fixer::Bart(b, options, counters) => {
                let t0 = std::time::Instant::now();
                let fixed = b.correct(t, options);
                counters.record(b, t0.elapsed(), 1);
                fixed.map_err(|e| StageError::new("model", format!("BART correction failed: {e}")))
            }
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

    /// BART corrects every text of every frame of the batch in one padded batch
    /// (`Bart::correct_batch`): greedy one decoder row per text, beam search (`beams > 1`) one
    /// row per running beam of each text, each text stopping on its own; the other correctors
    /// go frame by frame. A frame without text, or whose text BART fails on, fails alone.
    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        let Fixer::Bart(bart, options, counters) = &mut self.corrector else {
            return inputs
                .into_iter()
                .zip(outs.iter_mut())
                .map(|(input, out)| self.process(input, out))
                .collect();
        };
        // Every text of the batch, and per frame the slots its texts take (`None`: a missing
        // entry of `texts`), or why it has none.
        let mut flat: Vec<String> = Vec::new();
        // (whether the frame has `texts`, the slot of each of its texts)
        type Slots = (bool, Vec<Option<usize>>);
        let mut frames: Vec<Result<Slots, StageError>> = Vec::with_capacity(inputs.len());
        for input in &inputs {
            let Input::Message { msg, .. } = input else {
                frames.push(Ok((false, Vec::new())));
                continue;
            };
            let mut slot = |t: &str| {
                flat.push(t.to_string());
                flat.len() - 1
            };
            frames.push(if let Some(texts) = msg.fields.texts("texts") {
                Ok((true, texts.iter().map(|t| t.as_deref().map(&mut slot)).collect()))
            } else if let Some(t) = msg.fields.text("text") {
                Ok((false, vec![Some(slot(t))]))
            } else {
                Err(StageError::input(format!(
                    "frame {} has neither `texts` nor `text` to correct",
                    msg.id
                )))
            });
        }
        let refs: Vec<&str> = flat.iter().map(String::as_str).collect();
        let t0 = std::time::Instant::now();
        let fixed = bart.correct_batch(&refs, options);
        counters.record(bart, t0.elapsed(), refs.len());
        inputs
            .iter()
            .zip(frames)
            .zip(outs.iter_mut())
            .map(|((input, frame), out)| {
                let Input::Message { msg, .. } = input else {
                    return Ok(());
                };
                let (many, slots) = frame?;
                let mut texts = Vec::with_capacity(slots.len());
                for slot in slots {
                    texts.push(match slot {
                        Some(k) => Some(fixed[k].as_ref().map(Clone::clone).map_err(|e| {
                            StageError::new("model", format!("BART correction of frame {} failed: {e}", msg.id))
                        })?),
                        None => None,
                    });
                }
                let mut fields = msg.fields.clone();
                let value = if many {
                    Value::Texts(Arc::from(texts))
                } else {
                    Value::Text(Arc::from(texts.pop().flatten().unwrap_or_default().as_str()))
                };
                fields.insert("corrected", value);
                out.emit(msg.derive(fields));
                Ok(())
            })
            .collect()
    }
}

fn bart_dir(c: &BartKeys, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let explicit = c.model_dir.as_deref().map(|d| ctx.resolve(d));
    bart::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("correct model = \"bart\": {e}")))
}

fn dictionary_dir(dictionary: &Option<PathBuf>, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let dir = match dictionary {
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

fn ngram_dir(c: &NoisyChannelKeys, ctx: &BuildContext) -> Result<PathBuf, StageError> {
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

fn build_noisy_channel(c: &NoisyChannelKeys, ctx: &BuildContext) -> Result<Fixer, StageError> {
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
    let (ngrams, dict) = (ngram_dir(c, ctx)?, dictionary_dir(&c.dictionary, ctx)?);
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

fn build_bart(c: &BartKeys, ctx: &BuildContext) -> Result<Fixer, StageError> {
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
    let counters = StepCounters::new(&model);
    Ok(Fixer::Bart(Box::new(model), options, counters))
}

impl StageKind for Correct {
    type Config = CorrectConfig;
    const NAME: &'static str = "correct";
    const ROLE: Role = Role::Transform;
    /// BART corrects a batch of frames in one padded batch (greedy or beam search); the others
    /// go one by one.
    const BATCH: bool = true;
    const DOC: &'static str =
        "Corrects the received texts (SymSpell compound correction, channel-aware noisy-channel decoding, or BART).";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            // `corrected` is a text for an input with `text`, texts for one with `texts`.
            outputs: vec![OutPort::forwarding("out").with("corrected", FieldType::Any)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        let found = match c {
            CorrectConfig::None(_) => return Vec::new(),
            CorrectConfig::Symspell(c) => dictionary_dir(&c.dictionary, ctx).map(|_| ()),
            CorrectConfig::Bart(c) => bart_dir(c, ctx).map(|_| ()),
            CorrectConfig::NoisyChannel(c) => ngram_dir(c, ctx)
                .and_then(|_| dictionary_dir(&c.dictionary, ctx))
                .map(|_| ()),
        };
        found.err().map(|e| vec![e.message]).unwrap_or_default()
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let corrector = match c {
            CorrectConfig::None(_) => Fixer::None,
            CorrectConfig::NoisyChannel(c) => build_noisy_channel(c, ctx)?,
            CorrectConfig::Bart(c) => build_bart(c, ctx)?,
            CorrectConfig::Symspell(c) => {
                let dir = dictionary_dir(&c.dictionary, ctx)?;
                let t0 = std::time::Instant::now();
                let corr = Corrector::load_dir(&dir).map_err(|e| StageError::io(format!("{}: {e}", dir.display())))?;
                tracing::info!(stage = %ctx.stage, words = corr.symspell().word_count(), seconds = t0.elapsed().as_secs_f64(), "SymSpell dictionaries loaded");
                Fixer::Symspell(Box::new(corr))
            }
        };
        let ber = match c {
            CorrectConfig::NoisyChannel(c) => c.ber,
            _ => None,
        };
        Ok(Built::Stage(Box::new(Run { corrector, ber })))
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::testkit::input;
    use dataflow_engine::Fields;

    /// The tiny BART fixture's folder and a `correct` config for it (`beams` beams, 6 new
    /// tokens, CPU); `None`, the test skipped, without ONNX Runtime.
    fn bart_config(beams: usize) -> Option<(std::path::PathBuf, CorrectConfig)> {
        if let Err(e) = dataflow_models::runtime::runtime() {
            assert!(!dataflow_models::assets::assets_required(), "{e}");
            println!("skipped: {e}");
            return None;
        }
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/bart");
        let cfg = serde_json::from_value(serde_json::json!({
            "model": "bart", "model_dir": fixture, "beams": beams, "max_new_tokens": 6,
            "provider": "cpu", "intra_threads": 1
        }))
        .unwrap();
        Some((fixture, cfg))
    }

    /// BART (greedy) over a batch of three frames, one with neither `text` nor `texts`: that
    /// one fails alone as an `input` error, the others are emitted.
    #[test]
    fn a_bart_batch_with_a_frame_without_text_fails_that_frame_only() {
        let Some((_, cfg)) = bart_config(1) else { return };
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::testkit::context("correct", "correct", dir.path());
        let Built::Stage(mut stage) = Correct::build(&cfg, &ctx).unwrap() else {
            panic!("correct is a stage")
        };
        let texts: Arc<[Option<String>]> = Arc::from(vec![Some("teh cat".to_string()), None, Some("a dgo".into())]);
        let inputs = vec![
            input(0, Fields::new().with("texts", Value::Texts(texts))),
            input(1, Fields::new().with("name", Value::Text(Arc::from("no text")))),
            input(
                2,
                Fields::new().with("text", Value::Text(Arc::from("the huose is red"))),
            ),
        ];
        let mut outs: Vec<Outputs> = (0..3).map(|_| Outputs::default()).collect();
        let results = stage.process_batch(inputs, &mut outs);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let err = results[1].as_ref().unwrap_err();
        assert_eq!(err.class, "input");
        assert!(err.message.contains("has neither `texts` nor `text`"), "{err}");
        let counts: Vec<usize> = outs.iter().map(Outputs::len).collect();
        assert_eq!(counts, [1, 0, 1]);
    }

    /// With beams (the export's 4), `process_batch` gives each frame the `corrected` that
    /// `process` gives it alone: the batched beam search, texts of different lengths.
    #[test]
    fn a_bart_beam_batch_emits_what_one_frame_at_a_time_emits() {
        if let Err(e) = dataflow_models::runtime::runtime() {
            assert!(!dataflow_models::assets::assets_required(), "{e}");
            println!("skipped: {e}");
            return;
        }
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/bart");
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::testkit::context("correct", "correct", dir.path());
        let cfg: CorrectConfig = serde_json::from_value(serde_json::json!({
            "model": "bart", "model_dir": fixture, "provider": "cpu", "intra_threads": 1
        }))
        .unwrap();
        let texts: Arc<[Option<String>]> = Arc::from(vec![
            Some("teh cat".to_string()),
            None,
            Some("a red motorbke is parked on the stret".into()),
        ]);
        let frames = vec![
            input(0, Fields::new().with("texts", Value::Texts(texts))),
            input(
                1,
                Fields::new().with("text", Value::Text(Arc::from("A person in a white space suit."))),
            ),
        ];
        // The same messages (same timestamps) for the one-at-a-time run.
        let copies: Vec<Input> = frames
            .iter()
            .map(|f| match f {
                Input::Message { input, msg } => Input::Message {
                    input: *input,
                    msg: msg.clone(),
                },
                Input::Joined(_) => unreachable!("test frames are messages"),
            })
            .collect();
        let Built::Stage(mut stage) = Correct::build(&cfg, &ctx).unwrap() else {
            panic!("correct is a stage")
        };
        let mut outs: Vec<Outputs> = (0..2).map(|_| Outputs::default()).collect();
        let results = stage.process_batch(frames, &mut outs);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        for (k, frame) in copies.into_iter().enumerate() {
            let mut alone = Outputs::default();
            stage.process(frame, &mut alone).unwrap();
            assert_eq!(alone.len(), 1);
            assert_eq!(format!("{alone:?}"), format!("{:?}", outs[k]), "frame {k}");
        }
    }

    /// The stage adds to `dataflow_model_host_bytes_total` and `dataflow_model_steps_total`
    /// (model `bart`, provider `cpu`) exactly the decode steps and host bytes BART reports
    /// for the same texts, batched and one at a time.
    #[test]
    fn a_bart_stage_counts_the_host_bytes_and_steps_bart_reports() {
        let Some((fixture, cfg)) = bart_config(2) else { return };
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::testkit::context("correct", "correct", dir.path());
        let (batch, alone) = (["teh cat", "a dgo on the grass"], "the huose is red");
        let recorder = dataflow_monitoring::local_recorder().unwrap();
        metrics::with_local_recorder(&recorder, || {
            let Built::Stage(mut stage) = Correct::build(&cfg, &ctx).unwrap() else {
                panic!("correct is a stage")
            };
            let texts: Arc<[Option<String>]> = Arc::from(batch.map(|t| Some(t.to_string())).to_vec());
            let mut outs = vec![Outputs::default()];
            let frames = vec![input(0, Fields::new().with("texts", Value::Texts(texts)))];
            assert!(stage.process_batch(frames, &mut outs).iter().all(Result::is_ok));
            let one = input(1, Fields::new().with("text", Value::Text(Arc::from(alone))));
            stage.process(one, &mut Outputs::default()).unwrap();
        });
        let samples = dataflow_monitoring::top::parse_exposition(&recorder.handle().render()).unwrap();
        let counted = |name: &str| {
            samples
                .iter()
                .find(|x| x.name == name && x.label("model") == Some("bart") && x.label("provider") == Some("cpu"))
                .map(|x| x.value)
        };
        // The same texts through a BART of its own, with the stage's options.
        let CorrectConfig::Bart(keys) = &cfg else {
            unreachable!()
        };
        let mut bart = Bart::load(&fixture, &keys.session).unwrap();
        let mut options = bart.default_options();
        (options.beams, options.max_new_tokens, options.size_from_input) = (2, 6, false);
        assert!(bart.correct_batch(&batch, &options).iter().all(Result::is_ok));
        bart.correct(alone, &options).unwrap();
        let reported = bart.take_decode_stats();
        assert!(reported.decode_steps > 0 && reported.host_bytes > 0, "{reported:?}");
        assert_eq!(counted(names::MODEL_STEPS), Some(reported.decode_steps as f64));
        assert_eq!(counted(names::MODEL_HOST_BYTES), Some(reported.host_bytes as f64));
        // One inference observed per text: two in the batch, one alone.
        let observed = format!("{}_count", names::MODEL_INFERENCE_SECONDS);
        assert_eq!(counted(&observed), Some(3.0));
    }
}
