//! One edge across two processes over zenoh on loopback, against the same edge inside
//! one process: throughput and added latency for 1 KiB and 6 MiB messages.
//!
//! ```sh
//! CARGO_TARGET_DIR=... cargo bench -p dataflow-actors --bench zenoh_edge
//! ```
//!
//! The graph is `synthetic` (a `payload` of N bytes) → `stamp` (a sink recording when
//! each message arrives and how old it is). For the cross-process runs this program
//! starts itself again as the receiver (`ZENOH_EDGE_ROLE=rx`) and runs the
//! transmitter's part here; the two processes share the clock, so a message's age at
//! the sink (arrival − capture time) is its latency.
//! - Throughput: as fast as the source goes, messages per second between the first
//!   and the last arrival.
//! - Latency: at a low rate (no queueing), median and 99th percentile of the ages.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use dataflow_actors::zenoh_link::ZenohBridges;
use dataflow_engine::{
    BuildContext, Built, GraphSource, Input, Outputs, Ports, Registry, Role, RunOptions, Stage, StageError, StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StampConfig {
    /// Where to write `first_s last_s n` and the ages (seconds), one per line.
    path: PathBuf,
}

struct Stamp;
struct StampRun {
    path: PathBuf,
    t0: Instant,
    arrivals: Vec<f64>,
    ages: Vec<f64>,
}

impl Stage for StampRun {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        if let Input::Message { msg, .. } = input {
            self.arrivals.push(self.t0.elapsed().as_secs_f64());
            let age = SystemTime::now().duration_since(msg.captured).unwrap_or_default();
            self.ages.push(age.as_secs_f64());
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        let mut text = String::new();
        for (a, g) in self.arrivals.iter().zip(&self.ages) {
            text.push_str(&format!("{a} {g}\n"));
        }
        std::fs::write(&self.path, text).map_err(|e| StageError::io(e.to_string()))
    }
}

impl StageKind for Stamp {
    type Config = StampConfig;
    const NAME: &'static str = "stamp";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "bench sink recording arrival times and ages";
    fn ports(_: &Self::Config) -> Ports {
        Ports::default()
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(StampRun {
            path: c.path.clone(),
            t0: Instant::now(),
            arrivals: Vec::new(),
            ages: Vec::new(),
        })))
    }
}

fn registry() -> Registry {
    let mut r = dataflow_actors::registry();
    r.register::<Stamp>();
    r
}

fn graph(dir: &Path, port: u16, bytes: usize, frames: u64, rate: Option<f64>, mailbox: usize) -> PathBuf {
    let rate = rate.map(|r| format!("rate = {r}\n")).unwrap_or_default();
    let text = format!(
        r#"[graph]
name = "zenoh-edge-{port}"
[machines.tx]
listen = ["tcp/127.0.0.1:{port}"]
[machines.rx]
connect = ["tcp/127.0.0.1:{port}"]
[stage.src]
kind = "synthetic"
machine = "tx"
frames = {frames}
payload_bytes = {bytes}
{rate}
[stage.stamp]
kind = "stamp"
machine = "rx"
inputs = ["src"]
mailbox = {mailbox}
path = "{out}"
"#,
        out = dir.join("stamps.txt").display()
    );
    let g = dir.join(format!("g{port}.toml"));
    std::fs::write(&g, text).unwrap();
    g
}

/// Runs the graph's part for `machine` (all of it when `None`) in this process.
fn run_part(g: &Path, machine: Option<&str>, out: &Path) {
    let reg = registry();
    let src = GraphSource::load(g, &[]).unwrap();
    let plan = dataflow_engine::plan(&src, &reg).unwrap_or_else(|d| panic!("{d}"));
    let mut opts = RunOptions::new(out.to_path_buf());
    opts.progress = false;
    let (plan, bridges) = match machine {
        None => (plan, None),
        Some(m) => {
            let b = ZenohBridges::open(&plan, m, opts.stop.clone()).unwrap();
            (plan.partition(m, &b).unwrap(), Some(b))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(dataflow_engine::run(&plan, opts)).unwrap();
    assert!(!s.failed(), "{}", s.render());
    if let Some(b) = bridges {
        b.close(Duration::from_secs(2));
    }
}

fn stamps(dir: &Path) -> (Vec<f64>, Vec<f64>) {
    let text = std::fs::read_to_string(dir.join("stamps.txt")).unwrap();
    text.lines()
        .map(|l| {
            let mut it = l.split(' ').map(|v| v.parse::<f64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .unzip()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the graph once, whole or split over two processes; returns the stamps.
fn measure(bytes: usize, frames: u64, rate: Option<f64>, mailbox: usize, split: bool) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let g = graph(dir.path(), free_port(), bytes, frames, rate, mailbox);
    if split {
        let mut rx = std::process::Command::new(std::env::current_exe().unwrap())
            .env("ZENOH_EDGE_ROLE", "rx")
            .env("ZENOH_EDGE_GRAPH", &g)
            .env("ZENOH_EDGE_OUT", dir.path().join("rx"))
            .spawn()
            .unwrap();
        run_part(&g, Some("tx"), &dir.path().join("tx"));
        assert!(rx.wait().unwrap().success());
    } else {
        run_part(&g, None, &dir.path().join("all"));
    }
    stamps(dir.path())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::var("ZENOH_EDGE_ROLE").as_deref() == Ok("rx") {
        let g = PathBuf::from(std::env::var("ZENOH_EDGE_GRAPH").unwrap());
        let out = PathBuf::from(std::env::var("ZENOH_EDGE_OUT").unwrap());
        run_part(&g, Some("rx"), &out);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list; there is none.
    }
    println!("| message | edge | throughput (msg/s) | MB/s | latency p50 (ms) | latency p99 (ms) |");
    println!("|---|---|---|---|---|---|");
    // (bytes, frames for throughput, mailbox, latency frames, latency rate)
    let cases = [
        (1024usize, 20_000u64, 4usize, 400u64, 200.0),
        (6 << 20, 200, 4, 60, 10.0),
    ];
    for (bytes, frames, mailbox, lat_frames, lat_rate) in cases {
        for split in [false, true] {
            let (arrivals, _) = measure(bytes, frames, None, mailbox, split);
            // Skip the first tenth (start-up, the receiver's hello).
            let skip = arrivals.len() / 10;
            let span = arrivals[arrivals.len() - 1] - arrivals[skip];
            let rate = (arrivals.len() - 1 - skip) as f64 / span;
            let (_, mut ages) = measure(bytes, lat_frames, Some(lat_rate), mailbox, split);
            let skip = ages.len() / 10;
            let ages = &mut ages[skip..];
            println!(
                "| {} | {} | {:.0} | {:.1} | {:.3} | {:.3} |",
                if bytes == 1024 { "1 KiB" } else { "6 MiB" },
                if split {
                    "two processes, zenoh over loopback TCP"
                } else {
                    "one process"
                },
                rate,
                rate * bytes as f64 / 1e6,
                pct(ages, 0.5) * 1e3,
                pct(ages, 0.99) * 1e3
            );
        }
    }
}
