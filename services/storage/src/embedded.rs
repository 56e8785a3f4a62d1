//! The embedded backends under one data directory: the default when nothing is configured.
//!
//! ```text
//! <data_dir>/metadata.sqlite3   SqliteMetadataStore (WAL files beside it)
//! <data_dir>/blobs/             FsBlobStore
//! ```
//! Coordination is in-process ([`crate::coord::local::LocalCoordinator`]), so one data
//! directory must be served by one server process (the admin CLI may share it).

use crate::blob::fs::FsBlobStore;
use crate::coord::local::LocalCoordinator;
use crate::metadata::sqlite::SqliteMetadataStore;
use crate::metered::{MeteredBlobs, MeteredCoordinator, MeteredMeta};
use crate::{StoreResult, Stores};
use std::path::Path;
use std::sync::Arc;

pub fn open(data_dir: &Path, group_commit_max: usize) -> StoreResult<Stores> {
    crate::private_fs::create_dir_all(data_dir)?;
    Ok(Stores::new(
        MeteredBlobs::wrap(Arc::new(FsBlobStore::open(data_dir.join("blobs"))?), "fs"),
        MeteredMeta::wrap(
            Arc::new(SqliteMetadataStore::open(
                data_dir.join("metadata.sqlite3"),
                group_commit_max,
            )?),
            "sqlite",
        ),
        MeteredCoordinator::wrap(Arc::new(LocalCoordinator::new()), "local"),
    ))
}
