//! The selected mailbox as one session sees it: message sequence numbers, UIDs, flags and
//! MODSEQs, kept in step with the store.
//!
//! IMAP numbers messages 1..n in UID order and lets each session decide when it learns of
//! changes; so every session holds its own view. The view is refreshed from the store's
//! change log ([`MetadataStore::changes_since`]), whose cost depends on the number of
//! changes, not on the size of the mailbox. Expunges are held back while a command that must
//! not renumber messages is running (RFC 9051 §7.5.1) and delivered at the next point where
//! they are allowed.

use mailfleet_storage::{
    ChangeKind, Flags, MailboxId, MessageMeta, ModSeq, StoreResult, Stores, Uid,
};
use std::num::NonZeroU32;

/// One message in the view. Kept small (no blob id: bodies are located when read), since
/// every session holds one per message of its selected mailbox.
#[derive(Clone, Debug)]
pub struct ViewMessage {
    pub uid: Uid,
    pub flags: Flags,
    pub modseq: ModSeq,
    pub size: u64,
    pub internal_date: i64,
    /// `\Recent` in this session (RFC 3501 §2.3.2): this session claimed the message
    /// through the store's recent watermark (or peeks at it, for EXAMINE).
    pub recent: bool,
}

impl From<MessageMeta> for ViewMessage {
    fn from(m: MessageMeta) -> Self {
        Self {
            uid: m.uid,
            flags: m.flags,
            modseq: m.modseq,
            size: m.size,
            internal_date: m.internal_date,
            recent: false,
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

#[derive(Debug)]
pub struct Selected {
    pub id: MailboxId,
    pub name: String,
    pub read_only: bool,
    pub uid_validity: u32,
    pub uid_next: Uid,
    messages: Vec<ViewMessage>,
    /// Everything up to this MODSEQ is reflected in the view.
    pub known_modseq: ModSeq,
    /// Expunges seen in the store but not yet reported.
    pending_expunges: Vec<Uid>,
    pub recent_mode: RecentMode,
    pub keywords: Keywords,
}

/// Messages read from the store per query when loading a mailbox.
const PAGE: usize = 5000;

impl Selected {
    pub async fn load(
        stores: &Stores,
        mailbox: &mailfleet_storage::Mailbox,
        read_only: bool,
        recent_mode: RecentMode,
    ) -> StoreResult<Self> {
        let mut messages = Vec::with_capacity(mailbox.message_count as usize);
        let mut after = Uid(0);
        loop {
            let page = stores.meta.list_messages(mailbox.id, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.uid;
            let n = page.len();
            messages.extend(page.into_iter().map(ViewMessage::from));
            if n < PAGE {
                break;
            }
        }
        // The mailbox row was read before the messages, so changes committed in between
        // are replayed by the first refresh; replaying is harmless (see `refresh`).
        let next_uid = messages.last().map(|m| Uid(m.uid.0 + 1)).unwrap_or(Uid(1));
        let max_uid = messages.last().map_or(Uid(0), |m| m.uid);
        if let Some(old) = claim(stores, mailbox.id, recent_mode, max_uid).await? {
            let first = messages.partition_point(|m| m.uid <= old);
            for m in &mut messages[first..] {
                m.recent = true;
            }
        }
        let mut keywords = Keywords::default();
        for m in &messages {
            keywords.learn(&m.flags);
        }
        Ok(Self {
            id: mailbox.id,
            name: mailbox.name.clone(),
            read_only,
            uid_validity: mailbox.uid_validity,
            uid_next: mailbox.uid_next.max(next_uid),
            messages,
            known_modseq: mailbox.highest_modseq,
            pending_expunges: Vec::new(),
            recent_mode,
            keywords,
        })
    }

    /// Number of messages recent in this session.
    pub fn recent_count(&self) -> u32 {
        self.messages.iter().filter(|m| m.recent).count() as u32
    }

    pub fn len(&self) -> u32 {
        self.messages.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn messages(&self) -> &[ViewMessage] {
        &self.messages
    }

    /// The 1-based sequence number of `uid`.
    pub fn seq_of(&self, uid: Uid) -> Option<u32> {
        self.messages
            .binary_search_by_key(&uid, |m| m.uid)
            .ok()
            .map(|i| i as u32 + 1)
    }

    pub fn by_seq(&self, seq: u32) -> Option<&ViewMessage> {
        self.messages.get(seq.checked_sub(1)? as usize)
    }

    pub fn get_mut(&mut self, uid: Uid) -> Option<&mut ViewMessage> {
        let i = self.messages.binary_search_by_key(&uid, |m| m.uid).ok()?;
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
        let changes = stores
            .meta
            .changes_since(self.id, self.known_modseq)
            .await?;
        // Phase 1: read what the changes point at; nothing in `self` changes yet.
        let mut read: Vec<(mailfleet_storage::Change, Option<MessageMeta>)> =
            Vec::with_capacity(changes.len());
        for c in changes {
            let meta = match c.kind {
                ChangeKind::Expunged => None,
                ChangeKind::Appended | ChangeKind::FlagsChanged => {
                    let known = self.seq_of(c.uid).is_some();
                    if !known && c.uid < self.uid_next && c.kind == ChangeKind::FlagsChanged {
                        // A message below our UIDNEXT we never saw was already gone.
                        None
                    } else {
                        stores.meta.get_message(self.id, c.uid).await?
                    }
                }
            };
            read.push((c, meta));
        }
        // New messages are claimed (or peeked at) as recent before the view changes; a
        // failed claim leaves the view as it was. The store raised the watermark only if
        // the claim succeeded, and a claim that succeeded but whose answer was lost makes
        // those messages recent nowhere, which is the safe side of "exactly one session".
        let newest = read
            .iter()
            .filter(|(c, m)| m.is_some() && self.seq_of(c.uid).is_none())
            .map(|(c, _)| c.uid)
            .max();
        let recent_above = match newest {
            Some(up_to) => claim(stores, self.id, self.recent_mode, up_to).await?,
            None => None,
        };
        // Phase 2: apply, infallibly.
        let mut update = Update::default();
        let mut added = 0;
        for (c, meta) in read {
            match c.kind {
                ChangeKind::Expunged => {
                    if self.seq_of(c.uid).is_some() && !self.pending_expunges.contains(&c.uid) {
                        self.pending_expunges.push(c.uid);
                    }
                }
                ChangeKind::Appended | ChangeKind::FlagsChanged => {
                    if let Some(meta) = meta {
                        let known = self.messages.binary_search_by_key(&c.uid, |m| m.uid);
                        if let Ok(i) = known {
                            let m = &mut self.messages[i];
                            if m.modseq < meta.modseq {
                                let changed = m.flags != meta.flags;
                                if self.keywords.learn(&meta.flags) {
                                    update.new_keywords = true;
                                }
                                m.flags = meta.flags;
                                m.modseq = meta.modseq;
                                if changed {
                                    update.flags_changed.push(c.uid);
                                }
                            }
                        } else {
                            added += 1;
                            let mut meta: ViewMessage = meta.into();
                            meta.recent = recent_above.is_some_and(|old| meta.uid > old);
                            if self.keywords.learn(&meta.flags) {
                                update.new_keywords = true;
                            }
                            // Appended out of UID order cannot happen (UIDs only grow);
                            // insert in place anyway rather than corrupt the numbering.
                            let pos = self
                                .messages
                                .binary_search_by_key(&c.uid, |m| m.uid)
                                .unwrap_or_else(|p| p);
                            self.messages.insert(pos, meta);
                        }
                    }
                }
            }
            self.known_modseq = self.known_modseq.max(c.modseq);
        }
        if let Some(last) = self.messages.last() {
            self.uid_next = self.uid_next.max(Uid(last.uid.0 + 1));
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
        Ok(update)
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
