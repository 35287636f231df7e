//! The `dataflow` command: validate, graph, schema, run, bad inputs, Ctrl-C.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{bin, diagnostics, root};

#[test]
fn validate_reports_every_error_with_positions() {
    let text = r#"[graph]
name = "bad"
[stage.src]
kind = "synthetc"
[stage.src2]
kind = "synthetic"
frams = 3
[stage.a]
kind = "passthrough"
inputs = ["src2", "b", "src2", "nope"]
[stage.b]
kind = "passthrough"
inputs = ["a"]
[stage.d]
kind = "delay"
inputs = ["src2"]
ms = "slow"
"#;
    let d = diagnostics(text);
    let all = d.join("\n");
    println!("{all}");
    assert!(
        all.contains("test.toml:4:1: error: stage `src`: unknown kind `synthetc`"),
        "{all}"
    );
    assert!(all.contains("did you mean `synthetic`?"));
    assert!(all.contains("test.toml:7:1: error: stage `src2`: unknown key `frams`"));
    assert!(all.contains("did you mean `frames`?"));
    assert!(
        all.contains("test.toml:10:"),
        "input errors point into the inputs array: {all}"
    );
    assert!(all.contains("duplicate input `src2`"));
    assert!(all.contains("input `nope` doesn't match any stage"));
    assert!(all.contains("cyclic dependency detected in the chain [ a -> b -> a ]") || all.contains("[ b -> a -> b ]"));
    assert!(
        all.contains("test.toml:17:1: error: stage `d`: key `ms`: invalid type: string \"slow\", expected f64"),
        "{all}"
    );
}

#[test]
fn validate_reports_ports_consumers_and_type_mismatches() {
    let text = r#"
[stage.src]
kind = "synthetic"
payload_bytes = 10
[stage.orphan]
kind = "passthrough"
inputs = ["src"]
[stage.sink]
kind = "image_sink"
inputs = ["src.nope"]
[stage.sink2]
kind = "image_sink"
inputs = ["src"]
"#;
    let all = diagnostics(text).join("\n");
    println!("{all}");
    assert!(all.contains("stage `orphan`: stage has no consumers"), "{all}");
    assert!(all.contains("stage `src` has no output port `nope`"), "{all}");
    assert!(all.contains("its ports are: out"));
    assert!(
        all.contains("type mismatch: input `src` carries {payload} but kind `image_sink` needs `image`"),
        "{all}"
    );
}

#[test]
fn validate_cli_exits_1_and_runs_nothing_on_a_malformed_graph() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(&g, "[stage.src]\nkind = \"synthetic\"\n[stage.src]\nkind = \"x\"\n").unwrap();
    let out = Command::new(bin()).args(["validate"]).arg(&g).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("g.toml:3:"), "{err}");
    let out_dir = dir.path().join("out");
    let out = Command::new(bin())
        .arg("run")
        .arg(&g)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!out_dir.exists(), "nothing may run for an invalid graph");
}

#[test]
fn set_and_out_override_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        "[stage.src]\nkind = \"synthetic\"\nframes = 2\n[stage.sink]\nkind = \"image_sink\"\ninputs = [\"src\"]\n",
    )
    .unwrap();
    let out_dir = dir.path().join("o");
    let out = Command::new(bin())
        .arg("run")
        .arg(&g)
        .args([
            "--set",
            "stage.src.frames=5",
            "--set",
            "stage.src.width=8",
            "--no-progress",
            "--metrics",
            "off",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = std::fs::read_dir(out_dir.join("sink")).unwrap().count();
    assert_eq!(files, 5);
    let img = image::open(out_dir.join("sink/00-000000.png")).unwrap();
    assert_eq!(img.width(), 8);
    let bad = Command::new(bin())
        .arg("validate")
        .arg(&g)
        .args(["--set", "stage.nope.frames=5"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("there is no stage `nope`"));
}

#[test]
fn graph_prints_dot_and_mermaid_and_schema_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        "[stage.src]\nkind = \"synthetic\"\n[stage.sink]\nkind = \"null_sink\"\ninputs = [\"src\"]\n",
    )
    .unwrap();
    let dot = Command::new(bin())
        .arg("graph")
        .arg(&g)
        .args(["--format", "dot"])
        .output()
        .unwrap();
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(dot.contains("\"src\" -> \"sink\""), "{dot}");
    let mm = Command::new(bin())
        .arg("graph")
        .arg(&g)
        .args(["--format", "mermaid"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&mm.stdout).contains("s0 --> s1"));
    let schema = Command::new(bin()).arg("schema").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    let kinds: Vec<String> = v["properties"]["stage"]["additionalProperties"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["title"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains(&"image_dir".to_string()) && kinds.contains(&"delay".to_string()),
        "{kinds:?}"
    );
}

/// A PNG whose header claims 60000x60000 pixels (a decompression bomb).
fn bomb_png() -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc.to_be_bytes());
    // A few bytes of compressed data and the end, as a real bomb would have.
    for (kind, data) in [
        (
            &b"IDAT"[..],
            &[0x78u8, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01][..],
        ),
        (&b"IEND"[..], &[][..]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn bad_images_are_reported_with_their_path_and_the_rest_go_through() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    image::RgbImage::from_pixel(16, 8, image::Rgb([10, 200, 30]))
        .save(imgs.join("a_good.png"))
        .unwrap();
    image::RgbaImage::from_pixel(8, 8, image::Rgba([10, 200, 30, 128]))
        .save(imgs.join("b_rgba.png"))
        .unwrap();
    image::GrayImage::from_pixel(8, 8, image::Luma([77]))
        .save(imgs.join("c_gray.png"))
        .unwrap();
    let mut corrupt = std::fs::read(imgs.join("a_good.png")).unwrap();
    corrupt.truncate(corrupt.len() / 2);
    std::fs::write(imgs.join("d_corrupt.png"), corrupt).unwrap();
    std::fs::write(imgs.join("e_empty.png"), b"").unwrap();
    std::fs::write(imgs.join("f_text.png"), b"this is not an image\n").unwrap();
    std::fs::write(imgs.join("g_bomb.png"), bomb_png()).unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        format!(
            "[stage.src]\nkind = \"image_dir\"\npath = \"{}\"\n[stage.sink]\nkind = \"image_sink\"\ninputs = [\"src\"]\n",
            imgs.display()
        ),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let t0 = Instant::now();
    let out = Command::new(bin())
        .arg("run")
        .arg(&g)
        .arg("--out")
        .arg(&out_dir)
        .args(["--no-progress", "--metrics", "off"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err} ({:?})", t0.elapsed());
    assert_eq!(out.status.code(), Some(2), "failed frames give a non-zero exit");
    let written: Vec<String> = std::fs::read_dir(out_dir.join("sink"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(written.len(), 3, "{written:?}");
    let log = std::fs::read_to_string(out_dir.join("errors.jsonl")).unwrap();
    for bad in ["d_corrupt.png", "e_empty.png", "f_text.png", "g_bomb.png"] {
        assert!(log.contains(bad), "{bad} not reported: {log}");
    }
    assert!(log.contains("60000x60000"), "{log}");
    assert_eq!(log.lines().count(), 4);
}

#[test]
fn sigint_drains_and_prints_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        "[stage.src]\nkind = \"synthetic\"\nrate = 500\n[stage.slow]\nkind = \"delay\"\ninputs = [\"src\"]\nms = 5\n[stage.sink]\nkind = \"csv_sink\"\ninputs = [\"slow\"]\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let mut child = Command::new(bin())
        .arg("run")
        .arg(&g)
        .arg("--out")
        .arg(&out_dir)
        .args(["--no-progress", "--metrics", "off"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = loop {
        if let Some(_s) = child.try_wait().unwrap() {
            break child.wait_with_output().unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the run did not end within 20 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}\nended {:?} after SIGINT", t0.elapsed());
    assert!(err.contains("interrupted"), "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    let frames_in = summary["frames_in"].as_u64().unwrap();
    let stages = summary["stages"].as_array().unwrap();
    let sink = stages.iter().find(|s| s["id"] == "sink").unwrap();
    assert!(frames_in > 10);
    assert_eq!(
        sink["received"].as_u64().unwrap(),
        frames_in,
        "every frame produced reached the sink"
    );
    let rows = std::fs::read_to_string(out_dir.join("sink.csv"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(rows, frames_in + 1, "the sink flushed one row per frame");
    let _ = std::io::stderr().flush();
    let _ = root();
}
