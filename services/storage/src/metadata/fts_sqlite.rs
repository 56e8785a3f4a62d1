//! The full-text index of the embedded store: SQLite FTS5 with the trigram tokenizer, in a
//! database file of its own (`<metadata file>.fts`) written by a thread of its own.
//!
//! Every text of a message is a row of `fts_docs` (mailbox, UID, field, text), indexed by
//! the external-content FTS5 table `fts_text` (`tokenize='trigram case_sensitive 1'`),
//! which triggers keep in step. The trigram tokenizer turns a quoted phrase into the
//! string's trigrams at consecutive positions, so `MATCH '"needle"'` finds exactly the
//! texts of which the needle is a substring, for needles of three characters or more.
//! Case-sensitive, because the caller folds case itself (FTS5's folding is not Rust's
//! `to_lowercase`, and the index must agree with the scan code point for code point).
//!
//! Why a file and a writer of its own: a 10 KB body is ~10,000 trigram postings, and FTS5
//! writes and merges them at every commit. In the metadata database that work ran on the
//! single writer thread every delivery's and every IMAP command's commit waits for: it held
//! SMTP ingest at ~420 msg/s (from ~2,500 before the index existed), and the IMAP mix's
//! APPEND and EXPUNGE behind it. The index is derived data, so it can lag behind.
//!
//! Exactness does not depend on the lag. The metadata database keeps what the index
//! cannot answer for, kept by triggers and statements in the same transactions as the
//! messages themselves:
//! - `fts_pending`: reason 0, never indexed (every message until its texts are written
//!   here), reason 1, indexed incompletely. A search reports pending messages as
//!   unverified, and the caller looks at them directly. A pending mark is removed only
//!   after the texts are committed here, so a message is always pending, or found here.
//! - `fts_work`: what the index must still do for a change of `messages`: a deleted
//!   message's texts to drop (a trigger), a copy's texts to copy (`copy_tx`). The writer
//!   applies the rows in order and then deletes them; applying a row twice is harmless.
//!
//! A search counts a match only for a message that still exists, so texts of an expunged
//! message waiting in `fts_work` are never reported. Mailbox ids are never reused
//! (`AUTOINCREMENT`) and UIDs never within a mailbox, so a (mailbox, UID) pair names one
//! message forever. A copy or a move waits for its work to be applied, so the copy is
//! searchable when the command returns (as before the move to a separate file).

use crate::private_fs;
use crate::text_index::{answerable, MessageText, TextMatches, MAX_SEARCH_FIELDS};
use crate::types::{MailboxId, Uid};
use crate::{StoreError, StoreResult};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;

/// Schema version 9: the full-text index, then in the metadata database (a migration text:
/// frozen, so it repeats what [`INDEX_SCHEMA`] now creates in the index file). Every message
/// already stored is pending (`mailfleet reindex` indexes them).
pub(super) const SCHEMA_V9: &str = r#"
CREATE TABLE fts_docs (
    id INTEGER PRIMARY KEY,
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    field TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX fts_docs_message ON fts_docs(mailbox_id, uid);
CREATE VIRTUAL TABLE fts_text USING fts5(
    text, content='fts_docs', content_rowid='id', tokenize='trigram case_sensitive 1'
);
CREATE TRIGGER fts_docs_insert AFTER INSERT ON fts_docs BEGIN
    INSERT INTO fts_text(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER fts_docs_delete AFTER DELETE ON fts_docs BEGIN
    INSERT INTO fts_text(fts_text, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TABLE fts_pending (
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    reason INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
INSERT INTO fts_pending (mailbox_id, uid, reason) SELECT mailbox_id, uid, 0 FROM messages;
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT OR REPLACE INTO fts_pending (mailbox_id, uid, reason)
        VALUES (new.mailbox_id, new.uid, 0);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    DELETE FROM fts_docs WHERE mailbox_id = old.mailbox_id AND uid = old.uid;
    DELETE FROM fts_pending WHERE mailbox_id = old.mailbox_id AND uid = old.uid;
END;
"#;

fn db_err(e: rusqlite::Error) -> StoreError {
    super::sqlite::db_err(e)
}

/// Schema version 13 of the metadata database: the index moves to its own file (attached
/// as `fts` while this runs). Texts already indexed are moved, not indexed again; the
/// statements are safe to run again if a crash interrupts them (the index file is
/// emptied first, and the metadata database's part is one transaction).
pub(super) const SCHEMA_V13_MOVE: &str = r#"
DELETE FROM fts.fts_docs;
DELETE FROM fts.fts_indexed;
INSERT INTO fts.fts_docs (mailbox_id, uid, field, text)
    SELECT mailbox_id, uid, field, text FROM main.fts_docs ORDER BY id;
INSERT INTO fts.fts_indexed (mailbox_id, uid, complete)
    SELECT m.mailbox_id, m.uid, p.reason IS NULL FROM main.messages m
    LEFT JOIN main.fts_pending p ON p.mailbox_id = m.mailbox_id AND p.uid = m.uid
    WHERE p.reason IS NULL OR p.reason = 1;
DROP TRIGGER main.messages_fts_delete;
DROP TRIGGER main.fts_docs_insert;
DROP TRIGGER main.fts_docs_delete;
DROP TABLE main.fts_text;
DROP TABLE main.fts_docs;
CREATE TABLE main.fts_work (
    id INTEGER PRIMARY KEY,
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    src_mailbox_id INTEGER,
    src_uid INTEGER
);
CREATE TRIGGER main.messages_fts_delete AFTER DELETE ON messages BEGIN
    DELETE FROM fts_pending WHERE mailbox_id = old.mailbox_id AND uid = old.uid;
    INSERT INTO fts_work (mailbox_id, uid) VALUES (old.mailbox_id, old.uid);
END;
"#;

/// The index file's schema (its own `user_version` 1).
const INDEX_SCHEMA: &str = r#"
CREATE TABLE fts_docs (
    id INTEGER PRIMARY KEY,
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    field TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX fts_docs_message ON fts_docs(mailbox_id, uid);
CREATE VIRTUAL TABLE fts_text USING fts5(
    text, content='fts_docs', content_rowid='id', tokenize='trigram case_sensitive 1'
);
CREATE TRIGGER fts_docs_insert AFTER INSERT ON fts_docs BEGIN
    INSERT INTO fts_text(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER fts_docs_delete AFTER DELETE ON fts_docs BEGIN
    INSERT INTO fts_text(fts_text, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TABLE fts_indexed (
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
"#;

/// The index file beside the metadata database.
pub(super) fn index_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".fts");
    PathBuf::from(p)
}

/// Creates the index file (WAL, private like the database) if it does not exist; true
/// when it was created empty.
pub(super) fn create_index(path: &Path) -> StoreResult<bool> {
    match private_fs::create_file(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    let c = Connection::open(path).map_err(db_err)?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    let version: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    if version < 1 {
        c.execute_batch(&format!(
            "BEGIN IMMEDIATE; {INDEX_SCHEMA} PRAGMA user_version = 1; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    Ok(version < 1)
}

/// After the index file was found missing (a restore from a backup of the database alone,
/// or the file deleted to rebuild the index): every message is pending again, so no search
/// trusts texts the new, empty file does not hold. `mailfleet reindex` fills it.
pub(super) const RESET_PENDING: &str = r#"
BEGIN IMMEDIATE;
INSERT OR REPLACE INTO fts_pending (mailbox_id, uid, reason) SELECT mailbox_id, uid, 0 FROM messages;
DELETE FROM fts_work;
COMMIT;
"#;

/// Attaches the index file to a connection of the metadata database as `fts`.
pub(super) fn attach(c: &Connection, index: &Path) -> StoreResult<()> {
    let name = index
        .to_str()
        .ok_or_else(|| StoreError::Invalid(format!("index path {index:?} is not UTF-8")))?;
    c.execute("ATTACH DATABASE ?1 AS fts", [name])
        .map_err(db_err)?;
    Ok(())
}

/// A write in the metadata database's writer, waited for (from the index thread).
pub(super) type MainWrite =
    Box<dyn Fn(Box<dyn FnOnce(&Connection) -> StoreResult<()> + Send>) -> StoreResult<()> + Send>;

/// What the index thread is asked to do.
pub(super) enum IndexJob {
    /// Replace these messages' texts.
    Texts {
        mailbox: MailboxId,
        entries: Vec<(Uid, MessageText)>,
        done: oneshot::Sender<StoreResult<()>>,
    },
    /// Apply the `fts_work` rows committed so far (a copy or a move waits for this).
    Work(oneshot::Sender<StoreResult<()>>),
}

/// Jobs taken into one index transaction.
const MAX_JOBS: usize = 256;
/// `fts_work` rows applied per transaction.
const MAX_WORK_ROWS: i64 = 1000;
/// How often the thread looks at `fts_work` when nothing asks it to (expunges do not wait).
const WORK_EVERY: Duration = Duration::from_millis(500);

/// The index thread: owns the index file's only write connection in this process and a
/// read connection to the metadata database (to skip texts of messages already gone and
/// to read `fts_work`). Exits when every sender is gone, after finishing what is queued.
pub(super) fn run(
    index: Connection,
    meta: Connection,
    rx: std::sync::mpsc::Receiver<IndexJob>,
    main: MainWrite,
) {
    lower_priority();
    loop {
        let mut jobs = Vec::new();
        let last = match rx.recv_timeout(WORK_EVERY) {
            Ok(j) => {
                jobs.push(j);
                false
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => true,
        };
        while jobs.len() < MAX_JOBS {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        cycle(&index, &meta, jobs, &main);
        if last {
            return;
        }
    }
}

/// Niceness of the index thread (the lowest priority): the scheduler then gives the cores
/// to deliveries and IMAP commands first when they compete. Indexing is derived work that
/// may lag (a lagging message is pending, so searches stay exact); when the queue in front
/// of it is full, new messages overflow into a catch-up that runs once the queue has
/// drained (`crate::indexer`), so a burst of deliveries is never held to the index's pace.
const INDEX_NICENESS: i32 = 19;

/// Lowers this thread's scheduling priority (on Linux `setpriority` on a thread id applies
/// to that thread alone). Best effort: a failure only leaves the default priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), INDEX_NICENESS)
    {
        tracing::debug!(error = %e, "could not lower the full-text index thread's priority");
    }
}

/// One index transaction: the jobs' texts, then the work rows, then one metadata write
/// that clears the pending marks and the applied work rows.
fn cycle(index: &Connection, meta: &Connection, jobs: Vec<IndexJob>, main: &MainWrite) {
    let mut texts: Vec<(MailboxId, Vec<(Uid, MessageText)>)> = Vec::new();
    let mut waiting = Vec::new();
    for job in jobs {
        match job {
            IndexJob::Texts {
                mailbox,
                entries,
                done,
            } => match entries.iter().try_for_each(|(_, t)| t.validate()) {
                Ok(()) => {
                    texts.push((mailbox, entries));
                    waiting.push(done);
                }
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            },
            IndexJob::Work(done) => waiting.push(done),
        }
    }
    let result = apply(index, meta, &texts, main);
    if let Err(e) = &result {
        tracing::warn!(error = %e, "full-text index write failed; the messages stay pending");
    }
    for done in waiting {
        let _ = done.send(result.clone());
    }
}

/// A pending mark to set after the index commit: (mailbox, UID, complete).
type Outcome = (i64, u32, bool);

fn apply(
    index: &Connection,
    meta: &Connection,
    texts: &[(MailboxId, Vec<(Uid, MessageText)>)],
    main: &MainWrite,
) -> StoreResult<()> {
    // What exists now; a message expunged after this read leaves a work row behind,
    // applied after these texts (here or in a later cycle).
    let mut live = Vec::new();
    for (mailbox, entries) in texts {
        for (uid, text) in entries {
            let exists = meta
                .prepare_cached("SELECT 1 FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
                .map_err(db_err)?
                .exists(params![mailbox.0, uid.0])
                .map_err(db_err)?;
            if exists {
                live.push((mailbox.0, uid.0, text));
            }
        }
    }
    type WorkRow = (i64, i64, u32, Option<i64>, Option<u32>);
    let work: Vec<WorkRow> = meta
        .prepare_cached(
            "SELECT id, mailbox_id, uid, src_mailbox_id, src_uid FROM fts_work \
             ORDER BY id LIMIT ?1",
        )
        .map_err(db_err)?
        .query_map([MAX_WORK_ROWS], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    if live.is_empty() && work.is_empty() {
        return Ok(());
    }

    let mut outcomes: Vec<Outcome> = Vec::new();
    index.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
    let written = (|| -> StoreResult<()> {
        write_texts(index, &live)?;
        outcomes.extend(live.iter().map(|(m, u, t)| (*m, *u, t.complete)));
        for (_, mailbox, uid, src_mailbox, src_uid) in &work {
            remove_texts(index, *mailbox, *uid)?;
            if let (Some(sm), Some(su)) = (src_mailbox, src_uid) {
                let complete: Option<bool> = index
                    .prepare_cached(
                        "SELECT complete FROM fts_indexed WHERE mailbox_id = ?1 AND uid = ?2",
                    )
                    .map_err(db_err)?
                    .query_row(params![sm, su], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?;
                // A source not indexed yet: the copy stays pending (reason 0), for the
                // reindex, exactly like a message whose indexing failed.
                let Some(complete) = complete else { continue };
                index
                    .prepare_cached(
                        "INSERT INTO fts_docs (mailbox_id, uid, field, text) \
                         SELECT ?1, ?2, field, text FROM fts_docs \
                         WHERE mailbox_id = ?3 AND uid = ?4 ORDER BY id",
                    )
                    .map_err(db_err)?
                    .execute(params![mailbox, uid, sm, su])
                    .map_err(db_err)?;
                index
                    .prepare_cached(
                        "INSERT INTO fts_indexed (mailbox_id, uid, complete) VALUES (?1, ?2, ?3)",
                    )
                    .map_err(db_err)?
                    .execute(params![mailbox, uid, complete])
                    .map_err(db_err)?;
                outcomes.push((*mailbox, *uid, complete));
            }
        }
        Ok(())
    })();
    match written {
        Ok(()) => index.execute_batch("COMMIT").map_err(db_err)?,
        Err(e) => {
            let _ = index.execute_batch("ROLLBACK");
            return Err(e);
        }
    }

    // Only now, with the texts durable here, may the metadata database stop calling the
    // messages pending.
    let last_work = work.last().map(|w| w.0);
    main(Box::new(move |c| {
        for (mailbox, uid, complete) in &outcomes {
            if *complete {
                c.prepare_cached("DELETE FROM fts_pending WHERE mailbox_id = ?1 AND uid = ?2")
                    .map_err(db_err)?
                    .execute(params![mailbox, uid])
                    .map_err(db_err)?;
            } else {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO fts_pending (mailbox_id, uid, reason) \
                     SELECT ?1, ?2, 1 WHERE EXISTS \
                     (SELECT 1 FROM messages WHERE mailbox_id = ?1 AND uid = ?2)",
                )
                .map_err(db_err)?
                .execute(params![mailbox, uid])
                .map_err(db_err)?;
            }
        }
        if let Some(last) = last_work {
            c.prepare_cached("DELETE FROM fts_work WHERE id <= ?1")
                .map_err(db_err)?
                .execute([last])
                .map_err(db_err)?;
        }
        Ok(())
    }))
}

fn remove_texts(c: &Connection, mailbox: i64, uid: u32) -> StoreResult<()> {
    c.prepare_cached("DELETE FROM fts_docs WHERE mailbox_id = ?1 AND uid = ?2")
        .map_err(db_err)?
        .execute(params![mailbox, uid])
        .map_err(db_err)?;
    c.prepare_cached("DELETE FROM fts_indexed WHERE mailbox_id = ?1 AND uid = ?2")
        .map_err(db_err)?
        .execute(params![mailbox, uid])
        .map_err(db_err)?;
    Ok(())
}

/// Replaces the texts of the given messages (inside the index transaction).
///
/// The texts are staged in temporary tables and moved into `fts_docs` by one statement per
/// transaction, not one per text. Why: FTS5 writes its in-memory segment to disk at every
/// statement savepoint, so a statement per text made it flush (and later merge) once per
/// text of every message: ~31% of the server's CPU in an SMTP ingest profile. One
/// statement makes it one flush per batch of messages.
fn write_texts(c: &Connection, entries: &[(i64, u32, &MessageText)]) -> StoreResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    c.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS fts_stage_msgs \
             (mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL, complete INTEGER NOT NULL, \
              PRIMARY KEY (mailbox_id, uid)); \
         CREATE TEMP TABLE IF NOT EXISTS fts_stage (mailbox_id INTEGER NOT NULL, \
             uid INTEGER NOT NULL, field TEXT NOT NULL, text TEXT NOT NULL); \
         DELETE FROM temp.fts_stage_msgs; DELETE FROM temp.fts_stage;",
    )
    .map_err(db_err)?;
    for (mailbox, uid, text) in entries {
        // A message given twice: its last texts win, as with one call per entry.
        c.prepare_cached("DELETE FROM temp.fts_stage WHERE mailbox_id = ?1 AND uid = ?2")
            .map_err(db_err)?
            .execute(params![mailbox, uid])
            .map_err(db_err)?;
        c.prepare_cached(
            "INSERT OR REPLACE INTO temp.fts_stage_msgs (mailbox_id, uid, complete) \
             VALUES (?1, ?2, ?3)",
        )
        .map_err(db_err)?
        .execute(params![mailbox, uid, text.complete])
        .map_err(db_err)?;
        let mut insert = c
            .prepare_cached(
                "INSERT INTO temp.fts_stage (mailbox_id, uid, field, text) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db_err)?;
        for p in &text.pieces {
            insert
                .execute(params![mailbox, uid, p.field, p.text])
                .map_err(db_err)?;
        }
    }
    c.execute_batch(
        "DELETE FROM fts_docs WHERE id IN (SELECT d.id FROM fts_docs d \
             JOIN temp.fts_stage_msgs s ON d.mailbox_id = s.mailbox_id AND d.uid = s.uid); \
         INSERT INTO fts_docs (mailbox_id, uid, field, text) \
             SELECT mailbox_id, uid, field, text FROM temp.fts_stage ORDER BY rowid; \
         INSERT OR REPLACE INTO fts_indexed (mailbox_id, uid, complete) \
             SELECT mailbox_id, uid, complete FROM temp.fts_stage_msgs; \
         DELETE FROM temp.fts_stage_msgs; DELETE FROM temp.fts_stage;",
    )
    .map_err(db_err)?;
    Ok(())
}

/// The FTS5 query for a substring: one phrase, quotes doubled.
fn phrase(needle: &str) -> String {
    format!("\"{}\"", needle.replace('"', "\"\""))
}

pub(super) fn search(
    c: &Connection,
    mailbox: MailboxId,
    fields: &[String],
    needle: &str,
) -> StoreResult<Option<TextMatches>> {
    if !answerable(needle) {
        return Ok(None);
    }
    if fields.is_empty() || fields.len() > MAX_SEARCH_FIELDS {
        return Err(StoreError::Invalid(format!(
            "{} fields in a text search",
            fields.len()
        )));
    }
    // Pending first: a message indexed between the two reads is then either still
    // reported unverified or found by the match, never missed.
    let pending: Vec<u32> = c
        .prepare_cached("SELECT uid FROM fts_pending WHERE mailbox_id = ?1 ORDER BY uid")
        .map_err(db_err)?
        .query_map([mailbox.0], |r| r.get::<_, u32>(0))
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    let marks: Vec<String> = (0..fields.len()).map(|i| format!("?{}", i + 3)).collect();
    let sql = format!(
        // CROSS JOIN keeps the FTS match as the outer loop: otherwise the planner may walk
        // every text of the mailbox and test each against the match.
        // The message must still exist: an expunged one's texts wait in `fts_work`.
        "SELECT DISTINCT d.uid FROM fts.fts_text t CROSS JOIN fts.fts_docs d ON d.id = t.rowid \
         WHERE t.fts_text MATCH ?1 AND d.mailbox_id = ?2 AND d.field IN ({}) \
         AND EXISTS (SELECT 1 FROM main.messages m WHERE m.mailbox_id = d.mailbox_id \
         AND m.uid = d.uid) ORDER BY d.uid",
        marks.join(", ")
    );
    let mut values: Vec<rusqlite::types::Value> = vec![phrase(needle).into(), mailbox.0.into()];
    values.extend(fields.iter().map(|f| f.clone().into()));
    let matched: Vec<u32> = c
        .prepare_cached(&sql)
        .map_err(db_err)?
        .query_map(params_from_iter(values), |r| r.get::<_, u32>(0))
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    let hit: std::collections::HashSet<u32> = matched.iter().copied().collect();
    Ok(Some(TextMatches {
        matched: matched.into_iter().map(Uid).collect(),
        unverified: pending
            .into_iter()
            .filter(|u| !hit.contains(u))
            .map(Uid)
            .collect(),
    }))
}

pub(super) fn unindexed(
    c: &Connection,
    mailbox: MailboxId,
    after: Uid,
    limit: usize,
) -> StoreResult<Vec<Uid>> {
    c.prepare_cached(
        "SELECT uid FROM fts_pending WHERE mailbox_id = ?1 AND uid > ?2 AND reason = 0 \
         ORDER BY uid LIMIT ?3",
    )
    .map_err(db_err)?
    .query_map(
        params![mailbox.0, after.0, limit.min(100_000) as i64],
        |r| Ok(Uid(r.get::<_, u32>(0)?)),
    )
    .map_err(db_err)?
    .collect::<Result<_, _>>()
    .map_err(db_err)
}
