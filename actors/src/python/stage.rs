//! The runtime value of one replica: hands each message to its worker and emits
//! what comes back.
//!
//! One frame is in flight per replica: `process` blocks (on the replica's worker
//! thread, the stage being heavy) until the worker answers, so the permit the engine
//! attached to the message is released only when the outputs are back, and the edge's
//! bound holds across the process boundary unchanged.
//!
//! # Failures
//! - The stage raised: the frame fails with class `python` and the traceback's last
//!   lines; the worker goes on with the next frame.
//! - The worker died (EOF on its pipe: segfault, out-of-memory kill, `kill -9`, `exit`)
//!   or did not answer within `timeout_s` (then it is killed): under the stage's
//!   `restart = "on_failure"` (the default, read from [`BuildContext::restart`]) the
//!   replica starts a fresh worker itself and fails the frame in flight with class
//!   `python`, naming both pids, how the old one ended and the frame; the error is
//!   marked [`StageError::with_restart`], so the engine counts a restart of the stage
//!   (run summary and `dataflow_stage_restarts_total`). Under `restart = "never"` the replica panics with that
//!   text instead, and the engine ends the run as for any stage. A fresh worker that
//!   cannot start (its `setup` now raises) is a panic too: the engine then applies
//!   `restart` to the whole replica.
//!
//! [`BuildContext::restart`]: dataflow_engine::BuildContext

use std::time::{Duration, Instant};

use dataflow_engine::{FrameId, Input, Outputs, Part, Restart, Stage, StageError, Value};

use super::protocol;
use super::worker::{CallError, Spawn, Worker};
use crate::util::merge_joined;

/// How long a worker has to run the stage's `close()` at the end of the stream.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// One replica of a `python` stage.
pub(super) struct Run {
    pub(super) spawn: Spawn,
    pub(super) worker: Worker,
    /// Output port names, in port order.
    pub(super) ports: Vec<String>,
    pub(super) timeout: Duration,
    /// The stage's `restart` key: whether a dead worker is replaced or ends the run.
    pub(super) restart: Restart,
    /// `dataflow_model_inference_seconds{model = <class>, provider = "python"}`: time in `process`.
    pub(super) inference: metrics::Histogram,
    /// `dataflow_python_ipc_seconds{stage}`: per frame, the call's time outside `process`
    /// (headers, pipes, shared memory, decoding the outputs).
    pub(super) ipc_seconds: metrics::Histogram,
    /// Frames handed over and the sum of their hand-over seconds, logged when the stream ends.
    pub(super) ipc: (u64, f64),
}

impl Run {
    /// After the worker died or hung on `frame`: under `on_failure`, a fresh worker
    /// and the frame's error (class `python`); under `never`, a panic that ends the run.
    fn replace_worker(&mut self, frame: FrameId, how: &str) -> StageError {
        let old = self.worker.pid;
        self.worker.kill();
        let what = format!(
            "the python worker (pid {old}) of stage `{}` {how} while frame {frame} was in flight",
            self.spawn.stage
        );
        if self.restart == Restart::Never {
            panic!("{what}");
        }
        match Worker::start(&self.spawn) {
            Ok(w) => {
                self.worker = w;
                tracing::warn!(stage = %self.spawn.stage, replica = self.spawn.replica, frame = %frame,
                    old_pid = old, pid = self.worker.pid, "python worker replaced: {how}");
                StageError::new(
                    "python",
                    format!(
                        "{what}; restarted it as pid {} (restart = \"on_failure\")",
                        self.worker.pid
                    ),
                )
                .with_restart()
            }
            Err(e) => panic!("{what}, and a fresh worker did not start: {e}"),
        }
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let msg = match input {
            Input::Message { msg, .. } => msg,
            Input::Joined(j) => {
                let Some(first) = j.any() else { return Ok(()) };
                let mut fields = merge_joined(&j);
                fields.insert("lost_inputs", Value::Number(j.lost() as f64));
                first.derive_part(Part::WHOLE, fields)
            }
        };
        let t0 = Instant::now();
        let (outputs, busy) = match self.worker.call(&msg, self.timeout) {
            Ok((o, busy)) => {
                self.inference.record(busy);
                (o, busy)
            }
            Err(CallError::Raised(tb)) => {
                return Err(StageError::new(
                    "python",
                    format!(
                        "stage `{}`: `{}` raised on frame {}:\n{tb}",
                        self.spawn.stage, self.spawn.class, msg.id
                    ),
                ))
            }
            Err(CallError::Io(e)) => {
                return Err(StageError::io(format!(
                    "stage `{}`, frame {}: {e}",
                    self.spawn.stage, msg.id
                )))
            }
            Err(CallError::Died(how)) => return Err(self.replace_worker(msg.id, &how)),
            Err(CallError::Timeout(t)) => {
                let how = format!("did not answer within timeout_s = {} and was killed", t.as_secs_f64());
                return Err(self.replace_worker(msg.id, &how));
            }
        };
        let stage = &self.spawn.stage;
        for o in outputs {
            let port = match &o.port {
                None => 0,
                Some(p) => self.ports.iter().position(|q| q == p).ok_or_else(|| {
                    StageError::new(
                        "python",
                        format!(
                            "stage `{stage}`: frame {} was returned on port `{p}`, which the graph does not declare (`outputs` has: {}); add it to `outputs`",
                            msg.id,
                            self.ports.join(", ")
                        ),
                    )
                })?,
            };
            let fields = protocol::decode(&msg.fields, o, self.worker.output_segment())
                .map_err(|e| StageError::new("python", format!("stage `{stage}`, frame {}: {e}", msg.id)))?;
            out.send(port, msg.derive(fields));
        }
        let ipc = (t0.elapsed().as_secs_f64() - busy).max(0.0);
        self.ipc_seconds.record(ipc);
        self.ipc.0 += 1;
        self.ipc.1 += ipc;
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        self.worker.close(CLOSE_GRACE);
        let (frames, secs) = self.ipc;
        tracing::info!(
            stage = %self.spawn.stage,
            replica = self.spawn.replica,
            frames,
            ipc_us_per_frame = if frames > 0 { secs / frames as f64 * 1e6 } else { 0.0 },
            "python worker closed"
        );
        Ok(())
    }
}
