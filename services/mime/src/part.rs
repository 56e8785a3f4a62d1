//! The MIME part tree of a message, with byte offsets into the raw message.
//!
//! A part tree is stored flat: a list of parts in pre-order, each saying how many parts
//! follow inside it. Nested JSON would be as deep as the MIME nesting (which may be 100
//! levels) and readers refuse deep JSON; the flat form is read back without recursion and its
//! depth is checked.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub params: Vec<Param>,
    /// Content-ID, raw.
    pub id: Option<Octets>,
    /// Content-Description, raw (RFC 2047 encoded words kept).
    pub description: Option<Octets>,
    /// Content-Transfer-Encoding; None means the header was absent or not a single token,
    /// which IMAP reports as `7bit`.
    pub encoding: Option<Octets>,
    /// Content-MD5, raw.
    pub md5: Option<Octets>,
    /// Content-Disposition.
    pub disposition: Option<Disposition>,
    /// Content-Language tags.
    pub language: Vec<Octets>,
    /// Content-Location, raw.
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A leaf that is not text (IMAP `body-type-basic`).
    Basic,
    /// A text leaf; `lines` counts the line feeds in the body.
    Text { lines: u64 },
    /// message/rfc822: the body is a whole message. `lines` counts the line feeds in it.
    Message {
        lines: u64,
        envelope: Box<Envelope>,
        message: Box<Part>,
    },
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
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|p| &p.value)
    }

    /// The transfer encoding IMAP reports: the header's token, or `7bit`.
    pub fn encoding_or_default(&self) -> Octets {
        self.encoding
            .clone()
            .unwrap_or_else(|| Octets::from("7bit"))
    }
}

/// Deepest part tree accepted when reading a stored summary: analysis never nests deeper
/// than [`crate::MAX_NESTING`] entities (a message/rfc822 part and its message are two).
const MAX_STORED_DEPTH: usize = 2 * crate::scan::MAX_NESTING + 2;

/// One part of the stored, flattened tree.
#[derive(Serialize, Deserialize)]
struct FlatPart {
    h: u64,
    b: u64,
    e: u64,
    #[serde(rename = "type")]
    media_type: Octets,
    subtype: Octets,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    params: Vec<Param>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<Octets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<Octets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<Octets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    md5: Option<Octets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disposition: Option<Disposition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    language: Vec<Octets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    location: Option<Octets>,
    kind: FlatKind,
}

/// The body kind; the parts inside a message or multipart follow it in the list.
#[derive(Serialize, Deserialize)]
enum FlatKind {
    Basic,
    Text { lines: u64 },
    Message { lines: u64, envelope: Box<Envelope> },
    Multipart { parts: usize },
}

impl FlatPart {
    fn new(p: &Part) -> Self {
        let kind = match &p.body {
            Body::Basic => FlatKind::Basic,
            Body::Text { lines } => FlatKind::Text { lines: *lines },
            Body::Message {
                lines, envelope, ..
            } => FlatKind::Message {
                lines: *lines,
                envelope: envelope.clone(),
            },
            Body::Multipart { parts } => FlatKind::Multipart { parts: parts.len() },
        };
        FlatPart {
            h: p.header_start,
            b: p.body_start,
            e: p.body_end,
            media_type: p.media_type.clone(),
            subtype: p.media_subtype.clone(),
            params: p.params.clone(),
            id: p.id.clone(),
            description: p.description.clone(),
            encoding: p.encoding.clone(),
            md5: p.md5.clone(),
            disposition: p.disposition.clone(),
            language: p.language.clone(),
            location: p.location.clone(),
            kind,
        }
    }

    /// The part with an empty body, and how many parts go inside it.
    fn into_part(self) -> (Part, FlatKind) {
        let part = Part {
            header_start: self.h,
            body_start: self.b,
            body_end: self.e,
            media_type: self.media_type,
            media_subtype: self.subtype,
            params: self.params,
            id: self.id,
            description: self.description,
            encoding: self.encoding,
            md5: self.md5,
            disposition: self.disposition,
            language: self.language,
            location: self.location,
            body: Body::Basic,
        };
        (part, self.kind)
    }
}

impl Serialize for Part {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut flat = Vec::new();
        let mut todo = vec![self];
        while let Some(part) = todo.pop() {
            flat.push(FlatPart::new(part));
            match &part.body {
                Body::Multipart { parts } => todo.extend(parts.iter().rev()),
                Body::Message { message, .. } => todo.push(message),
                Body::Basic | Body::Text { .. } => {}
            }
        }
        flat.serialize(serializer)
    }
}

/// A message or multipart still collecting the parts inside it.
struct Open {
    part: Part,
    kind: FlatKind,
    wanted: usize,
    inside: Vec<Part>,
}

impl Open {
    fn close(self) -> Part {
        let mut part = self.part;
        let mut inside = self.inside;
        part.body = match self.kind {
            FlatKind::Message { lines, envelope } => match inside.pop() {
                Some(message) => Body::Message {
                    lines,
                    envelope,
                    message: Box::new(message),
                },
                None => Body::Basic,
            },
            FlatKind::Multipart { .. } => Body::Multipart { parts: inside },
            FlatKind::Basic => Body::Basic,
            FlatKind::Text { lines } => Body::Text { lines },
        };
        part
    }
}

fn unflatten(flat: Vec<FlatPart>) -> Result<Part, &'static str> {
    let total = flat.len();
    let mut open: Vec<Open> = Vec::new();
    for (i, entry) in flat.into_iter().enumerate() {
        let (mut part, kind) = entry.into_part();
        let wanted = match kind {
            FlatKind::Message { .. } => 1,
            FlatKind::Multipart { parts: 0 } => return Err("a stored multipart has no parts"),
            FlatKind::Multipart { parts } => parts,
            FlatKind::Basic | FlatKind::Text { .. } => 0,
        };
        if wanted > 0 {
            if open.len() >= MAX_STORED_DEPTH {
                return Err("stored part tree is too deep");
            }
            open.push(Open {
                part,
                kind,
                wanted,
                inside: Vec::new(),
            });
            continue;
        }
        part.body = match kind {
            FlatKind::Text { lines } => Body::Text { lines },
            _ => Body::Basic,
        };
        // Hand the finished part to its container, closing every container it completes.
        let mut done = part;
        loop {
            match open.last_mut() {
                None => {
                    return if i + 1 == total {
                        Ok(done)
                    } else {
                        Err("stored part tree has trailing parts")
                    };
                }
                Some(top) => {
                    top.inside.push(done);
                    if top.inside.len() < top.wanted {
                        break;
                    }
                }
            }
            match open.pop() {
                Some(top) => done = top.close(),
                None => return Err("stored part tree is inconsistent"),
            }
        }
    }
    Err("stored part tree is incomplete")
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let flat = Vec::<FlatPart>::deserialize(deserializer)?;
        unflatten(flat).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::analyze;

    #[test]
    fn deep_trees_are_stored_flat_and_read_back() {
        let mut raw = String::from("Content-Type: multipart/mixed; boundary=x0\r\n\r\n");
        for i in 1..=120 {
            raw.push_str(&format!("--x{}\r\nContent-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=x{i}\r\n\r\n", i - 1));
        }
        let root = analyze(raw.as_bytes()).root;
        let json = serde_json::to_string(&root).unwrap();
        assert!(json.starts_with("[{"), "flat: {}", &json[..40]);
        assert_eq!(serde_json::from_str::<Part>(&json).unwrap(), root);
    }

    #[test]
    fn inconsistent_stored_trees_are_refused() {
        let leaf =
            r#"{"h":0,"b":0,"e":0,"type":"text","subtype":"plain","kind":{"Text":{"lines":0}}}"#;
        let multi = |n: usize| {
            format!(
                r#"{{"h":0,"b":0,"e":0,"type":"multipart","subtype":"mixed","kind":{{"Multipart":{{"parts":{n}}}}}}}"#
            )
        };
        assert!(serde_json::from_str::<Part>(&format!("[{},{leaf},{leaf}]", multi(2))).is_ok());
        assert!(
            serde_json::from_str::<Part>(&format!("[{},{leaf}]", multi(2))).is_err(),
            "incomplete"
        );
        assert!(
            serde_json::from_str::<Part>(&format!("[{leaf},{leaf}]")).is_err(),
            "trailing"
        );
        assert!(
            serde_json::from_str::<Part>(&format!("[{}]", multi(0))).is_err(),
            "empty multipart"
        );
        assert!(serde_json::from_str::<Part>("[]").is_err());
        let deep = format!(
            "[{}{leaf}]",
            format!("{},", multi(1)).repeat(MAX_STORED_DEPTH + 1)
        );
        assert!(serde_json::from_str::<Part>(&deep).is_err(), "too deep");
    }
}
