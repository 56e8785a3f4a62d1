//! The corpus in `tests/corpus/`: every message analyses, round-trips through the cache
//! format, has a consistent part tree, and several have hand-checked sections.
//!
//! The same messages are compared with Dovecot by `tests/dovecot_diff.py`.

use std::path::PathBuf;

use mailfleet_mime::{analyze, section, Body, MessageSummary, Part, SectionKind};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("corpus file"))
        })
        .collect()
}

fn load(name: &str) -> (Vec<u8>, MessageSummary) {
    let (_, raw) = corpus()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no corpus message {name}"));
    let summary = analyze(&raw);
    (raw, summary)
}

fn get(raw: &[u8], summary: &MessageSummary, path: &[u32], kind: SectionKind) -> String {
    let bytes = section(raw, summary, path, kind).unwrap_or_else(|| panic!("no section {path:?}"));
    String::from_utf8(bytes).expect("utf-8 section")
}

/// Offsets are ordered, inside the message, and children lie inside their parent's body.
fn check_part(part: &Part, lo: u64, hi: u64, len: u64) {
    assert!(
        lo <= part.header_start && part.header_start <= part.body_start,
        "{part:?}"
    );
    assert!(
        part.body_start <= part.body_end && part.body_end <= hi && hi <= len,
        "{part:?}"
    );
    match &part.body {
        Body::Multipart { parts } => {
            assert!(!parts.is_empty());
            let mut prev = part.body_start;
            for child in parts {
                check_part(child, prev, part.body_end, len);
                prev = child.body_end;
            }
        }
        Body::Message { message, .. } => check_part(message, part.body_start, part.body_end, len),
        Body::Basic | Body::Text { .. } => {}
    }
}

#[test]
fn corpus_is_large_enough() {
    assert!(corpus().len() >= 50);
}

#[test]
fn every_message_analyses_and_round_trips() {
    for (name, raw) in corpus() {
        let summary = analyze(&raw);
        assert_eq!(summary.size, raw.len() as u64, "{name}");
        check_part(&summary.root, 0, raw.len() as u64, raw.len() as u64);
        assert_eq!(
            summary.root.body_end,
            raw.len() as u64,
            "{name}: the root body runs to the end"
        );
        let bytes = summary.to_bytes();
        let back = MessageSummary::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, summary, "{name}");
        // Every conversion is total.
        let _ = mailfleet_mime::imap::encode_envelope_bytes(&summary.envelope);
        let _ = mailfleet_mime::imap::encode_body_structure_bytes(&summary.root, true);
        assert!(
            section(&raw, &summary, &[1], SectionKind::Full).is_some(),
            "{name}: part 1 exists"
        );
    }
}

/// A cheap deterministic fuzzer: truncations and byte changes of every corpus message must
/// still analyse (no panic), keep their invariants and encode.
#[test]
fn mutated_messages_never_break_analysis() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let interesting = b"-\r\n:;\"\\()<>@,=*'%\0\xff ";
    for (name, raw) in corpus() {
        // Fewer rounds for the very large messages keep the test quick in debug builds.
        let rounds = if raw.len() > 65_536 { 4 } else { 40 };
        let step = (raw.len() / rounds).max(1);
        let mut inputs: Vec<Vec<u8>> = (0..raw.len())
            .step_by(step)
            .map(|n| raw[..n].to_vec())
            .collect();
        for _ in 0..rounds {
            let mut m = raw.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % m.len().max(1);
                let b = interesting[(next() as usize) % interesting.len()];
                match next() % 3 {
                    0 if !m.is_empty() => m[at] = b,
                    1 => m.insert(at.min(m.len()), b),
                    _ if !m.is_empty() => {
                        m.remove(at);
                    }
                    _ => {}
                }
            }
            inputs.push(m);
        }
        for input in inputs {
            let summary = analyze(&input);
            check_part(&summary.root, 0, input.len() as u64, input.len() as u64);
            let _ = mailfleet_mime::imap::encode_body_structure_bytes(&summary.root, true);
            let _ = mailfleet_mime::imap::encode_envelope_bytes(&summary.envelope);
            assert_eq!(
                MessageSummary::from_bytes(&summary.to_bytes()).unwrap(),
                summary,
                "{name}"
            );
        }
    }
}

#[test]
fn sections_of_a_simple_message() {
    let (raw, s) = load("01-plain-ascii");
    let body = "Hi Bob,\r\n\r\nAre you free for lunch on Friday?\r\n\r\nAlice\r\n";
    assert_eq!(get(&raw, &s, &[], SectionKind::Text), body);
    assert_eq!(
        get(&raw, &s, &[1], SectionKind::Full),
        body,
        "part 1 of a single-part message is its body"
    );
    assert_eq!(
        get(
            &raw,
            &s,
            &[],
            SectionKind::HeaderFields(vec!["subject".into(), "FROM".into()])
        ),
        "From: Alice Example <alice@example.com>\r\nSubject: Lunch on Friday?\r\n\r\n"
    );
    let header = get(&raw, &s, &[], SectionKind::Header);
    assert!(header.starts_with("Return-Path: <alice@example.com>\r\nReceived: from mx.example.com"));
    assert!(header.ends_with("Content-Transfer-Encoding: 7bit\r\n\r\n"));
    let not = get(
        &raw,
        &s,
        &[],
        SectionKind::HeaderFieldsNot(vec!["received".into(), "return-path".into()]),
    );
    assert!(
        not.starts_with("Date: Mon, 15 Jan 2024 10:30:00 +0100\r\n"),
        "{not}"
    );
    assert_eq!(section(&raw, &s, &[1], SectionKind::Header), None);
}

#[test]
fn sections_of_nested_multiparts() {
    let (raw, s) = load("04-mixed-alt-related-3-levels");
    assert_eq!(
        get(&raw, &s, &[1, 1], SectionKind::Full),
        "Here are the mockups. See the inline preview.\r\n"
    );
    assert_eq!(
        get(&raw, &s, &[1, 2, 1], SectionKind::Full),
        "<p>Here are the mockups.</p><img src=\"cid:preview@studio.example\">\r\n"
    );
    assert_eq!(
        get(&raw, &s, &[1, 2, 2], SectionKind::Full),
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk\r\n+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    );
    assert_eq!(
        get(&raw, &s, &[1, 2, 2], SectionKind::Mime),
        "Content-Type: image/png; name=\"preview.png\"\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <preview@studio.example>\r\nContent-Disposition: inline; filename=\"preview.png\"\r\n\r\n"
    );
    assert!(get(&raw, &s, &[2], SectionKind::Full).starts_with("JVBERi0xLjQK"));
    assert!(get(&raw, &s, &[2], SectionKind::Full).ends_with("UChKTS4pTVEw0jM0"));
    assert!(get(&raw, &s, &[1], SectionKind::Full).starts_with("--alt-boundary\r\n"));
    assert_eq!(section(&raw, &s, &[3], SectionKind::Full), None);
    assert_eq!(section(&raw, &s, &[1, 2, 3], SectionKind::Full), None);
    assert_eq!(
        section(&raw, &s, &[2, 1], SectionKind::Full),
        None,
        "a leaf has no subparts"
    );
}

#[test]
fn sections_of_an_encapsulated_message() {
    let (raw, s) = load("14-message-rfc822-forward");
    let inner_header = "Date: Mon, 15 Jan 2024 10:30:00 +0100\r\nFrom: Alice Example <alice@example.com>\r\nTo: Bob Example <bob@example.net>\r\nSubject: Lunch on Friday?\r\nMessage-ID: <20240115093000.A1B2@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n";
    let inner_text = "Are you free for lunch on Friday?\r\n";
    assert_eq!(get(&raw, &s, &[2], SectionKind::Header), inner_header);
    assert_eq!(get(&raw, &s, &[2], SectionKind::Text), inner_text);
    assert_eq!(
        get(&raw, &s, &[2], SectionKind::Full),
        format!("{inner_header}{inner_text}")
    );
    assert_eq!(
        get(&raw, &s, &[2, 1], SectionKind::Full),
        inner_text,
        "2.1 is the body of the inner message"
    );
    assert_eq!(get(&raw, &s, &[2, 1], SectionKind::Mime), inner_header);
    assert_eq!(
        get(
            &raw,
            &s,
            &[2],
            SectionKind::HeaderFields(vec!["Subject".into()])
        ),
        "Subject: Lunch on Friday?\r\n\r\n"
    );
    assert!(get(&raw, &s, &[2], SectionKind::Mime).starts_with("Content-Type: message/rfc822;"));
    assert_eq!(
        section(&raw, &s, &[1], SectionKind::Text),
        None,
        "TEXT needs a message/rfc822 part"
    );
    assert_eq!(section(&raw, &s, &[2, 2], SectionKind::Full), None);

    let env = match &s.root.parts()[1].body {
        Body::Message {
            envelope, lines, ..
        } => {
            assert_eq!(*lines, 9);
            envelope.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        env.subject.as_ref().and_then(|v| v.as_str()),
        Some("Lunch on Friday?")
    );
}

#[test]
fn sections_of_a_message_that_is_an_encapsulated_message() {
    let (raw, s) = load("15-message-rfc822-nested-twice");
    assert!(get(&raw, &s, &[1], SectionKind::Full).starts_with("From: b@example.com\r\n"));
    assert_eq!(get(&raw, &s, &[1, 1], SectionKind::Full), "middle note");
    assert_eq!(
        get(&raw, &s, &[1, 2, 1], SectionKind::Full),
        "the original body"
    );
    assert_eq!(
        get(&raw, &s, &[1, 2], SectionKind::Text),
        "the original body"
    );
    assert!(get(&raw, &s, &[1], SectionKind::Header)
        .starts_with("From: b@example.com\r\nTo: c@example.com\r\n"));
    assert!(get(&raw, &s, &[1, 2], SectionKind::Header)
        .ends_with("In-Reply-To: <x@example.com>\r\n\r\n"));
}

#[test]
fn sections_of_broken_structures() {
    // A part header cut by the next boundary: its last line break belongs to the boundary.
    let (raw, s) = load("40-header-cut-by-boundary");
    assert_eq!(
        get(&raw, &s, &[1], SectionKind::Mime),
        "Content-Type: text/plain\r\nContent-Disposition: inline"
    );
    assert_eq!(get(&raw, &s, &[1], SectionKind::Full), "");
    assert_eq!(
        get(&raw, &s, &[2], SectionKind::Full),
        "Subject: encapsulated header cut short\r\nFrom: x@example.com\r\n"
    );
    assert_eq!(get(&raw, &s, &[3], SectionKind::Full), "normal part");

    // A multipart without parts still has the empty part 1 its BODYSTRUCTURE shows.
    let (raw, s) = load("37-empty-multipart");
    assert_eq!(get(&raw, &s, &[1], SectionKind::Full), "");

    // No blank line: everything is header, the text is empty, no blank line is invented.
    let (raw, s) = load("32-header-only");
    assert_eq!(get(&raw, &s, &[], SectionKind::Header).len(), raw.len());
    assert_eq!(get(&raw, &s, &[], SectionKind::Text), "");
    assert_eq!(
        get(
            &raw,
            &s,
            &[],
            SectionKind::HeaderFields(vec!["subject".into()])
        ),
        "Subject: no blank line at all\r\n"
    );

    // Missing final boundary: the last part runs to the end.
    let (raw, s) = load("28-missing-final-boundary");
    assert_eq!(
        get(&raw, &s, &[2], SectionKind::Full),
        "two, and the message ends here\r\n"
    );
}

#[test]
fn envelopes_and_decoded_fields() {
    let (_, s) = load("10-rfc2047-display-names");
    let from = s.decoded.from.as_ref().unwrap();
    assert_eq!(from.name.as_deref(), Some("Renée François"));
    assert_eq!(from.mailbox.as_deref(), Some("renee"));
    assert_eq!(from.host.as_deref(), Some("example.fr"));
    assert_eq!(
        s.decoded.to.as_ref().unwrap().name.as_deref(),
        Some("Παναγωητής")
    );
    assert_eq!(s.decoded.subject.as_deref(), Some("Grüße"));
    assert_eq!(
        s.envelope.from[0].name.as_ref().and_then(|n| n.as_str()),
        Some("=?UTF-8?Q?Ren=C3=A9e_Fran=C3=A7ois?="),
        "ENVELOPE stays raw"
    );

    let (_, s) = load("09-rfc2047-subjects-charsets");
    assert_eq!(
        s.decoded.subject.as_deref(),
        Some("Café crème— déjà vu“quoted” and plain")
    );

    let (_, s) = load("24-in-reply-to-references");
    assert_eq!(s.decoded.base_subject, "Lunch on Friday?");
    assert_eq!(s.decoded.date, Some(1_706_983_200));
    assert_eq!(
        s.envelope.in_reply_to.as_ref().and_then(|v| v.as_str()),
        Some("<reply-1@example.com> <20240115093000.A1B2@example.com>")
    );

    let (_, s) = load("17-group-addresses");
    let to = &s.envelope.to;
    assert!(to[0].is_group_start());
    assert_eq!(
        to[0].mailbox.as_ref().and_then(|m| m.as_str()),
        Some("Engineering")
    );
    assert!(to[4].is_group_end());
    assert_eq!(
        to[5].mailbox.as_ref().and_then(|m| m.as_str()),
        Some("outside")
    );
    assert_eq!(
        s.decoded.to.as_ref().unwrap().mailbox.as_deref(),
        Some("alice"),
        "group markers are skipped"
    );

    let (_, s) = load("18-missing-headers");
    assert!(
        s.envelope.from.is_empty() && s.envelope.subject.is_none() && s.envelope.date.is_none()
    );
    assert_eq!(s.decoded.from, None);
    assert_eq!(s.decoded.base_subject, "");
}
