//! Static-or-dynamic check for ELF executables.
//!
//! Everything the image runs before any container exists (`/init`, `berthd`, `berthctl`) and the
//! busybox of the demo rootfs must run without a dynamic loader: the initramfs has no
//! `/lib`, and a container rootfs made of one binary has none either. A dynamically linked
//! executable names its loader in a `PT_INTERP` program header, so "static" here means
//! "an ELF executable without `PT_INTERP`" (static-pie binaries, which carry `PT_DYNAMIC` but
//! no interpreter, are static). Only the file header and program headers are read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ELFDATA2MSB: u8 = 2;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
/// Program header tables beyond this are not real executables.
const MAX_PHNUM: u64 = 4096;

/// Why a file is not a usable static executable.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF file or its headers are damaged.
    #[error("{} is not an ELF executable: {reason}", path.display())]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is dynamically linked.
    #[error(
        "{} is dynamically linked (it needs the loader {interpreter}), but the image has no \
         shared libraries; use a statically linked build{hint}",
        path.display()
    )]
    Dynamic {
        /// The file.
        path: PathBuf,
        /// The `PT_INTERP` contents.
        interpreter: String,
        /// How to get a static build of this particular file.
        hint: String,
    },
}

/// What the headers say about linkage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    /// No `PT_INTERP`: runs without a dynamic loader.
    Static,
    /// `PT_INTERP` names this loader.
    Dynamic {
        /// The interpreter path, e.g. `/lib64/ld-linux-x86-64.so.2`.
        interpreter: String,
    },
}

/// Read `path`'s ELF headers and fail unless it is a static executable. `hint` is appended to
/// the "dynamically linked" message (e.g. "; build it with ...").
pub fn require_static(path: &Path, hint: &str) -> Result<(), ElfError> {
    let mut file = File::open(path).map_err(|source| ElfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match linkage(&mut file) {
        Ok(Linkage::Static) => Ok(()),
        Ok(Linkage::Dynamic { interpreter }) => Err(ElfError::Dynamic {
            path: path.to_path_buf(),
            interpreter,
            hint: hint.to_string(),
        }),
        Err(HeaderError::Io(source)) => Err(ElfError::Read {
            path: path.to_path_buf(),
            source,
        }),
        Err(HeaderError::Invalid(reason)) => Err(ElfError::NotElf {
            path: path.to_path_buf(),
            reason,
        }),
    }
}

/// Header parsing failure, before a path is attached.
#[derive(Debug)]
enum HeaderError {
    Io(std::io::Error),
    Invalid(String),
}

impl From<std::io::Error> for HeaderError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HeaderError::Invalid("the file ends inside its headers".to_string())
        } else {
            HeaderError::Io(e)
        }
    }
}

/// Field reader honouring the file's class and byte order.
struct Fields {
    is64: bool,
    little: bool,
}

impl Fields {
    fn u16(&self, b: &[u8], at: usize) -> u16 {
        let v = [b[at], b[at + 1]];
        if self.little {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        }
    }

    fn u32(&self, b: &[u8], at: usize) -> u32 {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.little {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    }

    fn u64(&self, b: &[u8], at: usize) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        if self.little {
            u64::from_le_bytes(v)
        } else {
            u64::from_be_bytes(v)
        }
    }

    /// A word-sized field: 4 bytes in ELF32, 8 in ELF64.
    fn word(&self, b: &[u8], at32: usize, at64: usize) -> u64 {
        if self.is64 {
            self.u64(b, at64)
        } else {
            u64::from(self.u32(b, at32))
        }
    }
}

fn linkage<R: Read + Seek>(file: &mut R) -> Result<Linkage, HeaderError> {
    let invalid = |s: &str| HeaderError::Invalid(s.to_string());
    let mut ident = [0u8; 16];
    file.read_exact(&mut ident)
        .map_err(|_| invalid("the file is shorter than an ELF header"))?;
    if ident[..4] != ELF_MAGIC {
        return Err(invalid("no ELF magic number at the start of the file"));
    }
    let is64 = match ident[4] {
        ELFCLASS32 => false,
        ELFCLASS64 => true,
        c => return Err(HeaderError::Invalid(format!("unknown ELF class {c}"))),
    };
    let little = match ident[5] {
        ELFDATA2LSB => true,
        ELFDATA2MSB => false,
        d => return Err(HeaderError::Invalid(format!("unknown ELF byte order {d}"))),
    };
    let f = Fields { is64, little };

    let header_len = if is64 { 64 } else { 52 };
    let mut header = vec![0u8; header_len];
    header[..16].copy_from_slice(&ident);
    file.read_exact(&mut header[16..])?;

    let e_type = f.u16(&header, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(HeaderError::Invalid(format!(
            "ELF type {e_type} is neither an executable nor a position-independent executable"
        )));
    }
    let phoff = f.word(&header, 28, 32);
    let (phentsize, phnum) = if is64 {
        (f.u16(&header, 54), f.u16(&header, 56))
    } else {
        (f.u16(&header, 42), f.u16(&header, 44))
    };
    let min_phentsize: u16 = if is64 { 56 } else { 32 };
    if phnum == 0 {
        return Err(invalid(
            "the file has no program headers, so it cannot be run",
        ));
    }
    if phentsize < min_phentsize || u64::from(phnum) > MAX_PHNUM {
        return Err(invalid("the program header table is malformed"));
    }

    let mut ph = vec![0u8; usize::from(phentsize)];
    for i in 0..u64::from(phnum) {
        file.seek(SeekFrom::Start(phoff + i * u64::from(phentsize)))?;
        file.read_exact(&mut ph)?;
        if f.u32(&ph, 0) != PT_INTERP {
            continue;
        }
        // p_offset and p_filesz of the interpreter string.
        let offset = f.word(&ph, 4, 8);
        let size = f.word(&ph, 16, 32);
        if size == 0 || size > 4096 {
            return Err(invalid("the PT_INTERP header has an implausible size"));
        }
        let mut name = vec![0u8; usize::try_from(size).unwrap_or(0)];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut name)?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let interpreter = String::from_utf8_lossy(&name[..end]).into_owned();
        return Ok(Linkage::Dynamic { interpreter });
    }
    Ok(Linkage::Static)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// A minimal little-endian ELF64 executable: the file header, then one PT_LOAD and,
    /// when `interp` is given, a PT_INTERP pointing at that string.
    pub(crate) fn elf64(e_type: u16, interp: Option<&str>) -> Vec<u8> {
        let phnum: u16 = if interp.is_some() { 2 } else { 1 };
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(&ELF_MAGIC);
        b[4] = ELFCLASS64;
        b[5] = ELFDATA2LSB;
        b[6] = 1;
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&phnum.to_le_bytes());
        let strings_at = 64 + 56 * u64::from(phnum);
        let mut load = vec![0u8; 56];
        load[..4].copy_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&load);
        if let Some(name) = interp {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            ph[8..16].copy_from_slice(&strings_at.to_le_bytes());
            ph[32..40].copy_from_slice(&(name.len() as u64 + 1).to_le_bytes());
            b.extend_from_slice(&ph);
            b.extend_from_slice(name.as_bytes());
            b.push(0);
        }
        b
    }

    /// The same shape as ELF32 big-endian, to exercise the other field layout.
    fn elf32_be(interp: Option<&str>) -> Vec<u8> {
        let phnum: u16 = 1;
        let mut b = vec![0u8; 52];
        b[..4].copy_from_slice(&ELF_MAGIC);
        b[4] = ELFCLASS32;
        b[5] = ELFDATA2MSB;
        b[16..18].copy_from_slice(&ET_EXEC.to_be_bytes());
        b[28..32].copy_from_slice(&52u32.to_be_bytes()); // e_phoff
        b[42..44].copy_from_slice(&32u16.to_be_bytes()); // e_phentsize
        b[44..46].copy_from_slice(&phnum.to_be_bytes());
        let mut ph = vec![0u8; 32];
        match interp {
            Some(name) => {
                ph[..4].copy_from_slice(&PT_INTERP.to_be_bytes());
                ph[4..8].copy_from_slice(&84u32.to_be_bytes()); // p_offset
                ph[16..20].copy_from_slice(&(name.len() as u32 + 1).to_be_bytes());
                b.extend_from_slice(&ph);
                b.extend_from_slice(name.as_bytes());
                b.push(0);
            }
            None => {
                ph[..4].copy_from_slice(&1u32.to_be_bytes());
                b.extend_from_slice(&ph);
            }
        }
        b
    }

    fn classify(bytes: Vec<u8>) -> Result<Linkage, HeaderError> {
        linkage(&mut Cursor::new(bytes))
    }

    #[test]
    fn crafted_static_and_dynamic_elf64() {
        assert_eq!(classify(elf64(ET_EXEC, None)).unwrap(), Linkage::Static);
        // static-pie: ET_DYN without an interpreter is still static.
        assert_eq!(classify(elf64(ET_DYN, None)).unwrap(), Linkage::Static);
        assert_eq!(
            classify(elf64(ET_DYN, Some("/lib/ld-musl-x86_64.so.1"))).unwrap(),
            Linkage::Dynamic {
                interpreter: "/lib/ld-musl-x86_64.so.1".to_string()
            }
        );
    }

    #[test]
    fn crafted_elf32_big_endian() {
        assert_eq!(classify(elf32_be(None)).unwrap(), Linkage::Static);
        assert_eq!(
            classify(elf32_be(Some("/lib/ld.so.1"))).unwrap(),
            Linkage::Dynamic {
                interpreter: "/lib/ld.so.1".to_string()
            }
        );
    }

    #[test]
    fn rejects_non_elf_and_damaged_headers() {
        assert!(matches!(
            classify(b"#!/bin/sh\necho hi\n".to_vec()),
            Err(HeaderError::Invalid(_))
        ));
        let mut relocatable = elf64(1, None);
        assert!(matches!(
            classify(relocatable.clone()),
            Err(HeaderError::Invalid(m)) if m.contains("neither")
        ));
        relocatable.truncate(40);
        assert!(matches!(
            classify(relocatable),
            Err(HeaderError::Invalid(_))
        ));
        // Program headers pointing past the end of the file.
        let mut cut = elf64(ET_EXEC, Some("/lib/ld.so"));
        cut.truncate(100);
        assert!(matches!(
            classify(cut),
            Err(HeaderError::Invalid(m)) if m.contains("ends inside")
        ));
    }

    #[test]
    fn require_static_on_files() {
        let dir = tempfile::tempdir().unwrap();
        let stat = dir.path().join("static");
        std::fs::write(&stat, elf64(ET_EXEC, None)).unwrap();
        require_static(&stat, "").unwrap();

        let dynamic = dir.path().join("dynamic");
        std::fs::write(&dynamic, elf64(ET_DYN, Some("/lib64/ld-linux-x86-64.so.2"))).unwrap();
        let err = require_static(&dynamic, "; rebuild it").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("dynamically linked"), "{msg}");
        assert!(msg.contains("/lib64/ld-linux-x86-64.so.2"), "{msg}");
        assert!(msg.ends_with("; rebuild it"), "{msg}");

        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(matches!(
            require_static(&script, ""),
            Err(ElfError::NotElf { .. })
        ));
        assert!(matches!(
            require_static(&dir.path().join("missing"), ""),
            Err(ElfError::Read { .. })
        ));
    }

    #[test]
    fn real_host_binaries() {
        // /bin/ls on any glibc distribution is dynamically linked.
        let ls = Path::new("/bin/ls");
        if ls.exists() {
            assert!(matches!(
                require_static(ls, ""),
                Err(ElfError::Dynamic { .. })
            ));
        }
        // Debian's busybox-static, when installed, is static.
        let busybox = Path::new("/bin/busybox");
        if busybox.exists() && Path::new("/usr/share/doc/busybox-static").exists() {
            require_static(busybox, "").unwrap();
        } else {
            eprintln!("busybox-static is not installed; skipping the static half");
        }
    }
}
