//! Text metrics computable offline, for `evaluate` and the corrector benchmarks.
//!
//! - [`wer`]: word error rate, the Levenshtein distance between word sequences divided by
//!   the number of reference words. Words are the whitespace tokens of the lowercased
//!   text with punctuation trimmed from both ends (`"left:"` is `left`); tokens that are
//!   all punctuation are dropped.
//! - [`cer`]: character error rate, the Levenshtein distance between the texts (Unicode
//!   scalar values, whitespace runs collapsed to one space, ends trimmed) divided by the
//!   reference's length.
//! - [`object_recall`]: the share of object names in the reference (each occurrence of a
//!   name from a list, e.g. the 80 COCO class names, matched as whole words; a longer name
//!   first, so "teddy bear" is not also a "bear") that the hypothesis still holds (counts
//!   matched per name, at most as many as the reference has). `None` when the reference
//!   names no object: there is nothing to recall, and neither 0 nor 1 would be true, so
//!   the CSV cell stays empty and averages skip the frame.
//!   The COCO list holds `orange`, which the offline captioner also uses as a colour word, so
//!   an orange background counts as a named object (kept as is: the fruit and the colour are
//!   the same word for a reader of the text).
//!
//! Both error rates are 0 for two empty texts and 1 per inserted unit when the reference
//! is empty (the denominator is at least 1), so they never give NaN or infinity.

use std::collections::HashMap;

/// Lowercased words with the punctuation at their ends trimmed.
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn levenshtein<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Word error rate of `hypothesis` against `reference` (see the module documentation).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (words(reference), words(hypothesis));
    levenshtein(&r, &h) as f64 / r.len().max(1) as f64
}

fn normalised_chars(text: &str) -> Vec<char> {
    text.split_whitespace().collect::<Vec<_>>().join(" ").chars().collect()
}

/// Character error rate of `hypothesis` against `reference` (see the module documentation).
pub fn cer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (normalised_chars(reference), normalised_chars(hypothesis));
    levenshtein(&r, &h) as f64 / r.len().max(1) as f64
}

/// Occurrences of each name of `names` in `text`, as whole words, longest names first.
pub fn name_counts<'a>(text: &str, names: &[&'a str]) -> HashMap<&'a str, usize> {
    let mut toks: Vec<Option<String>> = words(text).into_iter().map(Some).collect();
    let mut sorted: Vec<(&'a str, Vec<&str>)> = names.iter().map(|n| (*n, n.split_whitespace().collect())).collect();
    sorted.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut counts = HashMap::new();
    for (name, parts) in sorted {
        if parts.is_empty() || parts.len() > toks.len() {
            continue;
        }
        let mut i = 0;
        while i + parts.len() <= toks.len() {
            let hit = parts
                .iter()
                .enumerate()
                .all(|(k, p)| toks[i + k].as_deref() == Some(*p));
            if hit {
                *counts.entry(name).or_insert(0) += 1;
                for t in &mut toks[i..i + parts.len()] {
                    *t = None;
                }
                i += parts.len();
            } else {
                i += 1;
            }
        }
    }
    counts
}

/// Share of the object names of `reference` that `hypothesis` keeps, or `None` when the
/// reference names none (see the module documentation).
pub fn object_recall(reference: &str, hypothesis: &str, names: &[&str]) -> Option<f64> {
    let sent = name_counts(reference, names);
    let total: usize = sent.values().sum();
    if total == 0 {
        return None;
    }
    let kept = name_counts(hypothesis, names);
    let hit: usize = sent
        .iter()
        .map(|(n, c)| (*c).min(kept.get(n).copied().unwrap_or(0)))
        .sum();
    Some(hit as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_and_character_error_rates() {
        let sent = "top left: the cat is white.";
        assert_eq!(wer(sent, sent), 0.0);
        assert_eq!(
            wer(sent, "TOP left the cat is white"),
            0.0,
            "case and end punctuation do not count"
        );
        assert!((wer(sent, "top left: the cet is white.") - 1.0 / 6.0).abs() < 1e-12);
        assert!((wer(sent, "top left: thecat is white.") - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(cer(sent, sent), 0.0);
        assert!((cer(sent, "top left: the cet is white.") - 1.0 / 27.0).abs() < 1e-12);
        assert_eq!(wer("", ""), 0.0);
        assert_eq!(cer("", "ab"), 2.0);
    }

    #[test]
    fn object_recall_counts_names_as_whole_words() {
        let names = ["person", "bear", "teddy bear", "cat"];
        let sent = "a person and a teddy bear; a person again.";
        assert_eq!(object_recall(sent, sent, &names), Some(1.0));
        assert_eq!(object_recall(sent, "a person and a teddy bar", &names), Some(1.0 / 3.0));
        // "bear" alone is not the "teddy bear" that was sent.
        assert_eq!(object_recall("a teddy bear", "a bear", &names), Some(0.0));
        assert_eq!(object_recall("no objects here", "no objects here", &names), None);
        assert_eq!(object_recall("the category", "the category", &names), None);
    }
}
