//! Load generators for Mailfleet's protocol front-ends.
//!
//! All generator logic lives in this library so that the binaries stay thin argument
//! parsers and the integration tests drive exactly the code an operator runs. The first
//! half is protocol-agnostic (latency histograms, summaries, table and JSON rendering) so
//! that every generator reports in the same shape and their numbers can be compared side
//! by side; the SMTP generator follows. The IMAP generator lives in [`imap`].

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub mod hostile;
pub mod imap;
pub mod pop3;
pub mod search;

// ---------------------------------------------------------------------------------------
// Shared reporting helpers
// ---------------------------------------------------------------------------------------

/// Highest latency a histogram tracks: one hour, in microseconds.
///
/// Larger values are clamped rather than dropped so that a pathological stall still shows
/// up as the maximum instead of silently vanishing from the report.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Creates the latency histogram every generator records into (microseconds).
///
/// Three significant digits keep percentile error below 0.1 % while the histogram stays
/// small enough (~200 KB) to give every connection its own copy; per-connection histograms
/// avoid a shared lock on the hot path and are merged once at the end.
pub fn new_latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .map_err(|e| anyhow!("cannot create latency histogram: {e:?}"))
}

/// Records one latency sample, clamping instead of failing on out-of-range values.
pub fn record_latency(hist: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    hist.saturating_record(us.max(1));
}

/// The handful of latency figures an operator looks at, extracted from a histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// Summarises `hist`, or returns `None` when nothing was recorded.
    ///
    /// An empty histogram reports zeros for every quantile, which would read as an
    /// impossibly fast run; returning `None` lets callers print "n/a" instead.
    pub fn from_histogram(hist: &Histogram<u64>) -> Option<Self> {
        if hist.is_empty() {
            return None;
        }
        Some(Self {
            count: hist.len(),
            mean_us: hist.mean(),
            p50_us: hist.value_at_quantile(0.50),
            p90_us: hist.value_at_quantile(0.90),
            p99_us: hist.value_at_quantile(0.99),
            max_us: hist.max(),
        })
    }

    /// Table rows (`latency p50` … `latency max`); "n/a" rows when there is no data so
    /// the table keeps the same shape across runs and stays easy to diff.
    pub fn table_rows(summary: Option<&Self>) -> Vec<(String, String)> {
        let fmt = |v: Option<u64>| v.map_or_else(|| "n/a".to_string(), format_latency_us);
        vec![
            ("latency p50".into(), fmt(summary.map(|s| s.p50_us))),
            ("latency p90".into(), fmt(summary.map(|s| s.p90_us))),
            ("latency p99".into(), fmt(summary.map(|s| s.p99_us))),
            ("latency max".into(), fmt(summary.map(|s| s.max_us))),
        ]
    }

    /// JSON object with the figures in microseconds (integers, so tools need no parsing
    /// of units).
    pub fn to_json(&self) -> String {
        let mut obj = JsonObject::new();
        obj.u64("count", self.count);
        obj.f64("mean", self.mean_us);
        obj.u64("p50", self.p50_us);
        obj.u64("p90", self.p90_us);
        obj.u64("p99", self.p99_us);
        obj.u64("max", self.max_us);
        obj.finish()
    }
}

/// Formats a microsecond latency as milliseconds, with more precision below 10 ms where
/// a single decimal would hide the difference between fast runs.
pub fn format_latency_us(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if us < 10_000 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// Renders `label  value` rows with the values aligned in one column.
pub fn format_table(rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (label, value) in rows {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{label:<width$}{value}");
    }
    out
}

/// Quotes `s` as a JSON string.
///
/// Hand-rolled because the report is a single flat line; pulling serde into a load
/// generator for that would only add build time.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Minimal builder for a flat JSON object, see [`json_string`] for why this exists.
#[derive(Debug)]
pub struct JsonObject {
    buf: String,
}

impl Default for JsonObject {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonObject {
    pub fn new() -> Self {
        Self {
            buf: String::from("{"),
        }
    }

    /// Adds a field whose value is already valid JSON (a nested object or array).
    pub fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        self.buf.push_str(&json_string(key));
        self.buf.push(':');
        self.buf.push_str(json);
        self
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.raw(key, &json_string(value))
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.raw(key, &value.to_string())
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// Adds a float rounded to three decimals; non-finite values become `null` because
    /// JSON has no representation for them.
    pub fn f64(&mut self, key: &str, value: f64) -> &mut Self {
        if value.is_finite() {
            self.raw(key, &format!("{value:.3}"))
        } else {
            self.raw(key, "null")
        }
    }

    /// Adds a `{"key": count}` object, e.g. failures by reason.
    pub fn counts(&mut self, key: &str, counts: &BTreeMap<String, u64>) -> &mut Self {
        let mut inner = JsonObject::new();
        for (k, v) in counts {
            inner.u64(k, *v);
        }
        self.raw(key, &inner.finish())
    }

    pub fn finish(&self) -> String {
        format!("{}}}", self.buf)
    }
}

/// Formats `{"550": 3, "timeout": 1}` as `550: 3, timeout: 1` for the table.
pub fn format_counts(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// SMTP replies
// ---------------------------------------------------------------------------------------

/// Longest reply line accepted, including CRLF.
///
/// RFC 5321 caps reply lines at 512 octets; we allow eight times that to tolerate sloppy
/// servers while still bounding memory if a peer streams bytes without a newline.
pub const MAX_REPLY_LINE: usize = 4096;

/// Most lines accepted in one multi-line reply, for the same memory-bounding reason.
pub const MAX_REPLY_LINES: usize = 128;

/// A complete (possibly multi-line) SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    /// Text of each line after the code and separator, without CRLF.
    pub lines: Vec<String>,
}

impl SmtpReply {
    /// 2xx and 3xx replies mean "go on"; 4xx and 5xx are the failures we count.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// Whether an EHLO reply advertises `keyword` (case-insensitive, per RFC 5321 the
    /// first line is the greeting and each further line starts with one keyword).
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|line| {
            line.split_ascii_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// One-line rendering for error messages.
    pub fn summary(&self) -> String {
        format!(
            "{} {}",
            self.code,
            self.lines.first().map(String::as_str).unwrap_or("")
        )
    }
}

/// One parsed reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    /// `false` for `250-` continuation lines, `true` for the final `250 ` line.
    pub last: bool,
    pub text: String,
}

/// Parses a single reply line (`250-PIPELINING\r\n`, `250 OK\r\n`, or a bare `250\r\n`).
pub fn parse_reply_line(line: &[u8]) -> Result<ReplyLine, SmtpError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let malformed = || {
        SmtpError::Protocol(format!(
            "malformed reply line {:?}",
            String::from_utf8_lossy(&line[..line.len().min(80)])
        ))
    };
    let (digits, rest) = match line {
        [a, b, c, rest @ ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            ([*a, *b, *c], rest)
        }
        _ => return Err(malformed()),
    };
    // RFC 5321 reply codes start with 2, 3, 4 or 5; anything else means we are out of
    // sync with the server and must not guess.
    if !(b'2'..=b'5').contains(&digits[0]) {
        return Err(malformed());
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let (last, text) = match rest {
        [] => (true, &[][..]),
        [b' ', text @ ..] => (true, text),
        [b'-', text @ ..] => (false, text),
        _ => return Err(malformed()),
    };
    Ok(ReplyLine {
        code,
        last,
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

/// Reads one complete reply, following `NNN-` continuation lines until the `NNN ` line.
pub async fn read_reply<R>(reader: &mut R) -> Result<SmtpReply, SmtpError>
where
    R: AsyncBufRead + Unpin,
{
    let mut buf = Vec::with_capacity(128);
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        buf.clear();
        let n = (&mut *reader)
            .take(MAX_REPLY_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if buf.last() != Some(&b'\n') {
            if n >= MAX_REPLY_LINE {
                return Err(SmtpError::Protocol(format!(
                    "reply line longer than {MAX_REPLY_LINE} bytes"
                )));
            }
            return Err(SmtpError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a complete reply",
            )));
        }
        let line = parse_reply_line(&buf)?;
        match code {
            None => code = Some(line.code),
            Some(first) if first != line.code => {
                return Err(SmtpError::Protocol(format!(
                    "reply code changed from {first} to {} inside a multi-line reply",
                    line.code
                )));
            }
            Some(_) => {}
        }
        lines.push(line.text);
        if line.last {
            return Ok(SmtpReply {
                code: line.code,
                lines,
            });
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(SmtpError::Protocol(format!(
                "multi-line reply longer than {MAX_REPLY_LINES} lines"
            )));
        }
    }
}

/// Why an SMTP exchange did not complete.
#[derive(Debug)]
pub enum SmtpError {
    /// Socket error, including the peer closing the connection.
    Io(io::Error),
    /// The server did not answer within the per-operation timeout.
    Timeout,
    /// The run's `--duration-secs` cap was reached; not the server's fault.
    Deadline,
    /// The server sent something that is not valid SMTP at this point.
    Protocol(String),
    /// The server answered with a 4xx or 5xx reply.
    Rejected(SmtpReply),
}

impl SmtpError {
    /// Key under which this failure is counted in the report. Reply codes are kept
    /// verbatim because "450 vs 550" is usually the first question when a run fails.
    pub fn failure_key(&self) -> String {
        match self {
            SmtpError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                "connection closed".into()
            }
            SmtpError::Io(_) => "io error".into(),
            SmtpError::Timeout => "timeout".into(),
            SmtpError::Deadline => "deadline".into(),
            SmtpError::Protocol(_) => "protocol error".into(),
            SmtpError::Rejected(reply) => reply.code.to_string(),
        }
    }
}

impl fmt::Display for SmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmtpError::Io(e) => write!(f, "i/o error: {e}"),
            SmtpError::Timeout => f.write_str("timed out waiting for the server"),
            SmtpError::Deadline => f.write_str("run duration cap reached"),
            SmtpError::Protocol(why) => write!(f, "protocol error: {why}"),
            SmtpError::Rejected(reply) => write!(f, "rejected: {}", reply.summary()),
        }
    }
}

impl std::error::Error for SmtpError {}

impl From<io::Error> for SmtpError {
    fn from(e: io::Error) -> Self {
        SmtpError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------
// Message generation
// ---------------------------------------------------------------------------------------

/// Body line length; 76 keeps us well under RFC 5322's 78-character recommendation.
const BODY_LINE_LEN: usize = 76;

/// Printable ASCII without space (0x21..=0x7E); spaces are inserted separately so that
/// lines never start or end with whitespace.
const BODY_ALPHABET: &[u8; 94] = b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

/// Step through the alphabet between lines; coprime with 94 so that every character
/// (including '.') begins some line within any 94 consecutive lines.
const BODY_LINE_STRIDE: usize = 31;

/// Index of '.' in [`BODY_ALPHABET`].
const DOT_INDEX: usize = 13;

/// Builds the test messages for one run.
///
/// The body only depends on the requested size, so it is generated and dot-stuffed once
/// and shared by all connections; per message only the headers (Date, Subject,
/// Message-ID) are rendered. That keeps the generator's CPU use low, which matters when
/// it shares a small machine with the server under test.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    /// Value of the `X-Mailfleet-Load` header: the generator that made the message.
    generator: &'static str,
    from: String,
    to_header: String,
    domain: String,
    run_id: String,
    body: Vec<u8>,
    body_stuffed: Vec<u8>,
}

impl MessageTemplate {
    /// Prepares messages from `from` to `rcpts` of roughly `size` bytes in total
    /// (headers plus body, before dot-stuffing).
    pub fn new(from: &str, rcpts: &[String], size: usize) -> Self {
        Self::for_generator("smtp-load", from, rcpts, size)
    }

    /// Like [`MessageTemplate::new`], but marks the messages with `generator` in the
    /// `X-Mailfleet-Load` header (e.g. `imap-load` for messages stored with APPEND).
    pub fn for_generator(
        generator: &'static str,
        from: &str,
        rcpts: &[String],
        size: usize,
    ) -> Self {
        let domain = from
            .rsplit_once('@')
            .map(|(_, d)| d)
            .filter(|d| !d.is_empty())
            .unwrap_or("load.test")
            .to_string();
        // Folding every recipient onto its own line keeps the To header under the 998
        // character limit however many --rcpt flags are given.
        let to_header = format!("To: {}\r\n", rcpts.join(",\r\n "));
        let mut template = Self {
            generator,
            from: from.to_string(),
            to_header,
            domain,
            run_id: run_id(),
            body: Vec::new(),
            body_stuffed: Vec::new(),
        };
        let header_len = template.headers(0, SystemTime::now()).len();
        template.body = generate_body(size.saturating_sub(header_len));
        dot_stuff(&template.body, &mut template.body_stuffed);
        template
    }

    fn headers(&self, seq: u64, now: SystemTime) -> String {
        format!(
            "Date: {date}\r\n\
             From: {from}\r\n\
             {to}\
             Subject: Mailfleet load test message {seq}\r\n\
             Message-ID: <{seq}.{run}@{domain}>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             X-Mailfleet-Load: {generator}\r\n\
             \r\n",
            generator = self.generator,
            date = rfc5322_date(now),
            from = self.from,
            to = self.to_header,
            run = self.run_id,
            domain = self.domain,
        )
    }

    /// The message `seq` as RFC 5322 text (CRLF line endings, not dot-stuffed).
    pub fn render(&self, seq: u64, now: SystemTime) -> Vec<u8> {
        let headers = self.headers(seq, now);
        let mut out = Vec::with_capacity(headers.len() + self.body.len());
        out.extend_from_slice(headers.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// The bytes to send after the server's 354: the dot-stuffed message followed by the
    /// `.` terminator. Also returns the unstuffed message size for throughput figures.
    pub fn wire(&self, seq: u64, now: SystemTime) -> (Vec<u8>, usize) {
        let headers = self.headers(seq, now);
        let mut out = Vec::with_capacity(headers.len() + self.body_stuffed.len() + 8);
        dot_stuff(headers.as_bytes(), &mut out);
        out.extend_from_slice(&self.body_stuffed);
        // The body always ends in CRLF, so this yields the required CRLF.CRLF.
        out.extend_from_slice(b".\r\n");
        (out, headers.len() + self.body.len())
    }
}

/// A per-run identifier for Message-IDs, so that repeated runs against the same server
/// never produce duplicate IDs (some stores deduplicate on Message-ID).
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}.{:x}", nanos, std::process::id())
}

/// Generates `len` bytes (at least one line) of printable ASCII body lines, each at most
/// [`BODY_LINE_LEN`] characters plus CRLF.
///
/// The rotation is arranged so the second line starts with '.', meaning every message
/// larger than a few hundred bytes exercises the server's dot-unstuffing path.
pub fn generate_body(len: usize) -> Vec<u8> {
    let mut remaining = len.max(3);
    let mut body = Vec::with_capacity(remaining);
    let mut line_no = 0usize;
    while remaining >= 3 {
        let chars = (remaining - 2).min(BODY_LINE_LEN);
        let start = (DOT_INDEX + line_no * BODY_LINE_STRIDE + (94 - BODY_LINE_STRIDE)) % 94;
        for j in 0..chars {
            // A space every eight characters makes the text wrap-friendly for anything
            // that displays it, but never as the first or last character of a line.
            if j % 8 == 7 && j + 1 < chars {
                body.push(b' ');
            } else {
                body.push(BODY_ALPHABET[(start + j) % 94]);
            }
        }
        body.extend_from_slice(b"\r\n");
        remaining -= chars + 2;
        line_no += 1;
    }
    body
}

/// Appends `data` to `out` with SMTP dot-stuffing (RFC 5321 §4.5.2): every line that
/// starts with '.' gets an extra '.', so the server cannot mistake it for the terminator.
pub fn dot_stuff(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len());
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
}

/// Formats `t` as an RFC 5322 date in UTC, e.g. `Thu, 01 Jan 1970 00:00:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let sod = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0)];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
/// Implemented here because the crate deliberately avoids a date-time dependency.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

// ---------------------------------------------------------------------------------------
// SMTP load generator
// ---------------------------------------------------------------------------------------

/// Settings for one SMTP load run; see the crate README for what each one means.
#[derive(Debug, Clone)]
pub struct SmtpLoadConfig {
    /// `HOST:PORT` of each front-end; connections are assigned round-robin.
    pub targets: Vec<String>,
    /// Concurrent connections (workers).
    pub connections: usize,
    /// Total messages to attempt across all connections.
    pub messages: u64,
    /// Hard cap on the run; in-flight messages are abandoned when it expires.
    pub duration: Duration,
    /// Approximate size of each message (headers + body) in bytes.
    pub message_size: usize,
    pub from: String,
    pub rcpts: Vec<String>,
    /// Reconnect after this many messages so that connection setup stays in the mix.
    pub messages_per_connection: u64,
    /// Pipeline MAIL/RCPT/DATA when the server advertises PIPELINING.
    pub pipelining: bool,
    /// Name sent in EHLO.
    pub ehlo_name: String,
    /// Longest wait for any single connect, write or reply before the connection is
    /// considered failed.
    pub io_timeout: Duration,
}

impl Default for SmtpLoadConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            connections: 50,
            messages: 5000,
            duration: Duration::from_secs(120),
            message_size: 10_240,
            from: "sender@load.test".into(),
            rcpts: vec!["load@example.test".into()],
            messages_per_connection: 100,
            pipelining: false,
            ehlo_name: "smtp-load.localhost".into(),
            io_timeout: Duration::from_secs(30),
        }
    }
}

impl SmtpLoadConfig {
    /// Rejects settings that would make the run meaningless or let user input inject
    /// extra SMTP commands (addresses end up verbatim on the command line).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.targets.is_empty() {
            bail!("at least one --target is required");
        }
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.messages == 0 {
            bail!("--messages must be at least 1");
        }
        if self.messages_per_connection == 0 {
            bail!("--messages-per-connection must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration-secs must be at least 1");
        }
        if self.io_timeout.is_zero() {
            bail!("the I/O timeout must be non-zero");
        }
        if self.rcpts.is_empty() {
            bail!("at least one --rcpt is required");
        }
        validate_address("--from", &self.from)?;
        for rcpt in &self.rcpts {
            validate_address("--rcpt", rcpt)?;
        }
        if self.ehlo_name.is_empty() || !self.ehlo_name.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("invalid EHLO name {:?}", self.ehlo_name);
        }
        Ok(())
    }
}

/// Accepts plain ASCII addresses only: no whitespace, control characters or angle
/// brackets (which would break out of `<...>`), and at most RFC 5321's 254 octets.
fn validate_address(flag: &str, addr: &str) -> anyhow::Result<()> {
    let ok = !addr.is_empty()
        && addr.len() <= 254
        && addr
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
    if !ok {
        bail!("{flag}: {addr:?} is not a plain ASCII mail address");
    }
    Ok(())
}

/// Outcome of an SMTP load run.
#[derive(Debug, Clone)]
pub struct SmtpLoadReport {
    pub targets: Vec<String>,
    pub connections: usize,
    pub message_size: usize,
    /// Messages the run was asked to send.
    pub budget: u64,
    pub pipelining_requested: bool,
    /// Sessions that got past EHLO.
    pub sessions: u64,
    /// Of those, sessions that actually pipelined (server advertised PIPELINING).
    pub pipelined_sessions: u64,
    /// Messages accepted with a final 2xx after DATA.
    pub ok: u64,
    /// Messages that got a 4xx/5xx reply or lost their connection.
    pub failed: u64,
    /// Failed messages by reason: the reply code (`"550"`) or `timeout`, `io error`, …
    pub failures: BTreeMap<String, u64>,
    /// Connections that failed (connect, greeting, EHLO or mid-session), by reason.
    pub connection_failures: BTreeMap<String, u64>,
    /// Messages in flight when the duration cap hit; neither ok nor failed.
    pub interrupted: u64,
    /// Sum of the (unstuffed) sizes of accepted messages.
    pub ok_bytes: u64,
    pub elapsed: Duration,
    /// Per-message latency in µs, from sending MAIL FROM to the final reply after DATA,
    /// for accepted messages only (failures would otherwise skew it towards fast errors).
    pub latency: Histogram<u64>,
}

impl SmtpLoadReport {
    /// Whether the run counts as a success for the exit code: at least one message got
    /// through. Partial failures are visible in the table rather than the exit status.
    pub fn succeeded(&self) -> bool {
        self.ok > 0
    }

    /// True when the duration cap stopped the run before the message budget was used.
    pub fn stopped_by_deadline(&self) -> bool {
        self.ok + self.failed < self.budget
    }

    pub fn messages_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.ok_bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn latency_summary(&self) -> Option<LatencySummary> {
        LatencySummary::from_histogram(&self.latency)
    }

    /// Human-readable table; optional rows only appear when they carry information so
    /// the common all-good case stays short.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("targets".into(), self.targets.join(", ")),
            ("connections".into(), self.connections.to_string()),
            ("message size".into(), format!("{} B", self.message_size)),
        ];
        if self.pipelining_requested {
            rows.push((
                "pipelining".into(),
                format!("{} of {} sessions", self.pipelined_sessions, self.sessions),
            ));
        }
        rows.push((
            "sent".into(),
            format!("{} ok, {} failed", self.ok, self.failed),
        ));
        if !self.failures.is_empty() {
            rows.push(("failures".into(), format_counts(&self.failures)));
        }
        if !self.connection_failures.is_empty() {
            rows.push((
                "conn failures".into(),
                format_counts(&self.connection_failures),
            ));
        }
        if self.stopped_by_deadline() {
            rows.push((
                "stopped".into(),
                format!(
                    "duration cap hit after {} of {} messages ({} in flight)",
                    self.ok + self.failed,
                    self.budget,
                    self.interrupted
                ),
            ));
        }
        rows.push((
            "elapsed".into(),
            format!("{:.2} s", self.elapsed.as_secs_f64()),
        ));
        rows.push((
            "throughput".into(),
            format!(
                "{:.1} msg/s   ({:.1} MiB/s)",
                self.messages_per_sec(),
                self.mib_per_sec()
            ),
        ));
        let summary = self.latency_summary();
        rows.extend(LatencySummary::table_rows(summary.as_ref()));
        format_table(&rows)
    }

    /// The same figures as one JSON line, for scripts that track results over time.
    pub fn to_json(&self) -> String {
        let targets = format!(
            "[{}]",
            self.targets
                .iter()
                .map(|t| json_string(t))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut obj = JsonObject::new();
        obj.str("protocol", "smtp")
            .raw("targets", &targets)
            .u64("connections", self.connections as u64)
            .u64("message_size", self.message_size as u64)
            .u64("budget", self.budget)
            .bool("pipelining", self.pipelining_requested)
            .u64("sessions", self.sessions)
            .u64("pipelined_sessions", self.pipelined_sessions)
            .u64("ok", self.ok)
            .u64("failed", self.failed)
            .counts("failures", &self.failures)
            .counts("connection_failures", &self.connection_failures)
            .u64("interrupted", self.interrupted)
            .bool("stopped_by_deadline", self.stopped_by_deadline())
            .u64("ok_bytes", self.ok_bytes)
            .f64("elapsed_secs", self.elapsed.as_secs_f64())
            .f64("msgs_per_sec", self.messages_per_sec())
            .f64("mib_per_sec", self.mib_per_sec());
        match self.latency_summary() {
            Some(s) => obj.raw("latency_us", &s.to_json()),
            None => obj.raw("latency_us", "null"),
        };
        obj.finish()
    }
}

/// Runs an SMTP load test as described by `cfg` and returns the aggregated report.
///
/// Always returns by `cfg.duration` (plus at most a few milliseconds of wind-down):
/// every network operation is bounded by the run deadline, so an unresponsive server
/// cannot hang the generator. Errors are returned only for invalid configuration or
/// unresolvable targets; server failures end up in the report.
pub async fn run_smtp_load(cfg: SmtpLoadConfig) -> anyhow::Result<SmtpLoadReport> {
    cfg.validate()?;
    // Resolve once up front: a typo fails immediately instead of as thousands of
    // connection failures, and reconnects don't add DNS lookups to the measurement.
    let mut addrs = Vec::with_capacity(cfg.targets.len());
    for target in &cfg.targets {
        let addr = tokio::net::lookup_host(target.as_str())
            .await
            .with_context(|| format!("cannot resolve target {target:?}"))?
            .next()
            .ok_or_else(|| anyhow!("target {target:?} resolved to no addresses"))?;
        addrs.push(addr);
    }

    let template = MessageTemplate::new(&cfg.from, &cfg.rcpts, cfg.message_size);
    let mut envelope = format!("MAIL FROM:<{}>\r\n", cfg.from);
    for rcpt in &cfg.rcpts {
        let _ = write!(envelope, "RCPT TO:<{rcpt}>\r\n");
    }
    // More workers than messages would only open idle connections.
    let workers = usize::try_from(cfg.messages).map_or(cfg.connections, |m| cfg.connections.min(m));

    let start = Instant::now();
    let shared = Arc::new(Shared {
        mail_cmd: format!("MAIL FROM:<{}>\r\n", cfg.from),
        rcpt_cmds: cfg
            .rcpts
            .iter()
            .map(|r| format!("RCPT TO:<{r}>\r\n"))
            .collect(),
        pipelined_envelope: format!("{envelope}DATA\r\n"),
        ehlo_cmd: format!("EHLO {}\r\n", cfg.ehlo_name),
        template,
        budget: cfg.messages,
        next_seq: AtomicU64::new(0),
        deadline: start + cfg.duration,
        cfg,
    });

    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..workers {
        let stats = WorkerStats::new()?;
        tasks.spawn(worker(
            Arc::clone(&shared),
            id,
            addrs[id % addrs.len()],
            stats,
        ));
    }

    let mut report = SmtpLoadReport {
        targets: shared.cfg.targets.clone(),
        connections: workers,
        message_size: shared.cfg.message_size,
        budget: shared.budget,
        pipelining_requested: shared.cfg.pipelining,
        sessions: 0,
        pipelined_sessions: 0,
        ok: 0,
        failed: 0,
        failures: BTreeMap::new(),
        connection_failures: BTreeMap::new(),
        interrupted: 0,
        ok_bytes: 0,
        elapsed: Duration::ZERO,
        latency: new_latency_histogram()?,
    };
    while let Some(joined) = tasks.join_next().await {
        let stats = joined.context("load worker panicked")?;
        report.sessions += stats.sessions;
        report.pipelined_sessions += stats.pipelined_sessions;
        report.ok += stats.ok;
        report.failed += stats.failed;
        report.interrupted += stats.interrupted;
        report.ok_bytes += stats.ok_bytes;
        merge_counts(&mut report.failures, stats.failures);
        merge_counts(&mut report.connection_failures, stats.connection_failures);
        report
            .latency
            .add(&stats.latency)
            .map_err(|e| anyhow!("cannot merge latency histograms: {e:?}"))?;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

fn merge_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// State shared by all workers of a run; read-only apart from the message counter.
struct Shared {
    cfg: SmtpLoadConfig,
    template: MessageTemplate,
    mail_cmd: String,
    rcpt_cmds: Vec<String>,
    /// MAIL, all RCPTs and DATA in one buffer, written with a single syscall when
    /// pipelining (RFC 2920 allows DATA as the last command of a group).
    pipelined_envelope: String,
    ehlo_cmd: String,
    budget: u64,
    /// Next message sequence number; claiming a number is claiming budget.
    next_seq: AtomicU64,
    deadline: Instant,
}

impl Shared {
    /// Claims the next message slot, or `None` when the budget is spent or time is up.
    fn claim(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        (seq < self.budget).then_some(seq)
    }

    fn budget_left(&self) -> bool {
        self.next_seq.load(Ordering::Relaxed) < self.budget
    }
}

/// Per-worker counters, merged after the run so the hot path needs no locks.
struct WorkerStats {
    sessions: u64,
    pipelined_sessions: u64,
    ok: u64,
    failed: u64,
    interrupted: u64,
    ok_bytes: u64,
    failures: BTreeMap<String, u64>,
    connection_failures: BTreeMap<String, u64>,
    latency: Histogram<u64>,
}

impl WorkerStats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sessions: 0,
            pipelined_sessions: 0,
            ok: 0,
            failed: 0,
            interrupted: 0,
            ok_bytes: 0,
            failures: BTreeMap::new(),
            connection_failures: BTreeMap::new(),
            latency: new_latency_histogram()?,
        })
    }

    fn message_failed(&mut self, reason: String) {
        self.failed += 1;
        *self.failures.entry(reason).or_default() += 1;
    }

    fn connection_failed(&mut self, reason: String) {
        *self.connection_failures.entry(reason).or_default() += 1;
    }
}

/// How a session ended, which decides what the worker does next.
enum SessionEnd {
    /// Budget spent or deadline reached: the worker is done.
    Stop,
    /// `--messages-per-connection` reached: reconnect immediately.
    Recycle,
    /// The connection failed; reconnect after a backoff.
    Failed {
        /// Whether EHLO succeeded, i.e. the server was reachable and healthy enough to
        /// reset the backoff.
        established: bool,
    },
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Longest wait for the server's QUIT reply; we don't care about it beyond being polite.
const QUIT_GRACE: Duration = Duration::from_secs(2);

/// One connection's worth of work, repeated until the budget or the deadline runs out.
async fn worker(
    shared: Arc<Shared>,
    id: usize,
    addr: SocketAddr,
    mut stats: WorkerStats,
) -> WorkerStats {
    let mut backoff = BACKOFF_MIN;
    while shared.budget_left() && Instant::now() < shared.deadline {
        match session(&shared, addr, &mut stats).await {
            SessionEnd::Stop => break,
            SessionEnd::Recycle => backoff = BACKOFF_MIN,
            SessionEnd::Failed { established } => {
                if established {
                    backoff = BACKOFF_MIN;
                }
                // Spread workers' retries a little so a restarting server is not hit by
                // every connection in the same millisecond.
                let spread = 1.0 + (id % 8) as f64 / 16.0;
                let wake = Instant::now() + backoff.mul_f64(spread);
                tokio::time::sleep_until(wake.min(shared.deadline)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    stats
}

/// Runs one SMTP session: connect, greeting, EHLO, up to `messages_per_connection`
/// messages, QUIT. Counts everything into `stats`.
async fn session(shared: &Shared, addr: SocketAddr, stats: &mut WorkerStats) -> SessionEnd {
    let deadline = shared.deadline;
    let io_timeout = shared.cfg.io_timeout;
    let connected = bounded(deadline, io_timeout, async {
        TcpStream::connect(addr).await.map_err(SmtpError::from)
    })
    .await;
    let stream = match connected {
        Ok(stream) => stream,
        Err(SmtpError::Deadline) => return SessionEnd::Stop,
        Err(SmtpError::Io(e)) => {
            stats.connection_failed(format!("connect: {}", e.kind()));
            return SessionEnd::Failed { established: false };
        }
        Err(e) => {
            stats.connection_failed(format!("connect: {}", e.failure_key()));
            return SessionEnd::Failed { established: false };
        }
    };
    // Commands are small writes answered by small replies; with Nagle's algorithm and
    // delayed ACKs they can stall ~40 ms each, which would be measured as server latency.
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut conn = Conn {
        reader: BufReader::new(reader),
        writer,
        deadline,
        io_timeout,
    };

    let greeting = conn.reply().await.and_then(|r| expect(r, 2));
    if let Err(e) = greeting {
        return connection_error(stats, "greeting", e, false);
    }
    let ehlo = match conn
        .command(&shared.ehlo_cmd)
        .await
        .and_then(|r| expect(r, 2))
    {
        Ok(reply) => reply,
        Err(e) => return connection_error(stats, "ehlo", e, false),
    };
    stats.sessions += 1;
    let pipelining = shared.cfg.pipelining && ehlo.has_extension("PIPELINING");
    if pipelining {
        stats.pipelined_sessions += 1;
    }

    for _ in 0..shared.cfg.messages_per_connection {
        let Some(seq) = shared.claim() else {
            conn.quit().await;
            return SessionEnd::Stop;
        };
        let (wire, size) = shared.template.wire(seq, SystemTime::now());
        let started = Instant::now();
        let result = if pipelining {
            send_pipelined(&mut conn, shared, &wire).await
        } else {
            send_lockstep(&mut conn, shared, &wire).await
        };
        match result {
            Ok(()) => {
                record_latency(&mut stats.latency, started.elapsed());
                stats.ok += 1;
                stats.ok_bytes += size as u64;
            }
            Err(SmtpError::Deadline) => {
                stats.interrupted += 1;
                return SessionEnd::Stop;
            }
            // 421 means the server is closing the connection; anything else after a
            // rejection leaves the session usable once the transaction is reset.
            Err(SmtpError::Rejected(reply)) if reply.code != 421 => {
                stats.message_failed(reply.code.to_string());
                match conn.command("RSET\r\n").await.and_then(|r| expect(r, 2)) {
                    Ok(_) => {}
                    Err(e) => return connection_error(stats, "rset", e, true),
                }
            }
            Err(e) => {
                stats.message_failed(e.failure_key());
                return connection_error(stats, "session", e, true);
            }
        }
    }
    conn.quit().await;
    SessionEnd::Recycle
}

/// Counts a connection-level failure (unless it is just the deadline) and tells the
/// worker how to continue.
fn connection_error(
    stats: &mut WorkerStats,
    stage: &str,
    err: SmtpError,
    established: bool,
) -> SessionEnd {
    if let SmtpError::Deadline = err {
        return SessionEnd::Stop;
    }
    stats.connection_failed(format!("{stage}: {}", err.failure_key()));
    SessionEnd::Failed { established }
}

/// Sends one message waiting for each reply before the next command.
async fn send_lockstep(conn: &mut Conn, shared: &Shared, wire: &[u8]) -> Result<(), SmtpError> {
    expect(conn.command(&shared.mail_cmd).await?, 2)?;
    for rcpt in &shared.rcpt_cmds {
        expect(conn.command(rcpt).await?, 2)?;
    }
    expect(conn.command("DATA\r\n").await?, 3)?;
    conn.send(wire).await?;
    expect(conn.reply().await?, 2)?;
    Ok(())
}

/// Sends MAIL, RCPTs and DATA in one write and then reads their replies in order
/// (RFC 2920). All replies must be consumed even after a rejection, or the next
/// transaction would read stale replies.
async fn send_pipelined(conn: &mut Conn, shared: &Shared, wire: &[u8]) -> Result<(), SmtpError> {
    conn.send(shared.pipelined_envelope.as_bytes()).await?;
    let mut first_rejection = None;
    for _ in 0..=shared.rcpt_cmds.len() {
        if let Err(e) = expect(conn.reply().await?, 2) {
            match e {
                SmtpError::Rejected(_) => {
                    first_rejection.get_or_insert(e);
                }
                other => return Err(other),
            }
        }
    }
    let data = conn.reply().await?;
    if data.code != 354 {
        // The server refused DATA (normally because MAIL or every RCPT failed); report
        // the earliest cause, which is the actionable one.
        return Err(first_rejection.unwrap_or_else(|| match expect(data, 3) {
            Err(e) => e,
            Ok(reply) => SmtpError::Protocol(format!("unexpected DATA reply {}", reply.summary())),
        }));
    }
    // Once the server said 354 the message must be sent even if some recipient was
    // refused; the refusal still marks the message as failed.
    conn.send(wire).await?;
    expect(conn.reply().await?, 2)?;
    match first_rejection {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Checks that `reply` is in class `class` (2 for 2xx, 3 for 3xx).
///
/// 4xx/5xx become [`SmtpError::Rejected`] and are counted by code; a positive reply of
/// the wrong class (e.g. 250 to DATA) means client and server disagree about the
/// protocol state, which is a protocol error.
fn expect(reply: SmtpReply, class: u16) -> Result<SmtpReply, SmtpError> {
    if reply.code / 100 == class {
        Ok(reply)
    } else if reply.is_positive() {
        Err(SmtpError::Protocol(format!(
            "expected a {class}xx reply, got {}",
            reply.summary()
        )))
    } else {
        Err(SmtpError::Rejected(reply))
    }
}

/// Runs `fut` bounded by both the per-operation timeout and the run deadline, and says
/// which of the two expired, because only the former is the server's fault.
async fn bounded<T, F>(deadline: Instant, io_timeout: Duration, fut: F) -> Result<T, SmtpError>
where
    F: Future<Output = Result<T, SmtpError>>,
{
    let op_deadline = Instant::now() + io_timeout;
    let (limit, is_run_deadline) = if deadline <= op_deadline {
        (deadline, true)
    } else {
        (op_deadline, false)
    };
    match tokio::time::timeout_at(limit, fut).await {
        Ok(result) => result,
        Err(_) if is_run_deadline => Err(SmtpError::Deadline),
        Err(_) => Err(SmtpError::Timeout),
    }
}

/// An established SMTP connection with its buffered reader.
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    deadline: Instant,
    io_timeout: Duration,
}

impl Conn {
    async fn reply(&mut self) -> Result<SmtpReply, SmtpError> {
        let reader = &mut self.reader;
        bounded(self.deadline, self.io_timeout, read_reply(reader)).await
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), SmtpError> {
        let writer = &mut self.writer;
        bounded(self.deadline, self.io_timeout, async move {
            writer.write_all(bytes).await.map_err(SmtpError::from)
        })
        .await
    }

    async fn command(&mut self, line: &str) -> Result<SmtpReply, SmtpError> {
        self.send(line.as_bytes()).await?;
        self.reply().await
    }

    /// Says goodbye politely but briefly; the reply does not affect the results.
    async fn quit(&mut self) {
        let limit = (Instant::now() + QUIT_GRACE).min(self.deadline);
        let _ = tokio::time::timeout_at(limit, async {
            self.writer.write_all(b"QUIT\r\n").await?;
            read_reply(&mut self.reader).await
        })
        .await;
        let _ = self.writer.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(data: &[u8]) -> Vec<&[u8]> {
        let mut out: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        // split leaves an empty tail after the final '\n'.
        assert_eq!(out.pop(), Some(&b""[..]), "data must end with a newline");
        out
    }

    fn template(size: usize) -> MessageTemplate {
        MessageTemplate::new(
            "sender@load.test",
            &["a@example.test".to_string(), "b@example.test".to_string()],
            size,
        )
    }

    #[test]
    fn message_size_is_roughly_honoured() {
        for size in [512usize, 1024, 10_240, 100_000] {
            let msg = template(size).render(12_345, SystemTime::now());
            let diff = msg.len().abs_diff(size);
            assert!(diff <= 16, "size {size}: got {} bytes", msg.len());
        }
    }

    #[test]
    fn tiny_size_still_yields_a_body() {
        let msg = template(10).render(1, SystemTime::now());
        let text = String::from_utf8(msg).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(!body.is_empty());
    }

    #[test]
    fn message_uses_crlf_and_short_printable_lines() {
        let msg = template(10_240).render(7, SystemTime::now());
        assert!(msg.ends_with(b"\r\n"));
        let mut in_body = false;
        for line in lines(&msg) {
            assert!(line.ends_with(b"\r"), "bare LF in {line:?}");
            let line = &line[..line.len() - 1];
            assert!(!line.contains(&b'\r'), "bare CR in {line:?}");
            assert!(line.len() <= 998);
            assert!(line.iter().all(|b| (0x20..0x7f).contains(b)));
            if in_body {
                assert!(line.len() <= 76, "body line of {} chars", line.len());
            }
            if line.is_empty() {
                in_body = true;
            }
        }
        assert!(in_body, "no header/body separator");
    }

    #[test]
    fn headers_carry_sequence_and_unique_message_id() {
        let t = template(2048);
        let a = String::from_utf8(t.render(1, SystemTime::now())).unwrap();
        let b = String::from_utf8(t.render(2, SystemTime::now())).unwrap();
        assert!(a.contains("\r\nSubject: Mailfleet load test message 1\r\n"));
        assert!(a.contains("\r\nFrom: sender@load.test\r\n"));
        assert!(a.contains("\r\nTo: a@example.test,\r\n b@example.test\r\n"));
        assert!(a.starts_with("Date: "));
        let id = |m: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix("Message-ID: "))
                .unwrap()
                .to_string()
        };
        assert!(id(&a).ends_with("@load.test>"));
        assert_ne!(id(&a), id(&b));
    }

    #[test]
    fn many_recipients_keep_lines_short() {
        let rcpts: Vec<String> = (0..200).map(|i| format!("user{i}@example.test")).collect();
        let msg = MessageTemplate::new("s@load.test", &rcpts, 1024).render(1, SystemTime::now());
        assert!(lines(&msg).iter().all(|l| l.len() <= 999));
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_only() {
        let mut out = Vec::new();
        dot_stuff(b".start\r\nmid.dle\r\n.\r\n..two\r\n", &mut out);
        assert_eq!(out, b"..start\r\nmid.dle\r\n..\r\n...two\r\n");
    }

    #[test]
    fn wire_form_is_stuffed_and_terminated() {
        let t = template(10_240);
        let now = SystemTime::now();
        let raw = t.render(3, now);
        let (wire, size) = t.wire(3, now);
        assert_eq!(size, raw.len());
        // The generated body deliberately contains lines starting with '.'.
        assert!(raw.windows(3).any(|w| w == b"\r\n."));
        assert!(wire.ends_with(b"\r\n.\r\n"));
        let payload = &wire[..wire.len() - 3];
        // The terminator must not appear anywhere inside the payload.
        assert!(!payload.windows(5).any(|w| w == b"\r\n.\r\n"));
        // Un-stuffing gives back the original message.
        let mut unstuffed = Vec::new();
        for line in lines(payload) {
            let line = line.strip_prefix(b".").unwrap_or(line);
            unstuffed.extend_from_slice(line);
            unstuffed.push(b'\n');
        }
        assert_eq!(unstuffed, raw);
    }

    #[test]
    fn rfc5322_dates() {
        let at = |secs| rfc5322_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(at(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000");
    }

    #[test]
    fn reply_line_variants() {
        let l = parse_reply_line(b"250-PIPELINING\r\n").unwrap();
        assert_eq!(
            (l.code, l.last, l.text.as_str()),
            (250, false, "PIPELINING")
        );
        let l = parse_reply_line(b"354 Go ahead\r\n").unwrap();
        assert_eq!((l.code, l.last, l.text.as_str()), (354, true, "Go ahead"));
        let l = parse_reply_line(b"250\r\n").unwrap();
        assert_eq!((l.code, l.last, l.text.as_str()), (250, true, ""));
        let l = parse_reply_line(b"550 no\n").unwrap();
        assert_eq!((l.code, l.last), (550, true));
        for bad in [
            &b"25\r\n"[..],
            b"abc ok\r\n",
            b"250xok\r\n",
            b"150 hm\r\n",
            b"\r\n",
        ] {
            assert!(parse_reply_line(bad).is_err(), "{bad:?} accepted");
        }
    }

    async fn parse_all(input: &[u8]) -> Vec<Result<SmtpReply, String>> {
        let mut reader = input;
        let mut out = Vec::new();
        while !reader.is_empty() {
            let r = read_reply(&mut reader).await.map_err(|e| e.to_string());
            let stop = r.is_err();
            out.push(r);
            if stop {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn multi_line_replies_are_joined() {
        let input = b"220 mx ESMTP\r\n250-mx Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 HELP\r\n550 5.1.1 unknown\r\n";
        let replies = parse_all(input).await;
        assert_eq!(replies.len(), 3);
        let greeting = replies[0].as_ref().unwrap();
        assert_eq!(greeting.code, 220);
        let ehlo = replies[1].as_ref().unwrap();
        assert_eq!(ehlo.code, 250);
        assert_eq!(ehlo.lines, ["mx Hello", "PIPELINING", "SIZE 1000", "HELP"]);
        assert!(ehlo.has_extension("pipelining"));
        assert!(ehlo.has_extension("SIZE"));
        assert!(!ehlo.has_extension("STARTTLS"));
        assert!(ehlo.is_positive());
        let rejected = replies[2].as_ref().unwrap();
        assert_eq!(rejected.code, 550);
        assert!(!rejected.is_positive());
        assert_eq!(SmtpError::Rejected(rejected.clone()).failure_key(), "550");
    }

    #[tokio::test]
    async fn broken_replies_are_errors() {
        // Code changes mid-reply.
        let r = parse_all(b"250-a\r\n251 b\r\n").await;
        assert!(matches!(&r[0], Err(e) if e.contains("changed")));
        // Connection closes inside a multi-line reply.
        let mut reader = &b"250-a\r\n250-b\r\n"[..];
        assert!(matches!(
            read_reply(&mut reader).await,
            Err(SmtpError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
        // A line without newline that exceeds the limit.
        let long = vec![b'2'; MAX_REPLY_LINE + 10];
        let mut reader = &long[..];
        assert!(matches!(
            read_reply(&mut reader).await,
            Err(SmtpError::Protocol(_))
        ));
    }

    #[test]
    fn reply_classes() {
        let reply = |code| SmtpReply {
            code,
            lines: vec![],
        };
        assert!(expect(reply(250), 2).is_ok());
        assert!(expect(reply(354), 3).is_ok());
        assert!(matches!(expect(reply(250), 3), Err(SmtpError::Protocol(_))));
        assert!(matches!(expect(reply(451), 2), Err(SmtpError::Rejected(r)) if r.code == 451));
        assert!(matches!(expect(reply(554), 3), Err(SmtpError::Rejected(r)) if r.code == 554));
    }

    #[test]
    fn config_validation() {
        let ok = SmtpLoadConfig {
            targets: vec!["127.0.0.1:25".into()],
            ..SmtpLoadConfig::default()
        };
        assert!(ok.validate().is_ok());
        let bad_rcpt = SmtpLoadConfig {
            rcpts: vec!["a@b>\r\nDATA".into()],
            ..ok.clone()
        };
        assert!(bad_rcpt.validate().is_err());
        let no_targets = SmtpLoadConfig {
            targets: vec![],
            ..ok.clone()
        };
        assert!(no_targets.validate().is_err());
    }

    #[test]
    fn table_and_json_helpers() {
        let table = format_table(&[
            ("targets".into(), "a".into()),
            ("message size".into(), "1 B".into()),
        ]);
        assert_eq!(table, "targets       a\nmessage size  1 B\n");
        assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
        let mut obj = JsonObject::new();
        obj.u64("n", 1).f64("x", f64::NAN).str("s", "v");
        assert_eq!(obj.finish(), r#"{"n":1,"x":null,"s":"v"}"#);
        assert_eq!(format_latency_us(110_234), "110.2 ms");
        assert_eq!(format_latency_us(1_500), "1.50 ms");
    }

    #[test]
    fn latency_summary_of_empty_histogram_is_none() {
        let mut h = new_latency_histogram().unwrap();
        assert!(LatencySummary::from_histogram(&h).is_none());
        for ms in 1..=100u64 {
            record_latency(&mut h, Duration::from_millis(ms));
        }
        let s = LatencySummary::from_histogram(&h).unwrap();
        assert_eq!(s.count, 100);
        assert!((49_000..=51_000).contains(&s.p50_us), "{s:?}");
        assert!((99_000..=100_100).contains(&s.max_us), "{s:?}");
    }
}
