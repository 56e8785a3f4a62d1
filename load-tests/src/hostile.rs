//! Hostile-load scenario (`hostile-load`): attackers against one server while an honest
//! client works, to show that no client can starve the others or grow the server without
//! bound.
//!
//! The run has two phases of equal length:
//!
//! 1. **baseline**: only the honest clients work (an IMAP session looping over `FETCH`,
//!    `NOOP` and `STATUS`, and an SMTP client delivering one small message after another);
//!    their latencies give the idle server's p99.
//! 2. **attack**: the same honest clients again, while attackers run beside them:
//!    - `pop3-retr`: log in over POP3, pipeline hundreds of `RETR` of a large message and
//!      never read a byte of the answers;
//!    - `imap-fetch-all`: log in, `SELECT`, pipeline `FETCH 1:* BODY[]` several times and
//!      never read;
//!    - `slow-smtp` / `slow-imap`: send a command one byte a second (slowloris);
//!    - `login-flood`: wrong passwords for the *honest* user's name, as fast as the server
//!      answers, from several connections;
//!    - `preauth-big`: before login, a 1 MiB line without CRLF and a 1 MiB literal
//!      announced in `LOGIN` (IMAP), and a 1 MiB SMTP command line.
//!
//! Throughout both phases the server's resident memory (`VmRSS` of `--server-pid`) is
//! sampled every 100 ms. The report gives both phases' latencies, the p99 factor
//! (attack / baseline) and the peak RSS, and the run fails (exit status 1) when a stated
//! bound is passed: `--max-rss-mib` and `--max-p99-factor`. These are benchmark verdicts,
//! run by hand or by `scripts/bench_hostile.py`, never a timed test in CI.
//!
//! Attackers connect from other loopback addresses (127.0.1.x; the whole of 127/8 is
//! loopback on Linux) than the honest clients (127.0.0.1), as they would from the
//! Internet: per-address limits (connection caps, login throttling) are meant to hit the
//! attacker, not everybody.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::imap::{quote, read_response, read_rss_kib, read_until_tagged, ReadLimits};
use crate::{
    format_counts, format_table, new_latency_histogram, read_reply, record_latency, JsonObject,
    LatencySummary, MessageTemplate,
};

/// How many attackers of each kind run during the attack phase.
#[derive(Clone, Debug)]
pub struct AttackMix {
    pub pop3_retr: usize,
    pub imap_fetch_all: usize,
    pub slow_smtp: usize,
    pub slow_imap: usize,
    pub login_flood: usize,
    pub preauth_big: usize,
}

impl Default for AttackMix {
    fn default() -> Self {
        Self {
            pop3_retr: 4,
            imap_fetch_all: 4,
            slow_smtp: 20,
            slow_imap: 20,
            login_flood: 4,
            preauth_big: 4,
        }
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct HostileConfig {
    pub imap: SocketAddr,
    pub pop3: SocketAddr,
    pub smtp: SocketAddr,
    /// The honest user (IMAP session, SMTP recipient, and the name the login flood aims at).
    pub honest_user: String,
    pub honest_password: String,
    /// The attackers' own account (its INBOX should hold a few large messages); `{n}` is
    /// replaced by the attacker's number within its kind (POP3 allows one session per
    /// maildrop, so several POP3 attackers need several accounts).
    pub attacker_user: String,
    pub attacker_password: String,
    /// Length of each phase.
    pub phase: Duration,
    pub mix: AttackMix,
    pub server_pid: Option<u32>,
    /// Fails the run when the peak RSS of the attack phase passes this.
    pub max_rss_mib: Option<u64>,
    /// Fails the run when attack p99 / baseline p99 (IMAP) passes this.
    pub max_p99_factor: Option<f64>,
    /// Pipelined commands per POP3/IMAP attacker connection.
    pub pipeline: usize,
}

/// What an attacker saw, by event ("refused at connect", "closed by server", ...).
#[derive(Default)]
struct Events(Mutex<BTreeMap<String, u64>>);

impl Events {
    fn add(&self, key: impl Into<String>) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(key.into()).or_insert(0) += 1;
        }
    }
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Latencies of the honest clients in one phase.
pub struct HonestReport {
    pub imap: Option<LatencySummary>,
    pub imap_failed: u64,
    pub smtp: Option<LatencySummary>,
    pub smtp_failed: u64,
}

/// The whole run's result.
pub struct HostileReport {
    pub baseline: HonestReport,
    pub attack: HonestReport,
    pub baseline_peak_rss_kib: Option<u64>,
    pub attack_peak_rss_kib: Option<u64>,
    pub attacker_events: BTreeMap<String, u64>,
    pub p99_factor: Option<f64>,
    pub verdict: Vec<String>,
}

impl HostileReport {
    pub fn passed(&self) -> bool {
        self.verdict.is_empty()
    }

    pub fn table(&self) -> String {
        let lat = |s: &Option<LatencySummary>, failed: u64| match s {
            Some(s) => format!(
                "{} ok, {failed} failed, p50 {}, p99 {}, max {}",
                s.count,
                crate::format_latency_us(s.p50_us),
                crate::format_latency_us(s.p99_us),
                crate::format_latency_us(s.max_us)
            ),
            None => format!("0 ok, {failed} failed"),
        };
        let mib =
            |k: Option<u64>| k.map_or("n/a".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
        let mut rows = vec![
            (
                "baseline imap".to_string(),
                lat(&self.baseline.imap, self.baseline.imap_failed),
            ),
            (
                "baseline smtp".to_string(),
                lat(&self.baseline.smtp, self.baseline.smtp_failed),
            ),
            (
                "attack imap".to_string(),
                lat(&self.attack.imap, self.attack.imap_failed),
            ),
            (
                "attack smtp".to_string(),
                lat(&self.attack.smtp, self.attack.smtp_failed),
            ),
            (
                "imap p99 factor".to_string(),
                self.p99_factor.map_or("n/a".into(), |f| format!("{f:.2}x")),
            ),
            ("baseline rss".to_string(), mib(self.baseline_peak_rss_kib)),
            ("attack rss".to_string(), mib(self.attack_peak_rss_kib)),
            (
                "attackers".to_string(),
                format_counts(&self.attacker_events),
            ),
        ];
        rows.push((
            "verdict".to_string(),
            if self.passed() {
                "pass".to_string()
            } else {
                self.verdict.join("; ")
            },
        ));
        format_table(&rows)
    }

    pub fn json(&self) -> String {
        let lat = |s: &Option<LatencySummary>| s.as_ref().map_or("null".into(), |s| s.to_json());
        let mut obj = JsonObject::new();
        obj.raw("baseline_imap_us", &lat(&self.baseline.imap));
        obj.raw("baseline_smtp_us", &lat(&self.baseline.smtp));
        obj.raw("attack_imap_us", &lat(&self.attack.imap));
        obj.raw("attack_smtp_us", &lat(&self.attack.smtp));
        obj.u64("baseline_imap_failed", self.baseline.imap_failed);
        obj.u64("attack_imap_failed", self.attack.imap_failed);
        obj.u64("baseline_smtp_failed", self.baseline.smtp_failed);
        obj.u64("attack_smtp_failed", self.attack.smtp_failed);
        obj.f64("p99_factor", self.p99_factor.unwrap_or(0.0));
        obj.u64(
            "baseline_peak_rss_kib",
            self.baseline_peak_rss_kib.unwrap_or(0),
        );
        obj.u64("attack_peak_rss_kib", self.attack_peak_rss_kib.unwrap_or(0));
        let mut ev = JsonObject::new();
        for (k, v) in &self.attacker_events {
            ev.u64(k, *v);
        }
        obj.raw("attacker_events", &ev.finish());
        obj.bool("passed", self.passed());
        obj.finish()
    }
}

/// Runs both phases and judges the result against the configured bounds.
pub async fn run_hostile(cfg: HostileConfig) -> anyhow::Result<HostileReport> {
    // RSS sampler for the whole run; peak per phase.
    let (phase_tx, phase_rx) = watch::channel(0u8); // 0 baseline, 1 attack, 2 done
    let peaks = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let sampler = cfg.server_pid.map(|pid| {
        let peaks = peaks.clone();
        let rx = phase_rx.clone();
        tokio::spawn(async move {
            loop {
                let phase = *rx.borrow();
                if phase >= 2 {
                    break;
                }
                if let Ok(kib) = read_rss_kib(pid) {
                    peaks[phase as usize].fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });

    let baseline = honest_phase(&cfg).await.context("baseline phase")?;

    let _ = phase_tx.send(1);
    let stop_at = Instant::now() + cfg.phase;
    let events = Arc::new(Events::default());
    let attackers = spawn_attackers(&cfg, stop_at, events.clone());
    // Let the attackers get going before the honest clients measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attack = honest_phase(&cfg).await.context("attack phase")?;
    for a in attackers {
        a.abort();
    }
    let _ = phase_tx.send(2);
    if let Some(s) = sampler {
        let _ = s.await;
    }

    let server_pid = cfg.server_pid;
    let peak = |i: usize| server_pid.map(|_| peaks[i].load(Ordering::Relaxed));
    let p99_factor = match (&baseline.imap, &attack.imap) {
        (Some(b), Some(a)) if b.p99_us > 0 => Some(a.p99_us as f64 / b.p99_us as f64),
        _ => None,
    };
    let mut verdict = Vec::new();
    if let (Some(max), Some(kib)) = (cfg.max_rss_mib, peak(1)) {
        if kib / 1024 > max {
            verdict.push(format!("attack RSS {} MiB > {max} MiB", kib / 1024));
        }
    }
    if let Some(max) = cfg.max_p99_factor {
        match p99_factor {
            Some(f) if f > max => verdict.push(format!("IMAP p99 factor {f:.2} > {max}")),
            None => verdict.push("no IMAP latency measured".into()),
            _ => {}
        }
    }
    if attack.imap.is_none() || attack.smtp.is_none() {
        verdict.push("an honest client got nothing done during the attack".into());
    }
    Ok(HostileReport {
        baseline,
        attack,
        baseline_peak_rss_kib: peak(0),
        attack_peak_rss_kib: peak(1),
        attacker_events: events.snapshot(),
        p99_factor,
        verdict,
    })
}

// ---------------------------------------------------------------------------------------
// Honest clients
// ---------------------------------------------------------------------------------------

const HONEST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    // Loopback only: the source address is one of 127/8 on the loopback interface.
    if dst.ip().is_loopback() {
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    }
    let stream = tokio::time::timeout(IO_TIMEOUT, sock.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn honest_phase(cfg: &HostileConfig) -> anyhow::Result<HonestReport> {
    let until = Instant::now() + cfg.phase;
    let (imap, smtp) = tokio::join!(
        honest_imap(cfg.clone(), until),
        honest_smtp(cfg.clone(), until)
    );
    let (imap_hist, imap_failed) = imap?;
    let (smtp_hist, smtp_failed) = smtp?;
    Ok(HonestReport {
        imap: LatencySummary::from_histogram(&imap_hist),
        imap_failed,
        smtp: LatencySummary::from_histogram(&smtp_hist),
        smtp_failed,
    })
}

/// One persistent IMAP session: `FETCH <n> (FLAGS BODY.PEEK[])`, `NOOP`,
/// `STATUS INBOX (MESSAGES UNSEEN)` in turn, each timed from write to tagged completion.
/// A failed command reconnects.
async fn honest_imap(cfg: HostileConfig, until: Instant) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = new_latency_histogram()?;
    let mut failed = 0u64;
    let limits = ReadLimits::default();
    let mut n = 0u64;
    'session: while Instant::now() < until {
        let stream = match connect_from(HONEST_IP, cfg.imap).await {
            Ok(s) => s,
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let setup = async {
            read_response(&mut r, &limits).await?;
            let login = format!(
                "l LOGIN {} {}\r\n",
                quote(&cfg.honest_user),
                quote(&cfg.honest_password)
            );
            w.write_all(login.as_bytes()).await?;
            read_until_tagged(&mut r, "l", &limits).await?.into_ok()?;
            w.write_all(b"s SELECT INBOX\r\n").await?;
            let sel = read_until_tagged(&mut r, "s", &limits).await?.into_ok()?;
            Ok::<_, crate::imap::ImapError>(crate::imap::exists_count(&sel.untagged).unwrap_or(0))
        };
        let exists = match tokio::time::timeout(IO_TIMEOUT, setup).await {
            Ok(Ok(e)) => e.max(1),
            _ => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while Instant::now() < until {
            n += 1;
            let tag = format!("h{n}");
            let cmd = match n % 3 {
                0 => format!(
                    "{tag} FETCH {} (FLAGS BODY.PEEK[])\r\n",
                    1 + (n * 7919) % exists
                ),
                1 => format!("{tag} NOOP\r\n"),
                _ => format!("{tag} STATUS INBOX (MESSAGES UNSEEN)\r\n"),
            };
            let start = Instant::now();
            let exchange = async {
                w.write_all(cmd.as_bytes()).await?;
                read_until_tagged(&mut r, &tag, &limits).await?.into_ok()
            };
            match tokio::time::timeout(IO_TIMEOUT, exchange).await {
                Ok(Ok(_)) => record_latency(&mut hist, start.elapsed()),
                _ => {
                    failed += 1;
                    continue 'session;
                }
            }
        }
        let _ = w.write_all(b"z LOGOUT\r\n").await;
    }
    Ok((hist, failed))
}

/// SMTP deliveries of a 4 KB message to the honest user, one after another on one
/// connection, each timed from `MAIL FROM` to the final `250`.
async fn honest_smtp(cfg: HostileConfig, until: Instant) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = new_latency_histogram()?;
    let mut failed = 0u64;
    let template = MessageTemplate::new(
        "honest@load.test",
        std::slice::from_ref(&cfg.honest_user),
        4096,
    );
    let mut seq = 0u64;
    'session: while Instant::now() < until {
        let Ok(stream) = connect_from(HONEST_IP, cfg.smtp).await else {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let hello = async {
            read_reply(&mut r).await?;
            w.write_all(b"EHLO honest.load.test\r\n").await?;
            read_reply(&mut r).await
        };
        if !matches!(tokio::time::timeout(IO_TIMEOUT, hello).await, Ok(Ok(rep)) if rep.code == 250)
        {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // A fresh session every 50 messages, under the server's per-session cap.
        for _ in 0..50 {
            if Instant::now() >= until {
                break;
            }
            seq += 1;
            let (wire, _) = template.wire(seq, std::time::SystemTime::now());
            let start = Instant::now();
            let tx = async {
                w.write_all(b"MAIL FROM:<honest@load.test>\r\n").await?;
                let m = read_reply(&mut r).await?;
                let rcpt = format!("RCPT TO:<{}>\r\n", cfg.honest_user);
                w.write_all(rcpt.as_bytes()).await?;
                let rc = read_reply(&mut r).await?;
                w.write_all(b"DATA\r\n").await?;
                let d = read_reply(&mut r).await?;
                if m.code != 250 || rc.code != 250 || d.code != 354 {
                    return Ok::<_, crate::SmtpError>(false);
                }
                w.write_all(&wire).await?;
                Ok(read_reply(&mut r).await?.code == 250)
            };
            match tokio::time::timeout(IO_TIMEOUT, tx).await {
                Ok(Ok(true)) => record_latency(&mut hist, start.elapsed()),
                _ => {
                    failed += 1;
                    continue 'session;
                }
            }
        }
        let _ = w.write_all(b"QUIT\r\n").await;
    }
    Ok((hist, failed))
}

// ---------------------------------------------------------------------------------------
// Attackers
// ---------------------------------------------------------------------------------------

fn spawn_attackers(
    cfg: &HostileConfig,
    stop_at: Instant,
    events: Arc<Events>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mix = &cfg.mix;
    // One source address per kind of attack, so per-address limits hit each kind.
    let kinds: [(usize, u8, Attack); 6] = [
        (mix.pop3_retr, 1, Attack::Pop3Retr),
        (mix.imap_fetch_all, 2, Attack::ImapFetchAll),
        (mix.slow_smtp, 3, Attack::SlowSmtp),
        (mix.slow_imap, 4, Attack::SlowImap),
        (mix.login_flood, 5, Attack::LoginFlood),
        (mix.preauth_big, 6, Attack::PreauthBig),
    ];
    for (count, last_octet, attack) in kinds {
        let src = Ipv4Addr::new(127, 0, 1, last_octet);
        for i in 0..count {
            let cfg = cfg.clone();
            let events = events.clone();
            tasks.push(tokio::spawn(async move {
                attacker_loop(attack, i, src, cfg, stop_at, events).await;
            }));
        }
    }
    tasks
}

#[derive(Clone, Copy, Debug)]
enum Attack {
    Pop3Retr,
    ImapFetchAll,
    SlowSmtp,
    SlowImap,
    LoginFlood,
    PreauthBig,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::Pop3Retr => "pop3-retr",
            Attack::ImapFetchAll => "imap-fetch-all",
            Attack::SlowSmtp => "slow-smtp",
            Attack::SlowImap => "slow-imap",
            Attack::LoginFlood => "login-flood",
            Attack::PreauthBig => "preauth-big",
        }
    }
}

/// Runs one attacker until `stop_at`, reconnecting whenever the server ends a connection
/// (which is what a defended server does), counting how each connection ended.
async fn attacker_loop(
    attack: Attack,
    index: usize,
    src: Ipv4Addr,
    cfg: HostileConfig,
    stop_at: Instant,
    events: Arc<Events>,
) {
    while Instant::now() < stop_at {
        let dst = match attack {
            Attack::Pop3Retr => cfg.pop3,
            Attack::SlowSmtp => cfg.smtp,
            Attack::PreauthBig if index % 3 == 2 => cfg.smtp,
            _ => cfg.imap,
        };
        let stream = match connect_from(src, dst).await {
            Ok(s) => s,
            Err(e) => {
                events.add(format!("{}: connect {:?}", attack.name(), e.kind()));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let outcome =
            tokio::time::timeout_at(stop_at, attack_once(attack, index, stream, &cfg)).await;
        match outcome {
            Ok(Ok(how)) => events.add(format!("{}: {how}", attack.name())),
            Ok(Err(e)) => events.add(format!("{}: {:?}", attack.name(), e.kind())),
            Err(_) => events.add(format!("{}: held to the end", attack.name())),
        }
        // A short pause keeps a refused attacker from spinning the generator's core.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until EOF or error, discarding: how a connection that the attacker has stopped
/// caring about ends (the server closing it, or a reset).
async fn drain_to_close(stream: &mut TcpStream) -> io::Result<&'static str> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Ok("closed by server"),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok("reset by server"),
            Err(e) => return Err(e),
        }
    }
}

/// Reads one CRLF-terminated line (at most 64 KiB) byte by byte: only used by attackers
/// before their attack starts, where speed does not matter.
async fn read_line(stream: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 * 1024 {
        if stream.read(&mut b).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.push(b[0]);
        if line.ends_with(b"\r\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Reads lines until one starts with `prefix` (an IMAP tag, or `+OK`/`-ERR`).
async fn read_until_prefix(stream: &mut TcpStream, prefix: &str) -> io::Result<String> {
    for _ in 0..10_000 {
        let line = read_line(stream).await?;
        if line.starts_with(prefix) {
            return Ok(line);
        }
    }
    Err(io::Error::other("no answer"))
}

async fn attack_once(
    attack: Attack,
    index: usize,
    mut s: TcpStream,
    cfg: &HostileConfig,
) -> io::Result<&'static str> {
    match attack {
        Attack::Pop3Retr => {
            read_line(&mut s).await?;
            // One account per POP3 attacker: a maildrop takes one session at a time.
            let user = cfg.attacker_user.replace("{n}", &index.to_string());
            s.write_all(format!("USER {user}\r\n").as_bytes()).await?;
            read_line(&mut s).await?;
            s.write_all(format!("PASS {}\r\n", cfg.attacker_password).as_bytes())
                .await?;
            let answer = read_line(&mut s).await?;
            if !answer.starts_with("+OK") {
                // A defended server refuses in one of two ways: the maildrop is locked by
                // this attacker's own earlier session, or logins from here are throttled.
                return Ok(if answer.contains("IN-USE") {
                    "maildrop in use"
                } else {
                    "login refused"
                });
            }
            let msg = 1 + index % 4;
            let burst = format!("RETR {msg}\r\n").repeat(cfg.pipeline);
            // Written from a task of its own: a server applying backpressure stops reading,
            // and then this write blocks, which is the point.
            s.write_all(burst.as_bytes()).await?;
            hold_without_reading(s).await
        }
        Attack::ImapFetchAll => {
            read_line(&mut s).await?;
            let login = format!(
                "a LOGIN {} {}\r\n",
                quote(&cfg.attacker_user.replace("{n}", &index.to_string())),
                quote(&cfg.attacker_password)
            );
            s.write_all(login.as_bytes()).await?;
            if !read_until_prefix(&mut s, "a ").await?.starts_with("a OK") {
                return Ok("login refused");
            }
            s.write_all(b"b SELECT INBOX\r\n").await?;
            read_until_prefix(&mut s, "b ").await?;
            let mut burst = String::new();
            for i in 0..cfg.pipeline.min(64) {
                burst.push_str(&format!("f{i} FETCH 1:* (BODY[] BODY[] BODY[])\r\n"));
            }
            s.write_all(burst.as_bytes()).await?;
            hold_without_reading(s).await
        }
        Attack::SlowSmtp | Attack::SlowImap => {
            let line: &[u8] = match attack {
                Attack::SlowSmtp => b"EHLO slowloris.example.net\r\n",
                _ => b"a LOGIN slowloris password\r\n",
            };
            for b in line.iter().cycle() {
                s.write_all(std::slice::from_ref(b)).await?;
                // Answers are read (and dropped) so the socket never fills.
                let mut buf = [0u8; 4096];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) => return Ok("closed by server"),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                        return Ok("reset by server")
                    }
                    Ok(Err(e)) => return Err(e),
                    _ => {}
                }
            }
            Ok("closed by server")
        }
        Attack::LoginFlood => {
            read_line(&mut s).await?;
            for i in 0u64.. {
                let cmd = format!(
                    "x{i} LOGIN {} {}\r\n",
                    quote(&cfg.honest_user),
                    quote(&format!("wrong-password-{i}"))
                );
                s.write_all(cmd.as_bytes()).await?;
                let answer = read_until_prefix(&mut s, &format!("x{i} ")).await;
                match answer {
                    Ok(line) if line.starts_with(&format!("x{i} OK")) => {
                        return Ok("a wrong password was accepted!")
                    }
                    Ok(_) => {}
                    Err(_) => return Ok("closed by server"),
                }
            }
            Ok("closed by server")
        }
        Attack::PreauthBig => {
            read_line(&mut s).await?;
            let mib = vec![b'A'; 1 << 20];
            match index % 3 {
                // A 1 MiB IMAP line without CRLF.
                0 => {
                    s.write_all(b"a LOGIN ").await?;
                    let _ = s.write_all(&mib).await;
                }
                // A 1 MiB literal announced before login (non-synchronizing, so it comes
                // whatever the server says).
                1 => {
                    s.write_all(b"a LOGIN {1048576+}\r\n").await?;
                    let _ = s.write_all(&mib).await;
                    s.write_all(b" pw\r\n").await?;
                }
                // A 1 MiB SMTP command line.
                _ => {
                    s.write_all(b"EHLO ").await?;
                    let _ = s.write_all(&mib).await;
                    s.write_all(b"\r\n").await?;
                }
            }
            drain_to_close(&mut s).await
        }
    }
}

/// Keeps a connection open without reading it, writing a little more every second (which
/// fails once the server has closed it), until the run ends.
async fn hold_without_reading(mut s: TcpStream) -> io::Result<&'static str> {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match tokio::time::timeout(Duration::from_secs(1), s.write_all(b"NOOP\r\n")).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ok("closed by server"),
            // The write blocks: the server stopped reading (backpressure). Keep holding.
            Err(_) => {}
        }
        // Peek without consuming much: has the server closed its side?
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.peek(&mut probe)).await
        {
            return Ok("closed by server");
        }
    }
}
