//! Metrics: a real Prometheus scrapes `dataflow run` and the series are queried back.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use dataflow_monitoring::promtest::Prometheus;

use crate::support::bin;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn value(p: &Prometheus, q: &str) -> Vec<(String, f64)> {
    p.query(q)
        .unwrap()
        .into_iter()
        .map(|v| {
            (
                v.labels
                    .get("stage")
                    .or(v.labels.get("to"))
                    .cloned()
                    .unwrap_or_default(),
                v.value,
            )
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_stage_edge_and_latency_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        r#"[graph]
name = "promtest"
[stage.src]
kind = "synthetic"
frames = 120
rate = 60
[stage.work]
kind = "delay"
inputs = ["src"]
ms = 5
[stage.sink]
kind = "null_sink"
inputs = ["work"]
"#,
    )
    .unwrap();
    let addr = free_addr();
    let mut child = Command::new(bin())
        .arg("run")
        .arg(&g)
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(["--no-progress", "--linger", "30", "--metrics", &addr.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prom = Prometheus::start(addr).expect("start prometheus (scripts/setup-system installs it)");
    // Every stage reports its messages; the counts reach the frames the run processed.
    let done = prom.wait_for(
        "dataflow_stage_messages_received_total{stage=\"sink\"} == 120",
        Duration::from_secs(40),
    );
    let _ = child.kill();
    let _ = child.wait();
    done.expect("the sink's count reached 120 in Prometheus");
    let sent = value(&prom, "dataflow_stage_messages_sent_total");
    println!("sent: {sent:?}");
    for (stage, expect) in [("src", 120.0), ("work", 120.0)] {
        let got = sent.iter().find(|(s, _)| s == stage).map(|(_, v)| *v);
        assert_eq!(got, Some(expect), "messages sent by {stage}");
    }
    let received = value(&prom, "dataflow_stage_messages_received_total");
    assert_eq!(received.iter().find(|(s, _)| s == "work").map(|(_, v)| *v), Some(120.0));
    // The delay stage sleeps 5 ms per frame: its median processing time says so.
    let p50 = value(
        &prom,
        "histogram_quantile(0.5, sum by (le, stage) (dataflow_stage_processing_seconds_bucket{stage=\"work\"}))",
    );
    println!("p50 processing of work: {p50:?}");
    let q = p50.first().map(|(_, v)| *v).expect("a processing-time quantile");
    assert!((0.004..0.05).contains(&q), "p50 of a 5 ms stage was {q} s");
    let depth = value(&prom, "dataflow_edge_queue_depth");
    println!("edge depth: {depth:?}");
    assert!(
        depth.iter().any(|(to, _)| to == "work"),
        "an edge depth series into `work`"
    );
    assert!(depth.iter().all(|(_, v)| (0.0..=4.0).contains(v)));
    let cap = value(&prom, "dataflow_edge_capacity");
    assert!(cap.iter().all(|(_, v)| *v == 4.0), "{cap:?}");
    let lat = value(&prom, "dataflow_pipeline_latency_seconds_count");
    assert_eq!(
        lat.first().map(|(_, v)| *v),
        Some(120.0),
        "one latency sample per frame at the sink"
    );
}

#[test]
fn metrics_bind_loopback_by_default_and_a_bad_address_fails_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        "[metrics]\nlisten = \"not-an-address\"\n[stage.src]\nkind = \"synthetic\"\nframes = 1\n[stage.sink]\nkind = \"null_sink\"\ninputs = [\"src\"]\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(bin())
        .arg("run")
        .arg(&g)
        .arg("--out")
        .arg(&out_dir)
        .arg("--no-progress")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not-an-address"), "{err}");
    assert!(err.contains("--metrics off"), "{err}");
    assert!(!out_dir.join("summary.json").exists(), "nothing ran");
    // Without [metrics], the endpoint is on loopback.
    let g2 = dir.path().join("g2.toml");
    std::fs::write(
        &g2,
        "[stage.src]\nkind = \"synthetic\"\nframes = 1\n[stage.sink]\nkind = \"null_sink\"\ninputs = [\"src\"]\n",
    )
    .unwrap();
    let addr = free_addr();
    let out = Command::new(bin())
        .arg("run")
        .arg(&g2)
        .arg("--out")
        .arg(dir.path().join("o2"))
        .args(["--no-progress", "--metrics", &addr.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("metrics: http://{addr}/metrics")), "{err}");
    assert!(dataflow_monitoring::DEFAULT_LISTEN.starts_with("127.0.0.1:"));
}

/// The component spec of monitoring/SPEC.md, checked for the engine-provided metrics of
/// every role: each stage of a small graph emits what the spec requires.
#[test]
fn every_stage_emits_the_metrics_of_the_spec() {
    use dataflow_monitoring::spec::{missing_stage_metrics, StageRole};
    let handle = dataflow_monitoring::install_recorder().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = crate::support::run_text(
        r#"
[stage.src]
kind = "synthetic"
frames = 20
[stage.pass]
kind = "passthrough"
inputs = ["src"]
[stage.slow]
kind = "delay"
inputs = ["pass"]
ms = 1
replicas = 2
[stage.sink]
kind = "csv_sink"
inputs = ["slow"]
"#,
        dir.path(),
    );
    assert_eq!(s.frames_in, 20);
    let samples = dataflow_monitoring::top::parse_exposition(&handle.render()).unwrap();
    for (stage, role) in [
        ("src", StageRole::Source),
        ("pass", StageRole::Transform),
        ("slow", StageRole::Transform),
        ("sink", StageRole::Sink),
    ] {
        let missing = missing_stage_metrics(&samples, stage, role);
        assert!(missing.is_empty(), "stage {stage} misses {missing:?}");
    }
    let sent = samples
        .iter()
        .find(|x| x.name == "dataflow_stage_messages_sent_total" && x.label("stage") == Some("slow"))
        .map(|x| x.value);
    assert_eq!(sent, Some(20.0));
}

/// Issue 20: the model stages count the bytes their decode steps move between host and
/// provider memory. LLaVA captions and BART corrects the tiny fixtures in a real run, and
/// both add to `dataflow_model_host_bytes_total` and `dataflow_model_steps_total` under their
/// model and provider (the amounts against the model's own report: `correct.rs`' tests).
#[test]
fn model_stages_count_host_bytes_and_steps() {
    if let Err(e) = dataflow_models::runtime::runtime() {
        assert!(!dataflow_models::assets::assets_required(), "{e}");
        println!("skipped: {e}");
        return;
    }
    let handle = dataflow_monitoring::install_recorder().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixtures = crate::support::root().join("models/fixtures");
    let graph = format!(
        r#"
[stage.src]
kind = "synthetic"
frames = 2
[stage.caption]
kind = "caption"
inputs = ["src"]
model = "llava"
model_dir = "{llava}"
max_new_tokens = 4
provider = "cpu"
intra_threads = 1
[stage.correct]
kind = "correct"
inputs = ["caption"]
model = "bart"
model_dir = "{bart}"
beams = 1
max_new_tokens = 6
provider = "cpu"
intra_threads = 1
[stage.sink]
kind = "null_sink"
inputs = ["correct"]
"#,
        llava = fixtures.join("llava").display(),
        bart = fixtures.join("bart").display(),
    );
    let s = crate::support::run_text(&graph, dir.path());
    assert_eq!((s.frames_in, s.failed), (2, 0), "{s:?}");
    let samples = dataflow_monitoring::top::parse_exposition(&handle.render()).unwrap();
    let counted = |name: &str, model: &str| {
        samples
            .iter()
            .find(|x| x.name == name && x.label("model") == Some(model) && x.label("provider") == Some("cpu"))
            .map(|x| x.value)
            .unwrap_or_else(|| panic!("no {name}{{model=\"{model}\",provider=\"cpu\"}}"))
    };
    for model in ["llava", "bart"] {
        let steps = counted("dataflow_model_steps_total", model);
        let bytes = counted("dataflow_model_host_bytes_total", model);
        // Each caption and correction runs decode steps (the tiny models never stop early),
        // and every step moves at least its new token's id in and its logits out.
        assert!(steps >= 2.0, "{model}: {steps} steps");
        assert!(bytes >= 8.0 * steps, "{model}: {bytes} bytes in {steps} steps");
    }
}
