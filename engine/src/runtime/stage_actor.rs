//! One transform or sink replica: its stage loop takes messages from the replica's
//! inbox, runs the stage, routes the outputs and restarts the stage after a panic.
//!
//! The loop is a plain tokio task reading one tokio mpsc queue (the [`Inbox`]) that
//! carries data and control alike, in the order they were sent. The replica's ractor
//! actor builds the stage, starts the loop and owns it: stopping the actor (the
//! shutdown's `stop_and_join`, or the loop itself after end of stream) ends the loop
//! and awaits it, so nothing of the replica outlives its actor. Messages do not go
//! through ractor's mailbox: its per-message machinery (a boxed message, a `select!`
//! over the signal and stop ports, the handler's future moved by value) cost more
//! than the rest of a hop (BENCHMARKS.md §20.1-20.2).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use super::batch::Gathering;
use super::group::{route, route_now, route_stuck, Group, Inbox, StageMsg};
use super::sequencer::complete;
use super::shared::RunShared;
use super::worker::{build_stage, run_guarded_into, spawn_worker, Outcome, Runner};
use crate::edge::{Delivery, Permit};
use crate::join::JoinTable;
use crate::message::{FrameId, Message};
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
    /// The sending end of the replica's inbox (for its ticker and batch timer).
    pub(super) inbox: Inbox,
    /// The receiving end, which the stage loop reads; taken when the loop starts.
    pub(super) receiver: Option<UnboundedReceiver<StageMsg>>,
}

/// The state of a replica's stage loop, owned by the loop's task.
pub(super) struct ActorState {
    pub(super) args: ActorArgs,
    pub(super) runner: Runner,
    /// The task that sends a joining stage its `Tick`s; aborted when the loop ends.
    pub(super) ticker: Option<JoinHandle<()>>,
    pub(super) eos_seen: usize,
    /// Frames a joining stage is gathering (empty for other stages).
    pub(super) joins: JoinTable<Permit>,
    /// The batch a batched stage is gathering (`None` for other stages).
    pub(super) gathering: Option<Gathering>,
    /// The emptied output list of the last message, kept for its allocation.
    pub(super) spare: Vec<(usize, Message)>,
}

impl Drop for ActorState {
    /// The loop ended (end of stream) or was aborted (the actor stopped): its timers go.
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(g) = self.gathering.as_mut() {
            g.stop_timer();
        }
    }
}

/// A replica's running stage loop, as its actor holds it.
pub(super) struct Loop {
    task: Option<JoinHandle<()>>,
    /// Set when the actor stops: the loop ends before its next message. (Aborting the
    /// task alone would not stop a loop that never waits: with messages queued, every
    /// `recv` is ready at once.)
    stopping: Arc<AtomicBool>,
}

impl Actor for StageActor {
    type Msg = ();
    type State = Loop;
    type Arguments = ActorArgs;

    async fn pre_start(&self, myself: ActorRef<()>, mut args: ActorArgs) -> Result<Loop, ActorProcessingErr> {
        let runner = if args.heavy {
            let (config, ctx) = (args.config.clone(), args.ctx.clone());
            let (tx, thread) = tokio::task::spawn_blocking(move || spawn_worker(config, ctx)).await??;
            // `run` joins the thread once this actor has stopped and its loop dropped `tx`.
            args.shared.keep_thread(thread);
            Runner::Worker(tx)
        } else {
            Runner::Inline(build_stage(args.config.as_ref(), &args.ctx)?)
        };
        let mut ticker = None;
        if let Some(timeout) = args.join {
            let me = args.inbox.clone();
            let every = (timeout / 4).max(Duration::from_millis(10));
            ticker = Some(tokio::spawn(async move {
                let mut iv = tokio::time::interval(every);
                loop {
                    iv.tick().await;
                    if me.send(StageMsg::Tick).is_err() {
                        break;
                    }
                }
            }));
        }
        let receiver = args.receiver.take().ok_or("the replica's inbox was already read")?;
        let state = ActorState {
            runner,
            ticker,
            eos_seen: 0,
            joins: JoinTable::new(args.n_inputs, args.join.unwrap_or_default(), args.mailbox),
            gathering: args.batch.map(|b| Gathering::new(b, args.inbox.clone())),
            spare: Vec::new(),
            args,
        };
        let stopping = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(stage_loop(state, receiver, stopping.clone(), myself));
        Ok(Loop {
            task: Some(task),
            stopping,
        })
    }

    async fn handle(&self, _m: ActorRef<()>, _msg: (), _s: &mut Loop) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    /// Ends the loop if it still runs (a stop or an abort of the run; after end of
    /// stream it has returned) and awaits it, so its state (the places its messages
    /// hold, the inbox with the messages still queued, a heavy stage's worker channel)
    /// is dropped before the actor's task ends.
    async fn post_stop(&self, _m: ActorRef<()>, running: &mut Loop) -> Result<(), ActorProcessingErr> {
        running.stopping.store(true, Ordering::Release);
        if let Some(task) = running.task.take() {
            task.abort();
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!("a stage loop panicked: {}", super::worker::panic_text(e.into_panic()));
                }
            }
        }
        Ok(())
    }
}

/// The replica's stage loop: every message of its inbox in order, until end of stream
/// on every input has finished the stage (then the replica's actor is stopped) or the
/// actor is stopped (`stopping`, checked between messages, as ractor checks its stop
/// signal between the messages of its mailbox).
async fn stage_loop(
    mut state: ActorState,
    mut inbox: UnboundedReceiver<StageMsg>,
    stopping: Arc<AtomicBool>,
    myself: ActorRef<()>,
) {
    // However the loop ends (end of stream, a stop, or a panic outside the stage's own
    // guarded call), its actor stops, as ractor stopped an actor whose handler panicked.
    let _stop = StopOnDrop(myself);
    while let Some(msg) = inbox.recv().await {
        if stopping.load(Ordering::Acquire) {
            break;
        }
        // The rare arms are boxed, leaving the loop's future the size of the data path.
        match msg {
            StageMsg::Data { input, order, delivery } => state.on_data(input, order, delivery).await,
            StageMsg::Gap { input, frame, part } => Box::pin(state.on_gap(input, frame, part)).await,
            StageMsg::Tick => Box::pin(state.expire_joins(false)).await,
            StageMsg::Flush { batch } => Box::pin(state.on_flush(batch)).await,
            StageMsg::Eos => {
                if Box::pin(state.on_eos()).await {
                    break;
                }
            }
        }
    }
    // The state (and the inbox, with anything still queued) is dropped before the
    // actor's `post_stop` finishes awaiting this task.
    drop(state);
    drop(inbox);
}

/// A stage call, once [`ActorState::settle`] has recorded it.
enum Settled {
    Outputs(Vec<(usize, Message)>),
    /// Failed (counted and reported).
    Failed,
    /// Panicked `on` a frame (or end of stream) with `text`: the caller rebuilds the stage.
    Panicked {
        on: String,
        text: String,
    },
}

/// Stops the replica's actor when the stage loop ends, by returning or by unwinding.
struct StopOnDrop(ActorRef<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop(None);
    }
}

impl ActorState {
    /// End of stream on one input; after the last, the stage finishes (`true`: the
    /// loop ends and the actor stops).
    async fn on_eos(&mut self) -> bool {
        self.eos_seen += 1;
        if self.eos_seen < self.args.group.input_edges {
            return false;
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
        true
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
        let input = Some(Input::Message { input, msg });
        // An inline stage runs right here, with no future built around the call.
        let outs = match self.call_inline(input) {
            Ok((outcome, dt)) => match self.settle(Some(frame), dt, outcome) {
                Settled::Outputs(outs) => Some(outs),
                Settled::Failed => None,
                Settled::Panicked { on, text } => {
                    Box::pin(self.after_panic(&on, &text)).await;
                    None
                }
            },
            Err(input) => self.run_input(input).await,
        };
        let (group, shared) = (&self.args.group, &self.args.shared);
        let Some(mut outs) = outs else {
            // Failed: joins downstream need not wait for this frame.
            group.gap_downstream(frame, part);
            self.spare = complete(group, shared, order, Vec::new(), Some(permit)).await;
            return;
        };
        if group.sequencer.is_some() {
            self.spare = complete(group, shared, order, outs, Some(permit)).await;
            return;
        }
        // Unsequenced (sequencer::complete without its future): the outputs go on, waiting
        // only where an edge is full, then the input's place is freed.
        if let Some(stuck) = route_now(group, shared, &mut outs, None) {
            route_stuck(group, shared, stuck, None).await;
        }
        drop(permit);
        self.spare = outs;
    }

    /// Runs the stage on `input` (`None`: end of stream) in the replica's way: in place,
    /// or on its worker thread for a heavy stage; its time and outcome recorded. `None`
    /// when it failed or panicked (counted and reported; the stage rebuilt after a panic).
    pub(super) async fn run_input(&mut self, input: Option<Input>) -> Option<Vec<(usize, Message)>> {
        let frame = input.as_ref().map(|i| i.frame());
        let t0 = Instant::now();
        let outcome = self.runner.exec(input, std::mem::take(&mut self.spare)).await;
        match self.settle(frame, t0.elapsed(), outcome) {
            Settled::Outputs(outs) => Some(outs),
            Settled::Failed => None,
            Settled::Panicked { on, text } => {
                self.after_panic(&on, &text).await;
                None
            }
        }
    }

    /// An inline stage's call on `input`, panics caught, and its duration: the data
    /// path's [`run_input`](Self::run_input) without a future; `Err` gives the input back
    /// when the stage runs on a worker thread.
    fn call_inline(&mut self, input: Option<Input>) -> Result<(Outcome, Duration), Option<Input>> {
        let Runner::Inline(stage) = &mut self.runner else {
            return Err(input);
        };
        let t0 = Instant::now();
        let outcome = run_guarded_into(stage.as_mut(), input, std::mem::take(&mut self.spare));
        Ok((outcome, t0.elapsed()))
    }

    /// Records a call's time and outcome (a failure or a panic counted and reported).
    fn settle(&mut self, frame: Option<FrameId>, dt: Duration, outcome: Outcome) -> Settled {
        // Borrowed, not cloned: an `Arc` clone per message is a contended atomic.
        let stats = &self.args.shared.stats[self.args.group.index];
        stats.busy_ns.fetch_add(dt.as_nanos() as u64, Ordering::Relaxed);
        stats.m_processing.record(dt.as_secs_f64());
        match outcome {
            Outcome::Ok(out) => Settled::Outputs(out.items),
            Outcome::Err(e) => {
                self.args.shared.record_error(self.args.group.index, frame, &e);
                Settled::Failed
            }
            Outcome::Panicked(text) => {
                let frame_s = frame.map(|f| f.to_string()).unwrap_or_else(|| "end of stream".into());
                let err = StageError::new("panic", format!("stage panicked on frame {frame_s}: {text}"));
                self.args.shared.record_error(self.args.group.index, frame, &err);
                Settled::Panicked {
                    on: format!("frame {frame_s}"),
                    text,
                }
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
