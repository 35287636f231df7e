//! Integration tests of `dataflow-models`: one binary, one module per area.
//!
//! Tests that need ONNX Runtime or the offline models print a line and return when
//! `scripts/setup-assets` has not been run, unless `DATAFLOW_REQUIRE_ASSETS=1` is set (CI
//! sets it after running the set-up, so there they fail instead of skipping).

mod assets;
mod batch;
mod binding;
mod detect_batch;
mod isnet;
mod paper;
mod provider;
mod receiver;
mod sd_batch;
mod session;

use std::path::PathBuf;

/// A committed fixture from `models/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// `true` when ONNX Runtime can be loaded; otherwise prints why the test is skipped (or
/// panics under `DATAFLOW_REQUIRE_ASSETS=1`).
pub fn have_runtime(test: &str) -> bool {
    match dataflow_models::runtime::runtime() {
        Ok(_) => true,
        Err(e) => skip(test, &e.to_string()),
    }
}

/// The path of an asset when it and the runtime are present; otherwise skips as above.
pub fn asset(test: &str, relative: &str) -> Option<PathBuf> {
    if !have_runtime(test) {
        return None;
    }
    match dataflow_models::assets::asset_path(relative) {
        Ok(path) if path.is_file() => Some(path),
        Ok(path) => {
            skip(test, &format!("{} is absent; run scripts/setup-assets", path.display()));
            None
        }
        Err(e) => {
            skip(test, &e.to_string());
            None
        }
    }
}

fn skip(test: &str, why: &str) -> bool {
    if dataflow_models::assets::assets_required() {
        panic!("{test}: {why} (DATAFLOW_REQUIRE_ASSETS=1)");
    }
    println!("skipped {test}: {why}");
    false
}
