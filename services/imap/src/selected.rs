//! The selected mailbox as one session sees it: message sequence numbers, UIDs, flags and
//! MODSEQs, kept in step with the store.
//!
//! IMAP numbers messages 1..n in UID order and lets each session decide when it learns of
//! changes; so every session has its own view. The views of the sessions of one process on
//! the same mailbox share their messages ([`crate::views`]): a view is a clone of the shared
//! snapshot plus what differs (held-back expunges, `\Recent`). It is refreshed from the
//! store's change log ([`MetadataStore::changes_since`]), whose cost depends on the number of
//! changes, not on the size of the mailbox. Expunges are held back while a command that must
//! not renumber messages is running (RFC 9051 §7.5.1) and delivered at the next point where
//! they are allowed.
//!
//! [`MetadataStore::changes_since`]: mailfleet_storage::MetadataStore::changes_since

use crate::views::{self, Applied, Master, Messages, SharedViews};
use mailfleet_storage::{
    ChangeKind, Flags, MailboxId, MessageMeta, ModSeq, StoreResult, Stores, Uid,
};
use std::num::NonZeroU32;
use std::sync::Arc;

/// One message in the view. Kept small (no blob id: bodies are located when read), since
/// a process holds one per message of every selected mailbox. `\Recent` is per session, so
/// it is not here but in [`Selected`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewMessage {
    pub uid: Uid,
    pub flags: Flags,
    pub modseq: ModSeq,
    pub size: u64,
    pub internal_date: i64,
}

impl From<MessageMeta> for ViewMessage {
    fn from(m: MessageMeta) -> Self {
        Self {
            uid: m.uid,
            flags: m.flags,
            modseq: m.modseq,
            size: m.size,
            internal_date: m.internal_date,
        }
    }
}

/// How a session takes part in `\Recent` (RFC 3501 §2.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecentMode {
    /// SELECT by an IMAP4rev1 client: claims new messages through
    /// [`mailfleet_storage::MetadataStore::claim_recent`], so each is recent in exactly one
    /// session cluster-wide.
    Claim,
    /// EXAMINE: shows the messages nobody claimed yet as recent, without claiming them
    /// (RFC 3501 §6.3.2: EXAMINE must not make messages lose `\Recent`).
    Peek,
    /// IMAP4rev2 enabled: RFC 9051 has no `\Recent`; the session neither reports nor claims.
    Off,
}

/// Keywords already announced to the client in an untagged FLAGS response, so a FETCH never
/// shows one the client was not told of (RFC 9051 §7.3.5).
#[derive(Debug, Default)]
pub struct Keywords {
    /// Lower-cased keyword -> its index in `list`.
    seen: std::collections::HashMap<String, usize>,
    list: Vec<String>,
}

impl Keywords {
    fn from_list(list: &[String]) -> Self {
        let mut k = Self::default();
        for f in list {
            let key = f.to_ascii_lowercase();
            if !k.seen.contains_key(&key) {
                k.seen.insert(key, k.list.len());
                k.list.push(f.clone());
            }
        }
        k
    }

    /// Adds the keywords of `flags`; true when one was new.
    pub fn learn(&mut self, flags: &Flags) -> bool {
        let mut new = false;
        for f in flags.iter().filter(|f| !f.starts_with('\\')) {
            let key = f.to_ascii_lowercase();
            if !self.seen.contains_key(&key) {
                self.seen.insert(key, self.list.len());
                self.list.push(f.to_string());
                new = true;
            }
        }
        new
    }

    /// The spelling this session already knows `flag` by, if it differs only in case:
    /// keywords are case-insensitive (RFC 9051 §2.3.2), so a STORE of `$label1` onto a
    /// mailbox that shows `$Label1` stores `$Label1`.
    pub fn spelling(&self, flag: &str) -> Option<&str> {
        let i = *self.seen.get(&flag.to_ascii_lowercase())?;
        Some(self.list[i].as_str())
    }

    pub fn list(&self) -> &[String] {
        &self.list
    }
}

/// What changed during a refresh, for the session to report.
#[derive(Debug, Default)]
pub struct Update {
    /// Sequence numbers (at the time of each removal) and UIDs of expunged messages.
    pub expunged: Vec<(u32, Uid)>,
    /// The new message count, when messages were added.
    pub exists: Option<u32>,
    /// The number of recent messages, sent after EXISTS (IMAP4rev1 sessions only).
    pub recent: Option<u32>,
    /// A changed or new message carries a keyword not announced yet: FLAGS and
    /// PERMANENTFLAGS go out before the FETCH responses.
    pub new_keywords: bool,
    /// Messages whose flags changed (by UID).
    pub flags_changed: Vec<Uid>,
}

/// A message of the view with its `\Recent` state in this session.
#[derive(Clone, Copy, Debug)]
pub struct Msg<'a> {
    msg: &'a ViewMessage,
    /// `\Recent` in this session (RFC 3501 §2.3.2): this session claimed the message through
    /// the store's recent watermark (or peeks at it, for EXAMINE).
    pub recent: bool,
}

impl std::ops::Deref for Msg<'_> {
    type Target = ViewMessage;
    fn deref(&self) -> &ViewMessage {
        self.msg
    }
}

/// The UIDs recent in this session, as inclusive ranges: each claim of the recent watermark
/// hands a session one contiguous range (RFC 3501 §2.3.2), so a few ranges describe any
/// number of recent messages, where a flag per message would cost every shared view.
#[derive(Clone, Debug, Default)]
struct RecentSet(Vec<(Uid, Uid)>);

impl RecentSet {
    /// Adds `lo..=hi`, merging with the last range when they touch.
    fn add(&mut self, lo: Uid, hi: Uid) {
        if lo > hi {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            if lo.0 <= last.1 .0.saturating_add(1) && hi >= last.0 {
                last.0 = last.0.min(lo);
                last.1 = last.1.max(hi);
                return;
            }
        }
        self.0.push((lo, hi));
        self.0.sort_unstable();
    }

    fn contains(&self, uid: Uid) -> bool {
        self.0.iter().any(|(lo, hi)| *lo <= uid && uid <= *hi)
    }
}

#[derive(Debug)]
pub struct Selected {
    pub id: MailboxId,
    /// The account that owns the mailbox (another user's for a shared one): the scope of
    /// SEARCH EMAILID / THREADID lookups.
    pub owner: mailfleet_storage::AccountId,
    pub name: String,
    pub read_only: bool,
    pub uid_validity: u32,
    pub uid_next: Uid,
    /// A clone of the shared snapshot, changed here only by this session's own STOREs and
    /// held-back expunges (see [`crate::views`]).
    messages: Messages,
    /// Everything up to this MODSEQ is reflected in the view.
    pub known_modseq: ModSeq,
    /// Expunges seen in the store but not yet reported.
    pending_expunges: Vec<Uid>,
    pub recent_mode: RecentMode,
    pub keywords: Keywords,
    recent: RecentSet,
    /// The shared view this session replays.
    master: Arc<Master>,
    /// The snapshot of `master` this view was last brought to.
    at: u64,
    /// The view read the change log itself (it fell behind the master's history); it
    /// rejoins the shared view once equal to a snapshot.
    alone: bool,
}

impl Selected {
    pub async fn load(
        stores: &Stores,
        views: &SharedViews,
        mailbox: &mailfleet_storage::Mailbox,
        read_only: bool,
        recent_mode: RecentMode,
    ) -> StoreResult<Self> {
        let master = views.open(stores, mailbox).await?;
        // A master loaded earlier by another session is brought up to date: SELECT sees
        // everything committed before it.
        let snap = master.advance(stores, u64::MAX).await?.latest;
        let messages = snap.messages.clone();
        let max_uid = messages.last().map_or(Uid(0), |m| m.uid);
        let mut recent = RecentSet::default();
        if let Some(old) = claim(stores, mailbox.id, recent_mode, max_uid).await? {
            recent.add(Uid(old.0.saturating_add(1)), max_uid);
        }
        Ok(Self {
            id: mailbox.id,
            owner: mailbox.account,
            name: mailbox.name.clone(),
            read_only,
            uid_validity: mailbox.uid_validity,
            uid_next: snap.uid_next.max(mailbox.uid_next),
            messages,
            known_modseq: snap.modseq,
            pending_expunges: Vec::new(),
            recent_mode,
            keywords: Keywords::from_list(&snap.keywords),
            recent,
            at: snap.seqno,
            master,
            alone: false,
        })
    }

    /// Whether this view is the shared snapshot itself (not a copy of its own): what the
    /// sharing saves, for tests and diagnostics.
    pub async fn shares_snapshot(&self) -> bool {
        self.master.latest().await.messages.ptr_eq(&self.messages)
    }

    /// Number of messages recent in this session.
    pub fn recent_count(&self) -> u32 {
        self.recent
            .0
            .iter()
            .map(|(lo, hi)| {
                let a = views::find(&self.messages, *lo).unwrap_or_else(|p| p);
                let b = views::find(&self.messages, *hi).map_or_else(|p| p, |i| i + 1);
                b.saturating_sub(a) as u32
            })
            .sum()
    }

    pub fn len(&self) -> u32 {
        self.messages.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages in sequence order.
    pub fn messages(&self) -> impl Iterator<Item = Msg<'_>> + '_ {
        self.messages.iter().map(|m| self.wrap(m))
    }

    /// The messages at 0-based positions `range` (clamped to the view), with their
    /// positions, in order. Reaching the first costs O(log n), so a command naming a few
    /// messages of a 100,000-message mailbox does not walk the other 99,990.
    pub fn messages_in(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (usize, Msg<'_>)> + '_ {
        let end = range.end.min(self.messages.len());
        let start = range.start.min(end);
        self.messages
            .focus()
            .narrow(start..end)
            .into_iter()
            .enumerate()
            .map(move |(k, m)| (start + k, self.wrap(m)))
    }

    /// The position of the first message whose UID is `uid` or above (the view's length
    /// when there is none).
    pub fn position_from_uid(&self, uid: Uid) -> usize {
        match views::find(&self.messages, uid) {
            Ok(i) | Err(i) => i,
        }
    }

    fn wrap<'a>(&self, msg: &'a ViewMessage) -> Msg<'a> {
        Msg {
            msg,
            recent: self.recent_mode != RecentMode::Off && self.recent.contains(msg.uid),
        }
    }

    /// The 1-based sequence number of `uid`.
    pub fn seq_of(&self, uid: Uid) -> Option<u32> {
        views::find(&self.messages, uid).ok().map(|i| i as u32 + 1)
    }

    pub fn by_seq(&self, seq: u32) -> Option<Msg<'_>> {
        self.messages
            .get(seq.checked_sub(1)? as usize)
            .map(|m| self.wrap(m))
    }

    /// The message `uid`, for this session's own flag changes (STORE, FETCH setting
    /// `\Seen`); the change is in the store already and reaches the shared view at the next
    /// refresh.
    pub fn get_mut(&mut self, uid: Uid) -> Option<&mut ViewMessage> {
        let i = views::find(&self.messages, uid).ok()?;
        self.messages.get_mut(i)
    }

    pub fn highest_modseq(&self) -> ModSeq {
        self.known_modseq
    }

    /// The largest UID in the view, for `*` in UID sets.
    pub fn max_uid(&self) -> Option<NonZeroU32> {
        self.messages.last().and_then(|m| NonZeroU32::new(m.uid.0))
    }

    /// Number of messages without `\Seen`, and the sequence number of the first.
    pub fn unseen(&self) -> (u32, Option<u32>) {
        let mut first = None;
        let mut n = 0;
        for (i, m) in self.messages.iter().enumerate() {
            if !m.flags.contains("\\Seen") {
                n += 1;
                first.get_or_insert(i as u32 + 1);
            }
        }
        (n, first)
    }

    /// Applies changes committed since the last refresh. With `allow_expunge` false,
    /// expunges are held back (the messages stay visible with their numbers).
    ///
    /// Transactional: every store read happens first, and the view changes only once all
    /// of them succeeded. A refresh that fails leaves the view as it was, so the view never
    /// holds a message the client was not told EXISTS for; the next refresh replays the
    /// same changes.
    pub async fn refresh(&mut self, stores: &Stores, allow_expunge: bool) -> StoreResult<Update> {
        let advanced = self.master.advance(stores, self.at).await?;
        let latest = advanced.latest;
        let owned;
        let batches: Vec<&[Applied]> = match (&advanced.batches, self.alone) {
            (Some(b), false) => b.iter().map(|b| &b[..]).collect(),
            _ => {
                // Behind the kept history: read the change log as an unshared view would.
                owned = read_alone(stores, self).await?;
                vec![&owned[..]]
            }
        };
        // New messages are claimed (or peeked at) as recent before the view changes; a
        // failed claim leaves the view as it was. The store raised the watermark only if
        // the claim succeeded, and a claim that succeeded but whose answer was lost makes
        // those messages recent nowhere, which is the safe side of "exactly one session".
        let newest = batches
            .iter()
            .flat_map(|b| b.iter())
            .filter(|a| a.msg.is_some() && self.seq_of(a.uid).is_none())
            .map(|a| a.uid)
            .max();
        let recent_above = match newest {
            Some(up_to) => claim(stores, self.id, self.recent_mode, up_to)
                .await?
                .map(|old| (old, up_to)),
            None => None,
        };
        // Apply, infallibly.
        let mut update = Update::default();
        let mut added = 0;
        for a in batches.iter().flat_map(|b| b.iter()) {
            added += usize::from(self.apply(a, &mut update));
            self.known_modseq = self.known_modseq.max(a.modseq);
        }
        if let Some((old, up_to)) = recent_above {
            self.recent.add(Uid(old.0.saturating_add(1)), up_to);
        }
        if let Some(last) = self.messages.last() {
            self.uid_next = self.uid_next.max(Uid(last.uid.0 + 1));
        }
        let replayed = advanced.batches.is_some() && !self.alone;
        if allow_expunge && replayed {
            // The view is about to become the snapshot, which no longer has these
            // messages: only their numbers are needed, not a removal from this copy (an
            // RRB tree's removal rebalances nodes, and every session of the mailbox did it
            // again for the same expunge; on a 100,000-message mailbox that was the mix's
            // largest cost).
            update.expunged = self.expunge_numbers();
            let removed: std::collections::HashSet<Uid> =
                update.expunged.iter().map(|(_, u)| *u).collect();
            debug_assert!(
                self.messages
                    .iter()
                    .filter(|m| !removed.contains(&m.uid))
                    .eq(latest.messages.iter()),
                "a view that replayed the master's batches equals its snapshot"
            );
            self.take_snapshot(&latest);
            if added > 0 {
                update.exists = Some(self.len());
                if self.recent_mode != RecentMode::Off {
                    update.recent = Some(self.recent_count());
                }
            }
            update.flags_changed.retain(|u| self.seq_of(*u).is_some());
            return Ok(update);
        }
        if allow_expunge {
            update.expunged = self.apply_expunges();
        }
        if added > 0 {
            update.exists = Some(self.len());
            if self.recent_mode != RecentMode::Off {
                update.recent = Some(self.recent_count());
            }
        }
        update.flags_changed.retain(|u| self.seq_of(*u).is_some());
        self.rejoin(&latest, replayed);
        Ok(update)
    }

    /// The (sequence number, UID) of each held-back expunge, highest first, as
    /// [`Self::apply_expunges`] reports them, without removing anything; clears them.
    fn expunge_numbers(&mut self) -> Vec<(u32, Uid)> {
        let mut pending = std::mem::take(&mut self.pending_expunges);
        pending.sort_by(|a, b| b.cmp(a));
        // Highest first: removing a message never renumbers those below it, so each
        // number is the message's position in the view before any removal.
        pending
            .into_iter()
            .filter_map(|uid| self.seq_of(uid).map(|seq| (seq, uid)))
            .collect()
    }

    /// Becomes the shared snapshot (this view holds nothing of its own).
    fn take_snapshot(&mut self, latest: &Arc<views::Snapshot>) {
        self.messages = latest.messages.clone();
        self.known_modseq = latest.modseq;
        self.at = latest.seqno;
        self.alone = false;
    }

    /// Applies one change to this view; true when it added a message.
    fn apply(&mut self, a: &Applied, update: &mut Update) -> bool {
        match (a.kind, &a.msg) {
            (ChangeKind::Expunged, _) => {
                if self.seq_of(a.uid).is_some() && !self.pending_expunges.contains(&a.uid) {
                    self.pending_expunges.push(a.uid);
                }
                false
            }
            (_, Some(msg)) => {
                if self.keywords.learn(&msg.flags) {
                    update.new_keywords = true;
                }
                match views::find(&self.messages, a.uid) {
                    Ok(i) => {
                        if let Some(m) = self.messages.get_mut(i) {
                            if m.modseq < msg.modseq {
                                if m.flags != msg.flags {
                                    update.flags_changed.push(a.uid);
                                }
                                *m = msg.clone();
                            }
                        }
                        false
                    }
                    // UIDs only grow, so this is the end (a push, which an RRB tree does
                    // without rebalancing); insert in place anyway rather than corrupt
                    // the numbering.
                    Err(pos) if pos == self.messages.len() => {
                        self.messages.push_back(msg.clone());
                        true
                    }
                    Err(pos) => {
                        self.messages.insert(pos, msg.clone());
                        true
                    }
                }
            }
            (_, None) => false,
        }
    }

    /// Makes this view the shared snapshot again when it holds nothing of its own: after
    /// replaying the master's batches it equals the snapshot by construction; after reading
    /// the change log alone it is compared first.
    fn rejoin(&mut self, latest: &Arc<views::Snapshot>, replayed: bool) {
        if !self.pending_expunges.is_empty() {
            // Held-back expunges: the view keeps messages the snapshot no longer has.
            if replayed {
                self.at = latest.seqno;
            }
            return;
        }
        if replayed {
            debug_assert!(
                self.messages == latest.messages,
                "a view that replayed the master's batches equals its snapshot"
            );
        } else if self.known_modseq != latest.modseq || self.messages != latest.messages {
            self.alone = true;
            return;
        }
        self.take_snapshot(latest);
    }

    /// Removes held-back expunges; returns (sequence number at removal, UID) in the order
    /// the EXPUNGE responses must be sent.
    fn apply_expunges(&mut self) -> Vec<(u32, Uid)> {
        let mut pending = std::mem::take(&mut self.pending_expunges);
        // Highest sequence first, so each reported number is valid when it is reported
        // and no renumbering arithmetic is needed on the client.
        pending.sort_by(|a, b| b.cmp(a));
        let mut out = Vec::with_capacity(pending.len());
        for uid in pending {
            if let Some(seq) = self.seq_of(uid) {
                self.messages.remove(seq as usize - 1);
                out.push((seq, uid));
            }
        }
        out
    }

    /// Records expunges this session performed itself (already committed).
    pub fn expunged_here(&mut self, uids: &[Uid]) {
        for u in uids {
            if !self.pending_expunges.contains(u) {
                self.pending_expunges.push(*u);
            }
        }
    }

    /// Flushes held-back expunges when they may be reported.
    pub fn take_expunges(&mut self) -> Vec<(u32, Uid)> {
        self.apply_expunges()
    }
}

/// The changes since `sel`'s MODSEQ read from the store by one session, for a view that
/// fell behind the shared history.
async fn read_alone(stores: &Stores, sel: &Selected) -> StoreResult<Vec<Applied>> {
    let changes = stores
        .meta
        .changes_with_messages(sel.id, sel.known_modseq)
        .await?;
    let mut out = Vec::with_capacity(changes.len());
    for (c, msg) in changes {
        let known = sel.seq_of(c.uid).is_some();
        let msg = match c.kind {
            ChangeKind::Expunged => None,
            ChangeKind::FlagsChanged if !known && c.uid < sel.uid_next => None,
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

/// Claims (or peeks at) the messages of `mailbox` up to `up_to` as recent: the old
/// watermark, above which the messages are recent in this session; `None` when the session
/// keeps no `\Recent`.
async fn claim(
    stores: &Stores,
    mailbox: MailboxId,
    mode: RecentMode,
    up_to: Uid,
) -> StoreResult<Option<Uid>> {
    match mode {
        RecentMode::Off => Ok(None),
        RecentMode::Peek => stores.meta.claim_recent(mailbox, Uid(0)).await.map(Some),
        RecentMode::Claim => stores.meta.claim_recent(mailbox, up_to).await.map(Some),
    }
}

impl Selected {
    /// Reads the message body of `uid`, or `None` when another session expunged it after
    /// this view was last refreshed (RFC 2180 §4.1: the message is still numbered here
    /// until the expunge can be reported).
    pub async fn read_body_if_present(
        &self,
        stores: &Stores,
        uid: Uid,
    ) -> StoreResult<Option<bytes::Bytes>> {
        match stores.meta.get_message(self.id, uid).await? {
            Some(meta) => stores.blobs.get(&meta.blob).await.map(Some),
            None => Ok(None),
        }
    }

    /// Reads the message body of `uid` (locating its blob first).
    pub async fn read_body(&self, stores: &Stores, uid: Uid) -> StoreResult<bytes::Bytes> {
        let meta = stores
            .meta
            .get_message(self.id, uid)
            .await?
            .ok_or_else(|| mailfleet_storage::StoreError::NotFound(format!("message {}", uid.0)))?;
        stores.blobs.get(&meta.blob).await
    }
}
