//! Storage for Mailfleet, behind three small traits so protocols never know the backend.
//!
//! - [`BlobStore`]: message bodies, content-addressed (one stored copy per distinct message,
//!   however many recipients or mailboxes hold it).
//! - [`MetadataStore`]: domains, accounts, aliases, mailboxes, messages, the change log and
//!   quotas. Writes are transactions; a write returns only once it is durable.
//! - [`Coordinator`]: what front-ends tell each other: mailbox change notifications, leases
//!   and rate-limit counters.
//!
//! # Layout
//! - [`types`]: ids and records shared by every backend.
//! - [`blob`]: the [`BlobStore`] trait and the local-directory backend.
//! - [`metadata`]: the [`MetadataStore`] trait and the embedded SQLite backend.
//! - [`coord`]: the [`Coordinator`] trait and the in-process backend.
//! - [`credentials`]: app passwords, TOTP secrets (records only; `mailfleet-auth` decides).
//! - [`queue`]: outbound queue records (a blob, an envelope, per-recipient state).
//! - [`conformance`]: the suite every backend must pass; backends' tests call it.
//! - [`embedded`]: opens the three embedded backends under one data directory.

pub mod blob;
pub mod conformance;
pub mod coord;
pub mod credentials;
pub mod embedded;
pub mod error;
pub mod metadata;
pub mod queue;
pub mod types;

pub use blob::BlobStore;
pub use coord::{Coordinator, Lease, Subscription};
pub use credentials::{AppPassword, AppPasswordId, NewAppPassword, TotpSecret};
pub use error::{StoreError, StoreResult};
pub use metadata::MetadataStore;
pub use queue::{
    DsnRet, NewOutbound, NewOutboundRecipient, OutboundMessage, OutboundRecipient, QueueId,
    RecipientState, RecipientUpdate,
};
pub use types::*;

use std::sync::Arc;

/// The three stores a front-end works with, cheap to clone.
#[derive(Clone)]
pub struct Stores {
    pub blobs: Arc<dyn BlobStore>,
    pub meta: Arc<dyn MetadataStore>,
    pub coord: Arc<dyn Coordinator>,
}
