//! The storage conformance suite: what every backend must do, whatever it is built on.
//!
//! Each backend's tests call these functions with a fresh (or shared, since names are
//! randomised) instance. They panic with a message on the first violation, like any test.
//! The same functions run against the embedded backends in CI and against S3, Redis and
//! ScyllaDB when those are reachable.

use crate::blob::BlobStore;
use crate::coord::{Coordinator, MailboxEvent};
use crate::metadata::{MetadataStore, QuotaPolicy};
use crate::types::*;
use crate::StoreError;
use bytes::Bytes;
use std::time::Duration;

fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// Puts, gets, ranges, dedup and deletes.
pub async fn blob_store(store: &dyn BlobStore) {
    let data = Bytes::from(format!(
        "Subject: conformance {}\r\n\r\nbody\r\n",
        unique("")
    ));
    let id = store.put(data.clone()).await.expect("put");
    assert_eq!(id, BlobId::of(&data), "blob ids are content addresses");
    assert_eq!(store.get(&id).await.expect("get"), data);
    let again = store.put(data.clone()).await.expect("second put");
    assert_eq!(again, id, "same bytes, same id");
    assert!(store.exists(&id).await.expect("exists"));

    assert_eq!(
        store.get_range(&id, 0..7).await.expect("range"),
        data.slice(0..7)
    );
    assert_eq!(
        store
            .get_range(&id, 9..10_000)
            .await
            .expect("range past end"),
        data.slice(9..),
        "ranges are clamped to the blob"
    );
    assert!(store
        .get_range(&id, 10_000..20_000)
        .await
        .expect("range beyond")
        .is_empty());

    let big = Bytes::from(vec![b'x'; 3 * 1024 * 1024 + 17]);
    let big_id = store.put(big.clone()).await.expect("put big");
    assert_eq!(store.get(&big_id).await.expect("get big").len(), big.len());

    store.delete(&id).await.expect("delete");
    assert!(!store.exists(&id).await.expect("exists after delete"));
    assert!(matches!(store.get(&id).await, Err(StoreError::NotFound(_))));
    store.delete(&id).await.expect("deleting twice is fine");
    store.delete(&big_id).await.expect("delete big");
}

/// Domains, accounts, aliases, mailboxes, messages, UIDs, MODSEQs, flags, the change log,
/// quotas and blob reference counting.
pub async fn metadata_store(meta: &dyn MetadataStore) {
    let domain = format!("{}.test", unique("d"));
    let other = format!("{}.test", unique("o"));
    meta.create_domain(&domain).await.expect("create domain");
    assert!(matches!(
        meta.create_domain(&domain).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(meta
        .list_domains()
        .await
        .expect("list")
        .iter()
        .any(|d| d.name == domain));
    assert!(meta.get_domain(&domain).await.expect("get").is_some());
    assert!(meta.get_domain(&other).await.expect("get").is_none());

    // Accounts and their default mailboxes.
    let alice = format!("alice@{domain}");
    assert!(matches!(
        meta.create_account(&format!("x@{other}"), "h", 0).await,
        Err(StoreError::NotFound(_))
    ));
    let a = meta
        .create_account(&alice.to_uppercase(), "$argon2id$fake", 0)
        .await
        .expect("create account");
    assert_eq!(a.address, alice, "addresses are stored lowercase");
    assert!(matches!(
        meta.create_account(&alice, "h", 0).await,
        Err(StoreError::Conflict(_))
    ));
    let boxes = meta.list_mailboxes(a.id).await.expect("mailboxes");
    let mut names: Vec<_> = boxes.iter().map(|b| b.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    );
    let inbox = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get inbox")
        .expect("inbox exists");
    assert_eq!(inbox.special_use, Some(SpecialUse::Inbox));
    assert_eq!(inbox.uid_next, Uid(1));
    assert!(inbox.uid_validity > 0);
    assert_eq!(
        meta.get_account_by_id(a.id)
            .await
            .expect("by id")
            .map(|x| x.address),
        Some(alice.clone())
    );
    meta.set_password_hash(&alice, "$argon2id$new")
        .await
        .expect("set password");
    assert_eq!(
        meta.get_account(&alice)
            .await
            .expect("get")
            .expect("exists")
            .password_hash,
        "$argon2id$new"
    );
    assert_eq!(
        meta.list_accounts(Some(&domain)).await.expect("list").len(),
        1
    );

    // Aliases and catch-all.
    let sales = format!("sales@{domain}");
    meta.create_alias(&sales, &alice).await.expect("alias");
    meta.create_alias(&sales, &format!("bob@{other}"))
        .await
        .expect("second target");
    assert!(matches!(
        meta.create_alias(&sales, &alice).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        matches!(
            meta.create_alias(&alice, &sales).await,
            Err(StoreError::Conflict(_))
        ),
        "an address is an account or an alias, not both"
    );
    assert_eq!(meta.alias_targets(&sales).await.expect("targets").len(), 2);
    meta.create_alias(&format!("@{domain}"), &alice)
        .await
        .expect("catch-all");
    assert_eq!(
        meta.alias_targets(&format!("@{domain}"))
            .await
            .expect("catch-all targets"),
        vec![alice.clone()]
    );
    assert_eq!(
        meta.list_aliases(Some(&domain)).await.expect("list").len(),
        3
    );
    meta.delete_alias(&sales, Some(&format!("bob@{other}")))
        .await
        .expect("delete one target");
    assert_eq!(meta.alias_targets(&sales).await.expect("targets").len(), 1);
    assert!(
        matches!(
            meta.delete_domain(&domain).await,
            Err(StoreError::Conflict(_))
        ),
        "a domain with accounts cannot be deleted"
    );

    // Appends: strictly increasing UIDs and MODSEQs, shared blobs counted.
    let blob = BlobId::of(b"conformance message");
    let msg = |mailbox: MailboxId| NewMessage {
        account: a.id,
        mailbox,
        blob: blob.clone(),
        size: 100,
        internal_date: 1_700_000_000,
        flags: Flags::default(),
        summary: None,
        refs: Default::default(),
        trace: None,
    };
    let first = meta
        .append(vec![msg(inbox.id), msg(inbox.id)], QuotaPolicy::Enforce)
        .await
        .expect("append");
    assert_eq!(first[0].uid, Uid(1));
    assert_eq!(first[1].uid, Uid(2));
    assert!(first[1].modseq > first[0].modseq);
    let third = meta
        .append(vec![msg(inbox.id)], QuotaPolicy::Enforce)
        .await
        .expect("append");
    assert_eq!(third[0].uid, Uid(3));
    let inbox_now = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(inbox_now.uid_next, Uid(4));
    assert_eq!(inbox_now.message_count, 3);
    assert_eq!(inbox_now.highest_modseq, third[0].modseq);
    let acct = meta
        .get_account(&alice)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(acct.used_bytes, 300);
    assert_eq!(acct.message_count, 3);

    let listed = meta
        .list_messages(inbox.id, Uid(0), 100)
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [Uid(1), Uid(2), Uid(3)]
    );
    assert_eq!(listed[0].blob, blob);
    let page = meta.list_messages(inbox.id, Uid(1), 1).await.expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].uid, Uid(2));

    // Flags.
    let seen = Flags::new(["\\Seen"]);
    let changed = meta
        .store_flags(inbox.id, &[Uid(1), Uid(99)], FlagOp::Add, &seen)
        .await
        .expect("store");
    assert_eq!(changed.len(), 1, "missing UIDs are skipped");
    assert!(changed[0].flags.contains("\\Seen"));
    assert!(changed[0].modseq > third[0].modseq);
    let unchanged = meta
        .store_flags(inbox.id, &[Uid(1)], FlagOp::Add, &seen)
        .await
        .expect("store again");
    assert!(unchanged.is_empty(), "a no-op store changes no MODSEQ");
    let replaced = meta
        .store_flags(
            inbox.id,
            &[Uid(1)],
            FlagOp::Replace,
            &Flags::new(["\\Flagged", "$Label1"]),
        )
        .await
        .expect("replace");
    assert!(!replaced[0].flags.contains("\\Seen"));
    assert!(replaced[0].flags.contains("$Label1"));
    let flag_modseq = replaced[0].modseq;

    // Change log.
    let since = meta
        .changes_since(inbox.id, third[0].modseq)
        .await
        .expect("changes");
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].uid, Uid(1));
    assert_eq!(since[0].kind, ChangeKind::FlagsChanged);
    assert_eq!(since[0].modseq, flag_modseq);

    // Expunge: UIDs never reused; blob orphaned only when the last reference goes.
    let gone = meta
        .expunge(inbox.id, &[Uid(2), Uid(3)])
        .await
        .expect("expunge");
    assert_eq!(gone.uids, [Uid(2), Uid(3)]);
    assert!(gone.orphaned.is_empty(), "uid 1 still references the blob");
    let changes = meta
        .changes_since(inbox.id, flag_modseq)
        .await
        .expect("changes");
    assert_eq!(
        changes.iter().map(|c| (c.uid, c.kind)).collect::<Vec<_>>(),
        [
            (Uid(2), ChangeKind::Expunged),
            (Uid(3), ChangeKind::Expunged)
        ]
    );
    let next = meta
        .append(vec![msg(inbox.id)], QuotaPolicy::Enforce)
        .await
        .expect("append after expunge");
    assert_eq!(next[0].uid, Uid(4), "UIDs are never reused");
    let acct = meta
        .get_account(&alice)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(acct.used_bytes, 200);

    // Quota.
    meta.set_quota(&alice, 250).await.expect("set quota");
    assert!(matches!(
        meta.append(vec![msg(inbox.id)], QuotaPolicy::Enforce).await,
        Err(StoreError::QuotaExceeded(_))
    ));
    let unchanged = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        unchanged.uid_next,
        Uid(5),
        "a refused append allocates nothing"
    );
    meta.append(vec![msg(inbox.id)], QuotaPolicy::Allow)
        .await
        .expect("delivery may overshoot");
    let acct = meta
        .get_account(&alice)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(acct.used_bytes, 300);

    // Usage, summaries.
    let usage = meta.mailbox_usage(inbox.id).await.expect("usage");
    assert_eq!(usage.messages, 3);
    assert_eq!(usage.size, 300);
    assert_eq!(
        usage.unseen, 3,
        "uid 1 lost \\Seen when its flags were replaced"
    );
    meta.store_flags(inbox.id, &[Uid(4)], FlagOp::Add, &seen)
        .await
        .expect("seen");
    assert_eq!(meta.mailbox_usage(inbox.id).await.expect("usage").unseen, 2);
    assert!(meta
        .message_summaries(inbox.id, &[Uid(1)])
        .await
        .expect("summaries")
        .is_empty());
    meta.set_message_summary(inbox.id, Uid(1), b"{\"s\":1}".to_vec())
        .await
        .expect("set summary");
    assert_eq!(
        meta.message_summaries(inbox.id, &[Uid(1), Uid(4)])
            .await
            .expect("summaries"),
        vec![(Uid(1), b"{\"s\":1}".to_vec())]
    );

    // Copy and move keep blob, flags and summary; move is atomic and keeps usage.
    let archive = meta
        .get_mailbox(a.id, "Archive")
        .await
        .expect("get")
        .expect("archive");
    meta.set_quota(&alice, 0).await.expect("unlimited");
    let before = meta.get_account(&alice).await.expect("get").expect("a");
    let copied = meta
        .copy_messages(a.id, inbox.id, &[Uid(4), Uid(1), Uid(77)], archive.id)
        .await
        .expect("copy");
    assert_eq!(
        copied
            .iter()
            .map(|c| (c.source_uid, c.dest.uid))
            .collect::<Vec<_>>(),
        [(Uid(1), Uid(1)), (Uid(4), Uid(2))],
        "copies land in source UID order; missing UIDs are skipped"
    );
    let copy1 = meta
        .get_message(archive.id, Uid(1))
        .await
        .expect("get")
        .expect("copied");
    assert!(copy1.flags.contains("$Label1"));
    assert_eq!(
        meta.message_summaries(archive.id, &[Uid(1)])
            .await
            .expect("summaries")
            .len(),
        1
    );
    let after_copy = meta.get_account(&alice).await.expect("get").expect("a");
    assert_eq!(after_copy.used_bytes, before.used_bytes + 200);
    let (moved, gone) = meta
        .move_messages(a.id, archive.id, &[Uid(1), Uid(2)], inbox.id)
        .await
        .expect("move");
    assert_eq!(moved.len(), 2);
    assert_eq!(gone.uids, [Uid(1), Uid(2)]);
    assert!(gone.orphaned.is_empty());
    assert!(moved[0].dest.uid > Uid(5), "moved messages get new UIDs");
    assert_eq!(
        meta.get_account(&alice)
            .await
            .expect("get")
            .expect("a")
            .used_bytes,
        after_copy.used_bytes,
        "a move does not change usage"
    );
    assert_eq!(
        meta.get_mailbox(a.id, "Archive")
            .await
            .expect("get")
            .expect("archive")
            .message_count,
        0
    );
    let arch_changes = meta
        .changes_since(archive.id, ModSeq(0))
        .await
        .expect("changes");
    assert!(arch_changes.iter().all(|c| c.kind == ChangeKind::Expunged));
    // Drop the extra copies so the blob accounting below stays simple.
    let uids: Vec<Uid> = moved.iter().map(|c| c.dest.uid).collect();
    let gone = meta.expunge(inbox.id, &uids).await.expect("expunge");
    assert!(gone.orphaned.is_empty());

    // Subscriptions need not name existing mailboxes.
    meta.subscribe(a.id, "INBOX").await.expect("sub");
    meta.subscribe(a.id, "Not/Yet").await.expect("sub");
    meta.subscribe(a.id, "INBOX").await.expect("sub twice");
    assert_eq!(
        meta.subscriptions(a.id).await.expect("subs"),
        ["INBOX", "Not/Yet"]
    );
    meta.unsubscribe(a.id, "Not/Yet").await.expect("unsub");
    assert_eq!(meta.subscriptions(a.id).await.expect("subs"), ["INBOX"]);

    // Mailboxes: create, rename, delete.
    let work = meta
        .create_mailbox(a.id, "Work", None)
        .await
        .expect("create mailbox");
    assert!(matches!(
        meta.create_mailbox(a.id, "Work", None).await,
        Err(StoreError::Conflict(_))
    ));
    meta.append(vec![msg(work.id)], QuotaPolicy::Allow)
        .await
        .expect("append to Work");
    meta.rename_mailbox(a.id, work.id, "Projects")
        .await
        .expect("rename");
    assert!(meta.get_mailbox(a.id, "Work").await.expect("get").is_none());
    let orphans = meta
        .delete_mailbox(a.id, work.id)
        .await
        .expect("delete mailbox");
    assert!(orphans.is_empty());
    let recreated = meta
        .create_mailbox(a.id, "Work", None)
        .await
        .expect("re-create");
    assert_ne!(
        recreated.id, work.id,
        "a re-created mailbox is a new mailbox"
    );

    // Deleting the account releases the shared blob exactly once, and removes aliases
    // that point at it.
    meta.create_alias(&format!("old@{domain}"), &alice)
        .await
        .expect("alias to alice");
    let orphans = meta.delete_account(&alice).await.expect("delete account");
    assert_eq!(orphans, vec![blob.clone()]);
    assert!(meta.get_account(&alice).await.expect("get").is_none());
    assert!(meta
        .alias_targets(&format!("old@{domain}"))
        .await
        .expect("targets")
        .is_empty());
    let pending = meta.orphaned_blobs(i64::MAX, 1000).await.expect("orphans");
    assert!(pending.blobs.contains(&blob));
    assert!(
        !meta.claim_orphan(&blob, 0).await.expect("claim in grace"),
        "an orphan younger than the grace period is not claimed"
    );
    assert!(meta.claim_orphan(&blob, i64::MAX).await.expect("claim"));
    meta.finish_orphan(&blob).await.expect("finish");
    assert!(!meta
        .claim_orphan(&blob, i64::MAX)
        .await
        .expect("claim twice"));

    assert!(
        meta.list_aliases(Some(&domain))
            .await
            .expect("list")
            .is_empty(),
        "the sales alias and the catch-all pointed only at alice"
    );
    assert!(matches!(
        meta.delete_alias(&sales, None).await,
        Err(StoreError::NotFound(_))
    ));
    meta.delete_domain(&domain).await.expect("delete domain");
    assert!(meta.get_domain(&domain).await.expect("get").is_none());

    metadata_decides_by_current_state(meta).await;
}

/// A fresh account with `n` messages in its INBOX; returns the account, the INBOX and the
/// UIDs.
/// Due entries of every queue shard at `now`, oldest attempt first (each shard answers in
/// its own order; the union is ordered by the entries' earliest due attempt).
async fn due_everywhere(
    meta: &dyn MetadataStore,
    now: i64,
    limit: usize,
) -> Result<Vec<crate::QueueId>, StoreError> {
    let mut all = Vec::new();
    for shard in 0..meta.queue_shards() {
        for id in meta.due_outbound(shard, now, limit).await? {
            let first = meta.get_outbound(id).await?.and_then(|m| {
                m.recipients
                    .iter()
                    .filter(|r| r.state == crate::RecipientState::Queued && r.next_attempt <= now)
                    .map(|r| r.next_attempt)
                    .min()
            });
            all.push((first.unwrap_or(i64::MIN), id));
        }
    }
    all.sort();
    all.dedup_by_key(|e| e.1);
    Ok(all.into_iter().take(limit).map(|e| e.1).collect())
}

async fn account_with_messages(meta: &dyn MetadataStore, n: usize) -> (Account, Mailbox, Vec<Uid>) {
    let domain = format!("{}.test", unique("r"));
    meta.create_domain(&domain).await.expect("create domain");
    let account = meta
        .create_account(&format!("race@{domain}"), "h", 0)
        .await
        .expect("create account");
    let inbox = meta
        .get_mailbox(account.id, "INBOX")
        .await
        .expect("get inbox")
        .expect("inbox exists");
    let messages = (0..n)
        .map(|i| {
            let body = format!("Subject: race {i} {}\r\n\r\nbody\r\n", unique(""));
            NewMessage {
                account: account.id,
                mailbox: inbox.id,
                blob: BlobId::of(body.as_bytes()),
                size: body.len() as u64,
                internal_date: 1_700_000_000,
                flags: Flags::default(),
                summary: None,
                refs: Default::default(),
                trace: None,
            }
        })
        .collect();
    let uids = meta
        .append(messages, QuotaPolicy::Enforce)
        .await
        .expect("append")
        .into_iter()
        .map(|a| a.uid)
        .collect();
    (account, inbox, uids)
}

/// The change log as views read it: `changes_with_messages` agrees with `changes_since`
/// plus `get_message`, an empty answer is never stale (a change right after one is seen by
/// the next read, whatever was read before), and EXPUNGE removes exactly the `\Deleted`
/// messages (all of them, or those of a UID set) however large the mailbox.
pub async fn metadata_change_log_reads(meta: &dyn MetadataStore) {
    let (_, inbox, uids) = account_with_messages(meta, 40).await;
    let all = meta
        .changes_with_messages(inbox.id, ModSeq(0))
        .await
        .expect("changes with messages");
    assert_eq!(all.len(), 40);
    for (c, m) in &all {
        assert_eq!(c.kind, ChangeKind::Appended);
        let stored = meta.get_message(inbox.id, c.uid).await.expect("get");
        assert_eq!(m, &stored, "uid {}", c.uid.0);
    }
    let plain = meta
        .changes_since(inbox.id, ModSeq(0))
        .await
        .expect("changes");
    assert_eq!(
        plain,
        all.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>()
    );

    // Nothing after the newest change; then each write is seen by the very next read.
    let mut newest = all.iter().map(|(c, _)| c.modseq).max().expect("changes");
    for (round, &uid) in uids.iter().take(5).enumerate() {
        for _ in 0..2 {
            assert!(
                meta.changes_since(inbox.id, newest)
                    .await
                    .expect("changes")
                    .is_empty(),
                "round {round}: nothing changed"
            );
        }
        let changed = meta
            .store_flags(inbox.id, &[uid], FlagOp::Add, &Flags::new(["\\Deleted"]))
            .await
            .expect("store");
        let after = meta
            .changes_with_messages(inbox.id, newest)
            .await
            .expect("changes with messages");
        assert_eq!(
            after.len(),
            1,
            "round {round}: the flag change is seen at once"
        );
        assert_eq!(after[0].0.uid, uid);
        assert_eq!(after[0].0.kind, ChangeKind::FlagsChanged);
        assert_eq!(after[0].0.modseq, changed[0].modseq);
        let m = after[0].1.as_ref().expect("the message is still there");
        assert!(m.flags.contains("\\Deleted"));
        newest = changed[0].modseq;
    }

    // UID EXPUNGE of a set: only its \Deleted members.
    let gone = meta
        .expunge_deleted(inbox.id, Some(&[uids[0], uids[10], uids[20]]))
        .await
        .expect("uid expunge");
    assert_eq!(gone.uids, [uids[0]], "uids 10 and 20 are not \\Deleted");
    // EXPUNGE: the other deleted ones, nothing else.
    let gone = meta.expunge_deleted(inbox.id, None).await.expect("expunge");
    assert_eq!(gone.uids, uids[1..5].to_vec());
    assert!(meta
        .expunge_deleted(inbox.id, None)
        .await
        .expect("expunge again")
        .uids
        .is_empty());
    let after = meta
        .changes_with_messages(inbox.id, newest)
        .await
        .expect("changes after expunge");
    assert_eq!(after.len(), 5);
    assert!(after
        .iter()
        .all(|(c, m)| c.kind == ChangeKind::Expunged && m.is_none()));
    let left = meta
        .list_messages(inbox.id, Uid(0), 1000)
        .await
        .expect("list");
    assert_eq!(left.len(), 35);
}

/// Conditional writes decide by what is stored when they run, not by what a caller saw
/// earlier: EXPUNGE by the current `\Deleted` flag (RFC 9051 §6.4.3), STORE
/// UNCHANGEDSINCE by the current MODSEQ (RFC 7162 §3.1.3). Each case replays two IMAP
/// sessions: B looks, A changes, B acts on what it saw.
pub async fn metadata_decides_by_current_state(meta: &dyn MetadataStore) {
    let deleted = Flags::new(["\\Deleted"]);
    let (_, inbox, uids) = account_with_messages(meta, 4).await;
    let [u1, u2, u3, u4] = [uids[0], uids[1], uids[2], uids[3]];

    // B sees \Deleted on u1 and u2; A clears it on u1; B expunges.
    meta.store_flags(inbox.id, &[u1, u2, u3], FlagOp::Add, &deleted)
        .await
        .expect("flag deleted");
    meta.store_flags(inbox.id, &[u1], FlagOp::Remove, &deleted)
        .await
        .expect("A clears \\Deleted");
    let gone = meta
        .expunge_deleted(inbox.id, Some(&[u1, u2]))
        .await
        .expect("UID EXPUNGE u1,u2");
    assert_eq!(
        gone.uids,
        vec![u2],
        "a message A undeleted survives B's EXPUNGE"
    );
    assert!(
        meta.get_message(inbox.id, u1).await.expect("get").is_some(),
        "u1 is still there"
    );
    assert!(
        meta.get_message(inbox.id, u3).await.expect("get").is_some(),
        "UID EXPUNGE leaves \\Deleted messages outside its set"
    );
    let gone = meta.expunge_deleted(inbox.id, None).await.expect("EXPUNGE");
    assert_eq!(
        gone.uids,
        vec![u3],
        "EXPUNGE removes every message flagged now, only those"
    );
    assert!(gone.modseq.is_some());
    assert!(meta
        .expunge_deleted(inbox.id, None)
        .await
        .expect("EXPUNGE with nothing flagged")
        .uids
        .is_empty());

    // UNCHANGEDSINCE: B has seen everything up to `seen`; A flags u4; B's conditional
    // store must fail for u4 and pass for u1.
    let mut seen = ModSeq(0);
    for u in [u1, u4] {
        let m = meta
            .get_message(inbox.id, u)
            .await
            .expect("get")
            .expect("message");
        seen = seen.max(m.modseq);
    }
    let flagged = Flags::new(["\\Flagged"]);
    meta.store_flags(inbox.id, &[u4], FlagOp::Add, &flagged)
        .await
        .expect("A flags u4");
    let seen_flag = Flags::new(["\\Seen"]);
    let result = meta
        .store_flags_unchanged_since(
            inbox.id,
            &[u4, u1, Uid(999)],
            FlagOp::Replace,
            &seen_flag,
            seen,
        )
        .await
        .expect("conditional store");
    assert_eq!(
        result.modified,
        vec![u4],
        "u4 changed after `seen`: MODIFIED"
    );
    assert_eq!(result.changed.len(), 1, "u1 passed the test and changed");
    assert_eq!(result.changed[0].uid, u1);
    assert!(result.changed[0].flags.contains("\\Seen"));
    let u4_now = meta
        .get_message(inbox.id, u4)
        .await
        .expect("get")
        .expect("u4");
    assert!(
        u4_now.flags.contains("\\Flagged") && !u4_now.flags.contains("\\Seen"),
        "A's change is not overwritten: {:?}",
        u4_now.flags
    );
    // With the current MODSEQ the same store passes.
    let result = meta
        .store_flags_unchanged_since(inbox.id, &[u4], FlagOp::Add, &seen_flag, u4_now.modseq)
        .await
        .expect("conditional store");
    assert!(result.modified.is_empty());
    assert_eq!(result.changed.len(), 1);
}

/// One message of `account` in `mailbox` referencing `blob`.
fn message_with(account: &Account, mailbox: &Mailbox, blob: &BlobId, size: usize) -> NewMessage {
    NewMessage {
        account: account.id,
        mailbox: mailbox.id,
        blob: blob.clone(),
        size: size as u64,
        internal_date: 1_700_000_000,
        flags: Flags::default(),
        summary: None,
        refs: Default::default(),
        trace: None,
    }
}

/// A body stored for a message that was never written (a delivery that failed after its
/// put) is found and deleted by the sweep once its grace period is over, and a body a
/// message took is kept. Run for backends that log every put (ScyllaDB); the SQLite store
/// pins only bodies with an orphan record (one commit fewer per delivery), so a body it
/// stored for a failed delivery stays on disk.
pub async fn blob_gc_collects_unreferenced_puts(stores: &crate::Stores) {
    let (meta, blobs) = (stores.meta.as_ref(), stores.blobs.as_ref());
    let (account, inbox, _) = account_with_messages(meta, 0).await;
    let lost = Bytes::from(format!("Subject: lost {}\r\n\r\nbody\r\n", unique("")));
    let kept = Bytes::from(format!("Subject: kept {}\r\n\r\nbody\r\n", unique("")));
    let lost_id = stores.put_blob(lost).await.expect("put");
    let kept_id = stores.put_blob(kept.clone()).await.expect("put");
    meta.append(
        vec![message_with(&account, &inbox, &kept_id, kept.len())],
        QuotaPolicy::Allow,
    )
    .await
    .expect("append");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    // Within the grace period: nothing goes.
    crate::blob::gc::collect(meta, blobs, now, 3_600, 100_000)
        .await
        .expect("sweep");
    assert!(blobs.exists(&lost_id).await.expect("exists"));
    // Two days on, past the grace period: the body nobody took goes, the other stays.
    crate::blob::gc::collect(meta, blobs, now + 2 * 86_400, 3_600, 100_000)
        .await
        .expect("sweep");
    assert!(
        !blobs.exists(&lost_id).await.expect("exists"),
        "a body no message took is collected"
    );
    assert!(blobs.exists(&kept_id).await.expect("exists"));
    // A sweep with nothing new to read reads nothing more and deletes nothing.
    assert_eq!(
        crate::blob::gc::collect(meta, blobs, now + 2 * 86_400, 3_600, 100_000)
            .await
            .expect("sweep"),
        0
    );
}

/// The orphan sweep never deletes the body of a message that was stored (acknowledged)
/// while it ran. Each case interleaves, step by step, a sweep with a delivery of the same
/// bytes as a blob just orphaned; the delivery writes as every writer does, through
/// [`crate::Stores::put_blob`] then `append`.
pub async fn blob_gc_races(stores: &crate::Stores) {
    let (meta, blobs) = (stores.meta.as_ref(), stores.blobs.as_ref());
    let (account, inbox, _) = account_with_messages(meta, 0).await;
    let body = Bytes::from(format!("Subject: gc race {}\r\n\r\nbody\r\n", unique("")));
    let id = stores.put_blob(body.clone()).await.expect("put");
    // Orphans it: the only message referencing it goes.
    let orphan = async || {
        let a = meta
            .append(
                vec![message_with(&account, &inbox, &id, body.len())],
                QuotaPolicy::Allow,
            )
            .await
            .expect("append")[0]
            .uid;
        let gone = meta.expunge(inbox.id, &[a]).await.expect("expunge");
        assert_eq!(gone.orphaned, vec![id.clone()]);
    };
    // Far in the future: for the sweep, every orphan and pin is past its grace.
    let later = i64::MAX;

    // 1. The sweep lists the orphan; a delivery stores the same bytes and appends; the
    //    sweep's claim must stand down.
    orphan().await;
    assert!(meta
        .orphaned_blobs(later, 10_000)
        .await
        .expect("list")
        .blobs
        .contains(&id));
    stores.put_blob(body.clone()).await.expect("delivery put");
    let kept = meta
        .append(
            vec![message_with(&account, &inbox, &id, body.len())],
            QuotaPolicy::Allow,
        )
        .await
        .expect("delivery append")[0]
        .uid;
    assert!(
        !meta.claim_orphan(&id, later).await.expect("claim"),
        "a referenced blob is never claimed"
    );
    assert_eq!(blobs.get(&id).await.expect("body survives"), body);
    meta.expunge(inbox.id, &[kept]).await.expect("expunge");

    // 2. A delivery pins (and puts) the same bytes; the sweep comes before the append:
    //    the pin keeps the blob for the grace period.
    //    (Waits for the clock's next second, so the orphan is older than `older_than`
    //    and only the pin, at or after it, can keep the blob.)
    let orphaned_at = chrono_now();
    while chrono_now() <= orphaned_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let older_than = chrono_now();
    meta.pin_blob(&id).await.expect("pin");
    blobs.put(body.clone()).await.expect("put");
    assert!(
        !meta.claim_orphan(&id, older_than).await.expect("claim"),
        "a blob pinned within the grace period is not claimed"
    );
    let kept = meta
        .append(
            vec![message_with(&account, &inbox, &id, body.len())],
            QuotaPolicy::Allow,
        )
        .await
        .expect("append after the pin")[0]
        .uid;
    assert_eq!(blobs.get(&id).await.expect("body survives"), body);
    meta.expunge(inbox.id, &[kept]).await.expect("expunge");

    // 3. The sweep claims first; a delivery of the same bytes arrives before the bytes are
    //    deleted. Whatever it manages, what it acknowledges must survive the deletion.
    assert!(meta.claim_orphan(&id, later).await.expect("claim"));
    let delivered = match stores.put_blob(body.clone()).await {
        Ok(_) => meta
            .append(
                vec![message_with(&account, &inbox, &id, body.len())],
                QuotaPolicy::Allow,
            )
            .await
            .ok(),
        Err(StoreError::Unavailable(_)) => None,
        Err(e) => panic!("unexpected error storing a blob being deleted: {e}"),
    };
    assert!(
        delivered.is_none(),
        "a blob being deleted cannot be referenced"
    );
    blobs.delete(&id).await.expect("sweep deletes");
    meta.finish_orphan(&id).await.expect("finish");
    // The delivery retries, now that the sweep is done: the bytes are written afresh.
    stores.put_blob(body.clone()).await.expect("retried put");
    meta.append(
        vec![message_with(&account, &inbox, &id, body.len())],
        QuotaPolicy::Allow,
    )
    .await
    .expect("retried append");
    assert_eq!(blobs.get(&id).await.expect("body after the retry"), body);
    assert_eq!(
        crate::blob::gc::collect(meta, blobs, later, 0, 10_000)
            .await
            .expect("sweep"),
        0,
        "nothing referenced is collected"
    );
    assert_eq!(blobs.get(&id).await.expect("body after a full sweep"), body);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Many concurrent appends to one mailbox: every UID distinct and gap-free.
pub async fn metadata_concurrent_appends(meta: std::sync::Arc<dyn MetadataStore>) {
    let domain = format!("{}.test", unique("c"));
    meta.create_domain(&domain).await.expect("domain");
    let a = meta
        .create_account(&format!("c@{domain}"), "h", 0)
        .await
        .expect("account");
    let inbox = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let meta = meta.clone();
        tasks.push(tokio::spawn(async move {
            meta.append(
                vec![NewMessage {
                    account: a.id,
                    mailbox: inbox.id,
                    blob: BlobId::of(format!("m{i}").as_bytes()),
                    size: 10,
                    internal_date: 0,
                    flags: Flags::default(),
                    summary: None,
                    refs: Default::default(),
                    trace: None,
                }],
                QuotaPolicy::Enforce,
            )
            .await
            .expect("append")[0]
                .uid
        }));
    }
    let mut uids = Vec::new();
    for t in tasks {
        uids.push(t.await.expect("task").0);
    }
    uids.sort();
    assert_eq!(uids, (1..=50).collect::<Vec<_>>());
    meta.delete_account(&a.address).await.expect("cleanup");
    meta.delete_domain(&domain).await.expect("cleanup domain");
}

/// Save dates (IMAP SAVEDATE, RFC 8514, [`MetadataStore::message_save_dates`]): an append
/// records when it happened; a copy and a move give the new message a save date of their
/// own, at or after the original's; missing UIDs are left out.
/// STATUS counts (messages, unseen, size) are kept by the store, not computed by reading
/// every message (issue 15, point 5): after each append, flag change, copy, move and
/// expunge they equal what the message list says.
pub async fn metadata_usage_counts(meta: &dyn MetadataStore) {
    let domain = format!("{}.test", unique("uc"));
    meta.create_domain(&domain).await.expect("domain");
    let a = meta
        .create_account(&format!("u@{domain}"), "h", 0)
        .await
        .expect("account");
    let inbox = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let archive = meta
        .get_mailbox(a.id, "Archive")
        .await
        .expect("get")
        .expect("archive");
    let seen = Flags::new(["\\Seen"]);
    async fn check(meta: &dyn MetadataStore, mailbox: MailboxId, step: &str) {
        let list = meta
            .list_messages(mailbox, Uid(0), usize::MAX)
            .await
            .expect("list");
        let want = MailboxUsage {
            messages: list.len() as u64,
            unseen: list.iter().filter(|m| !m.flags.contains("\\Seen")).count() as u64,
            size: list.iter().map(|m| m.size).sum(),
        };
        let got = meta.mailbox_usage(mailbox).await.expect("usage");
        assert_eq!(got, want, "counts of mailbox {mailbox} after {step}");
    }
    let batch: Vec<NewMessage> = (0..6u64)
        .map(|i| {
            let mut m = message_with(
                &a,
                &inbox,
                &BlobId::of(format!("usage {i}").as_bytes()),
                100 + i as usize,
            );
            if i % 2 == 0 {
                m.flags = seen.clone();
            }
            m
        })
        .collect();
    let uids: Vec<Uid> = meta
        .append(batch, QuotaPolicy::Allow)
        .await
        .expect("append")
        .iter()
        .map(|x| x.uid)
        .collect();
    check(meta, inbox.id, "append").await;
    meta.store_flags(inbox.id, &uids[..3], FlagOp::Add, &seen)
        .await
        .expect("add seen");
    check(meta, inbox.id, "adding \\Seen").await;
    meta.store_flags(inbox.id, &uids[2..5], FlagOp::Remove, &seen)
        .await
        .expect("remove seen");
    check(meta, inbox.id, "removing \\Seen").await;
    meta.store_flags(inbox.id, &uids[..1], FlagOp::Replace, &Flags::default())
        .await
        .expect("replace");
    check(meta, inbox.id, "replacing flags").await;
    meta.copy_messages(a.id, inbox.id, &uids[..2], archive.id)
        .await
        .expect("copy");
    check(meta, inbox.id, "copy (source)").await;
    check(meta, archive.id, "copy (destination)").await;
    meta.move_messages(a.id, inbox.id, &uids[2..4], archive.id)
        .await
        .expect("move");
    check(meta, inbox.id, "move (source)").await;
    check(meta, archive.id, "move (destination)").await;
    meta.expunge(inbox.id, &uids[4..5]).await.expect("expunge");
    check(meta, inbox.id, "expunge").await;
}

pub async fn metadata_save_dates(meta: &dyn MetadataStore) {
    let domain = format!("{}.test", unique("sd"));
    meta.create_domain(&domain).await.expect("domain");
    let a = meta
        .create_account(&format!("s@{domain}"), "h", 0)
        .await
        .expect("account");
    let inbox = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let trash = meta
        .get_mailbox(a.id, "Trash")
        .await
        .expect("get")
        .expect("trash");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    };
    let before = now();
    let new = |i: u32| NewMessage {
        account: a.id,
        mailbox: inbox.id,
        blob: BlobId::of(format!("save-date {i}").as_bytes()),
        size: 10,
        // An INTERNALDATE long ago: the save date is not the internal date.
        internal_date: 1_000_000_000,
        flags: Flags::default(),
        summary: None,
        refs: Default::default(),
        trace: None,
    };
    let appended = meta
        .append(vec![new(1), new(2)], QuotaPolicy::Enforce)
        .await
        .expect("append");
    let after = now();
    let uids: Vec<Uid> = appended.iter().map(|x| x.uid).collect();
    let mut asked = uids.clone();
    asked.push(Uid(999));
    let dates = meta
        .message_save_dates(inbox.id, &asked)
        .await
        .expect("save dates");
    assert_eq!(dates.len(), 2, "the missing UID is left out: {dates:?}");
    for (uid, d) in &dates {
        assert!(uids.contains(uid));
        let d = d.expect("an appended message has a save date");
        assert!(before <= d && d <= after, "{d} not in {before}..={after}");
    }
    let copied = meta
        .copy_messages(a.id, inbox.id, &uids[..1], trash.id)
        .await
        .expect("copy");
    let (moved, _) = meta
        .move_messages(a.id, inbox.id, &uids[1..], trash.id)
        .await
        .expect("move");
    let end = now();
    let dest: Vec<Uid> = copied.iter().chain(&moved).map(|c| c.dest.uid).collect();
    let dates = meta
        .message_save_dates(trash.id, &dest)
        .await
        .expect("save dates");
    assert_eq!(dates.len(), 2);
    for (_, d) in dates {
        let d = d.expect("a copied or moved message has a save date");
        assert!(before <= d && d <= end, "{d}");
    }
    assert!(meta
        .message_save_dates(inbox.id, &uids[1..])
        .await
        .expect("moved away")
        .is_empty());
    meta.delete_account(&a.address).await.expect("cleanup");
    meta.delete_domain(&domain).await.expect("cleanup domain");
}

/// Object ids (IMAP OBJECTID, RFC 8474; [`MetadataStore::message_object_ids`],
/// [`MetadataStore::find_by_object_id`]): every append gets a new EMAILID (also for the same
/// bytes delivered twice), COPY and MOVE keep EMAILID and THREADID, RENAME keeps the
/// MAILBOXID and a new mailbox never gets an old one, messages that refer to each other
/// (In-Reply-To, References, also a reply stored before its parent) share a thread, and
/// lookups by id find every copy, per mailbox or account-wide, never another account's.
pub async fn metadata_object_ids(meta: &dyn MetadataStore) {
    use crate::object_id::{is_valid, mailbox_object_id};
    let domain = format!("{}.test", unique("oid"));
    meta.create_domain(&domain).await.expect("domain");
    let a = meta
        .create_account(&format!("o@{domain}"), "h", 0)
        .await
        .expect("account");
    let other = meta
        .create_account(&format!("p@{domain}"), "h", 0)
        .await
        .expect("account");
    let inbox = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let trash = meta
        .get_mailbox(a.id, "Trash")
        .await
        .expect("get")
        .expect("trash");
    let header = |id: &str, parent: Option<&str>, refs: &[&str]| {
        let mut h = format!("Message-ID: <{id}>\r\n");
        if let Some(p) = parent {
            h.push_str(&format!("In-Reply-To: <{p}>\r\n"));
        }
        if !refs.is_empty() {
            let r: Vec<String> = refs.iter().map(|r| format!("<{r}>")).collect();
            h.push_str(&format!("References: {}\r\n", r.join("\r\n ")));
        }
        h.push_str("Subject: t\r\n\r\nbody\r\n");
        h
    };
    let new = |acct: &Account, mb: &Mailbox, raw: &str| NewMessage {
        account: acct.id,
        mailbox: mb.id,
        blob: BlobId::of(raw.as_bytes()),
        size: raw.len() as u64,
        internal_date: 1_700_000_000,
        flags: Flags::default(),
        summary: None,
        refs: crate::MessageRefs::from_message(raw.as_bytes()),
        trace: None,
    };
    let tag = unique("");
    let root = format!("root-{tag}@x");
    let reply = format!("reply-{tag}@x");
    let orphan_child = format!("child-{tag}@x");
    let late_parent = format!("late-{tag}@x");
    let raws = [
        header(&root, None, &[]),
        // The same bytes twice: two emails, one thread (one Message-ID).
        header(&root, None, &[]),
        header(&reply, Some(&root), &[&root]),
        // Refers to its parent only through References, nearest last.
        header(&format!("deep-{tag}@x"), None, &[&root, &reply]),
        // A reply stored before its parent: the parent joins the reply's thread.
        header(&orphan_child, Some(&late_parent), &[&late_parent]),
        header(&late_parent, None, &[]),
        // Unrelated.
        header(&format!("alone-{tag}@x"), None, &[]),
    ];
    let appended = meta
        .append(
            raws.iter().map(|r| new(&a, &inbox, r)).collect(),
            QuotaPolicy::Enforce,
        )
        .await
        .expect("append");
    let uids: Vec<Uid> = appended.iter().map(|x| x.uid).collect();
    let mut asked = uids.clone();
    asked.push(Uid(9999));
    let ids: Vec<(Uid, crate::MessageObjectIds)> = meta
        .message_object_ids(inbox.id, &asked)
        .await
        .expect("ids");
    assert_eq!(
        ids.len(),
        uids.len(),
        "the missing UID is left out: {ids:?}"
    );
    let by_uid: std::collections::HashMap<Uid, crate::MessageObjectIds> = ids.into_iter().collect();
    let of = |i: usize| by_uid[&uids[i]].clone();
    for i in 0..uids.len() {
        let x = of(i);
        assert!(
            is_valid(&x.email_id) && x.email_id.starts_with('E'),
            "{x:?}"
        );
        assert!(
            is_valid(&x.thread_id) && x.thread_id.starts_with('T'),
            "{x:?}"
        );
    }
    let emails: std::collections::HashSet<String> =
        (0..uids.len()).map(|i| of(i).email_id).collect();
    assert_eq!(emails.len(), uids.len(), "every append is a new email");
    for i in 1..4 {
        assert_eq!(
            of(i).thread_id,
            of(0).thread_id,
            "message {i} is in the thread"
        );
    }
    assert_eq!(
        of(5).thread_id,
        of(4).thread_id,
        "the late parent joins its reply"
    );
    assert_ne!(of(4).thread_id, of(0).thread_id);
    assert_ne!(of(6).thread_id, of(0).thread_id);
    assert_ne!(of(6).thread_id, of(4).thread_id);

    // COPY and MOVE keep both ids.
    let copied = meta
        .copy_messages(a.id, inbox.id, &uids[..1], trash.id)
        .await
        .expect("copy");
    let (moved, _) = meta
        .move_messages(a.id, inbox.id, &uids[2..3], trash.id)
        .await
        .expect("move");
    let dest = [copied[0].dest.uid, moved[0].dest.uid];
    let in_trash: std::collections::HashMap<Uid, crate::MessageObjectIds> = meta
        .message_object_ids(trash.id, &dest)
        .await
        .expect("ids")
        .into_iter()
        .collect();
    assert_eq!(
        in_trash[&dest[0]],
        of(0),
        "a copy keeps EMAILID and THREADID"
    );
    assert_eq!(
        in_trash[&dest[1]],
        of(2),
        "a move keeps EMAILID and THREADID"
    );

    // Lookups by id: every mailbox, one mailbox, never another account's.
    let found = meta
        .find_by_object_id(a.id, None, &of(0).email_id, 100)
        .await
        .expect("find");
    let mut want = vec![(inbox.id, uids[0]), (trash.id, dest[0])];
    want.sort();
    assert_eq!(found, want);
    let found = meta
        .find_by_object_id(a.id, Some(trash.id), &of(0).email_id, 100)
        .await
        .expect("find");
    assert_eq!(found, vec![(trash.id, dest[0])]);
    let moved_away = meta
        .find_by_object_id(a.id, None, &of(2).email_id, 100)
        .await
        .expect("find");
    assert_eq!(
        moved_away,
        vec![(trash.id, dest[1])],
        "the moved original is gone"
    );
    let thread = meta
        .find_by_object_id(a.id, Some(inbox.id), &of(0).thread_id, 100)
        .await
        .expect("find");
    assert_eq!(
        thread,
        vec![
            (inbox.id, uids[0]),
            (inbox.id, uids[1]),
            (inbox.id, uids[3])
        ]
    );
    let limited = meta
        .find_by_object_id(a.id, None, &of(0).thread_id, 2)
        .await
        .expect("find");
    assert_eq!(limited.len(), 2);
    assert!(meta
        .find_by_object_id(other.id, None, &of(0).email_id, 100)
        .await
        .expect("find")
        .is_empty());
    assert!(meta
        .find_by_object_id(a.id, None, "Enothing", 100)
        .await
        .expect("find")
        .is_empty());
    assert!(meta
        .find_by_object_id(a.id, None, &mailbox_object_id(&inbox), 100)
        .await
        .expect("find")
        .is_empty());
    // Another account delivering the same message gets its own thread.
    let theirs = meta
        .get_mailbox(other.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let t = meta
        .append(vec![new(&other, &theirs, &raws[2])], QuotaPolicy::Enforce)
        .await
        .expect("append");
    let t_ids = meta
        .message_object_ids(theirs.id, &[t[0].uid])
        .await
        .expect("ids");
    assert_ne!(t_ids[0].1.thread_id, of(0).thread_id);

    // MAILBOXID: kept by RENAME, never given to another mailbox.
    let mb = meta
        .create_mailbox(a.id, &format!("box-{tag}"), None)
        .await
        .expect("create");
    let mid = mailbox_object_id(&mb);
    assert!(is_valid(&mid) && mid.starts_with('M'), "{mid}");
    meta.rename_mailbox(a.id, mb.id, &format!("renamed-{tag}"))
        .await
        .expect("rename");
    let renamed = meta
        .get_mailbox(a.id, &format!("renamed-{tag}"))
        .await
        .expect("get")
        .expect("renamed");
    assert_eq!(
        mailbox_object_id(&renamed),
        mid,
        "RENAME keeps the MAILBOXID"
    );
    meta.delete_mailbox(a.id, mb.id).await.expect("delete");
    let again = meta
        .create_mailbox(a.id, &format!("renamed-{tag}"), None)
        .await
        .expect("create again");
    assert_ne!(
        mailbox_object_id(&again),
        mid,
        "a new mailbox gets a new MAILBOXID"
    );
    let all: Vec<String> = meta
        .list_mailboxes(a.id)
        .await
        .expect("list")
        .iter()
        .map(mailbox_object_id)
        .collect();
    let distinct: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len());

    meta.delete_account(&a.address).await.expect("cleanup");
    meta.delete_account(&other.address).await.expect("cleanup");
    meta.delete_domain(&domain).await.expect("cleanup domain");
}

/// The `\Recent` watermark ([`MetadataStore::claim_recent`]): a claim returns the old
/// watermark and never lowers it, a peek (`Uid(0)`) changes nothing, and of many sessions
/// claiming at once every UID goes to exactly one.
pub async fn metadata_recent_claims(meta: std::sync::Arc<dyn MetadataStore>) {
    let (account, inbox, _) = account_with_messages(meta.as_ref(), 0).await;
    assert_eq!(
        meta.claim_recent(inbox.id, Uid(0)).await.expect("peek"),
        Uid(0)
    );
    assert_eq!(
        meta.claim_recent(inbox.id, Uid(3)).await.expect("claim"),
        Uid(0)
    );
    assert_eq!(
        meta.claim_recent(inbox.id, Uid(2)).await.expect("lower"),
        Uid(3)
    );
    assert_eq!(
        meta.claim_recent(inbox.id, Uid(0)).await.expect("peek"),
        Uid(3)
    );
    assert_eq!(
        meta.claim_recent(inbox.id, Uid(5)).await.expect("raise"),
        Uid(3)
    );
    let other = meta
        .create_mailbox(account.id, &unique("recent"), None)
        .await
        .expect("second mailbox");
    assert_eq!(
        meta.claim_recent(other.id, Uid(0))
            .await
            .expect("independent"),
        Uid(0)
    );
    let mut tasks = Vec::new();
    for up_to in 6..=25u32 {
        let meta = meta.clone();
        tasks.push(tokio::spawn(async move {
            let old = meta
                .claim_recent(inbox.id, Uid(up_to))
                .await
                .expect("concurrent claim");
            (old.0, up_to)
        }));
    }
    let mut claimed = vec![0u32; 26];
    for t in tasks {
        let (old, up_to) = t.await.expect("task");
        for uid in old + 1..=up_to {
            claimed[uid as usize] += 1;
        }
    }
    assert!(
        claimed[6..].iter().all(|n| *n == 1),
        "each UID recent in exactly one session: {claimed:?}"
    );
    assert_eq!(
        meta.claim_recent(inbox.id, Uid(0)).await.expect("peek"),
        Uid(25)
    );
    meta.delete_mailbox(account.id, other.id)
        .await
        .expect("delete");
    assert!(matches!(
        meta.claim_recent(other.id, Uid(1)).await,
        Err(crate::StoreError::NotFound(_))
    ));
}

/// Publish/subscribe, leases with fencing tokens, counters.
pub async fn coordinator(coord: &dyn Coordinator) {
    let account = AccountId(rand::random::<i32>().unsigned_abs() as i64);
    let mut sub = coord.subscribe(account).await.expect("subscribe");
    let mut other = coord
        .subscribe(AccountId(account.0 + 1))
        .await
        .expect("subscribe other");
    let event = MailboxEvent::Changed {
        account,
        mailbox: MailboxId(7),
        modseq: ModSeq(42),
    };
    coord.publish(event.clone()).await.expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("event within 5 s");
    assert_eq!(got, Some(event));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other.next())
            .await
            .is_err(),
        "events go only to the account's subscribers"
    );

    let key = unique("lease:");
    let l1 = coord
        .acquire_lease(&key, "node-a", Duration::from_millis(300))
        .await
        .expect("acquire")
        .expect("free lease granted");
    assert!(coord
        .acquire_lease(&key, "node-b", Duration::from_secs(5))
        .await
        .expect("acquire")
        .is_none());
    assert!(coord
        .renew_lease(&l1, Duration::from_millis(300))
        .await
        .expect("renew"));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let l2 = coord
        .acquire_lease(&key, "node-b", Duration::from_secs(5))
        .await
        .expect("acquire")
        .expect("expired lease can be taken");
    assert!(l2.token > l1.token, "fencing tokens grow");
    assert!(!coord
        .renew_lease(&l1, Duration::from_secs(1))
        .await
        .expect("renew"));
    coord
        .release_lease(&l1)
        .await
        .expect("stale release is a no-op");
    assert!(coord
        .acquire_lease(&key, "node-c", Duration::from_secs(5))
        .await
        .expect("acquire")
        .is_none());
    coord.release_lease(&l2).await.expect("release");
    let l3 = coord
        .acquire_lease(&key, "node-c", Duration::from_secs(5))
        .await
        .expect("acquire")
        .expect("released lease can be taken");
    assert_eq!(l3.token, l2.token + 1, "tokens count grants of one key");
    // Grants of other keys do not move this key's count.
    let other_key = unique("lease:");
    let o = coord
        .acquire_lease(&other_key, "node-c", Duration::from_secs(5))
        .await
        .expect("acquire")
        .expect("free");
    coord.release_lease(&o).await.expect("release");
    coord.release_lease(&l3).await.expect("release");
    let l4 = coord
        .acquire_lease(&key, "node-c", Duration::from_secs(5))
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(l4.token, l3.token + 1);
    coord.release_lease(&l4).await.expect("release");

    let ckey = unique("ctr:");
    let w = Duration::from_secs(3600);
    assert_eq!(coord.get_counter(&ckey, w).await.expect("get"), 0);
    assert_eq!(coord.incr_counter(&ckey, w).await.expect("incr"), 1);
    assert_eq!(coord.incr_counter(&ckey, w).await.expect("incr"), 2);
    assert_eq!(coord.get_counter(&ckey, w).await.expect("get"), 2);
    assert_eq!(coord.decr_counter(&ckey, w).await.expect("decr"), 1);
    assert_eq!(coord.decr_counter(&ckey, w).await.expect("decr"), 0);
    assert_eq!(
        coord.decr_counter(&ckey, w).await.expect("decr"),
        0,
        "never below zero"
    );
    assert_eq!(coord.incr_counter(&ckey, w).await.expect("incr"), 1);
    let never = unique("ctr:");
    assert_eq!(coord.decr_counter(&never, w).await.expect("decr"), 0);
    assert_eq!(coord.get_counter(&never, w).await.expect("get"), 0);

    let mkey = unique("mark:");
    assert!(!coord.is_marked(&mkey).await.expect("is_marked"));
    coord
        .mark(&mkey, Duration::from_millis(300))
        .await
        .expect("mark");
    assert!(coord.is_marked(&mkey).await.expect("is_marked"));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        !coord.is_marked(&mkey).await.expect("is_marked"),
        "markers expire"
    );
}

/// App passwords, TOTP secrets and sender grants: per-account uniqueness, revocation, and
/// removal together with the account.
/// Keyed records ([`crate::data`]): versions, compare-and-set, expiry, listing, scopes and
/// their removal with the account.
pub async fn metadata_records(meta: &dyn MetadataStore) {
    use crate::{DataScope, Expect};
    let domain = format!("{}.test", unique("r"));
    meta.create_domain(&domain).await.expect("domain");
    let a = meta
        .create_account(&format!("rita@{domain}"), "h", 0)
        .await
        .expect("account");
    let b = meta
        .create_account(&format!("ron@{domain}"), "h", 0)
        .await
        .expect("account");
    let (sa, sb) = (DataScope::Account(a.id), DataScope::Account(b.id));
    let kind = unique("k");
    assert!(meta.get_data(sa, &kind, "x").await.expect("get").is_none());
    let v1 = meta
        .put_data(sa, &kind, "x", b"one".to_vec(), None, Expect::Absent)
        .await
        .expect("create");
    assert_eq!(v1, 1, "a new record is version 1");
    assert!(matches!(
        meta.put_data(sa, &kind, "x", b"dup".to_vec(), None, Expect::Absent)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let got = meta
        .get_data(sa, &kind, "x")
        .await
        .expect("get")
        .expect("there");
    assert_eq!((got.value.as_slice(), got.version), (&b"one"[..], 1));
    assert!(
        meta.get_data(sb, &kind, "x").await.expect("get").is_none(),
        "records of one account are not another's"
    );
    let v2 = meta
        .put_data(sa, &kind, "x", b"two".to_vec(), None, Expect::Version(1))
        .await
        .expect("compare and set");
    assert_eq!(v2, 2);
    assert!(
        matches!(
            meta.put_data(sa, &kind, "x", b"stale".to_vec(), None, Expect::Version(1))
                .await,
            Err(StoreError::Conflict(_))
        ),
        "a writer holding an old version loses"
    );
    assert!(matches!(
        meta.put_data(sa, &kind, "nope", b"v".to_vec(), None, Expect::Version(1))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let v3 = meta
        .put_data(sa, &kind, "x", b"three".to_vec(), None, Expect::Any)
        .await
        .expect("unconditional");
    assert_eq!(v3, 3);
    assert_eq!(
        meta.get_data(sa, &kind, "x")
            .await
            .expect("get")
            .expect("there")
            .value,
        b"three"
    );

    // Expiry: a record past its time reads as absent and may be created anew.
    let past = crate::data::now() - 10;
    let future = crate::data::now() + 3600;
    meta.put_data(sa, &kind, "old", b"o".to_vec(), Some(past), Expect::Any)
        .await
        .expect("expired write");
    assert!(meta
        .get_data(sa, &kind, "old")
        .await
        .expect("get")
        .is_none());
    meta.put_data(
        sa,
        &kind,
        "old",
        b"n".to_vec(),
        Some(future),
        Expect::Absent,
    )
    .await
    .expect("an expired record counts as absent");
    let got = meta
        .get_data(sa, &kind, "old")
        .await
        .expect("get")
        .expect("there");
    assert_eq!(got.expires_at, Some(future));

    // Listing: key order, limit, only the kind asked for, no expired records.
    for k in ["c", "a", "b"] {
        meta.put_data(sb, &kind, k, k.as_bytes().to_vec(), None, Expect::Any)
            .await
            .expect("put");
    }
    meta.put_data(sb, &kind, "gone", b"g".to_vec(), Some(past), Expect::Any)
        .await
        .expect("put");
    meta.put_data(
        sb,
        &format!("{kind}-other"),
        "z",
        b"z".to_vec(),
        None,
        Expect::Any,
    )
    .await
    .expect("put");
    let keys: Vec<String> = meta
        .list_data(sb, &kind, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!(meta.list_data(sb, &kind, 2).await.expect("list").len(), 2);

    assert!(meta.delete_data(sb, &kind, "a").await.expect("delete"));
    assert!(!meta
        .delete_data(sb, &kind, "a")
        .await
        .expect("delete again"));
    assert!(meta.get_data(sb, &kind, "a").await.expect("get").is_none());

    // Bad names and oversized values are refused.
    assert!(matches!(
        meta.put_data(sa, "", "k", vec![], None, Expect::Any).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        meta.put_data(sa, &kind, "k\n", vec![], None, Expect::Any)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        meta.put_data(
            sa,
            &kind,
            "big",
            vec![0; crate::data::MAX_VALUE_BYTES + 1],
            None,
            Expect::Any
        )
        .await,
        Err(StoreError::Invalid(_))
    ));

    // Global records stay when accounts go; an account's records go with it.
    meta.put_data(
        DataScope::Global,
        &kind,
        "g",
        b"g".to_vec(),
        None,
        Expect::Any,
    )
    .await
    .expect("global");
    meta.delete_account(&a.address)
        .await
        .expect("delete account");
    assert!(meta.get_data(sa, &kind, "x").await.expect("get").is_none());
    assert!(meta
        .get_data(DataScope::Global, &kind, "g")
        .await
        .expect("get")
        .is_some());
    assert!(meta
        .delete_data(DataScope::Global, &kind, "g")
        .await
        .expect("delete"));
}

/// Sieve scripts kept as records ([`crate::sieve_scripts`]): one active at most, the
/// active one cannot be deleted, renames keep it active.
pub async fn metadata_sieve_scripts(meta: &dyn MetadataStore) {
    use crate::sieve_scripts as ss;
    use crate::DataScope;
    let domain = format!("{}.test", unique("s"));
    meta.create_domain(&domain).await.expect("domain");
    let a = meta
        .create_account(&format!("sam@{domain}"), "h", 0)
        .await
        .expect("account");
    let scope = DataScope::Account(a.id);
    assert!(ss::active(meta, scope).await.expect("active").is_none());
    ss::put(meta, scope, "main", "keep;").await.expect("put");
    ss::put(meta, scope, "other", "discard;")
        .await
        .expect("put");
    assert!(matches!(
        ss::set_active(meta, scope, Some("missing")).await,
        Err(StoreError::NotFound(_))
    ));
    ss::set_active(meta, scope, Some("main"))
        .await
        .expect("activate");
    let active = ss::active(meta, scope).await.expect("active").expect("one");
    assert_eq!(
        (active.name.as_str(), active.source.as_str()),
        ("main", "keep;")
    );
    assert!(matches!(
        ss::delete(meta, scope, "main").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        ss::rename(meta, scope, "main", "other").await,
        Err(StoreError::Conflict(_))
    ));
    ss::rename(meta, scope, "main", "renamed")
        .await
        .expect("rename");
    let names: Vec<(String, bool)> = ss::list(meta, scope)
        .await
        .expect("list")
        .into_iter()
        .map(|s| (s.name, s.active))
        .collect();
    assert_eq!(
        names,
        [("other".to_string(), false), ("renamed".to_string(), true)]
    );
    ss::set_active(meta, scope, None).await.expect("deactivate");
    ss::delete(meta, scope, "renamed").await.expect("delete");
    assert!(matches!(
        ss::delete(meta, scope, "renamed").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        ss::put(meta, scope, "bad/name", "keep;").await,
        Err(StoreError::Invalid(_))
    ));
    meta.delete_account(&a.address)
        .await
        .expect("delete account");
}

pub async fn metadata_credentials(meta: &dyn MetadataStore) {
    use crate::{NewAppPassword, TotpSecret};
    let domain = format!("{}.test", unique("c"));
    meta.create_domain(&domain).await.expect("domain");
    let a = meta
        .create_account(&format!("carol@{domain}"), "h", 0)
        .await
        .expect("account");
    let b = meta
        .create_account(&format!("dave@{domain}"), "h", 0)
        .await
        .expect("account");
    let new = |name: &str, tag: &str| NewAppPassword {
        name: name.into(),
        tag: tag.into(),
        hash: format!("$argon2id$hash-of-{name}"),
        created_at: 1_700_000_000,
    };
    let phone = meta
        .create_app_password(a.id, new("phone", "abcd"))
        .await
        .expect("create");
    assert_eq!(phone.account, a.id);
    assert_eq!(phone.last_used, None);
    assert!(matches!(
        meta.create_app_password(a.id, new("phone", "wxyz")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        meta.create_app_password(a.id, new("laptop", "abcd")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        meta.create_app_password(AccountId(i64::MAX), new("x", "qqqq"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    meta.create_app_password(a.id, new("laptop", "efgh"))
        .await
        .expect("second");
    // Names and tags are per account.
    meta.create_app_password(b.id, new("phone", "abcd"))
        .await
        .expect("same name and tag on another account");
    let names: Vec<String> = meta
        .list_app_passwords(a.id)
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["laptop", "phone"]);
    let found = meta
        .find_app_password(a.id, "abcd")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found, phone);
    assert!(meta
        .find_app_password(a.id, "zzzz")
        .await
        .expect("find")
        .is_none());
    meta.touch_app_password(phone.id, 1_700_000_500)
        .await
        .expect("touch");
    assert_eq!(
        meta.find_app_password(a.id, "abcd")
            .await
            .expect("find")
            .expect("found")
            .last_used,
        Some(1_700_000_500)
    );
    meta.revoke_app_password(a.id, "phone")
        .await
        .expect("revoke");
    assert!(matches!(
        meta.revoke_app_password(a.id, "phone").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(meta
        .find_app_password(a.id, "abcd")
        .await
        .expect("find")
        .is_none());
    assert!(
        meta.find_app_password(b.id, "abcd")
            .await
            .expect("find")
            .is_some(),
        "revoking one account's app password leaves the other's"
    );

    // TOTP.
    assert!(meta.totp_secret(a.id).await.expect("get").is_none());
    let secret = TotpSecret {
        secret: vec![7u8; 20],
        created_at: 5,
    };
    meta.set_totp_secret(a.id, Some(secret.clone()))
        .await
        .expect("set");
    assert_eq!(
        meta.totp_secret(a.id).await.expect("get"),
        Some(secret.clone())
    );
    let replaced = TotpSecret {
        secret: vec![9u8; 20],
        created_at: 6,
    };
    meta.set_totp_secret(a.id, Some(replaced.clone()))
        .await
        .expect("replace");
    assert_eq!(meta.totp_secret(a.id).await.expect("get"), Some(replaced));
    assert!(meta.totp_secret(b.id).await.expect("get").is_none());
    // A code is accepted once: the same step, or an earlier one, is refused after it.
    assert!(meta.accept_totp_step(a.id, 1000).await.expect("step"));
    assert!(
        !meta.accept_totp_step(a.id, 1000).await.expect("replay"),
        "a TOTP code cannot be replayed within its window"
    );
    assert!(!meta.accept_totp_step(a.id, 999).await.expect("older step"));
    assert!(meta.accept_totp_step(a.id, 1001).await.expect("next step"));
    meta.set_totp_secret(a.id, None).await.expect("clear");
    assert!(
        !meta.accept_totp_step(a.id, 2000).await.expect("no secret"),
        "no secret, no code"
    );
    assert!(meta.totp_secret(a.id).await.expect("get").is_none());
    assert!(matches!(
        meta.set_totp_secret(AccountId(i64::MAX), Some(secret))
            .await,
        Err(StoreError::NotFound(_))
    ));

    // Sender grants.
    meta.grant_sender(a.id, &format!("Team@{domain}"))
        .await
        .expect("grant");
    meta.grant_sender(a.id, &format!("team@{domain}"))
        .await
        .expect("granting twice is fine");
    meta.grant_sender(a.id, &format!("@{domain}"))
        .await
        .expect("domain grant");
    assert!(matches!(
        meta.grant_sender(a.id, "no-at-sign").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        meta.sender_grants(a.id).await.expect("grants"),
        [format!("@{domain}"), format!("team@{domain}")]
    );
    assert!(meta.sender_grants(b.id).await.expect("grants").is_empty());
    meta.revoke_sender(a.id, &format!("@{domain}"))
        .await
        .expect("revoke grant");
    assert!(matches!(
        meta.revoke_sender(a.id, &format!("@{domain}")).await,
        Err(StoreError::NotFound(_))
    ));

    // Everything goes with the account.
    meta.set_totp_secret(
        a.id,
        Some(TotpSecret {
            secret: vec![1; 20],
            created_at: 1,
        }),
    )
    .await
    .expect("set");
    meta.delete_account(&a.address).await.expect("delete");
    assert!(meta
        .list_app_passwords(a.id)
        .await
        .expect("list")
        .is_empty());
    assert!(meta.totp_secret(a.id).await.expect("get").is_none());
    assert!(meta.sender_grants(a.id).await.expect("grants").is_empty());
    meta.delete_account(&b.address).await.expect("delete");
    meta.delete_domain(&domain).await.expect("delete domain");
}

/// The outbound queue: durable entries with per-recipient state, a blob reference that
/// keeps the orphan sweep away, and entries that outlive the submitting account.
/// A W3C `traceparent` as the SMTP pipeline stores it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The trace a message was received under is kept with it, read back for the messages
/// that have one, and kept by COPY; a message without one is left out.
pub async fn metadata_message_traces(meta: &dyn MetadataStore) {
    let domain = format!("{}.test", unique("trace"));
    meta.create_domain(&domain).await.expect("domain");
    let a = meta
        .create_account(&format!("t@{domain}"), "h", 0)
        .await
        .expect("account");
    let inbox = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let archive = meta
        .create_mailbox(a.id, "Traced copies", None)
        .await
        .expect("create");
    let new = |raw: &str, trace: Option<&str>| NewMessage {
        account: a.id,
        mailbox: inbox.id,
        blob: BlobId::of(raw.as_bytes()),
        size: raw.len() as u64,
        internal_date: 1_700_000_000,
        flags: Flags::default(),
        summary: None,
        refs: Default::default(),
        trace: trace.map(str::to_string),
    };
    let appended = meta
        .append(
            vec![new("traced", Some(TRACEPARENT)), new("appended", None)],
            QuotaPolicy::Enforce,
        )
        .await
        .expect("append");
    let (traced, plain) = (appended[0].uid, appended[1].uid);
    assert_eq!(
        meta.message_traces(inbox.id, &[traced, plain, Uid(999)])
            .await
            .expect("traces"),
        vec![(traced, TRACEPARENT.to_string())]
    );
    let copied = meta
        .copy_messages(a.id, inbox.id, &[traced], archive.id)
        .await
        .expect("copy");
    assert_eq!(
        meta.message_traces(archive.id, &[copied[0].dest.uid])
            .await
            .expect("traces"),
        vec![(copied[0].dest.uid, TRACEPARENT.to_string())]
    );
}

/// Account settings and owner marks: defaults on a new account, every field kept through
/// each way of reading an account, a password or quota change leaves them alone, unknown
/// names refused, a domain's mark set and cleared.
pub async fn metadata_account_settings(meta: &dyn MetadataStore) {
    use crate::{AccountSettings, Protocols};
    let domain = format!("{}.test", unique("settings"));
    let d = meta.create_domain(&domain).await.expect("domain");
    assert_eq!(d.managed_by, None);
    let address = format!("s@{domain}");
    let a = meta
        .create_account(&address, "h", 0)
        .await
        .expect("account");
    assert_eq!(a.settings, AccountSettings::default());
    assert_eq!(a.settings.protocols, Protocols::ALL);

    let settings = AccountSettings {
        display_name: Some("Séverine Dupont".into()),
        suspended: true,
        protocols: Protocols {
            imap: true,
            pop3: false,
            submission: true,
            jmap: false,
        },
        managed_by: Some("operator:mail/severine".into()),
    };
    meta.set_account_settings(&address.to_uppercase(), &settings)
        .await
        .expect("set settings");
    meta.set_password_hash(&address, "h2")
        .await
        .expect("passwd");
    meta.set_quota(&address, 1 << 20).await.expect("quota");
    let by_address = meta
        .get_account(&address)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(by_address.settings, settings);
    assert_eq!(by_address.password_hash, "h2");
    let by_id = meta
        .get_account_by_id(a.id)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(by_id.settings, settings);
    let listed = meta.list_accounts(Some(&domain)).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].settings, settings);

    // Back to the defaults: nothing of the earlier settings survives.
    meta.set_account_settings(&address, &AccountSettings::default())
        .await
        .expect("reset");
    let reset = meta
        .get_account(&address)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(reset.settings, AccountSettings::default());

    assert!(matches!(
        meta.set_account_settings(&format!("nobody@{domain}"), &settings)
            .await,
        Err(crate::StoreError::NotFound(_))
    ));

    meta.set_domain_managed_by(&domain, Some("operator:mail/example"))
        .await
        .expect("mark domain");
    let marked = meta.get_domain(&domain).await.expect("get").expect("some");
    assert_eq!(marked.managed_by.as_deref(), Some("operator:mail/example"));
    let listed = meta.list_domains().await.expect("list");
    let entry = listed.iter().find(|x| x.name == domain).expect("listed");
    assert_eq!(entry.managed_by.as_deref(), Some("operator:mail/example"));
    meta.set_domain_managed_by(&domain, None)
        .await
        .expect("unmark domain");
    let unmarked = meta.get_domain(&domain).await.expect("get").expect("some");
    assert_eq!(unmarked.managed_by, None);
    assert!(matches!(
        meta.set_domain_managed_by(&format!("{}.test", unique("absent")), Some("x"))
            .await,
        Err(crate::StoreError::NotFound(_))
    ));

    // The domain quota: 0 when never set, kept beside the mark, back to 0.
    assert_eq!(unmarked.quota_bytes, 0);
    meta.set_domain_quota(&domain.to_uppercase(), 5 << 30)
        .await
        .expect("domain quota");
    meta.set_domain_managed_by(&domain, Some("operator:mail/example"))
        .await
        .expect("mark again");
    let q = meta.get_domain(&domain).await.expect("get").expect("some");
    assert_eq!(q.quota_bytes, 5 << 30);
    assert_eq!(q.managed_by.as_deref(), Some("operator:mail/example"));
    let listed = meta.list_domains().await.expect("list");
    let entry = listed.iter().find(|x| x.name == domain).expect("listed");
    assert_eq!(entry.quota_bytes, 5 << 30);
    meta.set_domain_quota(&domain, 0).await.expect("no quota");
    assert_eq!(
        meta.get_domain(&domain)
            .await
            .expect("get")
            .expect("some")
            .quota_bytes,
        0
    );
    assert!(matches!(
        meta.set_domain_quota(&format!("{}.test", unique("absent")), 1)
            .await,
        Err(crate::StoreError::NotFound(_))
    ));
}

/// DKIM keys: add, list in creation order, state changes, conflicts, delete; keys of one
/// domain never show under another.
pub async fn metadata_dkim_keys(meta: &dyn MetadataStore) {
    use crate::{DkimAlgorithm, DkimKey, DkimKeyState};
    let domain = format!("{}.test", unique("dkim"));
    let other = format!("{}.test", unique("dkim-other"));
    let key = |selector: &str, algorithm, created_at, der: &[u8]| DkimKey {
        domain: domain.clone(),
        selector: selector.to_string(),
        algorithm,
        private_der: der.to_vec(),
        state: DkimKeyState::Active,
        created_at,
        state_since: created_at,
    };
    assert!(meta.dkim_keys(&domain).await.expect("none").is_empty());
    let rsa = key(
        "mailfleet-rsa",
        DkimAlgorithm::Rsa,
        100,
        &[0x30, 0x82, 0, 1],
    );
    let ed = key(
        "mailfleet-ed25519",
        DkimAlgorithm::Ed25519,
        100,
        &[0x30, 0x2e, 0xff],
    );
    meta.add_dkim_key(rsa.clone()).await.expect("add rsa");
    meta.add_dkim_key(ed.clone()).await.expect("add ed");
    let mut dup = rsa.clone();
    dup.private_der = vec![1, 2, 3];
    assert!(matches!(
        meta.add_dkim_key(dup).await,
        Err(StoreError::Conflict(_))
    ));
    let mut newer = key("mailfleet-rsa-2", DkimAlgorithm::Rsa, 200, &[9; 40]);
    newer.state = DkimKeyState::Published;
    meta.add_dkim_key(newer.clone()).await.expect("add newer");
    let mut elsewhere = key("mailfleet-rsa", DkimAlgorithm::Rsa, 50, &[7]);
    elsewhere.domain = other.clone();
    meta.add_dkim_key(elsewhere.clone())
        .await
        .expect("same selector, other domain");

    // Creation order, then selector; the private key bytes come back as written.
    assert_eq!(
        meta.dkim_keys(&domain).await.expect("list"),
        vec![ed.clone(), rsa.clone(), newer.clone()]
    );
    assert_eq!(
        meta.dkim_keys(&other).await.expect("other"),
        vec![elsewhere]
    );

    meta.set_dkim_key_state(&domain, "mailfleet-rsa-2", DkimKeyState::Active, 300)
        .await
        .expect("activate");
    meta.set_dkim_key_state(&domain, "mailfleet-rsa", DkimKeyState::Retired, 300)
        .await
        .expect("retire");
    assert!(matches!(
        meta.set_dkim_key_state(&domain, "nope", DkimKeyState::Active, 300)
            .await,
        Err(StoreError::NotFound(_))
    ));
    let keys = meta.dkim_keys(&domain).await.expect("list");
    let state = |sel: &str| {
        keys.iter()
            .find(|k| k.selector == sel)
            .map(|k| (k.state, k.state_since, k.created_at))
    };
    assert_eq!(
        state("mailfleet-rsa"),
        Some((DkimKeyState::Retired, 300, 100))
    );
    assert_eq!(
        state("mailfleet-rsa-2"),
        Some((DkimKeyState::Active, 300, 200))
    );
    assert_eq!(
        state("mailfleet-ed25519"),
        Some((DkimKeyState::Active, 100, 100))
    );

    meta.delete_dkim_key(&domain, "mailfleet-rsa")
        .await
        .expect("delete");
    assert!(matches!(
        meta.delete_dkim_key(&domain, "mailfleet-rsa").await,
        Err(StoreError::NotFound(_))
    ));
    let left: Vec<String> = meta
        .dkim_keys(&domain)
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.selector)
        .collect();
    assert_eq!(left, ["mailfleet-ed25519", "mailfleet-rsa-2"]);
    // The other domain's key of the same selector is untouched.
    assert_eq!(meta.dkim_keys(&other).await.expect("other").len(), 1);
}

pub async fn metadata_outbound_queue(meta: &dyn MetadataStore) {
    use crate::{
        DsnRet, NewOutbound, NewOutboundRecipient, QueueId, RecipientState, RecipientUpdate,
    };
    let domain = format!("{}.test", unique("q"));
    meta.create_domain(&domain).await.expect("domain");
    let a = meta
        .create_account(&format!("erin@{domain}"), "h", 0)
        .await
        .expect("account");
    let inbox = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("inbox")
        .expect("exists");
    let blob = BlobId::of(unique("queued message ").as_bytes());
    let rcpt = |address: &str| NewOutboundRecipient {
        address: address.into(),
        notify: None,
        orcpt: None,
    };
    let msg = NewOutbound {
        blob: blob.clone(),
        size: 1234,
        sender: a.address.clone(),
        account: Some(a.id),
        envid: Some("env-1".into()),
        ret: Some(DsnRet::Headers),
        recipients: vec![
            NewOutboundRecipient {
                notify: Some("FAILURE,DELAY".into()),
                orcpt: Some("rfc822;x@remote.example".into()),
                ..rcpt("x@remote.example")
            },
            rcpt("y@other.example"),
        ],
        created_at: 1_700_000_000,
        trace: Some(TRACEPARENT.into()),
    };
    assert!(matches!(
        meta.enqueue_outbound(NewOutbound {
            recipients: vec![],
            ..msg.clone()
        })
        .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        meta.enqueue_outbound(NewOutbound {
            recipients: vec![rcpt("dup@remote.example"), rcpt("dup@remote.example")],
            ..msg.clone()
        })
        .await,
        Err(StoreError::Invalid(_))
    ));
    let q = meta.enqueue_outbound(msg.clone()).await.expect("enqueue");
    assert_eq!(q.blob, blob);
    assert_eq!(q.size, 1234);
    assert_eq!(q.sender, a.address);
    assert_eq!(q.account, Some(a.id));
    assert_eq!(q.envid.as_deref(), Some("env-1"));
    assert_eq!(q.ret, Some(DsnRet::Headers));
    assert_eq!(q.trace.as_deref(), Some(TRACEPARENT));
    assert_eq!(q.recipients.len(), 2);
    let first = &q.recipients[0];
    assert_eq!(first.address, "x@remote.example");
    assert_eq!(first.state, RecipientState::Queued);
    assert_eq!(first.attempts, 0);
    assert_eq!(first.next_attempt, 1_700_000_000);
    assert_eq!(first.notify.as_deref(), Some("FAILURE,DELAY"));
    assert_eq!(first.orcpt.as_deref(), Some("rfc822;x@remote.example"));
    assert_eq!(q.recipients[1].address, "y@other.example");
    assert_eq!(meta.get_outbound(q.id).await.expect("get"), Some(q.clone()));

    // The queue's reference keeps the blob when the last mailbox copy goes.
    let appended = meta
        .append(
            vec![NewMessage {
                account: a.id,
                mailbox: inbox.id,
                blob: blob.clone(),
                size: 1234,
                internal_date: 0,
                flags: Flags::default(),
                summary: None,
                refs: Default::default(),
                trace: None,
            }],
            QuotaPolicy::Enforce,
        )
        .await
        .expect("append");
    let expunged = meta
        .expunge(inbox.id, &[appended[0].uid])
        .await
        .expect("expunge");
    assert!(
        expunged.orphaned.is_empty(),
        "a queued blob is not orphaned by an expunge"
    );

    // Attempts.
    meta.update_outbound_recipient(
        q.id,
        "x@remote.example",
        RecipientUpdate {
            state: RecipientState::Queued,
            next_attempt: 1_700_000_600,
            last_error: Some("451 4.7.1 try later".into()),
            delay_warned: false,
            fence: None,
        },
    )
    .await
    .expect("update");
    meta.update_outbound_recipient(
        q.id,
        "y@other.example",
        RecipientUpdate {
            state: RecipientState::Delivered,
            next_attempt: 0,
            last_error: None,
            delay_warned: false,
            fence: None,
        },
    )
    .await
    .expect("update");
    assert!(matches!(
        meta.update_outbound_recipient(
            q.id,
            "nobody@remote.example",
            RecipientUpdate {
                state: RecipientState::Failed,
                next_attempt: 0,
                last_error: None,
                delay_warned: false,
                fence: None,
            }
        )
        .await,
        Err(StoreError::NotFound(_))
    ));
    let got = meta.get_outbound(q.id).await.expect("get").expect("exists");
    assert_eq!(got.recipients[0].attempts, 1);
    assert_eq!(got.recipients[0].next_attempt, 1_700_000_600);
    assert_eq!(
        got.recipients[0].last_error.as_deref(),
        Some("451 4.7.1 try later")
    );
    assert_eq!(got.recipients[1].state, RecipientState::Delivered);
    assert!(!got.recipients[0].delay_warned);

    // Fencing: once a lease token has written to an entry, an older one cannot; the delay
    // warning flag, once set, stays set.
    let attempt = |fence: u64, warned: bool| RecipientUpdate {
        state: RecipientState::Queued,
        next_attempt: 1_700_000_900,
        last_error: Some("451 4.4.1 later".into()),
        delay_warned: warned,
        fence: Some(fence),
    };
    meta.update_outbound_recipient(q.id, "x@remote.example", attempt(1000, true))
        .await
        .expect("fenced update");
    assert!(matches!(
        meta.update_outbound_recipient(q.id, "x@remote.example", attempt(999, false))
            .await,
        Err(StoreError::Conflict(_))
    ));
    meta.update_outbound_recipient(q.id, "x@remote.example", attempt(1000, false))
        .await
        .expect("the same token writes again");
    let got = meta.get_outbound(q.id).await.expect("get").expect("exists");
    assert_eq!(
        got.recipients[0].attempts, 3,
        "the refused write changed nothing"
    );
    assert!(got.recipients[0].delay_warned);
    assert!(matches!(
        meta.delete_outbound(q.id, Some(998)).await,
        Err(StoreError::Conflict(_))
    ));
    meta.update_outbound_recipient(q.id, "x@remote.example", attempt(1001, false))
        .await
        .expect("a newer token takes over");
    assert!(matches!(
        meta.update_outbound_recipient(q.id, "x@remote.example", attempt(1000, false))
            .await,
        Err(StoreError::Conflict(_))
    ));

    // Listing pages by id.
    let second = meta.enqueue_outbound(msg.clone()).await.expect("enqueue 2");
    assert!(second.id > q.id);
    let page = meta
        .list_outbound(QueueId(q.id.0 - 1), 1)
        .await
        .expect("list");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, q.id);
    let rest = meta.list_outbound(q.id, 100).await.expect("list");
    assert_eq!(rest.first().map(|m| m.id), Some(second.id));

    // Entries outlive the account that submitted them.
    meta.delete_account(&a.address)
        .await
        .expect("delete account");
    let kept = meta.get_outbound(q.id).await.expect("get").expect("kept");
    assert_eq!(kept.account, None);
    assert_eq!(kept.recipients.len(), 2);

    // Deleting entries releases the blob once the last reference is gone.
    assert!(meta
        .delete_outbound(q.id, None)
        .await
        .expect("delete")
        .is_empty());
    assert_eq!(
        meta.delete_outbound(second.id, None).await.expect("delete"),
        vec![blob.clone()]
    );
    assert!(matches!(
        meta.delete_outbound(second.id, None).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(meta.get_outbound(q.id).await.expect("get").is_none());
    meta.delete_domain(&domain).await.expect("delete domain");
}

/// Outbound delivery: which entries are due (only `Queued` recipients whose time has
/// come, oldest first) and "retry now" rescheduling.
pub async fn metadata_outbound_delivery(meta: &dyn MetadataStore) {
    use crate::{NewOutbound, NewOutboundRecipient, QueueId, RecipientState, RecipientUpdate};
    let rcpt = |address: &str| NewOutboundRecipient {
        address: address.into(),
        notify: None,
        orcpt: None,
    };
    let new = |at: i64, rcpts: Vec<NewOutboundRecipient>| NewOutbound {
        blob: BlobId::of(unique("due message ").as_bytes()),
        size: 10,
        sender: "s@due.example".into(),
        account: None,
        envid: None,
        ret: None,
        recipients: rcpts,
        created_at: at,
        trace: None,
    };
    // Far in the future so entries of other tests sharing the store never count.
    let base = 4_000_000_000;
    let late = meta
        .enqueue_outbound(new(base + 50, vec![rcpt("a@x.example")]))
        .await
        .expect("enqueue");
    let early = meta
        .enqueue_outbound(new(
            base + 10,
            vec![rcpt("b@x.example"), rcpt("c@x.example")],
        ))
        .await
        .expect("enqueue");
    let mine = |ids: Vec<QueueId>| -> Vec<QueueId> {
        ids.into_iter()
            .filter(|i| *i == late.id || *i == early.id)
            .collect()
    };
    assert!(mine(due_everywhere(meta, base, 100).await.expect("due")).is_empty());
    assert_eq!(
        mine(due_everywhere(meta, base + 10, 100).await.expect("due")),
        vec![early.id]
    );
    assert_eq!(
        mine(due_everywhere(meta, base + 100, 100).await.expect("due")),
        vec![early.id, late.id],
        "oldest attempt first, each entry once"
    );
    // Delivered and failed recipients are never due; a deferred one is due at its time.
    for (addr, state, next) in [
        ("b@x.example", RecipientState::Delivered, base),
        ("c@x.example", RecipientState::Queued, base + 1000),
    ] {
        meta.update_outbound_recipient(
            early.id,
            addr,
            RecipientUpdate {
                state,
                next_attempt: next,
                last_error: None,
                delay_warned: false,
                fence: None,
            },
        )
        .await
        .expect("update");
    }
    assert_eq!(
        mine(due_everywhere(meta, base + 100, 100).await.expect("due")),
        vec![late.id]
    );
    assert_eq!(
        meta.reschedule_outbound(early.id, base + 5)
            .await
            .expect("reschedule"),
        1,
        "only the queued recipient moves"
    );
    let e = meta
        .get_outbound(early.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(e.recipients[1].next_attempt, base + 5);
    assert_eq!(
        e.recipients[1].attempts, 1,
        "rescheduling is not an attempt"
    );
    assert_eq!(e.recipients[0].state, RecipientState::Delivered);
    assert_eq!(
        mine(due_everywhere(meta, base + 100, 1).await.expect("due")),
        vec![early.id],
        "limit respected"
    );
    assert!(matches!(
        meta.reschedule_outbound(QueueId(i64::MAX), base).await,
        Err(StoreError::NotFound(_))
    ));
    meta.delete_outbound(early.id, None).await.expect("delete");
    meta.delete_outbound(late.id, None).await.expect("delete");
}

/// The queue's depth and age by state: due entries (a queued recipient whose attempt is
/// now or past) with how long they have been due, deferred ones with the oldest's age;
/// delivered and failed recipients do not count. Compared as differences, since other
/// tests' entries may share the store.
pub async fn metadata_outbound_stats(meta: &dyn MetadataStore) {
    use crate::{NewOutbound, NewOutboundRecipient, RecipientState, RecipientUpdate};
    let new = |at: i64, rcpts: &[&str]| NewOutbound {
        blob: BlobId::of(unique("stats message ").as_bytes()),
        size: 10,
        sender: "s@stats.example".into(),
        account: None,
        envid: None,
        ret: None,
        recipients: rcpts
            .iter()
            .map(|a| NewOutboundRecipient {
                address: (*a).into(),
                notify: None,
                orcpt: None,
            })
            .collect(),
        created_at: at,
        trace: None,
    };
    let update = |state, next_attempt| RecipientUpdate {
        state,
        next_attempt,
        last_error: None,
        delay_warned: false,
        fence: None,
    };
    // Far in the future, so every other entry is due (and older) at `now`.
    let now = 4_100_000_000;
    let before = meta.outbound_queue_stats(now).await.expect("stats");
    let due = meta
        .enqueue_outbound(new(now - 100, &["a@x.example", "b@x.example"]))
        .await
        .expect("enqueue");
    let deferred = meta
        .enqueue_outbound(new(now - 50, &["c@x.example"]))
        .await
        .expect("enqueue");
    meta.update_outbound_recipient(
        deferred.id,
        "c@x.example",
        update(RecipientState::Queued, now + 600),
    )
    .await
    .expect("defer");
    let after = meta.outbound_queue_stats(now).await.expect("stats");
    assert_eq!(after.due, before.due + 1, "{before:?} {after:?}");
    assert_eq!(after.deferred, before.deferred + 1, "{before:?} {after:?}");
    let since = after.due_since.expect("a due entry");
    assert!(since <= now - 100, "{after:?}");
    if before.due == 0 {
        assert_eq!(since, now - 100);
    }
    if before.deferred == 0 {
        assert_eq!(after.oldest_deferred, Some(now - 50));
    }
    // One recipient delivered, the other failed: nothing of the entry is left to do.
    meta.update_outbound_recipient(
        due.id,
        "a@x.example",
        update(RecipientState::Delivered, now),
    )
    .await
    .expect("delivered");
    meta.update_outbound_recipient(due.id, "b@x.example", update(RecipientState::Failed, now))
        .await
        .expect("failed");
    let done = meta.outbound_queue_stats(now).await.expect("stats");
    assert_eq!(done.due, before.due, "{done:?}");
    assert_eq!(done.deferred, before.deferred + 1, "{done:?}");
    // The same entry, seen an hour later, is due.
    let later = meta.outbound_queue_stats(now + 3600).await.expect("stats");
    assert!(later.due > before.due, "{later:?}");
    meta.delete_outbound(due.id, None).await.expect("delete");
    meta.delete_outbound(deferred.id, None)
        .await
        .expect("delete");
}

/// One delivery attempt's writes: the claim before connecting and the record after, which
/// writes every recipient outcome and queues the DSNs in one transaction, all or nothing,
/// refused as a whole for a stale lease token.
pub async fn metadata_outbound_attempts(meta: &dyn MetadataStore) {
    use crate::{NewOutbound, NewOutboundRecipient, QueueId, RecipientState, RecipientUpdate};
    let rcpt = |address: &str| NewOutboundRecipient {
        address: address.into(),
        notify: None,
        orcpt: None,
    };
    let base = 4_100_000_000;
    let entry = meta
        .enqueue_outbound(NewOutbound {
            blob: BlobId::of(unique("attempted message ").as_bytes()),
            size: 10,
            sender: "s@attempt.example".into(),
            account: None,
            envid: None,
            ret: None,
            recipients: vec![
                rcpt("a@x.example"),
                rcpt("b@x.example"),
                rcpt("c@x.example"),
            ],
            created_at: base,
            trace: None,
        })
        .await
        .expect("enqueue");
    let id = entry.id;
    let dsn_to = unique("sender-") + "@attempt.example";
    let dsn = || NewOutbound {
        blob: BlobId::of(unique("dsn ").as_bytes()),
        size: 5,
        sender: String::new(),
        account: None,
        envid: None,
        ret: None,
        recipients: vec![rcpt(&dsn_to)],
        created_at: base,
        trace: None,
    };
    let dsn_entries = || async {
        let mut found = Vec::new();
        for m in meta.list_outbound(id, 10_000).await.expect("list") {
            if m.recipients.iter().any(|r| r.address == dsn_to) {
                found.push(m);
            }
        }
        found
    };
    let update = |state, next_attempt, warned: bool| RecipientUpdate {
        state,
        next_attempt,
        last_error: Some("why".into()),
        delay_warned: warned,
        fence: None,
    };
    let mine = |ids: Vec<QueueId>| ids.into_iter().filter(|i| *i == id).count();

    // The claim counts the attempt and moves every recipient to the backoff time.
    let all = |at: i64| {
        ["a@x.example", "b@x.example", "c@x.example"]
            .iter()
            .map(|a| (a.to_string(), at))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        meta.get_outbound(id)
            .await
            .expect("get")
            .expect("exists")
            .version,
        0,
        "never claimed"
    );
    let v1 = meta
        .claim_outbound_attempt(id, Some(100), 0, all(base + 600))
        .await
        .expect("claim");
    let m = meta.get_outbound(id).await.expect("get").expect("exists");
    assert!(m.recipients.iter().all(|r| r.attempts == 1
        && r.next_attempt == base + 600
        && r.state == RecipientState::Queued));
    assert_eq!(m.version, v1, "the claim returned the new version");
    assert_ne!(v1, 0, "and changed it");
    // A second worker that read the entry before that claim, holding the same lease token
    // (a coordinator that went back in time hands one out twice), cannot claim it too.
    assert!(matches!(
        meta.claim_outbound_attempt(id, Some(100), 0, all(base + 60))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let after = meta.get_outbound(id).await.expect("get").expect("exists");
    assert_eq!(after, m, "a lost claim writes nothing");
    assert_eq!(
        mine(due_everywhere(meta, base + 599, 10_000).await.expect("due")),
        0
    );
    assert_eq!(
        mine(due_everywhere(meta, base + 600, 10_000).await.expect("due")),
        1
    );
    assert!(matches!(
        meta.claim_outbound_attempt(id, Some(99), v1, all(base))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        meta.claim_outbound_attempt(QueueId(i64::MAX), None, 0, all(base))
            .await,
        Err(StoreError::NotFound(_))
    ));

    // A record naming a recipient that does not exist writes nothing at all.
    let outcomes = |third: &str| {
        vec![
            (
                "a@x.example".to_string(),
                update(RecipientState::Delivered, base, false),
            ),
            (
                "b@x.example".to_string(),
                update(RecipientState::Failed, base, false),
            ),
            (
                third.to_string(),
                update(RecipientState::Queued, base + 900, true),
            ),
        ]
    };
    assert!(matches!(
        meta.record_outbound_attempt(id, Some(100), outcomes("zz@x.example"), vec![dsn()])
            .await,
        Err(StoreError::NotFound(_))
    ));
    // A stale lease token writes nothing either.
    assert!(matches!(
        meta.record_outbound_attempt(id, Some(99), outcomes("c@x.example"), vec![dsn()])
            .await,
        Err(StoreError::Conflict(_))
    ));
    let m = meta.get_outbound(id).await.expect("get").expect("exists");
    assert!(
        m.recipients
            .iter()
            .all(|r| r.state == RecipientState::Queued
                && r.next_attempt == base + 600
                && r.last_error.is_none()
                && !r.delay_warned),
        "a failed record leaves no partial state: {m:?}"
    );
    assert!(dsn_entries().await.is_empty(), "and queues no DSN");

    // The whole record at once: states, the DSN entry, attempts not counted twice.
    let queued = meta
        .record_outbound_attempt(id, Some(100), outcomes("c@x.example"), vec![dsn()])
        .await
        .expect("record");
    assert_eq!(queued.len(), 1);
    let found = dsn_entries().await;
    assert_eq!(found.len(), 1, "one DSN entry");
    assert_eq!(found[0].id, queued[0]);
    assert_eq!(found[0].sender, "");
    assert_eq!(found[0].recipients[0].state, RecipientState::Queued);
    let m = meta.get_outbound(id).await.expect("get").expect("exists");
    let states: Vec<_> = m.recipients.iter().map(|r| (r.state, r.attempts)).collect();
    assert_eq!(
        states,
        vec![
            (RecipientState::Delivered, 1),
            (RecipientState::Failed, 1),
            (RecipientState::Queued, 1)
        ]
    );
    assert!(m.recipients[2].delay_warned);
    assert_eq!(m.recipients[2].next_attempt, base + 900);
    assert_eq!(
        mine(due_everywhere(meta, base + 899, 10_000).await.expect("due")),
        0
    );
    assert_eq!(
        mine(due_everywhere(meta, base + 900, 10_000).await.expect("due")),
        1
    );

    // The record changed the version: a claim acting on a read from before it (that saw
    // these recipients still queued) is refused.
    let recorded = meta.get_outbound(id).await.expect("get").expect("exists");
    assert_ne!(recorded.version, v1, "a record changes the version");
    assert!(matches!(
        meta.claim_outbound_attempt(id, Some(101), v1, all(base + 2000))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // The next claim leaves finished recipients alone.
    meta.claim_outbound_attempt(id, Some(101), recorded.version, all(base + 2000))
        .await
        .expect("claim");
    let m = meta.get_outbound(id).await.expect("get").expect("exists");
    let got: Vec<_> = m.recipients.iter().map(|r| (r.state, r.attempts)).collect();
    assert_eq!(
        got,
        vec![
            (RecipientState::Delivered, 1),
            (RecipientState::Failed, 1),
            (RecipientState::Queued, 2)
        ]
    );
    assert_eq!(m.recipients[2].next_attempt, base + 2000);
    // Token 101 wrote: 100 is stale now, for records as for claims.
    assert!(matches!(
        meta.record_outbound_attempt(id, Some(100), Vec::new(), vec![dsn()])
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(dsn_entries().await.len(), 1);

    meta.delete_outbound(queued[0], None).await.expect("delete");
    meta.delete_outbound(id, None).await.expect("delete");
}

/// `\Noselect` placeholders, ACLs with their reverse lookup, and metadata entries: what
/// IMAP's DELETE of a parent, ACL (RFC 4314) and METADATA (RFC 5464) rely on.
pub async fn metadata_acl_and_annotations(meta: &dyn MetadataStore) {
    let (owner, inbox, uids) = account_with_messages(meta, 2).await;
    let domain = owner.address.split('@').nth(1).expect("domain").to_string();
    let grantee = meta
        .create_account(&format!("grantee@{domain}"), "h", 0)
        .await
        .expect("create grantee");

    // A placeholder keeps its name and loses its messages, ACL and metadata.
    let parent = meta
        .create_mailbox(owner.id, "parent", None)
        .await
        .expect("create parent");
    meta.create_mailbox(owner.id, "parent/child", None)
        .await
        .expect("create child");
    meta.copy_messages(owner.id, inbox.id, &uids, parent.id)
        .await
        .expect("copy");
    meta.set_acl(owner.id, parent.id, &grantee.address, "lr")
        .await
        .expect("acl on parent");
    let parent_scope = MetadataScope {
        account: owner.id,
        mailbox: Some(parent.id),
    };
    let limits = MetadataLimits {
        max_entries: 3,
        max_bytes: 1000,
    };
    meta.set_metadata(
        parent_scope,
        vec![("/shared/comment".into(), Some(b"parent".to_vec()))],
        limits,
    )
    .await
    .expect("metadata on parent");
    let before = meta
        .get_mailbox(owner.id, "parent")
        .await
        .expect("get")
        .expect("parent");
    assert!(!before.noselect);
    meta.set_mailbox_noselect(owner.id, parent.id, true)
        .await
        .expect("to placeholder");
    let ph = meta
        .get_mailbox(owner.id, "parent")
        .await
        .expect("get")
        .expect("kept");
    assert!(ph.noselect, "the name stays as a placeholder");
    assert_eq!(ph.message_count, 0);
    assert!(meta
        .list_messages(parent.id, Uid(0), 10)
        .await
        .expect("list")
        .is_empty());
    assert!(meta.get_acl(parent.id).await.expect("acl").is_empty());
    assert!(meta
        .get_metadata(parent_scope)
        .await
        .expect("md")
        .is_empty());
    assert!(meta
        .shared_with(&grantee.address)
        .await
        .expect("shared")
        .is_empty());
    meta.set_mailbox_noselect(owner.id, parent.id, false)
        .await
        .expect("back to a mailbox");
    let again = meta
        .get_mailbox(owner.id, "parent")
        .await
        .expect("get")
        .expect("back");
    assert!(!again.noselect);
    assert_ne!(
        again.uid_validity, ph.uid_validity,
        "a new mailbox, a new UIDVALIDITY"
    );
    assert!(matches!(
        meta.set_mailbox_noselect(grantee.id, parent.id, true).await,
        Err(StoreError::NotFound(_))
    ));

    // ACLs, in both directions.
    let shared = meta
        .create_mailbox(owner.id, "shared", None)
        .await
        .expect("create shared");
    meta.set_acl(owner.id, shared.id, &grantee.address, "lrs")
        .await
        .expect("grant");
    meta.set_acl(owner.id, shared.id, "anyone", "l")
        .await
        .expect("grant anyone");
    meta.set_acl(owner.id, shared.id, &grantee.address, "lrsw")
        .await
        .expect("replace");
    assert!(matches!(
        meta.set_acl(grantee.id, shared.id, "x@y.test", "l").await,
        Err(StoreError::NotFound(_))
    ));
    let mut acl = meta.get_acl(shared.id).await.expect("get acl");
    acl.sort_by(|a, b| a.identifier.cmp(&b.identifier));
    assert_eq!(
        acl,
        vec![
            AclEntry {
                identifier: "anyone".into(),
                rights: "l".into()
            },
            AclEntry {
                identifier: grantee.address.clone(),
                rights: "lrsw".into()
            },
        ]
    );
    assert_eq!(
        meta.shared_with(&grantee.address).await.expect("shared"),
        vec![SharedMailbox {
            owner: owner.id,
            mailbox: shared.id,
            rights: "lrsw".into()
        }]
    );
    // Rights follow the mailbox through a rename (they are kept by id).
    meta.rename_mailbox(owner.id, shared.id, "renamed")
        .await
        .expect("rename");
    assert_eq!(meta.get_acl(shared.id).await.expect("acl").len(), 2);
    meta.set_acl(owner.id, shared.id, "anyone", "")
        .await
        .expect("remove");
    assert_eq!(meta.get_acl(shared.id).await.expect("acl").len(), 1);

    // Metadata: per scope, limits enforced in the write, all or nothing.
    let own = MetadataScope {
        account: owner.id,
        mailbox: Some(shared.id),
    };
    let theirs = MetadataScope {
        account: grantee.id,
        mailbox: Some(shared.id),
    };
    let server = MetadataScope {
        account: grantee.id,
        mailbox: None,
    };
    meta.set_metadata(
        own,
        vec![
            ("/shared/comment".into(), Some(b"hello".to_vec())),
            ("/private/comment".into(), Some(b"mine".to_vec())),
        ],
        limits,
    )
    .await
    .expect("set");
    meta.set_metadata(
        theirs,
        vec![("/private/comment".into(), Some(b"theirs".to_vec()))],
        limits,
    )
    .await
    .expect("set theirs");
    meta.set_metadata(
        server,
        vec![("/private/vendor/x".into(), Some(vec![0, 1, 2]))],
        limits,
    )
    .await
    .expect("set server");
    assert_eq!(
        meta.get_metadata(own).await.expect("get"),
        vec![
            ("/private/comment".to_string(), b"mine".to_vec()),
            ("/shared/comment".to_string(), b"hello".to_vec()),
        ]
    );
    assert_eq!(
        meta.get_metadata(theirs).await.expect("get"),
        vec![("/private/comment".to_string(), b"theirs".to_vec())]
    );
    assert_eq!(
        meta.get_metadata(server).await.expect("get"),
        vec![("/private/vendor/x".to_string(), vec![0, 1, 2])]
    );
    // Too many entries: refused, and nothing of the write is kept.
    assert!(matches!(
        meta.set_metadata(
            own,
            vec![
                ("/shared/a".into(), Some(b"1".to_vec())),
                ("/shared/b".into(), Some(b"2".to_vec())),
            ],
            limits,
        )
        .await,
        Err(StoreError::QuotaExceeded(_))
    ));
    assert_eq!(meta.get_metadata(own).await.expect("get").len(), 2);
    // Too many bytes.
    assert!(matches!(
        meta.set_metadata(
            own,
            vec![("/shared/big".into(), Some(vec![b'x'; 2000]))],
            limits,
        )
        .await,
        Err(StoreError::QuotaExceeded(_))
    ));
    // Replace and remove.
    meta.set_metadata(
        own,
        vec![
            ("/shared/comment".into(), Some(b"changed".to_vec())),
            ("/private/comment".into(), None),
        ],
        limits,
    )
    .await
    .expect("replace and remove");
    assert_eq!(
        meta.get_metadata(own).await.expect("get"),
        vec![("/shared/comment".to_string(), b"changed".to_vec())]
    );
    assert!(matches!(
        meta.set_metadata(
            MetadataScope {
                account: owner.id,
                mailbox: Some(MailboxId(i64::MAX - 7)),
            },
            vec![("/shared/x".into(), Some(b"1".to_vec()))],
            limits,
        )
        .await,
        Err(StoreError::NotFound(_))
    ));

    // Deleting the mailbox takes its ACL and every user's metadata on it.
    meta.delete_mailbox(owner.id, shared.id)
        .await
        .expect("delete");
    assert!(meta.get_acl(shared.id).await.expect("acl").is_empty());
    assert!(meta.get_metadata(own).await.expect("md").is_empty());
    assert!(meta.get_metadata(theirs).await.expect("md").is_empty());
    assert!(meta
        .shared_with(&grantee.address)
        .await
        .expect("shared")
        .is_empty());

    // Deleting the grantee's account drops the rights granted to its address.
    let other = meta
        .create_mailbox(owner.id, "other", None)
        .await
        .expect("create other");
    meta.set_acl(owner.id, other.id, &grantee.address, "lr")
        .await
        .expect("grant");
    meta.delete_account(&grantee.address)
        .await
        .expect("delete grantee");
    assert!(meta.get_acl(other.id).await.expect("acl").is_empty());
    assert!(meta.get_metadata(server).await.expect("md").is_empty());
}

/// The full-text index: pending messages, exact substring answers per field, the
/// needle-length floor, replacement, and entries carried by COPY/MOVE and removed by
/// expunge and mailbox deletion.
pub async fn metadata_text_index(meta: &dyn MetadataStore) {
    use crate::text_index::{MessageText, TextMatches, TextPiece};
    fn text(pieces: &[(&str, &str)], complete: bool) -> MessageText {
        MessageText {
            pieces: pieces
                .iter()
                .map(|(f, t)| TextPiece {
                    field: f.to_string(),
                    text: t.to_string(),
                })
                .collect(),
            complete,
        }
    }
    let fields = |f: &[&str]| -> Vec<String> { f.iter().map(|s| s.to_string()).collect() };
    let (account, inbox, uids) = account_with_messages(meta, 3).await;
    let other = meta
        .create_mailbox(account.id, "Other", None)
        .await
        .expect("create mailbox");
    let search = |mb: MailboxId, f: &[&str], needle: &str| {
        let f = fields(f);
        let needle = needle.to_string();
        async move {
            meta.search_text(mb, &f, &needle)
                .await
                .expect("search_text")
        }
    };
    let answer = |matched: &[Uid], unverified: &[Uid]| {
        Some(TextMatches {
            matched: matched.to_vec(),
            unverified: unverified.to_vec(),
        })
    };

    // Not indexed yet: every message is unverified, and listed for the reindex.
    assert_eq!(
        search(inbox.id, &["body"], "hello").await,
        answer(&[], &uids),
        "appended messages are pending"
    );
    assert_eq!(
        meta.unindexed_messages(inbox.id, Uid(0), 10)
            .await
            .expect("unindexed"),
        uids
    );
    assert_eq!(
        meta.unindexed_messages(inbox.id, uids[0], 1)
            .await
            .expect("unindexed after"),
        vec![uids[1]]
    );

    meta.index_text(
        inbox.id,
        vec![
            (
                uids[0],
                text(
                    &[
                        ("subject", "greetings"),
                        ("body", "hello world, say \"hi\" now"),
                    ],
                    true,
                ),
            ),
            (uids[1], text(&[("body", "goodbye grüße")], true)),
            // Indexed incompletely: found where its texts say so, unverified otherwise.
            (uids[2], text(&[("subject", "hello there")], false)),
            (Uid(9999), text(&[("body", "no such message")], true)),
        ],
    )
    .await
    .expect("index_text");
    assert_eq!(
        search(inbox.id, &["body"], "hello").await,
        answer(&[uids[0]], &[uids[2]])
    );
    assert_eq!(
        search(inbox.id, &["subject"], "hello").await,
        answer(&[uids[2]], &[])
    );
    assert_eq!(
        search(inbox.id, &["subject", "body"], "ello").await,
        answer(&[uids[0], uids[2]], &[])
    );
    assert_eq!(
        search(inbox.id, &["body"], "lo wor").await,
        answer(&[uids[0]], &[uids[2]]),
        "substrings across words"
    );
    assert_eq!(
        search(inbox.id, &["body"], "\"hi\"").await,
        answer(&[uids[0]], &[uids[2]]),
        "quotes are plain characters"
    );
    assert_eq!(
        search(inbox.id, &["body"], "üße").await,
        answer(&[uids[1]], &[uids[2]]),
        "code points, not bytes"
    );
    assert_eq!(
        search(inbox.id, &["body"], "HELLO").await,
        answer(&[], &[uids[2]]),
        "exact: case folding is the caller's"
    );
    assert_eq!(
        search(inbox.id, &["body"], "world!").await,
        answer(&[], &[uids[2]])
    );
    assert_eq!(
        search(inbox.id, &["body"], "no such").await,
        answer(&[], &[uids[2]]),
        "texts of a message that does not exist are not kept"
    );
    assert_eq!(search(inbox.id, &["body"], "he").await, None, "too short");
    assert!(meta
        .unindexed_messages(inbox.id, Uid(0), 10)
        .await
        .expect("unindexed")
        .is_empty());

    // COPY carries entries (and the incomplete mark), MOVE too.
    let copied = meta
        .copy_messages(account.id, inbox.id, &[uids[0], uids[2]], other.id)
        .await
        .expect("copy");
    let (c0, c2) = (copied[0].dest.uid, copied[1].dest.uid);
    assert_eq!(
        search(other.id, &["body"], "hello").await,
        answer(&[c0], &[c2])
    );
    assert_eq!(
        search(other.id, &["subject"], "there").await,
        answer(&[c2], &[])
    );
    let (moved, _) = meta
        .move_messages(account.id, inbox.id, &[uids[1]], other.id)
        .await
        .expect("move");
    let m1 = moved[0].dest.uid;
    assert_eq!(
        search(other.id, &["body"], "goodbye").await,
        answer(&[m1], &[c2])
    );
    assert_eq!(
        search(inbox.id, &["body"], "goodbye").await,
        answer(&[], &[uids[2]]),
        "a moved message leaves the source's index"
    );

    // Expunge removes entries; indexing again replaces them.
    meta.expunge(inbox.id, &[uids[0]]).await.expect("expunge");
    assert_eq!(
        search(inbox.id, &["body"], "hello").await,
        answer(&[], &[uids[2]])
    );
    meta.index_text(inbox.id, vec![(uids[2], text(&[("body", "fresh")], true))])
        .await
        .expect("reindex");
    assert_eq!(
        search(inbox.id, &["subject"], "hello").await,
        answer(&[], &[])
    );
    assert_eq!(
        search(inbox.id, &["body"], "fresh").await,
        answer(&[uids[2]], &[])
    );
    assert_eq!(
        search(other.id, &["body"], "hello").await,
        answer(&[c0], &[c2]),
        "copies are independent of their originals"
    );

    // A copy of a message never indexed is pending as well.
    let body = b"Subject: late\r\n\r\nlate\r\n";
    let late = meta
        .append(
            vec![message_with(
                &account,
                &inbox,
                &BlobId::of(body),
                body.len(),
            )],
            QuotaPolicy::Enforce,
        )
        .await
        .expect("append")[0]
        .uid;
    let late_copy = meta
        .copy_messages(account.id, inbox.id, &[late], other.id)
        .await
        .expect("copy pending")[0]
        .dest
        .uid;
    assert_eq!(
        meta.unindexed_messages(other.id, Uid(0), 10)
            .await
            .expect("unindexed"),
        vec![late_copy]
    );

    // Deleting the mailbox removes its entries.
    meta.delete_mailbox(account.id, other.id)
        .await
        .expect("delete mailbox");
    assert_eq!(search(other.id, &["body"], "hello").await, answer(&[], &[]));
    assert!(meta
        .unindexed_messages(other.id, Uid(0), 10)
        .await
        .expect("unindexed")
        .is_empty());
    assert!(
        meta.search_text(inbox.id, &[], "hello").await.is_err(),
        "a search names at least one field"
    );
}

/// What the capacity model (docs/capacity.md) multiplies: the backend's own statements per
/// stored message and per store call of the IMAP mix, read through `counts` (a snapshot of
/// the backend's counters, each kind in its own slot) before and after each step. Returns
/// `(step, per-call deltas)`; the caller prints them. Asserts only what holds for any
/// backend: every step costs something, and appends do not cost more per message when
/// the mailbox is larger.
pub async fn capacity_counts<const N: usize>(
    meta: &dyn MetadataStore,
    counts: &dyn Fn() -> [u64; N],
) -> Vec<(&'static str, [f64; N])> {
    let (account, inbox, _) = account_with_messages(meta, 0).await;
    let per = |before: [u64; N], after: [u64; N], n: usize| -> [f64; N] {
        let mut out = [0.0; N];
        for i in 0..N {
            out[i] = (after[i] - before[i]) as f64 / n as f64;
        }
        out
    };
    let append = async |i: usize| {
        let body = format!("Subject: capacity {i} {}\r\n\r\nbody\r\n", unique(""));
        let id = BlobId::of(body.as_bytes());
        meta.pin_blob(&id).await.expect("pin");
        let mut m = message_with(&account, &inbox, &id, body.len());
        m.summary = Some(vec![b'x'; 1_500]);
        meta.append(vec![m], QuotaPolicy::Allow)
            .await
            .expect("append")[0]
            .uid
    };
    let mut out = Vec::new();
    const BATCH: usize = 100;
    let before = counts();
    for i in 0..BATCH {
        append(i).await;
    }
    let first = per(before, counts(), BATCH);
    out.push(("append (pin + append), first 100", first));
    let before = counts();
    for i in BATCH..2 * BATCH {
        append(i).await;
    }
    let second = per(before, counts(), BATCH);
    out.push(("append (pin + append), next 100", second));
    let total = |c: &[f64; N]| c.iter().sum::<f64>();
    assert!(total(&first) > 0.0);
    assert!(
        total(&second) <= total(&first) * 1.25 + 1.0,
        "appends cost more as the mailbox grows: {first:?} then {second:?}"
    );
    let before = counts();
    meta.mailbox_usage(inbox.id).await.expect("usage");
    out.push(("STATUS (mailbox_usage)", per(before, counts(), 1)));
    let before = counts();
    meta.list_messages(inbox.id, Uid(0), 10_000)
        .await
        .expect("list");
    out.push(("SELECT listing, 200 messages", per(before, counts(), 1)));
    let before = counts();
    meta.store_flags(
        inbox.id,
        &[Uid(3)],
        FlagOp::Add,
        &Flags::from_storage("\\Seen"),
    )
    .await
    .expect("store");
    out.push(("STORE one message", per(before, counts(), 1)));
    let before = counts();
    meta.changes_with_messages(inbox.id, ModSeq(1))
        .await
        .expect("changes");
    out.push((
        "change-log refresh (NOOP/IDLE wake)",
        per(before, counts(), 1),
    ));
    let before = counts();
    meta.expunge(inbox.id, &[Uid(5)]).await.expect("expunge");
    out.push(("EXPUNGE one message", per(before, counts(), 1)));
    out
}
