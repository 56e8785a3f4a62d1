//! PDF text, with lopdf: the strings the page content streams show (`Tj`, `TJ`, `'`,
//! `"`), decoded with each font's encoding (its `/ToUnicode` CMap, or its simple
//! encoding), page after page, as `lopdf::Document::extract_text` does, but within a
//! [`Budget`] and with every decompression bounded.
//!
//! lopdf decodes object streams while it loads a file, before any page is looked at; it
//! bounds each stream by `LoadOptions::max_decompressed_size`. Mailfleet sets that bound
//! so that all of a file's streams together stay under [`MAX_PDF_LOAD_INFLATE`]: the
//! file's `stream` keywords are counted first (every stream has one, and it cannot be
//! written another way), and the load bound is that total shared among them.

use super::{Budget, Sink, Stop};
use lopdf::content::Content;
use lopdf::{Document, Encoding, LoadOptions, Object};
use std::collections::{BTreeMap, HashMap};

/// Bytes all the object and cross-reference streams of one PDF may decompress to while
/// it is loaded: 64 MiB.
pub const MAX_PDF_LOAD_INFLATE: usize = 64 * 1024 * 1024;

/// Streams (counted as `stream` keywords, `endstream` included) a PDF may have for its
/// text to be extracted: 20,000. More, and the load bound per stream would be too small
/// to be of use.
pub const MAX_PDF_STREAM_KEYWORDS: usize = 20_000;

/// Pages whose text is extracted: the first 2,000.
pub const MAX_PDF_PAGES: usize = 2_000;

/// Bytes a font's encoding (its `/ToUnicode` CMap) may decompress to: 256 KiB.
pub const MAX_CMAP_INFLATE: usize = 256 * 1024;

/// Distinct fonts whose encodings are decoded per PDF: 256 (so at most 64 MiB of CMaps).
/// Text in further fonts is read as Latin-1.
pub const MAX_PDF_FONTS: usize = 256;

/// The text of the PDF `data` into `sink`.
pub(super) fn text(data: &[u8], sink: &mut Sink, budget: &mut Budget) -> Result<(), Stop> {
    let keywords = memchr_count(data, b"stream");
    if keywords > MAX_PDF_STREAM_KEYWORDS {
        return Ok(());
    }
    let per_stream = (MAX_PDF_LOAD_INFLATE / keywords.max(1)).min(16 * 1024 * 1024);
    let options = LoadOptions {
        max_decompressed_size: Some(per_stream),
        ..LoadOptions::default()
    };
    // A file lopdf cannot read (truncated, garbage, encrypted with a password) has no text.
    let Ok(doc) = Document::load_mem_with_options(data, options) else {
        return Ok(());
    };
    budget.check_time()?;
    // Encodings per font dictionary (by address: the same object on every page that
    // uses it), so a font shared by a thousand pages is decoded once.
    let mut encodings: HashMap<usize, Option<Encoding<'_>>> = HashMap::new();
    for (_, page) in doc.get_pages().into_iter().take(MAX_PDF_PAGES) {
        budget.step(1)?;
        let fonts = doc.get_page_fonts(page).unwrap_or_default();
        let mut by_name: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for (name, font) in fonts {
            let key = std::ptr::from_ref(font) as usize;
            if !encodings.contains_key(&key) {
                // lopdf does not say how much a font's decoding decompressed: the fonts
                // decoded are counted instead, each bounded by MAX_CMAP_INFLATE.
                if encodings.len() >= MAX_PDF_FONTS {
                    continue;
                }
                budget.step(64)?;
                let enc = font
                    .get_font_encoding_with_limit(&doc, MAX_CMAP_INFLATE)
                    .ok();
                encodings.insert(key, enc);
            }
            by_name.insert(name, key);
        }
        // lopdf fails here only when the page's content is over the bound (a stream it
        // cannot decode is taken as it is): the decompression done up to the bound is
        // spent, and the same stream may be shared by every further page, so stop.
        let Ok(content) = doc.get_page_content_with_limit(page, budget.inflate_left()) else {
            return Err(Stop::Limit);
        };
        budget.inflated(content.len())?;
        budget.step(content.len() as u64 / 64)?;
        let Ok(content) = Content::decode(&content) else {
            continue;
        };
        let mut current: Option<&Encoding<'_>> = None;
        for op in &content.operations {
            budget.step(1)?;
            match op.operator.as_str() {
                "Tf" => {
                    current = op
                        .operands
                        .first()
                        .and_then(|o| o.as_name().ok())
                        .and_then(|n| by_name.get(n))
                        .and_then(|k| encodings.get(k))
                        .and_then(Option::as_ref);
                }
                "Tj" | "TJ" => show(sink, current, &op.operands)?,
                "'" => {
                    newline(sink)?;
                    show(sink, current, &op.operands)?;
                }
                "\"" => {
                    newline(sink)?;
                    show(
                        sink,
                        current,
                        op.operands.get(2).map(std::slice::from_ref).unwrap_or(&[]),
                    )?;
                }
                "T*" | "ET" => newline(sink)?,
                // A move to another line (a vertical offset) ends the line.
                "Td" | "TD" => {
                    let dy = op.operands.get(1).and_then(|o| o.as_float().ok());
                    if dy.is_some_and(|y| y != 0.0) {
                        newline(sink)?;
                    }
                }
                _ => {}
            }
        }
        newline(sink)?;
    }
    Ok(())
}

fn newline(sink: &mut Sink) -> Result<(), Stop> {
    if sink.ends_with_space() {
        Ok(())
    } else {
        sink.push_char('\n')
    }
}

/// The strings among `operands` (a `TJ` array's too), decoded; a large negative
/// adjustment in a `TJ` array is a word space, as lopdf reads it.
fn show(sink: &mut Sink, enc: Option<&Encoding<'_>>, operands: &[Object]) -> Result<(), Stop> {
    for o in operands {
        match o {
            Object::String(bytes, _) => {
                let mut s = String::new();
                match enc {
                    Some(e) if e.write_to_string(bytes, &mut s).is_ok() => {}
                    // No usable font encoding: the bytes as Latin-1 where printable, which
                    // is what simple fonts without an encoding mostly hold.
                    _ => {
                        s.clear();
                        s.extend(
                            bytes
                                .iter()
                                .map(|b| char::from(*b))
                                .filter(|c| !c.is_control() || c.is_whitespace()),
                        );
                    }
                }
                sink.push(&s)?;
            }
            Object::Array(items) => {
                for item in items {
                    match item {
                        Object::String(..) => show(sink, enc, std::slice::from_ref(item))?,
                        Object::Integer(i) if *i < -100 => sink.push_char(' ')?,
                        Object::Real(r) if *r < -100.0 => sink.push_char(' ')?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Occurrences of `needle` in `hay`.
fn memchr_count(hay: &[u8], needle: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while let Some(p) = hay[i..].windows(needle.len()).position(|w| w == needle) {
        n += 1;
        i += p + needle.len();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::super::{binary_text, Budget};
    use crate::samples::{pdf, pdf_with_content};
    use std::time::{Duration, Instant};

    #[test]
    fn extracts_the_shown_strings() {
        for compressed in [false, true] {
            let data = pdf(
                &["Quarterly report", "Zanzibar (pineapple) \\ totals"],
                compressed,
            );
            let e = binary_text(&data, &mut Budget::for_message());
            assert!(e.complete);
            assert!(e.text.contains("Quarterly report"), "{:?}", e.text);
            assert!(
                e.text.contains("Zanzibar (pineapple) \\ totals"),
                "{:?}",
                e.text
            );
            // The lines stay apart: a search does not match across them.
            assert!(!e.text.contains("reportZanzibar"), "{:?}", e.text);
        }
    }

    #[test]
    fn truncated_and_garbage_pdfs_give_no_panic_and_end() {
        let good = pdf(&["Hello truncated world"], true);
        let started = Instant::now();
        for end in (0..good.len()).step_by(3) {
            let _ = binary_text(&good[..end], &mut Budget::for_message());
        }
        // Flipped bytes all over the file.
        for i in (0..good.len()).step_by(5) {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            let _ = binary_text(&bad, &mut Budget::for_message());
        }
        let mut garbage = b"%PDF-1.7\n".to_vec();
        let mut x: u32 = 12345;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            garbage.push((x >> 16) as u8);
        }
        let e = binary_text(&garbage, &mut Budget::for_message());
        assert!(e.text.len() < 1000);
        // Deep nesting, an xref pointing nowhere, a stream whose length lies.
        let nested = format!(
            "%PDF-1.4\n1 0 obj {}{} endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let _ = binary_text(nested.as_bytes(), &mut Budget::for_message());
        let lying = b"%PDF-1.4\n1 0 obj << /Length 999999999 >> stream\nabc\nendstream endobj\nstartxref\n999999\n%%EOF";
        let _ = binary_text(lying, &mut Budget::for_message());
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn a_compressed_content_bomb_stops_at_the_byte_budget() {
        // 48 MiB of text operators compressing to a few hundred KiB.
        let mut content = Vec::with_capacity(48 << 20);
        content.extend_from_slice(b"BT /F1 12 Tf 72 720 Td (bombword) Tj ET\n");
        while content.len() < 48 << 20 {
            content.extend_from_slice(b"                                ");
        }
        let data = pdf_with_content(&content, true);
        assert!(data.len() < 1 << 20, "{}", data.len());
        let started = Instant::now();
        let e = binary_text(
            &data,
            &mut Budget::with(16 << 20, 1 << 30, Duration::from_secs(60)),
        );
        assert!(e.complete);
        // The page is over the budget: nothing of it is decoded.
        assert!(!e.text.contains("bombword"));
        assert!(started.elapsed() < Duration::from_secs(30));
        // Within a larger budget the same page is read.
        let e = binary_text(&data, &mut Budget::for_message());
        assert!(
            e.text.contains("bombword"),
            "{:?}",
            &e.text[..e.text.len().min(100)]
        );
    }

    #[test]
    fn the_clock_marks_the_text_incomplete() {
        let data = pdf(&["late"], false);
        let e = binary_text(&data, &mut Budget::with(1 << 20, 1 << 20, Duration::ZERO));
        assert!(!e.complete);
    }

    #[test]
    fn counts_keywords() {
        assert_eq!(
            super::memchr_count(b"stream endstream streamx", b"stream"),
            3
        );
    }
}
