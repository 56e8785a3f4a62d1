//! Mailfleet's POP3 server: RFC 1939 with CAPA and response codes (RFC 2449, RFC 3206),
//! STLS (RFC 2595) and SASL AUTH PLAIN/LOGIN (RFC 5034).
//!
//! # Layout
//! - [`proto`]: commands, replies and dot-stuffed multi-line responses, without I/O.
//! - [`maildrop`]: the INBOX snapshot a session works on: message numbers, deletion marks,
//!   unique ids shared with IMAP (`<uidvalidity>.<uid>`).
//! - [`session`]: the AUTHORIZATION / TRANSACTION / UPDATE state machine; logins through
//!   `mailfleet-auth`, one session per maildrop through a Coordinator lease, deletions only
//!   at QUIT, published so IMAP sessions see them at once.
//! - [`conn`]: the only socket code: line framing, the autologout timer, lease renewal,
//!   STLS, shutdown.
//! - [`listener`]: plain and implicit-TLS listeners on the shared accept loop.
//!
//! # Limits
//!
//! | Limit | Key | Default |
//! | --- | --- | --- |
//! | Command line, CRLF included (SASL responses too) | `pop3.max_line_length` | 8192 |
//! | Autologout (idle time between commands) | `pop3.command_timeout_secs` | 600 |
//! | Bad commands per connection | `pop3.max_errors` | 10 |
//! | Failed logins per connection | `auth.max_attempts_per_connection` | 3 |
//! | Messages listed per session | `pop3.max_messages` | 50000 |
//! | Connections per listener | `pop3.max_connections` | 1000 |
//! | Sessions per maildrop | lease `pop3:maildrop:<account>` | 1 |

#![forbid(unsafe_code)]

pub mod conn;
pub mod listener;
pub mod maildrop;
pub mod proto;
pub mod session;

pub use conn::{serve_connection, ConnLimits};
pub use listener::{Listener, ListenerKind};
pub use session::{Session, SessionConfig};
