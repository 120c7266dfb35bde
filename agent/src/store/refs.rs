//! Image names: `refs/<name>` maps a name to a manifest digest.
//!
//! Each ref is a small JSON file (`{"manifest":"sha256:..."}`) replaced atomically (temp file,
//! fsync, rename, fsync of `refs/`), so a power cut leaves either the old or the new image.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::blobs::sync_dir;
use super::digest::sha256_hex;
use super::staging::Staging;

/// Longest image name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Why a ref could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    /// The name cannot be used as an image name.
    #[error(
        "invalid image name `{name}`: {reason} (use 1-{MAX_NAME_LEN} characters from A-Z a-z 0-9 \
         `.` `_` `-` `:`, starting with a letter or digit)"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The ref file is not what the store writes.
    #[error("image ref file {} is corrupt; re-import the image", path.display())]
    Corrupt {
        /// The ref file.
        path: PathBuf,
    },
    /// Reading or writing the ref failed.
    #[error("cannot {op} image ref {}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefFile {
    manifest: String,
}

/// Checks that `name` is usable as an image name (and as a file name under `refs/`).
pub fn validate_name(name: &str) -> Result<(), RefError> {
    let bad = |reason| RefError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad("wrong length"));
    }
    if !name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return Err(bad("must start with a letter or digit"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err(bad("contains a character that is not allowed"));
    }
    Ok(())
}

/// Atomically points `refs/<name>` at `manifest_digest`.
pub fn write(
    refs_dir: &Path,
    staging: &Staging,
    name: &str,
    manifest_digest: &str,
) -> Result<(), RefError> {
    validate_name(name)?;
    let path = refs_dir.join(name);
    let tmp = staging.file_path("ref");
    let io_err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| RefError::Io { op, path, source }
    };
    let body = serde_json::to_vec(&RefFile {
        manifest: manifest_digest.to_string(),
    })
    .map_err(|e| RefError::Io {
        op: "encode",
        path: path.clone(),
        source: e.into(),
    })?;
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(&body).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
        sync_dir(refs_dir).map_err(io_err("fsync", refs_dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The manifest digest `refs/<name>` points at, `None` when there is no such image.
pub fn read(refs_dir: &Path, name: &str) -> Result<Option<String>, RefError> {
    validate_name(name)?;
    let path = refs_dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RefError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    let parsed: RefFile =
        serde_json::from_slice(&bytes).map_err(|_| RefError::Corrupt { path: path.clone() })?;
    if sha256_hex(&parsed.manifest).is_err() {
        return Err(RefError::Corrupt { path });
    }
    Ok(Some(parsed.manifest))
}

/// All image names, sorted.
pub fn list(refs_dir: &Path) -> Result<Vec<String>, RefError> {
    let io_err = |source| RefError::Io {
        op: "list",
        path: refs_dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(refs_dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if let Some(name) = entry.file_name().to_str() {
            if validate_name(name).is_ok() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["web", "db-1", "busybox:1.36", "a.b_c"] {
            validate_name(good).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "../x",
            "a/b",
            "-x",
            "sp ace",
            &"x".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn write_read_list_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let refs = dir.path().join("refs");
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&refs).unwrap();
        fs::create_dir_all(&tmp).unwrap();
        let staging = Staging::new(tmp.clone());
        let d1 = format!("sha256:{}", "a".repeat(64));
        let d2 = format!("sha256:{}", "b".repeat(64));
        assert_eq!(read(&refs, "web").unwrap(), None);
        write(&refs, &staging, "web", &d1).unwrap();
        write(&refs, &staging, "web", &d2).unwrap();
        write(&refs, &staging, "db", &d1).unwrap();
        assert_eq!(read(&refs, "web").unwrap(), Some(d2));
        assert_eq!(
            list(&refs).unwrap(),
            vec!["db".to_string(), "web".to_string()]
        );
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        fs::write(refs.join("db"), b"{\"manifest\":\"sha256:zz\"}").unwrap();
        assert!(matches!(read(&refs, "db"), Err(RefError::Corrupt { .. })));
    }
}
