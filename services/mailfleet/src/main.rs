//! The `mailfleet` binary: `mailfleet serve` runs the server roles; the other subcommands
//! are the admin CLI, working on the configured store.
//!
//! # Layout
//! - `main.rs`: argument parsing and dispatch.
//! - `serve.rs`: opening stores, TLS, listeners, signals and graceful shutdown.
//! - `admin.rs`: domain, user, alias, mailbox and message commands.
//! - `security.rs`: app passwords, TOTP, send-as grants and the outbound queue.
//! - `outbound.rs`: DKIM keys, DNS records, queue show/retry/delete.
//! - `telemetry.rs`: logging setup.

#![forbid(unsafe_code)]

mod admin;
mod outbound;
mod public;
mod reports;
mod security;
mod serve;
mod telemetry;

/// The process allocator: mimalloc instead of glibc's malloc. Why: glibc gives each thread
/// that allocates its own arena and keeps freed memory in it, so a burst of logins (argon2id
/// allocates its memory cost per verification) or of blocking reads on many pool threads
/// left tens of MiB resident that idle sessions were then charged for (a fresh server grew
/// ~99 KiB per idle IMAP session for its first 2,000, against ~10 KiB once warm); mimalloc
/// returns freed pages to the system and its per-thread heaps are cheap for the many small
/// short-lived allocations of protocol handling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mailfleet_core::config::Config;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "mailfleet",
    version,
    about = "Mailfleet mail server and admin tool"
)]
struct Cli {
    /// Configuration file (TOML). Without one, embedded defaults apply.
    #[arg(long, short, global = true, env = "MAILFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve,
    /// Check the configuration and print it as resolved.
    CheckConfig,
    #[command(subcommand)]
    Domain(admin::DomainCmd),
    #[command(subcommand)]
    User(admin::UserCmd),
    #[command(subcommand)]
    Alias(admin::AliasCmd),
    #[command(subcommand)]
    Mailbox(admin::MailboxCmd),
    #[command(subcommand)]
    Message(admin::MessageCmd),
    /// Public folders: a domain's mailboxes shown to its users under `Shared/`.
    #[command(subcommand)]
    PublicFolder(public::PublicFolderCmd),
    /// Index for full-text search the messages that are not yet (stored before the index
    /// existed, or whose indexing failed), of one account or of all.
    Reindex {
        /// Only this account.
        address: Option<String>,
        /// Every message, indexed or not (after an upgrade that indexes more of a message,
        /// such as attachments' text).
        #[arg(long)]
        all: bool,
    },
    /// App passwords: one per device, usable where the account password is.
    #[command(subcommand)]
    AppPassword(security::AppPasswordCmd),
    /// Two-factor authentication (TOTP) for an account.
    #[command(subcommand)]
    Totp(security::TotpCmd),
    /// Extra addresses an account may send as through submission.
    #[command(subcommand)]
    SendAs(security::SendAsCmd),
    /// The outbound queue.
    #[command(subcommand)]
    Queue(security::QueueCmd),
    /// DKIM signing keys per domain.
    #[command(subcommand)]
    Dkim(outbound::DkimCmd),
    /// DNS records a domain needs.
    #[command(subcommand)]
    Dns(outbound::DnsCmd),
    /// DMARC aggregate and TLS-RPT reports.
    #[command(subcommand)]
    Reports(reports::ReportsCmd),
}

fn main() -> std::process::ExitCode {
    // rustls, aws-sdk-s3 and others may each bring a provider; choose one for the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailfleet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Threads of the blocking pool (SQLite reads, blob file I/O, parsing, password hashing).
/// Tokio's default is 512: a burst of logins or reads then started a thread for each, and
/// each thread stayed resident (its stack and allocator state) for 10 s, charged to the
/// sessions that caused it. The work is CPU or local disk, so more threads than this only
/// add switching; the tasks beyond it wait in the pool's queue.
const BLOCKING_THREADS: usize = 32;

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref(), std::env::vars()).context("configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("starting the async runtime")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let _guard = telemetry::init(&config.log, &config.tracing)?;
            runtime.block_on(serve::run(config))
        }
        Command::CheckConfig => {
            // Secrets never reach a terminal or a CI log.
            println!("{:#?}", config.redacted());
            Ok(())
        }
        Command::Domain(c) => runtime.block_on(admin::domain(&config, c, cli.json)),
        Command::User(c) => runtime.block_on(admin::user(&config, c, cli.json)),
        Command::Alias(c) => runtime.block_on(admin::alias(&config, c, cli.json)),
        Command::Mailbox(c) => runtime.block_on(admin::mailbox(&config, c, cli.json)),
        Command::Message(c) => runtime.block_on(admin::message(&config, c, cli.json)),
        Command::PublicFolder(c) => runtime.block_on(public::public_folder(&config, c, cli.json)),
        Command::Reindex { address, all } => {
            runtime.block_on(admin::reindex(&config, address, all, cli.json))
        }
        Command::AppPassword(c) => runtime.block_on(security::app_password(&config, c, cli.json)),
        Command::Totp(c) => runtime.block_on(security::totp_cmd(&config, c, cli.json)),
        Command::SendAs(c) => runtime.block_on(security::send_as(&config, c, cli.json)),
        Command::Queue(c) => runtime.block_on(security::queue(&config, c, cli.json)),
        Command::Dkim(c) => runtime.block_on(outbound::dkim(&config, c, cli.json)),
        Command::Dns(c) => runtime.block_on(outbound::dns(&config, c)),
        Command::Reports(c) => runtime.block_on(reports::reports(&config, c, cli.json)),
    }
}
