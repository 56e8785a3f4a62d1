//! An SMTP sink for the TLS policy tests (MTA-STS, DANE): accepts every message and, when
//! given a TLS acceptor, offers STARTTLS; records whether each message came over TLS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Default)]
pub struct Sink {
    /// Each message with whether it came over TLS.
    pub messages: Mutex<Vec<(bool, String)>>,
    pub connections: AtomicUsize,
}

/// An SMTP sink that accepts everything; with `acceptor` it offers STARTTLS.
pub async fn start_sink(acceptor: Option<tokio_rustls::TlsAcceptor>) -> (u16, Arc<Sink>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
    let port = listener.local_addr().expect("addr").port();
    let sink = Arc::new(Sink::default());
    let s = sink.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if sock.write_all(b"220 sink ESMTP\r\n").await.is_err() {
                    return;
                }
                let Some(sock) = smtp(sock, acceptor.is_some(), false, &s).await else {
                    return;
                };
                let Some(acceptor) = acceptor else {
                    return;
                };
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                smtp(tls, false, true, &s).await;
            });
        }
    });
    (port, sink)
}

/// Runs SMTP on `stream`; returns it when the client asked for STARTTLS (and it was
/// offered), for the caller to start TLS on.
async fn smtp<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    offer_starttls: bool,
    tls: bool,
    sink: &Sink,
) -> Option<S> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        let cmd = line.to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            if offer_starttls {
                b"250-sink\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
            } else {
                b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
            }
        } else if cmd.starts_with("STARTTLS") && offer_starttls {
            r.get_mut().write_all(b"220 2.0.0 ready\r\n").await.ok()?;
            return Some(r.into_inner());
        } else if cmd.starts_with("DATA") {
            r.get_mut().write_all(b"354 go ahead\r\n").await.ok()?;
            let mut msg = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return None;
                }
                if line == ".\r\n" {
                    break;
                }
                msg.push_str(&line);
            }
            sink.messages.lock().expect("lock").push((tls, msg));
            b"250 2.0.0 queued\r\n"
        } else if cmd.starts_with("QUIT") {
            let _ = r.get_mut().write_all(b"221 bye\r\n").await;
            return None;
        } else {
            b"250 ok\r\n"
        };
        r.get_mut().write_all(reply).await.ok()?;
    }
}
