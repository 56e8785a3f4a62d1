//! Mailbox views shared by the sessions of one process.
//!
//! Why: a session that has a mailbox selected needs the UID, flags, MODSEQ, size and date of
//! every message in it, to number messages and answer FETCH FLAGS, SEARCH and STORE without
//! a store round trip. Held per session, that is ~58 bytes per message per session: 8 GiB for
//! 10,000 sessions on one 15,000-message INBOX. Here the sessions of one process that have
//! the same mailbox selected share one copy.
//!
//! How:
//! - The messages live in a persistent vector (imbl's RRB tree): cloning it is O(1), and
//!   changing an element copies only the 64-element chunk that holds it. A session holding a
//!   clone keeps only what differs.
//! - One [`Master`] per mailbox per process owns the newest [`Snapshot`] and advances it from
//!   the store's change log (one `changes_since` query and one read per changed message,
//!   shared by every session of the process instead of done by each).
//! - The change batches it applied are kept for a while ([`HISTORY_CHANGES`]), so a session
//!   replays exactly the same batches onto its own view (to learn what to report: EXPUNGE,
//!   EXISTS, FETCH FLAGS) and afterwards its view *is* the snapshot: it drops its copy and
//!   clones the snapshot's pointer. Only a session that holds back expunges (RFC 9051
//!   §7.5.1) keeps a diverged copy, until it may report them.
//! - Advancing is single-flight: a session that waited on the master's lock while another
//!   session's store query ran uses that query's result when the query began after its own
//!   request (every change committed before the request is in it), instead of querying again.
//!
//! A session that fell behind the kept history (it did not refresh while thousands of
//! changes happened) reads the change log itself, as an unshared view would, and rejoins the
//! shared view once its copy equals the snapshot.

use mailfleet_storage::{ChangeKind, MailboxId, ModSeq, StoreResult, Stores, Uid};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::selected::ViewMessage;

/// The message list of a view.
pub type Messages = imbl::Vector<ViewMessage>;

/// Change entries kept for sessions to replay; a session further behind reads the change log
/// itself. Bounds the memory a mailbox's history can hold.
pub const HISTORY_CHANGES: usize = 10_000;

/// Batches kept, whatever their size (each batch also pins its snapshot's changed chunks).
const HISTORY_BATCHES: usize = 1024;

/// Messages read from the store per query when loading a mailbox.
const PAGE: usize = 5000;

/// One change as the master applied it: the change-log entry and the message as read then
/// (`None` when it was gone by then).
#[derive(Clone, Debug)]
pub struct Applied {
    pub kind: ChangeKind,
    pub uid: Uid,
    pub modseq: ModSeq,
    pub msg: Option<ViewMessage>,
}

/// The mailbox as the master last read it.
#[derive(Debug)]
pub struct Snapshot {
    /// Position in the master's history: batch `n` leads from snapshot `n - 1` to `n`.
    pub seqno: u64,
    /// Every change up to this MODSEQ is applied.
    pub modseq: ModSeq,
    pub uid_next: Uid,
    pub uid_validity: u32,
    pub messages: Messages,
    /// Every keyword any message of this lineage carried, in first-seen order: what a session
    /// that starts from this snapshot announces in FLAGS.
    pub keywords: Arc<[String]>,
}

/// Process-wide registry of masters, keyed by mailbox. Holds them weakly: a master lives as
/// long as a session has its mailbox selected.
#[derive(Debug, Default)]
pub struct SharedViews {
    masters: Mutex<HashMap<(MailboxId, u32), Weak<Master>>>,
}

impl SharedViews {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The master of `mailbox`, loading the mailbox from the store when no session of this
    /// process has it selected.
    pub async fn open(
        &self,
        stores: &Stores,
        mailbox: &mailfleet_storage::Mailbox,
    ) -> StoreResult<Arc<Master>> {
        let key = (mailbox.id, mailbox.uid_validity);
        if let Some(m) = self.lookup(key) {
            return Ok(m);
        }
        let snapshot = load(stores, mailbox).await?;
        let fresh = Arc::new(Master {
            id: mailbox.id,
            queries_begun: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(State {
                latest: Arc::new(snapshot),
                last_query: 0,
                history: VecDeque::new(),
                history_changes: 0,
            }),
        });
        let mut map = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        // Another session may have loaded the same mailbox meanwhile: keep one master.
        if let Some(m) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(m);
        }
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(key, Arc::downgrade(&fresh));
        Ok(fresh)
    }

    fn lookup(&self, key: (MailboxId, u32)) -> Option<Arc<Master>> {
        let mut map = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key).map(Weak::upgrade) {
            Some(Some(m)) => Some(m),
            Some(None) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Number of mailboxes with a live shared view (for tests and metrics).
    pub fn live(&self) -> usize {
        let map = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// The shared view of one mailbox in this process.
#[derive(Debug)]
pub struct Master {
    pub id: MailboxId,
    /// Store queries begun, numbered from 1 (incremented under `state`'s lock, read without).
    queries_begun: AtomicU64,
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    latest: Arc<Snapshot>,
    /// Number of the last store query that completed.
    last_query: u64,
    /// `(seqno, batch)`: the batch that led to snapshot `seqno`; contiguous, oldest first.
    history: VecDeque<(u64, Arc<[Applied]>)>,
    history_changes: usize,
}

/// What [`Master::advance`] hands a session at snapshot `from`.
pub struct Advanced {
    pub latest: Arc<Snapshot>,
    /// The batches from `from` to `latest`, or `None` when some were already dropped.
    pub batches: Option<Vec<Arc<[Applied]>>>,
}

impl Master {
    /// The newest snapshot without reading the store.
    pub async fn latest(&self) -> Arc<Snapshot> {
        self.state.lock().await.latest.clone()
    }

    /// Brings the snapshot up to date with every change committed before this call, and
    /// returns it with the batches a session at snapshot `from` must replay.
    ///
    /// Transactional: when a store read fails, the snapshot stays as it was.
    pub async fn advance(&self, stores: &Stores, from: u64) -> StoreResult<Advanced> {
        // Queries numbered above `ticket` began after this request, so they saw everything
        // committed before it.
        let ticket = self.queries_begun.load(Ordering::SeqCst);
        let mut st = self.state.lock().await;
        if st.last_query <= ticket {
            let number = self.queries_begun.fetch_add(1, Ordering::SeqCst) + 1;
            let batch = read_changes(stores, self.id, &st.latest).await?;
            st.last_query = number;
            if !batch.is_empty() {
                let next = apply_to_snapshot(&st.latest, &batch);
                st.history_changes += batch.len();
                st.history.push_back((next.seqno, batch.into()));
                st.latest = Arc::new(next);
                while st.history.len() > HISTORY_BATCHES
                    || (st.history_changes > HISTORY_CHANGES && st.history.len() > 1)
                {
                    if let Some((_, old)) = st.history.pop_front() {
                        st.history_changes -= old.len();
                    }
                }
            }
        }
        let latest = st.latest.clone();
        let batches = if from == latest.seqno {
            Some(Vec::new())
        } else {
            match st.history.front() {
                Some((first, _)) if *first <= from.saturating_add(1) => Some(
                    st.history
                        .iter()
                        .filter(|(n, _)| *n > from)
                        .map(|(_, b)| b.clone())
                        .collect(),
                ),
                _ => None,
            }
        };
        Ok(Advanced { latest, batches })
    }
}

/// Reads the mailbox's messages, page by page.
async fn load(stores: &Stores, mailbox: &mailfleet_storage::Mailbox) -> StoreResult<Snapshot> {
    let mut messages = Messages::new();
    let mut after = Uid(0);
    loop {
        let page = stores.meta.list_messages(mailbox.id, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.uid;
        let n = page.len();
        for m in page {
            messages.push_back(ViewMessage::from(m));
        }
        if n < PAGE {
            break;
        }
    }
    // The mailbox row was read before the messages, so changes committed in between are
    // replayed by the first advance; replaying is harmless (an element is only replaced by
    // a newer MODSEQ).
    let next_uid = messages.last().map_or(Uid(1), |m| Uid(m.uid.0 + 1));
    let mut keywords = KeywordList::default();
    for m in &messages {
        keywords.learn(&m.flags);
    }
    Ok(Snapshot {
        seqno: 0,
        modseq: mailbox.highest_modseq,
        uid_next: mailbox.uid_next.max(next_uid),
        uid_validity: mailbox.uid_validity,
        messages,
        keywords: keywords.list.into(),
    })
}

/// Reads the changes after `snap` and the messages they point at; nothing changes yet.
async fn read_changes(
    stores: &Stores,
    mailbox: MailboxId,
    snap: &Snapshot,
) -> StoreResult<Vec<Applied>> {
    // One query for the changes and the messages they point at (not one read per change).
    let changes = stores
        .meta
        .changes_with_messages(mailbox, snap.modseq)
        .await?;
    let mut out = Vec::with_capacity(changes.len());
    for (c, msg) in changes {
        let known = find(&snap.messages, c.uid).is_ok();
        let msg = match c.kind {
            ChangeKind::Expunged => None,
            // A message below UIDNEXT that the view never held was already gone.
            ChangeKind::FlagsChanged if !known && c.uid < snap.uid_next => None,
            ChangeKind::Appended | ChangeKind::FlagsChanged => msg.map(ViewMessage::from),
        };
        out.push(Applied {
            kind: c.kind,
            uid: c.uid,
            modseq: c.modseq,
            msg,
        });
    }
    Ok(out)
}

fn apply_to_snapshot(prev: &Snapshot, batch: &[Applied]) -> Snapshot {
    let mut messages = prev.messages.clone();
    let mut keywords = KeywordList::from_list(&prev.keywords);
    let mut modseq = prev.modseq;
    for a in batch {
        match (&a.kind, &a.msg) {
            (ChangeKind::Expunged, _) => {
                if let Ok(i) = find(&messages, a.uid) {
                    messages.remove(i);
                }
            }
            (_, Some(msg)) => {
                keywords.learn(&msg.flags);
                match find(&messages, a.uid) {
                    Ok(i) => {
                        if let Some(m) = messages.get_mut(i).filter(|m| m.modseq < msg.modseq) {
                            *m = msg.clone();
                        }
                    }
                    Err(pos) => messages.insert(pos, msg.clone()),
                }
            }
            (_, None) => {}
        }
        modseq = modseq.max(a.modseq);
    }
    let uid_next = messages
        .last()
        .map_or(prev.uid_next, |m| prev.uid_next.max(Uid(m.uid.0 + 1)));
    Snapshot {
        seqno: prev.seqno + 1,
        modseq,
        uid_next,
        uid_validity: prev.uid_validity,
        messages,
        keywords: keywords.list.into(),
    }
}

/// The position of `uid` in `messages` (sorted by UID), or where it would go.
pub fn find(messages: &Messages, uid: Uid) -> Result<usize, usize> {
    messages.binary_search_by_key(&uid, |m| m.uid)
}

/// Keywords in first-seen order, compared without case (RFC 9051 §2.3.2).
#[derive(Debug, Default)]
struct KeywordList {
    seen: std::collections::HashSet<String>,
    list: Vec<String>,
}

impl KeywordList {
    fn from_list(list: &[String]) -> Self {
        Self {
            seen: list.iter().map(|k| k.to_ascii_lowercase()).collect(),
            list: list.to_vec(),
        }
    }

    fn learn(&mut self, flags: &mailfleet_storage::Flags) {
        for f in flags.iter().filter(|f| !f.starts_with('\\')) {
            if self.seen.insert(f.to_ascii_lowercase()) {
                self.list.push(f.to_string());
            }
        }
    }
}
