//! A real Prometheus for integration tests (feature `promtest`).
//!
//! [`Prometheus::start`] runs the `prometheus` binary (Debian package `prometheus`,
//! installed by `scripts/setup-system`; `PROMETHEUS_BIN` overrides the path) on a
//! free loopback port, with a temporary data directory and a generated scrape config
//! that scrapes one target every second. [`Prometheus::query`] runs an instant
//! PromQL query through `/api/v1/query`. The process is killed and its directory
//! removed on drop.
//!
//! ```no_run
//! # fn main() -> Result<(), dataflow_monitoring::MonitoringError> {
//! use std::time::Duration;
//! use dataflow_monitoring::promtest::Prometheus;
//!
//! let exporter = dataflow_monitoring::install_exporter("127.0.0.1:0")?;
//! metrics::counter!(dataflow_monitoring::names::STAGE_RESTARTS, "stage" => "a").increment(1);
//! let prometheus = Prometheus::start(exporter)?;
//! prometheus.wait_for_scrape(Duration::from_secs(20))?;
//! let restarts = prometheus.query("dataflow_stage_restarts_total{stage=\"a\"}")?;
//! assert_eq!(restarts[0].value, 1.0);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http;
use crate::MonitoringError;

/// Job name of the generated scrape config (the `job` label of every series).
pub const JOB: &str = "dataflow";

/// How to start a [`Prometheus`].
#[derive(Debug, Clone, PartialEq)]
pub struct PromOptions {
    /// The exporter to scrape (`/metrics` on it).
    pub target: SocketAddr,
    /// Scrape and rule evaluation interval.
    pub interval: Duration,
    /// Rule files to load (e.g. the shipped `monitoring/prometheus/rules.yml`).
    pub rule_files: Vec<PathBuf>,
}

impl PromOptions {
    /// Scrape `target` every second, no rules.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            interval: Duration::from_secs(1),
            rule_files: Vec::new(),
        }
    }
}

/// One element of a query answer: the series' labels and its value (a scalar
/// answer has no labels).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryValue {
    /// Label pairs, `__name__` included when the series has one.
    pub labels: BTreeMap<String, String>,
    /// The value at query time.
    pub value: f64,
}

/// A running `prometheus` process on loopback; killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    /// The process; killed and reaped on drop.
    child: Child,
    /// Where its HTTP API listens.
    addr: SocketAddr,
    /// Its config, data and log; removed on drop (after the child is gone).
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second; returns once its API is
    /// ready (not yet scraped: see [`Self::wait_for_scrape`]).
    ///
    /// # Errors
    /// [`MonitoringError::Prometheus`] when the binary is missing (the message names
    /// `scripts/setup-system`), exits, or is not ready within 30 s.
    pub fn start(target: SocketAddr) -> Result<Self, MonitoringError> {
        Self::start_with(&PromOptions::new(target))
    }

    /// Starts Prometheus with `options`; see [`Self::start`].
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_with(options: &PromOptions) -> Result<Self, MonitoringError> {
        // The port is picked by binding and releasing it; if Prometheus exits (the
        // port was taken in between), try again with another one.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::try_start(options) {
                Ok(prometheus) => return Ok(prometheus),
                Err(Start::Exited(e)) if attempts < 3 => tracing::debug!(%e, "prometheus exited; retrying"),
                Err(Start::Exited(e) | Start::Failed(e)) => return Err(e),
            }
        }
    }

    fn try_start(options: &PromOptions) -> Result<Self, Start> {
        let dir = tempfile::Builder::new()
            .prefix("dataflow-promtest-")
            .tempdir()
            .map_err(|e| prom_error(format!("cannot make a temporary directory: {e}")))?;
        let addr = free_loopback_port()?;
        let config = dir.path().join("prometheus.yml");
        fs::write(&config, scrape_config(options))
            .map_err(|e| prom_error(format!("cannot write {}: {e}", config.display())))?;
        let log_path = dir.path().join("prometheus.log");
        let log = fs::File::create(&log_path)
            .map_err(|e| prom_error(format!("cannot create {}: {e}", log_path.display())))?;
        let log_err = log.try_clone().map_err(|e| prom_error(e.to_string()))?;
        let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    prom_error(format!(
                        "`{bin}` is not installed; run scripts/setup-system (Debian package `prometheus`)"
                    ))
                } else {
                    prom_error(format!("cannot run `{bin}`: {e}"))
                }
            })?;
        let mut prometheus = Self { child, addr, dir };
        prometheus.wait_ready(Duration::from_secs(30))?;
        Ok(prometheus)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), Start> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let e = prom_error(format!("exited with {status}: {}", self.log_tail()));
                return Err(Start::Exited(e));
            }
            if http::get(&self.addr.to_string(), "/-/ready", Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let e = prom_error(format!("not ready after {timeout:?}: {}", self.log_tail()));
                return Err(Start::Failed(e));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where the Prometheus HTTP API listens (loopback).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs an instant query and returns its series (a scalar or string answer
    /// comes back as one value without labels).
    ///
    /// # Errors
    /// [`MonitoringError::Http`] when the API cannot be reached or refuses the query
    /// (a PromQL syntax error says why), [`MonitoringError::Prometheus`] for an
    /// answer that is not what the API documents.
    pub fn query(&self, promql: &str) -> Result<Vec<QueryValue>, MonitoringError> {
        let path = format!("/api/v1/query?query={}", http::encode_query_value(promql));
        let body = http::get(&self.addr.to_string(), &path, Duration::from_secs(10))?;
        parse_query_answer(&body)
    }

    /// Polls `promql` every 200 ms until it returns at least one series, and
    /// returns them.
    ///
    /// # Errors
    /// [`MonitoringError::Prometheus`] after `timeout` (with the last answer and
    /// the target's scrape health), or the query's own error.
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> Result<Vec<QueryValue>, MonitoringError> {
        let deadline = Instant::now() + timeout;
        loop {
            let values = self.query(promql)?;
            if !values.is_empty() {
                return Ok(values);
            }
            if Instant::now() > deadline {
                return Err(prom_error(format!(
                    "`{promql}` returned nothing within {timeout:?}; targets: {}",
                    self.targets_summary()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the target has been scraped successfully (`up == 1`).
    ///
    /// # Errors
    /// As [`Self::wait_for`].
    pub fn wait_for_scrape(&self, timeout: Duration) -> Result<(), MonitoringError> {
        self.wait_for(&format!("up{{job=\"{JOB}\"}} == 1"), timeout).map(|_| ())
    }

    /// Health and last error of each scrape target, from `/api/v1/targets`, for
    /// error messages.
    pub fn targets_summary(&self) -> String {
        let body = match http::get(&self.addr.to_string(), "/api/v1/targets", Duration::from_secs(5)) {
            Ok(body) => body,
            Err(e) => return e.to_string(),
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
            return body;
        };
        let mut out = String::new();
        for t in json["data"]["activeTargets"].as_array().into_iter().flatten() {
            let _ = write!(
                out,
                "{} {} {:?}; ",
                t["scrapeUrl"],
                t["health"],
                t["lastError"].as_str().unwrap_or("")
            );
        }
        out
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a start attempt failed: the process exited (maybe its port was taken: worth
/// another try) or something else (missing binary, no temp dir: not worth one).
enum Start {
    Exited(MonitoringError),
    Failed(MonitoringError),
}

impl From<MonitoringError> for Start {
    fn from(e: MonitoringError) -> Self {
        Self::Failed(e)
    }
}

/// The generated `prometheus.yml` for `options`.
fn scrape_config(options: &PromOptions) -> String {
    let secs = options.interval.as_secs_f64().max(0.001);
    let interval = format!("{}ms", (secs * 1000.0).round());
    let mut config = format!("global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n");
    if !options.rule_files.is_empty() {
        config.push_str("rule_files:\n");
        for f in &options.rule_files {
            let _ = writeln!(config, "  - {:?}", f.display().to_string());
        }
    }
    let _ = write!(
        config,
        "scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{}\"]\n",
        options.target
    );
    config
}

fn parse_query_answer(body: &str) -> Result<Vec<QueryValue>, MonitoringError> {
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| prom_error(format!("query answer is not JSON ({e}): {body}")))?;
    if json["status"] != "success" {
        return Err(prom_error(format!("query failed: {body}")));
    }
    let data = &json["data"];
    let value_of = |pair: &serde_json::Value| -> Result<f64, MonitoringError> {
        let text = pair[1]
            .as_str()
            .ok_or_else(|| prom_error(format!("no value in {pair}")))?;
        match text {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => text
                .parse()
                .map_err(|_| prom_error(format!("`{text}` is not a number"))),
        }
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                let labels = item["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                Ok(QueryValue {
                    labels,
                    value: value_of(&item["value"])?,
                })
            })
            .collect(),
        Some("scalar") | Some("string") => Ok(vec![QueryValue {
            labels: BTreeMap::new(),
            value: value_of(&data["result"])?,
        }]),
        other => Err(prom_error(format!("unsupported result type {other:?}: {body}"))),
    }
}

fn free_loopback_port() -> Result<SocketAddr, MonitoringError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| prom_error(format!("no free loopback port: {e}")))
}

fn prom_error(reason: impl Into<String>) -> MonitoringError {
    MonitoringError::Prometheus(reason.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_vector_and_scalar_answers() {
        let v = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"dataflow"},"value":[1.5,"1"]}]}}"#;
        let got = parse_query_answer(v).unwrap();
        assert_eq!(got[0].value, 1.0);
        assert_eq!(got[0].labels["job"], "dataflow");
        let s = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#;
        assert!(parse_query_answer(s).unwrap()[0].value.is_nan());
        assert!(parse_query_answer(r#"{"status":"error","error":"bad"}"#).is_err());
    }

    #[test]
    fn config_names_target_and_rules() {
        let mut o = PromOptions::new("127.0.0.1:9999".parse().unwrap());
        o.rule_files.push("/x/rules.yml".into());
        let c = scrape_config(&o);
        assert!(c.contains("scrape_interval: 1000ms"), "{c}");
        assert!(c.contains("- \"/x/rules.yml\""), "{c}");
        assert!(c.contains("targets: [\"127.0.0.1:9999\"]"), "{c}");
    }
}
