//! Small real documents built in code, for tests of attachment text extraction here and
//! in other crates (feature `samples`): a PDF written by hand (objects, cross-reference
//! table and trailer with their true offsets), OOXML and ODF documents as zips, and a
//! message carrying one as a base64 attachment.

use std::io::{Cursor, Write};
use zip::write::SimpleFileOptions;

/// A one-page PDF showing `lines` in Helvetica (WinAnsiEncoding), one per line; with
/// `compressed`, the page content is a FlateDecode stream.
pub fn pdf(lines: &[&str], compressed: bool) -> Vec<u8> {
    let mut content = String::from("BT /F1 12 Tf 72 720 Td 14 TL\n");
    for (i, l) in lines.iter().enumerate() {
        let escaped = l
            .replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)");
        if i > 0 {
            content.push_str("T*\n");
        }
        content.push_str(&format!("({escaped}) Tj\n"));
    }
    content.push_str("ET\n");
    pdf_with_content(content.as_bytes(), compressed)
}

/// A one-page PDF whose page content stream is `content`.
pub fn pdf_with_content(content: &[u8], compressed: bool) -> Vec<u8> {
    let (stream, filter) = if compressed {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(content).expect("in memory");
        (z.finish().expect("in memory"), " /Filter /FlateDecode")
    } else {
        (content.to_vec(), "")
    };
    let mut out: Vec<u8> = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>"
            .to_vec(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
        {
            let mut s = format!("<< /Length {}{filter} >>\nstream\n", stream.len()).into_bytes();
            s.extend_from_slice(&stream);
            s.extend_from_slice(b"\nendstream");
            s
        },
    ];
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// A zip of `(name, content)` entries, deflated.
pub fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).expect("in memory");
        w.write_all(data).expect("in memory");
    }
    w.finish().expect("in memory").into_inner()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const CONTENT_TYPES: &[u8] = br#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>"#;

/// A Word document (docx) with one paragraph per item of `paragraphs`, each split into
/// two runs at its middle (as Word does when formatting changes), so a word can span runs.
pub fn docx(paragraphs: &[&str]) -> Vec<u8> {
    let mut body = String::new();
    for p in paragraphs {
        let mid = (0..=p.len() / 2)
            .rev()
            .find(|i| p.is_char_boundary(*i))
            .unwrap_or(0);
        body.push_str(&format!(
            "<w:p><w:r><w:t xml:space=\"preserve\">{}</w:t></w:r><w:r><w:rPr><w:b/></w:rPr><w:t>{}</w:t></w:r></w:p>",
            xml_escape(&p[..mid]),
            xml_escape(&p[mid..])
        ));
    }
    let doc = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}<w:p><w:r><w:instrText>HYPERLINK "x"</w:instrText></w:r></w:p></w:body></w:document>"#
    );
    zip(&[
        ("[Content_Types].xml", CONTENT_TYPES),
        ("word/document.xml", doc.as_bytes()),
    ])
}

/// An Excel workbook (xlsx) whose shared strings are `cells`.
pub fn xlsx(cells: &[&str]) -> Vec<u8> {
    let si: String = cells
        .iter()
        .map(|c| format!("<si><t>{}</t></si>", xml_escape(c)))
        .collect();
    let shared = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="{n}" uniqueCount="{n}">{si}</sst>"#,
        n = cells.len()
    );
    zip(&[
        ("[Content_Types].xml", CONTENT_TYPES),
        ("xl/workbook.xml", b"<workbook/>"),
        ("xl/sharedStrings.xml", shared.as_bytes()),
        (
            "xl/worksheets/sheet1.xml",
            br#"<worksheet><sheetData><row><c t="inlineStr"><is><t>inline cell</t></is></c></row></sheetData></worksheet>"#,
        ),
    ])
}

/// A PowerPoint deck (pptx) with one slide holding `text`.
pub fn pptx(text: &str) -> Vec<u8> {
    let slide = format!(
        r#"<p:sld xmlns:p="p" xmlns:a="a"><p:cSld><p:spTree><p:sp><p:txBody><a:p><a:r><a:t>{}</a:t></a:r></a:p></p:txBody></p:sp></p:spTree></p:cSld></p:sld>"#,
        xml_escape(text)
    );
    zip(&[
        ("[Content_Types].xml", CONTENT_TYPES),
        ("ppt/presentation.xml", b"<p:presentation xmlns:p=\"p\"/>"),
        ("ppt/slides/slide1.xml", slide.as_bytes()),
    ])
}

/// An OpenDocument text (odt) with one paragraph per item of `paragraphs`.
pub fn odt(paragraphs: &[&str]) -> Vec<u8> {
    let ps: String = paragraphs
        .iter()
        .map(|p| format!("<text:p>{}</text:p>", xml_escape(p)))
        .collect();
    let content = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body><office:text>{ps}</office:text></office:body></office:document-content>"#
    );
    zip(&[
        ("mimetype", b"application/vnd.oasis.opendocument.text"),
        ("content.xml", content.as_bytes()),
    ])
}

/// A message with a short text body and `data` attached as `name` (`content_type`),
/// base64-encoded.
pub fn message_with_attachment(
    subject: &str,
    body: &str,
    content_type: &str,
    name: &str,
    data: &[u8],
) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut wrapped = String::new();
    for chunk in b64.as_bytes().chunks(76) {
        wrapped.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        wrapped.push_str("\r\n");
    }
    format!(
        "From: Ann <ann@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: {subject}\r\n\
Message-ID: <{subject}@example.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n\
--b1\r\nContent-Type: {content_type}; name=\"{name}\"\r\n\
Content-Disposition: attachment; filename=\"{name}\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n{wrapped}--b1--\r\n"
    )
    .into_bytes()
}
