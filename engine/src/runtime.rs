//! The runtime: one ractor actor per stage replica, wired by bounded edges.
//!
//! # How a frame moves
//! A source thread asks its [`Source`] for a frame, stamps it with a
//! [`FrameId`] and capture time, and routes it: for every consumer edge of
//! the output port, [`Edge::admit`] takes a permit (or drops, by policy) and the
//! consumer group dispatches the ticket to one replica's mailbox. The replica's
//! actor takes the message out of the ticket, runs the stage (inline for light
//! stages, on the replica's worker thread for heavy ones), routes the outputs the
//! same way and only then drops the input permit, so a frame always holds a place
//! somewhere and the frames alive in the graph stay within the edge capacities.
//!
//! # Shutdown protocol
//! End of stream (EOS) is a control message (no permit). A group sends it on
//! every outgoing edge once all its replicas have finished; a replica finishes
//! when it has received EOS on every input edge, flushed its joins and called
//! [`Stage::finish`]. `run` returns when every stage has finished. Ctrl-C sets
//! the [`StopFlag`]: sources end their streams, in-flight frames drain, sinks
//! flush. A second Ctrl-C, or a drain that outlasts `drain_timeout`, aborts and
//! reports the frames still in flight.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Gauge, Histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{oneshot, Notify};

use crate::edge::{Delivery, Edge, OnRelease, Permit};
use crate::join::{Arrival, JoinTable, Ready};
use crate::message::{FrameId, Message, Part};
use crate::plan::{Plan, Restart};
use crate::registry::Configured;
use crate::stage::{BuildContext, Built, Input, Outputs, Role, Source, SourceItem, Stage, StageError, StopFlag};
use dataflow_monitoring::names;

/// Counters of one stage, kept by the engine for every stage kind.
pub struct StageStats {
    /// Stage id.
    pub id: String,
    /// Kind name.
    pub kind: String,
    /// Role.
    pub role: Role,
    /// Replicas.
    pub replicas: usize,
    /// Messages taken from inputs (sources: frames produced).
    pub received: AtomicU64,
    /// Messages sent downstream.
    pub sent: AtomicU64,
    /// Failed frames (errors and panics).
    pub errors: AtomicU64,
    /// Messages dropped on this stage's input edges (the edges count into it).
    pub dropped: Arc<AtomicU64>,
    /// Restarts after a panic.
    pub restarts: AtomicU64,
    /// Joined frames emitted with parts missing.
    pub incomplete: AtomicU64,
    /// Nanoseconds spent processing, all replicas together.
    pub busy_ns: AtomicU64,
    m_received: Counter,
    m_sent: Counter,
    m_processing: Histogram,
    m_utilization: Gauge,
    m_restarts: Counter,
    /// Parts a join refused because their frame was already emitted (reason `late`).
    m_late: Counter,
}

impl StageStats {
    fn new(id: &str, kind: &str, role: Role, replicas: usize) -> Self {
        let sk = [
            (names::LABEL_STAGE, id.to_string()),
            (names::LABEL_KIND, kind.to_string()),
        ];
        StageStats {
            id: id.into(),
            kind: kind.into(),
            role,
            replicas,
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: Arc::new(AtomicU64::new(0)),
            restarts: AtomicU64::new(0),
            incomplete: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            m_received: metrics::counter!(names::STAGE_MESSAGES_RECEIVED, &sk),
            m_sent: metrics::counter!(names::STAGE_MESSAGES_SENT, &sk),
            m_processing: metrics::histogram!(names::STAGE_PROCESSING_SECONDS, &sk),
            m_utilization: metrics::gauge!(names::STAGE_UTILIZATION, names::LABEL_STAGE => id.to_string()),
            m_restarts: metrics::counter!(names::STAGE_RESTARTS, names::LABEL_STAGE => id.to_string()),
            m_late: metrics::counter!(names::STAGE_DROPPED, names::LABEL_STAGE => id.to_string(), names::LABEL_REASON => "late"),
        }
    }

    fn on_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.m_received.increment(1);
    }

    /// A join refused a part of a frame it had already emitted: dropped, reason `late`.
    fn on_late(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.m_late.increment(1);
    }

    fn on_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.m_sent.increment(n);
    }
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Folder every sink writes under.
    pub out_dir: PathBuf,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// How long a drain after Ctrl-C may take before the run is aborted.
    pub drain_timeout: Duration,
    /// Listen for Ctrl-C.
    pub handle_signals: bool,
    /// Set from outside to stop the run as Ctrl-C would.
    pub stop: StopFlag,
}

impl RunOptions {
    /// Defaults: progress bar on, 30 s drain, Ctrl-C handled.
    pub fn new(out_dir: PathBuf) -> Self {
        RunOptions {
            out_dir,
            progress: true,
            drain_timeout: Duration::from_secs(30),
            handle_signals: true,
            stop: StopFlag::default(),
        }
    }
}

/// Summary of one stage after a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageSummary {
    /// Stage id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Messages received (sources: frames produced).
    pub received: u64,
    /// Messages sent.
    pub sent: u64,
    /// Failed frames.
    pub errors: u64,
    /// Dropped on its input edges.
    pub dropped: u64,
    /// Restarts.
    pub restarts: u64,
    /// Joined frames emitted with missing parts.
    pub incomplete: u64,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    /// Graph name.
    pub graph: String,
    /// Output folder.
    pub out_dir: PathBuf,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Frames this process's sources produced (messages from other machines not counted).
    pub frames_in: u64,
    /// Frames that reached a sink: distinct frame ids over every sink, however many
    /// parts or sinks a frame has (a sending link to another machine is a sink too).
    pub frames_out: u64,
    /// Messages received from other machines (link messages: parts, texts, slices).
    pub link_messages: u64,
    /// Distinct frames that failed anywhere (errors, panics; a frame failing at two
    /// stages counts once), plus source inputs that could not be read.
    pub failed: u64,
    /// Messages dropped on edges.
    pub dropped: u64,
    /// Messages still in flight when the run was aborted (0 after a clean end).
    pub in_flight_at_abort: u64,
    /// Whether a stop request (Ctrl-C here, or the other machine's) ended the run early.
    pub interrupted: bool,
    /// Whether Ctrl-C (SIGINT) in this process stopped the run.
    pub ctrl_c: bool,
    /// The error that stopped the run, if any.
    pub fatal: Option<String>,
    /// The run's own records that could not be written (`errors.jsonl`,
    /// `summary.json`), one message per file: the outputs are incomplete.
    pub unwritten: Vec<String>,
    /// `false` in the snapshots of `summary.json` written while the run goes on.
    pub finished: bool,
    /// Per stage.
    pub stages: Vec<StageSummary>,
}

/// Exit code of `dataflow run`: every source ended and every frame went through.
pub const EXIT_OK: u8 = 0;
/// Exit code: the graph is invalid or the run could not start.
pub const EXIT_CONFIG: u8 = 1;
/// Exit code: frames failed (see `errors.jsonl`) or an error stopped the run.
pub const EXIT_FAILED: u8 = 2;
/// Exit code: the run's records (`summary.json`, `errors.jsonl`) could not be written.
pub const EXIT_UNWRITTEN: u8 = 3;
/// Exit code: Ctrl-C stopped the run before its sources ended (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

impl RunSummary {
    /// Whether the run should exit non-zero.
    pub fn failed(&self) -> bool {
        self.fatal.is_some() || self.failed > 0
    }

    /// The exit code for this run: [`EXIT_UNWRITTEN`], else [`EXIT_FAILED`], else
    /// [`EXIT_INTERRUPTED`], else [`EXIT_OK`] (the first that applies).
    pub fn exit_code(&self) -> u8 {
        if !self.unwritten.is_empty() {
            EXIT_UNWRITTEN
        } else if self.failed() {
            EXIT_FAILED
        } else if self.ctrl_c {
            EXIT_INTERRUPTED
        } else {
            EXIT_OK
        }
    }

    /// Writes `summary.json` into the output folder atomically (a temporary file
    /// renamed over it), so a reader or a crash never sees half a file.
    ///
    /// # Errors
    /// A message naming the file, what failed and what to check.
    pub fn write(&self) -> Result<(), String> {
        let path = self.out_dir.join("summary.json");
        let tmp = self.out_dir.join(".summary.json.tmp");
        let fail = |e: &dyn std::fmt::Display| {
            format!(
                "cannot write {}: {e}; the run's summary is missing or stale (check the space and permissions of the output folder)",
                path.display()
            )
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| fail(&e))?;
        std::fs::write(&tmp, text).map_err(|e| fail(&e))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(&e)
        })
    }

    /// The summary as text for a terminal.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let fps = if self.seconds > 0.0 {
            self.frames_out as f64 / self.seconds
        } else {
            0.0
        };
        let links = if self.link_messages > 0 {
            format!(", {} link message(s) from other machines", self.link_messages)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "graph `{}`: {} frame(s) at the sinks in {:.2} s ({:.2} frames/s); {} from the sources{links}, {} failed, {} dropped{}\n",
            self.graph,
            self.frames_out,
            self.seconds,
            fps,
            self.frames_in,
            self.failed,
            self.dropped,
            if self.interrupted { ", interrupted" } else { "" }
        ));
        s.push_str(&format!(
            "{:<16} {:<14} {:>9} {:>9} {:>7} {:>8} {:>8}\n",
            "stage", "kind", "received", "sent", "errors", "dropped", "restarts"
        ));
        for st in &self.stages {
            s.push_str(&format!(
                "{:<16} {:<14} {:>9} {:>9} {:>7} {:>8} {:>8}\n",
                st.id, st.kind, st.received, st.sent, st.errors, st.dropped, st.restarts
            ));
        }
        for st in self.stages.iter().filter(|s| s.incomplete > 0) {
            s.push_str(&format!(
                "stage `{}` emitted {} frame(s) with parts missing (lost upstream or timed out)\n",
                st.id, st.incomplete
            ));
        }
        if self.in_flight_at_abort > 0 {
            s.push_str(&format!(
                "{} message(s) were still in flight when the run was aborted\n",
                self.in_flight_at_abort
            ));
        }
        if let Some(f) = &self.fatal {
            s.push_str(&format!("error: {f}\n"));
        }
        for u in &self.unwritten {
            s.push_str(&format!("error: {u}\n"));
        }
        s.push_str(&format!("outputs: {}\n", self.out_dir.display()));
        s
    }
}

/// State shared by every actor of a run.
struct RunShared {
    graph: String,
    stop: StopFlag,
    stats: Vec<Arc<StageStats>>,
    error_log: Mutex<Option<BufWriter<File>>>,
    error_log_path: PathBuf,
    /// The first failed write of each of the run's own record files, by file.
    unwritten: Mutex<BTreeMap<PathBuf, String>>,
    /// Frames seen at the sinks.
    sink_frames: Mutex<SinkFrames>,
    /// Distinct frames that failed anywhere (a frame failing at two stages counts once).
    failed_frames: Mutex<SinkFrames>,
    /// Failures without a frame id (source inputs that could not be read).
    failed_unnamed: AtomicU64,
    /// Messages the sources forwarded from other machines.
    link_messages: AtomicU64,
    fatal: Mutex<Option<String>>,
    finished: AtomicUsize,
    /// Set by Ctrl-C (not by a fatal error, which also stops the sources).
    interrupted: std::sync::atomic::AtomicBool,
    done: Notify,
    latency: Histogram,
}

impl RunShared {
    fn record_error(&self, stage: usize, frame: Option<FrameId>, err: &StageError) {
        let st = &self.stats[stage];
        st.errors.fetch_add(1, Ordering::Relaxed);
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
    fn note_unwritten(&self, path: &std::path::Path, message: String) {
        if let Ok(mut u) = self.unwritten.lock() {
            if !u.contains_key(path) {
                tracing::error!(path = %path.display(), "{message}");
                u.insert(path.to_path_buf(), message);
            }
        }
    }

    /// Counts a message arriving at a sink as a frame, unless a part of it came before.
    fn at_sink(&self, id: FrameId) {
        if let Ok(mut f) = self.sink_frames.lock() {
            f.see(id);
        }
    }

    /// The run as it stands; `in_flight` and `finished` come from the caller.
    fn summarise(&self, out_dir: &std::path::Path, seconds: f64, in_flight: u64, finished: bool) -> RunSummary {
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
            interrupted: self.interrupted.load(Ordering::Relaxed) || (self.stop.is_set() && fatal.is_none()),
            ctrl_c: self.interrupted.load(Ordering::Relaxed),
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

    fn set_fatal(&self, message: String) {
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

    fn stage_finished(&self) {
        self.finished.fetch_add(1, Ordering::AcqRel);
        self.done.notify_waiters();
        self.done.notify_one();
    }
}

/// Appends `line` to the log at `path` (created on first use) and flushes it.
fn append_line(log: &mut Option<BufWriter<File>>, path: &std::path::Path, line: &str) -> std::io::Result<()> {
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
const SINK_FRAME_WINDOW: usize = 4096;

/// Distinct frames seen at the sinks (the parts of a frame, and one frame at several
/// sinks, count once).
#[derive(Default)]
struct SinkFrames {
    count: u64,
    /// The most recent frame ids, oldest first, and the same as a set.
    order: std::collections::VecDeque<FrameId>,
    seen: std::collections::HashSet<FrameId>,
}

impl SinkFrames {
    fn see(&mut self, id: FrameId) {
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

/// Messages a stage actor handles.
pub(crate) enum StageMsg {
    /// A data message from input edge `input`, number `order` in the group's arrival order.
    Data {
        input: usize,
        order: u64,
        delivery: Delivery,
    },
    /// Gap notice (no permit): part `part` of frame `frame` will not come on input
    /// edge `input`, because an edge upstream dropped it or a stage failed it.
    Gap { input: usize, frame: FrameId, part: Part },
    /// End of stream on one input edge.
    Eos,
    /// Time to expire incomplete joins.
    Tick,
}

/// Messages finished out of order by replicas, released in arrival order.
/// Outputs of one input, with the place the input holds until they are sent.
type Finished = (Vec<(usize, Message)>, Option<Permit>);

#[derive(Default)]
struct Sequencer {
    next: u64,
    ready: BTreeMap<u64, Finished>,
}

/// All replicas of one stage, as seen by producers and by the replicas themselves.
struct Group {
    index: usize,
    role: Role,
    replicas: OnceLock<Vec<ActorRef<StageMsg>>>,
    /// Serialises numbering and enqueueing, so numbers follow mailbox order (sequenced groups only).
    dispatch_lock: Mutex<u64>,
    /// Present when replicas > 1: restores arrival order downstream.
    sequencer: Option<tokio::sync::Mutex<Sequencer>>,
    /// Edges out of each output port.
    outputs: Vec<Vec<(Arc<Edge>, Arc<Group>)>>,
    /// Edges into this stage (for EOS counting and drop accounting).
    input_edges: usize,
    finished_replicas: AtomicUsize,
    n_replicas: usize,
}

impl Group {
    fn dispatch(&self, input: usize, delivery: Delivery, part: Part, seq: u64) {
        let Some(refs) = self.replicas.get() else { return };
        let replica = if refs.len() == 1 {
            0
        } else if part.count > 1 {
            part.index as usize % refs.len()
        } else {
            (seq % refs.len() as u64) as usize
        };
        if self.sequencer.is_none() {
            // Arrival numbers only matter to a sequencer.
            let _ = refs[replica].send_message(StageMsg::Data {
                input,
                order: 0,
                delivery,
            });
        } else if let Ok(mut next) = self.dispatch_lock.lock() {
            let order = *next;
            *next += 1;
            let _ = refs[replica].send_message(StageMsg::Data { input, order, delivery });
        }
    }

    /// Tells the replica that would have got `part` of `frame` that it will not come.
    fn gap(&self, input: usize, frame: FrameId, part: Part) {
        let Some(refs) = self.replicas.get() else { return };
        let replica = if part.count > 1 {
            part.index as usize % refs.len().max(1)
        } else {
            (frame.seq % refs.len().max(1) as u64) as usize
        };
        if let Some(r) = refs.get(replica) {
            let _ = r.send_message(StageMsg::Gap { input, frame, part });
        }
    }

    /// Sends a gap notice for `part` of `frame` on every outgoing edge.
    fn gap_downstream(&self, frame: FrameId, part: Part) {
        for port in &self.outputs {
            for (edge, consumer) in port {
                consumer.gap(edge.input, frame, part);
            }
        }
    }

    fn send_eos_downstream(&self) {
        for port in &self.outputs {
            for (_, consumer) in port {
                if let Some(refs) = consumer.replicas.get() {
                    for r in refs {
                        let _ = r.send_message(StageMsg::Eos);
                    }
                }
            }
        }
    }
}

/// Routes a stage's outputs to its consumers, waiting for room per policy.
async fn route(group: &Group, shared: &RunShared, outputs: Vec<(usize, Message)>) {
    route_released(group, shared, outputs, None).await
}

/// [`route`], with a forwarded message's release callback riding on every place it takes.
async fn route_released(
    group: &Group,
    shared: &RunShared,
    outputs: Vec<(usize, Message)>,
    release: Option<Arc<OnRelease>>,
) {
    let stats = &shared.stats[group.index];
    for (port, msg) in outputs {
        stats.on_sent(1);
        let Some(edges) = group.outputs.get(port) else { continue };
        let last = edges.len().saturating_sub(1);
        let mut msg = Some(msg);
        for (k, (edge, consumer)) in edges.iter().enumerate() {
            let m = if k == last { msg.take() } else { msg.clone() };
            let Some(m) = m else { continue };
            let (part, id) = (m.part, m.id);
            match edge.admit(m, release.as_ref()).await {
                Some(delivery) => consumer.dispatch(edge.input, delivery, part, id.seq),
                // Dropped by policy (counted by the edge): tell the consumer, so joins
                // downstream stop waiting for it.
                None => consumer.gap(edge.input, id, part),
            }
        }
    }
}

/// Sends outputs on, in arrival order when the stage is replicated, then frees the input's place.
async fn complete(
    group: &Group,
    shared: &RunShared,
    order: u64,
    outputs: Vec<(usize, Message)>,
    permit: Option<Permit>,
) {
    match &group.sequencer {
        None => {
            route(group, shared, outputs).await;
            drop(permit);
        }
        Some(seq) => {
            let mut s = seq.lock().await;
            s.ready.insert(order, (outputs, permit));
            loop {
                let next = s.next;
                let Some((outs, p)) = s.ready.remove(&next) else { break };
                s.next += 1;
                route(group, shared, outs).await;
                drop(p);
            }
        }
    }
}

enum Outcome {
    Ok(Outputs),
    Err(StageError),
    Panicked(String),
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

fn run_guarded(stage: &mut dyn Stage, input: Option<Input>) -> Outcome {
    let mut out = Outputs::default();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| match input {
        Some(i) => stage.process(i, &mut out),
        None => stage.finish(&mut out),
    }));
    match r {
        Ok(Ok(())) => Outcome::Ok(out),
        Ok(Err(e)) => Outcome::Err(e),
        Err(p) => Outcome::Panicked(panic_text(p)),
    }
}

fn build_stage(config: &dyn Configured, ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
    match config.build(ctx)? {
        Built::Stage(s) => Ok(s),
        Built::Source(_) => Err(StageError::new(
            "build",
            "a source was built where a stage was expected",
        )),
    }
}

enum Job {
    Process(Option<Input>, oneshot::Sender<Outcome>),
    Rebuild(oneshot::Sender<Result<(), StageError>>),
}

/// Where a replica's stage value lives.
enum Runner {
    /// Light stages run in the actor's handler.
    Inline(Box<dyn Stage>),
    /// Heavy stages run on a dedicated thread that owns the stage value.
    Worker(crossbeam_channel::Sender<Job>),
}

impl Runner {
    async fn exec(&mut self, input: Option<Input>) -> Outcome {
        match self {
            Runner::Inline(s) => run_guarded(s.as_mut(), input),
            Runner::Worker(tx) => {
                let (otx, orx) = oneshot::channel();
                if tx.send(Job::Process(input, otx)).is_err() {
                    return Outcome::Panicked("worker thread is gone".into());
                }
                orx.await
                    .unwrap_or_else(|_| Outcome::Panicked("worker thread is gone".into()))
            }
        }
    }

    async fn rebuild(&mut self, config: &Arc<dyn Configured>, ctx: &BuildContext) -> Result<(), StageError> {
        match self {
            Runner::Inline(s) => {
                *s = build_stage(config.as_ref(), ctx)?;
                Ok(())
            }
            Runner::Worker(tx) => {
                let (otx, orx) = oneshot::channel();
                tx.send(Job::Rebuild(otx))
                    .map_err(|_| StageError::new("panic", "worker thread is gone"))?;
                orx.await
                    .map_err(|_| StageError::new("panic", "worker thread is gone"))?
            }
        }
    }
}

fn spawn_worker(config: Arc<dyn Configured>, ctx: BuildContext) -> Result<crossbeam_channel::Sender<Job>, StageError> {
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = format!("{}#{}", ctx.stage, ctx.replica);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut stage = match build_stage(config.as_ref(), &ctx) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for job in rx {
                match job {
                    Job::Process(input, reply) => {
                        let _ = reply.send(run_guarded(stage.as_mut(), input));
                    }
                    Job::Rebuild(reply) => match build_stage(config.as_ref(), &ctx) {
                        Ok(s) => {
                            stage = s;
                            let _ = reply.send(Ok(()));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    },
                }
            }
        })
        .map_err(|e| StageError::io(format!("cannot start a worker thread: {e}")))?;
    ready_rx
        .recv()
        .map_err(|_| StageError::new("build", "worker thread died while building the stage"))??;
    Ok(tx)
}

struct StageActor;

struct ActorArgs {
    group: Arc<Group>,
    shared: Arc<RunShared>,
    config: Arc<dyn Configured>,
    ctx: BuildContext,
    restart: Restart,
    heavy: bool,
    join: Option<Duration>,
    n_inputs: usize,
    /// Places of each input edge.
    mailbox: usize,
}

struct ActorState {
    args: ActorArgs,
    runner: Runner,
    eos_seen: usize,
    /// Frames a joining stage is gathering (empty for other stages).
    joins: JoinTable<Permit>,
}

impl ActorState {
    async fn run_input(&mut self, input: Option<Input>) -> Option<Vec<(usize, Message)>> {
        let frame = input.as_ref().map(|i| i.frame());
        let stats = self.args.shared.stats[self.args.group.index].clone();
        let t0 = Instant::now();
        let outcome = self.runner.exec(input).await;
        let dt = t0.elapsed();
        stats.busy_ns.fetch_add(dt.as_nanos() as u64, Ordering::Relaxed);
        stats.m_processing.record(dt.as_secs_f64());
        match outcome {
            Outcome::Ok(out) => Some(out.items),
            Outcome::Err(e) => {
                self.args.shared.record_error(self.args.group.index, frame, &e);
                None
            }
            Outcome::Panicked(text) => {
                let frame_s = frame.map(|f| f.to_string()).unwrap_or_else(|| "end of stream".into());
                let err = StageError::new("panic", format!("stage panicked on frame {frame_s}: {text}"));
                self.args.shared.record_error(self.args.group.index, frame, &err);
                match self.args.restart {
                    Restart::Never => {
                        self.args.shared.set_fatal(format!(
                            "stage `{}` (kind `{}`) panicked on frame {frame_s}: {text}; the graph says restart = \"never\" (use restart = \"on_failure\" to keep the stream going)",
                            stats.id, stats.kind
                        ));
                    }
                    Restart::OnFailure => {
                        stats.restarts.fetch_add(1, Ordering::Relaxed);
                        stats.m_restarts.increment(1);
                        tracing::warn!(stage = %stats.id, frame = %frame_s, "restarting the stage after a panic");
                        if let Err(e) = self.runner.rebuild(&self.args.config, &self.args.ctx).await {
                            self.args.shared.set_fatal(format!(
                                "stage `{}` could not be restarted after a panic on frame {frame_s}: {e}",
                                stats.id
                            ));
                        }
                    }
                }
                None
            }
        }
    }

    /// Hands a ready joined frame to the stage, sends its outputs on, then frees the
    /// places its parts held. A frame of which nothing arrived is not run: its gap
    /// goes on downstream.
    async fn emit_join(&mut self, ready: Ready<Permit>) {
        let (group, shared) = (self.args.group.clone(), self.args.shared.clone());
        let id = ready.joined.id;
        if ready.joined.any().is_none() {
            group.gap_downstream(id, Part::WHOLE);
            return;
        }
        if ready.joined.lost() > 0 {
            shared.stats[group.index].incomplete.fetch_add(1, Ordering::Relaxed);
        }
        match self.run_input(Some(Input::Joined(ready.joined))).await {
            Some(outs) => route(&group, &shared, outs).await,
            None => group.gap_downstream(id, Part::WHOLE),
        }
        drop(ready.held);
    }

    /// A part arrived at a joining stage: kept (and counted received), or refused as
    /// late when its frame was already emitted.
    async fn on_join(&mut self, input: usize, msg: Message, permit: Permit) {
        let (group, shared) = (self.args.group.clone(), self.args.shared.clone());
        let (born, id, released) = (msg.born, msg.id, self.joins.released);
        let arrival = self.joins.part(input, msg, permit);
        if released == 0 && self.joins.released > 0 {
            tracing::warn!(
                stage = %shared.stats[group.index].id, frame = %id,
                "a frame has more parts on one input than the stage's mailbox has places; the join keeps them without places (raise `mailbox` to at least the number of parts to keep the bound)"
            );
        }
        match arrival {
            Arrival::Late(place) => {
                drop(place);
                shared.stats[group.index].on_late();
            }
            Arrival::Kept(ready) => {
                shared.stats[group.index].on_received();
                if group.role == Role::Sink {
                    shared.latency.record(born.elapsed().as_secs_f64());
                    shared.at_sink(id);
                }
                if let Some(r) = ready {
                    self.emit_join(r).await;
                }
            }
        }
    }

    /// A gap notice: a join marks the part lost; other stages pass it on downstream.
    async fn on_gap(&mut self, input: usize, frame: FrameId, part: Part) {
        if self.args.join.is_some() {
            if let Some(r) = self.joins.gap(input, frame, part) {
                self.emit_join(r).await;
            }
        } else {
            self.args.group.gap_downstream(frame, part);
        }
    }

    async fn expire_joins(&mut self, all: bool) {
        if self.args.join.is_none() {
            return;
        }
        for r in self.joins.due(all) {
            self.emit_join(r).await;
        }
    }
}

impl Actor for StageActor {
    type Msg = StageMsg;
    type State = ActorState;
    type Arguments = ActorArgs;

    async fn pre_start(&self, myself: ActorRef<StageMsg>, args: ActorArgs) -> Result<ActorState, ActorProcessingErr> {
        let runner = if args.heavy {
            let (config, ctx) = (args.config.clone(), args.ctx.clone());
            let tx = tokio::task::spawn_blocking(move || spawn_worker(config, ctx)).await??;
            Runner::Worker(tx)
        } else {
            Runner::Inline(build_stage(args.config.as_ref(), &args.ctx)?)
        };
        if let Some(timeout) = args.join {
            let me = myself.clone();
            let every = (timeout / 4).max(Duration::from_millis(10));
            tokio::spawn(async move {
                let mut iv = tokio::time::interval(every);
                loop {
                    iv.tick().await;
                    if me.send_message(StageMsg::Tick).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(ActorState {
            runner,
            eos_seen: 0,
            joins: JoinTable::new(args.n_inputs, args.join.unwrap_or_default(), args.mailbox),
            args,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<StageMsg>,
        msg: StageMsg,
        state: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StageMsg::Data { input, order, delivery } => {
                let group = state.args.group.clone();
                let shared = state.args.shared.clone();
                let (msg, permit) = match delivery.take() {
                    Ok(taken) => taken,
                    Err((frame, part)) => {
                        // Discarded by a drop_oldest producer (already counted): keep the
                        // order moving and tell the stages downstream.
                        complete(&group, &shared, order, Vec::new(), None).await;
                        state.on_gap(input, frame, part).await;
                        return Ok(());
                    }
                };
                if state.args.join.is_some() {
                    // Counted received there, unless refused as late.
                    state.on_join(input, msg, permit).await;
                    return Ok(());
                }
                shared.stats[group.index].on_received();
                if group.role == Role::Sink {
                    shared.latency.record(msg.born.elapsed().as_secs_f64());
                    shared.at_sink(msg.id);
                }
                let (frame, part) = (msg.id, msg.part);
                let outs = state.run_input(Some(Input::Message { input, msg })).await;
                if outs.is_none() {
                    // Failed: joins downstream need not wait for this frame.
                    group.gap_downstream(frame, part);
                }
                complete(&group, &shared, order, outs.unwrap_or_default(), Some(permit)).await;
            }
            StageMsg::Gap { input, frame, part } => state.on_gap(input, frame, part).await,
            StageMsg::Tick => state.expire_joins(false).await,
            StageMsg::Eos => {
                state.eos_seen += 1;
                if state.eos_seen >= state.args.group.input_edges {
                    state.expire_joins(true).await;
                    let group = state.args.group.clone();
                    let shared = state.args.shared.clone();
                    if let Some(outs) = state.run_input(None).await {
                        route(&group, &shared, outs).await;
                    }
                    let done = group.finished_replicas.fetch_add(1, Ordering::AcqRel) + 1;
                    if done == group.n_replicas {
                        group.send_eos_downstream();
                        shared.stage_finished();
                    }
                    myself.stop(None);
                }
            }
        }
        Ok(())
    }
}

struct SourceActor;

struct SourceArgs {
    group: Arc<Group>,
    shared: Arc<RunShared>,
    config: Arc<dyn Configured>,
    ctx: BuildContext,
    stream: u32,
    /// Turns true when every actor is spawned, so no frame is sent into a half-built graph.
    start: tokio::sync::watch::Receiver<bool>,
    totals: Arc<Mutex<Vec<Option<u64>>>>,
}

impl Actor for SourceActor {
    type Msg = ();
    type State = Option<std::thread::JoinHandle<()>>;
    type Arguments = SourceArgs;

    async fn pre_start(&self, _myself: ActorRef<()>, a: SourceArgs) -> Result<Self::State, ActorProcessingErr> {
        let (config, ctx) = (a.config.clone(), a.ctx.clone());
        let built = tokio::task::spawn_blocking(move || config.build(&ctx)).await??;
        let Built::Source(mut source) = built else {
            return Err(format!("stage `{}` is not a source", a.ctx.stage).into());
        };
        if let Ok(mut t) = a.totals.lock() {
            t.push(source.total());
        }
        let handle = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name(format!("{}-source", a.ctx.stage))
            .spawn(move || {
                let mut start = a.start.clone();
                if handle.block_on(start.wait_for(|go| *go)).is_err() {
                    return;
                }
                run_source(source.as_mut(), &a, &handle);
            })?;
        Ok(Some(thread))
    }

    async fn handle(&self, _m: ActorRef<()>, _msg: (), _s: &mut Self::State) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

fn run_source(source: &mut dyn Source, a: &SourceArgs, handle: &tokio::runtime::Handle) {
    let stats = a.shared.stats[a.group.index].clone();
    let mut seq = 0u64;
    let ends_on_stop = source.ends_on_stop();
    loop {
        if a.shared.stop.is_set() && ends_on_stop {
            break;
        }
        let t0 = Instant::now();
        let item = std::panic::catch_unwind(AssertUnwindSafe(|| source.next(&a.shared.stop)));
        let dt = t0.elapsed();
        stats.busy_ns.fetch_add(dt.as_nanos() as u64, Ordering::Relaxed);
        match item {
            Ok(SourceItem::Frame(fields)) => {
                let msg = Message {
                    id: FrameId { stream: a.stream, seq },
                    part: Part::WHOLE,
                    captured: SystemTime::now(),
                    born: Instant::now(),
                    fields,
                };
                seq += 1;
                stats.on_received();
                stats.m_processing.record(dt.as_secs_f64());
                handle.block_on(route(&a.group, &a.shared, vec![(0, msg)]));
            }
            Ok(SourceItem::Forward { msg, on_release }) => {
                stats.on_received();
                a.shared.link_messages.fetch_add(1, Ordering::Relaxed);
                stats.m_processing.record(dt.as_secs_f64());
                // The callback runs when the last place it holds is freed (or right
                // here, when every edge dropped the message).
                let release = on_release.map(OnRelease::new);
                handle.block_on(route_released(&a.group, &a.shared, vec![(0, msg)], release));
            }
            Ok(SourceItem::Failed(e)) => a.shared.record_error(a.group.index, None, &e),
            Ok(SourceItem::End) => break,
            Err(p) => {
                let text = panic_text(p);
                a.shared
                    .set_fatal(format!("source `{}` panicked after frame {seq}: {text}", a.ctx.stage));
                break;
            }
        }
    }
    a.group.send_eos_downstream();
    a.shared.stage_finished();
}

/// Runs a validated plan until every stage has seen end of stream, or it is stopped.
pub async fn run(plan: &Plan, opts: RunOptions) -> Result<RunSummary, StageError> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| {
        StageError::io(format!(
            "cannot create the output folder {}: {e}",
            opts.out_dir.display()
        ))
    })?;
    let stats: Vec<Arc<StageStats>> = plan
        .stages
        .iter()
        .map(|s| Arc::new(StageStats::new(&s.id, &s.kind, s.role, s.replicas)))
        .collect();
    let shared = Arc::new(RunShared {
        graph: plan.name.clone(),
        stop: opts.stop.clone(),
        stats: stats.clone(),
        error_log: Mutex::new(None),
        error_log_path: opts.out_dir.join("errors.jsonl"),
        unwritten: Mutex::new(BTreeMap::new()),
        sink_frames: Mutex::new(SinkFrames::default()),
        failed_frames: Mutex::new(SinkFrames::default()),
        failed_unnamed: AtomicU64::new(0),
        link_messages: AtomicU64::new(0),
        fatal: Mutex::new(None),
        finished: AtomicUsize::new(0),
        interrupted: std::sync::atomic::AtomicBool::new(false),
        done: Notify::new(),
        latency: metrics::histogram!(names::PIPELINE_LATENCY_SECONDS, names::LABEL_GRAPH => plan.name.clone()),
    });

    // Groups, consumers first, so producers can hold their consumers' groups.
    let n = plan.stages.len();
    let mut groups: Vec<Option<Arc<Group>>> = vec![None; n];
    let mut all_edges: Vec<Arc<Edge>> = Vec::new();
    for i in (0..n).rev() {
        let s = &plan.stages[i];
        let outputs = s
            .consumers
            .iter()
            .map(|cons| {
                cons.iter()
                    .filter_map(|&(c, input)| {
                        let cs = &plan.stages[c];
                        let g = groups[c].clone()?;
                        let e = Edge::new(&s.id, &cs.id, input, cs.mailbox, cs.when_full, stats[c].dropped.clone());
                        all_edges.push(e.clone());
                        Some((e, g))
                    })
                    .collect()
            })
            .collect();
        groups[i] = Some(Arc::new(Group {
            index: i,
            role: s.role,
            replicas: OnceLock::new(),
            dispatch_lock: Mutex::new(0),
            sequencer: (s.replicas > 1 && s.ports.join.is_none())
                .then(|| tokio::sync::Mutex::new(Sequencer::default())),
            outputs,
            input_edges: s.inputs.len(),
            finished_replicas: AtomicUsize::new(0),
            n_replicas: if s.role == Role::Source { 1 } else { s.replicas },
        }));
    }
    let groups: Vec<Arc<Group>> = groups.into_iter().flatten().collect();

    let (start_tx, start) = tokio::sync::watch::channel(false);
    let totals = Arc::new(Mutex::new(Vec::new()));
    let mut actors: Vec<ractor::ActorCell> = Vec::new();
    let mut spawn_error: Option<StageError> = None;
    for i in (0..n).rev() {
        let s = &plan.stages[i];
        let group = groups[i].clone();
        if s.role == Role::Source {
            let args = SourceArgs {
                group: group.clone(),
                shared: shared.clone(),
                config: s.config.clone(),
                ctx: plan.context(i, 0, &opts.out_dir),
                stream: s.stream,
                start: start.clone(),
                totals: totals.clone(),
            };
            match Actor::spawn(None, SourceActor, args).await {
                Ok((r, _)) => actors.push(r.get_cell()),
                Err(e) => {
                    spawn_error = Some(StageError::new(
                        "build",
                        format!("stage `{}`: {}", s.id, spawn_text(&e)),
                    ));
                    break;
                }
            }
            continue;
        }
        let mut refs = Vec::new();
        for r in 0..s.replicas {
            let args = ActorArgs {
                group: group.clone(),
                shared: shared.clone(),
                config: s.config.clone(),
                ctx: plan.context(i, r, &opts.out_dir),
                restart: s.restart,
                heavy: s.ports.heavy,
                join: s.ports.join,
                n_inputs: s.inputs.len(),
                mailbox: s.mailbox,
            };
            match Actor::spawn(None, StageActor, args).await {
                Ok((a, _)) => {
                    actors.push(a.get_cell());
                    refs.push(a);
                }
                Err(e) => {
                    spawn_error = Some(StageError::new(
                        "build",
                        format!("stage `{}`: {}", s.id, spawn_text(&e)),
                    ));
                    break;
                }
            }
        }
        let _ = group.replicas.set(refs);
        if spawn_error.is_some() {
            break;
        }
    }
    if let Some(e) = spawn_error {
        for a in &actors {
            a.stop(None);
        }
        return Err(e);
    }

    let t0 = Instant::now();
    let total: Option<u64> = totals.lock().ok().and_then(|t| t.iter().copied().sum::<Option<u64>>());
    let progress = opts.progress.then(|| progress_bar(total));
    let ticker = {
        let stats = stats.clone();
        let progress = progress.clone();
        let shared = shared.clone();
        let out_dir = opts.out_dir.clone();
        tokio::spawn(async move {
            let mut last: Vec<u64> = vec![0; stats.len()];
            let mut iv = tokio::time::interval(Duration::from_millis(250));
            let mut ticks = 0u64;
            loop {
                iv.tick().await;
                ticks += 1;
                if let Some(pb) = &progress {
                    let done = stats
                        .iter()
                        .filter(|s| s.role == Role::Sink)
                        .map(|s| s.received.load(Ordering::Relaxed))
                        .min()
                        .unwrap_or(0);
                    pb.set_position(done);
                }
                if ticks.is_multiple_of(4) {
                    for (k, s) in stats.iter().enumerate() {
                        let busy = s.busy_ns.load(Ordering::Relaxed);
                        let util = (busy - last[k]) as f64 / 1e9 / s.replicas.max(1) as f64;
                        s.m_utilization.set(util.min(1.0));
                        last[k] = busy;
                    }
                }
                // A snapshot of summary.json every 2 s, so a killed run leaves one.
                if ticks.is_multiple_of(SUMMARY_TICKS) {
                    let snapshot = shared.summarise(&out_dir, t0.elapsed().as_secs_f64(), 0, false);
                    if let Err(e) = snapshot.write() {
                        shared.note_unwritten(&out_dir.join("summary.json"), e);
                    }
                }
            }
        })
    };
    let signals = if opts.handle_signals {
        let shared = shared.clone();
        Some(tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ndataflow: stopping — sources closed, draining frames in flight (Ctrl-C again to abort)");
                shared.interrupted.store(true, Ordering::Relaxed);
                shared.stop.set();
                shared.done.notify_waiters();
                if tokio::signal::ctrl_c().await.is_ok() {
                    shared.set_fatal("aborted by a second Ctrl-C".into());
                }
            }
        }))
    } else {
        None
    };
    let _ = start_tx.send(true);

    let mut stop_seen_at: Option<Instant> = None;
    let mut aborted = false;
    loop {
        if shared.finished.load(Ordering::Acquire) >= n {
            break;
        }
        if shared.fatal.lock().map(|f| f.is_some()).unwrap_or(false) {
            aborted = true;
            break;
        }
        if shared.stop.is_set() {
            let since = *stop_seen_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= opts.drain_timeout {
                shared.set_fatal(format!(
                    "the drain after the stop request took longer than {:?}",
                    opts.drain_timeout
                ));
                aborted = true;
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), shared.done.notified()).await;
    }
    let in_flight: u64 = if aborted {
        all_edges.iter().map(|e| e.depth() as u64).sum()
    } else {
        0
    };
    for a in &actors {
        a.stop(None);
    }
    ticker.abort();
    // Wait until the ticker has stopped, so no snapshot lands after the final summary.
    let _ = ticker.await;
    if let Some(s) = signals {
        s.abort();
    }
    if let Some(pb) = &progress {
        pb.finish_and_clear();
    }
    let seconds = t0.elapsed().as_secs_f64();
    let mut summary = shared.summarise(&opts.out_dir, seconds, in_flight, true);
    if let Err(e) = summary.write() {
        if !summary.unwritten.contains(&e) {
            tracing::error!("{e}");
            summary.unwritten.push(e);
        }
    }
    Ok(summary)
}

/// Ticks of the 250 ms run ticker between two snapshots of `summary.json` (2 s).
const SUMMARY_TICKS: u64 = 8;

fn spawn_text(e: &ractor::SpawnErr) -> String {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    let pb = match total {
        Some(t) => indicatif::ProgressBar::with_draw_target(Some(t), indicatif::ProgressDrawTarget::stderr()),
        None => indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr()),
    };
    let style = if total.is_some() {
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} frames  {per_sec}  ETA {eta}")
    } else {
        indicatif::ProgressStyle::with_template("{spinner} {pos} frames  {per_sec}")
    };
    if let Ok(style) = style {
        pb.set_style(style);
    }
    pb
}
