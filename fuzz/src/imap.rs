//! The IMAP command path the server runs on every message: imap-codec's fragmentizer frames
//! lines and literals, the command codec decodes them, and what it refuses goes through
//! Mailfleet's ESEARCH / LIST-EXTENDED rewriter (`commands::extended`).

use imap_codec::decode::Decoder;
use imap_codec::encode::Encoder;
use imap_codec::fragmentizer::{DecodeMessageError, Fragmentizer};
use imap_codec::imap_types::command::CommandBody;
use imap_codec::CommandCodec;
use mailfleet_imap::commands::extended::{preparse, Extended};

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
    match preparse(bytes) {
        None => "refused".into(),
        Some(Extended::Search { plain, .. }) => {
            assert!(plain.starts_with(tag), "ESEARCH rewrite keeps the tag");
            match CommandCodec::default().decode(&plain) {
                Ok((_, cmd)) => {
                    assert!(
                        matches!(cmd.body, CommandBody::Search { .. }),
                        "an ESEARCH rewrite decodes as SEARCH, got {:?}",
                        cmd.body.name()
                    );
                    "esearch".into()
                }
                Err(_) => "esearch-refused".into(),
            }
        }
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
