//! Heavy-stage workers: a stage value run inline in its actor, or on a dedicated
//! thread of its own (inference, codecs), with panics caught and reported.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::message::Message;
use crate::registry::Configured;
use crate::stage::{BuildContext, Built, Input, Outputs, Stage, StageError};

pub(super) enum Outcome {
    Ok(Outputs),
    Err(StageError),
    Panicked(String),
}

pub(super) fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

pub(super) fn run_guarded(stage: &mut dyn Stage, input: Option<Input>) -> Outcome {
    run_guarded_into(stage, input, Vec::new())
}

/// [`run_guarded`], collecting the outputs into `spare` (an empty vector whose
/// allocation is reused: an inline stage allocates no output list per message).
pub(super) fn run_guarded_into(
    stage: &mut dyn Stage,
    input: Option<Input>,
    mut spare: Vec<(usize, Message)>,
) -> Outcome {
    spare.clear();
    let mut out = Outputs { items: spare };
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| match input {
        Some(i) => stage.process(i, &mut out),
        None => stage.finish(&mut out),
    }));
    match r {
        Ok(Ok(())) => Outcome::Ok(out),
        Ok(Err(e)) => Outcome::Err(e),
        Err(p) => Outcome::Panicked(panic_text(p)),
    }
}

/// What one call of [`Stage::process_batch`] gave: each input's outputs or error, in
/// the inputs' order, or the panic that ended the call (every input of it failed).
pub(super) enum BatchOutcome {
    Done(Vec<Result<Outputs, StageError>>),
    Panicked(String),
}

/// Runs one batch through the stage, panics caught. A stage that returns the wrong
/// number of results fails the inputs left without one (and drops extra results).
pub(super) fn run_guarded_batch(stage: &mut dyn Stage, inputs: Vec<Input>) -> BatchOutcome {
    let n = inputs.len();
    let mut outs: Vec<Outputs> = (0..n).map(|_| Outputs::default()).collect();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| stage.process_batch(inputs, &mut outs)));
    match r {
        Ok(results) => {
            let got = results.len();
            let mut results = results.into_iter();
            let each = outs
                .into_iter()
                .map(|out| match results.next() {
                    Some(Ok(())) => Ok(out),
                    Some(Err(e)) => Err(e),
                    None => Err(StageError::new(
                        "batch",
                        format!("the stage returned {got} results for a batch of {n} inputs; this one got none (a bug in the kind's process_batch)"),
                    )),
                })
                .collect();
            BatchOutcome::Done(each)
        }
        Err(p) => BatchOutcome::Panicked(panic_text(p)),
    }
}

pub(super) fn build_stage(config: &dyn Configured, ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
    match config.build(ctx)? {
        Built::Stage(s) => Ok(super::contract::stage(s, ctx)),
        Built::Source(_) => Err(StageError::new(
            "build",
            "a source was built where a stage was expected",
        )),
    }
}

pub(super) enum Job {
    Process(Option<Input>, oneshot::Sender<Outcome>),
    Batch(Vec<Input>, oneshot::Sender<BatchOutcome>),
    Rebuild(oneshot::Sender<Result<(), StageError>>),
}

/// Where a replica's stage value lives.
pub(super) enum Runner {
    /// Light stages run in the actor's handler.
    Inline(Box<dyn Stage>),
    /// Heavy stages run on a dedicated thread that owns the stage value. The replica's
    /// actor holds the only sender: dropping it (when the actor stops) ends the
    /// thread's loop, and the thread drops the stage.
    Worker(crossbeam_channel::Sender<Job>),
}

impl Runner {
    /// Runs one input; an inline stage collects its outputs into `spare`'s allocation.
    pub(super) async fn exec(&mut self, input: Option<Input>, spare: Vec<(usize, Message)>) -> Outcome {
        match self {
            Runner::Inline(s) => run_guarded_into(s.as_mut(), input, spare),
            Runner::Worker(tx) => {
                let (otx, orx) = oneshot::channel();
                if tx.send(Job::Process(input, otx)).is_err() {
                    return Outcome::Panicked("worker thread is gone".into());
                }
                orx.await
                    .unwrap_or_else(|_| Outcome::Panicked("worker thread is gone".into()))
            }
        }
    }

    /// Runs one batch (on the worker thread for heavy stages).
    pub(super) async fn exec_batch(&mut self, inputs: Vec<Input>) -> BatchOutcome {
        match self {
            Runner::Inline(s) => run_guarded_batch(s.as_mut(), inputs),
            Runner::Worker(tx) => {
                let (otx, orx) = oneshot::channel();
                if tx.send(Job::Batch(inputs, otx)).is_err() {
                    return BatchOutcome::Panicked("worker thread is gone".into());
                }
                orx.await
                    .unwrap_or_else(|_| BatchOutcome::Panicked("worker thread is gone".into()))
            }
        }
    }

    pub(super) async fn rebuild(&mut self, config: &Arc<dyn Configured>, ctx: &BuildContext) -> Result<(), StageError> {
        match self {
            Runner::Inline(s) => {
                *s = build_stage(config.as_ref(), ctx)?;
                Ok(())
            }
            Runner::Worker(tx) => {
                let (otx, orx) = oneshot::channel();
                tx.send(Job::Rebuild(otx))
                    .map_err(|_| StageError::new("panic", "worker thread is gone"))?;
                orx.await
                    .map_err(|_| StageError::new("panic", "worker thread is gone"))?
            }
        }
    }
}

/// Starts the worker thread of one heavy replica and builds the stage on it. The
/// thread ends when the returned sender (held by the replica's [`Runner`]) is dropped;
/// its handle goes to the caller, which hands it to `run` to join.
pub(super) fn spawn_worker(
    config: Arc<dyn Configured>,
    ctx: BuildContext,
) -> Result<(crossbeam_channel::Sender<Job>, std::thread::JoinHandle<()>), StageError> {
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = format!("{}#{}", ctx.stage, ctx.replica);
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut stage = match build_stage(config.as_ref(), &ctx) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for job in rx {
                match job {
                    Job::Process(input, reply) => {
                        let _ = reply.send(run_guarded(stage.as_mut(), input));
                    }
                    Job::Batch(inputs, reply) => {
                        let _ = reply.send(run_guarded_batch(stage.as_mut(), inputs));
                    }
                    Job::Rebuild(reply) => match build_stage(config.as_ref(), &ctx) {
                        Ok(s) => {
                            stage = s;
                            let _ = reply.send(Ok(()));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    },
                }
            }
        })
        .map_err(|e| StageError::io(format!("cannot start a worker thread: {e}")))?;
    let ready = ready_rx
        .recv()
        .map_err(|_| StageError::new("build", "worker thread died while building the stage"));
    match ready {
        Ok(Ok(())) => Ok((tx, thread)),
        Ok(Err(e)) | Err(e) => {
            // The thread has returned (or died): nothing is left to run on it.
            let _ = thread.join();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::{run_guarded_batch, BatchOutcome};
    use crate::message::{Fields, FrameId, Message, Part};
    use crate::stage::{Input, Outputs, Stage, StageError};

    fn input(seq: u64) -> Input {
        Input::Message {
            input: 0,
            msg: Message {
                id: FrameId { stream: 0, seq },
                part: Part::WHOLE,
                captured: SystemTime::now(),
                born: Instant::now(),
                fields: Fields::new(),
            },
        }
    }

    /// Forwards odd frames, fails even ones; returns `keep` results at most; panics on frame 99.
    struct Picky {
        keep: usize,
    }
    impl Stage for Picky {
        fn process(&mut self, _: Input, _: &mut Outputs) -> Result<(), StageError> {
            unreachable!("batches only")
        }
        fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
            let mut results = Vec::new();
            for (i, out) in inputs.into_iter().zip(outs.iter_mut()) {
                let Input::Message { msg, .. } = i else { unreachable!() };
                assert_ne!(msg.id.seq, 99, "frame 99 is poison");
                results.push(if msg.id.seq % 2 == 1 {
                    out.emit(msg);
                    Ok(())
                } else {
                    Err(StageError::input(format!("frame {} is even", msg.id)))
                });
            }
            results.truncate(self.keep);
            results
        }
    }

    fn outcome(keep: usize, seqs: &[u64]) -> Vec<Result<Vec<u64>, String>> {
        match run_guarded_batch(&mut Picky { keep }, seqs.iter().map(|&s| input(s)).collect()) {
            BatchOutcome::Done(each) => each
                .into_iter()
                .map(|r| match r {
                    Ok(out) => Ok(out.items.iter().map(|(_, m)| m.id.seq).collect()),
                    Err(e) => Err(e.message),
                })
                .collect(),
            BatchOutcome::Panicked(text) => vec![Err(format!("panic: {text}"))],
        }
    }

    #[test]
    fn a_batch_keeps_outputs_and_errors_per_input() {
        assert_eq!(
            outcome(usize::MAX, &[1, 2, 3]),
            [Ok(vec![1]), Err("frame 0:2 is even".into()), Ok(vec![3])]
        );
    }

    #[test]
    fn a_batch_with_missing_results_fails_the_inputs_left_without_one() {
        assert_eq!(
            outcome(1, &[1, 3]),
            [
                Ok(vec![1]),
                Err("the stage returned 1 results for a batch of 2 inputs; this one got none (a bug in the kind's process_batch)".into())
            ]
        );
    }

    #[test]
    fn a_panicking_batch_is_caught() {
        let got = outcome(usize::MAX, &[1, 99]);
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .as_ref()
                .is_err_and(|e| e.starts_with("panic: ") && e.contains("frame 99 is poison")),
            "{got:?}"
        );
    }
}
