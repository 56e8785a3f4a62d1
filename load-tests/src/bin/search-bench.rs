//! `search-bench`: IMAP SEARCH on a large mailbox, full-text index versus scan.
//!
//! A thin wrapper around [`mailfleet_load_tests::search::run_search_bench`]; see
//! `load-tests/README.md` for usage.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mailfleet_load_tests::search::{run_search_bench, SearchBenchConfig};

/// SEARCH benchmark: indexed versus full scan, on the embedded store.
#[derive(Debug, Parser)]
#[command(name = "search-bench", version, about)]
struct Args {
    /// Messages in each of the two mailboxes.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Approximate body size of each message, in bytes.
    #[arg(long, default_value_t = 800)]
    body_size: usize,
    /// Times each SEARCH is run (the best and the mean are reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Seconds after which a SEARCH is not repeated again.
    #[arg(long, default_value_t = 60)]
    time_budget_secs: u64,
    /// Keep the store here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = SearchBenchConfig {
        messages: args.messages,
        body_size: args.body_size,
        repeat: args.repeat,
        time_budget: Duration::from_secs(args.time_budget_secs),
        data_dir: args.data_dir,
    };
    match run_search_bench(&cfg).await {
        Ok(report) => {
            print!("{}", report.table());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("search-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
