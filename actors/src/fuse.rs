//! `fuse`: gathers the received texts of one frame, in tile order.
//!
//! A joining stage: the engine hands it every part of a frame from its input(s),
//! or what arrived when `timeout_ms` passed. It emits one message per frame with
//! `texts` (received, in part order; a lost part is `None`), `sent_texts`,
//! `lost_parts`, and the summed `bits`, `bit_errors` and `channel_uses` (complex channel
//! symbols, pilots included; absent when no part reported it) of the parts; the parts'
//! `ber_expected` (the text channel's theoretical bit error rate) is passed on.

use std::sync::Arc;
use std::time::Duration;

use dataflow_engine::{
    BuildContext, Built, Fields, Input, OutPort, Outputs, Part, Ports, Role, Stage, StageError, StageKind, Value,
};
use dataflow_engine::{Field, FieldType};
use schemars::JsonSchema;
use serde::Deserialize;

/// Keys of `fuse`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FuseConfig {
    /// How long to wait for the missing parts of a frame before emitting it with them marked lost.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    30_000
}

/// The `fuse` kind.
pub struct Fuse;

struct Run;

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Joined(j) = input else { return Ok(()) };
        let Some(first) = j.any() else { return Ok(()) };
        let mut received = Vec::new();
        let mut sent = Vec::new();
        let (mut bits, mut errors) = (0.0, 0.0);
        let mut channel_uses: Option<f64> = None;
        let mut fields = Fields::new();
        for parts in &j.parts {
            for p in parts {
                match p {
                    Some(m) => {
                        received.push(m.fields.text("text").map(str::to_string));
                        sent.push(m.fields.text("sent").or(m.fields.text("text")).map(str::to_string));
                        bits += m.fields.number("bits").unwrap_or(0.0);
                        errors += m.fields.number("bit_errors").unwrap_or(0.0);
                        if let Some(uses) = m.fields.number("channel_uses") {
                            *channel_uses.get_or_insert(0.0) += uses;
                        }
                        for key in ["name", "frame_size", "grid_rows", "grid_cols", "ber_expected"] {
                            if let Some(v) = m.fields.get(key) {
                                fields.insert(key, v.clone());
                            }
                        }
                    }
                    None => {
                        received.push(None);
                        sent.push(None);
                    }
                }
            }
        }
        let lost = j.lost();
        if lost > 0 {
            tracing::warn!(frame = %j.id, lost, "fuse: parts of the frame did not arrive; they are marked lost");
        }
        fields.insert("texts", Value::Texts(Arc::from(received)));
        fields.insert("sent_texts", Value::Texts(Arc::from(sent)));
        fields.insert("lost_parts", Value::Number(lost as f64));
        fields.insert("bits", Value::Number(bits));
        fields.insert("bit_errors", Value::Number(errors));
        if let Some(uses) = channel_uses {
            fields.insert("channel_uses", Value::Number(uses));
        }
        out.emit(first.derive_part(Part::WHOLE, fields));
        Ok(())
    }
}

impl StageKind for Fuse {
    type Config = FuseConfig;
    const NAME: &'static str = "fuse";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Joins the received texts of a frame in tile order, marking lost parts.";

    fn validate(c: &Self::Config) -> Vec<dataflow_engine::KeyProblem> {
        dataflow_engine::check_timeout_ms("timeout_ms", c.timeout_ms)
            .into_iter()
            .collect()
    }

    fn ports(c: &Self::Config) -> Ports {
        Ports {
            // `name`, `frame_size`, the grid and `ber_expected` are copied from the parts.
            outputs: vec![OutPort::new("out")
                .with_each(&["texts", "sent_texts"], FieldType::Texts)
                .with("name", FieldType::Text)
                .with("frame_size", FieldType::Rect)
                .with_each(
                    &[
                        "lost_parts",
                        "bits",
                        "bit_errors",
                        "channel_uses",
                        "ber_expected",
                        "grid_rows",
                        "grid_cols",
                    ],
                    FieldType::Number,
                )],
            requires: vec![Field::new("text", FieldType::Text)],
            join: Some(Duration::from_millis(c.timeout_ms.max(1))),
            ..Ports::default()
        }
    }

    fn build(_: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(Run)))
    }
}
