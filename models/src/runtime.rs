//! Finding and loading ONNX Runtime, once per process.
//!
//! `ort` is built with `load-dynamic`: the library is opened at run time, never linked.
//! [`runtime()`] looks for it in this order and keeps the first that exists:
//!
//! 1. `ORT_DYLIB_PATH`, when set (an error if that file does not exist);
//! 2. in each candidate assets folder (see [`crate::assets::candidate_dirs`]):
//!    `onnxruntime-gpu/lib/` (made by `scripts/setup-assets --gpu`), then `onnxruntime/lib/`,
//!    taking `libonnxruntime.so` or else the newest `libonnxruntime.so.*`;
//! 3. otherwise [`ModelError::RuntimeNotFound`], which lists every place tried and says to run
//!    `scripts/setup-assets`.
//!
//! The first successful call creates the one `ort` environment of the process; later calls
//! return the same [`Runtime`]. A failed call stores nothing, so it can be retried (after
//! running the set-up, say).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::assets;
use crate::error::ModelError;

/// Name of the environment variable that points at a specific `libonnxruntime.so`.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// ONNX Runtime's name of the CUDA execution provider.
pub const CUDA_PROVIDER: &str = "CUDAExecutionProvider";
/// ONNX Runtime's name of the CPU execution provider.
pub const CPU_PROVIDER: &str = "CPUExecutionProvider";

/// The loaded ONNX Runtime: one per process, shared by every session.
#[derive(Debug)]
pub struct Runtime {
    /// The `ort` environment every session is created under. Dropping it would end the
    /// runtime; it lives in a process-wide static and is never dropped.
    env: ort::environment::Environment,
    /// The library file that was loaded.
    dylib: PathBuf,
    /// Version of the loaded library, e.g. `1.31.1`.
    version: String,
    /// Execution providers compiled into the library, in ONNX Runtime's names.
    providers: Vec<String>,
    /// Folder with the CUDA 13 / cuDNN 9 libraries from `setup-assets --gpu`, when present.
    cuda_lib_dir: Option<PathBuf>,
}

impl Runtime {
    /// The `ort` environment to build sessions under.
    pub fn environment(&self) -> &ort::environment::Environment {
        &self.env
    }

    /// The library file that was loaded.
    pub fn dylib_path(&self) -> &Path {
        &self.dylib
    }

    /// Version of the loaded library, e.g. `1.31.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Execution providers compiled into the library (`CPUExecutionProvider`, and
    /// `CUDAExecutionProvider` for an onnxruntime-gpu build). Compiled in does not mean
    /// usable: CUDA also needs a GPU and the CUDA libraries, which only registering it shows.
    pub fn providers(&self) -> &[String] {
        &self.providers
    }

    /// Whether the library was built with the CUDA execution provider.
    pub fn has_cuda(&self) -> bool {
        self.providers.iter().any(|p| p == CUDA_PROVIDER)
    }

    /// The folder of CUDA libraries that sessions preload before registering CUDA.
    pub fn cuda_lib_dir(&self) -> Option<&Path> {
        self.cuda_lib_dir.as_deref()
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises initialisation: `ort` allows one environment per process, so two threads
/// must not both build one. Held only inside [`runtime()`].
static INIT: Mutex<()> = Mutex::new(());

/// The process-wide ONNX Runtime, loading it on first use.
pub fn runtime() -> Result<&'static Runtime, ModelError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    // A poisoned lock only means another initialiser panicked; the OnceLock is still sound.
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = load()?;
    Ok(RUNTIME.get_or_init(|| rt))
}

fn load() -> Result<Runtime, ModelError> {
    let dylib = find_dylib()?;
    let builder = ort::init_from(&dylib).map_err(|e| ModelError::RuntimeLoad {
        path: dylib.clone(),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("dataflow")
        .with_telemetry(false)
        .build()
        .map_err(|e| ModelError::RuntimeLoad {
            path: dylib.clone(),
            message: e.to_string(),
        })?;

    let mut providers = vec![CPU_PROVIDER.to_string()];
    {
        use ort::ep::ExecutionProvider as _;
        if ort::ep::CUDA::is_available().unwrap_or(false) {
            providers.push(CUDA_PROVIDER.to_string());
        }
    }
    let version = version_of(ort::info(), &dylib);
    let cuda_lib_dir = cuda_lib_dir_for(&dylib);
    tracing::info!(
        dylib = %dylib.display(),
        version = %version,
        providers = ?providers,
        "loaded ONNX Runtime"
    );
    Ok(Runtime {
        env,
        dylib,
        version,
        providers,
        cuda_lib_dir,
    })
}

/// Where the runtime library would be loaded from, without loading it.
///
/// Follows the order in the module documentation.
pub fn find_dylib() -> Result<PathBuf, ModelError> {
    if let Some(value) = std::env::var_os(DYLIB_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if path.is_file() {
            return Ok(path);
        }
        return Err(ModelError::RuntimeLoad {
            path,
            message: format!(
                "{DYLIB_ENV} points at a file that does not exist; unset it to use the \
                 library from `scripts/setup-assets`"
            ),
        });
    }
    let mut searched = Vec::new();
    for dir in assets::candidate_dirs() {
        for sub in ["onnxruntime-gpu/lib", "onnxruntime/lib"] {
            let lib_dir = dir.join(sub);
            searched.push(lib_dir.join("libonnxruntime.so"));
            if let Some(found) = dylib_in(&lib_dir) {
                return Ok(found);
            }
        }
    }
    Err(ModelError::RuntimeNotFound { searched })
}

/// `libonnxruntime.so` in `dir`, else the highest-versioned `libonnxruntime.so.*`.
fn dylib_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        })
        .collect();
    versioned.sort_by_key(|p| version_key(p));
    versioned.pop()
}

fn version_key(path: &Path) -> Vec<u64> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so."))
        .map(|v| v.split('.').map(|x| x.parse().unwrap_or(0)).collect())
        .unwrap_or_default()
}

/// The version from the build-info string (`git-branch=rel-1.31.1`), else from the file
/// name (`libonnxruntime.so.1.31.1`), else `unknown`.
fn version_of(info: &str, dylib: &Path) -> String {
    if let Some(rest) = info.split("git-branch=rel-").nth(1) {
        let v: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        if !v.is_empty() {
            return v;
        }
    }
    let resolved = std::fs::canonicalize(dylib).unwrap_or_else(|_| dylib.to_path_buf());
    let key = version_key(&resolved);
    if key.is_empty() {
        "unknown".to_string()
    } else {
        key.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
    }
}

/// `<lib>/../cuda/lib` when it exists: where `setup-assets --gpu` puts the CUDA libraries.
fn cuda_lib_dir_for(dylib: &Path) -> Option<PathBuf> {
    let dir = dylib.parent()?.parent()?.join("cuda").join("lib");
    dir.is_dir().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_build_info_then_file_name() {
        let p = Path::new("/nonexistent/libonnxruntime.so.1.31.1");
        assert_eq!(
            version_of("ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc", p),
            "1.31.1"
        );
        assert_eq!(version_of("ORT Build Info: git-branch=main", p), "1.31.1");
    }

    #[test]
    fn highest_versioned_library_wins() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        for name in ["libonnxruntime.so.1.9.0", "libonnxruntime.so.1.31.1"] {
            std::fs::write(dir.path().join(name), b"")?;
        }
        assert_eq!(dylib_in(dir.path()), Some(dir.path().join("libonnxruntime.so.1.31.1")));
        std::fs::write(dir.path().join("libonnxruntime.so"), b"")?;
        assert_eq!(dylib_in(dir.path()), Some(dir.path().join("libonnxruntime.so")));
        Ok(())
    }
}
