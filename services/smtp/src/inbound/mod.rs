//! Inbound SMTP: the session state machine, the connection driver and the listener.

pub mod conn;
pub mod listener;
pub mod session;

pub use conn::{serve_connection, ConnLimits};
pub use listener::{Listener, ListenerKind};
pub use session::{Next, Response, Session, SessionConfig};
