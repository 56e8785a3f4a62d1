//! `search-bench`: IMAP `UID SEARCH BODY` on a large mailbox, answered by the full-text
//! index versus by parsing every message (the scan), through the real IMAP session and the
//! real embedded store.
//!
//! The mailbox is filled directly through the store API (blobs put, `append` and
//! `index_text` in batches), not over SMTP: filling 100,000 messages must take minutes, not
//! hours. The same messages go into two mailboxes of one account: `Indexed`, whose texts
//! are recorded in the index as delivery records them, and `Scan`, left unindexed, so that
//! every SEARCH there parses every message, exactly what SEARCH did before the index. A
//! session on an in-memory pipe then SELECTs each mailbox and times the same searches.
//!
//! Bounded: `messages` is capped at [`MAX_MESSAGES`], each SEARCH is repeated at most
//! `repeat` times, and a scan search stops being repeated once `time_budget` is spent.

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use mailfleet_core::shutdown::Shutdown;
use mailfleet_imap::{serve_connection, ConnLimits, ImapConfig, LoginError, LoginService, Session};
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::{Account, Flags, MessageText, NewMessage, Stores};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Messages a run may create.
pub const MAX_MESSAGES: usize = 1_000_000;

/// Messages per store call while filling.
const FILL_BATCH: usize = 500;

/// The rare word: in one message of every [`RARE_EVERY`].
pub const RARE_WORD: &str = "zebrafinch";
pub const RARE_EVERY: usize = 1000;

#[derive(Clone, Debug)]
pub struct SearchBenchConfig {
    pub messages: usize,
    /// Approximate body size of each message, in bytes.
    pub body_size: usize,
    /// Times each indexed SEARCH is run.
    pub repeat: usize,
    /// Time after which a scan SEARCH is not repeated again.
    pub time_budget: Duration,
    /// Where the store lives (a fresh temporary directory when `None`).
    pub data_dir: Option<std::path::PathBuf>,
}

/// One timed search.
#[derive(Clone, Debug)]
pub struct SearchTiming {
    pub mailbox: &'static str,
    pub criteria: String,
    pub hits: usize,
    pub runs: usize,
    pub best: Duration,
    pub mean: Duration,
}

#[derive(Clone, Debug)]
pub struct SearchBenchReport {
    pub messages: usize,
    pub fill: Duration,
    pub timings: Vec<SearchTiming>,
}

impl SearchBenchReport {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "filled 2 x {} messages in {:.1} s",
            self.messages,
            self.fill.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "{:<8} {:<28} {:>8} {:>5} {:>12} {:>12}",
            "MAILBOX", "SEARCH", "HITS", "RUNS", "BEST", "MEAN"
        );
        for t in &self.timings {
            let _ = writeln!(
                s,
                "{:<8} {:<28} {:>8} {:>5} {:>10.1}ms {:>10.1}ms",
                t.mailbox,
                t.criteria,
                t.hits,
                t.runs,
                t.best.as_secs_f64() * 1e3,
                t.mean.as_secs_f64() * 1e3
            );
        }
        s
    }
}

/// A deterministic message: words from a fixed vocabulary, [`RARE_WORD`] in one of every
/// [`RARE_EVERY`], "invoice" in one of every ten.
pub fn message(i: usize, body_size: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "meeting", "project", "report", "status", "review", "budget", "schedule", "client",
        "update", "deadline", "team", "quarter", "design", "release", "feedback", "draft",
        "agenda", "travel", "contract", "support", "network", "server", "customer", "order",
    ];
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 29;
        (x % WORDS.len() as u64) as usize
    };
    let mut body = String::new();
    if i % RARE_EVERY == 7 {
        body.push_str(RARE_WORD);
        body.push(' ');
    }
    if i % 10 == 3 {
        body.push_str("invoice ");
    }
    let mut line = 0;
    while body.len() < body_size {
        body.push_str(WORDS[next()]);
        line += 1;
        if line % 10 == 0 {
            body.push_str("\r\n");
        } else {
            body.push(' ');
        }
    }
    format!(
        "From: Sender {} <sender{}@example.test>\r\nTo: bench@example.test\r\n\
         Subject: {} {} number {i}\r\nMessage-ID: <bench-{i}@example.test>\r\n\
         Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n{body}\r\n",
        i % 97,
        i % 97,
        WORDS[next()],
        WORDS[next()],
    )
    .into_bytes()
}

struct AnyPassword(Stores);

#[async_trait]
impl LoginService for AnyPassword {
    async fn login(&self, user: &str, _: &str, _: IpAddr) -> Result<Account, LoginError> {
        self.0
            .meta
            .get_account(user)
            .await
            .map_err(|_| LoginError::Unavailable)?
            .ok_or(LoginError::Invalid)
    }
}

/// A minimal IMAP client on the in-memory pipe.
struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
}

impl Client {
    async fn cmd(&mut self, tag: &str, line: &str) -> anyhow::Result<Vec<String>> {
        self.io
            .write_all(format!("{tag} {line}\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        loop {
            let l = self.line().await?;
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                break;
            }
        }
        if !out
            .last()
            .is_some_and(|l| l.starts_with(&format!("{tag} OK")))
        {
            bail!("{line}: {:?}", out.last());
        }
        Ok(out)
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(p) = self.buf.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=p).collect();
                return Ok(String::from_utf8_lossy(&l).trim_end().to_string());
            }
            let mut chunk = vec![0u8; 1 << 16];
            let n = tokio::time::timeout(Duration::from_secs(3600), self.io.read(&mut chunk))
                .await
                .context("server answer timed out")??;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn client(stores: &Stores, user: &str) -> anyhow::Result<Client> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let cfg = Arc::new(ImapConfig {
        hostname: "bench.example.test".into(),
        starttls: false,
        plaintext_auth_without_tls: true,
        max_message_size: 1 << 20,
        max_failed_logins: 3,
        idle_timeout: Duration::from_secs(1800),
        user_sessions: mailfleet_imap::UserSessions::new(20),
        views: mailfleet_imap::SharedViews::new(),
        junk_training: None,
    });
    let session = Session::new(
        cfg,
        stores.clone(),
        Arc::new(AnyPassword(stores.clone())),
        "192.0.2.9".parse()?,
        false,
    );
    let limits = ConnLimits {
        max_literal: 1 << 20,
        max_command: 1 << 16,
        max_errors: 5,
        tls_handshake_timeout: Duration::from_secs(5),
        idle_recheck: Duration::from_secs(3600),
    };
    tokio::spawn(serve_connection(
        Box::new(server),
        session,
        limits,
        None,
        Shutdown::never(),
    ));
    let mut c = Client {
        io: client,
        buf: Vec::new(),
    };
    c.line().await?;
    c.cmd("l", &format!("LOGIN {user} x")).await?;
    Ok(c)
}

/// Fills both mailboxes, then times the searches.
pub async fn run_search_bench(cfg: &SearchBenchConfig) -> anyhow::Result<SearchBenchReport> {
    if cfg.messages == 0 || cfg.messages > MAX_MESSAGES {
        bail!("--messages must be 1..={MAX_MESSAGES}");
    }
    let tmp = tempfile::tempdir()?;
    let dir = cfg
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let stores = mailfleet_storage::embedded::open(&dir, 64)?;
    stores.meta.create_domain("example.test").await?;
    let user = "bench@example.test";
    let acct = stores.meta.create_account(user, "x", 0).await?;
    let indexed = stores.meta.create_mailbox(acct.id, "Indexed", None).await?;
    let scan = stores.meta.create_mailbox(acct.id, "Scan", None).await?;

    let started = Instant::now();
    let mut i = 0;
    while i < cfg.messages {
        let n = FILL_BATCH.min(cfg.messages - i);
        let mut batch = Vec::with_capacity(n);
        let mut texts = Vec::with_capacity(n);
        for k in i..i + n {
            let raw = message(k, cfg.body_size);
            let ix = mailfleet_mime::search_text::index_pieces(&raw);
            texts.push(MessageText::from_pairs(ix.pieces, ix.complete));
            let size = raw.len() as u64;
            let blob = stores.put_blob(bytes::Bytes::from(raw)).await?;
            batch.push((blob, size));
        }
        for mb in [&indexed, &scan] {
            let appended = stores
                .meta
                .append(
                    batch
                        .iter()
                        .map(|(blob, size)| NewMessage {
                            account: acct.id,
                            mailbox: mb.id,
                            blob: blob.clone(),
                            size: *size,
                            internal_date: 1_704_103_200,
                            flags: Flags::default(),
                            summary: None,
                            refs: Default::default(),
                            trace: None,
                        })
                        .collect(),
                    QuotaPolicy::Allow,
                )
                .await?;
            if mb.id == indexed.id {
                let entries = appended.iter().map(|a| a.uid).zip(texts.clone()).collect();
                stores.meta.index_text(mb.id, entries).await?;
            }
        }
        i += n;
    }
    let fill = started.elapsed();

    let searches = [
        format!("BODY {RARE_WORD}"),
        "BODY invoice".to_string(),
        "SUBJECT \"number 1234\"".to_string(),
    ];
    let mut c = client(&stores, user).await?;
    let mut timings = Vec::new();
    for (name, mb, repeat) in [
        ("Indexed", "Indexed", cfg.repeat.max(1)),
        ("Scan", "Scan", cfg.repeat.max(1)),
    ] {
        c.cmd("s", &format!("SELECT {mb}")).await?;
        for s in &searches {
            let budget = Instant::now();
            let mut runs = Vec::new();
            let mut hits = 0;
            while runs.len() < repeat {
                let t = Instant::now();
                let r = c.cmd("q", &format!("UID SEARCH {s}")).await?;
                runs.push(t.elapsed());
                hits = r
                    .iter()
                    .find(|l| l.starts_with("* SEARCH"))
                    .map(|l| l.split(' ').count().saturating_sub(2))
                    .unwrap_or(0);
                if budget.elapsed() > cfg.time_budget {
                    break;
                }
            }
            let best = runs.iter().min().copied().unwrap_or_default();
            let mean = runs.iter().sum::<Duration>() / runs.len().max(1) as u32;
            timings.push(SearchTiming {
                mailbox: name,
                criteria: s.clone(),
                hits,
                runs: runs.len(),
                best,
                mean,
            });
        }
    }
    Ok(SearchBenchReport {
        messages: cfg.messages,
        fill,
        timings,
    })
}
