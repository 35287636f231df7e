//! `dataflow sweep --match-bandwidth` (issue 23, item 2): every row reports its channel
//! uses, and a codec baseline's byte budget is sized so its channel uses per image are
//! within 5 % of the named system's.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::support::{bin, make_photos, num, read_csv, root};

/// Three 192x128 crops of test photos (small, so the sweep stays quick).
fn three_images(dir: &Path) {
    let full = dir.with_file_name("full-size");
    for (n, (x, y)) in make_photos(&full, 3).iter().zip([(300, 200), (200, 100), (350, 150)]) {
        let img = image::open(full.join(format!("{n}.png"))).unwrap().to_rgb8();
        let crop = image::imageops::crop_imm(&img, x, y, 192, 128).to_image();
        std::fs::create_dir_all(dir).unwrap();
        crop.save(dir.join(format!("{n}.png"))).unwrap();
    }
}

/// The BPG-LDPC graph with JPEG (no external tool) over 16-QAM at rate 3/4, at a budget
/// far from deep JSCC's cost: the sweep has to find the budget.
fn baseline(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("graphs/bpg-ldpc.toml"))
        .unwrap()
        .replace("name = \"bpg-ldpc\"", "name = \"jpeg-ldpc\"")
        .replace("codec = \"heif\"", "codec = \"jpeg\"")
        .replace("rate = 0.5", "rate = 0.75\nmodulation = \"qam16\"")
        .replace("bpp = 0.1", "bpp = 0.2");
    assert!(
        text.contains("codec = \"jpeg\"") && text.contains("qam16"),
        "graphs/bpg-ldpc.toml changed shape"
    );
    let path = dir.join("jpeg-ldpc.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn mean_uses(rows: &[HashMap<String, String>], graph: &str) -> f64 {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r["graph"] == graph)
        .map(|r| num(r, "channel_uses"))
        .collect();
    assert!(!v.is_empty(), "no rows of {graph}");
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn match_bandwidth_sizes_the_codec_baseline_to_deep_jscc() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    three_images(&images);
    let graph = baseline(tmp.path());
    let out = tmp.path().join("out");
    let o = Command::new(bin())
        .current_dir(root())
        .env("XDG_CACHE_HOME", tmp.path().join("cache"))
        .env("RUST_LOG", "warn")
        .args(["sweep", "graphs/deep-jscc.toml"])
        .arg(&graph)
        .args(["--snr", "0,8", "--seeds", "1", "--match-bandwidth", "deep-jscc"])
        .arg("--images")
        .arg(&images)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    println!("{stderr}");
    assert_eq!(o.status.code(), Some(0), "sweep failed");

    // Every row carries its cost; per pixel is per image over 192x128.
    let rows = read_csv(&out.join("results.csv"));
    assert_eq!(rows.len(), 2 * 2 * 3);
    for r in &rows {
        let (uses, per_pixel) = (num(r, "channel_uses"), num(r, "channel_uses_per_pixel"));
        assert!(uses > 0.0, "{r:?}");
        assert!((per_pixel - uses / (192.0 * 128.0)).abs() < 1e-9, "{r:?}");
    }
    // Deep JSCC's cost is its bandwidth ratio: 1/4 channel use per pixel.
    let target = mean_uses(&rows, "deep-jscc");
    assert!((target - 0.25 * 192.0 * 128.0).abs() < 1.0, "deep JSCC uses {target}");
    // Before matching, the baseline costs far less; the sweep found a budget within 5 %.
    let chosen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bandwidth.json")).unwrap()).unwrap();
    let bpp = chosen["baselines"][0]["bpp"][0][1].as_f64().unwrap();
    assert!(bpp > 0.4, "bpp 0.2 was already enough? chose {bpp}");
    let uses = mean_uses(&rows, "jpeg-ldpc");
    assert!(
        (uses - target).abs() / target < 0.05,
        "jpeg-ldpc uses {uses} channel uses per image, deep JSCC {target}"
    );
    // At both SNRs (what the transmitter sends does not depend on the channel).
    for snr in ["0", "8"] {
        let at: Vec<&HashMap<String, String>> = rows
            .iter()
            .filter(|r| r["graph"] == "jpeg-ldpc" && r["snr_db"] == snr)
            .collect();
        let m = at.iter().map(|r| num(r, "channel_uses")).sum::<f64>() / at.len() as f64;
        assert!((m - uses).abs() < 1e-9, "{snr} dB: {m} vs {uses}");
    }
    // The report says what was chosen and plots quality against channel uses per pixel.
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        html.contains("--match-bandwidth deep-jscc"),
        "report lacks the bandwidth note"
    );
    assert!(
        html.contains(&format!("link.bpp = {bpp}")),
        "report lacks the chosen budget"
    );
    assert!(out.join("plots/psnr_db-bandwidth.png").is_file());
}

#[test]
fn match_bandwidth_names_the_systems_when_the_target_is_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    three_images(&images);
    let o = Command::new(bin())
        .current_dir(root())
        .args([
            "sweep",
            "graphs/deep-jscc.toml",
            "--snr",
            "0",
            "--seeds",
            "1",
            "--match-bandwidth",
            "multisc",
        ])
        .arg("--images")
        .arg(&images)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no such system") && stderr.contains("deep-jscc"),
        "{stderr}"
    );
}
