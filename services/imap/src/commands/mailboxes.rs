//! SELECT, EXAMINE, CLOSE, UNSELECT, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST,
//! LSUB, STATUS, GETQUOTA, GETQUOTAROOT.

use super::{mailbox_name, ListPattern, DELIMITER};
use crate::response::{self, code, Resp};
use crate::selected::{RecentMode, Selected};
use crate::session::{Outcome, Session, State};
use imap_codec::imap_types::command::SelectParameter;
use imap_codec::imap_types::core::{AString, Atom, QuotedChar, Tag, Vec1};
use imap_codec::imap_types::extensions::quota::{QuotaGet, Resource};
use imap_codec::imap_types::flag::FlagNameAttribute;
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{Code, CodeOther, Data};
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};
use mailfleet_storage::{
    ChangeKind, FlagOp, Mailbox as StoreMailbox, MailboxId, ModSeq, SpecialUse, StoreError,
    StoreResult, Uid,
};
use std::num::{NonZeroU32, NonZeroU64};

/// Most mailboxes per account (CREATE refuses beyond).
pub const MAX_MAILBOXES: usize = 10_000;
/// Longest mailbox name in bytes.
pub const MAX_NAME: usize = 255;

fn attr(name: &'static str) -> Option<FlagNameAttribute<'static>> {
    Atom::try_from(name).ok().map(FlagNameAttribute::from)
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

pub(crate) fn to_mailbox(name: &str) -> Mailbox<'static> {
    Mailbox::try_from(name.to_string()).unwrap_or(Mailbox::Inbox)
}

/// The RFC 6154 attribute of a special-use mailbox (INBOX has none).
fn special_attr(su: SpecialUse) -> Option<FlagNameAttribute<'static>> {
    attr(match su {
        SpecialUse::Sent => "Sent",
        SpecialUse::Drafts => "Drafts",
        SpecialUse::Junk => "Junk",
        SpecialUse::Trash => "Trash",
        SpecialUse::Archive => "Archive",
        SpecialUse::Inbox => return None,
    })
}

/// The proper ancestors of a name: `a/b/c` → `a`, `a/b`.
fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices(DELIMITER).map(move |(i, _)| &name[..i])
}

/// One name of a LIST (SUBSCRIBED) answer (RFC 5258 §3).
#[derive(Debug)]
pub(crate) struct ListEntry {
    pub name: String,
    pub items: Vec<FlagNameAttribute<'static>>,
    /// RECURSIVEMATCH: a descendant is subscribed (`CHILDINFO ("SUBSCRIBED")`).
    pub childinfo: bool,
}

impl Session {
    pub(crate) async fn select(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        parameters: Vec<SelectParameter>,
        read_only: bool,
    ) -> StoreResult<Outcome> {
        let mut out = Vec::new();
        // Closing the selected mailbox is announced before anything about the new one, so a
        // client can tell which mailbox the following responses belong to (RFC 9051 §6.3.2;
        // RFC 7162 §3.2.11 asks the same of QRESYNC sessions). Also when the new SELECT fails:
        // the old mailbox is closed either way.
        if matches!(self.state, State::Selected(_)) {
            self.state = State::Authenticated;
            out.push(response::untagged_ok(
                Some(Code::Closed),
                "Previous mailbox closed",
            ));
        }
        let name = mailbox_name(&mailbox);
        let target = match self.access(&name, "r", false).await? {
            Ok(t) => t,
            Err(refusal) => {
                out.push(refusal.no(&tag));
                return Ok(Outcome::done(out));
            }
        };
        // RFC 4314 §4: a user who may change nothing in the mailbox gets it read-only.
        let read_only = read_only
            || !["s", "w", "t", "e", "i"]
                .iter()
                .any(|r| target.rights.has(r));
        self.selected_rights = target.rights;
        let mb = target.mailbox;
        let mut qresync = None;
        for p in parameters {
            match p {
                SelectParameter::CondStore => self.enabled.condstore = true,
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => {
                    if !self.enabled.qresync {
                        out.push(response::bad(&tag, "QRESYNC must be enabled first"));
                        return Ok(Outcome::done(out));
                    }
                    qresync = Some((uid_validity, mod_sequence_value, known_uids));
                }
            }
        }
        let recent_mode = if self.enabled.rev2 {
            RecentMode::Off
        } else if read_only {
            RecentMode::Peek
        } else {
            RecentMode::Claim
        };
        let sel =
            Selected::load(&self.stores, &self.cfg.views, &mb, read_only, recent_mode).await?;
        let (_unseen, first_unseen) = sel.unseen();
        out.push(response::data(Data::Exists(sel.len())));
        if recent_mode != RecentMode::Off {
            out.push(response::data(Data::Recent(sel.recent_count())));
        }
        // FLAGS and PERMANENTFLAGS name the keywords in use too (RFC 9051 §7.3.5).
        out.extend(super::fetch::flag_announcement(&sel));
        if let Some(first) = first_unseen {
            out.push(response::untagged_ok(
                Some(Code::Unseen(nz(first))),
                "First unseen",
            ));
        }
        out.push(response::untagged_ok(
            Some(Code::UidValidity(nz(sel.uid_validity))),
            "UIDs valid",
        ));
        out.push(response::untagged_ok(
            Some(Code::UidNext(nz(sel.uid_next.0))),
            "Predicted next UID",
        ));
        out.push(response::untagged_ok(
            Some(Code::HighestModSeq(
                NonZeroU64::new(sel.highest_modseq().0).unwrap_or(NonZeroU64::MIN),
            )),
            "Highest",
        ));
        out.push(response::untagged_ok(mailbox_id_code(&mb), "Mailbox id"));
        if let Some((validity, since, known)) = qresync {
            if validity.get() == sel.uid_validity {
                out.extend(
                    self.qresync_changes(&sel, ModSeq(since.get()), known)
                        .await?,
                );
            }
        }
        let code = if read_only {
            Code::ReadOnly
        } else {
            Code::ReadWrite
        };
        out.push(response::ok(
            &tag,
            Some(code),
            if read_only {
                "EXAMINE completed"
            } else {
                "SELECT completed"
            },
        ));
        self.state = State::Selected(Box::new(sel));
        Ok(Outcome::done(out))
    }

    /// QRESYNC (RFC 7162 §3.2.5): VANISHED (EARLIER) for expunges and FETCH for changes
    /// since the client's MODSEQ.
    async fn qresync_changes(
        &self,
        sel: &Selected,
        since: ModSeq,
        known: Option<SequenceSet>,
    ) -> StoreResult<Vec<response::Resp>> {
        let changes = self.stores.meta.changes_since(sel.id, since).await?;
        let mut vanished = Vec::new();
        let mut changed = Vec::new();
        for c in changes {
            match c.kind {
                ChangeKind::Expunged => {
                    let in_known = known
                        .as_ref()
                        .is_none_or(|k| super::in_set(k, c.uid.0, u32::MAX));
                    if in_known && sel.seq_of(c.uid).is_none() {
                        vanished.push(c.uid);
                    }
                }
                _ => {
                    if sel.seq_of(c.uid).is_some() {
                        changed.push(c.uid);
                    }
                }
            }
        }
        let mut out = Vec::new();
        if let Some(set) = super::fetch::uid_set(&vanished) {
            out.push(response::data(Data::Vanished {
                earlier: true,
                known_uids: set,
            }));
        }
        changed.sort();
        for uid in changed {
            if let Some(r) = super::fetch::flags_response(sel, uid, true, true) {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub(crate) async fn close(&mut self, tag: Tag<'static>, expunge: bool) -> StoreResult<Outcome> {
        if expunge {
            if let State::Selected(sel) = &self.state {
                if !sel.read_only && self.selected_rights.has("e") {
                    // By the flags stored now, not the view's (see EXPUNGE).
                    let gone = self.stores.meta.expunge_deleted(sel.id, None).await?;
                    if !gone.uids.is_empty() {
                        self.notify(sel.id, gone.modseq).await;
                    }
                }
            }
        }
        self.state = State::Authenticated;
        Ok(Outcome::done(vec![response::ok(
            &tag,
            None,
            if expunge {
                "CLOSE completed"
            } else {
                "UNSELECT completed"
            },
        )]))
    }

    /// Tells other sessions (on any node) that a mailbox changed.
    pub(crate) async fn notify(&self, mailbox: MailboxId, modseq: Option<ModSeq>) {
        let Some(account) = self.owner_of(mailbox) else {
            return;
        };
        let event = mailfleet_storage::coord::MailboxEvent::Changed {
            account,
            mailbox,
            modseq: modseq.unwrap_or(ModSeq(0)),
        };
        if let Err(e) = self.stores.coord.publish(event).await {
            tracing::warn!(error = %e, "change notification failed");
        }
    }

    async fn notify_mailboxes(&self) {
        if let Some(account) = self.account.as_ref() {
            let _ = self
                .stores
                .coord
                .publish(mailfleet_storage::coord::MailboxEvent::MailboxesChanged {
                    account: account.id,
                })
                .await;
        }
    }

    pub(crate) async fn create(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
    ) -> StoreResult<Outcome> {
        let name = mailbox_name(&mailbox);
        if name == "INBOX" {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                code("ALREADYEXISTS"),
                "INBOX always exists",
            )]));
        }
        if name.is_empty() || name.len() > MAX_NAME || name.split(DELIMITER).any(str::is_empty) {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                None,
                "Invalid mailbox name",
            )]));
        }
        // Names in the other users' namespace: `k` on the parent (RFC 4314 §4).
        let (acct, name) = match self.create_scope(&tag, &name).await? {
            Ok(scope) => scope,
            Err(refusal) => return Ok(Outcome::done(vec![refusal])),
        };
        let existing = self.stores.meta.list_mailboxes(acct).await?;
        if let Some(ph) = existing.iter().find(|m| m.name == name && m.noselect) {
            // CREATE of a `\Noselect` placeholder's name makes it a mailbox again.
            self.stores
                .meta
                .set_mailbox_noselect(acct, ph.id, false)
                .await?;
            self.notify_mailboxes().await;
            // A new UIDVALIDITY, so a new MAILBOXID: it is a new mailbox.
            let code = self
                .stores
                .meta
                .get_mailbox(acct, &name)
                .await?
                .and_then(|mb| mailbox_id_code(&mb));
            return Ok(Outcome::done(vec![response::ok(
                &tag,
                code,
                "CREATE completed",
            )]));
        }
        if existing.iter().any(|m| m.name == name) {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                code("ALREADYEXISTS"),
                "Mailbox already exists",
            )]));
        }
        if existing.len() >= MAX_MAILBOXES {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                code("LIMIT"),
                "Too many mailboxes",
            )]));
        }
        // Create missing parents so the hierarchy is always navigable.
        let parts: Vec<&str> = name.split(DELIMITER).collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join(&DELIMITER.to_string());
            if !existing.iter().any(|m| m.name == parent) {
                match self.stores.meta.create_mailbox(acct, &parent, None).await {
                    Ok(_) | Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let created = match self.stores.meta.create_mailbox(acct, &name, None).await {
            Ok(mb) => {
                self.inherit_public_acl(acct, &name, &mb).await?;
                mb
            }
            Err(StoreError::Conflict(_)) => {
                return Ok(Outcome::done(vec![response::no(
                    &tag,
                    code("ALREADYEXISTS"),
                    "Mailbox already exists",
                )]))
            }
            Err(StoreError::Invalid(_)) => {
                return Ok(Outcome::done(vec![response::no(
                    &tag,
                    None,
                    "Invalid mailbox name",
                )]))
            }
            Err(e) => return Err(e),
        };
        self.notify_mailboxes().await;
        // RFC 8474 §4.1: the tagged OK of CREATE names the new mailbox's MAILBOXID.
        Ok(Outcome::done(vec![response::ok(
            &tag,
            mailbox_id_code(&created),
            "CREATE completed",
        )]))
    }

    pub(crate) async fn delete(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
    ) -> StoreResult<Outcome> {
        let name = mailbox_name(&mailbox);
        if name == "INBOX" {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                None,
                "INBOX cannot be deleted",
            )]));
        }
        let mb = match self.access(&name, "x", true).await? {
            Ok(t) => t.mailbox,
            Err(refusal) => return Ok(Outcome::done(vec![refusal.no(&tag)])),
        };
        if mb.name == "INBOX" {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                None,
                "INBOX cannot be deleted",
            )]));
        }
        let prefix = format!("{}{DELIMITER}", mb.name);
        let has_children = self
            .stores
            .meta
            .list_mailboxes(mb.account)
            .await?
            .iter()
            .any(|m| m.name.starts_with(&prefix));
        // RFC 3501 §6.3.4: a mailbox with inferiors loses its messages and keeps its name
        // as `\Noselect`; deleting such a placeholder while it has inferiors is an error.
        if has_children && mb.noselect {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                None,
                "Mailbox has inferior hierarchical names",
            )]));
        }
        if matches!(&self.state, State::Selected(s) if s.id == mb.id) {
            self.state = State::Authenticated;
        }
        if has_children {
            self.stores
                .meta
                .set_mailbox_noselect(mb.account, mb.id, true)
                .await?;
        } else {
            self.stores.meta.delete_mailbox(mb.account, mb.id).await?;
            self.prune_placeholders(mb.account, &mb.name).await?;
        }
        self.notify_mailboxes().await;
        Ok(Outcome::done(vec![response::ok(
            &tag,
            None,
            "DELETE completed",
        )]))
    }

    pub(crate) async fn rename(
        &mut self,
        tag: Tag<'static>,
        from: Mailbox<'static>,
        to: Mailbox<'static>,
    ) -> StoreResult<Outcome> {
        let (from, to) = (mailbox_name(&from), mailbox_name(&to));
        if to == "INBOX" || to.is_empty() || to.len() > MAX_NAME {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                None,
                "Invalid target name",
            )]));
        }
        let (acct, from, to) = match self.rename_scope(&tag, &from, &to).await? {
            Ok(scope) => scope,
            Err(refusal) => return Ok(Outcome::done(vec![refusal])),
        };
        let all = self.stores.meta.list_mailboxes(acct).await?;
        let Some(src) = all.iter().find(|m| m.name == from) else {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                code("NONEXISTENT"),
                "No such mailbox",
            )]));
        };
        if all.iter().any(|m| m.name == to) {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                code("ALREADYEXISTS"),
                "Target mailbox exists",
            )]));
        }
        if from == "INBOX" {
            // RFC 9051 §6.3.6: renaming INBOX moves its messages to the new mailbox and
            // leaves INBOX empty.
            let dest = self.stores.meta.create_mailbox(acct, &to, None).await?;
            let mut after = Uid(0);
            loop {
                let page = self.stores.meta.list_messages(src.id, after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.uid;
                let uids: Vec<Uid> = page.iter().map(|m| m.uid).collect();
                let (_, gone) = self
                    .stores
                    .meta
                    .move_messages(acct, src.id, &uids, dest.id)
                    .await?;
                self.notify(src.id, gone.modseq).await;
            }
        } else {
            let prefix = format!("{from}{DELIMITER}");
            let children: Vec<&StoreMailbox> =
                all.iter().filter(|m| m.name.starts_with(&prefix)).collect();
            self.stores.meta.rename_mailbox(acct, src.id, &to).await?;
            for c in children {
                let new = format!("{to}{DELIMITER}{}", &c.name[prefix.len()..]);
                self.stores.meta.rename_mailbox(acct, c.id, &new).await?;
            }
            self.prune_placeholders(acct, &from).await?;
        }
        self.notify_mailboxes().await;
        Ok(Outcome::done(vec![response::ok(
            &tag,
            None,
            "RENAME completed",
        )]))
    }

    /// Removes the `\Noselect` placeholders above `name` that no longer have inferiors
    /// (after DELETE or RENAME took the last one): a placeholder exists only to keep its
    /// inferiors reachable (RFC 3501 §6.3.4), as in Dovecot.
    async fn prune_placeholders(
        &self,
        acct: mailfleet_storage::AccountId,
        name: &str,
    ) -> StoreResult<()> {
        let mut all = self.stores.meta.list_mailboxes(acct).await?;
        let mut up: Vec<&str> = ancestors(name).collect();
        up.reverse();
        for a in up {
            let prefix = format!("{a}{DELIMITER}");
            let Some(ph) = all.iter().find(|m| m.name == a && m.noselect).cloned() else {
                break;
            };
            if all.iter().any(|m| m.name.starts_with(&prefix)) {
                break;
            }
            self.stores.meta.delete_mailbox(acct, ph.id).await?;
            all.retain(|m| m.id != ph.id);
        }
        Ok(())
    }

    pub(crate) async fn subscribe(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        on: bool,
    ) -> StoreResult<Outcome> {
        let name = mailbox_name(&mailbox);
        let acct = self.acct()?.id;
        if on {
            if let Err(refusal) = self.access(&name, "l", true).await? {
                return Ok(Outcome::done(vec![refusal.no(&tag)]));
            }
            self.stores.meta.subscribe(acct, &name).await?;
        } else {
            self.stores.meta.unsubscribe(acct, &name).await?;
        }
        // NOTIFY's SubscriptionChange (RFC 5465) in other sessions, on any node.
        self.notify_mailboxes().await;
        Ok(Outcome::done(vec![response::ok(
            &tag,
            None,
            if on {
                "SUBSCRIBE completed"
            } else {
                "UNSUBSCRIBE completed"
            },
        )]))
    }

    pub(crate) async fn list(
        &mut self,
        tag: Tag<'static>,
        reference: Mailbox<'static>,
        pattern: ListMailbox<'static>,
        lsub: bool,
    ) -> StoreResult<Outcome> {
        let reference = match &reference {
            Mailbox::Inbox => "INBOX".to_string(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        let pattern = match &pattern {
            ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
            ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
        };
        let delimiter = QuotedChar::try_from(DELIMITER).ok();
        let done = if lsub {
            "LSUB completed"
        } else {
            "LIST completed"
        };
        if pattern.is_empty() && !lsub {
            // The hierarchy delimiter and root (RFC 9051 §6.3.9).
            return Ok(Outcome::done(vec![
                response::data(Data::List {
                    items: vec![FlagNameAttribute::Noselect],
                    delimiter,
                    mailbox: to_mailbox(""),
                }),
                response::ok(&tag, None, done),
            ]));
        }
        let full = format!("{reference}{pattern}");
        let matcher = match ListPattern::new(&full) {
            Ok(m) => m,
            Err(e) => return Ok(Outcome::done(vec![response::bad(&tag, &e.to_string())])),
        };
        let acct = self.acct()?.id;
        let boxes = self.stores.meta.list_mailboxes(acct).await?;
        let subscribed = self.stores.meta.subscriptions(acct).await?;
        let mut out = Vec::new();
        if lsub {
            // RFC 3501 §6.3.9: a parent the pattern matches that is not subscribed itself,
            // whose subscribed descendant the pattern does not match (`%` stops at the
            // delimiter), is listed with \Noselect.
            let mut parents: Vec<&str> = Vec::new();
            for s in &subscribed {
                if matcher.matches(s) {
                    continue;
                }
                for a in ancestors(s) {
                    if matcher.matches(a)
                        && !subscribed.iter().any(|x| x == a)
                        && !parents.contains(&a)
                    {
                        parents.push(a);
                    }
                }
            }
            for p in parents {
                out.push(response::data(Data::Lsub {
                    items: attr("Noselect").into_iter().collect(),
                    delimiter,
                    mailbox: to_mailbox(p),
                }));
            }
        }
        let names: Vec<(String, Option<SpecialUse>)> = if lsub {
            subscribed.iter().map(|n| (n.clone(), None)).collect()
        } else {
            boxes
                .iter()
                .map(|b| (b.name.clone(), b.special_use))
                .collect()
        };
        for (name, special) in names {
            if !matcher.matches(&name) {
                continue;
            }
            let prefix = format!("{name}{DELIMITER}");
            let children = boxes.iter().any(|b| b.name.starts_with(&prefix));
            let mut items: Vec<FlagNameAttribute<'static>> = Vec::new();
            if boxes.iter().any(|b| b.name == name && b.noselect) {
                items.push(FlagNameAttribute::Noselect);
            }
            items.extend(attr(if children {
                "HasChildren"
            } else {
                "HasNoChildren"
            }));
            items.extend(special.and_then(special_attr));
            if !lsub && subscribed.contains(&name) {
                items.extend(attr("Subscribed"));
            }
            let mailbox = to_mailbox(&name);
            out.push(response::data(if lsub {
                Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                }
            } else {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                }
            }));
        }
        if !lsub {
            out.extend(self.list_other_users(&matcher, &subscribed).await?);
        }
        out.push(response::ok(&tag, None, done));
        Ok(Outcome::done(out))
    }

    /// LIST (SUBSCRIBED) for one pattern (RFC 5258 §3): every subscribed name the pattern
    /// matches, existing or not (`\NonExistent`); with RECURSIVEMATCH also the parents
    /// whose subscribed descendants the pattern does not match, and `CHILDINFO` on every
    /// name with a subscribed descendant (as Dovecot answers).
    pub(crate) async fn list_subscribed(
        &self,
        reference: &str,
        pattern: &str,
        recursive: bool,
    ) -> StoreResult<Result<Vec<ListEntry>, super::PatternError>> {
        let matcher = match ListPattern::new(&format!("{reference}{pattern}")) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let acct = self.acct()?.id;
        let boxes = self.stores.meta.list_mailboxes(acct).await?;
        let subscribed = self.stores.meta.subscriptions(acct).await?;
        let mut names: std::collections::BTreeSet<&str> =
            subscribed.iter().map(String::as_str).collect();
        if recursive {
            for s in &subscribed {
                names.extend(ancestors(s));
            }
        }
        let mut out = Vec::new();
        for name in names {
            if !matcher.matches(name) {
                continue;
            }
            let is_sub = subscribed.iter().any(|s| s == name);
            let prefix = format!("{name}{DELIMITER}");
            let mut below = subscribed.iter().filter(|s| s.starts_with(&prefix));
            let childinfo = recursive && below.clone().next().is_some();
            if !is_sub && !below.any(|d| !matcher.matches(d)) {
                continue;
            }
            // In plain LIST's order: children, special use, then \Subscribed.
            let mut items = Vec::new();
            match boxes.iter().find(|b| b.name == name) {
                None => items.extend(attr("NonExistent")),
                Some(b) => {
                    let children = boxes.iter().any(|c| c.name.starts_with(&prefix));
                    items.extend(attr(if children {
                        "HasChildren"
                    } else {
                        "HasNoChildren"
                    }));
                    items.extend(b.special_use.and_then(special_attr));
                }
            }
            if is_sub {
                items.extend(attr("Subscribed"));
            }
            out.push(ListEntry {
                name: name.to_string(),
                items,
                childinfo,
            });
        }
        Ok(Ok(out))
    }

    pub(crate) async fn status(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        items: Vec<StatusDataItemName>,
    ) -> StoreResult<Outcome> {
        self.status_with(tag, mailbox, items, false).await
    }

    /// STATUS, with the MAILBOXID item (RFC 8474 §4.2) when `mailbox_id`: the codec has no
    /// such item, so the response is the codec's line with it added.
    pub(crate) async fn status_with(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        items: Vec<StatusDataItemName>,
        mailbox_id: bool,
    ) -> StoreResult<Outcome> {
        let name = mailbox_name(&mailbox);
        let mb = match self.access(&name, "r", false).await? {
            Ok(t) => t.mailbox,
            Err(refusal) => return Ok(Outcome::done(vec![refusal.no(&tag)])),
        };
        let needs_usage = items
            .iter()
            .any(|i| matches!(i, StatusDataItemName::Unseen | StatusDataItemName::Size));
        let usage = if needs_usage {
            Some(self.stores.meta.mailbox_usage(mb.id).await?)
        } else {
            None
        };
        let recent = if items.contains(&StatusDataItemName::Recent) {
            Some(self.recent_in(&mb).await?)
        } else {
            None
        };
        let mut deleted = None;
        if items.iter().any(|i| {
            matches!(
                i,
                StatusDataItemName::Deleted | StatusDataItemName::DeletedStorage
            )
        }) {
            let (mut n, mut bytes) = (0u32, 0u64);
            let mut after = Uid(0);
            loop {
                let page = self.stores.meta.list_messages(mb.id, after, 5000).await?;
                let Some(last) = page.last() else { break };
                after = last.uid;
                for m in page.iter().filter(|m| m.flags.contains("\\Deleted")) {
                    n += 1;
                    bytes += m.size;
                }
            }
            deleted = Some((n, bytes));
        }
        let mut values = Vec::new();
        for item in items {
            values.push(match item {
                StatusDataItemName::Messages => StatusDataItem::Messages(mb.message_count as u32),
                StatusDataItemName::Recent => StatusDataItem::Recent(recent.unwrap_or(0)),
                StatusDataItemName::UidNext => StatusDataItem::UidNext(nz(mb.uid_next.0)),
                StatusDataItemName::UidValidity => StatusDataItem::UidValidity(nz(mb.uid_validity)),
                StatusDataItemName::Unseen => {
                    StatusDataItem::Unseen(usage.map_or(0, |u| u.unseen as u32))
                }
                StatusDataItemName::Size => StatusDataItem::Size(usage.map_or(0, |u| u.size)),
                StatusDataItemName::HighestModSeq => {
                    StatusDataItem::HighestModSeq(mb.highest_modseq.0)
                }
                StatusDataItemName::Deleted => StatusDataItem::Deleted(deleted.map_or(0, |d| d.0)),
                StatusDataItemName::DeletedStorage => {
                    StatusDataItem::DeletedStorage(deleted.map_or(0, |d| d.1))
                }
            });
        }
        let no_items = values.is_empty();
        let mut line = response::data(Data::Status {
            mailbox: to_mailbox(&name),
            items: values.into(),
        });
        if mailbox_id {
            // Mailbox names are encoded here, as the driver only encodes typed responses.
            let wire = crate::mutf7::response_out(&line, self.mutf7_names());
            let bytes = response::encode(wire.as_ref().unwrap_or(&line));
            if let Some(head) = bytes.strip_suffix(b")\r\n") {
                let mut raw = head.to_vec();
                if !no_items {
                    raw.push(b' ');
                }
                raw.extend(
                    format!(
                        "MAILBOXID ({}))\r\n",
                        mailfleet_storage::object_id::mailbox_object_id(&mb)
                    )
                    .bytes(),
                );
                line = Resp::Raw(raw);
            }
        }
        Ok(Outcome::done(vec![
            line,
            response::ok(&tag, None, "STATUS completed"),
        ]))
    }

    /// STATUS RECENT: the messages nobody claimed yet (above the recent watermark), plus
    /// those recent in this session when it has the mailbox selected.
    async fn recent_in(&self, mb: &StoreMailbox) -> StoreResult<u32> {
        let mark = self.stores.meta.claim_recent(mb.id, Uid(0)).await?;
        let mut n = match &self.state {
            State::Selected(sel) if sel.id == mb.id && sel.recent_mode == RecentMode::Claim => {
                sel.recent_count()
            }
            _ => 0,
        };
        let mut after = mark;
        loop {
            let page = self.stores.meta.list_messages(mb.id, after, 5000).await?;
            let Some(last) = page.last() else { break };
            after = last.uid;
            n += page.len() as u32;
        }
        Ok(n)
    }

    fn quota_data(&self) -> Option<Data<'static>> {
        quota_of(self.account.as_ref()?, "")
    }
}

/// The QUOTA response for `acct`'s storage under the root name `root`.
pub(crate) fn quota_of(acct: &mailfleet_storage::Account, root: &str) -> Option<Data<'static>> {
    {
        if acct.quota_bytes == 0 {
            return None;
        }
        let q = QuotaGet::new(
            Resource::Storage,
            acct.used_bytes / 1024,
            acct.quota_bytes / 1024,
        );
        Some(Data::Quota {
            root: AString::try_from(root.to_string()).ok()?,
            quotas: Vec1::from(q),
        })
    }
}

impl Session {
    /// Re-reads the account so quota figures are current.
    async fn refresh_account(&mut self) -> StoreResult<()> {
        let id = self.acct()?.id;
        if let Some(a) = self.stores.meta.get_account_by_id(id).await? {
            self.account = Some(a);
        }
        Ok(())
    }

    pub(crate) async fn get_quota_root(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
    ) -> StoreResult<Outcome> {
        self.refresh_account().await?;
        let name = mailbox_name(&mailbox);
        let target = match self.access(&name, "", true).await? {
            Ok(t) => t,
            Err(refusal) => return Ok(Outcome::done(vec![refusal.no(&tag)])),
        };
        if target.shared {
            // A shared mailbox counts against its owner's quota.
            return self.shared_quota_root(&tag, &name, target.owner).await;
        }
        let quota = self.quota_data();
        let roots = if quota.is_some() {
            AString::try_from("").ok().into_iter().collect()
        } else {
            vec![]
        };
        let mut out = vec![response::data(Data::QuotaRoot {
            mailbox: to_mailbox(&name),
            roots,
        })];
        out.extend(quota.map(response::data));
        out.push(response::ok(&tag, None, "GETQUOTAROOT completed"));
        Ok(Outcome::done(out))
    }

    pub(crate) async fn get_quota(
        &mut self,
        tag: Tag<'static>,
        root: AString<'static>,
    ) -> StoreResult<Outcome> {
        self.refresh_account().await?;
        let root_name = String::from_utf8_lossy(root.as_ref()).into_owned();
        let me = self.acct()?.address.clone();
        if let Some((owner, _)) = super::acl::split_shared(&root_name, &me) {
            return self.shared_quota(&tag, &owner).await;
        }
        if !root.as_ref().is_empty() {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                code("NONEXISTENT"),
                "No such quota root",
            )]));
        }
        match self.quota_data() {
            Some(d) => Ok(Outcome::done(vec![
                response::data(d),
                response::ok(&tag, None, "GETQUOTA completed"),
            ])),
            None => Ok(Outcome::done(vec![response::no(
                &tag,
                code("NONEXISTENT"),
                "No quota set",
            )])),
        }
    }
}

/// Flag operations in storage terms.
pub(crate) fn flag_op(kind: imap_codec::imap_types::flag::StoreType) -> FlagOp {
    use imap_codec::imap_types::flag::StoreType;
    match kind {
        StoreType::Replace => FlagOp::Replace,
        StoreType::Add => FlagOp::Add,
        StoreType::Remove => FlagOp::Remove,
    }
}

/// `MAILBOXID (id)` (RFC 8474 §4.1), for SELECT/EXAMINE's untagged OK and CREATE's tagged
/// OK. The id is an atom of [A-Za-z0-9_-], so the code is valid as written.
pub(crate) fn mailbox_id_code(mb: &StoreMailbox) -> Option<Code<'static>> {
    let text = format!(
        "MAILBOXID ({})",
        mailfleet_storage::object_id::mailbox_object_id(mb)
    );
    Some(Code::Other(CodeOther::unvalidated(text.into_bytes())))
}

/// Whether `r` is a STATUS data response (typed, or the raw line of [`Session::status_with`]
/// with MAILBOXID), which LIST-STATUS passes on.
pub(crate) fn is_status_data(r: &Resp) -> bool {
    match r {
        Resp::Typed(imap_codec::imap_types::response::Response::Data(Data::Status { .. })) => true,
        Resp::Raw(b) => b.starts_with(b"* STATUS "),
        _ => false,
    }
}
