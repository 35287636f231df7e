//! `image_dir`: the images of a folder (PNG, JPEG, WebP), sorted by name.
//!
//! Each file becomes one frame with fields `image` (RGB), `name` (file stem) and
//! `path`. A file that cannot be read or decoded is reported with its path and
//! counted as failed; the stream goes on with the next file.

use std::path::PathBuf;
use std::sync::Arc;

use dataflow_engine::{
    BuildContext, Built, Fields, Image, OutPort, Ports, Role, Source, SourceItem, StageError, StageKind, StopFlag,
    Value,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::{decode_rgb, DEFAULT_MAX_PIXELS};

/// Keys of `image_dir`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageDirConfig {
    /// The folder to read.
    pub path: PathBuf,
    /// File extensions to take (case-insensitive).
    #[serde(default = "default_ext")]
    pub extensions: Vec<String>,
    /// Read at most this many files.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Refuse images with more pixels than this (decompression bombs).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Go round the folder this many times (benchmarks); 1 = once.
    #[serde(default = "default_repeat")]
    pub repeat: u32,
}

fn default_ext() -> Vec<String> {
    ["png", "jpg", "jpeg", "webp"].iter().map(|s| s.to_string()).collect()
}
fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}
fn default_repeat() -> u32 {
    1
}

/// The `image_dir` kind.
pub struct ImageDir;

struct Run {
    files: Vec<PathBuf>,
    next: usize,
    max_pixels: u64,
}

impl Source for Run {
    fn total(&self) -> Option<u64> {
        Some(self.files.len() as u64)
    }

    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        if stop.is_set() || self.next >= self.files.len() {
            return SourceItem::End;
        }
        let path = self.files[self.next].clone();
        self.next += 1;
        match decode_rgb(&path, self.max_pixels) {
            Ok(img) => {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                SourceItem::Frame(
                    Fields::new()
                        .with("image", Value::Image(Image::from_rgb(img)))
                        .with("name", Value::Text(Arc::from(name.as_str())))
                        .with("path", Value::Text(Arc::from(path.display().to_string().as_str()))),
                )
            }
            Err(e) => SourceItem::Failed(e),
        }
    }
}

fn list(c: &ImageDirConfig, ctx: &BuildContext) -> Result<Vec<PathBuf>, String> {
    let dir = ctx.resolve(&c.path);
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        format!("cannot read the folder {} ({e}); point `path` at a folder of images (the set-up puts samples in assets/samples)", dir.display())
    })?;
    let exts: Vec<String> = c.extensions.iter().map(|e| e.to_lowercase()).collect();
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .map(|e| exts.contains(&e.to_string_lossy().to_lowercase()))
                .unwrap_or(false)
        })
        .collect();
    files.sort();
    if let Some(l) = c.limit {
        files.truncate(l);
    }
    Ok(files)
}

impl StageKind for ImageDir {
    type Config = ImageDirConfig;
    const NAME: &'static str = "image_dir";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "Images of a folder (PNG, JPEG, WebP) in name order.";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::fresh("out", &["image", "name", "path"])],
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        match list(c, ctx) {
            Ok(f) if f.is_empty() => vec![format!(
                "no images ({}) in {}",
                c.extensions.join(", "),
                ctx.resolve(&c.path).display()
            )],
            Ok(_) => Vec::new(),
            Err(e) => vec![e],
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let once = list(c, ctx).map_err(StageError::io)?;
        let mut files = Vec::with_capacity(once.len() * c.repeat as usize);
        for _ in 0..c.repeat.max(1) {
            files.extend(once.iter().cloned());
        }
        Ok(Built::Source(Box::new(Run {
            files,
            next: 0,
            max_pixels: c.max_pixels,
        })))
    }
}
