//! Unified Kernel Images: the systemd EFI stub with the kernel, initramfs, command line and
//! os-release added as PE sections, so UEFI firmware boots berth from a single file on the ESP.
//!
//! The sections are added with `objcopy`; their virtual addresses must follow the stub's own
//! sections (aligned to the PE section alignment), which is what ukify and dracut compute too.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's (`systemd-boot-efi`) x86-64 Linux stub.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// The kernel command line the image boots with.
pub const CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4";

/// Errors making a UKI.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// The stub cannot be read.
    #[error(
        "cannot read the EFI stub {}: install it with 'apt-get install systemd-boot-efi'",
        path.display()
    )]
    ReadStub {
        /// The stub's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The stub is not a PE32+ image.
    #[error("the EFI stub {} is not a PE32+ image: {reason}", path.display())]
    BadStub {
        /// The stub's path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A section input could not be read or written.
    #[error("cannot prepare the UKI section file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// objcopy could not be run.
    #[error("cannot run objcopy: install binutils ('apt-get install binutils')")]
    Spawn(#[source] std::io::Error),
    /// objcopy failed.
    #[error("objcopy failed making {}: {stderr}", out.display())]
    Objcopy {
        /// The UKI being written.
        out: PathBuf,
        /// objcopy's error output.
        stderr: String,
    },
}

/// What the layout needs from the stub's PE headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeLayout {
    /// `ImageBase` (objcopy's VMAs include it).
    pub image_base: u64,
    /// `SectionAlignment`.
    pub section_alignment: u64,
    /// End of the last section in memory (relative to the image base).
    pub end_rva: u64,
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads the image base, section alignment and the end of the last section of a PE32+ file.
pub fn pe_layout(pe: &[u8]) -> Result<PeLayout, &'static str> {
    if pe.get(..2) != Some(b"MZ") {
        return Err("no MZ header");
    }
    let nt = le32(pe, 0x3c).ok_or("truncated DOS header")? as usize;
    if pe.get(nt..nt + 4) != Some(b"PE\0\0") {
        return Err("no PE signature");
    }
    let coff = nt + 4;
    let sections = le16(pe, coff + 2).ok_or("truncated COFF header")? as usize;
    let opt_size = le16(pe, coff + 16).ok_or("truncated COFF header")? as usize;
    let opt = coff + 20;
    if le16(pe, opt) != Some(0x20b) {
        return Err("not PE32+ (64-bit)");
    }
    let image_base = le64(pe, opt + 24).ok_or("truncated optional header")?;
    let section_alignment = u64::from(le32(pe, opt + 32).ok_or("truncated optional header")?);
    if section_alignment == 0 {
        return Err("section alignment is 0");
    }
    let table = opt + opt_size;
    let mut end_rva = 0u64;
    for i in 0..sections {
        let s = table + i * 40;
        let vsize = le32(pe, s + 8).ok_or("truncated section table")?;
        let vaddr = le32(pe, s + 12).ok_or("truncated section table")?;
        end_rva = end_rva.max(u64::from(vaddr) + u64::from(vsize));
    }
    if end_rva == 0 {
        return Err("no sections");
    }
    Ok(PeLayout {
        image_base,
        section_alignment,
        end_rva,
    })
}

fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

/// The VMA (image base included, as objcopy wants) of each added section of the given sizes:
/// after the stub's last section, each aligned to the section alignment, in order.
pub fn section_vmas(layout: &PeLayout, sizes: &[u64]) -> Vec<u64> {
    let mut next = align_up(layout.end_rva, layout.section_alignment);
    sizes
        .iter()
        .map(|size| {
            let vma = layout.image_base + next;
            next = align_up(next + size, layout.section_alignment);
            vma
        })
        .collect()
}

/// The os-release text embedded as `.osrel`.
pub fn os_release() -> String {
    format!(
        "NAME=berth\nID=berth\nPRETTY_NAME=\"berth {v}\"\nVERSION_ID={v}\n",
        v = env!("CARGO_PKG_VERSION")
    )
}

/// Writes `out`: `stub` plus `.osrel`, `.cmdline`, `.linux` (`kernel`) and `.initrd`
/// (`initrd`). `scratch` holds the small section files.
pub fn build(
    stub: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    scratch: &Path,
    out: &Path,
) -> Result<(), UkiError> {
    let pe = std::fs::read(stub).map_err(|source| UkiError::ReadStub {
        path: stub.to_path_buf(),
        source,
    })?;
    let layout = pe_layout(&pe).map_err(|reason| UkiError::BadStub {
        path: stub.to_path_buf(),
        reason,
    })?;
    let write = |name: &str, text: &str| -> Result<PathBuf, UkiError> {
        let path = scratch.join(name);
        std::fs::write(&path, text).map_err(|source| UkiError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };
    let osrel = write("osrel", &os_release())?;
    let cmdline_file = write("cmdline", cmdline)?;
    let sections = [
        (".osrel", osrel),
        (".cmdline", cmdline_file),
        (".linux", kernel.to_path_buf()),
        (".initrd", initrd.to_path_buf()),
    ];
    let mut sizes = Vec::new();
    for (_, path) in &sections {
        let meta = std::fs::metadata(path).map_err(|source| UkiError::Io {
            path: path.clone(),
            source,
        })?;
        sizes.push(meta.len());
    }
    let vmas = section_vmas(&layout, &sizes);
    let mut cmd = Command::new("objcopy");
    for ((name, path), vma) in sections.iter().zip(vmas) {
        cmd.arg("--add-section")
            .arg(format!("{name}={}", path.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
    }
    cmd.arg(stub).arg(out);
    let output = cmd.output().map_err(UkiError::Spawn)?;
    if !output.status.success() {
        return Err(UkiError::Objcopy {
            out: out.to_path_buf(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ with the given (virtual address, virtual size) sections.
    pub(crate) fn fake_pe(image_base: u64, alignment: u32, sections: &[(u32, u32)]) -> Vec<u8> {
        let nt = 0x80usize;
        let opt_size = 240usize;
        let mut pe = vec![0u8; nt + 24 + opt_size + 40 * sections.len()];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&(nt as u32).to_le_bytes());
        pe[nt..nt + 4].copy_from_slice(b"PE\0\0");
        pe[nt + 6..nt + 8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        pe[nt + 20..nt + 22].copy_from_slice(&(opt_size as u16).to_le_bytes());
        let opt = nt + 24;
        pe[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        pe[opt + 24..opt + 32].copy_from_slice(&image_base.to_le_bytes());
        pe[opt + 32..opt + 36].copy_from_slice(&alignment.to_le_bytes());
        for (i, (va, vs)) in sections.iter().enumerate() {
            let s = opt + opt_size + 40 * i;
            pe[s + 8..s + 12].copy_from_slice(&vs.to_le_bytes());
            pe[s + 12..s + 16].copy_from_slice(&va.to_le_bytes());
        }
        pe
    }

    #[test]
    fn reads_the_pe_layout() {
        let pe = fake_pe(0x1_4000_0000, 0x1000, &[(0x1000, 0x2345), (0x4000, 0x10)]);
        assert_eq!(
            pe_layout(&pe).unwrap(),
            PeLayout {
                image_base: 0x1_4000_0000,
                section_alignment: 0x1000,
                end_rva: 0x4010,
            }
        );
        assert_eq!(pe_layout(b"ELF"), Err("no MZ header"));
        let mut pe32 = pe.clone();
        pe32[0x80 + 24..0x80 + 26].copy_from_slice(&0x10bu16.to_le_bytes());
        assert_eq!(pe_layout(&pe32), Err("not PE32+ (64-bit)"));
    }

    #[test]
    fn sections_follow_the_stub_aligned() {
        let layout = PeLayout {
            image_base: 0x1_0000_0000,
            section_alignment: 0x1000,
            end_rva: 0x4010,
        };
        let vmas = section_vmas(&layout, &[0x20, 0x1000, 0x1001, 5]);
        assert_eq!(
            vmas,
            vec![0x1_0000_5000, 0x1_0000_6000, 0x1_0000_7000, 0x1_0000_9000]
        );
    }

    #[test]
    fn a_real_stub_gets_the_sections() {
        let stub = Path::new(DEFAULT_STUB);
        if !stub.exists() || Command::new("objcopy").arg("--version").output().is_err() {
            eprintln!(
                "skipped: no {DEFAULT_STUB} or objcopy (apt-get install systemd-boot-efi binutils)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel");
        let initrd = dir.path().join("initrd");
        std::fs::write(&kernel, vec![0xAB; 10_000]).unwrap();
        std::fs::write(&initrd, vec![0xCD; 5000]).unwrap();
        let out = dir.path().join("uki.efi");
        build(stub, &kernel, &initrd, CMDLINE, dir.path(), &out).unwrap();
        let dump = Command::new("objdump")
            .arg("-h")
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&dump.stdout);
        for name in [".osrel", ".cmdline", ".linux", ".initrd"] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        let uki = std::fs::read(&out).unwrap();
        let layout = pe_layout(&uki).unwrap();
        let stub_layout = pe_layout(&std::fs::read(stub).unwrap()).unwrap();
        assert!(layout.end_rva >= stub_layout.end_rva + 15_000);
        assert!(uki.windows(CMDLINE.len()).any(|w| w == CMDLINE.as_bytes()));
    }
}
