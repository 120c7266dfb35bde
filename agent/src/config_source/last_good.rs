//! The last good manifest: a copy of the manifest boot applied, kept on the state partition
//! (`/var/lib/berth/manifest.toml`) so the next boot has it when no source answers or a
//! source's manifest is invalid.
//!
//! Written to a temporary file, fsynced, renamed and the directory fsynced, so a power cut
//! leaves the old copy or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name below the state directory.
pub const FILE: &str = "manifest.toml";

/// Why the last good manifest could not be saved.
#[derive(Debug, thiserror::Error)]
#[error("cannot save the manifest as the last good one at {}", path.display())]
pub struct SaveError {
    /// The file being written.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The last good manifest of a state directory.
#[derive(Debug, Clone)]
pub struct LastGood {
    path: PathBuf,
}

impl LastGood {
    /// `STATE/manifest.toml`.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        LastGood {
            path: state_dir.join(FILE),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replace the copy with `bytes` atomically; returns whether anything changed.
    pub fn save(&self, bytes: &[u8]) -> Result<bool, SaveError> {
        if std::fs::read(&self.path).is_ok_and(|old| old == bytes) {
            return Ok(false);
        }
        let err = |source| SaveError {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(".{FILE}.tmp"));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            // A full disk: leave no partial file behind; the old copy stays in place.
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let last = LastGood::in_state_dir(&dir.path().join("state"));
        assert!(last.save(b"version = 1\n").unwrap());
        assert_eq!(std::fs::read(last.path()).unwrap(), b"version = 1\n");
        assert!(!last.save(b"version = 1\n").unwrap());
        assert!(last.save(b"version = 1\n# v2\n").unwrap());
        assert_eq!(std::fs::read(last.path()).unwrap(), b"version = 1\n# v2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["manifest.toml"]);
    }
}
