//! Files and directories only the server's user may read: mail at rest is private.
//!
//! Blobs, the SQLite database (and its `-wal`/`-shm` files) and the directories holding
//! them are created `0600`/`0700` whatever the process umask, and existing ones are
//! tightened when a store opens, so a data directory made by an older build (or by hand)
//! stops being world-readable on the next start. Permissions are set with an explicit
//! chmod after creation: a mode given to `open(2)`/`mkdir(2)` is only an upper bound the
//! umask can narrow, and a narrower mode (say `0400`) would break the server's own writes.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file holding mail or metadata.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory under the data directory.
pub const DIR_MODE: u32 = 0o700;

/// Sets `path`'s mode to exactly `mode` when it differs.
pub fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Creates `path` and any missing parents as private directories (existing ones are
/// tightened). Returns whether `path` itself was created.
pub fn create_dir_all(path: &Path) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            restrict(path, DIR_MODE)?;
            return Ok(false);
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)?;
    restrict(path, DIR_MODE)?;
    Ok(true)
}

/// Creates the directory `parent/name` if missing and makes the new entry durable by
/// fsyncing `parent`: without it a crash can forget the directory, and with it every blob
/// renamed into it although each rename's own directory was fsynced. Returns the path.
pub fn create_dir_durable(parent: &Path, name: &str) -> io::Result<std::path::PathBuf> {
    let dir = parent.join(name);
    match fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
        Ok(()) => {
            restrict(&dir, DIR_MODE)?;
            File::open(parent)?.sync_all()?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    Ok(dir)
}

/// Creates a new private file for writing (fails if it exists).
pub fn create_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn directories_and_files_are_private_and_existing_ones_tightened() {
        let dir = tempfile::tempdir().expect("tmp");
        let nested = dir.path().join("a/b/c");
        assert!(create_dir_all(&nested).expect("create"));
        assert_eq!(mode(&nested), DIR_MODE);
        assert!(!create_dir_all(&nested).expect("again"), "already there");
        fs::set_permissions(&nested, Permissions::from_mode(0o755)).expect("chmod");
        create_dir_all(&nested).expect("tighten");
        assert_eq!(
            mode(&nested),
            DIR_MODE,
            "an existing directory is tightened"
        );
        let bucket = create_dir_durable(&nested, "aa").expect("bucket");
        assert!(bucket.is_dir());
        assert_eq!(mode(&bucket), DIR_MODE);
        assert_eq!(create_dir_durable(&nested, "aa").expect("again"), bucket);
        let f = nested.join("f");
        drop(create_file(&f).expect("file"));
        assert_eq!(mode(&f), FILE_MODE);
        assert!(create_file(&f).is_err(), "create_file never reuses a file");
    }
}
