//! Every metric the shipped dashboard, rules and stage spec name is defined in
//! `names.rs`, every recording rule they use is defined in `rules.yml`, and every
//! defined metric is specified in SPEC.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use dataflow_monitoring::names::{spec_of, MetricKind, ALL, METRICS};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tokens matching `<prefix>[a-z0-9_:]+` (a metric or rule name).
fn tokens(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        // Skip names embedded in a longer identifier, and a bare prefix (`dataflow_*`).
        if end > prefix.len() && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            found.insert(tail[..end].to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    found
}

/// A metric token is known when it is a name in ALL, or a histogram's series.
fn is_known_metric(token: &str) -> bool {
    if ALL.contains(&token) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        token
            .strip_suffix(suffix)
            .and_then(spec_of)
            .is_some_and(|m| matches!(m.kind, MetricKind::Histogram { .. }))
    })
}

fn unknown_metrics(text: &str) -> Vec<String> {
    tokens(text, "dataflow_")
        .into_iter()
        .filter(|t| !is_known_metric(t))
        .collect()
}

fn recorded_rules() -> BTreeSet<String> {
    read("prometheus/rules.yml")
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- record:")
                .or_else(|| l.trim().strip_prefix("record:"))
        })
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn the_token_scanner_works() {
    let t = tokens(
        "rate(dataflow_stage_messages_sent_total[1m]) x dataflow:channel_ber:rate1m my_dataflow_x",
        "dataflow_",
    );
    assert_eq!(
        t.into_iter().collect::<Vec<_>>(),
        ["dataflow_stage_messages_sent_total"]
    );
    assert!(is_known_metric("dataflow_quality_ssim_bucket"));
    assert!(
        !is_known_metric("dataflow_stage_utilization_sum"),
        "a gauge has no _sum series"
    );
    assert!(!is_known_metric("dataflow_stage_messages_total"));
}

#[test]
fn names_are_unique_prefixed_and_listed_once() {
    let unique: BTreeSet<_> = ALL.iter().collect();
    assert_eq!(unique.len(), ALL.len(), "a metric name is listed twice");
    assert_eq!(ALL.len(), METRICS.len());
    for m in METRICS {
        assert!(m.name.starts_with("dataflow_"), "{}", m.name);
        match m.kind {
            MetricKind::Counter => assert!(m.name.ends_with("_total"), "counter {}", m.name),
            _ => assert!(!m.name.ends_with("_total"), "non-counter {}", m.name),
        }
        assert!(!m.help.is_empty() && !m.labels.is_empty(), "{}", m.name);
    }
}

#[test]
fn dashboard_names_only_known_metrics() {
    let dashboard = read("dashboards/dataflow.json");
    assert_eq!(unknown_metrics(&dashboard), Vec::<String>::new());
    let rules = recorded_rules();
    for rule in tokens(&dashboard, "dataflow:") {
        assert!(
            rules.contains(&rule),
            "dashboard uses recording rule {rule} that rules.yml does not define"
        );
    }
}

#[test]
fn rules_name_only_known_metrics_and_rules() {
    let text = read("prometheus/rules.yml");
    assert_eq!(unknown_metrics(&text), Vec::<String>::new());
    let defined = recorded_rules();
    assert!(defined.len() >= 5, "{defined:?}");
    for rule in tokens(&text, "dataflow:") {
        assert!(defined.contains(&rule), "rules.yml uses {rule} without recording it");
    }
    for needed in ["dataflow:stage_messages_sent:rate1m", "dataflow:channel_ber:rate1m"] {
        assert!(defined.contains(needed), "{needed} is not recorded");
    }
}

#[test]
fn spec_covers_every_metric_and_names_no_other() {
    let spec = read("SPEC.md");
    assert_eq!(unknown_metrics(&spec), Vec::<String>::new());
    let mentioned = tokens(&spec, "dataflow_");
    let missing: Vec<_> = ALL.iter().filter(|m| !mentioned.contains(**m)).collect();
    assert!(missing.is_empty(), "SPEC.md does not specify {missing:?}");
}

#[test]
fn dashboard_has_the_promised_panels() {
    let dashboard: serde_json::Value = serde_json::from_str(&read("dashboards/dataflow.json")).unwrap();
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(vars.contains(&"datasource"), "no datasource variable: {vars:?}");
    let panels = dashboard["panels"].as_array().unwrap();
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let has = |needle: &str| exprs.iter().any(|e| e.contains(needle));
    assert!(has("rate(dataflow_stage_messages_sent_total"));
    assert!(has("dataflow_edge_queue_depth"));
    assert!(has("dataflow_stage_utilization"));
    for q in ["0.5", "0.95", "0.99"] {
        assert!(has(&format!(
            "histogram_quantile({q}, sum by (graph, le) (rate(dataflow_pipeline_latency_seconds_bucket"
        )));
    }
    assert!(has(
        "sum by (model, provider, le) (rate(dataflow_model_inference_seconds_bucket"
    ));
    // Issue 20: host↔provider bytes per model step.
    assert!(has(
        "sum by (model, provider) (rate(dataflow_model_host_bytes_total[1m])) / sum by (model, provider) (rate(dataflow_model_steps_total[1m]))"
    ));
    assert!(has("rate(dataflow_channel_bit_errors_total") && has("rate(dataflow_channel_bits_total"));
    assert!(has("dataflow_channel_snr_db"));
    for q in ["psnr_db", "ssim", "lpips", "bleu", "cosine"] {
        assert!(has(&format!("dataflow_quality_{q}_bucket")), "no panel for {q}");
    }
    // Pools (issue 22): members' rates, credits, re-sends and duplicates.
    assert!(has("rate(dataflow_pool_sent_total") && has("dataflow_pool_members") && has("dataflow_pool_credits"));
    assert!(has("dataflow_link_resent_total") && has("dataflow_link_duplicates_total"));
    // Every panel with queries uses the datasource variable.
    for p in panels.iter().filter(|p| p["targets"].is_array()) {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {}", p["title"]);
    }
}
