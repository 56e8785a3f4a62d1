//! The IMAP ENVELOPE of a message (RFC 9051 section 7.5.2), from its header fields.
//!
//! Values are kept raw, as ENVELOPE requires: no RFC 2047 decoding, only unfolded. The subject
//! and display names additionally have their whitespace collapsed, and every value loses any
//! CR or LF, which is what IMAP servers send (Dovecot does the same).

use serde::{Deserialize, Serialize};

use crate::address::{parse_address_list, Address};
use crate::header::{for_humans, without_newlines, Field};
use crate::octets::Octets;

/// The ENVELOPE structure of a message, ready to be sent.
///
/// Single-valued fields take the last occurrence of a repeated header; address fields take
/// every occurrence, in order. Sender and Reply-To are already defaulted to From when they
/// are absent or empty (RFC 9051 section 7.5.2), so the value here is what IMAP sends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Envelope {
    /// Date header, raw (not parsed: IMAP sends the sender's text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<Octets>,
    /// Subject header, raw (RFC 2047 encoded words kept), whitespace collapsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Octets>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sender: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Address>,
    /// In-Reply-To header, raw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<Octets>,
    /// Message-ID header, raw (angle brackets and any comment included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Octets>,
}

impl Envelope {
    /// Builds the envelope from the fields of a message header.
    pub(crate) fn from_fields(fields: &[Field]) -> Self {
        let mut env = Envelope::default();
        for field in fields {
            let value = &field.value;
            let name = field.name.to_ascii_lowercase();
            match name.as_slice() {
                b"date" => env.date = Some(Octets::from(without_newlines(value))),
                b"subject" => env.subject = Some(Octets::from(for_humans(value))),
                b"message-id" => env.message_id = Some(Octets::from(without_newlines(value))),
                b"in-reply-to" => env.in_reply_to = Some(Octets::from(without_newlines(value))),
                b"from" => parse_address_list(value, &mut env.from),
                b"sender" => parse_address_list(value, &mut env.sender),
                b"reply-to" => parse_address_list(value, &mut env.reply_to),
                b"to" => parse_address_list(value, &mut env.to),
                b"cc" => parse_address_list(value, &mut env.cc),
                b"bcc" => parse_address_list(value, &mut env.bcc),
                _ => {}
            }
        }
        if env.sender.is_empty() {
            env.sender = env.from.clone();
        }
        if env.reply_to.is_empty() {
            env.reply_to = env.from.clone();
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::fields;

    fn envelope(raw: &str) -> Envelope {
        Envelope::from_fields(&fields(raw.as_bytes(), 0..raw.len()))
    }

    #[test]
    fn last_single_field_wins_and_addresses_accumulate() {
        let env = envelope(
            "Subject: first\r\nSubject:  second\r\n  part\r\nFrom: a@b\r\nFrom: c@d\r\n\r\n",
        );
        assert_eq!(env.subject, Some(Octets::from("second part")));
        assert_eq!(env.from.len(), 2);
        assert_eq!(env.sender, env.from);
        assert_eq!(env.reply_to, env.from);
    }

    #[test]
    fn raw_values_are_unfolded_but_not_decoded() {
        let env = envelope(
            "Date: Mon, 1 Jan 2024\r\n\t10:00 +0000  \r\nSubject: =?utf-8?q?J=C3=B6rg?=\r\nMessage-ID:  <a@b> (c)\r\nSender:\r\nFrom: x@y\r\n\r\n",
        );
        assert_eq!(
            env.date,
            Some(Octets::from("Mon, 1 Jan 2024\t10:00 +0000  "))
        );
        assert_eq!(env.subject, Some(Octets::from("=?utf-8?q?J=C3=B6rg?=")));
        assert_eq!(env.message_id, Some(Octets::from("<a@b> (c)")));
        assert_eq!(env.sender, env.from, "an empty Sender defaults to From");
        assert_eq!(env.in_reply_to, None);
    }
}
