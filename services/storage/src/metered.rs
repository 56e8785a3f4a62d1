//! Metered layers over the three stores: every call's latency and backend errors go to
//! `mailfleet_storage_operation_duration_seconds` and `mailfleet_storage_errors_total`
//! under the backend's name and the trait method's (`blob_put`, `meta_append`,
//! `coord_publish`).
//!
//! Why a layer and not code in each backend: protocols never know the backend, and the
//! measurements should not either; one wrapper per trait measures SQLite, ScyllaDB, the
//! local disk, S3, Redis and the in-process coordinator the same way, and a new backend is
//! measured without a line of metrics code. [`crate::open::open`] and
//! [`crate::embedded::open`] put it on every store they open.
//!
//! Cost: one `Instant::now` pair and a label lookup per call, next to a store call that
//! takes microseconds (a cached SQLite read) to milliseconds (S3).
//!
//! The metadata delegation lists every trait method, so a method with a default body
//! (`changes_with_messages`) reaches the backend's own faster version; a new trait method
//! must be added here too (the compiler says so for methods without a default).

use crate::coord::{Lease, MailboxEvent, Subscription, SubscriptionStream};
use crate::metadata::{Expunged, MetadataStore, QuotaPolicy};
use crate::*;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Times `call` and records it under `backend` and `op`.
async fn timed<T>(
    backend: &'static str,
    op: &'static str,
    call: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    let start = Instant::now();
    // A span only under a traced operation (a command, a message): background loops
    // (queue polling, lease renewal) would otherwise each start a trace of their own.
    // Writes are `debug` spans, exported with a message's trace; reads are `trace` spans,
    // seen only in a `trace` log: exported, the reads under every IMAP command cost more
    // throughput than they told (docs/benchmarks.md, "Metrics and traces").
    let r = if tracing::Span::current().is_none() {
        call.await
    } else if is_read(op) {
        let span = tracing::trace_span!(
            "storage",
            otel.name = op,
            otel.kind = "client",
            db.system.name = backend,
            db.operation.name = op,
        );
        call.instrument(span).await
    } else {
        let span = tracing::debug_span!(
            "storage",
            otel.name = op,
            otel.kind = "client",
            db.system.name = backend,
            db.operation.name = op,
        );
        call.instrument(span).await
    };
    let backend_error = matches!(r, Err(StoreError::Unavailable(_) | StoreError::Corrupt(_)));
    mailfleet_telemetry::metrics()
        .storage
        .observe(backend, op, start.elapsed(), backend_error);
    r
}

/// Whether an operation only reads (see [`timed`] for why that matters to its span).
fn is_read(op: &str) -> bool {
    const READ_PREFIXES: &[&str] = &[
        "blob_get",
        "blob_exists",
        "meta_get_",
        "meta_list_",
        "meta_changes_",
        "meta_message_",
        "meta_find_",
        "meta_search_",
        "meta_due_",
        "meta_mailbox_usage",
        "meta_alias_targets",
        "meta_dkim_keys",
        "meta_totp_secret",
        "meta_subscriptions",
        "meta_shared_with",
        "meta_sender_grants",
        "meta_outbound_queue_stats",
        "meta_orphaned_blobs",
        "meta_unindexed_messages",
        "coord_get_counter",
        "coord_is_marked",
    ];
    READ_PREFIXES.iter().any(|p| op.starts_with(p))
}

/// The blob store operations, for their zero series.
const BLOB_OPS: &[&str] = &[
    "blob_put",
    "blob_get",
    "blob_get_range",
    "blob_exists",
    "blob_delete",
];

/// A [`BlobStore`] whose calls are measured.
pub struct MeteredBlobs {
    inner: Arc<dyn BlobStore>,
    backend: &'static str,
}

impl MeteredBlobs {
    pub fn wrap(inner: Arc<dyn BlobStore>, backend: &'static str) -> Arc<dyn BlobStore> {
        mailfleet_telemetry::metrics()
            .storage
            .register_backend(backend, BLOB_OPS);
        Arc::new(Self { inner, backend })
    }
}

#[async_trait]
impl BlobStore for MeteredBlobs {
    async fn put(&self, data: Bytes) -> StoreResult<BlobId> {
        timed(self.backend, "blob_put", self.inner.put(data)).await
    }
    async fn get(&self, id: &BlobId) -> StoreResult<Bytes> {
        timed(self.backend, "blob_get", self.inner.get(id)).await
    }
    async fn get_range(&self, id: &BlobId, range: Range<u64>) -> StoreResult<Bytes> {
        timed(
            self.backend,
            "blob_get_range",
            self.inner.get_range(id, range),
        )
        .await
    }
    async fn exists(&self, id: &BlobId) -> StoreResult<bool> {
        timed(self.backend, "blob_exists", self.inner.exists(id)).await
    }
    async fn delete(&self, id: &BlobId) -> StoreResult<()> {
        timed(self.backend, "blob_delete", self.inner.delete(id)).await
    }
}

const COORD_OPS: &[&str] = &[
    "coord_publish",
    "coord_subscribe",
    "coord_acquire_lease",
    "coord_renew_lease",
    "coord_release_lease",
    "coord_incr_counter",
    "coord_get_counter",
    "coord_decr_counter",
    "coord_mark",
    "coord_is_marked",
];

/// The leases this node holds, by key, with when each lapses unless renewed: what
/// `mailfleet_leases_held` counts at each scrape. A holder that stops renewing without
/// releasing (a crashed task) drops out once the lease's time is up, as it does in the
/// coordinator.
type HeldLeases = Mutex<HashMap<String, Instant>>;

/// A [`Coordinator`] whose calls are measured, and which counts the leases it holds, the
/// leases it loses and the resyncs its subscribers get.
pub struct MeteredCoordinator {
    inner: Arc<dyn Coordinator>,
    backend: &'static str,
    held: Arc<HeldLeases>,
}

impl MeteredCoordinator {
    pub fn wrap(inner: Arc<dyn Coordinator>, backend: &'static str) -> Arc<dyn Coordinator> {
        let m = mailfleet_telemetry::metrics();
        m.storage.register_backend(backend, COORD_OPS);
        let held: Arc<HeldLeases> = Arc::default();
        let weak: Weak<HeldLeases> = Arc::downgrade(&held);
        m.on_scrape(Box::new(move || {
            let Some(held) = weak.upgrade() else {
                return false;
            };
            let now = Instant::now();
            let mut held = lock(&held);
            held.retain(|_, until| *until > now);
            mailfleet_telemetry::metrics()
                .storage
                .add_leases_held(held.len());
            true
        }));
        Arc::new(Self {
            inner,
            backend,
            held,
        })
    }

    fn holding(&self, key: &str, ttl: Duration) {
        lock(&self.held).insert(key.to_string(), Instant::now() + ttl);
    }

    fn dropped(&self, key: &str) {
        lock(&self.held).remove(key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each update is one insert or remove: a panic elsewhere cannot leave it half-done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts the resyncs a subscriber is told to make.
struct MeteredSubscription(Subscription);

#[async_trait]
impl SubscriptionStream for MeteredSubscription {
    async fn next(&mut self) -> Option<MailboxEvent> {
        let e = self.0.next().await;
        if matches!(e, Some(MailboxEvent::Resync { .. })) {
            mailfleet_telemetry::metrics().storage.resync();
        }
        e
    }
}

#[async_trait]
impl Coordinator for MeteredCoordinator {
    async fn publish(&self, event: MailboxEvent) -> StoreResult<()> {
        timed(self.backend, "coord_publish", self.inner.publish(event)).await
    }
    async fn subscribe(&self, account: AccountId) -> StoreResult<Subscription> {
        let s = timed(
            self.backend,
            "coord_subscribe",
            self.inner.subscribe(account),
        )
        .await?;
        Ok(Subscription(Box::new(MeteredSubscription(s))))
    }
    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<Lease>> {
        let r = timed(
            self.backend,
            "coord_acquire_lease",
            self.inner.acquire_lease(key, holder, ttl),
        )
        .await;
        if let Ok(Some(_)) = &r {
            self.holding(key, ttl);
        }
        r
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StoreResult<bool> {
        let r = timed(
            self.backend,
            "coord_renew_lease",
            self.inner.renew_lease(lease, ttl),
        )
        .await;
        match &r {
            Ok(true) => self.holding(&lease.key, ttl),
            Ok(false) => {
                self.dropped(&lease.key);
                mailfleet_telemetry::metrics().storage.lease_lost();
            }
            Err(_) => {}
        }
        r
    }
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.dropped(&lease.key);
        timed(
            self.backend,
            "coord_release_lease",
            self.inner.release_lease(lease),
        )
        .await
    }
    async fn incr_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        timed(
            self.backend,
            "coord_incr_counter",
            self.inner.incr_counter(key, window),
        )
        .await
    }
    async fn get_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        timed(
            self.backend,
            "coord_get_counter",
            self.inner.get_counter(key, window),
        )
        .await
    }
    async fn decr_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        timed(
            self.backend,
            "coord_decr_counter",
            self.inner.decr_counter(key, window),
        )
        .await
    }
    async fn mark(&self, key: &str, ttl: Duration) -> StoreResult<()> {
        timed(self.backend, "coord_mark", self.inner.mark(key, ttl)).await
    }
    async fn is_marked(&self, key: &str) -> StoreResult<bool> {
        timed(self.backend, "coord_is_marked", self.inner.is_marked(key)).await
    }
}

/// A [`MetadataStore`] whose calls are measured.
pub struct MeteredMeta {
    inner: Arc<dyn MetadataStore>,
    backend: &'static str,
}

/// The operations created at zero: the ones dashboards and alerts name.
const META_OPS: &[&str] = &[
    "meta_append",
    "meta_store_flags",
    "meta_changes_since",
    "meta_changes_with_messages",
    "meta_expunge",
    "meta_list_messages",
    "meta_get_account",
    "meta_enqueue_outbound",
    "meta_due_outbound",
];

impl MeteredMeta {
    pub fn wrap(inner: Arc<dyn MetadataStore>, backend: &'static str) -> Arc<dyn MetadataStore> {
        mailfleet_telemetry::metrics()
            .storage
            .register_backend(backend, META_OPS);
        Arc::new(Self { inner, backend })
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        timed(self.backend, op, call).await
    }
}

#[async_trait]
impl MetadataStore for MeteredMeta {
    async fn create_domain(&self, name: &str) -> StoreResult<Domain> {
        self.timed("meta_create_domain", self.inner.create_domain(name))
            .await
    }

    async fn get_domain(&self, name: &str) -> StoreResult<Option<Domain>> {
        self.timed("meta_get_domain", self.inner.get_domain(name))
            .await
    }

    async fn list_domains(&self) -> StoreResult<Vec<Domain>> {
        self.timed("meta_list_domains", self.inner.list_domains())
            .await
    }

    async fn delete_domain(&self, name: &str) -> StoreResult<()> {
        self.timed("meta_delete_domain", self.inner.delete_domain(name))
            .await
    }

    async fn create_account(
        &self,
        address: &str,
        password_hash: &str,
        quota_bytes: u64,
    ) -> StoreResult<Account> {
        self.timed(
            "meta_create_account",
            self.inner
                .create_account(address, password_hash, quota_bytes),
        )
        .await
    }

    async fn get_account(&self, address: &str) -> StoreResult<Option<Account>> {
        self.timed("meta_get_account", self.inner.get_account(address))
            .await
    }

    async fn get_account_by_id(&self, id: AccountId) -> StoreResult<Option<Account>> {
        self.timed("meta_get_account_by_id", self.inner.get_account_by_id(id))
            .await
    }

    async fn list_accounts(&self, domain: Option<&str>) -> StoreResult<Vec<Account>> {
        self.timed("meta_list_accounts", self.inner.list_accounts(domain))
            .await
    }

    async fn delete_account(&self, address: &str) -> StoreResult<Vec<BlobId>> {
        self.timed("meta_delete_account", self.inner.delete_account(address))
            .await
    }

    async fn set_password_hash(&self, address: &str, password_hash: &str) -> StoreResult<()> {
        self.timed(
            "meta_set_password_hash",
            self.inner.set_password_hash(address, password_hash),
        )
        .await
    }

    async fn set_quota(&self, address: &str, quota_bytes: u64) -> StoreResult<()> {
        self.timed("meta_set_quota", self.inner.set_quota(address, quota_bytes))
            .await
    }

    async fn set_account_settings(
        &self,
        address: &str,
        settings: &crate::AccountSettings,
    ) -> StoreResult<()> {
        self.timed(
            "meta_set_account_settings",
            self.inner.set_account_settings(address, settings),
        )
        .await
    }

    async fn set_domain_managed_by(&self, name: &str, managed_by: Option<&str>) -> StoreResult<()> {
        self.timed(
            "meta_set_domain_managed_by",
            self.inner.set_domain_managed_by(name, managed_by),
        )
        .await
    }

    async fn set_domain_quota(&self, name: &str, quota_bytes: u64) -> StoreResult<()> {
        self.timed(
            "meta_set_domain_quota",
            self.inner.set_domain_quota(name, quota_bytes),
        )
        .await
    }

    async fn create_alias(&self, source: &str, target: &str) -> StoreResult<()> {
        self.timed("meta_create_alias", self.inner.create_alias(source, target))
            .await
    }

    async fn delete_alias(&self, source: &str, target: Option<&str>) -> StoreResult<()> {
        self.timed("meta_delete_alias", self.inner.delete_alias(source, target))
            .await
    }

    async fn list_aliases(&self, domain: Option<&str>) -> StoreResult<Vec<Alias>> {
        self.timed("meta_list_aliases", self.inner.list_aliases(domain))
            .await
    }

    async fn alias_targets(&self, source: &str) -> StoreResult<Vec<String>> {
        self.timed("meta_alias_targets", self.inner.alias_targets(source))
            .await
    }

    async fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> StoreResult<Mailbox> {
        self.timed(
            "meta_create_mailbox",
            self.inner.create_mailbox(account, name, special_use),
        )
        .await
    }

    async fn get_mailbox(&self, account: AccountId, name: &str) -> StoreResult<Option<Mailbox>> {
        self.timed("meta_get_mailbox", self.inner.get_mailbox(account, name))
            .await
    }

    async fn list_mailboxes(&self, account: AccountId) -> StoreResult<Vec<Mailbox>> {
        self.timed("meta_list_mailboxes", self.inner.list_mailboxes(account))
            .await
    }

    async fn rename_mailbox(
        &self,
        account: AccountId,
        id: MailboxId,
        new_name: &str,
    ) -> StoreResult<()> {
        self.timed(
            "meta_rename_mailbox",
            self.inner.rename_mailbox(account, id, new_name),
        )
        .await
    }

    async fn delete_mailbox(&self, account: AccountId, id: MailboxId) -> StoreResult<Vec<BlobId>> {
        self.timed(
            "meta_delete_mailbox",
            self.inner.delete_mailbox(account, id),
        )
        .await
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        quota: QuotaPolicy,
    ) -> StoreResult<Vec<Appended>> {
        self.timed("meta_append", self.inner.append(messages, quota))
            .await
    }

    async fn list_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<MessageMeta>> {
        self.timed(
            "meta_list_messages",
            self.inner.list_messages(mailbox, after, limit),
        )
        .await
    }

    async fn get_message(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<Option<MessageMeta>> {
        self.timed("meta_get_message", self.inner.get_message(mailbox, uid))
            .await
    }

    async fn store_flags(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
    ) -> StoreResult<Vec<MessageMeta>> {
        self.timed(
            "meta_store_flags",
            self.inner.store_flags(mailbox, uids, op, flags),
        )
        .await
    }

    async fn store_flags_unchanged_since(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: ModSeq,
    ) -> StoreResult<crate::metadata::ConditionalStore> {
        self.timed(
            "meta_store_flags_unchanged_since",
            self.inner
                .store_flags_unchanged_since(mailbox, uids, op, flags, unchanged_since),
        )
        .await
    }

    async fn expunge(&self, mailbox: MailboxId, uids: &[Uid]) -> StoreResult<Expunged> {
        self.timed("meta_expunge", self.inner.expunge(mailbox, uids))
            .await
    }

    async fn expunge_deleted(
        &self,
        mailbox: MailboxId,
        only: Option<&[Uid]>,
    ) -> StoreResult<Expunged> {
        self.timed(
            "meta_expunge_deleted",
            self.inner.expunge_deleted(mailbox, only),
        )
        .await
    }

    async fn changes_since(&self, mailbox: MailboxId, since: ModSeq) -> StoreResult<Vec<Change>> {
        self.timed(
            "meta_changes_since",
            self.inner.changes_since(mailbox, since),
        )
        .await
    }

    async fn mailbox_usage(&self, mailbox: MailboxId) -> StoreResult<MailboxUsage> {
        self.timed("meta_mailbox_usage", self.inner.mailbox_usage(mailbox))
            .await
    }

    async fn message_summaries(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Vec<u8>)>> {
        self.timed(
            "meta_message_summaries",
            self.inner.message_summaries(mailbox, uids),
        )
        .await
    }

    async fn set_message_summary(
        &self,
        mailbox: MailboxId,
        uid: Uid,
        summary: Vec<u8>,
    ) -> StoreResult<()> {
        self.timed(
            "meta_set_message_summary",
            self.inner.set_message_summary(mailbox, uid, summary),
        )
        .await
    }

    async fn message_save_dates(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Option<i64>)>> {
        self.timed(
            "meta_message_save_dates",
            self.inner.message_save_dates(mailbox, uids),
        )
        .await
    }

    async fn message_object_ids(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, crate::MessageObjectIds)>> {
        self.timed(
            "meta_message_object_ids",
            self.inner.message_object_ids(mailbox, uids),
        )
        .await
    }

    async fn message_traces(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, String)>> {
        self.timed(
            "meta_message_traces",
            self.inner.message_traces(mailbox, uids),
        )
        .await
    }

    async fn find_by_object_id(
        &self,
        account: AccountId,
        mailbox: Option<MailboxId>,
        id: &str,
        limit: usize,
    ) -> StoreResult<Vec<(MailboxId, Uid)>> {
        self.timed(
            "meta_find_by_object_id",
            self.inner.find_by_object_id(account, mailbox, id, limit),
        )
        .await
    }

    async fn copy_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<Vec<Copied>> {
        self.timed(
            "meta_copy_messages",
            self.inner.copy_messages(account, source, uids, dest),
        )
        .await
    }

    async fn move_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<(Vec<Copied>, Expunged)> {
        self.timed(
            "meta_move_messages",
            self.inner.move_messages(account, source, uids, dest),
        )
        .await
    }

    async fn claim_recent(&self, mailbox: MailboxId, up_to: Uid) -> StoreResult<Uid> {
        self.timed("meta_claim_recent", self.inner.claim_recent(mailbox, up_to))
            .await
    }

    async fn index_text(
        &self,
        mailbox: MailboxId,
        entries: Vec<(Uid, MessageText)>,
    ) -> StoreResult<()> {
        self.timed("meta_index_text", self.inner.index_text(mailbox, entries))
            .await
    }

    async fn search_text(
        &self,
        mailbox: MailboxId,
        fields: &[String],
        needle: &str,
    ) -> StoreResult<Option<TextMatches>> {
        self.timed(
            "meta_search_text",
            self.inner.search_text(mailbox, fields, needle),
        )
        .await
    }

    async fn unindexed_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<Uid>> {
        self.timed(
            "meta_unindexed_messages",
            self.inner.unindexed_messages(mailbox, after, limit),
        )
        .await
    }

    async fn subscribe(&self, account: AccountId, name: &str) -> StoreResult<()> {
        self.timed("meta_subscribe", self.inner.subscribe(account, name))
            .await
    }

    async fn unsubscribe(&self, account: AccountId, name: &str) -> StoreResult<()> {
        self.timed("meta_unsubscribe", self.inner.unsubscribe(account, name))
            .await
    }

    async fn subscriptions(&self, account: AccountId) -> StoreResult<Vec<String>> {
        self.timed("meta_subscriptions", self.inner.subscriptions(account))
            .await
    }

    async fn orphans_swept(&self) -> StoreResult<()> {
        self.timed("meta_orphans_swept", self.inner.orphans_swept())
            .await
    }
    async fn orphaned_blobs(
        &self,
        older_than: i64,
        limit: usize,
    ) -> StoreResult<crate::metadata::OrphanPage> {
        self.timed(
            "meta_orphaned_blobs",
            self.inner.orphaned_blobs(older_than, limit),
        )
        .await
    }

    async fn claim_orphan(&self, id: &BlobId, older_than: i64) -> StoreResult<bool> {
        self.timed("meta_claim_orphan", self.inner.claim_orphan(id, older_than))
            .await
    }

    async fn finish_orphan(&self, id: &BlobId) -> StoreResult<()> {
        self.timed("meta_finish_orphan", self.inner.finish_orphan(id))
            .await
    }

    async fn pin_blob(&self, id: &BlobId) -> StoreResult<()> {
        self.timed("meta_pin_blob", self.inner.pin_blob(id)).await
    }

    async fn create_app_password(
        &self,
        account: AccountId,
        new: crate::NewAppPassword,
    ) -> StoreResult<crate::AppPassword> {
        self.timed(
            "meta_create_app_password",
            self.inner.create_app_password(account, new),
        )
        .await
    }

    async fn list_app_passwords(&self, account: AccountId) -> StoreResult<Vec<crate::AppPassword>> {
        self.timed(
            "meta_list_app_passwords",
            self.inner.list_app_passwords(account),
        )
        .await
    }

    async fn find_app_password(
        &self,
        account: AccountId,
        tag: &str,
    ) -> StoreResult<Option<crate::AppPassword>> {
        self.timed(
            "meta_find_app_password",
            self.inner.find_app_password(account, tag),
        )
        .await
    }

    async fn add_dkim_key(&self, key: crate::DkimKey) -> StoreResult<()> {
        self.timed("meta_add_dkim_key", self.inner.add_dkim_key(key))
            .await
    }

    async fn dkim_keys(&self, domain: &str) -> StoreResult<Vec<crate::DkimKey>> {
        self.timed("meta_dkim_keys", self.inner.dkim_keys(domain))
            .await
    }

    async fn set_dkim_key_state(
        &self,
        domain: &str,
        selector: &str,
        state: crate::DkimKeyState,
        at: i64,
    ) -> StoreResult<()> {
        self.timed(
            "meta_set_dkim_key_state",
            self.inner.set_dkim_key_state(domain, selector, state, at),
        )
        .await
    }

    async fn delete_dkim_key(&self, domain: &str, selector: &str) -> StoreResult<()> {
        self.timed(
            "meta_delete_dkim_key",
            self.inner.delete_dkim_key(domain, selector),
        )
        .await
    }

    async fn revoke_app_password(&self, account: AccountId, name: &str) -> StoreResult<()> {
        self.timed(
            "meta_revoke_app_password",
            self.inner.revoke_app_password(account, name),
        )
        .await
    }

    async fn touch_app_password(&self, id: crate::AppPasswordId, at: i64) -> StoreResult<()> {
        self.timed(
            "meta_touch_app_password",
            self.inner.touch_app_password(id, at),
        )
        .await
    }

    async fn get_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<Option<crate::Datum>> {
        self.timed("meta_get_data", self.inner.get_data(scope, kind, key))
            .await
    }

    async fn put_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
        value: Vec<u8>,
        expires_at: Option<i64>,
        expect: crate::Expect,
    ) -> StoreResult<u64> {
        self.timed(
            "meta_put_data",
            self.inner
                .put_data(scope, kind, key, value, expires_at, expect),
        )
        .await
    }

    async fn delete_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<bool> {
        self.timed("meta_delete_data", self.inner.delete_data(scope, kind, key))
            .await
    }

    async fn list_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, crate::Datum)>> {
        self.timed("meta_list_data", self.inner.list_data(scope, kind, limit))
            .await
    }

    async fn set_totp_secret(
        &self,
        account: AccountId,
        secret: Option<crate::TotpSecret>,
    ) -> StoreResult<()> {
        self.timed(
            "meta_set_totp_secret",
            self.inner.set_totp_secret(account, secret),
        )
        .await
    }

    async fn totp_secret(&self, account: AccountId) -> StoreResult<Option<crate::TotpSecret>> {
        self.timed("meta_totp_secret", self.inner.totp_secret(account))
            .await
    }

    async fn accept_totp_step(&self, account: AccountId, step: u64) -> StoreResult<bool> {
        self.timed(
            "meta_accept_totp_step",
            self.inner.accept_totp_step(account, step),
        )
        .await
    }

    async fn grant_sender(&self, account: AccountId, address: &str) -> StoreResult<()> {
        self.timed(
            "meta_grant_sender",
            self.inner.grant_sender(account, address),
        )
        .await
    }

    async fn revoke_sender(&self, account: AccountId, address: &str) -> StoreResult<()> {
        self.timed(
            "meta_revoke_sender",
            self.inner.revoke_sender(account, address),
        )
        .await
    }

    async fn sender_grants(&self, account: AccountId) -> StoreResult<Vec<String>> {
        self.timed("meta_sender_grants", self.inner.sender_grants(account))
            .await
    }

    async fn enqueue_outbound(
        &self,
        msg: crate::NewOutbound,
    ) -> StoreResult<crate::OutboundMessage> {
        self.timed("meta_enqueue_outbound", self.inner.enqueue_outbound(msg))
            .await
    }

    async fn get_outbound(
        &self,
        id: crate::QueueId,
    ) -> StoreResult<Option<crate::OutboundMessage>> {
        self.timed("meta_get_outbound", self.inner.get_outbound(id))
            .await
    }

    async fn list_outbound(
        &self,
        after: crate::QueueId,
        limit: usize,
    ) -> StoreResult<Vec<crate::OutboundMessage>> {
        self.timed("meta_list_outbound", self.inner.list_outbound(after, limit))
            .await
    }

    async fn update_outbound_recipient(
        &self,
        id: crate::QueueId,
        address: &str,
        update: crate::RecipientUpdate,
    ) -> StoreResult<()> {
        self.timed(
            "meta_update_outbound_recipient",
            self.inner.update_outbound_recipient(id, address, update),
        )
        .await
    }

    async fn delete_outbound(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
    ) -> StoreResult<Vec<BlobId>> {
        self.timed(
            "meta_delete_outbound",
            self.inner.delete_outbound(id, fence),
        )
        .await
    }

    fn queue_shards(&self) -> u32 {
        self.inner.queue_shards()
    }
    async fn due_outbound(
        &self,
        shard: u32,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<crate::QueueId>> {
        self.timed(
            "meta_due_outbound",
            self.inner.due_outbound(shard, now, limit),
        )
        .await
    }

    async fn outbound_queue_stats(&self, now: i64) -> StoreResult<crate::QueueStats> {
        self.timed(
            "meta_outbound_queue_stats",
            self.inner.outbound_queue_stats(now),
        )
        .await
    }
    async fn reschedule_outbound(&self, id: crate::QueueId, at: i64) -> StoreResult<usize> {
        self.timed(
            "meta_reschedule_outbound",
            self.inner.reschedule_outbound(id, at),
        )
        .await
    }

    async fn claim_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        seen: u64,
        claims: Vec<(String, i64)>,
    ) -> StoreResult<u64> {
        self.timed(
            "meta_claim_outbound_attempt",
            self.inner.claim_outbound_attempt(id, fence, seen, claims),
        )
        .await
    }

    async fn record_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        updates: Vec<(String, crate::RecipientUpdate)>,
        dsns: Vec<crate::NewOutbound>,
    ) -> StoreResult<Vec<crate::QueueId>> {
        self.timed(
            "meta_record_outbound_attempt",
            self.inner.record_outbound_attempt(id, fence, updates, dsns),
        )
        .await
    }

    async fn set_mailbox_noselect(
        &self,
        account: AccountId,
        id: MailboxId,
        noselect: bool,
    ) -> StoreResult<Vec<BlobId>> {
        self.timed(
            "meta_set_mailbox_noselect",
            self.inner.set_mailbox_noselect(account, id, noselect),
        )
        .await
    }

    async fn set_acl(
        &self,
        owner: AccountId,
        mailbox: MailboxId,
        identifier: &str,
        rights: &str,
    ) -> StoreResult<()> {
        self.timed(
            "meta_set_acl",
            self.inner.set_acl(owner, mailbox, identifier, rights),
        )
        .await
    }

    async fn get_acl(&self, mailbox: MailboxId) -> StoreResult<Vec<AclEntry>> {
        self.timed("meta_get_acl", self.inner.get_acl(mailbox))
            .await
    }

    async fn shared_with(&self, identifier: &str) -> StoreResult<Vec<SharedMailbox>> {
        self.timed("meta_shared_with", self.inner.shared_with(identifier))
            .await
    }

    async fn get_metadata(&self, scope: MetadataScope) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.timed("meta_get_metadata", self.inner.get_metadata(scope))
            .await
    }

    async fn set_metadata(
        &self,
        scope: MetadataScope,
        entries: Vec<(String, Option<Vec<u8>>)>,
        limits: MetadataLimits,
    ) -> StoreResult<()> {
        self.timed(
            "meta_set_metadata",
            self.inner.set_metadata(scope, entries, limits),
        )
        .await
    }

    async fn changes_with_messages(
        &self,
        mailbox: MailboxId,
        since: ModSeq,
    ) -> StoreResult<Vec<(Change, Option<MessageMeta>)>> {
        self.timed(
            "meta_changes_with_messages",
            self.inner.changes_with_messages(mailbox, since),
        )
        .await
    }
}
