//! `text_channel`: a caption over a noisy digital link (DESIGN §6).
//!
//! UTF-8 bytes → bits → Gray-mapped BPSK/QPSK/16-QAM/64-QAM with unit symbol
//! energy → flat fading (`model`, `coherence`, `csi`; none by default) and complex
//! AWGN at average Es/N0 `snr_db` → equalisation → hard decisions → bytes → lossy UTF-8.
//! The fading and noise of each message is drawn from the graph seed, the stage, the frame
//! and the part, so each tile has its own independent channel and a run is
//! reproducible bit for bit. The sent text is kept in `sent`; `text` becomes
//! the received text; `bits` (payload bits sent) and `bit_errors` count the link and
//! `channel_uses` the complex symbols it took (pilots included); `ber_expected` is the
//! bit error rate the link's modulation has at its SNR in theory, averaged over the
//! fading with perfect CSI (0 on an ideal link), which a channel-aware corrector
//! (`correct model = "noisy_channel"`) uses.

use std::sync::Arc;

use dataflow_engine::{
    BuildContext, Built, Input, KeyProblem, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value,
};
use dataflow_engine::{Field, FieldType};
use dataflow_models::channel::{decode_text_lossy, Channel, Coherence, Csi, Fading, FadingModel, Modulation, SnrUnit};
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
    /// Fading: `awgn` (none), `rayleigh` or `rician`. `snr_db` stays the average Es/N0
    /// (E|h|² = 1); the receiver equalises by the (estimated) gain.
    #[serde(default)]
    pub model: FadingModel,
    /// Rician K factor in dB (line-of-sight over scattered power); only with `model = "rician"`.
    #[serde(default)]
    pub k_factor: Option<f64>,
    /// How long one fading gain lasts: `"symbol"` (fast fading), N channel uses including
    /// pilots (block fading) or `"message"` (quasi-static, one gain per message; the default).
    #[serde(default)]
    pub coherence: Coherence,
    /// What the receiver knows of the gain: `"perfect"` (default) or `{ pilots = N }`, N pilot
    /// symbols per coherence block and a least-squares estimate; pilots count as channel uses.
    #[serde(default)]
    pub csi: Csi,
    /// Unit of `snr_db`: `esn0` (Es/N0, the default) or `ebn0` (Eb/N0, converted with the
    /// modulation's bits per symbol and the code rate).
    #[serde(default)]
    pub snr_unit: SnrUnit,
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
        fields.insert("channel_uses", Value::Number(tx.symbols as f64));
        fields.insert("ber_expected", Value::Number(self.ber_expected));
        out.emit(msg.derive(fields));
        Ok(())
    }
}

impl StageKind for TextChannel {
    type Config = TextChannelConfig;
    const NAME: &'static str = "text_channel";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Sends `text` over Gray-mapped QAM, fading and AWGN; keeps `sent`, counts bits, bit errors and channel uses.";
    const CHANNEL: bool = true;

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out")
                .with_each(&["text", "sent"], FieldType::Text)
                .with_each(
                    &["bits", "bit_errors", "channel_uses", "ber_expected"],
                    FieldType::Number,
                )],
            requires: vec![Field::new("text", FieldType::Text)],
            ..Ports::default()
        }
    }

    fn validate(c: &Self::Config) -> Vec<KeyProblem> {
        fading(c).err().into_iter().collect()
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let fading = fading(c).map_err(|p| StageError::input(p.message))?;
        let es_n0 = c.snr_unit.es_n0_db(c.snr_db, c.modulation.bits_per_symbol(), 1.0);
        let link = Link::new(es_n0, fading, c.modulation, c.ideal, ctx)?;
        let ber_expected = if c.ideal {
            0.0
        } else {
            Channel::new(es_n0, fading)
                .map_err(|e| StageError::input(e.to_string()))?
                .expected_ber(c.modulation)
        };
        Ok(Built::Stage(Box::new(Run { link, ber_expected })))
    }
}

/// The fading of the config's channel keys, or the key to blame.
fn fading(c: &TextChannelConfig) -> Result<Fading, KeyProblem> {
    crate::util::fading_keys(c.model, c.k_factor, c.coherence, c.csi)
}
