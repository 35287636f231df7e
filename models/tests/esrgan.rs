//! ESRGAN-slim (`dataflow_models::esrgan`): the output is `scale` times the input, restores
//! a downscaled photo better than pixel repetition, tiling leaves no seams, and a dump for
//! `bench/python/esrgan_parity.py` (Rust against onnxruntime-Python within 1e-4).
//!
//! The tests need ONNX Runtime and `assets/models/esrgan/` (`scripts/setup-assets`); without
//! them each prints `skipped <name>: <why>` and returns, unless `DATAFLOW_REQUIRE_ASSETS=1`
//! (then they fail).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use dataflow_models::esrgan::{self, Upscaler};
use dataflow_models::provider::SessionOptions;
use dataflow_models::quality;
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

/// The network of `scale` when it and the runtime are present; otherwise skips by name.
fn upscaler(test: &str, scale: u32) -> Option<Upscaler> {
    let skip = |why: String| {
        if dataflow_models::assets::assets_required() {
            panic!("{test}: {why} (DATAFLOW_REQUIRE_ASSETS=1)");
        }
        println!("skipped {test}: {why}");
        None
    };
    if let Err(e) = dataflow_models::runtime::runtime() {
        return skip(e.to_string());
    }
    let path = match dataflow_models::assets::asset_path(esrgan::model_file(scale)) {
        Ok(p) if p.is_file() => p,
        Ok(p) => return skip(format!("{} is absent; run scripts/setup-assets", p.display())),
        Err(e) => return skip(e.to_string()),
    };
    let options = SessionOptions::cpu().with_intra_threads(1);
    Some(Upscaler::load(path, scale, &options).expect("a converted ESRGAN-slim loads"))
}

/// A sample photo of `scripts/setup-assets`, or `None` (skipped by name) without it.
fn sample(test: &str, relative: &str) -> Option<RgbImage> {
    match dataflow_models::assets::asset_path(relative) {
        Ok(p) if p.is_file() => Some(image::open(p).unwrap().to_rgb8()),
        _ if dataflow_models::assets::assets_required() => {
            panic!("{test}: {relative} is absent (DATAFLOW_REQUIRE_ASSETS=1)")
        }
        _ => {
            println!("skipped {test}: {relative} is absent; run scripts/setup-assets");
            None
        }
    }
}

/// A photo-like test image made here: smooth colour ramps, a disc and sharp stripes.
fn test_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (f64::from(x) / f64::from(w), f64::from(y) / f64::from(h));
        let (dx, dy) = (fx - 0.35, fy - 0.5);
        if dx * dx + dy * dy < 0.04 {
            Rgb([230, 60, 40])
        } else if fx > 0.7 && (x / 6) % 2 == 0 {
            Rgb([20, 20, 30])
        } else {
            Rgb([
                (40.0 + 180.0 * fx) as u8,
                (60.0 + 150.0 * fy) as u8,
                (200.0 - 120.0 * fx * fy) as u8,
            ])
        }
    })
}

#[test]
fn esrgan_output_is_scale_times_the_input() {
    for scale in esrgan::SCALES {
        let Some(mut up) = upscaler("esrgan_output_is_scale_times_the_input", scale) else {
            return;
        };
        let out = up.upscale(&test_image(37, 21)).unwrap();
        assert_eq!(out.image.dimensions(), (37 * scale, 21 * scale), "×{scale}");
        assert_eq!(out.tiles, 1);
    }
}

#[test]
fn esrgan_restores_a_downscaled_photo_better_than_pixel_repetition() {
    let test = "esrgan_restores_a_downscaled_photo_better_than_pixel_repetition";
    let Some(mut up) = upscaler(test, 4) else {
        return;
    };
    let Some(photo) = sample(test, "samples/astronaut.png") else {
        return;
    };
    let original = imageops::crop_imm(&photo, 96, 32, 256, 192).to_image();
    let small = imageops::resize(&original, 64, 48, FilterType::Lanczos3);
    let sr = up.upscale(&small).unwrap().image;
    let nearest = imageops::resize(&small, 256, 192, FilterType::Nearest);
    let (p_sr, p_nn) = (quality::psnr(&original, &sr), quality::psnr(&original, &nearest));
    let (s_sr, s_nn) = (quality::ssim(&original, &sr), quality::ssim(&original, &nearest));
    println!("×4: ESRGAN {p_sr:.2} dB SSIM {s_sr:.3}; nearest {p_nn:.2} dB SSIM {s_nn:.3}");
    assert!(p_sr > p_nn + 1.0, "ESRGAN {p_sr:.2} dB vs nearest {p_nn:.2} dB");
    assert!(s_sr > s_nn + 0.02, "ESRGAN SSIM {s_sr:.3} vs nearest {s_nn:.3}");
    // The model takes and gives 0-255: a mid-grey input stays mid-grey.
    let grey = up
        .upscale(&RgbImage::from_pixel(16, 16, Rgb([128, 128, 128])))
        .unwrap()
        .image;
    let centre = grey.get_pixel(32, 32);
    assert!(
        centre.0.iter().all(|&c| (118..=138).contains(&c)),
        "grey in, {centre:?} out"
    );
}

#[test]
fn esrgan_tiles_leave_no_seams() {
    let Some(up) = upscaler("esrgan_tiles_leave_no_seams", 2) else {
        return;
    };
    let img = test_image(150, 90);
    let mut whole = up.with_tile(1024);
    let one = whole.upscale(&img).unwrap();
    let mut tiled = whole.with_tile(40);
    let many = tiled.upscale(&img).unwrap();
    assert_eq!(one.tiles, 1);
    assert_eq!(many.tiles, 4 * 3);
    let worst = one
        .image
        .as_raw()
        .iter()
        .zip(many.image.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    // Only float rounding differs (a value near .5 may round either way).
    assert!(worst <= 1, "tiled and whole outputs differ by {worst} levels");
}

#[test]
fn esrgan_refuses_a_scale_it_does_not_have() {
    let err = Upscaler::load("/nonexistent.onnx", 5, &SessionOptions::cpu()).unwrap_err();
    assert!(err.to_string().contains("no ×5 network"), "{err}");
}

/// Writes the Rust side of `bench/python/esrgan_parity.py`: for each scale, the model input
/// (raw little-endian f32, NHWC) and the raw output, under `$ESRGAN_PARITY_OUT` (default
/// `target/esrgan-parity`).
#[test]
#[ignore = "run by bench/python/esrgan_parity.py"]
fn esrgan_parity_dump() {
    let out = std::env::var_os("ESRGAN_PARITY_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/esrgan-parity"));
    std::fs::create_dir_all(&out).unwrap();
    let img = test_image(48, 40);
    let input = esrgan::to_input(&img);
    let mut index = Vec::new();
    for scale in esrgan::SCALES {
        let Some(mut up) = upscaler("esrgan_parity_dump", scale) else {
            return;
        };
        let raw = up.run_raw(&input, img.width(), img.height()).unwrap();
        let bytes: Vec<u8> = raw.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(out.join(format!("x{scale}.output.f32")), bytes).unwrap();
        index.push(serde_json::json!({ "scale": scale, "model": up.path() }));
    }
    let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out.join("input.f32"), bytes).unwrap();
    let dump = serde_json::json!({ "width": img.width(), "height": img.height(), "scales": index });
    std::fs::write(out.join("rust.json"), serde_json::to_string_pretty(&dump).unwrap()).unwrap();
    println!("wrote {}", out.display());
}
