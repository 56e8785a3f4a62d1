//! Property tests with structured generators: inputs built from the protocols' own tokens
//! reach deeper than random bytes. Case counts are kept small so `cargo test` stays fast;
//! the grow loop (`src/bin/grow.rs`) is the place for long runs.

use mailfleet_fuzz::{check, Target};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A line of bytes drawn mostly from the characters parsers branch on.
fn noisy_text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"<>@:;,.=+ \"\\()[]{}*%-abcAZ09".to_vec()),
            1 => any::<u8>(),
        ],
        0..40,
    )
}

fn no_panic(target: Target, input: &[u8]) -> Result<(), TestCaseError> {
    check(target, input)
        .map(|_| ())
        .map_err(|f| TestCaseError::fail(format!("{}: {}", target.name(), f.message)))
}

fn with_args(verbs: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((prop::sample::select(verbs), noisy_text()), 1..8).prop_map(|cmds| {
        let mut out = Vec::new();
        for (verb, args) in cmds {
            out.extend_from_slice(verb.as_bytes());
            out.extend_from_slice(&args);
            out.extend_from_slice(b"\r\n");
        }
        out
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn smtp_commands(input in with_args(&[
        "EHLO ", "HELO ", "MAIL FROM:<", "MAIL FROM:", "RCPT TO:<", "RCPT TO:", "DATA",
        "BDAT ", "RSET", "NOOP", "QUIT", "AUTH PLAIN ", "STARTTLS", "VRFY ",
    ])) {
        no_panic(Target::SmtpCommand, &input)?;
    }

    #[test]
    fn smtp_data(parts in prop::collection::vec(prop_oneof![
        Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), Just(b"\r".to_vec()),
        Just(b".".to_vec()), Just(b"..".to_vec()), Just(b"\r\n.\r\n".to_vec()), noisy_text(),
    ], 0..30)) {
        no_panic(Target::SmtpData, &parts.concat())?;
    }

    #[test]
    fn imap_commands(input in with_args(&[
        "a LIST ", "a LIST (SUBSCRIBED) \"\" ", "a SEARCH RETURN (", "a UID SEARCH ",
        "a FETCH 1:* ", "a LOGIN ", "a APPEND INBOX {3}\r\nabc", "a STORE 1 +FLAGS ",
        "a SELECT ", "a STATUS INBOX (", "a AUTHENTICATE PLAIN ", "DONE",
    ])) {
        no_panic(Target::ImapCodec, &input)?;
    }

    #[test]
    fn pop3_commands(input in with_args(&[
        "USER ", "PASS ", "AUTH ", "LIST ", "RETR ", "TOP ", "DELE ", "UIDL", "QUIT", ".",
    ])) {
        no_panic(Target::Pop3Command, &input)?;
    }

    #[test]
    fn sasl(mech in prop::sample::select(vec!["PLAIN", "LOGIN", "plain", "X"]),
            lines in prop::collection::vec((any::<Vec<u8>>(), any::<bool>()), 0..4)) {
        let mut input = mech.as_bytes().to_vec();
        for (bytes, encode) in lines {
            input.push(if encode { b'\n' } else { b' ' });
            if encode {
                input.extend_from_slice(mailfleet_auth::sasl::encode_base64(&bytes).as_bytes());
            } else {
                input.extend_from_slice(&bytes);
            }
        }
        no_panic(Target::Sasl, &input)?;
    }

    #[test]
    fn config_files(lines in prop::collection::vec((
        prop::sample::select(vec!["[server]", "[smtp]", "[imap]", "[storage]", "[storage.s3]",
            "hostname = ", "max_line_length = ", "listen = ", "blobs = ", "#env MAILFLEET_SMTP__",
            "#env MAILFLEET_STORAGE__S3__", "routes = { x = "]),
        noisy_text()), 0..10)) {
        let mut input = Vec::new();
        for (key, value) in lines {
            input.extend_from_slice(key.as_bytes());
            input.extend_from_slice(&value);
            input.push(b'\n');
        }
        no_panic(Target::Config, &input)?;
    }
}

/// A MIME tree: leaves, multiparts with random boundaries, encapsulated messages.
fn mime_entity() -> impl Strategy<Value = Vec<u8>> {
    let leaf = (noisy_text(), noisy_text()).prop_map(|(h, b)| {
        let mut v = b"Content-Type: text/plain; ".to_vec();
        v.extend_from_slice(&h);
        v.extend_from_slice(b"\r\n\r\n");
        v.extend_from_slice(&b);
        v
    });
    leaf.prop_recursive(6, 40, 4, |inner| {
        prop_oneof![
            (
                prop::collection::vec(inner.clone(), 0..4),
                "[-a-z0-9'()+_,./:=? ]{0,12}",
                any::<bool>()
            )
                .prop_map(|(parts, boundary, close)| {
                    let mut v = format!(
                        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\npreamble\r\n"
                    )
                    .into_bytes();
                    for p in parts {
                        v.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                        v.extend_from_slice(&p);
                        v.extend_from_slice(b"\r\n");
                    }
                    if close {
                        v.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
                    }
                    v
                }),
            inner.prop_map(|m| {
                let mut v = b"Content-Type: message/rfc822\r\n\r\nSubject: x\r\n".to_vec();
                v.extend_from_slice(&m);
                v
            }),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mime_trees(entity in mime_entity(), lf in any::<bool>()) {
        let mut raw = b"From: a@b.example\r\nMIME-Version: 1.0\r\n".to_vec();
        raw.extend_from_slice(&entity);
        if lf {
            raw.retain(|b| *b != b'\r');
        }
        no_panic(Target::MimeSummary, &raw)?;
    }
}
