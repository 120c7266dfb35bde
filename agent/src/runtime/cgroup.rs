//! cgroup v2 resource limits: one leaf cgroup per container, `<root>/berth.slice/<name>`.
//!
//! berthd creates the leaf and writes its limits (`memory.max`, `cpu.max`, `pids.max`) before
//! the container starts. The container enters it race-free: the forked child of berthd writes
//! `0` (itself) to the leaf's `cgroup.procs` in `pre_exec`, *before* it unshares the cgroup
//! namespace and execs the init shim (see `launch.rs`), so the shim, the container's PID 1 and
//! everything they fork are charged to the leaf from their first instruction, and the
//! container's cgroup namespace is rooted at its leaf (it sees its own limits at
//! `/sys/fs/cgroup`). When the container exits, `memory.events` tells whether the OOM killer
//! struck, and the leaf is removed.
//!
//! Every function takes the hierarchy's root path, so the file logic is unit-tested against a
//! temporary directory laid out like cgroupfs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::manifest::Limits;

/// Where cgroup v2 is mounted on a berth host.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup below the root that holds every container's leaf.
pub const SLICE: &str = "berth.slice";

/// The `cpu.max` period in microseconds (the kernel's default, 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The controllers berth uses.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The cgroup limits of one container (absent: unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupLimits {
    /// `memory.max` in bytes (the kernel rounds it down to whole pages).
    pub memory_max: Option<u64>,
    /// `cpu.max` quota in microseconds per [`CPU_PERIOD_US`].
    pub cpu_quota_us: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

impl CgroupLimits {
    /// The cgroup part of a manifest container's limits.
    pub fn from_manifest(limits: &Limits) -> Self {
        CgroupLimits {
            memory_max: limits.memory,
            // cpus is validated to 0.01..=1024, so the product fits comfortably.
            cpu_quota_us: limits
                .cpus
                .map(|cpus| (cpus * CPU_PERIOD_US as f64).round() as u64),
            pids_max: limits.pids,
        }
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.requirements().is_empty()
    }

    /// (controller, manifest key) for every limit that is set.
    pub fn requirements(&self) -> Vec<(&'static str, &'static str)> {
        let mut needs = Vec::new();
        if self.memory_max.is_some() {
            needs.push(("memory", "memory"));
        }
        if self.cpu_quota_us.is_some() {
            needs.push(("cpu", "cpus"));
        }
        if self.pids_max.is_some() {
            needs.push(("pids", "pids"));
        }
        needs
    }

    /// The files to write in the leaf, in order: (file, value, required). Optional files are
    /// written only when the kernel provides them.
    pub fn writes(&self) -> Vec<(&'static str, String, bool)> {
        let mut out = Vec::new();
        if let Some(bytes) = self.memory_max {
            out.push(("memory.max", bytes.to_string(), true));
            // A memory limit that swap can bypass is no limit.
            out.push(("memory.swap.max", "0".to_string(), false));
            // Kill the whole container on OOM, not a random process inside it.
            out.push(("memory.oom.group", "1".to_string(), false));
        }
        if let Some(quota) = self.cpu_quota_us {
            out.push(("cpu.max", format!("{quota} {CPU_PERIOD_US}"), true));
        }
        if let Some(max) = self.pids_max {
            out.push(("pids.max", max.to_string(), true));
        }
        out
    }
}

/// Why a cgroup could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The root is not a cgroup v2 hierarchy.
    #[error(
        "cgroup v2 is not mounted at {root} (no readable {root}/cgroup.controllers: {source})"
    )]
    NotV2 {
        /// The root looked at.
        root: PathBuf,
        /// Why the file could not be read.
        #[source]
        source: io::Error,
    },
    /// A controller a limit needs is not available.
    #[error(
        "`{key}` needs the cgroup v2 {controller} controller, which {root} does not offer \
         (available: {available}); remove `{key}` or boot a kernel with the controller enabled"
    )]
    MissingController {
        /// The controller (`memory`, `cpu`, `pids`).
        controller: &'static str,
        /// The manifest key that needs it.
        key: &'static str,
        /// The hierarchy's root.
        root: PathBuf,
        /// The controllers that are there.
        available: String,
    },
    /// A cgroup file or directory operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A left-over leaf still holds processes.
    #[error(
        "{path} still holds processes ({pids}); a previous container of this name is still running"
    )]
    Busy {
        /// The leaf.
        path: PathBuf,
        /// Their pids.
        pids: String,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// Write `value` to an existing cgroup file in one write(2), as cgroupfs requires (opened
/// like a shell's `echo VALUE > FILE`; the file is never created).
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_error("open", path))?;
    file.write_all(value.as_bytes())
        .map_err(io_error("write", path))
}

fn read_words(path: &Path) -> Result<BTreeSet<String>, io::Error> {
    Ok(fs::read_to_string(path)?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// A cgroup v2 hierarchy berth can create leaves in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    root: PathBuf,
    available: BTreeSet<String>,
}

/// Whether cgroup v2 can be used, and if not why (for the console warning and the refusal of
/// containers that ask for limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v2 is mounted (possibly without every controller).
    Available(Hierarchy),
    /// It is not; containers with limits cannot start.
    Unavailable {
        /// Why, in words.
        reason: String,
    },
}

impl Default for Cgroups {
    fn default() -> Self {
        Cgroups::Unavailable {
            reason: "cgroup v2 support was not probed".into(),
        }
    }
}

impl Cgroups {
    /// Look at `root` (normally [`DEFAULT_ROOT`]).
    pub fn probe(root: &Path) -> Cgroups {
        match Hierarchy::probe(root) {
            Ok(h) => Cgroups::Available(h),
            Err(e) => Cgroups::Unavailable {
                reason: super::init::error_chain(&e),
            },
        }
    }

    /// What the operator must be warned about: cgroup v2 missing, or controllers berth uses
    /// that are missing. `None` when everything is there.
    pub fn warning(&self) -> Option<String> {
        match self {
            Cgroups::Unavailable { reason } => Some(format!(
                "{reason}; containers with `memory`, `cpus` or `pids` limits will not be started"
            )),
            Cgroups::Available(h) => {
                let missing: Vec<&str> = CONTROLLERS
                    .into_iter()
                    .filter(|c| !h.available.contains(*c))
                    .collect();
                (!missing.is_empty()).then(|| {
                    format!(
                        "cgroup v2 at {} lacks the {} controller(s); containers limiting them will not be started",
                        h.root.display(),
                        missing.join(", ")
                    )
                })
            }
        }
    }
}

impl Hierarchy {
    /// A cgroup v2 hierarchy at `root`: `root/cgroup.controllers` must be readable.
    pub fn probe(root: &Path) -> Result<Hierarchy, CgroupError> {
        let available =
            read_words(&root.join("cgroup.controllers")).map_err(|source| CgroupError::NotV2 {
                root: root.to_path_buf(),
                source,
            })?;
        Ok(Hierarchy {
            root: root.to_path_buf(),
            available,
        })
    }

    /// The hierarchy's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Controllers offered at the root.
    pub fn available(&self) -> &BTreeSet<String> {
        &self.available
    }

    /// `<root>/berth.slice`.
    pub fn slice(&self) -> PathBuf {
        self.root.join(SLICE)
    }

    /// `<root>/berth.slice/<name>`.
    pub fn leaf_path(&self, name: &str) -> PathBuf {
        self.slice().join(name)
    }

    /// Create (or reuse an empty left-over) leaf for container `name` with `limits` written.
    /// Every controller berth uses that the root offers is enabled down to the leaf, so
    /// `memory.events` exists even without a memory limit.
    pub fn create_leaf(&self, name: &str, limits: &CgroupLimits) -> Result<Leaf, CgroupError> {
        let available = self.available.iter().cloned().collect::<Vec<_>>().join(" ");
        for (controller, key) in limits.requirements() {
            if !self.available.contains(controller) {
                return Err(CgroupError::MissingController {
                    controller,
                    key,
                    root: self.root.clone(),
                    available: if available.is_empty() {
                        "none".into()
                    } else {
                        available.clone()
                    },
                });
            }
        }
        let required: BTreeSet<&str> = limits.requirements().iter().map(|(c, _)| *c).collect();
        let wanted: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| self.available.contains(*c))
            .collect();
        enable_controllers(&self.root, &wanted, &required)?;
        let slice = self.slice();
        match fs::create_dir(&slice) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_error("create", &slice)(e))
            }
            _ => {}
        }
        enable_controllers(&slice, &wanted, &required)?;

        let leaf = self.leaf_path(name);
        match fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let procs = leaf.join("cgroup.procs");
                let pids = fs::read_to_string(&procs).map_err(io_error("read", &procs))?;
                if !pids.trim().is_empty() {
                    return Err(CgroupError::Busy {
                        path: leaf,
                        pids: pids.split_whitespace().collect::<Vec<_>>().join(" "),
                    });
                }
            }
            Err(e) => return Err(io_error("create", &leaf)(e)),
        }
        let leaf = Leaf {
            oom_baseline: 0,
            path: leaf,
        };
        let configured = (|| {
            for (file, value, required) in limits.writes() {
                let path = leaf.path.join(file);
                if required || path.exists() {
                    write_file(&path, &value)?;
                }
            }
            leaf.oom_kills()
        })();
        match configured {
            Ok(baseline) => Ok(Leaf {
                oom_baseline: baseline,
                ..leaf
            }),
            Err(e) => {
                let _ = fs::remove_dir(&leaf.path);
                Err(e)
            }
        }
    }
}

/// Enable `wanted` controllers for the children of `dir`; failing to enable a `required` one
/// is an error, the others are best effort.
fn enable_controllers(
    dir: &Path,
    wanted: &[&str],
    required: &BTreeSet<&str>,
) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = read_words(&control).map_err(io_error("read", &control))?;
    for controller in wanted {
        if enabled.contains(*controller) {
            continue;
        }
        let result = write_file(&control, &format!("+{controller}"));
        if required.contains(controller) {
            result?;
        }
    }
    Ok(())
}

/// The `oom_kill` counter of a `memory.events` file's text (0 when absent).
pub fn parse_oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == "oom_kill").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// One container's leaf cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    path: PathBuf,
    /// `oom_kill` when the leaf was set up (a reused leaf keeps its counters).
    oom_baseline: u64,
}

impl Leaf {
    /// The leaf of a container that was already running when berthd started (re-adopted
    /// after a berthd restart): its OOM counter counts from now.
    pub fn existing(path: PathBuf) -> Leaf {
        let leaf = Leaf {
            path,
            oom_baseline: 0,
        };
        Leaf {
            oom_baseline: leaf.oom_kills().unwrap_or(0),
            ..leaf
        }
    }

    /// The leaf directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `oom_kill` counter of `memory.events` (0 without the memory controller).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let path = self.path.join("memory.events");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(parse_oom_kills(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_error("read", &path)(e)),
        }
    }

    /// Whether the OOM killer killed a process of this container since the leaf was set up.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills().is_ok_and(|n| n > self.oom_baseline)
    }

    /// Remove the leaf, retrying for up to `wait` while its last processes are still being
    /// torn down (EBUSY). A leaf that is already gone is fine.
    pub fn remove(&self, wait: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + wait;
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io_error("remove", &self.path)(e)),
            }
        }
    }
}

/// Leaves of running containers, by container name.
pub type Leaves = BTreeMap<String, Leaf>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir laid out like a cgroup v2 root with `controllers` offered.
    fn fake_root(controllers: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
        tmp
    }

    /// Lay out the slice and a leaf's files the way the kernel would create them.
    fn fake_cgroup(dir: &Path, files: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for f in files {
            fs::write(dir.join(f), "").unwrap();
        }
    }

    fn limits() -> CgroupLimits {
        CgroupLimits::from_manifest(&Limits {
            memory: Some(16 << 20),
            cpus: Some(0.5),
            pids: Some(10),
            ..Limits::default()
        })
    }

    #[test]
    fn limits_from_manifest() {
        let l = limits();
        assert_eq!(l.memory_max, Some(16 << 20));
        assert_eq!(l.cpu_quota_us, Some(50_000));
        assert_eq!(l.pids_max, Some(10));
        assert_eq!(
            l.requirements(),
            [("memory", "memory"), ("cpu", "cpus"), ("pids", "pids")]
        );
        let two = CgroupLimits::from_manifest(&Limits {
            cpus: Some(2.0),
            ..Limits::default()
        });
        assert_eq!(two.writes(), [("cpu.max", "200000 100000".into(), true)]);
        assert!(CgroupLimits::default().is_empty());
    }

    #[test]
    fn leaf_gets_limits_and_controllers_are_enabled() {
        let root = fake_root("cpuset cpu io memory hugetlb pids rdma");
        let h = Hierarchy::probe(root.path()).unwrap();
        fake_cgroup(&h.slice(), &["cgroup.subtree_control"]);
        fake_cgroup(
            &h.leaf_path("web"),
            &[
                "cgroup.procs",
                "memory.max",
                "memory.swap.max",
                "memory.oom.group",
                "cpu.max",
                "pids.max",
            ],
        );
        fs::write(
            h.leaf_path("web").join("memory.events"),
            "oom 2\noom_kill 1\n",
        )
        .unwrap();
        let leaf = h.create_leaf("web", &limits()).unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert_eq!(leaf.path(), root.path().join("berth.slice/web"));
        assert_eq!(read(&leaf.path().join("memory.max")), "16777216");
        assert_eq!(read(&leaf.path().join("memory.swap.max")), "0");
        assert_eq!(read(&leaf.path().join("memory.oom.group")), "1");
        assert_eq!(read(&leaf.path().join("cpu.max")), "50000 100000");
        assert_eq!(read(&leaf.path().join("pids.max")), "10");
        // A plain file keeps only the last write; cgroupfs takes each "+x" in turn.
        assert_eq!(read(&root.path().join("cgroup.subtree_control")), "+pids");
        assert_eq!(read(&h.slice().join("cgroup.subtree_control")), "+pids");
        // The reused leaf's earlier OOM kill is not this container's.
        assert!(!leaf.oom_killed());
        fs::write(leaf.path().join("memory.events"), "oom 3\noom_kill 2\n").unwrap();
        assert!(leaf.oom_killed());
    }

    #[test]
    fn optional_files_are_skipped_when_the_kernel_lacks_them() {
        let root = fake_root("memory");
        fs::write(root.path().join("cgroup.subtree_control"), "memory").unwrap();
        let h = Hierarchy::probe(root.path()).unwrap();
        fake_cgroup(&h.slice(), &["cgroup.subtree_control"]);
        fs::write(h.slice().join("cgroup.subtree_control"), "memory").unwrap();
        fake_cgroup(&h.leaf_path("db"), &["cgroup.procs", "memory.max"]);
        let only_memory = CgroupLimits {
            memory_max: Some(8 << 20),
            ..CgroupLimits::default()
        };
        let leaf = h.create_leaf("db", &only_memory).unwrap();
        assert!(!leaf.path().join("memory.swap.max").exists());
        assert!(!leaf.path().join("memory.oom.group").exists());
        // Already enabled: nothing rewritten.
        assert_eq!(
            fs::read_to_string(h.slice().join("cgroup.subtree_control")).unwrap(),
            "memory"
        );
        assert!(!leaf.oom_killed());
    }

    #[test]
    fn missing_controller_names_the_key() {
        let root = fake_root("cpu pids");
        let h = Hierarchy::probe(root.path()).unwrap();
        let e = h.create_leaf("web", &limits()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("`memory` needs the cgroup v2 memory controller"),
            "{msg}"
        );
        assert!(msg.contains("available: cpu pids"), "{msg}");
        assert!(!h.slice().exists(), "nothing is created on refusal");
    }

    #[test]
    fn a_leaf_with_processes_is_not_reused_and_a_failed_setup_is_undone() {
        let root = fake_root("memory");
        let h = Hierarchy::probe(root.path()).unwrap();
        fake_cgroup(&h.slice(), &["cgroup.subtree_control"]);
        fake_cgroup(&h.leaf_path("web"), &[]);
        fs::write(h.leaf_path("web").join("cgroup.procs"), "41\n42\n").unwrap();
        let e = h.create_leaf("web", &CgroupLimits::default()).unwrap_err();
        assert!(e.to_string().contains("(41 42)"), "{e}");

        // memory.max does not exist in a plain new directory: the write fails, the leaf goes.
        let e = h
            .create_leaf(
                "new",
                &CgroupLimits {
                    memory_max: Some(8 << 20),
                    ..CgroupLimits::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("new/memory.max"), "{e}");
        assert!(!h.leaf_path("new").exists());
    }

    #[test]
    fn probe_and_warnings() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Cgroups::probe(tmp.path());
        let w = c.warning().unwrap();
        assert!(w.starts_with("cgroup v2 is not mounted at"), "{w}");
        assert!(w.contains("will not be started"), "{w}");
        let root = fake_root("cpu memory");
        let w = Cgroups::probe(root.path()).warning().unwrap();
        assert!(w.contains("lacks the pids controller"), "{w}");
        let root = fake_root("cpu memory pids io");
        assert_eq!(Cgroups::probe(root.path()).warning(), None);
    }

    #[test]
    fn oom_kill_counter() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(parse_oom_kills(events), 2);
        assert_eq!(parse_oom_kills("low 0\noom 0\noom_kill 0\n"), 0);
        assert_eq!(parse_oom_kills(""), 0);
    }

    #[test]
    fn remove_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = Leaf {
            path: tmp.path().join("gone"),
            oom_baseline: 0,
        };
        leaf.remove(Duration::ZERO).unwrap();
        fs::create_dir(leaf.path()).unwrap();
        leaf.remove(Duration::ZERO).unwrap();
        assert!(!leaf.path().exists());
    }
}
