//! Local recipients: who an address means, and putting a message in their INBOXes.

pub mod deliver;
pub mod resolve;

pub use deliver::{deliver, Delivered, DeliveryError, Folder};
pub use resolve::{resolve, Recipient, Resolution};
