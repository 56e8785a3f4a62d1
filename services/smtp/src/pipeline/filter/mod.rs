//! Content filtering, the stage after sender authentication: viruses (ClamAV's clamd)
//! and spam (rspamd).
//!
//! ```text
//! message ──> clamd INSTREAM ── FOUND ──> 554 5.7.0
//!         ──> rspamd /checkv2 ── reject ──> 550 5.7.1
//!                             ── soft reject, greylist ──> 451 4.7.1
//!                             ── add header, rewrite subject ──> Junk (or tagged only)
//!                             ── no action ──> INBOX
//! ```
//! Either scanner may be down: `on_error` says whether the message then waits (`451`, the
//! default: nothing unscanned gets in) or is accepted and marked as not scanned.
//! The verdicts go into `X-Spam-Status`, `X-Spam-Symbols` and `X-Virus-Scanned`; the same
//! fields arriving from outside are removed, so a sender cannot mark its own mail clean.
//! What the scanners answer is mapped by pure functions ([`spam_disposition`]), tested
//! without them.

pub mod builtin;
pub mod clamav;
pub mod rspamd;

use bytes::Bytes;
use mailfleet_core::config::{ClamavConfig, FilterOnError, RspamdConfig, SpamAction};
use std::time::Duration;

/// Header fields this stage writes; incoming ones of these names are removed.
pub const OWN_FIELDS: [&str; 4] = [
    "X-Spam-Status",
    "X-Spam-Symbols",
    "X-Spam-Flag",
    "X-Virus-Scanned",
];

/// The configured scanners (either may be absent).
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub rspamd: Option<RspamdConfig>,
    pub clamav: Option<ClamavConfig>,
    /// Score thresholds per recipient domain (`[smtp.spam_domains]`, lower case): for a
    /// message to such a domain, rspamd's score is held to them instead of its action.
    pub domains: std::collections::BTreeMap<String, mailfleet_spam::Thresholds>,
}

/// What the stage decided.
#[derive(Clone, Debug, PartialEq)]
pub enum FilterOutcome {
    /// Deliver with these header fields (CRLF-terminated), to Junk when `junk`.
    Deliver { fields: String, junk: bool },
    /// Refuse for good: code, enhanced code, text.
    Reject(u16, &'static str, String),
    /// `451 4.7.1`: try again later.
    TempFail(String),
}

/// What rspamd's action means here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpamDisposition {
    Deliver,
    Junk,
    Reject,
    TempFail(&'static str),
}

/// Maps rspamd's `action` under the configured `add_header` action. Unknown actions are
/// delivered (rspamd adds actions over time; its score is still in the header).
pub fn spam_disposition(action: &str, add_header: SpamAction) -> SpamDisposition {
    match action {
        "reject" => SpamDisposition::Reject,
        "soft reject" => SpamDisposition::TempFail("Try again later"),
        "greylist" => SpamDisposition::TempFail("Greylisted, try again later"),
        "add header" | "rewrite subject" => match add_header {
            SpamAction::Junk => SpamDisposition::Junk,
            SpamAction::Tag => SpamDisposition::Deliver,
        },
        _ => SpamDisposition::Deliver,
    }
}

/// What rspamd's score means under a domain's own thresholds: `None` below them (then
/// rspamd's greylist and soft-reject actions still apply).
pub fn score_disposition(score: f64, t: &mailfleet_spam::Thresholds) -> Option<SpamDisposition> {
    let score = score as f32;
    if t.reject.is_some_and(|r| score >= r) {
        Some(SpamDisposition::Reject)
    } else if score >= t.junk {
        Some(SpamDisposition::Junk)
    } else {
        None
    }
}

/// The envelope facts the scanners see.
pub struct Context<'a> {
    pub scan: rspamd::ScanRequest<'a>,
    /// Authenticated submission: rspamd is not asked (it scores inbound mail).
    pub submission: bool,
    pub hostname: &'a str,
    /// The recipients' domain thresholds, when they all share one entry of
    /// [`Filters::domains`].
    pub thresholds: Option<mailfleet_spam::Thresholds>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.rspamd.is_none() && self.clamav.is_none()
    }

    /// Runs the configured scanners on `message`.
    pub async fn run(&self, ctx: &Context<'_>, message: &[u8]) -> FilterOutcome {
        let mut fields = String::new();
        let mut junk = false;
        // One copy for the scanners' sockets, only when one is configured.
        let body = if self.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(message)
        };
        if let Some(c) = &self.clamav {
            if message.len() > c.max_size {
                fields.push_str(&format!(
                    "X-Virus-Scanned: not scanned (larger than {} bytes) by {}\r\n",
                    c.max_size, ctx.hostname
                ));
            } else {
                match clamav::scan(c.address, &body, Duration::from_secs(c.timeout_secs)).await {
                    Ok(clamav::Scan::Clean) => {
                        fields.push_str(&format!(
                            "X-Virus-Scanned: clean (ClamAV) by {}\r\n",
                            ctx.hostname
                        ));
                    }
                    Ok(clamav::Scan::Infected(name)) => {
                        tracing::info!(virus = %name, "virus found");
                        return FilterOutcome::Reject(
                            554,
                            "5.7.0",
                            format!("Message contains a virus ({})", printable(&name)),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "virus scan failed");
                        match c.on_error {
                            FilterOnError::Tempfail => {
                                return FilterOutcome::TempFail(
                                    "Virus scanner unavailable, try again later".into(),
                                )
                            }
                            FilterOnError::Accept => fields.push_str(&format!(
                                "X-Virus-Scanned: not scanned (scanner unavailable) by {}\r\n",
                                ctx.hostname
                            )),
                        }
                    }
                }
            }
        }
        if let (Some(c), false) = (&self.rspamd, ctx.submission) {
            if message.len() > c.max_size {
                fields.push_str("X-Spam-Status: Unknown, not scanned (too large)\r\n");
            } else {
                match rspamd::check(
                    c.address,
                    &ctx.scan,
                    body,
                    Duration::from_secs(c.timeout_secs),
                )
                .await
                {
                    Ok(v) => {
                        let d = match &ctx.thresholds {
                            Some(t) => score_disposition(v.score, t)
                                .unwrap_or_else(|| spam_disposition(&v.action, c.add_header)),
                            None => spam_disposition(&v.action, c.add_header),
                        };
                        tracing::info!(
                            action = %v.action,
                            score = v.score,
                            required = v.required_score,
                            symbols = %v.symbol_list(),
                            "spam scan"
                        );
                        match d {
                            SpamDisposition::Reject => {
                                return FilterOutcome::Reject(
                                    554,
                                    "5.7.1",
                                    "Message refused as spam".into(),
                                )
                            }
                            SpamDisposition::TempFail(why) => {
                                return FilterOutcome::TempFail(why.into())
                            }
                            SpamDisposition::Junk => junk = true,
                            SpamDisposition::Deliver => {}
                        }
                        let spam = !matches!(v.action.as_str(), "no action" | "");
                        fields.push_str(&format!(
                            "X-Spam-Status: {}, score={:.2} required={:.2} action=\"{}\"\r\n",
                            if spam { "Yes" } else { "No" },
                            v.score,
                            v.required_score,
                            printable(&v.action),
                        ));
                        if spam {
                            fields.push_str("X-Spam-Flag: YES\r\n");
                        }
                        let symbols = v.symbol_list();
                        if !symbols.is_empty() {
                            fields.push_str(&fold("X-Spam-Symbols", &printable(&symbols)));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "spam scan failed");
                        match c.on_error {
                            FilterOnError::Tempfail => {
                                return FilterOutcome::TempFail(
                                    "Spam filter unavailable, try again later".into(),
                                )
                            }
                            FilterOnError::Accept => fields.push_str(
                                "X-Spam-Status: Unknown, not scanned (filter unavailable)\r\n",
                            ),
                        }
                    }
                }
            }
        }
        FilterOutcome::Deliver { fields, junk }
    }
}

/// Printable ASCII only: scanner output goes into header fields.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(4000)
        .collect()
}

/// `name: value` folded after `, ` so that no line passes 78 characters where it can be
/// helped (RFC 5322 §2.1.1).
fn fold(name: &str, value: &str) -> String {
    let mut out = format!("{name}:");
    let mut line = out.len();
    for (i, part) in value.split(", ").enumerate() {
        let sep = if i == 0 { "" } else { "," };
        if line + part.len() + 2 > 78 && i > 0 {
            out.push_str(sep);
            out.push_str("\r\n\t");
            line = 1;
        } else {
            out.push_str(sep);
            out.push(' ');
            line += sep.len() + 1;
        }
        out.push_str(part);
        line += part.len();
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_threshold_decides_on_rspamds_score() {
        let t = mailfleet_spam::Thresholds {
            junk: 4.0,
            reject: Some(9.0),
            greylist: None,
        };
        assert_eq!(score_disposition(3.9, &t), None);
        assert_eq!(score_disposition(4.0, &t), Some(SpamDisposition::Junk));
        assert_eq!(score_disposition(9.5, &t), Some(SpamDisposition::Reject));
        let lax = mailfleet_spam::Thresholds { reject: None, ..t };
        assert_eq!(score_disposition(50.0, &lax), Some(SpamDisposition::Junk));
    }

    #[test]
    fn rspamd_actions_map_to_replies_and_mailboxes() {
        use SpamDisposition::*;
        assert_eq!(spam_disposition("reject", SpamAction::Junk), Reject);
        assert!(matches!(
            spam_disposition("greylist", SpamAction::Junk),
            TempFail(_)
        ));
        assert!(matches!(
            spam_disposition("soft reject", SpamAction::Junk),
            TempFail(_)
        ));
        assert_eq!(spam_disposition("add header", SpamAction::Junk), Junk);
        assert_eq!(spam_disposition("rewrite subject", SpamAction::Junk), Junk);
        assert_eq!(spam_disposition("add header", SpamAction::Tag), Deliver);
        assert_eq!(spam_disposition("no action", SpamAction::Junk), Deliver);
        assert_eq!(spam_disposition("something new", SpamAction::Junk), Deliver);
    }

    #[test]
    fn long_symbol_lists_are_folded() {
        let value = (0..20)
            .map(|i| format!("SYMBOL_NUMBER_{i}(1.00)"))
            .collect::<Vec<_>>()
            .join(", ");
        let f = fold("X-Spam-Symbols", &value);
        assert!(f.ends_with("\r\n"));
        for line in f.trim_end().split("\r\n") {
            assert!(line.len() <= 78, "{line}");
        }
        let unfolded = f.replace("\r\n\t", " ");
        assert_eq!(unfolded.trim_end(), format!("X-Spam-Symbols: {value}"));
    }
}
