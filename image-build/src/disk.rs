//! Bootable GPT disk images (raw and qcow2) for UEFI machines and clouds, built without root
//! or loop devices.
//!
//! Layout: partition 1 is the EFI System Partition (FAT32, label `ESP`) holding the Unified
//! Kernel Image as the removable-media boot path `EFI/BOOT/BOOTX64.EFI`; partition 2 is the
//! ext4 state partition (GPT name and fs label `berth-state`) that PID 1 mounts at
//! /var/lib/berth and grows to the end of the disk on first boot. Both filesystems are made as
//! plain files (`mkfs.vfat -C` + mtools, `mkfs.ext4 -d`) and spliced in at their offsets.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gpt::{self, Gpt, GptError, Partition, SECTOR};
use crate::uki::{self, UkiError};

/// One MiB.
pub const MIB: u64 = 1024 * 1024;
/// Smallest ESP (FAT32 wants at least 65525 clusters; 64 MiB of 512-byte clusters is plenty).
pub const MIN_ESP: u64 = 64 * MIB;
/// Default total disk size: the ESP, a 254 MiB state partition and the partition tables.
pub const DEFAULT_DISK_SIZE: u64 = 320 * MIB;
/// Smallest state partition accepted.
pub const MIN_STATE: u64 = 32 * MIB;
/// Partition alignment (and the room left for the backup table at the end).
const ALIGN: u64 = MIB;
/// GPT name and ext4 label of the state partition (what PID 1 looks for).
pub const STATE_LABEL: &str = "berth-state";

/// Errors building a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The UKI could not be made.
    #[error(transparent)]
    Uki(#[from] UkiError),
    /// An image could not be imported into the state partition's store.
    #[error("pre-seeding image {name:?} into the state partition's store")]
    Seed {
        /// The `[images]` name.
        name: String,
        /// Why.
        #[source]
        source: Box<berth_agent::store::StoreError>,
    },
    /// The partition table could not be laid out.
    #[error(transparent)]
    Gpt(#[from] GptError),
    /// A helper program is missing.
    #[error("cannot run {program}: install it with 'apt-get install {package}'")]
    MissingTool {
        /// The program.
        program: String,
        /// The Debian package providing it.
        package: &'static str,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program failed.
    #[error("{command} failed: {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// Its error output.
        stderr: String,
    },
    /// The requested disk is too small.
    #[error(
        "--disk-size {} MiB leaves {} MiB for the state partition after the {} MiB ESP; \
         give at least {} MiB",
        disk / MIB, state / MIB, esp / MIB, (esp + MIN_STATE + 2 * ALIGN) / MIB
    )]
    TooSmall {
        /// Requested disk size.
        disk: u64,
        /// The ESP size.
        esp: u64,
        /// What would be left for the state partition.
        state: u64,
    },
    /// Reading or writing an image file failed.
    #[error("cannot write {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What to put on the disk.
#[derive(Debug, Clone)]
pub struct DiskInputs {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The gzip'd initramfs.
    pub initramfs: PathBuf,
    /// The host manifest, seeded as `manifest.toml` on the state partition.
    pub manifest: PathBuf,
    /// The systemd EFI stub.
    pub stub: PathBuf,
    /// Total disk size in bytes (rounded up to whole MiB).
    pub disk_size: u64,
    /// Seed for the disk and partition GUIDs (same inputs, same GUIDs).
    pub seed: Vec<u8>,
    /// Images imported into the state partition's store at build time, so the first boot
    /// imports nothing.
    pub store_images: Vec<SeedImage>,
}

/// One image for the pre-seeded store.
#[derive(Debug, Clone)]
pub struct SeedImage {
    /// The `[images]` name.
    pub name: String,
    /// How it is packaged.
    pub format: berth_agent::manifest::ImageFormat,
    /// The layout directory or archive on this machine.
    pub path: PathBuf,
    /// The registry reference it was pulled from (recorded in the store), if any.
    pub source: Option<String>,
}

/// Where the partitions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Disk size in sectors.
    pub sectors: u64,
    /// ESP first sector and size in sectors.
    pub esp: (u64, u64),
    /// State partition first sector and size in sectors.
    pub state: (u64, u64),
}

/// Places the ESP (`esp_bytes`) at 1 MiB and the state partition right after it, filling a
/// disk of `disk_bytes` up to the last MiB (kept for the backup table).
pub fn layout(disk_bytes: u64, esp_bytes: u64) -> Result<Layout, DiskError> {
    let disk = disk_bytes.div_ceil(ALIGN) * ALIGN;
    let esp = esp_bytes.div_ceil(ALIGN) * ALIGN;
    let state = disk.saturating_sub(esp + 2 * ALIGN);
    if state < MIN_STATE {
        return Err(DiskError::TooSmall { disk, esp, state });
    }
    Ok(Layout {
        sectors: disk / SECTOR,
        esp: (ALIGN / SECTOR, esp / SECTOR),
        state: ((ALIGN + esp) / SECTOR, state / SECTOR),
    })
}

/// The partition table for `layout`.
pub fn table(layout: &Layout, seed: &[u8]) -> Result<Gpt, GptError> {
    Ok(Gpt {
        sectors: layout.sectors,
        disk_guid: gpt::derived_guid(seed, "disk"),
        partitions: vec![
            Partition {
                type_guid: gpt::guid_bytes(gpt::TYPE_ESP)?,
                guid: gpt::derived_guid(seed, "esp"),
                first_lba: layout.esp.0,
                last_lba: layout.esp.0 + layout.esp.1 - 1,
                name: "ESP".into(),
            },
            Partition {
                type_guid: gpt::guid_bytes(gpt::TYPE_LINUX)?,
                guid: gpt::derived_guid(seed, "state"),
                first_lba: layout.state.0,
                last_lba: layout.state.0 + layout.state.1 - 1,
                name: STATE_LABEL.into(),
            },
        ],
    })
}

fn run(cmd: &mut Command, package: &'static str) -> Result<(), DiskError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd.output().map_err(|source| DiskError::MissingTool {
        program: program.clone(),
        package,
        source,
    })?;
    if !output.status.success() {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return Err(DiskError::Tool {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A FAT32 ESP image of `bytes` holding `uki` as `EFI/BOOT/BOOTX64.EFI`.
fn make_esp(path: &Path, bytes: u64, uki: &Path) -> Result<(), DiskError> {
    run(
        Command::new("mkfs.vfat")
            .args(["-C", "-F", "32", "-S", "512", "-n", "ESP"])
            .arg(path)
            .arg((bytes / 1024).to_string()),
        "dosfstools",
    )?;
    let image = path.as_os_str();
    run(
        Command::new("mmd")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(image)
            .args(["::/EFI", "::/EFI/BOOT"]),
        "mtools",
    )?;
    run(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(image)
            .arg(uki)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
        "mtools",
    )
}

/// An ext4 image of `bytes` labelled `berth-state`, populated from `staging`.
fn make_state(path: &Path, bytes: u64, staging: &Path) -> Result<(), DiskError> {
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", STATE_LABEL, "-E", "root_owner=0:0", "-d"])
            .arg(staging)
            .arg(path)
            .arg(format!("{}k", bytes / 1024)),
        "e2fsprogs",
    )
}

/// Copies `src` into `dst` at `offset`, skipping all-zero blocks so the disk stays sparse.
fn splice(dst: &mut File, offset: u64, src: &Path) -> std::io::Result<()> {
    let mut input = File::open(src)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut at = offset;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = input.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        let chunk = &buf[..filled];
        if chunk.iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(at))?;
            dst.write_all(chunk)?;
        }
        at += filled as u64;
    }
}

/// Import `images` into `STATE/store` as berthd would, layers unpacked. Unpacked layers keep
/// their owners, device-node whiteouts and opaque xattrs, which only root can create: an
/// unprivileged build leaves the store empty and the first boot imports the images instead.
fn seed_store(state: &Path, images: &[SeedImage]) -> Result<(), DiskError> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if images.is_empty() || !root {
        return Ok(());
    }
    let seed_err = |name: &str| {
        let name = name.to_string();
        move |e| DiskError::Seed {
            name,
            source: Box::new(e),
        }
    };
    let store =
        berth_agent::store::Store::open(&state.join("store")).map_err(seed_err("(store)"))?;
    for image in images {
        store
            .import(&image.name, image.format, &image.path)
            .map_err(seed_err(&image.name))?;
        if let Some(source) = &image.source {
            store
                .record_source(&image.name, source)
                .map_err(seed_err(&image.name))?;
        }
    }
    Ok(())
}

/// Writes the raw disk to `raw` (using `scratch` for the UKI and filesystem images).
pub fn build_raw(inputs: &DiskInputs, scratch: &Path, raw: &Path) -> Result<Layout, DiskError> {
    let uki_path = scratch.join("BOOTX64.EFI");
    uki::build(
        &inputs.stub,
        &inputs.kernel,
        &inputs.initramfs,
        uki::CMDLINE,
        scratch,
        &uki_path,
    )?;
    let uki_size = std::fs::metadata(&uki_path)
        .map_err(io_err(&uki_path))?
        .len();
    let esp_bytes = MIN_ESP.max((uki_size + 8 * MIB).div_ceil(MIB) * MIB);
    let layout = layout(inputs.disk_size, esp_bytes)?;

    let esp_img = scratch.join("esp.img");
    make_esp(&esp_img, layout.esp.1 * SECTOR, &uki_path)?;
    let seed_dir = scratch.join("state");
    std::fs::create_dir_all(&seed_dir).map_err(io_err(&seed_dir))?;
    let seeded = seed_dir.join("manifest.toml");
    std::fs::copy(&inputs.manifest, &seeded).map_err(io_err(&seeded))?;
    seed_store(&seed_dir, &inputs.store_images)?;
    let state_img = scratch.join("state.img");
    make_state(&state_img, layout.state.1 * SECTOR, &seed_dir)?;

    let tables = table(&layout, &inputs.seed)?.tables()?;
    let mut disk = File::create(raw).map_err(io_err(raw))?;
    let write = |disk: &mut File| -> std::io::Result<()> {
        disk.set_len(layout.sectors * SECTOR)?;
        disk.write_all(&tables.head)?;
        disk.seek(SeekFrom::Start(tables.tail_offset))?;
        disk.write_all(&tables.tail)?;
        splice(disk, layout.esp.0 * SECTOR, &esp_img)?;
        splice(disk, layout.state.0 * SECTOR, &state_img)?;
        disk.sync_all()
    };
    write(&mut disk).map_err(io_err(raw))?;
    for f in [&uki_path, &esp_img, &state_img] {
        let _ = std::fs::remove_file(f);
    }
    Ok(layout)
}

/// Converts a raw disk to qcow2 with `qemu-img`.
pub fn convert_qcow2(raw: &Path, qcow2: &Path) -> Result<(), DiskError> {
    run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(qcow2),
        "qemu-utils",
    )
}

/// Parses a size like `320M`, `2G`, `1048576` (bytes) or `512K`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 320M, 2G)"))?;
    let mult = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1024,
        "M" => MIB,
        "G" => 1024 * MIB,
        _ => return Err(format!("{text:?}: unknown unit (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("320M"), Ok(320 * MIB));
        assert_eq!(parse_size("2G"), Ok(2048 * MIB));
        assert_eq!(parse_size("2GiB"), Ok(2048 * MIB));
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1T").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn layout_is_aligned_and_fills_the_disk() {
        let l = layout(DEFAULT_DISK_SIZE, MIN_ESP).unwrap();
        assert_eq!(l.sectors, 320 * 2048);
        assert_eq!(l.esp, (2048, 64 * 2048));
        assert_eq!(l.state, (65 * 2048, 254 * 2048));
        assert!(l.state.0 + l.state.1 - 1 <= gpt::last_usable(l.sectors));
        let err = layout(80 * MIB, MIN_ESP).unwrap_err();
        assert!(err.to_string().contains("at least 98 MiB"), "{err}");
    }

    #[test]
    fn table_names_the_state_partition() {
        let l = layout(DEFAULT_DISK_SIZE, MIN_ESP).unwrap();
        let t = table(&l, b"x").unwrap();
        assert_eq!(t.partitions[1].name, STATE_LABEL);
        assert_eq!(t.partitions[1].last_lba, 319 * 2048 - 1);
        t.tables().unwrap();
    }

    #[test]
    fn splice_keeps_holes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut data = vec![0u8; 3 * MIB as usize];
        data[10] = 1;
        data[2 * MIB as usize + 5] = 2;
        std::fs::write(&src, &data).unwrap();
        let dst_path = dir.path().join("dst");
        let mut dst = File::create(&dst_path).unwrap();
        dst.set_len(8 * MIB).unwrap();
        splice(&mut dst, MIB, &src).unwrap();
        drop(dst);
        let out = std::fs::read(&dst_path).unwrap();
        assert_eq!(out.len() as u64, 8 * MIB);
        assert_eq!(&out[MIB as usize..4 * MIB as usize], &data[..]);
        assert!(out[..MIB as usize].iter().all(|b| *b == 0));
    }
}
