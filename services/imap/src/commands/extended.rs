//! Command forms the IMAP codec (imap-codec 2.0.0-alpha.10) does not parse yet, handled by
//! rewriting them into forms it does parse.
//!
//! - ESEARCH (RFC 4731, part of IMAP4rev2) and the extensions built on it (SEARCHRES,
//!   ESORT, CONTEXT, PARTIAL): see [`super::searchext`].
//! - LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819): selection options before the
//!   reference, several patterns in parentheses, and `RETURN (SUBSCRIBED CHILDREN
//!   SPECIAL-USE STATUS (...))`. Each pattern becomes a plain LIST for the codec.
//!
//! The rewriting only ever removes option clauses and splits pattern lists; every byte that
//! reaches the session has been through the codec. It is only tried after the codec refused
//! the command, so the codec stays the parser of record.

use crate::response::{self, Resp};
use crate::session::{Outcome, Session};
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::flag::FlagNameAttribute;
use imap_codec::imap_types::response::{Data, Response, StatusKind};
use imap_codec::imap_types::status::StatusDataItemName;

/// LIST-EXTENDED options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOpts {
    /// `SUBSCRIBED` selection: only subscribed names.
    pub subscribed: bool,
    /// `SPECIAL-USE` selection: only mailboxes with a special use.
    pub special_use: bool,
    /// `RECURSIVEMATCH`: also parents of matching children (RFC 5258 §3.5); only valid
    /// with another selection option.
    pub recursive: bool,
    /// `STATUS (...)` return option: the item names, as the client wrote them.
    pub status: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Extended {
    /// Plain LIST commands (one per pattern) and the options.
    List { plain: Vec<Vec<u8>>, opts: ListOpts },
}

/// Splits a line into top-level tokens: atoms, quoted strings and parenthesised groups.
pub(crate) fn tokens(line: &str) -> Option<Vec<&str>> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'(' => {
                let mut depth = 0usize;
                let mut quoted = false;
                while i < b.len() {
                    match b[i] {
                        b'\\' if quoted => i += 1,
                        b'"' => quoted = !quoted,
                        b'(' if !quoted => depth += 1,
                        b')' if !quoted => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                if depth != 0 {
                    return None;
                }
            }
            _ => {
                while i < b.len() && b[i] != b' ' {
                    i += 1;
                }
            }
        }
        out.push(line.get(start..i.min(b.len()))?);
    }
    Some(out)
}

pub(crate) fn inner(group: &str) -> Option<&str> {
    group.strip_prefix('(')?.strip_suffix(')')
}

/// Recognises an ESEARCH or LIST-EXTENDED command in `message` (one line, no literals).
pub fn preparse(message: &[u8]) -> Option<Extended> {
    let text = std::str::from_utf8(message).ok()?;
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))?;
    if line.contains('\r') || line.contains('\n') || line.contains('{') {
        return None;
    }
    let toks = tokens(line)?;
    let (tag, rest) = toks.split_first()?;
    let mut i = 0;
    let uid = rest.first().is_some_and(|t| t.eq_ignore_ascii_case("UID"));
    if uid {
        i += 1;
    }
    let verb = rest.get(i)?;
    if uid || !verb.eq_ignore_ascii_case("LIST") {
        return None;
    }
    let mut args = &rest[1..];
    let mut opts = ListOpts::default();
    if let Some(first) = args.first().and_then(|a| inner(a)) {
        for o in first.split_whitespace() {
            match o.to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => opts.subscribed = true,
                "SPECIAL-USE" => opts.special_use = true,
                "RECURSIVEMATCH" => opts.recursive = true,
                "REMOTE" => {}
                _ => return None,
            }
        }
        args = &args[1..];
    }
    let (reference, patterns) = (args.first()?, args.get(1)?);
    if let Some(r) = args.get(2) {
        if !r.eq_ignore_ascii_case("RETURN") || args.len() != 4 {
            return None;
        }
        let ret = inner(args.get(3)?)?;
        let ret_toks = tokens(ret)?;
        let mut k = 0;
        while k < ret_toks.len() {
            match ret_toks[k].to_ascii_uppercase().as_str() {
                "SUBSCRIBED" | "CHILDREN" | "SPECIAL-USE" => {}
                "STATUS" => {
                    opts.status = Some(ret_toks.get(k + 1)?.to_string());
                    k += 1;
                }
                _ => return None,
            }
            k += 1;
        }
    } else if args.len() != 2 {
        return None;
    }
    let pats: Vec<&str> = match inner(patterns) {
        Some(list) => tokens(list)?,
        None => vec![patterns],
    };
    if pats.is_empty() {
        return None;
    }
    let plain = pats
        .iter()
        .map(|p| format!("{tag} LIST {reference} {p}\r\n").into_bytes())
        .collect();
    Some(Extended::List { plain, opts })
}

/// The STATUS items of LIST-STATUS, and whether MAILBOXID (RFC 8474 §4.2, which the codec
/// does not know) is among them.
fn status_names(list: &str) -> Option<(Vec<StatusDataItemName>, bool)> {
    let inner = list.strip_prefix('(')?.strip_suffix(')')?;
    let mailbox_id = inner
        .split_whitespace()
        .any(|n| n.eq_ignore_ascii_case("MAILBOXID"));
    let names: Option<Vec<StatusDataItemName>> = inner
        .split_whitespace()
        .filter(|n| !n.eq_ignore_ascii_case("MAILBOXID"))
        .map(|n| {
            Some(match n.to_ascii_uppercase().as_str() {
                "MESSAGES" => StatusDataItemName::Messages,
                "RECENT" => StatusDataItemName::Recent,
                "UIDNEXT" => StatusDataItemName::UidNext,
                "UIDVALIDITY" => StatusDataItemName::UidValidity,
                "UNSEEN" => StatusDataItemName::Unseen,
                "DELETED" => StatusDataItemName::Deleted,
                "SIZE" => StatusDataItemName::Size,
                "HIGHESTMODSEQ" => StatusDataItemName::HighestModSeq,
                _ => return None,
            })
        })
        .collect();
    Some((names?, mailbox_id))
}

fn has_attr(items: &[FlagNameAttribute<'_>], name: &str) -> bool {
    items
        .iter()
        .any(|a| a.to_string().eq_ignore_ascii_case(name))
}

const SPECIAL: [&str; 5] = ["\\Sent", "\\Drafts", "\\Junk", "\\Trash", "\\Archive"];

impl Session {
    /// LIST-EXTENDED: one plain LIST per pattern, filtered by the selection options, with
    /// STATUS responses after each listed mailbox for LIST-STATUS.
    pub async fn list_extended(&mut self, cmds: Vec<Command<'static>>, opts: ListOpts) -> Outcome {
        let Some(tag) = cmds.first().map(|c| c.tag.clone()) else {
            return Outcome::done(vec![]);
        };
        let status_items = match opts.status.as_deref().map(status_names) {
            Some(None) => return Outcome::done(vec![response::bad(&tag, "Bad STATUS items")]),
            Some(Some(items)) => Some(items),
            None => None,
        };
        if opts.recursive && !opts.subscribed && !opts.special_use {
            // RFC 5258 §3: RECURSIVEMATCH only qualifies another selection option.
            return Outcome::done(vec![response::bad(
                &tag,
                "RECURSIVEMATCH must not be the only selection option",
            )]);
        }
        if opts.subscribed {
            return self
                .list_extended_subscribed(tag, cmds, opts, status_items)
                .await;
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for cmd in cmds {
            if !matches!(cmd.body, CommandBody::List { .. }) {
                return Outcome::done(vec![response::bad(&tag, "Expected LIST")]);
            }
            let outcome = self.handle(cmd).await;
            for r in outcome.responses {
                match r {
                    Resp::Typed(Response::Data(Data::List {
                        items,
                        delimiter,
                        mailbox,
                    })) => {
                        if opts.subscribed && !has_attr(&items, "\\Subscribed") {
                            continue;
                        }
                        if opts.special_use && !SPECIAL.iter().any(|s| has_attr(&items, s)) {
                            continue;
                        }
                        if !seen.insert(mailbox.clone()) {
                            continue;
                        }
                        let selectable = !has_attr(&items, "\\Noselect");
                        out.push(response::data(Data::List {
                            items,
                            delimiter,
                            mailbox: mailbox.clone(),
                        }));
                        if let (Some((names, mailbox_id)), true) = (&status_items, selectable) {
                            let st = self
                                .status_with(tag.clone(), mailbox, names.clone(), *mailbox_id)
                                .await;
                            if let Ok(st) = st {
                                out.extend(
                                    st.responses
                                        .into_iter()
                                        .filter(super::mailboxes::is_status_data),
                                );
                            }
                        }
                    }
                    Resp::Typed(Response::Status(s)) => {
                        // A failed pattern fails the command; successes are merged below.
                        if let imap_codec::imap_types::response::Status::Tagged(t) = &s {
                            if t.body.kind != StatusKind::Ok {
                                return Outcome::done(vec![Resp::Typed(Response::Status(s))]);
                            }
                        } else {
                            out.push(Resp::Typed(Response::Status(s)));
                        }
                    }
                    other => out.push(other),
                }
            }
        }
        out.push(response::ok(&tag, None, "LIST completed"));
        Outcome::done(out)
    }
}

impl Session {
    /// LIST (SUBSCRIBED ...): built from the subscriptions, so names that no longer exist
    /// are listed (`\NonExistent`) and RECURSIVEMATCH can add parents with `CHILDINFO`.
    async fn list_extended_subscribed(
        &mut self,
        tag: imap_codec::imap_types::core::Tag<'static>,
        cmds: Vec<Command<'static>>,
        opts: ListOpts,
        status_items: Option<(Vec<StatusDataItemName>, bool)>,
    ) -> Outcome {
        use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for cmd in cmds {
            let CommandBody::List {
                reference,
                mailbox_wildcard,
            } = cmd.body
            else {
                return Outcome::done(vec![response::bad(&tag, "Expected LIST")]);
            };
            let reference = match &reference {
                Mailbox::Inbox => "INBOX".to_string(),
                Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
            };
            let pattern = match &mailbox_wildcard {
                ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
                ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
            };
            let entries = match self
                .list_subscribed(&reference, &pattern, opts.recursive)
                .await
            {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => return Outcome::done(vec![response::bad(&tag, &e.to_string())]),
                Err(e) => {
                    tracing::warn!(error = %e, "IMAP LIST failed on storage");
                    return Outcome::done(vec![response::no(
                        &tag,
                        response::code("UNAVAILABLE"),
                        "Temporary storage failure, try again",
                    )]);
                }
            };
            for e in entries {
                if opts.special_use && !SPECIAL.iter().any(|s| has_attr(&e.items, s)) {
                    continue;
                }
                if !seen.insert(e.name.clone()) {
                    continue;
                }
                let exists = !has_attr(&e.items, "\\NonExistent");
                let mailbox = super::mailboxes::to_mailbox(&e.name);
                let line = response::data(Data::List {
                    items: e.items,
                    delimiter: imap_codec::imap_types::core::QuotedChar::try_from(super::DELIMITER)
                        .ok(),
                    mailbox: mailbox.clone(),
                });
                out.push(if e.childinfo {
                    // imap-types has no LIST extended data: the codec's line, with the
                    // CHILDINFO item (RFC 5258 §3.5) added before its CRLF.
                    // Mailbox names are encoded here, as the driver only encodes typed responses.
                    let wire = crate::mutf7::response_out(&line, self.mutf7_names());
                    let mut bytes = response::encode(wire.as_ref().unwrap_or(&line));
                    bytes.truncate(bytes.len().saturating_sub(2));
                    bytes.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
                    Resp::Raw(bytes)
                } else {
                    line
                });
                if let (Some((names, mailbox_id)), true) = (&status_items, exists) {
                    if let Ok(st) = self
                        .status_with(tag.clone(), mailbox, names.clone(), *mailbox_id)
                        .await
                    {
                        out.extend(
                            st.responses
                                .into_iter()
                                .filter(super::mailboxes::is_status_data),
                        );
                    }
                }
            }
        }
        out.push(response::ok(&tag, None, "LIST completed"));
        Outcome::done(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_extended() {
        let e = preparse(b"a LIST (SUBSCRIBED) \"\" (\"INBOX\" \"Sent\") RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n");
        let Some(Extended::List { plain, opts }) = e else {
            panic!("not parsed")
        };
        assert_eq!(plain.len(), 2);
        assert_eq!(plain[1], b"a LIST \"\" \"Sent\"\r\n");
        assert!(opts.subscribed);
        assert_eq!(opts.status.as_deref(), Some("(MESSAGES UNSEEN)"));
        assert_eq!(preparse(b"a LIST \"\" *\r\n").map(|_| ()), Some(()));
        assert_eq!(preparse(b"a LIST (BOGUS) \"\" *\r\n"), None);
        assert_eq!(preparse(b"a LIST \"\" (unterminated\r\n"), None);
    }
}
