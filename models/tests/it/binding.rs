//! I/O binding (issue 20, item 3): values a run leaves in the provider's memory feed the next
//! run where they are. On the CPU the provider's memory is host memory, so these tests check
//! that the bound path computes exactly what the plain one does; `bench/gpu/run.sh` measures
//! it under CUDA.

use dataflow_models::bart::{Bart, CorrectOptions, DecodeStats, Generated};
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

/// Three texts of different lengths (encoded on the fixture's tokenizer).
fn bart_inputs(bart: &Bart) -> Result<Vec<Vec<u32>>, ModelError> {
    let texts = [
        "teh cat",
        "a red motorbke is parked on the stret",
        "two dogs wiht a bal",
    ];
    let inputs = texts.iter().map(|t| bart.encode(t)).collect::<Result<Vec<_>, _>>()?;
    let lengths: Vec<usize> = inputs.iter().map(Vec::len).collect();
    assert!(lengths[0] < lengths[2] && lengths[2] < lengths[1], "{lengths:?}");
    Ok(inputs)
}

/// Runs `run` with the cache on the host, then bound: both results and the decode stats.
fn bart_both_ways<T>(bart: &mut Bart, mut run: impl FnMut(&mut Bart) -> T) -> ((T, DecodeStats), (T, DecodeStats)) {
    bart.set_bind_cache(false);
    bart.take_decode_stats();
    let host = run(bart);
    let host_stats = bart.take_decode_stats();
    bart.set_bind_cache(true);
    let bound = run(bart);
    ((host, host_stats), (bound, bart.take_decode_stats()))
}

/// BART greedy and beam search (4 beams), batched and one text at a time, with and without
/// the KV cache: the cache bound to the provider's memory (beam rows gathered by the session
/// of `bart/gather.rs`) gives exactly the ids and scores of the cache on the host.
#[test]
fn bart_with_the_cache_bound_gives_the_ids_of_the_cache_on_the_host() -> Result<(), ModelError> {
    if !have_runtime("bart_with_the_cache_bound_gives_the_ids_of_the_cache_on_the_host") {
        return Ok(());
    }
    let mut bart = Bart::load(fixture("bart"), &SessionOptions::cpu().with_intra_threads(1))?;
    assert!(!bart.binds_cache(), "on the CPU the cache stays unbound by default");
    let inputs = bart_inputs(&bart)?;
    let stage = bart.default_options();
    for (what, o) in [
        ("greedy", CorrectOptions { beams: 1, ..stage }),
        ("4 beams", CorrectOptions { beams: 4, ..stage }),
        (
            "4 beams without the cache",
            CorrectOptions {
                beams: 4,
                use_cache: false,
                ..stage
            },
        ),
        (
            "greedy without the cache",
            CorrectOptions {
                beams: 1,
                use_cache: false,
                ..stage
            },
        ),
    ] {
        let ((host, host_stats), (bound, bound_stats)) = bart_both_ways(&mut bart, |b| b.generate_batch(&inputs, &o));
        let host: Vec<Generated> = host.into_iter().collect::<Result<_, _>>()?;
        let bound: Vec<Generated> = bound.into_iter().collect::<Result<_, _>>()?;
        assert_eq!(bound, host, "{what}, batched");
        assert!(host.iter().any(|g| g.ids.len() > 3), "{what}: {host:?}");
        assert_eq!(bound_stats.decode_steps, host_stats.decode_steps, "{what}");
        assert!(host_stats.decode_steps > 3, "{what}: {host_stats:?}");
        for (input, want) in inputs.iter().zip(&host) {
            let ((alone_host, _), (alone_bound, _)) = bart_both_ways(&mut bart, |b| b.generate(input, &o));
            let alone_host = alone_host?;
            assert_eq!(alone_bound?, alone_host, "{what}, alone");
            // Batched and alone agree on the ids (scores within 1e-5: `batch.rs`).
            assert_eq!(alone_host.ids, want.ids, "{what}, alone and batched");
        }
    }
    Ok(())
}

/// The byte counter on the CPU, from the shapes: a greedy batch step of `b` rows over `s`
/// encoder positions writes the ids (`8 b`) and the encoder attention mask (`8 b s`) and
/// reads the logits (`4 b vocab`), bound or not (the caches are fed where they are); its
/// caches, counted apart (they cross only on a GPU without binding), are the past of `k`
/// positions at step `k`, the cross cache of `s` and the presents of `k + 1`. Beam search
/// with the cache bound also writes the row indices of every gather (8 bytes a row: at least
/// the running beams of one text each step, at most every row twice).
#[test]
fn bart_counts_the_bytes_a_decode_step_moves() -> Result<(), ModelError> {
    if !have_runtime("bart_counts_the_bytes_a_decode_step_moves") {
        return Ok(());
    }
    let mut bart = Bart::load(fixture("bart"), &SessionOptions::cpu().with_intra_threads(1))?;
    let inputs = bart_inputs(&bart)?;
    let (b, vocab) = (inputs.len() as u64, bart.export().vocab_size as u64);
    let s = inputs.iter().map(Vec::len).max().unwrap_or(0) as u64;
    let greedy = CorrectOptions {
        beams: 1,
        ..bart.default_options()
    };
    let ((_, host), (_, bound)) = bart_both_ways(&mut bart, |bart| bart.generate_batch(&inputs, &greedy));
    let per_step = 8 * b + 8 * b * s + 4 * b * vocab;
    let e = bart.export();
    // One position of one row of the self- or cross-attention cache: keys and values, f32.
    let position = (2 * e.num_layers * e.num_heads * e.head_dim * 4) as u64;
    for stats in [host, bound] {
        let n = stats.decode_steps as u64;
        assert!(n > 3, "{stats:?}");
        assert_eq!(stats.host_bytes, n * per_step, "{stats:?}");
        assert_eq!(stats.host_bytes_per_step(), per_step);
        // Σ over steps k = 1..n of b (k + s + k + 1) positions.
        assert_eq!(stats.cache_bytes, position * b * n * (n + 2 + s), "{stats:?}");
    }
    let beams = CorrectOptions {
        beams: 4,
        ..bart.default_options()
    };
    let ((_, host), (_, bound)) = bart_both_ways(&mut bart, |bart| bart.generate_batch(&inputs, &beams));
    assert_eq!(host.decode_steps, bound.decode_steps);
    assert_eq!(host.cache_bytes, bound.cache_bytes);
    let steps = bound.decode_steps as u64;
    let indices = bound.host_bytes.saturating_sub(host.host_bytes);
    assert!(
        (8 * 4 * steps..=8 * 2 * 4 * b * steps).contains(&indices),
        "{indices} B of row indices in {steps} steps"
    );
    // Per step at most every row's ids, mask and logits, at least one text's beams'.
    assert!(host.host_bytes <= steps * 4 * per_step, "{host:?}");
    assert!(host.host_bytes >= steps * 4 * (8 + 8 * s + 4 * vocab), "{host:?}");
    Ok(())
}
