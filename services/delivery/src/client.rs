//! One SMTP transaction with one remote host, over `mail-send`'s client.
//!
//! `mail-send` (Stalwart's, on `smtp-proto`'s reply parser, which caps a reply at 4 KiB)
//! does the wire work: reading replies, EHLO parsing, STARTTLS, dot-stuffing. This module
//! adds what a relaying MTA needs and a submission library does not: a result per
//! recipient, pipelined MAIL/RCPT (RFC 2920), SIZE, 8BITMIME and SMTPUTF8 negotiation, and
//! opportunistic TLS with a plain-text fallback.

use mail_send::SmtpClient;
use smtp_proto::{
    EhloResponse, Response, EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How the client behaves; built once from `[delivery]`.
#[derive(Clone)]
pub struct ClientSettings {
    /// Our name in EHLO.
    pub helo: String,
    pub connect_timeout: Duration,
    /// Applies to every command and reply, and to the whole DATA transfer.
    pub command_timeout: Duration,
    /// `None` disables STARTTLS.
    pub tls: Option<tokio_rustls::TlsConnector>,
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
}

/// The host could not be used at all (connection, greeting, EHLO, TLS): the caller tries
/// the next host.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

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

/// Delivers `tx` to the host at `addr`; `tls_name` is the host's name for SNI.
pub async fn deliver(
    settings: &ClientSettings,
    addr: SocketAddr,
    tls_name: &str,
    tx: &Transaction<'_>,
) -> Result<Vec<RcptResult>, HostError> {
    match deliver_once(settings, addr, tls_name, tx, settings.tls.is_some()).await {
        // Opportunistic TLS: a failed handshake means try again without it, as Postfix does.
        Err(Attempt::TlsFailed(why)) => {
            tracing::info!(%addr, error = %why, "STARTTLS failed; retrying in plain text");
            match deliver_once(settings, addr, tls_name, tx, false).await {
                Ok(r) => Ok(r),
                Err(Attempt::Host(e)) | Err(Attempt::TlsFailed(e)) => Err(HostError(e)),
            }
        }
        Err(Attempt::Host(e)) => Err(HostError(e)),
        Ok(r) => Ok(r),
    }
}

enum Attempt {
    Host(String),
    TlsFailed(String),
}

async fn deliver_once(
    settings: &ClientSettings,
    addr: SocketAddr,
    tls_name: &str,
    tx: &Transaction<'_>,
    use_tls: bool,
) -> Result<Vec<RcptResult>, Attempt> {
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
    match (&settings.tls, use_tls && ehlo.has_capability(EXT_START_TLS)) {
        (Some(connector), true) => {
            let mut tls = match client.start_tls(connector, tls_name).await {
                Ok(c) => c,
                Err(e) => return Err(Attempt::TlsFailed(e.to_string())),
            };
            let ehlo = tls
                .ehlo(&settings.helo)
                .await
                .map_err(|e| host_err("EHLO after STARTTLS", &e))?;
            Ok(transaction(&mut tls, &ehlo, tx).await)
        }
        _ => Ok(transaction(&mut client, &ehlo, tx).await),
    }
}

/// MAIL, RCPTs and DATA on an open session; QUIT at the end. Never fails as a whole: each
/// recipient gets its result.
async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    ehlo: &EhloResponse<String>,
    tx: &Transaction<'_>,
) -> Vec<RcptResult> {
    let all = |r: RcptResult| vec![r; tx.recipients.len()];
    let size = tx.message.len();
    if ehlo.has_capability(EXT_SIZE) && ehlo.size > 0 && size > ehlo.size {
        return all(RcptResult::Permanent(format!(
            "552 5.3.4 message of {size} bytes exceeds the remote limit of {} bytes",
            ehlo.size
        )));
    }
    let utf8 = !tx.sender.is_ascii() || tx.recipients.iter().any(|r| !r.is_ascii());
    if utf8 && !ehlo.has_capability(EXT_SMTP_UTF8) {
        // RFC 6531 §3.5: without SMTPUTF8 the address cannot be sent at all.
        return all(RcptResult::Permanent(
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
            Err(e) => return all(mail_error(e)),
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
                Err(e) => return all(mail_error(e)),
            }
        }
        out
    };
    let Some(mail_reply) = replies.first() else {
        return all(RcptResult::Temporary("4.4.2 no reply to MAIL".into()));
    };
    if mail_reply.code / 100 != 2 {
        let r = classify(mail_reply);
        let _ = client.cmd(b"QUIT\r\n").await;
        return all(r);
    }
    let mut results: Vec<RcptResult> = (0..tx.recipients.len())
        .map(|i| match replies.get(i + 1) {
            Some(r) => classify(r),
            None => RcptResult::Temporary("4.4.2 no reply to RCPT".into()),
        })
        .collect();
    if results.iter().any(|r| matches!(r, RcptResult::Accepted(_))) {
        // mail-send appends CRLF.CRLF itself; the stored message already ends in CRLF.
        let body = tx.message.strip_suffix(b"\r\n").unwrap_or(tx.message);
        let outcome = match client.data(body).await {
            Ok(()) => RcptResult::Accepted("250 message accepted".into()),
            Err(e) => mail_error(e),
        };
        for r in results.iter_mut() {
            if matches!(r, RcptResult::Accepted(_)) {
                *r = outcome.clone();
            }
        }
    }
    let _ = client.cmd(b"QUIT\r\n").await;
    results
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
