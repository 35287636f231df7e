//! 5G NR LDPC channel coding of a transport block (3GPP TS 38.212 §5.1–§5.4, §7.2.2).
//!
//! The digital chain of the BPG-LDPC baseline (`codec_channel`): a transport block of
//! payload bytes gets its CRC, is cut into code blocks (each with its own CRC when there
//! are several), each block is LDPC-encoded with base graph 1 or 2 lifted by `Z`,
//! rate-matched from the circular buffer (redundancy version 0, the first `2Z` bits
//! punctured, filler bits skipped) and bit-interleaved for the modulation order. The
//! receiver undoes each step on log-likelihood ratios and decodes with layered belief
//! propagation (normalised min-sum or sum-product), stopping early when every parity
//! check holds.
//!
//! The base-graph tables (shift coefficients for the eight lifting-size sets) come from
//! `ldpc-toolbox`, which transcribes TS 38.212 Tables 5.3.2-2/-3; this module reads the
//! lifted matrix's first row of each block row to recover them, so the tables exist once.
//! Encoding and decoding work on the quasi-cyclic structure directly: a block row is `Z`
//! checks that read `Z`-long rotated slices of the codeword, which keeps the inner loops
//! over contiguous memory.
//!
//! Conventions: bits are one `u8` each (0/1); an LLR is ln P(b=0)/P(b=1), positive
//! for 0, as [`crate::channel::demodulate_llr`] gives them.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use clap::ValueEnum;
use ldpc_toolbox::codes::nr5g::{BaseGraph as ToolboxGraph, LiftingSize};
use ldpc_toolbox::sparse::SparseMatrix;
use thiserror::Error;

/// LLR given to bits the receiver knows are zero (filler bits).
const KNOWN_ZERO: f32 = 1.0e4;

/// Errors of planning a transport block.
#[derive(Debug, Error, PartialEq)]
pub enum LdpcError {
    /// The code rate is outside what the base graphs can reach.
    #[error("code rate {0} is outside (0, 0.95]; 5G NR LDPC reaches from about 1/5 (with repetition, lower) to 0.95")]
    Rate(f64),
    /// The modulation order is not 1, 2, 4, 6 or 8.
    #[error("modulation order {0} is not one of 1, 2, 4, 6, 8 bits per symbol")]
    Order(usize),
    /// No payload.
    #[error("the transport block is empty")]
    Empty,
    /// The LLR count does not match the plan.
    #[error("expected {expected} LLRs for this transport block, got {got}")]
    Llrs {
        /// LLRs the plan transmits.
        expected: usize,
        /// LLRs given.
        got: usize,
    },
    /// The channel refused the bits or the SNR.
    #[error("channel: {0}")]
    Channel(String),
}

/// 5G NR LDPC base graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BaseGraph {
    /// Base graph 1: 46×68, up to 8448 information bits per block, rates from 1/3.
    Bg1,
    /// Base graph 2: 42×52, up to 3840 information bits per block, rates from 1/5.
    Bg2,
}

impl BaseGraph {
    /// Block rows.
    pub fn rows(self) -> usize {
        match self {
            BaseGraph::Bg1 => 46,
            BaseGraph::Bg2 => 42,
        }
    }
    /// Block columns.
    pub fn cols(self) -> usize {
        match self {
            BaseGraph::Bg1 => 68,
            BaseGraph::Bg2 => 52,
        }
    }
    /// Information block columns (`K = info_cols · Z`).
    pub fn info_cols(self) -> usize {
        match self {
            BaseGraph::Bg1 => 22,
            BaseGraph::Bg2 => 10,
        }
    }
    /// Largest code block, `K_cb`.
    pub fn max_block(self) -> usize {
        match self {
            BaseGraph::Bg1 => 8448,
            BaseGraph::Bg2 => 3840,
        }
    }
    /// Selection of TS 38.212 §7.2.2 for `a` payload bits at code rate `rate`.
    pub fn select(a: usize, rate: f64) -> BaseGraph {
        if a <= 292 || (a <= 3824 && rate <= 0.67) || rate <= 0.25 {
            BaseGraph::Bg2
        } else {
            BaseGraph::Bg1
        }
    }
    fn toolbox(self) -> ToolboxGraph {
        match self {
            BaseGraph::Bg1 => ToolboxGraph::BG1,
            BaseGraph::Bg2 => ToolboxGraph::BG2,
        }
    }
}

impl fmt::Display for BaseGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BaseGraph::Bg1 => "BG1",
            BaseGraph::Bg2 => "BG2",
        })
    }
}

/// Every lifting size of TS 38.212 Table 5.3.2-1, ascending.
pub fn lifting_sizes() -> Vec<usize> {
    let mut zs: Vec<usize> = LiftingSize::value_variants().iter().map(|&z| usize::from(z)).collect();
    zs.sort_unstable();
    zs
}

/// Check-node rule of the decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckRule {
    /// Normalised min-sum: the two smallest magnitudes, scaled by `alpha` (0.75 is usual).
    MinSum {
        /// Normalisation factor in (0, 1].
        alpha: f32,
    },
    /// Sum-product through φ(x) = −ln tanh(x/2).
    SumProduct,
}

impl FromStr for CheckRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "min_sum" | "layered_min_sum" => Ok(CheckRule::MinSum { alpha: 0.75 }),
            "sum_product" | "layered_sum_product" => Ok(CheckRule::SumProduct),
            o => Err(format!("unknown LDPC decoder `{o}`; use `min_sum` or `sum_product`")),
        }
    }
}

/// One lifted code: base graph, lifting size, and the structures encoding and decoding use.
pub struct NrCode {
    bg: BaseGraph,
    z: usize,
    /// Per block row: (block column, shift) of every non-zero entry, columns ascending.
    rows: Vec<Vec<(usize, usize)>>,
    /// Inverse of the 4Z×4Z core parity matrix, one bit-packed row per check.
    core_inverse: Vec<Vec<u64>>,
}

impl fmt::Debug for NrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NrCode({}, Z={})", self.bg, self.z)
    }
}

type CodeCache = Mutex<HashMap<(BaseGraph, usize), Arc<NrCode>>>;

impl NrCode {
    /// The code for `bg` lifted by `z` (one of [`lifting_sizes`]); built once per process.
    pub fn get(bg: BaseGraph, z: usize) -> Option<Arc<NrCode>> {
        static CACHE: OnceLock<CodeCache> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(code) = map.get(&(bg, z)) {
            return Some(code.clone());
        }
        let code = Arc::new(NrCode::build(bg, z)?);
        map.insert((bg, z), code.clone());
        Some(code)
    }

    fn build(bg: BaseGraph, z: usize) -> Option<NrCode> {
        let h = Self::toolbox_matrix(bg, z)?;
        let rows: Vec<Vec<(usize, usize)>> = (0..bg.rows())
            .map(|j| {
                let mut r: Vec<(usize, usize)> = h.iter_row(j * z).map(|&c| (c / z, c % z)).collect();
                r.sort_unstable();
                r
            })
            .collect();
        let core_inverse = invert_core(bg, z, &rows)?;
        Some(NrCode {
            bg,
            z,
            rows,
            core_inverse,
        })
    }

    /// The lifted parity-check matrix as `ldpc-toolbox` builds it (the reference for tests).
    pub fn toolbox_matrix(bg: BaseGraph, z: usize) -> Option<SparseMatrix> {
        let ls = LiftingSize::value_variants()
            .iter()
            .copied()
            .find(|&l| usize::from(l) == z)?;
        Some(bg.toolbox().h(ls))
    }

    /// Base graph.
    pub fn base_graph(&self) -> BaseGraph {
        self.bg
    }
    /// Lifting size.
    pub fn z(&self) -> usize {
        self.z
    }
    /// Information bits per block, `K`.
    pub fn k(&self) -> usize {
        self.bg.info_cols() * self.z
    }
    /// Codeword bits before puncturing, `N + 2Z`.
    pub fn n(&self) -> usize {
        self.bg.cols() * self.z
    }

    /// Systematic encoding of `K` information bits into the full `N + 2Z` codeword.
    pub fn encode(&self, info: &[u8]) -> Vec<u8> {
        let z = self.z;
        let kc = self.bg.info_cols();
        let mut c = vec![0u8; self.n()];
        c[..info.len().min(kc * z)].copy_from_slice(&info[..info.len().min(kc * z)]);
        // λ = the information part of the four core rows.
        let mut lambda = vec![0u8; 4 * z];
        for (i, row) in self.rows.iter().take(4).enumerate() {
            for &(col, s) in row.iter().filter(|(col, _)| *col < kc) {
                xor_rotated(&mut lambda[i * z..(i + 1) * z], &c[col * z..(col + 1) * z], s);
            }
        }
        // Core parity = core⁻¹ · λ.
        let packed = pack(&lambda);
        for (r, inv_row) in self.core_inverse.iter().enumerate() {
            let ones: u32 = inv_row.iter().zip(&packed).map(|(a, b)| (a & b).count_ones()).sum();
            c[kc * z + r] = (ones & 1) as u8;
        }
        // Extension rows: one new parity column each, solved from the columns before it.
        for (i, row) in self.rows.iter().enumerate().skip(4) {
            let own = kc + 4 + (i - 4);
            let mut acc = vec![0u8; z];
            let mut own_shift = 0;
            for &(col, s) in row {
                if col == own {
                    own_shift = s;
                } else {
                    xor_rotated(&mut acc, &c[col * z..(col + 1) * z], s);
                }
            }
            // acc[r] = p[(r + own_shift) % z]
            for (r, &a) in acc.iter().enumerate() {
                c[own * z + (r + own_shift) % z] = a;
            }
        }
        c
    }

    /// Whether every parity check of the first `layers` block rows holds for `bits`.
    pub fn checks_hold(&self, bits: &[u8], layers: usize) -> bool {
        let z = self.z;
        let mut parity = vec![0u8; z];
        self.rows.iter().take(layers).all(|row| {
            parity.iter_mut().for_each(|p| *p = 0);
            for &(col, s) in row {
                xor_rotated(&mut parity, &bits[col * z..(col + 1) * z], s);
            }
            parity.iter().all(|&p| p == 0)
        })
    }
}

/// `dst[r] ^= src[(r + s) % z]`, as two contiguous runs.
fn xor_rotated(dst: &mut [u8], src: &[u8], s: usize) {
    let z = src.len();
    let (head, tail) = src.split_at(s % z);
    for (d, v) in dst.iter_mut().zip(tail.iter().chain(head)) {
        *d ^= v;
    }
}

fn pack(bits: &[u8]) -> Vec<u64> {
    let mut out = vec![0u64; bits.len().div_ceil(64)];
    for (i, &b) in bits.iter().enumerate() {
        out[i / 64] |= u64::from(b & 1) << (i % 64);
    }
    out
}

/// Gauss–Jordan inverse over GF(2) of the core parity part (block rows 0..4, the four
/// block columns after the information columns).
fn invert_core(bg: BaseGraph, z: usize, rows: &[Vec<(usize, usize)>]) -> Option<Vec<Vec<u64>>> {
    let kc = bg.info_cols();
    let n = 4 * z;
    let words = n.div_ceil(64);
    let mut m: Vec<Vec<u64>> = vec![vec![0u64; words]; n];
    let mut inv: Vec<Vec<u64>> = (0..n)
        .map(|i| {
            let mut r = vec![0u64; words];
            r[i / 64] |= 1 << (i % 64);
            r
        })
        .collect();
    for (i, row) in rows.iter().take(4).enumerate() {
        for &(col, s) in row.iter().filter(|(col, _)| (kc..kc + 4).contains(col)) {
            for r in 0..z {
                let c = (col - kc) * z + (r + s) % z;
                m[i * z + r][c / 64] ^= 1 << (c % 64);
            }
        }
    }
    for col in 0..n {
        let bit = |row: &Vec<u64>| row[col / 64] >> (col % 64) & 1 == 1;
        let pivot = (col..n).find(|&r| bit(&m[r]))?;
        m.swap(col, pivot);
        inv.swap(col, pivot);
        let (src_m, src_i) = (m[col].clone(), inv[col].clone());
        for r in 0..n {
            if r != col && bit(&m[r]) {
                for w in 0..words {
                    m[r][w] ^= src_m[w];
                    inv[r][w] ^= src_i[w];
                }
            }
        }
    }
    Some(inv)
}

/// Layered belief-propagation decoder for one [`NrCode`]; reuses its buffers between blocks.
pub struct LayeredDecoder {
    code: Arc<NrCode>,
    rule: CheckRule,
    llr: Vec<f32>,
    /// Check-to-variable messages, per layer per edge per lifted row.
    r: Vec<f32>,
    q: Vec<f32>,
    hard: Vec<u8>,
    scratch: Scratch,
}

/// Per-check working values of one layer, kept between layers to avoid allocation.
#[derive(Default)]
struct Scratch {
    min1: Vec<f32>,
    min2: Vec<f32>,
    arg: Vec<usize>,
    sign: Vec<bool>,
}

impl Scratch {
    fn reset(&mut self, z: usize, first: f32) {
        self.min1.clear();
        self.min1.resize(z, first);
        self.min2.clear();
        self.min2.resize(z, f32::INFINITY);
        self.arg.clear();
        self.arg.resize(z, 0);
        self.sign.clear();
        self.sign.resize(z, false);
    }
}

/// What decoding one block gave.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockDecoded {
    /// Hard decisions on the whole `N + 2Z` codeword.
    pub bits: Vec<u8>,
    /// Every parity check held.
    pub converged: bool,
    /// Iterations run.
    pub iterations: usize,
}

impl LayeredDecoder {
    /// A decoder for `code` with the check rule `rule`.
    pub fn new(code: Arc<NrCode>, rule: CheckRule) -> Self {
        let edges: usize = code.rows.iter().map(Vec::len).sum();
        let max_deg = code.rows.iter().map(Vec::len).max().unwrap_or(0);
        let z = code.z;
        LayeredDecoder {
            llr: vec![0.0; code.n()],
            r: vec![0.0; edges * z],
            q: vec![0.0; max_deg * z],
            hard: vec![0; code.n()],
            scratch: Scratch::default(),
            code,
            rule,
        }
    }

    /// The code.
    pub fn code(&self) -> &Arc<NrCode> {
        &self.code
    }

    /// Decodes the channel LLRs of the full codeword (`N + 2Z`; 0 for punctured bits)
    /// using the first `layers` block rows (the rows whose extension parity was sent),
    /// for at most `max_iterations` iterations.
    pub fn decode(&mut self, channel: &[f32], layers: usize, max_iterations: usize) -> BlockDecoded {
        let code = self.code.clone();
        let z = code.z;
        let layers = layers.clamp(4, code.rows.len());
        self.llr.copy_from_slice(channel);
        self.r.iter_mut().for_each(|v| *v = 0.0);
        let mut iterations = 0;
        let mut converged = self.syndrome_ok(&code, layers);
        while !converged && iterations < max_iterations {
            iterations += 1;
            let mut offset = 0;
            for row in code.rows.iter().take(layers) {
                let d = row.len();
                let r = &mut self.r[offset..offset + d * z];
                let q = &mut self.q[..d * z];
                for (e, &(col, s)) in row.iter().enumerate() {
                    let l = &self.llr[col * z..(col + 1) * z];
                    let (head, tail) = l.split_at(s);
                    let qe = &mut q[e * z..(e + 1) * z];
                    for ((qv, lv), rv) in qe.iter_mut().zip(tail.iter().chain(head)).zip(&r[e * z..(e + 1) * z]) {
                        *qv = lv - rv;
                    }
                }
                match self.rule {
                    CheckRule::MinSum { alpha } => min_sum_layer(q, r, d, z, alpha, &mut self.scratch),
                    CheckRule::SumProduct => sum_product_layer(q, r, d, z, &mut self.scratch),
                }
                for (e, &(col, s)) in row.iter().enumerate() {
                    // l[(i + s) % z] = q[i] + r[i], as two contiguous runs.
                    let l = &mut self.llr[col * z..(col + 1) * z];
                    let (head, tail) = l.split_at_mut(s);
                    let qe = &q[e * z..(e + 1) * z];
                    let re = &r[e * z..(e + 1) * z];
                    for ((lv, qv), rv) in tail.iter_mut().chain(head.iter_mut()).zip(qe).zip(re) {
                        *lv = qv + rv;
                    }
                }
                offset += d * z;
            }
            converged = self.syndrome_ok(&code, layers);
        }
        BlockDecoded {
            bits: self.hard.clone(),
            converged,
            iterations,
        }
    }

    fn syndrome_ok(&mut self, code: &NrCode, layers: usize) -> bool {
        for (h, &l) in self.hard.iter_mut().zip(&self.llr) {
            *h = u8::from(l < 0.0);
        }
        code.checks_hold(&self.hard, layers)
    }
}

fn min_sum_layer(q: &[f32], r: &mut [f32], d: usize, z: usize, alpha: f32, sc: &mut Scratch) {
    sc.reset(z, f32::INFINITY);
    let Scratch { min1, min2, arg, sign } = sc;
    for e in 0..d {
        let qe = &q[e * z..(e + 1) * z];
        for i in 0..z {
            let a = qe[i].abs();
            sign[i] ^= qe[i] < 0.0;
            if a < min1[i] {
                min2[i] = min1[i];
                min1[i] = a;
                arg[i] = e;
            } else if a < min2[i] {
                min2[i] = a;
            }
        }
    }
    for e in 0..d {
        let qe = &q[e * z..(e + 1) * z];
        let re = &mut r[e * z..(e + 1) * z];
        for i in 0..z {
            let m = if arg[i] == e { min2[i] } else { min1[i] };
            let neg = sign[i] ^ (qe[i] < 0.0);
            re[i] = if neg { -alpha * m } else { alpha * m };
        }
    }
}

/// φ(x) = −ln tanh(x/2), its own inverse; clipped so that 0 and ∞ stay finite.
fn phi(x: f32) -> f32 {
    let x = x.clamp(1.0e-7, 30.0);
    -((x * 0.5).tanh()).ln()
}

fn sum_product_layer(q: &[f32], r: &mut [f32], d: usize, z: usize, sc: &mut Scratch) {
    sc.reset(z, 0.0);
    let Scratch { min1: total, sign, .. } = sc;
    for e in 0..d {
        let qe = &q[e * z..(e + 1) * z];
        for i in 0..z {
            total[i] += phi(qe[i].abs());
            sign[i] ^= qe[i] < 0.0;
        }
    }
    for e in 0..d {
        let qe = &q[e * z..(e + 1) * z];
        let re = &mut r[e * z..(e + 1) * z];
        for i in 0..z {
            let m = phi((total[i] - phi(qe[i].abs())).max(0.0));
            let neg = sign[i] ^ (qe[i] < 0.0);
            re[i] = if neg { -m } else { m };
        }
    }
}

/// CRC of TS 38.212 §5.1 over bits (MSB first); returns `len` parity bits.
fn crc_bits(bits: &[u8], poly: u32, len: u32) -> Vec<u8> {
    let mask = (1u32 << len) - 1;
    let mut reg = 0u32;
    for &b in bits {
        let top = ((reg >> (len - 1)) & 1) ^ u32::from(b & 1);
        reg = (reg << 1) & mask;
        if top == 1 {
            reg ^= poly & mask;
        }
    }
    (0..len).rev().map(|i| ((reg >> i) & 1) as u8).collect()
}

/// gCRC24A (transport blocks over 3824 bits).
fn crc24a(bits: &[u8]) -> Vec<u8> {
    crc_bits(bits, 0x864CFB, 24)
}
/// gCRC24B (code blocks when a transport block is segmented).
fn crc24b(bits: &[u8]) -> Vec<u8> {
    crc_bits(bits, 0x800063, 24)
}
/// gCRC16 (transport blocks up to 3824 bits).
fn crc16(bits: &[u8]) -> Vec<u8> {
    crc_bits(bits, 0x1021, 16)
}

/// How one transport block is coded: base graph, lifting, segmentation, rate matching.
#[derive(Debug, Clone)]
pub struct TbPlan {
    /// Payload bits `A` (after padding to a whole number per block).
    pub a: usize,
    /// Payload bytes the caller gave.
    pub payload_bytes: usize,
    /// Transport-block CRC length (16 or 24).
    pub tb_crc: usize,
    /// Code blocks `C`.
    pub blocks: usize,
    /// Code-block CRC length (0 or 24).
    pub cb_crc: usize,
    /// Bits per block before filler, `K'`.
    pub k_prime: usize,
    /// The lifted code.
    pub code: Arc<NrCode>,
    /// Rate-matched bits per block, `E` (a multiple of the modulation order).
    pub e: usize,
    /// Modulation order `Q_m`.
    pub qm: usize,
}

impl TbPlan {
    /// Plans a block of `payload_bytes` at code `rate` for `qm` bits per symbol, with the
    /// base graph chosen as TS 38.212 §7.2.2 does unless `force` names one.
    pub fn new(payload_bytes: usize, rate: f64, qm: usize, force: Option<BaseGraph>) -> Result<TbPlan, LdpcError> {
        if !(rate > 0.0 && rate <= 0.95) {
            return Err(LdpcError::Rate(rate));
        }
        if ![1, 2, 4, 6, 8].contains(&qm) {
            return Err(LdpcError::Order(qm));
        }
        if payload_bytes == 0 {
            return Err(LdpcError::Empty);
        }
        let a0 = payload_bytes * 8;
        let tb_crc = if a0 > 3824 { 24 } else { 16 };
        let bg = force.unwrap_or_else(|| BaseGraph::select(a0, rate));
        let kcb = bg.max_block();
        let b0 = a0 + tb_crc;
        let (blocks, cb_crc) = if b0 <= kcb { (1, 0) } else { (b0.div_ceil(kcb - 24), 24) };
        // Pad the payload with zero bits so that every block carries the same K'.
        let pad = (blocks - b0 % blocks) % blocks;
        let a = a0 + pad;
        let b_prime = a + tb_crc + blocks * cb_crc;
        let k_prime = b_prime / blocks;
        let kb = match bg {
            BaseGraph::Bg1 => 22,
            BaseGraph::Bg2 if b0 > 640 => 10,
            BaseGraph::Bg2 if b0 > 560 => 9,
            BaseGraph::Bg2 if b0 > 192 => 8,
            BaseGraph::Bg2 => 6,
        };
        let z = lifting_sizes()
            .into_iter()
            .find(|&z| kb * z >= k_prime)
            .ok_or(LdpcError::Rate(rate))?;
        let code = NrCode::get(bg, z).ok_or(LdpcError::Rate(rate))?;
        let e = qm * ((k_prime as f64 / rate / qm as f64).ceil() as usize);
        Ok(TbPlan {
            a,
            payload_bytes,
            tb_crc,
            blocks,
            cb_crc,
            k_prime,
            code,
            e,
            qm,
        })
    }

    /// Coded bits sent for the whole transport block.
    pub fn coded_bits(&self) -> usize {
        self.e * self.blocks
    }

    /// Circular buffer length `N_cb` (no limited-buffer rate matching).
    fn ncb(&self) -> usize {
        self.code.n() - 2 * self.code.z
    }

    /// Filler positions in the circular buffer: `[start, end)`.
    fn fillers(&self) -> (usize, usize) {
        let z2 = 2 * self.code.z;
        (self.k_prime - z2, self.code.k() - z2)
    }

    /// Buffer positions of the `E` selected bits, in order (wrapping when `E` exceeds the buffer).
    fn selection(&self) -> Vec<usize> {
        let ncb = self.ncb();
        let (f0, f1) = self.fillers();
        let mut out = Vec::with_capacity(self.e);
        let mut j = 0;
        while out.len() < self.e {
            let p = j % ncb;
            if !(f0..f1).contains(&p) {
                out.push(p);
            }
            j += 1;
        }
        out
    }

    /// Block rows the decoder needs: the core four plus one per extension column sent.
    pub fn layers(&self) -> usize {
        let (f0, f1) = self.fillers();
        let sent = self.e.min(self.ncb() - (f1 - f0)) + (f1 - f0);
        let cols = 2 + sent.div_ceil(self.code.z);
        cols.saturating_sub(self.code.base_graph().info_cols())
            .clamp(4, self.code.base_graph().rows())
    }

    /// Payload bytes → coded, rate-matched, interleaved bits (`coded_bits()` of them).
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut a_bits = crate::channel::bytes_to_bits(&payload[..payload.len().min(self.payload_bytes)]);
        a_bits.resize(self.a, 0);
        let crc = if self.tb_crc == 24 {
            crc24a(&a_bits)
        } else {
            crc16(&a_bits)
        };
        a_bits.extend(crc);
        let per = self.k_prime - self.cb_crc;
        let selection = self.selection();
        let mut out = Vec::with_capacity(self.coded_bits());
        for chunk in a_bits.chunks(per) {
            let mut info = chunk.to_vec();
            if self.cb_crc > 0 {
                let c = crc24b(&info);
                info.extend(c);
            }
            info.resize(self.code.k(), 0);
            let cw = self.code.encode(&info);
            let d = &cw[2 * self.code.z..];
            let e: Vec<u8> = selection.iter().map(|&p| d[p]).collect();
            out.extend(interleave(&e, self.qm));
        }
        out
    }

    /// Channel LLRs (`coded_bits()` of them) → payload bytes, or why not.
    pub fn decode(
        &self,
        llrs: &[f32],
        decoder: &mut LayeredDecoder,
        max_iterations: usize,
    ) -> Result<TbDecoded, LdpcError> {
        if llrs.len() != self.coded_bits() {
            return Err(LdpcError::Llrs {
                expected: self.coded_bits(),
                got: llrs.len(),
            });
        }
        let z = self.code.z;
        let selection = self.selection();
        let (f0, f1) = self.fillers();
        let per = self.k_prime - self.cb_crc;
        let layers = self.layers();
        let mut bits = Vec::with_capacity(self.blocks * per);
        let mut failed = 0;
        let mut iterations = 0;
        let mut channel = vec![0f32; self.code.n()];
        for block in llrs.chunks(self.e) {
            let e = deinterleave(block, self.qm);
            channel.iter_mut().for_each(|v| *v = 0.0);
            for (&p, &l) in selection.iter().zip(&e) {
                channel[2 * z + p] += l;
            }
            for v in &mut channel[2 * z + f0..2 * z + f1] {
                *v = KNOWN_ZERO;
            }
            let out = decoder.decode(&channel, layers, max_iterations);
            iterations += out.iterations;
            let info = &out.bits[..self.k_prime];
            let crc_ok = self.cb_crc == 0 || crc24b(&info[..per]) == info[per..];
            if !(out.converged && crc_ok) {
                failed += 1;
            }
            bits.extend_from_slice(&info[..per]);
        }
        let (data, crc) = bits.split_at(self.a);
        let tb_ok = if self.tb_crc == 24 {
            crc24a(data) == crc
        } else {
            crc16(data) == crc
        };
        let mut payload = crate::channel::bits_to_bytes(data);
        payload.truncate(self.payload_bytes);
        Ok(TbDecoded {
            ok: failed == 0 && tb_ok,
            payload,
            blocks_failed: failed,
            iterations,
        })
    }
}

/// The receiver's view of one transport block.
#[derive(Debug, Clone, PartialEq)]
pub struct TbDecoded {
    /// Every block converged and every CRC held.
    pub ok: bool,
    /// The decoded payload (possibly wrong when `ok` is false).
    pub payload: Vec<u8>,
    /// Code blocks that did not converge or failed their CRC.
    pub blocks_failed: usize,
    /// Decoder iterations over all blocks.
    pub iterations: usize,
}

/// The result of sending bytes over the coded link ([`transmit_coded`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CodedTransmission {
    /// The decoded bytes (same length as sent; wrong when `ok` is false).
    pub received: Vec<u8>,
    /// Every block converged and every CRC held.
    pub ok: bool,
    /// Coded bits sent.
    pub coded_bits: u64,
    /// Coded bits whose hard decision was wrong before decoding.
    pub bit_errors: u64,
    /// Channel uses (complex symbols).
    pub symbols: u64,
    /// Code blocks of the transport block.
    pub blocks: usize,
    /// Code blocks that failed.
    pub blocks_failed: usize,
    /// Decoder iterations over all blocks.
    pub iterations: usize,
}

/// The settings of a coded link: modulation, SNR, code and decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodedLink {
    /// Modulation the coded bits are mapped onto.
    pub modulation: crate::channel::Modulation,
    /// Es/N0 in dB (`f64::INFINITY`: no noise).
    pub snr_db: f64,
    /// Code rate after rate matching.
    pub rate: f64,
    /// Base graph, or `None` to choose as TS 38.212 §7.2.2 does.
    pub base_graph: Option<BaseGraph>,
    /// Decoder check rule.
    pub rule: CheckRule,
    /// Maximum decoder iterations.
    pub iterations: usize,
}

/// Bytes → 5G NR LDPC → Gray QAM → AWGN → max-log LLRs → layered decoding → bytes,
/// with the settings of `link`.
pub fn transmit_coded<R: rand::Rng + ?Sized>(
    bytes: &[u8],
    link: &CodedLink,
    rng: &mut R,
) -> Result<CodedTransmission, LdpcError> {
    transmit_coded_over(bytes, link, &crate::channel::Fading::default(), rng)
}

/// [`transmit_coded`] over a fading channel: the coded symbols cross `fading` at the
/// link's average Es/N0, are equalised by the (estimated) gain, and each bit's LLR is
/// scaled by its symbol's |ĥ|² (unless `fading.scale_llrs` is false), so the decoder
/// trusts bits from deep fades less. `symbols` counts pilot symbols too. With
/// [`crate::channel::FadingModel::Awgn`] this is exactly [`transmit_coded`].
pub fn transmit_coded_over<R: rand::Rng + ?Sized>(
    bytes: &[u8],
    link: &CodedLink,
    fading: &crate::channel::Fading,
    rng: &mut R,
) -> Result<CodedTransmission, LdpcError> {
    use crate::channel::{modulate, soft_decisions, Channel};
    let CodedLink {
        modulation,
        snr_db,
        rate,
        base_graph,
        rule,
        iterations,
    } = *link;
    let plan = TbPlan::new(bytes.len(), rate, modulation.bits_per_symbol(), base_graph)?;
    let coded = plan.encode(bytes);
    let mut symbols = modulate(&coded, modulation).map_err(|e| LdpcError::Channel(e.to_string()))?;
    let channel = Channel::new(snr_db, *fading).map_err(|e| LdpcError::Channel(e.to_string()))?;
    let faded = channel.apply(&mut symbols, rng);
    // A noiseless link still needs finite LLRs.
    let n0 = channel.n0().max(1e-3);
    let llrs: Vec<f32> = soft_decisions(&symbols, &faded, modulation, &channel, n0, coded.len())
        .iter()
        .map(|&l| l as f32)
        .collect();
    let bit_errors = llrs
        .iter()
        .zip(&coded)
        .filter(|(l, b)| u8::from(**l < 0.0) != **b)
        .count();
    let mut decoder = LayeredDecoder::new(plan.code.clone(), rule);
    let out = plan.decode(&llrs, &mut decoder, iterations)?;
    Ok(CodedTransmission {
        received: out.payload,
        ok: out.ok,
        coded_bits: coded.len() as u64,
        bit_errors: bit_errors as u64,
        symbols: symbols.len() as u64 + faded.pilots,
        blocks: plan.blocks,
        blocks_failed: out.blocks_failed,
        iterations: out.iterations,
    })
}

/// Bit interleaving of TS 38.212 §5.4.2.2: `E/Qm` rows written by columns.
fn interleave<T: Copy>(e: &[T], qm: usize) -> Vec<T> {
    let rows = e.len() / qm;
    let mut f = Vec::with_capacity(e.len());
    for j in 0..rows {
        for i in 0..qm {
            f.push(e[i * rows + j]);
        }
    }
    f
}

fn deinterleave<T: Copy + Default>(f: &[T], qm: usize) -> Vec<T> {
    let rows = f.len() / qm;
    let mut e = vec![T::default(); f.len()];
    for j in 0..rows {
        for i in 0..qm {
            e[i * rows + j] = f[j * qm + i];
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_bits(n: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
        (0..n).map(|_| rng.random_range(0..2u8)).collect()
    }

    #[test]
    fn lifting_sizes_are_the_51_of_the_standard() {
        let zs = lifting_sizes();
        assert_eq!(zs.len(), 51);
        assert_eq!(zs[0], 2);
        assert_eq!(*zs.last().unwrap(), 384);
    }

    #[test]
    fn base_graphs_have_the_standard_edge_counts() {
        // TS 38.212: BG1 has 316 non-zero entries, BG2 197.
        let bg1 = NrCode::get(BaseGraph::Bg1, 2).unwrap();
        let bg2 = NrCode::get(BaseGraph::Bg2, 2).unwrap();
        assert_eq!(bg1.rows.iter().map(Vec::len).sum::<usize>(), 316);
        assert_eq!(bg2.rows.iter().map(Vec::len).sum::<usize>(), 197);
    }

    #[test]
    fn codewords_satisfy_every_parity_check_of_the_reference_matrix() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (bg, z) in [
            (BaseGraph::Bg1, 384),
            (BaseGraph::Bg1, 13),
            (BaseGraph::Bg2, 52),
            (BaseGraph::Bg2, 7),
        ] {
            let code = NrCode::get(bg, z).unwrap();
            let h = NrCode::toolbox_matrix(bg, z).unwrap();
            for _ in 0..3 {
                let info = random_bits(code.k(), &mut rng);
                let cw = code.encode(&info);
                assert_eq!(&cw[..code.k()], &info[..], "systematic");
                for row in 0..h.num_rows() {
                    let parity = h.iter_row(row).fold(0u8, |p, &c| p ^ cw[c]);
                    assert_eq!(parity, 0, "{bg} Z={z}: check {row} fails");
                }
                assert!(code.checks_hold(&cw, bg.rows()));
            }
        }
    }

    #[test]
    fn crc_of_a_message_with_its_crc_is_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut bits = random_bits(500, &mut rng);
        let c = crc24a(&bits);
        bits.extend(c);
        assert!(crc24a(&bits).iter().all(|&b| b == 0));
    }

    #[test]
    fn interleaving_round_trips() {
        let e: Vec<u32> = (0..24).collect();
        for qm in [1, 2, 4, 6] {
            assert_eq!(deinterleave(&interleave(&e, qm), qm), e);
        }
        // Qm = 2, E = 6: rows e0 e1 e2 / e3 e4 e5 read by columns.
        assert_eq!(interleave(&[0, 1, 2, 3, 4, 5], 2), vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn plans_follow_the_segmentation_rules() {
        // 1000 bytes at rate 1/2: A = 8000 > 3824 → CRC24A, BG1, one block.
        let p = TbPlan::new(1000, 0.5, 2, None).unwrap();
        assert_eq!((p.tb_crc, p.blocks, p.code.base_graph()), (24, 1, BaseGraph::Bg1));
        assert_eq!(p.k_prime, 8024);
        assert!(p.code.k() >= p.k_prime && p.code.z() == 384);
        // 3000 bytes: 24024 bits over 8424-bit blocks → 3 blocks with CB CRCs.
        let p = TbPlan::new(3000, 0.5, 2, None).unwrap();
        assert_eq!((p.blocks, p.cb_crc), (3, 24));
        // 20 bytes: BG2 with CRC16.
        let p = TbPlan::new(20, 0.5, 2, None).unwrap();
        assert_eq!((p.tb_crc, p.code.base_graph()), (16, BaseGraph::Bg2));
        assert_eq!(p.e % 2, 0);
        assert_eq!(TbPlan::new(10, 0.99, 2, None).unwrap_err(), LdpcError::Rate(0.99));
    }

    fn noiseless_llrs(bits: &[u8]) -> Vec<f32> {
        bits.iter().map(|&b| if b == 0 { 4.0 } else { -4.0 }).collect()
    }

    #[test]
    fn transport_blocks_round_trip_without_noise() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (bytes, rate, qm) in [(20, 0.5, 2), (700, 0.33, 4), (3000, 0.75, 6), (1200, 0.2, 2)] {
            let payload: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
            let plan = TbPlan::new(bytes, rate, qm, None).unwrap();
            let coded = plan.encode(&payload);
            assert_eq!(coded.len(), plan.coded_bits());
            let mut dec = LayeredDecoder::new(plan.code.clone(), CheckRule::MinSum { alpha: 0.75 });
            let out = plan.decode(&noiseless_llrs(&coded), &mut dec, 10).unwrap();
            assert!(out.ok, "{bytes} B at {rate}: {out:?}");
            assert_eq!(out.payload, payload);
        }
    }

    #[test]
    fn corrupted_blocks_are_reported_not_passed_as_good() {
        let plan = TbPlan::new(200, 0.5, 2, None).unwrap();
        let payload = vec![0x5a; 200];
        let coded = plan.encode(&payload);
        // Every LLR says the opposite of what was sent.
        let llrs: Vec<f32> = noiseless_llrs(&coded).iter().map(|l| -l).collect();
        let mut dec = LayeredDecoder::new(plan.code.clone(), CheckRule::SumProduct);
        let out = plan.decode(&llrs, &mut dec, 5).unwrap();
        assert!(!out.ok);
        assert_eq!(out.blocks_failed, 1);
    }

    /// Blocks of `bytes` at `rate` over BPSK + AWGN at `snr_db`: the fraction that fails.
    fn bler(bytes: usize, rate: f64, snr_db: f64, blocks: usize, seed: u64) -> f64 {
        use crate::channel::{demodulate_llr, modulate, Awgn, Modulation};
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let plan = TbPlan::new(bytes, rate, 1, None).unwrap();
        let awgn = Awgn::new(snr_db).unwrap();
        let mut dec = LayeredDecoder::new(plan.code.clone(), CheckRule::MinSum { alpha: 0.75 });
        let mut failed = 0;
        for _ in 0..blocks {
            let payload: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
            let coded = plan.encode(&payload);
            let mut sym = modulate(&coded, Modulation::Bpsk).unwrap();
            awgn.apply(&mut sym, &mut rng);
            let llrs: Vec<f32> = demodulate_llr(&sym, Modulation::Bpsk, awgn.n0(), coded.len())
                .iter()
                .map(|&l| l as f32)
                .collect();
            let out = plan.decode(&llrs, &mut dec, 10).unwrap();
            if !out.ok || out.payload != payload {
                failed += 1;
            }
        }
        failed as f64 / blocks as f64
    }

    #[test]
    fn block_error_rate_falls_off_a_cliff() {
        // 40-byte blocks (BG2) at rate 1/2 over BPSK (Es/N0; Eb/N0 is 3 dB more): 2000
        // blocks on either side of the waterfall, and none lost well above it.
        let below = bler(40, 0.5, -3.0, 2000, 11);
        let above = bler(40, 0.5, 0.0, 2000, 12);
        let high = bler(40, 0.5, 3.0, 300, 13);
        assert!(below > 0.9, "BLER {below} at -3 dB");
        assert!(above < 0.01, "BLER {above} at 0 dB");
        assert_eq!(high, 0.0);
    }

    #[test]
    fn decoder_agrees_with_ldpc_toolbox_layered_sum_product() {
        use crate::channel::{demodulate_llr, modulate, Awgn, Modulation};
        use ldpc_toolbox::decoder::factory::{DecoderFactory, DecoderImplementation};
        let (bg, z) = (BaseGraph::Bg2, 20);
        let code = NrCode::get(bg, z).unwrap();
        let h = NrCode::toolbox_matrix(bg, z).unwrap();
        let mut theirs = DecoderImplementation::HLPhif64.build_decoder(h);
        let mut ours = LayeredDecoder::new(code.clone(), CheckRule::SumProduct);
        let awgn = Awgn::new(-6.5).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let (mut both, mut agree_fail, mut only_one) = (0, 0, 0);
        for _ in 0..300 {
            let info = random_bits(code.k(), &mut rng);
            let cw = code.encode(&info);
            let mut sym = modulate(&cw, Modulation::Bpsk).unwrap();
            awgn.apply(&mut sym, &mut rng);
            let mut llr = demodulate_llr(&sym, Modulation::Bpsk, awgn.n0(), cw.len());
            llr[..2 * z].iter_mut().for_each(|l| *l = 0.0); // punctured
            let llr32: Vec<f32> = llr.iter().map(|&l| l as f32).collect();
            let a = ours.decode(&llr32, bg.rows(), 20);
            let b = theirs.decode(&llr, 20);
            match (a.converged, b) {
                (true, Ok(out)) => {
                    assert_eq!(a.bits, out.codeword);
                    both += 1;
                }
                (false, Err(_)) => agree_fail += 1,
                _ => only_one += 1,
            }
        }
        assert!(both > 100 && agree_fail > 5, "both {both}, both failed {agree_fail}");
        assert!(only_one <= 15, "{only_one} of 300 blocks decoded by only one decoder");
    }
}
