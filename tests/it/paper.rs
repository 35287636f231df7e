//! The paper-tier graph (`graphs/multisc.toml`): it validates, it refuses to start without the
//! exported models (naming the export commands), and it runs end to end on the tiny-random
//! fixtures of `models/fixtures/`.

use std::process::Command;

use dataflow_models::channel::decode_text_lossy;

use crate::support::{bin, make_photos, num, read_csv, root, run_graph, texts};

fn multisc() -> std::path::PathBuf {
    root().join("graphs/multisc.toml")
}

#[test]
fn paper_graph_validates() {
    let out = Command::new(bin())
        .current_dir(root())
        .arg("validate")
        .arg(multisc())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("multisc.toml: ok ("), "{stdout}");
}

#[test]
fn paper_graph_refuses_an_unknown_prompt_mode_and_a_global_weight_past_one() {
    for (set, want) in [
        ("stage.reconstruct.prompt_mode=tiles", "prompt_mode"),
        ("stage.reconstruct.global_weight=1.5", "global_weight"),
    ] {
        let out = Command::new(bin())
            .current_dir(root())
            .arg("validate")
            .arg(multisc())
            .args(["--set", set])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(0), "{set}: {text}");
        assert!(text.contains("reconstruct") && text.contains(want), "{set}: {text}");
    }
    let ok = Command::new(bin())
        .current_dir(root())
        .arg("validate")
        .arg(multisc())
        .args(["--set", "stage.reconstruct.prompt_mode=regional"])
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn paper_graph_without_exports_stops_naming_each_export_command() {
    let dir = tempfile::tempdir().unwrap();
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 1);
    let out_dir = dir.path().join("out");
    let o = Command::new(bin())
        .current_dir(root())
        .env("DATAFLOW_ASSETS", &assets)
        .arg("run")
        .arg(multisc())
        .arg("--out")
        .arg(&out_dir)
        .args(["--no-progress", "--metrics", "off", "--set"])
        .arg(format!("stage.source.path={}", imgs.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    println!("{stderr}");
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    for (stage, model, folder) in [
        ("segment", "fcn", "fcn"),
        ("caption", "llava", "llava"),
        ("correct", "bart", "bart"),
        ("reconstruct", "sd_ip_adapter", "sd15_ip"),
        ("evaluate", "lpips", "lpips-onnx"),
        ("evaluate", "clip", "clip"),
    ] {
        let cmd = format!(
            "`python models/export/{model}.py --out {}`",
            assets.join("models").join(folder).display()
        );
        assert_eq!(
            stderr.matches(&cmd).count(),
            1,
            "one message for {stage} with {cmd}:\n{stderr}"
        );
    }
    assert!(!out_dir.join("summary.json").exists(), "nothing ran");
}

#[test]
fn paper_graph_runs_end_to_end_on_the_tiny_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 2);
    let out = dir.path().join("out");
    let fixtures = root().join("models/fixtures");
    let sets = [
        format!("stage.source.path={}", imgs.display()),
        format!("stage.segment.model_dir={}", fixtures.join("fcn").display()),
        format!("stage.caption.model_dir={}", fixtures.join("llava").display()),
        format!("stage.correct.model_dir={}", fixtures.join("bart").display()),
        format!("stage.reconstruct.model_dir={}", fixtures.join("sd15_ip").display()),
        format!("stage.evaluate.lpips_dir={}", fixtures.join("lpips").display()),
        format!("stage.evaluate.clip_dir={}", fixtures.join("clip").display()),
        // Short captions keep the run quick; the tiny models never say stop.
        "stage.caption.max_new_tokens=6".to_string(),
        // The tiny UNet at its own size (64×64, latents 8×8), a few steps.
        "stage.reconstruct.steps=3".to_string(),
        "stage.reconstruct.generate_size=[64, 64]".to_string(),
        // `--set` reaches the prompt mode (the graph's own is "concat"): each tile's caption
        // draws its own region.
        "stage.reconstruct.prompt_mode=regional".to_string(),
    ];
    let mut args: Vec<&str> = vec!["--snr", "30"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let o = run_graph(&multisc(), &out, &args);
    assert_eq!(o.status.code(), Some(0));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["frames_in"].as_u64(), Some(2), "{summary}");
    assert_eq!(summary["failed"].as_u64(), Some(0), "{summary}");
    let rows = read_csv(&out.join("metrics.csv"));
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let sent = texts(r, "sent_texts");
        assert_eq!(sent.len(), 4, "four tile captions: {sent:?}");
        assert!(sent.iter().all(|t| !t.is_empty() && !t.contains("<lost>")), "{sent:?}");
        // No bit errors at 30 dB: the receiver gets the captions as the channel's text
        // decoding gives them (the tiny model's random tokens include partial UTF-8 and
        // control characters, which it drops).
        assert_eq!(num(r, "bit_errors"), 0.0);
        let clean: Vec<String> = sent.iter().map(|t| decode_text_lossy(t.as_bytes())).collect();
        assert_eq!(texts(r, "texts"), clean, "30 dB: received = sent");
        // BART (random weights) rewrites what it is given: the corrector really ran.
        let corrected = texts(r, "corrected");
        assert_eq!(corrected.len(), 4);
        assert_ne!(corrected, clean, "BART output equals its input");
        // SD + IP-Adapter rebuilt the frame and LPIPS scored it.
        let lpips = num(r, "lpips");
        assert!(lpips > 0.0 && lpips.is_finite(), "lpips = {lpips}");
        let clip = num(r, "clip_cosine");
        assert!(clip > -1.0 && clip < 1.0, "clip_cosine = {clip}");
        assert!(num(r, "sd_seconds") > 0.0);
        // Regional, 3 steps: per step the unconditional row, one row per tile caption and the
        // global prompt (a caption the tiny models left empty has no row of its own).
        let said = corrected.iter().filter(|t| !t.trim().is_empty()).count() as f64;
        assert_eq!(num(r, "sd_unet_evals"), 3.0 * (said + 2.0), "{corrected:?}");
        assert_eq!(num(r, "sd_tokens_dropped"), 0.0);
        for d in ["reconstructions", "sheets"] {
            let p = out.join(d).join(format!("{}.png", r["name"]));
            assert!(p.is_file(), "{}", p.display());
        }
    }
}

/// `segment model = "fcn"` gives the frame and the slice the VOC label of the main object:
/// on the fixture's own test image (at its own size, `resize = 0`) the one PyTorch found.
#[test]
fn paper_fcn_segment_labels_the_main_object_as_pytorch_does() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = root().join("models/fixtures/fcn");
    let imgs = dir.path().join("in");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::copy(fixture.join("image.png"), imgs.join("image.png")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
    let graph = format!(
        r#"
[graph]
name = "fcn-label"
[stage.source]
kind = "image_dir"
path = "{imgs}"
[stage.segment]
kind = "segment"
inputs = ["source"]
model = "fcn"
model_dir = "{fixture}"
resize = 0
provider = "cpu"
[stage.frames]
kind = "csv_sink"
inputs = ["segment.out"]
path = "frames.csv"
[stage.slices]
kind = "csv_sink"
inputs = ["segment.slice"]
path = "slices.csv"
"#,
        imgs = imgs.display(),
        fixture = fixture.display()
    );
    let out = dir.path().join("out");
    let summary = crate::support::run_text(&graph, &out);
    assert_eq!(summary.failed, 0);
    let want = expected["main_label"].as_str().unwrap();
    for file in ["frames.csv", "slices.csv"] {
        let rows = read_csv(&out.join(file));
        assert_eq!(rows.len(), 1, "{file}");
        assert_eq!(rows[0]["label"], want, "{file}");
    }
}
