//! Beam search of BART, for one text and for a batch of texts.
//!
//! Both follow `transformers`' `_beam_search` (5.x): per step each text keeps the best
//! `2 × beams` continuations of its running beams; those among the first `beams` that end
//! (`</s>`, or the token limit reached) join the text's finished hypotheses, scored by summed
//! log-probability / generated length ^ length penalty; the best `beams` that do not end run
//! on. Each text stops on its own per `early_stopping` ([`Beams::advance`]), as
//! `BeamSearchScorer` decides per batch item.
//!
//! The batch ([`Bart::beam_batch`]) runs B texts × their running beams as the rows of one
//! decoder call per step: the encoder inputs right-padded to the longest with an attention
//! mask of 0 on the padding, every row carrying its text's mask; the self-attention cache
//! gathered by each new beam's parent row; the cross-attention cache (one row per text from the
//! first step) expanded to the rows of the texts still running. A text that stops leaves the
//! batch, so its rows stop costing decoder time. Both gathers run where the caches are: on
//! the host, or, with the cache bound, on the provider (`bart/gather.rs`).

use super::{cache_dims, Bart, Cache, CorrectOptions, EarlyStopping, Generated};
use crate::error::ModelError;
use crate::session::{tensor_f32, tensor_i64};

/// A continuation: summed log-probability, the running beam it extends, the token.
type Candidate = (f32, usize, u32);

/// The beam-search state of one text.
#[derive(Debug)]
pub(super) struct Beams {
    width: usize,
    limit: usize,
    /// Running beams: decoder tokens (start token included) and summed log-probability.
    pub(super) running: Vec<(Vec<u32>, f32)>,
    /// Finished hypotheses, best first, at most `width`: tokens (no `</s>`), normalised score.
    finished: Vec<(Vec<u32>, f32)>,
    /// Whether a running beam can still beat the worst finished hypothesis.
    improvable: bool,
}

impl Beams {
    pub(super) fn new(start: u32, width: usize, limit: usize) -> Self {
        Beams {
            width,
            limit,
            running: vec![(vec![start], 0.0)],
            finished: Vec::new(),
            improvable: true,
        }
    }

    /// Step `k` (0-based) with this text's `candidates` (best first): updates the finished
    /// hypotheses and the running beams. `Some(order)`: the text runs on, new beam `j`
    /// continuing running beam `order[j]`; `None`: it is done.
    pub(super) fn advance(
        &mut self,
        candidates: &[Candidate],
        k: usize,
        eos: u32,
        o: &CorrectOptions,
    ) -> Option<Vec<usize>> {
        let width = self.width;
        let last_step = k + 1 == self.limit;
        let ends = |tok: u32| tok == eos || last_step;
        let full = self.finished.len() == width && o.early_stopping == EarlyStopping::Done;
        if self.improvable && !full {
            for &(score, bi, tok) in candidates.iter().take(width).filter(|c| ends(c.2)) {
                let mut toks = self.running[bi].0.clone();
                if tok != eos {
                    toks.push(tok);
                }
                self.finished
                    .push((toks, score / ((k + 1) as f32).powf(o.length_penalty)));
            }
            self.finished.sort_by(|a, b| b.1.total_cmp(&a.1));
            self.finished.truncate(width);
        }
        let next: Vec<Candidate> = candidates.iter().filter(|c| !ends(c.2)).take(width).copied().collect();
        if next.is_empty() {
            return None;
        }
        let order: Vec<usize> = next.iter().map(|n| n.1).collect();
        self.running = next
            .iter()
            .map(|&(score, bi, tok)| {
                let mut toks = self.running[bi].0.clone();
                toks.push(tok);
                (toks, score)
            })
            .collect();
        // Can a running beam still beat the worst finished one?
        let best_len = match o.early_stopping {
            EarlyStopping::Never if o.length_penalty > 0.0 => self.limit,
            _ => k + 1,
        };
        let best = self.running[0].1 / (best_len as f32).powf(o.length_penalty);
        let worst = match self.finished.last() {
            Some(f) if self.finished.len() == width => f.1,
            _ => -1.0e9,
        };
        self.improvable &= best > worst;
        let full = self.finished.len() == width && o.early_stopping == EarlyStopping::Done;
        (self.improvable && !full).then_some(order)
    }

    /// The best finished hypothesis (ids after the start token); with none finished, the best
    /// running beam, scored by summed log-probability / generated length ^ length penalty.
    pub(super) fn best(self, o: &CorrectOptions) -> Generated {
        if let Some((toks, score)) = self.finished.into_iter().next() {
            return Generated {
                ids: toks[1..].to_vec(),
                score: Some(score),
            };
        }
        match self.running.into_iter().next() {
            Some((toks, score)) => {
                let len = (toks.len() - 1).max(1) as f32;
                Generated {
                    ids: toks[1..].to_vec(),
                    score: Some(score / len.powf(o.length_penalty)),
                }
            }
            None => Generated::default(),
        }
    }

    /// The last token of each running beam (the next decoder input).
    pub(super) fn last_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.running.iter().map(|b| b.0[b.0.len() - 1])
    }
}

impl Bart {
    /// The best `keep` continuations `(summed log-probability, beam, token)` of `running`, whose
    /// logits are rows `offset..` of `logits` (`[rows, t, vocab]`), best first (finite scores only).
    #[allow(clippy::too_many_arguments)]
    fn beam_candidates(
        &self,
        logits: &[f32],
        t: usize,
        offset: usize,
        running: &[(Vec<u32>, f32)],
        keep: usize,
        limit: usize,
        o: &CorrectOptions,
    ) -> Vec<Candidate> {
        let vocab = self.export.vocab_size;
        let mut candidates: Vec<Candidate> = Vec::with_capacity(running.len() * vocab);
        for (bi, (seq, score)) in running.iter().enumerate() {
            let at = ((offset + bi) * t + t - 1) * vocab;
            let lp = self.next_log_probs(&logits[at..at + vocab], seq, limit, o);
            candidates.extend(
                lp.iter()
                    .enumerate()
                    .filter(|(_, l)| l.is_finite())
                    .map(|(tok, l)| (score + l, bi, tok as u32)),
            );
        }
        let order = |a: &Candidate, b: &Candidate| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2));
        if candidates.len() > keep {
            candidates.select_nth_unstable_by(keep - 1, order);
            candidates.truncate(keep);
        }
        candidates.sort_by(order);
        candidates
    }

    /// Beam search of one text whose encoder states are `hidden` (`[1, s, d]`).
    pub(super) fn beam_search(
        &mut self,
        hidden: &[f32],
        s: usize,
        limit: usize,
        o: &CorrectOptions,
    ) -> Result<Generated, ModelError> {
        let e = self.export.clone();
        let mut beams = Beams::new(e.decoder_start_token_id, o.beams, limit);
        let mut res = self.run_first(&[e.decoder_start_token_id], hidden, s, 1)?;
        // The cross-attention cache of one row, and expanded to the running beams.
        let mut cross_one = Cache::new();
        let mut cross = Cache::new();
        for k in 0..limit {
            let candidates = {
                let (shape, logits) = res.f32("logits")?;
                self.beam_candidates(logits, shape[1], 0, &beams.running, 2 * o.beams, limit, o)
            };
            let Some(order) = beams.advance(&candidates, k, e.eos_token_id, o) else {
                break;
            };
            let last: Vec<u32> = beams.last_tokens().collect();
            res = if o.use_cache {
                if k == 0 {
                    cross_one = self.take_cache(&mut res, "encoder")?;
                }
                if cross.is_empty() || cache_dims(&cross)?.0 != last.len() {
                    cross = self.gather_rows(&cross_one, &vec![0; last.len()])?;
                }
                let past = self.take_cache(&mut res, "decoder")?;
                let past = self.gather_rows(&past, &order)?;
                self.run_step(&last, &vec![1; last.len() * s], s, past, &cross)?
            } else {
                let flat: Vec<u32> = beams.running.iter().flat_map(|b| b.0.iter().copied()).collect();
                self.count_uncached_step(last.len(), flat.len() / last.len(), s);
                self.run_first(&flat, hidden, s, last.len())?
            };
        }
        Ok(beams.best(o))
    }

    /// Beam search of every input (valid ids, each with a token limit of at least 1 in
    /// `limits`) in one batch; see the module doc.
    pub(super) fn beam_batch(
        &mut self,
        inputs: &[Vec<u32>],
        limits: &[usize],
        o: &CorrectOptions,
    ) -> Result<Vec<Generated>, ModelError> {
        let e = self.export.clone();
        let (b, d) = (inputs.len(), e.d_model);
        let (s, mask, hidden) = self.encode_padded(inputs)?;
        let mut texts: Vec<Beams> = limits
            .iter()
            .map(|&l| Beams::new(e.decoder_start_token_id, o.beams, l))
            .collect();
        let mut res = self.run_first_on(vec![
            (
                "input_ids".into(),
                tensor_i64(&[b, 1], vec![i64::from(e.decoder_start_token_id); b])?,
            ),
            ("encoder_attention_mask".into(), tensor_i64(&[b, s], mask.clone())?),
            ("encoder_hidden_states".into(), tensor_f32(&[b, s, d], hidden)?),
        ])?;
        let cross_one = self.take_cache(&mut res, "encoder")?;
        // The text of each row of the last decoder call, and the cross cache built for them.
        let mut row_text: Vec<usize> = (0..b).collect();
        let (mut cross, mut cross_rows) = (Cache::new(), Vec::new());
        for k in 0.. {
            let (mut order, mut next_text) = (Vec::new(), Vec::new());
            {
                let (shape, logits) = res.f32("logits")?;
                let mut offset = 0;
                while offset < row_text.len() {
                    let ti = row_text[offset];
                    let beams = &mut texts[ti];
                    let n = beams.running.len();
                    let candidates =
                        self.beam_candidates(logits, shape[1], offset, &beams.running, 2 * o.beams, limits[ti], o);
                    if let Some(parents) = beams.advance(&candidates, k, e.eos_token_id, o) {
                        order.extend(parents.iter().map(|p| offset + p));
                        next_text.extend(std::iter::repeat_n(ti, parents.len()));
                    }
                    offset += n;
                }
            }
            if order.is_empty() {
                break;
            }
            row_text = next_text;
            let mut last = Vec::with_capacity(row_text.len());
            let mut row_mask = Vec::with_capacity(row_text.len() * s);
            for (i, &ti) in row_text.iter().enumerate() {
                if i == 0 || row_text[i - 1] != ti {
                    last.extend(texts[ti].last_tokens());
                }
                row_mask.extend_from_slice(&mask[ti * s..(ti + 1) * s]);
            }
            if cross_rows != row_text {
                cross = self.gather_rows(&cross_one, &row_text)?;
                cross_rows.clone_from(&row_text);
            }
            let past = self.take_cache(&mut res, "decoder")?;
            let past = self.gather_rows(&past, &order)?;
            res = self.run_step(&last, &row_mask, s, past, &cross)?;
        }
        Ok(texts.into_iter().map(|t| t.best(o)).collect())
    }

    /// The encoder over `inputs` right-padded to the longest: `(s, mask [b, s], hidden [b, s, d])`.
    pub(super) fn encode_padded(&mut self, inputs: &[Vec<u32>]) -> Result<(usize, Vec<i64>, Vec<f32>), ModelError> {
        let (b, d, pad) = (inputs.len(), self.export.d_model, i64::from(self.export.eos_token_id));
        let s = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * s);
        let mut mask = Vec::with_capacity(b * s);
        for input in inputs {
            ids.extend(input.iter().map(|&t| i64::from(t)));
            ids.extend(std::iter::repeat_n(pad, s - input.len()));
            mask.extend(std::iter::repeat_n(1i64, input.len()));
            mask.extend(std::iter::repeat_n(0i64, s - input.len()));
        }
        let out = self.encoder.run(vec![
            ("input_ids".into(), tensor_i64(&[b, s], ids)?.into()),
            ("attention_mask".into(), tensor_i64(&[b, s], mask.clone())?.into()),
        ])?;
        let (shape, hidden) = out.f32("last_hidden_state")?;
        if shape != [b, s, d] {
            return Err(ModelError::Invalid(format!("last_hidden_state has shape {shape:?}")));
        }
        Ok((s, mask, hidden.to_vec()))
    }
}
