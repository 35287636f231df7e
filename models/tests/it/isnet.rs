//! ISNet: the fixture with ISNet's tensors, and the real model on sample photos.

use dataflow_models::assets::asset_path;
use dataflow_models::error::ModelError;
use dataflow_models::isnet::{BBox, Isnet, Segmentation, MEDIUM};
use dataflow_models::provider::{ActiveProvider, SessionOptions};
use image::{GrayImage, Rgb, RgbImage};

use crate::{asset, fixture, have_runtime};

/// Mean mask value over `x0..x1`, `y0..y1`.
fn mean_in(mask: &GrayImage, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> f64 {
    let mut sum = 0u64;
    for y in y0..y1 {
        for x in x0..x1 {
            sum += u64::from(mask.get_pixel(x, y)[0]);
        }
    }
    sum as f64 / f64::from((x1 - x0) * (y1 - y0))
}

fn sample(name: &str) -> Result<RgbImage, ModelError> {
    let path = asset_path(format!("samples/{name}"))?;
    image::open(&path)
        .map(|img| img.to_rgb8())
        .map_err(|e| ModelError::Invalid(format!("{}: {e}", path.display())))
}

/// `isnet_like.onnx` has ISNet's tensors and computes sigmoid(mean over channels), so after
/// ISNet's pre-processing a white pixel scores 0.62 (mask 158) and a black one 0.38 (96).
#[test]
fn fixture_white_square_on_black_is_the_object() -> Result<(), ModelError> {
    if !have_runtime("fixture_white_square_on_black_is_the_object") {
        return Ok(());
    }
    let mut isnet = Isnet::load(fixture("isnet_like.onnx"), &SessionOptions::cpu())?;
    assert_eq!(isnet.provider(), ActiveProvider::Cpu);
    let image = RgbImage::from_fn(64, 48, |x, y| {
        if (16..40).contains(&x) && (8..30).contains(&y) {
            Rgb([255, 255, 255])
        } else {
            Rgb([0, 0, 0])
        }
    });
    let seg = isnet.segment(&image)?;
    assert_eq!(seg.mask.dimensions(), (64, 48));
    assert_eq!(seg.mask.get_pixel(28, 20)[0], 158);
    assert_eq!(seg.mask.get_pixel(2, 2)[0], 96);
    let bbox = seg.bbox.unwrap_or_else(|| panic!("no object found"));
    let truth = BBox {
        x: 16,
        y: 8,
        width: 24,
        height: 22,
    };
    // Bilinear resizing there and back may blur the edge by a pixel.
    assert!(bbox.iou(&truth) > 0.85, "{bbox:?} vs {truth:?}");
    let object = seg.object.unwrap_or_else(|| panic!("no object slice"));
    assert_eq!(object.bbox, bbox);
    assert_eq!(object.image.dimensions(), (bbox.width, bbox.height));
    let centre = object.image.get_pixel(bbox.width / 2, bbox.height / 2);
    assert_eq!(centre.0, [255, 255, 255, 158]);

    let black = isnet.segment(&RgbImage::new(32, 32))?;
    assert_eq!(black.bbox, None);
    assert!(black.object.is_none());
    Ok(())
}

#[test]
fn empty_image_is_an_error() -> Result<(), ModelError> {
    if !have_runtime("empty_image_is_an_error") {
        return Ok(());
    }
    let mut isnet = Isnet::load(fixture("isnet_like.onnx"), &SessionOptions::cpu())?;
    let err = isnet.segment(&RgbImage::new(0, 10)).err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("cannot segment an empty image (0x10)"));
    Ok(())
}

#[test]
fn a_model_with_other_tensors_is_refused() {
    if !have_runtime("a_model_with_other_tensors_is_refused") {
        return;
    }
    let err = Isnet::load(fixture("add.onnx"), &SessionOptions::cpu())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("input `input` is missing"), "{err}");
    assert!(err.contains("expected inputs [input: f32[1, 3, 1024, 1024]]"), "{err}");
}

/// The real ISNet (medium) on three images, one session: about 10 s on two cores.
#[test]
fn isnet_medium_finds_the_astronaut_and_the_cup() -> Result<(), ModelError> {
    let test = "isnet_medium_finds_the_astronaut_and_the_cup";
    let Some(model) = asset(test, MEDIUM) else {
        return Ok(());
    };
    let mut isnet = Isnet::load(&model, &SessionOptions::cpu())?;

    // astronaut.png, 512x512. Boxes measured by eye on the photo: the person and the
    // helmet she holds span from the top of her hair (y 15) and the left edge of the suit
    // (x 20) to the right and bottom edges.
    let seg: Segmentation = isnet.segment(&sample("astronaut.png")?)?;
    assert_eq!(seg.mask.dimensions(), (512, 512));
    let person = BBox {
        x: 20,
        y: 15,
        width: 492,
        height: 497,
    };
    let bbox = seg.bbox.unwrap_or_else(|| panic!("no person found"));
    assert!(bbox.iou(&person) > 0.9, "astronaut {bbox:?} vs {person:?}");
    assert!(mean_in(&seg.mask, (180, 60, 270, 170)) > 200.0, "face");
    assert!(mean_in(&seg.mask, (60, 300, 280, 480)) > 200.0, "orange suit");
    assert!(mean_in(&seg.mask, (0, 0, 60, 180)) < 30.0, "flag, top left");
    assert!(mean_in(&seg.mask, (370, 20, 460, 240)) < 30.0, "shuttle model");
    assert!(seg.inference.as_millis() > 0);

    // coffee.png, 600x400: cup, spoon and saucer from x 77 to 480, y 18 (cup rim) to 390
    // (saucer's lower edge).
    let seg = isnet.segment(&sample("coffee.png")?)?;
    let cup = BBox {
        x: 77,
        y: 18,
        width: 403,
        height: 372,
    };
    let bbox = seg.bbox.unwrap_or_else(|| panic!("no cup found"));
    assert!(bbox.iou(&cup) > 0.9, "coffee {bbox:?} vs {cup:?}");
    assert!(mean_in(&seg.mask, (220, 100, 350, 180)) > 200.0, "coffee in the cup");
    assert!(mean_in(&seg.mask, (0, 300, 60, 400)) < 30.0, "table, bottom left");
    assert!(mean_in(&seg.mask, (520, 0, 600, 100)) < 30.0, "table, top right");
    let object = seg.object.unwrap_or_else(|| panic!("no cup slice"));
    assert_eq!(object.image.dimensions(), (bbox.width, bbox.height));

    // A flat grey image has nothing salient.
    let grey = isnet.segment(&RgbImage::from_pixel(320, 240, Rgb([128, 128, 128])))?;
    assert_eq!(grey.bbox, None, "grey image");
    Ok(())
}

/// The quantised export keeps ISNet's tensors (f32 in, f32 out), so it loads the same way.
#[test]
fn isnet_small_has_the_same_tensors() -> Result<(), ModelError> {
    let Some(model) = asset("isnet_small_has_the_same_tensors", dataflow_models::isnet::SMALL) else {
        return Ok(());
    };
    let isnet = Isnet::load(&model, &SessionOptions::cpu())?;
    assert!(isnet.path().ends_with("isnet-small.onnx"));
    Ok(())
}
