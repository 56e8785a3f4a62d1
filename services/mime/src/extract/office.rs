//! Text of office documents: OOXML (docx, xlsx, pptx: ECMA-376) and ODF (odt, ods, odp:
//! OASIS OpenDocument), zips of XML parts read with the zip crate and quick-xml.
//!
//! Which parts hold text, and which elements in them, depends on the format:
//! - docx: `word/document.xml`, headers, footers, footnotes, endnotes, comments; the text
//!   of `w:t` elements, a line per `w:p`.
//! - xlsx: `xl/sharedStrings.xml` and the worksheets' inline strings; the text of `t`
//!   elements, a line per string. Numbers and formulas are not text and are left out.
//! - pptx: slides and notes; the text of `a:t` elements, a line per `a:p`.
//! - ODF: `content.xml`; every text node, a line per `text:p` and `text:h`.
//!
//! Each entry is inflated through a reader bounded by [`MAX_ZIP_ENTRY_INFLATE`] and by
//! what is left of the message's [`Budget`], whatever size the zip claims: a zip bomb
//! stops at the bound.

use super::{Budget, Sink, Stop};
use quick_xml::events::Event;
use std::io::{Cursor, Read};

/// Entries a zip may list for its text to be extracted: 10,000.
pub const MAX_ZIP_ENTRIES: usize = 10_000;

/// Bytes one entry may inflate to: 32 MiB. A larger entry is not read.
pub const MAX_ZIP_ENTRY_INFLATE: usize = 32 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Docx,
    Xlsx,
    Pptx,
    Odf,
}

/// How one format's XML holds its text, by element local names.
struct Rules {
    /// Text is taken inside these elements only (`None`: every text node).
    text_in: Option<&'static [&'static str]>,
    /// A line ends after these.
    line_end: &'static [&'static str],
    /// Empty elements standing for a tab, a line break, a space.
    tab: &'static [&'static str],
    line_break: &'static [&'static str],
    space: &'static [&'static str],
}

impl Format {
    fn of(names: &[String]) -> Option<Self> {
        let has = |n: &str| names.iter().any(|x| x == n);
        if has("word/document.xml") {
            Some(Self::Docx)
        } else if has("xl/workbook.xml") {
            Some(Self::Xlsx)
        } else if has("ppt/presentation.xml") {
            Some(Self::Pptx)
        } else if has("content.xml") && has("mimetype") {
            Some(Self::Odf)
        } else {
            None
        }
    }

    /// Whether entry `name` holds text.
    fn wants(self, name: &str) -> bool {
        let in_dir = |dir: &str, prefixes: &[&str]| {
            name.strip_prefix(dir).is_some_and(|rest| {
                !rest.contains('/')
                    && rest.ends_with(".xml")
                    && prefixes.iter().any(|p| rest.starts_with(p))
            })
        };
        match self {
            Self::Docx => in_dir(
                "word/",
                &[
                    "document.xml",
                    "header",
                    "footer",
                    "footnotes.xml",
                    "endnotes.xml",
                    "comments.xml",
                ],
            ),
            Self::Xlsx => name == "xl/sharedStrings.xml" || in_dir("xl/worksheets/", &["sheet"]),
            Self::Pptx => {
                in_dir("ppt/slides/", &["slide"]) || in_dir("ppt/notesSlides/", &["notesSlide"])
            }
            Self::Odf => name == "content.xml",
        }
    }

    fn rules(self) -> Rules {
        match self {
            Self::Docx => Rules {
                text_in: Some(&["t"]),
                line_end: &["p"],
                tab: &["tab"],
                line_break: &["br", "cr"],
                space: &[],
            },
            Self::Xlsx => Rules {
                text_in: Some(&["t"]),
                line_end: &["si", "is"],
                tab: &[],
                line_break: &[],
                space: &[],
            },
            Self::Pptx => Rules {
                text_in: Some(&["t"]),
                line_end: &["p"],
                tab: &[],
                line_break: &["br"],
                space: &[],
            },
            Self::Odf => Rules {
                text_in: None,
                line_end: &["p", "h"],
                tab: &["tab"],
                line_break: &["line-break"],
                space: &["s"],
            },
        }
    }
}

/// The text of the office document `data` (a zip) into `sink`; a zip that is no office
/// document gives none.
pub(super) fn text(data: &[u8], sink: &mut Sink, budget: &mut Budget) -> Result<(), Stop> {
    let Ok(mut zip) = zip::ZipArchive::new(Cursor::new(data)) else {
        return Ok(());
    };
    if zip.len() > MAX_ZIP_ENTRIES {
        return Ok(());
    }
    budget.step(zip.len() as u64)?;
    let names: Vec<String> = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .collect();
    let Some(format) = Format::of(&names) else {
        return Ok(());
    };
    let rules = format.rules();
    for (i, name) in names.iter().enumerate() {
        if !format.wants(name) {
            continue;
        }
        budget.check_time()?;
        let limit = MAX_ZIP_ENTRY_INFLATE.min(budget.inflate_left());
        let Ok(entry) = zip.by_index(i) else {
            continue;
        };
        let mut xml = Vec::new();
        // One byte past the limit tells an entry at the limit from one over it.
        let read = entry.take(limit as u64 + 1).read_to_end(&mut xml);
        // What was inflated is charged, read or not, so that many bombs add up.
        budget.inflated(xml.len().min(limit))?;
        if read.is_err() {
            continue;
        }
        if xml.len() > limit {
            // Over the entry bound: skipped. Over the message's budget: nothing more fits.
            if limit < MAX_ZIP_ENTRY_INFLATE {
                return Err(Stop::Limit);
            }
            continue;
        }
        xml_text(&String::from_utf8_lossy(&xml), &rules, sink, budget)?;
    }
    Ok(())
}

/// The text of one XML part under `rules`. Malformed XML ends the part's text where the
/// parser stops.
fn xml_text(xml: &str, rules: &Rules, sink: &mut Sink, budget: &mut Budget) -> Result<(), Stop> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = false;
    // Depth inside text elements (they do not nest in these formats, but a file may).
    let mut inside = 0usize;
    let capture = |inside: usize| rules.text_in.is_none() || inside > 0;
    loop {
        budget.step(1)?;
        let Ok(event) = reader.read_event() else {
            break;
        };
        match event {
            Event::Start(e) => {
                let local = e.local_name();
                let name: &str = local.as_ref();
                if rules.text_in.is_some_and(|t| t.contains(&name)) {
                    inside += 1;
                }
            }
            Event::Empty(e) => {
                let local = e.local_name();
                let name: &str = local.as_ref();
                if rules.tab.contains(&name) {
                    sink.push_char('\t')?;
                } else if rules.line_break.contains(&name) || rules.line_end.contains(&name) {
                    sink.push_char('\n')?;
                } else if rules.space.contains(&name) {
                    sink.push_char(' ')?;
                }
            }
            Event::End(e) => {
                let local = e.local_name();
                let name: &str = local.as_ref();
                if rules.text_in.is_some_and(|t| t.contains(&name)) {
                    inside = inside.saturating_sub(1);
                }
                if rules.line_end.contains(&name) && !sink.ends_with_space() {
                    sink.push_char('\n')?;
                }
            }
            Event::Text(t) if capture(inside) => sink.push(&t.xml10_content())?,
            Event::CData(t) if capture(inside) => sink.push(&t.xml10_content())?,
            Event::GeneralRef(r) if capture(inside) => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    sink.push_char(c)?;
                } else if let Some(s) = quick_xml::escape::resolve_xml_entity(&r) {
                    sink.push(s)?;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{binary_text, Budget};
    use crate::samples::{docx, odt, pptx, xlsx, zip};
    use std::io::{Cursor, Write};
    use std::time::{Duration, Instant};

    #[test]
    fn office_documents_give_their_text() {
        let d = binary_text(
            &docx(&["Invoice for Zebulon & Co", "second paragraph"]),
            &mut Budget::for_message(),
        );
        assert!(
            d.text.contains("Invoice for Zebulon & Co\n"),
            "{:?}",
            d.text
        );
        assert!(d.text.contains("second paragraph"), "{:?}", d.text);
        assert!(
            !d.text.contains("HYPERLINK"),
            "field codes are not text: {:?}",
            d.text
        );
        let x = binary_text(
            &xlsx(&["Budget 2026", "Total <net>"]),
            &mut Budget::for_message(),
        );
        assert!(
            x.text.contains("Budget 2026\nTotal <net>\n"),
            "{:?}",
            x.text
        );
        assert!(x.text.contains("inline cell"), "{:?}", x.text);
        let p = binary_text(&pptx("Roadmap slide"), &mut Budget::for_message());
        assert!(p.text.contains("Roadmap slide"), "{:?}", p.text);
        let o = binary_text(
            &odt(&["Minutes of the meeting", "Ünïcode"]),
            &mut Budget::for_message(),
        );
        assert!(
            o.text.contains("Minutes of the meeting\nÜnïcode"),
            "{:?}",
            o.text
        );
    }

    #[test]
    fn other_zips_and_broken_zips_give_no_text() {
        let z = zip(&[("notes.txt", b"plain words")]);
        assert_eq!(binary_text(&z, &mut Budget::for_message()).text, "");
        let good = docx(&["Hello truncated docx"]);
        for end in (0..good.len()).step_by(7) {
            let _ = binary_text(&good[..end], &mut Budget::for_message());
        }
        for i in (0..good.len()).step_by(11) {
            let mut bad = good.clone();
            bad[i] ^= 0xa5;
            let _ = binary_text(&bad, &mut Budget::for_message());
        }
        // Malformed XML inside a valid zip.
        let z = zip(&[(
            "word/document.xml",
            b"<w:document><w:t>kept</w:t><w:t>unclosed <<&bogus; </w:p>",
        )]);
        let e = binary_text(&z, &mut Budget::for_message());
        assert!(e.text.contains("kept"), "{:?}", e.text);
    }

    #[test]
    fn a_zip_bomb_stops_at_the_entry_bound() {
        // A document.xml inflating to 40 MiB (over the 32 MiB entry bound) from a few
        // dozen KiB, then a header with real text.
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file("word/document.xml", opts).expect("start");
        w.write_all(b"<w:document><w:t>bombtext ").expect("write");
        let spaces = vec![b' '; 1 << 20];
        for _ in 0..40 {
            w.write_all(&spaces).expect("write");
        }
        w.write_all(b"</w:t></w:document>").expect("write");
        w.start_file("word/header1.xml", opts).expect("start");
        w.write_all(b"<w:hdr><w:p><w:t>header survives</w:t></w:p></w:hdr>")
            .expect("write");
        let data = w.finish().expect("finish").into_inner();
        assert!(data.len() < 1 << 20, "{}", data.len());
        let started = Instant::now();
        let e = binary_text(&data, &mut Budget::for_message());
        assert!(!e.text.contains("bombtext"));
        assert!(e.text.contains("header survives"), "{:?}", e.text);
        assert!(started.elapsed() < Duration::from_secs(30));
        // A small message budget stops it earlier still.
        let e = binary_text(
            &data,
            &mut Budget::with(1 << 20, 1 << 20, Duration::from_secs(60)),
        );
        assert!(!e.text.contains("bombtext"));
    }
}
