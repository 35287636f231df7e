//! [`ModelError`]: every failure of this crate, worded for the person who has to fix it.

use std::path::PathBuf;

/// The command that fetches everything the offline tier needs.
pub const SETUP_COMMAND: &str = "scripts/setup-assets";

/// An error from loading the runtime, loading a model or running one.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No ONNX Runtime shared library was found in any of the searched places.
    #[error(
        "ONNX Runtime library not found (looked for libonnxruntime.so in: {}); \
         run `{SETUP_COMMAND}` from the repository root to fetch it, \
         or set ORT_DYLIB_PATH to a libonnxruntime.so",
        display_paths(searched)
    )]
    RuntimeNotFound {
        /// Every path that was tried, in order.
        searched: Vec<PathBuf>,
    },

    /// The library was found but could not be loaded or initialised.
    #[error("cannot load ONNX Runtime from {}: {message}", path.display())]
    RuntimeLoad {
        /// The library that was tried.
        path: PathBuf,
        /// What went wrong, from the loader or from ONNX Runtime.
        message: String,
    },

    /// A model file does not exist.
    #[error(
        "model file {} does not exist; run `{SETUP_COMMAND}` to fetch the offline-tier models \
         (paper-tier models are exported with the scripts in models/export/, see models/README.md)",
        path.display()
    )]
    ModelNotFound {
        /// The missing file.
        path: PathBuf,
    },

    /// `provider = "cuda"` was asked for and cannot be had.
    #[error(
        "the CUDA execution provider is not available: {reason}. To enable it, run \
         `{SETUP_COMMAND} --gpu` (onnxruntime-gpu 1.31.1 and the CUDA 13 / cuDNN 9 libraries \
         into assets/onnxruntime-gpu/), or point ORT_DYLIB_PATH at an onnxruntime-gpu \
         libonnxruntime.so with CUDA 13 libraries on the loader path; see models/README.md. \
         Use provider = \"auto\" to fall back to the CPU"
    )]
    CudaUnavailable {
        /// Why CUDA could not be used.
        reason: String,
    },

    /// The model's inputs or outputs differ from what the caller expects.
    #[error(
        "model {} does not match the expected inputs/outputs: {}; expected {expected}; the model has {actual}",
        path.display(),
        problems.join("; ")
    )]
    IoMismatch {
        /// The model file.
        path: PathBuf,
        /// One line per difference (missing tensor, wrong type, wrong shape).
        problems: Vec<String>,
        /// The expected tensors, e.g. `inputs [x: f32[1, 3]], outputs [y: f32[1, 3]]`.
        expected: String,
        /// The model's actual tensors in the same notation.
        actual: String,
    },

    /// An ONNX Runtime call failed.
    #[error("{context}: {source}")]
    Ort {
        /// What was being done, naming the model where there is one.
        context: String,
        /// The runtime's error.
        #[source]
        source: ort::Error,
    },

    /// An argument or an output did not have the required form.
    #[error("{0}")]
    Invalid(String),

    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ModelError {
    /// Wraps an `ort` error with what was being done.
    pub(crate) fn ort<R>(context: impl Into<String>, source: ort::Error<R>) -> Self {
        // `ort::Error<R>` carries the recoverable builder; keep only code and message.
        ModelError::Ort {
            context: context.into(),
            source: ort::Error::new_with_code(source.code(), source.message()),
        }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere (no candidate directories)".to_string();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
