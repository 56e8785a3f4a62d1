//! The one reading of a message's header section that every pipeline stage shares.
//!
//! Why one parser: the submission check (is every `From:` the submitter's?) and the
//! stages that insert fields (`Received:`/`Return-Path:` on top, missing `From:`/`Date:`/
//! `Message-ID:` at the end) must agree on where each field starts and ends. When they read
//! the header differently, a field can be invisible to the check and real to every reader
//! after it: a first line ` From: other@domain` is a continuation of nothing to one parser,
//! and becomes the continuation of the `Received:` field we prepend — or, after a reader
//! unfolds differently, a `From:` of its own. So the header section is split here, once,
//! by RFC 5322 §2.2 rules, and a section that does not split cleanly is refused before any
//! stage acts on it ([`HeaderError`]).
//!
//! What is refused (RFC 5322 §2.2 / §3.6.8; Postfix's cleanup and most MTAs agree):
//! - a header section whose first line starts with SP or HTAB (a continuation with no
//!   field to continue);
//! - a header line that is neither a continuation nor `field-name ":"`, where field-name is
//!   1–[`MAX_NAME`] printable US-ASCII characters other than `:` (so `From :` with a space
//!   before the colon is refused, not guessed at);
//! - NUL anywhere in the header section;
//! - more than [`MAX_FIELDS`] fields (a bound on the work every later stage does).
//!
//! Input is a message whose line ends are already CRLF (cleanup's first step); a message
//! with no blank line is all header.

/// Longest field name accepted. RFC 5322 sets none; 998 is its line limit, and no real
/// field name comes close to 128.
pub const MAX_NAME: usize = 128;

/// Most fields in one header section (Postfix's `header_size_limit` is about size, not
/// count; 10,000 fields is far beyond any real message and bounds per-field work).
pub const MAX_FIELDS: usize = 10_000;

/// Why a header section is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the header section starts with a folded (whitespace) line")]
    LeadingContinuation,
    #[error("header line {0} is not a valid \"Name: value\" field")]
    MalformedField(usize),
    #[error("the header section contains a NUL character")]
    Nul,
    #[error("the header section has more than {MAX_FIELDS} fields")]
    TooManyFields,
}

/// One field: its name as written and its raw value (folding kept, CRLF of the last line
/// not included), with the byte range the whole field takes in the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub range: std::ops::Range<usize>,
}

impl Field<'_> {
    /// Whether the field is called `name` (case-insensitive, as RFC 5322 says).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// The header section split into fields, and where it ends.
#[derive(Clone, Debug)]
pub struct Header<'a> {
    pub fields: Vec<Field<'a>>,
    /// Bytes the header section takes, including the blank line that ends it (if any).
    pub len: usize,
    /// Where a new field can be inserted at the end: before the blank line, or at the end
    /// of a body-less message.
    pub insert_at: usize,
}

impl<'a> Header<'a> {
    /// Splits the header section of `message`, refusing one that does not split cleanly.
    pub fn parse(message: &'a [u8]) -> Result<Header<'a>, HeaderError> {
        let mut fields: Vec<Field<'a>> = Vec::new();
        let mut pos = 0usize;
        let mut line_no = 0usize;
        while pos < message.len() {
            let rest = &message[pos..];
            let line_len = rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            let raw = &rest[..line_len];
            let line = raw
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(raw);
            line_no += 1;
            if line.is_empty() {
                return Ok(Header {
                    fields,
                    len: pos + line_len,
                    insert_at: pos,
                });
            }
            if line.contains(&0) {
                return Err(HeaderError::Nul);
            }
            if line[0] == b' ' || line[0] == b'\t' {
                // A continuation extends the field before it.
                let Some(last) = fields.last_mut() else {
                    return Err(HeaderError::LeadingContinuation);
                };
                let value_start = last.range.start + last.name.len() + 1;
                last.range.end = pos + line_len;
                let value_end = pos + line.len();
                last.value = &message[value_start..value_end];
            } else {
                let colon = line
                    .iter()
                    .position(|b| *b == b':')
                    .ok_or(HeaderError::MalformedField(line_no))?;
                let name = &line[..colon];
                if name.is_empty()
                    || name.len() > MAX_NAME
                    || !name.iter().all(|b| (33..=126).contains(b))
                {
                    return Err(HeaderError::MalformedField(line_no));
                }
                if fields.len() >= MAX_FIELDS {
                    return Err(HeaderError::TooManyFields);
                }
                fields.push(Field {
                    name,
                    value: &line[colon + 1..],
                    range: pos..pos + line_len,
                });
            }
            pos += line_len;
        }
        Ok(Header {
            fields,
            len: message.len(),
            insert_at: message.len(),
        })
    }

    /// Whether there is a field called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.is(name))
    }

    /// How many fields are called `name`.
    pub fn count(&self, name: &str) -> usize {
        self.fields.iter().filter(|f| f.is(name)).count()
    }

    /// The fields called `name`, in order.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Field<'a>> + 's {
        self.fields.iter().filter(move |f| f.is(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_folding() {
        let m = b"From: a@x.test\r\nSubject: one\r\n two\r\n\r\nbody\r\n";
        let h = Header::parse(m).expect("valid");
        assert_eq!(h.fields.len(), 2);
        assert!(h.fields[0].is("from"));
        assert_eq!(h.fields[0].value, b" a@x.test");
        assert_eq!(h.fields[1].value, b" one\r\n two");
        assert_eq!(&m[h.fields[1].range.clone()], b"Subject: one\r\n two\r\n");
        assert_eq!(h.len, m.len() - b"body\r\n".len());
        assert_eq!(h.insert_at, h.len - 2);
    }

    #[test]
    fn body_less_message_is_all_header() {
        let m = b"Subject: only\r\n";
        let h = Header::parse(m).expect("valid");
        assert_eq!((h.len, h.insert_at), (m.len(), m.len()));
    }

    /// Issue 9 item 3: the first line starting with whitespace hid `From:` from the check.
    #[test]
    fn ambiguous_header_sections_are_refused() {
        let cases: [(&[u8], HeaderError); 6] = [
            (
                b" From: evil@other.test\r\n\r\nx\r\n",
                HeaderError::LeadingContinuation,
            ),
            (
                b"\tFrom: evil@other.test\r\n\r\nx\r\n",
                HeaderError::LeadingContinuation,
            ),
            (
                b"From : evil@other.test\r\n\r\n",
                HeaderError::MalformedField(1),
            ),
            (
                b"Subject: x\r\nno colon here\r\n\r\n",
                HeaderError::MalformedField(2),
            ),
            (b": empty name\r\n\r\n", HeaderError::MalformedField(1)),
            (b"Subject: a\0b\r\n\r\n", HeaderError::Nul),
        ];
        for (m, want) in cases {
            assert_eq!(
                Header::parse(m).err(),
                Some(want),
                "{:?}",
                String::from_utf8_lossy(m)
            );
        }
        // The body is not the header: anything goes after the blank line.
        assert!(Header::parse(b"From: a@x.test\r\n\r\n From: b\0\r\n").is_ok());
    }

    #[test]
    fn field_count_is_bounded() {
        let m = "X-A: b\r\n".repeat(MAX_FIELDS + 1);
        assert_eq!(
            Header::parse(m.as_bytes()).err(),
            Some(HeaderError::TooManyFields)
        );
    }
}
