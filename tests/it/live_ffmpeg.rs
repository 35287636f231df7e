//! The `ffmpeg` source and the `video_sink`: frames from a real ffmpeg process
//! (`lavfi` test patterns and a generated file), restarts after the process is killed,
//! videos that ffprobe can read, and a clear error without ffmpeg.
//! Needs `ffmpeg` and `ffprobe` on PATH (`scripts/setup-system ffmpeg`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dataflow_engine::{
    BuildContext, Built, GraphSource, Input, Outputs, Ports, Registry, Role, RunSummary, Stage, StageError, StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::support::{bin, registry, root};

/// What the test sink saw of one frame.
#[derive(Debug, Clone)]
struct Seen {
    captured: SystemTime,
    width: u32,
    height: u32,
    name: String,
    pid: u32,
    restarts: u64,
}

/// The frames one `frame_log` sink saw, shared with the test.
type Log = Arc<Mutex<Vec<Seen>>>;

fn logs() -> &'static Mutex<HashMap<String, Log>> {
    static L: OnceLock<Mutex<HashMap<String, Log>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

fn log(name: &str) -> Log {
    logs().lock().unwrap().entry(name.to_string()).or_default().clone()
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FrameLogConfig {
    log: String,
    /// Kill (SIGKILL) the ffmpeg process that produced the frame with this index.
    #[serde(default)]
    kill_at: Option<usize>,
}

/// Test sink recording capture time, size, name, ffmpeg pid and restarts of every frame.
struct FrameLog;
struct FrameLogRun {
    log: Log,
    kill_at: Option<usize>,
}
impl Stage for FrameLogRun {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = msg.fields.image("image").unwrap();
        let seen = Seen {
            captured: msg.captured,
            width: img.width,
            height: img.height,
            name: msg.fields.text("name").unwrap_or_default().to_string(),
            pid: msg.fields.number("ffmpeg_pid").unwrap() as u32,
            restarts: msg.fields.number("restarts").unwrap() as u64,
        };
        let mut log = self.log.lock().unwrap();
        if self.kill_at == Some(log.len()) {
            let st = Command::new("kill")
                .args(["-9", &seen.pid.to_string()])
                .status()
                .unwrap();
            assert!(st.success(), "kill -9 {}", seen.pid);
        }
        log.push(seen);
        Ok(())
    }
}
impl StageKind for FrameLog {
    type Config = FrameLogConfig;
    const NAME: &'static str = "frame_log";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "test sink recording ffmpeg frames";
    fn ports(_: &Self::Config) -> Ports {
        Ports {
            requires: vec![
                dataflow_engine::Field::new("image", dataflow_engine::FieldType::Image),
                dataflow_engine::Field::new("ffmpeg_pid", dataflow_engine::FieldType::Number),
                dataflow_engine::Field::new("restarts", dataflow_engine::FieldType::Number),
            ],
            ..Ports::default()
        }
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(FrameLogRun {
            log: log(&c.log),
            kill_at: c.kill_at,
        })))
    }
}

fn reg() -> Registry {
    let mut r = registry();
    r.register::<FrameLog>();
    r
}

fn require_ffmpeg() {
    for b in ["ffmpeg", "ffprobe"] {
        let ok = Command::new(b)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "{b} is needed for these tests: run `scripts/setup-system ffmpeg`");
    }
}

/// Validates and runs graph text with the test registry; `Err` is the run's start-up error.
fn run(text: &str, out: &Path) -> Result<RunSummary, dataflow_engine::RunError> {
    run_stopped_after(text, out, None)
}

/// [`run`], asking the run to stop (as Ctrl-C does) after `stop_after` when given.
fn run_stopped_after(
    text: &str,
    out: &Path,
    stop_after: Option<Duration>,
) -> Result<RunSummary, dataflow_engine::RunError> {
    require_ffmpeg();
    let src = GraphSource::from_text(Path::new("test.toml"), text.to_string(), &[]).unwrap();
    let plan = dataflow_engine::plan(&src, &reg()).unwrap_or_else(|d| panic!("{d}"));
    let (rt, opts) = crate::support::in_process(out);
    if let Some(after) = stop_after {
        let stop = opts.stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            stop.set();
        });
    }
    rt.block_on(dataflow_engine::run(&plan, opts))
}

/// Whether process `pid` still exists (a reaped child does not) after a grace period.
/// (`run` now joins its source threads, and dropping the source is what kills ffmpeg, so
/// the grace period is a margin; `no_ffmpeg_child_or_source_thread_outlives_run` checks
/// without one.)
fn alive(pid: u32) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn lavfi_source_delivers_the_frames_asked_for_at_its_size_and_pace() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let s = run(
        r#"
[stage.cam]
kind = "ffmpeg"
format = "lavfi"
input = "testsrc=size=320x240:rate=25"
realtime = true
frames = 30
[stage.sink]
kind = "frame_log"
inputs = ["cam"]
log = "lavfi30"
"#,
        dir.path(),
    )
    .unwrap();
    let seen = log("lavfi30").lock().unwrap().clone();
    let span = seen.last().unwrap().captured.duration_since(seen[0].captured).unwrap();
    println!(
        "{} frames in {:.2} s, capture span {span:?}",
        seen.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(s.frames_in, 30);
    assert_eq!(s.failed, 0, "{:?}", s.fatal);
    assert_eq!(seen.len(), 30);
    assert!(seen.iter().all(|f| (f.width, f.height) == (320, 240)));
    assert_eq!(seen[0].name, "frame-000000");
    assert_eq!(seen[29].name, "frame-000029");
    assert!(
        seen.windows(2).all(|w| w[0].captured < w[1].captured),
        "capture times increase"
    );
    // `realtime` (-re) paces a 25 fps input: 29 intervals of 40 ms.
    assert!(span >= Duration::from_millis(900), "29 frames at 25 fps span {span:?}");
    assert!(seen.iter().all(|f| f.restarts == 0 && f.pid == seen[0].pid));
    assert!(!alive(seen[0].pid), "ffmpeg is gone once the frame limit is reached");
}

#[test]
fn stop_request_ends_an_endless_live_input_and_kills_ffmpeg() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let s = run_stopped_after(
        r#"
[stage.cam]
kind = "ffmpeg"
format = "lavfi"
input = "testsrc=size=64x48:rate=25"
realtime = true
[stage.sink]
kind = "frame_log"
inputs = ["cam"]
log = "stopped"
"#,
        dir.path(),
        Some(Duration::from_millis(700)),
    )
    .unwrap();
    let took = t0.elapsed();
    let seen = log("stopped").lock().unwrap().clone();
    println!("{} frames, run took {took:?}", seen.len());
    assert!(s.interrupted);
    assert!(!seen.is_empty());
    assert!(took < Duration::from_secs(3), "the stop is seen promptly ({took:?})");
    assert!(!alive(seen[0].pid), "ffmpeg is killed when the run stops");
}

/// Regression (issue 19): `run` used to return before the source thread had dropped its
/// source, so ffmpeg could outlive it. Now `run` joins every thread: no grace period.
#[test]
fn no_ffmpeg_child_or_source_thread_outlives_run() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[stage.olcam]
kind = "ffmpeg"
format = "lavfi"
input = "testsrc=size=64x48:rate=25"
realtime = true
[stage.sink]
kind = "frame_log"
inputs = ["olcam"]
log = "outlive"
"#;
    let src = GraphSource::from_text(Path::new("test.toml"), text.to_string(), &[]).unwrap();
    let plan = dataflow_engine::plan(&src, &reg()).unwrap_or_else(|d| panic!("{d}"));
    let (rt, opts) = crate::support::in_process(dir.path());
    // Stop once frames flow (however long ffmpeg takes to start on a loaded machine).
    let stop = opts.stop.clone();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        while log("outlive").lock().unwrap().len() < 3 && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.set();
    });
    let s = rt.block_on(dataflow_engine::run(&plan, opts)).unwrap();
    let seen = log("outlive").lock().unwrap().clone();
    assert!(s.interrupted && !seen.is_empty());
    let pid = seen[0].pid;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "ffmpeg {pid} still exists when run has returned"
    );
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        // The engine's thread for this source (`olcam-source`) and the stage's own
        // threads reading ffmpeg's stdout and stderr (`olcam-ffmpeg-read`,
        // `olcam-ffmpeg-stderr`, cut to 15 bytes by the kernel).
        .filter(|n| n.trim().starts_with("olcam-"))
        .collect();
    assert!(threads.is_empty(), "a thread of the source outlived run: {threads:?}");
}

#[test]
fn killed_ffmpeg_is_restarted_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = run(
        r#"
[stage.cam]
kind = "ffmpeg"
format = "lavfi"
input = "testsrc=size=64x48:rate=50"
realtime = true
frames = 40
[stage.sink]
kind = "frame_log"
inputs = ["cam"]
log = "killed"
kill_at = 10
"#,
        dir.path(),
    )
    .unwrap();
    let seen = log("killed").lock().unwrap().clone();
    let first = seen[0].pid;
    let after: Vec<&Seen> = seen.iter().filter(|f| f.pid != first).collect();
    println!(
        "{} frames, {} from the restarted ffmpeg (pid {} -> {:?})",
        seen.len(),
        after.len(),
        first,
        after.first().map(|f| f.pid)
    );
    assert_eq!(s.failed, 0, "{:?}", s.fatal);
    assert_eq!(seen.len(), 40, "the stream goes on to the frame limit");
    assert!(
        seen.len() - after.len() >= 11,
        "frames before the kill come from the first ffmpeg"
    );
    assert!(!after.is_empty(), "frames arrive from a new ffmpeg after the kill");
    assert!(after.iter().all(|f| f.restarts == 1), "one restart counted");
    assert!(seen.iter().filter(|f| f.pid == first).all(|f| f.restarts == 0));
    let names: Vec<&str> = seen.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names[39], "frame-000039", "names count over the restart");
}

fn probe_video(path: &Path) -> String {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn video_sink_writes_a_video_ffprobe_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = run(
        r#"
[stage.cam]
kind = "ffmpeg"
format = "lavfi"
input = "testsrc=size=160x120:rate=25"
frames = 20
[stage.video]
kind = "video_sink"
inputs = ["cam"]
[stage.avi]
kind = "video_sink"
inputs = ["cam"]
codec = "mpeg4"
path = "clips/cam.avi"
rate = 10
"#,
        dir.path(),
    )
    .unwrap();
    assert_eq!(s.failed, 0, "{:?}", s.fatal);
    let info = probe_video(&dir.path().join("video.mp4"));
    let avi = probe_video(&dir.path().join("clips/cam.avi"));
    println!("ffprobe: video.mp4 {info}; clips/cam.avi {avi}");
    assert_eq!(info, "h264,160,120,20", "default: <stage>.mp4, H.264");
    assert_eq!(avi, "mpeg4,160,120,20");
}

#[test]
fn file_input_ends_the_stream_at_its_end_and_size_is_probed() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    let st = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=96x64:rate=25",
            "-frames:v",
            "12",
        ])
        .args(["-pix_fmt", "yuv420p", "-y"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(st.success());
    let s = run(
        &format!(
            r#"
[stage.file]
kind = "ffmpeg"
input = "{}"
[stage.sink]
kind = "frame_log"
inputs = ["file"]
log = "file12"
"#,
            clip.display()
        ),
        &dir.path().join("out"),
    )
    .unwrap();
    let seen = log("file12").lock().unwrap().clone();
    assert_eq!(s.failed, 0, "{:?}", s.fatal);
    assert_eq!(
        seen.len(),
        12,
        "every frame of the file, then the end (no restart for files)"
    );
    assert!(seen.iter().all(|f| (f.width, f.height) == (96, 64) && f.restarts == 0));
}

#[test]
fn file_input_with_restart_plays_again() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("five.mp4");
    let st = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=32x24:rate=25",
            "-frames:v",
            "5",
        ])
        .args(["-pix_fmt", "yuv420p", "-y"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(st.success());
    let s = run(
        &format!(
            r#"
[stage.file]
kind = "ffmpeg"
input = "{}"
reconnect = true
frames = 12
[stage.sink]
kind = "frame_log"
inputs = ["file"]
log = "loop"
"#,
            clip.display()
        ),
        &dir.path().join("out"),
    )
    .unwrap();
    let seen = log("loop").lock().unwrap().clone();
    let restarts: Vec<u64> = seen.iter().map(|f| f.restarts).collect();
    println!("restarts per frame: {restarts:?}");
    assert_eq!(s.failed, 0, "{:?}", s.fatal);
    assert_eq!(seen.len(), 12);
    assert_eq!(
        restarts,
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2],
        "the file plays again after each end"
    );
}

#[test]
fn duration_limit_ends_an_endless_input() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let s = run(
        r#"
[stage.cam]
kind = "ffmpeg"
format = "lavfi"
input = "testsrc=rate=20"
width = 32
height = 24
realtime = true
duration_s = 0.6
[stage.sink]
kind = "frame_log"
inputs = ["cam"]
log = "duration"
"#,
        dir.path(),
    )
    .unwrap();
    let took = t0.elapsed();
    let seen = log("duration").lock().unwrap().clone();
    println!("{} frames in {took:?}", seen.len());
    assert_eq!(s.failed, 0);
    assert!(
        (2..=14).contains(&seen.len()),
        "about 12 frames in 0.6 s at 20 fps, got {}",
        seen.len()
    );
    assert!(
        seen.iter().all(|f| (f.width, f.height) == (32, 24)),
        "scaled to width x height"
    );
    assert!(
        took < Duration::from_secs(5),
        "the run ends soon after duration_s ({took:?})"
    );
}

#[test]
fn bad_input_fails_with_ffmpegs_own_words() {
    let dir = tempfile::tempdir().unwrap();
    let s = run(
        r#"
[stage.cam]
kind = "ffmpeg"
format = "lavfi"
input = "nosuchfilter=size=32x24"
width = 32
height = 24
[stage.sink]
kind = "frame_log"
inputs = ["cam"]
log = "bad"
"#,
        dir.path(),
    )
    .unwrap();
    let errors = std::fs::read_to_string(dir.path().join("errors.jsonl")).unwrap();
    println!("{errors}");
    assert_eq!(
        s.failed, 1,
        "one failure, no restart loop on an input that never worked"
    );
    assert_eq!(s.frames_in, 0);
    assert!(errors.contains("nosuchfilter"), "the error quotes ffmpeg's stderr");
}

#[test]
fn missing_ffmpeg_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("g.toml");
    std::fs::write(
        &graph,
        r#"
[stage.cam]
kind = "ffmpeg"
format = "lavfi"
input = "testsrc"
ffmpeg = "/nonexistent/ffmpeg"
[stage.video]
kind = "video_sink"
inputs = ["cam"]
ffmpeg = "/nonexistent/ffmpeg"
"#,
    )
    .unwrap();
    let o = Command::new(bin())
        .current_dir(root())
        .args(["run", "--no-progress", "--metrics", "off", "--out"])
        .arg(dir.path().join("out"))
        .arg(&graph)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("/nonexistent/ffmpeg not found; `scripts/setup-system ffmpeg` installs it"));
    assert!(
        err.contains("/nonexistent/ffprobe not found"),
        "the probe binary is checked too"
    );
    assert!(err.contains("`video`"), "the sink's error names its stage");

    // In process (no resource pass): building the source fails with the same words.
    let e = run(
        r#"
[stage.cam]
kind = "ffmpeg"
input = "testsrc"
format = "lavfi"
width = 8
height = 8
ffmpeg = "ffmpeg-that-is-not-there"
[stage.sink]
kind = "null_sink"
inputs = ["cam"]
"#,
        &dir.path().join("out2"),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("ffmpeg-that-is-not-there not found on PATH; `scripts/setup-system ffmpeg` installs it"),
        "{e}"
    );
}
