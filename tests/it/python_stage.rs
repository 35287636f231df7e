//! `kind = "python"`: a Python class in a worker process per replica, under the same
//! bounds, errors and restarts as a Rust stage.
//!
//! The workers need a Python with numpy: `$DATAFLOW_TEST_PYTHON`, else `python3` when
//! it has numpy, else a venv with numpy made once under the user's cache
//! (`~/.cache/dataflow/python-stage-venv`, by pip).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dataflow_engine::GraphSource;

use crate::support::{bin, in_process, probe, read_csv, registry, root, run_graph, stage};

/// An interpreter with numpy (see the module doc).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("DATAFLOW_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let has_numpy = |p: &Path| {
        Command::new(p)
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_numpy(Path::new("python3")) {
        return PathBuf::from("python3");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
        .join("dataflow");
    let venv = cache.join("python-stage-venv");
    let py = venv.join("bin/python");
    if has_numpy(&py) {
        return py;
    }
    // Built aside and renamed into place: test processes run in parallel.
    std::fs::create_dir_all(&cache).unwrap();
    let tmp = cache.join(format!("python-stage-venv.{}", std::process::id()));
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&tmp)
        .status()
        .unwrap()
        .success()
        && Command::new(tmp.join("bin/python"))
            .args(["-m", "pip", "install", "-q", "numpy"])
            .status()
            .unwrap()
            .success();
    assert!(ok, "could not make a venv with numpy at {}", tmp.display());
    if std::fs::rename(&tmp, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(has_numpy(&py), "{} has no numpy", py.display());
    py
}

/// Writes `code` as `name` in `dir` and returns its path as TOML text.
fn script(dir: &Path, name: &str, code: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, code).unwrap();
    p.display().to_string()
}

/// Pass-through that writes its pid into `args.pid_dir`.
const PASS: &str = r#"
import os
from dataflow_stage import Stage

class Pass(Stage):
    def setup(self, args):
        open(os.path.join(args["pid_dir"], str(os.getpid())), "w").close()

    def process(self, frame):
        return frame
"#;

/// The pids the workers wrote into `dir`.
fn pids(dir: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs graph text in-process (with the resource checks `dataflow run` makes first).
fn run(text: &str, out: &Path) -> dataflow_engine::RunSummary {
    let src = GraphSource::from_text(&out.join("test.toml"), text.to_string(), &[]).unwrap();
    let plan = dataflow_engine::plan(&src, &registry()).unwrap_or_else(|d| panic!("{d}"));
    dataflow_engine::plan::check_resources(&plan, out).unwrap_or_else(|d| panic!("{d}"));
    let (rt, opts) = in_process(out);
    rt.block_on(dataflow_engine::run(&plan, opts)).unwrap()
}

/// The process's metrics, as a scrape would see them: a recorder installed on first
/// use (nextest runs each test in a process of its own; each test reads only its own
/// stage ids).
fn scrape() -> Vec<dataflow_monitoring::top::Sample> {
    type Render = Box<dyn Fn() -> String + Send + Sync>;
    static RENDER: OnceLock<Render> = OnceLock::new();
    let render = RENDER.get_or_init(|| {
        let h = dataflow_monitoring::install_recorder()
            .expect("a metrics recorder is already installed: run the `it` tests with nextest");
        Box::new(move || h.render())
    });
    dataflow_monitoring::top::parse_exposition(&render()).unwrap()
}

/// The value of series `name` with `stage` = `stage` in `samples`.
fn series(samples: &[dataflow_monitoring::top::Sample], name: &str, stage: &str) -> Option<f64> {
    samples
        .iter()
        .find(|x| x.name == name && x.label("stage") == Some(stage))
        .map(|x| x.value)
}

/// The lines of the run's `errors.jsonl`.
fn errors(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("errors.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn python_passthrough_delivers_1000_frames_once_in_order_within_the_bound() {
    scrape(); // the recorder must be there before the stages register their series
    let dir = tempfile::tempdir().unwrap();
    let pid_dir = dir.path().join("pids");
    std::fs::create_dir(&pid_dir).unwrap();
    let s = run(
        &format!(
            r#"
[defaults]
mailbox = 4
when_full = "block"
[stage.src]
kind = "tracked"
frames = 1000
probe = "py_pass"
[stage.py]
kind = "python"
inputs = ["src"]
script = "{}"
class = "Pass"
python = "{}"
replicas = 2
args = {{ pid_dir = "{}" }}
[stage.sink]
kind = "record"
inputs = ["py"]
probe = "py_pass"
"#,
            script(dir.path(), "pass.py", PASS),
            python().display(),
            pid_dir.display()
        ),
        dir.path(),
    );
    let p = probe("py_pass");
    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1000, "every frame arrives");
    assert!(
        seen.iter().enumerate().all(|(i, s)| *s == i as u64),
        "exactly once, in order"
    );
    // Two edges of 4 places, one frame in the source's hands, one in each replica, one at the sink.
    let bound = 2 * 4 + 1 + 2 + 1;
    let max = p.max.load(Ordering::SeqCst);
    println!("frames alive at most: {max} (bound {bound})");
    assert!(max <= bound, "{max} frames alive at once, over the bound {bound}");
    assert_eq!(p.now.load(Ordering::SeqCst), 0, "no frame leaked");
    assert_eq!(s.failed, 0);
    let samples = scrape();
    use dataflow_monitoring::spec::{missing_stage_metrics, StageRole};
    let missing = missing_stage_metrics(&samples, "py", StageRole::Transform);
    assert!(missing.is_empty(), "the python stage misses {missing:?}");
    let ipc_count = series(&samples, "dataflow_python_ipc_seconds_count", "py");
    let ipc_sum = series(&samples, "dataflow_python_ipc_seconds_sum", "py").unwrap_or(0.0);
    assert_eq!(
        ipc_count,
        Some(1000.0),
        "one hand-over time per frame, both replicas together"
    );
    let processing = series(&samples, "dataflow_stage_processing_seconds_sum", "py").unwrap();
    println!("python hand-over: {:.1} µs per frame", ipc_sum / 1000.0 * 1e6);
    assert!(
        ipc_sum > 0.0 && ipc_sum < processing,
        "hand-over time {ipc_sum} s is part of the processing time {processing} s"
    );
    let workers = pids(&pid_dir);
    assert_eq!(workers.len(), 2, "one worker per replica: {workers:?}");
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the run");
    }
}

#[test]
fn python_exception_fails_that_frame_with_its_traceback_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
from dataflow_stage import Stage

class Flaky(Stage):
    def process(self, frame):
        img = frame.image("image")
        if frame.seq % 10 == 9:
            raise ValueError(f"no good: frame {frame.id}")
        frame.set_number("mean", float(img.mean()))
        return frame
"#;
    let s = run(
        &format!(
            r#"
[stage.src]
kind = "synthetic"
frames = 200
width = 16
height = 12
[stage.py]
kind = "python"
inputs = ["src"]
script = "{}"
class = "Flaky"
python = "{}"
requires = ["image"]
outputs = {{ out = ["mean"] }}
[stage.sink]
kind = "csv_sink"
inputs = ["py"]
path = "out.csv"
"#,
            script(dir.path(), "flaky.py", code),
            python().display()
        ),
        dir.path(),
    );
    assert_eq!(s.failed, 20, "10 % of 200 frames fail");
    assert_eq!(stage(&s, "sink").received, 180, "the rest are delivered");
    let rows = read_csv(&dir.path().join("out.csv"));
    assert_eq!(rows.len(), 180);
    assert!(
        rows.iter().all(|r| r["mean"].parse::<f64>().unwrap() > 0.0),
        "the stage's numbers arrive"
    );
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 20);
    for e in &errs {
        let (frame, text) = (e["frame"].as_str().unwrap(), e["error"].as_str().unwrap());
        assert_eq!(e["class"], "python");
        assert!(frame.ends_with('9'), "frame {frame} should not have failed");
        assert!(
            text.contains("flaky.py") && text.contains(&format!("ValueError: no good: frame {frame}")),
            "{text}"
        );
    }
}

#[test]
fn killed_python_worker_fails_the_frame_in_flight_and_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let pid_dir = dir.path().join("pids");
    std::fs::create_dir(&pid_dir).unwrap();
    let code = r#"
import os, time
from dataflow_stage import Stage

class Slow(Stage):
    def setup(self, args):
        open(os.path.join(args["pid_dir"], str(os.getpid())), "w").close()

    def process(self, frame):
        time.sleep(0.005)
        return frame
"#;
    let text = format!(
        r#"
[stage.src]
kind = "synthetic"
frames = 400
width = 16
height = 12
[stage.pyk]
kind = "python"
inputs = ["src"]
script = "{}"
class = "Slow"
python = "{}"
restart = "on_failure"
args = {{ pid_dir = "{}" }}
[stage.sink]
kind = "record"
inputs = ["pyk"]
probe = "py_kill"
"#,
        script(dir.path(), "slow.py", code),
        python().display(),
        pid_dir.display()
    );
    let out = dir.path().to_path_buf();
    let before = series(&scrape(), "dataflow_stage_restarts_total", "pyk").unwrap_or(0.0);
    let runner = std::thread::spawn(move || run(&text, &out));
    let t0 = Instant::now();
    while pids(&pid_dir).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the worker never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let first = pids(&pid_dir)[0];
    assert!(Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap()
        .success());
    let s = runner.join().unwrap();

    let seen = probe("py_kill").seen.lock().unwrap().clone();
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "the frame in flight is reported: {errs:?}");
    let frame = errs[0]["frame"].as_str().unwrap().to_string();
    let failed: u64 = frame.split(':').nth(1).unwrap().parse().unwrap();
    let workers = pids(&pid_dir);
    assert_eq!(workers.len(), 2, "a fresh worker after the kill: {workers:?}");
    let second = *workers.iter().find(|&&p| p != first).unwrap();
    assert_eq!(errs[0]["class"], "python", "{errs:?}");
    assert_eq!(
        errs[0]["error"].as_str().unwrap(),
        format!(
            "the python worker (pid {first}) of stage `pyk` was killed by signal 9 (SIGKILL: `kill -9`, or the out-of-memory killer) while frame {frame} was in flight; restarted it as pid {second} (restart = \"on_failure\")"
        )
    );
    let expected: Vec<u64> = (0..400).filter(|&i| i != failed).collect();
    assert_eq!(seen, expected, "every other frame delivered, in order");
    assert_eq!(stage(&s, "pyk").errors, 1);
    let after = series(&scrape(), "dataflow_stage_restarts_total", "pyk").unwrap_or(0.0);
    assert_eq!(after - before, 1.0, "the replaced worker is counted as a restart");
    assert_eq!(stage(&s, "pyk").restarts, 1, "and the run summary counts it");
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the run");
    }
    let prefix = format!("dataflow-{}-pyk-", std::process::id());
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "shared-memory segments left behind: {left:?}");
}

/// The resource-check problems of a one-stage-python graph with `stage_keys`.
fn check_problems(dir: &Path, stage_keys: &str) -> String {
    let text = format!(
        r#"
[stage.src]
kind = "synthetic"
frames = 1
[stage.py]
kind = "python"
inputs = ["src"]
{stage_keys}
[stage.sink]
kind = "null_sink"
inputs = ["py"]
"#
    );
    let src = GraphSource::from_text(&dir.join("test.toml"), text, &[]).unwrap();
    let plan = dataflow_engine::plan(&src, &registry()).unwrap_or_else(|d| panic!("{d}"));
    match dataflow_engine::plan::check_resources(&plan, dir) {
        Ok(()) => String::new(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn python_stage_problems_are_reported_before_the_run_with_key_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let py = python().display().to_string();
    let good = script(dir.path(), "good.py", PASS);
    let bad = script(
        dir.path(),
        "bad.py",
        "from dataflow_stage import Stage\n\nclass Bad(Stage):\n    def process(self frame):\n        return frame\n",
    );

    let ok = check_problems(
        dir.path(),
        &format!("script = \"{good}\"\nclass = \"Pass\"\npython = \"{py}\""),
    );
    assert_eq!(ok, "", "a good stage passes");

    let missing = check_problems(
        dir.path(),
        &format!("script = \"nowhere.py\"\nclass = \"Pass\"\npython = \"{py}\""),
    );
    assert!(
        missing.contains("`script`") && missing.contains("nowhere.py") && missing.contains("no such file"),
        "{missing}"
    );

    let class = check_problems(
        dir.path(),
        &format!("script = \"{good}\"\nclass = \"Nope\"\npython = \"{py}\""),
    );
    assert!(
        class.contains("`class`") && class.contains("Nope") && class.contains("classes there: Pass"),
        "{class}"
    );

    let interp = check_problems(
        dir.path(),
        &format!("script = \"{good}\"\nclass = \"Pass\"\npython = \"python3.0-absent\""),
    );
    assert!(
        interp.contains("`python`") && interp.contains("python3.0-absent") && interp.contains("cannot run"),
        "{interp}"
    );

    let syntax = check_problems(
        dir.path(),
        &format!("script = \"{bad}\"\nclass = \"Bad\"\npython = \"{py}\""),
    );
    assert!(
        syntax.contains(&format!("{bad}:4:")) && syntax.contains("SyntaxError"),
        "{syntax}"
    );

    let module = check_problems(
        dir.path(),
        &format!("module = \"no_such_mod_xyz\"\nclass = \"A\"\npython = \"{py}\""),
    );
    assert!(
        module.contains("`module`") && module.contains("no_such_mod_xyz"),
        "{module}"
    );
}

#[test]
fn python_stage_example_graph_captions_with_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let set = format!("stage.caption.python={}", python().display());
    let o = run_graph(
        &root().join("graphs/examples/python-stage.toml"),
        dir.path(),
        &["--set", &set],
    );
    assert_eq!(o.status.code(), Some(0));
    let rows = read_csv(&dir.path().join("caption.csv"));
    assert_eq!(rows.len(), 48);
    for r in &rows {
        assert!(r["text"].starts_with("mostly "), "{r:?}");
        let share: f64 = r["colour_share"].parse().unwrap();
        assert!((0.15..=1.0).contains(&share), "{r:?}");
    }
    let distinct: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["text"].as_str()).collect();
    assert!(
        distinct.len() > 1,
        "the gradient shifts, so should the captions: {distinct:?}"
    );
}

#[test]
fn ctrl_c_ends_the_python_workers_with_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let pid_dir = dir.path().join("pids");
    std::fs::create_dir(&pid_dir).unwrap();
    let graph = dir.path().join("endless.toml");
    std::fs::write(
        &graph,
        format!(
            r#"
[stage.src]
kind = "synthetic"
rate = 200
[stage.py]
kind = "python"
inputs = ["src"]
script = "{}"
class = "Pass"
python = "{}"
replicas = 2
args = {{ pid_dir = "{}" }}
[stage.sink]
kind = "null_sink"
inputs = ["py"]
"#,
            script(dir.path(), "pass.py", PASS),
            python().display(),
            pid_dir.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin())
        .current_dir(root())
        .args(["run", "--no-progress", "--metrics", "off", "--out"])
        .arg(dir.path().join("out"))
        .arg(&graph)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while pids(&pid_dir).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the workers never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted run exits with 130");
    for pid in pids(&pid_dir) {
        assert!(!alive(pid), "worker {pid} outlived the run");
    }
}

#[test]
fn hung_python_worker_is_killed_after_timeout_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
import time
from dataflow_stage import Stage

class Hang(Stage):
    def process(self, frame):
        if frame.seq == 3:
            time.sleep(30)
        return frame
"#;
    let t0 = Instant::now();
    let before = series(&scrape(), "dataflow_stage_restarts_total", "py").unwrap_or(0.0);
    let s = run(
        &format!(
            r#"
[stage.src]
kind = "synthetic"
frames = 10
[stage.py]
kind = "python"
inputs = ["src"]
script = "{}"
class = "Hang"
python = "{}"
timeout_s = 0.5
[stage.sink]
kind = "record"
inputs = ["py"]
probe = "py_hang"
"#,
            script(dir.path(), "hang.py", code),
            python().display()
        ),
        dir.path(),
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "the hung worker held the run");
    let seen = probe("py_hang").seen.lock().unwrap().clone();
    assert_eq!(seen, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    assert_eq!(stage(&s, "py").errors, 1);
    let after = series(&scrape(), "dataflow_stage_restarts_total", "py").unwrap_or(0.0);
    assert_eq!(after - before, 1.0, "the replaced worker is counted as a restart");
    assert_eq!(stage(&s, "py").restarts, 1, "and the run summary counts it");
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0]["frame"], "0:3");
    assert_eq!(errs[0]["class"], "python");
    let text = errs[0]["error"].as_str().unwrap();
    assert!(
        text.contains("of stage `py` did not answer within timeout_s = 0.5 and was killed while frame 0:3 was in flight; restarted it as pid "),
        "{text}"
    );
}

#[test]
fn python_setup_error_stops_the_run_before_the_source_opens() {
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
from dataflow_stage import Stage

class Broken(Stage):
    def setup(self, args):
        raise RuntimeError("weights missing: " + args["weights"])
"#;
    let graph = dir.path().join("broken.toml");
    std::fs::write(
        &graph,
        format!(
            r#"
[stage.src]
kind = "synthetic"
frames = 5
[stage.py]
kind = "python"
inputs = ["src"]
script = "{}"
class = "Broken"
python = "{}"
args = {{ weights = "model.pt" }}
[stage.sink]
kind = "null_sink"
inputs = ["py"]
"#,
            script(dir.path(), "broken.py", code),
            python().display()
        ),
    )
    .unwrap();
    let o = run_graph(&graph, &dir.path().join("out"), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr.contains("`py`") && stderr.contains("RuntimeError: weights missing: model.pt"),
        "{stderr}"
    );
}

#[test]
fn python_images_cross_both_ways_and_frames_fan_out_on_declared_ports() {
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
import numpy as np
from dataflow_stage import Stage

class Split(Stage):
    def process(self, frame):
        img = frame.image("image")
        frame.set_mask("mask", img[:, :, 0] > 127)
        frame.set_image("flipped", np.ascontiguousarray(img[:, ::-1]))
        frame.set_number("expect", float((img[:, :, 0] > 127).sum() * 255))
        side = frame.derive(port="side", label=f"side of {frame.id}")
        return [frame, side]

class Measure(Stage):
    def process(self, frame):
        mask, img, flipped = frame.image("mask"), frame.image("image"), frame.image("flipped")
        frame.set_number("mask_sum", float(mask.astype(np.int64).sum()))
        frame.set_number("flip_ok", float(np.array_equal(flipped[:, ::-1], img)))
        return frame
"#;
    let path = script(dir.path(), "split.py", code);
    let py = python().display().to_string();
    let s = run(
        &format!(
            r#"
[stage.src]
kind = "synthetic"
frames = 20
width = 40
height = 30
[stage.split]
kind = "python"
inputs = ["src"]
script = "{path}"
class = "Split"
python = "{py}"
requires = ["image"]
outputs = {{ out = ["mask", "flipped", "expect"], side = ["label"] }}
[stage.measure]
kind = "python"
inputs = ["split"]
script = "{path}"
class = "Measure"
python = "{py}"
requires = ["mask", "flipped", "image"]
outputs = {{ out = ["mask_sum", "flip_ok"] }}
[stage.main]
kind = "csv_sink"
inputs = ["measure"]
path = "main.csv"
[stage.side]
kind = "csv_sink"
inputs = ["split.side"]
path = "side.csv"
"#
        ),
        dir.path(),
    );
    assert_eq!(s.failed, 0);
    let main = read_csv(&dir.path().join("main.csv"));
    assert_eq!(main.len(), 20);
    for r in &main {
        assert_eq!(r["mask_sum"], r["expect"], "the mask crossed intact: {r:?}");
        assert_eq!(r["flip_ok"], "1", "the flipped image crossed intact: {r:?}");
    }
    assert!(main.iter().any(|r| r["mask_sum"] != "0"), "some pixels are over 127");
    let side = read_csv(&dir.path().join("side.csv"));
    assert_eq!(side.len(), 20);
    assert!(
        side.iter().all(|r| r["label"] == format!("side of {}", r["frame"])),
        "{side:?}"
    );
}

#[test]
fn python_float_tensors_cross_both_ways_between_stages() {
    let dir = tempfile::tempdir().unwrap();
    // `expected(seq)` is computed on both sides: what `Embed` sends must be what
    // `Check` receives after the engine carried it (Python -> Rust -> Python).
    let code = r#"
import numpy as np
from dataflow_stage import Stage

def expected(seq):
    t = np.arange(32, dtype=np.float32).reshape(4, 8) * np.float32(0.5) + np.float32(seq)
    t[0, 0], t[1, 1], t[2, 2], t[3, 3] = -0.0, 1e-7, 3.0e38, -np.inf
    return t

class Embed(Stage):
    def process(self, frame):
        frame.set_tensor("emb", expected(frame.seq))
        frame.fields["vec"] = np.array([frame.seq, 0.25, -2.5], dtype=np.float32)
        return frame

class Check(Stage):
    def process(self, frame):
        emb, vec = frame.tensor("emb"), frame.tensor("vec")
        assert emb.dtype == np.float32 and emb.shape == (4, 8), (emb.dtype, emb.shape)
        assert not emb.flags.writeable, "inputs are read-only views"
        ok = np.array_equal(emb, expected(frame.seq)) and np.signbit(emb[0, 0])
        ok = ok and vec.tolist() == [float(frame.seq), 0.25, -2.5]
        frame.set_number("tensor_ok", float(ok))
        frame.set_tensor("emb2", emb * 2)
        return frame

class Again(Stage):
    def process(self, frame):
        emb2 = frame.tensor("emb2")
        frame.set_number("again_ok", float(np.array_equal(emb2, expected(frame.seq) * 2)))
        return frame
"#;
    let path = script(dir.path(), "tensor.py", code);
    let py = python().display().to_string();
    let stage = |id: &str, class: &str, input: &str, adds: &str| {
        format!(
            "[stage.{id}]\nkind = \"python\"\ninputs = [\"{input}\"]\nscript = \"{path}\"\nclass = \"{class}\"\npython = \"{py}\"\noutputs = {{ out = [{adds}] }}\n"
        )
    };
    let text = format!(
        "[stage.src]\nkind = \"synthetic\"\nframes = 12\nwidth = 8\nheight = 8\n{}{}{}[stage.sink]\nkind = \"csv_sink\"\ninputs = [\"again\"]\npath = \"t.csv\"\n",
        stage("embed", "Embed", "src", "\"emb\", \"vec\""),
        stage("check", "Check", "embed", "\"tensor_ok\", \"emb2\""),
        stage("again", "Again", "check", "\"again_ok\""),
    );
    let s = run(&text, dir.path());
    assert_eq!(s.failed, 0, "{:?}", errors(dir.path()));
    let rows = read_csv(&dir.path().join("t.csv"));
    assert_eq!(rows.len(), 12);
    for r in &rows {
        assert_eq!(r["tensor_ok"], "1", "the tensors crossed intact: {r:?}");
        assert_eq!(r["again_ok"], "1", "a tensor a stage made crossed intact: {r:?}");
    }
}

/// A stage whose worker exits on frame 3 and segfaults on frame 6.
const CRASHY: &str = r#"
import ctypes, os
from dataflow_stage import Stage

class Crashy(Stage):
    def process(self, frame):
        if frame.seq == 3:
            os._exit(3)
        if frame.seq == 6:
            ctypes.string_at(0)
        return frame
"#;

/// The graph of the crash tests: 10 frames through `Crashy` under `restart`.
fn crashy_graph(dir: &Path, restart: &str, probe: &str) -> String {
    format!(
        r#"
[stage.src]
kind = "synthetic"
frames = 10
width = 8
height = 8
[stage.py]
kind = "python"
inputs = ["src"]
script = "{}"
class = "Crashy"
python = "{}"
restart = "{restart}"
[stage.sink]
kind = "record"
inputs = ["py"]
probe = "{probe}"
"#,
        script(dir, "crashy.py", CRASHY),
        python().display()
    )
}

#[test]
fn python_worker_that_exits_or_segfaults_fails_its_frame_as_python_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let s = run(&crashy_graph(dir.path(), "on_failure", "py_crash"), dir.path());
    let seen = probe("py_crash").seen.lock().unwrap().clone();
    assert_eq!(seen, vec![0, 1, 2, 4, 5, 7, 8, 9], "only the frames in flight are lost");
    assert!(s.fatal.is_none(), "{:?}", s.fatal);
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 2, "{errs:?}");
    let how = [
        (
            "0:3",
            "exited with status 3 while frame 0:3 was in flight; restarted it as pid ",
        ),
        (
            "0:6",
            "crashed with signal 11 (SIGSEGV) while frame 0:6 was in flight; restarted it as pid ",
        ),
    ];
    for (e, (frame, text)) in errs.iter().zip(how) {
        assert_eq!(e["frame"], frame);
        assert_eq!(e["class"], "python");
        let got = e["error"].as_str().unwrap();
        assert!(
            got.starts_with("the python worker (pid ") && got.contains(&format!("of stage `py` {text}")),
            "{got}"
        );
    }
}

#[test]
fn python_worker_death_under_restart_never_ends_the_run_naming_stage_and_frame() {
    let dir = tempfile::tempdir().unwrap();
    let s = run(&crashy_graph(dir.path(), "never", "py_crash_never"), dir.path());
    let fatal = s.fatal.clone().expect("the run must stop with an error");
    assert!(
        fatal.contains("stage `py`") && fatal.contains("exited with status 3 while frame 0:3 was in flight"),
        "{fatal}"
    );
    assert!(fatal.contains("restart = \"never\""), "{fatal}");
    let seen = probe("py_crash_never").seen.lock().unwrap().clone();
    assert!(!seen.contains(&3), "{seen:?}");
}

#[test]
fn python_stage_with_join_timeout_gets_every_input_of_a_frame_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
from dataflow_stage import Stage

class Square(Stage):
    def process(self, frame):
        return frame.set_number("sq", float(frame.seq * frame.seq))

class Both(Stage):
    def process(self, frame):
        img = frame.image("image")
        frame.set_text("both", f"{img.shape[1]}x{img.shape[0]} sq={frame.number('sq'):.0f} lost={frame.lost_inputs}")
        return frame
"#;
    let path = script(dir.path(), "join.py", code);
    let py = python().display().to_string();
    let s = run(
        &format!(
            r#"
[stage.src]
kind = "synthetic"
frames = 10
width = 12
height = 6
[stage.plain]
kind = "passthrough"
inputs = ["src"]
[stage.square]
kind = "python"
inputs = ["src"]
script = "{path}"
class = "Square"
python = "{py}"
outputs = {{ out = ["sq"] }}
[stage.both]
kind = "python"
inputs = ["plain", "square"]
script = "{path}"
class = "Both"
python = "{py}"
join_timeout_ms = 10000
requires = ["image", "sq"]
outputs = {{ out = ["both", "lost_inputs"] }}
[stage.sink]
kind = "csv_sink"
inputs = ["both"]
path = "both.csv"
texts = true
"#
        ),
        dir.path(),
    );
    assert_eq!(s.failed, 0, "{:?}", errors(dir.path()));
    assert_eq!(stage(&s, "both").received, 20, "one part from each input per frame");
    let rows = read_csv(&dir.path().join("both.csv"));
    assert_eq!(rows.len(), 10, "one output per frame");
    for r in &rows {
        let seq: u64 = r["frame"].split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(r["both"], format!("12x6 sq={} lost=0", seq * seq), "{r:?}");
    }
}

#[test]
fn python_stage_needs_are_checked_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let good = script(dir.path(), "pass.py", PASS);
    let py = python().display().to_string();
    let missing = check_problems(
        dir.path(),
        &format!("script = \"{good}\"\nclass = \"Pass\"\npython = \"{py}\"\nneeds = [\"numpy\", \"no_such_mod_xyz\"]"),
    );
    assert!(
        missing.contains("`needs` = 'no_such_mod_xyz'")
            && missing.contains("cannot import it")
            && !missing.contains("'numpy'"),
        "{missing}"
    );
    let fine = check_problems(
        dir.path(),
        &format!("script = \"{good}\"\nclass = \"Pass\"\npython = \"{py}\"\nneeds = [\"numpy\", \"json\"]"),
    );
    assert_eq!(fine, "");
}

/// Batched numpy stages: `Tone` maps a whole batch at once (`np.stack`), `ToneEach` the
/// same per frame through `process`; both record the batch size they saw. `Digest`
/// hashes the outputs' bytes for the CSV.
const TONE: &str = r#"
import hashlib
import numpy as np
from dataflow_stage import Stage


def tone(imgs):
    return np.clip(imgs.astype(np.float32) * 0.8 + 20.5, 0, 255).astype(np.uint8)


class Tone(Stage):
    def process_batch(self, frames):
        imgs = np.stack([f.image("image") for f in frames])
        out = tone(imgs)
        emb = imgs.reshape(len(frames), -1)[:, :16].astype(np.float32) / 255.0
        for f, o, e in zip(frames, out, emb):
            f.set_image("toned", o)
            f.set_tensor("emb", e)
            f.set_number("batch_size", len(frames))
        return frames


class ToneEach(Stage):
    def process(self, frame):
        img = frame.image("image")
        frame.set_image("toned", tone(img))
        frame.set_tensor("emb", img.reshape(-1)[:16].astype(np.float32) / 255.0)
        frame.set_number("batch_size", 1)
        return frame


class Digest(Stage):
    def process(self, frame):
        frame.set_text("toned_sha", hashlib.sha256(frame.image("toned").tobytes()).hexdigest())
        frame.set_text("emb_sha", hashlib.sha256(frame.tensor("emb").tobytes()).hexdigest())
        return frame
"#;

/// `src -> tone (class, `batch_keys`) -> digest -> csv_sink` over 20 gradient frames;
/// the CSV's rows by frame.
fn tone_run(dir: &Path, class: &str, batch_keys: &str) -> Vec<std::collections::HashMap<String, String>> {
    let out = dir.join(format!("{class}-{}", batch_keys.len()));
    std::fs::create_dir_all(&out).unwrap();
    let path = script(dir, "tone.py", TONE);
    let py = python().display().to_string();
    let s = run(
        &format!(
            r#"
[stage.src]
kind = "synthetic"
frames = 20
width = 40
height = 30
[stage.tone]
kind = "python"
inputs = ["src"]
script = "{path}"
class = "{class}"
python = "{py}"
requires = ["image"]
outputs = {{ out = ["toned", "emb", "batch_size"] }}
mailbox = 4
{batch_keys}
[stage.digest]
kind = "python"
inputs = ["tone"]
script = "{path}"
class = "Digest"
python = "{py}"
requires = ["toned", "emb"]
outputs = {{ out = ["toned_sha", "emb_sha"] }}
[stage.sink]
kind = "csv_sink"
inputs = ["digest"]
path = "out.csv"
"#
        ),
        &out,
    );
    assert_eq!(s.failed, 0, "{:?}", errors(&out));
    let rows = read_csv(&out.join("out.csv"));
    assert_eq!(rows.len(), 20);
    rows
}

#[test]
fn python_stage_batch_of_4_gives_the_bytes_of_one_at_a_time_and_process_batch_gets_4_frames() {
    let dir = tempfile::tempdir().unwrap();
    let batch = "batch = { max = 4, wait_ms = 5000 }";
    let single = tone_run(dir.path(), "Tone", "");
    let batched = tone_run(dir.path(), "Tone", batch);
    let each = tone_run(dir.path(), "ToneEach", batch);
    // 20 frames in 5 full batches: the source outruns the stage and the batch waits long enough.
    let sizes = |rows: &[std::collections::HashMap<String, String>]| -> Vec<String> {
        rows.iter().map(|r| r["batch_size"].clone()).collect()
    };
    assert_eq!(sizes(&single), vec!["1"; 20], "without `batch`, one frame per call");
    assert_eq!(sizes(&batched), vec!["4"; 20], "process_batch saw the whole batch");
    assert_eq!(
        sizes(&each),
        vec!["1"; 20],
        "a class without process_batch gets process per frame"
    );
    for (i, ((a, b), c)) in single.iter().zip(&batched).zip(&each).enumerate() {
        assert_eq!(a["frame"], format!("0:{i}"), "in order");
        assert_eq!(b["frame"], a["frame"], "in order under batch");
        assert_eq!(c["frame"], a["frame"]);
        for col in ["toned_sha", "emb_sha"] {
            assert_eq!(
                b[col], a[col],
                "frame {}: `{col}` differs batched vs one at a time",
                a["frame"]
            );
            assert_eq!(
                c[col], a[col],
                "frame {}: `{col}` differs per-frame process",
                a["frame"]
            );
        }
    }
    let distinct: std::collections::BTreeSet<&String> = single.iter().map(|r| &r["toned_sha"]).collect();
    assert_eq!(
        distinct.len(),
        20,
        "each frame's image is its own (the gradient shifts)"
    );
}

/// Raises on frames 3 and 9, through `process_batch` (`Batched`) or `process` (`Each`);
/// records the batch size it saw.
const RAISES: &str = r#"
from dataflow_stage import Stage

BAD = (3, 9)

class Batched(Stage):
    def process_batch(self, frames):
        for f in frames:
            if f.seq in BAD:
                raise ValueError(f"bad frame {f.id}")
        for f in frames:
            f.set_number("batch_size", len(frames))
        return frames

class Each(Stage):
    def process(self, frame):
        if frame.seq in BAD:
            raise ValueError(f"bad frame {frame.id}")
        return frame.set_number("batch_size", 1)
"#;

#[test]
fn python_stage_batch_fails_only_the_frame_that_raises_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), "raises.py", RAISES);
    let py = python().display().to_string();
    let stage_of = |id: &str, class: &str| {
        format!(
            "[stage.{id}]\nkind = \"python\"\ninputs = [\"src\"]\nscript = \"{path}\"\nclass = \"{class}\"\n\
             python = \"{py}\"\noutputs = {{ out = [\"batch_size\"] }}\nmailbox = 4\n\
             batch = {{ max = 4, wait_ms = 5000 }}\n[stage.{id}_sink]\nkind = \"csv_sink\"\ninputs = [\"{id}\"]\npath = \"{id}.csv\"\n"
        )
    };
    let s = run(
        &format!(
            "[stage.src]\nkind = \"synthetic\"\nframes = 24\nwidth = 8\nheight = 6\n{}{}",
            stage_of("batched", "Batched"),
            stage_of("each", "Each")
        ),
        dir.path(),
    );
    let errs = errors(dir.path());
    for id in ["batched", "each"] {
        let mine: Vec<&serde_json::Value> = errs.iter().filter(|e| e["stage"] == id).collect();
        let frames: Vec<&str> = mine.iter().map(|e| e["frame"].as_str().unwrap()).collect();
        assert_eq!(
            frames,
            ["0:3", "0:9"],
            "stage {id}: only the raising frames fail: {mine:?}"
        );
        for e in &mine {
            let (frame, text) = (e["frame"].as_str().unwrap(), e["error"].as_str().unwrap());
            assert_eq!(e["class"], "python");
            assert!(
                text.contains(&format!("raised on frame {frame}"))
                    && text.contains("raises.py")
                    && text.contains(&format!("ValueError: bad frame {frame}")),
                "{text}"
            );
        }
        assert_eq!(stage(&s, id).errors, 2);
        let rows = read_csv(&dir.path().join(format!("{id}.csv")));
        let got: Vec<&str> = rows.iter().map(|r| r["frame"].as_str()).collect();
        let want: Vec<String> = (0..24)
            .filter(|i| ![3, 9].contains(i))
            .map(|i| format!("0:{i}"))
            .collect();
        assert_eq!(got, want, "stage {id}: the other frames arrive, in order");
        for r in &rows {
            let seq: u64 = r["frame"][2..].parse().unwrap();
            // A batch holding a raising frame is called again frame by frame.
            let size = if id == "batched" && ![0, 2].contains(&(seq / 4)) {
                "4"
            } else {
                "1"
            };
            assert_eq!(r["batch_size"], size, "stage {id}: {r:?}");
        }
    }
}

#[test]
fn killed_python_worker_fails_the_whole_batch_in_flight_once_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let pid_dir = dir.path().join("pids");
    std::fs::create_dir(&pid_dir).unwrap();
    let code = r#"
import os, time
from dataflow_stage import Stage

class SlowBatch(Stage):
    def setup(self, args):
        self.dir = args["pid_dir"]
        open(os.path.join(self.dir, str(os.getpid())), "w").close()

    def process_batch(self, frames):
        if not os.path.exists(os.path.join(self.dir, "..", "busy")):
            with open(os.path.join(self.dir, "..", "busy.tmp"), "w") as f:
                f.write(",".join(fr.id for fr in frames))
            os.rename(os.path.join(self.dir, "..", "busy.tmp"), os.path.join(self.dir, "..", "busy"))
            time.sleep(30)
        return frames
"#;
    let text = format!(
        r#"
[stage.src]
kind = "synthetic"
frames = 16
width = 16
height = 12
[stage.pyb]
kind = "python"
inputs = ["src"]
script = "{}"
class = "SlowBatch"
python = "{}"
restart = "on_failure"
mailbox = 4
batch = {{ max = 4, wait_ms = 5000 }}
args = {{ pid_dir = "{}" }}
[stage.sink]
kind = "record"
inputs = ["pyb"]
probe = "py_kill_batch"
"#,
        script(dir.path(), "slow_batch.py", code),
        python().display(),
        pid_dir.display()
    );
    let out = dir.path().to_path_buf();
    let before = series(&scrape(), "dataflow_stage_restarts_total", "pyb").unwrap_or(0.0);
    let runner = std::thread::spawn(move || run(&text, &out));
    let busy = dir.path().join("busy");
    let t0 = Instant::now();
    while !busy.exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no batch reached the worker");
        std::thread::sleep(Duration::from_millis(10));
    }
    let in_flight = std::fs::read_to_string(&busy).unwrap();
    let first = pids(&pid_dir)[0];
    assert!(Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap()
        .success());
    let s = runner.join().unwrap();

    let frames: Vec<&str> = in_flight.split(',').collect();
    assert_eq!(frames, ["0:0", "0:1", "0:2", "0:3"], "the first batch is full");
    let workers = pids(&pid_dir);
    assert_eq!(workers.len(), 2, "a fresh worker after the kill: {workers:?}");
    let second = *workers.iter().find(|&&p| p != first).unwrap();
    let errs = errors(dir.path());
    let failed: Vec<&str> = errs.iter().map(|e| e["frame"].as_str().unwrap()).collect();
    assert_eq!(failed, frames, "every frame of the batch in flight fails: {errs:?}");
    let want = format!(
        "the python worker (pid {first}) of stage `pyb` was killed by signal 9 (SIGKILL: `kill -9`, or the out-of-memory killer) while frames 0:0, 0:1, 0:2, 0:3 (a batch of 4) were in flight; restarted it as pid {second} (restart = \"on_failure\")"
    );
    for e in &errs {
        assert_eq!(e["class"], "python", "{e:?}");
        assert_eq!(e["error"].as_str().unwrap(), want);
    }
    let seen = probe("py_kill_batch").seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        (4..16).collect::<Vec<u64>>(),
        "the later frames go on through the new worker"
    );
    assert_eq!(stage(&s, "pyb").errors, 4);
    assert_eq!(stage(&s, "pyb").restarts, 1, "one worker replaced, one restart");
    let after = series(&scrape(), "dataflow_stage_restarts_total", "pyb").unwrap_or(0.0);
    assert_eq!(after - before, 1.0);
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the run");
    }
}

#[test]
fn python_joining_stage_under_batch_gets_whole_joined_frames_in_one_process_batch() {
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
from dataflow_stage import Stage

class Square(Stage):
    def process(self, frame):
        return frame.set_number("sq", float(frame.seq * frame.seq))

class Both(Stage):
    def process_batch(self, frames):
        for f in frames:
            img = f.image("image")
            f.set_text("both", f"{img.shape[1]}x{img.shape[0]} sq={f.number('sq'):.0f} lost={f.lost_inputs}")
            f.set_number("batch_size", len(frames))
        return frames
"#;
    let path = script(dir.path(), "join_batch.py", code);
    let py = python().display().to_string();
    let s = run(
        &format!(
            r#"
[stage.src]
kind = "synthetic"
frames = 12
width = 12
height = 6
[stage.plain]
kind = "passthrough"
inputs = ["src"]
[stage.square]
kind = "python"
inputs = ["src"]
script = "{path}"
class = "Square"
python = "{py}"
outputs = {{ out = ["sq"] }}
[stage.both]
kind = "python"
inputs = ["plain", "square"]
script = "{path}"
class = "Both"
python = "{py}"
join_timeout_ms = 10000
mailbox = 8
batch = {{ max = 4, wait_ms = 5000 }}
requires = ["image", "sq"]
outputs = {{ out = ["both", "lost_inputs", "batch_size"] }}
[stage.sink]
kind = "csv_sink"
inputs = ["both"]
path = "both.csv"
texts = true
"#
        ),
        dir.path(),
    );
    assert_eq!(s.failed, 0, "{:?}", errors(dir.path()));
    let rows = read_csv(&dir.path().join("both.csv"));
    assert_eq!(rows.len(), 12, "one output per frame");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["frame"], format!("0:{i}"), "in order");
        assert_eq!(
            r["both"],
            format!("12x6 sq={} lost=0", i * i),
            "both inputs joined: {r:?}"
        );
        assert_eq!(r["batch_size"], "4", "three full batches of joined frames: {r:?}");
    }
}

/// Hangs (`Hang`) or exits (`Exit`) in the batch holding frame 5.
const BAD_BATCH: &str = r#"
import os, time
from dataflow_stage import Stage

class Hang(Stage):
    def process_batch(self, frames):
        if any(f.seq == 5 for f in frames):
            time.sleep(30)
        return frames

class Exit(Stage):
    def process_batch(self, frames):
        if any(f.seq == 5 for f in frames):
            os._exit(3)
        return frames
"#;

/// `src (12 frames) -> py (class, restart, batch of 4, timeout_s 0.5) -> record`.
fn bad_batch_graph(dir: &Path, class: &str, restart: &str, probe: &str) -> String {
    format!(
        "[stage.src]\nkind = \"synthetic\"\nframes = 12\nwidth = 8\nheight = 8\n\
         [stage.py]\nkind = \"python\"\ninputs = [\"src\"]\nscript = \"{}\"\nclass = \"{class}\"\npython = \"{}\"\n\
         restart = \"{restart}\"\ntimeout_s = 0.5\nmailbox = 4\nbatch = {{ max = 4, wait_ms = 5000 }}\n\
         [stage.sink]\nkind = \"record\"\ninputs = [\"py\"]\nprobe = \"{probe}\"\n",
        script(dir, "bad_batch.py", BAD_BATCH),
        python().display()
    )
}

#[test]
fn python_worker_hung_or_dead_during_a_batch_fails_every_frame_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let s = run(
        &bad_batch_graph(dir.path(), "Hang", "on_failure", "py_hang_batch"),
        dir.path(),
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "the hung worker held the run");
    let seen = probe("py_hang_batch").seen.lock().unwrap().clone();
    assert_eq!(seen, [0, 1, 2, 3, 8, 9, 10, 11], "the other batches go on");
    let errs = errors(dir.path());
    let frames: Vec<&str> = errs.iter().map(|e| e["frame"].as_str().unwrap()).collect();
    assert_eq!(frames, ["0:4", "0:5", "0:6", "0:7"], "{errs:?}");
    for e in &errs {
        let text = e["error"].as_str().unwrap();
        assert_eq!(e["class"], "python");
        assert!(
            text.contains("of stage `py` did not answer within 2 s (timeout_s = 0.5 per frame of the batch) and was killed while frames 0:4, 0:5, 0:6, 0:7 (a batch of 4) were in flight; restarted it as pid "),
            "{text}"
        );
    }
    assert_eq!(stage(&s, "py").restarts, 1, "one worker replaced, one restart");

    let dir = tempfile::tempdir().unwrap();
    let s = run(
        &bad_batch_graph(dir.path(), "Exit", "never", "py_exit_batch"),
        dir.path(),
    );
    let fatal = s.fatal.clone().expect("the run must stop with an error");
    assert!(
        fatal.contains("stage `py`")
            && fatal.contains("exited with status 3 while frames 0:4, 0:5, 0:6, 0:7 (a batch of 4) were in flight"),
        "{fatal}"
    );
    let seen = probe("py_exit_batch").seen.lock().unwrap().clone();
    assert!(seen.iter().all(|f| !(4..8).contains(f)), "{seen:?}");
}

/// A stage whose `process_batch` returns a fresh frame for the first input (it belongs to
/// no input: the engine would drop it) and the others changed.
const ORPHAN: &str = r#"
from dataflow_stage import Stage, Frame

class Orphan(Stage):
    def process_batch(self, frames):
        out = [Frame("9:9", {"text": "made up"})]
        for f in frames[1:]:
            f.fields["text"] = f"seen {f.id}"
            out.append(f)
        return out
"#;

#[test]
fn python_selftest_feeds_a_batch_and_names_the_input_of_each_output() {
    let py = python();
    let selftest = |script: &str, extra: &[&str]| {
        let out = Command::new(&py)
            .current_dir(root())
            .env("PYTHONPATH", root().join("python"))
            .args(["-m", "dataflow_stage", "selftest", script])
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = selftest("stages/colour_histogram.py", &["--batch", "3"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("3 frame(s) in, 3 frame(s) out"), "{text}");
    for k in 0..3 {
        assert!(
            text.contains(&format!("frame 0:{k} port (first), belongs to input 0:{k}")),
            "{text}"
        );
    }
    // Each frame's image differs, so the captions do: the batch is three frames, not one thrice.
    let captions: std::collections::BTreeSet<&str> =
        text.lines().filter(|l| l.trim_start().starts_with("text:")).collect();
    assert_eq!(captions.len(), 3, "{text}");

    let dir = tempfile::tempdir().unwrap();
    let orphan = script(dir.path(), "orphan.py", ORPHAN);
    let (code, text) = selftest(&orphan, &["Orphan", "--batch", "2"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("2 frame(s) in, 2 frame(s) out"), "{text}");
    assert!(text.contains("frame 9:9 port (first), belongs to NO INPUT"), "{text}");
    assert!(text.contains("frame 0:1 port (first), belongs to input 0:1"), "{text}");
    assert!(text.contains("1 output frame(s) belong to no input"), "{text}");
}
