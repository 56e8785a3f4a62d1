//! The network edge shared by every protocol: the byte-stream type, TLS descriptions and
//! the accept loop.
//!
//! As in mini-redis: a semaphore caps concurrent sessions (over the cap, the protocol's own
//! "too busy" line is written and the socket closed rather than queued), accept errors back
//! off instead of spinning, every session holds a clone of a completion sender so the
//! listener knows when the last one has finished, and shutdown stops accepting at once,
//! then gives open sessions a grace period.
//!
//! With `server.proxy_protocol`, a connection from a trusted load balancer is counted
//! against the per-address cap only once its PROXY header ([`crate::proxy`]) has named the
//! client, and under that client; the header is read in the connection's own task, so a
//! slow balancer never holds up the accept loop.

use crate::proxy::{ProxyError, ProxyProtocol, RefuseProxyHeader};
use crate::shutdown::Shutdown;
use mailfleet_telemetry::{ListenerMetrics, Protocol, RefuseReason, TlsOutcome};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
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

/// The metrics outcome of a completed handshake: its negotiated version.
fn tls_outcome(conn: &ServerConnection) -> TlsOutcome {
    match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => TlsOutcome::Tls13,
        Some(ProtocolVersion::TLSv1_2) => TlsOutcome::Tls12,
        _ => TlsOutcome::OtherVersion,
    }
}

/// Performs a server-side TLS handshake on `io` within `timeout`; returns the TLS stream
/// and its description, or `None` when the handshake failed or timed out. Every
/// handshake is counted under `protocol` (`mailfleet_tls_handshakes_total`).
pub async fn tls_handshake(
    acceptor: &TlsAcceptor,
    io: Box<dyn Io>,
    timeout: Duration,
    protocol: Protocol,
) -> Option<(Box<dyn Io>, String)> {
    let metrics = mailfleet_telemetry::metrics();
    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => {
            let conn = stream.get_ref().1;
            metrics.tls_handshake(protocol, tls_outcome(conn));
            let desc = describe_tls(conn);
            Some((Box::new(stream), desc))
        }
        Ok(Err(e)) => {
            metrics.tls_handshake(protocol, TlsOutcome::Failed);
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics.tls_handshake(protocol, TlsOutcome::TimedOut);
            None
        }
    }
}

/// A stand-in stream, used while the real one is moved into a TLS handshake.
pub fn placeholder_io() -> Box<dyn Io> {
    Box::new(tokio::io::duplex(1).0)
}

/// The per-client-address connection cap shared by every listener of a node, as Postfix's
/// anvil(8) counts `smtpd_client_connection_count_limit`: one client cannot take all the
/// connection slots of a listener (and, with them, the service) from everybody else.
///
/// IPv4 clients count by address, IPv6 clients by their /64 (one host commonly holds a
/// whole /64, so counting single addresses would be no limit at all). Cheap to clone; the
/// count of an address is released when its [`PerIpGuard`] drops.
#[derive(Clone, Debug)]
pub struct PerIpLimit {
    /// 0 = no limit.
    max: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One counted connection; dropping it releases the count.
#[derive(Debug)]
pub struct PerIpGuard {
    key: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIpLimit {
    /// At most `max` simultaneous connections per client address (0: unlimited).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::default(),
        }
    }

    /// The address a client counts under: itself for IPv4, its /64 for IPv6 (IPv4-mapped
    /// IPv6 addresses count as the IPv4 address they carry).
    pub fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
        }
    }

    /// Counts a connection from `ip`, or `None` when the address already has the maximum.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<PerIpGuard> {
        let key = Self::key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PerIpGuard {
            key,
            counts: self.counts.clone(),
        })
    }

    /// Connections counted for `ip` now (for tests and diagnostics).
    pub fn current(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&Self::key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// How long a refusal line may take to write before the socket is simply dropped.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything about a listener that is not the protocol.
pub struct AcceptLoop {
    pub listener: TcpListener,
    /// `Some` for implicit-TLS listeners: the handshake happens before the session starts.
    pub implicit_tls: Option<TlsAcceptor>,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    /// Written to a connection refused because of the cap (e.g. `421 4.7.0 ...\r\n`).
    pub busy_reply: &'static [u8],
    /// Connections per client address, shared with the node's other listeners.
    pub per_ip: PerIpLimit,
    pub shutdown: Shutdown,
    pub grace: Duration,
    /// `Some` when `server.proxy_protocol` is on: trusted peers must send a PROXY header
    /// (read before TLS and before the greeting), others must not.
    pub proxy: Option<Arc<ProxyProtocol>>,
    /// This listener's connection series (`mailfleet_connections_*`), resolved once.
    pub metrics: ListenerMetrics,
}

/// A new connection handed to the protocol: the stream, the client, and the TLS
/// description when the listener is implicit-TLS.
pub struct Accepted {
    pub io: Box<dyn Io>,
    /// The client: the address a trusted load balancer's PROXY header carried, else the
    /// TCP peer. Every limit, log line and trace header uses this one.
    pub peer: SocketAddr,
    /// The load balancer the connection came through, when it sent a PROXY header.
    pub proxied_by: Option<SocketAddr>,
    pub tls: Option<String>,
}

/// Reads the PROXY header of a trusted balancer's connection and counts the connection
/// under the client it names. `None` when the connection is to be dropped: no valid
/// header in time (logged), or the client is over its per-address cap (told so, with the
/// protocol's busy line, as a direct client would be).
async fn proxied_client(
    proxy: &ProxyProtocol,
    stream: &mut tokio::net::TcpStream,
    balancer: SocketAddr,
    per_ip: &PerIpLimit,
    busy: &'static [u8],
    metrics: &ListenerMetrics,
) -> Option<(SocketAddr, PerIpGuard)> {
    let client = match proxy.accept(stream, balancer).await {
        Ok(client) => client,
        // A balancer's plain TCP health check connects and closes without a header.
        Err(e @ ProxyError::Closed) => {
            tracing::debug!(peer = %balancer, error = %e, "connection from a trusted proxy closed");
            return None;
        }
        Err(e) => {
            tracing::warn!(peer = %balancer, error = %e, "connection from a trusted proxy closed: no valid PROXY header");
            return None;
        }
    };
    if client != balancer {
        tracing::info!(client = %client, proxy = %balancer, "PROXY header accepted");
    }
    let Some(guard) = per_ip.try_acquire(client.ip()) else {
        metrics.refused(RefuseReason::PerIp);
        tracing::info!(peer = %client, proxy = %balancer, "connection refused: too many from this address");
        let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, stream.write_all(busy)).await;
        return None;
    };
    Some((client, guard))
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
            let (stream, peer) = match accepted {
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
            let refuse = |mut stream: tokio::net::TcpStream, busy: &'static [u8]| {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, stream.write_all(busy)).await;
                });
            };
            // A trusted load balancer's connection is counted under the client address its
            // header carries, once read; every other connection under its own peer now.
            let from_proxy = self
                .proxy
                .as_ref()
                .filter(|p| p.is_trusted(peer.ip()))
                .cloned();
            let early_guard = if from_proxy.is_some() {
                None
            } else {
                let Some(g) = self.per_ip.try_acquire(peer.ip()) else {
                    self.metrics.refused(RefuseReason::PerIp);
                    tracing::info!(peer = %peer, "connection refused: too many from this address");
                    refuse(stream, self.busy_reply);
                    continue;
                };
                Some(g)
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                self.metrics.refused(RefuseReason::MaxConnections);
                refuse(stream, self.busy_reply);
                continue;
            };
            let session = session.clone();
            let done = done_tx.clone();
            let tls = self.implicit_tls.clone();
            let handshake_timeout = self.tls_handshake_timeout;
            let refuse_headers = self.proxy.is_some() && from_proxy.is_none();
            let per_ip = self.per_ip.clone();
            let busy = self.busy_reply;
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _done = done;
                let mut stream = stream;
                let (peer, proxied_by, _ip_guard) = match (from_proxy, early_guard) {
                    (Some(proxy), _) => {
                        let Some((client, guard)) =
                            proxied_client(&proxy, &mut stream, peer, &per_ip, busy, &metrics)
                                .await
                        else {
                            return;
                        };
                        (client, Some(peer), guard)
                    }
                    (None, Some(guard)) => (peer, None, guard),
                    (None, None) => return,
                };
                // Counted from here (the client is known and admitted) until the session
                // ends, TLS handshake included.
                let _active = metrics.opened();
                let io: Box<dyn Io> = if refuse_headers {
                    Box::new(RefuseProxyHeader::new(stream, peer))
                } else {
                    Box::new(stream)
                };
                let accepted = match tls {
                    Some(acceptor) => {
                        match tls_handshake(&acceptor, io, handshake_timeout, metrics.protocol())
                            .await
                        {
                            Some((io, desc)) => Accepted {
                                io,
                                peer,
                                proxied_by,
                                tls: Some(desc),
                            },
                            None => return,
                        }
                    }
                    None => Accepted {
                        io,
                        peer,
                        proxied_by,
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        assert_eq!(PerIpLimit::key(a), PerIpLimit::key(b));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            PerIpLimit::key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
        let limit = PerIpLimit::new(1);
        let g = limit.try_acquire(a).expect("first");
        assert!(limit.try_acquire(b).is_none(), "same /64");
        drop(g);
        assert!(limit.try_acquire(b).is_some(), "released on drop");
        assert!(PerIpLimit::new(0).try_acquire(a).is_some(), "0 = unlimited");
    }

    /// Issue 9 item 10: one address could take every connection slot of a listener.
    /// Past the per-address cap a connection gets the protocol's busy line and is closed,
    /// while another address still gets in.
    #[tokio::test]
    async fn accept_loop_refuses_past_the_per_address_cap() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_trigger, shutdown) = crate::shutdown::ShutdownController::new();
        let per_ip = PerIpLimit::new(3);
        let accept = AcceptLoop {
            listener,
            implicit_tls: None,
            tls_handshake_timeout: Duration::from_secs(5),
            max_connections: 100,
            busy_reply: b"BUSY\r\n",
            per_ip: per_ip.clone(),
            shutdown,
            grace: Duration::from_secs(1),
            proxy: None,
            // Series no other test of this binary touches, so the counts below are exact.
            metrics: mailfleet_telemetry::metrics().listener(
                Protocol::Submission,
                mailfleet_telemetry::ListenerKind::ImplicitTls,
            ),
        };
        tokio::spawn(accept.run(|mut a: Accepted| async move {
            let _ = a.io.write_all(b"HELLO\r\n").await;
            // Hold the connection until the client closes it.
            let mut b = [0u8; 1];
            let _ = a.io.read(&mut b).await;
        }));
        async fn greet(src: &str, dst: SocketAddr) -> String {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind(format!("{src}:0").parse().expect("src"))
                .expect("bind");
            let mut s = sock.connect(dst).await.expect("connect");
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).await.expect("read");
            // Keep the socket open by leaking it into a task that waits.
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                let _ = s.read(&mut b).await;
            });
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
        for _ in 0..3 {
            assert_eq!(greet("127.0.0.1", addr).await, "HELLO\r\n");
        }
        assert_eq!(
            greet("127.0.0.1", addr).await,
            "BUSY\r\n",
            "fourth from one address"
        );
        assert_eq!(
            greet("127.0.0.2", addr).await,
            "HELLO\r\n",
            "another address gets in"
        );
        assert_eq!(per_ip.current("127.0.0.1".parse().expect("ip")), 3);
        let text = mailfleet_telemetry::metrics().render().expect("render");
        for line in [
            r#"mailfleet_connections_refused_total{listener="implicit_tls",protocol="submission",reason="per_ip"} 1"#,
            r#"mailfleet_connections_total{listener="implicit_tls",protocol="submission"} 4"#,
            r#"mailfleet_connections_active{listener="implicit_tls",protocol="submission"} 4"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
    /// A v2 PROXY header for a TCP/IPv4 client, built by hand.
    fn v2_header(command: u8, client: [u8; 4], port: u16) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x20 | command, 0x11, 0, 12]);
        h.extend_from_slice(&client);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&25u16.to_be_bytes());
        h
    }

    /// PROXY protocol over real loopback TCP, with only 127.0.0.1 trusted: the carried
    /// client is the session's peer and is what the per-address cap counts (the
    /// balancer's own address is not); LOCAL keeps the balancer; a trusted peer without a
    /// header is closed before the greeting; an untrusted peer is served, unless it sends
    /// a header, which closes it before the session reads anything.
    #[tokio::test]
    async fn accept_loop_takes_the_client_from_a_trusted_proxy_header() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_trigger, shutdown) = crate::shutdown::ShutdownController::new();
        let per_ip = PerIpLimit::new(1);
        let trusted = crate::proxy::parse_networks(&["127.0.0.1/32".into()]).expect("nets");
        let accept = AcceptLoop {
            listener,
            implicit_tls: None,
            tls_handshake_timeout: Duration::from_secs(5),
            max_connections: 100,
            busy_reply: b"BUSY\r\n",
            per_ip: per_ip.clone(),
            shutdown,
            grace: Duration::from_secs(1),
            proxy: Some(Arc::new(ProxyProtocol::new(
                trusted,
                Duration::from_secs(2),
            ))),
            metrics: mailfleet_telemetry::metrics()
                .listener(Protocol::Smtp, mailfleet_telemetry::ListenerKind::Plain),
        };
        tokio::spawn(accept.run(|mut a: Accepted| async move {
            let via = a.proxied_by.map(|p| p.ip().to_string()).unwrap_or_default();
            let hello = format!("HELLO {} via {via}\r\n", a.peer);
            let _ = a.io.write_all(hello.as_bytes()).await;
            let mut b = [0u8; 64];
            if let Ok(n @ 1..) = a.io.read(&mut b).await {
                let _ = a.io.write_all(format!("GOT {n}\r\n").as_bytes()).await;
                let _ = a.io.read(&mut b).await;
            }
        }));
        /// Connects from `src`, sends `first`, and returns what the server says before
        /// it closes or goes quiet for 300 ms; the socket stays open in a task.
        async fn talk(src: &str, dst: SocketAddr, first: &[u8]) -> String {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind(format!("{src}:0").parse().expect("src"))
                .expect("bind");
            let mut s = sock.connect(dst).await.expect("connect");
            s.write_all(first).await.expect("send");
            let mut out = Vec::new();
            let mut buf = [0u8; 128];
            while let Ok(Ok(n @ 1..)) =
                tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
            {
                out.extend_from_slice(&buf[..n]);
            }
            tokio::spawn(async move {
                let _ = s.read(&mut buf).await;
            });
            String::from_utf8_lossy(&out).into_owned()
        }
        let mut first = v2_header(1, [203, 0, 113, 7], 40000);
        first.extend_from_slice(b"EHLO\r\n");
        assert_eq!(
            talk("127.0.0.1", addr, &first).await,
            "HELLO 203.0.113.7:40000 via 127.0.0.1\r\nGOT 6\r\n",
            "the carried client, and the bytes after the header are the session's"
        );
        assert_eq!(per_ip.current("203.0.113.7".parse().expect("ip")), 1);
        assert_eq!(per_ip.current("127.0.0.1".parse().expect("ip")), 0);
        // The cap is 1 per client: the same carried client again is busy, another is not.
        assert_eq!(
            talk("127.0.0.1", addr, &v2_header(1, [203, 0, 113, 7], 40001)).await,
            "BUSY\r\n"
        );
        assert_eq!(
            talk("127.0.0.1", addr, &v2_header(1, [198, 51, 100, 9], 40002)).await,
            "HELLO 198.51.100.9:40002 via 127.0.0.1\r\n"
        );
        // LOCAL (a health check): the balancer's own address.
        let local = talk("127.0.0.1", addr, &v2_header(0, [0, 0, 0, 0], 0)).await;
        assert!(local.starts_with("HELLO 127.0.0.1:"), "{local}");
        // A trusted peer that does not send a header gets nothing and is closed.
        assert_eq!(talk("127.0.0.1", addr, b"EHLO x\r\n").await, "");
        // An untrusted peer is a direct client...
        let direct = talk("127.0.0.2", addr, b"EHLO\r\n").await;
        assert!(
            direct.starts_with("HELLO 127.0.0.2:") && direct.ends_with("GOT 6\r\n"),
            "{direct}"
        );
        // ...until it sends a header: then the session's read fails, nothing is echoed.
        let forged = talk("127.0.0.3", addr, &v2_header(1, [203, 0, 113, 8], 1)).await;
        assert!(
            forged.starts_with("HELLO 127.0.0.3:") && !forged.contains("GOT"),
            "{forged}"
        );
        assert_eq!(per_ip.current("203.0.113.8".parse().expect("ip")), 0);
    }
}
