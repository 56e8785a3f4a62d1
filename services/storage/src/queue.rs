//! The outbound queue's records: a message (one blob) with an envelope sender and a state
//! per recipient, as Postfix's queue files and Stalwart's queue records keep them.
//!
//! Submission puts remote recipients here durably (the blob gains one reference, so the
//! orphan sweep never takes it) before it answers `250`. Delivery, retries and DSNs work
//! on these records; entries stay until every recipient is delivered or failed and the
//! entry is deleted.

use crate::types::{AccountId, BlobId};
use std::fmt;

/// An outbound queue entry's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub i64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where one recipient of a queued message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecipientState {
    /// Waiting for its next attempt.
    Queued,
    /// Accepted by the next hop.
    Delivered,
    /// Permanently refused, or expired; a DSN is owed unless NOTIFY says otherwise.
    Failed,
}

impl RecipientState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientState::Queued => "queued",
            RecipientState::Delivered => "delivered",
            RecipientState::Failed => "failed",
        }
    }
}

/// RFC 3461 `RET`: what a failure DSN returns of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DsnRet {
    Full,
    Headers,
}

impl DsnRet {
    pub fn as_str(self) -> &'static str {
        match self {
            DsnRet::Full => "FULL",
            DsnRet::Headers => "HDRS",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "FULL" => Some(DsnRet::Full),
            "HDRS" => Some(DsnRet::Headers),
            _ => None,
        }
    }
}

/// A recipient as enqueued, with its RFC 3461 parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOutboundRecipient {
    /// `local@domain` as given in RCPT TO.
    pub address: String,
    /// RFC 3461 `NOTIFY` value as received (e.g. `SUCCESS,FAILURE`), if any.
    pub notify: Option<String>,
    /// RFC 3461 `ORCPT` value as received (e.g. `rfc822;user@example.com`), if any.
    pub orcpt: Option<String>,
}

/// A message to enqueue. The blob must already be stored.
#[derive(Clone, Debug)]
pub struct NewOutbound {
    pub blob: BlobId,
    pub size: u64,
    /// Envelope sender (`MAIL FROM`); empty for the null sender `<>`.
    pub sender: String,
    /// The authenticated account that submitted it, if any.
    pub account: Option<AccountId>,
    /// RFC 3461 `ENVID`.
    pub envid: Option<String>,
    pub ret: Option<DsnRet>,
    pub recipients: Vec<NewOutboundRecipient>,
    /// Unix seconds; also the first attempt time of every recipient.
    pub created_at: i64,
    /// The W3C `traceparent` of the trace the message was received under; every delivery
    /// attempt joins it.
    pub trace: Option<String>,
}

/// One recipient of a queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundRecipient {
    pub address: String,
    pub state: RecipientState,
    pub attempts: u32,
    /// Unix seconds of the next attempt (meaningful while `Queued`).
    pub next_attempt: i64,
    pub last_error: Option<String>,
    pub notify: Option<String>,
    pub orcpt: Option<String>,
    /// A delay DSN (RFC 3464 `Action: delayed`) has been sent for this recipient.
    pub delay_warned: bool,
}

/// A queued message and its recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundMessage {
    pub id: QueueId,
    pub blob: BlobId,
    pub size: u64,
    pub sender: String,
    pub account: Option<AccountId>,
    pub envid: Option<String>,
    pub ret: Option<DsnRet>,
    pub created_at: i64,
    /// See [`NewOutbound::trace`].
    pub trace: Option<String>,
    /// In the order they were enqueued.
    pub recipients: Vec<OutboundRecipient>,
    /// The version of the entry's attempt state: an opaque value (0 before anything was
    /// claimed) that every claim and every recorded outcome changes. A claim compares
    /// against it (see `MetadataStore::claim_outbound_attempt`).
    pub version: u64,
}

/// The outcome of one delivery attempt for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientUpdate {
    pub state: RecipientState,
    pub next_attempt: i64,
    pub last_error: Option<String>,
    /// This attempt sent a delay DSN; once set, the recipient's flag stays set.
    pub delay_warned: bool,
    /// The writer's lease token on the entry (a fencing token). The store refuses the write
    /// with [`crate::StoreError::Conflict`] when a larger token has already written to the
    /// entry: a worker whose lease lapsed mid-delivery cannot overwrite the newer holder's
    /// outcome. `None` (the admin CLI) skips the check.
    pub fence: Option<u64>,
}

/// The outbound queue at a glance: what the `mailfleet_queue_*` gauges show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Entries with a `Queued` recipient whose next attempt is now or past.
    pub due: u64,
    /// The earliest next attempt among due entries (Unix seconds): how long the queue has
    /// been behind is `now - due_since`.
    pub due_since: Option<i64>,
    /// Entries with `Queued` recipients that all wait for a later retry.
    pub deferred: u64,
    /// When the oldest deferred entry was queued (Unix seconds).
    pub oldest_deferred: Option<i64>,
}

impl QueueStats {
    /// Counts one entry whose queued recipients' earliest next attempt is `next` (`None`:
    /// nothing left to deliver), for backends that compute the figures by listing.
    pub fn add(&mut self, now: i64, next: Option<i64>, created_at: i64) {
        match next {
            Some(next) if next <= now => {
                self.due += 1;
                self.due_since = Some(self.due_since.map_or(next, |s| s.min(next)));
            }
            Some(_) => {
                self.deferred += 1;
                self.oldest_deferred = Some(
                    self.oldest_deferred
                        .map_or(created_at, |c| c.min(created_at)),
                );
            }
            None => {}
        }
    }
}
