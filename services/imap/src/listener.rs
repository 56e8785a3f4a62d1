//! IMAP listeners: the shared accept loop ([`mailfleet_core::net::AcceptLoop`]) with an
//! IMAP session for each connection.

use crate::conn::{serve_connection, ConnLimits};
use crate::session::{ImapConfig, LoginService, Session};
use mailfleet_core::net::{AcceptLoop, Accepted};
use mailfleet_core::shutdown::Shutdown;
use mailfleet_storage::Stores;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

pub struct Listener {
    pub listener: TcpListener,
    /// Implicit TLS (port 993 style) when true; STARTTLS otherwise.
    pub implicit_tls: bool,
    pub tls: Option<TlsAcceptor>,
    pub config: Arc<ImapConfig>,
    pub limits: ConnLimits,
    pub stores: Stores,
    pub login: Arc<dyn LoginService>,
    pub max_connections: usize,
    /// The node's per-client-address connection cap, shared by every listener.
    pub per_ip: mailfleet_core::net::PerIpLimit,
    /// `server.proxy_protocol`: PROXY headers from trusted load balancers.
    pub proxy: Option<Arc<mailfleet_core::proxy::ProxyProtocol>>,
    pub shutdown: Shutdown,
    pub grace: Duration,
}

impl Listener {
    pub async fn run(self) {
        let accept = AcceptLoop {
            listener: self.listener,
            implicit_tls: if self.implicit_tls {
                self.tls.clone()
            } else {
                None
            },
            tls_handshake_timeout: self.limits.tls_handshake_timeout,
            max_connections: self.max_connections,
            busy_reply: b"* BYE Too many connections, try again later\r\n",
            per_ip: self.per_ip.clone(),
            shutdown: self.shutdown.clone(),
            grace: self.grace,
            proxy: self.proxy.clone(),
            metrics: mailfleet_telemetry::metrics().listener(
                mailfleet_telemetry::Protocol::Imap,
                mailfleet_telemetry::ListenerKind::from_implicit_tls(self.implicit_tls),
            ),
        };
        let starttls = if self.implicit_tls { None } else { self.tls };
        let (config, limits, stores, login, shutdown) = (
            self.config,
            self.limits,
            self.stores,
            self.login,
            self.shutdown,
        );
        accept
            .run(move |a: Accepted| {
                let session = Session::new(
                    config.clone(),
                    stores.clone(),
                    login.clone(),
                    a.peer.ip(),
                    a.tls.is_some(),
                );
                let starttls = starttls.clone();
                let shutdown = shutdown.clone();
                let span = tracing::debug_span!(
                    parent: None,
                    "imap.session",
                    otel.name = "imap session",
                    otel.kind = "server",
                    network.protocol.name = "imap",
                    network.peer.address = %a.peer.ip(),
                    network.peer.port = i64::from(a.peer.port()),
                );
                async move {
                    if let Err(e) = serve_connection(a.io, session, limits, starttls, shutdown).await {
                        tracing::debug!(peer = %a.peer, error = %e, "IMAP session ended with an I/O error");
                    }
                }
                .instrument(span)
            })
            .await;
    }
}
