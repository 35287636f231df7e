//! The exporter, as a user of `[metrics] listen` and of `dataflow top` meets it.
//! One process, one global recorder: the tests share it through `exporter()`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::sync::OnceLock;
use std::time::Duration;

use dataflow_monitoring::names::{self, EDGE_CAPACITY, EDGE_QUEUE_DEPTH, STAGE_MESSAGES_SENT, STAGE_UTILIZATION};
use dataflow_monitoring::top::{self, TopOptions};
use dataflow_monitoring::{install_exporter, install_recorder, MonitoringError, DEFAULT_LISTEN};

/// Installs the exporter once, from inside a tokio runtime that is dropped right
/// after: the exporter must not depend on the caller's runtime.
fn exporter() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(async { install_exporter("127.0.0.1:0") }).unwrap();
        drop(runtime);
        addr
    })
}

fn get(addr: SocketAddr) -> String {
    let body = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    body
}

#[test]
fn a_bad_listen_address_is_named_in_the_error() {
    let err = install_exporter("localhost:9464").unwrap_err();
    assert!(matches!(err, MonitoringError::BadListenAddress { .. }));
    assert_eq!(
        err.to_string(),
        "`[metrics] listen = \"localhost:9464\"` is not a socket address like 127.0.0.1:9464"
    );
    let err = install_exporter("127.0.0.1:http").unwrap_err();
    assert!(err.to_string().contains("\"127.0.0.1:http\""), "{err}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = install_exporter(&addr.to_string()).unwrap_err();
    assert!(matches!(err, MonitoringError::PortInUse { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("already in use"),
        "{text}"
    );
}

#[test]
fn the_default_is_loopback_and_an_ephemeral_port_binds_loopback() {
    let default: SocketAddr = DEFAULT_LISTEN.parse().unwrap();
    assert!(default.ip().is_loopback());
    let addr = exporter();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0, "the bound port is returned, not 0");
}

#[test]
fn scrapes_describe_every_metric_with_explicit_buckets() {
    let addr = exporter();
    metrics::histogram!(names::MODEL_INFERENCE_SECONDS, "model" => "isnet-small", "provider" => "cpu").record(2.2);
    let text = get(addr);
    assert!(text.contains("dataflow_build_info{version=\""), "{text}");
    assert!(
        text.contains("dataflow_model_inference_seconds_bucket{model=\"isnet-small\",provider=\"cpu\",le=\"4\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("# HELP dataflow_model_inference_seconds Time of one model inference."),
        "{text}"
    );
}

#[test]
fn a_second_install_is_refused() {
    exporter();
    assert!(matches!(
        install_exporter("127.0.0.1:0"),
        Err(MonitoringError::RecorderAlreadyInstalled)
    ));
    assert!(matches!(
        install_recorder(),
        Err(MonitoringError::RecorderAlreadyInstalled)
    ));
}

#[test]
fn top_once_shows_rates_queues_and_the_bottleneck() {
    let addr = exporter();
    let labels = |stage: &'static str, kind: &'static str| [("stage", stage), ("kind", kind)];
    metrics::gauge!(STAGE_UTILIZATION, "stage" => "top_src").set(0.1);
    metrics::gauge!(STAGE_UTILIZATION, "stage" => "top_slow").set(0.97);
    metrics::gauge!(EDGE_QUEUE_DEPTH, "from" => "top_src", "to" => "top_slow").set(3.0);
    metrics::gauge!(EDGE_CAPACITY, "from" => "top_src", "to" => "top_slow").set(4.0);
    let src = metrics::counter!(STAGE_MESSAGES_SENT, &labels("top_src", "synthetic"));
    let slow = metrics::counter!(STAGE_MESSAGES_SENT, &labels("top_slow", "delay"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                src.increment(10);
                slow.increment(1);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let options = TopOptions {
        endpoint: format!("http://{addr}/metrics"),
        interval: Duration::from_millis(500),
        once: true,
    };
    let mut out = Vec::new();
    top::run(&options, &mut out).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();

    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains('\x1b'), "--once must not clear the screen: {text:?}");
    let line = |stage: &str| {
        text.lines()
            .find(|l| l.split_whitespace().any(|w| w == stage))
            .unwrap_or_default()
            .to_owned()
    };
    let src_line = line("top_src");
    let slow_line = line("top_slow");
    assert!(
        slow_line.starts_with('*') && slow_line.contains("3/4") && slow_line.contains("97%"),
        "{text}"
    );
    assert!(
        text.contains("bottleneck: top_slow (utilization 97%, input queue 75%)"),
        "{text}"
    );
    // top_src sends ten times what top_slow does; the rate is read from two scrapes.
    let rate = |l: &str| {
        l.split_whitespace()
            .find_map(|w| w.parse::<f64>().ok().filter(|_| w.contains('.')))
            .unwrap()
    };
    let (fast, slow) = (rate(&src_line), rate(&slow_line));
    assert!(
        fast > 100.0 && fast > 5.0 * slow && slow > 0.0,
        "rates {fast} vs {slow}:\n{text}"
    );
}

#[test]
fn top_once_against_nothing_fails_with_the_url() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let options = TopOptions {
        endpoint: free.to_string(),
        interval: Duration::from_millis(10),
        once: true,
    };
    let err = top::run(&options, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains(&format!("http://{free}/metrics")), "{err}");
}
