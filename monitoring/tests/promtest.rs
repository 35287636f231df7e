//! The exporter seen through a real Prometheus (the `promtest` harness): metrics
//! recorded here come back from `/api/v1/query`, the shipped recording rules
//! compute on them, and every query in the shipped dashboard parses.
//! Needs `prometheus` (scripts/setup-system); fails without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use dataflow_monitoring::names::{
    CHANNEL_BITS, CHANNEL_BIT_ERRORS, PIPELINE_LATENCY_SECONDS, QUALITY_PSNR_DB, STAGE_MESSAGES_SENT, STAGE_RESTARTS,
};
use dataflow_monitoring::promtest::{PromOptions, Prometheus};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn metrics_round_trip_through_a_real_prometheus() {
    let exporter = dataflow_monitoring::install_exporter("127.0.0.1:0").unwrap();
    metrics::counter!(STAGE_RESTARTS, "stage" => "caption").absolute(0);
    metrics::counter!(CHANNEL_BITS, "stage" => "ch", "modulation" => "qpsk").increment(0);
    metrics::counter!(CHANNEL_BIT_ERRORS, "stage" => "ch", "modulation" => "qpsk").increment(0);
    for v in [0.3, 0.4, 0.45] {
        metrics::histogram!(PIPELINE_LATENCY_SECONDS, "graph" => "lite").record(v);
    }
    metrics::histogram!(QUALITY_PSNR_DB, "graph" => "lite").record(31.0);

    let mut options = PromOptions::new(exporter);
    options
        .rule_files
        .push(Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus/rules.yml"));
    let prometheus = Prometheus::start_with(&options).unwrap();
    assert!(prometheus.addr().ip().is_loopback());
    prometheus.wait_for_scrape(WAIT).unwrap();

    // Keep the counters moving while Prometheus scrapes every second.
    let sent = metrics::counter!(STAGE_MESSAGES_SENT, "stage" => "src", "kind" => "synthetic");
    let bits = metrics::counter!(CHANNEL_BITS, "stage" => "ch", "modulation" => "qpsk");
    let errors = metrics::counter!(CHANNEL_BIT_ERRORS, "stage" => "ch", "modulation" => "qpsk");
    let feeder = std::thread::spawn(move || {
        for _ in 0..60 {
            sent.increment(5);
            bits.increment(10_000);
            errors.increment(10);
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    let restarts = prometheus
        .wait_for("dataflow_stage_restarts_total{stage=\"caption\"}", WAIT)
        .unwrap();
    assert_eq!(restarts.len(), 1);
    assert_eq!(restarts[0].value, 0.0);
    assert_eq!(restarts[0].labels["job"], "dataflow");

    let count = prometheus
        .wait_for("dataflow_pipeline_latency_seconds_count{graph=\"lite\"}", WAIT)
        .unwrap();
    assert_eq!(count[0].value, 3.0);
    let bucket = prometheus
        .query("dataflow_quality_psnr_db_bucket{graph=\"lite\",le=\"32\"}")
        .unwrap();
    assert_eq!(bucket[0].value, 1.0, "explicit PSNR buckets reach Prometheus");

    // Recording rules from the shipped rules.yml, on live data.
    let rate = prometheus
        .wait_for("dataflow:stage_messages_sent:rate1m{stage=\"src\"} > 0", WAIT)
        .unwrap();
    // 50 messages/s are sent; over the first seconds of a 1m window Prometheus divides
    // by the whole window, so the recorded rate is lower, never higher.
    assert!(rate[0].value > 0.0 && rate[0].value <= 55.0, "rate {}", rate[0].value);
    let ber = prometheus
        .wait_for("dataflow:channel_ber:rate1m{stage=\"ch\"} > 0", WAIT)
        .unwrap();
    assert!((ber[0].value - 0.001).abs() < 1e-9, "BER {}", ber[0].value);
    let p50 = prometheus
        .query("histogram_quantile(0.5, sum by (le) (dataflow_pipeline_latency_seconds_bucket))")
        .unwrap();
    assert!(p50[0].value > 0.25 && p50[0].value <= 0.5, "p50 {}", p50[0].value);
    feeder.join().unwrap();

    // Every dashboard query is valid PromQL (Prometheus answers 400 otherwise).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/dataflow.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$stage", ".*")
                .replace("$graph", ".*");
            if let Err(e) = prometheus.query(&expr) {
                panic!("panel {}: `{expr}`: {e}", panel["title"]);
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} queries");
    let throughput = prometheus
        .query("sum by (stage) (rate(dataflow_stage_messages_sent_total{stage=~\".*\"}[1m]))")
        .unwrap();
    assert!(throughput
        .iter()
        .any(|v| v.labels.get("stage").map(String::as_str) == Some("src") && v.value > 0.0));
}

#[test]
fn a_bad_query_is_an_error_that_says_why() {
    // No target needed: nothing listens on port 9 (discard) on loopback.
    let prometheus = Prometheus::start("127.0.0.1:9".parse().unwrap()).unwrap();
    let err = prometheus
        .query("rate(dataflow_stage_messages_sent_total[1m]")
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}
