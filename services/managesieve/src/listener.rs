//! ManageSieve listeners: the shared accept loop ([`mailfleet_core::net::AcceptLoop`]:
//! connection caps, per-address limit, PROXY protocol, implicit TLS, graceful shutdown)
//! with a ManageSieve session for each connection.

use crate::conn::{serve_connection, ConnLimits};
use crate::session::{Session, SessionConfig};
use mailfleet_auth::Authenticator;
use mailfleet_core::net::{AcceptLoop, Accepted};
use mailfleet_core::shutdown::Shutdown;
use mailfleet_storage::Stores;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// Plain TCP (STARTTLS offered when an acceptor is configured) or TLS from the first
/// byte; the one definition, shared with the metrics' `listener` label.
pub use mailfleet_telemetry::ListenerKind;

pub struct Listener {
    pub listener: TcpListener,
    pub kind: ListenerKind,
    pub session: Arc<SessionConfig>,
    pub limits: ConnLimits,
    pub stores: Stores,
    pub auth: Authenticator,
    pub tls: Option<TlsAcceptor>,
    pub max_connections: usize,
    /// The node's per-client-address connection cap, shared by every listener.
    pub per_ip: mailfleet_core::net::PerIpLimit,
    /// `server.proxy_protocol`: PROXY headers from trusted load balancers.
    pub proxy: Option<Arc<mailfleet_core::proxy::ProxyProtocol>>,
    pub shutdown: Shutdown,
    pub grace: Duration,
}

impl Listener {
    /// Accepts until shutdown, then waits up to the grace period for sessions to end.
    pub async fn run(self) {
        let implicit = self.kind == ListenerKind::ImplicitTls;
        let accept = AcceptLoop {
            listener: self.listener,
            implicit_tls: if implicit { self.tls.clone() } else { None },
            tls_handshake_timeout: self.limits.tls_handshake_timeout,
            max_connections: self.max_connections,
            busy_reply: b"BYE (TRYLATER) \"Too many connections, try again later\"\r\n",
            per_ip: self.per_ip.clone(),
            shutdown: self.shutdown.clone(),
            grace: self.grace,
            proxy: self.proxy.clone(),
            metrics: mailfleet_telemetry::metrics()
                .listener(mailfleet_telemetry::Protocol::ManageSieve, self.kind),
        };
        let cfg = self.session;
        let stores = self.stores;
        let auth = self.auth;
        let limits = self.limits;
        let starttls = if implicit { None } else { self.tls };
        let shutdown = self.shutdown;
        accept
            .run(move |a: Accepted| {
                let mut session =
                    Session::new(cfg.clone(), stores.clone(), auth.clone(), a.peer.ip());
                if let Some(desc) = a.tls {
                    session.set_tls(desc);
                }
                let starttls = starttls.clone();
                let shutdown = shutdown.clone();
                let span = tracing::debug_span!(
                    parent: None,
                    "managesieve.session",
                    otel.name = "managesieve session",
                    otel.kind = "server",
                    network.protocol.name = "managesieve",
                    network.peer.address = %a.peer.ip(),
                    network.peer.port = i64::from(a.peer.port()),
                );
                async move {
                    if let Err(e) =
                        serve_connection(a.io, session, limits, starttls, shutdown).await
                    {
                        tracing::debug!(peer = %a.peer, error = %e, "ManageSieve session ended with an I/O error");
                    }
                }
                .instrument(span)
            })
            .await;
    }
}
