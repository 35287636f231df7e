//! Deep JSCC (Bourtsoulatze, Burth Kurka and Gündüz, "Deep Joint Source-Channel Coding
//! for Wireless Image Transmission", IEEE TCCN 2019): the analog baseline.
//!
//! Provenance: `models/export/deep_jscc.py` trains the paper's encoder/decoder on image
//! crops and exports `encoder.onnx` (`image` f32 [1,3,H,W] in [0,1] → `latent`
//! f32 [1,c,H/4,W/4], power-normalised so the mean energy per complex symbol is 1) and
//! `decoder.onnx` (`latent` → `image`, sigmoid output). The checkpoint this project
//! trained, with the data it saw and its PSNR curve, is `models/weights/deep_jscc/` (see
//! its `training.json`).
//!
//! The channel sits between the two sessions: consecutive latent values along the
//! channel axis pair up as the real and imaginary part of one complex symbol, which
//! crosses the same channel as every other channel stage ([`crate::channel::Channel`]:
//! AWGN, or Rayleigh/Rician fading with the receiver equalising by the (estimated) gain
//! before the decoder sees the symbols; pilots, when the receiver estimates the gain,
//! count as channel uses).
//! H and W are padded by edge replication to multiples of 4 and cropped back.

use std::path::Path;

use image::RgbImage;
use rand::Rng;

use crate::channel::{Channel, Complex};
use crate::error::ModelError;
use crate::provider::{ActiveProvider, SessionOptions};
use crate::session::{load_session, IoSpec, LoadedSession, TensorSpec};

/// The encoder/decoder pair.
#[derive(Debug)]
pub struct DeepJscc {
    encoder: LoadedSession,
    decoder: LoadedSession,
}

/// What one image's transmission gave.
#[derive(Debug, Clone)]
pub struct JsccOutput {
    /// The reconstruction, the size of the input.
    pub image: RgbImage,
    /// Complex channel uses: latent values / 2, plus the pilot symbols of the channel.
    pub channel_uses: usize,
    /// Mean energy per complex symbol as sent (1 by construction).
    pub symbol_energy: f64,
}

impl DeepJscc {
    /// The encoder's tensors.
    pub fn encoder_spec() -> IoSpec {
        IoSpec::new()
            .input(TensorSpec::f32("image", &[-1, 3, -1, -1]))
            .output(TensorSpec::f32("latent", &[-1, -1, -1, -1]))
    }

    /// The decoder's tensors.
    pub fn decoder_spec() -> IoSpec {
        IoSpec::new()
            .input(TensorSpec::f32("latent", &[-1, -1, -1, -1]))
            .output(TensorSpec::f32("image", &[-1, 3, -1, -1]))
    }

    /// Loads `dir/encoder.onnx` and `dir/decoder.onnx`.
    pub fn load(dir: &Path, options: &SessionOptions) -> Result<Self, ModelError> {
        Ok(DeepJscc {
            encoder: load_session(dir.join("encoder.onnx"), options, &Self::encoder_spec())?,
            decoder: load_session(dir.join("decoder.onnx"), options, &Self::decoder_spec())?,
        })
    }

    /// The provider the sessions run on.
    pub fn provider(&self) -> ActiveProvider {
        self.encoder.provider()
    }

    /// Encodes `image`, sends the latent through `channel` drawing from `rng` (the
    /// decoder gets the equalised symbols), decodes.
    pub fn transmit<R: Rng + ?Sized>(
        &mut self,
        image: &RgbImage,
        channel: &Channel,
        rng: &mut R,
    ) -> Result<JsccOutput, ModelError> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(ModelError::Invalid(format!("cannot send an empty image ({w}x{h})")));
        }
        let (pw, ph) = (w.div_ceil(4) * 4, h.div_ceil(4) * 4);
        let (pwu, phu) = (pw as usize, ph as usize);
        let mut input = vec![0f32; 3 * pwu * phu];
        for y in 0..ph {
            for x in 0..pw {
                let p = image.get_pixel(x.min(w - 1), y.min(h - 1));
                for c in 0..3 {
                    input[c * pwu * phu + y as usize * pwu + x as usize] = f32::from(p[c]) / 255.0;
                }
            }
        }
        let mut latent = self
            .encoder
            .run_f32(&[("image", &[1, 3, phu, pwu], &input)], &["latent"])?
            .pop()
            .ok_or_else(|| ModelError::Invalid("the JSCC encoder returned no latent".into()))?;
        if latent.data.len() % 2 != 0 {
            return Err(ModelError::Invalid(format!(
                "the JSCC latent has {} values; complex symbols need an even count",
                latent.data.len()
            )));
        }
        let mut symbols: Vec<Complex> = latent
            .data
            .chunks_exact(2)
            .map(|p| Complex::new(f64::from(p[0]), f64::from(p[1])))
            .collect();
        let symbol_energy = symbols.iter().map(|s| s.norm_sqr()).sum::<f64>() / symbols.len() as f64;
        let faded = channel.apply(&mut symbols, rng);
        for (pair, s) in latent.data.chunks_exact_mut(2).zip(&symbols) {
            pair[0] = s.re as f32;
            pair[1] = s.im as f32;
        }
        let out = self
            .decoder
            .run_f32(&[("latent", &latent.shape, &latent.data)], &["image"])?
            .pop()
            .ok_or_else(|| ModelError::Invalid("the JSCC decoder returned no image".into()))?;
        if out.data.len() != 3 * pwu * phu {
            return Err(ModelError::Invalid(format!(
                "the JSCC decoder returned shape {:?}, expected [1, 3, {ph}, {pw}]",
                out.shape
            )));
        }
        let plane = pwu * phu;
        let img = RgbImage::from_fn(w, h, |x, y| {
            let i = y as usize * pwu + x as usize;
            let px = |c: usize| (out.data[c * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8;
            image::Rgb([px(0), px(1), px(2)])
        });
        Ok(JsccOutput {
            image: img,
            channel_uses: symbols.len() + faded.pilots as usize,
            symbol_energy,
        })
    }
}
