//! Monitoring for dataflow: the one place where metric names, label keys and
//! histogram buckets are defined, plus the Prometheus exporter and tracing set-up.
//!
//! # Layout
//! - [`names`]: every metric name and label key (DESIGN §8).

pub mod names;
