//! Output directories that appear complete or not at all.
//!
//! Every command builds into a hidden temporary directory next to its output and renames it
//! into place at the end, so an interrupted or failed build never leaves a half-written
//! image where a boot script would pick it up.

use std::path::{Path, PathBuf};

/// Errors while preparing or publishing an output directory.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The output exists and holds files this command did not write.
    #[error(
        "refusing to replace {}: it contains {entry:?}, which berth-image does not write; \
         choose another --out or remove it",
        path.display()
    )]
    Foreign {
        /// The output directory.
        path: PathBuf,
        /// The first unexpected entry.
        entry: String,
    },
    /// The output exists and is not a directory.
    #[error("{} exists and is not a directory; choose another --out", path.display())]
    NotADirectory {
        /// The output path.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StagingError {
    let path = path.to_path_buf();
    move |source| StagingError::Io { op, path, source }
}

/// Checks that `out` may be (re)written: it is missing, or a directory whose entries are all
/// in `ours` (the names the command writes; an empty list allows only an empty directory).
pub fn check_replaceable(out: &Path, ours: &[&str]) -> Result<(), StagingError> {
    let meta = match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspect", out)(e)),
        Ok(m) => m,
    };
    if !meta.is_dir() {
        return Err(StagingError::NotADirectory {
            path: out.to_path_buf(),
        });
    }
    let mut names: Vec<String> = std::fs::read_dir(out)
        .map_err(io("list", out))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io("list", out))?;
    names.sort();
    match names.into_iter().find(|n| !ours.contains(&n.as_str())) {
        Some(entry) => Err(StagingError::Foreign {
            path: out.to_path_buf(),
            entry,
        }),
        None => Ok(()),
    }
}

/// A temporary directory that becomes `out` on [`Staging::commit`] and is removed if dropped.
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
    out: PathBuf,
}

impl Staging {
    /// Creates the temporary directory next to `out` (creating `out`'s parent if needed).
    /// Call [`check_replaceable`] first.
    pub fn new(out: &Path) -> Result<Staging, StagingError> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
        let base = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".to_string());
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{base}.partial-"))
            .tempdir_in(&parent)
            .map_err(io("create a temporary directory in", &parent))?;
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
        })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Moves the finished directory to `out`, replacing what was there.
    pub fn commit(self) -> Result<(), StagingError> {
        // Directories default to 0700 from mkdtemp; an image directory is ordinary output.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io("set permissions of", self.dir.path()))?;
        let old = self.out.with_file_name(format!(
            ".{}.old-{}",
            self.out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let had_old = self.out.exists();
        if had_old {
            std::fs::rename(&self.out, &old).map_err(io("move aside", &self.out))?;
        }
        let staged = self.dir.keep();
        if let Err(e) = std::fs::rename(&staged, &self.out) {
            if had_old {
                let _ = std::fs::rename(&old, &self.out);
            }
            let _ = std::fs::remove_dir_all(&staged);
            return Err(io("move into place", &self.out)(e));
        }
        if had_old {
            std::fs::remove_dir_all(&old).map_err(io("remove the previous", &old))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaceable_rules() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img");
        check_replaceable(&out, &[]).unwrap();
        std::fs::create_dir(&out).unwrap();
        check_replaceable(&out, &[]).unwrap();
        std::fs::write(out.join("vmlinuz"), "k").unwrap();
        check_replaceable(&out, &["vmlinuz", "initramfs.img"]).unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let err = check_replaceable(&out, &["vmlinuz", "initramfs.img"]).unwrap_err();
        assert!(err.to_string().contains("notes.txt"), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            check_replaceable(&file, &[]),
            Err(StagingError::NotADirectory { .. })
        ));
    }

    #[test]
    fn commit_replaces_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/img");
        let s = Staging::new(&out).unwrap();
        std::fs::write(s.path().join("x"), "1").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(out.join("x")).unwrap(), "1");

        let s = Staging::new(&out).unwrap();
        std::fs::write(s.path().join("y"), "2").unwrap();
        s.commit().unwrap();
        assert!(!out.join("x").exists());
        assert_eq!(std::fs::read_to_string(out.join("y")).unwrap(), "2");

        let s = Staging::new(&out).unwrap();
        std::fs::write(s.path().join("z"), "3").unwrap();
        drop(s);
        assert!(!out.join("z").exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("img")]);
    }
}
