//! `correct`: repairs the received texts (Multi-SC receiver, §II-B).
//!
//! `model = "symspell"` (offline tier): SymSpell compound correction with the
//! English unigram and bigram dictionaries of the `symspellpy` package. Reads
//! `texts` (or `text`) and adds `corrected`; numbers and punctuation are kept.

use std::path::PathBuf;
use std::sync::Arc;

use dataflow_engine::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
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
}

/// Keys of `correct`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectConfig {
    /// Which corrector.
    #[serde(default = "default_model")]
    pub model: CorrectModel,
    /// Folder holding the SymSpell dictionaries (default: the set-up's `assets/symspell`).
    #[serde(default)]
    pub dictionary: Option<PathBuf>,
}

fn default_model() -> CorrectModel {
    CorrectModel::Symspell
}

/// The `correct` kind.
pub struct Correct;

struct Run {
    corrector: Option<Corrector>,
}

impl Run {
    fn fix(&self, t: &str) -> String {
        match &self.corrector {
            Some(c) => c.correct(t),
            None => t.to_string(),
        }
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let mut fields = msg.fields.clone();
        if let Some(texts) = msg.fields.texts("texts") {
            let fixed: Vec<Option<String>> = texts.iter().map(|t| t.as_deref().map(|t| self.fix(t))).collect();
            fields.insert("corrected", Value::Texts(Arc::from(fixed)));
        } else if let Some(t) = msg.fields.text("text") {
            fields.insert("corrected", Value::Text(Arc::from(self.fix(t).as_str())));
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

impl StageKind for Correct {
    type Config = CorrectConfig;
    const NAME: &'static str = "correct";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Corrects the received texts (SymSpell compound correction).";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::passing("out", &["corrected"])],
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        if c.model == CorrectModel::None {
            return Vec::new();
        }
        dictionary_dir(c, ctx)
            .err()
            .map(|e| vec![e.message])
            .unwrap_or_default()
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let corrector = match c.model {
            CorrectModel::None => None,
            CorrectModel::Symspell => {
                let dir = dictionary_dir(c, ctx)?;
                let t0 = std::time::Instant::now();
                let corr = Corrector::load_dir(&dir).map_err(|e| StageError::io(format!("{}: {e}", dir.display())))?;
                tracing::info!(stage = %ctx.stage, words = corr.symspell().word_count(), seconds = t0.elapsed().as_secs_f64(), "SymSpell dictionaries loaded");
                Some(corr)
            }
        };
        Ok(Built::Stage(Box::new(Run { corrector })))
    }
}
