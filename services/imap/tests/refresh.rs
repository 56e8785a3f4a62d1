//! A refresh of the selected mailbox that fails part-way (issue 9 item 16) must leave the
//! session's view exactly as the client knows it. The store is wrapped so a chosen call
//! fails; everything else goes to the real embedded store.

use async_trait::async_trait;
use mailfleet_core::shutdown::Shutdown;
use mailfleet_imap::{serve_connection, ConnLimits, ImapConfig, LoginError, LoginService, Session};
use mailfleet_storage::metadata::{Expunged, QuotaPolicy};
use mailfleet_storage::*;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Delegates to `inner`, failing the `n`th call (1-based) of the armed method.
struct FailingMeta {
    inner: Arc<dyn MetadataStore>,
    armed: Mutex<Option<(&'static str, usize)>>,
}

impl FailingMeta {
    fn arm(&self, method: &'static str, nth: usize) {
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
    ) -> StoreResult<mailfleet_storage::metadata::ConditionalStore> {
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
    async fn orphaned_blobs(&self, older_than: i64, limit: usize) -> StoreResult<Vec<BlobId>> {
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
    async fn revoke_app_password(&self, account: AccountId, name: &str) -> StoreResult<()> {
        self.check("revoke_app_password")?;
        self.inner.revoke_app_password(account, name).await
    }
    async fn touch_app_password(&self, id: crate::AppPasswordId, at: i64) -> StoreResult<()> {
        self.check("touch_app_password")?;
        self.inner.touch_app_password(id, at).await
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
    async fn due_outbound(&self, now: i64, limit: usize) -> StoreResult<Vec<crate::QueueId>> {
        self.check("due_outbound")?;
        self.inner.due_outbound(now, limit).await
    }
    async fn reschedule_outbound(&self, id: crate::QueueId, at: i64) -> StoreResult<usize> {
        self.check("reschedule_outbound")?;
        self.inner.reschedule_outbound(id, at).await
    }
    async fn claim_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        claims: Vec<(String, i64)>,
    ) -> StoreResult<()> {
        self.check("claim_outbound_attempt")?;
        self.inner.claim_outbound_attempt(id, fence, claims).await
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
}

/// Accepts any password for an existing account: login is not what is tested here.
struct AnyPassword(Arc<dyn MetadataStore>);

#[async_trait]
impl LoginService for AnyPassword {
    async fn login(&self, user: &str, _pass: &str, _ip: IpAddr) -> Result<Account, LoginError> {
        self.0
            .get_account(user)
            .await
            .map_err(|_| LoginError::Unavailable)?
            .ok_or(LoginError::Invalid)
    }
}

async fn append(stores: &Stores, account: AccountId, mailbox: MailboxId, i: u32) {
    let raw = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
    let blob = stores
        .blobs
        .put(bytes::Bytes::from(raw.clone()))
        .await
        .expect("blob");
    stores
        .meta
        .append(
            vec![NewMessage {
                account,
                mailbox,
                blob,
                size: raw.len() as u64,
                internal_date: 1_700_000_000,
                flags: Flags::default(),
                summary: None,
            }],
            QuotaPolicy::Allow,
        )
        .await
        .expect("append");
}

async fn lines_until(io: &mut DuplexStream, buf: &mut Vec<u8>, tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        while let Some(p) = buf.iter().position(|b| *b == b'\n') {
            let l: Vec<u8> = buf.drain(..=p).collect();
            let l = String::from_utf8_lossy(&l).trim_end().to_string();
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed; got {out:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_fails_part_way_leaves_the_view_as_the_client_knows_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let real = mailfleet_storage::embedded::open(dir.path(), 64).expect("stores");
    let failing = Arc::new(FailingMeta {
        inner: real.meta.clone(),
        armed: Mutex::new(None),
    });
    let stores = Stores {
        blobs: real.blobs.clone(),
        meta: failing.clone(),
        coord: real.coord.clone(),
    };
    stores
        .meta
        .create_domain("example.test")
        .await
        .expect("domain");
    let acct = stores
        .meta
        .create_account("alice@example.test", "x", 0)
        .await
        .expect("account");
    let inbox = stores
        .meta
        .get_mailbox(acct.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    for i in 1..=3 {
        append(&stores, acct.id, inbox.id, i).await;
    }
    let (mut io, server) = tokio::io::duplex(1 << 16);
    let cfg = Arc::new(ImapConfig {
        hostname: "mx.example.test".into(),
        starttls: false,
        plaintext_auth_without_tls: true,
        max_message_size: 4096,
        max_failed_logins: 3,
        idle_timeout: Duration::from_secs(1800),
        user_sessions: mailfleet_imap::UserSessions::new(2),
    });
    let session = Session::new(
        cfg,
        stores.clone(),
        Arc::new(AnyPassword(stores.meta.clone())),
        "192.0.2.9".parse().expect("ip"),
        false,
    );
    let limits = ConnLimits {
        max_literal: 4096,
        max_command: 4096 + 8192,
        max_errors: 5,
        tls_handshake_timeout: Duration::from_secs(5),
        idle_recheck: Duration::from_secs(60),
    };
    tokio::spawn(serve_connection(
        Box::new(server),
        session,
        limits,
        None,
        Shutdown::never(),
    ));
    let mut buf = Vec::new();
    io.write_all(b"a LOGIN alice@example.test x\r\nb SELECT INBOX\r\n")
        .await
        .expect("write");
    let r = lines_until(&mut io, &mut buf, "b").await;
    assert!(r.contains(&"* 3 EXISTS".to_string()), "{r:?}");

    // Two messages arrive; reading the second fails during the refresh.
    append(&stores, acct.id, inbox.id, 4).await;
    append(&stores, acct.id, inbox.id, 5).await;
    failing.arm("get_message", 2);
    io.write_all(b"c NOOP\r\n").await.expect("write");
    let r = lines_until(&mut io, &mut buf, "c").await;
    assert!(r.last().expect("line").starts_with("c NO"), "{r:?}");
    assert!(!r.iter().any(|l| l.ends_with("EXISTS")), "{r:?}");

    // The client was told of 3 messages: message 4 must not exist for it yet.
    io.write_all(b"d FETCH 4 (UID)\r\n").await.expect("write");
    let r = lines_until(&mut io, &mut buf, "d").await;
    assert!(r.last().expect("line").starts_with("d BAD"), "{r:?}");

    // The next refresh reports both.
    io.write_all(b"e NOOP\r\n").await.expect("write");
    let r = lines_until(&mut io, &mut buf, "e").await;
    assert!(r.contains(&"* 5 EXISTS".to_string()), "{r:?}");
    io.write_all(b"f FETCH 4:5 (UID)\r\n").await.expect("write");
    let r = lines_until(&mut io, &mut buf, "f").await.join("\n");
    assert!(
        r.contains("* 4 FETCH (UID 4)") && r.contains("* 5 FETCH (UID 5)"),
        "{r}"
    );
}
