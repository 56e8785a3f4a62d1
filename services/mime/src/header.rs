//! Header blocks: lines, fields, unfolding.
//!
//! A field starts on a line that does not begin with whitespace and continues over the lines
//! that do (RFC 5322 folding). The name is everything before the first colon, trailing
//! whitespace removed; a line without a colon is a field whose name is the whole line (broken,
//! but kept so it can be filtered like any other). The value skips the whitespace after the
//! colon, and unfolding removes the line breaks but keeps the whitespace that followed them.

use std::ops::Range;

/// One physical line: `start..end` is its content, `next` where the following line starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) start: usize,
    /// End of the content: before the LF, and before a CR that precedes it.
    pub(crate) end: usize,
    /// After the LF, or the end of input for a last line without one.
    pub(crate) next: usize,
}

impl Line {
    /// Size of the line break (2 for CRLF, 1 for LF, 0 at the end of input).
    pub(crate) fn newline_len(&self) -> usize {
        self.next - self.end
    }
}

/// The line starting at `start` (which must not be past the end).
pub(crate) fn line_at(raw: &[u8], start: usize) -> Line {
    match raw
        .get(start..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        Some(i) => {
            let lf = start + i;
            let end = if lf > start && raw[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            Line {
                start,
                end,
                next: lf + 1,
            }
        }
        None => Line {
            start,
            end: raw.len(),
            next: raw.len(),
        },
    }
}

pub(crate) fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A header field.
#[derive(Clone, Debug)]
pub(crate) struct Field {
    /// The field name as written (no trailing whitespace).
    pub(crate) name: Vec<u8>,
    /// The unfolded value: line breaks removed, whitespace after the colon skipped.
    pub(crate) value: Vec<u8>,
    /// The field's bytes in the input, from its first line to its last line break included.
    pub(crate) span: Range<usize>,
}

impl Field {
    /// Starts a field from its first line.
    pub(crate) fn first_line(raw: &[u8], line: Line) -> Self {
        let content = &raw[line.start..line.end];
        let (name, value) = match content.iter().position(|&b| b == b':') {
            Some(colon) => {
                let mut name_end = colon;
                while name_end > 0 && is_wsp(content[name_end - 1]) {
                    name_end -= 1;
                }
                let value = &content[colon + 1..];
                let mut skip = value.iter().take_while(|&&b| is_wsp(b)).count();
                if skip == value.len() && skip > 0 {
                    // A value of nothing but whitespace keeps all but the first blank.
                    skip = 1;
                }
                (&content[..name_end], &value[skip..])
            }
            None => (content, &content[..0]),
        };
        Self {
            name: name.to_vec(),
            value: value.to_vec(),
            span: line.start..line.next,
        }
    }

    /// Adds a continuation line (one that starts with whitespace).
    pub(crate) fn continue_with(&mut self, raw: &[u8], line: Line) {
        self.value.extend_from_slice(&raw[line.start..line.end]);
        self.span.end = line.next;
    }

    pub(crate) fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// Splits a header block (as delimited by the MIME scanner) into fields. Stops at the first
/// empty line; a block without one simply ends with its last field.
pub(crate) fn fields(raw: &[u8], block: Range<usize>) -> Vec<Field> {
    let end = block.end.min(raw.len());
    let bytes = &raw[..end];
    let mut out: Vec<Field> = Vec::new();
    let mut pos = block.start;
    while pos < end {
        let line = line_at(bytes, pos);
        if line.start == line.end && line.next > line.end {
            break;
        }
        let continues = is_wsp(bytes[pos]) && !out.is_empty();
        match out.last_mut() {
            Some(field) if continues => field.continue_with(bytes, line),
            _ => out.push(Field::first_line(bytes, line)),
        }
        pos = line.next;
    }
    out
}

/// The value without any CR or LF: what IMAP sends for dates, message ids and parameters.
pub(crate) fn without_newlines(value: &[u8]) -> Vec<u8> {
    value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect()
}

/// The value as a human reads it: every run of whitespace (including line breaks) becomes one
/// space, with none at either end. IMAP servers send subjects and display names this way
/// (Dovecot does), so a client shows the same text whichever server it talks to.
pub(crate) fn for_humans(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut pending_space = false;
    for &b in value {
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(b' ');
                pending_space = false;
            }
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_know_their_line_breaks() {
        let raw = b"a\r\nb\nc";
        assert_eq!(
            line_at(raw, 0),
            Line {
                start: 0,
                end: 1,
                next: 3
            }
        );
        assert_eq!(
            line_at(raw, 3),
            Line {
                start: 3,
                end: 4,
                next: 5
            }
        );
        assert_eq!(
            line_at(raw, 5),
            Line {
                start: 5,
                end: 6,
                next: 6
            }
        );
        assert_eq!(line_at(raw, 5).newline_len(), 0);
    }

    #[test]
    fn fields_unfold_and_keep_their_spans() {
        let raw = b"Subject:  a\r\n\tb\r\nX-Empty:   \r\nNo colon here\r\nTo : x\r\n\r\nbody";
        let f = fields(raw, 0..raw.len());
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].name, b"Subject");
        assert_eq!(f[0].value, b"a\tb");
        assert_eq!(&raw[f[0].span.clone()], b"Subject:  a\r\n\tb\r\n");
        assert_eq!(f[1].value, b"  ");
        assert_eq!(f[2].name, b"No colon here");
        assert_eq!(f[2].value, b"");
        assert_eq!(f[3].name, b"To");
        assert!(f[3].is("to"));
    }

    #[test]
    fn normalisations() {
        assert_eq!(for_humans(b"  a \t b\r\n c  "), b"a b c");
        assert_eq!(for_humans(b" \t "), b"");
        assert_eq!(without_newlines(b"a\r\n b\r"), b"a b");
    }
}
