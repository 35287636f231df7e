//! Pass 1: the graph-level tables (`[graph]`, `[defaults]`, `[metrics]`, `[machines]`,
//! `[channel]`) and the names of the top-level tables.

use std::collections::{BTreeMap, BTreeSet};

use super::reserved::{self, Defaults};
use super::{check_keys, table_of, type_name, Ctx, MachineSpec};
use super::{DEFAULT_KEYS, GRAPH_KEYS, METRICS_KEYS, TOP_LEVEL};
use crate::graph::did_you_mean;
use crate::registry::Registry;

/// What the graph-level tables say, with defaults where a value was missing or wrong.
pub(super) struct Header {
    /// `[graph] name`, else the file's stem.
    pub name: String,
    /// `[graph] seed`, else 0.
    pub seed: u64,
    /// `[metrics] listen`.
    pub metrics_listen: Option<String>,
    /// `[defaults]` of the reserved stage keys.
    pub defaults: Defaults,
    /// The `[machines.<name>]` tables that deserialised.
    pub machines: BTreeMap<String, MachineSpec>,
    /// Whether `[machines]` is present and a table (placement says more then).
    pub machines_table: bool,
    /// `[channel]` as given.
    pub channel: toml::Table,
}

/// Checks the graph-level tables and reads what the later passes need.
pub(super) fn check(cx: &mut Ctx, registry: &Registry) -> Header {
    let src = cx.src;
    let v = &src.values;
    top_level(cx);
    let v_graph = table_of(v, "graph");
    let (defaults_t, metrics_t, channel) = (table_of(v, "defaults"), table_of(v, "metrics"), table_of(v, "channel"));
    let machines_v = v.get("machines").cloned();
    check_keys(cx, &v_graph, GRAPH_KEYS, "graph");
    check_keys(cx, &defaults_t, DEFAULT_KEYS, "defaults");
    check_keys(cx, &metrics_t, METRICS_KEYS, "metrics");
    let (name, seed) = graph(cx, &v_graph);
    let metrics_listen = metrics(cx, &metrics_t);
    let defaults = reserved::defaults(cx, &defaults_t);
    let machines = machines(cx, machines_v.as_ref());
    channel_keys(cx, registry, &channel);
    Header {
        name,
        seed,
        metrics_listen,
        defaults,
        machines,
        machines_table: machines_v.is_some_and(|t| t.is_table()),
        channel,
    }
}

/// Every top-level table is one the graph format knows.
fn top_level(cx: &mut Ctx) {
    let unknown: Vec<String> = cx
        .src
        .values
        .keys()
        .filter(|k| !TOP_LEVEL.contains(&k.as_str()))
        .cloned()
        .collect();
    for k in unknown {
        let hint = did_you_mean(&k, TOP_LEVEL.iter().copied());
        cx.err(
            &[&k],
            None,
            format!("unknown table `[{k}]`"),
            Some(match hint {
                Some(h) => format!("did you mean `[{h}]`?"),
                None => format!("known tables: {}", TOP_LEVEL.join(", ")),
            }),
        );
    }
}

/// `[graph] name` (default: the file's stem) and `seed` (default 0).
fn graph(cx: &mut Ctx, graph_t: &toml::Table) -> (String, u64) {
    let stem = cx
        .src
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
    (name, seed)
}

/// `[metrics] listen`.
fn metrics(cx: &mut Ctx, metrics_t: &toml::Table) -> Option<String> {
    match metrics_t.get("listen") {
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
    }
}

/// The `[machines.<name>]` tables that deserialise; an error for each that does not.
fn machines(cx: &mut Ctx, v: Option<&toml::Value>) -> BTreeMap<String, MachineSpec> {
    let mut machines = BTreeMap::new();
    match v {
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
                                "keys: listen = [\"tcp/0.0.0.0:7447\"], connect = [...], router = \"tcp/host:7447\", tls = { root_ca, cert, key }".into(),
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
    machines
}

/// `[channel]` keys must be known to at least one channel kind.
fn channel_keys(cx: &mut Ctx, registry: &Registry, channel_t: &toml::Table) {
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{errors_of, registry, source};

    #[test]
    fn unknown_tables_keys_and_wrong_types_are_all_reported() {
        let src = source(
            r#"
[graf]
[graph]
name = 3
seed = -1
colour = "red"
[metrics]
listen = 9464
[machines]
a = { listen = "tcp/0.0.0.0:7447" }
[channel]
snr = 3
"#,
        );
        let errors = errors_of(&src, |cx| {
            super::check(cx, &registry());
        });
        assert_eq!(
            errors,
            [
                "unknown table `[graf]`",
                "unknown key `colour` in [graph]",
                "`name` must be a string, found integer",
                "`seed` must be a non-negative integer, found -1",
                "`listen` must be a string like \"127.0.0.1:9464\", found integer",
                "machine `a`: invalid type: string \"tcp/0.0.0.0:7447\", expected a sequence",
                "unknown key `snr` in [channel]",
            ]
        );
    }

    #[test]
    fn a_graph_without_mistakes_reads_name_seed_and_defaults() {
        let src = source("[graph]\nname = \"g\"\nseed = 7\n[defaults]\nmailbox = 9\n");
        let mut header = None;
        let errors = errors_of(&src, |cx| header = Some(super::check(cx, &registry())));
        assert!(errors.is_empty(), "{errors:?}");
        let h = header.expect("the pass ran");
        assert_eq!((h.name.as_str(), h.seed, h.defaults.mailbox), ("g", 7, 9));
    }
}
