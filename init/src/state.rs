//! Finding the state partition (`berth-state`) for `/var/lib/berth`.
//!
//! A block device qualifies when its GPT partition name is `berth-state` (`PARTNAME=` in its
//! sysfs `uevent`) or when it holds an ext4 filesystem labelled `berth-state`. Virtio disks can
//! appear a little after PID 1 starts, so discovery polls for a bounded time. Everything takes
//! directory paths so tests use temporary directories.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// GPT partition name or ext4 label of the state partition.
pub const STATE_LABEL: &str = "berth-state";
/// Where the state lives.
pub const STATE_DIR: &str = "/var/lib/berth";

/// Offset of the ext4 superblock on the device.
const SUPERBLOCK_OFFSET: usize = 1024;
/// Offset of `s_magic` inside the superblock.
const MAGIC_OFFSET: usize = 0x38;
/// ext2/3/4 superblock magic.
const EXT4_MAGIC: u16 = 0xEF53;
/// Offset and length of `s_volume_name` inside the superblock.
const LABEL_OFFSET: usize = 0x78;
const LABEL_LEN: usize = 16;

/// How the state directory is backed; passed to the agent as `BERTH_STATE_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateMode {
    /// On the state partition: survives reboots.
    Persistent,
    /// On a tmpfs: lost at power-off.
    Ephemeral,
}

impl StateMode {
    /// The value of `BERTH_STATE_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            StateMode::Persistent => "persistent",
            StateMode::Ephemeral => "ephemeral",
        }
    }
}

/// How a device was recognised as the state partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// GPT partition name.
    PartName,
    /// ext4 filesystem label.
    FsLabel,
}

/// `PARTNAME=` from a sysfs block `uevent` file, if present.
pub fn parse_uevent_partname(uevent: &str) -> Option<&str> {
    uevent
        .lines()
        .find_map(|line| line.strip_prefix("PARTNAME="))
        .map(str::trim_end)
}

/// The ext4 (ext2/3) volume label from the first bytes of a device (at least 2048), or `None`
/// when the buffer holds no ext superblock. The label stops at the first NUL.
pub fn parse_ext4_label(device_start: &[u8]) -> Option<String> {
    let sb = device_start.get(SUPERBLOCK_OFFSET..)?;
    let magic = sb.get(MAGIC_OFFSET..MAGIC_OFFSET + 2)?;
    if u16::from_le_bytes([magic[0], magic[1]]) != EXT4_MAGIC {
        return None;
    }
    let raw = sb.get(LABEL_OFFSET..LABEL_OFFSET + LABEL_LEN)?;
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// Whether a `/sys/class/block` entry names a device worth probing (not loop/ram/zram).
fn is_candidate(name: &str) -> bool {
    !(name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram"))
}

/// Block device names under `sys_class_block`, sorted, without loop/ram devices.
pub fn block_devices(sys_class_block: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(sys_class_block)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_candidate(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn read_device_start(path: &Path) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; SUPERBLOCK_OFFSET * 2];
    let mut file = fs::File::open(path).ok()?;
    file.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// One scan: the state device node under `dev` (e.g. `/dev/vda2`), if any. A GPT partition
/// name match wins over an ext4 label match.
pub fn find_state_device(sys_class_block: &Path, dev: &Path) -> Option<(PathBuf, Match)> {
    let names = block_devices(sys_class_block);
    for name in &names {
        let uevent = fs::read_to_string(sys_class_block.join(name).join("uevent"));
        if uevent.ok().as_deref().and_then(parse_uevent_partname) == Some(STATE_LABEL) {
            return Some((dev.join(name), Match::PartName));
        }
    }
    for name in &names {
        let node = dev.join(name);
        if read_device_start(&node)
            .and_then(|b| parse_ext4_label(&b))
            .as_deref()
            == Some(STATE_LABEL)
        {
            return Some((node, Match::FsLabel));
        }
    }
    None
}

/// Polling budget for [`discover`].
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    /// Give up after this long in total.
    pub total: Duration,
    /// Give up after this long if no block device exists at all.
    pub no_disks: Duration,
    /// Pause between scans.
    pub interval: Duration,
}

impl Default for Poll {
    fn default() -> Self {
        Poll {
            total: Duration::from_secs(2),
            no_disks: Duration::from_millis(300),
            interval: Duration::from_millis(50),
        }
    }
}

/// Scan until the state device shows up or the budget runs out; returns as soon as found.
pub fn discover(sys_class_block: &Path, dev: &Path, poll: Poll) -> Option<(PathBuf, Match)> {
    let start = Instant::now();
    loop {
        if let Some(found) = find_state_device(sys_class_block, dev) {
            return Some(found);
        }
        let waited = start.elapsed();
        let budget = if block_devices(sys_class_block).is_empty() {
            poll.no_disks
        } else {
            poll.total
        };
        if waited >= budget {
            return None;
        }
        std::thread::sleep(poll.interval.min(budget - waited));
    }
}

/// Errors mounting the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The mount point could not be created.
    #[error("cannot create {path}: {source}")]
    MountPoint {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// mount(2) failed.
    #[error("cannot mount {what} on {STATE_DIR}: {source}")]
    Mount {
        /// What was being mounted.
        what: String,
        /// The error.
        #[source]
        source: nix::errno::Errno,
    },
}

/// Mount options of the state partition. ext4 keeps its reserved blocks (5% by default) for
/// the `resuid` user and for CAP_SYS_RESOURCE; `resuid` is root unless set, and containers run
/// as root (without CAP_SYS_RESOURCE), so they would reach the reserve too. With `resuid` set to
/// a user nothing runs as, only CAP_SYS_RESOURCE (berthd, PID 1) writes there: a container
/// filling the disk leaves berthd room for logs, state and the manifest.
pub const EXT4_OPTIONS: &str = "resuid=4294967294";

/// Mount `device` with [`EXT4_OPTIONS`]; should the kernel refuse them, without (and say so).
fn mount_ext4(device: &Path, log: &dyn Fn(&str)) -> Result<(), StateError> {
    let mount = |options: Option<&str>| {
        nix::mount::mount(
            Some(device),
            STATE_DIR,
            Some("ext4"),
            nix::mount::MsFlags::MS_NOATIME,
            options,
        )
    };
    let result = match mount(Some(EXT4_OPTIONS)) {
        Err(nix::errno::Errno::EINVAL) if mount(None).is_ok() => {
            log(&format!(
                "warning: the kernel refused the state partition's mount options {EXT4_OPTIONS}; \
                 mounted without them: containers can use ext4's reserved blocks"
            ));
            Ok(())
        }
        other => other,
    };
    result.map_err(|source| StateError::Mount {
        what: format!("{} (ext4)", device.display()),
        source,
    })
}

fn mount_tmpfs() -> Result<(), StateError> {
    nix::mount::mount(
        Some("berth-state"),
        STATE_DIR,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(|source| StateError::Mount {
        what: "a tmpfs".to_string(),
        source,
    })
}

/// Find the state partition and mount it at [`STATE_DIR`], or fall back to a tmpfs with a
/// loud warning. `log` receives console lines (without the `berth: ` prefix).
pub fn setup(log: &dyn Fn(&str)) -> StateMode {
    use std::os::unix::fs::DirBuilderExt;
    if let Err(source) = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(STATE_DIR)
    {
        log(&format!(
            "error: {}",
            StateError::MountPoint {
                path: PathBuf::from(STATE_DIR),
                source
            }
        ));
    }
    let reason = match discover(
        Path::new("/sys/class/block"),
        Path::new("/dev"),
        Poll::default(),
    ) {
        Some((device, how)) => {
            // Only a GPT partition can grow; a bare ext4 disk is used as it is.
            let growth = match how {
                Match::PartName => grow_before_mount(&device, log),
                Match::FsLabel => None,
            };
            let how = match how {
                Match::PartName => "GPT partition name",
                Match::FsLabel => "ext4 label",
            };
            match mount_ext4(&device, log) {
                Ok(()) => {
                    log(&format!(
                        "state partition {} ({how} {STATE_LABEL}) mounted at {STATE_DIR}",
                        device.display()
                    ));
                    if let Some(g) = growth {
                        resize_after_mount(&g, log);
                    }
                    log_boot_count(Path::new(STATE_DIR), log);
                    return StateMode::Persistent;
                }
                Err(e) => format!("the state partition could not be mounted ({e})"),
            }
        }
        None => {
            format!("no block device with GPT partition name or ext4 label {STATE_LABEL} was found")
        }
    };
    if let Err(e) = mount_tmpfs() {
        log(&format!("error: {e}; using the root filesystem"));
    }
    log(&format!(
        "warning: {reason}; {STATE_DIR} is a tmpfs: state is EPHEMERAL and lost at power-off"
    ));
    log_boot_count(Path::new(STATE_DIR), log);
    StateMode::Ephemeral
}

/// Grows the state partition to the end of its disk (first boot on a larger disk).
fn grow_before_mount(device: &Path, log: &dyn Fn(&str)) -> Option<crate::grow::Growth> {
    let name = device.file_name()?.to_str()?;
    match crate::grow::grow_partition(Path::new("/sys/class/block"), Path::new("/dev"), name) {
        Ok(growth) => growth,
        Err(e) => {
            log(&format!(
                "warning: cannot grow the state partition {}: {e}",
                device.display()
            ));
            None
        }
    }
}

/// Resizes the mounted state filesystem to the grown partition.
fn resize_after_mount(g: &crate::grow::Growth, log: &dyn Fn(&str)) {
    let mib = |sectors: u64| sectors * crate::grow::SECTOR / (1024 * 1024);
    match crate::grow::resize_ext4(Path::new(STATE_DIR), g.new_sectors * crate::grow::SECTOR) {
        Ok(()) => log(&format!(
            "state partition grown from {} to {} MiB",
            mib(g.old_sectors),
            mib(g.new_sectors)
        )),
        Err(e) => log(&format!(
            "warning: the state partition grew to {} MiB but its filesystem could not: {e}",
            mib(g.new_sectors)
        )),
    }
}

/// Name of the boot counter file in the state directory.
pub const BOOT_COUNT_FILE: &str = "boot-count";

/// Increments the boot counter in `dir` (a missing or unreadable counter counts as 0) and
/// returns the new value. Written to a temporary file and renamed, so a crash never leaves a
/// torn counter.
pub fn bump_boot_count(dir: &Path) -> std::io::Result<u64> {
    let path = dir.join(BOOT_COUNT_FILE);
    let previous = fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let count = previous.saturating_add(1);
    let tmp = dir.join(format!(".{BOOT_COUNT_FILE}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, format!("{count}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(count)
}

fn log_boot_count(dir: &Path, log: &dyn Fn(&str)) {
    match bump_boot_count(dir) {
        Ok(n) => log(&format!("boot={n}")),
        Err(e) => log(&format!(
            "warning: cannot update {}: {e}",
            dir.join(BOOT_COUNT_FILE).display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(magic: u16, label: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        buf[1024 + 0x38..1024 + 0x3a].copy_from_slice(&magic.to_le_bytes());
        buf[1024 + 0x78..1024 + 0x78 + label.len()].copy_from_slice(label);
        buf
    }

    #[test]
    fn reads_ext4_label() {
        assert_eq!(
            parse_ext4_label(&superblock(0xEF53, b"berth-state")).as_deref(),
            Some("berth-state")
        );
        // A full 16-byte label has no terminating NUL.
        assert_eq!(
            parse_ext4_label(&superblock(0xEF53, b"0123456789abcdef")).as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(
            parse_ext4_label(&superblock(0xEF53, b"")).as_deref(),
            Some("")
        );
    }

    #[test]
    fn label_stops_at_first_nul() {
        assert_eq!(
            parse_ext4_label(&superblock(0xEF53, b"berth\0state\0\0")).as_deref(),
            Some("berth")
        );
    }

    #[test]
    fn wrong_magic_or_short_buffer_is_not_ext4() {
        assert_eq!(parse_ext4_label(&superblock(0x53EF, b"berth-state")), None);
        assert_eq!(parse_ext4_label(&superblock(0, b"berth-state")), None);
        assert_eq!(parse_ext4_label(&[0u8; 1100]), None);
        assert_eq!(parse_ext4_label(&[]), None);
    }

    #[test]
    fn reads_partname_from_uevent() {
        let uevent = "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=9\n\
                      PARTN=2\nPARTNAME=berth-state\n";
        assert_eq!(parse_uevent_partname(uevent), Some("berth-state"));
        assert_eq!(parse_uevent_partname("MAJOR=254\nDEVTYPE=disk\n"), None);
        assert_eq!(parse_uevent_partname("PARTNAME=\n"), Some(""));
    }

    fn fake_block(root: &Path, name: &str, uevent: &str, content: Option<Vec<u8>>) {
        let sys = root.join("sys").join(name);
        fs::create_dir_all(&sys).unwrap();
        fs::write(sys.join("uevent"), uevent).unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        if let Some(bytes) = content {
            fs::write(root.join("dev").join(name), bytes).unwrap();
        }
    }

    #[test]
    fn finds_by_partname_before_label() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_block(
            root,
            "vda",
            "DEVTYPE=disk\n",
            Some(superblock(0xEF53, b"berth-state")),
        );
        fake_block(
            root,
            "vdb1",
            "DEVTYPE=partition\nPARTNAME=berth-state\n",
            None,
        );
        let (dev, how) = find_state_device(&root.join("sys"), &root.join("dev")).unwrap();
        assert_eq!(dev, root.join("dev/vdb1"));
        assert_eq!(how, Match::PartName);
    }

    #[test]
    fn finds_by_ext4_label_and_skips_loop_devices() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_block(root, "loop0", "", Some(superblock(0xEF53, b"berth-state")));
        fake_block(
            root,
            "vda",
            "DEVTYPE=disk\n",
            Some(superblock(0xEF53, b"other")),
        );
        fake_block(root, "vdb", "DEVTYPE=disk\n", Some(vec![0; 100]));
        fake_block(
            root,
            "vdc",
            "DEVTYPE=disk\n",
            Some(superblock(0xEF53, b"berth-state")),
        );
        let (dev, how) = find_state_device(&root.join("sys"), &root.join("dev")).unwrap();
        assert_eq!(dev, root.join("dev/vdc"));
        assert_eq!(how, Match::FsLabel);
    }

    #[test]
    fn boot_count_increments_and_survives_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(bump_boot_count(tmp.path()).unwrap(), 1);
        assert_eq!(bump_boot_count(tmp.path()).unwrap(), 2);
        assert_eq!(
            fs::read_to_string(tmp.path().join(BOOT_COUNT_FILE)).unwrap(),
            "2\n"
        );
        fs::write(tmp.path().join(BOOT_COUNT_FILE), "junk").unwrap();
        assert_eq!(bump_boot_count(tmp.path()).unwrap(), 1);
        assert!(bump_boot_count(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn gives_up_quickly_without_disks() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("sys")).unwrap();
        let poll = Poll {
            total: Duration::from_secs(30),
            no_disks: Duration::from_millis(100),
            interval: Duration::from_millis(20),
        };
        let start = Instant::now();
        assert_eq!(discover(&tmp.path().join("sys"), tmp.path(), poll), None);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn waits_up_to_the_total_budget_with_disks_present() {
        let tmp = tempfile::tempdir().unwrap();
        fake_block(tmp.path(), "vda", "DEVTYPE=disk\n", Some(vec![0; 4096]));
        let poll = Poll {
            total: Duration::from_millis(200),
            no_disks: Duration::ZERO,
            interval: Duration::from_millis(20),
        };
        let start = Instant::now();
        assert_eq!(
            discover(&tmp.path().join("sys"), &tmp.path().join("dev"), poll),
            None
        );
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
