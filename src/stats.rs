//! The numbers of a sweep: its rows, the mean and 95 % confidence interval per point
//! (clipped to the range the metric can take), and paired differences against a
//! reference system. Used by `sweep` (stopping rules, CSVs) and `report` (plots, tables).

use std::collections::BTreeMap;

/// One row of results: the key and every metric.
#[derive(Debug, Clone)]
pub struct Row {
    /// System: the graph name, with its `--vary` values when varied.
    pub graph: String,
    /// SNR in dB.
    pub snr: f64,
    /// Graph seed of the run.
    pub seed: u32,
    /// Image (the metrics CSV's `name`, else its `frame`).
    pub image: String,
    /// Numeric columns.
    pub metrics: BTreeMap<String, f64>,
    /// Text columns.
    pub texts: BTreeMap<String, String>,
}

/// The SNR as an integer key (millidecibels), so points group exactly.
pub fn snr_key(snr: f64) -> i64 {
    (snr * 1000.0).round() as i64
}

/// Mean and 95 % confidence interval of one metric for one system at one SNR.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// System name.
    pub graph: String,
    /// SNR in dB.
    pub snr: f64,
    /// Metric column.
    pub metric: String,
    /// Samples (images × seeds).
    pub n: usize,
    /// Seeds run at this point.
    pub seeds: u32,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// Half-width of the 95 % confidence interval of the mean (Student t); NaN when n < 2.
    pub ci95: f64,
    /// Lower end of the interval, clipped to the metric's range; NaN when n < 2.
    pub low: f64,
    /// Upper end of the interval, clipped to the metric's range; NaN when n < 2.
    pub high: f64,
}

/// Two-sided 97.5 % quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

/// The values a metric can take: `(lowest, highest)`. Confidence bands are clipped to
/// it, so a band of SSIM never passes 1 and one of PSNR never drops below 0 dB.
pub fn metric_range(metric: &str) -> (f64, f64) {
    const UNIT: &[&str] = &[
        "cosine",
        "object_recall",
        "detection_f1",
        "image_lost",
        "over_budget",
        "ber",
    ];
    if UNIT.contains(&metric) || metric.starts_with("bleu") {
        (0.0, 1.0)
    } else if metric == "ssim" || metric == "clip_cosine" {
        (-1.0, 1.0)
    } else if metric.starts_with("psnr")
        || metric.starts_with("wer")
        || metric.starts_with("cer")
        || metric.starts_with("channel_uses")
        || metric == "lpips"
        || ["bits", "bytes", "errors", "blocks", "iterations", "quality"]
            .iter()
            .any(|w| metric.contains(w))
    {
        (0.0, f64::INFINITY)
    } else {
        (f64::NEG_INFINITY, f64::INFINITY)
    }
}

/// `mean ± ci` clipped to `[lo, hi]`; NaN ends when there is no interval (`f64::max`
/// would turn a NaN into the bound).
fn clipped(mean: f64, ci: f64, lo: f64, hi: f64) -> (f64, f64) {
    if ci.is_nan() {
        (f64::NAN, f64::NAN)
    } else {
        ((mean - ci).max(lo), (mean + ci).min(hi))
    }
}

/// Mean, sample standard deviation and 95 % CI half-width (NaN when n < 2).
pub fn mean_ci(v: &[f64]) -> (f64, f64, f64) {
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0, f64::NAN);
    }
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    (mean, std, t975(n - 1) * std / (n as f64).sqrt())
}

/// A summary per (system, SNR, metric) of `rows`; `seeds` gives the seeds each point took.
pub fn summarise(rows: &[Row], metrics: &[String], seeds: &BTreeMap<(String, i64), u32>) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, i64, String), Vec<f64>> = BTreeMap::new();
    for r in rows {
        for m in metrics {
            if let Some(&v) = r.metrics.get(m) {
                if v.is_finite() {
                    groups
                        .entry((r.graph.clone(), snr_key(r.snr), m.clone()))
                        .or_default()
                        .push(v);
                }
            }
        }
    }
    groups
        .into_iter()
        .map(|((graph, snr, metric), v)| {
            let (mean, std, ci95) = mean_ci(&v);
            let (lo, hi) = metric_range(&metric);
            let (low, high) = clipped(mean, ci95, lo, hi);
            Summary {
                seeds: seeds.get(&(graph.clone(), snr)).copied().unwrap_or(0),
                graph,
                snr: snr as f64 / 1000.0,
                n: v.len(),
                mean,
                std,
                ci95,
                low,
                high,
                metric,
            }
        })
        .collect()
}

/// Mean and 95 % CI of the paired difference `system − reference` of one metric at one
/// SNR, over the (seed, image) pairs both have.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// System name.
    pub graph: String,
    /// Reference system.
    pub reference: String,
    /// SNR in dB.
    pub snr: f64,
    /// Metric column.
    pub metric: String,
    /// Pairs.
    pub n: usize,
    /// Mean difference.
    pub mean: f64,
    /// Lower end of the 95 % CI (NaN when n < 2), clipped to what a difference can be.
    pub low: f64,
    /// Upper end of the 95 % CI (NaN when n < 2).
    pub high: f64,
}

/// Paired differences of every system but `reference` against it, per SNR and metric.
/// Every run is paired by design (same images, same seeds), so the difference's CI is
/// much tighter than the two systems' bands suggest when both vary with the image.
pub fn paired(rows: &[Row], metrics: &[String], reference: &str) -> Vec<Paired> {
    type Key = (i64, u32, String);
    let mut by_system: BTreeMap<&str, BTreeMap<Key, &Row>> = BTreeMap::new();
    for r in rows {
        by_system
            .entry(&r.graph)
            .or_default()
            .insert((snr_key(r.snr), r.seed, r.image.clone()), r);
    }
    let Some(base) = by_system.get(reference) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (system, keyed) in by_system.iter().filter(|(s, _)| **s != reference) {
        for m in metrics {
            let mut diffs: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
            for (k, r) in keyed {
                let (Some(a), Some(b)) = (r.metrics.get(m), base.get(k).and_then(|b| b.metrics.get(m))) else {
                    continue;
                };
                if (a - b).is_finite() {
                    diffs.entry(k.0).or_default().push(a - b);
                }
            }
            let (lo, hi) = metric_range(m);
            let span = hi - lo;
            for (snr, d) in diffs {
                let (mean, _, ci) = mean_ci(&d);
                let (low, high) = clipped(mean, ci, -span, span);
                out.push(Paired {
                    graph: system.to_string(),
                    reference: reference.to_string(),
                    snr: snr as f64 / 1000.0,
                    metric: m.clone(),
                    n: d.len(),
                    mean,
                    low,
                    high,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(graph: &str, image: &str, metric: &str, v: f64) -> Row {
        Row {
            graph: graph.into(),
            snr: 3.0,
            seed: 1,
            image: image.into(),
            metrics: BTreeMap::from([(metric.to_string(), v)]),
            texts: BTreeMap::new(),
        }
    }

    #[test]
    fn confidence_intervals_use_student_t() {
        let rows: Vec<Row> = [1.0, 2.0, 3.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| row("g", &i.to_string(), "psnr_db", v))
            .collect();
        let s = summarise(&rows, &["psnr_db".into()], &BTreeMap::new());
        assert_eq!(s.len(), 1);
        assert!((s[0].mean - 2.0).abs() < 1e-12);
        assert!((s[0].std - 1.0).abs() < 1e-12);
        assert!((s[0].ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn bands_stay_inside_what_the_metric_can_take() {
        // Two images, far apart: the Student-t interval runs past 1 and below 0.
        let rows = vec![row("g", "a", "ssim", 0.95), row("g", "b", "ssim", 0.15)];
        let s = &summarise(&rows, &["ssim".into()], &BTreeMap::new())[0];
        assert!(s.mean + s.ci95 > 1.0 && s.mean - s.ci95 < -1.0);
        assert_eq!((s.low, s.high), (-1.0, 1.0));
        let rows = vec![row("g", "a", "psnr_db", 30.0), row("g", "b", "psnr_db", 8.0)];
        let s = &summarise(&rows, &["psnr_db".into()], &BTreeMap::new())[0];
        assert_eq!(s.low, 0.0);
        assert!(s.high > 30.0);
        // One sample has no interval at all rather than a zero-width one.
        let s = &summarise(&rows[..1], &["psnr_db".into()], &BTreeMap::new())[0];
        assert!(s.low.is_nan() && s.high.is_nan());
    }

    #[test]
    fn paired_differences_cancel_what_both_systems_share() {
        // Image b is hard for both systems; b's offset cancels in the differences.
        let rows = vec![
            row("ref", "a", "psnr_db", 30.0),
            row("ref", "b", "psnr_db", 10.0),
            row("ref", "c", "psnr_db", 20.0),
            row("new", "a", "psnr_db", 31.0),
            row("new", "b", "psnr_db", 11.5),
            row("new", "c", "psnr_db", 20.5),
        ];
        let p = paired(&rows, &["psnr_db".into()], "ref");
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].graph.as_str(), p[0].n), ("new", 3));
        assert!((p[0].mean - 1.0).abs() < 1e-12);
        assert!(p[0].low > -1.0 && p[0].high < 3.0, "{p:?}");
    }
}
