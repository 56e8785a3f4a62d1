//! [`MessageSummary`]: everything FETCH and SEARCH need about a message's structure, computed
//! once at delivery and cached as opaque bytes by the metadata store.

use serde::{Deserialize, Serialize};

use crate::decode::Decoded;
use crate::envelope::Envelope;
use crate::part::Part;
use crate::scan;

/// Version of the [`MessageSummary`] format. Bump it whenever analysis changes what a summary
/// holds or means: [`MessageSummary::from_bytes`] then refuses older records, and the caller
/// re-analyses the message instead of serving stale structure.
pub const SUMMARY_VERSION: u32 = 1;

/// The analysed structure of one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSummary {
    /// [`SUMMARY_VERSION`] at the time of analysis.
    pub version: u32,
    /// Size of the raw message in octets (RFC822.SIZE). Sections check it against the raw
    /// message they are given, so a summary is never applied to the wrong blob.
    pub size: u64,
    /// ENVELOPE of the message.
    pub envelope: Envelope,
    /// The top-level MIME entity: the whole message, header included.
    pub root: Part,
    /// Decoded fields for SEARCH, SORT, THREAD and JMAP.
    pub decoded: Decoded,
    /// The preview text (IMAP PREVIEW, RFC 8970; see [`crate::preview()`]). `None` in
    /// summaries stored before previews were computed: they stay readable (the field is
    /// optional, so [`SUMMARY_VERSION`] did not change) and the preview is computed when
    /// first asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

/// Why cached summary bytes could not be used. Either way the message should be analysed
/// again with [`analyze`]; the raw message is always the source of truth.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// The bytes are not a summary (corrupt, truncated, or from an unknown format).
    #[error("cached message summary is not readable: {0}")]
    Decode(#[from] serde_json::Error),
    /// The summary was written by another version of the analysis.
    #[error("cached message summary has version {found}, expected {expected}")]
    Version { found: u32, expected: u32 },
}

/// Analyses a raw message (CRLF line ends, as Mailfleet stores it; bare LF is tolerated).
///
/// This never fails and never panics: a message with broken MIME still gets a summary, in
/// the worst case a single text/plain body covering everything after the header, which is
/// what IMAP servers report for it.
pub fn analyze(raw: &[u8]) -> MessageSummary {
    let (root, fields) = scan::scan(raw);
    let envelope = Envelope::from_fields(&fields);
    let decoded = Decoded::from_envelope(&envelope);
    let preview = crate::preview::preview(raw, &root);
    MessageSummary {
        version: SUMMARY_VERSION,
        size: u64::try_from(raw.len()).unwrap_or(u64::MAX),
        envelope,
        root,
        decoded,
        preview: Some(preview),
    }
}

impl MessageSummary {
    /// Serialises the summary for the metadata store (JSON).
    ///
    /// JSON encoding of this type cannot fail (every map key is a string and every value
    /// serialises infallibly); should it ever, the result is empty, which
    /// [`MessageSummary::from_bytes`] rejects, so the message is simply analysed again.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a summary written by [`MessageSummary::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SummaryError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let found = serde_json::from_slice::<VersionOnly>(bytes)?.version;
        if found != SUMMARY_VERSION {
            return Err(SummaryError::Version {
                found,
                expected: SUMMARY_VERSION,
            });
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Summaries stored before previews existed have no `preview` field: still readable.
    #[test]
    fn summaries_without_a_preview_stay_readable() {
        let raw = b"Subject: x\r\n\r\nHello  there\r\n";
        let summary = analyze(raw);
        assert_eq!(summary.preview.as_deref(), Some("Hello there"));
        let mut json: serde_json::Value =
            serde_json::from_slice(&summary.to_bytes()).expect("json");
        json.as_object_mut().expect("object").remove("preview");
        let old = MessageSummary::from_bytes(&serde_json::to_vec(&json).expect("json"))
            .expect("an old summary is readable");
        assert_eq!(old.preview, None);
        assert_eq!(old.root, summary.root);
    }

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let raw = b"From: =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\nSubject: Re: [x] hi\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nbody\r\n";
        let summary = analyze(raw);
        assert_eq!(summary.size, raw.len() as u64);
        assert_eq!(summary.decoded.base_subject, "hi");
        assert_eq!(
            summary
                .decoded
                .from
                .as_ref()
                .and_then(|a| a.name.clone())
                .as_deref(),
            Some("Jörg")
        );
        assert_eq!(summary.decoded.date, Some(1_704_103_200));
        let bytes = summary.to_bytes();
        assert_eq!(MessageSummary::from_bytes(&bytes).unwrap(), summary);

        let mut old = summary.clone();
        old.version = SUMMARY_VERSION + 1;
        assert!(matches!(
            MessageSummary::from_bytes(&old.to_bytes()),
            Err(SummaryError::Version { .. })
        ));
        assert!(matches!(
            MessageSummary::from_bytes(b"{not json"),
            Err(SummaryError::Decode(_))
        ));
        assert!(MessageSummary::from_bytes(b"").is_err());
    }

    #[test]
    fn empty_and_garbage_messages_still_have_a_summary() {
        let empty = analyze(b"");
        assert_eq!(empty.root.size(), 0);
        assert_eq!(empty.root.lines(), Some(0));
        let garbage = analyze(b"\0\xff\xfe--\r\n\r\n(");
        assert_eq!(garbage.size, 10);
    }
}
