//! `graphs/multisc-torch.toml` and `stages/torch/*.py`: the paper's LLaVA, BART and SD 1.5 +
//! IP-Adapter as Python stages (transformers, diffusers), run here on tiny random checkpoints
//! that `stages/torch/tiny_models.py` builds locally (nothing is downloaded).
//!
//! They need a Python with torch, transformers and diffusers: `$DATAFLOW_TORCH_PYTHON`, else
//! `.venv-torch/bin/python` (made by `scripts/setup-torch`). Without one each test prints
//! `SKIPPED <test name>: torch not installed (scripts/setup-torch)` and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{num, read_csv, root, run_graph, texts};

/// The interpreter with the torch stack, or `None` after printing that `test` is skipped.
fn torch_python(test: &str) -> Option<PathBuf> {
    let py = std::env::var_os("DATAFLOW_TORCH_PYTHON")
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| root().join(".venv-torch/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", "import torch, transformers, diffusers, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED {test}: torch not installed (scripts/setup-torch)");
        return None;
    }
    Some(py)
}

/// Builds the tiny checkpoints named in `only` (`llava,bart,sd`) under `dir`.
fn tiny_models(py: &Path, dir: &Path, only: &str) {
    let o = Command::new(py)
        .current_dir(root())
        .args(["stages/torch/tiny_models.py", "--only", only, "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tiny_models.py failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes `n` 64×64 PNGs (a disc on a gradient, moving with `i`) into `dir`.
fn make_images(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let (cx, cy) = (20 + 8 * i as i32, 32);
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            let (dx, dy) = (x as i32 - cx, y as i32 - cy);
            if dx * dx + dy * dy < 12 * 12 {
                image::Rgb([220, 40, 30])
            } else {
                image::Rgb([(x * 4) as u8, (y * 4) as u8, 150])
            }
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
}

/// `args` of `reconstruct.py` for the tiny SD under `models`.
fn sd_args(models: &Path) -> serde_json::Value {
    serde_json::json!({
        "model": models.join("sd"), "ip_adapter": models.join("ip"), "ip_subfolder": "",
        "ip_weight_name": "ip-adapter.safetensors", "steps": 3, "guidance_scale": 7.5, "ip_scale": 0.6,
        "generate_size": [64, 64], "seed": 7, "device": "cpu", "threads": 1,
    })
}

/// A JSON object of strings, numbers and arrays as a TOML inline table (for `--set`).
fn inline_table(v: &serde_json::Value) -> String {
    let keys: Vec<String> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    format!("{{ {} }}", keys.join(", "))
}

/// The summary's counters.
fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn python_torch_multisc_graph_runs_on_tiny_models() {
    let Some(py) = torch_python("python_torch_multisc_graph_runs_on_tiny_models") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    tiny_models(&py, &models, "llava,bart,sd");
    let imgs = dir.path().join("in");
    make_images(&imgs, 3);
    let out = dir.path().join("out");
    let fixtures = root().join("models/fixtures");
    let py = py.display();
    let sets = [
        format!("stage.source.path={}", imgs.display()),
        format!("stage.segment.model_dir={}", fixtures.join("fcn").display()),
        format!("stage.evaluate.lpips_dir={}", fixtures.join("lpips").display()),
        format!("stage.evaluate.clip_dir={}", fixtures.join("clip").display()),
        format!("stage.caption.python={py}"),
        format!("stage.correct.python={py}"),
        format!("stage.reconstruct.python={py}"),
        // The tiny models never say stop: short captions keep the run quick.
        format!(
            r#"stage.caption.args={{ model = "{}", max_new_tokens = 6, device = "cpu", threads = 1 }}"#,
            models.join("llava").display()
        ),
        format!(
            r#"stage.correct.args={{ model = "{}", device = "cpu", threads = 1 }}"#,
            models.join("bart").display()
        ),
        format!("stage.reconstruct.args={}", inline_table(&sd_args(&models))),
    ];
    let mut args: Vec<&str> = vec!["--snr", "30"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let o = run_graph(&root().join("graphs/multisc-torch.toml"), &out, &args);
    assert_eq!(o.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(s["frames_in"].as_u64(), Some(3), "{s}");
    assert_eq!(s["failed"].as_u64(), Some(0), "{s}");
    let rows = read_csv(&out.join("metrics.csv"));
    assert_eq!(rows.len(), 3, "one row per frame");
    for r in &rows {
        // LLaVA captioned each tile; BART corrected what arrived.
        let sent = texts(r, "sent_texts");
        assert_eq!(sent.len(), 4, "four tile captions: {sent:?}");
        assert!(sent.iter().all(|t| !t.contains("<lost>")), "{sent:?}");
        assert!(
            sent.iter().any(|t| !t.trim().is_empty()),
            "all captions empty: {sent:?}"
        );
        let corrected = texts(r, "corrected");
        assert_eq!(corrected.len(), 4, "{corrected:?}");
        assert!(corrected.iter().any(|t| !t.trim().is_empty()), "{corrected:?}");
        // SD ran 3 DDIM steps with guidance (2 UNet rows each) and rebuilt the frame.
        assert!(num(r, "sd_seconds") > 0.0);
        assert_eq!(num(r, "sd_unet_evals"), 6.0);
        let lpips = num(r, "lpips");
        assert!(lpips > 0.0 && lpips.is_finite(), "lpips = {lpips}");
        let p = out.join("reconstructions").join(format!("{}.png", r["name"]));
        let rebuilt = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!((rebuilt.width(), rebuilt.height()), (64, 64), "the frame's size");
    }
}

/// A captioner whose model raises on frame 1 (as a CUDA out-of-memory error would); `{dir}`
/// is `stages/torch`, where `caption.py` is.
const FLAKY: &str = r#"
import sys
sys.path.insert(0, {dir:?})
from caption import LlavaCaptioner


class Flaky(LlavaCaptioner):
    def setup(self, args):
        super().setup(args)
        generate = self.model.generate

        def maybe_fail(*a, **kw):
            if self.seq == 1:
                raise RuntimeError("injected failure in generate")
            return generate(*a, **kw)

        self.model.generate = maybe_fail

    def process(self, frame):
        self.seq = frame.seq
        return super().process(frame)
"#;

#[test]
fn python_torch_exception_in_the_model_fails_that_frame_only() {
    let Some(py) = torch_python("python_torch_exception_in_the_model_fails_that_frame_only") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    tiny_models(&py, &models, "llava");
    let imgs = dir.path().join("in");
    make_images(&imgs, 3);
    let flaky = dir.path().join("flaky.py");
    let torch_dir = root().join("stages/torch").display().to_string();
    std::fs::write(&flaky, FLAKY.replace("{dir:?}", &format!("{torch_dir:?}"))).unwrap();
    let graph = dir.path().join("flaky.toml");
    std::fs::write(
        &graph,
        format!(
            r#"
[stage.source]
kind = "image_dir"
path = "{}"
[stage.caption]
kind = "python"
inputs = ["source"]
script = "{}"
class = "Flaky"
python = "{}"
args = {{ model = "{}", max_new_tokens = 4, device = "cpu", threads = 1 }}
requires = ["image"]
outputs = {{ out = ["text"] }}
[stage.sink]
kind = "csv_sink"
inputs = ["caption"]
path = "captions.csv"
"#,
            imgs.display(),
            flaky.display(),
            py.display(),
            models.join("llava").display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = run_graph(&graph, &out, &[]);
    // A run with failed frames exits 2 (DESIGN: outcomes) and still writes everything.
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    assert_eq!(s["frames_in"].as_u64(), Some(3), "{s}");
    assert_eq!(s["failed"].as_u64(), Some(1), "{s}");
    let rows = read_csv(&out.join("captions.csv"));
    assert_eq!(rows.len(), 2, "the other frames are delivered");
    assert!(rows.iter().all(|r| r.contains_key("text")));
    let errs: Vec<serde_json::Value> = std::fs::read_to_string(out.join("errors.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0]["class"], "python");
    assert_eq!(errs[0]["frame"], "0:1");
    let text = errs[0]["error"].as_str().unwrap();
    assert!(
        text.contains("RuntimeError: injected failure in generate"),
        "the traceback's last line: {text}"
    );
}

#[test]
fn python_torch_stages_pass_selftest() {
    let Some(py) = torch_python("python_torch_stages_pass_selftest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    tiny_models(&py, &models, "llava,bart,sd");
    let cases = [
        (
            "caption.py",
            "LlavaCaptioner",
            serde_json::json!({ "model": models.join("llava"), "max_new_tokens": 4, "device": "cpu", "threads": 1 }),
            "text: ",
        ),
        (
            "correct.py",
            "BartCorrector",
            serde_json::json!({ "model": models.join("bart"), "device": "cpu", "threads": 1 }),
            "corrected: ",
        ),
        ("reconstruct.py", "SdIpAdapter", sd_args(&models), "sd_unet_evals: 6.0"),
    ];
    for (script, class, args, expect) in cases {
        let o = Command::new(&py)
            .current_dir(root())
            .env("PYTHONPATH", root().join("python"))
            .args(["-m", "dataflow_stage", "selftest"])
            .arg(format!("stages/torch/{script}"))
            .arg(class)
            .arg("--args")
            .arg(args.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{script}: {stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(stdout.contains("1 frame(s) out"), "{script}: {stdout}");
        assert!(stdout.contains(expect), "{script}: no `{expect}` in {stdout}");
        if script == "reconstruct.py" {
            // The test frame's size (64×48), not the generation's (64×64).
            assert!(stdout.contains("image: array (48, 64, 3) uint8"), "{stdout}");
        }
    }
}
