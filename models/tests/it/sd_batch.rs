//! Batched Stable Diffusion (issue 20): images generated together, several frames × their
//! classifier-free-guidance rows in one UNet call per step, equal the images generated one at a
//! time, and a request the model cannot take fails alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dataflow_models::error::ModelError;
use dataflow_models::provider::SessionOptions;
use dataflow_models::schedulers::SchedulerKind;
use dataflow_models::sd::{GenerateOptions, GenerateRequest, PromptMode, SdIpAdapter};
use image::RgbImage;

use crate::{fixture, have_runtime};

/// Largest difference of a channel of the decoded images, in 8-bit levels, between an image
/// generated in a batch and alone. The UNet rows are independent, but ONNX Runtime's kernels
/// may sum in another order at another batch size; 1 level allows one rounding flip.
const MAX_LEVEL_DIFF: u8 = 1;

fn opts() -> SessionOptions {
    SessionOptions::cpu().with_intra_threads(1)
}

fn options(seed: u64, size: [u32; 2], scheduler: SchedulerKind) -> GenerateOptions {
    GenerateOptions {
        steps: 3,
        guidance_scale: 7.5,
        ip_scale: 0.6,
        scheduler,
        seed,
        strength: 0.0,
        size,
        prompt_mode: PromptMode::Concat,
        global_weight: 0.3,
    }
}

fn max_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

#[test]
fn sd_batch_equals_one_at_a_time_and_a_bad_request_fails_alone() -> Result<(), ModelError> {
    if !have_runtime("sd_batch_equals_one_at_a_time_and_a_bad_request_fails_alone") {
        return Ok(());
    }
    let mut sd = SdIpAdapter::load(fixture("sd15_ip"), &opts())?;
    let object = image::open(fixture("sd15_ip").join("object.png")).unwrap().to_rgb8();
    let init = image::open(fixture("sd15_ip").join("init.png")).unwrap().to_rgb8();
    let one = |s: &str| vec![Some(s.to_string())];
    let (car, dogs) = (
        one("a red car on a wet road"),
        one("two dogs running in a park by a lake"),
    );
    let long = one(&"a tall lighthouse on a rocky coast under a stormy sky with waves ".repeat(4));
    let tiles = vec![
        Some("a red car".to_string()),
        None,
        Some("a tree with yellow leaves beside a bench".to_string()),
        Some("a lake".to_string()),
    ];
    let ddim = |seed| options(seed, [64, 64], SchedulerKind::Ddim);
    let euler = |seed| options(seed, [64, 64], SchedulerKind::EulerAncestral);
    let (o1, o2, o3, o4) = (ddim(1), ddim(2), ddim(3), euler(4));
    let (o5, o6) = (euler(5), options(6, [64, 48], SchedulerKind::Ddim));
    let bad = options(7, [60, 64], SchedulerKind::Ddim);
    let regional = GenerateOptions {
        prompt_mode: PromptMode::Regional,
        ..ddim(8)
    };
    let img2img = GenerateOptions {
        strength: 0.5,
        ..ddim(9)
    };
    let req = |captions, grid, image_prompt, options| GenerateRequest {
        captions,
        grid,
        image_prompt,
        init: Some(&init),
        options,
    };
    let requests = [
        req(&car, (1, 1), Some(&object), &o1),         // 0: DDIM group
        req(&dogs, (1, 1), Some(&object), &o2),        // 1: DDIM group, another prompt and seed
        req(&long, (1, 1), Some(&object), &o3),        // 2: DDIM group, 2 text chunks
        req(&car, (1, 1), Some(&object), &bad),        // 3: off the 8 px grid: fails alone
        req(&dogs, (1, 1), Some(&object), &o4),        // 4: Euler group (ancestral noise per seed)
        req(&car, (1, 1), Some(&object), &o5),         // 5: Euler group
        req(&car, (1, 1), Some(&object), &o6),         // 6: another size: alone
        req(&tiles, (2, 2), Some(&object), &regional), // 7: DDIM group, regional rows
        req(&dogs, (1, 1), None, &o1),                 // 8: no image prompt, λ = 0: alone
        req(&car, (1, 1), Some(&object), &img2img),    // 9: img2img, a later start: alone
    ];
    let batched = sd.generate_batch(&requests);
    assert_eq!(batched.len(), requests.len());
    // Images sharing each image's UNet calls (0: fails): 0, 1, 2 and 7 (DDIM at 64×64), 4 and 5.
    let groups = [4, 4, 4, 0, 2, 2, 1, 4, 1, 1];
    for (k, (r, got)) in requests.iter().zip(&batched).enumerate() {
        let alone = sd.generate_captions(r.captions, r.grid, r.image_prompt, r.init, r.options);
        match (alone, got) {
            (Ok(alone), Ok(got)) => {
                let d = max_diff(&alone.image, &got.image);
                println!("image {k}: max diff {d} levels, batched with {}", got.batched_with);
                assert!(
                    d <= MAX_LEVEL_DIFF,
                    "image {k}: the batched image differs by {d} levels"
                );
                assert_eq!(got.batched_with, groups[k], "image {k}: images sharing its UNet calls");
                assert_eq!(alone.batched_with, 1);
                assert_eq!(
                    (got.unet_calls, got.unet_evals, got.steps_run),
                    (alone.unet_calls, alone.unet_evals, alone.steps_run),
                    "image {k}: its UNet calls and rows"
                );
            }
            (Err(alone), Err(got)) => {
                assert_eq!(groups[k], 0, "image {k} failed: {got}");
                assert_eq!(got.to_string(), alone.to_string(), "image {k}: the same error");
                assert!(got.to_string().contains("60×64"), "{got}");
            }
            (alone, got) => panic!("image {k}: alone {:?}, batched {:?}", alone.err(), got.as_ref().err()),
        }
    }
    // Different prompts and seeds give different images (the batch does not mix rows up).
    let img = |k: usize| &batched[k].as_ref().unwrap().image;
    assert!(max_diff(img(0), img(1)) > 10 && max_diff(img(4), img(5)) > 10);
    Ok(())
}

/// Largest difference of a guided noise prediction between a batched UNet step and one alone.
const MAX_EPS_DIFF: f32 = 1e-5;

#[test]
fn sd_batched_guided_noise_equals_each_image_alone() -> Result<(), ModelError> {
    if !have_runtime("sd_batched_guided_noise_equals_each_image_alone") {
        return Ok(());
    }
    let mut sd = SdIpAdapter::load(fixture("sd15_ip"), &opts())?;
    let object = image::open(fixture("sd15_ip").join("object.png")).unwrap().to_rgb8();
    let (g, lam) = (7.5, 0.6);
    let conds = [
        sd.condition("a red car on a wet road", Some(&object), lam, g)?,
        sd.condition("two dogs running in a park by a lake", Some(&object), lam, g)?,
        // No guidance: one row, no empty prompt.
        sd.condition("a boat", Some(&object), lam, 1.0)?,
    ];
    let hw = (8, 8);
    let samples: Vec<Vec<f32>> = (0..conds.len())
        .map(|k| {
            (0..4 * 64)
                .map(|i| ((i * 37 + k * 11) % 97) as f32 / 48.5 - 1.0)
                .collect()
        })
        .collect();
    let frames: Vec<_> = conds.iter().zip(&samples).map(|(c, s)| (c, s.as_slice())).collect();
    let batched = sd.guided_noise_batch(&frames, 500.0, hw)?;
    for (k, ((c, s), got)) in frames.iter().zip(&batched).enumerate() {
        let alone = sd.guided_noise(c, s, 500.0, hw)?;
        let d = alone
            .iter()
            .zip(&got.eps)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("image {k}: max |Δε| = {d:e}");
        assert_eq!(alone.len(), got.eps.len());
        assert!(d <= MAX_EPS_DIFF, "image {k}: the batched noise differs by {d}");
        assert_eq!((got.unet_calls, got.unet_evals), (1, if k < 2 { 2 } else { 1 }));
    }
    assert!(batched[0].eps != batched[1].eps, "two prompts, two predictions");
    // λ is one scalar per UNet call: images with different λ are refused together.
    let other = sd.condition("a boat", Some(&object), 0.2, g)?;
    let mixed = [(&conds[0], samples[0].as_slice()), (&other, samples[1].as_slice())];
    let err = sd.guided_noise_batch(&mixed, 500.0, hw).unwrap_err().to_string();
    assert!(err.contains("ip_scale"), "{err}");
    Ok(())
}
