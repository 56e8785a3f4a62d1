//! An in-memory upper bound on each mailbox's newest MODSEQ, so that asking the embedded
//! store "what changed in this mailbox since MODSEQ n" costs no query when nothing did.
//!
//! Why: every IMAP command refreshes its session's view of the selected mailbox first
//! (RFC 9051 §7: the client must learn of expunges and flag changes), and in the common case
//! nothing changed. The profile of the IMAP mix (docs/benchmarks.md) had ~8% of the server's
//! CPU in those empty `changes_since` queries and the blocking-pool hand-offs they cost.
//!
//! Why it is exact: the writer connection raises the bound from a trigger on
//! `mailboxes.highest_modseq` (every MODSEQ a change gets is taken there), *inside* the
//! transaction, so the bound is raised before the change commits and is never below a
//! committed MODSEQ. A rolled-back transaction leaves the bound too high, which only costs a
//! query. A mailbox the process has not written to since it started has no bound and is
//! queried; the answer then gives it one. Sound because in embedded mode this process's
//! writer is the only one that changes messages (the admin CLI only reads them; the cluster
//! backends do not use this).

use crate::types::{MailboxId, ModSeq};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The bounds, shared by the writer connection's trigger function and the readers.
#[derive(Debug, Default, Clone)]
pub(super) struct ModseqHints {
    bounds: Arc<Mutex<HashMap<i64, u64>>>,
}

impl ModseqHints {
    /// Called (through the trigger) for each MODSEQ the writer takes.
    pub(super) fn raise(&self, mailbox: i64, modseq: u64) {
        let mut b = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        let e = b.entry(mailbox).or_insert(modseq);
        *e = (*e).max(modseq);
    }

    /// True when no change of `mailbox` can have a MODSEQ above `since`.
    pub(super) fn nothing_after(&self, mailbox: MailboxId, since: ModSeq) -> bool {
        let b = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        b.get(&mailbox.0).is_some_and(|&bound| since.0 >= bound)
    }

    /// Records what a query found: every change of `mailbox` committed before the query
    /// began has a MODSEQ of at most `seen`. Only fills a missing bound: a bound the writer
    /// set meanwhile is newer.
    pub(super) fn learn(&self, mailbox: MailboxId, seen: ModSeq) {
        let mut b = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        b.entry(mailbox.0).or_insert(seen.0);
    }

    /// Forgets a mailbox (deleted): its id is never reused, this only frees the entry.
    pub(super) fn forget(&self, mailbox: i64) {
        self.bounds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&mailbox);
    }

    /// Registers `mf_modseq_taken(mailbox, modseq)` and the TEMP triggers that call it on
    /// the writer connection.
    pub(super) fn install(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        use rusqlite::functions::FunctionFlags;
        let raise = self.clone();
        conn.create_scalar_function(
            "mf_modseq_taken",
            2,
            FunctionFlags::SQLITE_UTF8,
            move |ctx| {
                let mailbox: i64 = ctx.get(0)?;
                let modseq: i64 = ctx.get(1)?;
                raise.raise(mailbox, modseq.max(0) as u64);
                Ok(0i64)
            },
        )?;
        let forget = self.clone();
        conn.create_scalar_function(
            "mf_mailbox_gone",
            1,
            FunctionFlags::SQLITE_UTF8,
            move |ctx| {
                forget.forget(ctx.get(0)?);
                Ok(0i64)
            },
        )?;
        conn.execute_batch(
            "CREATE TEMP TRIGGER mf_modseq_hint AFTER UPDATE OF highest_modseq ON main.mailboxes \
             BEGIN SELECT mf_modseq_taken(NEW.id, NEW.highest_modseq); END; \
             CREATE TEMP TRIGGER mf_modseq_hint_insert AFTER INSERT ON main.mailboxes \
             BEGIN SELECT mf_modseq_taken(NEW.id, NEW.highest_modseq); END; \
             CREATE TEMP TRIGGER mf_modseq_hint_gone AFTER DELETE ON main.mailboxes \
             BEGIN SELECT mf_mailbox_gone(OLD.id); END;",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_only_grow_and_a_query_only_fills_a_missing_one() {
        let h = ModseqHints::default();
        let mb = MailboxId(7);
        assert!(!h.nothing_after(mb, ModSeq(100)), "unknown mailbox: query");
        h.learn(mb, ModSeq(5));
        assert!(h.nothing_after(mb, ModSeq(5)));
        assert!(!h.nothing_after(mb, ModSeq(4)));
        h.raise(7, 9);
        assert!(!h.nothing_after(mb, ModSeq(5)));
        h.learn(mb, ModSeq(6)); // an older query's answer must not lower the bound
        assert!(!h.nothing_after(mb, ModSeq(8)));
        assert!(h.nothing_after(mb, ModSeq(9)));
        h.raise(7, 8); // never lowered
        assert!(!h.nothing_after(mb, ModSeq(8)));
        h.forget(7);
        assert!(!h.nothing_after(mb, ModSeq(9)));
    }
}
