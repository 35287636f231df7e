//! The COCO detector (`detect` stage, `dataflow_models::detect`): the right object on the
//! sample photos, inside ISNet's box; no crash and no object on degenerate images; captions
//! that name the object; a JSON dump for `bench/python/detect_parity.py`.

use std::path::{Path, PathBuf};

use dataflow_models::detect::{self, DetectOptions, Detector};
use dataflow_models::isnet::{self, Isnet};
use dataflow_models::provider::SessionOptions;

use crate::support::{read_csv, root, run_graph, samples_dir, texts};

fn asset(relative: &str) -> PathBuf {
    root().join("assets").join(relative)
}

fn detector() -> Detector {
    let options = SessionOptions::cpu().with_intra_threads(1);
    Detector::load(asset(detect::CENTERNET), &options).expect("run scripts/setup-assets")
}

#[test]
fn detect_finds_the_sample_objects_inside_isnet_boxes() {
    let mut det = detector();
    let options = SessionOptions::cpu().with_intra_threads(1);
    let mut seg = Isnet::load(asset(isnet::MEDIUM), &options).expect("run scripts/setup-assets");
    // ISNet's mask on coffee.png holds the cup, its saucer and the plate, while CenterNet
    // boxes the cup alone: IoU 0.385 (measured), so the cup is checked to lie inside
    // ISNet's box instead of by IoU > 0.5. astronaut: 0.69; motorcycle_left: see the log.
    for (photo, class, min_iou) in [
        ("astronaut.png", "person", 0.5),
        ("coffee.png", "cup", 0.35),
        ("motorcycle_left.png", "motorcycle", 0.5),
    ] {
        let img = image::open(samples_dir().join(photo)).unwrap().to_rgb8();
        let found = det.detect(&img, DetectOptions::default()).unwrap();
        let mask_box = seg.segment(&img).unwrap().bbox.expect("ISNet finds the object");
        let main = detect::main_object(&found.objects, &mask_box);
        println!("{photo}: {:?}; main {main:?}", found.objects);
        let main = main.unwrap_or_else(|| panic!("{photo}: no detection overlaps ISNet's box"));
        assert_eq!(main.class, class, "{photo}");
        let iou = main.bbox().iou(&mask_box);
        println!("{photo}: IoU {iou:.3} with ISNet's box {mask_box:?}");
        assert!(iou > min_iou, "{photo}: IoU {iou:.3} with ISNet's box {mask_box:?}");
        let b = main.bbox();
        let inside = (b.x + b.width)
            .min(mask_box.x + mask_box.width)
            .saturating_sub(b.x.max(mask_box.x)) as f64
            * (b.y + b.height)
                .min(mask_box.y + mask_box.height)
                .saturating_sub(b.y.max(mask_box.y)) as f64;
        assert!(
            inside >= 0.8 * b.area() as f64,
            "{photo}: the {class} box lies outside ISNet's box"
        );
    }
}

#[test]
fn detect_gives_nothing_on_flat_tiny_and_empty_images() {
    let mut det = detector();
    let flat = image::RgbImage::from_pixel(64, 48, image::Rgb([128, 128, 128]));
    let one = image::RgbImage::from_pixel(1, 1, image::Rgb([200, 30, 30]));
    let empty = image::RgbImage::new(0, 0);
    for (what, img) in [("flat grey", flat), ("1x1", one), ("0x0", empty)] {
        let found = det.detect(&img, DetectOptions::default()).unwrap();
        assert!(found.objects.is_empty(), "{what}: {:?}", found.objects);
    }
}

/// image_dir → detect → csv_sink over a flat grey PNG, a 1×1 PNG and a grayscale PNG.
#[test]
fn detect_stage_survives_degenerate_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]))
        .save(input.join("flat.png"))
        .unwrap();
    image::RgbImage::from_pixel(1, 1, image::Rgb([10, 200, 10]))
        .save(input.join("tiny.png"))
        .unwrap();
    image::GrayImage::from_fn(96, 64, |x, _| image::Luma([(x * 2) as u8]))
        .save(input.join("gray.png"))
        .unwrap();
    let graph = dir.path().join("detect.toml");
    std::fs::write(&graph, detect_graph(&input)).unwrap();
    let out = dir.path().join("out");
    let o = run_graph(&graph, &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = read_csv(&out.join("objects.csv"));
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows {
        assert_eq!(r["objects"], "[]", "{}: {r:?}", r["name"]);
    }
}

fn detect_graph(input: &Path) -> String {
    format!(
        r#"
[graph]
name = "detect-degenerate"

[stage.source]
kind = "image_dir"
path = "{}"

[stage.detect]
kind = "detect"
inputs = ["source"]
intra_threads = 1

[stage.objects]
kind = "csv_sink"
inputs = ["detect"]
path = "objects.csv"
"#,
        input.display()
    )
}

/// Multi-SC on the astronaut photo: a tile's caption says "a person".
#[test]
fn detect_makes_the_caption_name_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(samples_dir().join("astronaut.png"), input.join("astronaut.png")).unwrap();
    let out = dir.path().join("out");
    let src = format!("stage.source.path={}", input.display());
    let graph = root().join("graphs/multisc-lite.toml");
    let args = ["--snr", "100", "--set", &src, "--set", "stage.segment.intra_threads=1"];
    let o = run_graph(&graph, &out, &args);
    assert_eq!(o.status.code(), Some(0));
    let rows = read_csv(&out.join("metrics.csv"));
    assert_eq!(rows.len(), 1);
    let sent = texts(&rows[0], "sent_texts");
    println!("{sent:#?}");
    assert!(sent.iter().any(|t| t.contains("a person covers")), "{sent:?}");
    assert!(rows[0]["objects"].contains("\"person\""), "{:?}", rows[0]["objects"]);
}

/// Writes the Rust side of `bench/python/detect_parity.py`: for each sample photo, the
/// model input (raw little-endian f32, NHWC), the raw `[100, 6]` output and the kept
/// detections, under `$DETECT_PARITY_OUT` (default `target/detect-parity`).
#[test]
#[ignore = "run by bench/python/detect_parity.py"]
fn detect_parity_dump() {
    let out = std::env::var_os("DETECT_PARITY_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/detect-parity"));
    std::fs::create_dir_all(&out).unwrap();
    let mut det = detector();
    let mut index = Vec::new();
    for entry in std::fs::read_dir(samples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let img = image::open(&path).unwrap().to_rgb8();
        let input = detect::preprocess(&img);
        let raw = det.run_raw(&input).unwrap();
        let kept = detect::postprocess(&raw, img.width(), img.height(), DetectOptions::default());
        let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(out.join(format!("{name}.input.f32")), bytes).unwrap();
        index.push(serde_json::json!({
            "name": name, "width": img.width(), "height": img.height(),
            "raw": raw, "objects": kept,
        }));
    }
    let dump = serde_json::json!({ "coco_names": detect::COCO_NAMES.as_slice(), "photos": index });
    let text = serde_json::to_string_pretty(&dump).unwrap();
    std::fs::write(out.join("rust.json"), text).unwrap();
    println!("wrote {}", out.display());
}

/// Model time per frame of the detector next to ISNet's (BENCHMARKS.md, "Detector"):
/// `cargo nextest run --all-features --run-ignored only -E 'test(detect_timing)' --no-capture`.
/// Only the session run is timed (`Detections::inference`, `Segmentation::inference`), so
/// the debug build of the test does not slow the numbers.
#[test]
#[ignore = "a measurement for BENCHMARKS.md"]
fn detect_timing_next_to_isnet() {
    let photos: Vec<image::RgbImage> = [
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "motorcycle_left.png",
        "rocket.jpg",
    ]
    .iter()
    .map(|p| image::open(samples_dir().join(p)).unwrap().to_rgb8())
    .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for threads in [1usize, 2] {
        let options = SessionOptions::cpu().with_intra_threads(threads);
        let mut det = Detector::load(asset(detect::CENTERNET), &options).unwrap();
        let mut seg = Isnet::load(asset(isnet::MEDIUM), &options).unwrap();
        let (mut d, mut s) = (Vec::new(), Vec::new());
        for round in 0..3 {
            for img in &photos {
                let dt = det.detect(img, DetectOptions::default()).unwrap().inference;
                let st = seg.segment(img).unwrap().inference;
                if round > 0 {
                    d.push(dt.as_secs_f64() * 1e3);
                    s.push(st.as_secs_f64() * 1e3);
                }
            }
        }
        println!(
            "intra_threads {threads}: centernet median {:.1} ms/frame, isnet-medium median {:.0} ms/frame ({} frames each)",
            median(d.clone()),
            median(s.clone()),
            d.len()
        );
    }
}

/// Every detection at score ≥ 0.2 (after NMS) on the sample photos and on the photos in
/// `$DETECT_EXTRA` (a folder; BENCHMARKS.md says how the extra photos were made): the
/// measurement behind `detect::DEFAULT_SCORE_THRESHOLD`.
#[test]
#[ignore = "a measurement for BENCHMARKS.md"]
fn detect_threshold_table() {
    let mut det = detector();
    let mut dirs = vec![samples_dir()];
    dirs.extend(std::env::var_os("DETECT_EXTRA").map(PathBuf::from));
    let options = DetectOptions {
        score_threshold: 0.2,
        max_objects: 20,
    };
    for dir in dirs {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        {
            let img = image::open(path).unwrap().to_rgb8();
            let found = det.detect(&img, options).unwrap().objects;
            let list: Vec<String> = found.iter().map(|d| format!("{} {:.2}", d.class, d.score)).collect();
            println!("{}: {}", path.file_name().unwrap().to_string_lossy(), list.join(", "));
        }
    }
}
