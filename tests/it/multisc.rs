//! Multi-SC behaviour: captions over the text channels, SymSpell, reproducible noise,
//! bad inputs, and the object slice's digital link.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::{make_photos, num, read_csv, root, run_graph, run_text, run_text_fixed, text_only_graph, texts};

fn multisc() -> std::path::PathBuf {
    root().join("graphs/multisc-lite.toml")
}

/// One ISNet session with one thread: enough for a handful of frames, and it does not
/// spin a second core that the tests running beside it need.
const ONE_SEGMENTER: [&str; 4] = [
    "--set",
    "stage.segment.replicas=1",
    "--set",
    "stage.segment.intra_threads=1",
];

#[test]
fn at_20_db_every_caption_arrives_and_survives_correction() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 3);
    let out = dir.path().join("out");
    let src = format!("stage.source.path={}", imgs.display());
    let mut args = vec!["--snr", "20", "--set", &src];
    args.extend(ONE_SEGMENTER);
    let o = run_graph(&multisc(), &out, &args);
    assert_eq!(o.status.code(), Some(0));
    let rows = read_csv(&out.join("metrics.csv"));
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let sent = texts(r, "sent_texts");
        assert_eq!(sent.len(), 4, "four tile captions per frame: {sent:?}");
        assert!(sent.iter().all(|t| t.len() > 20 && !t.contains("<lost>")), "{sent:?}");
        assert_eq!(num(r, "bit_errors"), 0.0, "20 dB BPSK has BER ~1e-45");
        assert_eq!(texts(r, "texts"), sent, "received = sent");
        assert_eq!(
            texts(r, "corrected"),
            sent,
            "SymSpell must leave correct captions alone"
        );
        assert_eq!(num(r, "bleu4"), 1.0);
        assert_eq!(num(r, "bleu1"), 1.0);
        assert_eq!(num(r, "lost_parts"), 0.0);
        println!("{}: {}", r["name"], r["corrected"]);
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn at_0_db_symspell_raises_bleu_over_the_received_text() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 12);
    let s = run_text(&text_only_graph(&imgs, 0.0, 7, "symspell"), dir.path());
    assert_eq!(s.failed, 0);
    let rows = read_csv(&dir.path().join("metrics.csv"));
    assert_eq!(rows.len(), 12);
    let corrected: Vec<f64> = rows.iter().map(|r| num(r, "bleu4")).collect();
    let received: Vec<f64> = rows.iter().map(|r| num(r, "bleu4_received")).collect();
    let c1 = mean(&rows.iter().map(|r| num(r, "bleu1")).collect::<Vec<_>>());
    let r1 = mean(&rows.iter().map(|r| num(r, "bleu1_received")).collect::<Vec<_>>());
    let ber = mean(&rows.iter().map(|r| num(r, "ber")).collect::<Vec<_>>());
    let better = corrected.iter().zip(&received).filter(|(c, r)| c > r).count();
    println!(
        "0 dB BPSK, {} frames, BER {ber:.4}: BLEU-4 corrected {:.4} vs received {:.4}; BLEU-1 corrected {c1:.4} vs received {r1:.4}; corrected better on {better} frames",
        rows.len(),
        mean(&corrected),
        mean(&received)
    );
    assert!(ber > 0.03 && ber < 0.15, "0 dB BPSK has a BER near 0.079, got {ber}");
    assert!(
        mean(&corrected) > mean(&received),
        "SymSpell should raise BLEU-4: {} vs {}",
        mean(&corrected),
        mean(&received)
    );
    assert!(c1 > r1, "and BLEU-1: {c1} vs {r1}");
    assert!(
        better >= 9,
        "corrected text wins on most frames, not just on average ({better}/12)"
    );
}

#[test]
fn the_same_seed_gives_the_same_metrics_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 6);
    let csv = |name: &str, seed: u64| {
        let out = dir.path().join(name);
        let s = run_text(&text_only_graph(&imgs, 3.0, seed, "symspell"), &out);
        assert_eq!(s.failed, 0);
        std::fs::read(out.join("metrics.csv")).unwrap()
    };
    let (a, b, other) = (csv("a", 7), csv("b", 7), csv("c", 8));
    let rows = read_csv(&dir.path().join("a/metrics.csv"));
    let errors: f64 = rows.iter().map(|r| num(r, "bit_errors")).sum();
    println!("3 dB: {errors} bit errors over {} frames", rows.len());
    assert!(errors > 0.0, "the comparison needs a noisy channel");
    assert!(a == b, "two runs with seed 7 wrote different metrics.csv");
    assert!(a != other, "seed 8 should draw different noise than seed 7");
}

#[test]
fn each_tile_and_each_frame_draws_its_own_noise() {
    // Every tile of every frame sends the same caption: equal noise would give equal
    // received texts, so any difference comes from the (frame, part) of the draw.
    let dir = tempfile::tempdir().unwrap();
    let caption = "top left: the main object covers half of this part, on the right; it is brown and black. the background is gray and fairly bright.";
    let s = run_text_fixed(
        &format!(
            r#"
[graph]
seed = 7
[channel]
snr_db = 0.0
[stage.source]
kind = "synthetic"
frames = 3
pattern = "flat"
[stage.split]
kind = "split"
inputs = ["source"]
grid = [2, 2]
[stage.same]
kind = "fixed_text"
inputs = ["split.tile0", "split.tile1", "split.tile2", "split.tile3"]
text = "{caption}"
[stage.text_channel]
kind = "text_channel"
inputs = ["same"]
[stage.tiles]
kind = "csv_sink"
inputs = ["text_channel"]
path = "tiles.csv"
"#
        ),
        dir.path(),
    );
    assert_eq!(s.failed, 0);
    let rows = read_csv(&dir.path().join("tiles.csv"));
    assert_eq!(rows.len(), 12, "3 frames x 4 tiles");
    let mut by_frame: BTreeMap<String, BTreeMap<u32, (String, f64)>> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r["sent"], caption);
        by_frame
            .entry(r["frame"].clone())
            .or_default()
            .insert(num(r, "part") as u32, (r["text"].clone(), num(r, "bit_errors")));
    }
    assert_eq!(by_frame.len(), 3);
    for (frame, tiles) in &by_frame {
        let errs: Vec<f64> = tiles.values().map(|t| t.1).collect();
        println!("frame {frame}: bit errors per tile {errs:?}");
        assert_eq!(tiles.len(), 4);
        assert!(errs.iter().all(|e| *e > 0.0), "0 dB must corrupt every tile: {errs:?}");
        let distinct: BTreeSet<&str> = tiles.values().map(|t| t.0.as_str()).collect();
        assert_eq!(
            distinct.len(),
            4,
            "the four tiles of frame {frame} got the same noise: {tiles:?}"
        );
    }
    let first_tiles: BTreeSet<&str> = by_frame.values().map(|t| t[&0].0.as_str()).collect();
    assert_eq!(first_tiles.len(), 3, "tile 0 of different frames got the same noise");
}

/// Writes the awkward inputs; returns (file stem, size) of each.
fn bad_inputs(dir: &Path) -> Vec<(&'static str, (u32, u32))> {
    std::fs::create_dir_all(dir).unwrap();
    let photos = dir.with_file_name("photos");
    make_photos(&photos, 3);
    let photo = |i: usize| image::open(photos.join(format!("photo{i:02}.png"))).unwrap();
    image::RgbImage::from_pixel(320, 240, image::Rgb([128, 128, 128]))
        .save(dir.join("a_flat_grey.png"))
        .unwrap();
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 30, 30]))
        .save(dir.join("b_one_pixel.png"))
        .unwrap();
    photo(0).to_luma8().save(dir.join("c_grayscale.png")).unwrap();
    let mut rgba = photo(2).to_rgba8();
    for (x, _, p) in rgba.enumerate_pixels_mut() {
        p[3] = if x < 100 { 0 } else { 255 };
    }
    rgba.save(dir.join("d_rgba.png")).unwrap();
    image::imageops::resize(&photo(1).to_rgb8(), 4000, 3000, image::imageops::FilterType::Triangle)
        .save(dir.join("e_huge.png"))
        .unwrap();
    vec![
        ("a_flat_grey", (320, 240)),
        ("b_one_pixel", (1, 1)),
        ("c_grayscale", (768, 512)),
        ("d_rgba", (768, 512)),
        ("e_huge", (4000, 3000)),
    ]
}

#[test]
fn bad_inputs_give_a_clear_result_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    let inputs = bad_inputs(&imgs);
    let out = dir.path().join("out");
    let src = format!("stage.source.path={}", imgs.display());
    let mut args = vec!["--snr", "20", "--set", &src];
    args.extend(ONE_SEGMENTER);
    let o = run_graph(&multisc(), &out, &args);
    // A 1x1 frame cannot be cut into 2x2 tiles: `split` fails it, naming the grid and the
    // size (issue 24); the run goes on and exits 2 (frames failed).
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["failed"].as_u64(), Some(1));
    let errors = std::fs::read_to_string(out.join("errors.jsonl")).unwrap();
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(
        errors.contains("split") && errors.contains("grid = [2, 2] is finer than the 1x1 image"),
        "{errors}"
    );
    // Its four captions never existed, so the receiver gets a gap for its texts and
    // rebuilds the frame from what did arrive: every input still has a row, this one
    // without texts.
    let rows = read_csv(&out.join("metrics.csv"));
    assert_eq!(rows.len(), inputs.len());
    let tiny = rows.iter().find(|r| r["name"] == "b_one_pixel").unwrap();
    println!("b_one_pixel: {tiny:?}");
    for col in ["sent_texts", "corrected"] {
        assert!(
            tiny.get(col).is_none_or(|t| t.is_empty() || t == "[]"),
            "{col}: {tiny:?}"
        );
    }
    let rec = out.join("reconstructions/b_one_pixel.png");
    assert_eq!(image::image_dimensions(&rec).unwrap(), (1, 1));
    let inputs: Vec<_> = inputs.into_iter().filter(|(n, _)| *n != "b_one_pixel").collect();
    for (name, size) in &inputs {
        let rec = out.join("reconstructions").join(format!("{name}.png"));
        let dims = image::image_dimensions(&rec).unwrap_or_else(|e| panic!("{}: {e}", rec.display()));
        assert_eq!(dims, *size, "{name}: reconstruction has the frame's size");
        assert!(
            out.join("sheets").join(format!("{name}.png")).is_file(),
            "{name}: no sheet"
        );
        let r = rows.iter().find(|r| r["name"] == *name).unwrap();
        println!("{name}: {}", r["corrected"]);
        assert!(num(r, "psnr_db").is_finite() && num(r, "ssim").is_finite(), "{name}");
        assert_eq!(texts(r, "corrected").len(), 4, "{name}");
    }
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap();
    // A flat frame has no salient object: every caption says so, nothing is sent as slice.
    let flat = row("a_flat_grey");
    for t in texts(flat, "corrected") {
        assert!(t.contains("no main object"), "flat grey: {t}");
        assert!(t.contains("gray"), "flat grey: {t}");
    }
    assert_eq!(num(flat, "slice_bits"), 0.0, "no object, no slice");
    // Real photos in grayscale, with alpha, and at 12 Mpx are segmented as usual.
    for n in ["c_grayscale", "d_rgba", "e_huge"] {
        assert!(num(row(n), "slice_bits") > 0.0, "{n}: an object slice was sent");
        // "the main object covers …", or with `detect` "a person covers …".
        assert!(row(n)["corrected"].contains(" covers "), "{n}");
    }
    assert!(
        !row("c_grayscale")["corrected"].contains("green"),
        "a grayscale photo has no colour: {}",
        row("c_grayscale")["corrected"]
    );
}

#[test]
fn the_slice_is_lost_at_minus_5_db_unless_the_link_is_ideal() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 2);
    let src = format!("stage.source.path={}", imgs.display());
    for ideal in [false, true] {
        let out = dir.path().join(format!("out-{ideal}"));
        let ideal_set = format!("stage.image_channel.ideal={ideal}");
        let mut args = vec!["--snr", "-5", "--set", &src, "--set", &ideal_set];
        args.extend(ONE_SEGMENTER);
        let o = run_graph(&multisc(), &out, &args);
        assert_eq!(o.status.code(), Some(0));
        let rows = read_csv(&out.join("metrics.csv"));
        assert_eq!(rows.len(), 2);
        for r in &rows {
            let (bits, errs, lost) = (num(r, "slice_bits"), num(r, "slice_bit_errors"), num(r, "slice_lost"));
            println!(
                "ideal={ideal} {}: slice {bits} bits, {errs} errors, lost {lost}",
                r["name"]
            );
            assert!(bits > 0.0, "a slice was sent");
            if ideal {
                assert_eq!(errs, 0.0);
                assert_eq!(lost, 0.0, "an ideal link never loses the slice");
            } else {
                assert!(errs / bits > 0.1, "-5 dB BPSK has a BER near 0.21");
                assert_eq!(lost, 1.0, "a JPEG with 20% bit errors does not decode");
            }
            let rec = out.join("reconstructions").join(format!("{}.png", r["name"]));
            assert_eq!(
                image::image_dimensions(&rec).unwrap(),
                (768, 512),
                "a reconstruction still comes out"
            );
        }
    }
}

/// DESIGN §6: the slice can take the digital chain. At 2 dB BPSK the uncoded JPEG
/// (BER ≈ 4 %) never decodes; 5G NR LDPC at rate 1/2 brings every slice through.
#[test]
fn ldpc_coding_brings_the_slice_through_where_the_uncoded_link_loses_it() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("in");
    make_photos(&imgs, 2);
    let src = format!("stage.source.path={}", imgs.display());
    for coding in ["none", "ldpc"] {
        let out = dir.path().join(format!("out-{coding}"));
        let coding_set = format!("stage.image_channel.coding={coding}");
        let mut args = vec!["--snr", "2", "--set", &src, "--set", &coding_set];
        args.extend(ONE_SEGMENTER);
        let o = run_graph(&multisc(), &out, &args);
        assert_eq!(o.status.code(), Some(0));
        let rows = read_csv(&out.join("metrics.csv"));
        assert_eq!(rows.len(), 2);
        for r in &rows {
            let (bits, errs, lost) = (num(r, "slice_bits"), num(r, "slice_bit_errors"), num(r, "slice_lost"));
            println!(
                "coding={coding} {}: slice {bits} bits, {errs} raw errors, lost {lost}",
                r["name"]
            );
            assert!(errs / bits > 0.01, "2 dB BPSK flips a few percent of the bits");
            assert_eq!(lost, if coding == "ldpc" { 0.0 } else { 1.0 }, "{coding} {}", r["name"]);
        }
    }
}
