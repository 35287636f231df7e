//! Image and text quality measures for the `evaluate` stage (DESIGN §5, offline tier):
//! PSNR, SSIM, pixel cosine similarity and BLEU.
//!
//! # Conventions
//!
//! - Images are 8-bit RGB. When the reconstruction's size differs from the reference's,
//!   the reconstruction is first resized to the reference size with a bilinear
//!   (triangle) filter, so every measure compares like with like and the reference is
//!   never altered.
//! - BLEU uses whitespace tokenisation after lowercasing, a single reference, uniform
//!   n-gram weights, the standard brevity penalty, and smoothing method 1 of Chen &
//!   Cherry (2014) (an n-gram order with zero matches gets precision ε/count, ε = 0.1),
//!   as NLTK's `SmoothingFunction().method1`.

use std::borrow::Cow;
use std::collections::HashMap;

use image::{imageops, RgbImage};

/// PSNR reported for identical images (the MSE is zero, the true value infinite).
pub const PSNR_CAP_DB: f64 = 100.0;

/// Epsilon of Chen & Cherry smoothing method 1.
pub const BLEU_EPSILON: f64 = 0.1;

/// `reconstruction` at the reference's size: borrowed when the sizes already match,
/// otherwise resized with a bilinear (triangle) filter.
pub fn match_size<'a>(reference: &RgbImage, reconstruction: &'a RgbImage) -> Cow<'a, RgbImage> {
    if reference.dimensions() == reconstruction.dimensions() {
        Cow::Borrowed(reconstruction)
    } else {
        Cow::Owned(imageops::resize(
            reconstruction,
            reference.width(),
            reference.height(),
            imageops::FilterType::Triangle,
        ))
    }
}

/// Mean squared error over all pixels and the three channels (0–255 scale), after
/// resizing the reconstruction to the reference size. An empty image gives 0.
pub fn mse(reference: &RgbImage, reconstruction: &RgbImage) -> f64 {
    let rec = match_size(reference, reconstruction);
    let n = reference.as_raw().len();
    if n == 0 {
        return 0.0;
    }
    let sum: f64 = reference
        .as_raw()
        .iter()
        .zip(rec.as_raw())
        .map(|(&a, &b)| {
            let d = f64::from(a) - f64::from(b);
            d * d
        })
        .sum();
    sum / n as f64
}

/// Peak signal-to-noise ratio in dB, 10·log10(255²/MSE) over the RGB channels, capped at
/// [`PSNR_CAP_DB`] (identical images). The reconstruction is resized to the reference
/// size first.
pub fn psnr(reference: &RgbImage, reconstruction: &RgbImage) -> f64 {
    let m = mse(reference, reconstruction);
    if m <= 0.0 {
        return PSNR_CAP_DB;
    }
    (10.0 * (255.0f64 * 255.0 / m).log10()).min(PSNR_CAP_DB)
}

/// Luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) as `f64`, row-major.
fn luma(img: &RgbImage) -> Vec<f64> {
    img.pixels()
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect()
}

/// Normalised 1-D Gaussian of `size` taps.
fn gaussian_kernel(size: usize, sigma: f64) -> Vec<f64> {
    let c = (size as f64 - 1.0) / 2.0;
    let k: Vec<f64> = (0..size)
        .map(|i| {
            let x = i as f64 - c;
            (-x * x / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let s: f64 = k.iter().sum();
    k.into_iter().map(|v| v / s).collect()
}

/// Separable "valid" filtering of a `w`×`h` plane with kernel `k` (output
/// (w−n+1)×(h−n+1)).
fn filter_valid(plane: &[f64], w: usize, h: usize, k: &[f64]) -> Vec<f64> {
    let n = k.len();
    let ow = w + 1 - n;
    let oh = h + 1 - n;
    let mut tmp = vec![0.0; ow * h];
    for y in 0..h {
        let row = &plane[y * w..(y + 1) * w];
        for x in 0..ow {
            tmp[y * ow + x] = k.iter().zip(&row[x..x + n]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = vec![0.0; ow * oh];
    for y in 0..oh {
        for x in 0..ow {
            out[y * ow + x] = k.iter().enumerate().map(|(i, kv)| kv * tmp[(y + i) * ow + x]).sum();
        }
    }
    out
}

/// Structural similarity (Wang, Bovik, Sheikh & Simoncelli, 2004) on luma (BT.601),
/// with the paper's settings: an 11×11 Gaussian window of σ = 1.5, K1 = 0.01,
/// K2 = 0.03, L = 255, averaged over the window positions that fit inside the image
/// ("valid" filtering, as the authors' reference code). Images smaller than 11 pixels
/// on a side use the largest odd window that fits. The reconstruction is resized to
/// the reference size first. Identical images give 1; an empty image gives 1.
pub fn ssim(reference: &RgbImage, reconstruction: &RgbImage) -> f64 {
    let rec = match_size(reference, reconstruction);
    let (w, h) = (reference.width() as usize, reference.height() as usize);
    if w == 0 || h == 0 {
        return 1.0;
    }
    let mut size = 11.min(w).min(h);
    if size % 2 == 0 {
        size -= 1;
    }
    let k = gaussian_kernel(size, 1.5);
    let a = luma(reference);
    let b = luma(&rec);
    let aa: Vec<f64> = a.iter().map(|v| v * v).collect();
    let bb: Vec<f64> = b.iter().map(|v| v * v).collect();
    let ab: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    let mu_a = filter_valid(&a, w, h, &k);
    let mu_b = filter_valid(&b, w, h, &k);
    let s_aa = filter_valid(&aa, w, h, &k);
    let s_bb = filter_valid(&bb, w, h, &k);
    let s_ab = filter_valid(&ab, w, h, &k);
    let c1 = (0.01f64 * 255.0).powi(2);
    let c2 = (0.03f64 * 255.0).powi(2);
    let n = mu_a.len();
    let total: f64 = (0..n)
        .map(|i| {
            let (ma, mb) = (mu_a[i], mu_b[i]);
            let va = s_aa[i] - ma * ma;
            let vb = s_bb[i] - mb * mb;
            let cov = s_ab[i] - ma * mb;
            ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
        })
        .sum();
    total / n as f64
}

/// Cosine similarity of the two images as flat vectors of 8-bit RGB values
/// (reconstruction resized to the reference size first). Pixel values are
/// non-negative, so the result lies in [0, 1]; two all-black images give 1, one
/// all-black image against any other gives 0.
pub fn pixel_cosine(reference: &RgbImage, reconstruction: &RgbImage) -> f64 {
    let rec = match_size(reference, reconstruction);
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in reference.as_raw().iter().zip(rec.as_raw()) {
        let (a, b) = (f64::from(a), f64::from(b));
        dot += a * b;
        na += a * a;
        nb += b * b;
    }
    match (na > 0.0, nb > 0.0) {
        (false, false) => 1.0,
        (true, true) => dot / (na.sqrt() * nb.sqrt()),
        _ => 0.0,
    }
}

/// Lowercased whitespace tokens.
fn tokens(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_lowercase).collect()
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for g in tokens.windows(n) {
            *counts.entry(g).or_insert(0) += 1;
        }
    }
    counts
}

/// BLEU-N of `candidate` against one `reference` sentence (Papineni et al. 2002):
/// geometric mean of the clipped n-gram precisions for n = 1..=max_n with uniform
/// weights, times the brevity penalty exp(1 − r/c) when the candidate is shorter.
/// Tokens are lowercased and split on whitespace; an order with no matching n-gram
/// gets precision ε/count (Chen & Cherry 2014, smoothing method 1, ε = 0.1; the count
/// is at least 1). An empty candidate scores 0; `max_n = 0` gives 0.
pub fn bleu(candidate: &str, reference: &str, max_n: usize) -> f64 {
    let cand = tokens(candidate);
    let refs = tokens(reference);
    if cand.is_empty() || max_n == 0 {
        return 0.0;
    }
    let mut log_sum = 0.0;
    for n in 1..=max_n {
        let c = ngram_counts(&cand, n);
        let r = ngram_counts(&refs, n);
        let matched: usize = c.iter().map(|(g, &k)| k.min(r.get(g).copied().unwrap_or(0))).sum();
        let total = cand.len().saturating_sub(n - 1).max(1);
        let p = if matched == 0 {
            BLEU_EPSILON / total as f64
        } else {
            matched as f64 / total as f64
        };
        log_sum += p.ln() / max_n as f64;
    }
    let (c, r) = (cand.len() as f64, refs.len() as f64);
    let bp = if c > r { 1.0 } else { (1.0 - r / c).exp() };
    bp * log_sum.exp()
}

/// BLEU-1 (unigram precision with brevity penalty); see [`bleu`].
pub fn bleu1(candidate: &str, reference: &str) -> f64 {
    bleu(candidate, reference, 1)
}

/// BLEU-4 (n = 1..4, uniform weights, smoothing method 1); see [`bleu`].
pub fn bleu4(candidate: &str, reference: &str) -> f64 {
    bleu(candidate, reference, 4)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) % 256) as u8])
        })
    }

    #[test]
    fn identical_images_hit_the_caps() {
        let img = gradient(64, 48);
        assert_eq!(psnr(&img, &img), PSNR_CAP_DB);
        assert!((ssim(&img, &img) - 1.0).abs() < 1e-12);
        assert!((pixel_cosine(&img, &img) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn psnr_of_a_known_error() {
        // Every value off by exactly 5: MSE = 25, PSNR = 10·log10(65025/25) = 34.151 dB.
        let a = RgbImage::from_pixel(32, 32, Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(32, 32, Rgb([105, 95, 105]));
        assert!((mse(&a, &b) - 25.0).abs() < 1e-12);
        assert!((psnr(&a, &b) - 34.151_403_521_958_73).abs() < 1e-9);
    }

    #[test]
    fn psnr_of_gaussian_noise() {
        // Additive noise of σ = 10 (clipping negligible around 128): PSNR ≈ 28.13 dB.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let a = RgbImage::from_pixel(128, 128, Rgb([128, 128, 128]));
        let b = RgbImage::from_fn(128, 128, |_, _| {
            let mut p = [0u8; 3];
            for v in &mut p {
                let n: f64 = rng.sample(rand_distr::StandardNormal);
                *v = (128.0 + 10.0 * n).round().clamp(0.0, 255.0) as u8;
            }
            Rgb(p)
        });
        let p = psnr(&a, &b);
        assert!((p - 28.13).abs() < 0.15, "psnr {p}");
        let s = ssim(&a, &b);
        // A flat reference against noise: no shared structure, so SSIM is well below 1
        // (luma averages the three noisy channels, so its noise is only σ ≈ 6).
        assert!(s > 0.0 && s < 0.8, "ssim {s}");
    }

    #[test]
    fn ssim_falls_with_distortion_and_handles_sizes() {
        let img = gradient(64, 64);
        let shifted = RgbImage::from_fn(64, 64, |x, y| *img.get_pixel((x + 3) % 64, y));
        let s = ssim(&img, &shifted);
        assert!(s < 0.99 && s > 0.0, "ssim {s}");
        // A constant brightness offset keeps the structure: SSIM stays high.
        let brighter = RgbImage::from_fn(64, 64, |x, y| {
            let p = img.get_pixel(x, y);
            Rgb([
                p[0].saturating_add(10),
                p[1].saturating_add(10),
                p[2].saturating_add(10),
            ])
        });
        assert!(ssim(&img, &brighter) > s);
        // A reconstruction at another size is resized to the reference.
        let small = imageops::resize(&img, 32, 32, imageops::FilterType::Triangle);
        let s_small = ssim(&img, &small);
        assert!(s_small > 0.8 && s_small < 1.0, "ssim {s_small}");
        assert!(psnr(&img, &small) > 20.0);
        // Tiny images use a smaller window.
        let tiny = gradient(5, 4);
        assert!((ssim(&tiny, &tiny) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cosine_of_known_vectors() {
        let black = RgbImage::new(4, 4);
        let grey = RgbImage::from_pixel(4, 4, Rgb([50, 50, 50]));
        let red = RgbImage::from_pixel(4, 4, Rgb([200, 0, 0]));
        let green = RgbImage::from_pixel(4, 4, Rgb([0, 200, 0]));
        assert_eq!(pixel_cosine(&black, &black), 1.0);
        assert_eq!(pixel_cosine(&black, &grey), 0.0);
        assert_eq!(pixel_cosine(&red, &green), 0.0);
        // (200,0,0)·(50,50,50) / (200 · 50√3) = 1/√3.
        assert!((pixel_cosine(&red, &grey) - 1.0 / 3f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn bleu_known_values() {
        let s = "the background is blue and bright";
        assert!((bleu1(s, s) - 1.0).abs() < 1e-12);
        assert!((bleu4(s, s) - 1.0).abs() < 1e-12);
        // Case is ignored.
        assert!((bleu1("The Background", "the background") - 1.0).abs() < 1e-12);
        // Two tokens have no 3- or 4-grams: those orders are smoothed (ε/1), as in NLTK.
        assert!(bleu4("the background", "the background") < 1.0);
        // Disjoint: every order smoothed to 0.1/count.
        assert!(bleu4("red green yellow", "a cat on the mat") < 0.05);
        assert!(bleu1("red green yellow", "red green yellow cat") < 1.0);
        assert_eq!(bleu4("", s), 0.0);
        // Hand-computed: p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0 → 0.1/3; c = r = 6, BP = 1.
        // BLEU-4 = (5/6 · 3/5 · 1/4 · 1/30)^(1/4) = (1/240)^(1/4).
        let cand = "the cat sat on the mat";
        let reference = "the cat is on the mat";
        assert!((bleu1(cand, reference) - 5.0 / 6.0).abs() < 1e-12);
        assert!((bleu4(cand, reference) - (1.0f64 / 240.0).powf(0.25)).abs() < 1e-12);
        // Brevity penalty: 3 of 6 reference words, all matching → BLEU-1 = e^(1−2).
        assert!((bleu1("the cat is", reference) - (-1.0f64).exp()).abs() < 1e-12);
    }
}
