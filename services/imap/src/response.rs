//! Building responses with imap-types and encoding them with imap-codec.
//!
//! Every response goes through the codec, so strings are quoted or sent as literals as
//! their content requires; nothing here formats IMAP syntax by hand.

use imap_codec::encode::Encoder;
use imap_codec::imap_types::core::{Tag, Text};
use imap_codec::imap_types::response::{Code, CodeOther, Data, Response, Status};
use imap_codec::ResponseCodec;

/// One response to send. `Raw` carries the few responses imap-types has no type for
/// (ESEARCH, RFC 4731); their text is built in [`crate::commands::extended`] from numbers
/// and the already-validated tag only.
#[derive(Clone, Debug)]
pub enum Resp {
    Typed(Response<'static>),
    Raw(Vec<u8>),
}

/// Text with anything a `text` production cannot carry (CR, LF, NUL) replaced.
fn text(s: &str) -> Text<'static> {
    let clean: String = s
        .chars()
        .map(|c| {
            if c == '\r' || c == '\n' || c == '\0' {
                ' '
            } else {
                c
            }
        })
        .collect();
    let clean = if clean.trim().is_empty() {
        "done".to_string()
    } else {
        clean
    };
    Text::try_from(clean).unwrap_or_else(|_| Text::unvalidated("done"))
}

fn status(tag: Option<Tag<'static>>, kind: Kind, code: Option<Code<'static>>, msg: &str) -> Resp {
    let t = text(msg);
    let s = match kind {
        Kind::Ok => Status::ok(tag, code, t),
        Kind::No => Status::no(tag, code, t),
        Kind::Bad => Status::bad(tag, code, t),
    };
    Resp::Typed(match s {
        Ok(s) => Response::Status(s),
        // Text was already validated; this branch keeps the function total.
        Err(_) => Response::Status(Status::Untagged(
            imap_codec::imap_types::response::StatusBody {
                kind: imap_codec::imap_types::response::StatusKind::Bad,
                code: None,
                text: Text::unvalidated("internal error"),
            },
        )),
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Ok,
    No,
    Bad,
}

pub fn ok(tag: &Tag<'static>, code: Option<Code<'static>>, msg: &str) -> Resp {
    status(Some(tag.clone()), Kind::Ok, code, msg)
}
pub fn no(tag: &Tag<'static>, code: Option<Code<'static>>, msg: &str) -> Resp {
    status(Some(tag.clone()), Kind::No, code, msg)
}
pub fn bad(tag: &Tag<'static>, msg: &str) -> Resp {
    status(Some(tag.clone()), Kind::Bad, None, msg)
}
pub fn bad_code(tag: &Tag<'static>, code: Code<'static>, msg: &str) -> Resp {
    status(Some(tag.clone()), Kind::Bad, Some(code), msg)
}
pub fn untagged_ok(code: Option<Code<'static>>, msg: &str) -> Resp {
    status(None, Kind::Ok, code, msg)
}
pub fn untagged_bad(msg: &str) -> Resp {
    status(None, Kind::Bad, None, msg)
}
pub fn bye(msg: &str) -> Resp {
    match Status::bye(None, text(msg)) {
        Ok(s) => Resp::Typed(Response::Status(s)),
        Err(_) => untagged_bad("bye"),
    }
}
pub fn data(d: Data<'static>) -> Resp {
    Resp::Typed(Response::Data(d))
}

/// A response code imap-types has no variant for (RFC 5530 codes and others).
pub fn code(name: &'static str) -> Option<Code<'static>> {
    Some(Code::Other(CodeOther::unvalidated(name.as_bytes())))
}

/// Wire bytes of one response.
pub fn encode(r: &Resp) -> Vec<u8> {
    match r {
        Resp::Typed(r) => ResponseCodec::default().encode(r).dump(),
        Resp::Raw(bytes) => bytes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_encode() {
        let tag = Tag::try_from("a1").expect("tag");
        assert_eq!(
            encode(&ok(&tag, None, "LOGIN completed")),
            b"a1 OK LOGIN completed\r\n"
        );
        assert_eq!(
            encode(&no(&tag, code("AUTHENTICATIONFAILED"), "bad\r\ninjected")),
            b"a1 NO [AUTHENTICATIONFAILED] bad  injected\r\n"
        );
        assert_eq!(encode(&bye("bye")), b"* BYE bye\r\n");
    }
}
