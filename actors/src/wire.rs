//! How a [`Message`] crosses a process boundary: postcard (a compact serde format)
//! over mirror types that borrow the message's buffers.
//!
//! Images travel as their pixel buffer and encoded images (JPEG, PNG in a
//! [`Value::Bytes`]) as their bytes: nothing is re-encoded. On arrival the byte
//! fields are slices of the one received buffer ([`Bytes::slice_ref`]), not copies.
//! The frame id, part and capture time travel; the monotonic birth instant cannot,
//! so the frame's age when it was sent travels instead and the receiver rebuilds
//! `born` from it (pipeline latency on the far side then leaves out the time on the
//! wire, which no clock shared by both machines could measure).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dataflow_engine::{Fields, FrameId, Image, Message, Part, PixelFormat, Rect, Value};
use serde::{Deserialize, Serialize};

/// Why a message could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A field holds an in-process value that has no wire form.
    #[error("field `{0}` holds an in-process value (Value::Opaque) that cannot cross machines; keep the stage that reads it on the same machine as the one that writes it")]
    Opaque(String),
    /// The bytes are not a message of this format.
    #[error("malformed message on the link: {0}")]
    Malformed(String),
}

#[derive(Serialize, Deserialize)]
struct WireMessage<'a> {
    stream: u32,
    seq: u64,
    part_index: u32,
    part_count: u32,
    captured_ns: u64,
    age_ns: u64,
    #[serde(borrow)]
    fields: Vec<(Cow<'a, str>, WireValue<'a>)>,
}

#[derive(Serialize, Deserialize)]
enum WireValue<'a> {
    Image {
        width: u32,
        height: u32,
        format: u8,
        #[serde(with = "serde_bytes")]
        data: &'a [u8],
    },
    Text(#[serde(borrow)] Cow<'a, str>),
    Texts(Vec<Option<String>>),
    Bytes(#[serde(with = "serde_bytes")] &'a [u8]),
    Number(f64),
    Rect {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    Record(Vec<(String, f64)>),
}

fn format_code(f: PixelFormat) -> u8 {
    match f {
        PixelFormat::Gray8 => 1,
        PixelFormat::Rgb8 => 3,
        PixelFormat::Rgba8 => 4,
    }
}

fn format_of(code: u8) -> Result<PixelFormat, WireError> {
    match code {
        1 => Ok(PixelFormat::Gray8),
        3 => Ok(PixelFormat::Rgb8),
        4 => Ok(PixelFormat::Rgba8),
        o => Err(WireError::Malformed(format!("unknown pixel format {o}"))),
    }
}

/// Writes `msg` (one copy of its buffers into the returned vector).
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut fields = Vec::new();
    for (name, v) in msg.fields.iter() {
        let w = match v {
            Value::Image(i) => WireValue::Image {
                width: i.width,
                height: i.height,
                format: format_code(i.format),
                data: &i.data,
            },
            Value::Text(t) => WireValue::Text(Cow::Borrowed(t)),
            Value::Texts(t) => WireValue::Texts(t.to_vec()),
            Value::Bytes(b) => WireValue::Bytes(b),
            Value::Number(n) => WireValue::Number(*n),
            Value::Rect(r) => WireValue::Rect {
                x: r.x,
                y: r.y,
                width: r.width,
                height: r.height,
            },
            Value::Record(r) => WireValue::Record(r.iter().map(|(k, v)| (k.clone(), *v)).collect()),
            Value::Opaque(_) => return Err(WireError::Opaque(name.to_string())),
        };
        fields.push((Cow::Borrowed(name), w));
    }
    let wire = WireMessage {
        stream: msg.id.stream,
        seq: msg.id.seq,
        part_index: msg.part.index,
        part_count: msg.part.count,
        captured_ns: msg
            .captured
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        age_ns: msg.born.elapsed().as_nanos() as u64,
        fields,
    };
    postcard::to_stdvec(&wire).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Reads a message from `buf`; byte fields share `buf`'s storage.
pub fn decode(buf: &Bytes) -> Result<Message, WireError> {
    let wire: WireMessage = postcard::from_bytes(buf).map_err(|e| WireError::Malformed(e.to_string()))?;
    let mut fields = Fields::new();
    for (name, v) in wire.fields {
        let value = match v {
            WireValue::Image {
                width,
                height,
                format,
                data,
            } => {
                let format = format_of(format)?;
                if data.len() != width as usize * height as usize * format.channels() {
                    return Err(WireError::Malformed(format!(
                        "image `{name}` is {width}x{height} but carries {} bytes",
                        data.len()
                    )));
                }
                Value::Image(Image {
                    width,
                    height,
                    format,
                    data: buf.slice_ref(data),
                })
            }
            WireValue::Text(t) => Value::Text(Arc::from(t.as_ref())),
            WireValue::Texts(t) => Value::Texts(Arc::from(t)),
            WireValue::Bytes(b) => Value::Bytes(buf.slice_ref(b)),
            WireValue::Number(n) => Value::Number(n),
            WireValue::Rect { x, y, width, height } => Value::Rect(Rect { x, y, width, height }),
            WireValue::Record(r) => Value::Record(Arc::new(r.into_iter().collect::<BTreeMap<_, _>>())),
        };
        fields.insert(name.into_owned(), value);
    }
    let age = Duration::from_nanos(wire.age_ns);
    Ok(Message {
        id: FrameId {
            stream: wire.stream,
            seq: wire.seq,
        },
        part: Part {
            index: wire.part_index,
            count: wire.part_count,
        },
        captured: UNIX_EPOCH + Duration::from_nanos(wire.captured_ns),
        born: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        fields,
    })
}

/// The capture time of a message as the wire carries it (nanosecond precision).
pub fn wire_time(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_value_round_trips_and_images_are_not_copied_on_arrival() {
        let img = Image {
            width: 3,
            height: 2,
            format: PixelFormat::Rgb8,
            data: Bytes::from((0u8..18).collect::<Vec<_>>()),
        };
        let mut rec = BTreeMap::new();
        rec.insert("psnr".to_string(), 31.5);
        let fields = Fields::new()
            .with("image", Value::Image(img.clone()))
            .with("text", Value::Text(Arc::from("a red car")))
            .with("texts", Value::Texts(Arc::from(vec![Some("a".into()), None])))
            .with("jpeg", Value::Bytes(Bytes::from_static(b"\xff\xd8jpeg")))
            .with("snr", Value::Number(-3.25))
            .with(
                "box",
                Value::Rect(Rect {
                    x: 1,
                    y: 2,
                    width: 3,
                    height: 4,
                }),
            )
            .with("metrics", Value::Record(Arc::new(rec)));
        let msg = Message {
            id: FrameId { stream: 2, seq: 41 },
            part: Part { index: 3, count: 4 },
            captured: SystemTime::now(),
            born: Instant::now(),
            fields,
        };
        let buf = Bytes::from(encode(&msg).unwrap());
        // Compact: the 18 pixel bytes plus names and a few varints.
        assert!(buf.len() < 160, "{} bytes", buf.len());
        let back = decode(&buf).unwrap();
        assert_eq!(back.id, msg.id);
        assert_eq!(back.part, msg.part);
        assert_eq!(back.captured, wire_time(msg.captured));
        assert_eq!(back.fields.image("image").unwrap(), &img);
        let data = &back.fields.image("image").unwrap().data;
        let within = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(
            within.contains(&(data.as_ptr() as usize)),
            "pixels are a slice of the buffer"
        );
        assert_eq!(back.fields.text("text"), Some("a red car"));
        assert_eq!(back.fields.texts("texts").unwrap(), &[Some("a".to_string()), None]);
        assert_eq!(back.fields.bytes("jpeg").unwrap().as_ref(), b"\xff\xd8jpeg");
        assert_eq!(back.fields.number("snr"), Some(-3.25));
        assert_eq!(
            back.fields.rect("box"),
            Some(Rect {
                x: 1,
                y: 2,
                width: 3,
                height: 4
            })
        );
        match back.fields.get("metrics") {
            Some(Value::Record(r)) => assert_eq!(r.get("psnr"), Some(&31.5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn opaque_values_are_refused_by_name_and_garbage_is_malformed() {
        let msg = Message {
            id: FrameId { stream: 0, seq: 0 },
            part: Part::WHOLE,
            captured: SystemTime::now(),
            born: Instant::now(),
            fields: Fields::new().with("guard", Value::Opaque(Arc::new(5u8))),
        };
        let e = encode(&msg).unwrap_err().to_string();
        assert!(e.contains("field `guard`"), "{e}");
        assert!(decode(&Bytes::from_static(b"\xff\xff\xff")).is_err());
    }
}
