//! Messages and payloads that travel on edges.
//!
//! A [`Message`] is one part of one frame: its [`FrameId`], which [`Part`] it is
//! (tile k of n), when the source captured it, and named [`Fields`]. Every field
//! value is reference-counted (`Bytes`, `Arc`), so cloning a message for fan-out
//! copies pointers, never pixels.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

/// Identity of a frame: the source stream it came from and its sequence number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameId {
    /// Index of the source stage that produced the frame (its stream).
    pub stream: u32,
    /// Sequence number within the stream, from 0.
    pub seq: u64,
}

impl fmt::Display for FrameId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.stream, self.seq)
    }
}

/// Which part of a frame a message is: tile `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Part {
    /// Zero-based index of this part.
    pub index: u32,
    /// Number of parts the frame was split into.
    pub count: u32,
}

impl Part {
    /// The whole frame (part 0 of 1).
    pub const WHOLE: Part = Part { index: 0, count: 1 };
}

/// Pixel layout of an [`Image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// One byte per pixel.
    Gray8,
    /// Three bytes per pixel, R G B.
    Rgb8,
    /// Four bytes per pixel, R G B A.
    Rgba8,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Gray8 => 1,
            PixelFormat::Rgb8 => 3,
            PixelFormat::Rgba8 => 4,
        }
    }
}

/// An 8-bit image whose pixels live in a shared, immutable buffer.
#[derive(Clone, PartialEq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixel layout.
    pub format: PixelFormat,
    /// Row-major pixels, `width * height * channels` bytes.
    pub data: Bytes,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Image({}x{} {:?})", self.width, self.height, self.format)
    }
}

impl Image {
    /// Wraps an RGB image without copying its pixels.
    pub fn from_rgb(img: image::RgbImage) -> Self {
        let (width, height) = img.dimensions();
        Image {
            width,
            height,
            format: PixelFormat::Rgb8,
            data: Bytes::from(img.into_raw()),
        }
    }

    /// Wraps an RGBA image without copying its pixels.
    pub fn from_rgba(img: image::RgbaImage) -> Self {
        let (width, height) = img.dimensions();
        Image {
            width,
            height,
            format: PixelFormat::Rgba8,
            data: Bytes::from(img.into_raw()),
        }
    }

    /// Wraps a grayscale image without copying its pixels.
    pub fn from_gray(img: image::GrayImage) -> Self {
        let (width, height) = img.dimensions();
        Image {
            width,
            height,
            format: PixelFormat::Gray8,
            data: Bytes::from(img.into_raw()),
        }
    }

    /// Converts to an RGB image (copies; gray is replicated, alpha dropped).
    pub fn to_rgb(&self) -> image::RgbImage {
        match self.format {
            PixelFormat::Rgb8 => image::RgbImage::from_fn(self.width, self.height, |x, y| {
                let i = (y as usize * self.width as usize + x as usize) * 3;
                image::Rgb([self.data[i], self.data[i + 1], self.data[i + 2]])
            }),
            PixelFormat::Rgba8 => image::RgbImage::from_fn(self.width, self.height, |x, y| {
                let i = (y as usize * self.width as usize + x as usize) * 4;
                image::Rgb([self.data[i], self.data[i + 1], self.data[i + 2]])
            }),
            PixelFormat::Gray8 => image::RgbImage::from_fn(self.width, self.height, |x, y| {
                let v = self.data[y as usize * self.width as usize + x as usize];
                image::Rgb([v, v, v])
            }),
        }
    }

    /// Converts to a grayscale image (copies; colour is averaged).
    pub fn to_gray(&self) -> image::GrayImage {
        match self.format {
            PixelFormat::Gray8 => image::GrayImage::from_fn(self.width, self.height, |x, y| {
                image::Luma([self.data[y as usize * self.width as usize + x as usize]])
            }),
            _ => image::DynamicImage::ImageRgb8(self.to_rgb()).to_luma8(),
        }
    }

    /// Converts to an RGBA image (copies).
    pub fn to_rgba(&self) -> image::RgbaImage {
        match self.format {
            PixelFormat::Rgba8 => image::RgbaImage::from_fn(self.width, self.height, |x, y| {
                let i = (y as usize * self.width as usize + x as usize) * 4;
                image::Rgba([self.data[i], self.data[i + 1], self.data[i + 2], self.data[i + 3]])
            }),
            _ => image::DynamicImage::ImageRgb8(self.to_rgb()).to_rgba8(),
        }
    }

    /// Bytes of pixel data.
    pub fn len_bytes(&self) -> usize {
        self.data.len()
    }
}

/// A rectangle in pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// The value of one field of a message.
#[derive(Clone)]
pub enum Value {
    /// An image (frame, tile, mask, object slice, reconstruction).
    Image(Image),
    /// A text (caption, received text).
    Text(Arc<str>),
    /// Several texts in part order; `None` marks a lost part.
    Texts(Arc<[Option<String>]>),
    /// Raw bytes (encoded image, bits).
    Bytes(Bytes),
    /// A number (metric, counter).
    Number(f64),
    /// A rectangle (object box, tile box).
    Rect(Rect),
    /// Named numbers (a metrics record).
    Record(Arc<BTreeMap<String, f64>>),
    /// Anything else a custom stage kind needs to carry (shared, never copied).
    Opaque(Arc<dyn Any + Send + Sync>),
}

/// The type of a field's value, as ports declare it: one per [`Value`] variant, and
/// [`FieldType::Any`] for a field whose type the kind does not fix (a stage that forwards
/// whatever it gets, a sink that writes any field, a Python stage's untyped field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldType {
    /// [`Value::Image`].
    Image,
    /// [`Value::Text`].
    Text,
    /// [`Value::Texts`].
    Texts,
    /// [`Value::Bytes`].
    Bytes,
    /// [`Value::Number`].
    Number,
    /// [`Value::Rect`].
    Rect,
    /// [`Value::Record`].
    Record,
    /// [`Value::Opaque`] (a kind's own payload, such as a tensor).
    Opaque,
    /// Any of the above: matches every type.
    Any,
}

impl FieldType {
    /// Every type, in the order of [`Value`]'s variants, `any` last.
    pub const ALL: [FieldType; 9] = [
        FieldType::Image,
        FieldType::Text,
        FieldType::Texts,
        FieldType::Bytes,
        FieldType::Number,
        FieldType::Rect,
        FieldType::Record,
        FieldType::Opaque,
        FieldType::Any,
    ];

    /// The name used in messages and graph files (`image`, `text`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Image => "image",
            FieldType::Text => "text",
            FieldType::Texts => "texts",
            FieldType::Bytes => "bytes",
            FieldType::Number => "number",
            FieldType::Rect => "rect",
            FieldType::Record => "record",
            FieldType::Opaque => "opaque",
            FieldType::Any => "any",
        }
    }

    /// The type called `name` ([`FieldType::name`]).
    pub fn parse(name: &str) -> Option<FieldType> {
        FieldType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether a value of type `other` fits where `self` is declared (either is `any`,
    /// or they are equal).
    pub fn accepts(self, other: FieldType) -> bool {
        self == FieldType::Any || other == FieldType::Any || self == other
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Value {
    /// The type of this value.
    pub fn field_type(&self) -> FieldType {
        match self {
            Value::Image(_) => FieldType::Image,
            Value::Text(_) => FieldType::Text,
            Value::Texts(_) => FieldType::Texts,
            Value::Bytes(_) => FieldType::Bytes,
            Value::Number(_) => FieldType::Number,
            Value::Rect(_) => FieldType::Rect,
            Value::Record(_) => FieldType::Record,
            Value::Opaque(_) => FieldType::Opaque,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Image(i) => i.fmt(f),
            Value::Text(t) => write!(f, "Text({t:?})"),
            Value::Texts(t) => write!(f, "Texts({t:?})"),
            Value::Bytes(b) => write!(f, "Bytes({} B)", b.len()),
            Value::Number(n) => write!(f, "Number({n})"),
            Value::Rect(r) => r.fmt(f),
            Value::Record(r) => write!(f, "Record({r:?})"),
            Value::Opaque(_) => write!(f, "Opaque"),
        }
    }
}

/// Named values of a message. Field names are part of the contract between stage
/// kinds: each kind declares the fields it needs and the ones it adds, with their
/// [`FieldType`]s, and the validator checks that every input provides what its consumer
/// needs, of the type it needs.
#[derive(Debug, Clone, Default)]
pub struct Fields(BTreeMap<String, Value>);

impl Fields {
    /// No fields.
    pub fn new() -> Self {
        Fields(BTreeMap::new())
    }

    /// Sets a field, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: Value) {
        self.0.insert(name.into(), value);
    }

    /// Builder form of [`Fields::insert`].
    pub fn with(mut self, name: impl Into<String>, value: Value) -> Self {
        self.insert(name, value);
        self
    }

    /// The value of a field.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// Removes a field and returns it.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name)
    }

    /// The field as an image.
    pub fn image(&self, name: &str) -> Option<&Image> {
        match self.0.get(name) {
            Some(Value::Image(i)) => Some(i),
            _ => None,
        }
    }

    /// The field as a text.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.0.get(name) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// The field as a list of texts.
    pub fn texts(&self, name: &str) -> Option<&[Option<String>]> {
        match self.0.get(name) {
            Some(Value::Texts(t)) => Some(t),
            _ => None,
        }
    }

    /// The field as a number.
    pub fn number(&self, name: &str) -> Option<f64> {
        match self.0.get(name) {
            Some(Value::Number(n)) => Some(*n),
            _ => None,
        }
    }

    /// The field as a rectangle.
    pub fn rect(&self, name: &str) -> Option<Rect> {
        match self.0.get(name) {
            Some(Value::Rect(r)) => Some(*r),
            _ => None,
        }
    }

    /// The field as bytes.
    pub fn bytes(&self, name: &str) -> Option<&Bytes> {
        match self.0.get(name) {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        }
    }

    /// Field names and values in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Copies in every field of `other` that `self` does not have yet.
    pub fn merge_missing(&mut self, other: &Fields) {
        for (k, v) in &other.0 {
            self.0.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// One part of one frame travelling on an edge.
#[derive(Debug, Clone)]
pub struct Message {
    /// The frame this message belongs to.
    pub id: FrameId,
    /// Which part of the frame it is.
    pub part: Part,
    /// Wall-clock time at which the source captured or read the frame.
    pub captured: SystemTime,
    /// Monotonic time at which the frame entered the graph (for latency).
    pub born: Instant,
    /// The payload.
    pub fields: Fields,
}

impl Message {
    /// A derived message of the same frame and part with new fields.
    pub fn derive(&self, fields: Fields) -> Message {
        Message {
            id: self.id,
            part: self.part,
            captured: self.captured,
            born: self.born,
            fields,
        }
    }

    /// A derived message of the same frame as another part.
    pub fn derive_part(&self, part: Part, fields: Fields) -> Message {
        Message {
            id: self.id,
            part,
            captured: self.captured,
            born: self.born,
            fields,
        }
    }
}
