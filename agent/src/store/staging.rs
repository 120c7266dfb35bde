//! The store's `tmp/` directory: unique scratch names for files and layer directories that
//! are renamed into place once complete. Whatever is still there at open is a crash leftover.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Allocates scratch paths inside `tmp/`.
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Scratch space in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Staging { dir }
    }

    /// A fresh, unused path in `tmp/` (nothing is created).
    pub fn file_path(&self, what: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.dir
            .join(format!("{what}-{}-{nanos}-{n}", std::process::id()))
    }

    /// Removes everything inside `tmp/` (crash leftovers).
    pub fn clear(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            remove_tree(&entry?.path())?;
        }
        Ok(())
    }
}

/// Removes a file or directory tree, making read-only directories writable when needed
/// (a half-unpacked layer may contain `0555` directories).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_dir() {
        return fs::remove_file(path);
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    make_dirs_writable(path)?;
    fs::remove_dir_all(path)
}

fn make_dirs_writable(dir: &Path) -> io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}
