//! The IMAP command path the server runs on every message: imap-codec's fragmentizer frames
//! lines and literals, the command codec decodes them, and what it refuses goes through
//! Mailfleet's rewriters: ESEARCH, SEARCHRES, ESORT, CONTEXT, PARTIAL
//! (`commands::searchext`) and LIST-EXTENDED (`commands::extended`).

use imap_codec::decode::Decoder;
use imap_codec::encode::Encoder;
use imap_codec::fragmentizer::{DecodeMessageError, Fragmentizer};
use imap_codec::imap_types::command::CommandBody;
use imap_codec::CommandCodec;
use mailfleet_imap::commands::extended::{preparse, Extended};
use mailfleet_imap::commands::searchext::{self, Kind};

/// The framing limit the server uses by default (`imap.max_command_size`).
const MAX_MESSAGE: u32 = 64 * 1024;

/// Frames and decodes every message; a decoded command must encode and decode back to
/// itself, and the rewriter may only produce commands of the kind it was given, same tag.
pub fn codec(input: &[u8]) -> crate::Outcome {
    let mut frag = Fragmentizer::new(MAX_MESSAGE);
    frag.enqueue_bytes(input);
    let mut outcome = Vec::new();
    while frag.progress().is_some() {
        if !frag.is_message_complete() {
            continue;
        }
        let bytes = frag.message_bytes().to_vec();
        match frag.decode_message(&CommandCodec::default()) {
            Ok(cmd) => {
                let encoded = CommandCodec::default().encode(&cmd).dump();
                match CommandCodec::default().decode(&encoded) {
                    Ok((rest, again)) => {
                        assert!(rest.is_empty(), "encoding leaves no trailing bytes");
                        assert_eq!(again, cmd, "command round trip");
                    }
                    Err(e) => panic!("re-encoded command {encoded:?} does not decode: {e:?}"),
                }
                outcome.push(cmd.body.name().to_string());
            }
            Err(DecodeMessageError::DecodingFailure(_)) => {
                outcome.push(rewritten(&bytes));
            }
            Err(e) => outcome.push(format!("{:?}", std::mem::discriminant(&e))),
        }
    }
    outcome.dedup();
    outcome.join(",")
}

fn rewritten(bytes: &[u8]) -> String {
    let tag = bytes.split(|b| *b == b' ').next().unwrap_or_default();
    let codec = |b: &[u8]| match CommandCodec::default().decode(b) {
        Ok((b"", cmd)) => {
            use imap_codec::imap_types::IntoStatic;
            Some(cmd.into_static())
        }
        _ => None,
    };
    if let Some((cmd, ext)) = searchext::decode_message(bytes, codec) {
        assert_eq!(
            cmd.tag.as_ref().as_bytes(),
            tag,
            "a search rewrite keeps the tag"
        );
        let fits = match (&ext.kind, &cmd.body) {
            (Kind::Search(_), CommandBody::Search { .. }) => true,
            (Kind::Sort(_), CommandBody::Sort { .. }) => true,
            (Kind::CancelUpdate(_) | Kind::SaveFailed, CommandBody::Noop) => true,
            (Kind::Plain, _) => ext.saved,
            _ => false,
        };
        assert!(
            fits,
            "rewrite {:?} decoded as {}",
            ext.kind,
            cmd.body.name()
        );
        return "search-ext".into();
    }
    match preparse(bytes) {
        None => "refused".into(),
        Some(Extended::List { plain, .. }) => {
            assert!(!plain.is_empty(), "LIST-EXTENDED has at least one pattern");
            for p in &plain {
                assert!(p.starts_with(tag), "LIST rewrite keeps the tag");
                if let Ok((_, cmd)) = CommandCodec::default().decode(p) {
                    assert!(
                        matches!(cmd.body, CommandBody::List { .. }),
                        "a LIST-EXTENDED rewrite decodes as LIST, got {:?}",
                        cmd.body.name()
                    );
                }
            }
            "list-extended".into()
        }
    }
}

/// The whole IMAP server for one connection: the bytes as one client's stream through the
/// connection driver (framing, literals, limits, deadlines) and the session state machine
/// (login, SELECT, FETCH, STORE, SEARCH, LIST, APPEND, IDLE...) against a fresh embedded
/// store with the real authenticator (`crate::session`). The session must end once the
/// client has closed, without panicking, and what it sends must be well-formed responses:
/// CRLF lines, each untagged (`* `), a continuation (`+ `) or tagged with a tag the client
/// sent and a status of OK, NO or BAD; literals announced as `{n}` are skipped whole.
pub fn session(input: &[u8]) -> crate::Outcome {
    use mailfleet_core::shutdown::Shutdown;
    use mailfleet_imap::{serve_connection, ConnLimits, ImapConfig, LoginService, Session};
    use std::sync::Arc;
    use std::time::Duration;

    let output = crate::session::converse(input, |world, server| {
        let cfg = Arc::new(ImapConfig {
            hostname: "imap.example.test".into(),
            starttls: false,
            plaintext_auth_without_tls: true,
            max_message_size: 64 * 1024,
            max_failed_logins: 3,
            idle_timeout: Duration::from_secs(1800),
            user_sessions: mailfleet_imap::UserSessions::new(4),
            views: mailfleet_imap::SharedViews::new(),
            junk_training: None,
        });
        let login: Arc<dyn LoginService> = Arc::new(world.auth.clone());
        let session = Session::new(
            cfg,
            world.stores.clone(),
            login,
            std::net::IpAddr::from([192, 0, 2, 9]),
            false,
        );
        let limits = ConnLimits {
            max_literal: 64 * 1024,
            max_command: 64 * 1024 + 8192,
            max_errors: 10,
            tls_handshake_timeout: Duration::from_secs(5),
            idle_recheck: Duration::from_secs(60),
        };
        serve_connection(Box::new(server), session, limits, None, Shutdown::never())
    });
    let mut kinds = Vec::new();
    for line in response_lines(&output) {
        kinds.push(response_kind(input, &line));
    }
    kinds.dedup();
    kinds.join(",")
}

/// Splits the server's output into response lines, skipping each literal's octets.
fn response_lines(mut out: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut current = Vec::new();
    while !out.is_empty() {
        let end = out
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("output {:?} does not end in CRLF", lossy(out)));
        let piece = &out[..end];
        assert!(
            !piece.contains(&b'\n') && !piece.contains(&b'\r'),
            "bare CR or LF in {:?}",
            lossy(piece)
        );
        current.extend_from_slice(piece);
        out = &out[end + 2..];
        match literal_len(piece) {
            Some(n) => {
                assert!(
                    n <= out.len(),
                    "a literal of {n} octets announced, {} sent",
                    out.len()
                );
                out = &out[n..];
            }
            None => lines.push(std::mem::take(&mut current)),
        }
    }
    assert!(current.is_empty(), "output ends inside a response");
    lines
}

/// The length of a literal announced at the end of a line (`{n}` or `~{n}`).
fn literal_len(line: &[u8]) -> Option<usize> {
    let rest = line.strip_suffix(b"}")?;
    let open = rest.iter().rposition(|b| *b == b'{')?;
    let digits = &rest[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

/// `* EXISTS`, `+`, `OK` (tagged)...; panics on a line that is none of these.
fn response_kind(input: &[u8], line: &[u8]) -> String {
    if line == b"+" || line.starts_with(b"+ ") {
        return "+".into();
    }
    let mut words = line.split(|b| *b == b' ');
    let first = words.next().unwrap_or_default();
    if first == b"*" {
        // `* 3 EXISTS` names its kind second, `* OK ...` first.
        let a = words.next().unwrap_or_default();
        let word = if a.iter().all(u8::is_ascii_digit) {
            words.next().unwrap_or_default()
        } else {
            a
        };
        assert!(
            !word.is_empty(),
            "untagged line {:?} has no kind",
            lossy(line)
        );
        return format!("*{}", String::from_utf8_lossy(word).to_ascii_uppercase());
    }
    assert!(
        !first.is_empty() && input.windows(first.len()).any(|w| w == first),
        "tagged line {:?} carries a tag the client never sent",
        lossy(line)
    );
    let status = words.next().unwrap_or_default().to_ascii_uppercase();
    assert!(
        matches!(status.as_slice(), b"OK" | b"NO" | b"BAD"),
        "tagged line {:?} has no OK/NO/BAD status",
        lossy(line)
    );
    String::from_utf8_lossy(&status).into_owned()
}
