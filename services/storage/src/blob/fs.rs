//! Blobs in a local directory: the embedded default.
//!
//! Layout: `<root>/<aa>/<bb>/<full id>` where `aa`/`bb` are the first hex pairs of the id, so
//! no directory grows past 65,536 entries per level. A put writes a temporary file in
//! `<root>/tmp`, fsyncs it, renames it into place and fsyncs the directory: a crash leaves
//! either the whole blob or nothing under its name (only stray temporaries, swept at open).
//! A bucket directory created for a put is itself made durable by fsyncing its parent
//! (see [`crate::private_fs::create_dir_durable`]). Files are `0600` and directories
//! `0700` ([`crate::private_fs`]).

use super::BlobStore;
use crate::private_fs;
use crate::types::BlobId;
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Age after which a temporary file is certainly abandoned (no put takes this long).
pub const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// Opens (creating if needed) the store at `root` and removes temporaries left by a
    /// crash. Only temporaries older than [`STALE_TMP`] are removed: another process (the
    /// admin CLI beside a running server) may open the same store while a put is in flight.
    pub fn open(root: impl Into<PathBuf>) -> StoreResult<Self> {
        let root = root.into();
        private_fs::create_dir_all(&root)?;
        private_fs::create_dir_all(&root.join("tmp"))?;
        let now = std::time::SystemTime::now();
        for entry in fs::read_dir(root.join("tmp"))? {
            let entry = entry?;
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() > STALE_TMP)
                .unwrap_or(true);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self { root })
    }

    fn path_of(&self, id: &BlobId) -> PathBuf {
        let s = id.as_str();
        self.root.join(&s[0..2]).join(&s[2..4]).join(s)
    }

    fn put_blocking(root: &Path, path: &Path, data: &[u8]) -> StoreResult<()> {
        let dir = path
            .parent()
            .ok_or_else(|| StoreError::Invalid("blob path".into()))?;
        if path.exists() {
            // Same id, same bytes: refresh the mtime so a pending GC sweep skips it.
            let f = OpenOptions::new().append(true).open(path)?;
            f.set_modified(std::time::SystemTime::now())?;
            return Ok(());
        }
        let s = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.len() >= 4)
            .ok_or_else(|| StoreError::Invalid("blob path".into()))?;
        let first = private_fs::create_dir_durable(root, &s[0..2])?;
        let second = private_fs::create_dir_durable(&first, &s[2..4])?;
        debug_assert_eq!(second, dir);
        let tmp =
            root.join("tmp")
                .join(format!("{}.{}", rand::random::<u64>(), std::process::id()));
        let result = (|| {
            let mut f = private_fs::create_file(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        Ok(result?)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("blob task failed: {e}")))?
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, data: Bytes) -> StoreResult<BlobId> {
        let root = self.root.clone();
        blocking(move || {
            let id = BlobId::of(&data);
            let path = FsBlobStore { root: root.clone() }.path_of(&id);
            Self::put_blocking(&root, &path, &data)?;
            Ok(id)
        })
        .await
    }

    async fn get(&self, id: &BlobId) -> StoreResult<Bytes> {
        let path = self.path_of(id);
        let name = id.to_string();
        blocking(move || match fs::read(&path) {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(format!("blob {name}")))
            }
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn get_range(&self, id: &BlobId, range: Range<u64>) -> StoreResult<Bytes> {
        let path = self.path_of(id);
        let name = id.to_string();
        blocking(move || {
            let mut f = File::open(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StoreError::NotFound(format!("blob {name}")),
                _ => e.into(),
            })?;
            let len = f.metadata()?.len();
            let start = range.start.min(len);
            let end = range.end.clamp(start, len);
            f.seek(SeekFrom::Start(start))?;
            let mut buf = vec![0; (end - start) as usize];
            f.read_exact(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn exists(&self, id: &BlobId) -> StoreResult<bool> {
        let path = self.path_of(id);
        // try_exists, not exists: a missing blob is `false`, but an unreadable directory is
        // an error the caller (and the readiness probe) must see.
        blocking(move || Ok(path.try_exists()?)).await
    }

    async fn delete(&self, id: &BlobId) -> StoreResult<()> {
        let path = self.path_of(id);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        })
        .await
    }
}
