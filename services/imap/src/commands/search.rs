//! SEARCH and SORT (RFC 5256), with every RFC 9051 search key and CONDSTORE's MODSEQ.
//!
//! Keys on flags, sizes, dates and UIDs are answered from the session's view. Header and
//! body keys compare decoded text case-insensitively, as RFC 9051 §6.4.4 asks, on the texts
//! `mailfleet_mime::search_text` names: from the store's full-text index where it can answer
//! (strings of three characters or more, messages indexed completely), which holds exactly
//! those texts folded, otherwise by parsing the message (mail-parser). A message is parsed
//! at most once per command.
//!
//! BODY and TEXT also look at the text of attachments (`search_text::attachment_texts`:
//! text parts, PDFs, office documents), in the index and in the scan alike. The scan
//! extracts it on a blocking thread, and only for a message that a BODY or TEXT key could
//! not have answered from the index and that has such an attachment.

use super::in_set;
use crate::response;
use crate::selected::{Msg, Selected, ViewMessage};
use crate::session::{Outcome, Session, State};
use chrono::NaiveDate;
use imap_codec::imap_types::core::{Charset, Tag, Vec1};
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_codec::imap_types::response::{Code, Data};
use imap_codec::imap_types::search::SearchKey;
use mail_parser::{Message, MessageParser};
use mailfleet_mime::search_text::{self, field_texts, texts_match, SearchField};
use mailfleet_storage::{StoreResult, Stores};
use std::num::{NonZeroU32, NonZeroU64};

/// Nesting depth of search keys accepted (NOT/OR/parentheses), against stack exhaustion.
const MAX_DEPTH: usize = 64;
/// Search keys one SEARCH or SORT may hold: every key is evaluated for every message.
pub const MAX_SEARCH_KEYS: usize = 1000;
/// Sort criteria one SORT may name (RFC 5256 has nine keys; more only repeats them).
pub const MAX_SORT_CRITERIA: usize = 16;

/// Number of keys in the tree. Walked with an explicit stack; the depth is checked apart.
fn key_count(key: &SearchKey<'_>) -> usize {
    let mut stack = vec![key];
    let mut n = 0;
    while let Some(k) = stack.pop() {
        n += 1;
        match k {
            SearchKey::And(v) => stack.extend(v.as_ref().iter()),
            SearchKey::Not(k) => stack.push(k),
            SearchKey::Or(a, b) => {
                stack.push(a);
                stack.push(b);
            }
            _ => {}
        }
    }
    n
}

fn lower(s: &[u8]) -> String {
    search_text::fold(&String::from_utf8_lossy(s))
}

fn day_of(ts: i64) -> Option<NaiveDate> {
    chrono::DateTime::from_timestamp(ts, 0).map(|d| d.date_naive())
}

fn depth(key: &SearchKey<'_>) -> usize {
    use SearchKey::*;
    match key {
        And(v) => 1 + v.as_ref().iter().map(depth).max().unwrap_or(0),
        Not(k) => 1 + depth(k),
        Or(a, b) => 1 + depth(a).max(depth(b)),
        _ => 1,
    }
}

/// Everything a key may look at for one message.
struct Candidate<'a> {
    seq: u32,
    msg: Msg<'a>,
    parsed: Option<&'a Message<'a>>,
    raw: Option<&'a [u8]>,
    largest_seq: u32,
    largest_uid: u32,
    /// What the full-text index answered for text keys of this command.
    index: &'a IndexAnswers,
    /// The attachments' texts, when a key needs them (extracted off the async workers).
    attachments: Option<&'a [String]>,
}

/// The Date: header's calendar date as written, disregarding time and timezone (RFC 3501
/// §6.4.4, RFC 9051 §6.4.4): `Mon, 1 Jan 2024 23:30 -0500` is on 1 Jan 2024, though it is 2
/// Jan in UTC.
fn sent_date(c: &Candidate<'_>) -> Option<NaiveDate> {
    let d = c.parsed?.date()?;
    NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
}

fn matches(key: &SearchKey<'_>, c: &Candidate<'_>) -> bool {
    use SearchKey::*;
    let f = |name: &str| c.msg.flags.contains(name);
    match key {
        And(v) => v.as_ref().iter().all(|k| matches(k, c)),
        SequenceSet(s) => in_set(s, c.seq, c.largest_seq),
        Uid(s) => in_set(s, c.msg.uid.0, c.largest_uid),
        All => true,
        Answered => f("\\Answered"),
        Deleted => f("\\Deleted"),
        Draft => f("\\Draft"),
        Flagged => f("\\Flagged"),
        Seen => f("\\Seen"),
        Unanswered => !f("\\Answered"),
        Undeleted => !f("\\Deleted"),
        Undraft => !f("\\Draft"),
        Unflagged => !f("\\Flagged"),
        Unseen => !f("\\Seen"),
        // \Recent as this session holds it (RFC 3501 §6.4.4: NEW is RECENT UNSEEN).
        Recent => c.msg.recent,
        New => c.msg.recent && !f("\\Seen"),
        Old => !c.msg.recent,
        Keyword(k) => f(k.as_ref()),
        Unkeyword(k) => !f(k.as_ref()),
        Larger(n) => c.msg.size > u64::from(*n),
        Smaller(n) => c.msg.size < u64::from(*n),
        Before(d) => day_of(c.msg.internal_date).is_some_and(|x| x < *d.as_ref()),
        On(d) => day_of(c.msg.internal_date).is_some_and(|x| x == *d.as_ref()),
        Since(d) => day_of(c.msg.internal_date).is_some_and(|x| x >= *d.as_ref()),
        SentBefore(d) => sent_date(c).is_some_and(|x| x < *d.as_ref()),
        SentOn(d) => sent_date(c).is_some_and(|x| x == *d.as_ref()),
        SentSince(d) => sent_date(c).is_some_and(|x| x >= *d.as_ref()),
        Older(secs) => {
            chrono::Utc::now().timestamp() - c.msg.internal_date >= i64::from(secs.get())
        }
        Younger(secs) => {
            chrono::Utc::now().timestamp() - c.msg.internal_date <= i64::from(secs.get())
        }
        ModSequence { modseq, .. } => c.msg.modseq.0 >= *modseq,
        Not(k) => !matches(k, c),
        Or(a, b) => matches(a, c) || matches(b, c),
        Bcc(_) | Cc(_) | From(_) | To(_) | Subject(_) | Body(_) | Text(_) | Header(..) => {
            if let Some(known) = c.index.answer(key, c.msg.uid.0) {
                return known;
            }
            let (Some(p), Some(raw), Some(k)) = (c.parsed, c.raw, TextKey::of(key)) else {
                return false;
            };
            k.fields().into_iter().any(|f| match f {
                SearchField::Attachments => texts_match(c.attachments.unwrap_or(&[]), &k.needle),
                _ => texts_match(&field_texts(p, raw, f), &k.needle),
            })
        }
    }
}

/// A key on a message's text: the fields it looks at and its folded string.
struct TextKey {
    fields: &'static [SearchField<'static>],
    /// HEADER's field name.
    header: Option<String>,
    needle: String,
}

impl TextKey {
    /// `None` for keys that are not on text. TEXT is the header block or the body (RFC
    /// 9051 §6.4.4); the body, for BODY and TEXT, includes the attachments' text.
    fn of(key: &SearchKey<'_>) -> Option<Self> {
        use SearchKey::*;
        let (fields, s): (&'static [SearchField<'static>], _) = match key {
            Bcc(s) => (&[SearchField::Bcc], s),
            Cc(s) => (&[SearchField::Cc], s),
            From(s) => (&[SearchField::From], s),
            To(s) => (&[SearchField::To], s),
            Subject(s) => (&[SearchField::Subject], s),
            Body(s) => (&[SearchField::Body, SearchField::Attachments], s),
            Text(s) => (
                &[
                    SearchField::Header,
                    SearchField::Body,
                    SearchField::Attachments,
                ],
                s,
            ),
            Header(name, value) => {
                return Some(Self {
                    fields: &[],
                    header: Some(String::from_utf8_lossy(name.as_ref()).into_owned()),
                    needle: lower(value.as_ref()),
                })
            }
            _ => return None,
        };
        Some(Self {
            fields,
            header: None,
            needle: lower(s.as_ref()),
        })
    }

    fn fields(&self) -> Vec<SearchField<'_>> {
        let mut out = self.fields.to_vec();
        out.extend(self.header.as_deref().map(SearchField::Field));
        out
    }
}

/// Full-text index lookups made by one command, at most: each is a store query.
const MAX_INDEX_LOOKUPS: usize = 16;

/// The index's answers for the text keys of one command, keyed by the key's address in
/// the criteria tree (which outlives the command's evaluation).
#[derive(Default)]
struct IndexAnswers {
    by_key: std::collections::HashMap<usize, IndexAnswer>,
}

struct IndexAnswer {
    matched: std::collections::HashSet<u32>,
    unverified: std::collections::HashSet<u32>,
}

fn key_addr(key: &SearchKey<'_>) -> usize {
    std::ptr::from_ref(key) as usize
}

impl IndexAnswers {
    /// Looks up the text keys of `criteria` (up to [`MAX_INDEX_LOOKUPS`]) in the store's
    /// full-text index. A key the index cannot answer (a string under three characters) is
    /// left to the scan, and so is every key of a message the index reports unverified.
    async fn lookup(
        stores: &Stores,
        mailbox: mailfleet_storage::MailboxId,
        criteria: &SearchKey<'_>,
    ) -> StoreResult<Self> {
        let mut out = Self::default();
        let mut stack = vec![criteria];
        let mut lookups = 0;
        while let Some(k) = stack.pop() {
            match k {
                SearchKey::And(v) => stack.extend(v.as_ref().iter()),
                SearchKey::Not(k) => stack.push(k),
                SearchKey::Or(a, b) => {
                    stack.push(a);
                    stack.push(b);
                }
                _ => {
                    let Some(t) = TextKey::of(k) else {
                        continue;
                    };
                    if lookups >= MAX_INDEX_LOOKUPS
                        || !mailfleet_storage::text_index::answerable(&t.needle)
                    {
                        continue;
                    }
                    lookups += 1;
                    let names: Vec<String> = t.fields().iter().map(|f| f.index_name()).collect();
                    if let Some(m) = stores.meta.search_text(mailbox, &names, &t.needle).await? {
                        out.by_key.insert(
                            key_addr(k),
                            IndexAnswer {
                                matched: m.matched.iter().map(|u| u.0).collect(),
                                unverified: m.unverified.iter().map(|u| u.0).collect(),
                            },
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    /// The index's verdict on `key` for message `uid`: `None` when the message must be
    /// looked at (no answer for this key, or the message is not indexed completely).
    fn answer(&self, key: &SearchKey<'_>, uid: u32) -> Option<bool> {
        let a = self.by_key.get(&key_addr(key))?;
        if a.matched.contains(&uid) {
            Some(true)
        } else if a.unverified.contains(&uid) {
            None
        } else {
            Some(false)
        }
    }

    /// Whether evaluating `key` for `uid` may need the attachments' texts: a BODY or TEXT
    /// key the index did not answer.
    fn needs_attachments(&self, key: &SearchKey<'_>, uid: u32) -> bool {
        use SearchKey::*;
        match key {
            And(v) => v.as_ref().iter().any(|k| self.needs_attachments(k, uid)),
            Not(k) => self.needs_attachments(k, uid),
            Or(a, b) => self.needs_attachments(a, uid) || self.needs_attachments(b, uid),
            Body(_) | Text(_) => self.answer(key, uid).is_none(),
            _ => false,
        }
    }

    /// Whether evaluating `key` for `uid` needs the parsed message.
    fn needs_parse(&self, key: &SearchKey<'_>, uid: u32) -> bool {
        use SearchKey::*;
        match key {
            And(v) => v.as_ref().iter().any(|k| self.needs_parse(k, uid)),
            Not(k) => self.needs_parse(k, uid),
            Or(a, b) => self.needs_parse(a, uid) || self.needs_parse(b, uid),
            Bcc(_) | Body(_) | Cc(_) | From(_) | Header(..) | Subject(_) | Text(_) | To(_) => {
                self.answer(key, uid).is_none()
            }
            SentBefore(_) | SentOn(_) | SentSince(_) => true,
            _ => false,
        }
    }
}

/// The attachments' texts of a message being scanned, when a key of `criteria` may need
/// them and the message has an attachment to read: extracted on a blocking thread (PDFs
/// and office documents cost CPU), from a fresh parse of `raw` there.
async fn scan_attachments(
    index: &IndexAnswers,
    criteria: &SearchKey<'_>,
    uid: u32,
    raw: Option<&bytes::Bytes>,
    parsed: Option<&Message<'_>>,
) -> StoreResult<Option<Vec<String>>> {
    let (Some(raw), Some(parsed)) = (raw, parsed) else {
        return Ok(None);
    };
    if !index.needs_attachments(criteria, uid) || !search_text::may_have_attachment_text(parsed) {
        return Ok(None);
    }
    let raw = raw.clone();
    let texts = tokio::task::spawn_blocking(move || {
        MessageParser::default()
            .parse(raw.as_ref())
            .map(|p| search_text::attachment_texts(&p).texts)
            .unwrap_or_default()
    })
    .await
    .map_err(|e| {
        mailfleet_storage::StoreError::Unavailable(format!("attachment text extraction: {e}"))
    })?;
    Ok(Some(texts))
}

impl Session {
    /// The messages matching `criteria`, as (sequence number, message) pairs, with each
    /// parsed message handed to `visit` (used by SORT for its keys).
    pub(crate) async fn evaluate(
        stores: &Stores,
        sel: &Selected,
        criteria: &SearchKey<'_>,
        mut visit: impl FnMut(u32, &ViewMessage, Option<&Message<'_>>),
        parse_all: bool,
    ) -> StoreResult<()> {
        // Text keys are answered from the full-text index where it can (see
        // `IndexAnswers`); a message is read and parsed only when a key still needs it, or
        // (`parse_all`, SORT) when it matched and its sort keys are needed.
        let index = IndexAnswers::lookup(stores, sel.id, criteria).await?;
        let largest_seq = sel.len();
        let largest_uid = sel.max_uid().map_or(0, |u| u.get());
        let parser = MessageParser::default();
        for (i, m) in sel.messages().enumerate() {
            let seq = i as u32 + 1;
            let parse = index.needs_parse(criteria, m.uid.0);
            let hit = {
                // A message another session expunged since the last refresh has no body to
                // look at: it matches what its flags and numbers match, and no text key.
                let raw = if parse {
                    sel.read_body_if_present(stores, m.uid).await?
                } else {
                    None
                };
                let parsed = raw.as_ref().and_then(|r| parser.parse(r.as_ref()));
                let attachments =
                    scan_attachments(&index, criteria, m.uid.0, raw.as_ref(), parsed.as_ref())
                        .await?;
                let c = Candidate {
                    seq,
                    msg: m,
                    parsed: parsed.as_ref(),
                    raw: raw.as_deref(),
                    largest_seq,
                    largest_uid,
                    index: &index,
                    attachments: attachments.as_deref(),
                };
                let hit = matches(criteria, &c);
                if hit && (parse || !parse_all) {
                    visit(seq, &m, parsed.as_ref());
                }
                hit
            };
            if hit && !parse && parse_all {
                let raw = sel.read_body_if_present(stores, m.uid).await?;
                let parsed = raw.as_ref().and_then(|r| parser.parse(r.as_ref()));
                visit(seq, &m, parsed.as_ref());
            }
        }
        Ok(())
    }

    /// The UIDs among `uids` that match `criteria` (for CONTEXT=SEARCH and CONTEXT=SORT
    /// updates, which look only at the messages that changed), each with its sort keys
    /// under `sort` (empty for a SEARCH): only those messages are read.
    pub(crate) async fn evaluate_uids_sorted(
        stores: &Stores,
        sel: &Selected,
        criteria: &SearchKey<'_>,
        uids: &std::collections::BTreeSet<mailfleet_storage::Uid>,
        sort: &[SortCriterion],
    ) -> StoreResult<std::collections::BTreeMap<mailfleet_storage::Uid, Vec<SortValue>>> {
        // A few changed messages: scanned, not looked up in the index.
        let index = IndexAnswers::default();
        let largest_seq = sel.len();
        let largest_uid = sel.max_uid().map_or(0, |u| u.get());
        let parser = MessageParser::default();
        let mut out = std::collections::BTreeMap::new();
        for uid in uids {
            let Some(seq) = sel.seq_of(*uid) else {
                continue;
            };
            let Some(m) = sel.by_seq(seq) else { continue };
            let parse = index.needs_parse(criteria, uid.0);
            let raw = if parse {
                sel.read_body_if_present(stores, m.uid).await?
            } else {
                None
            };
            let parsed = raw.as_ref().and_then(|r| parser.parse(r.as_ref()));
            let attachments =
                scan_attachments(&index, criteria, uid.0, raw.as_ref(), parsed.as_ref()).await?;
            let c = Candidate {
                seq,
                msg: m,
                parsed: parsed.as_ref(),
                raw: raw.as_deref(),
                largest_seq,
                largest_uid,
                index: &index,
                attachments: attachments.as_deref(),
            };
            if !matches(criteria, &c) {
                continue;
            }
            let values = if sort.is_empty() {
                Vec::new()
            } else if parse {
                sort_values(sort, &m, parsed.as_ref())
            } else {
                let raw = sel.read_body_if_present(stores, m.uid).await?;
                let parsed = raw.as_ref().and_then(|r| parser.parse(r.as_ref()));
                sort_values(sort, &m, parsed.as_ref())
            };
            out.insert(*uid, values);
        }
        Ok(out)
    }

    pub(crate) fn check_charset(charset: &Option<Charset<'_>>) -> bool {
        charset.as_ref().is_none_or(|c| {
            let c = c.as_ref().to_ascii_uppercase();
            c == "UTF-8" || c == "US-ASCII"
        })
    }

    pub(crate) async fn search(
        &mut self,
        tag: Tag<'static>,
        charset: Option<Charset<'static>>,
        criteria: Vec1<SearchKey<'static>>,
        uid: bool,
    ) -> StoreResult<Outcome> {
        if !Self::check_charset(&charset) {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                Some(Code::BadCharset { allowed: vec![] }),
                "Only UTF-8 and US-ASCII are supported",
            )]));
        }
        let key = SearchKey::And(criteria);
        if key_count(&key) > MAX_SEARCH_KEYS + 1 {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "Too many search keys",
            )]));
        }
        if depth(&key) > MAX_DEPTH {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "Search too deeply nested",
            )]));
        }
        let uses_modseq = uses_modseq(&key);
        let announce_modseq = uses_modseq && self.enable_condstore();
        let State::Selected(sel) = &self.state else {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "No mailbox selected",
            )]));
        };
        // Sequence numbers past the end match nothing (as Dovecot answers): a SEARCH is a
        // question, and `SEARCH 1000` in a smaller mailbox has an empty answer, not an error.
        let mut hits: Vec<NonZeroU32> = Vec::new();
        let mut max_modseq = 0u64;
        Self::evaluate(
            &self.stores,
            sel,
            &key,
            |seq, m, _| {
                if let Some(n) = NonZeroU32::new(if uid { m.uid.0 } else { seq }) {
                    hits.push(n);
                }
                max_modseq = max_modseq.max(m.modseq.0);
            },
            false,
        )
        .await?;
        let modseq = if uses_modseq {
            NonZeroU64::new(max_modseq)
        } else {
            None
        };
        let mut out = vec![response::data(Data::Search(hits, modseq))];
        out.extend(self.pending_updates(uid).await?);
        let code = if announce_modseq {
            self.highest_modseq_code()
        } else {
            None
        };
        out.push(response::ok(
            &tag,
            code,
            if uid {
                "UID SEARCH completed"
            } else {
                "SEARCH completed"
            },
        ));
        Ok(Outcome::done(out))
    }

    pub(crate) async fn sort(
        &mut self,
        tag: Tag<'static>,
        criteria: Vec1<SortCriterion>,
        charset: Charset<'static>,
        search: Vec1<SearchKey<'static>>,
        uid: bool,
    ) -> StoreResult<Outcome> {
        if !Self::check_charset(&Some(charset)) {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                Some(Code::BadCharset { allowed: vec![] }),
                "Only UTF-8 and US-ASCII are supported",
            )]));
        }
        let key = SearchKey::And(search);
        if key_count(&key) > MAX_SEARCH_KEYS + 1 {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "Too many search keys",
            )]));
        }
        if criteria.as_ref().len() > MAX_SORT_CRITERIA {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "Too many sort criteria",
            )]));
        }
        if depth(&key) > MAX_DEPTH {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "Search too deeply nested",
            )]));
        }
        let State::Selected(sel) = &self.state else {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "No mailbox selected",
            )]));
        };
        let criteria: Vec<SortCriterion> = criteria.into_inner();
        // Sort keys per hit, computed while each message is parsed.
        let mut rows: Vec<(Vec<SortValue>, u32, u32)> = Vec::new();
        Self::evaluate(
            &self.stores,
            sel,
            &key,
            |seq, m, parsed| {
                rows.push((sort_values(&criteria, m, parsed), seq, m.uid.0));
            },
            true,
        )
        .await?;
        // Ties are broken by sequence number (RFC 5256 §3).
        rows.sort_by(|a, b| compare_sort_values(&criteria, &a.0, &b.0).then(a.1.cmp(&b.1)));
        let ids: Vec<NonZeroU32> = rows
            .iter()
            .filter_map(|r| NonZeroU32::new(if uid { r.2 } else { r.1 }))
            .collect();
        // An extended SORT with UPDATE (CONTEXT=SORT) keeps the sorted result with its
        // keys, to place later additions (commands/searchext.rs).
        if self.search_state.want_sort_rows {
            self.search_state.sort_rows = Some(SortRows {
                criteria: criteria.clone(),
                rows: rows
                    .into_iter()
                    .map(|(values, _, u)| (values, mailfleet_storage::Uid(u)))
                    .collect(),
            });
        }
        let mut out = vec![response::data(Data::Sort(ids, None))];
        out.extend(self.pending_updates(uid).await?);
        out.push(response::ok(
            &tag,
            None,
            if uid {
                "UID SORT completed"
            } else {
                "SORT completed"
            },
        ));
        Ok(Outcome::done(out))
    }
}

/// One sort key of one message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SortValue {
    Num(i64),
    Text(String),
}

/// A sorted result with the keys of each message, in sort order (for CONTEXT=SORT).
#[derive(Clone, Debug)]
pub(crate) struct SortRows {
    pub criteria: Vec<SortCriterion>,
    pub rows: Vec<(Vec<SortValue>, mailfleet_storage::Uid)>,
}

/// The order of two messages' sort keys under `criteria` (REVERSE applied); the caller
/// breaks ties by sequence number, or equivalently by UID, which orders a view the same.
pub(crate) fn compare_sort_values(
    criteria: &[SortCriterion],
    a: &[SortValue],
    b: &[SortValue],
) -> std::cmp::Ordering {
    for (i, c) in criteria.iter().enumerate() {
        let ord = a.get(i).cmp(&b.get(i));
        let ord = if c.reverse { ord.reverse() } else { ord };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    std::cmp::Ordering::Equal
}

/// The sort keys of one message.
pub(crate) fn sort_values(
    criteria: &[SortCriterion],
    m: &ViewMessage,
    p: Option<&Message<'_>>,
) -> Vec<SortValue> {
    criteria.iter().map(|c| sort_value(&c.key, m, p)).collect()
}

/// The sort key of an address header (RFC 5256 §3): the first mailbox's local part, then
/// its domain, compared case-insensitively; DISPLAYFROM/DISPLAYTO (RFC 5957) use the display
/// name, falling back to the address. When the header starts with a group, its first
/// envelope address is the group's start marker, whose mailbox part is the group name
/// (RFC 9051 §7.5.2), so `To: Engineering: a@x, b@y;` sorts as `engineering`, and the empty
/// `Cc: undisclosed-recipients:;` as `undisclosed-recipients` (as Dovecot sorts).
fn first_mailbox(a: Option<&mail_parser::Address<'_>>, display: bool) -> String {
    let group_name = a
        .and_then(|a| a.as_group())
        .and_then(|groups| groups.first())
        .and_then(|g| g.name.as_deref())
        .filter(|n| !n.trim().is_empty());
    if let Some(name) = group_name {
        let name = name.trim().to_lowercase();
        return if display { name } else { format!("{name}\0") };
    }
    let Some(first) = a.and_then(|a| a.first()) else {
        return String::new();
    };
    if display {
        if let Some(n) = first.name().filter(|n| !n.trim().is_empty()) {
            return n.to_lowercase();
        }
    }
    let addr = first.address().unwrap_or_default();
    let (local, domain) = addr.rsplit_once('@').unwrap_or((addr, ""));
    // NUL separates the two keys, so "ab" + "c.test" never ties with "a" + "bc.test".
    format!("{}\0{}", local.to_lowercase(), domain.to_lowercase())
}

fn sort_value(key: &SortKey, m: &ViewMessage, p: Option<&Message<'_>>) -> SortValue {
    match key {
        SortKey::Arrival => SortValue::Num(m.internal_date),
        SortKey::Size => SortValue::Num(m.size as i64),
        SortKey::Date => SortValue::Num(
            p.and_then(|p| p.date())
                .map(|d| d.to_timestamp())
                .unwrap_or(m.internal_date),
        ),
        // The base subject (RFC 5256 §2.1) of the decoded subject, compared
        // case-insensitively (i;unicode-casemap as Dovecot does; "i;ascii-casemap" folds
        // the same for ASCII).
        SortKey::Subject => SortValue::Text(
            mailfleet_mime::base_subject(p.and_then(|p| p.subject()).unwrap_or_default())
                .to_lowercase(),
        ),
        SortKey::From => SortValue::Text(first_mailbox(p.and_then(|p| p.from()), false)),
        SortKey::To => SortValue::Text(first_mailbox(p.and_then(|p| p.to()), false)),
        SortKey::Cc => SortValue::Text(first_mailbox(p.and_then(|p| p.cc()), false)),
        SortKey::DisplayFrom => SortValue::Text(first_mailbox(p.and_then(|p| p.from()), true)),
        SortKey::DisplayTo => SortValue::Text(first_mailbox(p.and_then(|p| p.to()), true)),
    }
}

/// Why a search key tree is refused (too many keys, too deep), for THREAD and the
/// extended forms that share SEARCH's limits.
pub(crate) fn check_limits(key: &SearchKey<'_>) -> Option<&'static str> {
    if key_count(key) > MAX_SEARCH_KEYS + 1 {
        return Some("Too many search keys");
    }
    if depth(key) > MAX_DEPTH {
        return Some("Search too deeply nested");
    }
    None
}

fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(v) => v.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        _ => false,
    }
}
