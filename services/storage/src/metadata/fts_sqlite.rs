//! The full-text index of the embedded store: SQLite FTS5 with the trigram tokenizer.
//!
//! Every text of a message is a row of `fts_docs` (mailbox, UID, field, text), indexed by
//! the external-content FTS5 table `fts_text` (`tokenize='trigram case_sensitive 1'`),
//! which triggers keep in step. The trigram tokenizer turns a quoted phrase into the
//! string's trigrams at consecutive positions, so `MATCH '"needle"'` finds exactly the
//! texts of which the needle is a substring, for needles of three characters or more.
//! Case-sensitive, because the caller folds case itself (FTS5's folding is not Rust's
//! `to_lowercase`, and the index must agree with the scan code point for code point).
//!
//! `fts_pending` lists the messages the index cannot answer for: reason 0, never indexed
//! (every message when the index was created, every message until its texts are given),
//! reason 1, indexed incompletely. Triggers on `messages` add a new message as pending and
//! remove a deleted message's texts, so expunge, move and mailbox deletion need no code
//! here; a copy carries the texts along with [`copy_entries`].

use crate::text_index::{answerable, MessageText, TextMatches, MAX_SEARCH_FIELDS};
use crate::types::{MailboxId, Uid};
use crate::{StoreError, StoreResult};
use rusqlite::{params, params_from_iter, Connection};

/// Schema version 9: the full-text index. Every message already stored is pending (the
/// reindex, `mailfleet admin reindex`, indexes them).
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

/// Replaces the texts of the given messages (inside the writer's transaction).
///
/// The texts are staged in temporary tables and moved into `fts_docs` by one statement per
/// call, not one per text. Why: FTS5 writes its in-memory segment to disk at every
/// statement savepoint, so a statement per text made it flush (and later merge) once per
/// text of every message: ~31% of the server's CPU in an SMTP ingest profile. One
/// statement makes it one flush per batch of messages.
pub(super) fn index_text_tx(
    c: &Connection,
    mailbox: MailboxId,
    entries: &[(Uid, MessageText)],
) -> StoreResult<()> {
    c.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS fts_stage_msgs \
             (uid INTEGER PRIMARY KEY, complete INTEGER NOT NULL); \
         CREATE TEMP TABLE IF NOT EXISTS fts_stage \
             (uid INTEGER NOT NULL, field TEXT NOT NULL, text TEXT NOT NULL); \
         DELETE FROM temp.fts_stage_msgs; DELETE FROM temp.fts_stage;",
    )
    .map_err(db_err)?;
    let mut staged = 0usize;
    for (uid, text) in entries {
        text.validate()?;
        let exists = c
            .prepare_cached("SELECT 1 FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
            .map_err(db_err)?
            .exists(params![mailbox.0, uid.0])
            .map_err(db_err)?;
        if !exists {
            continue;
        }
        // A UID given twice: its last texts win, as with one call per entry.
        c.prepare_cached("DELETE FROM temp.fts_stage WHERE uid = ?1")
            .map_err(db_err)?
            .execute([uid.0])
            .map_err(db_err)?;
        c.prepare_cached(
            "INSERT OR REPLACE INTO temp.fts_stage_msgs (uid, complete) VALUES (?1, ?2)",
        )
        .map_err(db_err)?
        .execute(params![uid.0, text.complete])
        .map_err(db_err)?;
        let mut insert = c
            .prepare_cached("INSERT INTO temp.fts_stage (uid, field, text) VALUES (?1, ?2, ?3)")
            .map_err(db_err)?;
        for p in &text.pieces {
            insert
                .execute(params![uid.0, p.field, p.text])
                .map_err(db_err)?;
        }
        staged += 1;
    }
    if staged == 0 {
        return Ok(());
    }
    for sql in [
        "DELETE FROM fts_docs WHERE mailbox_id = ?1 \
         AND uid IN (SELECT uid FROM temp.fts_stage_msgs)",
        "INSERT INTO fts_docs (mailbox_id, uid, field, text) \
         SELECT ?1, uid, field, text FROM temp.fts_stage ORDER BY rowid",
        "DELETE FROM fts_pending WHERE mailbox_id = ?1 \
         AND uid IN (SELECT uid FROM temp.fts_stage_msgs WHERE complete)",
        "INSERT OR REPLACE INTO fts_pending (mailbox_id, uid, reason) \
         SELECT ?1, uid, 1 FROM temp.fts_stage_msgs WHERE NOT complete",
    ] {
        c.prepare_cached(sql)
            .map_err(db_err)?
            .execute([mailbox.0])
            .map_err(db_err)?;
    }
    c.execute_batch("DELETE FROM temp.fts_stage_msgs; DELETE FROM temp.fts_stage;")
        .map_err(db_err)?;
    Ok(())
}

/// Gives the copy `dest`/`dest_uid` the texts and the pending state of `source`/`uid`
/// (inside the copy's transaction, after the copy's row was inserted).
pub(super) fn copy_entries(
    c: &Connection,
    source: MailboxId,
    uid: Uid,
    dest: MailboxId,
    dest_uid: Uid,
) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO fts_docs (mailbox_id, uid, field, text) \
         SELECT ?1, ?2, field, text FROM fts_docs WHERE mailbox_id = ?3 AND uid = ?4 ORDER BY id",
    )
    .map_err(db_err)?
    .execute(params![dest.0, dest_uid.0, source.0, uid.0])
    .map_err(db_err)?;
    c.prepare_cached("DELETE FROM fts_pending WHERE mailbox_id = ?1 AND uid = ?2")
        .map_err(db_err)?
        .execute(params![dest.0, dest_uid.0])
        .map_err(db_err)?;
    c.prepare_cached(
        "INSERT INTO fts_pending (mailbox_id, uid, reason) \
         SELECT ?1, ?2, reason FROM fts_pending WHERE mailbox_id = ?3 AND uid = ?4",
    )
    .map_err(db_err)?
    .execute(params![dest.0, dest_uid.0, source.0, uid.0])
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
        "SELECT DISTINCT d.uid FROM fts_text CROSS JOIN fts_docs d ON d.id = fts_text.rowid \
         WHERE fts_text MATCH ?1 AND d.mailbox_id = ?2 AND d.field IN ({}) ORDER BY d.uid",
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
