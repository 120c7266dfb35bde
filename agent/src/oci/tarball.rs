//! Building layer tars: a deterministic tar of a directory tree (what `berth-image oci`
//! ships), and tars from hand-written entries — including hostile ones such as `../x` or
//! device nodes — so tests can feed the store exactly the archive they want.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::OciError;

/// Writes a tar of the tree under `rootfs` into `out` and returns `out`.
///
/// Deterministic: entries in byte order of their names, mtime 0, uid/gid 0, no user/group
/// names. Modes (setuid/setgid/sticky included) and symlinks are preserved; files sharing an
/// inode become hard links to the first one. Device nodes, fifos and sockets are refused.
pub fn tar_directory<W: Write>(rootfs: &Path, out: W) -> Result<W, OciError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut seen_inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let meta = fs::symlink_metadata(rootfs).map_err(OciError::io("read", rootfs))?;
    if !meta.is_dir() {
        return Err(OciError::io("use as a root filesystem", rootfs)(
            io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
        ));
    }
    add_dir(&mut builder, rootfs, Path::new(""), &mut seen_inodes)?;
    builder
        .into_inner()
        .map_err(OciError::io("finish the tar of", rootfs))
}

fn base_header(entry_type: EntryType, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode & 0o7777);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header
}

fn add_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    seen: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), OciError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(OciError::io("list", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(OciError::io("list", &dir))?;
    names.sort();
    for name in names {
        let rel_path = rel.join(&name);
        let path = root.join(&rel_path);
        let meta = fs::symlink_metadata(&path).map_err(OciError::io("read", &path))?;
        let ft = meta.file_type();
        let add_err = OciError::io("add to the tar", &path);
        if ft.is_dir() {
            let mut header = base_header(EntryType::Directory, meta.mode());
            builder
                .append_data(&mut header, &rel_path, io::empty())
                .map_err(add_err)?;
            add_dir(builder, root, &rel_path, seen)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(OciError::io("read the symlink", &path))?;
            let mut header = base_header(EntryType::Symlink, 0o777);
            builder
                .append_link(&mut header, &rel_path, &target)
                .map_err(add_err)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = seen.get(&key) {
                    let mut header = base_header(EntryType::Link, meta.mode());
                    builder
                        .append_link(&mut header, &rel_path, first)
                        .map_err(add_err)?;
                    continue;
                }
                seen.insert(key, rel_path.clone());
            }
            let mut header = base_header(EntryType::Regular, meta.mode());
            header.set_size(meta.len());
            let file = fs::File::open(&path).map_err(OciError::io("open", &path))?;
            builder
                .append_data(&mut header, &rel_path, file)
                .map_err(add_err)?;
        } else {
            let kind = if ft.is_char_device() || ft.is_block_device() {
                "device nodes"
            } else if ft.is_fifo() {
                "fifos"
            } else {
                "sockets"
            };
            return Err(OciError::Unsupported { path, kind });
        }
    }
    Ok(())
}

/// One hand-written tar entry. Paths and link targets are written byte for byte, without
/// any of the sanitising `tar::Builder` does, so hostile archives can be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarEntry {
    /// A regular file.
    File {
        /// Entry name.
        path: String,
        /// Mode bits.
        mode: u32,
        /// Content.
        data: Vec<u8>,
    },
    /// A directory.
    Dir {
        /// Entry name.
        path: String,
        /// Mode bits.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Entry name.
        path: String,
        /// Link target, stored verbatim.
        target: String,
    },
    /// A hard link to an earlier entry.
    Hardlink {
        /// Entry name.
        path: String,
        /// Name of the linked entry.
        target: String,
    },
    /// A character device.
    CharDevice {
        /// Entry name.
        path: String,
        /// Device major.
        major: u32,
        /// Device minor.
        minor: u32,
    },
    /// A named pipe.
    Fifo {
        /// Entry name.
        path: String,
    },
}

impl TarEntry {
    /// A `0644` file.
    pub fn file(path: &str, data: &[u8]) -> TarEntry {
        TarEntry::File {
            path: path.to_string(),
            mode: 0o644,
            data: data.to_vec(),
        }
    }

    /// A `0755` directory.
    pub fn dir(path: &str) -> TarEntry {
        TarEntry::Dir {
            path: path.to_string(),
            mode: 0o755,
        }
    }

    /// A symlink `path -> target`.
    pub fn symlink(path: &str, target: &str) -> TarEntry {
        TarEntry::Symlink {
            path: path.to_string(),
            target: target.to_string(),
        }
    }

    /// A hard link `path` to `target`.
    pub fn hardlink(path: &str, target: &str) -> TarEntry {
        TarEntry::Hardlink {
            path: path.to_string(),
            target: target.to_string(),
        }
    }
}

fn set_raw(field: &mut [u8], value: &str, what: &'static str) -> Result<(), OciError> {
    let bytes = value.as_bytes();
    if bytes.len() > field.len() {
        return Err(OciError::EntryName {
            name: value.to_string(),
            reason: what,
        });
    }
    field.fill(0);
    if let Some(dst) = field.get_mut(..bytes.len()) {
        dst.copy_from_slice(bytes);
    }
    Ok(())
}

/// Builds an uncompressed tar from `entries`, in order.
pub fn tar_from_entries(entries: &[TarEntry]) -> Result<Vec<u8>, OciError> {
    let mut builder = tar::Builder::new(Vec::new());
    let write_err = |source| OciError::Io {
        op: "build",
        path: PathBuf::from("<tar in memory>"),
        source,
    };
    for entry in entries {
        let (path, mut header, data): (&str, Header, &[u8]) = match entry {
            TarEntry::File { path, mode, data } => {
                let mut h = base_header(EntryType::Regular, *mode);
                h.set_size(data.len() as u64);
                (path, h, data)
            }
            TarEntry::Dir { path, mode } => (path, base_header(EntryType::Directory, *mode), &[]),
            TarEntry::Symlink { path, target } => {
                let mut h = base_header(EntryType::Symlink, 0o777);
                set_raw(
                    &mut h.as_old_mut().linkname,
                    target,
                    "link target longer than 100 bytes",
                )?;
                (path, h, &[])
            }
            TarEntry::Hardlink { path, target } => {
                let mut h = base_header(EntryType::Link, 0o644);
                set_raw(
                    &mut h.as_old_mut().linkname,
                    target,
                    "link target longer than 100 bytes",
                )?;
                (path, h, &[])
            }
            TarEntry::CharDevice { path, major, minor } => {
                let mut h = base_header(EntryType::Char, 0o666);
                h.set_device_major(*major).map_err(write_err)?;
                h.set_device_minor(*minor).map_err(write_err)?;
                (path, h, &[])
            }
            TarEntry::Fifo { path } => (path, base_header(EntryType::Fifo, 0o644), &[]),
        };
        set_raw(
            &mut header.as_old_mut().name,
            path,
            "name longer than 100 bytes",
        )?;
        header.set_cksum();
        builder.append(&header, data).map_err(write_err)?;
    }
    builder.into_inner().map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_written_verbatim() {
        let tar = tar_from_entries(&[
            TarEntry::file("../escape", b"x"),
            TarEntry::file("/abs", b"y"),
            TarEntry::hardlink("h", "/etc/shadow"),
        ])
        .unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<(String, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned());
                (String::from_utf8_lossy(&e.path_bytes()).into_owned(), link)
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("../escape".to_string(), None),
                ("/abs".to_string(), None),
                ("h".to_string(), Some("/etc/shadow".to_string())),
            ]
        );
    }

    #[test]
    fn directory_tar_is_sorted_and_normalised() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("b")).unwrap();
        fs::write(dir.path().join("b/z"), b"zz").unwrap();
        fs::write(dir.path().join("a"), b"a").unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("c")).unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.path().join("l")).unwrap();
        let tar = tar_directory(dir.path(), Vec::new()).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, EntryType, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                (name, h.entry_type(), h.mtime().unwrap(), h.uid().unwrap())
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a", "b", "b/z", "c", "l"]);
        assert_eq!(entries[3].1, EntryType::Link);
        assert_eq!(entries[4].1, EntryType::Symlink);
        assert!(entries.iter().all(|e| e.2 == 0 && e.3 == 0));
    }
}
