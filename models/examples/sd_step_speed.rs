//! Seconds per guided denoising step of the SD + IP-Adapter loop (UNet on the batch of two for
//! classifier-free guidance, then the DDIM update), one intra-op thread: the Rust half of the
//! comparison in BENCHMARKS.md; `models/export/sd_ip_adapter.py --bench-only` times the same
//! loop with onnxruntime's Python API.
//!
//! ```sh
//! cargo run --release -p dataflow-models --example sd_step_speed -- models/fixtures/sd15_ip 20 5
//! ```
//!
//! Text and image encoding and the VAE are outside the timed loop, as in the Python script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dataflow_models::provider::SessionOptions;
use dataflow_models::schedulers::{Scheduler, SchedulerKind};
use dataflow_models::sd::{normal, SdIpAdapter};
use rand::SeedableRng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "models/fixtures/sd15_ip".into());
    let steps: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20);
    let runs: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5);
    let mut sd = SdIpAdapter::load(&dir, &SessionOptions::cpu().with_intra_threads(1))?;
    let [w, h] = sd.export().size;
    let hw = ((h / 8) as usize, (w / 8) as usize);
    let object = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 3) as u8, (y * 2) as u8, 90]));
    let c = sd.condition("a red motorbike is parked on the street", Some(&object), 0.6, 7.5)?;
    let sched = Scheduler::new(SchedulerKind::Ddim, &sd.export().scheduler, steps)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let n = 4 * hw.0 * hw.1;
    // Warm-up.
    sd.denoise(&c, &sched, normal(&mut rng, n), 0, hw, &mut rng)?;
    let mut per_step = Vec::with_capacity(runs);
    for _ in 0..runs {
        let lat = normal(&mut rng, n);
        let t0 = std::time::Instant::now();
        let out = sd.denoise(&c, &sched, lat, 0, hw, &mut rng)?;
        per_step.push(t0.elapsed().as_secs_f64() / steps as f64);
        assert!(out.iter().all(|v| v.is_finite()));
    }
    per_step.sort_by(f64::total_cmp);
    println!(
        "rust: {:.6} s per step (median of {runs} runs of {steps} steps, min {:.6}, max {:.6}, 1 thread)",
        per_step[runs / 2],
        per_step[0],
        per_step[runs - 1]
    );
    Ok(())
}
