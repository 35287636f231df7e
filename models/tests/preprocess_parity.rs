//! Pre-processing parity with the Python processors the checkpoints were trained with.
//!
//! `python models/export/preprocess_reference.py` draws `preprocess_input.png` (157×103:
//! gradients, a disc, stripes and a checkerboard) and runs transformers' `SiglipImageProcessor`
//! (LLaVA) and torchvision's FCN preset on it; the files it writes into `models/fixtures/llava/`
//! and `models/fixtures/fcn/` are the references here. Both resizes are antialiased (bicubic and
//! bilinear) on the uint8 image. Tolerance: at most 1/255 per value and a mean under 0.02/255,
//! which is how far PIL's own resize is from torchvision's int16-weight one. Measured
//! (2026-11-30): SigLIP 32×32 max 1/255, mean 0.0013/255 (0.13% of values differ); 384×384 max
//! 1/255, mean 0.0036/255; FCN 792×520 max 1/255, mean < 0.0001/255. The `image` crate's
//! `CatmullRom`, used before, was 25/255 off at the stripes' edges at 384×384.
//! Needs no ONNX Runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use dataflow_models::fcn::{preprocess, resized_size};
use dataflow_models::llava::siglip_pixel_values;
use image::RgbImage;
use serde_json::Value;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(path)
}

fn json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(path)).unwrap()).unwrap()
}

fn png(path: &str) -> RgbImage {
    image::open(fixture(path)).unwrap().to_rgb8()
}

/// `[3, h, w]` values of a uint8 image with `(x / 255 - mean) / std`.
fn planes(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

/// Largest and mean absolute difference, in units of 1/255 of the uint8 image (`std` is the
/// normalisation's divisor, so a level is `1 / (255 * std)`), and the share of values that differ.
fn diff_levels(got: &[f32], want: &[f32], std: [f32; 3]) -> (f32, f32, f32) {
    assert_eq!(got.len(), want.len());
    let plane = got.len() / 3;
    let (mut max, mut sum, mut differ) = (0f32, 0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let levels = (g - w).abs() * 255.0 * std[i / plane];
        max = max.max(levels);
        sum += levels;
        if levels > 0.5 {
            differ += 1;
        }
    }
    (max, sum / got.len() as f32, differ as f32 / got.len() as f32)
}

fn array3(v: &Value) -> [f32; 3] {
    let a: Vec<f32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    [a[0], a[1], a[2]]
}

#[test]
fn siglip_resize_matches_transformers_within_one_level() {
    let input = png("llava/preprocess_input.png");
    let cfg = json("llava/preprocessor_config.json");
    let (mean, std) = (array3(&cfg["image_mean"]), array3(&cfg["image_std"]));
    let rescale = cfg["rescale_factor"].as_f64().unwrap() as f32;
    let reference = json("llava/preprocess_siglip.json");
    let size = reference["size"].as_u64().unwrap() as u32;
    // The fixture's 32×32 (a 5× shrink: without antialias the checkerboard and stripes alias).
    let want: Vec<f32> = reference["pixel_values"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c.as_array().unwrap().iter())
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect();
    let got = siglip_pixel_values(&input, [size, size], rescale, mean, std);
    let (max, mean_levels, share) = diff_levels(&got, &want, std);
    println!(
        "SigLIP {size}x{size}: max {max:.3}/255, mean {mean_levels:.4}/255, {:.2}% differ",
        100.0 * share
    );
    assert!(max <= 1.01 && mean_levels < 0.02, "max {max}, mean {mean_levels}");
    // The real checkpoint's 384×384 (an upscale).
    let big = png("llava/preprocess_siglip_384.png");
    let got = siglip_pixel_values(&input, [384, 384], rescale, mean, std);
    let (max, mean_levels, share) = diff_levels(&got, &planes(&big, mean, std), std);
    println!(
        "SigLIP 384x384: max {max:.3}/255, mean {mean_levels:.4}/255, {:.2}% differ",
        100.0 * share
    );
    assert!(max <= 1.01 && mean_levels < 0.02, "max {max}, mean {mean_levels}");
}

#[test]
fn fcn_resize_truncates_the_long_side_and_matches_torchvision() {
    let input = png("fcn/preprocess_input.png");
    let reference = json("fcn/preprocess_fcn.json");
    let side = reference["resize_size"][0].as_u64().unwrap() as u32;
    let want_size = &reference["output_size"];
    let (w, h) = resized_size(input.width(), input.height(), side);
    assert_eq!(
        [u64::from(w), u64::from(h)],
        [want_size[0].as_u64().unwrap(), want_size[1].as_u64().unwrap()]
    );
    // 520 × 157 / 103 = 792.6: truncated, not rounded.
    assert_eq!((w, h), (792, 520));
    assert_eq!(resized_size(103, 157, 520), (520, 792));
    assert_eq!(resized_size(640, 480, 520), (693, 520));
    let (mean, std) = (array3(&reference["mean"]), array3(&reference["std"]));
    let (gw, gh, got) = preprocess(&input, Some(side), mean, std);
    assert_eq!((gw, gh), (w as usize, h as usize));
    let want = planes(&png("fcn/preprocess_fcn.png"), mean, std);
    let (max, mean_levels, share) = diff_levels(&got, &want, std);
    println!(
        "FCN {w}x{h}: max {max:.3}/255, mean {mean_levels:.4}/255, {:.2}% differ",
        100.0 * share
    );
    assert!(max <= 1.01 && mean_levels < 0.02, "max {max}, mean {mean_levels}");
}
