//! APPEND with UIDPLUS's APPENDUID (RFC 4315), MULTIAPPEND (RFC 3502, several messages in
//! one atomic APPEND) and the storing part of REPLACE (RFC 8508).

use super::mailbox_name;
use crate::response::{self, Resp};
use crate::session::{Outcome, Session};
use bytes::Bytes;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, CodeOther};
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::{Appended, Flags, NewMessage, StoreError, StoreResult};
use std::num::NonZeroU32;

/// One message of an APPEND, checked and ready to store.
pub(crate) struct Prepared {
    data: Bytes,
    flags: Flags,
    internal_date: i64,
}

/// An APPEND message's parts, as the codec decoded them.
pub(crate) type AppendParts = (
    Vec<Flag<'static>>,
    Option<DateTime>,
    LiteralOrLiteral8<'static>,
);

impl Session {
    pub(crate) async fn append(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        flags: Vec<Flag<'static>>,
        date: Option<DateTime>,
        message: LiteralOrLiteral8<'static>,
    ) -> StoreResult<Outcome> {
        self.append_many(tag, mailbox, vec![(flags, date, message)])
            .await
    }

    /// Checks one message of an APPEND: size, flags. The error is the command's answer.
    fn prepare_message(
        &self,
        tag: &Tag<'static>,
        (flags, date, message): AppendParts,
    ) -> Result<Prepared, Resp> {
        let data: Vec<u8> = match message {
            LiteralOrLiteral8::Literal(l) => l.into_inner().into_owned(),
            LiteralOrLiteral8::Literal8(l) => l.data.into_owned(),
        };
        if data.len() > self.cfg.max_message_size {
            return Err(response::no(tag, Some(Code::TooBig), "Message too large"));
        }
        if data.is_empty() {
            return Err(response::no(tag, None, "Empty message"));
        }
        if let Some(flag) = super::unsettable_flag(&flags) {
            return Err(response::bad(
                tag,
                &format!("{flag} cannot be set by a client"),
            ));
        }
        if flags.len() > super::store::MAX_KEYWORDS {
            return Err(response::no(tag, response::code("LIMIT"), "Too many flags"));
        }
        let internal_date = date
            .map(|d| d.as_ref().timestamp())
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        Ok(Prepared {
            data: Bytes::from(data),
            flags: Flags::new(flags.iter().map(|f| f.to_string())),
            internal_date,
        })
    }

    /// Stores the messages of one APPEND (several with MULTIAPPEND, RFC 3502) in one
    /// store transaction: all of them or none, with the quota checked for all together.
    /// `Ok(Err(resp))` is a refusal to send as the command's answer; `Ok(Ok(..))` the
    /// mailbox and where each message landed.
    pub(crate) async fn store_appends(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &Mailbox<'static>,
        messages: Vec<AppendParts>,
    ) -> StoreResult<Result<(mailfleet_storage::Mailbox, Vec<Appended>), Resp>> {
        let mut prepared = Vec::with_capacity(messages.len());
        for m in messages {
            match self.prepare_message(tag, m) {
                Ok(p) => prepared.push(p),
                Err(r) => return Ok(Err(r)),
            }
        }
        let name = mailbox_name(mailbox);
        // `i` on the target (RFC 4314 §4); the messages count against the owner's quota.
        let target = match self.access(&name, "i", false).await? {
            Ok(t) => t,
            Err(super::acl::Refusal::Missing) => {
                return Ok(Err(response::no(
                    tag,
                    Some(Code::TryCreate),
                    "No such mailbox",
                )))
            }
            Err(refusal) => return Ok(Err(refusal.no(tag))),
        };
        let account = target.owner;
        let mb = target.mailbox;
        let mut new = Vec::with_capacity(prepared.len());
        let mut texts = Vec::with_capacity(prepared.len());
        for p in prepared {
            let for_parse = p.data.clone();
            let analysis = tokio::task::spawn_blocking(move || {
                let ix = mailfleet_mime::search_text::index_pieces(&for_parse);
                (
                    mailfleet_mime::analyze(&for_parse).to_bytes(),
                    mailfleet_storage::MessageText::from_pairs(ix.pieces, ix.complete),
                    // Thread keys for THREADID (RFC 8474).
                    mailfleet_storage::MessageRefs::from_message(&for_parse),
                )
            });
            let size = p.data.len() as u64;
            // The parse and the body's durable write are independent: done at once.
            let (analyzed, blob) = tokio::join!(analysis, self.stores.put_blob(p.data));
            let (summary, text, refs) = analyzed
                .map_err(|e| StoreError::Unavailable(format!("message analysis failed: {e}")))?;
            let blob = blob?;
            texts.push(text);
            new.push(NewMessage {
                account,
                mailbox: mb.id,
                blob,
                size,
                internal_date: p.internal_date,
                flags: super::acl::permitted_flags(p.flags, target.rights),
                summary: Some(summary),
                refs,
                trace: None,
            });
        }
        let count = new.len();
        let appended = match self.stores.meta.append(new, QuotaPolicy::Enforce).await {
            Ok(a) => a,
            Err(StoreError::QuotaExceeded(_)) => {
                return Ok(Err(response::no(
                    tag,
                    Some(Code::OverQuota),
                    "Quota exceeded",
                )))
            }
            Err(e) => return Err(e),
        };
        if appended.len() != count {
            return Err(StoreError::Corrupt(
                "append returned too few messages".into(),
            ));
        }
        // Written in the background (`mailfleet_storage::indexer`): until then the messages
        // are pending in the index and SEARCH parses them (`mailfleet reindex` indexes
        // what a crash left pending).
        let entries = appended.iter().map(|a| a.uid).zip(texts).collect();
        self.stores.indexer.submit(mb.id, entries).await;
        self.notify(mb.id, appended.iter().map(|a| a.modseq).max())
            .await;
        Ok(Ok((mb, appended)))
    }

    /// APPEND of one message or (MULTIAPPEND) several, answered with APPENDUID and the UIDs
    /// in order (RFC 4315 §3: a uid-set for several).
    pub(crate) async fn append_many(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        messages: Vec<AppendParts>,
    ) -> StoreResult<Outcome> {
        let (mb, appended) = match self.store_appends(&tag, &mailbox, messages).await? {
            Ok(done) => done,
            Err(refusal) => return Ok(Outcome::done(vec![refusal])),
        };
        let mut out = self.pending_updates(false).await?;
        out.push(response::ok(
            &tag,
            Some(append_uid_code(mb.uid_validity, &appended)),
            "APPEND completed",
        ));
        Ok(Outcome::done(out))
    }
}

/// `APPENDUID validity uid-set` (RFC 4315 §3), the UIDs in the order of the messages: they
/// ascend, so the set is their ranges.
pub(crate) fn append_uid_code(uid_validity: u32, appended: &[Appended]) -> Code<'static> {
    if let [one] = appended {
        return Code::AppendUid {
            uid_validity: NonZeroU32::new(uid_validity).unwrap_or(NonZeroU32::MIN),
            uid: NonZeroU32::new(one.uid.0).unwrap_or(NonZeroU32::MIN),
        };
    }
    let uids: Vec<mailfleet_storage::Uid> = appended.iter().map(|a| a.uid).collect();
    let set = super::fetch::ranges(&uids)
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}:{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    Code::Other(CodeOther::unvalidated(
        format!("APPENDUID {} {set}", uid_validity.max(1)).into_bytes(),
    ))
}
