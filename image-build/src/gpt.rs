//! GUID partition tables, written by hand so disk images are built without root, loop devices
//! or partitioning tools: a protective MBR, the primary header and partition array at the
//! start of the disk and their backup copies at its end, each with its CRC32.
//!
//! Sectors are 512 bytes; the partition array holds the usual 128 entries of 128 bytes.

use sha2::{Digest, Sha256};

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Entries in the partition array.
pub const ENTRIES: u32 = 128;
/// Bytes per partition entry.
pub const ENTRY_SIZE: u32 = 128;
/// Sectors the partition array occupies.
pub const ARRAY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
/// Size of the header proper (the rest of its sector is zero).
const HEADER_SIZE: u32 = 92;

/// EFI System Partition type.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Linux filesystem data type.
pub const TYPE_LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Errors laying out a partition table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    /// A GUID literal is malformed (a bug in a constant).
    #[error("{0:?} is not a GUID (want 8-4-4-4-12 hex digits)")]
    Guid(String),
    /// A partition name does not fit the 36 UTF-16 code units GPT allows.
    #[error("partition name {0:?} is longer than 36 UTF-16 code units")]
    Name(String),
    /// A partition lies outside the usable area or overlaps another one.
    #[error(
        "partition {name:?} (LBA {first}..={last}) does not fit the usable area \
         {first_usable}..={last_usable} or overlaps another partition"
    )]
    Placement {
        /// The partition's name.
        name: String,
        /// Its first LBA.
        first: u64,
        /// Its last LBA.
        last: u64,
        /// First usable LBA of the disk.
        first_usable: u64,
        /// Last usable LBA of the disk.
        last_usable: u64,
    },
    /// The disk is too small to hold two partition tables.
    #[error("a disk of {0} sectors cannot hold a GPT")]
    TooSmall(u64),
}

/// Parse "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" into GPT's on-disk byte order (the first three
/// groups little-endian, the last two as written).
pub fn guid_bytes(text: &str) -> Result<[u8; 16], GptError> {
    let bad = || GptError::Guid(text.to_string());
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return Err(bad());
    }
    let hex: String = groups.concat();
    let mut raw = [0u8; 16];
    for (i, byte) in raw.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    let mut out = raw;
    out[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    out[4..6].copy_from_slice(&[raw[5], raw[4]]);
    out[6..8].copy_from_slice(&[raw[7], raw[6]]);
    Ok(out)
}

/// A version-4-shaped GUID derived from `seed` and `what`, so rebuilding the same image gives
/// the same disk and partition GUIDs.
pub fn derived_guid(seed: &[u8], what: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(seed)
        .chain_update([0])
        .chain_update(what.as_bytes())
        .finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&digest[..16]);
    g[7] = (g[7] & 0x0f) | 0x40; // version 4 (stored little-endian in the third group)
    g[8] = (g[8] & 0x3f) | 0x80; // RFC 4122 variant
    g
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Partition type GUID (on-disk byte order).
    pub type_guid: [u8; 16],
    /// Unique partition GUID (on-disk byte order).
    pub guid: [u8; 16],
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// Partition name (what Linux shows as `PARTNAME`).
    pub name: String,
}

/// A partition table for a disk of `sectors` sectors.
#[derive(Debug, Clone)]
pub struct Gpt {
    /// Disk size in sectors.
    pub sectors: u64,
    /// Disk GUID (on-disk byte order).
    pub disk_guid: [u8; 16],
    /// The partitions, in entry order.
    pub partitions: Vec<Partition>,
}

/// The bytes to write at the start and at the end of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// Protective MBR, primary header and primary array: write at offset 0.
    pub head: Vec<u8>,
    /// Backup array and backup header: write at `tail_offset`.
    pub tail: Vec<u8>,
    /// Byte offset of `tail`.
    pub tail_offset: u64,
}

/// First usable LBA: after the MBR, the header and the array.
pub fn first_usable() -> u64 {
    2 + ARRAY_SECTORS
}

/// Last usable LBA of a disk of `sectors` sectors: before the backup array and header.
pub fn last_usable(sectors: u64) -> u64 {
    sectors.saturating_sub(2 + ARRAY_SECTORS)
}

/// A partition name as GPT stores it: UTF-16LE, NUL-padded to 72 bytes.
pub fn encode_name(name: &str) -> Result<[u8; 72], GptError> {
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > 36 {
        return Err(GptError::Name(name.to_string()));
    }
    let mut out = [0u8; 72];
    for (i, u) in units.iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&u.to_le_bytes());
    }
    Ok(out)
}

/// The protective MBR: one partition of type 0xEE covering the disk (capped at 2^32-1 sectors).
pub fn protective_mbr(sectors: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    entry[4] = 0xEE;
    entry[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(sectors.saturating_sub(1)).unwrap_or(u32::MAX);
    entry[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

/// Field values of one header.
struct HeaderFields {
    current: u64,
    backup: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: [u8; 16],
    array_lba: u64,
    array_crc: u32,
}

/// A 512-byte header sector with its CRC32 filled in.
fn header(f: &HeaderFields) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    h[24..32].copy_from_slice(&f.current.to_le_bytes());
    h[32..40].copy_from_slice(&f.backup.to_le_bytes());
    h[40..48].copy_from_slice(&f.first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&f.last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&f.disk_guid);
    h[72..80].copy_from_slice(&f.array_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&f.array_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

impl Gpt {
    /// The partition array (128 entries of 128 bytes).
    pub fn array(&self) -> Result<Vec<u8>, GptError> {
        let mut array = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut array[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(&p.type_guid);
            e[16..32].copy_from_slice(&p.guid);
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[56..128].copy_from_slice(&encode_name(&p.name)?);
        }
        Ok(array)
    }

    fn check(&self) -> Result<(), GptError> {
        if self.sectors < 2 * (2 + ARRAY_SECTORS) + 1 {
            return Err(GptError::TooSmall(self.sectors));
        }
        let (lo, hi) = (first_usable(), last_usable(self.sectors));
        let mut sorted: Vec<&Partition> = self.partitions.iter().collect();
        sorted.sort_by_key(|p| p.first_lba);
        let mut next_free = lo;
        for p in sorted {
            if p.first_lba < next_free || p.last_lba < p.first_lba || p.last_lba > hi {
                return Err(GptError::Placement {
                    name: p.name.clone(),
                    first: p.first_lba,
                    last: p.last_lba,
                    first_usable: lo,
                    last_usable: hi,
                });
            }
            next_free = p.last_lba + 1;
        }
        Ok(())
    }

    /// The protective MBR, both headers and both arrays.
    pub fn tables(&self) -> Result<Tables, GptError> {
        self.check()?;
        let array = self.array()?;
        let array_crc = crc32fast::hash(&array);
        let last = self.sectors - 1;
        let backup_array_lba = last - ARRAY_SECTORS;
        let fields = |current, backup, array_lba| HeaderFields {
            current,
            backup,
            first_usable: first_usable(),
            last_usable: last_usable(self.sectors),
            disk_guid: self.disk_guid,
            array_lba,
            array_crc,
        };
        let mut head = Vec::with_capacity(((2 + ARRAY_SECTORS) * SECTOR) as usize);
        head.extend_from_slice(&protective_mbr(self.sectors));
        head.extend_from_slice(&header(&fields(1, last, 2)));
        head.extend_from_slice(&array);
        let mut tail = array;
        tail.extend_from_slice(&header(&fields(last, 1, backup_array_lba)));
        Ok(Tables {
            head,
            tail,
            tail_offset: backup_array_lba * SECTOR,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn sample(sectors: u64) -> Gpt {
        Gpt {
            sectors,
            disk_guid: derived_guid(b"seed", "disk"),
            partitions: vec![
                Partition {
                    type_guid: guid_bytes(TYPE_ESP).unwrap(),
                    guid: derived_guid(b"seed", "esp"),
                    first_lba: 2048,
                    last_lba: 4095,
                    name: "ESP".into(),
                },
                Partition {
                    type_guid: guid_bytes(TYPE_LINUX).unwrap(),
                    guid: derived_guid(b"seed", "state"),
                    first_lba: 4096,
                    last_lba: last_usable(sectors),
                    name: "berth-state".into(),
                },
            ],
        }
    }

    #[test]
    fn guid_mixed_endianness() {
        let g = guid_bytes(TYPE_ESP).unwrap();
        assert_eq!(
            g,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert!(guid_bytes("C12A7328F81F11D2BA4B00A0C93EC93B").is_err());
        assert!(guid_bytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93G").is_err());
    }

    #[test]
    fn derived_guids_are_stable_and_distinct() {
        assert_eq!(derived_guid(b"a", "x"), derived_guid(b"a", "x"));
        assert_ne!(derived_guid(b"a", "x"), derived_guid(b"a", "y"));
        assert_eq!(derived_guid(b"a", "x")[7] >> 4, 4);
    }

    #[test]
    fn names_are_utf16le() {
        let n = encode_name("berth-state").unwrap();
        assert_eq!(&n[..6], &[b'b', 0, b'e', 0, b'r', 0]);
        assert!(n[22..].iter().all(|b| *b == 0));
        let n = encode_name("é").unwrap();
        assert_eq!(&n[..2], &0x00e9u16.to_le_bytes());
        assert!(encode_name(&"x".repeat(37)).is_err());
        assert!(encode_name(&"x".repeat(36)).is_ok());
    }

    #[test]
    fn headers_point_at_each_other_with_valid_crcs() {
        let sectors = 8192;
        let gpt = sample(sectors);
        let t = gpt.tables().unwrap();
        assert_eq!(t.head.len() as u64, (2 + ARRAY_SECTORS) * SECTOR);
        assert_eq!(t.tail_offset + t.tail.len() as u64, sectors * SECTOR);

        let mbr = &t.head[..512];
        assert_eq!(&mbr[510..], &[0x55, 0xAA]);
        assert_eq!(mbr[446 + 4], 0xEE);
        assert_eq!(u32_at(mbr, 446 + 8), 1);
        assert_eq!(u32_at(mbr, 446 + 12), (sectors - 1) as u32);

        let primary = &t.head[512..1024];
        let backup = &t.tail[t.tail.len() - 512..];
        let array = &t.head[1024..];
        assert_eq!(array, &t.tail[..t.tail.len() - 512]);
        for (h, current, other, array_lba) in [
            (primary, 1, sectors - 1, 2),
            (backup, sectors - 1, 1, sectors - 1 - ARRAY_SECTORS),
        ] {
            assert_eq!(&h[..8], b"EFI PART");
            let mut zeroed = h[..92].to_vec();
            zeroed[16..20].fill(0);
            assert_eq!(u32_at(h, 16), crc32fast::hash(&zeroed));
            assert_eq!(u64_at(h, 24), current);
            assert_eq!(u64_at(h, 32), other);
            assert_eq!(u64_at(h, 40), 34);
            assert_eq!(u64_at(h, 48), sectors - 34);
            assert_eq!(u64_at(h, 72), array_lba);
            assert_eq!(u32_at(h, 80), 128);
            assert_eq!(u32_at(h, 84), 128);
            assert_eq!(u32_at(h, 88), crc32fast::hash(array));
        }
        // Second entry: Linux data, LBAs and name.
        let e = &array[128..256];
        assert_eq!(&e[..16], &guid_bytes(TYPE_LINUX).unwrap());
        assert_eq!(u64_at(e, 32), 4096);
        assert_eq!(u64_at(e, 40), sectors - 34);
        assert_eq!(&e[56..58], &[b'b', 0]);
    }

    #[test]
    fn overlapping_or_out_of_range_partitions_are_refused() {
        let mut gpt = sample(8192);
        gpt.partitions[1].first_lba = 4000;
        assert!(matches!(gpt.tables(), Err(GptError::Placement { .. })));
        let mut gpt = sample(8192);
        gpt.partitions[1].last_lba = 8192 - 33;
        assert!(matches!(gpt.tables(), Err(GptError::Placement { .. })));
        let mut gpt = sample(8192);
        gpt.partitions[0].first_lba = 10;
        assert!(matches!(gpt.tables(), Err(GptError::Placement { .. })));
        assert!(matches!(sample(60).tables(), Err(GptError::TooSmall(60))));
    }
}
