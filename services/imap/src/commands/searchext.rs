//! The search extensions built on ESEARCH: SEARCHRES (RFC 5182), ESORT and CONTEXT=SEARCH
//! (RFC 5267) and PARTIAL (RFC 9394).
//!
//! imap-codec 2.0.0-alpha.10 parses none of their forms, so, as for ESEARCH (see
//! [`super::extended`]), a command the codec refused is rewritten into one it parses:
//!
//! - `[UID] SEARCH RETURN (...) criteria` and `[UID] SORT RETURN (...) (keys) charset
//!   criteria` lose their `RETURN (...)` clause, which is parsed here into [`ReturnOpts`];
//! - `$` (the saved search result) standing as a sequence set, in FETCH, STORE, COPY,
//!   MOVE, UID EXPUNGE or as a SEARCH/SORT/THREAD key, becomes the number
//!   [`PLACEHOLDER`], which the session replaces by the saved messages before running the
//!   command ([`substitute`]); a line that already holds that number is not rewritten;
//! - `CANCELUPDATE "tag" ...` becomes a NOOP with the same tag (so the codec still checks
//!   the tag), carrying the list of tags.
//!
//! Everything else of the command is decoded by the codec. The session state these
//! extensions need, the saved result and the live UPDATE contexts, is [`SearchState`].

use super::extended::tokens;
use super::search::{compare_sort_values, SortRows};
use crate::response::{self, Resp};
use crate::selected::Selected;
use crate::session::{Outcome, Session, State};
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::response::{Data, Response, Status, StatusKind};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mailfleet_storage::{StoreResult, Stores, Uid};
use std::collections::BTreeSet;
use std::num::NonZeroU32;

/// The number `$` is rewritten to. Not a message any mailbox holds (UIDs and sequence
/// numbers stay below it in practice), and a line that already contains it is refused.
pub const PLACEHOLDER: u32 = u32::MAX;
/// Live UPDATE contexts per session (RFC 5267 §4.2 lets a server refuse more with
/// `NO [NOUPDATE]`): each one is re-evaluated on every change of the mailbox.
pub const MAX_CONTEXTS: usize = 8;
/// Tags one CANCELUPDATE may name.
pub const MAX_CANCEL_TAGS: usize = 64;
/// Results a SORT context keeps with their sort keys (memory per context); a larger result
/// is answered, but its updates are refused with `NO [NOUPDATE]` (RFC 5267 §4.3.1).
pub const MAX_SORT_CONTEXT_RESULTS: usize = 100_000;

/// A PARTIAL range (RFC 9394 §3): positions in the result, 1-based, `lo <= hi`; `last`
/// counts from the end (`-1:-100` is the last hundred).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    pub lo: u32,
    pub hi: u32,
    pub last: bool,
}

impl Partial {
    fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once(':')?;
        let num = |x: &str| -> Option<u32> {
            if x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()) || x.starts_with('0') {
                return None;
            }
            x.parse().ok()
        };
        let (last, a, b) = match (a.strip_prefix('-'), b.strip_prefix('-')) {
            (Some(a), Some(b)) => (true, num(a)?, num(b)?),
            (None, None) => (false, num(a)?, num(b)?),
            _ => return None,
        };
        Some(Partial {
            lo: a.min(b),
            hi: a.max(b),
            last,
        })
    }

    /// The window of `ids` (in result order) the range selects.
    pub fn window<'a>(&self, ids: &'a [u32]) -> &'a [u32] {
        let n = ids.len();
        let (lo, hi) = (self.lo as usize, self.hi as usize);
        let (start, end) = if self.last {
            (n.saturating_sub(hi), n.saturating_sub(lo - 1))
        } else {
            ((lo - 1).min(n), hi.min(n))
        };
        &ids[start..end.max(start)]
    }
}

impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.last {
            write!(f, "-{}:-{}", self.lo, self.hi)
        } else {
            write!(f, "{}:{}", self.lo, self.hi)
        }
    }
}

/// Result options of an extended SEARCH or SORT (RFC 4731, 5182, 5267, 9394).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReturnOpts {
    pub min: bool,
    pub max: bool,
    pub count: bool,
    pub all: bool,
    /// SEARCHRES: keep the result for `$`.
    pub save: bool,
    /// CONTEXT: keep the search live and report ADDTO/REMOVEFROM.
    pub update: bool,
    /// CONTEXT: a hint that the client will ask again; no effect on the answer.
    pub context: bool,
    pub partial: Option<Partial>,
}

impl ReturnOpts {
    fn parse(list: &str) -> Option<Self> {
        let toks = tokens(list)?;
        let mut r = ReturnOpts::default();
        let mut i = 0;
        while i < toks.len() {
            let seen = match toks[i].to_ascii_uppercase().as_str() {
                "MIN" => std::mem::replace(&mut r.min, true),
                "MAX" => std::mem::replace(&mut r.max, true),
                "COUNT" => std::mem::replace(&mut r.count, true),
                "ALL" => std::mem::replace(&mut r.all, true),
                "SAVE" => std::mem::replace(&mut r.save, true),
                "UPDATE" => std::mem::replace(&mut r.update, true),
                "CONTEXT" => std::mem::replace(&mut r.context, true),
                "PARTIAL" => {
                    i += 1;
                    r.partial.replace(Partial::parse(toks.get(i)?)?).is_some()
                }
                _ => return None,
            };
            // An option given twice is a syntax error (RFC 4466 lists each once).
            if seen {
                return None;
            }
            i += 1;
        }
        // ALL and PARTIAL return the same data two ways (RFC 9394 §3).
        if r.all && r.partial.is_some() {
            return None;
        }
        // `RETURN ()` means ALL (RFC 4731 §3.1); so does a list of only SAVE-less hints.
        if !(r.min || r.max || r.count || r.all || r.save || r.update || r.partial.is_some()) {
            r.all = true;
        }
        Some(r)
    }

    /// Only MIN and/or MAX are asked (with SAVE, these alone are saved: RFC 5182 §2.4).
    fn min_max_only(&self) -> bool {
        (self.min || self.max) && !self.all && !self.count && self.partial.is_none()
    }
}

/// What the rewriting found, for the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A command whose only extension is `$`.
    Plain,
    Search(ReturnOpts),
    Sort(ReturnOpts),
    CancelUpdate(Vec<String>),
    /// A `SEARCH RETURN (SAVE ...)` whose criteria the codec refused: it fails, and the
    /// saved result becomes empty (RFC 5182 §2.1).
    SaveFailed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext {
    pub kind: Kind,
    /// The command used `$` (rewritten to [`PLACEHOLDER`]).
    pub saved: bool,
}

/// Commands in which `$` may stand for a sequence set.
const DOLLAR_VERBS: [&str; 8] = [
    "FETCH", "STORE", "COPY", "MOVE", "SEARCH", "SORT", "THREAD", "EXPUNGE",
];

/// Rewrites every `$` that stands alone as a token (outside quoted strings) into
/// [`PLACEHOLDER`]. None when there is none, or when the line already holds the placeholder.
fn rewrite_dollar(line: &str) -> Option<String> {
    let placeholder = PLACEHOLDER.to_string();
    if line.contains(&placeholder) {
        return None;
    }
    let b = line.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(line.len() + 16);
    let (mut quoted, mut escaped, mut found) = (false, false, false);
    for (i, &c) in b.iter().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                quoted = false;
            }
            out.push(c);
            continue;
        }
        if c == b'"' {
            quoted = true;
        }
        let before = i == 0 || matches!(b[i - 1], b' ' | b'(');
        let after = i + 1 == b.len() || matches!(b[i + 1], b' ' | b')');
        if c == b'$' && before && after {
            out.extend_from_slice(placeholder.as_bytes());
            found = true;
        } else {
            out.push(c);
        }
    }
    if !found {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Recognises the forms described in the module documentation in one command line (no
/// literals). Returns the plain command for the codec and what was cut out of it.
pub fn preparse(line: &str) -> Option<(String, Ext)> {
    preparse_inner(line)
}

/// [`decode`] of a whole command message as the connection holds it: one line with its
/// CRLF, no literals (a command with a literal is not rewritten).
pub fn decode_message(
    message: &[u8],
    codec: impl Fn(&[u8]) -> Option<Command<'static>>,
) -> Option<(Command<'static>, Ext)> {
    let text = std::str::from_utf8(message).ok()?;
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))?;
    if line.contains(['\r', '\n', '{']) {
        return None;
    }
    decode(line, codec)
}

fn preparse_inner(line: &str) -> Option<(String, Ext)> {
    let toks = tokens(line)?;
    let (tag, rest) = toks.split_first()?;
    let uid = rest.first().is_some_and(|t| t.eq_ignore_ascii_case("UID"));
    let i = usize::from(uid);
    let verb = rest.get(i)?.to_ascii_uppercase();
    if verb == "CANCELUPDATE" && !uid {
        let tags: Vec<String> = rest[1..]
            .iter()
            .map(|t| {
                let s = t.strip_prefix('"')?.strip_suffix('"')?;
                (!s.contains(['"', '\\'])).then(|| s.to_string())
            })
            .collect::<Option<_>>()?;
        if tags.is_empty() || tags.len() > MAX_CANCEL_TAGS {
            return None;
        }
        return Some((
            format!("{tag} NOOP\r\n"),
            Ext {
                kind: Kind::CancelUpdate(tags),
                saved: false,
            },
        ));
    }
    if !DOLLAR_VERBS.contains(&verb.as_str()) || (verb == "EXPUNGE" && !uid) {
        return None;
    }
    let has_return = matches!(verb.as_str(), "SEARCH" | "SORT")
        && rest
            .get(i + 1)
            .is_some_and(|t| t.eq_ignore_ascii_case("RETURN"));
    let (kind, args) = if has_return {
        let opts = super::extended::inner(rest.get(i + 2)?)?;
        let ret = ReturnOpts::parse(opts)?;
        let args = rest.get(i + 3..)?;
        if args.is_empty() {
            return None;
        }
        let kind = if verb == "SEARCH" {
            Kind::Search(ret)
        } else {
            Kind::Sort(ret)
        };
        (kind, args.join(" "))
    } else {
        (Kind::Plain, rest[i + 1..].join(" "))
    };
    let (args, saved) = match rewrite_dollar(&args) {
        Some(a) => (a, true),
        None if line.contains(&PLACEHOLDER.to_string()) => return None,
        None => (args, false),
    };
    if kind == Kind::Plain && !saved {
        return None;
    }
    let plain = format!("{tag} {}{verb} {args}\r\n", if uid { "UID " } else { "" });
    Some((plain, Ext { kind, saved }))
}

/// Recognises and decodes (with `decode`, the codec) a command of this module. When the
/// codec refuses the rewritten form of a `SEARCH RETURN (SAVE ...)`, the answer is still a
/// failed SEARCH, which empties the saved result (RFC 5182 §2.1): a NOOP with the same tag
/// carries [`Kind::SaveFailed`].
pub fn decode(
    line: &str,
    decode: impl Fn(&[u8]) -> Option<Command<'static>>,
) -> Option<(Command<'static>, Ext)> {
    let (plain, ext) = preparse(line)?;
    match decode(plain.as_bytes()) {
        Some(cmd) => Some((cmd, ext)),
        None if matches!(&ext.kind, Kind::Search(r) | Kind::Sort(r) if r.save) => {
            let tag = line.split(' ').next()?;
            let cmd = decode(format!("{tag} NOOP\r\n").as_bytes())?;
            Some((
                cmd,
                Ext {
                    kind: Kind::SaveFailed,
                    saved: false,
                },
            ))
        }
        None => None,
    }
}

/// A live UPDATE context (RFC 5267 §4): the search, its current result, and the MODSEQ up
/// to which messages were evaluated.
#[derive(Debug)]
pub struct Context {
    pub tag: String,
    pub uid: bool,
    criteria: SearchKey<'static>,
    result: BTreeSet<Uid>,
    seen_modseq: u64,
    /// For a SORT context (CONTEXT=SORT): the result in sort order with each message's
    /// keys, so updates carry positions (RFC 5267 §4.3.3).
    order: Option<SortRows>,
}

/// The per-session state of the search extensions.
#[derive(Debug, Default)]
pub struct SearchState {
    /// The saved result (SEARCHRES) as UIDs, so messages expunged since drop out and `$`
    /// never names another message.
    pub saved: Vec<Uid>,
    pub contexts: Vec<Context>,
    /// Set while an extended SORT with UPDATE runs: SORT then leaves its sorted rows in
    /// `sort_rows` for the new context.
    pub(crate) want_sort_rows: bool,
    pub(crate) sort_rows: Option<SortRows>,
}

impl SearchState {
    /// Forgets the saved result and every context: a mailbox was selected or closed
    /// (RFC 5182 §2.1, RFC 5267 §4.2).
    pub fn reset(&mut self) {
        self.saved.clear();
        self.contexts.clear();
    }
}

/// The highest MODSEQ the view holds (a STORE of this session raises a message's MODSEQ
/// before the view's known MODSEQ catches up).
fn view_modseq(sel: &Selected) -> u64 {
    sel.messages()
        .map(|m| m.modseq.0)
        .max()
        .unwrap_or(0)
        .max(sel.highest_modseq().0)
}

/// A sequence set of the given numbers (sorted, merged into ranges); None when empty.
fn set_of(mut ids: Vec<u32>) -> Option<SequenceSet> {
    ids.sort_unstable();
    ids.dedup();
    let mut seqs: Vec<Sequence> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        let a = SeqOrUid::Value(NonZeroU32::new(ids[i])?);
        let b = SeqOrUid::Value(NonZeroU32::new(ids[j])?);
        seqs.push(if i == j {
            Sequence::Single(a)
        } else {
            Sequence::Range(a, b)
        });
        i = j + 1;
    }
    imap_codec::imap_types::core::Vec1::try_from(seqs)
        .ok()
        .map(SequenceSet)
}

fn is_placeholder(set: &SequenceSet) -> bool {
    matches!(set.0.as_ref(), [Sequence::Single(SeqOrUid::Value(v))] if v.get() == PLACEHOLDER)
}

/// Replaces the placeholder in search keys by the saved messages (as a UID set, whatever
/// the command; `NOT ALL` when none are saved). Key trees are shallow (the codec parses at
/// most a few levels), so recursion is bounded.
fn substitute_keys(key: &mut SearchKey<'static>, saved: &Option<SequenceSet>) {
    match key {
        SearchKey::SequenceSet(s) | SearchKey::Uid(s) if is_placeholder(s) => {
            *key = match saved {
                Some(set) => SearchKey::Uid(set.clone()),
                None => SearchKey::Not(Box::new(SearchKey::All)),
            };
        }
        SearchKey::And(v) => {
            let mut items = v.clone().into_inner();
            items.iter_mut().for_each(|k| substitute_keys(k, saved));
            if let Ok(n) = imap_codec::imap_types::core::Vec1::try_from(items) {
                *v = n;
            }
        }
        SearchKey::Not(k) => substitute_keys(k, saved),
        SearchKey::Or(a, b) => {
            substitute_keys(a, saved);
            substitute_keys(b, saved);
        }
        _ => {}
    }
}

/// What [`substitute`] made of a command using `$`.
pub enum Substituted {
    Run(Command<'static>),
    /// `$` is empty and the command works on a message set: it succeeds on no messages.
    Empty(Command<'static>),
}

/// Replaces `$` in `cmd` by the saved messages still in the view: their UIDs in a UID
/// command or search key, their sequence numbers otherwise (RFC 5182 §2.1).
pub fn substitute(mut cmd: Command<'static>, sel: &Selected, saved: &[Uid]) -> Substituted {
    let present: Vec<(u32, Uid)> = saved
        .iter()
        .filter_map(|u| sel.seq_of(*u).map(|s| (s, *u)))
        .collect();
    let uids = set_of(present.iter().map(|(_, u)| u.0).collect());
    let seqs = set_of(present.iter().map(|(s, _)| *s).collect());
    let mut empty = false;
    match &mut cmd.body {
        CommandBody::Fetch {
            sequence_set, uid, ..
        }
        | CommandBody::Store {
            sequence_set, uid, ..
        }
        | CommandBody::Copy {
            sequence_set, uid, ..
        }
        | CommandBody::Move {
            sequence_set, uid, ..
        } if is_placeholder(sequence_set) => match if *uid { &uids } else { &seqs } {
            Some(s) => *sequence_set = s.clone(),
            None => empty = true,
        },
        CommandBody::ExpungeUid { sequence_set } if is_placeholder(sequence_set) => match &uids {
            Some(s) => *sequence_set = s.clone(),
            None => empty = true,
        },
        CommandBody::Search { criteria, .. } => {
            let mut k = SearchKey::And(criteria.clone());
            substitute_keys(&mut k, &uids);
            if let SearchKey::And(v) = k {
                *criteria = v;
            }
        }
        CommandBody::Sort {
            search_criteria, ..
        }
        | CommandBody::Thread {
            search_criteria, ..
        } => {
            let mut k = SearchKey::And(search_criteria.clone());
            substitute_keys(&mut k, &uids);
            if let SearchKey::And(v) = k {
                *search_criteria = v;
            }
        }
        _ => {}
    }
    if empty {
        Substituted::Empty(cmd)
    } else {
        Substituted::Run(cmd)
    }
}

/// `a:b` runs of consecutive ascending numbers, in the given order (for ESORT's ALL, whose
/// set lists the messages in sort order, RFC 5267 §3.1).
fn runs(ids: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j].wrapping_add(1) {
            j += 1;
        }
        parts.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}:{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Quotes a tag for `(TAG "...")`: tags are atoms, which hold no `"` or `\`.
fn quoted(tag: &str) -> String {
    format!("\"{}\"", tag.replace(['"', '\\'], ""))
}

/// `* ESEARCH` for a SEARCH or SORT result (`ids` in result order; for SORT MIN and MAX
/// are the first and last in sort order, RFC 5267 §3.1).
pub fn esearch_line(
    tag: &str,
    uid: bool,
    ids: &[u32],
    ret: &ReturnOpts,
    modseq: Option<u64>,
    sorted: bool,
) -> Vec<u8> {
    let mut line = format!("* ESEARCH (TAG {})", quoted(tag));
    if uid {
        line.push_str(" UID");
    }
    let (min, max) = if sorted {
        (ids.first(), ids.last())
    } else {
        (ids.iter().min(), ids.iter().max())
    };
    if let (true, Some(m)) = (ret.min, min) {
        line.push_str(&format!(" MIN {m}"));
    }
    if let (true, Some(m)) = (ret.max, max) {
        line.push_str(&format!(" MAX {m}"));
    }
    if ret.all && !ids.is_empty() {
        line.push_str(&format!(" ALL {}", runs(ids)));
    }
    if let Some(p) = ret.partial {
        let w = p.window(ids);
        let set = if w.is_empty() {
            "NIL".to_string()
        } else if sorted {
            runs(w)
        } else {
            let mut w = w.to_vec();
            w.sort_unstable();
            runs(&w)
        };
        line.push_str(&format!(" PARTIAL ({p} {set})"));
    }
    if ret.count {
        line.push_str(&format!(" COUNT {}", ids.len()));
    }
    if let Some(m) = modseq.filter(|_| !ids.is_empty()) {
        line.push_str(&format!(" MODSEQ {m}"));
    }
    line.push_str("\r\n");
    line.into_bytes()
}

fn tagged_ok(responses: &[Resp]) -> bool {
    responses.iter().any(|r| {
        matches!(r, Resp::Typed(Response::Status(Status::Tagged(t))) if t.body.kind == StatusKind::Ok)
    })
}

impl Session {
    /// Runs a command rewritten by [`preparse`].
    pub async fn search_ext(&mut self, cmd: Command<'static>, ext: Ext) -> Outcome {
        let tag = cmd.tag.clone();
        match ext.kind {
            Kind::CancelUpdate(tags) => return self.cancel_update(&tag, tags),
            Kind::SaveFailed => {
                self.search_state.saved.clear();
                return Outcome::done(vec![response::bad(&tag, "Syntax error in command")]);
            }
            _ => {}
        }
        let ret = match &ext.kind {
            Kind::Search(r) | Kind::Sort(r) => Some(*r),
            _ => None,
        };
        let sorted = matches!(ext.kind, Kind::Sort(_));
        // A failed SEARCH with SAVE leaves the saved result empty (RFC 5182 §2.1), but its
        // own `$` still means the previous result (RFC 5182 §2.2: `SEARCH RETURN (SAVE) $ ...`).
        let save = ret.is_some_and(|r| r.save);
        let previous = if save {
            std::mem::take(&mut self.search_state.saved)
        } else {
            Vec::new()
        };
        let State::Selected(sel) = &self.state else {
            return Outcome::done(vec![response::bad(&tag, "No mailbox selected")]);
        };
        // RFC 5267 §4.3: a tag already used by a live UPDATE search is BAD.
        if ret.is_some_and(|r| r.update)
            && self
                .search_state
                .contexts
                .iter()
                .any(|c| c.tag == tag.as_ref())
        {
            return Outcome::done(vec![response::bad(&tag, "Duplicate search update tag")]);
        }
        let cmd = if ext.saved {
            let saved = if save {
                &previous
            } else {
                &self.search_state.saved
            };
            match substitute(cmd, sel, saved) {
                Substituted::Run(c) => c,
                Substituted::Empty(c) => {
                    let name = c.body.name();
                    let mut out: Vec<Resp> = self.pending_updates(false).await.unwrap_or_default();
                    out.push(response::ok(&tag, None, &format!("{name} completed")));
                    return Outcome::done(out);
                }
            }
        } else {
            cmd
        };
        let Some(ret) = ret else {
            return self.handle(cmd).await;
        };
        let (uid, criteria) = match &cmd.body {
            CommandBody::Search { uid, criteria, .. } => (*uid, criteria.clone()),
            CommandBody::Sort {
                uid,
                search_criteria,
                ..
            } => (*uid, search_criteria.clone()),
            _ => return Outcome::done(vec![response::bad(&tag, "Expected SEARCH or SORT")]),
        };
        let keep_rows = sorted && ret.update;
        self.search_state.want_sort_rows = keep_rows;
        self.search_state.sort_rows = None;
        let mut outcome = self.handle(cmd).await;
        self.search_state.want_sort_rows = false;
        let sort_rows = self.search_state.sort_rows.take();
        let ok = tagged_ok(&outcome.responses);
        let mut responses = Vec::with_capacity(outcome.responses.len() + 1);
        let mut found: Option<Vec<u32>> = None;
        for r in std::mem::take(&mut outcome.responses) {
            match r {
                Resp::Typed(Response::Data(Data::Search(ids, modseq)))
                | Resp::Typed(Response::Data(Data::Sort(ids, modseq))) => {
                    let ids: Vec<u32> = ids.iter().map(|n| n.get()).collect();
                    let modseq = modseq.map(|m| self.esearch_modseq(&ids, uid, ret, m.get()));
                    let only_save = ret.save
                        && !(ret.min || ret.max || ret.count || ret.all || ret.partial.is_some());
                    if !only_save {
                        responses.push(Resp::Raw(esearch_line(
                            tag.as_ref(),
                            uid,
                            &ids,
                            &ret,
                            modseq,
                            sorted,
                        )));
                    }
                    found = Some(ids);
                }
                other => responses.push(other),
            }
        }
        if let (true, Some(ids)) = (ok, found) {
            self.after_search(
                tag.as_ref(),
                uid,
                &ids,
                &ret,
                sorted,
                criteria,
                sort_rows,
                &mut responses,
            );
        }
        outcome.responses = responses;
        outcome
    }

    /// Saves the result (SEARCHRES) and registers the UPDATE context of a successful
    /// extended search.
    #[allow(clippy::too_many_arguments)]
    fn after_search(
        &mut self,
        tag: &str,
        uid: bool,
        ids: &[u32],
        ret: &ReturnOpts,
        sorted: bool,
        criteria: imap_codec::imap_types::core::Vec1<SearchKey<'static>>,
        sort_rows: Option<SortRows>,
        responses: &mut Vec<Resp>,
    ) {
        let State::Selected(sel) = &self.state else {
            return;
        };
        let to_uid = |id: u32| -> Option<Uid> {
            if uid {
                Some(Uid(id))
            } else {
                sel.by_seq(id).map(|m| m.uid)
            }
        };
        if ret.save {
            let picked: Vec<u32> = if let Some(p) = ret.partial {
                p.window(ids).to_vec()
            } else if ret.min_max_only() {
                let (min, max) = if sorted {
                    (ids.first().copied(), ids.last().copied())
                } else {
                    (ids.iter().min().copied(), ids.iter().max().copied())
                };
                [ret.min.then_some(min), ret.max.then_some(max)]
                    .into_iter()
                    .flatten()
                    .flatten()
                    .collect()
            } else {
                ids.to_vec()
            };
            let mut saved: Vec<Uid> = picked.into_iter().filter_map(to_uid).collect();
            saved.sort_unstable();
            saved.dedup();
            self.search_state.saved = saved;
        }
        if ret.update {
            // The answer stands; only the updates are refused (RFC 5267 §4.3.1).
            let refusal = if self.search_state.contexts.len() >= MAX_CONTEXTS {
                Some("Too many UPDATE searches")
            } else if sorted && ids.len() > MAX_SORT_CONTEXT_RESULTS {
                Some("Too many results to keep sorted")
            } else if sorted && sort_rows.is_none() {
                Some("Sorted result not available for updates")
            } else {
                None
            };
            if let Some(text) = refusal {
                let pos = responses.len().saturating_sub(1);
                responses.insert(
                    pos,
                    Resp::Raw(format!("* NO [NOUPDATE {}] {text}\r\n", quoted(tag)).into_bytes()),
                );
                return;
            }
            let result: BTreeSet<Uid> = ids.iter().filter_map(|&i| to_uid(i)).collect();
            self.search_state.contexts.push(Context {
                tag: tag.to_string(),
                uid,
                criteria: SearchKey::And(criteria),
                result,
                seen_modseq: view_modseq(sel),
                order: if sorted { sort_rows } else { None },
            });
        }
    }

    /// ESEARCH's MODSEQ (RFC 7162 §3.1.5): the highest MODSEQ of all matches, except that
    /// with only MIN and/or MAX asked it is the highest of the messages returned.
    fn esearch_modseq(&self, ids: &[u32], uid: bool, ret: ReturnOpts, all: u64) -> u64 {
        if !ret.min_max_only() {
            return all;
        }
        let State::Selected(sel) = &self.state else {
            return all;
        };
        let returned = [ids.iter().min(), ids.iter().max()];
        let picked = [ret.min, ret.max];
        returned
            .iter()
            .zip(picked)
            .filter(|(_, p)| *p)
            .filter_map(|(id, _)| {
                let id = **id.as_ref()?;
                let seq = if uid { sel.seq_of(Uid(id))? } else { id };
                sel.by_seq(seq).map(|m| m.modseq.0)
            })
            .max()
            .unwrap_or(all)
    }

    /// CANCELUPDATE (RFC 5267 §4.3): ends the named UPDATE searches; a tag naming no live
    /// search fails the whole command (`NO`, as Dovecot answers) and cancels nothing.
    fn cancel_update(
        &mut self,
        tag: &imap_codec::imap_types::core::Tag<'static>,
        tags: Vec<String>,
    ) -> Outcome {
        if !matches!(self.state, State::Selected(_)) {
            return Outcome::done(vec![response::bad(tag, "No mailbox selected")]);
        }
        let known = |t: &String| self.search_state.contexts.iter().any(|c| &c.tag == t);
        if !tags.iter().all(known) {
            return Outcome::done(vec![response::no(tag, None, "Unknown search update tag")]);
        }
        self.search_state
            .contexts
            .retain(|c| !tags.contains(&c.tag));
        Outcome::done(vec![response::ok(tag, None, "CANCELUPDATE completed")])
    }
}

/// Sequence numbers of every message in the non-UID contexts' results, before a refresh
/// may expunge some: REMOVEFROM then names them with the numbers the client knows.
pub fn snapshot(state: &SearchState, sel: &Selected) -> std::collections::HashMap<Uid, u32> {
    let mut map = std::collections::HashMap::new();
    for c in state.contexts.iter().filter(|c| !c.uid) {
        for u in &c.result {
            if let Some(s) = sel.seq_of(*u) {
                map.insert(*u, s);
            }
        }
    }
    map
}

/// The ADDTO/REMOVEFROM updates of every context after a refresh (RFC 5267 §4.3): the
/// messages changed or added since each context last looked (MODSEQ above its mark) are
/// evaluated again, the expunged ones removed. REMOVEFROM lines go before the refresh's
/// EXPUNGE responses (their numbers are the ones before the expunges), ADDTO lines after
/// everything (numbers after them). A SEARCH context uses position 0 (its results have no
/// order); a SORT context gives each run of messages its position in the sorted list
/// (§4.3.3, §4.3.4), so a client applying the pairs in order keeps the list sorted.
pub async fn context_updates(
    stores: &Stores,
    sel: &Selected,
    state: &mut SearchState,
    before: &std::collections::HashMap<Uid, u32>,
    out: &mut Vec<Resp>,
) -> StoreResult<()> {
    if state.contexts.is_empty() {
        return Ok(());
    }
    let now = view_modseq(sel);
    let mut removes = Vec::new();
    let mut adds = Vec::new();
    for c in &mut state.contexts {
        let changed: BTreeSet<Uid> = sel
            .messages()
            .filter(|m| m.modseq.0 > c.seen_modseq)
            .map(|m| m.uid)
            .collect();
        let sort = c.order.as_ref().map_or(&[][..], |o| &o.criteria[..]);
        let matching = if changed.is_empty() {
            std::collections::BTreeMap::new()
        } else {
            Session::evaluate_uids_sorted(stores, sel, &c.criteria, &changed, sort).await?
        };
        let removed: BTreeSet<Uid> = c
            .result
            .iter()
            .filter(|u| {
                sel.seq_of(**u).is_none() || (changed.contains(u) && !matching.contains_key(u))
            })
            .copied()
            .collect();
        let added: BTreeSet<Uid> = matching
            .keys()
            .filter(|u| !c.result.contains(u))
            .copied()
            .collect();
        for u in &removed {
            c.result.remove(u);
        }
        c.result.extend(added.iter().copied());
        c.seen_modseq = now;
        let uid_cmd = c.uid;
        let num = |u: &Uid, old: bool| -> Option<u32> {
            if uid_cmd {
                Some(u.0)
            } else if old {
                before.get(u).copied().or_else(|| sel.seq_of(*u))
            } else {
                sel.seq_of(*u)
            }
        };
        // (position, messages in result order) pairs.
        let (remove_pairs, add_pairs) = match &mut c.order {
            None => {
                let mut r: Vec<u32> = removed.iter().filter_map(|u| num(u, true)).collect();
                let mut a: Vec<u32> = added.iter().filter_map(|u| num(u, false)).collect();
                r.sort_unstable();
                a.sort_unstable();
                let pair = |v: Vec<u32>| if v.is_empty() { vec![] } else { vec![(0, v)] };
                (pair(r), pair(a))
            }
            Some(order) => {
                let old: Vec<Uid> = order.rows.iter().map(|r| r.1).collect();
                let r = removal_pairs(&old, &removed);
                order.rows.retain(|r| !removed.contains(&r.1));
                let mut new_rows: Vec<_> = matching
                    .into_iter()
                    .filter(|(u, _)| added.contains(u))
                    .map(|(u, v)| (v, u))
                    .collect();
                let criteria = &order.criteria;
                let cmp = |a: &(Vec<super::search::SortValue>, Uid),
                           b: &(Vec<super::search::SortValue>, Uid)| {
                    compare_sort_values(criteria, &a.0, &b.0).then(a.1.cmp(&b.1))
                };
                new_rows.sort_by(cmp);
                order.rows = merge_sorted(std::mem::take(&mut order.rows), new_rows, cmp);
                let now_list: Vec<Uid> = order.rows.iter().map(|r| r.1).collect();
                let a = addition_pairs(&now_list, &added);
                let numbered = |pairs: Vec<(usize, Vec<Uid>)>, old: bool| {
                    pairs
                        .into_iter()
                        .map(|(p, us)| (p, us.iter().filter_map(|u| num(u, old)).collect()))
                        .filter(|(_, v): &(usize, Vec<u32>)| !v.is_empty())
                        .collect::<Vec<_>>()
                };
                (numbered(r, true), numbered(a, false))
            }
        };
        let head = format!(
            "* ESEARCH (TAG {}){}",
            quoted(&c.tag),
            if c.uid { " UID" } else { "" }
        );
        if !remove_pairs.is_empty() {
            removes.push(Resp::Raw(
                format!("{head} REMOVEFROM ({})\r\n", pairs_text(&remove_pairs)).into_bytes(),
            ));
        }
        if !add_pairs.is_empty() {
            adds.push(Resp::Raw(
                format!("{head} ADDTO ({})\r\n", pairs_text(&add_pairs)).into_bytes(),
            ));
        }
    }
    if !removes.is_empty() {
        out.splice(0..0, removes);
    }
    out.extend(adds);
    Ok(())
}

/// `position set position set ...`, each set in result order (RFC 5267 §4.3.2).
fn pairs_text(pairs: &[(usize, Vec<u32>)]) -> String {
    pairs
        .iter()
        .map(|(p, v)| format!("{p} {}", runs(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The REMOVEFROM pairs taking `removed` out of the sorted list `rows` (RFC 5267 §4.3.4):
/// one pair per run of adjacent removed messages, whose position is where its first message
/// stands once the earlier pairs are applied (the pairs are applied in order).
fn removal_pairs(rows: &[Uid], removed: &BTreeSet<Uid>) -> Vec<(usize, Vec<Uid>)> {
    let mut pairs: Vec<(usize, Vec<Uid>)> = Vec::new();
    let mut kept = 0usize;
    let mut in_run = false;
    for u in rows {
        if removed.contains(u) {
            if !in_run {
                pairs.push((kept + 1, Vec::new()));
                in_run = true;
            }
            if let Some(last) = pairs.last_mut() {
                last.1.push(*u);
            }
        } else {
            kept += 1;
            in_run = false;
        }
    }
    pairs
}

/// The ADDTO pairs that insert `added` into the sorted list to give `rows` (RFC 5267
/// §4.3.3): one pair per run of adjacent new messages, at the position its first message
/// has in `rows`, which it has once the earlier pairs are applied.
fn addition_pairs(rows: &[Uid], added: &BTreeSet<Uid>) -> Vec<(usize, Vec<Uid>)> {
    let mut pairs: Vec<(usize, Vec<Uid>)> = Vec::new();
    let mut in_run = false;
    for (i, u) in rows.iter().enumerate() {
        if added.contains(u) {
            if !in_run {
                pairs.push((i + 1, Vec::new()));
                in_run = true;
            }
            if let Some(last) = pairs.last_mut() {
                last.1.push(*u);
            }
        } else {
            in_run = false;
        }
    }
    pairs
}

/// Merges two lists sorted by `cmp` into one.
fn merge_sorted<T>(a: Vec<T>, b: Vec<T>, cmp: impl Fn(&T, &T) -> std::cmp::Ordering) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => cmp(x, y) != std::cmp::Ordering::Greater,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_a { a.next() } else { b.next() };
        out.extend(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_options() {
        let r = ReturnOpts::parse("MIN SAVE PARTIAL 1:500").unwrap();
        assert!(r.min && r.save && !r.all);
        assert_eq!(
            r.partial,
            Some(Partial {
                lo: 1,
                hi: 500,
                last: false
            })
        );
        let r = ReturnOpts::parse("PARTIAL -1:-100").unwrap();
        assert_eq!(r.partial.unwrap().to_string(), "-1:-100");
        assert_eq!(
            ReturnOpts::parse("PARTIAL -100:-1")
                .unwrap()
                .partial
                .unwrap()
                .to_string(),
            "-1:-100"
        );
        assert_eq!(
            ReturnOpts::parse("PARTIAL 9:3")
                .unwrap()
                .partial
                .unwrap()
                .to_string(),
            "3:9"
        );
        assert!(ReturnOpts::parse("").unwrap().all);
        assert!(ReturnOpts::parse("CONTEXT").unwrap().all);
        assert!(!ReturnOpts::parse("SAVE").unwrap().all);
        assert!(!ReturnOpts::parse("UPDATE").unwrap().all);
        for bad in [
            "PARTIAL",
            "PARTIAL 1",
            "PARTIAL 0:5",
            "PARTIAL -1:5",
            "PARTIAL 1:-5",
            "PARTIAL a:b",
            "PARTIAL 1:99999999999",
            "ALL PARTIAL 1:5",
            "MIN MIN",
            "BOGUS",
            "PARTIAL 01:5",
            "PARTIAL 1:5 PARTIAL 1:5",
        ] {
            assert_eq!(ReturnOpts::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn partial_windows() {
        let ids = [10, 20, 30, 40, 50];
        let p = |s: &str| Partial::parse(s).unwrap();
        assert_eq!(p("1:2").window(&ids), &[10, 20]);
        assert_eq!(p("4:100").window(&ids), &[40, 50]);
        assert_eq!(p("6:9").window(&ids), &[] as &[u32]);
        assert_eq!(p("-1:-2").window(&ids), &[40, 50]);
        assert_eq!(p("-5:-5").window(&ids), &[10]);
        assert_eq!(p("-1:-100").window(&ids), &ids);
        assert_eq!(p("-6:-9").window(&ids), &[] as &[u32]);
        assert_eq!(p("1:4294967295").window(&[]), &[] as &[u32]);
    }

    #[test]
    fn rewrites() {
        let (plain, ext) = preparse_inner("a UID SEARCH RETURN (SAVE) FLAGGED").unwrap();
        assert_eq!(plain, "a UID SEARCH FLAGGED\r\n");
        assert!(matches!(ext.kind, Kind::Search(r) if r.save) && !ext.saved);
        let (plain, ext) = preparse_inner("b FETCH $ (FLAGS)").unwrap();
        assert_eq!(plain, "b FETCH 4294967295 (FLAGS)\r\n");
        assert!(ext.saved && ext.kind == Kind::Plain);
        let (plain, _) =
            preparse_inner("c SEARCH RETURN (ALL) OR $ (SUBJECT \"$\") NOT $").unwrap();
        assert_eq!(
            plain,
            "c SEARCH OR 4294967295 (SUBJECT \"$\") NOT 4294967295\r\n"
        );
        let (plain, ext) = preparse_inner("d UID SORT RETURN (MIN ALL) (DATE) UTF-8 $").unwrap();
        assert_eq!(plain, "d UID SORT (DATE) UTF-8 4294967295\r\n");
        assert!(matches!(ext.kind, Kind::Sort(r) if r.min && r.all));
        let (plain, ext) = preparse_inner("e CANCELUPDATE \"a1\" \"b2\"").unwrap();
        assert_eq!(plain, "e NOOP\r\n");
        assert_eq!(ext.kind, Kind::CancelUpdate(vec!["a1".into(), "b2".into()]));
        let (plain, _) = preparse_inner("f UID EXPUNGE $").unwrap();
        assert_eq!(plain, "f UID EXPUNGE 4294967295\r\n");
        // Not rewritten: no `$`, `$` inside an atom, the placeholder already present,
        // `$` in a command where it is no sequence set, plain EXPUNGE.
        assert_eq!(preparse_inner("g FETCH 1 FLAGS"), None);
        assert_eq!(preparse_inner("h SEARCH KEYWORD $Label1"), None);
        assert_eq!(preparse_inner("i FETCH $ (FLAGS) 4294967295"), None);
        assert_eq!(preparse_inner("j SELECT $"), None);
        assert_eq!(preparse_inner("k EXPUNGE $"), None);
        assert_eq!(preparse_inner("l CANCELUPDATE"), None);
        assert_eq!(preparse_inner("m CANCELUPDATE a1"), None);
        assert_eq!(
            preparse_inner("n SEARCH RETURN (ALL PARTIAL 1:2) ALL"),
            None
        );
    }

    #[test]
    fn esearch_lines() {
        let ret = ReturnOpts::parse("MIN MAX ALL COUNT").unwrap();
        let line = esearch_line("t1", false, &[5, 2, 3, 4, 9], &ret, None, true);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "* ESEARCH (TAG \"t1\") MIN 5 MAX 9 ALL 5,2:4,9 COUNT 5\r\n"
        );
        let ret = ReturnOpts::parse("PARTIAL -1:-2 COUNT").unwrap();
        let line = esearch_line("t2", true, &[1, 2, 3, 7], &ret, None, false);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "* ESEARCH (TAG \"t2\") UID PARTIAL (-1:-2 3,7) COUNT 4\r\n"
        );
        let ret = ReturnOpts::parse("PARTIAL 5:6").unwrap();
        let line = esearch_line("t3", false, &[1], &ret, None, false);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "* ESEARCH (TAG \"t3\") PARTIAL (5:6 NIL)\r\n"
        );
    }

    /// What a client does with the pairs (RFC 5267 §4.3.3, §4.3.4), applied in order.
    fn apply_removes(list: &mut Vec<Uid>, pairs: &[(usize, Vec<Uid>)]) {
        for (p, us) in pairs {
            let at = p - 1;
            assert_eq!(&list[at..at + us.len()], &us[..], "removal at {p}");
            list.drain(at..at + us.len());
        }
    }

    fn apply_adds(list: &mut Vec<Uid>, pairs: &[(usize, Vec<Uid>)]) {
        for (p, us) in pairs {
            let at = p - 1;
            assert!(at <= list.len());
            list.splice(at..at, us.iter().copied());
        }
    }

    fn uids(v: &[u32]) -> Vec<Uid> {
        v.iter().map(|&u| Uid(u)).collect()
    }

    #[test]
    fn sorted_context_positions() {
        // The RFC 5267 §4.3.3 example: 2731:2733 added before 2734:2735, one pair.
        let now = uids(&[2731, 2732, 2733, 2734, 2735]);
        let added: BTreeSet<Uid> = uids(&[2731, 2732, 2733]).into_iter().collect();
        let pairs = addition_pairs(&now, &added);
        assert_eq!(pairs, vec![(1, uids(&[2731, 2732, 2733]))]);
        assert_eq!(pairs_text(&[(1, vec![2731, 2732, 2733])]), "1 2731:2733");
        // Removals in a sorted (not numeric) order: positions after the earlier pairs.
        let old = uids(&[5, 3, 9, 1, 7]);
        let removed: BTreeSet<Uid> = uids(&[3, 1, 7]).into_iter().collect();
        let pairs = removal_pairs(&old, &removed);
        assert_eq!(pairs, vec![(2, uids(&[3])), (3, uids(&[1, 7]))]);
        let mut list = old.clone();
        apply_removes(&mut list, &pairs);
        assert_eq!(list, uids(&[5, 9]));
        assert_eq!(pairs_text(&[(3, vec![9, 7, 8])]), "3 9,7:8");
    }

    #[test]
    fn sorted_context_updates_keep_the_client_list() {
        // Every removal/addition pattern over small lists: the client's list, after the
        // REMOVEFROM then ADDTO pairs, equals the server's.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for _ in 0..500 {
            let n = (next() % 12) as usize;
            // A sorted order: values are random keys; list sorted by (key, uid).
            let mut rows: Vec<(u32, Uid)> = (1..=n as u32).map(|u| (next() % 4, Uid(u))).collect();
            rows.sort();
            let old: Vec<Uid> = rows.iter().map(|r| r.1).collect();
            let removed: BTreeSet<Uid> = old.iter().filter(|_| next() % 3 == 0).copied().collect();
            rows.retain(|r| !removed.contains(&r.1));
            let fresh: Vec<(u32, Uid)> = (0..next() % 5)
                .map(|i| (next() % 4, Uid(100 + i)))
                .collect();
            let added: BTreeSet<Uid> = fresh.iter().map(|r| r.1).collect();
            let mut fresh = fresh;
            fresh.sort();
            let merged = merge_sorted(rows, fresh, |a, b| a.cmp(b));
            let mut expect = merged.clone();
            expect.sort();
            assert_eq!(merged, expect);
            let now: Vec<Uid> = merged.iter().map(|r| r.1).collect();
            let mut client = old.clone();
            apply_removes(&mut client, &removal_pairs(&old, &removed));
            apply_adds(&mut client, &addition_pairs(&now, &added));
            assert_eq!(client, now);
        }
    }

    #[test]
    fn sets() {
        assert_eq!(set_of(vec![]), None);
        let s = set_of(vec![3, 1, 2, 7]).unwrap();
        assert_eq!(s.0.as_ref().len(), 2);
    }
}
