//! Validation: from a [`GraphSource`] to a [`Plan`], reporting every error at once.
//!
//! # Passes
//! [`plan`] runs named passes over the graph file; each adds what it finds wrong to
//! one list of diagnostics and hands the next pass what it could make sense of, so a
//! graph with five mistakes gets five messages, in this order:
//!
//! 1. [`tables`]: the graph-level tables (`[graph]`, `[defaults]`, `[metrics]`,
//!    `[machines]`, `[channel]`) and the top-level names.
//! 2. [`reserved`]: the keys every stage may carry (`mailbox`, `when_full`, `replicas`,
//!    `restart`, `machine`, `inputs`, `batch`), with `[defaults]` filled in.
//! 3. [`kinds`]: each stage's kind and its own keys, deserialised by the kind
//!    (`[channel]` keys inherited by channel kinds); `batch` only where the kind
//!    batches and the stage does not join ([`batch`]).
//! 4. [`placement`]: `[pools]`, and `machine` names a `[machines.<name>]` table, a
//!    list of them (an anonymous pool) or a `[pools.<name>]`; once one stage is placed,
//!    all are; a source runs on one machine, and no edge joins two pools.
//! 5. [`inputs`]: every input names a stage and one of its output ports.
//! 6. [`topology`]: every source and transform has a consumer; no cycle; the
//!    topological order.
//! 7. [`fields`]: the fields each stage needs arrive on its inputs.
//!
//! Only a graph without errors is assembled into a [`Plan`] (stages in topological
//! order, sources numbered).

mod batch;
mod fields;
mod inputs;
mod kinds;
mod placement;
#[cfg(test)]
mod pool_partition;
mod pools;
mod reserved;
mod tables;
#[cfg(test)]
mod testkit;
mod topology;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::graph::{did_you_mean, Diagnostic, Diagnostics, GraphSource};
use crate::registry::{Configured, Registry};
use crate::stage::{BuildContext, Ports, Role};

pub use batch::{Batch, MAX_BATCH, MAX_BATCH_WAIT_MS};

/// What a producer does when a consumer's edge is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: backpressure up to the source (default).
    Block,
    /// Refuse the new message and count it.
    DropNewest,
    /// Discard the oldest queued message and count it (latest-only, for live sources).
    DropOldest,
}

/// What happens when a stage panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// The run stops with an error naming the stage and the frame.
    Never,
    /// The stage is rebuilt; the frame in flight is reported as failed (default).
    OnFailure,
}

/// Keys every stage may carry, next to its kind's own keys.
pub const RESERVED_KEYS: &[&str] = &[
    "kind",
    "inputs",
    "mailbox",
    "when_full",
    "replicas",
    "restart",
    "machine",
    "batch",
];
pub(super) const TOP_LEVEL: &[&str] = &["graph", "defaults", "metrics", "channel", "stage", "machines", "pools"];
pub(super) const GRAPH_KEYS: &[&str] = &["name", "seed", "description"];
pub(super) const DEFAULT_KEYS: &[&str] = &["mailbox", "when_full", "restart", "machine"];
pub(super) const METRICS_KEYS: &[&str] = &["listen"];

/// How one machine of a distributed graph joins the others (`[machines.<name>]`, DESIGN §7).
/// The engine only checks the keys; a transport (zenoh, in `dataflow-actors`) gives them meaning.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    /// Endpoints this machine listens on, e.g. `["tcp/0.0.0.0:7447"]`.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Endpoints this machine connects to. When empty, it connects to the other
    /// machines' `listen` endpoints that name a host (not `0.0.0.0` or `[::]`).
    #[serde(default)]
    pub connect: Vec<String>,
    /// A router to go through instead of peer-to-peer, e.g. `tcp/router.lan:7447`.
    #[serde(default)]
    pub router: Option<String>,
    /// TLS certificates for `tls/...` endpoints, when given.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

/// TLS files of a machine (paths relative to the graph file's folder or the current one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// Certificate of the authority that signed the peers' certificates (PEM).
    #[serde(default)]
    pub root_ca: Option<PathBuf>,
    /// This machine's certificate (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// This machine's private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Accepted so that graphs written for earlier versions still load; it changes
    /// nothing: TLS between our machines is always mutual (each side presents its
    /// certificate and checks the other's against `root_ca`).
    #[serde(default)]
    pub mtls: bool,
}

/// A pool of machines that share the stages placed on it (`machine = [...]` or
/// `machine = { pool = "<name>" }` with `[pools.<name>]`, DESIGN §7): each frame goes
/// to one member. The engine checks the keys; a transport gives them meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// `[pools.<name>]`'s name, or `pool-<stage id>` for an anonymous `machine = [...]`
    /// (the first stage, in file order, that wrote that list).
    pub name: String,
    /// Static members, each described in `[machines]` (may be empty when `min`/`max` is used).
    pub machines: Vec<String>,
    /// Members that must be present before frames flow (default 1).
    pub min: usize,
    /// Most members at once; `usize::MAX` when not given.
    pub max: usize,
    /// Whether `min` or `max` was given: then machines that are not listed may join
    /// at run time (`dataflow run G --machine <m> --pool <name>`).
    pub dynamic: bool,
    /// Endpoints a member that is not in `[machines]` connects to.
    pub connect: Vec<String>,
    /// A member whose oldest unacknowledged frame is older than this is considered dead.
    pub ack_timeout: std::time::Duration,
}

/// `ack_timeout_ms` of a pool when not given.
pub const DEFAULT_POOL_ACK_TIMEOUT_MS: u64 = 2000;

/// Default edge capacity in messages.
pub const DEFAULT_MAILBOX: usize = 4;

/// An input edge of a planned stage.
#[derive(Debug, Clone)]
pub struct InputEdge {
    /// Index of the producing stage in [`Plan::stages`].
    pub from: usize,
    /// Output port of the producer.
    pub port: usize,
    /// The reference as written (`split.tile0`).
    pub text: String,
}

/// A stage ready to be spawned.
#[derive(Clone)]
pub struct PlannedStage {
    /// Stage id.
    pub id: String,
    /// Kind name.
    pub kind: String,
    /// Role of the kind.
    pub role: Role,
    /// The deserialised config.
    pub config: Arc<dyn Configured>,
    /// Ports for that config.
    pub ports: Ports,
    /// Inputs in the order of `inputs`.
    pub inputs: Vec<InputEdge>,
    /// Consumers per output port: `(stage index, input index)`.
    pub consumers: Vec<Vec<(usize, usize)>>,
    /// Capacity of each input edge.
    pub mailbox: usize,
    /// Policy of each input edge.
    pub when_full: WhenFull,
    /// Number of replicas.
    pub replicas: usize,
    /// Panic policy.
    pub restart: Restart,
    /// Placement (DESIGN §7): the stage's `machine`, else `[defaults] machine`.
    pub machine: Option<String>,
    /// `batch = { max, wait_ms }`, when the stage batches (`max` > 1).
    pub batch: Option<Batch>,
    /// Stream number of a source (the `stream` of its frame ids): the same in a whole
    /// graph and in each machine's part of it, so frame ids and seeded noise agree.
    pub stream: u32,
}

/// A validated graph.
#[derive(Clone)]
pub struct Plan {
    /// Graph name.
    pub name: String,
    /// Graph seed.
    pub seed: u64,
    /// The graph file.
    pub file: PathBuf,
    /// Folder of the graph file.
    pub graph_dir: PathBuf,
    /// `[metrics] listen`, if given.
    pub metrics_listen: Option<String>,
    /// `[channel]` defaults as given.
    pub channel: toml::Table,
    /// Stages in a topological order (producers before consumers).
    pub stages: Vec<PlannedStage>,
    /// `[machines.<name>]` tables (empty for a one-machine graph).
    pub machines: BTreeMap<String, MachineSpec>,
    /// Pools by name: `[pools.<name>]` and the anonymous `machine = [...]` lists
    /// (empty when no stage is placed on a pool).
    pub pools: BTreeMap<String, PoolSpec>,
}

impl Plan {
    /// A build context for replica `replica` of stage `i`.
    pub fn context(&self, i: usize, replica: usize, out_dir: &std::path::Path) -> BuildContext {
        let s = &self.stages[i];
        BuildContext {
            stage: s.id.clone(),
            kind: s.kind.clone(),
            replica,
            replicas: s.replicas,
            graph: self.name.clone(),
            seed: self.seed,
            out_dir: out_dir.to_path_buf(),
            graph_dir: self.graph_dir.clone(),
            inputs: s.inputs.iter().map(|e| e.text.clone()).collect(),
            restart: s.restart,
            outputs: s.ports.outputs.clone(),
        }
    }

    /// Index of the stage called `id`.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.id == id)
    }
}

/// A stage as the passes see it: what could be read of it so far.
struct Raw {
    id: String,
    /// Set by [`kinds`] when the kind is known.
    kind: Option<String>,
    role: Option<Role>,
    /// Set by [`kinds`] when the kind's keys deserialised.
    config: Option<Arc<dyn Configured>>,
    ports: Option<Ports>,
    /// Inputs as written (by [`reserved`]).
    inputs: Vec<String>,
    /// Inputs resolved to stages and ports (by [`inputs`]).
    edges: Vec<InputEdge>,
    mailbox: usize,
    when_full: WhenFull,
    replicas: usize,
    restart: Restart,
    /// `machine` as written (by [`reserved`]), else `[defaults] machine`.
    machine: Option<reserved::MachineRef>,
    /// The placement unit (by [`placement`]): a machine's name, or a pool's.
    unit: Option<String>,
    /// `batch` as read (by [`reserved`]), refused by [`kinds`] where the kind cannot batch.
    batch: Option<Batch>,
}

/// The graph being validated and the diagnostics found so far.
struct Ctx<'a> {
    src: &'a GraphSource,
    errors: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    fn new(src: &'a GraphSource) -> Self {
        Ctx {
            src,
            errors: Vec::new(),
        }
    }

    fn err(&mut self, path: &[&str], stage: Option<&str>, message: String, help: Option<String>) {
        self.errors.push(Diagnostic {
            file: self.src.path.clone(),
            location: self.src.locate(path),
            stage: stage.map(str::to_string),
            message,
            help,
        });
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

/// A top-level table of the graph file, or an empty one.
fn table_of(v: &toml::Table, k: &str) -> toml::Table {
    v.get(k).and_then(|t| t.as_table()).cloned().unwrap_or_default()
}

/// Validates a graph against the registry: all errors at once, or a [`Plan`].
pub fn plan(src: &GraphSource, registry: &Registry) -> Result<Plan, Diagnostics> {
    let mut cx = Ctx::new(src);
    let header = tables::check(&mut cx, registry);
    let stages_t = table_of(&src.values, "stage");
    let mut raws = read_stages(&mut cx, registry, &header, &stages_t);
    let pools = placement::check(&mut cx, &mut raws, &header, &stages_t);
    inputs::resolve(&mut cx, &mut raws);
    placement::pool_edges(&mut cx, &raws, &pools);
    let consumers = topology::consumers(&mut cx, &raws);
    let order = topology::order(&mut cx, &raws);
    fields::check(&mut cx, &mut raws, &order);
    if !cx.errors.is_empty() {
        return Err(Diagnostics(cx.errors));
    }
    Ok(assemble(src, header, pools, &raws, &order, &consumers))
}

/// Passes 2 and 3 over every stage: reserved keys, then the kind and its own keys.
fn read_stages(cx: &mut Ctx, registry: &Registry, header: &tables::Header, stages_t: &toml::Table) -> Vec<Raw> {
    let ids = stage_ids(cx, stages_t);
    let kind_names = registry.names();
    let mut raws: Vec<Raw> = Vec::new();
    for id in &ids {
        let Some(t) = stages_t.get(id).and_then(|t| t.as_table()) else {
            cx.err(
                &["stage", id],
                Some(id),
                "a stage must be a table `[stage.<id>]`".into(),
                None,
            );
            continue;
        };
        let mut raw = reserved::stage(cx, id, t, &header.defaults);
        kinds::configure(cx, registry, &kind_names, t, &header.channel, &mut raw);
        raws.push(raw);
    }
    raws
}

/// Stage ids in file order, then those only an override added; an error when there are none.
fn stage_ids(cx: &mut Ctx, stages_t: &toml::Table) -> Vec<String> {
    let mut ids = cx.src.stage_ids();
    for k in stages_t.keys() {
        if !ids.contains(k) {
            ids.push(k.clone()); // added by an override only
        }
    }
    if ids.is_empty() {
        cx.err(
            &[],
            None,
            "the graph has no stages".into(),
            Some("add at least a source and a sink: [stage.<id>] with kind = \"...\"".into()),
        );
    }
    ids
}

/// The plan of a graph that passed every check: stages in topological `order`, edges
/// renumbered to it, sources numbered from the last (the runtime's spawn order).
fn assemble(
    src: &GraphSource,
    header: tables::Header,
    pools: BTreeMap<String, PoolSpec>,
    raws: &[Raw],
    order: &[usize],
    consumers: &[Vec<Vec<(usize, usize)>>],
) -> Plan {
    let mut pos = vec![0usize; raws.len()];
    for (p, &i) in order.iter().enumerate() {
        pos[i] = p;
    }
    let mut stages: Vec<PlannedStage> = Vec::with_capacity(raws.len());
    let mut next_stream = order.iter().filter(|&&i| raws[i].role == Some(Role::Source)).count() as u32;
    for &i in order {
        let r = &raws[i];
        let (Some(config), Some(ports), Some(role), Some(kind)) =
            (r.config.clone(), r.ports.clone(), r.role, r.kind.clone())
        else {
            continue;
        };
        stages.push(PlannedStage {
            id: r.id.clone(),
            kind,
            role,
            config,
            ports,
            inputs: r
                .edges
                .iter()
                .map(|e| InputEdge {
                    from: pos[e.from],
                    port: e.port,
                    text: e.text.clone(),
                })
                .collect(),
            consumers: consumers[i]
                .iter()
                .map(|c| c.iter().map(|&(s, k)| (pos[s], k)).collect())
                .collect(),
            mailbox: r.mailbox,
            when_full: r.when_full,
            replicas: r.replicas,
            restart: r.restart,
            machine: r.unit.clone(),
            batch: r.batch.filter(|b| b.max > 1),
            stream: if r.role == Some(Role::Source) {
                next_stream = next_stream.saturating_sub(1);
                next_stream
            } else {
                0
            },
        });
    }
    let graph_dir = src.path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    Plan {
        name: header.name,
        seed: header.seed,
        file: src.path.clone(),
        graph_dir,
        metrics_listen: header.metrics_listen,
        channel: header.channel,
        stages,
        machines: header.machines,
        pools,
    }
}

/// Second pass: resource checks of every stage (model files, devices), all at once.
pub fn check_resources(plan: &Plan, out_dir: &std::path::Path) -> Result<(), Diagnostics> {
    let mut errors = Vec::new();
    for (i, s) in plan.stages.iter().enumerate() {
        for m in s.config.check(&plan.context(i, 0, out_dir)) {
            errors.push(Diagnostic {
                file: plan.file.clone(),
                location: None,
                stage: Some(s.id.clone()),
                message: m,
                help: None,
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(errors))
    }
}

/// Reports `key` of `[at]` unless it is one of `known`.
fn check_keys(cx: &mut Ctx, table: &toml::Table, known: &[&str], at: &str) {
    for k in table.keys() {
        if !known.contains(&k.as_str()) {
            let hint = did_you_mean(k, known.iter().copied());
            cx.err(
                &[at, k],
                None,
                format!("unknown key `{k}` in [{at}]"),
                Some(match hint {
                    Some(h) => format!("did you mean `{h}`? known keys: {}", known.join(", ")),
                    None => format!("known keys: {}", known.join(", ")),
                }),
            );
        }
    }
}
