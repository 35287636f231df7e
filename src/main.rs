//! `dataflow`: run, validate and draw streaming graphs of image semantic-communication stages.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dataflow_engine::{GraphSource, Override, Registry, RunOptions};
use dataflow_monitoring::LogFormat;

mod bandwidth;
mod doctor;
mod link_watch;
mod report;
mod stats;
mod sweep;

#[derive(Parser)]
#[command(
    name = "dataflow",
    version,
    about = "Actor-based streaming dataflow engine for image semantic communication"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `text` or `json`.
    #[arg(long, global = true, default_value = "text")]
    log_format: LogFormat,
    /// More log detail (-v debug, -vv trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Dot,
    Mermaid,
}

#[derive(clap::Args, Clone, Default)]
struct OverrideArgs {
    /// Override a key: `stage.<id>.<key>=<value>`, `channel.snr_db=3`, `graph.seed=1`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Channel SNR in dB for every channel stage (short for `--set channel.snr_db=DB`).
    #[arg(long, value_name = "DB", allow_hyphen_values = true)]
    snr: Option<f64>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a graph until its sources end (or Ctrl-C), then print a summary.
    ///
    /// Exit codes: 0 every frame went through; 1 invalid graph or the run could not
    /// start; 2 frames failed (errors.jsonl) or an error stopped the run; 3 summary.json
    /// or errors.jsonl could not be written; 130 stopped by Ctrl-C.
    Run(RunArgs),
    /// Check graph files and report every error at once (exit 1 on errors).
    Validate {
        /// Graph files.
        #[arg(required = true)]
        graphs: Vec<PathBuf>,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Print a graph as Graphviz dot or Mermaid.
    Graph {
        /// The graph file.
        graph: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Dot)]
        format: Format,
    },
    /// Print the JSON Schema of graph files (for editor completion).
    Schema,
    /// List the stage kinds.
    Kinds,
    /// Run graphs at every SNR and seed on the same images; write CSVs, plots and index.html.
    ///
    /// Output: results.csv (a row per system, SNR, seed and image), summary.csv (mean,
    /// clipped 95 % CI, n and seeds per point), paired.csv (each system minus the
    /// reference), plots/ and index.html. Run the same command again to resume.
    Sweep {
        /// Graph files (each needs a `csv_sink` after `evaluate`).
        #[arg(required = true)]
        graphs: Vec<PathBuf>,
        /// SNR points: START:STOP:STEP (0:20:3), a list (0,5,10) or one value.
        #[arg(long, default_value = "0:20:3", allow_hyphen_values = true)]
        snr: String,
        /// Seeds per SNR (1..=N, set as the graph seed); with --until-ci or --min-errors,
        /// the least number of seeds per point.
        #[arg(long, default_value_t = 3)]
        seeds: u32,
        /// Images to use instead of each graph's `image_dir` folder.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Output folder; run the same command again to resume an interrupted sweep.
        #[arg(long)]
        out: PathBuf,
        /// Extra overrides for every run, e.g. `stage.link.codec=jpeg`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Make a system of each value of a key, e.g. `stage.reconstruct.ip_scale=0.2,0.5,0.8`
        /// or `stage.correct.model=symspell,noisy_channel` (any `--set` key; repeat the flag
        /// for a grid). A `stage.<id>.` key varies the graphs that have that stage; the
        /// systems are named `graph[id.key=value]` in the CSVs, tables and plots.
        #[arg(long, value_name = "KEY=V1,V2,...")]
        vary: Vec<String>,
        /// Add seeds at each point until the 95 % Student-t CI half-width of METRIC over
        /// images × seeds is below HALFWIDTH (e.g. `wer=0.02`), up to --max-seeds.
        #[arg(long, value_name = "METRIC=HALFWIDTH")]
        until_ci: Option<String>,
        /// Add seeds at each point until N bit errors (`ber` × `bits_sent`; `N` or
        /// `bits=N`) or N failed LDPC code blocks (`blocks=N`) were seen, up to --max-seeds.
        #[arg(long, value_name = "N|bits=N|blocks=N")]
        min_errors: Option<String>,
        /// The most seeds a point takes with --until-ci or --min-errors.
        #[arg(long, default_value_t = 20)]
        max_seeds: u32,
        /// Size every codec baseline's byte budget (`codec_channel` `bpp`) so its channel
        /// uses per image are within 5 % of this system's (its name, e.g. `multisc-lite`),
        /// measured by its run at the first SNR with seed 1.
        #[arg(long, value_name = "SYSTEM")]
        match_bandwidth: Option<String>,
        /// The system paired differences are taken against (default: the first).
        #[arg(long, value_name = "SYSTEM")]
        reference: Option<String>,
    },
    /// Check the set-up: ONNX Runtime, GPU, assets, and per tier and graph what is missing with the
    /// command that brings it. Exit 0 when the main job (`make run`) can run, 1 when not.
    Doctor {
        /// Graph files to check (default: every file in graphs/).
        graphs: Vec<PathBuf>,
    },
    /// Models and data files of the offline tier.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Live view of a running pipeline: rate, queue, utilization and errors per stage.
    Top {
        /// The metrics endpoint of `dataflow run`.
        #[arg(default_value = dataflow_monitoring::DEFAULT_LISTEN)]
        addr: String,
        /// Print one table and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
}

/// Arguments of `dataflow run`.
#[derive(clap::Args)]
struct RunArgs {
    /// The graph file.
    graph: PathBuf,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Folder every sink writes under (default runs/<graph>-<time>/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Prometheus endpoint address, or `off` (default: the graph's [metrics] listen, else 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR|off")]
    metrics: Option<String>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Seconds a drain after Ctrl-C may take before the run is aborted.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Keep serving the metrics this many seconds after the run ends (so a short run can be scraped).
    #[arg(long, default_value_t = 0.0)]
    linger: f64,
    /// Run only the stages placed on this machine (`machine = "..."`), or on the pool
    /// it is a member of; edges to other machines go over zenoh. Without it, a placed
    /// graph runs whole here.
    #[arg(long, value_name = "NAME")]
    machine: Option<String>,
    /// With --machine: run the stages of this pool as one of its members (a machine the
    /// pool lists, or, when the pool has `min`/`max`, any machine that joins at run time).
    #[arg(long, value_name = "NAME", requires = "machine")]
    pool: Option<String>,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Every asset with its source package, licence and state.
    List,
}

fn registry() -> Registry {
    dataflow_actors::registry()
}

fn overrides(args: &OverrideArgs, src_text: Option<&toml::Table>, registry: &Registry) -> Result<Vec<Override>> {
    let mut out = Vec::new();
    for s in &args.set {
        out.push(Override::parse(s).map_err(anyhow::Error::msg)?);
    }
    if let Some(db) = args.snr {
        out.push(Override {
            path: vec!["channel".into(), "snr_db".into()],
            value: toml::Value::Float(db),
        });
        // Channel stages that set their own SNR follow --snr too.
        if let Some(stages) = src_text.and_then(|t| t.get("stage")).and_then(|s| s.as_table()) {
            for (id, st) in stages {
                let kind = st.get("kind").and_then(|k| k.as_str()).and_then(|k| registry.get(k));
                if kind.is_some_and(|k| k.channel()) && st.get("snr_db").is_some() {
                    out.push(Override {
                        path: vec!["stage".into(), id.clone(), "snr_db".into()],
                        value: toml::Value::Float(db),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn load(path: &Path, args: &OverrideArgs, registry: &Registry) -> Result<GraphSource, String> {
    let raw: Option<toml::Table> = std::fs::read_to_string(path).ok().and_then(|t| toml::from_str(&t).ok());
    let ov = overrides(args, raw.as_ref(), registry).map_err(|e| e.to_string())?;
    GraphSource::load(path, &ov).map_err(|d| d.to_string())
}

fn default_out(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    PathBuf::from("runs").join(format!(
        "{name}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    ))
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dataflow=info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    // Refused TLS peers are counted whatever RUST_LOG says (link_watch.rs).
    let refusals = tracing_subscriber::filter::Targets::new().with_target("zenoh_link_tls", tracing::Level::WARN);
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(link_watch::layer().with_filter(refusals))
        .init();
}

/// Colour escapes only on a terminal, and never when `NO_COLOR` is set to anything
/// non-empty (no-color.org), so `dataflow run ... 2>log` writes plain text.
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let registry = registry();
    match cli.command {
        Command::Validate { graphs, overrides } => {
            let mut bad = 0;
            for g in &graphs {
                match load(g, &overrides, &registry)
                    .and_then(|src| dataflow_engine::plan(&src, &registry).map_err(|d| d.to_string()))
                {
                    Ok(p) => match p
                        .machines
                        .keys()
                        .map(|m| dataflow_actors::zenoh_link::check_config(&p, m))
                        .find_map(Result::err)
                    {
                        None => println!("{}: ok ({} stages)", g.display(), p.stages.len()),
                        Some(e) => {
                            bad += 1;
                            eprintln!("{e}");
                        }
                    },
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}");
                    }
                }
            }
            Ok(if bad > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Graph { graph, format } => {
            let src = load(&graph, &OverrideArgs::default(), &registry).map_err(anyhow::Error::msg)?;
            let plan = dataflow_engine::plan(&src, &registry).map_err(|d| anyhow::anyhow!("{d}"))?;
            match format {
                Format::Dot => print!("{}", dataflow_engine::render::dot(&plan)),
                Format::Mermaid => print!("{}", dataflow_engine::render::mermaid(&plan)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&dataflow_engine::render::schema(&registry))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { graphs } => Ok(doctor::doctor(&graphs, &registry)),
        Command::Models {
            command: ModelsCommand::List,
        } => {
            models_list();
            Ok(ExitCode::SUCCESS)
        }
        Command::Top { addr, once, interval } => {
            let opts = dataflow_monitoring::top::TopOptions {
                endpoint: addr,
                interval: Duration::from_secs_f64(interval.max(0.1)),
                once,
            };
            dataflow_monitoring::top::run(&opts, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep {
            graphs,
            snr,
            seeds,
            images,
            out,
            set,
            vary,
            until_ci,
            min_errors,
            max_seeds,
            match_bandwidth,
            reference,
        } => {
            for g in &graphs {
                let src = load(g, &OverrideArgs::default(), &registry).map_err(|e| anyhow::anyhow!(e))?;
                dataflow_engine::plan(&src, &registry).map_err(|d| anyhow::anyhow!("{d}"))?;
            }
            let msg = anyhow::Error::msg;
            let (min_bit_errors, min_block_errors) = match min_errors {
                Some(m) => sweep::parse_min_errors(&m).map_err(msg)?,
                None => (None, None),
            };
            sweep::sweep(&sweep::SweepArgs {
                graphs,
                snrs: sweep::parse_snrs(&snr).map_err(msg)?,
                seeds,
                images,
                out,
                set,
                vary: vary
                    .iter()
                    .map(|v| sweep::parse_vary(v))
                    .collect::<Result<_, _>>()
                    .map_err(msg)?,
                stop: sweep::StopRule {
                    until_ci: until_ci.map(|u| sweep::parse_until_ci(&u)).transpose().map_err(msg)?,
                    min_bit_errors,
                    min_block_errors,
                    max_seeds,
                },
                match_bandwidth,
                reference,
            })
        }
        Command::Kinds => {
            for k in registry.kinds() {
                println!(
                    "{:<16} {:<10} {}",
                    k.name(),
                    format!("{:?}", k.role()).to_lowercase(),
                    k.doc()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_command(&registry, args),
    }
}

/// `dataflow run`: validate, check resources, start the metrics endpoint, run, print
/// the summary.
fn run_command(registry: &Registry, args: RunArgs) -> Result<ExitCode> {
    let RunArgs {
        graph,
        overrides,
        out,
        metrics,
        no_progress,
        drain_timeout,
        linger,
        machine,
        pool,
    } = args;
    let src = match load(&graph, &overrides, registry) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let plan = match dataflow_engine::plan(&src, registry) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("{d}");
            return Ok(ExitCode::from(1));
        }
    };
    // Metrics before any socket of the links: a peer refused by this machine's TLS
    // endpoint is counted (link_watch.rs) from the moment the endpoint listens.
    let listen = metrics
        .or_else(|| plan.metrics_listen.clone())
        .unwrap_or_else(|| dataflow_monitoring::DEFAULT_LISTEN.to_string());
    if !start_metrics(&listen) {
        return Ok(ExitCode::from(1));
    }
    let stop = dataflow_engine::StopFlag::default();
    let (plan, bridges) = match &machine {
        None => {
            if plan.is_distributed() && plan.pools.is_empty() {
                eprintln!(
                    "note: {} places stages on machines; running every stage in this process (pass --machine NAME to run one machine's part)",
                    graph.display()
                );
            } else if plan.is_distributed() {
                eprintln!(
                    "note: {} places stages on machines and pools ({}); running every stage in this process, each pool's stages once (pass --machine NAME [--pool POOL] to run one machine's part)",
                    graph.display(),
                    plan.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            (plan, None)
        }
        Some(m) => {
            // Check the cut before opening any socket.
            let at = dataflow_engine::Placement {
                machine: m.clone(),
                pool: pool.clone(),
            };
            if let Err(e) = plan.check_machine(&at) {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(1));
            }
            let bridges = match dataflow_actors::zenoh_link::ZenohBridges::open(&plan, m, stop.clone()) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            match plan.partition(&at, &bridges) {
                Ok(p) => (p, Some(bridges)),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
    };
    let out_dir = out.unwrap_or_else(|| match &machine {
        Some(m) => default_out(&format!("{}-{m}", plan.name)),
        None => default_out(&plan.name),
    });
    if let Err(d) = dataflow_engine::plan::check_resources(&plan, &out_dir) {
        eprintln!("{d}");
        return Ok(ExitCode::from(1));
    }
    let mut opts = RunOptions::new(out_dir.clone());
    opts.stop = stop;
    opts.progress = !no_progress;
    opts.drain_timeout = Duration::from_secs_f64(drain_timeout.max(0.0));
    let summary = execute(&plan, opts)?;
    if let Some(b) = bridges {
        // The receivers' last acknowledgements, then the session.
        b.close(Duration::from_secs(2));
    }
    // The engine wrote summary.json; a failed write is in `unwritten`, shown by
    // `render` and turned into exit code 3 (see README, "Exit codes").
    eprint!("{}", summary.render());
    if linger > 0.0 {
        eprintln!("serving metrics for {linger} s more (--linger)");
        std::thread::sleep(Duration::from_secs_f64(linger));
    }
    Ok(ExitCode::from(summary.exit_code()))
}

/// Serves the metrics on `listen` unless it is `off`; `false` (after saying why) when
/// the endpoint cannot be opened.
fn start_metrics(listen: &str) -> bool {
    if listen == "off" {
        return true;
    }
    match dataflow_monitoring::install_exporter(listen) {
        Ok(addr) => {
            dataflow_monitoring::describe_all();
            eprintln!("metrics: http://{addr}/metrics (watch with `dataflow top {addr}`)");
            true
        }
        Err(e) => {
            eprintln!(
                "error: metrics endpoint: {e}\n  help: pass --metrics ADDR (e.g. 127.0.0.1:0 for any free port) or --metrics off"
            );
            false
        }
    }
}

/// Runs `plan` on a runtime of its own. The binary, not the engine, owns Ctrl-C
/// (through the run's stop token) and the progress bar (from the run's events).
fn execute(plan: &dataflow_engine::Plan, mut opts: RunOptions) -> Result<dataflow_engine::RunSummary> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let ctrl_c = tokio::spawn(stop_on_ctrl_c(opts.stop.clone()));
        let progress = opts.progress.then(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            opts.events = Some(tx);
            tokio::spawn(progress_bar(rx))
        });
        let summary = dataflow_engine::run(plan, opts).await;
        ctrl_c.abort();
        if let Some(p) = progress {
            // The run has sent `Finished` (or dropped its sender): the bar is cleared.
            let _ = p.await;
        }
        summary
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Ctrl-C stops the run's sources and lets the frames in flight drain; a second one
/// aborts the run.
async fn stop_on_ctrl_c(stop: dataflow_engine::StopFlag) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("\ndataflow: stopping — sources closed, draining frames in flight (Ctrl-C again to abort)");
        stop.interrupt();
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.abort("aborted by a second Ctrl-C");
        }
    }
}

/// The progress bar on stderr, driven by the run's events; cleared when the run ends.
async fn progress_bar(mut events: tokio::sync::mpsc::UnboundedReceiver<dataflow_engine::RunEvent>) {
    use dataflow_engine::RunEvent;
    let mut bar: Option<indicatif::ProgressBar> = None;
    while let Some(event) = events.recv().await {
        match event {
            RunEvent::Started { total } => {
                let pb = indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
                let style = if total.is_some() {
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} frames  {per_sec}  ETA {eta}")
                } else {
                    indicatif::ProgressStyle::with_template("{spinner} {pos} frames  {per_sec}")
                };
                if let Ok(style) = style {
                    pb.set_style(style);
                }
                bar = Some(pb);
            }
            RunEvent::Progress { frames } => {
                if let Some(pb) = &bar {
                    pb.set_position(frames);
                }
            }
            RunEvent::Finished => break,
        }
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
}

fn models_list() {
    let statuses = dataflow_models::assets::check_assets();
    println!("{:<34} {:<9} {:<34} licence", "asset", "state", "source");
    for a in statuses {
        let state = match (a.present, a.sha256_ok) {
            (true, true) => "ok",
            (true, false) => "CORRUPT",
            (false, _) if a.optional => "optional",
            (false, _) => "MISSING",
        };
        println!("{:<34} {:<9} {:<34} {}", a.name, state, a.source, a.license);
    }
}
