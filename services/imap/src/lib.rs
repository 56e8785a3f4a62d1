//! Mailfleet's IMAP4rev2 server (RFC 9051), also serving IMAP4rev1 clients (RFC 3501).
//!
//! # Layout
//! - [`session`]: the session state machine over imap-codec's command and response types,
//!   free of sockets; [`commands`] adds one file per command family.
//! - [`selected`]: the selected mailbox as one session sees it (sequence numbers, flags,
//!   MODSEQs), refreshed from the store's change log.
//! - [`views`]: the message lists of selected mailboxes, shared by the sessions of one
//!   process, each keeping only what differs.
//! - [`conn`]: the socket side: framing with imap-codec's fragmentizer, literals, STARTTLS,
//!   AUTHENTICATE continuation, IDLE, timeouts.
//! - [`listener`]: accept loop with connection cap and graceful shutdown.
//! - [`response`]: building and encoding responses through imap-codec.
//!
//! Storage is reached only through the `mailfleet-storage` traits; sessions on other nodes
//! learn of changes through the `Coordinator` (IDLE) and the change log (every command).

#![forbid(unsafe_code)]

pub mod commands;
pub mod conn;
pub mod deflate;
pub mod junk;
pub mod listener;
pub mod mutf7;
pub mod notify;
pub mod response;
pub mod selected;
pub mod session;
pub mod views;

pub use conn::{serve_connection, ConnLimits};
pub use listener::Listener;
pub use session::{ImapConfig, LoginError, LoginService, Session, UserSessions};
pub use views::SharedViews;
