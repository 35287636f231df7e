//! I/O binding (issue 20, item 3): values a run leaves in the provider's memory feed the next
//! run where they are. On the CPU the provider's memory is host memory, so these tests check
//! that the bound path computes exactly what the plain one does; `bench/gpu/run.sh` measures
//! it under CUDA.

use dataflow_models::error::ModelError;
use dataflow_models::llava::{GenerateOptions, Llava, QUERY};
use dataflow_models::provider::SessionOptions;
use dataflow_models::session::{load_session, tensor_f32, view_f32, IoSpec, TensorSpec};
use dataflow_models::textgen::Decoding;
use image::RgbImage;

use crate::{fixture, have_runtime};

#[test]
fn an_output_kept_on_the_device_feeds_the_next_bound_run() -> Result<(), ModelError> {
    if !have_runtime("an_output_kept_on_the_device_feeds_the_next_bound_run") {
        return Ok(());
    }
    let spec = IoSpec::new()
        .input(TensorSpec::f32("x", &[1, 3]))
        .output(TensorSpec::f32("y", &[1, 3]));
    let mut add = load_session(fixture("add.onnx"), &SessionOptions::cpu(), &spec)?;
    let x = tensor_f32(&[1, 3], vec![1.0, -2.0, 3.5])?;
    let mut first = add.run_bound(vec![("x".into(), x)], &["y"])?;
    let y = first.take("y")?;
    // The fixture adds [1, 2, 3].
    assert_eq!(view_f32(&y, "y")?, (vec![1, 3], &[2.0, 0.0, 6.5][..]));
    // The kept output goes back in as it is; the second output is read on the host.
    let second = add.run_bound(vec![("x".into(), y)], &[])?;
    assert_eq!(second.f32("y")?, (vec![1, 3], &[3.0, 2.0, 9.5][..]));
    let plain = add.run(vec![("x".into(), tensor_f32(&[1, 3], vec![2.0, 0.0, 6.5])?.into())])?;
    assert_eq!(plain.f32("y")?, second.f32("y")?);

    let err = add
        .run_bound(vec![("nope".into(), tensor_f32(&[1, 3], vec![0.0; 3])?)], &[])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("fixtures/add.onnx"), "{err}");
    assert!(err.contains("`nope`"), "{err}");
    Ok(())
}

fn tiles() -> Result<Vec<RgbImage>, ModelError> {
    (0..3)
        .map(|k| {
            let path = fixture("llava").join(format!("images/tile{k}.png"));
            image::open(&path)
                .map(|i| i.to_rgb8())
                .map_err(|e| ModelError::Invalid(format!("{}: {e}", path.display())))
        })
        .collect()
}

#[test]
fn llava_with_the_cache_bound_gives_the_tokens_of_the_cache_on_the_host() -> Result<(), ModelError> {
    if !have_runtime("llava_with_the_cache_bound_gives_the_tokens_of_the_cache_on_the_host") {
        return Ok(());
    }
    let mut llava = Llava::load(fixture("llava"), &SessionOptions::cpu().with_intra_threads(1))?;
    assert!(!llava.binds_cache(), "on the CPU the cache stays unbound by default");
    let tiles = tiles()?;
    let refs: Vec<&RgbImage> = tiles.iter().collect();
    let greedy = GenerateOptions {
        max_new_tokens: 12,
        stop_at_stop_tokens: false,
        ..GenerateOptions::default()
    };
    let sampled = GenerateOptions {
        decoding: Decoding::Sample {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            seed: 0,
        },
        ..greedy
    };
    let uncached = GenerateOptions {
        use_cache: false,
        ..greedy
    };
    for (what, options) in [
        ("greedy", greedy),
        ("sampled", sampled),
        ("without the cache", uncached),
    ] {
        for batch in [&refs[..1], &refs[..]] {
            let seeds: Vec<u64> = (0..batch.len() as u64).map(|s| 7 + s).collect();
            llava.set_bind_cache(false);
            let host = llava.generate_seeded(batch, QUERY, &options, &seeds)?;
            llava.set_bind_cache(true);
            let bound = llava.generate_seeded(batch, QUERY, &options, &seeds)?;
            let b = batch.len();
            assert_eq!(bound.captions, host.captions, "{what}, batch {b}");
            assert_eq!(bound.captions[0].ids.len(), 12, "{what}, batch {b}");
            // On the CPU nothing crosses a bus either way: the counts agree.
            assert_eq!(bound.host_bytes, host.host_bytes, "{what}, batch {b}");
            assert_eq!(bound.kv_bytes, host.kv_bytes, "{what}, batch {b}");
            assert_eq!(bound.decode_steps, 11, "{what}, batch {b}");
        }
    }
    Ok(())
}
