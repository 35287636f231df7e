//! Pass 4: placement (DESIGN §7). A stage's `machine` names a `[machines.<name>]`
//! table, a list of them (an anonymous pool, `pool-<first stage id>`) or a
//! `[pools.<name>]` ([`super::pools`]); once one stage is placed, all are. v1 limits:
//! a source runs on one machine, a machine belongs to one pool and then runs only its
//! stages, and no edge joins two pools.

use std::collections::BTreeMap;

use super::reserved::MachineRef;
use super::tables::Header;
use super::{Ctx, PoolSpec, Raw};
use crate::graph::did_you_mean;
use crate::stage::Role;

/// Reads `[pools]`, resolves every stage's `machine` to its placement unit
/// ([`Raw::unit`]) and returns the pools, anonymous ones included.
pub(super) fn check(
    cx: &mut Ctx,
    raws: &mut [Raw],
    header: &Header,
    stages_t: &toml::Table,
) -> BTreeMap<String, PoolSpec> {
    let mut pools = super::pools::read(cx, header);
    // Where each pool was declared, for the messages about its members.
    let mut origin: BTreeMap<String, Vec<String>> = pools
        .keys()
        .map(|n| (n.clone(), vec!["pools".to_string(), n.clone()]))
        .collect();
    let placed = raws.iter().any(|r| r.machine.is_some());
    for r in raws.iter_mut() {
        let at = machine_at(&r.id, stages_t);
        let at: Vec<&str> = at.iter().map(String::as_str).collect();
        r.unit = match r.machine.clone() {
            Some(MachineRef::One(m)) => one(cx, &r.id, &m, &at, header, &pools),
            Some(MachineRef::List(ms)) => list(cx, &r.id, &ms, &at, header, &mut pools, &mut origin),
            Some(MachineRef::Pool(p)) => pool(cx, &r.id, &p, &at, &pools),
            None if placed => {
                cx.err(
                    &["stage", &r.id],
                    Some(&r.id),
                    "stage has no `machine` while other stages are placed".into(),
                    Some("add machine = \"...\" to the stage, or [defaults] machine = \"...\"".into()),
                );
                None
            }
            None => None,
        };
        if let (Some(Role::Source), Some(u)) = (r.role, &r.unit) {
            if pools.contains_key(u) {
                cx.err(
                    &at,
                    Some(&r.id),
                    format!("a source cannot run on pool `{u}`: each member would start the stream again and frame ids would collide"),
                    Some("place the source on one machine (machine = \"cam\") and the stages that read from it on the pool".into()),
                );
            }
        }
    }
    members(cx, raws, &pools, &origin, stages_t);
    pools
}

/// Where stage `id`'s `machine` is written: its own key, or `[defaults] machine`.
fn machine_at(id: &str, stages_t: &toml::Table) -> Vec<String> {
    let own = stages_t.get(id).and_then(|t| t.get("machine")).is_some();
    if own {
        vec!["stage".into(), id.into(), "machine".into()]
    } else {
        vec!["defaults".into(), "machine".into()]
    }
}

/// `machine = "m"`: `m` is described in `[machines]`. The unit is `m` even when it
/// is not (the error is reported once, here), unless `m` names a pool.
fn one(
    cx: &mut Ctx,
    id: &str,
    m: &str,
    at: &[&str],
    header: &Header,
    pools: &BTreeMap<String, PoolSpec>,
) -> Option<String> {
    let machines = &header.machines;
    if machines.contains_key(m) {
        return Some(m.to_string());
    }
    let help = if pools.contains_key(m) {
        format!("`{m}` is a pool: write machine = {{ pool = \"{m}\" }}")
    } else if !header.machines_table {
        format!("add [machines.{m}] with listen = [\"tcp/0.0.0.0:7447\"] or connect = [...]")
    } else {
        match did_you_mean(m, machines.keys().map(String::as_str)) {
            Some(h) => format!(
                "did you mean `{h}`? machines: {}",
                machines.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            None => format!("add [machines.{m}] with listen = [...] or connect = [...]"),
        }
    };
    let message = if header.machines_table {
        format!("machine `{m}` is not described in [machines]")
    } else {
        format!("machine `{m}` is not described: the graph has no [machines] table")
    };
    cx.err(at, Some(id), message, Some(help));
    (!pools.contains_key(m)).then(|| m.to_string())
}

/// `machine = ["m1", "m2"]`: each is described in `[machines]`; stages that list the
/// same machines share one anonymous pool, named after the first of them.
fn list(
    cx: &mut Ctx,
    id: &str,
    ms: &[String],
    at: &[&str],
    header: &Header,
    pools: &mut BTreeMap<String, PoolSpec>,
    origin: &mut BTreeMap<String, Vec<String>>,
) -> Option<String> {
    let mut ok = true;
    for (i, m) in ms.iter().enumerate() {
        if !header.machines.contains_key(m) {
            let idx = i.to_string();
            let mut item_at = at.to_vec();
            item_at.push(&idx);
            let hint = did_you_mean(m, header.machines.keys().map(String::as_str));
            cx.err(
                &item_at,
                Some(id),
                format!("machine `{m}` of this stage's pool is not described in [machines]"),
                Some(match hint {
                    Some(h) => format!("did you mean `{h}`?"),
                    None => format!(
                        "add [machines.{m}]; for machines that join at run time, use machine = {{ pool = \"<name>\" }} with [pools.<name>] min/max"
                    ),
                }),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let mut key = ms.to_vec();
    key.sort();
    let anonymous = |p: &PoolSpec| {
        let mut m = p.machines.clone();
        m.sort();
        p.name.starts_with("pool-") && !p.dynamic && m == key
    };
    if let Some(p) = pools.values().find(|p| anonymous(p) && origin[&p.name][0] != "pools") {
        return Some(p.name.clone());
    }
    let name = format!("pool-{id}");
    if pools.contains_key(&name) || header.machines.contains_key(&name) {
        cx.err(
            at,
            Some(id),
            format!("this stage's anonymous pool would be called `{name}`, a name the graph already uses"),
            Some("declare the pool as [pools.<name>] and write machine = { pool = \"<name>\" }".into()),
        );
        return None;
    }
    pools.insert(
        name.clone(),
        PoolSpec {
            name: name.clone(),
            machines: ms.to_vec(),
            min: 1,
            max: usize::MAX,
            dynamic: false,
            connect: Vec::new(),
            ack_timeout: std::time::Duration::from_millis(super::DEFAULT_POOL_ACK_TIMEOUT_MS),
        },
    );
    origin.insert(name.clone(), at.iter().map(|s| s.to_string()).collect());
    Some(name)
}

/// `machine = { pool = "p" }`: `[pools.p]` exists.
fn pool(cx: &mut Ctx, id: &str, p: &str, at: &[&str], pools: &BTreeMap<String, PoolSpec>) -> Option<String> {
    if pools.contains_key(p) {
        return Some(p.to_string());
    }
    let declared = cx.src.values.get("pools").and_then(|t| t.as_table());
    if declared.is_some_and(|t| t.contains_key(p)) {
        return None; // [pools.p] has a mistake, reported there
    }
    let names = declared
        .map(|t| t.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    cx.err(
        at,
        Some(id),
        format!("pool `{p}` is not described in [pools]"),
        Some(match did_you_mean(p, names.iter().map(String::as_str)) {
            Some(h) => format!("did you mean `{h}`? pools: {}", names.join(", ")),
            None => format!("add [pools.{p}] with machines = [...] or min/max"),
        }),
    );
    None
}

/// A machine is a static member of one pool at most, and a member runs no stage of
/// its own.
fn members(
    cx: &mut Ctx,
    raws: &[Raw],
    pools: &BTreeMap<String, PoolSpec>,
    origin: &BTreeMap<String, Vec<String>>,
    stages_t: &toml::Table,
) {
    let mut pool_of: BTreeMap<&str, &str> = BTreeMap::new();
    for p in pools.values() {
        for m in &p.machines {
            match pool_of.get(m.as_str()) {
                Some(first) => {
                    let at: Vec<&str> = origin[&p.name].iter().map(String::as_str).collect();
                    cx.err(
                        &at,
                        None,
                        format!("machine `{m}` is a member of pools `{first}` and `{}`; a machine runs the stages of one pool", p.name),
                        Some(format!("remove `{m}` from one of them, or give the second pool other machines")),
                    );
                }
                None => {
                    pool_of.insert(m, &p.name);
                }
            }
        }
    }
    for r in raws {
        let Some(p) = r.unit.as_deref().and_then(|u| pool_of.get(u)) else {
            continue;
        };
        let at = machine_at(&r.id, stages_t);
        let at: Vec<&str> = at.iter().map(String::as_str).collect();
        let m = r.unit.as_deref().unwrap_or_default();
        cx.err(
            &at,
            Some(&r.id),
            format!("machine `{m}` is a member of pool `{p}`, so it runs only the pool's stages"),
            Some(format!(
                "place this stage on the pool (machine = {{ pool = \"{p}\" }}) or on a machine outside it"
            )),
        );
    }
}

/// No edge joins two different pools (v1): the link carries a pool's frames between
/// one machine and the members.
pub(super) fn pool_edges(cx: &mut Ctx, raws: &[Raw], pools: &BTreeMap<String, PoolSpec>) {
    one_input_per_pool(cx, raws, pools);
    for r in raws {
        let Some(to) = r.unit.as_deref().filter(|u| pools.contains_key(*u)) else {
            continue;
        };
        for e in &r.edges {
            let Some(from) = raws[e.from].unit.as_deref().filter(|u| pools.contains_key(*u)) else {
                continue;
            };
            if from == to {
                continue;
            }
            let n = r.inputs.iter().position(|t| *t == e.text).unwrap_or(0).to_string();
            cx.err(
                &["stage", &r.id, "inputs", &n],
                Some(&r.id),
                format!(
                    "input `{}` runs on pool `{from}` and this stage on pool `{to}`: an edge between two pools is not supported yet",
                    e.text
                ),
                Some(format!(
                    "place one of the two stages on a machine, or both on pool `{to}`"
                )),
            );
        }
    }
}

/// v1: a pool takes one edge from outside. Each edge into a pool dispatches its frames on
/// its own, so two edges (two inputs of a join, or one output read by two pool stages)
/// could send the parts of one frame to different members.
fn one_input_per_pool(cx: &mut Ctx, raws: &[Raw], pools: &BTreeMap<String, PoolSpec>) {
    let mut first: BTreeMap<&str, (String, String)> = BTreeMap::new();
    for r in raws {
        let Some(to) = r.unit.as_deref().filter(|u| pools.contains_key(*u)) else {
            continue;
        };
        for e in &r.edges {
            if raws[e.from].unit.as_deref() == Some(to) {
                continue;
            }
            let Some((stage, input)) = first.get(to) else {
                first.insert(to, (r.id.clone(), e.text.clone()));
                continue;
            };
            let n = r.inputs.iter().position(|t| *t == e.text).unwrap_or(0).to_string();
            cx.err(
                &["stage", &r.id, "inputs", &n],
                Some(&r.id),
                format!(
                    "pool `{to}` already takes `{input}` (stage `{stage}`) from outside; a second edge into a pool (`{}`) is not supported yet: each edge dispatches its frames on its own, so parts of one frame could reach different members",
                    e.text
                ),
                Some(format!(
                    "bring everything pool `{to}` needs through one stage outside it, or place stage `{}` on a machine",
                    r.id
                )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{errors_of, passes_until, registry, source};

    #[test]
    fn unknown_machines_and_unplaced_stages_are_reported() {
        let src = source(
            r#"
[machines.edge]
listen = ["tcp/0.0.0.0:7447"]
[stage.cam]
kind = "src"
machine = "edgee"
[stage.out]
kind = "sink"
inputs = ["cam"]
"#,
        );
        let errors = errors_of(&src, |cx| {
            let (header, mut raws, stages_t) = passes_until(cx);
            super::check(cx, &mut raws, &header, &stages_t);
        });
        assert_eq!(
            errors,
            [
                "machine `edgee` is not described in [machines]",
                "stage has no `machine` while other stages are placed",
            ]
        );
    }

    #[test]
    fn without_a_machines_table_a_placement_names_nothing() {
        let src = source("[stage.cam]\nkind = \"src\"\nmachine = \"edge\"\n");
        let errors = errors_of(&src, |cx| {
            let (header, mut raws, stages_t) = passes_until(cx);
            super::check(cx, &mut raws, &header, &stages_t);
        });
        assert_eq!(
            errors,
            ["machine `edge` is not described: the graph has no [machines] table"]
        );
    }

    const MACHINES: &str =
        "[machines.cam]\nlisten = [\"tcp/0.0.0.0:7447\"]\n[machines.gpu1]\n[machines.gpu2]\n[machines.gpu3]\n";

    /// The messages (with file:line:column and help) of validating `text`.
    fn shown(text: &str) -> Vec<String> {
        let src = source(&format!("{MACHINES}{text}"));
        match super::super::plan(&src, &registry()) {
            Ok(_) => Vec::new(),
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn stages_on_the_same_list_share_one_anonymous_pool() {
        let src = source(&format!(
            r#"{MACHINES}
[pools.spare]
min = 1
connect = ["tcp/cam:7447"]
[stage.cam]
kind = "src"
machine = "cam"
[stage.a]
kind = "map"
inputs = ["cam"]
machine = ["gpu1", "gpu2"]
[stage.b]
kind = "map"
inputs = ["a"]
machine = ["gpu2", "gpu1"]
[stage.c]
kind = "map"
inputs = ["cam"]
machine = {{ pool = "spare" }}
[stage.out]
kind = "sink"
inputs = ["b"]
machine = "cam"
[stage.out2]
kind = "sink"
inputs = ["c"]
machine = "cam"
"#
        ));
        let plan = super::super::plan(&src, &registry()).unwrap_or_else(|d| panic!("{d}"));
        let unit = |id: &str| plan.stages[plan.index(id).expect("stage")].machine.clone();
        assert_eq!(unit("a").as_deref(), Some("pool-a"));
        assert_eq!(unit("b").as_deref(), Some("pool-a"));
        assert_eq!(unit("c").as_deref(), Some("spare"));
        assert_eq!(unit("out").as_deref(), Some("cam"));
        assert_eq!(plan.pools.keys().collect::<Vec<_>>(), ["pool-a", "spare"]);
        assert_eq!(plan.pools["pool-a"].machines, ["gpu1", "gpu2"]);
        assert!(!plan.pools["pool-a"].dynamic && plan.pools["spare"].dynamic);
    }

    #[test]
    fn a_source_on_a_pool_and_an_edge_between_pools_are_refused() {
        let errors = shown(
            r#"
[pools.gpus]
machines = ["gpu1"]
[stage.cam]
kind = "src"
machine = ["gpu2", "gpu3"]
[stage.a]
kind = "map"
inputs = ["cam"]
machine = { pool = "gpus" }
[stage.out]
kind = "sink"
inputs = ["a"]
machine = "cam"
"#,
        );
        assert_eq!(
            errors,
            [
                "test.toml:11:1: error: stage `cam`: a source cannot run on pool `pool-cam`: each member would start the stream again and frame ids would collide\n  help: place the source on one machine (machine = \"cam\") and the stages that read from it on the pool",
                "test.toml:14:11: error: stage `a`: input `cam` runs on pool `pool-cam` and this stage on pool `gpus`: an edge between two pools is not supported yet\n  help: place one of the two stages on a machine, or both on pool `gpus`",
            ]
        );
    }

    #[test]
    fn a_second_edge_into_a_pool_is_refused() {
        let errors = shown(
            r#"
[pools.gpus]
machines = ["gpu1", "gpu2"]
[stage.cam]
kind = "src"
machine = "cam"
[stage.a]
kind = "map"
inputs = ["cam"]
machine = "cam"
[stage.j]
kind = "join"
inputs = ["a", "a.side"]
machine = { pool = "gpus" }
[stage.out]
kind = "sink"
inputs = ["j"]
machine = "cam"
"#,
        );
        let second: Vec<&String> = errors
            .iter()
            .filter(|e| e.contains("a second edge into a pool"))
            .collect();
        assert_eq!(second.len(), 1, "{errors:#?}");
        assert!(
            second[0].starts_with("test.toml:18:")
                && second[0].contains("stage `j`: pool `gpus` already takes `a` (stage `j`) from outside; a second edge into a pool (`a.side`)")
                && second[0].contains("help: bring everything pool `gpus` needs through one stage outside it, or place stage `j` on a machine"),
            "{}",
            second[0]
        );
    }

    #[test]
    fn wrong_pool_placements_say_what_to_do() {
        let errors = shown(
            r#"
[pools.gpus]
machines = ["gpu1", "gpu2"]
[pools.more]
machines = ["gpu2"]
[stage.cam]
kind = "src"
machine = "gpus"
[stage.a]
kind = "map"
inputs = ["cam"]
machine = { pool = "gpu" }
[stage.b]
kind = "map"
inputs = ["a"]
machine = ["gpu3", "gpu4"]
[stage.out]
kind = "sink"
inputs = ["b"]
machine = "gpu1"
"#,
        );
        assert_eq!(
            errors,
            [
                "test.toml:13:1: error: stage `cam`: machine `gpus` is not described in [machines]\n  help: `gpus` is a pool: write machine = { pool = \"gpus\" }",
                "test.toml:17:1: error: stage `a`: pool `gpu` is not described in [pools]\n  help: did you mean `gpus`? pools: gpus, more",
                "test.toml:21:20: error: stage `b`: machine `gpu4` of this stage's pool is not described in [machines]\n  help: did you mean `gpu3`?",
                "test.toml:9:8: error: machine `gpu2` is a member of pools `gpus` and `more`; a machine runs the stages of one pool\n  help: remove `gpu2` from one of them, or give the second pool other machines",
                "test.toml:25:1: error: stage `out`: machine `gpu1` is a member of pool `gpus`, so it runs only the pool's stages\n  help: place this stage on the pool (machine = { pool = \"gpus\" }) or on a machine outside it",
            ]
        );
    }
}
