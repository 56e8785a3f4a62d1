//! The [`BlobStore`] trait: message bodies, addressed by the SHA-256 of their bytes.

pub mod cache;
pub mod fs;
pub mod gc;
pub mod s3;

use crate::types::BlobId;
use crate::StoreResult;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `data` durably and returns its id. Storing bytes that are already there is
    /// cheap and returns the same id: one copy per distinct message.
    async fn put(&self, data: Bytes) -> StoreResult<BlobId>;
    /// The whole blob; `NotFound` when absent.
    async fn get(&self, id: &BlobId) -> StoreResult<Bytes>;
    /// Bytes `range` of the blob, clamped to its size (IMAP partial fetch).
    async fn get_range(&self, id: &BlobId, range: Range<u64>) -> StoreResult<Bytes>;
    async fn exists(&self, id: &BlobId) -> StoreResult<bool>;
    /// Deletes the blob; deleting an absent blob is not an error.
    async fn delete(&self, id: &BlobId) -> StoreResult<()>;
}
