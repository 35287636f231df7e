//! `sheet`: a side-by-side picture of each frame for people to look at:
//! original | object slice | reconstruction, and under them the sent, received
//! and corrected texts and the frame's metrics. Adds the `sheet` image field
//! (write it with `image_sink` and `field = "sheet"`).

use dataflow_engine::{
    BuildContext, Built, Image, Input, OutPort, Outputs, Ports, Role, Stage, StageError, StageKind, Value,
};
use font8x8::UnicodeFonts;
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
}

const BG: Rgb<u8> = Rgb([250, 250, 250]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const SCALE: u32 = 2;
const GAP: u32 = 8;

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

fn draw_text(canvas: &mut RgbImage, x0: u32, y0: u32, text: &str) {
    let mut x = x0;
    for ch in text.chars() {
        let glyph = font8x8::BASIC_FONTS.get(ch).or_else(|| font8x8::BASIC_FONTS.get('?'));
        if let Some(g) = glyph {
            for (row, bits) in g.iter().enumerate() {
                for col in 0..8u32 {
                    if bits & (1 << col) != 0 {
                        for dy in 0..SCALE {
                            for dx in 0..SCALE {
                                let (px, py) = (x + col * SCALE + dx, y0 + row as u32 * SCALE + dy);
                                if px < canvas.width() && py < canvas.height() {
                                    canvas.put_pixel(px, py, INK);
                                }
                            }
                        }
                    }
                }
            }
        }
        x += 8 * SCALE;
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn texts_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Texts(t)) => t.iter().map(|s| s.clone().unwrap_or_else(|| "<lost>".into())).collect(),
        Some(Value::Text(t)) => vec![t.to_string()],
        _ => Vec::new(),
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let f = &msg.fields;
        let h = self.height;
        let mut panels: Vec<(String, RgbImage)> = Vec::new();
        if let Some(o) = f.image("original") {
            panels.push(("original".into(), fit(&o.to_rgb(), h)));
        }
        match f.image("slice") {
            Some(s) => panels.push(("object slice".into(), fit(&checker_under(&s.to_rgba()), h))),
            None => panels.push((
                "object slice: none".into(),
                RgbImage::from_pixel(h / 2, h, Rgb([220, 220, 220])),
            )),
        }
        if let Some(r) = f.image("image") {
            panels.push(("reconstruction".into(), fit(&r.to_rgb(), h)));
        }
        let width = (panels.iter().map(|p| p.1.width()).sum::<u32>() + GAP * (panels.len() as u32 + 1)).max(640);
        let chars = ((width - 2 * GAP) / (8 * SCALE)) as usize;
        let mut lines: Vec<String> = Vec::new();
        let sent = texts_of(f.get("sent_texts").or(f.get("sent")));
        let recv = texts_of(f.get("texts").or(f.get("text")));
        let corr = texts_of(f.get("corrected"));
        for k in 0..sent.len().max(recv.len()).max(corr.len()) {
            for (label, v) in [("sent", &sent), ("received", &recv), ("corrected", &corr)] {
                if let Some(t) = v.get(k) {
                    lines.extend(wrap(&format!("{label} {}: {t}", k + 1), chars));
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
        ]
        .iter()
        .filter_map(|k| metric(k))
        .collect();
        lines.extend(wrap(&m.join("   "), chars));
        let line_h = 8 * SCALE + 4;
        let height = GAP + 8 * SCALE + 4 + h + GAP + lines.len() as u32 * line_h + GAP;
        let mut canvas = RgbImage::from_pixel(width, height, BG);
        let mut x = GAP;
        for (label, p) in &panels {
            draw_text(&mut canvas, x, GAP, label);
            imageops::replace(&mut canvas, p, i64::from(x), i64::from(GAP + 8 * SCALE + 4));
            x += p.width() + GAP;
        }
        let mut y = GAP + 8 * SCALE + 4 + h + GAP;
        for l in &lines {
            draw_text(&mut canvas, GAP, y, l);
            y += line_h;
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
        "Composes original | object slice | reconstruction with the texts and metrics (field `sheet`).";

    fn ports(_: &Self::Config) -> Ports {
        Ports {
            outputs: vec![OutPort::passing("out", &["sheet"])],
            requires: vec!["image".into()],
            heavy: true,
            ..Ports::default()
        }
    }

    fn build(c: &Self::Config, _: &BuildContext) -> Result<Built, StageError> {
        if c.height < 16 {
            return Err(StageError::input("`height` must be at least 16"));
        }
        Ok(Built::Stage(Box::new(Run { height: c.height })))
    }
}
