//! [`RunShared`]: the state every actor and thread of one run shares (counters, the
//! error log, the fatal error, the count of finished stages).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use metrics::Histogram;
use tokio::sync::Notify;

use super::stats::StageStats;
use super::summary::{RunSummary, StageSummary};
use crate::message::FrameId;
use crate::stage::{Role, StageError, StopFlag};
use dataflow_monitoring::names;

/// State shared by every actor and thread of a run. Held through an `Arc` by `run`,
/// every stage actor, every source thread and the ticker; dropped when the last of
/// them is gone, which `run` waits for before it returns.
pub(super) struct RunShared {
    pub(super) graph: String,
    /// The run's stop token: `run`'s caller holds a clone (Ctrl-C in the binary sets
    /// it), sources poll it, [`RunShared::set_fatal`] sets it. Never cleared.
    pub(super) stop: StopFlag,
    pub(super) stats: Vec<Arc<StageStats>>,
    /// `errors.jsonl`, opened on the first failed frame; every writer takes the lock
    /// for one line. Dropping the shared state closes the file.
    pub(super) error_log: Mutex<Option<BufWriter<File>>>,
    pub(super) error_log_path: PathBuf,
    /// The first failed write of each of the run's own record files, by file.
    pub(super) unwritten: Mutex<BTreeMap<PathBuf, String>>,
    /// Frames seen at the sinks.
    pub(super) sink_frames: Mutex<SinkFrames>,
    /// Distinct frames that failed anywhere (a frame failing at two stages counts once).
    pub(super) failed_frames: Mutex<SinkFrames>,
    /// Failures without a frame id (source inputs that could not be read).
    pub(super) failed_unnamed: AtomicU64,
    /// Messages the sources forwarded from other machines.
    pub(super) link_messages: AtomicU64,
    /// The error that stops the run: the first [`RunShared::set_fatal`] writes it, the
    /// others keep it; `run` reads it to abort without draining.
    pub(super) fatal: Mutex<Option<String>>,
    /// Stages that have finished (their last replica sent EOS downstream); the run
    /// has ended cleanly when it reaches the number of stages. Only grows.
    pub(super) finished: AtomicUsize,
    /// Woken by every finished stage and by [`RunShared::set_fatal`]; `run`'s wait
    /// ([`super::shutdown`]) is its only waiter. Nothing to drop: it holds no permit.
    pub(super) done: Notify,
    /// Join handles of every thread the run started (source threads, heavy-stage
    /// workers); each pushes its own. `run` takes and joins them all before it
    /// returns, so no thread (and no child process a source owns) outlives it.
    pub(super) threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    pub(super) latency: Histogram,
}

impl RunShared {
    pub(super) fn new(graph: &str, stop: StopFlag, stats: Vec<Arc<StageStats>>, out_dir: &std::path::Path) -> Self {
        RunShared {
            graph: graph.to_string(),
            stop,
            stats,
            error_log: Mutex::new(None),
            error_log_path: out_dir.join("errors.jsonl"),
            unwritten: Mutex::new(BTreeMap::new()),
            sink_frames: Mutex::new(SinkFrames::default()),
            failed_frames: Mutex::new(SinkFrames::default()),
            failed_unnamed: AtomicU64::new(0),
            link_messages: AtomicU64::new(0),
            fatal: Mutex::new(None),
            finished: AtomicUsize::new(0),
            done: Notify::new(),
            threads: Mutex::new(Vec::new()),
            latency: metrics::histogram!(names::PIPELINE_LATENCY_SECONDS, names::LABEL_GRAPH => graph.to_string()),
        }
    }

    /// Keeps the handle of a thread the run started, for `run` to join.
    pub(super) fn keep_thread(&self, handle: std::thread::JoinHandle<()>) {
        if let Ok(mut t) = self.threads.lock() {
            t.push(handle);
        }
    }

    /// Whether an error stopped the run.
    pub(super) fn is_fatal(&self) -> bool {
        self.fatal.lock().map(|f| f.is_some()).unwrap_or(false)
    }
    pub(super) fn record_error(&self, stage: usize, frame: Option<FrameId>, err: &StageError) {
        let st = &self.stats[stage];
        st.errors.fetch_add(1, Ordering::Relaxed);
        if err.restarted {
            st.restarts.fetch_add(1, Ordering::Relaxed);
            st.m_restarts.increment(1);
        }
        match frame {
            Some(f) => {
                if let Ok(mut failed) = self.failed_frames.lock() {
                    failed.see(f);
                }
            }
            None => {
                self.failed_unnamed.fetch_add(1, Ordering::Relaxed);
            }
        }
        metrics::counter!(names::STAGE_ERRORS, names::LABEL_STAGE => st.id.clone(), names::LABEL_KIND => st.kind.clone(), names::LABEL_ERROR => err.class).increment(1);
        let frame_s = frame.map(|f| f.to_string()).unwrap_or_else(|| "-".into());
        tracing::warn!(stage = %st.id, frame = %frame_s, class = err.class, error = %err, "frame failed");
        let line = serde_json::json!({
            "time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            "stage": st.id, "kind": st.kind, "frame": frame_s, "class": err.class, "error": err.message,
        });
        // One line per failed frame, flushed at once: a killed run keeps every line.
        let written = match self.error_log.lock() {
            Ok(mut log) => append_line(&mut log, &self.error_log_path, &line.to_string()),
            Err(_) => Err(std::io::Error::other("the log's lock is poisoned")),
        };
        if let Err(e) = written {
            self.note_unwritten(
                &self.error_log_path,
                format!(
                    "cannot append failed frame {frame_s} of stage `{}` to {}: {e}; the list of failed frames is incomplete (check the space and permissions of the output folder)",
                    st.id,
                    self.error_log_path.display()
                ),
            );
        }
    }

    /// Notes (and logs, once per file) that one of the run's record files could not be written.
    pub(super) fn note_unwritten(&self, path: &std::path::Path, message: String) {
        if let Ok(mut u) = self.unwritten.lock() {
            if !u.contains_key(path) {
                tracing::error!(path = %path.display(), "{message}");
                u.insert(path.to_path_buf(), message);
            }
        }
    }

    /// Counts a message arriving at a sink as a frame, unless a part of it came before.
    pub(super) fn at_sink(&self, id: FrameId) {
        if let Ok(mut f) = self.sink_frames.lock() {
            f.see(id);
        }
    }

    /// The run as it stands; `in_flight` and `finished` come from the caller.
    pub(super) fn summarise(
        &self,
        out_dir: &std::path::Path,
        seconds: f64,
        in_flight: u64,
        finished: bool,
    ) -> RunSummary {
        let stages: Vec<StageSummary> = self
            .stats
            .iter()
            .map(|s| StageSummary {
                id: s.id.clone(),
                kind: s.kind.clone(),
                received: s.received.load(Ordering::Relaxed),
                sent: s.sent.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                dropped: s.dropped.load(Ordering::Relaxed),
                restarts: s.restarts.load(Ordering::Relaxed),
                incomplete: s.incomplete.load(Ordering::Relaxed),
            })
            .collect();
        let sourced: u64 = self
            .stats
            .iter()
            .filter(|s| s.role == Role::Source)
            .map(|s| s.received.load(Ordering::Relaxed))
            .sum();
        let link_messages = self.link_messages.load(Ordering::Relaxed);
        let fatal = self.fatal.lock().ok().and_then(|f| f.clone());
        RunSummary {
            graph: self.graph.clone(),
            out_dir: out_dir.to_path_buf(),
            seconds,
            frames_in: sourced.saturating_sub(link_messages),
            frames_out: self.sink_frames.lock().map(|f| f.count).unwrap_or(0),
            link_messages,
            failed: self.failed_frames.lock().map(|f| f.count).unwrap_or(0)
                + self.failed_unnamed.load(Ordering::Relaxed),
            dropped: stages.iter().map(|s| s.dropped).sum(),
            in_flight_at_abort: in_flight,
            interrupted: self.stop.is_interrupted() || (self.stop.is_set() && fatal.is_none()),
            ctrl_c: self.stop.is_interrupted(),
            fatal,
            unwritten: self
                .unwritten
                .lock()
                .map(|u| u.values().cloned().collect())
                .unwrap_or_default(),
            finished,
            stages,
        }
    }

    pub(super) fn set_fatal(&self, message: String) {
        if let Ok(mut f) = self.fatal.lock() {
            if f.is_none() {
                tracing::error!(error = %message, "run stopped");
                *f = Some(message);
            }
        }
        self.stop.set();
        self.done.notify_waiters();
        self.done.notify_one();
    }

    pub(super) fn stage_finished(&self) {
        self.finished.fetch_add(1, Ordering::AcqRel);
        self.done.notify_waiters();
        self.done.notify_one();
    }
}

/// Appends `line` to the log at `path` (created on first use) and flushes it.
pub(super) fn append_line(
    log: &mut Option<BufWriter<File>>,
    path: &std::path::Path,
    line: &str,
) -> std::io::Result<()> {
    if log.is_none() {
        *log = Some(BufWriter::new(File::create(path)?));
    }
    if let Some(w) = log.as_mut() {
        writeln!(w, "{line}")?;
        w.flush()?;
    }
    Ok(())
}

/// How many recent frame ids [`SinkFrames`] remembers: a part arriving after this many
/// newer frames would count its frame again.
pub(super) const SINK_FRAME_WINDOW: usize = 4096;

/// Distinct frames seen at the sinks (the parts of a frame, and one frame at several
/// sinks, count once).
#[derive(Default)]
pub(super) struct SinkFrames {
    pub(super) count: u64,
    /// The most recent frame ids, oldest first, and the same as a set.
    pub(super) order: std::collections::VecDeque<FrameId>,
    /// Hashed with foldhash: SipHash's DoS resistance buys nothing for ids the engine
    /// numbers itself, and cost a fortieth of a hop (BENCHMARKS.md §20.3).
    pub(super) seen: std::collections::HashSet<FrameId, foldhash::fast::RandomState>,
}

impl SinkFrames {
    pub(super) fn see(&mut self, id: FrameId) {
        if self.seen.insert(id) {
            self.count += 1;
            self.order.push_back(id);
            if self.order.len() > SINK_FRAME_WINDOW {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }
}
