//! Mailfleet's SMTP service.
//!
//! # Layout
//! The inbound path is a pipeline of small parts, each distrustful of its input:
//!
//! ```text
//! socket ──> inbound::conn ──> inbound::session ──> pipeline::cleanup ──> local::deliver
//!  (I/O, TLS,      (SMTP state machine,    (normalise line endings,   (blob once, one
//!   timeouts)       limits, replies)        trace headers, hop limit)  metadata commit)
//! ```
//!
//! - [`proto`]: SMTP without sockets: command parsing, replies, the DATA receiver that
//!   un-stuffs dots and refuses every smuggling sequence. Tested and fuzzed with no network.
//! - [`inbound`]: the session state machine ([`inbound::session`]), the connection driver
//!   that owns the socket, TLS and timeouts ([`inbound::conn`]), and the listener.
//! - [`pipeline`]: what happens to an accepted message: cleanup, then local delivery.
//! - [`local`]: recipient resolution (accounts, plus-addressing, aliases, catch-all, quota)
//!   and delivery into INBOXes.
//!
//! SPF/DKIM/DMARC verification, filtering and Sieve join the pipeline between cleanup and
//! delivery in later work; the pipeline's stages are where they plug in.

#![forbid(unsafe_code)]

pub mod inbound;
pub mod local;
pub mod pipeline;
pub mod proto;
