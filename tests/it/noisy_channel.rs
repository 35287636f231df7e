//! `correct model = "noisy_channel"` in a graph, and the text metrics of `evaluate`
//! (issue 17, items 4 and 5). The corrector's accuracy against SymSpell over hundreds of
//! captions is measured in `models/tests/noisy_channel.rs`.

use crate::support::{make_photos, num, read_csv, run_text, text_only_graph};

fn mean(rows: &[std::collections::HashMap<String, String>], col: &str) -> f64 {
    rows.iter().map(|r| num(r, col)).sum::<f64>() / rows.len() as f64
}

#[test]
fn noisy_channel_metrics_are_reproducible_and_beat_the_received_text() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 4);
    let run = |name: &str, seed: u64| {
        let out = dir.path().join(name);
        let s = run_text(&text_only_graph(&imgs, 2.0, seed, "noisy_channel"), &out);
        assert_eq!(s.failed, 0);
        std::fs::read(out.join("metrics.csv")).unwrap()
    };
    let (a, b) = (run("a", 7), run("b", 7));
    assert!(a == b, "two runs with seed 7 wrote different metrics.csv");
    let rows = read_csv(&dir.path().join("a/metrics.csv"));
    assert_eq!(rows.len(), 4);
    for col in ["wer", "cer", "wer_received", "cer_received"] {
        assert!(rows.iter().all(|r| num(r, col).is_finite()), "column {col}");
    }
    // `object_recall` is empty when the sent texts name no COCO class, else a share
    // (the colour word "orange" is also a COCO class), never NaN.
    for r in &rows {
        let v = r.get("object_recall").map(String::as_str).unwrap_or("");
        assert!(
            v.is_empty() || (0.0..=1.0).contains(&v.parse::<f64>().unwrap()),
            "object_recall {v:?}"
        );
    }
    let (wer, received) = (mean(&rows, "wer"), mean(&rows, "wer_received"));
    println!(
        "2 dB BPSK, 4 frames: WER noisy channel {wer:.3}, received {received:.3}, CER {:.3} vs {:.3}",
        mean(&rows, "cer"),
        mean(&rows, "cer_received")
    );
    assert!(received > 0.05, "the comparison needs a noisy channel");
    assert!(wer < received / 2.0, "noisy channel WER {wer} vs received {received}");
}

#[test]
fn an_ideal_link_leaves_the_captions_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 2);
    let s = run_text(&text_only_graph(&imgs, 30.0, 7, "noisy_channel"), dir.path());
    assert_eq!(s.failed, 0);
    let rows = read_csv(&dir.path().join("metrics.csv"));
    for r in &rows {
        assert_eq!(num(r, "wer"), 0.0);
        assert_eq!(num(r, "cer"), 0.0);
        assert_eq!(num(r, "wer_received"), 0.0);
    }
}
