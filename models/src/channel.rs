//! Digital channel maths: Gray-mapped QAM modems, complex AWGN, hard and soft
//! (max-log LLR) demodulation, byte-level transmission and seeded noise.
//!
//! # Layout
//!
//! - [`Modulation`]: BPSK, QPSK, 16-QAM and 64-QAM, each Gray-mapped with unit average
//!   symbol energy (Es = 1).
//! - [`modulate`] / [`demodulate_hard`] / [`demodulate_llr`]: bits (one `u8` per bit,
//!   0 or 1) to complex symbols and back.
//! - [`Awgn`]: complex additive white Gaussian noise with N0 = 10^(−SNR/10), so the
//!   per-dimension variance is N0/2 and SNR is Es/N0 (DESIGN §6).
//! - [`transmit_bytes`] / [`ideal`]: the whole text path, bytes → bits → symbols →
//!   noise → hard decisions → bytes, counting bit errors and channel uses.
//! - [`decode_text_lossy`]: received bytes → text the spelling corrector can work on.
//! - [`channel_rng`]: one reproducible noise stream per (graph seed, stage, frame, part).
//! - [`Channel`] / [`Fading`]: Rayleigh and Rician fading over symbol, block or message
//!   coherence, perfect or pilot-estimated CSI, equalisation and |ĥ|²-scaled LLRs
//!   ([`transmit_bytes_over`], [`transmit_bits_soft_over`]); module `fading` says how.
//!
//! Square QAM with Gray mapping is separable: the first half of a symbol's bits picks
//! the in-phase level and the second half the quadrature level, each through a Gray
//! coded pulse-amplitude alphabet. Hard and soft decisions therefore work one dimension
//! at a time, which keeps the modem cheap (10⁶ bits in well under a second).

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

mod fading;

pub use fading::{
    demodulate_llr_scaled, soft_decisions, transmit_bits_soft_over, transmit_bytes_over, Channel, Coherence, Csi,
    Faded, Fading, FadingModel, FadingProblem, SnrUnit,
};

/// Errors from the channel helpers.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChannelError {
    /// The modulation name is not one of `bpsk`, `qpsk`, `qam16`, `qam64`.
    #[error("unknown modulation {0:?}; expected one of bpsk, qpsk, qam16, qam64")]
    UnknownModulation(String),
    /// The SNR is NaN (infinite values are allowed: +∞ dB means no noise).
    #[error("SNR must be a number of dB, got {0}")]
    InvalidSnr(f64),
    /// A bit slice held a value other than 0 or 1.
    #[error("bit {index} has value {value}; bits must be 0 or 1")]
    InvalidBit {
        /// Position of the offending value.
        index: usize,
        /// The value found.
        value: u8,
    },
}

/// A complex baseband sample (one channel use).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Complex {
    /// In-phase component.
    pub re: f64,
    /// Quadrature component.
    pub im: f64,
}

impl Complex {
    /// A complex number from its parts.
    pub const fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }

    /// Squared magnitude |z|².
    pub fn norm_sqr(self) -> f64 {
        self.re * self.re + self.im * self.im
    }
}

/// Digital modulation schemes (DESIGN §6). Serialised in lowercase:
/// `bpsk | qpsk | qam16 | qam64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Modulation {
    /// Binary phase-shift keying: ±1 on the real axis, 1 bit per symbol.
    #[default]
    Bpsk,
    /// Quadrature phase-shift keying: (±1 ± j)/√2, 2 bits per symbol.
    Qpsk,
    /// Square 16-QAM, Gray-mapped, 4 bits per symbol.
    Qam16,
    /// Square 64-QAM, Gray-mapped, 6 bits per symbol.
    Qam64,
}

impl Modulation {
    /// Every scheme, in order of increasing order.
    pub const ALL: [Modulation; 4] = [Modulation::Bpsk, Modulation::Qpsk, Modulation::Qam16, Modulation::Qam64];

    /// Bits carried by one symbol.
    pub const fn bits_per_symbol(self) -> usize {
        match self {
            Modulation::Bpsk => 1,
            Modulation::Qpsk => 2,
            Modulation::Qam16 => 4,
            Modulation::Qam64 => 6,
        }
    }

    /// The name used in graph files (`bpsk`, `qpsk`, `qam16`, `qam64`).
    pub const fn name(self) -> &'static str {
        match self {
            Modulation::Bpsk => "bpsk",
            Modulation::Qpsk => "qpsk",
            Modulation::Qam16 => "qam16",
            Modulation::Qam64 => "qam64",
        }
    }

    /// Bits per dimension and the amplitude scale that gives unit average energy.
    fn pam(self) -> Pam {
        match self {
            // BPSK uses the real axis only: levels ±1, Es = 1.
            Modulation::Bpsk => Pam::new(1, 1.0),
            // Per dimension L levels ±1, ±3, …; mean energy per dimension (L²−1)/3,
            // two dimensions: 2(L²−1)/3.
            Modulation::Qpsk => Pam::new(1, (2.0f64).sqrt()),
            Modulation::Qam16 => Pam::new(2, (10.0f64).sqrt()),
            Modulation::Qam64 => Pam::new(3, (42.0f64).sqrt()),
        }
    }

    /// The constellation point of symbol bits `bits` (length [`Self::bits_per_symbol`]).
    fn point(self, bits: &[u8]) -> Complex {
        let pam = self.pam();
        match self {
            Modulation::Bpsk => Complex::new(pam.level(bits), 0.0),
            _ => {
                let (i, q) = bits.split_at(pam.bits);
                Complex::new(pam.level(i), pam.level(q))
            }
        }
    }
}

impl fmt::Display for Modulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Modulation {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Modulation::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ChannelError::UnknownModulation(s.to_string()))
    }
}

/// One Gray-coded pulse-amplitude dimension: `bits` bits pick one of 2^bits levels
/// −(L−1), …, L−1 (step 2), divided by `scale`.
#[derive(Debug, Clone, Copy)]
struct Pam {
    bits: usize,
    levels: usize,
    scale: f64,
}

impl Pam {
    fn new(bits: usize, scale: f64) -> Self {
        Self {
            bits,
            levels: 1 << bits,
            scale,
        }
    }

    /// Amplitude of level index `idx` (0 = most negative).
    fn amplitude(self, idx: usize) -> f64 {
        (2.0 * idx as f64 - (self.levels as f64 - 1.0)) / self.scale
    }

    /// Gray-coded bits (MSB first) → amplitude.
    fn level(self, bits: &[u8]) -> f64 {
        let gray = bits.iter().fold(0usize, |acc, &b| (acc << 1) | (b & 1) as usize);
        self.amplitude(gray_to_binary(gray))
    }

    /// Nearest level index of a received amplitude.
    fn nearest(self, y: f64) -> usize {
        let x = (y * self.scale + (self.levels as f64 - 1.0)) / 2.0;
        let idx = x.round();
        if idx.is_nan() || idx <= 0.0 {
            0
        } else if idx >= (self.levels - 1) as f64 {
            self.levels - 1
        } else {
            idx as usize
        }
    }

    /// Writes the Gray bits of level index `idx` (MSB first) to `out`.
    fn write_bits(self, idx: usize, out: &mut Vec<u8>) {
        let gray = idx ^ (idx >> 1);
        for k in (0..self.bits).rev() {
            out.push(((gray >> k) & 1) as u8);
        }
    }

    /// Max-log LLRs (log P(b=0)/P(b=1)) of this dimension's bits, given per-dimension
    /// noise variance N0/2 (so the Gaussian exponent is −d²/N0).
    fn write_llrs(self, y: f64, n0: f64, out: &mut Vec<f64>) {
        for k in (0..self.bits).rev() {
            let mut d0 = f64::INFINITY;
            let mut d1 = f64::INFINITY;
            for idx in 0..self.levels {
                let gray = idx ^ (idx >> 1);
                let d = y - self.amplitude(idx);
                let d2 = d * d;
                if (gray >> k) & 1 == 0 {
                    d0 = d0.min(d2);
                } else {
                    d1 = d1.min(d2);
                }
            }
            out.push((d1 - d0) / n0);
        }
    }
}

fn gray_to_binary(mut g: usize) -> usize {
    let mut b = g;
    while g > 1 {
        g >>= 1;
        b ^= g;
    }
    b
}

/// Bytes → bits, most significant bit first, one `u8` (0 or 1) per bit.
pub fn bytes_to_bits(bytes: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(bytes.len() * 8);
    for &byte in bytes {
        for k in (0..8).rev() {
            bits.push((byte >> k) & 1);
        }
    }
    bits
}

/// Bits (MSB first, one `u8` per bit) → bytes; a trailing partial byte is padded with
/// zeros on the right.
pub fn bits_to_bytes(bits: &[u8]) -> Vec<u8> {
    bits.chunks(8)
        .map(|chunk| {
            let mut byte = 0u8;
            for (k, &b) in chunk.iter().enumerate() {
                byte |= (b & 1) << (7 - k);
            }
            byte
        })
        .collect()
}

/// Maps bits (0 or 1 each) to Gray-coded constellation symbols with unit average energy.
/// The last symbol is padded with zero bits when `bits.len()` is not a multiple of
/// [`Modulation::bits_per_symbol`]; pass the original bit count to the demodulators to
/// drop the padding. Values other than 0/1 are an error.
pub fn modulate(bits: &[u8], modulation: Modulation) -> Result<Vec<Complex>, ChannelError> {
    if let Some((index, &value)) = bits.iter().enumerate().find(|(_, &b)| b > 1) {
        return Err(ChannelError::InvalidBit { index, value });
    }
    let k = modulation.bits_per_symbol();
    let mut symbols = Vec::with_capacity(bits.len().div_ceil(k));
    for chunk in bits.chunks(k) {
        let sym = if chunk.len() == k {
            modulation.point(chunk)
        } else {
            let mut padded = [0u8; 6];
            padded[..chunk.len()].copy_from_slice(chunk);
            modulation.point(&padded[..k])
        };
        symbols.push(sym);
    }
    Ok(symbols)
}

/// Hard-decision (minimum-distance) demodulation back to `n_bits` bits; any padding bits
/// of the last symbol are dropped. Returns fewer bits when there are too few symbols.
pub fn demodulate_hard(symbols: &[Complex], modulation: Modulation, n_bits: usize) -> Vec<u8> {
    let pam = modulation.pam();
    let mut bits = Vec::with_capacity(symbols.len() * modulation.bits_per_symbol());
    for s in symbols {
        pam.write_bits(pam.nearest(s.re), &mut bits);
        if modulation != Modulation::Bpsk {
            pam.write_bits(pam.nearest(s.im), &mut bits);
        }
    }
    bits.truncate(n_bits);
    bits
}

/// Soft demodulation: max-log log-likelihood ratios ln P(b=0|y)/P(b=1|y) ≈
/// (min_{s:b=1}|y−s|² − min_{s:b=0}|y−s|²)/N0, one per bit (positive favours 0),
/// truncated to `n_bits`. `n0` is the noise spectral density of the channel
/// ([`Awgn::n0`]); it must be positive (zero is replaced by the smallest positive `f64`).
pub fn demodulate_llr(symbols: &[Complex], modulation: Modulation, n0: f64, n_bits: usize) -> Vec<f64> {
    let pam = modulation.pam();
    let n0 = if n0 > 0.0 { n0 } else { f64::MIN_POSITIVE };
    let mut llrs = Vec::with_capacity(symbols.len() * modulation.bits_per_symbol());
    for s in symbols {
        pam.write_llrs(s.re, n0, &mut llrs);
        if modulation != Modulation::Bpsk {
            pam.write_llrs(s.im, n0, &mut llrs);
        }
    }
    llrs.truncate(n_bits);
    llrs
}

/// A complex AWGN channel for unit-energy symbols: N0 = 10^(−SNR/10), each of the real
/// and imaginary parts gets independent Gaussian noise of variance N0/2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Awgn {
    snr_db: f64,
    n0: f64,
    sigma: f64,
}

impl Awgn {
    /// A channel at `snr_db` (Es/N0 in dB). `f64::INFINITY` gives a noiseless channel;
    /// NaN is an error.
    pub fn new(snr_db: f64) -> Result<Self, ChannelError> {
        if snr_db.is_nan() {
            return Err(ChannelError::InvalidSnr(snr_db));
        }
        let n0 = 10f64.powf(-snr_db / 10.0);
        Ok(Self {
            snr_db,
            n0,
            sigma: (n0 / 2.0).sqrt(),
        })
    }

    /// The SNR in dB this channel was built with.
    pub fn snr_db(&self) -> f64 {
        self.snr_db
    }

    /// Noise spectral density N0 (total complex noise variance per symbol).
    pub fn n0(&self) -> f64 {
        self.n0
    }

    /// Adds noise to `symbols` in place, drawing from `rng` (two normals per symbol, real
    /// part first, so the stream is reproducible).
    pub fn apply<R: Rng + ?Sized>(&self, symbols: &mut [Complex], rng: &mut R) {
        if self.sigma == 0.0 || !self.sigma.is_finite() {
            if self.sigma.is_infinite() {
                // −∞ dB: the signal is lost entirely; the receiver sees only noise
                // of unbounded power, modelled as a random sign per dimension.
                for s in symbols.iter_mut() {
                    let re: f64 = StandardNormal.sample(rng);
                    let im: f64 = StandardNormal.sample(rng);
                    *s = Complex::new(re, im);
                }
            }
            return;
        }
        for s in symbols.iter_mut() {
            let nr: f64 = StandardNormal.sample(rng);
            let ni: f64 = StandardNormal.sample(rng);
            s.re += self.sigma * nr;
            s.im += self.sigma * ni;
        }
    }
}

/// The result of sending bytes through a channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transmission {
    /// The bytes after hard decisions (same length as the input).
    pub received: Vec<u8>,
    /// Bits sent (8 per byte).
    pub bits: u64,
    /// Bits that arrived flipped.
    pub bit_errors: u64,
    /// Channel uses (complex symbols), including the padded last one.
    pub symbols: u64,
}

impl Transmission {
    /// Measured bit error rate (0 for an empty transmission).
    pub fn ber(&self) -> f64 {
        if self.bits == 0 {
            0.0
        } else {
            self.bit_errors as f64 / self.bits as f64
        }
    }
}

/// Sends `bytes` as MSB-first bits over `modulation` + complex AWGN at `snr_db`, with
/// hard decisions at the receiver, drawing the noise from `rng`.
pub fn transmit_bytes<R: Rng + ?Sized>(
    bytes: &[u8],
    modulation: Modulation,
    snr_db: f64,
    rng: &mut R,
) -> Result<Transmission, ChannelError> {
    let awgn = Awgn::new(snr_db)?;
    let bits = bytes_to_bits(bytes);
    let mut symbols = modulate(&bits, modulation)?;
    awgn.apply(&mut symbols, rng);
    let rx_bits = demodulate_hard(&symbols, modulation, bits.len());
    let bit_errors = bits.iter().zip(&rx_bits).filter(|(a, b)| a != b).count() as u64;
    Ok(Transmission {
        received: bits_to_bytes(&rx_bits),
        bits: bits.len() as u64,
        bit_errors,
        symbols: symbols.len() as u64,
    })
}

/// The soft output of sending bits through the channel, for a decoder (e.g. LDPC
/// belief propagation) that wants likelihoods rather than decisions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SoftTransmission {
    /// Max-log LLR per bit, ln P(b=0)/P(b=1) (see [`demodulate_llr`]).
    pub llrs: Vec<f64>,
    /// Channel uses (complex symbols), including the padded last one.
    pub symbols: u64,
}

/// Sends bits (0/1 each) over `modulation` + complex AWGN at `snr_db` and returns
/// max-log LLRs computed with the channel's true N0.
pub fn transmit_bits_soft<R: Rng + ?Sized>(
    bits: &[u8],
    modulation: Modulation,
    snr_db: f64,
    rng: &mut R,
) -> Result<SoftTransmission, ChannelError> {
    let awgn = Awgn::new(snr_db)?;
    let mut symbols = modulate(bits, modulation)?;
    awgn.apply(&mut symbols, rng);
    Ok(SoftTransmission {
        llrs: demodulate_llr(&symbols, modulation, awgn.n0(), bits.len()),
        symbols: symbols.len() as u64,
    })
}

/// A perfect channel: the bytes arrive unchanged; bits and channel uses are still
/// counted as if sent with `modulation`.
pub fn ideal(bytes: &[u8], modulation: Modulation) -> Transmission {
    let bits = bytes.len() * 8;
    Transmission {
        received: bytes.to_vec(),
        bits: bits as u64,
        bit_errors: 0,
        symbols: bits.div_ceil(modulation.bits_per_symbol()) as u64,
    }
}

/// Decodes received bytes as text for the spelling corrector: invalid UTF-8 becomes
/// U+FFFD via [`String::from_utf8_lossy`] and is then dropped (dropping one letter
/// leaves a word one deletion away from the original, which the corrector repairs,
/// whereas a replacement would split it); tabs, newlines and other whitespace controls
/// become a space; other control characters are dropped; runs of spaces collapse to one
/// and the result is trimmed.
pub fn decode_text_lossy(bytes: &[u8]) -> String {
    let raw = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(raw.len());
    let mut last_space = true;
    for c in raw.chars() {
        let c = if c.is_whitespace() { ' ' } else { c };
        if c == char::REPLACEMENT_CHARACTER || c.is_control() {
            continue;
        }
        if c == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// SplitMix64 finaliser: a bijective 64-bit mixer.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A reproducible noise stream for one channel use: the same (graph seed, stage id,
/// frame sequence, part) always gives the same stream, and changing any of them gives
/// an unrelated one. The inputs are hashed with FNV-1a (the stage name, length
/// prefixed) and SplitMix64, both fixed algorithms, so the stream does not depend on
/// the Rust version or process; the 32-byte ChaCha8 seed is four SplitMix64 outputs.
pub fn channel_rng(graph_seed: u64, stage: &str, frame_seq: u64, part: u32) -> ChaCha8Rng {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    };
    feed(b"dataflow-channel-v1");
    feed(&graph_seed.to_le_bytes());
    feed(&(stage.len() as u64).to_le_bytes());
    feed(stage.as_bytes());
    feed(&frame_seq.to_le_bytes());
    feed(&part.to_le_bytes());
    let mut state = splitmix64(h);
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        state = splitmix64(state);
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    ChaCha8Rng::from_seed(seed)
}

/// Complementary error function erfc(x) = 1 − erf(x) (the `libm` port of musl's
/// implementation, accurate to about one ulp).
pub fn erfc(x: f64) -> f64 {
    libm::erfc(x)
}

/// The Gaussian tail probability Q(x) = ½·erfc(x/√2).
pub fn q_function(x: f64) -> f64 {
    0.5 * erfc(x / std::f64::consts::SQRT_2)
}

/// The bit error rate expected from hard decisions on `modulation` at `snr_db` (Es/N0):
/// Q(√(2·SNR)) for BPSK, Q(√SNR) for QPSK, and for Gray-mapped square M-QAM the usual
/// nearest-neighbour approximation (4/k)(1 − 1/√M)·Q(√(3·SNR/(M − 1))), k = log2 M, capped
/// at 0.5. The noisy-channel corrector takes it as the probability of a bit flip.
pub fn expected_ber(modulation: Modulation, snr_db: f64) -> f64 {
    let snr = 10f64.powf(snr_db / 10.0);
    let ber = match modulation {
        Modulation::Bpsk => q_function((2.0 * snr).sqrt()),
        Modulation::Qpsk => q_function(snr.sqrt()),
        Modulation::Qam16 | Modulation::Qam64 => {
            let k = modulation.bits_per_symbol() as f64;
            let m = 2f64.powf(k);
            4.0 / k * (1.0 - 1.0 / m.sqrt()) * q_function((3.0 * snr / (m - 1.0)).sqrt())
        }
    };
    if ber.is_nan() {
        0.5
    } else {
        ber.clamp(0.0, 0.5)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn db(snr_db: f64) -> f64 {
        10f64.powf(snr_db / 10.0)
    }

    /// Measured BER of `n_bits` random bits at `snr_db`.
    fn measure_ber(modulation: Modulation, snr_db: f64, n_bits: usize, seed: u64) -> f64 {
        let mut rng = channel_rng(seed, "ber-test", 0, 0);
        let bits: Vec<u8> = (0..n_bits).map(|_| rng.random_range(0..2u8)).collect();
        let awgn = Awgn::new(snr_db).unwrap();
        let mut symbols = modulate(&bits, modulation).unwrap();
        awgn.apply(&mut symbols, &mut rng);
        let rx = demodulate_hard(&symbols, modulation, bits.len());
        let errors = bits.iter().zip(&rx).filter(|(a, b)| a != b).count();
        errors as f64 / n_bits as f64
    }

    #[test]
    fn erfc_matches_reference_values() {
        // Reference values from Abramowitz & Stegun / mpmath.
        let cases = [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_1),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (-1.0, 1.842_700_792_949_715),
        ];
        for (x, want) in cases {
            let got = erfc(x);
            assert!(((got - want) / want).abs() < 1e-12, "erfc({x}) = {got}, want {want}");
        }
        assert!((q_function(0.0) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn constellations_have_unit_energy_and_gray_neighbours() {
        for m in Modulation::ALL {
            let k = m.bits_per_symbol();
            let n = 1usize << k;
            let points: Vec<Complex> = (0..n)
                .map(|v| {
                    let bits: Vec<u8> = (0..k).rev().map(|j| ((v >> j) & 1) as u8).collect();
                    modulate(&bits, m).unwrap()[0]
                })
                .collect();
            let es = points.iter().map(|p| p.norm_sqr()).sum::<f64>() / n as f64;
            assert!((es - 1.0).abs() < 1e-12, "{m}: Es = {es}");
            // Gray: nearest neighbours differ in exactly one bit.
            let dmin = points
                .iter()
                .enumerate()
                .flat_map(|(i, a)| {
                    points
                        .iter()
                        .skip(i + 1)
                        .map(move |b| Complex::new(a.re - b.re, a.im - b.im).norm_sqr())
                })
                .fold(f64::INFINITY, f64::min);
            for (i, a) in points.iter().enumerate() {
                for (j, b) in points.iter().enumerate() {
                    let d = Complex::new(a.re - b.re, a.im - b.im).norm_sqr();
                    if i != j && (d - dmin).abs() < 1e-9 {
                        assert_eq!((i ^ j).count_ones(), 1, "{m}: {i} and {j} are neighbours");
                    }
                }
            }
            // Noise-free round trip of every symbol value.
            let bits: Vec<u8> = (0..n)
                .flat_map(|v| (0..k).rev().map(move |j| ((v >> j) & 1) as u8))
                .collect();
            let syms = modulate(&bits, m).unwrap();
            assert_eq!(demodulate_hard(&syms, m, bits.len()), bits);
        }
    }

    #[test]
    fn padding_is_dropped_and_bad_bits_rejected() {
        let bits = [1, 0, 1, 1, 0];
        let syms = modulate(&bits, Modulation::Qam16).unwrap();
        assert_eq!(syms.len(), 2);
        assert_eq!(demodulate_hard(&syms, Modulation::Qam16, 5), bits);
        assert_eq!(
            modulate(&[0, 2], Modulation::Bpsk),
            Err(ChannelError::InvalidBit { index: 1, value: 2 })
        );
    }

    #[test]
    fn modulation_names_round_trip() {
        for m in Modulation::ALL {
            assert_eq!(m.name().parse::<Modulation>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.name()));
            assert_eq!(serde_json::from_str::<Modulation>(&json).unwrap(), m);
        }
        assert!("qam256".parse::<Modulation>().is_err());
    }

    #[test]
    fn bpsk_ber_matches_theory() {
        // Uncoded BPSK, Es/N0 = Eb/N0 = SNR: BER = Q(√(2·SNR)).
        // 10⁶ bits at 0 and 4 dB; 4·10⁶ at 8 dB so that ≈ 760 errors are expected
        // (relative standard deviation ≈ 3.6%).
        for (snr_db, n_bits) in [(0.0, 1_000_000), (4.0, 1_000_000), (8.0, 4_000_000)] {
            let theory = q_function((2.0 * db(snr_db)).sqrt());
            let ber = measure_ber(Modulation::Bpsk, snr_db, n_bits, 1);
            let rel = (ber - theory).abs() / theory;
            eprintln!("BPSK {snr_db} dB: measured {ber:.4e}, theory {theory:.4e}, rel {rel:.3}");
            assert!(rel < 0.10, "BPSK {snr_db} dB: {ber} vs {theory}");
        }
    }

    #[test]
    fn qpsk_ber_matches_bpsk_per_bit() {
        // Gray QPSK at Es/N0 = SNR has Eb/N0 = SNR/2: BER = Q(√SNR).
        let snr_db = 6.0;
        let theory = q_function(db(snr_db).sqrt());
        let ber = measure_ber(Modulation::Qpsk, snr_db, 1_000_000, 2);
        eprintln!("QPSK {snr_db} dB: measured {ber:.4e}, theory {theory:.4e}");
        assert!((ber - theory).abs() / theory < 0.10);
    }

    #[test]
    fn qam16_ber_matches_gray_approximation() {
        // Gray 16-QAM at Es/N0 = SNR: BER ≈ (3/8)·erfc(√(SNR/10)) (nearest-neighbour
        // terms only). The exact value adds (1/8)(2·erfc(3x) − erfc(5x)), x = √(SNR/10),
        // which is below 0.1% of the total at 10 and 14 dB, so the approximation is
        // accurate there.
        for snr_db in [10.0, 14.0] {
            let theory = 0.375 * erfc((db(snr_db) / 10.0).sqrt());
            let ber = measure_ber(Modulation::Qam16, snr_db, 1_000_000, 3);
            let rel = (ber - theory).abs() / theory;
            eprintln!("16-QAM {snr_db} dB: measured {ber:.4e}, theory {theory:.4e}, rel {rel:.3}");
            assert!(rel < 0.10, "16-QAM {snr_db} dB: {ber} vs {theory}");
        }
    }

    #[test]
    fn qam64_ber_matches_gray_approximation() {
        // Gray 64-QAM: BER ≈ (7/24)·erfc(√(SNR/42)) (nearest-neighbour approximation).
        let snr_db = 20.0;
        let theory = 7.0 / 24.0 * erfc((db(snr_db) / 42.0).sqrt());
        let ber = measure_ber(Modulation::Qam64, snr_db, 1_200_000, 4);
        eprintln!("64-QAM {snr_db} dB: measured {ber:.4e}, theory {theory:.4e}");
        assert!((ber - theory).abs() / theory < 0.10);
    }

    #[test]
    fn llr_signs_agree_with_hard_decisions() {
        for m in Modulation::ALL {
            let mut rng = channel_rng(9, "llr", 0, 0);
            let bits: Vec<u8> = (0..6000).map(|_| rng.random_range(0..2u8)).collect();
            let awgn = Awgn::new(8.0).unwrap();
            let mut syms = modulate(&bits, m).unwrap();
            awgn.apply(&mut syms, &mut rng);
            let hard = demodulate_hard(&syms, m, bits.len());
            let llr = demodulate_llr(&syms, m, awgn.n0(), bits.len());
            assert_eq!(llr.len(), bits.len());
            for (h, l) in hard.iter().zip(&llr) {
                if l.abs() > 1e-9 {
                    assert_eq!(*h, u8::from(*l < 0.0), "{m}");
                }
            }
        }
        // A noiseless BPSK +1 (bit 1) at N0 = 1 gives LLR = ((1−1)² − (1+1)²)/1 = −4.
        let llr = demodulate_llr(&[Complex::new(1.0, 0.0)], Modulation::Bpsk, 1.0, 1);
        assert!((llr[0] + 4.0).abs() < 1e-12);
    }

    #[test]
    fn soft_transmission_recovers_bits_at_high_snr() {
        let mut rng = channel_rng(3, "soft", 0, 0);
        let bits: Vec<u8> = (0..999).map(|_| rng.random_range(0..2u8)).collect();
        for m in Modulation::ALL {
            let soft = transmit_bits_soft(&bits, m, 40.0, &mut rng).unwrap();
            assert_eq!(soft.llrs.len(), bits.len());
            assert_eq!(soft.symbols, bits.len().div_ceil(m.bits_per_symbol()) as u64);
            let decided: Vec<u8> = soft.llrs.iter().map(|&l| u8::from(l < 0.0)).collect();
            assert_eq!(decided, bits, "{m}");
        }
    }

    #[test]
    fn same_seed_same_bits_and_parts_differ() {
        let text = b"top left: the background is blue and bright.";
        let send = |part: u32| {
            let mut rng = channel_rng(7, "text_channel", 3, part);
            transmit_bytes(text, Modulation::Qpsk, 2.0, &mut rng).unwrap()
        };
        let a = send(0);
        let b = send(0);
        let c = send(1);
        assert_eq!(a, b);
        assert!(a.bit_errors > 0);
        assert_ne!(a.received, c.received);
        assert_eq!(a.bits, text.len() as u64 * 8);
        assert_eq!(a.symbols, a.bits / 2);
        // Different stage, frame or seed: different noise too.
        let other = |seed, stage: &str, frame| {
            let mut rng = channel_rng(seed, stage, frame, 0);
            transmit_bytes(text, Modulation::Qpsk, 2.0, &mut rng).unwrap()
        };
        assert_ne!(other(7, "text_channel2", 3).received, a.received);
        assert_ne!(other(7, "text_channel", 4).received, a.received);
        assert_ne!(other(8, "text_channel", 3).received, a.received);
    }

    #[test]
    fn ideal_and_high_snr_are_lossless() {
        let text = "the main object is white".as_bytes();
        let t = ideal(text, Modulation::Qam16);
        assert_eq!(t.received, text);
        assert_eq!(t.symbols, (text.len() as u64 * 8).div_ceil(4));
        let mut rng = channel_rng(1, "x", 0, 0);
        let t = transmit_bytes(text, Modulation::Qam64, f64::INFINITY, &mut rng).unwrap();
        assert_eq!(t.received, text);
        assert_eq!(t.bit_errors, 0);
        assert_eq!(t.ber(), 0.0);
        assert!(transmit_bytes(text, Modulation::Bpsk, f64::NAN, &mut rng).is_err());
    }

    #[test]
    fn lossy_text_decoding_keeps_letters() {
        let bytes = b"the b\xfflue\x01 sky\n\tis  bright\xc3";
        assert_eq!(decode_text_lossy(bytes), "the blue sky is bright");
        assert_eq!(decode_text_lossy("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(decode_text_lossy(b""), "");
    }
}
