//! SELECT, EXAMINE, CLOSE, UNSELECT, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST,
//! LSUB, STATUS, GETQUOTA, GETQUOTAROOT.

use super::{mailbox_name, ListPattern, DELIMITER};
use crate::response::{self, code};
use crate::selected::Selected;
use crate::session::{Outcome, Session, State};
use imap_codec::imap_types::command::SelectParameter;
use imap_codec::imap_types::core::{AString, Atom, QuotedChar, Tag, Vec1};
use imap_codec::imap_types::extensions::quota::{QuotaGet, Resource};
use imap_codec::imap_types::flag::{Flag, FlagNameAttribute, FlagPerm};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{Code, Data};
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

impl Session {
    async fn find_mailbox(&self, name: &str) -> StoreResult<Option<StoreMailbox>> {
        let acct = self.acct()?.id;
        self.stores.meta.get_mailbox(acct, name).await
    }

    pub(crate) async fn select(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        parameters: Vec<SelectParameter>,
        read_only: bool,
    ) -> StoreResult<Outcome> {
        let mut out = Vec::new();
        if matches!(self.state, State::Selected(_)) {
            self.state = State::Authenticated;
            if self.enabled.qresync {
                out.push(response::untagged_ok(
                    Some(Code::Closed),
                    "Previous mailbox closed",
                ));
            }
        }
        let name = mailbox_name(&mailbox);
        let Some(mb) = self.find_mailbox(&name).await? else {
            out.push(response::no(&tag, code("NONEXISTENT"), "No such mailbox"));
            return Ok(Outcome::done(out));
        };
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
        let sel = Selected::load(&self.stores, &mb, read_only).await?;
        let (_unseen, first_unseen) = sel.unseen();
        out.push(response::data(Data::Exists(sel.len())));
        out.push(response::data(Data::Recent(0)));
        let system = [
            Flag::Answered,
            Flag::Flagged,
            Flag::Deleted,
            Flag::Seen,
            Flag::Draft,
        ];
        out.push(response::data(Data::Flags(system.to_vec())));
        let mut perm: Vec<FlagPerm<'static>> = system.iter().cloned().map(FlagPerm::from).collect();
        perm.push(FlagPerm::Asterisk);
        out.push(response::untagged_ok(
            Some(Code::PermanentFlags(if read_only { vec![] } else { perm })),
            "Flags permitted",
        ));
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
                if !sel.read_only {
                    let deleted: Vec<Uid> = sel
                        .messages()
                        .iter()
                        .filter(|m| m.flags.contains("\\Deleted"))
                        .map(|m| m.uid)
                        .collect();
                    if !deleted.is_empty() {
                        let gone = self.stores.meta.expunge(sel.id, &deleted).await?;
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
        let Some(account) = self.account.as_ref() else {
            return;
        };
        let event = mailfleet_storage::coord::MailboxEvent::Changed {
            account: account.id,
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
        let acct = self.acct()?.id;
        let existing = self.stores.meta.list_mailboxes(acct).await?;
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
        match self.stores.meta.create_mailbox(acct, &name, None).await {
            Ok(_) => {}
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
        }
        self.notify_mailboxes().await;
        Ok(Outcome::done(vec![response::ok(
            &tag,
            None,
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
        let Some(mb) = self.find_mailbox(&name).await? else {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                code("NONEXISTENT"),
                "No such mailbox",
            )]));
        };
        if matches!(&self.state, State::Selected(s) if s.id == mb.id) {
            self.state = State::Authenticated;
        }
        self.stores.meta.delete_mailbox(mb.account, mb.id).await?;
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
        let acct = self.acct()?.id;
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
        }
        self.notify_mailboxes().await;
        Ok(Outcome::done(vec![response::ok(
            &tag,
            None,
            "RENAME completed",
        )]))
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
            if self.find_mailbox(&name).await?.is_none() {
                return Ok(Outcome::done(vec![response::no(
                    &tag,
                    code("NONEXISTENT"),
                    "No such mailbox",
                )]));
            }
            self.stores.meta.subscribe(acct, &name).await?;
        } else {
            self.stores.meta.unsubscribe(acct, &name).await?;
        }
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
            items.extend(attr(if children {
                "HasChildren"
            } else {
                "HasNoChildren"
            }));
            if let Some(su) = special.filter(|s| *s != SpecialUse::Inbox) {
                let a = match su {
                    SpecialUse::Sent => "Sent",
                    SpecialUse::Drafts => "Drafts",
                    SpecialUse::Junk => "Junk",
                    SpecialUse::Trash => "Trash",
                    SpecialUse::Archive => "Archive",
                    SpecialUse::Inbox => "Inbox",
                };
                items.extend(attr(a));
            }
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
        out.push(response::ok(&tag, None, done));
        Ok(Outcome::done(out))
    }

    pub(crate) async fn status(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        items: Vec<StatusDataItemName>,
    ) -> StoreResult<Outcome> {
        let name = mailbox_name(&mailbox);
        let Some(mb) = self.find_mailbox(&name).await? else {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                code("NONEXISTENT"),
                "No such mailbox",
            )]));
        };
        let needs_usage = items
            .iter()
            .any(|i| matches!(i, StatusDataItemName::Unseen | StatusDataItemName::Size));
        let usage = if needs_usage {
            Some(self.stores.meta.mailbox_usage(mb.id).await?)
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
                StatusDataItemName::Recent => StatusDataItem::Recent(0),
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
        Ok(Outcome::done(vec![
            response::data(Data::Status {
                mailbox: to_mailbox(&name),
                items: values.into(),
            }),
            response::ok(&tag, None, "STATUS completed"),
        ]))
    }

    fn quota_data(&self) -> Option<Data<'static>> {
        let acct = self.account.as_ref()?;
        if acct.quota_bytes == 0 {
            return None;
        }
        let q = QuotaGet::new(
            Resource::Storage,
            acct.used_bytes / 1024,
            acct.quota_bytes / 1024,
        );
        Some(Data::Quota {
            root: AString::try_from("").ok()?,
            quotas: Vec1::from(q),
        })
    }

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
        if self.find_mailbox(&name).await?.is_none() {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                code("NONEXISTENT"),
                "No such mailbox",
            )]));
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
