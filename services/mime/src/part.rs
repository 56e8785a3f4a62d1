//! The MIME part tree of a message, with byte offsets into the raw message.

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::octets::Octets;
use crate::params::Param;

/// One MIME entity: the whole message (the root), a part of a multipart, or the message
/// inside a message/rfc822 part.
///
/// Every value comes from the part's own MIME header and is what BODYSTRUCTURE sends: case as
/// written, parameters in Dovecot's order, defaults (text/plain, message/rfc822 inside
/// multipart/digest) already applied to the media type. Content-* fields are only read when
/// the entity is MIME (a MIME-Version or Content-Type header, or inside a multipart); the
/// first occurrence of each wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Offset of the first byte of this entity's header (its MIME header, or for the root and
    /// an encapsulated message the message header).
    pub header_start: u64,
    /// Offset of the first byte of the body: just after the blank line that ends the header
    /// (or where the header was cut short by a boundary or the end of the message).
    pub body_start: u64,
    /// Offset just past the body: before the line break that precedes the next boundary, or
    /// the end of the message.
    pub body_end: u64,
    /// Media type, e.g. `text`, `Multipart`, `message`; never absent (defaults applied). Empty
    /// when the Content-Type header was unusable.
    pub media_type: Octets,
    /// Media subtype, e.g. `plain`; empty when the header gave none.
    pub media_subtype: Octets,
    /// Content-Type parameters; for text parts without `charset`, IMAP adds `us-ascii`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Content-ID, raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Octets>,
    /// Content-Description, raw (RFC 2047 encoded words kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Octets>,
    /// Content-Transfer-Encoding; None means the header was absent or not a single token,
    /// which IMAP reports as `7bit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Octets>,
    /// Content-MD5, raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<Octets>,
    /// Content-Disposition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<Disposition>,
    /// Content-Language tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub language: Vec<Octets>,
    /// Content-Location, raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Octets>,
    /// What the body is.
    pub body: Body,
}

/// Content-Disposition: its type (`inline`, `attachment`, as written) and parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disposition {
    pub kind: Octets,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

/// The kind of body, which decides the shape of the part in BODYSTRUCTURE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A leaf that is not text (IMAP `body-type-basic`).
    Basic,
    /// A text leaf; `lines` counts the line feeds in the body.
    Text { lines: u64 },
    /// message/rfc822: the body is a whole message. `lines` counts the line feeds in it.
    Message { lines: u64, envelope: Box<Envelope>, message: Box<Part> },
    /// multipart/*: the parts between the boundaries. Never empty: a multipart without any
    /// part gets one empty text/plain part, as IMAP has no way to send zero parts.
    Multipart { parts: Vec<Part> },
}

impl Part {
    /// Size of the body in octets, as written in the message (transfer encoding included).
    pub fn size(&self) -> u64 {
        self.body_end.saturating_sub(self.body_start)
    }

    /// Line count of a text or message/rfc822 part, as BODYSTRUCTURE sends it.
    pub fn lines(&self) -> Option<u64> {
        match &self.body {
            Body::Text { lines } | Body::Message { lines, .. } => Some(*lines),
            Body::Basic | Body::Multipart { .. } => None,
        }
    }

    /// The parts of a multipart (empty for any other part).
    pub fn parts(&self) -> &[Part] {
        match &self.body {
            Body::Multipart { parts } => parts,
            _ => &[],
        }
    }

    /// True for multipart/* parts.
    pub fn is_multipart(&self) -> bool {
        matches!(self.body, Body::Multipart { .. })
    }

    /// The value of a Content-Type parameter (first one with this name, case-insensitive).
    pub fn param(&self, name: &str) -> Option<&Octets> {
        self.params.iter().find(|p| p.name.eq_ignore_ascii_case(name.as_bytes())).map(|p| &p.value)
    }

    /// The transfer encoding IMAP reports: the header's token, or `7bit`.
    pub fn encoding_or_default(&self) -> Octets {
        self.encoding.clone().unwrap_or_else(|| Octets::from("7bit"))
    }
}
