//! The preview text of a message (IMAP PREVIEW, RFC 8970; JMAP `Email/preview`): a short
//! plain-text extract of its content, computed once with the summary.
//!
//! The rules (RFC 8970 §3.2, which leaves the algorithm to the server): the first text
//! part that is not an attachment, depth first (text/plain, or text/html with its markup
//! removed), its transfer encoding and charset decoded; whitespace runs (line breaks
//! included) collapsed to one space and trimmed; at most [`PREVIEW_CHARS`] characters
//! (characters, not octets: the RFC's limit). A message without such a part has an empty
//! preview.

use crate::part::{Body, Part};

/// Longest preview, in characters (RFC 8970 §3.2: "MUST NOT exceed 256 characters").
pub const PREVIEW_CHARS: usize = 256;
/// Most octets of a part's body read for the preview: enough for any 256 characters even
/// after HTML markup and encoding, and a bound on the work whatever the message size.
const MAX_SOURCE: usize = 64 * 1024;

/// The first text part that is not an attachment, depth first (message/rfc822 parts are
/// not entered: their text belongs to the attached message).
fn first_text(part: &Part) -> Option<&Part> {
    match &part.body {
        Body::Multipart { parts } => parts.iter().find_map(first_text),
        Body::Text { .. } => {
            let attachment = part
                .disposition
                .as_ref()
                .is_some_and(|d| d.kind.as_bytes().eq_ignore_ascii_case(b"attachment"));
            let subtype = part.media_subtype.as_bytes();
            let usable = part.media_type.as_bytes().eq_ignore_ascii_case(b"text")
                && (subtype.eq_ignore_ascii_case(b"plain")
                    || subtype.eq_ignore_ascii_case(b"html"));
            (usable && !attachment).then_some(part)
        }
        Body::Basic | Body::Message { .. } => None,
    }
}

/// The preview of `raw`, whose part tree is `root`.
pub fn preview(raw: &[u8], root: &Part) -> String {
    let Some(part) = first_text(root) else {
        return String::new();
    };
    let start = (part.body_start as usize).min(raw.len());
    let end = (part.body_end as usize).clamp(start, raw.len());
    // Decoding needs whole base64 quanta and QP lines; a cut at MAX_SOURCE may lose the
    // last few characters of a long body, which the preview cuts anyway.
    let body = &raw[start..end.min(start.saturating_add(MAX_SOURCE))];
    let encoding = part.encoding_or_default();
    let decoded = if encoding.as_bytes().eq_ignore_ascii_case(b"base64") {
        let clean: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let whole = clean.len() / 4 * 4;
        mail_parser::decoders::base64::base64_decode(&clean[..whole]).unwrap_or_default()
    } else if encoding
        .as_bytes()
        .eq_ignore_ascii_case(b"quoted-printable")
    {
        mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
            .unwrap_or_else(|| body.to_vec())
    } else {
        body.to_vec()
    };
    let text = match part
        .param("charset")
        .and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()))
    {
        Some(decode) => decode(&decoded),
        None => String::from_utf8_lossy(&decoded).into_owned(),
    };
    let text = if part.media_subtype.as_bytes().eq_ignore_ascii_case(b"html") {
        mail_parser::decoders::html::html_to_text(&text)
    } else {
        text
    };
    collapse(&text)
}

/// Whitespace runs as one space, control characters dropped, trimmed, cut to
/// [`PREVIEW_CHARS`] characters.
pub fn collapse(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if c.is_control() || c == '\u{feff}' {
            continue;
        }
        let need = if space { 2 } else { 1 };
        if count + need > PREVIEW_CHARS {
            break;
        }
        if space {
            out.push(' ');
            count += 1;
            space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze;

    fn p(raw: &str) -> String {
        let s = analyze(raw.as_bytes());
        preview(raw.as_bytes(), &s.root)
    }

    #[test]
    fn plain_text_is_collapsed_and_trimmed() {
        assert_eq!(
            p("Subject: x\r\n\r\n  Hello\r\n\r\n  world,\tagain \r\n"),
            "Hello world, again"
        );
        assert_eq!(p("Subject: x\r\n\r\n"), "");
    }

    #[test]
    fn at_most_256_characters_not_octets() {
        let body = "é".repeat(300);
        let raw = format!(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
        );
        let out = p(&raw);
        assert_eq!(out.chars().count(), PREVIEW_CHARS);
        assert!(out.chars().all(|c| c == 'é'));
        let words = "word ".repeat(100);
        let out = p(&format!("Subject: x\r\n\r\n{words}"));
        assert!(out.chars().count() <= PREVIEW_CHARS && !out.ends_with(' '));
    }

    #[test]
    fn encodings_and_charsets_are_decoded() {
        let raw = "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nJ=F6rg sagt =\r\nhallo\r\n";
        assert_eq!(p(raw), "Jörg sagt hallo");
        let raw = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8g\r\nd29ybGQ=\r\n";
        assert_eq!(p(raw), "Hello world");
    }

    #[test]
    fn html_is_stripped_and_attachments_skipped() {
        let raw = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nnot this\r\n--b\r\nContent-Type: text/html\r\n\r\n<html><head><style>p {}</style></head><body><p>Hi &amp; <b>bye</b></p></body></html>\r\n--b--\r\n";
        assert_eq!(p(raw), "Hi & bye");
        let raw = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: image/png\r\n\r\nxxxx\r\n--b--\r\n";
        assert_eq!(p(raw), "");
    }
}
