//! The dataflow engine: graph files, validation, the stage API and the bounded
//! actor runtime. It knows nothing of ONNX or of any particular stage kind.
//!
//! # Layout
//! - [`message`]: frames, parts and shared payloads.
//! - [`stage`]: the [`stage::StageKind`], [`stage::Stage`] and [`stage::Source`] traits.
//! - [`registry`]: stage kinds by name, type-erased.
//! - [`sweep_role`]: what a kind's stages mean to `dataflow sweep`, declared by the kind.
//! - [`tagged`]: configs with one set of keys per model (`model = "..."`).
//! - [`graph`]: graph files with positions, overrides and diagnostics.
//! - [`plan`]: validation into a [`plan::Plan`].
//! - [`partition`]: one machine's part of a distributed graph, with bridges for the
//!   edges that cross machines (the transport itself lives outside the engine).
//! - [`render`]: `dot` and `mermaid` pictures of a plan, and the graph JSON Schema.
//! - [`runtime`]: actors, bounded edges, joins, replicas, shutdown.

mod edge;
pub mod graph;
mod join;
pub mod message;
pub mod partition;
pub mod plan;
pub mod registry;
pub mod render;
pub mod runtime;
pub mod stage;
pub mod sweep_role;
pub mod tagged;

pub use graph::{Diagnostic, Diagnostics, GraphSource, Override};
pub use message::{FieldType, Fields, FrameId, Image, Message, Part, PixelFormat, Rect, Value};
pub use partition::{BridgeError, Bridges, CrossingEdge, PartitionError, Placement};
pub use plan::{plan, MachineSpec, Plan, PoolSpec, Restart, TlsSpec, WhenFull};
pub use registry::Registry;
pub use runtime::{run, RunError, RunEvent, RunOptions, RunSummary};
pub use stage::{
    check_duration_s, check_range, check_range_opt, check_timeout_ms, BuildContext, Built, Field, Input, Joined,
    KeyProblem, OutPort, Outputs, PortId, Ports, Release, Role, Source, SourceItem, Stage, StageError, StageKind,
    StopFlag, MAX_DURATION_S,
};
pub use sweep_role::SweepRole;
