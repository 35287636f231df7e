//! `sheet`: a side-by-side picture of each frame for people to look at:
//! original | object slice | reconstruction, and under them the sent, received
//! and corrected texts and the frame's metrics. Adds the `sheet` image field
//! (write it with `image_sink` and `field = "sheet"`).
//!
//! Text is set in DejaVu Sans (the font the binary already embeds for its plots, crate
//! `dejavu`), rasterised with `ab_glyph`. Each header is drawn inside its own panel, and
//! a panel is never narrower than its header (a lost object slice used to leave a narrow
//! panel whose header ran over the next one). When the frame carries `objects` (from
//! `detect`, carried on by `evaluate`), their boxes and class names are drawn on the
//! original.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use dataflow_engine::{
    BuildContext, Built, Fields, Image, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value,
};
use dataflow_engine::{Field, FieldType};
use dataflow_models::detect::{self, Detection};
use image::{imageops, Rgb, RgbImage};
use schemars::JsonSchema;
use serde::Deserialize;

/// Keys of `sheet`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SheetConfig {
    /// Height of the picture row in pixels.
    #[serde(default = "default_height")]
    pub height: u32,
}

fn default_height() -> u32 {
    256
}

/// The `sheet` kind.
pub struct Sheet;

struct Run {
    height: u32,
    pen: Pen,
}

const BG: Rgb<u8> = Rgb([250, 250, 250]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const BOX: Rgb<u8> = Rgb([255, 140, 0]);
const GAP: u32 = 8;
/// Text size in pixels (em height).
const TEXT_PX: f32 = 16.0;
/// Height of one line of text.
const LINE_H: u32 = 20;

/// DejaVu Sans at [`TEXT_PX`].
struct Pen {
    font: FontRef<'static>,
    scale: PxScale,
}

impl Pen {
    fn new() -> Result<Pen, StageError> {
        let font = FontRef::try_from_slice(dejavu::sans::regular())
            .map_err(|e| StageError::new("font", format!("the embedded DejaVu Sans cannot be read: {e}")))?;
        Ok(Pen {
            font,
            scale: PxScale::from(TEXT_PX),
        })
    }

    /// Width of `text` in pixels.
    fn width(&self, text: &str) -> u32 {
        let f = self.font.as_scaled(self.scale);
        text.chars()
            .map(|c| f.h_advance(self.font.glyph_id(c)))
            .sum::<f32>()
            .ceil() as u32
    }

    /// Draws `text` with its top at `y`, clipped to `x..x_max`.
    fn draw(&self, canvas: &mut RgbImage, x: u32, y: u32, x_max: u32, text: &str, ink: Rgb<u8>) {
        let f = self.font.as_scaled(self.scale);
        let baseline = y as f32 + f.ascent();
        let mut caret = x as f32;
        let x_max = x_max.min(canvas.width());
        for c in text.chars() {
            let id = self.font.glyph_id(c);
            let glyph = id.with_scale_and_position(self.scale, ab_glyph::point(caret, baseline));
            caret += f.h_advance(id);
            let Some(outline) = self.font.outline_glyph(glyph) else {
                continue;
            };
            let b = outline.px_bounds();
            outline.draw(|gx, gy, cov| {
                let (px, py) = (b.min.x as i64 + i64::from(gx), b.min.y as i64 + i64::from(gy));
                if px >= i64::from(x) && px < i64::from(x_max) && py >= 0 && py < i64::from(canvas.height()) {
                    blend(canvas, px as u32, py as u32, ink, cov);
                }
            });
        }
    }

    /// `text` cut into lines no wider than `width` pixels.
    fn wrap(&self, text: &str, width: u32) -> Vec<String> {
        let mut lines = Vec::new();
        let mut line = String::new();
        for word in text.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if !line.is_empty() && self.width(&candidate) > width {
                lines.push(std::mem::replace(&mut line, word.to_string()));
            } else {
                line = candidate;
            }
        }
        if !line.is_empty() {
            lines.push(line);
        }
        lines
    }
}

fn blend(canvas: &mut RgbImage, x: u32, y: u32, ink: Rgb<u8>, coverage: f32) {
    let a = coverage.clamp(0.0, 1.0);
    let p = canvas.get_pixel_mut(x, y);
    for (v, &i) in p.0.iter_mut().zip(ink.0.iter()) {
        *v = (f32::from(i) * a + f32::from(*v) * (1.0 - a)).round() as u8;
    }
}

fn fit(img: &RgbImage, h: u32) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if w0 == 0 || h0 == 0 {
        return RgbImage::from_pixel(h, h, Rgb([200, 200, 200]));
    }
    let w = ((u64::from(w0) * u64::from(h)) / u64::from(h0)).max(1) as u32;
    imageops::resize(img, w, h, imageops::FilterType::Triangle)
}

fn checker_under(slice: &image::RgbaImage) -> RgbImage {
    RgbImage::from_fn(slice.width(), slice.height(), |x, y| {
        let c = if ((x / 8) + (y / 8)) % 2 == 0 { 205.0 } else { 235.0 };
        let p = slice.get_pixel(x, y);
        let a = f32::from(p[3]) / 255.0;
        let mix = |v: u8| (f32::from(v) * a + c * (1.0 - a)).round() as u8;
        Rgb([mix(p[0]), mix(p[1]), mix(p[2])])
    })
}

/// A 2-pixel rectangle outline, clipped to the canvas.
fn draw_rect(canvas: &mut RgbImage, (x0, y0, x1, y1): (u32, u32, u32, u32), colour: Rgb<u8>) {
    let (w, h) = canvas.dimensions();
    let mut put = |x: u32, y: u32| {
        if x < w && y < h {
            canvas.put_pixel(x, y, colour);
        }
    };
    for t in 0..2 {
        for x in x0..=x1 {
            put(x, y0 + t);
            put(x, y1.saturating_sub(t));
        }
        for y in y0..=y1 {
            put(x0 + t, y);
            put(x1.saturating_sub(t), y);
        }
    }
}

/// Draws each detection's box, then its "class score" label at the box's top left, moved
/// down where it would cover an earlier label.
fn draw_objects(pen: &Pen, panel: &mut RgbImage, objects: &[Detection], scale: f64) {
    let s = |v: u32| (f64::from(v) * scale).round() as u32;
    let mut placed: Vec<(u32, u32, u32)> = Vec::new(); // (x0, x1, y) of each label
    for d in objects {
        let [x, y, w, h] = d.bbox;
        let (x0, y0) = (s(x), s(y));
        let (x1, y1) = (s(x + w).saturating_sub(1).max(x0), s(y + h).saturating_sub(1).max(y0));
        draw_rect(panel, (x0, y0, x1, y1), BOX);
    }
    for d in objects {
        let [x, y, ..] = d.bbox;
        let (x0, mut ly) = (s(x), s(y).min(panel.height().saturating_sub(LINE_H)));
        let label = format!("{} {:.2}", d.class, d.score);
        let lw = pen.width(&label) + 6;
        while placed
            .iter()
            .any(|&(a, b, py)| x0 < b && a < x0 + lw && ly < py + LINE_H && py < ly + LINE_H)
        {
            ly += LINE_H;
        }
        placed.push((x0, x0 + lw, ly));
        for yy in ly..(ly + LINE_H).min(panel.height()) {
            for xx in x0..(x0 + lw).min(panel.width()) {
                panel.put_pixel(xx, yy, BOX);
            }
        }
        pen.draw(panel, x0 + 3, ly + 1, panel.width(), &label, INK);
    }
}

fn texts_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Texts(t)) => t.iter().map(|s| s.clone().unwrap_or_else(|| "<lost>".into())).collect(),
        Some(Value::Text(t)) => vec![t.to_string()],
        _ => Vec::new(),
    }
}

impl Run {
    /// The picture row: (header, image) per panel, each at least as wide as its header.
    fn panels(&self, f: &Fields) -> Vec<(String, RgbImage)> {
        let h = self.height;
        let mut panels: Vec<(String, RgbImage)> = Vec::new();
        if let Some(o) = f.image("original") {
            let rgb = o.to_rgb();
            let mut panel = fit(&rgb, h);
            let objects = f
                .text("objects")
                .and_then(|t| detect::from_json(t).ok())
                .unwrap_or_default();
            if rgb.height() > 0 {
                draw_objects(&self.pen, &mut panel, &objects, f64::from(h) / f64::from(rgb.height()));
            }
            panels.push(("original".into(), panel));
        }
        match f.image("slice") {
            Some(s) => panels.push(("object slice".into(), fit(&checker_under(&s.to_rgba()), h))),
            None => {
                let lost = f.number("slice_lost").is_some_and(|v| v > 0.0);
                let label = if lost {
                    "object slice: lost"
                } else {
                    "object slice: none"
                };
                let w = (h / 2).max(self.pen.width(label) + GAP);
                panels.push((label.into(), RgbImage::from_pixel(w, h, Rgb([220, 220, 220]))));
            }
        }
        if let Some(r) = f.image("image") {
            panels.push(("reconstruction".into(), fit(&r.to_rgb(), h)));
        }
        for (label, p) in &mut panels {
            let need = self.pen.width(label) + 2;
            if p.width() < need {
                let mut wider = RgbImage::from_pixel(need, p.height(), BG);
                imageops::replace(&mut wider, p, 0, 0);
                *p = wider;
            }
        }
        panels
    }

    /// The lines under the pictures: texts per part, then the metrics.
    fn lines(&self, f: &Fields, width: u32) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        let sent = texts_of(f.get("sent_texts").or(f.get("sent")));
        let recv = texts_of(f.get("texts").or(f.get("text")));
        let corr = texts_of(f.get("corrected"));
        for k in 0..sent.len().max(recv.len()).max(corr.len()) {
            for (label, v) in [("sent", &sent), ("received", &recv), ("corrected", &corr)] {
                if let Some(t) = v.get(k) {
                    lines.extend(self.pen.wrap(&format!("{label} {}: {t}", k + 1), width));
                }
            }
            lines.push(String::new());
        }
        let metric = |k: &str| f.number(k).map(|v| format!("{k} {v:.4}"));
        let m: Vec<String> = [
            "psnr_db",
            "ssim",
            "cosine",
            "bleu4",
            "bleu4_received",
            "ber",
            "slice_lost",
            "detection_f1",
        ]
        .iter()
        .filter_map(|k| metric(k))
        .collect();
        lines.extend(self.pen.wrap(&m.join("   "), width));
        lines
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let panels = self.panels(&msg.fields);
        let width = (panels.iter().map(|p| p.1.width()).sum::<u32>() + GAP * (panels.len() as u32 + 1)).max(640);
        let lines = self.lines(&msg.fields, width - 2 * GAP);
        let top = GAP + LINE_H;
        let height = top + self.height + GAP + lines.len() as u32 * LINE_H + GAP;
        let mut canvas = RgbImage::from_pixel(width, height, BG);
        let mut x = GAP;
        for (label, p) in &panels {
            self.pen.draw(&mut canvas, x, GAP, x + p.width(), label, INK);
            imageops::replace(&mut canvas, p, i64::from(x), i64::from(top));
            x += p.width() + GAP;
        }
        let mut y = top + self.height + GAP;
        for l in &lines {
            self.pen.draw(&mut canvas, GAP, y, width - GAP, l, INK);
            y += LINE_H;
        }
        let mut fields = msg.fields.clone();
        fields.insert("sheet", Value::Image(Image::from_rgb(canvas)));
        out.emit(msg.derive(fields));
        Ok(())
    }
}

impl StageKind for Sheet {
    type Config = SheetConfig;
    const NAME: &'static str = "sheet";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str =
        "Composes original (with detected boxes) | object slice | reconstruction with the texts and metrics (field `sheet`).";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::forwarding("out").with("sheet", FieldType::Image)],
            requires: vec![Field::new("image", FieldType::Image)],
            heavy: true,
            ..Ports::default()
        }
    }

    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        if c.height < 16 {
            return Err(StageError::input("`height` must be at least 16"));
        }
        Ok(Built::Stage(Box::new(Run {
            height: c.height,
            pen: Pen::new()?,
        })))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_inside_its_box_and_wraps_by_width() {
        let pen = Pen::new().unwrap();
        let mut canvas = RgbImage::from_pixel(200, 30, BG);
        pen.draw(&mut canvas, 10, 5, 60, "object slice: lost", INK);
        let inked = |x0: u32, x1: u32| (x0..x1).any(|x| (0..30).any(|y| canvas.get_pixel(x, y) != &BG));
        assert!(inked(10, 60), "nothing drawn");
        assert!(!inked(60, 200), "text ran past its clip");
        assert!(!inked(0, 10));
        let lines = pen.wrap("a person covers most of this part; a tie is in the middle", 150);
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| pen.width(l) <= 150 || !l.contains(' ')));
    }
}
