//! The runtime: one ractor actor per source and per stage replica (a replica's actor
//! owns its stage loop, a tokio task reading the replica's inbox), wired by bounded
//! edges.
//!
//! # Layout
//! - [`group`]: all replicas of one stage as producers see them; dispatch to a
//!   replica; routing outputs over the edges.
//! - [`sequencer`]: arrival order restored behind a replicated stage.
//! - [`stage_actor`]: one transform or sink replica: its actor and its stage loop.
//! - [`joins`]: joining stages gather the parts of a frame from every input.
//! - [`worker`]: heavy stages on a thread of their own; panics caught.
//! - [`batch`]: batched stages gather messages into one call of the stage.
//! - [`source`]: sources, each on a thread of its own.
//! - [`shutdown`]: the shutdown protocol, the wait for the end and the joins.
//! - [`shared`], [`stats`], [`summary`]: the run's shared state, counters and summary.
//!
//! # How a frame moves
//! A source thread asks its [`Source`](crate::stage::Source) for a frame, stamps it
//! with a [`FrameId`](crate::message::FrameId) and capture time, and routes it: for
//! every consumer edge of the output port, the edge takes a permit (or drops, by
//! policy, or has the producer wait for a place under `block`) and the consumer group
//! dispatches the ticket to one replica's
//! inbox. The replica's stage loop takes the message out of the ticket, runs the stage
//! (inline for light stages, on the replica's worker thread for heavy ones), routes
//! the outputs the same way and only then drops the input permit, so a frame always
//! holds a place somewhere and the frames alive in the graph stay within the edge
//! capacities.
//!
//! How a run ends (end of stream, a stop request, an abort) is in [`shutdown`].

mod batch;
mod contract;
mod group;
mod joins;
mod sequencer;
mod shared;
mod shutdown;
mod source;
mod spawn;
mod stage_actor;
mod stats;
mod summary;
#[cfg(test)]
mod test_kinds;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::plan::Plan;
use crate::stage::{Role, StopFlag};
use shared::RunShared;

pub use shutdown::RunError;
pub use stats::StageStats;
pub use summary::{RunSummary, StageSummary, EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNWRITTEN};

/// What a run reports while it goes on, for a progress bar or a log
/// ([`RunOptions::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    /// Every stage is built and the sources start; `total` is the number of frames the
    /// sources will produce, when every source knows it.
    Started {
        /// Frames the sources will produce, when known.
        total: Option<u64>,
    },
    /// Frames through the slowest sink so far (every 250 ms).
    Progress {
        /// Messages received by the sink that received the fewest.
        frames: u64,
    },
    /// Every actor, thread and child process of the run has stopped; the summary follows.
    Finished,
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Folder every sink writes under.
    pub out_dir: PathBuf,
    /// Send [`RunEvent::Progress`] events (when [`RunOptions::events`] is set).
    pub progress: bool,
    /// How long a drain after a stop request may take before the run is aborted.
    pub drain_timeout: Duration,
    /// The run's stop token: set from outside to stop the run (see [`StopFlag`]).
    pub stop: StopFlag,
    /// Where [`RunEvent`]s go, if anywhere. A closed receiver is ignored.
    pub events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
}

impl RunOptions {
    /// Defaults: progress events on (when a receiver is given), 30 s drain.
    pub fn new(out_dir: PathBuf) -> Self {
        RunOptions {
            out_dir,
            progress: true,
            drain_timeout: Duration::from_secs(30),
            stop: StopFlag::default(),
            events: None,
        }
    }

    fn send(&self, event: RunEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }
}

/// Runs a validated plan until every stage has seen end of stream, or it is stopped.
/// Returns once every actor, thread and child process of the run has stopped.
///
/// # Errors
/// [`RunError`] when the output folder cannot be made or a stage cannot be built.
pub async fn run(plan: &Plan, opts: RunOptions) -> Result<RunSummary, RunError> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| RunError::OutputFolder {
        path: opts.out_dir.clone(),
        source: e,
    })?;
    let stats: Vec<Arc<StageStats>> = plan
        .stages
        .iter()
        .map(|s| Arc::new(StageStats::new(&s.id, &s.kind, s.role, s.replicas, s.batch.is_some())))
        .collect();
    let shared = Arc::new(RunShared::new(
        &plan.name,
        opts.stop.clone(),
        stats.clone(),
        &opts.out_dir,
    ));
    let (groups, all_edges) = group::build(plan, &stats);
    let (start_tx, start) = tokio::sync::watch::channel(false);
    let spawned = match spawn::spawn_all(plan, &opts.out_dir, &groups, &shared, start).await {
        Ok(s) => s,
        Err((e, actors)) => {
            shutdown::stop_and_join(actors, &shared, true).await;
            return Err(e);
        }
    };
    let t0 = Instant::now();
    opts.send(RunEvent::Started { total: spawned.total });
    let ticker = tokio::spawn(tick(shared.clone(), opts.clone(), t0));
    let _ = start_tx.send(true);

    let aborted = shutdown::wait_for_end(&shared, plan.stages.len(), opts.drain_timeout).await;
    let in_flight: u64 = if aborted {
        all_edges.iter().map(|e| e.depth() as u64).sum()
    } else {
        0
    };
    ticker.abort();
    // Wait until the ticker has stopped, so no snapshot lands after the final summary.
    let _ = ticker.await;
    shutdown::stop_and_join(spawned.actors, &shared, aborted).await;
    drop(groups);
    opts.send(RunEvent::Finished);
    let mut summary = shared.summarise(&opts.out_dir, t0.elapsed().as_secs_f64(), in_flight, true);
    if let Err(e) = summary.write() {
        if !summary.unwritten.contains(&e) {
            tracing::error!("{e}");
            summary.unwritten.push(e);
        }
    }
    Ok(summary)
}

/// Ticks of the 250 ms run ticker between two snapshots of `summary.json` (2 s).
const SUMMARY_TICKS: u64 = 8;

/// Every 250 ms: progress events; every second: utilisation gauges; every 2 s: a
/// snapshot of `summary.json`, so a killed run leaves one. Aborted by `run`.
async fn tick(shared: Arc<RunShared>, opts: RunOptions, t0: Instant) {
    let stats = &shared.stats;
    let mut last: Vec<u64> = vec![0; stats.len()];
    let mut iv = tokio::time::interval(Duration::from_millis(250));
    let mut ticks = 0u64;
    loop {
        iv.tick().await;
        ticks += 1;
        if opts.progress && opts.events.is_some() {
            let frames = stats
                .iter()
                .filter(|s| s.role == Role::Sink)
                .map(|s| s.received.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0);
            opts.send(RunEvent::Progress { frames });
        }
        if ticks.is_multiple_of(4) {
            for (k, s) in stats.iter().enumerate() {
                let busy = s.busy_ns.load(Ordering::Relaxed);
                let util = (busy - last[k]) as f64 / 1e9 / s.replicas.max(1) as f64;
                s.m_utilization.set(util.min(1.0));
                last[k] = busy;
            }
        }
        if ticks.is_multiple_of(SUMMARY_TICKS) {
            let snapshot = shared.summarise(&opts.out_dir, t0.elapsed().as_secs_f64(), 0, false);
            if let Err(e) = snapshot.write() {
                shared.note_unwritten(&opts.out_dir.join("summary.json"), e);
            }
        }
    }
}
