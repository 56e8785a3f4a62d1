//! Sieve mail filtering (RFC 5228 and extensions) for Mailfleet.
//!
//! The crate does no I/O: [`compile`] turns a script into a [`Script`]
//! (refusing unknown commands, missing `require`s and wrong arguments with
//! a line number), and [`run`] evaluates it against the raw message and the
//! [`Envelope`], asking a [`Context`] for the few facts it cannot know
//! (mailbox existence, included scripts, the time). The result is an
//! [`Outcome`]: actions for the SMTP pipeline to carry out and header edits
//! to apply with [`apply_edits`].
//!
//! Every input is bounded by [`Limits`]: script size and nesting at compile
//! time; steps, actions, redirects, includes, variable sizes and regex
//! sizes at run time. Limits and malformed input give errors, never panics.
//!
//! On a [`RuntimeError`], RFC 5228 §2.10.6 asks for the implicit keep:
//! the caller should store the message in INBOX (and may log the error).
//!
//! ```
//! use mailfleet_sieve::{compile, run, Action, Context, Envelope, Limits, Location};
//!
//! struct Ctx;
//! impl Context for Ctx {
//!     fn mailbox_exists(&self, _name: &str) -> bool { true }
//!     fn include(&self, _name: &str, _location: Location) -> Option<String> { None }
//!     fn now(&self) -> chrono::DateTime<chrono::FixedOffset> { chrono::Utc::now().fixed_offset() }
//! }
//!
//! let limits = Limits::default();
//! let script = compile(
//!     "require \"fileinto\";\nif header :contains \"subject\" \"[SPAM]\" { fileinto \"Junk\"; }",
//!     &limits,
//! )
//! .unwrap();
//! let msg = b"From: a@example.com\r\nSubject: [SPAM] win\r\n\r\nhi\r\n";
//! let env = Envelope { from: Some("a@example.com"), to: "me@example.org", auth: None };
//! let out = run(&script, msg, &env, &Ctx, &limits).unwrap();
//! assert_eq!(
//!     out.actions,
//!     vec![Action::FileInto { mailbox: "Junk".into(), flags: vec![], create: false }]
//! );
//! assert_eq!(
//!     compile("foo;", &limits).unwrap_err().to_string(),
//!     "line 1: unknown command \"foo\""
//! );
//! ```

mod actions;
mod ast;
mod date;
mod encoded;
mod lexer;
mod matcher;
mod message;
mod parser;
mod run;
mod vacation;
mod validate;
mod variables;

use std::collections::HashSet;

pub use actions::{apply_edits, Action, HeaderEdit, Outcome, Vacation};
pub use validate::CAPABILITIES;

/// Bounds on what a script may cost. The defaults suit per-user scripts
/// uploaded over ManageSieve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest script source accepted by [`compile`] (also for includes).
    pub max_script_bytes: usize,
    /// Deepest nesting of blocks and tests.
    pub max_nesting: usize,
    /// Commands, tests and value comparisons one run may perform.
    pub max_steps: u64,
    /// Actions one run may produce.
    pub max_actions: usize,
    /// Distinct redirect targets one run may produce.
    pub max_redirects: usize,
    /// How deep `include` may nest (the main script is depth 0).
    pub max_include_depth: usize,
    /// How many `include`s one run may execute.
    pub max_includes: usize,
    /// Compiled size limit of one regex (`:regex` and `:matches`), in bytes.
    pub max_regex_bytes: usize,
    /// Longest value of a variable or expanded string; longer is truncated.
    pub max_variable_bytes: usize,
    /// Number of variables per scope.
    pub max_variables: usize,
    /// How much of the decoded body the `body` test looks at; the rest is
    /// ignored (a filter on a 50 MB attachment is not worth the time).
    pub max_body_bytes: usize,
    /// Header fields the script sees; later ones are invisible to tests
    /// (real messages have a few dozen; this bounds memory and scan time).
    pub max_header_fields: usize,
    /// Shortest vacation period (`:seconds` below it is raised to it):
    /// one day by default, as RFC 5230 asks for `:days` and Pigeonhole does
    /// for `:seconds`, so that two autoresponders cannot ping-pong quickly.
    pub min_vacation_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_script_bytes: 64 * 1024,
            max_nesting: 32,
            max_steps: 100_000,
            max_actions: 32,
            max_redirects: 4,
            max_include_depth: 5,
            max_includes: 16,
            max_regex_bytes: 1 << 20,
            max_variable_bytes: 4096,
            max_variables: 128,
            max_body_bytes: 1 << 20,
            max_header_fields: 2_000,
            min_vacation_seconds: 86_400,
        }
    }
}

/// A compile error, with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct CompileError {
    pub line: usize,
    pub message: String,
}

/// A run-time error (a limit reached, a conflict of actions, a missing
/// include). The caller should do the implicit keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RuntimeError {
    pub line: usize,
    pub message: String,
}

/// A compiled, validated script.
#[derive(Debug, Clone)]
pub struct Script {
    stmts: Vec<ast::Stmt>,
    caps: HashSet<String>,
}

impl Script {
    /// The capabilities the script `require`s, sorted.
    pub fn required(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.caps.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// Where an included script lives (RFC 6609 `:personal` / `:global`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    Personal,
    Global,
}

/// The SMTP envelope for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// MAIL FROM; `None` is the null sender `<>`.
    pub from: Option<&'a str>,
    /// This recipient (RCPT TO) as given, +detail included.
    pub to: &'a str,
    /// The authenticated submitter, if any.
    pub auth: Option<&'a str>,
}

/// What the interpreter asks the outside world. Implementations should be
/// cheap: they are called during delivery.
pub trait Context {
    /// RFC 5490 `mailboxexists`.
    fn mailbox_exists(&self, name: &str) -> bool;
    /// RFC 6609 `include`: the source of the named script, `None` if absent.
    fn include(&self, name: &str, location: Location) -> Option<String>;
    /// The current time in the user's zone (`currentdate`, and the zone
    /// `date` converts to when no `:zone` is given).
    fn now(&self) -> chrono::DateTime<chrono::FixedOffset>;
    /// RFC 5183 `environment` items the caller knows ("domain", "host",
    /// "remote-host", "remote-ip", ...). `None` falls back to the built-in
    /// "name" (Mailfleet), "version", "location" (MDA) and "phase" (during);
    /// an item nobody knows makes the test false.
    fn environment(&self, name: &str) -> Option<String> {
        let _ = name;
        None
    }
}

/// Compiles and validates a script.
pub fn compile(source: &str, limits: &Limits) -> Result<Script, CompileError> {
    if source.len() > limits.max_script_bytes {
        return Err(CompileError {
            line: 1,
            message: format!(
                "script is {} bytes, more than the limit of {}",
                source.len(),
                limits.max_script_bytes
            ),
        });
    }
    let toks = lexer::lex(source)?;
    let raw = parser::parse_program(&toks, limits.max_nesting)?;
    let (stmts, caps) = validate::validate(raw, limits)?;
    Ok(Script { stmts, caps })
}

/// Runs a compiled script against `message` (raw RFC 5322 bytes).
pub fn run(
    script: &Script,
    message: &[u8],
    envelope: &Envelope<'_>,
    ctx: &dyn Context,
    limits: &Limits,
) -> Result<Outcome, RuntimeError> {
    run::run(script, message, envelope, ctx, limits)
}

#[cfg(test)]
mod tests;
