//! POP3 load: the way a mail client that downloads mail (a phone's POP3 account, fetchmail)
//! works a maildrop, to compare servers side by side.
//!
//! Each of `workers` workers repeats one session until the run ends: connect, read the
//! greeting, `USER`/`PASS`, `STAT`, `UIDL` (the whole listing), `RETR` of `retr_per_session`
//! messages picked at random from the maildrop, `QUIT`. Workers log in as different users
//! (worker *i* is user *i mod users*): a POP3 server locks a maildrop for one session at a
//! time (RFC 1939 §8), so two workers on one user would only measure the lock.
//!
//! Written by hand rather than with a POP3 crate: the few commands needed are one line each,
//! and the generator must read responses with its own size and time bounds so a broken
//! server cannot make it buffer or wait without limit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{format_counts, format_table, new_latency_histogram, record_latency};
use crate::{JsonObject, LatencySummary};

/// Longest response line the generator accepts (RFC 1939 allows 512 octets; servers send
/// longer greetings or `-ERR` texts in practice).
const MAX_LINE: usize = 64 * 1024;
/// Largest multi-line response (a RETR of one message, or a UIDL listing).
const MAX_MULTILINE: usize = 64 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct Pop3LoadConfig {
    pub targets: Vec<String>,
    /// Concurrent sessions.
    pub workers: usize,
    /// Sessions to run in all (across workers); the run also stops at `duration`.
    pub sessions: u64,
    pub duration: Duration,
    /// Login name; `{n}` becomes the worker number modulo `users`.
    pub user: String,
    pub users: usize,
    pub password: String,
    /// Messages retrieved per session (fewer when the maildrop is smaller).
    pub retr_per_session: usize,
    /// Per-operation timeout (connect, each command).
    pub io_timeout: Duration,
}

impl Default for Pop3LoadConfig {
    fn default() -> Self {
        Self {
            targets: vec!["127.0.0.1:1110".into()],
            workers: 20,
            sessions: 1000,
            duration: Duration::from_secs(120),
            user: "load{n}@example.test".into(),
            users: 20,
            password: String::new(),
            retr_per_session: 20,
            io_timeout: Duration::from_secs(30),
        }
    }
}

/// Results of a run.
#[derive(Debug)]
pub struct Pop3LoadReport {
    pub workers: usize,
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    pub retrs: u64,
    pub retr_bytes: u64,
    pub elapsed: Duration,
    /// Whole-session latency (connect to the `QUIT` reply).
    pub session_latency: Option<LatencySummary>,
    /// Per-RETR latency.
    pub retr_latency: Option<LatencySummary>,
    /// Failed sessions by reason.
    pub failures: BTreeMap<String, u64>,
    pub stopped_by_deadline: bool,
}

impl Pop3LoadReport {
    pub fn retr_per_sec(&self) -> f64 {
        self.retrs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn sessions_per_sec(&self) -> f64 {
        self.sessions_ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn table(&self) -> String {
        let mut rows = vec![
            ("workers".to_string(), self.workers.to_string()),
            (
                "sessions".into(),
                format!("{} ok, {} failed", self.sessions_ok, self.sessions_failed),
            ),
            (
                "elapsed".into(),
                format!("{:.2} s", self.elapsed.as_secs_f64()),
            ),
            (
                "throughput".into(),
                format!(
                    "{:.1} RETR/s, {:.1} sessions/s ({:.1} MiB/s)",
                    self.retr_per_sec(),
                    self.sessions_per_sec(),
                    self.retr_bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64()
                ),
            ),
        ];
        for (label, summary) in [
            ("session", self.session_latency.as_ref()),
            ("retr", self.retr_latency.as_ref()),
        ] {
            for (k, v) in LatencySummary::table_rows(summary) {
                rows.push((format!("{label} {k}"), v));
            }
        }
        if !self.failures.is_empty() {
            rows.push(("failures".into(), format_counts(&self.failures)));
        }
        if self.stopped_by_deadline {
            rows.push(("stopped".into(), "duration cap reached".into()));
        }
        format_table(&rows)
    }

    pub fn to_json(&self) -> String {
        let mut obj = JsonObject::new();
        obj.str("scenario", "pop3")
            .u64("workers", self.workers as u64)
            .u64("sessions_ok", self.sessions_ok)
            .u64("sessions_failed", self.sessions_failed)
            .u64("retrs", self.retrs)
            .u64("retr_bytes", self.retr_bytes)
            .f64("elapsed_secs", self.elapsed.as_secs_f64())
            .f64("retr_per_sec", self.retr_per_sec())
            .f64("sessions_per_sec", self.sessions_per_sec())
            .counts("failures", &self.failures)
            .bool("stopped_by_deadline", self.stopped_by_deadline);
        for (key, summary) in [
            ("session_us", self.session_latency.as_ref()),
            ("retr_us", self.retr_latency.as_ref()),
        ] {
            match summary {
                Some(s) => obj.raw(key, &s.to_json()),
                None => obj.raw(key, "null"),
            };
        }
        obj.finish()
    }
}

struct Shared {
    cfg: Pop3LoadConfig,
    deadline: Instant,
    /// Sessions started so far; workers stop once it reaches `cfg.sessions`.
    started: AtomicU64,
    deadline_hit: AtomicBool,
}

#[derive(Default)]
struct WorkerStats {
    ok: u64,
    failed: u64,
    retrs: u64,
    retr_bytes: u64,
    failures: BTreeMap<String, u64>,
    session_hist: Option<Histogram<u64>>,
    retr_hist: Option<Histogram<u64>>,
}

/// Runs the load and returns the report.
pub async fn run_pop3_load(cfg: Pop3LoadConfig) -> anyhow::Result<Pop3LoadReport> {
    if cfg.workers == 0 || cfg.users == 0 {
        bail!("--workers and --users must be at least 1");
    }
    if cfg.targets.is_empty() {
        bail!("no --target");
    }
    let mut addrs = Vec::new();
    for t in &cfg.targets {
        let addr = tokio::net::lookup_host(t)
            .await
            .with_context(|| format!("resolving {t}"))?
            .next()
            .ok_or_else(|| anyhow!("{t} resolves to nothing"))?;
        addrs.push(addr);
    }
    let workers = cfg.workers;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        deadline: start + cfg.duration,
        cfg,
        started: AtomicU64::new(0),
        deadline_hit: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    for id in 0..workers {
        let shared = shared.clone();
        let addr = addrs[id % addrs.len()];
        tasks.push(tokio::spawn(async move { worker(&shared, id, addr).await }));
    }
    let mut session_hist = new_latency_histogram()?;
    let mut retr_hist = new_latency_histogram()?;
    let mut report = Pop3LoadReport {
        workers,
        sessions_ok: 0,
        sessions_failed: 0,
        retrs: 0,
        retr_bytes: 0,
        elapsed: Duration::ZERO,
        session_latency: None,
        retr_latency: None,
        failures: BTreeMap::new(),
        stopped_by_deadline: false,
    };
    for t in tasks {
        let s = t.await.context("worker task")??;
        report.sessions_ok += s.ok;
        report.sessions_failed += s.failed;
        report.retrs += s.retrs;
        report.retr_bytes += s.retr_bytes;
        for (k, v) in s.failures {
            *report.failures.entry(k).or_default() += v;
        }
        if let Some(h) = &s.session_hist {
            session_hist.add(h).map_err(|e| anyhow!("{e:?}"))?;
        }
        if let Some(h) = &s.retr_hist {
            retr_hist.add(h).map_err(|e| anyhow!("{e:?}"))?;
        }
    }
    report.elapsed = start.elapsed();
    report.session_latency = LatencySummary::from_histogram(&session_hist);
    report.retr_latency = LatencySummary::from_histogram(&retr_hist);
    report.stopped_by_deadline = shared.deadline_hit.load(Ordering::Relaxed);
    Ok(report)
}

async fn worker(shared: &Shared, id: usize, addr: SocketAddr) -> anyhow::Result<WorkerStats> {
    let mut stats = WorkerStats {
        session_hist: Some(new_latency_histogram()?),
        retr_hist: Some(new_latency_histogram()?),
        ..WorkerStats::default()
    };
    let user = shared
        .cfg
        .user
        .replace("{n}", &(id % shared.cfg.users).to_string());
    // A small per-worker xorshift: the picks only need to spread over the maildrop.
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (id as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut backoff = Duration::from_millis(50);
    loop {
        if shared.started.fetch_add(1, Ordering::Relaxed) >= shared.cfg.sessions {
            break;
        }
        if Instant::now() >= shared.deadline {
            shared.deadline_hit.store(true, Ordering::Relaxed);
            break;
        }
        let began = Instant::now();
        match session(shared, addr, &user, &mut rng, &mut stats).await {
            Ok(()) => {
                stats.ok += 1;
                if let Some(h) = stats.session_hist.as_mut() {
                    record_latency(h, began.elapsed());
                }
                backoff = Duration::from_millis(50);
            }
            Err(e) => {
                if Instant::now() >= shared.deadline {
                    shared.deadline_hit.store(true, Ordering::Relaxed);
                    break;
                }
                stats.failed += 1;
                *stats.failures.entry(e.to_string()).or_default() += 1;
                if e.stage == "PASS" {
                    // A refused login: retrying only trips the server's throttling.
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    Ok(stats)
}

/// One POP3 session; an error names the command that failed and why.
async fn session(
    shared: &Shared,
    addr: SocketAddr,
    user: &str,
    rng: &mut u64,
    stats: &mut WorkerStats,
) -> Result<(), SessionError> {
    let cfg = &shared.cfg;
    let stream = bounded(shared, TcpStream::connect(addr))
        .await?
        .map_err(|e| SessionError::new("connect", e.to_string()))?;
    stream.set_nodelay(true).ok();
    let mut conn = BufReader::new(stream);
    let mut line = Vec::with_capacity(256);
    status_line(shared, &mut conn, &mut line, "greeting").await?;
    command(
        shared,
        &mut conn,
        &mut line,
        &format!("USER {user}"),
        "USER",
    )
    .await?;
    command(
        shared,
        &mut conn,
        &mut line,
        &format!("PASS {}", cfg.password),
        "PASS",
    )
    .await?;
    command(shared, &mut conn, &mut line, "STAT", "STAT").await?;
    let count: u64 = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| SessionError::new("STAT", "no message count".into()))?;
    command(shared, &mut conn, &mut line, "UIDL", "UIDL").await?;
    let listed = multiline(shared, &mut conn, &mut line, "UIDL").await?;
    if count > 0 && listed.lines == 0 {
        return Err(SessionError::new("UIDL", "empty listing".into()));
    }
    for _ in 0..cfg.retr_per_session.min(count as usize) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let n = *rng % count + 1;
        let began = Instant::now();
        command(shared, &mut conn, &mut line, &format!("RETR {n}"), "RETR").await?;
        let body = multiline(shared, &mut conn, &mut line, "RETR").await?;
        stats.retrs += 1;
        stats.retr_bytes += body.bytes;
        if let Some(h) = stats.retr_hist.as_mut() {
            record_latency(h, began.elapsed());
        }
    }
    command(shared, &mut conn, &mut line, "QUIT", "QUIT").await?;
    Ok(())
}

#[derive(Debug)]
struct SessionError {
    stage: &'static str,
    reason: String,
}

impl SessionError {
    fn new(stage: &'static str, reason: String) -> Self {
        Self { stage, reason }
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage, self.reason)
    }
}

async fn bounded<T>(
    shared: &Shared,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, SessionError> {
    let left = shared.deadline.saturating_duration_since(Instant::now());
    let limit = left.min(shared.cfg.io_timeout);
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| SessionError::new("io", "timeout".into()))
}

async fn read_line(
    shared: &Shared,
    conn: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    stage: &'static str,
) -> Result<(), SessionError> {
    line.clear();
    let mut limited = (&mut *conn).take(MAX_LINE as u64);
    let n = bounded(shared, limited.read_until(b'\n', line))
        .await?
        .map_err(|e| SessionError::new(stage, e.to_string()))?;
    if n == 0 {
        return Err(SessionError::new(stage, "connection closed".into()));
    }
    if !line.ends_with(b"\n") {
        return Err(SessionError::new(stage, "line too long".into()));
    }
    Ok(())
}

/// Reads a status line and fails unless it is `+OK`.
async fn status_line(
    shared: &Shared,
    conn: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    stage: &'static str,
) -> Result<(), SessionError> {
    read_line(shared, conn, line, stage).await?;
    if line.starts_with(b"+OK") {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(line);
        // Keep the reason short and free of per-session detail, so failures group.
        let first: String = text.split_whitespace().take(1).collect();
        Err(SessionError::new(stage, first))
    }
}

async fn command(
    shared: &Shared,
    conn: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    cmd: &str,
    stage: &'static str,
) -> Result<(), SessionError> {
    let mut wire = Vec::with_capacity(cmd.len() + 2);
    wire.extend_from_slice(cmd.as_bytes());
    wire.extend_from_slice(b"\r\n");
    bounded(shared, conn.get_mut().write_all(&wire))
        .await?
        .map_err(|e| SessionError::new(stage, e.to_string()))?;
    status_line(shared, conn, line, stage).await
}

struct Multiline {
    lines: u64,
    bytes: u64,
}

/// Reads a multi-line response body up to the terminating `.` line (RFC 1939 §3).
async fn multiline(
    shared: &Shared,
    conn: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    stage: &'static str,
) -> Result<Multiline, SessionError> {
    let mut out = Multiline { lines: 0, bytes: 0 };
    loop {
        read_line(shared, conn, line, stage).await?;
        if line == b".\r\n" || line == b".\n" {
            return Ok(out);
        }
        out.lines += 1;
        out.bytes += line.len() as u64;
        if out.bytes > MAX_MULTILINE as u64 {
            return Err(SessionError::new(stage, "response too large".into()));
        }
    }
}
