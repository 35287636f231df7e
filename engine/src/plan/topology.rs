//! Pass 6: consumers and cycles. Every source and transform feeds some stage; the
//! graph is acyclic, and its topological order is what the plan keeps.

use super::{Ctx, Raw};
use crate::stage::Role;

/// Consumers of every stage per output port, `(stage, input)`; an error for each
/// source or transform nothing reads.
pub(super) fn consumers(cx: &mut Ctx, raws: &[Raw]) -> Vec<Vec<Vec<(usize, usize)>>> {
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
    consumers
}

/// A topological order (each stage after its producers), or an empty one and an
/// error naming the chain that closes a cycle.
pub(super) fn order(cx: &mut Ctx, raws: &[Raw]) -> Vec<usize> {
    match topo_order(raws) {
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

#[cfg(test)]
mod tests {
    use super::super::testkit::{errors_of, passes_until, source};

    fn topology(text: &str) -> (Vec<String>, Vec<usize>) {
        let src = source(text);
        let mut order = Vec::new();
        let errors = errors_of(&src, |cx| {
            let (_, mut raws, _) = passes_until(cx);
            super::super::inputs::resolve(cx, &mut raws);
            super::consumers(cx, &raws);
            order = super::order(cx, &raws);
        });
        (errors, order)
    }

    #[test]
    fn a_stage_nothing_reads_is_reported() {
        let (errors, order) = topology(
            "[stage.cam]\nkind = \"src\"\n[stage.m]\nkind = \"map\"\ninputs = [\"cam\"]\n[stage.idle]\nkind = \"src\"\n",
        );
        assert_eq!(
            errors,
            [
                "stage has no consumers: nothing reads its output",
                "stage has no consumers: nothing reads its output",
            ]
        );
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn a_cycle_is_reported_as_the_chain_that_closes_it() {
        let (errors, order) = topology(
            r#"
[stage.cam]
kind = "src"
[stage.a]
kind = "map"
inputs = ["cam", "c"]
[stage.b]
kind = "map"
inputs = ["a"]
[stage.c]
kind = "map"
inputs = ["b"]
[stage.out]
kind = "sink"
inputs = ["c.side"]
"#,
        );
        assert_eq!(errors, ["cyclic dependency detected in the chain [ b -> c -> a -> b ]"]);
        assert!(order.is_empty());
    }
}
