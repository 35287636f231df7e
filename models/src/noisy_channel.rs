//! `noisy_channel`: a channel-aware text corrector for captions sent over the bit-flipping
//! link of [`crate::channel`] (`correct model = "noisy_channel"`).
//!
//! # Provenance
//!
//! The noisy-channel model of spelling correction (Kernighan, Church & Gale 1990; Brill &
//! Moore 2000) with the channel taken from the link itself instead of learnt from typing
//! errors: the text travels as bytes whose bits flip independently with probability p, the
//! expected bit error rate of the modulation at the frame's SNR
//! ([`crate::channel::expected_ber`]), so a sent byte `s` arrives as `r` with probability
//! p^d (1 − p)^(8 − d), d = popcount(s ⊕ r). The receiver's UTF-8 decoding
//! ([`crate::channel::decode_text_lossy`]) then drops bytes that are not ASCII or are
//! control characters and turns whitespace controls into spaces; the model folds those
//! outcomes into a per-character deletion probability and a "space" outcome. The language
//! model is the bigram model of [`crate::ngram`] (wordsegment and SymSpell counts plus the
//! captioner's sentences, [`caption_domain_text`]).
//!
//! # Search
//!
//! The received text is a character lattice. A path explains it as sent words, each
//! followed by an optional punctuation mark (`.`, `,`, `:`, `;`) and a space; a sent space
//! may arrive as a space, as another character ("left:$the") or not at all (words run
//! together), so words may start anywhere. Candidates per start position come from a
//! depth-first walk of the vocabulary trie that aligns each sent letter with one received
//! character (a substitution costing −ln P(r | s) above the best explanation of `r`) or
//! with none (a deletion), pruned at a cost bound that grows as p grows. Each
//! space-delimited chunk may also stay as it is (an unknown word, ln P =
//! [`crate::ngram::OOV_LOG_PROB`]), so a path always exists. A Viterbi search keeps the
//! best [`NoisyChannelOptions::beam`] hypotheses per position, one per previous word (the
//! bigram state), and maximises ln P(channel) + ln P(language).
//!
//! # Layout
//!
//! - [`NoisyChannel`]: the model (vocabulary trie + language model) and
//!   [`NoisyChannel::correct`].
//! - [`caption_domain_text`]: the in-domain sentences (the offline captioner's patterns and
//!   the COCO class names).

use std::collections::HashMap;
use std::path::Path;

use crate::colors::{Brightness, ColorName};
use crate::detect::COCO_NAMES;
use crate::ngram::{self, NgramError, NgramModel, OOV_LOG_PROB};

/// Most general words read from the wordsegment unigrams (most frequent first).
pub const DEFAULT_MAX_WORDS: usize = 40_000;
/// Bit error rates are clamped to at least this (an ideal link still has a finite cost).
const MIN_BER: f64 = 1e-12;
/// ... and to at most this.
const MAX_BER: f64 = 0.3;
/// Received character classes: 0x20–0x7E, then one class for anything else.
const CLASSES: usize = 96;
const OTHER: usize = 95;
const SPACE: u8 = b' ';
/// Punctuation marks a word may carry, with the natural log of their prior.
const PUNCT: [(u8, f64); 4] = [(b'.', -3.0), (b',', -3.0), (b':', -4.0), (b';', -4.5)];
/// ln P(no punctuation after a word).
const NO_PUNCT: f64 = -0.2;
/// Most candidates kept per (start, end) span.
const PER_SPAN: usize = 6;
/// Most trie states visited from one start position.
const MAX_VISITS: usize = 2_500;
/// Longest word considered.
const MAX_WORD: usize = 24;

/// Settings of the corrector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoisyChannelOptions {
    /// Most wordsegment unigrams read (most frequent first).
    pub max_words: usize,
    /// Weight μ of the captioner's domain model in the language model mixture (0–1).
    pub domain_weight: f64,
    /// Hypotheses kept per lattice position.
    pub beam: usize,
    /// Upper bound of a candidate word's channel cost in nats (the bound is also at most
    /// 4.5 single-bit flips at the frame's bit error rate).
    pub max_cost: f64,
}

impl Default for NoisyChannelOptions {
    fn default() -> Self {
        Self {
            max_words: DEFAULT_MAX_WORDS,
            domain_weight: 0.5,
            beam: 8,
            max_cost: 16.0,
        }
    }
}

/// Errors from building the corrector.
#[derive(Debug, thiserror::Error)]
pub enum NoisyChannelError {
    /// A count file could not be read.
    #[error(transparent)]
    Ngram(#[from] NgramError),
}

fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// The class of a received character.
fn class_of(c: char) -> usize {
    if (' '..='~').contains(&c) {
        c as usize - 0x20
    } else {
        OTHER
    }
}

/// Per-character costs of the byte channel at one bit error rate.
#[derive(Debug, Clone)]
struct CharCosts {
    /// `sub[s][k]`: −ln P(class k | sent byte s) above the best explanation of class k.
    sub: Vec<[f64; CLASSES]>,
    /// `del[s]`: −ln P(sent byte s leaves no character).
    del: [f64; 128],
    /// Cost of one single-bit flip, ln((1 − p)/p).
    one_bit: f64,
}

impl CharCosts {
    fn new(p: f64) -> Self {
        let (lp, lq) = (p.ln(), (1.0 - p).ln());
        let mut emit = vec![[f64::NEG_INFINITY; CLASSES]; 128];
        let mut del = [f64::NEG_INFINITY; 128];
        for s in 0..128u32 {
            for e in 0..256u32 {
                let b = s ^ e;
                let d = f64::from(e.count_ones());
                let l = d * lp + (8.0 - d) * lq;
                let row = &mut emit[s as usize];
                match b {
                    0x21..=0x7E => row[(b - 0x20) as usize] = log_add(row[(b - 0x20) as usize], l),
                    0x20 | 0x09..=0x0D => row[0] = log_add(row[0], l),
                    _ => del[s as usize] = log_add(del[s as usize], l),
                }
            }
            // Two high bytes in a row can form one non-ASCII character (rare).
            emit[s as usize][OTHER] = 2.0 * lp;
            // A letter turned space next to a real space collapses into it: a deletion.
            if s != u32::from(SPACE) {
                del[s as usize] = log_add(del[s as usize], emit[s as usize][0]);
            }
        }
        let mut sub = vec![[0.0; CLASSES]; 128];
        for k in 0..CLASSES {
            let best = emit.iter().map(|row| row[k]).fold(f64::NEG_INFINITY, f64::max);
            for s in 0..128 {
                sub[s][k] = best - emit[s][k];
            }
        }
        Self {
            sub,
            del: del.map(|d| -d),
            one_bit: lq - lp,
        }
    }

    fn sub(&self, sent: u8, class: usize) -> f64 {
        self.sub[usize::from(sent & 0x7F)][class]
    }

    fn del(&self, sent: u8) -> f64 {
        self.del[usize::from(sent & 0x7F)]
    }
}

/// A byte trie of the vocabulary.
#[derive(Debug, Clone, Default)]
struct Trie {
    children: Vec<Vec<(u8, u32)>>,
    word: Vec<Option<u32>>,
}

impl Trie {
    fn build(model: &NgramModel) -> Self {
        let mut t = Trie {
            children: vec![Vec::new()],
            word: vec![None],
        };
        for (id, w) in model.words() {
            if w.len() > MAX_WORD {
                continue;
            }
            let mut node = 0usize;
            for &b in w.as_bytes() {
                node = match t.children[node].iter().find(|(c, _)| *c == b) {
                    Some(&(_, n)) => n as usize,
                    None => {
                        let n = t.word.len();
                        t.children.push(Vec::new());
                        t.word.push(None);
                        t.children[node].push((b, n as u32));
                        n
                    }
                };
            }
            t.word[node] = Some(id);
        }
        t
    }
}

/// What a lattice edge says was sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    /// A vocabulary word.
    Word(u32),
    /// The received characters `start..end` as they are.
    Verbatim(usize, usize),
}

/// A lattice edge from a start position.
#[derive(Debug, Clone, Copy)]
struct Cand {
    tok: Tok,
    punct: Option<u8>,
    /// Position after the word and its punctuation.
    end: usize,
    /// Channel cost plus the punctuation prior, in nats.
    cost: f64,
}

/// A Viterbi hypothesis at a position.
#[derive(Debug, Clone, Copy)]
struct Hyp {
    score: f64,
    prev: Option<u32>,
    /// Index into the arena of chosen edges (`usize::MAX` at the start).
    back: usize,
}

/// The channel-aware corrector (see the module documentation).
#[derive(Debug, Clone)]
pub struct NoisyChannel {
    model: NgramModel,
    trie: Trie,
    /// ln P(w) without context, per word id (ranks candidates).
    unigram: Vec<f64>,
    options: NoisyChannelOptions,
    /// Costs per clamped bit error rate, by its bit pattern.
    costs: HashMap<u64, CharCosts>,
}

impl NoisyChannel {
    /// Loads the wordsegment counts from `ngram_dir` ([`ngram::UNIGRAM_FILE`],
    /// [`ngram::BIGRAM_FILE`]), the SymSpell dictionaries from `symspell_dir` when given,
    /// and adds [`caption_domain_text`].
    pub fn load(
        ngram_dir: &Path,
        symspell_dir: Option<&Path>,
        options: NoisyChannelOptions,
    ) -> Result<Self, NoisyChannelError> {
        let mut model = NgramModel::new();
        model.load_unigrams(&ngram_dir.join(ngram::UNIGRAM_FILE), options.max_words)?;
        if let Some(dir) = symspell_dir {
            model.load_unigrams(&dir.join(crate::symspell::UNIGRAM_FILE), options.max_words)?;
        }
        model.load_bigrams(&ngram_dir.join(ngram::BIGRAM_FILE))?;
        if let Some(dir) = symspell_dir {
            model.load_bigrams(&dir.join(crate::symspell::BIGRAM_FILE))?;
        }
        model.add_domain_text(&caption_domain_text(), 1.0);
        Ok(Self::from_model(model, options))
    }

    /// A corrector over an already built language model.
    pub fn from_model(mut model: NgramModel, options: NoisyChannelOptions) -> Self {
        model.set_domain_weight(options.domain_weight);
        let trie = Trie::build(&model);
        let unigram = (0..model.len() as u32).map(|w| model.log_prob_unigram(w)).collect();
        Self {
            model,
            trie,
            unigram,
            options,
            costs: HashMap::new(),
        }
    }

    /// The language model.
    pub fn model(&self) -> &NgramModel {
        &self.model
    }

    /// Corrects `text` received over a link whose bits flip with probability `ber`
    /// (clamped to 10⁻¹²–0.3). Text that is all vocabulary words, with single spaces and
    /// punctuation only at word ends, comes back unchanged when `ber` is small. The result
    /// is lowercase where a word was corrected.
    pub fn correct(&mut self, text: &str, ber: f64) -> String {
        let p = if ber.is_finite() {
            ber.clamp(MIN_BER, MAX_BER)
        } else {
            MAX_BER
        };
        let costs = self
            .costs
            .entry(p.to_bits())
            .or_insert_with(|| CharCosts::new(p))
            .clone();
        let norm = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let chars: Vec<char> = norm.chars().collect();
        if chars.is_empty() {
            return String::new();
        }
        let classes: Vec<usize> = chars.iter().map(|&c| class_of(c)).collect();
        let bound = (4.5 * costs.one_bit).min(self.options.max_cost);
        let search = Search {
            nc: self,
            costs: &costs,
            classes: &classes,
            chars: &chars,
            bound,
        };
        search.run().unwrap_or(norm)
    }
}

/// One correction: the lattice over one received text.
struct Search<'a> {
    nc: &'a NoisyChannel,
    costs: &'a CharCosts,
    classes: &'a [usize],
    chars: &'a [char],
    bound: f64,
}

impl Search<'_> {
    fn run(&self) -> Option<String> {
        let n = self.classes.len();
        let mut beams: Vec<Vec<Hyp>> = vec![Vec::new(); n + 1];
        beams[0].push(Hyp {
            score: 0.0,
            prev: None,
            back: usize::MAX,
        });
        let mut arena: Vec<(usize, Cand)> = Vec::new();
        let mut best_final: Option<(f64, usize)> = None;
        let space_del = self.costs.del(SPACE);
        for i in 0..n {
            let hyps = prune(std::mem::take(&mut beams[i]), self.nc.options.beam);
            if hyps.is_empty() {
                continue;
            }
            let cands = self.candidates(i);
            for h in &hyps {
                for c in &cands {
                    let (lm, prev) = match c.tok {
                        Tok::Word(w) => (self.nc.model.log_prob(h.prev, w), Some(w)),
                        Tok::Verbatim(..) => (OOV_LOG_PROB, None),
                    };
                    let score = h.score + lm - c.cost;
                    if c.end == n {
                        if best_final.is_none_or(|(s, _)| score > s) {
                            arena.push((h.back, *c));
                            best_final = Some((score, arena.len() - 1));
                        }
                        continue;
                    }
                    arena.push((h.back, *c));
                    let back = arena.len() - 1;
                    let sep = self.costs.sub(SPACE, self.classes[c.end]);
                    if c.end + 1 < n {
                        beams[c.end + 1].push(Hyp {
                            score: score - sep,
                            prev,
                            back,
                        });
                    }
                    // The space was lost: the next word starts right here.
                    beams[c.end].push(Hyp {
                        score: score - space_del,
                        prev,
                        back,
                    });
                }
            }
        }
        let (_, mut at) = best_final?;
        let mut toks = Vec::new();
        while at != usize::MAX {
            let (parent, c) = arena[at];
            toks.push(self.render(&c));
            at = parent;
        }
        toks.reverse();
        Some(toks.join(" "))
    }

    fn render(&self, c: &Cand) -> String {
        let mut s = match c.tok {
            Tok::Word(w) => self.nc.model.word(w).to_string(),
            Tok::Verbatim(a, b) => self.chars[a..b].iter().collect(),
        };
        if let Some(p) = c.punct {
            s.push(char::from(p));
        }
        s
    }

    /// Every edge starting at `i`: trie words with their punctuation, and the verbatim
    /// chunk when `i` starts one.
    fn candidates(&self, i: usize) -> Vec<Cand> {
        let n = self.classes.len();
        let mut words: Vec<(u32, usize, f64)> = Vec::new();
        self.walk(i, &mut words);
        let mut out: Vec<Cand> = Vec::new();
        for (w, j, cost) in words {
            if j > i {
                out.push(Cand {
                    tok: Tok::Word(w),
                    punct: None,
                    end: j,
                    cost: cost - NO_PUNCT,
                });
            }
            for (p, prior) in PUNCT {
                if j < n {
                    out.push(Cand {
                        tok: Tok::Word(w),
                        punct: Some(p),
                        end: j + 1,
                        cost: cost + self.costs.sub(p, self.classes[j]) - prior,
                    });
                }
                if j > i {
                    out.push(Cand {
                        tok: Tok::Word(w),
                        punct: Some(p),
                        end: j,
                        cost: cost + self.costs.del(p) - prior,
                    });
                }
            }
        }
        out.retain(|c| c.cost <= self.bound + 6.0);
        let mut out = self.keep_best_per_span(out);
        if (i == 0 || self.classes[i - 1] == 0) && self.classes[i] != 0 {
            let end = (i..n).find(|&k| self.classes[k] == 0).unwrap_or(n);
            out.push(Cand {
                tok: Tok::Verbatim(i, end),
                punct: None,
                end,
                cost: 0.0,
            });
        }
        out
    }

    /// Keeps the [`PER_SPAN`] cheapest candidates (channel cost minus unigram log
    /// probability) per end position.
    fn keep_best_per_span(&self, mut cands: Vec<Cand>) -> Vec<Cand> {
        let rank = |c: &Cand| match c.tok {
            Tok::Word(w) => c.cost - self.nc.unigram.get(w as usize).copied().unwrap_or(OOV_LOG_PROB),
            Tok::Verbatim(..) => c.cost - OOV_LOG_PROB,
        };
        let mut ranked: Vec<(f64, Cand)> = cands.drain(..).map(|c| (rank(&c), c)).collect();
        ranked.sort_by(|a, b| a.1.end.cmp(&b.1.end).then(a.0.total_cmp(&b.0)));
        let mut out = Vec::with_capacity(ranked.len().min(64));
        let mut run = (usize::MAX, 0usize);
        for (_, c) in ranked {
            if c.end != run.0 {
                run = (c.end, 0);
            }
            if run.1 < PER_SPAN {
                out.push(c);
                run.1 += 1;
            }
        }
        out
    }

    /// Best-first walk of the trie from received position `i` (cheapest state first, at
    /// most [`MAX_VISITS`] states), collecting (word, end, cost) with cost within the bound.
    fn walk(&self, i: usize, found: &mut Vec<(u32, usize, f64)>) {
        let n = self.classes.len();
        let trie = &self.nc.trie;
        let mut heap = std::collections::BinaryHeap::new();
        heap.push(State {
            cost: 0.0,
            node: 0,
            j: i,
            dels: 0,
        });
        // Letters are lost about as often as one bit flips (the top bit makes an invalid
        // byte); two losses in a word only matter on very noisy links.
        let max_dels = if self.costs.one_bit < 3.0 { 2 } else { 1 };
        let mut visits = 0usize;
        while let Some(State { cost, node, j, dels }) = heap.pop() {
            visits += 1;
            if visits > MAX_VISITS {
                break;
            }
            if let Some(w) = trie.word[node as usize] {
                found.push((w, j, cost));
            }
            for &(b, child) in &trie.children[node as usize] {
                if j < n {
                    let c = cost + self.costs.sub(b, self.classes[j]);
                    if c <= self.bound {
                        heap.push(State {
                            cost: c,
                            node: child,
                            j: j + 1,
                            dels,
                        });
                    }
                }
                let c = cost + self.costs.del(b);
                if dels < max_dels && c <= self.bound {
                    heap.push(State {
                        cost: c,
                        node: child,
                        j,
                        dels: dels + 1,
                    });
                }
            }
        }
    }
}

/// A state of the trie walk, ordered so that the cheapest pops first.
#[derive(Debug, Clone, Copy)]
struct State {
    cost: f64,
    node: u32,
    j: usize,
    dels: u8,
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for State {}

impl PartialOrd for State {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for State {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .cost
            .total_cmp(&self.cost)
            .then(other.node.cmp(&self.node))
            .then(other.j.cmp(&self.j))
    }
}

/// The best `beam` hypotheses, at most one per previous word.
fn prune(mut hyps: Vec<Hyp>, beam: usize) -> Vec<Hyp> {
    hyps.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out: Vec<Hyp> = Vec::with_capacity(beam);
    for h in hyps {
        if out.len() >= beam.max(1) {
            break;
        }
        if !out.iter().any(|o| o.prev == h.prev) {
            out.push(h);
        }
    }
    out
}

/// Tile places the offline captioner names (`attributes::TilePosition::words`).
const POSITIONS: [&str; 14] = [
    "the whole image",
    "top left",
    "top right",
    "bottom left",
    "bottom right",
    "top",
    "bottom",
    "left",
    "right",
    "center",
    "top center",
    "bottom center",
    "middle left",
    "middle right",
];
/// How much of a tile the object covers (`attributes`).
const AMOUNTS: [&str; 6] = ["a little", "a quarter", "a third", "half", "most", "all"];
/// Where the object is in a tile (`attributes`).
const PLACES: [&str; 9] = [
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the middle",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
];

/// In-domain sentences for the language model: the offline captioner's sentence patterns
/// (`attributes`: tile places, how much of a tile the object covers and where, colours,
/// brightness, background layout) over its whole vocabulary, and the 80 COCO class names
/// in the phrases a detector-aware caption uses. Deterministic.
pub fn caption_domain_text() -> String {
    let colors: Vec<&str> = ColorName::ALL.iter().map(|c| c.word()).collect();
    let bright: Vec<&str> = Brightness::ALL.iter().map(|b| b.words()).collect();
    let mut s = String::new();
    let mut k = 0usize;
    let mut next = |m: usize| {
        k = k
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (k >> 33) % m
    };
    let mut positions: Vec<String> = POSITIONS.iter().map(|p| p.to_string()).collect();
    for r in 1..=6 {
        for c in 1..=6 {
            positions.push(format!("row {r} column {c}"));
        }
    }
    for (i, amount) in AMOUNTS.iter().enumerate() {
        for place in PLACES {
            for (j, c1) in colors.iter().enumerate() {
                let pos = &positions[next(positions.len())];
                let c2 = colors[(i + j + 1) % colors.len()];
                let colours = if j % 2 == 0 {
                    c1.to_string()
                } else {
                    format!("{c1} and {c2}")
                };
                s.push_str(&format!(
                    "{pos}: the main object covers {amount} of this part, {place}; it is {colours}. "
                ));
                s.push_str(&format!(
                    "{pos}: the main object covers {amount} of this part; it is {colours}. "
                ));
            }
        }
    }
    for (i, c1) in colors.iter().enumerate() {
        for (j, c2) in colors.iter().enumerate() {
            let b = bright[(i + j) % bright.len()];
            let pos = &positions[next(positions.len())];
            s.push_str(&format!(
                "{pos}: there is no main object here. the background is {c1} and {b}. "
            ));
            s.push_str(&format!(
                "the background is {b}, {c1} at the top and {c2} at the bottom. "
            ));
            s.push_str(&format!(
                "the background is {b}, {c1} on the left and {c2} on the right. "
            ));
            s.push_str(&format!("the background is {b}, mostly {c1} with some {c2}. "));
        }
    }
    s.push_str("the background is hidden. this part is empty. ");
    for (i, name) in COCO_NAMES.iter().enumerate() {
        let (amount, place) = (AMOUNTS[i % AMOUNTS.len()], PLACES[i % PLACES.len()]);
        let (c1, b) = (colors[i % colors.len()], bright[i % bright.len()]);
        let pos = &positions[i % POSITIONS.len()];
        s.push_str(&format!(
            "{pos}: the {name} covers {amount} of this part, {place}; it is {c1}. "
        ));
        s.push_str(&format!("the main object is a {name}. there is a {name} {place}. "));
        s.push_str(&format!(
            "a {name} and a {} in the {b} background. ",
            COCO_NAMES[(i * 7 + 3) % 80]
        ));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn small() -> NoisyChannel {
        let mut m = NgramModel::new();
        for (w, c) in [
            ("the", 1000.0),
            ("cat", 50.0),
            ("sat", 40.0),
            ("on", 500.0),
            ("mat", 20.0),
            ("hat", 20.0),
        ] {
            m.add_unigram(w, c);
        }
        m.add_domain_text(&caption_domain_text(), 1.0);
        NoisyChannel::from_model(m, NoisyChannelOptions::default())
    }

    #[test]
    fn char_costs_follow_bit_distance() {
        let c = CharCosts::new(0.01);
        let k = |ch: char| class_of(ch);
        assert!(c.sub(b'a', k('a')).abs() < 1e-9);
        // One flipped bit costs about ln(0.99/0.01); two flips about twice that.
        let one = c.sub(b'a', k('c')); // 0x61 vs 0x63
        let two = c.sub(b'a', k('g')); // 0x61 vs 0x67
        assert!((one - (0.99f64 / 0.01).ln()).abs() < 0.1, "{one}");
        assert!((two - 2.0 * one).abs() < 0.2, "{two}");
        // A space most easily becomes NUL (dropped): deletion costs about one flip.
        assert!((c.del(b' ') - (1.0f64 / 0.01).ln()).abs() < 0.8, "{}", c.del(b' '));
    }

    #[test]
    fn clean_text_is_kept_and_corrupted_words_are_repaired() {
        let mut nc = small();
        let sent = "top left: the main object covers a third of this part, on the right; it is white and gray.";
        assert_eq!(nc.correct(sent, 1e-30), sent);
        // Unknown words and numbers stay as they are on a clean link.
        assert_eq!(nc.correct("the zqxj 42 cat", 1e-30), "the zqxj 42 cat");
        // 'h'^0x40 = '(' ; space^0x04 = '$' ; 'e'^0x01 = 'd'
        let received = "top left: t(e main$object covers a third of this part, on thd right; it is white and gray.";
        assert_eq!(nc.correct(received, 0.02), sent);
        // A lost space between words.
        let received = "top left: the main objectcovers a third of this part, on the right; it is white and gray.";
        assert_eq!(nc.correct(received, 0.02), sent);
    }

    #[test]
    fn domain_text_covers_the_captioner_and_coco() {
        let text = caption_domain_text();
        for w in [
            "covers", "quarter", "purple", "fairly", "hidden", "teddy", "hydrant", "column",
        ] {
            assert!(
                text.split_whitespace()
                    .any(|t| t.trim_matches(|c: char| !c.is_alphanumeric()) == w),
                "{w}"
            );
        }
    }
}
