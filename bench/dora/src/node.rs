//! One dora node binary for the 8-hop chain: `chain-node source | fwd | sink`.
//!
//! - `source`: sends `N` messages of `BYTES` bytes on output `out`, flat out (or `RATE`
//!   msg/s), each with its birth time (ns since the Unix epoch) in the metadata parameter
//!   `born`. The payload is written into a fresh dora sample per message without touching
//!   its bytes (`send_output_raw` with an empty fill): dora has no way to send one buffer
//!   twice, so this is the cheapest dora source, as `fakesrc filltype=nothing` is in
//!   GStreamer.
//! - `fwd`: sends every input it receives on `out`, unchanged, with its parameters (a
//!   dora pass-through: `send_output` of the received array encodes it into a new sample,
//!   i.e. one payload copy per hop).
//! - `sink`: records each message's age (now − `born`) and, once `N` messages arrived or
//!   its event stream ended, writes `rate=<msg/s> p50_us=<hop> p99_us=<hop> received=<n>
//!   sent=<N> bytes=<len>` to the file `RESULT` (rate = received ÷ (last arrival − birth of
//!   the first message), hop latency = age ÷ `HOPS`).
//!
//! The nodes are separate processes, so ages use the wall clock (`SystemTime`), which all
//! processes on the machine share.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dora_node_api::dora_core::config::DataId;
use dora_node_api::{DoraNode, Event, MetadataParameters, Parameter};

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> eyre::Result<()> {
    let role = std::env::args().nth(1).unwrap_or_default();
    let n = env_num("N", 1000.0) as usize;
    let (mut node, mut events) = DoraNode::init_from_env()?;
    let out = DataId::from("out".to_owned());
    match role.as_str() {
        "source" => {
            let bytes = env_num("BYTES", 1024.0) as usize;
            let rate = env_num("RATE", 0.0);
            let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
            let mut next_at = std::time::Instant::now();
            for _ in 0..n {
                if let Some(p) = period {
                    let now = std::time::Instant::now();
                    if next_at > now {
                        std::thread::sleep(next_at - now);
                    }
                    next_at += p;
                }
                let mut params = MetadataParameters::default();
                params.insert("born".to_owned(), Parameter::Integer(now_ns()));
                node.send_output_raw(out.clone(), params, bytes, |_| {})?;
            }
        }
        "fwd" => {
            while let Some(event) = events.recv() {
                match event {
                    Event::Input { metadata, data, .. } => {
                        node.send_output(out.clone(), metadata.parameters, data)?;
                    }
                    // Not `InputClosed`: dora may deliver it ahead of inputs still
                    // queued; the stream ends (`None`) once everything is delivered.
                    Event::Stop(_) => break,
                    _ => {}
                }
            }
        }
        "sink" => {
            let hops = env_num("HOPS", 9.0);
            let mut ages: Vec<i64> = Vec::with_capacity(n);
            let (mut first_born, mut last, mut len) = (None, 0i64, 0usize);
            while let Some(event) = events.recv() {
                match event {
                    Event::Input { metadata, data, .. } => {
                        let t = now_ns();
                        let born = match metadata.parameters.get("born") {
                            Some(Parameter::Integer(b)) => *b,
                            _ => eyre::bail!("message without `born`"),
                        };
                        ages.push(t - born);
                        first_born.get_or_insert(born);
                        last = t;
                        len = data.len();
                        if ages.len() == n {
                            break;
                        }
                    }
                    Event::Stop(_) => break,
                    _ => {}
                }
            }
            ages.sort_unstable();
            let pct = |q: f64| {
                ages.get(((ages.len().max(1) - 1) as f64 * q).round() as usize)
                    .map_or(f64::NAN, |&a| a as f64 / 1e3 / hops)
            };
            let secs = (last - first_born.unwrap_or(last)) as f64 / 1e9;
            let line = format!(
                "rate={:.0} p50_us={:.1} p99_us={:.1} received={} sent={n} bytes={len}\n",
                ages.len() as f64 / secs,
                pct(0.50),
                pct(0.99),
                ages.len()
            );
            let path = std::env::var("RESULT").unwrap_or_else(|_| "/dev/stdout".into());
            std::fs::write(path, line)?;
        }
        other => eyre::bail!("role {other:?}: expected source, fwd or sink"),
    }
    Ok(())
}
