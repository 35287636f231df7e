//! Image codecs of the digital baseline, with the quality chosen to fit a byte budget.
//!
//! The paper's digital baseline is BPG (HEVC intra in its own container) over LDPC. No
//! BPG encoder ships in a package registry we can reach, so the stand-ins are, closest
//! first:
//!
//! - [`Codec::Heif`]: HEVC intra (x265) in HEIF through `heif-enc`/`heif-convert` from
//!   Debian's `libheif-examples` — the same intra coding tools as BPG;
//! - [`Codec::Avif`]: AV1 intra (libaom) in AVIF through the same tools (`heif-enc -A`);
//! - [`Codec::Jpeg`]: baseline JPEG from the `image` crate, in process.
//!
//! [`encode_to_budget`] bisects the quality (1..=100) for the largest output that fits
//! the budget; the result depends only on the pixels, the codec and the budget, so it can
//! be cached on disk ([`BudgetCache`]) and an SNR sweep encodes each image once.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Codec errors.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The external encoder/decoder is not installed.
    #[error("`{tool}` is not installed; it comes with Debian's `libheif-examples` (run `scripts/setup-system libheif-examples`), or use codec = \"jpeg\"")]
    Missing {
        /// The program looked for.
        tool: String,
    },
    /// The tool ran and failed.
    #[error("`{tool}` failed: {message}")]
    Tool {
        /// The program.
        tool: String,
        /// Its stderr, trimmed.
        message: String,
    },
    /// Bytes that do not decode.
    #[error("{codec} bytes do not decode: {message}")]
    Decode {
        /// The codec.
        codec: Codec,
        /// Why.
        message: String,
    },
    /// File-system trouble with temporary files.
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
}

/// An image codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// HEVC intra in HEIF (`heif-enc`), the closest to BPG.
    Heif,
    /// AV1 intra in AVIF (`heif-enc -A`, libaom).
    Avif,
    /// JPEG (`image` crate).
    Jpeg,
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codec::Heif => "heif",
            Codec::Avif => "avif",
            Codec::Jpeg => "jpeg",
        })
    }
}

impl Codec {
    /// What stands behind the name, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Codec::Heif => "HEVC intra (x265) in HEIF via heif-enc (libheif), standing in for BPG",
            Codec::Avif => "AV1 intra (libaom) in AVIF via heif-enc -A (libheif)",
            Codec::Jpeg => "baseline JPEG (image crate)",
        }
    }

    /// Checks that the external tools are there (no-op for JPEG).
    pub fn check_available(self) -> Result<(), CodecError> {
        if self == Codec::Jpeg {
            return Ok(());
        }
        for tool in ["heif-enc", "heif-convert"] {
            if which(tool).is_none() {
                return Err(CodecError::Missing { tool: tool.into() });
            }
        }
        Ok(())
    }

    /// Encodes at `quality` (1..=100).
    pub fn encode(self, img: &image::RgbImage, quality: u8) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::Jpeg => {
                let mut buf = Cursor::new(Vec::new());
                let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality.clamp(1, 100));
                img.write_with_encoder(enc).map_err(|e| CodecError::Tool {
                    tool: "jpeg".into(),
                    message: e.to_string(),
                })?;
                Ok(buf.into_inner())
            }
            Codec::Heif | Codec::Avif => {
                let dir = tempfile::tempdir()?;
                let png = dir.path().join("in.png");
                img.save(&png).map_err(|e| CodecError::Tool {
                    tool: "png".into(),
                    message: e.to_string(),
                })?;
                let out = dir
                    .path()
                    .join(if self == Codec::Avif { "out.avif" } else { "out.heic" });
                let mut cmd = Command::new("heif-enc");
                cmd.arg("-q").arg(quality.clamp(1, 100).to_string());
                if self == Codec::Avif {
                    cmd.arg("-A");
                }
                cmd.arg("--no-alpha").arg(&png).arg("-o").arg(&out);
                run(cmd, "heif-enc")?;
                Ok(std::fs::read(out)?)
            }
        }
    }

    /// Decodes bytes produced by [`Codec::encode`].
    pub fn decode(self, bytes: &[u8]) -> Result<image::RgbImage, CodecError> {
        match self {
            Codec::Jpeg => image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)
                .map(|i| i.to_rgb8())
                .map_err(|e| CodecError::Decode {
                    codec: self,
                    message: e.to_string(),
                }),
            Codec::Heif | Codec::Avif => {
                let dir = tempfile::tempdir()?;
                let input = dir.path().join(if self == Codec::Avif { "in.avif" } else { "in.heic" });
                std::fs::write(&input, bytes)?;
                let png = dir.path().join("out.png");
                let mut cmd = Command::new("heif-convert");
                cmd.arg(&input).arg(&png);
                run(cmd, "heif-convert").map_err(|e| match e {
                    CodecError::Tool { message, .. } => CodecError::Decode { codec: self, message },
                    other => other,
                })?;
                image::open(&png).map(|i| i.to_rgb8()).map_err(|e| CodecError::Decode {
                    codec: self,
                    message: e.to_string(),
                })
            }
        }
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

fn run(mut cmd: Command, tool: &str) -> Result<(), CodecError> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CodecError::Missing { tool: tool.into() }
        } else {
            CodecError::Io(e)
        }
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = if err.trim().is_empty() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            err.into_owned()
        };
        return Err(CodecError::Tool {
            tool: tool.into(),
            message: msg.trim().chars().take(400).collect(),
        });
    }
    Ok(())
}

/// An image encoded to a budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encoded {
    /// The bitstream.
    pub bytes: Vec<u8>,
    /// The quality it was made at.
    pub quality: u8,
    /// Even the lowest quality did not fit: the bytes are larger than the budget.
    pub over_budget: bool,
}

/// Bisects the quality for the largest bitstream of at most `budget` bytes.
pub fn encode_to_budget(img: &image::RgbImage, codec: Codec, budget: usize) -> Result<Encoded, CodecError> {
    let (mut lo, mut hi) = (1u8, 100u8);
    let lowest = codec.encode(img, lo)?;
    if lowest.len() > budget {
        return Ok(Encoded {
            bytes: lowest,
            quality: lo,
            over_budget: true,
        });
    }
    let mut best = (lo, lowest);
    // Invariant: quality `lo` fits; search (lo, hi].
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let bytes = codec.encode(img, mid)?;
        if bytes.len() <= budget {
            lo = mid;
            best = (mid, bytes);
        } else {
            hi = mid - 1;
        }
    }
    Ok(Encoded {
        bytes: best.1,
        quality: best.0,
        over_budget: false,
    })
}

/// On-disk cache of [`encode_to_budget`] results, keyed by the pixels, codec and budget.
#[derive(Debug, Clone)]
pub struct BudgetCache {
    dir: PathBuf,
}

impl BudgetCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BudgetCache { dir: dir.into() }
    }

    /// The default folder: `$XDG_CACHE_HOME/dataflow/codec` or `~/.cache/dataflow/codec`.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .map(|c| c.join("dataflow").join("codec"))
    }

    fn key(img: &image::RgbImage, codec: Codec, budget: usize) -> String {
        let mut h = Sha256::new();
        h.update(img.width().to_le_bytes());
        h.update(img.height().to_le_bytes());
        h.update(img.as_raw());
        let digest = h.finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("{hex}-{codec}-{budget}")
    }

    /// The cached result, or a fresh encoding that is then stored (best effort).
    pub fn encode(&self, img: &image::RgbImage, codec: Codec, budget: usize) -> Result<Encoded, CodecError> {
        let key = Self::key(img, codec, budget);
        let bin = self.dir.join(format!("{key}.bin"));
        let meta = self.dir.join(format!("{key}.json"));
        if let (Ok(bytes), Ok(m)) = (std::fs::read(&bin), std::fs::read(&meta)) {
            if let Ok((quality, over_budget)) = serde_json::from_slice::<(u8, bool)>(&m) {
                return Ok(Encoded {
                    bytes,
                    quality,
                    over_budget,
                });
            }
        }
        let enc = encode_to_budget(img, codec, budget)?;
        if std::fs::create_dir_all(&self.dir).is_ok() {
            // Write under a temporary name and rename, so a reader never sees half a file.
            let tmp = self.dir.join(format!("{key}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, &enc.bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &bin);
            }
            if let Ok(m) = serde_json::to_vec(&(enc.quality, enc.over_budget)) {
                let _ = std::fs::write(&tmp, m).and_then(|_| std::fs::rename(&tmp, &meta));
            }
        }
        Ok(enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture() -> image::RgbImage {
        image::RgbImage::from_fn(96, 64, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) * 2) as u8])
        })
    }

    #[test]
    fn jpeg_fits_the_budget_with_the_highest_quality_that_does() {
        let img = picture();
        let enc = encode_to_budget(&img, Codec::Jpeg, 1500).unwrap();
        assert!(!enc.over_budget);
        assert!(enc.bytes.len() <= 1500);
        if enc.quality < 100 {
            assert!(Codec::Jpeg.encode(&img, enc.quality + 1).unwrap().len() > 1500);
        }
        let back = Codec::Jpeg.decode(&enc.bytes).unwrap();
        assert_eq!(back.dimensions(), (96, 64));
    }

    #[test]
    fn an_impossible_budget_is_reported() {
        let enc = encode_to_budget(&picture(), Codec::Jpeg, 10).unwrap();
        assert!(enc.over_budget);
        assert_eq!(enc.quality, 1);
    }

    #[test]
    fn heif_and_avif_round_trip_when_installed() {
        for codec in [Codec::Heif, Codec::Avif] {
            if codec.check_available().is_err() {
                assert!(!crate::assets::assets_required(), "heif-enc missing");
                println!("skipped heif_and_avif_round_trip_when_installed: heif-enc missing");
                continue;
            }
            let img = picture();
            let enc = encode_to_budget(&img, codec, 2000).unwrap();
            assert!(enc.bytes.len() <= 2000, "{codec}: {} bytes", enc.bytes.len());
            let back = codec.decode(&enc.bytes).unwrap();
            assert_eq!(back.dimensions(), (96, 64));
            assert!(crate::quality::psnr(&img, &back) > 20.0);
            assert!(matches!(
                codec.decode(&enc.bytes[..enc.bytes.len() / 2]),
                Err(CodecError::Decode { .. })
            ));
        }
    }

    #[test]
    fn the_cache_returns_what_it_stored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BudgetCache::new(dir.path());
        let a = cache.encode(&picture(), Codec::Jpeg, 1500).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let b = cache.encode(&picture(), Codec::Jpeg, 1500).unwrap();
        assert_eq!(a, b);
    }
}
