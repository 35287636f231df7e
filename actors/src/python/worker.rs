//! One worker process per replica: start, handshake, one call (a frame or a batch) at
//! a time with a deadline, stderr into the engine's log, kill on drop.
//!
//! # Lifetime
//! The stage's `build` starts the worker (before the source opens) and waits for its
//! `setup` reply. The worker asks the kernel to kill it when the engine's thread that
//! started it ends (`PR_SET_PDEATHSIG`, set from Python so that the engine needs no
//! `unsafe`); the engine closes it at the end of the stream (`close`, then a grace
//! period, then `SIGKILL`) and kills and reaps it whenever the [`Worker`] is dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use dataflow_engine::{Message, StageError};

use super::protocol::{self, Reply, Request, WireOutput};
use super::shm::Segment;

/// Where the stage class comes from.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// A Python file.
    Script(PathBuf),
    /// An importable module.
    Module(String),
}

/// How to start a worker.
#[derive(Debug, Clone)]
pub(super) struct Spawn {
    /// The interpreter.
    pub python: PathBuf,
    /// The stage class's file or module.
    pub target: Target,
    /// The class name.
    pub class: String,
    /// `PYTHONPATH` for the worker (finds `dataflow_stage`).
    pub pythonpath: std::ffi::OsString,
    /// Stage id, for the log and error texts.
    pub stage: String,
    /// Replica number.
    pub replica: usize,
    /// The graph's `args`.
    pub args: serde_json::Map<String, serde_json::Value>,
    /// Longest wait for `setup`.
    pub setup_timeout: Duration,
}

/// Why a call did not return outputs.
#[derive(Debug)]
pub(super) enum CallError {
    /// The stage raised: the traceback's last lines.
    Raised(String),
    /// The worker ended (crash, kill, OOM): how it ended.
    Died(String),
    /// No reply within the deadline (the worker has been killed).
    Timeout(Duration),
    /// The engine could not hand the frame over or read the reply.
    Io(String),
}

/// One frame's result in a batch: its outputs, or the traceback of its failure.
pub(super) type FrameResult = Result<Vec<WireOutput>, String>;

/// A running worker process.
pub(super) struct Worker {
    child: Child,
    /// The protocol's request pipe; `None` once `close` was sent.
    stdin: Option<ChildStdin>,
    /// Replies read by the reader thread; it ends at the worker's end of output.
    replies: Receiver<std::io::Result<Option<Vec<u8>>>>,
    seg_in: Segment,
    seg_out: Segment,
    /// Frame in flight, shown on the worker's log lines ("-" between frames).
    frame: Arc<Mutex<String>>,
    /// The worker's process id.
    pub pid: u32,
}

impl Worker {
    /// Starts a worker and runs the stage's `setup`.
    pub(super) fn start(s: &Spawn) -> Result<Self, StageError> {
        // The engine names the stage in front of a build error.
        let fail = |what: String| StageError::new("python", what);
        let seg_in = Segment::create(&s.stage, s.replica, "in")
            .map_err(|e| fail(format!("cannot create a shared-memory segment: {e}")))?;
        let seg_out = Segment::create(&s.stage, s.replica, "out")
            .map_err(|e| fail(format!("cannot create a shared-memory segment: {e}")))?;
        let mut cmd = Command::new(&s.python);
        cmd.args(["-u", "-m", "dataflow_stage.worker", "--class", &s.class]);
        match &s.target {
            Target::Script(p) => cmd.arg("--script").arg(p),
            Target::Module(m) => cmd.arg("--module").arg(m),
        };
        cmd.arg("--shm-in")
            .arg(seg_in.path())
            .arg("--shm-out")
            .arg(seg_out.path())
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .env("PYTHONPATH", &s.pythonpath)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            fail(format!(
                "cannot start `{}`: {e}; set `python` to an interpreter with numpy",
                s.python.display()
            ))
        })?;
        let pid = child.id();
        let frame = Arc::new(Mutex::new("-".to_string()));
        let (stdin, stdout, stderr) = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (Some(i), Some(o), Some(e)) => (i, o, e),
            _ => return Err(fail("the worker's pipes were not opened".into())),
        };
        relay_stderr(stderr, s.stage.clone(), s.replica, frame.clone());
        let replies = read_replies(stdout);
        let mut w = Worker {
            child,
            stdin: Some(stdin),
            replies,
            seg_in,
            seg_out,
            frame,
            pid,
        };
        let reply = w.request(&Request::Setup { args: &s.args }, s.setup_timeout);
        let what = format!("`{}` of {}", s.class, s.target);
        match reply {
            Ok(r) if r.ok => {
                w.seg_in.unlink();
                w.seg_out.unlink();
                tracing::info!(stage = %s.stage, replica = s.replica, pid = r.pid.unwrap_or(pid), class = %s.class, "python worker ready");
                Ok(w)
            }
            Ok(r) => Err(fail(format!(
                "setup of {what} raised:\n{}",
                r.error.unwrap_or_default()
            ))),
            Err(CallError::Died(how)) => Err(fail(format!(
                "the worker for {what} {how} before its setup finished (see the log above for its stderr)"
            ))),
            Err(CallError::Timeout(t)) => Err(fail(format!(
                "setup of {what} took over {} s; raise `setup_timeout_s`",
                t.as_secs_f64()
            ))),
            Err(CallError::Raised(e) | CallError::Io(e)) => Err(fail(format!("setup of {what}: {e}"))),
        }
    }

    /// Hands `msg` to the worker and waits up to `timeout` for its outputs and the
    /// seconds its `process` took. On a timeout the worker is killed.
    pub(super) fn call(&mut self, msg: &Message, timeout: Duration) -> Result<(Vec<WireOutput>, f64), CallError> {
        let req = protocol::encode(msg, &mut self.seg_in)
            .map_err(|e| CallError::Io(format!("cannot write the frame into shared memory: {e}")))?;
        if let Ok(mut f) = self.frame.lock() {
            *f = msg.id.to_string();
        }
        let reply = self.request(&req, timeout);
        if let Ok(mut f) = self.frame.lock() {
            *f = "-".into();
        }
        match reply? {
            r if r.ok => Ok((r.outputs, r.busy_s)),
            r => Err(CallError::Raised(r.error.unwrap_or_else(|| "(no traceback)".into()))),
        }
    }

    /// Hands the frames of `msgs` to the worker in one request and waits up to `timeout`
    /// for the per-frame results (outputs, or the traceback of a frame that raised) and
    /// the seconds the stage's code took for the whole batch. On a timeout the worker is
    /// killed. A reply with no result for some frame is an `Io` error.
    pub(super) fn call_batch(
        &mut self,
        msgs: &[Message],
        timeout: Duration,
    ) -> Result<(Vec<FrameResult>, f64), CallError> {
        let req = protocol::encode_batch(msgs, &mut self.seg_in)
            .map_err(|e| CallError::Io(format!("cannot write the batch into shared memory: {e}")))?;
        if let Ok(mut f) = self.frame.lock() {
            *f = msgs.iter().map(|m| m.id.to_string()).collect::<Vec<_>>().join(",");
        }
        let reply = self.request(&req, timeout);
        if let Ok(mut f) = self.frame.lock() {
            *f = "-".into();
        }
        let reply = reply?;
        if !reply.ok {
            return Err(CallError::Raised(
                reply.error.unwrap_or_else(|| "(no traceback)".into()),
            ));
        }
        if reply.frames.len() != msgs.len() {
            return Err(CallError::Io(format!(
                "the worker answered {} results for a batch of {} frames",
                reply.frames.len(),
                msgs.len()
            )));
        }
        let each = reply
            .frames
            .into_iter()
            .map(|r| match r.ok {
                true => Ok(r.outputs),
                false => Err(r.error.unwrap_or_else(|| "(no traceback)".into())),
            })
            .collect();
        Ok((each, reply.busy_s))
    }

    /// The output segment, to read returned images from.
    pub(super) fn output_segment(&self) -> &Segment {
        &self.seg_out
    }

    /// Sends one request and waits for its reply.
    fn request(&mut self, req: &Request<'_>, timeout: Duration) -> Result<Reply, CallError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(CallError::Died("was closed".into()));
        };
        if protocol::send(stdin, req).is_err() {
            return Err(CallError::Died(self.ended()));
        }
        match self.replies.recv_timeout(timeout) {
            Ok(Ok(Some(body))) => serde_json::from_slice(&body)
                .map_err(|e| CallError::Io(format!("unreadable reply from the worker: {e}"))),
            Ok(Ok(None)) | Err(RecvTimeoutError::Disconnected) => Err(CallError::Died(self.ended())),
            Ok(Err(e)) => Err(CallError::Died(format!("{} (reading its reply: {e})", self.ended()))),
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err(CallError::Timeout(timeout))
            }
        }
    }

    /// How the worker ended (waits a moment for its exit status; kills it if it is
    /// still there, as a worker without its pipe is of no use).
    fn ended(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return describe(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    self.kill();
                    return "closed its pipe (killed)".into();
                }
            }
        }
    }

    /// Kills and reaps the worker.
    pub(super) fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ends the worker at the end of the stream: `close` (the stage's `close()` runs),
    /// then up to `grace` for it to exit, then `SIGKILL`.
    pub(super) fn close(&mut self, grace: Duration) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = protocol::send(&mut stdin, &Request::Close);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.close(Duration::from_secs(2));
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Script(p) => write!(f, "{}", p.display()),
            Target::Module(m) => write!(f, "module {m}"),
        }
    }
}

/// "was killed by signal 9 (SIGKILL)", "exited with status 1".
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(9)) => "was killed by signal 9 (SIGKILL: `kill -9`, or the out-of-memory killer)".into(),
        (None, Some(11)) => "crashed with signal 11 (SIGSEGV)".into(),
        (None, Some(s)) => format!("was killed by signal {s}"),
        (None, None) => "ended".into(),
    }
}

/// Reads replies on a thread of their own, so that a call can wait with a deadline.
fn read_replies(stdout: std::process::ChildStdout) -> Receiver<std::io::Result<Option<Vec<u8>>>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let item = protocol::receive(&mut r);
            let end = !matches!(item, Ok(Some(_)));
            if tx.send(item).is_err() || end {
                break;
            }
        }
    });
    rx
}

/// Logs the worker's stderr with the stage and the frame: `DFS\tLEVEL\tFRAME\ttext`
/// lines from `dataflow_stage.get_logger()` at their level, anything else (prints,
/// a crash's traceback) as a warning.
fn relay_stderr(stderr: std::process::ChildStderr, stage: String, replica: usize, frame: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.splitn(4, '\t');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("DFS"), Some(level), Some(f), Some(text)) => match level {
                    "DEBUG" => tracing::debug!(stage = %stage, replica, frame = %f, "{text}"),
                    "INFO" => tracing::info!(stage = %stage, replica, frame = %f, "{text}"),
                    "WARNING" => tracing::warn!(stage = %stage, replica, frame = %f, "{text}"),
                    _ => tracing::error!(stage = %stage, replica, frame = %f, "{text}"),
                },
                _ => {
                    let f = frame.lock().map(|f| f.clone()).unwrap_or_default();
                    tracing::warn!(stage = %stage, replica, frame = %f, "python: {line}");
                }
            }
        }
    });
}
