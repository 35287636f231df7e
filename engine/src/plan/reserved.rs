//! Pass 2: the reserved keys every stage may carry (`mailbox`, `when_full`, `replicas`,
//! `restart`, `machine`, `inputs`, `batch`) and their `[defaults]`.

use serde::Deserialize;

use super::{type_name, Ctx, Raw, Restart, WhenFull, DEFAULT_MAILBOX};

/// `[defaults]`: what a stage gets when it does not say.
pub(super) struct Defaults {
    /// Places of each input edge.
    pub mailbox: usize,
    /// Policy of each input edge.
    pub when_full: WhenFull,
    /// Panic policy.
    pub restart: Restart,
    /// Placement.
    pub machine: Option<MachineRef>,
}

/// A stage's `machine` as written (DESIGN §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MachineRef {
    /// `machine = "cam"`: one machine.
    One(String),
    /// `machine = ["gpu1", "gpu2"]`: an anonymous pool of these machines.
    List(Vec<String>),
    /// `machine = { pool = "gpus" }`: the pool `[pools.gpus]`.
    Pool(String),
}

/// What `machine` accepts, for the messages.
const MACHINE_FORMS: &str = "machine = \"cam\", machine = [\"gpu1\", \"gpu2\"] or machine = { pool = \"gpus\" }";

/// `machine` at `at` (a stage's or `[defaults]`'), when present and well formed.
fn machine(cx: &mut Ctx, v: Option<&toml::Value>, at: &[&str], stage: Option<&str>) -> Option<MachineRef> {
    match v? {
        toml::Value::String(s) => Some(MachineRef::One(s.clone())),
        toml::Value::Array(a) => {
            let mut names = Vec::new();
            for (i, item) in a.iter().enumerate() {
                let idx = i.to_string();
                let mut item_at = at.to_vec();
                item_at.push(&idx);
                match item {
                    toml::Value::String(s) if names.contains(s) => cx.err(
                        &item_at,
                        stage,
                        format!("machine `{s}` is listed twice in `machine`"),
                        Some("list each machine of the pool once".into()),
                    ),
                    toml::Value::String(s) => names.push(s.clone()),
                    o => cx.err(
                        &item_at,
                        stage,
                        format!("a pool's machine must be a string, found {}", type_name(o)),
                        Some(MACHINE_FORMS.into()),
                    ),
                }
            }
            if a.is_empty() {
                cx.err(
                    at,
                    stage,
                    "`machine = []` lists no machine".into(),
                    Some(MACHINE_FORMS.into()),
                );
            }
            (names.len() == a.len() && !a.is_empty()).then_some(MachineRef::List(names))
        }
        toml::Value::Table(t) => pool_ref(cx, t, at, stage),
        o => {
            cx.err(
                at,
                stage,
                format!(
                    "`machine` must be a machine name, a list of machines or a pool, found {}",
                    type_name(o)
                ),
                Some(MACHINE_FORMS.into()),
            );
            None
        }
    }
}

/// `machine = { pool = "<name>" }`: one key, a string.
fn pool_ref(cx: &mut Ctx, t: &toml::Table, at: &[&str], stage: Option<&str>) -> Option<MachineRef> {
    let mut ok = true;
    for k in t.keys().filter(|k| k.as_str() != "pool") {
        let mut key_at = at.to_vec();
        key_at.push(k);
        let hint = crate::graph::did_you_mean(k, ["pool"]).map(|_| "did you mean `pool`? ".to_string());
        cx.err(
            &key_at,
            stage,
            format!("unknown key `{k}` in `machine = {{ ... }}`"),
            Some(format!(
                "{}the only key is `pool`: machine = {{ pool = \"<name>\" }} with a [pools.<name>] table",
                hint.unwrap_or_default()
            )),
        );
        ok = false;
    }
    match t.get("pool") {
        Some(toml::Value::String(p)) if ok => Some(MachineRef::Pool(p.clone())),
        Some(toml::Value::String(_)) => None,
        Some(o) => {
            let mut key_at = at.to_vec();
            key_at.push("pool");
            cx.err(
                &key_at,
                stage,
                format!(
                    "`pool` must be the name of a [pools.<name>] table, found {}",
                    type_name(o)
                ),
                Some(MACHINE_FORMS.into()),
            );
            None
        }
        None => {
            if ok {
                cx.err(
                    at,
                    stage,
                    "`machine = { ... }` names no pool".into(),
                    Some(MACHINE_FORMS.into()),
                );
            }
            None
        }
    }
}

/// Reads `[defaults]`; a wrong value is reported and the built-in default used.
pub(super) fn defaults(cx: &mut Ctx, t: &toml::Table) -> Defaults {
    let mailbox = reserved_usize(cx, t.get("mailbox"), &["defaults", "mailbox"], None).unwrap_or(DEFAULT_MAILBOX);
    let when_full = reserved_enum(
        cx,
        t.get("when_full"),
        &["defaults", "when_full"],
        None,
        "block | drop_newest | drop_oldest",
    )
    .unwrap_or(WhenFull::Block);
    let restart = reserved_enum(
        cx,
        t.get("restart"),
        &["defaults", "restart"],
        None,
        "never | on_failure",
    )
    .unwrap_or(Restart::OnFailure);
    let machine = machine(cx, t.get("machine"), &["defaults", "machine"], None);
    Defaults {
        mailbox,
        when_full,
        restart,
        machine,
    }
}

/// Reads the reserved keys of stage `id` (table `t`) into a [`Raw`] stage; the kind
/// and its own keys are left to the next pass.
pub(super) fn stage(cx: &mut Ctx, id: &str, t: &toml::Table, defaults: &Defaults) -> Raw {
    let mut raw = Raw {
        id: id.to_string(),
        kind: None,
        role: None,
        config: None,
        ports: None,
        inputs: Vec::new(),
        edges: Vec::new(),
        mailbox: reserved_usize(cx, t.get("mailbox"), &["stage", id, "mailbox"], Some(id)).unwrap_or(defaults.mailbox),
        when_full: reserved_enum(
            cx,
            t.get("when_full"),
            &["stage", id, "when_full"],
            Some(id),
            "block | drop_newest | drop_oldest",
        )
        .unwrap_or(defaults.when_full),
        replicas: reserved_usize(cx, t.get("replicas"), &["stage", id, "replicas"], Some(id)).unwrap_or(1),
        restart: reserved_enum(
            cx,
            t.get("restart"),
            &["stage", id, "restart"],
            Some(id),
            "never | on_failure",
        )
        .unwrap_or(defaults.restart),
        machine: defaults.machine.clone(),
        unit: None,
        batch: super::batch::read(cx, id, t),
    };
    if let Some(m) = machine(cx, t.get("machine"), &["stage", id, "machine"], Some(id)) {
        raw.machine = Some(m);
    }
    raw.inputs = inputs(cx, id, t.get("inputs"));
    raw
}

/// The reserved keys a source does not read, and what to do instead: a source has no
/// input edge (`mailbox`, `when_full` size and govern a stage's inputs) and runs as one
/// thread that is not restarted (`replicas`, `restart`).
const NOT_FOR_SOURCES: [(&str, &str, &str); 4] = [
    (
        "mailbox",
        "a source has no input edge for `mailbox` to size",
        "set `mailbox` on the stages that read from it",
    ),
    (
        "when_full",
        "a source has no input edge for `when_full` to govern",
        "set `when_full` on the stages that read from it",
    ),
    (
        "replicas",
        "a source runs as one thread, so `replicas` would be ignored",
        "remove `replicas`; to read more frames at once, add replicas to the stages that read from it",
    ),
    (
        "restart",
        "a source is not restarted, so `restart` would be ignored",
        "remove `restart`; a failing source ends its stream",
    ),
];

/// Refuses the reserved keys of source stage `id` (kind `kind`, table `t`) that a
/// source ignores; `[defaults]` still may set them for the other stages.
pub(super) fn source_keys(cx: &mut Ctx, id: &str, kind: &str, t: &toml::Table) {
    for (key, why, what) in NOT_FOR_SOURCES {
        if t.contains_key(key) {
            cx.err(
                &["stage", id, key],
                Some(id),
                format!("`{key}` on source kind `{kind}`: {why}"),
                Some(what.to_string()),
            );
        }
    }
}

/// `inputs` as written: an array of strings.
fn inputs(cx: &mut Ctx, id: &str, v: Option<&toml::Value>) -> Vec<String> {
    let mut inputs = Vec::new();
    match v {
        None => {}
        Some(toml::Value::Array(a)) => {
            for (i, item) in a.iter().enumerate() {
                match item {
                    toml::Value::String(s) => inputs.push(s.clone()),
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
    inputs
}

/// An integer >= 1 at `at`, when present.
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

/// One of the `allowed` names at `at`, when present.
fn reserved_enum<T: for<'de> Deserialize<'de>>(
    cx: &mut Ctx,
    v: Option<&toml::Value>,
    at: &[&str],
    stage: Option<&str>,
    allowed: &str,
) -> Option<T> {
    let v = v?;
    match T::deserialize(v.clone()).ok() {
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

#[cfg(test)]
mod tests {
    use super::super::testkit::{errors_of, source};
    use super::super::{table_of, Restart, WhenFull};

    #[test]
    fn a_source_refuses_the_reserved_keys_it_would_ignore() {
        let src = source("[stage.a]\nkind = \"src\"\nmailbox = 4\nwhen_full = \"block\"\nreplicas = 2\nrestart = \"never\"\nmachine = \"m\"\n");
        let mut helps = Vec::new();
        let errors = errors_of(&src, |cx| {
            let stages = table_of(&src.values, "stage");
            let t = stages.get("a").and_then(|t| t.as_table()).expect("a table");
            super::source_keys(cx, "a", "src", t);
            helps = cx.errors.iter().map(|d| d.help.clone().unwrap_or_default()).collect();
        });
        assert_eq!(
            errors,
            [
                "`mailbox` on source kind `src`: a source has no input edge for `mailbox` to size",
                "`when_full` on source kind `src`: a source has no input edge for `when_full` to govern",
                "`replicas` on source kind `src`: a source runs as one thread, so `replicas` would be ignored",
                "`restart` on source kind `src`: a source is not restarted, so `restart` would be ignored",
            ]
        );
        assert_eq!(
            helps,
            [
                "set `mailbox` on the stages that read from it",
                "set `when_full` on the stages that read from it",
                "remove `replicas`; to read more frames at once, add replicas to the stages that read from it",
                "remove `restart`; a failing source ends its stream",
            ]
        );
    }

    #[test]
    fn wrong_reserved_values_are_reported_and_defaults_fill_in() {
        let src = source(
            r#"
[defaults]
mailbox = 0
when_full = "drop_oldest"
restart = "sometimes"
machine = 1
[stage.a]
mailbox = "big"
when_full = "wait"
replicas = 0
restart = "never"
machine = ["x", "x"]
inputs = ["b", 3]
"#,
        );
        let mut raw = None;
        let errors = errors_of(&src, |cx| {
            let d = super::defaults(cx, &table_of(&src.values, "defaults"));
            let stages = table_of(&src.values, "stage");
            let t = stages.get("a").and_then(|t| t.as_table()).expect("a table");
            raw = Some(super::stage(cx, "a", t, &d));
        });
        assert_eq!(
            errors,
            [
                "`mailbox` must be an integer >= 1, found 0",
                "`restart` must be one of never | on_failure, found \"sometimes\"",
                "`machine` must be a machine name, a list of machines or a pool, found integer",
                "`mailbox` must be an integer >= 1, found \"big\"",
                "`when_full` must be one of block | drop_newest | drop_oldest, found \"wait\"",
                "`replicas` must be an integer >= 1, found 0",
                "machine `x` is listed twice in `machine`",
                "an input must be a string like \"split.tile0\", found integer",
            ]
        );
        let raw = raw.expect("the pass ran");
        assert_eq!(raw.mailbox, super::DEFAULT_MAILBOX);
        assert_eq!(raw.when_full, WhenFull::DropOldest);
        assert_eq!(raw.restart, Restart::Never);
        assert_eq!(raw.inputs, ["b"]);
    }

    #[test]
    fn machine_reads_a_name_a_list_or_a_pool() {
        use super::MachineRef;
        let src = source(
            r#"
[defaults]
machine = { pool = "gpus" }
[stage.a]
machine = "cam"
[stage.b]
machine = ["gpu1", "gpu2"]
[stage.c]
[stage.d]
machine = { pol = "gpus" }
[stage.e]
machine = []
[stage.f]
machine = { pool = 3 }
"#,
        );
        let mut got = Vec::new();
        let errors = errors_of(&src, |cx| {
            let d = super::defaults(cx, &table_of(&src.values, "defaults"));
            let stages = table_of(&src.values, "stage");
            for id in ["a", "b", "c", "d", "e", "f"] {
                let t = stages.get(id).and_then(|t| t.as_table()).expect("a table");
                got.push(super::stage(cx, id, t, &d).machine);
            }
        });
        let pool = Some(MachineRef::Pool("gpus".into()));
        assert_eq!(
            got,
            [
                Some(MachineRef::One("cam".into())),
                Some(MachineRef::List(vec!["gpu1".into(), "gpu2".into()])),
                pool.clone(),
                pool.clone(),
                pool.clone(),
                pool,
            ]
        );
        assert_eq!(
            errors,
            [
                "unknown key `pol` in `machine = { ... }`",
                "`machine = []` lists no machine",
                "`pool` must be the name of a [pools.<name>] table, found integer",
            ]
        );
    }
}
