//! Loading one model into one session, with its inputs and outputs checked first.
//!
//! Each model family states the tensors it feeds and reads as an [`IoSpec`];
//! [`load_session`] compares that with the model file and refuses a model that differs,
//! naming the file, the expected and the actual tensors. A session is owned by one worker
//! (`run` takes `&mut self`); replicas load their own.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ort::ep;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::SessionBuilder;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensorValueType, DynValue, Tensor, TensorElementType, TensorRef, ValueType};

use crate::error::ModelError;
use crate::provider::{ActiveProvider, Provider, SessionOptions};
use crate::runtime::{runtime, Runtime};

/// Element type of a tensor, as the specs name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 64-bit signed integer (token ids).
    I64,
    /// 32-bit signed integer.
    I32,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean.
    Bool,
    /// Anything else the runtime knows (shown with the runtime's name).
    Other(&'static str),
}

impl ElementType {
    fn from_ort(ty: TensorElementType) -> Self {
        match ty {
            TensorElementType::Float32 => ElementType::F32,
            TensorElementType::Float16 => ElementType::F16,
            TensorElementType::Int64 => ElementType::I64,
            TensorElementType::Int32 => ElementType::I32,
            TensorElementType::Uint8 => ElementType::U8,
            TensorElementType::Bool => ElementType::Bool,
            TensorElementType::Float64 => ElementType::Other("f64"),
            TensorElementType::Int8 => ElementType::Other("i8"),
            TensorElementType::Int16 => ElementType::Other("i16"),
            TensorElementType::Uint16 => ElementType::Other("u16"),
            TensorElementType::Uint32 => ElementType::Other("u32"),
            TensorElementType::Uint64 => ElementType::Other("u64"),
            TensorElementType::String => ElementType::Other("string"),
            TensorElementType::Bfloat16 => ElementType::Other("bf16"),
            _ => ElementType::Other("other"),
        }
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElementType::F32 => "f32",
            ElementType::F16 => "f16",
            ElementType::I64 => "i64",
            ElementType::I32 => "i32",
            ElementType::U8 => "u8",
            ElementType::Bool => "bool",
            ElementType::Other(name) => name,
        })
    }
}

/// One tensor of a model's interface: name, element type and shape (`-1` = dynamic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type.
    pub element: ElementType,
    /// Dimensions; `-1` is a dynamic dimension (in a spec: "any size").
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// A tensor spec.
    pub fn new(name: impl Into<String>, element: ElementType, shape: &[i64]) -> Self {
        TensorSpec {
            name: name.into(),
            element,
            shape: shape.to_vec(),
        }
    }

    /// An `f32` tensor spec.
    pub fn f32(name: impl Into<String>, shape: &[i64]) -> Self {
        Self::new(name, ElementType::F32, shape)
    }

    /// An `i64` tensor spec (token ids, masks, positions).
    pub fn i64(name: impl Into<String>, shape: &[i64]) -> Self {
        Self::new(name, ElementType::I64, shape)
    }

    /// Why the model's tensor `actual` cannot stand where `self` is expected, if it can't.
    fn mismatch(&self, kind: &str, actual: &TensorSpec) -> Option<String> {
        if self.element != actual.element {
            return Some(format!(
                "{kind} `{}` has element type {}, expected {}",
                self.name, actual.element, self.element
            ));
        }
        let dims_fit = self.shape.len() == actual.shape.len()
            && self
                .shape
                .iter()
                .zip(&actual.shape)
                .all(|(&want, &got)| want < 0 || got < 0 || want == got);
        (!dims_fit).then(|| {
            format!(
                "{kind} `{}` has shape {}, expected {}",
                self.name,
                shape_str(&actual.shape),
                shape_str(&self.shape)
            )
        })
    }
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}{}", self.name, self.element, shape_str(&self.shape))
    }
}

fn shape_str(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// The inputs a caller feeds and the outputs it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoSpec {
    /// Every input of the model (a model input not listed here is an error, since the
    /// caller would not feed it).
    pub inputs: Vec<TensorSpec>,
    /// The outputs the caller reads (the model may have more).
    pub outputs: Vec<TensorSpec>,
}

impl IoSpec {
    /// An empty spec.
    pub fn new() -> Self {
        Self::default()
    }

    /// This spec with one more input.
    pub fn input(mut self, spec: TensorSpec) -> Self {
        self.inputs.push(spec);
        self
    }

    /// This spec with one more output.
    pub fn output(mut self, spec: TensorSpec) -> Self {
        self.outputs.push(spec);
        self
    }

    /// Every difference between this spec and a model's actual tensors.
    fn problems(&self, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Vec<String> {
        let mut problems = Vec::new();
        for (kind, expected, actual) in [("input", &self.inputs, inputs), ("output", &self.outputs, outputs)] {
            for want in expected {
                match actual.iter().find(|t| t.name == want.name) {
                    None => problems.push(format!("{kind} `{}` is missing", want.name)),
                    Some(got) => problems.extend(want.mismatch(kind, got)),
                }
            }
        }
        for got in inputs {
            if !self.inputs.iter().any(|t| t.name == got.name) {
                problems.push(format!("input `{}` is not one the caller feeds", got.name));
            }
        }
        problems
    }
}

fn io_str(inputs: &[TensorSpec], outputs: &[TensorSpec]) -> String {
    let list = |ts: &[TensorSpec]| ts.iter().map(TensorSpec::to_string).collect::<Vec<_>>().join(", ");
    format!("inputs [{}], outputs [{}]", list(inputs), list(outputs))
}

/// An `f32` tensor copied out of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorF32 {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Vec<f32>,
}

/// The named outputs of one [`LoadedSession::run`], owned by the caller: a KV cache is
/// fed back into the next run as it is, without a copy.
#[derive(Debug)]
pub struct RunOutputs {
    model: String,
    values: Vec<(String, Option<DynValue>)>,
}

impl RunOutputs {
    /// Takes output `name` out (an error if there is none or it was taken).
    pub fn take(&mut self, name: &str) -> Result<DynValue, ModelError> {
        self.values
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.take())
            .ok_or_else(|| ModelError::Invalid(format!("{} produced no output `{name}`", self.model)))
    }

    /// Output `name` as an `f32` tensor: its shape and elements.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, &[f32]), ModelError> {
        let value = self
            .values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
            .ok_or_else(|| ModelError::Invalid(format!("{} produced no output `{name}`", self.model)))?;
        view_f32(value, name)
    }
}

/// An owned `f32` tensor of `shape` (a dimension may be 0, e.g. an empty KV cache).
pub fn tensor_f32(shape: &[usize], data: Vec<f32>) -> Result<DynValue, ModelError> {
    check_len(shape, data.len())?;
    Tensor::from_array((shape.to_vec(), data))
        .map(|t| t.into_dyn())
        .map_err(|e| ModelError::ort("creating an f32 tensor", e))
}

/// An owned `i64` tensor of `shape`.
pub fn tensor_i64(shape: &[usize], data: Vec<i64>) -> Result<DynValue, ModelError> {
    check_len(shape, data.len())?;
    Tensor::from_array((shape.to_vec(), data))
        .map(|t| t.into_dyn())
        .map_err(|e| ModelError::ort("creating an i64 tensor", e))
}

fn check_len(shape: &[usize], len: usize) -> Result<(), ModelError> {
    let expected: usize = shape.iter().product();
    if expected == len {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "tensor of shape {shape:?} needs {expected} values, got {len}"
        )))
    }
}

/// The shape and elements of an `f32` tensor value (`what` names it in errors).
pub fn view_f32<'v>(value: &'v DynValue, what: &str) -> Result<(Vec<usize>, &'v [f32]), ModelError> {
    let (shape, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| ModelError::ort(format!("reading `{what}` as f32"), e))?;
    Ok((shape.iter().map(|&d| d.max(0) as usize).collect(), data))
}

/// A model loaded into a session whose inputs and outputs matched the caller's [`IoSpec`].
#[derive(Debug)]
pub struct LoadedSession {
    session: Session,
    path: PathBuf,
    provider: ActiveProvider,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    fallback: Option<String>,
    /// CUDA device ordinal (0 on the CPU), for the memory outputs are bound to.
    device_id: u32,
}

impl LoadedSession {
    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The provider the session runs on (the `provider` metrics label).
    pub fn provider(&self) -> ActiveProvider {
        self.provider
    }

    /// Why `auto` ended up on the CPU, when it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The model's actual inputs.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The model's actual outputs.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The underlying `ort` session, for families that need more than [`run_f32`](Self::run_f32)
    /// (integer inputs, KV caches, I/O binding).
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Runs the model on named values of any type (owned tensors from [`tensor_f32`] /
    /// [`tensor_i64`], or outputs of an earlier run) and returns every output, owned.
    pub fn run(&mut self, inputs: Vec<(String, SessionInputValue<'_>)>) -> Result<RunOutputs, ModelError> {
        let model = self.path.display().to_string();
        let results = self
            .session
            .run(inputs)
            .map_err(|e| ModelError::ort(format!("running {model}"), e))?;
        let values = results
            .into_iter()
            .map(|(name, value)| (name.to_string(), Some(value)))
            .collect();
        Ok(RunOutputs { model, values })
    }

    /// [`run`](Self::run) through an I/O binding: the outputs named in `keep_on_device` stay
    /// in the provider's memory (the GPU's under CUDA), so that a later run takes them as
    /// inputs where they are (a KV cache fed back each step); every other output is copied
    /// to host memory. Host inputs are copied to the provider's memory once, when bound; an
    /// input that an earlier run kept on the device is used without a copy. On the CPU the
    /// provider's memory is host memory and nothing is copied either way. An output kept on
    /// a GPU cannot be read on the host ([`RunOutputs::f32`] fails for it); feed it to a run.
    ///
    /// `inputs` may be owned or borrowed (`(String, &DynValue)`: a value fed to many runs,
    /// such as a cross-attention cache, stays the caller's).
    pub fn run_bound<V: std::borrow::Borrow<DynValue>>(
        &mut self,
        inputs: Vec<(String, V)>,
        keep_on_device: &[&str],
    ) -> Result<RunOutputs, ModelError> {
        let model = self.path.display().to_string();
        let ctx = |what: &str| format!("{what} of {model}");
        let host = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput)
            .map_err(|e| ModelError::ort(ctx("describing host memory for the outputs"), e))?;
        let device = match self.provider {
            ActiveProvider::Cpu => None,
            ActiveProvider::Cuda => Some(
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    self.device_id as i32,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .map_err(|e| ModelError::ort(ctx("describing CUDA memory for the outputs"), e))?,
            ),
        };
        let mut binding = self
            .session
            .create_binding()
            .map_err(|e| ModelError::ort(ctx("creating an I/O binding"), e))?;
        for (name, value) in &inputs {
            binding
                .bind_input(name.as_str(), value.borrow())
                .map_err(|e| ModelError::ort(ctx(&format!("binding input `{name}`")), e))?;
        }
        for out in &self.outputs {
            let memory = match &device {
                Some(device) if keep_on_device.contains(&out.name.as_str()) => device,
                _ => &host,
            };
            binding
                .bind_output_to_device(out.name.as_str(), memory)
                .map_err(|e| ModelError::ort(ctx(&format!("binding output `{}`", out.name)), e))?;
        }
        let results = self
            .session
            .run_binding(&binding)
            .map_err(|e| ModelError::ort(format!("running {model} (I/O bound)"), e))?;
        let values = results
            .into_iter()
            .map(|(name, value)| (name.to_string(), Some(value)))
            .collect();
        Ok(RunOutputs { model, values })
    }

    /// `value`, a host tensor, placed in the provider's memory once, for an input that stays
    /// the same over many [`run_bound`](Self::run_bound) calls (SD's text conditioning over
    /// the denoising steps, fed borrowed): under CUDA one host→device copy, after which
    /// binding it copies nothing; on the CPU, whose provider memory is host memory, `value`
    /// as it is.
    pub fn to_provider(&self, value: DynValue) -> Result<DynValue, ModelError> {
        match self.provider {
            ActiveProvider::Cpu => Ok(value),
            ActiveProvider::Cuda => {
                let what = || {
                    format!(
                        "copying an input of {} to CUDA device {}",
                        self.path.display(),
                        self.device_id
                    )
                };
                let tensor = value
                    .downcast::<DynTensorValueType>()
                    .map_err(|e| ModelError::ort(what(), e))?;
                let on_device = tensor
                    .to(AllocationDevice::CUDA, self.device_id as i32)
                    .map_err(|e| ModelError::ort(what(), e))?;
                Ok(on_device.into_dyn())
            }
        }
    }

    /// Runs the model on `f32` inputs `(name, shape, data)` and copies out the named `f32`
    /// outputs, in the order asked.
    pub fn run_f32(
        &mut self,
        inputs: &[(&str, &[usize], &[f32])],
        outputs: &[&str],
    ) -> Result<Vec<TensorF32>, ModelError> {
        let model = self.path.display().to_string();
        let mut feed = Vec::with_capacity(inputs.len());
        for (name, shape, data) in inputs {
            let expected: usize = shape.iter().product();
            if expected != data.len() {
                return Err(ModelError::Invalid(format!(
                    "input `{name}` of {model}: shape {shape:?} needs {expected} values, got {}",
                    data.len()
                )));
            }
            let tensor = TensorRef::from_array_view((shape.to_vec(), *data))
                .map_err(|e| ModelError::ort(format!("input `{name}` of {model}"), e))?;
            feed.push((*name, tensor));
        }
        let results = self
            .session
            .run(feed)
            .map_err(|e| ModelError::ort(format!("running {model}"), e))?;
        let mut out = Vec::with_capacity(outputs.len());
        for name in outputs {
            let value = results
                .get(*name)
                .ok_or_else(|| ModelError::Invalid(format!("{model} produced no output `{name}`")))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| ModelError::ort(format!("output `{name}` of {model}"), e))?;
            out.push(TensorF32 {
                shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                data: data.to_vec(),
            });
        }
        Ok(out)
    }
}

/// Set once the `auto` → CPU warning has been logged, so it appears once per process.
static CPU_FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// Loads `path` with `options`, checking its tensors against `expect`.
///
/// Errors: [`ModelError::ModelNotFound`] (path and set-up command),
/// [`ModelError::IoMismatch`] (file, expected and actual tensors),
/// [`ModelError::CudaUnavailable`] for `provider = "cuda"` without CUDA, and runtime errors.
/// With `provider = "auto"` a CUDA failure falls back to the CPU with one `warn!` per process.
pub fn load_session(
    path: impl AsRef<Path>,
    options: &SessionOptions,
    expect: &IoSpec,
) -> Result<LoadedSession, ModelError> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(ModelError::ModelNotFound {
            path: path.to_path_buf(),
        });
    }
    load(path, None, options, expect)
}

/// [`load_session`] for a model that runs a batch of inputs in one call: an export that
/// fixed its batch dimension to 1 is opened first ([`crate::batchdim::open_batch_dim`]) and
/// loaded from memory; one with a dynamic batch is loaded as it is. Only for graphs known
/// to hold no batch-1 constant inside (the caller tests batched against unbatched outputs).
pub fn load_session_batched(
    path: impl AsRef<Path>,
    options: &SessionOptions,
    expect: &IoSpec,
) -> Result<LoadedSession, ModelError> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(ModelError::ModelNotFound {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| ModelError::Invalid(format!("reading {}: {e}", path.display())))?;
    let opened = crate::batchdim::open_batch_dim(&bytes).map_err(|e| {
        ModelError::Invalid(format!(
            "{} is not an ONNX model this loader can read ({e}); re-run `scripts/setup-assets` or the export",
            path.display()
        ))
    })?;
    load(path, opened.as_deref(), options, expect)
}

/// [`load_session`] of `bytes`, a copy of the model at `path` that the caller rewrote
/// (e.g. [`crate::batchdim::open_batch_inside`]); errors and logs name `path`.
pub fn load_session_rewritten(
    path: impl AsRef<Path>,
    bytes: &[u8],
    options: &SessionOptions,
    expect: &IoSpec,
) -> Result<LoadedSession, ModelError> {
    load(path.as_ref(), Some(bytes), options, expect)
}

/// Loads `path` (or `bytes`, a rewritten copy of it, when given).
fn load(
    path: &Path,
    bytes: Option<&[u8]>,
    options: &SessionOptions,
    expect: &IoSpec,
) -> Result<LoadedSession, ModelError> {
    let rt = runtime()?;
    let (session, provider, fallback) = match options.provider {
        Provider::Cpu => (commit(rt, path, bytes, options, false)?, ActiveProvider::Cpu, None),
        Provider::Cuda => {
            let session =
                cuda_session(rt, path, bytes, options).map_err(|reason| ModelError::CudaUnavailable { reason })?;
            (session, ActiveProvider::Cuda, None)
        }
        Provider::Auto => match cuda_session(rt, path, bytes, options) {
            Ok(session) => (session, ActiveProvider::Cuda, None),
            Err(reason) => {
                if !CPU_FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        model = %path.display(),
                        reason = %reason,
                        "CUDA is not available; running ONNX models on the CPU \
                         (logged once per process; `scripts/setup-assets --gpu` enables CUDA)"
                    );
                }
                let session = commit(rt, path, bytes, options, false)?;
                (session, ActiveProvider::Cpu, Some(reason))
            }
        },
    };

    let inputs = describe(session.inputs());
    let outputs = describe(session.outputs());
    let problems = expect.problems(&inputs, &outputs);
    if !problems.is_empty() {
        return Err(ModelError::IoMismatch {
            path: path.to_path_buf(),
            problems,
            expected: io_str(&expect.inputs, &expect.outputs),
            actual: io_str(&inputs, &outputs),
        });
    }
    tracing::debug!(model = %path.display(), provider = %provider, "loaded model");
    Ok(LoadedSession {
        session,
        path: path.to_path_buf(),
        provider,
        inputs,
        outputs,
        fallback,
        device_id: options.device_id,
    })
}

/// A session on CUDA, or the reason there can't be one.
fn cuda_session(rt: &Runtime, path: &Path, bytes: Option<&[u8]>, options: &SessionOptions) -> Result<Session, String> {
    if !rt.has_cuda() {
        return Err(format!(
            "the ONNX Runtime library at {} (version {}) has no CUDA execution provider \
             (providers: {})",
            rt.dylib_path().display(),
            rt.version(),
            rt.providers().join(", ")
        ));
    }
    if let Some(dir) = rt.cuda_lib_dir() {
        ep::cuda::preload_dylibs(Some(dir), Some(dir))
            .map_err(|e| format!("loading CUDA libraries from {}: {e}", dir.display()))?;
    }
    // ONNX Runtime's messages end with a newline; the reason is embedded in a sentence.
    commit(rt, path, bytes, options, true).map_err(|e| e.to_string().trim_end().to_string())
}

fn commit(
    rt: &Runtime,
    path: &Path,
    bytes: Option<&[u8]>,
    options: &SessionOptions,
    cuda: bool,
) -> Result<Session, ModelError> {
    let model = path.display().to_string();
    let mut builder = session_builder(rt, &model, options, cuda)?;
    match bytes {
        Some(bytes) => builder.commit_from_memory(bytes),
        None => builder.commit_from_file(path),
    }
    .map_err(|e| ModelError::ort(format!("loading model {model}"), e))
}

/// A session builder with `options` (threads; with `cuda`, the CUDA provider on the device).
fn session_builder(
    rt: &Runtime,
    model: &str,
    options: &SessionOptions,
    cuda: bool,
) -> Result<SessionBuilder, ModelError> {
    let ctx = |what: &str| format!("{what} for {model}");
    let mut builder: SessionBuilder =
        Session::builder(rt.environment()).map_err(|e| ModelError::ort(ctx("creating a session"), e))?;
    if let Some(threads) = options.intra_threads {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| ModelError::ort(ctx("setting intra_threads"), e))?;
    }
    if cuda {
        let mut cuda_ep = ep::CUDA::default().with_device_id(options.device_id as i32);
        if let Some(limit) = options.arena_limit_bytes {
            cuda_ep = cuda_ep.with_memory_limit(limit);
        }
        builder = builder
            .with_execution_providers([cuda_ep.build().error_on_failure()])
            .map_err(|e| ModelError::ort(ctx("registering the CUDA execution provider"), e))?;
    }
    Ok(builder)
}

fn describe(outlets: &[ort::value::Outlet]) -> Vec<TensorSpec> {
    outlets
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => TensorSpec {
                name: o.name().to_string(),
                element: ElementType::from_ort(*ty),
                shape: shape.iter().copied().collect(),
            },
            other => TensorSpec {
                name: o.name().to_string(),
                element: ElementType::Other(match other {
                    ValueType::Sequence(_) => "sequence",
                    ValueType::Map { .. } => "map",
                    _ => "optional",
                }),
                shape: Vec::new(),
            },
        })
        .collect()
}

/// A session for a graph built in code with ort's model editor (`ort::editor`), on `provider`
/// (that of the model it serves, already loaded: no fallback of its own); `name` stands for
/// the file in errors and logs. Its inputs and outputs are the graph's.
pub(crate) fn load_editor_model(
    name: &str,
    model: ort::editor::Model,
    options: &SessionOptions,
    provider: ActiveProvider,
) -> Result<LoadedSession, ModelError> {
    let builder = session_builder(runtime()?, name, options, provider == ActiveProvider::Cuda)?;
    let session = model
        .into_session(&builder)
        .map_err(|e| ModelError::ort(format!("creating the session of {name}"), e))?;
    Ok(LoadedSession {
        inputs: describe(session.inputs()),
        outputs: describe(session.outputs()),
        session,
        path: PathBuf::from(name),
        provider,
        fallback: None,
        device_id: options.device_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_dimensions_match_any_size() {
        let want = TensorSpec::f32("x", &[1, 3, -1, -1]);
        assert_eq!(want.mismatch("input", &TensorSpec::f32("x", &[1, 3, 64, 48])), None);
        assert_eq!(want.mismatch("input", &TensorSpec::f32("x", &[-1, 3, 64, 48])), None);
        let msg = want.mismatch("input", &TensorSpec::f32("x", &[1, 4, 64, 48]));
        assert_eq!(
            msg.as_deref(),
            Some("input `x` has shape [1, 4, 64, 48], expected [1, 3, -1, -1]")
        );
        let msg = want.mismatch("input", &TensorSpec::new("x", ElementType::I64, &[1, 3]));
        assert_eq!(msg.as_deref(), Some("input `x` has element type i64, expected f32"));
    }
}
