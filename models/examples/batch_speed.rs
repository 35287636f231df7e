//! Throughput of the batched model paths (issue 20): LLaVA captions (tiles/s at several
//! batch sizes, with the KV cache in host memory and bound to the provider's memory, and the
//! bytes the decode loop copies between the host and the provider's memory per step), BART
//! beam search (texts/s at several batch sizes, batched and one text at a time, the KV cache
//! on the host and bound, with the bytes per decode step) and, when the asset is there,
//! ISNet (frames/s at several batch sizes) and the CenterNet detector (images/s at several
//! batch sizes, batched and one image at a time).
//!
//! ```sh
//! cargo run --release -p dataflow-models --example batch_speed -- \
//!     --provider cpu --llava models/fixtures/llava --batches 1,4,8 --tokens 16 \
//!     --bart models/fixtures/bart --bart-batches 1,4,8 --bart-beams 4 \
//!     --isnet assets/models/isnet/isnet-medium.onnx --isnet-batches 1,2 \
//!     --detect assets/models/detect/centernet.onnx --detect-batches 1,2,4 \
//!     --sd models/fixtures/sd15_ip --sd-batch 4 --sd-steps 10
//! ```
//!
//! `--sd` times SD + IP-Adapter (s/image, `regional` prompts of a 2×2 grid, one image and
//! `--sd-batch` images per call) with the UNet's conditioning rebuilt on the host at every
//! step and bound to the provider's memory once per run, and prints the bytes the UNet calls
//! move between host and provider memory per step (as counted on this provider, and as
//! counted under CUDA).
//!
//! `--provider cuda` (or `auto`) runs the same on the GPU. `--isnet` and `--bart` are
//! optional; `--llava none` leaves LLaVA out. BART decodes with the export's settings
//! (`no_repeat_ngram_size`, length penalty, early stopping, input-sized limit), the beam
//! width from `--bart-beams`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use dataflow_models::bart::Bart;
use dataflow_models::detect::{DetectOptions, Detector};
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
    let (mut bart_dir, mut bart_batches, mut bart_beams) = (None, vec![1, 4, 8], 4usize);
    let (mut detect_path, mut detect_batches) = (None, vec![1, 2, 4]);
    let (mut sd_dir, mut sd_batch, mut sd_steps) = (None, 4usize, 10usize);
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
            "--bart" => bart_dir = Some(value),
            "--bart-batches" => bart_batches = list(&value),
            "--bart-beams" => bart_beams = value.parse()?,
            "--detect" => detect_path = Some(value),
            "--detect-batches" => detect_batches = list(&value),
            "--sd" => sd_dir = Some(value),
            "--sd-batch" => sd_batch = value.parse()?,
            "--sd-steps" => sd_steps = value.parse()?,
            other => panic!("unknown flag {other}"),
        }
    }
    let options = SessionOptions::default().with_provider(provider);
    if llava_dir != "none" {
        llava_speed(&llava_dir, &options, &batches, tokens)?;
    }
    if let Some(dir) = bart_dir {
        bart_speed(&dir, &options, &bart_batches, bart_beams)?;
    }
    if let Some(path) = isnet_path {
        isnet_speed(&path, &options, &isnet_batches)?;
    }
    if let Some(path) = detect_path {
        detect_speed(&path, &options, &detect_batches)?;
    }
    if let Some(dir) = sd_dir {
        sd_speed(&dir, &options, sd_batch.max(1), sd_steps.max(1))?;
    }
    Ok(())
}

fn llava_speed(
    llava_dir: &str,
    options: &SessionOptions,
    batches: &[usize],
    tokens: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut llava = Llava::load(llava_dir, options)?;
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
    for &b in batches {
        let refs: Vec<&RgbImage> = tiles.iter().take(b).collect();
        // The KV cache in host memory between steps, then bound to the provider's memory.
        let mut host_ids = Vec::new();
        for bind in [false, true] {
            llava.set_bind_cache(bind);
            llava.generate(&refs, QUERY, &gen)?;
            let (runs, started) = (3, Instant::now());
            let mut last = None;
            for _ in 0..runs {
                last = Some(llava.generate(&refs, QUERY, &gen)?);
            }
            let secs = started.elapsed().as_secs_f64();
            let g = last.expect("a run");
            let ids: Vec<Vec<u32>> = g.captions.iter().map(|c| c.ids.clone()).collect();
            let same = if bind {
                if ids == host_ids {
                    ", same tokens"
                } else {
                    ", OTHER TOKENS"
                }
            } else {
                ""
            };
            host_ids = ids;
            println!(
                "llava {} batch {b} cache {}: {:.2} tiles/s ({tokens} tokens each), host<->device {} B per \
                 decode step, KV cache {} B at the last step{same}",
                llava.provider(),
                if bind { "bound" } else { "on host" },
                (runs * b) as f64 / secs,
                g.host_bytes_per_step(),
                g.kv_bytes
            );
        }
    }
    Ok(())
}

/// Misspelt captions of different lengths (5 to 21 tokens on the fixture's tokenizer).
const BART_TEXTS: [&str; 8] = [
    "teh cat sat on teh mat",
    "a red motorbke is parked on the stret",
    "A person in a white space suit.",
    "teh cat",
    "two dogs playing wiht a red bal in teh park",
    "a man rideing a hrose on a beach",
    "a bowl of frut on a wooden tabel",
    "an astronuat in a space suit standing",
];

/// Texts/s of BART beam search, batched (`correct_batch`) and one text at a time (`correct`):
/// each way warmed once, then timed over at least 0.5 s, three times interleaved; the best
/// of the three (the machine is shared, so the best is the least disturbed). Both with the KV
/// cache on the host and bound to the provider's memory (`Bart::set_bind_cache`), with the
/// bytes a decode step of the batched call moves between the host and the provider's memory
/// (`Bart::decode_stats`).
fn bart_speed(
    dir: &str,
    options: &SessionOptions,
    batches: &[usize],
    beams: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut bart = Bart::load(dir, options)?;
    let o = dataflow_models::bart::CorrectOptions {
        beams,
        ..bart.default_options()
    };
    let max = batches.iter().copied().max().unwrap_or(1);
    let texts: Vec<&str> = BART_TEXTS.iter().copied().cycle().take(max).collect();
    for &b in batches {
        let batch = &texts[..b];
        let mut host_texts = Vec::new();
        for bind in [false, true] {
            bart.set_bind_cache(bind);
            bart.take_decode_stats();
            let corrected = bart
                .correct_batch(batch, &o)
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            let stats = bart.take_decode_stats();
            let same = match (bind, corrected == host_texts) {
                (false, _) => "",
                (true, true) => ", same texts",
                (true, false) => ", OTHER TEXTS",
            };
            host_texts = corrected;
            let (batched, alone) = bart_texts_per_second(&mut bart, batch, &o)?;
            println!(
                "bart {} beams {beams} batch {b} cache {}: {batched:.1} texts/s batched, {alone:.1} texts/s one at a \
                 time ({:.2}x), host<->device {} B per decode step batched ({} steps; caches {} B per step, \
                 crossing only on a GPU unbound){same}",
                bart.provider(),
                if bind { "bound" } else { "on host" },
                batched / alone,
                stats.host_bytes_per_step(),
                stats.decode_steps,
                stats.cache_bytes_per_step()
            );
        }
    }
    Ok(())
}

/// The best of three interleaved timings of `batch` corrected in one batch and one text at
/// a time, in texts/s.
fn bart_texts_per_second(
    bart: &mut Bart,
    batch: &[&str],
    o: &dataflow_models::bart::CorrectOptions,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let b = batch.len();
    {
        let mut batched = |bart: &mut Bart| -> Result<(), Box<dyn std::error::Error>> {
            for r in bart.correct_batch(batch, o) {
                r?;
            }
            Ok(())
        };
        let mut alone = |bart: &mut Bart| -> Result<(), Box<dyn std::error::Error>> {
            for t in batch {
                bart.correct(t, o)?;
            }
            Ok(())
        };
        let (mut best_batched, mut best_alone) = (0.0f64, 0.0f64);
        batched(bart)?;
        alone(bart)?;
        for _ in 0..3 {
            best_batched = best_batched.max(b as f64 / seconds_per_call(bart, &mut batched)?);
            best_alone = best_alone.max(b as f64 / seconds_per_call(bart, &mut alone)?);
        }
        Ok((best_batched, best_alone))
    }
}

/// One timed way of correcting the batch.
type Call<'a> = dyn FnMut(&mut Bart) -> Result<(), Box<dyn std::error::Error>> + 'a;

/// Mean seconds of one `call`, run until 0.5 s have passed (at least 3 calls).
fn seconds_per_call(bart: &mut Bart, call: &mut Call<'_>) -> Result<f64, Box<dyn std::error::Error>> {
    let (started, mut calls) = (Instant::now(), 0u32);
    while calls < 3 || started.elapsed().as_secs_f64() < 0.5 {
        call(bart)?;
        calls += 1;
    }
    Ok(started.elapsed().as_secs_f64() / f64::from(calls))
}

fn isnet_speed(
    path: &str,
    options: &SessionOptions,
    isnet_batches: &[usize],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut isnet = Isnet::load(path, options)?;
    let frames: Vec<RgbImage> = (0..isnet_batches.iter().copied().max().unwrap_or(1))
        .map(|k| tile(k, 640, 480))
        .collect();
    isnet.segment(&frames[0])?;
    for &b in isnet_batches {
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
    Ok(())
}

/// One timed way of detecting the batch.
type DetectCall<'a> = dyn FnMut(&mut Detector) -> Result<(), Box<dyn std::error::Error>> + 'a;

/// Images/s of CenterNet on 640×480 frames (resizing included), batched (`detect_batch`,
/// one model call) and one image at a time (`detect`): each way warmed once, then timed
/// over at least 1 s, three times interleaved; the best of the three (the machine is
/// shared, so the best is the least disturbed).
fn detect_speed(path: &str, options: &SessionOptions, batches: &[usize]) -> Result<(), Box<dyn std::error::Error>> {
    let mut detector = Detector::load(path, options)?;
    let o = DetectOptions::default();
    let frames: Vec<RgbImage> = (0..batches.iter().copied().max().unwrap_or(1))
        .map(|k| tile(k, 640, 480))
        .collect();
    for &b in batches {
        let refs: Vec<&RgbImage> = frames.iter().take(b).collect();
        let mut batched = |d: &mut Detector| -> Result<(), Box<dyn std::error::Error>> {
            for r in d.detect_batch(&refs, o) {
                r?;
            }
            Ok(())
        };
        let mut alone = |d: &mut Detector| -> Result<(), Box<dyn std::error::Error>> {
            for image in &refs {
                d.detect(image, o)?;
            }
            Ok(())
        };
        let per_second = |d: &mut Detector, call: &mut DetectCall<'_>| {
            let (started, mut calls) = (Instant::now(), 0u32);
            while calls < 3 || started.elapsed().as_secs_f64() < 1.0 {
                call(d)?;
                calls += 1;
            }
            Ok::<f64, Box<dyn std::error::Error>>(f64::from(calls) * b as f64 / started.elapsed().as_secs_f64())
        };
        batched(&mut detector)?;
        alone(&mut detector)?;
        let (mut best_batched, mut best_alone) = (0.0f64, 0.0f64);
        for _ in 0..3 {
            best_batched = best_batched.max(per_second(&mut detector, &mut batched)?);
            best_alone = best_alone.max(per_second(&mut detector, &mut alone)?);
        }
        println!(
            "centernet {} batch {b}: {best_batched:.1} images/s batched, {best_alone:.1} images/s one at a time \
             ({:.2}x)",
            detector.provider(),
            best_batched / best_alone
        );
    }
    Ok(())
}

/// SD + IP-Adapter with the UNet's text and image-prompt rows rebuilt on the host at every step
/// and placed in the provider's memory once per run (`set_bind_conditioning`): seconds per
/// image at the export's size (`regional`: four tile captions, so per step one UNet call on the
/// empty prompt and the four tiles at 77 tokens and one on the global prompt at 308), alone and
/// `batch` images per call, each way warmed once then the best of three interleaved runs; and
/// the UNet's host<->provider bytes per step.
fn sd_speed(dir: &str, options: &SessionOptions, batch: usize, steps: usize) -> Result<(), Box<dyn std::error::Error>> {
    use dataflow_models::provider::ActiveProvider;
    use dataflow_models::sd::{GenerateOptions, GenerateRequest, PromptMode, SdIpAdapter};
    let mut sd = SdIpAdapter::load(dir, options)?;
    let object = tile(9, 64, 64);
    let captions: Vec<Vec<Option<String>>> = (0..batch)
        .map(|k| {
            ["a red car", "a tree with yellow leaves", "a lake", "two dogs running"]
                .iter()
                .map(|c| Some(format!("{c}, photo {k}")))
                .collect()
        })
        .collect();
    let gen: Vec<GenerateOptions> = (0..batch as u64)
        .map(|seed| GenerateOptions {
            steps,
            seed,
            size: sd.export().size,
            prompt_mode: PromptMode::Regional,
            ..GenerateOptions::default()
        })
        .collect();
    let requests: Vec<GenerateRequest<'_>> = captions
        .iter()
        .zip(&gen)
        .map(|(captions, options)| GenerateRequest {
            captions,
            grid: (2, 2),
            image_prompt: Some(&object),
            init: None,
            options,
        })
        .collect();
    let run = |sd: &mut SdIpAdapter, bind: bool, b: usize| -> Result<(f64, u64, u64), Box<dyn std::error::Error>> {
        sd.set_bind_conditioning(bind);
        let started = Instant::now();
        let mut last = None;
        for chunk in requests.chunks(b) {
            for g in sd.generate_batch(chunk) {
                last = Some(g?);
            }
        }
        let g = last.expect("an image");
        let cuda = g.unet_bytes.counted(g.steps_run, ActiveProvider::Cuda, bind) / g.steps_run.max(1) as u64;
        Ok((
            started.elapsed().as_secs_f64() / batch as f64,
            g.host_bytes_per_step(),
            cuda,
        ))
    };
    let [w, h] = sd.export().size;
    for b in [1, batch] {
        let mut best = [(f64::MAX, 0, 0); 2];
        for bind in [false, true] {
            run(&mut sd, bind, b)?;
        }
        for _ in 0..3 {
            for (i, bind) in [false, true].into_iter().enumerate() {
                let (secs, bytes, cuda) = run(&mut sd, bind, b)?;
                best[i] = (best[i].0.min(secs), bytes, cuda);
            }
        }
        for (bind, (secs, bytes, cuda)) in [false, true].into_iter().zip(best) {
            println!(
                "sd {} {w}x{h} regional 2x2, {steps} DDIM steps, batch {b}, conditioning {}: {secs:.4} s/image, \
                 UNet host<->provider {bytes} B per step ({cuda} B per step as counted under CUDA)",
                sd.provider(),
                if bind { "bound" } else { "on host" },
            );
        }
    }
    Ok(())
}
