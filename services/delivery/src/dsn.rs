//! Delivery status notifications (RFC 3464): a `multipart/report` telling the sender which
//! recipients failed and what the remote server said.
//!
//! Built by hand rather than with a MIME builder because its shape is fixed and small, and
//! every byte of it is ours: the only foreign inputs are addresses (checked by the queue
//! and by SMTP) and remote replies, which are reduced here to printable ASCII on one line
//! so they can never break a header or the MIME structure.

use std::fmt::Write;

/// The original message's header section is returned at most this long (RET=HDRS, the
/// default); a longer one is cut at a line boundary.
pub const MAX_RETURNED_HEADERS: usize = 64 * 1024;
/// RET=FULL returns the message only up to this size; larger ones get headers only.
pub const MAX_RETURNED_MESSAGE: usize = 2 * 1024 * 1024;

/// One failed recipient.
#[derive(Clone, Debug)]
pub struct FailedRecipient {
    pub address: String,
    /// RFC 3461 ORCPT as given (`rfc822;addr`).
    pub orcpt: Option<String>,
    /// The remote reply or our own reason, e.g. `550 5.1.1 user unknown`.
    pub diagnostic: String,
    /// The host that gave `diagnostic`, when one did.
    pub remote_mta: Option<String>,
}

/// Which DSN: a final failure, or a warning that delivery is taking long (RFC 3464
/// `Action: delayed`) while retries go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Failure,
    /// Retries continue until this Unix time (`Will-Retry-Until`).
    Delay {
        will_retry_until: i64,
    },
}

/// What a DSN is about.
pub struct Report<'a> {
    pub kind: Kind,
    /// Our host name (Reporting-MTA, From's domain).
    pub hostname: &'a str,
    /// The envelope sender the DSN goes to.
    pub sender: &'a str,
    pub envid: Option<&'a str>,
    /// Unix seconds the message was queued.
    pub arrival: i64,
    pub failed: &'a [FailedRecipient],
    /// The original message (without the Return-Path line).
    pub original: &'a [u8],
    /// RET=FULL asked for the whole message.
    pub return_full: bool,
}

/// Printable ASCII on one line: controls and non-ASCII become `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// `x.y.z` from a reply such as `550 5.1.1 ...`; the class of the reply code otherwise.
fn status_of(diagnostic: &str) -> String {
    let mut words = diagnostic.split_whitespace();
    let code = words.next().unwrap_or("");
    if let Some(esc) = words.next() {
        let parts: Vec<&str> = esc.split('.').collect();
        if parts.len() == 3
            && (parts[0] == "4" || parts[0] == "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        {
            return esc.to_string();
        }
    }
    if code.starts_with('4') {
        "4.0.0".into()
    } else {
        "5.0.0".into()
    }
}

fn header_section(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len());
    let head = &message[..end];
    if head.len() <= MAX_RETURNED_HEADERS {
        return head;
    }
    let cut = head[..MAX_RETURNED_HEADERS]
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map(|p| p + 2)
        .unwrap_or(0);
    &head[..cut]
}

fn rfc2822_date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

/// The DSN message, CRLF line endings. `now` is Unix seconds; `unique` makes the boundary
/// and Message-ID unique.
pub fn build(report: &Report<'_>, now: i64, unique: u64) -> Vec<u8> {
    let host = clean(report.hostname);
    let boundary = format!("=_mailfleet_dsn_{now:x}_{unique:x}");
    let date = rfc2822_date(now);
    let (subject, summary, action) = match report.kind {
        Kind::Failure => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients.".to_string(),
            "failed",
        ),
        Kind::Delay { will_retry_until } => (
            "Delayed Mail (still being retried)",
            format!(
                "Your message has not been delivered yet to the recipients below.\r\n\
                 Delivery will be retried until {}; you need not send it again.",
                rfc2822_date(will_retry_until)
            ),
            "delayed",
        ),
    };
    let mut m = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <dsn.{now:x}.{unique:x}@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n\
         {summary}\r\n\
         \r\n",
        to = clean(report.sender),
    );
    for f in report.failed {
        let _ = write!(m, "<{}>: {}\r\n", clean(&f.address), clean(&f.diagnostic));
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n"
    );
    if let Some(envid) = report.envid {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", clean(envid));
    }
    let _ = write!(m, "Arrival-Date: {}\r\n", rfc2822_date(report.arrival));
    for f in report.failed {
        let _ = write!(m, "\r\n");
        if let Some(orcpt) = &f.orcpt {
            let _ = write!(m, "Original-Recipient: {}\r\n", clean(orcpt));
        }
        let _ = write!(
            m,
            "Final-Recipient: rfc822; {}\r\n\
             Action: {action}\r\n\
             Status: {}\r\n",
            clean(&f.address),
            status_of(&f.diagnostic)
        );
        if let Kind::Delay { will_retry_until } = report.kind {
            let _ = write!(
                m,
                "Will-Retry-Until: {}\r\n",
                rfc2822_date(will_retry_until)
            );
        }
        if let Some(mta) = &f.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", clean(mta));
        }
        let _ = write!(
            m,
            "Diagnostic-Code: smtp; {}\r\n\
             Last-Attempt-Date: {date}\r\n",
            clean(&f.diagnostic)
        );
    }
    let full = report.return_full && report.original.len() <= MAX_RETURNED_MESSAGE;
    let (ctype, returned) = if full {
        ("message/rfc822", report.original)
    } else {
        ("text/rfc822-headers", header_section(report.original))
    };
    let _ = write!(m, "\r\n--{boundary}\r\nContent-Type: {ctype}\r\n\r\n");
    let mut out = m.into_bytes();
    out.extend_from_slice(returned);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_structure() {
        let failed = [FailedRecipient {
            address: "bob@remote.test".into(),
            orcpt: Some("rfc822;bob@remote.test".into()),
            diagnostic: "550 5.1.1 <bob@remote.test>: no such\r\nuser".into(),
            remote_mta: Some("mx.remote.test".into()),
        }];
        let original = b"From: a@l.test\r\nSubject: hi\r\n\r\nsecret body\r\n";
        let dsn = build(
            &Report {
                kind: Kind::Failure,
                hostname: "mx.l.test",
                sender: "a@l.test",
                envid: None,
                arrival: 1_700_000_000,
                failed: &failed,
                original,
                return_full: false,
            },
            1_700_000_100,
            7,
        );
        let text = String::from_utf8(dsn).expect("ascii");
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Final-Recipient: rfc822; bob@remote.test\r\n"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(
            text.contains("Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: no such??user\r\n")
        );
        assert!(text.contains("Subject: hi"));
        assert!(
            !text.contains("secret body"),
            "RET=HDRS returns headers only"
        );
        assert!(text.ends_with("--\r\n"));
        assert!(!text.contains('\n') || !text.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_of("550 5.7.1 no"), "5.7.1");
        assert_eq!(status_of("554 go away"), "5.0.0");
        assert_eq!(status_of("451 later"), "4.0.0");
        assert_eq!(status_of("5.1.10 null MX"), "5.0.0");
    }

    #[test]
    fn delay_report_says_delayed_and_until_when() {
        let late = [FailedRecipient {
            address: "bob@remote.test".into(),
            orcpt: None,
            diagnostic: "451 4.4.1 connection refused".into(),
            remote_mta: None,
        }];
        let text = String::from_utf8(build(
            &Report {
                kind: Kind::Delay {
                    will_retry_until: 1_700_432_000,
                },
                hostname: "mx.l.test",
                sender: "a@l.test",
                envid: Some("ENV1"),
                arrival: 1_700_000_000,
                failed: &late,
                original: b"Subject: hi\r\n\r\nbody\r\n",
                return_full: false,
            },
            1_700_014_400,
            9,
        ))
        .expect("ascii");
        assert!(text.contains("Subject: Delayed Mail (still being retried)\r\n"));
        assert!(text.contains("Action: delayed\r\n"));
        assert!(text.contains("Status: 4.4.1\r\n"));
        assert!(
            text.contains("Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000"),
            "{text}"
        );
        assert!(text.contains("Original-Envelope-Id: ENV1\r\n"));
        assert!(!text.contains("Action: failed"));
    }
}
