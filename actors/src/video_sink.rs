//! `video_sink`: writes an image field of every frame into one video file, through an
//! ffmpeg child that reads raw RGB24 on its stdin.
//!
//! The first frame fixes the video's size; later frames of another size are resized to
//! it (bilinear). Grey and RGBA images are converted to RGB. Odd sizes are padded by one
//! pixel to even ones (4:2:0 video needs even sizes). The codec is `libx264` when the
//! ffmpeg at hand has it (Debian's does), else `mpeg4`; `codec` chooses another.
//! Frames are written at a fixed `rate`, in arrival order: the file shows the frames,
//! not the wall-clock timing of the run.
//!
//! `finish` (end of stream) closes ffmpeg's stdin and waits for it to write the file;
//! a non-zero exit is an error quoting ffmpeg's stderr. A run without frames writes no file.

use std::io::Write;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::time::Duration;

use dataflow_engine::{
    BuildContext, Built, Image, Input, Outputs, PixelFormat, Ports, Role, Stage, StageError, StageKind,
};
use dataflow_engine::{Field, FieldType};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::ffmpeg::{check_binary, spawn_error, wait_or_kill, StderrTail};
use crate::util::image_field;

/// Keys of `video_sink`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VideoSinkConfig {
    /// Which image field to write.
    #[serde(default = "default_field")]
    pub field: String,
    /// The video file, relative to the run's output folder (default `<stage>.mp4`); the
    /// extension chooses the container.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Frames per second of the video.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// ffmpeg video encoder; absent = `libx264` when available, else `mpeg4`.
    #[serde(default)]
    pub codec: Option<String>,
    /// The ffmpeg binary.
    #[serde(default = "default_ffmpeg")]
    pub ffmpeg: PathBuf,
}

fn default_field() -> String {
    "image".into()
}
fn default_rate() -> f64 {
    25.0
}
fn default_ffmpeg() -> PathBuf {
    PathBuf::from("ffmpeg")
}

/// The `video_sink` kind.
pub struct VideoSink;

/// The encoding ffmpeg process.
struct Encoder {
    proc: std::process::Child,
    /// Frames go in here; dropping it tells ffmpeg the video is complete.
    stdin: Option<ChildStdin>,
    stderr: StderrTail,
}

impl Encoder {
    /// Closes stdin and waits for ffmpeg to finish the file (at most `limit`, then kills it).
    fn close(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.stdin = None;
        wait_or_kill(&mut self.proc, limit)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // Not finished (run aborted, stage rebuilt): still close the file properly.
        if self.stdin.is_some() {
            let _ = self.close(Duration::from_secs(10));
        }
    }
}

struct Run {
    stage: String,
    field: String,
    path: PathBuf,
    rate: f64,
    codec: String,
    ffmpeg: PathBuf,
    enc: Option<Encoder>,
    /// Size of the video (of the first frame).
    size: Option<(u32, u32)>,
    frames: u64,
}

/// `libx264` when `ffmpeg -encoders` lists it, else `mpeg4` (built into every ffmpeg).
fn pick_codec(ffmpeg: &std::path::Path) -> Result<String, StageError> {
    let out = Command::new(ffmpeg)
        .args(["-hide_banner", "-encoders"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| spawn_error(ffmpeg, &e))?;
    let list = String::from_utf8_lossy(&out.stdout);
    let has_x264 = list.lines().any(|l| l.split_whitespace().nth(1) == Some("libx264"));
    Ok(if has_x264 { "libx264" } else { "mpeg4" }.to_string())
}

impl Run {
    fn start(&mut self, w: u32, h: u32) -> Result<(), StageError> {
        let mut cmd = Command::new(&self.ffmpeg);
        cmd.args(["-hide_banner", "-nostats", "-loglevel", "warning", "-y"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s"])
            .arg(format!("{w}x{h}"))
            .arg("-r")
            .arg(self.rate.to_string())
            .args(["-i", "pipe:0", "-an", "-c:v"])
            .arg(&self.codec);
        match self.codec.as_str() {
            "libx264" => {
                cmd.args(["-preset", "veryfast"]);
            }
            "mpeg4" => {
                cmd.args(["-q:v", "3"]);
            }
            _ => {}
        }
        if w % 2 == 1 || h % 2 == 1 {
            cmd.args(["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]);
        }
        cmd.args(["-pix_fmt", "yuv420p"])
            .arg(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = cmd.spawn().map_err(|e| spawn_error(&self.ffmpeg, &e))?;
        let stderr = match proc.stderr.take() {
            Some(e) => StderrTail::follow(e, &self.stage, proc.id()),
            None => StderrTail::default(),
        };
        tracing::info!(stage = %self.stage, path = %self.path.display(), width = w, height = h, codec = %self.codec, "writing video");
        self.enc = Some(Encoder {
            stdin: proc.stdin.take(),
            proc,
            stderr,
        });
        self.size = Some((w, h));
        Ok(())
    }
}

/// The RGB24 bytes of `img` at `w`×`h` (borrowed when it already is that).
fn rgb_bytes(img: &Image, w: u32, h: u32) -> std::borrow::Cow<'_, [u8]> {
    if img.format == PixelFormat::Rgb8 && img.width == w && img.height == h {
        return std::borrow::Cow::Borrowed(&img.data[..]);
    }
    let rgb = img.to_rgb();
    let rgb = if (img.width, img.height) == (w, h) {
        rgb
    } else {
        image::imageops::resize(&rgb, w, h, image::imageops::FilterType::Triangle)
    };
    std::borrow::Cow::Owned(rgb.into_raw())
}

impl Stage for Run {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = image_field(&msg, &self.field, &self.stage)?;
        let (w, h) = match self.size {
            Some(s) => s,
            None => {
                self.start(img.width, img.height)?;
                (img.width, img.height)
            }
        };
        let bytes = rgb_bytes(img, w, h);
        let Some(enc) = self.enc.as_mut() else {
            return Err(StageError::io(format!(
                "stage `{}`: the video encoder is not running",
                self.stage
            )));
        };
        let Some(stdin) = enc.stdin.as_mut() else {
            return Err(StageError::io(format!(
                "stage `{}`: the video encoder is closed",
                self.stage
            )));
        };
        stdin.write_all(&bytes).map_err(|e| {
            StageError::io(format!(
                "stage `{}`: ffmpeg stopped taking frames for {} ({e}): {}",
                self.stage,
                self.path.display(),
                enc.stderr.text()
            ))
        })?;
        self.frames += 1;
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        let Some(mut enc) = self.enc.take() else {
            tracing::warn!(stage = %self.stage, "no frames arrived; no video written");
            return Ok(());
        };
        let status = enc.close(Duration::from_secs(300));
        match status {
            Some(s) if s.success() => {
                tracing::info!(stage = %self.stage, path = %self.path.display(), frames = self.frames, "video written");
                Ok(())
            }
            other => Err(StageError::io(format!(
                "stage `{}`: ffmpeg failed writing {} ({}): {}",
                self.stage,
                self.path.display(),
                other.map_or_else(|| "no exit status".to_string(), |s| s.to_string()),
                enc.stderr.text()
            ))),
        }
    }
}

impl StageKind for VideoSink {
    type Config = VideoSinkConfig;
    const NAME: &'static str = "video_sink";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "Writes an image field of every frame into a video file (ffmpeg; H.264 when available).";
    const ONE_REPLICA: Option<&'static str> = Some("its replicas would all write the same video file");

    fn validate(c: &Self::Config) -> Vec<dataflow_engine::KeyProblem> {
        dataflow_engine::check_range("rate", c.rate, 1e-3, 1e6, "frames per second")
            .into_iter()
            .collect()
    }

    fn ports(c: &Self::Config) -> Ports {
        // Writes into a pipe that blocks while ffmpeg encodes: keep it off the async threads.
        Ports {
            requires: vec![Field::new(c.field.clone(), FieldType::Image)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, _ctx: &BuildContext) -> Vec<String> {
        let mut e: Vec<String> = check_binary(&c.ffmpeg).into_iter().collect();
        if !(c.rate > 0.0 && c.rate.is_finite()) {
            e.push(format!(
                "`rate` must be a positive number of frames per second, got {}",
                c.rate
            ));
        }
        e
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        if !(c.rate > 0.0 && c.rate.is_finite()) {
            return Err(StageError::input(format!(
                "`rate` must be a positive number of frames per second, got {}",
                c.rate
            )));
        }
        if ctx.replicas > 1 {
            return Err(StageError::input(
                "`video_sink` writes one file and cannot have `replicas` > 1",
            ));
        }
        if let Some(m) = check_binary(&c.ffmpeg) {
            return Err(StageError::io(m));
        }
        let codec = match &c.codec {
            Some(k) => k.clone(),
            None => pick_codec(&c.ffmpeg)?,
        };
        let rel = c
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.mp4", ctx.stage)));
        let path = ctx.out_dir.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StageError::io(format!("cannot create {}: {e}", dir.display())))?;
        }
        Ok(Built::Stage(Box::new(Run {
            stage: ctx.stage.clone(),
            field: c.field.clone(),
            path,
            rate: c.rate,
            codec,
            ffmpeg: c.ffmpeg.clone(),
            enc: None,
            size: None,
            frames: 0,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflow_engine::{Fields, FrameId, Message, Part, Value};

    fn msg(seq: u64, img: Image) -> Message {
        Message {
            id: FrameId { stream: 0, seq },
            part: Part::WHOLE,
            captured: std::time::SystemTime::now(),
            born: std::time::Instant::now(),
            fields: Fields::new().with("image", Value::Image(img)),
        }
    }

    /// Frames of other sizes and formats are fitted to the first frame's size, and the
    /// file holds every frame at that size.
    #[test]
    fn mixed_sizes_are_resized_to_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::testkit::context("video", "video_sink", dir.path());
        let cfg: VideoSinkConfig = serde_json::from_str("{}").unwrap();
        let Built::Stage(mut stage) = VideoSink::build(&cfg, &ctx).unwrap() else {
            panic!("video_sink is a stage")
        };
        let mut out = Outputs::default();
        for i in 0..6u64 {
            let img = match i % 3 {
                0 => Image::from_rgb(image::RgbImage::from_pixel(64, 48, image::Rgb([200, 10, 10]))),
                1 => Image::from_gray(image::GrayImage::from_pixel(33, 17, image::Luma([128]))),
                _ => Image::from_rgba(image::RgbaImage::from_pixel(128, 96, image::Rgba([0, 0, 255, 255]))),
            };
            stage
                .process(
                    Input::Message {
                        input: 0,
                        msg: msg(i, img),
                    },
                    &mut out,
                )
                .unwrap();
        }
        stage.finish(&mut out).unwrap();
        let file = dir.path().join("video.mp4");
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=width,height,nb_read_frames", "-of", "csv=p=0"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "64,48,6");
    }
}
