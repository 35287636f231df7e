//! Stage kinds of dataflow, one file per kind, and [`register_all`].
//!
//! # Layout
//! - Sources: [`synthetic`], [`image_dir`].
//! - Helpers for tests and benchmarks: [`passthrough`], [`delay`].
//! - Sinks: [`image_sink`], [`csv_sink`], [`null_sink`].
//! - [`util`]: small helpers shared by kinds (field access, image decoding).

pub mod csv_sink;
pub mod delay;
pub mod image_dir;
pub mod image_sink;
pub mod null_sink;
pub mod passthrough;
pub mod synthetic;
pub mod util;

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
}

/// A registry with every kind of the project.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register_all(&mut r);
    r
}
