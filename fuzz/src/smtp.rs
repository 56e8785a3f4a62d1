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

/// The inbound (MX) session: the bytes as one client's stream through the connection
/// driver and session state machine, over an in-memory pipe, against a fresh embedded store
/// (`crate::session`). The session must end once the client has sent everything and
/// closed, without panicking, and every byte it sends must be a well-formed reply line.
pub fn session(input: &[u8]) -> crate::Outcome {
    let (codes, _) = run(input, false);
    codes
}

/// The submission session (587/465): as [`session`], on a connection that counts as TLS
/// (as on the implicit-TLS listener), with AUTH PLAIN/LOGIN against the real
/// authenticator. Beyond the reply syntax: a client that never authenticated (no `235`)
/// gets nothing queued and nothing delivered (RFC 6409 §4.3).
pub fn submission(input: &[u8]) -> crate::Outcome {
    let (codes, (queued, inbox)) = run(input, true);
    if !codes.split(',').any(|c| c == "235") {
        assert_eq!(queued, 0, "a message was queued without AUTH");
        assert_eq!(inbox, 3, "a message was delivered without AUTH");
    }
    codes
}

/// Runs one SMTP connection; returns the reply codes in order (deduplicated runs) and, for
/// the store left behind, the outbound queue's length and alice's INBOX count.
fn run(input: &[u8], submission: bool) -> (crate::Outcome, (usize, usize)) {
    use mailfleet_core::shutdown::Shutdown;
    use mailfleet_smtp::inbound::{serve_connection, ConnLimits, Session, SessionConfig};
    use mailfleet_smtp::pipeline::Pipeline;
    use std::sync::Arc;
    use std::time::Duration;

    let (output, left) = crate::session::converse_then(
        input,
        |world, server| {
            let cfg = Arc::new(SessionConfig {
                hostname: "mx.example.test".into(),
                max_message_size: 64 * 1024,
                max_recipients: 100,
                max_errors: 10,
                max_messages: 100,
                max_messages_per_ip_per_minute: 0,
                starttls: false,
            });
            let limits = ConnLimits {
                max_line: 4096,
                max_message_size: 64 * 1024,
                command_timeout: Duration::from_secs(300),
                data_timeout: Duration::from_secs(180),
                data_deadline: Duration::from_secs(600),
                tls_handshake_timeout: Duration::from_secs(10),
            };
            let mut session = Session::new(
                cfg,
                Pipeline::new(world.stores.clone(), "mx.example.test"),
                std::net::IpAddr::from([192, 0, 2, 7]),
            );
            if submission {
                session.set_tls("TLS1.3 (fuzz pipe)".into());
                session.enable_submission(world.auth.clone());
            }
            serve_connection(Box::new(server), session, limits, None, Shutdown::never())
        },
        |world| async move {
            let queued = world
                .stores
                .meta
                .list_outbound(mailfleet_storage::QueueId(0), usize::MAX)
                .await
                .unwrap_or_else(|e| panic!("harness: list outbound: {e}"))
                .len();
            (queued, world.inbox_count().await)
        },
    );
    let mut codes = Vec::new();
    for line in output.split_inclusive(|b| *b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "reply line {line:?} ends in CRLF");
        let body = &line[..line.len() - 2];
        assert!(!body.contains(&b'\r'), "no bare CR in {line:?}");
        assert!(
            body.len() >= 4
                && body[..3].iter().all(u8::is_ascii_digit)
                && matches!(body[3], b' ' | b'-'),
            "{line:?} is not a reply line"
        );
        codes.push(String::from_utf8_lossy(&body[..3]).into_owned());
    }
    codes.dedup();
    (codes.join(","), left)
}
