//! Command counters and latency histograms over a fixed table of command names.
//!
//! Why a table: a command name comes from the client, and a label value a client chooses
//! would let it create series without bound. Each protocol names the commands it knows
//! ([`IMAP_COMMANDS`], [`SMTP_COMMANDS`], [`POP3_COMMANDS`]); anything else counts as
//! `other`. Every (command, result) counter and every command's histogram is resolved once
//! when the registry is built, so recording is an index into a slice and atomic adds: no
//! hashing, no lock and no allocation per command.

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use std::marker::PhantomData;
use std::time::Duration;

/// The label for a command outside the table.
pub const OTHER: &str = "other";

/// IMAP commands (RFC 9051, RFC 3501 and the extensions Mailfleet implements), as
/// imap-codec names them. `UID FETCH` counts as `FETCH`, and so on.
pub const IMAP_COMMANDS: &[&str] = &[
    "CAPABILITY",
    "NOOP",
    "LOGOUT",
    "STARTTLS",
    "AUTHENTICATE",
    "LOGIN",
    "SELECT",
    "EXAMINE",
    "CREATE",
    "DELETE",
    "RENAME",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LIST",
    "LSUB",
    "NAMESPACE",
    "STATUS",
    "APPEND",
    "IDLE",
    "ENABLE",
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "EXPUNGE",
    "SEARCH",
    "SORT",
    "THREAD",
    "FETCH",
    "STORE",
    "COPY",
    "MOVE",
    "ID",
    "COMPRESS",
    "GETQUOTA",
    "GETQUOTAROOT",
    "SETQUOTA",
    "GETMETADATA",
    "SETMETADATA",
    "NOTIFY",
    "GETACL",
    "SETACL",
    "DELETEACL",
    "LISTRIGHTS",
    "MYRIGHTS",
];

/// SMTP verbs (RFC 5321, with BDAT, STARTTLS and AUTH).
pub const SMTP_COMMANDS: &[&str] = &[
    "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
    "HELP", "STARTTLS", "AUTH",
];

/// POP3 commands (RFC 1939, RFC 2449, RFC 2595, RFC 5034, RFC 6856).
pub const POP3_COMMANDS: &[&str] = &[
    "USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT", "TOP",
    "UIDL", "CAPA", "STLS", "UTF8",
];

/// Latency buckets, in seconds: from a cached NOOP (sub-millisecond) to a FETCH of a large
/// mailbox or a DATA over a slow store (tens of seconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The results a protocol distinguishes (label `result`).
pub trait CommandResult: Copy {
    /// Every label value, in [`Self::index`] order.
    const LABELS: &'static [&'static str];
    fn index(self) -> usize;
    /// The label value of `self` (also the value of a span's status attribute).
    fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// An IMAP command's tagged status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImapStatus {
    Ok,
    No,
    Bad,
}

impl CommandResult for ImapStatus {
    const LABELS: &'static [&'static str] = &["ok", "no", "bad"];
    fn index(self) -> usize {
        self as usize
    }
}

/// An SMTP reply's class (the first digit of its code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpReplyClass {
    C2xx,
    C3xx,
    C4xx,
    C5xx,
}

impl SmtpReplyClass {
    /// The class of a reply code; anything outside 200..=599 is counted as 5xx, which is
    /// what a client would make of it.
    pub fn from_code(code: u16) -> Self {
        match code / 100 {
            2 => SmtpReplyClass::C2xx,
            3 => SmtpReplyClass::C3xx,
            4 => SmtpReplyClass::C4xx,
            _ => SmtpReplyClass::C5xx,
        }
    }
}

impl CommandResult for SmtpReplyClass {
    const LABELS: &'static [&'static str] = &["2xx", "3xx", "4xx", "5xx"];
    fn index(self) -> usize {
        self as usize
    }
}

/// A POP3 status indicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pop3Status {
    Ok,
    Err,
}

impl CommandResult for Pop3Status {
    const LABELS: &'static [&'static str] = &["ok", "err"];
    fn index(self) -> usize {
        self as usize
    }
}

/// A command resolved against a protocol's table (its index; the last one is `other`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandId(usize);

/// One protocol's command series.
pub struct CommandTable<R: CommandResult> {
    names: &'static [&'static str],
    /// `(names.len() + 1) * R::LABELS.len()` counters, row-major by command.
    counters: Box<[IntCounter]>,
    /// One histogram per command, `other` last.
    durations: Box<[Histogram]>,
    _result: PhantomData<R>,
}

impl<R: CommandResult> CommandTable<R> {
    pub(crate) fn new(
        protocol: &'static str,
        names: &'static [&'static str],
        counters: &IntCounterVec,
        durations: &HistogramVec,
    ) -> Self {
        let all = || names.iter().copied().chain(std::iter::once(OTHER));
        let counters = all()
            .flat_map(|cmd| {
                R::LABELS
                    .iter()
                    .map(move |res| counters.with_label_values(&[protocol, cmd, res]))
            })
            .collect();
        let durations = all()
            .map(|cmd| durations.with_label_values(&[protocol, cmd]))
            .collect();
        Self {
            names,
            counters,
            durations,
            _result: PhantomData,
        }
    }

    /// Resolves a command name as the client sent it (any case); unknown names are `other`.
    pub fn command(&self, name: &str) -> CommandId {
        let i = self
            .names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .unwrap_or(self.names.len());
        CommandId(i)
    }

    /// [`Self::command`] of bytes a client sent (not UTF-8: `other`).
    pub fn command_bytes(&self, name: &[u8]) -> CommandId {
        std::str::from_utf8(name).map_or(self.other(), |n| self.command(n))
    }

    /// The command of a line-based protocol's command line (SMTP, POP3): its first word.
    pub fn command_of_line(&self, line: &[u8]) -> CommandId {
        let verb = line
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        self.command_bytes(verb)
    }

    /// The `other` command.
    pub fn other(&self) -> CommandId {
        CommandId(self.names.len())
    }

    /// The label value a command is counted under.
    pub fn label(&self, id: CommandId) -> &'static str {
        self.names.get(id.0).copied().unwrap_or(OTHER)
    }

    /// Counts one completed command and observes how long it took.
    pub fn record(&self, id: CommandId, result: R, elapsed: Duration) {
        let row = id.0.min(self.names.len());
        if let Some(c) = self.counters.get(row * R::LABELS.len() + result.index()) {
            c.inc();
        }
        if let Some(h) = self.durations.get(row) {
            h.observe(elapsed.as_secs_f64());
        }
    }
}
