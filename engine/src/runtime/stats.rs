//! Per-stage counters, kept by the engine for every stage kind, and their metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram};

use crate::stage::Role;
use dataflow_monitoring::names;

/// Counters of one stage, kept by the engine for every stage kind.
pub struct StageStats {
    /// Stage id.
    pub id: String,
    /// Kind name.
    pub kind: String,
    /// Role.
    pub role: Role,
    /// Replicas.
    pub replicas: usize,
    /// Messages taken from inputs (sources: frames produced).
    pub received: AtomicU64,
    /// Messages sent downstream.
    pub sent: AtomicU64,
    /// Failed frames (errors and panics).
    pub errors: AtomicU64,
    /// Messages dropped on this stage's input edges (the edges count into it).
    pub dropped: Arc<AtomicU64>,
    /// Restarts after a panic.
    pub restarts: AtomicU64,
    /// Joined frames emitted with parts missing.
    pub incomplete: AtomicU64,
    /// Nanoseconds spent processing, all replicas together.
    pub busy_ns: AtomicU64,
    pub(super) m_received: Counter,
    pub(super) m_sent: Counter,
    pub(super) m_processing: Histogram,
    pub(super) m_utilization: Gauge,
    pub(super) m_restarts: Counter,
    /// Parts a join refused because their frame was already emitted (reason `late`).
    pub(super) m_late: Counter,
    /// Batched stages only: messages per call, and the wait from a batch's first message to its call.
    pub(super) m_batch: Option<BatchMetrics>,
}

/// The histograms of a batched stage.
pub(super) struct BatchMetrics {
    pub(super) size: Histogram,
    pub(super) wait: Histogram,
}

impl StageStats {
    /// Counters of stage `id`; `batched` when it has `batch` (its batch histograms are made).
    pub(super) fn new(id: &str, kind: &str, role: Role, replicas: usize, batched: bool) -> Self {
        let sk = [
            (names::LABEL_STAGE, id.to_string()),
            (names::LABEL_KIND, kind.to_string()),
        ];
        StageStats {
            id: id.into(),
            kind: kind.into(),
            role,
            replicas,
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: Arc::new(AtomicU64::new(0)),
            restarts: AtomicU64::new(0),
            incomplete: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            m_received: metrics::counter!(names::STAGE_MESSAGES_RECEIVED, &sk),
            m_sent: metrics::counter!(names::STAGE_MESSAGES_SENT, &sk),
            m_processing: metrics::histogram!(names::STAGE_PROCESSING_SECONDS, &sk),
            m_utilization: metrics::gauge!(names::STAGE_UTILIZATION, names::LABEL_STAGE => id.to_string()),
            m_restarts: metrics::counter!(names::STAGE_RESTARTS, names::LABEL_STAGE => id.to_string()),
            m_late: metrics::counter!(names::STAGE_DROPPED, names::LABEL_STAGE => id.to_string(), names::LABEL_REASON => "late"),
            m_batch: batched.then(|| BatchMetrics {
                size: metrics::histogram!(names::STAGE_BATCH_SIZE, names::LABEL_STAGE => id.to_string()),
                wait: metrics::histogram!(names::STAGE_BATCH_WAIT_SECONDS, names::LABEL_STAGE => id.to_string()),
            }),
        }
    }

    pub(super) fn on_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.m_received.increment(1);
    }

    /// A join refused a part of a frame it had already emitted: dropped, reason `late`.
    pub(super) fn on_late(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.m_late.increment(1);
    }

    pub(super) fn on_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.m_sent.increment(n);
    }
}
