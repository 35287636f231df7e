//! The per-stage metric contract of `monitoring/SPEC.md`, as code: which series a
//! stage must have in a scrape once it has started, by its role. A test harness
//! in the engine runs a stage, scrapes (or renders) the recorder, and asserts that
//! [`missing_stage_metrics`] is empty, like Vector's component specification tests.

use crate::names::{
    EDGE_CAPACITY, EDGE_QUEUE_DEPTH, LABEL_STAGE, LABEL_TO, STAGE_MESSAGES_RECEIVED, STAGE_MESSAGES_SENT,
    STAGE_PROCESSING_SECONDS, STAGE_RESTARTS, STAGE_UTILIZATION,
};
use crate::top::Sample;

/// Where a stage sits in a graph; decides which message counters it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageRole {
    /// No inputs: must count messages sent, not received.
    Source,
    /// Inputs and outputs: must count both.
    Transform,
    /// No outputs: must count messages received, not sent.
    Sink,
}

/// Series (by metric name) every started stage of `role` must export with its
/// `stage` label, registered at zero before the first message (SPEC.md, "MUST").
/// Histograms are listed by base name and checked through their `_count` series.
pub fn required_metrics(role: StageRole) -> &'static [&'static str] {
    match role {
        StageRole::Source => &[
            STAGE_MESSAGES_SENT,
            STAGE_PROCESSING_SECONDS,
            STAGE_UTILIZATION,
            STAGE_RESTARTS,
        ],
        StageRole::Transform => &[
            STAGE_MESSAGES_RECEIVED,
            STAGE_MESSAGES_SENT,
            STAGE_PROCESSING_SECONDS,
            STAGE_UTILIZATION,
            STAGE_RESTARTS,
        ],
        StageRole::Sink => &[
            STAGE_MESSAGES_RECEIVED,
            STAGE_PROCESSING_SECONDS,
            STAGE_UTILIZATION,
            STAGE_RESTARTS,
        ],
    }
}

/// What `stage` is missing from `samples` (a parsed scrape, see
/// [`crate::top::parse_exposition`]): each required metric without a series for the
/// stage, and, for a stage with inputs, the edge gauges without a series `to` it.
/// Empty means the stage meets the contract.
pub fn missing_stage_metrics(samples: &[Sample], stage: &str, role: StageRole) -> Vec<String> {
    let has = |name: &str, key: &str| samples.iter().any(|s| s.name == name && s.label(key) == Some(stage));
    let mut missing: Vec<String> = required_metrics(role)
        .iter()
        .filter(|&&name| {
            let series = if name == STAGE_PROCESSING_SECONDS {
                format!("{name}_count")
            } else {
                name.to_owned()
            };
            !has(&series, LABEL_STAGE)
        })
        .map(|name| format!("{name}{{stage=\"{stage}\"}}"))
        .collect();
    if role != StageRole::Source {
        for edge in [EDGE_QUEUE_DEPTH, EDGE_CAPACITY] {
            if !has(edge, LABEL_TO) {
                missing.push(format!("{edge}{{to=\"{stage}\"}}"));
            }
        }
    }
    missing
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::top::parse_exposition;

    #[test]
    fn a_complete_transform_passes_and_gaps_are_named() {
        let text = r#"
dataflow_stage_messages_received_total{stage="t",kind="passthrough"} 0
dataflow_stage_messages_sent_total{stage="t",kind="passthrough"} 0
dataflow_stage_processing_seconds_count{stage="t",kind="passthrough"} 0
dataflow_stage_utilization{stage="t"} 0
dataflow_stage_restarts_total{stage="t"} 0
dataflow_edge_queue_depth{from="s",to="t"} 0
dataflow_edge_capacity{from="s",to="t"} 4
"#;
        let samples = parse_exposition(text).unwrap();
        assert!(missing_stage_metrics(&samples, "t", StageRole::Transform).is_empty());
        assert_eq!(
            missing_stage_metrics(&samples, "s", StageRole::Source),
            [
                "dataflow_stage_messages_sent_total{stage=\"s\"}",
                "dataflow_stage_processing_seconds{stage=\"s\"}",
                "dataflow_stage_utilization{stage=\"s\"}",
                "dataflow_stage_restarts_total{stage=\"s\"}",
            ]
        );
    }
}
