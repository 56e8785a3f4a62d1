//! IMAP load generator (`imap-load`).
//!
//! Three scenarios, all over plain TCP (the server must allow LOGIN without TLS, e.g.
//! `MAILFLEET_IMAP__ALLOW_PLAINTEXT_AUTH=true`):
//!
//! - **fetch**: every connection logs in, selects the mailbox, learns its UIDs with
//!   `UID SEARCH ALL` and then sends `UID FETCH <random uid> (<items>)` until the shared
//!   budget or the duration cap runs out.
//! - **append**: every connection appends generated messages of `--size` bytes with a
//!   synchronizing literal (it waits for the server's `+` before sending the message).
//! - **idle**: opens many connections in batches, each logs in, selects and enters IDLE;
//!   once all are idling the server's resident memory is read from `/proc/<pid>/status`,
//!   the connections are held for a while and then leave with `DONE` and `LOGOUT`.
//!
//! The response reader ([`read_response`], [`read_until_tagged`]) understands literals
//! (`{n}\r\n` followed by exactly n bytes) anywhere in a response, so message bodies that
//! contain CRLF, `)` or lines that look like tagged responses cannot desynchronise it.
//! Reporting reuses the crate's latency histogram and table/JSON helpers.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Barrier};
use tokio::time::Instant;

use crate::{
    format_counts, format_table, json_string, new_latency_histogram, record_latency, JsonObject,
    LatencySummary, MessageTemplate,
};

// ---------------------------------------------------------------------------------------
// Response reader
// ---------------------------------------------------------------------------------------

/// Longest response line accepted (one line between literals), CRLF included.
///
/// Generous because `* SEARCH` lists every UID of the mailbox on one line (about 6 bytes
/// per message), but bounded so that a peer streaming bytes without a newline cannot make
/// the generator buffer without limit.
pub const MAX_LINE: usize = 8 << 20;

/// Largest literal accepted in a response by default.
pub const MAX_LITERAL: usize = 64 << 20;

/// Most literals accepted in one response.
pub const MAX_LITERALS_PER_RESPONSE: usize = 1024;

/// Memory bounds applied while reading responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Longest line, see [`MAX_LINE`].
    pub max_line: usize,
    /// Largest single literal.
    pub max_literal: usize,
    /// Largest whole response (lines plus literals).
    pub max_response: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_line: MAX_LINE,
            max_literal: MAX_LITERAL,
            max_response: 2 * MAX_LITERAL,
        }
    }
}

/// Whether a response is tagged, untagged (`*`) or a continuation request (`+`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseKind {
    Tagged(String),
    Untagged,
    Continuation,
}

/// The status word of a status response (RFC 9051 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    Preauth,
}

impl Status {
    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_uppercase().as_str() {
            "OK" => Status::Ok,
            "NO" => Status::No,
            "BAD" => Status::Bad,
            "BYE" => Status::Bye,
            "PREAUTH" => Status::Preauth,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::Bye => "BYE",
            Status::Preauth => "PREAUTH",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One complete server response, literals included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapResponse {
    pub kind: ResponseKind,
    /// The response text, one entry per line, without CRLF. `lines[0]` is the text after
    /// the tag, `*` or `+` and its space (so `3 FETCH (UID 7 BODY[] {12}` or
    /// `OK [READ-WRITE] SELECT completed`); `lines[i + 1]` is what follows `literals[i]`.
    /// Always at least one entry.
    pub lines: Vec<String>,
    /// Literal contents in order, exactly as sent (`{n}` announced n bytes).
    pub literals: Vec<Vec<u8>>,
    /// Bytes this response took on the wire, CRLFs and literals included.
    pub wire_len: usize,
}

impl ImapResponse {
    /// The first line of text (after the tag, `*` or `+`).
    pub fn text(&self) -> &str {
        self.lines.first().map_or("", String::as_str)
    }

    /// The status of a status response (`OK`, `NO`, `BAD`, `BYE`, `PREAUTH`), or `None`
    /// for data (`* 3 EXISTS`) and continuation requests.
    pub fn status(&self) -> Option<Status> {
        if self.kind == ResponseKind::Continuation {
            return None;
        }
        Status::parse(first_word(self.text()))
    }

    /// The atom of a response code (`[TRYCREATE]`, `[APPENDUID 1 5]` → `APPENDUID`).
    pub fn code(&self) -> Option<&str> {
        self.status()?;
        let rest = self.text().split_once(' ')?.1;
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let code = &inner[..end];
        Some(code.split(' ').next().unwrap_or(code))
    }

    /// Whether this is the tagged completion of the command tagged `tag`.
    pub fn is_tagged(&self, tag: &str) -> bool {
        matches!(&self.kind, ResponseKind::Tagged(t) if t == tag)
    }

    /// For untagged data responses: the leading number if any (`* 3 FETCH` → 3) and the
    /// upper-cased keyword (`FETCH`, `EXISTS`, `SEARCH`, `CAPABILITY`, `OK`, ...).
    pub fn untagged_keyword(&self) -> Option<(Option<u64>, String)> {
        if self.kind != ResponseKind::Untagged {
            return None;
        }
        let mut words = self.text().split(' ');
        let first = words.next()?;
        match first.parse::<u64>() {
            Ok(n) => Some((Some(n), words.next()?.to_ascii_uppercase())),
            Err(_) => Some((None, first.to_ascii_uppercase())),
        }
    }

    /// `* <n> FETCH` data.
    pub fn is_fetch(&self) -> bool {
        matches!(self.untagged_keyword(), Some((Some(_), k)) if k == "FETCH")
    }

    /// Total size of the literals.
    pub fn literal_bytes(&self) -> usize {
        self.literals.iter().map(Vec::len).sum()
    }

    /// A short one-line rendering for error messages and reports.
    pub fn summary(&self) -> String {
        let prefix = match &self.kind {
            ResponseKind::Tagged(t) => t.as_str(),
            ResponseKind::Untagged => "*",
            ResponseKind::Continuation => "+",
        };
        let text = self.text();
        let cut = text
            .char_indices()
            .nth(120)
            .map_or(text, |(at, _)| &text[..at]);
        format!("{prefix} {cut}")
    }
}

fn first_word(s: &str) -> &str {
    s.split(' ').next().unwrap_or("")
}

/// If `line` (without CRLF) ends with a literal announcement `{n}` (or `~{n}`, a
/// literal8), returns n.
///
/// As in every IMAP client, a line that ends in `{digits}` *is* a literal announcement;
/// the grammar leaves no other reading for a server response.
pub fn literal_announcement(line: &[u8]) -> Option<u64> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Reads one complete response: its first line, and for every literal the line announces,
/// the literal's bytes and the line that follows.
///
/// Fails on EOF (even between responses: the caller was waiting for one), on lines or
/// literals over `limits`, and on lines that do not start with a tag, `*` or `+`.
pub async fn read_response<R>(
    reader: &mut R,
    limits: &ReadLimits,
) -> Result<ImapResponse, ImapError>
where
    R: AsyncBufRead + Unpin,
{
    let mut raw_lines: Vec<Vec<u8>> = Vec::new();
    let mut literals = Vec::new();
    let mut wire_len = 0usize;
    loop {
        let mut line = Vec::with_capacity(128);
        let n = (&mut *reader)
            .take(limits.max_line as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if line.last() != Some(&b'\n') {
            if n >= limits.max_line {
                return Err(ImapError::Protocol(format!(
                    "response line longer than {} bytes",
                    limits.max_line
                )));
            }
            return Err(ImapError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                if raw_lines.is_empty() && line.is_empty() {
                    "connection closed by the server"
                } else {
                    "connection closed inside a response"
                },
            )));
        }
        wire_len += line.len();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let announced = literal_announcement(&line);
        raw_lines.push(line);
        let Some(len) = announced else {
            break;
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > limits.max_literal {
            return Err(ImapError::Protocol(format!(
                "literal of {len} bytes exceeds the limit of {} bytes",
                limits.max_literal
            )));
        }
        if wire_len.saturating_add(len) > limits.max_response {
            return Err(ImapError::Protocol(format!(
                "response larger than {} bytes",
                limits.max_response
            )));
        }
        if literals.len() >= MAX_LITERALS_PER_RESPONSE {
            return Err(ImapError::Protocol(format!(
                "more than {MAX_LITERALS_PER_RESPONSE} literals in one response"
            )));
        }
        let mut data = vec![0u8; len];
        reader.read_exact(&mut data).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ImapError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a literal",
                ))
            } else {
                ImapError::Io(e)
            }
        })?;
        wire_len += len;
        literals.push(data);
    }

    let first = &raw_lines[0];
    let (kind, rest) = match first.iter().position(|&b| b == b' ') {
        Some(sp) => (&first[..sp], &first[sp + 1..]),
        None => (&first[..], &b""[..]),
    };
    let kind = match kind {
        b"*" => ResponseKind::Untagged,
        b"+" => ResponseKind::Continuation,
        tag if is_valid_tag(tag) => ResponseKind::Tagged(String::from_utf8_lossy(tag).into_owned()),
        _ => {
            return Err(ImapError::Protocol(format!(
                "malformed response line {:?}",
                String::from_utf8_lossy(&first[..first.len().min(80)])
            )))
        }
    };
    let mut lines = Vec::with_capacity(raw_lines.len());
    lines.push(String::from_utf8_lossy(rest).into_owned());
    lines.extend(
        raw_lines[1..]
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned()),
    );
    Ok(ImapResponse {
        kind,
        lines,
        literals,
        wire_len,
    })
}

/// A tag as RFC 9051 allows it: ASTRING-CHARs except `+`.
fn is_valid_tag(tag: &[u8]) -> bool {
    !tag.is_empty()
        && tag.iter().all(|&b| {
            b.is_ascii_graphic()
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b'+')
        })
}

/// The responses to one command: untagged data in order, then the tagged completion.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub untagged: Vec<ImapResponse>,
    pub done: ImapResponse,
    /// Bytes of all of the above on the wire.
    pub wire_len: usize,
}

impl Exchange {
    /// Number of `* n FETCH` responses.
    pub fn fetch_count(&self) -> usize {
        self.untagged.iter().filter(|r| r.is_fetch()).count()
    }

    /// Total literal bytes in the untagged responses (message data for FETCH).
    pub fn literal_bytes(&self) -> usize {
        self.untagged.iter().map(ImapResponse::literal_bytes).sum()
    }

    /// `Ok(self)` when the command completed with OK; `Rejected` otherwise.
    pub fn into_ok(self) -> Result<Self, ImapError> {
        match self.done.status() {
            Some(Status::Ok) => Ok(self),
            _ => Err(ImapError::rejected(&self.done)),
        }
    }
}

/// Reads responses until the tagged completion for `tag`, collecting untagged responses.
///
/// A continuation request (`+`) or a completion for another tag means client and server
/// disagree about the conversation, which is a protocol error. If the server says `BYE`
/// and closes, the error is [`ImapError::Bye`] with its text rather than a bare EOF.
pub async fn read_until_tagged<R>(
    reader: &mut R,
    tag: &str,
    limits: &ReadLimits,
) -> Result<Exchange, ImapError>
where
    R: AsyncBufRead + Unpin,
{
    let mut untagged = Vec::new();
    let mut wire_len = 0usize;
    let mut bye: Option<String> = None;
    loop {
        let resp = match read_response(reader, limits).await {
            Ok(r) => r,
            Err(ImapError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(match bye {
                    Some(text) => ImapError::Bye(text),
                    None => ImapError::Io(e),
                })
            }
            Err(e) => return Err(e),
        };
        wire_len += resp.wire_len;
        match &resp.kind {
            ResponseKind::Tagged(t) if t == tag => {
                return Ok(Exchange {
                    untagged,
                    done: resp,
                    wire_len,
                })
            }
            ResponseKind::Tagged(t) => {
                return Err(ImapError::Protocol(format!(
                    "completion for tag {t:?} while waiting for {tag:?}"
                )))
            }
            ResponseKind::Continuation => {
                return Err(ImapError::Protocol(format!(
                    "unexpected continuation request while waiting for {tag:?}: {}",
                    resp.summary()
                )))
            }
            ResponseKind::Untagged => {
                if resp.status() == Some(Status::Bye) {
                    bye = Some(resp.text().to_string());
                }
                untagged.push(resp);
            }
        }
    }
}

/// Reads responses until a continuation request (`+`), skipping untagged data.
///
/// Returns `Err(Rejected)` if the command tagged `tag` completes instead (e.g. `NO
/// [TOOBIG]` for an APPEND whose literal the server refuses up front).
pub async fn read_until_continuation<R>(
    reader: &mut R,
    tag: &str,
    limits: &ReadLimits,
) -> Result<usize, ImapError>
where
    R: AsyncBufRead + Unpin,
{
    let mut wire_len = 0usize;
    loop {
        let resp = read_response(reader, limits).await?;
        wire_len += resp.wire_len;
        match &resp.kind {
            ResponseKind::Continuation => return Ok(wire_len),
            ResponseKind::Tagged(t) if t == tag => return Err(ImapError::rejected(&resp)),
            ResponseKind::Tagged(t) => {
                return Err(ImapError::Protocol(format!(
                    "completion for tag {t:?} while waiting for a continuation"
                )))
            }
            ResponseKind::Untagged => {
                if resp.status() == Some(Status::Bye) {
                    return Err(ImapError::Bye(resp.text().to_string()));
                }
            }
        }
    }
}

/// Most UIDs [`search_uids`] expands from ESEARCH ranges, so that a hostile `1:4294967295`
/// cannot exhaust memory.
pub const MAX_SEARCH_UIDS: usize = 10_000_000;

/// UIDs listed by `* SEARCH` responses (RFC 3501 form; Mailfleet answers a plain
/// `UID SEARCH` this way; a trailing `(MODSEQ n)` is ignored) or by the `ALL` result of
/// `* ESEARCH` responses (RFC 4731, e.g. `* ESEARCH (TAG "a") UID ALL 1:3,7`).
pub fn search_uids(untagged: &[ImapResponse]) -> Vec<u32> {
    let mut uids = Vec::new();
    for r in untagged {
        match r.untagged_keyword() {
            Some((None, k)) if k == "SEARCH" => {
                for word in r.text().split(' ').skip(1) {
                    if word.starts_with('(') {
                        break;
                    }
                    if let Ok(uid) = word.parse::<u32>() {
                        uids.push(uid);
                    }
                }
            }
            Some((None, k)) if k == "ESEARCH" => {
                let mut words = r.text().split(' ');
                while let Some(word) = words.next() {
                    if word.eq_ignore_ascii_case("ALL") {
                        if let Some(set) = words.next() {
                            expand_sequence_set(set, &mut uids);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    uids
}

/// Appends the numbers of a sequence set (`1:3,7,9:8`) to `out`, up to
/// [`MAX_SEARCH_UIDS`] in total; `*` and malformed parts are skipped.
pub fn expand_sequence_set(set: &str, out: &mut Vec<u32>) {
    for part in set.split(',') {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) else {
            continue;
        };
        for n in a.min(b)..=a.max(b) {
            if out.len() >= MAX_SEARCH_UIDS {
                return;
            }
            out.push(n);
        }
    }
}

/// The message count from `* n EXISTS`, the last one if there are several.
pub fn exists_count(untagged: &[ImapResponse]) -> Option<u64> {
    untagged
        .iter()
        .filter_map(|r| match r.untagged_keyword() {
            Some((Some(n), k)) if k == "EXISTS" => Some(n),
            _ => None,
        })
        .next_back()
}

/// Quotes `s` as an IMAP quoted string. Callers make sure it holds no CR, LF or NUL
/// (see [`ImapLoadConfig::validate`]), which a quoted string cannot carry.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Why an IMAP exchange did not complete.
#[derive(Debug)]
pub enum ImapError {
    /// Socket error, including the server closing the connection.
    Io(io::Error),
    /// The server did not answer within the per-operation timeout.
    Timeout,
    /// The run's duration cap was reached; not the server's fault.
    Deadline,
    /// The server sent something that is not valid IMAP at this point.
    Protocol(String),
    /// The command completed with NO or BAD.
    Rejected {
        status: Option<Status>,
        code: Option<String>,
        text: String,
    },
    /// The server said BYE and closed the connection.
    Bye(String),
}

impl ImapError {
    fn rejected(resp: &ImapResponse) -> Self {
        ImapError::Rejected {
            status: resp.status(),
            code: resp.code().map(str::to_string),
            text: resp.text().to_string(),
        }
    }

    /// Key under which the failure is counted: `NO [AUTHENTICATIONFAILED]`, `BAD`,
    /// `BYE`, `timeout`, `connection closed`, ... (bounded cardinality, unlike texts).
    pub fn failure_key(&self) -> String {
        match self {
            ImapError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                "connection closed".into()
            }
            ImapError::Io(e) => format!("io error ({})", e.kind()),
            ImapError::Timeout => "timeout".into(),
            ImapError::Deadline => "deadline".into(),
            ImapError::Protocol(_) => "protocol error".into(),
            ImapError::Rejected { status, code, .. } => {
                let status = status.map_or("?", Status::as_str);
                match code {
                    Some(c) => format!("{status} [{c}]"),
                    None => status.to_string(),
                }
            }
            ImapError::Bye(_) => "BYE".into(),
        }
    }

    /// Whether the connection can still be used after this error.
    fn connection_usable(&self) -> bool {
        matches!(self, ImapError::Rejected { .. })
    }
}

impl fmt::Display for ImapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImapError::Io(e) => write!(f, "i/o error: {e}"),
            ImapError::Timeout => f.write_str("timed out waiting for the server"),
            ImapError::Deadline => f.write_str("run duration cap reached"),
            ImapError::Protocol(why) => write!(f, "protocol error: {why}"),
            ImapError::Rejected { text, .. } => write!(f, "rejected: {text}"),
            ImapError::Bye(text) => write!(f, "server said BYE: {text}"),
        }
    }
}

impl std::error::Error for ImapError {}

impl From<io::Error> for ImapError {
    fn from(e: io::Error) -> Self {
        ImapError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------
// Resource helpers (/proc)
// ---------------------------------------------------------------------------------------

/// Reads a `kB` field such as `VmRSS` from the text of `/proc/<pid>/status`, in KiB.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        let value = words.next()?.parse().ok()?;
        (words.next() == Some("kB")).then_some(value)
    })
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn read_rss_kib(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&text, "VmRSS").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS line in /proc/{pid}/status"),
        )
    })
}

/// Half of `MemTotal` from `/proc/meminfo`, in KiB: the default server memory guard of
/// the idle scenario.
pub fn default_rss_guard_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_status_kib(&text, "MemTotal").map(|kib| kib / 2)
}

/// Soft and hard limits on open files from the text of `/proc/<pid>/limits`
/// (`unlimited` becomes `u64::MAX`).
pub fn parse_nofile_limits(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line["Max open files".len()..].split_whitespace();
    let parse = |w: Option<&str>| -> Option<u64> {
        match w? {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    Some((parse(words.next())?, parse(words.next())?))
}

fn own_nofile_limits() -> anyhow::Result<(u64, u64)> {
    let text =
        std::fs::read_to_string("/proc/self/limits").context("cannot read /proc/self/limits")?;
    parse_nofile_limits(&text).ok_or_else(|| anyhow!("no 'Max open files' in /proc/self/limits"))
}

/// Makes sure this process may open `needed` file descriptors.
///
/// The workspace forbids `unsafe`, so `setrlimit` is out of reach without a new crate;
/// when the soft limit is too low but the hard limit allows it, the soft limit is raised
/// with util-linux's `prlimit(1)` on our own pid. Past the hard limit only the shell (as
/// root: `ulimit -n 65536`) or the service manager can help, and the error says so.
/// Returns the soft limit in force.
pub fn ensure_fd_limit(needed: u64) -> anyhow::Result<u64> {
    let (soft, hard) = own_nofile_limits()?;
    if soft >= needed {
        return Ok(soft);
    }
    if hard < needed {
        bail!(
            "{needed} file descriptors are needed but the hard limit is {hard}: start imap-load \
             from a shell whose limit is high enough (e.g. `ulimit -n 65536`, which needs \
             root or a raised hard limit) or use fewer --connections"
        );
    }
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={needed}:"))
        .status();
    let (soft_now, _) = own_nofile_limits()?;
    if soft_now >= needed {
        return Ok(soft_now);
    }
    bail!(
        "{needed} file descriptors are needed but the soft limit is {soft} (hard {hard}) and \
         raising it with prlimit failed ({status:?}): run `ulimit -n {needed}` first"
    )
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// What a run does; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Fetch,
    Append,
    Idle,
    /// Persistent sessions running a weighted mix of commands ([`MIX`]).
    Mix,
    /// The same mix, with LOGOUT and a new LOGIN + SELECT every [`CHURN_OPS`] commands.
    Churn,
}

/// The command mix of the `mix` and `churn` scenarios, in percent: what a mail client does
/// in a day, dominated by reading and flagging. EXPUNGE removes a message the same
/// connection appended (`UID STORE +FLAGS.SILENT (\Deleted)` then `UID EXPUNGE`, counted
/// as one operation), so the mailbox keeps its size; with nothing of its own to expunge a
/// connection sends NOOP instead.
pub const MIX: [(MixOp, u32); 8] = [
    (MixOp::Fetch, 35),
    (MixOp::Store, 20),
    (MixOp::Append, 10),
    (MixOp::Expunge, 10),
    (MixOp::Status, 10),
    (MixOp::List, 5),
    (MixOp::Select, 5),
    (MixOp::Noop, 5),
];

/// Commands per session in the `churn` scenario before LOGOUT and a new login.
pub const CHURN_OPS: u64 = 10;

/// One kind of operation of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MixOp {
    Fetch,
    Store,
    Append,
    Expunge,
    Status,
    List,
    Select,
    Noop,
}

impl MixOp {
    /// The operation for a roll in `0..100`.
    pub fn pick(roll: u32) -> MixOp {
        let mut acc = 0;
        for (op, weight) in MIX {
            acc += weight;
            if roll < acc {
                return op;
            }
        }
        MixOp::Noop
    }
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Fetch => "fetch",
            Scenario::Append => "append",
            Scenario::Idle => "idle",
            Scenario::Mix => "mix",
            Scenario::Churn => "churn",
        }
    }

    /// Unit of one operation in the throughput row.
    fn unit(self) -> &'static str {
        match self {
            Scenario::Fetch => "fetches",
            Scenario::Append => "appends",
            Scenario::Idle => "logins",
            Scenario::Mix | Scenario::Churn => "commands",
        }
    }
}

/// Settings for one IMAP load run; see `load-tests/README.md` for each flag.
#[derive(Debug, Clone)]
pub struct ImapLoadConfig {
    pub scenario: Scenario,
    /// `HOST:PORT` of each front-end; connections are assigned round-robin.
    pub targets: Vec<String>,
    /// Concurrent connections (fetch/append) or connections to hold open (idle).
    pub connections: usize,
    /// Total operations to attempt (fetch and append).
    pub count: u64,
    /// Hard cap on the fetch/append run, or on the ramp-up for idle.
    pub duration: Duration,
    /// Login name; `{n}` is replaced by `connection index % users`.
    pub user: String,
    pub users: usize,
    pub password: String,
    pub mailbox: String,
    /// FETCH items, without the surrounding parentheses.
    pub fetch_items: String,
    /// Approximate size of appended messages.
    pub message_size: usize,
    /// Connections opened at once during the idle ramp-up.
    pub batch: usize,
    /// How long the idle connections are held once all are idling.
    pub hold: Duration,
    /// Pause between the end of the ramp-up and the memory reading.
    pub settle: Duration,
    /// Server process whose `VmRSS` is reported (idle).
    pub server_pid: Option<u32>,
    /// Stop the idle ramp-up once the server's `VmRSS` passes this many KiB, so that a
    /// server that grows without bound cannot take the whole machine down. `None` with a
    /// `server_pid`: half of the machine's memory ([`default_rss_guard_kib`]).
    pub max_server_rss_kib: Option<u64>,
    /// Longest wait for any single connect, write or response.
    pub io_timeout: Duration,
    pub read_limits: ReadLimits,
    /// Connect with implicit TLS (the targets are port-993-style listeners).
    pub tls: Option<TlsTarget>,
}

impl Default for ImapLoadConfig {
    fn default() -> Self {
        Self {
            scenario: Scenario::Fetch,
            targets: vec!["127.0.0.1:1143".into()],
            connections: 10,
            count: 10_000,
            duration: Duration::from_secs(120),
            user: "load@example.test".into(),
            users: 1,
            password: String::new(),
            mailbox: "INBOX".into(),
            fetch_items: "FLAGS BODY.PEEK[]".into(),
            message_size: 10_240,
            batch: 200,
            hold: Duration::from_secs(5),
            settle: Duration::from_secs(2),
            server_pid: None,
            max_server_rss_kib: None,
            io_timeout: Duration::from_secs(30),
            read_limits: ReadLimits::default(),
            tls: None,
        }
    }
}

impl ImapLoadConfig {
    /// Rejects settings that would make the run meaningless or inject IMAP syntax (names
    /// and items are written into commands as they are).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.targets.is_empty() {
            bail!("at least one --target is required");
        }
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.count == 0 && self.scenario != Scenario::Idle {
            bail!("--count must be at least 1");
        }
        if self.users == 0 {
            bail!("--users must be at least 1");
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if self.duration.is_zero() || self.io_timeout.is_zero() {
            bail!("durations and timeouts must be non-zero");
        }
        if self.password.is_empty() {
            bail!("a password is required (--password or IMAP_LOAD_PASSWORD)");
        }
        let quotable = |what: &str, s: &str| {
            if s.is_empty() || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                bail!("{what} must be non-empty printable ASCII");
            }
            Ok(())
        };
        quotable("--user", &self.user)?;
        quotable("--password", &self.password)?;
        quotable("--mailbox", &self.mailbox)?;
        quotable("--items", &self.fetch_items)?;
        if self.message_size < 64 {
            bail!("--size must be at least 64 bytes");
        }
        Ok(())
    }

    /// Login name of connection `i`.
    pub fn user_for(&self, i: usize) -> String {
        self.user.replace("{n}", &(i % self.users).to_string())
    }

    /// The FETCH items in parentheses, unless the user already gave a parenthesised list.
    fn fetch_list(&self) -> String {
        let items = self.fetch_items.trim();
        if items.starts_with('(') {
            items.to_string()
        } else {
            format!("({items})")
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------------------

/// Runs `fut` bounded by both the per-operation timeout and the run deadline, and says
/// which of the two expired.
async fn bounded<T, F>(deadline: Instant, io_timeout: Duration, fut: F) -> Result<T, ImapError>
where
    F: std::future::Future<Output = Result<T, ImapError>>,
{
    let op_deadline = Instant::now() + io_timeout;
    let (limit, is_run_deadline) = if deadline <= op_deadline {
        (deadline, true)
    } else {
        (op_deadline, false)
    };
    match tokio::time::timeout_at(limit, fut).await {
        Ok(result) => result,
        Err(_) if is_run_deadline => Err(ImapError::Deadline),
        Err(_) => Err(ImapError::Timeout),
    }
}

/// An established IMAP connection.
/// Either half of a plain TCP or a TLS connection.
type ReadSide = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type WriteSide = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Implicit TLS (port-993 style) for the load's connections: the client configuration
/// trusting the server's certificate, and the name to check it against.
#[derive(Clone)]
pub struct TlsTarget {
    pub connector: tokio_rustls::TlsConnector,
    pub name: rustls_pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("name", &self.name)
            .finish()
    }
}

impl TlsTarget {
    /// Trusts only the certificates in `ca_pem` (a self-signed server's own certificate,
    /// for a test server) and checks them against `name`.
    pub fn from_pem_file(ca_pem: &std::path::Path, name: &str) -> anyhow::Result<Self> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem)
            .with_context(|| format!("reading {}", ca_pem.display()))?
        {
            let cert = cert.with_context(|| format!("a certificate in {}", ca_pem.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("a certificate in {}", ca_pem.display()))?;
        }
        if roots.is_empty() {
            bail!("no certificate in {}", ca_pem.display());
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(name.to_string())
            .with_context(|| format!("bad TLS server name {name:?}"))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

struct Conn {
    reader: BufReader<ReadSide>,
    writer: WriteSide,
    next_tag: u64,
    deadline: Instant,
    io_timeout: Duration,
    limits: ReadLimits,
}

impl Conn {
    /// Connects and reads the greeting, which must be `* OK` (or `* PREAUTH`).
    async fn open(
        addr: SocketAddr,
        deadline: Instant,
        io_timeout: Duration,
        limits: ReadLimits,
        buffer: usize,
        tls: Option<&TlsTarget>,
    ) -> Result<Conn, (&'static str, ImapError)> {
        let stream = bounded(deadline, io_timeout, async {
            TcpStream::connect(addr).await.map_err(ImapError::from)
        })
        .await
        .map_err(|e| ("connect", e))?;
        // Commands are small writes; without NODELAY Nagle would add delayed-ACK stalls.
        let _ = stream.set_nodelay(true);
        let (r, w): (ReadSide, WriteSide) = match tls {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(t) => {
                let tls = bounded(deadline, io_timeout, async {
                    t.connector
                        .connect(t.name.clone(), stream)
                        .await
                        .map_err(ImapError::from)
                })
                .await
                .map_err(|e| ("tls", e))?;
                let (r, w) = tokio::io::split(tls);
                (Box::new(r), Box::new(w))
            }
        };
        let mut conn = Conn {
            reader: BufReader::with_capacity(buffer, r),
            writer: w,
            next_tag: 0,
            deadline,
            io_timeout,
            limits,
        };
        let greeting = conn.response().await.map_err(|e| ("greeting", e))?;
        match (greeting.kind == ResponseKind::Untagged, greeting.status()) {
            (true, Some(Status::Ok | Status::Preauth)) => Ok(conn),
            (true, Some(Status::Bye)) => {
                Err(("greeting", ImapError::Bye(greeting.text().to_string())))
            }
            _ => Err((
                "greeting",
                ImapError::Protocol(format!("unexpected greeting {}", greeting.summary())),
            )),
        }
    }

    fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("L{}", self.next_tag)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ImapError> {
        let writer = &mut self.writer;
        bounded(self.deadline, self.io_timeout, async move {
            writer.write_all(bytes).await.map_err(ImapError::from)
        })
        .await
    }

    async fn response(&mut self) -> Result<ImapResponse, ImapError> {
        let (reader, limits) = (&mut self.reader, self.limits);
        bounded(self.deadline, self.io_timeout, async move {
            read_response(reader, &limits).await
        })
        .await
    }

    async fn until_tagged(&mut self, tag: &str) -> Result<Exchange, ImapError> {
        let (reader, limits) = (&mut self.reader, self.limits);
        bounded(self.deadline, self.io_timeout, async move {
            read_until_tagged(reader, tag, &limits).await
        })
        .await
    }

    async fn until_continuation(&mut self, tag: &str) -> Result<usize, ImapError> {
        let (reader, limits) = (&mut self.reader, self.limits);
        bounded(self.deadline, self.io_timeout, async move {
            read_until_continuation(reader, tag, &limits).await
        })
        .await
    }

    /// Sends `<tag> <body>\r\n` and reads the responses up to its completion, whatever
    /// the status (see [`Exchange::into_ok`]).
    async fn command(&mut self, body: &str) -> Result<Exchange, ImapError> {
        let tag = self.tag();
        self.send(format!("{tag} {body}\r\n").as_bytes()).await?;
        self.until_tagged(&tag).await
    }

    /// LOGIN then SELECT; returns the message count from EXISTS.
    async fn login_select(
        &mut self,
        user: &str,
        password: &str,
        mailbox: &str,
    ) -> Result<Option<u64>, (&'static str, ImapError)> {
        self.command(&format!("LOGIN {} {}", quote(user), quote(password)))
            .await
            .and_then(Exchange::into_ok)
            .map_err(|e| ("login", e))?;
        let selected = self
            .command(&format!("SELECT {}", quote(mailbox)))
            .await
            .and_then(Exchange::into_ok)
            .map_err(|e| ("select", e))?;
        Ok(exists_count(&selected.untagged))
    }

    /// LOGOUT, briefly: the answer does not affect the results.
    async fn logout(&mut self) {
        self.deadline = Instant::now() + LOGOUT_GRACE;
        let _ = self.command("LOGOUT").await;
        let _ = self.writer.shutdown().await;
    }
}

/// Longest wait for the server's LOGOUT answer in fetch/append runs.
const LOGOUT_GRACE: Duration = Duration::from_secs(2);

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A small, fast PRNG (SplitMix64) for picking UIDs; no crate needed for that.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

async fn resolve(targets: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(targets.len());
    for target in targets {
        let addr = tokio::net::lookup_host(target.as_str())
            .await
            .with_context(|| format!("cannot resolve target {target:?}"))?
            .next()
            .ok_or_else(|| anyhow!("target {target:?} resolved to no addresses"))?;
        addrs.push(addr);
    }
    Ok(addrs)
}

fn add_count(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_default() += 1;
}

fn merge_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// Keeps the first detailed message seen for each failure key, for the report.
fn add_example(map: &mut BTreeMap<String, String>, key: &str, err: &ImapError) {
    if !map.contains_key(key) {
        let mut text = err.to_string();
        text.truncate(200);
        map.insert(key.to_string(), text);
    }
}

// ---------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------

/// Outcome of a fetch or append run.
#[derive(Debug, Clone)]
pub struct OpsReport {
    pub scenario: Scenario,
    pub targets: Vec<String>,
    pub connections: usize,
    /// The command being measured, e.g. `UID FETCH <uid> (FLAGS BODY.PEEK[])`.
    pub command: String,
    pub budget: u64,
    /// Successful LOGIN + SELECT sequences (more than `connections` after reconnects).
    pub sessions: u64,
    /// Messages in the mailbox according to SELECT (the largest count seen).
    pub mailbox_messages: Option<u64>,
    /// Time for all connections to log in and select before the measured phase.
    pub setup_elapsed: Duration,
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub connection_failures: BTreeMap<String, u64>,
    /// The first error message seen for each failure key.
    pub failure_examples: BTreeMap<String, String>,
    /// Operations in flight when the duration cap hit; neither ok nor failed.
    pub interrupted: u64,
    /// Fetch: response bytes of successful fetches; append: message bytes appended.
    pub bytes: u64,
    /// Fetch: literal bytes (message data) within `bytes`.
    pub literal_bytes: u64,
    /// Wall-clock time of the measured phase (after setup).
    pub elapsed: Duration,
    /// Per-operation latency in µs, successful operations only.
    pub latency: Histogram<u64>,
}

impl OpsReport {
    pub fn succeeded(&self) -> bool {
        self.ok > 0
    }

    pub fn stopped_by_deadline(&self) -> bool {
        self.ok + self.failed < self.budget
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn latency_summary(&self) -> Option<LatencySummary> {
        LatencySummary::from_histogram(&self.latency)
    }

    pub fn table(&self) -> String {
        let unit = self.scenario.unit();
        let mut rows: Vec<(String, String)> = vec![
            ("scenario".into(), self.scenario.as_str().into()),
            ("command".into(), self.command.clone()),
            ("targets".into(), self.targets.join(", ")),
            ("connections".into(), self.connections.to_string()),
        ];
        if let Some(n) = self.mailbox_messages {
            rows.push(("mailbox".into(), format!("{n} messages at SELECT")));
        }
        rows.push((
            "setup".into(),
            format!(
                "{} logins in {:.2} s (before the measured phase)",
                self.sessions.min(self.connections as u64),
                self.setup_elapsed.as_secs_f64()
            ),
        ));
        rows.push((
            unit.into(),
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
        for (key, example) in &self.failure_examples {
            rows.push((format!("  e.g. {key}"), example.clone()));
        }
        if self.stopped_by_deadline() {
            rows.push((
                "stopped".into(),
                format!(
                    "duration cap hit after {} of {} {unit} ({} in flight)",
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
        let what = match self.scenario {
            Scenario::Fetch => "of responses",
            _ => "of messages",
        };
        rows.push((
            "throughput".into(),
            format!(
                "{:.1} {unit}/s   ({:.1} MiB/s {what})",
                self.ops_per_sec(),
                self.mib_per_sec()
            ),
        ));
        if self.scenario == Scenario::Fetch && self.ok > 0 {
            rows.push((
                "per fetch".into(),
                format!(
                    "{} B response, {} B in literals",
                    self.bytes / self.ok,
                    self.literal_bytes / self.ok
                ),
            ));
        }
        rows.extend(LatencySummary::table_rows(self.latency_summary().as_ref()));
        format_table(&rows)
    }

    pub fn to_json(&self) -> String {
        let mut obj = JsonObject::new();
        obj.str("protocol", "imap")
            .str("scenario", self.scenario.as_str())
            .str("command", &self.command)
            .raw("targets", &json_targets(&self.targets))
            .u64("connections", self.connections as u64)
            .u64("budget", self.budget)
            .u64("sessions", self.sessions)
            .u64("mailbox_messages", self.mailbox_messages.unwrap_or(0))
            .f64("setup_secs", self.setup_elapsed.as_secs_f64())
            .u64("ok", self.ok)
            .u64("failed", self.failed)
            .counts("failures", &self.failures)
            .counts("connection_failures", &self.connection_failures)
            .u64("interrupted", self.interrupted)
            .bool("stopped_by_deadline", self.stopped_by_deadline())
            .u64("bytes", self.bytes)
            .u64("literal_bytes", self.literal_bytes)
            .f64("elapsed_secs", self.elapsed.as_secs_f64())
            .f64("ops_per_sec", self.ops_per_sec())
            .f64("mib_per_sec", self.mib_per_sec());
        match self.latency_summary() {
            Some(s) => obj.raw("latency_us", &s.to_json()),
            None => obj.raw("latency_us", "null"),
        };
        obj.finish()
    }
}

fn json_targets(targets: &[String]) -> String {
    format!(
        "[{}]",
        targets
            .iter()
            .map(|t| json_string(t))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Outcome of an idle run.
#[derive(Debug, Clone)]
pub struct IdleReport {
    pub targets: Vec<String>,
    pub requested: usize,
    pub batch: usize,
    /// Connections that reached IDLE (got the `+`).
    pub idling: u64,
    /// Connections that never got there, by stage and reason.
    pub connection_failures: BTreeMap<String, u64>,
    pub failure_examples: BTreeMap<String, String>,
    /// Why the ramp-up stopped before opening every connection (duration cap, server
    /// memory guard), if it did.
    pub ramp_stopped: Option<String>,
    /// From the first connect to the last connection idling.
    pub ramp_elapsed: Duration,
    /// Connect-to-`+ idling` time per connection (includes the queue for argon2id).
    pub setup_latency: Histogram<u64>,
    pub server_pid: Option<u32>,
    /// Server `VmRSS` before the first connection, once all are idling (after the settle
    /// pause), and at the end of the hold; KiB.
    pub rss_before_kib: Option<u64>,
    pub rss_idle_kib: Option<u64>,
    pub rss_after_hold_kib: Option<u64>,
    /// The generator's own `VmRSS` while all connections were open.
    pub client_rss_kib: Option<u64>,
    pub hold: Duration,
    /// Connections that answered DONE with OK and then logged out.
    pub logged_out: u64,
    /// Connections that were fine at IDLE but failed at DONE/LOGOUT, by reason.
    pub logout_failures: BTreeMap<String, u64>,
    /// The file-descriptor soft limit the generator ran with.
    pub fd_limit: u64,
}

impl IdleReport {
    pub fn succeeded(&self) -> bool {
        self.idling > 0
    }

    /// Server memory per idling connection, from the growth over the baseline, in KiB.
    pub fn rss_per_connection_kib(&self) -> Option<f64> {
        let (before, idle) = (self.rss_before_kib?, self.rss_idle_kib?);
        (self.idling > 0).then(|| idle.saturating_sub(before) as f64 / self.idling as f64)
    }

    pub fn logins_per_sec(&self) -> f64 {
        self.idling as f64 / self.ramp_elapsed.as_secs_f64().max(1e-9)
    }

    pub fn table(&self) -> String {
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        let mut rows: Vec<(String, String)> = vec![
            ("scenario".into(), "idle".into()),
            ("targets".into(), self.targets.join(", ")),
            (
                "connections".into(),
                format!("{} requested, {} idling", self.requested, self.idling),
            ),
            ("fd limit".into(), self.fd_limit.to_string()),
            (
                "ramp-up".into(),
                format!(
                    "{:.1} s in batches of {} ({:.1} logins/s){}",
                    self.ramp_elapsed.as_secs_f64(),
                    self.batch,
                    self.logins_per_sec(),
                    self.ramp_stopped
                        .as_ref()
                        .map_or_else(String::new, |why| format!(", stopped: {why}"))
                ),
            ),
        ];
        if !self.connection_failures.is_empty() {
            rows.push((
                "conn failures".into(),
                format_counts(&self.connection_failures),
            ));
        }
        for (key, example) in &self.failure_examples {
            rows.push((format!("  e.g. {key}"), example.clone()));
        }
        let summary = LatencySummary::from_histogram(&self.setup_latency);
        rows.extend(
            LatencySummary::table_rows(summary.as_ref())
                .into_iter()
                .map(|(label, value)| (label.replace("latency", "setup"), value)),
        );
        match self.server_pid {
            None => rows.push(("server rss".into(), "n/a (no --server-pid)".into())),
            Some(pid) => {
                let show = |v: Option<u64>| v.map_or_else(|| "n/a".into(), mib);
                rows.push((
                    "server rss".into(),
                    format!(
                        "pid {pid}: before {}, all idling {}, after {:.0} s hold {}",
                        show(self.rss_before_kib),
                        show(self.rss_idle_kib),
                        self.hold.as_secs_f64(),
                        show(self.rss_after_hold_kib)
                    ),
                ));
                if let Some(per) = self.rss_per_connection_kib() {
                    rows.push((
                        "rss per conn".into(),
                        format!("{per:.1} KiB (growth over the baseline / idling connections)"),
                    ));
                }
            }
        }
        if let Some(kib) = self.client_rss_kib {
            rows.push(("client rss".into(), mib(kib)));
        }
        rows.push((
            "logout".into(),
            format!(
                "{} ok, {} failed",
                self.logged_out,
                self.logout_failures.values().sum::<u64>()
            ),
        ));
        if !self.logout_failures.is_empty() {
            rows.push((
                "logout failures".into(),
                format_counts(&self.logout_failures),
            ));
        }
        format_table(&rows)
    }

    pub fn to_json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
        let mut obj = JsonObject::new();
        obj.str("protocol", "imap")
            .str("scenario", "idle")
            .raw("targets", &json_targets(&self.targets))
            .u64("requested", self.requested as u64)
            .u64("batch", self.batch as u64)
            .u64("idling", self.idling)
            .counts("connection_failures", &self.connection_failures)
            .raw(
                "ramp_stopped",
                &self
                    .ramp_stopped
                    .as_deref()
                    .map_or_else(|| "null".to_string(), json_string),
            )
            .f64("ramp_secs", self.ramp_elapsed.as_secs_f64())
            .f64("logins_per_sec", self.logins_per_sec())
            .raw("server_pid", &opt(self.server_pid.map(u64::from)))
            .raw("rss_before_kib", &opt(self.rss_before_kib))
            .raw("rss_idle_kib", &opt(self.rss_idle_kib))
            .raw("rss_after_hold_kib", &opt(self.rss_after_hold_kib))
            .raw("client_rss_kib", &opt(self.client_rss_kib))
            .f64(
                "rss_per_connection_kib",
                self.rss_per_connection_kib().unwrap_or(f64::NAN),
            )
            .u64("logged_out", self.logged_out)
            .counts("logout_failures", &self.logout_failures)
            .u64("fd_limit", self.fd_limit);
        match LatencySummary::from_histogram(&self.setup_latency) {
            Some(s) => obj.raw("setup_latency_us", &s.to_json()),
            None => obj.raw("setup_latency_us", "null"),
        };
        obj.finish()
    }
}

/// Result of any scenario.
#[derive(Debug, Clone)]
pub enum ImapLoadReport {
    Ops(OpsReport),
    Idle(IdleReport),
}

impl ImapLoadReport {
    pub fn table(&self) -> String {
        match self {
            ImapLoadReport::Ops(r) => r.table(),
            ImapLoadReport::Idle(r) => r.table(),
        }
    }

    pub fn to_json(&self) -> String {
        match self {
            ImapLoadReport::Ops(r) => r.to_json(),
            ImapLoadReport::Idle(r) => r.to_json(),
        }
    }

    /// At least one operation (fetch/append) or one idling connection.
    pub fn succeeded(&self) -> bool {
        match self {
            ImapLoadReport::Ops(r) => r.succeeded(),
            ImapLoadReport::Idle(r) => r.succeeded(),
        }
    }
}

/// Runs the scenario described by `cfg`.
///
/// Errors are returned only for invalid configuration, unresolvable targets or (idle) a
/// file-descriptor limit that cannot be raised; server failures end up in the report.
pub async fn run_imap_load(cfg: ImapLoadConfig) -> anyhow::Result<ImapLoadReport> {
    cfg.validate()?;
    let addrs = resolve(&cfg.targets).await?;
    match cfg.scenario {
        Scenario::Fetch | Scenario::Append | Scenario::Mix | Scenario::Churn => {
            run_ops(cfg, addrs).await.map(ImapLoadReport::Ops)
        }
        Scenario::Idle => run_idle(cfg, addrs).await.map(ImapLoadReport::Idle),
    }
}

// ---------------------------------------------------------------------------------------
// fetch and append
// ---------------------------------------------------------------------------------------

struct Shared {
    cfg: ImapLoadConfig,
    addrs: Vec<SocketAddr>,
    template: MessageTemplate,
    fetch_list: String,
    /// Claiming a sequence number is claiming budget.
    next_seq: AtomicU64,
    /// The duration cap, counted from before the first login; everything is bounded by it.
    deadline: Instant,
    /// All workers and the coordinator meet here once the initial logins are done.
    start: Barrier,
}

impl Shared {
    fn claim(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        (seq < self.cfg.count).then_some(seq)
    }

    fn budget_left(&self) -> bool {
        self.next_seq.load(Ordering::Relaxed) < self.cfg.count && Instant::now() < self.deadline
    }
}

struct OpsStats {
    sessions: u64,
    mailbox_messages: Option<u64>,
    ok: u64,
    failed: u64,
    interrupted: u64,
    bytes: u64,
    literal_bytes: u64,
    failures: BTreeMap<String, u64>,
    connection_failures: BTreeMap<String, u64>,
    examples: BTreeMap<String, String>,
    latency: Histogram<u64>,
}

impl OpsStats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sessions: 0,
            mailbox_messages: None,
            ok: 0,
            failed: 0,
            interrupted: 0,
            bytes: 0,
            literal_bytes: 0,
            failures: BTreeMap::new(),
            connection_failures: BTreeMap::new(),
            examples: BTreeMap::new(),
            latency: new_latency_histogram()?,
        })
    }

    fn op_failed(&mut self, err: &ImapError) {
        let key = err.failure_key();
        add_example(&mut self.examples, &key, err);
        self.failed += 1;
        add_count(&mut self.failures, key);
    }

    fn connection_failed(&mut self, stage: &str, err: &ImapError) {
        let key = format!("{stage}: {}", err.failure_key());
        add_example(&mut self.examples, &key, err);
        add_count(&mut self.connection_failures, key);
    }
}

/// A logged-in connection with the UIDs it may fetch.
struct Ready {
    conn: Conn,
    uids: Vec<u32>,
    /// Messages this connection appended (mix): the only ones it expunges, so no other
    /// connection's FETCH can miss.
    own: Vec<u32>,
    /// Operations done in this session.
    ops: u64,
}

/// How a session's run of operations ended.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// Budget or time used up.
    Done,
    /// The connection broke.
    Broken,
    /// `churn`: log out and in again.
    Churn,
}

enum Setup {
    Ready(Box<Ready>),
    /// Worth retrying (network trouble, timeouts).
    Retry,
    /// Retrying cannot help (bad credentials, missing mailbox, empty mailbox) or the run
    /// is over.
    Stop,
}

async fn setup(shared: &Shared, id: usize, stats: &mut OpsStats) -> Setup {
    let cfg = &shared.cfg;
    let addr = shared.addrs[id % shared.addrs.len()];
    let buffer = 64 * 1024;
    let fail = |stats: &mut OpsStats, stage: &str, e: ImapError| {
        if matches!(e, ImapError::Deadline) {
            return Setup::Stop;
        }
        stats.connection_failed(stage, &e);
        if e.connection_usable() {
            Setup::Stop
        } else {
            Setup::Retry
        }
    };
    let mut conn = match Conn::open(
        addr,
        shared.deadline,
        cfg.io_timeout,
        cfg.read_limits,
        buffer,
        cfg.tls.as_ref(),
    )
    .await
    {
        Ok(c) => c,
        Err((stage, e)) => return fail(stats, stage, e),
    };
    let exists = match conn
        .login_select(&cfg.user_for(id), &cfg.password, &cfg.mailbox)
        .await
    {
        Ok(n) => n,
        Err((stage, e)) => return fail(stats, stage, e),
    };
    stats.sessions += 1;
    stats.mailbox_messages = stats.mailbox_messages.max(exists);
    let mut uids = Vec::new();
    if matches!(
        cfg.scenario,
        Scenario::Fetch | Scenario::Mix | Scenario::Churn
    ) {
        match conn
            .command("UID SEARCH ALL")
            .await
            .and_then(Exchange::into_ok)
        {
            Ok(ex) => uids = search_uids(&ex.untagged),
            Err(e) => return fail(stats, "search", e),
        }
        if uids.is_empty() {
            let e = ImapError::Protocol(format!(
                "mailbox {:?} has no messages to fetch",
                cfg.mailbox
            ));
            stats.connection_failed("search", &e);
            return Setup::Stop;
        }
    }
    Setup::Ready(Box::new(Ready {
        conn,
        uids,
        own: Vec::new(),
        ops: 0,
    }))
}

/// One connection's work. The first setup happens before the start barrier so that
/// logins (slow by design: argon2id) are not part of the measured phase.
async fn ops_worker(shared: Arc<Shared>, id: usize, mut stats: OpsStats) -> OpsStats {
    let mut state = setup(&shared, id, &mut stats).await;
    shared.start.wait().await;
    let mut rng = Rng::new(seed(id));
    let mut backoff = BACKOFF_MIN;
    loop {
        match state {
            Setup::Stop => break,
            Setup::Retry => {
                if !shared.budget_left() {
                    break;
                }
                let spread = 1.0 + (id % 8) as f64 / 16.0;
                let wake = Instant::now() + backoff.mul_f64(spread);
                tokio::time::sleep_until(wake.min(shared.deadline)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if !shared.budget_left() {
                    break;
                }
                state = setup(&shared, id, &mut stats).await;
            }
            Setup::Ready(mut ready) => {
                backoff = BACKOFF_MIN;
                match run_session_ops(&shared, &mut ready, &mut rng, &mut stats).await {
                    SessionEnd::Done => {
                        ready.conn.logout().await;
                        break;
                    }
                    SessionEnd::Churn => {
                        ready.conn.logout().await;
                        state = setup(&shared, id, &mut stats).await;
                    }
                    SessionEnd::Broken => state = Setup::Retry,
                }
            }
        }
    }
    stats
}

fn seed(id: usize) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ ((id as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D))
}

/// Runs operations until the budget or the time is used up, the connection breaks, or
/// (churn) the session has done its share.
async fn run_session_ops(
    shared: &Shared,
    ready: &mut Ready,
    rng: &mut Rng,
    stats: &mut OpsStats,
) -> SessionEnd {
    while let Some(seq) = shared.claim() {
        let started = Instant::now();
        ready.ops += 1;
        let result = match shared.cfg.scenario {
            Scenario::Fetch => fetch_one(shared, ready, rng).await,
            Scenario::Mix | Scenario::Churn => mix_one(shared, ready, rng, seq).await,
            _ => append_one(shared, &mut ready.conn, seq).await,
        };
        match result {
            Ok((bytes, literal)) => {
                record_latency(&mut stats.latency, started.elapsed());
                stats.ok += 1;
                stats.bytes += bytes as u64;
                stats.literal_bytes += literal as u64;
            }
            Err(ImapError::Deadline) => {
                stats.interrupted += 1;
                return SessionEnd::Done;
            }
            Err(e) => {
                stats.op_failed(&e);
                if !e.connection_usable() {
                    return SessionEnd::Broken;
                }
            }
        }
        if shared.cfg.scenario == Scenario::Churn && ready.ops >= CHURN_OPS {
            return if shared.budget_left() {
                SessionEnd::Churn
            } else {
                SessionEnd::Done
            };
        }
    }
    SessionEnd::Done
}

/// One operation of the mix; returns response and literal bytes.
async fn mix_one(
    shared: &Shared,
    ready: &mut Ready,
    rng: &mut Rng,
    seq: u64,
) -> Result<(usize, usize), ImapError> {
    let mailbox = quote(&shared.cfg.mailbox);
    let op = MixOp::pick(rng.below(100) as u32);
    let ex = match op {
        MixOp::Fetch => return fetch_one(shared, ready, rng).await,
        MixOp::Append => {
            let message = shared.template.render(seq, SystemTime::now());
            let conn = &mut ready.conn;
            let tag = conn.tag();
            conn.send(format!("{tag} APPEND {mailbox} {{{}}}\r\n", message.len()).as_bytes())
                .await?;
            conn.until_continuation(&tag).await?;
            let mut wire = message;
            wire.extend_from_slice(b"\r\n");
            conn.send(&wire).await?;
            let ex = conn.until_tagged(&tag).await?.into_ok()?;
            if let Some(uid) = appended_uid(&ex.done) {
                ready.own.push(uid);
            }
            ex
        }
        MixOp::Store => {
            let uid = ready.uids[rng.below(ready.uids.len())];
            let sign = if rng.below(2) == 0 { '+' } else { '-' };
            ready
                .conn
                .command(&format!("UID STORE {uid} {sign}FLAGS (\\Flagged)"))
                .await?
                .into_ok()?
        }
        MixOp::Expunge => match ready.own.pop() {
            Some(uid) => {
                let mut ex = ready
                    .conn
                    .command(&format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"))
                    .await?
                    .into_ok()?;
                let done = ready
                    .conn
                    .command(&format!("UID EXPUNGE {uid}"))
                    .await?
                    .into_ok()?;
                ex.wire_len += done.wire_len;
                ex
            }
            None => ready.conn.command("NOOP").await?.into_ok()?,
        },
        MixOp::Status => ready
            .conn
            .command(&format!("STATUS {mailbox} (MESSAGES UNSEEN UIDNEXT)"))
            .await?
            .into_ok()?,
        MixOp::List => ready.conn.command("LIST \"\" \"*\"").await?.into_ok()?,
        MixOp::Select => ready
            .conn
            .command(&format!("SELECT {mailbox}"))
            .await?
            .into_ok()?,
        MixOp::Noop => ready.conn.command("NOOP").await?.into_ok()?,
    };
    Ok((ex.wire_len, ex.literal_bytes()))
}

/// The UID in a tagged `OK [APPENDUID <validity> <uid>]` (RFC 4315).
pub fn appended_uid(done: &ImapResponse) -> Option<u32> {
    if done.code() != Some("APPENDUID") {
        return None;
    }
    let inner = done.text().split_once('[')?.1.split_once(']')?.0;
    inner.split(' ').nth(2)?.parse().ok()
}

/// `UID FETCH <random uid> (<items>)`; returns response and literal bytes.
async fn fetch_one(
    shared: &Shared,
    ready: &mut Ready,
    rng: &mut Rng,
) -> Result<(usize, usize), ImapError> {
    let uid = ready.uids[rng.below(ready.uids.len())];
    let ex = ready
        .conn
        .command(&format!("UID FETCH {uid} {}", shared.fetch_list))
        .await?
        .into_ok()?;
    if ex.fetch_count() == 0 {
        // The message was expunged since SEARCH: no data came back, so this is not a
        // fetch worth counting as a success.
        return Err(ImapError::Rejected {
            status: None,
            code: Some("no FETCH data".into()),
            text: format!("UID {uid} returned no FETCH response"),
        });
    }
    Ok((ex.wire_len, ex.literal_bytes()))
}

/// `APPEND <mailbox> {n}`, wait for `+`, send the message; returns the message size.
async fn append_one(
    shared: &Shared,
    conn: &mut Conn,
    seq: u64,
) -> Result<(usize, usize), ImapError> {
    let message = shared.template.render(seq, SystemTime::now());
    let tag = conn.tag();
    conn.send(
        format!(
            "{tag} APPEND {} {{{}}}\r\n",
            quote(&shared.cfg.mailbox),
            message.len()
        )
        .as_bytes(),
    )
    .await?;
    conn.until_continuation(&tag).await?;
    let mut wire = message;
    let size = wire.len();
    wire.extend_from_slice(b"\r\n");
    conn.send(&wire).await?;
    conn.until_tagged(&tag).await?.into_ok()?;
    Ok((size, 0))
}

async fn run_ops(cfg: ImapLoadConfig, addrs: Vec<SocketAddr>) -> anyhow::Result<OpsReport> {
    let workers = usize::try_from(cfg.count).map_or(cfg.connections, |c| cfg.connections.min(c));
    if workers > 900 {
        ensure_fd_limit(workers as u64 + 64)?;
    }
    let user_addr = cfg.user_for(0);
    let rcpt = if user_addr.contains('@') {
        user_addr
    } else {
        format!("{user_addr}@load.test")
    };
    let template =
        MessageTemplate::for_generator("imap-load", "sender@load.test", &[rcpt], cfg.message_size);
    let command = match cfg.scenario {
        Scenario::Fetch => format!("UID FETCH <random uid> {}", cfg.fetch_list()),
        Scenario::Mix => "mix of FETCH, STORE, APPEND, EXPUNGE, STATUS, LIST, SELECT, NOOP".into(),
        Scenario::Churn => format!(
            "mix of FETCH, STORE, APPEND, EXPUNGE, STATUS, LIST, SELECT, NOOP; new LOGIN every {CHURN_OPS}"
        ),
        _ => format!(
            "APPEND {} {{~{} bytes}} (synchronizing literal)",
            quote(&cfg.mailbox),
            cfg.message_size
        ),
    };
    let setup_started = Instant::now();
    // The duration cap counts from here, logins included, so that a server that never
    // answers LOGIN cannot hang the run.
    let shared = Arc::new(Shared {
        fetch_list: cfg.fetch_list(),
        addrs,
        template,
        next_seq: AtomicU64::new(0),
        deadline: setup_started + cfg.duration,
        start: Barrier::new(workers + 1),
        cfg,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..workers {
        tasks.spawn(ops_worker(Arc::clone(&shared), id, OpsStats::new()?));
    }
    shared.start.wait().await;
    let setup_elapsed = setup_started.elapsed();
    let phase_started = Instant::now();

    let mut report = OpsReport {
        scenario: shared.cfg.scenario,
        targets: shared.cfg.targets.clone(),
        connections: workers,
        command,
        budget: shared.cfg.count,
        sessions: 0,
        mailbox_messages: None,
        setup_elapsed,
        ok: 0,
        failed: 0,
        failures: BTreeMap::new(),
        connection_failures: BTreeMap::new(),
        failure_examples: BTreeMap::new(),
        interrupted: 0,
        bytes: 0,
        literal_bytes: 0,
        elapsed: Duration::ZERO,
        latency: new_latency_histogram()?,
    };
    let mut end = phase_started;
    while let Some(joined) = tasks.join_next().await {
        let stats = joined.context("load worker panicked")?;
        // The phase ends when the last worker stops measuring, not after its LOGOUT, but
        // LOGOUT is bounded by LOGOUT_GRACE and is usually sub-millisecond.
        end = end.max(Instant::now());
        report.sessions += stats.sessions;
        report.mailbox_messages = report.mailbox_messages.max(stats.mailbox_messages);
        report.ok += stats.ok;
        report.failed += stats.failed;
        report.interrupted += stats.interrupted;
        report.bytes += stats.bytes;
        report.literal_bytes += stats.literal_bytes;
        merge_counts(&mut report.failures, stats.failures);
        merge_counts(&mut report.connection_failures, stats.connection_failures);
        for (k, v) in stats.examples {
            report.failure_examples.entry(k).or_insert(v);
        }
        report
            .latency
            .add(&stats.latency)
            .map_err(|e| anyhow!("cannot merge latency histograms: {e:?}"))?;
    }
    report.elapsed = end.duration_since(phase_started);
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------------------

/// What an idle connection reports once it is idling (or why it is not).
type SetupResult = Result<Duration, (String, String)>;

/// What an idle connection reports at the end.
type LogoutResult = Option<Result<(), String>>;

/// Small read buffer for idle connections: they only ever read short lines, and ten
/// thousand 64 KiB buffers would dominate the generator's memory.
const IDLE_BUFFER: usize = 1024;

async fn idle_connection(
    cfg: Arc<ImapLoadConfig>,
    addr: SocketAddr,
    id: usize,
    ramp_deadline: Instant,
    ready: oneshot::Sender<SetupResult>,
    mut release: watch::Receiver<bool>,
) -> LogoutResult {
    let started = Instant::now();
    let setup = async {
        let mut conn = Conn::open(
            addr,
            ramp_deadline,
            cfg.io_timeout,
            cfg.read_limits,
            IDLE_BUFFER,
            cfg.tls.as_ref(),
        )
        .await?;
        conn.login_select(&cfg.user_for(id), &cfg.password, &cfg.mailbox)
            .await?;
        let tag = conn.tag();
        conn.send(format!("{tag} IDLE\r\n").as_bytes())
            .await
            .map_err(|e| ("idle", e))?;
        conn.until_continuation(&tag)
            .await
            .map_err(|e| ("idle", e))?;
        Ok::<_, (&'static str, ImapError)>((conn, tag))
    };
    let (mut conn, tag) = match setup.await {
        Ok(ok) => ok,
        Err((stage, e)) => {
            let _ = ready.send(Err((
                format!("{stage}: {}", e.failure_key()),
                e.to_string(),
            )));
            return None;
        }
    };
    let _ = ready.send(Ok(started.elapsed()));
    // Hold the connection until released (or the coordinator is gone).
    while !*release.borrow_and_update() {
        if release.changed().await.is_err() {
            break;
        }
    }
    conn.deadline = Instant::now() + cfg.io_timeout;
    let leave = async {
        conn.send(b"DONE\r\n").await?;
        conn.until_tagged(&tag).await?.into_ok()?;
        match conn.command("LOGOUT").await {
            // The server may close right after BYE without the tagged OK reaching us.
            Ok(_) | Err(ImapError::Bye(_)) => Ok(()),
            Err(e) => Err(e),
        }
    };
    let result = leave.await.map_err(|e| e.failure_key());
    let _ = conn.writer.shutdown().await;
    Some(result)
}

async fn run_idle(cfg: ImapLoadConfig, addrs: Vec<SocketAddr>) -> anyhow::Result<IdleReport> {
    let fd_limit = ensure_fd_limit(cfg.connections as u64 + 64)?;
    let cfg = Arc::new(cfg);
    let rss = |pid: Option<u32>| pid.and_then(|p| read_rss_kib(p).ok());
    if let Some(pid) = cfg.server_pid {
        read_rss_kib(pid)
            .with_context(|| format!("cannot read the memory of --server-pid {pid}"))?;
    }
    let rss_before_kib = rss(cfg.server_pid);
    let (release_tx, release_rx) = watch::channel(false);
    let mut setup_latency = new_latency_histogram()?;
    let mut connection_failures = BTreeMap::new();
    let mut failure_examples = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let ramp_deadline = started + cfg.duration;
    let mut idling = 0u64;
    let mut ramp_stopped: Option<String> = None;
    let rss_guard_kib = match (cfg.server_pid, cfg.max_server_rss_kib) {
        (Some(_), Some(limit)) => Some(limit),
        (Some(_), None) => default_rss_guard_kib(),
        (None, _) => None,
    };
    let mut opened = 0usize;
    while opened < cfg.connections && ramp_stopped.is_none() {
        if Instant::now() >= ramp_deadline {
            ramp_stopped = Some("duration cap reached".into());
            break;
        }
        let n = cfg.batch.min(cfg.connections - opened);
        let mut waits = Vec::with_capacity(n);
        for id in opened..opened + n {
            let (tx, rx) = oneshot::channel();
            waits.push(rx);
            tasks.spawn(idle_connection(
                Arc::clone(&cfg),
                addrs[id % addrs.len()],
                id,
                ramp_deadline,
                tx,
                release_rx.clone(),
            ));
        }
        opened += n;
        for rx in waits {
            match rx.await {
                Ok(Ok(latency)) => {
                    idling += 1;
                    record_latency(&mut setup_latency, latency);
                }
                Ok(Err((key, detail))) => {
                    if key.ends_with(": deadline") {
                        ramp_stopped = Some("duration cap reached".into());
                    }
                    failure_examples.entry(key.clone()).or_insert(detail);
                    add_count(&mut connection_failures, key);
                }
                Err(_) => add_count(&mut connection_failures, "task ended".into()),
            }
        }
        let server_rss = rss(cfg.server_pid);
        eprintln!(
            "imap-load: {idling} of {} connections idling after {:.1} s{}",
            cfg.connections,
            started.elapsed().as_secs_f64(),
            server_rss.map_or_else(String::new, |kib| format!(
                ", server VmRSS {:.1} MiB",
                kib as f64 / 1024.0
            ))
        );
        if let (Some(kib), Some(limit)) = (server_rss, rss_guard_kib) {
            if kib > limit {
                ramp_stopped = Some(format!(
                    "server VmRSS {:.0} MiB passed the limit of {:.0} MiB (--max-server-rss-mib)",
                    kib as f64 / 1024.0,
                    limit as f64 / 1024.0
                ));
            }
        }
    }
    let ramp_elapsed = started.elapsed();
    tokio::time::sleep(cfg.settle).await;
    let rss_idle_kib = rss(cfg.server_pid);
    let client_rss_kib = read_rss_kib(std::process::id()).ok();
    if let (Some(kib), Some(pid)) = (rss_idle_kib, cfg.server_pid) {
        eprintln!(
            "imap-load: server pid {pid} VmRSS {:.1} MiB with {idling} idling; holding {:.0} s",
            kib as f64 / 1024.0,
            cfg.hold.as_secs_f64()
        );
    }
    tokio::time::sleep(cfg.hold).await;
    let rss_after_hold_kib = rss(cfg.server_pid);
    let _ = release_tx.send(true);
    let mut logged_out = 0u64;
    let mut logout_failures = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.context("idle connection task panicked")? {
            None => {}
            Some(Ok(())) => logged_out += 1,
            Some(Err(key)) => add_count(&mut logout_failures, key),
        }
    }
    Ok(IdleReport {
        targets: cfg.targets.clone(),
        requested: cfg.connections,
        batch: cfg.batch,
        idling,
        connection_failures,
        failure_examples,
        ramp_stopped,
        ramp_elapsed,
        setup_latency,
        server_pid: cfg.server_pid,
        rss_before_kib,
        rss_idle_kib,
        rss_after_hold_kib,
        client_rss_kib,
        hold: cfg.hold,
        logged_out,
        logout_failures,
        fd_limit,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn tls_target_trusts_the_given_certificate_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        mailfleet_core::tls::generate_self_signed("mx.example.test", &cert, &key)
            .expect("generate");
        let target = TlsTarget::from_pem_file(&cert, "mx.example.test").expect("load");
        assert_eq!(
            format!("{target:?}"),
            r#"TlsTarget { name: DnsName("mx.example.test") }"#
        );
        std::fs::write(&key, "").expect("empty");
        let empty = TlsTarget::from_pem_file(&key, "mx.example.test").expect_err("no cert");
        assert!(format!("{empty:#}").contains("no certificate"), "{empty:#}");
        assert!(TlsTarget::from_pem_file(&cert, "not a name!").is_err());
    }

    use super::*;

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_announcement(b"* 1 FETCH (BODY[] {12}"), Some(12));
        assert_eq!(literal_announcement(b"* 1 FETCH (BINARY[] ~{3}"), Some(3));
        assert_eq!(literal_announcement(b"{0}"), Some(0));
        assert_eq!(literal_announcement(b"* OK done"), None);
        assert_eq!(literal_announcement(b"* OK {}"), None);
        assert_eq!(literal_announcement(b"* OK {1a}"), None);
        assert_eq!(literal_announcement(b"* OK {12} "), None);
        assert_eq!(literal_announcement(b"* OK {99999999999999999999}"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("INBOX"), "\"INBOX\"");
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn proc_parsing() {
        let status = "Name:\tmailfleet\nVmHWM:\t  40000 kB\nVmRSS:\t   31234 kB\nThreads:\t5\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(31_234));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(40_000));
        assert_eq!(parse_status_kib(status, "Threads"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             unlimited            unlimited            processes \n\
                      Max open files            20000                65536                files     \n";
        assert_eq!(parse_nofile_limits(limits), Some((20_000, 65_536)));
        assert!(read_rss_kib(std::process::id()).unwrap() > 0);
        assert!(own_nofile_limits().unwrap().0 > 0);
    }

    #[test]
    fn config_validation() {
        let ok = ImapLoadConfig {
            password: "secret".into(),
            ..ImapLoadConfig::default()
        };
        assert!(ok.validate().is_ok());
        assert!(ImapLoadConfig::default().validate().is_err(), "no password");
        let injected = ImapLoadConfig {
            mailbox: "INBOX\r\nA DELETE INBOX".into(),
            ..ok.clone()
        };
        assert!(injected.validate().is_err());
        let users = ImapLoadConfig {
            user: "load{n}@example.test".into(),
            users: 3,
            ..ok.clone()
        };
        assert_eq!(users.user_for(4), "load1@example.test");
        assert_eq!(ok.user_for(4), "load@example.test");
        assert_eq!(ok.fetch_list(), "(FLAGS BODY.PEEK[])");
        let listed = ImapLoadConfig {
            fetch_items: "(ENVELOPE)".into(),
            ..ok
        };
        assert_eq!(listed.fetch_list(), "(ENVELOPE)");
    }

    #[test]
    fn rng_stays_in_range() {
        let mut rng = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[rng.below(7)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn the_mix_has_its_stated_weights() {
        assert_eq!(MIX.iter().map(|(_, w)| w).sum::<u32>(), 100);
        let mut counts = std::collections::HashMap::new();
        for roll in 0..100 {
            *counts.entry(MixOp::pick(roll)).or_insert(0u32) += 1;
        }
        for (op, weight) in MIX {
            assert_eq!(counts[&op], weight, "{op:?}");
        }
    }

    #[test]
    fn appenduid_is_read_from_the_completion() {
        let done = |text: &str| ImapResponse {
            kind: ResponseKind::Tagged("L1".into()),
            lines: vec![text.into()],
            literals: vec![],
            wire_len: 0,
        };
        assert_eq!(
            appended_uid(&done("OK [APPENDUID 38505 3955] APPEND completed")),
            Some(3955)
        );
        assert_eq!(appended_uid(&done("OK APPEND completed")), None);
        assert_eq!(appended_uid(&done("NO [TRYCREATE] no mailbox")), None);
    }
}
