//! The embedded metadata store: SQLite in WAL mode with group commit.
//!
//! # Why a writer thread
//! SQLite allows one writer at a time and every commit costs an fsync. Rather than letting
//! concurrent SMTP sessions queue on the lock and fsync one by one, every write is sent to a
//! single writer thread, which folds whatever is waiting (up to `group_commit_max`) into one
//! transaction: each write runs inside its own SAVEPOINT, so one failing write rolls back
//! alone, and one COMMIT (one fsync, `synchronous=FULL`) makes them all durable. A caller's
//! future resolves only after that commit. Reads use a small pool of read-only connections,
//! which WAL lets run beside the writer. Other processes (the admin CLI) can open the same
//! file; SQLite's locking and the busy timeout serialise them with the server.

use super::fts_sqlite::{self, IndexJob, MainWrite};
use super::modseq_hint::ModseqHints;
use super::{ConditionalStore, Expunged, MetadataStore, QuotaPolicy};
use crate::private_fs;
use crate::types::*;
use crate::MessageObjectIds;
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Schema version stored in `PRAGMA user_version`; migrations run in order up to it.
const SCHEMA_VERSION: i64 = 19;

const SCHEMA_V1: &str = r#"
CREATE TABLE domains (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    domain_id INTEGER NOT NULL REFERENCES domains(id),
    address TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    quota_bytes INTEGER NOT NULL DEFAULT 0,
    used_bytes INTEGER NOT NULL DEFAULT 0,
    message_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX accounts_domain ON accounts(domain_id);
CREATE TABLE aliases (
    domain_id INTEGER NOT NULL REFERENCES domains(id),
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (source, target)
) WITHOUT ROWID;
CREATE INDEX aliases_domain ON aliases(domain_id);
CREATE TABLE mailboxes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    special_use TEXT,
    uid_validity INTEGER NOT NULL,
    uid_next INTEGER NOT NULL DEFAULT 1,
    highest_modseq INTEGER NOT NULL DEFAULT 1,
    message_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (account_id, name)
);
CREATE TABLE messages (
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    blob_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    internal_date INTEGER NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE TABLE changes (
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX changes_modseq ON changes(mailbox_id, modseq);
CREATE TABLE blobs (
    blob_id TEXT PRIMARY KEY,
    refcount INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE blob_orphans (
    blob_id TEXT PRIMARY KEY,
    since INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// v2: cached message summaries and IMAP subscriptions.
const SCHEMA_V2: &str = r#"
ALTER TABLE messages ADD COLUMN summary BLOB;
CREATE TABLE subscriptions (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
) WITHOUT ROWID;
"#;

/// v3: login credentials (app passwords, TOTP secrets, sender grants) and the outbound
/// queue. Rows of an account go with it (`ON DELETE CASCADE`); a queued message outlives
/// the account that submitted it (`ON DELETE SET NULL`).
const SCHEMA_V3: &str = r#"
CREATE TABLE app_passwords (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used INTEGER,
    UNIQUE (account_id, name),
    UNIQUE (account_id, tag)
);
CREATE TABLE totp_secrets (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    secret BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE sender_grants (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    PRIMARY KEY (account_id, address)
) WITHOUT ROWID;
CREATE TABLE outbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    blob_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    sender TEXT NOT NULL,
    account_id INTEGER REFERENCES accounts(id) ON DELETE SET NULL,
    envid TEXT,
    ret TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX outbound_account ON outbound(account_id);
CREATE TABLE outbound_rcpts (
    queue_id INTEGER NOT NULL REFERENCES outbound(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    address TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_error TEXT,
    notify TEXT,
    orcpt TEXT,
    PRIMARY KEY (queue_id, seq),
    UNIQUE (queue_id, address)
) WITHOUT ROWID;
CREATE INDEX outbound_rcpts_due ON outbound_rcpts(state, next_attempt);
"#;

type Completion = Box<dyn FnOnce(StoreResult<()>) + Send>;
/// A write: runs against the connection inside a savepoint; returns whether it succeeded
/// (false rolls its savepoint back) and what to tell the caller once the commit is known.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

pub struct SqliteMetadataStore {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Stops the checkpointer (after the writer, so the last writes are checkpointed too).
    checkpoints: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// Idle read connections, and the permits that bound how many exist (idle or in use).
    readers: Arc<Mutex<Vec<Connection>>>,
    reader_slots: Arc<tokio::sync::Semaphore>,
    /// Lets `changes_since` answer "nothing" without a query (see [`ModseqHints`]).
    hints: ModseqHints,
    /// The full-text index file (`<path>.fts`) and its writer thread (see `fts_sqlite`).
    index_path: PathBuf,
    index: Mutex<Option<mpsc::Sender<IndexJob>>>,
    index_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Read connections. A read waits for a free one rather than opening another: opening a
/// SQLite connection costs PRAGMAs and a parse of the schema and starts with an empty
/// statement cache. (The IMAP profile of 2026-12-02 found ~40% of the server's CPU in
/// opening, configuring and closing connections, made for reads beyond an idle pool of 8.)
/// More than the cores: a read may wait on the disk.
const MAX_READERS: usize = 8;

/// Prepared statements kept per connection (rusqlite's default is 16; the store has more
/// distinct queries than that, and re-preparing one is a parse of its SQL).
const STATEMENT_CACHE: usize = 128;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn db_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(e.to_string())
        }
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unavailable(format!("sqlite: {e}")),
    }
}

/// Per-connection settings. Besides durability (`synchronous=FULL`), three for speed, none
/// of which changes what is durable:
/// - `mmap_size = 0`: reads copy pages with `pread` rather than through a mapping. In WAL
///   mode a read transaction that starts after any commit resets the connection's page
///   cache and, with a mapping, unmaps the whole file (`pagerBeginReadTransaction` →
///   `sqlite3OsUnfetch`); under the IMAP mix, where commits never stop, every read then
///   paid a `munmap` with its TLB shootdown and page faults to map again. Measured on the
///   mix (`docs/benchmarks.md`): 412 → 334 µs of server CPU per command without the mapping;
/// - `cache_size`: 8 MiB of page cache per connection (the default 2 MB held a fraction
///   of the hot pages of 20 mailboxes);
/// - `temp_store=MEMORY`: the statement journals of the writer's per-job savepoints stay
///   in memory instead of temporary files.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    conn.pragma_update(None, "cache_size", -8192)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// No memory-mapped reads (see [`configure`] for why).
const MMAP_BYTES: i64 = 0;

/// How often the checkpointer copies the write-ahead log into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies the write-ahead log into the database file, on its own thread and connection.
///
/// Why: SQLite's automatic checkpoint runs inside the COMMIT that passes 1000 WAL pages,
/// i.e. on the single writer thread every group commit waits for (6.5% of the server's CPU
/// in the SMTP ingest profile, and a latency spike for the writes of that batch). A
/// PASSIVE checkpoint here never blocks the writer or readers; it copies what no reader
/// still needs, and the writer restarts the log once all of it was copied.
///
/// It also re-checks, each time, whether this process is still the database's only writer
/// (see [`ModseqHints`]).
fn checkpointer(path: PathBuf, hints: ModseqHints, stop: mpsc::Receiver<()>) {
    let conn = match Connection::open(&path).and_then(|c| configure(&c).map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "sqlite checkpointer could not open the database");
            return;
        }
    };
    loop {
        let last = !matches!(
            stop.recv_timeout(CHECKPOINT_EVERY),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "sqlite checkpoint failed");
        }
        hints.check_alone();
        if last {
            return;
        }
    }
}

impl SqliteMetadataStore {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>, group_commit_max: usize) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_fs::create_dir_all(dir)?;
        }
        // Create the file private before SQLite opens it: SQLite gives the `-wal` and
        // `-shm` files the database file's mode, so all three stay 0600.
        match private_fs::create_file(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let index_path = fts_sqlite::index_path(&path);
        let index_created = fts_sqlite::create_index(&index_path)?;
        for file in [&path, &index_path] {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = file.clone().into_os_string();
                p.push(suffix);
                match private_fs::restrict(Path::new(&p), private_fs::FILE_MODE) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let conn = Connection::open(&path).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        configure(&conn).map_err(db_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let version_before: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        migrate(&conn, &index_path)?;
        if index_created && version_before >= 13 {
            let pending: i64 = conn
                .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
                .map_err(db_err)?;
            tracing::warn!(
                index = %index_path.display(),
                messages = pending,
                "the full-text index file was missing: every message is searched directly \
                 until `mailfleet reindex` indexes it again"
            );
            conn.execute_batch(fts_sqlite::RESET_PENDING)
                .map_err(db_err)?;
        }
        // Checkpoints are the checkpointer's (see [`checkpointer`]), not the writer's.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db_err)?;
        let hints = ModseqHints::open(&path)?;
        hints.install(&conn).map_err(db_err)?;
        let (stop_checkpoints, stop_rx) = mpsc::channel::<()>();
        let checkpoint_path = path.clone();
        let checkpoint_hints = hints.clone();
        let checkpoint_thread = std::thread::Builder::new()
            .name("mf-sqlite-ckpt".into())
            .spawn(move || checkpointer(checkpoint_path, checkpoint_hints, stop_rx))
            .map_err(|e| StoreError::Unavailable(format!("checkpoint thread: {e}")))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let max = group_commit_max.max(1);
        let handle = std::thread::Builder::new()
            .name("mf-sqlite-write".into())
            .spawn(move || writer_loop(conn, rx, max))
            .map_err(|e| StoreError::Unavailable(format!("writer thread: {e}")))?;
        let (index_tx, index_thread) = start_index(&path, &index_path, tx.clone())?;
        Ok(Self {
            path,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(handle)),
            checkpoints: Mutex::new(Some((stop_checkpoints, checkpoint_thread))),
            readers: Arc::new(Mutex::new(Vec::new())),
            reader_slots: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
            hints,
            index_path,
            index: Mutex::new(Some(index_tx)),
            index_thread: Mutex::new(Some(index_thread)),
        })
    }

    /// Sends a job to the full-text index thread and waits for its answer.
    async fn index_job(
        &self,
        job: impl FnOnce(oneshot::Sender<StoreResult<()>>) -> IndexJob,
    ) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        {
            let guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
            let sender = guard
                .as_ref()
                .ok_or_else(|| StoreError::Unavailable("metadata store closed".into()))?;
            sender
                .send(job(tx))
                .map_err(|_| StoreError::Unavailable("full-text index writer stopped".into()))?;
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("full-text index writer dropped a job".into()))?
    }

    /// Waits for the index thread to apply the `fts_work` a copy or a move just committed,
    /// so the copies are searchable when the command returns. A failure (logged by the
    /// index thread) leaves them pending, which searches handle: never an error here.
    async fn copied_texts(&self, any: bool) {
        if any {
            let _ = self.index_job(IndexJob::Work).await;
        }
    }

    /// The change log after `since`, and (`with_messages`) each changed message joined in
    /// the same query. Answers from [`ModseqHints`] without a query when nothing changed.
    async fn read_changes(
        &self,
        mailbox: MailboxId,
        since: ModSeq,
        with_messages: bool,
    ) -> StoreResult<Vec<(Change, Option<MessageMeta>)>> {
        if self.hints.nothing_after(mailbox, since) {
            return Ok(Vec::new());
        }
        let hints = self.hints.clone();
        let epoch = hints.epoch();
        let learn = hints.enabled();
        self.read(move |c| {
            // Read before the changes: any change committed after this has raised the
            // bound already (see `ModseqHints`), so the bound learned here is never low.
            // Not read when the bounds are off (another process writes the file).
            let highest: Option<i64> = if !learn {
                None
            } else {
                c.prepare_cached("SELECT highest_modseq FROM mailboxes WHERE id = ?1")
                    .map_err(db_err)?
                    .query_row([mailbox.0], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?
            };
            if let Some(h) = highest {
                hints.learn(mailbox, ModSeq(h.max(0) as u64), epoch);
            }
            let sql = if with_messages {
                "SELECT c.modseq, c.uid, c.kind, m.mailbox_id, m.uid, m.modseq, m.blob_id, \
                 m.size, m.internal_date, m.flags FROM changes c \
                 LEFT JOIN messages m ON c.kind != 2 AND m.mailbox_id = c.mailbox_id \
                 AND m.uid = c.uid \
                 WHERE c.mailbox_id = ?1 AND c.modseq > ?2 ORDER BY c.modseq"
            } else {
                "SELECT modseq, uid, kind FROM changes WHERE mailbox_id = ?1 AND modseq > ?2 \
                 ORDER BY modseq"
            };
            let mut s = c.prepare_cached(sql).map_err(db_err)?;
            let rows = s
                .query_map(params![mailbox.0, since.0 as i64], |r| {
                    let kind = match r.get::<_, i64>(2)? {
                        0 => ChangeKind::Appended,
                        1 => ChangeKind::FlagsChanged,
                        _ => ChangeKind::Expunged,
                    };
                    let change = Change {
                        modseq: ModSeq(r.get::<_, i64>(0)? as u64),
                        uid: Uid(r.get::<_, i64>(1)? as u32),
                        kind,
                    };
                    let msg = if with_messages && r.get_ref(3)? != rusqlite::types::ValueRef::Null {
                        Some(message_row_at(r, 3)?)
                    } else {
                        None
                    };
                    Ok((change, msg))
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    /// Runs `f` in the writer's next group commit.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (tx, rx) = oneshot::channel::<StoreResult<R>>();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |commit| {
                let _ = tx.send(commit.and(result));
            });
            (ok, completion)
        });
        {
            let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let sender = guard
                .as_ref()
                .ok_or_else(|| StoreError::Unavailable("metadata store closed".into()))?;
            sender
                .send(job)
                .map_err(|_| StoreError::Unavailable("metadata writer stopped".into()))?;
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("metadata writer dropped a write".into()))?
    }

    /// Runs `f` on a pooled read connection on the blocking pool.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        // The permit is taken before the blocking task, so waiting reads wait on the
        // runtime, not on blocking-pool threads.
        let permit = self
            .reader_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("metadata store closed".into()))?;
        let pool = self.readers.clone();
        let path = self.path.clone();
        let index_path = self.index_path.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(db_err)?;
                    configure(&c).map_err(db_err)?;
                    c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                    fts_sqlite::attach(&c, &index_path)?;
                    c
                }
            };
            let result = f(&conn);
            // At most MAX_READERS connections exist, so every one goes back.
            pool.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

impl Drop for SqliteMetadataStore {
    fn drop(&mut self) {
        // The index thread first: it finishes what is queued, which may need the writer.
        self.index.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self
            .index_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
        // Closing the channel lets the writer finish what is queued and exit.
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
        if let Some((stop, h)) = self
            .checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            drop(stop);
            let _ = h.join();
        }
    }
}

/// v10: each mailbox's message count, unseen count and total size, kept by triggers on
/// `messages`, so STATUS (and JMAP's Mailbox counts) read one row instead of scanning the
/// mailbox: a cost that grew with the mailbox (a 100,000-message INBOX was a 100,000-row
/// scan per STATUS). Triggers rather than code in each writer so no write path (append,
/// copy, move, store, expunge, delete) can forget them; the `\Seen` test is the one the
/// scan used.
const SCHEMA_MAILBOX_COUNTS: &str = r#"
CREATE TABLE mailbox_counts (
    mailbox_id INTEGER PRIMARY KEY,
    messages INTEGER NOT NULL,
    unseen INTEGER NOT NULL,
    size INTEGER NOT NULL
);
INSERT INTO mailbox_counts (mailbox_id, messages, unseen, size)
    SELECT mailbox_id, COUNT(*),
        SUM(CASE WHEN (' ' || flags || ' ') LIKE '% \Seen %' THEN 0 ELSE 1 END), SUM(size)
    FROM messages GROUP BY mailbox_id;
CREATE TRIGGER mailbox_counts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO mailbox_counts (mailbox_id, messages, unseen, size)
    VALUES (NEW.mailbox_id, 1,
        CASE WHEN (' ' || NEW.flags || ' ') LIKE '% \Seen %' THEN 0 ELSE 1 END, NEW.size)
    ON CONFLICT (mailbox_id) DO UPDATE SET messages = messages + 1,
        unseen = unseen + excluded.unseen, size = size + excluded.size;
END;
CREATE TRIGGER mailbox_counts_delete AFTER DELETE ON messages BEGIN
    UPDATE mailbox_counts SET messages = messages - 1,
        unseen = unseen - (CASE WHEN (' ' || OLD.flags || ' ') LIKE '% \Seen %' THEN 0 ELSE 1 END),
        size = size - OLD.size
    WHERE mailbox_id = OLD.mailbox_id;
END;
CREATE TRIGGER mailbox_counts_update AFTER UPDATE OF flags, size, mailbox_id ON messages BEGIN
    UPDATE mailbox_counts SET messages = messages - 1,
        unseen = unseen - (CASE WHEN (' ' || OLD.flags || ' ') LIKE '% \Seen %' THEN 0 ELSE 1 END),
        size = size - OLD.size
    WHERE mailbox_id = OLD.mailbox_id;
    INSERT INTO mailbox_counts (mailbox_id, messages, unseen, size)
    VALUES (NEW.mailbox_id, 1,
        CASE WHEN (' ' || NEW.flags || ' ') LIKE '% \Seen %' THEN 0 ELSE 1 END, NEW.size)
    ON CONFLICT (mailbox_id) DO UPDATE SET messages = messages + 1,
        unseen = unseen + excluded.unseen, size = size + excluded.size;
END;
CREATE TRIGGER mailbox_counts_drop AFTER DELETE ON mailboxes BEGIN
    DELETE FROM mailbox_counts WHERE mailbox_id = OLD.id;
END;
"#;

/// v4: queue fencing (the largest lease token that wrote to an entry) and the delay-warning
/// flag of each recipient.
const SCHEMA_V4: &str = r#"
ALTER TABLE outbound ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbound_rcpts ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0;
"#;

/// v5: blob pins (a writer's notice that it is about to reference a blob) and the claim a
/// sweep holds on an orphan while it deletes the bytes (see [`MetadataStore::pin_blob`]).
/// Also the last TOTP time step accepted per account (codes are single-use).
const SCHEMA_V5: &str = r#"
CREATE TABLE blob_pins (
    blob_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;
ALTER TABLE blob_orphans ADD COLUMN claimed INTEGER;
ALTER TABLE totp_secrets ADD COLUMN last_step INTEGER;
"#;

/// v6: the `\Recent` watermark of each mailbox (see [`MetadataStore::claim_recent`]).
const SCHEMA_V6: &str = r#"
CREATE TABLE recent_marks (
    mailbox_id INTEGER PRIMARY KEY,
    uid INTEGER NOT NULL
);
"#;

/// v7: the save date of each message (IMAP SAVEDATE, RFC 8514), set by every append, copy
/// and move. NULL for messages stored before this version.
const SCHEMA_V7: &str = r#"
ALTER TABLE messages ADD COLUMN save_date INTEGER;
"#;

/// v8: `\Noselect` placeholders, mailbox ACLs (RFC 4314) with their reverse index by
/// identifier, and metadata entries (RFC 5464). `mailbox_id` 0 in `metadata` is a server
/// entry (mailbox ids start at 1).
const SCHEMA_V8: &str = r#"
ALTER TABLE mailboxes ADD COLUMN noselect INTEGER NOT NULL DEFAULT 0;
CREATE TABLE acl (
    mailbox_id INTEGER NOT NULL,
    identifier TEXT NOT NULL,
    owner_id INTEGER NOT NULL,
    rights TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, identifier)
) WITHOUT ROWID;
CREATE INDEX acl_identifier ON acl(identifier);
CREATE TABLE metadata (
    account_id INTEGER NOT NULL,
    mailbox_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (account_id, mailbox_id, name)
) WITHOUT ROWID;
CREATE INDEX metadata_mailbox ON metadata(mailbox_id);
"#;

/// v11: object ids (IMAP OBJECTID, RFC 8474; see [`crate::object_id`]). Each message gets
/// its EMAILID and THREADID in its row (messages stored before get their deterministic
/// legacy ids here, each its own thread); `thread_index` maps an account's message-ids to
/// threads; `id_sequences` numbers EMAILIDs. The indexes answer SEARCH EMAILID/THREADID
/// and JMAP's lookups by id.
const SCHEMA_V11: &str = r#"
ALTER TABLE messages ADD COLUMN email_id TEXT;
ALTER TABLE messages ADD COLUMN thread_id TEXT;
UPDATE messages SET email_id = 'E' || mailbox_id || '_' || uid,
    thread_id = 'T' || mailbox_id || '_' || uid;
CREATE INDEX messages_email_id ON messages(email_id);
CREATE INDEX messages_thread_id ON messages(thread_id);
CREATE TABLE thread_index (
    account_id INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    PRIMARY KEY (account_id, message_id)
) WITHOUT ROWID;
CREATE TABLE id_sequences (
    name TEXT PRIMARY KEY,
    next INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO id_sequences (name, next) VALUES ('email', 1);
"#;

/// v12: a partial index of the messages that may carry `\Deleted` (the same LIKE test
/// EXPUNGE filters with, so the planner can use it), so EXPUNGE reads those messages
/// instead of scanning the mailbox: an EXPUNGE cost ~11% of the server's CPU in the IMAP mix
/// profile on 200-message mailboxes, and grew with the mailbox.
const SCHEMA_V12: &str = r#"
CREATE INDEX messages_deleted ON messages(mailbox_id, uid)
    WHERE flags LIKE '%\Deleted%' ESCAPE '!';
"#;

/// v14: the W3C `traceparent` of the trace a message or queue entry was received under
/// (observability): kept with the message so a later read (IMAP FETCH, POP3 RETR) and the
/// outbound attempts join that trace. Null for rows written before, and for messages
/// appended by a client.
const SCHEMA_V14: &str = r#"
ALTER TABLE messages ADD COLUMN trace TEXT;
ALTER TABLE outbound ADD COLUMN trace TEXT;
"#;

/// v15: DKIM signing keys (crate::dkim), shared by every front-end through this store.
const SCHEMA_V15: &str = r#"
CREATE TABLE dkim_keys (
    domain TEXT NOT NULL,
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    private_der BLOB NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    state_since INTEGER NOT NULL,
    PRIMARY KEY (domain, selector)
) WITHOUT ROWID;
"#;

/// v16: account settings (display name, suspension, allowed protocols as bits of
/// [`crate::Protocols`]) and the owner marks of accounts and domains (`managed_by`).
/// Added columns with defaults: a server of v15 running beside a migrated one still reads
/// and writes its rows (it ignores the new columns).
const SCHEMA_V16: &str = r#"
ALTER TABLE accounts ADD COLUMN display_name TEXT;
ALTER TABLE accounts ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN protocols INTEGER NOT NULL DEFAULT 15;
ALTER TABLE accounts ADD COLUMN managed_by TEXT;
ALTER TABLE domains ADD COLUMN managed_by TEXT;
"#;

/// v17: a domain's quota (the most its accounts' quotas may add up to; 0: none). A column
/// with a default, so a v16 server beside a migrated one still reads its rows.
const SCHEMA_V17: &str = r#"
ALTER TABLE domains ADD COLUMN quota_bytes INTEGER NOT NULL DEFAULT 0;
"#;

/// v18: keyed records of an account or of the installation (scope 0), see
/// [`crate::data`]. No foreign key: scope 0 is no account; `delete_account` removes an
/// account's rows.
const SCHEMA_V18: &str = r#"
CREATE TABLE records (
    scope INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (scope, kind, key)
) WITHOUT ROWID;
"#;

/// v19: the version of each queue entry's attempt state, which a claim compares against
/// (see [`MetadataStore::claim_outbound_attempt`]).
const SCHEMA_V19: &str = r#"
ALTER TABLE outbound ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
"#;

/// UIDs an EXPUNGE with a UID set looks up one by one; a larger set reads the deleted
/// messages from the partial index instead.
const EXPUNGE_LOOKUPS: usize = 64;

fn migrate(conn: &Connection, index_path: &Path) -> StoreResult<()> {
    migrate_to(conn, index_path, SCHEMA_VERSION)
}

/// Migrates up to `target` (below [`SCHEMA_VERSION`] only in tests of a migration).
fn migrate_to(conn: &Connection, index_path: &Path, target: i64) -> StoreResult<()> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "database schema version {version} is newer than this build ({SCHEMA_VERSION})"
        )));
    }
    if version < 1 && target >= 1 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 2 && target >= 2 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 3 && target >= 3 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V3} PRAGMA user_version = 3; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 4 && target >= 4 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V4} PRAGMA user_version = 4; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 5 && target >= 5 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V5} PRAGMA user_version = 5; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 6 && target >= 6 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V6} PRAGMA user_version = 6; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 7 && target >= 7 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V7} PRAGMA user_version = 7; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 8 && target >= 8 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V8} PRAGMA user_version = 8; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 9 && target >= 9 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {} PRAGMA user_version = 9; COMMIT;",
            super::fts_sqlite::SCHEMA_V9
        ))
        .map_err(db_err)?;
    }
    if version < 10 && target >= 10 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_MAILBOX_COUNTS} PRAGMA user_version = 10; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 11 && target >= 11 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V11} PRAGMA user_version = 11; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 12 && target >= 12 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V12} PRAGMA user_version = 12; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 13 && target >= 13 {
        fts_sqlite::attach(conn, index_path)?;
        let moved = conn
            .execute_batch(&format!(
                "BEGIN IMMEDIATE; {} PRAGMA main.user_version = 13; COMMIT;",
                fts_sqlite::SCHEMA_V13_MOVE
            ))
            .map_err(db_err);
        if moved.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        conn.execute_batch("DETACH DATABASE fts").map_err(db_err)?;
        moved?;
    }
    if version < 14 && target >= 14 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V14} PRAGMA user_version = 14; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 15 && target >= 15 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V15} PRAGMA user_version = 15; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 16 && target >= 16 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V16} PRAGMA user_version = 16; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 17 && target >= 17 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V17} PRAGMA user_version = 17; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 18 && target >= 18 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V18} PRAGMA user_version = 18; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    if version < 19 && target >= 19 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V19} PRAGMA user_version = 19; COMMIT;"
        ))
        .map_err(db_err)?;
    }
    Ok(())
}

/// Starts the full-text index thread: its own connection to the index file and a read
/// connection to the database; its metadata writes go through `writer` and are waited for.
fn start_index(
    path: &Path,
    index_path: &Path,
    writer: mpsc::Sender<Job>,
) -> StoreResult<(mpsc::Sender<IndexJob>, std::thread::JoinHandle<()>)> {
    let index = Connection::open(index_path).map_err(db_err)?;
    configure(&index).map_err(db_err)?;
    index.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let meta = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    configure(&meta).map_err(db_err)?;
    let main: MainWrite = Box::new(move |f| {
        let (done_tx, done_rx) = mpsc::sync_channel::<StoreResult<()>>(1);
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |commit| {
                let _ = done_tx.send(commit.and(result));
            });
            (ok, completion)
        });
        writer
            .send(job)
            .map_err(|_| StoreError::Unavailable("metadata writer stopped".into()))?;
        done_rx
            .recv()
            .map_err(|_| StoreError::Unavailable("metadata writer dropped a write".into()))?
    });
    let (tx, rx) = mpsc::channel::<IndexJob>();
    let handle = std::thread::Builder::new()
        .name("mf-sqlite-fts".into())
        .spawn(move || fts_sqlite::run(index, meta, rx, main))
        .map_err(|e| StoreError::Unavailable(format!("index thread: {e}")))?;
    Ok((tx, handle))
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, max: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        mailfleet_telemetry::metrics()
            .storage
            .commit_batch(batch.len());
        run_batch(&conn, batch);
    }
}

/// Runs one group commit. Each job runs in its own savepoint inside one transaction.
///
/// SQLite may roll the *whole* transaction back on its own when a statement fails with
/// `SQLITE_FULL`, `SQLITE_IOERR`, `SQLITE_NOMEM` or `SQLITE_BUSY` (see "Response To Errors
/// Within A Transaction" in its documentation). The jobs that ran before are then undone,
/// and the jobs after would run in autocommit mode, each committing on its own before the
/// batch's COMMIT (which then fails): callers would be told "failed" for writes that
/// happened. So after every job the loop checks `is_autocommit()`: when the transaction is
/// gone, every job of the batch so far is answered with an error (their writes were undone)
/// and the rest of the batch starts again in a new transaction.
fn run_batch(conn: &Connection, batch: Vec<Job>) {
    let mut jobs = batch.into_iter();
    'transaction: loop {
        if jobs.len() == 0 {
            return;
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let why = db_err(e).to_string();
            for job in jobs {
                // Run nothing; tell each caller the store is unavailable.
                let (_, done) = job_failed(job, why.clone());
                done(Err(StoreError::Unavailable(format!(
                    "transaction could not start: {why}"
                ))));
            }
            return;
        }
        let mut completions: Vec<Completion> = Vec::new();
        for job in jobs.by_ref() {
            if conn.execute_batch("SAVEPOINT job").is_err() {
                completions.push(job_failed(job, "savepoint".into()).1);
                continue;
            }
            let (ok, done) = job(conn);
            completions.push(done);
            if conn.is_autocommit() {
                // SQLite rolled the transaction back by itself: nothing of this batch so
                // far was written.
                tracing::error!("sqlite rolled a group commit back by itself; retrying the rest");
                for done in completions.drain(..) {
                    done(Err(StoreError::Unavailable(
                        "the database rolled the transaction back (disk full or I/O error)".into(),
                    )));
                }
                continue 'transaction;
            }
            let end = if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = conn.execute_batch(end) {
                tracing::error!(error = %e, "savepoint end failed");
            }
        }
        let commit = conn.execute_batch("COMMIT").map_err(db_err);
        if commit.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for done in completions {
            done(match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Unavailable(format!("commit failed: {e}"))),
            });
        }
        return;
    }
}

/// A job that could not run: its completion reports the failure.
fn job_failed(job: Job, _why: String) -> (bool, Completion) {
    // The job's closure owns the caller's reply channel; dropping it makes the caller's
    // receiver fail, which `write` reports as Unavailable.
    drop(job);
    (false, Box::new(|_| {}))
}

// ---------- row helpers ----------

fn domain_id(conn: &Connection, name: &str) -> StoreResult<DomainId> {
    conn.query_row("SELECT id FROM domains WHERE name = ?1", [name], |r| {
        r.get(0).map(DomainId)
    })
    .optional()
    .map_err(db_err)?
    .ok_or_else(|| StoreError::NotFound(format!("domain {name}")))
}

fn domain_of(address: &str) -> StoreResult<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| StoreError::Invalid(format!("'{address}' is not local@domain")))
}

const ACCOUNT_COLS: &str = "id, domain_id, address, password_hash, quota_bytes, used_bytes, \
     message_count, display_name, suspended, protocols, managed_by";

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: AccountId(r.get(0)?),
        domain: DomainId(r.get(1)?),
        address: r.get(2)?,
        password_hash: r.get(3)?,
        quota_bytes: r.get::<_, i64>(4)? as u64,
        used_bytes: r.get::<_, i64>(5)? as u64,
        message_count: r.get::<_, i64>(6)? as u64,
        settings: AccountSettings {
            display_name: r.get(7)?,
            suspended: r.get::<_, i64>(8)? != 0,
            protocols: Protocols::from_bits(r.get::<_, i64>(9)? as u8),
            managed_by: r.get(10)?,
        },
    })
}

fn domain_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Domain> {
    Ok(Domain {
        id: DomainId(r.get(0)?),
        name: r.get(1)?,
        managed_by: r.get(2)?,
        quota_bytes: r.get::<_, i64>(3)?.max(0) as u64,
    })
}

fn account_by_address(conn: &Connection, address: &str) -> StoreResult<Option<Account>> {
    conn.query_row(
        &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE address = ?1"),
        [address],
        account_row,
    )
    .optional()
    .map_err(db_err)
}

const MAILBOX_COLS: &str = "id, account_id, name, special_use, uid_validity, uid_next, \
     highest_modseq, message_count, noselect";

fn mailbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Mailbox> {
    let special: Option<String> = r.get(3)?;
    Ok(Mailbox {
        id: MailboxId(r.get(0)?),
        account: AccountId(r.get(1)?),
        name: r.get(2)?,
        special_use: special.as_deref().and_then(SpecialUse::parse),
        uid_validity: r.get::<_, i64>(4)? as u32,
        uid_next: Uid(r.get::<_, i64>(5)? as u32),
        highest_modseq: ModSeq(r.get::<_, i64>(6)? as u64),
        message_count: r.get::<_, i64>(7)? as u64,
        noselect: r.get::<_, i64>(8)? != 0,
    })
}

const MESSAGE_COLS: &str = "mailbox_id, uid, modseq, blob_id, size, internal_date, flags";

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageMeta> {
    message_row_at(r, 0)
}

/// A message from the [`MESSAGE_COLS`] starting at column `at`.
fn message_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<MessageMeta> {
    let blob: String = r.get(at + 3)?;
    let flags: String = r.get(at + 6)?;
    Ok(MessageMeta {
        mailbox: MailboxId(r.get(at)?),
        uid: Uid(r.get::<_, i64>(at + 1)? as u32),
        modseq: ModSeq(r.get::<_, i64>(at + 2)? as u64),
        blob: BlobId::parse(&blob).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                at + 3,
                rusqlite::types::Type::Text,
                format!("bad blob id {blob}").into(),
            )
        })?,
        size: r.get::<_, i64>(at + 4)? as u64,
        internal_date: r.get(at + 5)?,
        flags: Flags::from_storage(&flags),
    })
}

fn create_mailbox_tx(
    conn: &Connection,
    account: AccountId,
    name: &str,
    special_use: Option<SpecialUse>,
) -> StoreResult<Mailbox> {
    // UIDVALIDITY must change if a mailbox name is reused; seconds since the epoch mixed
    // with the new row id keeps it unique and non-zero.
    let id: i64 = conn
        .query_row(
            "INSERT INTO mailboxes (account_id, name, special_use, uid_validity) \
             VALUES (?1, ?2, ?3, 0) RETURNING id",
            params![account.0, name, special_use.map(|s| s.as_str())],
            |r| r.get(0),
        )
        .map_err(|e| match db_err(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("mailbox {name}")),
            other => other,
        })?;
    let validity = ((now_secs() as u64).wrapping_add(id as u64) & 0x7fff_ffff).max(1) as i64;
    conn.execute(
        "UPDATE mailboxes SET uid_validity = ?1 WHERE id = ?2",
        params![validity, id],
    )
    .map_err(db_err)?;
    conn.query_row(
        &format!("SELECT {MAILBOX_COLS} FROM mailboxes WHERE id = ?1"),
        [id],
        mailbox_row,
    )
    .map_err(db_err)
}

/// Drops one reference to each blob; returns those left unreferenced (and records them).
fn release_blobs(conn: &Connection, blobs: &[String]) -> StoreResult<Vec<BlobId>> {
    let mut orphaned = Vec::new();
    let now = now_secs();
    for b in blobs {
        let left: Option<i64> = conn
            .query_row(
                "UPDATE blobs SET refcount = refcount - 1 WHERE blob_id = ?1 RETURNING refcount",
                [b],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if left.unwrap_or(0) <= 0 {
            conn.execute("DELETE FROM blobs WHERE blob_id = ?1", [b])
                .map_err(db_err)?;
            conn.execute(
                "INSERT OR REPLACE INTO blob_orphans (blob_id, since) VALUES (?1, ?2)",
                params![b, now],
            )
            .map_err(db_err)?;
            if let Some(id) = BlobId::parse(b) {
                orphaned.push(id);
            }
        }
    }
    Ok(orphaned)
}

/// Deletes every message of a mailbox, adjusting quota usage; returns the released blobs.
fn purge_mailbox(conn: &Connection, mailbox: i64) -> StoreResult<Vec<BlobId>> {
    let mut stmt = conn
        .prepare("SELECT blob_id, size FROM messages WHERE mailbox_id = ?1")
        .map_err(db_err)?;
    let rows: Vec<(String, i64)> = stmt
        .query_map([mailbox], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    let bytes: i64 = rows.iter().map(|r| r.1).sum();
    conn.execute(
        "UPDATE accounts SET used_bytes = MAX(0, used_bytes - ?1), \
         message_count = MAX(0, message_count - ?2) \
         WHERE id = (SELECT account_id FROM mailboxes WHERE id = ?3)",
        params![bytes, rows.len() as i64, mailbox],
    )
    .map_err(db_err)?;
    conn.execute("DELETE FROM messages WHERE mailbox_id = ?1", [mailbox])
        .map_err(db_err)?;
    conn.execute("DELETE FROM changes WHERE mailbox_id = ?1", [mailbox])
        .map_err(db_err)?;
    conn.execute("DELETE FROM recent_marks WHERE mailbox_id = ?1", [mailbox])
        .map_err(db_err)?;
    // The ACL and the metadata (every user's) go with the mailbox (RFC 4314, RFC 5464 §3).
    conn.execute("DELETE FROM acl WHERE mailbox_id = ?1", [mailbox])
        .map_err(db_err)?;
    conn.execute("DELETE FROM metadata WHERE mailbox_id = ?1", [mailbox])
        .map_err(db_err)?;
    let blobs: Vec<String> = rows.into_iter().map(|r| r.0).collect();
    release_blobs(conn, &blobs)
}

/// Takes the next MODSEQ of a mailbox.
fn next_modseq(conn: &Connection, mailbox: MailboxId) -> StoreResult<ModSeq> {
    conn.prepare_cached(
        "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = ?1 \
         RETURNING highest_modseq",
    )
    .map_err(db_err)?
    .query_row([mailbox.0], |r| r.get::<_, i64>(0))
    .optional()
    .map_err(db_err)?
    .map(|m| ModSeq(m as u64))
    .ok_or_else(|| StoreError::NotFound(format!("mailbox {mailbox}")))
}

fn record_change(
    conn: &Connection,
    mailbox: MailboxId,
    uid: Uid,
    modseq: ModSeq,
    kind: ChangeKind,
) -> StoreResult<()> {
    let k = match kind {
        ChangeKind::Appended => 0,
        ChangeKind::FlagsChanged => 1,
        ChangeKind::Expunged => 2,
    };
    conn.prepare_cached(
        "INSERT OR REPLACE INTO changes (mailbox_id, uid, modseq, kind) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(db_err)?
    .execute(params![mailbox.0, uid.0, modseq.0 as i64, k])
    .map_err(db_err)?;
    Ok(())
}

/// The stored fields of a message, as copied between mailboxes.
struct StoredFields {
    blob: String,
    size: i64,
    internal_date: i64,
    flags: String,
    summary: Option<Vec<u8>>,
    /// EMAILID and THREADID: new for an append ([`assign_object_ids`]), the original's
    /// for a copy or move.
    ids: MessageObjectIds,
    /// The trace the message was received under; a copy keeps it.
    trace: Option<String>,
}

/// Gives a new message its EMAILID (the next of the store's sequence) and THREADID: the
/// thread of the first of its keys (its own Message-ID, then what it refers to, nearest
/// first) the account's thread index knows, else a new thread named after the message.
/// Every key not yet indexed is recorded with the thread, so later replies to it, and
/// messages that arrive before their parent, join it. Threads are not merged when the
/// keys name several (the first found wins).
fn assign_object_ids(
    c: &Connection,
    account: AccountId,
    refs: &crate::MessageRefs,
) -> StoreResult<MessageObjectIds> {
    let n: i64 = c
        .prepare_cached(
            "UPDATE id_sequences SET next = next + 1 WHERE name = 'email' RETURNING next - 1",
        )
        .map_err(db_err)?
        .query_row([], |r| r.get(0))
        .map_err(db_err)?;
    let email_id = crate::object_id::email_id(n);
    let keys = refs.keys();
    let mut thread_id = None;
    {
        let mut find = c
            .prepare_cached(
                "SELECT thread_id FROM thread_index WHERE account_id = ?1 AND message_id = ?2",
            )
            .map_err(db_err)?;
        for k in &keys {
            if let Some(t) = find
                .query_row(params![account.0, k], |r| r.get::<_, String>(0))
                .optional()
                .map_err(db_err)?
            {
                thread_id = Some(t);
                break;
            }
        }
    }
    let thread_id = thread_id.unwrap_or_else(|| crate::object_id::thread_id_for(&email_id));
    let mut put = c
        .prepare_cached(
            "INSERT OR IGNORE INTO thread_index (account_id, message_id, thread_id) \
             VALUES (?1, ?2, ?3)",
        )
        .map_err(db_err)?;
    for k in &keys {
        put.execute(params![account.0, k, thread_id])
            .map_err(db_err)?;
    }
    Ok(MessageObjectIds {
        email_id,
        thread_id,
    })
}

/// Adds one message to a mailbox: next UID, new MODSEQ, blob reference, quota usage (when
/// `count_usage`), change log.
fn insert_message(
    c: &Connection,
    account: AccountId,
    mailbox: MailboxId,
    m: &StoredFields,
    enforce_quota: bool,
    count_usage: bool,
) -> StoreResult<Appended> {
    let (used, limit, address): (i64, i64, String) = c
        .prepare_cached("SELECT used_bytes, quota_bytes, address FROM accounts WHERE id = ?1")
        .map_err(db_err)?
        .query_row([account.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .map_err(db_err)?
        .ok_or_else(|| StoreError::NotFound(format!("account {account}")))?;
    if enforce_quota && limit > 0 && used + m.size > limit {
        return Err(StoreError::QuotaExceeded(address));
    }
    let (uid, modseq): (i64, i64) = c
        .prepare_cached(
            "UPDATE mailboxes SET uid_next = uid_next + 1, \
             highest_modseq = highest_modseq + 1, message_count = message_count + 1 \
             WHERE id = ?1 AND account_id = ?2 RETURNING uid_next - 1, highest_modseq",
        )
        .map_err(db_err)?
        .query_row(params![mailbox.0, account.0], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(db_err)?
        .ok_or_else(|| StoreError::NotFound(format!("mailbox {mailbox}")))?;
    if uid > u32::MAX as i64 {
        return Err(StoreError::Invalid(format!(
            "mailbox {mailbox} has used every UID"
        )));
    }
    c.prepare_cached(&format!(
        "INSERT INTO messages ({MESSAGE_COLS}, summary, save_date, email_id, thread_id, \
         trace) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))
    .map_err(db_err)?
    .execute(params![
        mailbox.0,
        uid,
        modseq,
        m.blob,
        m.size,
        m.internal_date,
        m.flags,
        m.summary,
        // The save date (RFC 8514): now, for an append as for a copy or move.
        now_secs(),
        m.ids.email_id,
        m.ids.thread_id,
        m.trace
    ])
    .map_err(db_err)?;
    c.prepare_cached(
        "INSERT INTO blobs (blob_id, refcount) VALUES (?1, 1) \
         ON CONFLICT (blob_id) DO UPDATE SET refcount = refcount + 1",
    )
    .map_err(db_err)?
    .execute([&m.blob])
    .map_err(db_err)?;
    // A claimed orphan's bytes may be gone already: refuse (temporarily) rather than
    // reference them. Writers that pinned first never get here (the pin was refused).
    let claimed: Option<Option<i64>> = c
        .prepare_cached("DELETE FROM blob_orphans WHERE blob_id = ?1 RETURNING claimed")
        .map_err(db_err)?
        .query_row([&m.blob], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    if claimed.flatten().is_some() {
        return Err(StoreError::Unavailable(format!(
            "blob {} is being deleted; store it again",
            m.blob
        )));
    }
    c.prepare_cached("DELETE FROM blob_pins WHERE blob_id = ?1")
        .map_err(db_err)?
        .execute([&m.blob])
        .map_err(db_err)?;
    if count_usage {
        c.prepare_cached(
            "UPDATE accounts SET used_bytes = used_bytes + ?1, \
             message_count = message_count + 1 WHERE id = ?2",
        )
        .map_err(db_err)?
        .execute(params![m.size, account.0])
        .map_err(db_err)?;
    }
    let uid = Uid(uid as u32);
    let modseq = ModSeq(modseq as u64);
    record_change(c, mailbox, uid, modseq, ChangeKind::Appended)?;
    Ok(Appended {
        mailbox,
        uid,
        modseq,
    })
}

/// Deletes one message row; returns its blob and size. Counters are the caller's job.
fn remove_message(
    c: &Connection,
    mailbox: MailboxId,
    uid: Uid,
) -> StoreResult<Option<(String, i64)>> {
    c.prepare_cached(
        "DELETE FROM messages WHERE mailbox_id = ?1 AND uid = ?2 RETURNING blob_id, size",
    )
    .map_err(db_err)?
    .query_row(params![mailbox.0, uid.0], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
    .map_err(db_err)
}

/// Gives a removed message its expunge MODSEQ and change-log entry.
fn next_modseq_after_removal(c: &Connection, mailbox: MailboxId, uid: Uid) -> StoreResult<ModSeq> {
    let m = next_modseq(c, mailbox)?;
    record_change(c, mailbox, uid, m, ChangeKind::Expunged)?;
    Ok(m)
}

/// Copies (and with `remove`, moves) messages in one transaction.
fn copy_tx(
    c: &Connection,
    account: AccountId,
    source: MailboxId,
    uids: &[Uid],
    dest: MailboxId,
    remove: bool,
) -> StoreResult<(Vec<Copied>, Expunged)> {
    let owned: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM mailboxes WHERE account_id = ?1 AND id IN (?2, ?3)",
            params![account.0, source.0, dest.0],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if owned < if source == dest { 1 } else { 2 } {
        return Err(StoreError::NotFound("mailbox".into()));
    }
    let mut sorted = uids.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut copied = Vec::new();
    let mut expunged = Expunged::default();
    for uid in sorted {
        let row: Option<StoredFields> = c
            .prepare_cached(
                "SELECT blob_id, size, internal_date, flags, summary, email_id, thread_id, \
                 trace FROM messages WHERE mailbox_id = ?1 AND uid = ?2",
            )
            .map_err(db_err)?
            .query_row(params![source.0, uid.0], |r| {
                let legacy = crate::object_id::legacy_ids(source, uid);
                Ok(StoredFields {
                    blob: r.get(0)?,
                    size: r.get(1)?,
                    internal_date: r.get(2)?,
                    flags: r.get(3)?,
                    summary: r.get(4)?,
                    // The copy is the same email (RFC 8474 §5.1: COPY and MOVE keep
                    // the EMAILID and THREADID).
                    ids: MessageObjectIds {
                        email_id: r.get::<_, Option<String>>(5)?.unwrap_or(legacy.email_id),
                        thread_id: r.get::<_, Option<String>>(6)?.unwrap_or(legacy.thread_id),
                    },
                    trace: r.get(7)?,
                })
            })
            .optional()
            .map_err(db_err)?;
        let Some(fields) = row else { continue };
        let dest_appended = insert_message(c, account, dest, &fields, !remove, !remove)?;
        // The copy's index entries are the original's: copied by the index thread (the
        // copy's row's trigger made it pending until then).
        c.prepare_cached(
            "INSERT INTO fts_work (mailbox_id, uid, src_mailbox_id, src_uid) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(db_err)?
        .execute(params![dest.0, dest_appended.uid.0, source.0, uid.0])
        .map_err(db_err)?;
        copied.push(Copied {
            source_uid: uid,
            dest: dest_appended,
        });
        if remove {
            remove_message(c, source, uid)?;
            expunged.modseq = Some(next_modseq_after_removal(c, source, uid)?);
            expunged.uids.push(uid);
            // The destination took a new reference; drop the source's.
            release_blobs(c, &[fields.blob])?;
        }
    }
    if remove && !expunged.uids.is_empty() {
        c.execute(
            "UPDATE mailboxes SET message_count = MAX(0, message_count - ?1) WHERE id = ?2",
            params![expunged.uids.len() as i64, source.0],
        )
        .map_err(db_err)?;
    }
    Ok((copied, expunged))
}

/// Updates flags inside the writer's transaction; with `unchanged_since`, a message whose
/// stored MODSEQ is above it is left alone and reported in `modified` (RFC 7162 §3.1.3).
fn store_flags_tx(
    c: &Connection,
    mailbox: MailboxId,
    uids: &[Uid],
    op: FlagOp,
    flags: &Flags,
    unchanged_since: Option<ModSeq>,
) -> StoreResult<ConditionalStore> {
    let mut out = ConditionalStore::default();
    for &uid in uids {
        let Some(mut msg) = c
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = ?1 AND uid = ?2"
            ))
            .map_err(db_err)?
            .query_row(params![mailbox.0, uid.0], message_row)
            .optional()
            .map_err(db_err)?
        else {
            continue;
        };
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
        let modseq = next_modseq(c, mailbox)?;
        c.prepare_cached(
            "UPDATE messages SET flags = ?1, modseq = ?2 WHERE mailbox_id = ?3 AND uid = ?4",
        )
        .map_err(db_err)?
        .execute(params![new.to_storage(), modseq.0 as i64, mailbox.0, uid.0])
        .map_err(db_err)?;
        record_change(c, mailbox, uid, modseq, ChangeKind::FlagsChanged)?;
        msg.flags = new;
        msg.modseq = modseq;
        out.changed.push(msg);
    }
    Ok(out)
}

/// Removes the given messages inside the writer's transaction, adjusting counters and blob
/// references.
fn expunge_tx(c: &Connection, mailbox: MailboxId, uids: &[Uid]) -> StoreResult<Expunged> {
    let mut removed = Vec::new();
    let mut blobs = Vec::new();
    let mut bytes = 0i64;
    let mut modseq = None;
    for &uid in uids {
        let Some((blob, size)) = remove_message(c, mailbox, uid)? else {
            continue;
        };
        modseq = Some(next_modseq_after_removal(c, mailbox, uid)?);
        removed.push(uid);
        blobs.push(blob);
        bytes += size;
    }
    if !removed.is_empty() {
        c.execute(
            "UPDATE mailboxes SET message_count = MAX(0, message_count - ?1) WHERE id = ?2",
            params![removed.len() as i64, mailbox.0],
        )
        .map_err(db_err)?;
        c.execute(
            "UPDATE accounts SET used_bytes = MAX(0, used_bytes - ?1), \
             message_count = MAX(0, message_count - ?2) \
             WHERE id = (SELECT account_id FROM mailboxes WHERE id = ?3)",
            params![bytes, removed.len() as i64, mailbox.0],
        )
        .map_err(db_err)?;
    }
    let orphaned = release_blobs(c, &blobs)?;
    Ok(Expunged {
        uids: removed,
        modseq,
        orphaned,
    })
}

fn validate_mailbox_name(name: &str) -> StoreResult<()> {
    if name.is_empty() || name.len() > 512 || name.chars().any(|c| c.is_control()) {
        return Err(StoreError::Invalid(format!("mailbox name '{name}'")));
    }
    Ok(())
}

#[async_trait]
impl MetadataStore for SqliteMetadataStore {
    async fn create_domain(&self, name: &str) -> StoreResult<Domain> {
        let name = name.to_string();
        self.write(move |c| {
            let id: i64 = c
                .query_row(
                    "INSERT INTO domains (name, created_at) VALUES (?1, ?2) RETURNING id",
                    params![name, now_secs()],
                    |r| r.get(0),
                )
                .map_err(|e| match db_err(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!("domain {name}")),
                    o => o,
                })?;
            Ok(Domain {
                id: DomainId(id),
                name,
                managed_by: None,
                quota_bytes: 0,
            })
        })
        .await
    }

    async fn get_domain(&self, name: &str) -> StoreResult<Option<Domain>> {
        let name = name.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, managed_by, quota_bytes FROM domains WHERE name = ?1",
                [name],
                domain_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn list_domains(&self) -> StoreResult<Vec<Domain>> {
        self.read(|c| {
            let mut s = c
                .prepare("SELECT id, name, managed_by, quota_bytes FROM domains ORDER BY name")
                .map_err(db_err)?;
            let rows = s.query_map([], domain_row).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn delete_domain(&self, name: &str) -> StoreResult<()> {
        let name = name.to_string();
        self.write(move |c| {
            let id = domain_id(c, &name)?;
            let users: i64 = c
                .query_row(
                    "SELECT (SELECT COUNT(*) FROM accounts WHERE domain_id = ?1) + \
                     (SELECT COUNT(*) FROM aliases WHERE domain_id = ?1)",
                    [id.0],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if users > 0 {
                return Err(StoreError::Conflict(format!(
                    "domain {name} still has {users} accounts or aliases"
                )));
            }
            c.execute("DELETE FROM domains WHERE id = ?1", [id.0])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn create_account(
        &self,
        address: &str,
        password_hash: &str,
        quota_bytes: u64,
    ) -> StoreResult<Account> {
        let address = address.to_lowercase();
        let hash = password_hash.to_string();
        self.write(move |c| {
            let domain = domain_id(c, domain_of(&address)?)?;
            let alias: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM aliases WHERE source = ?1",
                    [&address],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if alias > 0 {
                return Err(StoreError::Conflict(format!("{address} is an alias")));
            }
            let id: i64 = c
                .query_row(
                    "INSERT INTO accounts (domain_id, address, password_hash, quota_bytes, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                    params![domain.0, address, hash, quota_bytes as i64, now_secs()],
                    |r| r.get(0),
                )
                .map_err(|e| match db_err(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!("account {address}")),
                    o => o,
                })?;
            for (role, name) in SpecialUse::DEFAULTS {
                create_mailbox_tx(c, AccountId(id), name, Some(role))?;
            }
            account_by_address(c, &address)?
                .ok_or_else(|| StoreError::Corrupt("account vanished".into()))
        })
        .await
    }

    async fn get_account(&self, address: &str) -> StoreResult<Option<Account>> {
        let address = address.to_lowercase();
        self.read(move |c| account_by_address(c, &address)).await
    }

    async fn get_account_by_id(&self, id: AccountId) -> StoreResult<Option<Account>> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?1"),
                [id.0],
                account_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn list_accounts(&self, domain: Option<&str>) -> StoreResult<Vec<Account>> {
        let domain = domain.map(str::to_lowercase);
        self.read(move |c| {
            let mut s = c
                .prepare(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts \
                     WHERE ?1 IS NULL OR domain_id = (SELECT id FROM domains WHERE name = ?1) \
                     ORDER BY address"
                ))
                .map_err(db_err)?;
            let rows = s.query_map([domain], account_row).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn delete_account(&self, address: &str) -> StoreResult<Vec<BlobId>> {
        let address = address.to_lowercase();
        self.write(move |c| {
            let acct = account_by_address(c, &address)?
                .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?;
            let mut s = c
                .prepare("SELECT id FROM mailboxes WHERE account_id = ?1")
                .map_err(db_err)?;
            let boxes: Vec<i64> = s
                .query_map([acct.id.0], |r| r.get(0))
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            let mut orphaned = Vec::new();
            for b in boxes {
                orphaned.extend(purge_mailbox(c, b)?);
            }
            c.execute("DELETE FROM mailboxes WHERE account_id = ?1", [acct.id.0])
                .map_err(db_err)?;
            c.execute(
                "DELETE FROM subscriptions WHERE account_id = ?1",
                [acct.id.0],
            )
            .map_err(db_err)?;
            // Rights granted to the address must not pass to a new account of that name.
            c.execute("DELETE FROM acl WHERE identifier = ?1", [&address])
                .map_err(db_err)?;
            c.execute("DELETE FROM records WHERE scope = ?1", [acct.id.0])
                .map_err(db_err)?;
            c.execute("DELETE FROM metadata WHERE account_id = ?1", [acct.id.0])
                .map_err(db_err)?;
            c.execute(
                "DELETE FROM thread_index WHERE account_id = ?1",
                [acct.id.0],
            )
            .map_err(db_err)?;
            c.execute("DELETE FROM accounts WHERE id = ?1", [acct.id.0])
                .map_err(db_err)?;
            // Aliases pointing at the account would otherwise resolve to nothing.
            c.execute("DELETE FROM aliases WHERE target = ?1", [&address])
                .map_err(db_err)?;
            Ok(orphaned)
        })
        .await
    }

    async fn set_password_hash(&self, address: &str, password_hash: &str) -> StoreResult<()> {
        let address = address.to_lowercase();
        let hash = password_hash.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE accounts SET password_hash = ?1 WHERE address = ?2",
                    params![hash, address],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("account {address}")));
            }
            Ok(())
        })
        .await
    }

    async fn set_account_settings(
        &self,
        address: &str,
        settings: &AccountSettings,
    ) -> StoreResult<()> {
        let address = address.to_lowercase();
        let st = settings.clone();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE accounts SET display_name = ?1, suspended = ?2, protocols = ?3, \
                     managed_by = ?4 WHERE address = ?5",
                    params![
                        st.display_name,
                        st.suspended as i64,
                        st.protocols.bits() as i64,
                        st.managed_by,
                        address
                    ],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("account {address}")));
            }
            Ok(())
        })
        .await
    }

    async fn set_domain_managed_by(&self, name: &str, managed_by: Option<&str>) -> StoreResult<()> {
        let name = name.to_lowercase();
        let owner = managed_by.map(str::to_string);
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE domains SET managed_by = ?1 WHERE name = ?2",
                    params![owner, name],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("domain {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn set_domain_quota(&self, name: &str, quota_bytes: u64) -> StoreResult<()> {
        let name = name.to_lowercase();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE domains SET quota_bytes = ?1 WHERE name = ?2",
                    params![quota_bytes as i64, name],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("domain {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn set_quota(&self, address: &str, quota_bytes: u64) -> StoreResult<()> {
        let address = address.to_lowercase();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE accounts SET quota_bytes = ?1 WHERE address = ?2",
                    params![quota_bytes as i64, address],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("account {address}")));
            }
            Ok(())
        })
        .await
    }

    async fn create_alias(&self, source: &str, target: &str) -> StoreResult<()> {
        let source = source.to_lowercase();
        let target = target.to_lowercase();
        self.write(move |c| {
            let domain = domain_id(c, domain_of(&source)?)?;
            if account_by_address(c, &source)?.is_some() {
                return Err(StoreError::Conflict(format!("{source} is an account")));
            }
            c.execute(
                "INSERT INTO aliases (domain_id, source, target) VALUES (?1, ?2, ?3)",
                params![domain.0, source, target],
            )
            .map_err(|e| match db_err(e) {
                StoreError::Conflict(_) => {
                    StoreError::Conflict(format!("alias {source} -> {target}"))
                }
                o => o,
            })?;
            Ok(())
        })
        .await
    }

    async fn delete_alias(&self, source: &str, target: Option<&str>) -> StoreResult<()> {
        let source = source.to_lowercase();
        let target = target.map(str::to_lowercase);
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM aliases WHERE source = ?1 AND (?2 IS NULL OR target = ?2)",
                    params![source, target],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("alias {source}")));
            }
            Ok(())
        })
        .await
    }

    async fn list_aliases(&self, domain: Option<&str>) -> StoreResult<Vec<Alias>> {
        let domain = domain.map(str::to_lowercase);
        self.read(move |c| {
            let mut s = c
                .prepare(
                    "SELECT source, target FROM aliases \
                     WHERE ?1 IS NULL OR domain_id = (SELECT id FROM domains WHERE name = ?1) \
                     ORDER BY source, target",
                )
                .map_err(db_err)?;
            let rows = s
                .query_map([domain], |r| {
                    Ok(Alias {
                        source: r.get(0)?,
                        target: r.get(1)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn alias_targets(&self, source: &str) -> StoreResult<Vec<String>> {
        let source = source.to_lowercase();
        self.read(move |c| {
            let mut s = c
                .prepare_cached("SELECT target FROM aliases WHERE source = ?1 ORDER BY target")
                .map_err(db_err)?;
            let rows = s.query_map([source], |r| r.get(0)).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> StoreResult<Mailbox> {
        validate_mailbox_name(name)?;
        let name = name.to_string();
        self.write(move |c| create_mailbox_tx(c, account, &name, special_use))
            .await
    }

    async fn get_mailbox(&self, account: AccountId, name: &str) -> StoreResult<Option<Mailbox>> {
        let name = name.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {MAILBOX_COLS} FROM mailboxes WHERE account_id = ?1 AND name = ?2"
            ))
            .map_err(db_err)?
            .query_row(params![account.0, name], mailbox_row)
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn list_mailboxes(&self, account: AccountId) -> StoreResult<Vec<Mailbox>> {
        self.read(move |c| {
            let mut s = c
                .prepare(&format!(
                    "SELECT {MAILBOX_COLS} FROM mailboxes WHERE account_id = ?1 ORDER BY name"
                ))
                .map_err(db_err)?;
            let rows = s.query_map([account.0], mailbox_row).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn rename_mailbox(
        &self,
        account: AccountId,
        id: MailboxId,
        new_name: &str,
    ) -> StoreResult<()> {
        validate_mailbox_name(new_name)?;
        let new_name = new_name.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE mailboxes SET name = ?1 WHERE id = ?2 AND account_id = ?3",
                    params![new_name, id.0, account.0],
                )
                .map_err(|e| match db_err(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!("mailbox {new_name}")),
                    o => o,
                })?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("mailbox {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn delete_mailbox(&self, account: AccountId, id: MailboxId) -> StoreResult<Vec<BlobId>> {
        self.write(move |c| {
            let owned: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM mailboxes WHERE id = ?1 AND account_id = ?2",
                    params![id.0, account.0],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if owned == 0 {
                return Err(StoreError::NotFound(format!("mailbox {id}")));
            }
            let orphaned = purge_mailbox(c, id.0)?;
            c.execute("DELETE FROM mailboxes WHERE id = ?1", [id.0])
                .map_err(db_err)?;
            Ok(orphaned)
        })
        .await
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        quota: QuotaPolicy,
    ) -> StoreResult<Vec<Appended>> {
        self.write(move |c| {
            let mut out = Vec::with_capacity(messages.len());
            for m in &messages {
                let ids = assign_object_ids(c, m.account, &m.refs)?;
                out.push(insert_message(
                    c,
                    m.account,
                    m.mailbox,
                    &StoredFields {
                        blob: m.blob.as_str().to_string(),
                        size: m.size as i64,
                        internal_date: m.internal_date,
                        flags: m.flags.to_storage(),
                        summary: m.summary.clone(),
                        ids,
                        trace: m.trace.clone(),
                    },
                    quota == QuotaPolicy::Enforce,
                    true,
                )?);
            }
            Ok(out)
        })
        .await
    }

    async fn list_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<MessageMeta>> {
        self.read(move |c| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = ?1 AND uid > ?2 \
                     ORDER BY uid LIMIT ?3"
                ))
                .map_err(db_err)?;
            let rows = s
                .query_map(
                    params![mailbox.0, after.0, limit.min(i64::MAX as usize) as i64],
                    message_row,
                )
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn get_message(&self, mailbox: MailboxId, uid: Uid) -> StoreResult<Option<MessageMeta>> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = ?1 AND uid = ?2"
            ))
            .map_err(db_err)?
            .query_row(params![mailbox.0, uid.0], message_row)
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn store_flags(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
    ) -> StoreResult<Vec<MessageMeta>> {
        let uids = uids.to_vec();
        let flags = flags.clone();
        self.write(move |c| Ok(store_flags_tx(c, mailbox, &uids, op, &flags, None)?.changed))
            .await
    }

    async fn store_flags_unchanged_since(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: ModSeq,
    ) -> StoreResult<ConditionalStore> {
        let uids = uids.to_vec();
        let flags = flags.clone();
        self.write(move |c| store_flags_tx(c, mailbox, &uids, op, &flags, Some(unchanged_since)))
            .await
    }

    async fn expunge(&self, mailbox: MailboxId, uids: &[Uid]) -> StoreResult<Expunged> {
        let uids = uids.to_vec();
        self.write(move |c| expunge_tx(c, mailbox, &uids)).await
    }

    async fn expunge_deleted(
        &self,
        mailbox: MailboxId,
        only: Option<&[Uid]>,
    ) -> StoreResult<Expunged> {
        let only = only.map(|u| {
            u.iter()
                .copied()
                .collect::<std::collections::HashSet<Uid>>()
        });
        self.write(move |c| {
            // Read the flags inside the writer's transaction: nothing else writes between
            // this read and the removal, so a flag cleared by another session a moment ago
            // keeps its message.
            // Only the messages that may carry \\Deleted are read: the partial index
            // `messages_deleted` (schema v12) holds just those, so the cost follows the
            // number of deleted messages, not the mailbox's size. With `only` (UID EXPUNGE),
            // the named messages are looked up one by one when there are fewer of them.
            let candidates: Vec<(i64, String)> = match &only {
                Some(o) if o.len() <= EXPUNGE_LOOKUPS => {
                    let mut s = c
                        .prepare_cached(
                            "SELECT uid, flags FROM messages WHERE mailbox_id = ?1 AND uid = ?2",
                        )
                        .map_err(db_err)?;
                    let mut found = Vec::with_capacity(o.len());
                    for u in o {
                        if let Some(row) = s
                            .query_row(params![mailbox.0, u.0], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                            .map_err(db_err)?
                        {
                            found.push(row);
                        }
                    }
                    found.sort_unstable();
                    found
                }
                _ => c
                    .prepare_cached(
                        "SELECT uid, flags FROM messages INDEXED BY messages_deleted \
                         WHERE mailbox_id = ?1 AND flags LIKE '%\\Deleted%' ESCAPE '!' \
                         ORDER BY uid",
                    )
                    .map_err(db_err)?
                    .query_map([mailbox.0], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(db_err)?
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?,
            };
            let uids: Vec<Uid> = candidates
                .into_iter()
                .filter(|(_, f)| Flags::from_storage(f).contains("\\Deleted"))
                .map(|(u, _)| Uid(u as u32))
                .filter(|u| only.as_ref().is_none_or(|o| o.contains(u)))
                .collect();
            expunge_tx(c, mailbox, &uids)
        })
        .await
    }

    async fn changes_since(&self, mailbox: MailboxId, since: ModSeq) -> StoreResult<Vec<Change>> {
        Ok(self
            .read_changes(mailbox, since, false)
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .collect())
    }

    async fn changes_with_messages(
        &self,
        mailbox: MailboxId,
        since: ModSeq,
    ) -> StoreResult<Vec<(Change, Option<MessageMeta>)>> {
        self.read_changes(mailbox, since, true).await
    }

    async fn mailbox_usage(&self, mailbox: MailboxId) -> StoreResult<MailboxUsage> {
        self.read(move |c| {
            // Kept by triggers (schema v10): one row, whatever the mailbox's size.
            c.prepare_cached(
                "SELECT messages, unseen, size FROM mailbox_counts WHERE mailbox_id = ?1",
            )
            .map_err(db_err)?
            .query_row([mailbox.0], |r| {
                Ok(MailboxUsage {
                    messages: r.get::<_, i64>(0)?.max(0) as u64,
                    unseen: r.get::<_, i64>(1)?.max(0) as u64,
                    size: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })
            .optional()
            .map_err(db_err)
            .map(Option::unwrap_or_default)
        })
        .await
    }

    async fn message_summaries(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Vec<u8>)>> {
        let uids = uids.to_vec();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT summary FROM messages WHERE mailbox_id = ?1 AND uid = ?2 \
                     AND summary IS NOT NULL",
                )
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(uids.len());
            for uid in uids {
                if let Some(s) = stmt
                    .query_row(params![mailbox.0, uid.0], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(db_err)?
                {
                    out.push((uid, s));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn message_save_dates(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, Option<i64>)>> {
        let uids = uids.to_vec();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT save_date FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(uids.len());
            for uid in uids {
                if let Some(d) = stmt
                    .query_row(params![mailbox.0, uid.0], |r| r.get::<_, Option<i64>>(0))
                    .optional()
                    .map_err(db_err)?
                {
                    out.push((uid, d));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn message_object_ids(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, MessageObjectIds)>> {
        let uids = uids.to_vec();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT email_id, thread_id FROM messages WHERE mailbox_id = ?1 AND uid = ?2",
                )
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(uids.len());
            for uid in uids {
                let row = stmt
                    .query_row(params![mailbox.0, uid.0], |r| {
                        Ok((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, Option<String>>(1)?,
                        ))
                    })
                    .optional()
                    .map_err(db_err)?;
                if let Some((e, t)) = row {
                    let legacy = crate::object_id::legacy_ids(mailbox, uid);
                    out.push((
                        uid,
                        MessageObjectIds {
                            email_id: e.unwrap_or(legacy.email_id),
                            thread_id: t.unwrap_or(legacy.thread_id),
                        },
                    ));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn message_traces(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> StoreResult<Vec<(Uid, String)>> {
        let uids = uids.to_vec();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT trace FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
                .map_err(db_err)?;
            let mut out = Vec::new();
            for uid in uids {
                let trace: Option<Option<String>> = stmt
                    .query_row(params![mailbox.0, uid.0], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?;
                if let Some(t) = trace.flatten() {
                    out.push((uid, t));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn find_by_object_id(
        &self,
        account: AccountId,
        mailbox: Option<MailboxId>,
        id: &str,
        limit: usize,
    ) -> StoreResult<Vec<(MailboxId, Uid)>> {
        let sql = match crate::ObjectIdKind::of(id) {
            Some(crate::ObjectIdKind::Email) => {
                "SELECT m.mailbox_id, m.uid FROM messages m JOIN mailboxes b \
                 ON b.id = m.mailbox_id WHERE m.email_id = ?1 AND b.account_id = ?2 \
                 AND (?3 IS NULL OR m.mailbox_id = ?3) ORDER BY m.mailbox_id, m.uid LIMIT ?4"
            }
            Some(crate::ObjectIdKind::Thread) => {
                "SELECT m.mailbox_id, m.uid FROM messages m JOIN mailboxes b \
                 ON b.id = m.mailbox_id WHERE m.thread_id = ?1 AND b.account_id = ?2 \
                 AND (?3 IS NULL OR m.mailbox_id = ?3) ORDER BY m.mailbox_id, m.uid LIMIT ?4"
            }
            None => return Ok(Vec::new()),
        };
        let id = id.to_string();
        let limit = limit.min(i64::MAX as usize) as i64;
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql).map_err(db_err)?;
            let rows = stmt
                .query_map(params![id, account.0, mailbox.map(|m| m.0), limit], |r| {
                    Ok((MailboxId(r.get(0)?), Uid(r.get::<_, i64>(1)? as u32)))
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn set_message_summary(
        &self,
        mailbox: MailboxId,
        uid: Uid,
        summary: Vec<u8>,
    ) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "UPDATE messages SET summary = ?1 WHERE mailbox_id = ?2 AND uid = ?3",
                params![summary, mailbox.0, uid.0],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn copy_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<Vec<Copied>> {
        let uids = uids.to_vec();
        let copied = self
            .write(move |c| Ok(copy_tx(c, account, source, &uids, dest, false)?.0))
            .await?;
        self.copied_texts(!copied.is_empty()).await;
        Ok(copied)
    }

    async fn move_messages(
        &self,
        account: AccountId,
        source: MailboxId,
        uids: &[Uid],
        dest: MailboxId,
    ) -> StoreResult<(Vec<Copied>, Expunged)> {
        let uids = uids.to_vec();
        let moved = self
            .write(move |c| copy_tx(c, account, source, &uids, dest, true))
            .await?;
        self.copied_texts(!moved.0.is_empty()).await;
        Ok(moved)
    }

    async fn index_text(
        &self,
        mailbox: MailboxId,
        entries: Vec<(Uid, crate::MessageText)>,
    ) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.index_job(move |done| IndexJob::Texts {
            mailbox,
            entries,
            done,
        })
        .await
    }

    async fn search_text(
        &self,
        mailbox: MailboxId,
        fields: &[String],
        needle: &str,
    ) -> StoreResult<Option<crate::TextMatches>> {
        let fields = fields.to_vec();
        let needle = needle.to_string();
        self.read(move |c| super::fts_sqlite::search(c, mailbox, &fields, &needle))
            .await
    }

    async fn unindexed_messages(
        &self,
        mailbox: MailboxId,
        after: Uid,
        limit: usize,
    ) -> StoreResult<Vec<Uid>> {
        self.read(move |c| super::fts_sqlite::unindexed(c, mailbox, after, limit))
            .await
    }

    async fn subscribe(&self, account: AccountId, name: &str) -> StoreResult<()> {
        validate_mailbox_name(name)?;
        let name = name.to_string();
        self.write(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO subscriptions (account_id, name) VALUES (?1, ?2)",
                params![account.0, name],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn unsubscribe(&self, account: AccountId, name: &str) -> StoreResult<()> {
        let name = name.to_string();
        self.write(move |c| {
            c.execute(
                "DELETE FROM subscriptions WHERE account_id = ?1 AND name = ?2",
                params![account.0, name],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn subscriptions(&self, account: AccountId) -> StoreResult<Vec<String>> {
        self.read(move |c| {
            let mut s = c
                .prepare("SELECT name FROM subscriptions WHERE account_id = ?1 ORDER BY name")
                .map_err(db_err)?;
            let rows = s.query_map([account.0], |r| r.get(0)).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn orphaned_blobs(
        &self,
        older_than: i64,
        limit: usize,
    ) -> StoreResult<super::OrphanPage> {
        self.read(move |c| {
            let mut s = c
                .prepare("SELECT blob_id FROM blob_orphans WHERE since < ?1 LIMIT ?2")
                .map_err(db_err)?;
            let rows: Vec<String> = s
                .query_map(params![older_than, limit as i64], |r| r.get(0))
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            Ok(super::OrphanPage {
                more: rows.len() >= limit,
                blobs: rows.iter().filter_map(|b| BlobId::parse(b)).collect(),
            })
        })
        .await
    }

    async fn claim_orphan(&self, id: &BlobId, older_than: i64) -> StoreResult<bool> {
        let id = id.as_str().to_string();
        self.write(move |c| {
            // One transaction: nothing can reference, pin or re-orphan the blob between
            // these reads and the claim.
            let Some(since) = c
                .query_row(
                    "SELECT since FROM blob_orphans WHERE blob_id = ?1",
                    [&id],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map_err(db_err)?
            else {
                return Ok(false);
            };
            let referenced: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM blobs WHERE blob_id = ?1 AND refcount > 0",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if referenced > 0 {
                c.execute("DELETE FROM blob_orphans WHERE blob_id = ?1", [&id])
                    .map_err(db_err)?;
                return Ok(false);
            }
            if since >= older_than {
                return Ok(false);
            }
            let pinned: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM blob_pins WHERE blob_id = ?1 AND at >= ?2",
                    params![&id, older_than],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if pinned > 0 {
                return Ok(false);
            }
            c.execute("DELETE FROM blob_pins WHERE blob_id = ?1", [&id])
                .map_err(db_err)?;
            c.execute(
                "UPDATE blob_orphans SET claimed = ?1 WHERE blob_id = ?2",
                params![now_secs(), &id],
            )
            .map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn finish_orphan(&self, id: &BlobId) -> StoreResult<()> {
        let id = id.as_str().to_string();
        self.write(move |c| {
            c.execute(
                "DELETE FROM blob_orphans WHERE blob_id = ?1 AND claimed IS NOT NULL",
                [&id],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn pin_blob(&self, id: &BlobId) -> StoreResult<()> {
        let id = id.as_str().to_string();
        // Fast path, a read instead of a commit: a blob with no orphan record at this moment
        // needs no pin row. Any record made later has `since` at or after now, and the sweep
        // claims only records older than its grace period, so the blob is safe until now +
        // grace: exactly what a pin taken now would give. Every delivery's body is new or
        // referenced, so this spares each one a round through the writer and its fsync.
        let probe = id.clone();
        let orphaned = self
            .read(move |c| {
                c.prepare_cached("SELECT 1 FROM blob_orphans WHERE blob_id = ?1")
                    .and_then(|mut s| s.exists([&probe]))
                    .map_err(db_err)
            })
            .await?;
        if !orphaned {
            return Ok(());
        }
        self.write(move |c| {
            let claimed: Option<Option<i64>> = c
                .query_row(
                    "SELECT claimed FROM blob_orphans WHERE blob_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if claimed.flatten().is_some() {
                return Err(StoreError::Unavailable(format!(
                    "blob {id} is being deleted by the orphan sweep; try again"
                )));
            }
            c.execute(
                "INSERT INTO blob_pins (blob_id, at) VALUES (?1, ?2) \
                 ON CONFLICT (blob_id) DO UPDATE SET at = excluded.at",
                params![&id, now_secs()],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn create_app_password(
        &self,
        account: AccountId,
        new: crate::NewAppPassword,
    ) -> StoreResult<crate::AppPassword> {
        self.write(move |c| {
            let id: i64 = c
                .query_row(
                    "INSERT INTO app_passwords (account_id, name, tag, hash, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                    params![account.0, new.name, new.tag, new.hash, new.created_at],
                    |r| r.get(0),
                )
                .map_err(|e| match db_err(e) {
                    StoreError::Conflict(m) if m.contains("FOREIGN KEY") => {
                        StoreError::NotFound(format!("account {account}"))
                    }
                    StoreError::Conflict(_) => {
                        StoreError::Conflict(format!("app password {}", new.name))
                    }
                    o => o,
                })?;
            Ok(crate::AppPassword {
                id: crate::AppPasswordId(id),
                account,
                name: new.name,
                tag: new.tag,
                hash: new.hash,
                created_at: new.created_at,
                last_used: None,
            })
        })
        .await
    }

    async fn list_app_passwords(&self, account: AccountId) -> StoreResult<Vec<crate::AppPassword>> {
        self.read(move |c| {
            let mut s = c
                .prepare(&format!(
                    "SELECT {APP_PASSWORD_COLS} FROM app_passwords WHERE account_id = ?1 \
                     ORDER BY name"
                ))
                .map_err(db_err)?;
            let rows = s.query_map([account.0], app_password_row).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn find_app_password(
        &self,
        account: AccountId,
        tag: &str,
    ) -> StoreResult<Option<crate::AppPassword>> {
        let tag = tag.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {APP_PASSWORD_COLS} FROM app_passwords WHERE account_id = ?1 AND tag = ?2"
            ))
            .map_err(db_err)?
            .query_row(params![account.0, tag], app_password_row)
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn add_dkim_key(&self, key: crate::DkimKey) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO dkim_keys (domain, selector, algorithm, private_der, state, \
                 created_at, state_since) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    key.domain,
                    key.selector,
                    key.algorithm.as_str(),
                    key.private_der,
                    key.state.as_str(),
                    key.created_at,
                    key.state_since
                ],
            )
            .map_err(|e| match db_err(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "DKIM selector {} of {}",
                    key.selector, key.domain
                )),
                other => other,
            })?;
            Ok(())
        })
        .await
    }

    async fn dkim_keys(&self, domain: &str) -> StoreResult<Vec<crate::DkimKey>> {
        let domain = domain.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT selector, algorithm, private_der, state, created_at, state_since \
                     FROM dkim_keys WHERE domain = ?1 ORDER BY created_at, selector",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([&domain], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (selector, algorithm, private_der, state, created_at, state_since) =
                    row.map_err(db_err)?;
                out.push(crate::DkimKey {
                    domain: domain.clone(),
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
            Ok(out)
        })
        .await
    }

    async fn set_dkim_key_state(
        &self,
        domain: &str,
        selector: &str,
        state: crate::DkimKeyState,
        at: i64,
    ) -> StoreResult<()> {
        let (domain, selector) = (domain.to_string(), selector.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE dkim_keys SET state = ?1, state_since = ?2 \
                     WHERE domain = ?3 AND selector = ?4",
                    params![state.as_str(), at, domain, selector],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "DKIM selector {selector} of {domain}"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn delete_dkim_key(&self, domain: &str, selector: &str) -> StoreResult<()> {
        let (domain, selector) = (domain.to_string(), selector.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM dkim_keys WHERE domain = ?1 AND selector = ?2",
                    params![domain, selector],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "DKIM selector {selector} of {domain}"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn revoke_app_password(&self, account: AccountId, name: &str) -> StoreResult<()> {
        let name = name.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM app_passwords WHERE account_id = ?1 AND name = ?2",
                    params![account.0, name],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("app password {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn touch_app_password(&self, id: crate::AppPasswordId, at: i64) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "UPDATE app_passwords SET last_used = ?1 WHERE id = ?2",
                params![at, id.0],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn set_totp_secret(
        &self,
        account: AccountId,
        secret: Option<crate::TotpSecret>,
    ) -> StoreResult<()> {
        self.write(move |c| {
            let exists: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM accounts WHERE id = ?1",
                    [account.0],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if exists == 0 {
                return Err(StoreError::NotFound(format!("account {account}")));
            }
            match secret {
                Some(t) => c.execute(
                    "INSERT OR REPLACE INTO totp_secrets (account_id, secret, created_at) \
                     VALUES (?1, ?2, ?3)",
                    params![account.0, t.secret, t.created_at],
                ),
                None => c.execute(
                    "DELETE FROM totp_secrets WHERE account_id = ?1",
                    [account.0],
                ),
            }
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn totp_secret(&self, account: AccountId) -> StoreResult<Option<crate::TotpSecret>> {
        self.read(move |c| {
            c.prepare_cached("SELECT secret, created_at FROM totp_secrets WHERE account_id = ?1")
                .map_err(db_err)?
                .query_row([account.0], |r| {
                    Ok(crate::TotpSecret {
                        secret: r.get(0)?,
                        created_at: r.get(1)?,
                    })
                })
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn claim_recent(&self, mailbox: MailboxId, up_to: Uid) -> StoreResult<Uid> {
        self.write(move |c| {
            let exists: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM mailboxes WHERE id = ?1",
                    [mailbox.0],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if exists == 0 {
                return Err(StoreError::NotFound(format!("mailbox {mailbox}")));
            }
            // One write transaction: the read and the raise cannot interleave with another
            // session's claim.
            let old: i64 = c
                .query_row(
                    "SELECT uid FROM recent_marks WHERE mailbox_id = ?1",
                    [mailbox.0],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?
                .unwrap_or(0);
            if i64::from(up_to.0) > old {
                c.execute(
                    "INSERT INTO recent_marks (mailbox_id, uid) VALUES (?1, ?2) \
                     ON CONFLICT (mailbox_id) DO UPDATE SET uid = excluded.uid",
                    params![mailbox.0, i64::from(up_to.0)],
                )
                .map_err(db_err)?;
            }
            Ok(Uid(u32::try_from(old).unwrap_or(u32::MAX)))
        })
        .await
    }

    async fn accept_totp_step(&self, account: AccountId, step: u64) -> StoreResult<bool> {
        let step = i64::try_from(step)
            .map_err(|_| StoreError::Invalid(format!("TOTP step {step} out of range")))?;
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE totp_secrets SET last_step = ?1 WHERE account_id = ?2 \
                     AND (last_step IS NULL OR last_step < ?1)",
                    params![step, account.0],
                )
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn get_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<Option<crate::Datum>> {
        let (kind, key) = (kind.to_string(), key.to_string());
        let now = crate::data::now();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT value, version, expires_at FROM records \
                 WHERE scope = ?1 AND kind = ?2 AND key = ?3 \
                 AND (expires_at IS NULL OR expires_at > ?4)",
            )
            .map_err(db_err)?
            .query_row(params![scope.code(), kind, key, now], |r| {
                Ok(crate::Datum {
                    value: r.get(0)?,
                    version: r.get::<_, i64>(1)? as u64,
                    expires_at: r.get(2)?,
                })
            })
            .optional()
            .map_err(db_err)
        })
        .await
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
        let (kind, key) = (kind.to_string(), key.to_string());
        let now = crate::data::now();
        self.write(move |c| {
            // One write transaction: the read of the version and the write cannot
            // interleave with another writer's.
            let current: Option<i64> = c
                .prepare_cached(
                    "SELECT version FROM records WHERE scope = ?1 AND kind = ?2 AND key = ?3 \
                     AND (expires_at IS NULL OR expires_at > ?4)",
                )
                .map_err(db_err)?
                .query_row(params![scope.code(), kind, key, now], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            let holds = match (expect, current) {
                (crate::Expect::Any, _) => true,
                (crate::Expect::Absent, c) => c.is_none(),
                (crate::Expect::Version(v), Some(c)) => c as u64 == v,
                (crate::Expect::Version(_), None) => false,
            };
            if !holds {
                return Err(StoreError::Conflict(format!(
                    "record {kind}/{key}: expected {expect:?}, found version {current:?}"
                )));
            }
            let version = current.unwrap_or(0) + 1;
            c.prepare_cached(
                "INSERT INTO records (scope, kind, key, value, version, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (scope, kind, key) DO UPDATE \
                 SET value = excluded.value, version = excluded.version, \
                 expires_at = excluded.expires_at",
            )
            .map_err(db_err)?
            .execute(params![scope.code(), kind, key, value, version, expires_at])
            .map_err(db_err)?;
            // Expired records of the kind go with the next write of it.
            c.prepare_cached(
                "DELETE FROM records WHERE scope = ?1 AND kind = ?2 AND expires_at <= ?3",
            )
            .map_err(db_err)?
            .execute(params![scope.code(), kind, now])
            .map_err(db_err)?;
            Ok(version as u64)
        })
        .await
    }

    async fn delete_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        key: &str,
    ) -> StoreResult<bool> {
        let (kind, key) = (kind.to_string(), key.to_string());
        let now = crate::data::now();
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM records WHERE scope = ?1 AND kind = ?2 AND key = ?3 \
                     AND (expires_at IS NULL OR expires_at > ?4)",
                    params![scope.code(), kind, key, now],
                )
                .map_err(db_err)?;
            // An expired record is not there to delete, but its row goes too.
            c.execute(
                "DELETE FROM records WHERE scope = ?1 AND kind = ?2 AND key = ?3",
                params![scope.code(), kind, key],
            )
            .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_data(
        &self,
        scope: crate::DataScope,
        kind: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, crate::Datum)>> {
        let kind = kind.to_string();
        let now = crate::data::now();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT key, value, version, expires_at FROM records \
                     WHERE scope = ?1 AND kind = ?2 AND (expires_at IS NULL OR expires_at > ?3) \
                     ORDER BY key LIMIT ?4",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map(params![scope.code(), kind, now, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        crate::Datum {
                            value: r.get(1)?,
                            version: r.get::<_, i64>(2)? as u64,
                            expires_at: r.get(3)?,
                        },
                    ))
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn grant_sender(&self, account: AccountId, address: &str) -> StoreResult<()> {
        let address = address.to_lowercase();
        if address.is_empty() || !address.contains('@') || address.len() > 255 {
            return Err(StoreError::Invalid(format!(
                "'{address}' is neither local@domain nor @domain"
            )));
        }
        self.write(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO sender_grants (account_id, address) VALUES (?1, ?2)",
                params![account.0, address],
            )
            .map_err(|e| match db_err(e) {
                StoreError::Conflict(_) => StoreError::NotFound(format!("account {account}")),
                o => o,
            })?;
            Ok(())
        })
        .await
    }

    async fn revoke_sender(&self, account: AccountId, address: &str) -> StoreResult<()> {
        let address = address.to_lowercase();
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM sender_grants WHERE account_id = ?1 AND address = ?2",
                    params![account.0, address],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("sender grant {address}")));
            }
            Ok(())
        })
        .await
    }

    async fn sender_grants(&self, account: AccountId) -> StoreResult<Vec<String>> {
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT address FROM sender_grants WHERE account_id = ?1 ORDER BY address",
                )
                .map_err(db_err)?;
            let rows = s.query_map([account.0], |r| r.get(0)).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
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
        self.write(move |c| {
            let id = insert_outbound(c, &msg)?;
            load_outbound(c, crate::QueueId(id))?
                .ok_or_else(|| StoreError::Corrupt(format!("queue entry {id} vanished")))
        })
        .await
    }

    async fn get_outbound(
        &self,
        id: crate::QueueId,
    ) -> StoreResult<Option<crate::OutboundMessage>> {
        self.read(move |c| load_outbound(c, id)).await
    }

    async fn list_outbound(
        &self,
        after: crate::QueueId,
        limit: usize,
    ) -> StoreResult<Vec<crate::OutboundMessage>> {
        self.read(move |c| {
            let ids: Vec<i64> = c
                .prepare_cached("SELECT id FROM outbound WHERE id > ?1 ORDER BY id LIMIT ?2")
                .map_err(db_err)?
                .query_map(params![after.0, limit.min(i64::MAX as usize) as i64], |r| {
                    r.get(0)
                })
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(m) = load_outbound(c, crate::QueueId(id))? {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn update_outbound_recipient(
        &self,
        id: crate::QueueId,
        address: &str,
        update: crate::RecipientUpdate,
    ) -> StoreResult<()> {
        let address = address.to_string();
        self.write(move |c| {
            check_fence(c, id, update.fence)?;
            // An outcome makes every earlier read stale for a claim.
            c.prepare_cached("UPDATE outbound SET version = version + 1 WHERE id = ?1")
                .map_err(db_err)?
                .execute([id.0])
                .map_err(db_err)?;
            let n = c
                .execute(
                    "UPDATE outbound_rcpts SET state = ?1, attempts = attempts + 1, \
                     next_attempt = ?2, last_error = ?3, delay_warned = MAX(delay_warned, ?4) \
                     WHERE queue_id = ?5 AND address = ?6",
                    params![
                        recipient_state_code(update.state),
                        update.next_attempt,
                        update.last_error,
                        update.delay_warned,
                        id.0,
                        address
                    ],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "recipient {address} of queue entry {id}"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn claim_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        seen: u64,
        claims: Vec<(String, i64)>,
    ) -> StoreResult<u64> {
        self.write(move |c| {
            require_outbound(c, id)?;
            check_fence(c, id, fence)?;
            let seen = i64::try_from(seen).map_err(|_| {
                StoreError::Invalid(format!("queue entry version {seen} out of range"))
            })?;
            let bumped = c
                .prepare_cached(
                    "UPDATE outbound SET version = version + 1 WHERE id = ?1 AND version = ?2",
                )
                .map_err(db_err)?
                .execute(params![id.0, seen])
                .map_err(db_err)?;
            if bumped == 0 {
                // The job's savepoint rolls back with the error: the fence stays as it was.
                return Err(StoreError::Conflict(format!(
                    "queue entry {id}: another attempt was claimed since it was read"
                )));
            }
            for (address, at) in &claims {
                let state: i64 = c
                    .prepare_cached(
                        "SELECT state FROM outbound_rcpts WHERE queue_id = ?1 AND address = ?2",
                    )
                    .map_err(db_err)?
                    .query_row(params![id.0, address], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?
                    .ok_or_else(|| {
                        StoreError::NotFound(format!("recipient {address} of queue entry {id}"))
                    })?;
                if state != recipient_state_code(crate::RecipientState::Queued) {
                    continue;
                }
                c.prepare_cached(
                    "UPDATE outbound_rcpts SET attempts = attempts + 1, next_attempt = ?1 \
                     WHERE queue_id = ?2 AND address = ?3",
                )
                .map_err(db_err)?
                .execute(params![at, id.0, address])
                .map_err(db_err)?;
            }
            Ok(seen as u64 + 1)
        })
        .await
    }

    async fn record_outbound_attempt(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
        updates: Vec<(String, crate::RecipientUpdate)>,
        dsns: Vec<crate::NewOutbound>,
    ) -> StoreResult<Vec<crate::QueueId>> {
        self.write(move |c| {
            require_outbound(c, id)?;
            check_fence(c, id, fence)?;
            // An outcome makes every earlier read stale for a claim.
            c.prepare_cached("UPDATE outbound SET version = version + 1 WHERE id = ?1")
                .map_err(db_err)?
                .execute([id.0])
                .map_err(db_err)?;
            for (address, update) in &updates {
                let n = c
                    .prepare_cached(
                        "UPDATE outbound_rcpts SET state = ?1, next_attempt = ?2, \
                         last_error = ?3, delay_warned = MAX(delay_warned, ?4) \
                         WHERE queue_id = ?5 AND address = ?6",
                    )
                    .map_err(db_err)?
                    .execute(params![
                        recipient_state_code(update.state),
                        update.next_attempt,
                        update.last_error,
                        update.delay_warned,
                        id.0,
                        address
                    ])
                    .map_err(db_err)?;
                if n == 0 {
                    // The savepoint rolls back the updates already made: all or nothing.
                    return Err(StoreError::NotFound(format!(
                        "recipient {address} of queue entry {id}"
                    )));
                }
            }
            dsns.iter()
                .map(|d| insert_outbound(c, d).map(crate::QueueId))
                .collect()
        })
        .await
    }

    async fn delete_outbound(
        &self,
        id: crate::QueueId,
        fence: Option<u64>,
    ) -> StoreResult<Vec<BlobId>> {
        self.write(move |c| {
            check_fence(c, id, fence)?;
            let blob: String = c
                .query_row(
                    "DELETE FROM outbound WHERE id = ?1 RETURNING blob_id",
                    [id.0],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?
                .ok_or_else(|| StoreError::NotFound(format!("queue entry {id}")))?;
            release_blobs(c, &[blob])
        })
        .await
    }

    async fn due_outbound(
        &self,
        shard: u32,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<crate::QueueId>> {
        if shard != 0 {
            return Err(StoreError::Invalid(format!("no queue shard {shard}")));
        }
        self.read(move |c| {
            // Served by the (state, next_attempt) index; 0 is `Queued`.
            let mut s = c
                .prepare_cached(
                    "SELECT queue_id FROM outbound_rcpts WHERE state = 0 AND next_attempt <= ?1 \
                     GROUP BY queue_id ORDER BY MIN(next_attempt), queue_id LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = s
                .query_map(params![now, limit.min(i64::MAX as usize) as i64], |r| {
                    r.get(0).map(crate::QueueId)
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn outbound_queue_stats(&self, now: i64) -> StoreResult<crate::QueueStats> {
        self.read(move |c| {
            // One pass over the queued recipients (the (state, next_attempt) index), grouped
            // per entry, then per state.
            let mut s = c
                .prepare_cached(
                    "SELECT r.next <= ?1, COUNT(*), MIN(r.next), MIN(o.created_at) \
                     FROM (SELECT queue_id, MIN(next_attempt) AS next FROM outbound_rcpts \
                           WHERE state = 0 GROUP BY queue_id) r \
                     JOIN outbound o ON o.id = r.queue_id GROUP BY r.next <= ?1",
                )
                .map_err(db_err)?;
            let mut stats = crate::QueueStats::default();
            let rows = s
                .query_map([now], |r| {
                    Ok((
                        r.get::<_, bool>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(db_err)?;
            for row in rows {
                let (due, count, next, created) = row.map_err(db_err)?;
                let count = u64::try_from(count).unwrap_or(0);
                if due {
                    stats.due = count;
                    stats.due_since = Some(next);
                } else {
                    stats.deferred = count;
                    stats.oldest_deferred = Some(created);
                }
            }
            Ok(stats)
        })
        .await
    }

    async fn reschedule_outbound(&self, id: crate::QueueId, at: i64) -> StoreResult<usize> {
        self.write(move |c| {
            let exists: Option<i64> = c
                .query_row("SELECT id FROM outbound WHERE id = ?1", [id.0], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db_err)?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("queue entry {id}")));
            }
            c.execute(
                "UPDATE outbound_rcpts SET next_attempt = ?1 WHERE queue_id = ?2 AND state = 0",
                params![at, id.0],
            )
            .map_err(db_err)
        })
        .await
    }

    // ---- mailbox placeholders, ACLs, metadata ----

    async fn set_mailbox_noselect(
        &self,
        account: AccountId,
        id: MailboxId,
        noselect: bool,
    ) -> StoreResult<Vec<BlobId>> {
        self.write(move |c| {
            let owned: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM mailboxes WHERE id = ?1 AND account_id = ?2",
                    params![id.0, account.0],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if owned == 0 {
                return Err(StoreError::NotFound(format!("mailbox {id}")));
            }
            let orphaned = if noselect {
                purge_mailbox(c, id.0)?
            } else {
                Vec::new()
            };
            // A mailbox made again from a placeholder is a new mailbox: a new UIDVALIDITY
            // (RFC 9051 §2.3.1.1), above the old one so it differs.
            c.execute(
                "UPDATE mailboxes SET noselect = ?1, \
                 message_count = CASE WHEN ?1 = 1 THEN 0 ELSE message_count END, \
                 uid_validity = CASE WHEN ?1 = 0 AND noselect = 1 \
                 THEN (uid_validity % 2147483646) + 1 ELSE uid_validity END WHERE id = ?2",
                params![noselect as i64, id.0],
            )
            .map_err(db_err)?;
            Ok(orphaned)
        })
        .await
    }

    async fn set_acl(
        &self,
        owner: AccountId,
        mailbox: MailboxId,
        identifier: &str,
        rights: &str,
    ) -> StoreResult<()> {
        let (identifier, rights) = (identifier.to_string(), rights.to_string());
        self.write(move |c| {
            let owned: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM mailboxes WHERE id = ?1 AND account_id = ?2",
                    params![mailbox.0, owner.0],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if owned == 0 {
                return Err(StoreError::NotFound(format!("mailbox {mailbox}")));
            }
            if rights.is_empty() {
                c.execute(
                    "DELETE FROM acl WHERE mailbox_id = ?1 AND identifier = ?2",
                    params![mailbox.0, identifier],
                )
            } else {
                c.execute(
                    "INSERT INTO acl (mailbox_id, identifier, owner_id, rights) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (mailbox_id, identifier) \
                     DO UPDATE SET rights = excluded.rights",
                    params![mailbox.0, identifier, owner.0, rights],
                )
            }
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn get_acl(&self, mailbox: MailboxId) -> StoreResult<Vec<AclEntry>> {
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT identifier, rights FROM acl WHERE mailbox_id = ?1 ORDER BY identifier",
                )
                .map_err(db_err)?;
            let rows = s
                .query_map([mailbox.0], |r| {
                    Ok(AclEntry {
                        identifier: r.get(0)?,
                        rights: r.get(1)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn shared_with(&self, identifier: &str) -> StoreResult<Vec<SharedMailbox>> {
        let identifier = identifier.to_string();
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT owner_id, mailbox_id, rights FROM acl WHERE identifier = ?1 \
                     ORDER BY mailbox_id",
                )
                .map_err(db_err)?;
            let rows = s
                .query_map([identifier], |r| {
                    Ok(SharedMailbox {
                        owner: AccountId(r.get(0)?),
                        mailbox: MailboxId(r.get(1)?),
                        rights: r.get(2)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn get_metadata(&self, scope: MetadataScope) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT name, value FROM metadata WHERE account_id = ?1 AND mailbox_id = ?2 \
                     ORDER BY name",
                )
                .map_err(db_err)?;
            let rows = s
                .query_map(
                    params![scope.account.0, scope.mailbox.map_or(0, |m| m.0)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn set_metadata(
        &self,
        scope: MetadataScope,
        entries: Vec<(String, Option<Vec<u8>>)>,
        limits: MetadataLimits,
    ) -> StoreResult<()> {
        self.write(move |c| {
            let (a, m) = (scope.account.0, scope.mailbox.map_or(0, |m| m.0));
            if let Some(mb) = scope.mailbox {
                let exists: i64 = c
                    .query_row(
                        "SELECT COUNT(*) FROM mailboxes WHERE id = ?1",
                        [mb.0],
                        |r| r.get(0),
                    )
                    .map_err(db_err)?;
                if exists == 0 {
                    return Err(StoreError::NotFound(format!("mailbox {mb}")));
                }
            }
            // The writer runs one job at a time and a failed job is rolled back, so the
            // limit check below sees every committed entry and a refused write leaves none.
            for (name, value) in &entries {
                match value {
                    Some(v) => c.execute(
                        "INSERT INTO metadata (account_id, mailbox_id, name, value) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (account_id, mailbox_id, name) \
                         DO UPDATE SET value = excluded.value",
                        params![a, m, name, v],
                    ),
                    None => c.execute(
                        "DELETE FROM metadata WHERE account_id = ?1 AND mailbox_id = ?2 \
                         AND name = ?3",
                        params![a, m, name],
                    ),
                }
                .map_err(db_err)?;
            }
            let (count, bytes): (i64, i64) = c
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(name) + LENGTH(value)), 0) \
                     FROM metadata WHERE account_id = ?1 AND mailbox_id = ?2",
                    params![a, m],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db_err)?;
            if count as usize > limits.max_entries || bytes as u64 > limits.max_bytes {
                return Err(StoreError::QuotaExceeded(format!(
                    "metadata of mailbox {m}: {count} entries, {bytes} bytes"
                )));
            }
            Ok(())
        })
        .await
    }
}

// ---------- credentials and outbound queue rows ----------

/// Inserts a queue entry, its recipients and its blob reference; returns its id. Runs
/// inside the caller's transaction ([`MetadataStore::enqueue_outbound`], and the DSNs of
/// [`MetadataStore::record_outbound_attempt`]).
fn insert_outbound(c: &Connection, msg: &crate::NewOutbound) -> StoreResult<i64> {
    if msg.recipients.is_empty() {
        return Err(StoreError::Invalid(
            "a queued message needs a recipient".into(),
        ));
    }
    let id: i64 = c
        .query_row(
            "INSERT INTO outbound (blob_id, size, sender, account_id, envid, ret, created_at, \
             trace) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
            params![
                msg.blob.as_str(),
                msg.size as i64,
                msg.sender,
                msg.account.map(|a| a.0),
                msg.envid,
                msg.ret.map(|r| r.as_str()),
                msg.created_at,
                msg.trace
            ],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    for (seq, r) in msg.recipients.iter().enumerate() {
        c.prepare_cached(
            "INSERT INTO outbound_rcpts (queue_id, seq, address, state, next_attempt, \
             notify, orcpt) VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)",
        )
        .map_err(db_err)?
        .execute(params![
            id,
            seq as i64,
            r.address,
            msg.created_at,
            r.notify,
            r.orcpt
        ])
        .map_err(|e| match db_err(e) {
            StoreError::Conflict(_) => {
                StoreError::Invalid(format!("recipient {} listed twice", r.address))
            }
            o => o,
        })?;
    }
    // The queue holds the blob like a mailbox does: the orphan sweep must not take it.
    c.prepare_cached(
        "INSERT INTO blobs (blob_id, refcount) VALUES (?1, 1) \
         ON CONFLICT (blob_id) DO UPDATE SET refcount = refcount + 1",
    )
    .map_err(db_err)?
    .execute([msg.blob.as_str()])
    .map_err(db_err)?;
    c.prepare_cached("DELETE FROM blob_orphans WHERE blob_id = ?1")
        .map_err(db_err)?
        .execute([msg.blob.as_str()])
        .map_err(db_err)?;
    Ok(id)
}

/// `NotFound` unless queue entry `id` exists.
fn require_outbound(c: &Connection, id: crate::QueueId) -> StoreResult<()> {
    c.prepare_cached("SELECT id FROM outbound WHERE id = ?1")
        .map_err(db_err)?
        .query_row([id.0], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(db_err)?
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("queue entry {id}")))
}

/// Refuses a queue write from a lease older than one that already wrote to the entry, and
/// records `fence` otherwise. Runs inside the write's transaction, so check and record are
/// one step.
fn check_fence(c: &Connection, id: crate::QueueId, fence: Option<u64>) -> StoreResult<()> {
    let Some(token) = fence else {
        return Ok(());
    };
    let stored: i64 = c
        .prepare_cached("SELECT fence FROM outbound WHERE id = ?1")
        .map_err(db_err)?
        .query_row([id.0], |r| r.get(0))
        .optional()
        .map_err(db_err)?
        .ok_or_else(|| StoreError::NotFound(format!("queue entry {id}")))?;
    // Tokens are far below i64::MAX (Unix seconds << 20 plus a count).
    let token = i64::try_from(token)
        .map_err(|_| StoreError::Invalid(format!("lease token {token} out of range")))?;
    if stored > token {
        return Err(StoreError::Conflict(format!(
            "queue entry {id}: lease token {token} is older than {stored}, which already wrote to it"
        )));
    }
    if stored < token {
        c.prepare_cached("UPDATE outbound SET fence = ?1 WHERE id = ?2")
            .map_err(db_err)?
            .execute(params![token, id.0])
            .map_err(db_err)?;
    }
    Ok(())
}

const APP_PASSWORD_COLS: &str = "id, account_id, name, tag, hash, created_at, last_used";

fn app_password_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<crate::AppPassword> {
    Ok(crate::AppPassword {
        id: crate::AppPasswordId(r.get(0)?),
        account: AccountId(r.get(1)?),
        name: r.get(2)?,
        tag: r.get(3)?,
        hash: r.get(4)?,
        created_at: r.get(5)?,
        last_used: r.get(6)?,
    })
}

fn recipient_state_code(state: crate::RecipientState) -> i64 {
    match state {
        crate::RecipientState::Queued => 0,
        crate::RecipientState::Delivered => 1,
        crate::RecipientState::Failed => 2,
    }
}

fn recipient_state_from(code: i64) -> rusqlite::Result<crate::RecipientState> {
    match code {
        0 => Ok(crate::RecipientState::Queued),
        1 => Ok(crate::RecipientState::Delivered),
        2 => Ok(crate::RecipientState::Failed),
        other => Err(rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Integer,
            format!("bad recipient state {other}").into(),
        )),
    }
}

/// One queue entry with its recipients, in enqueue order.
fn load_outbound(
    c: &Connection,
    id: crate::QueueId,
) -> StoreResult<Option<crate::OutboundMessage>> {
    let head = c
        .prepare_cached(
            "SELECT blob_id, size, sender, account_id, envid, ret, created_at, trace, version \
             FROM outbound WHERE id = ?1",
        )
        .map_err(db_err)?
        .query_row([id.0], |r| {
            let blob: String = r.get(0)?;
            let ret: Option<String> = r.get(5)?;
            Ok(crate::OutboundMessage {
                id,
                blob: BlobId::parse(&blob).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        format!("bad blob id {blob}").into(),
                    )
                })?,
                size: r.get::<_, i64>(1)? as u64,
                sender: r.get(2)?,
                account: r.get::<_, Option<i64>>(3)?.map(AccountId),
                envid: r.get(4)?,
                ret: ret.as_deref().and_then(crate::DsnRet::parse),
                created_at: r.get(6)?,
                trace: r.get(7)?,
                recipients: Vec::new(),
                version: r.get::<_, i64>(8)? as u64,
            })
        })
        .optional()
        .map_err(db_err)?;
    let Some(mut msg) = head else {
        return Ok(None);
    };
    let mut s = c
        .prepare_cached(
            "SELECT address, state, attempts, next_attempt, last_error, notify, orcpt, \
             delay_warned FROM outbound_rcpts WHERE queue_id = ?1 ORDER BY seq",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map([id.0], |r| {
            Ok(crate::OutboundRecipient {
                address: r.get(0)?,
                state: recipient_state_from(r.get(1)?)?,
                attempts: r.get::<_, i64>(2)? as u32,
                next_attempt: r.get(3)?,
                last_error: r.get(4)?,
                notify: r.get(5)?,
                orcpt: r.get(6)?,
                delay_warned: r.get(7)?,
            })
        })
        .map_err(db_err)?;
    msg.recipients = rows.collect::<Result<_, _>>().map_err(db_err)?;
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn search(
        meta: &SqliteMetadataStore,
        mailbox: MailboxId,
        needle: &str,
    ) -> (Vec<u32>, Vec<u32>) {
        let r = meta
            .search_text(mailbox, &["body".into()], needle)
            .await
            .expect("search")
            .expect("answerable");
        (
            r.matched.iter().map(|u| u.0).collect(),
            r.unverified.iter().map(|u| u.0).collect(),
        )
    }

    /// A store at `path` with one account: the store, the account and its INBOX.
    async fn store_with_inbox(path: &Path) -> (SqliteMetadataStore, AccountId, MailboxId) {
        let meta = SqliteMetadataStore::open(path, 16).expect("open");
        meta.create_domain("example.test").await.expect("domain");
        let acct = meta
            .create_account("a@example.test", "$argon2id$x", 0)
            .await
            .expect("account");
        let inbox = meta.get_mailbox(acct.id, "INBOX").await.unwrap().unwrap();
        (meta, acct.id, inbox.id)
    }

    /// `n` small unflagged messages appended to `mailbox`; their UIDs.
    async fn append_plain(
        meta: &SqliteMetadataStore,
        account: AccountId,
        mailbox: MailboxId,
        n: u64,
    ) -> Vec<Uid> {
        let messages = (0..n)
            .map(|i| NewMessage {
                account,
                mailbox,
                blob: BlobId::of(format!("m{i}").as_bytes()),
                size: 100,
                internal_date: 0,
                flags: Flags::default(),
                summary: None,
                refs: Default::default(),
                trace: None,
            })
            .collect();
        meta.append(messages, QuotaPolicy::Allow)
            .await
            .expect("append")
            .iter()
            .map(|a| a.uid)
            .collect()
    }

    fn body_text(words: &str) -> crate::MessageText {
        crate::MessageText::from_pairs(vec![("body".into(), words.into())], true)
    }

    /// A database of schema v12 kept its index in its own file: after the upgrade the texts
    /// are in the index file, found by a search, and what was pending still is.
    #[tokio::test]
    async fn an_upgrade_moves_the_index_into_its_own_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.sqlite3");
        let index = fts_sqlite::index_path(&path);
        {
            let c = Connection::open(&path).expect("open");
            c.pragma_update(None, "journal_mode", "WAL").expect("wal");
            fts_sqlite::create_index(&index).expect("index file");
            migrate_to(&c, &index, 12).expect("v12");
            c.execute_batch(
                "INSERT INTO domains (id, name, created_at) VALUES (1, 'example.test', 0);
                 INSERT INTO accounts (id, domain_id, address, password_hash, created_at)
                     VALUES (1, 1, 'a@example.test', 'x', 0);
                 INSERT INTO mailboxes (id, account_id, name, uid_validity, uid_next)
                     VALUES (1, 1, 'INBOX', 1, 3);
                 INSERT INTO messages (mailbox_id, uid, modseq, blob_id, size, internal_date)
                     VALUES (1, 1, 1, 'b1', 10, 0), (1, 2, 2, 'b2', 10, 0);
                 INSERT INTO fts_docs (mailbox_id, uid, field, text)
                     VALUES (1, 1, 'body', 'zebra stripes');
                 DELETE FROM fts_pending WHERE uid = 1;",
            )
            .expect("v12 rows");
        }
        let meta = SqliteMetadataStore::open(&path, 16).expect("upgrade");
        assert_eq!(
            search(&meta, MailboxId(1), "zebra").await,
            (vec![1], vec![2])
        );
        let c = Connection::open(&path).expect("open");
        let tables: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('fts_docs', 'fts_text')",
                [],
                |r| r.get(0),
            )
            .expect("tables");
        assert_eq!(tables, 0, "the index left the metadata database");
        let i = Connection::open(&index).expect("index");
        let docs: i64 = i
            .query_row("SELECT COUNT(*) FROM fts_docs", [], |r| r.get(0))
            .expect("docs");
        assert_eq!(docs, 1);
    }

    /// Accounts and domains of schema v15 read with the default settings after the upgrade,
    /// and a v15 writer's INSERT (without the new columns) still works on the new schema.
    #[tokio::test]
    async fn an_upgrade_gives_old_accounts_the_default_settings() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.sqlite3");
        let index = fts_sqlite::index_path(&path);
        {
            let c = Connection::open(&path).expect("open");
            c.pragma_update(None, "journal_mode", "WAL").expect("wal");
            fts_sqlite::create_index(&index).expect("index file");
            migrate_to(&c, &index, 15).expect("v15");
            c.execute_batch(
                "INSERT INTO domains (id, name, created_at) VALUES (1, 'example.test', 0);
                 INSERT INTO accounts (id, domain_id, address, password_hash, created_at)
                     VALUES (1, 1, 'a@example.test', 'x', 0);",
            )
            .expect("v15 rows");
        }
        let meta = SqliteMetadataStore::open(&path, 16).expect("upgrade");
        let a = meta
            .get_account("a@example.test")
            .await
            .expect("get")
            .expect("account");
        assert_eq!(a.settings, AccountSettings::default());
        let d = meta
            .get_domain("example.test")
            .await
            .expect("get")
            .expect("domain");
        assert_eq!(d.managed_by, None);
        assert_eq!(d.quota_bytes, 0);
        let c = Connection::open(&path).expect("open");
        c.execute(
            "INSERT INTO accounts (id, domain_id, address, password_hash, created_at)
                 VALUES (2, 1, 'b@example.test', 'x', 0)",
            [],
        )
        .expect("an insert of the old schema");
        let b = meta
            .get_account("b@example.test")
            .await
            .expect("get")
            .expect("account");
        assert_eq!(b.settings.protocols, Protocols::ALL);
    }

    /// A database whose index file is gone (restored from a backup of the database alone)
    /// trusts no texts: every message is pending again, and the reindex list has them all.
    #[tokio::test]
    async fn a_missing_index_file_makes_every_message_pending() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.sqlite3");
        let (inbox, uid) = {
            let (meta, account, inbox) = store_with_inbox(&path).await;
            let uid = append_plain(&meta, account, inbox, 1).await[0];
            meta.index_text(inbox, vec![(uid, body_text("zebra"))])
                .await
                .expect("index");
            assert_eq!(search(&meta, inbox, "zebra").await, (vec![uid.0], vec![]));
            (inbox, uid)
        };
        let index = fts_sqlite::index_path(&path);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = index.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        let meta = SqliteMetadataStore::open(&path, 16).expect("reopen");
        assert_eq!(search(&meta, inbox, "zebra").await, (vec![], vec![uid.0]));
        assert_eq!(
            meta.unindexed_messages(inbox, Uid(0), 10)
                .await
                .expect("unindexed"),
            vec![uid]
        );
    }

    /// An expunged message is never a match (its texts wait in `fts_work`), and the index
    /// thread then drops its texts from the index file.
    #[tokio::test]
    async fn an_expunged_messages_texts_leave_the_index_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.sqlite3");
        let (meta, account, inbox) = store_with_inbox(&path).await;
        let uids = append_plain(&meta, account, inbox, 2).await;
        meta.index_text(
            inbox,
            vec![
                (uids[0], body_text("zebra one")),
                (uids[1], body_text("zebra two")),
            ],
        )
        .await
        .expect("index");
        assert_eq!(
            search(&meta, inbox, "zebra").await,
            (vec![uids[0].0, uids[1].0], vec![])
        );
        meta.expunge(inbox, &[uids[0]]).await.expect("expunge");
        assert_eq!(
            search(&meta, inbox, "zebra").await,
            (vec![uids[1].0], vec![]),
            "an expunged message is no match, even before its texts are dropped"
        );
        meta.index_job(IndexJob::Work).await.expect("work");
        let i = Connection::open(fts_sqlite::index_path(&path)).expect("index");
        let left: Vec<u32> = i
            .prepare("SELECT DISTINCT uid FROM fts_docs ORDER BY uid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, vec![uids[1].0]);
        let work: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM fts_work", [], |r| r.get(0))
            .unwrap();
        assert_eq!(work, 0, "applied work is deleted");
    }

    /// What the counters must equal: the scan `mailbox_usage` did before schema v10.
    fn scanned(path: &Path, mailbox: MailboxId) -> MailboxUsage {
        let c = Connection::open(path).expect("open");
        c.query_row(
            "SELECT COUNT(*), \
             COALESCE(SUM(CASE WHEN (' ' || flags || ' ') LIKE '% \\Seen %' THEN 0 ELSE 1 END), 0), \
             COALESCE(SUM(size), 0) FROM messages WHERE mailbox_id = ?1",
            [mailbox.0],
            |r| {
                Ok(MailboxUsage {
                    messages: r.get::<_, i64>(0)? as u64,
                    unseen: r.get::<_, i64>(1)? as u64,
                    size: r.get::<_, i64>(2)? as u64,
                })
            },
        )
        .expect("scan")
    }

    /// The trigger-kept counters (schema v10) agree with a scan after every kind of write:
    /// append (with and without `\Seen`), STORE of `\Seen` on and off and of other flags,
    /// COPY, MOVE, EXPUNGE, and DELETE of a mailbox.
    #[tokio::test]
    async fn mailbox_counts_follow_every_write() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.sqlite3");
        let meta = SqliteMetadataStore::open(&path, 16).expect("open");
        meta.create_domain("example.test").await.expect("domain");
        let acct = meta
            .create_account("a@example.test", "$argon2id$x", 0)
            .await
            .expect("account");
        let inbox = meta.get_mailbox(acct.id, "INBOX").await.unwrap().unwrap();
        let other = meta.create_mailbox(acct.id, "Other", None).await.unwrap();
        let m = &meta;
        let check = |label: &str| {
            let label = label.to_string();
            let path = path.clone();
            async move {
                for mb in [inbox.id, other.id] {
                    assert_eq!(
                        m.mailbox_usage(mb).await.expect("usage"),
                        scanned(&path, mb),
                        "{label}, mailbox {mb}"
                    );
                }
            }
        };
        let new = |i: u64, seen: bool| NewMessage {
            account: acct.id,
            mailbox: inbox.id,
            blob: BlobId::of(format!("m{i}").as_bytes()),
            size: 100 + i,
            internal_date: 0,
            flags: if seen {
                Flags::new(["\\Seen"])
            } else {
                Flags::default()
            },
            summary: None,
            refs: Default::default(),
            trace: None,
        };
        let appended = meta
            .append(
                (0..10).map(|i| new(i, i % 3 == 0)).collect(),
                QuotaPolicy::Allow,
            )
            .await
            .expect("append");
        check("append").await;
        let uids: Vec<Uid> = appended.iter().map(|a| a.uid).collect();
        let seen = Flags::new(["\\Seen"]);
        meta.store_flags(inbox.id, &uids[..5], FlagOp::Add, &seen)
            .await
            .unwrap();
        check("store +seen").await;
        meta.store_flags(inbox.id, &uids[2..4], FlagOp::Remove, &seen)
            .await
            .unwrap();
        check("store -seen").await;
        meta.store_flags(
            inbox.id,
            &uids,
            FlagOp::Replace,
            &Flags::new(["$x", "\\Flagged"]),
        )
        .await
        .unwrap();
        check("store replace").await;
        meta.copy_messages(acct.id, inbox.id, &uids[..4], other.id)
            .await
            .unwrap();
        check("copy").await;
        meta.move_messages(acct.id, inbox.id, &uids[4..7], other.id)
            .await
            .unwrap();
        check("move").await;
        meta.expunge(inbox.id, &uids[7..8]).await.unwrap();
        check("expunge").await;
        meta.delete_mailbox(acct.id, other.id).await.unwrap();
        assert_eq!(
            meta.mailbox_usage(other.id).await.unwrap(),
            MailboxUsage::default()
        );
        assert_eq!(
            meta.mailbox_usage(inbox.id).await.unwrap(),
            scanned(&path, inbox.id)
        );
    }

    /// A job that fails in a way that makes SQLite roll the whole transaction back (here
    /// an explicit ROLLBACK, the state SQLite leaves after `SQLITE_FULL` or `SQLITE_IOERR`)
    /// must not leave the jobs after it in autocommit: every caller's answer matches what
    /// is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_rolled_back_by_sqlite_keeps_every_answer_true() {
        let dir = tempfile::tempdir().expect("tmp");
        let store =
            Arc::new(SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 64).expect("open"));
        store
            .write(|c| {
                c.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)")
                    .map_err(db_err)
            })
            .await
            .expect("table");
        // Hold the writer in a batch of its own until the three jobs below are queued, so
        // they run as one group commit.
        let (release, hold) = mpsc::channel::<()>();
        let blocker = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(move |_| {
                        let _ = hold.recv_timeout(Duration::from_secs(10));
                        Ok(())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let insert = |v: i64| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(move |c| {
                        c.execute("INSERT INTO t (v) VALUES (?1)", [v])
                            .map_err(db_err)?;
                        Ok(())
                    })
                    .await
            })
        };
        let before = insert(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let failing = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(|c| {
                        c.execute("INSERT INTO t (v) VALUES (2)", [])
                            .map_err(db_err)?;
                        c.execute_batch("ROLLBACK").map_err(db_err)?;
                        Err::<(), _>(StoreError::Unavailable("database or disk is full".into()))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = insert(3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).expect("release the writer");
        blocker.await.expect("join").expect("blocker");
        let results = [
            (1, before.await.expect("join")),
            (2, failing.await.expect("join")),
            (3, after.await.expect("join")),
        ];
        let stored: Vec<i64> = store
            .read(|c| {
                let mut s = c.prepare("SELECT v FROM t ORDER BY v").map_err(db_err)?;
                let rows = s.query_map([], |r| r.get(0)).map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)
            })
            .await
            .expect("read");
        for (v, result) in &results {
            assert_eq!(
                result.is_ok(),
                stored.contains(v),
                "job {v} was answered {result:?} but the table holds {stored:?}"
            );
        }
        assert!(
            results[2].1.is_ok(),
            "the job after the rollback runs in a new transaction"
        );
        assert!(results[1].1.is_err());
    }
}
