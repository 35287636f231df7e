//! CLIP image embeddings for the cosine metric of `evaluate` (`clip = true`).
//!
//! - Paper: Radford et al., "Learning Transferable Visual Models From Natural Language
//!   Supervision", ICML 2021. Multi-SC reports the cosine similarity of the original and the
//!   reconstruction; here of their CLIP image embeddings.
//! - Checkpoint: default `openai/clip-vit-base-patch32` (MIT), model card
//!   <https://huggingface.co/openai/clip-vit-base-patch32>.
//! - Export: `python models/export/clip.py --out assets/models/clip` (internet);
//!   `--tiny-random --out models/fixtures/clip` gives the test fixture.
//! - Tensors: `clip_image.onnx`: `pixel_values` f32 `[B, 3, S, S]` → `image_embeds` f32
//!   `[B, P]` (projected; S = 224, P = 512 for the default). Pre-processing as
//!   `CLIPImageProcessor` ([`crate::sd::clip_pixels`]).

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Deserialize;

use crate::error::ModelError;
use crate::provider::SessionOptions;
use crate::session::{load_session, IoSpec, LoadedSession, TensorSpec};
use crate::textgen::read_export_json;

/// Where `dataflow` looks for the export, relative to the assets folder.
pub const ASSET_DIR: &str = "models/clip";
/// The export script, relative to the repository root.
pub const SCRIPT: &str = "models/export/clip.py";
/// The command that makes the export (run from the repository root, with internet).
pub const EXPORT_COMMAND: &str = "python models/export/clip.py --out assets/models/clip";

/// The export folder: `explicit`, else `assets/models/clip`; the error says the export command.
pub fn locate_export(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    crate::textgen::locate_export(explicit, ASSET_DIR, SCRIPT)
}

/// `export.json` of a CLIP export.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipExport {
    /// Input side S.
    pub image_size: u32,
    /// CLIP mean.
    pub image_mean: [f32; 3],
    /// CLIP standard deviation.
    pub image_std: [f32; 3],
    /// Embedding width P.
    pub projection_dim: usize,
}

/// A CLIP image tower in its own session.
#[derive(Debug)]
pub struct ClipImage {
    session: LoadedSession,
    export: ClipExport,
}

impl ClipImage {
    /// Loads `clip_image.onnx` from the export folder `dir`.
    pub fn load(dir: impl AsRef<Path>, options: &SessionOptions) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let export: ClipExport = read_export_json(dir, EXPORT_COMMAND)?;
        let s = i64::from(export.image_size);
        let spec = IoSpec::new()
            .input(TensorSpec::f32("pixel_values", &[-1, 3, s, s]))
            .output(TensorSpec::f32("image_embeds", &[-1, export.projection_dim as i64]));
        let session = load_session(dir.join("clip_image.onnx"), options, &spec)?;
        Ok(ClipImage { session, export })
    }

    /// The projected embedding of `img`.
    pub fn embed(&mut self, img: &RgbImage) -> Result<Vec<f32>, ModelError> {
        self.embed_batch(&[img])?
            .pop()
            .ok_or_else(|| ModelError::Invalid("CLIP returned no embedding".into()))
    }

    /// The projected embeddings of `images`, in one `[n, 3, S, S]` run.
    pub fn embed_batch(&mut self, images: &[&RgbImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        let e = &self.export;
        let (n, s, p) = (images.len(), e.image_size as usize, e.projection_dim);
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut px = Vec::with_capacity(n * 3 * s * s);
        for img in images {
            px.extend(crate::sd::clip_pixels(img, e.image_size, e.image_mean, e.image_std));
        }
        let out = self
            .session
            .run_f32(&[("pixel_values", &[n, 3, s, s], &px)], &["image_embeds"])?;
        let embeds = out
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::Invalid("CLIP returned no embedding".into()))?;
        if embeds.shape != [n, p] {
            return Err(ModelError::Invalid(format!(
                "CLIP image_embeds has shape {:?}, expected [{n}, {p}]",
                embeds.shape
            )));
        }
        Ok(embeds.data.chunks(p).map(<[f32]>::to_vec).collect())
    }

    /// The cosine similarity of the embeddings of `a` and `b` (both in one run).
    pub fn cosine(&mut self, a: &RgbImage, b: &RgbImage) -> Result<f64, ModelError> {
        let e = self.embed_batch(&[a, b])?;
        Ok(cosine(&e[0], &e[1]))
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(x: &[f32], y: &[f32]) -> f64 {
    let dot: f64 = x.iter().zip(y).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
    let n = |v: &[f32]| v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
    let d = n(x) * n(y);
    if d > 0.0 {
        dot / d
    } else {
        0.0
    }
}
