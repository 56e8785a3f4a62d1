//! Full-text indexing off the delivery path.
//!
//! Why: indexing a message is derived work. A delivery or an APPEND is acknowledged once
//! the message is durable in its mailbox; waiting for its index entries as well put a
//! second commit on every acknowledgement, and each message indexed alone made the index
//! flush and merge its segments once per message (the profile of an SMTP ingest run spent
//! ~21% of the server's CPU in those flushes). Here texts are queued, and one task per
//! process writes whatever is waiting in one [`MetadataStore::index_text`] call per
//! mailbox.
//!
//! Exactness does not depend on it: until its texts are written, a message is *pending* in
//! the index (see [`crate::text_index`]) and every search looks at it directly. A crash
//! before the write leaves it pending as well (`mailfleet reindex` indexes it later).
//!
//! Memory is bounded: queued texts hold at most [`QUEUE_BYTES`]. Past that:
//! - with a text extractor set ([`TextIndexer::set_extractor`], as `mailfleet serve` does),
//!   [`submit`] does not wait: the mailbox is marked *overflowed* and its message stays
//!   pending. When the queue has drained, the writer catches up on overflowed mailboxes by
//!   itself, reading each pending message's body from the blob store and extracting its
//!   texts again ([`MetadataStore::unindexed_messages`], a page at a time, new submissions
//!   first). A burst of deliveries then runs at the pace of the deliveries, not of the
//!   index (a 10 KB body costs the index ~1.5 ms of CPU, several times what the rest of a
//!   delivery costs); the index catches up when the burst is over, as Dovecot's indexer
//!   does. The marks live in memory: after a restart, messages still pending are indexed
//!   by `mailfleet reindex`, and searches stay exact meanwhile.
//! - without one, [`submit`] waits for room (backpressure rather than an unbounded queue).
//!
//! [`submit`]: TextIndexer::submit

use crate::text_index::MessageText;
use crate::types::{MailboxId, Uid};
use crate::{BlobStore, MetadataStore};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Bytes of text the queue may hold before submitters wait.
pub const QUEUE_BYTES: usize = 64 << 20;

/// Entries written per mailbox per call (one store transaction each).
const MAX_BATCH_ENTRIES: usize = 1000;

/// Pending messages read back and indexed per catch-up step, between which new
/// submissions are written first.
const CATCH_UP_PAGE: usize = 100;

/// Turns a message's bytes into its index texts (the MIME crate's extraction, which this
/// crate does not depend on: the server hands it in).
pub type Extractor = Arc<dyn Fn(&[u8]) -> MessageText + Send + Sync>;

enum Job {
    Index {
        mailbox: MailboxId,
        entries: Vec<(Uid, MessageText)>,
        _permit: OwnedSemaphorePermit,
    },
    Flush(oneshot::Sender<()>),
    /// Wakes the writer for overflowed mailboxes.
    CatchUp,
}

struct Inner {
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    budget: Arc<Semaphore>,
    extractor: OnceLock<Extractor>,
    /// Mailboxes with messages left pending by a full queue, for the writer to catch up on.
    overflowed: Mutex<BTreeSet<MailboxId>>,
    /// Started on first use, on the runtime of the first submitter.
    tx: OnceLock<mpsc::UnboundedSender<Job>>,
}

/// Queues messages' texts for the full-text index; cheap to clone (one queue per store).
#[derive(Clone)]
pub struct TextIndexer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TextIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextIndexer")
            .field(
                "queued_bytes",
                &(QUEUE_BYTES - self.inner.budget.available_permits()),
            )
            .finish()
    }
}

impl TextIndexer {
    pub fn new(meta: Arc<dyn MetadataStore>, blobs: Arc<dyn BlobStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                meta,
                blobs,
                budget: Arc::new(Semaphore::new(QUEUE_BYTES)),
                extractor: OnceLock::new(),
                overflowed: Mutex::new(BTreeSet::new()),
                tx: OnceLock::new(),
            }),
        }
    }

    /// Lets a full queue overflow into catch-up instead of making submitters wait (see the
    /// module docs). Set once; later calls are ignored.
    pub fn set_extractor(&self, extractor: Extractor) {
        let _ = self.inner.extractor.set(extractor);
    }

    fn sender(&self) -> &mpsc::UnboundedSender<Job> {
        self.inner.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(writer(self.inner.clone(), rx));
            tx
        })
    }

    /// Queues the texts of messages of one mailbox. Returns once they are queued (waiting
    /// only when [`QUEUE_BYTES`] are already queued), not once they are written.
    pub async fn submit(&self, mailbox: MailboxId, entries: Vec<(Uid, MessageText)>) {
        if entries.is_empty() {
            return;
        }
        let bytes: usize = entries.iter().map(|(_, t)| text_bytes(t)).sum();
        // A single entry larger than the whole budget still goes (it is bounded by the
        // index's own per-message limit); it waits for an empty queue.
        let want = u32::try_from(bytes.clamp(1, QUEUE_BYTES)).unwrap_or(u32::MAX);
        let budget = self.inner.budget.clone();
        let permit = if self.inner.extractor.get().is_some() {
            match budget.try_acquire_many_owned(want) {
                Ok(p) => p,
                Err(_) => {
                    let first = lock(&self.inner.overflowed).insert(mailbox);
                    if first {
                        tracing::debug!(mailbox = %mailbox,
                            "full-text queue full; the mailbox's new messages are indexed later");
                        let _ = self.sender().send(Job::CatchUp);
                    }
                    return;
                }
            }
        } else {
            let Ok(p) = budget.acquire_many_owned(want).await else {
                return; // the semaphore is never closed
            };
            p
        };
        let job = Job::Index {
            mailbox,
            entries,
            _permit: permit,
        };
        if self.sender().send(job).is_err() {
            tracing::warn!("full-text indexer stopped; messages stay pending in the index");
        }
    }

    /// Waits until everything submitted before this call is written (or failed and left
    /// pending), overflowed mailboxes caught up as well. For tests, graceful shutdown and
    /// the admin tool.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sender().send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn text_bytes(t: &MessageText) -> usize {
    t.pieces
        .iter()
        .map(|p| p.text.len() + p.field.len() + 16)
        .sum::<usize>()
        + 64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes whatever is waiting, groups it by mailbox (keeping submission order within a
/// mailbox), and writes each group with one `index_text` call. With nothing waiting, it
/// catches up on overflowed mailboxes one page at a time.
async fn writer(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let meta = inner.meta.clone();
    // Where the catch-up stands: the mailbox and the last UID looked at.
    let mut cursor: Option<(MailboxId, Uid)> = None;
    loop {
        let first = if cursor.is_some() || !lock(&inner.overflowed).is_empty() {
            match rx.try_recv() {
                Ok(j) => j,
                Err(mpsc::error::TryRecvError::Empty) => {
                    cursor = catch_up(&inner, cursor).await;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        } else {
            match rx.recv().await {
                Some(j) => j,
                None => return,
            }
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH_ENTRIES {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut groups: Vec<(MailboxId, Vec<(Uid, MessageText)>)> = Vec::new();
        let mut permits = Vec::new();
        let mut flushes = Vec::new();
        for job in jobs {
            match job {
                Job::Index {
                    mailbox,
                    entries,
                    _permit,
                } => {
                    permits.push(_permit);
                    match groups.iter_mut().find(|(m, _)| *m == mailbox) {
                        Some((_, g)) => g.extend(entries),
                        None => groups.push((mailbox, entries)),
                    }
                }
                // Everything before the flush is in `groups`: answered after writing them.
                Job::Flush(done) => flushes.push(done),
                Job::CatchUp => {}
            }
        }
        for (mailbox, entries) in groups {
            let mut entries = entries.into_iter().peekable();
            while entries.peek().is_some() {
                let chunk: Vec<_> = entries.by_ref().take(MAX_BATCH_ENTRIES).collect();
                let n = chunk.len();
                if let Err(e) = meta.index_text(mailbox, chunk).await {
                    // The messages stay pending: searches look at them directly.
                    tracing::warn!(error = %e, mailbox = %mailbox, messages = n,
                        "full-text indexing failed");
                }
            }
        }
        drop(permits);
        if !flushes.is_empty() {
            while cursor.is_some() || !lock(&inner.overflowed).is_empty() {
                cursor = catch_up(&inner, cursor).await;
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// One catch-up step: up to [`CATCH_UP_PAGE`] pending messages of one overflowed mailbox,
/// read back and indexed. Returns where to go on from, `None` when that mailbox is done.
async fn catch_up(inner: &Inner, cursor: Option<(MailboxId, Uid)>) -> Option<(MailboxId, Uid)> {
    let (mailbox, after) = match cursor {
        Some(c) => c,
        None => {
            let mut set = lock(&inner.overflowed);
            let mailbox = set.pop_first()?;
            (mailbox, Uid(0))
        }
    };
    let extractor = inner.extractor.get()?.clone();
    let page = match inner
        .meta
        .unindexed_messages(mailbox, after, CATCH_UP_PAGE)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            // Left pending; `mailfleet reindex` or a later overflow picks it up again.
            tracing::warn!(error = %e, mailbox = %mailbox, "full-text catch-up failed");
            return None;
        }
    };
    let last = *page.last()?;
    let mut batch = Vec::with_capacity(page.len());
    for uid in page {
        let Ok(Some(m)) = inner.meta.get_message(mailbox, uid).await else {
            continue; // expunged meanwhile, or unreadable: it stays pending
        };
        let Ok(bytes) = inner.blobs.get(&m.blob).await else {
            continue;
        };
        let extract = extractor.clone();
        match tokio::task::spawn_blocking(move || extract(&bytes)).await {
            Ok(text) => batch.push((uid, text)),
            Err(e) => tracing::warn!(error = %e, "text extraction failed"),
        }
    }
    if let Err(e) = inner.meta.index_text(mailbox, batch).await {
        tracing::warn!(error = %e, mailbox = %mailbox, "full-text catch-up failed");
    }
    Some((mailbox, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded;
    use crate::types::{Flags, NewMessage};

    async fn mailbox_with(n: u32) -> (crate::Stores, MailboxId, Vec<Uid>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let stores = embedded::open(dir.path(), 64).expect("open");
        let meta = &stores.meta;
        meta.create_domain("example.test").await.expect("domain");
        let acct = meta
            .create_account("a@example.test", "$argon2id$x", 0)
            .await
            .expect("account");
        let inbox = meta
            .get_mailbox(acct.id, "INBOX")
            .await
            .expect("read")
            .expect("inbox");
        let mut uids = Vec::new();
        for i in 0..n {
            let body = format!("message {i}");
            let blob = stores.put_blob(body.clone().into()).await.expect("blob");
            let a = meta
                .append(
                    vec![NewMessage {
                        account: acct.id,
                        mailbox: inbox.id,
                        blob,
                        size: body.len() as u64,
                        internal_date: 0,
                        flags: Flags::default(),
                        summary: None,
                        refs: Default::default(),
                        trace: None,
                    }],
                    crate::metadata::QuotaPolicy::Allow,
                )
                .await
                .expect("append");
            uids.push(a[0].uid);
        }
        (stores, inbox.id, uids, dir)
    }

    /// The index's answer for `needle` in the body texts of `mailbox`.
    async fn body_search(
        stores: &crate::Stores,
        mailbox: MailboxId,
        needle: &str,
    ) -> crate::TextMatches {
        stores
            .meta
            .search_text(mailbox, &["body".into()], needle)
            .await
            .expect("search")
            .expect("answer")
    }

    /// Takes the whole queue budget, as a queue full of texts would.
    async fn hold_budget(stores: &crate::Stores) -> (Arc<Semaphore>, OwnedSemaphorePermit) {
        let budget = stores.indexer.inner.budget.clone();
        let held = budget
            .clone()
            .acquire_many_owned(QUEUE_BYTES as u32)
            .await
            .expect("permits");
        (budget, held)
    }

    fn text(word: &str) -> MessageText {
        MessageText::from_pairs(vec![("body".into(), word.into())], true)
    }

    #[tokio::test]
    async fn submitted_texts_are_searchable_after_a_flush_and_pending_before() {
        let (stores, mailbox, uids, _dir) = mailbox_with(3).await;
        let before = body_search(&stores, mailbox, "zebra").await;
        assert_eq!(before.unverified.len(), 3, "not yet indexed: all pending");
        for (i, uid) in uids.iter().enumerate() {
            let word = if i == 1 {
                "zebra crossing"
            } else {
                "plain words"
            };
            stores
                .indexer
                .submit(mailbox, vec![(*uid, text(word))])
                .await;
        }
        stores.indexer.flush().await;
        let after = body_search(&stores, mailbox, "zebra").await;
        assert_eq!(after.matched, vec![uids[1]]);
        assert!(after.unverified.is_empty(), "{:?}", after.unverified);
    }

    #[tokio::test]
    async fn a_full_queue_makes_submitters_wait_instead_of_growing() {
        let (stores, mailbox, uids, _dir) = mailbox_with(1).await;
        // Hold the whole budget: a submit must wait until it is released.
        let (budget, held) = hold_budget(&stores).await;
        let indexer = stores.indexer.clone();
        let uid = uids[0];
        let pending = tokio::spawn(async move {
            indexer.submit(mailbox, vec![(uid, text("queued"))]).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !pending.is_finished(),
            "submit waited for room in the queue"
        );
        drop(held);
        pending.await.expect("submit");
        stores.indexer.flush().await;
        let r = body_search(&stores, mailbox, "queued").await;
        assert_eq!(r.matched, vec![uid]);
        assert_eq!(budget.available_permits(), QUEUE_BYTES, "permits returned");
    }

    #[tokio::test]
    async fn a_full_queue_overflows_into_a_catch_up_from_the_bodies() {
        let (stores, mailbox, uids, _dir) = mailbox_with(3).await;
        stores.indexer.set_extractor(Arc::new(|bytes: &[u8]| {
            text(&format!("extracted {}", String::from_utf8_lossy(bytes)))
        }));
        let (_budget, held) = hold_budget(&stores).await;
        // The queue is full: each submit returns at once, leaving its message pending.
        for uid in &uids {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stores
                    .indexer
                    .submit(mailbox, vec![(*uid, text("ignored"))]),
            )
            .await
            .expect("submit did not wait");
        }
        drop(held);
        // The catch-up reads each body back ("message {i}") and indexes what it extracts.
        stores.indexer.flush().await;
        let after = body_search(&stores, mailbox, "extracted message 1").await;
        assert_eq!(after.matched, vec![uids[1]]);
        assert!(after.unverified.is_empty(), "{:?}", after.unverified);
        let none = body_search(&stores, mailbox, "ignored").await;
        assert!(
            none.matched.is_empty(),
            "the dropped texts were never written"
        );
        assert!(lock(&stores.indexer.inner.overflowed).is_empty());
    }
}
