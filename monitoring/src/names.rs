//! Every metric name and label key the project emits (DESIGN §8). Nothing else in
//! the workspace spells a metric name: it refers to these constants.

/// Messages a stage took from its inputs. Labels: `stage`, `kind`.
pub const STAGE_MESSAGES_RECEIVED: &str = "dataflow_stage_messages_received_total";
/// Messages a stage sent downstream (one per output message, before fan-out). Labels: `stage`, `kind`.
pub const STAGE_MESSAGES_SENT: &str = "dataflow_stage_messages_sent_total";
/// Frames a stage failed on. Labels: `stage`, `kind`, `error`.
pub const STAGE_ERRORS: &str = "dataflow_stage_errors_total";
/// Messages dropped at a stage's input edges. Labels: `stage`, `reason`.
pub const STAGE_DROPPED: &str = "dataflow_stage_dropped_total";
/// Time a stage spent on one input. Labels: `stage`, `kind`.
pub const STAGE_PROCESSING_SECONDS: &str = "dataflow_stage_processing_seconds";
/// Messages a batched stage took in one call (`batch = { max, wait_ms }`). Labels: `stage`.
pub const STAGE_BATCH_SIZE: &str = "dataflow_stage_batch_size";
/// Time from the first message of a batch to the call that takes the batch. Labels: `stage`.
pub const STAGE_BATCH_WAIT_SECONDS: &str = "dataflow_stage_batch_wait_seconds";
/// Busy fraction of a stage over the last second. Labels: `stage`.
pub const STAGE_UTILIZATION: &str = "dataflow_stage_utilization";
/// Times a stage was restarted after a panic. Labels: `stage`.
pub const STAGE_RESTARTS: &str = "dataflow_stage_restarts_total";
/// Messages waiting on an edge. Labels: `from`, `to`.
pub const EDGE_QUEUE_DEPTH: &str = "dataflow_edge_queue_depth";
/// Capacity of an edge in messages. Labels: `from`, `to`.
pub const EDGE_CAPACITY: &str = "dataflow_edge_capacity";
/// Time a producer waited for room on an edge. Labels: `from`, `to`.
pub const EDGE_SEND_BLOCKED_SECONDS: &str = "dataflow_edge_send_blocked_seconds";
/// 1 while the other end of an edge between machines is present, else 0. Labels: `from`, `to`.
pub const LINK_UP: &str = "dataflow_link_up";
/// Messages missing on arrival over an edge between machines (sequence gaps). Labels: `from`, `to`.
pub const LINK_LOST: &str = "dataflow_link_lost_total";
/// Messages that arrived after a later one over an edge between machines. Labels: `from`, `to`.
pub const LINK_REORDERED: &str = "dataflow_link_reordered_total";
/// Messages sent again: to a receiver that came back, or, into a pool, to another
/// member after `member` was found dead. Labels: `from`, `to`, `member`.
pub const LINK_RESENT: &str = "dataflow_link_resent_total";
/// Frames a pool's consumer received again from `member` after another member had
/// delivered them, and discarded. Labels: `from`, `to`, `member`.
pub const LINK_DUPLICATES: &str = "dataflow_link_duplicates_total";
/// Members of a pool the producer currently sends to. Labels: `pool`.
pub const POOL_MEMBERS: &str = "dataflow_pool_members";
/// Free places the producer sees at a pool member. Labels: `from`, `to`, `member`.
pub const POOL_CREDITS: &str = "dataflow_pool_credits";
/// Frames the producer sent into a pool, per member (re-sends included). Labels: `from`, `to`, `member`.
pub const POOL_SENT: &str = "dataflow_pool_sent_total";
/// Payload bytes published over an edge between machines. Labels: `from`, `to`.
pub const LINK_SENT_BYTES: &str = "dataflow_link_sent_bytes_total";
/// Connections refused on a machine's TLS endpoints (no certificate, or one not signed by
/// the graph's `root_ca`, or not TLS at all). Labels: `reason`.
pub const LINK_REFUSED: &str = "dataflow_link_refused_total";
/// Source-to-sink latency of a frame. Labels: `graph`.
pub const PIPELINE_LATENCY_SECONDS: &str = "dataflow_pipeline_latency_seconds";
/// Time of one model inference. Labels: `model`, `provider`.
pub const MODEL_INFERENCE_SECONDS: &str = "dataflow_model_inference_seconds";
/// Bytes the model's iterative steps (LLaVA's and BART's decode steps, SD's UNet calls)
/// moved between host memory and the provider's memory, as the model counts them (on the
/// CPU, data left where the next step reads it is not counted). Labels: `model`, `provider`.
pub const MODEL_HOST_BYTES: &str = "dataflow_model_host_bytes_total";
/// The steps [`MODEL_HOST_BYTES`] counts: decode steps after the prefill (LLaVA, BART) or
/// UNet calls (SD); bytes per step is `rate(host_bytes) / rate(steps)`. Labels: `model`, `provider`.
pub const MODEL_STEPS: &str = "dataflow_model_steps_total";
/// Time a `python` stage spent handing one frame to its worker process and reading the
/// result back, less the worker's own `process` time. Labels: `stage`.
pub const PYTHON_IPC_SECONDS: &str = "dataflow_python_ipc_seconds";
/// Bits sent over a channel. Labels: `stage`, `modulation`.
pub const CHANNEL_BITS: &str = "dataflow_channel_bits_total";
/// Bit errors after demodulation. Labels: `stage`, `modulation`.
pub const CHANNEL_BIT_ERRORS: &str = "dataflow_channel_bit_errors_total";
/// Channel SNR in dB currently configured. Labels: `stage`.
pub const CHANNEL_SNR_DB: &str = "dataflow_channel_snr_db";
/// Always 1, with the dataflow version as a label; lets a dashboard tell "exporter
/// up, nothing flowing" from "exporter down". Labels: `version`.
pub const EXPORTER_INFO: &str = "dataflow_build_info";
/// Reconstruction PSNR in dB. Labels: `graph`.
pub const QUALITY_PSNR_DB: &str = "dataflow_quality_psnr_db";
/// Reconstruction SSIM. Labels: `graph`.
pub const QUALITY_SSIM: &str = "dataflow_quality_ssim";
/// Reconstruction LPIPS distance. Labels: `graph`.
pub const QUALITY_LPIPS: &str = "dataflow_quality_lpips";
/// BLEU of the received text against the sent text. Labels: `graph`.
pub const QUALITY_BLEU: &str = "dataflow_quality_bleu";
/// Cosine similarity of reconstruction and original. Labels: `graph`.
pub const QUALITY_COSINE: &str = "dataflow_quality_cosine";
/// F1 of the COCO objects detected on the reconstruction against those on the original
/// (same class, box IoU ≥ 0.5). Labels: `graph`.
pub const QUALITY_DETECTION_F1: &str = "dataflow_quality_detection_f1";
/// Word error rate of the corrected texts against the sent texts (may exceed 1). Labels: `graph`.
pub const QUALITY_WER: &str = "dataflow_quality_wer";
/// Character error rate of the corrected texts against the sent texts. Labels: `graph`.
pub const QUALITY_CER: &str = "dataflow_quality_cer";
/// Share of the COCO object names sent that survive in the corrected texts (frames that
/// name no object are not observed). Labels: `graph`.
pub const QUALITY_OBJECT_RECALL: &str = "dataflow_quality_object_recall";

/// Label key: stage id.
pub const LABEL_STAGE: &str = "stage";
/// Label key: stage kind.
pub const LABEL_KIND: &str = "kind";
/// Label key: error class.
pub const LABEL_ERROR: &str = "error";
/// Label key: drop reason.
pub const LABEL_REASON: &str = "reason";
/// Label key: producing stage of an edge.
pub const LABEL_FROM: &str = "from";
/// Label key: consuming stage of an edge.
pub const LABEL_TO: &str = "to";
/// Label key: the pool member (machine name) a link series is about.
pub const LABEL_MEMBER: &str = "member";
/// Label key: pool name.
pub const LABEL_POOL: &str = "pool";
/// Label key: graph name.
pub const LABEL_GRAPH: &str = "graph";
/// Label key: model name.
pub const LABEL_MODEL: &str = "model";
/// Label key: execution provider.
pub const LABEL_PROVIDER: &str = "provider";
/// Label key: modulation.
pub const LABEL_MODULATION: &str = "modulation";
/// Label key: build version (only on [`EXPORTER_INFO`]).
pub const LABEL_VERSION: &str = "version";

/// What a metric is, as the exporter and Prometheus see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricKind {
    /// Monotonic count (name ends in `_total`).
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Distribution with explicit bucket upper bounds (see [`crate::buckets`]).
    Histogram {
        /// Upper bounds of the buckets, strictly increasing.
        buckets: &'static [f64],
    },
}

/// One row of the metrics table in DESIGN §8: name, type, unit, label keys, help.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    /// Full metric name, one of the constants above.
    pub name: &'static str,
    /// Counter, gauge or histogram (with its buckets).
    pub kind: MetricKind,
    /// Unit registered with the description; `None` for ratios, dB and scores.
    pub unit: Option<metrics::Unit>,
    /// Label keys every sample carries, from the `LABEL_*` constants.
    pub labels: &'static [&'static str],
    /// One-line description, exported as `# HELP`.
    pub help: &'static str,
}

use crate::buckets;
use MetricKind::{Counter, Gauge, Histogram};

/// Every metric the project emits, with its type, unit, labels and help text.
/// [`crate::describe_all`] registers these; [`ALL`] is the list of their names.
pub const METRICS: &[MetricSpec] = &METRIC_TABLE;

const METRIC_TABLE: [MetricSpec; 40] = [
    spec(
        STAGE_MESSAGES_RECEIVED,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_STAGE, LABEL_KIND],
        "Messages a stage took from its inputs.",
    ),
    spec(
        STAGE_MESSAGES_SENT,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_STAGE, LABEL_KIND],
        "Messages a stage sent downstream, one per output message before fan-out.",
    ),
    spec(
        STAGE_ERRORS,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_STAGE, LABEL_KIND, LABEL_ERROR],
        "Frames a stage failed on, by error class.",
    ),
    spec(
        STAGE_DROPPED,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_STAGE, LABEL_REASON],
        "Messages dropped at a stage's input edges, by reason.",
    ),
    spec(
        STAGE_PROCESSING_SECONDS,
        Histogram {
            buckets: buckets::PROCESSING_SECONDS,
        },
        Some(metrics::Unit::Seconds),
        &[LABEL_STAGE, LABEL_KIND],
        "Time a stage spent on one input.",
    ),
    spec(
        STAGE_BATCH_SIZE,
        Histogram {
            buckets: buckets::BATCH_SIZE,
        },
        Some(metrics::Unit::Count),
        &[LABEL_STAGE],
        "Messages a batched stage took in one call.",
    ),
    spec(
        STAGE_BATCH_WAIT_SECONDS,
        Histogram {
            buckets: buckets::PROCESSING_SECONDS,
        },
        Some(metrics::Unit::Seconds),
        &[LABEL_STAGE],
        "Time from the first message of a batch to the call that takes it.",
    ),
    spec(
        STAGE_UTILIZATION,
        Gauge,
        None,
        &[LABEL_STAGE],
        "Busy fraction (0 to 1) of a stage over the last second.",
    ),
    spec(
        STAGE_RESTARTS,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_STAGE],
        "Times a stage was restarted after a panic.",
    ),
    spec(
        EDGE_QUEUE_DEPTH,
        Gauge,
        Some(metrics::Unit::Count),
        &[LABEL_FROM, LABEL_TO],
        "Messages waiting on an edge.",
    ),
    spec(
        EDGE_CAPACITY,
        Gauge,
        Some(metrics::Unit::Count),
        &[LABEL_FROM, LABEL_TO],
        "Capacity of an edge in messages.",
    ),
    spec(
        EDGE_SEND_BLOCKED_SECONDS,
        Histogram {
            buckets: buckets::PROCESSING_SECONDS,
        },
        Some(metrics::Unit::Seconds),
        &[LABEL_FROM, LABEL_TO],
        "Time a producer waited for room on an edge.",
    ),
    spec(
        LINK_UP,
        Gauge,
        None,
        &[LABEL_FROM, LABEL_TO],
        "1 while the other end of an edge between machines is present, else 0.",
    ),
    spec(
        LINK_LOST,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_FROM, LABEL_TO],
        "Messages missing on arrival over an edge between machines (sequence gaps).",
    ),
    spec(
        LINK_REORDERED,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_FROM, LABEL_TO],
        "Messages that arrived after a later one over an edge between machines.",
    ),
    spec(
        LINK_RESENT,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_FROM, LABEL_TO, LABEL_MEMBER],
        "Messages sent again: to a receiver that came back, or to another pool member after one was found dead.",
    ),
    spec(
        LINK_DUPLICATES,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_FROM, LABEL_TO, LABEL_MEMBER],
        "Frames a pool's consumer received again from a member and discarded.",
    ),
    spec(
        POOL_MEMBERS,
        Gauge,
        Some(metrics::Unit::Count),
        &[LABEL_POOL],
        "Members of a pool the producer currently sends to.",
    ),
    spec(
        POOL_CREDITS,
        Gauge,
        Some(metrics::Unit::Count),
        &[LABEL_FROM, LABEL_TO, LABEL_MEMBER],
        "Free places the producer sees at a pool member.",
    ),
    spec(
        POOL_SENT,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_FROM, LABEL_TO, LABEL_MEMBER],
        "Frames sent into a pool, per member (re-sends included).",
    ),
    spec(
        LINK_SENT_BYTES,
        Counter,
        Some(metrics::Unit::Bytes),
        &[LABEL_FROM, LABEL_TO],
        "Payload bytes published over an edge between machines.",
    ),
    spec(
        LINK_REFUSED,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_REASON],
        "Connections refused on this machine's TLS endpoints (peer without a valid certificate).",
    ),
    spec(
        PIPELINE_LATENCY_SECONDS,
        Histogram {
            buckets: buckets::LATENCY_SECONDS,
        },
        Some(metrics::Unit::Seconds),
        &[LABEL_GRAPH],
        "Source-to-sink latency of a frame.",
    ),
    spec(
        MODEL_INFERENCE_SECONDS,
        Histogram {
            buckets: buckets::INFERENCE_SECONDS,
        },
        Some(metrics::Unit::Seconds),
        &[LABEL_MODEL, LABEL_PROVIDER],
        "Time of one model inference.",
    ),
    spec(
        MODEL_HOST_BYTES,
        Counter,
        Some(metrics::Unit::Bytes),
        &[LABEL_MODEL, LABEL_PROVIDER],
        "Bytes the model's decode steps (LLaVA, BART) or UNet calls (SD) moved between host and provider memory.",
    ),
    spec(
        MODEL_STEPS,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_MODEL, LABEL_PROVIDER],
        "Decode steps (LLaVA, BART) or UNet calls (SD) the model ran; host bytes per step = rate(host_bytes) / rate(steps).",
    ),
    spec(
        PYTHON_IPC_SECONDS,
        Histogram {
            buckets: buckets::IPC_SECONDS,
        },
        Some(metrics::Unit::Seconds),
        &[LABEL_STAGE],
        "Time a python stage spent handing a frame to its worker and reading the result back, less the worker's process time.",
    ),
    spec(
        CHANNEL_BITS,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_STAGE, LABEL_MODULATION],
        "Bits sent over a channel.",
    ),
    spec(
        CHANNEL_BIT_ERRORS,
        Counter,
        Some(metrics::Unit::Count),
        &[LABEL_STAGE, LABEL_MODULATION],
        "Bit errors after demodulation.",
    ),
    spec(
        CHANNEL_SNR_DB,
        Gauge,
        None,
        &[LABEL_STAGE],
        "Channel SNR in dB currently configured.",
    ),
    spec(
        QUALITY_PSNR_DB,
        Histogram {
            buckets: buckets::PSNR_DB,
        },
        None,
        &[LABEL_GRAPH],
        "Reconstruction PSNR in dB.",
    ),
    spec(
        QUALITY_SSIM,
        Histogram {
            buckets: buckets::UNIT_INTERVAL,
        },
        None,
        &[LABEL_GRAPH],
        "Reconstruction SSIM.",
    ),
    spec(
        QUALITY_LPIPS,
        Histogram {
            buckets: buckets::LPIPS,
        },
        None,
        &[LABEL_GRAPH],
        "Reconstruction LPIPS distance (lower is better).",
    ),
    spec(
        QUALITY_BLEU,
        Histogram {
            buckets: buckets::UNIT_INTERVAL,
        },
        None,
        &[LABEL_GRAPH],
        "BLEU of the received text against the sent text.",
    ),
    spec(
        QUALITY_COSINE,
        Histogram {
            buckets: buckets::UNIT_INTERVAL,
        },
        None,
        &[LABEL_GRAPH],
        "Cosine similarity of reconstruction and original.",
    ),
    spec(
        QUALITY_DETECTION_F1,
        Histogram {
            buckets: buckets::UNIT_INTERVAL,
        },
        None,
        &[LABEL_GRAPH],
        "F1 of the objects detected on the reconstruction against the original's (same class, IoU >= 0.5).",
    ),
    spec(
        QUALITY_WER,
        Histogram {
            buckets: buckets::UNIT_INTERVAL,
        },
        None,
        &[LABEL_GRAPH],
        "Word error rate of the corrected texts against the sent texts (above 1 counts in +Inf).",
    ),
    spec(
        QUALITY_CER,
        Histogram {
            buckets: buckets::UNIT_INTERVAL,
        },
        None,
        &[LABEL_GRAPH],
        "Character error rate of the corrected texts against the sent texts.",
    ),
    spec(
        QUALITY_OBJECT_RECALL,
        Histogram {
            buckets: buckets::UNIT_INTERVAL,
        },
        None,
        &[LABEL_GRAPH],
        "Share of the sent COCO object names kept in the corrected texts.",
    ),
    spec(
        EXPORTER_INFO,
        Gauge,
        None,
        &[LABEL_VERSION],
        "Always 1; the exporter's build version as a label (shows that the exporter is up).",
    ),
];

/// Every metric name, in the order of [`METRICS`]. Dashboards, rules and the stage
/// spec may only name metrics from this list (checked by `monitoring/tests`).
pub const ALL: &[&str] = &names_of(&METRIC_TABLE);

const fn spec(
    name: &'static str,
    kind: MetricKind,
    unit: Option<metrics::Unit>,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricSpec {
    MetricSpec {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

const fn names_of<const N: usize>(table: &[MetricSpec; N]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = table[i].name;
        i += 1;
    }
    out
}

/// The spec of a metric by its full name (histograms by their base name, without
/// `_bucket`/`_sum`/`_count`).
pub fn spec_of(name: &str) -> Option<&'static MetricSpec> {
    METRICS.iter().find(|m| m.name == name)
}
