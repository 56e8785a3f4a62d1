//! The full-text index of the clustered store: an inverted index of trigrams in CQL tables.
//!
//! - `fts_docs ((mailbox_id, uid), field, seq) -> text`: a message's texts (folded by the
//!   caller), one partition per message. They are the truth a search checks candidates
//!   against, and what a copy, an expunge and a mailbox deletion read.
//! - `fts_postings ((mailbox_id, gram), uid)`: for each trigram (three code points) of a
//!   message's texts, the message. One partition per mailbox and trigram, so a search
//!   reads a few partitions of its own mailbox, however many mailboxes the cluster holds,
//!   and a partition holds at most one row per message of the mailbox.
//! - `fts_pending ((mailbox_id), uid) -> reason`: messages the index cannot answer for
//!   (0: never indexed, 1: indexed incompletely), written *before* a message's row, so a
//!   message is never in a mailbox without being either indexed or pending.
//!
//! A search intersects the postings of up to [`QUERY_GRAMS`] trigrams of the needle and
//! then checks each candidate's texts for the needle itself, so postings are only a
//! filter: a posting left behind by a write cut short (postings are removed after a
//! message's row, by its trigrams) costs a wasted check, never a wrong answer.

use super::{db_err, ScyllaMetadataStore};
use crate::text_index::{
    answerable, trigrams, MessageText, TextMatches, TextPiece, MAX_SEARCH_FIELDS,
};
use crate::types::{MailboxId, Uid};
use crate::{StoreError, StoreResult};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashSet;

/// Schema version 6: the full-text index tables.
pub(super) const SCHEMA_V6: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.fts_docs (mailbox_id bigint, uid bigint, field text, \
     seq int, text text, PRIMARY KEY ((mailbox_id, uid), field, seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.fts_postings (mailbox_id bigint, gram text, uid bigint, \
     PRIMARY KEY ((mailbox_id, gram), uid))",
    "CREATE TABLE IF NOT EXISTS {ks}.fts_pending (mailbox_id bigint, uid bigint, reason int, \
     PRIMARY KEY (mailbox_id, uid))",
];

/// Trigrams of a needle whose postings a search reads (spread over the needle): each is a
/// partition read, and a few already make the candidate set small.
pub(super) const QUERY_GRAMS: usize = 6;

/// Distinct trigrams written per message. A message with more (over ~1 MiB of varied
/// text) is indexed incompletely: reported unverified by every search.
pub(super) const MAX_GRAMS: usize = 100_000;

/// Concurrent statements per index write or search.
const PARALLEL: usize = 32;

pub(super) const PENDING_INSERT: &str =
    "INSERT INTO fts_pending (mailbox_id, uid, reason) VALUES (?, ?, ?)";
const PENDING_DELETE: &str = "DELETE FROM fts_pending WHERE mailbox_id = ? AND uid = ?";
const PENDING_READ: &str = "SELECT uid, reason FROM fts_pending WHERE mailbox_id = ?";
const PENDING_ONE: &str = "SELECT reason FROM fts_pending WHERE mailbox_id = ? AND uid = ?";
const DOCS_READ: &str = "SELECT field, seq, text FROM fts_docs WHERE mailbox_id = ? AND uid = ?";
const DOCS_READ_FIELDS: &str =
    "SELECT text FROM fts_docs WHERE mailbox_id = ? AND uid = ? AND field IN ?";
const DOCS_INSERT: &str =
    "INSERT INTO fts_docs (mailbox_id, uid, field, seq, text) VALUES (?, ?, ?, ?, ?)";
const DOCS_DELETE: &str = "DELETE FROM fts_docs WHERE mailbox_id = ? AND uid = ?";
const POSTING_INSERT: &str = "INSERT INTO fts_postings (mailbox_id, gram, uid) VALUES (?, ?, ?)";
const POSTING_DELETE: &str =
    "DELETE FROM fts_postings WHERE mailbox_id = ? AND gram = ? AND uid = ?";
const POSTING_READ: &str = "SELECT uid FROM fts_postings WHERE mailbox_id = ? AND gram = ?";
const MESSAGE_EXISTS: &str =
    "SELECT uid FROM messages WHERE mailbox_id = ? AND bucket = ? AND uid = ?";

/// The trigrams of all of a message's texts; `None` past [`MAX_GRAMS`].
fn message_grams(pieces: &[TextPiece]) -> (Vec<String>, bool) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in pieces {
        for g in trigrams(&p.text) {
            if seen.insert(g.clone()) {
                if out.len() >= MAX_GRAMS {
                    return (out, false);
                }
                out.push(g);
            }
        }
    }
    (out, true)
}

/// Up to [`QUERY_GRAMS`] of `grams`, spread evenly (first and last included).
fn spread(grams: &[String]) -> Vec<String> {
    if grams.len() <= QUERY_GRAMS {
        return grams.to_vec();
    }
    let last = grams.len() - 1;
    let mut picked: Vec<String> = (0..QUERY_GRAMS)
        .map(|i| grams[i * last / (QUERY_GRAMS - 1)].clone())
        .collect();
    picked.dedup();
    picked
}

impl ScyllaMetadataStore {
    /// Runs one idempotent statement per row of values, [`PARALLEL`] at a time.
    async fn run_all<V>(&self, cql: &'static str, rows: Vec<V>) -> StoreResult<()>
    where
        V: scylla::serialize::row::SerializeRow + Send,
    {
        let runs: Vec<_> = rows.into_iter().map(|v| self.db.run(cql, v)).collect();
        futures::stream::iter(runs)
            .buffer_unordered(PARALLEL)
            .try_for_each(|_| futures::future::ready(Ok(())))
            .await
    }

    /// Whether one candidate has `needle` in one of `fields`.
    async fn fts_check(
        &self,
        mailbox: MailboxId,
        uid: i64,
        fields: Vec<String>,
        needle: &str,
    ) -> StoreResult<(i64, bool)> {
        let texts: Vec<(String,)> = self
            .db
            .all(DOCS_READ_FIELDS, (mailbox.0, uid, fields))
            .await?;
        Ok((uid, texts.iter().any(|t| t.0.contains(needle))))
    }

    /// The stored texts of one message.
    async fn fts_docs(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<Vec<TextPiece>> {
        let rows: Vec<(String, i32, String)> =
            self.db.all(DOCS_READ, (mailbox.0, uid.0 as i64)).await?;
        Ok(rows
            .into_iter()
            .map(|(field, _, text)| TextPiece { field, text })
            .collect())
    }

    /// Removes a message's index entries: postings (by the trigrams of its stored texts),
    /// texts, pending mark.
    pub(super) async fn fts_remove(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<()> {
        self.fts_clear(mailbox, uid).await?;
        self.db
            .run(PENDING_DELETE, (mailbox.0, uid.0 as i64))
            .await?;
        Ok(())
    }

    /// Removes a message's postings and texts (not its pending mark).
    async fn fts_clear(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<()> {
        let docs = self.fts_docs(mailbox, uid).await?;
        let (grams, _) = message_grams(&docs);
        self.run_all(
            POSTING_DELETE,
            grams
                .into_iter()
                .map(|g| (mailbox.0, g, uid.0 as i64))
                .collect(),
        )
        .await?;
        self.db.run(DOCS_DELETE, (mailbox.0, uid.0 as i64)).await?;
        Ok(())
    }

    /// Writes a message's entries: texts first, then postings, then the pending mark is
    /// cleared (or set to "incomplete"), so until the last write the message is pending.
    pub(super) async fn fts_write(
        &self,
        mailbox: MailboxId,
        uid: Uid,
        text: &MessageText,
    ) -> StoreResult<()> {
        text.validate()?;
        // Old entries out (a reindex, or a retried index call).
        let old = self.fts_docs(mailbox, uid).await?;
        if !old.is_empty() {
            // Pending while its texts change, so no search misses it meanwhile.
            self.db
                .run(PENDING_INSERT, (mailbox.0, uid.0 as i64, 0i32))
                .await?;
            self.fts_clear(mailbox, uid).await?;
        }
        self.run_all(
            DOCS_INSERT,
            text.pieces
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        mailbox.0,
                        uid.0 as i64,
                        p.field.clone(),
                        i as i32,
                        p.text.clone(),
                    )
                })
                .collect(),
        )
        .await?;
        let (grams, all_grams) = message_grams(&text.pieces);
        self.run_all(
            POSTING_INSERT,
            grams
                .into_iter()
                .map(|g| (mailbox.0, g, uid.0 as i64))
                .collect(),
        )
        .await?;
        if text.complete && all_grams {
            self.db
                .run(PENDING_DELETE, (mailbox.0, uid.0 as i64))
                .await?;
        } else {
            self.db
                .run(PENDING_INSERT, (mailbox.0, uid.0 as i64, 1i32))
                .await?;
        }
        Ok(())
    }

    pub(super) async fn fts_index(
        &self,
        mailbox: MailboxId,
        entries: Vec<(Uid, MessageText)>,
    ) -> StoreResult<()> {
        for (uid, text) in entries {
            text.validate()?;
            let exists: Option<(i64,)> = self
                .db
                .one(
                    MESSAGE_EXISTS,
                    (mailbox.0, super::bucket(uid.0 as u64), uid.0 as i64),
                )
                .await?;
            if exists.is_none() {
                continue;
            }
            self.fts_write(mailbox, uid, &text).await?;
            // An expunge that ran meanwhile found no entries to remove: take them out.
            let still: Option<(i64,)> = self
                .db
                .one(
                    MESSAGE_EXISTS,
                    (mailbox.0, super::bucket(uid.0 as u64), uid.0 as i64),
                )
                .await?;
            if still.is_none() {
                self.fts_remove(mailbox, uid).await?;
            }
        }
        Ok(())
    }

    /// Gives a copy its original's entries (the copy's row was written pending).
    pub(super) async fn fts_copy(
        &self,
        source: MailboxId,
        uid: Uid,
        dest: MailboxId,
        dest_uid: Uid,
    ) -> StoreResult<()> {
        let reason: Option<(i32,)> = self.db.one(PENDING_ONE, (source.0, uid.0 as i64)).await?;
        if reason == Some((0,)) {
            return Ok(()); // never indexed: the copy stays pending too
        }
        let pieces = self.fts_docs(source, uid).await?;
        let text = MessageText {
            pieces,
            complete: reason.is_none(),
        };
        self.fts_write(dest, dest_uid, &text).await
    }

    /// Removes the entries of every listed message of a mailbox being deleted.
    pub(super) async fn fts_drop_mailbox(
        &self,
        mailbox: MailboxId,
        uids: Vec<Uid>,
    ) -> StoreResult<()> {
        let removals: Vec<_> = uids
            .into_iter()
            .map(|u| self.fts_remove(mailbox, u))
            .collect();
        futures::stream::iter(removals)
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await?;
        self.db
            .run("DELETE FROM fts_pending WHERE mailbox_id = ?", (mailbox.0,))
            .await?;
        Ok(())
    }

    pub(super) async fn fts_search(
        &self,
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
        // Pending first (see the SQLite store): a message indexed meanwhile is then found
        // by the postings or still reported unverified.
        let pending: Vec<(i64, i32)> = self.db.all(PENDING_READ, (mailbox.0,)).await?;
        let mut candidates: Option<HashSet<i64>> = None;
        for g in spread(&trigrams(needle)) {
            let rows: Vec<(i64,)> = self.db.all(POSTING_READ, (mailbox.0, g.as_str())).await?;
            let set: HashSet<i64> = rows.into_iter().map(|r| r.0).collect();
            let next: HashSet<i64> = match candidates {
                None => set,
                Some(c) => c.intersection(&set).copied().collect(),
            };
            let empty = next.is_empty();
            candidates = Some(next);
            if empty {
                break;
            }
        }
        let candidates: Vec<i64> = candidates.unwrap_or_default().into_iter().collect();
        let checks: Vec<_> = candidates
            .into_iter()
            .map(|uid| self.fts_check(mailbox, uid, fields.to_vec(), needle))
            .collect();
        let checks = futures::stream::iter(checks)
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<(i64, bool)>>()
            .await?;
        let mut matched: Vec<u32> = checks
            .into_iter()
            .filter(|c| c.1)
            .filter_map(|c| u32::try_from(c.0).ok())
            .collect();
        matched.sort_unstable();
        let hit: HashSet<u32> = matched.iter().copied().collect();
        let mut unverified: Vec<u32> = pending
            .into_iter()
            .filter_map(|p| u32::try_from(p.0).ok())
            .filter(|u| !hit.contains(u))
            .collect();
        unverified.sort_unstable();
        Ok(Some(TextMatches {
            matched: matched.into_iter().map(Uid).collect(),
            unverified: unverified.into_iter().map(Uid).collect(),
        }))
    }

    pub(super) async fn fts_unindexed(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<Uid>> {
        let rows: Vec<(i64, i32)> = self
            .db
            .all(
                "SELECT uid, reason FROM fts_pending WHERE mailbox_id = ? AND uid > ?",
                (mailbox.0, after.0 as i64),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter(|r| r.1 == 0)
            .filter_map(|r| u32::try_from(r.0).ok())
            .take(limit)
            .map(Uid)
            .collect())
    }
}

/// Marks every message already stored as pending (schema version 4 on a keyspace that
/// has messages): a scan of the messages table, run once by the migration.
pub(super) async fn backfill_pending(
    session: &scylla::client::session::Session,
    ks: &str,
) -> StoreResult<()> {
    let insert = session
        .prepare(format!(
            "INSERT INTO {ks}.fts_pending (mailbox_id, uid, reason) VALUES (?, ?, 0)"
        ))
        .await
        .map_err(db_err)?;
    let pager = session
        .query_iter(format!("SELECT mailbox_id, uid FROM {ks}.messages"), ())
        .await
        .map_err(db_err)?;
    let mut rows = pager.rows_stream::<(i64, i64)>().map_err(super::row_err)?;
    while let Some(row) = rows.next().await {
        let (mailbox, uid) = row.map_err(db_err)?;
        session
            .execute_unpaged(&insert, (mailbox, uid))
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keeps_ends_and_bounds_reads() {
        let g: Vec<String> = (0..20).map(|i| format!("g{i:02}")).collect();
        let s = spread(&g);
        assert_eq!(s.len(), QUERY_GRAMS);
        assert_eq!(s.first(), g.first());
        assert_eq!(s.last(), g.last());
        assert_eq!(spread(&g[..3]), g[..3].to_vec());
    }

    #[test]
    fn message_grams_are_capped() {
        let p = vec![TextPiece {
            field: "body".into(),
            text: "abcd".into(),
        }];
        assert_eq!(message_grams(&p), (vec!["abc".into(), "bcd".into()], true));
    }

    #[test]
    fn schema_statements_are_qualified() {
        for s in SCHEMA_V6 {
            assert!(s.contains("IF NOT EXISTS {ks}."));
        }
    }
}
