//! Tracing set-up: one subscriber, on stderr, text for people or JSON for machines.
//!
//! The filter comes from `RUST_LOG` when it is set (standard `EnvFilter` syntax);
//! otherwise from the verbosity: the dataflow crates log at `info` (`-v`: `debug`,
//! `-vv`: `trace`) and everything else (ractor, ort, hyper, ...) at `warn`.

use std::fmt;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

use crate::MonitoringError;

/// Prefix shared by the targets of every dataflow crate (`dataflow`,
/// `dataflow_engine`, `dataflow_actors`, ...); `EnvFilter` matches targets by prefix.
const OUR_TARGETS: &str = "dataflow";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, fields flattened, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format `{other}`; expected `text` or `json`")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// The filter directives used when `RUST_LOG` is not set, for a verbosity of 0
/// (`info`), 1 (`debug`) or 2 and more (`trace`) for the dataflow crates; other
/// crates stay at `warn`.
pub fn default_directives(verbosity: u8) -> String {
    let ours = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    format!("warn,{OUR_TARGETS}={ours}")
}

/// Installs the global tracing subscriber writing to stderr in `format`. The filter
/// is `RUST_LOG` when set, else [`default_directives`]`(verbosity)`.
///
/// # Errors
/// [`MonitoringError::Tracing`] when `RUST_LOG` does not parse or a global
/// subscriber is already set (a second call).
pub fn init_tracing(format: LogFormat, verbosity: u8) -> Result<(), MonitoringError> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(value) if !value.trim().is_empty() => {
            EnvFilter::try_new(&value).map_err(|e| MonitoringError::Tracing(format!("RUST_LOG={value:?}: {e}")))?
        }
        _ => EnvFilter::try_new(default_directives(verbosity)).map_err(|e| MonitoringError::Tracing(e.to_string()))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    installed.map_err(|e| MonitoringError::Tracing(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_is_info_for_ours_warn_for_others() {
        assert_eq!(default_directives(0), "warn,dataflow=info");
        assert_eq!(default_directives(1), "warn,dataflow=debug");
        assert_eq!(default_directives(5), "warn,dataflow=trace");
        assert!(EnvFilter::try_new(default_directives(0)).is_ok());
    }

    #[test]
    fn our_crates_match_the_dataflow_prefix() {
        use tracing::Level;
        use tracing_subscriber::layer::SubscriberExt;
        let filter = EnvFilter::try_new(default_directives(0)).unwrap();
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "dataflow_engine::runtime", Level::INFO));
            assert!(!tracing::enabled!(target: "dataflow_engine::runtime", Level::DEBUG));
            assert!(!tracing::enabled!(target: "ractor::actor", Level::INFO));
            assert!(tracing::enabled!(target: "ractor::actor", Level::WARN));
        });
    }

    #[test]
    fn log_format_parses() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().unwrap_err().contains("`text` or `json`"));
    }
}
