//! Engine overhead: messages per second through `synthetic -> 8 × passthrough -> sink`
//! next to a plain chain of tokio `mpsc::channel(4)` tasks making the same hops (the
//! floor of what the runtime can cost), and next to the bare ractor chain of DESIGN.md §3
//! (the engine's own mechanism, actors + a semaphore per edge, without its bookkeeping).
//!
//! `cargo bench --bench engine` prints one table. All chains run in this process on
//! the same multi-thread tokio runtime (one worker per core, as `dataflow run` builds
//! it), alternating, `BENCH_REPS` times each (default 5); the table shows medians and
//! the median of the per-run ratios (`e/t` = engine ÷ tokio, `e/r` = engine ÷ ractor).
//!
//! - Hops: 9 in every chain (source → p1 → … → p8 → sink; producer → f1 → … → f8 → consumer).
//! - Rate: messages ÷ (last arrival at the sink − birth of the first message).
//! - Latency per hop: each message's age at the sink (`Message::born` for the engine,
//!   a send timestamp for the tokio chain) ÷ 9. "saturated" is with the source
//!   running flat out (so mostly queueing: 9 edges × 4 places in flight); "paced" is
//!   with the source limited to `BENCH_PACED_RATE` msg/s (default 2000), i.e. an
//!   empty pipeline, which is the cost of one hop itself.
//! - Places: the engine's `mailbox = 4` bounds the messages *alive* on an edge (queued,
//!   in work, or waiting for room downstream: a place is freed once the consumer has sent
//!   its outputs on), while `channel(4)` bounds only the queue; each tokio task holds one
//!   more message in hand while its `send` waits, so the tokio chain keeps 5 messages
//!   alive per hop. The rows "5 places" give the engine (and the bare ractor chain) 5
//!   places per edge: the same number alive, like for like (BENCHMARKS.md §20.3).
//! - Sharing: the sink checks every payload's pointer against the first one.
//!
//! Environment: `BENCH_REPS`, `BENCH_SMALL_MSGS` (default 100000), `BENCH_LARGE_MSGS`
//! (default 50000), `BENCH_PACED_MSGS` (default 4000), `BENCH_PACED_RATE`,
//! `BENCH_PROM=0` to skip the run with a Prometheus recorder installed,
//! `BENCH_ONLY=engine|tokio|ractor` to run one chain (for `perf record`).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dataflow_engine::{
    BuildContext, Built, GraphSource, Input, Outputs, Ports, Role, RunOptions, Stage, StageError, StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;

const STAGES: usize = 8;
/// Edges a message crosses: source → 8 stages → sink.
const HOPS: usize = STAGES + 1;
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// A sink kind that records each message's age, defined here so the engine is
// measured with its own stage API and nothing is added to the product.

/// What the bench sink saw in one run.
#[derive(Default, Clone)]
struct Seen {
    ages_ns: Vec<u64>,
    first_born: Option<Instant>,
    last_arrival: Option<Instant>,
    payload_ptr: Option<usize>,
    payload_len: usize,
    copies: u64,
}

fn seen() -> &'static Mutex<Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    SEEN.get_or_init(|| Mutex::new(Seen::default()))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LatencySinkConfig {}

struct LatencySink;

struct LatencyRun(Seen);

impl Stage for LatencyRun {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        if let Input::Message { msg, .. } = input {
            let now = Instant::now();
            let s = &mut self.0;
            s.ages_ns.push(now.duration_since(msg.born).as_nanos() as u64);
            s.first_born.get_or_insert(msg.born);
            s.last_arrival = Some(now);
            if let Some(b) = msg.fields.bytes("payload") {
                let p = b.as_ptr() as usize;
                s.payload_len = b.len();
                if *s.payload_ptr.get_or_insert(p) != p {
                    s.copies += 1;
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        *seen().lock().unwrap() = std::mem::take(&mut self.0);
        Ok(())
    }
}

impl StageKind for LatencySink {
    type Config = LatencySinkConfig;
    const NAME: &'static str = "latency_sink";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "Bench only: records each message's age at arrival.";

    fn ports(_: &Self::Config) -> Ports {
        Ports::default()
    }

    fn build(_: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(LatencyRun(Seen {
            ages_ns: Vec::with_capacity(1 << 17),
            ..Seen::default()
        }))))
    }
}

// ---------------------------------------------------------------------------

/// One measured run of either chain.
struct Sample {
    rate: f64,
    p50_hop_us: f64,
    p99_hop_us: f64,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn sample(mut ages: Vec<u64>, n: usize, elapsed: Duration) -> Sample {
    assert_eq!(ages.len(), n, "the sink saw {} of {n} messages", ages.len());
    ages.sort_unstable();
    Sample {
        rate: n as f64 / elapsed.as_secs_f64(),
        p50_hop_us: percentile(&ages, 0.50) as f64 / 1e3 / HOPS as f64,
        p99_hop_us: percentile(&ages, 0.99) as f64 / 1e3 / HOPS as f64,
    }
}

fn engine_graph(payload: usize, frames: usize, rate: Option<f64>, places: usize) -> String {
    let mut g =
        format!("[graph]\nname = \"bench-engine\"\n\n[defaults]\nmailbox = {places}\nwhen_full = \"block\"\n\n");
    g.push_str(&format!(
        "[stage.source]\nkind = \"synthetic\"\npayload_bytes = {payload}\nframes = {frames}\n"
    ));
    if let Some(r) = rate {
        g.push_str(&format!("rate = {r:.1}\n"));
    }
    let mut prev = "source".to_string();
    for k in 1..=STAGES {
        g.push_str(&format!(
            "\n[stage.p{k}]\nkind = \"passthrough\"\ninputs = [\"{prev}\"]\n"
        ));
        prev = format!("p{k}");
    }
    g.push_str(&format!(
        "\n[stage.sink]\nkind = \"latency_sink\"\ninputs = [\"{prev}\"]\n"
    ));
    g
}

async fn run_engine(payload: usize, n: usize, rate: Option<f64>, places: usize, out: &Path) -> Sample {
    let mut registry = dataflow_actors::registry();
    registry.register::<LatencySink>();
    let src = GraphSource::from_text(
        Path::new("bench-engine.toml"),
        engine_graph(payload, n, rate, places),
        &[],
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let plan = dataflow_engine::plan(&src, &registry).unwrap_or_else(|d| panic!("{d}"));
    let mut opts = RunOptions::new(out.to_path_buf());
    opts.progress = false;
    let summary = dataflow_engine::run(&plan, opts).await.expect("engine run");
    assert!(!summary.failed(), "{}", summary.render());
    let s = std::mem::take(&mut *seen().lock().unwrap());
    assert_eq!(s.copies, 0, "payloads were copied on the way");
    assert_eq!(s.payload_len, payload);
    let elapsed = s.last_arrival.unwrap() - s.first_born.unwrap();
    sample(s.ages_ns, n, elapsed)
}

/// The floor: 9 bounded(4) tokio channels, 8 forwarding tasks, a `Bytes` and its send time per message.
async fn run_tokio(payload: usize, n: usize, rate: Option<f64>) -> Sample {
    type Item = (Bytes, Instant);
    let (tx0, mut rx) = tokio::sync::mpsc::channel::<Item>(4);
    for _ in 0..STAGES {
        let (tx, next) = tokio::sync::mpsc::channel::<Item>(4);
        let mut input = std::mem::replace(&mut rx, next);
        tokio::spawn(async move {
            while let Some(m) = input.recv().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
    let consumer = tokio::spawn(async move {
        let mut ages = Vec::with_capacity(n);
        let mut first_born = None;
        let mut last = None;
        let mut ptr = None;
        let mut copies = 0u64;
        while let Some((b, born)) = rx.recv().await {
            let now = Instant::now();
            ages.push(now.duration_since(born).as_nanos() as u64);
            first_born.get_or_insert(born);
            last = Some(now);
            let p = b.as_ptr() as usize;
            if *ptr.get_or_insert(p) != p {
                copies += 1;
            }
        }
        assert_eq!(copies, 0);
        (ages, last.unwrap() - first_born.unwrap())
    });
    let payload = Bytes::from(vec![0xA5u8; payload]);
    // The producer is a thread, like the engine's source thread.
    let handle = tokio::runtime::Handle::current();
    let producer = std::thread::spawn(move || {
        let period = rate.map(|r| Duration::from_secs_f64(1.0 / r));
        let mut next_at = Instant::now();
        for _ in 0..n {
            if let Some(p) = period {
                let now = Instant::now();
                if next_at > now {
                    std::thread::sleep(next_at - now);
                }
                next_at += p;
            }
            if handle.block_on(tx0.send((payload.clone(), Instant::now()))).is_err() {
                break;
            }
        }
    });
    let (ages, elapsed) = consumer.await.unwrap();
    producer.join().unwrap();
    sample(ages, n, elapsed)
}

// ---------------------------------------------------------------------------
// The bare actor chain of DESIGN.md §3: 8 ractor actors forwarding a shared `Bytes`
// under a 4-permit semaphore per edge (the permit travels with the message and is
// dropped once the next hop has admitted it), i.e. the engine's mechanism without its
// bookkeeping (tickets, stats, metrics, catch_unwind, dispatch lock, Outputs).

type BareMsg = (Bytes, Instant, tokio::sync::OwnedSemaphorePermit);

struct BareFwd;

struct BareFwdArgs {
    next: ractor::ActorRef<BareMsg>,
    next_sem: Arc<tokio::sync::Semaphore>,
}

impl ractor::Actor for BareFwd {
    type Msg = BareMsg;
    type State = BareFwdArgs;
    type Arguments = BareFwdArgs;

    async fn pre_start(
        &self,
        _me: ractor::ActorRef<BareMsg>,
        a: BareFwdArgs,
    ) -> Result<BareFwdArgs, ractor::ActorProcessingErr> {
        Ok(a)
    }

    async fn handle(
        &self,
        _me: ractor::ActorRef<BareMsg>,
        (b, born, permit): BareMsg,
        s: &mut BareFwdArgs,
    ) -> Result<(), ractor::ActorProcessingErr> {
        let p = s.next_sem.clone().acquire_owned().await?;
        let _ = s.next.send_message((b, born, p));
        drop(permit);
        Ok(())
    }
}

struct BareSink;

struct BareSinkState {
    n: usize,
    seen: Seen,
    done: Option<tokio::sync::oneshot::Sender<Seen>>,
}

impl ractor::Actor for BareSink {
    type Msg = BareMsg;
    type State = BareSinkState;
    type Arguments = (usize, tokio::sync::oneshot::Sender<Seen>);

    async fn pre_start(
        &self,
        _me: ractor::ActorRef<BareMsg>,
        (n, done): (usize, tokio::sync::oneshot::Sender<Seen>),
    ) -> Result<BareSinkState, ractor::ActorProcessingErr> {
        Ok(BareSinkState {
            n,
            seen: Seen {
                ages_ns: Vec::with_capacity(n),
                ..Seen::default()
            },
            done: Some(done),
        })
    }

    async fn handle(
        &self,
        _me: ractor::ActorRef<BareMsg>,
        (b, born, permit): BareMsg,
        st: &mut BareSinkState,
    ) -> Result<(), ractor::ActorProcessingErr> {
        let now = Instant::now();
        let s = &mut st.seen;
        s.ages_ns.push(now.duration_since(born).as_nanos() as u64);
        s.first_born.get_or_insert(born);
        s.last_arrival = Some(now);
        let p = b.as_ptr() as usize;
        if *s.payload_ptr.get_or_insert(p) != p {
            s.copies += 1;
        }
        drop(permit);
        if s.ages_ns.len() == st.n {
            if let Some(d) = st.done.take() {
                let _ = d.send(std::mem::take(s));
            }
        }
        Ok(())
    }
}

async fn run_ractor(payload: usize, n: usize, rate: Option<f64>, places: usize) -> Sample {
    use ractor::Actor;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (sink, sink_h) = Actor::spawn(None, BareSink, (n, done_tx)).await.unwrap();
    let mut cells = vec![(sink.get_cell(), sink_h)];
    let mut next = sink;
    let mut next_sem = Arc::new(tokio::sync::Semaphore::new(places));
    for _ in 0..STAGES {
        let sem = Arc::new(tokio::sync::Semaphore::new(places));
        let (a, h) = Actor::spawn(None, BareFwd, BareFwdArgs { next, next_sem })
            .await
            .unwrap();
        cells.push((a.get_cell(), h));
        next = a;
        next_sem = sem;
    }
    let payload = Bytes::from(vec![0xA5u8; payload]);
    let handle = tokio::runtime::Handle::current();
    let producer = std::thread::spawn(move || {
        let period = rate.map(|r| Duration::from_secs_f64(1.0 / r));
        let mut next_at = Instant::now();
        for _ in 0..n {
            if let Some(p) = period {
                let now = Instant::now();
                if next_at > now {
                    std::thread::sleep(next_at - now);
                }
                next_at += p;
            }
            let Ok(permit) = handle.block_on(next_sem.clone().acquire_owned()) else {
                break;
            };
            if next.send_message((payload.clone(), Instant::now(), permit)).is_err() {
                break;
            }
        }
    });
    let s = done_rx.await.unwrap();
    producer.join().unwrap();
    for (c, h) in cells {
        c.stop(None);
        let _ = h.await;
    }
    assert_eq!(s.copies, 0);
    let elapsed = s.last_arrival.unwrap() - s.first_born.unwrap();
    sample(s.ages_ns, n, elapsed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[derive(Default)]
struct Row {
    label: String,
    engine: Vec<Sample>,
    tokio: Vec<Sample>,
    ractor: Vec<Sample>,
}

fn med(v: &[Sample], f: fn(&Sample) -> f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    median(v.iter().map(f).collect())
}

fn ratio(a: &[Sample], b: &[Sample]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    median(a.iter().zip(b).map(|(x, y)| x.rate / y.rate).collect())
}

impl Row {
    fn new(label: &str) -> Self {
        Row {
            label: label.into(),
            ..Row::default()
        }
    }

    /// One run of each chain (in the order engine, tokio, bare ractor), as `BENCH_ONLY` allows.
    /// `places`: the engine's mailbox and the bare ractor chain's permits per edge (the
    /// tokio chain is always `channel(4)`).
    async fn rep(&mut self, only: &str, payload: usize, n: usize, rate: Option<f64>, places: usize, out: &Path) {
        if only.is_empty() || only == "engine" {
            self.engine.push(run_engine(payload, n, rate, places, out).await);
        }
        if only.is_empty() || only == "tokio" {
            self.tokio.push(run_tokio(payload, n, rate).await);
        }
        if only.is_empty() || only == "ractor" {
            self.ractor.push(run_ractor(payload, n, rate, places).await);
        }
    }

    fn print(&self) {
        let lat = |v: &[Sample]| format!("{:.1} / {:.1}", med(v, |s| s.p50_hop_us), med(v, |s| s.p99_hop_us));
        println!(
            "| {:<26} | {:>9.0} | {:>9.0} | {:>5.2} | {:>9.0} | {:>5.2} | {:>13} | {:>13} | {:>13} |",
            self.label,
            med(&self.engine, |s| s.rate),
            med(&self.tokio, |s| s.rate),
            ratio(&self.engine, &self.tokio),
            med(&self.ractor, |s| s.rate),
            ratio(&self.engine, &self.ractor),
            lat(&self.engine),
            lat(&self.tokio),
            lat(&self.ractor),
        );
        let rates = |v: &[Sample]| v.iter().map(|s| format!("{:.0}", s.rate)).collect::<Vec<_>>().join(" ");
        eprintln!(
            "  {}: msg/s per run: engine [{}] tokio [{}] ractor [{}]",
            self.label,
            rates(&self.engine),
            rates(&self.tokio),
            rates(&self.ractor)
        );
    }
}

/// The table's header and one line per row.
fn print_table(rows: &[Row]) {
    println!(
        "| {:<26} | {:>9} | {:>9} | {:>5} | {:>9} | {:>5} | {:>13} | {:>13} | {:>13} |",
        "case", "engine/s", "tokio/s", "e/t", "ractor/s", "e/r", "engine hop µs", "tokio hop µs", "ractor hop µs"
    );
    println!(
        "| {:<26} | {:>9} | {:>9} | {:>5} | {:>9} | {:>5} | {:>13} | {:>13} | {:>13} |",
        "", "", "", "", "", "", "p50 / p99", "p50 / p99", "p50 / p99"
    );
    println!(
        "|{:-<28}|{:->11}|{:->11}|{:->7}|{:->11}|{:->7}|{:->15}|{:->15}|{:->15}|",
        "", "", "", "", "", "", "", "", ""
    );
    for r in rows {
        r.print();
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let reps = env_usize("BENCH_REPS", 5).max(1);
    let small_n = env_usize("BENCH_SMALL_MSGS", 100_000);
    let large_n = env_usize("BENCH_LARGE_MSGS", 50_000);
    let paced_n = env_usize("BENCH_PACED_MSGS", 4_000);
    let paced_rate = env_usize("BENCH_PACED_RATE", 2_000) as f64;
    let prom = std::env::var("BENCH_PROM").map(|v| v != "0").unwrap_or(true);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = std::env::temp_dir().join(format!("dataflow-bench-engine-{}", std::process::id()));
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_at_start: Vec<&str> = load.split_whitespace().take(3).collect();

    let mut rows = Vec::new();
    // The last two rows give the engine and the ractor chain 5 places per edge: as many
    // messages alive per hop as the tokio chain holds (4 in its channel, 1 in the hand of
    // the task awaiting its `send`), where a place of the engine's holds its message
    // until the consumer has sent its outputs on.
    let cases: [(String, usize, usize, Option<f64>, usize); 5] = [
        ("1 KiB, saturated".into(), KIB, small_n, None, 4),
        ("6 MiB, saturated".into(), 6 * MIB, large_n, None, 4),
        (
            format!("1 KiB, paced {paced_rate:.0}/s"),
            KIB,
            paced_n,
            Some(paced_rate),
            4,
        ),
        ("1 KiB, sat., 5 places".into(), KIB, small_n, None, 5),
        ("6 MiB, sat., 5 places".into(), 6 * MIB, large_n, None, 5),
    ];
    rt.block_on(async {
        // One warm-up of each, unmeasured (page faults, thread start-up).
        Row::new("warm-up").rep(&only, KIB, 10_000, None, 4, &out).await;
        for (label, payload, n, rate, places) in &cases {
            let reps = if rate.is_some() { reps.min(3) } else { reps };
            let mut row = Row::new(label);
            for _ in 0..reps {
                row.rep(&only, *payload, *n, *rate, *places, &out).await;
            }
            rows.push(row);
        }
        if prom {
            // Same 1 KiB chain with the Prometheus recorder that `dataflow run` would install,
            // to price the engine's per-message metrics. Installed last: it is global.
            let handle = dataflow_monitoring::install_recorder().expect("recorder");
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let upkeep = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        handle.run_upkeep();
                        std::thread::sleep(Duration::from_millis(500));
                    }
                })
            };
            for (label, places) in [("1 KiB, sat., + Prometheus", 4), ("1 KiB, 5 places, + Prom.", 5)] {
                let mut row = Row::new(label);
                for _ in 0..reps {
                    row.rep(&only, KIB, small_n, None, places, &out).await;
                }
                rows.push(row);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = upkeep.join();
        }
    });
    let _ = std::fs::remove_dir_all(&out);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_at_end: Vec<&str> = load.split_whitespace().take(3).collect();

    println!();
    println!(
        "engine: synthetic -> {STAGES} x passthrough -> sink ({HOPS} hops), mailbox 4 (\"5 places\": 5), block | \
         tokio: {HOPS} x mpsc::channel(4), 5 messages alive per hop | ractor: bare chain, {STAGES} actors + sink, \
         4-permit (5) semaphore per edge"
    );
    println!(
        "{workers} tokio workers; median of {reps} runs ({small_n} msgs at 1 KiB, {large_n} at 6 MiB; paced: \
         min(reps, 3) x {paced_n}); load average at start {load_at_start:?}, at end {load_at_end:?}"
    );
    println!();
    print_table(&rows);
    println!();
    println!("payloads: every message at every sink pointed at the source's buffer (0 copies), 1 KiB and 6 MiB");
}
