//! `dataflow sweep --match-bandwidth SYSTEM`: the codec baselines get the byte budget that
//! makes their channel uses per image equal to SYSTEM's, so systems are compared at the
//! same cost.
//!
//! The target is measured once, by SYSTEM's own sweep run at the first SNR with seed 1
//! (its mean `channel_uses` per image): what a transmitter sends does not depend on the
//! channel it is sent over (captions, slices and codec payloads are made before the
//! channel; only the noise changes), so one run is the cost at every SNR. The report's
//! bandwidth table shows every system's channel uses per SNR from the sweep itself, so
//! a system whose cost did vary with the SNR is visible there.
//!
//! A baseline is a system with `codec_channel` stages: the cost of its bitstream is set by
//! `bpp` (the byte budget the codec's quality is bisected to) and the LDPC `rate` and
//! `modulation` (symbols = coded bits / bits per symbol). The sweep scales every `bpp` of
//! the system by one factor, measuring each try with a run on the sweep's images
//! (`OUT/calibrate/<system>/bpp<b>/`, with `ideal = true`: the symbol count does not
//! depend on the noise, and an ideal link decodes at once), first proportionally and then
//! by interpolation inside the bracket, until the mean channel uses per image are within
//! 2 % of the target (at most [`TRIES`] runs; the closest is kept and a miss of more than
//! 5 % is reported). Systems without `codec_channel` (deep JSCC, whose bandwidth ratio is
//! fixed by its network) keep their cost, listed in the report next to the target.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::stats::Row;
use crate::sweep::{snr_label, Runner, System};

/// A calibration try: (factor on `bpp`, mean channel uses per image).
type Try = (f64, f64);

/// Most calibration runs per baseline.
const TRIES: usize = 10;
/// A budget whose cost is this close to the target ends the search.
const GOOD: f64 = 0.02;
/// The promise: within 5 % of the target.
pub const TOLERANCE: f64 = 0.05;

/// What `--match-bandwidth` chose.
#[derive(Debug, Clone, Serialize)]
pub struct Matched {
    /// The system measured.
    pub target: String,
    /// Its mean channel uses per image.
    pub target_uses: f64,
    /// Each baseline sized to it.
    pub baselines: Vec<Baseline>,
}

/// One codec baseline sized by `--match-bandwidth`.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// System name.
    pub system: String,
    /// `(stage, bpp)` chosen for each `codec_channel` stage.
    pub bpp: Vec<(String, f64)>,
    /// Its mean channel uses per image with that budget.
    pub uses: f64,
    /// Relative difference to the target.
    pub off: f64,
}

/// Mean `channel_uses` per image of `rows`, or `None` when no row has one.
fn mean_uses(rows: &[Row]) -> Option<f64> {
    let v: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.metrics.get("channel_uses").copied())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Measures `target`, then sizes every other system's `codec_channel` budgets to it; the
/// chosen `bpp` overrides are added to those systems' `sets` and written to `OUT/bandwidth.json`.
pub fn match_bandwidth(runner: &mut Runner, systems: &mut [System], target: &str) -> Result<Matched> {
    let Some(t) = systems
        .iter()
        .position(|s| s.name == target || s.info.path.to_string_lossy() == target)
    else {
        let all: Vec<&str> = systems.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "`--match-bandwidth {target}`: no such system; the systems are {}",
            all.join(", ")
        );
    };
    let (out, snr) = (runner.out().to_path_buf(), runner.first_snr());
    let sys = systems[t].clone();
    let dir = out
        .join("runs")
        .join(&sys.folder)
        .join(format!("snr{}", snr_label(snr)))
        .join("seed1");
    let rows = runner.ensure(&sys, snr, 1, &dir, &[])?;
    let Some(target_uses) = mean_uses(&rows) else {
        bail!(
            "`--match-bandwidth {target}`: its metrics ({}) have no `channel_uses`; the channel stages of {} must report them (evaluate writes the sum its input carries)",
            dir.join(&sys.info.csv).display(),
            sys.info.path.display()
        );
    };
    eprintln!(
        "match-bandwidth: {} uses {target_uses:.0} channel uses per image",
        sys.name
    );
    let mut baselines = Vec::new();
    for (i, s) in systems.iter_mut().enumerate() {
        if i == t || s.info.codecs.is_empty() {
            continue;
        }
        let b = calibrate(runner, s, target_uses)?;
        s.sets
            .extend(s.info.codecs.iter().zip(&b.bpp).map(|(c, (_, bpp))| c.set(*bpp)));
        baselines.push(b);
    }
    let m = Matched {
        target: sys.name,
        target_uses,
        baselines,
    };
    std::fs::write(out.join("bandwidth.json"), serde_json::to_vec_pretty(&m)?)?;
    Ok(m)
}

/// Searches the factor on the `bpp` of `sys`'s codec stages that meets `target` uses per image.
fn calibrate(runner: &mut Runner, sys: &System, target: f64) -> Result<Baseline> {
    let snr = runner.first_snr();
    let base = sys.info.codecs.clone();
    let sets =
        |k: f64| -> Vec<(String, f64)> { base.iter().map(|c| (c.stage.clone(), round_bpp(c.bpp * k))).collect() };
    let mut measure = |k: f64| -> Result<f64> {
        let bpp = sets(k);
        let label: Vec<String> = bpp.iter().map(|(_, b)| format!("{b}")).collect();
        let dir = runner
            .out()
            .join("calibrate")
            .join(&sys.folder)
            .join(format!("bpp{}", label.join("_")));
        let mut extra: Vec<String> = base.iter().zip(&bpp).map(|(c, (_, b))| c.set(*b)).collect();
        extra.extend(base.iter().map(|c| format!("stage.{}.{}=true", c.stage, c.noiseless)));
        let rows = runner.ensure(sys, snr, 1, &dir, &extra)?;
        mean_uses(&rows).ok_or_else(|| {
            anyhow::anyhow!(
                "calibrating `{}` for --match-bandwidth: {} has no `channel_uses`",
                sys.name,
                dir.display()
            )
        })
    };
    let off = |m: f64| (m - target).abs() / target;
    // (factor, uses) of the best try below the target and above it.
    let (mut lo, mut hi): (Option<Try>, Option<Try>) = (None, None);
    let mut best = (1.0, measure(1.0)?);
    let mut k = 1.0;
    let mut m = best.1;
    for _ in 1..TRIES {
        if off(m) <= GOOD {
            break;
        }
        if m < target {
            lo = Some(lo.map_or((k, m), |l| if k > l.0 { (k, m) } else { l }));
        } else {
            hi = Some(hi.map_or((k, m), |h| if k < h.0 { (k, m) } else { h }));
        }
        k = match (lo, hi) {
            (Some(l), Some(h)) if h.1 > l.1 => {
                let x = l.0 + (target - l.1) * (h.0 - l.0) / (h.1 - l.1);
                // A step of the codec's quality can leave the interpolation at an end.
                if (x - l.0).abs() < 1e-3 * l.0 || (h.0 - x).abs() < 1e-3 * h.0 {
                    (l.0 * h.0).sqrt()
                } else {
                    x
                }
            }
            (Some(l), Some(h)) => (l.0 * h.0).sqrt(),
            _ => k * target / m.max(1.0),
        };
        m = measure(k)?;
        if off(m) < off(best.1) {
            best = (k, m);
        }
    }
    let b = Baseline {
        system: sys.name.clone(),
        bpp: sets(best.0),
        uses: best.1,
        off: (best.1 - target) / target,
    };
    if b.off.abs() > TOLERANCE {
        eprintln!(
            "warning: --match-bandwidth could not bring `{}` within 5 % of {target:.0} channel uses per image (closest {:.0}, {:+.1} %); the codec's quality steps are too coarse for these images",
            sys.name,
            b.uses,
            100.0 * b.off
        );
    } else {
        eprintln!(
            "match-bandwidth: {} at bpp {:?} uses {:.0} channel uses per image ({:+.1} %)",
            sys.name,
            b.bpp,
            b.uses,
            100.0 * b.off
        );
    }
    Ok(b)
}

/// Six significant digits, so folder names and `--set` values stay readable.
fn round_bpp(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(5 - x.log10().floor() as i32);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_round_to_six_digits() {
        assert_eq!(round_bpp(0.123456789), 0.123457);
        assert_eq!(round_bpp(2.0), 2.0);
        assert_eq!(round_bpp(0.000123456789), 0.000123457);
    }
}
