//! First-boot growth of the state partition to fill its disk.
//!
//! Disk images are built small and clouds (or `qemu-img resize`) hand them out larger. When
//! the GPT's backup header is not on the disk's last sector, the disk has grown: the backup
//! table moves to the end, the state partition (which must be the last one) is extended up to
//! the new last usable sector, both headers get fresh CRC32s, and the kernel is told the new
//! partition size (BLKPG). Once mounted, the ext4 filesystem is resized online with
//! `EXT4_IOC_RESIZE_FS`, so the image needs no resize2fs.
//!
//! The table logic works on any `Read + Write + Seek`, so it is tested on temporary files.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Bytes per sector (the only sector size handled).
pub const SECTOR: u64 = 512;
/// Largest partition array accepted (sanity bound against a corrupt header).
const MAX_ARRAY: u64 = 1024 * 1024;

/// Errors growing the state partition.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    /// Reading or writing the disk failed.
    #[error("cannot {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The disk holds no valid GPT.
    #[error("{0}; leaving the partition table alone")]
    BadTable(String),
    /// The state partition is not the last one, so it cannot grow.
    #[error("partition {0} is not the last partition on the disk, so it cannot grow")]
    NotLast(u32),
    /// sysfs does not describe the device as expected.
    #[error("cannot tell the disk of {}: {reason}", device.display())]
    Sysfs {
        /// The partition's sysfs directory.
        device: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The kernel refused the new partition size or the filesystem resize.
    #[error("{what} failed")]
    Ioctl {
        /// Which request.
        what: &'static str,
        /// The error.
        #[source]
        source: nix::errno::Errno,
    },
}

/// What [`grow_gpt`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// Partition number (1-based).
    pub partno: u32,
    /// First sector of the partition.
    pub first_lba: u64,
    /// Partition size before, in sectors.
    pub old_sectors: u64,
    /// Partition size after, in sectors.
    pub new_sectors: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Recomputes a header's CRC32 (over its first `size` bytes with the CRC field zeroed).
fn seal_header(h: &mut [u8], size: usize) {
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h[..size]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

fn header_valid(h: &[u8]) -> Result<usize, GrowError> {
    if &h[..8] != b"EFI PART" {
        return Err(GrowError::BadTable("no GPT header at LBA 1".into()));
    }
    let size = u32_at(h, 12) as usize;
    if !(92..=512).contains(&size) {
        return Err(GrowError::BadTable(format!(
            "GPT header size {size} is invalid"
        )));
    }
    let mut copy = h.to_vec();
    seal_header(&mut copy, size);
    if copy[16..20] != h[16..20] {
        return Err(GrowError::BadTable("GPT header CRC32 mismatch".into()));
    }
    Ok(size)
}

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T, GrowError> {
    r.map_err(|source| GrowError::Io {
        what: what.into(),
        source,
    })
}

fn read_at<D: Read + Seek>(disk: &mut D, offset: u64, len: usize) -> Result<Vec<u8>, GrowError> {
    let mut buf = vec![0u8; len];
    io(
        format!("read {len} bytes at byte {offset}"),
        disk.seek(SeekFrom::Start(offset))
            .and_then(|_| disk.read_exact(&mut buf)),
    )?;
    Ok(buf)
}

fn write_at<D: Write + Seek>(disk: &mut D, offset: u64, data: &[u8]) -> Result<(), GrowError> {
    io(
        format!("write {} bytes at byte {offset}", data.len()),
        disk.seek(SeekFrom::Start(offset))
            .and_then(|_| disk.write_all(data)),
    )
}

/// If the disk (`disk_sectors` long) is larger than its GPT says, move the backup table to
/// the end and extend partition `partno` (1-based, must be the last one) to the new last
/// usable sector. Returns `None` when there is nothing to do.
pub fn grow_gpt<D: Read + Write + Seek>(
    disk: &mut D,
    disk_sectors: u64,
    partno: u32,
) -> Result<Option<Growth>, GrowError> {
    let mut primary = read_at(disk, SECTOR, SECTOR as usize)?;
    let header_size = header_valid(&primary)?;
    let old_backup = u64_at(&primary, 32);
    let last = disk_sectors.saturating_sub(1);
    if old_backup >= last {
        return Ok(None);
    }
    let array_lba = u64_at(&primary, 72);
    let entries = u64::from(u32_at(&primary, 80));
    let entry_size = u64::from(u32_at(&primary, 84));
    let array_len = entries * entry_size;
    if entry_size < 128 || array_len == 0 || array_len > MAX_ARRAY {
        return Err(GrowError::BadTable(format!(
            "GPT partition array of {entries} entries of {entry_size} bytes is invalid"
        )));
    }
    let mut array = read_at(disk, array_lba * SECTOR, array_len as usize)?;
    if crc32fast::hash(&array) != u32_at(&primary, 88) {
        return Err(GrowError::BadTable(
            "GPT partition array CRC32 mismatch".into(),
        ));
    }
    let index = u64::from(partno.saturating_sub(1));
    if partno == 0 || index >= entries {
        return Err(GrowError::BadTable(format!(
            "partition {partno} is not in the GPT"
        )));
    }
    let entry = |i: u64| (i * entry_size) as usize;
    let at = entry(index);
    let first_lba = u64_at(&array, at + 32);
    let old_last = u64_at(&array, at + 40);
    for i in 0..entries {
        let e = entry(i);
        let used = array[e..e + 16].iter().any(|b| *b != 0);
        if i != index && used && u64_at(&array, e + 40) > old_last {
            return Err(GrowError::NotLast(partno));
        }
    }
    let array_sectors = array_len.div_ceil(SECTOR);
    let new_last_usable = last.saturating_sub(1 + array_sectors);
    if new_last_usable <= old_last {
        return Ok(None);
    }
    array[at + 40..at + 48].copy_from_slice(&new_last_usable.to_le_bytes());
    let array_crc = crc32fast::hash(&array);

    primary[32..40].copy_from_slice(&last.to_le_bytes());
    primary[48..56].copy_from_slice(&new_last_usable.to_le_bytes());
    primary[88..92].copy_from_slice(&array_crc.to_le_bytes());
    seal_header(&mut primary, header_size);
    let mut backup = primary.clone();
    backup[24..32].copy_from_slice(&last.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    let backup_array_lba = last - array_sectors;
    backup[72..80].copy_from_slice(&backup_array_lba.to_le_bytes());
    seal_header(&mut backup, header_size);

    // Backup first: a crash between the writes leaves a valid primary describing the old size.
    write_at(disk, backup_array_lba * SECTOR, &array)?;
    write_at(disk, last * SECTOR, &backup)?;
    write_at(disk, array_lba * SECTOR, &array)?;
    write_at(disk, SECTOR, &primary)?;
    // The old backup header now lies inside the partition (past its filesystem): clear it so
    // no tool mistakes it for a table.
    write_at(disk, old_backup * SECTOR, &[0u8; SECTOR as usize])?;
    let mut mbr = read_at(disk, 0, SECTOR as usize)?;
    if mbr[446 + 4] == 0xEE {
        let size = u32::try_from(last).unwrap_or(u32::MAX);
        mbr[446 + 12..446 + 16].copy_from_slice(&size.to_le_bytes());
        write_at(disk, 0, &mbr)?;
    }
    io("flush the disk", disk.flush())?;
    Ok(Some(Growth {
        partno,
        first_lba,
        old_sectors: old_last - first_lba + 1,
        new_sectors: new_last_usable - first_lba + 1,
    }))
}

/// The disk a partition belongs to, from sysfs: (disk name, partition number).
pub fn parent_disk(sys_class_block: &Path, part: &str) -> Result<(String, u32), GrowError> {
    let dir = sys_class_block.join(part);
    let bad = |reason: String| GrowError::Sysfs {
        device: dir.clone(),
        reason,
    };
    let partno = fs::read_to_string(dir.join("partition"))
        .map_err(|e| bad(format!("no partition number ({e})")))?
        .trim()
        .parse::<u32>()
        .map_err(|e| bad(format!("bad partition number ({e})")))?;
    let real = fs::canonicalize(&dir).map_err(|e| bad(format!("cannot resolve it ({e})")))?;
    let disk = real
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("no parent device".into()))?
        .to_string();
    Ok((disk, partno))
}

/// Disk size in 512-byte sectors from `/sys/class/block/DISK/size`.
pub fn disk_sectors(sys_class_block: &Path, disk: &str) -> Result<u64, GrowError> {
    let path = sys_class_block.join(disk).join("size");
    let text = io(
        format!("read {}", path.display()),
        fs::read_to_string(&path),
    )?;
    text.trim().parse().map_err(|_| GrowError::Sysfs {
        device: path,
        reason: format!("size {text:?} is not a number"),
    })
}

/// `struct blkpg_partition` from linux/blkpg.h.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// `struct blkpg_ioctl_arg` from linux/blkpg.h.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `BLKPG` = `_IO(0x12, 105)`.
const BLKPG: libc::c_ulong = 0x1269;
/// `BLKPG_RESIZE_PARTITION`.
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
/// `EXT4_IOC_RESIZE_FS` = `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Tells the kernel partition `g.partno` of the open whole-disk `disk` has its new size.
fn blkpg_resize(disk: &fs::File, g: &Growth) -> Result<(), GrowError> {
    let to_i64 = |sectors: u64| i64::try_from(sectors * SECTOR).unwrap_or(i64::MAX);
    let mut part = BlkpgPartition {
        start: to_i64(g.first_lba),
        length: to_i64(g.new_sectors),
        pno: i32::try_from(g.partno).unwrap_or(i32::MAX),
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG reads a blkpg_ioctl_arg whose data points at a blkpg_partition of
    // `datalen` bytes; both live on this stack frame for the duration of the call.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG as _, &mut arg as *mut BlkpgIoctlArg) };
    if rc < 0 {
        return Err(GrowError::Ioctl {
            what: "BLKPG_RESIZE_PARTITION",
            source: nix::errno::Errno::last(),
        });
    }
    Ok(())
}

/// Grows the GPT partition `/dev/PART` (named under `sys_class_block`) to the end of its
/// disk and tells the kernel. Call before mounting it.
pub fn grow_partition(
    sys_class_block: &Path,
    dev: &Path,
    part: &str,
) -> Result<Option<Growth>, GrowError> {
    let (disk_name, partno) = parent_disk(sys_class_block, part)?;
    let queue = sys_class_block
        .join(&disk_name)
        .join("queue/logical_block_size");
    if let Ok(size) = fs::read_to_string(&queue) {
        if size.trim() != "512" {
            return Err(GrowError::BadTable(format!(
                "{disk_name} has {}-byte sectors; only 512 is handled",
                size.trim()
            )));
        }
    }
    let sectors = disk_sectors(sys_class_block, &disk_name)?;
    let disk_path = dev.join(&disk_name);
    let mut disk = io(
        format!("open {}", disk_path.display()),
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk_path),
    )?;
    let growth = grow_gpt(&mut disk, sectors, partno)?;
    if let Some(g) = &growth {
        io(format!("sync {}", disk_path.display()), disk.sync_all())?;
        blkpg_resize(&disk, g)?;
    }
    Ok(growth)
}

/// Resizes the ext4 filesystem mounted at `mountpoint` online to `bytes`.
pub fn resize_ext4(mountpoint: &Path, bytes: u64) -> Result<(), GrowError> {
    let stat = nix::sys::statvfs::statvfs(mountpoint).map_err(|source| GrowError::Ioctl {
        what: "statvfs",
        source,
    })?;
    let block = stat.block_size().max(1);
    let mut blocks: u64 = bytes / block;
    let dir = io(
        format!("open {}", mountpoint.display()),
        fs::File::open(mountpoint),
    )?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from the pointer, which
    // points at a live local.
    let rc = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            EXT4_IOC_RESIZE_FS as _,
            &mut blocks as *mut u64,
        )
    };
    if rc < 0 {
        return Err(GrowError::Ioctl {
            what: "EXT4_IOC_RESIZE_FS",
            source: nix::errno::Errno::last(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const ARRAY_SECTORS: u64 = 32;

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A disk of `sectors` with a GPT made for `table_sectors`, holding (first, last) parts.
    fn disk(sectors: u64, table_sectors: u64, parts: &[(u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; (sectors * SECTOR) as usize];
        let mut array = vec![0u8; 128 * 128];
        for (i, (first, last)) in parts.iter().enumerate() {
            let e = &mut array[i * 128..(i + 1) * 128];
            e[0] = 0xAF; // any non-zero type GUID
            e[16] = i as u8 + 1;
            put64(e, 32, *first);
            put64(e, 40, *last);
            e[56] = b'p';
        }
        let last = table_sectors - 1;
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        put32(&mut h, 8, 0x0001_0000);
        put32(&mut h, 12, 92);
        put64(&mut h, 24, 1);
        put64(&mut h, 32, last);
        put64(&mut h, 40, 34);
        put64(&mut h, 48, last - 1 - ARRAY_SECTORS);
        put64(&mut h, 72, 2);
        put32(&mut h, 80, 128);
        put32(&mut h, 84, 128);
        put32(&mut h, 88, crc32fast::hash(&array));
        seal_header(&mut h, 92);
        d[446 + 4] = 0xEE;
        d[512..1024].copy_from_slice(&h);
        d[1024..1024 + array.len()].copy_from_slice(&array);
        let mut b = h.clone();
        put64(&mut b, 24, last);
        put64(&mut b, 32, 1);
        put64(&mut b, 72, last - ARRAY_SECTORS);
        seal_header(&mut b, 92);
        let ba = ((last - ARRAY_SECTORS) * SECTOR) as usize;
        d[ba..ba + array.len()].copy_from_slice(&array);
        d[(last * SECTOR) as usize..(table_sectors * SECTOR) as usize].copy_from_slice(&b);
        d
    }

    fn check_header(d: &[u8], lba: u64) -> Vec<u8> {
        let h = d[(lba * SECTOR) as usize..((lba + 1) * SECTOR) as usize].to_vec();
        header_valid(&h).unwrap();
        let array_lba = u64_at(&h, 72) as usize * 512;
        assert_eq!(
            crc32fast::hash(&d[array_lba..array_lba + 128 * 128]),
            u32_at(&h, 88)
        );
        h
    }

    #[test]
    fn grows_the_last_partition_and_moves_the_backup() {
        let mut cur = Cursor::new(disk(8192, 4096, &[(2048, 2559), (2560, 4096 - 34)]));
        let g = grow_gpt(&mut cur, 8192, 2).unwrap().unwrap();
        assert_eq!(
            g,
            Growth {
                partno: 2,
                first_lba: 2560,
                old_sectors: 4096 - 34 - 2560 + 1,
                new_sectors: 8192 - 34 - 2560 + 1,
            }
        );
        let d = cur.into_inner();
        let p = check_header(&d, 1);
        let b = check_header(&d, 8191);
        assert_eq!(u64_at(&p, 32), 8191);
        assert_eq!(u64_at(&p, 48), 8192 - 34);
        assert_eq!(u64_at(&b, 24), 8191);
        assert_eq!(u64_at(&b, 32), 1);
        assert_eq!(u64_at(&b, 72), 8191 - 32);
        assert_eq!(u64_at(&d, 1024 + 128 + 40), 8192 - 34);
        assert_eq!(u64_at(&d, 1024 + 40), 2559, "the ESP is untouched");
        assert!(
            d[4095 * 512..4096 * 512].iter().all(|b| *b == 0),
            "old backup cleared"
        );
        assert_eq!(u32_at(&d, 446 + 12), 8191);
        // A second run finds nothing to do.
        let mut cur = Cursor::new(d);
        assert_eq!(grow_gpt(&mut cur, 8192, 2).unwrap(), None);
    }

    #[test]
    fn works_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        fs::write(&path, disk(8192, 4096, &[(2048, 4096 - 34)])).unwrap();
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let g = grow_gpt(&mut f, 8192, 1).unwrap().unwrap();
        assert_eq!(g.new_sectors, 8192 - 34 - 2048 + 1);
        drop(f);
        let d = fs::read(&path).unwrap();
        check_header(&d, 8191);
    }

    #[test]
    fn an_unchanged_disk_is_left_alone() {
        let original = disk(4096, 4096, &[(2048, 4096 - 34)]);
        let mut cur = Cursor::new(original.clone());
        assert_eq!(grow_gpt(&mut cur, 4096, 1).unwrap(), None);
        assert_eq!(cur.into_inner(), original);
    }

    #[test]
    fn refuses_a_partition_that_is_not_last() {
        let mut cur = Cursor::new(disk(8192, 4096, &[(2048, 2559), (2560, 4000)]));
        assert!(matches!(
            grow_gpt(&mut cur, 8192, 1),
            Err(GrowError::NotLast(1))
        ));
    }

    #[test]
    fn refuses_corrupt_tables() {
        let mut d = disk(8192, 4096, &[(2048, 4000)]);
        d[1024 + 56] ^= 1; // array changed, CRC not updated
        let before = d.clone();
        let mut cur = Cursor::new(d);
        let err = grow_gpt(&mut cur, 8192, 1).unwrap_err();
        assert!(err.to_string().contains("array CRC32"), "{err}");
        assert_eq!(cur.into_inner(), before);
        let mut d = disk(8192, 4096, &[(2048, 4000)]);
        d[512 + 40] ^= 1;
        let err = grow_gpt(&mut Cursor::new(d), 8192, 1).unwrap_err();
        assert!(err.to_string().contains("header CRC32"), "{err}");
        let err = grow_gpt(&mut Cursor::new(vec![0u8; 8192 * 512]), 8192, 1).unwrap_err();
        assert!(matches!(err, GrowError::BadTable(_)));
    }

    #[test]
    fn finds_the_parent_disk_in_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        let devices = tmp.path().join("devices/virtio0/block/vda");
        fs::create_dir_all(devices.join("vda2")).unwrap();
        fs::write(devices.join("vda2/partition"), "2\n").unwrap();
        fs::write(devices.join("size"), "4194304\n").unwrap();
        let class = tmp.path().join("class");
        fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(devices.join("vda2"), class.join("vda2")).unwrap();
        std::os::unix::fs::symlink(&devices, class.join("vda")).unwrap();
        assert_eq!(parent_disk(&class, "vda2").unwrap(), ("vda".to_string(), 2));
        assert_eq!(disk_sectors(&class, "vda").unwrap(), 4194304);
        assert!(matches!(
            parent_disk(&class, "vda"),
            Err(GrowError::Sysfs { .. })
        ));
    }
}
