//! Mailfleet's ManageSieve server (RFC 5804): users upload, check, list, activate,
//! rename and delete their Sieve scripts, which delivery then runs.
//!
//! # Layout
//! - [`proto`]: framing (atoms, quoted strings, `{n+}` literals under limits), commands
//!   and responses with their codes, without I/O.
//! - [`session`]: the NOT AUTHENTICATED / AUTHENTICATED state machine; logins through
//!   `mailfleet-auth` (as IMAP's: throttling, app passwords, TOTP and suspended
//!   accounts; allowed where the account allows IMAP), scripts through
//!   `mailfleet_storage::sieve_scripts`, compiled with `mailfleet-sieve` before they are
//!   stored.
//! - [`conn`]: the only socket code: reads into the framer, the idle timer, STARTTLS,
//!   shutdown.
//! - [`listener`]: plain and implicit-TLS listeners on the shared accept loop.
//!
//! # Limits
//!
//! | Limit | Key | Default |
//! | --- | --- | --- |
//! | Command line outside literals, CRLF included | `managesieve.max_line_length` | 8192 |
//! | Script size (PUTSCRIPT, CHECKSCRIPT, HAVESPACE; literals after login) | `managesieve.max_script_size` | 65536 |
//! | Literal before login (SASL responses) | [`session::PREAUTH_MAX_LITERAL`] | 4160 |
//! | Scripts per account | `mailfleet_storage::sieve_scripts::MAX_SCRIPTS` | 32 |
//! | Time for each command (idle timer) | `managesieve.command_timeout_secs` | 600 |
//! | Bad commands per connection | `managesieve.max_errors` | 10 |
//! | Failed logins per connection | `auth.max_attempts_per_connection` | 3 |
//! | Connections per listener | `managesieve.max_connections` | 200 |

#![forbid(unsafe_code)]

pub mod conn;
pub mod listener;
pub mod proto;
pub mod session;

pub use conn::{serve_connection, ConnLimits};
pub use listener::{Listener, ListenerKind};
pub use session::{Session, SessionConfig};
