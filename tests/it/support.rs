//! Test helpers: extra stage kinds that observe the engine, and runners.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dataflow_engine::{
    BuildContext, Built, Fields, GraphSource, Input, OutPort, Outputs, Ports, Registry, Role, RunOptions, RunSummary,
    Source, SourceItem, Stage, StageError, StageKind, StopFlag, Value,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Frames alive now and the most seen at once, per probe name.
#[derive(Default)]
pub struct Alive {
    pub now: AtomicU64,
    pub max: AtomicU64,
    pub seen: Mutex<Vec<u64>>,
}

fn probes() -> &'static Mutex<HashMap<String, Arc<Alive>>> {
    static P: OnceLock<Mutex<HashMap<String, Arc<Alive>>>> = OnceLock::new();
    P.get_or_init(Default::default)
}

/// The probe called `name` (created on first use).
pub fn probe(name: &str) -> Arc<Alive> {
    probes().lock().unwrap().entry(name.to_string()).or_default().clone()
}

struct Guard(Arc<Alive>);
impl Drop for Guard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackedConfig {
    frames: u64,
    probe: String,
}

/// Source whose frames carry a guard counting how many are alive anywhere in the graph.
pub struct Tracked;
struct TrackedRun {
    left: u64,
    probe: Arc<Alive>,
}
impl Source for TrackedRun {
    fn total(&self) -> Option<u64> {
        Some(self.left)
    }
    fn next(&mut self, stop: &StopFlag) -> SourceItem {
        if self.left == 0 || stop.is_set() {
            return SourceItem::End;
        }
        self.left -= 1;
        let now = self.probe.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.probe.max.fetch_max(now, Ordering::SeqCst);
        SourceItem::Frame(Fields::new().with("guard", Value::Opaque(Arc::new(Guard(self.probe.clone())))))
    }
}
impl StageKind for Tracked {
    type Config = TrackedConfig;
    const NAME: &'static str = "tracked";
    const ROLE: Role = Role::Source;
    const DOC: &'static str = "test source counting live frames";
    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::new("out").with("guard", dataflow_engine::FieldType::Opaque)],
            ..Ports::default()
        }
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Source(Box::new(TrackedRun {
            left: c.frames,
            probe: probe(&c.probe),
        })))
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    probe: String,
}

/// Sink recording the sequence numbers it sees, in order.
pub struct Record;
struct RecordRun(Arc<Alive>);
impl Stage for RecordRun {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        if let Input::Message { msg, .. } = input {
            self.0.seen.lock().unwrap().push(msg.id.seq);
        }
        Ok(())
    }
}
impl StageKind for Record {
    type Config = RecordConfig;
    const NAME: &'static str = "record";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "test sink recording sequence numbers";
    fn ports(_: &Self::Config) -> Ports {
        Ports::default()
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(RecordRun(probe(&c.probe)))))
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Panic on frames whose seq % every == at.
    every: u64,
    at: u64,
}

/// Transform that panics on chosen frames.
pub struct Fault;
struct FaultRun(u64, u64);
impl Stage for FaultRun {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        if let Input::Message { msg, .. } = input {
            if msg.id.seq % self.0 == self.1 {
                panic!("injected fault on frame {}", msg.id);
            }
            out.emit(msg);
        }
        Ok(())
    }
}
impl StageKind for Fault {
    type Config = FaultConfig;
    const NAME: &'static str = "fault";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "test stage that panics";
    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out")],
            ..Ports::default()
        }
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(FaultRun(c.every, c.at))))
    }
}

/// Every project kind plus the test kinds above.
pub fn registry() -> Registry {
    let mut r = dataflow_actors::registry();
    r.register::<Tracked>()
        .register::<Record>()
        .register::<Fault>()
        .register::<Fresh>();
    r
}

/// A two-worker runtime and the options of an in-process test run writing to `out`: no
/// progress bar, no signal handling (the test process keeps its own Ctrl-C).
pub fn in_process(out: impl AsRef<Path>) -> (tokio::runtime::Runtime, RunOptions) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut opts = RunOptions::new(out.as_ref().to_path_buf());
    opts.progress = false;
    (rt, opts)
}

/// Validates and runs graph text in-process; panics with the diagnostics if it is invalid.
pub fn run_text(text: &str, out: &Path) -> RunSummary {
    let src = GraphSource::from_text(Path::new("test.toml"), text.to_string(), &[]).unwrap();
    let plan = dataflow_engine::plan(&src, &registry()).unwrap_or_else(|d| panic!("{d}"));
    let (rt, opts) = in_process(out);
    rt.block_on(dataflow_engine::run(&plan, opts)).unwrap()
}

/// Validation diagnostics of graph text (empty when valid).
pub fn diagnostics(text: &str) -> Vec<String> {
    let src = match GraphSource::from_text(Path::new("test.toml"), text.to_string(), &[]) {
        Ok(s) => s,
        Err(d) => return d.0.iter().map(|d| d.to_string()).collect(),
    };
    match dataflow_engine::plan(&src, &registry()) {
        Ok(_) => Vec::new(),
        Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
    }
}

/// The `dataflow` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dataflow"))
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The summary of a stage by id.
pub fn stage<'a>(s: &'a RunSummary, id: &str) -> &'a dataflow_engine::runtime::StageSummary {
    s.stages
        .iter()
        .find(|st| st.id == id)
        .unwrap_or_else(|| panic!("no stage {id}"))
}

// Helpers for the Multi-SC and shipped-graph tests ------------------------------------

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FixedTextConfig {
    text: String,
}

/// Transform that replaces every message by one whose `text` is a fixed string, keeping
/// its frame id and part (so every tile of a frame sends the same caption).
pub struct FixedText;
struct FixedTextRun(Arc<str>);
impl Stage for FixedTextRun {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        if let Input::Message { msg, .. } = input {
            out.emit(msg.derive(Fields::new().with("text", Value::Text(self.0.clone()))));
        }
        Ok(())
    }
}
impl StageKind for FixedText {
    type Config = FixedTextConfig;
    const NAME: &'static str = "fixed_text";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "test stage giving every message the same text";
    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::new("out").with("text", dataflow_engine::FieldType::Text)],
            ..Ports::default()
        }
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(FixedTextRun(Arc::from(c.text.as_str())))))
    }
}

/// [`run_text`] with the extra kind [`FixedText`] registered.
pub fn run_text_fixed(text: &str, out: &Path) -> RunSummary {
    let mut reg = registry();
    reg.register::<FixedText>();
    let src = GraphSource::from_text(Path::new("test.toml"), text.to_string(), &[]).unwrap();
    let plan = dataflow_engine::plan(&src, &reg).unwrap_or_else(|d| panic!("{d}"));
    let (rt, opts) = in_process(out);
    rt.block_on(dataflow_engine::run(&plan, opts)).unwrap()
}

/// Runs `dataflow run <graph> --out <out> --no-progress --metrics off <args>` in the
/// workspace root and returns what it printed; stderr is echoed for the test log.
pub fn run_graph(graph: &Path, out: &Path, args: &[&str]) -> std::process::Output {
    let t0 = std::time::Instant::now();
    let o = std::process::Command::new(bin())
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .arg("run")
        .arg(graph)
        .arg("--out")
        .arg(out)
        .args(["--no-progress", "--metrics", "off"])
        .args(args)
        .output()
        .unwrap();
    println!(
        "dataflow run {} {args:?}: {:?} in {:.1} s\n{}",
        graph.display(),
        o.status.code(),
        t0.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The sample photos `scripts/setup-assets` fetches into the clone (5 real photos).
pub fn samples_dir() -> PathBuf {
    root().join("assets/samples")
}

/// The sample photos' paths, sorted by name.
fn sample_paths() -> Vec<PathBuf> {
    let dir = samples_dir();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup-assets", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .collect();
    v.sort();
    assert_eq!(
        v.len(),
        5,
        "scripts/setup-assets puts 5 sample photos in {}",
        dir.display()
    );
    v
}

/// Writes `n` real test photos of Kodak's size (768x512) into `dir` (created) and
/// returns their names (`photo00`, `photo01`, ...). Photo `i` is sample `i % 5`
/// scaled to cover 768x512; the crop is centred for the first five, mirrored for the
/// next five and anchored at the top-left corner after that, so every photo differs.
/// Tests use these instead of Kodak24, which a clone does not have.
pub fn make_photos(dir: &Path, n: usize) -> Vec<String> {
    use image::imageops::{crop_imm, flip_horizontal, resize, FilterType};
    std::fs::create_dir_all(dir).unwrap();
    let samples = sample_paths();
    (0..n)
        .map(|i| {
            let img = image::open(&samples[i % samples.len()]).unwrap().to_rgb8();
            let (w, h) = img.dimensions();
            let k = (768.0 / w as f64).max(512.0 / h as f64);
            let (sw, sh) = ((w as f64 * k).ceil() as u32, (h as f64 * k).ceil() as u32);
            let big = resize(&img, sw.max(768), sh.max(512), FilterType::Triangle);
            let (x, y) = match i / 5 {
                0 | 1 => ((big.width() - 768) / 2, (big.height() - 512) / 2),
                _ => (0, 0),
            };
            let mut photo = crop_imm(&big, x, y, 768, 512).to_image();
            if i / 5 == 1 {
                photo = flip_horizontal(&photo);
            }
            let name = format!("photo{i:02}");
            photo.save(dir.join(format!("{name}.png"))).unwrap();
            name
        })
        .collect()
}

/// The Kodak24 folder named by `DATAFLOW_KODAK`, or `None` (the test is skipped: Kodak
/// tests are `#[ignore]`d and named `kodak24_*`, so nextest lists them as skipped).
pub fn kodak_dir() -> Option<PathBuf> {
    std::env::var_os("DATAFLOW_KODAK")
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
}

/// The Kodak24 folder, or a panic that says how to name it.
pub fn require_kodak() -> PathBuf {
    let dir =
        kodak_dir().unwrap_or_else(|| panic!("set DATAFLOW_KODAK=DIR (a folder with kodim01.png ... kodim24.png)"));
    assert!(
        dir.join("kodim01.png").is_file(),
        "DATAFLOW_KODAK={}: no kodim01.png there",
        dir.display()
    );
    dir
}

/// Copies the named Kodak images (e.g. `kodim03`) from `DATAFLOW_KODAK` into `dir`.
pub fn copy_kodak(dir: &Path, names: &[&str]) {
    let kodak = require_kodak();
    std::fs::create_dir_all(dir).unwrap();
    for n in names {
        let f = format!("{n}.png");
        std::fs::copy(kodak.join(&f), dir.join(&f)).unwrap_or_else(|e| panic!("copying {f}: {e}"));
    }
}

/// A CSV file (RFC 4180 quoting) as rows keyed by column name.
pub fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut records: Vec<Vec<String>> = Vec::new();
    let (mut row, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        records.push(row);
    }
    let mut it = records.into_iter();
    let header = it.next().unwrap_or_default();
    it.map(|r| {
        assert_eq!(r.len(), header.len(), "ragged CSV row in {}", path.display());
        header.iter().cloned().zip(r).collect()
    })
    .collect()
}

/// A numeric CSV cell.
pub fn num(row: &HashMap<String, String>, col: &str) -> f64 {
    let v = row.get(col).unwrap_or_else(|| panic!("no column {col} in {row:?}"));
    v.parse().unwrap_or_else(|e| panic!("column {col}: {v:?}: {e}"))
}

/// The parts of a `" | "`-joined texts cell.
pub fn texts(row: &HashMap<String, String>, col: &str) -> Vec<String> {
    row.get(col)
        .unwrap_or_else(|| panic!("no column {col}"))
        .split(" | ")
        .map(str::to_string)
        .collect()
}

/// (sequence number, age at the sink) of each frame a `fresh` sink saw.
pub type Ages = Arc<Mutex<Vec<(u64, std::time::Duration)>>>;

/// Ages (arrival − capture) of the frames a `fresh` sink saw, per probe name.
pub fn ages(name: &str) -> Ages {
    static A: OnceLock<Mutex<HashMap<String, Ages>>> = OnceLock::new();
    A.get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone()
}

/// Sink recording how old each frame is when it arrives (capture time to sink time).
pub struct Fresh;
struct FreshRun(Ages);
impl Stage for FreshRun {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        if let Input::Message { msg, .. } = input {
            let age = std::time::SystemTime::now()
                .duration_since(msg.captured)
                .unwrap_or_default();
            self.0.lock().unwrap().push((msg.id.seq, age));
        }
        Ok(())
    }
}
impl StageKind for Fresh {
    type Config = RecordConfig;
    const NAME: &'static str = "fresh";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "test sink recording frame ages";
    fn ports(_: &Self::Config) -> Ports {
        Ports::default()
    }
    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        Ok(Built::Stage(Box::new(FreshRun(ages(&c.probe)))))
    }
}

/// The text path of Multi-SC (captions from colours, no segmentation) over BPSK at
/// `snr_db`, corrected by `model`, on every image of `images`.
pub fn text_only_graph(images: &Path, snr_db: f64, seed: u64, model: &str) -> String {
    format!(
        r#"
[graph]
name = "text-only"
seed = {seed}
[channel]
snr_db = {snr_db}
modulation = "bpsk"
[stage.source]
kind = "image_dir"
path = "{images}"
[stage.split]
kind = "split"
inputs = ["source"]
grid = [2, 2]
[stage.caption]
kind = "caption"
inputs = ["split.tile0", "split.tile1", "split.tile2", "split.tile3"]
[stage.text_channel]
kind = "text_channel"
inputs = ["caption"]
[stage.fuse]
kind = "fuse"
inputs = ["text_channel"]
[stage.correct]
kind = "correct"
inputs = ["fuse"]
model = "{model}"
[stage.reconstruct]
kind = "reconstruct"
inputs = ["correct"]
[stage.evaluate]
kind = "evaluate"
inputs = ["source", "reconstruct"]
[stage.metrics]
kind = "csv_sink"
inputs = ["evaluate"]
path = "metrics.csv"
"#,
        images = images.display()
    )
}
