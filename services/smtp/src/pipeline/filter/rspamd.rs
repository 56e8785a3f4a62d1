//! rspamd's scan protocol: `POST /checkv2` with the message as the body and the envelope
//! in request headers, a JSON verdict back (rspamd's "protocol" documentation).
//!
//! One HTTP/1.1 request per message over hyper's connection API: rspamd's normal worker
//! answers quickly and a connection per scan keeps a stuck worker from holding others.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;

/// The largest verdict read back (symbols with their options can run to some KiB).
const MAX_REPLY: usize = 1024 * 1024;

/// The envelope rspamd scores with the message.
#[derive(Clone, Debug, Default)]
pub struct ScanRequest<'a> {
    pub ip: Option<IpAddr>,
    pub helo: &'a str,
    pub mail_from: &'a str,
    pub recipients: Vec<String>,
    pub queue_id: &'a str,
    pub hostname: &'a str,
}

/// rspamd's verdict: what its `actions` configuration chose, and why.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Verdict {
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub score: f64,
    #[serde(default)]
    pub required_score: f64,
    #[serde(default)]
    pub is_skipped: bool,
    #[serde(default)]
    pub symbols: BTreeMap<String, Symbol>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Symbol {
    #[serde(default)]
    pub score: f64,
}

impl Verdict {
    /// `SYMBOL(score)` pairs, highest score first, for the `X-Spam-Symbols` header.
    pub fn symbol_list(&self) -> String {
        let mut v: Vec<(&String, f64)> = self.symbols.iter().map(|(k, s)| (k, s.score)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        v.iter()
            .map(|(k, s)| format!("{k}({s:.2})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Scans `message` with the rspamd normal worker at `addr`, within `timeout`.
pub async fn check(
    addr: SocketAddr,
    req: &ScanRequest<'_>,
    message: Bytes,
    timeout: Duration,
) -> Result<Verdict, String> {
    tokio::time::timeout(timeout, check_inner(addr, req, message))
        .await
        .map_err(|_| format!("rspamd at {addr} did not answer within {timeout:?}"))?
}

async fn check_inner(
    addr: SocketAddr,
    req: &ScanRequest<'_>,
    message: Bytes,
) -> Result<Verdict, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to rspamd at {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("rspamd HTTP: {e}"))?;
    // hyper drives the connection in its own future; it ends with the request.
    let driver = tokio::spawn(conn);
    let result = async {
        let mut b = http::Request::post("/checkv2")
            .header(http::header::HOST, addr.to_string())
            .header("Queue-Id", header_value(req.queue_id))
            .header("Helo", header_value(req.helo))
            .header("From", header_value(req.mail_from))
            .header("Hostname", header_value(req.hostname));
        if let Some(ip) = req.ip {
            b = b.header("IP", ip.to_string());
        }
        for r in &req.recipients {
            b = b.header("Rcpt", header_value(r));
        }
        let request = b
            .body(Full::new(message))
            .map_err(|e| format!("rspamd request: {e}"))?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| format!("rspamd HTTP: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("rspamd answered HTTP {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| format!("rspamd body: {e}"))?
            .to_bytes();
        parse(&body)
    }
    .await;
    driver.abort();
    result
}

/// Reads rspamd's JSON verdict.
pub fn parse(body: &[u8]) -> Result<Verdict, String> {
    serde_json::from_slice(body).map_err(|e| format!("rspamd verdict does not parse: {e}"))
}

/// A value fit for an HTTP header: printable ASCII only (a HELO name is the client's).
fn header_value(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(512)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_and_its_symbols() {
        let v = parse(
            br#"{"is_skipped":false,"score":1003.5,"required_score":15.0,"action":"reject",
                "symbols":{"GTUBE":{"name":"GTUBE","score":1000.0},"MISSING_DATE":{"name":"MISSING_DATE","score":1.0},
                "ARC_NA":{"name":"ARC_NA","score":0.0}},"messages":{"smtp_message":"Gtube pattern"}}"#,
        )
        .expect("parses");
        assert_eq!(v.action, "reject");
        assert_eq!(
            v.symbol_list(),
            "GTUBE(1000.00), MISSING_DATE(1.00), ARC_NA(0.00)"
        );
        assert!(parse(b"<html>").is_err());
        assert_eq!(header_value("a\r\nInjected: x"), "aInjected: x");
    }
}
