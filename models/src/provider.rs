//! Execution providers and the per-session options a graph stage embeds.
//!
//! ```toml
//! [stage.segment]
//! kind = "segment"
//! provider = "auto"        # auto | cpu | cuda
//! device_id = 0
//! intra_threads = 2
//! ```

use serde::{Deserialize, Serialize};

/// Which execution provider a session should run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// CUDA when the runtime has it and it registers; otherwise the CPU, with one warning
    /// per process.
    #[default]
    Auto,
    /// The CPU only.
    Cpu,
    /// CUDA, or an error saying how to enable it.
    Cuda,
}

/// The provider a session actually runs on; its [`as_str`](ActiveProvider::as_str) is the
/// `provider` label of the inference metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActiveProvider {
    /// ONNX Runtime's default CPU provider.
    Cpu,
    /// The CUDA execution provider.
    Cuda,
}

impl ActiveProvider {
    /// `"cpu"` or `"cuda"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveProvider::Cpu => "cpu",
            ActiveProvider::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for ActiveProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to build one ONNX Runtime session. Every field has a default, so a stage can
/// `#[serde(flatten)]` this next to its own keys or leave it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SessionOptions {
    /// Execution provider: `auto` (default), `cpu` or `cuda`.
    pub provider: Provider,
    /// CUDA device ordinal (ignored on the CPU). Default 0.
    pub device_id: u32,
    /// Threads used inside one operator; `None` lets ONNX Runtime choose (one per core).
    pub intra_threads: Option<usize>,
    /// Upper bound of the CUDA memory arena in bytes (`gpu_mem_limit`); `None` for no
    /// limit. The CPU provider has no such bound in ONNX Runtime's C API and ignores it.
    pub arena_limit_bytes: Option<usize>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            provider: Provider::Auto,
            device_id: 0,
            intra_threads: None,
            arena_limit_bytes: None,
        }
    }
}

impl SessionOptions {
    /// Options that run on the CPU only.
    pub fn cpu() -> Self {
        SessionOptions {
            provider: Provider::Cpu,
            ..Self::default()
        }
    }

    /// These options with another provider.
    pub fn with_provider(mut self, provider: Provider) -> Self {
        self.provider = provider;
        self
    }

    /// These options with `intra_threads` set.
    pub fn with_intra_threads(mut self, threads: usize) -> Self {
        self.intra_threads = Some(threads);
        self
    }
}
