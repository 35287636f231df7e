//! Pictures of a plan (`dot`, `mermaid`) and the JSON Schema of graph files.

use crate::plan::Plan;
use crate::registry::Registry;
use crate::stage::Role;

fn edge_label(plan: &Plan, from: usize, port: usize) -> String {
    let ports = &plan.stages[from].ports.outputs;
    if ports.len() > 1 {
        ports.get(port).map(|p| p.name.clone()).unwrap_or_default()
    } else {
        String::new()
    }
}

/// The stages placed on each pool (DESIGN §7), by pool name: a picture draws a pool
/// as a cluster around its stages.
fn pool_members(plan: &Plan) -> Vec<(&str, Vec<usize>)> {
    plan.pools
        .keys()
        .map(|name| {
            let members = (0..plan.stages.len())
                .filter(|&i| plan.stages[i].machine.as_deref() == Some(name.as_str()))
                .collect();
            (name.as_str(), members)
        })
        .filter(|(_, m): &(&str, Vec<usize>)| !m.is_empty())
        .collect()
}

/// `pool gpus: gpu1, gpu2 (+ up to 4 at run time)`.
fn pool_label(plan: &Plan, name: &str) -> String {
    let Some(p) = plan.pools.get(name) else {
        return format!("pool {name}");
    };
    let mut label = format!("pool {name}");
    if !p.machines.is_empty() {
        label.push_str(&format!(": {}", p.machines.join(", ")));
    }
    if p.dynamic {
        let max = if p.max == usize::MAX {
            "any number".to_string()
        } else {
            format!("up to {}", p.max)
        };
        label.push_str(&format!(" (min {}, {max} joining at run time)", p.min));
    }
    label
}

/// Graphviz `dot` text of the plan.
pub fn dot(plan: &Plan) -> String {
    let mut s = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n",
        plan.name
    );
    for st in &plan.stages {
        let shape = match st.role {
            Role::Source => "invhouse",
            Role::Sink => "house",
            Role::Transform => "box",
        };
        let reps = if st.replicas > 1 {
            format!(" ×{}", st.replicas)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  \"{}\" [label=\"{}\\n({}){}\", shape={}];\n",
            st.id, st.id, st.kind, reps, shape
        ));
    }
    for (name, members) in pool_members(plan) {
        s.push_str(&format!(
            "  subgraph \"cluster_{name}\" {{\n    label=\"{}\";\n    style=dashed;\n",
            pool_label(plan, name)
        ));
        for i in members {
            s.push_str(&format!("    \"{}\";\n", plan.stages[i].id));
        }
        s.push_str("  }\n");
    }
    for st in &plan.stages {
        for e in &st.inputs {
            let label = edge_label(plan, e.from, e.port);
            s.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{}{}\"];\n",
                plan.stages[e.from].id,
                st.id,
                label,
                if label.is_empty() {
                    format!("{}", st.mailbox)
                } else {
                    format!(" ({})", st.mailbox)
                }
            ));
        }
    }
    s.push_str("}\n");
    s
}

/// Mermaid flowchart text of the plan.
pub fn mermaid(plan: &Plan) -> String {
    let mut s = String::from("flowchart LR\n");
    let id = |i: usize| format!("s{i}");
    for (i, st) in plan.stages.iter().enumerate() {
        let (l, r) = match st.role {
            Role::Source => ("([", "])"),
            Role::Sink => ("[[", "]]"),
            Role::Transform => ("[", "]"),
        };
        let reps = if st.replicas > 1 {
            format!(" ×{}", st.replicas)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  {}{}\"{}<br/>({}){}\"{}\n",
            id(i),
            l,
            st.id,
            st.kind,
            reps,
            r
        ));
    }
    for (n, (name, members)) in pool_members(plan).into_iter().enumerate() {
        s.push_str(&format!("  subgraph pool{n}[\"{}\"]\n", pool_label(plan, name)));
        for i in members {
            s.push_str(&format!("    {}\n", id(i)));
        }
        s.push_str("  end\n");
    }
    for (i, st) in plan.stages.iter().enumerate() {
        for e in &st.inputs {
            let label = edge_label(plan, e.from, e.port);
            if label.is_empty() {
                s.push_str(&format!("  {} --> {}\n", id(e.from), id(i)));
            } else {
                s.push_str(&format!("  {} -->|{}| {}\n", id(e.from), label, id(i)));
            }
        }
    }
    s
}

/// JSON Schema of a graph file for the kinds in `registry`, so editors can complete it.
pub fn schema(registry: &Registry) -> serde_json::Value {
    use serde_json::json;
    let machine_ref = json!({"description": "Placement: the machine this stage runs on, a list of machines (an anonymous pool) or { pool = \"<name>\" } (DESIGN §7).",
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": true},
            {"type": "object", "additionalProperties": false, "required": ["pool"], "properties": {"pool": {"type": "string"}}}]});
    let reserved = json!({
        "inputs": {"type": "array", "items": {"type": "string"}, "description": "Producers this stage reads from: `stage` or `stage.port`."},
        "mailbox": {"type": "integer", "minimum": 1, "description": "Capacity of each input edge, in messages."},
        "when_full": {"enum": ["block", "drop_newest", "drop_oldest"], "description": "What a producer does when the edge is full."},
        "replicas": {"type": "integer", "minimum": 1, "description": "Number of replicas, each with its own state (e.g. model session)."},
        "restart": {"enum": ["never", "on_failure"], "description": "What happens when the stage panics."},
        "machine": machine_ref.clone(),
        "batch": {"type": "object", "additionalProperties": false, "required": ["max"],
            "description": "Kinds that batch only: up to `max` messages per call, or what arrived `wait_ms` after the first.",
            "properties": {
                "max": {"type": "integer", "minimum": 1, "maximum": crate::plan::MAX_BATCH, "description": "The most messages in one call (1 = no batching); at most the stage's `mailbox`."},
                "wait_ms": {"type": "integer", "minimum": 0, "maximum": crate::plan::MAX_BATCH_WAIT_MS, "description": "Milliseconds to wait after a batch's first message for more (default 0: take what is waiting)."}}}
    });
    let mut defs = serde_json::Map::new();
    let mut variants = Vec::new();
    for k in registry.kinds() {
        let ks = hoist_defs(k.schema(), k.name(), &mut defs);
        let resolve = |r: &str| r.strip_prefix("#/$defs/").and_then(|name| defs.get(name)).cloned();
        // A kind tagged on `model` gets one variant per model (crate::tagged).
        let per_model = crate::tagged::branches(&ks, &resolve);
        let models = match per_model {
            Some(b) => b
                .into_iter()
                .map(|(m, p)| (Some(m), serde_json::Value::Object(p)))
                .collect(),
            None => vec![(None, ks.get("properties").cloned().unwrap_or_else(|| json!({})))],
        };
        let default = k.models().map(|m| m.default);
        for (model, mut props) in models {
            if let (Some(p), Some(r)) = (props.as_object_mut(), reserved.as_object()) {
                for (key, v) in r {
                    p.insert(key.clone(), v.clone());
                }
                p.insert("kind".into(), json!({"const": k.name(), "description": k.doc()}));
            }
            let (title, required) = match &model {
                None => (k.name().to_string(), json!(["kind"])),
                Some(m) if Some(m) == default.as_ref() => (format!("{} (model = \"{m}\")", k.name()), json!(["kind"])),
                Some(m) => (format!("{} (model = \"{m}\")", k.name()), json!(["kind", "model"])),
            };
            variants.push(json!({
                "title": title,
                "description": k.doc(),
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": false
            }));
        }
    }
    let machine = hoist_defs(
        serde_json::to_value(schemars::schema_for!(crate::plan::MachineSpec)).unwrap_or_default(),
        "machine",
        &mut defs,
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "dataflow graph file",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "graph": {"type": "object", "additionalProperties": false, "properties": {
                "name": {"type": "string"}, "seed": {"type": "integer", "minimum": 0}, "description": {"type": "string"}}},
            "defaults": {"type": "object", "additionalProperties": false, "properties": {
                "mailbox": reserved["mailbox"], "when_full": reserved["when_full"], "restart": reserved["restart"],
                "machine": machine_ref}},
            "metrics": {"type": "object", "additionalProperties": false, "properties": {
                "listen": {"type": "string", "description": "Prometheus endpoint, e.g. 127.0.0.1:9464"}}},
            "channel": {"type": "object", "description": "Defaults every channel stage inherits (snr_db, modulation, ...)."},
            "machines": {"type": "object", "description": "How each machine joins the others (DESIGN §7).",
                "additionalProperties": machine},
            "pools": {"type": "object", "description": "Pools of machines that share the stages placed on them (DESIGN §7).",
                "additionalProperties": {"type": "object", "additionalProperties": false, "properties": {
                    "machines": {"type": "array", "items": {"type": "string"}, "uniqueItems": true, "description": "Static members, each in [machines]."},
                    "min": {"type": "integer", "minimum": 1, "description": "Members needed before frames flow (default 1); with min or max, machines may join at run time with --pool."},
                    "max": {"type": "integer", "minimum": 1, "description": "Most members at once."},
                    "connect": {"type": "array", "items": {"type": "string"}, "description": "Endpoints a member that is not in [machines] connects to."},
                    "ack_timeout_ms": {"type": "integer", "minimum": 1, "description": "A member whose oldest unacknowledged frame is older than this is considered dead (default 2000)."}}}},
            "stage": {"type": "object", "additionalProperties": {"oneOf": variants}}
        },
        "$defs": defs
    })
}

/// Moves a sub-schema's `$defs` into the document's, as `<owner>.<name>`, and points its
/// `$ref`s there: a `$ref` resolves against the document root, so definitions left
/// nested inside one kind's alternative are not found by validators (taplo, jsonschema).
fn hoist_defs(
    mut schema: serde_json::Value,
    owner: &str,
    defs: &mut serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let own = match schema.as_object_mut() {
        Some(o) => {
            o.remove("$schema");
            o.remove("$defs")
        }
        None => None,
    };
    rewrite_refs(&mut schema, owner);
    if let Some(serde_json::Value::Object(own)) = own {
        for (name, mut def) in own {
            rewrite_refs(&mut def, owner);
            defs.insert(format!("{owner}.{name}"), def);
        }
    }
    schema
}

fn rewrite_refs(v: &mut serde_json::Value, owner: &str) {
    match v {
        serde_json::Value::Object(o) => {
            for (key, child) in o.iter_mut() {
                match (key.as_str(), child) {
                    ("$ref", serde_json::Value::String(r)) => {
                        if let Some(name) = r.strip_prefix("#/$defs/") {
                            *r = format!("#/$defs/{owner}.{name}");
                        }
                    }
                    (_, child) => rewrite_refs(child, owner),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|c| rewrite_refs(c, owner)),
        _ => {}
    }
}
