//! `pop3-load`: POP3 sessions (login, STAT, UIDL, RETR of random messages, QUIT) in a loop,
//! the way downloading clients use a server; reports RETR/s and latencies.
//!
//! A thin wrapper around [`mailfleet_load_tests::pop3::run_pop3_load`]; see
//! `load-tests/README.md` for usage.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mailfleet_load_tests::pop3::{run_pop3_load, Pop3LoadConfig};

/// POP3 load generator.
#[derive(Debug, Parser)]
#[command(name = "pop3-load", version, about)]
struct Args {
    /// Server to connect to, as HOST:PORT (plain POP3). Repeat to spread workers round-robin.
    #[arg(
        long = "target",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:1110"
    )]
    targets: Vec<String>,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    workers: u64,
    /// Sessions to run in all.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    sessions: u64,
    /// Hard cap on the run, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: u64,
    /// Login name; `{n}` becomes the worker number modulo --users.
    #[arg(long, default_value = "load{n}@example.test")]
    user: String,
    /// Distinct users (a maildrop is locked per session, so give each worker its own).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    users: u64,
    /// Password of every user.
    #[arg(long, env = "POP3_LOAD_PASSWORD", hide_env_values = true)]
    password: String,
    /// RETR commands per session.
    #[arg(long, default_value_t = 20)]
    retr: u64,
    /// Also print the results as one JSON line after the table.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let usize_of = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let cfg = Pop3LoadConfig {
        targets: args.targets,
        workers: usize_of(args.workers),
        sessions: args.sessions,
        duration: Duration::from_secs(args.duration_secs),
        user: args.user,
        users: usize_of(args.users),
        password: args.password,
        retr_per_session: usize_of(args.retr),
        ..Pop3LoadConfig::default()
    };
    match run_pop3_load(cfg).await {
        Ok(report) => {
            print!("{}", report.table());
            if args.json {
                println!("{}", report.to_json());
            }
            if report.sessions_ok > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("pop3-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
