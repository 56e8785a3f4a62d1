//! The full-text index's records, shared by every metadata backend.
//!
//! The index answers one question: which messages of a mailbox have a text, in one of the
//! named fields, of which a given string is a substring. Storage compares strings exactly
//! (code point for code point): case folding, and which texts a field holds, are the
//! caller's (for IMAP, `mailfleet_mime::search_text`), so protocols keep their semantics
//! and the store knows nothing of them.
//!
//! A message is *indexed* when its texts were given with [`MetadataStore::index_text`];
//! until then (messages stored before the index existed, or whose indexing failed) it is
//! *pending*, and a search reports it as unverified: the caller must look at the message
//! itself. A message indexed with `complete: false` (its texts were cut at a limit) stays
//! unverified for every search.
//!
//! [`MetadataStore::index_text`]: crate::MetadataStore::index_text

use crate::types::Uid;

/// Fields per search: more than any protocol key needs (TEXT names two).
pub const MAX_SEARCH_FIELDS: usize = 16;

/// Texts indexed per message; a message with more is refused with `Invalid`.
pub const MAX_PIECES: usize = 2000;

/// Bytes of text indexed per message (all texts together); more is refused with
/// `Invalid`. Callers cut their texts to this and mark the message incomplete.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// The shortest search string (in characters) the index answers: it is built of
/// trigrams. Shorter strings get `None` from [`crate::MetadataStore::search_text`].
pub const MIN_NEEDLE_CHARS: usize = 3;

/// One text of a message, in a named field (`subject`, `body`, ...; the caller's names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextPiece {
    pub field: String,
    pub text: String,
}

/// What the index holds for one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageText {
    pub pieces: Vec<TextPiece>,
    /// False when the caller left texts out (a size limit): the message is then reported
    /// as unverified by every search.
    pub complete: bool,
}

impl MessageText {
    /// From `(field, text)` pairs, as `mailfleet_mime::search_text::index_pieces` gives them.
    pub fn from_pairs(pairs: Vec<(String, String)>, complete: bool) -> Self {
        Self {
            pieces: pairs
                .into_iter()
                .map(|(field, text)| TextPiece { field, text })
                .collect(),
            complete,
        }
    }

    /// Checks the limits above.
    pub fn validate(&self) -> crate::StoreResult<()> {
        let bytes: usize = self
            .pieces
            .iter()
            .map(|p| p.text.len() + p.field.len())
            .sum();
        if self.pieces.len() > MAX_PIECES || bytes > MAX_TEXT_BYTES {
            return Err(crate::StoreError::Invalid(format!(
                "message text of {} pieces, {bytes} bytes is over the index limits",
                self.pieces.len()
            )));
        }
        if self.pieces.iter().any(|p| p.field.len() > 255) {
            return Err(crate::StoreError::Invalid(
                "index field name too long".into(),
            ));
        }
        Ok(())
    }
}

/// The answer of [`crate::MetadataStore::search_text`], both lists in UID order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextMatches {
    /// Indexed messages that have the string in one of the fields.
    pub matched: Vec<Uid>,
    /// Messages the index cannot answer for (pending, or indexed incompletely): they may
    /// or may not match. Never in `matched`.
    pub unverified: Vec<Uid>,
}

/// Whether the index can answer for `needle` at all.
pub fn answerable(needle: &str) -> bool {
    needle.chars().count() >= MIN_NEEDLE_CHARS && !needle.contains('\0')
}

/// The distinct trigrams (three code points) of `text`, in first-seen order.
pub fn trigrams(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for w in chars.windows(3) {
        let g: String = w.iter().collect();
        if seen.insert(g.clone()) {
            out.push(g);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigrams_are_distinct_code_point_windows() {
        assert_eq!(trigrams("aaaa"), vec!["aaa"]);
        assert_eq!(trigrams("grüße"), vec!["grü", "rüß", "üße"]);
        assert!(trigrams("ab").is_empty());
        assert!(answerable("abc") && !answerable("ab") && !answerable("a\0c"));
    }

    #[test]
    fn limits_are_enforced() {
        let big = MessageText {
            pieces: vec![TextPiece {
                field: "body".into(),
                text: "x".repeat(MAX_TEXT_BYTES + 1),
            }],
            complete: true,
        };
        assert!(big.validate().is_err());
        assert!(MessageText::default().validate().is_ok());
    }
}
