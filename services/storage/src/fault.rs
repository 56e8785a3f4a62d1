//! A [`MetadataStore`] that delegates to a real one and fails a chosen call, for tests of
//! what a failed read or write leaves behind (a refresh that fails part-way, an outbound
//! record that fails). One copy here, behind the `testing` feature, so every test that
//! needs it gets every trait method delegated: a new store method is added once.

use crate::metadata::{Expunged, MetadataStore, QuotaPolicy};
use crate::*;
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

/// Delegates to `inner`, failing the `n`th call (1-based) of the armed method.
pub struct FailingMeta {
    pub inner: Arc<dyn MetadataStore>,
    pub armed: Mutex<Option<(&'static str, usize)>>,
}

impl FailingMeta {
    /// Wraps `inner`; nothing fails until [`FailingMeta::arm`].
    pub fn new(inner: Arc<dyn MetadataStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            armed: Mutex::new(None),
        })
    }

    /// Makes the `nth` next call (1-based) of `method` fail with `StoreError::Unavailable`.
    pub fn arm(&self, method: &'static str, nth: usize) {
        *self.armed.lock().expect("lock") = Some((method, nth));
    }

    fn check(&self, method: &str) -> StoreResult<()> {
        let mut armed = self.armed.lock().expect("lock");
        if let Some((m, n)) = armed.as_mut() {
            if *m == method {
                *n -= 1;
                if *n == 0 {
                    *armed = None;
                    return Err(StoreError::Unavailable(format!(
                        "injected failure of {method}"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl MetadataStore for FailingMeta {
    async fn create_domain(&self, name: &str) -> StoreResult<Domain> {
        self.check("create_domain")?;
        self.inner.create_domain(name).await
    }
    async fn get_domain(&self, name: &str) -> StoreResult<Option<Domain>> {
        self.check("get_domain")?;
        self.inner.get_domain(name).await
    }
    async fn list_domains(&self) -> StoreResult<Vec<Domain>> {
        self.check("list_domains")?;
        self.inner.list_domains().await
    }
    async fn delete_domain(&self, name: &str) -> StoreResult<()> {
        self.check("delete_domain")?;
        self.inner.delete_domain(name).await
    }
    async fn create_account(
        &self,
        address: &str,
        password_hash: &str,
        quota_bytes: u64,
    ) -> StoreResult<Account> {
        self.check("create_account")?;
        self.inner
            .create_account(address, password_hash, quota_bytes)
            .await
    }
    async fn get_account(&self, address: &str) -> StoreResult<Option<Account>> {
        self.check("get_account")?;
        self.inner.get_account(address).await
    }
    async fn get_account_by_id(&self, id: AccountId) -> StoreResult<Option<Account>> {
        self.check("get_account_by_id")?;
        self.inner.get_account_by_id(id).await
    }
    async fn list_accounts(&self, domain: Option<&str>) -> StoreResult<Vec<Account>> {
        self.check("list_accounts")?;
        self.inner.list_accounts(domain).await
    }
    async fn delete_account(&self, address: &str) -> StoreResult<Vec<BlobId>> {
        self.check("delete_account")?;
        self.inner.delete_account(address).await
    }
    async fn set_password_hash(&self, address: &str, password_hash: &str) -> StoreResult<()> {
        self.check("set_password_hash")?;
        self.inner.set_password_hash(address, password_hash).await
    }
    async fn set_quota(&self, address: &str, quota_bytes: u64) -> StoreResult<()> {
        self.check("set_quota")?;
        self.inner.set_quota(address, quota_bytes).await
    }
    async fn set_account_settings(
        &self,
        address: &str,
        settings: &crate::AccountSettings,
    ) -> StoreResult<()> {
        self.check("set_account_settings")?;
        self.inner.set_account_settings(address, settings).await
    }
    async fn set_domain_managed_by(&self, name: &str, managed_by: Option<&str>) -> StoreResult<()> {
        self.check("set_domain_managed_by")?;
        self.inner.set_domain_managed_by(name, managed_by).await
    }
    async fn set_domain_quota(&self, name: &str, quota_bytes: u64) -> StoreResult<()> {
        self.check("set_domain_quota")?;
        self.inner.set_domain_quota(name, quota_bytes).await
    }
    async fn create_alias(&self, source: &str, target: &str) -> StoreResult<()> {
        self.check("create_alias")?;
        self.inner.create_alias(source, target).await
    }
    async fn delete_alias(&self, source: &str, target: Option<&str>) -> StoreResult<()> {
        self.check("delete_alias")?;
        self.inner.delete_alias(source, target).await
    }
    async fn list_aliases(&self, domain: Option<&str>) -> StoreResult<Vec<Alias>> {
        self.check("list_aliases")?;
        self.inner.list_aliases(domain).await
    }
    async fn alias_targets(&self, source: &str) -> StoreResult<Vec<String>> {
        self.check("alias_targets")?;
        self.inner.alias_targets(source).await
    }
    async fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> StoreResult<Mailbox> {
        self.check("create_mailbox")?;
        self.inner.create_mailbox(account, name, special_use).await
    }
    async fn get_mailbox(&self, account: AccountId, name: &str) -> StoreResult<Option<Mailbox>> {
        self.check("get_mailbox")?;
        self.inner.get_mailbox(account, name).await
    }
    async fn list_mailboxes(&self, account: AccountId) -> StoreResult<Vec<Mailbox>> {
        self.check("list_mailboxes")?;
        self.inner.list_mailboxes(account).await
    }
    async fn rename_mailbox(
        &self,
        account: AccountId,
        id: MailboxId,
        new_name: &str,
    ) -> StoreResult<()> {
        self.check("rename_mailbox")?;
        self.inner.rename_mailbox(account, id, new_name).await
    }
    async fn delete_mailbox(&self, account: AccountId, id: MailboxId) -> StoreResult<Vec<BlobId>> {
        self.check("delete_mailbox")?;
        self.inner.delete_mailbox(account, id).await
    }
    async fn append(
        &self,
        messages: Vec<NewMessage>,
        quota: QuotaPolicy,
    ) -> StoreResult<Vec<Appended>> {
        self.check("append")?;
        self.inner.append(messages, quota).await
    }
    async fn list_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<MessageMeta>> {
        self.check("list_messages")?;
        self.inner.list_messages(mailbox, after, limit).await
    }
    async fn get_message(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<Option<MessageMeta>> {
        self.check("get_message")?;
        self.inner.get_message(mailbox, uid).await
    }
    async fn store_flags(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
    ) -> StoreResult<Vec<MessageMeta>> {
        self.check("store_flags")?;
        self.inner.store_flags(mailbox, uids, op, flags).await
    }
    async fn store_flags_unchanged_since(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: ModSeq,
    ) -> StoreResult<crate::metadata::ConditionalStore> {
        self.check("store_flags")?;
        self.inner
            .store_flags_unchanged_since(mailbox, uids, op, flags, unchanged_since)
            .await
    }
    async fn expunge(&self, mailbox: MailboxId, uids: &[Uid]) -> StoreResult<Expunged> {
        self.check("expunge")?;
        self.inner.expunge(mailbox, uids).await
    }
    async fn expunge_deleted(
        &self,
        mailbox: MailboxId,
        only: Option<&[Uid]>,
    ) -> StoreResult<Expunged> {
        self.check("expunge")?;
        self.inner.expunge_deleted(mailbox, only).await
    }
    async fn changes_since(&self, mailbox: MailboxId, since: ModSeq) -> StoreResult<Vec<Change>> {
        self.check("changes_since")?;
        self.inner.changes_since(mailbox, since).await
    }
    async fn mailbox_usage(&self, mailbox: MailboxId) -> StoreResult<MailboxUsage> {
        self.check("mailbox_usage")?;
        self.inner.mailbox_usage(mailbox).await
    }
    async fn message_summaries(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Vec<u8>)>> {
        self.check("message_summaries")?;
        self.inner.message_summaries(mailbox, uids).await
    }
    async fn set_message_summary(
        &self,
        mailbox: MailboxId,
        uid: Uid,
        summary: Vec<u8>,
    ) -> StoreResult<()> {
        self.check("set_message_summary")?;
        self.inner.set_message_summary(mailbox, uid, summary).await
    }
    async fn message_save_dates(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Option<i64>)>> {
        self.check("message_save_dates")?;
        self.inner.message_save_dates(mailbox, uids).await
    }
    async fn message_object_ids(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, crate::MessageObjectIds)>> {
        self.check("message_object_ids")?;
        self.inner.message_object_ids(mailbox, uids).await
    }
    async fn message_traces(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, String)>> {
        self.check("message_traces")?;
        self.inner.message_traces(mailbox, uids).await
    }
    async fn find_by_object_id(
        &self,
        account: AccountId,
        mailbox: Option<MailboxId>,
        id: &str,
        limit: usize,
    ) -> StoreResult<Vec<(MailboxId, Uid)>> {
        self.check("find_by_object_id")?;
        self.inner
            .find_by_object_id(account, mailbox, id, limit)
            .await
    }
    async fn copy_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<Vec<Copied>> {
        self.check("copy_messages")?;
        self.inner.copy_messages(account, source, uids, dest).await
    }
    async fn move_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<(Vec<Copied>, Expunged)> {
        self.check("move_messages")?;
        self.inner.move_messages(account, source, uids, dest).await
    }
    async fn claim_recent(&self, mailbox: MailboxId, up_to: Uid) -> StoreResult<Uid> {
        self.check("claim_recent")?;
        self.inner.claim_recent(mailbox, up_to).await
    }
    async fn index_text(
        &self,
        mailbox: MailboxId,
        entries: Vec<(Uid, MessageText)>,
    ) -> StoreResult<()> {
        self.check("index_text")?;
        self.inner.index_text(mailbox, entries).await
    }
    async fn search_text(
        &self,
        mailbox: MailboxId,
        fields: &[String],
        needle: &str,
    ) -> StoreResult<Option<TextMatches>> {
        self.check("search_text")?;
        self.inner.search_text(mailbox, fields, needle).await
    }
    async fn unindexed_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<Uid>> {
        self.check("unindexed_messages")?;
        self.inner.unindexed_messages(mailbox, after, limit).await
    }
    async fn subscribe(&self, account: AccountId, name: &str) -> StoreResult<()> {
        self.check("subscribe")?;
        self.inner.subscribe(account, name).await
    }
    async fn unsubscribe(&self, account: AccountId, name: &str) -> StoreResult<()> {
        self.check("unsubscribe")?;
        self.inner.unsubscribe(account, name).await
    }
    async fn subscriptions(&self, account: AccountId) -> StoreResult<Vec<String>> {
        self.check("subscriptions")?;
        self.inner.subscriptions(account).await
    }
    async fn orphans_swept(&self) -> StoreResult<()> {
        self.check("orphans_swept")?;
        self.inner.orphans_swept().await
    }
    async fn orphaned_blobs(
        &self,
        older_than: i64,
        limit: usize,
    ) -> StoreResult<crate::metadata::OrphanPage> {
        self.check("orphaned_blobs")?;
        self.inner.orphaned_blobs(older_than, limit).await
    }
    async fn claim_orphan(&self, id: &BlobId, older_than: i64) -> StoreResult<bool> {
        self.check("claim_orphan")?;
        self.inner.claim_orphan(id, older_than).await
    }
    async fn finish_orphan(&self, id: &BlobId) -> StoreResult<()> {
        self.check("finish_orphan")?;
        self.inner.finish_orphan(id).await
    }
    async fn pin_blob(&self, id: &BlobId) -> StoreResult<()> {
        self.check("pin_blob")?;
        self.inner.pin_blob(id).await
    }
    async fn create_app_password(
        &self,
        account: AccountId,
        new: crate::NewAppPassword,
    ) -> StoreResult<crate::AppPassword> {
        self.check("create_app_password")?;
        self.inner.create_app_password(account, new).await
    }
    async fn list_app_passwords(&self, account: AccountId) -> StoreResult<Vec<crate::AppPassword>> {
        self.check("list_app_passwords")?;
        self.inner.list_app_passwords(account).await
    }
    async fn find_app_password(
        &self,
        account: AccountId,
        tag: &str,
    ) -> StoreResult<Option<crate::AppPassword>> {
        self.check("find_app_password")?;
        self.inner.find_app_password(account, tag).await
    }
    async fn add_dkim_key(&self, key: crate::DkimKey) -> StoreResult<()> {
        self.check("add_dkim_key")?;
        self.inner.add_dkim_key(key).await
    }
    async fn dkim_keys(&self, domain: &str) -> StoreResult<Vec<crate::DkimKey>> {
        self.check("dkim_keys")?;
        self.inner.dkim_keys(domain).await
    }
    async fn set_dkim_key_state(
        &self,
        domain: &str,
        selector: &str,
        state: crate::DkimKeyState,
        at: i64,
    ) -> StoreResult<()> {
        self.check("set_dkim_key_state")?;
        self.inner
            .set_dkim_key_state(domain, selector, state, at)
            .await
    }
    async fn delete_dkim_key(&self, domain: &str, selector: &str) -> StoreResult<()> {
        self.check("delete_dkim_key")?;
        self.inner.delete_dkim_key(domain, selector).await
    }
    async fn revoke_app_password(&self, account: AccountId, name: &str) -> StoreResult<()> {
        self.check("revoke_app_password")?;
        self.inner.revoke_app_password(account, name).await
    }
    async fn touch_app_password(&self, id: crate::AppPasswordId, at: i64) -> StoreResult<()> {
        self.check("touch_app_password")?;
        self.inner.touch_app_password(id, at).await
    }
    async fn get_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<Option<crate::Datum>> {
        self.check("get_data")?;
        self.inner.get_data(scope, kind, key).await
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
        self.check("put_data")?;
        self.inner
            .put_data(scope, kind, key, value, expires_at, expect)
            .await
    }
    async fn delete_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<bool> {
        self.check("delete_data")?;
        self.inner.delete_data(scope, kind, key).await
    }
    async fn list_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, crate::Datum)>> {
        self.check("list_data")?;
        self.inner.list_data(scope, kind, limit).await
    }
    async fn set_totp_secret(
        &self,
        account: AccountId,
        secret: Option<crate::TotpSecret>,
    ) -> StoreResult<()> {
        self.check("set_totp_secret")?;
        self.inner.set_totp_secret(account, secret).await
    }
    async fn totp_secret(&self, account: AccountId) -> StoreResult<Option<crate::TotpSecret>> {
        self.check("totp_secret")?;
        self.inner.totp_secret(account).await
    }
    async fn accept_totp_step(&self, account: AccountId, step: u64) -> StoreResult<bool> {
        self.check("accept_totp_step")?;
        self.inner.accept_totp_step(account, step).await
    }
    async fn grant_sender(&self, account: AccountId, address: &str) -> StoreResult<()> {
        self.check("grant_sender")?;
        self.inner.grant_sender(account, address).await
    }
    async fn revoke_sender(&self, account: AccountId, address: &str) -> StoreResult<()> {
        self.check("revoke_sender")?;
        self.inner.revoke_sender(account, address).await
    }
    async fn sender_grants(&self, account: AccountId) -> StoreResult<Vec<String>> {
        self.check("sender_grants")?;
        self.inner.sender_grants(account).await
    }
    async fn enqueue_outbound(
        &self,
        msg: crate::NewOutbound,
    ) -> StoreResult<crate::OutboundMessage> {
        self.check("enqueue_outbound")?;
        self.inner.enqueue_outbound(msg).await
    }
    async fn get_outbound(
        &self,
        id: crate::QueueId,
    ) -> StoreResult<Option<crate::OutboundMessage>> {
        self.check("get_outbound")?;
        self.inner.get_outbound(id).await
    }
    async fn list_outbound(
        &self,
        after: crate::QueueId,
        limit: usize,
    ) -> StoreResult<Vec<crate::OutboundMessage>> {
        self.check("list_outbound")?;
        self.inner.list_outbound(after, limit).await
    }
    async fn update_outbound_recipient(
        &self,
        id: crate::QueueId,
        address: &str,
        update: crate::RecipientUpdate,
    ) -> StoreResult<()> {
        self.check("update_outbound_recipient")?;
        self.inner
            .update_outbound_recipient(id, address, update)
            .await
    }
    async fn delete_outbound(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
    ) -> StoreResult<Vec<BlobId>> {
        self.check("delete_outbound")?;
        self.inner.delete_outbound(id, fence).await
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
        self.check("due_outbound")?;
        self.inner.due_outbound(shard, now, limit).await
    }
    async fn outbound_queue_stats(&self, now: i64) -> StoreResult<crate::QueueStats> {
        self.check("outbound_queue_stats")?;
        self.inner.outbound_queue_stats(now).await
    }
    async fn reschedule_outbound(&self, id: crate::QueueId, at: i64) -> StoreResult<usize> {
        self.check("reschedule_outbound")?;
        self.inner.reschedule_outbound(id, at).await
    }
    async fn claim_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        seen: u64,
        claims: Vec<(String, i64)>,
    ) -> StoreResult<u64> {
        self.check("claim_outbound_attempt")?;
        self.inner
            .claim_outbound_attempt(id, fence, seen, claims)
            .await
    }
    async fn record_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        updates: Vec<(String, crate::RecipientUpdate)>,
        dsns: Vec<crate::NewOutbound>,
    ) -> StoreResult<Vec<crate::QueueId>> {
        self.check("record_outbound_attempt")?;
        self.inner
            .record_outbound_attempt(id, fence, updates, dsns)
            .await
    }

    async fn set_mailbox_noselect(
        &self,
        account: AccountId,
        id: MailboxId,
        noselect: bool,
    ) -> StoreResult<Vec<BlobId>> {
        self.check("set_mailbox_noselect")?;
        self.inner.set_mailbox_noselect(account, id, noselect).await
    }
    async fn set_acl(
        &self,
        owner: AccountId,
        mailbox: MailboxId,
        identifier: &str,
        rights: &str,
    ) -> StoreResult<()> {
        self.check("set_acl")?;
        self.inner.set_acl(owner, mailbox, identifier, rights).await
    }
    async fn get_acl(&self, mailbox: MailboxId) -> StoreResult<Vec<AclEntry>> {
        self.check("get_acl")?;
        self.inner.get_acl(mailbox).await
    }
    async fn shared_with(&self, identifier: &str) -> StoreResult<Vec<SharedMailbox>> {
        self.check("shared_with")?;
        self.inner.shared_with(identifier).await
    }
    async fn get_metadata(&self, scope: MetadataScope) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.check("get_metadata")?;
        self.inner.get_metadata(scope).await
    }
    async fn set_metadata(
        &self,
        scope: MetadataScope,
        entries: Vec<(String, Option<Vec<u8>>)>,
        limits: MetadataLimits,
    ) -> StoreResult<()> {
        self.check("set_metadata")?;
        self.inner.set_metadata(scope, entries, limits).await
    }
}
