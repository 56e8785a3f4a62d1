//! The conformance suite against the embedded backends.

use mailfleet_storage::blob::fs::FsBlobStore;
use mailfleet_storage::coord::local::LocalCoordinator;
use mailfleet_storage::metadata::sqlite::SqliteMetadataStore;
use mailfleet_storage::{blob, conformance, MetadataStore};
use std::sync::Arc;

#[tokio::test]
async fn fs_blob_store() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = FsBlobStore::open(dir.path()).expect("open");
    conformance::blob_store(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_metadata_store() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 64).expect("open");
    conformance::metadata_store(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_appends() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta: Arc<dyn MetadataStore> =
        Arc::new(SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 8).expect("open"));
    conformance::metadata_concurrent_appends(meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_recent_claims() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta: Arc<dyn MetadataStore> =
        Arc::new(SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 8).expect("open"));
    conformance::metadata_recent_claims(meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_change_log_reads() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 8).expect("open");
    conformance::metadata_change_log_reads(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_save_dates() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 8).expect("open");
    conformance::metadata_save_dates(&meta).await;
    conformance::metadata_usage_counts(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_object_ids() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 8).expect("open");
    conformance::metadata_object_ids(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acl_and_annotations() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 8).expect("open");
    conformance::metadata_acl_and_annotations(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_text_index() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 8).expect("open");
    conformance::metadata_text_index(&meta).await;
}

#[tokio::test]
async fn local_coordinator() {
    conformance::coordinator(&LocalCoordinator::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_reopen_and_gc_deletes_orphans() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("m.sqlite3");
    let blobs = FsBlobStore::open(dir.path().join("blobs")).expect("blobs");
    {
        let meta = SqliteMetadataStore::open(&path, 8).expect("open");
        meta.create_domain("persist.test").await.expect("domain");
        meta.create_account("u@persist.test", "h", 0)
            .await
            .expect("account");
    }
    let meta = SqliteMetadataStore::open(&path, 8).expect("reopen");
    let a = meta
        .get_account("u@persist.test")
        .await
        .expect("get")
        .expect("persisted");
    let inbox = meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    use mailfleet_storage::{BlobStore, Flags, NewMessage};
    let id = blobs
        .put(bytes::Bytes::from_static(b"gc me"))
        .await
        .expect("put");
    let appended = meta
        .append(
            vec![NewMessage {
                account: a.id,
                mailbox: inbox.id,
                blob: id.clone(),
                size: 5,
                internal_date: 0,
                flags: Flags::default(),
                summary: None,
                refs: Default::default(),
                trace: None,
            }],
            mailfleet_storage::metadata::QuotaPolicy::Enforce,
        )
        .await
        .expect("append");
    meta.expunge(inbox.id, &[appended[0].uid])
        .await
        .expect("expunge");
    // Within the grace period nothing is deleted.
    let now = 2_000_000_000;
    assert_eq!(
        blob::gc::collect(&meta, &blobs, 0, 3600, 100)
            .await
            .expect("gc"),
        0
    );
    assert!(blobs.exists(&id).await.expect("exists"));
    assert_eq!(
        blob::gc::collect(&meta, &blobs, now, 3600, 100)
            .await
            .expect("gc"),
        1
    );
    assert!(!blobs.exists(&id).await.expect("exists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_credentials() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 16).expect("open");
    conformance::metadata_credentials(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbound_queue() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 16).expect("open");
    conformance::metadata_outbound_queue(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_message_traces() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 16).expect("open");
    conformance::metadata_message_traces(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_account_settings() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 16).expect("open");
    conformance::metadata_account_settings(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_records() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 16).expect("open");
    conformance::metadata_records(&meta).await;
    conformance::metadata_sieve_scripts(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dkim_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 16).expect("open");
    conformance::metadata_dkim_keys(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbound_delivery() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 16).expect("open");
    conformance::metadata_outbound_delivery(&meta).await;
    conformance::metadata_outbound_stats(&meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbound_attempts() {
    let dir = tempfile::tempdir().expect("tmp");
    let meta = SqliteMetadataStore::open(dir.path().join("m.sqlite3"), 16).expect("open");
    conformance::metadata_outbound_attempts(&meta).await;
}

/// Mail at rest is private: blobs and the database 0600, directories 0700, whatever the
/// umask (the test process runs with the usual 022, which made them 0644/0755), and a data
/// directory left world-readable by an older build is tightened at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_at_rest_is_private() {
    use mailfleet_storage::{Flags, NewMessage};
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let stores = mailfleet_storage::embedded::open(&data, 8).expect("open");
    stores
        .meta
        .create_domain("modes.test")
        .await
        .expect("domain");
    let a = stores
        .meta
        .create_account("u@modes.test", "h", 0)
        .await
        .expect("account");
    let inbox = stores
        .meta
        .get_mailbox(a.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let body = bytes::Bytes::from_static(b"Subject: private\r\n\r\nsecret\r\n");
    let id = stores.blobs.put(body.clone()).await.expect("put");
    stores
        .meta
        .append(
            vec![NewMessage {
                account: a.id,
                mailbox: inbox.id,
                blob: id.clone(),
                size: body.len() as u64,
                internal_date: 0,
                flags: Flags::default(),
                summary: None,
                refs: Default::default(),
                trace: None,
            }],
            mailfleet_storage::metadata::QuotaPolicy::Enforce,
        )
        .await
        .expect("append");
    let s = id.as_str();
    let blobs = data.join("blobs");
    for d in [
        data.clone(),
        blobs.clone(),
        blobs.join("tmp"),
        blobs.join(&s[0..2]),
        blobs.join(&s[0..2]).join(&s[2..4]),
    ] {
        assert_eq!(mode(&d), 0o700, "directory {}", d.display());
    }
    let db = data.join("metadata.sqlite3");
    for f in [
        blobs.join(&s[0..2]).join(&s[2..4]).join(s),
        db.clone(),
        data.join("metadata.sqlite3-wal"),
        data.join("metadata.sqlite3-shm"),
    ] {
        assert_eq!(mode(&f), 0o600, "file {}", f.display());
    }
    drop(stores);

    // An existing, world-readable data directory is tightened when it is opened again.
    for (p, m) in [(&data, 0o755), (&blobs, 0o755), (&db, 0o644)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
    }
    let _stores = mailfleet_storage::embedded::open(&data, 8).expect("reopen");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&blobs), 0o700);
    assert_eq!(mode(&db), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_blob_gc_races() {
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 8).expect("open");
    conformance::blob_gc_races(&stores).await;
}
