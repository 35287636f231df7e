//! Live inputs and outputs: a watched folder, the HTTP preview, the V4L2 camera.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{bin, read_csv};

/// Starts `dataflow run <graph> --out <out> --no-progress --metrics off`, stderr to a file.
fn start(graph: &Path, out: &Path, log: &Path) -> Child {
    Command::new(bin())
        .env("RUST_LOG", "info")
        .arg("run")
        .arg(graph)
        .arg("--out")
        .arg(out)
        .args(["--no-progress", "--metrics", "off"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits for the run to end (killing it after `limit`) and echoes its log.
fn finish(mut child: Child, log: &Path, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "the run did not end within {limit:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    println!("{}", std::fs::read_to_string(log).unwrap_or_default());
    out
}

fn wait_for(path: &Path, limit: Duration) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn png(w: u32, h: u32, seed: u8) -> (image::RgbImage, Vec<u8>) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8 ^ seed, (y * 13) as u8, ((x * y) as u8).wrapping_add(seed)])
    });
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    (img, bytes)
}

#[test]
fn watched_folder_streams_new_files_when_complete_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let incoming = dir.path().join("incoming");
    std::fs::create_dir(&incoming).unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        format!(
            "[stage.src]\nkind = \"image_dir\"\npath = \"{}\"\nwatch = true\nframes = 3\n\
             [stage.sink]\nkind = \"image_sink\"\ninputs = [\"src\"]\n\
             [stage.order]\nkind = \"csv_sink\"\ninputs = [\"src\"]\npath = \"order.csv\"\n",
            incoming.display()
        ),
    )
    .unwrap();
    let (out, log) = (dir.path().join("out"), dir.path().join("run.log"));
    let t0 = Instant::now();
    let child = start(&g, &out, &log);
    let sink = out.join("sink");
    let limit = Duration::from_secs(30);

    // 1. Published by rename: taken at once. Names sort the other way round from arrival.
    let (first, bytes) = png(40, 30, 1);
    std::fs::write(incoming.join(".c_first.tmp"), &bytes).unwrap();
    std::fs::rename(incoming.join(".c_first.tmp"), incoming.join("c_first.png")).unwrap();
    wait_for(&sink.join("c_first.png"), limit);

    // 2. A corrupt file: reported with its path, the stream goes on.
    std::fs::write(incoming.join("b_corrupt.png"), &bytes[..bytes.len() / 3]).unwrap();

    // 3. Removed while still being written: reported with its path.
    let mut f = std::fs::File::create(incoming.join("d_gone.png")).unwrap();
    f.write_all(&bytes[..10]).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    std::fs::remove_file(incoming.join("d_gone.png")).unwrap();
    drop(f);

    // 4. Written slowly in two halves: only the complete file may be read.
    let (second, bytes) = png(64, 48, 2);
    let mut f = std::fs::File::create(incoming.join("b_second.png")).unwrap();
    f.write_all(&bytes[..bytes.len() / 2]).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(f);
    wait_for(&sink.join("b_second.png"), limit);

    // 5. Written in place in one go: taken when closed; the third frame ends the run.
    let (third, bytes) = png(24, 16, 3);
    std::fs::write(incoming.join("a_third.png"), &bytes).unwrap();
    let o = finish(child, &log, limit);
    println!("watched run: {:?} in {:?}", o.status.code(), t0.elapsed());
    assert_eq!(o.status.code(), Some(2), "the failed files make the exit code 2");

    let mut written: Vec<String> = std::fs::read_dir(&sink)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    written.sort();
    assert_eq!(written, ["a_third.png", "b_second.png", "c_first.png"]);
    for (name, want) in [("c_first", &first), ("b_second", &second), ("a_third", &third)] {
        let got = image::open(sink.join(format!("{name}.png"))).unwrap().to_rgb8();
        assert!(got == *want, "{name}: the frame differs from the file written");
    }
    let names: Vec<String> = read_csv(&out.join("order.csv"))
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, ["c_first", "b_second", "a_third"], "arrival order");
    let errors = std::fs::read_to_string(out.join("errors.jsonl")).unwrap();
    assert!(errors.contains("b_corrupt.png"), "{errors}");
    assert!(
        errors.contains("d_gone.png: removed before it could be read"),
        "{errors}"
    );
    assert_eq!(errors.lines().count(), 2, "{errors}");
}

#[test]
fn watched_folder_is_created_and_duration_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let incoming = dir.path().join("not-yet");
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        format!(
            "[stage.src]\nkind = \"image_dir\"\npath = \"{}\"\nwatch = true\nduration_s = 0.5\n\
             [stage.sink]\nkind = \"image_sink\"\ninputs = [\"src\"]\n",
            incoming.display()
        ),
    )
    .unwrap();
    let validate = Command::new(bin()).arg("validate").arg(&g).output().unwrap();
    assert_eq!(validate.status.code(), Some(0), "{validate:?}");
    let (out, log) = (dir.path().join("out"), dir.path().join("run.log"));
    let t0 = Instant::now();
    let o = finish(start(&g, &out, &log), &log, Duration::from_secs(20));
    println!("empty watched run: {:?} in {:?}", o.status.code(), t0.elapsed());
    assert_eq!(o.status.code(), Some(0));
    assert!(incoming.is_dir(), "the watched folder is created");
    assert_eq!(std::fs::read_dir(out.join("sink")).unwrap().count(), 0);
}

#[test]
fn watched_folder_ends_promptly_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        format!(
            "[stage.src]\nkind = \"image_dir\"\npath = \"{}\"\nwatch = true\n\
             [stage.sink]\nkind = \"image_sink\"\ninputs = [\"src\"]\n",
            dir.path().join("incoming").display()
        ),
    )
    .unwrap();
    let (out, log) = (dir.path().join("out"), dir.path().join("run.log"));
    let child = start(&g, &out, &log);
    wait_for(&out.join("sink"), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = finish(child, &log, Duration::from_secs(10));
    println!("watched run stopped {:?} after SIGINT", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(String::from_utf8_lossy(&std::fs::read(&log).unwrap()).contains("interrupted"));
    assert!(o.status.code().is_some());
}

/// A plain HTTP/1.1 GET; returns status line, headers (lower-case names) and body.
fn get(addr: &str, path: &str) -> (String, HashMap<String, String>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    r.read_to_end(&mut body).unwrap();
    (status, headers, body)
}

fn read_head(r: &mut impl BufRead) -> (String, HashMap<String, String>) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    (status.trim_end().to_string(), read_headers(r))
}

/// Header lines up to the blank line, names lower-cased.
fn read_headers(r: &mut impl BufRead) -> HashMap<String, String> {
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.insert(k.trim().to_lowercase(), v.trim().to_string());
    }
    headers
}

#[test]
fn preview_serves_page_state_jpeg_and_mjpeg() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        "[channel]\nsnr_db = 7.5\n\
         [stage.src]\nkind = \"synthetic\"\nwidth = 64\nheight = 48\nrate = 20\n\
         [stage.view]\nkind = \"preview\"\ninputs = [\"src\"]\nlisten = \"127.0.0.1:0\"\nlinger_s = 0.2\n",
    )
    .unwrap();
    let (out, log) = (dir.path().join("out"), dir.path().join("run.log"));
    let child = start(&g, &out, &log);
    let url_file = out.join("preview.url");
    wait_for(&url_file, Duration::from_secs(20));
    let url = std::fs::read_to_string(&url_file).unwrap();
    let addr = url
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    let t0 = Instant::now();
    let state = loop {
        let (status, h, body) = get(&addr, "/state.json");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(h["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if v["frames"].as_u64().unwrap() >= 2 {
            break v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no frames reached the preview: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("{state}");
    assert_eq!(state["images"], serde_json::json!(["image"]));
    assert_eq!(state["channel"]["snr_db"], 7.5, "the graph's channel SNR is shown");

    let (status, h, body) = get(&addr, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("/state.json") && page.contains("/frame/"), "{page}");

    let (status, h, body) = get(&addr, "/frame/image.jpg");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(h["content-type"], "image/jpeg");
    let jpeg = image::load_from_memory_with_format(&body, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((jpeg.width(), jpeg.height()), (64, 48));
    assert!(get(&addr, "/frame/slice.jpg").0.starts_with("HTTP/1.1 404"));

    // MJPEG: two parts, each a JPEG of the latest frame.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /stream/image.mjpg HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let (status, h) = read_head(&mut r);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(h["content-type"], "multipart/x-mixed-replace; boundary=frame");
    for _ in 0..2 {
        let mut boundary = String::new();
        r.read_line(&mut boundary).unwrap();
        assert_eq!(boundary.trim_end(), "--frame");
        let part = read_headers(&mut r);
        assert_eq!(part["content-type"], "image/jpeg");
        let mut jpeg = vec![0u8; part["content-length"].parse().unwrap()];
        r.read_exact(&mut jpeg).unwrap();
        image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).unwrap();
    }
    drop(r);

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let _ = finish(child, &log, Duration::from_secs(20));
    assert!(TcpStream::connect(&addr).is_err(), "the server stops with the run");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("preview serving") && logged.contains(&addr), "{logged}");
}

#[test]
fn camera_missing_device_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        "[stage.cam]\nkind = \"camera\"\ndevice = \"/dev/video97\"\n\
         [stage.sink]\nkind = \"image_sink\"\ninputs = [\"cam\"]\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = Command::new(bin())
        .arg("run")
        .arg(&g)
        .arg("--out")
        .arg(&out)
        .args(["--no-progress", "--metrics", "off"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("camera device /dev/video97 not found"), "{err}");
    assert!(err.contains("stage `cam`") || err.contains("cam"), "{err}");
}

/// Headless Chromium (Debian's `chromium`, installed by `scripts/setup-system`) with the
/// flags this machine needs, on `url`, with extra arguments.
fn chromium(profile: &Path, url: &str, extra: &[&str]) -> Output {
    let bin = ["chromium", "/usr/bin/chromium"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium not found: `scripts/setup-system chromium` installs it");
    Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1000,800",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap()
}

#[test]
fn preview_page_in_headless_chromium_shows_loaded_images() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(
        &g,
        "[stage.src]\nkind = \"synthetic\"\nwidth = 160\nheight = 120\nframes = 3\n\
         [stage.view]\nkind = \"preview\"\ninputs = [\"src\"]\nlisten = \"127.0.0.1:0\"\nlinger_s = 60\n",
    )
    .unwrap();
    let (out, log) = (dir.path().join("out"), dir.path().join("run.log"));
    let mut child = start(&g, &out, &log);
    let url_file = out.join("preview.url");
    wait_for(&url_file, Duration::from_secs(20));
    let url = std::fs::read_to_string(&url_file).unwrap().trim().to_string();
    let dom = chromium(&dir.path().join("p1"), &url, &["--dump-dom"]);
    let shot = dir.path().join("shot.png");
    let shot_run = chromium(
        &dir.path().join("p2"),
        &url,
        &[&format!("--screenshot={}", shot.display())],
    );
    let _ = child.kill();
    let _ = child.wait();
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    println!("{dom}");
    // The page's script records each image's decoded size once it has loaded.
    assert!(
        dom.contains("id=\"img-image\""),
        "the reconstruction panel is on the page: {dom}"
    );
    assert!(
        dom.contains("data-loaded=\"160x120\""),
        "the image loaded with its size: {dom}"
    );
    assert!(
        dom.contains("frame 0:2") || dom.contains(">0:2<"),
        "the page shows the latest frame: {dom}"
    );
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&shot_run.stderr)
    );
    let png = image::open(&shot).unwrap().to_rgb8();
    if let Ok(keep) = std::env::var("DATAFLOW_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&shot, keep);
    }
    assert_eq!(png.dimensions(), (1000, 800));
    // The synthetic gradient shows up in the screenshot: many distinct colours, not a blank page.
    let mut colours: Vec<[u8; 3]> = png.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        colours.len() > 100,
        "the screenshot looks blank ({} colours)",
        colours.len()
    );
}
