//! `delay`: sleeps a set time per call, then forwards its messages (a slow stage for tests
//! and benchmarks). Unbatched, a call is one message; with `batch = { max, wait_ms }` one
//! call takes a whole batch and sleeps once, like a model whose cost is per call.

use std::time::Duration;

use dataflow_engine::{
    check_range, BuildContext, Built, Input, KeyProblem, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind,
    MAX_DURATION_S,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Keys of `delay`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    /// Milliseconds to sleep per call: per message, or per batch under `batch` (0 to one year).
    #[serde(default)]
    pub ms: f64,
}

/// The `delay` kind.
pub struct Delay;

struct Run {
    pause: Duration,
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        std::thread::sleep(self.pause);
        if let Input::Message { msg, .. } = input {
            out.emit(msg);
        }
        Ok(())
    }

    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        std::thread::sleep(self.pause);
        inputs
            .into_iter()
            .zip(outs.iter_mut())
            .map(|(input, out)| {
                if let Input::Message { msg, .. } = input {
                    out.emit(msg);
                }
                Ok(())
            })
            .collect()
    }
}

impl StageKind for Delay {
    type Config = DelayConfig;
    const NAME: &'static str = "delay";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Sleeps `ms` milliseconds per call (one message, or one batch), then forwards.";
    const BATCH: bool = true;

    fn ports(_: &Self::Config) -> Ports {
        // Sleeping is blocking work: it runs on the replica's own thread.
        Ports {
            outputs: vec![OutPort::forwarding("out")],
            heavy: true,
            ..Ports::default()
        }
    }

    fn validate(c: &Self::Config) -> Vec<KeyProblem> {
        check_range("ms", c.ms, 0.0, MAX_DURATION_S * 1000.0, "milliseconds")
            .into_iter()
            .collect()
    }

    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        if let Some(p) = Self::validate(c).into_iter().next() {
            return Err(StageError::input(p.message));
        }
        Ok(Built::Stage(Box::new(Run {
            pause: Duration::from_secs_f64(c.ms / 1000.0),
        })))
    }
}
