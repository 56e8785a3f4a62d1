//! The MIME structure scanner: finds every part, its header and its body, as byte offsets.
//!
//! IMAP clients compare the BODYSTRUCTURE they fetch with the sections they fetch next, so the
//! boundaries must be found exactly where an IMAP server finds them, also in broken messages.
//! The rules are those of RFC 2046 section 5.1 as Dovecot implements them:
//!
//! * a boundary line starts with `--` and the boundary; the boundary only has to be a *prefix*
//!   of the rest of the line (trailing `--`, whitespace and junk are allowed), and the longest
//!   matching boundary wins, the innermost one on a tie;
//! * the boundaries of every enclosing multipart are active, so an outer boundary ends the
//!   inner parts that were never closed (a missing final boundary ends at the end of input);
//! * the line break before a boundary line belongs to the boundary, not to the body;
//! * a boundary line also ends a header that has no blank line yet;
//! * a multipart without a usable boundary, or without any part, has one empty text/plain
//!   part; boundaries are cut to 80 octets; nesting stops at 100 levels (deeper multiparts and
//!   messages become opaque application/octet-stream) and a message has at most 10,000 parts,
//!   the root included: the last one is a leaf whose body runs to the end of the message.
//!
//! Nothing here fails: every input gives a tree.

use crate::envelope::Envelope;
use crate::header::{is_wsp, line_at, Field};
use crate::octets::Octets;
use crate::params::{self, ContentType};
use crate::part::{Body, Disposition, Part};

/// Deepest nesting of parts (multipart children and encapsulated messages). Deeper
/// multiparts and messages are reported as application/octet-stream. This bounds recursion
/// and matches Dovecot's default, so both servers cut at the same place.
pub const MAX_NESTING: usize = 100;
/// Most parts in one message, the root included. The part that reaches it is the last: a
/// leaf whose body runs to the end of the message. It bounds the size of the summary (and
/// matches Dovecot's default, and where Dovecot stops).
pub const MAX_PARTS: usize = 10_000;
/// Longest boundary used; longer ones are cut (RFC 2046 allows 70 octets, Dovecot keeps 80).
pub const MAX_BOUNDARY_LEN: usize = 80;
/// How much of a last line without a line break is compared against boundaries.
const BOUNDARY_LINE_MAX: usize = MAX_BOUNDARY_LEN + 4;

/// A boundary line found in the input.
#[derive(Clone, Copy, Debug)]
struct Hit {
    /// Position of the boundary in the stack of active boundaries.
    index: usize,
    /// `--boundary--`: the multipart ends here.
    closing: bool,
    /// Where the body before the boundary ends (before the preceding line break).
    content_end: usize,
    /// Start of the line after the boundary line, if it has a line break.
    after: Option<usize>,
}

/// How the scan of a part stopped.
enum End {
    Eof,
    Boundary(Hit),
}

struct Scanned {
    part: Part,
    end: End,
    /// A header cut short by a boundary gives its last line break to its parent's body.
    given_back: usize,
}

/// What the Content-Type header says the part is, before limits are applied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Message,
    Multipart { digest: bool },
    Other,
}

struct Scanner<'a> {
    raw: &'a [u8],
    /// Boundaries of the enclosing multiparts, outermost first.
    boundaries: Vec<Vec<u8>>,
    parts: usize,
    lines: LineCounter,
}

/// Counts line feeds in any range in constant time.
///
/// A message/rfc822 part's line count covers everything inside it, so with nested messages
/// the same bytes would be counted once per level. One pass stores the running count at every
/// block boundary instead; a range then costs at most two partial blocks.
struct LineCounter {
    /// `cumulative[k]` = line feeds in `raw[..k * LINE_BLOCK]`.
    cumulative: Vec<u64>,
}

const LINE_BLOCK: usize = 4096;

fn count_lf(bytes: &[u8]) -> u64 {
    off(bytes.iter().filter(|&&b| b == b'\n').count())
}

impl LineCounter {
    fn new(raw: &[u8]) -> Self {
        let mut cumulative = Vec::with_capacity(raw.len() / LINE_BLOCK + 1);
        let mut total = 0;
        cumulative.push(0);
        for block in raw.chunks_exact(LINE_BLOCK) {
            total += count_lf(block);
            cumulative.push(total);
        }
        Self { cumulative }
    }

    fn count(&self, raw: &[u8], start: usize, end: usize) -> u64 {
        let (start, end) = (start.min(raw.len()), end.min(raw.len()));
        if start >= end {
            return 0;
        }
        let first = start.div_ceil(LINE_BLOCK);
        let last = end / LINE_BLOCK;
        if first >= last {
            return count_lf(&raw[start..end]);
        }
        let whole = self.cumulative[last].saturating_sub(self.cumulative[first]);
        count_lf(&raw[start..first * LINE_BLOCK]) + whole + count_lf(&raw[last * LINE_BLOCK..end])
    }
}

/// Scans a whole message.
pub(crate) fn scan(raw: &[u8]) -> (Part, Vec<Field>) {
    let mut scanner = Scanner {
        raw,
        boundaries: Vec::new(),
        parts: 1,
        lines: LineCounter::new(raw),
    };
    let (scanned, fields) = scanner.entity(0, 0, false, false, false);
    (scanned.part, fields)
}

fn off(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The Content-* fields of one entity.
#[derive(Default)]
struct ContentFields {
    content_type: Option<ContentType>,
    id: Option<Octets>,
    description: Option<Octets>,
    encoding: Option<Octets>,
    md5: Option<Octets>,
    disposition: Option<Disposition>,
    language: Vec<Octets>,
    location: Option<Octets>,
}

impl ContentFields {
    /// Reads the Content-* fields; the first occurrence of each wins.
    fn read(fields: &[Field]) -> Self {
        let mut c = ContentFields::default();
        for field in fields {
            let name = field.name.to_ascii_lowercase();
            let value = &field.value;
            let raw_value = || Some(Octets::from(crate::header::without_newlines(value)));
            match name.as_slice() {
                b"content-type" if c.content_type.is_none() => {
                    c.content_type = Some(params::parse_content_type(value))
                }
                b"content-id" if c.id.is_none() => c.id = raw_value(),
                b"content-description" if c.description.is_none() => c.description = raw_value(),
                b"content-md5" if c.md5.is_none() => c.md5 = raw_value(),
                b"content-location" if c.location.is_none() => c.location = raw_value(),
                b"content-transfer-encoding" if c.encoding.is_none() => {
                    c.encoding = params::parse_transfer_encoding(value)
                }
                b"content-language" if c.language.is_empty() => {
                    c.language = params::parse_language(value)
                }
                b"content-disposition" if c.disposition.is_none() => {
                    c.disposition = params::parse_disposition(value)
                        .map(|(kind, params)| Disposition { kind, params })
                }
                _ => {}
            }
        }
        c
    }

    fn kind(&self) -> Option<Kind> {
        let full = &self.content_type.as_ref()?.full;
        let lower = full.to_ascii_lowercase();
        Some(if lower == b"message/rfc822" {
            Kind::Message
        } else if lower.starts_with(b"text") && (lower.len() == 4 || lower[4] == b'/') {
            Kind::Text
        } else if let Some(sub) = lower.strip_prefix(b"multipart/") {
            Kind::Multipart {
                digest: sub == b"digest",
            }
        } else {
            Kind::Other
        })
    }
}

impl Scanner<'_> {
    /// The boundary line at `pos`, if the line there is one.
    fn boundary_at(&self, pos: usize) -> Option<Hit> {
        if self.boundaries.is_empty() {
            return None;
        }
        let rest = self.raw.get(pos..)?;
        let data = rest.strip_prefix(b"--")?;
        let lf = data.iter().position(|&b| b == b'\n');
        let compared = match lf {
            Some(mut n) => {
                if n > 0 && data[n - 1] == b'\r' {
                    n -= 1;
                }
                if n > 2 && data[n - 1] == b'-' && data[n - 2] == b'-' {
                    n -= 2;
                }
                n
            }
            None => data.len().min(BOUNDARY_LINE_MAX),
        };
        let mut best: Option<usize> = None;
        for (index, boundary) in self.boundaries.iter().enumerate().rev() {
            let better = best.is_none_or(|b| self.boundaries[b].len() < boundary.len());
            if boundary.len() <= compared && data.starts_with(boundary) && better {
                best = Some(index);
                if boundary.len() == compared {
                    break;
                }
            }
        }
        let index = best?;
        let len = self.boundaries[index].len();
        let closing = data.get(len..len + 2) == Some(b"--".as_slice());
        let after = lf.map(|n| pos + 2 + n + 1);
        Some(Hit {
            index,
            closing,
            content_end: pos,
            after,
        })
    }

    /// Takes a boundary line into account: the parts it ends forget their boundaries.
    fn consume(&mut self, hit: &Hit) {
        let keep = if hit.closing {
            hit.index
        } else {
            hit.index + 1
        };
        self.boundaries.truncate(keep);
    }

    /// Finds the next boundary line from `from`, which is the start of a line. The line
    /// break before a boundary line is not part of the body before it.
    fn next_boundary(&mut self, from: usize) -> Option<Hit> {
        if self.boundaries.is_empty() {
            return None;
        }
        let hit = self.boundary_at(from).or_else(|| {
            let mut pos = from;
            loop {
                let lf = pos + self.raw.get(pos..)?.iter().position(|&b| b == b'\n')?;
                let next = lf + 1;
                if next >= self.raw.len() {
                    return None;
                }
                if let Some(mut hit) = self.boundary_at(next) {
                    let crlf = lf > from && self.raw[lf - 1] == b'\r';
                    hit.content_end = if crlf { lf - 1 } else { lf };
                    return Some(hit);
                }
                pos = next;
            }
        })?;
        self.consume(&hit);
        Some(hit)
    }

    /// The body of a leaf: empty when its header was cut by a boundary, else up to the next
    /// boundary or the end.
    fn leaf(&mut self, body_start: usize, cut: Option<Hit>) -> (usize, End) {
        if let Some(hit) = cut {
            return (body_start, End::Boundary(hit));
        }
        match self.next_boundary(body_start) {
            Some(hit) => (hit.content_end, End::Boundary(hit)),
            None => (self.raw.len(), End::Eof),
        }
    }

    /// Scans one entity starting at `start`: its header, then its body.
    ///
    /// `depth` counts the enclosing entities; `in_multipart` makes the entity MIME without a
    /// MIME-Version header; `in_digest` makes message/rfc822 its default type; `last` marks
    /// the part that reached [`MAX_PARTS`].
    fn entity(
        &mut self,
        start: usize,
        depth: usize,
        in_multipart: bool,
        in_digest: bool,
        last: bool,
    ) -> (Scanned, Vec<Field>) {
        let raw = self.raw;
        let len = raw.len();

        // The header: up to a blank line, the end of input, or a boundary line.
        let mut fields: Vec<Field> = Vec::new();
        let mut pos = start;
        let mut last_newline = 0;
        let mut cut: Option<Hit> = None;
        let mut blank_newline = 0;
        let body_start;
        loop {
            if pos >= len {
                body_start = len;
                break;
            }
            if let Some(hit) = self.boundary_at(pos) {
                self.consume(&hit);
                cut = Some(hit);
                body_start = pos - last_newline;
                break;
            }
            let line = line_at(raw, pos);
            if line.start == line.end && line.next > line.end {
                blank_newline = line.newline_len();
                body_start = line.next;
                break;
            }
            let continues = is_wsp(raw[pos]) && !fields.is_empty();
            match fields.last_mut() {
                Some(field) if continues => field.continue_with(raw, line),
                _ => fields.push(Field::first_line(raw, line)),
            }
            last_newline = line.newline_len();
            pos = line.next;
        }
        let blank = cut.is_none() && blank_newline > 0;
        let mut given_back = if cut.is_some() { last_newline } else { 0 };

        let is_mime = in_multipart
            || fields
                .iter()
                .any(|f| f.is("mime-version") || f.is("content-type"));
        let content = if is_mime {
            ContentFields::read(&fields)
        } else {
            ContentFields::default()
        };
        let kind = content
            .kind()
            .unwrap_or(if in_digest { Kind::Message } else { Kind::Text });

        // A multipart with a boundary, whose header ended with a blank line, is a container.
        let boundary = match kind {
            Kind::Multipart { .. } if blank => boundary_param(&content).map(|b| {
                let keep = b.len().min(MAX_BOUNDARY_LEN);
                b[..keep].to_vec()
            }),
            _ => None,
        };
        let too_deep = depth + 1 >= MAX_NESTING;
        let container = boundary.is_some() && !too_deep && !last;
        let own = if let (Some(b), true) = (boundary, container) {
            self.boundaries.push(b);
            Some(self.boundaries.len() - 1)
        } else {
            None
        };

        // A boundary of an enclosing multipart right after the blank line cuts the header
        // there too, and the blank line goes back to the parent.
        let mut body_start = body_start;
        if blank {
            if let Some(hit) = self.boundary_at(body_start) {
                if Some(hit.index) != own {
                    self.consume(&hit);
                    cut = Some(hit);
                    given_back = blank_newline;
                    body_start -= blank_newline;
                }
            }
        }

        let mut media = match &content.content_type {
            _ if kind == Kind::Message => (Octets::from("message"), Octets::from("rfc822")),
            Some(ct) => (Octets::from(ct.media_type()), Octets::from(ct.subtype())),
            None => (Octets::from("text"), Octets::from("plain")),
        };
        let octet_stream = || (Octets::from("application"), Octets::from("octet-stream"));

        let (body, body_end, end) = match kind {
            _ if last => {
                // The last part the message may have: opaque, and everything after it is its body.
                let body = match kind {
                    Kind::Text => Body::Text {
                        lines: self.lines.count(raw, body_start, len),
                    },
                    _ => {
                        if matches!(kind, Kind::Multipart { .. } | Kind::Message) {
                            media = octet_stream();
                        }
                        Body::Basic
                    }
                };
                self.boundaries.clear();
                (body, len, End::Eof)
            }
            Kind::Multipart { digest } if container && cut.is_none() => {
                let own = own.unwrap_or(0);
                let (parts, body_end, end) = self.multipart_body(body_start, depth, own, digest);
                (Body::Multipart { parts }, body_end, end)
            }
            Kind::Multipart { .. } if boundary_param(&content).is_some() && blank && too_deep => {
                media = octet_stream();
                let (body_end, end) = self.leaf(body_start, cut);
                (Body::Basic, body_end, end)
            }
            Kind::Multipart { .. } => {
                let (body_end, end) = self.leaf(body_start, cut);
                (Body::Multipart { parts: Vec::new() }, body_end, end)
            }
            Kind::Message if !too_deep => {
                self.parts += 1;
                let last = self.parts >= MAX_PARTS;
                let (child, envelope, body_end, end) = match cut {
                    // Cut by a boundary: an empty message.
                    Some(hit) => (
                        empty_text_part(body_start),
                        Envelope::default(),
                        body_start,
                        End::Boundary(hit),
                    ),
                    None => {
                        let (child, child_fields) =
                            self.entity(body_start, depth + 1, false, false, last);
                        let body_end = (off_usize(child.part.body_end) + child.given_back).min(len);
                        (
                            child.part,
                            Envelope::from_fields(&child_fields),
                            body_end,
                            child.end,
                        )
                    }
                };
                let lines = self.lines.count(raw, body_start, body_end);
                let body = Body::Message {
                    lines,
                    envelope: Box::new(envelope),
                    message: Box::new(child),
                };
                (body, body_end, end)
            }
            Kind::Message => {
                // Too deep: the message stays opaque.
                media = octet_stream();
                let (body_end, end) = self.leaf(body_start, cut);
                (Body::Basic, body_end, end)
            }
            Kind::Text => {
                let (body_end, end) = self.leaf(body_start, cut);
                (
                    Body::Text {
                        lines: self.lines.count(raw, body_start, body_end),
                    },
                    body_end,
                    end,
                )
            }
            Kind::Other => {
                let (body_end, end) = self.leaf(body_start, cut);
                (Body::Basic, body_end, end)
            }
        };

        let body = match body {
            Body::Multipart { parts } if parts.is_empty() => Body::Multipart {
                parts: vec![empty_text_part(body_start)],
            },
            other => other,
        };

        let part = Part {
            header_start: off(start),
            body_start: off(body_start),
            body_end: off(body_end),
            media_type: media.0,
            media_subtype: media.1,
            params: content.content_type.map(|ct| ct.params).unwrap_or_default(),
            id: content.id,
            description: content.description,
            encoding: content.encoding,
            md5: content.md5,
            disposition: content.disposition,
            language: content.language,
            location: content.location,
            body,
        };
        (
            Scanned {
                part,
                end,
                given_back,
            },
            fields,
        )
    }

    /// The parts of a multipart whose boundary is `own` in the stack, and where it ends.
    fn multipart_body(
        &mut self,
        body_start: usize,
        depth: usize,
        own: usize,
        digest: bool,
    ) -> (Vec<Part>, usize, End) {
        let len = self.raw.len();
        let mut parts = Vec::new();
        let mut hit = self.next_boundary(body_start);
        loop {
            let Some(h) = hit else {
                return (parts, len, End::Eof);
            };
            if h.index != own {
                // An enclosing multipart's boundary: this one ends without a final boundary.
                return (parts, h.content_end, End::Boundary(h));
            }
            let Some(next) = h.after else {
                // A boundary line without a line break at the very end starts nothing.
                return (parts, len, End::Eof);
            };
            if h.closing {
                // The epilogue runs to the next enclosing boundary, or to the end.
                return match self.next_boundary(next) {
                    Some(outer) => (parts, outer.content_end, End::Boundary(outer)),
                    None => (parts, len, End::Eof),
                };
            }
            self.parts += 1;
            let last = self.parts >= MAX_PARTS;
            let (child, _) = self.entity(next, depth + 1, true, digest, last);
            parts.push(child.part);
            match child.end {
                End::Eof => return (parts, len, End::Eof),
                End::Boundary(h) => hit = Some(h),
            }
        }
    }
}

fn boundary_param(content: &ContentFields) -> Option<&[u8]> {
    content
        .content_type
        .as_ref()
        .and_then(|ct| ct.param(b"boundary"))
}

fn off_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The one part IMAP reports for a multipart that has none: empty text/plain.
fn empty_text_part(at: usize) -> Part {
    Part {
        header_start: off(at),
        body_start: off(at),
        body_end: off(at),
        media_type: Octets::from("text"),
        media_subtype: Octets::from("plain"),
        params: Vec::new(),
        id: None,
        description: None,
        encoding: None,
        md5: None,
        disposition: None,
        language: Vec::new(),
        location: None,
        body: Body::Text { lines: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    fn shape(p: &Part) -> String {
        let t = format!(
            "{}/{}",
            p.media_type.to_string_lossy(),
            p.media_subtype.to_string_lossy()
        );
        match &p.body {
            Body::Multipart { parts } => {
                let inner: Vec<String> = parts.iter().map(shape).collect();
                format!("{t}[{}]", inner.join(","))
            }
            Body::Message { message, .. } => format!("{t}<{}>", shape(message)),
            _ => format!("{t}:{}", p.size()),
        }
    }

    #[test]
    fn nested_multiparts_and_a_message() {
        let raw = crlf(
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"o\"\n\npreamble\n--o\nContent-Type: multipart/alternative; boundary=i\n\n--i\n\nplain\n--i\nContent-Type: text/html\n\n<b>x</b>\n--i--\n--o\nContent-Type: message/rfc822\n\nSubject: s\n\ninner\n--o--\nepilogue\n",
        );
        let (root, _) = scan(&raw);
        assert_eq!(shape(&root), "multipart/mixed[multipart/alternative[text/plain:5,text/html:8],message/rfc822<text/plain:5>]");
        let msg = &root.parts()[1];
        assert_eq!(
            &raw[msg.body_start as usize..msg.body_end as usize],
            b"Subject: s\r\n\r\ninner"
        );
        assert_eq!(msg.lines(), Some(2));
        assert_eq!(root.body_end as usize, raw.len());
    }

    #[test]
    fn broken_boundaries() {
        // Missing final boundary, prefix match, header cut by a boundary.
        let raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n--b\n\nsecond\n--bxyz junk\nthird?\n--b--\n");
        let (root, _) = scan(&raw);
        assert_eq!(
            shape(&root),
            "multipart/mixed[text/plain:0,text/plain:6,text/plain:0]"
        );
        let first = &root.parts()[0];
        assert_eq!(
            &raw[first.header_start as usize..first.body_start as usize],
            b"Content-Type: text/plain"
        );
        // Boundary never seen: one empty part.
        let (root, _) = scan(&crlf(
            "Content-Type: multipart/mixed; boundary=b\n\nno parts\n",
        ));
        assert_eq!(shape(&root), "multipart/mixed[text/plain:0]");
        // No boundary parameter.
        let (root, _) = scan(&crlf("Content-Type: multipart/mixed\n\nx\n"));
        assert_eq!(shape(&root), "multipart/mixed[text/plain:0]");
    }

    #[test]
    fn a_cut_message_header_gives_its_line_break_to_the_message_body() {
        let raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\nSubject: x\n--b--\n");
        let (root, _) = scan(&raw);
        let msg = &root.parts()[0];
        assert_eq!(msg.size(), 12);
        assert_eq!(msg.lines(), Some(1));
    }

    #[test]
    fn content_headers_need_mime() {
        let (root, _) = scan(&crlf("Content-Transfer-Encoding: base64\n\nx\n"));
        assert_eq!(root.encoding, None);
        let (root, _) = scan(&crlf(
            "Content-Type: text/html\nContent-Transfer-Encoding: base64\n\nx\n",
        ));
        assert_eq!(root.encoding, Some(Octets::from("base64")));
        assert_eq!(shape(&root), "text/html:3");
    }

    #[test]
    fn nesting_is_limited() {
        let mut raw = String::from("Content-Type: multipart/mixed; boundary=x0\n\n");
        for i in 1..=150 {
            raw.push_str(&format!(
                "--x{}\nContent-Type: multipart/mixed; boundary=x{i}\n\n",
                i - 1
            ));
        }
        let raw = crlf(&raw);
        let (root, _) = scan(&raw);
        let mut depth = 0;
        let mut p = &root;
        while let Some(child) = p.parts().first() {
            depth += 1;
            p = child;
        }
        assert!(depth < MAX_NESTING, "depth {depth}");
    }

    #[test]
    fn line_counts_over_blocks() {
        let raw: Vec<u8> = (0..3 * LINE_BLOCK + 17)
            .map(|i| if i % 7 == 0 { b'\n' } else { b'x' })
            .collect();
        let counter = LineCounter::new(&raw);
        for (a, b) in [
            (0, raw.len()),
            (5, 4100),
            (4096, 8192),
            (4095, 8193),
            (10, 11),
            (300, 12_000),
            (7, 7),
        ] {
            assert_eq!(counter.count(&raw, a, b), count_lf(&raw[a..b]), "{a}..{b}");
        }
    }

    #[test]
    fn the_last_allowed_part_takes_the_rest_of_the_message() {
        let mut raw = String::from("Content-Type: multipart/mixed; boundary=p\n\n");
        for i in 0..MAX_PARTS + 5 {
            raw.push_str(&format!("--p\n\nx{i}\n"));
        }
        raw.push_str("--p--\n");
        let raw = crlf(&raw);
        let (root, _) = scan(&raw);
        let parts = root.parts();
        assert_eq!(parts.len(), MAX_PARTS - 1, "the root counts");
        let last = &parts[parts.len() - 1];
        assert_eq!(last.body_end as usize, raw.len());
        assert!(raw[last.body_start as usize..].starts_with(b"x9998\r\n--p\r\n"));
    }

    #[test]
    fn anything_scans() {
        for raw in [
            &b""[..],
            b"\r\n",
            b"--",
            b"Content-Type: multipart/x; boundary=\"\"\r\n\r\n--\r\n--\r\n",
        ] {
            let (root, _) = scan(raw);
            assert!(root.body_end as usize <= raw.len());
        }
    }
}
