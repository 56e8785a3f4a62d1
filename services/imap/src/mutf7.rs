//! Mailbox names on the wire: modified UTF-7 (RFC 3501 §5.1.3) for IMAP4rev1 clients,
//! UTF-8 for clients that sent `ENABLE UTF8=ACCEPT` (RFC 6855 §3). Free of sockets.
//!
//! Names are stored as UTF-8. The connection driver converts at the boundary only: every
//! mailbox name in a decoded command is decoded from modified UTF-7 before the session sees
//! it ([`command_in`]), and every mailbox name in a response is encoded on the way out
//! ([`response_out`]), unless the session enabled UTF8=ACCEPT. So no command handler deals
//! with the wire form, and a new command that carries a mailbox needs one line here.
//!
//! Written here rather than taken from a crate: the `utf7-imap` crate (the one on
//! crates.io) decodes leniently — it accepts base64 runs that encode printable ASCII,
//! non-zero padding bits and unpaired surrogates — and the server must refuse those
//! (RFC 3501 §5.1.3: "MUST NOT be used to represent any printing US-ASCII character which
//! can represent itself"), or two spellings would name one mailbox.

use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{Data, Response};

use crate::commands::msgext::MsgExt;
use crate::response::Resp;

/// Why a name is not valid modified UTF-7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Mutf7Error {
    #[error("a character outside printable US-ASCII")]
    NotAscii,
    #[error("an '&' sequence without its closing '-'")]
    Unterminated,
    #[error("an invalid modified BASE64 character")]
    BadBase64,
    #[error("leftover bits in a modified BASE64 run")]
    BadPadding,
    #[error("a printable US-ASCII character encoded in modified BASE64")]
    EncodedAscii,
    #[error("an unpaired UTF-16 surrogate")]
    BadSurrogate,
    #[error("an empty modified BASE64 run or two adjacent runs")]
    NotShortest,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn b64_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b',' => 63,
        _ => return None,
    } as u32)
}

/// Encodes a UTF-8 name in modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    let mut run: Vec<u16> = Vec::new();
    let flush = |run: &mut Vec<u16>, out: &mut String| {
        if run.is_empty() {
            return;
        }
        out.push('&');
        let (mut bits, mut n) = (0u32, 0u32);
        for unit in run.drain(..) {
            bits = (bits << 16) | u32::from(unit);
            n += 16;
            while n >= 6 {
                n -= 6;
                out.push(B64[((bits >> n) & 63) as usize] as char);
            }
            bits &= (1 << n) - 1;
        }
        if n > 0 {
            out.push(B64[((bits << (6 - n)) & 63) as usize] as char);
        }
        out.push('-');
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut run, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Decodes a modified UTF-7 name into UTF-8, strictly: the input must be the one spelling
/// [`encode`] would produce for its result.
pub fn decode(wire: &str) -> Result<String, Mutf7Error> {
    let bytes = wire.as_bytes();
    let mut out = String::with_capacity(wire.len());
    let mut i = 0;
    // Whether the previous item was a base64 run: "&AOQ-&APY-" must be one run.
    let mut after_run = false;
    while i < bytes.len() {
        let c = bytes[i];
        if !(0x20..=0x7e).contains(&c) {
            return Err(Mutf7Error::NotAscii);
        }
        if c != b'&' {
            out.push(c as char);
            after_run = false;
            i += 1;
            continue;
        }
        let end = bytes[i + 1..]
            .iter()
            .position(|b| *b == b'-')
            .map(|p| i + 1 + p)
            .ok_or(Mutf7Error::Unterminated)?;
        let run = &bytes[i + 1..end];
        i = end + 1;
        if run.is_empty() {
            out.push('&');
            after_run = false;
            continue;
        }
        if after_run {
            return Err(Mutf7Error::NotShortest);
        }
        after_run = true;
        let (mut bits, mut n) = (0u32, 0u32);
        let mut units: Vec<u16> = Vec::with_capacity(run.len() * 6 / 16);
        for b in run {
            let v = b64_value(*b).ok_or(Mutf7Error::BadBase64)?;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 16 {
                n -= 16;
                units.push(((bits >> n) & 0xffff) as u16);
                bits &= (1 << n) - 1;
            }
        }
        // At most 5 bits of padding, all zero (RFC 2152's rule, kept by RFC 3501).
        if n >= 6 || bits != 0 {
            return Err(Mutf7Error::BadPadding);
        }
        for ch in char::decode_utf16(units.iter().copied()) {
            let ch = ch.map_err(|_| Mutf7Error::BadSurrogate)?;
            if (' '..='~').contains(&ch) {
                return Err(Mutf7Error::EncodedAscii);
            }
            out.push(ch);
        }
    }
    Ok(out)
}

/// The text of a mailbox name as the client sent it: `None` for the INBOX atom, `Some(Err)`
/// for octets that are not UTF-8 (a literal may hold any), never a valid name.
fn raw_text(m: &Mailbox<'_>) -> Option<Result<String, ()>> {
    match m {
        Mailbox::Inbox => None,
        Mailbox::Other(o) => Some(String::from_utf8(o.as_ref().to_vec()).map_err(|_| ())),
    }
}

fn raw_name(m: &Mailbox<'_>) -> Option<String> {
    raw_text(m)?.ok()
}

/// Decodes one mailbox argument (modified UTF-7 unless `mutf7` is false, when it must be
/// UTF-8 without control characters, RFC 6855 §3); `None` when it is not valid.
fn mailbox_in(m: Mailbox<'static>, mutf7: bool) -> Option<Mailbox<'static>> {
    let raw = match raw_text(&m) {
        None => return Some(m),
        Some(Err(())) => return None,
        Some(Ok(raw)) => raw,
    };
    if !mutf7 {
        return (!raw.chars().any(char::is_control)).then_some(m);
    }
    let name = decode(&raw).ok()?;
    if name == raw {
        return Some(m);
    }
    Mailbox::try_from(name).ok()
}

fn list_mailbox_in(m: ListMailbox<'static>, mutf7: bool) -> Option<ListMailbox<'static>> {
    let raw = match &m {
        ListMailbox::Token(t) => String::from_utf8(t.as_ref().to_vec()).ok()?,
        ListMailbox::String(s) => String::from_utf8(s.as_ref().to_vec()).ok()?,
    };
    if !mutf7 {
        return (!raw.chars().any(char::is_control)).then_some(m);
    }
    let name = decode(&raw).ok()?;
    if name == raw {
        return Some(m);
    }
    ListMailbox::try_from(name).ok()
}

/// A command with its mailbox names decoded from modified UTF-7 (`mutf7`: a session without
/// UTF8=ACCEPT) or checked as UTF-8 (with it), or `Err` with the command when one is not
/// valid.
pub fn command_in(
    cmd: Command<'static>,
    mutf7: bool,
) -> Result<Command<'static>, Box<Command<'static>>> {
    let mailbox_in = |m: Mailbox<'static>| mailbox_in(m, mutf7);
    let list_mailbox_in = |m: ListMailbox<'static>| list_mailbox_in(m, mutf7);
    let Command { tag, body } = cmd;
    let converted = match body {
        CommandBody::Select {
            ref mailbox,
            ref parameters,
        } => mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Select {
            mailbox,
            parameters: parameters.clone(),
        }),
        CommandBody::Examine {
            ref mailbox,
            ref parameters,
        } => mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Examine {
            mailbox,
            parameters: parameters.clone(),
        }),
        CommandBody::Create { ref mailbox } => {
            mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Create { mailbox })
        }
        CommandBody::Delete { ref mailbox } => {
            mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Delete { mailbox })
        }
        CommandBody::Rename { ref from, ref to } => {
            match (mailbox_in(from.clone()), mailbox_in(to.clone())) {
                (Some(from), Some(to)) => Some(CommandBody::Rename { from, to }),
                _ => None,
            }
        }
        CommandBody::Subscribe { ref mailbox } => {
            mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Subscribe { mailbox })
        }
        CommandBody::Unsubscribe { ref mailbox } => {
            mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Unsubscribe { mailbox })
        }
        CommandBody::List {
            ref reference,
            ref mailbox_wildcard,
        } => match (
            mailbox_in(reference.clone()),
            list_mailbox_in(mailbox_wildcard.clone()),
        ) {
            (Some(reference), Some(mailbox_wildcard)) => Some(CommandBody::List {
                reference,
                mailbox_wildcard,
            }),
            _ => None,
        },
        CommandBody::Lsub {
            ref reference,
            ref mailbox_wildcard,
        } => match (
            mailbox_in(reference.clone()),
            list_mailbox_in(mailbox_wildcard.clone()),
        ) {
            (Some(reference), Some(mailbox_wildcard)) => Some(CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            }),
            _ => None,
        },
        CommandBody::Status {
            ref mailbox,
            ref item_names,
        } => mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Status {
            mailbox,
            item_names: item_names.clone(),
        }),
        CommandBody::Append {
            ref mailbox,
            ref flags,
            ref date,
            ref message,
        } => mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Append {
            mailbox,
            flags: flags.clone(),
            date: date.clone(),
            message: message.clone(),
        }),
        CommandBody::Copy {
            ref sequence_set,
            ref mailbox,
            uid,
        } => mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Copy {
            sequence_set: sequence_set.clone(),
            mailbox,
            uid,
        }),
        CommandBody::Move {
            ref sequence_set,
            ref mailbox,
            uid,
        } => mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::Move {
            sequence_set: sequence_set.clone(),
            mailbox,
            uid,
        }),
        CommandBody::GetQuotaRoot { ref mailbox } => {
            mailbox_in(mailbox.clone()).map(|mailbox| CommandBody::GetQuotaRoot { mailbox })
        }
        ref other => Some(other.clone()),
    };
    match converted {
        Some(body) => Ok(Command { tag, body }),
        None => Err(Box::new(Command { tag, body })),
    }
}

/// [`command_in`] for the commands of [`crate::commands::msgext`]: MULTIAPPEND's and
/// REPLACE's mailbox name sits in the APPENDs they were split into (the other commands
/// there carry none). `Err` with the first command whose name is not valid.
pub fn message_ext_in(ext: MsgExt, mutf7: bool) -> Result<MsgExt, Box<Command<'static>>> {
    Ok(match ext {
        MsgExt::MultiAppend { tag, messages } => MsgExt::MultiAppend {
            tag,
            messages: messages
                .into_iter()
                .map(|m| command_in(m, mutf7))
                .collect::<Result<_, _>>()?,
        },
        MsgExt::Replace {
            tag,
            uid,
            number,
            append,
        } => MsgExt::Replace {
            tag,
            uid,
            number,
            append: command_in(append, mutf7)?,
        },
        MsgExt::Append { cmd } => MsgExt::Append {
            cmd: command_in(cmd, mutf7)?,
        },
        // Without UTF8=ACCEPT the session refuses the command (BAD) whatever its names.
        ext @ MsgExt::Utf8 { .. } if mutf7 => ext,
        MsgExt::Utf8 { tag, inner } => MsgExt::Utf8 {
            tag,
            inner: Box::new(message_ext_in(*inner, mutf7)?),
        },
        other => other,
    })
}

/// A mailbox name of a response as the wire needs it, or `None` when it goes as it is:
/// modified UTF-7 for a session without UTF8=ACCEPT; for one with it, a quoted UTF-8 string
/// (RFC 6855 §3) rather than the literal the codec would pick for a non-ASCII string.
fn mailbox_out(m: &Mailbox<'static>, mutf7: bool) -> Option<Mailbox<'static>> {
    use imap_codec::imap_types::core::{AString, IString};
    use imap_codec::imap_types::extensions::utf8::QuotedUtf8;
    use imap_codec::imap_types::mailbox::MailboxOther;
    let name = raw_name(m)?;
    if mutf7 {
        let wire = encode(&name);
        return (wire != name)
            .then(|| Mailbox::try_from(wire).ok())
            .flatten();
    }
    if name.is_ascii() {
        return None;
    }
    let quoted = QuotedUtf8::try_from(name).ok()?;
    MailboxOther::try_from(AString::String(IString::QuotedUtf8(quoted)))
        .ok()
        .map(Mailbox::Other)
}

/// The response with its mailbox names as the wire needs them (see [`mailbox_out`]);
/// `None` when nothing changes (the caller sends it unchanged).
pub fn response_out(r: &Resp, mutf7: bool) -> Option<Resp> {
    let Resp::Typed(Response::Data(d)) = r else {
        return None;
    };
    let d = match d {
        Data::List {
            items,
            delimiter,
            mailbox,
        } => Data::List {
            items: items.clone(),
            delimiter: *delimiter,
            mailbox: mailbox_out(mailbox, mutf7)?,
        },
        Data::Lsub {
            items,
            delimiter,
            mailbox,
        } => Data::Lsub {
            items: items.clone(),
            delimiter: *delimiter,
            mailbox: mailbox_out(mailbox, mutf7)?,
        },
        Data::Status { mailbox, items } => Data::Status {
            mailbox: mailbox_out(mailbox, mutf7)?,
            items: items.clone(),
        },
        Data::QuotaRoot { mailbox, roots } => Data::QuotaRoot {
            mailbox: mailbox_out(mailbox, mutf7)?,
            roots: roots.clone(),
        },
        _ => return None,
    };
    Some(Resp::Typed(Response::Data(d)))
}

impl crate::session::Session {
    /// Whether mailbox names travel as modified UTF-7 (the client did not enable
    /// UTF8=ACCEPT).
    pub fn mutf7_names(&self) -> bool {
        !self.enabled.utf8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_mailbox(cmd: &Command<'static>) -> String {
        match &cmd.body {
            CommandBody::Append { mailbox, .. } => crate::commands::mailbox_name(mailbox),
            other => panic!("not an APPEND: {other:?}"),
        }
    }

    #[test]
    fn multiappend_and_replace_names_are_decoded() {
        use crate::commands::msgext::preparse;
        let ext = preparse(b"a APPEND Entw&APw-rfe {1}\r\nx {1}\r\ny\r\n").expect("parsed");
        let Ok(MsgExt::MultiAppend { messages, .. }) = message_ext_in(ext, true) else {
            panic!("not converted")
        };
        assert!(messages.iter().all(|m| append_mailbox(m) == "Entwürfe"));
        let ext = preparse(b"r UID REPLACE 3 &ZeVnLIqe- {1}\r\nx\r\n").expect("parsed");
        let Ok(MsgExt::Replace { append, .. }) = message_ext_in(ext, true) else {
            panic!("not converted")
        };
        assert_eq!(append_mailbox(&append), "日本語");
        // Not valid modified UTF-7: refused; with UTF8=ACCEPT the same name is literal.
        let bad = b"b APPEND Entw&APw {1}\r\nx {1}\r\ny\r\n";
        assert!(message_ext_in(preparse(bad).expect("parsed"), true).is_err());
        let Ok(MsgExt::MultiAppend { messages, .. }) =
            message_ext_in(preparse(bad).expect("parsed"), false)
        else {
            panic!("not kept")
        };
        assert_eq!(append_mailbox(&messages[0]), "Entw&APw");
        // Inside the UTF8 data form (UTF8=ACCEPT enabled: names are UTF-8, `&` is itself).
        let ext = preparse(b"u APPEND Tom&Jerry UTF8 (~{1}\r\nx)\r\n").expect("parsed");
        let Ok(MsgExt::Utf8 { inner, .. }) = message_ext_in(ext, false) else {
            panic!("not converted")
        };
        let MsgExt::Append { cmd } = *inner else {
            panic!("not an APPEND")
        };
        assert_eq!(append_mailbox(&cmd), "Tom&Jerry");
    }

    #[test]
    fn rfc3501_examples() {
        // RFC 3501 §5.1.3's example, and the usual German "Entwürfe".
        assert_eq!(
            decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").as_deref(),
            Ok("~peter/mail/台北/日本語")
        );
        assert_eq!(
            encode("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(decode("Entw&APw-rfe").as_deref(), Ok("Entwürfe"));
        assert_eq!(encode("Tom & Jerry"), "Tom &- Jerry");
        assert_eq!(decode("Tom &- Jerry").as_deref(), Ok("Tom & Jerry"));
        assert_eq!(encode("INBOX"), "INBOX");
        assert_eq!(decode("").as_deref(), Ok(""));
    }

    #[test]
    fn non_bmp_and_mixed_round_trip() {
        for s in [
            "😀",
            "a😀b",
            "Ä/Ö/Ü",
            "日本語&English",
            "ÿ",
            "\u{7f}",
            "\u{1}x",
            "&&&",
            "x\u{10ffff}",
        ] {
            let w = encode(s);
            assert!(w.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{w}");
            assert_eq!(decode(&w).as_deref(), Ok(s), "{s} -> {w}");
        }
        assert_eq!(encode("😀"), "&2D3eAA-");
    }

    #[test]
    fn invalid_forms_are_refused() {
        use Mutf7Error::*;
        let cases = [
            ("Entwürfe", NotAscii),
            ("tab\there", NotAscii),
            ("&APw", Unterminated),
            ("a&", Unterminated),
            ("&AP.-", BadBase64),
            ("&AP/-", BadBase64),
            ("&APx-", BadPadding),
            ("&AP-", BadPadding),
            ("&A-", BadPadding),
            ("&AGE-", EncodedAscii),
            ("&ACY-", EncodedAscii),
            ("&2D0-", BadSurrogate),
            ("&3gA-", BadSurrogate),
            ("&APw-&APw-", NotShortest),
        ];
        for (wire, err) in cases {
            assert_eq!(decode(wire), Err(err), "{wire}");
        }
        // An "&-" between two runs is fine: it is a literal '&'.
        assert_eq!(decode("&APw-&-&APw-").as_deref(), Ok("ü&ü"));
    }

    #[test]
    fn every_encoding_decodes_and_is_unique() {
        // Each BMP character alone and next to ASCII.
        for cp in (0x80u32..0xd800).step_by(7).chain(0xe000..0x10000) {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let s = format!("a{c}b{c}{c}");
            assert_eq!(decode(&encode(&s)).as_deref(), Ok(s.as_str()));
        }
    }

    #[test]
    fn commands_are_decoded_and_responses_encoded() {
        use imap_codec::decode::Decoder;
        use imap_codec::imap_types::IntoStatic;
        let parse = |s: &[u8]| {
            imap_codec::CommandCodec::default()
                .decode(s)
                .expect("parses")
                .1
                .into_static()
        };
        let c =
            command_in(parse(b"a RENAME \"Entw&APw-rfe\" Archiv/&AMQ-\r\n"), true).expect("valid");
        match c.body {
            CommandBody::Rename { from, to } => {
                assert_eq!(crate::commands::mailbox_name(&from), "Entwürfe");
                assert_eq!(crate::commands::mailbox_name(&to), "Archiv/Ä");
            }
            other => panic!("{other:?}"),
        }
        let c = command_in(parse(b"a LIST \"\" &APw-*\r\n"), true).expect("valid");
        assert!(matches!(c.body, CommandBody::List { .. }));
        assert!(command_in(parse(b"a CREATE &AGE-\r\n"), true).is_err());
        assert!(command_in(parse(b"a SELECT \"\xc3\xbc\"\r\n"), true).is_err());
        assert!(command_in(parse(b"a COPY 1 &APw\r\n"), true).is_err());
        // UTF8=ACCEPT: UTF-8 passes, other octets and control characters do not.
        assert!(command_in(parse(b"a SELECT \"\xc3\xbc\"\r\n"), false).is_ok());
        assert!(command_in(parse(b"a SELECT {1}\r\n\xff\r\n"), false).is_err());
        assert!(command_in(parse(b"a SELECT {3}\r\na\tb\r\n"), false).is_err());
        // Commands without mailboxes pass through.
        assert!(command_in(parse(b"a NOOP\r\n"), true).is_ok());

        let r = crate::response::data(Data::Status {
            mailbox: Mailbox::try_from("Entwürfe".to_string()).expect("name"),
            items: vec![].into(),
        });
        let out = response_out(&r, true).expect("converted");
        assert_eq!(
            crate::response::encode(&out),
            b"* STATUS Entw&APw-rfe ()\r\n".to_vec()
        );
        // UTF8=ACCEPT: a quoted UTF-8 string, not a literal.
        let out = response_out(&r, false).expect("quoted");
        assert_eq!(
            crate::response::encode(&out),
            "* STATUS \"Entwürfe\" ()\r\n".as_bytes().to_vec()
        );
        let ascii = crate::response::data(Data::Status {
            mailbox: Mailbox::try_from("Sent".to_string()).expect("name"),
            items: vec![].into(),
        });
        assert!(response_out(&ascii, true).is_none() && response_out(&ascii, false).is_none());
        let plain = crate::response::data(Data::Exists(3));
        assert!(response_out(&plain, true).is_none());
    }
}
