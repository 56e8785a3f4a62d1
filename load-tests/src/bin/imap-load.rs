//! `imap-load`: drives IMAP sessions (FETCH, APPEND or many idle connections) at one or
//! more Mailfleet front-ends and reports throughput, latency and, for IDLE, the server's
//! memory per connection.
//!
//! A thin wrapper around [`mailfleet_load_tests::imap::run_imap_load`]; see
//! `load-tests/README.md` for usage.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mailfleet_load_tests::imap::{run_imap_load, ImapLoadConfig, Scenario, TlsTarget};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScenarioArg {
    /// UID FETCH of random messages.
    Fetch,
    /// APPEND of generated messages.
    Append,
    /// Many connections in IDLE; reports server memory.
    Idle,
    /// Persistent sessions running a weighted command mix (FETCH, STORE, APPEND, EXPUNGE,
    /// STATUS, LIST, SELECT, NOOP).
    Mix,
    /// The same mix with LOGOUT and a new LOGIN every 10 commands.
    Churn,
}

/// IMAP load generator for Mailfleet.
#[derive(Debug, Parser)]
#[command(name = "imap-load", version, about)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum)]
    scenario: ScenarioArg,

    /// Server to connect to, as HOST:PORT (plain IMAP). Repeat to spread connections
    /// round-robin across several front-ends.
    #[arg(
        long = "target",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:1143"
    )]
    targets: Vec<String>,

    /// Concurrent connections (fetch, append) or connections to hold in IDLE (idle).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,

    /// Total operations (fetches or appends) across all connections.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,

    /// Hard cap in seconds on the run (fetch, append; logins included) or on the ramp-up
    /// (idle). Default: 120 for fetch and append, 900 for idle.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: Option<u64>,

    /// Login name. `{n}` is replaced by the connection number modulo --users.
    #[arg(long, default_value = "load@example.test")]
    user: String,

    /// Number of distinct users `{n}` in --user cycles through.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    users: u64,

    /// Password of every user.
    #[arg(long, env = "IMAP_LOAD_PASSWORD", hide_env_values = true)]
    password: String,

    /// Mailbox to SELECT, FETCH from and APPEND to.
    #[arg(long, default_value = "INBOX")]
    mailbox: String,

    /// FETCH items (fetch scenario), e.g. "ENVELOPE BODYSTRUCTURE" for header-only fetches.
    #[arg(long, default_value = "FLAGS BODY.PEEK[]")]
    items: String,

    /// Approximate size in bytes of appended messages (append scenario).
    #[arg(long, default_value_t = 10_240, value_name = "BYTES")]
    size: usize,

    /// Connections opened at once during the idle ramp-up.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,

    /// Seconds to hold all idle connections before DONE and LOGOUT.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,

    /// Server process id whose VmRSS (/proc/<pid>/status) is reported by the idle scenario.
    #[arg(long)]
    server_pid: Option<u32>,

    /// Stop the idle ramp-up once the server's VmRSS passes this many MiB. Default with
    /// --server-pid: half of the machine's memory.
    #[arg(long, value_name = "MIB")]
    max_server_rss_mib: Option<u64>,

    /// Connect with implicit TLS, trusting only the certificates in this PEM file (for a
    /// test server, its own self-signed certificate): the targets are port-993 listeners.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,

    /// Name the server's certificate is checked against (with --tls-ca).
    #[arg(long, default_value = "localhost")]
    tls_name: String,

    /// Also print the results as one JSON line after the table.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn into_config(self) -> anyhow::Result<ImapLoadConfig> {
        let scenario = match self.scenario {
            ScenarioArg::Fetch => Scenario::Fetch,
            ScenarioArg::Append => Scenario::Append,
            ScenarioArg::Idle => Scenario::Idle,
            ScenarioArg::Mix => Scenario::Mix,
            ScenarioArg::Churn => Scenario::Churn,
        };
        let default_secs = if matches!(scenario, Scenario::Idle) {
            900
        } else {
            120
        };
        let usize_of = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(ImapLoadConfig {
            scenario,
            targets: self.targets,
            connections: usize_of(self.connections),
            count: self.count,
            duration: Duration::from_secs(self.duration_secs.unwrap_or(default_secs)),
            user: self.user,
            users: usize_of(self.users),
            password: self.password,
            mailbox: self.mailbox,
            fetch_items: self.items,
            message_size: self.size,
            batch: usize_of(self.batch),
            hold: Duration::from_secs(self.hold_secs),
            server_pid: self.server_pid,
            max_server_rss_kib: self.max_server_rss_mib.map(|m| m.saturating_mul(1024)),
            tls: match &self.tls_ca {
                Some(ca) => Some(TlsTarget::from_pem_file(ca, &self.tls_name)?),
                None => None,
            },
            ..ImapLoadConfig::default()
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let cfg = match args.into_config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("imap-load: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run_imap_load(cfg).await {
        Ok(report) => {
            print!("{}", report.table());
            if json {
                println!("{}", report.to_json());
            }
            if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("imap-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
