//! The crate's error type.

use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    /// The `[metrics] listen` value is not `IP:PORT`.
    #[error("`[metrics] listen = \"{listen}\"` is not a socket address like 127.0.0.1:9464")]
    BadListenAddress {
        /// The value as written.
        listen: String,
    },
    /// Something else already listens on the address.
    #[error(
        "cannot serve metrics on {addr}: the port is already in use \
         (another dataflow run or exporter?); set `[metrics] listen` to a free port, \
         or port 0 for any free one"
    )]
    PortInUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Binding the metrics listener failed for another reason (permission, no such
    /// interface, ...).
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// A global `metrics` recorder is already installed in this process (the
    /// exporter or recorder was installed twice).
    #[error("a metrics recorder is already installed in this process")]
    RecorderAlreadyInstalled,
    /// The Prometheus exporter could not be built.
    #[error("cannot start the Prometheus exporter: {0}")]
    Exporter(String),
    /// A global tracing subscriber is already installed, or the filter is invalid.
    #[error("cannot set up tracing: {0}")]
    Tracing(String),
    /// An HTTP request to a metrics endpoint or to Prometheus failed.
    #[error("HTTP GET {url}: {reason}")]
    Http {
        /// What was fetched.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A scraped page is not in the Prometheus text exposition format.
    #[error("line {line} of the exposition text: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The `prometheus` test harness (feature `promtest`) failed.
    #[error("promtest: {0}")]
    Prometheus(String),
    /// Writing to the terminal (or another writer) failed.
    #[error("cannot write output: {0}")]
    Io(#[from] io::Error),
}
