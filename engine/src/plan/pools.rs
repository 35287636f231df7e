//! Pass 4, first half: the `[pools.<name>]` tables (DESIGN §7). A pool is a set of
//! machines that share the stages placed on it: static members listed in `machines`,
//! and, when `min` or `max` is given, machines that join at run time with `--pool`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::tables::Header;
use super::{type_name, Ctx, PoolSpec, DEFAULT_POOL_ACK_TIMEOUT_MS};
use crate::graph::did_you_mean;

/// Keys of a `[pools.<name>]` table.
pub(super) const POOL_KEYS: &[&str] = &["machines", "min", "max", "connect", "ack_timeout_ms"];

/// The `[pools.<name>]` tables that make sense; an error for each mistake.
pub(super) fn read(cx: &mut Ctx, header: &Header) -> BTreeMap<String, PoolSpec> {
    let mut pools = BTreeMap::new();
    match cx.src.values.get("pools").cloned() {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, v) in &t {
                match v {
                    toml::Value::Table(p) => {
                        if let Some(spec) = one(cx, name, p, header) {
                            pools.insert(name.clone(), spec);
                        }
                    }
                    o => cx.err(
                        &["pools", name],
                        None,
                        format!("pool `{name}` must be a table [pools.{name}], found {}", type_name(o)),
                        Some(format!("[pools.{name}]\nmachines = [\"gpu1\", \"gpu2\"]")),
                    ),
                }
            }
        }
        Some(o) => cx.err(
            &["pools"],
            None,
            format!(
                "`pools` must be a table of [pools.<name>] tables, found {}",
                type_name(&o)
            ),
            None,
        ),
    }
    pools
}

/// `[pools.<name>]` (table `t`), or `None` when it has a mistake (reported).
fn one(cx: &mut Ctx, name: &str, t: &toml::Table, header: &Header) -> Option<PoolSpec> {
    let errors = cx.errors.len();
    for k in t.keys().filter(|k| !POOL_KEYS.contains(&k.as_str())) {
        cx.err(
            &["pools", name, k],
            None,
            format!("unknown key `{k}` in [pools.{name}]"),
            Some(match did_you_mean(k, POOL_KEYS.iter().copied()) {
                Some(h) => format!("did you mean `{h}`? known keys: {}", POOL_KEYS.join(", ")),
                None => format!("known keys: {}", POOL_KEYS.join(", ")),
            }),
        );
    }
    if header.machines.contains_key(name) {
        cx.err(
            &["pools", name],
            None,
            format!("pool `{name}` has the name of machine `{name}`: a placement would name either"),
            Some(format!("rename [pools.{name}], e.g. [pools.{name}-pool]")),
        );
    }
    let machines = members(cx, name, t.get("machines"), header);
    let connect = strings(cx, name, "connect", t.get("connect"));
    let min = count(cx, name, "min", t.get("min"));
    let max = count(cx, name, "max", t.get("max"));
    let ack = count(cx, name, "ack_timeout_ms", t.get("ack_timeout_ms"));
    let dynamic = t.contains_key("min") || t.contains_key("max");
    let (min_n, max_n) = (min.unwrap_or(1), max.unwrap_or(usize::MAX));
    if machines.is_empty() && !dynamic && !t.contains_key("machines") {
        cx.err(
            &["pools", name],
            None,
            format!("pool `{name}` has no members"),
            Some(format!(
                "list machines = [\"gpu1\", ...] (each in [machines]), or give min/max for machines that join at run time with --pool {name}"
            )),
        );
    }
    if min_n > max_n {
        cx.err(
            &["pools", name, "min"],
            None,
            format!("pool `{name}`: min = {min_n} is more than max = {max_n}"),
            Some("min is the members needed before frames flow, max the most at once: make min <= max".into()),
        );
    }
    if machines.len() > max_n {
        cx.err(
            &["pools", name, "max"],
            None,
            format!("pool `{name}` lists {} machines but max = {max_n}", machines.len()),
            Some("raise max, or list fewer machines".into()),
        );
    }
    (cx.errors.len() == errors).then(|| PoolSpec {
        name: name.to_string(),
        machines,
        min: min_n,
        max: max_n,
        dynamic,
        connect,
        ack_timeout: Duration::from_millis(ack.map_or(DEFAULT_POOL_ACK_TIMEOUT_MS, |a| a as u64)),
    })
}

/// `machines = [...]` of pool `name`: each once, each described in `[machines]`.
fn members(cx: &mut Ctx, name: &str, v: Option<&toml::Value>, header: &Header) -> Vec<String> {
    let listed = strings(cx, name, "machines", v);
    if v.is_some_and(|v| v.as_array().is_some_and(|a| a.is_empty())) {
        cx.err(
            &["pools", name, "machines"],
            None,
            format!("pool `{name}`: `machines = []` lists no machine"),
            Some(format!(
                "list the pool's machines, or remove `machines` and give min/max for machines that join with --pool {name}"
            )),
        );
    }
    let mut out: Vec<String> = Vec::new();
    for (i, m) in listed.into_iter().enumerate() {
        let at = ["pools", name, "machines", &i.to_string()];
        if out.contains(&m) {
            cx.err(
                &at,
                None,
                format!("pool `{name}` lists machine `{m}` twice"),
                Some("list each member once".into()),
            );
        } else if !header.machines.contains_key(&m) {
            let known = header.machines.keys().map(String::as_str);
            cx.err(
                &at,
                None,
                format!("machine `{m}` of pool `{name}` is not described in [machines]"),
                Some(match did_you_mean(&m, known) {
                    Some(h) => format!("did you mean `{h}`?"),
                    None => format!(
                        "add [machines.{m}] with listen = [...] or connect = [...]; a machine that is not described joins with --pool {name} when the pool has min/max"
                    ),
                }),
            );
        } else {
            out.push(m);
        }
    }
    out
}

/// An array of strings at `[pools.<name>] key`, when present.
fn strings(cx: &mut Ctx, name: &str, key: &str, v: Option<&toml::Value>) -> Vec<String> {
    let mut out = Vec::new();
    match v {
        None => {}
        Some(toml::Value::Array(a)) => {
            for (i, item) in a.iter().enumerate() {
                match item {
                    toml::Value::String(s) => out.push(s.clone()),
                    o => cx.err(
                        &["pools", name, key, &i.to_string()],
                        None,
                        format!("`{key}` of pool `{name}` must hold strings, found {}", type_name(o)),
                        None,
                    ),
                }
            }
        }
        Some(o) => cx.err(
            &["pools", name, key],
            None,
            format!(
                "`{key}` of pool `{name}` must be an array of strings, found {}",
                type_name(o)
            ),
            Some(format!("{key} = [\"...\"]")),
        ),
    }
    out
}

/// An integer >= 1 at `[pools.<name>] key`, when present.
fn count(cx: &mut Ctx, name: &str, key: &str, v: Option<&toml::Value>) -> Option<usize> {
    match v? {
        toml::Value::Integer(i) if *i >= 1 => Some(*i as usize),
        o => {
            cx.err(
                &["pools", name, key],
                None,
                format!("`{key}` of pool `{name}` must be an integer >= 1, found {o}"),
                None,
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{errors_of, registry, source};

    const MACHINES: &str = "[machines.cam]\nlisten = [\"tcp/0.0.0.0:7447\"]\n[machines.gpu1]\n[machines.gpu2]\n";

    #[test]
    fn every_mistake_in_pools_is_reported_at_once() {
        let src = source(&format!(
            r#"{MACHINES}
[pools.gpus]
machines = ["gpu1", "gpu3", "gpu1", 4]
min = 3
max = 2
acktimeout_ms = 10
[pools.cam]
machines = ["gpu2"]
[pools.none]
connect = "tcp/h:7447"
[pools.zero]
min = 0
"#
        ));
        let errors = errors_of(&src, |cx| {
            let header = super::super::tables::check(cx, &registry());
            let pools = super::read(cx, &header);
            assert!(pools.is_empty(), "{pools:?}");
        });
        assert_eq!(
            errors,
            [
                "pool `cam` has the name of machine `cam`: a placement would name either",
                "unknown key `acktimeout_ms` in [pools.gpus]",
                "`machines` of pool `gpus` must hold strings, found integer",
                "machine `gpu3` of pool `gpus` is not described in [machines]",
                "pool `gpus` lists machine `gpu1` twice",
                "pool `gpus`: min = 3 is more than max = 2",
                "`connect` of pool `none` must be an array of strings, found string",
                "pool `none` has no members",
                "`min` of pool `zero` must be an integer >= 1, found 0",
            ]
        );
    }

    #[test]
    fn errors_point_at_the_key_with_a_hint() {
        let src = source(&format!(
            "{MACHINES}[pools.gpus]\nmachines = [\"gpu1\", \"gpu22\"]\nminn = 1\n"
        ));
        let mut shown = Vec::new();
        errors_of(&src, |cx| {
            let header = super::super::tables::check(cx, &registry());
            super::read(cx, &header);
            shown = cx.errors.iter().map(|d| d.to_string()).collect();
        });
        assert_eq!(
            shown,
            [
                "test.toml:7:1: error: unknown key `minn` in [pools.gpus]\n  help: did you mean `min`? known keys: machines, min, max, connect, ack_timeout_ms",
                "test.toml:6:21: error: machine `gpu22` of pool `gpus` is not described in [machines]\n  help: did you mean `gpu2`?",
            ]
        );
    }

    #[test]
    fn a_pool_reads_its_members_and_defaults() {
        let src = source(&format!(
            "{MACHINES}[pools.gpus]\nmachines = [\"gpu1\", \"gpu2\"]\n[pools.open]\nmin = 2\nconnect = [\"tcp/cam:7447\"]\nack_timeout_ms = 500\n"
        ));
        let mut pools = None;
        let errors = errors_of(&src, |cx| {
            let header = super::super::tables::check(cx, &registry());
            pools = Some(super::read(cx, &header));
        });
        assert!(errors.is_empty(), "{errors:?}");
        let pools = pools.expect("the pass ran");
        let gpus = &pools["gpus"];
        assert_eq!(gpus.machines, ["gpu1", "gpu2"]);
        assert_eq!((gpus.min, gpus.max, gpus.dynamic), (1, usize::MAX, false));
        assert_eq!(gpus.ack_timeout, Duration::from_millis(2000));
        let open = &pools["open"];
        assert!(open.machines.is_empty());
        assert_eq!((open.min, open.max, open.dynamic), (2, usize::MAX, true));
        assert_eq!(open.connect, ["tcp/cam:7447"]);
        assert_eq!(open.ack_timeout, Duration::from_millis(500));
    }
}
