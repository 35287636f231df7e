//! `csv_sink`: one row per message with its frame, part, name and every numeric,
//! text and record field; columns are the union over the run, written at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dataflow_engine::{BuildContext, Built, Input, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
use schemars::JsonSchema;
use serde::Deserialize;

/// Keys of `csv_sink`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkConfig {
    /// File name under the run's output folder (default `<stage>.csv`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Also write text fields (captions) as columns.
    #[serde(default = "yes")]
    pub texts: bool,
}

fn yes() -> bool {
    true
}

/// The `csv_sink` kind.
pub struct CsvSink;

struct Run {
    path: PathBuf,
    texts: bool,
    rows: Vec<BTreeMap<String, String>>,
}

impl Stage for Run {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let mut row = BTreeMap::new();
        row.insert("frame".to_string(), msg.id.to_string());
        row.insert("part".to_string(), msg.part.index.to_string());
        for (k, v) in msg.fields.iter() {
            match v {
                Value::Number(n) => {
                    row.insert(k.to_string(), format!("{n}"));
                }
                Value::Record(r) => {
                    for (rk, rv) in r.iter() {
                        row.insert(rk.clone(), format!("{rv}"));
                    }
                }
                Value::Text(t) if self.texts || k == "name" => {
                    row.insert(k.to_string(), t.to_string());
                }
                Value::Texts(ts) if self.texts => {
                    let joined: Vec<String> = ts
                        .iter()
                        .map(|t| t.clone().unwrap_or_else(|| "<lost>".into()))
                        .collect();
                    row.insert(k.to_string(), joined.join(" | "));
                }
                _ => {}
            }
        }
        self.rows.push(row);
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        let mut cols: Vec<String> = vec!["frame".into(), "part".into()];
        if self.rows.iter().any(|r| r.contains_key("name")) {
            cols.push("name".into());
        }
        let mut rest: Vec<String> = self.rows.iter().flat_map(|r| r.keys().cloned()).collect();
        rest.sort();
        rest.dedup();
        for c in rest {
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
        let err = |e: csv::Error| StageError::io(format!("cannot write {}: {e}", self.path.display()));
        let mut w = csv::Writer::from_path(&self.path).map_err(err)?;
        w.write_record(&cols).map_err(err)?;
        for r in &self.rows {
            w.write_record(cols.iter().map(|c| r.get(c).map(String::as_str).unwrap_or("")))
                .map_err(err)?;
        }
        w.flush()
            .map_err(|e| StageError::io(format!("cannot write {}: {e}", self.path.display())))?;
        tracing::info!(path = %self.path.display(), rows = self.rows.len(), "csv written");
        Ok(())
    }
}

impl StageKind for CsvSink {
    type Config = CsvSinkConfig;
    const NAME: &'static str = "csv_sink";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "One CSV row per frame with its numeric, text and record fields.";

    fn ports(_: &Self::Config) -> Ports {
        Ports::default()
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let path = ctx.out_dir.join(
            c.path
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.csv", ctx.stage))),
        );
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StageError::io(format!("cannot create {}: {e}", parent.display())))?;
        }
        Ok(Built::Stage(Box::new(Run {
            path,
            texts: c.texts,
            rows: Vec::new(),
        })))
    }
}
