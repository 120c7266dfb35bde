//! A writer for the "newc" cpio format the kernel unpacks as an initramfs.
//!
//! The image is built without root and without an external `cpio` tool: entries (directories,
//! regular files, symlinks and device nodes) are described in memory and written with owner
//! 0:0, a fixed mtime, unique inode numbers and sorted names, so the same inputs always give
//! the same bytes. Format (see the kernel's `Documentation/driver-api/early-userspace/
//! buffer-format.rst`): every entry is the 6-byte magic `070701`, 13 fields of 8 hex digits,
//! the NUL-terminated name padded so header+name is a multiple of 4, then the data padded to a
//! multiple of 4. The archive ends with an entry named `TRAILER!!!`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";
/// Size of a newc header (magic + 13 fields of 8 hex digits).
pub const HEADER_LEN: usize = 110;
/// Name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Errors while describing or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// An entry name is not a clean relative path.
    #[error("cpio entry {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two entries with the same name.
    #[error("cpio entry {name:?} is added twice")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// An entry whose parent directory is not in the archive (the kernel would drop it).
    #[error("cpio entry {name:?} has no parent directory {parent:?} in the archive; add it first")]
    MissingParent {
        /// The name.
        name: String,
        /// The missing directory.
        parent: String,
    },
    /// A file too large for newc's 32-bit size field.
    #[error("{} is {size} bytes; a newc cpio entry holds at most 4 GiB", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The host tree holds something that cannot go into the archive.
    #[error("{} is a {kind}; only directories, regular files and symlinks can be copied", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A file changed size between being added and being written.
    #[error("{} changed while the archive was written; build again", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// Reading a host file failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing the archive failed.
    #[error("cannot write the cpio archive")]
    Write(#[source] io::Error),
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Held in memory.
    Bytes(Vec<u8>),
    /// Streamed from a host file of the given size when the archive is written.
    Path {
        /// The host file.
        path: PathBuf,
        /// Its size when it was added.
        size: u32,
    },
}

impl Data {
    fn len(&self) -> u32 {
        match self {
            // Sizes are checked when the entry is added.
            Data::Bytes(b) => u32::try_from(b.len()).unwrap_or(u32::MAX),
            Data::Path { size, .. } => *size,
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File(Data),
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device node.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`0o7777` mask); the type bits come from `kind`.
    pub perm: u32,
}

impl Entry {
    fn mode(&self) -> u32 {
        let kind = match self.kind {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDevice { .. } => S_IFCHR,
        };
        kind | (self.perm & 0o7777)
    }

    fn data_len(&self) -> u32 {
        match &self.kind {
            Kind::File(d) => d.len(),
            Kind::Symlink(t) => u32::try_from(t.len()).unwrap_or(u32::MAX),
            Kind::Dir | Kind::CharDevice { .. } => 0,
        }
    }
}

/// An archive being described: entries by name (no leading `/`), written in name order.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
    mtime: u32,
}

/// Checks and normalises an entry name: strips a leading `/`, refuses empty, `.`/`..`
/// components and NUL bytes.
fn clean_name(name: &str) -> Result<String, CpioError> {
    let bad = |reason| CpioError::BadName {
        name: name.to_string(),
        reason,
    };
    let trimmed = name.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(bad("the name is empty"));
    }
    if trimmed.contains('\0') {
        return Err(bad("the name contains a NUL byte"));
    }
    if trimmed.ends_with('/') {
        return Err(bad("the name ends with `/`"));
    }
    if trimmed == TRAILER {
        return Err(bad("the name is reserved for the end of the archive"));
    }
    for part in trimmed.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(bad(
                "every component must be a plain name (no `.`, `..` or `//`)",
            ));
        }
    }
    Ok(trimmed.to_string())
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl Archive {
    /// An empty archive whose entries all carry `mtime` (seconds since the epoch).
    pub fn new(mtime: u32) -> Archive {
        Archive {
            entries: BTreeMap::new(),
            mtime,
        }
    }

    /// Whether `name` (cleaned) is in the archive.
    pub fn contains(&self, name: &str) -> bool {
        clean_name(name).is_ok_and(|n| self.entries.contains_key(&n))
    }

    /// The entries, in the order they are written.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(n, e)| (n.as_str(), e))
    }

    /// Adds an entry; its parent directory must already be in the archive.
    pub fn add(&mut self, name: &str, entry: Entry) -> Result<(), CpioError> {
        let name = clean_name(name)?;
        if self.entries.contains_key(&name) {
            return Err(CpioError::Duplicate { name });
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            if !matches!(
                self.entries.get(parent),
                Some(Entry {
                    kind: Kind::Dir,
                    ..
                })
            ) {
                return Err(CpioError::MissingParent {
                    parent: parent.to_string(),
                    name,
                });
            }
        }
        self.entries.insert(name, entry);
        Ok(())
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.add(
            name,
            Entry {
                kind: Kind::Dir,
                perm,
            },
        )
    }

    /// Adds `name` and every missing parent directory (mode 0755).
    pub fn add_dir_all(&mut self, name: &str) -> Result<(), CpioError> {
        let name = clean_name(name)?;
        let mut path = String::new();
        for part in name.split('/') {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            if !self.entries.contains_key(&path) {
                self.add_dir(&path, 0o755)?;
            }
        }
        Ok(())
    }

    /// Adds a regular file held in memory.
    pub fn add_bytes(&mut self, name: &str, perm: u32, data: Vec<u8>) -> Result<(), CpioError> {
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge {
                path: PathBuf::from(name),
                size: data.len() as u64,
            });
        }
        self.add(
            name,
            Entry {
                kind: Kind::File(Data::Bytes(data)),
                perm,
            },
        )
    }

    /// Adds a regular file whose bytes are read from `path` when the archive is written.
    pub fn add_file(&mut self, name: &str, perm: u32, path: &Path) -> Result<(), CpioError> {
        let meta = std::fs::metadata(path).map_err(|source| CpioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(CpioError::Unsupported {
                path: path.to_path_buf(),
                kind: "non-regular file",
            });
        }
        let size = u32::try_from(meta.len()).map_err(|_| CpioError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        })?;
        self.add(
            name,
            Entry {
                kind: Kind::File(Data::Path {
                    path: path.to_path_buf(),
                    size,
                }),
                perm,
            },
        )
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.add(
            name,
            Entry {
                kind: Kind::Symlink(target.to_string()),
                perm: 0o777,
            },
        )
    }

    /// Adds a character device node.
    pub fn add_char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(
            name,
            Entry {
                kind: Kind::CharDevice { major, minor },
                perm,
            },
        )
    }

    /// Copies the host tree `src` (a directory) to `name` and below. Permissions are
    /// normalised so the archive does not depend on the host's umask: directories 0755,
    /// files 0755 when any execute bit is set, else 0644. Symlinks are kept as links.
    pub fn add_tree(&mut self, name: &str, src: &Path) -> Result<(), CpioError> {
        self.add_dir(name, 0o755)?;
        let name = clean_name(name)?;
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CpioError::Read { path, source }
        };
        let mut children: Vec<_> = std::fs::read_dir(src)
            .map_err(read_err(src))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err(src))?;
        children.sort();
        for child in children {
            let path = src.join(&child);
            let child_name = child.to_str().ok_or_else(|| CpioError::BadName {
                name: path.display().to_string(),
                reason: "the name is not UTF-8",
            })?;
            let entry_name = format!("{name}/{child_name}");
            let meta = std::fs::symlink_metadata(&path).map_err(read_err(&path))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.add_tree(&entry_name, &path)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(read_err(&path))?;
                let target = target.to_str().ok_or_else(|| CpioError::BadName {
                    name: path.display().to_string(),
                    reason: "the symlink target is not UTF-8",
                })?;
                self.add_symlink(&entry_name, target)?;
            } else if ft.is_file() {
                let perm = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                self.add_file(&entry_name, perm, &path)?;
            } else {
                return Err(CpioError::Unsupported {
                    path,
                    kind: "special file (device, FIFO or socket)",
                });
            }
        }
        Ok(())
    }

    /// The exact number of bytes [`Archive::write_to`] will produce.
    pub fn encoded_len(&self) -> u64 {
        let one = |name: &str, data: u32| {
            let head = HEADER_LEN + name.len() + 1;
            let data = data as usize;
            (head + padding(head) + data + padding(data)) as u64
        };
        self.entries
            .iter()
            .map(|(n, e)| one(n, e.data_len()))
            .sum::<u64>()
            + one(TRAILER, 0)
    }

    /// Writes the archive, trailer included, and returns the bytes written.
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<u64, CpioError> {
        let mut written = 0u64;
        for (ino, (name, entry)) in (1u32..).zip(self.entries.iter()) {
            let (rmajor, rminor) = match entry.kind {
                Kind::CharDevice { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let header = Header {
                ino,
                mode: entry.mode(),
                nlink: if entry.kind == Kind::Dir { 2 } else { 1 },
                mtime: self.mtime,
                filesize: entry.data_len(),
                rmajor,
                rminor,
            };
            written += write_header(out, &header, name)?;
            written += match &entry.kind {
                Kind::File(Data::Bytes(b)) => write_data(out, b)?,
                Kind::File(Data::Path { path, size }) => copy_file(out, path, *size)?,
                Kind::Symlink(target) => write_data(out, target.as_bytes())?,
                Kind::Dir | Kind::CharDevice { .. } => 0,
            };
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
            rmajor: 0,
            rminor: 0,
        };
        written += write_header(out, &trailer, TRAILER)?;
        Ok(written)
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rmajor: u32,
    rminor: u32,
}

fn write_header<W: Write>(out: &mut W, h: &Header, name: &str) -> Result<u64, CpioError> {
    let namesize = name.len() + 1;
    let mut buf = Vec::with_capacity(HEADER_LEN + namesize + 3);
    buf.extend_from_slice(MAGIC);
    let fields = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        h.mtime,
        h.filesize,
        0, // devmajor
        0, // devminor
        h.rmajor,
        h.rminor,
        u32::try_from(namesize).unwrap_or(u32::MAX),
        0, // check
    ];
    for f in fields {
        buf.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    buf.resize(buf.len() + padding(buf.len()), 0);
    out.write_all(&buf).map_err(CpioError::Write)?;
    Ok(buf.len() as u64)
}

fn write_data<W: Write>(out: &mut W, data: &[u8]) -> Result<u64, CpioError> {
    out.write_all(data).map_err(CpioError::Write)?;
    let pad = padding(data.len());
    out.write_all(&[0u8; 3][..pad]).map_err(CpioError::Write)?;
    Ok((data.len() + pad) as u64)
}

fn copy_file<W: Write>(out: &mut W, path: &Path, size: u32) -> Result<u64, CpioError> {
    let read_err = |source| CpioError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    // Read one byte more than expected to notice a file that grew.
    let mut limited = file.take(u64::from(size) + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let n = limited.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        copied += n as u64;
        if copied > u64::from(size) {
            return Err(CpioError::Changed {
                path: path.to_path_buf(),
            });
        }
        out.write_all(&buf[..n]).map_err(CpioError::Write)?;
    }
    if copied != u64::from(size) {
        return Err(CpioError::Changed {
            path: path.to_path_buf(),
        });
    }
    let pad = padding(size as usize);
    out.write_all(&[0u8; 3][..pad]).map_err(CpioError::Write)?;
    Ok(copied + pad as u64)
}

/// A minimal newc reader, for checking archives in tests.
#[cfg(test)]
pub(crate) mod read {
    use super::*;

    /// One parsed member.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Member {
        pub name: String,
        pub ino: u32,
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u32,
        pub mtime: u32,
        pub rmajor: u32,
        pub rminor: u32,
        pub data: Vec<u8>,
    }

    /// Parses a whole archive (up to and excluding the trailer), checking magic, alignment
    /// and that nothing follows the trailer.
    pub(crate) fn parse(bytes: &[u8]) -> Vec<Member> {
        let mut at = 0usize;
        let mut members = Vec::new();
        loop {
            assert_eq!(at % 4, 0, "entry not 4-byte aligned");
            let h = &bytes[at..at + HEADER_LEN];
            assert_eq!(&h[..6], MAGIC);
            let field = |i: usize| {
                let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let namesize = field(11) as usize;
            let name_at = at + HEADER_LEN;
            let name = &bytes[name_at..name_at + namesize];
            assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
            let name = std::str::from_utf8(&name[..namesize - 1])
                .unwrap()
                .to_string();
            let mut data_at = name_at + namesize;
            let pad = padding(data_at);
            assert!(bytes[data_at..data_at + pad].iter().all(|&b| b == 0));
            data_at += pad;
            let size = field(6) as usize;
            let data = bytes[data_at..data_at + size].to_vec();
            at = data_at + size;
            let pad = padding(at);
            assert!(bytes[at..at + pad].iter().all(|&b| b == 0));
            at += pad;
            if name == TRAILER {
                assert_eq!(at, bytes.len(), "bytes after the trailer");
                return members;
            }
            assert_eq!(field(12), 0, "check field");
            members.push(Member {
                name,
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                rmajor: field(9),
                rminor: field(10),
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read::parse;
    use super::*;

    fn bytes_of(a: &Archive) -> Vec<u8> {
        let mut out = Vec::new();
        let n = a.write_to(&mut out).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(a.encoded_len(), n);
        out
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let out = bytes_of(&Archive::new(0));
        let mut expected = b"070701".to_vec();
        for v in [0u32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0] {
            expected.extend_from_slice(format!("{v:08X}").as_bytes());
        }
        expected.extend_from_slice(b"TRAILER!!!\0");
        // 110 + 11 = 121 -> padded to 124.
        expected.extend_from_slice(&[0, 0, 0]);
        assert_eq!(out, expected);
        assert_eq!(out.len(), 124);
    }

    #[test]
    fn file_entry_byte_for_byte() {
        let mut a = Archive::new(0x5F5E_1000);
        a.add_bytes("/init", 0o755, b"hello".to_vec()).unwrap();
        let out = bytes_of(&a);
        let expected_header = concat!(
            "070701", "00000001", // ino
            "000081ED", // mode: S_IFREG | 0755
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "5F5E1000", // mtime
            "00000005", // filesize
            "00000000", // devmajor
            "00000000", // devminor
            "00000000", // rdevmajor
            "00000000", // rdevminor
            "00000005", // namesize: "init\0"
            "00000000", // check
        );
        let mut expected = expected_header.as_bytes().to_vec();
        expected.extend_from_slice(b"init\0");
        // 110 + 5 = 115 -> 1 byte of padding.
        expected.push(0);
        expected.extend_from_slice(b"hello\0\0\0");
        assert_eq!(&out[..expected.len()], &expected[..]);
        // The trailer follows at a 4-byte boundary.
        assert_eq!(&out[expected.len()..expected.len() + 6], b"070701");
        assert_eq!(out.len(), expected.len() + 124);
    }

    #[test]
    fn padding_for_every_name_and_data_length() {
        for name_len in 1..=8 {
            for data_len in 0..=8 {
                let name = "n".repeat(name_len);
                let mut a = Archive::new(0);
                a.add_bytes(&name, 0o644, vec![7u8; data_len]).unwrap();
                let out = bytes_of(&a);
                assert_eq!(out.len() % 4, 0);
                let head = HEADER_LEN + name_len + 1;
                let data_at = head + padding(head);
                assert_eq!(data_at % 4, 0);
                assert!(out[head..data_at].iter().all(|&b| b == 0));
                assert!(out[data_at..data_at + data_len].iter().all(|&b| b == 7));
                let next = data_at + data_len + padding(data_len);
                assert_eq!(
                    &out[next..next + 6],
                    MAGIC,
                    "name {name_len} data {data_len}"
                );
                let members = parse(&out);
                assert_eq!(members.len(), 1);
                assert_eq!(members[0].data.len(), data_len);
            }
        }
    }

    #[test]
    fn round_trip_of_every_kind_sorted_with_unique_inodes() {
        let mut a = Archive::new(42);
        a.add_dir("usr", 0o755).unwrap();
        a.add_dir("dev", 0o755).unwrap();
        a.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        a.add_dir_all("usr/bin").unwrap();
        a.add_symlink("usr/bin/sh", "busybox").unwrap();
        a.add_bytes("usr/bin/busybox", 0o755, b"\x7fELF".to_vec())
            .unwrap();
        let members = parse(&bytes_of(&a));
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "usr",
                "usr/bin",
                "usr/bin/busybox",
                "usr/bin/sh"
            ]
        );
        let mut inodes: Vec<_> = members.iter().map(|m| m.ino).collect();
        inodes.dedup();
        assert_eq!(inodes.len(), members.len());
        assert!(inodes.iter().all(|&i| i != 0));
        for m in &members {
            assert_eq!((m.uid, m.gid, m.mtime), (0, 0, 42));
        }
        let console = &members[1];
        assert_eq!(console.mode, 0o020_600);
        assert_eq!((console.rmajor, console.rminor), (5, 1));
        assert!(console.data.is_empty());
        assert_eq!(members[0].mode, 0o040_755);
        assert_eq!(members[0].nlink, 2);
        assert_eq!(members[5].mode, 0o120_777);
        assert_eq!(members[5].data, b"busybox");
        assert_eq!(members[4].mode, 0o100_755);
        assert_eq!(members[4].data, b"\x7fELF");
    }

    #[test]
    fn names_are_checked() {
        let mut a = Archive::new(0);
        for bad in ["", "/", "a/../b", "./a", "a//b", "a/", "TRAILER!!!", "a\0b"] {
            assert!(
                matches!(a.add_dir(bad, 0o755), Err(CpioError::BadName { .. })),
                "{bad:?}"
            );
        }
        a.add_dir("/etc", 0o755).unwrap();
        assert!(a.contains("etc"));
        assert!(matches!(
            a.add_dir("etc", 0o755),
            Err(CpioError::Duplicate { .. })
        ));
        assert!(matches!(
            a.add_bytes("var/x", 0o644, vec![]),
            Err(CpioError::MissingParent { parent, .. }) if parent == "var"
        ));
        a.add_bytes("etc/f", 0o644, vec![]).unwrap();
        assert!(matches!(
            a.add_bytes("etc/f/g", 0o644, vec![]),
            Err(CpioError::MissingParent { .. })
        ));
    }

    #[test]
    fn tree_copy_streams_files_and_keeps_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layout");
        std::fs::create_dir_all(src.join("blobs/sha256")).unwrap();
        std::fs::write(src.join("oci-layout"), "{}").unwrap();
        std::fs::write(src.join("blobs/sha256/abc"), vec![1u8; 70_000]).unwrap();
        let exe = src.join("run");
        std::fs::write(&exe, "x").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("blobs/sha256/abc", src.join("link")).unwrap();

        let mut a = Archive::new(0);
        a.add_dir_all("etc/berth/images").unwrap();
        a.add_tree("etc/berth/images/demo", &src).unwrap();
        let members = parse(&bytes_of(&a));
        let get = |n: &str| members.iter().find(|m| m.name == n).unwrap();
        assert_eq!(
            get("etc/berth/images/demo/blobs/sha256/abc").data,
            vec![1u8; 70_000]
        );
        assert_eq!(get("etc/berth/images/demo/oci-layout").mode, 0o100_644);
        assert_eq!(get("etc/berth/images/demo/run").mode, 0o100_755);
        let link = get("etc/berth/images/demo/link");
        assert_eq!(link.mode, 0o120_777);
        assert_eq!(link.data, b"blobs/sha256/abc");
        assert_eq!(get("etc/berth/images/demo/blobs").mode, 0o040_755);
    }

    #[test]
    fn a_file_that_changes_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "1234").unwrap();
        let mut a = Archive::new(0);
        a.add_file("f", 0o644, &f).unwrap();
        std::fs::write(&f, "123456").unwrap();
        assert!(matches!(
            a.write_to(&mut Vec::new()),
            Err(CpioError::Changed { .. })
        ));
        std::fs::write(&f, "12").unwrap();
        assert!(matches!(
            a.write_to(&mut Vec::new()),
            Err(CpioError::Changed { .. })
        ));
    }

    #[test]
    fn gnu_cpio_lists_the_archive_when_installed() {
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("cpio not installed; skipping");
            return;
        };
        assert!(status.status.success());
        let mut a = Archive::new(0);
        a.add_dir("etc", 0o755).unwrap();
        a.add_bytes("etc/hostname", 0o644, b"demo\n".to_vec())
            .unwrap();
        a.add_symlink("etc/link", "hostname").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.cpio");
        std::fs::write(&file, bytes_of(&a)).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("cpio -t --quiet < \"$1\"")
            .arg("sh")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "etc\netc/hostname\netc/link\n"
        );
    }
}
