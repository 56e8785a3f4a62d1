//! COPY, MOVE and their UID forms, with UIDPLUS's COPYUID (RFC 4315) and MOVE (RFC 6851).

use super::fetch::ranges;
use super::{mailbox_name, resolve, seq_set_valid};
use crate::response;
use crate::session::{Outcome, Session, State};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::Code;
use imap_codec::imap_types::sequence::SequenceSet;
use mailfleet_storage::{StoreError, StoreResult, Uid};
use std::num::NonZeroU32;

impl Session {
    /// A copy or move between Junk and another mailbox teaches the user's spam model
    /// ([`crate::junk`]); only within one account (the model is the owner's).
    async fn train_junk(
        &self,
        cfg: std::sync::Arc<mailfleet_spam::SpamConfig>,
        account: mailfleet_storage::AccountId,
        source: mailfleet_storage::MailboxId,
        dest: &mailfleet_storage::Mailbox,
        copied: &[mailfleet_storage::Copied],
    ) {
        if copied.is_empty() || dest.account != account {
            return;
        }
        let Ok(boxes) = self.stores.meta.list_mailboxes(account).await else {
            return;
        };
        let Some(from) = boxes.iter().find(|m| m.id == source) else {
            return;
        };
        if let Some(class) = crate::junk::lesson(from, dest) {
            crate::junk::train_later(
                self.stores.clone(),
                cfg,
                account,
                dest.id,
                copied.iter().map(|c| c.dest.uid).collect(),
                class,
            );
        }
    }

    pub(crate) async fn copy(
        &mut self,
        tag: Tag<'static>,
        set: SequenceSet,
        mailbox: Mailbox<'static>,
        uid: bool,
        is_move: bool,
    ) -> StoreResult<Outcome> {
        let dest_name = mailbox_name(&mailbox);
        // `i` on the destination (RFC 4314 §4).
        let target = match self.access(&dest_name, "i", false).await? {
            Ok(t) => t,
            Err(super::acl::Refusal::Missing) => {
                return Ok(Outcome::done(vec![response::no(
                    &tag,
                    Some(Code::TryCreate),
                    "No such destination mailbox",
                )]))
            }
            Err(refusal) => return Ok(Outcome::done(vec![refusal.no(&tag)])),
        };
        if is_move && !self.selected_has("te") {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                response::code("NOPERM"),
                "Permission denied (MOVE needs the t and e rights)",
            )]));
        }
        let source_owner = match &self.state {
            State::Selected(sel) => self.owner_of(sel.id),
            _ => None,
        };
        // Within one account with every right, the store copies in one transaction; else
        // (another account's quota, or rights that drop flags) message by message.
        let direct = source_owner == Some(target.owner) && target.rights == super::acl::Rights::ALL;
        let account = target.owner;
        let dest = target.mailbox.clone();
        let State::Selected(sel) = &mut self.state else {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "No mailbox selected",
            )]));
        };
        if is_move && sel.read_only {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                response::code("READ-ONLY"),
                "Mailbox is read-only",
            )]));
        }
        if !uid && !seq_set_valid(sel, &set) {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "Invalid message sequence number",
            )]));
        }
        let uids: Vec<Uid> = resolve(sel, &set, uid)
            .into_iter()
            .map(|(_, u)| u)
            .collect();
        let source = sel.id;
        let result = if !direct {
            self.copy_across(source, &uids, &target, is_move).await
        } else if is_move {
            self.stores
                .meta
                .move_messages(account, source, &uids, dest.id)
                .await
                .map(|(c, gone)| (c, Some(gone)))
        } else {
            self.stores
                .meta
                .copy_messages(account, source, &uids, dest.id)
                .await
                .map(|c| (c, None))
        };
        let (copied, gone) = match result {
            Ok(r) => r,
            Err(StoreError::QuotaExceeded(_)) => {
                return Ok(Outcome::done(vec![response::no(
                    &tag,
                    Some(Code::OverQuota),
                    "Quota exceeded",
                )]))
            }
            Err(e) => return Err(e),
        };
        if let Some(cfg) = &self.cfg.junk_training {
            self.train_junk(cfg.clone(), account, source, &dest, &copied)
                .await;
        }
        let mut out = Vec::new();
        // Source UIDs ascend and so do the new ones, so the two sets pair up in order.
        let code = match (
            uidplus_set(&copied.iter().map(|c| c.source_uid).collect::<Vec<_>>()),
            uidplus_set(&copied.iter().map(|c| c.dest.uid).collect::<Vec<_>>()),
        ) {
            (Some(source), Some(destination)) => Some(Code::CopyUid {
                uid_validity: NonZeroU32::new(dest.uid_validity).unwrap_or(NonZeroU32::MIN),
                source,
                destination,
            }),
            _ => None,
        };
        let last = copied.last().map(|c| c.dest.modseq);
        self.notify(dest.id, last).await;
        if let Some(gone) = gone {
            let State::Selected(sel) = &mut self.state else {
                return Ok(Outcome::done(out));
            };
            sel.expunged_here(&gone.uids);
            self.notify(source, gone.modseq).await;
            if let Some(code) = code {
                // RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
                out.push(response::untagged_ok(Some(code), "Moved"));
            }
            out.extend(self.pending_updates(true).await?);
            out.push(response::ok(
                &tag,
                None,
                if uid {
                    "UID MOVE completed"
                } else {
                    "MOVE completed"
                },
            ));
        } else {
            out.extend(self.pending_updates(uid).await?);
            out.push(response::ok(
                &tag,
                code,
                if uid {
                    "UID COPY completed"
                } else {
                    "COPY completed"
                },
            ));
        }
        Ok(Outcome::done(out))
    }
}

fn uidplus_set(uids: &[Uid]) -> Option<UidSet> {
    let elems: Vec<UidElement> = ranges(uids)
        .into_iter()
        .filter_map(|(a, b)| {
            let (a, b) = (NonZeroU32::new(a)?, NonZeroU32::new(b)?);
            Some(if a == b {
                UidElement::Single(a)
            } else {
                UidElement::Range(a, b)
            })
        })
        .collect();
    Vec1::try_from(elems).ok().map(UidSet)
}
