//! The Prometheus exporter: one global `metrics` recorder that renders every metric
//! of [`crate::names::METRICS`] with its explicit buckets, served over HTTP.
//!
//! # Threads
//! [`install_exporter`] runs the HTTP listener (hyper, from
//! `metrics-exporter-prometheus`) on a dedicated thread, `dataflow-metrics`, with its
//! own single-threaded tokio runtime. So it can be called from inside a tokio runtime
//! or outside one, it never takes time from the engine's worker threads, and it
//! outlives whatever runtime called it. The thread lives until the process exits.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::names::{MetricKind, EXPORTER_INFO, LABEL_VERSION, METRICS};
use crate::{describe_all, MonitoringError};

/// Where the exporter listens unless `[metrics] listen` says otherwise: loopback only,
/// the port OpenTelemetry's Prometheus exporter uses.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Parses a `[metrics] listen` value: an `IP:PORT` socket address (`[::1]:9464` for
/// IPv6). Host names are refused on purpose, so what is bound is what is written.
///
/// # Errors
/// [`MonitoringError::BadListenAddress`] naming the value.
pub fn parse_listen(listen: &str) -> Result<SocketAddr, MonitoringError> {
    listen.trim().parse().map_err(|_| MonitoringError::BadListenAddress {
        listen: listen.to_owned(),
    })
}

/// Installs the global Prometheus recorder and serves `GET /metrics` (any path, in
/// fact) on `listen`; returns the address actually bound (port 0 picks a free port).
/// Registers every description ([`describe_all`]) and sets `dataflow_build_info`.
///
/// Call it once per process, before the first metric is recorded; from inside a
/// tokio runtime or not (see the module docs).
///
/// # Errors
/// - [`MonitoringError::BadListenAddress`] when `listen` is not `IP:PORT`;
/// - [`MonitoringError::PortInUse`] when something already listens there;
/// - [`MonitoringError::Bind`] for other bind failures;
/// - [`MonitoringError::RecorderAlreadyInstalled`] on a second call (nothing is left
///   listening then).
pub fn install_exporter(listen: &str) -> Result<SocketAddr, MonitoringError> {
    let wanted = parse_listen(listen)?;
    // Bind once here, for a clear error and to learn the port when 0 was asked for.
    // metrics-exporter-prometheus binds again from the address; with port 0 another
    // process could take the port in between, which would surface as `Bind`.
    let probe = TcpListener::bind(wanted).map_err(|e| bind_error(wanted, e))?;
    let addr = probe.local_addr().map_err(|e| bind_error(wanted, e))?;
    drop(probe);
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics are served on a non-loopback address, readable by anyone who can reach it");
    }

    let builder = builder()?.with_http_listener(addr);
    let (built_tx, built_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<bool>();
    thread::Builder::new()
        .name("dataflow-metrics".into())
        .spawn(move || serve(builder, built_tx, go_rx))
        .map_err(|e| MonitoringError::Exporter(format!("cannot spawn the exporter thread: {e}")))?;

    let recorder = match built_rx.recv() {
        Ok(Ok(recorder)) => recorder,
        Ok(Err(e)) => return Err(build_error(addr, e)),
        Err(_) => return Err(MonitoringError::Exporter("the exporter thread died".into())),
    };
    let installed = metrics::set_global_recorder(recorder).is_ok();
    // The serving thread waits for this answer, so nothing listens on a failed install.
    let _ = go_tx.send(installed);
    if !installed {
        return Err(MonitoringError::RecorderAlreadyInstalled);
    }
    announce();
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(addr)
}

/// Installs the global recorder without any listener and returns a handle whose
/// [`PrometheusHandle::render`] gives the exposition text: for tests and for a
/// final dump at exit. Registers every description, like [`install_exporter`].
/// Nothing runs the exporter's upkeep here: histogram samples are folded in at each
/// `render` (or `PrometheusHandle::run_upkeep`), so a long run should call one of
/// them now and then.
///
/// # Errors
/// [`MonitoringError::RecorderAlreadyInstalled`] when a recorder is already set.
pub fn install_recorder() -> Result<PrometheusHandle, MonitoringError> {
    let handle = builder()?.install_recorder().map_err(|e| match e {
        BuildError::FailedToSetGlobalRecorder(_) => MonitoringError::RecorderAlreadyInstalled,
        other => MonitoringError::Exporter(other.to_string()),
    })?;
    announce();
    Ok(handle)
}

/// A recorder with the project's buckets that is **not** installed globally: use it
/// with `metrics::with_local_recorder(&recorder, || ...)` in unit tests that run in
/// parallel, and read it with `recorder.handle().render()`. Call [`describe_all`]
/// inside the closure if the test wants `# HELP` lines.
///
/// # Errors
/// [`MonitoringError::Exporter`] if a bucket set is empty (a bug in [`crate::buckets`]).
pub fn local_recorder() -> Result<PrometheusRecorder, MonitoringError> {
    Ok(builder()?.build_recorder())
}

/// A builder with an explicit bucket set for every histogram of [`METRICS`].
fn builder() -> Result<PrometheusBuilder, MonitoringError> {
    let mut builder = PrometheusBuilder::new();
    for m in METRICS {
        if let MetricKind::Histogram { buckets } = m.kind {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(m.name.to_owned()), buckets)
                .map_err(|e| MonitoringError::Exporter(format!("{}: {e}", m.name)))?;
        }
    }
    Ok(builder)
}

/// Body of the `dataflow-metrics` thread: build the exporter inside its own runtime,
/// hand the recorder back, and serve only once the caller installed it.
fn serve(
    builder: PrometheusBuilder,
    built: mpsc::Sender<Result<PrometheusRecorder, BuildError>>,
    go: mpsc::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = built.send(Err(BuildError::FailedToCreateRuntime(e.to_string())));
            return;
        }
    };
    let result = {
        let _entered = runtime.enter();
        builder.build()
    };
    let exporter = match result {
        Ok((recorder, exporter)) => {
            let _ = built.send(Ok(recorder));
            exporter
        }
        Err(e) => {
            let _ = built.send(Err(e));
            return;
        }
    };
    if go.recv() != Ok(true) {
        return;
    }
    if let Err(error) = runtime.block_on(exporter) {
        tracing::error!(?error, "the Prometheus exporter stopped");
    }
}

fn announce() {
    describe_all();
    metrics::gauge!(EXPORTER_INFO, LABEL_VERSION => env!("CARGO_PKG_VERSION")).set(1.0);
}

fn bind_error(addr: SocketAddr, source: io::Error) -> MonitoringError {
    if source.kind() == io::ErrorKind::AddrInUse {
        MonitoringError::PortInUse { addr }
    } else {
        MonitoringError::Bind { addr, source }
    }
}

fn build_error(addr: SocketAddr, e: BuildError) -> MonitoringError {
    match e {
        BuildError::FailedToCreateHTTPListener(reason) if reason.contains("in use") => {
            MonitoringError::PortInUse { addr }
        }
        other => MonitoringError::Exporter(other.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn default_listen_is_loopback() {
        let addr = parse_listen(DEFAULT_LISTEN).unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 9464);
    }

    #[test]
    fn bad_addresses_name_the_value() {
        for bad in [
            "localhost:9464",
            "9464",
            "127.0.0.1",
            "127.0.0.1:99999",
            "",
            "http://127.0.0.1:9464",
        ] {
            let err = parse_listen(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("`[metrics] listen = \"{bad}\"` is not a socket address like 127.0.0.1:9464")
            );
        }
        assert_eq!(parse_listen("[::1]:9464").unwrap().port(), 9464);
    }

    #[test]
    fn local_recorder_renders_explicit_buckets() {
        let recorder = local_recorder().unwrap();
        metrics::with_local_recorder(&recorder, || {
            describe_all();
            metrics::histogram!(crate::names::QUALITY_PSNR_DB, "graph" => "g").record(31.0);
            metrics::histogram!(crate::names::STAGE_PROCESSING_SECONDS, "stage" => "s", "kind" => "k").record(0.003);
        });
        let text = recorder.handle().render();
        assert!(text.contains("# TYPE dataflow_quality_psnr_db histogram"), "{text}");
        assert!(
            text.contains("dataflow_quality_psnr_db_bucket{graph=\"g\",le=\"32\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dataflow_quality_psnr_db_bucket{graph=\"g\",le=\"30\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("dataflow_stage_processing_seconds_bucket{stage=\"s\",kind=\"k\",le=\"0.0001\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("quantile="),
            "a histogram fell back to a summary: {text}"
        );
    }
}
