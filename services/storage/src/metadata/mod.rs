//! The [`MetadataStore`] trait: everything about mail except the bodies.
//!
//! Every write method is one transaction: it either happens completely and durably before
//! the returned future resolves, or not at all.

mod fts_sqlite;
mod modseq_hint;
pub mod scylla;
pub mod sqlite;

use crate::types::*;
use crate::StoreResult;
use async_trait::async_trait;

/// Whether an append may take an account past its quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaPolicy {
    /// Refuse the whole append with [`crate::StoreError::QuotaExceeded`].
    Enforce,
    /// Accept and count the bytes (delivery already checked the quota at RCPT time and
    /// must not lose a message it accepted for several recipients).
    Allow,
}

/// What a conditional flag update ([`MetadataStore::store_flags_unchanged_since`]) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConditionalStore {
    /// The new state of each message whose flags changed.
    pub changed: Vec<MessageMeta>,
    /// Messages left alone because their stored MODSEQ was above the condition (RFC 7162
    /// §3.1.3: the server answers them with the `MODIFIED` response code).
    pub modified: Vec<Uid>,
}

/// One page of the orphan sweep ([`MetadataStore::orphaned_blobs`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrphanPage {
    /// Blobs that may be deleted once claimed.
    pub blobs: Vec<BlobId>,
    /// More may be waiting before the same time: ask again (after
    /// [`MetadataStore::orphans_swept`]).
    pub more: bool,
}

/// What an expunge removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expunged {
    pub uids: Vec<Uid>,
    pub modseq: Option<ModSeq>,
    /// Blobs that no message references any more; [`crate::blob::gc`] deletes them after a
    /// grace period.
    pub orphaned: Vec<BlobId>,
}

#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    // ---- domains ----
    async fn create_domain(&self, name: &str) -> StoreResult<Domain>;
    async fn get_domain(&self, name: &str) -> StoreResult<Option<Domain>>;
    async fn list_domains(&self) -> StoreResult<Vec<Domain>>;
    /// Fails with `Conflict` while the domain still has accounts or aliases.
    async fn delete_domain(&self, name: &str) -> StoreResult<()>;

    // ---- accounts ----
    /// Creates the account and its default mailboxes (INBOX, Sent, Drafts, Junk, Trash,
    /// Archive) in one transaction. `address` must be lowercase `local@domain` of an existing
    /// domain.
    async fn create_account(
        &self,
        address: &str,
        password_hash: &str,
        quota_bytes: u64,
    ) -> StoreResult<Account>;
    async fn get_account(&self, address: &str) -> StoreResult<Option<Account>>;
    async fn get_account_by_id(&self, id: AccountId) -> StoreResult<Option<Account>>;
    async fn list_accounts(&self, domain: Option<&str>) -> StoreResult<Vec<Account>>;
    /// Removes the account, its mailboxes, messages, subscriptions and the alias entries
    /// that point at it; returns blobs left unreferenced.
    async fn delete_account(&self, address: &str) -> StoreResult<Vec<BlobId>>;
    async fn set_password_hash(&self, address: &str, password_hash: &str) -> StoreResult<()>;
    async fn set_quota(&self, address: &str, quota_bytes: u64) -> StoreResult<()>;
    /// Replaces the account's settings (display name, suspension, protocols, owner mark).
    async fn set_account_settings(
        &self,
        address: &str,
        settings: &AccountSettings,
    ) -> StoreResult<()>;
    /// Marks the domain as managed by `managed_by` (or by nobody).
    async fn set_domain_managed_by(&self, name: &str, managed_by: Option<&str>) -> StoreResult<()>;
    /// Sets the domain's quota ([`Domain::quota_bytes`]); `NotFound` when it is not hosted.
    /// Only stored here: the provisioning layer checks the accounts' quotas against it.
    async fn set_domain_quota(&self, name: &str, quota_bytes: u64) -> StoreResult<()>;

    // ---- aliases ----
    /// `source` is `local@domain` or `@domain` (catch-all); its domain must be hosted.
    async fn create_alias(&self, source: &str, target: &str) -> StoreResult<()>;
    /// Removes one target, or every target of `source` when `target` is `None`.
    async fn delete_alias(&self, source: &str, target: Option<&str>) -> StoreResult<()>;
    async fn list_aliases(&self, domain: Option<&str>) -> StoreResult<Vec<Alias>>;
    /// Targets of exactly `source`.
    async fn alias_targets(&self, source: &str) -> StoreResult<Vec<String>>;

    // ---- mailboxes ----
    async fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> StoreResult<Mailbox>;
    async fn get_mailbox(&self, account: AccountId, name: &str) -> StoreResult<Option<Mailbox>>;
    async fn list_mailboxes(&self, account: AccountId) -> StoreResult<Vec<Mailbox>>;
    async fn rename_mailbox(
        &self,
        account: AccountId,
        id: MailboxId,
        new_name: &str,
    ) -> StoreResult<()>;
    /// Deletes the mailbox and its messages; returns blobs left unreferenced.
    async fn delete_mailbox(&self, account: AccountId, id: MailboxId) -> StoreResult<Vec<BlobId>>;

    // ---- messages ----
    /// Appends every message in one transaction; each gets the next UID and a new MODSEQ of
    /// its mailbox. Returns the assignments in input order.
    async fn append(
        &self,
        messages: Vec<NewMessage>,
        quota: QuotaPolicy,
    ) -> StoreResult<Vec<Appended>>;
    /// Messages of a mailbox in UID order, starting after `after` (exclusive), at most `limit`.
    async fn list_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<MessageMeta>>;
    async fn get_message(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<Option<MessageMeta>>;
    /// Updates flags of the given UIDs (missing UIDs are skipped); each changed message gets a
    /// new MODSEQ. Returns the new state of each changed message.
    async fn store_flags(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
    ) -> StoreResult<Vec<MessageMeta>>;
    /// Like [`Self::store_flags`], but only for messages whose MODSEQ, read inside the same
    /// transaction that writes the flags, is at most `unchanged_since` (CONDSTORE's
    /// `UNCHANGEDSINCE`, RFC 7162 §3.1.3). The comparison must happen in the store: a session
    /// comparing with the MODSEQ it last saw would overwrite a change another session made
    /// since, the lost update the modifier exists to prevent. Missing UIDs are skipped.
    async fn store_flags_unchanged_since(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: ModSeq,
    ) -> StoreResult<ConditionalStore>;
    /// Removes exactly the given UIDs, whatever their flags (POP3 `DELE`, which names
    /// messages, not flags).
    async fn expunge(&self, mailbox: MailboxId, uids: &[Uid]) -> StoreResult<Expunged>;
    /// Removes the messages that carry `\Deleted` *now*, deciding by the flags read inside
    /// the transaction that removes them (RFC 9051 §6.4.3 defines EXPUNGE by the current
    /// flags, not by what a session last saw: another session may have cleared the flag a
    /// moment ago). `only` limits it to those UIDs (UID EXPUNGE, RFC 4315).
    async fn expunge_deleted(
        &self,
        mailbox: MailboxId,
        only: Option<&[Uid]>,
    ) -> StoreResult<Expunged>;
    /// The latest change of every UID changed after `since`, in MODSEQ order.
    async fn changes_since(&self, mailbox: MailboxId, since: ModSeq) -> StoreResult<Vec<Change>>;
    /// [`changes_since`](Self::changes_since) with, for each change that is not an
    /// expunge, the message as it is now (`None` when it is gone since). What a view needs
    /// to advance; a backend that can join the two answers in one round trip instead of one
    /// per change.
    async fn changes_with_messages(
        &self,
        mailbox: MailboxId,
        since: ModSeq,
    ) -> StoreResult<Vec<(Change, Option<MessageMeta>)>> {
        let changes = self.changes_since(mailbox, since).await?;
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            let msg = match c.kind {
                ChangeKind::Expunged => None,
                _ => self.get_message(mailbox, c.uid).await?,
            };
            out.push((c, msg));
        }
        Ok(out)
    }

    /// Message count, unseen count and total size of a mailbox.
    async fn mailbox_usage(&self, mailbox: MailboxId) -> StoreResult<MailboxUsage>;
    /// Cached summaries (see [`NewMessage::summary`]) of the given UIDs that have one.
    async fn message_summaries(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Vec<u8>)>>;
    /// Stores a summary computed after the fact (messages appended without one).
    async fn set_message_summary(
        &self,
        mailbox: MailboxId,
        uid: Uid,
        summary: Vec<u8>,
    ) -> StoreResult<()>;
    /// Copies messages (same blob, flags and summary) to the end of `dest`, in UID order, in
    /// one transaction. Missing UIDs are skipped. Quota is enforced.
    async fn copy_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<Vec<Copied>>;
    /// Like [`Self::copy_messages`], then expunges the originals, in one transaction: a
    /// message is never in both mailboxes or in neither. Does not count against quota.
    async fn move_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<(Vec<Copied>, Expunged)>;

    /// Claims the `\Recent` messages of a mailbox (RFC 3501 §2.3.2): raises the mailbox's
    /// recent watermark to `up_to` when it is below, and returns the watermark as it was.
    /// The caller (the IMAP session that selected the mailbox and has seen UIDs up to
    /// `up_to`) treats the messages with UIDs above the returned value, up to `up_to`, as
    /// recent in its session. The compare-and-raise is atomic, so of several sessions (on
    /// any node) claiming at once, each message is recent in exactly one of them. `up_to`
    /// of `Uid(0)` only reads the watermark (EXAMINE, STATUS). A mailbox never claimed has
    /// watermark 0. `NotFound` when the mailbox does not exist.
    async fn claim_recent(&self, mailbox: MailboxId, up_to: Uid) -> StoreResult<Uid>;

    // ---- save dates (IMAP SAVEDATE, RFC 8514) ----
    /// When each of the given messages was saved into `mailbox` (Unix seconds): the time
    /// of the append, copy or move that put it there, recorded by the store inside that
    /// write (a copy or move gets a new save date, unlike its INTERNALDATE). `None` for a
    /// message stored before save dates were recorded. Missing UIDs are left out.
    async fn message_save_dates(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Option<i64>)>>;

    /// The W3C `traceparent` each of the given messages of `mailbox` was received under
    /// ([`crate::NewMessage::trace`]), for the messages that have one; a reader (IMAP
    /// FETCH, POP3 RETR) joins that trace. Asked only while tracing is on.
    async fn message_traces(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, String)>>;

    // ---- object ids (IMAP OBJECTID, RFC 8474; JMAP ids; see `crate::object_id`) ----
    /// The EMAILID and THREADID of each of the given messages of `mailbox`, assigned by
    /// [`Self::append`] and carried along by [`Self::copy_messages`] and
    /// [`Self::move_messages`]. Missing UIDs are left out.
    async fn message_object_ids(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, crate::MessageObjectIds)>>;
    /// The messages of `account` whose EMAILID (an `E...` id) or THREADID (a `T...` id)
    /// is `id`, in (mailbox, UID) order, at most `limit`; only those in `mailbox` when it
    /// is given. Empty for an id no message has (or of another kind).
    async fn find_by_object_id(
        &self,
        account: AccountId,
        mailbox: Option<MailboxId>,
        id: &str,
        limit: usize,
    ) -> StoreResult<Vec<(MailboxId, Uid)>>;

    // ---- full-text index (see `crate::text_index`) ----
    /// Records the texts of messages of `mailbox` for [`Self::search_text`], replacing
    /// what was recorded for them. Messages that no longer exist are skipped. A message
    /// appended (or copied from a message never indexed) is pending until this is called
    /// for it.
    async fn index_text(
        &self,
        mailbox: MailboxId,
        entries: Vec<(Uid, crate::MessageText)>,
    ) -> StoreResult<()>;
    /// The messages of `mailbox` with a text in one of `fields` of which `needle` is a
    /// substring (exact, code point for code point: fold case before indexing and
    /// searching), plus the messages the index cannot answer for. `None` when the index
    /// cannot answer this needle at all (shorter than
    /// [`crate::text_index::MIN_NEEDLE_CHARS`]); the caller then looks at every message.
    /// Copies and moves carry a message's entries along; expunge and mailbox deletion
    /// remove them.
    async fn search_text(
        &self,
        mailbox: MailboxId,
        fields: &[String],
        needle: &str,
    ) -> StoreResult<Option<crate::TextMatches>>;
    /// Messages of `mailbox` never indexed (pending, as opposed to indexed incompletely),
    /// with UIDs above `after`, in UID order, at most `limit`: the reindex walks them.
    async fn unindexed_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<Uid>>;

    // ---- subscriptions (names, which need not exist: RFC 9051 §6.3.7) ----
    async fn subscribe(&self, account: AccountId, name: &str) -> StoreResult<()>;
    async fn unsubscribe(&self, account: AccountId, name: &str) -> StoreResult<()>;
    async fn subscriptions(&self, account: AccountId) -> StoreResult<Vec<String>>;

    // ---- blob garbage collection ----
    //
    // A blob is content-addressed, so a new message may bring back bytes whose last
    // reference went a moment ago, and `BlobStore::put` of bytes already there does not
    // write them again. Three steps keep a body whose message was acknowledged from being
    // deleted under it:
    // 1. a writer *pins* the blob ([`Self::pin_blob`]) before it puts the bytes, and the
    //    append that references it takes the pin away;
    // 2. the sweep *claims* a blob ([`Self::claim_orphan`]) only when it is still
    //    unreferenced, orphaned for the whole grace period and not pinned within it, all
    //    decided in one transaction (an LWT on ScyllaDB), and the claim stays recorded while
    //    the bytes are deleted;
    // 3. a pin (and an append) of a claimed blob fails as temporarily unavailable, so the
    //    writer retries after [`Self::finish_orphan`] and then writes the bytes afresh.
    //
    // A backend may also list blobs that were stored and never referenced (a delivery that
    // failed after its put): ScyllaDB records every pin in a time-bucketed log the sweep
    // reads (see `scylla::blob_gc`), so what the sweep reads follows what was written
    // since its last run, not the size of the store.
    /// Up to `limit` blobs that may have been unreferenced since before `older_than` (Unix
    /// seconds), to claim one by one. Listing again without [`Self::orphans_swept`] in
    /// between lists the same blobs again.
    async fn orphaned_blobs(&self, older_than: i64, limit: usize) -> StoreResult<OrphanPage>;
    /// The sweep has claimed, or seen referenced, every blob listed since the last call: a
    /// backend that lists from a log moves past them. Nothing to do for one that lists
    /// orphan records (each claim removes its record).
    async fn orphans_swept(&self) -> StoreResult<()> {
        Ok(())
    }
    /// Claims `id` for deletion; true when the caller may delete the blob's bytes (and must
    /// then call [`Self::finish_orphan`]). False when a message references it again (the
    /// orphan record is dropped), when it has not been orphaned since before `older_than`,
    /// or when a writer pinned it at or after `older_than`. A blob already claimed by a
    /// sweep that never finished (it crashed) may be claimed again.
    async fn claim_orphan(&self, id: &BlobId, older_than: i64) -> StoreResult<bool>;
    /// Ends a claim once the bytes are deleted: the blob may be pinned and stored again.
    async fn finish_orphan(&self, id: &BlobId) -> StoreResult<()>;
    /// Records that a writer is about to store `id`'s bytes and reference them, so the
    /// sweep leaves them alone for a grace period. `Unavailable` while a sweep is deleting
    /// the blob: the writer must not acknowledge and should try again shortly.
    async fn pin_blob(&self, id: &BlobId) -> StoreResult<()>;

    // ---- DKIM keys (crate::dkim) ----
    /// Adds a signing key. `Conflict` when the domain already has a key with that selector.
    async fn add_dkim_key(&self, key: crate::DkimKey) -> StoreResult<()>;
    /// The domain's keys (any state), oldest first (by creation time, then selector).
    async fn dkim_keys(&self, domain: &str) -> StoreResult<Vec<crate::DkimKey>>;
    /// Moves a key to `state` as of `at` (Unix seconds); `NotFound` when there is no such key.
    async fn set_dkim_key_state(
        &self,
        domain: &str,
        selector: &str,
        state: crate::DkimKeyState,
        at: i64,
    ) -> StoreResult<()>;
    /// Deletes a key; `NotFound` when there is no such key.
    async fn delete_dkim_key(&self, domain: &str, selector: &str) -> StoreResult<()>;

    // ---- credentials ----
    /// Adds an app password. `Conflict` when the account already has one with that name or
    /// tag; `NotFound` when the account does not exist.
    async fn create_app_password(
        &self,
        account: AccountId,
        new: crate::NewAppPassword,
    ) -> StoreResult<crate::AppPassword>;
    /// The account's app passwords, by name.
    async fn list_app_passwords(&self, account: AccountId) -> StoreResult<Vec<crate::AppPassword>>;
    /// The account's app password with lookup tag `tag`.
    async fn find_app_password(
        &self,
        account: AccountId,
        tag: &str,
    ) -> StoreResult<Option<crate::AppPassword>>;
    /// Deletes the app password called `name`; `NotFound` when there is none.
    async fn revoke_app_password(&self, account: AccountId, name: &str) -> StoreResult<()>;
    /// Records a successful login with the app password at `at` (Unix seconds).
    async fn touch_app_password(&self, id: crate::AppPasswordId, at: i64) -> StoreResult<()>;
    /// Sets (`Some`) or removes (`None`) the account's TOTP secret.
    async fn set_totp_secret(
        &self,
        account: AccountId,
        secret: Option<crate::TotpSecret>,
    ) -> StoreResult<()>;
    async fn totp_secret(&self, account: AccountId) -> StoreResult<Option<crate::TotpSecret>>;
    /// Records that the account's TOTP code for time step `step` was just accepted, if no
    /// code of that step or a later one was accepted before; true when recorded. One
    /// compare-and-set, so two logins racing with the same code cannot both pass: a code is
    /// good once (RFC 6238 §5.2), however long its window. False also when the account has
    /// no TOTP secret.
    async fn accept_totp_step(&self, account: AccountId, step: u64) -> StoreResult<bool>;
    /// Lets the account send as `address` (`local@domain`, or `@domain` for any address of a
    /// domain) beyond its own address and the aliases that deliver to it. Idempotent.
    async fn grant_sender(&self, account: AccountId, address: &str) -> StoreResult<()>;
    /// Removes a grant; `NotFound` when there was none.
    async fn revoke_sender(&self, account: AccountId, address: &str) -> StoreResult<()>;
    /// The account's sender grants, sorted.
    async fn sender_grants(&self, account: AccountId) -> StoreResult<Vec<String>>;

    // ---- keyed records (crate::data) ----
    /// The record `kind`/`key` of `scope`; `None` when there is none or it has expired.
    async fn get_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<Option<crate::Datum>>;
    /// Writes the record when `expect` holds (an expired record counts as absent) and
    /// returns its new version; `Conflict` when it does not hold. `expires_at` in Unix
    /// seconds, `None` to keep it until deleted.
    async fn put_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
        value: Vec<u8>,
        expires_at: Option<i64>,
        expect: crate::Expect,
    ) -> StoreResult<u64>;
    /// Deletes the record; true when there was one.
    async fn delete_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<bool>;
    /// The unexpired records of `kind`, in key order, at most `limit`.
    async fn list_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, crate::Datum)>>;

    // ---- outbound queue ----
    /// Queues a message for remote recipients in one transaction, taking a reference on its
    /// blob so the orphan sweep keeps it. Every recipient starts `Queued` with its first
    /// attempt at `created_at`.
    async fn enqueue_outbound(
        &self,
        msg: crate::NewOutbound,
    ) -> StoreResult<crate::OutboundMessage>;
    async fn get_outbound(&self, id: crate::QueueId)
        -> StoreResult<Option<crate::OutboundMessage>>;
    /// Queue entries with an id greater than `after`, in id order, at most `limit`.
    async fn list_outbound(
        &self,
        after: crate::QueueId,
        limit: usize,
    ) -> StoreResult<Vec<crate::OutboundMessage>>;
    /// Records an attempt for one recipient: its new state, next attempt and last error;
    /// `attempts` grows by one. `NotFound` when the entry or recipient does not exist;
    /// `Conflict` when `update.fence` is older than a token that already wrote to the entry.
    async fn update_outbound_recipient(
        &self,
        id: crate::QueueId,
        address: &str,
        update: crate::RecipientUpdate,
    ) -> StoreResult<()>;
    /// Claims an attempt before it starts: each listed recipient that is still `Queued`
    /// gets `attempts + 1` and its next attempt moved to the given time (the backoff a
    /// temporary failure would get), so a worker that crashes mid-attempt neither loses
    /// the count nor lets the entry come due again at once. Recipients not `Queued` are
    /// left alone. One transaction; `NotFound` when the entry or a listed recipient does
    /// not exist; `fence` as in [`crate::RecipientUpdate::fence`].
    ///
    /// The claim is a compare-and-set on the entry's version: `seen` is
    /// [`crate::OutboundMessage::version`] as the worker read the entry (or as its previous
    /// claim of the same attempt returned it), and the claim applies only if no other claim
    /// and no recorded outcome came in between; otherwise `Conflict` and nothing is
    /// written. Returns the new version. Two workers that both believe they hold the
    /// entry's lease (a coordinator that went back in time hands one token out twice) thus
    /// cannot both claim, and so cannot both send, the same attempt, nor can a worker send
    /// on a read that an outcome recorded since has made stale. Every
    /// [`Self::record_outbound_attempt`] and [`Self::update_outbound_recipient`] changes
    /// the version.
    async fn claim_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        seen: u64,
        claims: Vec<(String, i64)>,
    ) -> StoreResult<u64>;
    /// Records every outcome of one attempt and queues its DSNs, all in one transaction:
    /// either every recipient state and every DSN entry is written, or nothing is. Each
    /// update sets state, next attempt, last error and (sticky) `delay_warned`; `attempts`
    /// is not counted again, [`Self::claim_outbound_attempt`] counted it. The `fence`
    /// argument is checked once for the whole write (each update's own `fence` is not
    /// consulted). `NotFound` when the entry or a recipient does not exist, `Conflict` on
    /// a stale fence; in both cases nothing is written. Returns the DSN entries' ids in
    /// input order; each DSN's blob must be stored (and pinned) already.
    async fn record_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        updates: Vec<(String, crate::RecipientUpdate)>,
        dsns: Vec<crate::NewOutbound>,
    ) -> StoreResult<Vec<crate::QueueId>>;
    /// Removes an entry; returns its blob if no longer referenced (for the orphan sweep).
    /// `fence` as in [`crate::RecipientUpdate::fence`].
    async fn delete_outbound(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
    ) -> StoreResult<Vec<BlobId>>;

    // ---- outbound delivery ----
    /// How many shards the queue's due index is split into. Delivery workers lease shards
    /// (`delivery:shard:<n>` in the coordinator) and poll only the ones they hold, so a
    /// queue shared by many nodes is read in parallel and no two nodes read the same
    /// entries. One for a store whose single index is cheap to read from the head (SQLite).
    fn queue_shards(&self) -> u32 {
        1
    }
    /// Ids of entries in due-index shard `shard` (below [`Self::queue_shards`]) with at
    /// least one `Queued` recipient whose next attempt is at or before `now`, oldest attempt
    /// first, at most `limit`. Delivery workers poll this; the answer is a hint, since
    /// another worker may take an entry first (leases decide).
    async fn due_outbound(
        &self,
        shard: u32,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<crate::QueueId>>;
    /// The queue's depth and age by state at `now` (the `mailfleet_queue_*` gauges, read
    /// at each scrape). This default lists the whole queue; a backend that can count in
    /// one query does.
    async fn outbound_queue_stats(&self, now: i64) -> StoreResult<crate::QueueStats> {
        let mut stats = crate::QueueStats::default();
        let mut after = crate::QueueId(0);
        loop {
            let page = self.list_outbound(after, 500).await?;
            let Some(last) = page.last() else {
                return Ok(stats);
            };
            after = last.id;
            for m in &page {
                let next = m
                    .recipients
                    .iter()
                    .filter(|r| r.state == crate::RecipientState::Queued)
                    .map(|r| r.next_attempt)
                    .min();
                stats.add(now, next, m.created_at);
            }
        }
    }
    /// Moves the next attempt of every `Queued` recipient of an entry to `at` (the admin's
    /// "retry now"), without counting an attempt. Returns how many recipients moved;
    /// `NotFound` when the entry does not exist.
    async fn reschedule_outbound(&self, id: crate::QueueId, at: i64) -> StoreResult<usize>;

    // ---- mailbox placeholders, access control lists, metadata (IMAP ACL and METADATA) ----
    /// Turns a mailbox into a `\Noselect` placeholder (`true`): its messages, change log,
    /// ACL and metadata go, as DELETE of a mailbox with children asks (RFC 3501 §6.3.4);
    /// returns blobs left unreferenced. `false` makes a placeholder a mailbox again (CREATE
    /// of its name), with a new UIDVALIDITY. `NotFound` when the account has no such
    /// mailbox.
    async fn set_mailbox_noselect(
        &self,
        account: AccountId,
        id: MailboxId,
        noselect: bool,
    ) -> StoreResult<Vec<BlobId>>;
    /// Sets the rights of `identifier` on a mailbox of `owner`, replacing what it had;
    /// empty `rights` removes the entry. Kept in both directions (by mailbox and by
    /// identifier) so [`Self::shared_with`] is one lookup. `NotFound` when the owner has no
    /// such mailbox.
    async fn set_acl(
        &self,
        owner: AccountId,
        mailbox: MailboxId,
        identifier: &str,
        rights: &str,
    ) -> StoreResult<()>;
    /// The ACL of a mailbox, by identifier.
    async fn get_acl(&self, mailbox: MailboxId) -> StoreResult<Vec<AclEntry>>;
    /// Every mailbox on which `identifier` has an entry, with its rights.
    async fn shared_with(&self, identifier: &str) -> StoreResult<Vec<SharedMailbox>>;
    /// The metadata entries of a scope, by name.
    async fn get_metadata(&self, scope: MetadataScope) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// Sets (`Some`) or removes (`None`) entries of a scope, all or none. `QuotaExceeded`
    /// (and nothing written) when the scope would hold more than the limits allow.
    async fn set_metadata(
        &self,
        scope: MetadataScope,
        entries: Vec<(String, Option<Vec<u8>>)>,
        limits: MetadataLimits,
    ) -> StoreResult<()>;
}
