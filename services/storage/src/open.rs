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
    let coord: Arc<dyn Coordinator> = match cfg.coordination {
        CoordinationBackend::Local => Arc::new(LocalCoordinator::new()),
        CoordinationBackend::Redis => Arc::new(
            RedisCoordinator::connect(&cfg.redis)
                .await
                .map_err(|e| context("storage.redis", e))?,
        ),
    };
    let blobs: Arc<dyn BlobStore> = match cfg.blobs {
        BlobBackend::Local => Arc::new(FsBlobStore::open(data_dir.join("blobs"))?),
        BlobBackend::S3 => {
            let s3: Arc<dyn BlobStore> = Arc::new(
                S3BlobStore::connect(&cfg.s3)
                    .await
                    .map_err(|e| context("storage.s3", e))?,
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
            Arc::new(
                tokio::task::spawn_blocking(move || SqliteMetadataStore::open(path, max))
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("opening SQLite: {e}")))??,
            )
        }
        MetadataBackend::Scylla => Arc::new(
            ScyllaMetadataStore::connect(&cfg.scylla, coord.clone())
                .await
                .map_err(|e| context("storage.scylla", e))?,
        ),
    };
    Ok(Stores::new(blobs, meta, coord))
}
