//! Pass 4: placement (DESIGN §7). A stage's `machine` names a `[machines.<name>]`
//! table; once one stage is placed, all are.

use super::tables::Header;
use super::{Ctx, Raw};
use crate::graph::did_you_mean;

/// Checks the `machine` of every stage against `[machines]`.
pub(super) fn check(cx: &mut Ctx, raws: &[Raw], header: &Header, stages_t: &toml::Table) {
    let machines = &header.machines;
    let placed = raws.iter().any(|r| r.machine.is_some());
    for r in raws {
        match &r.machine {
            Some(m) if !machines.contains_key(m) && header.machines_table => {
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{errors_of, passes_until, source};

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
            let (header, raws, stages_t) = passes_until(cx);
            super::check(cx, &raws, &header, &stages_t);
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
            let (header, raws, stages_t) = passes_until(cx);
            super::check(cx, &raws, &header, &stages_t);
        });
        assert_eq!(
            errors,
            ["machine `edge` is not described: the graph has no [machines] table"]
        );
    }
}
