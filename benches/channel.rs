//! Channel-model throughput on one core: bytes -> bits -> modulate -> AWGN -> hard
//! demodulation, for BPSK, QPSK, 16-QAM and 64-QAM; then the fading channels next to
//! AWGN (`Channel::apply`: gains, pilots, noise and equalisation; the chain with hard
//! decisions; |ĥ|²-scaled soft LLRs).
//!
//! `cargo bench --bench channel` (harness-less; prints a table). Single-threaded: the
//! whole loop runs on the calling thread. Environment:
//! `BENCH_BYTES` (payload per repetition, default 65536), `BENCH_REPS` (default 7,
//! median reported), `BENCH_SNR_DB` (default 10).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use dataflow_models::channel::{
    bytes_to_bits, channel_rng, demodulate_hard, demodulate_llr_scaled, modulate, Awgn, Channel, Coherence, Csi,
    Fading, FadingModel, Modulation,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Seconds of each step for one repetition, and the bit errors seen.
struct Rep {
    bits_s: f64,
    modulate_s: f64,
    awgn_s: f64,
    demod_s: f64,
    errors: usize,
}

fn rep(data: &[u8], m: Modulation, awgn: &Awgn, seq: u64) -> (Rep, usize) {
    let mut rng = channel_rng(7, "bench", seq, 0);
    let t0 = Instant::now();
    let bits = black_box(bytes_to_bits(black_box(data)));
    let t1 = Instant::now();
    let mut symbols = black_box(modulate(&bits, m).expect("bits are 0/1"));
    let t2 = Instant::now();
    awgn.apply(&mut symbols, &mut rng);
    black_box(&symbols);
    let t3 = Instant::now();
    let out = black_box(demodulate_hard(&symbols, m, bits.len()));
    let t4 = Instant::now();
    let errors = bits.iter().zip(&out).filter(|(a, b)| a != b).count();
    let r = Rep {
        bits_s: (t1 - t0).as_secs_f64(),
        modulate_s: (t2 - t1).as_secs_f64(),
        awgn_s: (t3 - t2).as_secs_f64(),
        demod_s: (t4 - t3).as_secs_f64(),
        errors,
    };
    (r, symbols.len())
}

fn main() {
    let bytes = env_usize("BENCH_BYTES", 64 * 1024).max(1);
    let reps = env_usize("BENCH_REPS", 7).max(1);
    let snr_db: f64 = std::env::var("BENCH_SNR_DB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let awgn = Awgn::new(snr_db).expect("snr");
    // Deterministic, non-trivial payload.
    let data: Vec<u8> = (0..bytes)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_at_start: Vec<&str> = load.split_whitespace().take(3).collect();

    let mut lines = Vec::new();
    for m in Modulation::ALL {
        // Warm-up (page faults, allocator).
        let _ = rep(&data, m, &awgn, u64::MAX);
        let mut per = Vec::new();
        let mut n_sym = 0;
        for i in 0..reps {
            let (r, n) = rep(&data, m, &awgn, i as u64);
            n_sym = n;
            per.push(r);
        }
        let rate = |f: fn(&Rep) -> f64| n_sym as f64 / median(per.iter().map(f).collect());
        let total = rate(|r| r.modulate_s + r.awgn_s + r.demod_s);
        let with_bits = rate(|r| r.bits_s + r.modulate_s + r.awgn_s + r.demod_s);
        let errors: usize = per.iter().map(|r| r.errors).sum();
        let ber = errors as f64 / (reps * bytes * 8) as f64;
        lines.push(format!(
            "| {:<6} | {:>9} | {:>10.2} | {:>10.2} | {:>10.2} | {:>10.2} | {:>12.2} | {:>13.2} | {:>9.2e} |",
            m.name(),
            n_sym,
            rate(|r| r.modulate_s) / 1e6,
            rate(|r| r.awgn_s) / 1e6,
            rate(|r| r.demod_s) / 1e6,
            total / 1e6,
            with_bits / 1e6,
            total * m.bits_per_symbol() as f64 / 1e6,
            ber,
        ));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_at_end: Vec<&str> = load.split_whitespace().take(3).collect();

    println!();
    println!(
        "channel: {bytes} bytes per repetition, AWGN at {snr_db} dB Es/N0, median of {reps} repetitions, one thread; \
         load average at start {load_at_start:?}, at end {load_at_end:?}"
    );
    println!("Msym/s = million symbols per second; chain = modulate + AWGN + demodulate_hard (+ bytes_to_bits)");
    println!();
    println!(
        "| {:<6} | {:>9} | {:>10} | {:>10} | {:>10} | {:>10} | {:>12} | {:>13} | {:>9} |",
        "mod", "symbols", "modulate", "AWGN", "demod hard", "chain", "chain + bits", "chain Mbit/s", "BER"
    );
    println!(
        "|{:-<8}|{:->11}|{:->12}|{:->12}|{:->12}|{:->12}|{:->14}|{:->15}|{:->11}|",
        "", "", "", "", "", "", "", "", ""
    );
    for l in lines {
        println!("{l}");
    }
    fading_table(&data, reps, snr_db);
}

/// Seconds of the channel step, hard and soft demodulation for one repetition over
/// `channel`; the channel uses it took (pilots included) and the bit errors.
fn fading_rep(data: &[u8], m: Modulation, channel: &Channel, seq: u64) -> ([f64; 3], usize, usize, usize) {
    let bits = bytes_to_bits(data);
    let mut symbols = modulate(&bits, m).expect("bits are 0/1");
    let mut rng = channel_rng(7, "bench-fading", seq, 0);
    let t0 = Instant::now();
    let faded = channel.apply(&mut symbols, &mut rng);
    black_box(&symbols);
    let t1 = Instant::now();
    let hard = black_box(demodulate_hard(&symbols, m, bits.len()));
    let t2 = Instant::now();
    let llrs = black_box(demodulate_llr_scaled(
        &symbols,
        &faded.gains,
        m,
        channel.n0(),
        bits.len(),
    ));
    let t3 = Instant::now();
    black_box(llrs);
    let errors = bits.iter().zip(&hard).filter(|(a, b)| a != b).count();
    let uses = symbols.len() + faded.pilots as usize;
    let secs = [
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
    ];
    (secs, symbols.len(), uses, errors)
}

/// The fading channels next to AWGN: data symbols per second of each step (median).
fn fading_table(data: &[u8], reps: usize, snr_db: f64) {
    let fading = |model, k, coherence, csi| Fading::from_keys(model, k, coherence, csi).expect("valid fading");
    let configs = [
        ("awgn", Fading::default()),
        (
            "rayleigh, symbol, perfect",
            fading(FadingModel::Rayleigh, None, Coherence::Symbol, Csi::Perfect),
        ),
        (
            "rayleigh, block 64, 4 pilots",
            fading(FadingModel::Rayleigh, None, Coherence::Block(64), Csi::Pilots(4)),
        ),
        (
            "rayleigh, message, 8 pilots",
            fading(FadingModel::Rayleigh, None, Coherence::Message, Csi::Pilots(8)),
        ),
        (
            "rician K=6 dB, symbol, perfect",
            fading(FadingModel::Rician, Some(6.0), Coherence::Symbol, Csi::Perfect),
        ),
    ];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_at_start: Vec<String> = load.split_whitespace().take(3).map(str::to_string).collect();
    let mut lines = Vec::new();
    for m in [Modulation::Bpsk, Modulation::Qam16] {
        for (name, f) in &configs {
            let channel = Channel::new(snr_db, *f).expect("snr");
            let _ = fading_rep(data, m, &channel, u64::MAX);
            let mut per = Vec::new();
            let (mut n_sym, mut n_uses, mut errors) = (0, 0, 0);
            for i in 0..reps {
                let (secs, n, uses, e) = fading_rep(data, m, &channel, i as u64);
                (n_sym, n_uses, errors) = (n, uses, errors + e);
                per.push(secs);
            }
            let rate = |f: &dyn Fn(&[f64; 3]) -> f64| n_sym as f64 / median(per.iter().map(f).collect()) / 1e6;
            lines.push(format!(
                "| {:<6} | {:<30} | {:>9} | {:>12.2} | {:>12.2} | {:>12.2} | {:>9.2e} |",
                m.name(),
                name,
                n_uses,
                rate(&|s| s[0]),
                rate(&|s| s[0] + s[1]),
                rate(&|s| s[0] + s[2]),
                errors as f64 / (reps * data.len() * 8) as f64,
            ));
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_at_end: Vec<&str> = load.split_whitespace().take(3).collect();
    println!();
    println!(
        "fading: {} bytes per repetition, average Es/N0 {snr_db} dB, median of {reps} repetitions, one thread; \
         load average at start {load_at_start:?}, at end {load_at_end:?}",
        data.len()
    );
    println!(
        "Msym/s = million data symbols per second; channel = gains + pilots + noise + equalisation; \
         + hard = and demodulate_hard; + soft = and |h|²-scaled max-log LLRs"
    );
    println!();
    println!(
        "| {:<6} | {:<30} | {:>9} | {:>12} | {:>12} | {:>12} | {:>9} |",
        "mod", "channel", "uses", "channel", "+ hard", "+ soft", "BER"
    );
    println!(
        "|{:-<8}|{:-<32}|{:->11}|{:->14}|{:->14}|{:->14}|{:->11}|",
        "", "", "", "", "", "", ""
    );
    for l in lines {
        println!("{l}");
    }
}
