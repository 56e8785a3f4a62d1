//! POP3 targets: the command parser, and the dot-stuffed message writer of RETR and TOP.

use mailfleet_pop3::proto::{write_message, Command};

/// Every line through `Command::parse`; then the whole input as a stored message through
/// `write_message`, which must produce CRLF lines that un-stuff back to the message.
pub fn command(input: &[u8]) -> crate::Outcome {
    let mut outcome: Vec<String> = crate::lines(input)
        .map(|l| match Command::parse(l) {
            Ok(c) => format!("{c:?}")
                .split('(')
                .next()
                .unwrap_or_default()
                .to_string(),
            Err(e) => format!("Err({e})"),
        })
        .collect();
    outcome.dedup();
    message(input);
    outcome.join(",")
}

/// The message's lines with every line end made CRLF, as `write_message` promises.
fn normalised(message: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            Some(i) => {
                lines.push(rest[..i].to_vec());
                let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
                rest = &rest[i + if crlf { 2 } else { 1 }..];
            }
            None => {
                lines.push(rest.to_vec());
                rest = &[];
            }
        }
    }
    lines
}

fn unstuffed(wire: &[u8]) -> Vec<Vec<u8>> {
    assert!(
        wire.ends_with(b".\r\n"),
        "a multi-line response ends with the dot line"
    );
    let body = &wire[..wire.len() - 3];
    let mut lines = Vec::new();
    for line in body.split_inclusive(|b| *b == b'\n') {
        let line = line
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("line {line:?} does not end in CRLF"));
        assert!(
            !line.contains(&b'\r') && !line.contains(&b'\n'),
            "no bare CR or LF on the wire"
        );
        assert_ne!(line, b".", "only the last line may be a lone dot");
        lines.push(line.strip_prefix(b".").unwrap_or(line).to_vec());
    }
    lines
}

fn message(input: &[u8]) {
    let expected = normalised(input);
    let mut all = Vec::new();
    write_message(&mut all, input, None);
    assert_eq!(unstuffed(&all), expected, "RETR un-stuffs to the message");
    for n in [0u64, 1, 3] {
        let mut top = Vec::new();
        write_message(&mut top, input, Some(n));
        let got = unstuffed(&top);
        assert!(
            expected.starts_with(&got),
            "TOP {n} sends a prefix of the message"
        );
    }
}
