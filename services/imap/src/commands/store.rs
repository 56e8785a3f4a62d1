//! STORE and UID STORE, with CONDSTORE's UNCHANGEDSINCE (RFC 7162 §3.1.3).

use super::fetch::{flags_response, uid_set};
use super::mailboxes::flag_op;
use super::{resolve, seq_set_valid};
use crate::response;
use crate::session::{Outcome, Session, State};
use imap_codec::imap_types::command::StoreModifier;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::response::Code;
use imap_codec::imap_types::sequence::SequenceSet;
use mailfleet_storage::{Flags, ModSeq, StoreResult, Uid};

/// Most keywords one message may carry (a client-controlled count).
pub const MAX_KEYWORDS: usize = 100;

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn store(
        &mut self,
        tag: Tag<'static>,
        set: SequenceSet,
        kind: StoreType,
        resp: StoreResponse,
        flags: Vec<Flag<'static>>,
        uid: bool,
        modifiers: Vec<StoreModifier>,
    ) -> StoreResult<Outcome> {
        let unchanged_since = modifiers
            .iter()
            .map(|StoreModifier::UnchangedSince(v)| *v)
            .next();
        let announce_modseq = unchanged_since.is_some() && self.enable_condstore();
        let condstore = self.enabled.condstore;
        // With QRESYNC every unsolicited FETCH carries the UID (RFC 7162 §3.2.4).
        let with_uid = uid || self.enabled.qresync;
        let State::Selected(sel) = &mut self.state else {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "No mailbox selected",
            )]));
        };
        if let Some(flag) = super::unsettable_flag(&flags) {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                &format!("{flag} cannot be set by a client"),
            )]));
        }
        if sel.read_only {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                response::code("READ-ONLY"),
                "Mailbox is read-only",
            )]));
        }
        // RFC 4314 §4: `s` for \Seen, `t` for \Deleted, `w` for every other flag; a
        // replacement may clear any flag, so it needs all three.
        let denied = flags.iter().any(|f| {
            let need = match f {
                Flag::Seen => "s",
                Flag::Deleted => "t",
                _ => "w",
            };
            !self.selected_rights.has(need)
        }) || (kind == StoreType::Replace && !self.selected_rights.has("swt"));
        if denied {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                response::code("NOPERM"),
                "Permission denied for these flags",
            )]));
        }
        if !uid && !seq_set_valid(sel, &set) {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "Invalid message sequence number",
            )]));
        }
        if flags.len() > MAX_KEYWORDS {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                response::code("LIMIT"),
                "Too many flags",
            )]));
        }
        let flags = Flags::new(flags.iter().map(|f| {
            let f = f.to_string();
            sel.keywords.spelling(&f).map_or(f, str::to_string)
        }));
        let targets: Vec<Uid> = resolve(sel, &set, uid)
            .into_iter()
            .map(|(_, u)| u)
            .collect();
        // UNCHANGEDSINCE is tested by the store against the MODSEQ it holds, inside the
        // write: the view's MODSEQ may be older than a change another session just made,
        // and testing that would overwrite the change (RFC 7162 §3.1.3).
        let (changed, modified) = match unchanged_since {
            Some(v) => {
                let r = self
                    .stores
                    .meta
                    .store_flags_unchanged_since(sel.id, &targets, flag_op(kind), &flags, ModSeq(v))
                    .await?;
                (r.changed, r.modified)
            }
            None => (
                self.stores
                    .meta
                    .store_flags(sel.id, &targets, flag_op(kind), &flags)
                    .await?,
                Vec::new(),
            ),
        };
        let failed: std::collections::HashSet<Uid> = modified.iter().copied().collect();
        let allowed: Vec<Uid> = targets
            .iter()
            .copied()
            .filter(|u| !failed.contains(u))
            .collect();
        let mut out = Vec::new();
        let mut last_modseq = None;
        let mut new_keywords = false;
        for c in &changed {
            if let Some(m) = sel.get_mut(c.uid) {
                m.flags = c.flags.clone();
                m.modseq = c.modseq;
            }
            new_keywords |= sel.keywords.learn(&c.flags);
            last_modseq = Some(c.modseq);
        }
        if new_keywords {
            // The client learns of a new keyword before a FETCH shows it (RFC 9051 §7.3.5).
            out.extend(super::fetch::flag_announcement(sel));
        }
        let sel_id = sel.id;
        if resp == StoreResponse::Answer {
            // Report every targeted message that is still there, changed or not, as
            // RFC 9051 §6.4.6 shows; with CONDSTORE the MODSEQ too.
            for u in &allowed {
                out.extend(flags_response(sel, *u, with_uid, condstore));
            }
        } else if condstore {
            // .SILENT with CONDSTORE still reports MODSEQ of changed messages (RFC 7162).
            for c in &changed {
                out.extend(flags_response(sel, c.uid, with_uid, true));
            }
        }
        if !changed.is_empty() {
            self.notify(sel_id, last_modseq).await;
        }
        out.extend(self.pending_updates(uid).await?);
        let code = if modified.is_empty() {
            if announce_modseq {
                self.highest_modseq_code()
            } else {
                None
            }
        } else {
            // MODIFIED lists what failed the UNCHANGEDSINCE test (UIDs for UID STORE).
            let ids: Vec<Uid> = if uid {
                modified
            } else {
                let State::Selected(sel) = &self.state else {
                    return Ok(Outcome::done(out));
                };
                modified
                    .iter()
                    .filter_map(|u| sel.seq_of(*u).map(Uid))
                    .collect()
            };
            uid_set(&ids).map(Code::Modified)
        };
        out.push(response::ok(
            &tag,
            code,
            if uid {
                "UID STORE completed"
            } else {
                "STORE completed"
            },
        ));
        Ok(Outcome::done(out))
    }
}
