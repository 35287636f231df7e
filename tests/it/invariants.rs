//! Randomized invariants of the engine (issue 24): random graphs of the model-free
//! kinds (synthetic, passthrough, delay, split, evaluate, sinks, and `gather`, a test
//! join of any inputs that never fails: `fuse` needs texts) with random
//! mailboxes, `when_full` policies, replicas, fan-in, fan-out, joins and Ctrl-C.
//!
//! Checked on every graph: the run ends (no hang) without a panic or a fatal error;
//! conservation per stage (what its producers sent on its input edges = received +
//! dropped, and each kind's outputs follow from what it received); at most one
//! emission per frame per join (its tap sink plus `errors.jsonl`); `failed <=
//! frames_in`. Under `block` on every edge: exactly-once, in-order delivery on every
//! sink input edge, nothing dropped or failed. A fifth of the graphs run through the
//! `dataflow` binary (a real SIGINT, exit codes against `summary.json`).
//!
//! `random_graphs_hold_the_invariants` runs a fixed slice of seeds with the normal
//! tests. The long run:
//! `INVARIANT_CASES=2000 INVARIANT_SEED=1000 cargo test --release --test it invariants::random_graphs_long -- --ignored`;
//! a failure prints its seed, replayed with `INVARIANT_CASES=1 INVARIANT_SEED=<seed>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dataflow_engine::{
    BuildContext, Built, GraphSource, Input, Outputs, Ports, RunSummary, Stage, StageError, StageKind,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::Deserialize;

/// What a `tally` sink saw: (input edge, stream, seq, part index).
type Seen = Arc<Mutex<Vec<(usize, u32, u64, u32)>>>;

fn tallies(name: &str) -> Seen {
    static T: OnceLock<Mutex<HashMap<String, Seen>>> = OnceLock::new();
    T.get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone()
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TallyConfig {
    probe: String,
}

/// Sink recording every message's input, frame and part, in arrival order.
pub struct Tally;
struct TallyRun(Seen);
impl Stage for TallyRun {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        if let Input::Message { input, msg } = input {
            self.0
                .lock()
                .unwrap()
                .push((input, msg.id.stream, msg.id.seq, msg.part.index));
        }
        Ok(())
    }
}
impl StageKind for Tally {
    type Config = TallyConfig;
    const NAME: &'static str = "tally";
    const ROLE: dataflow_engine::Role = dataflow_engine::Role::Sink;
    const DOC: &'static str = "test sink recording input, frame and part of every message";
    fn ports(_: &Self::Config) -> Ports {
        Ports::default()
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(TallyRun(tallies(&c.probe)))))
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatherConfig {
    timeout_ms: u64,
}

/// Test join: one message per frame (the first part that arrived), never failing.
pub struct Gather;
struct GatherRun;
impl Stage for GatherRun {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        if let Input::Joined(j) = input {
            if let Some(first) = j.any() {
                out.emit(first.derive_part(dataflow_engine::Part::WHOLE, first.fields.clone()));
            }
        }
        Ok(())
    }
}
impl StageKind for Gather {
    type Config = GatherConfig;
    const NAME: &'static str = "gather";
    const ROLE: dataflow_engine::Role = dataflow_engine::Role::Transform;
    const DOC: &'static str = "test join emitting the first part of each frame";
    fn ports(c: &Self::Config) -> Ports {
        Ports {
            outputs: vec![dataflow_engine::OutPort::forwarding("out")],
            join: Some(Duration::from_millis(c.timeout_ms.max(1))),
            ..Ports::default()
        }
    }
    fn build(_: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(GatherRun)))
    }
}

/// Copies per frame of each (stream, part) on an edge.
type Mult = BTreeMap<(u32, u32), u32>;

/// What travels on one output port.
#[derive(Clone, Debug)]
struct Shape {
    /// Parts per frame (1 = whole frames).
    count: u32,
    mult: Mult,
    /// Whether messages carry a whole frame's `image` (split and evaluate need it).
    image: bool,
}

impl Shape {
    fn streams(&self) -> BTreeSet<u32> {
        self.mult.keys().map(|k| k.0).collect()
    }
    /// One stream, every part present: a join can complete its frames.
    fn joinable(&self) -> bool {
        let s = self.streams();
        s.len() == 1 && self.mult.len() == self.count as usize
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Source,
    Pass,
    Delay,
    Split(u32),
    Evaluate,
    Gather,
    Tally,
    Null,
}

struct Node {
    id: String,
    kind: Kind,
    /// (producer index, port).
    inputs: Vec<(usize, usize)>,
    keys: String,
    ports: Vec<Shape>,
    /// Smallest frame (w, h) on its output.
    size: (u32, u32),
    consumed: bool,
}

/// A generated graph and what the checks need to know about it.
struct Case {
    seed: u64,
    nodes: Vec<Node>,
    all_block: bool,
    interrupt_ms: Option<u64>,
    binary: bool,
}

impl Case {
    fn port_ref(&self, (i, p): (usize, usize)) -> String {
        match self.nodes[i].kind {
            Kind::Split(_) => format!("{}.tile{p}", self.nodes[i].id),
            _ => self.nodes[i].id.clone(),
        }
    }

    fn toml(&self) -> String {
        let mut t = format!("[graph]\nname = \"inv{}\"\nseed = {}\n", self.seed, self.seed);
        for n in &self.nodes {
            let kind = match n.kind {
                Kind::Source => "synthetic",
                Kind::Pass => "passthrough",
                Kind::Delay => "delay",
                Kind::Split(_) => "split",
                Kind::Evaluate => "evaluate",
                Kind::Gather => "gather",
                Kind::Tally if self.binary => "csv_sink",
                Kind::Tally => "tally",
                Kind::Null => "null_sink",
            };
            let _ = writeln!(t, "\n[stage.{}]\nkind = \"{kind}\"", n.id);
            if !n.inputs.is_empty() {
                let refs: Vec<String> = n.inputs.iter().map(|&r| format!("\"{}\"", self.port_ref(r))).collect();
                let _ = writeln!(t, "inputs = [{}]", refs.join(", "));
            }
            if n.kind == Kind::Tally && !self.binary {
                let _ = writeln!(t, "probe = \"inv-{}-{}\"", self.seed, n.id);
            }
            t.push_str(&n.keys);
        }
        t
    }
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn edge_keys(rng: &mut ChaCha8Rng, all_block: bool, replicable: bool) -> String {
    let mut k = format!("mailbox = {}\n", rng.random_range(1..=8));
    if !all_block {
        let _ = writeln!(
            k,
            "when_full = \"{}\"",
            pick(rng, &["block", "drop_newest", "drop_oldest"])
        );
    }
    if replicable && rng.random_bool(0.3) {
        let _ = writeln!(k, "replicas = {}", rng.random_range(2..=4));
    }
    k
}

fn merge(shapes: &[Shape]) -> Option<Shape> {
    let count = shapes.first()?.count;
    if shapes.iter().any(|s| s.count != count) {
        return None;
    }
    let mut mult = Mult::new();
    for s in shapes {
        for (k, m) in &s.mult {
            *mult.entry(*k).or_default() += m;
        }
    }
    let image = shapes.iter().all(|s| s.image);
    Some(Shape { count, mult, image })
}

/// Ports (producer, port) nobody reads yet, with their shapes.
fn open_ports(nodes: &[Node]) -> Vec<(usize, usize)> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| !matches!(n.kind, Kind::Tally | Kind::Null))
        .flat_map(|(i, n)| (0..n.ports.len()).map(move |p| (i, p)))
        .collect()
}

fn timeout_ms(rng: &mut ChaCha8Rng, all_block: bool) -> u64 {
    if all_block {
        60_000 // never fires: every part comes
    } else {
        *pick(rng, &[5, 20, 100, 1000])
    }
}

/// Adds one transform reading from existing ports; `false` when none fits.
fn add_transform(rng: &mut ChaCha8Rng, nodes: &mut Vec<Node>, all_block: bool, no_gather: bool) -> bool {
    let ports = open_ports(nodes);
    let shape = |nodes: &[Node], (i, p): (usize, usize)| nodes[i].ports[p].clone();
    let id = format!("s{}", nodes.len());
    let choice = rng.random_range(0..6);
    let (kind, inputs, out, keys) = match choice {
        0 | 1 => {
            // passthrough / delay: one or two inputs of the same part count.
            let a = *pick(rng, &ports);
            let mut inputs = vec![a];
            if rng.random_bool(0.3) {
                let b = *pick(rng, &ports);
                if b != a && shape(nodes, b).count == shape(nodes, a).count {
                    inputs.push(b);
                }
            }
            let shapes: Vec<Shape> = inputs.iter().map(|&r| shape(nodes, r)).collect();
            let Some(out) = merge(&shapes) else { return false };
            let kind = if choice == 0 { Kind::Pass } else { Kind::Delay };
            let mut keys = edge_keys(rng, all_block, true);
            if kind == Kind::Delay {
                let _ = writeln!(keys, "ms = {}", pick(rng, &[0.0, 0.2, 1.0, 2.0]));
            }
            (kind, inputs, vec![out], keys)
        }
        2 => {
            // split: whole frames in; sometimes a passthrough gathers every tile.
            let whole: Vec<_> = ports
                .iter()
                .copied()
                .filter(|&r| shape(nodes, r).count == 1 && shape(nodes, r).image)
                .collect();
            if whole.is_empty() {
                return false;
            }
            let a = *pick(rng, &whole);
            let (w, h) = nodes[a.0].size;
            let rows = rng.random_range(1..=h.min(2));
            let cols = rng.random_range(1..=w.min(2));
            let n = rows * cols;
            let m = shape(nodes, a).mult;
            let outs = (0..n)
                .map(|k| Shape {
                    count: n,
                    mult: m.iter().map(|(&(s, _), &c)| ((s, k), c)).collect(),
                    image: false,
                })
                .collect();
            let mut keys = edge_keys(rng, all_block, true);
            let _ = writeln!(keys, "grid = [{rows}, {cols}]");
            (Kind::Split(n), vec![a], outs, keys)
        }
        3 => {
            // Gather all tiles of a split (as `caption` does before `fuse`).
            let Some(split) = nodes.iter().rposition(|n| matches!(n.kind, Kind::Split(_))) else {
                return false;
            };
            let inputs: Vec<_> = (0..nodes[split].ports.len()).map(|p| (split, p)).collect();
            let shapes: Vec<Shape> = inputs.iter().map(|&r| shape(nodes, r)).collect();
            let Some(out) = merge(&shapes) else { return false };
            (Kind::Pass, inputs, vec![out], edge_keys(rng, all_block, true))
        }
        _ => {
            // A join: evaluate (two whole inputs) or gather (one to three inputs).
            let joinable: Vec<_> = ports.iter().copied().filter(|&r| shape(nodes, r).joinable()).collect();
            if joinable.is_empty() {
                return false;
            }
            let a = *pick(rng, &joinable);
            let stream = shape(nodes, a).streams();
            let same: Vec<_> = joinable
                .iter()
                .copied()
                .filter(|&r| r != a && shape(nodes, r).streams() == stream)
                .collect();
            let evaluate = (choice == 4 || no_gather) && shape(nodes, a).count == 1 && shape(nodes, a).image;
            if no_gather && !evaluate {
                return false;
            }
            let mut inputs = vec![a];
            if evaluate {
                let whole: Vec<_> = same
                    .iter()
                    .copied()
                    .filter(|&r| shape(nodes, r).count == 1 && shape(nodes, r).image)
                    .collect();
                if whole.is_empty() {
                    return false;
                }
                inputs.push(*pick(rng, &whole));
            } else {
                for r in same.into_iter().take(rng.random_range(0..=2)) {
                    inputs.push(r);
                }
            }
            let s = *stream.iter().next().unwrap_or(&0);
            let out = Shape {
                count: 1,
                mult: [((s, 0), 1)].into(),
                image: inputs
                    .iter()
                    .all(|&r| shape(nodes, r).image && shape(nodes, r).count == 1),
            };
            let mut keys = edge_keys(rng, all_block, false);
            let _ = writeln!(keys, "timeout_ms = {}", timeout_ms(rng, all_block));
            (
                if evaluate { Kind::Evaluate } else { Kind::Gather },
                inputs,
                vec![out],
                keys,
            )
        }
    };
    let size = inputs
        .iter()
        .map(|&(i, _)| nodes[i].size)
        .fold((u32::MAX, u32::MAX), |a, b| (a.0.min(b.0), a.1.min(b.1)));
    let size = match kind {
        Kind::Split(_) => (1, 1), // tiles are never split again (they are not whole)
        _ => size,
    };
    for &(i, _) in &inputs {
        nodes[i].consumed = true;
    }
    nodes.push(Node {
        id,
        kind,
        inputs,
        keys,
        ports: out,
        size,
        consumed: false,
    });
    true
}

fn generate(seed: u64, binary: bool) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let all_block = rng.random_bool(0.5);
    // A quarter are stopped as Ctrl-C would, mid-stream: their sources run at 200 fps.
    let interrupt_ms = rng.random_bool(0.25).then(|| rng.random_range(20..150));
    let mut nodes: Vec<Node> = Vec::new();
    for s in 0..rng.random_range(1..=2u32) {
        let (w, h) = (rng.random_range(4..=24), rng.random_range(4..=24));
        let frames = rng.random_range(3..=40);
        nodes.push(Node {
            id: format!("src{s}"),
            kind: Kind::Source,
            inputs: Vec::new(),
            keys: format!(
                "frames = {frames}\nwidth = {w}\nheight = {h}\npattern = \"flat\"\n{}",
                if interrupt_ms.is_some() { "rate = 200\n" } else { "" }
            ),
            ports: vec![Shape {
                count: 1,
                mult: [((s, 0), 1)].into(),
                image: true,
            }],
            size: (w, h),
            consumed: false,
        });
    }
    let transforms = rng.random_range(0..=9);
    let mut tries = 0;
    while nodes.len() < transforms + 2 && tries < 40 {
        tries += 1;
        add_transform(&mut rng, &mut nodes, all_block, binary);
    }
    // Every join gets a tap (block, one replica) to count its emissions.
    let joins: Vec<usize> = (0..nodes.len())
        .filter(|&i| matches!(nodes[i].kind, Kind::Evaluate | Kind::Gather))
        .collect();
    for j in joins {
        nodes[j].consumed = true;
        nodes.push(Node {
            id: format!("tap{j}"),
            kind: Kind::Tally,
            inputs: vec![(j, 0)],
            keys: "mailbox = 8\n".into(),
            ports: Vec::new(),
            size: (0, 0),
            consumed: true,
        });
    }
    // Whatever nobody reads goes to a sink; a sink may read several ports.
    let unread: Vec<(usize, usize)> = (0..nodes.len())
        .filter(|&i| !nodes[i].consumed && !matches!(nodes[i].kind, Kind::Tally | Kind::Null))
        .map(|i| (i, 0))
        .collect();
    for chunk in unread.chunks(2) {
        let tally = rng.random_bool(0.7);
        let mut keys = edge_keys(&mut rng, all_block, !tally);
        if tally {
            keys = keys
                .lines()
                .filter(|l| !l.starts_with("replicas"))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        let id = format!("sink{}", nodes.len());
        nodes.push(Node {
            id,
            kind: if tally { Kind::Tally } else { Kind::Null },
            inputs: chunk.to_vec(),
            keys,
            ports: Vec::new(),
            size: (0, 0),
            consumed: true,
        });
    }
    Case {
        seed,
        nodes,
        all_block,
        interrupt_ms,
        binary,
    }
}

fn registry() -> dataflow_engine::Registry {
    let mut r = crate::support::registry();
    r.register::<Tally>().register::<Gather>();
    r
}

/// How long a graph may run before it counts as hung.
const HANG: Duration = Duration::from_secs(60);

/// Runs the case in this process; Ctrl-C is the stop flag set from a timer.
fn run_in_process(case: &Case, plan: &dataflow_engine::Plan, out: &Path) -> Result<serde_json::Value, String> {
    let (rt, mut opts) = crate::support::in_process(out);
    opts.drain_timeout = Duration::from_secs(10);
    let stop = opts.stop.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let interrupt = case.interrupt_ms.map(Duration::from_millis);
    let watchdog = std::thread::spawn(move || {
        let t0 = Instant::now();
        if let Some(at) = interrupt {
            if done_rx.recv_timeout(at).is_ok() {
                return false;
            }
            stop.set();
        }
        let left = HANG.saturating_sub(t0.elapsed());
        if done_rx.recv_timeout(left).is_ok() {
            return false;
        }
        stop.set();
        true
    });
    let summary: RunSummary = rt
        .block_on(dataflow_engine::run(plan, opts))
        .map_err(|e| format!("run: {e}"))?;
    let _ = done_tx.send(());
    if watchdog.join().unwrap_or(true) {
        return Err(format!("hang: the run did not end within {HANG:?}"));
    }
    serde_json::to_value(&summary).map_err(|e| e.to_string())
}

/// Runs the case through `dataflow run`, with a real SIGINT; returns summary.json and the exit code.
fn run_binary(case: &Case, dir: &Path) -> Result<(serde_json::Value, Option<i32>), String> {
    use std::os::unix::process::ExitStatusExt;
    let graph = dir.join("graph.toml");
    std::fs::write(&graph, case.toml()).map_err(|e| e.to_string())?;
    let stderr = std::fs::File::create(dir.join("stderr.txt")).map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(crate::support::bin())
        .env("RUST_LOG", "warn")
        .args(["run", "--no-progress", "--metrics", "off", "--out"])
        .arg(dir.join("out"))
        .arg(&graph)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut interrupt = case.interrupt_ms.map(|ms| Duration::from_millis(ms + 100));
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if interrupt.is_some_and(|at| t0.elapsed() >= at) {
            interrupt = None;
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
        }
        if t0.elapsed() > HANG {
            let _ = child.kill();
            return Err(format!("hang: `dataflow run` did not end within {HANG:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let err = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
    if err.contains("panicked") {
        return Err(format!("`dataflow run` panicked:\n{err}"));
    }
    if status.signal() == Some(2) {
        // SIGINT before the handler was installed: the default action, nothing to check.
        return Ok((serde_json::Value::Null, None));
    }
    let text = std::fs::read_to_string(dir.join("out/summary.json"))
        .map_err(|e| format!("no summary.json ({e}); exit {status:?}; stderr:\n{err}"))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok((v, status.code()))
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

/// (stage, frame, class) of every line of errors.jsonl.
fn error_lines(out: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(out.join("errors.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            (s("stage"), s("frame"), s("class"))
        })
        .collect()
}

/// What each tally sink saw: (input, stream, seq, part); the binary's csv_sink has no input.
fn seen_by(case: &Case, node: &Node, out: &Path) -> Vec<(usize, u32, u64, u32)> {
    if !case.binary {
        return tallies(&format!("inv-{}-{}", case.seed, node.id))
            .lock()
            .unwrap()
            .clone();
    }
    let path = out.join(format!("{}.csv", node.id));
    if !path.exists() {
        return Vec::new();
    }
    crate::support::read_csv(&path)
        .iter()
        .filter_map(|r| {
            let (st, seq) = r.get("frame")?.split_once(':')?;
            Some((0, st.parse().ok()?, seq.parse().ok()?, r.get("part")?.parse().ok()?))
        })
        .collect()
}

fn check(case: &Case, v: &serde_json::Value, streams: &HashMap<String, u32>, out: &Path) -> Result<(), String> {
    let mut bad = Vec::new();
    if !v.get("fatal").is_none_or(serde_json::Value::is_null) {
        bad.push(format!("fatal error: {}", v["fatal"]));
    }
    let stages: HashMap<String, &serde_json::Value> = v["stages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| (s["id"].as_str().unwrap_or("").to_string(), s))
                .collect()
        })
        .unwrap_or_default();
    let (frames_in, failed) = (num(v, "frames_in"), num(v, "failed"));
    if failed > frames_in {
        bad.push(format!("failed {failed} > frames_in {frames_in}"));
    }
    let errors = error_lines(out);
    if let Some(e) = errors.iter().find(|e| e.2 == "panic") {
        bad.push(format!("a stage panicked: {e:?}"));
    }
    let st = |id: &str| stages.get(id).copied().unwrap_or(&serde_json::Value::Null);
    let nports = |n: &Node| match n.kind {
        Kind::Split(k) => u64::from(k),
        _ => 1,
    };
    for n in &case.nodes {
        let s = st(&n.id);
        let (recv, sent, errs, drop) = (num(s, "received"), num(s, "sent"), num(s, "errors"), num(s, "dropped"));
        if n.kind != Kind::Source {
            let offered: u64 = n
                .inputs
                .iter()
                .map(|&(i, _)| num(st(&case.nodes[i].id), "sent") / nports(&case.nodes[i]))
                .sum();
            if offered != recv + drop {
                bad.push(format!(
                    "{}: producers sent {offered} on its edges, but received {recv} + dropped {drop}",
                    n.id
                ));
            }
        }
        let expect_sent = match n.kind {
            Kind::Source | Kind::Pass | Kind::Delay => Some(recv - errs.min(recv)),
            Kind::Split(k) => Some(u64::from(k) * (recv - errs.min(recv))),
            _ => None,
        };
        if expect_sent.is_some_and(|e| e != sent) {
            bad.push(format!("{}: received {recv}, errors {errs}, but sent {sent}", n.id));
        }
        // Under block only a join drops: the extra copies of a part that reaches it
        // by several paths arrive late.
        let late = if matches!(n.kind, Kind::Evaluate | Kind::Gather) {
            duplicates(case, n, &|s| num(st(&format!("src{s}")), "received"))
        } else {
            0
        };
        if case.all_block && (drop != late || errs > 0) {
            bad.push(format!(
                "{}: under block, dropped {drop} (expected {late} late copies) and failed {errs}",
                n.id
            ));
        }
    }
    for (j, n) in case.nodes.iter().enumerate() {
        if !matches!(n.kind, Kind::Evaluate | Kind::Gather) {
            continue;
        }
        let Some(tap) = case.nodes.iter().find(|t| t.id == format!("tap{j}")) else {
            continue;
        };
        let mut frames: Vec<String> = seen_by(case, tap, out)
            .iter()
            .map(|&(_, s, q, _)| format!("{s}:{q}"))
            .collect();
        let taps = frames.len() as u64;
        frames.extend(errors.iter().filter(|e| e.0 == n.id).map(|e| e.1.clone()));
        let all = frames.len();
        frames.sort();
        frames.dedup();
        if frames.len() != all {
            bad.push(format!("{}: {} emission(s) for {} frame(s)", n.id, all, frames.len()));
        }
        if taps != num(st(&n.id), "sent") {
            bad.push(format!(
                "{}: sent {} but its tap saw {taps}",
                n.id,
                num(st(&n.id), "sent")
            ));
        }
    }
    if case.all_block {
        check_exactly_once(case, &st, streams, out, &mut bad);
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}

/// Copies of parts beyond the first that reach join `n` (refused as late).
fn duplicates(case: &Case, n: &Node, produced: &dyn Fn(u32) -> u64) -> u64 {
    n.inputs
        .iter()
        .flat_map(|&(i, p)| case.nodes[i].ports[p].mult.iter())
        .map(|(&(s, _), &m)| u64::from(m - 1) * produced(s))
        .sum()
}

/// Under `block`: every sink input edge gets each frame of each source `mult` times, in order.
fn check_exactly_once<'a>(
    case: &Case,
    st: &dyn Fn(&str) -> &'a serde_json::Value,
    streams: &HashMap<String, u32>,
    out: &Path,
    bad: &mut Vec<String>,
) {
    // The generator numbers streams by source (`src<s>`); the plan numbers them its own way.
    let real = |s: u32| streams.get(&format!("src{s}")).copied().unwrap_or(u32::MAX);
    let produced: HashMap<u32, u64> = streams.iter().map(|(id, s)| (*s, num(st(id), "received"))).collect();
    for n in case.nodes.iter().filter(|n| n.kind == Kind::Tally) {
        let seen = seen_by(case, n, out);
        // Expected copies per (input, stream, part); the binary's csv_sink cannot tell inputs apart.
        let mut want: BTreeMap<(usize, u32, u32), u32> = BTreeMap::new();
        for (k, &(i, p)) in n.inputs.iter().enumerate() {
            let input = if case.binary { 0 } else { k };
            for (&(s, part), &m) in &case.nodes[i].ports[p].mult {
                *want.entry((input, real(s), part)).or_default() += m;
            }
        }
        let mut got: BTreeMap<(usize, u32, u32), Vec<u64>> = BTreeMap::new();
        for &(input, s, seq, part) in &seen {
            got.entry((input, s, part)).or_default().push(seq);
        }
        for (key, m) in &want {
            let seqs = got.remove(key).unwrap_or_default();
            let mut count: BTreeMap<u64, u32> = BTreeMap::new();
            for q in &seqs {
                *count.entry(*q).or_default() += 1;
            }
            let total = produced.get(&key.1).copied().unwrap_or(0);
            let wrong: Vec<_> = (0..total).filter(|q| count.remove(q).unwrap_or(0) != *m).collect();
            if !wrong.is_empty() || !count.is_empty() {
                bad.push(format!(
                    "{} (input, stream, part) {key:?}: expected each of {total} frames {m} time(s); wrong for {wrong:?}, unexpected {count:?}",
                    n.id
                ));
            }
            if *m == 1 && !case.binary && seqs.windows(2).any(|w| w[0] > w[1]) {
                bad.push(format!("{} {key:?}: out of order: {seqs:?}", n.id));
            }
        }
        if !got.is_empty() {
            bad.push(format!(
                "{}: messages from nowhere: {:?}",
                n.id,
                got.keys().collect::<Vec<_>>()
            ));
        }
    }
}

/// The exit code `dataflow run` owes this summary.
fn expected_exit(v: &serde_json::Value) -> i32 {
    let failed = num(v, "failed") > 0 || !v.get("fatal").is_none_or(serde_json::Value::is_null);
    if v.get("unwritten")
        .and_then(|u| u.as_array())
        .is_some_and(|u| !u.is_empty())
    {
        3
    } else if failed {
        2
    } else if v.get("ctrl_c").and_then(serde_json::Value::as_bool).unwrap_or(false) {
        130
    } else {
        0
    }
}

/// Generates, runs and checks one graph; the error says what broke, with the graph.
fn run_case(seed: u64) -> Result<(), String> {
    let case = generate(seed, seed.is_multiple_of(5));
    let text = case.toml();
    let fail = |what: String| format!("seed {seed}: {what}\n--- graph ---\n{text}");
    let src = GraphSource::from_text(Path::new("inv.toml"), text.clone(), &[]).map_err(|d| fail(d.to_string()))?;
    let plan =
        dataflow_engine::plan(&src, &registry()).map_err(|d| fail(format!("generated an invalid graph: {d}")))?;
    let streams: HashMap<String, u32> = plan
        .stages
        .iter()
        .filter(|s| s.inputs.is_empty())
        .map(|s| (s.id.clone(), s.stream))
        .collect();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (summary, out) = if case.binary {
        let (v, code) = run_binary(&case, dir.path()).map_err(&fail)?;
        if v.is_null() {
            return Ok(());
        }
        let want = expected_exit(&v);
        if code != Some(want) {
            return Err(fail(format!("exit code {code:?}, expected {want} for summary {v}")));
        }
        (v, dir.path().join("out"))
    } else {
        (
            run_in_process(&case, &plan, dir.path()).map_err(&fail)?,
            dir.path().to_path_buf(),
        )
    };
    check(&case, &summary, &streams, &out).map_err(|e| fail(format!("{e}\n--- summary ---\n{summary}")))
}

fn check_seeds(first: u64, count: u64) {
    let t0 = Instant::now();
    let mut failures = Vec::new();
    for seed in first..first + count {
        let r = std::panic::catch_unwind(|| run_case(seed))
            .unwrap_or_else(|_| Err(format!("seed {seed}: the check panicked")));
        if let Err(e) = r {
            eprintln!("FAILED {e}\n");
            failures.push(seed);
        }
    }
    println!(
        "{count} random graph(s) from seed {first} in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "invariants broken for seed(s) {failures:?}; replay one with\n  INVARIANT_SEED=<seed> INVARIANT_CASES=1 cargo test --release --test it invariants::random_graphs_long -- --ignored --nocapture"
    );
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn random_graphs_hold_the_invariants() {
    check_seeds(0, env_u64("INVARIANT_QUICK_CASES", 500));
}

#[test]
#[ignore = "long: INVARIANT_CASES graphs from INVARIANT_SEED (cargo test --release -- --ignored)"]
fn random_graphs_long() {
    check_seeds(env_u64("INVARIANT_SEED", 1000), env_u64("INVARIANT_CASES", 500));
}

/// Validates and runs graph text in this process; a run still going after `limit` is
/// stopped, and the test fails as hung (instead of waiting for a long join timeout).
pub fn run_text_within(text: &str, out: &Path, limit: Duration) -> RunSummary {
    let src = GraphSource::from_text(Path::new("test.toml"), text.to_string(), &[]).unwrap();
    let plan = dataflow_engine::plan(&src, &registry()).unwrap_or_else(|d| panic!("{d}"));
    let (rt, opts) = crate::support::in_process(out);
    let stop = opts.stop.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let hung = done_rx.recv_timeout(limit).is_err();
        if hung {
            stop.set();
        }
        hung
    });
    let s = rt.block_on(dataflow_engine::run(&plan, opts)).unwrap();
    let _ = done_tx.send(());
    assert!(!watchdog.join().unwrap(), "the run was still going after {limit:?}");
    s
}
