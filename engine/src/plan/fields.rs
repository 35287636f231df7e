//! Pass 7: fields and their types. In topological order, the fields each output port
//! carries are worked out with their value types (what it adds, plus its inputs'
//! fields when it passes them through) and written to the port
//! ([`crate::stage::OutPort::carries`], for the runtime's debug check). Every stage must
//! get the fields its kind requires, each with a type its kind accepts: on each input,
//! or for a joining stage on its inputs together.

use std::collections::BTreeMap;

use super::{Ctx, InputEdge, Raw};
use crate::message::FieldType;
use crate::stage::Field;

/// What one output port carries: field name to value type.
type Carried = BTreeMap<String, FieldType>;

/// Checks the fields every stage requires against what its inputs carry, and records
/// on each output port what it carries.
pub(super) fn check(cx: &mut Ctx, raws: &mut [Raw], order: &[usize]) {
    let mut avail: Vec<Vec<Carried>> = vec![Vec::new(); raws.len()];
    for &i in order {
        let Some(ports) = raws[i].ports.clone() else { continue };
        let r = &raws[i];
        let in_sets: Vec<&Carried> = r.edges.iter().filter_map(|e| avail[e.from].get(e.port)).collect();
        let union = union_of(&in_sets);
        if ports.join.is_some() {
            if in_sets.len() == r.edges.len() {
                check_joined(cx, raws, r, &ports.requires, &avail, &union);
            }
        } else {
            for (k, e) in r.edges.iter().enumerate() {
                let Some(set) = avail[e.from].get(e.port) else { continue };
                check_edge(cx, raws, r, k, e, set, &ports.requires);
            }
        }
        let carried: Vec<Carried> = ports
            .outputs
            .iter()
            .map(|p| {
                let mut s = if p.passthrough { union.clone() } else { Carried::new() };
                s.extend(p.adds.iter().map(|f| (f.name.clone(), f.ty)));
                s
            })
            .collect();
        if let Some(ports) = raws[i].ports.as_mut() {
            for (p, c) in ports.outputs.iter_mut().zip(&carried) {
                p.carries = Some(c.clone());
            }
        }
        avail[i] = carried;
    }
}

/// The fields of several inputs together; a field two inputs carry with different
/// types may be either, so it is `any`.
fn union_of(sets: &[&Carried]) -> Carried {
    let mut union = Carried::new();
    for (name, &ty) in sets.iter().flat_map(|s| s.iter()) {
        union
            .entry(name.clone())
            .and_modify(|t| {
                if *t != ty {
                    *t = FieldType::Any
                }
            })
            .or_insert(ty);
    }
    union
}

/// `kind` of a stage, or `?` before its kind was read.
fn kind_of(r: &Raw) -> &str {
    r.kind.as_deref().unwrap_or("?")
}

/// Names of a set, comma-separated, for messages.
fn names(set: &Carried) -> String {
    set.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// One input `e` (number `k`) of a non-joining stage `r`: every required field present,
/// with a type the stage accepts.
fn check_edge(cx: &mut Ctx, raws: &[Raw], r: &Raw, k: usize, e: &InputEdge, set: &Carried, requires: &[Field]) {
    let kind = kind_of(r);
    let missing: Vec<&Field> = requires.iter().filter(|f| !set.contains_key(&f.name)).collect();
    let path = ["stage", &r.id, "inputs", &k.to_string()];
    if !missing.is_empty() {
        cx.err(
            &path,
            Some(&r.id),
            format!(
                "type mismatch: input `{}` carries {{{}}} but kind `{kind}` needs {}",
                e.text,
                names(set),
                missing
                    .iter()
                    .map(|m| format!("`{}`", m.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        );
    }
    let from = &raws[e.from];
    for f in requires {
        let Some(&has) = set.get(&f.name) else { continue };
        if !f.ty.accepts(has) {
            cx.err(
                &path,
                Some(&r.id),
                format!(
                    "type mismatch: stage `{}` (kind `{kind}`) needs field `{}` as {}, but its input `{}` from stage `{}` (kind `{}`) carries `{}` as {has}",
                    r.id, f.name, f.ty, e.text, from.id, kind_of(from), f.name
                ),
                Some(format!(
                    "feed `{}` from a port whose `{}` is {} (check that `inputs` names the stage and port you meant), or put a stage that turns {has} into {} in between",
                    r.id, f.name, f.ty, f.ty
                )),
            );
        }
    }
}

/// A joining stage `r`: every required field carried by some input, and by one with a
/// type the stage accepts.
fn check_joined(cx: &mut Ctx, raws: &[Raw], r: &Raw, requires: &[Field], avail: &[Vec<Carried>], union: &Carried) {
    let kind = kind_of(r);
    let missing: Vec<&Field> = requires.iter().filter(|f| !union.contains_key(&f.name)).collect();
    if !missing.is_empty() {
        cx.err(
            &["stage", &r.id, "inputs"],
            Some(&r.id),
            format!(
                "type mismatch: kind `{kind}` needs field(s) {} from its inputs together, which carry {{{}}}",
                missing
                    .iter()
                    .map(|m| format!("`{}`", m.name))
                    .collect::<Vec<_>>()
                    .join(", "),
                names(union)
            ),
            Some("add an input that provides them".into()),
        );
    }
    for f in requires {
        // Each input carrying the field, with its type there.
        let carriers: Vec<(&InputEdge, FieldType)> = r
            .edges
            .iter()
            .filter_map(|e| avail[e.from].get(e.port)?.get(&f.name).map(|&t| (e, t)))
            .collect();
        if carriers.is_empty() || carriers.iter().any(|&(_, t)| f.ty.accepts(t)) {
            continue;
        }
        let found: Vec<String> = carriers
            .iter()
            .map(|(e, t)| {
                format!(
                    "`{}` from stage `{}` (kind `{}`) carries it as {t}",
                    e.text,
                    raws[e.from].id,
                    kind_of(&raws[e.from])
                )
            })
            .collect();
        cx.err(
            &["stage", &r.id, "inputs"],
            Some(&r.id),
            format!(
                "type mismatch: stage `{}` (kind `{kind}`) needs field `{}` as {}, but input {}",
                r.id,
                f.name,
                f.ty,
                found.join("; input ")
            ),
            Some(format!(
                "add an input whose `{}` is {}, or check that `inputs` names the stages and ports you meant",
                f.name, f.ty
            )),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{errors_of, passes_until, registry, source};

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
            super::check(cx, &mut raws, &order);
        });
        assert_eq!(
            errors,
            [
                "type mismatch: input `cam` carries {image} but kind `map` needs `text`",
                "type mismatch: kind `join` needs field(s) `text` from its inputs together, which carry {image, tile}",
            ]
        );
    }

    /// A consumer needing a field as one type from a port carrying it as another: one
    /// error per input, naming both stages, the field and both types, at the input's line.
    #[test]
    fn a_field_of_the_wrong_type_is_reported_with_both_stages_and_types() {
        let src = source(
            r#"
[stage.cam]
kind = "src"
[stage.m]
kind = "map"
need = "image: text"
inputs = ["cam"]
[stage.t]
kind = "map"
add = "text: number"
inputs = ["cam"]
[stage.j]
kind = "join"
inputs = ["cam", "t"]
[stage.out]
kind = "sink"
inputs = ["m", "j"]
"#,
        );
        let d = crate::plan::plan(&src, &registry())
            .err()
            .expect("the graph has type errors");
        let messages: Vec<&str> = d.0.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "type mismatch: stage `m` (kind `map`) needs field `image` as text, but its input `cam` from stage `cam` (kind `src`) carries `image` as image",
                "type mismatch: stage `j` (kind `join`) needs field `text` as text, but input `t` from stage `t` (kind `map`) carries it as number",
            ]
        );
        let first = d.0[0].to_string();
        assert!(first.contains("test.toml:7"), "points at `inputs` of `m`: {first}");
        let help = d.0[0].help.as_deref().unwrap_or_default();
        assert!(help.contains("from a port whose `image` is text"), "{help}");
    }

    /// Validation writes on each port what it carries, with the types: a passthrough
    /// port its inputs' fields and its own, a fresh one its own only.
    #[test]
    fn each_port_records_what_it_carries() {
        let src = source(
            r#"
[stage.cam]
kind = "src"
[stage.m]
kind = "map"
add = "score: number"
inputs = ["cam"]
[stage.out]
kind = "sink"
inputs = ["m", "m.side"]
"#,
        );
        let plan = crate::plan::plan(&src, &registry()).expect("a valid graph");
        let carried = |stage: &str, port: usize| {
            let i = plan.index(stage).expect("the stage");
            let c = plan.stages[i].ports.outputs[port].carries.clone().expect("validated");
            c.into_iter().map(|(n, t)| format!("{n}: {t}")).collect::<Vec<_>>()
        };
        assert_eq!(carried("cam", 0), ["image: image"]);
        assert_eq!(carried("m", 0), ["image: image", "score: number", "tile: rect"]);
        assert_eq!(carried("m", 1), ["image: image"]);
    }

    /// A field of type `any` matches every type, either side.
    #[test]
    fn any_matches_every_type() {
        let src = source(
            r#"
[stage.cam]
kind = "src"
[stage.m]
kind = "map"
need = "image"
add = "text: any"
inputs = ["cam"]
[stage.j]
kind = "join"
inputs = ["m"]
[stage.out]
kind = "sink"
inputs = ["j"]
"#,
        );
        assert!(crate::plan::plan(&src, &registry()).is_ok());
    }
}
