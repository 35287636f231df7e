//! The keys of a `python` stage and the checks made before anything starts.
//!
//! [`validate`] refuses values (no script nor module, a timeout out of range);
//! [`check`] finds the interpreter, the script, the class and numpy by running the
//! interpreter once on [`CHECK_PY`]: a syntax error is reported with its file and line
//! before the source opens, as a Rust stage's missing model file would be.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use dataflow_engine::{check_range, check_timeout_ms, BuildContext, KeyProblem, MAX_DURATION_S};
use schemars::JsonSchema;
use serde::Deserialize;

use super::worker::Target;

/// Keys of `python`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PythonConfig {
    /// The stage's Python file (relative: to the current directory, else to the graph's folder).
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// Instead of `script`: an importable module (`pkg.mod`) holding the class.
    #[serde(default)]
    pub module: Option<String>,
    /// The stage class (a subclass of `dataflow_stage.Stage`) in the script or module.
    #[serde(rename = "class")]
    pub class_name: String,
    /// Interpreter: a path (`.venv/bin/python`) or a name on PATH. It needs numpy.
    #[serde(default = "default_python")]
    pub python: String,
    /// Passed to the class's `setup(args)` as a dict.
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
    /// Output ports and the fields each adds (`{ out = ["text"] }`); messages carry the
    /// input's fields too. Default: one port `out` adding nothing. `out` comes first,
    /// the others in name order.
    #[serde(default)]
    pub outputs: BTreeMap<String, Vec<String>>,
    /// Fields every input message must carry (checked when the graph is validated).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Seconds one frame may take; past it the worker is killed and the frame fails.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Seconds `setup` may take (model loading).
    #[serde(default = "default_setup_timeout")]
    pub setup_timeout_s: f64,
    /// Join the inputs by frame: the class gets one frame holding the fields of every
    /// input's parts (later inputs win) and `lost_inputs` (parts that did not arrive
    /// within this many milliseconds).
    #[serde(default)]
    pub join_timeout_ms: Option<u64>,
    /// Modules the interpreter must be able to import (`["torch", "diffusers"]`), checked
    /// before the run like numpy.
    #[serde(default)]
    pub needs: Vec<String>,
}

fn default_python() -> String {
    "python3".into()
}
fn default_timeout() -> f64 {
    60.0
}
fn default_setup_timeout() -> f64 {
    600.0
}

/// Values validation refuses.
pub(super) fn validate(c: &PythonConfig) -> Vec<KeyProblem> {
    let mut problems = Vec::new();
    if c.script.is_some() == c.module.is_some() {
        problems.push(KeyProblem {
            key: "script",
            message: "give exactly one of `script` (a .py file) and `module` (an importable module)".into(),
        });
    }
    if !is_identifier(&c.class_name) {
        problems.push(KeyProblem {
            key: "class",
            message: format!("`class` = {:?} is not a Python class name", c.class_name),
        });
    }
    problems.extend(check_range("timeout_s", c.timeout_s, 0.001, MAX_DURATION_S, "seconds"));
    problems.extend(check_range(
        "setup_timeout_s",
        c.setup_timeout_s,
        0.001,
        MAX_DURATION_S,
        "seconds",
    ));
    problems.extend(c.join_timeout_ms.and_then(|ms| check_timeout_ms("join_timeout_ms", ms)));
    if let Some(bad) = c.needs.iter().find(|m| !m.split('.').all(is_identifier)) {
        problems.push(KeyProblem {
            key: "needs",
            message: format!("`needs` lists {bad:?}, which is not a Python module name"),
        });
    }
    problems
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_') && chars.all(|c| c.is_alphanumeric() || c == '_')
}

/// The interpreter to run: a path resolved like every path of the graph, or a name on PATH.
pub(super) fn interpreter(c: &PythonConfig, ctx: &BuildContext) -> PathBuf {
    if c.python.contains('/') {
        ctx.resolve(Path::new(&c.python))
    } else {
        PathBuf::from(&c.python)
    }
}

/// Where the class comes from, with the script's path resolved.
pub(super) fn target(c: &PythonConfig, ctx: &BuildContext) -> Target {
    match (&c.script, &c.module) {
        (Some(s), _) => Target::Script(ctx.resolve(s)),
        (None, Some(m)) => Target::Module(m.clone()),
        (None, None) => Target::Module(String::new()),
    }
}

/// The folder holding the `dataflow_stage` package: `$DATAFLOW_PYTHON_DIR`, else
/// `python/` in the current directory, else the repository's `python/` folder.
pub(super) fn package_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("DATAFLOW_PYTHON_DIR").map(PathBuf::from),
        Some(PathBuf::from("python")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../python")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("dataflow_stage/__init__.py").is_file())
        .map(|d| d.canonicalize().unwrap_or(d))
}

/// `PYTHONPATH` for the worker: the package's folder, then the caller's own.
pub(super) fn pythonpath() -> OsString {
    let mut parts: Vec<PathBuf> = package_dir().into_iter().collect();
    if let Some(old) = std::env::var_os("PYTHONPATH") {
        parts.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(parts).unwrap_or_default()
}

/// Runs the interpreter on [`CHECK_PY`]; each problem names its key and what to do.
pub(super) fn check(c: &PythonConfig, ctx: &BuildContext) -> Vec<String> {
    let python = interpreter(c, ctx);
    let target = target(c, ctx);
    if let Target::Script(p) = &target {
        if !p.is_file() {
            return vec![format!(
                "`script` = {:?}: no such file (looked in the current directory and in {}); give the path of the stage's .py file",
                c.script.as_deref().unwrap_or(p).display(),
                ctx.graph_dir.display()
            )];
        }
    }
    let (kind, what) = match &target {
        Target::Script(p) => ("script", p.as_os_str().to_owned()),
        Target::Module(m) => ("module", OsString::from(m)),
    };
    let out = Command::new(&python)
        .args(["-c", CHECK_PY, kind])
        .arg(what)
        .arg(&c.class_name)
        .args(&c.needs)
        .env("PYTHONPATH", pythonpath())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            return vec![format!(
                "`python` = {:?}: cannot run the interpreter ({e}); install Python 3.10+ with numpy, or point `python` at one (e.g. a venv's bin/python)",
                c.python
            )]
        }
    };
    match serde_json::from_slice::<Vec<String>>(&out.stdout) {
        Ok(problems) => problems,
        Err(_) => vec![format!(
            "`python` = {:?}: the interpreter failed to check the stage (status {}): {}",
            c.python,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )],
    }
}

/// Checks run inside the interpreter: `argv` = kind (`script`|`module`), target, class,
/// then the modules of `needs`.
/// Prints a JSON list of problems.
const CHECK_PY: &str = r#"
import ast, importlib.util, json, sys
kind, target, cls, needs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
problems = []
def parse(path):
    try:
        src = open(path, "rb").read()
        compile(src, path, "exec")
        return ast.parse(src, path)
    except SyntaxError as e:
        problems.append(f"{path}:{e.lineno}:{e.offset or 0}: {type(e).__name__}: {e.msg}; fix the stage's code (the graph's `{kind}` points at it)")
    except (OSError, ValueError) as e:
        problems.append(f"`{kind}` = {target!r}: cannot read {path}: {e}")
def names(tree):
    for n in tree.body:
        if isinstance(n, ast.ClassDef):
            yield n.name
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            for a in n.names:
                yield (a.asname or a.name).split(".")[0]
path = target
if kind == "module":
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError) as e:
        spec = None
    if spec is None:
        problems.append(f"`module` = {target!r}: not importable by {sys.executable}; install it or add its folder to PYTHONPATH")
        path = None
    else:
        path = spec.origin if spec.origin and spec.origin.endswith(".py") else None
tree = parse(path) if path else None
if tree is not None:
    found = sorted(set(names(tree)))
    if cls not in found:
        classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
        problems.append(f"`class` = {cls!r}: {path} defines no top-level class {cls} (classes there: {', '.join(classes) or 'none'}); name the stage's class")
for mod, fix in (("numpy", f"{sys.executable} -m pip install numpy"),
                 ("dataflow_stage", "run from the repository's root or set DATAFLOW_PYTHON_DIR to its python/ folder")):
    if importlib.util.find_spec(mod) is None:
        problems.append(f"`python` = {sys.executable!r} cannot import {mod}: {fix}")
for mod in needs:
    try:
        found = importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        problems.append(f"`needs` = {mod!r}: {sys.executable} cannot import it; install it into that interpreter (for torch stages: scripts/setup-torch) or point `python` at one that has it")
print(json.dumps(problems))
"#;
