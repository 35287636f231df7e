//! Graph files: loading TOML with positions, command-line overrides, diagnostics.
//!
//! The file is parsed twice from the same text: `toml` gives the values that
//! stage configs deserialise from, `toml_edit` keeps the byte spans that every
//! [`Diagnostic`] turns into `file:line:column`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A position in a graph file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// One problem found in a graph file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The graph file.
    pub file: PathBuf,
    /// Where in the file, when known (overrides from the command line have none).
    pub location: Option<Location>,
    /// The stage concerned, if any.
    pub stage: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.location {
            write!(f, ":{}:{}", l.line, l.column)?;
        }
        write!(f, ": error: ")?;
        if let Some(s) = &self.stage {
            write!(f, "stage `{s}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

/// Every diagnostic of a failed load or validation, printable as one report.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        write!(f, "{} error(s)", self.0.len())
    }
}

/// A `--set key.path=value` override.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted key path, e.g. `["stage", "segment", "model"]`.
    pub path: Vec<String>,
    /// The value, parsed as TOML (a bare word becomes a string).
    pub value: toml::Value,
}

impl Override {
    /// Parses `stage.<id>.<key>=<value>`, `channel.<key>=<value>`, `graph.seed=...`.
    pub fn parse(s: &str) -> Result<Override, String> {
        let (key, raw) = s
            .split_once('=')
            .ok_or_else(|| format!("`--set {s}`: expected KEY=VALUE, e.g. stage.segment.model=isnet"))?;
        let path: Vec<String> = key.trim().split('.').map(|p| p.trim().to_string()).collect();
        if path.iter().any(|p| p.is_empty()) || path.len() < 2 {
            return Err(format!(
                "`--set {s}`: the key must be a dotted path such as stage.<id>.<key> or channel.snr_db"
            ));
        }
        let raw = raw.trim();
        let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
            Err(_) => toml::Value::String(raw.to_string()),
        };
        Ok(Override { path, value })
    }
}

/// A graph file as text, values and spans, with overrides applied to the values.
pub struct GraphSource {
    /// Path as given.
    pub path: PathBuf,
    text: String,
    doc: toml_edit::Document<String>,
    /// Values (with overrides applied).
    pub values: toml::Table,
}

impl GraphSource {
    /// Reads and parses a graph file, then applies `overrides`.
    pub fn load(path: &Path, overrides: &[Override]) -> Result<GraphSource, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: path.to_path_buf(),
                location: None,
                stage: None,
                message: format!("cannot read the graph file: {e}"),
                help: Some("check the path; shipped graphs are in graphs/".into()),
            }])
        })?;
        Self::from_text(path, text, overrides)
    }

    /// Parses graph text that claims to come from `path`.
    pub fn from_text(path: &Path, text: String, overrides: &[Override]) -> Result<GraphSource, Diagnostics> {
        let syntax = |span: Option<Range<usize>>, message: &str| {
            Diagnostics(vec![Diagnostic {
                file: path.to_path_buf(),
                location: span.map(|s| offset_to_location(&text, s.start)),
                stage: None,
                message: format!("not a valid TOML graph file: {message}"),
                help: Some("a stage is a table `[stage.<id>]`; each id may appear once".into()),
            }])
        };
        let doc = toml_edit::Document::parse(text.clone()).map_err(|e| syntax(e.span(), e.message()))?;
        let mut values: toml::Table = toml::from_str(&text).map_err(|e| syntax(e.span(), e.message()))?;
        let mut errors = Vec::new();
        for o in overrides {
            if let Err(m) = apply_override(&mut values, o) {
                errors.push(Diagnostic {
                    file: path.to_path_buf(),
                    location: None,
                    stage: None,
                    message: m,
                    help: None,
                });
            }
        }
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        Ok(GraphSource {
            path: path.to_path_buf(),
            text,
            doc,
            values,
        })
    }

    /// Location of the key at `path` (e.g. `["stage", "split", "grid"]`; a numeric
    /// segment indexes an array), falling back to the closest enclosing item.
    pub fn locate(&self, path: &[&str]) -> Option<Location> {
        self.span(path).map(|s| offset_to_location(&self.text, s.start))
    }

    fn span(&self, path: &[&str]) -> Option<Range<usize>> {
        enum Node<'a> {
            Item(&'a toml_edit::Item),
            Value(&'a toml_edit::Value),
        }
        let mut node = Node::Item(self.doc.as_item());
        let mut best: Option<Range<usize>> = None;
        for seg in path {
            let (key_span, next) = match node {
                Node::Item(toml_edit::Item::Table(t)) => {
                    (t.key(seg).and_then(|k| k.span()), t.get(seg).map(Node::Item))
                }
                Node::Item(toml_edit::Item::Value(v)) | Node::Value(v) => match v {
                    toml_edit::Value::InlineTable(t) => {
                        (t.key(seg).and_then(|k| k.span()), t.get(seg).map(Node::Value))
                    }
                    toml_edit::Value::Array(a) => {
                        (None, seg.parse::<usize>().ok().and_then(|i| a.get(i)).map(Node::Value))
                    }
                    _ => (None, None),
                },
                _ => (None, None),
            };
            let Some(next) = next else { break };
            let item_span = match &next {
                Node::Item(i) => i.span(),
                Node::Value(v) => v.span(),
            };
            best = key_span.or(item_span).or(best);
            node = next;
        }
        best
    }

    /// Stage ids in the order they appear in the file.
    pub fn stage_ids(&self) -> Vec<String> {
        match self.doc.get("stage") {
            Some(toml_edit::Item::Table(t)) => t.iter().map(|(k, _)| k.to_string()).collect(),
            _ => Vec::new(),
        }
    }
}

fn apply_override(values: &mut toml::Table, o: &Override) -> Result<(), String> {
    let shown = o.path.join(".");
    match o.path[0].as_str() {
        "stage" | "machines" | "pools" if o.path.len() == 3 => {}
        "graph" | "defaults" | "channel" | "metrics" if o.path.len() == 2 => {}
        _ => {
            return Err(format!(
                "`--set {shown}=...`: unknown key path; use stage.<id>.<key>, channel.<key>, graph.<key>, defaults.<key>, metrics.<key>, machines.<name>.<key> or pools.<name>.<key>"
            ))
        }
    }
    if o.path[0] == "stage" {
        let exists = values
            .get("stage")
            .and_then(|s| s.as_table())
            .map(|s| s.contains_key(&o.path[1]))
            .unwrap_or(false);
        if !exists {
            return Err(format!(
                "`--set {shown}=...`: there is no stage `{}` in this graph",
                o.path[1]
            ));
        }
    }
    let mut table = values;
    for seg in &o.path[..o.path.len() - 1] {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`--set {shown}=...`: `{seg}` is not a table"))?;
    }
    table.insert(o.path[o.path.len() - 1].clone(), o.value.clone());
    Ok(())
}

/// Converts a byte offset into a 1-based line and column (in characters).
pub fn offset_to_location(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    Location { line, column }
}

/// The closest of `candidates` to `word`, if close enough to suggest.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
