//! `synthetic`: generated frames (pattern or noise), for tests and benchmarks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dataflow_engine::{
    check_range_opt, BuildContext, Built, Fields, Image, KeyProblem, OutPort, Ports, Role, Source, SourceItem,
    StageError, StageKind, StopFlag, Value,
};
use dataflow_engine::{Field, FieldType};
use rand::{RngCore, SeedableRng};
use schemars::JsonSchema;
use serde::Deserialize;

/// What the frames look like.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// A colour gradient that shifts with the frame number.
    Gradient,
    /// Uniform random bytes (seeded).
    Noise,
    /// Flat mid grey.
    Flat,
}

/// Keys of `synthetic`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Number of frames; absent = until stopped.
    #[serde(default)]
    pub frames: Option<u64>,
    /// Frame width in pixels.
    #[serde(default = "default_w")]
    pub width: u32,
    /// Frame height in pixels.
    #[serde(default = "default_h")]
    pub height: u32,
    /// Frame contents.
    #[serde(default = "default_pattern")]
    pub pattern: Pattern,
    /// Frames per second (0.001 to 1,000,000); absent = as fast as the graph takes them.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Instead of an image, send a `payload` field of this many bytes (engine benchmarks).
    #[serde(default)]
    pub payload_bytes: Option<usize>,
}

fn default_w() -> u32 {
    64
}
fn default_h() -> u32 {
    48
}
fn default_pattern() -> Pattern {
    Pattern::Gradient
}

/// Slowest `rate`: one frame every 1,000 s.
const MIN_RATE: f64 = 1e-3;
/// Fastest `rate`: one frame per microsecond.
const MAX_RATE: f64 = 1e6;

/// The `synthetic` kind.
pub struct Synthetic;

struct Run {
    frames: Option<u64>,
    n: u64,
    width: u32,
    height: u32,
    pattern: Pattern,
    period: Option<Duration>,
    next_at: Instant,
    rng: rand_chacha::ChaCha8Rng,
    /// Frames share one buffer when the content does not change (benchmarks measure the engine, not memset).
    shared: Option<Value>,
}

impl Run {
    fn frame(&mut self) -> Value {
        if let Some(v) = &self.shared {
            return v.clone();
        }
        let (w, h) = (self.width, self.height);
        let n = self.n as u32;
        let img = match self.pattern {
            Pattern::Gradient => image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    ((x * 255) / w.max(1)) as u8,
                    ((y * 255) / h.max(1)) as u8,
                    (n.wrapping_mul(7) % 256) as u8,
                ])
            }),
            Pattern::Noise => {
                let mut buf = vec![0u8; (w * h * 3) as usize];
                self.rng.fill_bytes(&mut buf);
                image::RgbImage::from_raw(w, h, buf).unwrap_or_default()
            }
            Pattern::Flat => image::RgbImage::from_pixel(w, h, image::Rgb([128, 128, 128])),
        };
        Value::Image(Image::from_rgb(img))
    }
}

impl Source for Run {
    fn total(&self) -> Option<u64> {
        self.frames
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        if self.frames.is_some_and(|f| self.n >= f) || stop.is_set() {
            return SourceItem::End;
        }
        if let Some(p) = self.period {
            let now = Instant::now();
            if self.next_at > now {
                std::thread::sleep(self.next_at - now);
            }
            self.next_at += p;
        }
        let v = self.frame();
        let name = if matches!(v, Value::Bytes(_)) {
            "payload"
        } else {
            "image"
        };
        self.n += 1;
        SourceItem::Frame(Fields::new().with(name, v))
    }
}

impl StageKind for Synthetic {
    type Config = SyntheticConfig;
    const NAME: &'static str = "synthetic";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "Generated frames (gradient, noise or flat), optionally rate-limited.";

    fn ports(c: &Self::Config) -> Ports {
        let field = if c.payload_bytes.is_some() {
            Field::new("payload", FieldType::Bytes)
        } else {
            Field::new("image", FieldType::Image)
        };
        Ports {
            outputs: vec![OutPort::new("out").with(&field.name, field.ty)],
            ..Ports::default()
        }
    }

    fn validate(c: &Self::Config) -> Vec<KeyProblem> {
        let mut problems: Vec<KeyProblem> = check_range_opt("rate", c.rate, MIN_RATE, MAX_RATE, "frames per second")
            .into_iter()
            .collect();
        for (key, v) in [("width", c.width), ("height", c.height)] {
            if v == 0 {
                problems.push(KeyProblem {
                    key,
                    message: format!("`{key}` must be at least 1 pixel"),
                });
            }
        }
        problems
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        if let Some(p) = Self::validate(c).into_iter().next() {
            return Err(StageError::input(p.message));
        }
        let period = c.rate.map(|r| Duration::from_secs_f64(1.0 / r));
        let mut run = Run {
            frames: c.frames,
            n: 0,
            width: c.width,
            height: c.height,
            pattern: c.pattern,
            period,
            next_at: Instant::now(),
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(ctx.seed),
            shared: None,
        };
        if let Some(b) = c.payload_bytes {
            run.shared = Some(Value::Bytes(Bytes::from(vec![0xA5u8; b])));
        } else if c.pattern == Pattern::Flat {
            run.shared = Some(run.frame());
        }
        Ok(Built::Source(Box::new(run)))
    }
}
