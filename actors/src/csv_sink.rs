//! `csv_sink`: one row per message with its frame, part, name and every numeric,
//! text and record field, written and flushed as the message arrives.
//!
//! # Columns
//! The fields of a message (records expand into their own columns) are only known
//! when it arrives, so the header is fixed by the first row: `frame`, `part`, `name`
//! when present, then the other fields sorted by name. A later row with a field the
//! header lacks widens the header: the file is rewritten once with the new column
//! (a temporary file renamed over it, so a crash leaves the old or the new file, never
//! a mix) and a log line names the column, the stage and the frame. Rows without a
//! column leave its cell empty. So the file always has the columns of the union of
//! the rows, as if it had been written at the end.
//!
//! # What survives a crash
//! Each row is flushed to the file when its message arrives, so a killed run leaves
//! every row that had reached the sink. A kill during a write can leave a last line
//! without its newline; readers (`dataflow sweep`) skip such a torn last line.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use dataflow_engine::{
    BuildContext, Built, FrameId, Input, Message, Outputs, Ports, Role, Stage, StageError, StageKind, Value,
};
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

type Row = BTreeMap<String, String>;

struct Run {
    path: PathBuf,
    stage: String,
    texts: bool,
    /// The header on disk; empty until the first row.
    cols: Vec<String>,
    /// Appends to `path`; `None` until the first row.
    writer: Option<csv::Writer<File>>,
    rows: u64,
}

/// `frame`, `part`, `name` (when present), then the rest sorted.
fn ordered(keys: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut rest: Vec<String> = keys.into_iter().collect();
    rest.sort();
    rest.dedup();
    let mut cols: Vec<String> = vec!["frame".into(), "part".into()];
    if rest.iter().any(|k| k == "name") {
        cols.push("name".into());
    }
    for c in rest {
        if !cols.contains(&c) {
            cols.push(c);
        }
    }
    cols
}

impl Run {
    fn row(&self, msg: &Message) -> Row {
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
        row
    }

    fn fail(&self, frame: Option<FrameId>, what: &str, e: impl std::fmt::Display) -> StageError {
        let at = frame.map(|f| format!(" (frame {f})")).unwrap_or_default();
        StageError::io(format!(
            "stage `{}`: cannot {what} {}{at}: {e}; check the space and permissions of the output folder",
            self.stage,
            self.path.display()
        ))
    }

    /// Creates the file with `cols` as its header.
    fn create(&mut self, cols: Vec<String>, frame: Option<FrameId>) -> Result<(), StageError> {
        let file = File::create(&self.path).map_err(|e| self.fail(frame, "create", e))?;
        let mut w = csv::Writer::from_writer(file);
        w.write_record(&cols).map_err(|e| self.fail(frame, "write", e))?;
        w.flush().map_err(|e| self.fail(frame, "write", e))?;
        self.cols = cols;
        self.writer = Some(w);
        Ok(())
    }

    /// Rewrites the file with the header `cols` (a superset of the current one).
    fn widen(&mut self, cols: Vec<String>, frame: FrameId) -> Result<(), StageError> {
        if let Some(mut w) = self.writer.take() {
            w.flush().map_err(|e| self.fail(Some(frame), "write", e))?;
        }
        let tmp = tmp_path(&self.path);
        let copied = copy_widened(&self.path, &tmp, &self.cols, &cols);
        if let Err(e) = copied.and_then(|()| std::fs::rename(&tmp, &self.path).map_err(csv::Error::from)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.fail(Some(frame), "rewrite the header of", e));
        }
        let added: Vec<&String> = cols.iter().filter(|c| !self.cols.contains(c)).collect();
        tracing::info!(stage = %self.stage, frame = %frame, path = %self.path.display(), columns = ?added,
            "new column(s): the CSV header was rewritten");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| self.fail(Some(frame), "reopen", e))?;
        self.writer = Some(csv::Writer::from_writer(file));
        self.cols = cols;
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Copies the rows of `from` (header `old`) to `to` under the header `new`.
fn copy_widened(from: &Path, to: &Path, old: &[String], new: &[String]) -> Result<(), csv::Error> {
    let mut r = csv::ReaderBuilder::new().flexible(true).from_path(from)?;
    let mut w = csv::Writer::from_path(to)?;
    w.write_record(new)?;
    let at: Vec<Option<usize>> = new.iter().map(|c| old.iter().position(|o| o == c)).collect();
    for rec in r.records() {
        let rec = rec?;
        w.write_record(at.iter().map(|i| i.and_then(|i| rec.get(i)).unwrap_or("")))?;
    }
    w.flush()?;
    Ok(())
}

impl Stage for Run {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let row = self.row(&msg);
        if self.writer.is_none() {
            self.create(ordered(row.keys().cloned()), Some(msg.id))?;
        } else if row.keys().any(|k| !self.cols.contains(k)) {
            let cols = ordered(self.cols.iter().chain(row.keys()).cloned());
            self.widen(cols, msg.id)?;
        }
        let cols = &self.cols;
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        let written = w
            .write_record(cols.iter().map(|c| row.get(c).map(String::as_str).unwrap_or("")))
            .and_then(|()| w.flush().map_err(csv::Error::from));
        written.map_err(|e| self.fail(Some(msg.id), "write", e))?;
        self.rows += 1;
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        if self.writer.is_none() {
            // No row: the header alone, so readers find the file.
            self.create(ordered(Vec::new()), None)?;
        }
        if let Some(w) = self.writer.as_mut() {
            let flushed = w.flush();
            flushed.map_err(|e| self.fail(None, "write", e))?;
        }
        tracing::info!(path = %self.path.display(), rows = self.rows, "csv written");
        Ok(())
    }
}

impl StageKind for CsvSink {
    type Config = CsvSinkConfig;
    const NAME: &'static str = "csv_sink";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "One CSV row per frame with its numeric, text and record fields.";
    const ONE_REPLICA: Option<&'static str> = Some("its replicas would all write the same CSV file");
    const SWEEP: dataflow_engine::SweepRole = dataflow_engine::SweepRole::Rows { key: "path" };

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
            stage: ctx.stage.clone(),
            texts: c.texts,
            cols: Vec::new(),
            writer: None,
            rows: 0,
        })))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn columns_put_frame_part_name_first_then_sort() {
        let cols = ordered(["zeta", "frame", "name", "alpha", "part"].map(String::from));
        assert_eq!(cols, ["frame", "part", "name", "alpha", "zeta"]);
        assert_eq!(ordered(Vec::new()), ["frame", "part"]);
    }

    #[test]
    fn widening_keeps_every_row_under_the_new_header() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        std::fs::write(&a, "frame,part,x\n0:0,0,1\n0:1,0,\"two, quoted\"\n").unwrap();
        let old = ordered(["x".to_string()]);
        let new = ordered(["x", "w", "name"].map(String::from));
        copy_widened(&a, &b, &old, &new).unwrap();
        assert_eq!(
            std::fs::read_to_string(&b).unwrap(),
            "frame,part,name,w,x\n0:0,0,,,1\n0:1,0,,,\"two, quoted\"\n"
        );
    }
}
