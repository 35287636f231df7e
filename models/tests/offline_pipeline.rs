//! The offline tier end to end, without the engine: caption each tile (`attributes`),
//! send each caption over its own noisy channel (`channel`), correct it (`symspell`),
//! rebuild the frame (`composite`) and score it (`quality`).
//!
//! Needs the symspellpy dictionaries in `$DATAFLOW_ASSETS/symspell` or
//! `assets/symspell` (placed by the set-up script).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dataflow_models::attributes::{describe_tile, TilePosition};
use dataflow_models::channel::{channel_rng, decode_text_lossy, transmit_bytes, Modulation};
use dataflow_models::composite::{reconstruct, tile_rect};
use dataflow_models::quality::{bleu4, mse, psnr};
use dataflow_models::symspell::{default_dictionary_dir, Corrector};
use image::{imageops, GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};

const W: u32 = 128;
const H: u32 = 96;

fn is_object(x: u32, y: u32) -> bool {
    (50..80).contains(&x) && (30..70).contains(&y)
}

fn scene() -> (RgbImage, GrayImage) {
    let img = RgbImage::from_fn(W, H, |x, y| {
        if is_object(x, y) {
            Rgb([240, 240, 240])
        } else if y < 40 {
            Rgb([70, 120, 210])
        } else {
            Rgb([40, 130, 45])
        }
    });
    let mask = GrayImage::from_fn(W, H, |x, y| Luma([if is_object(x, y) { 255 } else { 0 }]));
    (img, mask)
}

fn captions(img: &RgbImage, mask: &GrayImage) -> Vec<String> {
    (0..4)
        .map(|k| {
            let (x, y, w, h) = tile_rect(k, (2, 2), (W, H));
            let tile = imageops::crop_imm(img, x, y, w, h).to_image();
            let m = imageops::crop_imm(mask, x, y, w, h).to_image();
            describe_tile(
                &tile,
                Some(&m),
                TilePosition {
                    index: k,
                    rows: 2,
                    cols: 2,
                },
            )
        })
        .collect()
}

#[test]
fn offline_chain_over_noisy_channels() {
    let corrector = Corrector::load_dir(default_dictionary_dir()).expect("symspell dictionaries");
    let (img, mask) = scene();
    let texts = captions(&img, &mask);
    let slice = RgbaImage::from_fn(30, 40, |_, _| Rgba([240, 240, 240, 255]));
    let flat = RgbImage::from_pixel(W, H, Rgb([128, 128, 128]));
    let mut gain_at_low_snr = 0.0;
    for snr_db in [2.0, 4.0, 6.0, 12.0] {
        let mut bleu_rx = 0.0;
        let mut bleu_fixed = 0.0;
        let mut fixed_texts = Vec::new();
        for (k, text) in texts.iter().enumerate() {
            let mut rng = channel_rng(7, "text_channel", 0, k as u32);
            let t = transmit_bytes(text.as_bytes(), Modulation::Bpsk, snr_db, &mut rng).unwrap();
            let received = decode_text_lossy(&t.received);
            let fixed = corrector.correct(&received);
            bleu_rx += bleu4(&received, text) / 4.0;
            bleu_fixed += bleu4(&fixed, text) / 4.0;
            if snr_db >= 12.0 {
                assert_eq!(&fixed, text, "BER {}", t.ber());
            }
            fixed_texts.push(Some(fixed));
        }
        let rebuilt = reconstruct(&fixed_texts, (2, 2), (W, H), Some((&slice, 50, 30)));
        eprintln!(
            "BPSK {snr_db:>4} dB: BLEU-4 received {bleu_rx:.3}, corrected {bleu_fixed:.3}; \
             PSNR {:.2} dB (flat gray {:.2} dB)",
            psnr(&img, &rebuilt),
            psnr(&img, &flat)
        );
        if snr_db <= 6.0 {
            gain_at_low_snr += bleu_fixed - bleu_rx;
        }
        if snr_db >= 6.0 {
            assert!(mse(&img, &rebuilt) < mse(&img, &flat));
        }
    }
    assert!(gain_at_low_snr > 0.0, "correction should raise BLEU on noisy text");
}
