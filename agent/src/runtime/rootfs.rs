//! The container's root filesystem: the overlay of image layers, the pseudo filesystems a
//! process expects (/proc, /dev, /dev/pts, /dev/shm, read-only /sys), the kernel files a
//! container must not see or write (masked and read-only paths, as runc does) and the pivot
//! into it.
//!
//! The mounts are a *plan* (a list of [`Step`]s) built by a pure function and executed through
//! the [`Sys`] trait, so the order and flags are unit-tested with a recording fake and only the
//! thin [`RealSys`] touches the kernel.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use super::security::capabilities::CapSet;
use seccompiler::BpfProgram;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use serde::{Deserialize, Serialize};

use super::security::{self, Credentials};

/// Where a container's overlay lives on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsLayout {
    /// Read-only image layers, **top first** (overlay `lowerdir` order).
    pub lower: Vec<PathBuf>,
    /// Per-container writable layer.
    pub upper: PathBuf,
    /// Overlay scratch directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Mount point of the merged root.
    pub target: PathBuf,
    /// Volumes, bind mounts and tmpfs mounts on top of the root (parents before children).
    #[serde(default)]
    pub mounts: Vec<ContainerMount>,
    /// Host uid and gid of the container's root when it has a user namespace: they own the
    /// upper directory, volumes created for it and its tmpfs mounts.
    #[serde(default)]
    pub owner: Option<u32>,
}

/// A mount requested by the manifest, with host paths resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ContainerMount {
    /// Bind `source` (a volume directory or a path of the state partition), which must resolve
    /// — symlinks followed — to a path inside `within`.
    Bind {
        /// Host path.
        source: PathBuf,
        /// The directory `source` must stay inside after resolving symlinks.
        within: PathBuf,
        /// Absolute path inside the container.
        target: PathBuf,
        /// Remount read-only.
        read_only: bool,
        /// A volume: `source` is created (as a directory) before start.
        create: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Absolute path inside the container.
        target: PathBuf,
        /// Size limit in bytes.
        size: Option<u64>,
        /// Permission bits of its root.
        mode: Option<u32>,
    },
}

impl ContainerMount {
    /// The absolute path inside the container.
    pub fn target(&self) -> &Path {
        match self {
            ContainerMount::Bind { target, .. } | ContainerMount::Tmpfs { target, .. } => target,
        }
    }

    /// tmpfs mount data (`mode=1777,size=67108864[,uid=N,gid=N]`), `None` when all are
    /// defaults.
    fn tmpfs_data(size: Option<u64>, mode: Option<u32>, owner: Option<u32>) -> Option<String> {
        let parts: Vec<String> = mode
            .map(|m| format!("mode={m:o}"))
            .into_iter()
            .chain(size.map(|s| format!("size={s}")))
            .chain(owner.map(|o| format!("uid={o},gid={o}")))
            .collect();
        (!parts.is_empty()).then(|| parts.join(","))
    }
}

/// Why a root filesystem cannot be planned or set up.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The image has no layers.
    #[error("image has no layers: nothing to mount as the container's root")]
    NoLayers,
    /// A path cannot be written in overlay mount options.
    #[error("path {0} contains ',' or ':' which overlay mount options cannot express; move the state directory")]
    UnsafePath(PathBuf),
    /// A plan step failed.
    #[error("{step}")]
    Step {
        /// The step, in words.
        step: String,
        /// The syscall error.
        #[source]
        source: io::Error,
    },
    /// Preparing host directories failed.
    #[error("cannot prepare {path}")]
    Prepare {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl RootfsLayout {
    /// The layout for container `name` under `containers_dir` (`STATE/containers`), with image
    /// layers given bottom first as the store returns them.
    pub fn for_container(
        containers_dir: &Path,
        name: &str,
        layers_bottom_first: &[PathBuf],
    ) -> Self {
        let dir = containers_dir.join(name);
        RootfsLayout {
            lower: layers_bottom_first.iter().rev().cloned().collect(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            target: dir.join("rootfs"),
            mounts: Vec::new(),
            owner: None,
        }
    }

    /// Recreate `upper` and `work` empty (a fresh container at each boot) and make sure the
    /// mount point exists.
    pub fn prepare_host_dirs(&self) -> Result<(), RootfsError> {
        for dir in [&self.upper, &self.work] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RootfsError::Prepare {
                        path: dir.clone(),
                        source,
                    })
                }
            }
        }
        for dir in [&self.upper, &self.work, &self.target] {
            std::fs::create_dir_all(dir).map_err(|source| RootfsError::Prepare {
                path: dir.clone(),
                source,
            })?;
        }
        let chown = |path: &Path, owner: u32| {
            std::os::unix::fs::lchown(path, Some(owner), Some(owner)).map_err(|source| {
                RootfsError::Prepare {
                    path: path.to_path_buf(),
                    source,
                }
            })
        };
        if let Some(owner) = self.owner {
            chown(&self.upper, owner)?;
        }
        for mount in &self.mounts {
            if let ContainerMount::Bind {
                source,
                create: true,
                ..
            } = mount
            {
                let fresh = !source.exists();
                std::fs::create_dir_all(source).map_err(|source_err| RootfsError::Prepare {
                    path: source.clone(),
                    source: source_err,
                })?;
                // A new volume belongs to the container's root; an existing one keeps its owner.
                if let (true, Some(owner)) = (fresh, self.owner) {
                    chown(source, owner)?;
                }
            }
        }
        Ok(())
    }

    /// Overlay mount data: `lowerdir=TOP:...:BASE,upperdir=...,workdir=...`.
    pub fn overlay_options(&self) -> Result<String, RootfsError> {
        if self.lower.is_empty() {
            return Err(RootfsError::NoLayers);
        }
        let all = self.lower.iter().chain([&self.upper, &self.work]);
        let mut text = Vec::new();
        for path in all {
            let s = path.to_string_lossy();
            if s.contains(',') || s.contains(':') {
                return Err(RootfsError::UnsafePath(path.clone()));
            }
            text.push(s.into_owned());
        }
        let (lower, rest) = text.split_at(self.lower.len());
        Ok(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            rest[0],
            rest[1]
        ))
    }
}

/// One step of the root filesystem plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// mount(2).
    Mount {
        /// Source (device or fs name); `None` for propagation changes.
        source: Option<String>,
        /// Mount point.
        target: PathBuf,
        /// Filesystem type.
        fstype: Option<String>,
        /// Mount flags.
        flags: MsFlags,
        /// Filesystem options.
        data: Option<String>,
    },
    /// Create a directory and its parents.
    Mkdir {
        /// The directory.
        path: PathBuf,
    },
    /// Create a character device node with the given permissions.
    Mknod {
        /// Node path.
        path: PathBuf,
        /// Major number.
        major: u64,
        /// Minor number.
        minor: u64,
        /// Permission bits.
        mode: u32,
    },
    /// Create a symlink `link` -> `target`.
    Symlink {
        /// What the link points at.
        target: PathBuf,
        /// The link itself.
        link: PathBuf,
    },
    /// Hide a kernel file or directory: bind /dev/null over a file, a read-only empty tmpfs
    /// over a directory; skipped when the path does not exist.
    Mask {
        /// The path to hide.
        path: PathBuf,
        /// The container's /dev/null (bound over files).
        null: PathBuf,
    },
    /// Make a path read-only: bind it onto itself, then remount the bind read-only; skipped
    /// when the path does not exist.
    ReadOnly {
        /// The path.
        path: PathBuf,
    },
    /// A manifest mount: resolve and create its mount point inside `root` without leaving
    /// it, then mount (and for binds, remount nosuid,nodev and read-only when asked).
    UserMount {
        /// The container's root (host path).
        root: PathBuf,
        /// What to mount.
        mount: ContainerMount,
        /// Owner of a tmpfs root (the container's mapped root).
        owner: Option<u32>,
    },
    /// Make `new_root` the process root (pivot_root, or move+chroot from an initramfs).
    PivotRoot {
        /// The new root.
        new_root: PathBuf,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => write!(
                f,
                "mount {} on {} (type {}, flags {}, options {})",
                source.as_deref().unwrap_or("none"),
                target.display(),
                fstype.as_deref().unwrap_or("none"),
                flag_names(*flags),
                data.as_deref().unwrap_or("none")
            ),
            Step::Mkdir { path } => write!(f, "mkdir {}", path.display()),
            Step::Mknod {
                path, major, minor, ..
            } => write!(f, "mknod {} c {major} {minor}", path.display()),
            Step::Symlink { target, link } => {
                write!(f, "symlink {} -> {}", link.display(), target.display())
            }
            Step::Mask { path, .. } => write!(f, "mask {}", path.display()),
            Step::ReadOnly { path } => write!(f, "make {} read-only", path.display()),
            Step::UserMount { mount, .. } => match mount {
                ContainerMount::Bind {
                    source,
                    target,
                    read_only,
                    ..
                } => write!(
                    f,
                    "bind mount {} on {} in the container{}",
                    source.display(),
                    target.display(),
                    if *read_only { " (read-only)" } else { "" }
                ),
                ContainerMount::Tmpfs { target, .. } => {
                    write!(f, "mount tmpfs on {} in the container", target.display())
                }
            },
            Step::PivotRoot { new_root } => write!(f, "pivot_root into {}", new_root.display()),
        }
    }
}

/// Mount flags as `MS_A|MS_B` (`0` when empty).
pub fn flag_names(flags: MsFlags) -> String {
    if flags.is_empty() {
        return "0".to_string();
    }
    flags
        .iter_names()
        .map(|(name, _)| name)
        .collect::<Vec<_>>()
        .join("|")
}

/// Paths under the container's root hidden from it (runc's default `maskedPaths`).
pub const MASKED_PATHS: [&str; 8] = [
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
];

/// Paths under the container's root it may read but not write (runc's `readonlyPaths`).
pub const READONLY_PATHS: [&str; 6] = [
    "proc/asound",
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// What is at a path, for steps that act differently on files and directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A directory.
    Dir,
    /// Anything else (file, device node, ...).
    File,
}

/// Device nodes every container gets: (name, major, minor).
pub const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn mount(source: &str, target: PathBuf, fstype: &str, flags: MsFlags, data: Option<&str>) -> Step {
    Step::Mount {
        source: Some(source.to_string()),
        target,
        fstype: Some(fstype.to_string()),
        flags,
        data: data.map(str::to_string),
    }
}

/// The ordered steps that build the container's root (run inside its new mount namespace).
pub fn plan(layout: &RootfsLayout) -> Result<Vec<Step>, RootfsError> {
    let root = &layout.target;
    let dev = root.join("dev");
    let mut steps = vec![
        // Nothing we mount from here on may propagate back to the host.
        Step::Mount {
            source: None,
            target: PathBuf::from("/"),
            fstype: None,
            flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            data: None,
        },
        mount(
            "overlay",
            root.clone(),
            "overlay",
            MsFlags::empty(),
            Some(&layout.overlay_options()?),
        ),
        Step::Mkdir {
            path: root.join("proc"),
        },
        mount(
            "proc",
            root.join("proc"),
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        Step::Mkdir { path: dev.clone() },
        mount(
            "tmpfs",
            dev.clone(),
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
    ];
    for (name, major, minor) in DEVICES {
        steps.push(Step::Mknod {
            path: dev.join(name),
            major,
            minor,
            mode: 0o666,
        });
    }
    steps.extend([
        Step::Mkdir {
            path: dev.join("pts"),
        },
        mount(
            "devpts",
            dev.join("pts"),
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        Step::Symlink {
            target: PathBuf::from("pts/ptmx"),
            link: dev.join("ptmx"),
        },
        Step::Mkdir {
            path: dev.join("shm"),
        },
        mount(
            "shm",
            dev.join("shm"),
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        ),
    ]);
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: PathBuf::from(target),
            link: dev.join(link),
        });
    }
    steps.extend([
        Step::Mkdir {
            path: root.join("sys"),
        },
        mount(
            "sysfs",
            root.join("sys"),
            "sysfs",
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
    ]);
    // Parents before children, manifest order otherwise.
    let mut mounts: Vec<&ContainerMount> = layout.mounts.iter().collect();
    mounts.sort_by_key(|m| m.target().components().count());
    steps.extend(mounts.into_iter().map(|m| Step::UserMount {
        root: root.clone(),
        mount: m.clone(),
        owner: layout.owner,
    }));
    for path in MASKED_PATHS {
        steps.push(Step::Mask {
            path: root.join(path),
            null: dev.join("null"),
        });
    }
    for path in READONLY_PATHS {
        steps.push(Step::ReadOnly {
            path: root.join(path),
        });
    }
    steps.push(Step::PivotRoot {
        new_root: root.clone(),
    });
    Ok(steps)
}

/// The syscalls the runtime needs inside the container, so tests can record them.
pub trait Sys {
    /// mount(2).
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// mkdir -p.
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()>;
    /// mknod(2) of a character device, then chmod to `mode` (ignoring the umask).
    fn mknod_char(&mut self, path: &Path, major: u64, minor: u64, mode: u32) -> io::Result<()>;
    /// symlink(2).
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()>;
    /// Resolves `path` (following symlinks) and checks the result is inside `within`
    /// (itself resolved); returns the resolved path and whether it is a directory.
    fn resolve_within(&mut self, path: &Path, within: &Path) -> io::Result<(PathBuf, bool)>;
    /// Creates mount point `target` (absolute, in the container) inside `root`, resolving each
    /// component under `root` itself so that no symlink leads out of it; returns the host path
    /// to mount on. `dir` says whether to create a directory or an empty file.
    fn mount_point(&mut self, root: &Path, target: &Path, dir: bool) -> io::Result<PathBuf>;
    /// chdir(2).
    fn chdir(&mut self, path: &Path) -> io::Result<()>;
    /// pivot_root(2).
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// umount2(2) with MNT_DETACH.
    fn umount_detach(&mut self, target: &Path) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&mut self, name: &str) -> io::Result<()>;
    /// setrlimit(2) of the rlimit named `name` (manifest spelling, e.g. `nofile`).
    fn setrlimit(&mut self, name: &str, soft: u64, hard: u64) -> io::Result<()>;
    /// execve(2); returns only on failure.
    fn execve(&mut self, path: &str, args: &[String], env: &[String]) -> io::Error;
    /// What is at `path` (`None`: nothing). A query: fakes do not record it.
    fn path_kind(&mut self, path: &Path) -> io::Result<Option<PathKind>>;
    /// The text of a file (`None`: it does not exist). A query: fakes do not record it.
    fn read_file(&mut self, path: &Path) -> io::Result<Option<String>>;
    /// Drop every capability not in `keep` from the bounding set.
    fn drop_bounding(&mut self, keep: &CapSet) -> io::Result<()>;
    /// setgroups, setresgid, PR_SET_KEEPCAPS, setresuid.
    fn set_ids(&mut self, creds: &Credentials) -> io::Result<()>;
    /// Set effective, permitted and inheritable to `set`; also ambient when `ambient`.
    fn set_caps(&mut self, set: &CapSet, ambient: bool) -> io::Result<()>;
    /// prctl(PR_SET_NO_NEW_PRIVS).
    fn no_new_privs(&mut self) -> io::Result<()>;
    /// Install seccomp filters on the calling thread.
    fn install_seccomp(&mut self, programs: &[BpfProgram]) -> io::Result<()>;
    /// unshare(CLONE_NEWUSER) and wait until the shim has written the id maps.
    fn enter_user_namespace(&mut self) -> io::Result<()>;
}

/// Run a plan, stopping at the first failing step.
pub fn apply(steps: &[Step], sys: &mut dyn Sys) -> Result<(), RootfsError> {
    for step in steps {
        run_step(step, sys).map_err(|source| RootfsError::Step {
            step: step.to_string(),
            source,
        })?;
    }
    Ok(())
}

fn run_step(step: &Step, sys: &mut dyn Sys) -> io::Result<()> {
    match step {
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys.mount(
            source.as_deref(),
            target,
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        Step::Mkdir { path } => sys.mkdir_all(path),
        Step::Mknod {
            path,
            major,
            minor,
            mode,
        } => sys.mknod_char(path, *major, *minor, *mode),
        Step::Symlink { target, link } => sys.symlink(target, link),
        Step::Mask { path, null } => match sys.path_kind(path)? {
            None => Ok(()),
            Some(PathKind::Dir) => sys.mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            ),
            Some(PathKind::File) => sys.mount(
                Some(&null.to_string_lossy()),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            ),
        },
        Step::ReadOnly { path } => {
            if sys.path_kind(path)?.is_none() {
                return Ok(());
            }
            let source = path.to_string_lossy();
            sys.mount(
                Some(&source),
                path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            sys.mount(None, path, None, READONLY_REMOUNT, None)
        }
        Step::UserMount { root, mount, owner } => user_mount(root, mount, *owner, sys),
        Step::PivotRoot { new_root } => enter_root(new_root, sys),
    }
}

/// Flags that make an existing bind mount read-only (keeping the nosuid/nodev/noexec of
/// /proc, which the kernel may insist on).
pub const READONLY_REMOUNT: MsFlags = MsFlags::MS_BIND
    .union(MsFlags::MS_REMOUNT)
    .union(MsFlags::MS_RDONLY)
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

fn user_mount(
    root: &Path,
    mount: &ContainerMount,
    owner: Option<u32>,
    sys: &mut dyn Sys,
) -> io::Result<()> {
    match mount {
        ContainerMount::Bind {
            source,
            within,
            target,
            read_only,
            ..
        } => {
            let (source, is_dir) = sys.resolve_within(source, within)?;
            let at = sys.mount_point(root, target, is_dir)?;
            let source = source.to_string_lossy();
            sys.mount(
                Some(&source),
                &at,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            let mut flags =
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if *read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            sys.mount(None, &at, None, flags, None)
        }
        ContainerMount::Tmpfs { target, size, mode } => {
            let at = sys.mount_point(root, target, true)?;
            let data = ContainerMount::tmpfs_data(*size, *mode, owner);
            sys.mount(
                Some("tmpfs"),
                &at,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                data.as_deref(),
            )
        }
    }
}

/// Most symlinks followed while resolving one mount point (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// Resolves `target` (an absolute container path) under the host directory `root`, creating
/// missing components (directories; the last one an empty file when `dir` is false).
///
/// Every component is looked at with `lstat`; a symlink is resolved by hand relative to the
/// container root (an absolute link target means `root`-relative), and one that climbs above
/// `root` with `..` is refused rather than clamped, so a hostile image cannot make the
/// runtime mount over a host path.
pub fn resolve_mount_point(root: &Path, target: &Path, dir: bool) -> io::Result<PathBuf> {
    use std::collections::VecDeque;
    use std::path::Component;
    let refuse = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let mut pending: VecDeque<std::ffi::OsString> = VecDeque::new();
    for c in target.components() {
        match c {
            Component::Normal(p) => pending.push_back(p.to_os_string()),
            Component::ParentDir => {
                return Err(refuse(format!(
                    "mount target {} contains `..`",
                    target.display()
                )))
            }
            _ => {}
        }
    }
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        let here: PathBuf = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        let last = pending.is_empty();
        match std::fs::symlink_metadata(&here) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(refuse(format!(
                        "too many symlinks resolving mount target {}",
                        target.display()
                    )));
                }
                let link = std::fs::read_link(&here)?;
                if link.is_absolute() {
                    resolved.clear();
                }
                let mut rest: Vec<std::ffi::OsString> = Vec::new();
                for c in link.components() {
                    match c {
                        Component::Normal(p) => rest.push(p.to_os_string()),
                        Component::ParentDir => rest.push("..".into()),
                        _ => {}
                    }
                }
                // Apply the link's `..` now, refusing any that leaves the root.
                let mut expanded: VecDeque<std::ffi::OsString> = VecDeque::new();
                for p in rest {
                    if p == ".." {
                        if expanded.pop_back().is_none() && resolved.pop().is_none() {
                            return Err(refuse(format!(
                                "mount target {}: symlink {} points outside the container root",
                                target.display(),
                                here.display()
                            )));
                        }
                    } else {
                        expanded.push_back(p);
                    }
                }
                for p in expanded.into_iter().rev() {
                    pending.push_front(p);
                }
            }
            Ok(meta) => {
                if !last && !meta.is_dir() {
                    return Err(refuse(format!(
                        "mount target {}: {} is not a directory",
                        target.display(),
                        here.display()
                    )));
                }
                if last && meta.is_dir() != dir {
                    return Err(refuse(format!(
                        "mount target {} is a {} but the source is a {}",
                        target.display(),
                        if meta.is_dir() { "directory" } else { "file" },
                        if dir { "directory" } else { "file" }
                    )));
                }
                resolved.push(part);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if last && !dir {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&here)?;
                } else {
                    std::fs::create_dir(&here)?;
                }
                resolved.push(part);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

/// `path` with symlinks resolved, refused unless it lies inside `within` (also resolved).
pub fn resolve_within(path: &Path, within: &Path) -> io::Result<(PathBuf, bool)> {
    let base = std::fs::canonicalize(within)?;
    let real = std::fs::canonicalize(path)?;
    if !real.starts_with(&base) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} resolves to {}, outside {}; bind sources may not leave the state partition",
                path.display(),
                real.display(),
                base.display()
            ),
        ));
    }
    let is_dir = std::fs::metadata(&real)?.is_dir();
    Ok((real, is_dir))
}

/// The runc trick: pivot_root(".", ".") stacks the old root under the new one, and a lazy
/// unmount of "." then drops it, with no put_old directory needed. There is deliberately no
/// chroot fallback (a chroot can be escaped): pivot_root is refused (EINVAL) only when the
/// current root is the initramfs, and berth-init switches to a tmpfs root before starting
/// the agent, so that error says where the fault is.
fn enter_root(new_root: &Path, sys: &mut dyn Sys) -> io::Result<()> {
    let dot = Path::new(".");
    sys.chdir(new_root)?;
    match sys.pivot_root(dot, dot) {
        Ok(()) => sys.umount_detach(dot)?,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "pivot_root refused ({e}): the agent's root is not a mount that can be \
                     pivoted (the initramfs?); berth-init must switch to a real root first"
                ),
            ))
        }
        Err(e) => return Err(e),
    }
    sys.chdir(Path::new("/"))
}

/// The real syscalls.
#[derive(Debug, Default)]
pub struct RealSys {
    /// The handshake with the shim, for a container with a user namespace.
    pub userns: Option<super::userns::ChildSync>,
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Sys for RealSys {
    fn setrlimit(&mut self, name: &str, soft: u64, hard: u64) -> io::Result<()> {
        let resource = super::rlimit::resource(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown rlimit {name:?}"),
            )
        })?;
        nix::sys::resource::setrlimit(resource, soft, hard).map_err(errno)
    }
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(errno)
    }

    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mknod_char(&mut self, path: &Path, major: u64, minor: u64, mode: u32) -> io::Result<()> {
        let perm = Mode::from_bits_truncate(mode);
        nix::sys::stat::mknod(
            path,
            SFlag::S_IFCHR,
            perm,
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(errno)?;
        nix::sys::stat::fchmodat(
            None,
            path,
            perm,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(errno)
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn resolve_within(&mut self, path: &Path, within: &Path) -> io::Result<(PathBuf, bool)> {
        resolve_within(path, within)
    }

    fn mount_point(&mut self, root: &Path, target: &Path, dir: bool) -> io::Result<PathBuf> {
        resolve_mount_point(root, target, dir)
    }

    fn chdir(&mut self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(errno)
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(errno)
    }

    fn umount_detach(&mut self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(errno)
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(errno)
    }

    fn execve(&mut self, path: &str, args: &[String], env: &[String]) -> io::Error {
        let to_c = |items: &[String]| -> Result<Vec<CString>, io::Error> {
            items
                .iter()
                .map(|s| {
                    CString::new(s.as_str()).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "NUL byte in argument or environment",
                        )
                    })
                })
                .collect()
        };
        let (path, args, env) = match (CString::new(path), to_c(args), to_c(env)) {
            (Ok(p), Ok(a), Ok(e)) => (p, a, e),
            (Err(_), _, _) => {
                return io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in program path")
            }
            (_, Err(e), _) | (_, _, Err(e)) => return e,
        };
        match nix::unistd::execve(&path, &args, &env) {
            Err(e) => errno(e),
            Ok(never) => match never {},
        }
    }

    fn path_kind(&mut self, path: &Path) -> io::Result<Option<PathKind>> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(Some(PathKind::Dir)),
            Ok(_) => Ok(Some(PathKind::File)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_file(&mut self, path: &Path) -> io::Result<Option<String>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn drop_bounding(&mut self, keep: &CapSet) -> io::Result<()> {
        security::drop_bounding_real(keep)
    }

    fn set_ids(&mut self, creds: &Credentials) -> io::Result<()> {
        security::set_ids_real(creds)
    }

    fn set_caps(&mut self, set: &CapSet, ambient: bool) -> io::Result<()> {
        security::set_caps_real(set, ambient)
    }

    fn no_new_privs(&mut self) -> io::Result<()> {
        nix::sys::prctl::set_no_new_privs().map_err(errno)
    }

    fn enter_user_namespace(&mut self) -> io::Result<()> {
        match self.userns.take() {
            Some(sync) => sync.enter(),
            None => Err(io::Error::other(
                "no handshake with the shim was set up for the user namespace",
            )),
        }
    }

    fn install_seccomp(&mut self, programs: &[BpfProgram]) -> io::Result<()> {
        security::seccomp::install(programs)
            .map_err(|e| io::Error::other(super::init::error_chain(&e)))
    }
}

/// A recording [`Sys`] for tests: every call is logged as one line; calls can be made to fail.
#[derive(Debug, Default)]
pub struct FakeSys {
    /// One line per call, in order.
    pub calls: Vec<String>,
    /// (call prefix, errno): the first call whose line starts with the prefix fails.
    pub failures: Vec<(String, i32)>,
    /// Contents [`Sys::read_file`] returns; other files do not exist.
    pub files: BTreeMap<PathBuf, String>,
    /// Paths [`Sys::path_kind`] reports as directories.
    pub dirs: Vec<PathBuf>,
    /// Paths [`Sys::path_kind`] reports as missing; any other path is a file.
    pub missing: Vec<PathBuf>,
}

impl FakeSys {
    fn record(&mut self, line: String) -> io::Result<()> {
        let failure = self
            .failures
            .iter()
            .position(|(prefix, _)| line.starts_with(prefix.as_str()));
        self.calls.push(line);
        match failure {
            Some(index) => {
                let (_, code) = self.failures.remove(index);
                Err(io::Error::from_raw_os_error(code))
            }
            None => Ok(()),
        }
    }
}

impl Sys for FakeSys {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(format!(
            "mount {} {} {} {} {}",
            source.unwrap_or("-"),
            target.display(),
            fstype.unwrap_or("-"),
            flag_names(flags),
            data.unwrap_or("-")
        ))
    }
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        self.record(format!("mkdir {}", path.display()))
    }
    fn mknod_char(&mut self, path: &Path, major: u64, minor: u64, mode: u32) -> io::Result<()> {
        self.record(format!("mknod {} {major}:{minor} {mode:o}", path.display()))
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        self.record(format!(
            "symlink {} -> {}",
            link.display(),
            target.display()
        ))
    }
    fn resolve_within(&mut self, path: &Path, within: &Path) -> io::Result<(PathBuf, bool)> {
        self.record(format!(
            "resolve_within {} {}",
            path.display(),
            within.display()
        ))?;
        Ok((path.to_path_buf(), true))
    }
    fn mount_point(&mut self, root: &Path, target: &Path, dir: bool) -> io::Result<PathBuf> {
        self.record(format!(
            "mount_point {} {} {}",
            root.display(),
            target.display(),
            if dir { "dir" } else { "file" }
        ))?;
        Ok(root.join(target.strip_prefix("/").unwrap_or(target)))
    }
    fn chdir(&mut self, path: &Path) -> io::Result<()> {
        self.record(format!("chdir {}", path.display()))
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.record(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ))
    }
    fn umount_detach(&mut self, target: &Path) -> io::Result<()> {
        self.record(format!("umount_detach {}", target.display()))
    }
    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        self.record(format!("sethostname {name}"))
    }
    fn setrlimit(&mut self, name: &str, soft: u64, hard: u64) -> io::Result<()> {
        self.record(format!("setrlimit {name} {soft} {hard}"))
    }
    fn execve(&mut self, path: &str, args: &[String], env: &[String]) -> io::Error {
        match self.record(format!("execve {path} {args:?} {env:?}")) {
            Err(e) => e,
            // A fake cannot replace the process: report "success" as an error tests can see.
            Ok(()) => io::Error::other("fake execve succeeded"),
        }
    }
    fn path_kind(&mut self, path: &Path) -> io::Result<Option<PathKind>> {
        Ok(if self.missing.iter().any(|p| p == path) {
            None
        } else if self.dirs.iter().any(|p| p == path) {
            Some(PathKind::Dir)
        } else {
            Some(PathKind::File)
        })
    }
    fn read_file(&mut self, path: &Path) -> io::Result<Option<String>> {
        Ok(self.files.get(path).cloned())
    }
    fn drop_bounding(&mut self, keep: &CapSet) -> io::Result<()> {
        let mask = security::capabilities::mask(keep);
        self.record(format!("drop_bounding keep {mask:#x}"))
    }
    fn set_ids(&mut self, creds: &Credentials) -> io::Result<()> {
        self.record(format!(
            "set_ids uid={} gid={} groups={:?}",
            creds.uid, creds.gid, creds.groups
        ))
    }
    fn set_caps(&mut self, set: &CapSet, ambient: bool) -> io::Result<()> {
        let mask = security::capabilities::mask(set);
        self.record(format!("set_caps {mask:#x} ambient={ambient}"))
    }
    fn no_new_privs(&mut self) -> io::Result<()> {
        self.record("no_new_privs".to_string())
    }
    fn install_seccomp(&mut self, programs: &[BpfProgram]) -> io::Result<()> {
        self.record(format!("seccomp {} programs", programs.len()))
    }
    fn enter_user_namespace(&mut self) -> io::Result<()> {
        self.record("unshare user".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> RootfsLayout {
        RootfsLayout::for_container(
            Path::new("/state/containers"),
            "web",
            &[
                PathBuf::from("/store/layers/base"),
                PathBuf::from("/store/layers/top"),
            ],
        )
    }

    #[test]
    fn layout_reverses_layers_and_places_dirs_under_container() {
        let l = layout();
        assert_eq!(
            l.lower,
            vec![
                PathBuf::from("/store/layers/top"),
                PathBuf::from("/store/layers/base")
            ]
        );
        assert_eq!(l.upper, PathBuf::from("/state/containers/web/upper"));
        assert_eq!(l.work, PathBuf::from("/state/containers/web/work"));
        assert_eq!(l.target, PathBuf::from("/state/containers/web/rootfs"));
        assert_eq!(
            l.overlay_options().unwrap(),
            "lowerdir=/store/layers/top:/store/layers/base,\
             upperdir=/state/containers/web/upper,workdir=/state/containers/web/work"
        );
    }

    #[test]
    fn overlay_rejects_no_layers_and_unsafe_paths() {
        let mut l = layout();
        l.lower.clear();
        assert!(matches!(l.overlay_options(), Err(RootfsError::NoLayers)));
        let mut l = layout();
        l.upper = PathBuf::from("/a,b/upper");
        assert!(matches!(
            l.overlay_options(),
            Err(RootfsError::UnsafePath(_))
        ));
        assert!(plan(&l).is_err());
    }

    #[test]
    fn plan_order_and_flags() {
        let steps = plan(&layout()).unwrap();
        let root = PathBuf::from("/state/containers/web/rootfs");
        // rprivate first, overlay second, pivot last.
        assert_eq!(
            steps[0],
            Step::Mount {
                source: None,
                target: PathBuf::from("/"),
                fstype: None,
                flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                data: None
            }
        );
        assert!(
            matches!(&steps[1], Step::Mount { fstype: Some(t), target, .. } if t == "overlay" && *target == root)
        );
        assert_eq!(
            steps.last(),
            Some(&Step::PivotRoot {
                new_root: root.clone()
            })
        );
        let index = |pred: &dyn Fn(&Step) -> bool| steps.iter().position(pred).unwrap();
        let mount_of = |fs: &'static str| move |s: &Step| matches!(s, Step::Mount { fstype: Some(t), .. } if t == fs);
        let proc_i = index(&mount_of("proc"));
        let dev_i =
            index(&|s| matches!(s, Step::Mount { target, .. } if *target == root.join("dev")));
        let pts_i = index(&mount_of("devpts"));
        let sys_i = index(&mount_of("sysfs"));
        let null_i =
            index(&|s| matches!(s, Step::Mknod { path, .. } if path.ends_with("dev/null")));
        assert!(1 < proc_i && proc_i < dev_i && dev_i < null_i && null_i < pts_i && pts_i < sys_i);
        // /sys is read-only; /dev is a 755 tmpfs; devpts is a private instance.
        match &steps[sys_i] {
            Step::Mount { flags, .. } => assert!(flags.contains(MsFlags::MS_RDONLY)),
            other => unreachable!("{other:?}"),
        }
        match &steps[dev_i] {
            Step::Mount {
                fstype,
                data,
                flags,
                ..
            } => {
                assert_eq!(fstype.as_deref(), Some("tmpfs"));
                assert!(data.as_deref().unwrap_or("").contains("mode=755"));
                assert!(!flags.contains(MsFlags::MS_NODEV));
            }
            other => unreachable!("{other:?}"),
        }
        match &steps[pts_i] {
            Step::Mount { data, .. } => {
                assert!(data.as_deref().unwrap_or("").contains("newinstance"));
                assert!(data.as_deref().unwrap_or("").contains("ptmxmode=0666"));
            }
            other => unreachable!("{other:?}"),
        }
        // Every standard node and symlink is there.
        for (name, major, minor) in DEVICES {
            assert!(steps.contains(&Step::Mknod {
                path: root.join("dev").join(name),
                major,
                minor,
                mode: 0o666
            }));
        }
        for (link, target) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            assert!(steps.contains(&Step::Symlink {
                target: PathBuf::from(target),
                link: root.join("dev").join(link)
            }));
        }
        // Mount points are created before they are mounted on.
        for (i, step) in steps.iter().enumerate() {
            if let Step::Mount { target, .. } = step {
                if target.starts_with(&root) && *target != root {
                    assert!(
                        steps[..i].contains(&Step::Mkdir {
                            path: target.clone()
                        }),
                        "{target:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn apply_records_syscalls_and_pivots_the_runc_way() {
        let mut sys = FakeSys::default();
        apply(&plan(&layout()).unwrap(), &mut sys).unwrap();
        let tail: Vec<&str> = sys
            .calls
            .iter()
            .rev()
            .take(4)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "chdir /state/containers/web/rootfs",
                "pivot_root . .",
                "umount_detach .",
                "chdir /"
            ]
        );
        assert!(sys.calls[0].starts_with("mount - / - MS_REC|MS_PRIVATE -"));
    }

    #[test]
    fn kernel_files_are_masked_and_made_read_only_before_the_pivot() {
        let steps = plan(&layout()).unwrap();
        let root = PathBuf::from("/state/containers/web/rootfs");
        let pivot = steps.len() - 1;
        let sysfs = steps
            .iter()
            .position(|s| matches!(s, Step::Mount { fstype: Some(t), .. } if t == "sysfs"))
            .unwrap();
        for path in MASKED_PATHS {
            let i = steps
                .iter()
                .position(|s| matches!(s, Step::Mask { path: p, null } if *p == root.join(path) && *null == root.join("dev/null")))
                .unwrap();
            assert!(sysfs < i && i < pivot, "{path}");
        }
        for path in READONLY_PATHS {
            let i = steps
                .iter()
                .position(|s| {
                    *s == Step::ReadOnly {
                        path: root.join(path),
                    }
                })
                .unwrap();
            assert!(sysfs < i && i < pivot, "{path}");
        }

        // Files get /dev/null, directories an empty read-only tmpfs, missing paths nothing.
        let mut sys = FakeSys {
            dirs: vec![
                root.join("proc/scsi"),
                root.join("sys/firmware"),
                root.join("proc/sys"),
            ],
            missing: vec![root.join("proc/timer_stats"), root.join("proc/asound")],
            ..FakeSys::default()
        };
        apply(&steps, &mut sys).unwrap();
        let has = |line: &str| sys.calls.iter().any(|c| c == line);
        let r = "/state/containers/web/rootfs";
        assert!(has(&format!(
            "mount {r}/dev/null {r}/proc/kcore - MS_BIND -"
        )));
        assert!(has(&format!(
            "mount {r}/dev/null {r}/proc/keys - MS_BIND -"
        )));
        assert!(has(&format!(
            "mount tmpfs {r}/proc/scsi tmpfs MS_RDONLY size=0"
        )));
        assert!(has(&format!(
            "mount tmpfs {r}/sys/firmware tmpfs MS_RDONLY size=0"
        )));
        assert!(!sys
            .calls
            .iter()
            .any(|c| c.contains("timer_stats") || c.contains("asound")));
        let bind = sys
            .calls
            .iter()
            .position(|c| *c == format!("mount {r}/proc/sys {r}/proc/sys - MS_BIND|MS_REC -"))
            .unwrap();
        assert_eq!(
            sys.calls[bind + 1],
            format!("mount - {r}/proc/sys - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT|MS_BIND -")
        );
        assert!(has(&format!(
            "mount - {r}/proc/sysrq-trigger - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT|MS_BIND -"
        )));
    }

    #[test]
    fn pivot_root_einval_is_an_error_not_a_chroot() {
        let mut sys = FakeSys {
            failures: vec![("pivot_root".into(), libc::EINVAL)],
            ..FakeSys::default()
        };
        let err = apply(&plan(&layout()).unwrap(), &mut sys).unwrap_err();
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            cause
                .as_deref()
                .is_some_and(|c| c.contains("pivot_root refused")),
            "{err}: {cause:?}"
        );
        assert!(!sys.calls.iter().any(|c| c.starts_with("chroot")));
        assert_eq!(sys.calls.last().map(String::as_str), Some("pivot_root . ."));
    }

    #[test]
    fn failing_step_stops_the_plan_and_names_the_step() {
        let mut sys = FakeSys {
            failures: vec![("mount sysfs".into(), libc::EPERM)],
            ..FakeSys::default()
        };
        let err = apply(&plan(&layout()).unwrap(), &mut sys).unwrap_err();
        assert!(
            err.to_string()
                .contains("mount sysfs on /state/containers/web/rootfs/sys"),
            "{err}"
        );
        assert!(sys.calls.last().unwrap().starts_with("mount sysfs"));
        assert!(!sys.calls.iter().any(|c| c.starts_with("pivot_root")));
    }

    fn with_mounts() -> RootfsLayout {
        let mut l = layout();
        l.mounts = vec![
            ContainerMount::Bind {
                source: PathBuf::from("/state/volumes/data"),
                within: PathBuf::from("/state/volumes"),
                target: PathBuf::from("/data/sub"),
                read_only: false,
                create: true,
            },
            ContainerMount::Tmpfs {
                target: PathBuf::from("/tmp"),
                size: Some(64 << 20),
                mode: Some(0o1777),
            },
            ContainerMount::Bind {
                source: PathBuf::from("/state/shared/x"),
                within: PathBuf::from("/state"),
                target: PathBuf::from("/data"),
                read_only: true,
                create: false,
            },
        ];
        l
    }

    #[test]
    fn user_mounts_come_after_the_pseudo_filesystems_parents_first() {
        let mut sys = FakeSys::default();
        apply(&plan(&with_mounts()).unwrap(), &mut sys).unwrap();
        let start = sys
            .calls
            .iter()
            .position(|c| c.starts_with("mount sysfs"))
            .unwrap();
        let user: Vec<&str> = sys.calls[start + 1..]
            .iter()
            // Masked and read-only kernel paths follow the user mounts.
            .take_while(|c| !c.starts_with("chdir") && !c.contains("/proc/"))
            .map(String::as_str)
            .collect();
        let root = "/state/containers/web/rootfs";
        assert_eq!(
            user,
            [
                "mount_point /state/containers/web/rootfs /tmp dir".to_string(),
                format!("mount tmpfs {root}/tmp tmpfs MS_NOSUID|MS_NODEV mode=1777,size=67108864"),
                "resolve_within /state/shared/x /state".to_string(),
                format!("mount_point {root} /data dir"),
                format!("mount /state/shared/x {root}/data - MS_BIND|MS_REC -"),
                format!("mount - {root}/data - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_REMOUNT|MS_BIND -"),
                "resolve_within /state/volumes/data /state/volumes".to_string(),
                format!("mount_point {root} /data/sub dir"),
                format!("mount /state/volumes/data {root}/data/sub - MS_BIND|MS_REC -"),
                format!("mount - {root}/data/sub - MS_NOSUID|MS_NODEV|MS_REMOUNT|MS_BIND -"),
            ]
        );
    }

    #[test]
    fn a_bind_source_escaping_the_state_stops_the_plan() {
        let mut sys = FakeSys {
            failures: vec![("resolve_within /state/shared".into(), libc::EACCES)],
            ..FakeSys::default()
        };
        let err = apply(&plan(&with_mounts()).unwrap(), &mut sys).unwrap_err();
        assert!(
            err.to_string()
                .contains("bind mount /state/shared/x on /data"),
            "{err}"
        );
        assert!(!sys.calls.iter().any(|c| c.contains("MS_BIND|MS_REC")));
        assert!(!sys.calls.iter().any(|c| c.starts_with("pivot_root")));
    }

    #[test]
    fn mount_points_are_created_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("srv")).unwrap();
        std::os::unix::fs::symlink("/srv", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../srv", root.join("srv/up")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        std::fs::write(root.join("file"), "").unwrap();

        let at = resolve_mount_point(&root, Path::new("/a/b"), true).unwrap();
        assert_eq!(at, root.join("a/b"));
        assert!(at.is_dir());
        // Absolute links are resolved under the root, not on the host.
        assert_eq!(
            resolve_mount_point(&root, Path::new("/abs/data"), true).unwrap(),
            root.join("srv/data")
        );
        assert_eq!(
            resolve_mount_point(&root, Path::new("/srv/up/x"), true).unwrap(),
            root.join("srv/x")
        );
        assert_eq!(
            resolve_mount_point(&root, Path::new("/etc-link/f"), false).unwrap(),
            root.join("etc/f")
        );
        assert!(root.join("etc/f").is_file());
        let err = resolve_mount_point(&root, Path::new("/escape/x"), true).unwrap_err();
        assert!(
            err.to_string()
                .contains("points outside the container root"),
            "{err}"
        );
        assert!(!tmp.path().join("outside").exists());
        let err = resolve_mount_point(&root, Path::new("/file/x"), true).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        let err = resolve_mount_point(&root, Path::new("/file"), true).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a file but the source is a directory"),
            "{err}"
        );
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_mount_point(&root, Path::new("/loop"), true).is_err());
    }

    #[test]
    fn bind_sources_must_resolve_inside_their_base() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(state.join("shared/x")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), state.join("shared/out")).unwrap();
        let (real, is_dir) = resolve_within(&state.join("shared/x"), &state).unwrap();
        assert!(is_dir && real.ends_with("shared/x"));
        let err = resolve_within(&state.join("shared/out"), &state).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(resolve_within(&state.join("missing"), &state).is_err());
    }

    #[test]
    fn prepare_creates_volume_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let mut l = RootfsLayout::for_container(tmp.path(), "web", &[tmp.path().join("layer")]);
        l.mounts.push(ContainerMount::Bind {
            source: tmp.path().join("volumes/data"),
            within: tmp.path().join("volumes"),
            target: PathBuf::from("/data"),
            read_only: false,
            create: true,
        });
        l.prepare_host_dirs().unwrap();
        assert!(tmp.path().join("volumes/data").is_dir());
    }

    #[test]
    fn prepare_host_dirs_recreates_upper_and_work_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let l = RootfsLayout::for_container(tmp.path(), "web", &[tmp.path().join("layer")]);
        l.prepare_host_dirs().unwrap();
        std::fs::write(l.upper.join("leftover"), "x").unwrap();
        l.prepare_host_dirs().unwrap();
        assert!(l.upper.is_dir() && l.work.is_dir() && l.target.is_dir());
        assert!(!l.upper.join("leftover").exists());
    }
}
