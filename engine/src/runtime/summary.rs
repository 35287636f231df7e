//! What a run did: [`RunSummary`], its `summary.json` file, its terminal rendering and
//! the exit codes of `dataflow run`.

use std::path::PathBuf;

/// Summary of one stage after a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageSummary {
    /// Stage id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Messages received (sources: frames produced).
    pub received: u64,
    /// Messages sent.
    pub sent: u64,
    /// Failed frames.
    pub errors: u64,
    /// Dropped on its input edges.
    pub dropped: u64,
    /// Restarts.
    pub restarts: u64,
    /// Joined frames emitted with missing parts.
    pub incomplete: u64,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    /// Graph name.
    pub graph: String,
    /// Output folder.
    pub out_dir: PathBuf,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Frames this process's sources produced (messages from other machines not counted).
    pub frames_in: u64,
    /// Frames that reached a sink: distinct frame ids over every sink, however many
    /// parts or sinks a frame has (a sending link to another machine is a sink too).
    pub frames_out: u64,
    /// Messages received from other machines (link messages: parts, texts, slices).
    pub link_messages: u64,
    /// Distinct frames that failed anywhere (errors, panics; a frame failing at two
    /// stages counts once), plus source inputs that could not be read.
    pub failed: u64,
    /// Messages dropped on edges.
    pub dropped: u64,
    /// Messages still in flight when the run was aborted (0 after a clean end).
    pub in_flight_at_abort: u64,
    /// Whether a stop request (Ctrl-C here, or the other machine's) ended the run early.
    pub interrupted: bool,
    /// Whether Ctrl-C (SIGINT) in this process stopped the run.
    pub ctrl_c: bool,
    /// The error that stopped the run, if any.
    pub fatal: Option<String>,
    /// The run's own records that could not be written (`errors.jsonl`,
    /// `summary.json`), one message per file: the outputs are incomplete.
    pub unwritten: Vec<String>,
    /// `false` in the snapshots of `summary.json` written while the run goes on.
    pub finished: bool,
    /// Per stage.
    pub stages: Vec<StageSummary>,
}

/// Exit code of `dataflow run`: every source ended and every frame went through.
pub const EXIT_OK: u8 = 0;
/// Exit code: the graph is invalid or the run could not start.
pub const EXIT_CONFIG: u8 = 1;
/// Exit code: frames failed (see `errors.jsonl`) or an error stopped the run.
pub const EXIT_FAILED: u8 = 2;
/// Exit code: the run's records (`summary.json`, `errors.jsonl`) could not be written.
pub const EXIT_UNWRITTEN: u8 = 3;
/// Exit code: Ctrl-C stopped the run before its sources ended (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

impl RunSummary {
    /// Whether the run should exit non-zero.
    pub fn failed(&self) -> bool {
        self.fatal.is_some() || self.failed > 0
    }

    /// The exit code for this run: [`EXIT_UNWRITTEN`], else [`EXIT_FAILED`], else
    /// [`EXIT_INTERRUPTED`], else [`EXIT_OK`] (the first that applies).
    pub fn exit_code(&self) -> u8 {
        if !self.unwritten.is_empty() {
            EXIT_UNWRITTEN
        } else if self.failed() {
            EXIT_FAILED
        } else if self.ctrl_c {
            EXIT_INTERRUPTED
        } else {
            EXIT_OK
        }
    }

    /// Writes `summary.json` into the output folder atomically (a temporary file
    /// renamed over it), so a reader or a crash never sees half a file.
    ///
    /// # Errors
    /// A message naming the file, what failed and what to check.
    pub fn write(&self) -> Result<(), String> {
        let path = self.out_dir.join("summary.json");
        let tmp = self.out_dir.join(".summary.json.tmp");
        let fail = |e: &dyn std::fmt::Display| {
            format!(
                "cannot write {}: {e}; the run's summary is missing or stale (check the space and permissions of the output folder)",
                path.display()
            )
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| fail(&e))?;
        std::fs::write(&tmp, text).map_err(|e| fail(&e))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(&e)
        })
    }

    /// The summary as text for a terminal.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let fps = if self.seconds > 0.0 {
            self.frames_out as f64 / self.seconds
        } else {
            0.0
        };
        let links = if self.link_messages > 0 {
            format!(", {} link message(s) from other machines", self.link_messages)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "graph `{}`: {} frame(s) at the sinks in {:.2} s ({:.2} frames/s); {} from the sources{links}, {} failed, {} dropped{}\n",
            self.graph,
            self.frames_out,
            self.seconds,
            fps,
            self.frames_in,
            self.failed,
            self.dropped,
            if self.interrupted { ", interrupted" } else { "" }
        ));
        s.push_str(&format!(
            "{:<16} {:<14} {:>9} {:>9} {:>7} {:>8} {:>8}\n",
            "stage", "kind", "received", "sent", "errors", "dropped", "restarts"
        ));
        for st in &self.stages {
            s.push_str(&format!(
                "{:<16} {:<14} {:>9} {:>9} {:>7} {:>8} {:>8}\n",
                st.id, st.kind, st.received, st.sent, st.errors, st.dropped, st.restarts
            ));
        }
        for st in self.stages.iter().filter(|s| s.incomplete > 0) {
            s.push_str(&format!(
                "stage `{}` emitted {} frame(s) with parts missing (lost upstream or timed out)\n",
                st.id, st.incomplete
            ));
        }
        if self.in_flight_at_abort > 0 {
            s.push_str(&format!(
                "{} message(s) were still in flight when the run was aborted\n",
                self.in_flight_at_abort
            ));
        }
        if let Some(f) = &self.fatal {
            s.push_str(&format!("error: {f}\n"));
        }
        for u in &self.unwritten {
            s.push_str(&format!("error: {u}\n"));
        }
        s.push_str(&format!("outputs: {}\n", self.out_dir.display()));
        s
    }
}
