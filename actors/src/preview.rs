//! `preview`: a live side-by-side view of the stream over HTTP, for people to watch.
//!
//! The sink keeps only the latest frame (its fields are shared, not copied, so a
//! fast stream costs nothing and nothing queues up) and serves it on a loopback
//! address (`listen`, default `127.0.0.1:8080`; port 0 picks a free one). The bound
//! address is logged and written to `<out>/preview.url`.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page: original, object slice and reconstruction, texts and metrics |
//! | `/state.json` | frame id, name, sent/received/corrected texts, every number field, the channel's SNR and modulation, which images are present |
//! | `/frame/<field>.jpg` | the latest image field (`original`, `slice`, `image`, or any other) as one JPEG |
//! | `/stream/<field>.mjpg` | the same as an MJPEG stream (`multipart/x-mixed-replace`), one part per new frame |
//!
//! Images are encoded to JPEG on request, once per frame and field. Any subset of
//! fields works: the page shows what the frames carry. The server stops when the
//! sink finishes, after `linger_s` seconds (so a short run can still be looked at).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use dataflow_engine::{BuildContext, Built, Fields, Input, Outputs, Ports, Role, Stage, StageError, StageKind, Value};
use schemars::JsonSchema;
use serde::Deserialize;

/// Keys of `preview`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewConfig {
    /// Address to serve on; keep it on loopback unless the network is trusted.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Keep serving this many seconds after the end of the stream.
    #[serde(default)]
    pub linger_s: f64,
    /// JPEG quality of the served images (1-100).
    #[serde(default = "default_quality")]
    pub quality: u8,
    /// Channel SNR shown on the page (inherited from the graph's `[channel]`).
    #[serde(default)]
    pub snr_db: Option<f64>,
    /// Channel modulation shown on the page (inherited from the graph's `[channel]`).
    #[serde(default)]
    pub modulation: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_quality() -> u8 {
    80
}

/// The `preview` kind.
pub struct Preview;

/// Most connections served at once; more get `503`.
const MAX_CONNECTIONS: usize = 32;
/// How often waiting server threads look at the shutdown flag.
const TICK: Duration = Duration::from_millis(50);

/// The latest frame, shared by the sink (writer) and the server threads (readers).
#[derive(Default)]
struct Latest {
    /// Frames seen so far; a new value means a new frame.
    count: u64,
    frame: String,
    fields: Fields,
    /// JPEGs already encoded for the current frame, by field.
    jpegs: HashMap<String, Bytes>,
}

struct Shared {
    latest: Mutex<Latest>,
    /// Signalled on every new frame and at shutdown (MJPEG streams wait on it).
    changed: Condvar,
    /// Set when the sink is done; server threads return at their next tick.
    stop: AtomicBool,
    /// Connections being served now.
    active: AtomicUsize,
    quality: u8,
    snr_db: Option<f64>,
    modulation: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Latest> {
        // A panicking reader cannot leave `Latest` half-written: take it as it is.
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest frame's image `field` as JPEG, with the frame count it belongs to.
    fn jpeg(&self, field: &str) -> Option<(u64, Bytes)> {
        let (count, img) = {
            let l = self.lock();
            if let Some(j) = l.jpegs.get(field) {
                return Some((l.count, j.clone()));
            }
            (l.count, l.fields.image(field)?.clone())
        };
        let rgb = if img.format.channels() == 4 {
            // JPEG has no alpha: show transparent parts as mid grey.
            let rgba = img.to_rgba();
            image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                let p = rgba.get_pixel(x, y);
                let a = u16::from(p[3]);
                let mix = |v: u8| ((u16::from(v) * a + 128 * (255 - a)) / 255) as u8;
                image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])])
            })
        } else {
            img.to_rgb()
        };
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, self.quality.clamp(1, 100))
            .encode_image(&rgb)
            .ok()?;
        let bytes = Bytes::from(buf);
        let mut l = self.lock();
        if l.count == count {
            l.jpegs.insert(field.to_string(), bytes.clone());
        }
        Some((count, bytes))
    }

    fn state(&self) -> serde_json::Value {
        let l = self.lock();
        let f = &l.fields;
        let texts = |names: &[&str]| -> Vec<String> {
            match names.iter().find_map(|n| f.get(n)) {
                Some(Value::Texts(t)) => t.iter().map(|s| s.clone().unwrap_or_else(|| "<lost>".into())).collect(),
                Some(Value::Text(t)) => vec![t.to_string()],
                _ => Vec::new(),
            }
        };
        let mut metrics = BTreeMap::new();
        let mut images = Vec::new();
        for (k, v) in f.iter() {
            match v {
                Value::Number(n) if n.is_finite() => {
                    metrics.insert(k.to_string(), *n);
                }
                Value::Record(r) => {
                    for (rk, rv) in r.iter().filter(|(_, v)| v.is_finite()) {
                        metrics.insert(rk.clone(), *rv);
                    }
                }
                Value::Image(_) => images.push(k.to_string()),
                _ => {}
            }
        }
        serde_json::json!({
            "frames": l.count,
            "frame": l.frame,
            "name": f.text("name"),
            "images": images,
            "sent": texts(&["sent_texts", "sent"]),
            "received": texts(&["texts", "text"]),
            "corrected": texts(&["corrected"]),
            "metrics": metrics,
            "channel": { "snr_db": self.snr_db, "modulation": self.modulation },
        })
    }
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>dataflow preview</title>
<style>
body{font-family:sans-serif;margin:1em;background:#fafafa;color:#222}
#panels{display:flex;gap:1em;flex-wrap:wrap}
figure{margin:0}figure img{height:300px;background:#ddd}
table{border-collapse:collapse;margin-top:1em}td{padding:2px 8px;border-bottom:1px solid #ddd;vertical-align:top}
</style></head><body>
<h3>dataflow preview — frame <span id="frame">none yet</span> <span id="name"></span></h3>
<div id="channel"></div>
<div id="panels"></div>
<table id="texts"></table>
<table id="metrics"></table>
<script>
const labels = {original: "original", slice: "object slice", image: "reconstruction"};
const order = ["original", "slice", "image"];
const shown = new Map();
function row(table, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
  table.appendChild(tr);
}
async function poll() {
  try {
    const s = await (await fetch("/state.json", {cache: "no-store"})).json();
    document.getElementById("frame").textContent = s.frame || "none yet";
    document.getElementById("name").textContent = s.name ? "(" + s.name + ")" : "";
    const ch = s.channel || {};
    document.getElementById("channel").textContent =
      (ch.snr_db != null ? "SNR " + ch.snr_db + " dB " : "") + (ch.modulation || "");
    const fields = order.filter(f => s.images.includes(f)).concat(s.images.filter(f => !order.includes(f)));
    for (const f of fields) {
      if (!shown.has(f)) {
        const fig = document.createElement("figure");
        const img = document.createElement("img");
        img.id = "img-" + f;
        // Each load completes (unlike an endless MJPEG stream), so `load` fires and
        // records the decoded size: tests and scripts read it from data-loaded.
        img.onload = () => { img.dataset.loaded = img.naturalWidth + "x" + img.naturalHeight; };
        const cap = document.createElement("figcaption");
        cap.textContent = labels[f] || f;
        fig.appendChild(img); fig.appendChild(cap);
        document.getElementById("panels").appendChild(fig);
        shown.set(f, null);
      }
      if (shown.get(f) !== s.frame) {
        shown.set(f, s.frame);
        document.getElementById("img-" + f).src =
          "/frame/" + encodeURIComponent(f) + ".jpg?frame=" + encodeURIComponent(s.frame);
      }
    }
    const t = document.getElementById("texts"); t.replaceChildren();
    const n = Math.max(s.sent.length, s.received.length, s.corrected.length);
    for (let k = 0; k < n; k++) {
      row(t, ["tile " + (k + 1), "sent: " + (s.sent[k] ?? ""), "received: " + (s.received[k] ?? ""),
              "corrected: " + (s.corrected[k] ?? "")]);
    }
    const m = document.getElementById("metrics"); m.replaceChildren();
    for (const [k, v] of Object.entries(s.metrics)) row(m, [k, Number(v).toPrecision(5)]);
  } catch (e) { document.getElementById("frame").textContent = "server gone"; }
  setTimeout(poll, 500);
}
poll();
</script></body></html>
"#;

fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

/// Reads the request head (up to 8 KiB) and returns method and path.
fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 8192 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next()?.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    Some((method, path))
}

fn serve_mjpeg(stream: &mut TcpStream, shared: &Shared, field: &str) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
    )?;
    let mut sent = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let latest = shared.lock().count;
        if latest != sent {
            if let Some((count, jpeg)) = shared.jpeg(field) {
                let head = format!(
                    "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    jpeg.len()
                );
                stream.write_all(head.as_bytes())?;
                stream.write_all(&jpeg)?;
                stream.write_all(b"\r\n")?;
                stream.flush()?;
                sent = count;
                continue;
            }
            sent = latest;
        }
        let guard = shared.lock();
        if guard.count == sent {
            // Woken by a new frame or at shutdown; the tick bounds the wait either way.
            let _ = shared.changed.wait_timeout(guard, TICK * 4);
        }
    }
    Ok(())
}

fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let Some((method, path)) = read_request(&mut stream) else {
        return respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n", false);
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            false,
        );
    }
    if path == "/" || path == "/index.html" {
        return respond(
            &mut stream,
            "200 OK",
            "text/html; charset=utf-8",
            PAGE.as_bytes(),
            head_only,
        );
    }
    if path == "/state.json" {
        let body = shared.state().to_string();
        return respond(&mut stream, "200 OK", "application/json", body.as_bytes(), head_only);
    }
    if let Some(field) = path.strip_prefix("/frame/").and_then(|p| p.strip_suffix(".jpg")) {
        return match shared.jpeg(field) {
            Some((_, jpeg)) => respond(&mut stream, "200 OK", "image/jpeg", &jpeg, head_only),
            None => respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                b"no such image in the latest frame\n",
                head_only,
            ),
        };
    }
    if let Some(field) = path.strip_prefix("/stream/").and_then(|p| p.strip_suffix(".mjpg")) {
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        return serve_mjpeg(&mut stream, shared, field);
    }
    respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", head_only)
}

/// The accept loop: polls the listener so it can see the stop flag every [`TICK`].
fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if shared.active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    let _ = respond(&mut stream, "503 Service Unavailable", "text/plain", b"busy\n", false);
                    continue;
                }
                shared.active.fetch_add(1, Ordering::Relaxed);
                let s = shared.clone();
                let spawned = std::thread::Builder::new().name("preview-conn".into()).spawn(move || {
                    if let Err(e) = handle(stream, &s) {
                        tracing::debug!(error = %e, "preview connection ended");
                    }
                    s.active.fetch_sub(1, Ordering::Relaxed);
                });
                match spawned {
                    Ok(h) => workers.push(h),
                    Err(e) => {
                        shared.active.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "preview: cannot start a connection thread");
                    }
                }
                workers.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(e) => {
                tracing::warn!(error = %e, "preview: accept failed");
                std::thread::sleep(TICK);
            }
        }
    }
    shared.changed.notify_all();
    for h in workers {
        let _ = h.join();
    }
}

struct Run {
    stage: String,
    shared: Arc<Shared>,
    /// The accept thread; joined when the sink finishes or is dropped.
    server: Option<JoinHandle<()>>,
    linger: Duration,
}

impl Run {
    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, _out: &mut Outputs) -> Result<(), StageError> {
        let (frame, fields) = match &input {
            Input::Message { msg, .. } => (msg.id.to_string(), msg.fields.clone()),
            Input::Joined(j) => (j.id.to_string(), crate::util::merge_joined(j)),
        };
        let mut l = self.shared.lock();
        l.count += 1;
        l.frame = frame;
        l.fields = fields;
        l.jpegs.clear();
        drop(l);
        self.shared.changed.notify_all();
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), StageError> {
        if !self.linger.is_zero() {
            tracing::info!(stage = %self.stage, seconds = self.linger.as_secs_f64(), "preview lingering");
            std::thread::sleep(self.linger);
        }
        self.shutdown();
        Ok(())
    }
}

impl StageKind for Preview {
    type Config = PreviewConfig;
    const NAME: &'static str = "preview";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "Live view over HTTP: original, object slice, reconstruction, texts and metrics.";
    const ONE_REPLICA: Option<&'static str> = Some("its replicas would all serve the same port");
    const CHANNEL: bool = true;

    fn validate(c: &Self::Config) -> Vec<dataflow_engine::KeyProblem> {
        dataflow_engine::check_range("linger_s", c.linger_s, 0.0, dataflow_engine::MAX_DURATION_S, "seconds")
            .into_iter()
            .collect()
    }

    fn ports(_: &Self::Config) -> Ports {
        // Its own thread: `finish` sleeps through `linger_s`, which must not hold an async worker.
        Ports {
            heavy: true,
            ..Ports::default()
        }
    }

    fn check(c: &Self::Config, _ctx: &BuildContext) -> Vec<String> {
        match c.listen.parse::<SocketAddr>() {
            Ok(_) => Vec::new(),
            Err(e) => vec![format!(
                "`listen = \"{}\"` is not an address ({e}); write it as ip:port, e.g. 127.0.0.1:8080",
                c.listen
            )],
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        let listener = TcpListener::bind(&c.listen).map_err(|e| {
            StageError::io(format!(
                "stage `{}`: cannot listen on {} ({e}); pick a free port with `listen` (port 0 = any)",
                ctx.stage, c.listen
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| StageError::io(format!("stage `{}`: {e}", ctx.stage)))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| StageError::io(format!("stage `{}`: {e}", ctx.stage)))?;
        let url = format!("http://{addr}/");
        std::fs::create_dir_all(&ctx.out_dir)
            .and_then(|_| std::fs::write(ctx.out_dir.join("preview.url"), format!("{url}\n")))
            .map_err(|e| StageError::io(format!("cannot write {}/preview.url: {e}", ctx.out_dir.display())))?;
        tracing::info!(stage = %ctx.stage, %url, "preview serving");
        let shared = Arc::new(Shared {
            latest: Mutex::new(Latest::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            quality: c.quality,
            snr_db: c.snr_db,
            modulation: c.modulation.clone(),
        });
        let s = shared.clone();
        let server = std::thread::Builder::new()
            .name(format!("preview-{}", ctx.stage))
            .spawn(move || serve(listener, s))
            .map_err(|e| StageError::io(format!("stage `{}`: cannot start the server thread: {e}", ctx.stage)))?;
        Ok(Built::Stage(Box::new(Run {
            stage: ctx.stage.clone(),
            shared,
            server: Some(server),
            linger: Duration::from_secs_f64(c.linger_s.max(0.0)),
        })))
    }
}
