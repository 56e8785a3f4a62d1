//! The session side of the commands [`super::msgext`] parses: MULTIAPPEND (RFC 3502),
//! REPLACE (RFC 8508), UNAUTHENTICATE (RFC 8437), FETCH SAVEDATE (RFC 8514) and PREVIEW
//! (RFC 8970), FETCH EMAILID and THREADID (RFC 8474), the SAVEDATE and object-id search
//! keys, and STATUS MAILBOXID.

use super::msgext::{self, FetchExtra, MsgExt, Piece, SaveKey};
use crate::response::{self, Resp};
use crate::selected::Selected;
use crate::session::{Outcome, Session, State};
use bytes::Bytes;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{IString, NString, Tag, Vec1};
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::response::Data;
use mailfleet_mime::MessageSummary;
use mailfleet_storage::{MailboxId, StoreResult, Stores, Uid};
use std::collections::HashMap;
use std::num::NonZeroU32;

/// Summaries as stored, without computing missing ones (PREVIEW (LAZY) never reads a
/// message: RFC 8970 §3.1 lets the server answer NIL instead).
pub(crate) async fn stored_summaries(
    stores: &Stores,
    mailbox: MailboxId,
    uids: &[Uid],
) -> StoreResult<HashMap<Uid, MessageSummary>> {
    let mut out = HashMap::new();
    for chunk in uids.chunks(500) {
        for (uid, bytes) in stores.meta.message_summaries(mailbox, chunk).await? {
            if let Ok(s) = MessageSummary::from_bytes(&bytes) {
                out.insert(uid, s);
            }
        }
    }
    Ok(out)
}

/// One FETCH data item as encoded by the codec, without the frame around it.
fn encode_item(item: MessageDataItem<'static>) -> Option<Vec<u8>> {
    let one = response::encode(&response::data(Data::Fetch {
        seq: NonZeroU32::MIN,
        items: Vec1::from(item),
    }));
    Some(
        one.strip_prefix(b"* 1 FETCH (")?
            .strip_suffix(b")\r\n")?
            .to_vec(),
    )
}

/// `SAVEDATE "dd-Mon-yyyy hh:mm:ss +0000"` or `SAVEDATE NIL` (RFC 8514 §4.2): the date is
/// written as the codec writes INTERNALDATE.
fn savedate_item(ts: Option<i64>) -> Vec<u8> {
    let value = ts
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .and_then(|d| imap_codec::imap_types::datetime::DateTime::try_from(d.fixed_offset()).ok())
        .and_then(|d| encode_item(MessageDataItem::InternalDate(d)))
        .and_then(|b| b.strip_prefix(b"INTERNALDATE ").map(<[u8]>::to_vec));
    let mut out = b"SAVEDATE ".to_vec();
    out.extend(value.unwrap_or_else(|| b"NIL".to_vec()));
    out
}

/// `PREVIEW "text"` or `PREVIEW NIL` (RFC 8970 §3): a quoted string when the text allows,
/// else a literal (UTF-8 cannot be quoted in IMAP4rev1).
fn preview_item(text: Option<&str>) -> Vec<u8> {
    let value = text
        .and_then(|t| IString::try_from(t.to_string()).ok())
        .and_then(|s| encode_item(MessageDataItem::Rfc822Header(NString(Some(s)))))
        .and_then(|b| b.strip_prefix(b"RFC822.HEADER ").map(<[u8]>::to_vec));
    let mut out = b"PREVIEW ".to_vec();
    out.extend(value.unwrap_or_else(|| b"NIL".to_vec()));
    out
}

/// The SAVEDATE and PREVIEW items of each message of a FETCH batch. A summary stored
/// before previews existed gets its preview computed now and stored (not for LAZY, which
/// answers NIL for it).
pub(crate) async fn fetch_extras(
    stores: &Stores,
    sel: &Selected,
    extra: FetchExtra,
    uids: &[Uid],
    blobs: &HashMap<Uid, Bytes>,
    summaries: &HashMap<Uid, MessageSummary>,
) -> StoreResult<HashMap<Uid, Vec<Vec<u8>>>> {
    let mut out: HashMap<Uid, Vec<Vec<u8>>> = HashMap::new();
    if !extra.any() {
        return Ok(out);
    }
    if extra.savedate {
        let dates: HashMap<Uid, Option<i64>> = stores
            .meta
            .message_save_dates(sel.id, uids)
            .await?
            .into_iter()
            .collect();
        for uid in uids {
            out.entry(*uid)
                .or_default()
                .push(savedate_item(dates.get(uid).copied().flatten()));
        }
    }
    if extra.emailid || extra.threadid {
        let ids: HashMap<Uid, mailfleet_storage::MessageObjectIds> = stores
            .meta
            .message_object_ids(sel.id, uids)
            .await?
            .into_iter()
            .collect();
        for uid in uids {
            // An id is an atom of [A-Za-z0-9_-] (the store makes them so): written bare in
            // parentheses (RFC 8474 §7: `"EMAILID" SP "(" objectid ")"`).
            let Some(x) = ids.get(uid) else { continue };
            let items = out.entry(*uid).or_default();
            if extra.emailid {
                items.push(format!("EMAILID ({})", x.email_id).into_bytes());
            }
            if extra.threadid {
                items.push(format!("THREADID ({})", x.thread_id).into_bytes());
            }
        }
    }
    if let Some(lazy) = extra.preview {
        for uid in uids {
            let text = match summaries.get(uid) {
                Some(s) if s.preview.is_some() => s.preview.clone(),
                Some(s) if !lazy => {
                    let raw = match blobs.get(uid) {
                        Some(b) => Some(b.clone()),
                        None => sel.read_body_if_present(stores, *uid).await?,
                    };
                    match raw {
                        Some(raw) => {
                            let mut s = s.clone();
                            let root = s.root.clone();
                            let text = tokio::task::spawn_blocking(move || {
                                mailfleet_mime::preview(&raw, &root)
                            })
                            .await
                            .map_err(|e| {
                                mailfleet_storage::StoreError::Unavailable(e.to_string())
                            })?;
                            s.preview = Some(text.clone());
                            stores
                                .meta
                                .set_message_summary(sel.id, *uid, s.to_bytes())
                                .await?;
                            Some(text)
                        }
                        None => None,
                    }
                }
                _ => None,
            };
            out.entry(*uid)
                .or_default()
                .push(preview_item(text.as_deref()));
        }
    }
    Ok(out)
}

/// A FETCH response with items the codec cannot express added at its end.
pub(crate) fn fetch_response_with(
    seq: u32,
    data: Vec<(MessageDataItem<'static>, Option<u32>)>,
    raw_items: &[Vec<u8>],
) -> Option<Resp> {
    let mut out = format!("* {seq} FETCH (").into_bytes();
    if !data.is_empty() {
        let encoded = response::encode(&super::fetch::fetch_response(seq, data)?);
        let inner = encoded
            .strip_prefix(out.as_slice())?
            .strip_suffix(b")\r\n")?
            .to_vec();
        out.extend(inner);
        out.push(b' ');
    }
    out.extend(raw_items.join(&b' '));
    out.extend_from_slice(b")\r\n");
    Some(Resp::Raw(out))
}

/// The day (UTC) a message was saved; a message stored before save dates were recorded
/// counts its INTERNALDATE, the best estimate there is.
fn save_day(save: Option<i64>, internal: i64) -> Option<chrono::NaiveDate> {
    chrono::DateTime::from_timestamp(save.unwrap_or(internal), 0).map(|d| d.date_naive())
}

/// Most messages one EMAILID or THREADID search key matches in a mailbox (a thread larger
/// than this is answered with its first messages by UID).
const MAX_OBJECT_ID_MATCHES: usize = 100_000;

fn uid_list(uids: &[Uid]) -> String {
    super::fetch::ranges(uids)
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}:{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Session {
    /// Runs a command of [`msgext`], answering a storage failure as [`Session::handle`]
    /// does.
    pub async fn message_ext(&mut self, ext: MsgExt) -> Outcome {
        let tag = ext.tag().clone();
        // RFC 6855 §4: the UTF8 APPEND data item exists only once UTF8=ACCEPT is enabled.
        let ext = match ext {
            MsgExt::Utf8 { .. } if self.is_authenticated() && !self.enabled.utf8 => {
                return Outcome::done(vec![response::bad(
                    &tag,
                    "APPEND data UTF8 (...) needs ENABLE UTF8=ACCEPT",
                )]);
            }
            MsgExt::Utf8 { inner, .. } => *inner,
            other => other,
        };
        match self.run_message_ext(ext).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "IMAP command failed on storage");
                Outcome::done(vec![response::no(
                    &tag,
                    response::code("UNAVAILABLE"),
                    "Temporary storage failure, try again",
                )])
            }
        }
    }

    async fn run_message_ext(&mut self, ext: MsgExt) -> StoreResult<Outcome> {
        if !self.is_authenticated() {
            return Ok(Outcome::done(vec![response::bad(
                ext.tag(),
                "Log in first",
            )]));
        }
        match ext {
            MsgExt::Append { cmd } => Ok(self.handle(cmd).await),
            // Unwrapped by `message_ext`; preparse never nests it.
            MsgExt::Utf8 { tag, .. } => Ok(Outcome::done(vec![response::bad(
                &tag,
                "Syntax error in command",
            )])),
            MsgExt::MultiAppend { tag, messages } => {
                let mut mailbox = None;
                let mut parts = Vec::with_capacity(messages.len());
                for m in messages {
                    if let CommandBody::Append {
                        mailbox: mb,
                        flags,
                        date,
                        message,
                    } = m.body
                    {
                        mailbox.get_or_insert(mb);
                        parts.push((flags, date, message));
                    }
                }
                let Some(mailbox) = mailbox else {
                    return Ok(Outcome::done(vec![response::bad(&tag, "Expected APPEND")]));
                };
                self.append_many(tag, mailbox, parts).await
            }
            MsgExt::TooManyMessages { tag } => Ok(Outcome::done(vec![response::no(
                &tag,
                response::code("LIMIT"),
                &format!(
                    "At most {} messages per APPEND",
                    msgext::MAX_MULTIAPPEND_MESSAGES
                ),
            )])),
            MsgExt::Replace {
                tag,
                uid,
                number,
                append,
            } => self.replace(tag, uid, number, append).await,
            MsgExt::Unauthenticate { tag } => Ok(self.unauthenticate(tag)),
            MsgExt::Fetch { cmd, extra } => {
                let outcome = self.handle(cmd).await;
                if let Some(job) = self.fetch_job.as_mut() {
                    job.extra = extra;
                }
                Ok(outcome)
            }
            MsgExt::Search { tag, pieces } => self.search_save_keys(tag, pieces).await,
            MsgExt::Status { cmd } => {
                let tag = cmd.tag.clone();
                match cmd.body {
                    CommandBody::Status {
                        mailbox,
                        item_names,
                    } => {
                        self.status_with(tag, mailbox, item_names.into_owned(), true)
                            .await
                    }
                    _ => Ok(Outcome::done(vec![response::bad(&tag, "Expected STATUS")])),
                }
            }
        }
    }

    /// UNAUTHENTICATE (RFC 8437): back to the not-authenticated state with nothing kept
    /// of the login: the selected mailbox is left without expunging (as UNSELECT does),
    /// extensions enabled with ENABLE or by use are off again, the per-user session slot
    /// is released. The session is rebuilt from scratch, so state added to it later
    /// (notification subscriptions and the like) is reset too; only the connection's own
    /// facts stay: TLS (RFC 8437 §3: STARTTLS is not offered again) and the failed-login
    /// count, which guards the connection, not the account.
    fn unauthenticate(&mut self, tag: Tag<'static>) -> Outcome {
        let mut fresh = Session::new(
            self.cfg.clone(),
            self.stores.clone(),
            self.login.clone(),
            self.remote_ip,
            self.tls,
        );
        fresh.failed_logins = self.failed_logins;
        fresh.fetch_batch_bytes = self.fetch_batch_bytes;
        if let Some(a) = self.account.as_ref() {
            tracing::info!(user = %a.address, ip = %self.remote_ip, "IMAP unauthenticate");
        }
        // Dropping the old session releases its slot and selected mailbox.
        *self = fresh;
        Outcome::done(vec![response::ok(&tag, None, "UNAUTHENTICATE completed")])
    }

    /// REPLACE / UID REPLACE (RFC 8508): appends the new message to the named mailbox,
    /// then expunges the old one from the selected mailbox. The append comes first, so a
    /// failure of either step never loses the message (RFC 8508 §3.4 asks for atomicity
    /// "as far as possible"; the two steps are one store transaction each). Answers
    /// `* OK [APPENDUID ...]`, the EXPUNGE (or VANISHED) and EXISTS that follow, then OK.
    async fn replace(
        &mut self,
        tag: Tag<'static>,
        uid: bool,
        number: NonZeroU32,
        append: Command<'static>,
    ) -> StoreResult<Outcome> {
        let State::Selected(sel) = &self.state else {
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
        let old = if uid {
            let u = Uid(number.get());
            if sel.seq_of(u).is_none() {
                return Ok(Outcome::done(vec![response::no(
                    &tag,
                    None,
                    "No message with that UID",
                )]));
            }
            u
        } else {
            match sel.by_seq(number.get()) {
                Some(m) => m.uid,
                None => {
                    return Ok(Outcome::done(vec![response::bad(
                        &tag,
                        "Invalid message sequence number",
                    )]))
                }
            }
        };
        let source = sel.id;
        let CommandBody::Append {
            mailbox,
            flags,
            date,
            message,
        } = append.body
        else {
            return Ok(Outcome::done(vec![response::bad(&tag, "Expected APPEND")]));
        };
        let (mb, appended) = match self
            .store_appends(&tag, &mailbox, vec![(flags, date, message)])
            .await?
        {
            Ok(done) => done,
            Err(refusal) => return Ok(Outcome::done(vec![refusal])),
        };
        let mut out = vec![response::untagged_ok(
            Some(super::append::append_uid_code(mb.uid_validity, &appended)),
            "Replacement message ready",
        )];
        let gone = self.stores.meta.expunge(source, &[old]).await?;
        if let State::Selected(sel) = &mut self.state {
            sel.expunged_here(&gone.uids);
        }
        self.notify(source, gone.modseq).await;
        out.extend(self.pending_updates(true).await?);
        out.push(response::ok(
            &tag,
            None,
            if uid {
                "UID REPLACE completed"
            } else {
                "REPLACE completed"
            },
        ));
        Ok(Outcome::done(out))
    }

    /// SEARCH/SORT with SAVEDBEFORE, SAVEDON, SAVEDSINCE or SAVEDATESUPPORTED: each key is
    /// replaced by `(UID set)` of the messages of the selected mailbox it matches (or
    /// `(NOT ALL)` when none, `ALL` for SAVEDATESUPPORTED: every mailbox keeps save dates),
    /// and the command is then decoded by the codec and run as usual. Without a selected
    /// mailbox the command fails as any SEARCH does.
    async fn search_save_keys(
        &mut self,
        tag: Tag<'static>,
        pieces: Vec<Piece>,
    ) -> StoreResult<Outcome> {
        let mut days: Vec<(Uid, Option<chrono::NaiveDate>)> = Vec::new();
        let dated = pieces.iter().any(|p| {
            matches!(
                p,
                Piece::Key(SaveKey::Before(_) | SaveKey::On(_) | SaveKey::Since(_))
            )
        });
        // EMAILID / THREADID: the messages of the selected mailbox with that id, looked
        // up in the store's index (never a scan of the mailbox).
        let mut by_id: HashMap<String, Vec<Uid>> = HashMap::new();
        if let State::Selected(sel) = &self.state {
            for p in &pieces {
                if let Piece::Key(SaveKey::EmailId(id) | SaveKey::ThreadId(id)) = p {
                    let found = self
                        .stores
                        .meta
                        .find_by_object_id(sel.owner, Some(sel.id), id, MAX_OBJECT_ID_MATCHES)
                        .await?;
                    // Only what this session's view holds (a message appended since is
                    // not in it yet).
                    let uids = found
                        .into_iter()
                        .map(|(_, u)| u)
                        .filter(|u| sel.seq_of(*u).is_some())
                        .collect();
                    by_id.insert(id.clone(), uids);
                }
            }
        }
        if let (true, State::Selected(sel)) = (dated, &self.state) {
            let uids: Vec<Uid> = sel.messages().map(|m| m.uid).collect();
            let mut dates: HashMap<Uid, Option<i64>> = HashMap::new();
            for chunk in uids.chunks(500) {
                dates.extend(self.stores.meta.message_save_dates(sel.id, chunk).await?);
            }
            days = sel
                .messages()
                .map(|m| {
                    let save = dates.get(&m.uid).copied().flatten();
                    (m.uid, save_day(save, m.internal_date))
                })
                .collect();
        }
        let text = msgext::assemble(&pieces, |key| {
            if *key == SaveKey::Supported {
                return b"ALL".to_vec();
            }
            let matched: Vec<Uid> = match key {
                SaveKey::EmailId(id) | SaveKey::ThreadId(id) => {
                    by_id.get(id).cloned().unwrap_or_default()
                }
                _ => days
                    .iter()
                    .filter(|(_, d)| d.is_some_and(|d| key.matches(d)))
                    .map(|(u, _)| *u)
                    .collect(),
            };
            if matched.is_empty() {
                b"(NOT ALL)".to_vec()
            } else {
                format!("(UID {})", uid_list(&matched)).into_bytes()
            }
        });
        use imap_codec::decode::Decoder;
        use imap_codec::imap_types::IntoStatic;
        if let Ok((rest, cmd)) = imap_codec::CommandCodec::default().decode(&text) {
            if rest.is_empty() {
                return Ok(self.handle(cmd.into_static()).await);
            }
        }
        let plain = |bytes: &[u8]| match imap_codec::CommandCodec::default().decode(bytes) {
            Ok((b"", cmd)) => Some(cmd.into_static()),
            _ => None,
        };
        if let Some((cmd, ext)) = super::searchext::decode_message(&text, plain) {
            return Ok(self.search_ext(cmd, ext).await);
        }
        Ok(Outcome::done(vec![response::bad(
            &tag,
            "Syntax error in command",
        )]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_items_are_encoded_by_the_codec() {
        assert_eq!(
            String::from_utf8(savedate_item(Some(1_706_781_600))).expect("utf8"),
            "SAVEDATE \"01-Feb-2024 10:00:00 +0000\""
        );
        assert_eq!(savedate_item(None), b"SAVEDATE NIL");
        assert_eq!(preview_item(Some("Hi there")), b"PREVIEW \"Hi there\"");
        assert_eq!(preview_item(Some("")), b"PREVIEW \"\"");
        assert_eq!(preview_item(None), b"PREVIEW NIL");
        // Not quotable: UTF-8 goes out as a literal (its length in octets).
        assert_eq!(preview_item(Some("Jörg")), b"PREVIEW {5}\r\nJ\xc3\xb6rg");
    }

    #[test]
    fn raw_items_join_the_codec_items() {
        let r = fetch_response_with(
            3,
            vec![(MessageDataItem::Uid(NonZeroU32::new(9).expect("nz")), None)],
            &[b"SAVEDATE NIL".to_vec()],
        )
        .expect("response");
        assert_eq!(response::encode(&r), b"* 3 FETCH (UID 9 SAVEDATE NIL)\r\n");
        let r = fetch_response_with(4, vec![], &[b"PREVIEW \"x\"".to_vec()]).expect("response");
        assert_eq!(response::encode(&r), b"* 4 FETCH (PREVIEW \"x\")\r\n");
    }

    #[test]
    fn uid_lists_are_ranges() {
        assert_eq!(uid_list(&[Uid(1), Uid(2), Uid(3), Uid(7)]), "1:3,7");
    }
}
