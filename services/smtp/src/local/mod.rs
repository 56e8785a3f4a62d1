//! Local recipients: who an address means, and putting a message in their INBOXes.

pub mod deliver;
pub mod resolve;

pub use deliver::{deliver, deliver_placed, Delivered, DeliveryError, Folder, Placement};
pub use resolve::{resolve, Recipient, Resolution};
