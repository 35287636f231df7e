//! `camera`: frames from a V4L2 camera (`/dev/videoN`), read directly with
//! `linuxvideo` (pure Rust, no system library).
//!
//! The device is asked for `width`x`height` in `fourcc` (`auto` takes MJPG when the
//! camera offers it, else YUYV); the driver may answer with another size, which is
//! logged and used. MJPG frames are decoded as JPEG, YUYV frames converted to RGB
//! (BT.601). Each frame carries `image` (RGB) and `name` (`frame-<n>`). A device
//! that is missing, not a capture device or busy is reported by `check` and `build`
//! with its path. The stream ends on `frames`, `duration_s` or Ctrl-C; `next` looks
//! at the stop flag every [`POLL`] while no frame is ready.
//!
//! Not tested against a real camera in CI (none there): the tests cover the missing
//! device; the YUYV conversion is unit-tested.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflow_engine::FieldType;
use dataflow_engine::{
    BuildContext, Built, Fields, Image, OutPort, Ports, Role, Source, SourceItem, StageError, StageKind, StopFlag,
    Value,
};
use linuxvideo::format::{PixFormat, PixelFormat};
use linuxvideo::stream::ReadStream;
use linuxvideo::{BufType, Device};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::DEFAULT_MAX_PIXELS;

/// How long `next` sleeps between looks at the device and the stop flag.
pub const POLL: Duration = Duration::from_millis(10);

/// Pixel format asked of the camera.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fourcc {
    /// MJPG when offered, else YUYV.
    Auto,
    /// Motion JPEG (small, decoded on the CPU).
    Mjpg,
    /// Raw YUV 4:2:2 (no decoding, more bandwidth).
    Yuyv,
}

/// Keys of `camera`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// V4L2 device file.
    #[serde(default = "default_device")]
    pub device: PathBuf,
    /// Requested frame width (the driver may pick the closest it has).
    #[serde(default = "default_width")]
    pub width: u32,
    /// Requested frame height.
    #[serde(default = "default_height")]
    pub height: u32,
    /// Pixel format to ask for.
    #[serde(default = "default_fourcc")]
    pub fourcc: Fourcc,
    /// End the stream after this many frames; absent = until stopped.
    #[serde(default)]
    pub frames: Option<u64>,
    /// End the stream this many seconds after it started.
    #[serde(default)]
    pub duration_s: Option<f64>,
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_fourcc() -> Fourcc {
    Fourcc::Auto
}

/// The `camera` kind.
pub struct Camera;

fn open_error(path: &Path, e: &std::io::Error) -> String {
    let shown = path.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "camera device {shown} not found; plug in a camera or set `device` (cameras are listed by `ls /dev/video*`)"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("camera device {shown}: permission denied; add the user to the `video` group")
        }
        std::io::ErrorKind::ResourceBusy => {
            format!("camera device {shown} is busy: another program is using it; close it and try again")
        }
        _ => format!("camera device {shown}: cannot open as a V4L2 capture device: {e}"),
    }
}

/// Opens the device and picks the pixel format.
fn open(c: &CameraConfig, ctx: &BuildContext) -> Result<(Device, PixelFormat), String> {
    let path = ctx.resolve(&c.device);
    let dev = Device::open(&path).map_err(|e| open_error(&path, &e))?;
    let offered: Vec<PixelFormat> = dev
        .formats(BufType::VIDEO_CAPTURE)
        .filter_map(|f| f.ok().map(|f| f.pixel_format()))
        .collect();
    let want: &[PixelFormat] = match c.fourcc {
        Fourcc::Auto => &[PixelFormat::MJPG, PixelFormat::YUYV],
        Fourcc::Mjpg => &[PixelFormat::MJPG],
        Fourcc::Yuyv => &[PixelFormat::YUYV],
    };
    match want.iter().find(|f| offered.contains(f)) {
        Some(f) => Ok((dev, *f)),
        None => Err(format!(
            "camera device {} offers {:?}, none of which `fourcc = {:?}` can read (MJPG or YUYV)",
            path.display(),
            offered.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            c.fourcc
        )),
    }
}

/// Converts packed YUYV (4:2:2) to RGB with BT.601 limited-range coefficients.
pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32, stride: usize) -> Option<image::RgbImage> {
    let (w, h) = (width as usize, height as usize);
    let stride = stride.max(w * 2);
    if w == 0 || h == 0 || data.len() < stride * (h - 1) + w * 2 {
        return None;
    }
    let mut out = Vec::with_capacity(w * h * 3);
    let px = |y: u8, u: u8, v: u8| {
        let (c, d, e) = (f32::from(y) - 16.0, f32::from(u) - 128.0, f32::from(v) - 128.0);
        let clamp = |x: f32| x.round().clamp(0.0, 255.0) as u8;
        [
            clamp(1.164 * c + 1.596 * e),
            clamp(1.164 * c - 0.392 * d - 0.813 * e),
            clamp(1.164 * c + 2.017 * d),
        ]
    };
    for row in 0..h {
        let line = &data[row * stride..row * stride + w * 2];
        for x in 0..w {
            let pair = &line[(x / 2) * 4..(x / 2) * 4 + 4];
            let y = if x % 2 == 0 { pair[0] } else { pair[2] };
            out.extend_from_slice(&px(y, pair[1], pair[3]));
        }
    }
    image::RgbImage::from_raw(width, height, out)
}

struct Run {
    device: PathBuf,
    stream: ReadStream,
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
    frames: Option<u64>,
    duration: Option<Duration>,
    started: Option<Instant>,
    n: u64,
}

impl Run {
    fn decode(&self, data: &[u8]) -> Result<image::RgbImage, StageError> {
        let shown = self.device.display();
        if self.format == PixelFormat::MJPG {
            let mut r = image::ImageReader::with_format(std::io::Cursor::new(data), image::ImageFormat::Jpeg);
            let mut limits = image::Limits::default();
            limits.max_alloc = Some(DEFAULT_MAX_PIXELS.saturating_mul(4));
            r.limits(limits);
            r.decode()
                .map(|i| i.to_rgb8())
                .map_err(|e| StageError::new("decode", format!("{shown}: frame {}: bad MJPG frame: {e}", self.n)))
        } else {
            yuyv_to_rgb(data, self.width, self.height, self.stride).ok_or_else(|| {
                StageError::new(
                    "decode",
                    format!("{shown}: frame {}: short YUYV frame ({} bytes)", self.n, data.len()),
                )
            })
        }
    }
}

impl Source for Run {
    fn total(&self) -> Option<u64> {
        self.frames
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        let started = *self.started.get_or_insert_with(Instant::now);
        loop {
            if stop.is_set()
                || self.frames.is_some_and(|f| self.n >= f)
                || self.duration.is_some_and(|d| started.elapsed() >= d)
            {
                return SourceItem::End;
            }
            match self.stream.will_block() {
                Ok(true) => std::thread::sleep(POLL),
                Ok(false) => break,
                Err(e) => {
                    return SourceItem::Failed(StageError::io(format!("{}: {e}", self.device.display())));
                }
            }
        }
        let raw = self.stream.dequeue(|buf| {
            if buf.is_error() {
                return Ok(None);
            }
            Ok(Some(buf.to_vec()))
        });
        self.n += 1;
        let data = match raw {
            Ok(Some(d)) => d,
            Ok(None) => {
                return SourceItem::Failed(StageError::io(format!(
                    "{}: frame {}: the driver flagged the buffer as corrupt",
                    self.device.display(),
                    self.n
                )))
            }
            Err(e) => return SourceItem::Failed(StageError::io(format!("{}: {e}", self.device.display()))),
        };
        match self.decode(&data) {
            Ok(img) => SourceItem::Frame(
                Fields::new()
                    .with("image", Value::Image(Image::from_rgb(img)))
                    .with("name", Value::Text(Arc::from(format!("frame-{:06}", self.n).as_str()))),
            ),
            Err(e) => SourceItem::Failed(e),
        }
    }
}

impl StageKind for Camera {
    type Config = CameraConfig;
    const NAME: &'static str = "camera";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "Frames from a V4L2 camera (MJPG or YUYV), read directly.";

    fn validate(c: &Self::Config) -> Vec<dataflow_engine::KeyProblem> {
        dataflow_engine::check_duration_s(c.duration_s).into_iter().collect()
    }

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::new("out")
                .with("image", FieldType::Image)
                .with("name", FieldType::Text)],
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        match open(c, ctx) {
            Ok(_) => Vec::new(),
            Err(e) => vec![e],
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let device = ctx.resolve(&c.device);
        let (dev, format) = open(c, ctx).map_err(StageError::io)?;
        let capture = dev
            .video_capture(PixFormat::new(c.width, c.height, format))
            .map_err(|e| StageError::io(open_error(&device, &e)))?;
        let got = capture.format();
        let (width, height, stride) = (got.width(), got.height(), got.bytes_per_line() as usize);
        if (width, height) != (c.width, c.height) {
            tracing::info!(stage = %ctx.stage, width, height, "camera gave another frame size than asked");
        }
        let stream = capture
            .into_stream()
            .map_err(|e| StageError::io(open_error(&device, &e)))?;
        tracing::info!(stage = %ctx.stage, device = %device.display(), %format, width, height, "camera streaming");
        Ok(Built::Source(Box::new(Run {
            device,
            stream,
            format,
            width,
            height,
            stride,
            frames: c.frames,
            duration: c.duration_s.map(|s| Duration::from_secs_f64(s.max(0.0))),
            started: None,
            n: 0,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_grey_and_white_convert_to_rgb() {
        // Two pixels per 4 bytes: Y0 U Y1 V. Y=16 is black, Y=235 white, U=V=128 no colour.
        let data = [16u8, 128, 235, 128, 126, 128, 126, 128];
        let rgb = yuyv_to_rgb(&data, 2, 2, 4).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
        let g = rgb.get_pixel(0, 1).0;
        assert!(g.iter().all(|&v| (127..=129).contains(&v)), "{g:?}");
        assert!(yuyv_to_rgb(&data[..6], 2, 2, 4).is_none(), "short frames are refused");
    }
}
