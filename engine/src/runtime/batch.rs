//! Batching in a stage actor (`batch = { max, wait_ms }`): messages are gathered until
//! `max` have arrived, `wait_ms` has passed since the first, or the stream ends, then
//! handed to [`Stage::process_batch`](crate::stage::Stage::process_batch) in one call.
//!
//! Each gathered message keeps its place on its input edge (its permit) until the
//! call is done and its outputs are sent on, so the frames alive in the graph stay
//! within the edge capacities, as without batching; a batch is therefore never larger
//! than the places of the stage's input edge (validation refuses `max > mailbox`).
//! Outputs and errors stay per message: each input's outputs are completed in arrival
//! order (through the sequencer when the stage is replicated, so order is restored
//! across replicas); a failed input is recorded and its gap passed on alone.
//!
//! A joining stage batches its *sets*: the join completes a frame's parts (or its
//! timeout passes) as without batching, and the ready set, with the places of all its
//! parts, goes into the batch instead of being run at once. Its outputs are routed as a
//! join's are, and its places freed, once the batch's call is done.

use std::time::Instant;

use super::group::{route, Inbox, StageMsg};
use super::sequencer::complete;
use super::stage_actor::ActorState;
use super::worker::BatchOutcome;
use crate::edge::Permit;
use crate::message::{FrameId, Message, Part};
use crate::plan::Batch;
use crate::stage::{Input, StageError};

/// What an input of a batch holds until its call is done.
pub(super) enum Held {
    /// A message: its arrival order (for the sequencer), its part and its place.
    Message { order: u64, part: Part, permit: Permit },
    /// A joined frame: the places of all its parts.
    Joined(Vec<Permit>),
}

/// An input waiting for its batch's call, with the places it holds.
struct Waiting {
    input: Input,
    held: Held,
}

/// The batch a replica is gathering.
pub(super) struct Gathering {
    batch: Batch,
    waiting: Vec<Waiting>,
    /// When the first message of the batch arrived.
    first: Option<Instant>,
    /// Number of the batch being gathered; a `Flush` of an earlier one is stale.
    number: u64,
    /// Sends the `Flush` for the batch being gathered once `wait_ms` has passed.
    timer: Option<tokio::task::JoinHandle<()>>,
    /// The replica's own inbox, which the timer sends its `Flush` to.
    me: Inbox,
}

impl Gathering {
    pub(super) fn new(batch: Batch, me: Inbox) -> Self {
        Gathering {
            batch,
            waiting: Vec::with_capacity(batch.max),
            first: None,
            number: 0,
            timer: None,
            me,
        }
    }

    /// Stops the timer (the actor stops, or the batch is called).
    pub(super) fn stop_timer(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

impl ActorState {
    /// A message for a batched stage: kept for the batch, which is called when full.
    pub(super) async fn gather(&mut self, input: usize, order: u64, msg: Message, permit: Permit) {
        let part = msg.part;
        let held = Held::Message { order, part, permit };
        self.gather_input(Input::Message { input, msg }, held).await;
    }

    /// An input (a message or a joined frame) kept for the batch, which is called when full.
    pub(super) async fn gather_input(&mut self, input: Input, held: Held) {
        let Some(g) = self.gathering.as_mut() else { return };
        g.waiting.push(Waiting { input, held });
        if g.waiting.len() == 1 {
            g.first = Some(Instant::now());
            let (me, number, wait) = (g.me.clone(), g.number, g.batch.wait);
            // With `wait_ms = 0` the flush still queues behind the messages already in
            // the inbox, so the batch takes what was waiting.
            g.timer = Some(tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = me.send(StageMsg::Flush { batch: number });
            }));
        }
        if g.waiting.len() >= g.batch.max {
            self.flush_batch().await;
        }
    }

    /// `wait_ms` has passed for batch `number`: called with what it has, unless it was
    /// already called.
    pub(super) async fn on_flush(&mut self, number: u64) {
        if self.gathering.as_ref().is_some_and(|g| g.number == number) {
            self.flush_batch().await;
        }
    }

    /// Calls the stage with the batch gathered so far (none: nothing to do), then sends
    /// each input's outputs on, in arrival order, and frees its places.
    pub(super) async fn flush_batch(&mut self) {
        let Some(g) = self.gathering.as_mut() else { return };
        g.stop_timer();
        if g.waiting.is_empty() {
            return;
        }
        g.number += 1;
        let waiting = std::mem::take(&mut g.waiting);
        let waited = g.first.take().map(|t| t.elapsed()).unwrap_or_default();
        let (group, shared) = (self.args.group.clone(), self.args.shared.clone());
        if let Some(m) = &shared.stats[group.index].m_batch {
            m.size.record(waiting.len() as f64);
            m.wait.record(waited.as_secs_f64());
        }
        let frames: Vec<FrameId> = waiting.iter().map(|w| w.input.frame()).collect();
        let (inputs, held): (Vec<Input>, Vec<Held>) = waiting.into_iter().map(|w| (w.input, w.held)).unzip();
        let results = self.run_batch(inputs, &frames).await;
        for ((held, frame), outs) in held.into_iter().zip(frames).zip(results) {
            match held {
                Held::Message { order, part, permit } => {
                    if outs.is_none() {
                        // Failed: joins downstream need not wait for this frame.
                        group.gap_downstream(frame, part);
                    }
                    complete(&group, &shared, order, outs.unwrap_or_default(), Some(permit)).await;
                }
                Held::Joined(places) => {
                    match outs {
                        Some(outs) => {
                            route(&group, &shared, outs).await;
                        }
                        None => group.gap_downstream(frame, Part::WHOLE),
                    }
                    drop(places);
                }
            }
        }
    }

    /// Runs one batch; per input, its outputs, or `None` when it failed (recorded).
    async fn run_batch(&mut self, inputs: Vec<Input>, frames: &[FrameId]) -> Vec<Option<Vec<(usize, Message)>>> {
        let stats = self.args.shared.stats[self.args.group.index].clone();
        let t0 = Instant::now();
        let outcome = self.runner.exec_batch(inputs).await;
        let dt = t0.elapsed();
        stats
            .busy_ns
            .fetch_add(dt.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        stats.m_processing.record(dt.as_secs_f64());
        match outcome {
            BatchOutcome::Done(each) => each
                .into_iter()
                .zip(frames)
                .map(|(r, &frame)| match r {
                    Ok(out) => Some(out.items),
                    Err(e) => {
                        self.args.shared.record_error(self.args.group.index, Some(frame), &e);
                        None
                    }
                })
                .collect(),
            BatchOutcome::Panicked(text) => {
                let list: Vec<String> = frames.iter().map(|f| f.to_string()).collect();
                let on = format!("a batch of {} frames ({})", frames.len(), list.join(", "));
                for &frame in frames {
                    let err = StageError::new("panic", format!("stage panicked on {on}: {text}"));
                    self.args.shared.record_error(self.args.group.index, Some(frame), &err);
                }
                self.after_panic(&on, &text).await;
                vec![None; frames.len()]
            }
        }
    }
}
