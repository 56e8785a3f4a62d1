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
//! - [`blob`]: the [`BlobStore`] trait, the local-directory and S3 backends.
//! - [`metadata`]: the [`MetadataStore`] trait, the SQLite and ScyllaDB backends.
//! - [`coord`]: the [`Coordinator`] trait, the in-process and Redis backends.
//! - [`object_id`]: MAILBOXID, EMAILID and THREADID (IMAP OBJECTID, RFC 8474; JMAP ids).
//! - [`credentials`]: app passwords, TOTP secrets (records only; `mailfleet-auth` decides).
//! - [`text_index`]: the full-text index's records (texts per message, search answers).
//! - [`indexer`]: writes messages' texts to the index off the delivery path, in batches.
//! - [`queue`]: outbound queue records (a blob, an envelope, per-recipient state).
//! - [`conformance`]: the suite every backend must pass; backends' tests call it.
//! - [`embedded`]: opens the three embedded backends under one data directory.
//! - [`open`]: opens whichever backends the configuration names.
//! - [`metered`]: the layer that measures every store call (latency, errors, leases).
//! - [`alloc`]: UID/MODSEQ range allocation for metadata stores without transactions.
//! - `backend_tls`: client TLS to Redis and ScyllaDB (CA file, client certificate).
//! - [`private_fs`]: files and directories created private (mail at rest is not world-readable).

pub mod alloc;
mod backend_tls;
pub mod blob;
pub mod conformance;
pub mod coord;
pub mod credentials;
pub mod data;
pub mod dkim;
pub mod embedded;
pub mod error;
pub mod fault;
pub mod indexer;
pub mod metadata;
pub mod metered;
pub mod object_id;
pub mod open;
pub mod private_fs;
pub mod queue;
pub mod sieve_scripts;
#[cfg(test)]
mod sim;
pub mod text_index;
pub mod types;

pub use blob::BlobStore;
pub use coord::{Coordinator, Lease, Subscription};
pub use credentials::{AppPassword, AppPasswordId, NewAppPassword, TotpSecret};
pub use data::{DataScope, Datum, Expect};
pub use dkim::{DkimAlgorithm, DkimKey, DkimKeyState};
pub use error::{StoreError, StoreResult};
pub use metadata::MetadataStore;
pub use object_id::{MessageObjectIds, MessageRefs, ObjectIdKind};
pub use queue::{
    DsnRet, NewOutbound, NewOutboundRecipient, OutboundMessage, OutboundRecipient, QueueId,
    QueueStats, RecipientState, RecipientUpdate,
};
pub use text_index::{MessageText, TextMatches, TextPiece};
pub use types::*;

use std::sync::Arc;

/// The three stores a front-end works with, cheap to clone.
#[derive(Clone)]
pub struct Stores {
    pub blobs: Arc<dyn BlobStore>,
    pub meta: Arc<dyn MetadataStore>,
    pub coord: Arc<dyn Coordinator>,
    /// Writes new messages' texts to the full-text index in the background.
    pub indexer: indexer::TextIndexer,
}

impl Stores {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetadataStore>,
        coord: Arc<dyn Coordinator>,
    ) -> Self {
        let indexer = indexer::TextIndexer::new(meta.clone(), blobs.clone());
        Stores {
            blobs,
            meta,
            coord,
            indexer,
        }
    }

    /// Stores a message body that a message is about to reference: pins it first (see
    /// [`MetadataStore::pin_blob`]), so the orphan sweep cannot delete bytes that were
    /// already there between this put and the append that references them. Every writer
    /// of message bodies goes through here, not `blobs.put`.
    pub async fn put_blob(&self, data: bytes::Bytes) -> StoreResult<BlobId> {
        self.meta.pin_blob(&BlobId::of(&data)).await?;
        self.blobs.put(data).await
    }

    /// Asks each backend one cheap question, for readiness probes: a metadata read, a blob
    /// existence check and a counter read. The questions go through the traits, so every
    /// backend is probed the same way and a probe that answers proves the path protocols use.
    pub async fn check(&self) -> Vec<(&'static str, StoreResult<()>)> {
        let probe_blob = BlobId::of(b"mailfleet readiness probe");
        let (m, b, c) = tokio::join!(
            self.meta.get_domain("readiness.invalid"),
            self.blobs.exists(&probe_blob),
            self.coord
                .get_counter("readiness", std::time::Duration::from_secs(60)),
        );
        vec![
            ("metadata", m.map(|_| ())),
            ("blobs", b.map(|_| ())),
            ("coordination", c.map(|_| ())),
        ]
    }
}
