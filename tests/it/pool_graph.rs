//! Pools in graph files (issue 22, DESIGN §7), through the `dataflow` binary:
//! `validate` reports every pool mistake at its file:line with what to do, `graph`
//! draws a pool as a cluster, `run` without `--machine` runs a pool's stages once in
//! one process, and `run --machine M --pool P` refuses a machine the pool cannot take
//! before opening any socket.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::distributed::{counts, summary};
use crate::support::{bin, run_graph};

/// `src` on `cam` → `work` (a passthrough) on pool `gpus` → `sink` on `cam`.
/// `gpus` lists gpu1 and gpu2 and takes up to 4 members; `fixed` lists `spare` only.
const GRAPH: &str = r#"[graph]
name = "pooled"
seed = 3

[machines.cam]
listen = ["tcp/127.0.0.1:1"]
[machines.gpu1]
connect = ["tcp/127.0.0.1:1"]
[machines.gpu2]
connect = ["tcp/127.0.0.1:1"]
[machines.spare]
connect = ["tcp/127.0.0.1:1"]

[pools.gpus]
machines = ["gpu1", "gpu2"]
max = 4
connect = ["tcp/127.0.0.1:1"]

[pools.fixed]
machines = ["spare"]

[stage.src]
kind = "synthetic"
machine = "cam"
frames = 6
width = 16
height = 12

[stage.work]
kind = "passthrough"
machine = { pool = "gpus" }
inputs = ["src"]

[stage.sink]
kind = "null_sink"
machine = "cam"
inputs = ["work"]
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let g = dir.join(name);
    std::fs::write(&g, text).unwrap();
    g
}

/// `dataflow <args> <graph>`: exit code, stdout, stderr.
fn dataflow(args: &[&str], graph: &Path, more: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(bin()).args(args).arg(graph).args(more).output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    println!("dataflow {args:?} {more:?}: {:?}\n{out}{err}", o.status.code());
    (o.status.code(), out, err)
}

#[test]
fn validate_accepts_a_pool_graph_and_graph_draws_the_pool_as_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let g = write(dir.path(), "pooled.toml", GRAPH);
    let (code, out, _) = dataflow(&["validate"], &g, &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("pooled.toml: ok (3 stages)"), "{out}");
    let (code, _, err) = dataflow(&["validate"], &g, &["--set", "pools.gpus.max=1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("error: pool `gpus` lists 2 machines but max = 1\n  help: raise max, or list fewer machines"),
        "{err}"
    );
    let (code, dot, _) = dataflow(&["graph"], &g, &[]);
    assert_eq!(code, Some(0));
    assert!(
        dot.contains("subgraph \"cluster_gpus\" {\n    label=\"pool gpus: gpu1, gpu2 (min 1, up to 4 joining at run time)\";\n    style=dashed;\n    \"work\";\n  }"),
        "{dot}"
    );
    let (code, mermaid, _) = dataflow(&["graph", "--format", "mermaid"], &g, &[]);
    assert_eq!(code, Some(0));
    assert!(mermaid.contains("subgraph pool0[\"pool gpus: gpu1, gpu2"), "{mermaid}");
}

#[test]
fn the_editor_schema_takes_the_three_forms_of_machine_and_pools() {
    let o = Command::new(bin()).arg("schema").output().unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let json = |text: &str| serde_json::to_value(toml::from_str::<toml::Table>(text).unwrap()).unwrap();
    let list = GRAPH.replace("machine = { pool = \"gpus\" }", "machine = [\"gpu1\", \"gpu2\"]");
    for text in [GRAPH, list.as_str()] {
        let errors: Vec<String> = validator.iter_errors(&json(text)).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
    for wrong in [
        GRAPH.replace("max = 4\n", "max = 4\nmaxx = 4\n"),
        GRAPH.replace("machine = { pool = \"gpus\" }", "machine = { pol = \"gpus\" }"),
        GRAPH.replace("machine = { pool = \"gpus\" }", "machine = 3"),
    ] {
        assert!(validator.iter_errors(&json(&wrong)).next().is_some(), "{wrong}");
    }
}

#[test]
fn validate_reports_every_pool_mistake_at_its_line_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = GRAPH
        .replace("max = 4\n", "max = 4\nminn = 2\n")
        .replace("machines = [\"spare\"]", "machines = [\"spare\", \"gpu9\"]")
        .replace(
            "kind = \"synthetic\"\nmachine = \"cam\"",
            "kind = \"synthetic\"\nmachine = [\"gpu1\", \"gpu2\"]",
        )
        .replace("machine = { pool = \"gpus\" }", "machine = { pool = \"gpu\" }");
    let g = write(dir.path(), "bad.toml", &text);
    let (code, _, err) = dataflow(&["validate"], &g, &[]);
    assert_eq!(code, Some(1), "{err}");
    let file = g.display().to_string();
    for expected in [
        format!("{file}:21:22: error: machine `gpu9` of pool `fixed` is not described in [machines]\n  help: did you mean `gpu2`?"),
        format!("{file}:17:1: error: unknown key `minn` in [pools.gpus]\n  help: did you mean `min`?"),
        format!("{file}:25:1: error: stage `src`: a source cannot run on pool `pool-src`"),
        format!("{file}:32:1: error: stage `work`: pool `gpu` is not described in [pools]\n  help: did you mean `gpus`?"),
    ] {
        assert!(err.contains(&expected), "missing:\n{expected}\nin:\n{err}");
    }
    assert!(err.contains("4 error(s)"), "{err}");
}

#[test]
fn a_pool_graph_without_machine_runs_every_stage_once_here() {
    let dir = tempfile::tempdir().unwrap();
    let g = write(dir.path(), "pooled.toml", GRAPH);
    let out = dir.path().join("out");
    let o = run_graph(&g, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("places stages on machines and pools (fixed, gpus); running every stage in this process, each pool's stages once"),
        "{err}"
    );
    let s = summary(&out);
    assert_eq!(counts(&s, "work"), (6, 0));
    assert_eq!(counts(&s, "sink"), (6, 0));
}

#[test]
fn run_refuses_a_machine_the_pool_cannot_take_before_opening_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let g = write(dir.path(), "pooled.toml", GRAPH);
    let out = dir.path().join("out");
    let run = |machine: &str, pool: Option<&str>| {
        let mut args = vec!["--machine", machine];
        args.extend(pool.iter().flat_map(|p| ["--pool", *p]));
        let o = run_graph(&g, &out, &args);
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let file = g.display().to_string();
    let cases = [
        ("gpu7", Some("gpu"), format!("error: {file}: --pool gpu: the graph has no pool `gpu` (pools: fixed, gpus); did you mean `gpus`?")),
        ("gpu7", Some("fixed"), format!("error: {file}: machine `gpu7` is not a member of pool `fixed` (members: spare) and the pool takes no members at run time; add `gpu7` to [pools.fixed] machines, or give the pool `min`/`max` so that machines may join with --pool fixed")),
        ("cam", Some("gpus"), format!("error: {file}: machine `cam` cannot join pool `gpus`: it runs its own stages")),
        ("gpu7", None, format!("error: {file}: machine `gpu7` is not in the graph's [machines] (cam, gpu1, gpu2, spare); did you mean `gpu2`?; to join a pool at run time, add --pool gpus")),
        ("spare", None, format!("error: {file}: machine `spare` is a member of pool `fixed`, but no stage is placed on the pool; placed machines and pools: cam, gpus")),
    ];
    for (machine, pool, expected) in cases {
        let (code, err) = run(machine, pool);
        assert_eq!(code, Some(1), "{machine} {pool:?}: {err}");
        assert!(
            err.contains(&expected),
            "{machine} {pool:?}: missing\n{expected}\nin:\n{err}"
        );
        assert!(!out.join("summary.json").exists());
    }
    // --pool needs --machine.
    let (code, _, err) = dataflow(&["run", "--pool", "gpus"], &g, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--machine <NAME>"), "{err}");
}
