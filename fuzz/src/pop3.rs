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

/// The whole POP3 server for one connection: the bytes as one client's stream through the
/// connection driver and session (USER/PASS, APOP-less AUTH PLAIN/LOGIN, the maildrop lock,
/// STAT/LIST/UIDL/RETR/TOP/DELE/RSET, pipelining) against a fresh embedded store with the
/// real authenticator (`crate::session`). Invariants: no panic; the session ends after the
/// client closes; the output is CRLF lines only, starting with the `+OK` greeting; and
/// nothing leaves the maildrop unless the client sent QUIT (RFC 1939 §6: deletion happens
/// only in the UPDATE state, which a dropped connection never reaches).
pub fn session(input: &[u8]) -> crate::Outcome {
    use mailfleet_core::shutdown::Shutdown;
    use mailfleet_pop3::{serve_connection, ConnLimits, Session, SessionConfig};
    use std::sync::Arc;
    use std::time::Duration;

    let (output, left) = crate::session::converse_then(
        input,
        |world, server| {
            let cfg = Arc::new(SessionConfig {
                hostname: "pop.example.test".into(),
                starttls: false,
                allow_plaintext_auth: true,
                max_errors: 10,
                max_messages: 1000,
            });
            let session = Session::new(
                cfg,
                world.stores.clone(),
                world.auth.clone(),
                std::net::IpAddr::from([192, 0, 2, 10]),
            );
            let limits = ConnLimits {
                max_line: 512,
                command_timeout: Duration::from_secs(30),
                tls_handshake_timeout: Duration::from_secs(5),
            };
            serve_connection(Box::new(server), session, limits, None, Shutdown::never())
        },
        |world| async move { world.inbox_count().await },
    );
    let quit = crate::lines(input).any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case(b"QUIT"));
    if !quit {
        assert_eq!(left, 3, "messages left the maildrop without QUIT");
    }
    let mut kinds = Vec::new();
    let mut rest = output.as_slice();
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("output does not end in CRLF"));
        let line = &rest[..end];
        assert!(
            !line.contains(&b'\r') && !line.contains(&b'\n'),
            "bare CR or LF in {line:?}"
        );
        if kinds.is_empty() {
            assert!(line.starts_with(b"+OK"), "greeting {line:?} is +OK");
        }
        for status in [&b"+OK"[..], b"-ERR", b"+ "] {
            if line.starts_with(status) {
                kinds.push(String::from_utf8_lossy(status).trim().to_string());
            }
        }
        rest = &rest[end + 2..];
    }
    kinds.dedup();
    format!("{},left={left}", kinds.join(","))
}
