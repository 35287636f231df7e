//! The actor of one transform or sink replica: takes messages from its mailbox, runs
//! the stage, routes the outputs, restarts the stage after a panic.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::batch::Gathering;
use super::group::{route, Group, StageMsg};
use super::sequencer::complete;
use super::shared::RunShared;
use super::worker::{build_stage, spawn_worker, Outcome, Runner};
use crate::edge::{Delivery, Permit};
use crate::join::JoinTable;
use crate::message::Message;
use crate::plan::{Batch, Restart};
use crate::registry::Configured;
use crate::stage::{BuildContext, Input, Role, StageError};

pub(super) struct StageActor;

pub(super) struct ActorArgs {
    pub(super) group: Arc<Group>,
    pub(super) shared: Arc<RunShared>,
    pub(super) config: Arc<dyn Configured>,
    pub(super) ctx: BuildContext,
    pub(super) restart: Restart,
    pub(super) heavy: bool,
    pub(super) join: Option<Duration>,
    pub(super) n_inputs: usize,
    /// Places of each input edge.
    pub(super) mailbox: usize,
    /// `batch = { max, wait_ms }`, when the stage batches.
    pub(super) batch: Option<Batch>,
}

pub(super) struct ActorState {
    pub(super) args: ActorArgs,
    pub(super) runner: Runner,
    /// The task that sends a joining stage its `Tick`s; aborted when the actor stops.
    pub(super) ticker: Option<tokio::task::JoinHandle<()>>,
    pub(super) eos_seen: usize,
    /// Frames a joining stage is gathering (empty for other stages).
    pub(super) joins: JoinTable<Permit>,
    /// The batch a batched stage is gathering (`None` for other stages).
    pub(super) gathering: Option<Gathering>,
    /// The emptied output list of the last message, kept for its allocation.
    pub(super) spare: Vec<(usize, Message)>,
}

impl Actor for StageActor {
    type Msg = StageMsg;
    type State = ActorState;
    type Arguments = ActorArgs;

    async fn pre_start(&self, myself: ActorRef<StageMsg>, args: ActorArgs) -> Result<ActorState, ActorProcessingErr> {
        let runner = if args.heavy {
            let (config, ctx) = (args.config.clone(), args.ctx.clone());
            let (tx, thread) = tokio::task::spawn_blocking(move || spawn_worker(config, ctx)).await??;
            // `run` joins the thread once this actor has stopped and dropped `tx`.
            args.shared.keep_thread(thread);
            Runner::Worker(tx)
        } else {
            Runner::Inline(build_stage(args.config.as_ref(), &args.ctx)?)
        };
        let mut ticker = None;
        if let Some(timeout) = args.join {
            let me = myself.clone();
            let every = (timeout / 4).max(Duration::from_millis(10));
            ticker = Some(tokio::spawn(async move {
                let mut iv = tokio::time::interval(every);
                loop {
                    iv.tick().await;
                    if me.send_message(StageMsg::Tick).is_err() {
                        break;
                    }
                }
            }));
        }
        Ok(ActorState {
            runner,
            ticker,
            eos_seen: 0,
            joins: JoinTable::new(args.n_inputs, args.join.unwrap_or_default(), args.mailbox),
            gathering: args.batch.map(|b| Gathering::new(b, myself.clone())),
            spare: Vec::new(),
            args,
        })
    }

    async fn post_stop(&self, _myself: ActorRef<StageMsg>, state: &mut ActorState) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        if let Some(g) = state.gathering.as_mut() {
            g.stop_timer();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<StageMsg>,
        msg: StageMsg,
        state: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        // ractor moves this future a few times per message, so its size is copied each
        // time: the rare arms are boxed, leaving the size of the data path.
        match msg {
            StageMsg::Data { input, order, delivery } => state.on_data(input, order, delivery).await,
            StageMsg::Gap { input, frame, part } => Box::pin(state.on_gap(input, frame, part)).await,
            StageMsg::Tick => Box::pin(state.expire_joins(false)).await,
            StageMsg::Flush { batch } => Box::pin(state.on_flush(batch)).await,
            StageMsg::Eos => Box::pin(state.on_eos(&myself)).await,
        }
        Ok(())
    }
}

impl ActorState {
    /// End of stream on one input; after the last, the stage finishes and the actor stops.
    async fn on_eos(&mut self, myself: &ActorRef<StageMsg>) {
        self.eos_seen += 1;
        if self.eos_seen < self.args.group.input_edges {
            return;
        }
        // End of stream (also after a stop request): the partial batch goes first.
        self.flush_batch().await;
        self.expire_joins(true).await;
        let group = self.args.group.clone();
        let shared = self.args.shared.clone();
        if let Some(outs) = self.run_input(None).await {
            route(&group, &shared, outs).await;
        }
        let done = group.finished_replicas.fetch_add(1, Ordering::AcqRel) + 1;
        if done == group.n_replicas {
            group.send_eos_downstream();
            shared.stage_finished();
        }
        myself.stop(None);
    }

    /// A data message: taken from its delivery, run through the stage, its outputs
    /// routed (in arrival order when replicated) and then its input place freed. The
    /// group and shared state are borrowed, not cloned: every actor of the run would
    /// otherwise touch the same reference counts once per message.
    async fn on_data(&mut self, input: usize, order: u64, delivery: Delivery) {
        let (msg, permit) = match delivery.take() {
            Ok(taken) => taken,
            Err((frame, part)) => {
                // Discarded by a drop_oldest producer (already counted): keep the
                // order moving and tell the stages downstream.
                Box::pin(complete(&self.args.group, &self.args.shared, order, Vec::new(), None)).await;
                Box::pin(self.on_gap(input, frame, part)).await;
                return;
            }
        };
        if self.args.join.is_some() {
            // Counted received there, unless refused as late.
            Box::pin(self.on_join(input, msg, permit)).await;
            return;
        }
        let (group, shared) = (&self.args.group, &self.args.shared);
        shared.stats[group.index].on_received();
        if group.role == Role::Sink {
            shared.latency.record(msg.born.elapsed().as_secs_f64());
            shared.at_sink(msg.id);
        }
        if self.gathering.is_some() {
            Box::pin(self.gather(input, order, msg, permit)).await;
            return;
        }
        let (frame, part) = (msg.id, msg.part);
        let outs = self.run_input(Some(Input::Message { input, msg })).await;
        let (group, shared) = (&self.args.group, &self.args.shared);
        if outs.is_none() {
            // Failed: joins downstream need not wait for this frame.
            group.gap_downstream(frame, part);
        }
        self.spare = complete(group, shared, order, outs.unwrap_or_default(), Some(permit)).await;
    }

    pub(super) async fn run_input(&mut self, input: Option<Input>) -> Option<Vec<(usize, Message)>> {
        let frame = input.as_ref().map(|i| i.frame());
        let t0 = Instant::now();
        let outcome = self.runner.exec(input, std::mem::take(&mut self.spare)).await;
        let dt = t0.elapsed();
        // Borrowed, not cloned: an `Arc` clone per message is a contended atomic.
        let stats = &self.args.shared.stats[self.args.group.index];
        stats.busy_ns.fetch_add(dt.as_nanos() as u64, Ordering::Relaxed);
        stats.m_processing.record(dt.as_secs_f64());
        match outcome {
            Outcome::Ok(out) => Some(out.items),
            Outcome::Err(e) => {
                self.args.shared.record_error(self.args.group.index, frame, &e);
                None
            }
            Outcome::Panicked(text) => {
                let frame_s = frame.map(|f| f.to_string()).unwrap_or_else(|| "end of stream".into());
                let err = StageError::new("panic", format!("stage panicked on frame {frame_s}: {text}"));
                self.args.shared.record_error(self.args.group.index, frame, &err);
                self.after_panic(&format!("frame {frame_s}"), &text).await;
                None
            }
        }
    }

    /// After the stage panicked `on` a frame (or a batch): the run stops under
    /// `restart = "never"`, else the stage is rebuilt.
    pub(super) async fn after_panic(&mut self, on: &str, text: &str) {
        let stats = self.args.shared.stats[self.args.group.index].clone();
        match self.args.restart {
            Restart::Never => {
                self.args.shared.set_fatal(format!(
                    "stage `{}` (kind `{}`) panicked on {on}: {text}; the graph says restart = \"never\" (use restart = \"on_failure\" to keep the stream going)",
                    stats.id, stats.kind
                ));
            }
            Restart::OnFailure => {
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                stats.m_restarts.increment(1);
                tracing::warn!(stage = %stats.id, on = %on, "restarting the stage after a panic");
                if let Err(e) = self.runner.rebuild(&self.args.config, &self.args.ctx).await {
                    self.args.shared.set_fatal(format!(
                        "stage `{}` could not be restarted after a panic on {on}: {e}",
                        stats.id
                    ));
                }
            }
        }
    }
}
