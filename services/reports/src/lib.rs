//! Mailfleet aggregate reports: DMARC (RFC 7489 §7.2) about the mail this installation
//! received, TLS-RPT (RFC 8460) about the TLS of the mail it sent.
//!
//! ```text
//! inbound verify ──> DmarcCollector ─┐  in memory, per (domain, day), counted rows
//! delivery attempt ─> TlsCollector ──┤  bounded (`max_rows`); overflow counted and logged
//!                                    └─> flush every `flush_secs` and at shutdown:
//!                                        Global keyed records  dmarc/<day>/<domain>/<node>-<seq>
//!                                                              tlsrpt/<day>/<domain>/<node>-<seq>
//! daily job (one node, under a lease) ─> closed days: merge every node's records per
//!   domain, build the report with mail-auth, pick the rua destinations (mailto only,
//!   RFC 7489 §7.1 external check), queue it from the null sender, delete the records
//! ```
//!
//! Each part is small and does one thing, in the manner of Postfix's daemons: the
//! collectors know nothing about DNS or the queue, the sender nothing about SMTP sessions.
//! Every front-end and every node writes to the same metadata store, so the report of a
//! domain covers the whole installation whatever backend it runs on.

#![forbid(unsafe_code)]

pub mod dmarc;
pub mod sender;
pub mod service;
pub mod tlsrpt;

pub use dmarc::DmarcCollector;
pub use sender::{ReportDns, ReportSender, RunSummary, SenderSettings};
pub use service::ReportService;
pub use tlsrpt::{TlsCollector, TlsPolicyKind, TlsSession};

/// Record kind of the stored DMARC rows.
pub const DMARC_KIND: &str = "dmarc";
/// Record kind of the stored TLS-RPT counts.
pub const TLSRPT_KIND: &str = "tlsrpt";

/// The UTC day (`yyyy-mm-dd`) of a Unix time.
pub fn day_of(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// The first and last second of a UTC day (`yyyy-mm-dd`); `None` when it is not one.
pub fn day_bounds(day: &str) -> Option<(i64, i64)> {
    let d = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    let begin = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
    Some((begin, begin + 86_399))
}

/// When a stored record expires: a day that could not be sent within a week (DNS down,
/// reports turned off since) is dropped rather than kept forever; reports older than that
/// are of no use to the domain owner anyway.
pub(crate) fn record_expiry() -> i64 {
    unix_now() + 8 * 86_400
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    mailfleet_storage::data::now()
}

/// Logs a count a collector could not take because its rows are at their cap: once at the
/// first drop, then every 1000th, so that a flood does not flood the log too.
pub(crate) fn log_drop(kind: &str, dropped: u64, domain: &str) {
    if dropped == 1 || dropped.is_multiple_of(1000) {
        tracing::warn!(
            kind,
            domain,
            dropped,
            "report rows at their cap; not counted"
        );
    }
}

/// A random name for this process, so that two nodes flushing at once never write the
/// same key.
pub(crate) fn node_tag() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(86_399), "1970-01-01");
        assert_eq!(day_of(86_400), "1970-01-02");
        assert_eq!(day_bounds("1970-01-02"), Some((86_400, 172_799)));
        assert_eq!(day_bounds("not a day"), None);
    }
}
