//! The text a search key looks at, and the full-text index entries of a message.
//!
//! IMAP SEARCH keys on headers and bodies (RFC 9051 §6.4.4) are case-insensitive substring
//! matches. Each key looks at a few texts of a message ([`field_texts`]): the key matches
//! when its folded string ([`fold`]) is a substring of one of them, folded. The same
//! function feeds the scan (the IMAP server parsing a message to evaluate a key) and the
//! index ([`index_pieces`], computed once at delivery or APPEND): both see exactly the same
//! texts, so an index lookup answers exactly what the scan would.
//!
//! What is searched (and so indexed):
//! - SUBJECT: the decoded Subject.
//! - FROM/TO/CC/BCC: each address's display name, its `local@domain`, its `Name
//!   <local@domain>` form, and the decoded header without its RFC 5322 comments.
//! - BODY: the message's text bodies (mail-parser's text body parts; HTML parts turned to
//!   text; raw HTML when a message has only HTML bodies that it cannot turn into text), then
//!   each attached message/rfc822: its header as written and its body, recursively.
//! - Attachments (BODY and TEXT look at them too, as Dovecot's fts plugins do): the text
//!   of each attachment that is not a body part, [`crate::extract`] says how: `text/*`
//!   parts (HTML turned to text), PDFs, OOXML and ODF documents, in the message and in the
//!   messages it carries. Within the limits of docs/limits.md (size, text kept, steps).
//! - TEXT: BODY's texts or the top-level header block as written.
//! - HEADER name: the decoded values of that field.
//!
//! Not searched, and not indexed: images, archives, other binary attachments, and the
//! attachments over the extraction limits.
//!
//! Extracting an attachment's text costs CPU (a PDF, an office document): it happens in
//! [`index_pieces`], which callers run off async workers, and in the IMAP scan, which
//! asks for [`attachment_texts`] on a blocking thread only when a BODY or TEXT key is not
//! answered by the index and [`may_have_attachment_text`] says there is something to read.

use crate::extract;
use mail_parser::{Message, MessageParser, PartType};

/// Case folding for search: both the searched text and the key's string are folded with
/// it, so "ß" or "İ" fold the same way on both sides (Unicode lowercase mapping).
pub fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// A search key's view of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchField<'a> {
    Subject,
    From,
    To,
    Cc,
    Bcc,
    /// The body text (BODY, and TEXT's body half).
    Body,
    /// The text extracted from attachments (BODY and TEXT look at it too), one text per
    /// attachment.
    Attachments,
    /// The top-level header block as written (TEXT's header half).
    Header,
    /// One header field by name (HEADER), compared ASCII case-insensitively.
    Field(&'a str),
}

impl SearchField<'_> {
    /// The index's name for the field: `subject`, `from`, ..., `body`, `header`, and
    /// `h:<lowercase field name>`.
    pub fn index_name(&self) -> String {
        match self {
            SearchField::Subject => "subject".into(),
            SearchField::From => "from".into(),
            SearchField::To => "to".into(),
            SearchField::Cc => "cc".into(),
            SearchField::Bcc => "bcc".into(),
            SearchField::Body => "body".into(),
            SearchField::Attachments => "attachment".into(),
            SearchField::Header => "header".into(),
            SearchField::Field(name) => format!("h:{}", name.to_ascii_lowercase()),
        }
    }
}

/// The texts `field` looks at in a message (not folded). A key matches when its folded
/// string is a substring of one of them, folded; a HEADER key with an empty string
/// matches when the list is not empty (the field is present). For
/// [`SearchField::Attachments`] this extracts the attachments' text (CPU work: see the
/// module documentation).
pub fn field_texts(parsed: &Message<'_>, raw: &[u8], field: SearchField<'_>) -> Vec<String> {
    match field {
        SearchField::Subject => vec![parsed.subject().unwrap_or_default().to_string()],
        SearchField::From => address_texts(parsed, "From", parsed.from()),
        SearchField::To => address_texts(parsed, "To", parsed.to()),
        SearchField::Cc => address_texts(parsed, "Cc", parsed.cc()),
        SearchField::Bcc => address_texts(parsed, "Bcc", parsed.bcc()),
        SearchField::Body => vec![body_text(parsed)],
        SearchField::Attachments => attachment_texts(parsed).texts,
        SearchField::Header => {
            vec![String::from_utf8_lossy(&raw[..find_header_end(raw)]).into_owned()]
        }
        SearchField::Field(name) => {
            if parsed
                .headers_raw()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                vec![header_text(parsed, name)]
            } else {
                Vec::new()
            }
        }
    }
}

/// Whether the folded `needle` is a substring of one of `texts` (folded).
pub fn texts_match(texts: &[String], needle: &str) -> bool {
    texts.iter().any(|t| fold(t).contains(needle))
}

/// The texts of an address header for FROM/TO/CC/BCC: a substring (case-insensitive,
/// RFC 2047 decoded) of any address's display name, of its `local@domain`, of the
/// `Name <local@domain>` form, or of the decoded header text as written without its
/// comments: the keys are defined on the envelope's address fields (RFC 9051 §6.4.4),
/// which carry no comments, so `Bcc: Hidden: (nobody) ;` does not match `nobody`.
fn address_texts(
    parsed: &Message<'_>,
    header: &str,
    a: Option<&mail_parser::Address<'_>>,
) -> Vec<String> {
    let mut out = Vec::new();
    // An entry without an address is no envelope address: the parser makes one of a
    // comment standing alone, as in the empty group `Hidden: (nobody) ;`.
    for x in a.into_iter().flat_map(|a| a.iter()) {
        let Some(addr) = x.address().filter(|a| !a.is_empty()) else {
            continue;
        };
        let name = x.name().unwrap_or_default();
        out.push(name.to_string());
        out.push(addr.to_string());
        out.push(format!("{name} <{addr}>"));
    }
    out.push(without_comments(&header_text(parsed, header)));
    out
}

/// `text` without its RFC 5322 comments (`(...)`, nested, with `\` quoting), leaving
/// quoted strings, where a parenthesis is just a character, alone.
pub fn without_comments(text: &str) -> String {
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

/// The decoded values of every `name` field, one per line.
pub fn header_text(parsed: &Message<'_>, name: &str) -> String {
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
pub fn body_text(parsed: &Message<'_>) -> String {
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

/// The attachments' texts of a message, and whether they are all there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachmentTexts {
    /// One text per attachment that gave one, in MIME order, nested messages' in place.
    pub texts: Vec<String>,
    /// False when the wall-clock budget stopped an extraction ([`extract::Extracted`]):
    /// the index then marks the message incomplete.
    pub complete: bool,
}

/// The attachments of `parsed` that [`attachment_texts`] reads, in order, with the
/// messages carried (to depth [`MAX_ATTACHED_DEPTH`]): every attachment that is no body
/// part and no message/rfc822, up to [`extract::MAX_EXTRACTED_ATTACHMENTS`].
fn extractable_parts<'a>(
    parsed: &'a Message<'a>,
    out: &mut Vec<&'a mail_parser::MessagePart<'a>>,
    depth: usize,
) {
    for id in &parsed.attachments {
        if out.len() >= extract::MAX_EXTRACTED_ATTACHMENTS {
            return;
        }
        if parsed.text_body.contains(id) || parsed.html_body.contains(id) {
            continue;
        }
        let Some(part) = parsed.parts.get(*id as usize) else {
            continue;
        };
        match &part.body {
            PartType::Message(inner) => {
                if depth < MAX_ATTACHED_DEPTH {
                    extractable_parts(inner, out, depth + 1);
                }
            }
            PartType::Text(_) | PartType::Html(_) => out.push(part),
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                if b.len() <= extract::MAX_EXTRACT_INPUT && extract::sniff(b).is_some() {
                    out.push(part);
                }
            }
            PartType::Multipart(_) => {}
        }
    }
}

/// Whether `parsed` has an attachment [`attachment_texts`] would read (cheap: looks at
/// the parts' types and first bytes only).
pub fn may_have_attachment_text(parsed: &Message<'_>) -> bool {
    let mut parts = Vec::new();
    extractable_parts(parsed, &mut parts, 0);
    !parts.is_empty()
}

/// The text of each attachment of `parsed` (see [`extractable_parts`]), within one
/// message's [`extract::Budget`]. CPU work for PDFs and office documents: call it off
/// async workers.
pub fn attachment_texts(parsed: &Message<'_>) -> AttachmentTexts {
    let mut parts = Vec::new();
    extractable_parts(parsed, &mut parts, 0);
    let mut out = AttachmentTexts {
        texts: Vec::new(),
        complete: true,
    };
    if parts.is_empty() {
        return out;
    }
    let mut budget = extract::Budget::for_message();
    for part in parts {
        let text = match &part.body {
            PartType::Text(t) => extract::text_part(t, false),
            PartType::Html(t) => extract::text_part(t, true),
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                let e = extract::binary_text(b, &mut budget);
                out.complete &= e.complete;
                e.text
            }
            _ => String::new(),
        };
        if !text.trim().is_empty() {
            out.texts.push(text);
        }
    }
    out
}

/// The length of the header block of `raw`, its blank line included (all of `raw` when
/// there is no blank line).
pub fn find_header_end(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(raw.len())
}

/// Folded text indexed per message, at most: 1 MiB. A message whose texts are longer is
/// indexed up to the limit and marked incomplete ([`IndexPieces::complete`] false), so a
/// search always checks it by parsing it.
pub const MAX_INDEXED_TEXT: usize = 1024 * 1024;

/// Header fields indexed per message for HEADER keys. A message with more distinct fields
/// is marked incomplete (searched by parsing for every key).
pub const MAX_INDEXED_FIELDS: usize = 200;

/// A message's full-text index entries: `(field index name, folded text)` pairs, one per
/// text of [`field_texts`] (empty texts left out, since no indexed search string is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexPieces {
    pub pieces: Vec<(String, String)>,
    /// False when something was left out (a limit was reached): the index can then only
    /// say that the message *might* match.
    pub complete: bool,
}

/// The index entries of a raw message, from the same texts [`field_texts`] gives the scan.
/// Short fields come first, then the body, and the attachments last, so a message over
/// [`MAX_INDEXED_TEXT`] keeps its headers and body indexed. CPU work proportional to the message: call it off async workers.
pub fn index_pieces(raw: &[u8]) -> IndexPieces {
    let mut out = IndexPieces {
        pieces: Vec::new(),
        complete: true,
    };
    // A message the parser refuses has no text for any key (the scan finds nothing).
    let Some(parsed) = MessageParser::default().parse(raw) else {
        return out;
    };
    let mut fields: Vec<SearchField<'_>> = vec![
        SearchField::Subject,
        SearchField::From,
        SearchField::To,
        SearchField::Cc,
        SearchField::Bcc,
    ];
    let mut names: Vec<String> = Vec::new();
    for (n, _) in parsed.headers_raw() {
        let lower = n.to_ascii_lowercase();
        if !names.contains(&lower) {
            names.push(lower);
        }
    }
    if names.len() > MAX_INDEXED_FIELDS {
        out.complete = false;
        names.truncate(MAX_INDEXED_FIELDS);
    }
    fields.extend(names.iter().map(|n| SearchField::Field(n.as_str())));
    fields.push(SearchField::Header);
    fields.push(SearchField::Body);
    fields.push(SearchField::Attachments);
    let mut total = 0usize;
    for field in fields {
        let name = field.index_name();
        let texts = if field == SearchField::Attachments {
            let a = attachment_texts(&parsed);
            out.complete &= a.complete;
            a.texts
        } else {
            field_texts(&parsed, raw, field)
        };
        for text in texts {
            let folded = fold(&text);
            if folded.is_empty() {
                continue;
            }
            if total + folded.len() > MAX_INDEXED_TEXT {
                out.complete = false;
                continue;
            }
            total += folded.len();
            if !out.pieces.iter().any(|(f, t)| *f == name && *t == folded) {
                out.pieces.push((name.clone(), folded));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: \"Ann Example\" <ann@example.test>\r\n\
To: Bob <bob@example.test>, carol@example.test\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from ANN\r\n\
X-Tag: one\r\nX-Tag: Two\r\n\r\nHello WORLD\r\n";

    fn texts(field: SearchField<'_>) -> Vec<String> {
        let p = MessageParser::default().parse(MSG).unwrap();
        field_texts(&p, MSG, field)
    }

    #[test]
    fn keys_see_decoded_texts() {
        assert!(!texts_match(&texts(SearchField::Subject), &fold("GRÜSSEN")));
        assert!(texts_match(&texts(SearchField::Subject), "grüße from"));
        assert!(texts_match(&texts(SearchField::From), "ann example <ann@"));
        assert!(texts_match(&texts(SearchField::To), "carol@"));
        assert!(texts_match(&texts(SearchField::Body), "hello world"));
        assert!(texts_match(&texts(SearchField::Header), "x-tag: one"));
        assert_eq!(
            texts(SearchField::Field("x-TAG")),
            vec!["one\nTwo".to_string()]
        );
        assert!(texts(SearchField::Field("X-Missing")).is_empty());
    }

    #[test]
    fn index_pieces_are_the_folded_texts() {
        let ix = index_pieces(MSG);
        assert!(ix.complete);
        let get = |f: &str| -> Vec<&str> {
            ix.pieces
                .iter()
                .filter(|(n, _)| n == f)
                .map(|(_, t)| t.as_str())
                .collect()
        };
        assert_eq!(get("subject"), vec!["grüße from ann"]);
        assert_eq!(get("h:x-tag"), vec!["one\ntwo"]);
        assert!(get("body")[0].contains("hello world"));
        assert!(get("from").contains(&"ann@example.test"));
    }

    #[test]
    fn oversized_messages_are_marked_incomplete() {
        let mut big = b"Subject: big\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_INDEXED_TEXT + 10));
        let ix = index_pieces(&big);
        assert!(!ix.complete);
        assert!(ix.pieces.iter().any(|(f, t)| f == "subject" && t == "big"));
        let total: usize = ix.pieces.iter().map(|p| p.1.len()).sum();
        assert!(total <= MAX_INDEXED_TEXT);
    }

    #[test]
    fn comments_are_left_out() {
        assert_eq!(without_comments("a (b (c)) \"(q)\" d"), "a  \"(q)\" d");
    }
}
