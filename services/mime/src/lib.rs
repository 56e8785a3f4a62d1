//! Mailfleet MIME analysis: a message's structure, computed once at delivery.
//!
//! IMAP FETCH of ENVELOPE, BODYSTRUCTURE and BODY\[section\] must not parse the message again
//! on every fetch. [`analyze`] reads a raw message once and returns a [`MessageSummary`]: the
//! envelope, the MIME part tree with the byte offsets of every header and body, and decoded
//! fields for SEARCH and SORT. The metadata store keeps it as opaque bytes
//! ([`MessageSummary::to_bytes`]); the IMAP server turns it into imap-types values
//! ([`imap::envelope`], [`imap::body_structure`]) and cuts sections out of the raw message by
//! offset ([`section()`]). JMAP will read the same summary.
//!
//! # Compatibility
//!
//! Clients have long been tested against Dovecot, and a mailbox may move between servers, so
//! the structure is found with Dovecot 2.3's rules, including for broken messages: the same
//! boundaries, the same defaults, the same placeholders for missing addresses, the same
//! parameter order. `tests/dovecot_diff.py` compares both servers on the corpus in
//! `tests/corpus/`; the few deliberate differences are explained in
//! `docs/imap-structure-differences.md`.
//!
//! Analysis never fails and never panics. A message with broken MIME still gets a summary;
//! at worst its whole body is one text/plain part.
//!
//! mail-parser does the decoding for [`Decoded`] (RFC 2047 words, charsets, dates). The
//! structure itself is found by this crate's scanner: mail-parser's own MIME walker recognises
//! boundaries anywhere in a line, looks only at the innermost boundary and decodes
//! base64-encoded message/rfc822 parts, so its part tree differs from what IMAP servers report.
//!
//! # Layout
//!
//! ```text
//! summary.rs    MessageSummary, analyze(), to_bytes()/from_bytes(), SummaryError
//! scan.rs       the MIME scanner: boundaries, headers, bodies, offsets, limits
//! part.rs       Part, Body, Disposition: the part tree
//! envelope.rs   Envelope from header fields
//! address.rs    address lists and group syntax
//! params.rs     Content-Type and parameters (RFC 2231), Disposition, Language, encoding
//! rfc822.rs     the lexer for structured header values
//! header.rs     header lines, fields, unfolding, whitespace normalisation
//! decode.rs     Decoded: RFC 2047 decoding, dates, RFC 5256 base subject
//! section.rs    section(): BODY[...] by offsets
//! search_text.rs  the texts SEARCH keys look at; full-text index entries
//! extract/      attachments' text: text/*, PDF (lopdf), OOXML and ODF (zip, quick-xml)
//! samples.rs    small PDF/docx/xlsx/pptx/odt built in code, for tests (feature `samples`)
//! imap.rs       conversion to imap-types and wire encoding
//! octets.rs     Octets: header bytes kept exactly
//! bin/mime-dump.rs  prints ENVELOPE and BODYSTRUCTURE of .eml files
//! ```
#![forbid(unsafe_code)]

mod address;
mod decode;
mod envelope;
pub mod extract;
mod header;
pub mod imap;
mod octets;
mod params;
mod part;
mod preview;
mod rfc822;
#[cfg(any(test, feature = "samples"))]
pub mod samples;
mod scan;
pub mod search_text;
mod section;
mod summary;

pub use address::Address;
pub use decode::{base_subject, Decoded, DecodedAddress};
pub use envelope::Envelope;
pub use octets::Octets;
pub use params::Param;
pub use part::{Body, Disposition, Part};
pub use preview::{preview, PREVIEW_CHARS};
pub use scan::{MAX_BOUNDARY_LEN, MAX_NESTING, MAX_PARTS};
pub use section::{section, SectionKind};
pub use summary::{analyze, MessageSummary, SummaryError, SUMMARY_VERSION};
