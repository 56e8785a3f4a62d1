//! The PROXY protocol (HAProxy's v2 binary header, and v1 text header) in front of a mail
//! listener, so a node behind a TCP load balancer sees the real client address.
//!
//! Parsing is the `ppp` crate's; this module decides how many bytes to read (exactly the
//! header, never a byte of the protocol after it, so an implicit-TLS ClientHello that
//! arrives in the same segment is left for the TLS handshake), bounds them in size and
//! time, and applies the trust model, which is Dovecot's `haproxy_trusted_networks`:
//!
//! - a connection from a trusted network must start with a valid header, within
//!   [`ProxyProtocol::header_timeout`], or it is closed; the client address it carries is
//!   the session's from then on (connection caps, throttling, Received, logs);
//! - a `LOCAL` header (the balancer's own health check) keeps the balancer's address, as
//!   does a `PROXY` header whose family is `UNSPEC` or `AF_UNIX` (the spec says to);
//! - a connection from any other network is served as a direct client; if it starts with
//!   a PROXY header anyway (somebody forging a client address), it is closed and logged by
//!   [`RefuseProxyHeader`] before the session reads a byte of it. (The session's greeting
//!   has gone out by then: mail servers speak first.)

use ipnet::IpNet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest header accepted, address block and TLVs included. Load balancers send 16 to a
/// few hundred bytes (AWS adds a VPC endpoint TLV, HAProxy optional SSL TLVs); the format
/// allows 65 551, which no client gets to make the server buffer.
pub const MAX_HEADER_LEN: usize = 1024;

/// v2 signature: the first 12 bytes of every binary header.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX_LEN: usize = 107;

/// Why a header was not accepted. Each is a reason to close the connection.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    #[error("the connection does not start with a PROXY header")]
    NotProxy,
    #[error("PROXY header of {0} bytes is over the {MAX_HEADER_LEN}-byte limit")]
    TooLarge(usize),
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
}

/// What a valid header says about the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderSource {
    /// `PROXY` over TCP: the client's address and port.
    Client(SocketAddr),
    /// `LOCAL`, or an address family that carries no IP: keep the connection's peer.
    Peer,
}

/// Reads exactly one PROXY header (v2, or v1) from `r`, at most `max_len` bytes, and says
/// whose address the session is to use. Consumes nothing past the header.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
) -> Result<HeaderSource, ProxyError> {
    // 12 bytes are part of every header: the v2 signature, and less than the shortest v1
    // line ("PROXY UNKNOWN\r\n", 15 bytes).
    let mut buf = vec![0u8; V2_SIGNATURE.len()];
    read_exact(r, &mut buf).await?;
    if buf == V2_SIGNATURE {
        buf.resize(16, 0);
        read_exact(r, &mut buf[12..]).await?;
        let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > max_len {
            return Err(ProxyError::TooLarge(len));
        }
        buf.resize(len, 0);
        read_exact(r, &mut buf[16..]).await?;
        return parse_v2(&buf);
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::NotProxy);
    }
    // v1: one byte at a time up to CRLF, so nothing after the line is taken.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX_LEN.min(max_len) {
            return Err(ProxyError::TooLarge(buf.len() + 1));
        }
        let mut b = [0u8; 1];
        read_exact(r, &mut b).await?;
        buf.push(b[0]);
    }
    parse_v1(&buf)
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), ProxyError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ProxyError::Closed),
        Err(e) => Err(ProxyError::Io(e)),
    }
}

fn parse_v2(bytes: &[u8]) -> Result<HeaderSource, ProxyError> {
    use ppp::v2::{Addresses, Command, Header, Protocol};
    let h = Header::try_from(bytes).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    if h.command == Command::Local {
        return Ok(HeaderSource::Peer);
    }
    let stream = h.protocol == Protocol::Stream;
    match h.addresses {
        Addresses::IPv4(a) if stream => Ok(HeaderSource::Client(SocketAddr::new(
            IpAddr::V4(a.source_address),
            a.source_port,
        ))),
        Addresses::IPv6(a) if stream => Ok(HeaderSource::Client(SocketAddr::new(
            IpAddr::V6(a.source_address),
            a.source_port,
        ))),
        Addresses::IPv4(_) | Addresses::IPv6(_) => Err(ProxyError::Invalid(
            "an IP address over a transport other than TCP".into(),
        )),
        Addresses::Unspecified | Addresses::Unix(_) => Ok(HeaderSource::Peer),
    }
}

fn parse_v1(bytes: &[u8]) -> Result<HeaderSource, ProxyError> {
    use ppp::v1::{Addresses, Header};
    let text = std::str::from_utf8(bytes).map_err(|_| ProxyError::Invalid("not ASCII".into()))?;
    let h = Header::try_from(text).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    Ok(match h.addresses {
        Addresses::Tcp4(a) => {
            HeaderSource::Client(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        Addresses::Tcp6(a) => {
            HeaderSource::Client(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        Addresses::Unknown => HeaderSource::Peer,
    })
}

/// The PROXY protocol policy of the node's mail listeners (`server.proxy_protocol`).
#[derive(Clone, Debug)]
pub struct ProxyProtocol {
    trusted: Vec<IpNet>,
    header_timeout: Duration,
}

impl ProxyProtocol {
    pub fn new(trusted: Vec<IpNet>, header_timeout: Duration) -> Self {
        Self {
            trusted,
            header_timeout,
        }
    }

    /// How long a trusted peer has to send the whole header.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// Whether `ip` is a load balancer whose headers are believed (an IPv4-mapped IPv6
    /// peer of a dual-stack socket is matched as the IPv4 address it carries).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Reads the header of a trusted peer's connection within the deadline and returns
    /// the address the session is to use: the carried client's, or `peer` for `LOCAL`.
    pub async fn accept<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyError> {
        match tokio::time::timeout(self.header_timeout, read_header(r, MAX_HEADER_LEN)).await {
            Err(_) => Err(ProxyError::Timeout(self.header_timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(HeaderSource::Peer)) => Ok(peer),
            Ok(Ok(HeaderSource::Client(client))) => Ok(client),
        }
    }
}

/// Parses `proxy_trusted_networks` entries: CIDR (`10.0.0.0/8`, `fd00::/8`) or a single
/// address (`10.0.0.5`, taken as /32 or /128).
pub fn parse_networks(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("`{s}` is not an IPv4 or IPv6 network (CIDR) or address"))
        })
        .collect()
}

/// The starts of a PROXY header: the v2 signature and v1 lines. A direct client of a
/// mail protocol never begins with one of these.
const HEADER_STARTS: [&[u8]; 4] = [
    V2_SIGNATURE,
    b"PROXY TCP4 ",
    b"PROXY TCP6 ",
    b"PROXY UNKNOWN",
];

/// What the first bytes of a connection say so far.
#[derive(Debug, PartialEq, Eq)]
enum Prefix {
    /// They begin a PROXY header.
    Header,
    /// They cannot begin one.
    Other,
    /// Too few yet to tell.
    Undecided,
}

fn classify(seen: &[u8]) -> Prefix {
    if HEADER_STARTS.iter().any(|h| seen.starts_with(h)) {
        Prefix::Header
    } else if HEADER_STARTS.iter().any(|h| h.starts_with(seen)) {
        Prefix::Undecided
    } else {
        Prefix::Other
    }
}

/// Longest of [`HEADER_STARTS`]: enough bytes to tell a header from anything else.
const PREFIX_LEN: usize = 13;

/// A stream from an untrusted peer: passes bytes through, except that a connection whose
/// first bytes are a PROXY header fails with `PermissionDenied` (and is logged) before the
/// session sees any of them, so a forged client address is never believed. The first few
/// bytes are held back only until they can no longer begin a header (for a mail client,
/// after its first byte).
pub struct RefuseProxyHeader<S> {
    inner: S,
    peer: SocketAddr,
    /// The first bytes, held while they may still begin a header; `None` once decided.
    seen: Option<Vec<u8>>,
    /// Held bytes found not to be a header, still to hand to the reader.
    release: Vec<u8>,
}

impl<S> RefuseProxyHeader<S> {
    pub fn new(inner: S, peer: SocketAddr) -> Self {
        Self {
            inner,
            peer,
            seen: Some(Vec::new()),
            release: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RefuseProxyHeader<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.release.is_empty() {
                let n = this.release.len().min(buf.remaining());
                buf.put_slice(&this.release[..n]);
                this.release.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let Some(seen) = this.seen.as_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            let mut chunk = [0u8; PREFIX_LEN];
            let mut rb = ReadBuf::new(&mut chunk[..PREFIX_LEN - seen.len()]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let eof = rb.filled().is_empty();
            seen.extend_from_slice(rb.filled());
            match classify(seen) {
                Prefix::Header => {
                    tracing::warn!(
                        peer = %this.peer,
                        "PROXY header from a peer outside server.proxy_trusted_networks: connection refused"
                    );
                    this.seen = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "PROXY header from an untrusted peer",
                    )));
                }
                Prefix::Undecided if !eof => continue,
                Prefix::Undecided | Prefix::Other => {
                    this.release = this.seen.take().unwrap_or_default();
                    if this.release.is_empty() {
                        // End of stream before any byte.
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RefuseProxyHeader<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A v2 header built by hand (not with ppp's builder, so the test checks the wire
    /// format rather than ppp against itself).
    fn v2(command: u8, fam: u8, addrs: &[u8], tlv: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(fam);
        h.extend_from_slice(&((addrs.len() + tlv.len()) as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(tlv);
        h
    }

    fn v4_addrs() -> Vec<u8> {
        let mut a = vec![203, 0, 113, 7, 10, 0, 0, 1];
        a.extend_from_slice(&40000u16.to_be_bytes());
        a.extend_from_slice(&25u16.to_be_bytes());
        a
    }

    async fn parse(bytes: &[u8]) -> Result<HeaderSource, ProxyError> {
        let mut r = bytes;
        read_header(&mut r, MAX_HEADER_LEN).await
    }

    #[tokio::test]
    async fn v2_ipv4_carries_the_client_and_leaves_the_rest_unread() {
        let mut bytes = v2(1, 0x11, &v4_addrs(), &[]);
        bytes.extend_from_slice(b"EHLO x\r\n");
        let mut r = &bytes[..];
        let got = read_header(&mut r, MAX_HEADER_LEN).await.expect("valid");
        assert_eq!(
            got,
            HeaderSource::Client("203.0.113.7:40000".parse().expect("addr"))
        );
        assert_eq!(r, b"EHLO x\r\n", "bytes after the header are the session's");
    }

    #[tokio::test]
    async fn v2_ipv6_with_tlvs() {
        let src: std::net::Ipv6Addr = "2001:db8::7".parse().expect("ip");
        let dst: std::net::Ipv6Addr = "2001:db8::1".parse().expect("ip");
        let mut a = src.octets().to_vec();
        a.extend_from_slice(&dst.octets());
        a.extend_from_slice(&[0x9c, 0x40, 0, 143]);
        // A NOOP TLV (type 4) of 3 bytes, as a balancer may pad.
        let got = parse(&v2(1, 0x21, &a, &[4, 0, 3, 0, 0, 0])).await;
        assert_eq!(
            got.expect("valid"),
            HeaderSource::Client("[2001:db8::7]:40000".parse().expect("addr"))
        );
    }

    #[tokio::test]
    async fn local_and_unspec_keep_the_peer() {
        assert_eq!(
            parse(&v2(0, 0x00, &[], &[])).await.expect("LOCAL"),
            HeaderSource::Peer
        );
        // LOCAL with addresses still keeps the peer (health checks may fill them in).
        assert_eq!(
            parse(&v2(0, 0x11, &v4_addrs(), &[])).await.expect("LOCAL"),
            HeaderSource::Peer
        );
        assert_eq!(
            parse(&v2(1, 0x00, &[], &[])).await.expect("PROXY UNSPEC"),
            HeaderSource::Peer
        );
    }

    #[tokio::test]
    async fn v1_is_accepted_too() {
        let got = parse(b"PROXY TCP4 198.51.100.9 10.0.0.1 5555 25\r\nEHLO").await;
        assert_eq!(
            got.expect("v1"),
            HeaderSource::Client("198.51.100.9:5555".parse().expect("addr"))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").await.expect("v1 unknown"),
            HeaderSource::Peer
        );
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert!(matches!(
            parse(long.as_bytes()).await,
            Err(ProxyError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn truncated_garbage_oversized_and_invalid_are_errors() {
        let full = v2(1, 0x11, &v4_addrs(), &[]);
        for cut in [5, 12, 15, 20] {
            assert!(
                matches!(parse(&full[..cut]).await, Err(ProxyError::Closed)),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            parse(b"EHLO client.example\r\n").await,
            Err(ProxyError::NotProxy)
        ));
        // A declared length past the limit is refused before any of it is read.
        let mut big = v2(1, 0x11, &v4_addrs(), &[]);
        big[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(matches!(parse(&big).await, Err(ProxyError::TooLarge(2016))));
        // Version 1 in the binary form, and an IPv4 block too short for its family.
        let mut bad_version = full.clone();
        bad_version[12] = 0x11;
        assert!(matches!(
            parse(&bad_version).await,
            Err(ProxyError::Invalid(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3], &[])).await,
            Err(ProxyError::Invalid(_))
        ));
        // UDP source addresses make no sense on a TCP listener.
        assert!(matches!(
            parse(&v2(1, 0x12, &v4_addrs(), &[])).await,
            Err(ProxyError::Invalid(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_header_hits_the_deadline() {
        let p = ProxyProtocol::new(vec![], Duration::from_secs(5));
        let (mut client, mut server) = tokio::io::duplex(64);
        // Half a signature, then nothing: the deadline is for the whole header.
        client.write_all(&V2_SIGNATURE[..6]).await.expect("write");
        let peer: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let started = tokio::time::Instant::now();
        let e = p.accept(&mut server, peer).await.expect_err("deadline");
        assert!(matches!(e, ProxyError::Timeout(_)), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn trusted_networks_match_v4_v6_and_mapped() {
        let nets = parse_networks(&["10.0.0.0/8".into(), "fd00::/8".into(), "192.0.2.5".into()])
            .expect("valid");
        let p = ProxyProtocol::new(nets, Duration::from_secs(5));
        for ip in ["10.1.2.3", "fd12::1", "192.0.2.5", "::ffff:10.9.9.9"] {
            assert!(p.is_trusted(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["11.0.0.1", "fe80::1", "192.0.2.6", "127.0.0.1"] {
            assert!(!p.is_trusted(ip.parse().expect("ip")), "{ip}");
        }
        assert!(parse_networks(&["10.0.0.0/33".into()]).is_err());
        assert!(parse_networks(&["lb.internal".into()]).is_err());
    }

    async fn read_all_through_refuser(chunks: &[&[u8]]) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut r = RefuseProxyHeader::new(server, "127.0.0.2:9".parse().expect("addr"));
        for c in chunks {
            client.write_all(c).await.expect("write");
            // One read per chunk, as a session reading lines would.
            tokio::task::yield_now().await;
        }
        drop(client);
        let mut out = Vec::new();
        let mut buf = [0u8; 4];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn untrusted_header_is_refused_and_other_bytes_pass() {
        let header = v2(1, 0x11, &v4_addrs(), &[]);
        let e = read_all_through_refuser(&[&header])
            .await
            .expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let e = read_all_through_refuser(&[b"PROXY TCP4 203.0.113.7 10.0.0.1 1 25\r\n"])
            .await
            .expect_err("v1 refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        // Ordinary commands, including an IMAP tag that happens to be "PROXY" and a blank
        // line, pass untouched.
        for input in [
            &b"EHLO client.example\r\nQUIT\r\n"[..],
            b"PROXY LOGIN a b\r\n",
            b"\r\nHELO x\r\n",
        ] {
            assert_eq!(
                read_all_through_refuser(&[input]).await.expect("passes"),
                input
            );
        }
    }
}
