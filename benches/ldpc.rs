//! LDPC decoding throughput on one core: this project's layered decoder
//! (`dataflow_models::ldpc`) against `ldpc-toolbox`'s horizontal-layered decoders, on the
//! same noisy codewords of the 5G NR base graph 1 code at rate 1/2 (Z = 384, K = 8448:
//! block rows 0..24 and block columns 0..46 of BG1, the first 2Z bits punctured), BPSK
//! over AWGN, at most 10 iterations with early termination.
//!
//! `cargo bench --bench ldpc` (harness-less; prints a table). Environment:
//! `BENCH_BLOCKS` (codewords per SNR, default 40), `BENCH_REPS` (default 5, median).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use dataflow_models::channel::{demodulate_llr, modulate, Awgn, Modulation};
use dataflow_models::ldpc::{BaseGraph, CheckRule, LayeredDecoder, NrCode};
use ldpc_toolbox::decoder::factory::{DecoderFactory, DecoderImplementation};
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
            report(snr, name, k, blocks, median(times), iters, fails);
        }
        for imp in [
            DecoderImplementation::HLMinstarapproxf32,
            DecoderImplementation::HLPhif64,
            DecoderImplementation::HLMinstarapproxi8,
        ] {
            let mut dec = imp.build_decoder(h.clone());
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
            report(
                snr,
                &format!("ldpc-toolbox {imp}"),
                k,
                blocks,
                median(times),
                iters,
                fails,
            );
        }
    }
}

fn report(snr: f64, name: &str, k: usize, blocks: usize, secs: f64, iters: usize, fails: usize) {
    let mbps = (k * blocks) as f64 / secs / 1e6;
    println!(
        "{:<8} {:<34} {:>12.2} {:>10.2} {:>8.3}",
        format!("{snr} dB"),
        name,
        mbps,
        iters as f64 / blocks as f64,
        fails as f64 / blocks as f64
    );
}
