//! FCN-ResNet50 semantic segmentation (PASCAL VOC, 21 classes): the paper tier of `segment`.
//!
//! - Paper: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation",
//!   CVPR 2015; Multi-SC segments the main object with FCN. Weights: torchvision
//!   `FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1` (BSD-3-Clause), model card
//!   <https://pytorch.org/vision/stable/models/generated/torchvision.models.segmentation.fcn_resnet50.html>.
//! - Export: `python models/export/fcn.py --out assets/models/fcn` (internet);
//!   `--tiny-random --out models/fixtures/fcn` gives the test fixture (torchvision's FCN and
//!   FCNHead over a narrow ResNet of Bottleneck blocks; same tensors).
//! - Tensors: `fcn.onnx`: input `input` f32 `[B, 3, H, W]` (any H×W), output `out` f32
//!   `[B, 21, H, W]`, class logits at the input's resolution. Exports made before the script
//!   named the batch axis fix `B = 1`; [`Fcn::load`] opens it ([`crate::batchdim`]).
//! - Batching: [`Fcn::segment_batch`] runs the frames whose model input has the same size
//!   in one call (bit-identical to one at a time on the CPU, tested); frames of other sizes
//!   form their own run.
//!
//! Pre-processing is torchvision's preset ([`preprocess`]): the shorter side resized to 520 px
//! (bilinear with antialias, the longer side truncated as torchvision does; `None` keeps the
//! size), `x / 255`, ImageNet mean/std. The class of each pixel is the argmax of the
//! logits (resized back to the frame with nearest neighbour). The main object is the
//! non-background class covering the most pixels (ties: the lower class id); its pixels are the
//! mask, their bounding box the box, and the slice is cut out as on the ISNet path.

use std::path::Path;
use std::time::{Duration, Instant};

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma, RgbImage};
use serde::Deserialize;

use crate::error::ModelError;
use crate::isnet::{cut_out, salient_bbox, BBox, ObjectSlice, THRESHOLD};
use crate::provider::{ActiveProvider, SessionOptions};
use crate::session::{load_session_batched, IoSpec, LoadedSession, TensorSpec};
use crate::textgen::read_export_json;

/// Where `dataflow` looks for the export, relative to the assets folder.
pub const ASSET_DIR: &str = "models/fcn";
/// The command that makes the export (run from the repository root, with internet).
pub const EXPORT_COMMAND: &str = "python models/export/fcn.py --out assets/models/fcn";
/// The export script, relative to the repository root.
pub const SCRIPT: &str = "models/export/fcn.py";

/// The export folder: `explicit`, else `assets/models/fcn`; the error says the export command.
pub fn locate_export(explicit: Option<&Path>) -> Result<std::path::PathBuf, ModelError> {
    crate::textgen::locate_export(explicit, ASSET_DIR, SCRIPT)
}
/// The model file inside the export folder.
pub const MODEL_FILE: &str = "fcn.onnx";

/// `export.json` of an FCN export.
#[derive(Debug, Clone, Deserialize)]
pub struct FcnExport {
    /// Class names, index = class id (`background` first).
    pub labels: Vec<String>,
    /// ImageNet mean.
    pub mean: [f32; 3],
    /// ImageNet standard deviation.
    pub std: [f32; 3],
    /// The preset's shorter side.
    pub resize_shorter: u32,
}

/// The main object of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct MainObject {
    /// Class id.
    pub class: usize,
    /// VOC label, e.g. `person`.
    pub label: String,
    /// Pixels of that class at the frame's resolution.
    pub pixels: u64,
    /// The object cut out (alpha = mask) and its box.
    pub object: ObjectSlice,
}

/// The result of [`Fcn::segment`].
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticSegmentation {
    /// Class id per pixel at the frame's resolution, row-major.
    pub classes: Vec<u8>,
    /// 255 on the main object's pixels, 0 elsewhere.
    pub mask: GrayImage,
    /// The main object; `None` when every pixel is background.
    pub main: Option<MainObject>,
    /// Time in the model alone.
    pub inference: Duration,
}

/// An FCN export loaded into its own session.
#[derive(Debug)]
pub struct Fcn {
    session: LoadedSession,
    export: FcnExport,
    resize_shorter: Option<u32>,
}

impl Fcn {
    /// The tensors FCN must have.
    pub fn io_spec(classes: usize) -> IoSpec {
        IoSpec::new()
            .input(TensorSpec::f32("input", &[1, 3, -1, -1]))
            .output(TensorSpec::f32("out", &[1, classes as i64, -1, -1]))
    }

    /// Loads the export in `dir` with torchvision's resize.
    pub fn load(dir: impl AsRef<Path>, options: &SessionOptions) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let export: FcnExport = read_export_json(dir, EXPORT_COMMAND)?;
        let session = load_session_batched(dir.join(MODEL_FILE), options, &Self::io_spec(export.labels.len()))?;
        let resize_shorter = Some(export.resize_shorter);
        Ok(Fcn {
            session,
            export,
            resize_shorter,
        })
    }

    /// Runs at this shorter side instead of the preset's (`None`: at the frame's own size).
    pub fn with_resize(mut self, shorter: Option<u32>) -> Self {
        self.resize_shorter = shorter;
        self
    }

    /// The class names.
    pub fn labels(&self) -> &[String] {
        &self.export.labels
    }

    /// The provider the session runs on.
    pub fn provider(&self) -> ActiveProvider {
        self.session.provider()
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        self.session.path()
    }

    /// Classes of every pixel of `image` and its main object.
    pub fn segment(&mut self, image: &RgbImage) -> Result<SemanticSegmentation, ModelError> {
        self.segment_batch(&[image])
            .pop()
            .unwrap_or_else(|| Err(ModelError::Invalid("FCN returned no result".into())))
    }

    /// [`segment`](Self::segment) for each image of `images`, those of one model-input size
    /// in one run. The result at `i` is image `i`'s (an empty image fails alone); each
    /// `inference` is the image's share of its run's model time.
    pub fn segment_batch(&mut self, images: &[&RgbImage]) -> Vec<Result<SemanticSegmentation, ModelError>> {
        let mut results: Vec<Option<Result<SemanticSegmentation, ModelError>>> = Vec::with_capacity(images.len());
        // (w, h) → (image indices, stacked input)
        type Group = ((usize, usize), Vec<usize>, Vec<f32>);
        let mut groups: Vec<Group> = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let (width, height) = image.dimensions();
            if width == 0 || height == 0 {
                results.push(Some(Err(ModelError::Invalid(format!(
                    "cannot segment an empty image ({width}x{height})"
                )))));
                continue;
            }
            results.push(None);
            let (w, h, data) = preprocess(image, self.resize_shorter, self.export.mean, self.export.std);
            match groups.iter_mut().find(|(size, _, _)| *size == (w, h)) {
                Some((_, members, input)) => {
                    members.push(i);
                    input.extend(data);
                }
                None => groups.push(((w, h), vec![i], data)),
            }
        }
        for ((w, h), members, input) in groups {
            match self.run_group(&input, members.len(), w, h) {
                Ok((logits, inference)) => {
                    let share = inference / members.len() as u32;
                    let size = self.export.labels.len() * w * h;
                    for (k, &i) in members.iter().enumerate() {
                        let one = &logits[k * size..(k + 1) * size];
                        results[i] = Some(self.finish(images[i], one, w, h, share));
                    }
                }
                Err(e) => {
                    for &i in &members {
                        results[i] = Some(Err(ModelError::Invalid(e.to_string())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ModelError::Invalid("FCN did not run this image".into()))))
            .collect()
    }

    /// One run over `n` preprocessed `w`×`h` images: their logits and the model time.
    fn run_group(&mut self, input: &[f32], n: usize, w: usize, h: usize) -> Result<(Vec<f32>, Duration), ModelError> {
        let started = Instant::now();
        let mut outputs = self.session.run_f32(&[("input", &[n, 3, h, w], input)], &["out"])?;
        let inference = started.elapsed();
        let logits = outputs
            .pop()
            .ok_or_else(|| ModelError::Invalid("FCN returned no output".into()))?;
        let classes_n = self.export.labels.len();
        if logits.shape != [n, classes_n, h, w] {
            return Err(ModelError::Invalid(format!(
                "FCN output has shape {:?}, expected [{n}, {classes_n}, {h}, {w}]",
                logits.shape
            )));
        }
        Ok((logits.data, inference))
    }

    /// The segmentation of `image` from its `w`×`h` logits.
    fn finish(
        &self,
        image: &RgbImage,
        logits: &[f32],
        w: usize,
        h: usize,
        inference: Duration,
    ) -> Result<SemanticSegmentation, ModelError> {
        let (width, height) = image.dimensions();
        let map = argmax_classes(logits, self.export.labels.len(), w * h);
        let classes = if (w, h) == (width as usize, height as usize) {
            map
        } else {
            let small = GrayImage::from_raw(w as u32, h as u32, map)
                .ok_or_else(|| ModelError::Invalid("class map has the wrong size".into()))?;
            imageops::resize(&small, width, height, FilterType::Nearest).into_raw()
        };
        let (mask, main) = self.main_object(image, &classes);
        Ok(SemanticSegmentation {
            classes,
            mask,
            main,
            inference,
        })
    }

    fn main_object(&self, image: &RgbImage, classes: &[u8]) -> (GrayImage, Option<MainObject>) {
        let (width, height) = image.dimensions();
        let mut counts = vec![0u64; self.export.labels.len()];
        for &c in classes {
            counts[usize::from(c)] += 1;
        }
        counts[0] = 0;
        let best = (1..counts.len()).fold(0, |best, c| if counts[c] > counts[best] { c } else { best });
        let mask = GrayImage::from_fn(width, height, |x, y| {
            let c = classes[(y * width + x) as usize];
            Luma([if best > 0 && usize::from(c) == best { 255 } else { 0 }])
        });
        if best == 0 {
            return (mask, None);
        }
        let main = salient_bbox(&mask, THRESHOLD).map(|bbox: BBox| MainObject {
            class: best,
            label: self.export.labels[best].clone(),
            pixels: counts[best],
            object: cut_out(image, &mask, bbox),
        });
        (mask, main)
    }
}

/// Argmax over the class planes of `[classes, plane]` logits (ties: the lower class).
fn argmax_classes(logits: &[f32], classes: usize, plane: usize) -> Vec<u8> {
    let mut best = vec![0u8; plane];
    let mut best_val = logits[..plane].to_vec();
    for c in 1..classes {
        let row = &logits[c * plane..(c + 1) * plane];
        for i in 0..plane {
            if row[i] > best_val[i] {
                best_val[i] = row[i];
                best[i] = c as u8;
            }
        }
    }
    best
}

/// The size torchvision's `resize(img, [shorter])` gives a `width`×`height` image: the shorter
/// side becomes `shorter`, the longer one `int(shorter * long / short)` (truncated, as
/// `torchvision.transforms.functional._compute_resized_output_size`; integer division gives the
/// same value, since `shorter * long / short` is never within a float's rounding of an integer
/// for image sizes).
pub fn resized_size(width: u32, height: u32, shorter: u32) -> (u32, u32) {
    let (short, long) = (u64::from(width.min(height)), u64::from(width.max(height)));
    let long = ((u64::from(shorter) * long / short.max(1)) as u32).max(1);
    if width <= height {
        (shorter, long)
    } else {
        (long, shorter)
    }
}

/// The model input of `image` (`[3, h, w]` and its width and height): torchvision's
/// `SemanticSegmentation` preset, the shorter side resized to `resize_shorter` ([`resized_size`];
/// bilinear with antialias, which is the `image` crate's `Triangle` filter: a tent widened by the
/// scale when shrinking, sampled at pixel centres), then `x / 255` and `(x - mean) / std`. `None`
/// keeps the size. `models/tests/preprocess_parity.rs` compares it with torchvision.
pub fn preprocess(
    image: &RgbImage,
    resize_shorter: Option<u32>,
    mean: [f32; 3],
    std: [f32; 3],
) -> (usize, usize, Vec<f32>) {
    let (width, height) = image.dimensions();
    let resized;
    let input = match resize_shorter {
        Some(side) if width.min(height) != side => {
            let (w, h) = resized_size(width, height, side);
            resized = imageops::resize(image, w, h, FilterType::Triangle);
            &resized
        }
        _ => image,
    };
    let (w, h) = (input.width() as usize, input.height() as usize);
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in input.pixels().enumerate() {
        for c in 0..3 {
            let x = f32::from(px[c]) / 255.0;
            data[c * plane + i] = (x - mean[c]) / std[c];
        }
    }
    (w, h, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_over_class_planes() {
        // 3 classes, 2 pixels: pixel 0 -> class 2, pixel 1 -> class 0 (tie with 1 keeps 0).
        let logits = [0.0, 1.0, 0.5, 1.0, 0.9, 0.2];
        assert_eq!(argmax_classes(&logits, 3, 2), vec![2, 0]);
    }
}
