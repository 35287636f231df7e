//! `ffmpeg`: frames from an ffmpeg child process — cameras (V4L2), RTSP/HTTP streams,
//! video files, or any `lavfi` test pattern ffmpeg can open.
//!
//! ffmpeg decodes `input` and writes raw RGB24 to its stdout
//! (`-f rawvideo -pix_fmt rgb24 pipe:1`); a reader thread cuts the pipe into frames of
//! exactly `width * height * 3` bytes. The size is fixed for the whole run: set
//! `width`/`height` (ffmpeg scales to it), or leave them out and the source asks
//! `ffprobe` once at build time (and still scales, so a stream that changes resolution
//! mid-run keeps the first size).
//!
//! Each frame carries `image` (RGB), `name` (`frame-000123`, counted from 0 over the whole
//! run), `ffmpeg_pid` (the process that produced it), `restarts` (how many times ffmpeg
//! was restarted so far) and `gap_s` (seconds without frames because of restarts, in
//! total). The engine stamps the capture time when the source yields the frame.
//!
//! # End of stream and restarts
//!
//! (The key is `reconnect`, since `restart` is the engine's reserved key for restarting a
//! stage after a panic.)
//!
//! - `frames` and `duration_s` end the run cleanly (ffmpeg is killed).
//! - `reconnect = false`: when ffmpeg's output ends, the stream ends. A clean exit ends the
//!   stream quietly (an incomplete last frame is dropped and logged); a non-zero exit is
//!   reported as one failed item with the tail of ffmpeg's stderr.
//! - `reconnect = true`: when ffmpeg exits or its pipe closes (camera unplugged, RTSP
//!   server gone, the process killed), ffmpeg is started again after a backoff that
//!   doubles from 100 ms to 5 s and resets once frames flow again. Every restart is
//!   logged (`tracing::warn`) and counted in `restarts`; the seconds between the last
//!   frame before the failure and the first frame after it add up in `gap_s`. How many
//!   frames the input produced meanwhile cannot be known, so none is claimed.
//!   A file input with `reconnect = true` plays again from the start (a loop).
//! - Default of `reconnect`: `false` when `input` is a regular file, `true` otherwise
//!   (devices such as `/dev/video0`, URLs, `lavfi` graphs).
//! - When the very first ffmpeg process yields no frame at all, the input is taken to be
//!   wrong (typo, missing device) and the stream ends with that error, reconnect or not.
//!
//! Between ffmpeg and the graph at most one decoded frame waits (plus what fits in the
//! pipe), so a live input stays fresh as long as the source is not held back: give the
//! edge after a live source `when_full = "drop_oldest"`.
//!
//! ffmpeg's stderr (at `-loglevel warning`) goes to the log line by line, and its last
//! lines are quoted in errors. The child is killed when the stream ends, when the run is
//! stopped (the stop flag is polled every 50 ms while waiting for a frame) and when the
//! source is dropped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dataflow_engine::FieldType;
use dataflow_engine::{
    BuildContext, Built, Fields, Image, OutPort, PixelFormat, Ports, Role, Source, SourceItem, StageError, StageKind,
    StopFlag, Value,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::DEFAULT_MAX_PIXELS;

/// Keys of `ffmpeg`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FfmpegConfig {
    /// What ffmpeg opens: `/dev/video0`, `rtsp://host/stream`, a video file, or a
    /// `lavfi` graph such as `testsrc=size=320x240:rate=25`.
    pub input: String,
    /// Input format (`-f` before the input): `v4l2`, `lavfi`, `rtsp`, ...; absent = ffmpeg guesses.
    #[serde(default)]
    pub format: Option<String>,
    /// More input options, placed before `-i` (e.g. `["-input_format", "mjpeg",
    /// "-video_size", "1280x720"]` for a camera, `["-rtsp_transport", "tcp"]`).
    #[serde(default)]
    pub input_args: Vec<String>,
    /// Frame width; absent = the input's (asked from `ffprobe`), or kept in proportion
    /// when only `height` is set.
    #[serde(default)]
    pub width: Option<u32>,
    /// Frame height; absent = the input's, or kept in proportion when only `width` is set.
    #[serde(default)]
    pub height: Option<u32>,
    /// Output frames per second (`-r`); ffmpeg drops or repeats frames to keep it.
    /// Absent = the input's own rate.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Stop after this many frames; absent = until the input ends or the run is stopped.
    #[serde(default)]
    pub frames: Option<u64>,
    /// Stop after this many seconds from the first request for a frame.
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// Start ffmpeg again when it exits (see the module docs); absent = `false` when
    /// `input` is a regular file, `true` otherwise (devices, URLs, `lavfi`).
    #[serde(default)]
    pub reconnect: Option<bool>,
    /// Read the input at its native rate (`-re`), for files standing in for a live feed.
    #[serde(default)]
    pub realtime: bool,
    /// The ffmpeg binary; `ffprobe` is looked for beside it (or on `PATH` for a bare name).
    #[serde(default = "default_ffmpeg")]
    pub ffmpeg: PathBuf,
    /// Refuse frame sizes with more pixels than this.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

fn default_ffmpeg() -> PathBuf {
    PathBuf::from("ffmpeg")
}
fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}

/// The `ffmpeg` kind.
pub struct Ffmpeg;

/// Lines of stderr quoted in errors.
const TAIL_LINES: usize = 8;
/// How long `next` waits for a frame before looking at the stop flag and the deadline again.
const POLL: Duration = Duration::from_millis(50);
/// First restart delay; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long `ffprobe` may take to open the input.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The message for a missing ffmpeg (or ffprobe) binary.
pub(crate) fn not_found(bin: &Path) -> String {
    format!(
        "{} not found{}; `scripts/setup-system ffmpeg` installs it",
        bin.display(),
        if bin.components().count() == 1 { " on PATH" } else { "" }
    )
}

/// An error for a binary that could not be started.
pub(crate) fn spawn_error(bin: &Path, e: &std::io::Error) -> StageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StageError::io(not_found(bin))
    } else {
        StageError::io(format!("cannot run {}: {e}", bin.display()))
    }
}

/// `bin -version` runs; otherwise a message saying what is wrong and how to fix it.
pub(crate) fn check_binary(bin: &Path) -> Option<String> {
    match Command::new(bin)
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`{} -version` failed ({s})", bin.display())),
        Err(e) => Some(spawn_error(bin, &e).message),
    }
}

/// The `ffprobe` beside `ffmpeg` (same folder), or `ffprobe` on `PATH` for a bare name.
fn ffprobe_for(ffmpeg: &Path) -> PathBuf {
    match ffmpeg.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("ffprobe"),
        _ => PathBuf::from("ffprobe"),
    }
}

/// A child's stderr, read line by line on its own thread: every line goes to the log,
/// the last [`TAIL_LINES`] are kept for error messages.
#[derive(Clone, Default)]
pub(crate) struct StderrTail(Arc<Mutex<VecDeque<String>>>, Arc<Mutex<Option<JoinHandle<()>>>>);

impl StderrTail {
    /// Starts the thread reading `stderr` of the process `pid` of stage `stage`.
    pub(crate) fn follow(stderr: impl Read + Send + 'static, stage: &str, pid: u32) -> StderrTail {
        let tail = StderrTail::default();
        let keep = tail.clone();
        let stage = stage.to_string();
        let name = format!("{stage}-ffmpeg-stderr");
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = line.trim_end().to_string();
                if line.is_empty() {
                    continue;
                }
                tracing::warn!(stage = %stage, pid, "ffmpeg: {line}");
                if let Ok(mut t) = keep.0.lock() {
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
        match spawned {
            Ok(handle) => {
                if let Ok(mut h) = tail.1.lock() {
                    *h = Some(handle);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the thread reading ffmpeg's stderr"),
        }
        tail
    }

    /// Waits for the reader thread, which ends when the process's stderr closes (call it
    /// once the process is gone).
    pub(crate) fn join(&self) {
        let handle = self.1.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// The last lines, joined, or a note that there were none. Waits a moment for the
    /// reader thread to catch up with a process that just exited.
    pub(crate) fn text(&self) -> String {
        std::thread::sleep(Duration::from_millis(20));
        let lines: Vec<String> = self.0.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default();
        if lines.is_empty() {
            "(ffmpeg printed nothing)".into()
        } else {
            lines.join(" | ")
        }
    }
}

/// Waits up to `limit` for `child` to exit, then kills it; returns its status.
pub(crate) fn wait_or_kill(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if t0.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

/// Asks ffprobe for the size of the first video stream.
fn probe(c: &FfmpegConfig, input: &str) -> Result<(u32, u32), StageError> {
    let bin = ffprobe_for(&c.ffmpeg);
    let mut cmd = Command::new(&bin);
    cmd.args(["-v", "error"]).args(&c.input_args);
    if let Some(f) = &c.format {
        cmd.args(["-f", f]);
    }
    cmd.args([
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=width,height",
        "-of",
        "csv=p=0",
        "-i",
    ])
    .arg(input)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_error(&bin, &e))?;
    let status = wait_or_kill(&mut child, PROBE_TIMEOUT);
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let err = err.trim().replace('\n', " | ");
    match status {
        Some(s) if s.success() => {}
        Some(s) => {
            return Err(StageError::io(format!(
                "ffprobe cannot open `{input}` ({s}): {err}; check `input`/`format`, or set `width` and `height`"
            )))
        }
        None => {
            return Err(StageError::io(format!(
            "ffprobe did not answer within {PROBE_TIMEOUT:?} for `{input}`; set `width` and `height` to skip probing"
        )))
        }
    }
    let size = out.lines().find_map(|l| {
        let mut it = l.trim().trim_end_matches(',').split(',');
        let w = it.next()?.trim().parse::<u32>().ok()?;
        let h = it.next()?.trim().parse::<u32>().ok()?;
        Some((w, h))
    });
    match size {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(StageError::io(format!(
            "ffprobe found no video stream with a size in `{input}` (it printed {:?}); set `width` and `height`",
            out.trim()
        ))),
    }
}

/// Problems with the numbers of a config (shared by `check` and `build`).
fn config_errors(c: &FfmpegConfig) -> Vec<String> {
    let mut e = Vec::new();
    if c.input.trim().is_empty() {
        e.push("`input` is empty".to_string());
    }
    if c.width == Some(0) || c.height == Some(0) {
        e.push("`width` and `height` must be at least 1".into());
    }
    if let Some(r) = c.rate {
        if !(r > 0.0 && r.is_finite()) {
            e.push(format!(
                "`rate` must be a positive number of frames per second, got {r}"
            ));
        }
    }
    if let Some(d) = c.duration_s {
        if !(d > 0.0 && d.is_finite()) {
            e.push(format!("`duration_s` must be a positive number of seconds, got {d}"));
        }
    }
    e
}

/// One ffmpeg process and the thread cutting its stdout into frames.
struct Child {
    proc: std::process::Child,
    pid: u32,
    frames: Receiver<Chunk>,
    /// The thread cutting stdout into frames; joined on drop, so it never outlives the
    /// stage (and so never `run`).
    reader: Option<JoinHandle<()>>,
    stderr: StderrTail,
    /// Frames this process produced.
    got: u64,
    /// Bytes of an incomplete last frame, when the pipe closed mid-frame.
    short: Option<usize>,
}

impl Drop for Child {
    fn drop(&mut self) {
        // Killing an exited process fails harmlessly; `wait` reaps it either way.
        let _ = self.proc.kill();
        let _ = self.proc.wait();
        // The pipes are closed now; a reader blocked on handing over a frame is released
        // by dropping the receiving end, then both reader threads end and are joined.
        drop(std::mem::replace(&mut self.frames, std::sync::mpsc::sync_channel(0).1));
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
        self.stderr.join();
    }
}

/// What the reader thread sends; a closed channel means the pipe is at its end.
enum Chunk {
    Frame(Vec<u8>),
    /// The pipe closed after this many bytes of a frame.
    Short(usize),
    /// Reading the pipe failed.
    Error(String),
}

fn read_frames(mut out: impl Read, frame_bytes: usize, tx: SyncSender<Chunk>) {
    loop {
        let mut buf = vec![0u8; frame_bytes];
        let mut filled = 0;
        while filled < frame_bytes {
            match out.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Chunk::Error(e.to_string()));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        if filled < frame_bytes {
            let _ = tx.send(Chunk::Short(filled));
            return;
        }
        if tx.send(Chunk::Frame(buf)).is_err() {
            return;
        }
    }
}

struct Run {
    stage: String,
    ffmpeg: PathBuf,
    args: Vec<OsString>,
    input: String,
    width: u32,
    height: u32,
    frames: Option<u64>,
    duration: Option<Duration>,
    deadline: Option<Instant>,
    restart: bool,
    /// The running ffmpeg; dropping it kills the process.
    child: Option<Child>,
    /// Frames yielded so far.
    n: u64,
    restarts: u64,
    backoff: Duration,
    last_frame_at: Option<Instant>,
    /// When frames stopped because ffmpeg died; cleared by the next frame.
    down_since: Option<Instant>,
    gap: Duration,
    ended: bool,
}

impl Run {
    fn spawn(&self) -> Result<Child, StageError> {
        let mut proc = Command::new(&self.ffmpeg)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(&self.ffmpeg, &e))?;
        let pid = proc.id();
        let stderr = match proc.stderr.take() {
            Some(e) => StderrTail::follow(e, &self.stage, pid),
            None => StderrTail::default(),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let frame_bytes = self.width as usize * self.height as usize * 3;
        let reader = match proc.stdout.take() {
            Some(out) => Some(
                std::thread::Builder::new()
                    .name(format!("{}-ffmpeg-read", self.stage))
                    .spawn(move || read_frames(out, frame_bytes, tx))
                    .map_err(|e| StageError::io(format!("cannot start the thread reading ffmpeg: {e}")))?,
            ),
            None => None,
        };
        tracing::debug!(stage = %self.stage, pid, args = ?self.args, "ffmpeg started");
        Ok(Child {
            proc,
            pid,
            frames: rx,
            reader,
            stderr,
            got: 0,
            short: None,
        })
    }

    /// Sleeps the current backoff in slices (so a stop is seen), then doubles it.
    fn sleep_backoff(&mut self, stop: &StopFlag) {
        let until = Instant::now() + self.backoff;
        while Instant::now() < until && !stop.is_set() && !self.past_deadline() {
            std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn frame(&mut self, buf: Vec<u8>, pid: u32) -> SourceItem {
        let now = Instant::now();
        if let Some(since) = self.down_since.take() {
            let gap = now.saturating_duration_since(since);
            self.gap += gap;
            tracing::warn!(
                stage = %self.stage,
                restarts = self.restarts,
                gap_s = gap.as_secs_f64(),
                pid,
                "ffmpeg frames flow again after {:.2} s without frames",
                gap.as_secs_f64()
            );
        }
        self.backoff = MIN_BACKOFF;
        self.last_frame_at = Some(now);
        let name = format!("frame-{:06}", self.n);
        self.n += 1;
        let image = Image {
            width: self.width,
            height: self.height,
            format: PixelFormat::Rgb8,
            data: Bytes::from(buf),
        };
        SourceItem::Frame(
            Fields::new()
                .with("image", Value::Image(image))
                .with("name", Value::Text(Arc::from(name.as_str())))
                .with("ffmpeg_pid", Value::Number(f64::from(pid)))
                .with("restarts", Value::Number(self.restarts as f64))
                .with("gap_s", Value::Number(self.gap.as_secs_f64())),
        )
    }

    /// The current process's output ended: restart it, or end the stream.
    fn on_exit(&mut self, stop: &StopFlag) -> Option<SourceItem> {
        let mut child = self.child.take()?;
        let status = wait_or_kill(&mut child.proc, Duration::from_secs(2));
        let status_text = status.map_or_else(|| "unknown status".to_string(), |s| s.to_string());
        let clean = status.is_some_and(|s| s.success());
        if self.restart && self.n > 0 {
            self.restarts += 1;
            self.down_since
                .get_or_insert(self.last_frame_at.unwrap_or_else(Instant::now));
            tracing::warn!(
                stage = %self.stage,
                restarts = self.restarts,
                pid = child.pid,
                frames = child.got,
                "ffmpeg ended ({status_text}) after {} frame(s); restart {} in {:?}: {}",
                child.got,
                self.restarts,
                self.backoff,
                child.stderr.text()
            );
            drop(child);
            self.sleep_backoff(stop);
            return None;
        }
        self.ended = true;
        if let Some(bytes) = child.short {
            tracing::warn!(
                stage = %self.stage,
                "ffmpeg's output ended inside a frame ({bytes} of {} bytes); that frame is dropped",
                self.width as usize * self.height as usize * 3
            );
        }
        if clean && child.got > 0 {
            tracing::debug!(stage = %self.stage, frames = self.n, "ffmpeg input ended");
            return Some(SourceItem::End);
        }
        Some(SourceItem::Failed(StageError::io(format!(
            "ffmpeg ended ({status_text}) after {} frame(s) of `{}`: {}",
            child.got,
            self.input,
            child.stderr.text()
        ))))
    }
}

impl Source for Run {
    fn total(&self) -> Option<u64> {
        self.frames
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        if self.deadline.is_none() {
            self.deadline = self.duration.map(|d| Instant::now() + d);
        }
        loop {
            if self.ended || stop.is_set() || self.frames.is_some_and(|f| self.n >= f) || self.past_deadline() {
                // Dropping the child kills ffmpeg.
                self.child = None;
                return SourceItem::End;
            }
            if self.child.is_none() {
                match self.spawn() {
                    Ok(c) => self.child = Some(c),
                    Err(e) if self.restart && self.n > 0 => {
                        tracing::warn!(stage = %self.stage, error = %e, "cannot restart ffmpeg; trying again in {:?}", self.backoff);
                        self.sleep_backoff(stop);
                        continue;
                    }
                    Err(e) => {
                        self.ended = true;
                        return SourceItem::Failed(e);
                    }
                }
            }
            let Some(child) = self.child.as_mut() else { continue };
            match child.frames.recv_timeout(POLL) {
                Ok(Chunk::Frame(buf)) => {
                    child.got += 1;
                    let pid = child.pid;
                    return self.frame(buf, pid);
                }
                Ok(Chunk::Short(bytes)) => child.short = Some(bytes),
                Ok(Chunk::Error(e)) => {
                    tracing::warn!(stage = %self.stage, pid = child.pid, error = %e, "reading ffmpeg's output failed")
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if let Some(item) = self.on_exit(stop) {
                        return item;
                    }
                }
            }
        }
    }
}

impl StageKind for Ffmpeg {
    type Config = FfmpegConfig;
    const NAME: &'static str = "ffmpeg";
    const ROLE: Role = Role::Source;
    const DOC: &'static str =
        "Frames from an ffmpeg process (camera via v4l2, RTSP, video files, lavfi), restarted when a live input drops.";

    fn validate(c: &Self::Config) -> Vec<dataflow_engine::KeyProblem> {
        [
            dataflow_engine::check_duration_s(c.duration_s),
            dataflow_engine::check_range_opt("rate", c.rate, 1e-3, 1e6, "frames per second"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn ports(_c: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::new("out")
                .with("image", FieldType::Image)
                .with("name", FieldType::Text)
                .with_each(&["ffmpeg_pid", "restarts", "gap_s"], FieldType::Number)],
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, _ctx: &BuildContext) -> Vec<String> {
        let mut e = config_errors(c);
        e.extend(check_binary(&c.ffmpeg));
        if c.width.is_none() || c.height.is_none() {
            if let Some(m) = check_binary(&ffprobe_for(&c.ffmpeg)) {
                e.push(format!(
                    "{m} (ffprobe finds the frame size; or set `width` and `height`)"
                ));
            }
        }
        e
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        if let Some(m) = config_errors(c).into_iter().next() {
            return Err(StageError::input(m));
        }
        if let Some(m) = check_binary(&c.ffmpeg) {
            return Err(StageError::io(m));
        }
        // A plain path resolves like every path of the graph; URLs, devices and lavfi stay as written.
        let as_path = ctx.resolve(Path::new(&c.input));
        let is_file = !c.input.contains("://") && as_path.is_file();
        let input = if is_file {
            as_path.display().to_string()
        } else {
            c.input.clone()
        };
        let (width, height) = match (c.width, c.height) {
            (Some(w), Some(h)) => (w, h),
            (w, h) => {
                let (pw, ph) = probe(c, &input)?;
                // Keep the proportions when one side is given; even sizes suit most codecs.
                let even = |v: f64| ((v / 2.0).round() as u32 * 2).max(2);
                match (w, h) {
                    (Some(w), None) => (w, even(f64::from(ph) * f64::from(w) / f64::from(pw))),
                    (None, Some(h)) => (even(f64::from(pw) * f64::from(h) / f64::from(ph)), h),
                    _ => (pw, ph),
                }
            }
        };
        if u64::from(width) * u64::from(height) > c.max_pixels {
            return Err(StageError::input(format!(
                "{width}x{height} frames are over the limit of {} pixels (set `width`/`height`, or raise `max_pixels`)",
                c.max_pixels
            )));
        }
        let mut args: Vec<OsString> = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning"]
            .iter()
            .map(OsString::from)
            .collect();
        if c.realtime {
            args.push("-re".into());
        }
        args.extend(c.input_args.iter().map(OsString::from));
        if let Some(f) = &c.format {
            args.extend(["-f".into(), f.into()]);
        }
        args.extend(["-i".into(), OsString::from(&input)]);
        args.extend(["-map", "0:v:0", "-an", "-sn", "-vf"].iter().map(OsString::from));
        args.push(format!("scale={width}:{height}").into());
        if let Some(r) = c.rate {
            args.extend(["-r".into(), r.to_string().into()]);
        }
        args.extend(
            ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
                .iter()
                .map(OsString::from),
        );
        let restart = c.reconnect.unwrap_or(!is_file);
        tracing::info!(stage = %ctx.stage, input = %input, width, height, restart, "ffmpeg source");
        Ok(Built::Source(Box::new(Run {
            stage: ctx.stage.clone(),
            ffmpeg: c.ffmpeg.clone(),
            args,
            input,
            width,
            height,
            frames: c.frames,
            duration: c.duration_s.map(Duration::from_secs_f64),
            deadline: None,
            restart,
            child: None,
            n: 0,
            restarts: 0,
            backoff: MIN_BACKOFF,
            last_frame_at: None,
            down_since: None,
            gap: Duration::ZERO,
            ended: false,
        })))
    }
}
