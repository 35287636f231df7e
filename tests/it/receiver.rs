//! The paper's receiver (`reconstruct model = "sd_ip_adapter"`, `evaluate lpips = true`) in the
//! VLM-CSC baseline graph (`graphs/vlm-csc.toml`): it refuses to start without the exports,
//! naming each command, and runs end to end on the tiny-random fixtures of `models/fixtures/`
//! (the Multi-SC graph's run is in `paper.rs`).

use std::process::Command;

use crate::support::{bin, make_photos, num, read_csv, root, run_graph, texts};

fn vlm_csc() -> std::path::PathBuf {
    root().join("graphs/vlm-csc.toml")
}

#[test]
fn vlm_csc_graph_without_exports_stops_naming_each_export_command() {
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
        .arg(vlm_csc())
        .arg("--out")
        .arg(&out_dir)
        .args(["--no-progress", "--metrics", "off", "--set"])
        .arg(format!("stage.source.path={}", imgs.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    for (model, folder) in [
        ("llava", "llava"),
        ("bart", "bart"),
        ("sd_ip_adapter", "sd15_ip"),
        ("lpips", "lpips-onnx"),
        ("clip", "clip"),
    ] {
        let cmd = format!(
            "`python models/export/{model}.py --out {}`",
            assets.join("models").join(folder).display()
        );
        assert_eq!(stderr.matches(&cmd).count(), 1, "one message with {cmd}:\n{stderr}");
    }
    assert!(!out_dir.join("summary.json").exists(), "nothing ran");
}

#[test]
fn vlm_csc_graph_runs_end_to_end_on_the_tiny_fixtures_text_only() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 2);
    let out = dir.path().join("out");
    let fixtures = root().join("models/fixtures");
    let sets = [
        format!("stage.source.path={}", imgs.display()),
        format!("stage.caption.model_dir={}", fixtures.join("llava").display()),
        format!("stage.correct.model_dir={}", fixtures.join("bart").display()),
        format!("stage.reconstruct.model_dir={}", fixtures.join("sd15_ip").display()),
        format!("stage.evaluate.lpips_dir={}", fixtures.join("lpips").display()),
        format!("stage.evaluate.clip_dir={}", fixtures.join("clip").display()),
        "stage.caption.max_new_tokens=6".to_string(),
        "stage.reconstruct.steps=2".to_string(),
        "stage.reconstruct.generate_size=[64, 64]".to_string(),
    ];
    let mut args: Vec<&str> = vec!["--snr", "30"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let o = run_graph(&vlm_csc(), &out, &args);
    assert_eq!(o.status.code(), Some(0));
    let rows = read_csv(&out.join("metrics.csv"));
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(texts(r, "sent_texts").len(), 1, "one caption of the whole image");
        let lpips = num(r, "lpips");
        assert!(lpips > 0.0 && lpips.is_finite(), "lpips = {lpips}");
        let clip = num(r, "clip_cosine");
        assert!(clip > -1.0 && clip < 1.0, "clip_cosine = {clip}");
        // One caption, `prompt_mode = "concat"`: one call of two rows (guidance) a step.
        assert_eq!(num(r, "sd_unet_evals"), 2.0 * 2.0);
        let p = out.join("reconstructions").join(format!("{}.png", r["name"]));
        let img = image::open(&p).unwrap();
        // Generated at 64×64 and resized to the stage's `size` (no segmentation, so no
        // `frame_size` reaches it); LPIPS compares at the original's size.
        assert_eq!((img.width(), img.height()), (512, 512), "{}", p.display());
    }
}
