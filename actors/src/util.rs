//! Helpers shared by stage kinds.

use std::path::Path;

use dataflow_engine::{Image, Message, StageError};

/// Largest image (in pixels) a source decodes; larger headers are refused before any
/// pixel is allocated (decompression bombs).
pub const DEFAULT_MAX_PIXELS: u64 = 64_000_000;

/// The image field `name` of a message, or an error naming the field and the frame.
pub fn image_field<'a>(msg: &'a Message, name: &str, stage: &str) -> Result<&'a Image, StageError> {
    msg.fields
        .image(name)
        .ok_or_else(|| StageError::input(format!("stage `{stage}`: frame {} has no image field `{name}`", msg.id)))
}

/// Decodes an image file to RGB, refusing headers larger than `max_pixels`.
pub fn decode_rgb(path: &Path, max_pixels: u64) -> Result<image::RgbImage, StageError> {
    let shown = path.display();
    // One read from disk; the header is parsed from memory before any pixel is allocated.
    let bytes = std::fs::read(path).map_err(|e| StageError::io(format!("{shown}: cannot open: {e}")))?;
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes.as_slice()))
            .with_guessed_format()
            .map_err(|e| StageError::io(format!("{shown}: cannot read: {e}")))
    };
    if reader()?.format().is_none() {
        return Err(StageError::new(
            "decode",
            format!("{shown}: not an image (unknown format); remove it from the folder"),
        ));
    }
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| StageError::new("decode", format!("{shown}: corrupt image header: {e}")))?;
    if w == 0 || h == 0 {
        return Err(StageError::new(
            "decode",
            format!("{shown}: image has zero size ({w}x{h})"),
        ));
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(StageError::new(
            "decode",
            format!(
                "{shown}: {w}x{h} pixels is over the limit of {max_pixels} (raise `max_pixels` if this is intended)"
            ),
        ));
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| StageError::new("decode", format!("{shown}: cannot decode: {e}")))?;
    Ok(img.to_rgb8())
}

/// A file-name-safe name for a frame: the `name` field when present, else the frame id.
pub fn frame_name(msg: &Message) -> String {
    match msg.fields.text("name") {
        Some(n) => n
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
        None => format!("{:02}-{:06}", msg.id.stream, msg.id.seq),
    }
}

/// A model file: `explicit` when the graph names one, else `relative` inside the
/// set-up's assets folder. The error says where it was looked for and what to run.
pub fn model_file(
    explicit: Option<&Path>,
    relative: &str,
    ctx: &dataflow_engine::BuildContext,
) -> Result<std::path::PathBuf, StageError> {
    if let Some(p) = explicit {
        let p = ctx.resolve(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(StageError::io(format!(
                "model file {} not found (from `model_path`)",
                p.display()
            )))
        };
    }
    match dataflow_models::assets::asset_path(relative) {
        Ok(p) if p.is_file() => Ok(p),
        Ok(p) => Err(StageError::io(format!(
            "model file {} is missing; run `scripts/setup-assets` (or `make setup`) to fetch the offline models",
            p.display()
        ))),
        Err(e) => Err(StageError::io(format!(
            "{e}; run `scripts/setup-assets` (or `make setup`)"
        ))),
    }
}

/// Fields of every message of a joined frame, merged in input order (later inputs win).
pub fn merge_joined(j: &dataflow_engine::Joined) -> dataflow_engine::Fields {
    let mut f = dataflow_engine::Fields::new();
    for input in &j.parts {
        for m in input.iter().flatten() {
            for (k, v) in m.fields.iter() {
                f.insert(k, v.clone());
            }
        }
    }
    f
}

/// Checks the LDPC settings a stage takes (`rate` in (0, 0.95], `iterations` >= 1), with
/// the message a user sees.
pub fn check_ldpc_settings(rate: f64, iterations: usize) -> Result<(), StageError> {
    if !(rate > 0.0 && rate <= 0.95) {
        return Err(StageError::input(format!("`rate` must be in (0, 0.95], got {rate}")));
    }
    if iterations == 0 {
        return Err(StageError::input("`iterations` must be at least 1"));
    }
    Ok(())
}

/// One digital link of a channel stage: modulation, fading and AWGN at an SNR, seeded
/// per graph, stage, frame and stream, with the bit counters of DESIGN §8.
pub struct Link {
    snr_db: f64,
    channel: dataflow_models::channel::Channel,
    modulation: dataflow_models::channel::Modulation,
    ideal: bool,
    seed: u64,
    stage: String,
    bits: metrics::Counter,
    errors: metrics::Counter,
}

impl Link {
    /// A link for stage `ctx.stage` at average Es/N0 `snr_db` with `fading`; checks the
    /// SNR and registers the channel metrics.
    pub fn new(
        snr_db: f64,
        fading: dataflow_models::channel::Fading,
        modulation: dataflow_models::channel::Modulation,
        ideal: bool,
        ctx: &dataflow_engine::BuildContext,
    ) -> Result<Link, StageError> {
        use dataflow_monitoring::names;
        if !snr_db.is_finite() {
            return Err(StageError::input(format!(
                "`snr_db` must be a finite number, got {snr_db}"
            )));
        }
        let labels = [
            (names::LABEL_STAGE, ctx.stage.clone()),
            (names::LABEL_MODULATION, modulation.to_string()),
        ];
        metrics::gauge!(names::CHANNEL_SNR_DB, names::LABEL_STAGE => ctx.stage.clone()).set(snr_db);
        let channel = dataflow_models::channel::Channel::new(snr_db, fading)
            .map_err(|e| StageError::input(format!("channel: {e}")))?;
        Ok(Link {
            snr_db,
            channel,
            modulation,
            ideal,
            seed: ctx.seed,
            stage: ctx.stage.clone(),
            bits: metrics::counter!(names::CHANNEL_BITS, &labels),
            errors: metrics::counter!(names::CHANNEL_BIT_ERRORS, &labels),
        })
    }

    /// Sends `bytes` of frame `seq`, stream `stream` (tile or sub-stream), and counts the bits.
    pub fn send(
        &self,
        bytes: &[u8],
        seq: u64,
        stream: u32,
    ) -> Result<dataflow_models::channel::Transmission, StageError> {
        use dataflow_models::channel::{channel_rng, ideal, transmit_bytes_over};
        let tx = if self.ideal {
            let mut tx = ideal(bytes, self.modulation);
            tx.symbols += self.channel.fading().pilot_uses(tx.symbols as usize);
            tx
        } else {
            let mut rng = channel_rng(self.seed, &self.stage, seq, stream);
            transmit_bytes_over(bytes, self.modulation, &self.channel, &mut rng)
                .map_err(|e| StageError::input(format!("channel: {e}")))?
        };
        self.bits.increment(tx.bits);
        self.errors.increment(tx.bit_errors);
        Ok(tx)
    }

    /// Sends `bytes` over 5G NR LDPC at code `rate` (layered min-sum, at most `iterations`)
    /// on this link's modulation and SNR, and counts the coded bits.
    pub fn send_coded(
        &self,
        bytes: &[u8],
        seq: u64,
        stream: u32,
        rate: f64,
        iterations: usize,
    ) -> Result<dataflow_models::ldpc::CodedTransmission, StageError> {
        use dataflow_models::channel::channel_rng;
        use dataflow_models::ldpc::{transmit_coded_over, CheckRule, CodedLink};
        let mut rng = channel_rng(self.seed, &self.stage, seq, stream);
        let link = CodedLink {
            modulation: self.modulation,
            snr_db: if self.ideal { f64::INFINITY } else { self.snr_db },
            rate,
            base_graph: None,
            rule: CheckRule::MinSum { alpha: 0.75 },
            iterations,
        };
        let tx = transmit_coded_over(bytes, &link, self.channel.fading(), &mut rng)
            .map_err(|e| StageError::input(format!("coded link: {e}")))?;
        self.bits.increment(tx.coded_bits);
        self.errors.increment(tx.bit_errors);
        Ok(tx)
    }
}

/// The fading a channel stage's keys describe (`model`, `k_factor`, `coherence`, `csi`),
/// or the key to blame: one reading for every channel kind's `validate` and `build`.
pub fn fading_keys(
    model: dataflow_models::channel::FadingModel,
    k_factor: Option<f64>,
    coherence: dataflow_models::channel::Coherence,
    csi: dataflow_models::channel::Csi,
) -> Result<dataflow_models::channel::Fading, dataflow_engine::KeyProblem> {
    dataflow_models::channel::Fading::from_keys(model, k_factor, coherence, csi).map_err(|p| {
        dataflow_engine::KeyProblem {
            key: p.key,
            message: p.message,
        }
    })
}

/// `img` as JPEG bytes at `quality` (the baseline encoder of the `image` crate).
pub fn encode_jpeg(img: &image::DynamicImage, quality: u8) -> Result<Vec<u8>, StageError> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality);
    img.write_with_encoder(enc)
        .map_err(|e| StageError::new("encode", format!("JPEG encoding failed: {e}")))?;
    Ok(buf.into_inner())
}
