//! ESRGAN-slim super-resolution: the upscaler of `reconstruct model = "thumbnail_sr"`.
//!
//! - Model: the "slim" RDN super-resolution networks of the npm package
//!   `@upscalerjs/esrgan-slim` 1.0.0 (MIT; trained on DIV2K, `rdn-C1-D2-G4-G064-T10`), one
//!   per scale ×2, ×3, ×4, ×8, TF.js layers models of standard Keras layers (~0.9–1.1 MB).
//! - Export: `scripts/setup-assets` converts each once with `tf2onnx` 1.17.0
//!   (`scripts/convert-esrgan.py`, in a venv of its own under the cache dir) to
//!   `assets/models/esrgan/esrgan-slim-x{S}.onnx` (opset 13), checked against the Keras
//!   model on a sample photo within 1e-3 (the `.verified.json` stamp beside it).
//! - Tensors: input `LR` f32 `[1, h, w, 3]`, output `SR` f32 `[1, S·h, S·w, 3]`, NHWC,
//!   RGB in 0–255 on both sides (the package's model definition gives `inputRange` and
//!   `outputRange` `[0, 255]` for the `rdn` architecture; no normalisation). The output is
//!   rounded and clamped to 0–255.
//!
//! Large images are cut into tiles of at most `tile` × `tile` input pixels, each run with
//! [`CONTEXT`] extra pixels of its neighbours around it (the network's receptive field),
//! and only the tile's own part of the output is kept. Memory is then bounded by the tile,
//! and the seams are invisible: the tiled output equals the whole-image output up to float
//! rounding (tested in `models/tests/esrgan.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::error::ModelError;
use crate::provider::{ActiveProvider, SessionOptions};
use crate::session::{load_session, IoSpec, LoadedSession, TensorSpec};

/// The scales the package ships.
pub const SCALES: [u32; 4] = [2, 3, 4, 8];
/// Name of the input tensor.
pub const INPUT: &str = "LR";
/// Name of the output tensor.
pub const OUTPUT: &str = "SR";
/// Default tile side, in input pixels (the package trains on 128-pixel patches).
pub const DEFAULT_TILE: u32 = 128;
/// Input pixels of context around each tile. The network has 12 3×3 convolutions before
/// its up-sampling (a receptive radius of 12 input pixels) and 2 after it.
pub const CONTEXT: u32 = 16;

/// The converted model of `scale`, relative to the assets folder.
pub fn model_file(scale: u32) -> String {
    format!("models/esrgan/esrgan-slim-x{scale}.onnx")
}

/// An upscaled image and the time spent in the model.
#[derive(Debug, Clone)]
pub struct Upscaled {
    /// The image, `scale` times the input's size.
    pub image: RgbImage,
    /// Time spent in the model alone, over all tiles.
    pub inference: Duration,
    /// Model runs (tiles).
    pub tiles: usize,
}

/// One ESRGAN-slim network loaded into its own session.
#[derive(Debug)]
pub struct Upscaler {
    session: LoadedSession,
    scale: u32,
    tile: u32,
}

impl Upscaler {
    /// The tensors every converted ESRGAN-slim must have.
    pub fn io_spec() -> IoSpec {
        IoSpec::new()
            .input(TensorSpec::f32(INPUT, &[-1, -1, -1, 3]))
            .output(TensorSpec::f32(OUTPUT, &[-1, -1, -1, 3]))
    }

    /// Loads the network of `scale` from `path` (e.g. `assets/` + [`model_file`]).
    pub fn load(path: impl AsRef<Path>, scale: u32, options: &SessionOptions) -> Result<Self, ModelError> {
        if !SCALES.contains(&scale) {
            return Err(ModelError::Invalid(format!(
                "ESRGAN-slim has no ×{scale} network (it has ×2, ×3, ×4 and ×8)"
            )));
        }
        let session = load_session(path, options, &Self::io_spec())?;
        Ok(Upscaler {
            session,
            scale,
            tile: DEFAULT_TILE,
        })
    }

    /// This upscaler with tiles of at most `side` × `side` input pixels (at least 8).
    pub fn with_tile(mut self, side: u32) -> Self {
        self.tile = side.max(8);
        self
    }

    /// The upscaling factor.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// The provider the session runs on.
    pub fn provider(&self) -> ActiveProvider {
        self.session.provider()
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        self.session.path()
    }

    /// The raw output `[S·h, S·w, 3]` (0–255, unclamped) of a prepared input `[h, w, 3]`
    /// (see [`to_input`]), in one model run.
    pub fn run_raw(&mut self, input: &[f32], width: u32, height: u32) -> Result<Vec<f32>, ModelError> {
        let (w, h) = (width as usize, height as usize);
        let mut outputs = self.session.run_f32(&[(INPUT, &[1, h, w, 3], input)], &[OUTPUT])?;
        let out = outputs
            .pop()
            .ok_or_else(|| ModelError::Invalid("ESRGAN returned no output".into()))?;
        let s = self.scale as usize;
        if out.shape != [1, h * s, w * s, 3] {
            return Err(ModelError::Invalid(format!(
                "ESRGAN ×{s} output of {} has shape {:?} for a {w}×{h} input, expected [1, {}, {}, 3]",
                self.session.path().display(),
                out.shape,
                h * s,
                w * s
            )));
        }
        Ok(out.data)
    }

    /// Upscales `image` by [`Upscaler::scale`], tile by tile (see the module docs).
    pub fn upscale(&mut self, image: &RgbImage) -> Result<Upscaled, ModelError> {
        let (w, h) = image.dimensions();
        let s = self.scale;
        let mut out = RgbImage::new(w * s, h * s);
        let (mut inference, mut tiles) = (Duration::ZERO, 0);
        for (x0, y0, tw, th) in tiles_of(w, h, self.tile) {
            // The tile with its context, clipped to the image.
            let (cx0, cy0) = (x0.saturating_sub(CONTEXT), y0.saturating_sub(CONTEXT));
            let (cx1, cy1) = ((x0 + tw + CONTEXT).min(w), (y0 + th + CONTEXT).min(h));
            let crop = image::imageops::crop_imm(image, cx0, cy0, cx1 - cx0, cy1 - cy0).to_image();
            let started = Instant::now();
            let raw = self.run_raw(&to_input(&crop), crop.width(), crop.height())?;
            inference += started.elapsed();
            tiles += 1;
            let up = to_image(&raw, crop.width() * s, crop.height() * s)?;
            let (ox, oy) = ((x0 - cx0) * s, (y0 - cy0) * s);
            let own = image::imageops::crop_imm(&up, ox, oy, tw * s, th * s).to_image();
            image::imageops::replace(&mut out, &own, i64::from(x0 * s), i64::from(y0 * s));
        }
        Ok(Upscaled {
            image: out,
            inference,
            tiles,
        })
    }
}

/// The tiles `(x, y, width, height)` of at most `side` × `side` covering `w` × `h`, row-major.
pub fn tiles_of(w: u32, h: u32, side: u32) -> Vec<(u32, u32, u32, u32)> {
    let side = side.max(1);
    let mut tiles = Vec::new();
    for y in (0..h).step_by(side as usize) {
        for x in (0..w).step_by(side as usize) {
            tiles.push((x, y, side.min(w - x), side.min(h - y)));
        }
    }
    tiles
}

/// RGB 0–255 as f32, NHWC (the model's input layout and range).
pub fn to_input(image: &RgbImage) -> Vec<f32> {
    image.as_raw().iter().map(|&v| f32::from(v)).collect()
}

/// A raw `[h, w, 3]` output (0–255) as an image: rounded and clamped (NaN becomes 0).
pub fn to_image(raw: &[f32], width: u32, height: u32) -> Result<RgbImage, ModelError> {
    let px: Vec<u8> = raw.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect();
    let len = px.len();
    RgbImage::from_raw(width, height, px).ok_or_else(|| {
        ModelError::Invalid(format!(
            "ESRGAN output of {len} values is not a {width}×{height} RGB image"
        ))
    })
}
