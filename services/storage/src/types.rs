//! Ids and records shared by every backend. Ids are newtypes so an account id can never be
//! passed where a mailbox id is expected.

use std::fmt;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A hosted domain.
    DomainId
);
id_type!(
    /// A user account (one login, one set of mailboxes).
    AccountId
);
id_type!(
    /// A mailbox (folder) of an account.
    MailboxId
);

/// A message's UID in its mailbox: strictly increasing, never reused (RFC 9051 §2.3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(pub u32);

/// A modification sequence (RFC 7162): every change to a mailbox gets a larger one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModSeq(pub u64);

/// A content address: the lowercase hex SHA-256 of the stored bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(String);

impl BlobId {
    /// Computes the id of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        BlobId(hex::encode(Sha256::digest(data)))
    }

    /// Accepts only 64 lowercase hex characters, so an id can be used in a path or key.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| BlobId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    pub id: DomainId,
    pub name: String,
    /// Who manages the domain (see [`AccountSettings::managed_by`]).
    pub managed_by: Option<String>,
    /// The most the quotas of the domain's accounts may add up to, in bytes; 0: no limit.
    /// An allocation limit, checked when an account is added or its quota changed (what
    /// PostfixAdmin's domain quota is), so delivery never sums a whole domain's usage.
    pub quota_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub domain: DomainId,
    /// The login and primary address, lowercased `local@domain`.
    pub address: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Storage quota in bytes; 0 means unlimited.
    pub quota_bytes: u64,
    pub used_bytes: u64,
    pub message_count: u64,
    pub settings: AccountSettings,
}

/// What an account may do beyond holding mail: kept with the account so a login reads it in
/// the same row as the password hash.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AccountSettings {
    /// The name shown for the account (the operator's `User.spec.displayName`).
    pub display_name: Option<String>,
    /// Logins are refused on every protocol; mail to the account is still delivered (a
    /// suspension for abuse or an unpaid bill must not bounce the owner's mail).
    pub suspended: bool,
    /// The protocols the account may log in with.
    pub protocols: Protocols,
    /// Who manages the account, e.g. `operator:<namespace>/<name>`; `None`: the admin CLI.
    /// Tools other than the owner refuse to change a managed account (mailfleet-provision).
    pub managed_by: Option<String>,
}

/// The protocols an account may log in with (all by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocols {
    pub imap: bool,
    pub pop3: bool,
    /// SMTP submission (587/465) with AUTH.
    pub submission: bool,
    pub jmap: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols::ALL
    }
}

impl Protocols {
    pub const ALL: Protocols = Protocols {
        imap: true,
        pop3: true,
        submission: true,
        jmap: true,
    };

    /// The set as bits (imap 1, pop3 2, submission 4, jmap 8), as the stores keep it.
    pub fn bits(self) -> u8 {
        u8::from(self.imap)
            | u8::from(self.pop3) << 1
            | u8::from(self.submission) << 2
            | u8::from(self.jmap) << 3
    }

    pub fn from_bits(bits: u8) -> Self {
        Protocols {
            imap: bits & 1 != 0,
            pop3: bits & 2 != 0,
            submission: bits & 4 != 0,
            jmap: bits & 8 != 0,
        }
    }
}

impl Account {
    /// Whether `extra` more bytes fit in the quota.
    pub fn fits(&self, extra: u64) -> bool {
        self.quota_bytes == 0 || self.used_bytes.saturating_add(extra) <= self.quota_bytes
    }
}

/// An alias `source → target`. `source` is `local@domain`, or `@domain` for a catch-all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    pub source: String,
    pub target: String,
}

/// The role of a special mailbox (RFC 6154).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    Inbox,
    Sent,
    Drafts,
    Junk,
    Trash,
    Archive,
}

impl SpecialUse {
    /// The mailboxes every new account gets, with their names.
    pub const DEFAULTS: [(SpecialUse, &'static str); 6] = [
        (SpecialUse::Inbox, "INBOX"),
        (SpecialUse::Sent, "Sent"),
        (SpecialUse::Drafts, "Drafts"),
        (SpecialUse::Junk, "Junk"),
        (SpecialUse::Trash, "Trash"),
        (SpecialUse::Archive, "Archive"),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpecialUse::Inbox => "inbox",
            SpecialUse::Sent => "sent",
            SpecialUse::Drafts => "drafts",
            SpecialUse::Junk => "junk",
            SpecialUse::Trash => "trash",
            SpecialUse::Archive => "archive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::DEFAULTS
            .iter()
            .map(|(u, _)| *u)
            .find(|u| u.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    pub id: MailboxId,
    pub account: AccountId,
    pub name: String,
    pub special_use: Option<SpecialUse>,
    pub uid_validity: u32,
    /// The UID the next message will get.
    pub uid_next: Uid,
    pub highest_modseq: ModSeq,
    pub message_count: u64,
    /// The name is kept only as a hierarchy placeholder that holds no messages (IMAP's
    /// `\Noselect`, RFC 3501 §6.3.4: what DELETE leaves of a mailbox with children). See
    /// [`crate::MetadataStore::set_mailbox_noselect`].
    pub noselect: bool,
}

/// Message flags as stored: system flags (`\Seen`...) and keywords, kept sorted and unique.
/// Unique ignoring ASCII case: flag names are case-insensitive (RFC 9051 §2.3.2), so `$x` and
/// `$X` are one keyword and a message never holds both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags(Vec<String>);

impl Flags {
    /// The flags of `flags`, without empty or blank names; of names equal but for case, the
    /// first one given is kept (so adding `$important` to `$Important` keeps `$Important`).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(flags: I) -> Self {
        let mut seen = std::collections::HashSet::new();
        let mut v: Vec<String> = flags
            .into_iter()
            .map(Into::into)
            .filter(|f: &String| !f.is_empty() && !f.contains(char::is_whitespace))
            .filter(|f| seen.insert(f.to_ascii_lowercase()))
            .collect();
        v.sort();
        Flags(v)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn contains(&self, f: &str) -> bool {
        self.0.iter().any(|x| x.eq_ignore_ascii_case(f))
    }

    /// Space-separated form used by the embedded store.
    pub fn to_storage(&self) -> String {
        self.0.join(" ")
    }

    pub fn from_storage(s: &str) -> Self {
        Flags::new(s.split(' '))
    }
}

/// A message as listed in a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    pub mailbox: MailboxId,
    pub uid: Uid,
    pub modseq: ModSeq,
    pub blob: BlobId,
    pub size: u64,
    /// Seconds since the Unix epoch when the message arrived (IMAP INTERNALDATE).
    pub internal_date: i64,
    pub flags: Flags,
}

/// One message to add to one mailbox.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub account: AccountId,
    pub mailbox: MailboxId,
    pub blob: BlobId,
    pub size: u64,
    pub internal_date: i64,
    pub flags: Flags,
    /// The parsed structure of the message (envelope, MIME tree, section offsets) as
    /// produced by `mailfleet-mime`, cached so reading headers never re-parses the blob.
    /// Opaque to storage.
    pub summary: Option<Vec<u8>>,
    /// Message-ID, In-Reply-To and References, read from the header by the caller
    /// ([`crate::MessageRefs::from_message`]): the store files the message into a thread
    /// with them (THREADID, RFC 8474). Empty: a thread of its own.
    pub refs: crate::MessageRefs,
    /// The W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) of the trace the message
    /// was received under, kept with it so a later read joins that trace
    /// ([`crate::MetadataStore::message_traces`]); `None` for a message a client appended.
    pub trace: Option<String>,
}

/// Counts of a mailbox that are not kept as running totals (IMAP STATUS, JMAP Mailbox).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxUsage {
    pub messages: u64,
    /// Messages without `\Seen`.
    pub unseen: u64,
    /// Sum of message sizes in octets.
    pub size: u64,
}

/// A message copied or moved: its UID in the source and where it landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    pub source_uid: Uid,
    pub dest: Appended,
}

/// Where an appended message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub mailbox: MailboxId,
    pub uid: Uid,
    pub modseq: ModSeq,
}

/// What a change-log entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Appended,
    FlagsChanged,
    Expunged,
}

/// One entry of a mailbox's change log, read by CONDSTORE/QRESYNC and JMAP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub modseq: ModSeq,
    pub uid: Uid,
    pub kind: ChangeKind,
}

/// How a flag update applies (IMAP STORE semantics, in domain terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagOp {
    Replace,
    Add,
    Remove,
}

// ---- access control lists and mailbox metadata ----

/// One entry of a mailbox's access control list (RFC 4314 §2): an identifier (an account's
/// address, `anyone` or `authenticated`) and the rights it holds, as a string of the right
/// letters (`lrswipkxtea`). Storage keeps the letters as given; their meaning is IMAP's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclEntry {
    pub identifier: String,
    pub rights: String,
}

/// A mailbox of another account that an identifier holds rights on (the reverse view of
/// [`AclEntry`], for "mailboxes shared with me").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedMailbox {
    pub owner: AccountId,
    pub mailbox: MailboxId,
    pub rights: String,
}

/// Where a metadata entry (RFC 5464) is kept: the account it belongs to (the mailbox
/// owner's for `/shared` entries, the user's own for `/private` ones) and the mailbox, or
/// `None` for server entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MetadataScope {
    pub account: AccountId,
    pub mailbox: Option<MailboxId>,
}

/// Bounds a metadata write must respect, checked by the store in the write itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetadataLimits {
    /// Most entries one scope may hold after the write.
    pub max_entries: usize,
    /// Most bytes (names plus values) one scope may hold after the write.
    pub max_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::Flags;

    #[test]
    fn flags_differing_only_in_case_are_one_flag_and_the_first_spelling_wins() {
        let f = Flags::new(["$Important", "\\Seen", "$important", "\\seen", "$X", "$x"]);
        assert_eq!(f.iter().collect::<Vec<_>>(), ["$Important", "$X", "\\Seen"]);
        assert!(f.contains("$IMPORTANT"));
        assert_eq!(Flags::from_storage(&f.to_storage()), f);
    }
}
