//! `evaluate`: per-frame quality of the reconstruction and of the text link.
//!
//! A joining stage with two inputs: the reference (the source's frame, first
//! input) and the receiver's output (second input). It adds, per frame:
//! `psnr_db`, `ssim`, `cosine` (pixel cosine similarity), `bleu1`/`bleu4` of the
//! corrected texts against the sent texts and `bleu1_received`/`bleu4_received`
//! of the uncorrected received texts (BLEU with smoothing method 1 of Chen &
//! Cherry 2014, see `dataflow_models::quality`), `ber` over every bit sent for
//! the frame (texts and slice; none when no bits were sent, as by deep JSCC) and
//! `bits_sent`; the reference is kept as `original`.
//! Bandwidth: `channel_uses`, the complex channel symbols the frame cost (the sum the
//! channel stages put on the received message: `fuse` adds up its parts' `channel_uses`,
//! `image_channel` adds `slice_channel_uses`, `codec_channel` and `jscc` set it), and
//! `channel_uses_per_pixel` over the original's pixels. A frame whose path reports no
//! `channel_uses` gets empty cells, not a made-up 0.
//! Text metrics (`dataflow_models::text_metrics`): `wer` and `cer` of the corrected texts
//! against the sent ones, `wer_received` and `cer_received` of the received texts, and
//! `object_recall`, the share of COCO class names in the sent texts still in the
//! corrected ones; a frame whose sent texts name no COCO class has no `object_recall`
//! (an empty CSV cell, skipped by averages) rather than a made-up 0 or 1.
//!
//! Paper-tier metrics, when configured: `lpips = true` adds `lpips` (LPIPS v0.1 AlexNet, the
//! export of `models/export/lpips.py`, folder `lpips_dir`, default `assets/models/lpips-onnx`).
//! `clip = true` adds `clip_cosine`, the cosine similarity of the CLIP image embeddings
//! (`models/export/clip.py`, folder `clip_dir`, default `assets/models/clip`).
//! A configured metric whose export is missing stops the run before it starts, naming the
//! export command.
//!
//! `detect = true` adds `detection_f1`: the COCO detector (`dataflow_models::detect`, from
//! `scripts/setup-assets`) on the original and on the reconstruction, classes matched by
//! box IoU ≥ 0.5, and the two lists as `objects` / `objects_reconstruction`. Without it,
//! the reference's `objects` (from a `detect` stage) are carried on for the sheet.
//!
//! With the reserved `batch = { max, wait_ms }` key the stage gets several complete frames
//! per call: LPIPS scores all their pairs in one run (per image size) and CLIP embeds all
//! their images in one run (each pair on its own if that run fails); a frame a model
//! refuses (an image below LPIPS's 32×32) fails alone. The detector finds the objects of
//! every original and reconstruction in one run (`Detector::detect_batch`).

use std::path::PathBuf;
use std::time::Duration;

use dataflow_engine::{
    BuildContext, Built, Fields, Image, Input, Joined, Message, OutPort, Outputs, Part, Ports, Role, Stage, StageError,
    StageKind, Value,
};
use dataflow_engine::{Field, FieldType};
use dataflow_models::clip::{self, ClipImage};
use dataflow_models::detect::{self, DetectOptions, Detector};
use dataflow_models::error::ModelError;
use dataflow_models::lpips::{self, Lpips};
use dataflow_models::provider::SessionOptions;
use dataflow_models::quality;
use dataflow_monitoring::names;
use image::RgbImage;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::model_file;

/// Keys of `evaluate`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EvaluateConfig {
    /// How long to wait for the reconstruction of a frame.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Adds `lpips`, the LPIPS v0.1 (AlexNet) distance of the reconstruction to the original.
    #[serde(default)]
    pub lpips: bool,
    /// LPIPS export folder (default `assets/models/lpips-onnx`, made by `models/export/lpips.py`).
    #[serde(default)]
    pub lpips_dir: Option<PathBuf>,
    /// Adds `clip_cosine`, the cosine similarity of the CLIP image embeddings.
    #[serde(default)]
    pub clip: bool,
    /// CLIP export folder (default `assets/models/clip`, made by `models/export/clip.py`).
    #[serde(default)]
    pub clip_dir: Option<PathBuf>,
    /// Adds `detection_f1`: the COCO detector (CenterNet) runs on the original and on the
    /// reconstruction; F1 of the class-and-box matches (IoU ≥ 0.5).
    #[serde(default)]
    pub detect: bool,
    /// A converted CenterNet for `detect` instead of the set-up's `assets/models/detect/centernet.onnx`.
    #[serde(default)]
    pub detect_model_path: Option<PathBuf>,
    /// ONNX Runtime session options of the metric models (provider, device_id, intra_threads, arena_limit_bytes).
    #[serde(flatten)]
    pub session: SessionOptions,
}

fn default_timeout() -> u64 {
    60_000
}

/// The `evaluate` kind.
pub struct Evaluate;

struct Run {
    stage: String,
    psnr: metrics::Histogram,
    ssim: metrics::Histogram,
    cosine: metrics::Histogram,
    bleu: metrics::Histogram,
    /// LPIPS session, when `lpips = true`.
    lpips: Option<(Lpips, metrics::Histogram)>,
    /// CLIP image tower, when `clip = true`.
    clip: Option<ClipImage>,
    /// COCO detector and the `detection_f1` histogram, when `detect = true`.
    detector: Option<(Detector, metrics::Histogram)>,
    /// `wer`, `cer` and `object_recall` histograms.
    text: TextHistograms,
}

fn joined_texts(v: Option<&[Option<String>]>) -> String {
    v.map(|t| t.iter().flatten().cloned().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A frame between its pixel metrics and its model metrics: the two images and the
/// fields so far.
struct Pair {
    orig: Image,
    o: RgbImage,
    r: RgbImage,
    fields: Fields,
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        self.process_batch(vec![input], std::slice::from_mut(out))
            .pop()
            .unwrap_or(Ok(()))
    }

    /// The frames of a batch: pixel and text metrics frame by frame, LPIPS over every pair
    /// in one `distance_batch`, CLIP over every image in one `embed_batch` and the detector
    /// over every image in one `detect_batch`; a frame the models refuse fails alone.
    fn process_batch(&mut self, inputs: Vec<Input>, outs: &mut [Outputs]) -> Vec<Result<(), StageError>> {
        let mut results: Vec<Result<(), StageError>> = (0..outs.len()).map(|_| Ok(())).collect();
        let mut frames: Vec<(usize, Joined, Pair)> = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.into_iter().enumerate() {
            let Input::Joined(j) = input else { continue };
            match self.pixels(&j) {
                Ok(pair) => frames.push((i, j, pair)),
                Err(e) => results[i] = Err(e),
            }
        }
        let pairs: Vec<(&RgbImage, &RgbImage)> = frames.iter().map(|(_, _, p)| (&p.o, &p.r)).collect();
        let lpips = self.lpips_batch(&pairs);
        let clip = self.clip_batch(&pairs);
        let detections = self.detect_batch(&pairs);
        for ((((i, j, pair), lpips), clip), detections) in frames.into_iter().zip(lpips).zip(clip).zip(detections) {
            let scores = Scores {
                lpips,
                clip,
                detections,
            };
            results[i] = self.finish(&j, pair, scores, &mut outs[i]);
        }
        results
    }
}

/// The objects found on the original and on the reconstruction of one pair.
type PairDetections = (
    Result<Vec<detect::Detection>, ModelError>,
    Result<Vec<detect::Detection>, ModelError>,
);

/// What the batched models gave one frame (`None` where the model is off).
struct Scores {
    lpips: Option<Result<f64, ModelError>>,
    clip: Option<Result<f64, ModelError>>,
    detections: Option<PairDetections>,
}

impl Run {
    /// PSNR, SSIM and pixel cosine of frame `j` (recorded), with the received fields.
    fn pixels(&mut self, j: &Joined) -> Result<Pair, StageError> {
        let (reference, received) = self.two_parts(j)?;
        let orig = reference
            .fields
            .image("image")
            .ok_or_else(|| StageError::input(format!("frame {}: the reference has no `image`", j.id)))?;
        let recon = received
            .fields
            .image("image")
            .ok_or_else(|| StageError::input(format!("frame {}: the reconstruction has no `image`", j.id)))?;
        let (o, r) = (orig.to_rgb(), recon.to_rgb());
        let mut fields = received.fields.clone();
        let psnr = quality::psnr(&o, &r);
        let ssim = quality::ssim(&o, &r);
        let cosine = quality::pixel_cosine(&o, &r);
        self.psnr.record(psnr);
        self.ssim.record(ssim);
        self.cosine.record(cosine);
        fields.insert("psnr_db", Value::Number(psnr));
        fields.insert("ssim", Value::Number(ssim));
        fields.insert("cosine", Value::Number(cosine));
        Ok(Pair {
            orig: orig.clone(),
            o,
            r,
            fields,
        })
    }

    /// The reference (first input) and the reconstruction (second) of frame `j`.
    fn two_parts<'j>(&self, j: &'j Joined) -> Result<(&'j Message, &'j Message), StageError> {
        let reference = j.parts.first().and_then(|p| p.first()).and_then(|m| m.as_ref());
        let received = j.parts.get(1).and_then(|p| p.first()).and_then(|m| m.as_ref());
        match (reference, received) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(StageError::new(
                "lost",
                format!(
                    "stage `{}`: frame {} lost its {} before evaluation",
                    self.stage,
                    j.id,
                    if reference.is_none() {
                        "reference"
                    } else {
                        "reconstruction"
                    }
                ),
            )),
        }
    }

    /// LPIPS of every pair in one batched run (`None` each without `lpips = true`).
    fn lpips_batch(&mut self, pairs: &[(&RgbImage, &RgbImage)]) -> Vec<Option<Result<f64, ModelError>>> {
        match &mut self.lpips {
            Some((model, _)) if !pairs.is_empty() => model.distance_batch(pairs).into_iter().map(Some).collect(),
            _ => pairs.iter().map(|_| None).collect(),
        }
    }

    /// CLIP cosine of every pair, all images embedded in one run (`None` each without
    /// `clip = true`). When that run fails, each pair is embedded on its own so that
    /// only the one at fault fails.
    fn clip_batch(&mut self, pairs: &[(&RgbImage, &RgbImage)]) -> Vec<Option<Result<f64, ModelError>>> {
        let Some(model) = &mut self.clip else {
            return pairs.iter().map(|_| None).collect();
        };
        let images: Vec<&RgbImage> = pairs.iter().flat_map(|(o, r)| [*o, *r]).collect();
        match model.embed_batch(&images) {
            Ok(e) if e.len() == images.len() => e.chunks(2).map(|p| Some(Ok(clip::cosine(&p[0], &p[1])))).collect(),
            _ => pairs.iter().map(|(o, r)| Some(model.cosine(o, r))).collect(),
        }
    }

    /// Detections on the original and the reconstruction of every pair, all images in one
    /// `detect_batch` run (`None` each without `detect = true`).
    fn detect_batch(&mut self, pairs: &[(&RgbImage, &RgbImage)]) -> Vec<Option<PairDetections>> {
        let Some((model, _)) = &mut self.detector else {
            return pairs.iter().map(|_| None).collect();
        };
        let images: Vec<&RgbImage> = pairs.iter().flat_map(|(o, r)| [*o, *r]).collect();
        let mut found = model.detect_batch(&images, DetectOptions::default()).into_iter();
        let mut next = || {
            found
                .next()
                .unwrap_or_else(|| {
                    Err(ModelError::Invalid(
                        "the detector returned fewer results than images".into(),
                    ))
                })
                .map(|d| d.objects)
        };
        pairs.iter().map(|_| Some((next(), next()))).collect()
    }

    /// The rest of frame `j`'s metrics after the models' (`scores`), emitted.
    fn finish(&mut self, j: &Joined, pair: Pair, scores: Scores, out: &mut Outputs) -> Result<(), StageError> {
        let (reference, received) = self.two_parts(j)?;
        let Pair { orig, mut fields, .. } = pair;
        let Scores {
            lpips,
            clip,
            detections,
        } = scores;
        if let (Some(d), Some((_, hist))) = (lpips, &self.lpips) {
            let d = d.map_err(|e| StageError::new("model", format!("frame {}: LPIPS failed: {e}", j.id)))?;
            hist.record(d);
            fields.insert("lpips", Value::Number(d));
        }
        if let Some(c) = clip {
            let c = c.map_err(|e| StageError::new("model", format!("frame {}: CLIP failed: {e}", j.id)))?;
            fields.insert("clip_cosine", Value::Number(c));
        }
        if let Some(objects) = reference.fields.get("objects") {
            // The original's detections (from `detect`), for the sheet's boxes.
            fields.insert("objects", objects.clone());
        }
        if let Some(found) = detections {
            self.detection_f1(found, &mut fields, j.id)?;
        }
        self.text_metrics(received, &mut fields);
        let f = &received.fields;
        let bits = f.number("bits").unwrap_or(0.0) + f.number("slice_bits").unwrap_or(0.0);
        let errors = f.number("bit_errors").unwrap_or(0.0) + f.number("slice_bit_errors").unwrap_or(0.0);
        fields.insert("bits_sent", Value::Number(bits));
        if bits > 0.0 {
            // A path that sends no bits (deep JSCC's analog symbols) has no bit error rate.
            fields.insert("ber", Value::Number(errors / bits));
        }
        // The slice crosses its own channel (`image_channel`'s `slice_channel_uses`, named
        // apart so that it does not overwrite the texts' `channel_uses` at the join).
        let uses = match (f.number("channel_uses"), f.number("slice_channel_uses")) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        if let Some(uses) = uses {
            let pixels = f64::from(orig.width) * f64::from(orig.height);
            fields.insert("channel_uses", Value::Number(uses));
            fields.insert("channel_uses_per_pixel", Value::Number(uses / pixels.max(1.0)));
        }
        fields.insert("original", Value::Image(orig));
        out.emit(received.derive_part(Part::WHOLE, fields));
        Ok(())
    }

    /// BLEU, WER, CER and object recall of the corrected and the received texts against
    /// the sent ones, when texts were sent.
    fn text_metrics(&self, received: &Message, fields: &mut Fields) {
        let sent = match received.fields.texts("sent_texts") {
            Some(t) => joined_texts(Some(t)),
            None => received.fields.text("sent").unwrap_or_default().to_string(),
        };
        if sent.is_empty() {
            return;
        }
        let corrected = match received.fields.texts("corrected") {
            Some(t) => joined_texts(Some(t)),
            None => received.fields.text("corrected").unwrap_or_default().to_string(),
        };
        let raw = match received.fields.texts("texts") {
            Some(t) => joined_texts(Some(t)),
            None => received.fields.text("text").unwrap_or_default().to_string(),
        };
        let b4 = quality::bleu4(&corrected, &sent);
        self.bleu.record(b4);
        fields.insert("bleu1", Value::Number(quality::bleu1(&corrected, &sent)));
        fields.insert("bleu4", Value::Number(b4));
        fields.insert("bleu1_received", Value::Number(quality::bleu1(&raw, &sent)));
        fields.insert("bleu4_received", Value::Number(quality::bleu4(&raw, &sent)));
        self.text.score(&sent, &corrected, &raw, fields);
    }
}

impl StageKind for Evaluate {
    type Config = EvaluateConfig;
    const NAME: &'static str = "evaluate";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "PSNR, SSIM, cosine, BLEU and BER of each frame (inputs: reference, then reconstruction).";
    /// With `batch`, LPIPS and CLIP score the frames of a batch together (`Run::process_batch`).
    const BATCH: bool = true;

    fn validate(c: &Self::Config) -> Vec<dataflow_engine::KeyProblem> {
        dataflow_engine::check_timeout_ms("timeout_ms", c.timeout_ms)
            .into_iter()
            .collect()
    }

    fn ports(c: &Self::Config) -> Ports {
        Ports {
            outputs: vec![out_port(c)],
            requires: vec![Field::new("image", FieldType::Image)],
            join: Some(Duration::from_millis(c.timeout_ms.max(1))),
            heavy: true,
        }
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        let mut problems: Vec<String> = two_inputs(ctx).err().map(|e| vec![e.message]).unwrap_or_default();
        if c.lpips {
            problems.extend(lpips_dir(c, ctx).err().map(|e| e.message));
        }
        if c.clip {
            problems.extend(clip_dir(c, ctx).err().map(|e| e.message));
        }
        if c.detect {
            problems.extend(
                model_file(c.detect_model_path.as_deref(), detect::CENTERNET, ctx)
                    .err()
                    .map(|e| e.message),
            );
        }
        problems
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        two_inputs(ctx)?;
        let g = ctx.graph.clone();
        let lpips = if c.lpips {
            let dir = lpips_dir(c, ctx)?;
            let model = Lpips::load(&dir, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
            tracing::info!(stage = %ctx.stage, model = %dir.display(), "LPIPS loaded");
            Some((
                model,
                metrics::histogram!(names::QUALITY_LPIPS, names::LABEL_GRAPH => g.clone()),
            ))
        } else {
            None
        };
        let clip = if c.clip {
            let dir = clip_dir(c, ctx)?;
            let model = ClipImage::load(&dir, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
            tracing::info!(stage = %ctx.stage, model = %dir.display(), "CLIP image tower loaded");
            Some(model)
        } else {
            None
        };
        Ok(Built::Stage(Box::new(Run {
            stage: ctx.stage.clone(),
            psnr: metrics::histogram!(names::QUALITY_PSNR_DB, names::LABEL_GRAPH => g.clone()),
            ssim: metrics::histogram!(names::QUALITY_SSIM, names::LABEL_GRAPH => g.clone()),
            cosine: metrics::histogram!(names::QUALITY_COSINE, names::LABEL_GRAPH => g.clone()),
            bleu: metrics::histogram!(names::QUALITY_BLEU, names::LABEL_GRAPH => g),
            lpips,
            clip,
            detector: detector(c, ctx)?,
            text: TextHistograms::new(&ctx.graph),
        })))
    }
}

/// The output port of `evaluate` with this configuration: the reconstruction's fields
/// and the scores it adds.
fn out_port(c: &EvaluateConfig) -> OutPort {
    // Text scores only for frames with a sent text; `object_recall` when it names a COCO class.
    let mut port = OutPort::forwarding("out").with("original", FieldType::Image).with_each(
        &[
            "psnr_db",
            "ssim",
            "cosine",
            "bits_sent",
            "ber",
            "channel_uses",
            "channel_uses_per_pixel",
            "bleu1",
            "bleu4",
            "bleu1_received",
            "bleu4_received",
            "wer",
            "cer",
            "wer_received",
            "cer_received",
            "object_recall",
        ],
        FieldType::Number,
    );
    if c.lpips {
        port = port.with("lpips", FieldType::Number);
    }
    if c.clip {
        port = port.with("clip_cosine", FieldType::Number);
    }
    if c.detect {
        // The two object lists as JSON text.
        port = port
            .with("detection_f1", FieldType::Number)
            .with_each(&["objects", "objects_reconstruction"], FieldType::Text);
    }
    port
}

fn lpips_dir(c: &EvaluateConfig, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let explicit = c.lpips_dir.as_deref().map(|d| ctx.resolve(d));
    lpips::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("evaluate lpips = true: {e}")))
}

impl Run {
    /// `detection_f1` (and both object lists) from the detections of a pair.
    fn detection_f1(
        &mut self,
        found: PairDetections,
        fields: &mut dataflow_engine::Fields,
        id: dataflow_engine::FrameId,
    ) -> Result<(), StageError> {
        let Some((_, hist)) = &self.detector else {
            return Ok(());
        };
        let stage = &self.stage;
        let fail =
            |e: ModelError| StageError::new("model", format!("stage `{stage}`: frame {id}: detection failed: {e}"));
        let on_original = found.0.map_err(fail)?;
        let on_reconstruction = found.1.map_err(fail)?;
        let f1 = detect::detection_f1(&on_original, &on_reconstruction);
        hist.record(f1);
        fields.insert("detection_f1", Value::Number(f1));
        if fields.get("objects").is_none() {
            fields.insert("objects", Value::Text(detect::to_json(&on_original).into()));
        }
        fields.insert(
            "objects_reconstruction",
            Value::Text(detect::to_json(&on_reconstruction).into()),
        );
        Ok(())
    }
}

fn detector(c: &EvaluateConfig, ctx: &BuildContext) -> Result<Option<(Detector, metrics::Histogram)>, StageError> {
    if !c.detect {
        return Ok(None);
    }
    let path = model_file(c.detect_model_path.as_deref(), detect::CENTERNET, ctx)?;
    let model = Detector::load(&path, &c.session).map_err(|e| StageError::new("model", e.to_string()))?;
    tracing::info!(stage = %ctx.stage, model = %path.display(), "detector loaded for detection_f1");
    let hist = metrics::histogram!(names::QUALITY_DETECTION_F1, names::LABEL_GRAPH => ctx.graph.clone());
    Ok(Some((model, hist)))
}

fn two_inputs(ctx: &BuildContext) -> Result<(), StageError> {
    if ctx.inputs.len() == 2 {
        Ok(())
    } else {
        Err(StageError::input(format!(
            "`evaluate` takes exactly two inputs, the reference then the reconstruction; got {:?}",
            ctx.inputs
        )))
    }
}

fn clip_dir(c: &EvaluateConfig, ctx: &BuildContext) -> Result<PathBuf, StageError> {
    let explicit = c.clip_dir.as_deref().map(|d| ctx.resolve(d));
    clip::locate_export(explicit.as_deref()).map_err(|e| StageError::io(format!("evaluate clip = true: {e}")))
}

/// Histograms of the text metrics of `evaluate`.
struct TextHistograms {
    wer: metrics::Histogram,
    cer: metrics::Histogram,
    recall: metrics::Histogram,
}

impl TextHistograms {
    fn new(graph: &str) -> Self {
        let g = graph.to_string();
        Self {
            wer: metrics::histogram!(names::QUALITY_WER, names::LABEL_GRAPH => g.clone()),
            cer: metrics::histogram!(names::QUALITY_CER, names::LABEL_GRAPH => g.clone()),
            recall: metrics::histogram!(names::QUALITY_OBJECT_RECALL, names::LABEL_GRAPH => g),
        }
    }

    /// Adds `wer`, `cer`, `wer_received`, `cer_received` and (when the sent text names a
    /// COCO class) `object_recall`, and records the corrected text's scores.
    fn score(&self, sent: &str, corrected: &str, received: &str, fields: &mut dataflow_engine::Fields) {
        use dataflow_models::text_metrics::{cer, object_recall, wer};
        let (w, c) = (wer(sent, corrected), cer(sent, corrected));
        self.wer.record(w);
        self.cer.record(c);
        fields.insert("wer", Value::Number(w));
        fields.insert("cer", Value::Number(c));
        fields.insert("wer_received", Value::Number(wer(sent, received)));
        fields.insert("cer_received", Value::Number(cer(sent, received)));
        if let Some(r) = object_recall(sent, corrected, &dataflow_models::detect::COCO_NAMES) {
            self.recall.record(r);
            fields.insert("object_recall", Value::Number(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use dataflow_engine::{FrameId, Image, Message, Part};

    use super::*;

    /// Frame `seq`: the sample photo as the reference and a reconstruction (the photo, or
    /// a flat grey image of its size).
    fn pair(seq: u64, name: &str, flat: bool) -> Input {
        let path = dataflow_models::assets::asset_path(format!("samples/{name}")).unwrap();
        let photo = image::open(&path).unwrap().to_rgb8();
        let recon = if flat {
            RgbImage::from_pixel(photo.width(), photo.height(), image::Rgb([128, 128, 128]))
        } else {
            photo.clone()
        };
        let msg = |img: RgbImage| Message {
            id: FrameId { stream: 0, seq },
            part: Part::WHOLE,
            captured: std::time::SystemTime::now(),
            born: std::time::Instant::now(),
            fields: Fields::new().with("image", Value::Image(Image::from_rgb(img))),
        };
        Input::Joined(Joined {
            id: FrameId { stream: 0, seq },
            parts: vec![vec![Some(msg(photo))], vec![Some(msg(recon))]],
        })
    }

    fn field(out: &Outputs, name: &str) -> String {
        let text = format!("{out:?}");
        let at = text
            .find(&format!("\"{name}\""))
            .unwrap_or_else(|| panic!("no `{name}` in {text}"));
        text[at..].split(", \"").next().unwrap_or_default().to_string()
    }

    /// `detect = true` in a batch: one detector run for every image of the batch gives each
    /// frame the `detection_f1` and object lists it gets alone; a photo against itself
    /// scores 1, against a flat image (no objects) 0.
    #[test]
    fn detection_f1_of_a_batch_equals_one_frame_at_a_time() {
        let model = match dataflow_models::assets::asset_path(detect::CENTERNET) {
            Ok(p) if p.is_file() && dataflow_models::runtime::runtime().is_ok() => p,
            other => {
                assert!(!dataflow_models::assets::assets_required(), "{other:?}");
                println!("skipped: no CenterNet or ONNX Runtime; run scripts/setup-assets");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = crate::testkit::context("evaluate", "evaluate", dir.path());
        ctx.inputs = vec!["reference".into(), "received".into()];
        let cfg: EvaluateConfig = serde_json::from_value(serde_json::json!({
            "detect": true, "detect_model_path": model, "provider": "cpu", "intra_threads": 1
        }))
        .unwrap();
        let Built::Stage(mut stage) = Evaluate::build(&cfg, &ctx).unwrap() else {
            panic!("evaluate is a stage")
        };
        let frames = || {
            vec![
                pair(0, "motorcycle_left.png", false),
                pair(1, "chelsea.png", true),
                pair(2, "astronaut.png", false),
            ]
        };
        let mut outs: Vec<Outputs> = (0..3).map(|_| Outputs::default()).collect();
        let results = stage.process_batch(frames(), &mut outs);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(field(&outs[0], "detection_f1").contains("Number(1)"), "{:?}", outs[0]);
        assert!(field(&outs[1], "detection_f1").contains("Number(0)"), "{:?}", outs[1]);
        for (k, frame) in frames().into_iter().enumerate() {
            let mut alone = Outputs::default();
            stage.process(frame, &mut alone).unwrap();
            for name in ["detection_f1", "objects", "objects_reconstruction"] {
                assert_eq!(field(&outs[k], name), field(&alone, name), "frame {k}: {name}");
            }
        }
    }
}
