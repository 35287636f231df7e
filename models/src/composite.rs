//! `composite`: the offline-tier reconstructor (DESIGN §5). It stands in for Stable
//! Diffusion + IP-Adapter: each tile's (corrected) text is parsed for the colour and
//! brightness words of [`crate::colors`], the tile region is painted with a background
//! made from them, the seams are softened with a small blur, and the received object
//! slice is alpha-composited at its box.
//!
//! # Painting a tile
//!
//! The background sentence (the one containing "background"; the whole text when there
//! is none) gives up to two colours and a layout:
//! - "X at the top and Y at the bottom": a vertical blend X → Y (smooth step over the
//!   middle half of the tile);
//! - "X on the left and Y on the right": the same, horizontally;
//! - "mostly X with some Y", or any other two colours: a flat 70/30 mix;
//! - one colour: flat; none (lost text, garbled, "hidden"): neutral gray (128).
//!
//! A brightness phrase ("very dark", "dark", "dim", "fairly bright", "bright", "very
//! bright") scales the colours so their
//! mean luma reaches that level's [`Brightness::target_luma`] (factor clamped to
//! 0.4–2.5); a neutral gray takes the level's luma directly.
//!
//! # Tile layout
//!
//! Tile `k` of a `rows` × `cols` grid over a `w` × `h` image is the rectangle
//! [`tile_rect`]: columns split at `c·w/cols` and rows at `r·h/rows` (integer division),
//! so the last row/column takes the remainder. The `split` stage must use the same rule.

use image::{Rgb, RgbImage, RgbaImage};

use crate::colors::{luma, Brightness, ColorName};

/// Neutral gray painted for a lost or unparseable text.
pub const NEUTRAL: [u8; 3] = [128, 128, 128];

/// The rectangle `(x, y, width, height)` of row-major tile `index` in a `rows` × `cols`
/// grid over a `width` × `height` image (see the module docs for the rule). A zero
/// `rows`/`cols` is treated as 1; an index past the grid is clamped to the last row.
pub fn tile_rect(index: usize, grid: (usize, usize), size: (u32, u32)) -> (u32, u32, u32, u32) {
    let (rows, cols) = (grid.0.max(1) as u64, grid.1.max(1) as u64);
    let (w, h) = (u64::from(size.0), u64::from(size.1));
    let r = (index as u64 / cols).min(rows - 1);
    let c = index as u64 % cols;
    let (x0, x1) = (c * w / cols, (c + 1) * w / cols);
    let (y0, y1) = (r * h / rows, (r + 1) * h / rows);
    (x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32)
}

/// How the two colours of a background are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One colour (or none) over the whole tile.
    Flat,
    /// First colour at the top, second at the bottom.
    Vertical,
    /// First colour on the left, second on the right.
    Horizontal,
    /// A flat mix, 70% of the first colour and 30% of the second.
    Mixed,
}

/// What a tile's text says about its background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackgroundSpec {
    /// Up to two colours, in the order they should be painted.
    pub colors: Vec<ColorName>,
    /// How the colours are laid out.
    pub layout: Layout,
    /// The brightness word, if any.
    pub brightness: Option<Brightness>,
}

/// Lowercase words of `s`, split on anything that is not an ASCII letter.
fn words(s: &str) -> Vec<String> {
    s.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses a tile text (as written by [`crate::attributes`], possibly corrected after a
/// noisy channel) into a [`BackgroundSpec`]. `None` when the text names no colour and no
/// brightness.
pub fn parse_background(text: &str) -> Option<BackgroundSpec> {
    let lower = text.to_ascii_lowercase();
    let sentence = lower
        .split(['.', ';', '!', '?'])
        .find(|s| s.contains("background"))
        .unwrap_or(&lower);
    let ws = words(sentence);
    let refs: Vec<&str> = ws.iter().map(String::as_str).collect();
    let mut colors: Vec<ColorName> = Vec::new();
    for w in &refs {
        if let Some(c) = ColorName::from_word(w) {
            if colors.len() < 2 && !colors.contains(&c) {
                colors.push(c);
            }
        }
    }
    let brightness = Brightness::find_in(&refs);
    if colors.is_empty() && brightness.is_none() {
        return None;
    }
    let has = |w: &str| refs.contains(&w);
    let layout = if colors.len() < 2 {
        Layout::Flat
    } else if has("top") || has("bottom") {
        Layout::Vertical
    } else if has("left") || has("right") {
        Layout::Horizontal
    } else {
        Layout::Mixed
    };
    Some(BackgroundSpec {
        colors,
        layout,
        brightness,
    })
}

fn to_f(c: [u8; 3]) -> [f32; 3] {
    [f32::from(c[0]), f32::from(c[1]), f32::from(c[2])]
}

/// How much of a named colour's chroma is painted (the rest is its own luma as gray).
/// Colour words name the nearest basic colour, and real regions are mostly less
/// saturated than the palette's prototypes, so painting them at full chroma costs more
/// error than it gains when the name is only roughly right.
pub const PAINT_SATURATION: f32 = 0.6;

/// Fraction by which each end of a two-colour blend moves toward the other colour.
pub const BLEND_SOFTENING: f32 = 0.25;

/// The colour painted for a name: its prototype with [`PAINT_SATURATION`] of its chroma.
fn paint_color(c: ColorName) -> [f32; 3] {
    let p = to_f(c.rgb());
    let y = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    mix([y; 3], p, PAINT_SATURATION)
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// The two end colours (as floats) of a spec, after brightness adjustment.
fn spec_colors(spec: &BackgroundSpec) -> ([f32; 3], [f32; 3]) {
    let first = spec.colors.first().map(|c| paint_color(*c));
    let second = spec.colors.get(1).map(|c| paint_color(*c));
    let (a, b) = match (first, second, spec.layout) {
        (None, _, _) => (to_f(NEUTRAL), to_f(NEUTRAL)),
        (Some(a), None, _) => (a, a),
        (Some(a), Some(b), Layout::Mixed) | (Some(a), Some(b), Layout::Flat) => {
            let m = mix(a, b, 0.3);
            (m, m)
        }
        // Pull the two ends a little toward each other: the layout words are coarse,
        // and a softer blend costs less where the split is not where it is painted.
        (Some(a), Some(b), _) => (mix(a, b, BLEND_SOFTENING), mix(b, a, BLEND_SOFTENING)),
    };
    let Some(level) = spec.brightness else {
        return (a, b);
    };
    let target = level.target_luma() as f32;
    let y = |c: [f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    let mean = (y(a) + y(b)) / 2.0;
    if spec.colors.is_empty() || mean < 1.0 {
        let g = [target; 3];
        return (g, g);
    }
    let k = (target / mean).clamp(0.4, 2.5);
    let scale = |c: [f32; 3]| [c[0] * k, c[1] * k, c[2] * k];
    (scale(a), scale(b))
}

fn smoothstep(t: f32) -> f32 {
    // Blend over the middle half of the tile: hard enough for sky/ground splits.
    let u = ((t - 0.25) / 0.5).clamp(0.0, 1.0);
    u * u * (3.0 - 2.0 * u)
}

/// Paints one tile region of `canvas` (f32 RGB, row-major, `width` wide).
fn paint_tile(canvas: &mut [[f32; 3]], width: u32, rect: (u32, u32, u32, u32), spec: Option<&BackgroundSpec>) {
    let (x0, y0, tw, th) = rect;
    let (a, b, layout) = match spec {
        Some(s) => {
            let (a, b) = spec_colors(s);
            (a, b, s.layout)
        }
        None => (to_f(NEUTRAL), to_f(NEUTRAL), Layout::Flat),
    };
    for dy in 0..th {
        for dx in 0..tw {
            let t = match layout {
                Layout::Vertical => smoothstep((dy as f32 + 0.5) / th.max(1) as f32),
                Layout::Horizontal => smoothstep((dx as f32 + 0.5) / tw.max(1) as f32),
                Layout::Flat | Layout::Mixed => 0.0,
            };
            let idx = ((y0 + dy) as usize) * width as usize + (x0 + dx) as usize;
            if let Some(px) = canvas.get_mut(idx) {
                *px = mix(a, b, t);
            }
        }
    }
}

/// One pass of a box blur of radius `r` along rows (`horizontal`) or columns, with
/// edges clamped.
fn box_blur_pass(src: &[[f32; 3]], w: usize, h: usize, r: usize, horizontal: bool) -> Vec<[f32; 3]> {
    let mut out = vec![[0.0f32; 3]; src.len()];
    let (outer, inner) = if horizontal { (h, w) } else { (w, h) };
    let at = |o: usize, i: usize| if horizontal { o * w + i } else { i * w + o };
    let norm = 1.0 / (2 * r + 1) as f32;
    for o in 0..outer {
        let mut acc = [0.0f32; 3];
        // Window over i in [-r, r], clamped.
        for k in 0..=2 * r {
            let i = k.saturating_sub(r).min(inner - 1);
            let p = src[at(o, i)];
            acc = [acc[0] + p[0], acc[1] + p[1], acc[2] + p[2]];
        }
        for i in 0..inner {
            out[at(o, i)] = [acc[0] * norm, acc[1] * norm, acc[2] * norm];
            let leaving = src[at(o, i.saturating_sub(r))];
            let entering = src[at(o, (i + r + 1).min(inner - 1))];
            for c in 0..3 {
                acc[c] += entering[c] - leaving[c];
            }
        }
    }
    out
}

/// Rebuilds a frame from its tile texts.
///
/// - `texts`: one per tile in row-major order; `None` = lost (painted neutral gray, as is
///   a text without any colour or brightness word); missing entries count as lost.
/// - `grid`: `(rows, cols)`; `size`: output `(width, height)`.
/// - `object`: the received object slice and the `(x, y)` of its top-left corner in
///   the frame; alpha-composited over the background (parts outside the frame are
///   clipped).
///
/// Seams between tiles are softened by two passes of a box blur of radius
/// max(1, min(tile side)/10) over the background before the object is placed.
pub fn reconstruct(
    texts: &[Option<String>],
    grid: (usize, usize),
    size: (u32, u32),
    object: Option<(&RgbaImage, u32, u32)>,
) -> RgbImage {
    let (w, h) = size;
    let mut out = RgbImage::new(w, h);
    if w == 0 || h == 0 {
        return out;
    }
    let (rows, cols) = (grid.0.max(1), grid.1.max(1));
    let mut canvas = vec![to_f(NEUTRAL); (w as usize) * (h as usize)];
    for k in 0..rows * cols {
        let spec = texts.get(k).and_then(|t| t.as_deref()).and_then(parse_background);
        paint_tile(&mut canvas, w, tile_rect(k, grid, size), spec.as_ref());
    }
    if rows * cols > 1 {
        let (tw, th) = (w / cols as u32, h / rows as u32);
        let r = (tw.min(th) / 10).max(1) as usize;
        for _ in 0..2 {
            canvas = box_blur_pass(&canvas, w as usize, h as usize, r, true);
            canvas = box_blur_pass(&canvas, w as usize, h as usize, r, false);
        }
    }
    for (px, c) in out.pixels_mut().zip(&canvas) {
        *px = Rgb([
            c[0].round().clamp(0.0, 255.0) as u8,
            c[1].round().clamp(0.0, 255.0) as u8,
            c[2].round().clamp(0.0, 255.0) as u8,
        ]);
    }
    if let Some((slice, ox, oy)) = object {
        composite_over(&mut out, slice, ox, oy);
    }
    out
}

/// Alpha-composites `slice` over `dst` with its top-left corner at `(x, y)`, clipping at
/// the frame's edges.
pub fn composite_over(dst: &mut RgbImage, slice: &RgbaImage, x: u32, y: u32) {
    let (w, h) = dst.dimensions();
    for (sx, sy, p) in slice.enumerate_pixels() {
        let (dx, dy) = (u64::from(x) + u64::from(sx), u64::from(y) + u64::from(sy));
        if dx >= u64::from(w) || dy >= u64::from(h) {
            continue;
        }
        let a = f32::from(p[3]) / 255.0;
        if a <= 0.0 {
            continue;
        }
        let d = dst.get_pixel_mut(dx as u32, dy as u32);
        for c in 0..3 {
            let v = f32::from(p[c]) * a + f32::from(d[c]) * (1.0 - a);
            d[c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Mean luma of an image (helper for tests and diagnostics).
pub fn mean_luma(img: &RgbImage) -> f64 {
    let n = (img.width() as usize) * (img.height() as usize);
    if n == 0 {
        return 0.0;
    }
    img.pixels().map(|p| luma(p.0)).sum::<f64>() / n as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::attributes::{describe_tile, TilePosition};
    use crate::quality::mse;
    use image::{imageops, GrayImage, Rgba};

    #[test]
    fn tile_rects_cover_the_frame() {
        let size = (101, 50);
        let mut covered = vec![0u8; 101 * 50];
        for k in 0..6 {
            let (x, y, w, h) = tile_rect(k, (2, 3), size);
            for yy in y..y + h {
                for xx in x..x + w {
                    covered[(yy * 101 + xx) as usize] += 1;
                }
            }
        }
        assert!(covered.iter().all(|&c| c == 1));
        assert_eq!(tile_rect(5, (2, 3), size), (67, 25, 34, 25));
    }

    #[test]
    fn parses_the_captioner_phrases() {
        let s = parse_background(
            "top left: the main object covers half of this part, on the right; it is white. \
             the background is dim, blue at the top and green at the bottom.",
        )
        .unwrap();
        assert_eq!(s.colors, [ColorName::Blue, ColorName::Green]);
        assert_eq!(s.layout, Layout::Vertical);
        assert_eq!(s.brightness, Some(Brightness::Dim));
        let s = parse_background("the background is very bright, mostly white with some grey.").unwrap();
        assert_eq!(s.layout, Layout::Mixed);
        assert_eq!(s.brightness, Some(Brightness::VeryBright));
        assert_eq!(s.colors, [ColorName::White, ColorName::Gray]);
        assert_eq!(parse_background("qzx vvk"), None);
        assert_eq!(parse_background("the background is hidden."), None);
    }

    #[test]
    fn lost_tiles_are_neutral_and_object_is_composited() {
        let slice = RgbaImage::from_fn(10, 10, |x, _| {
            if x < 5 {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([0, 0, 255, 0])
            }
        });
        let img = reconstruct(&[None, None], (1, 2), (40, 20), Some((&slice, 30, 5)));
        assert_eq!(img.dimensions(), (40, 20));
        assert_eq!(img.get_pixel(0, 0).0, NEUTRAL);
        assert_eq!(img.get_pixel(31, 6).0, [255, 0, 0]);
        // The transparent part leaves the background.
        assert_eq!(img.get_pixel(37, 6).0, NEUTRAL);
        // A slice hanging over the edge is clipped.
        let img = reconstruct(&[None, None], (1, 2), (40, 20), Some((&slice, 37, 15)));
        assert_eq!(img.get_pixel(39, 19).0, [255, 0, 0]);
        let dark = reconstruct(&[Some("the background is dark.".into())], (1, 1), (8, 8), None);
        assert_eq!(dark.get_pixel(4, 4).0, [52, 52, 52]);
    }

    #[test]
    fn round_trip_beats_flat_gray() {
        // Sky over grass, with a white object slice that is sent separately.
        let (w, h) = (128u32, 96u32);
        let original = RgbImage::from_fn(w, h, |x, y| {
            if (50..80).contains(&x) && (30..70).contains(&y) {
                Rgb([240, 240, 240])
            } else if y < 40 {
                Rgb([70, 120, 210])
            } else {
                Rgb([40, 130, 45])
            }
        });
        let mask = GrayImage::from_fn(w, h, |x, y| {
            image::Luma([if (50..80).contains(&x) && (30..70).contains(&y) {
                255
            } else {
                0
            }])
        });
        let grid = (2, 2);
        let texts: Vec<Option<String>> = (0..4)
            .map(|k| {
                let (x, y, tw, th) = tile_rect(k, grid, (w, h));
                let tile = imageops::crop_imm(&original, x, y, tw, th).to_image();
                let m = imageops::crop_imm(&mask, x, y, tw, th).to_image();
                Some(describe_tile(
                    &tile,
                    Some(&m),
                    TilePosition {
                        index: k,
                        rows: 2,
                        cols: 2,
                    },
                ))
            })
            .collect();
        let slice = RgbaImage::from_fn(30, 40, |_, _| Rgba([240, 240, 240, 255]));
        let rebuilt = reconstruct(&texts, grid, (w, h), Some((&slice, 50, 30)));
        let flat = RgbImage::from_pixel(w, h, Rgb(NEUTRAL));
        let e_rebuilt = mse(&original, &rebuilt);
        let e_flat = mse(&original, &flat);
        eprintln!("round trip MSE {e_rebuilt:.1}, flat gray MSE {e_flat:.1}");
        assert!(
            e_rebuilt < 0.5 * e_flat,
            "rebuilt MSE {e_rebuilt:.1} vs flat {e_flat:.1}; texts {texts:?}"
        );
        // Losing one text costs quality but still decodes.
        let mut lossy = texts.clone();
        lossy[3] = None;
        let e_lossy = mse(&original, &reconstruct(&lossy, grid, (w, h), Some((&slice, 50, 30))));
        assert!(e_lossy > e_rebuilt);
    }
}
