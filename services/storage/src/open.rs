//! Opens the three stores the configuration names: each trait's backend is chosen on its
//! own (`storage.metadata`, `storage.blobs`, `storage.coordination`), so a test can mix a
//! shared SQLite file with S3 and Redis, and production runs ScyllaDB, S3 and Redis.

use crate::blob::cache::CachedBlobStore;
use crate::blob::fs::FsBlobStore;
use crate::blob::s3::S3BlobStore;
use crate::coord::local::LocalCoordinator;
use crate::coord::redis::RedisCoordinator;
use crate::metadata::scylla::ScyllaMetadataStore;
use crate::metadata::sqlite::SqliteMetadataStore;
use crate::metered::{MeteredBlobs, MeteredCoordinator, MeteredMeta};
use crate::{BlobStore, Coordinator, MetadataStore, StoreError, StoreResult, Stores};
use mailfleet_core::config::{BlobBackend, CoordinationBackend, MetadataBackend, StorageConfig};
use std::path::Path;
use std::sync::Arc;

/// Connects every configured backend. An error names the configuration section to look at.
pub async fn open(cfg: &StorageConfig, data_dir: &Path) -> StoreResult<Stores> {
    let context = |section: &str, e: StoreError| match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("[{section}]: {m}")),
        StoreError::Invalid(m) => StoreError::Invalid(format!("[{section}]: {m}")),
        other => other,
    };
    // Each backend is wrapped in the metered layer (`crate::metered`) under its name.
    let coord: Arc<dyn Coordinator> = match cfg.coordination {
        CoordinationBackend::Local => {
            MeteredCoordinator::wrap(Arc::new(LocalCoordinator::new()), "local")
        }
        CoordinationBackend::Redis => MeteredCoordinator::wrap(
            Arc::new(
                RedisCoordinator::connect(&cfg.redis)
                    .await
                    .map_err(|e| context("storage.redis", e))?,
            ),
            "redis",
        ),
    };
    let blobs: Arc<dyn BlobStore> = match cfg.blobs {
        BlobBackend::Local => {
            MeteredBlobs::wrap(Arc::new(FsBlobStore::open(data_dir.join("blobs"))?), "fs")
        }
        BlobBackend::S3 => {
            // Metered under the cache: the S3 series are real S3 calls, and the cache
            // counts its hits itself.
            let s3: Arc<dyn BlobStore> = MeteredBlobs::wrap(
                Arc::new(
                    S3BlobStore::connect(&cfg.s3)
                        .await
                        .map_err(|e| context("storage.s3", e))?,
                ),
                "s3",
            );
            match cfg.blob_cache_mib {
                0 => s3,
                mib => Arc::new(CachedBlobStore::new(s3, mib.saturating_mul(1024 * 1024))),
            }
        }
    };
    let meta: Arc<dyn MetadataStore> = match cfg.metadata {
        MetadataBackend::Sqlite => {
            let path = cfg
                .sqlite_path
                .clone()
                .unwrap_or_else(|| data_dir.join("metadata.sqlite3"));
            let max = cfg.group_commit_max;
            // Opening runs migrations and may wait on another process's lock: not on the
            // async threads.
            MeteredMeta::wrap(
                Arc::new(
                    tokio::task::spawn_blocking(move || SqliteMetadataStore::open(path, max))
                        .await
                        .map_err(|e| StoreError::Unavailable(format!("opening SQLite: {e}")))??,
                ),
                "sqlite",
            )
        }
        MetadataBackend::Scylla => MeteredMeta::wrap(
            Arc::new(
                ScyllaMetadataStore::connect(&cfg.scylla, coord.clone())
                    .await
                    .map_err(|e| context("storage.scylla", e))?,
            ),
            "scylla",
        ),
    };
    Ok(Stores::new(blobs, meta, coord))
}
