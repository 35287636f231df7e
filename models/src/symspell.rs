//! `symspell`: the offline-tier spelling corrector (DESIGN §5), standing in for the
//! paper's BART corrector.
//!
//! A port of SymSpell (Wolf Garbe, symmetric-delete spelling correction, v6) as it is
//! in `symspellpy` 6.10.1: single-word `lookup` (verbosity "top") and `lookup_compound`
//! (word splits and merges scored with the bigram dictionary), with the maximum edit
//! distance 2 and prefix length 7, Damerau–Levenshtein (optimal string alignment)
//! distance. The dictionaries are the ones shipped in that wheel:
//! `frequency_dictionary_en_82_765.txt` (`term count`) and
//! `frequency_bigramdictionary_en_243_342.txt` (`term1 term2 count`); the caller gives
//! their paths (the set-up script places them in `assets/symspell/`).
//!
//! # Why not the `symspell` crate
//!
//! `symspell` 0.5.2 was read and not used: it panics on I/O errors and non-UTF-8 lines
//! (`expect`/`unwrap` in `load_dictionary`), its `lookup_compound` computes
//! `10i64.pow(len)` without saturation (a panic in debug builds for a 19-letter run,
//! which a corrupted space between words produces), compares the merge score with an
//! integer division (`best1.count / N * best2.count`, always 0, so merges win too
//! often), and uses the wrong term (`term_list1[1]`) for the unknown-word fallback.
//!
//! # Layout
//!
//! - [`SymSpell`]: the dictionary (words, deletes, bigrams) and the two lookups.
//! - [`Corrector`]: loads the two files and corrects free text while keeping numbers
//!   and punctuation ([`Corrector::correct`]).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// File name of the unigram dictionary in `symspellpy` 6.10.1.
pub const UNIGRAM_FILE: &str = "frequency_dictionary_en_82_765.txt";
/// File name of the bigram dictionary in `symspellpy` 6.10.1.
pub const BIGRAM_FILE: &str = "frequency_bigramdictionary_en_243_342.txt";
/// Maximum edit distance used by [`Corrector`].
pub const MAX_EDIT_DISTANCE: usize = 2;
/// Prefix length used by [`Corrector`].
pub const PREFIX_LENGTH: usize = 7;
/// Number of words of the corpus the frequency dictionary came from (SymSpell's `N`),
/// used to turn counts into probabilities.
pub const CORPUS_WORD_COUNT: f64 = 1_024_908_267_229.0;

/// Errors from loading dictionaries.
#[derive(Debug, thiserror::Error)]
pub enum SymSpellError {
    /// A dictionary file could not be read.
    #[error("cannot read SymSpell dictionary {path}: {source} (run the set-up script to place the symspellpy dictionaries in assets/symspell/)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line did not have the expected `term count` / `term1 term2 count` form.
    #[error("{path}:{line}: expected {expected}, found {found:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What the line should hold.
        expected: &'static str,
        /// The line as found.
        found: String,
    },
}

/// An identity hasher for keys that are already 64-bit hashes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// FNV-1a over the characters, finished with a SplitMix64 step (stable, fast).
fn hash_chars(chars: &[char]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in chars {
        h ^= u64::from(u32::from(c));
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= chars.len() as u64;
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Optimal-string-alignment (restricted Damerau–Levenshtein) distance, or `None` when it
/// exceeds `max`.
pub fn osa_distance(a: &[char], b: &[char], max: usize) -> Option<usize> {
    let (a, b) = if a.len() > b.len() { (b, a) } else { (a, b) };
    if b.len() - a.len() > max {
        return None;
    }
    if a.is_empty() {
        return Some(b.len());
    }
    let n = b.len();
    let mut prev2 = vec![0usize; n + 1];
    let mut prev: Vec<usize> = (0..=n).collect();
    let mut cur = vec![0usize; n + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        let mut row_min = cur[0];
        for j in 1..=n {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(prev2[j - 2] + 1);
            }
            cur[j] = v;
            row_min = row_min.min(v);
        }
        if row_min > max {
            return None;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    let d = prev[n];
    (d <= max).then_some(d)
}

/// A suggested spelling.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    /// The suggested term (may hold spaces after a split).
    pub term: String,
    /// Edit distance from the input.
    pub distance: usize,
    /// Frequency count (for splits: a bigram count or an estimate).
    pub count: f64,
}

impl Suggestion {
    /// SymSpell's item for an unknown term: distance max+1, count 10 / 10^len (integer
    /// division, as in symspellpy: 1 for one letter, else 0).
    fn unknown(term: &str, max_edit_distance: usize) -> Self {
        let len = term.chars().count();
        Suggestion {
            term: term.to_string(),
            distance: max_edit_distance + 1,
            count: if len <= 1 { 1.0 } else { 0.0 },
        }
    }
}

/// A SymSpell dictionary: words with counts, the symmetric deletes of their prefixes,
/// and bigram counts.
#[derive(Debug, Clone)]
pub struct SymSpell {
    max_edit_distance: usize,
    prefix_length: usize,
    /// Word → id (index into `word_chars` / `word_counts`).
    words: HashMap<String, u32>,
    /// Word list (chars) indexed by the ids stored in `deletes`.
    word_chars: Vec<Vec<char>>,
    word_counts: Vec<u64>,
    /// Hash of a delete → ids of the words it was made from (hash collisions only add
    /// candidates, which are then checked by the real distance).
    deletes: IdMap<Vec<u32>>,
    max_length: usize,
    bigrams: HashMap<String, u64>,
    bigram_min_count: u64,
}

impl SymSpell {
    /// An empty dictionary with the given maximum edit distance and prefix length
    /// (SymSpell's defaults are 2 and 7). The prefix length is raised to
    /// `max_edit_distance + 1` when smaller.
    pub fn new(max_edit_distance: usize, prefix_length: usize) -> Self {
        Self {
            max_edit_distance,
            prefix_length: prefix_length.max(max_edit_distance + 1),
            words: HashMap::new(),
            word_chars: Vec::new(),
            word_counts: Vec::new(),
            deletes: IdMap::default(),
            max_length: 0,
            bigrams: HashMap::new(),
            bigram_min_count: u64::MAX,
        }
    }

    /// Number of distinct words.
    pub fn word_count(&self) -> usize {
        self.word_chars.len()
    }

    /// Number of bigrams.
    pub fn bigram_count(&self) -> usize {
        self.bigrams.len()
    }

    /// Adds `count` occurrences of `word` (lowercase expected). A new word gets its
    /// deletes generated; a known one only has its count increased (saturating).
    pub fn add_word(&mut self, word: &str, count: u64) {
        if let Some(&id) = self.words.get(word) {
            if let Some(c) = self.word_counts.get_mut(id as usize) {
                *c = c.saturating_add(count);
            }
            return;
        }
        let id = self.word_chars.len() as u32;
        let chars: Vec<char> = word.chars().collect();
        self.max_length = self.max_length.max(chars.len());
        let mut hashes = Vec::with_capacity(32);
        if chars.len() <= self.max_edit_distance {
            hashes.push(hash_chars(&[]));
        }
        let prefix = &chars[..chars.len().min(self.prefix_length)];
        hashes.push(hash_chars(prefix));
        let mut buf = prefix.to_vec();
        self.collect_deletes(&mut buf, 0, &mut hashes);
        hashes.sort_unstable();
        hashes.dedup();
        for h in hashes {
            self.deletes.entry(h).or_default().push(id);
        }
        self.words.insert(word.to_string(), id);
        self.word_chars.push(chars);
        self.word_counts.push(count);
    }

    /// Hashes of every deletion of `word` up to the maximum edit distance.
    fn collect_deletes(&self, word: &mut Vec<char>, depth: usize, out: &mut Vec<u64>) {
        if word.len() <= 1 {
            // SymSpell stops at one character; the empty delete is added for short words.
            return;
        }
        let depth = depth + 1;
        for i in 0..word.len() {
            let c = word.remove(i);
            out.push(hash_chars(word));
            if depth < self.max_edit_distance {
                self.collect_deletes(word, depth, out);
            }
            word.insert(i, c);
        }
    }

    /// Adds a bigram (`"term1 term2"`) with its count.
    pub fn add_bigram(&mut self, bigram: &str, count: u64) {
        self.bigrams.insert(bigram.to_string(), count);
        self.bigram_min_count = self.bigram_min_count.min(count);
    }

    fn read_lines(
        path: &Path,
        mut f: impl FnMut(usize, &str) -> Result<(), SymSpellError>,
    ) -> Result<(), SymSpellError> {
        let io = |source| SymSpellError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut line_no = 0;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
            if n == 0 {
                return Ok(());
            }
            line_no += 1;
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim();
            if !line.is_empty() {
                f(line_no, line)?;
            }
        }
    }

    /// Loads a `term count` file (space separated); returns the number of entries read.
    pub fn load_unigrams(&mut self, path: &Path) -> Result<usize, SymSpellError> {
        let mut n = 0;
        Self::read_lines(path, |line_no, line| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next().and_then(|c| c.parse::<u64>().ok())) {
                (Some(term), Some(count)) => {
                    self.add_word(&term.to_lowercase(), count);
                    n += 1;
                    Ok(())
                }
                _ => Err(SymSpellError::Parse {
                    path: path.to_path_buf(),
                    line: line_no,
                    expected: "`term count`",
                    found: line.to_string(),
                }),
            }
        })?;
        Ok(n)
    }

    /// Loads a `term1 term2 count` file (space separated); returns the number read.
    pub fn load_bigrams(&mut self, path: &Path) -> Result<usize, SymSpellError> {
        let mut n = 0;
        Self::read_lines(path, |line_no, line| {
            let mut parts = line.split_whitespace();
            match (
                parts.next(),
                parts.next(),
                parts.next().and_then(|c| c.parse::<u64>().ok()),
            ) {
                (Some(a), Some(b), Some(count)) => {
                    self.add_bigram(&format!("{} {}", a.to_lowercase(), b.to_lowercase()), count);
                    n += 1;
                    Ok(())
                }
                _ => Err(SymSpellError::Parse {
                    path: path.to_path_buf(),
                    line: line_no,
                    expected: "`term1 term2 count`",
                    found: line.to_string(),
                }),
            }
        })?;
        Ok(n)
    }

    /// The best correction of one word (SymSpell verbosity "top": smallest edit
    /// distance, then highest count), or `None` when no dictionary word is within
    /// `max_edit_distance` (capped at the dictionary's maximum).
    pub fn lookup(&self, phrase: &str, max_edit_distance: usize) -> Option<Suggestion> {
        let max_ed = max_edit_distance.min(self.max_edit_distance);
        let chars: Vec<char> = phrase.chars().collect();
        let plen = chars.len();
        if plen > self.max_length + max_ed {
            return None;
        }
        if let Some(&id) = self.words.get(phrase) {
            return Some(Suggestion {
                term: phrase.to_string(),
                distance: 0,
                count: self.word_counts[id as usize] as f64,
            });
        }
        if max_ed == 0 {
            return None;
        }
        let mut best: Option<(u32, usize)> = None;
        let mut max_ed2 = max_ed;
        let mut considered_deletes = IdSet::default();
        let mut considered: HashSet<u32> = HashSet::new();
        let pprefix = plen.min(self.prefix_length);
        let mut candidates: Vec<Vec<char>> = vec![chars[..pprefix].to_vec()];
        let mut pointer = 0;
        while pointer < candidates.len() {
            let cand = std::mem::take(&mut candidates[pointer]);
            pointer += 1;
            let clen = cand.len();
            let len_diff = pprefix - clen;
            if len_diff > max_ed2 {
                break;
            }
            if let Some(ids) = self.deletes.get(&hash_chars(&cand)) {
                for &id in ids {
                    let sugg = &self.word_chars[id as usize];
                    let slen = sugg.len();
                    if slen.abs_diff(plen) > max_ed2
                        || slen < clen
                        || (slen == clen && sugg.as_slice() != cand.as_slice())
                    {
                        continue;
                    }
                    let sprefix = slen.min(self.prefix_length);
                    if sprefix > pprefix && sprefix - clen > max_ed2 {
                        continue;
                    }
                    if !considered.insert(id) {
                        continue;
                    }
                    let Some(distance) = osa_distance(&chars, sugg, max_ed2) else {
                        continue;
                    };
                    let count = self.word_counts[id as usize];
                    match best {
                        Some((bid, _)) => {
                            if distance < max_ed2 || count > self.word_counts[bid as usize] {
                                max_ed2 = distance;
                                best = Some((id, distance));
                            }
                        }
                        None => {
                            max_ed2 = distance;
                            best = Some((id, distance));
                        }
                    }
                }
            }
            if len_diff < max_ed && clen <= self.prefix_length {
                if len_diff >= max_ed2 {
                    continue;
                }
                for i in 0..clen {
                    let mut d = cand.clone();
                    d.remove(i);
                    if considered_deletes.insert(hash_chars(&d)) {
                        candidates.push(d);
                    }
                }
            }
        }
        best.map(|(id, distance)| Suggestion {
            term: self.word_chars[id as usize].iter().collect(),
            distance,
            count: self.word_counts[id as usize] as f64,
        })
    }

    /// Compound correction of a run of words (SymSpell `lookup_compound`): each term is
    /// corrected, merged with the previous one, or split in two, whichever the edit
    /// distances and the unigram/bigram counts favour. `terms` should be lowercase.
    /// Returns the corrected words joined by single spaces.
    pub fn lookup_compound(&self, terms: &[&str], max_edit_distance: usize) -> Suggestion {
        let max_ed = max_edit_distance.min(self.max_edit_distance);
        let n = CORPUS_WORD_COUNT;
        let mut parts: Vec<Suggestion> = Vec::with_capacity(terms.len());
        let mut last_combi = false;
        for (i, term) in terms.iter().enumerate() {
            let suggestion = self.lookup(term, max_ed);
            if i > 0 && !last_combi {
                let combined = format!("{}{}", terms[i - 1], term);
                if let (Some(mut combi), Some(best1)) = (self.lookup(&combined, max_ed), parts.last()) {
                    let best2 = suggestion.clone().unwrap_or_else(|| Suggestion::unknown(term, max_ed));
                    let distance1 = best1.distance + best2.distance;
                    if combi.distance + 1 < distance1
                        || (combi.distance + 1 == distance1 && combi.count > best1.count / n * best2.count)
                    {
                        combi.distance += 1;
                        if let Some(last) = parts.last_mut() {
                            *last = combi;
                        }
                        last_combi = true;
                        continue;
                    }
                }
            }
            last_combi = false;
            let term_len = term.chars().count();
            if let Some(s) = suggestion.as_ref().filter(|s| s.distance == 0 || term_len == 1) {
                parts.push(s.clone());
                continue;
            }
            let mut split_best = suggestion.clone();
            if term_len > 1 {
                let chars: Vec<char> = term.chars().collect();
                for j in 1..term_len {
                    let part1: String = chars[..j].iter().collect();
                    let part2: String = chars[j..].iter().collect();
                    let Some(s1) = self.lookup(&part1, max_ed) else {
                        continue;
                    };
                    let Some(s2) = self.lookup(&part2, max_ed) else {
                        continue;
                    };
                    let tmp_term = format!("{} {}", s1.term, s2.term);
                    let tmp_chars: Vec<char> = tmp_term.chars().collect();
                    let tmp_distance = osa_distance(&chars, &tmp_chars, max_ed).unwrap_or(max_ed + 1);
                    if let Some(b) = &split_best {
                        if tmp_distance > b.distance {
                            continue;
                        }
                        if tmp_distance < b.distance {
                            split_best = None;
                        }
                    }
                    let joined_equals_term = format!("{}{}", s1.term, s2.term) == *term;
                    let tmp_count = match self.bigrams.get(&tmp_term) {
                        Some(&bc) => {
                            let bc = bc as f64;
                            match &suggestion {
                                Some(best_si) => {
                                    if joined_equals_term {
                                        bc.max(best_si.count + 2.0)
                                    } else if best_si.term == s1.term || best_si.term == s2.term {
                                        bc.max(best_si.count + 1.0)
                                    } else {
                                        bc
                                    }
                                }
                                None if joined_equals_term => bc.max(s1.count.max(s2.count) + 2.0),
                                None => bc,
                            }
                        }
                        None => (self.bigram_min_count as f64).min((s1.count / n * s2.count).trunc()),
                    };
                    let split = Suggestion {
                        term: tmp_term,
                        distance: tmp_distance,
                        count: tmp_count,
                    };
                    if split_best.as_ref().is_none_or(|b| split.count > b.count) {
                        split_best = Some(split);
                    }
                }
            }
            parts.push(split_best.unwrap_or_else(|| Suggestion::unknown(term, max_ed)));
        }
        let mut count = n;
        let mut joined = String::new();
        for p in &parts {
            if !joined.is_empty() {
                joined.push(' ');
            }
            joined.push_str(&p.term);
            count *= p.count / n;
        }
        let input: Vec<char> = terms.join(" ").chars().collect();
        let out: Vec<char> = joined.chars().collect();
        let distance = osa_distance(&input, &out, usize::MAX).unwrap_or(usize::MAX);
        Suggestion {
            term: joined,
            distance,
            count,
        }
    }
}

/// One whitespace token split into leading punctuation, core and trailing punctuation.
struct Token<'a> {
    lead: &'a str,
    core: &'a str,
    trail: &'a str,
}

fn split_token(tok: &str) -> Token<'_> {
    let is_punct = |c: char| !c.is_alphanumeric();
    let core_start = tok.find(|c: char| !is_punct(c)).unwrap_or(tok.len());
    let core_end = tok
        .rfind(|c: char| !is_punct(c))
        .map(|i| i + tok[i..].chars().next().map_or(1, char::len_utf8))
        .unwrap_or(core_start)
        .max(core_start);
    Token {
        lead: &tok[..core_start],
        core: &tok[core_start..core_end],
        trail: &tok[core_end..],
    }
}

/// Count given to each word of the COCO class names ([`crate::detect::COCO_NAMES`]) and to
/// each two-word name as a bigram, so that the detector's class names in captions ("hair
/// drier", "frisbee", "skis") are known words that correction keeps.
pub const COCO_WORD_COUNT: u64 = 1_000_000;

/// Adds the COCO class names to the dictionary (see [`COCO_WORD_COUNT`]).
pub fn add_coco_names(symspell: &mut SymSpell) {
    for name in crate::detect::COCO_NAMES {
        for word in name.split(' ') {
            symspell.add_word(word, COCO_WORD_COUNT);
        }
        if name.contains(' ') && !symspell.bigrams.contains_key(name) {
            symspell.add_bigram(name, COCO_WORD_COUNT);
        }
    }
}

/// The offline-tier text corrector: SymSpell with the `symspellpy` dictionaries and the
/// COCO class names.
#[derive(Debug, Clone)]
pub struct Corrector {
    symspell: SymSpell,
}

impl Corrector {
    /// Loads the unigram (`term count`) and bigram (`term1 term2 count`) dictionaries
    /// with maximum edit distance [`MAX_EDIT_DISTANCE`] and prefix length
    /// [`PREFIX_LENGTH`].
    pub fn load(unigram_path: impl AsRef<Path>, bigram_path: impl AsRef<Path>) -> Result<Self, SymSpellError> {
        let mut symspell = SymSpell::new(MAX_EDIT_DISTANCE, PREFIX_LENGTH);
        symspell.load_unigrams(unigram_path.as_ref())?;
        symspell.load_bigrams(bigram_path.as_ref())?;
        add_coco_names(&mut symspell);
        Ok(Self { symspell })
    }

    /// Loads [`UNIGRAM_FILE`] and [`BIGRAM_FILE`] from `dir` (e.g. `assets/symspell`).
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self, SymSpellError> {
        let dir = dir.as_ref();
        Self::load(dir.join(UNIGRAM_FILE), dir.join(BIGRAM_FILE))
    }

    /// A corrector over an already built dictionary.
    pub fn from_symspell(symspell: SymSpell) -> Self {
        Self { symspell }
    }

    /// The underlying dictionary.
    pub fn symspell(&self) -> &SymSpell {
        &self.symspell
    }

    /// Corrects free text. The text is lowercased and split on whitespace; punctuation at
    /// either end of a token is kept and also ends a run of words (so sentences and
    /// clauses are corrected separately), tokens containing a digit are kept verbatim,
    /// and each run of words is corrected with [`SymSpell::lookup_compound`] (which may
    /// merge or split words). Punctuation inside a word (a corrupted letter) is left in
    /// the word for the corrector to replace. Tokens are re-joined with single spaces.
    pub fn correct(&self, text: &str) -> String {
        let lower = text.to_lowercase();
        let mut out: Vec<String> = Vec::new();
        let mut run: Vec<&str> = Vec::new();
        let mut run_lead = "";
        let flush = |run: &mut Vec<&str>, lead: &str, trail: &str, out: &mut Vec<String>| {
            if run.is_empty() {
                if !lead.is_empty() || !trail.is_empty() {
                    out.push(format!("{lead}{trail}"));
                }
                return;
            }
            let corrected = self.symspell.lookup_compound(run, MAX_EDIT_DISTANCE);
            out.push(format!("{lead}{}{trail}", corrected.term));
            run.clear();
        };
        for tok in lower.split_whitespace() {
            let t = split_token(tok);
            if t.core.is_empty() {
                // Pure punctuation: ends the run and stays as it is.
                flush(&mut run, run_lead, "", &mut out);
                run_lead = "";
                out.push(t.lead.to_string());
                continue;
            }
            if t.core.chars().any(|c| c.is_ascii_digit()) {
                flush(&mut run, run_lead, "", &mut out);
                run_lead = "";
                out.push(tok.to_string());
                continue;
            }
            if !t.lead.is_empty() {
                flush(&mut run, run_lead, "", &mut out);
                run_lead = t.lead;
            }
            run.push(t.core);
            if !t.trail.is_empty() {
                flush(&mut run, run_lead, t.trail, &mut out);
                run_lead = "";
            }
        }
        flush(&mut run, run_lead, "", &mut out);
        out.join(" ")
    }
}

/// The `symspell/` directory of the assets: `$DATAFLOW_ASSETS/symspell` when the
/// variable is set, else `assets/symspell` at the workspace root.
pub fn default_dictionary_dir() -> PathBuf {
    match std::env::var_os("DATAFLOW_ASSETS") {
        Some(dir) => PathBuf::from(dir).join("symspell"),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/symspell")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::time::Instant;

    fn small() -> SymSpell {
        let mut s = SymSpell::new(2, 7);
        for (w, c) in [
            ("the", 100),
            ("background", 20),
            ("blue", 30),
            ("bright", 25),
            ("is", 90),
            ("and", 95),
            ("green", 28),
            ("a", 99),
            ("where", 40),
            ("love", 35),
        ] {
            s.add_word(w, c);
        }
        s.add_bigram("where is", 10);
        s
    }

    #[test]
    fn osa_distance_known_values() {
        let d = |a: &str, b: &str| osa_distance(&a.chars().collect::<Vec<_>>(), &b.chars().collect::<Vec<_>>(), 10);
        assert_eq!(d("kitten", "sitting"), Some(3));
        assert_eq!(d("ab", "ba"), Some(1));
        assert_eq!(d("ca", "abc"), Some(3)); // OSA, not unrestricted Damerau
        assert_eq!(d("", "abc"), Some(3));
        assert_eq!(d("same", "same"), Some(0));
        let a: Vec<char> = "abcdef".chars().collect();
        let b: Vec<char> = "uvwxyz".chars().collect();
        assert_eq!(osa_distance(&a, &b, 2), None);
    }

    #[test]
    fn lookup_on_a_small_dictionary() {
        let s = small();
        let l = |w: &str| s.lookup(w, 2).map(|x| (x.term, x.distance));
        assert_eq!(l("blue"), Some(("blue".into(), 0)));
        assert_eq!(l("bleu"), Some(("blue".into(), 1)));
        assert_eq!(l("backgrund"), Some(("background".into(), 1)));
        assert_eq!(l("bakgrund"), Some(("background".into(), 2)));
        assert_eq!(l("brgt"), Some(("bright".into(), 2)));
        assert_eq!(l("xyzzyq"), None);
        let c = s.lookup_compound(&["whereis", "th", "elove"], 2);
        assert_eq!(c.term, "where is the love");
    }

    /// The real dictionaries, loaded once for all tests that need them.
    fn corrector() -> &'static Corrector {
        static C: OnceLock<Corrector> = OnceLock::new();
        C.get_or_init(|| {
            let dir = default_dictionary_dir();
            let start = Instant::now();
            let c = Corrector::load_dir(&dir)
                .unwrap_or_else(|e| panic!("{e}: place the symspellpy 6.10.1 dictionaries in {}", dir.display()));
            eprintln!(
                "loaded {} words and {} bigrams in {:.2?}",
                c.symspell().word_count(),
                c.symspell().bigram_count(),
                start.elapsed()
            );
            c
        })
    }

    #[test]
    fn dictionaries_load_completely() {
        let c = corrector();
        // The file name says 82,765 but it holds 82,834 distinct terms; the COCO class
        // names add 3 words it lacks and their two-word names the bigrams it lacks.
        assert_eq!(c.symspell().word_count(), 82_834 + 3);
        let bigrams = c.symspell().bigram_count();
        assert!((242_342..242_342 + 20).contains(&bigrams), "{bigrams}");
    }

    #[test]
    fn corrects_captioner_sentences() {
        let c = corrector();
        let cases = [
            (
                "top lfet: the main objct covers a thrid of this part, on the rigt; it is whte and grey. the backgroud is bleu and brigt.",
                "top left: the main object covers a third of this part, on the right; it is white and grey. the background is blue and bright.",
            ),
            (
                "bottom rihgt: there is no main obect here. the backgrond is dim, gren at the topp and brwn at the botom.",
                "bottom right: there is no main object here. the background is dim, green at the top and brown at the bottom.",
            ),
            (
                "the backgroundis very brigth, mostly white with some yelloww.",
                "the background is very bright, mostly white with some yellow.",
            ),
        ];
        for (noisy, want) in cases {
            let start = Instant::now();
            let got = c.correct(noisy);
            eprintln!("corrected in {:.2?}: {got}", start.elapsed());
            assert_eq!(got, want);
        }
    }

    #[test]
    fn matches_symspellpy_lookup_compound() {
        // Outputs of symspellpy 6.10.1 `lookup_compound(line, 2)` with the same two
        // dictionaries (SymSpell(2, 7)), recorded with the Python package.
        let c = corrector();
        let cases = [
            ("there is no main obect here", "there is no main object here"),
            ("the backgrond is dim", "the background is dim"),
            (
                "gren at the topp and brwn at the botom",
                "green at the top and brown at the bottom",
            ),
            ("the backgroundis very brigth", "the background is very bright"),
            ("mostly white with some yelow", "mostly white with some below"),
            (
                "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq thebackgroundisblueandbright xz",
                "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq thebackgroundisblueandbright of",
            ),
            (
                "whereis th elove hehad dated forImuch of thepast who couqdn'tread in sixtgrade and ins pired him",
                "where is the love he had dated for much of the past who couldn't read in six grade and inspired him",
            ),
            (
                "the main objct covers a thrid of this part",
                "the main object covers a third of this part",
            ),
            ("it is whte and grey", "it is white and grey"),
            ("top lfet", "top left"),
            (
                "in te dhird qarter oflast jear he hadlearned ofca sekretplan",
                "in the third quarter of last year he had learned of a secret plan",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(c.correct(input), want, "input {input:?}");
        }
    }

    #[test]
    fn keeps_numbers_punctuation_and_clean_text() {
        let c = corrector();
        assert_eq!(
            c.correct("row 2 column 3: the sky (blue) is brigt!"),
            "row 2 column 3: the sky (blue) is bright!"
        );
        assert_eq!(c.correct("It costs 3.50, rihgt?"), "it costs 3.50, right?");
        let clean = "top left: the main object covers half of this part, in the middle; it is red. the background is bright, blue at the top and green at the bottom.";
        assert_eq!(c.correct(clean), clean);
        assert_eq!(c.correct(""), "");
        assert_eq!(c.correct(" ... "), "...");
    }

    #[test]
    fn captioner_vocabulary_survives_correction() {
        use crate::attributes::{describe_tile, TilePosition};
        use crate::colors::{Brightness, ColorName};
        use image::{GrayImage, Luma, Rgb, RgbImage};
        let c = corrector();
        // Every colour and brightness word, every layout, object sizes and places, and
        // the position names of 2x2 and 3x3 grids.
        let mut captions = Vec::new();
        for (k, color) in ColorName::ALL.into_iter().enumerate() {
            let other = ColorName::ALL[(k + 3) % ColorName::ALL.len()];
            let (a, b) = (color.rgb(), other.rgb());
            let tile = RgbImage::from_fn(60, 60, |x, y| {
                let top = if k % 2 == 0 { y < 30 } else { x < 30 };
                Rgb(if top { a } else { b })
            });
            let mask = GrayImage::from_fn(60, 60, |x, y| {
                let s = 8 + 5 * k as u32;
                Luma([if x >= 60 - s && y < s { 255 } else { 0 }])
            });
            let pos = TilePosition {
                index: k % 9,
                rows: 3,
                cols: 3,
            };
            captions.push(describe_tile(&tile, Some(&mask), pos));
            let pos = TilePosition {
                index: k % 4,
                rows: 2,
                cols: 2,
            };
            captions.push(describe_tile(&tile, None, pos));
        }
        for b in Brightness::ALL {
            captions.push(format!("the background is gray and {}.", b.words()));
        }
        captions.push("the background is bright, mostly white with some gray.".into());
        captions.push("the whole image: the main object covers most of this part, at the bottom left; it is pink. the background is hidden.".into());
        for caption in &captions {
            assert_eq!(&c.correct(caption), caption);
        }
    }

    #[test]
    fn coco_names_survive_correction() {
        let c = corrector();
        for name in crate::detect::COCO_NAMES {
            let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            let caption = format!(
                "bottom left: {article} {name} covers most of this part; it is red; {article} {name} is in the middle. the background is dark."
            );
            assert_eq!(c.correct(&caption), caption, "{name}");
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        let c = corrector();
        let junk = "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq thebackgroundisblueandbright x\u{e9}z #$% a\"b";
        let out = c.correct(junk);
        assert!(!out.is_empty());
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Corrector::load("/nonexistent/uni.txt", "/nonexistent/bi.txt").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/uni.txt"), "{err}");
        let dir = std::env::temp_dir().join(format!("symspell-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "the 10\nbroken line here\n").unwrap();
        let err = SymSpell::new(2, 7).load_unigrams(&bad).unwrap_err();
        assert!(err.to_string().contains(":2:"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
