//! The thumbnail baseline (`graphs/thumbnail-lite.toml`): a downscaled JPEG of the frame
//! over the channel, upscaled by ESRGAN-slim at the receiver with the object slice on top.
//! Every frame comes out at its size and well above a flat grey image at 20 dB; at a very
//! low SNR the thumbnail is lost, counted, and the frame still completes.

use std::path::Path;

use dataflow_models::quality;

use crate::support::{make_photos, num, read_csv, root, run_graph};

/// Runs thumbnail-lite over `n` photos made by `make_photos` at `snr` dB; returns the
/// photo folder and the metrics rows.
fn run(dir: &Path, n: usize, snr: &str) -> Vec<std::collections::HashMap<String, String>> {
    let photos = dir.join("in");
    make_photos(&photos, n);
    let out = dir.join("out");
    let source = format!("stage.source.path={}", photos.display());
    let o = run_graph(
        &root().join("graphs/thumbnail-lite.toml"),
        &out,
        &["--snr", snr, "--set", &source],
    );
    assert_eq!(o.status.code(), Some(0), "thumbnail-lite at {snr} dB");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["frames_in"].as_u64(), Some(n as u64), "{summary}");
    assert_eq!(summary["failed"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["dropped"].as_u64(), Some(0), "{summary}");
    let rows = read_csv(&out.join("metrics.csv"));
    assert_eq!(rows.len(), n, "one row per frame in, at {snr} dB");
    for r in &rows {
        let png = out.join("reconstructions").join(format!("{}.png", r["name"]));
        let size = image::image_dimensions(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert_eq!(size, (768, 512), "{}", r["name"]);
    }
    rows
}

#[test]
fn thumbnail_lite_rebuilds_every_frame_well_above_flat_grey_at_20_db() {
    let dir = tempfile::tempdir().unwrap();
    let rows = run(dir.path(), 5, "20");
    for r in &rows {
        let photo = image::open(dir.path().join("in").join(format!("{}.png", r["name"])))
            .unwrap()
            .to_rgb8();
        let grey = image::RgbImage::from_pixel(768, 512, image::Rgb([128, 128, 128]));
        let floor = quality::psnr(&photo, &grey);
        let (psnr, ssim) = (num(r, "psnr_db"), num(r, "ssim"));
        println!(
            "{}: psnr {psnr:.2} dB (flat grey {floor:.2} dB), ssim {ssim:.3}, {} bits, {} channel uses, thumbnail {} bytes",
            r["name"],
            num(r, "bits"),
            num(r, "channel_uses"),
            num(r, "thumbnail_bytes")
        );
        assert_eq!(num(r, "thumbnail_lost"), 0.0, "{}: lost at 20 dB", r["name"]);
        assert_eq!(num(r, "sr_scale"), 8.0, "{}: ESRGAN ×8 for scale = 8", r["name"]);
        assert!(
            psnr > floor + 6.0,
            "{}: {psnr:.2} dB vs flat grey {floor:.2} dB",
            r["name"]
        );
        // The thumbnail's bits are on the row, uncoded BPSK: one channel use per bit.
        assert!(num(r, "bits") >= 8.0 * num(r, "thumbnail_bytes"));
        assert!(num(r, "channel_uses") >= num(r, "bits"));
    }
}

#[test]
fn thumbnail_is_lost_at_a_very_low_snr_and_the_frame_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    let rows = run(dir.path(), 2, "-10");
    for r in &rows {
        println!(
            "{}: thumbnail_lost {}, psnr {:.2} dB",
            r["name"],
            num(r, "thumbnail_lost"),
            num(r, "psnr_db")
        );
        assert_eq!(
            num(r, "thumbnail_lost"),
            1.0,
            "{}: a thumbnail survived -10 dB",
            r["name"]
        );
        assert_eq!(num(r, "sr_scale"), 1.0);
        assert!(num(r, "psnr_db").is_finite());
    }
}
