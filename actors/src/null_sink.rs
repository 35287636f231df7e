//! `null_sink`: consumes messages and discards them (the engine counts them).

use dataflow_engine::{BuildContext, Built, Input, Outputs, Ports, Role, Stage, StageError, StageKind};
use schemars::JsonSchema;
use serde::Deserialize;

/// `null_sink` has no keys of its own.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {}

/// The `null_sink` kind.
pub struct NullSink;

struct Run;

impl Stage for Run {
    fn process(&mut self, _input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        Ok(())
    }
}

impl StageKind for NullSink {
    type Config = NullSinkConfig;
    const NAME: &'static str = "null_sink";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "Discards every message (counted in the metrics and the summary).";

    fn ports(_: &Self::Config) -> Ports {
        Ports::default()
    }

    fn build(_: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(Run)))
    }
}
