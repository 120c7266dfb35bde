//! File system labels of config drives, read from a device's first bytes.
//!
//! A berth host has no udev or blkid: finding the drive labelled `cidata` or `BERTH` means
//! reading the label where vfat and ISO9660 keep it. Pure functions over bytes, so every
//! layout is unit-tested.

/// The file systems a config drive may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    /// FAT12/16/32 (cloud-init NoCloud drives made with mkfs.vfat or mtools).
    Vfat,
    /// ISO9660 (cloud-init NoCloud drives made with genisoimage/xorriso).
    Iso9660,
}

impl FsType {
    /// The kernel's name for mount(2).
    pub fn kernel_name(self) -> &'static str {
        match self {
            FsType::Vfat => "vfat",
            FsType::Iso9660 => "iso9660",
        }
    }
}

/// How many leading bytes [`probe`] needs (the ISO9660 primary volume descriptor is at 32 KiB).
pub const PROBE_BYTES: usize = ISO_PVD + 2048;

const ISO_PVD: usize = 16 * 2048;

/// The file system and label of a device whose first bytes are `head`, if it is vfat or
/// ISO9660 and has a label.
pub fn probe(head: &[u8]) -> Option<(FsType, String)> {
    iso9660_label(head)
        .map(|l| (FsType::Iso9660, l))
        .or_else(|| vfat_label(head).map(|l| (FsType::Vfat, l)))
}

fn iso9660_label(head: &[u8]) -> Option<String> {
    let pvd = head.get(ISO_PVD..ISO_PVD + 72)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    text(&pvd[40..72])
}

fn vfat_label(head: &[u8]) -> Option<String> {
    let sector = head.get(..512)?;
    if sector[510..512] != [0x55, 0xaa] || !matches!(sector[0], 0xeb | 0xe9) {
        return None;
    }
    let bytes_per_sector = u16::from_le_bytes([sector[11], sector[12]]);
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
        return None;
    }
    let fat16_size = u16::from_le_bytes([sector[22], sector[23]]);
    // FAT32 keeps its extended boot record after the 32-bit fields; FAT12/16 right after the
    // BIOS parameter block. Each has signature 0x29, an 11-byte label and a type string.
    let (signature, label, fs_type) = if fat16_size == 0 {
        (0x42, 0x47..0x52, 0x52..0x5a)
    } else {
        (0x26, 0x2b..0x36, 0x36..0x3e)
    };
    if sector[signature] != 0x29 || !sector[fs_type].starts_with(b"FAT") {
        return None;
    }
    text(&sector[label]).filter(|l| l != "NO NAME")
}

/// Space- or NUL-padded ASCII, `None` when empty.
fn text(bytes: &[u8]) -> Option<String> {
    let s: String = bytes
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| char::from(*b))
        .collect();
    let s = s.trim_end().to_string();
    (!s.is_empty() && s.is_ascii()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fat_boot_sector(fat32: bool, label: &[u8; 11]) -> Vec<u8> {
        let mut s = vec![0u8; PROBE_BYTES];
        s[0] = 0xeb;
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[510] = 0x55;
        s[511] = 0xaa;
        if fat32 {
            s[0x42] = 0x29;
            s[0x47..0x52].copy_from_slice(label);
            s[0x52..0x5a].copy_from_slice(b"FAT32   ");
        } else {
            s[22..24].copy_from_slice(&2u16.to_le_bytes());
            s[0x26] = 0x29;
            s[0x2b..0x36].copy_from_slice(label);
            s[0x36..0x3e].copy_from_slice(b"FAT12   ");
        }
        s
    }

    #[test]
    fn fat12_and_fat32_labels() {
        assert_eq!(
            probe(&fat_boot_sector(false, b"CIDATA     ")),
            Some((FsType::Vfat, "CIDATA".into()))
        );
        assert_eq!(
            probe(&fat_boot_sector(true, b"BERTH      ")),
            Some((FsType::Vfat, "BERTH".into()))
        );
    }

    #[test]
    fn unlabelled_or_foreign_boot_sectors_have_no_label() {
        assert_eq!(probe(&fat_boot_sector(false, b"NO NAME    ")), None);
        let mut ntfs = fat_boot_sector(false, b"CIDATA     ");
        ntfs[0x36..0x3e].copy_from_slice(b"NTFS    ");
        assert_eq!(probe(&ntfs), None);
        let mut mbr = fat_boot_sector(false, b"CIDATA     ");
        mbr[0] = 0x33;
        assert_eq!(probe(&mbr), None);
        assert_eq!(probe(&[0u8; 100]), None);
    }

    #[test]
    fn iso9660_volume_id() {
        let mut head = vec![0u8; PROBE_BYTES];
        head[ISO_PVD] = 1;
        head[ISO_PVD + 1..ISO_PVD + 6].copy_from_slice(b"CD001");
        let mut id = [b' '; 32];
        id[..6].copy_from_slice(b"cidata");
        head[ISO_PVD + 40..ISO_PVD + 72].copy_from_slice(&id);
        assert_eq!(probe(&head), Some((FsType::Iso9660, "cidata".into())));
        assert_eq!(FsType::Iso9660.kernel_name(), "iso9660");
    }
}
