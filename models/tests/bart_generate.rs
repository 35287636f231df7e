//! BART decoding with the checkpoint's generation settings against PyTorch `generate`.
//!
//! `models/fixtures/bart/generation.json` is written by
//! `python models/export/bart.py --tiny-random --out models/fixtures/bart`: for five texts, the ids
//! of `BartForConditionalGeneration.generate` with the settings the fixture's `export.json` carries
//! (4 beams, no_repeat_ngram_size 3, early stopping, forced BOS/EOS, max_length 40, min_length 4)
//! and with variants (greedy; heuristic and "never" early stopping with length penalties 2 and 0.5;
//! a fixed `max_new_tokens`). The Rust decoder must give the same ids and size the same limit.
//!
//! Skips (prints why) when ONNX Runtime is absent, unless `DATAFLOW_REQUIRE_ASSETS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use dataflow_models::bart::{Bart, CorrectOptions, EarlyStopping};
use dataflow_models::error::ModelError;
use dataflow_models::provider::SessionOptions;
use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/bart")
}

fn have_runtime(test: &str) -> bool {
    match dataflow_models::runtime::runtime() {
        Ok(_) => true,
        Err(e) if dataflow_models::assets::assets_required() => {
            panic!("{test}: {e} (DATAFLOW_REQUIRE_ASSETS=1)")
        }
        Err(e) => {
            println!("skipped {test}: {e}");
            false
        }
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The export's options with a case's `settings` (transformers names) applied.
fn options_of(bart: &Bart, case: &Value) -> CorrectOptions {
    let set = &case["settings"];
    let mut o = bart.default_options();
    o.beams = set["num_beams"].as_u64().unwrap() as usize;
    o.no_repeat_ngram_size = set["no_repeat_ngram_size"].as_u64().unwrap() as usize;
    o.length_penalty = set["length_penalty"].as_f64().unwrap() as f32;
    o.min_length = set["min_length"].as_u64().unwrap() as usize;
    o.forced_eos = !set["forced_eos_token_id"].is_null();
    o.early_stopping = match &set["early_stopping"] {
        Value::Bool(true) => EarlyStopping::Done,
        Value::Bool(false) => EarlyStopping::Heuristic,
        Value::String(w) if w == "never" => EarlyStopping::Never,
        other => panic!("early_stopping {other}"),
    };
    if !case["sized_from_input"].as_bool().unwrap() {
        o.max_new_tokens = case["max_new_tokens"].as_u64().unwrap() as usize;
        o.size_from_input = false;
    }
    o
}

#[test]
fn bart_generation_settings_come_from_export_json() -> Result<(), ModelError> {
    if !have_runtime("bart_generation_settings_come_from_export_json") {
        return Ok(());
    }
    let bart = Bart::load(fixture(), &SessionOptions::cpu().with_intra_threads(1))?;
    let o = bart.default_options();
    assert_eq!(o.beams, 4);
    assert_eq!(o.no_repeat_ngram_size, 3);
    assert_eq!(o.early_stopping, EarlyStopping::Done);
    assert!(o.forced_eos);
    assert_eq!(o.min_length, 4);
    assert!(o.size_from_input);
    // max_length 40 caps the limit at 39 new tokens; a short input gets n + n/2 + 10.
    assert_eq!(bart.token_limit(7, &o), 20);
    assert_eq!(bart.token_limit(60, &o), 39);
    // Without max_length, the 64 learned positions cap it.
    let unbounded = CorrectOptions {
        max_new_tokens: usize::MAX,
        ..o
    };
    assert_eq!(bart.token_limit(60, &unbounded), 63);
    Ok(())
}

#[test]
fn bart_generate_gives_the_ids_of_pytorch_generate_with_the_exported_settings() -> Result<(), ModelError> {
    if !have_runtime("bart_generate_gives_the_ids_of_pytorch_generate_with_the_exported_settings") {
        return Ok(());
    }
    let text = std::fs::read_to_string(fixture().join("generation.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let mut bart = Bart::load(fixture(), &SessionOptions::cpu().with_intra_threads(1))?;
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let mut ended_early = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let input = bart.encode(text)?;
        assert_eq!(input, ids(&case["input_ids"]), "tokenizer on {text:?}");
        let options = options_of(&bart, case);
        let limit = case["max_new_tokens"].as_u64().unwrap() as usize;
        assert_eq!(bart.token_limit(input.len(), &options), limit, "limit for {text:?}");
        let want = ids(&case["ids"]);
        let settings = &case["settings"];
        let got = bart.generate_ids(&input, &options)?;
        assert_eq!(got, want, "{text:?} with {settings}");
        let no_cache = bart.generate_ids(
            &input,
            &CorrectOptions {
                use_cache: false,
                ..options
            },
        )?;
        assert_eq!(no_cache, want, "{text:?} with {settings}, without the KV cache");
        if options.forced_eos {
            assert!(want.len() < limit, "forced EOS takes the last place");
        }
        if want.len() + 1 < limit {
            ended_early += 1;
        }
    }
    // The reference exercises hypotheses that end before the limit, not only forced ends.
    assert!(ended_early >= 3, "{ended_early} cases ended early");
    Ok(())
}

#[test]
fn bart_no_repeat_rule_leaves_no_repeated_trigram() -> Result<(), ModelError> {
    if !have_runtime("bart_no_repeat_rule_leaves_no_repeated_trigram") {
        return Ok(());
    }
    let mut bart = Bart::load(fixture(), &SessionOptions::cpu().with_intra_threads(1))?;
    let input = bart.encode("a red motorbke is parked on the stret")?;
    let o = bart.default_options();
    let mut seq = vec![bart.export().decoder_start_token_id];
    seq.extend(bart.generate_ids(&input, &o)?);
    let trigrams: Vec<&[u32]> = seq.windows(3).collect();
    for (i, t) in trigrams.iter().enumerate() {
        assert!(!trigrams[i + 1..].contains(t), "{t:?} repeats in {seq:?}");
    }
    // Without the rule, the random fixture does repeat trigrams: the rule is what prevents it.
    let mut plain = vec![bart.export().decoder_start_token_id];
    plain.extend(bart.generate_ids(
        &input,
        &CorrectOptions {
            no_repeat_ngram_size: 0,
            ..o
        },
    )?);
    let repeats = plain
        .windows(3)
        .enumerate()
        .any(|(i, t)| plain.windows(3).skip(i + 1).any(|u| u == t));
    assert!(repeats, "{plain:?}");
    Ok(())
}
