//! Refused TLS connections (issue 22, item 7): zenoh refuses a peer without a valid
//! certificate inside its TLS listener and only logs it, so this tracing layer watches
//! for that log line, counts the refusal in `dataflow_link_refused_total` by reason and
//! logs it again in words a user can act on.
//!
//! zenoh writes the refusal at WARN from `zenoh_link_tls` as "<rustls error>. Hint:
//! increase the system open file limit." (its accept loop treats every failed accept
//! alike); the test `tests/it/tls.rs` fails if a zenoh upgrade changes that.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use dataflow_monitoring::names;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The tail zenoh puts after every failed TLS accept.
const ACCEPT_FAILED: &str = "Hint: increase the system open file limit";

/// Why a connection was refused, from the TLS library's words.
pub fn reason(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    if d.contains("no certificate") || d.contains("certificaterequired") || d.contains("certificate required") {
        "no_certificate"
    } else if d.contains("invalid peer certificate")
        || d.contains("unknownissuer")
        || d.contains("unknownca")
        || d.contains("bad certificate")
        || d.contains("badcertificate")
    {
        "untrusted_certificate"
    } else if d.contains("corrupt message") || d.contains("invalidcontenttype") || d.contains("invalid content type") {
        "not_tls"
    } else if d.contains("timeout") || d.contains("timed out") {
        "handshake_timeout"
    } else {
        "other"
    }
}

/// The layer; events are handed to a thread that counts and logs them, since a layer
/// cannot log from inside the logging of another event.
pub struct TlsRefusals {
    tx: Mutex<Sender<String>>,
}

/// A layer to add to the process's tracing subscriber, whatever its filter.
pub fn layer() -> TlsRefusals {
    let (tx, rx) = std::sync::mpsc::channel();
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("tls refusals".into())
            .spawn(move || report(rx));
    });
    TlsRefusals { tx: Mutex::new(tx) }
}

fn report(rx: Receiver<String>) {
    let mut n: u64 = 0;
    for detail in rx {
        let why = reason(&detail);
        metrics::counter!(names::LINK_REFUSED, names::LABEL_REASON => why).increment(1);
        n += 1;
        // The first ten, then every 100th, so a peer knocking in a loop cannot fill the log.
        if n > 10 && !n.is_multiple_of(100) {
            continue;
        }
        tracing::warn!(
            target: "dataflow::link",
            reason = why,
            refused = n,
            "refused a connection on this machine's TLS endpoint: {detail}; only machines with a certificate \
             signed by the graph's root_ca get in (counted in {}). If it was one of yours, give it a certificate \
             from the same CA: scripts/make-certs --dir <the folder holding ca-key.pem> <its name>",
            names::LINK_REFUSED
        );
    }
}

struct Message(Option<String>);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: Subscriber> Layer<S> for TlsRefusals {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::WARN || !meta.target().starts_with("zenoh_link_tls") {
            return;
        }
        let mut m = Message(None);
        event.record(&mut m);
        let Some(text) = m.0.filter(|t| t.contains(ACCEPT_FAILED)) else {
            return;
        };
        let detail = text
            .split(ACCEPT_FAILED)
            .next()
            .unwrap_or("")
            .trim()
            .trim_end_matches('.');
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(detail.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reason;

    #[test]
    fn reasons_come_from_the_tls_library_words() {
        assert_eq!(reason("peer sent no certificates"), "no_certificate");
        assert_eq!(
            reason("invalid peer certificate: UnknownIssuer"),
            "untrusted_certificate"
        );
        assert_eq!(reason("received corrupt message of type InvalidContentType"), "not_tls");
        assert_eq!(reason("Timeout during TLS handshake"), "handshake_timeout");
        assert_eq!(reason("something else"), "other");
    }
}
