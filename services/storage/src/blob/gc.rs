//! Deleting blobs nothing references any more.
//!
//! Blobs are shared (content-addressed), so a blob whose last message is expunged may be
//! stored again a moment later by a new delivery of identical bytes. The metadata store
//! therefore only *records* orphans; this sweep deletes them after a grace period, and only
//! after [`MetadataStore::claim_orphan`] confirms, in a transaction, that no message
//! references the blob. A put of the same bytes after the claim re-creates the file, so the
//! remaining window is a put landing between the claim and the unlink of the same blob after
//! a full grace period of disuse; backends that can (S3 object lock, a per-blob lease) close
//! it entirely.

use crate::{BlobStore, MetadataStore, StoreResult};

/// Deletes up to `limit` blobs orphaned for longer than `grace_secs`. Returns how many.
pub async fn collect(
    meta: &dyn MetadataStore,
    blobs: &dyn BlobStore,
    now: i64,
    grace_secs: i64,
    limit: usize,
) -> StoreResult<usize> {
    let mut deleted = 0;
    for id in meta.orphaned_blobs(now - grace_secs, limit).await? {
        if meta.claim_orphan(&id).await? {
            blobs.delete(&id).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
