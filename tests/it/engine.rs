//! The runtime: backpressure, drop policies, replicas, panics.

use std::sync::atomic::Ordering;

use crate::support::{probe, run_text, stage};

#[test]
fn block_delivers_every_frame_once_and_bounds_frames_alive() {
    let dir = tempfile::tempdir().unwrap();
    let s = run_text(
        r#"
[defaults]
mailbox = 4
[stage.src]
kind = "tracked"
frames = 10000
probe = "bound"
[stage.fast]
kind = "passthrough"
inputs = ["src"]
[stage.slow]
kind = "delay"
inputs = ["fast"]
ms = 0.05
[stage.sink]
kind = "record"
inputs = ["slow"]
probe = "bound"
"#,
        dir.path(),
    );
    let p = probe("bound");
    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10_000, "every frame arrives");
    assert!(
        seen.iter().enumerate().all(|(i, s)| *s == i as u64),
        "exactly once, in order"
    );
    // Three edges of 4 places, plus one frame in the hands of each of the 4 stages.
    let bound = 3 * 4 + 4;
    let max = p.max.load(Ordering::SeqCst);
    println!("frames alive at most: {max} (bound {bound})");
    assert!(max <= bound, "{max} frames were alive at once, over the bound {bound}");
    assert!(
        max >= 4,
        "the slow stage should have filled its queue (max alive {max})"
    );
    assert_eq!(p.now.load(Ordering::SeqCst), 0, "no frame leaked");
    assert_eq!(s.failed, 0);
    assert_eq!(s.dropped, 0);
}

fn drop_policy(policy: &str, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = run_text(
        &format!(
            r#"
[stage.src]
kind = "tracked"
frames = 3000
probe = "{name}"
[stage.slow]
kind = "delay"
inputs = ["src"]
ms = 0.5
mailbox = 2
when_full = "{policy}"
[stage.sink]
kind = "record"
inputs = ["slow"]
probe = "{name}"
"#
        ),
        dir.path(),
    );
    let p = probe(name);
    let seen = p.seen.lock().unwrap().clone();
    let dropped = stage(&s, "slow").dropped;
    println!("{policy}: in {} out {} dropped {dropped}", s.frames_in, seen.len());
    assert_eq!(s.frames_in, 3000);
    assert!(
        dropped > 0,
        "a source 10x faster than its consumer must drop with {policy}"
    );
    assert_eq!(seen.len() as u64 + dropped, 3000, "frames in = frames out + dropped");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "survivors keep their order");
    assert_eq!(p.now.load(Ordering::SeqCst), 0);
    if policy == "drop_oldest" {
        assert_eq!(*seen.last().unwrap(), 2999, "drop_oldest keeps the freshest frame");
    }
}

#[test]
fn drop_newest_counts_every_drop() {
    drop_policy("drop_newest", "dn");
}

#[test]
fn drop_oldest_counts_every_drop_and_keeps_the_latest() {
    drop_policy("drop_oldest", "do");
}

#[test]
fn replicas_restore_frame_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = run_text(
        r#"
[stage.src]
kind = "tracked"
frames = 300
probe = "order"
[stage.work]
kind = "delay"
inputs = ["src"]
ms = 1
replicas = 3
[stage.sink]
kind = "record"
inputs = ["work"]
probe = "order"
"#,
        dir.path(),
    );
    let seen = probe("order").seen.lock().unwrap().clone();
    assert_eq!(seen, (0..300).collect::<Vec<u64>>());
    assert_eq!(stage(&s, "work").received, 300);
}

#[test]
fn panic_with_on_failure_restarts_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = run_text(
        r#"
[stage.src]
kind = "tracked"
frames = 100
probe = "restart"
[stage.bad]
kind = "fault"
inputs = ["src"]
every = 10
at = 3
restart = "on_failure"
[stage.sink]
kind = "record"
inputs = ["bad"]
probe = "restart"
"#,
        dir.path(),
    );
    let seen = probe("restart").seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        90,
        "the 10 frames in flight at the panics are lost, the rest arrive"
    );
    assert!(!seen.contains(&13));
    let bad = stage(&s, "bad");
    assert_eq!(bad.restarts, 10);
    assert_eq!(bad.errors, 10);
    assert!(s.fatal.is_none());
    assert!(s.failed(), "failed frames make a non-zero exit");
    let log = std::fs::read_to_string(dir.path().join("errors.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 10);
    assert!(
        log.contains("\"frame\":\"0:3\""),
        "the frame in flight is reported: {log}"
    );
    assert!(log.contains("injected fault"));
}

#[test]
fn panic_with_never_stops_the_run_naming_stage_and_frame() {
    let dir = tempfile::tempdir().unwrap();
    let s = run_text(
        r#"
[stage.src]
kind = "tracked"
frames = 1000
probe = "never"
[stage.bad]
kind = "fault"
inputs = ["src"]
every = 1000
at = 5
restart = "never"
[stage.sink]
kind = "record"
inputs = ["bad"]
probe = "never"
"#,
        dir.path(),
    );
    let fatal = s.fatal.clone().expect("the run must stop with an error");
    assert!(fatal.contains("stage `bad`"), "{fatal}");
    assert!(fatal.contains("frame 0:5"), "{fatal}");
    assert!(s.failed());
}

fn live_ages(policy: &str, name: &str) -> (Vec<(u64, std::time::Duration)>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let s = run_text(
        &format!(
            r#"
[stage.src]
kind = "synthetic"
frames = 150
rate = 200
width = 16
height = 16
[stage.live]
kind = "passthrough"
inputs = ["src"]
when_full = "{policy}"
mailbox = 1
[stage.slow]
kind = "delay"
inputs = ["live"]
ms = 20
mailbox = 1
[stage.sink]
kind = "fresh"
inputs = ["slow"]
probe = "{name}"
"#
        ),
        dir.path(),
    );
    let ages = crate::support::ages(name).lock().unwrap().clone();
    assert_eq!(s.frames_in, 150);
    assert_eq!(
        ages.len() as u64 + stage(&s, "live").dropped,
        150,
        "frames in = frames out + dropped"
    );
    (ages, stage(&s, "live").dropped)
}

#[test]
fn drop_oldest_keeps_live_frames_fresh_and_counts_drops() {
    // A 200 fps source into a 50 fps stage: with `drop_oldest` in front of it, what
    // reaches the sink is at most a couple of stage times old, and the newest frame of
    // the stream gets through.
    let (fresh, dropped) = live_ages("drop_oldest", "fresh-live");
    let worst = fresh.iter().map(|(_, a)| *a).max().unwrap();
    println!(
        "drop_oldest: {} frames out, {dropped} dropped, worst age {worst:?}",
        fresh.len()
    );
    assert!(
        dropped > 50,
        "most frames of a 4x faster source are dropped ({dropped})"
    );
    assert!(worst < std::time::Duration::from_millis(150), "worst age {worst:?}");
    assert!(fresh.windows(2).all(|w| w[0].0 < w[1].0), "frames stay in order");
    assert!(
        fresh.last().unwrap().0 >= 145,
        "the end of the stream arrives: {:?}",
        fresh.last()
    );
}

// Issue 24: defects found by running random graphs ----------------------------------

/// The frames named in errors.jsonl, with how many lines each has.
fn failed_frames(dir: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let log = std::fs::read_to_string(dir.join("errors.jsonl")).unwrap_or_default();
    let mut frames = std::collections::BTreeMap::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *frames.entry(v["frame"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    frames
}

#[test]
fn join_fails_a_timed_out_frame_once_and_drops_its_late_part() {
    let dir = tempfile::tempdir().unwrap();
    let s = run_text(
        r#"
[stage.src]
kind = "synthetic"
frames = 20
width = 16
height = 16
[stage.slow]
kind = "delay"
inputs = ["src"]
ms = 50
[stage.evaluate]
kind = "evaluate"
inputs = ["src", "slow"]
timeout_ms = 20
[stage.sink]
kind = "null_sink"
inputs = ["evaluate"]
"#,
        dir.path(),
    );
    let ev = stage(&s, "evaluate");
    println!("failed {} frames_in {} evaluate {ev:?}", s.failed, s.frames_in);
    assert_eq!(s.frames_in, 20);
    assert_eq!(s.failed, 20, "each frame fails once, when its timeout fires");
    assert_eq!(ev.errors, 20);
    assert_eq!(ev.dropped, 20, "each late part is dropped (reason `late`)");
    assert_eq!(ev.received, 20, "late parts are not received");
    let frames = failed_frames(dir.path());
    assert_eq!(frames.len(), 20, "{frames:?}");
    assert!(
        frames.values().all(|&n| n == 1),
        "a frame in errors.jsonl twice: {frames:?}"
    );
}

#[test]
fn join_after_a_dropping_edge_completes_the_frame_at_once() {
    // A join timeout of a minute: without gap notices the join would hold the places of
    // the frames `b` dropped for a minute each and the run would stall.
    let dir = tempfile::tempdir().unwrap();
    let s = crate::invariants::run_text_within(
        r#"
[stage.src]
kind = "synthetic"
frames = 300
width = 16
height = 16
[stage.a]
kind = "passthrough"
inputs = ["src"]
[stage.b]
kind = "delay"
inputs = ["src"]
ms = 1
mailbox = 1
when_full = "drop_newest"
[stage.evaluate]
kind = "evaluate"
inputs = ["a", "b"]
timeout_ms = 60000
[stage.sink]
kind = "null_sink"
inputs = ["evaluate"]
"#,
        dir.path(),
        std::time::Duration::from_secs(30),
    );
    let (b, ev) = (stage(&s, "b"), stage(&s, "evaluate"));
    println!("{:.2} s; b {b:?}; evaluate {ev:?}", s.seconds);
    assert!(b.dropped > 0, "the source is faster than `b`");
    assert_eq!(ev.incomplete, b.dropped, "each dropped frame is completed as lost");
    assert_eq!(ev.errors, b.dropped, "evaluate fails each frame that lost its part");
    assert_eq!(ev.sent, 300 - b.dropped);
    assert_eq!(ev.dropped, 0, "nothing arrives late");
}

#[test]
fn join_after_a_drop_oldest_edge_and_a_split_completes_the_frame_at_once() {
    // The gap crosses a stage (`caption`-like passthrough gathering the tiles) and a
    // split: a frame dropped before the split loses every tile.
    let dir = tempfile::tempdir().unwrap();
    let s = crate::invariants::run_text_within(
        r#"
[stage.src]
kind = "synthetic"
frames = 200
width = 16
height = 16
[stage.slow]
kind = "delay"
inputs = ["src"]
ms = 1
mailbox = 1
when_full = "drop_oldest"
[stage.split]
kind = "split"
inputs = ["slow"]
grid = [2, 2]
[stage.tiles]
kind = "passthrough"
inputs = ["split.tile0", "split.tile1", "split.tile2", "split.tile3"]
[stage.join]
kind = "gather"
inputs = ["src", "tiles"]
timeout_ms = 60000
[stage.sink]
kind = "null_sink"
inputs = ["join"]
"#,
        dir.path(),
        std::time::Duration::from_secs(30),
    );
    let (slow, join) = (stage(&s, "slow"), stage(&s, "join"));
    println!("{:.2} s; slow {slow:?}; join {join:?}", s.seconds);
    assert!(slow.dropped > 0);
    assert_eq!(join.incomplete, slow.dropped);
    assert_eq!(join.sent, 200);
}

#[test]
fn csv_sink_with_replicas_is_refused_at_validation() {
    let d = crate::support::diagnostics(
        r#"
[stage.src]
kind = "synthetic"
frames = 3
[stage.rows]
kind = "csv_sink"
inputs = ["src"]
replicas = 3
"#,
    );
    println!("{d:?}");
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].contains("test.toml:8"), "points at the `replicas` line: {}", d[0]);
    assert!(d[0].contains("stage `rows`") || d[0].contains("rows"), "{}", d[0]);
    assert!(
        d[0].contains("same CSV file") && d[0].contains("replicas = 3"),
        "{}",
        d[0]
    );
}

#[test]
fn out_of_range_durations_and_rates_fail_validation_not_the_run() {
    let text = r#"
[stage.src]
kind = "synthetic"
frames = 3
rate = 1e-300
[stage.slow]
kind = "delay"
inputs = ["src"]
ms = 1e300
[stage.evaluate]
kind = "evaluate"
inputs = ["src", "slow"]
timeout_ms = 0
[stage.sink]
kind = "null_sink"
inputs = ["evaluate"]
"#;
    let d = crate::support::diagnostics(text);
    println!("{}", d.join("\n"));
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d[0].contains("test.toml:5") && d[0].contains("`rate`") && d[0].contains("between 0.001 and 1000000"));
    assert!(d[1].contains("test.toml:9") && d[1].contains("`ms`") && d[1].contains("between 0 and"));
    assert!(d[2].contains("test.toml:13") && d[2].contains("`timeout_ms`") && d[2].contains("between 1 and"));
    // The binary stops before running: exit 1 with the messages, no panic.
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("g.toml");
    std::fs::write(&graph, text).unwrap();
    let o = crate::support::run_graph(&graph, &dir.path().join("out"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("out of range") && !err.contains("panicked"), "{err}");
}

#[test]
fn split_grid_finer_than_the_image_fails_the_frame_at_split() {
    let dir = tempfile::tempdir().unwrap();
    let s = run_text(
        r#"
[stage.src]
kind = "synthetic"
frames = 3
width = 4
height = 4
[stage.split]
kind = "split"
inputs = ["src"]
grid = [5, 5]
[stage.tiles]
kind = "image_sink"
inputs = ["split.tile0"]
"#,
        dir.path(),
    );
    let split = stage(&s, "split");
    assert_eq!(split.errors, 3, "split fails each frame itself");
    assert_eq!(split.sent, 0);
    assert_eq!(stage(&s, "tiles").errors, 0, "nothing reaches image_sink");
    let log = std::fs::read_to_string(dir.path().join("errors.jsonl")).unwrap();
    println!("{log}");
    assert!(log.contains("grid = [5, 5]") && log.contains("4x4 image"), "{log}");
    assert!(
        log.contains("\"stage\":\"split\"") && log.contains("\"frame\":\"0:2\""),
        "{log}"
    );
}
