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
//! query. A mailbox the process has not written to has no bound and is queried; the answer
//! then gives it one.
//!
//! That holds only while this process's writer is the database's only one. Several
//! front-ends may share one SQLite file (a small cluster on one host), and the admin CLI
//! opens it too. So every process holds a shared `flock` on `<database>.writers`, and the
//! bounds are used only while this process can convert it to an exclusive one (checked at
//! open and by the checkpointer every 250 ms). When another process appears the bounds are
//! dropped and every read queries, as before; when it is gone they start afresh. Between a
//! newcomer's open and the next check, one of its changes can be reported up to 250 ms late
//! here (never lost: it is in the change log, and read once the bounds are dropped).

use crate::types::{MailboxId, ModSeq};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The bounds, shared by the writer connection's trigger function and the readers.
#[derive(Debug, Default, Clone)]
pub(super) struct ModseqHints {
    bounds: Arc<Mutex<HashMap<i64, u64>>>,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    /// True while this process is the database's only writer (see the module doc).
    enabled: AtomicBool,
    /// Bumped whenever `enabled` flips: an answer read under another epoch is not learned.
    epoch: AtomicU64,
    /// The shared lock on `<database>.writers`; `None` in tests (always alone).
    lock: Mutex<Option<File>>,
}

impl ModseqHints {
    /// Takes this process's shared lock beside the database at `db`, and uses the bounds if
    /// no other process holds one.
    pub(super) fn open(db: &Path) -> std::io::Result<Self> {
        let mut p = db.as_os_str().to_owned();
        p.push(".writers");
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(Path::new(&p))?
        };
        file.lock_shared()?;
        let hints = Self::default();
        *hints.state.lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        hints.check_alone();
        Ok(hints)
    }

    /// Uses the bounds while no other process holds the lock; drops them when one does.
    pub(super) fn check_alone(&self) {
        let guard = self.state.lock.lock().unwrap_or_else(|e| e.into_inner());
        let alone = match guard.as_ref() {
            None => true,
            Some(f) => {
                // Converting shared → exclusive fails while another process holds it shared;
                // a failed conversion may drop our lock, so it is taken shared again either way.
                let alone = f.try_lock().is_ok();
                if let Err(e) = f.lock_shared() {
                    tracing::warn!(error = %e, "could not retake the writers lock");
                    false
                } else {
                    alone
                }
            }
        };
        drop(guard);
        if alone != self.state.enabled.load(Ordering::SeqCst) {
            self.bounds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.state.epoch.fetch_add(1, Ordering::SeqCst);
            self.state.enabled.store(alone, Ordering::SeqCst);
        }
    }

    /// Whether the bounds are in use (a read that could not learn one skips reading it).
    pub(super) fn enabled(&self) -> bool {
        self.state.enabled.load(Ordering::SeqCst)
    }

    /// The epoch a read begins in, to hand to [`learn`](Self::learn).
    pub(super) fn epoch(&self) -> u64 {
        self.state.epoch.load(Ordering::SeqCst)
    }

    /// Called (through the trigger) for each MODSEQ the writer takes.
    pub(super) fn raise(&self, mailbox: i64, modseq: u64) {
        let mut b = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        let e = b.entry(mailbox).or_insert(modseq);
        *e = (*e).max(modseq);
    }

    /// True when no change of `mailbox` can have a MODSEQ above `since`.
    pub(super) fn nothing_after(&self, mailbox: MailboxId, since: ModSeq) -> bool {
        if !self.state.enabled.load(Ordering::SeqCst) {
            return false;
        }
        let b = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        b.get(&mailbox.0).is_some_and(|&bound| since.0 >= bound)
    }

    /// Records what a query found: every change of `mailbox` committed before the query
    /// began has a MODSEQ of at most `seen`. Only fills a missing bound: a bound the writer
    /// set meanwhile is newer. Ignored unless the bounds were in use, in the same epoch,
    /// since before the query.
    pub(super) fn learn(&self, mailbox: MailboxId, seen: ModSeq, epoch: u64) {
        let mut b = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        if !self.state.enabled.load(Ordering::SeqCst) || self.epoch() != epoch {
            return;
        }
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
        h.check_alone();
        let e = h.epoch();
        let mb = MailboxId(7);
        assert!(!h.nothing_after(mb, ModSeq(100)), "unknown mailbox: query");
        h.learn(mb, ModSeq(5), e);
        assert!(h.nothing_after(mb, ModSeq(5)));
        assert!(!h.nothing_after(mb, ModSeq(4)));
        h.raise(7, 9);
        assert!(!h.nothing_after(mb, ModSeq(5)));
        h.learn(mb, ModSeq(6), e); // an older query's answer must not lower the bound
        assert!(!h.nothing_after(mb, ModSeq(8)));
        assert!(h.nothing_after(mb, ModSeq(9)));
        h.raise(7, 8); // never lowered
        assert!(!h.nothing_after(mb, ModSeq(8)));
        h.forget(7);
        assert!(!h.nothing_after(mb, ModSeq(9)));
    }

    #[test]
    fn a_second_process_on_the_database_turns_the_bounds_off_until_it_is_gone() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("m.sqlite3");
        let a = ModseqHints::open(&db).expect("open a");
        let mb = MailboxId(1);
        a.learn(mb, ModSeq(3), a.epoch());
        assert!(a.nothing_after(mb, ModSeq(3)), "alone: bounds used");
        // Another process (another open file description: flock treats it alike).
        let b = ModseqHints::open(&db).expect("open b");
        assert!(!b.nothing_after(mb, ModSeq(3)), "b is not alone");
        a.check_alone();
        assert!(!a.nothing_after(mb, ModSeq(3)), "a saw b: bounds dropped");
        let stale = a.epoch();
        drop(b);
        a.check_alone();
        assert!(
            a.state.enabled.load(Ordering::SeqCst),
            "b gone: bounds back"
        );
        a.learn(mb, ModSeq(3), stale);
        assert!(
            !a.nothing_after(mb, ModSeq(3)),
            "an answer read in an earlier epoch is not learned"
        );
        a.learn(mb, ModSeq(3), a.epoch());
        assert!(a.nothing_after(mb, ModSeq(3)));
    }
}
