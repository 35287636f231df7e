//! A minimal HTTP/1.0 GET over `std::net::TcpStream`: enough to scrape an exporter
//! and to query Prometheus on loopback, without an HTTP client dependency. HTTP/1.0
//! with `Connection: close` makes the server send a plain body (no chunking) and close.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::MonitoringError;

/// Splits `http://host:port/path` (or `host:port/path`) into `host:port` and path.
pub(crate) fn split_url(url: &str) -> Result<(String, String), MonitoringError> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.starts_with("https://") || url.starts_with("https://") {
        return Err(http_error(url, "https is not supported; scrape over plain http"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    if authority.is_empty() {
        return Err(http_error(url, "no host:port"));
    }
    Ok((authority.to_owned(), path.to_owned()))
}

/// GETs `path` from `authority` (`host:port`) and returns the body of a 200 answer.
pub(crate) fn get(authority: &str, path: &str, timeout: Duration) -> Result<String, MonitoringError> {
    let url = format!("http://{authority}{path}");
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .map_err(|e| http_error(&url, e))?
        .next()
        .ok_or_else(|| http_error(&url, "host name resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| http_error(&url, e))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| http_error(&url, e))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| http_error(&url, e))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: text/plain, application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| http_error(&url, e))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| http_error(&url, e))?;
    let text = String::from_utf8(raw).map_err(|_| http_error(&url, "the answer is not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| http_error(&url, "no end of headers in the answer"))?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        let excerpt: String = body.chars().take(300).collect();
        return Err(http_error(&url, format!("{status}: {excerpt}")));
    }
    Ok(body.to_owned())
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters kept).
#[cfg_attr(not(feature = "promtest"), allow(dead_code))]
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn http_error(url: &str, reason: impl std::fmt::Display) -> MonitoringError {
    MonitoringError::Http {
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("http://127.0.0.1:9464/metrics").unwrap(),
            ("127.0.0.1:9464".into(), "/metrics".into())
        );
        assert_eq!(
            split_url("127.0.0.1:9464").unwrap(),
            ("127.0.0.1:9464".into(), "/metrics".into())
        );
        assert!(split_url("https://x:1/").is_err());
    }

    #[test]
    fn query_values_encode() {
        assert_eq!(
            encode_query_value("up{job=\"x\"} == 1"),
            "up%7Bjob%3D%22x%22%7D%20%3D%3D%201"
        );
    }
}
