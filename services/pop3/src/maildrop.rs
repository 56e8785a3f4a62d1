//! The maildrop as a POP3 session sees it: a snapshot of INBOX taken at login, numbered
//! 1..n in UID order, with deletion marks that only QUIT turns into an expunge
//! (RFC 1939 §6, the UPDATE state).
//!
//! Unique ids are `<uidvalidity>.<uid>`: IMAP's UIDVALIDITY and UID of the same message,
//! so they are stable across sessions and name the same message in both protocols. If a
//! mailbox were ever recreated with a new UIDVALIDITY, every UIDL would change with it, as
//! every IMAP client's cache does.

use mailfleet_storage::{AccountId, BlobId, MailboxId, MessageMeta, Uid};

/// One message of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub uid: Uid,
    pub size: u64,
    pub blob: BlobId,
    pub deleted: bool,
}

/// Why a message number cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    NoSuchMessage,
    Deleted,
}

#[derive(Clone, Debug)]
pub struct Maildrop {
    pub account: AccountId,
    pub mailbox: MailboxId,
    pub uid_validity: u32,
    entries: Vec<Entry>,
}

impl Maildrop {
    /// A snapshot of `messages`, which must be in UID order.
    pub fn new(
        account: AccountId,
        mailbox: MailboxId,
        uid_validity: u32,
        messages: Vec<MessageMeta>,
    ) -> Self {
        Self {
            account,
            mailbox,
            uid_validity,
            entries: messages
                .into_iter()
                .map(|m| Entry {
                    uid: m.uid,
                    size: m.size,
                    blob: m.blob,
                    deleted: false,
                })
                .collect(),
        }
    }

    /// The message numbered `n` (1-based), unless it does not exist or is marked deleted.
    pub fn get(&self, n: u32) -> Result<&Entry, Lookup> {
        let e = n
            .checked_sub(1)
            .and_then(|i| self.entries.get(i as usize))
            .ok_or(Lookup::NoSuchMessage)?;
        if e.deleted {
            return Err(Lookup::Deleted);
        }
        Ok(e)
    }

    /// Count and total size of the messages not marked deleted (STAT).
    pub fn stat(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(n, size), (_, e)| (n + 1, size + e.size))
    }

    /// Messages not marked deleted, with their numbers.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.deleted)
            .map(|(i, e)| (i as u32 + 1, e))
    }

    pub fn unique_id(&self, e: &Entry) -> String {
        format!("{}.{}", self.uid_validity, e.uid.0)
    }

    /// Marks message `n` deleted.
    pub fn delete(&mut self, n: u32) -> Result<(), Lookup> {
        self.get(n)?;
        if let Some(e) = self.entries.get_mut(n as usize - 1) {
            e.deleted = true;
        }
        Ok(())
    }

    /// Unmarks every message (RSET).
    pub fn reset(&mut self) {
        for e in &mut self.entries {
            e.deleted = false;
        }
    }

    /// UIDs to expunge at QUIT.
    pub fn deleted_uids(&self) -> Vec<Uid> {
        self.entries
            .iter()
            .filter(|e| e.deleted)
            .map(|e| e.uid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailfleet_storage::{Flags, ModSeq};

    fn drop_of(sizes: &[u64]) -> Maildrop {
        let msgs = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| MessageMeta {
                mailbox: MailboxId(1),
                uid: Uid(10 + i as u32 * 2),
                modseq: ModSeq(1),
                blob: BlobId::of(format!("m{i}").as_bytes()),
                size: *s,
                internal_date: 0,
                flags: Flags::default(),
            })
            .collect();
        Maildrop::new(AccountId(1), MailboxId(1), 777, msgs)
    }

    #[test]
    fn numbering_stat_and_marks() {
        let mut d = drop_of(&[100, 200, 300]);
        assert_eq!(d.stat(), (3, 600));
        assert_eq!(d.get(0), Err(Lookup::NoSuchMessage));
        assert_eq!(d.get(4), Err(Lookup::NoSuchMessage));
        assert_eq!(d.get(u32::MAX), Err(Lookup::NoSuchMessage));
        assert_eq!(d.unique_id(d.get(2).expect("2")), "777.12");
        d.delete(2).expect("delete");
        assert_eq!(d.delete(2), Err(Lookup::Deleted));
        assert_eq!(d.get(2), Err(Lookup::Deleted));
        assert_eq!(d.stat(), (2, 400));
        assert_eq!(
            d.live().map(|(n, _)| n).collect::<Vec<_>>(),
            [1, 3],
            "numbers do not shift after DELE"
        );
        assert_eq!(d.deleted_uids(), [Uid(12)]);
        d.reset();
        assert_eq!(d.stat(), (3, 600));
        assert!(d.deleted_uids().is_empty());
    }
}
