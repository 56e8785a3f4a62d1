//! Mailfleet's fuzzing harness, on stable Rust.
//!
//! Each [`Target`] feeds arbitrary bytes to one decoder the servers run on client input and
//! checks its invariants: it must not panic, and where the decoder has an inverse the round
//! trip must hold. A target signals a violated invariant by panicking; [`check`] catches the
//! panic, so a replay reports every failing input instead of stopping at the first.
//!
//! # Layout
//! - `smtp`, `imap`, `pop3`, `mime`, `sasl`, `config`: one module per target family; each
//!   `run` returns a short [`Outcome`] describing what the parser made of the input.
//! - `session`: the store, accounts and in-memory pipe the whole-session targets
//!   (`smtp_session`, `smtp_submission`, `imap_session`, `pop3_session`) run against.
//! - `corpus`: the checked-in inputs under `fuzz/corpus/<target>/` and the list of inputs
//!   that still panic because of a known, separately tracked defect (`fuzz/known-panics.txt`).
//! - `bin/replay.rs`: runs one file through one target (used for known panics, which may
//!   abort the process, so the corpus test runs them in a child process).
//! - `bin/grow.rs`: a bounded mutational loop that adds inputs reaching new outcomes.

#![forbid(unsafe_code)]

pub mod config;
pub mod corpus;
pub mod imap;
pub mod mime;
pub mod pop3;
pub mod sasl;
pub mod session;
pub mod smtp;

use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a target made of an input, e.g. `Ok(Mail)` or `Err(Syntax)`: the grow loop keeps
/// an input when it produces an outcome not seen before.
pub type Outcome = String;

/// One fuzz target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    SmtpCommand,
    SmtpData,
    SmtpSession,
    SmtpSubmission,
    ImapCodec,
    ImapSession,
    Pop3Command,
    Pop3Session,
    MimeSummary,
    Sasl,
    Config,
}

impl Target {
    pub const ALL: [Target; 11] = [
        Target::SmtpCommand,
        Target::SmtpData,
        Target::SmtpSession,
        Target::SmtpSubmission,
        Target::ImapCodec,
        Target::ImapSession,
        Target::Pop3Command,
        Target::Pop3Session,
        Target::MimeSummary,
        Target::Sasl,
        Target::Config,
    ];

    /// The name used for the corpus directory and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::SmtpCommand => "smtp_command",
            Target::SmtpData => "smtp_data",
            Target::SmtpSession => "smtp_session",
            Target::SmtpSubmission => "smtp_submission",
            Target::ImapCodec => "imap_codec",
            Target::ImapSession => "imap_session",
            Target::Pop3Command => "pop3_command",
            Target::Pop3Session => "pop3_session",
            Target::MimeSummary => "mime_summary",
            Target::Sasl => "sasl",
            Target::Config => "config",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Runs the input through the target; panics when an invariant does not hold.
    pub fn run(self, input: &[u8]) -> Outcome {
        match self {
            Target::SmtpCommand => smtp::command(input),
            Target::SmtpData => smtp::data(input),
            Target::SmtpSession => smtp::session(input),
            Target::SmtpSubmission => smtp::submission(input),
            Target::ImapCodec => imap::codec(input),
            Target::ImapSession => imap::session(input),
            Target::Pop3Command => pop3::command(input),
            Target::Pop3Session => pop3::session(input),
            Target::MimeSummary => mime::summary(input),
            Target::Sasl => sasl::exchange(input),
            Target::Config => config::load(input),
        }
    }
}

/// A panic (from the code under test or a violated invariant) while running an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
}

/// Runs `input` through `target`, turning a panic into a [`Failure`].
pub fn check(target: Target, input: &[u8]) -> Result<Outcome, Failure> {
    catch_unwind(AssertUnwindSafe(|| target.run(input))).map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic with a non-string payload".into());
        Failure { message }
    })
}

/// Splits input into lines at LF, dropping one CR before it, as the servers' framers do.
pub(crate) fn lines(input: &[u8]) -> impl Iterator<Item = &[u8]> {
    input
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}
