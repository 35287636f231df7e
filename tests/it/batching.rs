//! Dynamic batching (`batch = { max, wait_ms }`): frames and order as without batching,
//! one bad frame fails alone, the frames-alive bound holds, `wait_ms` is honoured, and a
//! stop flushes the partial batch.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflow_engine::{
    BuildContext, Built, Fields, GraphSource, Input, OutPort, Outputs, Ports, Registry, Role, RunSummary, Source,
    SourceItem, Stage, StageError, StageKind, StopFlag, Value,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::support::{self, probe, stage, Alive};

/// Keys of `batch_probe`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BatchProbeConfig {
    /// Probe whose `seen` gets the size of every call (1 for an unbatched call).
    probe: String,
    /// Milliseconds to sleep per call (a fixed per-call cost, like a model's).
    #[serde(default)]
    ms: u64,
    /// Frames (sequence numbers) this stage fails with an `input` error.
    #[serde(default)]
    fail: Vec<u64>,
    /// A frame on which `process_batch` panics (the whole batch fails).
    #[serde(default)]
    panic_on: Option<u64>,
    /// Run on a worker thread of its own, like model stages.
    #[serde(default)]
    heavy: bool,
}

/// A transform that batches: it records each call's size, writes it into the messages
/// (`batch_size`) and fails the frames it is told to.
struct BatchProbe;
struct BatchProbeRun {
    sizes: Arc<Alive>,
    pause: Duration,
    fail: Vec<u64>,
    panic_on: Option<u64>,
}

impl BatchProbeRun {
    fn one(&self, input: Input, size: usize, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Err(StageError::input("batch_probe takes single messages"));
        };
        if self.fail.contains(&msg.id.seq) {
            return Err(StageError::input(format!("frame {} is marked bad by the test", msg.id)));
        }
        out.emit(msg.derive(Fields::new().with("batch_size", Value::Number(size as f64))));
        Ok(())
    }
}

impl Stage for BatchProbeRun {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        self.sizes.seen.lock().unwrap().push(1);
        std::thread::sleep(self.pause);
        self.one(input, 1, out)
    }

    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        let n = inputs.len();
        self.sizes.seen.lock().unwrap().push(n as u64);
        std::thread::sleep(self.pause);
        if let Some(bad) = self.panic_on {
            if inputs.iter().any(|i| i.frame().seq == bad) {
                panic!("injected panic in a batch with frame {bad}");
            }
        }
        inputs
            .into_iter()
            .zip(outs.iter_mut())
            .map(|(input, out)| self.one(input, n, out))
            .collect()
    }
}

impl StageKind for BatchProbe {
    type Config = BatchProbeConfig;
    const NAME: &'static str = "batch_probe";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "test stage recording its batch sizes";
    const BATCH: bool = true;
    fn ports(c: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::passing("out", &["batch_size"])],
            heavy: c.heavy,
            ..Ports::default()
        }
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(BatchProbeRun {
            sizes: probe(&c.probe),
            pause: Duration::from_millis(c.ms),
            fail: c.fail.clone(),
            panic_on: c.panic_on,
        })))
    }
}

/// Keys of `hold`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HoldConfig {
    frames: u64,
    /// Probe whose `seen` the source watches: it ends once that many frames arrived there.
    probe: String,
}

/// A source that sends `frames` frames, then keeps its stream open until the sink has
/// seen them all or a stop is requested (at most a minute): the end of stream cannot be
/// what flushes a batch.
struct Hold;
struct HoldRun {
    left: u64,
    frames: u64,
    seen: Arc<Alive>,
    sent: Option<Instant>,
}

impl Source for HoldRun {
    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        if self.left > 0 && !stop.is_set() {
            self.left -= 1;
            self.sent.get_or_insert_with(Instant::now);
            return SourceItem::Frame(Fields::new().with("image_name", Value::Text("x".into())));
        }
        let t0 = Instant::now();
        while !stop.is_set() && (self.seen.seen.lock().unwrap().len() as u64) < self.frames {
            if t0.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(sent) = self.sent.take() {
            // How long the first frame took to reach the sink, for the test to read.
            self.seen.max.store(sent.elapsed().as_millis() as u64, Ordering::SeqCst);
        }
        SourceItem::End
    }
}

impl StageKind for Hold {
    type Config = HoldConfig;
    const NAME: &'static str = "hold";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "test source that holds its stream open";
    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::fresh("out", &["image_name"])],
            ..Ports::default()
        }
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Source(Box::new(HoldRun {
            left: c.frames,
            frames: c.frames,
            seen: probe(&c.probe),
            sent: None,
        })))
    }
}

fn registry() -> Registry {
    let mut r = support::registry();
    r.register::<BatchProbe>().register::<Hold>();
    r
}

fn plan_of(text: &str) -> dataflow_engine::Plan {
    let src = GraphSource::from_text(Path::new("test.toml"), text.to_string(), &[]).unwrap();
    dataflow_engine::plan(&src, &registry()).unwrap_or_else(|d| panic!("{d}"))
}

fn run(text: &str, out: &Path) -> RunSummary {
    let plan = plan_of(text);
    let (rt, opts) = support::in_process(out);
    rt.block_on(dataflow_engine::run(&plan, opts)).unwrap()
}

fn seen(name: &str) -> Vec<u64> {
    probe(name).seen.lock().unwrap().clone()
}

/// `tracked` frames through `batch_probe` (with `keys`) to a `record` sink.
fn chain(name: &str, frames: u64, keys: &str) -> String {
    format!(
        r#"
[stage.src]
kind = "tracked"
frames = {frames}
probe = "{name}-alive"
[stage.b]
kind = "batch_probe"
inputs = ["src"]
probe = "{name}-sizes"
{keys}
[stage.sink]
kind = "record"
inputs = ["b"]
probe = "{name}"
"#
    )
}

#[test]
fn batched_and_unbatched_runs_give_the_same_frames_in_the_same_order() {
    let n = 300u64;
    for (name, keys) in [
        ("batch-order-none", "ms = 1\nheavy = true".to_string()),
        (
            "batch-order-heavy",
            "ms = 1\nheavy = true\nmailbox = 8\nbatch = { max = 8, wait_ms = 20 }".into(),
        ),
        (
            "batch-order-light",
            "ms = 1\nmailbox = 8\nbatch = { max = 8, wait_ms = 20 }".into(),
        ),
        (
            "batch-order-replicas",
            "ms = 1\nheavy = true\nreplicas = 3\nmailbox = 16\nbatch = { max = 4, wait_ms = 5 }".into(),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = run(&chain(name, n, &keys), dir.path());
        assert_eq!(
            seen(name),
            (0..n).collect::<Vec<_>>(),
            "{name}: every frame once, in order"
        );
        assert_eq!(
            (s.failed, s.dropped, stage(&s, "b").received, stage(&s, "b").sent),
            (0, 0, n, n),
            "{name}"
        );
        let sizes = seen(&format!("{name}-sizes"));
        assert_eq!(sizes.iter().sum::<u64>(), n, "{name}: the calls took every frame once");
        let biggest = sizes.iter().copied().max().unwrap_or(0);
        if name == "batch-order-none" {
            assert_eq!(biggest, 1, "no batch without `batch`");
        } else {
            let cap = if name.ends_with("replicas") { 4 } else { 8 };
            assert!(
                biggest > 1 && biggest <= cap,
                "{name}: batches of up to {cap}, got {biggest}"
            );
            println!("{name}: {} calls for {n} frames, largest batch {biggest}", sizes.len());
        }
    }
}

#[test]
fn a_bad_frame_in_a_batch_fails_alone() {
    let name = "batch-bad";
    let dir = tempfile::tempdir().unwrap();
    let keys = "ms = 2\nheavy = true\nfail = [5, 17]\nmailbox = 8\nbatch = { max = 8, wait_ms = 50 }";
    let s = run(&chain(name, 40, keys), dir.path());
    let want: Vec<u64> = (0..40).filter(|s| *s != 5 && *s != 17).collect();
    assert_eq!(seen(name), want, "the other frames of the batches arrive, in order");
    assert_eq!((s.failed, stage(&s, "b").errors, stage(&s, "b").sent), (2, 2, 38));
    assert_eq!(stage(&s, "b").restarts, 0);
    let log = std::fs::read_to_string(dir.path().join("errors.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{log}");
    for (line, seq) in lines.iter().zip([5, 17]) {
        assert_eq!(line["stage"], "b");
        assert_eq!(line["class"], "input");
        let msg = line["error"].as_str().unwrap();
        assert!(
            msg.ends_with("is marked bad by the test") && msg.contains(&format!(":{seq} ")),
            "{msg}"
        );
    }
    assert!(
        seen(&format!("{name}-sizes")).iter().any(|&n| n > 1),
        "the bad frames were in batches"
    );
}

#[test]
fn a_panic_in_a_batch_fails_that_batch_and_the_stream_goes_on() {
    let name = "batch-panic";
    let dir = tempfile::tempdir().unwrap();
    let keys = "ms = 2\nheavy = true\npanic_on = 9\nmailbox = 4\nbatch = { max = 4, wait_ms = 20 }";
    let s = run(&chain(name, 30, keys), dir.path());
    let b = stage(&s, "b");
    let arrived = seen(name);
    assert_eq!(b.restarts, 1);
    assert!(
        (1..=4).contains(&b.errors),
        "the batch with frame 9 failed: {} errors",
        b.errors
    );
    assert_eq!(arrived.len() as u64 + b.errors, 30, "every other frame arrived");
    assert!(
        !arrived.contains(&9) && arrived.windows(2).all(|w| w[0] < w[1]),
        "{arrived:?}"
    );
    assert_eq!(s.failed, b.errors);
    assert!(s.fatal.is_none());
}

#[test]
fn frames_alive_stay_within_the_edge_bound_with_batching() {
    let dir = tempfile::tempdir().unwrap();
    let s = run(
        r#"
[defaults]
mailbox = 4
[stage.src]
kind = "tracked"
frames = 3000
probe = "batch-bound"
[stage.fast]
kind = "passthrough"
inputs = ["src"]
[stage.slow]
kind = "delay"
inputs = ["fast"]
ms = 0.5
batch = { max = 4, wait_ms = 2 }
[stage.sink]
kind = "record"
inputs = ["slow"]
probe = "batch-bound"
"#,
        dir.path(),
    );
    let p = probe("batch-bound");
    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(seen, (0..3000).collect::<Vec<_>>(), "exactly once, in order");
    // As without batching: three edges of 4 places, plus one frame in the hands of each
    // of the 4 stages; a batch holds its frames' places on its input edge.
    let bound = 3 * 4 + 4;
    let max = p.max.load(Ordering::SeqCst);
    println!("frames alive at most: {max} (bound {bound})");
    assert!(max <= bound, "{max} frames were alive at once, over the bound {bound}");
    assert!(
        max >= 4,
        "the slow stage should have filled its queue (max alive {max})"
    );
    assert_eq!(p.now.load(Ordering::SeqCst), 0, "no frame leaked");
    assert_eq!((s.failed, s.dropped), (0, 0));
}

#[test]
fn a_lone_frame_is_processed_once_wait_ms_has_passed() {
    let name = "batch-lone";
    let dir = tempfile::tempdir().unwrap();
    let s = run(
        &format!(
            r#"
[stage.src]
kind = "hold"
frames = 1
probe = "{name}"
[stage.b]
kind = "batch_probe"
inputs = ["src"]
probe = "{name}-sizes"
heavy = true
mailbox = 8
batch = {{ max = 8, wait_ms = 200 }}
[stage.sink]
kind = "record"
inputs = ["b"]
probe = "{name}"
"#
        ),
        dir.path(),
    );
    assert_eq!(seen(name), [0]);
    assert_eq!(seen(&format!("{name}-sizes")), [1], "one call with the lone frame");
    // The source kept its stream open until the frame arrived: the batch was flushed by
    // its `wait_ms`, not by the end of the stream. Generous bounds, not a speed test.
    let took = probe(name).max.load(Ordering::SeqCst);
    assert!(
        (195..10_000).contains(&took),
        "the lone frame took {took} ms to arrive (wait_ms = 200)"
    );
    assert!(!s.interrupted && s.frames_out == 1);
}

#[test]
fn a_stop_flushes_the_partial_batch() {
    let name = "batch-stop";
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_of(&format!(
        r#"
[stage.src]
kind = "hold"
frames = 3
probe = "{name}"
[stage.b]
kind = "batch_probe"
inputs = ["src"]
probe = "{name}-sizes"
heavy = true
mailbox = 8
batch = {{ max = 8, wait_ms = 60000 }}
[stage.sink]
kind = "record"
inputs = ["b"]
probe = "{name}"
"#
    ));
    let (rt, opts) = support::in_process(dir.path());
    let stop = opts.stop.clone();
    let t0 = Instant::now();
    let ctrl_c = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        stop.interrupt();
    });
    let s = rt.block_on(dataflow_engine::run(&plan, opts)).unwrap();
    ctrl_c.join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the run waited for the batch's minute"
    );
    assert_eq!(seen(name), [0, 1, 2], "the partial batch was flushed, not lost");
    assert_eq!(seen(&format!("{name}-sizes")), [3]);
    assert!(s.ctrl_c && s.fatal.is_none());
    assert_eq!((s.frames_out, s.failed), (3, 0));
}

#[test]
fn batch_validation_names_the_line_and_what_to_do() {
    let graph = |kind: &str, extra: &str| {
        format!(
            "[stage.src]\nkind = \"tracked\"\nframes = 1\nprobe = \"v\"\n[stage.p]\nkind = \"{kind}\"\ninputs = [\"src\"]\n{extra}batch = {{ max = 8, wait_ms = 5 }}\n[stage.sink]\nkind = \"null_sink\"\ninputs = [\"p\"]\n"
        )
    };
    let d = support::diagnostics(&graph("passthrough", ""));
    assert_eq!(d.len(), 1, "{d:?}");
    let (head, kinds) = d[0].split_once("kinds that batch: ").unwrap();
    assert_eq!(
        head,
        "test.toml:8:1: error: stage `p`: kind `passthrough` does not batch: it handles one message per call\n  help: remove `batch` from this stage; "
    );
    assert!(kinds.split(", ").any(|k| k == "delay"), "{kinds}");
    assert_eq!(
        support::diagnostics(&graph("delay", "")),
        ["test.toml:8:1: error: stage `p`: `batch.max` = 8 is more than `mailbox` = 4: a batch holds its messages' places on the input edge until it is done, so it could never fill\n  help: set `mailbox = 8` (or more) on this stage, or lower `batch.max`"]
    );
    assert!(support::diagnostics(&graph("delay", "mailbox = 8\n")).is_empty());
    assert_eq!(
        support::diagnostics(&graph("delay", "mailbox = 8\n").replace("wait_ms = 5", "wait_ms = 5, size = 2")),
        ["test.toml:9:33: error: stage `p`: unknown key `size` in `batch`\n  help: keys of `batch`: max, wait_ms"]
    );
}

#[test]
fn batched_stages_export_their_batch_sizes_and_waits() {
    let handle = dataflow_monitoring::install_recorder().unwrap();
    let name = "batch-metrics";
    let dir = tempfile::tempdir().unwrap();
    let keys = "ms = 3\nheavy = true\nmailbox = 4\nbatch = { max = 4, wait_ms = 10 }";
    let s = run(&chain(name, 60, keys), dir.path());
    assert_eq!(s.frames_out, 60);
    let sizes = seen(&format!("{name}-sizes"));
    let samples = dataflow_monitoring::top::parse_exposition(&handle.render()).unwrap();
    let series = |metric: &str, stage_id: &str| {
        samples
            .iter()
            .find(|x| x.name == metric && x.label("stage") == Some(stage_id))
            .map(|x| x.value)
    };
    let calls = Some(sizes.len() as f64);
    assert_eq!(series("dataflow_stage_batch_size_count", "b"), calls);
    assert_eq!(series("dataflow_stage_batch_size_sum", "b"), Some(60.0));
    assert_eq!(series("dataflow_stage_batch_wait_seconds_count", "b"), calls);
    let waited = series("dataflow_stage_batch_wait_seconds_sum", "b").unwrap();
    assert!((0.0..60.0).contains(&waited), "{waited}");
    assert_eq!(
        series("dataflow_stage_batch_size_count", "sink"),
        None,
        "only batched stages have them"
    );
}
