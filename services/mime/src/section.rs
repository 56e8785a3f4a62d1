//! BODY[section] from the raw message and its summary (RFC 9051 section 6.4.5).
//!
//! The part tree already holds every offset, so a section is a slice of the raw message. Only
//! HEADER.FIELDS and HEADER.FIELDS.NOT look inside a header again, and then only at the one
//! header block they select.

use crate::header::fields;
use crate::part::{Body, Part};
use crate::summary::MessageSummary;

/// What to return from the part addressed by the numeric path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectionKind {
    /// `BODY[]` (the whole message) or `BODY[1.2]` (the body of a part).
    Full,
    /// `HEADER`: the header of the message, or of the message inside a message/rfc822 part.
    Header,
    /// `TEXT`: the body of that message.
    Text,
    /// `MIME`: the MIME header of a part (needs a non-empty path).
    Mime,
    /// `HEADER.FIELDS (names)`: only the named fields, in message order, then the blank line
    /// (unless the header had none: a message without body and blank line, RFC 9051).
    HeaderFields(Vec<String>),
    /// `HEADER.FIELDS.NOT (names)`: every field but the named ones, then the blank line (same
    /// exception).
    HeaderFieldsNot(Vec<String>),
}

/// The octets of a section, or None when the section does not exist (no such part, HEADER or
/// TEXT of a part that is not message/rfc822, MIME of the whole message) or when `raw` is not
/// the message the summary describes.
pub fn section(
    raw: &[u8],
    summary: &MessageSummary,
    path: &[u32],
    kind: SectionKind,
) -> Option<Vec<u8>> {
    if u64::try_from(raw.len()).ok()? != summary.size {
        return None;
    }
    let root = &summary.root;
    if path.is_empty() {
        return match kind {
            SectionKind::Full => Some(raw.to_vec()),
            SectionKind::Mime => None,
            other => message_section(raw, root, &other),
        };
    }
    let part = resolve(root, path)?;
    match kind {
        SectionKind::Full => slice(raw, part.body_start, part.body_end).map(<[u8]>::to_vec),
        SectionKind::Mime => slice(raw, part.header_start, part.body_start).map(<[u8]>::to_vec),
        other => match &part.body {
            Body::Message { message, .. } => message_section(raw, message, &other),
            _ => None,
        },
    }
}

/// The part a numeric path names. Part 1 of a message whose body is not multipart is that
/// body itself; the parts of a message/rfc822 part are those of the message inside it.
fn resolve<'a>(root: &'a Part, path: &[u32]) -> Option<&'a Part> {
    // `entity` is the top-level entity of the message the next number indexes into.
    let mut entity = root;
    let mut current: Option<&Part> = None;
    for &n in path {
        let index = usize::try_from(n.checked_sub(1)?).ok()?;
        if let Some(part) = current {
            entity = match &part.body {
                Body::Multipart { .. } => part,
                Body::Message { message, .. } => message,
                Body::Basic | Body::Text { .. } => return None,
            };
        }
        current = Some(match &entity.body {
            Body::Multipart { parts } => parts.get(index)?,
            _ if index == 0 => entity,
            _ => return None,
        });
    }
    current
}

/// HEADER, TEXT and HEADER.FIELDS[.NOT] of the message whose top-level entity is `message`.
fn message_section(raw: &[u8], message: &Part, kind: &SectionKind) -> Option<Vec<u8>> {
    let header = (message.header_start, message.body_start);
    match kind {
        SectionKind::Header => slice(raw, header.0, header.1).map(<[u8]>::to_vec),
        SectionKind::Text => slice(raw, message.body_start, message.body_end).map(<[u8]>::to_vec),
        SectionKind::HeaderFields(names) => Some(filter(raw, header, names, true)),
        SectionKind::HeaderFieldsNot(names) => Some(filter(raw, header, names, false)),
        SectionKind::Full | SectionKind::Mime => None,
    }
}

fn filter(raw: &[u8], (start, end): (u64, u64), names: &[String], keep_named: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut blank_line = false;
    if let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) {
        blank_line = raw.get(start..end).is_some_and(ends_with_blank_line);
        for field in fields(raw, start..end) {
            let named = names
                .iter()
                .any(|n| field.name.eq_ignore_ascii_case(n.as_bytes()));
            if named == keep_named {
                if let Some(bytes) = raw.get(field.span.clone()) {
                    out.extend_from_slice(bytes);
                }
            }
        }
    }
    if blank_line {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// True when a header block is terminated by an empty line (it may be nothing else).
fn ends_with_blank_line(header: &[u8]) -> bool {
    let without_lf = match header.strip_suffix(b"\n") {
        Some(rest) => rest,
        None => return false,
    };
    let line = without_lf.strip_suffix(b"\r").unwrap_or(without_lf);
    line.is_empty() || line.ends_with(b"\n")
}

fn slice(raw: &[u8], start: u64, end: u64) -> Option<&[u8]> {
    raw.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::analyze;

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    fn get(raw: &[u8], path: &[u32], kind: SectionKind) -> Option<String> {
        let summary = analyze(raw);
        section(raw, &summary, path, kind).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn single_part_message() {
        let raw = crlf("Subject: s\nFrom: a@b\n\nbody\n");
        assert_eq!(get(&raw, &[], SectionKind::Full).unwrap().len(), raw.len());
        assert_eq!(
            get(&raw, &[], SectionKind::Header).unwrap(),
            "Subject: s\r\nFrom: a@b\r\n\r\n"
        );
        assert_eq!(get(&raw, &[], SectionKind::Text).unwrap(), "body\r\n");
        assert_eq!(get(&raw, &[1], SectionKind::Full).unwrap(), "body\r\n");
        assert_eq!(get(&raw, &[2], SectionKind::Full), None);
        assert_eq!(get(&raw, &[1, 1], SectionKind::Full), None);
        assert_eq!(get(&raw, &[0], SectionKind::Full), None);
        assert_eq!(get(&raw, &[], SectionKind::Mime), None);
        assert_eq!(
            get(&raw, &[1], SectionKind::Header),
            None,
            "part 1 is not message/rfc822"
        );
    }

    #[test]
    fn header_fields_keep_order_and_end_with_a_blank_line() {
        let raw = crlf("To: x@y\nSubject: a\n b\nFrom: a@b\nsubject: again\n\nbody\n");
        let names = vec!["SUBJECT".to_string(), "from".to_string()];
        assert_eq!(
            get(&raw, &[], SectionKind::HeaderFields(names.clone())).unwrap(),
            "Subject: a\r\n b\r\nFrom: a@b\r\nsubject: again\r\n\r\n"
        );
        assert_eq!(
            get(&raw, &[], SectionKind::HeaderFieldsNot(names)).unwrap(),
            "To: x@y\r\n\r\n"
        );
        assert_eq!(
            get(&raw, &[], SectionKind::HeaderFields(vec!["x".into()])).unwrap(),
            "\r\n"
        );
    }

    #[test]
    fn no_blank_line_is_added_to_a_header_that_had_none() {
        let raw = crlf("Subject: s\nDate: d\n");
        let not_subject = SectionKind::HeaderFieldsNot(vec!["subject".into()]);
        assert_eq!(get(&raw, &[], not_subject).unwrap(), "Date: d\r\n");
        assert_eq!(
            get(&raw, &[], SectionKind::Header).unwrap(),
            "Subject: s\r\nDate: d\r\n"
        );
        assert_eq!(get(&raw, &[], SectionKind::Text).unwrap(), "");
        assert!(ends_with_blank_line(b"\r\n"));
        assert!(ends_with_blank_line(b"A: b\n\n"));
        assert!(!ends_with_blank_line(b"A: b\r\n"));
        assert!(!ends_with_blank_line(b""));
    }

    #[test]
    fn summary_must_match_the_raw_message() {
        let raw = crlf("Subject: s\n\nbody\n");
        let summary = analyze(&raw);
        assert_eq!(section(&raw[1..], &summary, &[], SectionKind::Full), None);
    }
}
