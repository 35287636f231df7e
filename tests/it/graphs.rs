//! The shipped graphs: each validates and renders; the offline ones run end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use dataflow_engine::GraphSource;

use crate::support::{bin, copy_kodak, num, read_csv, registry, root, run_graph};

/// Every `graphs/*.toml`, sorted.
pub fn shipped() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("graphs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(v.len() >= 2, "graphs/ should hold the shipped graphs: {v:?}");
    v
}

#[test]
fn every_shipped_graph_validates_in_process_and_with_the_cli() {
    let reg = registry();
    for g in shipped() {
        let src = GraphSource::load(&g, &[]).unwrap_or_else(|d| panic!("{}: {d}", g.display()));
        let plan = dataflow_engine::plan(&src, &reg).unwrap_or_else(|d| panic!("{}: {d}", g.display()));
        assert!(plan.stages.len() >= 5, "{}: {} stages", g.display(), plan.stages.len());
    }
    let out = Command::new(bin())
        .current_dir(root())
        .arg("validate")
        .args(shipped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    for g in shipped() {
        let line = format!("{}: ok (", g.display());
        assert!(stdout.contains(&line), "no `{line}` in {stdout}");
    }
}

#[test]
fn every_shipped_graph_renders_as_dot_and_mermaid() {
    for g in shipped() {
        let src = GraphSource::load(&g, &[]).unwrap();
        let plan = dataflow_engine::plan(&src, &registry()).unwrap();
        for format in ["dot", "mermaid"] {
            let out = Command::new(bin())
                .current_dir(root())
                .arg("graph")
                .arg(&g)
                .args(["--format", format])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                g.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            match format {
                "dot" => {
                    assert!(text.trim_start().starts_with("digraph"), "{text}");
                    assert!(text.contains("\"source\" -> "), "{}: {text}", g.display());
                }
                _ => {
                    assert!(text.contains("flowchart") || text.contains("graph "), "{text}");
                    assert!(text.contains("-->"), "{text}");
                }
            }
            for st in &plan.stages {
                assert!(text.contains(&st.id), "{} {format} lacks stage {}", g.display(), st.id);
            }
        }
    }
}

/// Checks a finished run of a shipped offline graph over the images named `names`.
fn check_run(out: &Path, names: &[&str]) {
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["frames_in"].as_u64(), Some(names.len() as u64), "{summary}");
    assert_eq!(summary["failed"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["dropped"].as_u64(), Some(0), "{summary}");
    assert!(summary["fatal"].is_null(), "{summary}");
    for n in names {
        for dir in ["reconstructions", "sheets"] {
            let p = out.join(dir).join(format!("{n}.png"));
            let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(img.width() > 0 && img.height() > 0);
        }
    }
    let rows = read_csv(&out.join("metrics.csv"));
    assert_eq!(rows.len(), names.len());
    let mut seen: Vec<&str> = rows.iter().map(|r| r["name"].as_str()).collect();
    seen.sort_unstable();
    let mut want = names.to_vec();
    want.sort_unstable();
    assert_eq!(seen, want, "one CSV row per frame");
    for r in &rows {
        let (psnr, ssim, cos) = (num(r, "psnr_db"), num(r, "ssim"), num(r, "cosine"));
        let (bleu1, bleu4, ber) = (num(r, "bleu1"), num(r, "bleu4"), num(r, "ber"));
        println!(
            "{:<18} psnr {psnr:6.2} dB  ssim {ssim:.3}  cosine {cos:.3}  bleu4 {bleu4:.3}  ber {ber:.2e}",
            r["name"]
        );
        assert!(psnr.is_finite() && psnr > 0.0 && psnr <= 100.0, "psnr {psnr}");
        assert!((-1.0..=1.0).contains(&ssim), "ssim {ssim}");
        assert!((0.0..=1.0).contains(&cos), "cosine {cos}");
        assert!(
            (0.0..=1.0).contains(&bleu1) && (0.0..=1.0).contains(&bleu4),
            "bleu {bleu1} {bleu4}"
        );
        assert!((0.0..=1.0).contains(&ber), "ber {ber}");
        assert!(num(r, "bits_sent") > 0.0);
        // The reconstruction has the frame's size.
        let orig = image::image_dimensions(find_input(&r["name"])).unwrap();
        let rec = image::image_dimensions(out.join("reconstructions").join(format!("{}.png", r["name"]))).unwrap();
        assert_eq!(rec, orig, "{}", r["name"]);
    }
}

/// The source file of a frame name (samples, or the Kodak folder of `DATAFLOW_KODAK`).
fn find_input(name: &str) -> PathBuf {
    let dirs = [Some(crate::support::samples_dir()), crate::support::kodak_dir()];
    for dir in dirs.iter().flatten() {
        for ext in ["png", "jpg"] {
            let p = dir.join(format!("{name}.{ext}"));
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("no input file for {name}")
}

const KODAK: [&str; 4] = ["kodim03", "kodim07", "kodim15", "kodim23"];

fn sample_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(crate::support::samples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// The graph on the sample photos of the set-up, its own source folder.
fn runs_end_to_end(graph: &str) {
    let g = root().join("graphs").join(graph);
    let dir = tempfile::tempdir().unwrap();
    let samples = sample_names();
    assert_eq!(samples.len(), 5, "the set-up puts 5 sample photos in assets/samples");
    let out = dir.path().join("samples");
    let o = run_graph(&g, &out, &["--set", "stage.source.path=assets/samples"]);
    assert_eq!(o.status.code(), Some(0));
    let names: Vec<&str> = samples.iter().map(String::as_str).collect();
    check_run(&out, &names);
}

/// The graph on four Kodak images copied to a folder of their own.
fn runs_end_to_end_on_kodak(graph: &str) {
    let g = root().join("graphs").join(graph);
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("kodak");
    copy_kodak(&imgs, &KODAK);
    let out = dir.path().join("kodak-out");
    let o = run_graph(&g, &out, &["--set", &format!("stage.source.path={}", imgs.display())]);
    assert_eq!(o.status.code(), Some(0));
    check_run(&out, &KODAK);
}

#[test]
fn multisc_lite_runs_end_to_end_on_samples() {
    runs_end_to_end("multisc-lite.toml");
}

#[test]
fn single_text_lite_runs_end_to_end_on_samples() {
    runs_end_to_end("single-text-lite.toml");
}

#[test]
fn vlm_csc_lite_runs_end_to_end_on_samples() {
    runs_end_to_end("vlm-csc-lite.toml");
}

#[test]
#[ignore = "Kodak24: runs with DATAFLOW_KODAK=DIR"]
fn kodak24_multisc_lite_runs_end_to_end() {
    runs_end_to_end_on_kodak("multisc-lite.toml");
}

#[test]
#[ignore = "Kodak24: runs with DATAFLOW_KODAK=DIR"]
fn kodak24_single_text_lite_runs_end_to_end() {
    runs_end_to_end_on_kodak("single-text-lite.toml");
}

#[test]
#[ignore = "Kodak24: runs with DATAFLOW_KODAK=DIR"]
fn kodak24_vlm_csc_lite_runs_end_to_end() {
    runs_end_to_end_on_kodak("vlm-csc-lite.toml");
}

/// The image baselines have no texts: every frame arrives, at the frame's size, and
/// at the graphs' 10 dB the digital link loses nothing.
#[test]
fn baseline_graphs_run_end_to_end_on_the_samples() {
    let samples = sample_names();
    for graph in ["bpg-ldpc.toml", "deep-jscc.toml"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let o = run_graph(&root().join("graphs").join(graph), &out, &[]);
        assert_eq!(o.status.code(), Some(0), "{graph}");
        let rows = read_csv(&out.join("metrics.csv"));
        assert_eq!(rows.len(), samples.len(), "{graph}");
        for r in &rows {
            let psnr = num(r, "psnr_db");
            println!("{graph} {:<18} psnr {psnr:6.2} dB", r["name"]);
            assert!(psnr > 18.0, "{graph} {}: {psnr} dB", r["name"]);
            let orig = image::image_dimensions(find_input(&r["name"])).unwrap();
            let rec = image::image_dimensions(out.join("reconstructions").join(format!("{}.png", r["name"]))).unwrap();
            assert_eq!(rec, orig, "{graph} {}", r["name"]);
            if graph == "bpg-ldpc.toml" {
                assert_eq!(num(r, "image_lost"), 0.0);
                assert!(num(r, "codec_bytes") * 8.0 <= 0.1 * f64::from(orig.0 * orig.1) + 8.0);
                assert!(num(r, "bits_sent") > 0.0);
            } else {
                assert!((num(r, "channel_uses_per_pixel") - 0.25).abs() < 0.01);
            }
        }
    }
}
