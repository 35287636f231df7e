//! Fading channels against theory: Rayleigh BPSK with perfect CSI, Rician with a strong
//! line of sight, pilot-based estimation, LDPC over block fading with and without |ĥ|²
//! LLR scaling, and AWGN unchanged bit for bit.
//!
//! `cargo test -p dataflow-models --test channel_fading -- --nocapture` prints the
//! measured tables. The workspace compiles tests at opt-level 1 and its dependencies at
//! 3, so the 2·10⁶-bit loops take well under a second each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dataflow_models::channel::{
    channel_rng, demodulate_hard, modulate, q_function, transmit_bits_soft, transmit_bits_soft_over, transmit_bytes,
    transmit_bytes_over, Channel, Coherence, Csi, Fading, FadingModel, Modulation,
};
use dataflow_models::ldpc::{transmit_coded, transmit_coded_over, CheckRule, CodedLink};
use rand::Rng;

fn lin(snr_db: f64) -> f64 {
    10f64.powf(snr_db / 10.0)
}

fn fading(model: FadingModel, coherence: Coherence, csi: Csi) -> Fading {
    Fading::from_keys(model, None, coherence, csi).unwrap()
}

/// Hard-decision BER of `n_bits` random bits over `channel`.
fn measure_ber(channel: &Channel, modulation: Modulation, n_bits: usize, seed: u64) -> f64 {
    let mut rng = channel_rng(seed, "fading-test", 0, 0);
    let bits: Vec<u8> = (0..n_bits).map(|_| rng.random_range(0..2u8)).collect();
    let mut symbols = modulate(&bits, modulation).unwrap();
    let faded = channel.apply(&mut symbols, &mut rng);
    assert!(faded.gains.is_empty() || faded.gains.len() == symbols.len());
    let rx = demodulate_hard(&symbols, modulation, bits.len());
    bits.iter().zip(&rx).filter(|(a, b)| a != b).count() as f64 / n_bits as f64
}

/// Rayleigh BPSK with coherent detection: 0.5·(1 − √(γ/(1+γ))).
fn rayleigh_bpsk(snr_db: f64) -> f64 {
    let g = lin(snr_db);
    0.5 * (1.0 - (g / (1.0 + g)).sqrt())
}

#[test]
fn rayleigh_fast_fading_bpsk_matches_theory() {
    let f = fading(FadingModel::Rayleigh, Coherence::Symbol, Csi::Perfect);
    for (snr_db, n_bits) in [(0.0, 1_000_000), (10.0, 1_000_000), (20.0, 2_000_000)] {
        let ch = Channel::new(snr_db, f).unwrap();
        let ber = measure_ber(&ch, Modulation::Bpsk, n_bits, 11);
        let theory = rayleigh_bpsk(snr_db);
        let rel = (ber - theory).abs() / theory;
        eprintln!("Rayleigh BPSK {snr_db:>4} dB: measured {ber:.4e}, theory {theory:.4e}, rel {rel:.3}");
        assert!(rel < 0.05, "Rayleigh BPSK at {snr_db} dB: {ber} vs {theory}");
        // The quadrature of `Channel::expected_ber` agrees with the closed form.
        let quad = ch.expected_ber(Modulation::Bpsk);
        assert!((quad - theory).abs() / theory < 1e-4, "quadrature {quad} vs {theory}");
    }
}

#[test]
fn rician_with_strong_line_of_sight_is_close_to_awgn() {
    let f = Fading::from_keys(FadingModel::Rician, Some(30.0), Coherence::Symbol, Csi::Perfect).unwrap();
    for snr_db in [4.0, 6.0] {
        let ch = Channel::new(snr_db, f).unwrap();
        let ber = measure_ber(&ch, Modulation::Bpsk, 2_000_000, 12);
        let awgn = q_function((2.0 * lin(snr_db)).sqrt());
        let rel = (ber - awgn).abs() / awgn;
        eprintln!("Rician K=30 dB BPSK {snr_db} dB: measured {ber:.4e}, AWGN {awgn:.4e}, rel {rel:.3}");
        assert!(rel < 0.05, "Rician K=30 dB at {snr_db} dB: {ber} vs AWGN {awgn}");
        // Rayleigh at the same SNR is far worse: the test can tell the two apart.
        assert!(rayleigh_bpsk(snr_db) > 3.0 * awgn);
    }
}

#[test]
fn pilot_estimates_approach_perfect_csi() {
    let snr_db = 10.0;
    let coherence = Coherence::Block(32);
    let n_bits = 2_000_000;
    let perfect = measure_ber(
        &Channel::new(snr_db, fading(FadingModel::Rayleigh, coherence, Csi::Perfect)).unwrap(),
        Modulation::Bpsk,
        n_bits,
        13,
    );
    let mut last = f64::INFINITY;
    eprintln!("Rayleigh block 32, BPSK {snr_db} dB: perfect CSI {perfect:.4e}");
    for pilots in [1, 4, 16] {
        let ch = Channel::new(snr_db, fading(FadingModel::Rayleigh, coherence, Csi::Pilots(pilots))).unwrap();
        let ber = measure_ber(&ch, Modulation::Bpsk, n_bits, 13);
        eprintln!(
            "  {pilots:>2} pilots: {ber:.4e} ({:+.1} % over perfect)",
            100.0 * (ber / perfect - 1.0)
        );
        assert!(ber < last, "{pilots} pilots: BER {ber} did not fall below {last}");
        assert!(
            ber > perfect * 0.97,
            "{pilots} pilots: {ber} beats perfect CSI {perfect}"
        );
        last = ber;
    }
    assert!(last < perfect * 1.10, "16 pilots: {last} vs perfect {perfect}");
}

#[test]
fn pilots_are_channel_uses() {
    let mut rng = channel_rng(1, "pilots", 0, 0);
    let bits: Vec<u8> = (0..1000).map(|_| rng.random_range(0..2u8)).collect();
    // 1000 BPSK symbols in blocks of 50 channel uses with 4 pilots: 46 data symbols each,
    // so ⌈1000/46⌉ = 22 blocks and 88 pilots.
    let f = fading(FadingModel::Rayleigh, Coherence::Block(50), Csi::Pilots(4));
    let ch = Channel::new(40.0, f).unwrap();
    let soft = transmit_bits_soft_over(&bits, Modulation::Bpsk, &ch, &mut rng).unwrap();
    assert_eq!(soft.symbols, 1000 + 88);
    assert_eq!(f.pilot_uses(1000), 88);
    let f = Fading::from_keys(FadingModel::Rician, Some(6.0), Coherence::Message, Csi::Pilots(8)).unwrap();
    assert_eq!(f.pilot_uses(1000), 8);
    assert_eq!(
        fading(FadingModel::Rayleigh, Coherence::Symbol, Csi::Perfect).pilot_uses(1000),
        0
    );
}

#[test]
fn awgn_model_is_bit_identical_to_the_plain_awgn_path() {
    let text = b"top left: the background is blue and bright.";
    let ch = Channel::awgn(2.0).unwrap();
    for m in Modulation::ALL {
        let a = transmit_bytes(text, m, 2.0, &mut channel_rng(7, "text_channel", 3, 1)).unwrap();
        let b = transmit_bytes_over(text, m, &ch, &mut channel_rng(7, "text_channel", 3, 1)).unwrap();
        assert_eq!(a, b, "{m}");
        let bits = dataflow_models::channel::bytes_to_bits(text);
        let a = transmit_bits_soft(&bits, m, 2.0, &mut channel_rng(7, "s", 3, 1)).unwrap();
        let b = transmit_bits_soft_over(&bits, m, &ch, &mut channel_rng(7, "s", 3, 1)).unwrap();
        assert_eq!(a, b, "{m}");
    }
    let link = coded_link(1.0);
    let payload: Vec<u8> = (0..200u8).collect();
    let a = transmit_coded(&payload, &link, &mut channel_rng(7, "codec", 1, 0)).unwrap();
    let b = transmit_coded_over(&payload, &link, &Fading::default(), &mut channel_rng(7, "codec", 1, 0)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_settings_are_refused_with_the_key_to_blame() {
    let p = Fading::from_keys(FadingModel::Awgn, Some(6.0), Coherence::Message, Csi::Perfect).unwrap_err();
    assert_eq!(p.key, "k_factor");
    assert!(p.message.contains("rician"), "{}", p.message);
    let p = Fading::from_keys(FadingModel::Rician, None, Coherence::Message, Csi::Perfect).unwrap_err();
    assert_eq!(p.key, "k_factor");
    let p = Fading::from_keys(FadingModel::Rayleigh, None, Coherence::Symbol, Csi::Pilots(2)).unwrap_err();
    assert_eq!(p.key, "csi");
    let p = Fading::from_keys(FadingModel::Rayleigh, None, Coherence::Block(4), Csi::Pilots(4)).unwrap_err();
    assert_eq!(p.key, "coherence");
    let p = Fading::from_keys(FadingModel::Awgn, None, Coherence::Message, Csi::Pilots(4)).unwrap_err();
    assert_eq!(p.key, "csi");
    // The serialised forms of the graph keys.
    let c: Coherence = serde_json::from_str("\"symbol\"").unwrap();
    assert_eq!(c, Coherence::Symbol);
    assert_eq!(serde_json::from_str::<Coherence>("64").unwrap(), Coherence::Block(64));
    assert_eq!(
        serde_json::from_str::<Coherence>("\"message\"").unwrap(),
        Coherence::Message
    );
    let e = serde_json::from_str::<Coherence>("0").unwrap_err().to_string();
    assert!(e.contains("coherence 0"), "{e}");
    assert_eq!(serde_json::from_str::<Csi>("\"perfect\"").unwrap(), Csi::Perfect);
    assert_eq!(serde_json::from_str::<Csi>("{\"pilots\": 4}").unwrap(), Csi::Pilots(4));
    let e = serde_json::from_str::<Csi>("{\"pilots\": 0}").unwrap_err().to_string();
    assert!(e.contains("at least 1 pilot"), "{e}");
    assert!(serde_json::from_str::<FadingModel>("\"rayleig\"").is_err());
}

fn coded_link(snr_db: f64) -> CodedLink {
    CodedLink {
        modulation: Modulation::Bpsk,
        snr_db,
        rate: 0.5,
        base_graph: None,
        rule: CheckRule::MinSum { alpha: 0.75 },
        iterations: 20,
    }
}

/// Transport-block error rate of `n` blocks of 100 random bytes at `snr_db` over `fading`.
fn bler(snr_db: f64, fading: &Fading, n: u64) -> f64 {
    let link = coded_link(snr_db);
    let mut failed = 0;
    for seq in 0..n {
        let mut rng = channel_rng(5, "ldpc-fading", seq, 0);
        let payload: Vec<u8> = (0..100).map(|_| rng.random()).collect();
        let t = transmit_coded_over(&payload, &link, fading, &mut rng).unwrap();
        if !t.ok || t.received != payload {
            failed += 1;
        }
    }
    f64::from(failed) / n as f64
}

#[test]
fn ldpc_over_block_rayleigh_has_no_cliff_and_gains_from_llr_scaling() {
    // 100 bytes at rate 1/2 on BPSK: ≈ 1700 channel uses, ≈ 4 coherence blocks of 400.
    let awgn = Fading::default();
    let block = fading(FadingModel::Rayleigh, Coherence::Block(400), Csi::Perfect);
    let unscaled = Fading {
        scale_llrs: false,
        ..block
    };
    let n = 200;
    eprintln!("LDPC rate 1/2, BPSK, 100-byte blocks, {n} blocks per point");
    eprintln!("Es/N0 dB | AWGN BLER | Rayleigh block 400 | Rayleigh, unscaled LLRs");
    let mut rows = Vec::new();
    for snr_db in [-4.0, 0.0, 4.0, 8.0, 12.0, 16.0, 20.0] {
        let row = (
            snr_db,
            bler(snr_db, &awgn, n),
            bler(snr_db, &block, n),
            bler(snr_db, &unscaled, n),
        );
        eprintln!("{:>8} | {:>9.3} | {:>18.3} | {:>23.3}", row.0, row.1, row.2, row.3);
        rows.push(row);
    }
    // Falls with the SNR (one block of slack for Monte-Carlo noise).
    for w in rows.windows(2) {
        assert!(w[1].2 <= w[0].2 + 1.0 / n as f64, "block Rayleigh BLER rose: {w:?}");
    }
    // AWGN's cliff: from above 1/2 to 0 within one 4 dB step; fading's slope spans many.
    let waterfall =
        |col: fn(&(f64, f64, f64, f64)) -> f64| rows.iter().filter(|r| col(r) > 0.005 && col(r) < 0.95).count();
    let (w_awgn, w_fading) = (waterfall(|r| r.1), waterfall(|r| r.2));
    eprintln!("points with 0.005 < BLER < 0.95: AWGN {w_awgn}, block Rayleigh {w_fading}");
    assert!(w_awgn <= 1, "AWGN should fall off a cliff");
    assert!(w_fading >= 3, "block Rayleigh should fall gradually");
    // |ĥ|² scaling beats unscaled LLRs wherever either fails at all.
    for r in rows.iter().filter(|r| r.3 > 0.05 && r.3 < 0.95) {
        assert!(
            r.2 < r.3,
            "at {} dB scaled LLRs gave BLER {} vs unscaled {}",
            r.0,
            r.2,
            r.3
        );
    }
    assert!(rows.iter().filter(|r| r.3 > 0.05 && r.3 < 0.95).count() >= 2);
}
