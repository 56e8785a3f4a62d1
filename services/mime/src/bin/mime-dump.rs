//! Prints what Mailfleet's IMAP server would send for messages in .eml files.
//!
//! ```text
//! mime-dump [--summary | --sections] FILE...
//! ```
//!
//! For each file: `ENVELOPE <value>`, `BODYSTRUCTURE <value>` and `BODY <value>` as
//! imap-codec encodes them (literals included, bytes written as they are), each item on its
//! own line; several files are separated by a line `* <file name>`. With `--summary`, the JSON
//! summary is printed instead. With `--sections`, every section a client can fetch is printed
//! as `"<section>" {n}` and its octets (or `NIL`): the message's HEADER, TEXT and
//! HEADER.FIELDS, and for every part its body and MIME header, plus HEADER and TEXT of
//! encapsulated messages. The Dovecot differential test reads this output.

use std::io::Write;
use std::process::ExitCode;

use mailfleet_mime::{analyze, imap, section, Body, MessageSummary, Part, SectionKind};

/// Every part with its IMAP part number, in the order a client would walk them.
fn numbered_parts<'a>(entity: &'a Part, prefix: &[u32], out: &mut Vec<(Vec<u32>, &'a Part)>) {
    let children: Vec<&Part> = match &entity.body {
        Body::Multipart { parts } => parts.iter().collect(),
        _ => vec![entity],
    };
    for (i, part) in children.into_iter().enumerate() {
        let mut path = prefix.to_vec();
        path.push(u32::try_from(i + 1).unwrap_or(u32::MAX));
        out.push((path.clone(), part));
        match &part.body {
            Body::Multipart { .. } if !std::ptr::eq(part, entity) => {
                numbered_parts(part, &path, out)
            }
            Body::Message { message, .. } => numbered_parts(message, &path, out),
            _ => {}
        }
    }
}

fn sections(raw: &[u8], s: &MessageSummary) -> Vec<u8> {
    let fields = || vec!["FROM".to_string(), "SUBJECT".to_string(), "TO".to_string()];
    let mut specs: Vec<(String, Vec<u32>, SectionKind)> = vec![
        (String::new(), vec![], SectionKind::Full),
        ("HEADER".into(), vec![], SectionKind::Header),
        ("TEXT".into(), vec![], SectionKind::Text),
        (
            "HEADER.FIELDS (FROM SUBJECT TO)".into(),
            vec![],
            SectionKind::HeaderFields(fields()),
        ),
        (
            "HEADER.FIELDS.NOT (FROM SUBJECT TO)".into(),
            vec![],
            SectionKind::HeaderFieldsNot(fields()),
        ),
    ];
    let mut parts = Vec::new();
    numbered_parts(&s.root, &[], &mut parts);
    for (path, part) in parts {
        let number = path
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".");
        specs.push((number.clone(), path.clone(), SectionKind::Full));
        specs.push((format!("{number}.MIME"), path.clone(), SectionKind::Mime));
        if matches!(part.body, Body::Message { .. }) {
            specs.push((
                format!("{number}.HEADER"),
                path.clone(),
                SectionKind::Header,
            ));
            specs.push((format!("{number}.TEXT"), path.clone(), SectionKind::Text));
            specs.push((
                format!("{number}.HEADER.FIELDS (SUBJECT)"),
                path,
                SectionKind::HeaderFields(vec!["Subject".into()]),
            ));
        }
    }
    let mut out = Vec::new();
    for (name, path, kind) in specs {
        out.extend_from_slice(format!("\"{name}\" ").as_bytes());
        match section(raw, s, &path, kind) {
            Some(bytes) => {
                out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(&bytes);
            }
            None => out.extend_from_slice(b"NIL"),
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn main() -> ExitCode {
    let mut summary = false;
    let mut with_sections = false;
    let mut files = Vec::new();
    for arg in std::env::args_os().skip(1) {
        if arg == "--summary" {
            summary = true;
        } else if arg == "--sections" {
            with_sections = true;
        } else if arg == "--help" || arg == "-h" {
            println!("usage: mime-dump [--summary | --sections] FILE...");
            return ExitCode::SUCCESS;
        } else {
            files.push(arg);
        }
    }
    if files.is_empty() {
        eprintln!("usage: mime-dump [--summary | --sections] FILE...");
        return ExitCode::from(2);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for file in &files {
        let raw = match std::fs::read(file) {
            Ok(raw) => raw,
            Err(err) => {
                eprintln!("mime-dump: {}: {err}", file.to_string_lossy());
                return ExitCode::FAILURE;
            }
        };
        let s = analyze(&raw);
        let mut text = Vec::new();
        if files.len() > 1 {
            text.extend_from_slice(format!("* {}\r\n", file.to_string_lossy()).as_bytes());
        }
        if summary {
            text.extend_from_slice(&s.to_bytes());
            text.extend_from_slice(b"\n");
        } else if with_sections {
            text.extend_from_slice(&sections(&raw, &s));
        } else {
            for (name, value) in [
                (&b"ENVELOPE"[..], imap::encode_envelope_bytes(&s.envelope)),
                (
                    b"BODYSTRUCTURE",
                    imap::encode_body_structure_bytes(&s.root, true),
                ),
                (b"BODY", imap::encode_body_structure_bytes(&s.root, false)),
            ] {
                text.extend_from_slice(name);
                text.push(b' ');
                text.extend_from_slice(&value);
                text.extend_from_slice(b"\r\n");
            }
        }
        if let Err(err) = out.write_all(&text) {
            eprintln!("mime-dump: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
