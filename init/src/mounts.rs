//! The early mount table, `/proc/self/mountinfo` parsing and the shutdown unmount order.
//!
//! The table of API filesystems is plain data so its contents and order are unit-tested; the
//! mounting itself goes through [`MountOps`] so failures (EBUSY, a missing filesystem type) are
//! tested with a fake. Unmount ordering is a pure function over parsed mountinfo.

use nix::errno::Errno;
use nix::mount::MsFlags;

/// One filesystem PID 1 mounts at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    /// `source` argument of mount(2).
    pub source: &'static str,
    /// Mount point, created (mode 0755) when missing.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem-specific options.
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The API filesystems, parents before children.
pub const EARLY_MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,gid=5,mode=620",
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    MountSpec {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    MountSpec {
        source: "tmp",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

/// The side effects of mounting, so the boot sequence is tested without root.
pub trait MountOps {
    /// Create `path` and its parents (mode 0755) if missing.
    fn mkdir_all(&mut self, path: &str) -> std::io::Result<()>;
    /// mount(2).
    fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno>;
}

/// What happened to one entry of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOutcome {
    /// Mounted now.
    Mounted,
    /// Something was mounted there already (EBUSY).
    AlreadyMounted,
    /// Failed; the message says where and why.
    Failed(String),
}

/// Mount every entry of `table` in order; a failure is reported and the next entry is tried.
pub fn mount_all(ops: &mut dyn MountOps, table: &[MountSpec]) -> Vec<(MountSpec, MountOutcome)> {
    table
        .iter()
        .map(|spec| {
            let outcome = match ops.mkdir_all(spec.target) {
                Err(e) => {
                    MountOutcome::Failed(format!("cannot create mount point {}: {e}", spec.target))
                }
                Ok(()) => match ops.mount(spec) {
                    Ok(()) => MountOutcome::Mounted,
                    Err(Errno::EBUSY) => MountOutcome::AlreadyMounted,
                    Err(e) => MountOutcome::Failed(format!(
                        "cannot mount {} ({}) on {}: {e} (is the kernel built with it?)",
                        spec.source, spec.fstype, spec.target
                    )),
                },
            };
            (*spec, outcome)
        })
        .collect()
}

/// The `cgroup.subtree_control` line that enables every controller listed in
/// `cgroup.controllers` for child cgroups (`+cpu +memory ...`), or `None` if there are none.
pub fn subtree_control_line(controllers: &str) -> Option<String> {
    let line = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    (!line.is_empty()).then_some(line)
}

/// One line of `/proc/self/mountinfo` (the fields PID 1 needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount ID.
    pub id: u32,
    /// Parent mount ID.
    pub parent: u32,
    /// Mount point, with `\NNN` octal escapes decoded.
    pub mount_point: String,
    /// Filesystem type.
    pub fstype: String,
}

/// Decode the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash) the
/// kernel writes in mountinfo paths.
pub fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let (b'\\', Some(digits)) = (bytes[i], bytes.get(i + 1..i + 4)) {
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse `/proc/self/mountinfo`; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let id = fields.first()?.parse().ok()?;
            let parent = fields.get(1)?.parse().ok()?;
            let mount_point = unescape_octal(fields.get(4)?);
            let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
            let fstype = fields.get(sep + 1)?.to_string();
            Some(MountInfo {
                id,
                parent,
                mount_point,
                fstype,
            })
        })
        .collect()
}

fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

/// The mount points to unmount at shutdown: deepest first, later mounts before earlier ones at
/// the same depth, `/` excluded (it is remounted read-only instead).
pub fn unmount_order(mounts: &[MountInfo]) -> Vec<String> {
    let mut order: Vec<&MountInfo> = mounts.iter().filter(|m| m.mount_point != "/").collect();
    order.reverse();
    // Stable sort keeps "later first" among equal depths.
    order.sort_by_key(|m| std::cmp::Reverse(depth(&m.mount_point)));
    order.into_iter().map(|m| m.mount_point.clone()).collect()
}

/// Errors enabling cgroup controllers.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `cgroup.controllers` could not be read.
    #[error("cannot read {path}: {source} (is cgroup2 mounted at /sys/fs/cgroup?)")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Some controllers could not be enabled for child cgroups.
    #[error("cannot enable cgroup controllers {controllers:?} in {path}")]
    Enable {
        /// The file.
        path: std::path::PathBuf,
        /// The controllers that failed.
        controllers: Vec<String>,
    },
}

/// Enable every controller listed in `<root>/cgroup.controllers` for child cgroups. Writes them
/// all at once, then one by one if the kernel refuses the batch. Returns the enabled line.
pub fn enable_controllers(root: &std::path::Path) -> Result<String, CgroupError> {
    let list = root.join("cgroup.controllers");
    let controllers = std::fs::read_to_string(&list).map_err(|source| CgroupError::Read {
        path: list.clone(),
        source,
    })?;
    let Some(line) = subtree_control_line(&controllers) else {
        return Ok(String::new());
    };
    let control = root.join("cgroup.subtree_control");
    if std::fs::write(&control, &line).is_ok() {
        return Ok(line);
    }
    let failed: Vec<String> = line
        .split(' ')
        .filter(|one| std::fs::write(&control, one).is_err())
        .map(|one| one.trim_start_matches('+').to_string())
        .collect();
    if failed.is_empty() {
        Ok(line)
    } else {
        Err(CgroupError::Enable {
            path: control,
            controllers: failed,
        })
    }
}

/// The real [`MountOps`].
#[derive(Debug, Default)]
pub struct RealMounts;

impl MountOps for RealMounts {
    fn mkdir_all(&mut self, path: &str) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
    }

    fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno> {
        let data = (!spec.data.is_empty()).then_some(spec.data);
        nix::mount::mount(
            Some(spec.source),
            spec.target,
            Some(spec.fstype),
            spec.flags,
            data,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_mounts_api_filesystems_parents_first() {
        let targets: Vec<&str> = EARLY_MOUNTS.iter().map(|m| m.target).collect();
        assert_eq!(
            targets,
            vec![
                "/proc",
                "/sys",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/run",
                "/tmp",
                "/sys/fs/cgroup"
            ]
        );
        for (i, spec) in EARLY_MOUNTS.iter().enumerate() {
            for parent in &EARLY_MOUNTS[i + 1..] {
                assert!(
                    !spec.target.starts_with(&format!("{}/", parent.target)),
                    "{} is mounted before its parent {}",
                    spec.target,
                    parent.target
                );
            }
        }
        let find = |t: &str| EARLY_MOUNTS.iter().find(|m| m.target == t).copied();
        let pts = find("/dev/pts").unwrap();
        assert_eq!(pts.fstype, "devpts");
        assert!(pts.data.contains("newinstance"));
        assert!(pts.data.contains("ptmxmode=0666"));
        assert!(pts.data.contains("gid=5,mode=620"));
        assert_eq!(find("/dev/shm").unwrap().data, "mode=1777");
        assert_eq!(find("/tmp").unwrap().data, "mode=1777");
        assert_eq!(find("/run").unwrap().data, "mode=0755");
        assert_eq!(find("/dev").unwrap().fstype, "devtmpfs");
        assert_eq!(find("/sys/fs/cgroup").unwrap().fstype, "cgroup2");
        assert!(find("/proc").unwrap().flags.contains(MsFlags::MS_NOEXEC));
    }

    #[derive(Default)]
    struct FakeOps {
        calls: Vec<String>,
        busy: Vec<&'static str>,
        broken: Vec<&'static str>,
    }

    impl MountOps for FakeOps {
        fn mkdir_all(&mut self, path: &str) -> std::io::Result<()> {
            self.calls.push(format!("mkdir {path}"));
            Ok(())
        }
        fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno> {
            self.calls.push(format!("mount {}", spec.target));
            if self.busy.contains(&spec.target) {
                return Err(Errno::EBUSY);
            }
            if self.broken.contains(&spec.target) {
                return Err(Errno::ENODEV);
            }
            Ok(())
        }
    }

    #[test]
    fn mount_all_tolerates_busy_and_continues_after_failures() {
        let mut ops = FakeOps {
            busy: vec!["/dev"],
            broken: vec!["/sys"],
            ..FakeOps::default()
        };
        let outcomes = mount_all(&mut ops, EARLY_MOUNTS);
        assert_eq!(outcomes.len(), EARLY_MOUNTS.len());
        assert_eq!(outcomes[0].1, MountOutcome::Mounted);
        assert!(matches!(&outcomes[1].1, MountOutcome::Failed(m) if m.contains("/sys")));
        assert_eq!(outcomes[2].1, MountOutcome::AlreadyMounted);
        assert_eq!(ops.calls[0], "mkdir /proc");
        assert_eq!(ops.calls[1], "mount /proc");
        assert_eq!(ops.calls.last().unwrap(), "mount /sys/fs/cgroup");
    }

    #[test]
    fn subtree_control_enables_every_listed_controller() {
        assert_eq!(
            subtree_control_line("cpuset cpu io memory hugetlb pids rdma misc\n").unwrap(),
            "+cpuset +cpu +io +memory +hugetlb +pids +rdma +misc"
        );
        assert_eq!(subtree_control_line("\n"), None);
    }

    const MOUNTINFO: &str = "\
22 1 0:20 / / rw,relatime - tmpfs rootfs rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
25 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,mode=755
26 25 0:23 / /dev/pts rw,nosuid,noexec - devpts devpts rw,gid=5,mode=620,ptmxmode=666
27 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw
28 22 254:1 / /var/lib/berth rw,noatime - ext4 /dev/vda1 rw
29 28 0:30 / /var/lib/berth/containers/web/rootfs rw master:1 - overlay overlay rw,lowerdir=/a
30 28 0:31 / /var/lib/berth/volumes/my\\040data rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_mountinfo_with_optional_fields_and_escapes() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 9);
        assert_eq!(
            mounts[3],
            MountInfo {
                id: 25,
                parent: 22,
                mount_point: "/dev".to_string(),
                fstype: "devtmpfs".to_string()
            }
        );
        assert_eq!(mounts[7].fstype, "overlay");
        assert_eq!(mounts[8].mount_point, "/var/lib/berth/volumes/my data");
        assert!(parse_mountinfo("garbage line\n\n").is_empty());
    }

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(unescape_octal("a\\040b\\011c\\012d\\134e"), "a b\tc\nd\\e");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_octal("not\\9999"), "not\\9999");
        assert_eq!(unescape_octal("big\\777"), "big\\777");
    }

    #[test]
    fn unmounts_deepest_first_and_never_root() {
        let order = unmount_order(&parse_mountinfo(MOUNTINFO));
        assert_eq!(
            order,
            vec![
                "/var/lib/berth/containers/web/rootfs",
                "/var/lib/berth/volumes/my data",
                "/var/lib/berth",
                "/sys/fs/cgroup",
                "/dev/pts",
                "/dev",
                "/sys",
                "/proc",
            ]
        );
    }

    #[test]
    fn enables_controllers_listed_in_the_cgroup_root() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(
            enable_controllers(tmp.path()).unwrap(),
            "+cpu +memory +pids"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        let missing = tmp.path().join("nope");
        assert!(matches!(
            enable_controllers(&missing),
            Err(CgroupError::Read { .. })
        ));
    }
}
