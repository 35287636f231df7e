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
/// Source-to-sink latency of a frame. Labels: `graph`.
pub const PIPELINE_LATENCY_SECONDS: &str = "dataflow_pipeline_latency_seconds";
/// Time of one model inference. Labels: `model`, `provider`.
pub const MODEL_INFERENCE_SECONDS: &str = "dataflow_model_inference_seconds";
/// Bits sent over a channel. Labels: `stage`, `modulation`.
pub const CHANNEL_BITS: &str = "dataflow_channel_bits_total";
/// Bit errors after demodulation. Labels: `stage`, `modulation`.
pub const CHANNEL_BIT_ERRORS: &str = "dataflow_channel_bit_errors_total";
/// Channel SNR in dB currently configured. Labels: `stage`.
pub const CHANNEL_SNR_DB: &str = "dataflow_channel_snr_db";
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
/// Label key: graph name.
pub const LABEL_GRAPH: &str = "graph";
/// Label key: model name.
pub const LABEL_MODEL: &str = "model";
/// Label key: execution provider.
pub const LABEL_PROVIDER: &str = "provider";
/// Label key: modulation.
pub const LABEL_MODULATION: &str = "modulation";
