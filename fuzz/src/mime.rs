//! The MIME summariser (`mailfleet_mime::analyze`), which every delivered message goes
//! through: it never panics, its offsets stay inside the message and inside their parent,
//! the cached form round-trips, and every section of every part can be cut out.

use mailfleet_mime::{analyze, section, Body, MessageSummary, Part, SectionKind};

pub fn summary(input: &[u8]) -> crate::Outcome {
    let s = analyze(input);
    assert_eq!(
        s.size,
        input.len() as u64,
        "RFC822.SIZE is the message size"
    );
    let mut paths = Vec::new();
    let mut shape = String::new();
    walk(
        &s.root,
        (0, input.len() as u64),
        &mut Vec::new(),
        &mut paths,
        &mut shape,
        0,
    );
    let cached = s.to_bytes();
    match MessageSummary::from_bytes(&cached) {
        Ok(back) => assert_eq!(back, s, "summary round trip"),
        Err(e) => panic!("summary does not read back: {e}"),
    }
    assert_eq!(
        section(input, &s, &[], SectionKind::Full).as_deref(),
        Some(input),
        "BODY[] is the message"
    );
    let names = vec!["subject".to_string(), "from".to_string()];
    for path in paths.iter().take(200) {
        for kind in [
            SectionKind::Full,
            SectionKind::Header,
            SectionKind::Text,
            SectionKind::Mime,
            SectionKind::HeaderFields(names.clone()),
            SectionKind::HeaderFieldsNot(names.clone()),
        ] {
            let _ = section(input, &s, path, kind);
        }
    }
    let _ = mailfleet_mime::imap::encode_envelope(&s.envelope);
    let _ = mailfleet_mime::imap::encode_body_structure(&s.root, true);
    shape.truncate(120);
    shape
}

/// Checks offsets and collects the numeric section path of every part.
fn walk(
    part: &Part,
    (start, end): (u64, u64),
    path: &mut Vec<u32>,
    paths: &mut Vec<Vec<u32>>,
    shape: &mut String,
    depth: usize,
) {
    assert!(
        start <= part.header_start
            && part.header_start <= part.body_start
            && part.body_start <= part.body_end
            && part.body_end <= end,
        "offsets {}..{}..{} outside {start}..{end}",
        part.header_start,
        part.body_start,
        part.body_end
    );
    assert!(
        depth <= 2 * mailfleet_mime::MAX_NESTING + 2,
        "nesting is capped"
    );
    match &part.body {
        Body::Multipart { parts } => {
            assert!(!parts.is_empty(), "a multipart always has a part");
            assert!(
                parts.len() <= mailfleet_mime::MAX_PARTS,
                "part count is capped"
            );
            shape.push('(');
            for (i, p) in parts.iter().enumerate() {
                path.push(i as u32 + 1);
                paths.push(path.clone());
                walk(
                    p,
                    (part.body_start, part.body_end),
                    path,
                    paths,
                    shape,
                    depth + 1,
                );
                path.pop();
            }
            shape.push(')');
        }
        Body::Message { message, .. } => {
            shape.push('M');
            walk(
                message,
                (part.body_start, part.body_end),
                path,
                paths,
                shape,
                depth + 1,
            );
        }
        Body::Text { .. } => shape.push('t'),
        Body::Basic => shape.push('b'),
    }
}
