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
