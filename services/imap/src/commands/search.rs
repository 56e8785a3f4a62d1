//! SEARCH and SORT (RFC 5256), with every RFC 9051 search key and CONDSTORE's MODSEQ.
//!
//! Keys on flags, sizes, dates and UIDs are answered from the session's view; header and
//! body keys parse the message (mail-parser) and compare decoded text case-insensitively, as
//! RFC 9051 §6.4.4 asks. A message is parsed at most once per command.

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
    String::from_utf8_lossy(s).to_lowercase()
}

fn contains(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(needle)
}

fn day_of(ts: i64) -> Option<NaiveDate> {
    chrono::DateTime::from_timestamp(ts, 0).map(|d| d.date_naive())
}

fn needs_parse(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    match key {
        And(v) => v.as_ref().iter().any(needs_parse),
        Not(k) => needs_parse(k),
        Or(a, b) => needs_parse(a) || needs_parse(b),
        Bcc(_) | Body(_) | Cc(_) | From(_) | Header(..) | Subject(_) | Text(_) | To(_)
        | SentBefore(_) | SentOn(_) | SentSince(_) => true,
        _ => false,
    }
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

/// Whether an address header matches a FROM/TO/CC/BCC key: a substring (case-insensitive,
/// RFC 2047 decoded) of any address's display name, of its `local@domain`, of the
/// `Name <local@domain>` form, or of the decoded header text as written without its
/// comments: the keys are defined on the envelope's address fields (RFC 9051 §6.4.4),
/// which carry no comments, so `Bcc: Hidden: (nobody) ;` does not match `nobody`.
fn address_matches(
    parsed: &Message<'_>,
    header: &str,
    a: Option<&mail_parser::Address<'_>>,
    needle: &str,
) -> bool {
    // An entry without an address is no envelope address: the parser makes one of a
    // comment standing alone, as in the empty group `Hidden: (nobody) ;`.
    let forms = a.into_iter().flat_map(|a| a.iter()).any(|x| {
        let Some(addr) = x.address().filter(|a| !a.is_empty()) else {
            return false;
        };
        let name = x.name().unwrap_or_default();
        contains(name, needle)
            || contains(addr, needle)
            || contains(&format!("{name} <{addr}>"), needle)
    });
    forms || contains(&without_comments(&header_text(parsed, header)), needle)
}

/// `text` without its RFC 5322 comments (`(...)`, nested, with `\` quoting), leaving
/// quoted strings, where a parenthesis is just a character, alone.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for ch in text.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(ch);
            }
            continue;
        }
        match ch {
            '\\' if quoted || depth > 0 => {
                escaped = true;
                if depth == 0 {
                    out.push(ch);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(ch);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out
}

/// Everything a key may look at for one message.
struct Candidate<'a> {
    seq: u32,
    msg: Msg<'a>,
    parsed: Option<&'a Message<'a>>,
    raw: Option<&'a [u8]>,
    largest_seq: u32,
    largest_uid: u32,
}

fn header_text(parsed: &Message<'_>, name: &str) -> String {
    parsed
        .headers_raw()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| {
            // Decode RFC 2047 words the way the parser does for known headers.
            let unfolded: String = v.replace("\r\n", "").replace('\n', "");
            decode_words(&unfolded)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_words(v: &str) -> String {
    let synthetic = format!("X: {v}\r\n\r\n");
    MessageParser::default()
        .parse(synthetic.as_bytes())
        .and_then(|m| m.header("X").and_then(|h| h.as_text()).map(str::to_string))
        .unwrap_or_else(|| v.to_string())
}

/// How deep [`body_text`] follows message/rfc822 attachments inside attachments.
const MAX_ATTACHED_DEPTH: usize = 8;

/// The text a BODY or TEXT key searches: the message's text (or, without any, HTML)
/// bodies, then every attached message/rfc822, its header and its body (RFC 9051 §6.4.4:
/// the body of a message includes the messages it carries, as Dovecot searches them).
fn body_text(parsed: &Message<'_>) -> String {
    let mut out = String::new();
    push_body_text(parsed, &mut out, 0);
    out
}

fn push_body_text(parsed: &Message<'_>, out: &mut String, depth: usize) {
    out.push_str(&own_body_text(parsed));
    if depth >= MAX_ATTACHED_DEPTH {
        return;
    }
    for inner in parsed.attachments().filter_map(|a| a.message()) {
        let raw = inner.raw_message();
        out.push_str(&String::from_utf8_lossy(&raw[..find_header_end(raw)]));
        out.push('\n');
        push_body_text(inner, out, depth + 1);
    }
}

fn own_body_text(parsed: &Message<'_>) -> String {
    let mut out = String::new();
    for i in 0..parsed.text_body_count() {
        if let Some(t) = parsed.body_text(i) {
            out.push_str(&t);
            out.push('\n');
        }
    }
    if out.is_empty() {
        for i in 0..parsed.html_body_count() {
            if let Some(t) = parsed.body_html(i) {
                out.push_str(&t);
            }
        }
    }
    out
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
        Bcc(s) | Cc(s) | From(s) | To(s) | Subject(s) | Body(s) | Text(s) => {
            let Some(p) = c.parsed else { return false };
            let needle = lower(s.as_ref());
            match key {
                Bcc(_) => address_matches(p, "Bcc", p.bcc(), &needle),
                Cc(_) => address_matches(p, "Cc", p.cc(), &needle),
                From(_) => address_matches(p, "From", p.from(), &needle),
                To(_) => address_matches(p, "To", p.to(), &needle),
                Subject(_) => contains(p.subject().unwrap_or_default(), &needle),
                Body(_) => contains(&body_text(p), &needle),
                _ => {
                    // TEXT: header and body.
                    let header_hit = c.raw.is_some_and(|r| {
                        let end = find_header_end(r);
                        contains(&String::from_utf8_lossy(&r[..end]), &needle)
                    });
                    header_hit || contains(&body_text(p), &needle)
                }
            }
        }
        Header(name, value) => {
            let Some(p) = c.parsed else { return false };
            let name = String::from_utf8_lossy(name.as_ref()).into_owned();
            let text = header_text(p, &name);
            let present = p.headers_raw().any(|(n, _)| n.eq_ignore_ascii_case(&name));
            // An empty string matches every message that has the field (RFC 9051).
            present && contains(&text, &lower(value.as_ref()))
        }
    }
}

fn find_header_end(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(raw.len())
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
        let parse = parse_all || needs_parse(criteria);
        let largest_seq = sel.len();
        let largest_uid = sel.max_uid().map_or(0, |u| u.get());
        let parser = MessageParser::default();
        for (i, m) in sel.messages().enumerate() {
            let seq = i as u32 + 1;
            // A message another session expunged since the last refresh has no body to
            // look at: it matches what its flags and numbers match, and no text key.
            let raw = if parse {
                sel.read_body_if_present(stores, m.uid).await?
            } else {
                None
            };
            let parsed = raw.as_ref().and_then(|r| parser.parse(r.as_ref()));
            let c = Candidate {
                seq,
                msg: m,
                parsed: parsed.as_ref(),
                raw: raw.as_deref(),
                largest_seq,
                largest_uid,
            };
            if matches(criteria, &c) {
                visit(seq, &m, parsed.as_ref());
            }
        }
        Ok(())
    }

    /// The UIDs among `uids` that match `criteria` (for CONTEXT=SEARCH updates, which look
    /// only at the messages that changed): only those messages are read.
    pub(crate) async fn evaluate_uids(
        stores: &Stores,
        sel: &Selected,
        criteria: &SearchKey<'_>,
        uids: &std::collections::BTreeSet<mailfleet_storage::Uid>,
    ) -> StoreResult<std::collections::BTreeSet<mailfleet_storage::Uid>> {
        let parse = needs_parse(criteria);
        let largest_seq = sel.len();
        let largest_uid = sel.max_uid().map_or(0, |u| u.get());
        let parser = MessageParser::default();
        let mut out = std::collections::BTreeSet::new();
        for uid in uids {
            let Some(seq) = sel.seq_of(*uid) else {
                continue;
            };
            let Some(m) = sel.by_seq(seq) else { continue };
            let raw = if parse {
                sel.read_body_if_present(stores, m.uid).await?
            } else {
                None
            };
            let parsed = raw.as_ref().and_then(|r| parser.parse(r.as_ref()));
            let c = Candidate {
                seq,
                msg: m,
                parsed: parsed.as_ref(),
                raw: raw.as_deref(),
                largest_seq,
                largest_uid,
            };
            if matches(criteria, &c) {
                out.insert(*uid);
            }
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
                let values = criteria
                    .iter()
                    .map(|c| sort_value(&c.key, m, parsed))
                    .collect();
                rows.push((values, seq, m.uid.0));
            },
            true,
        )
        .await?;
        rows.sort_by(|a, b| {
            for (i, c) in criteria.iter().enumerate() {
                let ord = a.0[i].cmp(&b.0[i]);
                let ord = if c.reverse { ord.reverse() } else { ord };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            // Ties are broken by sequence number (RFC 5256 §3).
            a.1.cmp(&b.1)
        });
        let ids: Vec<NonZeroU32> = rows
            .iter()
            .filter_map(|r| NonZeroU32::new(if uid { r.2 } else { r.1 }))
            .collect();
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

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Num(i64),
    Text(String),
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
