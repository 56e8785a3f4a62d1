//! The message as Sieve sees it: the header fields in order (editable by
//! editheader, so kept as our own list rather than a parser's view), the
//! body bytes, and helpers that decode values (RFC 2047), addresses and
//! MIME parts with `mail-parser`.

use mail_parser::{MessageParser, MimeHeaders};

/// One header field: its name as written and its raw value (after the
/// colon, folding kept, without the final line break).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: String,
    pub raw: String,
}

/// Splits a message into header fields and the body (after the empty line).
pub(crate) fn split(raw: &[u8]) -> (Vec<Field>, &[u8]) {
    split_limited(raw, usize::MAX)
}

/// Like [`split`], but keeps at most `max_fields` fields (the rest of the
/// header is not visible to the script; the body is still found).
pub(crate) fn split_limited(raw: &[u8], max_fields: usize) -> (Vec<Field>, &[u8]) {
    let mut fields: Vec<Field> = Vec::new();
    let mut skipping = false;
    let mut i = 0;
    let mut body_start = raw.len();
    while i < raw.len() {
        let end = raw[i..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(raw.len(), |p| i + p);
        let line = &raw[i..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let next = (end + 1).min(raw.len());
        if line.is_empty() {
            body_start = next;
            break;
        }
        if skipping {
            // Past the field limit: only look for the end of the header.
        } else if line[0] == b' ' || line[0] == b'\t' {
            if let Some(f) = fields.last_mut() {
                f.raw.push_str("\r\n");
                f.raw.push_str(&String::from_utf8_lossy(line));
            }
        } else if let Some(colon) = line.iter().position(|&c| c == b':') {
            let name = String::from_utf8_lossy(&line[..colon])
                .trim_end()
                .to_string();
            let value = String::from_utf8_lossy(&line[colon + 1..]).to_string();
            if fields.len() >= max_fields {
                skipping = true;
            } else {
                fields.push(Field { name, raw: value });
            }
        } else if fields.is_empty() && line.starts_with(b"From ") {
            // mbox separator line: not a header field.
        } else {
            // A line that is neither a field nor a continuation ends the header.
            body_start = i;
            break;
        }
        i = next;
    }
    (fields, &raw[body_start.min(raw.len())..])
}

/// Unfolds, trims and decodes RFC 2047 encoded words.
pub(crate) fn decoded(raw: &str) -> String {
    let unfolded: String = raw.replace("\r\n", "").replace('\n', "");
    let t = unfolded.trim();
    if t.contains("=?") {
        let synthetic = format!("Subject: {t}\r\n\r\n");
        if let Some(m) = MessageParser::default().parse_headers(synthetic.as_bytes()) {
            if let Some(s) = m.subject() {
                return s.to_string();
            }
        }
    }
    t.to_string()
}

/// The addresses (addr-spec) in an address-list header value; groups are
/// flattened. Falls back to the trimmed value when nothing parses, so that
/// `address :all :contains` still sees something.
pub(crate) fn addresses(raw: &str) -> Vec<String> {
    let unfolded: String = raw.replace("\r\n", "").replace('\n', "");
    let synthetic = format!("To: {}\r\n\r\n", unfolded.trim());
    let mut out = Vec::new();
    if let Some(m) = MessageParser::default().parse_headers(synthetic.as_bytes()) {
        if let Some(a) = m.to() {
            for addr in a.iter() {
                if let Some(s) = &addr.address {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

/// `local@domain` split at the last `@`; no `@` means no domain.
pub(crate) fn split_address(a: &str) -> (&str, &str) {
    match a.rfind('@') {
        Some(p) => (&a[..p], &a[p + 1..]),
        None => (a, ""),
    }
}

/// RFC 5322 field-name: printable US-ASCII except ':'.
pub(crate) fn valid_field_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|c| (33..=126).contains(&c) && c != b':')
}

/// A vacation `:from`: one address, bare or `Name <addr>`, on one line.
/// Returns it unfolded as given.
pub(crate) fn vacation_from(v: &str) -> Option<String> {
    if v.contains(['\r', '\n']) {
        return None;
    }
    let a = addresses(v);
    if a.len() == 1 && plausible_address(&a[0]) {
        Some(v.trim().to_string())
    } else {
        None
    }
}

/// A redirect target must at least look like local@domain.
pub(crate) fn plausible_address(a: &str) -> bool {
    let a = a.trim();
    let (l, d) = split_address(a);
    !l.is_empty()
        && !d.is_empty()
        && !a.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',')
}

/// Encodes a header value for addheader: RFC 2047 base64 words when it is
/// not ASCII, so the stored message stays 7-bit clean in its header.
pub(crate) fn encode_value(v: &str) -> String {
    use base64::Engine;
    if v.is_ascii() {
        v.to_string()
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(v)
        )
    }
}

pub(crate) fn serialize(fields: &[Field], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(f.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(f.raw.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Text of the body for the `body` test (RFC 5173): `:raw` is the
/// undecoded body; `:text` the decoded text parts; `:content` the decoded
/// parts whose type matches one of `types` ("" matches every part, "text"
/// every text/* part, "text/plain" exactly).
pub(crate) fn body_texts(raw: &[u8], body: &[u8], transform: &BodyTransform) -> Vec<String> {
    match transform {
        BodyTransform::Raw => vec![String::from_utf8_lossy(body).into_owned()],
        BodyTransform::Text => {
            let Some(m) = MessageParser::default().parse(raw) else {
                return vec![String::from_utf8_lossy(body).into_owned()];
            };
            let mut out = Vec::new();
            for part in m.parts.iter() {
                match &part.body {
                    mail_parser::PartType::Text(t) => out.push(t.to_string()),
                    mail_parser::PartType::Html(h) => out.push(strip_html(h)),
                    _ => {}
                }
            }
            out
        }
        BodyTransform::Content(types) => {
            let Some(m) = MessageParser::default().parse(raw) else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for part in m.parts.iter() {
                let (ty, sub) = match part.content_type() {
                    Some(ct) => (
                        ct.c_type.to_ascii_lowercase(),
                        ct.c_subtype.as_deref().unwrap_or("").to_ascii_lowercase(),
                    ),
                    None => ("text".to_string(), "plain".to_string()),
                };
                let wanted = types.iter().any(|t| {
                    let t = t.to_ascii_lowercase();
                    match t.split_once('/') {
                        None => t.is_empty() || t == ty,
                        Some((a, b)) => a == ty && b == sub,
                    }
                });
                if !wanted {
                    continue;
                }
                match &part.body {
                    mail_parser::PartType::Text(t) | mail_parser::PartType::Html(t) => {
                        out.push(t.to_string())
                    }
                    mail_parser::PartType::Binary(b) | mail_parser::PartType::InlineBinary(b) => {
                        out.push(String::from_utf8_lossy(b).into_owned())
                    }
                    // Multipart and message parts: RFC 5173 §5.2 says their
                    // prologue/epilogue; their children are visited anyway.
                    _ => {}
                }
            }
            out
        }
    }
}

pub(crate) enum BodyTransform {
    Raw,
    Text,
    Content(Vec<String>),
}

fn strip_html(h: &str) -> String {
    let mut out = String::with_capacity(h.len());
    let mut in_tag = false;
    for c in h.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_headers() {
        let (f, b) = split(b"From: a@b\r\nSubject: one\r\n two\r\nX-Y:z\r\n\r\nbody\r\n");
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].name, "Subject");
        assert_eq!(decoded(&f[1].raw), "one two");
        assert_eq!(b, b"body\r\n");
        let (f, b) = split(b"Subject: x\n\nbody");
        assert_eq!(f.len(), 1);
        assert_eq!(b, b"body");
        let (f, b) = split_limited(b"A: 1\r\nB: 2\r\nC: 3\r\n x\r\n\r\nbody", 2);
        assert_eq!(f.len(), 2);
        assert_eq!(b, b"body");
    }

    #[test]
    fn decode_2047() {
        assert_eq!(decoded(" =?UTF-8?Q?caf=C3=A9?= ok"), "café ok");
    }

    #[test]
    fn addrs() {
        assert_eq!(
            addresses(" \"Bob, B\" <bob@example.com>, carol@example.org, team: d@x.y;"),
            vec!["bob@example.com", "carol@example.org", "d@x.y"]
        );
        assert_eq!(split_address("a+b@c"), ("a+b", "c"));
        assert!(plausible_address("a@b.c"));
        assert!(!plausible_address("a b@c"));
        assert!(valid_field_name("X-Spam"));
        assert!(!valid_field_name("X Spam"));
    }
}
