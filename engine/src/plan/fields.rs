//! Pass 7: fields. In topological order, the fields each output port carries are
//! worked out (what it adds, plus its inputs' fields when it passes them through), and
//! every stage must get the fields its kind requires: on each input, or for a joining
//! stage on its inputs together.

use std::collections::BTreeSet;

use super::{Ctx, Raw};

/// Checks the fields every stage requires against what its inputs carry.
pub(super) fn check(cx: &mut Ctx, raws: &[Raw], order: &[usize]) {
    let mut avail: Vec<Vec<BTreeSet<String>>> = vec![Vec::new(); raws.len()];
    for &i in order {
        let r = &raws[i];
        let Some(ports) = &r.ports else { continue };
        let in_sets: Vec<&BTreeSet<String>> = r.edges.iter().filter_map(|e| avail[e.from].get(e.port)).collect();
        let union: BTreeSet<String> = in_sets.iter().flat_map(|s| s.iter().cloned()).collect();
        let kind = r.kind.clone().unwrap_or_default();
        if ports.join.is_some() {
            let missing: Vec<&String> = ports.requires.iter().filter(|f| !union.contains(*f)).collect();
            if !missing.is_empty() && in_sets.len() == r.edges.len() {
                cx.err(
                    &["stage", &r.id, "inputs"],
                    Some(&r.id),
                    format!(
                        "type mismatch: kind `{kind}` needs field(s) {} from its inputs together, which carry {{{}}}",
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
                            "type mismatch: input `{}` carries {{{}}} but kind `{kind}` needs {}",
                            e.text,
                            set.iter().cloned().collect::<Vec<_>>().join(", "),
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{errors_of, passes_until, source};

    #[test]
    fn a_stage_whose_inputs_lack_its_fields_is_reported() {
        let src = source(
            r#"
[stage.cam]
kind = "src"
[stage.m]
kind = "map"
need = "text"
inputs = ["cam"]
[stage.j]
kind = "join"
inputs = ["cam", "m"]
[stage.out]
kind = "sink"
inputs = ["j"]
"#,
        );
        let errors = errors_of(&src, |cx| {
            let (_, mut raws, _) = passes_until(cx);
            super::super::inputs::resolve(cx, &mut raws);
            let order = super::super::topology::order(cx, &raws);
            super::check(cx, &raws, &order);
        });
        assert_eq!(
            errors,
            [
                "type mismatch: input `cam` carries {image} but kind `map` needs `text`",
                "type mismatch: kind `join` needs field(s) `text` from its inputs together, which carry {image, tile}",
            ]
        );
    }
}
