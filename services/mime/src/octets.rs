//! [`Octets`]: a byte string taken from a message header.
//!
//! Header fields are not guaranteed to be UTF-8: senders still put raw Latin-1 or broken UTF-8
//! in subjects, display names and parameters. IMAP sends such values as literals, byte for byte,
//! so the summary must keep the bytes and not a lossy conversion of them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte string from a message header, kept exactly (IMAP strings are octets, not text).
///
/// It serialises as a JSON string when it is valid UTF-8, which is nearly always, and as an
/// array of numbers otherwise, so the cached summary stays small and readable.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Octets(Vec<u8>);

impl Octets {
    /// Wraps bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as `&str` when they are valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The bytes as text, with invalid UTF-8 replaced by U+FFFD (for display and logs only).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// ASCII case-insensitive comparison, as MIME compares type, subtype and parameter names.
    pub fn eq_ignore_ascii_case(&self, other: &[u8]) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }

    /// Gives the bytes back.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Octets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => write!(f, "{s:?}"),
            None => write!(f, "b{:?}", String::from_utf8_lossy(&self.0)),
        }
    }
}

impl From<&[u8]> for Octets {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl From<Vec<u8>> for Octets {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<&str> for Octets {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl AsRef<[u8]> for Octets {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<&str> for Octets {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl Serialize for Octets {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.as_str() {
            Some(s) => serializer.serialize_str(s),
            None => self.0.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Octets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Bytes(Vec<u8>),
        }
        Ok(match Repr::deserialize(deserializer)? {
            Repr::Text(s) => Self(s.into_bytes()),
            Repr::Bytes(b) => Self(b),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_serialises_as_a_string_and_other_bytes_as_an_array() {
        let text = Octets::from("Café");
        assert_eq!(serde_json::to_string(&text).unwrap(), "\"Café\"");
        let latin1 = Octets::from(&b"Caf\xe9"[..]);
        let json = serde_json::to_string(&latin1).unwrap();
        assert_eq!(json, "[67,97,102,233]");
        assert_eq!(serde_json::from_str::<Octets>(&json).unwrap(), latin1);
        assert_eq!(serde_json::from_str::<Octets>("\"Café\"").unwrap(), text);
    }
}
