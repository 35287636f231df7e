//! Batched inference (issue 20): a batch gives each input what a run of that input alone
//! gives, and an input the model cannot take fails alone.

use dataflow_models::bart::{Bart, CorrectOptions, EarlyStopping};
use dataflow_models::clip::ClipImage;
use dataflow_models::error::ModelError;
use dataflow_models::fcn::Fcn;
use dataflow_models::isnet::{Isnet, MEDIUM};
use dataflow_models::llava::{GenerateOptions, Llava, QUERY};
use dataflow_models::lpips::Lpips;
use dataflow_models::provider::SessionOptions;
use dataflow_models::textgen::Decoding;
use image::{Rgb, RgbImage};

use crate::{asset, fixture, have_runtime};

fn opts() -> SessionOptions {
    SessionOptions::cpu().with_intra_threads(1)
}

/// A `w`×`h` scene with a bright rectangle whose place depends on `seed`.
fn scene(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let inside = (x + seed * 3) % w > w / 3 && (y + seed * 5) % h > h / 2;
        if inside {
            Rgb([250, 240 - (seed * 20) as u8, 230])
        } else {
            Rgb([(x * 7 % 60) as u8, (y * 5 % 90) as u8, (seed * 40) as u8])
        }
    })
}

#[test]
fn isnet_fixture_batch_equals_one_at_a_time_and_an_empty_frame_fails_alone() -> Result<(), ModelError> {
    if !have_runtime("isnet_fixture_batch_equals_one_at_a_time_and_an_empty_frame_fails_alone") {
        return Ok(());
    }
    let mut isnet = Isnet::load(fixture("isnet_like.onnx"), &opts())?;
    let images = [
        scene(64, 48, 0),
        scene(40, 40, 1),
        RgbImage::new(0, 8),
        scene(96, 64, 2),
    ];
    let refs: Vec<&RgbImage> = images.iter().collect();
    let batched = isnet.segment_batch(&refs);
    assert_eq!(batched.len(), 4);
    for (i, (image, got)) in images.iter().zip(&batched).enumerate() {
        match isnet.segment(image) {
            Ok(alone) => {
                let got = got
                    .as_ref()
                    .unwrap_or_else(|e| panic!("frame {i} failed in the batch: {e}"));
                assert_eq!(got.mask, alone.mask, "frame {i}: the batched mask differs");
                assert_eq!(got.bbox, alone.bbox, "frame {i}");
                assert_eq!(got.object, alone.object, "frame {i}");
            }
            Err(alone) => {
                let got = got.as_ref().err().map(ToString::to_string);
                assert_eq!(got, Some(alone.to_string()), "frame {i}: the same error in the batch");
            }
        }
    }
    assert!(batched[2].is_err() && batched[0].is_ok() && batched[3].is_ok());
    Ok(())
}

/// The real ISNet, whose export fixes the batch to 1: opened, a batch of two photos gives
/// bit-identical masks on the CPU (about 25 s on two cores).
#[test]
fn real_isnet_batch_of_two_equals_one_at_a_time() -> Result<(), ModelError> {
    let Some(path) = asset("real_isnet_batch_of_two_equals_one_at_a_time", MEDIUM) else {
        return Ok(());
    };
    let Some(samples) = asset("real_isnet_batch_of_two_equals_one_at_a_time", "samples/astronaut.png") else {
        return Ok(());
    };
    let a = image::open(&samples)
        .map_err(|e| ModelError::Invalid(e.to_string()))?
        .to_rgb8();
    let b = image::imageops::resize(&a, 200, 150, image::imageops::FilterType::Triangle);
    let mut isnet = Isnet::load(path, &SessionOptions::cpu())?;
    let batched = isnet.segment_batch(&[&a, &b]);
    for (image, got) in [&a, &b].into_iter().zip(batched) {
        let got = got?;
        let alone = isnet.segment(image)?;
        assert_eq!(got.mask, alone.mask);
        assert_eq!(got.bbox, alone.bbox);
    }
    Ok(())
}

#[test]
fn fcn_batch_equals_one_at_a_time_across_sizes() -> Result<(), ModelError> {
    if !have_runtime("fcn_batch_equals_one_at_a_time_across_sizes") {
        return Ok(());
    }
    let mut fcn = Fcn::load(fixture("fcn"), &opts())?.with_resize(None);
    let photo = image::open(fixture("fcn").join("image.png")).unwrap().to_rgb8();
    // Two sizes: the two 48×40 scenes and the photo run as two model calls.
    let images = [scene(48, 40, 0), photo, RgbImage::new(7, 0), scene(48, 40, 3)];
    let refs: Vec<&RgbImage> = images.iter().collect();
    let batched = fcn.segment_batch(&refs);
    for (i, (image, got)) in images.iter().zip(&batched).enumerate() {
        match fcn.segment(image) {
            Ok(alone) => {
                let got = got
                    .as_ref()
                    .unwrap_or_else(|e| panic!("frame {i} failed in the batch: {e}"));
                assert_eq!(got.classes, alone.classes, "frame {i}: the batched classes differ");
                assert_eq!(got.mask, alone.mask, "frame {i}");
                assert_eq!(got.main, alone.main, "frame {i}");
            }
            Err(alone) => assert_eq!(got.as_ref().err().map(ToString::to_string), Some(alone.to_string())),
        }
    }
    assert!(batched[2].is_err());
    Ok(())
}

/// Sampled captions of a batch whose rows carry their own seeds equal each tile sampled
/// alone with its seed (the `caption` stage seeds per frame and tile), token for token.
#[test]
fn llava_sampled_batch_with_row_seeds_equals_each_tile_alone() -> Result<(), ModelError> {
    if !have_runtime("llava_sampled_batch_with_row_seeds_equals_each_tile_alone") {
        return Ok(());
    }
    let mut llava = Llava::load(fixture("llava"), &opts())?;
    let tiles: Vec<RgbImage> = (0..4)
        .map(|k| {
            image::open(fixture("llava").join(format!("images/tile{k}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    let refs: Vec<&RgbImage> = tiles.iter().collect();
    let sample = |seed| GenerateOptions {
        max_new_tokens: 12,
        decoding: Decoding::Sample {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            seed,
        },
        ..GenerateOptions::default()
    };
    let seeds = [11u64, 907, 3, 12345];
    let batch = llava.generate_seeded(&refs, QUERY, &sample(0), &seeds)?;
    assert_eq!(batch.captions.len(), 4);
    for (k, (tile, seed)) in tiles.iter().zip(seeds).enumerate() {
        let alone = llava.generate(&[tile], QUERY, &sample(seed))?;
        assert_eq!(batch.captions[k], alone.captions[0], "tile {k} (seed {seed})");
    }
    let other = llava.generate_seeded(&refs, QUERY, &sample(0), &[1, 2, 3, 4])?;
    assert_ne!(other.captions, batch.captions, "the seeds reach the sampler");
    let err = llava.generate_seeded(&refs, QUERY, &sample(0), &[1]).unwrap_err();
    assert_eq!(err.to_string(), "4 images but 1 seeds");
    Ok(())
}

/// Largest absolute difference of two equally long slices.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn clip_batch_equals_one_at_a_time() -> Result<(), ModelError> {
    if !have_runtime("clip_batch_equals_one_at_a_time") {
        return Ok(());
    }
    let mut clip = ClipImage::load(fixture("clip"), &opts())?;
    let x = image::open(fixture("clip").join("x.png")).unwrap().to_rgb8();
    let y = image::open(fixture("clip").join("y.png")).unwrap().to_rgb8();
    let images = [x, y, scene(50, 30, 1)];
    let refs: Vec<&RgbImage> = images.iter().collect();
    let batched = clip.embed_batch(&refs)?;
    assert_eq!(batched.len(), 3);
    for (k, img) in images.iter().enumerate() {
        let alone = clip.embed(img)?;
        // Stated tolerance: 1e-6 absolute (the GEMMs may block rows differently by batch).
        let d = max_diff(&batched[k], &alone);
        assert!(d <= 1e-6, "image {k}: batched embedding differs by {d}");
    }
    assert_ne!(batched[0], batched[1]);
    let c = clip.cosine(&images[0], &images[1])?;
    let want = dataflow_models::clip::cosine(&clip.embed(&images[0])?, &clip.embed(&images[1])?);
    assert!((c - want).abs() <= 1e-6, "{c} vs {want}");
    Ok(())
}

#[test]
fn lpips_batch_equals_one_at_a_time_and_a_small_pair_fails_alone() -> Result<(), ModelError> {
    if !have_runtime("lpips_batch_equals_one_at_a_time_and_a_small_pair_fails_alone") {
        return Ok(());
    }
    let mut lpips = Lpips::load(fixture("lpips"), &opts())?;
    let a = image::open(fixture("lpips").join("a.png")).unwrap().to_rgb8();
    let b = image::open(fixture("lpips").join("b.png")).unwrap().to_rgb8();
    let (s0, s1, s2) = (scene(64, 48, 0), scene(64, 48, 2), scene(80, 40, 1));
    let tiny = scene(16, 16, 0);
    let pairs = [(&a, &b), (&s0, &s1), (&tiny, &tiny), (&s1, &s0), (&s2, &s0)];
    let batched = lpips.distance_batch(&pairs);
    for (k, ((x, y), got)) in pairs.iter().zip(&batched).enumerate() {
        match lpips.distance(x, y) {
            Ok(alone) => {
                let got = *got
                    .as_ref()
                    .unwrap_or_else(|e| panic!("pair {k} failed in the batch: {e}"));
                // Stated tolerance: 1e-6 absolute on a distance of order 0.1.
                assert!((got - alone).abs() <= 1e-6, "pair {k}: {got} batched, {alone} alone");
            }
            Err(alone) => assert_eq!(got.as_ref().err().map(ToString::to_string), Some(alone.to_string())),
        }
    }
    assert!(batched[2].is_err());
    Ok(())
}

/// BART greedy over texts of different lengths in one padded batch gives each text what it
/// gets alone (the fixture's PyTorch-checked cases plus a short, an empty and a long text).
#[test]
fn bart_greedy_batch_equals_one_at_a_time() -> Result<(), ModelError> {
    if !have_runtime("bart_greedy_batch_equals_one_at_a_time") {
        return Ok(());
    }
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("bart").join("expected.json")).unwrap()).unwrap();
    let mut bart = Bart::load(fixture("bart"), &opts())?;
    let mut texts: Vec<String> = exp["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    texts.extend([
        "teh".to_string(),
        "  ".to_string(),
        "a lnog sentense with mnay wrods ".repeat(3),
    ]);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for max_new_tokens in [3, 24] {
        let options = CorrectOptions {
            max_new_tokens,
            ..CorrectOptions::default()
        };
        let batched = bart.correct_batch(&refs, &options);
        assert_eq!(batched.len(), texts.len());
        for (text, got) in refs.iter().zip(batched) {
            let alone = bart.correct(text, &options)?;
            assert_eq!(got?, alone, "{text:?} with {max_new_tokens} new tokens");
        }
    }
    Ok(())
}

/// The texts of the fixture's PyTorch-checked beam-search cases (`generation.json`), each once.
fn bart_reference_texts() -> Result<Vec<String>, ModelError> {
    let path = fixture("bart").join("generation.json");
    let bad = |e: &dyn std::fmt::Display| ModelError::Invalid(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&e))?;
    let reference: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e))?;
    let mut texts: Vec<String> = Vec::new();
    for case in reference["cases"].as_array().into_iter().flatten() {
        let text = case["text"].as_str().ok_or_else(|| bad(&"a case without `text`"))?;
        if !texts.iter().any(|t| t == text) {
            texts.push(text.to_string());
        }
    }
    Ok(texts)
}

/// BART beam search over a batch (issue 20): B texts × their beams as the rows of one decoder
/// call per step gives each text the ids of beam search on it alone, and its score within
/// 1e-5; beams 2 and 4; texts of 4 to 24 tokens; the `correct` stage's settings (the export's
/// `no_repeat_ngram_size` 3, length penalty 1, early stopping) and the heuristic and "never"
/// stopping rules with length penalties 2 and 0.5. Texts stop at different steps (some before
/// their limit), an empty input gives nothing, and an input with an id outside the vocabulary
/// fails alone with the error it gets alone.
#[test]
fn bart_beam_batch_equals_one_at_a_time() -> Result<(), ModelError> {
    if !have_runtime("bart_beam_batch_equals_one_at_a_time") {
        return Ok(());
    }
    let mut bart = Bart::load(fixture("bart"), &opts())?;
    let vocab = bart.export().vocab_size as u32;
    let mut inputs: Vec<Vec<u32>> = Vec::new();
    let texts = bart_reference_texts()?;
    for text in texts.iter().map(String::as_str).chain(["teh", "a dgo"]) {
        inputs.push(bart.encode(text)?);
    }
    let bad = inputs.len();
    inputs.push(vec![0, 87, vocab + 5, 2]);
    inputs.push(Vec::new());
    let lengths: Vec<usize> = inputs.iter().map(Vec::len).collect();
    assert!(
        lengths.iter().min() < lengths.iter().max(),
        "texts of different lengths: {lengths:?}"
    );
    let stage = bart.default_options();
    let variants = [
        (stage.early_stopping, stage.length_penalty, stage.no_repeat_ngram_size),
        (EarlyStopping::Heuristic, 2.0, 2),
        (EarlyStopping::Never, 0.5, 3),
    ];
    let (mut early, mut worst) = (0, 0.0f32);
    for beams in [2, 4] {
        for (early_stopping, length_penalty, no_repeat_ngram_size) in variants {
            let o = CorrectOptions {
                beams,
                early_stopping,
                length_penalty,
                no_repeat_ngram_size,
                ..stage
            };
            let batched = bart.generate_batch(&inputs, &o);
            assert_eq!(batched.len(), inputs.len());
            let mut steps = Vec::new();
            for (i, (input, got)) in inputs.iter().zip(&batched).enumerate() {
                let case = format!("input {i} with {beams} beams, {early_stopping:?}, penalty {length_penalty}");
                match bart.generate(input, &o) {
                    Ok(alone) => {
                        let got = got
                            .as_ref()
                            .unwrap_or_else(|e| panic!("{case} failed in the batch: {e}"));
                        assert_eq!(got.ids, alone.ids, "{case}: the batched ids differ");
                        let (a, b) = (got.score.unwrap_or(f32::NAN), alone.score.unwrap_or(f32::NAN));
                        if input.is_empty() {
                            assert!(got.ids.is_empty() && got.score.is_none(), "{case}");
                        } else {
                            assert!((a - b).abs() <= 1e-5, "{case}: score {a} batched, {b} alone");
                            worst = worst.max((a - b).abs());
                            let limit = bart.token_limit(input.len(), &o);
                            if got.ids.len() + 1 < limit {
                                early += 1;
                            }
                            steps.push(got.ids.len());
                        }
                    }
                    Err(alone) => {
                        assert_eq!(i, bad, "{case} fails alone: {alone}");
                        let got = got.as_ref().err().map(ToString::to_string);
                        assert_eq!(got, Some(alone.to_string()), "{case}: the same error in the batch");
                    }
                }
            }
            assert!(batched[bad].is_err(), "the input with id {} fails", vocab + 5);
            steps.dedup();
            assert!(steps.len() > 1, "texts end at different steps: {steps:?}");
        }
    }
    // Per-text stopping is exercised: hypotheses that end before the limit, not only forced ends.
    assert!(early >= 4, "{early} texts ended before their limit");
    println!("largest score difference, batched vs alone: {worst:e}");
    Ok(())
}

/// `correct_batch` with the export's settings (4 beams, the `correct` stage's default) gives
/// every text what `correct` gives it alone, a blank text back as it is.
#[test]
fn bart_correct_batch_with_beams_equals_one_at_a_time() -> Result<(), ModelError> {
    if !have_runtime("bart_correct_batch_with_beams_equals_one_at_a_time") {
        return Ok(());
    }
    let mut bart = Bart::load(fixture("bart"), &opts())?;
    let mut texts = bart_reference_texts()?;
    assert_eq!(texts.len(), 5);
    texts.extend(["  ".to_string(), "a lnog sentense with mnay wrods ".repeat(3)]);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let options = bart.default_options();
    assert_eq!(options.beams, 4);
    let batched = bart.correct_batch(&refs, &options);
    assert_eq!(batched.len(), texts.len());
    for (text, got) in refs.iter().zip(batched) {
        assert_eq!(got?, bart.correct(text, &options)?, "{text:?}");
    }
    Ok(())
}
