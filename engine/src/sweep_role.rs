//! What a kind's stages mean to `dataflow sweep`, declared by the kind
//! ([`crate::StageKind::SWEEP`]) so the sweep names no kind: a new kind that reads the
//! sweep's images, writes its rows or sends at a byte budget says so in its own file.

/// The part a kind's stages play in a sweep; each names the key of the kind it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SweepRole {
    /// None.
    #[default]
    None,
    /// A source of images read from the folder in `key`; `sweep --images` replaces it.
    Images {
        /// The folder key.
        key: &'static str,
    },
    /// Writes a CSV row per frame to the file in `key` (default `<stage>.csv` in the run's
    /// folder): the sweep's data.
    Rows {
        /// The file key.
        key: &'static str,
    },
    /// Writes the image field named in `key` (default `default`) to the folder `<stage>`
    /// in the run's folder; the report shows the one writing `image` (the reconstructions).
    ImageFiles {
        /// The field key.
        key: &'static str,
        /// The field written when the stage does not say.
        default: &'static str,
    },
    /// Sends images at a byte budget of `key` bits per pixel (default `default`), which
    /// `sweep --match-bandwidth` sets; `noiseless` names the boolean key that sends over a
    /// noiseless channel, which the calibration sets so that only the budget decides the
    /// channel uses.
    Budget {
        /// The bits-per-pixel key.
        key: &'static str,
        /// Its default.
        default: f64,
        /// The key of a noiseless channel (`true` while calibrating).
        noiseless: &'static str,
    },
}
