//! Execution providers: `cuda` without CUDA, `auto` falling back to the CPU, options.

use std::io::Write;
use std::sync::{Arc, Mutex};

use dataflow_models::error::ModelError;
use dataflow_models::provider::{ActiveProvider, Provider, SessionOptions};
use dataflow_models::runtime::runtime;
use dataflow_models::session::{load_session, IoSpec, TensorSpec};

use crate::{fixture, have_runtime};

fn add_spec() -> IoSpec {
    IoSpec::new()
        .input(TensorSpec::f32("x", &[1, 3]))
        .output(TensorSpec::f32("y", &[1, 3]))
}

#[test]
fn runtime_reports_version_library_and_providers() {
    if !have_runtime("runtime_reports_version_library_and_providers") {
        return;
    }
    let Ok(rt) = runtime() else { return };
    assert_eq!(rt.version(), "1.31.1");
    assert!(rt.dylib_path().to_string_lossy().contains("libonnxruntime.so"));
    assert!(rt.providers().iter().any(|p| p == "CPUExecutionProvider"));
}

/// With the CPU library the reason is "no CUDA execution provider"; with the onnxruntime-gpu
/// library on a machine without a GPU or CUDA libraries, it is the registration failure.
#[test]
fn cuda_without_cuda_is_a_clear_error() {
    if !have_runtime("cuda_without_cuda_is_a_clear_error") {
        return;
    }
    let options = SessionOptions::default().with_provider(Provider::Cuda);
    let err = match load_session(fixture("add.onnx"), &options, &add_spec()) {
        Ok(session) => {
            assert_eq!(session.provider(), ActiveProvider::Cuda);
            println!("skipped cuda_without_cuda_is_a_clear_error: this machine has CUDA");
            return;
        }
        Err(err @ ModelError::CudaUnavailable { .. }) => err,
        Err(other) => panic!("expected CudaUnavailable, got {other:?}"),
    };
    let text = err.to_string();
    println!("{text}");
    assert!(text.contains("CUDA execution provider is not available"), "{text}");
    assert!(text.contains("scripts/setup-assets --gpu"), "{text}");
    assert!(text.contains("CUDA 13"), "{text}");
    if runtime().is_ok_and(|rt| !rt.has_cuda()) {
        assert!(text.contains("has no CUDA execution provider"), "{text}");
    }
}

/// A `tracing` writer that keeps what was logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The only test in this binary that loads with `provider = "auto"`, so it sees the
/// process's one warning.
#[test]
fn auto_falls_back_to_cpu_with_one_warning() -> Result<(), ModelError> {
    if !have_runtime("auto_falls_back_to_cpu_with_one_warning") {
        return Ok(());
    }
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let (first, second) = tracing::subscriber::with_default(subscriber, || {
        let auto = SessionOptions::default();
        assert_eq!(auto.provider, Provider::Auto);
        let first = load_session(fixture("add.onnx"), &auto, &add_spec());
        let second = load_session(fixture("add.onnx"), &auto, &add_spec());
        (first, second)
    });
    let (first, second) = (first?, second?);
    if first.provider() == ActiveProvider::Cuda {
        println!("skipped auto_falls_back_to_cpu_with_one_warning: this machine has CUDA");
        return Ok(());
    }
    assert_eq!(first.provider(), ActiveProvider::Cpu);
    assert_eq!(second.provider(), ActiveProvider::Cpu);
    assert!(first.fallback_reason().is_some());
    assert_eq!(second.fallback_reason(), first.fallback_reason());
    let text = log
        .0
        .lock()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "expected one warning, got:\n{text}");
    assert!(
        warnings[0].contains("CUDA is not available; running ONNX models on the CPU"),
        "{text}"
    );
    Ok(())
}

#[test]
fn session_options_deserialise_strictly_with_defaults() {
    let options: SessionOptions =
        serde_json::from_str(r#"{"provider": "cuda", "device_id": 1, "arena_limit_bytes": 1024}"#)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(options.provider, Provider::Cuda);
    assert_eq!(options.device_id, 1);
    assert_eq!(options.intra_threads, None);
    assert_eq!(options.arena_limit_bytes, Some(1024));
    let empty: SessionOptions = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(empty, SessionOptions::default());
    let err = serde_json::from_str::<SessionOptions>(r#"{"provder": "cpu"}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("unknown field `provder`"), "{err}");
    let err = serde_json::from_str::<SessionOptions>(r#"{"provider": "gpu"}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("unknown variant `gpu`"), "{err}");
}
