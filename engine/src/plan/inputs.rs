//! Pass 5: inputs and ports. Every input names another stage (`stage`) or one of its
//! output ports (`stage.port`), once; sources take none, other stages at least one.

use std::collections::{BTreeSet, HashMap};

use super::{Ctx, InputEdge, Raw};
use crate::graph::did_you_mean;
use crate::stage::Role;

/// Resolves every stage's inputs into [`InputEdge`]s.
pub(super) fn resolve(cx: &mut Ctx, raws: &mut [Raw]) {
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
            if let Some(edge) = edge(cx, raws, &index, &all_ids, i, &at, text) {
                raws[i].edges.push(edge);
            }
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
}

/// The edge input `text` (at `at`) of stage `i` names, or `None` when it names no
/// stage's output (reported, unless the producer's own config failed).
fn edge(
    cx: &mut Ctx,
    raws: &[Raw],
    index: &HashMap<String, usize>,
    all_ids: &[String],
    i: usize,
    at: &[&str],
    text: &str,
) -> Option<InputEdge> {
    let id = raws[i].id.as_str();
    let (sid, port) = match text.split_once('.') {
        Some((s, p)) => (s, Some(p)),
        None => (text, None),
    };
    let Some(&from) = index.get(sid) else {
        let hint = did_you_mean(sid, all_ids.iter().map(String::as_str));
        cx.err(
            at,
            Some(id),
            format!("input `{text}` doesn't match any stage"),
            Some(match hint {
                Some(h) => format!("did you mean `{h}`?"),
                None => format!("stages: {}", all_ids.join(", ")),
            }),
        );
        return None;
    };
    if from == i {
        cx.err(at, Some(id), format!("input `{text}` is the stage itself"), None);
        return None;
    }
    if raws[from].role == Some(Role::Sink) {
        cx.err(
            at,
            Some(id),
            format!("input `{text}` is a sink, which has no outputs"),
            None,
        );
        return None;
    }
    let ports = raws[from].ports.as_ref()?;
    let names: Vec<&str> = ports.outputs.iter().map(|p| p.name.as_str()).collect();
    let port_idx = match port {
        None => 0,
        Some(p) => match names.iter().position(|n| *n == p) {
            Some(pi) => pi,
            None => {
                let hint = did_you_mean(p, names.iter().copied());
                cx.err(
                    at,
                    Some(id),
                    format!("stage `{sid}` has no output port `{p}`"),
                    Some(match hint {
                        Some(h) => format!("did you mean `{sid}.{h}`? its ports are: {}", names.join(", ")),
                        None => format!("its ports are: {}", names.join(", ")),
                    }),
                );
                return None;
            }
        },
    };
    Some(InputEdge {
        from,
        port: port_idx,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{errors_of, passes_until, source};

    #[test]
    fn inputs_that_name_nothing_usable_are_reported() {
        let src = source(
            r#"
[stage.cam]
kind = "src"
inputs = ["m"]
[stage.m]
kind = "map"
inputs = ["cam", "cam", "m", "out", "cam.sid", "camm"]
[stage.j]
kind = "join"
replicas = 2
[stage.out]
kind = "sink"
inputs = ["m.side"]
"#,
        );
        let mut edges = Vec::new();
        let errors = errors_of(&src, |cx| {
            let (_, mut raws, _) = passes_until(cx);
            super::resolve(cx, &mut raws);
            edges = raws
                .iter()
                .map(|r| r.edges.iter().map(|e| (e.from, e.port)).collect::<Vec<_>>())
                .collect();
        });
        assert_eq!(
            errors,
            [
                "a source takes no inputs",
                "duplicate input `cam`",
                "input `m` is the stage itself",
                "input `out` is a sink, which has no outputs",
                "stage `cam` has no output port `sid`",
                "input `camm` doesn't match any stage",
                "this stage has no inputs",
                "a joining stage cannot have replicas > 1",
            ]
        );
        // m reads cam's default port; out reads m's second port.
        assert_eq!(edges, [vec![], vec![(0, 0)], vec![], vec![(1, 1)]]);
    }
}
