//! Header fields decoded to text, for SEARCH, SORT, THREAD and JMAP.
//!
//! ENVELOPE must stay raw, but searching and sorting work on what a person reads: RFC 2047
//! encoded words decoded, charsets converted to UTF-8, dates as instants. mail-parser does the
//! decoding (it knows the charsets); the values come from the same header occurrences the
//! envelope uses, so SORT and FETCH ENVELOPE never disagree about which Subject or From counts.

use mail_parser::parsers::MessageStream;
use mail_parser::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::envelope::Envelope;
use crate::octets::Octets;

/// Decoded header fields of the top-level message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Decoded {
    /// The Subject, RFC 2047-decoded to UTF-8 (SEARCH SUBJECT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The base subject of RFC 5256 section 2.1 (SORT SUBJECT, THREAD=REFERENCES): reply and
    /// forward markers and blobs removed, whitespace collapsed, case kept (SORT compares it
    /// with the i;ascii-casemap collation). Empty when there is no subject.
    pub base_subject: String,
    /// First mailbox of From (SORT FROM, SORT DISPLAY).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<DecodedAddress>,
    /// First mailbox of To (SORT TO).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<DecodedAddress>,
    /// First mailbox of Cc (SORT CC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cc: Option<DecodedAddress>,
    /// The Date header as Unix seconds (SORT DATE, SEARCH SENTON...); None when absent or
    /// unparseable, in which case SORT falls back to the internal date (RFC 5256).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<i64>,
}

/// A mailbox with its display name decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodedAddress {
    /// Display name, RFC 2047-decoded; None when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Local part; None when the header had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    /// Domain; None when the header had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Decoded {
    pub(crate) fn from_envelope(env: &Envelope) -> Self {
        let subject = env.subject.as_ref().map(|s| decode_text(s.as_bytes()));
        let base_subject = subject.as_deref().map(base_subject).unwrap_or_default();
        Decoded {
            subject,
            base_subject,
            from: first_mailbox(&env.from),
            to: first_mailbox(&env.to),
            cc: first_mailbox(&env.cc),
            date: env.date.as_ref().and_then(|d| parse_date(d.as_bytes())),
        }
    }
}

/// Decodes an unstructured value (RFC 2047 words, charsets) to UTF-8.
pub(crate) fn decode_text(raw: &[u8]) -> String {
    // mail-parser reads a header value up to the end of its (unfolded) line.
    let mut line = Vec::with_capacity(raw.len() + 1);
    line.extend(
        raw.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    line.push(b'\n');
    match MessageStream::new(&line).parse_unstructured() {
        HeaderValue::Text(text) => text.into_owned(),
        HeaderValue::TextList(list) => list.join(" "),
        _ => String::new(),
    }
}

fn parse_date(raw: &[u8]) -> Option<i64> {
    let mut line = raw.to_vec();
    line.push(b'\n');
    match MessageStream::new(&line).parse_date() {
        HeaderValue::DateTime(dt) if dt.is_valid() => Some(dt.to_timestamp()),
        _ => None,
    }
}

/// The placeholders ENVELOPE uses for missing pieces are not data.
fn real(value: &Option<Octets>) -> Option<String> {
    let v = value.as_ref()?;
    match v.as_bytes() {
        b"MISSING_MAILBOX" | b"MISSING_DOMAIN" | b"SYNTAX_ERROR" => None,
        bytes => Some(String::from_utf8_lossy(bytes).into_owned()),
    }
}

fn first_mailbox(list: &[Address]) -> Option<DecodedAddress> {
    let addr = list.iter().find(|a| a.is_mailbox())?;
    let name = addr
        .name
        .as_ref()
        .map(|n| decode_text(n.as_bytes()))
        .filter(|n| !n.is_empty());
    Some(DecodedAddress {
        name,
        mailbox: real(&addr.mailbox),
        host: real(&addr.host),
    })
}

/// The base subject of RFC 5256 section 2.1.
pub fn base_subject(subject: &str) -> String {
    // (1) Whitespace runs become one space.
    let mut s = String::with_capacity(subject.len());
    for c in subject.chars() {
        let c = if matches!(c, '\t' | '\r' | '\n') {
            ' '
        } else {
            c
        };
        if c == ' ' && s.ends_with(' ') {
            continue;
        }
        s.push(c);
    }
    let mut s = s.as_str();
    loop {
        // (2) Trailing "(fwd)" and whitespace.
        loop {
            let trimmed = s.trim_end_matches(' ');
            let trimmed = match trimmed.len().checked_sub(5) {
                Some(i)
                    if trimmed.is_char_boundary(i)
                        && trimmed[i..].eq_ignore_ascii_case("(fwd)") =>
                {
                    &trimmed[..i]
                }
                _ => trimmed,
            };
            if trimmed.len() == s.len() {
                break;
            }
            s = trimmed;
        }
        // (3), (4), (5): leaders and leading blobs, until nothing changes.
        loop {
            let before = s.len();
            while let Some(rest) = strip_leader(s) {
                s = rest;
            }
            if let Some(rest) = strip_blob(s) {
                if !rest.is_empty() {
                    s = rest;
                }
            }
            if s.len() == before {
                break;
            }
        }
        // (6) "[fwd: ... ]" wraps a whole subject: unwrap it and start again.
        let b = s.as_bytes();
        if b.len() >= 6 && b[..5].eq_ignore_ascii_case(b"[fwd:") && b[b.len() - 1] == b']' {
            s = &s[5..s.len() - 1];
            continue;
        }
        return s.to_string();
    }
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP`
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let close = rest.find(['[', ']'])?;
    let rest = rest[close..].strip_prefix(']')?;
    Some(rest.trim_start_matches(' '))
}

/// `subj-leader = (*subj-blob subj-refwd) / WSP`, with
/// `subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"`.
fn strip_leader(s: &str) -> Option<&str> {
    if let Some(rest) = s.strip_prefix(' ') {
        return Some(rest);
    }
    let mut rest = s;
    while let Some(r) = strip_blob(rest) {
        rest = r;
    }
    let b = rest.as_bytes();
    let word = if b.len() >= 3 && b[..3].eq_ignore_ascii_case(b"fwd") {
        3
    } else if b.len() >= 2
        && (b[..2].eq_ignore_ascii_case(b"re") || b[..2].eq_ignore_ascii_case(b"fw"))
    {
        2
    } else {
        return None;
    };
    let mut rest = rest[word..].trim_start_matches(' ');
    if let Some(r) = strip_blob(rest) {
        rest = r;
    }
    rest.strip_prefix(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subjects_follow_rfc_5256() {
        assert_eq!(base_subject("Re: hello"), "hello");
        assert_eq!(base_subject("RE: Fwd: re[2]: hello (fwd)  (FWD)"), "hello");
        assert_eq!(base_subject("[list] Re: [other] hello"), "hello");
        assert_eq!(base_subject("[Fwd: Re: hello]"), "hello");
        assert_eq!(base_subject("[only a blob]"), "[only a blob]");
        assert_eq!(base_subject("Re:"), "");
        assert_eq!(base_subject("  spaced \t  out  "), "spaced out");
        assert_eq!(base_subject("Refund: not a reply"), "Refund: not a reply");
        assert_eq!(base_subject("Fwd:Fw:Re :x"), "x");
        assert_eq!(base_subject("Réunion"), "Réunion");
    }

    #[test]
    fn text_is_decoded() {
        assert_eq!(
            decode_text(b"=?ISO-8859-1?Q?Caf=E9?= and =?UTF-8?B?w6k=?="),
            "Café and é"
        );
        assert_eq!(decode_text(b"plain"), "plain");
        assert_eq!(
            parse_date(b"Mon, 1 Jan 2024 10:00:00 +0100"),
            Some(1_704_099_600)
        );
        assert_eq!(parse_date(b"yesterday"), None);
    }
}
