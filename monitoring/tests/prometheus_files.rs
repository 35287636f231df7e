//! The shipped Prometheus files are valid and their rules behave: `promtool check
//! config`, `promtool check rules` and `promtool test rules` (rules_test.yml).
//! `promtool` comes with the Debian package `prometheus`, installed by
//! `scripts/setup-system`; without it these tests fail, they do not skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus")
}

fn promtool(args: &[&str]) {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
    {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run `promtool` ({e}): install it with scripts/setup-system \
             (Debian package `prometheus`)"
        ),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    assert!(text.contains("SUCCESS"), "promtool {} said:\n{text}", args.join(" "));
}

#[test]
fn scrape_config_is_valid() {
    promtool(&["check", "config", "prometheus.yml"]);
}

#[test]
fn rules_are_valid() {
    promtool(&["check", "rules", "rules.yml"]);
}

#[test]
fn rules_pass_their_unit_tests() {
    promtool(&["test", "rules", "rules_test.yml"]);
}

#[test]
fn scrape_config_points_at_the_default_listen_address() {
    let config = std::fs::read_to_string(prometheus_dir().join("prometheus.yml")).unwrap();
    assert!(
        config.contains(&format!("\"{}\"", dataflow_monitoring::DEFAULT_LISTEN)),
        "prometheus.yml does not scrape {}",
        dataflow_monitoring::DEFAULT_LISTEN
    );
}
