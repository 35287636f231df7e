//! `dataflow sweep` and the baselines it compares: BPG-LDPC family (`codec_channel`)
//! and deep JSCC (`jscc`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::support::{bin, make_photos, num, read_csv, root};

/// Three 192x128 crops of test photos (small, so the sweep stays quick in CI).
fn three_images(dir: &Path) {
    let full = dir.with_file_name("full-size");
    for (n, (x, y)) in make_photos(&full, 3).iter().zip([(300, 200), (200, 100), (350, 150)]) {
        let img = image::open(full.join(format!("{n}.png"))).unwrap().to_rgb8();
        let crop = image::imageops::crop_imm(&img, x, y, 192, 128).to_image();
        std::fs::create_dir_all(dir).unwrap();
        crop.save(dir.join(format!("{n}.png"))).unwrap();
    }
}

fn sweep(out: &Path, images: &Path, cache: &Path) -> std::process::Output {
    let o = Command::new(bin())
        .current_dir(root())
        .env("XDG_CACHE_HOME", cache)
        .env("RUST_LOG", "warn")
        .args([
            "sweep",
            "graphs/bpg-ldpc.toml",
            "graphs/deep-jscc.toml",
            "--snr",
            "-4:8:6",
            "--seeds",
            "2",
        ])
        .arg("--images")
        .arg(images)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "sweep failed");
    o
}

fn mean(rows: &[HashMap<String, String>], graph: &str, snr: &str, col: &str) -> f64 {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r["graph"] == graph && r["snr_db"] == snr)
        .map(|r| num(r, col))
        .collect();
    assert!(!v.is_empty(), "no rows for {graph} at {snr}");
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn a_sweep_writes_agreeing_csvs_plots_and_report_and_resumes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    three_images(&images);
    let cache = tmp.path().join("cache");
    let a = tmp.path().join("a");
    sweep(&a, &images, &cache);

    // One row per (graph, snr, seed, image): 2 × 3 × 2 × 3.
    let rows = read_csv(&a.join("results.csv"));
    assert_eq!(rows.len(), 36);
    for g in ["bpg-ldpc", "deep-jscc"] {
        for snr in ["-4", "2", "8"] {
            for seed in ["1", "2"] {
                let n = rows
                    .iter()
                    .filter(|r| r["graph"] == g && r["snr_db"] == snr && r["seed"] == seed)
                    .count();
                assert_eq!(n, 3, "{g} {snr} dB seed {seed}");
            }
        }
    }

    // The summary is the mean of the rows, with a CI around it.
    let summary = read_csv(&a.join("summary.csv"));
    for s in summary.iter().filter(|s| s["metric"] == "psnr_db") {
        let m = mean(&rows, &s["graph"], &s["snr_db"], "psnr_db");
        assert!((num(s, "mean") - m).abs() < 1e-5, "{s:?} vs {m}");
        assert_eq!(num(s, "n"), 6.0);
        assert!(num(s, "ci95_low") <= m && m <= num(s, "ci95_high"));
    }
    assert_eq!(summary.iter().filter(|s| s["metric"] == "psnr_db").count(), 6);

    // The cliff: the digital link loses every image below its threshold and none above;
    // deep JSCC degrades gracefully and improves with the SNR.
    assert_eq!(mean(&rows, "bpg-ldpc", "-4", "image_lost"), 1.0);
    assert_eq!(mean(&rows, "bpg-ldpc", "8", "image_lost"), 0.0);
    assert!(mean(&rows, "bpg-ldpc", "8", "psnr_db") > mean(&rows, "bpg-ldpc", "-4", "psnr_db") + 8.0);
    let j: Vec<f64> = ["-4", "2", "8"]
        .iter()
        .map(|s| mean(&rows, "deep-jscc", s, "psnr_db"))
        .collect();
    assert!(j[0] < j[1] && j[1] < j[2], "deep JSCC PSNR by SNR: {j:?}");
    assert!(j[0] > 12.0, "deep JSCC should not collapse at -4 dB: {j:?}");

    // Plots and report.
    for m in ["psnr_db", "ssim", "image_lost"] {
        let png = a.join("plots").join(format!("{m}.png"));
        let img = image::open(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert_eq!((img.width(), img.height()), (900, 560));
    }
    let html = std::fs::read_to_string(a.join("index.html")).unwrap();
    for needle in [
        "plots/psnr_db.png",
        "bpg-ldpc",
        "deep-jscc",
        "<h3>-4 dB</h3>",
        "<h3>8 dB</h3>",
        "results.csv",
    ] {
        assert!(html.contains(needle), "index.html lacks {needle}");
    }
    // The table in the report shows the summary's means.
    let s = summary
        .iter()
        .find(|s| s["graph"] == "deep-jscc" && s["snr_db"] == "8" && s["metric"] == "psnr_db")
        .unwrap();
    assert!(
        html.contains(&format!("{:.4} ±", num(s, "mean"))),
        "report lacks the mean {}",
        s["mean"]
    );
    // Every image in the report exists.
    for src in html.split("src=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]) {
        assert!(a.join(src).is_file(), "index.html shows missing {src}");
    }
    assert!(
        html.matches("<img src=\"report/").count() >= 3 * 3 * 2,
        "the grids show originals and reconstructions"
    );

    // Same settings into another folder: identical CSVs (seeded noise, cached codec).
    let b = tmp.path().join("b");
    sweep(&b, &images, &cache);
    for f in ["results.csv", "summary.csv"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }

    // Resume: a run interrupted half-way (no done.json) is run again, the others are kept.
    let run = b.join("runs/deep-jscc/snr2/seed2");
    std::fs::remove_file(run.join("done.json")).unwrap();
    std::fs::remove_file(run.join("metrics.csv")).unwrap();
    let o = sweep(&b, &images, &cache);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resumed: 11 of 12 runs were already done"), "{err}");
    assert_eq!(
        std::fs::read(a.join("results.csv")).unwrap(),
        std::fs::read(b.join("results.csv")).unwrap()
    );

    // Another setting in the same folder is refused rather than mixed in.
    let o = Command::new(bin())
        .current_dir(root())
        .env("XDG_CACHE_HOME", &cache)
        .args(["sweep", "graphs/deep-jscc.toml", "--snr", "0", "--seeds", "1", "--out"])
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds a sweep with other settings"));
}

#[test]
fn a_graph_without_a_csv_sink_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("g.toml");
    std::fs::write(
        &g,
        "[graph]\nname = \"x\"\n[stage.source]\nkind = \"synthetic\"\nframes = 2\n[stage.sink]\nkind = \"null_sink\"\ninputs = [\"source\"]\n",
    )
    .unwrap();
    let o = Command::new(bin())
        .current_dir(root())
        .arg("sweep")
        .arg(&g)
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("needs a `csv_sink` stage"), "{err}");
}
