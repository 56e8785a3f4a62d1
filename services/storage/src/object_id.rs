//! Object ids (IMAP OBJECTID, RFC 8474; the same ids serve JMAP, RFC 8620/8621): a
//! MAILBOXID per mailbox, an EMAILID and a THREADID per message.
//!
//! Every id is 1-255 characters of `[A-Za-z0-9_-]` (RFC 8474 §4: `objectid`), prefixed so
//! the three kinds never look alike:
//!
//! - `M<id>_<uidvalidity>`, derived from the mailbox's row: the row id is never reused
//!   (SQLite `AUTOINCREMENT`, ScyllaDB's id blocks) and survives RENAME, and the
//!   UIDVALIDITY part changes when a `\Noselect` placeholder becomes a mailbox again, which
//!   is a new mailbox (RFC 8474 §4.1: an id is never given to another mailbox).
//! - `E<n>`, taken from a store-wide sequence when a message is delivered or appended, and
//!   carried along by COPY and MOVE, so one email in several mailboxes has one id.
//! - `T<n>`, the thread: the thread of the first referenced message the account's thread
//!   index knows (see [`MessageRefs`]), or a new one numbered like the message's EMAILID.
//!
//! Messages stored before object ids existed get `E<mailbox>_<uid>` and `T<mailbox>_<uid>`
//! (each its own thread): deterministic, and of a form the sequence never produces.

/// Most bytes of one referenced message-id kept for threading; longer ones are ignored.
pub const MAX_MESSAGE_ID_LEN: usize = 250;
/// How many References entries are read from each end of the header (the root and the
/// nearest ancestors), so one message never costs more than about 2 * this + 2 lookups.
pub const MAX_REFERENCES_EACH_END: usize = 16;
/// Most header bytes scanned for Message-ID, In-Reply-To and References.
pub const MAX_HEADER_SCAN: usize = 256 * 1024;
/// Longest object id (RFC 8474 §4).
pub const MAX_OBJECT_ID_LEN: usize = 255;

/// The thread keys of a message, read from its header by whoever stores it (delivery,
/// APPEND) and handed to [`crate::MetadataStore::append`] in
/// [`crate::NewMessage::refs`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageRefs {
    /// Its own Message-ID, without angle brackets.
    pub message_id: Option<String>,
    /// The ids it refers to, nearest first: In-Reply-To, then References from its end,
    /// then the start of References (at most [`MAX_REFERENCES_EACH_END`] from each end).
    pub references: Vec<String>,
}

impl MessageRefs {
    /// Reads Message-ID, In-Reply-To and References from the header of `raw` (folded
    /// lines joined), bounded by [`MAX_HEADER_SCAN`].
    pub fn from_message(raw: &[u8]) -> Self {
        let head = &raw[..raw.len().min(MAX_HEADER_SCAN)];
        let mut message_id = None;
        let mut in_reply_to = Vec::new();
        let mut references = Vec::new();
        for (name, value) in header_fields(head) {
            if name.eq_ignore_ascii_case(b"message-id") && message_id.is_none() {
                message_id = msg_ids(&value).into_iter().next();
            } else if name.eq_ignore_ascii_case(b"in-reply-to") && in_reply_to.is_empty() {
                in_reply_to = msg_ids(&value);
                in_reply_to.truncate(2);
            } else if name.eq_ignore_ascii_case(b"references") && references.is_empty() {
                references = msg_ids(&value);
            }
        }
        let mut refs: Vec<String> = Vec::new();
        let mut push = |id: &String| {
            if !refs.contains(id) && Some(id) != message_id.as_ref() {
                refs.push(id.clone());
            }
        };
        in_reply_to.iter().for_each(&mut push);
        references
            .iter()
            .rev()
            .take(MAX_REFERENCES_EACH_END)
            .for_each(&mut push);
        references
            .iter()
            .take(MAX_REFERENCES_EACH_END)
            .for_each(&mut push);
        MessageRefs {
            message_id,
            references: refs,
        }
    }

    /// Every key of the message, its own id first, bounded, for index writes.
    pub fn keys(&self) -> Vec<&str> {
        self.message_id
            .iter()
            .chain(self.references.iter())
            .map(String::as_str)
            .filter(|k| !k.is_empty() && k.len() <= MAX_MESSAGE_ID_LEN)
            .take(2 * MAX_REFERENCES_EACH_END + 3)
            .collect()
    }
}

/// The header fields of `head` (up to the first empty line), unfolded.
fn header_fields(head: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, v)) = out.last_mut() {
                v.push(b' ');
                v.extend_from_slice(line);
            }
            continue;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            out.push((
                line[..colon].trim_ascii().to_vec(),
                line[colon + 1..].to_vec(),
            ));
        }
    }
    out
}

/// The `<...>` ids of a header value, brackets removed, of sane length.
fn msg_ids(value: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.iter().position(|b| *b == b'<') {
        let after = &rest[open + 1..];
        let Some(close) = after.iter().position(|b| *b == b'>') else {
            break;
        };
        let id = String::from_utf8_lossy(after[..close].trim_ascii()).into_owned();
        if !id.is_empty() && id.len() <= MAX_MESSAGE_ID_LEN && !id.contains(char::is_whitespace) {
            out.push(id);
        }
        rest = &after[close + 1..];
    }
    out
}

/// The ids of one message (RFC 8474 §5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageObjectIds {
    pub email_id: String,
    pub thread_id: String,
}

/// The MAILBOXID of a mailbox (see the module doc).
pub fn mailbox_object_id(mailbox: &crate::Mailbox) -> String {
    format!("M{}_{}", mailbox.id.0, mailbox.uid_validity)
}

/// The EMAILID given to the message numbered `n` by the store's sequence.
pub fn email_id(n: i64) -> String {
    format!("E{n}")
}

/// The THREADID of a thread started by the message whose EMAILID is `E<n>`.
pub fn thread_id_for(email_id: &str) -> String {
    format!("T{}", email_id.strip_prefix('E').unwrap_or(email_id))
}

/// The ids of a message stored before object ids existed.
pub fn legacy_ids(mailbox: crate::MailboxId, uid: crate::Uid) -> MessageObjectIds {
    MessageObjectIds {
        email_id: format!("E{}_{}", mailbox.0, uid.0),
        thread_id: format!("T{}_{}", mailbox.0, uid.0),
    }
}

/// The location a legacy id names (`E<mailbox>_<uid>` or `T<mailbox>_<uid>`).
pub fn parse_legacy(id: &str) -> Option<(crate::MailboxId, crate::Uid)> {
    let rest = id.strip_prefix('E').or_else(|| id.strip_prefix('T'))?;
    let (m, u) = rest.split_once('_')?;
    Some((
        crate::MailboxId(m.parse().ok()?),
        crate::Uid(u.parse().ok()?),
    ))
}

/// Whether `id` has the RFC 8474 `objectid` syntax.
pub fn is_valid(id: &str) -> bool {
    (1..=MAX_OBJECT_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Which kind of message id a lookup names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectIdKind {
    Email,
    Thread,
}

impl ObjectIdKind {
    /// The kind an id's prefix says, `None` for anything else.
    pub fn of(id: &str) -> Option<Self> {
        match id.as_bytes().first() {
            Some(b'E') => Some(ObjectIdKind::Email),
            Some(b'T') => Some(ObjectIdKind::Thread),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_read_unfolded_nearest_first_and_bounded() {
        let mut raw =
            b"From: a@b\r\nMessage-ID: <me@x>\r\nIn-Reply-To: <p@x>\r\nReferences: <r@x>\r\n <p@x>"
                .to_vec();
        for i in 0..100 {
            raw.extend(format!(" <m{i}@x>").bytes());
        }
        raw.extend(b"\r\nSubject: s\r\n\r\nReferences: <body@x>\r\n");
        let r = MessageRefs::from_message(&raw);
        assert_eq!(r.message_id.as_deref(), Some("me@x"));
        assert_eq!(r.references[0], "p@x");
        assert_eq!(r.references[1], "m99@x");
        assert!(
            r.references.contains(&"r@x".to_string()),
            "the root is kept"
        );
        assert!(!r.references.contains(&"m50@x".to_string()));
        assert!(!r.references.contains(&"body@x".to_string()));
        assert!(r.references.len() <= 2 * MAX_REFERENCES_EACH_END + 2);
        assert!(r.keys().len() <= 2 * MAX_REFERENCES_EACH_END + 3);
    }

    #[test]
    fn ids_have_the_rfc_syntax_and_distinct_prefixes() {
        let legacy = legacy_ids(crate::MailboxId(7), crate::Uid(9));
        for id in [
            email_id(42),
            thread_id_for(&email_id(42)),
            legacy.email_id.clone(),
            legacy.thread_id.clone(),
        ] {
            assert!(is_valid(&id), "{id}");
        }
        assert_eq!(thread_id_for("E42"), "T42");
        assert_eq!(
            parse_legacy(&legacy.email_id),
            Some((crate::MailboxId(7), crate::Uid(9)))
        );
        assert_eq!(parse_legacy("E42"), None);
        assert!(!is_valid("E 1") && !is_valid("") && !is_valid(&"E".repeat(256)));
        assert_eq!(ObjectIdKind::of("T1"), Some(ObjectIdKind::Thread));
        assert_eq!(ObjectIdKind::of("M1_1"), None);
    }
}
