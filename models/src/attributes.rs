//! `attributes`: the offline-tier captioner (DESIGN §5). It stands in for LLaVA by
//! describing a tile from its segmentation mask and colour statistics in short English
//! sentences: where the tile is, whether the main object is in it (how much of the tile
//! it covers, where, and its colours), and the background's colours, their layout and
//! brightness.
//!
//! The output is deterministic, never empty, and uses only common dictionary words
//! (colour words from [`crate::colors`]), so it survives a SymSpell spelling corrector
//! and can be parsed back by [`crate::composite`]. Example:
//!
//! ```text
//! top left: the main object covers a third of this part, on the right; it is white and
//! gray. the background is bright, blue at the top and green at the bottom.
//! ```
//!
//! With a detector's `objects` ([`crate::detect`]) the caption names things
//! ([`describe_tile_named`], [`named_in_tile`]): the main object is the class of the
//! detection that is the segmented object ([`detect::main_object`]), and other objects that lie mostly in
//! the tile are named with their place in it:
//!
//! ```text
//! bottom left: a person covers most of this part; it is white and blue; a tie is in the
//! middle. the background is dark blue.
//! ```
//!
//! Object clauses stay out of the background sentence, so [`crate::composite`] parses it
//! as before. What CenterNet gives on the sample photos at the default threshold (0.4;
//! `detect_threshold_table` in tests/it/detect.rs, BENCHMARKS.md §12): astronaut → person
//! 0.61; coffee → cup 0.47 and dining table 0.41 (the cup, inside ISNet's box, is the main
//! object); motorcycle_left → motorcycle 0.50; rocket → nothing (a clock at 0.36 is below
//! the threshold). **chelsea, a close-up cat face, → dog 0.48** (no `cat` above 0.2), so
//! chelsea's captions say "a dog covers …". COCO has no raccoon: scipy's raccoon face
//! gives cat 0.35, below the threshold.

use std::collections::HashMap;

use image::{imageops, GrayImage, RgbImage};

use crate::colors::{luma, nearest_color, Brightness, ColorName};
use crate::detect::{self, Detection};
use crate::isnet::BBox;

/// Mask values at or above this count as the main object.
pub const MASK_THRESHOLD: u8 = 128;

/// The object is mentioned when it covers more than this fraction of the tile.
pub const MIN_OBJECT_COVERAGE: f64 = 0.02;

/// A second colour is named when it covers at least this fraction of the region.
pub const SECOND_COLOR_SHARE: f64 = 0.2;

/// At most this many pixels per region are examined (a regular subsample above it).
const MAX_SAMPLES: u32 = 8192;

/// Where a tile sits in the split grid (row-major `index`, `rows` × `cols`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TilePosition {
    /// Row-major tile index, 0 = top left.
    pub index: usize,
    /// Rows of the grid (≥ 1).
    pub rows: usize,
    /// Columns of the grid (≥ 1).
    pub cols: usize,
}

impl TilePosition {
    /// The single tile of a 1×1 grid (the whole image).
    pub const WHOLE: TilePosition = TilePosition {
        index: 0,
        rows: 1,
        cols: 1,
    };

    /// A plain-words name of the tile's place: "top left", "bottom", "center", "the
    /// whole image"; grids over 3 on a side use "row 2 column 4".
    pub fn words(&self) -> String {
        let rows = self.rows.max(1);
        let cols = self.cols.max(1);
        if rows == 1 && cols == 1 {
            return "the whole image".to_string();
        }
        let (r, c) = ((self.index / cols).min(rows - 1), self.index % cols);
        if rows > 3 || cols > 3 {
            return format!("row {} column {}", r + 1, c + 1);
        }
        let row = match (rows, r) {
            (1, _) => "",
            (2, 0) | (3, 0) => "top",
            (3, 1) => "middle",
            _ => "bottom",
        };
        let col = match (cols, c) {
            (1, _) => "",
            (2, 0) | (3, 0) => "left",
            (3, 1) => "center",
            _ => "right",
        };
        match (row, col) {
            ("middle", "center") => "center".to_string(),
            ("", c) => c.to_string(),
            (r, "") => r.to_string(),
            ("middle", c) => format!("middle {c}"),
            (r, "center") => format!("{r} center"),
            (r, c) => format!("{r} {c}"),
        }
    }
}

/// Colour statistics of one region (object or background).
#[derive(Debug, Default)]
struct Region {
    samples: usize,
    luma_sum: f64,
    counts: HashMap<ColorName, (usize, f64, f64)>,
}

impl Region {
    fn add(&mut self, rgb: [u8; 3], fx: f64, fy: f64) {
        self.samples += 1;
        self.luma_sum += luma(rgb);
        let e = self.counts.entry(nearest_color(rgb)).or_insert((0, 0.0, 0.0));
        e.0 += 1;
        e.1 += fx;
        e.2 += fy;
    }

    fn brightness(&self) -> Brightness {
        Brightness::from_luma(self.luma_sum / self.samples.max(1) as f64)
    }

    /// Up to two dominant colours with their mean (x, y) in the tile (0–1).
    fn dominant(&self) -> Vec<(ColorName, f64, f64)> {
        let mut v: Vec<(ColorName, usize, f64, f64)> = self
            .counts
            .iter()
            .map(|(c, (n, sx, sy))| (*c, *n, sx / *n as f64, sy / *n as f64))
            .collect();
        // Most frequent first; ties broken by palette order for determinism.
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total = self.samples.max(1) as f64;
        v.iter()
            .enumerate()
            .filter(|(i, e)| *i == 0 || (*i == 1 && e.1 as f64 / total >= SECOND_COLOR_SHARE))
            .map(|(_, e)| (e.0, e.2, e.3))
            .collect()
    }
}

fn amount_words(coverage: f64) -> &'static str {
    if coverage < 0.15 {
        "a little"
    } else if coverage < 0.29 {
        "a quarter"
    } else if coverage < 0.42 {
        "a third"
    } else if coverage < 0.6 {
        "half"
    } else if coverage < 0.9 {
        "most"
    } else {
        "all"
    }
}

fn place_words(fx: f64, fy: f64) -> &'static str {
    let col = if fx < 0.38 {
        0
    } else if fx > 0.62 {
        2
    } else {
        1
    };
    let row = if fy < 0.38 {
        0
    } else if fy > 0.62 {
        2
    } else {
        1
    };
    match (row, col) {
        (0, 0) => "at the top left",
        (0, 1) => "at the top",
        (0, _) => "at the top right",
        (1, 0) => "on the left",
        (1, 1) => "in the middle",
        (1, _) => "on the right",
        (_, 0) => "at the bottom left",
        (_, 1) => "at the bottom",
        _ => "at the bottom right",
    }
}

fn colour_list(colors: &[(ColorName, f64, f64)]) -> String {
    colors.iter().map(|c| c.0.word()).collect::<Vec<_>>().join(" and ")
}

/// The background clause: colours, their layout, and brightness.
fn background_sentence(bg: &Region) -> String {
    let b = bg.brightness().words();
    match bg.dominant().as_slice() {
        [] => "the background is hidden.".to_string(),
        [one] => format!("the background is {} and {b}.", one.0.word()),
        [first, second, ..] => {
            let (dx, dy) = (second.1 - first.1, second.2 - first.2);
            if dy.abs() >= 0.15 && dy.abs() >= dx.abs() {
                let (top, bottom) = if dy > 0.0 { (first, second) } else { (second, first) };
                format!(
                    "the background is {b}, {} at the top and {} at the bottom.",
                    top.0.word(),
                    bottom.0.word()
                )
            } else if dx.abs() >= 0.15 {
                let (left, right) = if dx > 0.0 { (first, second) } else { (second, first) };
                format!(
                    "the background is {b}, {} on the left and {} on the right.",
                    left.0.word(),
                    right.0.word()
                )
            } else {
                format!(
                    "the background is {b}, mostly {} with some {}.",
                    first.0.word(),
                    second.0.word()
                )
            }
        }
    }
}

/// Describes one tile of a frame. `mask` is the segmentation of the same tile (any
/// size; it is resized to the tile with nearest-neighbour sampling), values ≥
/// [`MASK_THRESHOLD`] being the main object. Without a mask, nothing is said about the
/// object and the whole tile counts as background. The result is never empty.
pub fn describe_tile(tile: &RgbImage, mask: Option<&GrayImage>, position: TilePosition) -> String {
    describe_tile_named(tile, mask, position, &Named::default())
}

/// Objects a detector found, as one tile's caption names them (see [`named_in_tile`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Named {
    /// Class of the main object (the segmented one), when a detection matches its box.
    pub main: Option<String>,
    /// Other objects in the tile: class and the centre of their part of the tile (0–1).
    pub others: Vec<(String, f64, f64)>,
}

/// At most this many other objects are named per tile.
pub const MAX_NAMED: usize = 3;

/// An object is named in a tile holding at least this share of its box.
pub const MIN_OBJECT_SHARE: f64 = 0.3;

/// [`Named`] for the tile `tile` (frame pixels): `main_box` is the segmenter's object box,
/// matched to a detection by [`detect::main_object`]; every other class whose box lies at
/// least [`MIN_OBJECT_SHARE`] in the tile is named once, best score first.
pub fn named_in_tile(objects: &[Detection], main_box: Option<&BBox>, tile: &BBox) -> Named {
    let main = main_box.and_then(|b| detect::main_object(objects, b));
    let mut named = Named {
        main: main.map(|d| d.class.clone()),
        others: Vec::new(),
    };
    for d in objects {
        if main.is_some_and(|m| std::ptr::eq(m, d)) || named.others.iter().any(|o| o.0 == d.class) {
            continue;
        }
        let b = d.bbox();
        let (x0, y0) = (b.x.max(tile.x), b.y.max(tile.y));
        let (x1, y1) = (
            (b.x + b.width).min(tile.x + tile.width),
            (b.y + b.height).min(tile.y + tile.height),
        );
        if x1 <= x0 || y1 <= y0 || tile.width == 0 || tile.height == 0 {
            continue;
        }
        let share = f64::from(x1 - x0) * f64::from(y1 - y0) / b.area().max(1) as f64;
        if share >= MIN_OBJECT_SHARE && named.others.len() < MAX_NAMED {
            let fx = (f64::from(x0 + x1) / 2.0 - f64::from(tile.x)) / f64::from(tile.width);
            let fy = (f64::from(y0 + y1) / 2.0 - f64::from(tile.y)) / f64::from(tile.height);
            named.others.push((d.class.clone(), fx, fy));
        }
    }
    named
}

/// "a cup", "an orange".
fn with_article(class: &str) -> String {
    let article = if class.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {class}")
}

/// Per-region statistics of one tile.
struct TileStats {
    obj: Region,
    bg: Region,
    /// Mean (x, y) of the object's samples in the tile (0–1), summed.
    obj_xy: (f64, f64),
    total: usize,
}

fn tile_stats(tile: &RgbImage, mask: Option<&GrayImage>) -> TileStats {
    let (w, h) = tile.dimensions();
    // Sample on a regular grid of at most MAX_SAMPLES points.
    let step = ((f64::from(w) * f64::from(h) / f64::from(MAX_SAMPLES)).sqrt().ceil() as u32).max(1);
    let mut st = TileStats {
        obj: Region::default(),
        bg: Region::default(),
        obj_xy: (0.0, 0.0),
        total: 0,
    };
    for y in (step / 2..h).step_by(step as usize) {
        for x in (step / 2..w).step_by(step as usize) {
            st.total += 1;
            let rgb = tile.get_pixel(x, y).0;
            let (fx, fy) = ((f64::from(x) + 0.5) / f64::from(w), (f64::from(y) + 0.5) / f64::from(h));
            if mask.is_some_and(|m| m.get_pixel(x, y).0[0] >= MASK_THRESHOLD) {
                st.obj.add(rgb, fx, fy);
                st.obj_xy.0 += fx;
                st.obj_xy.1 += fy;
            } else {
                st.bg.add(rgb, fx, fy);
            }
        }
    }
    st.total = st.total.max(1);
    st
}

/// The clause about the main object: "the main object covers half of this part, on the
/// left; it is red" (or "a person covers …"), or "there is no main object here".
fn object_clause(st: &TileStats, main: Option<&str>) -> String {
    let coverage = st.obj.samples as f64 / st.total as f64;
    if coverage <= MIN_OBJECT_COVERAGE {
        return "there is no main object here".to_string();
    }
    let n = st.obj.samples.max(1) as f64;
    let amount = amount_words(coverage);
    let colors = colour_list(&st.obj.dominant());
    let subject = main.map_or_else(|| "the main object".to_string(), with_article);
    if coverage >= 0.9 {
        format!("{subject} covers {amount} of this part; it is {colors}")
    } else {
        let place = place_words(st.obj_xy.0 / n, st.obj_xy.1 / n);
        format!("{subject} covers {amount} of this part, {place}; it is {colors}")
    }
}

/// [`describe_tile`] naming the objects of `named` ([`named_in_tile`]).
pub fn describe_tile_named(tile: &RgbImage, mask: Option<&GrayImage>, position: TilePosition, named: &Named) -> String {
    let mut text = format!("{}: ", position.words());
    let (w, h) = tile.dimensions();
    if w == 0 || h == 0 {
        text.push_str("this part is empty.");
        return text;
    }
    let resized;
    let mask = match mask {
        Some(m) if m.dimensions() != (w, h) => {
            resized = imageops::resize(m, w, h, imageops::FilterType::Nearest);
            Some(&resized)
        }
        other => other,
    };
    let st = tile_stats(tile, mask);
    let mut clauses: Vec<String> = Vec::new();
    if mask.is_some() {
        clauses.push(object_clause(&st, named.main.as_deref()));
    }
    for (class, fx, fy) in &named.others {
        clauses.push(format!("{} is {}", with_article(class), place_words(*fx, *fy)));
    }
    if !clauses.is_empty() {
        text.push_str(&clauses.join("; "));
        text.push_str(". ");
    }
    // A background of a handful of pixels is not worth naming.
    if st.bg.samples as f64 / (st.total as f64) < 0.03 {
        text.push_str("the background is hidden.");
    } else {
        text.push_str(&background_sentence(&st.bg));
    }
    text
}

/// Describes a whole image as one text (the single-text baseline): [`describe_tile`]
/// with [`TilePosition::WHOLE`].
pub fn describe_image(image: &RgbImage, mask: Option<&GrayImage>) -> String {
    describe_tile(image, mask, TilePosition::WHOLE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use image::{Luma, Rgb};

    fn pos(index: usize) -> TilePosition {
        TilePosition {
            index,
            rows: 2,
            cols: 2,
        }
    }

    #[test]
    fn position_words() {
        let names: Vec<String> = (0..4).map(|i| pos(i).words()).collect();
        assert_eq!(names, ["top left", "top right", "bottom left", "bottom right"]);
        let three = |index| {
            TilePosition {
                index,
                rows: 3,
                cols: 3,
            }
            .words()
        };
        assert_eq!(three(4), "center");
        assert_eq!(three(1), "top center");
        assert_eq!(three(3), "middle left");
        let row = |index| {
            TilePosition {
                index,
                rows: 1,
                cols: 2,
            }
            .words()
        };
        assert_eq!(row(1), "right");
        assert_eq!(
            TilePosition {
                index: 5,
                rows: 4,
                cols: 4
            }
            .words(),
            "row 2 column 2"
        );
        assert_eq!(TilePosition::WHOLE.words(), "the whole image");
    }

    #[test]
    fn flat_grey_frame_has_no_object() {
        let tile = RgbImage::from_pixel(64, 64, Rgb([128, 128, 128]));
        let mask = GrayImage::new(64, 64);
        let text = describe_tile(&tile, Some(&mask), pos(0));
        assert_eq!(
            text,
            "top left: there is no main object here. the background is gray and fairly bright."
        );
        // Without a mask, only the background is described.
        assert_eq!(
            describe_tile(&tile, None, pos(3)),
            "bottom right: the background is gray and fairly bright."
        );
    }

    #[test]
    fn object_on_the_right_over_two_colour_background() {
        // Sky over grass; a white object in the right third, middle rows.
        let tile = RgbImage::from_fn(90, 90, |x, y| {
            if (60..90).contains(&x) && (30..60).contains(&y) {
                Rgb([245, 245, 245])
            } else if y < 45 {
                Rgb([60, 110, 200])
            } else {
                Rgb([50, 140, 50])
            }
        });
        let mask = GrayImage::from_fn(90, 90, |x, y| {
            Luma([if (60..90).contains(&x) && (30..60).contains(&y) {
                255
            } else {
                0
            }])
        });
        let text = describe_tile(&tile, Some(&mask), pos(0));
        assert_eq!(
            text,
            "top left: the main object covers a little of this part, on the right; it is \
             white. the background is dim, blue at the top and green at the bottom."
        );
        // Deterministic.
        assert_eq!(text, describe_tile(&tile, Some(&mask), pos(0)));
    }

    #[test]
    fn object_filling_the_tile_and_side_by_side_background() {
        let tile = RgbImage::from_fn(40, 40, |x, _| {
            if x < 20 {
                Rgb([200, 35, 35])
            } else {
                Rgb([235, 215, 50])
            }
        });
        let full = GrayImage::from_pixel(40, 40, Luma([255]));
        assert_eq!(
            describe_tile(&tile, Some(&full), pos(1)),
            "top right: the main object covers all of this part; it is red and yellow. the \
             background is hidden."
        );
        assert_eq!(
            describe_image(&tile, None),
            "the whole image: the background is bright, red on the left and yellow on the \
             right."
        );
        // A differently sized mask is resized; an empty tile still gets a sentence.
        let small = GrayImage::from_pixel(4, 4, Luma([0]));
        assert!(describe_tile(&tile, Some(&small), pos(1)).contains("no main object"));
        assert_eq!(
            describe_tile(&RgbImage::new(0, 0), None, pos(2)),
            "bottom left: this part is empty."
        );
    }

    #[test]
    fn names_the_main_object_and_the_others_in_the_tile() {
        let det = |class: &str, score: f32, bbox: [u32; 4]| Detection {
            class: class.into(),
            score,
            bbox,
        };
        // A person on the left of a 200x200 frame, a tie on them, a cup at the far right.
        let objects = vec![
            det("person", 0.7, [0, 0, 110, 200]),
            det("tie", 0.45, [40, 120, 20, 40]),
            det("cup", 0.5, [170, 170, 30, 30]),
        ];
        let mask_box = BBox {
            x: 0,
            y: 0,
            width: 100,
            height: 200,
        };
        let bottom_left = BBox {
            x: 0,
            y: 100,
            width: 100,
            height: 100,
        };
        let named = named_in_tile(&objects, Some(&mask_box), &bottom_left);
        assert_eq!(named.main.as_deref(), Some("person"));
        assert_eq!(named.others.len(), 1, "{named:?}"); // the cup is in another tile
        let tile = RgbImage::from_fn(100, 100, |x, _| {
            if x < 70 {
                Rgb([240, 240, 240])
            } else {
                Rgb([20, 20, 90])
            }
        });
        let mask = GrayImage::from_fn(100, 100, |x, _| Luma([if x < 70 { 255 } else { 0 }]));
        let text = describe_tile_named(&tile, Some(&mask), pos(2), &named);
        assert!(
            text.starts_with(
                "bottom left: a person covers most of this part, on the left; it is white; a tie is in the \
                 middle. the background is "
            ),
            "{text}"
        );
        // No detection overlapping the mask: the object stays "the main object".
        let far = BBox {
            x: 300,
            y: 300,
            width: 10,
            height: 10,
        };
        assert_eq!(named_in_tile(&objects, Some(&far), &bottom_left).main, None);
        assert_eq!(with_article("orange"), "an orange");
    }

    #[test]
    fn dark_scene() {
        let tile = RgbImage::from_pixel(16, 16, Rgb([10, 10, 12]));
        assert_eq!(
            describe_image(&tile, None),
            "the whole image: the background is black and very dark."
        );
    }
}
