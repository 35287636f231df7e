//! Flat fading on top of the complex AWGN channel: Rayleigh and Rician gains that stay
//! constant for one symbol, a block of symbols or a whole message, with a receiver
//! that knows the gain (perfect CSI) or estimates it from pilot symbols, equalises by
//! the (estimated) gain and scales its LLRs by |ĥ|².
//!
//! # Model
//!
//! One channel use carries y = h·x + n with x of unit average energy, n complex
//! Gaussian of variance N0 = 10^(−SNR/10) and h a complex gain with E|h|² = 1, so the
//! SNR of a graph stays the **average** Es/N0 whatever the fading.
//!
//! - `rayleigh`: h ~ CN(0, 1).
//! - `rician`: h = √(K/(K+1)) + √(1/(K+1))·CN(0, 1), K = 10^(`k_factor`/10) the ratio
//!   of the line-of-sight power to the scattered power (line-of-sight phase 0).
//! - `awgn`: h = 1 (no fading); the noise stream is exactly [`Awgn::apply`]'s.
//!
//! The coherence says how long one h lasts: `symbol` (fast fading, a new h every channel
//! use), N channel uses (block fading; pilots included) or `message` (quasi-static: one h
//! per message sent: each tile's caption, each of the slice's two JPEG streams, the codec
//! payload, the JSCC latent).
//!
//! With `csi = { pilots = N }` each coherence block starts with N pilot symbols x = 1;
//! the receiver's least-squares estimate is ĥ = mean of their received values (error
//! variance N0/N). Pilots are channel uses and are counted as such. With perfect CSI,
//! ĥ = h and no pilot is sent.
//!
//! The receiver equalises every data symbol by ĥ (zero forcing, x̂ = y/ĥ) and, for soft
//! decisions, scales the max-log LLR of each bit by |ĥ|² (the noise on x̂ has variance
//! N0/|ĥ|²), so the LDPC decoder trusts bits from a deep fade less.
//!
//! # Random stream
//!
//! Everything comes from the one stream of the message ([`super::channel_rng`]): per
//! coherence block, the gain (two normals, real first), then each pilot's noise, then
//! each data symbol's noise (two normals each). With `model = "awgn"` nothing but the
//! noise is drawn, in [`Awgn::apply`]'s order, so an AWGN run is bit-identical to one
//! made before fading existed.

use std::borrow::Cow;
use std::fmt;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{bits_to_bytes, bytes_to_bits, demodulate_hard, expected_ber, modulate, Awgn, ChannelError, Complex};
use super::{Modulation, SoftTransmission, Transmission};

/// The fading model (`[channel] model`): `awgn`, `rayleigh` or `rician`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FadingModel {
    /// No fading: h = 1.
    #[default]
    Awgn,
    /// h ~ CN(0, 1).
    Rayleigh,
    /// A line-of-sight component plus Rayleigh scattering, power ratio `k_factor` (dB).
    Rician,
}

impl FadingModel {
    /// The name used in graph files.
    pub const fn name(self) -> &'static str {
        match self {
            FadingModel::Awgn => "awgn",
            FadingModel::Rayleigh => "rayleigh",
            FadingModel::Rician => "rician",
        }
    }
}

impl fmt::Display for FadingModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How long one fading gain lasts (`[channel] coherence`): `"symbol"` (fast fading),
/// a number N ≥ 2 of channel uses, pilots included (block fading), or `"message"`
/// (quasi-static, one gain per message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Coherence {
    /// A new gain every channel use.
    Symbol,
    /// A new gain every N channel uses (pilots included).
    Block(usize),
    /// One gain per message.
    #[default]
    Message,
}

impl fmt::Display for Coherence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Coherence::Symbol => f.write_str("\"symbol\""),
            Coherence::Block(n) => write!(f, "{n}"),
            Coherence::Message => f.write_str("\"message\""),
        }
    }
}

const COHERENCE_EXPECTED: &str =
    "\"symbol\" (fast fading), \"message\" (one gain per message) or a number of channel uses N >= 1 (block fading)";

impl<'de> Deserialize<'de> for Coherence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Coherence;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(COHERENCE_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Coherence, E> {
                match s {
                    "symbol" => Ok(Coherence::Symbol),
                    "message" => Ok(Coherence::Message),
                    _ => Err(E::custom(format!(
                        "unknown coherence {s:?}; expected {COHERENCE_EXPECTED}"
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Coherence, E> {
                match n {
                    0 => Err(E::custom(format!(
                        "coherence 0 is not a block length; expected {COHERENCE_EXPECTED}"
                    ))),
                    1 => Ok(Coherence::Symbol),
                    n => Ok(Coherence::Block(usize::try_from(n).unwrap_or(usize::MAX))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Coherence, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "coherence {n} is negative; expected {COHERENCE_EXPECTED}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Coherence {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Coherence::Symbol => s.serialize_str("symbol"),
            Coherence::Block(n) => s.serialize_u64(*n as u64),
            Coherence::Message => s.serialize_str("message"),
        }
    }
}

impl schemars::JsonSchema for Coherence {
    fn schema_name() -> Cow<'static, str> {
        "Coherence".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "How long one fading gain lasts: \"symbol\" (fast), N channel uses incl. pilots (block), \"message\" (quasi-static).",
            "anyOf": [
                { "type": "string", "enum": ["symbol", "message"] },
                { "type": "integer", "minimum": 1 }
            ]
        })
    }
}

/// What the receiver knows of the gain (`[channel] csi`): `"perfect"` or
/// `{ pilots = N }` (N ≥ 1 pilot symbols per coherence block, least-squares estimate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Csi {
    /// The receiver knows h exactly; no pilots are sent.
    #[default]
    Perfect,
    /// N known pilot symbols start each coherence block; ĥ is their mean.
    Pilots(usize),
}

impl Csi {
    /// Pilot symbols per coherence block (0 with perfect CSI).
    pub const fn pilots(self) -> usize {
        match self {
            Csi::Perfect => 0,
            Csi::Pilots(n) => n,
        }
    }
}

const CSI_EXPECTED: &str = "\"perfect\" or { pilots = N } with N >= 1 pilot symbols per coherence block";

impl<'de> Deserialize<'de> for Csi {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Csi;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(CSI_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Csi, E> {
                match s {
                    "perfect" => Ok(Csi::Perfect),
                    _ => Err(E::custom(format!("unknown csi {s:?}; expected {CSI_EXPECTED}"))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Csi, A::Error> {
                let mut pilots: Option<i64> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "pilots" {
                        return Err(de::Error::custom(format!(
                            "unknown key `{key}` in csi; expected {CSI_EXPECTED}"
                        )));
                    }
                    pilots = Some(map.next_value()?);
                }
                match pilots {
                    None => Err(de::Error::custom(format!("csi table without `pilots`; expected {CSI_EXPECTED}"))),
                    Some(n) if n < 1 => Err(de::Error::custom(format!(
                        "csi pilots = {n}: a least-squares estimate needs at least 1 pilot symbol per coherence block; use csi = \"perfect\" for a receiver that knows the gain"
                    ))),
                    Some(n) => Ok(Csi::Pilots(usize::try_from(n).unwrap_or(usize::MAX))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Csi {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Csi::Perfect => s.serialize_str("perfect"),
            Csi::Pilots(n) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("pilots", n)?;
                m.end()
            }
        }
    }
}

impl schemars::JsonSchema for Csi {
    fn schema_name() -> Cow<'static, str> {
        "Csi".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Channel state at the receiver: \"perfect\" or { pilots = N } (N >= 1 pilot symbols per coherence block, least-squares estimate).",
            "anyOf": [
                { "type": "string", "enum": ["perfect"] },
                {
                    "type": "object",
                    "properties": { "pilots": { "type": "integer", "minimum": 1 } },
                    "required": ["pilots"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// What `snr_db` means (`[channel] snr_unit`): `esn0` (energy per channel symbol over
/// N0, the default) or `ebn0` (energy per information bit over N0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnrUnit {
    /// Es/N0: energy per complex channel symbol.
    #[default]
    Esn0,
    /// Eb/N0: energy per information bit; Es/N0 = Eb/N0 + 10·log10(bits per symbol × code rate).
    Ebn0,
}

impl SnrUnit {
    /// Es/N0 in dB of `snr_db` in this unit, for `bits_per_symbol` coded bits per
    /// channel symbol at code `rate` (1 when uncoded). Pilot energy is not counted.
    pub fn es_n0_db(self, snr_db: f64, bits_per_symbol: usize, rate: f64) -> f64 {
        match self {
            SnrUnit::Esn0 => snr_db,
            SnrUnit::Ebn0 => snr_db + 10.0 * (bits_per_symbol as f64 * rate).log10(),
        }
    }
}

/// Fading and receiver settings: everything of a channel but its SNR.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fading {
    /// The gain's distribution.
    pub model: FadingModel,
    /// Rician K factor in dB (used with [`FadingModel::Rician`] only).
    pub k_factor_db: f64,
    /// How long one gain lasts.
    pub coherence: Coherence,
    /// What the receiver knows of the gain.
    pub csi: Csi,
    /// Scale soft decisions by |ĥ|² (the matched receiver). `false` gives the LLRs of a
    /// receiver that ignores the gain's size, only to measure what the scaling is worth.
    pub scale_llrs: bool,
}

impl Default for Fading {
    fn default() -> Self {
        Fading {
            model: FadingModel::Awgn,
            k_factor_db: 0.0,
            coherence: Coherence::Message,
            csi: Csi::Perfect,
            scale_llrs: true,
        }
    }
}

/// A setting of [`Fading::from_keys`] that cannot work: the graph key to blame and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FadingProblem {
    /// The key, as written in a graph.
    pub key: &'static str,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl Fading {
    /// The fading of the graph keys `model`, `k_factor`, `coherence` and `csi`, refusing
    /// combinations that cannot work (a K factor without `rician`, pilots on a channel
    /// without fading or with fast fading, a block no longer than its pilots).
    pub fn from_keys(
        model: FadingModel,
        k_factor: Option<f64>,
        coherence: Coherence,
        csi: Csi,
    ) -> Result<Fading, FadingProblem> {
        let problem = |key, message: String| Err(FadingProblem { key, message });
        let k_factor_db = match (model, k_factor) {
            (FadingModel::Rician, None) => {
                return problem("k_factor", "model = \"rician\" needs `k_factor` (the line-of-sight to scattered power ratio in dB, e.g. k_factor = 6)".into())
            }
            (FadingModel::Rician, Some(k)) if k.is_nan() || k == f64::INFINITY => {
                return problem("k_factor", format!("`k_factor` = {k} is not a number of dB; use a finite value (-inf gives Rayleigh)"))
            }
            (FadingModel::Rician, Some(k)) => k,
            (m, Some(_)) => {
                return problem("k_factor", format!("`k_factor` only applies to model = \"rician\", but model = \"{m}\"; remove `k_factor` or set model = \"rician\""))
            }
            (_, None) => 0.0,
        };
        let pilots = csi.pilots();
        if pilots > 0 {
            if model == FadingModel::Awgn {
                return problem("csi", "csi = { pilots = N } estimates a fading gain, but model = \"awgn\" has none; use csi = \"perfect\" or model = \"rayleigh\"/\"rician\"".into());
            }
            match coherence {
                Coherence::Symbol => {
                    return problem("csi", "pilots cannot track fast fading (coherence = \"symbol\" draws a new gain every channel use); use csi = \"perfect\" or a block coherence (a number of channel uses) or \"message\"".into())
                }
                Coherence::Block(n) if n <= pilots => {
                    return problem("coherence", format!("a coherence block of {n} channel uses leaves no room for data after {pilots} pilots; make `coherence` larger than the pilot count"))
                }
                _ => {}
            }
        }
        Ok(Fading {
            model,
            k_factor_db,
            coherence,
            csi,
            scale_llrs: true,
        })
    }

    /// Amplitudes (line of sight, scattered standard deviation per complex Gaussian)
    /// of the gain: h = los + scatter·CN(0, 1).
    fn amplitudes(&self) -> (f64, f64) {
        match self.model {
            FadingModel::Awgn => (1.0, 0.0),
            FadingModel::Rayleigh => (0.0, 1.0),
            FadingModel::Rician => {
                let k = 10f64.powf(self.k_factor_db / 10.0);
                ((k / (k + 1.0)).sqrt(), (1.0 / (k + 1.0)).sqrt())
            }
        }
    }

    /// Data symbols per coherence block for a message of `n` data symbols.
    fn data_per_block(&self, n: usize) -> usize {
        match self.coherence {
            Coherence::Symbol => 1,
            Coherence::Block(len) => len.saturating_sub(self.csi.pilots()).max(1),
            Coherence::Message => n.max(1),
        }
    }

    /// Pilot channel uses a message of `data_symbols` symbols costs.
    pub fn pilot_uses(&self, data_symbols: usize) -> u64 {
        if self.model == FadingModel::Awgn || data_symbols == 0 {
            return 0;
        }
        (data_symbols.div_ceil(self.data_per_block(data_symbols)) * self.csi.pilots()) as u64
    }
}

/// What the receiver learnt while a message crossed a fading channel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faded {
    /// |ĥ|² of each data symbol (empty without fading: every gain is 1).
    pub gains: Vec<f64>,
    /// Pilot symbols sent (channel uses on top of the data symbols).
    pub pilots: u64,
}

/// A channel: average Es/N0 and fading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Channel {
    awgn: Awgn,
    fading: Fading,
}

impl Channel {
    /// A channel at average Es/N0 `snr_db` (`f64::INFINITY`: no noise) with `fading`.
    pub fn new(snr_db: f64, fading: Fading) -> Result<Self, ChannelError> {
        Ok(Channel {
            awgn: Awgn::new(snr_db)?,
            fading,
        })
    }

    /// The AWGN channel of [`Awgn`] at `snr_db`.
    pub fn awgn(snr_db: f64) -> Result<Self, ChannelError> {
        Self::new(snr_db, Fading::default())
    }

    /// The average Es/N0 in dB.
    pub fn snr_db(&self) -> f64 {
        self.awgn.snr_db()
    }

    /// Noise spectral density N0.
    pub fn n0(&self) -> f64 {
        self.awgn.n0()
    }

    /// The fading settings.
    pub fn fading(&self) -> &Fading {
        &self.fading
    }

    /// One received sample y = h·x + n.
    fn receive<R: Rng + ?Sized>(&self, h: Complex, x: Complex, rng: &mut R) -> Complex {
        let sigma = self.awgn.sigma;
        let faded = mul(h, x);
        if sigma == 0.0 {
            return faded;
        }
        let nr: f64 = StandardNormal.sample(rng);
        let ni: f64 = StandardNormal.sample(rng);
        if sigma.is_infinite() {
            // −∞ dB: as in `Awgn::apply`, the receiver sees only noise.
            return Complex::new(nr, ni);
        }
        Complex::new(faded.re + sigma * nr, faded.im + sigma * ni)
    }

    /// Sends `symbols` through the channel in place and equalises them: on return each
    /// holds x̂ = y/ĥ (0 where ĥ = 0). Returns |ĥ|² per symbol and the pilots sent.
    /// Without fading this is exactly [`Awgn::apply`].
    pub fn apply<R: Rng + ?Sized>(&self, symbols: &mut [Complex], rng: &mut R) -> Faded {
        if self.fading.model == FadingModel::Awgn {
            self.awgn.apply(symbols, rng);
            return Faded::default();
        }
        let (los, scatter) = self.fading.amplitudes();
        let pilots = self.fading.csi.pilots();
        let mut faded = Faded {
            gains: Vec::with_capacity(symbols.len()),
            pilots: 0,
        };
        let block = self.fading.data_per_block(symbols.len());
        for chunk in symbols.chunks_mut(block) {
            let a: f64 = StandardNormal.sample(rng);
            let b: f64 = StandardNormal.sample(rng);
            let s = scatter * std::f64::consts::FRAC_1_SQRT_2;
            let h = Complex::new(los + s * a, s * b);
            let h_est = if pilots == 0 {
                h
            } else {
                let mut sum = Complex::default();
                for _ in 0..pilots {
                    let y = self.receive(h, Complex::new(1.0, 0.0), rng);
                    sum.re += y.re;
                    sum.im += y.im;
                }
                faded.pilots += pilots as u64;
                Complex::new(sum.re / pilots as f64, sum.im / pilots as f64)
            };
            let g = h_est.norm_sqr();
            // 1/ĥ = conj(ĥ)/|ĥ|², once per block; ĥ = 0 equalises to 0 (no information).
            let inv = if g > 0.0 {
                Complex::new(h_est.re / g, -h_est.im / g)
            } else {
                Complex::default()
            };
            for x in chunk.iter_mut() {
                *x = mul(self.receive(h, *x, rng), inv);
            }
            faded.gains.extend(std::iter::repeat_n(g, chunk.len()));
        }
        faded
    }

    /// The bit error rate of hard decisions on `modulation` over this channel with
    /// perfect CSI: the AWGN rate [`expected_ber`] averaged over the gain's distribution.
    /// With h = los + s·√(2u)·e^(jθ), u ~ Exp(1) and θ uniform, the integral over u runs
    /// on a logarithmic grid (10⁻¹⁰ to 50, fine where deep fades dominate at high SNR)
    /// and over θ on a uniform one (Rician only; Rayleigh does not depend on θ); the
    /// result is within 10⁻⁴ (relative) of the closed forms. Pilot estimation errors are
    /// not included.
    pub fn expected_ber(&self, modulation: Modulation) -> f64 {
        let snr_db = self.snr_db();
        if self.fading.model == FadingModel::Awgn || !snr_db.is_finite() {
            return expected_ber(modulation, snr_db);
        }
        let (los, scatter) = self.fading.amplitudes();
        const U_STEPS: usize = 4000;
        let (lo, hi) = ((1e-10f64).ln(), (50f64).ln());
        let dx = (hi - lo) / U_STEPS as f64;
        let thetas = if los == 0.0 { 1 } else { 64 };
        let mut sum = 0.0;
        for i in 0..=U_STEPS {
            let u = (lo + i as f64 * dx).exp();
            // ∫ f(u) e^(−u) du = ∫ f(e^x) e^(−e^x) e^x dx; trapezoid end weights ½.
            let w = u * (-u).exp() * dx * if i == 0 || i == U_STEPS { 0.5 } else { 1.0 };
            let r = scatter * (u).sqrt();
            let mut mean = 0.0;
            for t in 0..thetas {
                let theta = std::f64::consts::PI * (t as f64 + 0.5) / thetas as f64;
                let (re, im) = (los + r * theta.cos(), r * theta.sin());
                let g = re * re + im * im;
                mean += if g > 0.0 {
                    expected_ber(modulation, snr_db + 10.0 * g.log10())
                } else {
                    0.5
                };
            }
            sum += w * mean / thetas as f64;
        }
        // The mass below the grid (u < 10⁻¹⁰) is lost in the deepest fades: BER ½.
        (sum + 0.5 * (1.0 - (-lo.exp()).exp())).clamp(0.0, 0.5)
    }
}

fn mul(a: Complex, b: Complex) -> Complex {
    Complex::new(a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re)
}

/// Soft demodulation of equalised symbols: the max-log LLRs of [`super::demodulate_llr`]
/// with the noise density of each symbol N0/|ĥ|² (`gains` from [`Channel::apply`];
/// empty: every gain is 1), so each bit's LLR is scaled by its symbol's |ĥ|². A symbol
/// with ĥ = 0 gives LLRs of 0 (no information).
pub fn demodulate_llr_scaled(
    symbols: &[Complex],
    gains: &[f64],
    modulation: Modulation,
    n0: f64,
    n_bits: usize,
) -> Vec<f64> {
    if gains.is_empty() {
        return super::demodulate_llr(symbols, modulation, n0, n_bits);
    }
    let pam = modulation.pam();
    let n0 = if n0 > 0.0 { n0 } else { f64::MIN_POSITIVE };
    let k = modulation.bits_per_symbol();
    let mut llrs = Vec::with_capacity(symbols.len() * k);
    for (s, &g) in symbols.iter().zip(gains) {
        if g > 0.0 {
            let n0_eff = n0 / g;
            pam.write_llrs(s.re, n0_eff, &mut llrs);
            if modulation != Modulation::Bpsk {
                pam.write_llrs(s.im, n0_eff, &mut llrs);
            }
        } else {
            llrs.extend(std::iter::repeat_n(0.0, k));
        }
    }
    llrs.truncate(n_bits);
    llrs
}

/// [`super::transmit_bytes`] over `channel`: bytes → bits → symbols → fading and noise →
/// equalisation → hard decisions → bytes. `symbols` counts pilots too.
pub fn transmit_bytes_over<R: Rng + ?Sized>(
    bytes: &[u8],
    modulation: Modulation,
    channel: &Channel,
    rng: &mut R,
) -> Result<Transmission, ChannelError> {
    let bits = bytes_to_bits(bytes);
    let mut symbols = modulate(&bits, modulation)?;
    let faded = channel.apply(&mut symbols, rng);
    let rx_bits = demodulate_hard(&symbols, modulation, bits.len());
    let bit_errors = bits.iter().zip(&rx_bits).filter(|(a, b)| a != b).count() as u64;
    Ok(Transmission {
        received: bits_to_bytes(&rx_bits),
        bits: bits.len() as u64,
        bit_errors,
        symbols: symbols.len() as u64 + faded.pilots,
    })
}

/// [`super::transmit_bits_soft`] over `channel`: LLRs of the equalised symbols, scaled
/// by |ĥ|² unless the fading says otherwise ([`Fading::scale_llrs`]). `symbols` counts
/// pilots too.
pub fn transmit_bits_soft_over<R: Rng + ?Sized>(
    bits: &[u8],
    modulation: Modulation,
    channel: &Channel,
    rng: &mut R,
) -> Result<SoftTransmission, ChannelError> {
    let mut symbols = modulate(bits, modulation)?;
    let faded = channel.apply(&mut symbols, rng);
    let llrs = soft_decisions(&symbols, &faded, modulation, channel, channel.n0(), bits.len());
    Ok(SoftTransmission {
        llrs,
        symbols: symbols.len() as u64 + faded.pilots,
    })
}

/// The LLRs a receiver computes from equalised `symbols`, with noise density `n0`:
/// scaled by each symbol's |ĥ|² when `channel` asks for it.
pub fn soft_decisions(
    symbols: &[Complex],
    faded: &Faded,
    modulation: Modulation,
    channel: &Channel,
    n0: f64,
    n_bits: usize,
) -> Vec<f64> {
    let gains: &[f64] = if channel.fading.scale_llrs { &faded.gains } else { &[] };
    demodulate_llr_scaled(symbols, gains, modulation, n0, n_bits)
}
