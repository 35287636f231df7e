//! `dataflow sweep`: every graph at every SNR and seed on the same images, then one
//! CSV, a summary with 95 % confidence intervals, paired differences, plots and an
//! HTML report.
//!
//! # Layout of the output folder
//!
//! ```text
//! OUT/runs/<system>/snr<dB>/seed<s>/  one `dataflow run` each (its sinks, log.txt, done.json)
//! OUT/calibrate/<system>/bpp<b>/      --match-bandwidth: runs that sized a codec's budget
//! OUT/results.csv                     a row per (system, snr, seed, image), every metric
//! OUT/summary.csv                     mean, std, 95 % CI and seeds per (system, snr, metric)
//! OUT/paired.csv                      system − reference per (system, snr, metric), 95 % CI
//! OUT/bandwidth.json                  --match-bandwidth: target and the budgets chosen
//! OUT/plots/<metric>.png              metric against SNR, a line per system, CI bands
//! OUT/plots/<metric>-bandwidth.png    metric against channel uses per pixel
//! OUT/plots/<metric>-paired.png       system − reference against SNR
//! OUT/index.html                      plots, settings, tables, per-SNR grids with the texts
//! OUT/sweep.json                      the settings; a resumed sweep must match them
//! ```
//!
//! A *system* is a graph with one value of each `--vary` key that applies to it
//! (`--vary stage.correct.model=symspell,noisy_channel` makes two systems of every graph
//! with a `correct` stage, named `text-only[correct.model=symspell]` and so on).
//!
//! Each run is a child `dataflow run` process (a crash in one run cannot take the sweep
//! down, and each run gets a clean metrics registry). A run is done when its
//! `done.json` exists, so an interrupted sweep picks up at the first unfinished run;
//! a half-written run folder is cleared and run again. Every system runs on the same
//! images with the same seeds, so the comparison is paired. Channel noise is seeded by
//! the graph seed, so two sweeps with the same settings write identical CSVs.
//!
//! Seeds: `--seeds N` runs seeds 1..=N at every point. With `--until-ci METRIC=H` or
//! `--min-errors`, N is the least number of seeds, and seeds are added one at a time at
//! each point until the stopping rule holds or `--max-seeds` is reached; the decision
//! depends only on the rows, so a resumed sweep takes the same seeds.
//!
//! The sweep exits 0 when every run went through, 2 (after writing the CSVs and the
//! report) when some runs had failed frames — their `errors.jsonl` are listed — and 1
//! when a run could not finish at all. A metrics CSV whose last line was torn by a
//! killed run is read without that line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dataflow_engine::SweepRole;
use serde::{Deserialize, Serialize};

use crate::report::{ReportCell, ReportGraph};
use crate::stats::{mean_ci, snr_key, Row};

/// Columns of a run's metrics CSV that are bookkeeping or not comparable across runs.
const NOT_METRICS: &[&str] = &["frame", "part", "name", "lost_inputs"];

/// Metrics plotted when present (others are in the CSVs).
pub const PLOTTED: &[(&str, &str)] = &[
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
    ("detection_f1", "Detection F1 (reconstruction against original)"),
    ("ber", "Bit error rate (before decoding)"),
    ("image_lost", "Fraction of images lost"),
];

/// When to stop adding seeds at a point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopRule {
    /// `--until-ci METRIC=HALFWIDTH`: the 95 % CI half-width of METRIC over images × seeds.
    pub until_ci: Option<(String, f64)>,
    /// `--min-errors N`: bit errors (`ber` × `bits_sent`) seen at the point.
    pub min_bit_errors: Option<u64>,
    /// `--min-errors blocks=N`: failed code blocks (`blocks_failed`) seen at the point.
    pub min_block_errors: Option<u64>,
    /// `--max-seeds`: the most seeds a point takes.
    pub max_seeds: u32,
}

impl StopRule {
    /// Whether seeds are added until a rule holds (else every point takes `--seeds`).
    pub fn adaptive(&self) -> bool {
        self.until_ci.is_some() || self.min_bit_errors.is_some() || self.min_block_errors.is_some()
    }

    /// Whether the rows of one point (one system at one SNR) answer the question. A
    /// rule whose columns the system does not write (no `wer` in an image-only graph,
    /// no `blocks_failed` without a codec link) does not hold it back.
    fn holds(&self, rows: &[Row]) -> bool {
        let col = |c: &'static str| rows.iter().filter_map(move |r| r.metrics.get(c).copied());
        if let Some((metric, target)) = &self.until_ci {
            let v: Vec<f64> = rows
                .iter()
                .filter_map(|r| r.metrics.get(metric).copied())
                .filter(|x| x.is_finite())
                .collect();
            if !v.is_empty() {
                let (_, _, ci) = mean_ci(&v);
                // NaN (one sample) is not known yet.
                if ci.is_nan() || ci >= *target {
                    return false;
                }
            }
        }
        if let Some(n) = self.min_bit_errors {
            if col("bits_sent").any(|b| b > 0.0) {
                let errors: f64 = rows
                    .iter()
                    .map(|r| r.metrics.get("ber").unwrap_or(&0.0) * r.metrics.get("bits_sent").unwrap_or(&0.0))
                    .sum();
                if errors.round() < n as f64 {
                    return false;
                }
            }
        }
        if let Some(n) = self.min_block_errors {
            if col("blocks_failed").next().is_some() && col("blocks_failed").sum::<f64>() < n as f64 {
                return false;
            }
        }
        true
    }
}

/// Parses `--until-ci wer=0.02`.
pub fn parse_until_ci(spec: &str) -> Result<(String, f64), String> {
    let bad = || {
        format!(
            "`--until-ci {spec}`: expected METRIC=HALFWIDTH with a positive half-width, e.g. wer=0.02 or psnr_db=0.5"
        )
    };
    let (m, h) = spec.split_once('=').ok_or_else(bad)?;
    let h: f64 = h.trim().parse().map_err(|_| bad())?;
    if m.trim().is_empty() || !(h > 0.0 && h.is_finite()) {
        return Err(bad());
    }
    Ok((m.trim().to_string(), h))
}

/// Parses `--min-errors 100` (bit errors) or `--min-errors blocks=20` (failed code blocks).
pub fn parse_min_errors(spec: &str) -> Result<(Option<u64>, Option<u64>), String> {
    let bad = || format!("`--min-errors {spec}`: expected N (bit errors), bits=N or blocks=N with N ≥ 1");
    let (kind, n) = spec.split_once('=').unwrap_or(("bits", spec));
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    match kind.trim() {
        "bits" => Ok((Some(n), None)),
        "blocks" => Ok((None, Some(n))),
        _ => Err(bad()),
    }
}

/// One `--vary KEY=V1,V2,...`: each value makes its own system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vary {
    /// The `--set` key, e.g. `stage.reconstruct.ip_scale`.
    pub key: String,
    /// Its values, as `--set` would take them.
    pub values: Vec<String>,
}

/// Parses `--vary stage.reconstruct.ip_scale=0.2,0.5,0.8`.
pub fn parse_vary(spec: &str) -> Result<Vary, String> {
    let bad = || {
        format!(
            "`--vary {spec}`: expected KEY=V1,V2,... with a dotted key, e.g. stage.reconstruct.ip_scale=0.2,0.5,0.8"
        )
    };
    let (key, vals) = spec.split_once('=').ok_or_else(bad)?;
    let key = key.trim();
    let values: Vec<String> = vals.split(',').map(|v| v.trim().to_string()).collect();
    if key.split('.').count() < 2 || key.split('.').any(str::is_empty) || values.iter().any(String::is_empty) {
        return Err(bad());
    }
    let distinct: BTreeSet<&String> = values.iter().collect();
    if distinct.len() != values.len() {
        return Err(format!("`--vary {spec}`: a value is given twice"));
    }
    Ok(Vary {
        key: key.to_string(),
        values,
    })
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct SweepArgs {
    /// Graph files.
    pub graphs: Vec<PathBuf>,
    /// SNR points in dB.
    pub snrs: Vec<f64>,
    /// Seeds 1..=n (the least per point with an adaptive stop rule).
    pub seeds: u32,
    /// Images to use instead of each graph's source folder.
    pub images: Option<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    /// Extra `--set` overrides for every run.
    pub set: Vec<String>,
    /// Keys whose values make systems of their own.
    pub vary: Vec<Vary>,
    /// When to stop adding seeds.
    pub stop: StopRule,
    /// A system whose measured channel uses per image the codec baselines are sized to.
    pub match_bandwidth: Option<String>,
    /// The system paired differences are taken against (default the first).
    pub reference: Option<String>,
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
pub struct Settings {
    graphs: Vec<String>,
    snrs: Vec<f64>,
    seeds: u32,
    images: Option<String>,
    set: Vec<String>,
    #[serde(default)]
    vary: Vec<Vary>,
    #[serde(default)]
    stop: StopRule,
    #[serde(default)]
    match_bandwidth: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

/// What the sweep needs to know of a graph file.
#[derive(Debug, Clone)]
pub struct GraphInfo {
    /// The graph file.
    pub path: PathBuf,
    name: String,
    /// Image sources and their folder key, which `--images` replaces (`SweepRole::Images`).
    sources: Vec<(String, &'static str)>,
    /// The metrics CSV of the first stage writing rows (`SweepRole::Rows`), relative to the run folder.
    pub csv: PathBuf,
    /// Folder of the first stage writing the `image` field (`SweepRole::ImageFiles`): the reconstructions.
    recon_dir: Option<PathBuf>,
    /// The images of the source, when no `--images` is given.
    source_dir: Option<PathBuf>,
    /// What stands in for what (codecs of `codec_channel`, models), for the report.
    notes: Vec<String>,
    /// Every stage id.
    stage_ids: BTreeSet<String>,
    /// Stages sending at a byte budget (`SweepRole::Budget`; `--match-bandwidth` sets it).
    pub codecs: Vec<Budget>,
}

/// A stage sending at a byte budget, with its kind's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Stage id.
    pub stage: String,
    /// The kind's bits-per-pixel key.
    pub key: &'static str,
    /// The kind's noiseless-channel key.
    pub noiseless: &'static str,
    /// Bits per pixel in the graph (or the kind's default).
    pub bpp: f64,
}

impl Budget {
    /// `--set` overrides giving this stage `bpp` bits per pixel.
    pub fn set(&self, bpp: f64) -> String {
        format!("stage.{}.{}={bpp}", self.stage, self.key)
    }
}

/// What stands in for what in a graph's stages (codecs, models), as each kind describes
/// its stages (`StageKind::describe`), in stage-id order; none when the graph does not
/// validate without the sweep's overrides (the check of the systems reports it).
fn notes(path: &Path, registry: &dataflow_engine::Registry) -> Vec<String> {
    let Ok(src) = dataflow_engine::GraphSource::load(path, &[]) else {
        return Vec::new();
    };
    let Ok(plan) = dataflow_engine::plan(&src, registry) else {
        return Vec::new();
    };
    let described: BTreeMap<&str, String> = plan
        .stages
        .iter()
        .filter_map(|s| s.config.describe().map(|d| (s.id.as_str(), d)))
        .collect();
    described.into_iter().map(|(id, d)| format!("{id}: {d}")).collect()
}

/// The stages of `stages` whose kind plays a part in sweeps, with that part (the kinds
/// declare it: `StageKind::SWEEP`), in stage-id order.
fn roles<'a>(
    stages: &'a toml::Table,
    registry: &dataflow_engine::Registry,
) -> Vec<(&'a String, &'a toml::Value, SweepRole)> {
    stages
        .iter()
        .filter_map(|(id, t)| {
            let kind = t.get("kind").and_then(|k| k.as_str())?;
            let role = registry.get(kind)?.sweep();
            (role != SweepRole::None).then_some((id, t, role))
        })
        .collect()
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
    let registry = dataflow_actors::registry();
    let stages = doc.get("stage").and_then(|s| s.as_table()).cloned().unwrap_or_default();
    let roles = roles(&stages, &registry);
    let str_key = |t: &toml::Value, key: &str| t.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let sources: Vec<(String, &'static str)> = roles
        .iter()
        .filter_map(|(id, _, r)| match r {
            SweepRole::Images { key } => Some(((*id).clone(), *key)),
            _ => None,
        })
        .collect();
    let csv = roles.iter().find_map(|(id, t, r)| match r {
        SweepRole::Rows { key } => Some(
            str_key(t, key)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(format!("{id}.csv"))),
        ),
        _ => None,
    });
    let Some(csv) = csv else {
        bail!(
            "{}: a swept graph needs a `csv_sink` stage after `evaluate` (its rows are the sweep's data)",
            path.display()
        );
    };
    let recon_dir = roles.iter().find_map(|(id, t, r)| match r {
        SweepRole::ImageFiles { key, default } if str_key(t, key).as_deref().unwrap_or(default) == "image" => {
            Some(PathBuf::from(id))
        }
        _ => None,
    });
    let source_dir = sources
        .first()
        .and_then(|(id, key)| str_key(stages.get(id)?, key))
        .map(|p| {
            let p = PathBuf::from(p);
            if p.exists() {
                p
            } else {
                path.parent().unwrap_or(Path::new(".")).join(p)
            }
        });
    let codecs = roles
        .iter()
        .filter_map(|(id, t, r)| match r {
            SweepRole::Budget {
                key,
                default,
                noiseless,
            } => {
                let bpp = t
                    .get(*key)
                    .and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)));
                Some(Budget {
                    stage: (*id).clone(),
                    key,
                    noiseless,
                    bpp: bpp.unwrap_or(*default),
                })
            }
            _ => None,
        })
        .collect();
    Ok(GraphInfo {
        path: path.to_path_buf(),
        name,
        sources,
        csv,
        recon_dir,
        source_dir,
        notes: notes(path, &registry),
        stage_ids: stages.keys().cloned().collect(),
        codecs,
    })
}

/// `snr_label(3.0)` = "3", `snr_label(-2.5)` = "-2.5": folder names and CSV cells.
pub fn snr_label(s: f64) -> String {
    let r = (s * 1000.0).round() / 1000.0;
    format!("{r}")
}

/// One graph with one value of each `--vary` key that applies to it.
#[derive(Debug, Clone)]
pub struct System {
    /// The graph.
    pub info: GraphInfo,
    /// `graph` or `graph[key=value,...]`: the `graph` column of the CSVs.
    pub name: String,
    /// Its folder under `runs/` (the name with characters a path cannot hold replaced).
    pub folder: String,
    /// The `--set` overrides that make it (its `--vary` values; `--match-bandwidth` adds budgets).
    pub sets: Vec<String>,
}

/// A `--vary` key applies to a graph when it names one of its stages (`stage.<id>.…`)
/// or is not a stage key (`channel.…`, `graph.…`).
fn applies(v: &Vary, info: &GraphInfo) -> bool {
    key_applies(&v.key, info)
}

/// The stage a `stage.<id>.…` key names, if it is a stage key.
fn stage_of(key: &str) -> Option<&str> {
    key.strip_prefix("stage.").and_then(|k| k.split('.').next())
}

/// Whether an override key reaches `info`'s graph (see [`applies`]).
fn key_applies(key: &str, info: &GraphInfo) -> bool {
    stage_of(key).is_none_or(|id| info.stage_ids.contains(id))
}

/// The `--set` overrides that reach `info`'s graph: like `--vary`, a `stage.<id>.…` key is
/// given to the graphs that have that stage, so one sweep can tune a stage some of its
/// graphs lack (`--set stage.segment.replicas=2` over multisc-lite and bpg-ldpc).
fn sets_for<'a>(set: &'a [String], info: &'a GraphInfo) -> impl Iterator<Item = &'a String> {
    set.iter()
        .filter(move |o| key_applies(o.split_once('=').map_or(o.as_str(), |(k, _)| k.trim()), info))
}

/// A `--set stage.<id>.…` that no graph of the sweep has is an error, not a silent no-op.
fn check_sets_reach_a_graph(set: &[String], infos: &[GraphInfo]) -> Result<()> {
    for o in set {
        let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k.trim());
        if let Some(id) = stage_of(key) {
            if !infos.iter().any(|i| key_applies(key, i)) {
                bail!("`--set {o}`: no graph of this sweep has a stage `{id}`");
            }
        }
    }
    Ok(())
}

/// Every graph times the values of the `--vary` keys that apply to it.
fn systems(infos: &[GraphInfo], vary: &[Vary]) -> Result<Vec<System>> {
    for v in vary {
        if !infos.iter().any(|i| applies(v, i)) {
            bail!(
                "`--vary {}`: no swept graph has that stage; the key is `stage.<id>.<key>` with the id of a stage in the graph files",
                v.key
            );
        }
    }
    let mut out = Vec::new();
    for info in infos {
        let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for v in vary.iter().filter(|v| applies(v, info)) {
            let short = v.key.strip_prefix("stage.").unwrap_or(&v.key).to_string();
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    let short = short.clone();
                    v.values.iter().map(move |val| {
                        let mut c = c.clone();
                        c.push((short.clone(), format!("{}={val}", v.key)));
                        c
                    })
                })
                .collect();
        }
        for c in combos {
            let name = if c.is_empty() {
                info.name.clone()
            } else {
                let label: Vec<String> = c
                    .iter()
                    .map(|(short, set)| format!("{short}={}", set.split_once('=').map_or("", |x| x.1)))
                    .collect();
                format!("{}[{}]", info.name, label.join(","))
            };
            let folder = name
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() || "-_.=,".contains(ch) {
                        ch
                    } else {
                        '_'
                    }
                })
                .collect();
            out.push(System {
                info: info.clone(),
                name,
                folder,
                sets: c.into_iter().map(|(_, set)| set).collect(),
            });
        }
    }
    Ok(out)
}

/// Checks that every system's graph, with its overrides, would run (a `--vary` value a
/// stage does not take is reported before any run starts).
fn check_systems(systems: &[System], set: &[String]) -> Result<()> {
    let registry = dataflow_actors::registry();
    for s in systems {
        let overrides = sets_for(set, &s.info)
            .chain(&s.sets)
            .map(|o| dataflow_engine::Override::parse(o).map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        let src = dataflow_engine::GraphSource::load(&s.info.path, &overrides)
            .map_err(|d| anyhow::anyhow!("system `{}`: {d}", s.name))?;
        dataflow_engine::plan(&src, &registry).map_err(|d| anyhow::anyhow!("system `{}`: {d}", s.name))?;
    }
    Ok(())
}

/// Starts runs and remembers how they went.
pub struct Runner<'a> {
    exe: PathBuf,
    args: &'a SweepArgs,
    /// Runs started or found done.
    pub count: usize,
    /// Runs found done (a resumed sweep).
    pub skipped: usize,
    /// Runs whose frames partly failed (exit 2): the sweep's data lacks their rows.
    pub failed: Vec<PathBuf>,
    /// Run folders already counted.
    seen: BTreeSet<PathBuf>,
}

impl<'a> Runner<'a> {
    fn new(args: &'a SweepArgs) -> Result<Self> {
        Ok(Runner {
            exe: std::env::current_exe().context("finding the dataflow executable")?,
            args,
            count: 0,
            skipped: 0,
            failed: Vec::new(),
            seen: BTreeSet::new(),
        })
    }

    /// The sweep's output folder.
    pub fn out(&self) -> &Path {
        &self.args.out
    }

    /// The first SNR of the sweep (where `--match-bandwidth` measures).
    pub fn first_snr(&self) -> f64 {
        self.args.snrs[0]
    }

    /// Runs `sys` at `snr` with `seed` into `dir` unless a finished run is there, with
    /// `extra` overrides after the system's; returns its rows.
    pub fn ensure(&mut self, sys: &System, snr: f64, seed: u32, dir: &Path, extra: &[String]) -> Result<Vec<Row>> {
        if !self.seen.insert(dir.to_path_buf()) {
            return read_run(sys, snr, seed, dir);
        }
        self.count += 1;
        if dir.join("done.json").is_file() {
            self.skipped += 1;
            if done_code(dir) == Some(2) {
                self.failed.push(dir.to_path_buf());
            }
            return read_run(sys, snr, seed, dir);
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing the unfinished run {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
        let t = Instant::now();
        let what = if extra.is_empty() { "" } else { " (sizing its budget)" };
        eprint!(
            "[{}] {}{what} snr={} seed={seed} ... ",
            self.count,
            sys.name,
            snr_label(snr)
        );
        let code = run_one(&self.exe, sys, snr, seed, self.args, dir, extra)?;
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
            self.failed.push(dir.to_path_buf());
        }
        read_run(sys, snr, seed, dir)
    }
}

/// Runs the sweep; returns the process exit code.
pub fn sweep(args: &SweepArgs) -> Result<ExitCode> {
    let (settings, mut systems) = prepare(args)?;
    let started = Instant::now();
    let mut runner = Runner::new(args)?;
    let bandwidth = match &args.match_bandwidth {
        Some(target) => Some(crate::bandwidth::match_bandwidth(&mut runner, &mut systems, target)?),
        None => None,
    };
    let mut rows = Vec::new();
    let mut seeds: BTreeMap<(String, i64), u32> = BTreeMap::new();
    for sys in &systems {
        for &snr in &args.snrs {
            let mut point = Vec::new();
            let mut seed = 0;
            loop {
                seed += 1;
                let dir = run_dir(&args.out, &sys.folder, snr, seed);
                point.extend(runner.ensure(sys, snr, seed, &dir, &[])?);
                let enough = seed >= args.seeds
                    && (!args.stop.adaptive() || seed >= args.stop.max_seeds || args.stop.holds(&point));
                if enough {
                    break;
                }
            }
            if args.stop.adaptive() {
                eprintln!("{} at {} dB: {seed} seeds", sys.name, snr_label(snr));
            }
            seeds.insert((sys.name.clone(), snr_key(snr)), seed);
            rows.extend(point);
        }
    }
    if runner.skipped > 0 {
        eprintln!("resumed: {} of {} runs were already done", runner.skipped, runner.count);
    }
    if rows.is_empty() {
        bail!(
            "the runs wrote no rows; check {}/runs/*/*/*/log.txt",
            args.out.display()
        );
    }
    rows.sort_by(|a, b| {
        a.graph
            .cmp(&b.graph)
            .then(a.snr.total_cmp(&b.snr))
            .then(a.seed.cmp(&b.seed))
            .then(a.image.cmp(&b.image))
    });
    write_outputs(args, &settings, &systems, &rows, &seeds, bandwidth.as_ref())?;
    eprintln!(
        "sweep: {} rows, {} runs in {:.0} s; {}",
        rows.len(),
        runner.count,
        started.elapsed().as_secs_f64(),
        args.out.join("index.html").display()
    );
    if runner.failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: {} of {} runs had failed frames, so their rows are missing from the results:",
        runner.failed.len(),
        runner.count
    );
    for d in &runner.failed {
        eprintln!("  {}", d.join("errors.jsonl").display());
    }
    eprintln!("  fix what they report, delete those run folders and run the same sweep again (finished runs are kept)");
    Ok(ExitCode::from(2))
}

/// Checks the arguments, reads the graphs, makes the systems and writes (or checks) `sweep.json`.
fn prepare(args: &SweepArgs) -> Result<(Settings, Vec<System>)> {
    if args.graphs.is_empty() {
        bail!("give at least one graph file");
    }
    if args.seeds == 0 {
        bail!("`--seeds` must be at least 1");
    }
    if args.stop.adaptive() && args.stop.max_seeds < args.seeds {
        bail!(
            "`--max-seeds {}` is below `--seeds {}` (the least seeds a point takes)",
            args.stop.max_seeds,
            args.seeds
        );
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
    check_sets_reach_a_graph(&args.set, &infos)?;
    let systems = systems(&infos, &args.vary)?;
    check_systems(&systems, &args.set)?;
    if let Some(r) = &args.reference {
        if !systems.iter().any(|s| &s.name == r) {
            let all: Vec<&str> = systems.iter().map(|s| s.name.as_str()).collect();
            bail!("`--reference {r}`: no such system; the systems are {}", all.join(", "));
        }
    }
    let settings = settings(&infos, args);
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
    Ok((settings, systems))
}

fn settings(infos: &[GraphInfo], args: &SweepArgs) -> Settings {
    Settings {
        graphs: infos.iter().map(|i| i.path.display().to_string()).collect(),
        snrs: args.snrs.clone(),
        seeds: args.seeds,
        images: args.images.as_ref().map(|p| p.display().to_string()),
        set: args.set.clone(),
        vary: args.vary.clone(),
        stop: if args.stop.adaptive() {
            args.stop.clone()
        } else {
            StopRule::default()
        },
        match_bandwidth: args.match_bandwidth.clone(),
        reference: args.reference.clone(),
    }
}

/// results.csv, summary.csv, paired.csv, the plots and index.html.
fn write_outputs(
    args: &SweepArgs,
    settings: &Settings,
    systems: &[System],
    rows: &[Row],
    seeds: &BTreeMap<(String, i64), u32>,
    bandwidth: Option<&crate::bandwidth::Matched>,
) -> Result<()> {
    let metrics = write_results(&args.out.join("results.csv"), rows)?;
    let summary = crate::stats::summarise(rows, &metrics, seeds);
    write_summary(&args.out.join("summary.csv"), &summary)?;
    let reference = args
        .reference
        .clone()
        .unwrap_or_else(|| systems.first().map(|s| s.name.clone()).unwrap_or_default());
    let paired = crate::stats::paired(rows, &metrics, &reference);
    write_paired(&args.out.join("paired.csv"), &paired)?;
    let plots = crate::report::plots(&args.out.join("plots"), &summary, &paired, PLOTTED)?;
    crate::report::html(&crate::report::Report {
        out: &args.out,
        settings,
        graphs: &report_graphs(systems, args),
        cells: &report_cells(rows),
        plots: &plots,
        summary: &summary,
        paired: &paired,
        reference: &reference,
        bandwidth,
    })
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

fn run_dir(out: &Path, folder: &str, snr: f64, seed: u32) -> PathBuf {
    out.join("runs")
        .join(folder)
        .join(format!("snr{}", snr_label(snr)))
        .join(format!("seed{seed}"))
}

fn run_one(
    exe: &Path,
    sys: &System,
    snr: f64,
    seed: u32,
    args: &SweepArgs,
    dir: &Path,
    extra: &[String],
) -> Result<i32> {
    let info = &sys.info;
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg(&info.path).arg("--snr").arg(snr_label(snr));
    cmd.arg("--set").arg(format!("graph.seed={seed}"));
    if let Some(images) = &args.images {
        let abs = std::fs::canonicalize(images).unwrap_or_else(|_| images.clone());
        for (s, key) in &info.sources {
            cmd.arg("--set").arg(format!("stage.{s}.{key}={}", abs.display()));
        }
    }
    for s in sets_for(&args.set, info).chain(&sys.sets).chain(extra) {
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
            "the run of system `{}` ({}) at {} dB, seed {seed} failed (exit {}); its log is {}. Fix it and run the same sweep again: finished runs are kept",
            sys.name,
            info.path.display(),
            snr_label(snr),
            other.map(|c| c.to_string()).unwrap_or_else(|| "by signal".into()),
            dir.join("log.txt").display()
        ),
    }
}

/// The rows of one finished run's metrics CSV.
fn read_run(sys: &System, snr: f64, seed: u32, dir: &Path) -> Result<Vec<Row>> {
    let file = dir.join(&sys.info.csv);
    let mut rdr = match complete_lines(&file) {
        Ok(bytes) => csv::Reader::from_reader(std::io::Cursor::new(bytes)),
        Err(e) => bail!(
            "{}: {e} (the run wrote no metrics; see {})",
            file.display(),
            dir.join("log.txt").display()
        ),
    };
    let headers = rdr.headers()?.clone();
    let mut rows = Vec::new();
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
            graph: sys.name.clone(),
            snr,
            seed,
            image,
            metrics,
            texts,
        });
    }
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

/// A number for a CSV cell: empty when NaN (no interval with one sample).
fn cell(v: f64) -> String {
    if v.is_nan() {
        String::new()
    } else {
        format!("{v:.6}")
    }
}

fn write_summary(path: &Path, summary: &[crate::stats::Summary]) -> Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    w.write_record([
        "graph",
        "snr_db",
        "metric",
        "n",
        "seeds",
        "mean",
        "std",
        "ci95_low",
        "ci95_high",
    ])?;
    for s in summary {
        w.write_record([
            s.graph.clone(),
            snr_label(s.snr),
            s.metric.clone(),
            s.n.to_string(),
            s.seeds.to_string(),
            cell(s.mean),
            cell(s.std),
            cell(s.low),
            cell(s.high),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn write_paired(path: &Path, paired: &[crate::stats::Paired]) -> Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    w.write_record([
        "graph",
        "reference",
        "snr_db",
        "metric",
        "n",
        "mean_diff",
        "ci95_low",
        "ci95_high",
    ])?;
    for p in paired {
        w.write_record([
            p.graph.clone(),
            p.reference.clone(),
            snr_label(p.snr),
            p.metric.clone(),
            p.n.to_string(),
            cell(p.mean),
            cell(p.low),
            cell(p.high),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn report_graphs(systems: &[System], args: &SweepArgs) -> Vec<ReportGraph> {
    systems
        .iter()
        .map(|s| {
            let i = &s.info;
            let mut notes = i.notes.clone();
            notes.extend(s.sets.iter().map(|x| format!("--set {x}")));
            ReportGraph {
                name: s.name.clone(),
                path: i.path.display().to_string(),
                originals: args.images.clone().or_else(|| i.source_dir.clone()),
                notes,
                recon: args
                    .snrs
                    .iter()
                    .filter_map(|&snr| {
                        i.recon_dir
                            .as_ref()
                            .map(|d| (snr_label(snr), run_dir(&args.out, &s.folder, snr, 1).join(d)))
                    })
                    .collect(),
            }
        })
        .collect()
}

fn report_cells(rows: &[Row]) -> Vec<ReportCell> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The sources, rows, reconstructions, budgets and notes of a graph come from what its
    /// kinds declare (`StageKind::SWEEP`, `StageKind::describe`), not from kind names.
    #[test]
    fn what_a_sweep_knows_of_a_graph_its_kinds_declare() {
        let codec = graph_info(Path::new("graphs/bpg-ldpc.toml")).unwrap();
        assert_eq!(codec.sources, [("source".to_string(), "path")]);
        assert_eq!(codec.csv, PathBuf::from("metrics.csv"));
        assert_eq!(codec.recon_dir, Some(PathBuf::from("reconstructions")));
        assert_eq!(
            codec.codecs,
            [Budget {
                stage: "link".into(),
                key: "bpp",
                noiseless: "ideal",
                bpp: 0.1
            }]
        );
        assert_eq!(codec.codecs[0].set(0.25), "stage.link.bpp=0.25");
        assert_eq!(
            codec.notes,
            ["link: HEVC intra (x265) in HEIF via heif-enc (libheif), standing in for BPG + 5G NR LDPC"]
        );
        let jscc = graph_info(Path::new("graphs/deep-jscc.toml")).unwrap();
        assert!(jscc.codecs.is_empty());
        assert_eq!(jscc.notes, ["jscc: deep JSCC (../models/weights/deep_jscc/snr10)"]);
        let lite = graph_info(Path::new("graphs/multisc-lite.toml")).unwrap();
        assert_eq!(
            lite.notes,
            [
                "caption: attributes",
                "correct: noisy_channel",
                "reconstruct: composite",
                "segment: isnet"
            ]
        );
        let registry = dataflow_actors::registry();
        let stages: toml::Table = toml::from_str("[a]\nkind = \"null_sink\"\n[b]\nkind = \"nope\"\n").unwrap();
        assert!(
            roles(&stages, &registry).is_empty(),
            "a kind without a part, or unknown, plays none"
        );
    }

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
    fn stop_rule_flags_parse() {
        assert_eq!(parse_until_ci("wer=0.02").unwrap(), ("wer".to_string(), 0.02));
        assert!(parse_until_ci("wer").is_err());
        assert!(parse_until_ci("wer=0").is_err());
        assert!(parse_until_ci("=0.1").is_err());
        assert_eq!(parse_min_errors("100").unwrap(), (Some(100), None));
        assert_eq!(parse_min_errors("blocks=20").unwrap(), (None, Some(20)));
        assert!(parse_min_errors("0").is_err());
        assert!(parse_min_errors("frames=3").is_err());
        let v = parse_vary("stage.reconstruct.ip_scale=0.2, 0.5,0.8").unwrap();
        assert_eq!(v.key, "stage.reconstruct.ip_scale");
        assert_eq!(v.values, ["0.2", "0.5", "0.8"]);
        assert!(parse_vary("ip_scale=0.2").is_err());
        assert!(parse_vary("stage.r.ip_scale=0.2,,0.5").is_err());
        assert!(parse_vary("stage.r.ip_scale=0.2,0.2").is_err());
    }

    fn row(metrics: &[(&str, f64)]) -> Row {
        Row {
            graph: "g".into(),
            snr: 0.0,
            seed: 1,
            image: "a".into(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            texts: BTreeMap::new(),
        }
    }

    #[test]
    fn a_point_stops_when_its_rule_holds() {
        let rule = StopRule {
            until_ci: Some(("wer".into(), 0.05)),
            max_seeds: 20,
            ..StopRule::default()
        };
        assert!(!rule.holds(&[row(&[("wer", 0.1)]), row(&[("wer", 0.5)])]));
        assert!(rule.holds(&[row(&[("wer", 0.0)]), row(&[("wer", 0.0)])]));
        // One sample has no interval: not known yet.
        assert!(!rule.holds(&[row(&[("wer", 0.0)])]));
        // A system without the metric is not held back by it.
        assert!(rule.holds(&[row(&[("psnr_db", 20.0)])]));
        let bits = StopRule {
            min_bit_errors: Some(10),
            max_seeds: 20,
            ..StopRule::default()
        };
        assert!(!bits.holds(&[row(&[("ber", 0.01), ("bits_sent", 500.0)])]));
        assert!(bits.holds(&[row(&[("ber", 0.01), ("bits_sent", 1000.0)])]));
    }
}
