//! Monitoring for dataflow: the one place where metric names, label keys and
//! histogram buckets are defined, plus the Prometheus exporter, tracing set-up, a
//! terminal view of a running pipeline, and a harness that runs a real Prometheus.
//!
//! # Layout
//! - [`names`]: every metric name and label key, and the table [`names::METRICS`]
//!   of their types, units, labels and help (DESIGN §8).
//! - [`buckets`]: explicit histogram bucket bounds.
//! - [`describe_all`]: registers every description and unit with the `metrics` facade.
//! - [`exporter`]: [`install_exporter`] (HTTP `/metrics` for Prometheus),
//!   [`install_recorder`] (render to a string, no listener) and [`local_recorder`]
//!   (for `metrics::with_local_recorder` in unit tests).
//! - [`logging`]: [`init_tracing`], text or JSON on stderr, `RUST_LOG` aware.
//! - [`top`]: scrape an exporter and show per-stage rate, queue, utilization and
//!   errors, marking the bottleneck (`dataflow top`).
//! - [`spec`]: the per-stage metric contract of `monitoring/SPEC.md` as code, for
//!   tests that check a stage emits what it must.
//! - `promtest` (feature `promtest`): start a real `prometheus` on loopback, let it
//!   scrape an address and query it back.
//!
//! Shipped files beside this crate: `dashboards/dataflow.json` (Grafana),
//! `prometheus/prometheus.yml` and `prometheus/rules.yml`, and `SPEC.md`.

pub mod buckets;
mod error;
pub mod exporter;
mod http;
pub mod logging;
pub mod names;
#[cfg(feature = "promtest")]
pub mod promtest;
pub mod spec;
pub mod top;

pub use error::MonitoringError;
pub use exporter::{install_exporter, install_recorder, local_recorder, parse_listen, DEFAULT_LISTEN};
pub use logging::{init_tracing, LogFormat};

use names::{MetricKind, METRICS};

/// Registers the description and unit of every metric in [`names::METRICS`] with the
/// current `metrics` recorder, so the exporter writes `# HELP` and `# TYPE` lines
/// even before a metric has a value. Call it once after installing a recorder
/// ([`install_exporter`] and [`install_recorder`] already do).
pub fn describe_all() {
    for m in METRICS {
        match (m.kind, m.unit) {
            (MetricKind::Counter, Some(unit)) => metrics::describe_counter!(m.name, unit, m.help),
            (MetricKind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (MetricKind::Gauge, Some(unit)) => metrics::describe_gauge!(m.name, unit, m.help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (MetricKind::Histogram { .. }, Some(unit)) => {
                metrics::describe_histogram!(m.name, unit, m.help)
            }
            (MetricKind::Histogram { .. }, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
}
