//! ClamAV's `clamd` over its `INSTREAM` protocol (clamd(8), "INSTREAM").
//!
//! Written here rather than taken from a crate: the protocol is one command, length-
//! prefixed chunks and a one-line answer, and the crates that wrap it (`clamav-client`)
//! bring their own runtime choices; this keeps the timeout and the size bound ours.
//!
//! ```text
//! -> "zINSTREAM\0" (u32 BE length, chunk)* (u32 0)
//! <- "stream: OK\0" | "stream: <signature> FOUND\0" | "<reason> ERROR\0"
//! ```

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes sent per chunk (clamd reads chunks of any size up to its `StreamMaxLength`).
const CHUNK: usize = 64 * 1024;
/// The longest answer read back; a real one is a signature name and a word.
const MAX_REPLY: usize = 4096;

/// What clamd said about a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    Clean,
    /// The name of the signature that matched.
    Infected(String),
}

/// Scans `message` with the clamd at `addr`, all of it within `timeout`.
pub async fn scan(addr: SocketAddr, message: &[u8], timeout: Duration) -> Result<Scan, String> {
    tokio::time::timeout(timeout, scan_inner(addr, message))
        .await
        .map_err(|_| format!("clamd at {addr} did not answer within {timeout:?}"))?
}

async fn scan_inner(addr: SocketAddr, message: &[u8]) -> Result<Scan, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to clamd at {addr}: {e}"))?;
    s.write_all(b"zINSTREAM\0")
        .await
        .map_err(|e| format!("clamd: {e}"))?;
    for chunk in message.chunks(CHUNK) {
        s.write_all(&(chunk.len() as u32).to_be_bytes())
            .await
            .map_err(|e| format!("clamd: {e}"))?;
        s.write_all(chunk)
            .await
            .map_err(|e| format!("clamd: {e}"))?;
    }
    s.write_all(&0u32.to_be_bytes())
        .await
        .map_err(|e| format!("clamd: {e}"))?;
    let mut reply = Vec::new();
    (&mut s)
        .take(MAX_REPLY as u64)
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("clamd: {e}"))?;
    parse_reply(&reply)
}

/// Reads clamd's answer to INSTREAM.
pub fn parse_reply(reply: &[u8]) -> Result<Scan, String> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\0', '\n', '\r']).trim();
    let body = text.strip_prefix("stream:").map(str::trim).unwrap_or(text);
    if body == "OK" {
        return Ok(Scan::Clean);
    }
    if let Some(name) = body.strip_suffix(" FOUND") {
        return Ok(Scan::Infected(name.trim().to_string()));
    }
    Err(format!(
        "clamd: {}",
        if body.is_empty() { "no answer" } else { body }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_answers() {
        assert_eq!(parse_reply(b"stream: OK\0"), Ok(Scan::Clean));
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature FOUND\0"),
            Ok(Scan::Infected("Eicar-Test-Signature".into()))
        );
        assert!(parse_reply(b"INSTREAM size limit exceeded. ERROR\0").is_err());
        assert!(parse_reply(b"").is_err());
    }
}
