//! The conformance suite against ScyllaDB, when one is reachable.
//!
//! Set `MAILFLEET_SCYLLA_NODES` to comma-separated `host:port` contact points to run it;
//! without it the test prints that it skipped and passes, so CI without ScyllaDB stays green.
//! Each run creates a fresh keyspace with a random name (replication factor 1 unless
//! `MAILFLEET_SCYLLA_RF` says otherwise), so runs never see each other's data.

use mailfleet_core::config::ScyllaConfig;
use mailfleet_storage::coord::local::LocalCoordinator;
use mailfleet_storage::metadata::scylla::ScyllaMetadataStore;
use mailfleet_storage::{conformance, Coordinator, MetadataStore};
use std::sync::Arc;

/// The cluster of `MAILFLEET_SCYLLA_NODES` with a fresh keyspace named `<prefix>_<random>`
/// (replication factor `MAILFLEET_SCYLLA_RF`, default 1); `None`, after saying the `what`
/// run is skipped, when the variable is not set.
fn scylla_config(prefix: &str, what: &str) -> Option<ScyllaConfig> {
    let Ok(nodes) = std::env::var("MAILFLEET_SCYLLA_NODES") else {
        println!("MAILFLEET_SCYLLA_NODES is not set: the ScyllaDB {what} run is skipped");
        return None;
    };
    Some(ScyllaConfig {
        nodes: nodes
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect(),
        keyspace: format!("{prefix}_{:012x}", rand::random::<u64>() >> 16),
        replication_factor: std::env::var("MAILFLEET_SCYLLA_RF")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        ..ScyllaConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_metadata_conformance() {
    let Some(cfg) = scylla_config("mailfleet_test", "conformance") else {
        return;
    };
    // One node: the in-process coordinator serialises mailbox writers just as Redis would.
    let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
    let meta: Arc<dyn MetadataStore> = Arc::new(
        ScyllaMetadataStore::connect(&cfg, coord)
            .await
            .expect("connect to ScyllaDB"),
    );
    // In order, on one store: the queue tests page by id and count due entries, which
    // entries of a concurrently running test could disturb.
    conformance::metadata_store(meta.as_ref()).await;
    conformance::metadata_concurrent_appends(meta.clone()).await;
    conformance::metadata_recent_claims(meta.clone()).await;
    conformance::metadata_save_dates(meta.as_ref()).await;
    conformance::metadata_usage_counts(meta.as_ref()).await;
    conformance::metadata_change_log_reads(meta.as_ref()).await;
    conformance::metadata_object_ids(meta.as_ref()).await;
    conformance::metadata_message_traces(meta.as_ref()).await;
    conformance::metadata_dkim_keys(meta.as_ref()).await;
    conformance::metadata_records(meta.as_ref()).await;
    conformance::metadata_sieve_scripts(meta.as_ref()).await;
    conformance::metadata_account_settings(meta.as_ref()).await;
    conformance::metadata_text_index(meta.as_ref()).await;
    conformance::metadata_credentials(meta.as_ref()).await;
    conformance::metadata_acl_and_annotations(meta.as_ref()).await;
    conformance::metadata_outbound_queue(meta.as_ref()).await;
    conformance::metadata_outbound_delivery(meta.as_ref()).await;
    conformance::metadata_outbound_stats(meta.as_ref()).await;
    conformance::metadata_outbound_attempts(meta.as_ref()).await;
    let blob_dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::Stores::new(
        Arc::new(mailfleet_storage::blob::fs::FsBlobStore::open(blob_dir.path()).expect("blobs")),
        meta.clone(),
        Arc::new(LocalCoordinator::new()),
    );
    conformance::blob_gc_races(&stores).await;
    conformance::blob_gc_collects_unreferenced_puts(&stores).await;
}

/// Issue 15, point 9: many pods starting at once against a new keyspace migrate it once
/// (one takes the migration lock, the others wait) and all come up on the current schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_concurrent_first_starts_migrate_once() {
    let Some(cfg) = scylla_config("mailfleet_mig", "migration") else {
        return;
    };
    let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
    let starts = (0..4).map(|_| {
        let cfg = cfg.clone();
        let coord = coord.clone();
        tokio::spawn(async move { ScyllaMetadataStore::connect(&cfg, coord).await })
    });
    for s in starts {
        let meta = s
            .await
            .expect("task")
            .expect("connect during a concurrent migration");
        // The schema is complete: a write touching the newest columns works.
        let domain = format!("{}.test", rand::random::<u32>());
        meta.create_domain(&domain).await.expect("domain");
    }
}

/// Issue 15, capacity model: the statements ScyllaDB receives per stored message and per
/// store call of the IMAP mix, by kind, printed for docs/capacity.md. Run with
/// `MAILFLEET_SCYLLA_NODES=... cargo test -p mailfleet-storage --test conformance_scylla
/// scylla_statement_counts -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_statement_counts() {
    let Some(cfg) = scylla_config("mailfleet_cap", "statement count") else {
        return;
    };
    let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
    let store = Arc::new(
        ScyllaMetadataStore::connect(&cfg, coord)
            .await
            .expect("connect to ScyllaDB"),
    );
    let counted = store.clone();
    let counts = move || counted.statement_counts().snapshot();
    let rows = conformance::capacity_counts(store.as_ref(), &counts).await;
    println!("step | reads | writes | LWTs | counter writes | batches | batched statements");
    for (step, c) in rows {
        println!(
            "{step} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}",
            c[0], c[1], c[2], c[3], c[4], c[5]
        );
    }
}
