//! CenterNet batches: the graph opened at load ([`Detector::load`]) runs several images in
//! one call and gives each what the unopened file gives it alone.

use dataflow_models::assets::asset_path;
use dataflow_models::detect::{self, DetectOptions, Detector, CENTERNET, INPUT, OUTPUT, ROWS};
use dataflow_models::error::ModelError;
use dataflow_models::provider::SessionOptions;
use dataflow_models::session::load_session;
use image::RgbImage;

use crate::asset;

/// The samples, of five different sizes.
const SAMPLES: [&str; 5] = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
];

fn sample(name: &str) -> Result<RgbImage, ModelError> {
    let path = asset_path(format!("samples/{name}"))?;
    image::open(&path)
        .map(|img| img.to_rgb8())
        .map_err(|e| ModelError::Invalid(format!("{}: {e}", path.display())))
}

/// The raw `[100, 6]` rows of the converted file as it is on disk (batch 1, not opened).
fn unopened_rows(path: &std::path::Path, image: &RgbImage) -> Result<Vec<f32>, ModelError> {
    let mut session = load_session(path, &SessionOptions::cpu(), &Detector::io_spec())?;
    let side = detect::INPUT_SIZE as usize;
    let input = detect::preprocess(image);
    let mut out = session.run_f32(&[(INPUT, &[1, side, side, 3], &input)], &[OUTPUT])?;
    Ok(out.pop().map(|t| t.data).unwrap_or_default())
}

/// All five samples in one call: the rows (boxes, scores, classes) of each equal, bit for
/// bit on the CPU, those of the unopened file on that image alone, and so do the
/// detections of `detect_batch` and `detect`.
#[test]
fn a_batch_of_samples_equals_each_sample_alone() -> Result<(), ModelError> {
    let Some(path) = asset("a_batch_of_samples_equals_each_sample_alone", CENTERNET) else {
        return Ok(());
    };
    let images = SAMPLES.iter().map(|n| sample(n)).collect::<Result<Vec<_>, _>>()?;
    let sizes: std::collections::HashSet<(u32, u32)> = images.iter().map(RgbImage::dimensions).collect();
    assert_eq!(sizes.len(), SAMPLES.len(), "the samples have different sizes");

    let mut detector = Detector::load(&path, &SessionOptions::cpu().with_intra_threads(1))?;
    assert_eq!(detector.max_batch(), usize::MAX, "the set-up's CenterNet opens");
    let input: Vec<f32> = images.iter().flat_map(detect::preprocess).collect();
    let batched = detector.run_batch_raw(&input, images.len())?;
    assert_eq!(batched.len(), images.len() * ROWS * 6);
    for (k, (name, image)) in SAMPLES.iter().zip(&images).enumerate() {
        let alone = unopened_rows(&path, image)?;
        assert_eq!(alone.len(), ROWS * 6);
        assert!(
            batched[k * ROWS * 6..(k + 1) * ROWS * 6] == alone[..],
            "{name}: batched rows differ from the unopened model's"
        );
    }

    let options = DetectOptions::default();
    let refs: Vec<&RgbImage> = images.iter().collect();
    let found = detector.detect_batch(&refs, options);
    for ((name, image), got) in SAMPLES.iter().zip(&images).zip(found) {
        let one = detector.detect(image, options)?;
        assert_eq!(got?.objects, one.objects, "{name}");
    }
    Ok(())
}

/// An empty image in a batch has no objects and does not disturb the others.
#[test]
fn an_empty_image_in_a_batch_has_no_objects() -> Result<(), ModelError> {
    let Some(path) = asset("an_empty_image_in_a_batch_has_no_objects", CENTERNET) else {
        return Ok(());
    };
    let astronaut = sample("astronaut.png")?;
    let empty = RgbImage::new(0, 0);
    let mut detector = Detector::load(&path, &SessionOptions::cpu().with_intra_threads(1))?;
    let options = DetectOptions::default();
    let mut found = detector
        .detect_batch(&[&empty, &astronaut, &empty], options)
        .into_iter();
    let mut next = || {
        found
            .next()
            .unwrap_or_else(|| Err(ModelError::Invalid("missing result".into())))
    };
    assert!(next()?.objects.is_empty());
    let objects = next()?.objects;
    assert_eq!(objects.first().map(|d| d.class.as_str()), Some("person"), "{objects:?}");
    assert!(next()?.objects.is_empty());
    assert_eq!(objects, detector.detect(&astronaut, options)?.objects);
    Ok(())
}
