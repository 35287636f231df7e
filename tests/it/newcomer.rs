//! A newcomer's first hour (issue 16): the editor schema works in a real validator, logs
//! to a file carry no colour escapes, `doctor` says per tier what is missing and exits 0
//! when the main job can run, and no test reads anything beside the clone.

use std::path::Path;
use std::process::Command;

use crate::support::{bin, root};

fn schema() -> serde_json::Value {
    let o = Command::new(bin()).current_dir(root()).arg("schema").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn graph_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    serde_json::to_value(t).unwrap()
}

fn schema_errors(validator: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_shipped_graph_passes_the_editor_schema_and_a_wrong_key_fails_it() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let graphs = crate::graphs::shipped();
    assert!(graphs.len() >= 10, "{graphs:?}");
    for g in &graphs {
        let errors = schema_errors(&validator, &graph_json(g));
        assert!(errors.is_empty(), "{}: {errors:#?}", g.display());
    }
    let mut bad = graph_json(&root().join("graphs/multisc-lite.toml"));
    bad["stage"]["segment"]["modle"] = serde_json::json!("isnet");
    assert!(!schema_errors(&validator, &bad).is_empty(), "a misspelt key passed");
    let mut bad = graph_json(&root().join("graphs/multisc-lite.toml"));
    bad["stage"]["segment"]["when_full"] = serde_json::json!("sometimes");
    assert!(
        !schema_errors(&validator, &bad).is_empty(),
        "a wrong reserved value passed"
    );
}

/// A kind with several models has one alternative per model: a key of another model
/// fails the schema as it fails validation, and `model` may be left out for the default.
#[test]
fn the_schema_keeps_each_models_keys_to_that_model() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let stage = |keys: serde_json::Value| serde_json::json!({"stage": {"c": keys}});
    let ok = [
        serde_json::json!({"kind": "caption"}),
        serde_json::json!({"kind": "caption", "model": "llava", "query": "what?", "provider": "cpu"}),
        serde_json::json!({"kind": "segment", "model": "fcn", "resize": 0}),
        serde_json::json!({"kind": "segment", "variant": "small"}),
    ];
    for keys in ok {
        let errors = schema_errors(&validator, &stage(keys.clone()));
        assert!(errors.is_empty(), "{keys}: {errors:#?}");
    }
    let bad = [
        serde_json::json!({"kind": "caption", "query": "what?"}),
        serde_json::json!({"kind": "caption", "model": "attributes", "max_new_tokens": 4}),
        serde_json::json!({"kind": "segment", "model": "fcn", "variant": "small"}),
        serde_json::json!({"kind": "segment", "model": "unet"}),
    ];
    for keys in bad {
        assert!(
            !schema_errors(&validator, &stage(keys.clone())).is_empty(),
            "{keys} passed"
        );
    }
}

/// Every reserved key the engine accepts is in each kind's alternative of the schema.
#[test]
fn the_schema_offers_every_reserved_key_on_every_kind() {
    let s = schema();
    let variants = s["properties"]["stage"]["additionalProperties"]["oneOf"]
        .as_array()
        .unwrap();
    assert!(variants.len() > 10);
    for v in variants {
        for key in dataflow_engine::plan::RESERVED_KEYS {
            assert!(v["properties"].get(*key).is_some(), "{}: no {key}", v["title"]);
        }
    }
}

/// `dataflow run` on a folder with one unreadable image (a warning is logged), its log
/// sent through a pipe, or through a terminal made by `script` when `tty`.
fn run_log(dir: &Path, tty: bool, no_color: bool) -> String {
    let imgs = dir.join("in");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::write(imgs.join("bad.png"), "not a png").unwrap();
    let g = dir.join("tiny.toml");
    let graph = format!(
        "[graph]\nname = \"tiny\"\n[stage.source]\nkind = \"image_dir\"\npath = \"{}\"\n[stage.sink]\nkind = \"null_sink\"\ninputs = [\"source\"]\n",
        imgs.display()
    );
    std::fs::write(&g, graph).unwrap();
    let cmd = format!(
        "{} run {} --out {} --no-progress --metrics off",
        bin().display(),
        g.display(),
        dir.join("out").display()
    );
    let mut c = if tty {
        let mut c = Command::new("script");
        c.args(["-qec", &format!("{cmd} 2>&1"), "/dev/null"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &cmd]);
        c
    };
    c.env_remove("RUST_LOG").env_remove("NO_COLOR");
    if no_color {
        c.env("NO_COLOR", "1");
    }
    let o = c.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        log.contains("WARN") && log.contains("bad.png"),
        "the failed frame was not logged: {log}"
    );
    log
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_never_under_no_color() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        !run_log(dir.path(), false, false).contains('\x1b'),
        "escapes in a piped log"
    );
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped the terminal half: `script` (util-linux) is not installed");
        return;
    }
    assert!(
        run_log(dir.path(), true, false).contains('\x1b'),
        "no colour on a terminal"
    );
    assert!(!run_log(dir.path(), true, true).contains('\x1b'), "NO_COLOR=1 ignored");
}

fn doctor(assets: Option<&Path>) -> (Option<i32>, String) {
    let mut c = Command::new(bin());
    c.current_dir(root()).arg("doctor");
    if let Some(a) = assets {
        c.env("DATAFLOW_ASSETS", a);
    }
    let o = c.output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    println!("{text}{}", String::from_utf8_lossy(&o.stderr));
    (o.status.code(), text)
}

#[test]
fn doctor_exits_0_when_the_main_job_can_run_and_names_each_missing_export() {
    let (code, text) = doctor(None);
    assert_eq!(code, Some(0), "make setup has run, so the main job can run");
    assert!(
        text.contains("main job (`make run`, graphs/multisc-lite.toml): ready"),
        "{text}"
    );
    // The paper tier's exports are not in this clone: each one is named with its command.
    for model in ["fcn", "llava", "bart", "sd_ip_adapter"] {
        assert!(
            text.contains(&format!("python models/export/{model}.py")),
            "{model}: {text}"
        );
    }
    assert!(
        text.contains("`scripts/export-paper-models`"),
        "the one command: {text}"
    );
    assert!(
        !text.contains("problem(s); `make setup`"),
        "the old blanket advice: {text}"
    );
}

#[test]
fn doctor_exits_1_and_says_make_setup_when_the_offline_assets_are_missing() {
    let empty = tempfile::tempdir().unwrap();
    let (code, text) = doctor(Some(empty.path()));
    assert_eq!(code, Some(1));
    assert!(
        text.contains("main job (`make run`, graphs/multisc-lite.toml): NOT READY"),
        "{text}"
    );
    assert!(text.contains("make setup"), "{text}");
}

/// Regression (issue 16): 14 tests copied Kodak images from the folder beside the clone, which a user's
/// clone does not have. Tests make their images or use `assets/samples`; Kodak24 tests
/// are `kodak24_*`, ignored, and read `DATAFLOW_KODAK`.
#[test]
fn no_test_reads_a_folder_beside_the_clone() {
    let mut offenders = Vec::new();
    for dir in [
        "tests",
        "models/tests",
        "engine/tests",
        "actors/tests",
        "monitoring/tests",
    ] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        let mut stack: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") && p.file_name() != Some("newcomer.rs".as_ref()) {
                let text = std::fs::read_to_string(&p).unwrap();
                if text.contains(&format!("{}/shared", "..")) || text.contains("shared/datasets") {
                    offenders.push(p.display().to_string());
                }
            }
        }
    }
    assert!(offenders.is_empty(), "tests that read beside the clone: {offenders:?}");
}
