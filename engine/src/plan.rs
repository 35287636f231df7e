//! Validation: from a [`GraphSource`] to a [`Plan`], reporting every error at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::graph::{did_you_mean, Diagnostic, Diagnostics, GraphSource};
use crate::registry::{Configured, Registry};
use crate::stage::{BuildContext, Ports, Role};

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
];
const TOP_LEVEL: &[&str] = &["graph", "defaults", "metrics", "channel", "stage", "machines"];
const GRAPH_KEYS: &[&str] = &["name", "seed", "description"];
const DEFAULT_KEYS: &[&str] = &["mailbox", "when_full", "restart", "machine"];
const METRICS_KEYS: &[&str] = &["listen"];

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
    /// Ask peers for a certificate too (mutual TLS).
    #[serde(default)]
    pub mtls: bool,
}

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
        }
    }

    /// Index of the stage called `id`.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.id == id)
    }
}

struct Raw {
    id: String,
    kind: Option<String>,
    role: Option<Role>,
    config: Option<Arc<dyn Configured>>,
    ports: Option<Ports>,
    inputs: Vec<String>,
    edges: Vec<InputEdge>,
    mailbox: usize,
    when_full: WhenFull,
    replicas: usize,
    restart: Restart,
    machine: Option<String>,
}

struct Ctx<'a> {
    src: &'a GraphSource,
    errors: Vec<Diagnostic>,
}

impl Ctx<'_> {
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

fn parse_enum<T: for<'de> Deserialize<'de>>(v: &toml::Value) -> Option<T> {
    T::deserialize(v.clone()).ok()
}

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

/// Validates a graph against the registry: all errors at once, or a [`Plan`].
pub fn plan(src: &GraphSource, registry: &Registry) -> Result<Plan, Diagnostics> {
    let mut cx = Ctx {
        src,
        errors: Vec::new(),
    };
    let v = &src.values;

    for k in v.keys() {
        if !TOP_LEVEL.contains(&k.as_str()) {
            let hint = did_you_mean(k, TOP_LEVEL.iter().copied());
            cx.err(
                &[k],
                None,
                format!("unknown table `[{k}]`"),
                Some(match hint {
                    Some(h) => format!("did you mean `[{h}]`?"),
                    None => format!("known tables: {}", TOP_LEVEL.join(", ")),
                }),
            );
        }
    }
    let empty = toml::Table::new();
    let table_of = |k: &str| v.get(k).and_then(|t| t.as_table()).unwrap_or(&empty);
    let graph_t = table_of("graph");
    let defaults_t = table_of("defaults");
    let metrics_t = table_of("metrics");
    let channel_t = table_of("channel").clone();
    check_keys(&mut cx, graph_t, GRAPH_KEYS, "graph");
    check_keys(&mut cx, defaults_t, DEFAULT_KEYS, "defaults");
    check_keys(&mut cx, metrics_t, METRICS_KEYS, "metrics");

    let stem = src
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "graph".into());
    let name = match graph_t.get("name") {
        None => stem,
        Some(toml::Value::String(s)) => s.clone(),
        Some(other) => {
            cx.err(
                &["graph", "name"],
                None,
                format!("`name` must be a string, found {}", type_name(other)),
                None,
            );
            stem
        }
    };
    let seed = match graph_t.get("seed") {
        None => 0,
        Some(toml::Value::Integer(i)) if *i >= 0 => *i as u64,
        Some(other) => {
            cx.err(
                &["graph", "seed"],
                None,
                format!("`seed` must be a non-negative integer, found {other}"),
                None,
            );
            0
        }
    };
    let metrics_listen = match metrics_t.get("listen") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(other) => {
            cx.err(
                &["metrics", "listen"],
                None,
                format!(
                    "`listen` must be a string like \"127.0.0.1:9464\", found {}",
                    type_name(other)
                ),
                None,
            );
            None
        }
    };
    let def_mailbox =
        reserved_usize(&mut cx, defaults_t.get("mailbox"), &["defaults", "mailbox"], None).unwrap_or(DEFAULT_MAILBOX);
    let def_when_full = reserved_enum(
        &mut cx,
        defaults_t.get("when_full"),
        &["defaults", "when_full"],
        None,
        "block | drop_newest | drop_oldest",
    )
    .unwrap_or(WhenFull::Block);
    let def_restart = reserved_enum(
        &mut cx,
        defaults_t.get("restart"),
        &["defaults", "restart"],
        None,
        "never | on_failure",
    )
    .unwrap_or(Restart::OnFailure);
    let def_machine = match defaults_t.get("machine") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(o) => {
            cx.err(
                &["defaults", "machine"],
                None,
                format!("`machine` must be a string, found {}", type_name(o)),
                None,
            );
            None
        }
    };
    let mut machines = BTreeMap::new();
    match v.get("machines") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, spec) in t {
                match serde_path_to_error::deserialize::<_, MachineSpec>(spec.clone()) {
                    Ok(m) => {
                        machines.insert(name.clone(), m);
                    }
                    Err(e) => {
                        let path = e.path().to_string();
                        let first = path.split('.').next().unwrap_or("").to_string();
                        let mut at = vec!["machines", name.as_str()];
                        if spec.as_table().is_some_and(|t| t.contains_key(&first)) {
                            at.push(&first);
                        }
                        cx.err(
                            &at,
                            None,
                            format!("machine `{name}`: {}", e.into_inner().message()),
                            Some(
                                "keys: listen = [\"tcp/0.0.0.0:7447\"], connect = [...], router = \"tcp/host:7447\", tls = { root_ca, cert, key, mtls }".into(),
                            ),
                        );
                    }
                }
            }
        }
        Some(o) => cx.err(
            &["machines"],
            None,
            format!(
                "`machines` must be a table of [machines.<name>] tables, found {}",
                type_name(o)
            ),
            None,
        ),
    }

    // Channel keys must be known to at least one channel kind.
    let channel_keys: BTreeSet<String> = registry
        .kinds()
        .filter(|k| k.channel())
        .flat_map(|k| k.keys())
        .collect();
    for k in channel_t.keys() {
        if !channel_keys.contains(k) {
            let hint = did_you_mean(k, channel_keys.iter().map(String::as_str));
            cx.err(
                &["channel", k],
                None,
                format!("unknown key `{k}` in [channel]"),
                Some(match hint {
                    Some(h) => format!("did you mean `{h}`?"),
                    None => format!(
                        "channel stages accept: {}",
                        channel_keys.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                }),
            );
        }
    }

    let stages_t = table_of("stage").clone();
    let mut ids = src.stage_ids();
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
        let mut raw = Raw {
            id: id.clone(),
            kind: None,
            role: None,
            config: None,
            ports: None,
            inputs: Vec::new(),
            edges: Vec::new(),
            mailbox: reserved_usize(&mut cx, t.get("mailbox"), &["stage", id, "mailbox"], Some(id))
                .unwrap_or(def_mailbox),
            when_full: reserved_enum(
                &mut cx,
                t.get("when_full"),
                &["stage", id, "when_full"],
                Some(id),
                "block | drop_newest | drop_oldest",
            )
            .unwrap_or(def_when_full),
            replicas: reserved_usize(&mut cx, t.get("replicas"), &["stage", id, "replicas"], Some(id)).unwrap_or(1),
            restart: reserved_enum(
                &mut cx,
                t.get("restart"),
                &["stage", id, "restart"],
                Some(id),
                "never | on_failure",
            )
            .unwrap_or(def_restart),
            machine: def_machine.clone(),
        };
        match t.get("machine") {
            None => {}
            Some(toml::Value::String(s)) => raw.machine = Some(s.clone()),
            Some(o) => cx.err(
                &["stage", id, "machine"],
                Some(id),
                format!("`machine` must be a string, found {}", type_name(o)),
                None,
            ),
        }
        match t.get("inputs") {
            None => {}
            Some(toml::Value::Array(a)) => {
                for (i, item) in a.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => raw.inputs.push(s.clone()),
                        o => cx.err(
                            &["stage", id, "inputs", &i.to_string()],
                            Some(id),
                            format!("an input must be a string like \"split.tile0\", found {}", type_name(o)),
                            None,
                        ),
                    }
                }
            }
            Some(o) => cx.err(
                &["stage", id, "inputs"],
                Some(id),
                format!("`inputs` must be an array of strings, found {}", type_name(o)),
                Some("inputs = [\"source\"]".into()),
            ),
        }
        let kind = match t.get("kind") {
            Some(toml::Value::String(k)) => Some(k.clone()),
            Some(o) => {
                cx.err(
                    &["stage", id, "kind"],
                    Some(id),
                    format!("`kind` must be a string, found {}", type_name(o)),
                    None,
                );
                None
            }
            None => {
                cx.err(
                    &["stage", id],
                    Some(id),
                    "missing `kind`".into(),
                    Some(format!("known kinds: {}", kind_names.join(", "))),
                );
                None
            }
        };
        if let Some(k) = kind {
            match registry.get(&k) {
                None => {
                    let hint = did_you_mean(&k, kind_names.iter().copied());
                    cx.err(
                        &["stage", id, "kind"],
                        Some(id),
                        format!("unknown kind `{k}`"),
                        Some(match hint {
                            Some(h) => format!("did you mean `{h}`?"),
                            None => format!("known kinds: {}", kind_names.join(", ")),
                        }),
                    );
                }
                Some(kind) => {
                    raw.role = Some(kind.role());
                    if let (Some(why), true) = (kind.one_replica(), raw.replicas > 1) {
                        cx.err(
                            &["stage", id, "replicas"],
                            Some(id),
                            format!(
                                "kind `{}` runs as one replica: {why}; replicas = {} would lose data",
                                kind.name(),
                                raw.replicas
                            ),
                            Some("remove `replicas` from this stage".into()),
                        );
                    }
                    let keys = kind.keys();
                    let mut params = toml::Table::new();
                    let mut unknown = false;
                    for (key, val) in t {
                        if RESERVED_KEYS.contains(&key.as_str()) {
                            continue;
                        }
                        if !keys.contains(key) {
                            unknown = true;
                            let hint = did_you_mean(
                                key,
                                keys.iter().map(String::as_str).chain(RESERVED_KEYS.iter().copied()),
                            );
                            cx.err(
                                &["stage", id, key],
                                Some(id),
                                format!("unknown key `{key}` for kind `{}`", kind.name()),
                                Some(match hint {
                                    Some(h) => format!("did you mean `{h}`?"),
                                    None if keys.is_empty() => "this kind has no keys of its own".to_string(),
                                    None => format!("keys of `{}`: {}", kind.name(), keys.join(", ")),
                                }),
                            );
                            continue;
                        }
                        params.insert(key.clone(), val.clone());
                    }
                    if kind.channel() {
                        for (key, val) in &channel_t {
                            if keys.contains(key) && !params.contains_key(key) {
                                params.insert(key.clone(), val.clone());
                            }
                        }
                    }
                    if !unknown {
                        match kind.configure(params) {
                            Ok(c) => {
                                for p in c.validate() {
                                    let at: Vec<&str> = if t.contains_key(p.key) {
                                        vec!["stage", id, p.key]
                                    } else {
                                        vec!["stage", id]
                                    };
                                    cx.err(&at, Some(id), p.message, None);
                                }
                                raw.ports = Some(c.ports());
                                raw.config = Some(c);
                            }
                            Err(e) => {
                                let first = e.path.split('.').next().unwrap_or("").to_string();
                                let mut at = vec!["stage", id.as_str()];
                                if !first.is_empty() && t.contains_key(&first) {
                                    at.push(&first);
                                }
                                let what = if e.path.is_empty() {
                                    String::new()
                                } else {
                                    format!("key `{}`: ", e.path)
                                };
                                let from_channel =
                                    !first.is_empty() && !t.contains_key(&first) && channel_t.contains_key(&first);
                                let msg = if from_channel {
                                    format!("{what}{} (inherited from [channel])", e.message)
                                } else {
                                    format!("{what}{}", e.message)
                                };
                                let at_ref: Vec<&str> = if from_channel {
                                    vec!["channel", first.as_str()]
                                } else {
                                    at
                                };
                                cx.err(&at_ref, Some(id), msg, None);
                            }
                        }
                    }
                    raw.kind = Some(k);
                }
            }
        }
        raws.push(raw);
    }

    // Placements name a [machines.<name>] table; once one stage is placed, all are.
    let placed = raws.iter().any(|r| r.machine.is_some());
    for r in &raws {
        match &r.machine {
            Some(m) if !machines.contains_key(m) && v.get("machines").is_some_and(|t| t.is_table()) => {
                let hint = did_you_mean(m, machines.keys().map(String::as_str));
                let own = stages_t.get(&r.id).and_then(|t| t.get("machine")).is_some();
                let at: Vec<&str> = if own {
                    vec!["stage", &r.id, "machine"]
                } else {
                    vec!["defaults", "machine"]
                };
                cx.err(
                    &at,
                    Some(&r.id),
                    format!("machine `{m}` is not described in [machines]"),
                    Some(match hint {
                        Some(h) => format!(
                            "did you mean `{h}`? machines: {}",
                            machines.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                        None => format!("add [machines.{m}] with listen = [...] or connect = [...]"),
                    }),
                );
            }
            Some(m) if !machines.contains_key(m) => cx.err(
                &["stage", &r.id, "machine"],
                Some(&r.id),
                format!("machine `{m}` is not described: the graph has no [machines] table"),
                Some(format!(
                    "add [machines.{m}] with listen = [\"tcp/0.0.0.0:7447\"] or connect = [...]"
                )),
            ),
            None if placed => cx.err(
                &["stage", &r.id],
                Some(&r.id),
                "stage has no `machine` while other stages are placed".into(),
                Some("add machine = \"...\" to the stage, or [defaults] machine = \"...\"".into()),
            ),
            _ => {}
        }
    }

    // Resolve inputs.
    let index: HashMap<String, usize> = raws.iter().enumerate().map(|(i, r)| (r.id.clone(), i)).collect();
    let all_ids: Vec<String> = raws.iter().map(|r| r.id.clone()).collect();
    for i in 0..raws.len() {
        let id = raws[i].id.clone();
        let role = raws[i].role;
        let inputs = raws[i].inputs.clone();
        if role == Some(Role::Source) && !inputs.is_empty() {
            cx.err(
                &["stage", &id, "inputs"],
                Some(&id),
                "a source takes no inputs".into(),
                Some("remove `inputs` from this stage".into()),
            );
            continue;
        }
        if matches!(role, Some(Role::Transform | Role::Sink)) && inputs.is_empty() {
            cx.err(
                &["stage", &id],
                Some(&id),
                "this stage has no inputs".into(),
                Some("add inputs = [\"<stage>\"] naming the stage it reads from".into()),
            );
        }
        let mut seen = BTreeSet::new();
        for (n, text) in inputs.iter().enumerate() {
            let at = ["stage", id.as_str(), "inputs", &n.to_string()];
            if !seen.insert(text.clone()) {
                cx.err(
                    &at,
                    Some(&id),
                    format!("duplicate input `{text}`"),
                    Some("list each input once".into()),
                );
                continue;
            }
            let (sid, port) = match text.split_once('.') {
                Some((s, p)) => (s, Some(p)),
                None => (text.as_str(), None),
            };
            let Some(&from) = index.get(sid) else {
                let hint = did_you_mean(sid, all_ids.iter().map(String::as_str));
                cx.err(
                    &at,
                    Some(&id),
                    format!("input `{text}` doesn't match any stage"),
                    Some(match hint {
                        Some(h) => format!("did you mean `{h}`?"),
                        None => format!("stages: {}", all_ids.join(", ")),
                    }),
                );
                continue;
            };
            if from == i {
                cx.err(&at, Some(&id), format!("input `{text}` is the stage itself"), None);
                continue;
            }
            if raws[from].role == Some(Role::Sink) {
                cx.err(
                    &at,
                    Some(&id),
                    format!("input `{text}` is a sink, which has no outputs"),
                    None,
                );
                continue;
            }
            let Some(ports) = raws[from].ports.as_ref() else {
                continue;
            };
            let names: Vec<&str> = ports.outputs.iter().map(|p| p.name.as_str()).collect();
            let port_idx = match port {
                None => 0,
                Some(p) => match names.iter().position(|n| *n == p) {
                    Some(pi) => pi,
                    None => {
                        let hint = did_you_mean(p, names.iter().copied());
                        cx.err(
                            &at,
                            Some(&id),
                            format!("stage `{sid}` has no output port `{p}`"),
                            Some(match hint {
                                Some(h) => format!("did you mean `{sid}.{h}`? its ports are: {}", names.join(", ")),
                                None => format!("its ports are: {}", names.join(", ")),
                            }),
                        );
                        continue;
                    }
                },
            };
            raws[i].edges.push(InputEdge {
                from,
                port: port_idx,
                text: text.clone(),
            });
        }
        if let Some(p) = &raws[i].ports {
            if p.join.is_some() && raws[i].replicas > 1 {
                cx.err(
                    &["stage", &id, "replicas"],
                    Some(&id),
                    "a joining stage cannot have replicas > 1".into(),
                    Some("joins gather every part of a frame in one place; remove `replicas`".into()),
                );
            }
        }
    }

    // Consumers and cycles.
    let n = raws.len();
    let mut consumers: Vec<Vec<Vec<(usize, usize)>>> = raws
        .iter()
        .map(|r| vec![Vec::new(); r.ports.as_ref().map(|p| p.outputs.len()).unwrap_or(0)])
        .collect();
    for (i, r) in raws.iter().enumerate() {
        for (k, e) in r.edges.iter().enumerate() {
            if let Some(list) = consumers[e.from].get_mut(e.port) {
                list.push((i, k));
            }
        }
    }
    for (i, r) in raws.iter().enumerate() {
        let has_consumer = consumers[i].iter().any(|c| !c.is_empty());
        if matches!(r.role, Some(Role::Source | Role::Transform)) && !has_consumer && r.ports.is_some() {
            cx.err(
                &["stage", &r.id],
                Some(&r.id),
                "stage has no consumers: nothing reads its output".into(),
                Some(format!(
                    "add \"{}\" to the inputs of a later stage or a sink (e.g. null_sink), or remove it",
                    r.id
                )),
            );
        }
    }
    let order = match topo_order(&raws) {
        Ok(o) => o,
        Err(chain) => {
            let names: Vec<&str> = chain.iter().map(|&c| raws[c].id.as_str()).collect();
            let first = names[0].to_string();
            cx.err(
                &["stage", &first, "inputs"],
                Some(&first),
                format!("cyclic dependency detected in the chain [ {} ]", names.join(" -> ")),
                Some("a graph must not feed a stage's output back into its own inputs".into()),
            );
            Vec::new()
        }
    };

    // Field (port type) check in topological order.
    let mut avail: Vec<Vec<BTreeSet<String>>> = vec![Vec::new(); n];
    for &i in &order {
        let r = &raws[i];
        let Some(ports) = &r.ports else { continue };
        let in_sets: Vec<&BTreeSet<String>> = r.edges.iter().filter_map(|e| avail[e.from].get(e.port)).collect();
        let union: BTreeSet<String> = in_sets.iter().flat_map(|s| s.iter().cloned()).collect();
        if ports.join.is_some() {
            let missing: Vec<&String> = ports.requires.iter().filter(|f| !union.contains(*f)).collect();
            if !missing.is_empty() && in_sets.len() == r.edges.len() {
                cx.err(
                    &["stage", &r.id, "inputs"],
                    Some(&r.id),
                    format!(
                        "type mismatch: kind `{}` needs field(s) {} from its inputs together, which carry {{{}}}",
                        r.kind.clone().unwrap_or_default(),
                        missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                        union.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    Some("add an input that provides them".into()),
                );
            }
        } else {
            for (k, e) in r.edges.iter().enumerate() {
                let Some(set) = avail[e.from].get(e.port) else { continue };
                let missing: Vec<&String> = ports.requires.iter().filter(|f| !set.contains(*f)).collect();
                if !missing.is_empty() {
                    cx.err(
                        &["stage", &r.id, "inputs", &k.to_string()],
                        Some(&r.id),
                        format!(
                            "type mismatch: input `{}` carries {{{}}} but kind `{}` needs {}",
                            e.text,
                            set.iter().cloned().collect::<Vec<_>>().join(", "),
                            r.kind.clone().unwrap_or_default(),
                            missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
                        ),
                        None,
                    );
                }
            }
        }
        avail[i] = ports
            .outputs
            .iter()
            .map(|p| {
                let mut s: BTreeSet<String> = if p.passthrough { union.clone() } else { BTreeSet::new() };
                s.extend(p.adds.iter().cloned());
                s
            })
            .collect();
    }

    if !cx.errors.is_empty() {
        return Err(Diagnostics(cx.errors));
    }
    let mut pos = vec![0usize; n];
    for (p, &i) in order.iter().enumerate() {
        pos[i] = p;
    }
    let mut stages: Vec<PlannedStage> = Vec::with_capacity(n);
    // Sources are numbered from the last in topological order (the runtime's spawn order).
    let mut next_stream = order.iter().filter(|&&i| raws[i].role == Some(Role::Source)).count() as u32;
    for &i in &order {
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
            machine: r.machine.clone(),
            stream: if r.role == Some(Role::Source) {
                next_stream = next_stream.saturating_sub(1);
                next_stream
            } else {
                0
            },
        });
    }
    let graph_dir = src.path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    Ok(Plan {
        name,
        seed,
        file: src.path.clone(),
        graph_dir,
        metrics_listen,
        channel: channel_t,
        stages,
        machines,
    })
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

fn reserved_usize(cx: &mut Ctx, v: Option<&toml::Value>, at: &[&str], stage: Option<&str>) -> Option<usize> {
    match v? {
        toml::Value::Integer(i) if *i >= 1 => Some(*i as usize),
        other => {
            cx.err(
                at,
                stage,
                format!("`{}` must be an integer >= 1, found {other}", at[at.len() - 1]),
                None,
            );
            None
        }
    }
}

fn reserved_enum<T: for<'de> Deserialize<'de>>(
    cx: &mut Ctx,
    v: Option<&toml::Value>,
    at: &[&str],
    stage: Option<&str>,
    allowed: &str,
) -> Option<T> {
    let v = v?;
    match parse_enum::<T>(v) {
        Some(t) => Some(t),
        None => {
            cx.err(
                at,
                stage,
                format!("`{}` must be one of {allowed}, found {v}", at[at.len() - 1]),
                None,
            );
            None
        }
    }
}

/// A topological order by depth-first search (each stage after its producers); on a
/// cycle, the chain of stage indices that closes it.
fn topo_order(raws: &[Raw]) -> Result<Vec<usize>, Vec<usize>> {
    let n = raws.len();
    // 0 = unvisited, 1 = on stack, 2 = done
    let mut state = vec![0u8; n];
    let mut order = Vec::with_capacity(n);
    fn visit(
        i: usize,
        raws: &[Raw],
        state: &mut [u8],
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        state[i] = 1;
        stack.push(i);
        for e in &raws[i].edges {
            match state[e.from] {
                0 => visit(e.from, raws, state, stack, order)?,
                1 => {
                    let start = stack.iter().position(|&s| s == e.from).unwrap_or(0);
                    // The stack runs consumer -> producer; print it in the direction data flows.
                    let mut chain: Vec<usize> = stack[start..].to_vec();
                    chain.reverse();
                    chain.push(chain[0]);
                    return Err(chain);
                }
                _ => {}
            }
        }
        stack.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..n {
        if state[i] == 0 {
            let mut stack = Vec::new();
            visit(i, raws, &mut state, &mut stack, &mut order)?;
        }
    }
    Ok(order)
}
