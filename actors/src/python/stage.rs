//! The runtime value of one replica: hands each message to its worker and emits
//! what comes back.
//!
//! One call is in flight per replica: `process` blocks (on the replica's worker
//! thread, the stage being heavy) until the worker answers, so the permit the engine
//! attached to the message is released only when the outputs are back, and the edge's
//! bound holds across the process boundary unchanged.
//!
//! Under the reserved `batch = { max, wait_ms }` key the engine hands `process_batch`
//! up to `max` messages, which go to the worker in one `batch` request (each frame's
//! buffers at its own offsets in the input segment); the class's `process_batch` gets
//! them all in one call (a class without one gets `process` per frame), and the reply
//! carries each frame's outputs or error, so a frame that raises fails alone. The
//! batch's deadline is `timeout_s` per frame, and its hand-over time is split evenly
//! over its frames in `dataflow_python_ipc_seconds`.
//!
//! # Failures
//! - The stage raised: the frame fails with class `python` and the traceback's last
//!   lines; the worker goes on with the next frame.
//! - The worker died (EOF on its pipe: segfault, out-of-memory kill, `kill -9`, `exit`)
//!   or did not answer within `timeout_s` (then it is killed): under the stage's
//!   `restart = "on_failure"` (the default, read from [`BuildContext::restart`]) the
//!   replica starts a fresh worker itself and fails the frame in flight (every frame
//!   of a batch in flight) with class `python`, naming both pids, how the old one
//!   ended and the frames; one error is marked [`StageError::with_restart`], so the
//!   engine counts one restart of the stage
//!   (run summary and `dataflow_stage_restarts_total`). Under `restart = "never"` the replica panics with that
//!   text instead, and the engine ends the run as for any stage. A fresh worker that
//!   cannot start (its `setup` now raises) is a panic too: the engine then applies
//!   `restart` to the whole replica.
//!
//! [`BuildContext::restart`]: dataflow_engine::BuildContext

use std::time::{Duration, Instant};

use dataflow_engine::PortId;
use dataflow_engine::{FrameId, Input, Message, Outputs, Part, Restart, Stage, StageError, Value};

use super::protocol::{self, WireOutput};
use super::worker::{CallError, Spawn, Worker};
use crate::util::merge_joined;

/// How long a worker has to run the stage's `close()` at the end of the stream.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// One replica of a `python` stage.
pub(super) struct Run {
    pub(super) spawn: Spawn,
    pub(super) worker: Worker,
    /// Output ports by name, in port order, resolved when the replica was built.
    pub(super) ports: Vec<(String, PortId)>,
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
    /// After the worker died or hung on `frames`: under `on_failure`, a fresh worker
    /// and the error of each frame (class `python`; the first one counts the restart);
    /// under `never`, a panic that ends the run.
    fn replace_worker(&mut self, frames: &[FrameId], how: &str) -> Vec<StageError> {
        let old = self.worker.pid;
        self.worker.kill();
        let held = match frames {
            [one] => format!("frame {one} was"),
            many => format!(
                "frames {} (a batch of {}) were",
                many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                many.len()
            ),
        };
        let what = format!(
            "the python worker (pid {old}) of stage `{}` {how} while {held} in flight",
            self.spawn.stage
        );
        if self.restart == Restart::Never {
            panic!("{what}");
        }
        match Worker::start(&self.spawn) {
            Ok(w) => {
                self.worker = w;
                let list: Vec<String> = frames.iter().map(ToString::to_string).collect();
                tracing::warn!(stage = %self.spawn.stage, replica = self.spawn.replica, frames = %list.join(","),
                    old_pid = old, pid = self.worker.pid, "python worker replaced: {how}");
                let text = format!(
                    "{what}; restarted it as pid {} (restart = \"on_failure\")",
                    self.worker.pid
                );
                (0..frames.len())
                    .map(|i| match i {
                        0 => StageError::new("python", text.clone()).with_restart(),
                        _ => StageError::new("python", text.clone()),
                    })
                    .collect()
            }
            Err(e) => panic!("{what}, and a fresh worker did not start: {e}"),
        }
    }

    /// Sends on the frames the worker returned for `msg`, on their ports.
    fn emit(&self, msg: &Message, outputs: Vec<WireOutput>, out: &mut Outputs) -> Result<(), StageError> {
        let stage = &self.spawn.stage;
        for o in outputs {
            let port = match &o.port {
                None => PortId::DEFAULT,
                Some(p) => self.ports.iter().find(|(q, _)| q == p).map(|&(_, id)| id).ok_or_else(|| {
                    StageError::new(
                        "python",
                        format!(
                            "stage `{stage}`: frame {} was returned on port `{p}`, which the graph does not declare (`outputs` has: {}); add it to `outputs`",
                            msg.id,
                            self.ports.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?,
            };
            let fields = protocol::decode(&msg.fields, o, self.worker.output_segment())
                .map_err(|e| StageError::new("python", format!("stage `{stage}`, frame {}: {e}", msg.id)))?;
            out.send(port, msg.derive(fields));
        }
        Ok(())
    }

    /// The error of frame `frame` whose code raised `tb`; `batch` is the call's size.
    fn raised(&self, frame: FrameId, batch: usize, tb: &str) -> StageError {
        let of = if batch > 1 {
            format!(" (in a batch of {batch})")
        } else {
            String::new()
        };
        StageError::new(
            "python",
            format!(
                "stage `{}`: `{}` raised on frame {frame}{of}:\n{tb}",
                self.spawn.stage, self.spawn.class
            ),
        )
    }

    /// Records the hand-over time of a call of `frames` frames that took `total`
    /// seconds, `busy` of them in the stage's code (each frame gets its share).
    fn record_ipc(&mut self, frames: usize, total: f64, busy: f64) {
        let each = ((total - busy) / frames.max(1) as f64).max(0.0);
        for _ in 0..frames {
            self.ipc_seconds.record(each);
        }
        self.ipc.0 += frames as u64;
        self.ipc.1 += each * frames as f64;
    }
}

/// The message a python stage's class gets for `input` (a joined frame becomes one
/// message holding every input's fields and `lost_inputs`); `None` for an empty join.
fn message_of(input: Input) -> Option<Message> {
    match input {
        Input::Message { msg, .. } => Some(msg),
        Input::Joined(j) => {
            let first = j.any()?;
            let mut fields = merge_joined(&j);
            fields.insert("lost_inputs", Value::Number(j.lost() as f64));
            Some(first.derive_part(Part::WHOLE, fields))
        }
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Some(msg) = message_of(input) else { return Ok(()) };
        let t0 = Instant::now();
        let (outputs, busy) = match self.worker.call(&msg, self.timeout) {
            Ok((o, busy)) => {
                self.inference.record(busy);
                (o, busy)
            }
            Err(CallError::Raised(tb)) => return Err(self.raised(msg.id, 1, &tb)),
            Err(CallError::Io(e)) => {
                return Err(StageError::io(format!(
                    "stage `{}`, frame {}: {e}",
                    self.spawn.stage, msg.id
                )))
            }
            Err(CallError::Died(how)) => return Err(self.replace_worker(&[msg.id], &how).remove(0)),
            Err(CallError::Timeout(t)) => {
                let how = format!("did not answer within timeout_s = {} and was killed", t.as_secs_f64());
                return Err(self.replace_worker(&[msg.id], &how).remove(0));
            }
        };
        self.emit(&msg, outputs, out)?;
        self.record_ipc(1, t0.elapsed().as_secs_f64(), busy);
        Ok(())
    }

    /// One request for the whole batch (see `batch.rs`); each frame's outputs or error
    /// comes back on its own. The deadline is `timeout_s` per frame of the batch.
    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        // An empty join (no part of the frame arrived) sends nothing.
        let msgs: Vec<Option<Message>> = inputs.into_iter().map(message_of).collect();
        let present: Vec<bool> = msgs.iter().map(Option::is_some).collect();
        let sent: Vec<Message> = msgs.into_iter().flatten().collect();
        let ids: Vec<FrameId> = sent.iter().map(|m| m.id).collect();
        let n = sent.len();
        let t0 = Instant::now();
        let timeout = self.timeout.saturating_mul(n.max(1) as u32);
        let (mut each, busy): (Vec<Result<Vec<WireOutput>, StageError>>, _) =
            match self.worker.call_batch(&sent, timeout) {
                Ok((each, busy)) => {
                    self.inference.record(busy);
                    let each = each.into_iter().zip(&ids);
                    (
                        each.map(|(r, &id)| r.map_err(|tb| self.raised(id, n, &tb))).collect(),
                        Some(busy),
                    )
                }
                Err(CallError::Raised(tb)) => (ids.iter().map(|&id| Err(self.raised(id, n, &tb))).collect(), None),
                Err(CallError::Io(e)) => {
                    let (stage, frames) = (&self.spawn.stage, list(&ids));
                    let e = StageError::io(format!("stage `{stage}`, batch of frames {frames}: {e}"));
                    (ids.iter().map(|_| Err(e.clone())).collect(), None)
                }
                Err(CallError::Died(how)) => (self.replace_worker(&ids, &how).into_iter().map(Err).collect(), None),
                Err(CallError::Timeout(t)) => {
                    let how = format!(
                        "did not answer within {} s (timeout_s = {} per frame of the batch) and was killed",
                        t.as_secs_f64(),
                        self.timeout.as_secs_f64()
                    );
                    (self.replace_worker(&ids, &how).into_iter().map(Err).collect(), None)
                }
            };
        each.reverse();
        let mut sent = sent.iter();
        let mut results = Vec::with_capacity(present.len());
        for (here, out) in present.into_iter().zip(outs.iter_mut()) {
            if !here {
                results.push(Ok(()));
                continue;
            }
            // One result per message sent (`call_batch` checks the reply's count).
            results.push(match (each.pop(), sent.next()) {
                (Some(r), Some(msg)) => r.and_then(|o| self.emit(msg, o, out)),
                _ => Ok(()),
            });
        }
        if let Some(busy) = busy {
            self.record_ipc(n, t0.elapsed().as_secs_f64(), busy);
        }
        results
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

/// "0:4, 0:5, 0:6".
fn list(ids: &[FrameId]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
