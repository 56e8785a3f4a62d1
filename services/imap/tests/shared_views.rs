//! Sessions on the same mailbox share one message list (services/imap/src/views.rs), and a
//! shared view answers exactly as a private one would: these tests drive several views of
//! one mailbox through appends, flag changes and expunges on the real embedded store and
//! compare every view with the store after every step.

use mailfleet_imap::selected::{RecentMode, Selected};
use mailfleet_imap::views::HISTORY_CHANGES;
use mailfleet_imap::SharedViews;
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::*;

struct Fixture {
    _dir: tempfile::TempDir,
    stores: Stores,
    account: AccountId,
    inbox: Mailbox,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 64).expect("stores");
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
    Fixture {
        _dir: dir,
        stores,
        account: acct.id,
        inbox,
    }
}

impl Fixture {
    async fn append(&self, n: u32) {
        let raw = bytes::Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n");
        let blob = self.stores.blobs.put(raw.clone()).await.expect("blob");
        let batch = (0..n)
            .map(|_| NewMessage {
                account: self.account,
                mailbox: self.inbox.id,
                blob: blob.clone(),
                size: raw.len() as u64,
                internal_date: 1_700_000_000,
                flags: Flags::default(),
                summary: None,
                refs: Default::default(),
                trace: None,
            })
            .collect();
        self.stores
            .meta
            .append(batch, QuotaPolicy::Allow)
            .await
            .expect("append");
    }

    async fn mailbox(&self) -> Mailbox {
        self.stores
            .meta
            .get_mailbox(self.account, "INBOX")
            .await
            .expect("get")
            .expect("inbox")
    }

    async fn select(&self, views: &SharedViews) -> Selected {
        Selected::load(
            &self.stores,
            views,
            &self.mailbox().await,
            false,
            RecentMode::Off,
        )
        .await
        .expect("load")
    }

    /// The mailbox as the store has it: (uid, flags).
    async fn truth(&self) -> Vec<(Uid, Vec<String>)> {
        self.stores
            .meta
            .list_messages(self.inbox.id, Uid(0), 1_000_000)
            .await
            .expect("list")
            .into_iter()
            .map(|m| (m.uid, m.flags.iter().map(str::to_string).collect()))
            .collect()
    }

    async fn set_flag(&self, uids: &[Uid], flag: &str) {
        self.stores
            .meta
            .store_flags(self.inbox.id, uids, FlagOp::Add, &Flags::new([flag]))
            .await
            .expect("store");
    }
}

fn view(sel: &Selected) -> Vec<(Uid, Vec<String>)> {
    sel.messages()
        .map(|m| (m.uid, m.flags.iter().map(str::to_string).collect()))
        .collect()
}

#[tokio::test]
async fn sessions_on_one_mailbox_share_one_message_list() {
    let f = fixture().await;
    f.append(300).await;
    let views = SharedViews::new();
    let mut a = f.select(&views).await;
    let mut b = f.select(&views).await;
    assert_eq!(views.live(), 1, "one shared view for one mailbox");
    assert!(a.shares_snapshot().await && b.shares_snapshot().await);
    assert_eq!(view(&a), f.truth().await);

    // Another client flags a message: both sessions report it, and share again.
    f.set_flag(&[Uid(7)], "\\Flagged").await;
    let ua = a.refresh(&f.stores, true).await.expect("refresh a");
    let ub = b.refresh(&f.stores, true).await.expect("refresh b");
    assert_eq!(ua.flags_changed, vec![Uid(7)]);
    assert_eq!(ub.flags_changed, vec![Uid(7)]);
    assert!(a.shares_snapshot().await && b.shares_snapshot().await);

    // An expunge while `a` may not report it (during FETCH): `a` keeps the message and its
    // own copy; `b` reports it and stays shared.
    f.stores
        .meta
        .expunge(f.inbox.id, &[Uid(3)])
        .await
        .expect("expunge");
    let ua = a.refresh(&f.stores, false).await.expect("refresh a");
    assert!(ua.expunged.is_empty());
    assert_eq!(a.len(), 300);
    assert!(!a.shares_snapshot().await, "a holds back an expunge");
    let ub = b.refresh(&f.stores, true).await.expect("refresh b");
    assert_eq!(ub.expunged, vec![(3, Uid(3))]);
    assert!(b.shares_snapshot().await);
    // New mail while `a` still holds the expunge: both see it.
    f.append(2).await;
    let ua = a.refresh(&f.stores, false).await.expect("refresh a");
    assert_eq!(ua.exists, Some(302));
    let ua = a.refresh(&f.stores, true).await.expect("refresh a");
    assert_eq!(ua.expunged, vec![(3, Uid(3))]);
    assert!(
        a.shares_snapshot().await,
        "a rejoins once it reported the expunge"
    );
    b.refresh(&f.stores, true).await.expect("refresh b");
    assert_eq!(view(&a), f.truth().await);
    assert_eq!(view(&b), f.truth().await);

    // The shared view goes away with the last session that had the mailbox selected.
    drop(a);
    drop(b);
    assert_eq!(views.live(), 0);
}

/// A deterministic mix of appends, flag changes and expunges, with three sessions
/// refreshing at different rates (one holding expunges back for a while); every session
/// must end equal to the store, and must have reported every expunge and every new message
/// it saw exactly once.
#[tokio::test]
async fn shared_views_stay_exact_under_interleaved_changes() {
    let f = fixture().await;
    f.append(50).await;
    let views = SharedViews::new();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(f.select(&views).await);
    }
    // Each session's own count of messages, maintained only from what it reported.
    let mut counts: Vec<i64> = sessions.iter().map(|s| i64::from(s.len())).collect();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for step in 0..200u32 {
        match next() % 4 {
            0 => f.append(1 + (next() % 3) as u32).await,
            1 => {
                let truth = f.truth().await;
                if !truth.is_empty() {
                    let uid = truth[(next() as usize) % truth.len()].0;
                    f.set_flag(&[uid], if step % 2 == 0 { "\\Seen" } else { "$Label1" })
                        .await;
                }
            }
            2 => {
                let truth = f.truth().await;
                if truth.len() > 5 {
                    let uid = truth[(next() as usize) % truth.len()].0;
                    f.stores
                        .meta
                        .expunge(f.inbox.id, &[uid])
                        .await
                        .expect("expunge");
                }
            }
            _ => {}
        }
        for (i, s) in sessions.iter_mut().enumerate() {
            // Session 0 refreshes every step, 1 every third, 2 every fifth and holds
            // expunges back unless the step is a multiple of 15.
            let due = match i {
                0 => true,
                1 => step % 3 == 0,
                _ => step % 5 == 0,
            };
            if !due {
                continue;
            }
            let allow = i != 2 || step % 15 == 0;
            let u = s.refresh(&f.stores, allow).await.expect("refresh");
            counts[i] -= u.expunged.len() as i64;
            if let Some(n) = u.exists {
                counts[i] = i64::from(n);
            }
            assert_eq!(counts[i], i64::from(s.len()), "session {i} step {step}");
        }
    }
    let truth = f.truth().await;
    for (i, s) in sessions.iter_mut().enumerate() {
        s.refresh(&f.stores, true).await.expect("refresh");
        assert_eq!(view(s), truth, "session {i}");
        assert!(s.shares_snapshot().await, "session {i} shares the snapshot");
    }
}

/// A session that did not refresh while more changes happened than the shared history
/// keeps reads the change log itself, then rejoins the shared view.
#[tokio::test]
async fn a_session_behind_the_shared_history_catches_up_alone() {
    let f = fixture().await;
    f.append(2_000).await;
    let views = SharedViews::new();
    let mut idle = f.select(&views).await;
    let mut busy = f.select(&views).await;
    let uids: Vec<Uid> = (1..=2_000).map(Uid).collect();
    let flags = ["$A", "$B", "$C", "$D", "$E", "$F"];
    assert!(flags.len() * uids.len() > HISTORY_CHANGES);
    for flag in flags {
        f.set_flag(&uids, flag).await;
        busy.refresh(&f.stores, true).await.expect("busy refresh");
    }
    let u = idle.refresh(&f.stores, true).await.expect("idle refresh");
    assert_eq!(u.flags_changed.len(), 2_000);
    assert!(u.new_keywords);
    let truth = f.truth().await;
    assert_eq!(view(&idle), truth);
    assert!(
        idle.shares_snapshot().await,
        "equal to the snapshot: shared again"
    );
    assert!(busy.shares_snapshot().await);
}
