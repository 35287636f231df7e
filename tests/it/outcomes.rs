//! What a run leaves behind and how it ends (issue 16): rows, images and a summary
//! that survive `kill -9`, exit codes (130 after Ctrl-C, 3 when the run's records
//! cannot be written), unreadable folder entries, `dataflow sweep`'s exit status and
//! torn last lines, frames counted at the sinks across machines, and `dataflow top`'s
//! rates.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{bin, root};

/// A `dataflow` child whose stderr goes to a file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.child.id());
    }

    /// The exit code (`None`: ended by a signal); fails after `limit`.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                println!("--- exited {:?}:\n{}", s.code(), self.log());
                return s.code();
            }
            assert!(t0.elapsed() < limit, "still running after {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `dataflow <args>` in the workspace root, stderr to `<log>`.
fn start(args: &[&str], log: &Path) -> Proc {
    let child = Command::new(bin())
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// Starts `dataflow run <graph> --out <out> --no-progress --metrics off <extra>`.
fn start_run(graph: &Path, out: &Path, extra: &[&str]) -> Proc {
    let (g, o) = (graph.display().to_string(), out.display().to_string());
    let mut args = vec!["run", &g, "--out", &o, "--no-progress", "--metrics", "off"];
    args.extend_from_slice(extra);
    start(&args, &out.with_extension("log"))
}

/// Polls `ready` every 20 ms until it holds; fails after `limit` with `what`.
fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < limit, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Complete lines of a file (a last line without newline left out).
fn complete_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines().map(str::to_string).collect()
}

/// PNG files in `dir` (names), sorted.
fn pngs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".png"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("summary.json does not parse: {e}: {text}"))
}

/// Synthetic frames at `rate`/s (endless without `frames`) through a delay into a
/// CSV and a PNG sink: no model needed.
fn model_free_graph(dir: &Path, rate: f64, frames: Option<u64>) -> PathBuf {
    let frames = frames.map(|f| format!("frames = {f}\n")).unwrap_or_default();
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            "[stage.src]\nkind = \"synthetic\"\nrate = {rate}\nwidth = 32\nheight = 24\npattern = \"noise\"\n{frames}\
             [stage.slow]\nkind = \"delay\"\ninputs = [\"src\"]\nms = 2\n\
             [stage.rows]\nkind = \"csv_sink\"\ninputs = [\"slow\"]\n\
             [stage.images]\nkind = \"image_sink\"\ninputs = [\"slow\"]\n"
        ),
    )
    .unwrap();
    g
}

#[test]
fn kill_9_keeps_every_row_and_image_that_reached_the_sinks_and_a_summary() {
    const N: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let g = model_free_graph(dir.path(), 40.0, None);
    let out = dir.path().join("out");
    let mut run = start_run(&g, &out, &[]);
    // N rows and N images on disk, and the first summary snapshot (every 2 s).
    wait_until(Duration::from_secs(30), "N rows, N images and a summary", || {
        complete_lines(&out.join("rows.csv")).len() > N
            && pngs(&out.join("images")).len() >= N
            && out.join("summary.json").exists()
    });
    run.signal("KILL");
    assert_eq!(run.wait(Duration::from_secs(10)), None, "killed by the signal");

    let lines = complete_lines(&out.join("rows.csv"));
    assert_eq!(lines[0], "frame,part", "the header is fixed at the first row");
    let frames: Vec<&str> = lines[1..].iter().map(|l| l.split(',').next().unwrap()).collect();
    assert!(frames.len() >= N, "{} rows", frames.len());
    for (k, f) in frames.iter().enumerate() {
        assert_eq!(*f, format!("0:{k}"), "rows in frame order, none missing");
        assert_eq!(lines[k + 1].split(',').count(), 2, "row {k} is whole: {}", lines[k + 1]);
    }
    let images = pngs(&out.join("images"));
    assert!(images.len() >= N, "{images:?}");
    for name in &images {
        let img = image::open(out.join("images").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((img.width(), img.height()), (32, 24), "{name}");
    }
    let s = summary(&out);
    assert_eq!(s["finished"], false, "a snapshot taken while the run went on: {s}");
    assert!(s["frames_in"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn ctrl_c_before_the_source_ends_exits_130_and_a_finished_run_0() {
    let dir = tempfile::tempdir().unwrap();
    let g = model_free_graph(dir.path(), 100.0, None);
    let out = dir.path().join("out");
    let mut run = start_run(&g, &out, &[]);
    wait_until(Duration::from_secs(30), "rows", || {
        complete_lines(&out.join("rows.csv")).len() > 5
    });
    run.signal("INT");
    assert_eq!(run.wait(Duration::from_secs(20)), Some(130), "Ctrl-C is exit code 130");
    let s = summary(&out);
    assert_eq!(
        (s["ctrl_c"].as_bool(), s["finished"].as_bool()),
        (Some(true), Some(true)),
        "{s}"
    );
    assert!(run.log().contains("interrupted"), "{}", run.log());

    let g = model_free_graph(dir.path(), 500.0, Some(5));
    let out = dir.path().join("out2");
    assert_eq!(start_run(&g, &out, &[]).wait(Duration::from_secs(30)), Some(0));
    assert_eq!(complete_lines(&out.join("rows.csv")).len(), 6);
}

/// A folder of one good PNG and one corrupt one.
fn images_with_a_bad_one(dir: &Path) -> PathBuf {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    image::RgbImage::from_pixel(16, 8, image::Rgb([10, 200, 30]))
        .save(imgs.join("a_good.png"))
        .unwrap();
    std::fs::write(imgs.join("b_bad.png"), b"not an image\n").unwrap();
    imgs
}

fn image_dir_graph(dir: &Path, imgs: &Path) -> PathBuf {
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            "[stage.src]\nkind = \"image_dir\"\npath = \"{}\"\n\
             [stage.rows]\nkind = \"csv_sink\"\ninputs = [\"src\"]\n",
            imgs.display()
        ),
    )
    .unwrap();
    g
}

#[test]
fn an_unwritable_summary_or_error_log_is_an_error_and_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let g = model_free_graph(dir.path(), 500.0, Some(3));
    let out = dir.path().join("out");
    // A folder where summary.json should go: the file cannot replace it.
    std::fs::create_dir_all(out.join("summary.json/x")).unwrap();
    let mut run = start_run(&g, &out, &[]);
    assert_eq!(run.wait(Duration::from_secs(30)), Some(3));
    let log = run.log();
    assert!(
        log.contains(&format!("error: cannot write {}", out.join("summary.json").display())),
        "{log}"
    );
    assert!(log.contains("check the space and permissions"), "{log}");
    assert_eq!(
        complete_lines(&out.join("rows.csv")).len(),
        4,
        "the frames went through"
    );

    let imgs = images_with_a_bad_one(dir.path());
    let g = image_dir_graph(dir.path(), &imgs);
    let out = dir.path().join("out2");
    std::fs::create_dir_all(out.join("errors.jsonl/x")).unwrap();
    let mut run = start_run(&g, &out, &[]);
    assert_eq!(
        run.wait(Duration::from_secs(30)),
        Some(3),
        "the list of failed frames is incomplete"
    );
    let log = run.log();
    assert!(
        log.contains("cannot append failed frame - of stage `src`")
            && log.contains(&out.join("errors.jsonl").display().to_string()),
        "{log}"
    );
    assert_eq!(summary(&out)["unwritten"].as_array().unwrap().len(), 1);
}

#[test]
fn folders_and_link_loops_named_like_images_are_reported_like_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = images_with_a_bad_one(dir.path());
    std::fs::create_dir(imgs.join("c_folder.png")).unwrap();
    std::os::unix::fs::symlink("d_loop.png", imgs.join("d_loop.png")).unwrap();
    std::os::unix::fs::symlink("nowhere.png", imgs.join("e_dangling.png")).unwrap();
    let g = image_dir_graph(dir.path(), &imgs);
    let out = dir.path().join("out");
    let mut run = start_run(&g, &out, &[]);
    assert_eq!(
        run.wait(Duration::from_secs(30)),
        Some(2),
        "failed frames give exit code 2"
    );
    let errors: Vec<serde_json::Value> = complete_lines(&out.join("errors.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text = |name: &str| {
        errors
            .iter()
            .map(|e| e["error"].as_str().unwrap().to_string())
            .find(|e| e.contains(name))
            .unwrap_or_else(|| panic!("{name} not reported: {errors:?}"))
    };
    assert!(text("c_folder.png").contains("is a folder, not an image; rename or remove it"));
    assert!(text("d_loop.png").contains("link loop?); fix or remove it"));
    assert!(text("e_dangling.png").contains("cannot read"));
    assert!(text("b_bad.png").contains("not an image"));
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors.iter().all(|e| e["stage"] == "src"));
    assert_eq!(
        complete_lines(&out.join("rows.csv")).len(),
        2,
        "the good image went through"
    );
}

#[test]
fn sweep_exits_2_when_runs_had_failed_frames_and_skips_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = images_with_a_bad_one(dir.path());
    let g = image_dir_graph(dir.path(), &imgs);
    let out = dir.path().join("sweep");
    let sweep = |log: &str| {
        let (g, o) = (g.display().to_string(), out.display().to_string());
        let mut p = start(
            &["sweep", &g, "--snr", "3", "--seeds", "1", "--out", &o],
            &dir.path().join(log),
        );
        let code = p.wait(Duration::from_secs(60));
        (code, p.log())
    };
    let (code, log) = sweep("sweep1.log");
    assert_eq!(code, Some(2), "a sweep whose runs had failed frames is not a success");
    let errors = out.join("runs/g/snr3/seed1/errors.jsonl");
    assert!(log.contains("1 of 1 runs had failed frames"), "{log}");
    assert!(log.contains(&errors.display().to_string()), "{log}");
    assert_eq!(
        complete_lines(&out.join("results.csv")).len(),
        2,
        "the good image's row"
    );

    // A run killed while writing its last row: the torn line is skipped.
    let csv = out.join("runs/g/snr3/seed1/rows.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("0:9,0,torn_na");
    std::fs::write(&csv, text).unwrap();
    let (code, log) = sweep("sweep2.log");
    assert_eq!(code, Some(2), "resumed: the failed run still counts");
    assert!(log.contains("resumed: 1 of 1 runs were already done"), "{log}");
    let results = complete_lines(&out.join("results.csv"));
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results[1].contains("a_good"), "{results:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_receiving_machine_counts_frames_at_its_sinks_and_link_messages_apart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // 3 frames cut into 4 tiles on `tx`; every tile crosses to `rx`: 12 link messages.
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        format!(
            "[graph]\nname = \"count-{port}\"\n\
             [machines.tx]\nlisten = [\"tcp/127.0.0.1:{port}\"]\n\
             [machines.rx]\nconnect = [\"tcp/127.0.0.1:{port}\"]\n\
             [stage.src]\nkind = \"synthetic\"\nmachine = \"tx\"\nframes = 3\nwidth = 32\nheight = 32\n\
             [stage.split]\nkind = \"split\"\nmachine = \"tx\"\ninputs = [\"src\"]\ngrid = [2, 2]\n\
             [stage.sink]\nkind = \"null_sink\"\nmachine = \"rx\"\n\
             inputs = [\"split.tile0\", \"split.tile1\", \"split.tile2\", \"split.tile3\"]\n"
        ),
    )
    .unwrap();
    let (tx_out, rx_out) = (dir.path().join("tx"), dir.path().join("rx"));
    let mut rx = start_run(&g, &rx_out, &["--machine", "rx"]);
    let mut tx = start_run(&g, &tx_out, &["--machine", "tx"]);
    assert_eq!(tx.wait(Duration::from_secs(60)), Some(0));
    assert_eq!(rx.wait(Duration::from_secs(30)), Some(0));
    let s = summary(&rx_out);
    assert_eq!(
        (
            s["frames_out"].as_u64(),
            s["link_messages"].as_u64(),
            s["frames_in"].as_u64()
        ),
        (Some(3), Some(12), Some(0)),
        "{s}"
    );
    let log = rx.log();
    assert!(
        log.contains("3 frame(s) at the sinks")
            && log.contains("; 0 from the sources, 12 link message(s) from other machines"),
        "{log}"
    );
    let s = summary(&tx_out);
    assert_eq!(
        (s["frames_in"].as_u64(), s["link_messages"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
}

#[test]
fn top_shows_rates_from_the_second_scrape_on() {
    let dir = tempfile::tempdir().unwrap();
    let g = model_free_graph(dir.path(), 200.0, None);
    let out = dir.path().join("out");
    let addr = format!("127.0.0.1:{}", free_port());
    let (gs, os) = (g.display().to_string(), out.display().to_string());
    let mut run = start(
        &["run", &gs, "--out", &os, "--no-progress", "--metrics", &addr],
        &dir.path().join("run.log"),
    );
    wait_until(Duration::from_secs(30), "rows", || {
        complete_lines(&out.join("rows.csv")).len() > 5
    });
    let mut top = Command::new(bin())
        .args(["top", &addr, "--interval", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(3200));
    let _ = top.kill();
    let mut screen = String::new();
    top.stdout.take().unwrap().read_to_string(&mut screen).unwrap();
    let _ = top.wait();
    run.signal("INT");
    let _ = run.wait(Duration::from_secs(20));
    // Each redraw starts by clearing the screen; the first has no rates yet.
    let frames: Vec<&str> = screen.split("\x1b[2J\x1b[H").filter(|f| !f.is_empty()).collect();
    assert!(frames.len() >= 4, "{screen}");
    let rate = |frame: &str, stage: &str| -> Option<f64> {
        let line = frame
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage) || l.split_whitespace().nth(1) == Some(stage))?;
        let cells: Vec<&str> = line.split_whitespace().filter(|c| *c != "*").collect();
        cells.get(2)?.parse().ok()
    };
    assert_eq!(rate(frames[0], "src"), None, "first scrape: no rate yet\n{}", frames[0]);
    for f in &frames[1..] {
        for stage in ["src", "slow"] {
            let r = rate(f, stage).unwrap_or_else(|| panic!("no rate for {stage}:\n{f}"));
            assert!(r > 20.0, "{stage} runs at about 200 frames/s, top says {r}:\n{f}");
        }
    }
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LateFieldConfig {
    /// First frame that carries the field `late`.
    from: u64,
}

/// Transform giving every frame a number `early`, and `late` from frame `from` on.
pub struct LateField;
struct LateFieldRun(u64);
impl dataflow_engine::Stage for LateFieldRun {
    fn process(
        &mut self,
        input: dataflow_engine::Input,
        out: &mut dataflow_engine::Outputs,
    ) -> Result<(), dataflow_engine::StageError> {
        if let dataflow_engine::Input::Message { msg, .. } = input {
            let seq = msg.id.seq;
            let mut f = dataflow_engine::Fields::new().with("early", dataflow_engine::Value::Number(seq as f64));
            if seq >= self.0 {
                f.insert("late", dataflow_engine::Value::Number(10.0 * seq as f64));
            }
            out.emit(msg.derive(f));
        }
        Ok(())
    }
}
impl dataflow_engine::StageKind for LateField {
    type Config = LateFieldConfig;
    const NAME: &'static str = "late_field";
    const ROLE: dataflow_engine::Role = dataflow_engine::Role::Transform;
    const DOC: &'static str = "test stage adding a field from some frame on";
    fn ports(_: &Self::Config) -> dataflow_engine::Ports {
        dataflow_engine::Ports {
            outputs: vec![
                dataflow_engine::OutPort::new("out").with_each(&["early", "late"], dataflow_engine::FieldType::Number)
            ],
            ..dataflow_engine::Ports::default()
        }
    }
    fn build(
        c: &Self::Config,
        _: &dataflow_engine::BuildContext,
    ) -> Result<dataflow_engine::Built, dataflow_engine::StageError> {
        Ok(dataflow_engine::Built::Stage(Box::new(LateFieldRun(c.from))))
    }
}

#[test]
fn csv_sink_widens_its_header_when_a_later_row_brings_a_new_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[stage.src]\nkind = \"synthetic\"\nframes = 4\nwidth = 8\nheight = 8\n\
                [stage.nums]\nkind = \"late_field\"\ninputs = [\"src\"]\nfrom = 2\n\
                [stage.rows]\nkind = \"csv_sink\"\ninputs = [\"nums\"]\n";
    let mut reg = crate::support::registry();
    reg.register::<LateField>();
    let src = dataflow_engine::GraphSource::from_text(Path::new("test.toml"), text.to_string(), &[]).unwrap();
    let plan = dataflow_engine::plan(&src, &reg).unwrap_or_else(|d| panic!("{d}"));
    let (rt, opts) = crate::support::in_process(dir.path());
    let s = rt.block_on(dataflow_engine::run(&plan, opts)).unwrap();
    assert_eq!((s.frames_out, s.exit_code()), (4, 0));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rows.csv")).unwrap(),
        "frame,part,early,late\n0:0,0,0,\n0:1,0,1,\n0:2,0,2,20\n0:3,0,3,30\n",
        "the header was rewritten once with `late`, the first rows keep an empty cell"
    );
    assert!(!dir.path().join("rows.csv.tmp").exists());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (summary["finished"].as_bool(), summary["frames_out"].as_u64()),
        (Some(true), Some(4))
    );
}
