//! Mailfleet's metrics: one Prometheus registry per process and every metric family in it.
//!
//! Why a crate of its own: the protocol crates (SMTP, IMAP, POP3, auth, delivery) count
//! where things happen, and the HTTP listener renders the registry at `GET /metrics`.
//! Putting the definitions here keeps the names, label sets and buckets in one reviewed
//! place (the metric reference in `docs/operations.md` follows this crate), and keeps the
//! `prometheus` dependency out of the protocol code's types.
//!
//! Why a process-wide registry ([`metrics`]): Prometheus scrapes a process, and every
//! listener of that process adds to the same series. Passing a handle through every
//! constructor would buy nothing but churn; tests that look at values compare before and
//! after, so they can share the process.
//!
//! Cost: the hot paths (a command, a connection) touch only pre-resolved handles (an
//! atomic add on a counter, a bucket search on a histogram). Command series are created for
//! a fixed table of command names at start-up ([`commands`]), connection series once per
//! listener ([`ListenerMetrics`]); label values are `&'static str` from fixed sets, so a
//! client can never create a series, and nothing allocates per command.

pub mod commands;
mod labels;
mod registry;
pub mod storage;
pub mod trace;

pub use commands::{
    CommandId, CommandResult, CommandTable, ImapStatus, Pop3Status, SmtpReplyClass,
};
pub use labels::{
    DeliveryResult, DeliveryTls, ListenerKind, LoginResult, Mechanism, MessageRefusal, Protocol,
    RateLimit, RefuseReason, TlsOutcome,
};
pub use registry::{
    metrics, ConnectionGuard, ListenerMetrics, Metrics, SmtpMessageMetrics, VERSION,
};

#[cfg(test)]
mod tests;
