//! `dataflow sweep`: every graph at every SNR and seed on the same images, then one
//! CSV, a summary with 95 % confidence intervals, plots and an HTML report.
//!
//! # Layout of the output folder
//!
//! ```text
//! OUT/runs/<graph>/snr<dB>/seed<s>/   one `dataflow run` each (its sinks, log.txt, done.json)
//! OUT/results.csv                     a row per (graph, snr, seed, image), every metric
//! OUT/summary.csv                     mean, std and 95 % CI per (graph, snr, metric)
//! OUT/plots/<metric>.png              metric against SNR, a line per graph, CI bands
//! OUT/index.html                      plots, settings, per-SNR grids with the texts
//! OUT/sweep.json                      the settings; a resumed sweep must match them
//! ```
//!
//! Each run is a child `dataflow run` process (a crash in one run cannot take the sweep
//! down, and each run gets a clean metrics registry). A run is done when its
//! `done.json` exists, so an interrupted sweep picks up at the first unfinished run;
//! a half-written run folder is cleared and run again. Every graph runs on the same
//! images with the same seeds, so the comparison is paired. Channel noise is seeded by
//! the graph seed, so two sweeps with the same settings write identical CSVs.
//!
//! The sweep exits 0 when every run went through, 2 (after writing the CSVs and the
//! report) when some runs had failed frames — their `errors.jsonl` are listed — and 1
//! when a run could not finish at all. A metrics CSV whose last line was torn by a
//! killed run is read without that line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Columns of a run's metrics CSV that are bookkeeping or not comparable across runs.
const NOT_METRICS: &[&str] = &["frame", "part", "name", "lost_inputs"];

/// Metrics plotted when present (others are in the CSVs).
const PLOTTED: &[(&str, &str)] = &[
    ("psnr_db", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("lpips", "LPIPS (lower is better)"),
    ("cosine", "Cosine similarity"),
    ("clip_cosine", "CLIP cosine"),
    ("bleu1", "BLEU-1 (corrected text)"),
    ("bleu4", "BLEU-4 (corrected text)"),
    ("wer", "Word error rate (corrected text)"),
    ("wer_received", "Word error rate (received text)"),
    ("cer", "Character error rate (corrected text)"),
    ("object_recall", "COCO object names kept (corrected text)"),
    ("ber", "Bit error rate (before decoding)"),
    ("image_lost", "Fraction of images lost"),
];

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct SweepArgs {
    /// Graph files.
    pub graphs: Vec<PathBuf>,
    /// SNR points in dB.
    pub snrs: Vec<f64>,
    /// Seeds 1..=n.
    pub seeds: u32,
    /// Images to use instead of each graph's source folder.
    pub images: Option<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    /// Extra `--set` overrides for every run.
    pub set: Vec<String>,
}

/// Parses `0:20:3` (start:stop:step, stop included when on the grid), `0,5,10` or `7`.
pub fn parse_snrs(spec: &str) -> Result<Vec<f64>, String> {
    let bad = || format!("`--snr {spec}`: expected START:STOP:STEP (e.g. 0:20:3), a list (0,5,10) or one value");
    let num = |s: &str| s.trim().parse::<f64>().map_err(|_| bad());
    let parts: Vec<&str> = spec.split(':').collect();
    let v = match parts.as_slice() {
        [a, b, s] => {
            let (a, b, s) = (num(a)?, num(b)?, num(s)?);
            if s.is_nan() || s <= 0.0 || b < a {
                return Err(format!("`--snr {spec}`: need STOP >= START and STEP > 0"));
            }
            let n = ((b - a) / s + 1e-9).floor() as usize;
            (0..=n).map(|i| a + s * i as f64).collect()
        }
        [one] => one.split(',').map(num).collect::<Result<Vec<_>, _>>()?,
        _ => return Err(bad()),
    };
    if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        return Err(bad());
    }
    Ok(v)
}

/// The settings that make a sweep; a resumed sweep must have the same.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Settings {
    graphs: Vec<String>,
    snrs: Vec<f64>,
    seeds: u32,
    images: Option<String>,
    set: Vec<String>,
}

/// What the sweep needs to know of a graph file.
#[derive(Debug, Clone)]
struct GraphInfo {
    path: PathBuf,
    name: String,
    /// `image_dir` stages (their `path` is replaced by `--images`).
    sources: Vec<String>,
    /// The metrics CSV of the first `csv_sink`, relative to the run folder.
    csv: PathBuf,
    /// Folder of the first `image_sink` writing `image` (the reconstructions).
    recon_dir: Option<PathBuf>,
    /// The images of the source, when no `--images` is given.
    source_dir: Option<PathBuf>,
    /// What stands in for what (codecs of `codec_channel`, models), for the report.
    notes: Vec<String>,
}

fn graph_info(path: &Path) -> Result<GraphInfo> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let name = doc
        .get("graph")
        .and_then(|g| g.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let stages = doc.get("stage").and_then(|s| s.as_table()).cloned().unwrap_or_default();
    let kind = |t: &toml::Value| t.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
    let sources: Vec<String> = stages
        .iter()
        .filter(|(_, t)| kind(t) == "image_dir")
        .map(|(id, _)| id.clone())
        .collect();
    let csv = stages.iter().find(|(_, t)| kind(t) == "csv_sink").map(|(id, t)| {
        t.get("path")
            .and_then(|p| p.as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("{id}.csv")))
    });
    let Some(csv) = csv else {
        bail!(
            "{}: a swept graph needs a `csv_sink` stage after `evaluate` (its rows are the sweep's data)",
            path.display()
        );
    };
    let recon_dir = stages
        .iter()
        .find(|(_, t)| kind(t) == "image_sink" && t.get("field").and_then(|f| f.as_str()).unwrap_or("image") == "image")
        .map(|(id, _)| PathBuf::from(id));
    let source_dir = sources
        .first()
        .and_then(|id| stages.get(id))
        .and_then(|t| t.get("path"))
        .and_then(|p| p.as_str())
        .map(|p| {
            let p = PathBuf::from(p);
            if p.exists() {
                p
            } else {
                path.parent().unwrap_or(Path::new(".")).join(p)
            }
        });
    let mut notes = Vec::new();
    for (id, t) in &stages {
        let key = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
        match kind(t).as_str() {
            "codec_channel" => {
                let codec: dataflow_models::codec::Codec = key("codec")
                    .and_then(|c| serde_json::from_value(serde_json::Value::String(c)).ok())
                    .unwrap_or(dataflow_models::codec::Codec::Heif);
                notes.push(format!("{id}: {} + 5G NR LDPC", codec.describe()));
            }
            "segment" | "caption" | "correct" | "reconstruct" | "jscc" => {
                if let Some(m) = key("model") {
                    notes.push(format!("{id}: {m}"));
                } else if kind(t) == "jscc" {
                    notes.push(format!("{id}: deep JSCC ({})", key("model_dir").unwrap_or_default()));
                }
            }
            _ => {}
        }
    }
    Ok(GraphInfo {
        path: path.to_path_buf(),
        name,
        sources,
        csv,
        recon_dir,
        source_dir,
        notes,
    })
}

/// `snr_label(3.0)` = "3", `snr_label(-2.5)` = "-2.5": folder names and CSV cells.
fn snr_label(s: f64) -> String {
    let r = (s * 1000.0).round() / 1000.0;
    format!("{r}")
}

/// One row of results: the key and every metric.
#[derive(Debug, Clone)]
struct Row {
    graph: String,
    snr: f64,
    seed: u32,
    image: String,
    metrics: BTreeMap<String, f64>,
    texts: BTreeMap<String, String>,
}

/// Runs the sweep; returns the process exit code.
pub fn sweep(args: &SweepArgs) -> Result<ExitCode> {
    if args.graphs.is_empty() {
        bail!("give at least one graph file");
    }
    if args.seeds == 0 {
        bail!("`--seeds` must be at least 1");
    }
    let infos: Vec<GraphInfo> = args.graphs.iter().map(|g| graph_info(g)).collect::<Result<_>>()?;
    let mut names = BTreeSet::new();
    for i in &infos {
        if !names.insert(i.name.clone()) {
            bail!(
                "two graphs are named `{}`; give each swept graph its own [graph] name",
                i.name
            );
        }
        if args.images.is_some() && i.sources.is_empty() {
            bail!(
                "{}: `--images` replaces the folder of an `image_dir` source, and this graph has none",
                i.path.display()
            );
        }
    }
    if let Some(dir) = &args.images {
        if !dir.is_dir() {
            bail!("`--images {}`: not a folder", dir.display());
        }
    }
    let settings = Settings {
        graphs: infos.iter().map(|i| i.path.display().to_string()).collect(),
        snrs: args.snrs.clone(),
        seeds: args.seeds,
        images: args.images.as_ref().map(|p| p.display().to_string()),
        set: args.set.clone(),
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let settings_file = args.out.join("sweep.json");
    if let Ok(old) = std::fs::read(&settings_file) {
        let old: Settings =
            serde_json::from_slice(&old).with_context(|| format!("reading {}", settings_file.display()))?;
        if old != settings {
            bail!(
                "{} holds a sweep with other settings ({}); resume it with the same arguments or choose another --out",
                args.out.display(),
                serde_json::to_string(&old).unwrap_or_default()
            );
        }
    } else {
        std::fs::write(&settings_file, serde_json::to_vec_pretty(&settings)?)?;
    }

    let exe = std::env::current_exe().context("finding the dataflow executable")?;
    let total = infos.len() * args.snrs.len() * args.seeds as usize;
    let mut n = 0;
    let mut skipped = 0;
    // Runs whose frames partly failed (exit 2): the sweep's data lacks their rows.
    let mut failed_runs: Vec<PathBuf> = Vec::new();
    let started = Instant::now();
    for info in &infos {
        for &snr in &args.snrs {
            for seed in 1..=args.seeds {
                n += 1;
                let dir = run_dir(&args.out, &info.name, snr, seed);
                if dir.join("done.json").is_file() {
                    skipped += 1;
                    if done_code(&dir) == Some(2) {
                        failed_runs.push(dir);
                    }
                    continue;
                }
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("clearing the unfinished run {}", dir.display()))?;
                }
                std::fs::create_dir_all(&dir)?;
                let t = Instant::now();
                eprint!("[{n}/{total}] {} snr={} seed={seed} ... ", info.name, snr_label(snr));
                let code = run_one(&exe, info, snr, seed, args, &dir)?;
                let secs = t.elapsed().as_secs_f64();
                eprintln!(
                    "{secs:.1} s{}",
                    if code == 2 {
                        " (some frames failed; see its errors.jsonl)"
                    } else {
                        ""
                    }
                );
                let done = serde_json::json!({"exit_code": code, "seconds": secs});
                std::fs::write(dir.join("done.json"), serde_json::to_vec_pretty(&done)?)?;
                if code == 2 {
                    failed_runs.push(dir);
                }
            }
        }
    }
    if skipped > 0 {
        eprintln!("resumed: {skipped} of {total} runs were already done");
    }
    let rows = collect(&infos, args)?;
    if rows.is_empty() {
        bail!(
            "the runs wrote no rows; check {}/runs/*/*/*/log.txt",
            args.out.display()
        );
    }
    let metrics = write_results(&args.out.join("results.csv"), &rows)?;
    let summary = summarise(&rows, &metrics);
    write_summary(&args.out.join("summary.csv"), &summary)?;
    let plots = crate::report::plots(&args.out.join("plots"), &summary, PLOTTED)?;
    crate::report::html(
        &args.out,
        &settings,
        &infos_for_report(&infos, args),
        &rows_for_report(&rows),
        &plots,
        &summary,
    )?;
    eprintln!(
        "sweep: {} rows, {} runs in {:.0} s; {}",
        rows.len(),
        total,
        started.elapsed().as_secs_f64(),
        args.out.join("index.html").display()
    );
    if failed_runs.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: {} of {total} runs had failed frames, so their rows are missing from the results:",
        failed_runs.len()
    );
    for d in &failed_runs {
        eprintln!("  {}", d.join("errors.jsonl").display());
    }
    eprintln!("  fix what they report, delete those run folders and run the same sweep again (finished runs are kept)");
    Ok(ExitCode::from(2))
}

/// The exit code a finished run recorded in its `done.json`.
fn done_code(dir: &Path) -> Option<i64> {
    let text = std::fs::read(dir.join("done.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v.get("exit_code")?.as_i64()
}

/// The bytes of a file a run may have been killed while writing, up to its last
/// newline: a torn last line (no newline) is left out.
pub fn complete_lines(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if end < bytes.len() {
        tracing::warn!(path = %path.display(), bytes = bytes.len() - end, "skipped a torn last line (the run was killed while writing it)");
        bytes.truncate(end);
    }
    Ok(bytes)
}

fn run_dir(out: &Path, graph: &str, snr: f64, seed: u32) -> PathBuf {
    out.join("runs")
        .join(graph)
        .join(format!("snr{}", snr_label(snr)))
        .join(format!("seed{seed}"))
}

fn run_one(exe: &Path, info: &GraphInfo, snr: f64, seed: u32, args: &SweepArgs, dir: &Path) -> Result<i32> {
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg(&info.path).arg("--snr").arg(snr_label(snr));
    cmd.arg("--set").arg(format!("graph.seed={seed}"));
    if let Some(images) = &args.images {
        let abs = std::fs::canonicalize(images).unwrap_or_else(|_| images.clone());
        for s in &info.sources {
            cmd.arg("--set").arg(format!("stage.{s}.path={}", abs.display()));
        }
    }
    for s in &args.set {
        cmd.arg("--set").arg(s);
    }
    cmd.arg("--out")
        .arg(dir)
        .arg("--metrics")
        .arg("off")
        .arg("--no-progress");
    let log = std::fs::File::create(dir.join("log.txt"))?;
    cmd.stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
    let status = cmd.status().with_context(|| format!("starting {}", exe.display()))?;
    match status.code() {
        Some(c @ (0 | 2)) => Ok(c),
        other => bail!(
            "the run of {} at {} dB, seed {seed} failed (exit {}); its log is {}. Fix it and run the same sweep again: finished runs are kept",
            info.path.display(),
            snr_label(snr),
            other.map(|c| c.to_string()).unwrap_or_else(|| "by signal".into()),
            dir.join("log.txt").display()
        ),
    }
}

fn collect(infos: &[GraphInfo], args: &SweepArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for info in infos {
        for &snr in &args.snrs {
            for seed in 1..=args.seeds {
                let dir = run_dir(&args.out, &info.name, snr, seed);
                let file = dir.join(&info.csv);
                let mut rdr = match complete_lines(&file) {
                    Ok(bytes) => csv::Reader::from_reader(std::io::Cursor::new(bytes)),
                    Err(e) => bail!(
                        "{}: {e} (the run wrote no metrics; see {})",
                        file.display(),
                        dir.join("log.txt").display()
                    ),
                };
                let headers = rdr.headers()?.clone();
                for rec in rdr.records() {
                    let rec = rec.with_context(|| format!("reading {}", file.display()))?;
                    let mut metrics = BTreeMap::new();
                    let mut texts = BTreeMap::new();
                    let mut image = String::new();
                    for (h, v) in headers.iter().zip(rec.iter()) {
                        if h == "name" || (h == "frame" && image.is_empty()) {
                            image = v.to_string();
                        }
                        if NOT_METRICS.contains(&h) || v.is_empty() {
                            continue;
                        }
                        match v.parse::<f64>() {
                            Ok(x) => {
                                metrics.insert(h.to_string(), x);
                            }
                            Err(_) => {
                                texts.insert(h.to_string(), v.to_string());
                            }
                        }
                    }
                    rows.push(Row {
                        graph: info.name.clone(),
                        snr,
                        seed,
                        image,
                        metrics,
                        texts,
                    });
                }
            }
        }
    }
    rows.sort_by(|a, b| {
        a.graph
            .cmp(&b.graph)
            .then(a.snr.total_cmp(&b.snr))
            .then(a.seed.cmp(&b.seed))
            .then(a.image.cmp(&b.image))
    });
    Ok(rows)
}

/// Writes results.csv; returns the metric columns.
fn write_results(path: &Path, rows: &[Row]) -> Result<Vec<String>> {
    let metrics: Vec<String> = rows
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut w = csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    let mut header = vec!["graph".to_string(), "snr_db".into(), "seed".into(), "image".into()];
    header.extend(metrics.iter().cloned());
    w.write_record(&header)?;
    for r in rows {
        let mut rec = vec![r.graph.clone(), snr_label(r.snr), r.seed.to_string(), r.image.clone()];
        rec.extend(
            metrics
                .iter()
                .map(|m| r.metrics.get(m).map(|v| format!("{v}")).unwrap_or_default()),
        );
        w.write_record(&rec)?;
    }
    w.flush()?;
    Ok(metrics)
}

/// Mean and 95 % confidence interval of one metric for one graph at one SNR.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Graph name.
    pub graph: String,
    /// SNR in dB.
    pub snr: f64,
    /// Metric column.
    pub metric: String,
    /// Samples (images × seeds).
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// Half-width of the 95 % confidence interval of the mean (Student t).
    pub ci95: f64,
}

/// Two-sided 97.5 % quantile of Student's t with `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

fn summarise(rows: &[Row], metrics: &[String]) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, i64, String), Vec<f64>> = BTreeMap::new();
    for r in rows {
        for m in metrics {
            if let Some(&v) = r.metrics.get(m) {
                if v.is_finite() {
                    groups
                        .entry((r.graph.clone(), (r.snr * 1000.0).round() as i64, m.clone()))
                        .or_default()
                        .push(v);
                }
            }
        }
    }
    groups
        .into_iter()
        .map(|((graph, snr, metric), v)| {
            let n = v.len();
            let mean = v.iter().sum::<f64>() / n as f64;
            let std = if n > 1 {
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            } else {
                0.0
            };
            let ci95 = if n > 1 {
                t975(n - 1) * std / (n as f64).sqrt()
            } else {
                0.0
            };
            Summary {
                graph,
                snr: snr as f64 / 1000.0,
                metric,
                n,
                mean,
                std,
                ci95,
            }
        })
        .collect()
}

fn write_summary(path: &Path, summary: &[Summary]) -> Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    w.write_record(["graph", "snr_db", "metric", "n", "mean", "std", "ci95_low", "ci95_high"])?;
    for s in summary {
        w.write_record([
            s.graph.clone(),
            snr_label(s.snr),
            s.metric.clone(),
            s.n.to_string(),
            format!("{:.6}", s.mean),
            format!("{:.6}", s.std),
            format!("{:.6}", s.mean - s.ci95),
            format!("{:.6}", s.mean + s.ci95),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// What the HTML report needs of each graph.
pub struct ReportGraph {
    /// Graph name.
    pub name: String,
    /// Graph file.
    pub path: String,
    /// Folder of the originals.
    pub originals: Option<PathBuf>,
    /// `runs/<graph>/snr<s>/seed1/<recon dir>` relative to the sweep folder, per SNR label.
    pub recon: BTreeMap<String, PathBuf>,
    /// What stands in for what.
    pub notes: Vec<String>,
}

fn infos_for_report(infos: &[GraphInfo], args: &SweepArgs) -> Vec<ReportGraph> {
    infos
        .iter()
        .map(|i| ReportGraph {
            name: i.name.clone(),
            path: i.path.display().to_string(),
            originals: args.images.clone().or_else(|| i.source_dir.clone()),
            notes: i.notes.clone(),
            recon: args
                .snrs
                .iter()
                .filter_map(|&s| {
                    i.recon_dir
                        .as_ref()
                        .map(|d| (snr_label(s), run_dir(&args.out, &i.name, s, 1).join(d)))
                })
                .collect(),
        })
        .collect()
}

/// One image of one graph at one SNR (seed 1) for the report grid.
pub struct ReportCell {
    /// Graph name.
    pub graph: String,
    /// SNR label.
    pub snr: String,
    /// Image name.
    pub image: String,
    /// Text columns of the row (sent, received, corrected texts).
    pub texts: BTreeMap<String, String>,
    /// PSNR, when measured.
    pub psnr: Option<f64>,
}

fn rows_for_report(rows: &[Row]) -> Vec<ReportCell> {
    rows.iter()
        .filter(|r| r.seed == 1)
        .map(|r| ReportCell {
            graph: r.graph.clone(),
            snr: snr_label(r.snr),
            image: r.image.clone(),
            texts: r.texts.clone(),
            psnr: r.metrics.get("psnr_db").copied(),
        })
        .collect()
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// `settings` as HTML rows (for the report).
pub fn settings_rows(s: &impl Serialize) -> String {
    let v = serde_json::to_value(s).unwrap_or_default();
    let mut out = String::new();
    if let Some(m) = v.as_object() {
        for (k, v) in m {
            let _ = write!(
                out,
                "<tr><th>{}</th><td><code>{}</code></td></tr>",
                esc(k),
                esc(&v.to_string())
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snr_specs_parse() {
        assert_eq!(
            parse_snrs("0:20:3").unwrap(),
            vec![0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0]
        );
        assert_eq!(parse_snrs("0:6:3").unwrap(), vec![0.0, 3.0, 6.0]);
        assert_eq!(parse_snrs("-5,0,5").unwrap(), vec![-5.0, 0.0, 5.0]);
        assert_eq!(parse_snrs("7").unwrap(), vec![7.0]);
        assert!(parse_snrs("0:20").is_err());
        assert!(parse_snrs("5:0:1").is_err());
        assert!(parse_snrs("0:10:0").is_err());
        assert!(parse_snrs("x").is_err());
    }

    #[test]
    fn confidence_intervals_use_student_t() {
        let rows: Vec<Row> = [1.0, 2.0, 3.0]
            .iter()
            .map(|&v| Row {
                graph: "g".into(),
                snr: 3.0,
                seed: 1,
                image: "a".into(),
                metrics: BTreeMap::from([("psnr_db".to_string(), v)]),
                texts: BTreeMap::new(),
            })
            .collect();
        let s = summarise(&rows, &["psnr_db".into()]);
        assert_eq!(s.len(), 1);
        assert!((s[0].mean - 2.0).abs() < 1e-12);
        assert!((s[0].std - 1.0).abs() < 1e-12);
        assert!((s[0].ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-9);
    }
}
