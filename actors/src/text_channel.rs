//! `text_channel`: a caption over a noisy digital link (DESIGN §6).
//!
//! UTF-8 bytes → bits → Gray-mapped BPSK/QPSK/16-QAM/64-QAM with unit symbol
//! energy → complex AWGN at `snr_db` → hard decisions → bytes → lossy UTF-8.
//! The noise of each message is drawn from the graph seed, the stage, the frame
//! and the part, so each tile has its own independent channel and a run is
//! reproducible bit for bit. The sent text is kept in `sent`; `text` becomes
//! the received text; `bits` and `bit_errors` count the link; `ber_expected` is the
//! bit error rate the link's modulation has at its SNR in theory (0 on an ideal
//! link), which a channel-aware corrector (`correct model = "noisy_channel"`) uses.

use std::sync::Arc;

use dataflow_engine::{BuildContext, Built, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
use dataflow_models::channel::{decode_text_lossy, expected_ber, Modulation};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::Link;

/// Keys of `text_channel` (inherited from `[channel]` when not set).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextChannelConfig {
    /// Signal-to-noise ratio Es/N0 in dB.
    #[serde(default = "default_snr")]
    pub snr_db: f64,
    /// Modulation.
    #[serde(default = "default_modulation")]
    pub modulation: Modulation,
    /// An error-free link (bits are still counted).
    #[serde(default)]
    pub ideal: bool,
}

fn default_snr() -> f64 {
    10.0
}
fn default_modulation() -> Modulation {
    Modulation::Bpsk
}

/// The `text_channel` kind.
pub struct TextChannel;

struct Run {
    link: Link,
    /// Theoretical bit error rate of the link, carried as `ber_expected`.
    ber_expected: f64,
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let sent = msg
            .fields
            .text("text")
            .ok_or_else(|| StageError::input(format!("frame {} has no `text` to send", msg.id)))?
            .to_string();
        let tx = self.link.send(sent.as_bytes(), msg.id.seq, msg.part.index)?;
        let received = decode_text_lossy(&tx.received);
        let mut fields = msg.fields.clone();
        fields.insert("sent", Value::Text(Arc::from(sent.as_str())));
        fields.insert("text", Value::Text(Arc::from(received.as_str())));
        fields.insert("bits", Value::Number(tx.bits as f64));
        fields.insert("bit_errors", Value::Number(tx.bit_errors as f64));
        fields.insert("ber_expected", Value::Number(self.ber_expected));
        out.emit(msg.derive(fields));
        Ok(())
    }
}

impl StageKind for TextChannel {
    type Config = TextChannelConfig;
    const NAME: &'static str = "text_channel";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Sends `text` over Gray-mapped QAM and AWGN; keeps `sent`, counts bits and bit errors.";
    const CHANNEL: bool = true;

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::passing(
                "out",
                &["text", "sent", "bits", "bit_errors", "ber_expected"],
            )],
            requires: vec!["text".into()],
            ..Ports::default()
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let link = Link::new(c.snr_db, c.modulation, c.ideal, ctx)?;
        let ber_expected = if c.ideal {
            0.0
        } else {
            expected_ber(c.modulation, c.snr_db)
        };
        Ok(Built::Stage(Box::new(Run { link, ber_expected })))
    }
}
