//! Pools over zenoh (issue 22): several `dataflow` processes on loopback, a camera
//! machine `cam` (source and sink) and a pool `gpus` of members running a `delay`
//! stage. Checked: dispatch by credit (a 3× slower member gets about a third of each
//! other's share), every frame exactly once and in order at the sink, `kill -9` of a
//! member (its frames re-sent, duplicates discarded), a member joining mid-run and one
//! leaving with Ctrl-C, and `drop_newest` in front of a pool (frames in = out + drops).
//!
//! Every test picks a free loopback port and passes `--metrics off`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::distributed::{counts, free_port, summary, Proc};
use crate::support::{bin, root};

/// A graph `src` (cam) → `work` (pool gpus, `delay` of `ms`) → `sink` (cam, csv).
/// `members` are static members; `dynamic` adds `min = 1, max = 8`.
fn pool_graph(
    dir: &Path,
    port: u16,
    frames: u64,
    rate: Option<f64>,
    members: &[&str],
    ms: f64,
    when_full: &str,
) -> PathBuf {
    let rate = rate.map(|r| format!("rate = {r}\n")).unwrap_or_default();
    let mut machines = String::new();
    for m in members {
        machines.push_str(&format!("[machines.{m}]\nconnect = [\"tcp/127.0.0.1:{port}\"]\n\n"));
    }
    let list = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"[graph]
name = "pool-{port}"
seed = 5

[machines.cam]
listen = ["tcp/127.0.0.1:{port}"]

{machines}[pools.gpus]
machines = [{list}]
min = 1
max = 8
connect = ["tcp/127.0.0.1:{port}"]
ack_timeout_ms = 2000

[stage.src]
kind = "synthetic"
machine = "cam"
frames = {frames}
width = 16
height = 12
pattern = "noise"
{rate}
[stage.work]
kind = "delay"
machine = {{ pool = "gpus" }}
inputs = ["src"]
ms = {ms}
mailbox = 4
when_full = "{when_full}"

[stage.sink]
kind = "csv_sink"
machine = "cam"
inputs = ["work"]
"#
    );
    let g = dir.join(format!("pool-{port}.toml"));
    std::fs::write(&g, text).unwrap();
    g
}

/// Starts `dataflow run <graph> --machine <machine> [--pool gpus] <args>`.
fn launch(graph: &Path, machine: &str, pool: bool, out: &Path, args: &[&str]) -> Proc {
    let log = out.with_extension(format!("{machine}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut cmd = Command::new(bin());
    cmd.current_dir(root())
        .env(
            "RUST_LOG",
            "warn,dataflow_actors::zenoh_link=info,dataflow_actors::zenoh_pool=info",
        )
        .arg("run")
        .arg(graph)
        .arg("--out")
        .arg(out)
        .args(["--no-progress", "--metrics", "off", "--machine", machine])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if pool {
        cmd.args(["--pool", "gpus"]);
    }
    Proc {
        child: cmd.spawn().unwrap(),
        log,
        what: format!("{} --machine {machine}", graph.display()),
    }
}

/// The frames in the sink's CSV, in the order written.
fn sink_frames(out: &Path) -> Vec<(u32, u64)> {
    let text = std::fs::read_to_string(out.join("sink.csv")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f = l.split(',').next()?;
            let (s, q) = f.split_once(':')?;
            Some((s.parse().ok()?, q.parse().ok()?))
        })
        .collect()
}

/// Every frame `0..n` of stream 0, once, in order.
fn assert_exactly_once_in_order(got: &[(u32, u64)], n: u64, what: &str) {
    let want: Vec<(u32, u64)> = (0..n).map(|q| (0, q)).collect();
    if got != want.as_slice() {
        let mut seen = std::collections::BTreeMap::new();
        for f in got {
            *seen.entry(*f).or_insert(0) += 1;
        }
        let dup: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).map(|(f, _)| *f).collect();
        let missing: Vec<_> = want.iter().filter(|f| !seen.contains_key(f)).collect();
        let out_of_order = got.windows(2).filter(|w| w[0] >= w[1]).count();
        panic!(
            "{what}: {} rows for {n} frames; duplicates {dup:?}; missing {missing:?}; {out_of_order} out of order",
            got.len()
        );
    }
}

fn wait_rows(out: &Path, rows: usize, limit: Duration, procs: &mut [&mut Proc]) {
    let t0 = Instant::now();
    while sink_frames(out).len() < rows {
        for p in procs.iter_mut() {
            if let Some(s) = p.child.try_wait().unwrap() {
                panic!("{} exited {s:?} early:\n{}", p.what, p.log());
            }
        }
        assert!(
            t0.elapsed() < limit,
            "the sink has fewer than {rows} rows after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Frames the member's `work` stage received.
fn share(out: &Path) -> u64 {
    counts(&summary(out), "work").0
}

#[test]
fn a_pool_of_three_shares_frames_by_speed_and_the_sink_gets_each_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let frames = 600;
    let g = pool_graph(dir.path(), port, frames, None, &["gpu1", "gpu2", "gpu3"], 10.0, "block");
    let out = |m: &str| dir.path().join(m);
    // Frames flow once all three are in (a member that joined late would get a smaller
    // share for that reason alone).
    let min3 = ["--set", "pools.gpus.min=3"];
    let mut cam = launch(&g, "cam", false, &out("cam"), &min3);
    let mut g1 = launch(&g, "gpu1", false, &out("gpu1"), &min3);
    let mut g2 = launch(&g, "gpu2", false, &out("gpu2"), &min3);
    let mut g3 = launch(
        &g,
        "gpu3",
        false,
        &out("gpu3"),
        &["--set", "stage.work.ms=30", min3[0], min3[1]],
    );
    let limit = Duration::from_secs(60);
    assert_eq!(cam.wait(limit), 0);
    for p in [&mut g1, &mut g2, &mut g3] {
        assert_eq!(p.wait(Duration::from_secs(20)), 0);
    }
    assert_exactly_once_in_order(&sink_frames(&out("cam")), frames, "sink");
    let (a, b, slow) = (share(&out("gpu1")), share(&out("gpu2")), share(&out("gpu3")));
    println!("shares: gpu1 {a}, gpu2 {b}, gpu3 (3x slower) {slow}");
    assert_eq!(a + b + slow, frames, "every frame went to exactly one member");
    for fast in [a, b] {
        let r = slow as f64 / fast as f64;
        assert!(
            (0.15..=0.6).contains(&r),
            "slow/fast = {r:.2} (want about 1/3): {a} {b} {slow}"
        );
    }
    assert!(cam.log().contains("member `gpu3` joined pool `gpus`"), "{}", cam.log());
}

#[test]
fn kill_9_of_a_member_loses_nothing_and_duplicates_are_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let frames = 300;
    let g = pool_graph(dir.path(), port, frames, None, &["gpu1", "gpu2", "gpu3"], 15.0, "block");
    let out = |m: &str| dir.path().join(m);
    let mut cam = launch(&g, "cam", false, &out("cam"), &[]);
    let mut g1 = launch(&g, "gpu1", false, &out("gpu1"), &[]);
    let mut g2 = launch(&g, "gpu2", false, &out("gpu2"), &[]);
    let mut g3 = launch(&g, "gpu3", false, &out("gpu3"), &[]);
    // gpu2 must be in the pool (and so hold frames) when it is killed: on a loaded
    // machine it may join after the others have already moved many frames.
    let t0 = Instant::now();
    while !cam.log().contains("member `gpu2` joined pool `gpus`") {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "gpu2 never joined:\n{}",
            cam.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rows = sink_frames(&out("cam")).len();
    wait_rows(
        &out("cam"),
        (rows + 20).max(60).min(frames as usize - 10),
        Duration::from_secs(40),
        &mut [&mut cam, &mut g1, &mut g2, &mut g3],
    );
    g2.signal("KILL");
    let killed_at = Instant::now();
    let _ = g2.child.wait();
    assert_eq!(cam.wait(Duration::from_secs(60)), 0);
    for p in [&mut g1, &mut g3] {
        assert_eq!(p.wait(Duration::from_secs(20)), 0);
    }
    println!("cam ended {:.1} s after the kill", killed_at.elapsed().as_secs_f64());
    assert_exactly_once_in_order(&sink_frames(&out("cam")), frames, "sink after kill -9 of gpu2");
    let log = cam.log();
    assert!(log.contains("member `gpu2` of pool `gpus` is gone"), "{log}");
    // A member killed with -9 may have delivered a frame whose acknowledgement the
    // producer never got: such a copy is discarded (the next test forces that case).
    let dups = log.matches("duplicate discarded").count();
    println!("duplicates discarded at the consumer: {dups}");
    // Each member that ended cleanly received only frames it passed on.
    let (a, c) = (share(&out("gpu1")), share(&out("gpu3")));
    assert!(a + c < frames + 1 && a > 0 && c > 0, "{a} {c}");
}

#[test]
fn a_member_joins_mid_run_and_one_leaves_with_ctrl_c_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let frames = 300;
    let g = pool_graph(dir.path(), port, frames, Some(60.0), &["gpu1", "gpu2"], 10.0, "block");
    let out = |m: &str| dir.path().join(m);
    let mut cam = launch(&g, "cam", false, &out("cam"), &[]);
    let mut g1 = launch(&g, "gpu1", false, &out("gpu1"), &[]);
    let mut g2 = launch(&g, "gpu2", false, &out("gpu2"), &[]);
    wait_rows(
        &out("cam"),
        40,
        Duration::from_secs(40),
        &mut [&mut cam, &mut g1, &mut g2],
    );
    // gpu3 is in no [machines] table: it joins with --pool and the pool's `connect`.
    let mut g3 = launch(&g, "gpu3", true, &out("gpu3"), &[]);
    let t0 = Instant::now();
    cam.wait_for_log("member `gpu3` joined pool `gpus`", Duration::from_secs(20));
    println!("gpu3 joined {:.2} s after its start", t0.elapsed().as_secs_f64());
    let rows = sink_frames(&out("cam")).len();
    wait_rows(
        &out("cam"),
        rows + 30,
        Duration::from_secs(30),
        &mut [&mut cam, &mut g1, &mut g3],
    );
    g1.signal("INT");
    // An interrupted run exits 130 (README, "Exit codes"), after finishing what it held.
    assert_eq!(g1.wait(Duration::from_secs(20)), 130, "gpu1 after Ctrl-C");
    assert_eq!(cam.wait(Duration::from_secs(60)), 0);
    for p in [&mut g2, &mut g3] {
        assert_eq!(p.wait(Duration::from_secs(20)), 0);
    }
    assert_exactly_once_in_order(&sink_frames(&out("cam")), frames, "sink");
    let (a, b, c) = (share(&out("gpu1")), share(&out("gpu2")), share(&out("gpu3")));
    println!("shares: gpu1 {a} (left), gpu2 {b}, gpu3 {c} (joined)");
    assert!(c > 0, "gpu3 received no frame");
    assert!(a < frames, "gpu1 left early but received {a}");
    assert_eq!(
        a + b + c,
        frames,
        "no frame re-sent: the leaving member finished what it held"
    );
    assert!(g1.log().contains("leaves pool `gpus` (Ctrl-C)"), "{}", g1.log());
}

#[test]
fn drop_newest_in_front_of_a_pool_counts_every_frame_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let frames = 300;
    // 200 frames/s into two members of 50 frames/s each.
    let g = pool_graph(
        dir.path(),
        port,
        frames,
        Some(200.0),
        &["gpu1", "gpu2"],
        20.0,
        "drop_newest",
    );
    let out = |m: &str| dir.path().join(m);
    let mut cam = launch(&g, "cam", false, &out("cam"), &[]);
    let mut g1 = launch(&g, "gpu1", false, &out("gpu1"), &[]);
    let mut g2 = launch(&g, "gpu2", false, &out("gpu2"), &[]);
    assert_eq!(cam.wait(Duration::from_secs(60)), 0);
    for p in [&mut g1, &mut g2] {
        assert_eq!(p.wait(Duration::from_secs(20)), 0);
    }
    let got = sink_frames(&out("cam"));
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {got:?}"
    );
    let dropped: u64 = ["cam", "gpu1", "gpu2"]
        .iter()
        .map(|m| {
            summary(&out(m))["stages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["dropped"].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    println!("{} frames at the sink, {dropped} dropped", got.len());
    assert!(
        dropped > 0,
        "two members of a 20 ms stage should not keep up with 200 frames/s"
    );
    assert!(got.len() > 50, "too few frames through the pool: {}", got.len());
    assert_eq!(got.len() as u64 + dropped, frames, "frames in = frames out + drops");
}

#[test]
fn a_member_slower_than_ack_timeout_is_replaced_and_its_late_copies_are_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // 300 frames keep the two fast members busy ~1.5 s: gpu3 delivers its first copy
    // (600 ms a frame) before the consumer has every frame.
    let frames = 300;
    let g = pool_graph(dir.path(), port, frames, None, &["gpu1", "gpu2", "gpu3"], 10.0, "block");
    // gpu3 takes 600 ms a frame: past the 300 ms ack_timeout it is taken for dead, its
    // frames go to the others, and the copies it still delivers are duplicates.
    let text = std::fs::read_to_string(&g)
        .unwrap()
        .replace("ack_timeout_ms = 2000", "ack_timeout_ms = 300");
    std::fs::write(&g, text).unwrap();
    let out = |m: &str| dir.path().join(m);
    let mut cam = launch(&g, "cam", false, &out("cam"), &[]);
    let mut g1 = launch(&g, "gpu1", false, &out("gpu1"), &[]);
    let mut g2 = launch(&g, "gpu2", false, &out("gpu2"), &[]);
    let mut g3 = launch(&g, "gpu3", false, &out("gpu3"), &["--set", "stage.work.ms=600"]);
    assert_eq!(cam.wait(Duration::from_secs(60)), 0);
    for p in [&mut g1, &mut g2, &mut g3] {
        assert_eq!(p.wait(Duration::from_secs(20)), 0);
    }
    assert_exactly_once_in_order(&sink_frames(&out("cam")), frames, "sink");
    let log = cam.log();
    assert!(
        log.contains("member `gpu3` of pool `gpus` is gone (no acknowledgement for 300 ms"),
        "{log}"
    );
    let dups = log.matches("duplicate discarded").count();
    let slow = share(&out("gpu3"));
    println!("gpu3 took {slow} frame(s); duplicates discarded at the consumer: {dups}");
    assert!(
        dups >= 1 && dups as u64 <= slow,
        "{dups} duplicates for {slow} frames at gpu3:\n{log}"
    );
}

#[test]
fn ctrl_c_on_the_camera_ends_the_members_and_delivers_what_entered_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let g = pool_graph(dir.path(), port, 1000, Some(50.0), &["gpu1", "gpu2"], 10.0, "block");
    let out = |m: &str| dir.path().join(m);
    let mut cam = launch(&g, "cam", false, &out("cam"), &[]);
    let mut g1 = launch(&g, "gpu1", false, &out("gpu1"), &[]);
    let mut g2 = launch(&g, "gpu2", false, &out("gpu2"), &[]);
    wait_rows(
        &out("cam"),
        40,
        Duration::from_secs(40),
        &mut [&mut cam, &mut g1, &mut g2],
    );
    cam.signal("INT");
    assert_eq!(cam.wait(Duration::from_secs(20)), 130, "the camera after Ctrl-C");
    // The members end on the producer's end of stream, not interrupted themselves.
    for p in [&mut g1, &mut g2] {
        assert_eq!(p.wait(Duration::from_secs(20)), 0);
    }
    let got = sink_frames(&out("cam"));
    assert!(got.len() >= 40 && got.len() < 1000, "{} rows", got.len());
    assert_exactly_once_in_order(&got, got.len() as u64, "sink after Ctrl-C");
    assert_eq!(share(&out("gpu1")) + share(&out("gpu2")), got.len() as u64);
}
