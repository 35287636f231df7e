//! `python`: a stage written in Python, run in a worker process per replica.
//!
//! The graph names a class deriving from `dataflow_stage.Stage` (the package in the
//! repository's `python/` folder) in a `script` or `module`, the interpreter, the
//! `args` handed to its `setup`, and the output ports and fields it adds, so that
//! validation checks the wiring before anything starts:
//!
//! ```toml
//! [stage.caption]
//! kind = "python"
//! script = "stages/colour_histogram.py"
//! class = "ColourHistogram"
//! outputs = { out = ["caption: text"] }
//! requires = ["image: image"]
//! inputs = ["src"]
//! ```
//!
//! A field is `"name: type"` (`image`, `text`, `texts`, `bytes`, `number`, `rect`,
//! `record`, `opaque`), checked against the producers and consumers when the graph is
//! validated and, in debug builds, against what the class returns; a bare `"name"` is of
//! any type (the class decides).
//!
//! `batch = { max = 8, wait_ms = 20 }` hands the class's `process_batch` up to 8 frames
//! in one call (one request to the worker; per-frame outputs and errors).
//! `join_timeout_ms = N` makes it a joining stage (the class gets one frame holding the
//! fields of every input's parts and `lost_inputs`); `needs = ["torch"]` adds modules to
//! the pre-run check.
//!
//! # Metrics
//! The engine's stage metrics (`monitoring/SPEC.md`) apply as to any stage; a dead or
//! hung worker that the replica replaces counts as a restart of the stage (run
//! summary and `dataflow_stage_restarts_total`, see `stage.rs`). The time in the class's `process` is observed as
//! `dataflow_model_inference_seconds{model = <class>, provider = "python"}`; the
//! hand-over cost per frame (the call's time less that) as
//! `dataflow_python_ipc_seconds{stage}`, and its mean is logged when the stream ends
//! (`ipc_us_per_frame`).
//!
//! # Layout
//! - `config`: the keys, validation and the pre-run check (interpreter, script,
//!   syntax, class, numpy).
//! - `worker`: the worker process (start, one call at a time, stderr to the log, kill).
//! - `protocol`: length-prefixed JSON headers on the worker's stdin/stdout.
//! - `shm`: the shared-memory segments pixels and tensors cross by, without encoding.
//! - `tensor`: [`TensorF32`], how a float tensor (an embedding) rides on a message.
//! - `stage`: the replica's [`dataflow_engine::Stage`] and its failure semantics.

mod config;
mod protocol;
mod shm;
mod stage;
mod tensor;
mod worker;

use std::time::Duration;

use dataflow_engine::{BuildContext, Built, Field, FieldType, KeyProblem, OutPort, Ports, Role, StageError, StageKind};
use dataflow_monitoring::names;

pub use config::PythonConfig;
pub use tensor::TensorF32;

/// The `python` kind.
pub struct Python;

/// Output port names in port order: `out` first, then the others by name.
fn port_names(c: &PythonConfig) -> Vec<String> {
    if c.outputs.is_empty() {
        return vec!["out".into()];
    }
    let mut names: Vec<String> = c.outputs.keys().cloned().collect();
    names.sort_by_key(|n| n != "out");
    names
}

/// A field as the graph declares it: `"name: type"`, or `"name"` of any type.
fn field_of(entry: &str) -> Result<Field, String> {
    let Some((name, ty)) = entry.split_once(':') else {
        return Ok(Field::new(entry.trim(), FieldType::Any));
    };
    FieldType::parse(ty.trim())
        .map(|t| Field::new(name.trim(), t))
        .ok_or_else(|| {
            let known: Vec<&str> = FieldType::ALL.iter().map(|t| t.name()).collect();
            format!(
                "field `{entry}`: unknown type `{}`; write `name: type` with one of {}",
                ty.trim(),
                known.join(", ")
            )
        })
}

impl StageKind for Python {
    type Config = PythonConfig;
    const NAME: &'static str = "python";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Runs a Python class (dataflow_stage.Stage) in a worker process per replica; pixels cross by shared memory.";
    /// Under `batch`, the gathered frames go to the worker in one request and the
    /// class's `process_batch` gets them all.
    const BATCH: bool = true;

    fn ports(c: &Self::Config) -> Ports {
        let outputs = port_names(c)
            .iter()
            .map(|n| {
                let mut port = OutPort::forwarding(n);
                for f in c.outputs.get(n).into_iter().flatten().filter_map(|e| field_of(e).ok()) {
                    port = port.with(&f.name, f.ty);
                }
                if c.join_timeout_ms.is_some() {
                    // Parts that did not arrive in time, added by the stage.
                    port = port.with("lost_inputs", FieldType::Number);
                }
                port
            })
            .collect();
        let mut ports = Ports {
            outputs,
            requires: c.requires.iter().filter_map(|e| field_of(e).ok()).collect(),
            heavy: true,
            ..Ports::default()
        };
        ports.join = c.join_timeout_ms.map(|ms| Duration::from_millis(ms.max(1)));
        ports
    }

    fn validate(c: &Self::Config) -> Vec<KeyProblem> {
        let mut problems = config::validate(c);
        let outputs = c.outputs.values().flatten().map(|e| ("outputs", e));
        for (key, entry) in outputs.chain(c.requires.iter().map(|e| ("requires", e))) {
            if let Err(message) = field_of(entry) {
                problems.push(KeyProblem { key, message });
            }
        }
        problems
    }

    fn check(c: &Self::Config, ctx: &BuildContext) -> Vec<String> {
        config::check(c, ctx)
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let spawn = worker::Spawn {
            python: config::interpreter(c, ctx),
            target: config::target(c, ctx),
            class: c.class_name.clone(),
            pythonpath: config::pythonpath(),
            stage: ctx.stage.clone(),
            replica: ctx.replica,
            args: c.args.clone(),
            setup_timeout: Duration::from_secs_f64(c.setup_timeout_s),
        };
        let worker = worker::Worker::start(&spawn)?;
        let inference = metrics::histogram!(names::MODEL_INFERENCE_SECONDS,
            names::LABEL_MODEL => c.class_name.clone(), names::LABEL_PROVIDER => "python");
        Ok(Built::Stage(Box::new(stage::Run {
            spawn,
            worker,
            ports: port_names(c)
                .into_iter()
                .map(|n| ctx.output(&n).map(|id| (n, id)))
                .collect::<Result<_, _>>()?,
            timeout: Duration::from_secs_f64(c.timeout_s),
            restart: ctx.restart,
            inference,
            ipc_seconds: metrics::histogram!(names::PYTHON_IPC_SECONDS, names::LABEL_STAGE => ctx.stage.clone()),
            ipc: (0, 0.0),
        })))
    }
}
