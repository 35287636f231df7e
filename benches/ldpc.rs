//! LDPC decoding throughput on one core: this project's layered decoder
//! (`dataflow_models::ldpc`) against `ldpc-toolbox`'s horizontal-layered decoders, on the
//! same noisy codewords of the 5G NR base graph 1 code at rate 1/2 (Z = 384, K = 8448:
//! block rows 0..24 and block columns 0..46 of BG1, the first 2Z bits punctured), BPSK
//! over AWGN, at most 10 iterations with early termination.
//!
//! Like for like: ldpc-toolbox 0.12 has no min-sum rule (its fastest float rules are φ,
//! tanh and the min* approximations), so the bench plugs a normalized min-sum
//! [`DecoderArithmetic`] (`MinSumf32`: f32, α = 0.75, two-minimum check update, the rule
//! and precision of `CheckRule::MinSum`) into ldpc-toolbox's own horizontal-layered
//! decoder. `ours min-sum ÷ toolbox min-sum` is then the cost of the implementation alone
//! (same rule, precision, schedule, code, LLRs, iteration limit); our sum-product (f32, φ)
//! faces ldpc-toolbox's `HLPhif32`. `HLPhif64` and `HLMinstarapproxi8` stay as the
//! earlier (different-rule) reference points.
//!
//! `cargo bench --bench ldpc` (harness-less; prints a table). Environment:
//! `BENCH_BLOCKS` (codewords per SNR, default 40), `BENCH_REPS` (default 5, median).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use dataflow_models::channel::{demodulate_llr, modulate, Awgn, Modulation};
use dataflow_models::ldpc::{BaseGraph, CheckRule, LayeredDecoder, NrCode};
use ldpc_toolbox::decoder::arithmetic::DecoderArithmetic;
use ldpc_toolbox::decoder::factory::{DecoderFactory, DecoderImplementation};
use ldpc_toolbox::decoder::{horizontal_layered, LdpcDecoder, Message, SentMessage};
use ldpc_toolbox::sparse::SparseMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const LAYERS: usize = 24;
const COLS: usize = 46;
const ITER: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Normalized min-sum in f32 for ldpc-toolbox's decoders: the check message to each
/// variable is α · (product of the other inputs' signs) · (smallest other magnitude),
/// from one pass that keeps the two smallest magnitudes (as `CheckRule::MinSum` does).
#[derive(Debug, Clone)]
struct MinSumf32 {
    alpha: f32,
    q: Vec<f32>,
}

impl MinSumf32 {
    fn new(alpha: f32) -> Self {
        MinSumf32 { alpha, q: Vec::new() }
    }

    /// Check messages for the variable messages `q`, written into `out`.
    fn check(&self, q: &[f32], mut out: impl FnMut(usize, f32)) {
        let (mut min1, mut min2, mut arg, mut neg) = (f32::INFINITY, f32::INFINITY, usize::MAX, false);
        for (e, &x) in q.iter().enumerate() {
            let a = x.abs();
            neg ^= x < 0.0;
            if a < min1 {
                min2 = min1;
                min1 = a;
                arg = e;
            } else if a < min2 {
                min2 = a;
            }
        }
        for (e, &x) in q.iter().enumerate() {
            let m = self.alpha * if e == arg { min2 } else { min1 };
            out(e, if neg ^ (x < 0.0) { -m } else { m });
        }
    }
}

impl DecoderArithmetic for MinSumf32 {
    type Llr = f32;
    type CheckMessage = f32;
    type VarMessage = f32;
    type VarLlr = f32;

    fn input_llr_quantize(&self, llr: f64) -> f32 {
        llr as f32
    }

    fn llr_hard_decision(&self, llr: f32) -> bool {
        llr <= 0.0
    }

    fn llr_to_var_message(&self, llr: f32) -> f32 {
        llr
    }

    fn llr_to_var_llr(&self, llr: f32) -> f32 {
        llr
    }

    fn var_llr_to_llr(&self, var_llr: f32) -> f32 {
        var_llr
    }

    fn send_check_messages<F>(&mut self, var_messages: &[Message<f32>], mut send: F)
    where
        F: FnMut(SentMessage<f32>),
    {
        let q: Vec<f32> = var_messages.iter().map(|m| m.value).collect();
        self.check(&q, |e, value| {
            send(SentMessage {
                dest: var_messages[e].source,
                value,
            })
        });
    }

    fn send_var_messages<F>(&mut self, input_llr: f32, check_messages: &[Message<f32>], mut send: F) -> f32
    where
        F: FnMut(SentMessage<f32>),
    {
        let llr = input_llr + check_messages.iter().map(|m| m.value).sum::<f32>();
        for m in check_messages {
            send(SentMessage {
                dest: m.source,
                value: llr - m.value,
            });
        }
        llr
    }

    fn update_check_messages_and_vars(&mut self, check_messages: &mut [SentMessage<f32>], vars: &mut [f32]) {
        // Variable-to-check messages: the posterior minus this check's previous message.
        let mut q = std::mem::take(&mut self.q);
        q.clear();
        q.extend(check_messages.iter().map(|m| vars[m.dest] - m.value));
        self.check(&q, |e, r| {
            let m = &mut check_messages[e];
            vars[m.dest] = q[e] + r;
            m.value = r;
        });
        self.q = q;
    }
}

fn main() {
    let blocks = env_usize("BENCH_BLOCKS", 40);
    let reps = env_usize("BENCH_REPS", 5);
    let z = 384;
    let code = NrCode::get(BaseGraph::Bg1, z).unwrap();
    let n = COLS * z;
    let k = code.k();
    // The rate-1/2 sub-code as a sparse matrix for ldpc-toolbox.
    let full = NrCode::toolbox_matrix(BaseGraph::Bg1, z).unwrap();
    let mut h = SparseMatrix::new(LAYERS * z, n);
    for r in 0..LAYERS * z {
        for &c in full.iter_row(r) {
            assert!(c < n, "row {r} reaches column {c}");
            h.insert(r, c);
        }
    }
    println!(
        "BG1 Z={z}: K={k}, sent {} bits (rate {:.3}), {blocks} blocks, max {ITER} iterations, median of {reps}",
        n - 2 * z,
        k as f64 / (n - 2 * z) as f64
    );
    println!(
        "{:<8} {:<34} {:>12} {:>10} {:>8}",
        "Es/N0", "decoder", "info Mbit/s", "mean iter", "BLER"
    );
    for snr in [-1.0, 1.0] {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let awgn = Awgn::new(snr).unwrap();
        let mut cws = Vec::new();
        let mut llrs = Vec::new();
        for _ in 0..blocks {
            let info: Vec<u8> = (0..k).map(|_| rng.random_range(0..2u8)).collect();
            let cw = code.encode(&info)[..n].to_vec();
            let mut sym = modulate(&cw, Modulation::Bpsk).unwrap();
            awgn.apply(&mut sym, &mut rng);
            let mut l = demodulate_llr(&sym, Modulation::Bpsk, awgn.n0(), n);
            l[..2 * z].iter_mut().for_each(|x| *x = 0.0);
            cws.push(cw);
            llrs.push(l);
        }
        let mut rates: Vec<(String, f64)> = Vec::new();
        let llrs32: Vec<Vec<f32>> = llrs.iter().map(|l| l.iter().map(|&x| x as f32).collect()).collect();
        let mut padded: Vec<Vec<f32>> = llrs32
            .iter()
            .map(|l| {
                let mut p = l.clone();
                p.resize(code.n(), 0.0);
                p
            })
            .collect();

        for (name, rule) in [
            ("dataflow layered min-sum (0.75)", CheckRule::MinSum { alpha: 0.75 }),
            ("dataflow layered sum-product", CheckRule::SumProduct),
        ] {
            let mut dec = LayeredDecoder::new(code.clone(), rule);
            let mut times = Vec::new();
            let (mut iters, mut fails) = (0, 0);
            for rep in 0..reps {
                let t = Instant::now();
                for (i, l) in padded.iter_mut().enumerate() {
                    let out = dec.decode(black_box(l), LAYERS, ITER);
                    if rep == 0 {
                        iters += out.iterations;
                        fails += usize::from(!out.converged || out.bits[..n] != cws[i][..]);
                    }
                }
                times.push(t.elapsed().as_secs_f64());
            }
            rates.push((
                name.to_string(),
                report(snr, name, k, blocks, median(times), iters, fails),
            ));
        }
        let toolbox: Vec<(String, Box<dyn LdpcDecoder>)> = vec![
            (
                "ldpc-toolbox HL min-sum f32 (0.75)".into(),
                Box::new(horizontal_layered::Decoder::new(h.clone(), MinSumf32::new(0.75))),
            ),
            tb(DecoderImplementation::HLPhif32, &h),
            tb(DecoderImplementation::HLPhif64, &h),
            tb(DecoderImplementation::HLMinstarapproxi8, &h),
        ];
        for (name, mut dec) in toolbox {
            let mut times = Vec::new();
            let (mut iters, mut fails) = (0, 0);
            for rep in 0..reps {
                let t = Instant::now();
                for (i, l) in llrs.iter().enumerate() {
                    let out = dec.decode(black_box(l), ITER);
                    if rep == 0 {
                        let (ok, o) = match out {
                            Ok(o) => (true, o),
                            Err(o) => (false, o),
                        };
                        iters += o.iterations;
                        fails += usize::from(!ok || o.codeword != cws[i]);
                    }
                }
                times.push(t.elapsed().as_secs_f64());
            }
            rates.push((name.clone(), report(snr, &name, k, blocks, median(times), iters, fails)));
        }
        let rate = |name: &str| rates.iter().find(|(n, _)| n == name).map_or(f64::NAN, |r| r.1);
        println!(
            "{:<8} like for like (same rule, f32, layered): min-sum ours ÷ ldpc-toolbox = {:.2}; \
             sum-product (φ) ours ÷ ldpc-toolbox HLPhif32 = {:.2}",
            format!("{snr} dB"),
            rate("dataflow layered min-sum (0.75)") / rate("ldpc-toolbox HL min-sum f32 (0.75)"),
            rate("dataflow layered sum-product") / rate("ldpc-toolbox HLPhif32"),
        );
    }
}

fn tb(imp: DecoderImplementation, h: &SparseMatrix) -> (String, Box<dyn LdpcDecoder>) {
    (format!("ldpc-toolbox {imp}"), imp.build_decoder(h.clone()))
}

/// Prints one row; returns the information rate in Mbit/s.
fn report(snr: f64, name: &str, k: usize, blocks: usize, secs: f64, iters: usize, fails: usize) -> f64 {
    let mbps = (k * blocks) as f64 / secs / 1e6;
    println!(
        "{:<8} {:<34} {:>12.2} {:>10.2} {:>8.3}",
        format!("{snr} dB"),
        name,
        mbps,
        iters as f64 / blocks as f64,
        fails as f64 / blocks as f64
    );
    mbps
}
