//! Only our machines get in (issue 22, item 7): two `dataflow` processes joined by
//! mutual TLS with certificates `scripts/make-certs` makes here; a peer whose
//! certificate another CA signed, and a peer speaking plain TCP, are refused, and each
//! refusal is logged and counted in `dataflow_link_refused_total`. The `openssl`
//! command is needed (as by `scripts/make-certs`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::distributed::{counts, files, free_port, start, summary, Proc};
use crate::support::{bin, root};

/// Runs `scripts/make-certs --dir <dir> <names>`.
fn make_certs(dir: &Path, names: &[&str]) {
    let out = Command::new(root().join("scripts/make-certs"))
        .arg("--dir")
        .arg(dir)
        .args(names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/make-certs failed (is the openssl command installed?):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for n in names {
        assert!(dir.join(format!("{n}.pem")).is_file() && dir.join(format!("{n}-key.pem")).is_file());
    }
    assert!(dir.join("ca.pem").is_file());
}

fn tls(ca: &Path, dir: &Path, name: &str) -> String {
    format!(
        "tls = {{ root_ca = {:?}, cert = {:?}, key = {:?} }}",
        ca.display().to_string(),
        dir.join(format!("{name}.pem")).display().to_string(),
        dir.join(format!("{name}-key.pem")).display().to_string()
    )
}

/// `tx` (synthetic frames) listens on `tls/127.0.0.1:port`; `rx` (a PNG per frame)
/// connects with `rx_machine` (its whole `[machines.rx]` body).
fn graph(dir: &Path, file: &str, port: u16, tx_tls: &str, rx_machine: &str, frames: u64) -> PathBuf {
    let text = format!(
        r#"[graph]
name = "tls-{port}"
seed = 3

[machines.tx]
listen = ["tls/127.0.0.1:{port}"]
{tx_tls}

[machines.rx]
{rx_machine}

[stage.src]
kind = "synthetic"
machine = "tx"
frames = {frames}
width = 32
height = 24
pattern = "noise"

[stage.sink]
kind = "image_sink"
machine = "rx"
inputs = ["src"]
field = "image"
mailbox = 4
when_full = "block"
"#
    );
    let g = dir.join(file);
    std::fs::write(&g, text).unwrap();
    g
}

/// The Prometheus text of `127.0.0.1:port` (empty when it does not answer).
fn scrape(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// The value of `dataflow_link_refused_total{reason="<reason>"}`, 0 when absent.
fn refused(text: &str, reason: &str) -> f64 {
    let needle = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with("dataflow_link_refused_total") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The transmitter with its metrics on `127.0.0.1:<metrics>` (not `--metrics off`).
fn start_tx(graph: &Path, out: &Path, metrics: u16) -> Proc {
    let log = out.with_extension("tx.log");
    let child = Command::new(bin())
        .current_dir(root())
        .env("RUST_LOG", "warn,dataflow_actors::zenoh_link=info")
        .arg("run")
        .arg(graph)
        .arg("--out")
        .arg(out)
        .args(["--no-progress", "--machine", "tx", "--metrics"])
        .arg(format!("127.0.0.1:{metrics}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        log,
        what: format!("{} --machine tx", graph.display()),
    }
}

/// Waits until the transmitter's metrics count a refusal for `reason`.
fn wait_refused(tx: &mut Proc, metrics: u16, reason: &str, limit: Duration) -> f64 {
    let t0 = Instant::now();
    loop {
        let n = refused(&scrape(metrics), reason);
        if n >= 1.0 {
            return n;
        }
        if let Some(s) = tx.child.try_wait().unwrap() {
            panic!("{} exited {:?}:\n{}", tx.what, s.code(), tx.log());
        }
        assert!(
            t0.elapsed() < limit,
            "no refusal counted for reason {reason} within {limit:?}; metrics:\n{}\nlog:\n{}",
            scrape(metrics)
                .lines()
                .filter(|l| l.contains("link"))
                .collect::<Vec<_>>()
                .join("\n"),
            tx.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tls_lets_in_our_machines_and_refuses_and_counts_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("certs"), dir.path().join("stranger"));
    make_certs(&ours, &["tx", "rx"]);
    // A stranger knows our CA's certificate (it is no secret) but its own was signed by another CA.
    make_certs(&theirs, &["rx"]);
    let ca = ours.join("ca.pem");
    let (port, metrics) = (free_port(), free_port());
    let tx_tls = tls(&ca, &ours, "tx");
    let connect = format!("connect = [\"tls/127.0.0.1:{port}\"]");
    let good = graph(
        dir.path(),
        "good.toml",
        port,
        &tx_tls,
        &format!("{connect}\n{}", tls(&ca, &ours, "rx")),
        30,
    );
    let stranger = graph(
        dir.path(),
        "stranger.toml",
        port,
        &tx_tls,
        &format!("{connect}\n{}", tls(&ca, &theirs, "rx")),
        30,
    );
    let plain = graph(
        dir.path(),
        "plain.toml",
        port,
        &tx_tls,
        &format!("connect = [\"tcp/127.0.0.1:{port}\"]"),
        30,
    );
    let mut tx = start_tx(&good, &dir.path().join("tx"), metrics);

    // A certificate from another CA: refused, logged, counted; it receives nothing.
    let mut s = start(&stranger, Some("rx"), &dir.path().join("stranger-out"), &[], None);
    let n = wait_refused(&mut tx, metrics, "untrusted_certificate", Duration::from_secs(20));
    tx.wait_for_log(
        "refused a connection on this machine's TLS endpoint",
        Duration::from_secs(5),
    );
    assert!(
        !files(&dir.path().join("stranger-out"))
            .iter()
            .any(|f| f.ends_with(".png")),
        "the stranger received frames"
    );
    s.signal("KILL");
    let _ = s.child.wait();
    println!("stranger refused {n} time(s)");

    // Plain TCP on the TLS port: refused and counted too.
    let mut p = start(&plain, Some("rx"), &dir.path().join("plain-out"), &[], None);
    wait_refused(&mut tx, metrics, "not_tls", Duration::from_secs(20));
    let got = files(&dir.path().join("plain-out").join("sink"));
    assert!(got.is_empty(), "the plain TCP peer received frames: {got:?}");
    p.signal("KILL");
    let _ = p.child.wait();

    // Our receiver gets every frame over TLS.
    let out = dir.path().join("rx-out");
    let mut rx = start(&good, Some("rx"), &out, &[], None);
    assert_eq!(rx.wait(Duration::from_secs(60)), 0);
    assert_eq!(tx.wait(Duration::from_secs(30)), 0);
    let pngs = files(&out.join("sink"));
    assert_eq!(pngs.len(), 30, "files: {pngs:?}");
    assert_eq!(counts(&summary(&out), "sink"), (30, 0));
}

#[test]
fn tls_settings_are_checked_before_any_socket() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs, &["tx", "rx"]);
    let port = free_port();
    let cases = [
        // A plain endpoint beside `tls` would let anyone in.
        (
            format!(
                "listen = [\"tcp/127.0.0.1:{port}\"]\n{}",
                tls(&certs.join("ca.pem"), &certs, "tx")
            ),
            "is not encrypted while this machine has `tls`",
        ),
        // A TLS endpoint without certificates.
        (
            format!("listen = [\"tls/127.0.0.1:{port}\"]"),
            "has no `tls`: add tls = { root_ca",
        ),
        // Mutual TLS needs all three files.
        (
            format!(
                "listen = [\"tls/127.0.0.1:{port}\"]\ntls = {{ root_ca = {:?} }}",
                certs.join("ca.pem").display().to_string()
            ),
            "`tls` lacks cert, key",
        ),
        (
            format!(
                "listen = [\"tls/127.0.0.1:{port}\"]\ntls = {{ root_ca = \"nowhere/ca.pem\", cert = \"a.pem\", key = \"b.pem\" }}"
            ),
            "TLS file `nowhere/ca.pem` not found",
        ),
    ];
    for (i, (machine, expected)) in cases.iter().enumerate() {
        let text = format!(
            "[graph]\nname = \"tls-check\"\n[machines.tx]\n{machine}\n[machines.rx]\nconnect = [\"tls/127.0.0.1:{port}\"]\n\
             {}\n[stage.src]\nkind = \"synthetic\"\nmachine = \"tx\"\nframes = 1\n\
             [stage.sink]\nkind = \"null_sink\"\nmachine = \"rx\"\ninputs = [\"src\"]\n",
            tls(&certs.join("ca.pem"), &certs, "rx")
        );
        let g = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&g, text).unwrap();
        let out = Command::new(bin())
            .current_dir(root())
            .args(["run"])
            .arg(&g)
            .args(["--no-progress", "--metrics", "off", "--machine", "tx", "--out"])
            .arg(dir.path().join(format!("out{i}")))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(err.contains(expected), "case {i}: expected {expected:?} in:\n{err}");
        assert!(
            err.contains("[machines.tx]"),
            "case {i}: the message names the machine:\n{err}"
        );
    }
}
