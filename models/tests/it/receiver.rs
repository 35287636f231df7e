//! The paper's receiver and metrics against the tiny-random fixtures of `models/export/`
//! `{lpips,sd_ip_adapter,clip}.py`: values computed by the export scripts in PyTorch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dataflow_models::error::ModelError;
use dataflow_models::lpips::Lpips;
use dataflow_models::provider::SessionOptions;
use serde_json::Value;

use crate::{fixture, have_runtime};

fn expected(dir: &str) -> Value {
    let text = std::fs::read_to_string(fixture(dir).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn opts() -> SessionOptions {
    SessionOptions {
        intra_threads: Some(1),
        ..SessionOptions::default()
    }
}

fn png(dir: &str, name: &str) -> image::RgbImage {
    image::open(fixture(dir).join(name)).unwrap().to_rgb8()
}

#[test]
fn lpips_is_zero_for_identical_images_and_matches_pytorch_on_the_fixture_pair() -> Result<(), ModelError> {
    if !have_runtime("lpips") {
        return Ok(());
    }
    let want = expected("lpips");
    let mut m = Lpips::load(fixture("lpips"), &opts())?;
    let (a, b) = (png("lpips", "a.png"), png("lpips", "b.png"));
    assert_eq!(m.distance(&a, &a)?, 0.0);
    let d = m.distance(&a, &b)?;
    let reference = want["a_b"].as_f64().unwrap();
    assert!((d - reference).abs() <= 1e-5 * reference.max(1.0), "{d} vs {reference}");
    assert!(d > 0.0);
    // A smaller second image is compared at the first one's size.
    let small = image::imageops::resize(&b, 48, 40, image::imageops::FilterType::Triangle);
    assert!(m.distance(&a, &small)? > 0.0);
    Ok(())
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Largest |a − b| relative to max(1, max |b|).
fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= tol * scale, "{what}: max abs difference {err} (scale {scale})");
}

#[test]
fn schedulers_give_the_timesteps_and_sigmas_of_diffusers() {
    use dataflow_models::schedulers::{NoiseSchedule, Scheduler, SchedulerKind};
    let want = expected("sd15_ip");
    for (steps, w) in want["schedulers"].as_object().unwrap() {
        let n: usize = steps.parse().unwrap();
        let d = Scheduler::new(SchedulerKind::Ddim, &NoiseSchedule::default(), n).unwrap();
        let ts: Vec<i64> = w["ddim_timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect();
        assert_eq!(d.timesteps(), ts.as_slice(), "DDIM, {n} steps");
        let e = Scheduler::new(SchedulerKind::EulerAncestral, &NoiseSchedule::default(), n).unwrap();
        let et: Vec<i64> = floats(&w["euler_timesteps"]).iter().map(|&t| t as i64).collect();
        assert_eq!(e.timesteps(), et.as_slice(), "Euler, {n} steps");
        let sigmas = floats(&w["euler_sigmas"]);
        assert_eq!(e.sigmas().len(), sigmas.len());
        for (a, b) in e.sigmas().iter().zip(&sigmas) {
            assert!((a - b).abs() <= 1e-5 * b.max(1.0), "Euler σ, {n} steps: {a} vs {b}");
        }
        let init = w["euler_init_noise_sigma"].as_f64().unwrap() as f32;
        assert!((e.init_noise_sigma() - init).abs() <= 1e-5 * init, "{n} steps");
    }
}

mod sd {
    use dataflow_models::error::ModelError;
    use dataflow_models::schedulers::{NoiseSchedule, Scheduler, SchedulerKind};
    use dataflow_models::sd::{GenerateOptions, PromptMode, SdIpAdapter};
    use rand::SeedableRng;

    use super::{assert_close, expected, floats, opts, png};
    use crate::{fixture, have_runtime};

    /// Tolerance of ONNX Runtime (Rust) against PyTorch, relative to max(1, |reference|).
    const TOL: f32 = 1e-4;
    const HW: (usize, usize) = (8, 8);

    fn load() -> SdIpAdapter {
        SdIpAdapter::load(fixture("sd15_ip"), &opts()).unwrap()
    }

    #[test]
    fn tokens_image_prompt_and_one_guided_ddim_step_equal_pytorch() -> Result<(), ModelError> {
        if !have_runtime("sd one step") {
            return Ok(());
        }
        let want = expected("sd15_ip");
        let mut sd = load();
        let ids = |k: &str| -> Vec<i64> {
            want[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        };
        let prompt = want["prompt"].as_str().unwrap();
        assert_eq!(sd.token_ids(prompt)?, ids("prompt_ids"));
        assert_eq!(
            sd.token_ids("")?,
            ids("empty_ids"),
            "the empty prompt of classifier-free guidance"
        );
        let object = png("sd15_ip", "object.png");
        assert_close(
            &sd.image_embeds(&object)?,
            &floats(&want["image_embeds"]),
            TOL,
            "image embeds",
        );
        let (g, lam) = (
            want["guidance_scale"].as_f64().unwrap() as f32,
            want["ip_scale"].as_f64().unwrap() as f32,
        );
        let c = sd.condition(prompt, Some(&object), lam, g)?;
        assert_close(&c.ip[c.ip.len() / 2..], &floats(&want["ip_tokens"]), TOL, "ip tokens");
        let lat0 = floats(&want["latents0"]);
        let sched = Scheduler::new(SchedulerKind::Ddim, &NoiseSchedule::default(), 4)?;
        let eps = sd.guided_noise(&c, &lat0, sched.timesteps()[0] as f32, HW)?;
        assert_close(&eps, &floats(&want["ddim_eps"]), TOL, "guided noise");
        let step = sched.step(0, &eps, &lat0, &[]);
        assert_close(&step, &floats(&want["ddim_step1"]), TOL, "DDIM step");
        // The same step from the reference noise prediction: the scheduler alone, tighter.
        let step_ref = sched.step(0, &floats(&want["ddim_eps"]), &lat0, &[]);
        assert_close(&step_ref, &floats(&want["ddim_step1"]), 1e-5, "DDIM update");
        Ok(())
    }

    #[test]
    fn euler_ancestral_step_with_the_recorded_noise_equals_diffusers() -> Result<(), ModelError> {
        if !have_runtime("sd euler") {
            return Ok(());
        }
        let want = expected("sd15_ip");
        let mut sd = load();
        let object = png("sd15_ip", "object.png");
        let (g, lam) = (
            want["guidance_scale"].as_f64().unwrap() as f32,
            want["ip_scale"].as_f64().unwrap() as f32,
        );
        let c = sd.condition(want["prompt"].as_str().unwrap(), Some(&object), lam, g)?;
        let sched = Scheduler::new(SchedulerKind::EulerAncestral, &NoiseSchedule::default(), 4)?;
        let s0 = sched.init_noise_sigma();
        let x: Vec<f32> = floats(&want["latents0"]).iter().map(|v| v * s0).collect();
        let eps = sd.guided_noise(&c, &sched.scale_model_input(0, &x), sched.timesteps()[0] as f32, HW)?;
        assert_close(
            &eps,
            &floats(&want["euler_eps"]),
            TOL,
            "guided noise (Euler input scaling)",
        );
        let out = sched.step(0, &floats(&want["euler_eps"]), &x, &floats(&want["euler_noise"]));
        assert_close(&out, &floats(&want["euler_step1"]), 1e-5, "Euler ancestral step");
        Ok(())
    }

    #[test]
    fn lambda_zero_is_the_text_only_unet_whatever_the_image_prompt() -> Result<(), ModelError> {
        if !have_runtime("sd lambda 0") {
            return Ok(());
        }
        let want = expected("sd15_ip");
        let mut sd = load();
        let prompt = want["prompt"].as_str().unwrap();
        let g = want["guidance_scale"].as_f64().unwrap() as f32;
        let lat0 = floats(&want["latents0"]);
        let t = Scheduler::new(SchedulerKind::Ddim, &NoiseSchedule::default(), 4)?.timesteps()[0] as f32;
        let object = png("sd15_ip", "object.png");
        let with_object = sd.condition(prompt, Some(&object), 0.0, g)?;
        let a = sd.guided_noise(&with_object, &lat0, t, HW)?;
        assert_close(
            &a,
            &floats(&want["text_only_eps"]),
            TOL,
            "λ = 0 against diffusers' plain UNet",
        );
        let other = image::RgbImage::from_pixel(32, 32, image::Rgb([250, 10, 10]));
        let cb = sd.condition(prompt, Some(&other), 0.0, g)?;
        let b = sd.guided_noise(&cb, &lat0, t, HW)?;
        assert_eq!(a, b, "λ = 0: the image prompt has no effect");
        let cn = sd.condition(prompt, None, 0.6, g)?;
        let none = sd.guided_noise(&cn, &lat0, t, HW)?;
        assert_eq!(a, none, "no image prompt = text only");
        let cc = sd.condition(prompt, Some(&other), 0.6, g)?;
        let c = sd.guided_noise(&cc, &lat0, t, HW)?;
        assert_ne!(a, c, "λ = 0.6: the image prompt moves the prediction");
        Ok(())
    }

    #[test]
    fn three_ddim_steps_decode_to_the_reference_image_and_the_vae_encodes_the_init() -> Result<(), ModelError> {
        if !have_runtime("sd ddim3") {
            return Ok(());
        }
        let want = expected("sd15_ip");
        let mut sd = load();
        let object = png("sd15_ip", "object.png");
        let (g, lam) = (
            want["guidance_scale"].as_f64().unwrap() as f32,
            want["ip_scale"].as_f64().unwrap() as f32,
        );
        let c = sd.condition(want["prompt"].as_str().unwrap(), Some(&object), lam, g)?;
        let sched = Scheduler::new(SchedulerKind::Ddim, &NoiseSchedule::default(), 3)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let lat = sd.denoise(&c, &sched, floats(&want["latents0"]), 0, HW, &mut rng)?;
        assert_close(
            &lat,
            &floats(&want["ddim3_latents"]),
            1e-3,
            "latents after 3 DDIM steps",
        );
        let img = sd.decode(&lat, HW)?;
        let reference = png("sd15_ip", "ddim3.png");
        assert_eq!(img.dimensions(), reference.dimensions());
        let worst = img
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 2, "decoded pixels differ by up to {worst}");
        let init = sd.encode_latents(&png("sd15_ip", "init.png"))?;
        assert_close(&init, &floats(&want["init_latents"]), TOL, "VAE latents of init.png");
        Ok(())
    }

    #[test]
    fn concat_encodes_each_75_token_chunk_alone_and_equals_pytorch() -> Result<(), ModelError> {
        if !have_runtime("sd concat") {
            return Ok(());
        }
        let want = expected("sd15_ip");
        let mut sd = load();
        let long = want["long_prompt"].as_str().unwrap();
        let chunks: Vec<Vec<i64>> = serde_json::from_value(want["concat_chunk_ids"].clone()).unwrap();
        assert!(chunks.len() >= 2, "the reference prompt is past 77 tokens");
        assert_eq!(sd.chunk_ids(long)?, chunks);
        assert_eq!(
            sd.chunk_ids("")?,
            vec![sd.token_ids("")?],
            "the empty prompt is one chunk"
        );
        let (g, lam) = (
            want["guidance_scale"].as_f64().unwrap() as f32,
            want["ip_scale"].as_f64().unwrap() as f32,
        );
        let o = GenerateOptions {
            guidance_scale: g,
            ip_scale: lam,
            prompt_mode: PromptMode::Concat,
            ..GenerateOptions::default()
        };
        let object = png("sd15_ip", "object.png");
        let c = sd.condition_captions(&[Some(long.to_string())], (1, 1), Some(&object), &o)?;
        assert_eq!(c.texts.len(), 1);
        assert_eq!(
            c.texts[0].len(),
            chunks.len() * 77 * 32,
            "the chunks' states, concatenated"
        );
        let lat0 = floats(&want["latents0"]);
        let t = Scheduler::new(SchedulerKind::Ddim, &NoiseSchedule::default(), 4)?.timesteps()[0] as f32;
        let eps = sd.guided_noise(&c, &lat0, t, HW)?;
        assert_close(
            &eps,
            &floats(&want["concat_eps"]),
            TOL,
            "guided noise, concatenated chunks",
        );
        // Truncation keeps 75 of the prompt's tokens and says how many it dropped.
        let cut = sd.condition(long, Some(&object), lam, g)?;
        assert_eq!(cut.tokens_dropped, sd.prompt_tokens(long)?.len() - 75);
        assert_eq!(cut.texts[0].len(), 77 * 32);
        Ok(())
    }

    /// Four tile captions past 77 CLIP tokens together (as LLaVA's ~42-token captions are).
    fn tile_captions(fourth: &str) -> Vec<Option<String>> {
        [
            "the picture shows a green field with trees and a small house under a clear blue sky",
            "two boats float on the calm water of the harbour at sunset near the launch pad",
            "a woman wearing a hat is smiling at the camera in front of a flag and a wall",
            fourth,
        ]
        .iter()
        .map(|c| Some(c.to_string()))
        .collect()
    }

    /// Mean absolute pixel difference inside tile 3 (bottom right of a 2×2 grid) and outside.
    fn diff_inside_outside(a: &image::RgbImage, b: &image::RgbImage) -> (f64, f64) {
        let (w, h) = a.dimensions();
        let (mut inside, mut outside, mut n_in, mut n_out) = (0.0, 0.0, 0.0, 0.0);
        for (x, y, p) in a.enumerate_pixels() {
            let q = b.get_pixel(x, y);
            let d: f64 = (0..3).map(|c| f64::from(p[c].abs_diff(q[c]))).sum();
            if x >= w / 2 && y >= h / 2 {
                inside += d;
                n_in += 1.0;
            } else {
                outside += d;
                n_out += 1.0;
            }
        }
        (inside / n_in, outside / n_out)
    }

    #[test]
    fn only_the_fourth_caption_changed_moves_concat_and_regional_but_not_truncate() -> Result<(), ModelError> {
        if !have_runtime("sd prompt modes") {
            return Ok(());
        }
        let mut sd = load();
        let (a, b) = (
            tile_captions("a cat with orange fur is lying on a blanket near the window"),
            tile_captions("a rocket stands on the launch pad and the dog barked at the postman"),
        );
        let first_three = a[..3].iter().flatten().cloned().collect::<Vec<_>>().join(" ");
        assert!(
            sd.prompt_tokens(&first_three)?.len() > 75,
            "tiles 1–3 alone fill the 77 tokens"
        );
        let steps = 3;
        let run = |sd: &mut SdIpAdapter, captions: &[Option<String>], mode| {
            let o = GenerateOptions {
                steps,
                size: [64, 64],
                seed: 5,
                ip_scale: 0.0,
                prompt_mode: mode,
                ..GenerateOptions::default()
            };
            sd.generate_captions(captions, (2, 2), None, None, &o)
        };
        let (ta, tb) = (
            run(&mut sd, &a, PromptMode::Truncate)?,
            run(&mut sd, &b, PromptMode::Truncate)?,
        );
        assert!(ta.tokens_dropped > 0);
        assert_eq!(ta.image, tb.image, "truncate: the 4th caption never reaches SD");
        assert_eq!((ta.unet_calls, ta.unet_evals), (steps, 2 * steps));
        let (ca, cb) = (
            run(&mut sd, &a, PromptMode::Concat)?,
            run(&mut sd, &b, PromptMode::Concat)?,
        );
        assert_eq!(ca.tokens_dropped, 0);
        assert_ne!(ca.image, cb.image, "concat: the 4th caption shapes the image");
        assert_eq!(
            (ca.unet_calls, ca.unet_evals),
            (steps, 2 * steps),
            "one call of 2 rows a step"
        );
        let (ra, rb) = (
            run(&mut sd, &a, PromptMode::Regional)?,
            run(&mut sd, &b, PromptMode::Regional)?,
        );
        assert_ne!(ra.image, rb.image, "regional: the 4th caption shapes the image");
        // Uncond + 4 tiles (one chunk each) in one call, the global prompt (4 chunks) in another.
        assert_eq!((ra.unet_calls, ra.unet_evals), (2 * steps, 6 * steps));
        let (inside, outside) = diff_inside_outside(&ra.image, &rb.image);
        println!("regional, 4th caption changed: mean |Δ| {inside:.2} inside tile 4, {outside:.2} outside");
        assert!(
            inside > 1.5 * outside,
            "regional: tile 4's caption changes its own region most ({inside:.2} inside vs {outside:.2} outside)"
        );
        // A lost caption: its tile follows the global prompt only.
        let mut lost = a.clone();
        lost[1] = None;
        assert_eq!(run(&mut sd, &lost, PromptMode::Regional)?.unet_evals, 5 * steps);
        Ok(())
    }

    /// Finding 2.1: the fixture's UNet has SD 1.5's three upsamplers; sizes that are multiples
    /// of 8 but not of 64 (latent 65 → 33 → 17 → 9 and back) follow the skip connections.
    #[test]
    fn sizes_off_the_64_px_grid_match_pytorch_and_520_by_520_generates() -> Result<(), ModelError> {
        if !have_runtime("sd odd sizes") {
            return Ok(());
        }
        let want = expected("sd15_ip");
        let mut sd = load();
        assert_eq!(sd.export().size_multiple(), 8);
        let object = png("sd15_ip", "object.png");
        let c = sd.condition(want["prompt"].as_str().unwrap(), Some(&object), 0.6, 7.5)?;
        let t = Scheduler::new(SchedulerKind::Ddim, &NoiseSchedule::default(), 4)?.timesteps()[0] as f32;
        let [w, h] = [
            want["odd_size"][0].as_u64().unwrap(),
            want["odd_size"][1].as_u64().unwrap(),
        ];
        let hw = (h as usize / 8, w as usize / 8);
        assert!(!hw.0.is_multiple_of(8) && !hw.1.is_multiple_of(8), "{hw:?}");
        let eps = sd.guided_noise(&c, &floats(&want["odd_size_latents"]), t, hw)?;
        assert_close(&eps, &floats(&want["odd_size_eps"]), TOL, "guided noise at 88×72");
        let o = GenerateOptions {
            steps: 1,
            size: [520, 520],
            ..GenerateOptions::default()
        };
        let g = sd.generate("a red motorbike", Some(&object), None, &o)?;
        assert_eq!(g.image.dimensions(), (520, 520));
        let e = sd.generate("x", None, None, &GenerateOptions { size: [520, 516], ..o });
        let msg = e.unwrap_err().to_string();
        assert!(msg.contains("512 or 520"), "{msg}");
        Ok(())
    }

    /// Finding 2.5: the image prompt's pre-processing against transformers' `CLIPImageProcessor`
    /// on a 52×41 image (long side 40, truncated from 40.59 where rounding gives 41; bicubic with antialias).
    #[test]
    fn the_image_prompt_is_preprocessed_as_clip_image_processor_does() {
        let want = expected("sd15_ip");
        let e = dataflow_models::sd::read_export(&fixture("sd15_ip")).unwrap();
        let img = png("sd15_ip", "clip_input.png");
        assert_eq!(img.dimensions(), (52, 41));
        let px = dataflow_models::sd::clip_pixels(&img, e.image_size, e.image_mean, e.image_std);
        let reference = floats(&want["clip_pixel_values"]);
        assert_eq!(px.len(), reference.len());
        // One 8-bit level of the resampled image is 1/255/std ≈ 0.015 here.
        let level = 1.0 / 255.0 / e.image_std.iter().fold(1f32, |m, &s| m.min(s));
        let err = px.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let mean = px.iter().zip(&reference).map(|(a, b)| (a - b).abs()).sum::<f32>() / px.len() as f32;
        println!(
            "clip pixels against transformers: max {:.2} levels, mean {:.3} levels",
            err / level,
            mean / level
        );
        assert!(err <= 2.5 * level, "max difference {err} ({} levels)", err / level);
        assert!(mean <= 0.5 * level, "mean difference {mean} ({} levels)", mean / level);
    }

    #[test]
    fn generation_is_seeded_and_img2img_runs_the_last_steps() -> Result<(), ModelError> {
        if !have_runtime("sd generate") {
            return Ok(());
        }
        let mut sd = load();
        let object = png("sd15_ip", "object.png");
        let o = GenerateOptions {
            steps: 4,
            size: [64, 48],
            seed: 3,
            ..GenerateOptions::default()
        };
        let a = sd.generate("a red motorbike", Some(&object), None, &o)?;
        assert_eq!(a.image.dimensions(), (64, 48));
        assert_eq!(a.steps_run, 4);
        assert_eq!(a.image, sd.generate("a red motorbike", Some(&object), None, &o)?.image);
        let other = GenerateOptions { seed: 4, ..o };
        assert_ne!(
            a.image,
            sd.generate("a red motorbike", Some(&object), None, &other)?.image
        );
        let euler = GenerateOptions {
            scheduler: SchedulerKind::EulerAncestral,
            ..o
        };
        assert_eq!(
            sd.generate("a cat", None, None, &euler)?.image,
            sd.generate("a cat", None, None, &euler)?.image
        );
        let init = png("sd15_ip", "init.png");
        let i2i = GenerateOptions { strength: 0.5, ..o };
        let b = sd.generate("a red motorbike", Some(&object), Some(&init), &i2i)?;
        assert_eq!(b.steps_run, 2);
        assert!(sd
            .generate("x", None, None, &GenerateOptions { size: [60, 64], ..o })
            .is_err());
        Ok(())
    }
}

#[test]
fn clip_embeddings_and_cosine_match_pytorch() -> Result<(), ModelError> {
    if !have_runtime("clip") {
        return Ok(());
    }
    let want = expected("clip");
    let mut m = dataflow_models::clip::ClipImage::load(fixture("clip"), &opts())?;
    let (x, y) = (png("clip", "x.png"), png("clip", "y.png"));
    assert_close(&m.embed(&x)?, &floats(&want["x"]), 1e-4, "CLIP embedding");
    let c = m.cosine(&x, &y)?;
    assert!((c - want["cosine"].as_f64().unwrap()).abs() < 1e-4, "{c}");
    assert!((m.cosine(&x, &x)? - 1.0).abs() < 1e-6);
    // A larger image is resized and centre-cropped first.
    let big = image::imageops::resize(&x, 64, 48, image::imageops::FilterType::Triangle);
    assert!(m.cosine(&x, &big)?.is_finite());
    Ok(())
}

#[test]
fn sd_fp16_export_keeps_f32_tensors_and_follows_the_fp32_export() -> Result<(), ModelError> {
    use dataflow_models::schedulers::{NoiseSchedule, Scheduler, SchedulerKind};
    use dataflow_models::sd::SdIpAdapter;
    if !have_runtime("sd fp16") {
        return Ok(());
    }
    let want = expected("sd15_ip");
    let mut f32m = SdIpAdapter::load(fixture("sd15_ip"), &opts())?;
    // The fp16 fixture is exported with `--external-data`: every graph's weights sit in one
    // `<name>.onnx.data` beside it (finding 2.2), which ONNX Runtime reads relative to the graph.
    for graph in [
        "text_encoder",
        "image_encoder",
        "image_proj",
        "unet",
        "vae_encoder",
        "vae_decoder",
    ] {
        let data = fixture("sd15_ip-fp16").join(format!("{graph}.onnx.data"));
        assert!(
            data.metadata().map(|m| m.len() > 1000).unwrap_or(false),
            "{}",
            data.display()
        );
    }
    let mut f16m = SdIpAdapter::load(fixture("sd15_ip-fp16"), &opts())?;
    let object = png("sd15_ip", "object.png");
    let prompt = want["prompt"].as_str().unwrap();
    let lat0 = floats(&want["latents0"]);
    let t = Scheduler::new(SchedulerKind::Ddim, &NoiseSchedule::default(), 4)?.timesteps()[0] as f32;
    // The same conditioning into both UNets (the two fixtures' tokenizers were trained in
    // separate runs and may split words differently), with guidance.
    for lambda in [0.0, 0.6] {
        let c = f32m.condition(prompt, Some(&object), lambda, 7.5)?;
        let (ea, eb) = (
            f32m.guided_noise(&c, &lat0, t, (8, 8))?,
            f16m.guided_noise(&c, &lat0, t, (8, 8))?,
        );
        assert_close(&eb, &ea, 2e-2, &format!("fp16 against fp32 guided noise, λ = {lambda}"));
    }
    // A prompt of several 77-token chunks: the fp16 UNet's text axis is dynamic too.
    let o = dataflow_models::sd::GenerateOptions::default();
    let long = want["long_prompt"].as_str().unwrap().to_string();
    let c = f32m.condition_captions(&[Some(long)], (1, 1), None, &o)?;
    assert!(c.texts[0].len() >= 2 * 77 * 32, "several chunks");
    let ea = f32m.guided_noise(&c, &lat0, t, (8, 8))?;
    let eb = f16m.guided_noise(&c, &lat0, t, (8, 8))?;
    assert_close(&eb, &ea, 2e-2, "fp16 against fp32, concatenated chunks");
    // And at a size off the 64 px grid (latent 9×11).
    let odd = floats(&want["odd_size_latents"]);
    let c = f32m.condition(prompt, Some(&object), 0.6, 7.5)?;
    let (ea, eb) = (
        f32m.guided_noise(&c, &odd, t, (9, 11))?,
        f16m.guided_noise(&c, &odd, t, (9, 11))?,
    );
    assert_close(&eb, &ea, 2e-2, "fp16 against fp32 at 88×72");
    Ok(())
}
