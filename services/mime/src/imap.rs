//! The summary as imap-types values: ENVELOPE, BODY and BODYSTRUCTURE (RFC 9051 section 7.5.2).
//!
//! imap-types refuses invalid strings at construction. Header bytes become a quoted string
//! when they are plain text and a literal otherwise (8-bit, CR, LF); the only octet no IMAP
//! string may carry is NUL, which is replaced by U+FFFD first. So every conversion here is
//! total: a broken message still gets a valid answer.
//!
//! Text parts without a `charset` parameter get `charset=us-ascii` (the RFC 2045 default, and
//! what Dovecot sends), and BODYSTRUCTURE always carries all four extension fields (md5 or
//! parameters, disposition, language, location), NIL when absent.

use std::num::NonZeroU32;

use imap_codec::encode::Encoder;
use imap_codec::imap_types::body::{
    BasicFields, Body as ImapBody, BodyStructure, Disposition as ImapDisposition, Language,
    Location, MultiPartExtensionData, SinglePartExtensionData, SpecificFields,
};
use imap_codec::imap_types::core::{IString, Literal, NString, Vec1};
use imap_codec::imap_types::envelope::{Address as ImapAddress, Envelope as ImapEnvelope};
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::ResponseCodec;

use crate::address::Address;
use crate::envelope::Envelope;
use crate::octets::Octets;
use crate::params::Param;
use crate::part::{Body, Part};

/// An IMAP string for any bytes.
fn istring(bytes: &[u8]) -> IString<'static> {
    let mut clean = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if b == 0 {
            clean.extend_from_slice("\u{fffd}".as_bytes());
        } else {
            clean.push(b);
        }
    }
    // Without NUL, a literal accepts any octets, so this cannot fail. Should it, an empty
    // literal (valid by definition: it has no octets) keeps the answer well-formed.
    IString::try_from(clean).unwrap_or_else(|_| IString::from(Literal::unvalidated(Vec::new())))
}

fn nstring(value: Option<&Octets>) -> NString<'static> {
    NString(value.map(|v| istring(v.as_bytes())))
}

fn u32_saturating(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn address(a: &Address) -> ImapAddress<'static> {
    ImapAddress {
        name: nstring(a.name.as_ref()),
        adl: nstring(a.route.as_ref()),
        mailbox: nstring(a.mailbox.as_ref()),
        host: nstring(a.host.as_ref()),
    }
}

fn addresses(list: &[Address]) -> Vec<ImapAddress<'static>> {
    list.iter().map(address).collect()
}

/// ENVELOPE.
pub fn envelope(env: &Envelope) -> ImapEnvelope<'static> {
    ImapEnvelope {
        date: nstring(env.date.as_ref()),
        subject: nstring(env.subject.as_ref()),
        from: addresses(&env.from),
        sender: addresses(&env.sender),
        reply_to: addresses(&env.reply_to),
        to: addresses(&env.to),
        cc: addresses(&env.cc),
        bcc: addresses(&env.bcc),
        in_reply_to: nstring(env.in_reply_to.as_ref()),
        message_id: nstring(env.message_id.as_ref()),
    }
}

fn params(list: &[Param], default_charset: bool) -> Vec<(IString<'static>, IString<'static>)> {
    let mut out: Vec<_> = list
        .iter()
        .map(|p| (istring(p.name.as_bytes()), istring(p.value.as_bytes())))
        .collect();
    if default_charset && !list.iter().any(|p| p.name.eq_ignore_ascii_case(b"charset")) {
        out.push((istring(b"charset"), istring(b"us-ascii")));
    }
    out
}

/// Disposition, language and location: the extension fields every part has.
fn disposition_tail(part: &Part) -> ImapDisposition<'static> {
    ImapDisposition {
        disposition: part
            .disposition
            .as_ref()
            .map(|d| (istring(d.kind.as_bytes()), params(&d.params, false))),
        tail: Some(Language {
            language: part
                .language
                .iter()
                .map(|l| istring(l.as_bytes()))
                .collect(),
            tail: Some(Location {
                location: nstring(part.location.as_ref()),
                extensions: Vec::new(),
            }),
        }),
    }
}

/// BODYSTRUCTURE (`extended`) or BODY (not `extended`) of a part: the root for the message,
/// or any part for a nested structure.
pub fn body_structure(part: &Part, extended: bool) -> BodyStructure<'static> {
    match &part.body {
        Body::Multipart { parts } => {
            let bodies: Vec<_> = parts.iter().map(|p| body_structure(p, extended)).collect();
            let bodies =
                Vec1::try_from(bodies).unwrap_or_else(|_| Vec1::from(empty_text(extended)));
            BodyStructure::Multi {
                bodies,
                subtype: istring(part.media_subtype.as_bytes()),
                extension_data: extended.then(|| MultiPartExtensionData {
                    parameter_list: params(&part.params, false),
                    tail: Some(disposition_tail(part)),
                }),
            }
        }
        body => {
            let text = matches!(body, Body::Text { .. });
            let basic = BasicFields {
                parameter_list: params(&part.params, text),
                id: nstring(part.id.as_ref()),
                description: nstring(part.description.as_ref()),
                content_transfer_encoding: istring(part.encoding_or_default().as_bytes()),
                size: u32_saturating(part.size()),
            };
            let specific = match body {
                Body::Text { lines } => SpecificFields::Text {
                    subtype: istring(part.media_subtype.as_bytes()),
                    number_of_lines: u32_saturating(*lines),
                },
                Body::Message {
                    lines,
                    envelope: env,
                    message,
                } => SpecificFields::Message {
                    envelope: Box::new(envelope(env)),
                    body_structure: Box::new(body_structure(message, extended)),
                    number_of_lines: u32_saturating(*lines),
                },
                Body::Basic | Body::Multipart { .. } => SpecificFields::Basic {
                    r#type: istring(part.media_type.as_bytes()),
                    subtype: istring(part.media_subtype.as_bytes()),
                },
            };
            BodyStructure::Single {
                body: ImapBody { basic, specific },
                extension_data: extended.then(|| SinglePartExtensionData {
                    md5: nstring(part.md5.as_ref()),
                    tail: Some(disposition_tail(part)),
                }),
            }
        }
    }
}

/// The part sent for a multipart that has none (never built by analysis, kept for safety).
fn empty_text(extended: bool) -> BodyStructure<'static> {
    BodyStructure::Single {
        body: ImapBody {
            basic: BasicFields {
                parameter_list: vec![(istring(b"charset"), istring(b"us-ascii"))],
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istring(b"7bit"),
                size: 0,
            },
            specific: SpecificFields::Text {
                subtype: istring(b"plain"),
                number_of_lines: 0,
            },
        },
        extension_data: extended.then(|| SinglePartExtensionData {
            md5: NString(None),
            tail: Some(ImapDisposition {
                disposition: None,
                tail: Some(Language {
                    language: Vec::new(),
                    tail: Some(Location {
                        location: NString(None),
                        extensions: Vec::new(),
                    }),
                }),
            }),
        }),
    }
}

/// Encodes one FETCH data item with imap-codec and returns its value on the wire, without
/// the item name (`(...)`), literals included as `{n}\r\n...`.
fn encode_item(item: MessageDataItem<'static>, name: &[u8]) -> Vec<u8> {
    let response = Response::Data(Data::Fetch {
        seq: NonZeroU32::MIN,
        items: Vec1::from(item),
    });
    let wire = ResponseCodec::default().encode(&response).dump();
    let mut prefix = b"* 1 FETCH (".to_vec();
    prefix.extend_from_slice(name);
    prefix.push(b' ');
    wire.strip_prefix(prefix.as_slice())
        .and_then(|rest| rest.strip_suffix(b")\r\n"))
        .map(<[u8]>::to_vec)
        .unwrap_or(wire)
}

/// The ENVELOPE as imap-codec writes it on the wire.
pub fn encode_envelope_bytes(env: &Envelope) -> Vec<u8> {
    encode_item(MessageDataItem::Envelope(envelope(env)), b"ENVELOPE")
}

/// BODYSTRUCTURE (`extended`) or BODY as imap-codec writes it on the wire.
pub fn encode_body_structure_bytes(part: &Part, extended: bool) -> Vec<u8> {
    let structure = body_structure(part, extended);
    if extended {
        encode_item(MessageDataItem::BodyStructure(structure), b"BODYSTRUCTURE")
    } else {
        encode_item(MessageDataItem::Body(structure), b"BODY")
    }
}

/// [`encode_envelope_bytes`] as text (bytes that are not UTF-8 shown as U+FFFD).
pub fn encode_envelope(env: &Envelope) -> String {
    String::from_utf8_lossy(&encode_envelope_bytes(env)).into_owned()
}

/// [`encode_body_structure_bytes`] as text (bytes that are not UTF-8 shown as U+FFFD).
pub fn encode_body_structure(part: &Part, extended: bool) -> String {
    String::from_utf8_lossy(&encode_body_structure_bytes(part, extended)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::analyze;

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    #[test]
    fn simple_message() {
        let s = analyze(&crlf("Subject: hi\nFrom: a@b.c\n\nbody\n"));
        assert_eq!(
            encode_envelope(&s.envelope),
            r#"(NIL "hi" ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) NIL NIL NIL NIL NIL)"#
        );
        assert_eq!(
            encode_body_structure(&s.root, true),
            r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1 NIL NIL NIL NIL)"#
        );
        assert_eq!(
            encode_body_structure(&s.root, false),
            r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1)"#
        );
    }

    #[test]
    fn multipart_with_extension_data() {
        let s = analyze(&crlf(
            "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/pdf; name=x.pdf\nContent-Disposition: attachment; filename=x.pdf\nContent-Language: en, de\nContent-Location: http://x/\nContent-ID: <i@x>\nContent-Transfer-Encoding: base64\n\nAAAA\n--b--\n",
        ));
        assert_eq!(
            encode_body_structure(&s.root, true),
            r#"(("application" "pdf" ("name" "x.pdf") "<i@x>" NIL "base64" 4 NIL ("attachment" ("filename" "x.pdf")) ("en" "de") "http://x/") "mixed" ("boundary" "b") NIL NIL NIL)"#
        );
        assert_eq!(
            encode_body_structure(&s.root, false),
            r#"(("application" "pdf" ("name" "x.pdf") "<i@x>" NIL "base64" 4) "mixed")"#
        );
    }

    #[test]
    fn strings_that_cannot_be_quoted_become_literals() {
        let s = analyze(b"Subject: caf\xc3\xa9\r\nFrom: \"a\0b\" <x@y>\r\n\r\n");
        let wire = encode_envelope_bytes(&s.envelope);
        assert!(
            wire.starts_with(b"(NIL {5}\r\ncaf\xc3\xa9 (({5}\r\na\xef\xbf\xbdb NIL"),
            "{}",
            String::from_utf8_lossy(&wire)
        );
    }
}
