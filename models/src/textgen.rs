//! What the paper-tier families share: a Hugging Face `tokenizer.json` read with the
//! `tokenizers` crate, the choice of the next token (greedy or sampled), and the export folder
//! with the `export.json` that each script in `models/export/` writes beside its ONNX files.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ModelError;

/// A tokenizer loaded from a `tokenizer.json`.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("path", &self.path).finish()
    }
}

impl TextTokenizer {
    /// Loads `path` (a Hugging Face `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::ModelNotFound {
                path: path.to_path_buf(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Invalid(format!("cannot read tokenizer {}: {e}", path.display())))?;
        Ok(TextTokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Token ids of `text`; `special` adds the tokenizer's own framing (e.g. BART's `<s> … </s>`).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, ModelError> {
        self.inner
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Invalid(format!("tokenising with {}: {e}", self.path.display())))
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Invalid(format!("detokenising with {}: {e}", self.path.display())))
    }

    /// The id of a token, e.g. `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decoding {
    /// The most likely token (ties: the lowest id, as `argmax` in PyTorch and NumPy).
    #[default]
    Greedy,
    /// A draw from the softmax of `logits / temperature`, restricted to the `top_k` most likely
    /// tokens (0 = all) and then to the smallest set whose probability reaches `top_p`.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Keep only this many most likely tokens (0 = no limit).
        #[serde(default)]
        top_k: usize,
        /// Nucleus: keep the most likely tokens until their probability reaches this (1 = all).
        #[serde(default = "one")]
        top_p: f32,
        /// Seed of the draws (row `r` of a batch uses `seed + r`).
        #[serde(default)]
        seed: u64,
    },
}

fn one() -> f32 {
    1.0
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// `log(softmax(values))`.
pub fn log_softmax(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = values.iter().map(|v| (v - max).exp()).sum();
    let log_sum = sum.ln() + max;
    values.iter().map(|v| v - log_sum).collect()
}

/// Picks tokens for the rows of one step, with one random stream per row.
#[derive(Debug)]
pub struct Picker {
    decoding: Decoding,
    rngs: Vec<ChaCha8Rng>,
}

impl Picker {
    /// A picker for `rows` rows; row `r` samples with the decoding's seed + `r`.
    pub fn new(decoding: Decoding, rows: usize) -> Result<Self, ModelError> {
        let base = match decoding {
            Decoding::Greedy => 0,
            Decoding::Sample { seed, .. } => seed,
        };
        let seeds: Vec<u64> = (0..rows).map(|r| base.wrapping_add(r as u64)).collect();
        Self::with_seeds(decoding, &seeds)
    }

    /// A picker whose row `r` samples with `seeds[r]` (a batch of inputs that each have
    /// their own seed samples what each would alone; the decoding's own seed is unused).
    pub fn with_seeds(decoding: Decoding, seeds: &[u64]) -> Result<Self, ModelError> {
        match decoding {
            Decoding::Greedy => {}
            Decoding::Sample { temperature, top_p, .. } => {
                if !(temperature > 0.0 && temperature.is_finite()) {
                    return Err(ModelError::Invalid(format!(
                        "temperature must be > 0, got {temperature}"
                    )));
                }
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(ModelError::Invalid(format!("top_p must be in (0, 1], got {top_p}")));
                }
            }
        }
        let rngs = seeds.iter().map(|&seed| ChaCha8Rng::seed_from_u64(seed)).collect();
        Ok(Picker { decoding, rngs })
    }

    /// The next token of row `row` from its logits.
    pub fn pick(&mut self, row: usize, logits: &[f32]) -> u32 {
        match self.decoding {
            Decoding::Greedy => argmax(logits) as u32,
            Decoding::Sample {
                temperature,
                top_k,
                top_p,
                ..
            } => {
                let mut order: Vec<usize> = (0..logits.len()).collect();
                order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
                if top_k > 0 {
                    order.truncate(top_k);
                }
                let max = logits[order[0]];
                let mut probs: Vec<f32> = order.iter().map(|&i| ((logits[i] - max) / temperature).exp()).collect();
                let total: f32 = probs.iter().sum();
                let mut kept = 0;
                let mut mass = 0.0;
                for p in probs.iter_mut() {
                    *p /= total;
                    if mass < top_p {
                        kept += 1;
                    }
                    mass += *p;
                }
                let kept = kept.max(1);
                let norm: f32 = probs[..kept].iter().sum();
                let mut draw = self.rngs[row].random::<f32>() * norm;
                for (i, p) in probs[..kept].iter().enumerate() {
                    if draw < *p {
                        return order[i] as u32;
                    }
                    draw -= p;
                }
                order[kept - 1] as u32
            }
        }
    }
}

/// Reads and parses `<dir>/export.json`, naming `export_command` when it is missing.
pub fn read_export_json<T: DeserializeOwned>(dir: &Path, export_command: &str) -> Result<T, ModelError> {
    let path = dir.join("export.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ModelError::Invalid(format!(
            "{}: {e}; export the model with `{export_command}` (see models/README.md)",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Invalid(format!("{}: {e}", path.display())))
}

/// The folder of a paper-tier export: `explicit` when the graph names one, else `asset_dir`
/// inside the assets folder. An error when its `export.json` is absent says the exact command
/// that makes it (`script --out <folder>`).
pub fn locate_export(explicit: Option<&Path>, asset_dir: &str, script: &str) -> Result<PathBuf, ModelError> {
    let dir = match explicit {
        Some(dir) => dir.to_path_buf(),
        None => match crate::assets::asset_path(asset_dir) {
            Ok(dir) => dir,
            // No assets folder at all: name the default place relative to the clone.
            Err(_) => Path::new("assets").join(asset_dir),
        },
    };
    if dir.join("export.json").is_file() {
        return Ok(dir);
    }
    // The folder as the user would type it: relative to the current directory when inside it.
    let out = std::env::current_dir()
        .ok()
        .and_then(|cwd| dir.strip_prefix(&cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| dir.clone());
    Err(ModelError::Invalid(format!(
        "the model is not exported: {} is missing; export it on a machine with internet with \
         `python {script} --out {}` (see models/README.md)",
        out.join("export.json").display(),
        out.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        let ls = log_softmax(&[1.0, 1.0]);
        assert!((ls[0] - 0.5f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn sampling_with_top_k_one_is_greedy_and_seeded_draws_repeat() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let one = Decoding::Sample {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 3,
        };
        let mut p = Picker::new(one, 1).unwrap();
        assert!((0..50).all(|_| p.pick(0, &logits) == 1));
        let hot = Decoding::Sample {
            temperature: 2.0,
            top_k: 0,
            top_p: 1.0,
            seed: 9,
        };
        let draws = |d| {
            let mut p = Picker::new(d, 1).unwrap();
            (0..200).map(|_| p.pick(0, &logits)).collect::<Vec<_>>()
        };
        let a = draws(hot);
        assert_eq!(a, draws(hot), "same seed, same draws");
        assert!(a.contains(&1) && a.contains(&2) && a.contains(&0), "{a:?}");
        // p(token 1) ≈ 0.51 at T = 1, so top_p = 0.3 keeps that token alone.
        let nucleus = Decoding::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.3,
            seed: 1,
        };
        assert!(draws(nucleus).iter().all(|&t| t == 1));
        assert!(Picker::new(
            Decoding::Sample {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: 0
            },
            1
        )
        .is_err());
    }
}
