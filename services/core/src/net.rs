//! The network edge shared by every protocol: the byte-stream type, TLS descriptions and
//! the accept loop.
//!
//! As in mini-redis: a semaphore caps concurrent sessions (over the cap, the protocol's own
//! "too busy" line is written and the socket closed rather than queued), accept errors back
//! off instead of spinning, every session holds a clone of a completion sender so the
//! listener knows when the last one has finished, and shutdown stops accepting at once,
//! then gives open sessions a grace period.

use crate::shutdown::Shutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::{ProtocolVersion, ServerConnection};
use tokio_rustls::TlsAcceptor;

/// Any byte stream a session can run on (TCP, TLS over TCP, an in-memory pipe).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// `TLS1.3 with cipher TLS13_AES_256_GCM_SHA384`, for logs and trace headers.
pub fn describe_tls(conn: &ServerConnection) -> String {
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLS1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLS1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    match conn.negotiated_cipher_suite() {
        Some(s) => format!("{version} with cipher {:?}", s.suite()),
        None => version,
    }
}

/// Performs a server-side TLS handshake on `io` within `timeout`; returns the TLS stream
/// and its description, or `None` when the handshake failed or timed out.
pub async fn tls_handshake(
    acceptor: &TlsAcceptor,
    io: Box<dyn Io>,
    timeout: Duration,
) -> Option<(Box<dyn Io>, String)> {
    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => {
            let desc = describe_tls(stream.get_ref().1);
            Some((Box::new(stream), desc))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// A stand-in stream, used while the real one is moved into a TLS handshake.
pub fn placeholder_io() -> Box<dyn Io> {
    Box::new(tokio::io::duplex(1).0)
}

/// Everything about a listener that is not the protocol.
pub struct AcceptLoop {
    pub listener: TcpListener,
    /// `Some` for implicit-TLS listeners: the handshake happens before the session starts.
    pub implicit_tls: Option<TlsAcceptor>,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    /// Written to a connection refused because of the cap (e.g. `421 4.7.0 ...\r\n`).
    pub busy_reply: &'static [u8],
    pub shutdown: Shutdown,
    pub grace: Duration,
}

/// A new connection handed to the protocol: the stream, the peer, and the TLS description
/// when the listener is implicit-TLS.
pub struct Accepted {
    pub io: Box<dyn Io>,
    pub peer: SocketAddr,
    pub tls: Option<String>,
}

impl AcceptLoop {
    /// Accepts until shutdown, runs `session` for each connection, then waits up to the
    /// grace period for sessions to end.
    pub async fn run<F, Fut>(self, session: F)
    where
        F: Fn(Accepted) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let session = Arc::new(session);
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let mut shutdown = self.shutdown.clone();
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.wait() => break,
            };
            let (mut stream, peer) = match accepted {
                Ok(x) => {
                    backoff = Duration::from_millis(10);
                    x
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                let busy = self.busy_reply;
                tokio::spawn(async move {
                    let _ = stream.write_all(busy).await;
                });
                continue;
            };
            let session = session.clone();
            let done = done_tx.clone();
            let tls = self.implicit_tls.clone();
            let handshake_timeout = self.tls_handshake_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let _done = done;
                let io: Box<dyn Io> = Box::new(stream);
                let accepted = match tls {
                    Some(acceptor) => match tls_handshake(&acceptor, io, handshake_timeout).await {
                        Some((io, desc)) => Accepted {
                            io,
                            peer,
                            tls: Some(desc),
                        },
                        None => return,
                    },
                    None => Accepted {
                        io,
                        peer,
                        tls: None,
                    },
                };
                session(accepted).await;
            });
        }
        drop(done_tx);
        if tokio::time::timeout(self.grace, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; remaining sessions are dropped");
        }
    }
}
