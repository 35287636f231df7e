//! `dataflow doctor`: what this machine can run, per tier and per graph, and the one
//! command that brings what is missing.
//!
//! Exit codes (README, "Exit codes"):
//! - 0: the main job can run (`make run`'s graph, `graphs/multisc-lite.toml`, or every
//!   graph named on the command line). Other graphs may still need something; each is
//!   listed with its command.
//! - 1: the main job (or a named graph) cannot run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dataflow_engine::Registry;

use crate::OverrideArgs;

/// The graph `make run` runs.
pub const MAIN_GRAPH: &str = "graphs/multisc-lite.toml";

/// The models only the paper tier uses (exported once with internet, `models/export/`).
const PAPER_MODELS: &[&str] = &["fcn", "llava", "bart", "sd_ip_adapter"];

/// One graph's verdict: its tier and, per stage, what is missing with the command that
/// brings it.
struct Verdict {
    path: PathBuf,
    tier: &'static str,
    problems: Vec<Problem>,
}

struct Problem {
    stage: Option<String>,
    message: String,
    /// The command (or action) that fixes it.
    fix: String,
}

/// Runs the checks and prints the report; see the module doc for the exit codes.
pub fn doctor(graphs: &[PathBuf], registry: &Registry) -> ExitCode {
    let runtime_ok = print_runtime();
    println!();
    let assets_missing = print_assets();
    println!();
    let named = !graphs.is_empty();
    let files = if named { graphs.to_vec() } else { shipped_graphs() };
    let verdicts: Vec<Verdict> = files.iter().map(|g| check_graph(g, registry)).collect();
    print_graphs(&verdicts);
    print_tiers(&verdicts, runtime_ok);
    let ready = |v: &Verdict| runtime_ok && v.problems.is_empty();
    let ok = if named {
        verdicts.iter().all(ready)
    } else {
        let main = verdicts.iter().find(|v| v.path == Path::new(MAIN_GRAPH));
        println!();
        match main {
            Some(v) if ready(v) => println!("main job (`make run`, {MAIN_GRAPH}): ready"),
            Some(_) => println!(
                "main job (`make run`, {MAIN_GRAPH}): NOT READY; `make setup` fetches what it needs{}",
                if assets_missing > 0 {
                    " (offline assets missing above)"
                } else {
                    ""
                }
            ),
            None => println!("main job: {MAIN_GRAPH} not found (run doctor in the repository root)"),
        }
        main.is_some_and(ready)
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prints the runtime and providers; false when ONNX Runtime cannot be loaded.
fn print_runtime() -> bool {
    let ok = match dataflow_models::runtime::runtime() {
        Ok(rt) => {
            println!("ONNX Runtime {} at {}", rt.version(), rt.dylib_path().display());
            println!("execution providers: {}", rt.providers().join(", "));
            let cuda = if rt.has_cuda() {
                "available"
            } else {
                "not in this runtime (`scripts/setup-assets --gpu`)"
            };
            println!("CUDA provider: {cuda}");
            true
        }
        Err(e) => {
            println!("ONNX Runtime: NOT FOUND: {e}\n  -> make setup");
            false
        }
    };
    let gpu = Path::new("/dev/nvidia0").exists() || Path::new("/proc/driver/nvidia/version").exists();
    println!("NVIDIA GPU: {}", if gpu { "seen" } else { "none seen" });
    ok
}

/// Prints every offline asset's state; returns how many required ones are missing.
fn print_assets() -> usize {
    println!("offline assets (scripts/assets.json; `make setup` fetches them):");
    let mut missing = 0;
    for a in dataflow_models::assets::check_assets() {
        let ok = a.present && a.sha256_ok;
        if !ok && !a.optional {
            missing += 1;
        }
        let state = match (ok, a.present, a.optional) {
            (true, _, _) => "ok",
            (false, true, _) => "checksum MISMATCH",
            (false, false, true) => "not installed (optional)",
            (false, false, false) => "MISSING",
        };
        println!("  {:<34} {:<26} {}", a.name, state, a.path.display());
    }
    missing
}

fn shipped_graphs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("graphs")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The tier a graph belongs to, from its stages: the paper's models, a live camera, or
/// the offline tier.
fn tier_of(text: &str) -> &'static str {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return "offline";
    };
    let stages = doc.get("stage").and_then(|s| s.as_table());
    let any = |f: &dyn Fn(&toml::Table) -> bool| stages.is_some_and(|s| s.values().filter_map(|t| t.as_table()).any(f));
    let str_of = |t: &toml::Table, k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let paper = |t: &toml::Table| {
        str_of(t, "model").is_some_and(|m| PAPER_MODELS.contains(&m.as_str()))
            || ["lpips", "clip"]
                .iter()
                .any(|k| t.get(*k).and_then(|v| v.as_bool()) == Some(true))
    };
    if any(&paper) {
        "paper"
    } else if any(&|t| str_of(t, "kind").as_deref() == Some("camera")) {
        "live camera"
    } else {
        "offline"
    }
}

/// The command a message names (its last backticked `scripts/...`, `python ...`,
/// `make ...`), else its advice: the text after its last `;`.
fn fix_of(message: &str) -> String {
    const COMMANDS: &[&str] = &["scripts/", "python", "make ", "apt-get", "cargo ", "pip ", "npm "];
    let command = message
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| COMMANDS.iter().any(|p| c.starts_with(p)))
        .last();
    match command {
        Some(c) => c.to_string(),
        None => message.rsplit(';').next().unwrap_or(message).trim().to_string(),
    }
}

fn check_graph(path: &Path, registry: &Registry) -> Verdict {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tier = tier_of(&text);
    let diags = crate::load(path, &OverrideArgs::default(), registry)
        .and_then(|src| {
            dataflow_engine::plan(&src, registry)
                .map_err(|d| d.to_string())
                .map(|p| (src, p))
        })
        .map_err(|e| vec![(None, e)])
        .and_then(|(_, plan)| {
            let tmp = std::env::temp_dir().join("dataflow-doctor");
            dataflow_engine::plan::check_resources(&plan, &tmp)
                .map_err(|d| d.0.into_iter().map(|d| (d.stage, d.message)).collect())
        });
    let problems = match diags {
        Ok(()) => Vec::new(),
        Err(list) => list
            .into_iter()
            .map(|(stage, message)| Problem {
                fix: fix_of(&message),
                stage,
                message,
            })
            .collect(),
    };
    Verdict {
        path: path.to_path_buf(),
        tier,
        problems,
    }
}

fn print_graphs(verdicts: &[Verdict]) {
    println!("graphs:");
    for v in verdicts {
        let state = if v.problems.is_empty() { "ready" } else { "NOT READY" };
        println!("  {:<12} {:<36} {state}", v.tier, v.path.display());
        for p in &v.problems {
            let stage = p.stage.as_deref().map(|s| format!("{s}: ")).unwrap_or_default();
            println!("      {stage}{}", p.message);
            println!("        -> {}", p.fix);
        }
    }
}

/// Per tier: ready, or the distinct commands that bring what its graphs miss.
fn print_tiers(verdicts: &[Verdict], runtime_ok: bool) {
    let mut tiers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for v in verdicts {
        let fixes = tiers.entry(v.tier).or_default();
        for p in &v.problems {
            if !fixes.contains(&p.fix.as_str()) {
                fixes.push(&p.fix);
            }
        }
    }
    println!();
    println!("per tier:");
    for (tier, fixes) in tiers {
        if fixes.is_empty() && runtime_ok {
            println!("  {tier}: ready");
            continue;
        }
        let how = match tier {
            "paper" => {
                " (export the paper's models once, with internet: all at once with \
                 `scripts/export-paper-models`, or one by one as below; models/README.md)"
            }
            "live camera" => " (hardware: a V4L2 camera)",
            _ => "",
        };
        println!(
            "  {tier}: {} thing(s) to do{how}",
            fixes.len() + usize::from(!runtime_ok)
        );
        if !runtime_ok {
            println!("      make setup");
        }
        for f in fixes {
            println!("      {f}");
        }
    }
}
