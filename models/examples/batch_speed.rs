//! Throughput of the batched model paths (issue 20): LLaVA captions (tiles/s at several
//! batch sizes, and the bytes the decode loop copies between the host and ONNX Runtime per
//! step) and, when the asset is there, ISNet (frames/s at several batch sizes).
//!
//! ```sh
//! cargo run --release -p dataflow-models --example batch_speed -- \
//!     --provider cpu --llava models/fixtures/llava --batches 1,4,8 --tokens 16 \
//!     --isnet assets/models/isnet/isnet-medium.onnx --isnet-batches 1,2
//! ```
//!
//! `--provider cuda` (or `auto`) runs the same on the GPU. `--isnet` is optional.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use dataflow_models::isnet::Isnet;
use dataflow_models::llava::{GenerateOptions, Llava, QUERY};
use dataflow_models::provider::{Provider, SessionOptions};
use image::{Rgb, RgbImage};

fn list(text: &str) -> Vec<usize> {
    text.split(',')
        .map(|n| n.trim().parse().expect("a comma-separated list of batch sizes"))
        .collect()
}

fn tile(k: usize, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 7 + k as u32 * 40) as u8, (y * 5) as u8, (k * 60) as u8])
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut provider, mut llava_dir, mut isnet_path) = (Provider::Cpu, "models/fixtures/llava".to_string(), None);
    let (mut batches, mut isnet_batches, mut tokens) = (vec![1, 4, 8], vec![1, 2], 16usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--provider" => provider = serde_json::from_value(serde_json::Value::String(value))?,
            "--llava" => llava_dir = value,
            "--isnet" => isnet_path = Some(value),
            "--batches" => batches = list(&value),
            "--isnet-batches" => isnet_batches = list(&value),
            "--tokens" => tokens = value.parse()?,
            other => panic!("unknown flag {other}"),
        }
    }
    let options = SessionOptions::default().with_provider(provider);
    let mut llava = Llava::load(&llava_dir, &options)?;
    let gen = GenerateOptions {
        max_new_tokens: tokens,
        stop_at_stop_tokens: false,
        ..GenerateOptions::default()
    };
    let tiles: Vec<RgbImage> = (0..batches.iter().copied().max().unwrap_or(1))
        .map(|k| tile(k, 96, 64))
        .collect();
    llava.generate(
        &[&tiles[0]],
        QUERY,
        &GenerateOptions {
            max_new_tokens: 2,
            ..gen
        },
    )?;
    for &b in &batches {
        let refs: Vec<&RgbImage> = tiles.iter().take(b).collect();
        let (runs, started) = (3, Instant::now());
        let mut last = None;
        for _ in 0..runs {
            last = Some(llava.generate(&refs, QUERY, &gen)?);
        }
        let secs = started.elapsed().as_secs_f64();
        let g = last.expect("a run");
        println!(
            "llava {} batch {b}: {:.2} tiles/s ({tokens} tokens each), host<->ort {} B per decode step, \
             KV cache kept in ort {} B",
            llava.provider(),
            (runs * b) as f64 / secs,
            g.host_bytes_per_step(),
            g.kv_bytes
        );
    }
    if let Some(path) = isnet_path {
        let mut isnet = Isnet::load(&path, &options)?;
        let frames: Vec<RgbImage> = (0..isnet_batches.iter().copied().max().unwrap_or(1))
            .map(|k| tile(k, 640, 480))
            .collect();
        isnet.segment(&frames[0])?;
        for &b in &isnet_batches {
            let refs: Vec<&RgbImage> = frames.iter().take(b).collect();
            let started = Instant::now();
            for r in isnet.segment_batch(&refs) {
                r?;
            }
            println!(
                "isnet {} batch {b}: {:.3} frames/s",
                isnet.provider(),
                b as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
