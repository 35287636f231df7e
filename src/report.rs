//! The sweep's plots (PNG through `plotters`, text in DejaVu Sans embedded in the
//! binary so no system font is needed) and its `index.html`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::sweep::{esc, settings_rows, ReportCell, ReportGraph, Summary};

/// A plot written for one metric.
pub struct Plot {
    /// Metric column.
    pub metric: String,
    /// Axis title.
    pub title: String,
    /// File, relative to the sweep folder.
    pub file: PathBuf,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TrueType file; a failure would only lose the labels.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Writes `<dir>/<metric>.png` for every metric of `wanted` present in `summary`.
pub fn plots(dir: &Path, summary: &[Summary], wanted: &[(&str, &str)]) -> Result<Vec<Plot>> {
    register_font();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // One colour per graph across every plot.
    let all: Vec<&str> = summary
        .iter()
        .map(|s| s.graph.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = Vec::new();
    for (metric, title) in wanted {
        let series: Vec<&Summary> = summary.iter().filter(|s| s.metric == *metric).collect();
        if series.is_empty() {
            continue;
        }
        let file = dir.join(format!("{metric}.png"));
        draw(&file, title, &series, &all).with_context(|| format!("drawing {}", file.display()))?;
        out.push(Plot {
            metric: metric.to_string(),
            title: title.to_string(),
            file: PathBuf::from("plots").join(format!("{metric}.png")),
        });
    }
    Ok(out)
}

fn draw(file: &Path, title: &str, series: &[&Summary], all: &[&str]) -> Result<()> {
    let graphs: BTreeSet<&str> = series.iter().map(|s| s.graph.as_str()).collect();
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        x0 = x0.min(s.snr);
        x1 = x1.max(s.snr);
        y0 = y0.min(s.mean - s.ci95);
        y1 = y1.max(s.mean + s.ci95);
    }
    if x1 <= x0 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let root = BitMapBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title} against SNR"), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("SNR (dB)")
        .y_desc(title)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for g in &graphs {
        let i = all.iter().position(|a| a == g).unwrap_or(0);
        let colour = Palette99::pick(i).to_rgba();
        let mut pts: Vec<&&Summary> = series.iter().filter(|s| s.graph == *g).collect();
        pts.sort_by(|a, b| a.snr.total_cmp(&b.snr));
        // CI band: upper edge left to right, lower edge back.
        let band: Vec<(f64, f64)> = pts
            .iter()
            .map(|s| (s.snr, s.mean + s.ci95))
            .chain(pts.iter().rev().map(|s| (s.snr, s.mean - s.ci95)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, colour.mix(0.18).filled())))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|s| (s.snr, s.mean)),
                colour.stroke_width(3),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(g.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
        chart
            .draw_series(pts.iter().map(|s| Circle::new((s.snr, s.mean), 4, colour.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
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

/// The first line a tool prints about its version (`heif-enc` prints it on `--version`).
fn tool_version(tool: &str) -> Option<String> {
    let out = std::process::Command::new(tool).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| format!("{tool}: {l}"))
}

/// How many images per SNR the report grid shows.
const GRID_IMAGES: usize = 4;

/// Writes `out/index.html`.
pub fn html(
    out: &Path,
    settings: &impl serde::Serialize,
    graphs: &[ReportGraph],
    cells: &[ReportCell],
    plots: &[Plot],
    summary: &[Summary],
) -> Result<()> {
    let mut h = String::new();
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>dataflow sweep</title><style>");
    h.push_str(
        "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}\
         img{max-width:256px}.plots img{max-width:680px;margin:4px}.text{font-size:12px;max-width:256px}\
         .sent{color:#555}.recv{color:#a33}",
    );
    h.push_str("</style></head><body><h1>SNR sweep</h1>");
    let _ = write!(
        h,
        "<h2>Settings</h2><table>{}<tr><th>dataflow</th><td>{}</td></tr></table>",
        settings_rows(settings),
        env!("CARGO_PKG_VERSION")
    );
    h.push_str("<h2>Graphs</h2><table><tr><th>name</th><th>file</th><th>what stands in</th></tr>");
    for g in graphs {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&g.name),
            esc(&g.path),
            esc(&g.notes.join("; "))
        );
    }
    if let Some(v) = tool_version("heif-enc") {
        let _ = write!(h, "<p>Image codec tools: <code>{}</code></p>", esc(&v));
    }
    h.push_str("</table><p>Data: <a href=\"results.csv\">results.csv</a> (a row per graph, SNR, seed and image), <a href=\"summary.csv\">summary.csv</a> (mean and 95 % CI).</p>");
    h.push_str("<h2>Plots</h2><div class=\"plots\">");
    for p in plots {
        let _ = write!(
            h,
            "<img src=\"{}\" alt=\"{}\">",
            esc(&p.file.display().to_string()),
            esc(&p.title)
        );
    }
    h.push_str("</div>");

    // Summary table of the plotted metrics.
    let plotted: BTreeSet<&str> = plots.iter().map(|p| p.metric.as_str()).collect();
    h.push_str("<h2>Means (95 % CI half-width)</h2><table><tr><th>graph</th><th>SNR (dB)</th>");
    for m in &plotted {
        let _ = write!(h, "<th>{}</th>", esc(m));
    }
    h.push_str("</tr>");
    let mut by_key: BTreeMap<(String, i64), BTreeMap<&str, &Summary>> = BTreeMap::new();
    for s in summary.iter().filter(|s| plotted.contains(s.metric.as_str())) {
        by_key
            .entry((s.graph.clone(), (s.snr * 1000.0).round() as i64))
            .or_default()
            .insert(&s.metric, s);
    }
    for ((g, snr), m) in &by_key {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td>", esc(g), *snr as f64 / 1000.0);
        for metric in &plotted {
            match m.get(metric) {
                Some(s) => {
                    let _ = write!(h, "<td>{:.4} ± {:.4}</td>", s.mean, s.ci95);
                }
                None => h.push_str("<td></td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");

    // Per SNR: original / each system's reconstruction, with the texts (seed 1).
    let snrs: Vec<String> = {
        let mut v: Vec<(f64, String)> = cells
            .iter()
            .map(|c| (c.snr.parse::<f64>().unwrap_or(0.0), c.snr.clone()))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.dedup_by(|a, b| a.1 == b.1);
        v.into_iter().map(|x| x.1).collect()
    };
    let images: Vec<String> = cells
        .iter()
        .map(|c| c.image.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(GRID_IMAGES)
        .collect();
    h.push_str("<h2>Reconstructions (seed 1)</h2>");
    for snr in &snrs {
        let _ = write!(h, "<h3>{} dB</h3><table><tr><th>original</th>", esc(snr));
        for g in graphs {
            let _ = write!(h, "<th>{}</th>", esc(&g.name));
        }
        h.push_str("</tr>");
        for img in &images {
            h.push_str("<tr>");
            let orig = graphs
                .iter()
                .filter_map(|g| g.originals.as_ref())
                .find_map(|d| find_image(d, img))
                .and_then(|p| {
                    thumb(
                        &p,
                        out,
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
            for g in graphs {
                h.push_str("<td>");
                let recon = g.recon.get(snr).and_then(|d| find_image(d, img)).and_then(|p| {
                    thumb(
                        &p,
                        out,
                        &Path::new("report").join(&g.name).join(snr).join(format!("{img}.jpg")),
                    )
                });
                if let Some(rel) = recon {
                    let _ = write!(h, "<img src=\"{}\">", esc(&rel.display().to_string()));
                }
                if let Some(c) = cells
                    .iter()
                    .find(|c| c.graph == g.name && &c.snr == snr && &c.image == img)
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
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    let file = out.join("index.html");
    std::fs::write(&file, h).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}
