//! Mailfleet's domain model: the pieces every protocol and backend shares.
//!
//! # Layout
//! - [`address`]: parsing and normalising mailbox addresses (RFC 5321 paths, SMTPUTF8).
//! - [`budget`]: a process-wide cap on bytes held in memory, shared by sessions.
//! - [`config`]: the TOML configuration with environment overrides, parsed once at the edge
//!   into small typed structs.
//! - [`credentials`]: argon2id password hashing and the password policy.
//! - [`tls`]: rustls server configuration with certificates reloaded from disk.
//! - [`net`]: the byte-stream type, TLS handshakes and the accept loop every listener uses.
//! - [`proxy`]: the PROXY protocol header (v2 and v1) in front of mail listeners, with
//!   the trusted-network model.
//! - [`framing`]: line framing under a length cap and a deadline, for line protocols.
//! - [`shutdown`]: the one shutdown signal that fans out from the binary to every task.

pub mod address;
pub mod budget;
pub mod config;
pub mod credentials;
pub mod framing;
pub mod net;
pub mod proxy;
pub mod shutdown;
pub mod tls;

pub use address::{Address, AddressError};
