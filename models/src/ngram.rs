//! `ngram`: a word bigram language model read from count files, for the noisy-channel
//! corrector ([`crate::noisy_channel`]).
//!
//! # Provenance
//!
//! - `wordsegment` 1.3.1 (Apache-2.0, Grant Jenks): `unigrams.txt` (333,213 words) and
//!   `bigrams.txt` (286,358 word pairs), `term<TAB>count`, counts from the Google Web
//!   Trillion Word Corpus (Brants & Franz 2006, LDC2006T13) as published with Peter
//!   Norvig's "Natural Language Corpus Data" (Beautiful Data, 2009). The set-up script
//!   places them in `assets/ngram/`.
//! - The SymSpell dictionaries of `symspellpy` 6.10.1 (`assets/symspell/`, `term count`
//!   and `term1 term2 count`), which come from the same corpus; a word in both keeps the
//!   larger count.
//! - A small in-domain text (the captioner's sentences) counted on top, see
//!   [`NgramModel::add_domain_text`].
//!
//! # Model
//!
//! Two interpolated bigram models mixed linearly:
//!
//! ```text
//! P(w | v) = μ · P_dom(w | v) + (1 − μ) · P_gen(w | v)
//! P_gen(w | v) = (1 − λ) · c(v w) / c(v) + λ · c(w) / N
//! P_dom(w | v) = (1 − λ_d) · d(v w) / d(v ·) + λ_d · d(w) / D
//! ```
//!
//! with λ = 0.2, λ_d = 0.1 and μ = [`NgramModel::domain_weight`] (0.5 by default; 0 when
//! no domain text was added). Words outside the vocabulary get [`OOV_LOG_PROB`].
//! Only words of lowercase ASCII letters, digits and `'` are kept.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// File name of the wordsegment unigram counts in `assets/ngram/`.
pub const UNIGRAM_FILE: &str = "unigrams.txt";
/// File name of the wordsegment bigram counts in `assets/ngram/`.
pub const BIGRAM_FILE: &str = "bigrams.txt";
/// Natural log of the probability of a word outside the vocabulary.
pub const OOV_LOG_PROB: f64 = -23.0;
/// Weight of the unigram in the general model's interpolation (λ).
const LAMBDA: f64 = 0.2;
/// Weight of the unigram in the domain model's interpolation (λ_d).
const LAMBDA_DOMAIN: f64 = 0.1;

/// Errors from reading count files.
#[derive(Debug, thiserror::Error)]
pub enum NgramError {
    /// A count file could not be read.
    #[error("cannot read n-gram counts {path}: {source} (run `scripts/setup-assets` to fetch them)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line did not end in a count.
    #[error("{path}:{line}: expected `term count` with a whole-number count, found {found:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line as found.
        found: String,
    },
}

/// A hasher for pair keys already spread by [`pair`] (SplitMix64 finaliser): the
/// default SipHash made bigram lookups the corrector's hot spot.
#[derive(Debug, Default, Clone, Copy)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        let mut z = v.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }
}

type PairMap = HashMap<u64, f64, BuildHasherDefault<PairHasher>>;

/// The key of the word pair (`a`, `b`).
fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// Whether `w` is a word the model keeps (lowercase ASCII letters, digits, `'`).
pub fn is_model_word(w: &str) -> bool {
    !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'\'')
}

/// Reads `term… count` lines (tab or space separated; the count is the last field).
fn read_counts(path: &Path, mut f: impl FnMut(&[&str], f64)) -> Result<(), NgramError> {
    let io = |source| NgramError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some((count, terms)) = fields.split_last() else {
            continue;
        };
        let count: u64 = count.parse().map_err(|_| NgramError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            found: line.clone(),
        })?;
        f(terms, count as f64);
    }
    Ok(())
}

/// A word bigram language model (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct NgramModel {
    ids: HashMap<String, u32>,
    words: Vec<String>,
    counts: Vec<f64>,
    total: f64,
    bigrams: PairMap,
    domain: Vec<f64>,
    domain_total: f64,
    domain_left: Vec<f64>,
    domain_bigrams: PairMap,
    domain_weight: f64,
}

impl NgramModel {
    /// An empty model.
    pub fn new() -> Self {
        Self {
            domain_weight: 0.5,
            ..Self::default()
        }
    }

    /// Number of words in the vocabulary.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Number of general bigrams kept.
    pub fn bigram_count(&self) -> usize {
        self.bigrams.len()
    }

    /// The id of `word`, if in the vocabulary.
    pub fn id(&self, word: &str) -> Option<u32> {
        self.ids.get(word).copied()
    }

    /// The word of `id`.
    pub fn word(&self, id: u32) -> &str {
        self.words.get(id as usize).map_or("", String::as_str)
    }

    /// Every word with its id, in id order.
    pub fn words(&self) -> impl Iterator<Item = (u32, &str)> {
        self.words.iter().enumerate().map(|(i, w)| (i as u32, w.as_str()))
    }

    /// The weight μ of the domain model in the mixture (0–1).
    pub fn domain_weight(&self) -> f64 {
        self.domain_weight
    }

    /// Sets μ (clamped to 0–1); it only matters once domain text was added.
    pub fn set_domain_weight(&mut self, mu: f64) {
        self.domain_weight = mu.clamp(0.0, 1.0);
    }

    fn intern(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.ids.get(word) {
            return id;
        }
        let id = self.words.len() as u32;
        self.ids.insert(word.to_string(), id);
        self.words.push(word.to_string());
        self.counts.push(0.0);
        self.domain.push(0.0);
        self.domain_left.push(0.0);
        id
    }

    /// Adds (or raises to) a general unigram count; the corpus size grows by the difference.
    pub fn add_unigram(&mut self, word: &str, count: f64) {
        if !is_model_word(word) {
            return;
        }
        let id = self.intern(word) as usize;
        if count > self.counts[id] {
            self.total += count - self.counts[id];
            self.counts[id] = count;
        }
    }

    /// Reads unigram counts, keeping at most `max_words` of the most frequent (the files
    /// are sorted by count, most frequent first). Returns the number of words read.
    pub fn load_unigrams(&mut self, path: &Path, max_words: usize) -> Result<usize, NgramError> {
        let mut n = 0;
        read_counts(path, |terms, count| {
            if let [w] = terms {
                if n < max_words && is_model_word(w) {
                    self.add_unigram(w, count);
                    n += 1;
                }
            }
        })?;
        Ok(n)
    }

    /// Reads bigram counts; pairs with a word outside the vocabulary are skipped.
    /// Returns the number kept.
    pub fn load_bigrams(&mut self, path: &Path) -> Result<usize, NgramError> {
        let mut n = 0;
        read_counts(path, |terms, count| {
            if let [a, b] = terms {
                if let (Some(&a), Some(&b)) = (self.ids.get(*a), self.ids.get(*b)) {
                    let e = self.bigrams.entry(pair(a, b)).or_insert(0.0);
                    if count > *e {
                        *e = count;
                    }
                    n += 1;
                }
            }
        })?;
        Ok(n)
    }

    /// Counts the words and bigrams of in-domain `text` (lowercased; punctuation ends a
    /// bigram chain) into the domain model, `weight` times. Its words join the vocabulary;
    /// a word the general model lacks gets the general count of the rarest word kept, so
    /// that it is never out of vocabulary.
    pub fn add_domain_text(&mut self, text: &str, weight: f64) {
        let floor = self
            .counts
            .iter()
            .copied()
            .filter(|c| *c > 0.0)
            .fold(f64::INFINITY, f64::min);
        let floor = if floor.is_finite() { floor } else { 1.0 };
        let lower = text.to_lowercase();
        for clause in lower.split(['.', ',', ';', ':', '\n']) {
            let mut prev: Option<u32> = None;
            for w in clause.split_whitespace() {
                if !is_model_word(w) {
                    prev = None;
                    continue;
                }
                let id = self.intern(w);
                if self.counts[id as usize] == 0.0 {
                    self.add_unigram(w, floor);
                }
                self.domain[id as usize] += weight;
                self.domain_total += weight;
                if let Some(p) = prev {
                    *self.domain_bigrams.entry(pair(p, id)).or_insert(0.0) += weight;
                    self.domain_left[p as usize] += weight;
                }
                prev = Some(id);
            }
        }
    }

    /// ln P(`w` | `prev`); `prev = None` at the start of a text or after an unknown word.
    pub fn log_prob(&self, prev: Option<u32>, w: u32) -> f64 {
        let wi = w as usize;
        let Some(&c) = self.counts.get(wi) else {
            return OOV_LOG_PROB;
        };
        let uni = c / self.total.max(1.0);
        let general = match prev {
            Some(v) => {
                let cv = self.counts.get(v as usize).copied().unwrap_or(0.0);
                let cvw = self.bigrams.get(&pair(v, w)).copied().unwrap_or(0.0);
                if cv > 0.0 {
                    (1.0 - LAMBDA) * (cvw / cv).min(1.0) + LAMBDA * uni
                } else {
                    uni
                }
            }
            None => uni,
        };
        let p = if self.domain_total > 0.0 {
            let duni = self.domain[wi] / self.domain_total;
            let dom = match prev {
                Some(v) if self.domain_left.get(v as usize).copied().unwrap_or(0.0) > 0.0 => {
                    let dvw = self.domain_bigrams.get(&pair(v, w)).copied().unwrap_or(0.0);
                    (1.0 - LAMBDA_DOMAIN) * dvw / self.domain_left[v as usize] + LAMBDA_DOMAIN * duni
                }
                _ => duni,
            };
            self.domain_weight * dom + (1.0 - self.domain_weight) * general
        } else {
            general
        };
        if p > 0.0 {
            p.ln().max(OOV_LOG_PROB)
        } else {
            OOV_LOG_PROB
        }
    }

    /// ln P(w) without context (the mixture's unigram), for ranking candidates.
    pub fn log_prob_unigram(&self, w: u32) -> f64 {
        self.log_prob(None, w)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn toy() -> NgramModel {
        let mut m = NgramModel::new();
        for (w, c) in [("the", 100.0), ("cat", 10.0), ("sat", 5.0), ("hat", 5.0)] {
            m.add_unigram(w, c);
        }
        m.add_unigram("Bad", 3.0);
        m.bigrams.insert(pair(m.id("the").unwrap(), m.id("cat").unwrap()), 30.0);
        m
    }

    #[test]
    fn bigram_context_raises_the_likely_word() {
        let m = toy();
        let (the, cat, hat) = (m.id("the").unwrap(), m.id("cat").unwrap(), m.id("hat").unwrap());
        assert!(m.log_prob(Some(the), cat) > m.log_prob(Some(the), hat));
        assert!(m.log_prob(Some(the), cat) > m.log_prob(None, cat));
        // Probabilities stay below one and above the OOV floor.
        assert!(m.log_prob(Some(the), cat) < 0.0);
        assert!(m.log_prob(Some(cat), hat) > OOV_LOG_PROB);
        assert_eq!(m.log_prob(None, 999), OOV_LOG_PROB);
        assert!(m.id("Bad").is_none(), "uppercase words are not kept");
    }

    #[test]
    fn domain_text_adds_words_and_context() {
        let mut m = toy();
        let (sat, hat) = (m.id("sat").unwrap(), m.id("hat").unwrap());
        let before = m.log_prob(Some(sat), hat);
        m.add_domain_text("the cat sat. sat hat, pottedplant here", 1.0);
        assert!(m.id("pottedplant").is_some());
        // "sat hat" is a domain bigram; "cat sat" too, across no punctuation.
        assert!(m.log_prob(Some(sat), hat) > before);
        let cat = m.id("cat").unwrap();
        assert!(m.log_prob(Some(cat), sat) > m.log_prob(Some(cat), hat));
    }

    #[test]
    fn reads_tab_and_space_separated_counts() {
        let dir = tempfile::tempdir().unwrap();
        let uni = dir.path().join("u.txt");
        let bi = dir.path().join("b.txt");
        std::fs::write(&uni, "the\t50\nof 40\nX-ray\t3\nzebra\t2\n").unwrap();
        std::fs::write(&bi, "of the\t30\nthe zebra 2\nthe unknown\t9\n").unwrap();
        let mut m = NgramModel::new();
        assert_eq!(m.load_unigrams(&uni, 2).unwrap(), 2);
        assert!(m.id("zebra").is_none(), "cut by max_words");
        m.add_unigram("zebra", 2.0);
        assert_eq!(m.load_bigrams(&bi).unwrap(), 2);
        std::fs::write(&uni, "the fifty\n").unwrap();
        let err = NgramModel::new().load_unigrams(&uni, 10).unwrap_err();
        assert!(err.to_string().contains("u.txt:1"), "{err}");
    }
}
