//! `hostile-load`: attackers (pipelined RETR and FETCH that never read, slowloris
//! senders, login floods, 1 MiB pre-auth lines) against one server while honest clients
//! work; reports the honest clients' latency beside an idle baseline and the server's
//! peak memory, and fails when a stated bound is passed.
//!
//! A thin wrapper around [`mailfleet_load_tests::hostile::run_hostile`]; see
//! `load-tests/README.md` and `scripts/bench_hostile.py`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mailfleet_load_tests::hostile::{run_hostile, AttackMix, HostileConfig};

/// Hostile-load scenario for Mailfleet.
#[derive(Debug, Parser)]
#[command(name = "hostile-load", version, about)]
struct Args {
    /// Plain IMAP listener.
    #[arg(long, default_value = "127.0.0.1:1143")]
    imap: SocketAddr,
    /// Plain POP3 listener.
    #[arg(long, default_value = "127.0.0.1:1110")]
    pop3: SocketAddr,
    /// Inbound SMTP listener.
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp: SocketAddr,
    /// The honest user (IMAP session, SMTP recipient, and the login flood's target name).
    #[arg(long)]
    honest_user: String,
    /// The attackers' account; its INBOX should hold a few large messages.
    #[arg(long)]
    attacker_user: String,
    /// Password of both users (or HOSTILE_LOAD_PASSWORD).
    #[arg(long, env = "HOSTILE_LOAD_PASSWORD", hide_env_values = true)]
    password: String,
    /// Length of each phase (baseline, then attack), in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    phase_secs: u64,
    /// Server process whose VmRSS is sampled.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bound on the server's peak RSS during the attack, in MiB.
    #[arg(long)]
    max_rss_mib: Option<u64>,
    /// Bound on attack p99 / baseline p99 of the honest IMAP client.
    #[arg(long)]
    max_p99_factor: Option<f64>,
    /// Commands pipelined per POP3/IMAP attacker connection.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pipeline: u64,
    /// Attacker connections of each kind: pop3-retr.
    #[arg(long, default_value_t = 4)]
    pop3_retr: usize,
    #[arg(long, default_value_t = 4)]
    imap_fetch_all: usize,
    #[arg(long, default_value_t = 20)]
    slow_smtp: usize,
    #[arg(long, default_value_t = 20)]
    slow_imap: usize,
    #[arg(long, default_value_t = 4)]
    login_flood: usize,
    #[arg(long, default_value_t = 4)]
    preauth_big: usize,
    /// Also print the result as one JSON line.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = Args::parse();
    let cfg = HostileConfig {
        imap: a.imap,
        pop3: a.pop3,
        smtp: a.smtp,
        honest_user: a.honest_user,
        honest_password: a.password.clone(),
        attacker_user: a.attacker_user,
        attacker_password: a.password,
        phase: Duration::from_secs(a.phase_secs),
        mix: AttackMix {
            pop3_retr: a.pop3_retr,
            imap_fetch_all: a.imap_fetch_all,
            slow_smtp: a.slow_smtp,
            slow_imap: a.slow_imap,
            login_flood: a.login_flood,
            preauth_big: a.preauth_big,
        },
        server_pid: a.server_pid,
        max_rss_mib: a.max_rss_mib,
        max_p99_factor: a.max_p99_factor,
        pipeline: a.pipeline as usize,
    };
    match run_hostile(cfg).await {
        Ok(report) => {
            print!("{}", report.table());
            if a.json {
                println!("{}", report.json());
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("hostile-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
