//! Content-addressed blobs under `blobs/sha256/<hex>`.
//!
//! A blob enters the store only through [`BlobStore::ingest`]: it is copied into `tmp/`,
//! hashed and counted while copying, compared with the digest and size it was announced
//! under, fsynced and only then renamed into place. Reading a small blob back
//! ([`BlobStore::read_verified`]) checks its digest again, so a corrupted state partition is
//! noticed instead of trusted.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::digest::{sha256_hex, BadDigest, HashingReader};
use super::staging::Staging;

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The digest string is malformed or not sha256.
    #[error(transparent)]
    BadDigest(#[from] BadDigest),
    /// The source file for a blob does not exist.
    #[error("blob {digest} is missing: no file at {}", path.display())]
    Missing {
        /// The announced digest.
        digest: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The content hashes to something else.
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        /// The announced digest.
        digest: String,
        /// The digest of the actual content.
        actual: String,
    },
    /// The content has another size than announced.
    #[error("blob {digest} has the wrong size: descriptor says {expected} bytes, found {actual}")]
    SizeMismatch {
        /// The announced digest.
        digest: String,
        /// The size from the descriptor.
        expected: u64,
        /// Bytes found (stops counting just past `expected`).
        actual: u64,
    },
    /// Reading, writing or renaming failed.
    #[error("blob {digest}: cannot {op} {}", path.display())]
    Io {
        /// The blob.
        digest: String,
        /// What was attempted.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The `blobs/sha256/` directory of a store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Blobs kept in `dir` (`<store>/blobs/sha256`).
    pub fn new(dir: PathBuf) -> Self {
        BlobStore { dir }
    }

    /// Path of the blob `digest` (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        Ok(self.dir.join(sha256_hex(digest)?))
    }

    /// Copies `source` into the store as blob `digest`, verifying digest and size on the way.
    /// Nothing is left behind when verification fails.
    pub fn ingest(
        &self,
        staging: &Staging,
        source: &Path,
        digest: &str,
        size: u64,
    ) -> Result<PathBuf, BlobError> {
        let final_path = self.path(digest)?;
        let io_err = |op, path: &Path| {
            let digest = digest.to_string();
            let path = path.to_path_buf();
            move |source| BlobError::Io {
                digest,
                op,
                path,
                source,
            }
        };
        let input = match File::open(source) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing {
                    digest: digest.to_string(),
                    path: source.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err("open", source)(e)),
        };
        let tmp = staging.file_path("blob");
        let result = (|| {
            let mut out = File::create(&tmp).map_err(io_err("create", &tmp))?;
            // Read at most one byte past the announced size: enough to detect "too big"
            // without copying an arbitrarily large file.
            let mut reader = HashingReader::new(input.take(size.saturating_add(1)));
            io::copy(&mut reader, &mut out).map_err(io_err("copy", source))?;
            let count = reader.count();
            if count != size {
                return Err(BlobError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: size,
                    actual: count,
                });
            }
            let (actual, _) = reader.finish().map_err(io_err("read", source))?;
            if actual != digest {
                return Err(BlobError::DigestMismatch {
                    digest: digest.to_string(),
                    actual,
                });
            }
            out.flush().map_err(io_err("write", &tmp))?;
            out.sync_all().map_err(io_err("fsync", &tmp))?;
            fs::rename(&tmp, &final_path).map_err(io_err("rename into place", &final_path))?;
            sync_dir(&self.dir).map_err(io_err("fsync", &self.dir))?;
            Ok(final_path.clone())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Reads a stored blob fully and checks its digest (for manifests and configs).
    pub fn read_verified(&self, digest: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path(digest)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing {
                    digest: digest.to_string(),
                    path,
                })
            }
            Err(source) => {
                return Err(BlobError::Io {
                    digest: digest.to_string(),
                    op: "read",
                    path,
                    source,
                })
            }
        };
        let actual = super::digest::sha256_of(&bytes);
        if actual != digest {
            return Err(BlobError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// Fsyncs a directory so a rename inside it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a whole file into memory, refusing files larger than `limit` (JSON documents).
pub fn read_small(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::digest::sha256_of;

    fn setup() -> (tempfile::TempDir, BlobStore, Staging) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        fs::create_dir_all(&blobs).unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let staging = Staging::new(dir.path().join("tmp"));
        (dir, BlobStore::new(blobs), staging)
    }

    #[test]
    fn ingest_verifies_and_stores() {
        let (dir, store, staging) = setup();
        let src = dir.path().join("src");
        fs::write(&src, b"hello").unwrap();
        let digest = sha256_of(b"hello");
        let path = store.ingest(&staging, &src, &digest, 5).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(store.read_verified(&digest).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn ingest_refuses_wrong_digest_size_and_missing() {
        let (dir, store, staging) = setup();
        let src = dir.path().join("src");
        fs::write(&src, b"hellO").unwrap();
        let digest = sha256_of(b"hello");
        let err = store.ingest(&staging, &src, &digest, 5).unwrap_err();
        assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
        let err = store
            .ingest(&staging, &src, &sha256_of(b"hellO"), 4)
            .unwrap_err();
        assert!(
            matches!(
                err,
                BlobError::SizeMismatch {
                    expected: 4,
                    actual: 5,
                    ..
                }
            ),
            "{err}"
        );
        let err = store
            .ingest(&staging, &dir.path().join("nope"), &digest, 5)
            .unwrap_err();
        assert!(matches!(err, BlobError::Missing { .. }), "{err}");
        assert!(!store.path(&digest).unwrap().exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn read_verified_notices_corruption() {
        let (_dir, store, _staging) = setup();
        let digest = sha256_of(b"data");
        fs::write(store.path(&digest).unwrap(), b"dat4").unwrap();
        assert!(matches!(
            store.read_verified(&digest),
            Err(BlobError::DigestMismatch { .. })
        ));
    }
}
