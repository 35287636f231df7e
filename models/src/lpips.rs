//! LPIPS v0.1 with the AlexNet backbone: the paper's perceptual metric in `evaluate`.
//!
//! - Paper: Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep
//!   Features as a Perceptual Metric", CVPR 2018; Multi-SC reports LPIPS (lower is better).
//!   Heads: PyPI `lpips==0.1.4` (`lpips/weights/v0.1/alex.pth`, BSD-2-Clause); backbone:
//!   torchvision AlexNet `IMAGENET1K_V1` (BSD-3-Clause).
//! - Export: `python models/export/lpips.py --out assets/models/lpips-onnx` (internet, for the
//!   backbone); `--tiny-random --out models/fixtures/lpips` gives the test fixture (narrow
//!   AlexNet, random weights; same tensors).
//! - Tensors: `lpips.onnx`: inputs `in0`, `in1` f32 `[N, 3, H, W]`, RGB in `[-1, 1]`, H and W
//!   dynamic (at least 32); output `distance` f32 `[N]`. Scaling layer, five AlexNet ReLU
//!   taps, channel normalisation, linear heads and spatial means are inside the graph.
//!
//! Two images of different sizes are compared at the first one's size (the second resized,
//! bilinear), as the reconstruction is compared with the original.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::RgbImage;

use crate::error::ModelError;
use crate::provider::SessionOptions;
use crate::session::{load_session, IoSpec, LoadedSession, TensorSpec};

/// Where `dataflow` looks for the export, relative to the assets folder.
pub const ASSET_DIR: &str = "models/lpips-onnx";
/// The export script, relative to the repository root.
pub const SCRIPT: &str = "models/export/lpips.py";
/// The model file inside the export folder.
pub const MODEL_FILE: &str = "lpips.onnx";

/// The export folder: `explicit`, else `assets/models/lpips-onnx`; the error says the export command.
pub fn locate_export(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    crate::textgen::locate_export(explicit, ASSET_DIR, SCRIPT)
}

/// An LPIPS export loaded into its own session.
#[derive(Debug)]
pub struct Lpips {
    session: LoadedSession,
}

impl Lpips {
    /// The tensors the LPIPS export must have.
    pub fn io_spec() -> IoSpec {
        IoSpec::new()
            .input(TensorSpec::f32("in0", &[-1, 3, -1, -1]))
            .input(TensorSpec::f32("in1", &[-1, 3, -1, -1]))
            .output(TensorSpec::f32("distance", &[-1]))
    }

    /// Loads `lpips.onnx` from the export folder `dir`.
    pub fn load(dir: impl AsRef<Path>, options: &SessionOptions) -> Result<Self, ModelError> {
        let session = load_session(dir.as_ref().join(MODEL_FILE), options, &Self::io_spec())?;
        Ok(Lpips { session })
    }

    /// The LPIPS distance of `a` and `b` (0 for identical images; `b` is resized to `a`'s size
    /// when they differ).
    pub fn distance(&mut self, a: &RgbImage, b: &RgbImage) -> Result<f64, ModelError> {
        self.distance_batch(&[(a, b)])
            .pop()
            .unwrap_or_else(|| Err(ModelError::Invalid("LPIPS returned no distance".into())))
    }

    /// [`distance`](Self::distance) of each pair, the pairs whose first image has one size in
    /// one `[n, 3, H, W]` run; a pair below 32×32 fails alone.
    pub fn distance_batch(&mut self, pairs: &[(&RgbImage, &RgbImage)]) -> Vec<Result<f64, ModelError>> {
        let mut results: Vec<Option<Result<f64, ModelError>>> = Vec::with_capacity(pairs.len());
        // (w, h) → (pair indices, in0, in1)
        type Group = ((u32, u32), Vec<usize>, Vec<f32>, Vec<f32>);
        let mut groups: Vec<Group> = Vec::new();
        for (i, (a, b)) in pairs.iter().enumerate() {
            let (w, h) = a.dimensions();
            if w < 32 || h < 32 {
                results.push(Some(Err(ModelError::Invalid(format!(
                    "LPIPS needs images of at least 32×32 pixels, got {w}×{h}"
                )))));
                continue;
            }
            results.push(None);
            let resized;
            let b = if b.dimensions() == (w, h) {
                *b
            } else {
                resized = imageops::resize(*b, w, h, FilterType::Triangle);
                &resized
            };
            let at = match groups.iter().position(|g| g.0 == (w, h)) {
                Some(at) => at,
                None => {
                    groups.push(((w, h), Vec::new(), Vec::new(), Vec::new()));
                    groups.len() - 1
                }
            };
            let g = &mut groups[at];
            g.1.push(i);
            g.2.extend(to_signed_nchw(a));
            g.3.extend(to_signed_nchw(b));
        }
        for ((w, h), members, x0, x1) in groups {
            let shape = [members.len(), 3, h as usize, w as usize];
            let out = self
                .session
                .run_f32(&[("in0", &shape, &x0), ("in1", &shape, &x1)], &["distance"]);
            let distances = out.and_then(|o| {
                o.into_iter()
                    .next()
                    .map(|t| t.data)
                    .filter(|d| d.len() == members.len())
                    .ok_or_else(|| {
                        ModelError::Invalid(format!("LPIPS returned no distance per pair ({} pairs)", members.len()))
                    })
            });
            for (k, &i) in members.iter().enumerate() {
                results[i] = Some(match &distances {
                    Ok(d) => Ok(f64::from(d[k])),
                    Err(e) => Err(ModelError::Invalid(e.to_string())),
                });
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ModelError::Invalid("LPIPS did not run this pair".into()))))
            .collect()
    }
}

/// RGB pixels as f32 NCHW in `[-1, 1]` (`x / 127.5 − 1`).
pub fn to_signed_nchw(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = f32::from(p[c]) / 127.5 - 1.0;
        }
    }
    out
}
