//! Config drives: a small vfat or ISO9660 disk labelled `cidata` (cloud-init NoCloud, the
//! manifest is its `user-data`) or `BERTH` (the manifest is its `manifest.toml`).
//!
//! Block devices, their first bytes and read-only mounts go through [`Drives`], so finding the
//! drive and picking the file are unit-tested with a fake.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::label::{self, FsType};
use super::{Found, Source, SourceError};
use crate::manifest::MAX_MANIFEST_BYTES;

/// Labels of config drives, compared without case (vfat labels are often upper-cased).
pub const LABELS: [&str; 2] = ["cidata", "BERTH"];

/// The manifest's file on a `cidata` drive (cloud-init NoCloud).
pub const NOCLOUD_FILE: &str = "user-data";
/// The manifest's file on a `BERTH` drive.
pub const BERTH_FILE: &str = "manifest.toml";

/// Side effects of reading config drives.
pub trait Drives {
    /// Every block device (disks and partitions), in a stable order.
    fn devices(&mut self) -> Vec<PathBuf>;
    /// The first [`label::PROBE_BYTES`] bytes of `device` (fewer when it is smaller).
    fn head(&mut self, device: &Path) -> std::io::Result<Vec<u8>>;
    /// Mount `device` read-only as `fs` and read `file` (relative) from it; `None` when the
    /// file does not exist.
    fn read_file(
        &mut self,
        device: &Path,
        fs: FsType,
        file: &Path,
    ) -> std::io::Result<Option<Vec<u8>>>;
}

/// A config drive found by its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDrive {
    /// Device node.
    pub device: PathBuf,
    /// File system.
    pub fs: FsType,
    /// Its label as written (`cidata`, `CIDATA`, `BERTH`, ...).
    pub label: String,
}

impl ConfigDrive {
    /// Whether this is a cloud-init NoCloud drive (label `cidata`).
    pub fn is_nocloud(&self) -> bool {
        self.label.eq_ignore_ascii_case(LABELS[0])
    }

    /// The file holding the manifest when the command line names none.
    pub fn default_file(&self) -> &'static str {
        if self.is_nocloud() {
            NOCLOUD_FILE
        } else {
            BERTH_FILE
        }
    }

    /// `LABEL:DEVICE:FILE`, the name errors about the file use.
    pub fn origin(&self, file: &Path) -> String {
        format!(
            "{}:{}:{}",
            self.label,
            self.device.display(),
            file.display()
        )
    }
}

/// The first device labelled `cidata` or `BERTH` (any case).
pub fn find(drives: &mut dyn Drives) -> Option<ConfigDrive> {
    for device in drives.devices() {
        let Ok(head) = drives.head(&device) else {
            continue;
        };
        if let Some((fs, label)) = label::probe(&head) {
            if LABELS.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
                return Some(ConfigDrive { device, fs, label });
            }
        }
    }
    None
}

/// A path on a config drive as given on the kernel command line: relative, no `..`.
pub fn drive_path(path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    let ok =
        !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| rel.to_path_buf())
}

/// Read `file` from `drive`; `None` when it does not exist.
pub fn read(
    drives: &mut dyn Drives,
    drive: &ConfigDrive,
    file: &Path,
) -> Result<Option<Found>, SourceError> {
    let origin = drive.origin(file);
    match drives.read_file(&drive.device, drive.fs, file) {
        Ok(Some(bytes)) => Ok(Some(Found { origin, bytes })),
        Ok(None) => Ok(None),
        Err(source) => Err(SourceError::Read { origin, source }),
    }
}

/// Source 3: the manifest on a config drive.
#[derive(Debug)]
pub struct DriveSource<D> {
    drives: D,
}

impl<D: Drives> DriveSource<D> {
    /// Looks for config drives through `drives`.
    pub fn new(drives: D) -> Self {
        DriveSource { drives }
    }
}

impl<D: Drives> Source for DriveSource<D> {
    fn kind(&self) -> &'static str {
        "config-drive"
    }

    fn fetch(&mut self) -> Result<Option<Found>, SourceError> {
        let Some(drive) = find(&mut self.drives) else {
            return Ok(None);
        };
        let file = Path::new(drive.default_file());
        match read(&mut self.drives, &drive, file)? {
            Some(found) => Ok(Some(found)),
            None => Err(SourceError::Unusable {
                origin: drive.origin(file),
                message: format!(
                    "the config drive has no {} file; put the host manifest (TOML) there",
                    file.display()
                ),
            }),
        }
    }
}

/// The real [`Drives`]: `/sys/class/block`, device nodes under `/dev`, mounts below a
/// private directory.
#[derive(Debug, Clone)]
pub struct HostDrives {
    /// Where the kernel lists block devices (`/sys/class/block`).
    pub sys_block: PathBuf,
    /// Where their nodes are (`/dev`).
    pub dev: PathBuf,
    /// An empty directory to mount a drive on for the time of one read.
    pub mount_point: PathBuf,
}

impl Default for HostDrives {
    fn default() -> Self {
        HostDrives {
            sys_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
            mount_point: PathBuf::from("/run/berth/config-drive"),
        }
    }
}

impl Drives for HostDrives {
    fn devices(&mut self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.sys_block) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            // RAM disks and loop devices never hold a config drive.
            .filter(|n| !n.starts_with("ram") && !n.starts_with("loop"))
            .filter(|n| {
                std::fs::read_to_string(self.sys_block.join(n).join("size"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .is_some_and(|sectors| sectors > 0)
            })
            .collect();
        names.sort();
        names.into_iter().map(|n| self.dev.join(n)).collect()
    }

    fn head(&mut self, device: &Path) -> std::io::Result<Vec<u8>> {
        let mut head = Vec::with_capacity(label::PROBE_BYTES);
        std::fs::File::open(device)?
            .take(label::PROBE_BYTES as u64)
            .read_to_end(&mut head)?;
        Ok(head)
    }

    fn read_file(
        &mut self,
        device: &Path,
        fs: FsType,
        file: &Path,
    ) -> std::io::Result<Option<Vec<u8>>> {
        std::fs::create_dir_all(&self.mount_point)?;
        nix::mount::mount(
            Some(device),
            &self.mount_point,
            Some(fs.kernel_name()),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(std::io::Error::from)?;
        let path = self.mount_point.join(file);
        let result = match std::fs::File::open(&path) {
            Ok(f) => {
                let mut bytes = Vec::new();
                f.take(MAX_MANIFEST_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map(|_| Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        if nix::mount::umount2(&self.mount_point, MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.mount_point, MntFlags::MNT_DETACH);
        }
        result
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Devices with a label and files; records every mount-and-read.
    #[derive(Default)]
    pub(crate) struct FakeDrives {
        pub labels: Vec<(PathBuf, Option<(FsType, String)>)>,
        pub files: BTreeMap<PathBuf, Vec<u8>>,
        pub reads: Vec<(PathBuf, FsType, PathBuf)>,
    }

    impl FakeDrives {
        pub(crate) fn with(label: &str, fs: FsType, files: &[(&str, &str)]) -> Self {
            FakeDrives {
                labels: vec![
                    (PathBuf::from("/dev/vda"), None),
                    (PathBuf::from("/dev/vdb"), Some((fs, label.into()))),
                ],
                files: files
                    .iter()
                    .map(|(p, c)| (PathBuf::from(p), c.as_bytes().to_vec()))
                    .collect(),
                reads: Vec::new(),
            }
        }
    }

    /// A head whose label [`label::probe`] reads back (an ISO9660 volume descriptor).
    fn iso_head(label: &str) -> Vec<u8> {
        let mut head = vec![0u8; label::PROBE_BYTES];
        head[32768] = 1;
        head[32769..32774].copy_from_slice(b"CD001");
        let mut id = [b' '; 32];
        id[..label.len()].copy_from_slice(label.as_bytes());
        head[32768 + 40..32768 + 72].copy_from_slice(&id);
        head
    }

    impl Drives for FakeDrives {
        fn devices(&mut self) -> Vec<PathBuf> {
            self.labels.iter().map(|(d, _)| d.clone()).collect()
        }
        fn head(&mut self, device: &Path) -> std::io::Result<Vec<u8>> {
            match self.labels.iter().find(|(d, _)| d == device) {
                Some((_, Some((_, label)))) => Ok(iso_head(label)),
                _ => Ok(vec![0; 512]),
            }
        }
        fn read_file(
            &mut self,
            device: &Path,
            fs: FsType,
            file: &Path,
        ) -> std::io::Result<Option<Vec<u8>>> {
            self.reads
                .push((device.to_path_buf(), fs, file.to_path_buf()));
            Ok(self.files.get(file).cloned())
        }
    }

    #[test]
    fn nocloud_drive_gives_its_user_data() {
        let mut source = DriveSource::new(FakeDrives::with(
            "cidata",
            FsType::Iso9660,
            &[("user-data", "version = 1\n"), ("manifest.toml", "x")],
        ));
        let found = source.fetch().unwrap().unwrap();
        assert_eq!(found.origin, "cidata:/dev/vdb:user-data");
        assert_eq!(found.bytes, b"version = 1\n");
        assert_eq!(
            source.drives.reads,
            [(
                PathBuf::from("/dev/vdb"),
                FsType::Iso9660,
                PathBuf::from("user-data")
            )]
        );
    }

    #[test]
    fn berth_drive_gives_manifest_toml_and_labels_ignore_case() {
        let mut source = DriveSource::new(FakeDrives::with(
            "berth",
            FsType::Iso9660,
            &[("manifest.toml", "version = 1\n")],
        ));
        assert_eq!(
            source.fetch().unwrap().unwrap().origin,
            "berth:/dev/vdb:manifest.toml"
        );
    }

    #[test]
    fn no_labelled_drive_is_absent_and_a_drive_without_the_file_is_an_error() {
        let mut none = DriveSource::new(FakeDrives::with("other", FsType::Iso9660, &[]));
        assert_eq!(none.fetch().unwrap(), None);
        assert!(none.drives.reads.is_empty());
        let mut empty = DriveSource::new(FakeDrives::with("CIDATA", FsType::Iso9660, &[]));
        let err = empty.fetch().unwrap_err().to_string();
        assert_eq!(
            err,
            "CIDATA:/dev/vdb:user-data: the config drive has no user-data file; put the host manifest (TOML) there"
        );
    }

    #[test]
    fn command_line_paths_stay_on_the_drive() {
        assert_eq!(
            drive_path("/hosts/web.toml"),
            Some(PathBuf::from("hosts/web.toml"))
        );
        assert_eq!(drive_path("web.toml"), Some(PathBuf::from("web.toml")));
        assert_eq!(drive_path("../etc/shadow"), None);
        assert_eq!(drive_path("/a/../../b"), None);
        assert_eq!(drive_path("/"), None);
    }
}
