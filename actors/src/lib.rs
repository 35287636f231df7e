//! Stage kinds of dataflow, one file per kind, and [`register_all`].
//!
//! # Layout
//! - Sources: [`synthetic`], [`image_dir`].
//! - Multi-SC: [`detect`], [`segment`], [`split`], [`caption`], [`text_channel`],
//!   [`image_channel`], [`fuse`], [`correct`], [`reconstruct`].
//! - Evaluation: [`evaluate`], [`sheet`].
//! - Helpers for tests and benchmarks: [`passthrough`], [`delay`].
//! - Sinks: [`image_sink`], [`csv_sink`], [`null_sink`].
//! - Live: [`ffmpeg`] (source: frames from an ffmpeg process), [`video_sink`] (writes a video file).
//! - Live: [`camera`] (source: V4L2 device), [`preview`] (sink: live view over HTTP); `image_dir` follows a folder with `watch = true`.
//! - Bring your own model: [`python`] (a Python class in a worker process per replica).
//! - [`util`]: small helpers shared by kinds (field access, image decoding).
//! - Between machines (not stage kinds a graph names; the engine asks for them when it
//!   cuts a graph by `machine`): [`zenoh_link`] bridges an edge over zenoh, [`wire`]
//!   writes messages for it.

pub mod camera;
pub mod caption;
pub mod codec_channel;
pub mod correct;
pub mod csv_sink;
pub mod delay;
pub mod detect;
pub mod evaluate;
pub mod ffmpeg;
pub mod fuse;
pub mod image_channel;
pub mod image_dir;
pub mod image_sink;
pub mod jscc;
pub mod null_sink;
pub mod passthrough;
pub mod preview;
pub mod python;
pub mod reconstruct;
pub mod segment;
pub mod sheet;
pub mod split;
pub mod synthetic;
#[cfg(test)]
mod testkit;
pub mod text_channel;
pub mod thumbnail;
pub mod thumbnail_sr;
pub mod util;
pub mod video_sink;
pub mod wire;
pub mod zenoh_link;
pub(crate) mod zenoh_pool;

use dataflow_engine::Registry;

/// Registers every stage kind of the project. Adding a kind = one file + one line here.
pub fn register_all(r: &mut Registry) {
    r.register::<synthetic::Synthetic>();
    r.register::<image_dir::ImageDir>();
    r.register::<passthrough::Passthrough>();
    r.register::<delay::Delay>();
    r.register::<image_sink::ImageSink>();
    r.register::<csv_sink::CsvSink>();
    r.register::<null_sink::NullSink>();
    r.register::<segment::Segment>();
    r.register::<detect::Detect>();
    r.register::<split::Split>();
    r.register::<caption::Caption>();
    r.register::<text_channel::TextChannel>();
    r.register::<image_channel::ImageChannel>();
    r.register::<fuse::Fuse>();
    r.register::<correct::Correct>();
    r.register::<reconstruct::Reconstruct>();
    r.register::<evaluate::Evaluate>();
    r.register::<sheet::Sheet>();
    r.register::<preview::Preview>();
    r.register::<camera::Camera>();
    r.register::<ffmpeg::Ffmpeg>();
    r.register::<video_sink::VideoSink>();
    r.register::<codec_channel::CodecChannel>();
    r.register::<jscc::Jscc>();
    r.register::<python::Python>();
    r.register::<thumbnail::Thumbnail>();
}

/// A registry with every kind of the project.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register_all(&mut r);
    r
}
