//! Batched Stable Diffusion (issue 20): images generated together, several frames × their
//! classifier-free-guidance rows in one UNet call per step, equal the images generated one at a
//! time, and a request the model cannot take fails alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dataflow_models::error::ModelError;
use dataflow_models::provider::{ActiveProvider, SessionOptions};
use dataflow_models::schedulers::{Scheduler, SchedulerKind};
use dataflow_models::sd::{GenerateOptions, GenerateRequest, PromptMode, SdIpAdapter, UnetBytes};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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

/// The captions, grid and options of one image.
type Captioned = (Vec<Option<String>>, (usize, usize), GenerateOptions);

/// The requests of the binding tests: two DDIM images of one text length, a long prompt (two
/// chunks: a second UNet call), regional tiles (rows of two lengths), an Euler image.
fn binding_requests() -> Vec<Captioned> {
    let one = |s: &str| vec![Some(s.to_string())];
    let ddim = |seed| options(seed, [64, 64], SchedulerKind::Ddim);
    let tiles = vec![
        Some("a red car".to_string()),
        None,
        Some("a tree with yellow leaves beside a bench".to_string()),
        Some("a lake".to_string()),
    ];
    vec![
        (one("a red car on a wet road"), (1, 1), ddim(1)),
        (one("two dogs running in a park by a lake"), (1, 1), ddim(2)),
        (
            one(&"a tall lighthouse on a rocky coast under a stormy sky with waves ".repeat(4)),
            (1, 1),
            ddim(3),
        ),
        (
            tiles,
            (2, 2),
            GenerateOptions {
                prompt_mode: PromptMode::Regional,
                ..ddim(4)
            },
        ),
        (
            one("a blue boat"),
            (1, 1),
            options(5, [64, 64], SchedulerKind::EulerAncestral),
        ),
    ]
}

#[test]
fn sd_bound_conditioning_gives_the_images_and_latents_of_the_unbound_path() -> Result<(), ModelError> {
    if !have_runtime("sd_bound_conditioning_gives_the_images_and_latents_of_the_unbound_path") {
        return Ok(());
    }
    let mut sd = SdIpAdapter::load(fixture("sd15_ip"), &opts())?;
    assert!(sd.binds_conditioning(), "binding is on by default");
    let object = image::open(fixture("sd15_ip").join("object.png")).unwrap().to_rgb8();
    let reqs = binding_requests();
    let requests: Vec<GenerateRequest<'_>> = reqs
        .iter()
        .map(|(captions, grid, options)| GenerateRequest {
            captions,
            grid: *grid,
            image_prompt: Some(&object),
            init: None,
            options,
        })
        .collect();
    let mut runs = Vec::new();
    for bind in [false, true] {
        sd.set_bind_conditioning(bind);
        let batched: Vec<_> = sd.generate_batch(&requests).into_iter().collect::<Result<_, _>>()?;
        let alone: Vec<_> = requests
            .iter()
            .map(|r| sd.generate_captions(r.captions, r.grid, r.image_prompt, r.init, r.options))
            .collect::<Result<_, _>>()?;
        runs.push((batched, alone));
    }
    let [(host_b, host_a), (bound_b, bound_a)] = <[_; 2]>::try_from(runs).unwrap();
    for k in 0..requests.len() {
        for (way, host, bound) in [("batched", &host_b[k], &bound_b[k]), ("alone", &host_a[k], &bound_a[k])] {
            assert_eq!(
                host.image.as_raw(),
                bound.image.as_raw(),
                "image {k} {way}: bound ≠ unbound"
            );
            assert_eq!(
                (host.unet_calls, host.unet_evals, host.batched_with),
                (bound.unet_calls, bound.unet_evals, bound.batched_with),
                "image {k} {way}"
            );
            // On the CPU nothing crosses a bus either way: the counts agree.
            assert_eq!(host.host_bytes, bound.host_bytes, "image {k} {way}");
            assert!(host.host_bytes > 0, "image {k} {way}");
        }
    }
    assert_eq!(bound_b[0].batched_with, 4, "the DDIM images share their calls");

    // The latents of the denoising loop itself, bit for bit, alone and as a batched step.
    let c = sd.condition("a red car on a wet road", Some(&object), 0.6, 7.5)?;
    let sched = Scheduler::new(SchedulerKind::EulerAncestral, &sd.export().scheduler, 4)?;
    let start: Vec<f32> = (0..4 * 64).map(|i| ((i * 37) % 97) as f32 / 48.5 - 1.0).collect();
    let mut latents = Vec::new();
    for bind in [false, true] {
        sd.set_bind_conditioning(bind);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        latents.push(sd.denoise(&c, &sched, start.clone(), 0, (8, 8), &mut rng)?);
    }
    assert_eq!(latents[0], latents[1], "denoised latents, bound ≠ unbound");
    let d = sd.condition("two dogs", Some(&object), 0.6, 7.5)?;
    let frames = [(&c, start.as_slice()), (&d, start.as_slice())];
    let mut eps = Vec::new();
    for bind in [false, true] {
        sd.set_bind_conditioning(bind);
        let g = sd.guided_noise_batch(&frames, 500.0, (8, 8))?;
        eps.push(g.into_iter().map(|g| g.eps).collect::<Vec<_>>());
    }
    assert_eq!(eps[0], eps[1], "batched noise predictions, bound ≠ unbound");
    Ok(())
}

#[test]
fn sd_counts_the_unet_bytes_of_its_shapes_and_binding_copies_the_conditioning_once() -> Result<(), ModelError> {
    if !have_runtime("sd_counts_the_unet_bytes_of_its_shapes_and_binding_copies_the_conditioning_once") {
        return Ok(());
    }
    let mut sd = SdIpAdapter::load(fixture("sd15_ip"), &opts())?;
    let object = image::open(fixture("sd15_ip").join("object.png")).unwrap().to_rgb8();
    let e = sd.export().clone();
    let (ch, d, n, l) = (e.latent_channels, e.cross_attention_dim, e.num_ip_tokens, e.max_length);
    // 64×64 px is an 8×8 latent; 3 DDIM steps with guidance: per image an empty-prompt row and
    // a prompt row per call. All tensors are f32.
    let (hw, steps) = (8 * 8, 3u64);
    let call = |rows: usize, len: usize| UnetBytes {
        step: (4 * rows * ch * hw + 4 + 4 * rows * ch * hw) as u64,
        conditioning: (4 * rows * len * d + 4 * rows * n * d + 4) as u64,
    };
    let short = vec![Some("a red car on a wet road".to_string())];
    let long = vec![Some(
        "a tall lighthouse on a rocky coast under a stormy sky with waves ".repeat(4),
    )];
    let o = options(1, [64, 64], SchedulerKind::Ddim);
    let req = |captions| GenerateRequest {
        captions,
        grid: (1, 1),
        image_prompt: Some(&object),
        init: None,
        options: &o,
    };
    // A batch of two images of different text lengths: one call each per step, two rows each.
    let got: Vec<_> = sd
        .generate_batch(&[req(&short), req(&long)])
        .into_iter()
        .collect::<Result<_, _>>()?;
    for (g, len) in got.iter().zip([l, 2 * l]) {
        assert_eq!((g.batched_with, g.steps_run, g.unet_calls), (2, 3, 3));
        let want = call(2, len);
        assert_eq!(g.unet_bytes, want, "text length {len}");
        assert_eq!(UnetBytes::of_call(&e, 2, len, (8, 8)), want);
        // On the CPU (bound by default) the conditioning is written once, the rest every step.
        assert_eq!(g.host_bytes, steps * want.step + want.conditioning, "text length {len}");
        assert_eq!(g.host_bytes_per_step(), g.host_bytes / steps);
        // Under CUDA without binding every step copies the conditioning again.
        let unbound = want.counted(3, ActiveProvider::Cuda, false);
        let bound = want.counted(3, ActiveProvider::Cuda, true);
        assert_eq!(unbound, steps * (want.step + want.conditioning));
        assert_eq!(bound, g.host_bytes);
        assert!(bound < unbound, "{bound} vs {unbound}");
        assert_eq!(want.counted(3, ActiveProvider::Cpu, false), bound);
        assert_eq!(want.counted(0, ActiveProvider::Cuda, false), 0);
    }
    sd.set_bind_conditioning(false);
    let alone = sd.generate_captions(&short, (1, 1), Some(&object), None, &o)?;
    assert_eq!(
        alone.host_bytes, got[0].host_bytes,
        "the CPU count does not depend on binding"
    );

    // A prepared conditioning refuses latents of another size.
    let c = sd.condition("a boat", None, 0.6, 7.5)?;
    let prepared = sd.prepare_conditioning(&[&c], (8, 8))?;
    assert_eq!((prepared.len(), prepared.calls()), (1, 1));
    assert!(!prepared.is_bound());
    let err = sd
        .guided_noise_prepared(&prepared, &[&[0.0; 10]], 500.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prepared"), "{err}");
    Ok(())
}
