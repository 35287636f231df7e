//! The reserved key `batch = { max = N, wait_ms = T }`: its shape is read with the other
//! reserved keys (pass 2); whether the stage may batch at all is known once its kind and
//! ports are (pass 3).

use std::time::Duration;

use super::{type_name, Ctx, Raw};
use crate::graph::did_you_mean;
use crate::registry::{ErasedKind, Registry};

/// The longest `wait_ms` a batch may wait for more messages after its first: one minute.
/// A longer wait only holds frames back (the edge bound stops the producers meanwhile).
pub const MAX_BATCH_WAIT_MS: u64 = 60_000;

/// The most messages one batch may take.
pub const MAX_BATCH: usize = 4096;

/// Keys of the `batch` table.
const BATCH_KEYS: &[&str] = &["max", "wait_ms"];

/// How a stage gathers messages into one call ([`Stage::process_batch`](crate::stage::Stage::process_batch)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// The most messages in one call (1 = no batching).
    pub max: usize,
    /// How long after the first message of a batch the stage waits for more before it
    /// calls with what it has.
    pub wait: Duration,
}

/// Reads `batch` of stage `id` (table `t`), when present: a table with `max` (an
/// integer from 1 to [`MAX_BATCH`]) and `wait_ms` (an integer from 0 to
/// [`MAX_BATCH_WAIT_MS`], default 0).
pub(super) fn read(cx: &mut Ctx, id: &str, t: &toml::Table) -> Option<Batch> {
    let v = t.get("batch")?;
    let at = ["stage", id, "batch"];
    let Some(table) = v.as_table() else {
        cx.err(
            &at,
            Some(id),
            format!("`batch` must be a table, found {}", type_name(v)),
            Some("batch = { max = 4, wait_ms = 10 }".into()),
        );
        return None;
    };
    let mut ok = true;
    for k in table.keys().filter(|k| !BATCH_KEYS.contains(&k.as_str())) {
        ok = false;
        let help = match did_you_mean(k, BATCH_KEYS.iter().copied()) {
            Some(h) => format!("did you mean `{h}`? keys of `batch`: max, wait_ms"),
            None => "keys of `batch`: max, wait_ms".into(),
        };
        cx.err(
            &["stage", id, "batch", k],
            Some(id),
            format!("unknown key `{k}` in `batch`"),
            Some(help),
        );
    }
    let max = match table.get("max") {
        Some(toml::Value::Integer(n)) if (1..=MAX_BATCH as i64).contains(n) => Some(*n as usize),
        Some(other) => {
            let msg = format!("`batch.max` must be an integer from 1 to {MAX_BATCH}, found {other}");
            cx.err(&["stage", id, "batch", "max"], Some(id), msg, None);
            None
        }
        None => {
            let msg = "`batch` needs `max`, the most messages in one call".to_string();
            cx.err(&at, Some(id), msg, Some("batch = { max = 4, wait_ms = 10 }".into()));
            None
        }
    };
    let wait_ms = match table.get("wait_ms") {
        None => Some(0),
        Some(toml::Value::Integer(n)) if (0..=MAX_BATCH_WAIT_MS as i64).contains(n) => Some(*n as u64),
        Some(other) => {
            let msg = format!(
                "`batch.wait_ms` must be an integer from 0 to {MAX_BATCH_WAIT_MS} (milliseconds), found {other}"
            );
            cx.err(&["stage", id, "batch", "wait_ms"], Some(id), msg, None);
            None
        }
    };
    match (ok, max, wait_ms) {
        (true, Some(max), Some(ms)) => Some(Batch {
            max,
            wait: Duration::from_millis(ms),
        }),
        _ => None,
    }
}

/// Refuses `batch` on stage `raw` when its kind cannot batch, or when a batch could never
/// fill (`max` above the places of its input edge). A joining stage of a kind that
/// batches gathers complete frames (every input's parts of one frame) into its batches.
pub(super) fn check(cx: &mut Ctx, registry: &Registry, kind: &dyn ErasedKind, raw: &Raw) {
    let Some(batch) = raw.batch else { return };
    let id = raw.id.as_str();
    let at = ["stage", id, "batch"];
    if !kind.batch() {
        let batching: Vec<&str> = registry.kinds().filter(|k| k.batch()).map(|k| k.name()).collect();
        let help = if batching.is_empty() {
            "remove `batch` from this stage".to_string()
        } else {
            format!(
                "remove `batch` from this stage; kinds that batch: {}",
                batching.join(", ")
            )
        };
        let msg = if raw.ports.as_ref().is_some_and(|p| p.join.is_some()) {
            format!(
                "stage `{id}` joins its inputs by frame, and its kind `{}` does not batch: it gets the parts of one frame per call",
                kind.name()
            )
        } else {
            format!("kind `{}` does not batch: it handles one message per call", kind.name())
        };
        cx.err(&at, Some(id), msg, Some(help));
        return;
    }
    if batch.max > raw.mailbox {
        let msg = format!(
            "`batch.max` = {} is more than `mailbox` = {}: a batch holds its messages' places on the input edge until it is done, so it could never fill",
            batch.max, raw.mailbox
        );
        let help = format!(
            "set `mailbox = {}` (or more) on this stage, or lower `batch.max`",
            batch.max
        );
        cx.err(&at, Some(id), msg, Some(help));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{source, NoKeys};
    use super::Batch;
    use crate::message::FieldType;
    use crate::registry::Registry;
    use crate::stage::{BuildContext, Built, Field, OutPort, Ports, Role, StageError, StageKind};

    /// A transform that takes the reserved `batch` key (validated only, never built).
    struct Batcher;
    impl StageKind for Batcher {
        type Config = NoKeys;
        const NAME: &'static str = "batcher";
        const ROLE: Role = Role::Transform;
        const DOC: &'static str = "handles its messages in batches";
        const BATCH: bool = true;
        fn ports(_: &NoKeys) -> Ports {
            Ports {
                outputs: vec![OutPort::forwarding("out")],
                requires: vec![Field::new("image", FieldType::Image)],
                ..Ports::default()
            }
        }
        fn build(_: &NoKeys, _: &BuildContext) -> Result<Built, StageError> {
            Err(StageError::new("build", "the validation tests' kinds are never built"))
        }
    }

    /// A joining kind that batches: it gathers complete frames into its batches.
    struct BatchJoin;
    impl StageKind for BatchJoin {
        type Config = NoKeys;
        const NAME: &'static str = "batch_join";
        const ROLE: Role = Role::Transform;
        const DOC: &'static str = "joins images by frame";
        const BATCH: bool = true;
        fn ports(_: &NoKeys) -> Ports {
            Ports {
                outputs: vec![OutPort::forwarding("out")],
                requires: vec![Field::new("image", FieldType::Image)],
                join: Some(Duration::from_secs(1)),
                heavy: false,
            }
        }
        fn build(_: &NoKeys, _: &BuildContext) -> Result<Built, StageError> {
            Err(StageError::new("build", "the validation tests' kinds are never built"))
        }
    }

    /// A joining kind that does not batch.
    struct PlainJoin;
    impl StageKind for PlainJoin {
        type Config = NoKeys;
        const NAME: &'static str = "plain_join";
        const ROLE: Role = Role::Transform;
        const DOC: &'static str = "joins images by frame, one frame per call";
        fn ports(c: &NoKeys) -> Ports {
            BatchJoin::ports(c)
        }
        fn build(_: &NoKeys, _: &BuildContext) -> Result<Built, StageError> {
            Err(StageError::new("build", "the validation tests' kinds are never built"))
        }
    }

    /// The passes' test kinds, `batcher`, `batch_join` and `plain_join`.
    fn registry() -> Registry {
        let mut r = super::super::testkit::registry();
        r.register::<Batcher>().register::<BatchJoin>().register::<PlainJoin>();
        r
    }

    /// Every diagnostic of `plan` on `text` as `line: message (help)`.
    fn diagnostics(text: &str) -> Vec<String> {
        match super::super::plan(&source(text), &registry()) {
            Ok(_) => Vec::new(),
            Err(d) => {
                d.0.iter()
                    .map(|d| {
                        let line = d.location.map(|l| l.line).unwrap_or(0);
                        let help = d.help.as_deref().map(|h| format!(" (help: {h})")).unwrap_or_default();
                        format!("{line}: {}{help}", d.message)
                    })
                    .collect()
            }
        }
    }

    const HEAD: &str = "[stage.s]\nkind = \"src\"\n";

    #[test]
    fn a_valid_batch_is_planned_and_max_1_means_none() {
        let text = format!(
            "{HEAD}[stage.b]\nkind = \"batcher\"\ninputs = [\"s\"]\nmailbox = 8\nbatch = {{ max = 8, wait_ms = 20 }}\n[stage.c]\nkind = \"batcher\"\ninputs = [\"b\"]\nbatch = {{ max = 1 }}\n[stage.k]\nkind = \"sink\"\ninputs = [\"c\"]\n"
        );
        let plan = super::super::plan(&source(&text), &registry()).expect("a valid graph");
        let b = &plan.stages[plan.index("b").expect("b")];
        assert_eq!(
            b.batch,
            Some(Batch {
                max: 8,
                wait: Duration::from_millis(20)
            })
        );
        assert_eq!(plan.stages[plan.index("c").expect("c")].batch, None);
    }

    #[test]
    fn malformed_batches_are_refused_at_their_line() {
        let text = format!(
            "{HEAD}[stage.a]\nkind = \"batcher\"\ninputs = [\"s\"]\nbatch = 4\n\
[stage.b]\nkind = \"batcher\"\ninputs = [\"a\"]\nbatch = {{ max = 0, wait_ms = -1 }}\n\
[stage.c]\nkind = \"batcher\"\ninputs = [\"b\"]\nbatch = {{ wait_ms = 5, maxx = 2 }}\n\
[stage.d]\nkind = \"batcher\"\ninputs = [\"c\"]\nbatch = {{ max = 2, wait_ms = 60001 }}\n\
[stage.e]\nkind = \"batcher\"\ninputs = [\"d\"]\n[stage.e.batch]\nmax = 4.5\n\
[stage.k]\nkind = \"sink\"\ninputs = [\"e\"]\n"
        );
        assert_eq!(
            diagnostics(&text),
            [
                "6: `batch` must be a table, found integer (help: batch = { max = 4, wait_ms = 10 })",
                "10: `batch.max` must be an integer from 1 to 4096, found 0",
                "10: `batch.wait_ms` must be an integer from 0 to 60000 (milliseconds), found -1",
                "14: unknown key `maxx` in `batch` (help: did you mean `max`? keys of `batch`: max, wait_ms)",
                "14: `batch` needs `max`, the most messages in one call (help: batch = { max = 4, wait_ms = 10 })",
                "18: `batch.wait_ms` must be an integer from 0 to 60000 (milliseconds), found 60001",
                "23: `batch.max` must be an integer from 1 to 4096, found 4.5",
            ]
        );
    }

    #[test]
    fn batch_is_refused_on_kinds_that_do_not_batch_joins_included_and_beyond_the_mailbox() {
        let text = format!(
            "{HEAD}[stage.m]\nkind = \"map\"\ninputs = [\"s\"]\nbatch = {{ max = 2 }}\n\
[stage.t]\nkind = \"map\"\nneed = \"tile\"\ninputs = [\"m.out\"]\n\
[stage.j]\nkind = \"plain_join\"\ninputs = [\"m.side\", \"t.out\"]\nbatch = {{ max = 2, wait_ms = 5 }}\n\
[stage.b]\nkind = \"batcher\"\ninputs = [\"j\"]\nbatch = {{ max = 8, wait_ms = 5 }}\n\
[stage.k]\nkind = \"sink\"\ninputs = [\"b\"]\n"
        );
        assert_eq!(
            diagnostics(&text),
            [
                "6: kind `map` does not batch: it handles one message per call (help: remove `batch` from this stage; kinds that batch: batch_join, batcher)",
                "14: stage `j` joins its inputs by frame, and its kind `plain_join` does not batch: it gets the parts of one frame per call (help: remove `batch` from this stage; kinds that batch: batch_join, batcher)",
                "18: `batch.max` = 8 is more than `mailbox` = 4: a batch holds its messages' places on the input edge until it is done, so it could never fill (help: set `mailbox = 8` (or more) on this stage, or lower `batch.max`)",
            ]
        );
    }

    #[test]
    fn a_joining_kind_that_batches_takes_batch() {
        let text = format!(
            "{HEAD}[stage.m]\nkind = \"map\"\ninputs = [\"s\"]\n\
[stage.t]\nkind = \"map\"\nneed = \"tile\"\ninputs = [\"m.out\"]\n\
[stage.j]\nkind = \"batch_join\"\ninputs = [\"m.side\", \"t.out\"]\nbatch = {{ max = 4, wait_ms = 5 }}\n\
[stage.k]\nkind = \"sink\"\ninputs = [\"j\"]\n"
        );
        let plan = super::super::plan(&source(&text), &registry()).unwrap_or_else(|d| panic!("{d:?}"));
        let j = &plan.stages[plan.index("j").expect("j")];
        assert_eq!(
            j.batch,
            Some(Batch {
                max: 4,
                wait: Duration::from_millis(5)
            })
        );
    }
}
