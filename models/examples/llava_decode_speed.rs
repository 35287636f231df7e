//! Tokens per second of the LLaVA decode loop (KV cache, greedy, one image, one intra-op
//! thread), the Rust half of the comparison in BENCHMARKS.md; `models/export/llava.py
//! --bench-only --bench N` times the same loop with onnxruntime's Python API.
//!
//! ```sh
//! cargo run --release -p dataflow-models --example llava_decode_speed -- models/fixtures/llava 128 21
//! ```
//!
//! The rate counts the decoder steps after the prefill (embedding the last token, one decoder
//! run with the past, choosing the next token) over their time, as the Python script does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dataflow_models::llava::{GenerateOptions, Llava, QUERY};
use dataflow_models::provider::SessionOptions;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "models/fixtures/llava".into());
    let tokens: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(64);
    let runs: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(21);
    let mut llava = Llava::load(&dir, &SessionOptions::cpu().with_intra_threads(1))?;
    let tile = std::path::Path::new(&dir).join("images/tile0.png");
    let img = if tile.is_file() {
        image::open(&tile)?.to_rgb8()
    } else {
        let [h, w] = llava.export().image_size;
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 128]))
    };
    let options = GenerateOptions {
        max_new_tokens: tokens,
        stop_at_stop_tokens: false,
        ..GenerateOptions::default()
    };
    let warm = GenerateOptions {
        max_new_tokens: 4,
        ..options
    };
    llava.generate(&[&img], QUERY, &warm)?;
    let mut rates = Vec::new();
    for _ in 0..runs.max(1) {
        let g = llava.generate(&[&img], QUERY, &options)?;
        rates.push(g.decode_steps as f64 / g.decode.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "rust decode loop: {tokens} new tokens, 1 thread, {} runs: median {:.0} tokens/s (min {:.0}, max {:.0})",
        rates.len(),
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
    Ok(())
}
