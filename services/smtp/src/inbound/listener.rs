//! Accepting connections: a connection cap, implicit TLS, graceful shutdown.
//!
//! As in mini-redis: a semaphore caps concurrent sessions, accept errors back off instead of
//! spinning, every session holds a clone of a completion sender so the listener knows when
//! the last one has finished, and shutdown stops accepting at once, then gives open
//! sessions a grace period.

use super::conn::{serve_connection, ConnLimits, Io};
use super::session::{Session, SessionConfig};
use crate::pipeline::Pipeline;
use crate::proto::Reply;
use mailfleet_core::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain TCP; STARTTLS offered when an acceptor is configured.
    Plain,
    /// TLS from the first byte (RFC 8314).
    ImplicitTls,
}

pub struct Listener {
    pub listener: TcpListener,
    pub kind: ListenerKind,
    pub session: Arc<SessionConfig>,
    pub limits: ConnLimits,
    pub pipeline: Pipeline,
    pub tls: Option<TlsAcceptor>,
    pub max_connections: usize,
    pub shutdown: Shutdown,
    pub grace: Duration,
}

impl Listener {
    /// Accepts until shutdown, then waits up to the grace period for sessions to end.
    pub async fn run(self) {
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
                // Over the cap: answer and hang up rather than queue without bound.
                tokio::spawn(async move {
                    let _ = stream
                        .write_all(
                            Reply::new(421, "4.7.0", "Too many connections, try again later")
                                .to_wire()
                                .as_bytes(),
                        )
                        .await;
                });
                continue;
            };
            let session = Session::new(self.session.clone(), self.pipeline.clone(), peer.ip());
            let limits = self.limits;
            let tls = self.tls.clone();
            let kind = self.kind;
            let sd = self.shutdown.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _done = done;
                let span = tracing::info_span!("smtp", %peer);
                let _enter = span.enter();
                drop(_enter);
                let result = match (kind, tls) {
                    (ListenerKind::ImplicitTls, Some(acceptor)) => {
                        match tokio::time::timeout(
                            limits.tls_handshake_timeout,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(tls_stream)) => {
                                let mut session = session;
                                session.set_tls(super::conn::describe_tls(tls_stream.get_ref().1));
                                let io: Box<dyn Io> = Box::new(tls_stream);
                                serve_connection(io, session, limits, None, sd).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => Ok(()),
                        }
                    }
                    (ListenerKind::ImplicitTls, None) => Ok(()),
                    (ListenerKind::Plain, tls) => {
                        serve_connection(Box::new(stream), session, limits, tls, sd).await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "session ended with an I/O error");
                }
            });
        }
        drop(done_tx);
        if tokio::time::timeout(self.grace, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; remaining SMTP sessions are dropped");
        }
    }
}
