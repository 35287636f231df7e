//! Heavy-stage workers: a stage value run inline in its actor, or on a dedicated
//! thread of its own (inference, codecs), with panics caught and reported.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::sync::oneshot;

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
    let mut out = Outputs::default();
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

pub(super) fn build_stage(config: &dyn Configured, ctx: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
    match config.build(ctx)? {
        Built::Stage(s) => Ok(s),
        Built::Source(_) => Err(StageError::new(
            "build",
            "a source was built where a stage was expected",
        )),
    }
}

pub(super) enum Job {
    Process(Option<Input>, oneshot::Sender<Outcome>),
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
    pub(super) async fn exec(&mut self, input: Option<Input>) -> Outcome {
        match self {
            Runner::Inline(s) => run_guarded(s.as_mut(), input),
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
