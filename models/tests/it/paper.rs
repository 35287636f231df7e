//! Paper-tier families against their `--tiny-random` fixtures: the loaders check names and
//! shapes, and the decode loops give the ids the export scripts computed with PyTorch.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use dataflow_models::bart::{Bart, CorrectOptions};
use dataflow_models::error::ModelError;
use dataflow_models::fcn::Fcn;
use dataflow_models::llava::{GenerateOptions, Llava, QUERY};
use dataflow_models::provider::SessionOptions;
use dataflow_models::session::{load_session, TensorSpec};
use dataflow_models::textgen::Decoding;
use serde_json::Value;

use crate::{fixture, have_runtime};

fn expected(dir: &str) -> Value {
    let text = std::fs::read_to_string(fixture(dir).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn opts() -> SessionOptions {
    SessionOptions::cpu().with_intra_threads(1)
}

// FCN ---------------------------------------------------------------------------------

#[test]
fn fcn_fixture_gives_the_label_map_and_main_object_of_pytorch() -> Result<(), ModelError> {
    if !have_runtime("fcn_fixture_gives_the_label_map_and_main_object_of_pytorch") {
        return Ok(());
    }
    let exp = expected("fcn");
    // The fixture image is used at its own size, as the script did.
    let mut fcn = Fcn::load(fixture("fcn"), &opts())?.with_resize(None);
    assert_eq!(fcn.labels().len(), 21);
    assert_eq!(fcn.labels()[15], "person");
    let img = image::open(fixture("fcn").join("image.png")).unwrap().to_rgb8();
    let seg = fcn.segment(&img)?;
    let want: Vec<u8> = exp["labels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8))
        .collect();
    assert_eq!(seg.classes.len(), want.len());
    let differ = seg.classes.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} pixels differ from PyTorch's argmax");
    let main = seg.main.expect("a main object");
    assert_eq!(main.class as u64, exp["main_class"].as_u64().unwrap());
    assert_eq!(main.label, exp["main_label"].as_str().unwrap());
    assert_eq!(main.pixels, exp["main_pixels"].as_u64().unwrap());
    let b = &exp["box"];
    let got = [
        main.object.bbox.x,
        main.object.bbox.y,
        main.object.bbox.width,
        main.object.bbox.height,
    ];
    let want_box: Vec<u32> = ids(b);
    assert_eq!(got.to_vec(), want_box);
    // The slice's alpha is the mask inside the box.
    let (x0, y0) = (main.object.bbox.x, main.object.bbox.y);
    for (x, y, px) in main.object.image.enumerate_pixels() {
        assert_eq!(px[3], seg.mask.get_pixel(x0 + x, y0 + y)[0]);
    }
    // With the preset resize the map comes back at the frame's size.
    let mut resized = Fcn::load(fixture("fcn"), &opts())?.with_resize(Some(64));
    let seg2 = resized.segment(&img)?;
    assert_eq!(seg2.classes.len(), (img.width() * img.height()) as usize);
    assert_eq!(seg2.mask.dimensions(), img.dimensions());
    Ok(())
}

#[test]
fn fcn_loader_refuses_a_model_with_other_tensors() {
    if !have_runtime("fcn_loader_refuses_a_model_with_other_tensors") {
        return;
    }
    // The ISNet-like fixture has `input`/`output`, not `out` with 21 classes.
    let err = load_session(fixture("isnet_like.onnx"), &opts(), &Fcn::io_spec(21)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("output `out` is missing"), "{msg}");
    // A missing export names the export command.
    let err = Fcn::load("/nonexistent/fcn", &opts()).unwrap_err().to_string();
    assert!(
        err.contains("python models/export/fcn.py --out assets/models/fcn"),
        "{err}"
    );
}

// BART --------------------------------------------------------------------------------

#[test]
fn bart_greedy_and_beam_search_give_the_ids_of_pytorch_generate() -> Result<(), ModelError> {
    if !have_runtime("bart_greedy_and_beam_search_give_the_ids_of_pytorch_generate") {
        return Ok(());
    }
    let exp = expected("bart");
    let mut bart = Bart::load(fixture("bart"), &opts())?;
    let max = exp["max_new_tokens"].as_u64().unwrap() as usize;
    let beams = exp["beams"].as_u64().unwrap() as usize;
    for case in exp["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let input = bart.encode(text)?;
        assert_eq!(input, ids(&case["input_ids"]), "tokenizer on {text:?}");
        let greedy = CorrectOptions {
            max_new_tokens: max,
            ..CorrectOptions::default()
        };
        let got = bart.generate_ids(&input, &greedy)?;
        assert_eq!(got, ids(&case["greedy"]), "greedy on {text:?}");
        let no_cache = bart.generate_ids(
            &input,
            &CorrectOptions {
                use_cache: false,
                ..greedy
            },
        )?;
        assert_eq!(no_cache, got, "KV cache vs no cache on {text:?}");
        assert_eq!(bart.correct(text, &greedy)?, case["greedy_text"].as_str().unwrap());
        let beam = CorrectOptions { beams, ..greedy };
        let got_beam = bart.generate_ids(&input, &beam)?;
        assert_eq!(got_beam, ids(&case["beam"]), "beam search (width {beams}) on {text:?}");
        let beam_no_cache = bart.generate_ids(
            &input,
            &CorrectOptions {
                use_cache: false,
                ..beam
            },
        )?;
        assert_eq!(beam_no_cache, got_beam, "beam search with and without the cache");
    }
    // More new tokens than the 64 learned positions allow: bounded, not a runtime error.
    let input = bart.encode("teh cat")?;
    let long = bart.generate_ids(
        &input,
        &CorrectOptions {
            max_new_tokens: 500,
            ..CorrectOptions::default()
        },
    )?;
    assert!(long.len() <= 63, "{}", long.len());
    Ok(())
}

#[test]
fn bart_loader_checks_the_decoder_caches() {
    if !have_runtime("bart_loader_checks_the_decoder_caches") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "encoder_model.onnx",
        "decoder_model.onnx",
        "decoder_with_past_model.onnx",
        "tokenizer.json",
    ] {
        std::fs::copy(fixture("bart").join(f), dir.path().join(f)).unwrap();
    }
    // An export.json that claims a third layer: the with-past decoder lacks its cache inputs.
    let text = std::fs::read_to_string(fixture("bart").join("export.json")).unwrap();
    let mut meta: Value = serde_json::from_str(&text).unwrap();
    meta["num_layers"] = 3.into();
    std::fs::write(dir.path().join("export.json"), meta.to_string()).unwrap();
    let err = Bart::load(dir.path(), &opts()).unwrap_err().to_string();
    assert!(err.contains("output `present.2.decoder.key` is missing"), "{err}");
    // The real spec of the fixture: every cache tensor i64/f32 as named.
    let spec = &Bart::io_specs(&serde_json::from_str(&text).unwrap())[2];
    assert!(spec
        .inputs
        .contains(&TensorSpec::f32("past_key_values.1.encoder.value", &[-1, 4, -1, 8])));
}

// LLaVA -------------------------------------------------------------------------------

fn tiles() -> Vec<image::RgbImage> {
    (0..4)
        .map(|k| {
            image::open(fixture("llava").join(format!("images/tile{k}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect()
}

#[test]
fn llava_greedy_captions_match_pytorch_generate_one_by_one_and_in_a_batch() -> Result<(), ModelError> {
    if !have_runtime("llava_greedy_captions_match_pytorch_generate_one_by_one_and_in_a_batch") {
        return Ok(());
    }
    let exp = expected("llava");
    let mut llava = Llava::load(fixture("llava"), &opts())?;
    assert_eq!(llava.prompt_ids(QUERY)?, ids(&exp["prompt_ids"]), "prompt tokens");
    let options = GenerateOptions {
        max_new_tokens: exp["max_new_tokens"].as_u64().unwrap() as usize,
        ..GenerateOptions::default()
    };
    let imgs = tiles();
    let refs: Vec<&image::RgbImage> = imgs.iter().collect();
    let greedy = exp["greedy"].as_array().unwrap();
    let mut one_by_one = Vec::new();
    for (k, img) in imgs.iter().enumerate() {
        let c = llava.caption(img, &options)?;
        assert_eq!(c.ids, ids(&greedy[k]["ids"]), "tile {k}");
        assert_eq!(c.text, greedy[k]["text"].as_str().unwrap().trim(), "tile {k}");
        one_by_one.push(c);
    }
    let batch = llava.generate(&refs, QUERY, &options)?;
    assert_eq!(batch.captions, one_by_one, "a batch of four equals one by one");
    // Different images, different captions: the image features reach the decoder.
    assert_ne!(one_by_one[0].ids, one_by_one[1].ids);
    Ok(())
}

#[test]
fn llava_kv_cache_decoding_equals_decoding_without_cache() -> Result<(), ModelError> {
    if !have_runtime("llava_kv_cache_decoding_equals_decoding_without_cache") {
        return Ok(());
    }
    let mut llava = Llava::load(fixture("llava"), &opts())?;
    let imgs = tiles();
    let refs: Vec<&image::RgbImage> = imgs.iter().collect();
    let cached = GenerateOptions {
        max_new_tokens: 12,
        ..GenerateOptions::default()
    };
    let a = llava.generate(&refs, QUERY, &cached)?;
    let b = llava.generate(
        &refs,
        QUERY,
        &GenerateOptions {
            use_cache: false,
            ..cached
        },
    )?;
    assert_eq!(a.captions, b.captions);
    assert!(a.captions.iter().all(|c| !c.ids.is_empty()));
    Ok(())
}

#[test]
fn llava_sampling_is_seeded_and_top_k_one_is_greedy() -> Result<(), ModelError> {
    if !have_runtime("llava_sampling_is_seeded_and_top_k_one_is_greedy") {
        return Ok(());
    }
    let mut llava = Llava::load(fixture("llava"), &opts())?;
    let img = &tiles()[2];
    let greedy = GenerateOptions {
        max_new_tokens: 10,
        stop_at_stop_tokens: false,
        ..GenerateOptions::default()
    };
    let sample = |seed, temperature, top_k| GenerateOptions {
        decoding: Decoding::Sample {
            temperature,
            top_k,
            top_p: 1.0,
            seed,
        },
        ..greedy
    };
    let g = llava.caption(img, &greedy)?;
    assert_eq!(g.ids.len(), 10, "no stop tokens: max_new_tokens tokens");
    assert_eq!(llava.caption(img, &sample(5, 1.0, 1))?, g, "top_k = 1 is greedy");
    let s1 = llava.caption(img, &sample(5, 1.5, 0))?;
    assert_eq!(llava.caption(img, &sample(5, 1.5, 0))?, s1, "same seed, same caption");
    let others: Vec<_> = (6..10)
        .map(|seed| llava.caption(img, &sample(seed, 1.5, 0)).map(|c| c.ids))
        .collect::<Result<_, _>>()?;
    assert!(others.iter().any(|ids| *ids != s1.ids), "other seeds draw other tokens");
    // max_new_tokens bounds the caption.
    let short = llava.caption(
        img,
        &GenerateOptions {
            max_new_tokens: 3,
            ..greedy
        },
    )?;
    assert_eq!(short.ids, g.ids[..3]);
    Ok(())
}

#[test]
fn llava_loader_refuses_a_missing_export_and_a_wrong_geometry() {
    if !have_runtime("llava_loader_refuses_a_missing_export_and_a_wrong_geometry") {
        return;
    }
    let err = Llava::load("/nonexistent/llava", &opts()).unwrap_err().to_string();
    assert!(
        err.contains("python models/export/llava.py --out assets/models/llava"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("onnx")).unwrap();
    for f in [
        "onnx/vision_encoder.onnx",
        "onnx/embed_tokens.onnx",
        "onnx/decoder_model_merged.onnx",
        "tokenizer.json",
    ] {
        std::fs::copy(fixture("llava").join(f), dir.path().join(f)).unwrap();
    }
    let text = std::fs::read_to_string(fixture("llava").join("export.json")).unwrap();
    let mut meta: Value = serde_json::from_str(&text).unwrap();
    meta["num_key_value_heads"] = 4.into();
    std::fs::write(dir.path().join("export.json"), meta.to_string()).unwrap();
    let err = Llava::load(dir.path(), &opts()).unwrap_err().to_string();
    assert!(
        err.contains("input `past_key_values.0.key` has shape [-1, 2, -1, 8], expected [-1, 4, -1, 8]"),
        "{err}"
    );
}
