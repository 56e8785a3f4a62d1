//! One SMTP transaction with one remote host, over `mail-send`'s client.
//!
//! `mail-send` (Stalwart's, on `smtp-proto`'s reply parser, which caps a reply at 4 KiB)
//! does the wire work: reading replies, EHLO parsing, STARTTLS, dot-stuffing. This module
//! adds what a relaying MTA needs and a submission library does not: a result per
//! recipient, pipelined MAIL/RCPT (RFC 2920), SIZE, 8BITMIME and SMTPUTF8 negotiation,
//! opportunistic TLS with a plain-text fallback, TLS required and verified when an
//! MTA-STS policy demands it ([`TlsMode`]), TLS checked against TLSA records for DANE
//! ([`HostTls::Dane`]), and connection reuse.
//!
//! # Connection reuse
//! A connection whose transaction ended cleanly is kept in a [`ConnectionCache`] for a few
//! seconds (as Postfix's `smtp_connection_cache_time_limit`), keyed by address, TLS
//! name and [`TlsMode`] (so a session opened without checks never serves a delivery that
//! requires a verified one), and the next message for that host starts with `MAIL` instead of a TCP connect,
//! greeting, EHLO, STARTTLS and a second EHLO. A cached connection that the peer closed in
//! the meantime fails before any reply to `MAIL`; the message then goes out on a fresh
//! connection, so staleness never costs a delivery attempt. A connection is used for at
//! most [`MAX_REUSE`] transactions, then closed with `QUIT`.

use mail_send::SmtpClient;
use smtp_proto::{
    EhloResponse, Response, EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Transactions on one connection before it is closed (Postfix has a time limit of 300 s
/// instead; a count bounds the same thing without a clock).
pub const MAX_REUSE: u32 = 100;
/// Idle connections kept per host.
const MAX_IDLE_PER_HOST: usize = 4;

/// How the client behaves; built once from `[delivery]`.
#[derive(Clone)]
pub struct ClientSettings {
    /// Our name in EHLO.
    pub helo: String,
    pub connect_timeout: Duration,
    /// Applies to every command and reply, and to the whole DATA transfer.
    pub command_timeout: Duration,
    /// `None` disables opportunistic STARTTLS.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Checks certificates (PKIX and host name) for [`TlsMode::Required`] and
    /// [`TlsMode::Testing`]; `None` when MTA-STS is off.
    pub verified_tls: Option<tokio_rustls::TlsConnector>,
}

/// What TLS a delivery needs, from the recipient domain's MTA-STS policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// No policy: STARTTLS when offered, unchecked, falling back to plain text.
    Opportunistic,
    /// MTA-STS `testing`: try verified TLS, and when that fails log what `enforce` would
    /// have refused and carry on as [`TlsMode::Opportunistic`].
    Testing,
    /// MTA-STS `enforce`: verified STARTTLS or nothing; the host is unusable otherwise.
    Required,
    /// DANE: STARTTLS with a certificate matching the host's TLSA records, or nothing. Only
    /// meaningful with the records, in [`HostTls::Dane`]; here it keeps DANE sessions apart
    /// in the [`ConnectionCache`].
    Dane,
}

/// The TLS one host gets: a [`TlsMode`] from MTA-STS (or none), or DANE with the host's
/// TLSA records.
#[derive(Clone, Debug)]
pub enum HostTls {
    Mode(TlsMode),
    Dane(std::sync::Arc<crate::dane::Expectation>),
}

impl HostTls {
    /// The mode sessions are cached under.
    pub fn mode(&self) -> TlsMode {
        match self {
            HostTls::Mode(m) => *m,
            HostTls::Dane(_) => TlsMode::Dane,
        }
    }
}

/// What one recipient's attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptResult {
    Accepted(String),
    /// 4xx, or the transaction broke off: try again later.
    Temporary(String),
    /// 5xx: final.
    Permanent(String),
}

/// One message for one host.
pub struct Transaction<'a> {
    /// Envelope sender; empty for `<>`.
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The message, CRLF line endings, ending in CRLF.
    pub message: &'a [u8],
    /// The queue lease the delivery runs under, confirmed right before `DATA`: a worker
    /// that lost it stops there, before the message can reach the remote twice. `None`
    /// when the caller holds no lease (tests, tools).
    pub lease: Option<&'a crate::lease::LeaseGuard>,
}

/// The host could not be used at all (connection, greeting, EHLO, TLS): the caller tries
/// the next host.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HostError {
    pub message: String,
    /// The host was refused because TLS that a policy requires failed (no STARTTLS, bad
    /// certificate), as opposed to being unreachable: the status becomes 4.7.5.
    pub tls_required: bool,
}

impl HostError {
    fn host(message: String) -> Self {
        Self {
            message,
            tls_required: false,
        }
    }
}

fn reply_text(r: &Response<String>) -> String {
    // Multi-line replies become one line: the text ends up in logs and DSN fields.
    let msg = r
        .message
        .split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if r.esc[0] > 0 {
        format!("{} {}.{}.{} {}", r.code, r.esc[0], r.esc[1], r.esc[2], msg)
    } else {
        format!("{} {}", r.code, msg)
    }
}

fn classify(r: &Response<String>) -> RcptResult {
    let text = reply_text(r);
    match r.code {
        200..=299 => RcptResult::Accepted(text),
        500..=599 => RcptResult::Permanent(text),
        _ => RcptResult::Temporary(text),
    }
}

fn mail_error(e: mail_send::Error) -> RcptResult {
    match e {
        mail_send::Error::UnexpectedReply(r) => classify(&r),
        other => RcptResult::Temporary(format!("4.4.2 connection broken: {other}")),
    }
}

/// An open SMTP session, plain or after STARTTLS, with the EHLO reply it is working under.
enum Conn {
    Plain(SmtpClient<TcpStream>),
    Tls(Box<SmtpClient<TlsStream<TcpStream>>>),
}

struct Session {
    conn: Conn,
    ehlo: EhloResponse<String>,
    uses: u32,
}

impl Session {
    async fn transaction(&mut self, tx: &Transaction<'_>) -> TxOutcome {
        self.uses += 1;
        match &mut self.conn {
            Conn::Plain(c) => transaction(c, &self.ehlo, tx).await,
            Conn::Tls(c) => transaction(c, &self.ehlo, tx).await,
        }
    }

    async fn quit(mut self) {
        let _ = match &mut self.conn {
            Conn::Plain(c) => c.cmd(b"QUIT\r\n").await,
            Conn::Tls(c) => c.cmd(b"QUIT\r\n").await,
        };
    }
}

/// Cache key: address, TLS name and the TLS mode the session was opened under.
type CacheKey = (SocketAddr, String, TlsMode);

/// Idle sessions by [`CacheKey`], each with the moment it went idle.
#[derive(Default)]
pub struct ConnectionCache {
    idle: Mutex<HashMap<CacheKey, Vec<(Session, Instant)>>>,
    /// How long a session may sit idle before it is not reused.
    pub idle_limit: Duration,
}

impl ConnectionCache {
    pub fn new(idle_limit: Duration) -> Self {
        Self {
            idle: Mutex::default(),
            idle_limit,
        }
    }

    fn take(&self, addr: SocketAddr, name: &str, mode: TlsMode) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let key = (addr, name.to_string(), mode);
        let list = idle.get_mut(&key)?;
        let mut found = None;
        while let Some((session, since)) = list.pop() {
            if since.elapsed() < self.idle_limit {
                found = Some(session);
                break;
            }
            // Too old: dropped (the peer has likely timed it out already).
        }
        if list.is_empty() {
            idle.remove(&key);
        }
        found
    }

    /// Keeps `session` for reuse; returns it when there is no room (the caller QUITs).
    fn put(
        &self,
        addr: SocketAddr,
        name: &str,
        mode: TlsMode,
        session: Session,
    ) -> Option<Session> {
        if self.idle_limit.is_zero() || session.uses >= MAX_REUSE {
            return Some(session);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() > 10_000 {
            let limit = self.idle_limit;
            idle.retain(|_, l| {
                l.retain(|(_, since)| since.elapsed() < limit);
                !l.is_empty()
            });
        }
        let list = idle.entry((addr, name.to_string(), mode)).or_default();
        if list.len() >= MAX_IDLE_PER_HOST {
            return Some(session);
        }
        list.push((session, Instant::now()));
        None
    }

    /// Idle sessions held now (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// Delivers `tx` to the host at `addr`; `tls_name` is the host's name for SNI and, when
/// `tls` asks for verification, the name the certificate must carry. Reuses an idle
/// connection opened under the same mode to the same host from `cache` when there is one.
pub async fn deliver(
    settings: &ClientSettings,
    cache: &ConnectionCache,
    addr: SocketAddr,
    tls_name: &str,
    tls: &HostTls,
    tx: &Transaction<'_>,
) -> Result<Vec<RcptResult>, HostError> {
    let mode = tls.mode();
    if let Some(mut session) = cache.take(addr, tls_name, mode) {
        let out = session.transaction(tx).await;
        if !out.stale {
            finish(cache, addr, tls_name, mode, session, out.reusable).await;
            return Ok(out.results);
        }
        tracing::debug!(%addr, "cached connection was closed by the peer; reconnecting");
    }
    let mut session = match (tls, mode) {
        (HostTls::Dane(expect), _) => dane(settings, addr, tls_name, expect).await?,
        (HostTls::Mode(_), TlsMode::Dane) => {
            return Err(HostError {
                message: "DANE: no TLSA records to check the certificate against".into(),
                tls_required: true,
            })
        }
        (_, TlsMode::Opportunistic) => opportunistic(settings, addr, tls_name).await?,
        (_, TlsMode::Required) => {
            verified(settings, addr, tls_name)
                .await
                .map_err(|a| match a {
                    Attempt::Host(e) => HostError::host(e),
                    Attempt::TlsFailed(e) => HostError {
                        message: format!("MTA-STS requires verified TLS: {e}"),
                        tls_required: true,
                    },
                })?
        }
        (_, TlsMode::Testing) => match verified(settings, addr, tls_name).await {
            Ok(s) => s,
            Err(Attempt::Host(e)) => return Err(HostError::host(e)),
            Err(Attempt::TlsFailed(why)) => {
                tracing::warn!(host = tls_name, %addr, error = %why,
                    "MTA-STS testing: an enforced policy would refuse this host; delivering without verified TLS");
                opportunistic(settings, addr, tls_name).await?
            }
        },
    };
    let out = session.transaction(tx).await;
    finish(cache, addr, tls_name, mode, session, out.reusable).await;
    Ok(out.results)
}

/// STARTTLS with the certificate checked against the host's TLSA records; no fallback to
/// plain text or to an unchecked session (RFC 7672 §2.2).
async fn dane(
    settings: &ClientSettings,
    addr: SocketAddr,
    tls_name: &str,
    expect: &std::sync::Arc<crate::dane::Expectation>,
) -> Result<Session, HostError> {
    let refused = |e: String| HostError {
        message: format!("DANE: {e}"),
        tls_required: true,
    };
    let connector =
        crate::tls::dane_connector(expect.clone()).map_err(|e| refused(e.to_string()))?;
    open(settings, addr, tls_name, Starttls::Required(&connector))
        .await
        .map_err(|a| match a {
            Attempt::Host(e) => HostError::host(e),
            Attempt::TlsFailed(e) => refused(e),
        })
}

/// STARTTLS when offered, unchecked; a failed handshake means try again without it, as
/// Postfix does.
async fn opportunistic(
    settings: &ClientSettings,
    addr: SocketAddr,
    tls_name: &str,
) -> Result<Session, HostError> {
    let starttls = match &settings.tls {
        Some(c) => Starttls::IfOffered(c),
        None => Starttls::Off,
    };
    match open(settings, addr, tls_name, starttls).await {
        Err(Attempt::TlsFailed(why)) => {
            tracing::info!(%addr, error = %why, "STARTTLS failed; retrying in plain text");
            match open(settings, addr, tls_name, Starttls::Off).await {
                Ok(s) => Ok(s),
                Err(Attempt::Host(e)) | Err(Attempt::TlsFailed(e)) => Err(HostError::host(e)),
            }
        }
        Err(Attempt::Host(e)) => Err(HostError::host(e)),
        Ok(s) => Ok(s),
    }
}

/// STARTTLS with the certificate checked; no fallback.
async fn verified(
    settings: &ClientSettings,
    addr: SocketAddr,
    tls_name: &str,
) -> Result<Session, Attempt> {
    let Some(connector) = &settings.verified_tls else {
        return Err(Attempt::TlsFailed(
            "no verifying TLS client configured".into(),
        ));
    };
    open(settings, addr, tls_name, Starttls::Required(connector)).await
}

async fn finish(
    cache: &ConnectionCache,
    addr: SocketAddr,
    tls_name: &str,
    mode: TlsMode,
    session: Session,
    reusable: bool,
) {
    if !reusable {
        session.quit().await;
        return;
    }
    if let Some(s) = cache.put(addr, tls_name, mode, session) {
        s.quit().await;
    }
}

enum Attempt {
    Host(String),
    /// STARTTLS failed, or was required and not offered.
    TlsFailed(String),
}

/// Whether and how [`open`] starts TLS.
enum Starttls<'a> {
    Off,
    IfOffered(&'a tokio_rustls::TlsConnector),
    /// A peer that does not offer STARTTLS is a [`Attempt::TlsFailed`].
    Required(&'a tokio_rustls::TlsConnector),
}

/// Connects, reads the greeting, says EHLO and starts TLS as `starttls` says.
async fn open(
    settings: &ClientSettings,
    addr: SocketAddr,
    tls_name: &str,
    starttls: Starttls<'_>,
) -> Result<Session, Attempt> {
    let host_err =
        |what: &str, e: &dyn std::fmt::Display| Attempt::Host(format!("{addr}: {what}: {e}"));
    let mut client = SmtpClient::connect(addr, settings.connect_timeout)
        .await
        .map_err(|e| host_err("connect", &e))?;
    client.timeout = settings.command_timeout;
    let greeting = tokio::time::timeout(settings.command_timeout, client.read())
        .await
        .map_err(|_| host_err("greeting", &"timed out"))?
        .map_err(|e| host_err("greeting", &e))?;
    if greeting.code != 220 {
        return Err(host_err("greeting", &reply_text(&greeting)));
    }
    let ehlo = client
        .ehlo(&settings.helo)
        .await
        .map_err(|e| host_err("EHLO", &e))?;
    let offered = ehlo.has_capability(EXT_START_TLS);
    let connector = match starttls {
        Starttls::Off => None,
        Starttls::IfOffered(c) => offered.then_some(c),
        Starttls::Required(_) if !offered => {
            return Err(Attempt::TlsFailed(format!("{addr}: STARTTLS not offered")))
        }
        Starttls::Required(c) => Some(c),
    };
    match connector {
        Some(connector) => {
            let mut tls = match client.start_tls(connector, tls_name).await {
                Ok(c) => c,
                Err(e) => return Err(Attempt::TlsFailed(format!("{addr}: {e}"))),
            };
            let ehlo = tls
                .ehlo(&settings.helo)
                .await
                .map_err(|e| host_err("EHLO after STARTTLS", &e))?;
            Ok(Session {
                conn: Conn::Tls(Box::new(tls)),
                ehlo,
                uses: 0,
            })
        }
        None => Ok(Session {
            conn: Conn::Plain(client),
            ehlo,
            uses: 0,
        }),
    }
}

/// What a transaction came to, and what may be done with its connection afterwards.
struct TxOutcome {
    results: Vec<RcptResult>,
    /// The session is in a clean state (after a completed DATA or a successful RSET).
    reusable: bool,
    /// The connection failed before any reply to MAIL: nothing was decided, and a fresh
    /// connection may try again.
    stale: bool,
}

/// MAIL, RCPTs and DATA on an open session, leaving it ready for the next MAIL when it
/// can. Never fails as a whole: each recipient gets its result.
async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    ehlo: &EhloResponse<String>,
    tx: &Transaction<'_>,
) -> TxOutcome {
    let n = tx.recipients.len();
    // Nothing sent yet: the session stays as clean as it was.
    let refused = |r: RcptResult| TxOutcome {
        results: vec![r; n],
        reusable: true,
        stale: false,
    };
    let broken = |r: RcptResult, stale: bool| TxOutcome {
        results: vec![r; n],
        reusable: false,
        stale,
    };
    let size = tx.message.len();
    if ehlo.has_capability(EXT_SIZE) && ehlo.size > 0 && size > ehlo.size {
        return refused(RcptResult::Permanent(format!(
            "552 5.3.4 message of {size} bytes exceeds the remote limit of {} bytes",
            ehlo.size
        )));
    }
    let utf8 = !tx.sender.is_ascii() || tx.recipients.iter().any(|r| !r.is_ascii());
    if utf8 && !ehlo.has_capability(EXT_SMTP_UTF8) {
        // RFC 6531 §3.5: without SMTPUTF8 the address cannot be sent at all.
        return refused(RcptResult::Permanent(
            "553 5.6.7 the remote server does not support SMTPUTF8 addresses".into(),
        ));
    }
    let mut mail = format!("MAIL FROM:<{}>", tx.sender);
    if ehlo.has_capability(EXT_SIZE) {
        mail.push_str(&format!(" SIZE={size}"));
    }
    // 8-bit content goes out as it is: a server without 8BITMIME still gets it (as
    // Postfix does by default) rather than a downgrade this client does not implement.
    if !tx.message.is_ascii() && ehlo.has_capability(EXT_8BIT_MIME) {
        mail.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    let rcpts: Vec<String> = tx
        .recipients
        .iter()
        .map(|r| format!("RCPT TO:<{r}>\r\n"))
        .collect();

    let replies: Vec<Response<String>> = if ehlo.has_capability(EXT_PIPELINING) {
        let cmds = std::iter::once(mail.clone()).chain(rcpts.iter().cloned());
        match client.cmds(cmds).await {
            Ok(r) => r,
            // Whether any reply came is unknown here; a pipelined group that failed is
            // treated as never sent, so retrying on a fresh connection cannot duplicate
            // (no DATA was sent).
            Err(e) => {
                let stale = !matches!(e, mail_send::Error::UnexpectedReply(_));
                return broken(mail_error(e), stale);
            }
        }
    } else {
        let mut out = Vec::with_capacity(rcpts.len() + 1);
        for cmd in std::iter::once(&mail).chain(rcpts.iter()) {
            match client.cmd(cmd.as_bytes()).await {
                Ok(r) => {
                    let stop = out.is_empty() && r.code / 100 != 2;
                    out.push(r);
                    if stop {
                        break;
                    }
                }
                Err(e) => {
                    let stale =
                        out.is_empty() && !matches!(e, mail_send::Error::UnexpectedReply(_));
                    return broken(mail_error(e), stale);
                }
            }
        }
        out
    };
    let Some(mail_reply) = replies.first() else {
        return broken(
            RcptResult::Temporary("4.4.2 no reply to MAIL".into()),
            false,
        );
    };
    if mail_reply.code / 100 != 2 {
        let r = classify(mail_reply);
        let reusable = rset(client).await;
        return TxOutcome {
            results: vec![r; n],
            reusable,
            stale: false,
        };
    }
    let mut results: Vec<RcptResult> = (0..tx.recipients.len())
        .map(|i| match replies.get(i + 1) {
            Some(r) => classify(r),
            None => RcptResult::Temporary("4.4.2 no reply to RCPT".into()),
        })
        .collect();
    let accepted = results.iter().any(|r| matches!(r, RcptResult::Accepted(_)));
    // The lease is renewed right before DATA: a stall anywhere before this point (a slow
    // greeting, a tarpitting RCPT) may have outlasted it, and after DATA it is too late.
    if accepted && !confirm_lease(tx.lease).await {
        let lost = RcptResult::Temporary("4.4.2 queue lease lost before DATA; not sent".into());
        for r in results.iter_mut() {
            if matches!(r, RcptResult::Accepted(_)) {
                *r = lost.clone();
            }
        }
        let reusable = rset(client).await;
        return TxOutcome {
            results,
            reusable,
            stale: false,
        };
    }
    let reusable = if accepted {
        // mail-send appends CRLF.CRLF itself; the stored message already ends in CRLF.
        let body = tx.message.strip_suffix(b"\r\n").unwrap_or(tx.message);
        let (outcome, clean) = match client.data(body).await {
            Ok(()) => (RcptResult::Accepted("250 message accepted".into()), true),
            // A reply to the data means the session is still in step.
            Err(mail_send::Error::UnexpectedReply(r)) => (classify(&r), true),
            Err(e) => (mail_error(e), false),
        };
        for r in results.iter_mut() {
            if matches!(r, RcptResult::Accepted(_)) {
                *r = outcome.clone();
            }
        }
        clean
    } else {
        // Every RCPT refused: the transaction is open, RSET closes it.
        rset(client).await
    };
    TxOutcome {
        results,
        reusable,
        stale: false,
    }
}

/// Whether the message may go out under `lease`: renewed and confirmed now, or no lease.
async fn confirm_lease(lease: Option<&crate::lease::LeaseGuard>) -> bool {
    match lease {
        Some(l) => l.confirm().await,
        None => true,
    }
}

/// Ends an open transaction; true when the session is clean afterwards.
async fn rset<T: AsyncRead + AsyncWrite + Unpin>(client: &mut SmtpClient<T>) -> bool {
    matches!(client.cmd(b"RSET\r\n").await, Ok(r) if r.code == 250)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_classes() {
        let r = |code, esc| Response {
            code,
            esc,
            message: "why\r\nnot".to_string(),
        };
        assert_eq!(
            classify(&r(550, [5, 1, 1])),
            RcptResult::Permanent("550 5.1.1 why not".into())
        );
        assert_eq!(
            classify(&r(451, [0, 0, 0])),
            RcptResult::Temporary("451 why not".into())
        );
        assert!(matches!(
            classify(&r(250, [2, 0, 0])),
            RcptResult::Accepted(_)
        ));
    }
}
