//! Stage kinds the runtime's own tests build graphs from (`contract`, `shutdown`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::message::{FieldType, Fields, Value};
use crate::stage::{
    BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Source, SourceItem, Stage, StageError, StageKind,
    StopFlag,
};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NoKeys {}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CountConfig {
    /// Frames to produce; endless when absent.
    #[serde(default)]
    frames: Option<u64>,
    /// Milliseconds between frames.
    #[serde(default)]
    pace_ms: u64,
    /// Also sends field `x`, which the port does not declare.
    #[serde(default)]
    extra: bool,
}

/// `frames` frames with a number `n` (1, 2, …), `pace_ms` apart, until the stop flag.
pub(super) struct Count;
struct Counting {
    sent: u64,
    config: CountConfig,
}
impl Source for Counting {
    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        let c = &self.config;
        if stop.is_set() || c.frames.is_some_and(|n| self.sent >= n) {
            return SourceItem::End;
        }
        if c.pace_ms > 0 {
            std::thread::sleep(Duration::from_millis(c.pace_ms));
        }
        self.sent += 1;
        let mut f = Fields::new().with("n", Value::Number(self.sent as f64));
        if c.extra {
            f.insert("x", Value::Number(0.0));
        }
        SourceItem::Frame(f)
    }
}
impl StageKind for Count {
    type Config = CountConfig;
    const NAME: &'static str = "count";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "numbers";
    fn ports(_: &CountConfig) -> Ports {
        Ports {
            outputs: vec![OutPort::new("out").with("n", FieldType::Number)],
            ..Ports::default()
        }
    }
    fn build(c: &CountConfig, _: &BuildContext) -> Result<Built, StageError> {
        let config = CountConfig {
            frames: c.frames,
            pace_ms: c.pace_ms,
            extra: c.extra,
        };
        Ok(Built::Source(Box::new(Counting { sent: 0, config })))
    }
}

/// Passes every message on unchanged.
pub(super) struct Passing;
impl Stage for Passing {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        if let Some(m) = input.message() {
            out.emit(m.clone());
        }
        Ok(())
    }
}

/// Takes every frame.
pub(super) struct Sink;
struct Taking;
impl Stage for Taking {
    fn process(&mut self, _: Input, _: &mut Outputs) -> Result<(), StageError> {
        Ok(())
    }
}
impl StageKind for Sink {
    type Config = NoKeys;
    const NAME: &'static str = "sink";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "takes frames";
    fn ports(_: &NoKeys) -> Ports {
        Ports::default()
    }
    fn build(_: &NoKeys, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(Taking)))
    }
}
