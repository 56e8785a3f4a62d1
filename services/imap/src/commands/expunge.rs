//! EXPUNGE and UID EXPUNGE (RFC 4315).

use super::resolve;
use crate::response;
use crate::session::{Outcome, Session, State};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::sequence::SequenceSet;
use mailfleet_storage::{StoreResult, Uid};

impl Session {
    pub(crate) async fn expunge(
        &mut self,
        tag: Tag<'static>,
        only: Option<SequenceSet>,
    ) -> StoreResult<Outcome> {
        let State::Selected(sel) = &mut self.state else {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "No mailbox selected",
            )]));
        };
        if sel.read_only {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                response::code("READ-ONLY"),
                "Mailbox is read-only",
            )]));
        }
        if !self.selected_rights.has("e") {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                response::code("NOPERM"),
                "Permission denied (no expunge right)",
            )]));
        }
        // The session's view only narrows UID EXPUNGE to its set; which messages carry
        // \Deleted is decided by the store, inside its transaction (RFC 9051 §6.4.3: another
        // session may have cleared the flag since this one last looked).
        let only: Option<Vec<Uid>> = only.as_ref().map(|set| {
            resolve(sel, set, true)
                .into_iter()
                .map(|(_, u)| u)
                .collect()
        });
        let id = sel.id;
        let mut modseq = None;
        if only.as_ref().is_none_or(|o| !o.is_empty()) {
            let gone = self
                .stores
                .meta
                .expunge_deleted(id, only.as_deref())
                .await?;
            if !gone.uids.is_empty() {
                if let State::Selected(sel) = &mut self.state {
                    sel.expunged_here(&gone.uids);
                }
                modseq = gone.modseq;
                self.notify(id, gone.modseq).await;
            }
        }
        let mut out = self.pending_updates(true).await?;
        let code = modseq
            .and_then(|m| std::num::NonZeroU64::new(m.0))
            .map(imap_codec::imap_types::response::Code::HighestModSeq);
        let code = if self.enabled.condstore { code } else { None };
        out.push(response::ok(&tag, code, "EXPUNGE completed"));
        Ok(Outcome::done(out))
    }
}
