//! SMTP as bytes and values, free of sockets.
//!
//! We parse commands ourselves rather than through a general SMTP crate because framing is
//! Mailfleet's security boundary: the line cap, what counts as a line end and what may end
//! DATA must live in one small place we test byte by byte (see [`data`]), and each parse
//! error must map to one precise reply.

pub mod command;
pub mod data;
pub mod reply;

pub use command::{Command, CommandError, MailParams, Path, RcptParams};
pub use data::{DataEnd, DataReceiver};
pub use reply::Reply;
