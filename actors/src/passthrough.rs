//! `passthrough`: forwards every message unchanged (tests, benchmarks, fan-in).

use dataflow_engine::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind};
use schemars::JsonSchema;
use serde::Deserialize;

/// `passthrough` has no keys of its own.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {}

/// The `passthrough` kind.
pub struct Passthrough;

struct Run;

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        if let Input::Message { msg, .. } = input {
            out.emit(msg);
        }
        Ok(())
    }
}

impl StageKind for Passthrough {
    type Config = PassthroughConfig;
    const NAME: &'static str = "passthrough";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Forwards every message unchanged.";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out")],
            ..Ports::default()
        }
    }

    fn build(_: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(Run)))
    }
}
