//! The colour and brightness vocabulary shared by the offline captioner
//! ([`crate::attributes`]) and the offline reconstructor ([`crate::composite`]): one
//! palette, so every colour word the captioner writes is one the reconstructor can paint.
//!
//! Colour names are the eleven basic English colour terms (Berlin & Kay): plain words
//! that a SymSpell corrector with a standard English frequency dictionary keeps intact.
//! A pixel is named by the nearest of a few reference colours per name in CIE L*a*b*
//! (D65), a roughly perceptual space, so dark navy is still "blue" and tan "brown".

use std::sync::LazyLock;

/// A basic colour term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ColorName {
    /// black
    Black,
    /// white
    White,
    /// gray (also parsed from "grey")
    Gray,
    /// red
    Red,
    /// orange
    Orange,
    /// yellow
    Yellow,
    /// green
    Green,
    /// blue
    Blue,
    /// purple
    Purple,
    /// pink
    Pink,
    /// brown
    Brown,
}

/// Reference sRGB colours per name; the first one is what [`ColorName::rgb`] paints.
const REFERENCES: [(ColorName, &[[u8; 3]]); 11] = [
    (ColorName::Black, &[[12, 12, 12], [40, 40, 44]]),
    (ColorName::White, &[[245, 245, 245], [222, 222, 214]]),
    (ColorName::Gray, &[[128, 128, 128], [88, 88, 92], [176, 176, 176]]),
    (ColorName::Red, &[[200, 35, 35], [130, 20, 25], [230, 80, 70]]),
    (ColorName::Orange, &[[235, 135, 30], [200, 100, 30]]),
    (ColorName::Yellow, &[[235, 215, 50], [200, 185, 70], [245, 235, 150]]),
    (
        ColorName::Green,
        &[[60, 140, 60], [30, 75, 35], [140, 190, 100], [100, 120, 60]],
    ),
    (
        ColorName::Blue,
        &[
            [50, 90, 190],
            [25, 40, 100],
            [120, 170, 225],
            [70, 130, 180],
            [20, 30, 240],
            [10, 15, 125],
        ],
    ),
    (
        ColorName::Purple,
        &[[125, 55, 150], [75, 35, 95], [170, 120, 200], [128, 0, 128]],
    ),
    (ColorName::Pink, &[[235, 150, 180], [215, 90, 140]]),
    (
        ColorName::Brown,
        &[[120, 75, 40], [75, 50, 30], [165, 125, 85], [140, 110, 80]],
    ),
];

impl ColorName {
    /// Every colour name, in palette order.
    pub const ALL: [ColorName; 11] = [
        ColorName::Black,
        ColorName::White,
        ColorName::Gray,
        ColorName::Red,
        ColorName::Orange,
        ColorName::Yellow,
        ColorName::Green,
        ColorName::Blue,
        ColorName::Purple,
        ColorName::Pink,
        ColorName::Brown,
    ];

    /// The English word written in captions.
    pub const fn word(self) -> &'static str {
        match self {
            ColorName::Black => "black",
            ColorName::White => "white",
            ColorName::Gray => "gray",
            ColorName::Red => "red",
            ColorName::Orange => "orange",
            ColorName::Yellow => "yellow",
            ColorName::Green => "green",
            ColorName::Blue => "blue",
            ColorName::Purple => "purple",
            ColorName::Pink => "pink",
            ColorName::Brown => "brown",
        }
    }

    /// Parses a colour word (lowercase or not; "grey" is accepted for gray).
    pub fn from_word(word: &str) -> Option<ColorName> {
        let w = word.to_ascii_lowercase();
        if w == "grey" {
            return Some(ColorName::Gray);
        }
        ColorName::ALL.into_iter().find(|c| c.word() == w)
    }

    /// The sRGB colour painted for this name.
    pub fn rgb(self) -> [u8; 3] {
        REFERENCES
            .iter()
            .find(|(c, _)| *c == self)
            .and_then(|(_, refs)| refs.first().copied())
            .unwrap_or([128, 128, 128])
    }
}

/// How light a region is, from the mean BT.601 luma of its pixels (six levels of
/// about 35 luma steps, so that the painted level is within ~20 of the original).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Brightness {
    /// Mean luma below 35: "very dark".
    VeryDark,
    /// Mean luma 35–70: "dark".
    Dark,
    /// Mean luma 70–105: "dim".
    Dim,
    /// Mean luma 105–140: "fairly bright".
    FairlyBright,
    /// Mean luma 140–180: "bright".
    Bright,
    /// Mean luma 180 and above: "very bright".
    VeryBright,
}

impl Brightness {
    /// Every level, darkest first.
    pub const ALL: [Brightness; 6] = [
        Brightness::VeryDark,
        Brightness::Dark,
        Brightness::Dim,
        Brightness::FairlyBright,
        Brightness::Bright,
        Brightness::VeryBright,
    ];

    /// The level of a mean luma (0–255).
    pub fn from_luma(luma: f64) -> Brightness {
        if luma < 35.0 {
            Brightness::VeryDark
        } else if luma < 70.0 {
            Brightness::Dark
        } else if luma < 105.0 {
            Brightness::Dim
        } else if luma < 140.0 {
            Brightness::FairlyBright
        } else if luma < 180.0 {
            Brightness::Bright
        } else {
            Brightness::VeryBright
        }
    }

    /// The words written in captions.
    pub const fn words(self) -> &'static str {
        match self {
            Brightness::VeryDark => "very dark",
            Brightness::Dark => "dark",
            Brightness::Dim => "dim",
            Brightness::FairlyBright => "fairly bright",
            Brightness::Bright => "bright",
            Brightness::VeryBright => "very bright",
        }
    }

    /// The mean luma painted for this level (middle of its range).
    pub const fn target_luma(self) -> f64 {
        match self {
            Brightness::VeryDark => 20.0,
            Brightness::Dark => 52.0,
            Brightness::Dim => 88.0,
            Brightness::FairlyBright => 122.0,
            Brightness::Bright => 160.0,
            Brightness::VeryBright => 212.0,
        }
    }

    /// Finds a brightness phrase in lowercase `words` (a token list): "dark", "dim",
    /// "bright", with "very" or "fairly" before them shifting the level. The last
    /// phrase found counts.
    pub fn find_in(words: &[&str]) -> Option<Brightness> {
        let mut found = None;
        for (i, w) in words.iter().enumerate() {
            let before = if i > 0 { words[i - 1] } else { "" };
            let b = match (*w, before) {
                ("dark", "very") => Some(Brightness::VeryDark),
                ("dark", _) => Some(Brightness::Dark),
                ("dim", _) => Some(Brightness::Dim),
                ("bright", "very") => Some(Brightness::VeryBright),
                ("bright", "fairly") => Some(Brightness::FairlyBright),
                ("bright", _) => Some(Brightness::Bright),
                _ => None,
            };
            if b.is_some() {
                found = b;
            }
        }
        found
    }
}

/// BT.601 luma of an sRGB pixel (0–255).
pub fn luma(rgb: [u8; 3]) -> f64 {
    0.299 * f64::from(rgb[0]) + 0.587 * f64::from(rgb[1]) + 0.114 * f64::from(rgb[2])
}

/// Linear light of each 8-bit sRGB value: 256 `powf`s once instead of three per pixel
/// (the attributes captioner names the colour of every sampled pixel).
static SRGB_TO_LINEAR: LazyLock<[f64; 256]> = LazyLock::new(|| {
    std::array::from_fn(|v| {
        let c = v as f64 / 255.0;
        if c <= 0.040_45 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    })
});

/// The L*a*b* of every reference colour, computed once.
static REFERENCE_LAB: LazyLock<Vec<(ColorName, [f64; 3])>> = LazyLock::new(|| {
    REFERENCES
        .iter()
        .flat_map(|(name, refs)| refs.iter().map(move |r| (*name, srgb_to_lab(*r))))
        .collect()
});

/// CIE L*a*b* (D65 white) of an sRGB pixel.
pub fn srgb_to_lab(rgb: [u8; 3]) -> [f64; 3] {
    let lin = &*SRGB_TO_LINEAR;
    let (r, g, b) = (
        lin[usize::from(rgb[0])],
        lin[usize::from(rgb[1])],
        lin[usize::from(rgb[2])],
    );
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175_0 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f64| {
        if t > 216.0 / 24389.0 {
            t.cbrt()
        } else {
            (24389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// Names a pixel: the colour whose nearest reference is closest in L*a*b*.
pub fn nearest_color(rgb: [u8; 3]) -> ColorName {
    let lab = srgb_to_lab(rgb);
    let mut best = (f64::INFINITY, ColorName::Gray);
    for (name, l) in REFERENCE_LAB.iter() {
        let d = (lab[0] - l[0]).powi(2) + (lab[1] - l[1]).powi(2) + (lab[2] - l[2]).powi(2);
        if d < best.0 {
            best = (d, *name);
        }
    }
    best.1
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_of_typical_colours() {
        let cases: [([u8; 3], ColorName); 14] = [
            ([0, 0, 0], ColorName::Black),
            ([255, 255, 255], ColorName::White),
            ([128, 128, 128], ColorName::Gray),
            ([255, 0, 0], ColorName::Red),
            ([255, 165, 0], ColorName::Orange),
            ([255, 255, 0], ColorName::Yellow),
            ([0, 128, 0], ColorName::Green),
            ([0, 0, 255], ColorName::Blue),
            ([0, 0, 128], ColorName::Blue),
            ([135, 206, 235], ColorName::Blue),
            ([128, 0, 128], ColorName::Purple),
            ([255, 192, 203], ColorName::Pink),
            ([139, 69, 19], ColorName::Brown),
            ([34, 139, 34], ColorName::Green),
        ];
        for (rgb, want) in cases {
            assert_eq!(nearest_color(rgb), want, "{rgb:?}");
        }
    }

    #[test]
    fn every_name_round_trips_and_paints_as_itself() {
        for c in ColorName::ALL {
            assert_eq!(ColorName::from_word(c.word()), Some(c));
            assert_eq!(nearest_color(c.rgb()), c);
        }
        assert_eq!(ColorName::from_word("Grey"), Some(ColorName::Gray));
        assert_eq!(ColorName::from_word("teal"), None);
    }

    #[test]
    fn brightness_levels_round_trip() {
        for b in Brightness::ALL {
            assert_eq!(Brightness::from_luma(b.target_luma()), b);
            let words: Vec<&str> = b.words().split(' ').collect();
            assert_eq!(Brightness::find_in(&words), Some(b));
        }
        assert_eq!(Brightness::find_in(&["the", "sky"]), None);
    }
}
