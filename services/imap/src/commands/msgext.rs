//! Message extensions the codec (imap-codec 2.0.0-alpha.10) does not parse, recognised only
//! after the codec refused a command and rewritten into forms it does parse, so the codec
//! stays the parser of record (as in [`super::extended`]):
//!
//! - MULTIAPPEND (RFC 3502): `APPEND box [flags] [date] literal [flags] [date] literal ...`
//!   becomes one single-message APPEND per message, each decoded by the codec.
//! - REPLACE / UID REPLACE (RFC 8508): `REPLACE n box [flags] [date] literal`: the number is
//!   read here, the rest is decoded by the codec as `APPEND box [flags] [date] literal`.
//! - UNAUTHENTICATE (RFC 8437): the tag is checked by decoding `tag NOOP`.
//! - FETCH items SAVEDATE (RFC 8514) and PREVIEW / PREVIEW (LAZY) (RFC 8970): cut out of
//!   the item list; the rest is decoded by the codec, and the session adds the items.
//! - FETCH items EMAILID and THREADID (RFC 8474 §5), cut out likewise.
//! - SEARCH / SORT keys SAVEDBEFORE, SAVEDON, SAVEDSINCE and SAVEDATESUPPORTED (RFC 8514),
//!   and EMAILID and THREADID (RFC 8474 §6): cut out of the criteria; the session replaces
//!   each by an equivalent key the codec knows (`(UID set)` of the messages it matches,
//!   `(NOT ALL)`, `ALL`), computed from the stored save dates or object ids of the selected
//!   mailbox, and decodes the result.
//! - STATUS item MAILBOXID (RFC 8474 §4.2): cut out of the item list; the rest is decoded
//!   by the codec and the session adds the item.
//!
//! - APPEND data `UTF8 (~{n}...)` (RFC 6855 §4), in APPEND, MULTIAPPEND and REPLACE: becomes
//!   the literal8 it wraps, and the command is marked [`MsgExt::Utf8`], which the session
//!   accepts only after `ENABLE UTF8=ACCEPT` (else `BAD`).
//!
//! Everything here is free of sockets and state; the tokenizer walks a complete command
//! (as framed by the connection, literals included) and never recurses deeper than
//! [`MAX_DEPTH`] parentheses.

use chrono::NaiveDate;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::IntoStatic;
use imap_codec::CommandCodec;
use std::num::NonZeroU32;

/// Most messages one MULTIAPPEND may carry. Their total size is bounded by the framing
/// limit of one command (`imap.max_message_size` plus the command size), checked by the
/// connection before each literal is invited.
pub const MAX_MULTIAPPEND_MESSAGES: usize = 100;
/// Deepest nesting of parentheses the tokenizer follows (search keys nest; the search
/// module allows 64 levels).
pub const MAX_DEPTH: usize = 64;

/// FETCH items the codec does not know, answered by the session after the codec's items.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchExtra {
    /// `SAVEDATE` (RFC 8514 §4.2).
    pub savedate: bool,
    /// `PREVIEW`: `Some(lazy)` (RFC 8970 §3).
    pub preview: Option<bool>,
    /// `EMAILID` (RFC 8474 §5.1).
    pub emailid: bool,
    /// `THREADID` (RFC 8474 §5.2).
    pub threadid: bool,
    /// The client asked only for extension items: `UID` was put in so the codec had an item
    /// list to parse, and is not answered (unless it is a UID FETCH, which always is).
    pub drop_uid: bool,
}

impl FetchExtra {
    pub fn any(&self) -> bool {
        self.savedate || self.preview.is_some() || self.emailid || self.threadid
    }
}

/// A search key the session resolves: a save-date key (RFC 8514 §4.3), compared by
/// calendar date (UTC), disregarding time, like BEFORE/ON/SINCE with INTERNALDATE (RFC 3501
/// §6.4.4), or an object-id key (RFC 8474 §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaveKey {
    Before(NaiveDate),
    On(NaiveDate),
    Since(NaiveDate),
    /// Matches every message of a mailbox that keeps save dates (all of them, here).
    Supported,
    /// `EMAILID objectid`: the messages with that EMAILID.
    EmailId(String),
    /// `THREADID objectid`: the messages of that thread.
    ThreadId(String),
}

impl SaveKey {
    pub fn matches(&self, day: NaiveDate) -> bool {
        match self {
            SaveKey::Before(d) => day < *d,
            SaveKey::On(d) => day == *d,
            SaveKey::Since(d) => day >= *d,
            SaveKey::Supported => true,
            SaveKey::EmailId(_) | SaveKey::ThreadId(_) => false,
        }
    }
}

/// A piece of a SEARCH/SORT command: text kept as sent, or a key the session replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Raw(Vec<u8>),
    Key(SaveKey),
}

#[derive(Debug)]
pub enum MsgExt {
    /// MULTIAPPEND: each message as a one-message APPEND (same tag and mailbox).
    MultiAppend {
        tag: Tag<'static>,
        messages: Vec<Command<'static>>,
    },
    /// More than [`MAX_MULTIAPPEND_MESSAGES`] messages.
    TooManyMessages {
        tag: Tag<'static>,
    },
    /// REPLACE (`uid` false: a sequence number) and the APPEND of the replacement.
    Replace {
        tag: Tag<'static>,
        uid: bool,
        number: NonZeroU32,
        append: Command<'static>,
    },
    Unauthenticate {
        tag: Tag<'static>,
    },
    /// A FETCH without its extension items, decoded, and the items to add.
    Fetch {
        cmd: Command<'static>,
        extra: FetchExtra,
    },
    /// A STATUS with MAILBOXID, decoded without it.
    Status {
        cmd: Command<'static>,
    },
    /// A SEARCH/SORT with save-date or object-id keys, to be resolved and decoded by the
    /// session.
    Search {
        tag: Tag<'static>,
        pieces: Vec<Piece>,
    },
    /// A single-message APPEND, as decoded by the codec (only inside [`MsgExt::Utf8`]).
    Append {
        cmd: Command<'static>,
    },
    /// An APPEND, MULTIAPPEND or REPLACE whose messages were (some of them) given as
    /// `UTF8 (literal8)` (RFC 6855 §4): `inner` is the command with each such message as
    /// its plain literal8.
    Utf8 {
        tag: Tag<'static>,
        inner: Box<MsgExt>,
    },
}

impl MsgExt {
    /// The tag of the command.
    pub fn tag(&self) -> &Tag<'static> {
        match self {
            MsgExt::MultiAppend { tag, .. }
            | MsgExt::TooManyMessages { tag }
            | MsgExt::Replace { tag, .. }
            | MsgExt::Unauthenticate { tag }
            | MsgExt::Search { tag, .. }
            | MsgExt::Utf8 { tag, .. } => tag,
            MsgExt::Fetch { cmd, .. } | MsgExt::Append { cmd } | MsgExt::Status { cmd } => &cmd.tag,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Atom,
    Quoted,
    Literal,
    Group,
}

/// A token of a command: its kind and byte span (a group spans its parentheses).
#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Tok {
    fn text<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        &b[self.start..self.end]
    }
    fn is(&self, b: &[u8], word: &str) -> bool {
        self.kind == Kind::Atom && self.text(b).eq_ignore_ascii_case(word.as_bytes())
    }
}

/// One token starting at `i` (no leading space).
fn token(b: &[u8], i: usize, end: usize, depth: usize) -> Option<Tok> {
    let c = *b.get(i)?;
    if i >= end {
        return None;
    }
    match c {
        b'"' => {
            let mut j = i + 1;
            while j < end {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => {
                        return Some(Tok {
                            kind: Kind::Quoted,
                            start: i,
                            end: j + 1,
                        })
                    }
                    b'\r' | b'\n' => return None,
                    _ => j += 1,
                }
            }
            None
        }
        b'{' | b'~' => {
            let open = if c == b'~' { i + 1 } else { i };
            if b.get(open) != Some(&b'{') {
                return atom(b, i, end);
            }
            let close = open + b[open..end].iter().position(|x| *x == b'}')?;
            let mut digits = &b[open + 1..close];
            if let Some(d) = digits.strip_suffix(b"+") {
                digits = d;
            }
            if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
            if b.get(close + 1..close + 3)? != b"\r\n" {
                return None;
            }
            let data_end = (close + 3).checked_add(n)?;
            (data_end <= end).then_some(Tok {
                kind: Kind::Literal,
                start: i,
                end: data_end,
            })
        }
        b'(' => {
            if depth >= MAX_DEPTH {
                return None;
            }
            let mut j = i + 1;
            loop {
                while j < end && b[j] == b' ' {
                    j += 1;
                }
                match b.get(j) {
                    Some(b')') if j < end => {
                        return Some(Tok {
                            kind: Kind::Group,
                            start: i,
                            end: j + 1,
                        })
                    }
                    Some(_) if j < end => j = token(b, j, end, depth + 1)?.end,
                    _ => return None,
                }
            }
        }
        b')' | b' ' | b'\r' | b'\n' => None,
        _ => atom(b, i, end),
    }
}

/// An atom, which may hold a bracketed section with spaces and parentheses
/// (`BODY[HEADER.FIELDS (A B)]<0.10>`).
fn atom(b: &[u8], i: usize, end: usize) -> Option<Tok> {
    let mut j = i;
    let mut bracket = 0usize;
    while j < end {
        match b[j] {
            b'[' => bracket += 1,
            b']' => bracket = bracket.saturating_sub(1),
            b'\r' | b'\n' => break,
            b' ' | b'(' | b')' if bracket == 0 => break,
            _ => {}
        }
        j += 1;
    }
    (j > i).then_some(Tok {
        kind: Kind::Atom,
        start: i,
        end: j,
    })
}

/// The tokens of `b[start..end]`, separated by spaces.
fn tokens(b: &[u8], start: usize, end: usize, depth: usize) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut i = start;
    loop {
        while i < end && b[i] == b' ' {
            i += 1;
        }
        if i >= end {
            return Some(out);
        }
        let t = token(b, i, end, depth)?;
        i = t.end;
        out.push(t);
    }
}

fn decode(bytes: &[u8]) -> Option<Command<'static>> {
    match CommandCodec::default().decode(bytes) {
        Ok((b"", cmd)) => Some(cmd.into_static()),
        _ => None,
    }
}

fn line(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = parts.join(&b' ');
    out.extend_from_slice(b"\r\n");
    out
}

/// Recognises one of this module's commands in a complete framed command.
pub fn preparse(message: &[u8]) -> Option<MsgExt> {
    match strip_utf8_data(message) {
        Utf8Data::Absent => preparse_plain(message),
        Utf8Data::Invalid => None,
        Utf8Data::Rewritten(plain) => {
            let inner = match preparse_plain(&plain) {
                Some(ext @ (MsgExt::MultiAppend { .. } | MsgExt::TooManyMessages { .. })) => ext,
                Some(ext @ MsgExt::Replace { .. }) => ext,
                Some(_) => return None,
                // One message: a plain APPEND now, which the codec decodes.
                None => {
                    let cmd = decode(&plain)?;
                    if !matches!(cmd.body, CommandBody::Append { .. }) {
                        return None;
                    }
                    MsgExt::Append { cmd }
                }
            };
            Some(MsgExt::Utf8 {
                tag: inner.tag().clone(),
                inner: Box::new(inner),
            })
        }
    }
}

/// What [`strip_utf8_data`] found.
#[derive(Debug, PartialEq, Eq)]
enum Utf8Data {
    /// Not an APPEND/REPLACE with `UTF8 (...)` data.
    Absent,
    /// `UTF8` where a message goes, but not followed by `(literal8)`: a syntax error.
    Invalid,
    /// The command with each `UTF8 (~{n}...)` replaced by its `~{n}...`.
    Rewritten(Vec<u8>),
}

/// Finds RFC 6855's `append-data =/ "UTF8" SP "(" literal8 ")"` in an APPEND (each of a
/// MULTIAPPEND's messages) or [UID] REPLACE, after the mailbox name (which may itself be
/// `UTF8`). Only the atom `UTF8` among the message arguments is looked at: flags are a
/// group, the date a quoted string, the message a literal.
fn strip_utf8_data(message: &[u8]) -> Utf8Data {
    let Some(body) = message.strip_suffix(b"\r\n") else {
        return Utf8Data::Absent;
    };
    let Some(toks) = tokens(body, 0, body.len(), 0) else {
        return Utf8Data::Absent;
    };
    let uid = toks.get(1).is_some_and(|t| t.is(body, "UID"));
    let v = 1 + usize::from(uid);
    let Some(verb) = toks.get(v) else {
        return Utf8Data::Absent;
    };
    // APPEND tag mailbox ...; REPLACE tag number mailbox ...
    let first_message_arg = if !uid && verb.is(body, "APPEND") {
        v + 2
    } else if verb.is(body, "REPLACE") {
        v + 3
    } else {
        return Utf8Data::Absent;
    };
    let args = toks.get(first_message_arg..).unwrap_or_default();
    if !args.iter().any(|t| t.is(body, "UTF8")) {
        return Utf8Data::Absent;
    }
    let mut out = Vec::with_capacity(message.len());
    let mut copied = 0;
    let mut i = 0;
    while i < args.len() {
        let t = args[i];
        if !t.is(body, "UTF8") {
            i += 1;
            continue;
        }
        let Some(group) = args.get(i + 1).filter(|g| g.kind == Kind::Group) else {
            return Utf8Data::Invalid;
        };
        let inner = match tokens(body, group.start + 1, group.end - 1, 1) {
            Some(inner) => inner,
            None => return Utf8Data::Invalid,
        };
        match inner.as_slice() {
            [lit] if lit.kind == Kind::Literal && body[lit.start] == b'~' => {
                out.extend_from_slice(&body[copied..t.start]);
                out.extend_from_slice(lit.text(body));
                copied = group.end;
            }
            _ => return Utf8Data::Invalid,
        }
        i += 2;
    }
    out.extend_from_slice(&body[copied..]);
    out.extend_from_slice(b"\r\n");
    Utf8Data::Rewritten(out)
}

fn preparse_plain(message: &[u8]) -> Option<MsgExt> {
    let body = message.strip_suffix(b"\r\n")?;
    let toks = tokens(body, 0, body.len(), 0)?;
    let (tag_tok, rest) = toks.split_first()?;
    if tag_tok.kind != Kind::Atom {
        return None;
    }
    let tag_raw = tag_tok.text(body);
    // The codec checks the tag.
    let tag = decode(&line(&[tag_raw, b"NOOP"]))?.tag;
    let uid = rest.first().is_some_and(|t| t.is(body, "UID"));
    let rest = if uid { &rest[1..] } else { rest };
    let verb = rest.first()?;
    if !uid && verb.is(body, "UNAUTHENTICATE") && rest.len() == 1 {
        return Some(MsgExt::Unauthenticate { tag });
    }
    if !uid && verb.is(body, "APPEND") {
        return multiappend(body, tag, tag_raw, &rest[1..]);
    }
    if verb.is(body, "REPLACE") {
        return replace(body, tag, tag_raw, uid, &rest[1..]);
    }
    if verb.is(body, "FETCH") {
        return fetch(body, tag_raw, uid, &rest[1..]);
    }
    if verb.is(body, "SEARCH") || verb.is(body, "SORT") {
        return search(body, tag, verb, &rest[1..]);
    }
    if !uid && verb.is(body, "STATUS") {
        return status(body, tag_raw, &rest[1..]);
    }
    None
}

/// `STATUS mailbox (items)` with `MAILBOXID` among the items: decoded without it (an
/// empty list when it was the only one, which the session then answers alone).
fn status(body: &[u8], tag_raw: &[u8], args: &[Tok]) -> Option<MsgExt> {
    let [mailbox, items] = args else {
        return None;
    };
    if items.kind != Kind::Group {
        return None;
    }
    let listed = tokens(body, items.start + 1, items.end - 1, 1)?;
    if !listed.iter().any(|t| t.is(body, "MAILBOXID")) {
        return None;
    }
    let kept: Vec<&[u8]> = listed
        .iter()
        .filter(|t| !t.is(body, "MAILBOXID"))
        .map(|t| t.text(body))
        .collect();
    let list = [b"(".as_slice(), &kept.join(&b' '), b")"].concat();
    let cmd = decode(&line(&[tag_raw, b"STATUS", mailbox.text(body), &list]))?;
    matches!(cmd.body, CommandBody::Status { .. }).then_some(MsgExt::Status { cmd })
}

fn multiappend(body: &[u8], tag: Tag<'static>, tag_raw: &[u8], args: &[Tok]) -> Option<MsgExt> {
    let (mailbox, mut rest) = args.split_first()?;
    let mut spans = Vec::new();
    while !rest.is_empty() {
        let first = rest[0];
        let mut k = 0;
        if rest[k].kind == Kind::Group {
            k += 1;
        }
        if rest.get(k)?.kind == Kind::Quoted {
            k += 1;
        }
        let lit = rest.get(k)?;
        // A literal, or the codec's `~{n}` literal8 (RFC 3516 §4.4).
        if lit.kind != Kind::Literal {
            return None;
        }
        spans.push((first.start, lit.end));
        rest = &rest[k + 1..];
    }
    // One message is a plain APPEND the codec refused for a reason of its own.
    if spans.len() < 2 {
        return None;
    }
    if spans.len() > MAX_MULTIAPPEND_MESSAGES {
        return Some(MsgExt::TooManyMessages { tag });
    }
    let messages = spans
        .into_iter()
        .map(|(s, e)| {
            let cmd = decode(&line(&[
                tag_raw,
                b"APPEND",
                mailbox.text(body),
                &body[s..e],
            ]))?;
            matches!(cmd.body, CommandBody::Append { .. }).then_some(cmd)
        })
        .collect::<Option<Vec<_>>>()?;
    Some(MsgExt::MultiAppend { tag, messages })
}

fn nz_number(text: &[u8]) -> Option<NonZeroU32> {
    if text.first() == Some(&b'0') || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    NonZeroU32::new(std::str::from_utf8(text).ok()?.parse().ok()?)
}

fn replace(
    body: &[u8],
    tag: Tag<'static>,
    tag_raw: &[u8],
    uid: bool,
    args: &[Tok],
) -> Option<MsgExt> {
    let (n, rest) = args.split_first()?;
    if n.kind != Kind::Atom || rest.is_empty() {
        return None;
    }
    let number = nz_number(n.text(body))?;
    let start = rest.first()?.start;
    let end = rest.last()?.end;
    let append = decode(&line(&[tag_raw, b"APPEND", &body[start..end]]))?;
    if !matches!(append.body, CommandBody::Append { .. }) {
        return None;
    }
    Some(MsgExt::Replace {
        tag,
        uid,
        number,
        append,
    })
}

fn fetch(body: &[u8], tag_raw: &[u8], uid: bool, args: &[Tok]) -> Option<MsgExt> {
    let (set, rest) = args.split_first()?;
    let (items, modifiers) = rest.split_first()?;
    if modifiers.len() > 1 {
        return None;
    }
    let listed: Vec<Tok> = match items.kind {
        Kind::Group => tokens(body, items.start + 1, items.end - 1, 1)?,
        Kind::Atom => vec![*items],
        _ => return None,
    };
    let mut extra = FetchExtra::default();
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut k = 0;
    while k < listed.len() {
        let t = listed[k];
        if t.is(body, "SAVEDATE") {
            extra.savedate = true;
        } else if t.is(body, "EMAILID") {
            extra.emailid = true;
        } else if t.is(body, "THREADID") {
            extra.threadid = true;
        } else if t.is(body, "PREVIEW") {
            let mut lazy = false;
            // `PREVIEW (LAZY)`: the modifiers of RFC 8970 §3; only LAZY is defined.
            if let Some(m) = listed.get(k + 1).filter(|m| m.kind == Kind::Group) {
                let mods = tokens(body, m.start + 1, m.end - 1, 1)?;
                if mods.is_empty() || !mods.iter().all(|x| x.is(body, "LAZY")) {
                    return None;
                }
                lazy = true;
                k += 1;
            }
            // PREVIEW and PREVIEW (LAZY) together: the full one wins.
            extra.preview = Some(lazy && extra.preview.unwrap_or(true));
        } else {
            kept.push(t.text(body));
        }
        k += 1;
    }
    if !extra.any() {
        return None;
    }
    if kept.is_empty() {
        kept.push(b"UID");
        extra.drop_uid = !uid;
    }
    let list = [b"(".as_slice(), &kept.join(&b' '), b")"].concat();
    let mut parts: Vec<&[u8]> = vec![tag_raw];
    if uid {
        parts.push(b"UID");
    }
    parts.extend([b"FETCH".as_slice(), set.text(body), &list]);
    if let Some(m) = modifiers.first() {
        parts.push(m.text(body));
    }
    let cmd = decode(&line(&parts))?;
    matches!(cmd.body, CommandBody::Fetch { .. }).then_some(MsgExt::Fetch { cmd, extra })
}

/// `d-Mon-yyyy`, bare or quoted (RFC 3501 `date`).
fn search_date(body: &[u8], t: &Tok) -> Option<NaiveDate> {
    let text = match t.kind {
        Kind::Atom => t.text(body),
        Kind::Quoted => body.get(t.start + 1..t.end - 1)?,
        _ => return None,
    };
    let text = std::str::from_utf8(text).ok()?;
    let mut it = text.split('-');
    let (d, m, y) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || d.is_empty() || d.len() > 2 || y.len() != 4 {
        return None;
    }
    let months = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let month = months
        .iter()
        .position(|x| x.eq_ignore_ascii_case(m))?
        .checked_add(1)?;
    NaiveDate::from_ymd_opt(y.parse().ok()?, month as u32, d.parse().ok()?)
}

/// Arguments each standard search key takes, so an argument is never read as a key
/// (`SUBJECT SAVEDON` searches for the word).
fn key_args(body: &[u8], key: &Tok, next: Option<&Tok>) -> usize {
    const ONE: [&str; 22] = [
        "BCC",
        "BEFORE",
        "BODY",
        "CC",
        "FROM",
        "KEYWORD",
        "LARGER",
        "ON",
        "SENTBEFORE",
        "SENTON",
        "SENTSINCE",
        "SINCE",
        "SMALLER",
        "SUBJECT",
        "TEXT",
        "TO",
        "UID",
        "UNKEYWORD",
        "OLDER",
        "YOUNGER",
        "EMAILID",
        "THREADID",
    ];
    if key.kind != Kind::Atom {
        return 0;
    }
    if ONE.iter().any(|k| key.is(body, k)) {
        1
    } else if key.is(body, "HEADER") {
        2
    } else if key.is(body, "MODSEQ") {
        // `MODSEQ "/flags/\seen" all 5`: an entry name and type come first.
        if next.is_some_and(|n| n.kind == Kind::Quoted) {
            3
        } else {
            1
        }
    } else {
        0
    }
}

/// Finds save-date keys in `toks`; `Err(())` for a malformed one.
fn find_keys(
    body: &[u8],
    toks: &[Tok],
    depth: usize,
    found: &mut Vec<(usize, usize, SaveKey)>,
) -> Result<(), ()> {
    let mut k = 0;
    while k < toks.len() {
        let t = toks[k];
        let dated = [
            ("SAVEDBEFORE", SaveKey::Before as fn(NaiveDate) -> SaveKey),
            ("SAVEDON", SaveKey::On),
            ("SAVEDSINCE", SaveKey::Since),
        ];
        if let Some((_, make)) = dated.iter().find(|(n, _)| t.is(body, n)) {
            let arg = toks.get(k + 1).ok_or(())?;
            let date = search_date(body, arg).ok_or(())?;
            found.push((t.start, arg.end, make(date)));
            k += 2;
            continue;
        }
        if t.is(body, "EMAILID") || t.is(body, "THREADID") {
            // `objectid` (RFC 8474 §7): an atom of 1-255 of [A-Za-z0-9_-].
            let arg = toks.get(k + 1).ok_or(())?;
            let text = std::str::from_utf8(arg.text(body)).map_err(|_| ())?;
            if arg.kind != Kind::Atom || !mailfleet_storage::object_id::is_valid(text) {
                return Err(());
            }
            let key = if t.is(body, "EMAILID") {
                SaveKey::EmailId(text.to_string())
            } else {
                SaveKey::ThreadId(text.to_string())
            };
            found.push((t.start, arg.end, key));
            k += 2;
            continue;
        }
        if t.is(body, "SAVEDATESUPPORTED") {
            found.push((t.start, t.end, SaveKey::Supported));
            k += 1;
            continue;
        }
        if t.kind == Kind::Group {
            let inner = tokens(body, t.start + 1, t.end - 1, depth + 1).ok_or(())?;
            find_keys(body, &inner, depth + 1, found)?;
        }
        k += 1 + key_args(body, &t, toks.get(k + 1));
    }
    Ok(())
}

fn search(body: &[u8], tag: Tag<'static>, verb: &Tok, args: &[Tok]) -> Option<MsgExt> {
    let mut skip = 0;
    if verb.is(body, "SORT") {
        // Sort criteria and charset come first.
        skip = 2;
    } else {
        if args.first().is_some_and(|t| t.is(body, "RETURN")) {
            skip += 2;
        }
        if args.get(skip).is_some_and(|t| t.is(body, "CHARSET")) {
            skip += 2;
        }
    }
    let criteria = args.get(skip..)?;
    let mut found = Vec::new();
    find_keys(body, criteria, 0, &mut found).ok()?;
    if found.is_empty() {
        return None;
    }
    found.sort_by_key(|(s, _, _)| *s);
    let mut pieces = Vec::new();
    let mut at = 0;
    for (s, e, key) in found {
        pieces.push(Piece::Raw(body[at..s].to_vec()));
        pieces.push(Piece::Key(key));
        at = e;
    }
    let mut tail = body[at..].to_vec();
    tail.extend_from_slice(b"\r\n");
    pieces.push(Piece::Raw(tail));
    Some(MsgExt::Search { tag, pieces })
}

/// The command text of `pieces` with each key written as `replace` says.
pub fn assemble(pieces: &[Piece], mut replace: impl FnMut(&SaveKey) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Raw(r) => out.extend_from_slice(r),
            Piece::Key(k) => out.extend(replace(k)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_parts(cmd: &Command<'static>) -> (String, usize, usize, bool) {
        let CommandBody::Append {
            mailbox,
            flags,
            date,
            message,
        } = &cmd.body
        else {
            panic!("not an APPEND: {cmd:?}")
        };
        let len = match message {
            imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => {
                l.as_ref().len()
            }
            imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => {
                l.data.len()
            }
        };
        (
            super::super::mailbox_name(mailbox),
            flags.len(),
            len,
            date.is_some(),
        )
    }

    #[test]
    fn multiappend_splits_into_single_appends() {
        let cmd = b"a1 APPEND Drafts (\\Seen) \"01-Feb-2024 10:00:00 +0000\" {5}\r\nhello {3+}\r\nabc (\\Flagged $x) ~{2}\r\nxy\r\n";
        let Some(MsgExt::MultiAppend { tag, messages }) = preparse(cmd) else {
            panic!("not parsed")
        };
        assert_eq!(tag.as_ref(), "a1");
        let parts: Vec<_> = messages.iter().map(append_parts).collect();
        assert_eq!(
            parts,
            vec![
                ("Drafts".into(), 1, 5, true),
                ("Drafts".into(), 0, 3, false),
                ("Drafts".into(), 2, 2, false)
            ]
        );
        // A literal may hold what looks like syntax.
        let tricky = b"a2 APPEND \"My Box\" {7}\r\n) {1}\r\n {1}\r\nz\r\n";
        let Some(MsgExt::MultiAppend { messages, .. }) = preparse(tricky) else {
            panic!("not parsed")
        };
        assert_eq!(messages.len(), 2);
        assert_eq!(append_parts(&messages[0]).0, "My Box");
    }

    #[test]
    fn multiappend_refuses_bad_forms_and_too_many() {
        // One message: the codec's to parse (and refuse).
        assert!(preparse(b"a APPEND INBOX {1}\r\nx\r\n").is_none());
        // A message without a literal, a date after the literal, a short literal.
        assert!(preparse(b"a APPEND INBOX {1}\r\nx (\\Seen)\r\n").is_none());
        assert!(preparse(b"a APPEND INBOX {1}\r\nx \"date\"\r\n").is_none());
        assert!(preparse(b"a APPEND INBOX {1}\r\nx {5}\r\nab\r\n").is_none());
        assert!(preparse(b"a APPEND INBOX {1}\r\nx {1}\r\ny extra\r\n").is_none());
        // A bad flag inside one message makes the codec refuse it.
        assert!(preparse(b"a APPEND INBOX {1}\r\nx (\\Seen\") {1}\r\ny\r\n").is_none());
        let mut many = b"a APPEND INBOX".to_vec();
        for _ in 0..=MAX_MULTIAPPEND_MESSAGES {
            many.extend_from_slice(b" {1}\r\nx");
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            preparse(&many),
            Some(MsgExt::TooManyMessages { .. })
        ));
    }

    #[test]
    fn replace_and_uid_replace() {
        let Some(MsgExt::Replace {
            uid,
            number,
            append,
            ..
        }) = preparse(b"r1 REPLACE 4 Drafts (\\Seen \\Draft) {3}\r\nabc\r\n")
        else {
            panic!("not parsed")
        };
        assert!(!uid);
        assert_eq!(number.get(), 4);
        assert_eq!(append_parts(&append), ("Drafts".into(), 2, 3, false));
        let Some(MsgExt::Replace { uid, number, .. }) =
            preparse(b"r2 uid replace 1000 INBOX {1+}\r\nx\r\n")
        else {
            panic!("not parsed")
        };
        assert!(uid);
        assert_eq!(number.get(), 1000);
        for bad in [
            &b"r REPLACE 0 INBOX {1}\r\nx\r\n"[..],
            b"r REPLACE 01 INBOX {1}\r\nx\r\n",
            b"r REPLACE 1:3 INBOX {1}\r\nx\r\n",
            b"r REPLACE * INBOX {1}\r\nx\r\n",
            b"r REPLACE 1 INBOX\r\n",
            b"r REPLACE 1 INBOX {1}\r\nx {1}\r\ny\r\n",
            b"r REPLACE 99999999999 INBOX {1}\r\nx\r\n",
        ] {
            assert!(preparse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn utf8_append_data() {
        // APPEND: the UTF8 data item becomes its literal8; the command is marked.
        let Some(MsgExt::Utf8 { tag, inner }) =
            preparse("u1 APPEND INBOX (\\Seen) UTF8 (~{5}\r\nhé!!)\r\n".as_bytes())
        else {
            panic!("not parsed")
        };
        assert_eq!(tag.as_ref(), "u1");
        let MsgExt::Append { cmd } = *inner else {
            panic!("not an APPEND")
        };
        assert_eq!(append_parts(&cmd), ("INBOX".into(), 1, 5, false));
        // A mailbox named UTF8 is a mailbox, not a data item.
        let Some(MsgExt::Utf8 { inner, .. }) =
            preparse(b"u2 APPEND UTF8 \"01-Feb-2024 10:00:00 +0000\" UTF8 (~{2+}\r\nxy)\r\n")
        else {
            panic!("not parsed")
        };
        let MsgExt::Append { cmd } = *inner else {
            panic!("not an APPEND")
        };
        assert_eq!(append_parts(&cmd), ("UTF8".into(), 0, 2, true));
        assert!(preparse(b"u3 APPEND UTF8 {2}\r\nxy\r\n").is_none());
        // MULTIAPPEND with one UTF8 message among plain ones.
        let Some(MsgExt::Utf8 { inner, .. }) =
            preparse(b"u4 APPEND Drafts {1}\r\na UTF8 (~{2}\r\nbc) (\\Seen) {1}\r\nd\r\n")
        else {
            panic!("not parsed")
        };
        let MsgExt::MultiAppend { messages, .. } = *inner else {
            panic!("not a MULTIAPPEND")
        };
        let lens: Vec<usize> = messages.iter().map(|m| append_parts(m).2).collect();
        assert_eq!(lens, vec![1, 2, 1]);
        // REPLACE and UID REPLACE.
        let Some(MsgExt::Utf8 { inner, .. }) =
            preparse(b"u5 UID REPLACE 7 INBOX UTF8 (~{3}\r\nabc)\r\n")
        else {
            panic!("not parsed")
        };
        let MsgExt::Replace {
            uid,
            number,
            append,
            ..
        } = *inner
        else {
            panic!("not a REPLACE")
        };
        assert!(uid && number.get() == 7);
        assert_eq!(append_parts(&append), ("INBOX".into(), 0, 3, false));
        // RFC 6855 §4: UTF8 wraps exactly one literal8.
        for bad in [
            &b"b APPEND INBOX UTF8 ({2}\r\nxy)\r\n"[..],
            b"b APPEND INBOX UTF8 ~{2}\r\nxy\r\n",
            b"b APPEND INBOX UTF8 (~{1}\r\nx ~{1}\r\ny)\r\n",
            b"b APPEND INBOX UTF8 ()\r\n",
            b"b APPEND INBOX UTF8\r\n",
            b"b APPEND INBOX UTF8 (\\Seen) {1}\r\nx\r\n",
        ] {
            assert!(preparse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        // Other commands are not looked at.
        assert!(preparse(b"s SEARCH UTF8 (~{1}\r\nx)\r\n").is_none());
    }

    #[test]
    fn unauthenticate() {
        assert!(matches!(
            preparse(b"u1 UNAUTHENTICATE\r\n"),
            Some(MsgExt::Unauthenticate { tag }) if tag.as_ref() == "u1"
        ));
        assert!(preparse(b"u1 UNAUTHENTICATE now\r\n").is_none());
        assert!(preparse(b"u1 UID UNAUTHENTICATE\r\n").is_none());
        assert!(preparse(b"u+1 UNAUTHENTICATE\r\n").is_none());
    }

    #[test]
    fn object_id_items_and_keys() {
        let Some(MsgExt::Fetch { extra, cmd }) =
            preparse(b"f1 UID FETCH 1:* (EMAILID FLAGS THREADID)\r\n")
        else {
            panic!("not parsed")
        };
        assert!(extra.emailid && extra.threadid && !extra.savedate && !extra.drop_uid);
        assert!(matches!(cmd.body, CommandBody::Fetch { uid: true, .. }));
        let Some(MsgExt::Fetch { extra, .. }) = preparse(b"f2 FETCH 1 EMAILID\r\n") else {
            panic!("not parsed")
        };
        assert!(extra.emailid && extra.drop_uid);
        let Some(MsgExt::Search { pieces, .. }) =
            preparse(b"s1 UID SEARCH OR EMAILID E12 (THREADID T_3-x) SUBJECT EMAILID\r\n")
        else {
            panic!("not parsed")
        };
        assert_eq!(
            keys(&pieces),
            vec![
                SaveKey::EmailId("E12".into()),
                SaveKey::ThreadId("T_3-x".into())
            ]
        );
        let text = assemble(&pieces, |_| b"ALL".to_vec());
        assert_eq!(text, b"s1 UID SEARCH OR ALL (ALL) SUBJECT EMAILID\r\n");
        // Not an objectid: quoted, bad characters, missing.
        assert!(preparse(b"s2 SEARCH EMAILID \"E1\"\r\n").is_none());
        assert!(preparse(b"s3 SEARCH THREADID T!1\r\n").is_none());
        assert!(preparse(b"s4 SEARCH THREADID\r\n").is_none());
        let Some(MsgExt::Status { cmd }) = preparse(b"t1 STATUS INBOX (MESSAGES MAILBOXID)\r\n")
        else {
            panic!("not parsed")
        };
        let CommandBody::Status { item_names, .. } = cmd.body else {
            panic!()
        };
        assert_eq!(item_names.len(), 1);
        let Some(MsgExt::Status { cmd }) = preparse(b"t2 STATUS \"a b\" (MAILBOXID)\r\n") else {
            panic!("not parsed")
        };
        assert!(
            matches!(cmd.body, CommandBody::Status { ref item_names, .. } if item_names.is_empty())
        );
        assert!(preparse(b"t3 STATUS INBOX (MESSAGES)\r\n").is_none());
        assert!(preparse(b"t4 STATUS INBOX (MAILBOXID NOPE)\r\n").is_none());
    }

    #[test]
    fn fetch_items_are_cut_out() {
        let Some(MsgExt::Fetch { cmd, extra }) = preparse(
            b"f1 FETCH 1:* (FLAGS SAVEDATE BODY.PEEK[HEADER.FIELDS (A B)] PREVIEW (LAZY))\r\n",
        ) else {
            panic!("not parsed")
        };
        assert_eq!(
            extra,
            FetchExtra {
                savedate: true,
                preview: Some(true),
                drop_uid: false,
                ..Default::default()
            }
        );
        let CommandBody::Fetch {
            macro_or_item_names,
            uid,
            ..
        } = cmd.body
        else {
            panic!()
        };
        assert!(!uid);
        let imap_codec::imap_types::fetch::MacroOrMessageDataItemNames::MessageDataItemNames(v) =
            macro_or_item_names
        else {
            panic!()
        };
        assert_eq!(v.len(), 2);
        let Some(MsgExt::Fetch { extra, cmd }) = preparse(b"f2 FETCH 2 PREVIEW\r\n") else {
            panic!()
        };
        assert_eq!(extra.preview, Some(false));
        assert!(extra.drop_uid && !extra.savedate);
        assert!(matches!(cmd.body, CommandBody::Fetch { .. }));
        let Some(MsgExt::Fetch { extra, .. }) =
            preparse(b"f3 UID FETCH 1:* (SAVEDATE) (CHANGEDSINCE 5)\r\n")
        else {
            panic!()
        };
        assert!(extra.savedate && !extra.drop_uid);
        let Some(MsgExt::Fetch { extra, .. }) =
            preparse(b"f4 FETCH 1 (PREVIEW (LAZY) PREVIEW)\r\n")
        else {
            panic!()
        };
        assert_eq!(extra.preview, Some(false));
        assert!(preparse(b"f FETCH 1 (PREVIEW (FUZZY))\r\n").is_none());
        assert!(preparse(b"f FETCH 1 (PREVIEW ())\r\n").is_none());
        assert!(preparse(b"f FETCH 1 (FLAGS)\r\n").is_none());
        assert!(preparse(b"f FETCH 1 (SAVEDATE BOGUS)\r\n").is_none());
    }

    fn keys(pieces: &[Piece]) -> Vec<SaveKey> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Key(k) => Some(k.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn search_keys_are_found_with_their_dates() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).expect("date");
        let Some(MsgExt::Search { pieces, .. }) = preparse(
            b"s1 UID SEARCH RETURN (COUNT) CHARSET UTF-8 OR SAVEDON 1-Feb-2024 (NOT SAVEDBEFORE \"15-Mar-2023\") SUBJECT SAVEDSINCE SAVEDATESUPPORTED\r\n",
        ) else {
            panic!("not parsed")
        };
        assert_eq!(
            keys(&pieces),
            vec![
                SaveKey::On(d(2024, 2, 1)),
                SaveKey::Before(d(2023, 3, 15)),
                SaveKey::Supported
            ]
        );
        let text = assemble(&pieces, |k| match k {
            SaveKey::Supported => b"ALL".to_vec(),
            _ => b"(UID 1)".to_vec(),
        });
        assert_eq!(
            String::from_utf8(text).expect("utf8"),
            "s1 UID SEARCH RETURN (COUNT) CHARSET UTF-8 OR (UID 1) (NOT (UID 1)) SUBJECT SAVEDSINCE ALL\r\n"
        );
        let Some(MsgExt::Search { pieces, .. }) =
            preparse(b"s2 SORT (DATE) UTF-8 SAVEDSINCE 01-Jan-2020\r\n")
        else {
            panic!()
        };
        assert_eq!(keys(&pieces), vec![SaveKey::Since(d(2020, 1, 1))]);
        assert!(preparse(b"s SEARCH SAVEDON 31-Feb-2024\r\n").is_none());
        assert!(preparse(b"s SEARCH SAVEDON\r\n").is_none());
        assert!(preparse(b"s SEARCH SUBJECT \"SAVEDON\"\r\n").is_none());
        assert!(preparse(b"s SEARCH HEADER SAVEDON SAVEDON\r\n").is_none());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!(
            "s SEARCH {}SAVEDATESUPPORTED{}\r\n",
            "(".repeat(MAX_DEPTH + 5),
            ")".repeat(MAX_DEPTH + 5)
        );
        assert!(preparse(deep.as_bytes()).is_none());
        let ok = format!(
            "s SEARCH {}SAVEDATESUPPORTED{}\r\n",
            "(".repeat(10),
            ")".repeat(10)
        );
        assert!(preparse(ok.as_bytes()).is_some());
    }
}
