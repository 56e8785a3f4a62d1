//! A bounded in-memory cache in front of a remote [`BlobStore`] (S3).
//!
//! # Why caching blobs is safe and worth it
//! Blobs are content-addressed: an id names one sequence of bytes forever, so a cached copy
//! can never be stale and needs no invalidation. A remote `GET` costs a network round trip
//! (milliseconds on AWS; Garage answers GETs about 40 ms late on loopback, see
//! docs/benchmarks.md), while an IMAP client commonly reads one message several times in a
//! row (headers, then the body, then parts), and a message just delivered is the one an
//! IDLE client fetches next: so writes fill the cache too. The local directory backend is
//! not wrapped: the kernel's page cache does this job there.
//!
//! The cache holds whole blobs up to [`MAX_CACHED_BLOB`] bytes and at most `capacity` bytes
//! in total (moka's weighted TinyLFU eviction); ranged reads are served from a cached whole
//! blob when there is one. Deletes drop the entry.

use super::BlobStore;
use crate::types::BlobId;
use crate::StoreResult;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// Larger blobs bypass the cache: one big attachment must not evict hundreds of messages.
pub const MAX_CACHED_BLOB: usize = 1024 * 1024;

pub struct CachedBlobStore {
    inner: Arc<dyn BlobStore>,
    cache: moka::sync::Cache<BlobId, Bytes>,
}

impl CachedBlobStore {
    /// Caches up to `capacity_bytes` of blobs read from or written to `inner`.
    pub fn new(inner: Arc<dyn BlobStore>, capacity_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|id: &BlobId, b: &Bytes| {
                u32::try_from(b.len() + id.as_str().len()).unwrap_or(u32::MAX)
            })
            .build();
        Self { inner, cache }
    }

    fn remember(&self, id: &BlobId, data: &Bytes) {
        if data.len() <= MAX_CACHED_BLOB {
            self.cache.insert(id.clone(), data.clone());
        }
    }

    /// Blobs held now (tests and metrics).
    pub fn cached_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

#[async_trait]
impl BlobStore for CachedBlobStore {
    async fn put(&self, data: Bytes) -> StoreResult<BlobId> {
        let id = self.inner.put(data.clone()).await?;
        self.remember(&id, &data);
        Ok(id)
    }

    async fn get(&self, id: &BlobId) -> StoreResult<Bytes> {
        let cached = self.cache.get(id);
        mailfleet_telemetry::metrics()
            .storage
            .blob_cache(cached.is_some());
        if let Some(b) = cached {
            return Ok(b);
        }
        let data = self.inner.get(id).await?;
        self.remember(id, &data);
        Ok(data)
    }

    async fn get_range(&self, id: &BlobId, range: Range<u64>) -> StoreResult<Bytes> {
        let cached = self.cache.get(id);
        mailfleet_telemetry::metrics()
            .storage
            .blob_cache(cached.is_some());
        if let Some(b) = cached {
            let len = b.len() as u64;
            let start = range.start.min(len) as usize;
            let end = range.end.clamp(range.start.min(len), len) as usize;
            return Ok(b.slice(start..end));
        }
        self.inner.get_range(id, range).await
    }

    async fn exists(&self, id: &BlobId) -> StoreResult<bool> {
        if self.cache.contains_key(id) {
            return Ok(true);
        }
        self.inner.exists(id).await
    }

    async fn delete(&self, id: &BlobId) -> StoreResult<()> {
        self.cache.invalidate(id);
        self.inner.delete(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::fs::FsBlobStore;

    #[tokio::test]
    async fn conformance_and_hits() {
        let dir = tempfile::tempdir().expect("tmp");
        let fs: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(dir.path()).expect("open"));
        let cached = CachedBlobStore::new(fs.clone(), 1 << 20);
        crate::conformance::blob_store(&cached).await;

        // A read served from the cache does not touch the inner store: delete the bytes
        // underneath and the cached copy still answers.
        let id = cached
            .put(Bytes::from_static(b"hello cached world"))
            .await
            .expect("put");
        fs.delete(&id).await.expect("delete underneath");
        assert_eq!(
            cached.get(&id).await.expect("cached"),
            &b"hello cached world"[..]
        );
        assert_eq!(
            cached.get_range(&id, 6..12).await.expect("range"),
            &b"cached"[..]
        );
        assert_eq!(
            cached.get_range(&id, 10..400).await.expect("clamped").len(),
            8
        );
        assert!(cached
            .get_range(&id, 50..60)
            .await
            .expect("past end")
            .is_empty());
        // Deleting through the cache drops the entry too.
        cached.delete(&id).await.expect("delete");
        assert!(cached.get(&id).await.is_err());
    }
}
