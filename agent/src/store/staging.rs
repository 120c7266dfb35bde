//! The store's `tmp/` directory: unique scratch names for files and layer directories that
//! are renamed into place once complete. Whatever is still there at open is a crash leftover,
//! except the scratch paths this process handed out: berthd opens the store again in other
//! threads (a registry pull retried in the background, an API request) while an import may be
//! writing there.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Every scratch path this process handed out: possibly in use, never a crash leftover.
static HANDED_OUT: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

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
        let path = self
            .dir
            .join(format!("{what}-{}-{nanos}-{n}", std::process::id()));
        if let Ok(mut handed_out) = HANDED_OUT.lock() {
            handed_out.insert(path.clone());
        }
        path
    }

    /// Removes everything inside `tmp/` (crash leftovers) but the paths this process handed
    /// out.
    pub fn clear(&self) -> io::Result<()> {
        let handed_out = HANDED_OUT.lock().map(|set| set.clone()).unwrap_or_default();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if !handed_out.contains(&path) {
                remove_tree(&path)?;
            }
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
