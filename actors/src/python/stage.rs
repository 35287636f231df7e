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
//! - The worker died (EOF on its pipe: segfault, out-of-memory kill, `kill -9`) or did
//!   not answer within `timeout_s` (then it is killed): the replica panics with what
//!   happened. The engine records the frame in flight under class `panic` and, as for
//!   any crashed stage, applies the graph's `restart` key: `on_failure` (the default)
//!   builds the replica again — a fresh worker, counted in `stage_restarts` — and
//!   `never` ends the run. This is how the reserved `restart` key reaches this kind
//!   without the kind seeing it.

use std::time::{Duration, Instant};

use dataflow_engine::{Input, Outputs, Stage, StageError};

use super::protocol;
use super::worker::{CallError, Spawn, Worker};

/// How long a worker has to run the stage's `close()` at the end of the stream.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// One replica of a `python` stage.
pub(super) struct Run {
    pub(super) spawn: Spawn,
    pub(super) worker: Worker,
    /// Output port names, in port order.
    pub(super) ports: Vec<String>,
    pub(super) timeout: Duration,
    /// `dataflow_model_inference_seconds{model = <class>, provider = "python"}`: time in `process`.
    pub(super) inference: metrics::Histogram,
    /// Frames handed over and the seconds spent outside `process` (headers, pipes,
    /// shared memory, decoding the outputs), reported when the stream ends.
    pub(super) ipc: (u64, f64),
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let stage = &self.spawn.stage;
        let t0 = Instant::now();
        let outputs = match self.worker.call(&msg, self.timeout) {
            Ok((o, busy)) => {
                self.inference.record(busy);
                self.ipc.0 += 1;
                self.ipc.1 -= busy;
                o
            }
            Err(CallError::Raised(tb)) => {
                return Err(StageError::new(
                    "python",
                    format!("stage `{stage}`: `{}` raised on frame {}:\n{tb}", self.spawn.class, msg.id),
                ))
            }
            Err(CallError::Io(e)) => return Err(StageError::io(format!("stage `{stage}`, frame {}: {e}", msg.id))),
            Err(CallError::Died(how)) => {
                self.worker.kill();
                panic!(
                    "the python worker (pid {}) of stage `{stage}` {how} while frame {} was in flight",
                    self.worker.pid, msg.id
                );
            }
            Err(CallError::Timeout(t)) => panic!(
                "the python worker (pid {}) of stage `{stage}` did not answer frame {} within timeout_s = {}; it was killed",
                self.worker.pid,
                msg.id,
                t.as_secs_f64()
            ),
        };
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
        self.ipc.1 += t0.elapsed().as_secs_f64();
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
