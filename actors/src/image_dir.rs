//! `image_dir`: the images of a folder (PNG, JPEG, WebP), sorted by name; with
//! `watch = true`, then every new image that appears in the folder, as it appears.
//!
//! Each file becomes one frame with fields `image` (RGB), `name` (file stem) and
//! `path`. A file that cannot be read or decoded is reported with its path and
//! counted as failed; the stream goes on with the next file. So is an entry with an
//! image extension that is not a file (a folder named `x.png`, a symbolic link loop or
//! a broken link).
//!
//! # Watching
//! The folder is watched with inotify (`notify`) from the moment the stage is built,
//! so nothing written between start-up and the first frame is missed. A new file is
//! taken only once it is complete: when its writer closes it (`IN_CLOSE_WRITE`), at
//! once when it is renamed into the folder (the safe way to publish a file), or, for a
//! file that shows no writer (a hard link, a file system without close events), when
//! its size and modification time are the same in two checks [`SETTLE`] apart. A file
//! whose writer keeps it open without closing is taken once it has not changed for
//! [`SETTLE_OPEN`]. Files are streamed in the order they became complete. A file
//! removed before it could be read is reported as failed with its path; removing the
//! folder itself is reported and ends the stream. A watched run
//! ends on `frames`, `duration_s`, or Ctrl-C; `next` looks at the stop flag at least
//! every [`POLL`]. The folder is created when it does not exist yet (so `check`
//! accepts a missing folder when watching).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dataflow_engine::FieldType;
use dataflow_engine::{
    BuildContext, Built, Fields, Image, OutPort, Ports, Role, Source, SourceItem, StageError, StageKind, StopFlag,
    Value,
};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::{decode_rgb, DEFAULT_MAX_PIXELS};

/// How long `next` waits for folder events before it looks at the stop flag again.
pub const POLL: Duration = Duration::from_millis(50);
/// Interval of the two size checks that make a file without a known writer complete.
pub const SETTLE: Duration = Duration::from_millis(50);
/// How long a file whose writer never closes it must stay unchanged to be taken.
pub const SETTLE_OPEN: Duration = Duration::from_secs(2);

/// Keys of `image_dir`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageDirConfig {
    /// The folder to read.
    pub path: PathBuf,
    /// File extensions to take (case-insensitive).
    #[serde(default = "default_ext")]
    pub extensions: Vec<String>,
    /// Read at most this many of the files present at start.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Refuse images with more pixels than this (decompression bombs).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Go round the folder this many times (benchmarks); 1 = once. Not with `watch`.
    #[serde(default = "default_repeat")]
    pub repeat: u32,
    /// After the files present at start, follow new files as they appear in the
    /// folder (created when missing) until `frames`, `duration_s` or Ctrl-C.
    #[serde(default)]
    pub watch: bool,
    /// End the stream after this many frames (failed files not counted).
    #[serde(default)]
    pub frames: Option<u64>,
    /// End the stream this many seconds after it started.
    #[serde(default)]
    pub duration_s: Option<f64>,
}

fn default_ext() -> Vec<String> {
    ["png", "jpg", "jpeg", "webp"].iter().map(|s| s.to_string()).collect()
}
fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}
fn default_repeat() -> u32 {
    1
}

/// The `image_dir` kind.
pub struct ImageDir;

/// Limits shared by the listing and the watching source.
struct Limits {
    frames: Option<u64>,
    duration: Option<Duration>,
    started: Option<Instant>,
    emitted: u64,
}

impl Limits {
    fn new(c: &ImageDirConfig) -> Self {
        Limits {
            frames: c.frames,
            duration: c.duration_s.map(|s| Duration::from_secs_f64(s.max(0.0))),
            started: None,
            emitted: 0,
        }
    }

    /// Whether the stream is over (starts the clock on the first call).
    fn reached(&mut self) -> bool {
        let started = *self.started.get_or_insert_with(Instant::now);
        self.frames.is_some_and(|f| self.emitted >= f) || self.duration.is_some_and(|d| started.elapsed() >= d)
    }
}

/// Why a directory entry with an image extension cannot be read as a file, if it cannot.
fn not_a_file(path: &Path) -> Option<StageError> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(m) if m.is_dir() => Some(StageError::io(format!(
            "{shown}: is a folder, not an image; rename or remove it"
        ))),
        Ok(_) => Some(StageError::io(format!(
            "{shown}: not a regular file (a device, socket or pipe); remove it from the folder"
        ))),
        Err(e) => Some(StageError::io(format!(
            "{shown}: cannot read: {e} (a broken symbolic link or a link loop?); fix or remove it"
        ))),
    }
}

fn read_frame(path: &Path, max_pixels: u64, limits: &mut Limits) -> SourceItem {
    if let Some(e) = not_a_file(path) {
        return SourceItem::Failed(e);
    }
    match decode_rgb(path, max_pixels) {
        Ok(img) => {
            limits.emitted += 1;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            SourceItem::Frame(
                Fields::new()
                    .with("image", Value::Image(Image::from_rgb(img)))
                    .with("name", Value::Text(Arc::from(name.as_str())))
                    .with("path", Value::Text(Arc::from(path.display().to_string().as_str()))),
            )
        }
        Err(e) => SourceItem::Failed(e),
    }
}

struct Run {
    files: Vec<PathBuf>,
    next: usize,
    max_pixels: u64,
    limits: Limits,
}

impl Source for Run {
    fn total(&self) -> Option<u64> {
        let n = self.files.len() as u64;
        Some(self.limits.frames.map_or(n, |f| f.min(n)))
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        if stop.is_set() || self.limits.reached() || self.next >= self.files.len() {
            return SourceItem::End;
        }
        let path = self.files[self.next].clone();
        self.next += 1;
        read_frame(&path, self.max_pixels, &mut self.limits)
    }
}

/// A file seen being created or written, not complete yet.
struct Pending {
    /// A write was seen, so a close event will come: wait for it (or [`SETTLE_OPEN`]).
    written: bool,
    /// Size and modification time at the last check, and when that check was.
    last: Option<(u64, Option<SystemTime>)>,
    checked: Instant,
}

/// Follows a folder: files present at start first, then new complete files.
struct Watch {
    dir: PathBuf,
    exts: Vec<String>,
    max_pixels: u64,
    limits: Limits,
    /// Keeps the inotify watch alive; dropping it ends the events.
    _watcher: RecommendedWatcher,
    /// Folder events from the watcher's thread.
    events: Receiver<notify::Result<notify::Event>>,
    /// Complete files not read yet, in the order they became complete.
    ready: VecDeque<PathBuf>,
    pending: HashMap<PathBuf, Pending>,
    /// Size and mtime of each file already streamed, so a file announced twice
    /// (listing and event, rename `To` and `Both`) is read once, but a replaced one again.
    done: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    failures: VecDeque<StageError>,
    /// Entries with an image extension that are not files, already reported.
    refused: HashSet<PathBuf>,
    /// The folder or its watch is gone: end once what is queued has been sent.
    gone: bool,
}

fn stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| (m.len(), m.modified().ok()))
}

impl Watch {
    fn wanted(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
            && path
                .extension()
                .is_some_and(|e| self.exts.contains(&e.to_string_lossy().to_lowercase()))
    }

    fn make_ready(&mut self, path: PathBuf) {
        self.pending.remove(&path);
        if !self.ready.contains(&path) {
            self.ready.push_back(path);
        }
    }

    fn forget(&mut self, path: &Path, removed: bool) {
        let was_pending = self.pending.remove(path).is_some();
        let queued = self.ready.len();
        self.ready.retain(|p| p != path);
        let was_waiting = was_pending || queued != self.ready.len();
        self.done.remove(path);
        if removed && was_waiting {
            self.failures.push_back(StageError::io(format!(
                "{}: removed before it could be read",
                path.display()
            )));
        }
    }

    fn rescan(&mut self) {
        let mut found: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                self.failures.push_back(StageError::io(format!(
                    "cannot read the folder {}: {e}",
                    self.dir.display()
                )));
                return;
            }
        };
        found.sort();
        for p in found {
            if !self.wanted(&p) {
                continue;
            }
            if let Some(e) = not_a_file(&p) {
                // Reported once per entry, like an unreadable file.
                if self.refused.insert(p) {
                    self.failures.push_back(e);
                }
            } else if self.done.get(&p).copied() != stamp(&p) {
                self.make_ready(p);
            }
        }
    }

    fn handle(&mut self, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                self.failures.push_back(StageError::io(format!(
                    "watching {}: {e}; rescanning the folder",
                    self.dir.display()
                )));
                self.rescan();
                return;
            }
        };
        if event.need_rescan() {
            self.rescan();
            return;
        }
        let wanted: Vec<PathBuf> = event.paths.iter().filter(|p| self.wanted(p)).cloned().collect();
        match event.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                for p in &event.paths {
                    self.forget(p, false);
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
                // Renamed into the folder: complete by construction. `Both` lists [from, to].
                if let Some(p) = event.paths.last() {
                    if self.wanted(p) {
                        self.make_ready(p.clone());
                    }
                }
            }
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => {
                let written = matches!(event.kind, EventKind::Modify(_));
                for p in wanted {
                    let entry = self.pending.entry(p).or_insert(Pending {
                        written,
                        last: None,
                        checked: Instant::now(),
                    });
                    entry.written |= written;
                    entry.last = None;
                    entry.checked = Instant::now();
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                // A file removed while open is closed after its removal: nothing to read.
                for p in wanted.into_iter().filter(|p| p.exists()) {
                    self.make_ready(p);
                }
            }
            EventKind::Remove(_) => {
                for p in &event.paths {
                    if p == &self.dir {
                        self.gone = true;
                        self.failures.push_back(StageError::io(format!(
                            "the watched folder {} was removed; the stream ends",
                            self.dir.display()
                        )));
                    } else {
                        self.forget(p, true);
                    }
                }
            }
            _ => {}
        }
    }

    /// Moves pending files whose size stayed the same between two checks to `ready`.
    fn settle(&mut self) {
        let now = Instant::now();
        // A folder or a link loop that appeared under an image name never settles: report it.
        let odd: Vec<(PathBuf, StageError)> = self
            .pending
            .keys()
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .filter_map(|p| not_a_file(p).map(|e| (p.clone(), e)))
            .collect();
        for (path, e) in odd {
            self.pending.remove(&path);
            if self.refused.insert(path) {
                self.failures.push_back(e);
            }
        }
        let mut settled: Vec<PathBuf> = Vec::new();
        for (path, p) in self.pending.iter_mut() {
            let wait = if p.written { SETTLE_OPEN } else { SETTLE };
            if now.duration_since(p.checked) < wait {
                continue;
            }
            let s = stamp(path);
            if s.is_some_and(|(len, _)| len > 0) && s == p.last {
                settled.push(path.clone());
            } else {
                p.last = s;
                p.checked = now;
            }
        }
        settled.sort();
        for p in settled {
            self.make_ready(p);
        }
    }
}

impl Source for Watch {
    fn total(&self) -> Option<u64> {
        None
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        loop {
            if stop.is_set() || self.limits.reached() {
                return SourceItem::End;
            }
            if let Some(e) = self.failures.pop_front() {
                return SourceItem::Failed(e);
            }
            if let Some(path) = self.ready.pop_front() {
                let now = stamp(&path);
                if now.is_some() && self.done.get(&path) == now.as_ref() {
                    continue; // announced twice, same contents
                }
                if let Some(s) = now {
                    self.done.insert(path.clone(), s);
                }
                return read_frame(&path, self.max_pixels, &mut self.limits);
            }
            if self.gone {
                return SourceItem::End;
            }
            match self.events.recv_timeout(POLL) {
                Ok(ev) => {
                    self.handle(ev);
                    while let Ok(ev) = self.events.try_recv() {
                        self.handle(ev);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.gone = true;
                    self.failures.push_back(StageError::io(format!(
                        "the watch on {} ended; the stream ends",
                        self.dir.display()
                    )));
                }
            }
            self.settle();
        }
    }
}

fn list(c: &ImageDirConfig, ctx: &BuildContext) -> Result<Vec<PathBuf>, String> {
    let dir = ctx.resolve(&c.path);
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        format!("cannot read the folder {} ({e}); point `path` at a folder of images (the set-up puts samples in assets/samples)", dir.display())
    })?;
    let exts: Vec<String> = c.extensions.iter().map(|e| e.to_lowercase()).collect();
    // Entries that are not files (a folder `x.png`, a link loop) stay in the list and
    // are reported when their turn comes, like any unreadable image.
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .map(|e| exts.contains(&e.to_string_lossy().to_lowercase()))
                .unwrap_or(false)
        })
        .collect();
    files.sort();
    if let Some(l) = c.limit {
        files.truncate(l);
    }
    Ok(files)
}

fn build_watch(c: &ImageDirConfig, ctx: &BuildContext) -> Result<Built, StageError> {
    let dir = ctx.resolve(&c.path);
    std::fs::create_dir_all(&dir)
        .map_err(|e| StageError::io(format!("cannot create the watched folder {}: {e}", dir.display())))?;
    // Events name paths under the folder as watched; keep one spelling for comparisons.
    let dir = dir.canonicalize().unwrap_or(dir);
    let (tx, events) = std::sync::mpsc::channel();
    let mut watcher =
        notify::recommended_watcher(tx).map_err(|e| StageError::io(format!("cannot watch {}: {e}", dir.display())))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| StageError::io(format!("cannot watch {}: {e}", dir.display())))?;
    let mut w = Watch {
        dir,
        exts: c.extensions.iter().map(|e| e.to_lowercase()).collect(),
        max_pixels: c.max_pixels,
        limits: Limits::new(c),
        _watcher: watcher,
        events,
        ready: VecDeque::new(),
        pending: HashMap::new(),
        done: HashMap::new(),
        failures: VecDeque::new(),
        refused: HashSet::new(),
        gone: false,
    };
    // The watch is up before the listing, so a file written in between is not lost
    // (and if it is announced twice it is read once).
    w.rescan();
    if let Some(l) = c.limit {
        w.ready.truncate(l);
    }
    Ok(Built::Source(Box::new(w)))
}

impl StageKind for ImageDir {
    type Config = ImageDirConfig;
    const NAME: &'static str = "image_dir";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "Images of a folder (PNG, JPEG, WebP) in name order; `watch = true` follows new files.";
    const SWEEP: dataflow_engine::SweepRole = dataflow_engine::SweepRole::Images { key: "path" };

    fn validate(c: &Self::Config) -> Vec<dataflow_engine::KeyProblem> {
        let mut problems: Vec<_> = dataflow_engine::check_duration_s(c.duration_s).into_iter().collect();
        if c.watch && c.repeat != 1 {
            problems.push(dataflow_engine::KeyProblem {
                key: "repeat",
                message: format!(
                    "`repeat` = {} has no effect with `watch = true` (a watched folder is listed once, then followed); remove `repeat` or set `watch = false`",
                    c.repeat
                ),
            });
        }
        problems
    }

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::new("out")
                .with("image", FieldType::Image)
                .with_each(&["name", "path"], FieldType::Text)],
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        if c.watch {
            // An empty or missing folder is normal for a watched run (created at build).
            let dir = ctx.resolve(&c.path);
            if dir.exists() && !dir.is_dir() {
                return vec![format!(
                    "{} is not a folder; `watch = true` needs a folder",
                    dir.display()
                )];
            }
            return Vec::new();
        }
        match list(c, ctx) {
            Ok(f) if f.is_empty() => vec![format!(
                "no images ({}) in {}",
                c.extensions.join(", "),
                ctx.resolve(&c.path).display()
            )],
            Ok(_) => Vec::new(),
            Err(e) => vec![e],
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        if c.watch {
            return build_watch(c, ctx);
        }
        let once = list(c, ctx).map_err(StageError::io)?;
        let mut files = Vec::with_capacity(once.len() * c.repeat as usize);
        for _ in 0..c.repeat.max(1) {
            files.extend(once.iter().cloned());
        }
        Ok(Built::Source(Box::new(Run {
            files,
            next: 0,
            max_pixels: c.max_pixels,
            limits: Limits::new(c),
        })))
    }
}

#[cfg(test)]
mod validate_tests {
    use dataflow_engine::StageKind;

    use super::{ImageDir, ImageDirConfig};

    fn problems(keys: serde_json::Value) -> Vec<String> {
        let c: ImageDirConfig = serde_json::from_value(keys).unwrap();
        ImageDir::validate(&c)
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }

    #[test]
    fn repeat_is_refused_with_watch_which_would_ignore_it() {
        assert_eq!(
            problems(serde_json::json!({"path": "in", "watch": true, "repeat": 3})),
            ["repeat: `repeat` = 3 has no effect with `watch = true` (a watched folder is listed once, then followed); remove `repeat` or set `watch = false`"]
        );
        assert!(problems(serde_json::json!({"path": "in", "repeat": 3})).is_empty());
        assert!(problems(serde_json::json!({"path": "in", "watch": true})).is_empty());
    }
}
