//! The assets folder and the `doctor` report.

use dataflow_models::assets::check_assets;

#[test]
fn doctor_report_covers_the_manifest() {
    let statuses = check_assets();
    let names: Vec<&str> = statuses.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "onnxruntime",
        "isnet-medium",
        "isnet-small",
        "symspell-unigrams",
        "symspell-bigrams",
        "lpips-alex-heads",
        "photo-astronaut",
        "photo-coffee",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    // Every required asset that is present must also match its sum.
    for s in statuses.iter().filter(|s| s.present) {
        assert!(s.sha256_ok, "{} at {} has the wrong sha256", s.name, s.path.display());
    }
    assert!(statuses.iter().filter(|s| s.optional).all(|s| s.name.contains("gpu")));
}
