//! Text of attachments, for the full-text search index and SEARCH BODY/TEXT.
//!
//! An attachment's text is extracted from `text/*` parts (HTML turned into text), PDF
//! files (lopdf) and office documents: OOXML (docx, xlsx, pptx) and ODF (odt, ods, odp),
//! read with the zip and quick-xml crates. Binary formats are recognised by their bytes
//! (`%PDF-`, a zip holding `word/document.xml`, ...), not by the part's declared type,
//! which senders get wrong.
//!
//! Every attachment comes from outside, so every step is bounded (see docs/limits.md):
//! the input size ([`MAX_EXTRACT_INPUT`]), the text kept ([`MAX_EXTRACTED_TEXT`]), the
//! attachments per message ([`MAX_EXTRACTED_ATTACHMENTS`]), the bytes decompressed and
//! the parsing steps ([`Budget`]), and a wall-clock budget ([`EXTRACT_TIME_BUDGET`]).
//! Extraction runs inside `catch_unwind`, so a file that makes a crate panic gives no
//! text instead of taking the caller down.
//!
//! Determinism matters: SEARCH answers from the index or by scanning the message, and
//! both must see the same text. Every limit but the clock is counted in bytes or steps,
//! so a given message always gives the same text. Only the clock can vary from run to
//! run; when it stops an extraction the result says so ([`Extracted::complete`] false),
//! and the index then marks the message incomplete so that searches look at the message
//! itself rather than trust a cut text.

mod office;
mod pdf;

use std::time::{Duration, Instant};

/// Largest attachment (decoded) whose text is extracted: 10 MiB. Larger PDFs and office
/// files are not searched; a larger `text/*` attachment is searched in its first
/// [`MAX_EXTRACT_INPUT`] bytes.
pub const MAX_EXTRACT_INPUT: usize = 10 * 1024 * 1024;

/// Text kept per attachment: 256 KiB (UTF-8 bytes); the rest is not searched.
pub const MAX_EXTRACTED_TEXT: usize = 256 * 1024;

/// Attachments per message (nested messages' included) whose text is extracted: 32.
pub const MAX_EXTRACTED_ATTACHMENTS: usize = 32;

/// Bytes decompressed per message while extracting (PDF page contents and fonts, zip
/// entries): 128 MiB. A PDF's own object streams have their own bound, see
/// [`pdf::MAX_PDF_LOAD_INFLATE`].
pub const MAX_EXTRACT_INFLATE: usize = 128 * 1024 * 1024;

/// Parsing steps per message (PDF content operations, XML events): 4 million.
pub const MAX_EXTRACT_STEPS: u64 = 4_000_000;

/// Wall-clock time per message for extraction: 3 s. Past it, extraction stops and the
/// message is indexed as incomplete (see the module documentation).
pub const EXTRACT_TIME_BUDGET: Duration = Duration::from_secs(3);

/// What is left of a message's extraction budget. Byte and step counts are
/// deterministic; the deadline is not, and running past it is reported as such.
#[derive(Debug)]
pub struct Budget {
    inflate_left: usize,
    steps_left: u64,
    deadline: Instant,
    /// The deadline passed during some extraction.
    pub timed_out: bool,
}

/// Why an extraction stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A byte or step budget ran out, or the text limit was reached (deterministic).
    Limit,
    /// The deadline passed.
    Time,
}

impl Budget {
    /// The budget of one message, starting now.
    pub fn for_message() -> Self {
        Self::with(MAX_EXTRACT_INFLATE, MAX_EXTRACT_STEPS, EXTRACT_TIME_BUDGET)
    }

    /// A budget of the given sizes (for tests of the limits).
    pub fn with(inflate: usize, steps: u64, time: Duration) -> Self {
        Self {
            inflate_left: inflate,
            steps_left: steps,
            deadline: Instant::now() + time,
            timed_out: false,
        }
    }

    /// Takes `n` parsing steps; checks the clock every 4096 steps.
    pub(crate) fn step(&mut self, n: u64) -> Result<(), Stop> {
        if self.steps_left < n {
            self.steps_left = 0;
            return Err(Stop::Limit);
        }
        let before = self.steps_left;
        self.steps_left -= n;
        if before / 4096 != self.steps_left / 4096 {
            self.check_time()?;
        }
        Ok(())
    }

    /// Checks the clock.
    pub(crate) fn check_time(&mut self) -> Result<(), Stop> {
        if Instant::now() >= self.deadline {
            self.timed_out = true;
            return Err(Stop::Time);
        }
        Ok(())
    }

    /// Bytes that may still be decompressed.
    pub(crate) fn inflate_left(&self) -> usize {
        self.inflate_left
    }

    /// Records `n` bytes decompressed.
    pub(crate) fn inflated(&mut self, n: usize) -> Result<(), Stop> {
        if n > self.inflate_left {
            self.inflate_left = 0;
            return Err(Stop::Limit);
        }
        self.inflate_left -= n;
        Ok(())
    }
}

/// Collects an attachment's text up to [`MAX_EXTRACTED_TEXT`] bytes.
pub(crate) struct Sink {
    out: String,
    max: usize,
}

impl Sink {
    fn new(max: usize) -> Self {
        Self {
            out: String::new(),
            max,
        }
    }

    /// Appends `s`, cut at a character boundary at the limit; `Err` once it is reached.
    pub(crate) fn push(&mut self, s: &str) -> Result<(), Stop> {
        let room = self.max - self.out.len();
        if s.len() <= room {
            self.out.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.out.push_str(&s[..end]);
        self.max = self.out.len();
        Err(Stop::Limit)
    }

    pub(crate) fn push_char(&mut self, c: char) -> Result<(), Stop> {
        let mut b = [0u8; 4];
        self.push(c.encode_utf8(&mut b))
    }

    /// Whether the text ends with whitespace (or is empty), to avoid doubling separators.
    pub(crate) fn ends_with_space(&self) -> bool {
        self.out.chars().last().is_none_or(char::is_whitespace)
    }
}

/// The text of one attachment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub text: String,
    /// False when the clock stopped the extraction (the text may differ another time).
    pub complete: bool,
}

/// What kind of document a binary attachment's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pdf,
    /// A zip: an OOXML or ODF document if its entries say so.
    Zip,
}

/// Recognises a document whose text can be extracted, by its first bytes: `%PDF-` in
/// the first 1024 bytes (as readers accept it), or a zip's local file header.
pub fn sniff(data: &[u8]) -> Option<Kind> {
    let head = &data[..data.len().min(1024)];
    if head.windows(5).any(|w| w == b"%PDF-") {
        Some(Kind::Pdf)
    } else if data.starts_with(b"PK\x03\x04") {
        Some(Kind::Zip)
    } else {
        None
    }
}

/// The text of a binary attachment (a PDF or an office document), within `budget`.
/// Never panics: a panic inside the parsers is caught and gives no text.
pub fn binary_text(data: &[u8], budget: &mut Budget) -> Extracted {
    let Some(kind) = sniff(data) else {
        return Extracted {
            text: String::new(),
            complete: true,
        };
    };
    if data.len() > MAX_EXTRACT_INPUT {
        return Extracted {
            text: String::new(),
            complete: true,
        };
    }
    let mut sink = Sink::new(MAX_EXTRACTED_TEXT);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
        Kind::Pdf => pdf::text(data, &mut sink, budget),
        Kind::Zip => office::text(data, &mut sink, budget),
    }));
    match run {
        Ok(Ok(())) | Ok(Err(Stop::Limit)) => Extracted {
            text: sink.out,
            complete: true,
        },
        Ok(Err(Stop::Time)) => Extracted {
            text: sink.out,
            complete: false,
        },
        // Whatever text came before the panic is dropped: a panic in the middle is not
        // guaranteed to leave the sink at a deterministic point.
        Err(_) => Extracted {
            text: String::new(),
            complete: !budget.timed_out,
        },
    }
}

/// The searchable text of a `text/*` attachment: its first [`MAX_EXTRACT_INPUT`] bytes,
/// HTML turned into text, cut at [`MAX_EXTRACTED_TEXT`].
pub fn text_part(text: &str, html: bool) -> String {
    let input = cut(text, MAX_EXTRACT_INPUT);
    let text = if html {
        mail_parser::decoders::html::html_to_text(input)
    } else {
        input.to_string()
    };
    cut(&text, MAX_EXTRACTED_TEXT).to_string()
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_cuts_at_char_boundaries() {
        let mut s = Sink::new(5);
        assert!(s.push("ab").is_ok());
        // "é" is two bytes: it would end at byte 6, past the limit, so it is left out.
        assert_eq!(s.push("cdé€"), Err(Stop::Limit));
        assert_eq!(s.out, "abcd");
        assert_eq!(s.push("x"), Err(Stop::Limit));
        assert_eq!(s.out, "abcd");
    }

    #[test]
    fn budget_counts_steps_and_bytes() {
        let mut b = Budget::with(10, 3, Duration::from_secs(60));
        assert!(b.step(2).is_ok());
        assert_eq!(b.step(2), Err(Stop::Limit));
        assert!(b.inflated(10).is_ok());
        assert_eq!(b.inflated(1), Err(Stop::Limit));
        let mut late = Budget::with(10, 1 << 20, Duration::ZERO);
        assert_eq!(late.check_time(), Err(Stop::Time));
        assert!(late.timed_out);
    }

    #[test]
    fn unknown_bytes_give_no_text() {
        let mut b = Budget::for_message();
        let e = binary_text(b"\x89PNG\r\n\x1a\n....", &mut b);
        assert_eq!(e.text, "");
        assert!(e.complete);
    }

    #[test]
    fn text_parts_are_cut_and_html_is_text() {
        assert_eq!(
            text_part("<p>Hello <b>there</b></p>", true).trim(),
            "Hello there"
        );
        let long = "é".repeat(MAX_EXTRACTED_TEXT);
        let t = text_part(&long, false);
        assert!(t.len() <= MAX_EXTRACTED_TEXT && t.len() > MAX_EXTRACTED_TEXT - 2);
    }
}
