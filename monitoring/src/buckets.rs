//! Explicit histogram bucket bounds (upper bounds, `le`), one set per family of
//! measurement. DESIGN §8: histograms, not summaries, so they aggregate in Prometheus.
//!
//! Every histogram in [`crate::names::METRICS`] names one of these sets; the
//! exporter installs them per metric name, so a histogram never falls back to the
//! exporter's default summary.

/// Time a stage spends on one input, and time a producer waits on a full edge:
/// 100 µs to 60 s, roughly 1-2.5-5 per decade.
pub const PROCESSING_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Messages in one call of a batched stage: 1 to 4096 (`batch.max` at most), every
/// size up to 8, then powers of two and the steps between them.
pub const BATCH_SIZE: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The hand-over of one frame to a Python worker and back (`python` stages): 10 µs
/// (a small frame's pipes and headers) to 1 s (hundreds of MiB through shared memory).
pub const IPC_SECONDS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Source-to-sink latency of a frame: 1 ms to 5 min (a diffusion reconstruction on a
/// CPU takes minutes).
pub const LATENCY_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// One model inference: 1 ms (a tiny fixture) to 5 min (a full diffusion run on a CPU).
pub const INFERENCE_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

/// Reconstruction PSNR in dB, 0 to 60 dB, finest where image codecs and semantic
/// reconstructions usually land (20-40 dB).
pub const PSNR_DB: &[f64] = &[
    5.0, 10.0, 15.0, 18.0, 20.0, 22.0, 24.0, 26.0, 28.0, 30.0, 32.0, 34.0, 36.0, 38.0, 40.0, 45.0, 50.0, 60.0,
];

/// Scores on the unit interval where higher is better (SSIM, BLEU, cosine
/// similarity): 0 to 1, finer near 1. The `0.0` bound collects negative cosines.
pub const UNIT_INTERVAL: &[f64] = &[
    0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925,
    0.95, 0.975, 0.99, 1.0,
];

/// LPIPS distance, 0 to 1 where lower is better: finer near 0.
pub const LPIPS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0,
];

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const ALL_SETS: &[(&str, &[f64])] = &[
        ("PROCESSING_SECONDS", PROCESSING_SECONDS),
        ("BATCH_SIZE", BATCH_SIZE),
        ("IPC_SECONDS", IPC_SECONDS),
        ("LATENCY_SECONDS", LATENCY_SECONDS),
        ("INFERENCE_SECONDS", INFERENCE_SECONDS),
        ("PSNR_DB", PSNR_DB),
        ("UNIT_INTERVAL", UNIT_INTERVAL),
        ("LPIPS", LPIPS),
    ];

    #[test]
    fn every_set_is_strictly_increasing_and_finite() {
        for (name, set) in ALL_SETS {
            assert!(!set.is_empty(), "{name} is empty");
            assert!(set.iter().all(|b| b.is_finite()), "{name} has a non-finite bound");
            assert!(
                set.windows(2).all(|w| w[0] < w[1]),
                "{name} is not strictly increasing: {set:?}"
            );
        }
    }

    #[test]
    fn ranges_cover_what_the_design_asks() {
        assert_eq!(PROCESSING_SECONDS.first(), Some(&0.0001));
        assert_eq!(PROCESSING_SECONDS.last(), Some(&60.0));
        assert_eq!(PSNR_DB.last(), Some(&60.0));
        assert_eq!(UNIT_INTERVAL.first(), Some(&0.0));
        assert_eq!(UNIT_INTERVAL.last(), Some(&1.0));
        assert_eq!(LPIPS.last(), Some(&1.0));
    }
}
