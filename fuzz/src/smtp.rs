//! SMTP targets: the command parser and the DATA receiver.

use mailfleet_core::Address;
use mailfleet_smtp::proto::command::{Command, CommandError, Path};
use mailfleet_smtp::proto::{DataEnd, DataReceiver};

/// Every line through `Command::parse`; a parsed address must print back to itself.
pub fn command(input: &[u8]) -> crate::Outcome {
    let mut outcome = Vec::new();
    for line in crate::lines(input) {
        let parsed = Command::parse(line);
        assert_eq!(parsed, Command::parse(line), "parsing is deterministic");
        let path = match &parsed {
            Ok(Command::Mail(p, _)) | Ok(Command::Rcpt(p, _)) => Some(p),
            _ => None,
        };
        if let Some(Path::Address(a)) = path {
            let printed = a.to_string();
            assert_eq!(
                Address::parse(&printed).as_ref(),
                Ok(a),
                "address {printed:?} re-parses to itself"
            );
        }
        outcome.push(match parsed {
            Ok(c) => format!("{:?}", std::mem::discriminant(&c)),
            Err(CommandError::Syntax(why)) => format!("Syntax({why})"),
            Err(e) => format!("{:?}", std::mem::discriminant(&e)),
        });
    }
    outcome.dedup();
    outcome.join(",")
}

fn feed_chunked(input: &[u8], max: usize, chunk: usize) -> (usize, Option<DataEnd>) {
    let mut rx = DataReceiver::new(max);
    let mut used = 0;
    for piece in input.chunks(chunk.max(1)) {
        let (n, end) = rx.feed(piece);
        assert!(n <= piece.len(), "the receiver used more than it was given");
        used += n;
        if end.is_some() {
            return (used, end);
        }
        assert_eq!(n, piece.len(), "bytes are left over only after the end");
    }
    (used, None)
}

/// Dot-stuffs `body` as a sending client would and appends the end sequence.
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !(body.is_empty() || body.ends_with(b"\r\n")) {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The DATA receiver: chunking changes nothing, DATA ends only on `<CRLF>.<CRLF>`, the size
/// limit holds, and un-stuffing inverts stuffing.
pub fn data(input: &[u8]) -> crate::Outcome {
    let max = 1 << 20;
    let whole = feed_chunked(input, max, input.len());
    for chunk in [1, 2, 3, 7, 64] {
        assert_eq!(feed_chunked(input, max, chunk), whole, "chunks of {chunk}");
    }
    let (used, end) = whole;
    if end.is_some() {
        let head = &input[..used];
        assert!(
            head == b".\r\n" || head.ends_with(b"\r\n.\r\n"),
            "DATA ended on something other than <CRLF>.<CRLF>"
        );
    }
    let small = feed_chunked(input, 16, input.len());
    assert_eq!(small.0, used, "the size limit does not move the end");
    if let (_, Some(DataEnd::Complete(body))) = &small {
        assert!(body.len() <= 16, "a complete message fits the limit");
    }
    match end {
        Some(DataEnd::Complete(body)) => {
            let mut expected = body.clone();
            if !(body.is_empty() || body.ends_with(b"\r\n")) {
                expected.extend_from_slice(b"\r\n");
            }
            let again = feed_chunked(&stuff(&body), max, usize::MAX);
            assert_eq!(
                again.1,
                Some(DataEnd::Complete(expected)),
                "stuffing the received message and receiving it again gives it back"
            );
            "complete".into()
        }
        Some(DataEnd::TooBig) => "too-big".into(),
        None => "incomplete".into(),
    }
}
