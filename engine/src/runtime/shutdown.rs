//! How a run ends, and `run`'s errors.
//!
//! # Shutdown protocol
//! Three things end a run; in each, `run` returns only after every actor task has
//! stopped and every thread it started is joined, so nothing of the run outlives it
//! (a source's child process, such as ffmpeg, is killed when its thread drops the
//! source).
//!
//! **End of stream** (the clean end). EOS is a control message (it holds no permit).
//! 1. A source thread gets [`SourceItem::End`](crate::stage::SourceItem::End) (or sees
//!    the stop token set), sends EOS to every consumer replica, marks its stage
//!    finished in [`RunShared::finished`] and wakes [`RunShared::done`]. Its thread
//!    then returns, dropping the source.
//! 2. A replica that has received EOS on every input edge expires its joins, calls
//!    [`Stage::finish`](crate::stage::Stage::finish), routes what that emitted and
//!    ends its stage loop and stops its actor (the loop's state drops its worker's
//!    channel, which ends the worker thread).
//!    The last replica of a group to finish (`Group::finished_replicas`) sends EOS
//!    downstream and marks the stage finished.
//! 3. `run`'s wait ([`wait_for_end`]) sees every stage finished.
//!
//! **Stop request** (Ctrl-C in the binary, a test, another machine). Whoever holds the
//! run's [`StopFlag`](crate::stage::StopFlag) calls `set` or `interrupt`. Sources end their streams at their
//! next item, so the run ends as above once the frames in flight have drained. The wait
//! starts a `drain_timeout` clock when it sees the request; a drain that outlasts it
//! becomes an abort.
//!
//! **Abort** (a second Ctrl-C: [`StopFlag::abort`]; a stage panicking under
//! `restart = "never"`; a source panicking; the drain timeout). The reason becomes the
//! run's fatal error ([`RunShared::set_fatal`], which also sets the stop token), the
//! wait returns at once and the messages still on the edges are counted as in flight.
//!
//! Then, in every case, `run`:
//! 1. stops the ticker and awaits it, so no `summary.json` snapshot lands later;
//! 2. asks every actor to stop ([`stop_and_join`]) and awaits each actor's task (one
//!    still busy after [`KILL_AFTER`] is killed); a replica's actor ends its stage loop
//!    before its next message (or at its current await) and awaits it;
//! 3. joins every thread in [`RunShared::threads`] (source threads, heavy-stage
//!    workers); a source thread blocked on a full edge is released when the consumer's
//!    stage loop ends and its inbox, with the permits it held, is dropped;
//! 4. writes the final `summary.json`.
//!
//! Nobody but the holder of the stop token signals from outside, and nobody but `run`
//! waits: actors and threads only report (`finished`, `done`, `fatal`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::shared::RunShared;

/// Why a run could not start. Errors during the run (failed frames, a panic that
/// stops it) are in the [`super::RunSummary`] instead.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The output folder could not be made.
    #[error("cannot create the output folder {}: {source}", path.display())]
    OutputFolder {
        /// The folder.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// A stage could not be built (a model missing, a device busy).
    #[error("stage `{stage}`: {message}")]
    Build {
        /// The stage id.
        stage: String,
        /// What went wrong and what to do.
        message: String,
    },
}

/// How long an actor asked to stop may take before it is killed.
pub(super) const KILL_AFTER: Duration = Duration::from_secs(10);

/// Waits until every one of the `n` stages has finished (`false`), or the run is
/// aborted (`true`). Sleeps between wake-ups of [`RunShared::done`] and of the stop
/// token; the only clock is the drain deadline.
pub(super) async fn wait_for_end(shared: &RunShared, n: usize, drain_timeout: Duration) -> bool {
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let done = shared.done.notified();
        let changed = shared.stop.changed();
        tokio::pin!(done, changed);
        done.as_mut().enable();
        changed.as_mut().enable();
        if let Some(reason) = shared.stop.abort_reason() {
            shared.set_fatal(reason);
            return true;
        }
        if shared.finished.load(Ordering::Acquire) >= n {
            return false;
        }
        if shared.is_fatal() {
            return true;
        }
        if shared.stop.is_set() && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + drain_timeout);
        }
        let drained = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut done => {}
            _ = &mut changed => {}
            _ = drained => {
                shared.set_fatal(format!("the drain after the stop request took longer than {drain_timeout:?}"));
                return true;
            }
        }
    }
}

/// An actor of the run and the task it runs on.
pub(super) type Spawned = (ractor::ActorCell, tokio::task::JoinHandle<()>);

/// Stops every actor and awaits its task, then joins every thread of the run.
pub(super) async fn stop_and_join(actors: Vec<Spawned>, shared: &RunShared, aborted: bool) {
    for (cell, _) in &actors {
        cell.stop(None);
    }
    let t0 = Instant::now();
    for (cell, mut task) in actors {
        let left = KILL_AFTER.saturating_sub(t0.elapsed());
        if tokio::time::timeout(left, &mut task).await.is_err() {
            tracing::warn!(actor = %cell.get_id(), aborted, "an actor did not stop within {KILL_AFTER:?}; killing it");
            cell.kill();
            let _ = task.await;
        }
    }
    let threads = shared
        .threads
        .lock()
        .map(|mut t| std::mem::take(&mut *t))
        .unwrap_or_default();
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    let _ = joined.await;
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::graph::GraphSource;
    use crate::registry::Registry;
    use crate::runtime::test_kinds::{Count, NoKeys, Passing, Sink};
    use crate::runtime::{run, RunOptions};
    use crate::stage::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind};

    /// A heavy pass-through (its own worker thread per replica).
    struct Heavy;
    impl StageKind for Heavy {
        type Config = NoKeys;
        const NAME: &'static str = "heavy";
        const ROLE: Role = Role::Transform;
        const DOC: &'static str = "passes frames on, on a worker thread";
        fn ports(_: &NoKeys) -> Ports {
            Ports {
                outputs: vec![OutPort::forwarding("out")],
                heavy: true,
                ..Ports::default()
            }
        }
        fn build(_: &NoKeys, _: &BuildContext) -> Result<Built, StageError> {
            Ok(Built::Stage(Box::new(Passing)))
        }
    }

    /// Frames the `slow_sink` kind has taken, in this test binary.
    static SLOW_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// An inline sink taking 150 ms per frame, counting its calls in [`SLOW_CALLS`].
    struct SlowSink;
    struct Slow;
    impl Stage for Slow {
        fn process(&mut self, _: Input, _: &mut Outputs) -> Result<(), StageError> {
            SLOW_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(150));
            Ok(())
        }
    }
    impl StageKind for SlowSink {
        type Config = NoKeys;
        const NAME: &'static str = "slow_sink";
        const ROLE: Role = Role::Sink;
        const DOC: &'static str = "takes frames slowly";
        fn ports(_: &NoKeys) -> Ports {
            Ports::default()
        }
        fn build(_: &NoKeys, _: &BuildContext) -> Result<Built, StageError> {
            Ok(Built::Stage(Box::new(Slow)))
        }
    }

    /// Names of this process's threads (as `/proc` shows them: 15 bytes at most).
    fn thread_names() -> Vec<String> {
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect()
    }

    /// Runs `count -> heavy (2 replicas) -> sink` with stage ids starting with `tag`;
    /// `stop_after` stops an endless source. Returns the summary and the run's threads
    /// seen while it ran and still alive once `run` returned.
    fn run_graph(
        tag: &str,
        frames: Option<u64>,
        stop_after: Option<Duration>,
    ) -> (crate::RunSummary, Vec<String>, Vec<String>) {
        let mut reg = Registry::new();
        reg.register::<Count>().register::<Heavy>().register::<Sink>();
        let frames = frames.map(|n| format!("frames = {n}")).unwrap_or_default();
        let text = format!(
            "[stage.{tag}s]\nkind = \"count\"\npace_ms = 2\n{frames}\n[stage.{tag}h]\nkind = \"heavy\"\nreplicas = 2\ninputs = [\"{tag}s\"]\n[stage.{tag}k]\nkind = \"sink\"\ninputs = [\"{tag}h\"]\n"
        );
        let src = GraphSource::from_text(Path::new("lifecycle.toml"), text, &[]).expect("the graph parses");
        let plan = crate::plan::plan(&src, &reg).expect("the graph is valid");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut opts = RunOptions::new(dir.path().to_path_buf());
        opts.progress = false;
        let stop = opts.stop.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let ours = |names: Vec<String>| names.into_iter().filter(|n| n.starts_with(tag)).collect::<Vec<_>>();
        let summary = rt.block_on(async {
            let running = tokio::spawn(async move { run(&plan, opts).await });
            tokio::time::sleep(stop_after.unwrap_or(Duration::from_millis(30))).await;
            let during = ours(thread_names());
            if stop_after.is_some() {
                stop.set();
            }
            let summary = running.await.expect("the run's task").expect("the run starts");
            (summary, during)
        });
        let after = ours(thread_names());
        (summary.0, summary.1, after)
    }

    #[test]
    fn no_thread_outlives_a_run_that_ends_its_stream() {
        let (summary, during, after) = run_graph("tqe", Some(200), None);
        assert_eq!(summary.frames_out, 200);
        assert!(
            during.len() >= 3,
            "the source and two workers ran on threads: {during:?}"
        );
        assert!(after.is_empty(), "threads alive after run returned: {after:?}");
    }

    #[test]
    fn no_thread_outlives_a_run_that_is_stopped() {
        let (summary, during, after) = run_graph("tqs", None, Some(Duration::from_millis(100)));
        assert!(summary.interrupted && !summary.ctrl_c && summary.fatal.is_none());
        assert!(summary.frames_out > 0 && summary.frames_out == summary.frames_in);
        assert!(
            during.len() >= 3,
            "the source and two workers ran on threads: {during:?}"
        );
        assert!(after.is_empty(), "threads alive after run returned: {after:?}");
    }

    #[test]
    fn an_abort_ends_the_run_at_once_and_joins_every_thread() {
        let mut reg = Registry::new();
        reg.register::<Count>().register::<Heavy>().register::<Sink>();
        let (summary, _, after) = {
            // Abort instead of stop: the reason becomes the run's error.
            let tag = "tqa";
            let text = format!(
                "[stage.{tag}s]\nkind = \"count\"\npace_ms = 2\n[stage.{tag}h]\nkind = \"heavy\"\ninputs = [\"{tag}s\"]\n[stage.{tag}k]\nkind = \"sink\"\ninputs = [\"{tag}h\"]\n"
            );
            let src = GraphSource::from_text(Path::new("abort.toml"), text, &[]).expect("the graph parses");
            let plan = crate::plan::plan(&src, &reg).expect("the graph is valid");
            let dir = tempfile::tempdir().expect("a temporary folder");
            let mut opts = RunOptions::new(dir.path().to_path_buf());
            opts.progress = false;
            let stop = opts.stop.clone();
            let rt = tokio::runtime::Runtime::new().expect("a runtime");
            let summary = rt.block_on(async {
                let running = tokio::spawn(async move { run(&plan, opts).await });
                tokio::time::sleep(Duration::from_millis(50)).await;
                stop.abort("aborted by the test");
                running.await.expect("the run's task").expect("the run starts")
            });
            let after: Vec<String> = thread_names().into_iter().filter(|n| n.starts_with(tag)).collect();
            (summary, (), after)
        };
        assert_eq!(summary.fatal.as_deref(), Some("aborted by the test"));
        assert!(after.is_empty(), "threads alive after run returned: {after:?}");
    }

    /// A replica's stage loop ends with its actor: after an abort, `run` returns once
    /// the frame in work is done, without draining the 16 frames queued in the inbox
    /// (2.4 s of work), and no replica takes a frame afterwards.
    #[test]
    fn an_abort_ends_every_stage_loop_before_run_returns() {
        let mut reg = Registry::new();
        reg.register::<Count>().register::<SlowSink>();
        let text =
            "[stage.tls]\nkind = \"count\"\npace_ms = 2\n[stage.tlk]\nkind = \"slow_sink\"\nmailbox = 16\ninputs = [\"tls\"]\n";
        let src = GraphSource::from_text(Path::new("loops.toml"), text.to_string(), &[]).expect("the graph parses");
        let plan = crate::plan::plan(&src, &reg).expect("the graph is valid");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut opts = RunOptions::new(dir.path().to_path_buf());
        opts.progress = false;
        let stop = opts.stop.clone();
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        let (summary, took) = rt.block_on(async {
            let running = tokio::spawn(async move { run(&plan, opts).await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t0 = std::time::Instant::now();
            stop.abort("aborted by the test");
            let summary = running.await.expect("the run's task").expect("the run starts");
            (summary, t0.elapsed())
        });
        let taken = SLOW_CALLS.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(summary.fatal.as_deref(), Some("aborted by the test"));
        assert!(taken > 0, "the sink took frames before the abort");
        assert_eq!(
            SLOW_CALLS.load(std::sync::atomic::Ordering::SeqCst),
            taken,
            "a replica took a frame after run returned"
        );
        assert!(
            took < Duration::from_millis(1200),
            "run took {took:?} to return after the abort: it drained the inbox"
        );
    }
}
