//! Fading channels end to end (issue 23, item 1): a text-only graph with
//! `[channel] model = "rayleigh"` runs, loses more bits than AWGN at the same average
//! SNR, and counts pilots as channel uses; bad fading keys fail validation at their line.
//! The channel maths against theory is tested in `models/tests/channel_fading.rs`.

use crate::support::{diagnostics, make_photos, num, read_csv, run_text, text_only_graph};

/// `text_only_graph` with `extra` lines added to its `[channel]` table.
fn with_channel(images: &std::path::Path, snr_db: f64, extra: &str) -> String {
    let g = text_only_graph(images, snr_db, 7, "noisy_channel");
    let at = "modulation = \"bpsk\"\n";
    assert!(g.contains(at), "the text-only graph changed; update this test");
    g.replacen(at, &format!("{at}{extra}\n"), 1)
}

fn mean(rows: &[std::collections::HashMap<String, String>], col: &str) -> f64 {
    rows.iter().map(|r| num(r, col)).sum::<f64>() / rows.len() as f64
}

#[test]
fn rayleigh_text_graph_runs_and_counts_pilots() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 4);
    let run = |name: &str, extra: &str| {
        let out = dir.path().join(name);
        let s = run_text(&with_channel(&imgs, 10.0, extra), &out);
        assert_eq!(s.failed, 0, "{name}");
        let rows = read_csv(&out.join("metrics.csv"));
        assert_eq!(rows.len(), 4, "{name}");
        rows
    };
    let awgn = run("awgn", "");
    let fast = run("fast", "model = \"rayleigh\"\ncoherence = \"symbol\"");
    let pilots = run(
        "pilots",
        "model = \"rayleigh\"\ncoherence = \"message\"\ncsi = { pilots = 4 }",
    );
    let (b_awgn, b_fast, b_pilots) = (mean(&awgn, "ber"), mean(&fast, "ber"), mean(&pilots, "ber"));
    println!("10 dB BPSK, 4 frames: BER AWGN {b_awgn:.2e}, Rayleigh fast {b_fast:.2e}, Rayleigh per message with 4 pilots {b_pilots:.2e}");
    // Rayleigh BPSK at 10 dB has BER ≈ 0.023; AWGN ≈ 4·10⁻⁶.
    assert!(b_fast > 0.005 && b_fast > 10.0 * b_awgn, "{b_fast} vs {b_awgn}");
    assert!(b_pilots > b_awgn, "{b_pilots} vs {b_awgn}");
    for r in &awgn {
        // BPSK, no pilots: one channel use per bit.
        assert_eq!(num(r, "channel_uses"), num(r, "bits_sent"));
    }
    for r in &pilots {
        // Four tiles, one gain per caption, four pilots each.
        assert_eq!(num(r, "channel_uses"), num(r, "bits_sent") + 16.0);
        assert!(num(r, "channel_uses_per_pixel") > 0.0);
    }
}

/// The 1-based line of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.starts_with(needle)).unwrap() + 1
}

#[test]
fn bad_fading_keys_fail_validation_at_their_line() {
    let imgs = std::path::Path::new("assets/samples");
    // A misspelt model: serde's message, at the [channel] line, with the choices.
    let g = with_channel(imgs, 10.0, "model = \"rayleig\"");
    let all = diagnostics(&g).join("\n");
    println!("{all}");
    let at = format!("test.toml:{}:", line_of(&g, "model = \"rayleig\""));
    assert!(all.contains(&at), "{all}");
    assert!(
        all.contains("rayleig") && all.contains("rayleigh") && all.contains("rician"),
        "{all}"
    );
    assert!(all.contains("inherited from [channel]"), "{all}");

    // A K factor without `rician`: the stage that inherits it, saying what to do.
    let g = with_channel(imgs, 10.0, "k_factor = 6.0");
    let all = diagnostics(&g).join("\n");
    println!("{all}");
    let at = format!("test.toml:{}:", line_of(&g, "[stage.text_channel]"));
    assert!(all.contains(&at), "{all}");
    assert!(
        all.contains("`k_factor` only applies to model = \"rician\"") && all.contains("remove `k_factor`"),
        "{all}"
    );

    // Zero pilots: at the csi line.
    let g = with_channel(imgs, 10.0, "model = \"rayleigh\"\ncsi = { pilots = 0 }");
    let all = diagnostics(&g).join("\n");
    println!("{all}");
    let at = format!("test.toml:{}:", line_of(&g, "csi = "));
    assert!(all.contains(&at), "{all}");
    assert!(all.contains("at least 1 pilot symbol"), "{all}");

    // Pilots cannot follow fast fading; a valid fading setting passes.
    let g = with_channel(
        imgs,
        10.0,
        "model = \"rayleigh\"\ncoherence = \"symbol\"\ncsi = { pilots = 2 }",
    );
    let all = diagnostics(&g).join("\n");
    assert!(all.contains("pilots cannot track fast fading"), "{all}");
    let g = with_channel(
        imgs,
        10.0,
        "model = \"rician\"\nk_factor = 6.0\ncoherence = 64\ncsi = { pilots = 4 }\nsnr_unit = \"ebn0\"",
    );
    assert_eq!(diagnostics(&g), Vec::<String>::new());
}
