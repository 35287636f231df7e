//! Messages between a `python` stage and its worker process.
//!
//! Each message is a 4-byte little-endian length followed by that many bytes of JSON,
//! on the worker's stdin (engine to worker) and stdout (worker to engine). Pixels,
//! `f32` tensors ([`TensorF32`]) and byte fields never travel in a header: they sit in the shared-memory segments
//! ([`super::shm`]) and the header gives their offsets. The Python side of this file
//! is `python/dataflow_stage/protocol.py`; the two change together.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use dataflow_engine::{Fields, Image, Message, PixelFormat, Rect, Value};
use serde::{Deserialize, Serialize};

use super::shm::{aligned, Segment};
use super::tensor::TensorF32;

/// Largest header accepted from a worker (pixels never travel in headers).
const MAX_HEADER: u32 = 64 << 20;

/// One field on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum WireField {
    /// A text.
    Text { v: String },
    /// A number.
    Number { v: f64 },
    /// Texts of several parts.
    Texts { v: Vec<Option<String>> },
    /// Named numbers.
    Record { v: BTreeMap<String, f64> },
    /// A rectangle `[x, y, w, h]`.
    Rect { v: [u32; 4] },
    /// An image of `c` channels whose pixels start at `offset` in a segment.
    Image { h: u32, w: u32, c: u32, offset: u64 },
    /// A row-major little-endian `f32` tensor of `shape` starting at `offset` in a segment.
    Tensor { shape: Vec<u64>, offset: u64 },
    /// Bytes at `offset` in a segment.
    Bytes { offset: u64, len: u64 },
}

/// What the engine sends.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Request<'a> {
    /// Once, before the first frame: the graph's `args`.
    Setup {
        args: &'a serde_json::Map<String, serde_json::Value>,
    },
    /// One frame.
    Frame {
        frame: String,
        seq: u64,
        part: [u32; 2],
        in_size: u64,
        fields: BTreeMap<&'a str, WireField>,
    },
    /// Several frames in one call (a stage under `batch`): each frame's pixels, tensors
    /// and bytes at their own offsets in the input segment.
    Batch { in_size: u64, frames: Vec<WireFrame<'a>> },
    /// End of stream: the worker calls `close()` and exits.
    Close,
}

/// One frame of a batch request.
#[derive(Debug, Serialize)]
pub(super) struct WireFrame<'a> {
    pub frame: String,
    pub seq: u64,
    pub part: [u32; 2],
    pub fields: BTreeMap<&'a str, WireField>,
}

/// What the worker answers.
#[derive(Debug, Deserialize)]
pub(super) struct Reply {
    /// Whether the call succeeded.
    pub ok: bool,
    /// The traceback's last lines when it did not.
    #[serde(default)]
    pub error: Option<String>,
    /// The worker's pid (after setup).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Output frames.
    #[serde(default)]
    pub outputs: Vec<WireOutput>,
    /// Seconds the stage's `process` took (the rest of a call is hand-over cost).
    #[serde(default)]
    pub busy_s: f64,
    /// For a batch request: one result per frame, in the request's order.
    #[serde(default)]
    pub frames: Vec<FrameReply>,
}

/// One frame's result in the reply to a batch request.
#[derive(Debug, Deserialize)]
pub(super) struct FrameReply {
    /// Whether this frame succeeded.
    pub ok: bool,
    /// The traceback's last lines when it did not.
    #[serde(default)]
    pub error: Option<String>,
    /// Its output frames.
    #[serde(default)]
    pub outputs: Vec<WireOutput>,
}

/// One output frame: the input's fields, less `drop`, plus `set`.
#[derive(Debug, Deserialize)]
pub(super) struct WireOutput {
    /// Output port name; `None` = the first.
    #[serde(default)]
    pub port: Option<String>,
    /// Fields added or changed.
    #[serde(default)]
    pub set: BTreeMap<String, WireField>,
    /// Input fields removed.
    #[serde(default)]
    pub drop: Vec<String>,
}

/// Writes one message.
pub(super) fn send(w: &mut impl Write, req: &Request<'_>) -> io::Result<()> {
    let body = serde_json::to_vec(req).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("header over 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one message body; `Ok(None)` at end of stream.
pub(super) fn receive(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 4];
    if let Err(e) = r.read_exact(&mut head) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let n = u32::from_le_bytes(head);
    if n > MAX_HEADER {
        return Err(io::Error::other(format!(
            "a {n}-byte header: the worker's stdout is corrupt (does the stage write to sys.__stdout__?)"
        )));
    }
    let mut body = vec![0u8; n as usize];
    match r.read_exact(&mut body) {
        Ok(()) => Ok(Some(body)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The frame request for `msg`, its pixels and bytes written into `seg` (grown as needed).
pub(super) fn encode<'a>(msg: &'a Message, seg: &mut Segment) -> io::Result<Request<'a>> {
    seg.reserve(shm_bytes(msg))?;
    let fields = encode_fields(msg, seg, &mut 0)?;
    Ok(Request::Frame {
        frame: msg.id.to_string(),
        seq: msg.id.seq,
        part: [msg.part.index, msg.part.count],
        in_size: seg.size(),
        fields,
    })
}

/// The batch request for `msgs`: their pixels and bytes written one frame after the
/// other into `seg` (grown as needed).
pub(super) fn encode_batch<'a>(msgs: &'a [Message], seg: &mut Segment) -> io::Result<Request<'a>> {
    seg.reserve(msgs.iter().map(shm_bytes).sum())?;
    let mut at = 0u64;
    let frames = msgs
        .iter()
        .map(|msg| {
            Ok(WireFrame {
                frame: msg.id.to_string(),
                seq: msg.id.seq,
                part: [msg.part.index, msg.part.count],
                fields: encode_fields(msg, seg, &mut at)?,
            })
        })
        .collect::<io::Result<_>>()?;
    Ok(Request::Batch {
        in_size: seg.size(),
        frames,
    })
}

/// Bytes `msg` takes in the input segment (each buffer aligned).
fn shm_bytes(msg: &Message) -> u64 {
    msg.fields
        .iter()
        .map(|(_, v)| match v {
            Value::Image(img) => aligned(img.data.len() as u64),
            Value::Bytes(b) => aligned(b.len() as u64),
            v => TensorF32::of(v).map_or(0, |t| aligned(t.le_bytes().len() as u64)),
        })
        .sum()
}

/// The wire fields of `msg`, its buffers written into `seg` from offset `at` on
/// (advanced past them); `seg` must already hold [`shm_bytes`] from `at`.
fn encode_fields<'a>(msg: &'a Message, seg: &Segment, at: &mut u64) -> io::Result<BTreeMap<&'a str, WireField>> {
    let mut fields = BTreeMap::new();
    for (name, v) in msg.fields.iter() {
        let f = match v {
            Value::Text(t) => WireField::Text { v: t.to_string() },
            Value::Number(n) => WireField::Number { v: *n },
            Value::Texts(t) => WireField::Texts { v: t.to_vec() },
            Value::Record(r) => WireField::Record { v: (**r).clone() },
            Value::Rect(r) => WireField::Rect {
                v: [r.x, r.y, r.width, r.height],
            },
            Value::Image(img) => {
                seg.write_at(&img.data, *at)?;
                let f = WireField::Image {
                    h: img.height,
                    w: img.width,
                    c: img.format.channels() as u32,
                    offset: *at,
                };
                *at += aligned(img.data.len() as u64);
                f
            }
            Value::Bytes(b) => {
                seg.write_at(b, *at)?;
                let f = WireField::Bytes {
                    offset: *at,
                    len: b.len() as u64,
                };
                *at += aligned(b.len() as u64);
                f
            }
            Value::Opaque(_) => match TensorF32::of(v) {
                Some(t) => {
                    seg.write_at(t.le_bytes(), *at)?;
                    let f = WireField::Tensor {
                        shape: t.shape().iter().map(|&d| d as u64).collect(),
                        offset: *at,
                    };
                    *at += aligned(t.le_bytes().len() as u64);
                    f
                }
                // Engine-private values stay on the Rust side and travel on with the frame.
                None => continue,
            },
        };
        fields.insert(name, f);
    }
    Ok(fields)
}

/// The fields of one output frame: `input`'s, less `drop`, plus `set` (pixels read
/// from the output segment).
pub(super) fn decode(input: &Fields, out: WireOutput, seg: &Segment) -> Result<Fields, String> {
    let mut fields = input.clone();
    for name in &out.drop {
        fields.remove(name);
    }
    for (name, f) in out.set {
        let v = match f {
            WireField::Text { v } => Value::Text(Arc::from(v)),
            WireField::Number { v } => Value::Number(v),
            WireField::Texts { v } => Value::Texts(Arc::from(v)),
            WireField::Record { v } => Value::Record(Arc::new(v)),
            WireField::Rect {
                v: [x, y, width, height],
            } => Value::Rect(Rect { x, y, width, height }),
            WireField::Image { h, w, c, offset } => {
                let format = match c {
                    1 => PixelFormat::Gray8,
                    3 => PixelFormat::Rgb8,
                    4 => PixelFormat::Rgba8,
                    _ => return Err(format!("image `{name}` has {c} channels; 1, 3 or 4 are carried")),
                };
                let len = u64::from(h) * u64::from(w) * u64::from(c);
                let data = seg.read_at(offset, len).map_err(|e| format!("image `{name}`: {e}"))?;
                Value::Image(Image {
                    width: w,
                    height: h,
                    format,
                    data: Bytes::from(data),
                })
            }
            WireField::Tensor { shape, offset } => decode_tensor(&name, shape, offset, seg)?,
            WireField::Bytes { offset, len } => Value::Bytes(Bytes::from(
                seg.read_at(offset, len).map_err(|e| format!("bytes `{name}`: {e}"))?,
            )),
        };
        fields.insert(name, v);
    }
    Ok(fields)
}

/// A tensor field of an output frame, its elements read from the output segment.
fn decode_tensor(name: &str, shape: Vec<u64>, offset: u64, seg: &Segment) -> Result<Value, String> {
    let shape: Vec<usize> = shape
        .into_iter()
        .map(usize::try_from)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("tensor `{name}` has a dimension too large for this machine"))?;
    let len = shape
        .iter()
        .try_fold(4u64, |n, &d| n.checked_mul(d as u64))
        .ok_or_else(|| format!("tensor `{name}` of shape {shape:?} is too large"))?;
    let data = seg.read_at(offset, len).map_err(|e| format!("tensor `{name}`: {e}"))?;
    TensorF32::from_le_bytes(shape, Bytes::from(data))
        .map(TensorF32::into_value)
        .ok_or_else(|| format!("tensor `{name}`: its size does not match its shape"))
}
