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
    use dataflow_models::sd::{GenerateOptions, SdIpAdapter};
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
    Ok(())
}
