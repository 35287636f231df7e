//! One graph across machines over zenoh (DESIGN §7): placement errors, two `dataflow`
//! processes on loopback and in two network namespaces, a receiver killed and
//! restarted mid-run, Ctrl-C across machines, and Multi-SC split into transmitter and
//! receiver giving the single-process outputs.
//!
//! Every test picks free loopback ports, disables multicast scouting (the bridges
//! always do) and passes `--metrics off`, so tests do not see each other.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{bin, diagnostics, root};

/// A loopback port nobody listens on (now).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `dataflow run` child whose stderr goes to a file (read with [`Proc::log`]).
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
    pub(crate) what: String,
}

impl Proc {
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the exit code, killing the process (and failing) after `limit`.
    pub(crate) fn wait(&mut self, limit: Duration) -> i32 {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                println!("--- {} exited {:?}:\n{}", self.what, s.code(), self.log());
                return s.code().unwrap_or(-1);
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} did not end within {limit:?}; its log:\n{}", self.what, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `text`.
    pub(crate) fn wait_for_log(&mut self, text: &str, limit: Duration) {
        let t0 = Instant::now();
        while !self.log().contains(text) {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited {:?} before logging {text:?}:\n{}",
                    self.what,
                    s.code(),
                    self.log()
                );
            }
            assert!(
                t0.elapsed() < limit,
                "{} did not log {text:?} within {limit:?}:\n{}",
                self.what,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.child.id());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `dataflow run <graph> --machine <machine> --out <out> --no-progress --metrics off <args>`,
/// optionally inside network namespace `netns`.
pub(crate) fn start(graph: &Path, machine: Option<&str>, out: &Path, args: &[&str], netns: Option<&str>) -> Proc {
    let log = out.with_extension(format!("{}.log", machine.unwrap_or("all")));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.current_dir(root())
        .env("RUST_LOG", "warn,dataflow_actors::zenoh_link=info")
        .arg("run")
        .arg(graph)
        .arg("--out")
        .arg(out)
        .args(["--no-progress", "--metrics", "off"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(m) = machine {
        cmd.args(["--machine", m]);
    }
    Proc {
        child: cmd.spawn().unwrap(),
        log,
        what: format!("{} --machine {}", graph.display(), machine.unwrap_or("(none)")),
    }
}

/// Files in `dir` (names only), or none when it does not exist.
pub(crate) fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    serde_json::from_str(&text).unwrap()
}

/// `(received, dropped)` of stage `id` in a summary.
pub(crate) fn counts(s: &serde_json::Value, id: &str) -> (u64, u64) {
    let st = s["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["id"] == id)
        .unwrap_or_else(|| panic!("no stage {id} in {s}"));
    (st["received"].as_u64().unwrap(), st["dropped"].as_u64().unwrap())
}

/// A transmitter `tx` (synthetic frames through a passthrough) and a receiver `rx`
/// (a PNG per frame), `tx` listening on `port` and `rx` connecting to it.
fn small_graph(dir: &Path, port: u16, frames: u64, rate: Option<f64>, when_full: &str) -> PathBuf {
    let rate = rate.map(|r| format!("rate = {r}\n")).unwrap_or_default();
    let text = format!(
        r#"[graph]
name = "loop-{port}"
seed = 11

[machines.tx]
listen = ["tcp/127.0.0.1:{port}"]

[machines.rx]
connect = ["tcp/127.0.0.1:{port}"]

[stage.src]
kind = "synthetic"
machine = "tx"
frames = {frames}
width = 40
height = 30
pattern = "noise"
{rate}
[stage.pass]
kind = "passthrough"
machine = "tx"
inputs = ["src"]

[stage.sink]
kind = "image_sink"
machine = "rx"
inputs = ["pass"]
field = "image"
mailbox = 4
when_full = "{when_full}"
"#
    );
    let g = dir.join(format!("loop-{port}.toml"));
    std::fs::write(&g, text).unwrap();
    g
}

fn same_files(a: &Path, b: &Path) {
    let (fa, fb) = (files(a), files(b));
    assert_eq!(fa, fb, "{} and {} hold different files", a.display(), b.display());
    for f in &fa {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn placement_errors_name_the_stage_and_the_machine() {
    let base = r#"
[machines.server]
listen = ["tcp/127.0.0.1:1"]
[machines.camera]
connect = ["tcp/127.0.0.1:1"]
[stage.src]
kind = "synthetic"
frames = 1
machine = "camra"
[stage.sink]
kind = "null_sink"
inputs = ["src"]
"#;
    let all = diagnostics(base).join("\n");
    println!("{all}");
    assert!(
        all.contains("test.toml:9:1: error: stage `src`: machine `camra` is not described in [machines]"),
        "{all}"
    );
    assert!(all.contains("did you mean `camera`?"), "{all}");
    assert!(
        all.contains("stage `sink`: stage has no `machine` while other stages are placed"),
        "{all}"
    );
    let bad_key = "[machines.a]\nlisten = \"tcp/1.2.3.4:5\"\nlisten_on = 3\n[stage.src]\nkind = \"synthetic\"\n[stage.sink]\nkind = \"null_sink\"\ninputs = [\"src\"]\n";
    let all = diagnostics(bad_key).join("\n");
    assert!(all.contains("test.toml:") && all.contains("machine `a`:"), "{all}");

    // The command line: an unknown machine, and an endpoint zenoh cannot use.
    let dir = tempfile::tempdir().unwrap();
    let g = small_graph(dir.path(), 1, 1, None, "block");
    let o = Command::new(bin())
        .args(["run", "--metrics", "off", "--no-progress", "--machine", "rxx"])
        .arg(&g)
        .arg("--out")
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("machine `rxx` is not in the graph's [machines] (rx, tx); did you mean `rx`?"),
        "{err}"
    );
    let text = std::fs::read_to_string(&g)
        .unwrap()
        .replace("connect = [\"tcp/127.0.0.1:1\"]", "connect = [\"tcp/127.0.0.1\"]");
    std::fs::write(&g, text).unwrap();
    for args in [vec!["validate"], vec!["run", "--metrics", "off", "--machine", "rx"]] {
        let o = Command::new(bin()).args(&args).arg(&g).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("[machines.rx]: endpoint `tcp/127.0.0.1` is not an endpoint: write protocol/host:port"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn two_processes_on_loopback_deliver_every_frame_like_one_process_in_either_start_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let g = small_graph(dir.path(), port, 40, None, "block");
    let single = dir.path().join("single");
    assert_eq!(start(&g, None, &single, &[], None).wait(Duration::from_secs(60)), 0);
    assert_eq!(files(&single.join("sink")).len(), 40);

    for (k, receiver_first) in [true, false].into_iter().enumerate() {
        let (tx_out, rx_out) = (dir.path().join(format!("tx{k}")), dir.path().join(format!("rx{k}")));
        let (mut first, second_machine, second_out) = if receiver_first {
            (start(&g, Some("rx"), &rx_out, &[], None), "tx", &tx_out)
        } else {
            (start(&g, Some("tx"), &tx_out, &[], None), "rx", &rx_out)
        };
        // The one that started first says what it waits for.
        let waiting = if receiver_first {
            "waiting for transmitter on dataflow/"
        } else {
            "waiting for receiver on dataflow/"
        };
        first.wait_for_log(waiting, Duration::from_secs(20));
        let mut second = start(&g, Some(second_machine), second_out, &[], None);
        let (a, b) = (
            first.wait(Duration::from_secs(60)),
            second.wait(Duration::from_secs(60)),
        );
        assert_eq!((a, b), (0, 0));
        same_files(&single.join("sink"), &rx_out.join("sink"));
        let (tx, rx) = (summary(&tx_out), summary(&rx_out));
        assert_eq!(counts(&tx, "pass.out->sink"), (40, 0), "{tx}");
        assert_eq!(counts(&rx, "pass.out->sink"), (40, 0), "{rx}");
        assert_eq!(counts(&rx, "sink"), (40, 0));
        assert!(tx["stages"].as_array().unwrap().iter().all(|s| s["id"] != "sink"));
        assert!(rx["stages"].as_array().unwrap().iter().all(|s| s["id"] != "src"));
    }
}

/// Kills the receiver once it has written `after` files, lets the transmitter run
/// alone for `alone`, starts a second receiver, and returns (transmitter summary,
/// files of the first receiver, files of the second, transmitter log).
fn kill_and_restart_receiver(
    dir: &Path,
    frames: u64,
    rate: f64,
    when_full: &str,
    after: usize,
    alone: Duration,
) -> (serde_json::Value, BTreeSet<String>, BTreeSet<String>, String) {
    let port = free_port();
    let g = small_graph(dir, port, frames, Some(rate), when_full);
    let (tx_out, rx1_out, rx2_out) = (dir.join("tx"), dir.join("rx1"), dir.join("rx2"));
    let mut rx1 = start(&g, Some("rx"), &rx1_out, &[], None);
    let mut tx = start(&g, Some("tx"), &tx_out, &[], None);
    let t0 = Instant::now();
    while files(&rx1_out.join("sink")).len() < after {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "rx1 wrote too little:\n{}",
            rx1.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rx1.signal("KILL");
    let _ = rx1.child.wait();
    tx.wait_for_log("is gone; holding the messages", Duration::from_secs(20));
    std::thread::sleep(alone);
    assert!(
        tx.child.try_wait().unwrap().is_none(),
        "the transmitter must wait for a receiver"
    );
    let mut rx2 = start(&g, Some("rx"), &rx2_out, &[], None);
    assert_eq!(tx.wait(Duration::from_secs(120)), 0);
    assert_eq!(rx2.wait(Duration::from_secs(30)), 0);
    (
        summary(&tx_out),
        files(&rx1_out.join("sink")),
        files(&rx2_out.join("sink")),
        tx.log(),
    )
}

#[test]
fn a_killed_receiver_blocks_the_transmitter_with_block_and_every_frame_arrives_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx1, rx2, log) = kill_and_restart_receiver(dir.path(), 60, 40.0, "block", 10, Duration::from_secs(2));
    // Blocked: the source could not run ahead by more than the places on the way.
    let (sent, dropped) = counts(&tx, "pass.out->sink");
    assert_eq!((sent, dropped), (60, 0), "{tx}");
    let union: BTreeSet<_> = rx1.union(&rx2).cloned().collect();
    assert_eq!(
        union.len(),
        60,
        "every frame reaches a receiver: rx1 {rx1:?} rx2 {rx2:?}"
    );
    // At most the unacknowledged window (4) is written twice.
    let twice = rx1.len() + rx2.len() - 60;
    assert!(twice <= 4, "{twice} frames written by both receivers");
    assert!(log.contains("receiver for `sink` is up"), "{log}");
}

#[test]
fn a_killed_receiver_makes_a_drop_policy_count_drops_and_the_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let frames = 200;
    let (tx, rx1, rx2, _) =
        kill_and_restart_receiver(dir.path(), frames, 100.0, "drop_newest", 10, Duration::from_secs(1));
    let (sent, dropped) = counts(&tx, "pass.out->sink");
    assert!(dropped > 20, "about a second at 100 frames/s was dropped: {tx}");
    assert_eq!(
        sent + dropped,
        frames,
        "every frame is either sent on or counted as dropped: {tx}"
    );
    let union: BTreeSet<_> = rx1.union(&rx2).cloned().collect();
    assert_eq!(union.len() as u64, sent, "every frame sent on reaches a receiver");
}

#[test]
fn an_unreachable_receiver_gives_a_waiting_message_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_graph(dir.path(), free_port(), 5, None, "block");
    // The receiver connects to a port nobody listens on: it says what it waits for.
    let mut rx = start(&g, Some("rx"), &dir.path().join("rx"), &[], None);
    rx.wait_for_log("waiting for transmitter on dataflow/loop-", Duration::from_secs(15));
    let log = rx.log();
    assert!(log.contains("on machine `tx`"), "{log}");
    drop(rx);
    // The transmitter listens but nobody comes: it waits and says so, naming the machine.
    let mut tx = start(&g, Some("tx"), &dir.path().join("tx"), &[], None);
    tx.wait_for_log("waiting for receiver on dataflow/", Duration::from_secs(15));
    assert!(tx.log().contains("--machine rx"), "{}", tx.log());
    // Ctrl-C while nobody receives: the transmitter ends, saying what was not delivered.
    tx.signal("INT");
    let code = tx.wait(Duration::from_secs(20));
    assert_eq!(code, 2, "frames not delivered are failures");
    assert!(tx.log().contains("not delivered"), "{}", tx.log());
}

#[test]
fn ctrl_c_on_either_machine_ends_both() {
    for (k, interrupt_rx) in [false, true].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let g = small_graph(dir.path(), port, 100_000, Some(50.0), "block");
        let (tx_out, rx_out) = (dir.path().join("tx"), dir.path().join("rx"));
        let mut rx = start(&g, Some("rx"), &rx_out, &[], None);
        let mut tx = start(&g, Some("tx"), &tx_out, &[], None);
        let t0 = Instant::now();
        while files(&rx_out.join("sink")).len() < 5 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "case {k}: nothing arrives:\n{}",
                rx.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if interrupt_rx {
            rx.signal("INT")
        } else {
            tx.signal("INT")
        };
        let (a, b) = (tx.wait(Duration::from_secs(30)), rx.wait(Duration::from_secs(30)));
        // The machine that got Ctrl-C says so (130); the other drained to a clean end.
        let expected = if interrupt_rx { (0, 130) } else { (130, 0) };
        assert_eq!((a, b), expected, "case {k}: a drained stop");
        let (ts, rs) = (summary(&tx_out), summary(&rx_out));
        let (sent, _) = counts(&ts, "pass.out->sink");
        assert_eq!(
            counts(&rs, "sink").0,
            sent,
            "case {k}: every frame sent before the stop arrived"
        );
        assert_eq!(files(&rx_out.join("sink")).len() as u64, sent);
        assert!(sent < 100_000);
    }
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct Netns {
    names: [String; 2],
}

impl Netns {
    fn create() -> Option<Netns> {
        let id = std::process::id() % 50_000;
        let names = [format!("dft{id}a"), format!("dft{id}b")];
        let (va, vb) = (format!("dfv{id}a"), format!("dfv{id}b"));
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !ip(&["netns", "add", &names[0]]) {
            return None;
        }
        let ns = Netns { names: names.clone() };
        let ok = ip(&["netns", "add", &names[1]])
            && ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && ip(&["link", "set", &va, "netns", &names[0]])
            && ip(&["link", "set", &vb, "netns", &names[1]])
            && ip(&["-n", &names[0], "addr", "add", "10.213.7.1/30", "dev", &va])
            && ip(&["-n", &names[1], "addr", "add", "10.213.7.2/30", "dev", &vb])
            && ip(&["-n", &names[0], "link", "set", &va, "up"])
            && ip(&["-n", &names[1], "link", "set", &vb, "up"])
            && ip(&["-n", &names[0], "link", "set", "lo", "up"])
            && ip(&["-n", &names[1], "link", "set", "lo", "up"]);
        ok.then_some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn two_network_namespaces_joined_by_a_veth_pair_deliver_every_frame() {
    let Some(ns) = Netns::create() else {
        // `make test` (CI) runs as root with iproute2 installed: there it must run.
        let root_user = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        assert!(
            !(root_user && dataflow_models::assets::assets_required()),
            "running as root under `make test`, yet `ip netns add` failed (is iproute2 installed?)"
        );
        println!("skipped two_network_namespaces_joined_by_a_veth_pair_deliver_every_frame: cannot create network namespaces here (needs root and `ip`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let g = small_graph(dir.path(), 7447, 30, None, "block");
    let text = std::fs::read_to_string(&g)
        .unwrap()
        .replace(
            "listen = [\"tcp/127.0.0.1:7447\"]",
            "listen = [\"tcp/10.213.7.1:7447\"]",
        )
        .replace(
            "connect = [\"tcp/127.0.0.1:7447\"]",
            "connect = [\"tcp/10.213.7.1:7447\"]",
        );
    std::fs::write(&g, text).unwrap();
    let single = dir.path().join("single");
    assert_eq!(start(&g, None, &single, &[], None).wait(Duration::from_secs(60)), 0);
    let (tx_out, rx_out) = (dir.path().join("tx"), dir.path().join("rx"));
    let mut rx = start(&g, Some("rx"), &rx_out, &[], Some(&ns.names[1]));
    let mut tx = start(&g, Some("tx"), &tx_out, &[], Some(&ns.names[0]));
    assert_eq!(
        (tx.wait(Duration::from_secs(60)), rx.wait(Duration::from_secs(60))),
        (0, 0)
    );
    same_files(&single.join("sink"), &rx_out.join("sink"));
}

#[test]
fn multisc_split_into_transmitter_and_receiver_gives_the_single_process_outputs() {
    if !root().join("assets/samples").exists() || !root().join("assets/models").exists() {
        assert!(
            !dataflow_models::assets::assets_required(),
            "assets missing; run scripts/setup-assets"
        );
        println!("skipped: assets missing (scripts/setup-assets)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    std::fs::create_dir_all(&imgs).unwrap();
    let mut samples: Vec<PathBuf> = std::fs::read_dir(root().join("assets/samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    samples.sort();
    for s in samples.iter().take(2) {
        std::fs::copy(s, imgs.join(s.file_name().unwrap())).unwrap();
    }
    let port = free_port();
    let graph = root().join("graphs/multisc-distributed.toml");
    let src = format!("stage.source.path={}", imgs.display());
    let listen = format!("machines.server.listen=[\"tcp/127.0.0.1:{port}\"]");
    let connect = format!("machines.camera.connect=[\"tcp/127.0.0.1:{port}\"]");
    let args = [
        "--set",
        &src,
        "--set",
        "stage.segment.replicas=1",
        "--set",
        &listen,
        "--set",
        &connect,
    ];
    let single = dir.path().join("single");
    assert_eq!(
        start(&graph, None, &single, &args, None).wait(Duration::from_secs(300)),
        0
    );
    let (tx_out, rx_out) = (dir.path().join("camera"), dir.path().join("server"));
    let mut tx = start(&graph, Some("camera"), &tx_out, &args, None);
    let mut rx = start(&graph, Some("server"), &rx_out, &args, None);
    assert_eq!(
        (tx.wait(Duration::from_secs(300)), rx.wait(Duration::from_secs(60))),
        (0, 0)
    );
    let mut a = String::new();
    std::fs::File::open(single.join("metrics.csv"))
        .unwrap()
        .read_to_string(&mut a)
        .unwrap();
    let b = std::fs::read_to_string(rx_out.join("metrics.csv")).unwrap();
    assert_eq!(a.lines().count(), 3, "a header and two frames:\n{a}");
    assert_eq!(
        a, b,
        "the receiver's metrics (texts, BER, PSNR, ...) equal the single process's"
    );
    same_files(&single.join("reconstructions"), &rx_out.join("reconstructions"));
    same_files(&single.join("sheets"), &rx_out.join("sheets"));
    let rx_sum = summary(&rx_out);
    for edge in [
        "text_channel.out->fuse",
        "image_channel.out->reconstruct",
        "detect.out->evaluate",
    ] {
        let n = counts(&rx_sum, edge).0;
        assert!(n >= 2, "{edge} carried {n} messages: {rx_sum}");
    }
}
