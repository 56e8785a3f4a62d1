//! Deleting blobs nothing references any more.
//!
//! Blobs are shared (content-addressed), so a blob whose last message is expunged may be
//! stored again a moment later by a new delivery of identical bytes, and a put of bytes that
//! are already there writes nothing. The metadata store therefore only *records* orphans,
//! and this sweep deletes one only after [`MetadataStore::claim_orphan`] has decided, in one
//! transaction, that the blob is still unreferenced, has been orphaned for the whole grace
//! period and was not pinned by a writer within it. Writers pin before they put
//! ([`crate::Stores::put_blob`]) and a pin of a claimed blob fails until
//! [`MetadataStore::finish_orphan`], so every interleaving ends either with the sweep
//! standing down or with the writer storing the bytes afresh after the deletion: a body
//! referenced by an acknowledged message is never deleted.
//!
//! A sweep that dies between the claim and the finish leaves the claim behind; the next
//! sweep claims it again (deleting absent bytes is no error) and finishes it. Until then a
//! writer of those exact bytes gets a temporary failure and retries.
//!
//! The sweep reads page after page until the store says nothing more is waiting (or
//! `limit` blobs were listed), so one run does the work there is, however much that is.

use crate::{BlobStore, MetadataStore, StoreResult};

/// Blobs listed per page.
const PAGE: usize = 1_000;

/// Deletes up to `limit` blobs orphaned for longer than `grace_secs`. Returns how many.
pub async fn collect(
    meta: &dyn MetadataStore,
    blobs: &dyn BlobStore,
    now: i64,
    grace_secs: i64,
    limit: usize,
) -> StoreResult<usize> {
    let older_than = now - grace_secs;
    let mut deleted = 0;
    let mut listed = 0;
    // Pages that list nothing (a log of blobs all referenced again) still move on; the
    // bound keeps one run finite however long the log.
    let mut pages = limit.div_ceil(PAGE).max(1) * 64;
    loop {
        let page = meta
            .orphaned_blobs(older_than, PAGE.min(limit - listed))
            .await?;
        listed += page.blobs.len();
        for id in &page.blobs {
            if meta.claim_orphan(id, older_than).await? {
                blobs.delete(id).await?;
                meta.finish_orphan(id).await?;
                deleted += 1;
            }
        }
        meta.orphans_swept().await?;
        pages -= 1;
        if !page.more || listed >= limit || pages == 0 {
            return Ok(deleted);
        }
    }
}
