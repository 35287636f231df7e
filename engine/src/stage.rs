//! The stage API: what a stage kind implements and what the runtime gives it.
//!
//! A stage kind is one type implementing [`StageKind`]: a strict config struct
//! (`serde` + `schemars`), the ports it offers for a given config (each output port's
//! fields and the fields it requires, with their [`FieldType`]s), and `build`, which
//! makes one runtime value per replica — a [`Source`] or a [`Stage`] — and resolves the
//! ports it sends on by name ([`BuildContext::output`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::message::{FieldType, Fields, FrameId, Message};

/// Where a stage kind sits in a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Produces frames, takes no inputs.
    Source,
    /// Takes inputs and produces outputs.
    Transform,
    /// Takes inputs and produces nothing downstream (files, metrics).
    Sink,
}

/// A named field with the type of its value, as a port or a requirement declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// Type of its value.
    pub ty: FieldType,
}

impl Field {
    /// Field `name` of type `ty`.
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        Field { name: name.into(), ty }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.ty)
    }
}

/// One output port of a stage.
#[derive(Debug, Clone)]
pub struct OutPort {
    /// Port name; the first port is the default one (`stage` means `stage.<first>`).
    pub name: String,
    /// Fields this port adds to each message, with their types.
    pub adds: Vec<Field>,
    /// Whether messages on this port also carry the fields of the input.
    pub passthrough: bool,
    /// Every field a message on this port may carry, with its type, as validation worked
    /// it out (`adds`, plus the inputs' fields on a passthrough port); `None` before
    /// validation. The runtime's debug check holds the stage's messages to it.
    pub carries: Option<BTreeMap<String, FieldType>>,
}

impl OutPort {
    /// A port named `name` whose messages carry only the fields added with [`OutPort::with`].
    pub fn new(name: &str) -> Self {
        OutPort {
            name: name.into(),
            adds: Vec::new(),
            passthrough: false,
            carries: None,
        }
    }

    /// A port named `name` whose messages carry the input's fields along, plus those
    /// added with [`OutPort::with`].
    pub fn forwarding(name: &str) -> Self {
        OutPort {
            passthrough: true,
            ..OutPort::new(name)
        }
    }

    /// The port, also adding field `name` of type `ty` to each message.
    pub fn with(mut self, name: &str, ty: FieldType) -> Self {
        self.adds.push(Field::new(name, ty));
        self
    }

    /// The port, also adding each of `names`, all of type `ty`.
    pub fn with_each(mut self, names: &[&str], ty: FieldType) -> Self {
        self.adds.extend(names.iter().map(|n| Field::new(*n, ty)));
        self
    }
}

/// An output port of a stage, resolved by name once when the stage is built
/// ([`BuildContext::output`]) and then used for every [`Outputs::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortId(pub(crate) usize);

impl PortId {
    /// The default (first) port.
    pub const DEFAULT: PortId = PortId(0);

    /// Index into [`Ports::outputs`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// The ports of a configured stage, used by validation and by the runtime.
#[derive(Debug, Clone, Default)]
pub struct Ports {
    /// Output ports, default first. Empty for sinks.
    pub outputs: Vec<OutPort>,
    /// Fields every input message must carry, with their types (for joins: the union
    /// of the inputs).
    pub requires: Vec<Field>,
    /// When set, the stage joins its inputs by frame id: it receives all parts of
    /// one frame from every input at once, or what arrived when this timeout passed.
    pub join: Option<Duration>,
    /// Heavy stages (inference, codecs) run on a dedicated worker thread per replica.
    pub heavy: bool,
}

/// Facts a stage gets when it is built.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Stage id in the graph.
    pub stage: String,
    /// Stage kind name.
    pub kind: String,
    /// Which replica this is (0-based).
    pub replica: usize,
    /// How many replicas the stage has.
    pub replicas: usize,
    /// Graph name.
    pub graph: String,
    /// Graph seed; every random draw derives from it.
    pub seed: u64,
    /// Folder every sink writes under.
    pub out_dir: PathBuf,
    /// Folder of the graph file: relative paths in the graph resolve against the
    /// current directory first, then against this.
    pub graph_dir: PathBuf,
    /// Input references as written in the graph (`stage` or `stage.port`).
    pub inputs: Vec<String>,
    /// The stage's reserved `restart` key: a kind that can recover by itself (a
    /// `python` stage replacing a dead worker process) reads it instead of panicking.
    pub restart: crate::plan::Restart,
    /// The stage's output ports, default first (with what each carries once validated).
    pub outputs: Vec<OutPort>,
}

impl BuildContext {
    /// Resolves a path written in the graph: absolute as is; relative against the
    /// current directory when it exists there, else against the graph's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || path.exists() {
            return path.to_path_buf();
        }
        let beside = self.graph_dir.join(path);
        if beside.exists() {
            beside
        } else {
            path.to_path_buf()
        }
    }

    /// The output port called `name`, resolved once at build so that sends name their
    /// port. An unknown name is a build error naming the kind and its ports.
    pub fn output(&self, name: &str) -> Result<PortId, StageError> {
        self.outputs.iter().position(|p| p.name == name).map(PortId).ok_or_else(|| {
            let known: Vec<&str> = self.outputs.iter().map(|p| p.name.as_str()).collect();
            StageError::new(
                "build",
                format!(
                    "stage `{}`: kind `{}` sends on an output port `{name}` that its ports() does not declare (it declares {}); a bug in the kind: declare the port or fix the name",
                    self.stage,
                    self.kind,
                    if known.is_empty() { "none".to_string() } else { known.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ") }
                ),
            )
        })
    }
}

/// A per-frame failure. The runtime counts it under `class`, logs it with the
/// stage and frame, writes it to the run's error log, and the stream goes on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StageError {
    /// Bounded error class used as a metric label (`decode`, `input`, `model`, `io`, ...).
    pub class: &'static str,
    /// What happened and what to do about it.
    pub message: String,
    /// The stage replaced something that died while it held this frame (a worker
    /// process) and carries on: the runtime counts a restart of the stage, in the run
    /// summary and `dataflow_stage_restarts_total`, as for a rebuilt replica.
    pub restarted: bool,
}

impl StageError {
    /// A new error of `class`.
    pub fn new(class: &'static str, message: impl Into<String>) -> Self {
        StageError {
            class,
            message: message.into(),
            restarted: false,
        }
    }

    /// The same error, marked as one where the stage replaced a dead part of itself
    /// ([`StageError::restarted`]).
    pub fn with_restart(mut self) -> Self {
        self.restarted = true;
        self
    }

    /// An input the stage cannot use (missing field, wrong shape).
    pub fn input(message: impl Into<String>) -> Self {
        Self::new("input", message)
    }

    /// A file-system or device failure.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new("io", message)
    }
}

/// What a stage receives.
#[derive(Debug)]
pub enum Input {
    /// One message from input number `input` (order of the graph's `inputs`).
    Message {
        /// Index into the stage's `inputs`.
        input: usize,
        /// The message.
        msg: Message,
    },
    /// All parts of one frame from every input (joining stages only).
    Joined(Joined),
}

/// The parts of one frame gathered from every input of a joining stage.
#[derive(Debug)]
pub struct Joined {
    /// The frame.
    pub id: FrameId,
    /// `parts[input][part]`; `None` marks a part that did not arrive in time.
    pub parts: Vec<Vec<Option<Message>>>,
}

impl Joined {
    /// Number of parts that did not arrive.
    pub fn lost(&self) -> usize {
        self.parts.iter().flatten().filter(|p| p.is_none()).count()
    }

    /// Any message that arrived (to derive outputs from).
    pub fn any(&self) -> Option<&Message> {
        self.parts.iter().flatten().flatten().next()
    }
}

impl Input {
    /// The message of a non-joining input.
    pub fn message(&self) -> Option<&Message> {
        match self {
            Input::Message { msg, .. } => Some(msg),
            Input::Joined(_) => None,
        }
    }

    /// The frame the input belongs to.
    pub fn frame(&self) -> FrameId {
        match self {
            Input::Message { msg, .. } => msg.id,
            Input::Joined(j) => j.id,
        }
    }
}

/// Messages a stage emits while handling one input, by output port index.
#[derive(Debug, Default)]
pub struct Outputs {
    pub(crate) items: Vec<(usize, Message)>,
}

impl Outputs {
    /// Emits `msg` on output port `port` (from [`BuildContext::output`]).
    pub fn send(&mut self, port: PortId, msg: Message) {
        self.items.push((port.0, msg));
    }

    /// Emits `msg` on the default (first) output port.
    pub fn emit(&mut self, msg: Message) {
        self.send(PortId::DEFAULT, msg);
    }

    /// Number of messages emitted so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A transform or sink at run time. One value per replica, owned by one actor (or
/// its worker thread), so it may hold `&mut` state such as a model session.
///
/// Debug builds wrap every built stage to check its outputs against its ports
/// (`runtime/contract.rs`): a method added here must be forwarded there too.
pub trait Stage: Send {
    /// Handles one input. An `Err` fails this frame only.
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError>;

    /// Handles several inputs in one call (a kind with [`StageKind::BATCH`] under the
    /// reserved `batch` key). `outs[i]` receives what `inputs[i]` emits and the result at
    /// `i` is that input's: an `Err` fails that frame only. The default handles them one
    /// by one; a model stage overrides it to run one batched inference.
    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        inputs
            .into_iter()
            .zip(outs.iter_mut())
            .map(|(input, out)| self.process(input, out))
            .collect()
    }

    /// Called once after the last input (end of stream): flush files, emit summaries.
    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        Ok(())
    }
}

/// The run's stop token. Whoever starts a run keeps a clone (the binary's Ctrl-C
/// handler, a test, a bridge to other machines); sources get it in [`Source::next`] and
/// end their stream when they see it set. See the runtime's `shutdown` module for the
/// whole protocol.
///
/// - [`StopFlag::set`]: stop the sources, let the frames in flight drain.
/// - [`StopFlag::interrupt`]: the same, asked by the user (the summary says so and
///   `dataflow run` exits with 130).
/// - [`StopFlag::abort`]: end the run now, without draining (a second Ctrl-C).
///
/// A flag is never cleared; dropping a clone changes nothing.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    stop: AtomicBool,
    interrupted: AtomicBool,
    abort: std::sync::Mutex<Option<String>>,
    /// Woken on every request, for the run's wait.
    changed: tokio::sync::Notify,
}

impl StopFlag {
    /// Whether a stop was requested.
    pub fn is_set(&self) -> bool {
        self.0.stop.load(Ordering::Relaxed)
    }

    /// Requests a stop: sources end their streams, frames in flight drain.
    pub fn set(&self) {
        self.0.stop.store(true, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }

    /// Requests a stop on the user's behalf (Ctrl-C).
    pub fn interrupt(&self) {
        self.0.interrupted.store(true, Ordering::Relaxed);
        self.set();
    }

    /// Whether [`StopFlag::interrupt`] was called.
    pub fn is_interrupted(&self) -> bool {
        self.0.interrupted.load(Ordering::Relaxed)
    }

    /// Ends the run now without draining; `reason` becomes the run's error (the first
    /// reason given is kept).
    pub fn abort(&self, reason: impl Into<String>) {
        if let Ok(mut a) = self.0.abort.lock() {
            a.get_or_insert_with(|| reason.into());
        }
        self.set();
    }

    /// Why [`StopFlag::abort`] was called, if it was.
    pub fn abort_reason(&self) -> Option<String> {
        self.0.abort.lock().ok().and_then(|a| a.clone())
    }

    /// Waits until a stop is requested.
    pub async fn stopped(&self) {
        loop {
            let changed = self.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_set() {
                return;
            }
            changed.await;
        }
    }

    /// A future woken by the next request; enable it before checking the flag.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.changed.notified()
    }
}

/// What a source yields each time it is asked.
pub enum SourceItem {
    /// A new frame with these fields.
    Frame(Fields),
    /// An input that could not be read (counted and reported; the stream goes on).
    Failed(StageError),
    /// The stream has ended.
    End,
    /// A message that already has its identity (frame id, part, capture time), such as
    /// one that crossed from another machine. `on_release` runs once the message's
    /// place on the edge is freed: when the consumer has sent its outputs on, or when
    /// the edge's policy dropped it. A bridge acknowledges the message there, so the
    /// edge's bound holds across machines.
    Forward {
        /// The message, routed as is on the source's first output port.
        msg: Message,
        /// Called once the message no longer holds a place on any edge.
        on_release: Option<Release>,
    },
}

impl std::fmt::Debug for SourceItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceItem::Frame(fields) => f.debug_tuple("Frame").field(fields).finish(),
            SourceItem::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            SourceItem::End => f.write_str("End"),
            SourceItem::Forward { msg, on_release } => f
                .debug_struct("Forward")
                .field("msg", msg)
                .field("on_release", &on_release.is_some())
                .finish(),
        }
    }
}

/// A callback run once, when a forwarded message's place on its edge is freed.
pub type Release = Box<dyn FnOnce() + Send + Sync>;

/// A source at run time, driven from a dedicated thread.
pub trait Source: Send {
    /// Number of frames it will produce, when known (for the progress bar).
    fn total(&self) -> Option<u64> {
        None
    }

    /// Produces the next item; may block (camera, rate limit). Must return
    /// [`SourceItem::End`] soon after `stop` is set.
    fn next(&mut self, stop: &StopFlag) -> SourceItem;

    /// Whether the runtime stops asking for items once a stop is requested (the
    /// default). A bridge from another machine returns `false`: after Ctrl-C it keeps
    /// delivering until the far side's end of stream, so frames in flight drain.
    fn ends_on_stop(&self) -> bool {
        true
    }
}

/// What `build` returns.
pub enum Built {
    /// A source.
    Source(Box<dyn Source>),
    /// A transform or sink.
    Stage(Box<dyn Stage>),
}

/// A stage kind: adding one to the engine is one file with an impl of this trait
/// and one line in the registry.
pub trait StageKind: Send + Sync + 'static {
    /// The kind's own keys (flat next to the reserved keys in the graph file).
    /// Must reject unknown keys (`#[serde(deny_unknown_fields)]`).
    type Config: DeserializeOwned + JsonSchema + Send + Sync + 'static;

    /// Kind name as written in `kind = "..."`.
    const NAME: &'static str;
    /// Source, transform or sink.
    const ROLE: Role;
    /// One line for `dataflow graph`, the schema and `--help` texts.
    const DOC: &'static str;
    /// Channel kinds inherit the graph's `[channel]` keys they declare.
    const CHANNEL: bool = false;

    /// Why the kind runs as one replica only (it owns one output file or port), or
    /// `None` when replicas are fine. Validation refuses `replicas > 1` with this reason.
    const ONE_REPLICA: Option<&'static str> = None;

    /// Whether the kind takes the reserved `batch = { max, wait_ms }` key: its stages
    /// override [`Stage::process_batch`] with one batched call. Validation refuses
    /// `batch` on other kinds.
    const BATCH: bool = false;

    /// Ports for this config (cheap; no model is loaded).
    fn ports(config: &Self::Config) -> Ports;

    /// Values of the kind's own keys that validation refuses (a duration or rate out of
    /// range, a grid with no tiles), so that a graph that validates also runs. Cheap: no
    /// file is opened. Each problem names its key, so the message points at its line.
    fn validate(_config: &Self::Config) -> Vec<KeyProblem> {
        Vec::new()
    }

    /// Second-pass resource checks (files present, devices available); each
    /// message says what is missing and how to obtain it.
    fn check(_config: &Self::Config, _ctx: &BuildContext) -> Vec<String> {
        Vec::new()
    }

    /// Builds one replica (loads models, opens files).
    fn build(config: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError>;

    /// The part the kind's stages play in `dataflow sweep` (none by default).
    const SWEEP: crate::sweep_role::SweepRole = crate::sweep_role::SweepRole::None;

    /// What stands in for what in a stage of this kind, for a sweep's report ("HEIF + 5G NR
    /// LDPC"); by default the model of a [`crate::tagged::Tagged`] config, else nothing.
    fn describe(_config: &Self::Config) -> Option<String> {
        None
    }
}

/// A value of a stage's own key that validation refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyProblem {
    /// The key, as written in the graph file.
    pub key: &'static str,
    /// What is wrong and which values are allowed.
    pub message: String,
}

/// The longest duration a key may hold: one year, far below what `Duration` and
/// `Instant` arithmetic can represent, so a validated value never panics at run time.
pub const MAX_DURATION_S: f64 = 365.0 * 86_400.0;

/// Checks that `value` (in `unit`) of key `key` lies in `[min, max]`; the message names
/// the range. NaN and infinities are refused.
pub fn check_range(key: &'static str, value: f64, min: f64, max: f64, unit: &str) -> Option<KeyProblem> {
    (!(value.is_finite() && value >= min && value <= max)).then(|| KeyProblem {
        key,
        message: format!(
            "`{key}` = {} is out of range: it must be between {} and {} {unit}",
            show(value),
            show(min),
            show(max)
        ),
    })
}

/// A number as a user would write it: `1e300` rather than three hundred digits.
fn show(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-3..1e12).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// [`check_range`] for a key that may be absent.
pub fn check_range_opt(key: &'static str, value: Option<f64>, min: f64, max: f64, unit: &str) -> Option<KeyProblem> {
    value.and_then(|v| check_range(key, v, min, max, unit))
}

/// [`check_range_opt`] for an optional run length in seconds (`duration_s`): 0 to
/// [`MAX_DURATION_S`].
pub fn check_duration_s(value: Option<f64>) -> Option<KeyProblem> {
    check_range_opt("duration_s", value, 0.0, MAX_DURATION_S, "seconds")
}

/// [`check_range`] for a join timeout in milliseconds: 1 ms to [`MAX_DURATION_S`].
pub fn check_timeout_ms(key: &'static str, value: u64) -> Option<KeyProblem> {
    check_range(key, value as f64, 1.0, MAX_DURATION_S * 1000.0, "milliseconds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(outputs: Vec<OutPort>) -> BuildContext {
        BuildContext {
            stage: "seg".into(),
            kind: "segment".into(),
            replica: 0,
            replicas: 1,
            graph: "g".into(),
            seed: 1,
            out_dir: PathBuf::from("out"),
            graph_dir: PathBuf::from("."),
            inputs: Vec::new(),
            restart: crate::plan::Restart::Never,
            outputs,
        }
    }

    #[test]
    fn a_port_is_resolved_by_name_once() {
        let ctx = context(vec![
            OutPort::forwarding("out"),
            OutPort::new("slice").with("slice", FieldType::Image),
        ]);
        assert_eq!(ctx.output("out").map(PortId::index).ok(), Some(0));
        assert_eq!(ctx.output("slice").map(PortId::index).ok(), Some(1));
    }

    #[test]
    fn an_unknown_port_is_a_build_error_naming_the_kind_and_its_ports() {
        let ctx = context(vec![OutPort::forwarding("out"), OutPort::new("slice")]);
        let e = ctx.output("slices").expect_err("no such port");
        assert_eq!(e.class, "build");
        assert!(
            e.message.contains("kind `segment` sends on an output port `slices` that its ports() does not declare (it declares `out`, `slice`)"),
            "{e}"
        );
    }
}
