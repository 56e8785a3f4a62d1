//! IMAP commands, one file per family. Each adds methods to [`crate::session::Session`].

pub mod append;
pub mod auth;
pub mod copy;
pub mod expunge;
pub mod extended;
pub mod fetch;
pub mod mailboxes;
pub mod search;
pub mod store;

use crate::selected::Selected;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mailfleet_storage::Uid;

/// The hierarchy delimiter of Mailfleet's mailbox names.
pub const DELIMITER: char = '/';

/// The mailbox name a client gave, as stored: `INBOX` in any case is `INBOX`.
pub fn mailbox_name(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => "INBOX".to_string(),
        Mailbox::Other(o) => {
            let name = String::from_utf8_lossy(o.as_ref()).into_owned();
            if name.eq_ignore_ascii_case("INBOX") {
                "INBOX".to_string()
            } else {
                name.trim_end_matches(DELIMITER).to_string()
            }
        }
    }
}

fn bound(v: SeqOrUid, largest: u32) -> u32 {
    match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    }
}

/// Whether `value` is in `set`, where `*` means `largest`.
pub fn in_set(set: &SequenceSet, value: u32, largest: u32) -> bool {
    set.0.as_ref().iter().any(|s| match *s {
        Sequence::Single(v) => bound(v, largest) == value,
        Sequence::Range(a, b) => {
            let (a, b) = (bound(a, largest), bound(b, largest));
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            (lo..=hi).contains(&value)
        }
    })
}

/// Resolves a sequence set (of sequence numbers, or of UIDs with `uid`) against the view:
/// the matching messages' sequence numbers and UIDs, in mailbox order. Numbers that match no
/// message are ignored (for UIDs as RFC 9051 requires; for sequence numbers the caller checks
/// [`seq_set_valid`] first).
pub fn resolve(sel: &Selected, set: &SequenceSet, uid: bool) -> Vec<(u32, Uid)> {
    let largest = if uid {
        sel.max_uid().map_or(0, |u| u.get())
    } else {
        sel.len()
    };
    sel.messages()
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let seq = i as u32 + 1;
            let key = if uid { m.uid.0 } else { seq };
            in_set(set, key, largest).then_some((seq, m.uid))
        })
        .collect()
}

/// A sequence-number set is invalid when it names a number beyond the mailbox (RFC 9051
/// §6.4: `BAD`), except through `*`.
pub fn seq_set_valid(sel: &Selected, set: &SequenceSet) -> bool {
    let n = sel.len();
    set.0.as_ref().iter().all(|s| {
        let ok = |v: SeqOrUid| match v {
            SeqOrUid::Value(x) => x.get() <= n,
            SeqOrUid::Asterisk => n > 0,
        };
        match *s {
            Sequence::Single(v) => ok(v),
            Sequence::Range(a, b) => ok(a) && ok(b),
        }
    })
}

/// Glob matching for LIST patterns: `*` matches anything, `%` anything but the delimiter.
pub fn list_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('%') => {
                for i in 0..=n.len() {
                    if go(&p[1..], &n[i..]) {
                        return true;
                    }
                    if i < n.len() && n[i] == DELIMITER {
                        return false;
                    }
                }
                false
            }
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // The name INBOX matches case-insensitively (RFC 9051 §5.1).
    if name == "INBOX" {
        let upper: Vec<char> = pattern.to_uppercase().chars().collect();
        return go(&upper, &n);
    }
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_patterns() {
        assert!(list_match("*", "a/b/c"));
        assert!(list_match("%", "a"));
        assert!(!list_match("%", "a/b"));
        assert!(list_match("a/%", "a/b"));
        assert!(!list_match("a/%", "a/b/c"));
        assert!(list_match("inbox", "INBOX"));
        assert!(list_match("In%", "INBOX"));
        assert!(!list_match("Sent", "Sent/2024"));
    }

    #[test]
    fn sets() {
        let set = SequenceSet::try_from("1:3,7,10:*").expect("set");
        assert!(in_set(&set, 2, 12));
        assert!(!in_set(&set, 5, 12));
        assert!(in_set(&set, 12, 12));
        let rev = SequenceSet::try_from("5:2").expect("set");
        assert!(in_set(&rev, 3, 10));
    }
}
