//! The clustered metadata store: ScyllaDB (CQL) for deployments of several front-ends.
//!
//! ScyllaDB has no multi-row transactions, so every operation of [`MetadataStore`] is built
//! from single-partition writes whose order keeps readers safe, plus lightweight
//! transactions (LWT, Paxos) where uniqueness must be decided by the cluster. The full
//! design (tables, consistency levels, failure cases) is in `docs/scylla.md`; the short
//! version:
//!
//! - **UIDs and MODSEQs** come from [`crate::alloc::RangeAllocator`]: a coordinator lease per
//!   mailbox serialises its writers cluster-wide and blocks of values are reserved in the
//!   `uid_ledger` table with one LWT per block, not per message.
//! - **Ids** of domains, accounts, mailboxes, app passwords and queue entries come from the
//!   `sequences` table: each process reserves a block of [`ID_BLOCK`] ids with one LWT, so ids
//!   are unique across nodes (and increase within a process, not globally).
//! - **Uniqueness** of domain names, account addresses, mailbox names, aliases and app
//!   password names/tags is decided by `INSERT ... IF NOT EXISTS` on a table keyed by the
//!   unique value.
//! - **Usage and blob reference counts** are CQL counters: cheap and contention-free, but a
//!   counter update that times out may or may not have applied and is never retried, so the
//!   numbers can drift under failures. Quota is therefore advisory under concurrency and
//!   the blob sweep keeps its grace period (see `docs/scylla.md`).
//! - **Consistency**: QUORUM (LOCAL_QUORUM when a local datacenter is configured) for reads
//!   and writes, SERIAL (LOCAL_SERIAL) for LWTs; idempotent statements are marked so the
//!   driver may retry them, counter updates and LWTs are not.

mod blob_gc;
mod domain_shards;
mod due_index;
mod fts;

use super::{ConditionalStore, Expunged, MetadataStore, QuotaPolicy};
use crate::alloc::{AllocConfig, LedgerState, MailboxWriter, RangeAllocator, RangeLedger};
use crate::coord::Coordinator;
use crate::types::*;
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use mailfleet_core::config::ScyllaConfig;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{Counter, CqlValue, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Messages and change-log entries are partitioned by `(mailbox_id, value >> BUCKET_SHIFT)`:
/// 65,536 UIDs (or MODSEQs) per partition keeps a partition well under ScyllaDB's
/// large-partition warning (a message row without its summary is ~250 bytes, so at most
/// ~16 MB; `message_rows_stay_small` measures it), while a typical mailbox still lives in
/// one partition and lists with one query. The summaries (ENVELOPE and BODYSTRUCTURE,
/// 1–10 KB each) live in `message_summaries` since v14, partitioned by
/// [`SUMMARY_SHIFT`]: in the message rows they made a full bucket ~100 MB and every
/// listing of a mailbox carried them.
pub const BUCKET_SHIFT: u32 = 16;

/// `message_summaries` is partitioned by `(mailbox_id, uid >> SUMMARY_SHIFT)`: 1,024
/// summaries of at most a few KB each, a few MB per partition.
pub const SUMMARY_SHIFT: u32 = 10;

fn summary_bucket(uid: Uid) -> i64 {
    i64::from(uid.0 >> SUMMARY_SHIFT)
}

/// Ids reserved per `sequences` LWT. Large enough that id allocation is rarely a Paxos
/// round, small enough that a restart wastes few ids.
pub const ID_BLOCK: i64 = 100;

/// Schema version recorded in `schema_version`; migrations run in order up to it.
const SCHEMA_VERSION: i32 = 15;

/// Tables of schema version 1. `{ks}` is replaced by the keyspace name.
const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.sequences (name text PRIMARY KEY, next bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.domains (name text PRIMARY KEY, id bigint, created_at bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.accounts (id bigint PRIMARY KEY, domain_id bigint, \
     address text, password_hash text, quota_bytes bigint, created_at bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.accounts_by_address (address text PRIMARY KEY, id bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.accounts_by_domain (domain_id bigint, address text, \
     id bigint, PRIMARY KEY (domain_id, address))",
    "CREATE TABLE IF NOT EXISTS {ks}.account_usage (account_id bigint PRIMARY KEY, \
     used_bytes counter, message_count counter)",
    "CREATE TABLE IF NOT EXISTS {ks}.aliases (source text, target text, domain text, \
     PRIMARY KEY (source, target))",
    "CREATE TABLE IF NOT EXISTS {ks}.aliases_by_domain (domain text, source text, target text, \
     PRIMARY KEY (domain, source, target))",
    "CREATE TABLE IF NOT EXISTS {ks}.aliases_by_target (target text, source text, \
     PRIMARY KEY (target, source))",
    "CREATE TABLE IF NOT EXISTS {ks}.mailboxes (id bigint PRIMARY KEY, account_id bigint, \
     name text, special_use text, uid_validity bigint, uid_next bigint, \
     highest_modseq bigint, message_count bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.mailboxes_by_account (account_id bigint, name text, \
     id bigint, PRIMARY KEY (account_id, name))",
    "CREATE TABLE IF NOT EXISTS {ks}.uid_ledger (mailbox_id bigint PRIMARY KEY, \
     uid_next bigint, modseq_next bigint, fence bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.messages (mailbox_id bigint, bucket bigint, uid bigint, \
     modseq bigint, blob_id text, size bigint, internal_date bigint, flags text, summary blob, \
     PRIMARY KEY ((mailbox_id, bucket), uid))",
    "CREATE TABLE IF NOT EXISTS {ks}.changes (mailbox_id bigint, bucket bigint, modseq bigint, \
     uid bigint, kind int, PRIMARY KEY ((mailbox_id, bucket), modseq))",
    "CREATE TABLE IF NOT EXISTS {ks}.blob_refs (blob_id text PRIMARY KEY, refcount counter)",
    "CREATE TABLE IF NOT EXISTS {ks}.blob_orphans (blob_id text PRIMARY KEY, since bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.subscriptions (account_id bigint, name text, \
     PRIMARY KEY (account_id, name))",
    "CREATE TABLE IF NOT EXISTS {ks}.app_passwords (account_id bigint, name text, id bigint, \
     tag text, hash text, created_at bigint, last_used bigint, PRIMARY KEY (account_id, name))",
    "CREATE TABLE IF NOT EXISTS {ks}.app_password_tags (account_id bigint, tag text, name text, \
     PRIMARY KEY (account_id, tag))",
    "CREATE TABLE IF NOT EXISTS {ks}.app_password_ids (id bigint PRIMARY KEY, account_id bigint, \
     name text)",
    "CREATE TABLE IF NOT EXISTS {ks}.totp_secrets (account_id bigint PRIMARY KEY, secret blob, \
     created_at bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.sender_grants (account_id bigint, address text, \
     PRIMARY KEY (account_id, address))",
    "CREATE TABLE IF NOT EXISTS {ks}.outbound (id bigint PRIMARY KEY, blob_id text, size bigint, \
     sender text, account_id bigint, envid text, ret text, created_at bigint, fence bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.outbound_ids (shard int, id bigint, \
     PRIMARY KEY (shard, id))",
    "CREATE TABLE IF NOT EXISTS {ks}.outbound_rcpts (queue_id bigint, seq int, address text, \
     state int, attempts int, next_attempt bigint, last_error text, notify text, orcpt text, \
     delay_warned boolean, PRIMARY KEY (queue_id, seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.outbound_due (shard int, next_attempt bigint, \
     queue_id bigint, seq int, PRIMARY KEY (shard, next_attempt, queue_id, seq))",
];

/// Schema version 2: blob pins (written with a TTL, so they expire without a sweep), the
/// claim a sweep holds on an orphan while it deletes the bytes, and the last TOTP time step
/// accepted per account. `ALTER TABLE ... ADD` has no `IF NOT EXISTS`; a column that is
/// already there (a concurrent or interrupted migration) is not an error.
const SCHEMA_V2: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.blob_pins (blob_id text PRIMARY KEY, at bigint)",
    "ALTER TABLE {ks}.blob_orphans ADD claimed bigint",
    "ALTER TABLE {ks}.totp_secrets ADD last_step bigint",
];

/// Schema version 3: the `\Recent` watermark of each mailbox, raised by compare-and-set
/// (see [`MetadataStore::claim_recent`]). A table of its own, so the LWTs on it never
/// contend with the mailbox row's writers.
const SCHEMA_V3: &[&str] =
    &["CREATE TABLE IF NOT EXISTS {ks}.recent_marks (mailbox_id bigint PRIMARY KEY, uid bigint)"];

/// Schema version 4: the save date of each message (IMAP SAVEDATE, RFC 8514), written by
/// every append, copy and move; null in rows written before. An `ALTER TABLE ... ADD`, so
/// an "already exists" error (a concurrent migration) is not a failure, as for version 2.
const SCHEMA_V4: &[&str] = &["ALTER TABLE {ks}.messages ADD save_date bigint"];

/// Schema version 5: `\Noselect` placeholders, mailbox ACLs (RFC 4314) kept twice — by
/// mailbox (`acl`, read by GETACL and rights checks) and by identifier (`acl_by_identifier`,
/// "mailboxes shared with me", read at LIST) — written together in logged batches, and
/// metadata entries (RFC 5464): per mailbox in one partition (so they go with the mailbox in
/// one delete, and RENAME, which keeps the id, keeps them), server entries per account.
const SCHEMA_V5: &[&str] = &[
    "ALTER TABLE {ks}.mailboxes ADD noselect boolean",
    "CREATE TABLE IF NOT EXISTS {ks}.acl (mailbox_id bigint, identifier text, owner_id bigint, \
     rights text, PRIMARY KEY (mailbox_id, identifier))",
    "CREATE TABLE IF NOT EXISTS {ks}.acl_by_identifier (identifier text, mailbox_id bigint, \
     owner_id bigint, rights text, PRIMARY KEY (identifier, mailbox_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.mailbox_metadata (mailbox_id bigint, account_id bigint, \
     name text, value blob, PRIMARY KEY (mailbox_id, account_id, name))",
    "CREATE TABLE IF NOT EXISTS {ks}.server_metadata (account_id bigint, name text, \
     value blob, PRIMARY KEY (account_id, name))",
];

/// Schema version 7: object ids (IMAP OBJECTID, RFC 8474; see [`crate::object_id`]).
/// Each message row gets its EMAILID and THREADID (null in rows written before: those have
/// the deterministic legacy ids, computed when read, and a copy or move writes them out).
/// `thread_index` maps an account's message-ids to threads, one partition per key so a
/// lookup is one read; `object_members` lists the messages of each EMAILID and THREADID
/// (the answer to SEARCH EMAILID/THREADID and to JMAP), written with each message row and
/// checked against it when read (an entry whose message is gone is dropped then).
const SCHEMA_V7: &[&str] = &[
    "ALTER TABLE {ks}.messages ADD email_id text",
    "ALTER TABLE {ks}.messages ADD thread_id text",
    "CREATE TABLE IF NOT EXISTS {ks}.thread_index (account_id bigint, message_id text, \
     thread_id text, PRIMARY KEY ((account_id, message_id)))",
    "CREATE TABLE IF NOT EXISTS {ks}.object_members (account_id bigint, object_id text, \
     mailbox_id bigint, uid bigint, PRIMARY KEY ((account_id, object_id), mailbox_id, uid))",
];

/// v8: the W3C `traceparent` a message or queue entry was received under, so later reads
/// and delivery attempts join its trace (null in rows written before).
const SCHEMA_V8: &[&str] = &[
    "ALTER TABLE {ks}.messages ADD trace text",
    "ALTER TABLE {ks}.outbound ADD trace text",
];

/// v9: DKIM signing keys (crate::dkim), one partition per domain; every write is a
/// lightweight transaction, so two front-ends rotating at once cannot both win.
const SCHEMA_V9: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.dkim_keys (domain text, selector text, algorithm text, \
     private_der blob, state text, created_at bigint, state_since bigint, \
     PRIMARY KEY ((domain), selector))",
];

/// v10: account settings (display name, suspension, allowed protocols as bits of
/// [`crate::Protocols`]) and the owner marks of accounts and domains. Null in rows written
/// before reads as the defaults (not suspended, every protocol, unmanaged).
const SCHEMA_V10: &[&str] = &[
    "ALTER TABLE {ks}.accounts ADD display_name text",
    "ALTER TABLE {ks}.accounts ADD suspended boolean",
    "ALTER TABLE {ks}.accounts ADD protocols int",
    "ALTER TABLE {ks}.accounts ADD managed_by text",
    "ALTER TABLE {ks}.domains ADD managed_by text",
];

/// v11: a domain's quota (the most its accounts' quotas may add up to). Null: none.
const SCHEMA_V11: &[&str] = &["ALTER TABLE {ks}.domains ADD quota_bytes bigint"];

/// v12: keyed records of an account or of the installation (scope 0), see [`crate::data`].
/// One partition per scope, so deleting an account drops its records in one statement;
/// expiry is a cell TTL as well as the stored `expires_at`.
const SCHEMA_V12: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.records (scope bigint, kind text, key text, value blob, \
     version bigint, expires_at bigint, PRIMARY KEY (scope, kind, key))",
];

/// v13: mailbox ownership in the UID ledger (see [`crate::alloc`]): the owner, where its
/// values start (the range a successor settles) and its write-timestamp bound. `fence` is
/// now the row's epoch, bumped by every compare-and-set. Null in rows written before:
/// no owner, nothing to settle. And the mailbox's unseen count and size beside its
/// message count.
const SCHEMA_V13: &[&str] = &[
    "ALTER TABLE {ks}.uid_ledger ADD owner bigint",
    "ALTER TABLE {ks}.uid_ledger ADD uid_from bigint",
    "ALTER TABLE {ks}.uid_ledger ADD modseq_from bigint",
    "ALTER TABLE {ks}.uid_ledger ADD ts_until bigint",
    // STATUS in one read (point 5): kept by every write under the mailbox's ownership.
    // Null in rows written before: counted once by the next write.
    "ALTER TABLE {ks}.mailboxes ADD unseen_count bigint",
    "ALTER TABLE {ks}.mailboxes ADD total_size bigint",
];

/// v14: the outbound queue sharded (see [`due_index`]): ids in 64 shards, the due index
/// in `(shard, bucket)` partitions read from a per-shard cursor, and each recipient's due
/// bucket kept in its row. Queued recipients of earlier schemas are moved over by
/// [`reindex_queue`]. Blob references become rows and the orphan sweep reads a log (see
/// [`blob_gc`]); orphans recorded before are put into the log by [`log_orphans`], and
/// references counted before (`blob_refs`) still keep their blobs.
const SCHEMA_V14: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.outbound_due_by_time (shard int, bucket bigint, \
     next_attempt bigint, queue_id bigint, seq int, \
     PRIMARY KEY ((shard, bucket), next_attempt, queue_id, seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.outbound_due_buckets (shard int, bucket bigint, \
     PRIMARY KEY (shard, bucket))",
    "CREATE TABLE IF NOT EXISTS {ks}.outbound_cursor (shard int PRIMARY KEY, bucket bigint)",
    "ALTER TABLE {ks}.outbound_rcpts ADD due_bucket bigint",
    // Blob references as rows and the sweep's log (see `blob_gc`).
    "CREATE TABLE IF NOT EXISTS {ks}.blob_links (blob_id text, holder text, \
     PRIMARY KEY (blob_id, holder))",
    "CREATE TABLE IF NOT EXISTS {ks}.blob_candidates (bucket bigint, shard int, blob_id text, \
     PRIMARY KEY ((bucket, shard), blob_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.gc_cursor (id int PRIMARY KEY, bucket bigint)",
    // Per-domain listings in 64 partitions per domain (see `domain_shards`); the rows of
    // the one-partition tables of earlier schemas are copied by `reshard_domains`.
    "CREATE TABLE IF NOT EXISTS {ks}.accounts_by_domain_shard (domain_id bigint, shard int, \
     address text, id bigint, PRIMARY KEY ((domain_id, shard), address))",
    "CREATE TABLE IF NOT EXISTS {ks}.aliases_by_domain_shard (domain text, shard int, \
     source text, target text, PRIMARY KEY ((domain, shard), source, target))",
    // Summaries out of the message rows (see `BUCKET_SHIFT`). Rows written before keep
    // theirs in `messages.summary`, read when this table has none.
    "CREATE TABLE IF NOT EXISTS {ks}.message_summaries (mailbox_id bigint, bucket bigint, \
     uid bigint, summary blob, PRIMARY KEY ((mailbox_id, bucket), uid))",
    "ALTER TABLE {ks}.messages ADD summarized boolean",
];

/// v15: the version of each queue entry's attempt state, which a claim compares against
/// (see [`MetadataStore::claim_outbound_attempt`]); null until the first claim. And each
/// recipient's final state, written once with the outcome that ends it and never
/// cleared: `state` is a last-write-wins cell stamped by the writing node's clock, so a
/// record batch of an earlier attempt that timed out and lands late from a node whose
/// clock runs ahead could set a delivered recipient back to queued (and send it again);
/// `final_state` has no write that could undo it (the queue simulation found this).
const SCHEMA_V15: &[&str] = &[
    "ALTER TABLE {ks}.outbound ADD version bigint",
    "ALTER TABLE {ks}.outbound_rcpts ADD final_state int",
];

/// How long a pin lasts: far longer than a put and an append take, and the sweep's grace
/// period is checked against the pin's time as well.
const PIN_TTL_SECS: i32 = 7 * 24 * 3600;

/// The shard the queue of schemas before v14 lived in, all of it.
const LEGACY_QUEUE_SHARD: i32 = 0;

fn bucket(v: u64) -> i64 {
    (v >> BUCKET_SHIFT) as i64
}

/// Ends a write's outcome under its writers: a failed write may have left statements that
/// still apply (timeouts), so its values are settled before the mailboxes change hands; a
/// write that succeeded is acknowledged only if it ended while the ownership held.
fn conclude<T>(writers: &mut [MailboxWriter<'_>], result: StoreResult<T>) -> StoreResult<T> {
    match result {
        Err(e) => {
            for w in writers.iter_mut() {
                w.mark_in_doubt();
            }
            Err(e)
        }
        Ok(v) => {
            for w in writers.iter_mut() {
                w.confirm()?;
            }
            Ok(v)
        }
    }
}

/// `[start, end)` cut at bucket boundaries, one span per partition.
fn bucket_spans(start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut lo = start;
    while lo < end {
        let hi = (((lo >> BUCKET_SHIFT) + 1) << BUCKET_SHIFT).min(end);
        out.push((lo, hi));
        lo = hi;
    }
    out
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("scylla: {e}"))
}

fn row_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("scylla row: {e}"))
}

fn domain_of(address: &str) -> StoreResult<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| StoreError::Invalid(format!("'{address}' is not local@domain")))
}

fn validate_mailbox_name(name: &str) -> StoreResult<()> {
    if name.is_empty() || name.len() > 512 || name.chars().any(|c| c.is_control()) {
        return Err(StoreError::Invalid(format!("mailbox name '{name}'")));
    }
    Ok(())
}

fn parse_blob(s: &str) -> StoreResult<BlobId> {
    BlobId::parse(s).ok_or_else(|| StoreError::Corrupt(format!("bad blob id {s}")))
}

fn kind_code(kind: ChangeKind) -> i32 {
    match kind {
        ChangeKind::Appended => 0,
        ChangeKind::FlagsChanged => 1,
        ChangeKind::Expunged => 2,
    }
}

fn kind_from(code: i32) -> ChangeKind {
    match code {
        0 => ChangeKind::Appended,
        1 => ChangeKind::FlagsChanged,
        _ => ChangeKind::Expunged,
    }
}

/// A queue entry's next version: random and never 0 (0 is "never written").
fn fresh_version() -> i64 {
    loop {
        let v: i64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn state_code(state: crate::RecipientState) -> i32 {
    match state {
        crate::RecipientState::Queued => 0,
        crate::RecipientState::Delivered => 1,
        crate::RecipientState::Failed => 2,
    }
}

fn state_from(code: i32) -> StoreResult<crate::RecipientState> {
    match code {
        0 => Ok(crate::RecipientState::Queued),
        1 => Ok(crate::RecipientState::Delivered),
        2 => Ok(crate::RecipientState::Failed),
        other => Err(StoreError::Corrupt(format!("bad recipient state {other}"))),
    }
}

/// Reads that feed a compare-and-set; run at SERIAL (LOCAL_SERIAL).
const SERIAL_READS: &[&str] = &[
    LEDGER_READ,
    SEQUENCE_READ,
    ORPHAN_READ,
    TOTP_STEP_READ,
    RECENT_READ,
    RECORD_VERSION_READ,
];
/// A record's version, read serially: the compare-and-set that writes it builds on it.
const RECORD_VERSION_READ: &str =
    "SELECT version, expires_at FROM records WHERE scope = ? AND kind = ? AND key = ?";
/// The recent watermark, read serially so the compare-and-set that raises it builds on the
/// last accepted claim.
const RECENT_READ: &str = "SELECT uid FROM recent_marks WHERE mailbox_id = ?";
const TOTP_STEP_READ: &str = "SELECT secret, last_step FROM totp_secrets WHERE account_id = ?";
/// The orphan record and its claim, read serially: pins and appends must see a claim the
/// sweep's LWT has just made.
const ORPHAN_READ: &str = "SELECT since, claimed FROM blob_orphans WHERE blob_id = ?";
const LEDGER_READ: &str = "SELECT uid_next, modseq_next, fence, owner, uid_from, modseq_from, \
     ts_until FROM uid_ledger WHERE mailbox_id = ?";
const SEQUENCE_READ: &str = "SELECT next FROM sequences WHERE name = ?";

/// The session plus prepared statements, prepared on first use and then reused.
struct Db {
    session: Session,
    /// Consistency for reads that must see the latest LWT outcome (the ledger).
    serial: Consistency,
    stmts: std::sync::Mutex<HashMap<&'static str, PreparedStatement>>,
    /// What this store has sent, by kind: the capacity model's per-message figures
    /// (docs/capacity.md) are read from here by the ScyllaDB conformance test.
    counts: StatementCounts,
}

/// Statements sent to ScyllaDB since the store opened, by kind. A logged batch counts once
/// in `batches` and its statements in `batched`.
#[derive(Debug, Default)]
pub struct StatementCounts {
    pub reads: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    pub lwts: std::sync::atomic::AtomicU64,
    pub counter_writes: std::sync::atomic::AtomicU64,
    pub batches: std::sync::atomic::AtomicU64,
    pub batched: std::sync::atomic::AtomicU64,
}

impl StatementCounts {
    fn add(n: &std::sync::atomic::AtomicU64, by: u64) {
        n.fetch_add(by, std::sync::atomic::Ordering::Relaxed);
    }

    /// A copy of the counts: (reads, writes, LWTs, counter writes, batches, batched).
    pub fn snapshot(&self) -> [u64; 6] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            self.reads.load(Relaxed),
            self.writes.load(Relaxed),
            self.lwts.load(Relaxed),
            self.counter_writes.load(Relaxed),
            self.batches.load(Relaxed),
            self.batched.load(Relaxed),
        ]
    }

    fn read_or_write(&self, cql: &str) {
        if cql.trim_start().starts_with("SELECT") {
            Self::add(&self.reads, 1);
        } else {
            Self::add(&self.writes, 1);
        }
    }
}

impl Db {
    /// Prepares `cql` once. Idempotent statements may be retried by the driver after a
    /// timeout; counter updates and LWTs must not be (a retried `IF NOT EXISTS` that had
    /// applied would report a false conflict, a retried increment would count twice).
    async fn stmt(&self, cql: &'static str, idempotent: bool) -> StoreResult<PreparedStatement> {
        if let Some(s) = self
            .stmts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cql)
        {
            return Ok(s.clone());
        }
        let mut s = self.session.prepare(cql).await.map_err(db_err)?;
        s.set_is_idempotent(idempotent);
        if SERIAL_READS.contains(&cql) {
            // A serial read completes any in-flight Paxos round, so a compare-and-set is
            // never built on a state older than the last accepted one.
            s.set_consistency(self.serial);
        }
        self.stmts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cql, s.clone());
        Ok(s)
    }

    /// An idempotent statement.
    async fn run<V: SerializeRow + Send>(
        &self,
        cql: &'static str,
        values: V,
    ) -> StoreResult<QueryResult> {
        let s = self.stmt(cql, true).await?;
        self.counts.read_or_write(cql);
        self.session
            .execute_unpaged(&s, values)
            .await
            .map_err(db_err)
    }

    /// An idempotent write at an explicit timestamp (microseconds): the writes of a
    /// mailbox's cells are ordered by its owner's hybrid clock
    /// ([`MailboxWriter::timestamp`]), not by the clocks of the nodes that wrote them.
    async fn run_at<V: SerializeRow + Send>(
        &self,
        cql: &'static str,
        values: V,
        ts: i64,
    ) -> StoreResult<QueryResult> {
        let mut s = self.stmt(cql, true).await?;
        s.set_timestamp(Some(ts));
        self.counts.read_or_write(cql);
        self.session
            .execute_unpaged(&s, values)
            .await
            .map_err(db_err)
    }

    /// A counter update (not idempotent).
    async fn count<V: SerializeRow + Send>(&self, cql: &'static str, values: V) -> StoreResult<()> {
        let s = self.stmt(cql, false).await?;
        StatementCounts::add(&self.counts.counter_writes, 1);
        self.session
            .execute_unpaged(&s, values)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// A lightweight transaction; true when it applied (the `[applied]` column).
    async fn lwt<V: SerializeRow + Send>(&self, cql: &'static str, values: V) -> StoreResult<bool> {
        let s = self.stmt(cql, false).await?;
        StatementCounts::add(&self.counts.lwts, 1);
        let res = self
            .session
            .execute_unpaged(&s, values)
            .await
            .map_err(db_err)?;
        let rows = res.into_rows_result().map_err(row_err)?;
        let first: Option<Row> = rows.maybe_first_row::<Row>().map_err(row_err)?;
        Ok(matches!(
            first.as_ref().and_then(|r| r.columns.first()),
            Some(Some(CqlValue::Boolean(true)))
        ))
    }

    /// A logged batch of idempotent writes: the coordinator writes the batch log first,
    /// so once it is accepted every statement applies, even across partitions (a failed
    /// coordinator's batch is replayed), and a batch that fails before that applies none.
    async fn logged_batch(
        &self,
        stmts: Vec<(&'static str, Vec<Option<CqlValue>>)>,
    ) -> StoreResult<()> {
        if stmts.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Logged);
        let mut values = Vec::with_capacity(stmts.len());
        for (cql, v) in stmts {
            batch.append_statement(self.stmt(cql, true).await?);
            values.push(v);
        }
        batch.set_is_idempotent(true);
        StatementCounts::add(&self.counts.batches, 1);
        StatementCounts::add(&self.counts.batched, values.len() as u64);
        self.session.batch(&batch, values).await.map_err(db_err)?;
        Ok(())
    }

    /// The first row, if any.
    async fn one<T, V>(&self, cql: &'static str, values: V) -> StoreResult<Option<T>>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
        V: SerializeRow + Send,
    {
        let res = self.run(cql, values).await?;
        let rows = res.into_rows_result().map_err(row_err)?;
        rows.maybe_first_row::<T>().map_err(row_err)
    }

    /// Every row, paging through large results.
    async fn all<T, V>(&self, cql: &'static str, values: V) -> StoreResult<Vec<T>>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
        V: SerializeRow + Send,
    {
        let s = self.stmt(cql, true).await?;
        StatementCounts::add(&self.counts.reads, 1);
        let pager = self.session.execute_iter(s, values).await.map_err(db_err)?;
        pager
            .rows_stream::<T>()
            .map_err(row_err)?
            .try_collect()
            .await
            .map_err(db_err)
    }
}

/// The UID/MODSEQ ledger on the `uid_ledger` table, one LWT per reservation.
struct ScyllaLedger {
    db: Arc<Db>,
}

#[async_trait]
impl RangeLedger for ScyllaLedger {
    async fn read(&self, mailbox: MailboxId) -> StoreResult<LedgerState> {
        type LedgerRow = (
            i64,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let row: Option<LedgerRow> = self.db.one(LEDGER_READ, (mailbox.0,)).await?;
        let (uid_next, modseq_next, epoch, owner, uid_from, modseq_from, ts_until) =
            row.ok_or_else(|| StoreError::NotFound(format!("mailbox {mailbox}")))?;
        Ok(LedgerState {
            uid_next: uid_next as u32,
            modseq_next: modseq_next as u64,
            epoch: epoch as u64,
            owner: owner.unwrap_or(0) as u64,
            uid_from: uid_from.unwrap_or(uid_next) as u32,
            modseq_from: modseq_from.unwrap_or(modseq_next) as u64,
            ts_until: ts_until.unwrap_or(0),
        })
    }

    async fn reserve(
        &self,
        mailbox: MailboxId,
        expected: LedgerState,
        new: LedgerState,
    ) -> StoreResult<bool> {
        // The epoch changes with every compare-and-set, so equal epochs (and values) mean
        // an unchanged row.
        self.db
            .lwt(
                "UPDATE uid_ledger SET uid_next = ?, modseq_next = ?, fence = ?, owner = ?, \
                 uid_from = ?, modseq_from = ?, ts_until = ? \
                 WHERE mailbox_id = ? IF uid_next = ? AND modseq_next = ? AND fence = ?",
                (
                    new.uid_next as i64,
                    new.modseq_next as i64,
                    new.epoch as i64,
                    new.owner as i64,
                    new.uid_from as i64,
                    new.modseq_from as i64,
                    new.ts_until,
                    mailbox.0,
                    expected.uid_next as i64,
                    expected.modseq_next as i64,
                    expected.epoch as i64,
                ),
            )
            .await
    }

    /// A tombstone at `ts` for every message UID and change MODSEQ of the ranges without a
    /// row at QUORUM: a write that was acknowledged is seen and kept; one that timed out and
    /// may still land (a hint replay) loses to the tombstone whenever it arrives.
    async fn settle(
        &self,
        mailbox: MailboxId,
        uids: std::ops::Range<u32>,
        modseqs: std::ops::Range<u64>,
        ts: i64,
    ) -> StoreResult<()> {
        let mut present: HashSet<u64> = HashSet::new();
        for (lo, hi) in bucket_spans(uids.start as u64, uids.end as u64) {
            let rows: Vec<(i64,)> = self
                .db
                .all(
                    "SELECT uid FROM messages WHERE mailbox_id = ? AND bucket = ? \
                     AND uid >= ? AND uid < ?",
                    (mailbox.0, bucket(lo), lo as i64, hi as i64),
                )
                .await?;
            present.extend(rows.into_iter().map(|r| r.0 as u64));
        }
        for uid in uids.clone().map(u64::from).filter(|u| !present.contains(u)) {
            self.db
                .run(
                    "DELETE FROM messages USING TIMESTAMP ? \
                     WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                    (ts, mailbox.0, bucket(uid), uid as i64),
                )
                .await?;
        }
        present.clear();
        for (lo, hi) in bucket_spans(modseqs.start, modseqs.end) {
            let rows: Vec<(i64,)> = self
                .db
                .all(
                    "SELECT modseq FROM changes WHERE mailbox_id = ? AND bucket = ? \
                     AND modseq >= ? AND modseq < ?",
                    (mailbox.0, bucket(lo), lo as i64, hi as i64),
                )
                .await?;
            present.extend(rows.into_iter().map(|r| r.0 as u64));
        }
        for modseq in modseqs.clone().filter(|m| !present.contains(m)) {
            self.db
                .run(
                    "DELETE FROM changes USING TIMESTAMP ? \
                     WHERE mailbox_id = ? AND bucket = ? AND modseq = ?",
                    (ts, mailbox.0, bucket(modseq), modseq as i64),
                )
                .await?;
        }
        // A write that landed although it reported a failure was not counted in the
        // mailbox row: recount (rare, only after failures) and move UIDNEXT and
        // HIGHESTMODSEQ to the end of the settled range, above every row in it.
        let row: Option<(i64, i64)> = self
            .db
            .one(
                "SELECT uid_next, highest_modseq FROM mailboxes WHERE id = ?",
                (mailbox.0,),
            )
            .await?;
        let Some((uid_next, highest)) = row else {
            return Ok(());
        };
        let uid_next = uid_next.max(uids.end as i64);
        let highest = highest.max(modseqs.end.saturating_sub(1) as i64);
        let (mut count, mut unseen, mut size) = (0i64, 0i64, 0i64);
        for b in 0..=bucket((uid_next as u64).saturating_sub(1)) {
            let rows: Vec<(i64, String)> = self
                .db
                .all(
                    "SELECT size, flags FROM messages WHERE mailbox_id = ? AND bucket = ?",
                    (mailbox.0, b),
                )
                .await?;
            for (sz, flags) in rows {
                count += 1;
                size += sz.max(0);
                unseen += i64::from(!seen(&flags));
            }
        }
        self.db
            .run(
                "UPDATE mailboxes USING TIMESTAMP ? SET uid_next = ?, highest_modseq = ?, \
                 message_count = ?, unseen_count = ?, total_size = ? WHERE id = ?",
                (ts, uid_next, highest, count, unseen, size, mailbox.0),
            )
            .await?;
        Ok(())
    }
}

type MailboxRow = (
    i64,
    i64,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    Option<bool>,
);
type AccountRow = (
    i64,
    i64,
    String,
    String,
    i64,
    Option<String>,
    Option<bool>,
    Option<i32>,
    Option<String>,
);
type MessageRow = (i64, i64, String, i64, i64, String);
/// blob_id, size, internal_date, flags, summary, email_id, thread_id, trace.
type FieldsRow = (
    String,
    i64,
    i64,
    String,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<String>,
);
type AppPasswordRow = (i64, String, String, String, i64, Option<i64>);

fn mailbox_from(r: MailboxRow) -> Mailbox {
    Mailbox {
        id: MailboxId(r.0),
        account: AccountId(r.1),
        name: r.2,
        special_use: r.3.as_deref().and_then(SpecialUse::parse),
        uid_validity: r.4 as u32,
        uid_next: Uid(r.5 as u32),
        highest_modseq: ModSeq(r.6 as u64),
        message_count: r.7.max(0) as u64,
        noselect: r.8.unwrap_or(false),
    }
}

fn message_from(mailbox: MailboxId, r: MessageRow) -> StoreResult<MessageMeta> {
    Ok(MessageMeta {
        mailbox,
        uid: Uid(r.0 as u32),
        modseq: ModSeq(r.1 as u64),
        blob: parse_blob(&r.2)?,
        size: r.3.max(0) as u64,
        internal_date: r.4,
        flags: Flags::from_storage(&r.5),
    })
}

fn app_password_from(account: AccountId, r: AppPasswordRow) -> crate::AppPassword {
    crate::AppPassword {
        id: crate::AppPasswordId(r.0),
        account,
        name: r.1,
        tag: r.2,
        hash: r.3,
        created_at: r.4,
        last_used: r.5,
    }
}

/// The stored fields of a message, as copied between mailboxes.
struct StoredFields {
    blob: String,
    size: i64,
    internal_date: i64,
    flags: String,
    summary: Option<Vec<u8>>,
    /// EMAILID and THREADID: new for an append, the original's for a copy or move.
    ids: crate::MessageObjectIds,
    /// The account, for the `object_members` entries.
    account: AccountId,
    /// The trace the message was received under; a copy keeps it.
    trace: Option<String>,
}

/// What a write did to one mailbox, applied to its row when the write ends.
#[derive(Default)]
struct MailboxDelta {
    last_uid: Option<u32>,
    last_modseq: Option<u64>,
    count: i64,
    /// Change of the number of messages without `\Seen`.
    unseen: i64,
    /// Change of the sum of message sizes.
    size: i64,
}

/// Whether stored flags include `\Seen`.
fn seen(flags: &str) -> bool {
    Flags::from_storage(flags).contains("\\Seen")
}

pub struct ScyllaMetadataStore {
    db: Arc<Db>,
    alloc: RangeAllocator,
    /// Id blocks per sequence name: (next, end). The mutex is held across the LWT so one
    /// process never reserves two blocks for one need.
    ids: tokio::sync::Mutex<HashMap<&'static str, (i64, i64)>>,
    /// The due-index cursor of each queue shard as this process last read or moved it
    /// (see [`due_index`]); a stale value only means reading a few empty partitions.
    cursors: std::sync::Mutex<HashMap<i32, i64>>,
    /// Where this process's orphan sweep stands in the log (see [`blob_gc`]).
    sweep: tokio::sync::Mutex<blob_gc::Sweep>,
}

impl ScyllaMetadataStore {
    /// Connects, creates the keyspace and tables if absent, migrates, and sets up the UID
    /// allocator on `coord` (which must be shared by every node: Redis in a cluster).
    pub async fn connect(cfg: &ScyllaConfig, coord: Arc<dyn Coordinator>) -> StoreResult<Self> {
        if cfg.nodes.is_empty() {
            return Err(StoreError::Invalid("no ScyllaDB nodes configured".into()));
        }
        let ks = cfg.keyspace.as_str();
        if ks.is_empty()
            || ks.len() > 48
            || !ks
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::Invalid(format!(
                "keyspace '{ks}' must be 1-48 characters of a-z, 0-9 and _"
            )));
        }
        // The datacenter name is spliced into the keyspace's replication map.
        if !cfg
            .local_dc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(StoreError::Invalid(format!(
                "datacenter name '{}' has characters other than letters, digits, '-', '_', '.'",
                cfg.local_dc
            )));
        }
        let timeout = Duration::from_millis(cfg.timeout_ms.max(100));
        let local = !cfg.local_dc.is_empty();
        let (consistency, serial, serial_read) = if local {
            (
                Consistency::LocalQuorum,
                SerialConsistency::LocalSerial,
                Consistency::LocalSerial,
            )
        } else {
            (
                Consistency::Quorum,
                SerialConsistency::Serial,
                Consistency::Serial,
            )
        };
        let mut lbp = DefaultPolicy::builder().token_aware(true);
        if local {
            lbp = lbp
                .prefer_datacenter(cfg.local_dc.clone())
                .permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(consistency)
            .serial_consistency(Some(serial))
            .request_timeout(Some(timeout))
            .load_balancing_policy(lbp.build())
            .build();
        // Client-side timestamps, increasing per process: two writes of one cell from this
        // node apply in the order they were sent, whatever the replicas' clocks say. Writes
        // of a mailbox's cells carry its owner's hybrid timestamps instead (`run_at`).
        let mut builder = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .timestamp_generator(Arc::new(
                scylla::policies::timestamp_generator::MonotonicTimestampGenerator::new(),
            ))
            .connection_timeout(timeout)
            .default_execution_profile_handle(profile.into_handle());
        if !cfg.username.is_empty() {
            builder = builder.user(cfg.username.clone(), cfg.password.clone());
        }
        if cfg.tls {
            // One rustls configuration for every connection the driver opens, to the contact
            // points and to the peers it discovers. The driver checks each node's certificate
            // against the node's IP address (it connects to peers by address), so node
            // certificates need IP SANs.
            let tls = crate::backend_tls::LoadedTls::load(crate::backend_tls::TlsFiles {
                section: "storage.scylla",
                ca: cfg.tls_ca_file.as_deref(),
                cert: cfg.tls_cert_file.as_deref(),
                key: cfg.tls_key_file.as_deref(),
            })?;
            let config = Arc::new(tls.client_config("storage.scylla")?);
            builder = builder.tls_context(Some(config));
        }
        let session = builder.build().await.map_err(db_err)?;

        // Tablets are disabled: ScyllaDB before 2025.4 refuses LWT on tablet keyspaces.
        let strategy = if local {
            format!(
                "{{'class': 'NetworkTopologyStrategy', '{}': {}}}",
                cfg.local_dc,
                cfg.replication_factor.max(1)
            )
        } else {
            format!(
                "{{'class': 'NetworkTopologyStrategy', 'replication_factor': {}}}",
                cfg.replication_factor.max(1)
            )
        };
        let create = format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {strategy}");
        if let Err(e) = session
            .query_unpaged(format!("{create} AND tablets = {{'enabled': false}}"), ())
            .await
        {
            // Releases before tablets existed reject the option; they have no tablets, so
            // LWT works there without it.
            if !e.to_string().to_lowercase().contains("tablets") {
                return Err(db_err(e));
            }
            session.query_unpaged(create, ()).await.map_err(db_err)?;
        }
        migrate(&session, ks).await?;
        session.use_keyspace(ks, false).await.map_err(db_err)?;

        let db = Arc::new(Db {
            session,
            serial: serial_read,
            stmts: std::sync::Mutex::new(HashMap::new()),
            counts: StatementCounts::default(),
        });
        // Every statement of a write starts with at least the margin of lease left and ends
        // within `timeout`, so the margin must exceed it (twice, for the driver's retry).
        let margin = timeout * 2 + Duration::from_secs(1);
        let alloc_cfg = AllocConfig {
            lease_ttl: margin * 3,
            safety_margin: margin,
            ..AllocConfig::default()
        };
        let ledger: Arc<dyn RangeLedger> = Arc::new(ScyllaLedger { db: db.clone() });
        Ok(Self {
            db,
            alloc: RangeAllocator::new(coord, ledger, alloc_cfg),
            ids: tokio::sync::Mutex::new(HashMap::new()),
            cursors: std::sync::Mutex::new(HashMap::new()),
            sweep: tokio::sync::Mutex::new(blob_gc::Sweep::default()),
        })
    }

    /// The statements this store has sent, for measurements (docs/capacity.md).
    pub fn statement_counts(&self) -> &StatementCounts {
        &self.db.counts
    }

    /// A fresh id of sequence `name`, unique across nodes.
    async fn next_id(&self, name: &'static str) -> StoreResult<i64> {
        let mut ids = self.ids.lock().await;
        if let Some((next, end)) = ids.get_mut(name) {
            if *next < *end {
                let v = *next;
                *next += 1;
                return Ok(v);
            }
        }
        for _ in 0..16 {
            let cur: Option<(Option<i64>,)> = self.db.one(SEQUENCE_READ, (name,)).await?;
            let (start, applied) = match cur.and_then(|c| c.0) {
                None => (
                    1,
                    self.db
                        .lwt(
                            "INSERT INTO sequences (name, next) VALUES (?, ?) IF NOT EXISTS",
                            (name, 1 + ID_BLOCK),
                        )
                        .await?,
                ),
                Some(n) => (
                    n,
                    self.db
                        .lwt(
                            "UPDATE sequences SET next = ? WHERE name = ? IF next = ?",
                            (n + ID_BLOCK, name, n),
                        )
                        .await?,
                ),
            };
            if applied {
                ids.insert(name, (start + 1, start + ID_BLOCK));
                return Ok(start);
            }
        }
        Err(StoreError::Unavailable(format!(
            "could not reserve ids of {name} (contention)"
        )))
    }

    async fn domain(&self, name: &str) -> StoreResult<Option<Domain>> {
        let row: Option<(i64, Option<String>, Option<i64>)> = self
            .db
            .one(
                "SELECT id, managed_by, quota_bytes FROM domains WHERE name = ?",
                (name,),
            )
            .await?;
        Ok(row.map(|r| Domain {
            id: DomainId(r.0),
            name: name.to_string(),
            managed_by: r.1,
            quota_bytes: r.2.unwrap_or(0).max(0) as u64,
        }))
    }

    async fn usage(&self, account: AccountId) -> StoreResult<(u64, u64)> {
        let row: Option<(Option<Counter>, Option<Counter>)> = self
            .db
            .one(
                "SELECT used_bytes, message_count FROM account_usage WHERE account_id = ?",
                (account.0,),
            )
            .await?;
        let (b, m) = row.unwrap_or((None, None));
        Ok((
            b.map(|c| c.0.max(0) as u64).unwrap_or(0),
            m.map(|c| c.0.max(0) as u64).unwrap_or(0),
        ))
    }

    async fn add_usage(&self, account: AccountId, bytes: i64, messages: i64) -> StoreResult<()> {
        if bytes == 0 && messages == 0 {
            return Ok(());
        }
        self.db
            .count(
                "UPDATE account_usage SET used_bytes = used_bytes + ?, \
                 message_count = message_count + ? WHERE account_id = ?",
                (Counter(bytes), Counter(messages), account.0),
            )
            .await
    }

    async fn account_by_id(&self, id: AccountId) -> StoreResult<Option<Account>> {
        let row: Option<AccountRow> = self
            .db
            .one(
                "SELECT id, domain_id, address, password_hash, quota_bytes, display_name, \
                 suspended, protocols, managed_by FROM accounts WHERE id = ?",
                (id.0,),
            )
            .await?;
        let Some(r) = row else { return Ok(None) };
        let (used, count) = self.usage(id).await?;
        Ok(Some(Account {
            id: AccountId(r.0),
            domain: DomainId(r.1),
            address: r.2,
            password_hash: r.3,
            quota_bytes: r.4.max(0) as u64,
            used_bytes: used,
            message_count: count,
            settings: AccountSettings {
                display_name: r.5,
                suspended: r.6.unwrap_or(false),
                protocols: r
                    .7
                    .map(|b| Protocols::from_bits(b as u8))
                    .unwrap_or_default(),
                managed_by: r.8,
            },
        }))
    }

    async fn account_id(&self, address: &str) -> StoreResult<Option<AccountId>> {
        let row: Option<(i64,)> = self
            .db
            .one(
                "SELECT id FROM accounts_by_address WHERE address = ?",
                (address,),
            )
            .await?;
        Ok(row.map(|r| AccountId(r.0)))
    }

    async fn account_by_address(&self, address: &str) -> StoreResult<Option<Account>> {
        match self.account_id(address).await? {
            Some(id) => self.account_by_id(id).await,
            None => Ok(None),
        }
    }

    async fn account_exists(&self, id: AccountId) -> StoreResult<bool> {
        let row: Option<(i64,)> = self
            .db
            .one("SELECT id FROM accounts WHERE id = ?", (id.0,))
            .await?;
        Ok(row.is_some())
    }

    async fn mailbox(&self, id: MailboxId) -> StoreResult<Option<Mailbox>> {
        let row: Option<MailboxRow> = self
            .db
            .one(
                "SELECT id, account_id, name, special_use, uid_validity, uid_next, \
                 highest_modseq, message_count, noselect FROM mailboxes WHERE id = ?",
                (id.0,),
            )
            .await?;
        Ok(row.map(mailbox_from))
    }

    /// The mailbox if it belongs to `account`, else `NotFound`.
    async fn owned_mailbox(&self, account: AccountId, id: MailboxId) -> StoreResult<Mailbox> {
        match self.mailbox(id).await? {
            Some(m) if m.account == account => Ok(m),
            _ => Err(StoreError::NotFound(format!("mailbox {id}"))),
        }
    }

    async fn create_mailbox_rows(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> StoreResult<Mailbox> {
        let id = self.next_id("mailbox").await?;
        // UIDVALIDITY must change if a mailbox name is reused: the time mixed with the new
        // id keeps it unique and non-zero.
        let validity = ((now_secs() as u64).wrapping_add(id as u64) & 0x7fff_ffff).max(1) as i64;
        // The row and the ledger first, the name last: a reader that finds the name always
        // finds the mailbox, and a lost name race leaves rows nobody can reach (deleted below).
        self.db
            .run(
                "INSERT INTO mailboxes (id, account_id, name, special_use, uid_validity, \
                 uid_next, highest_modseq, message_count, unseen_count, total_size) \
                 VALUES (?, ?, ?, ?, ?, 1, 1, 0, 0, 0)",
                (
                    id,
                    account.0,
                    name,
                    special_use.map(|s| s.as_str()),
                    validity,
                ),
            )
            .await?;
        self.db
            .run(
                "INSERT INTO uid_ledger (mailbox_id, uid_next, modseq_next, fence, owner, \
                 uid_from, modseq_from, ts_until) VALUES (?, ?, ?, 0, 0, ?, ?, 0)",
                (
                    id,
                    LedgerState::INITIAL.uid_next as i64,
                    LedgerState::INITIAL.modseq_next as i64,
                    LedgerState::INITIAL.uid_from as i64,
                    LedgerState::INITIAL.modseq_from as i64,
                ),
            )
            .await?;
        let claimed = self
            .db
            .lwt(
                "INSERT INTO mailboxes_by_account (account_id, name, id) VALUES (?, ?, ?) \
                 IF NOT EXISTS",
                (account.0, name, id),
            )
            .await?;
        if !claimed {
            self.db
                .run("DELETE FROM mailboxes WHERE id = ?", (id,))
                .await?;
            self.db
                .run("DELETE FROM uid_ledger WHERE mailbox_id = ?", (id,))
                .await?;
            return Err(StoreError::Conflict(format!("mailbox {name}")));
        }
        Ok(Mailbox {
            id: MailboxId(id),
            account,
            name: name.to_string(),
            special_use,
            uid_validity: validity as u32,
            uid_next: Uid(1),
            highest_modseq: ModSeq(1),
            message_count: 0,
            noselect: false,
        })
    }

    /// Takes `holder`'s reference on a blob. Refused while a sweep holds a claim on it (its
    /// bytes may be gone already). Idempotent: a retried write is the same reference. The
    /// blob's orphan record and pin, if any, are left alone (no tombstone per append): the
    /// sweep drops a referenced blob's record, and pins expire.
    async fn take_blob(&self, blob: &str, holder: &str) -> StoreResult<()> {
        let orphan: Option<(Option<i64>, Option<i64>)> = self.db.one(ORPHAN_READ, (blob,)).await?;
        if orphan.and_then(|o| o.1).is_some() {
            return Err(StoreError::Unavailable(format!(
                "blob {blob} is being deleted; store it again"
            )));
        }
        self.db
            .run(
                "INSERT INTO blob_links (blob_id, holder) VALUES (?, ?)",
                (blob, holder),
            )
            .await?;
        Ok(())
    }

    /// Whether anything references `blob`: a reference row, or a count of schemas before
    /// v14 (kept: those references are never released by count, so such blobs stay).
    async fn blob_referenced(&self, blob: &str) -> StoreResult<bool> {
        let link: Option<(String,)> = self
            .db
            .one(
                "SELECT holder FROM blob_links WHERE blob_id = ? LIMIT 1",
                (blob,),
            )
            .await?;
        if link.is_some() {
            return Ok(true);
        }
        let legacy: Option<(Option<Counter>,)> = self
            .db
            .one("SELECT refcount FROM blob_refs WHERE blob_id = ?", (blob,))
            .await?;
        Ok(legacy.and_then(|l| l.0).map(|c| c.0).unwrap_or(0) > 0)
    }

    /// Notes `blob` in the sweep's log at the present minute.
    async fn log_candidate(&self, blob: &str, now: i64) -> StoreResult<()> {
        self.db
            .run(
                "INSERT INTO blob_candidates (bucket, shard, blob_id) VALUES (?, ?, ?)",
                (blob_gc::bucket_of(now), blob_gc::shard_of(blob), blob),
            )
            .await?;
        Ok(())
    }

    /// Drops each (blob, holder) reference; returns (and records) the blobs left
    /// unreferenced.
    async fn release_blobs(&self, refs: &[(String, String)]) -> StoreResult<Vec<BlobId>> {
        let mut orphaned = Vec::new();
        let now = now_secs();
        for (b, holder) in refs {
            self.db
                .run(
                    "DELETE FROM blob_links WHERE blob_id = ? AND holder = ?",
                    (b.as_str(), holder.as_str()),
                )
                .await?;
            if !self.blob_referenced(b).await? {
                self.db
                    .run(
                        "INSERT INTO blob_orphans (blob_id, since, claimed) VALUES (?, ?, null)",
                        (b.as_str(), now),
                    )
                    .await?;
                self.log_candidate(b, now).await?;
                if let Some(id) = BlobId::parse(b) {
                    if !orphaned.contains(&id) {
                        orphaned.push(id);
                    }
                }
            }
        }
        Ok(orphaned)
    }

    /// A message's summary: from `message_summaries`, or from the message row for rows
    /// written before v14.
    async fn summary_of(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<Option<Vec<u8>>> {
        let row: Option<(Option<Vec<u8>>,)> = self
            .db
            .one(
                "SELECT summary FROM message_summaries WHERE mailbox_id = ? AND bucket = ? \
                 AND uid = ?",
                (mailbox.0, summary_bucket(uid), uid.0 as i64),
            )
            .await?;
        if let Some((Some(s),)) = row {
            return Ok(Some(s));
        }
        let legacy: Option<(Option<Vec<u8>>,)> = self
            .db
            .one(
                "SELECT summary FROM messages WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                (mailbox.0, bucket(uid.0 as u64), uid.0 as i64),
            )
            .await?;
        Ok(legacy.and_then(|r| r.0))
    }

    async fn read_message(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<Option<MessageRow>> {
        self.db
            .one(
                "SELECT uid, modseq, blob_id, size, internal_date, flags FROM messages \
                 WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                (mailbox.0, bucket(uid.0 as u64), uid.0 as i64),
            )
            .await
    }

    async fn record_change(
        &self,
        w: &mut MailboxWriter<'_>,
        uid: Uid,
        modseq: ModSeq,
        kind: ChangeKind,
        previous: Option<ModSeq>,
    ) -> StoreResult<()> {
        let mailbox = w.mailbox();
        let ts = w.timestamp()?;
        self.db
            .run_at(
                "INSERT INTO changes (mailbox_id, bucket, modseq, uid, kind) VALUES (?, ?, ?, ?, ?)",
                (
                    mailbox.0,
                    bucket(modseq.0),
                    modseq.0 as i64,
                    uid.0 as i64,
                    kind_code(kind),
                ),
                ts,
            )
            .await?;
        // Keep one entry per UID, like SQLite's table keyed by UID: the superseded one goes.
        if let Some(p) = previous {
            let ts = w.timestamp()?;
            self.db
                .run_at(
                    "DELETE FROM changes WHERE mailbox_id = ? AND bucket = ? AND modseq = ?",
                    (mailbox.0, bucket(p.0), p.0 as i64),
                    ts,
                )
                .await?;
        }
        Ok(())
    }

    /// A new message's EMAILID and THREADID, as the SQLite store gives them (see
    /// `assign_object_ids` there): the next id of the `email` sequence, and the thread of
    /// the first of its keys the account's index knows, else a new one. Keys not yet
    /// indexed are recorded with the thread; two messages indexing the same new key at once
    /// may each start a thread (the later write wins for messages after them).
    async fn assign_object_ids(
        &self,
        account: AccountId,
        refs: &crate::MessageRefs,
    ) -> StoreResult<crate::MessageObjectIds> {
        let email_id = crate::object_id::email_id(self.next_id("email").await?);
        let keys = refs.keys();
        let mut thread_id = None;
        let mut missing = Vec::new();
        for k in &keys {
            let row: Option<(String,)> = self
                .db
                .one(
                    "SELECT thread_id FROM thread_index WHERE account_id = ? AND message_id = ?",
                    (account.0, *k),
                )
                .await?;
            match row {
                Some((t,)) => {
                    thread_id.get_or_insert(t);
                }
                None => missing.push(*k),
            }
        }
        let thread_id = thread_id.unwrap_or_else(|| crate::object_id::thread_id_for(&email_id));
        for k in missing {
            self.db
                .run(
                    "INSERT INTO thread_index (account_id, message_id, thread_id) VALUES (?, ?, ?)",
                    (account.0, k, thread_id.as_str()),
                )
                .await?;
        }
        Ok(crate::MessageObjectIds {
            email_id,
            thread_id,
        })
    }

    /// The stored ids of one message (the legacy ones for a row written before ids).
    async fn read_object_ids(
        &self,
        mailbox: MailboxId,
        uid: Uid,
    ) -> StoreResult<Option<crate::MessageObjectIds>> {
        let row: Option<(Option<String>, Option<String>)> = self
            .db
            .one(
                "SELECT email_id, thread_id FROM messages \
                 WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                (mailbox.0, bucket(uid.0 as u64), uid.0 as i64),
            )
            .await?;
        Ok(row.map(|(e, t)| {
            let legacy = crate::object_id::legacy_ids(mailbox, uid);
            crate::MessageObjectIds {
                email_id: e.unwrap_or(legacy.email_id),
                thread_id: t.unwrap_or(legacy.thread_id),
            }
        }))
    }

    /// Inserts one message under `w`'s lease: new UID and MODSEQ, blob reference, change.
    async fn insert_message(
        &self,
        w: &mut MailboxWriter<'_>,
        m: &StoredFields,
        delta: &mut MailboxDelta,
    ) -> StoreResult<Appended> {
        let mailbox = w.mailbox();
        let uid = w.next_uid().await?;
        let modseq = w.next_modseq().await?;
        // The blob reference first: a write cut short leaks a reference (the blob is kept
        // for ever), never a message whose blob the sweep may delete.
        w.check_time()?;
        self.take_blob(&m.blob, &blob_gc::message_holder(mailbox.0, uid.0 as i64))
            .await?;
        // Every statement starts with at least the safety margin of lease left.
        w.check_time()?;
        // Pending in the full-text index before the row exists: a message is never in
        // the mailbox without being either indexed or pending.
        self.db
            .run(fts::PENDING_INSERT, (mailbox.0, uid.0 as i64, 0i32))
            .await?;
        if let Some(summary) = m.summary.as_deref() {
            // Before the row: a message is never visible without its summary.
            w.check_time()?;
            self.db
                .run(
                    "INSERT INTO message_summaries (mailbox_id, bucket, uid, summary) \
                     VALUES (?, ?, ?, ?)",
                    (mailbox.0, summary_bucket(uid), uid.0 as i64, summary),
                )
                .await?;
        }
        w.check_time()?;
        let ts = w.timestamp()?;
        self.db
            .run_at(
                "INSERT INTO messages (mailbox_id, bucket, uid, modseq, blob_id, size, \
                 internal_date, flags, summarized, save_date, email_id, thread_id, trace) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    mailbox.0,
                    bucket(uid.0 as u64),
                    uid.0 as i64,
                    modseq.0 as i64,
                    m.blob.as_str(),
                    m.size,
                    m.internal_date,
                    m.flags.as_str(),
                    m.summary.is_some(),
                    // The save date (RFC 8514): now, for an append as for a copy or move.
                    now_secs(),
                    m.ids.email_id.as_str(),
                    m.ids.thread_id.as_str(),
                    m.trace.as_deref(),
                ),
                ts,
            )
            .await?;
        for object_id in [&m.ids.email_id, &m.ids.thread_id] {
            w.check_time()?;
            self.db
                .run(
                    "INSERT INTO object_members (account_id, object_id, mailbox_id, uid) \
                     VALUES (?, ?, ?, ?)",
                    (m.account.0, object_id.as_str(), mailbox.0, uid.0 as i64),
                )
                .await?;
        }
        // Counted as soon as the row exists, so a failure later still moves UIDNEXT past it.
        delta.last_uid = Some(uid.0);
        delta.last_modseq = Some(modseq.0);
        delta.count += 1;
        delta.size += m.size;
        delta.unseen += i64::from(!seen(&m.flags));
        w.check_time()?;
        self.record_change(w, uid, modseq, ChangeKind::Appended, None)
            .await?;
        Ok(Appended {
            mailbox,
            uid,
            modseq,
        })
    }

    /// Removes one message under `w`'s lease: row, expunge MODSEQ and change. Returns its
    /// blob and size; blob references and usage are the caller's.
    async fn remove_message(
        &self,
        w: &mut MailboxWriter<'_>,
        uid: Uid,
        delta: &mut MailboxDelta,
    ) -> StoreResult<Option<(String, i64, ModSeq)>> {
        let mailbox = w.mailbox();
        let Some(row) = self.read_message(mailbox, uid).await? else {
            return Ok(None);
        };
        let modseq = w.next_modseq().await?;
        w.check_time()?;
        let ts = w.timestamp()?;
        self.db
            .run_at(
                "DELETE FROM messages WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                (mailbox.0, bucket(uid.0 as u64), uid.0 as i64),
                ts,
            )
            .await?;
        self.db
            .run(
                "DELETE FROM message_summaries WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                (mailbox.0, summary_bucket(uid), uid.0 as i64),
            )
            .await?;
        delta.last_modseq = Some(modseq.0);
        delta.count -= 1;
        delta.size -= row.3;
        delta.unseen -= i64::from(!seen(&row.5));
        w.check_time()?;
        self.record_change(
            w,
            uid,
            modseq,
            ChangeKind::Expunged,
            Some(ModSeq(row.1 as u64)),
        )
        .await?;
        // Index entries after the row: left behind by a failure, they name a UID that
        // no longer exists (and is never reused), which searches check against.
        self.fts_remove(mailbox, uid).await?;
        Ok(Some((row.2, row.3, modseq)))
    }

    /// Writes what a write did to the mailbox row (still under the lease).
    async fn apply_delta(
        &self,
        w: &mut MailboxWriter<'_>,
        before: &Mailbox,
        delta: &MailboxDelta,
    ) -> StoreResult<()> {
        if delta.last_uid.is_none()
            && delta.last_modseq.is_none()
            && delta.count == 0
            && delta.unseen == 0
            && delta.size == 0
        {
            return Ok(());
        }
        w.check_time()?;
        let uid_next = delta
            .last_uid
            .map(|u| (u as i64 + 1).max(before.uid_next.0 as i64))
            .unwrap_or(before.uid_next.0 as i64);
        let modseq = delta
            .last_modseq
            .map(|m| (m as i64).max(before.highest_modseq.0 as i64))
            .unwrap_or(before.highest_modseq.0 as i64);
        let count = (before.message_count as i64 + delta.count).max(0);
        // Nobody else writes these cells while we own the mailbox, so read-add-write is
        // exact; a row from before schema v13 is counted once, here.
        let (unseen, size) = match self.counts(before.id).await? {
            Some((unseen, size)) => ((unseen + delta.unseen).max(0), (size + delta.size).max(0)),
            None => {
                let mb = Mailbox {
                    uid_next: Uid(uid_next as u32),
                    ..before.clone()
                };
                let usage = self.scan_usage(&mb).await?;
                (usage.unseen as i64, usage.size as i64)
            }
        };
        let ts = w.timestamp()?;
        self.db
            .run_at(
                "UPDATE mailboxes SET uid_next = ?, highest_modseq = ?, message_count = ?, \
                 unseen_count = ?, total_size = ? WHERE id = ?",
                (uid_next, modseq, count, unseen, size, before.id.0),
                ts,
            )
            .await?;
        Ok(())
    }

    /// The mailbox row's unseen count and size; `None` when not kept yet (a row written
    /// before schema v13).
    async fn counts(&self, mailbox: MailboxId) -> StoreResult<Option<(i64, i64)>> {
        let row: Option<(Option<i64>, Option<i64>)> = self
            .db
            .one(
                "SELECT unseen_count, total_size FROM mailboxes WHERE id = ?",
                (mailbox.0,),
            )
            .await?;
        Ok(match row {
            Some((Some(u), Some(s))) => Some((u, s)),
            _ => None,
        })
    }

    /// Counts by reading every message row (rows from before schema v13, and the
    /// recount after a settle).
    async fn scan_usage(&self, mb: &Mailbox) -> StoreResult<MailboxUsage> {
        let mut usage = MailboxUsage::default();
        for r in self.all_messages(mb).await? {
            usage.messages += 1;
            usage.size += r.3.max(0) as u64;
            if !seen(&r.5) {
                usage.unseen += 1;
            }
        }
        Ok(usage)
    }

    /// All messages of a mailbox (every bucket up to its `uid_next`).
    async fn all_messages(&self, mb: &Mailbox) -> StoreResult<Vec<MessageRow>> {
        let last = bucket((mb.uid_next.0 as u64).saturating_sub(1));
        let mut out = Vec::new();
        for b in 0..=last {
            let rows: Vec<MessageRow> = self
                .db
                .all(
                    "SELECT uid, modseq, blob_id, size, internal_date, flags \
                     FROM messages WHERE mailbox_id = ? AND bucket = ?",
                    (mb.id.0, b),
                )
                .await?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Deletes a mailbox's messages and change log under its lease, adjusting usage;
    /// returns the released blobs.
    async fn purge_mailbox(&self, w: &MailboxWriter<'_>, mb: &Mailbox) -> StoreResult<Vec<BlobId>> {
        let rows = self.all_messages(mb).await?;
        let bytes: i64 = rows.iter().map(|r| r.3).sum();
        w.check_time()?;
        self.add_usage(mb.account, -bytes, -(rows.len() as i64))
            .await?;
        for b in 0..=bucket((mb.uid_next.0 as u64).saturating_sub(1)) {
            w.check_time()?;
            self.db
                .run(
                    "DELETE FROM messages WHERE mailbox_id = ? AND bucket = ?",
                    (mb.id.0, b),
                )
                .await?;
        }
        for b in 0..=bucket(mb.highest_modseq.0) {
            w.check_time()?;
            self.db
                .run(
                    "DELETE FROM changes WHERE mailbox_id = ? AND bucket = ?",
                    (mb.id.0, b),
                )
                .await?;
        }
        // Only the partitions that hold summaries of messages still there: a mailbox may
        // have a high UIDNEXT and few messages.
        let summary_buckets: std::collections::BTreeSet<i64> = rows
            .iter()
            .map(|r| summary_bucket(Uid(r.0 as u32)))
            .collect();
        for b in summary_buckets {
            w.check_time()?;
            self.db
                .run(
                    "DELETE FROM message_summaries WHERE mailbox_id = ? AND bucket = ?",
                    (mb.id.0, b),
                )
                .await?;
        }
        w.check_time()?;
        self.fts_drop_mailbox(mb.id, rows.iter().map(|r| Uid(r.0 as u32)).collect())
            .await?;
        let refs: Vec<(String, String)> = rows
            .into_iter()
            .map(|r| (r.2, blob_gc::message_holder(mb.id.0, r.0)))
            .collect();
        self.release_blobs(&refs).await
    }

    /// Deletes a mailbox completely (lease taken here).
    async fn drop_mailbox(&self, mb: &Mailbox) -> StoreResult<Vec<BlobId>> {
        let mut w = self.alloc.writer(mb.id).await?;
        // Re-read under the lease: counters written by the previous holder are final now.
        let result = async {
            let Some(current) = self.mailbox(mb.id).await? else {
                return Ok(Vec::new());
            };
            let orphaned = self.purge_mailbox(&w, &current).await?;
            self.db
                .run(
                    "DELETE FROM mailboxes_by_account WHERE account_id = ? AND name = ?",
                    (current.account.0, current.name.as_str()),
                )
                .await?;
            self.drop_acl_and_metadata(current.id).await?;
            self.db
                .run("DELETE FROM mailboxes WHERE id = ?", (current.id.0,))
                .await?;
            self.db
                .run(
                    "DELETE FROM uid_ledger WHERE mailbox_id = ?",
                    (current.id.0,),
                )
                .await?;
            // An LWT like the claims it ends (mixing plain writes with LWTs on one row
            // breaks their ordering).
            self.db
                .lwt(
                    "DELETE FROM recent_marks WHERE mailbox_id = ? IF EXISTS",
                    (current.id.0,),
                )
                .await?;
            Ok(orphaned)
        }
        .await;
        let result = conclude(std::slice::from_mut(&mut w), result);
        w.finish().await;
        result
    }

    /// Removes a mailbox's ACL (both tables) and every user's metadata on it.
    async fn drop_acl_and_metadata(&self, mailbox: MailboxId) -> StoreResult<()> {
        let entries = self.get_acl(mailbox).await?;
        for e in entries {
            self.write_acl(AccountId(0), mailbox, &e.identifier, "")
                .await?;
        }
        self.db
            .run(
                "DELETE FROM mailbox_metadata WHERE mailbox_id = ?",
                (mailbox.0,),
            )
            .await?;
        Ok(())
    }

    /// Writes (or, with empty rights, removes) one ACL entry in both tables at once.
    async fn write_acl(
        &self,
        owner: AccountId,
        mailbox: MailboxId,
        identifier: &str,
        rights: &str,
    ) -> StoreResult<()> {
        let (m, id) = (
            Some(CqlValue::BigInt(mailbox.0)),
            Some(CqlValue::Text(identifier.to_string())),
        );
        if rights.is_empty() {
            self.db
                .logged_batch(vec![
                    (
                        "DELETE FROM acl WHERE mailbox_id = ? AND identifier = ?",
                        vec![m.clone(), id.clone()],
                    ),
                    (
                        "DELETE FROM acl_by_identifier WHERE identifier = ? AND mailbox_id = ?",
                        vec![id, m],
                    ),
                ])
                .await
        } else {
            let (o, r) = (
                Some(CqlValue::BigInt(owner.0)),
                Some(CqlValue::Text(rights.to_string())),
            );
            self.db
                .logged_batch(vec![
                    (
                        "INSERT INTO acl (mailbox_id, identifier, owner_id, rights) \
                         VALUES (?, ?, ?, ?)",
                        vec![m.clone(), id.clone(), o.clone(), r.clone()],
                    ),
                    (
                        "INSERT INTO acl_by_identifier (identifier, mailbox_id, owner_id, rights) \
                         VALUES (?, ?, ?, ?)",
                        vec![id, m, o, r],
                    ),
                ])
                .await
        }
    }

    async fn delete_alias_rows(&self, source: &str, target: &str) -> StoreResult<()> {
        let domain = domain_of(source).unwrap_or("").to_string();
        self.db
            .run(
                "DELETE FROM aliases WHERE source = ? AND target = ?",
                (source, target),
            )
            .await?;
        self.db
            .run(
                "DELETE FROM aliases_by_domain_shard WHERE domain = ? AND shard = ? \
                 AND source = ? AND target = ?",
                (
                    domain.as_str(),
                    domain_shards::shard_of(source),
                    source,
                    target,
                ),
            )
            .await?;
        self.db
            .run(
                "DELETE FROM aliases_by_target WHERE target = ? AND source = ?",
                (target, source),
            )
            .await?;
        Ok(())
    }

    /// Flag updates under the mailbox lease; with `unchanged_since`, the MODSEQ test of RFC
    /// 7162 §3.1.3 is made on the row read under the lease.
    async fn update_flags(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<ModSeq>,
    ) -> StoreResult<ConditionalStore> {
        let Some(_) = self.mailbox(mailbox).await? else {
            return Ok(ConditionalStore::default());
        };

        let mut w = self.alloc.writer(mailbox).await?;
        let result = async {
            let before = self
                .mailbox(mailbox)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("mailbox {mailbox}")))?;
            let mut delta = MailboxDelta::default();
            let mut out = ConditionalStore::default();
            for &uid in uids {
                let Some(row) = self.read_message(mailbox, uid).await? else {
                    continue;
                };
                let mut msg = message_from(mailbox, row)?;
                // Read under the lease, so this is the MODSEQ no other writer can move
                // before ours lands.
                if unchanged_since.is_some_and(|limit| msg.modseq > limit) {
                    out.modified.push(uid);
                    continue;
                }
                let new = match op {
                    FlagOp::Replace => flags.clone(),
                    FlagOp::Add => Flags::new(msg.flags.iter().chain(flags.iter())),
                    FlagOp::Remove => Flags::new(msg.flags.iter().filter(|f| !flags.contains(f))),
                };
                if new == msg.flags {
                    continue;
                }
                let modseq = w.next_modseq().await?;
                w.check_time()?;
                let ts = w.timestamp()?;
                self.db
                    .run_at(
                        "UPDATE messages SET flags = ?, modseq = ? \
                         WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                        (
                            new.to_storage(),
                            modseq.0 as i64,
                            mailbox.0,
                            bucket(uid.0 as u64),
                            uid.0 as i64,
                        ),
                        ts,
                    )
                    .await?;
                self.record_change(
                    &mut w,
                    uid,
                    modseq,
                    ChangeKind::FlagsChanged,
                    Some(msg.modseq),
                )
                .await?;
                delta.last_modseq = Some(modseq.0);
                delta.unseen +=
                    i64::from(msg.flags.contains("\\Seen")) - i64::from(new.contains("\\Seen"));
                msg.flags = new;
                msg.modseq = modseq;
                out.changed.push(msg);
            }
            self.apply_delta(&mut w, &before, &delta).await?;
            Ok(out)
        }
        .await;
        let result = conclude(std::slice::from_mut(&mut w), result);
        w.finish().await;
        result
    }

    /// Removes `uids` under the lease `w` (which it lets go of).
    async fn expunge_locked(
        &self,
        mut w: MailboxWriter<'_>,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Expunged> {
        let result = async {
            let before = self
                .mailbox(mailbox)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("mailbox {mailbox}")))?;
            let mut delta = MailboxDelta::default();
            let mut removed = Vec::new();
            let mut blobs = Vec::new();
            let mut bytes = 0i64;
            let mut modseq = None;
            for &uid in uids {
                let Some((blob, size, m)) = self.remove_message(&mut w, uid, &mut delta).await?
                else {
                    continue;
                };
                modseq = Some(m);
                removed.push(uid);
                blobs.push((blob, blob_gc::message_holder(mailbox.0, uid.0 as i64)));
                bytes += size;
            }
            self.apply_delta(&mut w, &before, &delta).await?;
            if !removed.is_empty() {
                self.add_usage(before.account, -bytes, -(removed.len() as i64))
                    .await?;
            }
            let orphaned = self.release_blobs(&blobs).await?;
            Ok(Expunged {
                uids: removed,
                modseq,
                orphaned,
            })
        }
        .await;
        let result = conclude(std::slice::from_mut(&mut w), result);
        w.finish().await;
        result
    }

    /// Copies (and with `remove`, moves) messages, holding both mailboxes' leases.
    async fn copy(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
        remove: bool,
    ) -> StoreResult<(Vec<Copied>, Expunged)> {
        self.owned_mailbox(account, source).await?;
        self.owned_mailbox(account, dest).await?;
        let mut writers = self.alloc.writers(&[source, dest]).await?;
        let result = self
            .copy_locked(&mut writers, account, source, uids, dest, remove)
            .await;
        let result = conclude(&mut writers, result);
        for w in writers {
            w.finish().await;
        }
        result
    }

    async fn copy_locked(
        &self,
        writers: &mut [MailboxWriter<'_>],
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
        remove: bool,
    ) -> StoreResult<(Vec<Copied>, Expunged)> {
        let src_before = self.owned_mailbox(account, source).await?;
        let dst_before = self.owned_mailbox(account, dest).await?;
        let mut sorted = uids.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut found = Vec::new();
        for uid in sorted {
            let row: Option<FieldsRow> = self
                .db
                .one(
                    "SELECT blob_id, size, internal_date, flags, summary, email_id, thread_id, \
                     trace FROM messages WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                    (source.0, bucket(uid.0 as u64), uid.0 as i64),
                )
                .await?;
            if let Some(r) = row {
                let legacy = crate::object_id::legacy_ids(source, uid);
                found.push((
                    uid,
                    StoredFields {
                        blob: r.0,
                        size: r.1,
                        internal_date: r.2,
                        flags: r.3,
                        summary: match r.4 {
                            Some(legacy) => Some(legacy),
                            None => self.summary_of(source, uid).await?,
                        },
                        // The copy is the same email (RFC 8474 §5.1).
                        ids: crate::MessageObjectIds {
                            email_id: r.5.unwrap_or(legacy.email_id),
                            thread_id: r.6.unwrap_or(legacy.thread_id),
                        },
                        account,
                        trace: r.7,
                    },
                ));
            }
        }
        if !remove {
            // Copies count against quota (advisory: checked once, before writing).
            let acct = self
                .account_by_id(account)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("account {account}")))?;
            let extra: u64 = found.iter().map(|f| f.1.size.max(0) as u64).sum();
            if !acct.fits(extra) {
                return Err(StoreError::QuotaExceeded(acct.address));
            }
        }
        let (dest_idx, src_idx) = if source == dest {
            (0, 0)
        } else if dest < source {
            (0, 1)
        } else {
            (1, 0)
        };
        let mut copied = Vec::new();
        let mut expunged = Expunged::default();
        let mut dst_delta = MailboxDelta::default();
        let mut src_delta = MailboxDelta::default();
        let mut bytes = 0i64;
        let mut failure = None;
        for (uid, fields) in found {
            let appended = match self
                .insert_message(&mut writers[dest_idx], &fields, &mut dst_delta)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            self.fts_copy(source, uid, dest, appended.uid).await?;
            copied.push(Copied {
                source_uid: uid,
                dest: appended,
            });
            if remove {
                if let Some((blob, _, modseq)) = self
                    .remove_message(&mut writers[src_idx], uid, &mut src_delta)
                    .await?
                {
                    expunged.modseq = Some(modseq);
                    expunged.uids.push(uid);
                    // The destination took a new reference; drop the source's.
                    let held = blob_gc::message_holder(source.0, uid.0 as i64);
                    expunged
                        .orphaned
                        .extend(self.release_blobs(&[(blob, held)]).await?);
                }
            } else {
                bytes += fields.size;
            }
        }
        if let Some(e) = failure {
            // A COPY that fails must leave the destination as it was (RFC 9051 §6.4.7),
            // and a client retries it: the copies made so far are taken out again. A MOVE
            // that fails part-way has moved some messages and not others, each exactly
            // once, and a retry moves the rest.
            if !remove {
                for c in copied.drain(..) {
                    match self
                        .remove_message(&mut writers[dest_idx], c.dest.uid, &mut dst_delta)
                        .await
                    {
                        Ok(Some((blob, _, _))) => {
                            let held = blob_gc::message_holder(dest.0, c.dest.uid.0 as i64);
                            let _ = self.release_blobs(&[(blob, held)]).await;
                        }
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            }
            if source == dest {
                dst_delta.count += src_delta.count;
                dst_delta.size += src_delta.size;
                dst_delta.unseen += src_delta.unseen;
                dst_delta.last_modseq = dst_delta.last_modseq.max(src_delta.last_modseq);
            }
            let _ = self
                .apply_delta(&mut writers[dest_idx], &dst_before, &dst_delta)
                .await;
            if source != dest {
                let _ = self
                    .apply_delta(&mut writers[src_idx], &src_before, &src_delta)
                    .await;
            }
            return Err(e);
        }
        if source == dest {
            // One mailbox, one row: merge what both sides did.
            dst_delta.count += src_delta.count;
            dst_delta.size += src_delta.size;
            dst_delta.unseen += src_delta.unseen;
            dst_delta.last_modseq = dst_delta.last_modseq.max(src_delta.last_modseq);
            self.apply_delta(&mut writers[dest_idx], &dst_before, &dst_delta)
                .await?;
        } else {
            self.apply_delta(&mut writers[dest_idx], &dst_before, &dst_delta)
                .await?;
            self.apply_delta(&mut writers[src_idx], &src_before, &src_delta)
                .await?;
        }
        if !remove {
            self.add_usage(account, bytes, copied.len() as i64).await?;
        }
        Ok((copied, expunged))
    }

    async fn load_outbound(
        &self,
        id: crate::QueueId,
    ) -> StoreResult<Option<crate::OutboundMessage>> {
        type Head = (
            String,
            i64,
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
            i64,
            Option<String>,
            Option<i64>,
        );
        let head: Option<Head> = self
            .db
            .one(
                "SELECT blob_id, size, sender, account_id, envid, ret, created_at, trace, \
                 version FROM outbound WHERE id = ?",
                (id.0,),
            )
            .await?;
        let Some(h) = head else { return Ok(None) };
        // The submitting account may be gone: entries outlive it and then name no account.
        let account = match h.3 {
            Some(a) if self.account_exists(AccountId(a)).await? => Some(AccountId(a)),
            _ => None,
        };
        let recipients = self
            .load_recipients(id)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        Ok(Some(crate::OutboundMessage {
            id,
            blob: parse_blob(&h.0)?,
            size: h.1.max(0) as u64,
            sender: h.2,
            account,
            envid: h.4,
            ret: h.5.as_deref().and_then(crate::DsnRet::parse),
            created_at: h.6,
            trace: h.7,
            recipients,
            version: h.8.map_or(0, |c| c as u64),
        }))
    }

    /// Recipients of an entry with where their rows are, in enqueue order.
    async fn load_recipients(
        &self,
        id: crate::QueueId,
    ) -> StoreResult<Vec<(RcptSlot, crate::OutboundRecipient)>> {
        type RcptRow = (
            i32,
            String,
            i32,
            i32,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<bool>,
            Option<i64>,
            Option<i32>,
        );
        let rows: Vec<RcptRow> = self
            .db
            .all(
                "SELECT seq, address, state, attempts, next_attempt, last_error, notify, orcpt, \
                 delay_warned, due_bucket, final_state FROM outbound_rcpts WHERE queue_id = ?",
                (id.0,),
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    RcptSlot {
                        seq: r.0,
                        due_bucket: r.9,
                    },
                    crate::OutboundRecipient {
                        address: r.1,
                        // A final state, once written, is the state (see SCHEMA_V15).
                        state: state_from(r.10.unwrap_or(r.2))?,
                        attempts: r.3.max(0) as u32,
                        next_attempt: r.4,
                        last_error: r.5,
                        notify: r.6,
                        orcpt: r.7,
                        delay_warned: r.8.unwrap_or(false),
                    },
                ))
            })
            .collect()
    }

    /// Refuses a queue write from a lease older than one that already wrote to the entry,
    /// and records `fence` (and a new version, so no claim can act on a read from before
    /// this write) otherwise: one LWT (`IF fence <= token`), taken only by writes
    /// that carry a token, so the queue's fencing costs a Paxos round per recipient update
    /// rather than per message stored.
    async fn check_fence(&self, id: crate::QueueId, fence: Option<u64>) -> StoreResult<()> {
        let Some(token) = fence else {
            return Ok(());
        };
        let token = i64::try_from(token)
            .map_err(|_| StoreError::Invalid(format!("lease token {token} out of range")))?;
        if self
            .db
            .lwt(
                "UPDATE outbound SET fence = ?, version = ? WHERE id = ? IF fence <= ?",
                (token, fresh_version(), id.0, token),
            )
            .await?
        {
            return Ok(());
        }
        let row: Option<(Option<i64>,)> = self
            .db
            .one("SELECT fence FROM outbound WHERE id = ?", (id.0,))
            .await?;
        match row {
            None => Err(StoreError::NotFound(format!("queue entry {id}"))),
            Some((stored,)) => Err(StoreError::Conflict(format!(
                "queue entry {id}: lease token {token} is older than {}, which already wrote to it",
                stored.unwrap_or(0)
            ))),
        }
    }

    /// The fence check of [`Self::check_fence`] and the claim's compare-and-set on the
    /// entry's version, in one LWT: a claim costs no more Paxos rounds than any other
    /// fenced queue write. The version is null until the first fenced write (rows of every
    /// schema start that way), so `seen == 0` compares with null; each write sets a fresh
    /// random one (an opaque value, so no read-modify-write is needed to change it).
    /// Returns the new version.
    async fn check_claim(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        seen: u64,
    ) -> StoreResult<u64> {
        let next = fresh_version();
        let seen_v = seen as i64;
        let token = fence
            .map(|t| {
                i64::try_from(t)
                    .map_err(|_| StoreError::Invalid(format!("lease token {t} out of range")))
            })
            .transpose()?;
        let applied = match (token, seen) {
            (Some(t), 0) => {
                self.db
                    .lwt(
                        "UPDATE outbound SET fence = ?, claims = ? WHERE id = ? \
                         IF fence <= ? AND claims = null",
                        (t, next, id.0, t),
                    )
                    .await?
            }
            (Some(t), _) => {
                self.db
                    .lwt(
                        "UPDATE outbound SET fence = ?, claims = ? WHERE id = ? \
                         IF fence <= ? AND claims = ?",
                        (t, next, id.0, t, seen_v),
                    )
                    .await?
            }
            (None, 0) => {
                self.db
                    .lwt(
                        "UPDATE outbound SET claims = ? WHERE id = ? IF claims = null",
                        (next, id.0),
                    )
                    .await?
            }
            (None, _) => {
                self.db
                    .lwt(
                        "UPDATE outbound SET claims = ? WHERE id = ? IF claims = ?",
                        (next, id.0, seen_v),
                    )
                    .await?
            }
        };
        if applied {
            return Ok(next as u64);
        }
        let row: Option<(Option<i64>, Option<i64>)> = self
            .db
            .one("SELECT fence, version FROM outbound WHERE id = ?", (id.0,))
            .await?;
        match (row, token) {
            (None, _) => Err(StoreError::NotFound(format!("queue entry {id}"))),
            (Some((stored, _)), Some(t)) if stored.unwrap_or(0) > t => {
                Err(StoreError::Conflict(format!(
                    "queue entry {id}: lease token {t} is older than {}, which already wrote to it",
                    stored.unwrap_or(0)
                )))
            }
            (Some(_), _) => Err(StoreError::Conflict(format!(
                "queue entry {id}: another attempt was claimed since it was read"
            ))),
        }
    }

    /// A new version for an entry written without a fence (the admin's tools).
    async fn bump_version(&self, id: crate::QueueId) -> StoreResult<()> {
        self.db
            .lwt(
                "UPDATE outbound SET version = ? WHERE id = ? IF EXISTS",
                (fresh_version(), id.0),
            )
            .await?;
        Ok(())
    }

    async fn outbound_exists(&self, id: crate::QueueId) -> StoreResult<bool> {
        let row: Option<(i64,)> = self
            .db
            .one("SELECT id FROM outbound WHERE id = ?", (id.0,))
            .await?;
        Ok(row.is_some())
    }

    /// The statements that move a recipient's row in the due index from attempt time `old`
    /// to `new` (`None`: not `Queued`, so not in the index), written by a node whose clock
    /// says `now`; and the bucket to record in the recipient's `due_bucket` (unchanged
    /// when the time does not change).
    fn plan_due(
        id: crate::QueueId,
        slot: RcptSlot,
        old: Option<i64>,
        new: Option<i64>,
        now: i64,
    ) -> DuePlan {
        let old_bucket = old.map(|at| slot.due_bucket.unwrap_or_else(|| due_index::bucket_of(at)));
        if old == new {
            return DuePlan {
                bucket: old_bucket,
                stmts: Vec::new(),
            };
        }
        let shard = due_index::shard_of(id.0);
        let key = |bucket: i64, at: i64| {
            vec![
                Some(CqlValue::Int(shard)),
                Some(CqlValue::BigInt(bucket)),
                Some(CqlValue::BigInt(at)),
                Some(CqlValue::BigInt(id.0)),
                Some(CqlValue::Int(slot.seq)),
            ]
        };
        let mut stmts = Vec::with_capacity(3);
        let bucket = new.map(|at| {
            let b = due_index::index_bucket(at, now);
            stmts.push((
                "INSERT INTO outbound_due_by_time (shard, bucket, next_attempt, queue_id, seq) \
                 VALUES (?, ?, ?, ?, ?)",
                key(b, at),
            ));
            // The directory entry: rewritten with every row, the same cell each time.
            stmts.push((
                "INSERT INTO outbound_due_buckets (shard, bucket) VALUES (?, ?)",
                vec![Some(CqlValue::Int(shard)), Some(CqlValue::BigInt(b))],
            ));
            b
        });
        if let (Some(at), Some(b)) = (old, old_bucket) {
            stmts.push((
                "DELETE FROM outbound_due_by_time WHERE shard = ? AND bucket = ? \
                 AND next_attempt = ? AND queue_id = ? AND seq = ?",
                key(b, at),
            ));
        }
        DuePlan { bucket, stmts }
    }

    /// The batch statements that create queue entry `id` from `msg` (its blob reference is
    /// taken separately: a counter cannot share a batch with other writes).
    fn entry_rows(
        id: i64,
        msg: &crate::NewOutbound,
        out: &mut Vec<(&'static str, Vec<Option<CqlValue>>)>,
    ) {
        let text = |s: &str| Some(CqlValue::Text(s.to_string()));
        let now = now_secs();
        for (seq, r) in msg.recipients.iter().enumerate() {
            let slot = RcptSlot {
                seq: seq as i32,
                due_bucket: None,
            };
            let due = Self::plan_due(crate::QueueId(id), slot, None, Some(msg.created_at), now);
            out.push((
                "INSERT INTO outbound_rcpts (queue_id, seq, address, state, attempts, \
                 next_attempt, notify, orcpt, due_bucket) VALUES (?, ?, ?, 0, 0, ?, ?, ?, ?)",
                vec![
                    Some(CqlValue::BigInt(id)),
                    Some(CqlValue::Int(seq as i32)),
                    text(&r.address),
                    Some(CqlValue::BigInt(msg.created_at)),
                    r.notify.as_deref().and_then(text),
                    r.orcpt.as_deref().and_then(text),
                    due.bucket.map(CqlValue::BigInt),
                ],
            ));
            out.extend(due.stmts);
        }
        out.push((
            "INSERT INTO outbound (id, blob_id, size, sender, account_id, envid, ret, \
             created_at, trace, fence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            vec![
                Some(CqlValue::BigInt(id)),
                text(msg.blob.as_str()),
                Some(CqlValue::BigInt(msg.size.min(i64::MAX as u64) as i64)),
                text(&msg.sender),
                msg.account.map(|a| CqlValue::BigInt(a.0)),
                msg.envid.as_deref().and_then(text),
                msg.ret.and_then(|r| text(r.as_str())),
                Some(CqlValue::BigInt(msg.created_at)),
                msg.trace.as_deref().and_then(text),
            ],
        ));
        out.push((
            "INSERT INTO outbound_ids (shard, id) VALUES (?, ?)",
            vec![
                Some(CqlValue::Int(due_index::shard_of(id))),
                Some(CqlValue::BigInt(id)),
            ],
        ));
    }

    /// Runs a [`DuePlan`]'s statements one by one (outside a batch): the new row first, so a
    /// failure in between leaves the recipient findable twice rather than not at all.
    async fn apply_due(&self, plan: DuePlan) -> StoreResult<()> {
        for (cql, values) in plan.stmts {
            self.db.run(cql, values).await?;
        }
        Ok(())
    }

    /// The cursor of queue shard `shard`: this process's copy, or the stored one.
    async fn queue_cursor(&self, shard: i32) -> StoreResult<i64> {
        if let Some(c) = self
            .cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
        {
            return Ok(*c);
        }
        let row: Option<(Option<i64>,)> = self
            .db
            .one(
                "SELECT bucket FROM outbound_cursor WHERE shard = ?",
                (shard,),
            )
            .await?;
        // No cursor row (lost, or a keyspace migrated by hand): read the whole directory
        // once; it holds only buckets with rows, so this is cheap.
        let c = row.and_then(|r| r.0).unwrap_or(0);
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard, c);
        Ok(c)
    }
}

/// Where a queue recipient's row is: its clustering key, and the due-index bucket its due
/// row was written to (null in rows of schemas before v14 that were never moved).
#[derive(Clone, Copy, Debug)]
struct RcptSlot {
    seq: i32,
    due_bucket: Option<i64>,
}

/// A move in the due index ([`ScyllaMetadataStore::plan_due`]).
struct DuePlan {
    /// The recipient's `due_bucket` after the move.
    bucket: Option<i64>,
    stmts: Vec<(&'static str, Vec<Option<CqlValue>>)>,
}

/// Copies the per-domain listings of schemas before v14 (one partition per domain) into
/// the sharded tables. Rerunnable (the copies are plain inserts); the old tables are no
/// longer read.
async fn reshard_domains(session: &Session, ks: &str) -> StoreResult<()> {
    let account = session
        .prepare(format!(
            "INSERT INTO {ks}.accounts_by_domain_shard (domain_id, shard, address, id) \
             VALUES (?, ?, ?, ?)"
        ))
        .await
        .map_err(db_err)?;
    let mut rows = session
        .query_iter(
            format!("SELECT domain_id, address, id FROM {ks}.accounts_by_domain"),
            (),
        )
        .await
        .map_err(db_err)?
        .rows_stream::<(i64, String, i64)>()
        .map_err(row_err)?;
    while let Some((domain, address, id)) = rows.try_next().await.map_err(db_err)? {
        let shard = domain_shards::shard_of(&address);
        session
            .execute_unpaged(&account, (domain, shard, address.as_str(), id))
            .await
            .map_err(db_err)?;
    }
    let alias = session
        .prepare(format!(
            "INSERT INTO {ks}.aliases_by_domain_shard (domain, shard, source, target) \
             VALUES (?, ?, ?, ?)"
        ))
        .await
        .map_err(db_err)?;
    let mut rows = session
        .query_iter(
            format!("SELECT domain, source, target FROM {ks}.aliases_by_domain"),
            (),
        )
        .await
        .map_err(db_err)?
        .rows_stream::<(String, String, String)>()
        .map_err(row_err)?;
    while let Some((domain, source, target)) = rows.try_next().await.map_err(db_err)? {
        let shard = domain_shards::shard_of(&source);
        session
            .execute_unpaged(
                &alias,
                (domain.as_str(), shard, source.as_str(), target.as_str()),
            )
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Puts the orphans recorded by schemas before v14 into the sweep's log, and starts the
/// sweep's cursor at the oldest of them (or the present). Rerunnable.
async fn log_orphans(session: &Session, ks: &str, existing: bool) -> StoreResult<()> {
    let mut oldest = blob_gc::bucket_of(now_secs());
    if existing {
        let insert = session
            .prepare(format!(
                "INSERT INTO {ks}.blob_candidates (bucket, shard, blob_id) VALUES (?, ?, ?)"
            ))
            .await
            .map_err(db_err)?;
        let mut rows = session
            .query_iter(format!("SELECT blob_id, since FROM {ks}.blob_orphans"), ())
            .await
            .map_err(db_err)?
            .rows_stream::<(String, Option<i64>)>()
            .map_err(row_err)?;
        while let Some((blob, since)) = rows.try_next().await.map_err(db_err)? {
            let bucket = blob_gc::bucket_of(since.unwrap_or(0).max(0));
            oldest = oldest.min(bucket);
            session
                .execute_unpaged(&insert, (bucket, blob_gc::shard_of(&blob), blob.as_str()))
                .await
                .map_err(db_err)?;
        }
    }
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.gc_cursor (id, bucket) VALUES (0, ?) IF NOT EXISTS"),
            (oldest,),
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Moves the queue of schemas before v14 (one partition) into the sharded tables: every
/// `Queued` recipient gets a due row in its shard and bucket and records the bucket;
/// every id moves to its shard; then each shard's cursor is set to the oldest bucket
/// written. Rerunnable: a recipient that already records a bucket is not indexed again.
async fn reindex_queue(session: &Session, ks: &str, existing: bool) -> StoreResult<()> {
    let now = now_secs();
    let mut oldest = due_index::bucket_of(now) - 1;
    if existing {
        let insert = session
            .prepare(format!(
                "INSERT INTO {ks}.outbound_due_by_time (shard, bucket, next_attempt, queue_id, \
                 seq) VALUES (?, ?, ?, ?, ?)"
            ))
            .await
            .map_err(db_err)?;
        let listed = session
            .prepare(format!(
                "INSERT INTO {ks}.outbound_due_buckets (shard, bucket) VALUES (?, ?)"
            ))
            .await
            .map_err(db_err)?;
        let record = session
            .prepare(format!(
                "UPDATE {ks}.outbound_rcpts SET due_bucket = ? WHERE queue_id = ? AND seq = ?"
            ))
            .await
            .map_err(db_err)?;
        let mut rows = session
            .query_iter(
                format!("SELECT queue_id, seq, state, next_attempt, due_bucket FROM {ks}.outbound_rcpts"),
                (),
            )
            .await
            .map_err(db_err)?
            .rows_stream::<(i64, i32, i32, i64, Option<i64>)>()
            .map_err(row_err)?;
        while let Some((queue_id, seq, state, at, due_bucket)) =
            rows.try_next().await.map_err(db_err)?
        {
            if state != 0 {
                continue;
            }
            let bucket = match due_bucket {
                Some(b) => b,
                None => {
                    let b = due_index::index_bucket(at, now);
                    let shard = due_index::shard_of(queue_id);
                    session
                        .execute_unpaged(&insert, (shard, b, at, queue_id, seq))
                        .await
                        .map_err(db_err)?;
                    session
                        .execute_unpaged(&listed, (shard, b))
                        .await
                        .map_err(db_err)?;
                    session
                        .execute_unpaged(&record, (b, queue_id, seq))
                        .await
                        .map_err(db_err)?;
                    b
                }
            };
            oldest = oldest.min(bucket);
        }
        let add = session
            .prepare(format!(
                "INSERT INTO {ks}.outbound_ids (shard, id) VALUES (?, ?)"
            ))
            .await
            .map_err(db_err)?;
        let remove = session
            .prepare(format!(
                "DELETE FROM {ks}.outbound_ids WHERE shard = ? AND id = ?"
            ))
            .await
            .map_err(db_err)?;
        let mut ids = session
            .query_iter(
                format!("SELECT id FROM {ks}.outbound_ids WHERE shard = ?"),
                (LEGACY_QUEUE_SHARD,),
            )
            .await
            .map_err(db_err)?
            .rows_stream::<(i64,)>()
            .map_err(row_err)?;
        while let Some((id,)) = ids.try_next().await.map_err(db_err)? {
            let shard = due_index::shard_of(id);
            if shard != LEGACY_QUEUE_SHARD {
                session
                    .execute_unpaged(&add, (shard, id))
                    .await
                    .map_err(db_err)?;
                session
                    .execute_unpaged(&remove, (LEGACY_QUEUE_SHARD, id))
                    .await
                    .map_err(db_err)?;
            }
        }
    }
    let cursor = session
        .prepare(format!(
            "INSERT INTO {ks}.outbound_cursor (shard, bucket) VALUES (?, ?) IF NOT EXISTS"
        ))
        .await
        .map_err(db_err)?;
    for shard in 0..due_index::QUEUE_SHARDS as i32 {
        session
            .execute_unpaged(&cursor, (shard, oldest))
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Creates the tables of every schema version above the recorded one, then records it.
/// How long a migration lock lasts without being finished (a pod that died while
/// migrating); the next pod then takes it and migrates (every step is rerunnable).
const MIGRATION_LOCK_SECS: i32 = 120;

/// Brings the keyspace to [`SCHEMA_VERSION`], once for the whole cluster: the first pod
/// takes a lock row (`schema_version` id 1, an LWT with a TTL) and runs the migrations
/// while the others wait until the recorded version is current, so a rolling start of
/// many pods does not send the same DDL from every pod at once (ScyllaDB then has to
/// reconcile concurrent schema changes). A lock left by a pod that died expires.
async fn migrate(session: &Session, ks: &str) -> StoreResult<()> {
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.schema_version (id int PRIMARY KEY, version int)"
            ),
            (),
        )
        .await
        .map_err(db_err)?;
    let holder = (rand::random::<u32>() >> 1) as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(MIGRATION_LOCK_SECS as u64 * 3);
    loop {
        let version = schema_version(session, ks).await?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid(format!(
                "keyspace schema version {version} is newer than this build ({SCHEMA_VERSION})"
            )));
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let res = session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.schema_version (id, version) VALUES (1, ?) IF NOT EXISTS \
                     USING TTL {MIGRATION_LOCK_SECS}"
                ),
                (holder,),
            )
            .await
            .map_err(db_err)?;
        let applied = res
            .into_rows_result()
            .map_err(row_err)?
            .maybe_first_row::<Row>()
            .map_err(row_err)?
            .and_then(|r| r.columns.into_iter().next().flatten())
            .is_some_and(|c| matches!(c, CqlValue::Boolean(true)));
        if applied {
            let result = migrate_locked(session, ks).await;
            let _ = session
                .query_unpaged(
                    format!("DELETE FROM {ks}.schema_version WHERE id = 1 IF version = ?"),
                    (holder,),
                )
                .await;
            return result;
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Unavailable(
                "another node has been migrating the schema for too long".into(),
            ));
        }
        tracing::info!("another node is migrating the ScyllaDB schema; waiting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The recorded schema version (0 for a new keyspace).
async fn schema_version(session: &Session, ks: &str) -> StoreResult<i32> {
    let res = session
        .query_unpaged(
            format!("SELECT version FROM {ks}.schema_version WHERE id = 0"),
            (),
        )
        .await
        .map_err(db_err)?;
    Ok(res
        .into_rows_result()
        .map_err(row_err)?
        .maybe_first_row::<(Option<i32>,)>()
        .map_err(row_err)?
        .and_then(|r| r.0)
        .unwrap_or(0))
}

async fn migrate_locked(session: &Session, ks: &str) -> StoreResult<()> {
    let version = schema_version(session, ks).await?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "keyspace schema version {version} is newer than this build ({SCHEMA_VERSION})"
        )));
    }
    // Every statement is `IF NOT EXISTS`, so two nodes migrating at once (or a migration
    // interrupted half-way) converge on the same schema.
    if version < 1 {
        for stmt in SCHEMA_V1 {
            session
                .query_unpaged(stmt.replace("{ks}", ks), ())
                .await
                .map_err(db_err)?;
        }
    }
    if version < 2 {
        for stmt in SCHEMA_V2 {
            if let Err(e) = session.query_unpaged(stmt.replace("{ks}", ks), ()).await {
                let text = e.to_string().to_ascii_lowercase();
                if !(text.contains("already exist") || text.contains("conflicts with")) {
                    return Err(db_err(e));
                }
            }
        }
    }
    if version < 3 {
        for stmt in SCHEMA_V3 {
            session
                .query_unpaged(stmt.replace("{ks}", ks), ())
                .await
                .map_err(db_err)?;
        }
    }
    for (v, stmts) in [(4, SCHEMA_V4), (5, SCHEMA_V5)] {
        if version >= v {
            continue;
        }
        for stmt in stmts {
            if let Err(e) = session.query_unpaged(stmt.replace("{ks}", ks), ()).await {
                let text = e.to_string().to_ascii_lowercase();
                if !(text.contains("already exist") || text.contains("conflicts with")) {
                    return Err(db_err(e));
                }
            }
        }
    }
    if version < 6 {
        for stmt in fts::SCHEMA_V6 {
            session
                .query_unpaged(stmt.replace("{ks}", ks), ())
                .await
                .map_err(db_err)?;
        }
        // Messages stored before the index existed are pending until reindexed.
        if version > 0 {
            fts::backfill_pending(session, ks).await?;
        }
    }
    for (v, stmts) in [
        (7, SCHEMA_V7),
        (8, SCHEMA_V8),
        (9, SCHEMA_V9),
        (10, SCHEMA_V10),
        (11, SCHEMA_V11),
        (12, SCHEMA_V12),
        (13, SCHEMA_V13),
        (14, SCHEMA_V14),
        (15, SCHEMA_V15),
    ] {
        if version >= v {
            continue;
        }
        for stmt in stmts {
            if let Err(e) = session.query_unpaged(stmt.replace("{ks}", ks), ()).await {
                let text = e.to_string().to_ascii_lowercase();
                if !(text.contains("already exist") || text.contains("conflicts with")) {
                    return Err(db_err(e));
                }
            }
        }
    }
    if version < 14 {
        reindex_queue(session, ks, version > 0).await?;
        log_orphans(session, ks, version > 0).await?;
        if version > 0 {
            reshard_domains(session, ks).await?;
        }
    }
    if version < SCHEMA_VERSION {
        session
            .query_unpaged(
                format!("INSERT INTO {ks}.schema_version (id, version) VALUES (0, ?)"),
                (SCHEMA_VERSION,),
            )
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

#[async_trait]
impl MetadataStore for ScyllaMetadataStore {
    async fn create_domain(&self, name: &str) -> StoreResult<Domain> {
        // Stored as given, as the SQLite store does (callers normalise).
        let name = name.to_string();
        let id = self.next_id("domain").await?;
        if !self
            .db
            .lwt(
                "INSERT INTO domains (name, id, created_at) VALUES (?, ?, ?) IF NOT EXISTS",
                (name.as_str(), id, now_secs()),
            )
            .await?
        {
            return Err(StoreError::Conflict(format!("domain {name}")));
        }
        Ok(Domain {
            id: DomainId(id),
            name,
            managed_by: None,
            quota_bytes: 0,
        })
    }

    async fn get_domain(&self, name: &str) -> StoreResult<Option<Domain>> {
        self.domain(name).await
    }

    async fn list_domains(&self) -> StoreResult<Vec<Domain>> {
        // Domains are few: a full scan, sorted here.
        let rows: Vec<(String, i64, Option<String>, Option<i64>)> = self
            .db
            .all("SELECT name, id, managed_by, quota_bytes FROM domains", ())
            .await?;
        let mut out: Vec<Domain> = rows
            .into_iter()
            .map(|(name, id, managed_by, quota)| Domain {
                id: DomainId(id),
                name,
                managed_by,
                quota_bytes: quota.unwrap_or(0).max(0) as u64,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_domain(&self, name: &str) -> StoreResult<()> {
        let name = name.to_string();
        let d = self
            .domain(&name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("domain {name}")))?;
        let mut in_use = false;
        for shard in 0..domain_shards::SHARDS {
            let account: Option<(String,)> = self
                .db
                .one(
                    "SELECT address FROM accounts_by_domain_shard WHERE domain_id = ? \
                     AND shard = ? LIMIT 1",
                    (d.id.0, shard),
                )
                .await?;
            let alias: Option<(String,)> = self
                .db
                .one(
                    "SELECT source FROM aliases_by_domain_shard WHERE domain = ? AND shard = ? \
                     LIMIT 1",
                    (name.as_str(), shard),
                )
                .await?;
            if account.is_some() || alias.is_some() {
                in_use = true;
                break;
            }
        }
        if in_use {
            return Err(StoreError::Conflict(format!(
                "domain {name} still has accounts or aliases"
            )));
        }
        self.db
            .run("DELETE FROM domains WHERE name = ?", (name.as_str(),))
            .await?;
        Ok(())
    }

    async fn create_account(
        &self,
        address: &str,
        password_hash: &str,
        quota_bytes: u64,
    ) -> StoreResult<Account> {
        let address = address.to_lowercase();
        let domain = self
            .domain(domain_of(&address)?)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("domain of {address}")))?;
        let alias: Option<(String,)> = self
            .db
            .one(
                "SELECT target FROM aliases WHERE source = ? LIMIT 1",
                (address.as_str(),),
            )
            .await?;
        if alias.is_some() {
            return Err(StoreError::Conflict(format!("{address} is an alias")));
        }
        let id = self.next_id("account").await?;
        // The row first, the address claim second: a reader that resolves the address
        // always finds the row.
        self.db
            .run(
                "INSERT INTO accounts (id, domain_id, address, password_hash, quota_bytes, \
                 created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    id,
                    domain.id.0,
                    address.as_str(),
                    password_hash,
                    quota_bytes.min(i64::MAX as u64) as i64,
                    now_secs(),
                ),
            )
            .await?;
        if !self
            .db
            .lwt(
                "INSERT INTO accounts_by_address (address, id) VALUES (?, ?) IF NOT EXISTS",
                (address.as_str(), id),
            )
            .await?
        {
            self.db
                .run("DELETE FROM accounts WHERE id = ?", (id,))
                .await?;
            return Err(StoreError::Conflict(format!("account {address}")));
        }
        self.db
            .run(
                "INSERT INTO accounts_by_domain_shard (domain_id, shard, address, id) \
                 VALUES (?, ?, ?, ?)",
                (
                    domain.id.0,
                    domain_shards::shard_of(&address),
                    address.as_str(),
                    id,
                ),
            )
            .await?;
        for (role, name) in SpecialUse::DEFAULTS {
            self.create_mailbox_rows(AccountId(id), name, Some(role))
                .await?;
        }
        self.account_by_id(AccountId(id))
            .await?
            .ok_or_else(|| StoreError::Corrupt("account vanished".into()))
    }

    async fn get_account(&self, address: &str) -> StoreResult<Option<Account>> {
        self.account_by_address(&address.to_lowercase()).await
    }

    async fn get_account_by_id(&self, id: AccountId) -> StoreResult<Option<Account>> {
        self.account_by_id(id).await
    }

    async fn list_accounts(&self, domain: Option<&str>) -> StoreResult<Vec<Account>> {
        let ids: Vec<i64> = match domain {
            Some(d) => {
                let Some(d) = self.domain(&d.to_lowercase()).await? else {
                    return Ok(Vec::new());
                };
                let mut ids = Vec::new();
                for shard in 0..domain_shards::SHARDS {
                    let rows: Vec<(i64,)> = self
                        .db
                        .all(
                            "SELECT id FROM accounts_by_domain_shard WHERE domain_id = ? \
                             AND shard = ?",
                            (d.id.0, shard),
                        )
                        .await?;
                    ids.extend(rows.into_iter().map(|r| r.0));
                }
                ids
            }
            None => {
                let rows: Vec<(i64,)> = self.db.all("SELECT id FROM accounts", ()).await?;
                rows.into_iter().map(|r| r.0).collect()
            }
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = self.account_by_id(AccountId(id)).await? {
                out.push(a);
            }
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    async fn delete_account(&self, address: &str) -> StoreResult<Vec<BlobId>> {
        let address = address.to_lowercase();
        let acct = self
            .account_by_address(&address)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?;
        let mut orphaned: Vec<BlobId> = Vec::new();
        for mb in self.list_mailboxes(acct.id).await? {
            for b in self.drop_mailbox(&mb).await? {
                if !orphaned.contains(&b) {
                    orphaned.push(b);
                }
            }
        }
        let a = acct.id.0;
        self.db
            .run("DELETE FROM subscriptions WHERE account_id = ?", (a,))
            .await?;
        for p in self.list_app_passwords(acct.id).await? {
            self.db
                .run("DELETE FROM app_password_ids WHERE id = ?", (p.id.0,))
                .await?;
        }
        self.db
            .run("DELETE FROM app_passwords WHERE account_id = ?", (a,))
            .await?;
        self.db
            .run("DELETE FROM app_password_tags WHERE account_id = ?", (a,))
            .await?;
        self.db
            .run("DELETE FROM totp_secrets WHERE account_id = ?", (a,))
            .await?;
        self.db
            .run("DELETE FROM sender_grants WHERE account_id = ?", (a,))
            .await?;
        // Rights granted to the address must not pass to a new account of that name.
        for s in self.shared_with(&address).await? {
            self.write_acl(s.owner, s.mailbox, &address, "").await?;
        }
        self.db
            .run("DELETE FROM server_metadata WHERE account_id = ?", (a,))
            .await?;
        self.db
            .run("DELETE FROM records WHERE scope = ?", (a,))
            .await?;
        // The address goes last so a half-done delete can be finished by running it again.
        self.db
            .run(
                "DELETE FROM accounts_by_domain_shard WHERE domain_id = ? AND shard = ? \
                 AND address = ?",
                (
                    acct.domain.0,
                    domain_shards::shard_of(&address),
                    address.as_str(),
                ),
            )
            .await?;
        self.db
            .run("DELETE FROM accounts WHERE id = ?", (a,))
            .await?;
        // Aliases pointing at the account would otherwise resolve to nothing.
        let sources: Vec<(String,)> = self
            .db
            .all(
                "SELECT source FROM aliases_by_target WHERE target = ?",
                (address.as_str(),),
            )
            .await?;
        for (source,) in sources {
            self.delete_alias_rows(&source, &address).await?;
        }
        self.db
            .run(
                "DELETE FROM accounts_by_address WHERE address = ?",
                (address.as_str(),),
            )
            .await?;
        Ok(orphaned)
    }

    async fn set_password_hash(&self, address: &str, password_hash: &str) -> StoreResult<()> {
        let address = address.to_lowercase();
        let id = self
            .account_id(&address)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?;
        // IF EXISTS: a plain UPDATE would resurrect a concurrently deleted account's row.
        if !self
            .db
            .lwt(
                "UPDATE accounts SET password_hash = ? WHERE id = ? IF EXISTS",
                (password_hash, id.0),
            )
            .await?
        {
            return Err(StoreError::NotFound(format!("account {address}")));
        }
        Ok(())
    }

    async fn set_account_settings(
        &self,
        address: &str,
        settings: &AccountSettings,
    ) -> StoreResult<()> {
        let address = address.to_lowercase();
        let id = self
            .account_id(&address)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?;
        if !self
            .db
            .lwt(
                "UPDATE accounts SET display_name = ?, suspended = ?, protocols = ?, \
                 managed_by = ? WHERE id = ? IF EXISTS",
                (
                    settings.display_name.as_deref(),
                    settings.suspended,
                    settings.protocols.bits() as i32,
                    settings.managed_by.as_deref(),
                    id.0,
                ),
            )
            .await?
        {
            return Err(StoreError::NotFound(format!("account {address}")));
        }
        Ok(())
    }

    async fn set_domain_managed_by(&self, name: &str, managed_by: Option<&str>) -> StoreResult<()> {
        let name = name.to_lowercase();
        if !self
            .db
            .lwt(
                "UPDATE domains SET managed_by = ? WHERE name = ? IF EXISTS",
                (managed_by, name.as_str()),
            )
            .await?
        {
            return Err(StoreError::NotFound(format!("domain {name}")));
        }
        Ok(())
    }

    async fn set_domain_quota(&self, name: &str, quota_bytes: u64) -> StoreResult<()> {
        let name = name.to_lowercase();
        if !self
            .db
            .lwt(
                "UPDATE domains SET quota_bytes = ? WHERE name = ? IF EXISTS",
                (quota_bytes as i64, name.as_str()),
            )
            .await?
        {
            return Err(StoreError::NotFound(format!("domain {name}")));
        }
        Ok(())
    }

    async fn set_quota(&self, address: &str, quota_bytes: u64) -> StoreResult<()> {
        let address = address.to_lowercase();
        let id = self
            .account_id(&address)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?;
        if !self
            .db
            .lwt(
                "UPDATE accounts SET quota_bytes = ? WHERE id = ? IF EXISTS",
                (quota_bytes.min(i64::MAX as u64) as i64, id.0),
            )
            .await?
        {
            return Err(StoreError::NotFound(format!("account {address}")));
        }
        Ok(())
    }

    async fn create_alias(&self, source: &str, target: &str) -> StoreResult<()> {
        let source = source.to_lowercase();
        let target = target.to_lowercase();
        let domain = domain_of(&source)?.to_string();
        if self.domain(&domain).await?.is_none() {
            return Err(StoreError::NotFound(format!("domain {domain}")));
        }
        if self.account_id(&source).await?.is_some() {
            return Err(StoreError::Conflict(format!("{source} is an account")));
        }
        if !self
            .db
            .lwt(
                "INSERT INTO aliases (source, target, domain) VALUES (?, ?, ?) IF NOT EXISTS",
                (source.as_str(), target.as_str(), domain.as_str()),
            )
            .await?
        {
            return Err(StoreError::Conflict(format!("alias {source} -> {target}")));
        }
        self.db
            .run(
                "INSERT INTO aliases_by_domain_shard (domain, shard, source, target) \
                 VALUES (?, ?, ?, ?)",
                (
                    domain.as_str(),
                    domain_shards::shard_of(&source),
                    source.as_str(),
                    target.as_str(),
                ),
            )
            .await?;
        self.db
            .run(
                "INSERT INTO aliases_by_target (target, source) VALUES (?, ?)",
                (target.as_str(), source.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn delete_alias(&self, source: &str, target: Option<&str>) -> StoreResult<()> {
        let source = source.to_lowercase();
        let target = target.map(str::to_lowercase);
        let targets: Vec<String> = self
            .alias_targets(&source)
            .await?
            .into_iter()
            .filter(|t| target.as_ref().is_none_or(|x| x == t))
            .collect();
        if targets.is_empty() {
            return Err(StoreError::NotFound(format!("alias {source}")));
        }
        for t in targets {
            self.delete_alias_rows(&source, &t).await?;
        }
        Ok(())
    }

    async fn list_aliases(&self, domain: Option<&str>) -> StoreResult<Vec<Alias>> {
        let rows: Vec<(String, String)> = match domain {
            Some(d) => {
                let d = d.to_lowercase();
                let mut rows = Vec::new();
                for shard in 0..domain_shards::SHARDS {
                    let page: Vec<(String, String)> = self
                        .db
                        .all(
                            "SELECT source, target FROM aliases_by_domain_shard \
                             WHERE domain = ? AND shard = ?",
                            (d.as_str(), shard),
                        )
                        .await?;
                    rows.extend(page);
                }
                rows
            }
            None => {
                self.db
                    .all("SELECT source, target FROM aliases", ())
                    .await?
            }
        };
        let mut out: Vec<Alias> = rows
            .into_iter()
            .map(|(source, target)| Alias { source, target })
            .collect();
        out.sort_by(|a, b| (&a.source, &a.target).cmp(&(&b.source, &b.target)));
        Ok(out)
    }

    async fn alias_targets(&self, source: &str) -> StoreResult<Vec<String>> {
        let rows: Vec<(String,)> = self
            .db
            .all(
                "SELECT target FROM aliases WHERE source = ?",
                (source.to_lowercase(),),
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> StoreResult<Mailbox> {
        validate_mailbox_name(name)?;
        if !self.account_exists(account).await? {
            return Err(StoreError::NotFound(format!("account {account}")));
        }
        self.create_mailbox_rows(account, name, special_use).await
    }

    async fn get_mailbox(&self, account: AccountId, name: &str) -> StoreResult<Option<Mailbox>> {
        let row: Option<(i64,)> = self
            .db
            .one(
                "SELECT id FROM mailboxes_by_account WHERE account_id = ? AND name = ?",
                (account.0, name),
            )
            .await?;
        let Some((id,)) = row else { return Ok(None) };
        Ok(self
            .mailbox(MailboxId(id))
            .await?
            .filter(|m| m.account == account && m.name == name))
    }

    async fn list_mailboxes(&self, account: AccountId) -> StoreResult<Vec<Mailbox>> {
        let rows: Vec<(String, i64)> = self
            .db
            .all(
                "SELECT name, id FROM mailboxes_by_account WHERE account_id = ?",
                (account.0,),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (name, id) in rows {
            if let Some(m) = self.mailbox(MailboxId(id)).await? {
                if m.account == account && m.name == name {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn rename_mailbox(
        &self,
        account: AccountId,
        id: MailboxId,
        new_name: &str,
    ) -> StoreResult<()> {
        validate_mailbox_name(new_name)?;
        let mb = self.owned_mailbox(account, id).await?;
        if mb.name == new_name {
            return Ok(());
        }
        if !self
            .db
            .lwt(
                "INSERT INTO mailboxes_by_account (account_id, name, id) VALUES (?, ?, ?) \
                 IF NOT EXISTS",
                (account.0, new_name, id.0),
            )
            .await?
        {
            return Err(StoreError::Conflict(format!("mailbox {new_name}")));
        }
        // Only the name column: writers of the mailbox's counters never touch it.
        self.db
            .run(
                "UPDATE mailboxes SET name = ? WHERE id = ?",
                (new_name, id.0),
            )
            .await?;
        self.db
            .run(
                "DELETE FROM mailboxes_by_account WHERE account_id = ? AND name = ?",
                (account.0, mb.name.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn delete_mailbox(&self, account: AccountId, id: MailboxId) -> StoreResult<Vec<BlobId>> {
        let mb = self.owned_mailbox(account, id).await?;
        self.drop_mailbox(&mb).await
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        quota: QuotaPolicy,
    ) -> StoreResult<Vec<Appended>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // Check accounts, mailboxes and quota before anything is allocated: a refused
        // append allocates nothing.
        let mut per_account: BTreeMap<AccountId, i64> = BTreeMap::new();
        let mut mailboxes: Vec<MailboxId> = Vec::new();
        for m in &messages {
            *per_account.entry(m.account).or_default() += m.size.min(i64::MAX as u64) as i64;
            if !mailboxes.contains(&m.mailbox) {
                self.owned_mailbox(m.account, m.mailbox).await?;
                mailboxes.push(m.mailbox);
            }
        }
        for (account, bytes) in &per_account {
            let acct = self
                .account_by_id(*account)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("account {account}")))?;
            if quota == QuotaPolicy::Enforce && !acct.fits(*bytes as u64) {
                return Err(StoreError::QuotaExceeded(acct.address));
            }
        }
        // Object ids before the leases are taken: the thread lookups are reads of their own
        // and must not eat into a lease. An append that fails later leaves index entries
        // naming a thread no message has yet, which a later message may join: harmless.
        let mut ids = Vec::with_capacity(messages.len());
        for m in &messages {
            ids.push(self.assign_object_ids(m.account, &m.refs).await?);
        }
        let mut ids = ids.into_iter();
        let mut writers = self.alloc.writers(&mailboxes).await?;
        let result = async {
            let mut before = HashMap::new();
            for w in writers.iter() {
                let mb = self
                    .mailbox(w.mailbox())
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("mailbox {}", w.mailbox())))?;
                before.insert(w.mailbox(), (mb, MailboxDelta::default()));
            }
            let mut out = Vec::with_capacity(messages.len());
            let mut added: BTreeMap<AccountId, (i64, i64)> = BTreeMap::new();
            let mut failed = None;
            for m in &messages {
                let idx = writers
                    .iter()
                    .position(|w| w.mailbox() == m.mailbox)
                    .ok_or_else(|| StoreError::NotFound(format!("mailbox {}", m.mailbox)))?;
                let (_, delta) = before
                    .get_mut(&m.mailbox)
                    .ok_or_else(|| StoreError::NotFound(format!("mailbox {}", m.mailbox)))?;
                let fields = StoredFields {
                    blob: m.blob.as_str().to_string(),
                    size: m.size.min(i64::MAX as u64) as i64,
                    internal_date: m.internal_date,
                    flags: m.flags.to_storage(),
                    summary: m.summary.clone(),
                    ids: ids
                        .next()
                        .ok_or_else(|| StoreError::Invalid("object ids".into()))?,
                    account: m.account,
                    trace: m.trace.clone(),
                };
                let count_before = delta.count;
                let r = self.insert_message(&mut writers[idx], &fields, delta).await;
                if delta.count > count_before {
                    let e = added.entry(m.account).or_default();
                    e.0 += fields.size;
                    e.1 += 1;
                }
                match r {
                    Ok(a) => out.push(a),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // Without transactions a failed append would leave the messages before the
            // failure written, and the sender's retry (SMTP answers 451) would store them
            // twice. They are taken out again, so the retry is safe: an append fails as a
            // whole or, if even the removal fails, leaves them with the mailbox row and
            // usage accounting for them.
            if failed.is_some() {
                for a in std::mem::take(&mut out) {
                    let Some(idx) = writers.iter().position(|w| w.mailbox() == a.mailbox) else {
                        continue;
                    };
                    let Some((_, delta)) = before.get_mut(&a.mailbox) else {
                        continue;
                    };
                    let account = messages
                        .iter()
                        .find(|m| m.mailbox == a.mailbox)
                        .map(|m| m.account);
                    match self.remove_message(&mut writers[idx], a.uid, delta).await {
                        Ok(Some((blob, size, _))) => {
                            if let Some(account) = account {
                                let e = added.entry(account).or_default();
                                e.0 -= size;
                                e.1 -= 1;
                            }
                            let held = blob_gc::message_holder(a.mailbox.0, a.uid.0 as i64);
                            let _ = self.release_blobs(&[(blob, held)]).await;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(mailbox = %a.mailbox, uid = a.uid.0, error = %e,
                                "a failed append could not take back a message it wrote");
                            break;
                        }
                    }
                }
            }
            for w in writers.iter_mut() {
                if let Some((mb, delta)) = before.get(&w.mailbox()) {
                    self.apply_delta(w, mb, delta).await?;
                }
            }
            for (account, (bytes, count)) in &added {
                self.add_usage(*account, *bytes, *count).await?;
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(out),
            }
        }
        .await;
        let result = conclude(&mut writers, result);
        for w in writers {
            w.finish().await;
        }
        result
    }

    async fn list_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<MessageMeta>> {
        let Some(mb) = self.mailbox(mailbox).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let last = bucket((mb.uid_next.0 as u64).saturating_sub(1));
        let mut b = bucket(after.0 as u64 + 1);
        while b <= last && out.len() < limit {
            let want = (limit - out.len()).min(i32::MAX as usize) as i32;
            let rows: Vec<MessageRow> = self
                .db
                .all(
                    "SELECT uid, modseq, blob_id, size, internal_date, flags FROM messages \
                     WHERE mailbox_id = ? AND bucket = ? AND uid > ? LIMIT ?",
                    (mailbox.0, b, after.0 as i64, want),
                )
                .await?;
            for r in rows {
                out.push(message_from(mailbox, r)?);
            }
            b += 1;
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn get_message(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<Option<MessageMeta>> {
        self.read_message(mailbox, uid)
            .await?
            .map(|r| message_from(mailbox, r))
            .transpose()
    }

    async fn store_flags(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
    ) -> StoreResult<Vec<MessageMeta>> {
        Ok(self
            .update_flags(mailbox, uids, op, flags, None)
            .await?
            .changed)
    }

    async fn store_flags_unchanged_since(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: ModSeq,
    ) -> StoreResult<ConditionalStore> {
        self.update_flags(mailbox, uids, op, flags, Some(unchanged_since))
            .await
    }

    async fn expunge_deleted(
        &self,
        mailbox: MailboxId,
        only: Option<&[Uid]>,
    ) -> StoreResult<Expunged> {
        let Some(mb) = self.mailbox(mailbox).await? else {
            return Ok(Expunged::default());
        };
        // Every flag write takes this mailbox's lease (see `update_flags`), so flags read
        // while holding it are current until we let go: the same guarantee SQLite's
        // transaction gives, with the lease standing in for the transaction.
        let w = self.alloc.writer(mailbox).await?;
        let candidates = async {
            let rows = self.all_messages(&mb).await?;
            let only: Option<HashSet<Uid>> = only.map(|u| u.iter().copied().collect());
            let mut uids = Vec::new();
            for r in rows {
                let m = message_from(mailbox, r)?;
                if m.flags.contains("\\Deleted") && only.as_ref().is_none_or(|o| o.contains(&m.uid))
                {
                    uids.push(m.uid);
                }
            }
            Ok::<_, StoreError>(uids)
        }
        .await;
        match candidates {
            Ok(uids) => self.expunge_locked(w, mailbox, &uids).await,
            Err(e) => {
                w.finish().await;
                Err(e)
            }
        }
    }
    async fn expunge(&self, mailbox: MailboxId, uids: &[Uid]) -> StoreResult<Expunged> {
        let Some(_) = self.mailbox(mailbox).await? else {
            return Ok(Expunged::default());
        };
        let w = self.alloc.writer(mailbox).await?;
        self.expunge_locked(w, mailbox, uids).await
    }

    async fn changes_since(&self, mailbox: MailboxId, since: ModSeq) -> StoreResult<Vec<Change>> {
        let Some(mb) = self.mailbox(mailbox).await? else {
            return Ok(Vec::new());
        };
        // The log is keyed by MODSEQ, so only buckets at or above `since` are read.
        let mut latest: HashMap<u32, Change> = HashMap::new();
        for b in bucket(since.0)..=bucket(mb.highest_modseq.0) {
            let rows: Vec<(i64, i64, i32)> = self
                .db
                .all(
                    "SELECT modseq, uid, kind FROM changes \
                     WHERE mailbox_id = ? AND bucket = ? AND modseq > ?",
                    (mailbox.0, b, since.0 as i64),
                )
                .await?;
            for (m, u, k) in rows {
                let c = Change {
                    modseq: ModSeq(m as u64),
                    uid: Uid(u as u32),
                    kind: kind_from(k),
                };
                // A superseded entry whose delete was lost: the latest wins.
                match latest.get(&c.uid.0) {
                    Some(prev) if prev.modseq >= c.modseq => {}
                    _ => {
                        latest.insert(c.uid.0, c);
                    }
                }
            }
        }
        let mut out: Vec<Change> = latest.into_values().collect();
        out.sort_by_key(|c| c.modseq);
        Ok(out)
    }

    async fn mailbox_usage(&self, mailbox: MailboxId) -> StoreResult<MailboxUsage> {
        // One read of the mailbox row (STATUS is polled for every folder); a row from
        // before schema v13 without its counts is scanned instead.
        let row: Option<(i64, Option<i64>, Option<i64>)> = self
            .db
            .one(
                "SELECT message_count, unseen_count, total_size FROM mailboxes WHERE id = ?",
                (mailbox.0,),
            )
            .await?;
        match row {
            None => Ok(MailboxUsage::default()),
            Some((messages, Some(unseen), Some(size))) => Ok(MailboxUsage {
                messages: messages.max(0) as u64,
                unseen: unseen.max(0) as u64,
                size: size.max(0) as u64,
            }),
            Some(_) => match self.mailbox(mailbox).await? {
                Some(mb) => self.scan_usage(&mb).await,
                None => Ok(MailboxUsage::default()),
            },
        }
    }

    async fn message_summaries(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Vec<u8>)>> {
        let mut out = Vec::with_capacity(uids.len());
        for &uid in uids {
            if let Some(s) = self.summary_of(mailbox, uid).await? {
                out.push((uid, s));
            }
        }
        Ok(out)
    }

    async fn message_save_dates(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Option<i64>)>> {
        let mut out = Vec::with_capacity(uids.len());
        for &uid in uids {
            let row: Option<(Option<i64>,)> = self
                .db
                .one(
                    "SELECT save_date FROM messages WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                    (mailbox.0, bucket(uid.0 as u64), uid.0 as i64),
                )
                .await?;
            if let Some((d,)) = row {
                out.push((uid, d));
            }
        }
        Ok(out)
    }

    async fn message_object_ids(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, crate::MessageObjectIds)>> {
        let mut out = Vec::with_capacity(uids.len());
        for &uid in uids {
            if let Some(ids) = self.read_object_ids(mailbox, uid).await? {
                out.push((uid, ids));
            }
        }
        Ok(out)
    }

    async fn message_traces(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, String)>> {
        let mut out = Vec::new();
        for &uid in uids {
            let row: Option<(Option<String>,)> = self
                .db
                .one(
                    "SELECT trace FROM messages WHERE mailbox_id = ? AND bucket = ? AND uid = ?",
                    (mailbox.0, bucket(uid.0 as u64), uid.0 as i64),
                )
                .await?;
            if let Some((Some(t),)) = row {
                out.push((uid, t));
            }
        }
        Ok(out)
    }

    async fn find_by_object_id(
        &self,
        account: AccountId,
        mailbox: Option<MailboxId>,
        id: &str,
        limit: usize,
    ) -> StoreResult<Vec<(MailboxId, Uid)>> {
        let Some(kind) = crate::ObjectIdKind::of(id) else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, i64)> = match mailbox {
            Some(mb) => {
                self.db
                    .all(
                        "SELECT mailbox_id, uid FROM object_members \
                         WHERE account_id = ? AND object_id = ? AND mailbox_id = ?",
                        (account.0, id, mb.0),
                    )
                    .await?
            }
            None => {
                self.db
                    .all(
                        "SELECT mailbox_id, uid FROM object_members \
                         WHERE account_id = ? AND object_id = ?",
                        (account.0, id),
                    )
                    .await?
            }
        };
        let mut candidates: Vec<(MailboxId, Uid, bool)> = rows
            .into_iter()
            .map(|(m, u)| (MailboxId(m), Uid(u as u32), true))
            .collect();
        // A message stored before object ids has no entry: its legacy id names it.
        if let Some((m, u)) = crate::object_id::parse_legacy(id) {
            if mailbox.is_none_or(|mb| mb == m) && !candidates.iter().any(|c| (c.0, c.1) == (m, u))
            {
                if let Some(mb) = self.mailbox(m).await? {
                    if mb.account == account {
                        candidates.push((m, u, false));
                    }
                }
            }
        }
        candidates.sort_by_key(|c| (c.0, c.1));
        let mut out = Vec::new();
        for (m, u, indexed) in candidates {
            if out.len() >= limit {
                break;
            }
            let ids = self.read_object_ids(m, u).await?;
            let matches = ids.is_some_and(|ids| match kind {
                crate::ObjectIdKind::Email => ids.email_id == id,
                crate::ObjectIdKind::Thread => ids.thread_id == id,
            });
            if matches {
                out.push((m, u));
            } else if indexed {
                // The message was expunged or moved away (UIDs are never reused, so the
                // entry can never name another message): drop it.
                self.db
                    .run(
                        "DELETE FROM object_members WHERE account_id = ? AND object_id = ? \
                         AND mailbox_id = ? AND uid = ?",
                        (account.0, id, m.0, u.0 as i64),
                    )
                    .await?;
            }
        }
        Ok(out)
    }

    async fn set_message_summary(
        &self,
        mailbox: MailboxId,
        uid: Uid,
        summary: Vec<u8>,
    ) -> StoreResult<()> {
        // IF EXISTS: a plain UPDATE would create a row for an expunged message. A missing
        // message is not an error (SQLite's UPDATE changes nothing either).
        if self
            .db
            .lwt(
                "UPDATE messages SET summarized = true WHERE mailbox_id = ? AND bucket = ? \
                 AND uid = ? IF EXISTS",
                (mailbox.0, bucket(uid.0 as u64), uid.0 as i64),
            )
            .await?
        {
            self.db
                .run(
                    "INSERT INTO message_summaries (mailbox_id, bucket, uid, summary) \
                     VALUES (?, ?, ?, ?)",
                    (mailbox.0, summary_bucket(uid), uid.0 as i64, summary),
                )
                .await?;
        }
        Ok(())
    }

    async fn copy_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<Vec<Copied>> {
        Ok(self.copy(account, source, uids, dest, false).await?.0)
    }

    async fn move_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<(Vec<Copied>, Expunged)> {
        self.copy(account, source, uids, dest, true).await
    }

    async fn index_text(
        &self,
        mailbox: MailboxId,
        entries: Vec<(Uid, crate::MessageText)>,
    ) -> StoreResult<()> {
        self.fts_index(mailbox, entries).await
    }

    async fn search_text(
        &self,
        mailbox: MailboxId,
        fields: &[String],
        needle: &str,
    ) -> StoreResult<Option<crate::TextMatches>> {
        self.fts_search(mailbox, fields, needle).await
    }

    async fn unindexed_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<Uid>> {
        self.fts_unindexed(mailbox, after, limit).await
    }

    async fn subscribe(&self, account: AccountId, name: &str) -> StoreResult<()> {
        validate_mailbox_name(name)?;
        self.db
            .run(
                "INSERT INTO subscriptions (account_id, name) VALUES (?, ?)",
                (account.0, name),
            )
            .await?;
        Ok(())
    }

    async fn unsubscribe(&self, account: AccountId, name: &str) -> StoreResult<()> {
        self.db
            .run(
                "DELETE FROM subscriptions WHERE account_id = ? AND name = ?",
                (account.0, name),
            )
            .await?;
        Ok(())
    }

    async fn subscriptions(&self, account: AccountId) -> StoreResult<Vec<String>> {
        let rows: Vec<(String,)> = self
            .db
            .all(
                "SELECT name FROM subscriptions WHERE account_id = ?",
                (account.0,),
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn orphaned_blobs(
        &self,
        older_than: i64,
        limit: usize,
    ) -> StoreResult<super::OrphanPage> {
        let mut sweep = self.sweep.lock().await;
        if sweep.committed.is_none() {
            let row: Option<(Option<i64>,)> = self
                .db
                .one("SELECT bucket FROM gc_cursor WHERE id = 0", ())
                .await?;
            // No cursor (a keyspace migrated by hand): from a week back; older candidates
            // are in `blob_orphans` too and are kept, never lost.
            let start = row
                .and_then(|r| r.0)
                .unwrap_or_else(|| blob_gc::bucket_of(now_secs() - 7 * 86_400));
            sweep.committed = Some(blob_gc::Position::at(start));
        }
        if sweep.listed || sweep.pos.is_none() {
            // A listing not followed by `orphans_swept` (the sweep failed part-way) is
            // listed again.
            sweep.pos = sweep.committed.clone();
            sweep.finished.clear();
        }
        sweep.listed = true;
        let last = blob_gc::last_bucket(older_than, now_secs());
        let mut pos = sweep.pos.clone().expect("set above");
        let mut out = Vec::new();
        let mut scanned = 0;
        while pos.bucket <= last && out.len() < limit && scanned < blob_gc::SCAN_PER_PAGE {
            let want = (blob_gc::SCAN_PER_PAGE - scanned).min(limit.max(1) * 4) as i32;
            let rows: Vec<(String,)> = self
                .db
                .all(
                    "SELECT blob_id FROM blob_candidates WHERE bucket = ? AND shard = ? \
                     AND blob_id > ? LIMIT ?",
                    (pos.bucket, pos.shard, pos.after.as_str(), want),
                )
                .await?;
            scanned += rows.len();
            let through = rows.len() < want as usize;
            // The reference checks of a page run side by side: most candidates are pins of
            // bodies a message took, each one read.
            let checks = futures::stream::iter(rows.into_iter().map(|(b,)| async move {
                let referenced = self.blob_referenced(&b).await;
                (b, referenced)
            }))
            .buffered(32)
            .collect::<Vec<_>>()
            .await;
            for (b, referenced) in checks {
                if !referenced? {
                    if let Some(id) = BlobId::parse(&b) {
                        out.push(id);
                    }
                }
                pos.after = b;
            }
            if through {
                sweep.finished.push((pos.bucket, pos.shard));
                pos = pos.next_partition();
            }
        }
        let more = pos.bucket <= last;
        sweep.pos = Some(pos);
        Ok(super::OrphanPage { blobs: out, more })
    }

    async fn orphans_swept(&self) -> StoreResult<()> {
        let mut sweep = self.sweep.lock().await;
        if !sweep.listed {
            return Ok(());
        }
        // Every blob listed was claimed or seen referenced: the partitions read through go
        // (one partition tombstone each), and the cursor moves to the first bucket not
        // read through.
        for (bucket, shard) in std::mem::take(&mut sweep.finished) {
            self.db
                .run(
                    "DELETE FROM blob_candidates WHERE bucket = ? AND shard = ?",
                    (bucket, shard),
                )
                .await?;
        }
        let pos = sweep.pos.clone();
        if let Some(p) = &pos {
            if sweep.committed.as_ref().is_none_or(|c| c.bucket < p.bucket) {
                self.db
                    .run("UPDATE gc_cursor SET bucket = ? WHERE id = 0", (p.bucket,))
                    .await?;
            }
        }
        sweep.committed = pos;
        sweep.listed = false;
        Ok(())
    }

    /// Without transactions, the claim is ordered against writers like Dekker's
    /// algorithm: the sweep first records its claim (an LWT), then reads references and
    /// pins; a writer first writes its pin, then reads the claim serially (`pin_blob`,
    /// `take_blob`). With QUORUM writes and reads one of the two always sees the other, so
    /// either the sweep stands down or the writer is refused and retries after the
    /// deletion.
    async fn claim_orphan(&self, id: &BlobId, older_than: i64) -> StoreResult<bool> {
        let blob = id.as_str();
        let mut record = self
            .db
            .one::<(Option<i64>, Option<i64>), _>(ORPHAN_READ, (blob,))
            .await?;
        if record.is_none() {
            // A blob from the log with no orphan record: stored and never referenced (a
            // delivery that failed after its put). It becomes an orphan as of the grace
            // period's start, so the claim below applies the same rules to it; a writer
            // that pins it meanwhile makes the claim stand down.
            if self.blob_referenced(blob).await? {
                return Ok(false);
            }
            self.db
                .lwt(
                    "INSERT INTO blob_orphans (blob_id, since) VALUES (?, ?) IF NOT EXISTS",
                    (blob, older_than - 1),
                )
                .await?;
            record = self
                .db
                .one::<(Option<i64>, Option<i64>), _>(ORPHAN_READ, (blob,))
                .await?;
        }
        let Some((Some(since), _)) = record else {
            return Ok(false);
        };
        if since >= older_than {
            return Ok(false);
        }
        let token = now_secs();
        // IF since = ?: a blob orphaned again meanwhile (referenced, released) starts a
        // new grace period and is not ours to claim.
        if !self
            .db
            .lwt(
                "UPDATE blob_orphans SET claimed = ? WHERE blob_id = ? IF since = ?",
                (token, blob, since),
            )
            .await?
        {
            return Ok(false);
        }
        let referenced = self.blob_referenced(blob).await?;
        let pin: Option<(Option<i64>,)> = self
            .db
            .one("SELECT at FROM blob_pins WHERE blob_id = ?", (blob,))
            .await?;
        let pinned = pin.and_then(|p| p.0).is_some_and(|at| at >= older_than);
        if referenced {
            self.db
                .lwt(
                    "DELETE FROM blob_orphans WHERE blob_id = ? IF claimed = ?",
                    (blob, token),
                )
                .await?;
            return Ok(false);
        }
        if pinned {
            self.db
                .lwt(
                    "UPDATE blob_orphans SET claimed = null WHERE blob_id = ? IF claimed = ?",
                    (blob, token),
                )
                .await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn finish_orphan(&self, id: &BlobId) -> StoreResult<()> {
        self.db
            .lwt(
                "DELETE FROM blob_orphans WHERE blob_id = ? IF claimed != null",
                (id.as_str(),),
            )
            .await?;
        Ok(())
    }

    async fn pin_blob(&self, id: &BlobId) -> StoreResult<()> {
        let blob = id.as_str();
        let now = now_secs();
        self.db
            .run(
                "INSERT INTO blob_pins (blob_id, at) VALUES (?, ?) USING TTL ?",
                (blob, now, PIN_TTL_SECS),
            )
            .await?;
        // The pending record: if no message ever takes the blob, the sweep finds it here.
        self.log_candidate(blob, now).await?;
        let orphan: Option<(Option<i64>, Option<i64>)> = self.db.one(ORPHAN_READ, (blob,)).await?;
        if orphan.and_then(|o| o.1).is_some() {
            return Err(StoreError::Unavailable(format!(
                "blob {blob} is being deleted by the orphan sweep; try again"
            )));
        }
        Ok(())
    }

    async fn create_app_password(
        &self,
        account: AccountId,
        new: crate::NewAppPassword,
    ) -> StoreResult<crate::AppPassword> {
        if !self.account_exists(account).await? {
            return Err(StoreError::NotFound(format!("account {account}")));
        }
        let id = self.next_id("app_password").await?;
        if !self
            .db
            .lwt(
                "INSERT INTO app_passwords (account_id, name, id, tag, hash, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                (
                    account.0,
                    new.name.as_str(),
                    id,
                    new.tag.as_str(),
                    new.hash.as_str(),
                    new.created_at,
                ),
            )
            .await?
        {
            return Err(StoreError::Conflict(format!("app password {}", new.name)));
        }
        if !self
            .db
            .lwt(
                "INSERT INTO app_password_tags (account_id, tag, name) VALUES (?, ?, ?) \
                 IF NOT EXISTS",
                (account.0, new.tag.as_str(), new.name.as_str()),
            )
            .await?
        {
            // Undone with an LWT too: the row was written by Paxos, whose timestamps a
            // plain delete might not order after.
            self.db
                .lwt(
                    "DELETE FROM app_passwords WHERE account_id = ? AND name = ? IF EXISTS",
                    (account.0, new.name.as_str()),
                )
                .await?;
            return Err(StoreError::Conflict(format!(
                "app password tag of {}",
                new.name
            )));
        }
        self.db
            .run(
                "INSERT INTO app_password_ids (id, account_id, name) VALUES (?, ?, ?)",
                (id, account.0, new.name.as_str()),
            )
            .await?;
        Ok(crate::AppPassword {
            id: crate::AppPasswordId(id),
            account,
            name: new.name,
            tag: new.tag,
            hash: new.hash,
            created_at: new.created_at,
            last_used: None,
        })
    }

    async fn list_app_passwords(&self, account: AccountId) -> StoreResult<Vec<crate::AppPassword>> {
        let rows: Vec<AppPasswordRow> = self
            .db
            .all(
                "SELECT id, name, tag, hash, created_at, last_used FROM app_passwords \
                 WHERE account_id = ?",
                (account.0,),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| app_password_from(account, r))
            .collect())
    }

    async fn find_app_password(
        &self,
        account: AccountId,
        tag: &str,
    ) -> StoreResult<Option<crate::AppPassword>> {
        let name: Option<(String,)> = self
            .db
            .one(
                "SELECT name FROM app_password_tags WHERE account_id = ? AND tag = ?",
                (account.0, tag),
            )
            .await?;
        let Some((name,)) = name else { return Ok(None) };
        let row: Option<AppPasswordRow> = self
            .db
            .one(
                "SELECT id, name, tag, hash, created_at, last_used FROM app_passwords \
                 WHERE account_id = ? AND name = ?",
                (account.0, name.as_str()),
            )
            .await?;
        Ok(row
            .map(|r| app_password_from(account, r))
            .filter(|p| p.tag == tag))
    }

    async fn get_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<Option<crate::Datum>> {
        let row: Option<(Vec<u8>, i64, Option<i64>)> = self
            .db
            .one(
                "SELECT value, version, expires_at FROM records \
                 WHERE scope = ? AND kind = ? AND key = ?",
                (scope.code(), kind, key),
            )
            .await?;
        let now = now_secs();
        Ok(row.filter(|(_, _, exp)| exp.is_none_or(|e| e > now)).map(
            |(value, version, expires_at)| crate::Datum {
                value,
                version: version as u64,
                expires_at,
            },
        ))
    }

    async fn put_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
        value: Vec<u8>,
        expires_at: Option<i64>,
        expect: crate::Expect,
    ) -> StoreResult<u64> {
        crate::data::validate(kind, key, value.len())?;
        // TTL 0 is "no expiry" in CQL; an expiry already past still gets one second.
        let ttl: i32 = expires_at
            .map(|e| (e - now_secs()).clamp(1, i64::from(i32::MAX)) as i32)
            .unwrap_or(0);
        // Every write is a compare-and-set on the version read serially: two writers
        // never both win, and `Any` retries the race it lost a few times.
        for _ in 0..8 {
            let current: Option<(i64, Option<i64>)> = self
                .db
                .one(RECORD_VERSION_READ, (scope.code(), kind, key))
                .await?;
            let now = now_secs();
            let current = current.filter(|(_, exp)| exp.is_none_or(|e| e > now));
            let holds = match (expect, current) {
                (crate::Expect::Any, _) => true,
                (crate::Expect::Absent, c) => c.is_none(),
                (crate::Expect::Version(v), Some((c, _))) => c as u64 == v,
                (crate::Expect::Version(_), None) => false,
            };
            if !holds {
                return Err(StoreError::Conflict(format!(
                    "record {kind}/{key}: expected {expect:?}, found {current:?}"
                )));
            }
            let applied = match current {
                None => {
                    // An expired row may still be there when its TTL and `expires_at`
                    // disagree by a second: drop it first.
                    self.db
                        .run(
                            "DELETE FROM records WHERE scope = ? AND kind = ? AND key = ? \
                             IF EXISTS",
                            (scope.code(), kind, key),
                        )
                        .await
                        .ok();
                    self.db
                        .lwt(
                            "INSERT INTO records (scope, kind, key, value, version, expires_at) \
                             VALUES (?, ?, ?, ?, 1, ?) IF NOT EXISTS USING TTL ?",
                            (scope.code(), kind, key, value.as_slice(), expires_at, ttl),
                        )
                        .await?
                }
                Some((v, _)) => {
                    self.db
                        .lwt(
                            "UPDATE records USING TTL ? SET value = ?, version = ?, \
                             expires_at = ? WHERE scope = ? AND kind = ? AND key = ? \
                             IF version = ?",
                            (
                                ttl,
                                value.as_slice(),
                                v + 1,
                                expires_at,
                                scope.code(),
                                kind,
                                key,
                                v,
                            ),
                        )
                        .await?
                }
            };
            if applied {
                return Ok(current.map(|(v, _)| v as u64 + 1).unwrap_or(1));
            }
            if expect != crate::Expect::Any {
                return Err(StoreError::Conflict(format!(
                    "record {kind}/{key}: changed by another writer"
                )));
            }
        }
        Err(StoreError::Unavailable(format!(
            "record {kind}/{key}: too many concurrent writers"
        )))
    }

    async fn delete_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<bool> {
        let there = self.get_data(scope, kind, key).await?.is_some();
        self.db
            .run(
                "DELETE FROM records WHERE scope = ? AND kind = ? AND key = ?",
                (scope.code(), kind, key),
            )
            .await?;
        Ok(there)
    }

    async fn list_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, crate::Datum)>> {
        type Row = (String, Vec<u8>, i64, Option<i64>);
        let rows: Vec<Row> = self
            .db
            .all(
                "SELECT key, value, version, expires_at FROM records \
                 WHERE scope = ? AND kind = ?",
                (scope.code(), kind),
            )
            .await?;
        let now = now_secs();
        Ok(rows
            .into_iter()
            .filter(|(_, _, _, exp)| exp.is_none_or(|e| e > now))
            .take(limit)
            .map(|(key, value, version, expires_at)| {
                (
                    key,
                    crate::Datum {
                        value,
                        version: version as u64,
                        expires_at,
                    },
                )
            })
            .collect())
    }

    async fn add_dkim_key(&self, key: crate::DkimKey) -> StoreResult<()> {
        let applied = self
            .db
            .lwt(
                "INSERT INTO dkim_keys (domain, selector, algorithm, private_der, state, \
                 created_at, state_since) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                (
                    key.domain.as_str(),
                    key.selector.as_str(),
                    key.algorithm.as_str(),
                    key.private_der.as_slice(),
                    key.state.as_str(),
                    key.created_at,
                    key.state_since,
                ),
            )
            .await?;
        if !applied {
            return Err(StoreError::Conflict(format!(
                "DKIM selector {} of {}",
                key.selector, key.domain
            )));
        }
        Ok(())
    }

    async fn dkim_keys(&self, domain: &str) -> StoreResult<Vec<crate::DkimKey>> {
        type Row = (String, String, Vec<u8>, String, i64, i64);
        let rows: Vec<Row> = self
            .db
            .all(
                "SELECT selector, algorithm, private_der, state, created_at, state_since \
                 FROM dkim_keys WHERE domain = ?",
                (domain,),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (selector, algorithm, private_der, state, created_at, state_since) in rows {
            out.push(crate::DkimKey {
                domain: domain.to_string(),
                algorithm: crate::DkimAlgorithm::parse(&algorithm).ok_or_else(|| {
                    StoreError::Corrupt(format!("DKIM key {selector}: algorithm {algorithm:?}"))
                })?,
                state: crate::DkimKeyState::parse(&state).ok_or_else(|| {
                    StoreError::Corrupt(format!("DKIM key {selector}: state {state:?}"))
                })?,
                selector,
                private_der,
                created_at,
                state_since,
            });
        }
        out.sort_by(|a, b| (a.created_at, &a.selector).cmp(&(b.created_at, &b.selector)));
        Ok(out)
    }

    async fn set_dkim_key_state(
        &self,
        domain: &str,
        selector: &str,
        state: crate::DkimKeyState,
        at: i64,
    ) -> StoreResult<()> {
        let applied = self
            .db
            .lwt(
                "UPDATE dkim_keys SET state = ?, state_since = ? WHERE domain = ? AND selector = ? \
                 IF EXISTS",
                (state.as_str(), at, domain, selector),
            )
            .await?;
        if !applied {
            return Err(StoreError::NotFound(format!(
                "DKIM selector {selector} of {domain}"
            )));
        }
        Ok(())
    }

    async fn delete_dkim_key(&self, domain: &str, selector: &str) -> StoreResult<()> {
        let applied = self
            .db
            .lwt(
                "DELETE FROM dkim_keys WHERE domain = ? AND selector = ? IF EXISTS",
                (domain, selector),
            )
            .await?;
        if !applied {
            return Err(StoreError::NotFound(format!(
                "DKIM selector {selector} of {domain}"
            )));
        }
        Ok(())
    }

    async fn revoke_app_password(&self, account: AccountId, name: &str) -> StoreResult<()> {
        let row: Option<AppPasswordRow> = self
            .db
            .one(
                "SELECT id, name, tag, hash, created_at, last_used FROM app_passwords \
                 WHERE account_id = ? AND name = ?",
                (account.0, name),
            )
            .await?;
        let p = row
            .map(|r| app_password_from(account, r))
            .ok_or_else(|| StoreError::NotFound(format!("app password {name}")))?;
        self.db
            .run(
                "DELETE FROM app_passwords WHERE account_id = ? AND name = ?",
                (account.0, name),
            )
            .await?;
        self.db
            .run(
                "DELETE FROM app_password_tags WHERE account_id = ? AND tag = ?",
                (account.0, p.tag.as_str()),
            )
            .await?;
        self.db
            .run("DELETE FROM app_password_ids WHERE id = ?", (p.id.0,))
            .await?;
        Ok(())
    }

    async fn touch_app_password(&self, id: crate::AppPasswordId, at: i64) -> StoreResult<()> {
        let row: Option<(i64, String)> = self
            .db
            .one(
                "SELECT account_id, name FROM app_password_ids WHERE id = ?",
                (id.0,),
            )
            .await?;
        let Some((account, name)) = row else {
            return Ok(());
        };
        // IF EXISTS: a revoked password must not come back as a row with only last_used.
        self.db
            .lwt(
                "UPDATE app_passwords SET last_used = ? WHERE account_id = ? AND name = ? \
                 IF EXISTS",
                (at, account, name.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn set_totp_secret(
        &self,
        account: AccountId,
        secret: Option<crate::TotpSecret>,
    ) -> StoreResult<()> {
        if !self.account_exists(account).await? {
            return Err(StoreError::NotFound(format!("account {account}")));
        }
        match secret {
            Some(t) => {
                self.db
                    .run(
                        "INSERT INTO totp_secrets (account_id, secret, created_at) \
                         VALUES (?, ?, ?)",
                        (account.0, t.secret, t.created_at),
                    )
                    .await?
            }
            None => {
                self.db
                    .run(
                        "DELETE FROM totp_secrets WHERE account_id = ?",
                        (account.0,),
                    )
                    .await?
            }
        };
        Ok(())
    }

    async fn totp_secret(&self, account: AccountId) -> StoreResult<Option<crate::TotpSecret>> {
        let row: Option<(Vec<u8>, i64)> = self
            .db
            .one(
                "SELECT secret, created_at FROM totp_secrets WHERE account_id = ?",
                (account.0,),
            )
            .await?;
        Ok(row.map(|(secret, created_at)| crate::TotpSecret { secret, created_at }))
    }

    /// A serial read and an LWT on the value read (`IF last_step = ?`, null included),
    /// retried a few times under contention: two logins with the same code cannot both win.
    async fn claim_recent(&self, mailbox: MailboxId, up_to: Uid) -> StoreResult<Uid> {
        if self.mailbox(mailbox).await?.is_none() {
            return Err(StoreError::NotFound(format!("mailbox {mailbox}")));
        }
        let up_to = i64::from(up_to.0);
        let as_uid = |v: i64| Uid(u32::try_from(v.max(0)).unwrap_or(u32::MAX));
        for _ in 0..8 {
            let row: Option<(Option<i64>,)> = self.db.one(RECENT_READ, (mailbox.0,)).await?;
            let old = row.and_then(|r| r.0);
            let current = old.unwrap_or(0);
            // Nothing to claim: answering with the watermark read is safe even if another
            // claim raised it since, because the caller then finds no UID in (current,
            // up_to].
            if up_to <= current {
                return Ok(as_uid(current));
            }
            let won = match old {
                None => self
                    .db
                    .lwt(
                        "INSERT INTO recent_marks (mailbox_id, uid) VALUES (?, ?) IF NOT EXISTS",
                        (mailbox.0, up_to),
                    )
                    .await?,
                Some(o) => {
                    self.db
                        .lwt(
                            "UPDATE recent_marks SET uid = ? WHERE mailbox_id = ? IF uid = ?",
                            (up_to, mailbox.0, o),
                        )
                        .await?
                }
            };
            if won {
                return Ok(as_uid(current));
            }
        }
        Err(StoreError::Unavailable(format!(
            "mailbox {mailbox}: recent watermark contended"
        )))
    }

    async fn accept_totp_step(&self, account: AccountId, step: u64) -> StoreResult<bool> {
        let step = i64::try_from(step)
            .map_err(|_| StoreError::Invalid(format!("TOTP step {step} out of range")))?;
        for _ in 0..5 {
            let row: Option<(Option<Vec<u8>>, Option<i64>)> =
                self.db.one(TOTP_STEP_READ, (account.0,)).await?;
            let Some((Some(_), last)) = row else {
                return Ok(false);
            };
            if last.is_some_and(|l| l >= step) {
                return Ok(false);
            }
            if self
                .db
                .lwt(
                    "UPDATE totp_secrets SET last_step = ? WHERE account_id = ? IF last_step = ?",
                    (step, account.0, last),
                )
                .await?
            {
                return Ok(true);
            }
        }
        Err(StoreError::Unavailable(format!(
            "account {account}: TOTP step contended"
        )))
    }

    async fn grant_sender(&self, account: AccountId, address: &str) -> StoreResult<()> {
        let address = address.to_lowercase();
        if address.is_empty() || !address.contains('@') || address.len() > 255 {
            return Err(StoreError::Invalid(format!(
                "'{address}' is neither local@domain nor @domain"
            )));
        }
        if !self.account_exists(account).await? {
            return Err(StoreError::NotFound(format!("account {account}")));
        }
        self.db
            .run(
                "INSERT INTO sender_grants (account_id, address) VALUES (?, ?)",
                (account.0, address.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn revoke_sender(&self, account: AccountId, address: &str) -> StoreResult<()> {
        let address = address.to_lowercase();
        let row: Option<(String,)> = self
            .db
            .one(
                "SELECT address FROM sender_grants WHERE account_id = ? AND address = ?",
                (account.0, address.as_str()),
            )
            .await?;
        if row.is_none() {
            return Err(StoreError::NotFound(format!("sender grant {address}")));
        }
        self.db
            .run(
                "DELETE FROM sender_grants WHERE account_id = ? AND address = ?",
                (account.0, address.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn sender_grants(&self, account: AccountId) -> StoreResult<Vec<String>> {
        let rows: Vec<(String,)> = self
            .db
            .all(
                "SELECT address FROM sender_grants WHERE account_id = ?",
                (account.0,),
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn enqueue_outbound(
        &self,
        msg: crate::NewOutbound,
    ) -> StoreResult<crate::OutboundMessage> {
        if msg.recipients.is_empty() {
            return Err(StoreError::Invalid(
                "a queued message needs a recipient".into(),
            ));
        }
        let mut seen = HashSet::new();
        for r in &msg.recipients {
            if !seen.insert(r.address.as_str()) {
                return Err(StoreError::Invalid(format!(
                    "recipient {} listed twice",
                    r.address
                )));
            }
        }
        let id = self.next_id("outbound").await?;
        // The blob reference first: a crash after it leaks a reference (the blob is kept),
        // never a queue entry whose blob the sweep could delete.
        self.take_blob(msg.blob.as_str(), &blob_gc::queue_holder(id))
            .await?;
        let now = now_secs();
        for (seq, r) in msg.recipients.iter().enumerate() {
            let slot = RcptSlot {
                seq: seq as i32,
                due_bucket: None,
            };
            let due = Self::plan_due(crate::QueueId(id), slot, None, Some(msg.created_at), now);
            self.db
                .run(
                    "INSERT INTO outbound_rcpts (queue_id, seq, address, state, attempts, \
                     next_attempt, notify, orcpt, due_bucket) VALUES (?, ?, ?, 0, 0, ?, ?, ?, ?)",
                    (
                        id,
                        seq as i32,
                        r.address.as_str(),
                        msg.created_at,
                        r.notify.as_deref(),
                        r.orcpt.as_deref(),
                        due.bucket,
                    ),
                )
                .await?;
            self.apply_due(due).await?;
        }
        // The head row last: an entry is visible only once complete.
        self.db
            .run(
                "INSERT INTO outbound (id, blob_id, size, sender, account_id, envid, ret, \
                 created_at, trace, fence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    id,
                    msg.blob.as_str(),
                    msg.size.min(i64::MAX as u64) as i64,
                    msg.sender.as_str(),
                    msg.account.map(|a| a.0),
                    msg.envid.as_deref(),
                    msg.ret.map(|r| r.as_str()),
                    msg.created_at,
                    msg.trace.as_deref(),
                ),
            )
            .await?;
        self.db
            .run(
                "INSERT INTO outbound_ids (shard, id) VALUES (?, ?)",
                (due_index::shard_of(id), id),
            )
            .await?;
        Ok(crate::OutboundMessage {
            id: crate::QueueId(id),
            blob: msg.blob,
            size: msg.size,
            sender: msg.sender,
            account: msg.account,
            envid: msg.envid,
            ret: msg.ret,
            created_at: msg.created_at,
            trace: msg.trace,
            recipients: msg
                .recipients
                .into_iter()
                .map(|r| crate::OutboundRecipient {
                    address: r.address,
                    state: crate::RecipientState::Queued,
                    attempts: 0,
                    next_attempt: msg.created_at,
                    last_error: None,
                    notify: r.notify,
                    orcpt: r.orcpt,
                    delay_warned: false,
                })
                .collect(),
            version: 0,
        })
    }

    async fn get_outbound(
        &self,
        id: crate::QueueId,
    ) -> StoreResult<Option<crate::OutboundMessage>> {
        self.load_outbound(id).await
    }

    async fn list_outbound(
        &self,
        after: crate::QueueId,
        limit: usize,
    ) -> StoreResult<Vec<crate::OutboundMessage>> {
        // Every shard's next ids, merged: the first `limit` of the union are the first
        // `limit` of some shards' first `limit` each.
        let want = limit.min(i32::MAX as usize) as i32;
        let mut ids = Vec::new();
        for shard in 0..due_index::QUEUE_SHARDS as i32 {
            let page: Vec<(i64,)> = self
                .db
                .all(
                    "SELECT id FROM outbound_ids WHERE shard = ? AND id > ? LIMIT ?",
                    (shard, after.0, want),
                )
                .await?;
            ids.extend(page.into_iter().map(|r| r.0));
        }
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(m) = self.load_outbound(crate::QueueId(id)).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    async fn update_outbound_recipient(
        &self,
        id: crate::QueueId,
        address: &str,
        update: crate::RecipientUpdate,
    ) -> StoreResult<()> {
        let not_found = || StoreError::NotFound(format!("recipient {address} of queue entry {id}"));
        if !self.outbound_exists(id).await? {
            return Err(not_found());
        }
        self.check_fence(id, update.fence).await?;
        if update.fence.is_none() {
            self.bump_version(id).await?;
        }
        let (slot, old) = self
            .load_recipients(id)
            .await?
            .into_iter()
            .find(|(_, r)| r.address == address)
            .ok_or_else(not_found)?;
        let was = (old.state == crate::RecipientState::Queued).then_some(old.next_attempt);
        let next = (update.state == crate::RecipientState::Queued).then_some(update.next_attempt);
        let due = Self::plan_due(id, slot, was, next, now_secs());
        // The new due row before the recipient row that points at it.
        let bucket = due.bucket;
        self.apply_due(due).await?;
        // Read-modify-write of `attempts`: one delivery worker holds the entry's lease at a
        // time, so there is no concurrent writer to lose an increment to.
        self.db
            .run(
                "UPDATE outbound_rcpts SET state = ?, attempts = ?, next_attempt = ?, \
                 last_error = ?, delay_warned = ?, due_bucket = ? WHERE queue_id = ? AND seq = ?",
                (
                    state_code(update.state),
                    (old.attempts as i32).saturating_add(1),
                    update.next_attempt,
                    update.last_error.as_deref(),
                    old.delay_warned || update.delay_warned,
                    bucket,
                    id.0,
                    slot.seq,
                ),
            )
            .await?;
        if update.state != crate::RecipientState::Queued {
            self.db
                .run(
                    "UPDATE outbound_rcpts SET final_state = ? WHERE queue_id = ? AND seq = ?",
                    (state_code(update.state), id.0, slot.seq),
                )
                .await?;
        }
        Ok(())
    }

    async fn claim_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        seen: u64,
        claims: Vec<(String, i64)>,
    ) -> StoreResult<u64> {
        if !self.outbound_exists(id).await? {
            return Err(StoreError::NotFound(format!("queue entry {id}")));
        }
        let version = self.check_claim(id, fence, seen).await?;
        let current = self.load_recipients(id).await?;
        let now = now_secs();
        let mut stmts = Vec::new();
        for (address, at) in &claims {
            let (slot, old) = current
                .iter()
                .find(|(_, r)| &r.address == address)
                .ok_or_else(|| {
                    StoreError::NotFound(format!("recipient {address} of queue entry {id}"))
                })?;
            if old.state != crate::RecipientState::Queued {
                continue;
            }
            let due = Self::plan_due(id, *slot, Some(old.next_attempt), Some(*at), now);
            // Read-modify-write of `attempts` under the entry's lease, as in
            // `update_outbound_recipient`.
            stmts.push((
                "UPDATE outbound_rcpts SET attempts = ?, next_attempt = ?, due_bucket = ? \
                 WHERE queue_id = ? AND seq = ?",
                vec![
                    Some(CqlValue::Int((old.attempts as i32).saturating_add(1))),
                    Some(CqlValue::BigInt(*at)),
                    due.bucket.map(CqlValue::BigInt),
                    Some(CqlValue::BigInt(id.0)),
                    Some(CqlValue::Int(slot.seq)),
                ],
            ));
            stmts.extend(due.stmts);
        }
        self.db.logged_batch(stmts).await?;
        Ok(version)
    }

    async fn record_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        updates: Vec<(String, crate::RecipientUpdate)>,
        dsns: Vec<crate::NewOutbound>,
    ) -> StoreResult<Vec<crate::QueueId>> {
        for d in &dsns {
            if d.recipients.is_empty() {
                return Err(StoreError::Invalid(
                    "a queued message needs a recipient".into(),
                ));
            }
        }
        if !self.outbound_exists(id).await? {
            return Err(StoreError::NotFound(format!("queue entry {id}")));
        }
        // The fence first, as every fenced queue write takes it: an LWT cannot share a
        // logged batch with writes to other partitions.
        self.check_fence(id, fence).await?;
        if fence.is_none() {
            self.bump_version(id).await?;
        }
        let current = self.load_recipients(id).await?;
        let now = now_secs();
        let mut stmts = Vec::new();
        // Every recipient is looked up before anything is written: a missing one fails the
        // whole record with nothing applied.
        for (address, update) in &updates {
            let (slot, old) = current
                .iter()
                .find(|(_, r)| &r.address == address)
                .ok_or_else(|| {
                    StoreError::NotFound(format!("recipient {address} of queue entry {id}"))
                })?;
            let was = (old.state == crate::RecipientState::Queued).then_some(old.next_attempt);
            let next =
                (update.state == crate::RecipientState::Queued).then_some(update.next_attempt);
            let due = Self::plan_due(id, *slot, was, next, now);
            stmts.push((
                "UPDATE outbound_rcpts SET state = ?, next_attempt = ?, last_error = ?, \
                 delay_warned = ?, due_bucket = ? WHERE queue_id = ? AND seq = ?",
                vec![
                    Some(CqlValue::Int(state_code(update.state))),
                    Some(CqlValue::BigInt(update.next_attempt)),
                    update.last_error.clone().map(CqlValue::Text),
                    Some(CqlValue::Boolean(old.delay_warned || update.delay_warned)),
                    due.bucket.map(CqlValue::BigInt),
                    Some(CqlValue::BigInt(id.0)),
                    Some(CqlValue::Int(slot.seq)),
                ],
            ));
            if update.state != crate::RecipientState::Queued {
                stmts.push((
                    "UPDATE outbound_rcpts SET final_state = ? WHERE queue_id = ? AND seq = ?",
                    vec![
                        Some(CqlValue::Int(state_code(update.state))),
                        Some(CqlValue::BigInt(id.0)),
                        Some(CqlValue::Int(slot.seq)),
                    ],
                ));
            }
            stmts.extend(due.stmts);
        }
        let mut ids = Vec::with_capacity(dsns.len());
        for d in &dsns {
            let dsn_id = self.next_id("outbound").await?;
            // Before the batch, as in `enqueue_outbound`: a failure after it leaks a
            // reference (the blob is kept), never an entry whose blob the sweep could take.
            self.take_blob(d.blob.as_str(), &blob_gc::queue_holder(dsn_id))
                .await?;
            Self::entry_rows(dsn_id, d, &mut stmts);
            ids.push(crate::QueueId(dsn_id));
        }
        self.db.logged_batch(stmts).await?;
        Ok(ids)
    }

    async fn delete_outbound(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
    ) -> StoreResult<Vec<BlobId>> {
        self.check_fence(id, fence).await?;
        let head: Option<(String,)> = self
            .db
            .one("SELECT blob_id FROM outbound WHERE id = ?", (id.0,))
            .await?;
        let (blob,) = head.ok_or_else(|| StoreError::NotFound(format!("queue entry {id}")))?;
        // Exactly one deleter releases the blob reference.
        if !self
            .db
            .lwt("DELETE FROM outbound WHERE id = ? IF EXISTS", (id.0,))
            .await?
        {
            return Err(StoreError::NotFound(format!("queue entry {id}")));
        }
        let now = now_secs();
        for (slot, r) in self.load_recipients(id).await? {
            if r.state == crate::RecipientState::Queued {
                self.apply_due(Self::plan_due(id, slot, Some(r.next_attempt), None, now))
                    .await?;
            }
        }
        self.db
            .run("DELETE FROM outbound_rcpts WHERE queue_id = ?", (id.0,))
            .await?;
        self.db
            .run(
                "DELETE FROM outbound_ids WHERE shard = ? AND id = ?",
                (due_index::shard_of(id.0), id.0),
            )
            .await?;
        self.release_blobs(&[(blob, blob_gc::queue_holder(id.0))])
            .await
    }

    fn queue_shards(&self) -> u32 {
        due_index::QUEUE_SHARDS
    }

    async fn due_outbound(
        &self,
        shard: u32,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<crate::QueueId>> {
        if shard >= due_index::QUEUE_SHARDS {
            return Err(StoreError::Invalid(format!("no queue shard {shard}")));
        }
        let shard = shard as i32;
        let cursor = self.queue_cursor(shard).await?;
        // The buckets with rows, from the cursor to the present.
        let listed: Vec<(i64,)> = self
            .db
            .all(
                "SELECT bucket FROM outbound_due_buckets WHERE shard = ? AND bucket >= ? \
                 AND bucket <= ?",
                (shard, cursor, due_index::bucket_of(now)),
            )
            .await?;
        let s = self
            .db
            .stmt(
                "SELECT next_attempt, queue_id FROM outbound_due_by_time \
                 WHERE shard = ? AND bucket = ? AND next_attempt <= ?",
                true,
            )
            .await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        // The first listed bucket that stays in the directory; those before it were read
        // empty and are old enough that no writer adds to them (see `due_index`).
        let mut first_kept = None;
        for (b,) in listed {
            if out.len() >= limit {
                first_kept.get_or_insert(b);
                break;
            }
            StatementCounts::add(&self.db.counts.reads, 1);
            let mut rows = self
                .db
                .session
                .execute_iter(s.clone(), (shard, b, now))
                .await
                .map_err(db_err)?
                .rows_stream::<(i64, i64)>()
                .map_err(row_err)?;
            let mut empty = true;
            // Streamed, so a large backlog is read only as far as `limit` entries need. The
            // first time an id shows up is its oldest due attempt within the bucket.
            while out.len() < limit {
                let Some((_, q)) = rows.try_next().await.map_err(db_err)? else {
                    break;
                };
                empty = false;
                if seen.insert(q) {
                    out.push(crate::QueueId(q));
                }
            }
            if first_kept.is_none() && empty && due_index::may_pass(b, now) {
                self.db
                    .run(
                        "DELETE FROM outbound_due_buckets WHERE shard = ? AND bucket = ?",
                        (shard, b),
                    )
                    .await?;
            } else {
                first_kept.get_or_insert(b);
            }
        }
        let moved = due_index::next_cursor(cursor, first_kept, now);
        if moved > cursor {
            // A plain write: only this shard's lease holder moves it, and a stale value
            // written by one that lost the lease only means rereading a few tombstones.
            self.db
                .run(
                    "UPDATE outbound_cursor SET bucket = ? WHERE shard = ?",
                    (moved, shard),
                )
                .await?;
            self.cursors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(shard, moved);
        }
        Ok(out)
    }

    async fn reschedule_outbound(&self, id: crate::QueueId, at: i64) -> StoreResult<usize> {
        if !self.outbound_exists(id).await? {
            return Err(StoreError::NotFound(format!("queue entry {id}")));
        }
        let mut moved = 0;
        let now = now_secs();
        for (slot, r) in self.load_recipients(id).await? {
            if r.state != crate::RecipientState::Queued {
                continue;
            }
            let due = Self::plan_due(id, slot, Some(r.next_attempt), Some(at), now);
            let bucket = due.bucket;
            self.apply_due(due).await?;
            self.db
                .run(
                    "UPDATE outbound_rcpts SET next_attempt = ?, due_bucket = ? \
                     WHERE queue_id = ? AND seq = ?",
                    (at, bucket, id.0, slot.seq),
                )
                .await?;
            moved += 1;
        }
        Ok(moved)
    }

    // ---- mailbox placeholders, ACLs, metadata ----

    async fn set_mailbox_noselect(
        &self,
        account: AccountId,
        id: MailboxId,
        noselect: bool,
    ) -> StoreResult<Vec<BlobId>> {
        let mb = self.owned_mailbox(account, id).await?;
        // Under the mailbox's lease, like every writer of its messages and counters.
        let mut w = self.alloc.writer(mb.id).await?;
        let result = async {
            let current = self
                .mailbox(mb.id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("mailbox {id}")))?;
            let orphaned = if noselect {
                let o = self.purge_mailbox(&w, &current).await?;
                self.drop_acl_and_metadata(id).await?;
                o
            } else {
                Vec::new()
            };
            // A mailbox made again from a placeholder is a new mailbox: a new UIDVALIDITY.
            let validity = if !noselect && current.noselect {
                (current.uid_validity % 0x7fff_fffe) + 1
            } else {
                current.uid_validity
            };
            let count = if noselect {
                0
            } else {
                current.message_count as i64
            };
            w.check_time()?;
            self.db
                .run(
                    "UPDATE mailboxes SET noselect = ?, message_count = ?, uid_validity = ? \
                     WHERE id = ?",
                    (noselect, count, validity as i64, id.0),
                )
                .await?;
            Ok(orphaned)
        }
        .await;
        let result = conclude(std::slice::from_mut(&mut w), result);
        w.finish().await;
        result
    }

    async fn set_acl(
        &self,
        owner: AccountId,
        mailbox: MailboxId,
        identifier: &str,
        rights: &str,
    ) -> StoreResult<()> {
        self.owned_mailbox(owner, mailbox).await?;
        self.write_acl(owner, mailbox, identifier, rights).await
    }

    async fn get_acl(&self, mailbox: MailboxId) -> StoreResult<Vec<AclEntry>> {
        let rows: Vec<(String, String)> = self
            .db
            .all(
                "SELECT identifier, rights FROM acl WHERE mailbox_id = ?",
                (mailbox.0,),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(identifier, rights)| AclEntry { identifier, rights })
            .collect())
    }

    async fn shared_with(&self, identifier: &str) -> StoreResult<Vec<SharedMailbox>> {
        let rows: Vec<(i64, i64, String)> = self
            .db
            .all(
                "SELECT owner_id, mailbox_id, rights FROM acl_by_identifier WHERE identifier = ?",
                (identifier,),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(o, m, rights)| SharedMailbox {
                owner: AccountId(o),
                mailbox: MailboxId(m),
                rights,
            })
            .collect())
    }

    async fn get_metadata(&self, scope: MetadataScope) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let mut rows: Vec<(String, Vec<u8>)> = match scope.mailbox {
            Some(m) => {
                self.db
                    .all(
                        "SELECT name, value FROM mailbox_metadata \
                         WHERE mailbox_id = ? AND account_id = ?",
                        (m.0, scope.account.0),
                    )
                    .await?
            }
            None => {
                self.db
                    .all(
                        "SELECT name, value FROM server_metadata WHERE account_id = ?",
                        (scope.account.0,),
                    )
                    .await?
            }
        };
        rows.sort();
        Ok(rows)
    }

    async fn set_metadata(
        &self,
        scope: MetadataScope,
        entries: Vec<(String, Option<Vec<u8>>)>,
        limits: MetadataLimits,
    ) -> StoreResult<()> {
        if let Some(m) = scope.mailbox {
            if self.mailbox(m).await?.is_none() {
                return Err(StoreError::NotFound(format!("mailbox {m}")));
            }
        }
        // The limits are checked against the entries read here: two writers racing in one
        // scope may each pass and together exceed them by one command's entries (bounded,
        // since each command's size is). The entries themselves go in one logged batch.
        let mut current: HashMap<String, usize> = self
            .get_metadata(scope)
            .await?
            .into_iter()
            .map(|(n, v)| {
                let len = n.len() + v.len();
                (n, len)
            })
            .collect();
        for (name, value) in &entries {
            match value {
                Some(v) => current.insert(name.clone(), name.len() + v.len()),
                None => current.remove(name),
            };
        }
        let bytes: usize = current.values().sum();
        if current.len() > limits.max_entries || bytes as u64 > limits.max_bytes {
            return Err(StoreError::QuotaExceeded(format!(
                "metadata: {} entries, {bytes} bytes",
                current.len()
            )));
        }
        let a = Some(CqlValue::BigInt(scope.account.0));
        let mut stmts = Vec::with_capacity(entries.len());
        for (name, value) in entries {
            let n = Some(CqlValue::Text(name));
            let stmt: (&'static str, Vec<Option<CqlValue>>) = match (scope.mailbox, value) {
                (Some(m), Some(v)) => (
                    "INSERT INTO mailbox_metadata (mailbox_id, account_id, name, value) \
                     VALUES (?, ?, ?, ?)",
                    vec![
                        Some(CqlValue::BigInt(m.0)),
                        a.clone(),
                        n,
                        Some(CqlValue::Blob(v)),
                    ],
                ),
                (Some(m), None) => (
                    "DELETE FROM mailbox_metadata WHERE mailbox_id = ? AND account_id = ? \
                     AND name = ?",
                    vec![Some(CqlValue::BigInt(m.0)), a.clone(), n],
                ),
                (None, Some(v)) => (
                    "INSERT INTO server_metadata (account_id, name, value) VALUES (?, ?, ?)",
                    vec![a.clone(), n, Some(CqlValue::Blob(v))],
                ),
                (None, None) => (
                    "DELETE FROM server_metadata WHERE account_id = ? AND name = ?",
                    vec![a.clone(), n],
                ),
            };
            stmts.push(stmt);
        }
        self.db.logged_batch(stmts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_statements_are_rerunnable_and_qualified() {
        // Migrations may run on several nodes at once or be interrupted: every statement
        // must be safe to run again, and must name the keyspace explicitly.
        for stmt in SCHEMA_V1 {
            assert!(stmt.contains("IF NOT EXISTS"), "{stmt}");
            assert!(stmt.contains("{ks}."), "{stmt}");
        }
    }

    /// Issue 15, point 6: a full message bucket stays well under ScyllaDB's large-partition
    /// warning now that summaries live in their own table. The row's cells are those
    /// `insert_message` writes, at their largest usual values; each cell costs its value
    /// plus ScyllaDB's per-cell overhead (timestamp, flags, length: ~16 bytes at most).
    #[test]
    fn message_rows_stay_small() {
        let ids = crate::object_id::legacy_ids(MailboxId(i64::MAX), Uid(u32::MAX));
        let blob = "f".repeat(64);
        let flags = "\\Seen \\Answered \\Flagged $Forwarded $MDNSent Junk";
        let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        const CELL_OVERHEAD: usize = 16;
        let cells: [usize; 12] = [
            8,                   // uid (clustering key)
            8,                   // modseq
            blob.len(),          // blob_id
            8,                   // size
            8,                   // internal_date
            flags.len(),         // flags
            1,                   // summarized
            8,                   // save_date
            ids.email_id.len(),  // email_id
            ids.thread_id.len(), // thread_id
            trace.len(),         // trace
            0,                   // the row marker
        ];
        let row: usize = cells.iter().map(|c| c + CELL_OVERHEAD).sum();
        let bucket_bytes = row << BUCKET_SHIFT;
        assert!(row <= 500, "a message row is {row} bytes");
        assert!(
            bucket_bytes <= 32 << 20,
            "a full message bucket is {} MB",
            bucket_bytes >> 20
        );
        // A summary partition of 1,024 summaries of 10 KB (a message with many parts)
        // stays about as large.
        const { assert!((10 << 10) << SUMMARY_SHIFT <= 16 << 20) };
    }

    #[test]
    fn buckets_split_at_the_documented_size() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(65_535), 0);
        assert_eq!(bucket(65_536), 1);
        assert_eq!(bucket(u32::MAX as u64), 65_535);
    }

    #[test]
    fn codes_round_trip() {
        for k in [
            ChangeKind::Appended,
            ChangeKind::FlagsChanged,
            ChangeKind::Expunged,
        ] {
            assert_eq!(kind_from(kind_code(k)), k);
        }
        for st in [
            crate::RecipientState::Queued,
            crate::RecipientState::Delivered,
            crate::RecipientState::Failed,
        ] {
            assert_eq!(state_from(state_code(st)).ok(), Some(st));
        }
        assert!(state_from(9).is_err());
    }
}
