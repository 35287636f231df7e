//! The sweep's plots (PNG through `plotters`, text in DejaVu Sans embedded in the
//! binary so no system font is needed) and its `index.html`.
//!
//! Confidence bands are the Student-t 95 % interval of the mean over images × seeds,
//! clipped to the range the metric can take (`stats::metric_range`); a point with one
//! sample has no band. Every table states n per point. Paired differences (each system
//! minus the reference system, per image and seed) get their own table and plots.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde::Serialize;

use crate::bandwidth::Matched;
use crate::stats::{snr_key, Paired, Summary};

/// A plot written for one metric.
pub struct Plot {
    /// Metric column.
    pub metric: String,
    /// Axis title.
    pub title: String,
    /// File, relative to the sweep folder.
    pub file: PathBuf,
}

/// What the HTML report needs of each system.
pub struct ReportGraph {
    /// System name.
    pub name: String,
    /// Graph file.
    pub path: String,
    /// Folder of the originals.
    pub originals: Option<PathBuf>,
    /// `runs/<system>/snr<s>/seed1/<recon dir>` relative to the sweep folder, per SNR label.
    pub recon: BTreeMap<String, PathBuf>,
    /// What stands in for what, and the overrides that make the system.
    pub notes: Vec<String>,
}

/// One image of one system at one SNR (seed 1) for the report grid.
pub struct ReportCell {
    /// System name.
    pub graph: String,
    /// SNR label.
    pub snr: String,
    /// Image name.
    pub image: String,
    /// Text columns of the row (sent, received, corrected texts).
    pub texts: BTreeMap<String, String>,
    /// PSNR, when measured.
    pub psnr: Option<f64>,
}

/// Everything `index.html` shows.
pub struct Report<'a, S: Serialize> {
    /// The sweep folder.
    pub out: &'a Path,
    /// The sweep's settings.
    pub settings: &'a S,
    /// The systems.
    pub graphs: &'a [ReportGraph],
    /// The rows of seed 1, for the grids.
    pub cells: &'a [ReportCell],
    /// The plots written.
    pub plots: &'a [Plot],
    /// Means and CIs.
    pub summary: &'a [Summary],
    /// Paired differences against `reference`.
    pub paired: &'a [Paired],
    /// The reference system of `paired`.
    pub reference: &'a str,
    /// What `--match-bandwidth` chose.
    pub bandwidth: Option<&'a Matched>,
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// `settings` as HTML rows.
pub fn settings_rows(s: &impl Serialize) -> String {
    let v = serde_json::to_value(s).unwrap_or_default();
    let mut out = String::new();
    if let Some(m) = v.as_object() {
        for (k, v) in m {
            let _ = write!(
                out,
                "<tr><th>{}</th><td><code>{}</code></td></tr>",
                esc(k),
                esc(&v.to_string())
            );
        }
    }
    out
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TrueType file; a failure would only lose the labels.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// One point of a plotted series: its band is `low..high` (NaN: none).
struct Pt {
    series: String,
    x: f64,
    y: f64,
    low: f64,
    high: f64,
    label: Option<String>,
}

/// How a plot looks.
struct Look<'a> {
    caption: String,
    x_desc: &'a str,
    y_desc: &'a str,
    /// Join the points of a series with a line and a band (else points with whiskers).
    lines: bool,
    /// Draw y = 0 (paired differences).
    zero: bool,
    /// What y can be (the axis stays inside).
    bounds: (f64, f64),
}

/// Writes `<dir>/<metric>.png` (against SNR), `<metric>-bandwidth.png` (against channel
/// uses per pixel, when the rows have them) and `<metric>-paired.png` for every metric
/// of `wanted` present in `summary`.
pub fn plots(dir: &Path, summary: &[Summary], paired: &[Paired], wanted: &[(&str, &str)]) -> Result<Vec<Plot>> {
    register_font();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // One colour per system across every plot.
    let all: Vec<String> = summary
        .iter()
        .map(|s| s.graph.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let cupp: BTreeMap<(&str, i64), f64> = summary
        .iter()
        .filter(|s| s.metric == "channel_uses_per_pixel")
        .map(|s| ((s.graph.as_str(), snr_key(s.snr)), s.mean))
        .collect();
    let mut out = Vec::new();
    let mut emit = |name: String, title: &str, metric: &str, pts: Vec<Pt>, look: Look| -> Result<()> {
        if pts.is_empty() {
            return Ok(());
        }
        let file = dir.join(format!("{name}.png"));
        draw(&file, &look, &pts, &all).with_context(|| format!("drawing {}", file.display()))?;
        out.push(Plot {
            metric: metric.to_string(),
            title: title.to_string(),
            file: PathBuf::from("plots").join(format!("{name}.png")),
        });
        Ok(())
    };
    for (metric, title) in wanted {
        let series: Vec<&Summary> = summary.iter().filter(|s| s.metric == *metric).collect();
        let pt = |s: &Summary, x: f64, label: Option<String>| Pt {
            series: s.graph.clone(),
            x,
            y: s.mean,
            low: s.low,
            high: s.high,
            label,
        };
        let by_snr = series.iter().map(|s| pt(s, s.snr, None)).collect();
        let (lo, hi) = crate::stats::metric_range(metric);
        let look = |caption: String, x_desc, lines, zero: bool| Look {
            caption,
            x_desc,
            y_desc: title,
            lines,
            zero,
            bounds: if zero { (lo - hi, hi - lo) } else { (lo, hi) },
        };
        emit(
            metric.to_string(),
            title,
            metric,
            by_snr,
            look(format!("{title} against SNR"), "SNR (dB)", true, false),
        )?;
        let by_uses = series
            .iter()
            .filter_map(|s| {
                let x = cupp.get(&(s.graph.as_str(), snr_key(s.snr)))?;
                Some(pt(s, *x, Some(format!("{} dB", crate::sweep::snr_label(s.snr)))))
            })
            .collect();
        let caption = format!("{title} against channel uses per pixel");
        emit(
            format!("{metric}-bandwidth"),
            title,
            metric,
            by_uses,
            look(caption, "Channel uses per pixel", false, false),
        )?;
        let diffs: Vec<Pt> = paired
            .iter()
            .filter(|p| p.metric == *metric)
            .map(|p| Pt {
                series: p.graph.clone(),
                x: p.snr,
                y: p.mean,
                low: p.low,
                high: p.high,
                label: None,
            })
            .collect();
        if let Some(reference) = paired.first().map(|p| p.reference.clone()) {
            let caption = format!("{title}: system − {reference}, paired");
            emit(
                format!("{metric}-paired"),
                title,
                metric,
                diffs,
                look(caption, "SNR (dB)", true, true),
            )?;
        }
    }
    Ok(out)
}

/// The x and y ranges of `pts` (bands included), padded.
fn ranges(pts: &[Pt], zero: bool, bounds: (f64, f64)) -> ((f64, f64), (f64, f64)) {
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = if zero {
        (0.0, 0.0)
    } else {
        (f64::INFINITY, f64::NEG_INFINITY)
    };
    for p in pts {
        x0 = x0.min(p.x);
        x1 = x1.max(p.x);
        for y in [p.y, p.low, p.high].into_iter().filter(|y| y.is_finite()) {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x1 <= x0 {
        let d = (x0.abs() * 0.1).max(1e-3);
        x0 -= d;
        x1 += d;
    } else {
        let d = (x1 - x0) * 0.04;
        x0 -= d;
        x1 += d;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let (mut y0, mut y1) = ((y0 - pad).max(bounds.0), (y1 + pad).min(bounds.1));
    if y1 <= y0 {
        // A constant at a bound (no image lost anywhere): open the axis inwards.
        (y0, y1) = if y0 <= bounds.0 {
            (y0, y0 + 1e-3)
        } else {
            (y1 - 1e-3, y1)
        };
    }
    ((x0, x1), (y0, y1))
}

/// The corner of the plot where the legend covers the fewest points and band edges:
/// a legend box is about a quarter of the width and one line per series high.
fn legend_corner(pts: &[Pt], n_series: usize, x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let (w, h) = (0.3, (0.06 * n_series as f64 + 0.04).min(0.6));
    let fx = |v: f64| (v - x.0) / (x.1 - x.0);
    let fy = |v: f64| (v - y.0) / (y.1 - y.0);
    let covered = |right: bool, upper: bool| {
        pts.iter()
            .flat_map(|p| [(p.x, p.y), (p.x, p.low), (p.x, p.high)])
            .filter(|&(px, py)| px.is_finite() && py.is_finite())
            .filter(|&(px, py)| {
                let (u, v) = (fx(px), fy(py));
                (if right { u >= 1.0 - w } else { u <= w }) && (if upper { v >= 1.0 - h } else { v <= h })
            })
            .count()
    };
    [
        (SeriesLabelPosition::LowerRight, covered(true, false)),
        (SeriesLabelPosition::UpperRight, covered(true, true)),
        (SeriesLabelPosition::LowerLeft, covered(false, false)),
        (SeriesLabelPosition::UpperLeft, covered(false, true)),
    ]
    .into_iter()
    .min_by_key(|(_, n)| *n)
    .map(|(pos, _)| pos)
    .unwrap_or(SeriesLabelPosition::LowerRight)
}

fn draw(file: &Path, look: &Look, pts: &[Pt], all: &[String]) -> Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("{e}");
    let ((x0, x1), (y0, y1)) = ranges(pts, look.zero, look.bounds);
    let root = BitMapBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&look.caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(look.x_desc)
        .y_desc(look.y_desc)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(|x| e(&x))?;
    if look.zero {
        chart
            .draw_series(LineSeries::new([(x0, 0.0), (x1, 0.0)], BLACK.stroke_width(1)))
            .map_err(|x| e(&x))?;
    }
    let series: BTreeSet<&str> = pts.iter().map(|p| p.series.as_str()).collect();
    for g in &series {
        let i = all.iter().position(|a| a == g).unwrap_or(0);
        let colour = Palette99::pick(i).to_rgba();
        let mut sp: Vec<&Pt> = pts.iter().filter(|p| p.series == *g).collect();
        sp.sort_by(|a, b| a.x.total_cmp(&b.x));
        let banded: Vec<&&Pt> = sp.iter().filter(|p| p.low.is_finite() && p.high.is_finite()).collect();
        if look.lines && banded.len() > 1 {
            // CI band: upper edge left to right, lower edge back.
            let band: Vec<(f64, f64)> = banded
                .iter()
                .map(|p| (p.x, p.high))
                .chain(banded.iter().rev().map(|p| (p.x, p.low)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(band, colour.mix(0.18).filled())))
                .map_err(|x| e(&x))?;
        } else {
            chart
                .draw_series(
                    banded
                        .iter()
                        .map(|p| PathElement::new(vec![(p.x, p.low), (p.x, p.high)], colour.stroke_width(2))),
                )
                .map_err(|x| e(&x))?;
        }
        let line: Vec<(f64, f64)> = if look.lines {
            sp.iter().map(|p| (p.x, p.y)).collect()
        } else {
            vec![]
        };
        chart
            .draw_series(LineSeries::new(line, colour.stroke_width(3)))
            .map_err(|x| e(&x))?
            .label(g.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
        chart
            .draw_series(sp.iter().map(|p| Circle::new((p.x, p.y), 4, colour.filled())))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(sp.iter().filter_map(|p| {
                p.label
                    .as_ref()
                    .map(|l| Text::new(l.clone(), (p.x, p.y), ("sans-serif", 13).into_font().color(&colour)))
            }))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(legend_corner(pts, series.len(), (x0, x1), (y0, y1)))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// A thumbnail (JPEG, at most 256 px wide) of `src` at `out/rel`; `None` when `src` is unreadable.
fn thumb(src: &Path, out: &Path, rel: &Path) -> Option<PathBuf> {
    let img = image::open(src).ok()?;
    let t = img.thumbnail(256, 256).to_rgb8();
    let dst = out.join(rel);
    std::fs::create_dir_all(dst.parent()?).ok()?;
    t.save_with_format(&dst, image::ImageFormat::Jpeg).ok()?;
    Some(rel.to_path_buf())
}

fn find_image(dir: &Path, stem: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_stem().map(|s| s.to_string_lossy() == stem).unwrap_or(false))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The libheif version `heif-enc` was built with. `heif-enc` has no `--version`: its
/// usage text (`--help`) starts with ` heif-enc  libheif version: 1.15.1`; without that
/// line, Debian's package database names the version of `libheif-examples`.
fn heif_version() -> Option<String> {
    let help = std::process::Command::new("heif-enc").arg("--help").output().ok();
    let from_help = help.and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        text.lines()
            .find_map(|l| l.split_once("libheif version:").map(|(_, v)| v.trim().to_string()))
            .filter(|v| !v.is_empty())
    });
    if let Some(v) = from_help {
        return Some(format!("heif-enc (libheif {v})"));
    }
    let o = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "libheif-examples"])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !v.is_empty()).then(|| format!("heif-enc (libheif-examples {v})"))
}

/// How many images per SNR the report grid shows.
const GRID_IMAGES: usize = 4;

/// Writes `out/index.html`.
pub fn html<S: Serialize>(r: &Report<S>) -> Result<()> {
    let mut h = String::new();
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>dataflow sweep</title><style>");
    h.push_str(
        "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin-bottom:1em}\
         td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}\
         td.num{text-align:right;font-variant-numeric:tabular-nums}\
         img{max-width:256px}.plots img{max-width:680px;margin:4px}.text{font-size:12px;max-width:256px}\
         .sent{color:#555}.recv{color:#a33}.note{color:#555;max-width:60em}",
    );
    h.push_str("</style></head><body><h1>SNR sweep</h1>");
    let _ = write!(
        h,
        "<h2>Settings</h2><table>{}<tr><th>dataflow</th><td>{}</td></tr></table>",
        settings_rows(r.settings),
        env!("CARGO_PKG_VERSION")
    );
    h.push_str("<h2>Systems</h2><table><tr><th>name</th><th>file</th><th>what stands in</th></tr>");
    for g in r.graphs {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&g.name),
            esc(&g.path),
            esc(&g.notes.join("; "))
        );
    }
    h.push_str("</table>");
    if r.graphs
        .iter()
        .any(|g| g.notes.iter().any(|n| n.contains("HEIF") || n.contains("AVIF")))
    {
        if let Some(v) = heif_version() {
            let _ = write!(h, "<p>Image codec tool: <code>{}</code></p>", esc(&v));
        }
    }
    h.push_str("<p>Data: <a href=\"results.csv\">results.csv</a> (a row per system, SNR, seed and image), <a href=\"summary.csv\">summary.csv</a> (mean, 95 % CI, n and seeds per point), <a href=\"paired.csv\">paired.csv</a> (differences to the reference).</p>");
    bandwidth_table(&mut h, r);
    h.push_str("<h2>Plots</h2><p class=\"note\">Bands: Student-t 95 % confidence interval of the mean over images × seeds, clipped to the values the metric can take; n per point is in the tables below. A point with one sample has no band.</p><div class=\"plots\">");
    for p in r.plots {
        let _ = write!(
            h,
            "<img src=\"{}\" alt=\"{}\">",
            esc(&p.file.display().to_string()),
            esc(&p.title)
        );
    }
    h.push_str("</div>");
    means_table(&mut h, r);
    paired_table(&mut h, r);
    grids(&mut h, r);
    h.push_str("</body></html>\n");
    let file = r.out.join("index.html");
    std::fs::write(&file, h).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// The metrics plotted, in plot order.
fn plotted<S: Serialize>(r: &Report<S>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for p in r.plots {
        if !v.contains(&p.metric) {
            v.push(p.metric.clone());
        }
    }
    v
}

/// A cell `mean ± half-width`, `mean [low, high]` when clipping made the interval
/// lopsided, or `mean` alone without an interval (one sample).
fn interval(mean: f64, low: f64, high: f64) -> String {
    if !(low.is_finite() && high.is_finite()) {
        format!("{mean:.4}")
    } else if ((mean - low) - (high - mean)).abs() <= 1e-9 * (1.0 + mean.abs()) {
        format!("{mean:.4} ± {:.4}", high - mean)
    } else {
        format!("{mean:.4} [{low:.4}, {high:.4}]")
    }
}

/// Channel uses per image and per pixel of every system, and what `--match-bandwidth` chose.
fn bandwidth_table<S: Serialize>(h: &mut String, r: &Report<S>) {
    let uses: Vec<&Summary> = r.summary.iter().filter(|s| s.metric == "channel_uses").collect();
    if uses.is_empty() {
        return;
    }
    h.push_str("<h2>Bandwidth</h2>");
    if let Some(m) = r.bandwidth {
        let _ = write!(
            h,
            "<p class=\"note\"><code>--match-bandwidth {}</code>: {:.0} channel uses per image (measured at the first SNR, seed 1). ",
            esc(&m.target),
            m.target_uses
        );
        for b in &m.baselines {
            let bpp: Vec<String> = b.bpp.iter().map(|(id, v)| format!("{id}.bpp = {v}")).collect();
            let _ = write!(
                h,
                "{}: {} → {:.0} ({:+.1} %{}). ",
                esc(&b.system),
                esc(&bpp.join(", ")),
                b.uses,
                100.0 * b.off,
                if b.off.abs() > crate::bandwidth::TOLERANCE {
                    ", outside 5 %"
                } else {
                    ""
                }
            );
        }
        h.push_str("Systems without <code>codec_channel</code> keep their own cost.</p>");
    }
    h.push_str(
        "<table><tr><th>system</th><th>SNR (dB)</th><th>channel uses per image</th><th>per pixel</th><th>n</th></tr>",
    );
    for s in uses {
        let per_pixel = r
            .summary
            .iter()
            .find(|p| p.metric == "channel_uses_per_pixel" && p.graph == s.graph && p.snr == s.snr)
            .map(|p| format!("{:.4}", p.mean))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.0}</td><td class=\"num\">{per_pixel}</td><td class=\"num\">{}</td></tr>",
            esc(&s.graph),
            crate::sweep::snr_label(s.snr),
            s.mean,
            s.n
        );
    }
    h.push_str("</table>");
}

/// Means with their clipped 95 % CI, n and seeds per point.
fn means_table<S: Serialize>(h: &mut String, r: &Report<S>) {
    let plotted = plotted(r);
    h.push_str("<h2>Means (95 % CI)</h2><table><tr><th>system</th><th>SNR (dB)</th><th>seeds</th><th>n</th>");
    for m in &plotted {
        let _ = write!(h, "<th>{}</th>", esc(m));
    }
    h.push_str("</tr>");
    let mut by_key: BTreeMap<(String, i64), BTreeMap<&str, &Summary>> = BTreeMap::new();
    for s in r.summary.iter().filter(|s| plotted.contains(&s.metric)) {
        by_key
            .entry((s.graph.clone(), snr_key(s.snr)))
            .or_default()
            .insert(&s.metric, s);
    }
    for ((g, snr), m) in &by_key {
        let first = m.values().next();
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
            esc(g),
            *snr as f64 / 1000.0,
            first.map(|s| s.seeds).unwrap_or(0),
            m.values().map(|s| s.n).max().unwrap_or(0)
        );
        for metric in &plotted {
            match m.get(metric.as_str()) {
                Some(s) => {
                    let _ = write!(h, "<td class=\"num\">{}</td>", interval(s.mean, s.low, s.high));
                }
                None => h.push_str("<td></td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// Paired differences against the reference system.
fn paired_table<S: Serialize>(h: &mut String, r: &Report<S>) {
    if r.paired.is_empty() {
        return;
    }
    let plotted = plotted(r);
    let _ = write!(
        h,
        "<h2>Paired differences: system − {} (95 % CI)</h2><p class=\"note\">Per image and seed (every system ran on the same images with the same seeds), then the mean and Student-t interval of the differences; n is the number of pairs. An interval that excludes 0 is a difference the sweep has shown.</p>",
        esc(r.reference)
    );
    h.push_str("<table><tr><th>system</th><th>SNR (dB)</th><th>n</th>");
    for m in &plotted {
        let _ = write!(h, "<th>{}</th>", esc(m));
    }
    h.push_str("</tr>");
    let mut by_key: BTreeMap<(String, i64), BTreeMap<&str, &Paired>> = BTreeMap::new();
    for p in r.paired.iter().filter(|p| plotted.contains(&p.metric)) {
        by_key
            .entry((p.graph.clone(), snr_key(p.snr)))
            .or_default()
            .insert(&p.metric, p);
    }
    for ((g, snr), m) in &by_key {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
            esc(g),
            *snr as f64 / 1000.0,
            m.values().map(|p| p.n).max().unwrap_or(0)
        );
        for metric in &plotted {
            match m.get(metric.as_str()) {
                Some(p) => {
                    let _ = write!(h, "<td class=\"num\">{}</td>", interval(p.mean, p.low, p.high));
                }
                None => h.push_str("<td></td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// Per SNR: original / each system's reconstruction, with the texts (seed 1).
fn grids<S: Serialize>(h: &mut String, r: &Report<S>) {
    let snrs: Vec<String> = {
        let mut v: Vec<(f64, String)> = r
            .cells
            .iter()
            .map(|c| (c.snr.parse::<f64>().unwrap_or(0.0), c.snr.clone()))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.dedup_by(|a, b| a.1 == b.1);
        v.into_iter().map(|x| x.1).collect()
    };
    let images: Vec<String> = r
        .cells
        .iter()
        .map(|c| c.image.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(GRID_IMAGES)
        .collect();
    h.push_str("<h2>Reconstructions (seed 1)</h2>");
    for snr in &snrs {
        let _ = write!(h, "<h3>{} dB</h3><table><tr><th>original</th>", esc(snr));
        for g in r.graphs {
            let _ = write!(h, "<th>{}</th>", esc(&g.name));
        }
        h.push_str("</tr>");
        for img in &images {
            h.push_str("<tr>");
            let orig = r
                .graphs
                .iter()
                .filter_map(|g| g.originals.as_ref())
                .find_map(|d| find_image(d, img))
                .and_then(|p| {
                    thumb(
                        &p,
                        r.out,
                        &Path::new("report").join("original").join(format!("{img}.jpg")),
                    )
                });
            match orig {
                Some(rel) => {
                    let _ = write!(
                        h,
                        "<td><img src=\"{}\"><br>{}</td>",
                        esc(&rel.display().to_string()),
                        esc(img)
                    );
                }
                None => {
                    let _ = write!(h, "<td>{}</td>", esc(img));
                }
            }
            for g in r.graphs {
                grid_cell(h, r, g, snr, img);
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
}

fn grid_cell<S: Serialize>(h: &mut String, r: &Report<S>, g: &ReportGraph, snr: &str, img: &str) {
    h.push_str("<td>");
    let folder: String = g
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let recon = g.recon.get(snr).and_then(|d| find_image(d, img)).and_then(|p| {
        thumb(
            &p,
            r.out,
            &Path::new("report").join(folder).join(snr).join(format!("{img}.jpg")),
        )
    });
    if let Some(rel) = recon {
        let _ = write!(h, "<img src=\"{}\">", esc(&rel.display().to_string()));
    }
    if let Some(c) = r
        .cells
        .iter()
        .find(|c| c.graph == g.name && c.snr == snr && c.image == img)
    {
        if let Some(p) = c.psnr {
            let _ = write!(h, "<br>PSNR {p:.2} dB");
        }
        for (key, class, label) in [
            ("sent_texts", "sent", "sent"),
            ("sent", "sent", "sent"),
            ("texts", "recv", "received"),
            ("text", "recv", "received"),
            ("corrected", "", "corrected"),
        ] {
            if let Some(t) = c.texts.get(key) {
                let _ = write!(h, "<div class=\"text {class}\"><b>{label}:</b> {}</div>", esc(t));
            }
        }
    }
    h.push_str("</td>");
}
