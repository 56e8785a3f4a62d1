//! `smtp-load`: drives SMTP submissions at one or more Mailfleet front-ends and reports
//! throughput and latency.
//!
//! Deliberately a thin wrapper around [`mailfleet_load_tests::run_smtp_load`] so that the
//! integration tests exercise the same code path; see `load-tests/README.md` for usage.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mailfleet_load_tests::{run_smtp_load, SmtpLoadConfig};

/// SMTP load generator for Mailfleet.
#[derive(Debug, Parser)]
#[command(name = "smtp-load", version, about)]
struct Args {
    /// Server to connect to, as HOST:PORT. Repeat to spread connections round-robin
    /// across several front-ends.
    #[arg(long = "target", value_name = "HOST:PORT", required = true)]
    targets: Vec<String>,

    /// Number of concurrent connections.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,

    /// Total number of messages to send across all connections.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    messages: u64,

    /// Hard cap on the run time in seconds; the run stops when either the message budget
    /// is spent or this expires.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: u64,

    /// Approximate size of each message in bytes (headers + body).
    #[arg(long, default_value_t = 10_240, value_name = "BYTES")]
    size: usize,

    /// Envelope and header recipient. Repeat for several recipients per message.
    #[arg(
        long = "rcpt",
        value_name = "ADDRESS",
        default_value = "load@example.test"
    )]
    rcpts: Vec<String>,

    /// Envelope and header sender.
    #[arg(long, value_name = "ADDRESS", default_value = "sender@load.test")]
    from: String,

    /// Messages sent on one connection before it is closed and reopened.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    messages_per_connection: u64,

    /// Pipeline MAIL/RCPT/DATA (RFC 2920) when the server advertises PIPELINING.
    #[arg(long)]
    pipelining: bool,

    /// Also print the results as one JSON line after the table.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn into_config(self) -> SmtpLoadConfig {
        SmtpLoadConfig {
            targets: self.targets,
            connections: usize::try_from(self.connections).unwrap_or(usize::MAX),
            messages: self.messages,
            duration: Duration::from_secs(self.duration_secs),
            message_size: self.size,
            from: self.from,
            rcpts: self.rcpts,
            messages_per_connection: self.messages_per_connection,
            pipelining: self.pipelining,
            ..SmtpLoadConfig::default()
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    match run_smtp_load(args.into_config()).await {
        Ok(report) => {
            print!("{}", report.table());
            if json {
                println!("{}", report.to_json());
            }
            // Exit status answers "did anything get through?"; partial failure rates are
            // for the reader of the table to judge.
            if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("smtp-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
