//! APPEND with UIDPLUS's APPENDUID (RFC 4315).

use super::mailbox_name;
use crate::response;
use crate::session::{Outcome, Session};
use bytes::Bytes;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::Code;
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::{Flags, NewMessage, StoreError, StoreResult};
use std::num::NonZeroU32;

impl Session {
    pub(crate) async fn append(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        flags: Vec<Flag<'static>>,
        date: Option<DateTime>,
        message: LiteralOrLiteral8<'static>,
    ) -> StoreResult<Outcome> {
        let data: Vec<u8> = match message {
            LiteralOrLiteral8::Literal(l) => l.into_inner().into_owned(),
            LiteralOrLiteral8::Literal8(l) => l.data.into_owned(),
        };
        if data.len() > self.cfg.max_message_size {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                Some(Code::TooBig),
                "Message too large",
            )]));
        }
        if data.is_empty() {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                None,
                "Empty message",
            )]));
        }
        if let Some(flag) = super::unsettable_flag(&flags) {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                &format!("{flag} cannot be set by a client"),
            )]));
        }
        if flags.len() > super::store::MAX_KEYWORDS {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                response::code("LIMIT"),
                "Too many flags",
            )]));
        }
        let account = self.acct()?.id;
        let name = mailbox_name(&mailbox);
        let Some(mb) = self.stores.meta.get_mailbox(account, &name).await? else {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                Some(Code::TryCreate),
                "No such mailbox",
            )]));
        };
        let internal_date = date
            .map(|d| d.as_ref().timestamp())
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        let data = Bytes::from(data);
        let for_parse = data.clone();
        let (summary, text) = tokio::task::spawn_blocking(move || {
            let ix = mailfleet_mime::search_text::index_pieces(&for_parse);
            (
                mailfleet_mime::analyze(&for_parse).to_bytes(),
                mailfleet_storage::MessageText::from_pairs(ix.pieces, ix.complete),
            )
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("message analysis failed: {e}")))?;
        let size = data.len() as u64;
        let blob = self.stores.put_blob(data).await?;
        let flags = Flags::new(flags.iter().map(|f| f.to_string()));
        let appended = match self
            .stores
            .meta
            .append(
                vec![NewMessage {
                    account,
                    mailbox: mb.id,
                    blob,
                    size,
                    internal_date,
                    flags,
                    summary: Some(summary),
                }],
                QuotaPolicy::Enforce,
            )
            .await
        {
            Ok(a) => a,
            Err(StoreError::QuotaExceeded(_)) => {
                return Ok(Outcome::done(vec![response::no(
                    &tag,
                    Some(Code::OverQuota),
                    "Quota exceeded",
                )]))
            }
            Err(e) => return Err(e),
        };
        let Some(a) = appended.first() else {
            return Err(StoreError::Corrupt("append returned nothing".into()));
        };
        // Best effort: a message whose indexing failed stays pending in the index, and
        // SEARCH then parses it (`mailfleet admin reindex` indexes it later).
        if let Err(e) = self
            .stores
            .meta
            .index_text(mb.id, vec![(a.uid, text)])
            .await
        {
            tracing::warn!(error = %e, "full-text indexing failed");
        }
        self.notify(mb.id, Some(a.modseq)).await;
        let mut out = self.pending_updates(false).await?;
        out.push(response::ok(
            &tag,
            Some(Code::AppendUid {
                uid_validity: NonZeroU32::new(mb.uid_validity).unwrap_or(NonZeroU32::MIN),
                uid: NonZeroU32::new(a.uid.0).unwrap_or(NonZeroU32::MIN),
            }),
            "APPEND completed",
        ));
        Ok(Outcome::done(out))
    }
}
