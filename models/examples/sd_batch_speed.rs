//! Seconds per image of SD + IP-Adapter generation, one image per call against
//! [`SdIpAdapter::generate_batch`] with `batch` images per call (their frames × guidance rows in
//! one UNet call per step): each image has its own prompt and seed, the same size and steps.
//!
//! ```sh
//! cargo run --release -p dataflow-models --example sd_batch_speed -- models/fixtures/sd15_ip 2 8 10 3
//! ```
//!
//! Arguments: export folder, batch size, images, DDIM steps, runs (median reported), image side
//! in px (default, or 1: the export's size), provider (`cpu` (default), `cuda` or `auto`); one
//! intra-op thread. The whole generation is timed: prompt and image encoding, the UNet, the VAE.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dataflow_models::provider::{Provider, SessionOptions};
use dataflow_models::schedulers::SchedulerKind;
use dataflow_models::sd::{GenerateOptions, GenerateRequest, SdIpAdapter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "models/fixtures/sd15_ip".into());
    let mut num = |default: usize| -> Result<usize, std::num::ParseIntError> {
        Ok(args.next().map(|n| n.parse()).transpose()?.unwrap_or(default).max(1))
    };
    let (batch, images, steps, runs) = (num(2)?, num(8)?, num(10)?, num(3)?);
    let side = num(1)? as u32;
    let provider: Provider = match args.next() {
        Some(p) => serde_json::from_value(serde_json::Value::String(p))?,
        None => Provider::Cpu,
    };
    let options = SessionOptions::default().with_provider(provider).with_intra_threads(1);
    let mut sd = SdIpAdapter::load(&dir, &options)?;
    let size = match side {
        1 => sd.export().size,
        side => [side, side],
    };
    let object = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 3) as u8, (y * 2) as u8, 90]));
    let subjects = [
        "a red motorbike",
        "two dogs",
        "a blue boat",
        "an old tree",
        "a white van",
    ];
    let captions: Vec<Vec<Option<String>>> = (0..images)
        .map(|k| {
            vec![Some(format!(
                "{} on the street, photo {k}",
                subjects[k % subjects.len()]
            ))]
        })
        .collect();
    let options: Vec<GenerateOptions> = (0..images as u64)
        .map(|seed| GenerateOptions {
            steps,
            scheduler: SchedulerKind::Ddim,
            seed,
            size,
            ..GenerateOptions::default()
        })
        .collect();
    let requests: Vec<GenerateRequest<'_>> = captions
        .iter()
        .zip(&options)
        .map(|(c, o)| GenerateRequest {
            captions: c,
            grid: (1, 1),
            image_prompt: Some(&object),
            init: None,
            options: o,
        })
        .collect();
    let mut time = |b: usize| -> Result<f64, Box<dyn std::error::Error>> {
        let t0 = std::time::Instant::now();
        for chunk in requests.chunks(b) {
            for g in sd.generate_batch(chunk) {
                assert_eq!(g?.batched_with, chunk.len());
            }
        }
        Ok(t0.elapsed().as_secs_f64() / images as f64)
    };
    time(batch)?; // warm-up
    let mut per_image = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, b) in [1, batch].into_iter().enumerate() {
            per_image[i].push(time(b)?);
        }
    }
    let [w, h] = size;
    for (b, mut v) in [1, batch].into_iter().zip(per_image) {
        v.sort_by(f64::total_cmp);
        println!(
            "{} batch {b}: {:.4} s per image (median of {runs} runs of {images} images, {steps} DDIM steps, {w}×{h}, min {:.4}, max {:.4}, 1 thread)",
            sd.provider(),
            v[runs / 2],
            v[0],
            v[runs - 1]
        );
    }
    Ok(())
}
