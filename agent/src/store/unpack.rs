//! Safe, entry-by-entry extraction of one layer tar into a fresh directory.
//!
//! Layer tars come from images, i.e. from whoever built them, so nothing in them is trusted:
//! - absolute paths and `..` components are refused, naming the entry;
//! - every parent of an entry must be a real directory inside the layer (checked with
//!   `lstat`, never following a symlink), so `a -> /etc` followed by `a/passwd` is refused;
//! - hard links may only point at entries already extracted into the same layer;
//! - character/block devices and fifos are refused (a layer has no business shipping them;
//!   `/dev` is provided by the runtime), and so is any entry type tar does not define (tar has
//!   no socket type; GNU tar skips sockets, and a made-up type flag is refused, never guessed);
//! - a whiteout must name one plain entry in a directory of the layer: `.wh.`, `.wh..`,
//!   `.wh...` and whiteouts below a symlink are refused;
//! - regular files are created with `O_NOFOLLOW | O_EXCL`;
//! - a regular file larger than the space left on the store's filesystem (`statvfs`, through
//!   [`LayerFs::free_bytes`]) is refused before its data is read, and running out of space
//!   anyway (`ENOSPC`, `EDQUOT`) is reported as such; the caller removes the half layer.
//!
//! OCI whiteouts are converted to their overlayfs form: `.wh.NAME` becomes a 0/0 character
//! device at `NAME`, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. Both
//! need root; the calls go through [`LayerFs`].
//!
//! Symlink targets are stored verbatim: they are resolved inside the container root later.
//! Mode bits (setuid/setgid/sticky included) are kept as in the tar: images legitimately ship
//! setuid binaries for use inside the container (where `no_new_privs` neuters them for the
//! default process). On the host they are only data: the store is `0700` root (see the store
//! module), so no other host user can reach, let alone execute, them. Ownership is set to the
//! tar's uid/gid, and `EPERM` from that is ignored (an unprivileged import keeps our uid).
//! Directory modes are applied at the end, so a read-only directory can still be filled.
//! Extended attributes in PAX headers and file times other than regular files' mtime are not
//! restored.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::EntryType;

use super::layerfs::LayerFs;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry path escapes the layer.
    #[error("layer entry `{entry}` is refused: {reason}")]
    UnsafePath {
        /// The entry path as written in the tar.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A parent of an entry exists but is not a real directory (e.g. a symlink).
    #[error(
        "layer entry `{entry}` is refused: its parent `{parent}` is not a directory inside the \
         layer (a symlink or file); extraction never writes through symlinks"
    )]
    ParentNotDirectory {
        /// The entry path.
        entry: String,
        /// The offending parent, relative to the layer root.
        parent: String,
    },
    /// A hard link points at something that is not an already-extracted file of this layer.
    #[error("layer entry `{entry}` is refused: hard link target `{target}` {reason}")]
    BadHardlink {
        /// The entry path.
        entry: String,
        /// The link target as written in the tar.
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry type the store does not accept.
    #[error("layer entry `{entry}` is refused: {kind} are not allowed in image layers")]
    Unsupported {
        /// The entry path.
        entry: String,
        /// Plural description of the kind, e.g. "character devices".
        kind: &'static str,
    },
    /// Creating a whiteout or opaque marker needs root.
    #[error(
        "layer entry `{entry}`: {what} failed: importing images with whiteouts or opaque \
         directories requires root (the agent runs as root)"
    )]
    NeedsRoot {
        /// The entry path.
        entry: String,
        /// What was attempted.
        what: &'static str,
        /// The `EPERM` error.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation on an entry failed.
    #[error("layer entry `{entry}`: cannot {op}")]
    Io {
        /// The entry path.
        entry: String,
        /// What was attempted.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry's data ended early.
    #[error("layer entry `{entry}` is truncated: expected {expected} bytes, got {got}")]
    Truncated {
        /// The entry path.
        entry: String,
        /// Size in the tar header.
        expected: u64,
        /// Bytes actually available.
        got: u64,
    },
    /// A file is larger than the free space left on the store's filesystem.
    #[error(
        "layer entry `{entry}` is refused: not enough space in the image store: it declares \
         {needed} bytes and {free} bytes are free; remove unused images (`berthctl prune`) or \
         grow the state partition"
    )]
    NoSpace {
        /// The entry path.
        entry: String,
        /// Its size in the tar header.
        needed: u64,
        /// Bytes free on the store's filesystem.
        free: u64,
    },
    /// The store's filesystem filled up while the layer was written.
    #[error(
        "layer entry `{entry}`: not enough space in the image store: the filesystem is full; \
         remove unused images (`berthctl prune`) or grow the state partition"
    )]
    StoreFull {
        /// The entry being written.
        entry: String,
        /// `ENOSPC` or `EDQUOT`.
        #[source]
        source: io::Error,
    },
    /// The tar stream (or its decompression) is corrupt or truncated.
    #[error("layer tar stream is corrupt or truncated")]
    Stream {
        /// The underlying read/decompression error.
        #[source]
        source: io::Error,
    },
}

/// What an unpack did, for callers that report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries extracted (whiteouts and opaque markers included).
    pub entries: u64,
    /// Whiteouts created.
    pub whiteouts: u64,
    /// Directories marked opaque.
    pub opaque_dirs: u64,
}

/// Unpacks the tar stream `tar` into the existing, empty directory `dest`.
///
/// On error `dest` is left half-filled: the caller owns it and removes it.
pub fn unpack_layer<R: Read>(
    tar: R,
    dest: &Path,
    fs_ops: &dyn LayerFs,
) -> Result<UnpackStats, UnpackError> {
    let mut archive = tar::Archive::new(tar);
    let mut stats = UnpackStats::default();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|source| UnpackError::Stream { source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| UnpackError::Stream { source })?;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let rel = relative_path(&raw_name)?;
        let x = Extractor {
            dest,
            fs_ops,
            entry: &raw_name,
        };
        let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned());

        if let Some(name) = file_name
            .as_deref()
            .filter(|n| n.starts_with(WHITEOUT_PREFIX))
        {
            let parent = rel.parent().unwrap_or(Path::new(""));
            x.ensure_dir_chain(parent, true)?;
            let parent_abs = dest.join(parent);
            if name == OPAQUE_MARKER {
                fs_ops
                    .set_opaque(&parent_abs)
                    .map_err(|e| x.privileged("setting the opaque xattr", e))?;
                stats.opaque_dirs += 1;
            } else if name.starts_with(".wh..wh.") {
                // Other `.wh..wh.` names are aufs bookkeeping (e.g. `.wh..wh.plnk`): no meaning
                // for overlayfs, skipped like other runtimes do.
                continue;
            } else {
                let hidden = &name[WHITEOUT_PREFIX.len()..];
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(UnpackError::UnsafePath {
                        entry: raw_name,
                        reason: "whiteout of an empty, `.` or `..` name",
                    });
                }
                let target = parent_abs.join(hidden);
                x.clear(&target)?;
                fs_ops
                    .make_whiteout(&target)
                    .map_err(|e| x.privileged("creating a whiteout", e))?;
                stats.whiteouts += 1;
            }
            stats.entries += 1;
            continue;
        }

        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|source| x.io("read the mode", source))?
            & 0o7777;
        let uid = header
            .uid()
            .map_err(|source| x.io("read the uid", source))?;
        let gid = header
            .gid()
            .map_err(|source| x.io("read the gid", source))?;
        let mtime = header.mtime().unwrap_or(0);
        let owner = (
            u32::try_from(uid).unwrap_or(u32::MAX),
            u32::try_from(gid).unwrap_or(u32::MAX),
        );

        if rel.as_os_str().is_empty() {
            // The layer root itself (`./`): only a directory entry makes sense.
            if kind != EntryType::Directory {
                return Err(UnpackError::UnsafePath {
                    entry: raw_name,
                    reason: "names the layer root",
                });
            }
            x.chown(dest, owner)?;
            dir_modes.push((dest.to_path_buf(), mode));
            stats.entries += 1;
            continue;
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        x.ensure_dir_chain(parent, true)?;
        let target = dest.join(&rel);

        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.file_type().is_dir() => {}
                    _ => {
                        x.clear(&target)?;
                        fs::create_dir(&target).map_err(|e| x.io("create the directory", e))?;
                    }
                }
                x.chown(&target, owner)?;
                dir_modes.push((target, mode));
            }
            EntryType::Regular | EntryType::Continuous => {
                x.clear(&target)?;
                let expected = entry.size();
                if expected > 0 {
                    let free = fs_ops
                        .free_bytes(dest)
                        .map_err(|e| x.io("read the free space of the store", e))?;
                    if expected > free {
                        return Err(UnpackError::NoSpace {
                            entry: raw_name,
                            needed: expected,
                            free,
                        });
                    }
                }
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| x.io("create the file", e))?;
                let got = x.copy_data(&mut entry, &mut file)?;
                if got != expected {
                    return Err(UnpackError::Truncated {
                        entry: raw_name,
                        expected,
                        got,
                    });
                }
                x.chown(&target, owner)?;
                // After chown: chown clears setuid/setgid.
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| x.io("set the file mode", e))?;
                let when = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
                file.set_modified(when)
                    .map_err(|e| x.io("set the file mtime", e))?;
            }
            EntryType::Symlink => {
                let link = entry.link_name_bytes().ok_or(UnpackError::UnsafePath {
                    entry: raw_name.clone(),
                    reason: "symlink without a target",
                })?;
                let link = PathBuf::from(std::ffi::OsStr::from_bytes(&link));
                x.clear(&target)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| x.io("create the symlink", e))?;
                x.chown(&target, owner)?;
            }
            EntryType::Link => {
                let link_raw = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let bad = |reason| UnpackError::BadHardlink {
                    entry: raw_name.clone(),
                    target: link_raw.clone(),
                    reason,
                };
                let link_rel = match relative_path(&link_raw) {
                    Ok(p) if !p.as_os_str().is_empty() => p,
                    _ => return Err(bad("points outside the layer")),
                };
                if x.ensure_dir_chain(link_rel.parent().unwrap_or(Path::new("")), false)
                    .is_err()
                {
                    return Err(bad(
                        "is not inside the layer (missing, or reached through a symlink)",
                    ));
                }
                let source = dest.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(meta) if meta.file_type().is_dir() => return Err(bad("is a directory")),
                    Ok(_) => {}
                    Err(_) => return Err(bad("was not extracted earlier in this layer")),
                }
                if source == target {
                    return Err(bad("is the entry itself"));
                }
                x.clear(&target)?;
                fs::hard_link(&source, &target).map_err(|e| x.io("create the hard link", e))?;
            }
            EntryType::Char => return Err(x.unsupported("character devices")),
            EntryType::Block => return Err(x.unsupported("block devices")),
            EntryType::Fifo => return Err(x.unsupported("fifos")),
            EntryType::GNUSparse => return Err(x.unsupported("sparse files")),
            _ => return Err(x.unsupported("entries of unknown type")),
        }
        stats.entries += 1;
    }
    // Deepest first so a read-only parent never blocks a child's chmod.
    dir_modes.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (dir, mode) in dir_modes {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(|source| {
            UnpackError::Io {
                entry: dir.strip_prefix(dest).unwrap_or(&dir).display().to_string(),
                op: "set the directory mode",
                source,
            }
        })?;
    }
    Ok(stats)
}

/// Turns a tar entry name into a path relative to the layer root, refusing escapes.
pub(crate) fn relative_path(raw: &str) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::UnsafePath {
                    entry: raw.to_string(),
                    reason: "absolute path",
                })
            }
            Component::ParentDir => {
                return Err(UnpackError::UnsafePath {
                    entry: raw.to_string(),
                    reason: "path contains a `..` component",
                })
            }
        }
    }
    Ok(out)
}

/// Per-entry helpers carrying the entry name for error messages.
struct Extractor<'a> {
    dest: &'a Path,
    fs_ops: &'a dyn LayerFs,
    entry: &'a str,
}

impl Extractor<'_> {
    fn io(&self, op: &'static str, source: io::Error) -> UnpackError {
        if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            return UnpackError::StoreFull {
                entry: self.entry.to_string(),
                source,
            };
        }
        UnpackError::Io {
            entry: self.entry.to_string(),
            op,
            source,
        }
    }

    /// Copies an entry's data: read errors are the stream's, write errors the store's.
    fn copy_data(&self, from: &mut impl Read, to: &mut fs::File) -> Result<u64, UnpackError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(UnpackError::Stream { source }),
            };
            let chunk = buf.get(..n).unwrap_or_default();
            to.write_all(chunk)
                .map_err(|e| self.io("write the file", e))?;
            total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    fn unsupported(&self, kind: &'static str) -> UnpackError {
        UnpackError::Unsupported {
            entry: self.entry.to_string(),
            kind,
        }
    }

    fn privileged(&self, what: &'static str, source: io::Error) -> UnpackError {
        if source.raw_os_error() == Some(libc::EPERM) {
            UnpackError::NeedsRoot {
                entry: self.entry.to_string(),
                what,
                source,
            }
        } else {
            self.io(what, source)
        }
    }

    /// Sets ownership; `EPERM` (not root) is ignored and the importing user keeps ownership.
    fn chown(&self, path: &Path, (uid, gid): (u32, u32)) -> Result<(), UnpackError> {
        match self.fs_ops.lchown(path, uid, gid) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
            Err(e) => Err(self.io("set the owner", e)),
        }
    }

    /// Checks that every component of `rel_dir` is a real directory inside the layer, creating
    /// missing ones when `create` is set. Never follows a symlink.
    fn ensure_dir_chain(&self, rel_dir: &Path, create: bool) -> Result<(), UnpackError> {
        let mut current = self.dest.to_path_buf();
        let mut rel_so_far = PathBuf::new();
        for component in rel_dir.components() {
            current.push(component);
            rel_so_far.push(component);
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(UnpackError::ParentNotDirectory {
                        entry: self.entry.to_string(),
                        parent: rel_so_far.display().to_string(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&current)
                        .map_err(|e| self.io("create a parent directory", e))?;
                }
                Err(e) => return Err(self.io("inspect a parent directory", e)),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `path`: a later tar entry replaces an earlier one.
    fn clear(&self, path: &Path) -> Result<(), UnpackError> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("inspect the existing path", e)),
            Ok(meta) if meta.file_type().is_dir() => {
                fs::remove_dir_all(path).map_err(|e| self.io("replace an existing directory", e))
            }
            Ok(_) => fs::remove_file(path).map_err(|e| self.io("replace an existing entry", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{tar_from_entries, TarEntry};
    use crate::store::layerfs::{LayerFsCall, RecordingLayerFs};

    fn unpack(
        entries: &[TarEntry],
        fs_ops: &dyn LayerFs,
    ) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("layer")).unwrap();
        let tar = tar_from_entries(entries).unwrap();
        let result = unpack_layer(&tar[..], &dir.path().join("layer"), fs_ops);
        (dir, result)
    }

    #[test]
    fn a_file_larger_than_the_free_space_is_refused_before_its_data() {
        let fake = RecordingLayerFs::with_free_bytes(1000);
        let (dir, result) = unpack(
            &[
                TarEntry::file("small", &[1u8; 1000]),
                TarEntry::file("big", &[1u8; 1001]),
            ],
            &fake,
        );
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::NoSpace {
                    needed: 1001,
                    free: 1000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().starts_with(
            "layer entry `big` is refused: not enough space in the image store: it declares 1001 bytes and 1000 bytes are free"
        ));
        assert!(dir.path().join("layer/small").is_file());
        assert!(!dir.path().join("layer/big").exists());
    }

    #[test]
    fn whiteouts_and_opaque_dirs_are_converted() {
        let fake = RecordingLayerFs::new();
        let (dir, result) = unpack(
            &[
                TarEntry::dir("etc"),
                TarEntry::file("etc/.wh.motd", b""),
                TarEntry::file("var/cache/.wh..wh..opq", b""),
                TarEntry::file(".wh.gone", b""),
                TarEntry::file("x/.wh..wh.plnk", b""),
            ],
            &fake,
        );
        let stats = result.unwrap();
        assert_eq!(stats.whiteouts, 2);
        assert_eq!(stats.opaque_dirs, 1);
        let layer = dir.path().join("layer");
        let calls: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| !matches!(c, LayerFsCall::Chown(..)))
            .collect();
        assert_eq!(
            calls,
            vec![
                LayerFsCall::Whiteout(layer.join("etc/motd")),
                LayerFsCall::Opaque(layer.join("var/cache")),
                LayerFsCall::Whiteout(layer.join("gone")),
            ]
        );
        // The markers themselves are never written as files; the opaque dir exists.
        assert!(!layer.join("etc/.wh.motd").exists());
        assert!(!layer.join("var/cache/.wh..wh..opq").exists());
        assert!(layer.join("var/cache").is_dir());
    }

    #[test]
    fn whiteouts_without_root_fail_clearly() {
        let fake = RecordingLayerFs::unprivileged();
        let (_dir, result) = unpack(&[TarEntry::file("a/.wh.b", b"")], &fake);
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::NeedsRoot { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("a/.wh.b") && msg.contains("requires root"),
            "{msg}"
        );

        let (_dir, result) = unpack(&[TarEntry::file("d/.wh..wh..opq", b"")], &fake);
        assert!(matches!(result, Err(UnpackError::NeedsRoot { .. })));
    }

    #[test]
    fn ownership_is_set_and_eperm_is_ignored() {
        let fake = RecordingLayerFs::unprivileged();
        let (dir, result) = unpack(&[TarEntry::file("f", b"data")], &fake);
        result.unwrap();
        assert_eq!(
            fake.calls(),
            vec![LayerFsCall::Chown(dir.path().join("layer/f"), 0, 0)]
        );
        assert_eq!(fs::read(dir.path().join("layer/f")).unwrap(), b"data");
    }

    #[test]
    fn modes_including_setuid_are_kept() {
        let fake = RecordingLayerFs::new();
        let (dir, result) = unpack(
            &[
                TarEntry::File {
                    path: "bin/su".into(),
                    mode: 0o4755,
                    data: b"x".to_vec(),
                },
                TarEntry::Dir {
                    path: "ro".into(),
                    mode: 0o555,
                },
                TarEntry::file("ro/inside", b"y"),
            ],
            &fake,
        );
        result.unwrap();
        let layer = dir.path().join("layer");
        assert_eq!(
            fs::metadata(layer.join("bin/su"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o4755
        );
        assert_eq!(
            fs::metadata(layer.join("ro")).unwrap().permissions().mode() & 0o7777,
            0o555
        );
        assert_eq!(fs::read(layer.join("ro/inside")).unwrap(), b"y");
        fs::set_permissions(layer.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn escaping_entries_are_refused_by_name() {
        let fake = RecordingLayerFs::new();
        let cases: Vec<(Vec<TarEntry>, &str)> = vec![
            (vec![TarEntry::file("../x", b"bad")], "../x"),
            (vec![TarEntry::file("/abs", b"bad")], "/abs"),
            (vec![TarEntry::file("a/../../x", b"bad")], "a/../../x"),
            (
                vec![
                    TarEntry::symlink("a", "/etc"),
                    TarEntry::file("a/passwd", b"bad"),
                ],
                "a/passwd",
            ),
            (
                vec![TarEntry::symlink("a", ".."), TarEntry::file("a/x", b"bad")],
                "a/x",
            ),
            (vec![TarEntry::hardlink("h", "/etc/passwd")], "h"),
            (vec![TarEntry::hardlink("h", "../outside")], "h"),
            (vec![TarEntry::hardlink("h", "not-there")], "h"),
            (
                vec![
                    TarEntry::symlink("s", "/etc"),
                    TarEntry::hardlink("h", "s/passwd"),
                ],
                "h",
            ),
            (
                vec![TarEntry::CharDevice {
                    path: "dev/null".into(),
                    major: 1,
                    minor: 3,
                }],
                "dev/null",
            ),
            (vec![TarEntry::Fifo { path: "p".into() }], "p"),
        ];
        for (entries, name) in cases {
            let (dir, result) = unpack(&entries, &fake);
            let err = result.expect_err(name);
            assert!(
                err.to_string().contains(&format!("`{name}`")),
                "{name}: {err}"
            );
            // Nothing escaped next to the layer directory.
            let siblings: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(siblings, vec![std::ffi::OsString::from("layer")], "{name}");
        }
    }

    #[test]
    fn symlinks_are_stored_verbatim_and_later_entries_replace_earlier_ones() {
        let fake = RecordingLayerFs::new();
        let (dir, result) = unpack(
            &[
                TarEntry::symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
                TarEntry::file("f", b"one"),
                TarEntry::file("f", b"two"),
                TarEntry::hardlink("g", "f"),
            ],
            &fake,
        );
        result.unwrap();
        let layer = dir.path().join("layer");
        assert_eq!(
            fs::read_link(layer.join("etc/localtime")).unwrap(),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        assert_eq!(fs::read(layer.join("g")).unwrap(), b"two");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(layer.join("f")).unwrap().ino(),
            fs::metadata(layer.join("g")).unwrap().ino()
        );
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let tar = tar_from_entries(&[TarEntry::file("big", &[1u8; 4096])]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_layer(&tar[..1000], dir.path(), &RecordingLayerFs::new()).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Truncated { .. } | UnpackError::Stream { .. }
            ),
            "{err}"
        );
    }
}
