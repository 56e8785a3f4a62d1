//! The [`Coordinator`] trait: what front-ends tell each other.
//!
//! - Mailbox change events, published after a write commits, so IDLE sessions (and later
//!   POP3 and JMAP push) on any node learn of new, expunged and re-flagged messages.
//! - Leases with fencing tokens: one holder at a time per key (a POP3 maildrop, a queue item).
//! - Windowed counters for rate limits and login throttling.

pub mod local;
pub mod redis;

use crate::types::{AccountId, MailboxId, ModSeq};
use crate::StoreResult;
use async_trait::async_trait;
use std::time::Duration;

/// A change notification. Receivers re-read the store; the event only says where to look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxEvent {
    /// Something changed in `mailbox`; its highest MODSEQ is now `modseq`.
    Changed {
        account: AccountId,
        mailbox: MailboxId,
        modseq: ModSeq,
    },
    /// Mailboxes were created, renamed or deleted.
    MailboxesChanged { account: AccountId },
    /// Events may have been missed (a slow subscriber, a reconnect): re-read everything.
    Resync { account: AccountId },
}

impl MailboxEvent {
    pub fn account(&self) -> AccountId {
        match self {
            MailboxEvent::Changed { account, .. }
            | MailboxEvent::MailboxesChanged { account }
            | MailboxEvent::Resync { account } => *account,
        }
    }
}

/// How long a key's token count is kept after its last grant.
pub const TOKEN_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Multiplier of the Unix time (seconds) that seeds a key's first token: a key's counter may
/// take a million grants per second of its life before a recreated counter could fall below
/// it, which no lease comes near.
pub const TOKEN_BASE_SHIFT: u32 = 20;

/// The first token of a key whose counter is (re)created now.
pub fn token_base_now() -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    (secs << TOKEN_BASE_SHIFT) + 1
}

/// A held lease. `token` grows with every grant of the same key (a fencing token): a store
/// that records the token it last saw can refuse writes from a holder whose lease lapsed.
///
/// Tokens are counted per key: each grant of a key gets the previous grant's token plus one,
/// so a holder that re-acquires a key and gets its own last token plus one knows that nobody
/// held the key in between (the UID allocator in [`crate::alloc`] relies on this to skip a
/// store round trip). A key not granted for [`TOKEN_RETENTION`] may restart its count from
/// a time-derived base, which is still above every earlier token of that key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub holder: String,
    pub token: u64,
}

/// A stream of events for one account.
#[async_trait]
pub trait SubscriptionStream: Send {
    /// The next event; `None` when the coordinator is gone.
    async fn next(&mut self) -> Option<MailboxEvent>;
}

/// A subscription, boxed so every backend returns the same type.
pub struct Subscription(pub Box<dyn SubscriptionStream>);

impl Subscription {
    pub async fn next(&mut self) -> Option<MailboxEvent> {
        self.0.next().await
    }
}

#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    async fn publish(&self, event: MailboxEvent) -> StoreResult<()>;
    async fn subscribe(&self, account: AccountId) -> StoreResult<Subscription>;
    /// Grants the lease if free or expired; `None` while someone else holds it.
    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<Lease>>;
    /// Extends a lease still held; false when it was lost.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StoreResult<bool>;
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()>;
    /// Adds one to the counter `key` for the current fixed window of `window` and returns
    /// the new count.
    async fn incr_counter(&self, key: &str, window: Duration) -> StoreResult<u64>;
    /// The counter's value in the current window, without adding.
    async fn get_counter(&self, key: &str, window: Duration) -> StoreResult<u64>;
    /// Takes one back from the counter `key` in the current window (never below zero) and
    /// returns the new count: undoes an [`Coordinator::incr_counter`] taken as a
    /// reservation (login throttling counts an attempt before verifying it and gives the
    /// count back when it succeeds). A window that ended in between is left alone.
    async fn decr_counter(&self, key: &str, window: Duration) -> StoreResult<u64>;
    /// Sets the marker `key` for `ttl` (again: the expiry moves to `ttl` from now).
    async fn mark(&self, key: &str, ttl: Duration) -> StoreResult<()>;
    /// Whether the marker `key` is set and not expired.
    async fn is_marked(&self, key: &str) -> StoreResult<bool>;
}
