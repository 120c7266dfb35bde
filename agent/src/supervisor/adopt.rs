//! Re-adopting the containers a killed berthd left running.
//!
//! When berthd dies (`kill -9`, a crash), PID 1 starts it again; its containers keep running,
//! re-parented to PID 1. So that the new berthd takes them over instead of starting them
//! again, three things outlive berthd:
//!
//! - the runtime state file `RUN_DIR/containers.json`, rewritten (atomically) whenever a
//!   container's state changes: per running container its pid, the pid's start time (so a
//!   reused pid is not mistaken for it), a hash of its plan and its restart count; per container
//!   that ended and stays down (exited, failed, stopped) how it ended, so a completed one-shot
//!   container is not run a second time;
//! - its output pipes, in PID 1's fd store (see [`crate::runtime::fdstore`]);
//! - its exit code, should it end while re-parented: PID 1 reaps it and writes the code to
//!   `RUN_DIR/reaped/PID`, which berthd reads when the container's pidfd says it ended
//!   ([`Orphans`]).
//!
//! At start, [`recover`] adopts a recorded container whose process is alive with the same
//! start time, whose plan in the manifest is unchanged and whose pipes came back from the
//! store. Any other still-running one is killed and started again like the rest. The network
//! namespace, address and cgroup leaf of a container follow from its name, so they are not
//! recorded. The decision ([`decide`]) is unit-tested with a fake process table.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ContainerPlan;
use crate::console::{self, Event};
use crate::runtime::fdstore::FdStore;
use crate::runtime::init::error_chain;

/// The runtime state file, in the runtime directory (`/run/berth`, a tmpfs: a reboot starts
/// with none).
pub const STATE_FILE: &str = "containers.json";

/// Where PID 1 writes the exit codes of the orphans it reaped, in the runtime directory.
pub const REAPED_DIR: &str = "reaped";

/// The state file's format version.
const VERSION: u32 = 1;

/// How long an ended adopted container's exit code may take to appear in the reaped directory.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// The exit code reported when PID 1 recorded none.
pub const UNKNOWN_EXIT: i32 = 255;

/// How long a container that is not re-adopted may take to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Why the runtime state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// It exists but cannot be read.
    #[error("cannot read the runtime state {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It is not a state file of this berthd version.
    #[error("{} is not a berthd runtime state file (version {VERSION}); running containers are started again", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// It cannot be written.
    #[error("cannot write the runtime state {}; a restarted berthd will start the containers again", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What berthd needs to take over one running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Container name.
    pub name: String,
    /// Host pid of its process.
    pub pid: i32,
    /// The process's start time (`/proc/PID/stat` field 22).
    pub start_time: u64,
    /// [`spec_hash`] of the plan it was started with.
    pub spec: String,
    /// Its restart count.
    pub restarts: u32,
    /// When it started (Unix ms).
    pub started_ms: Option<u64>,
}

/// A container that had ended and stayed down under the previous berthd, or whose process
/// ended while no berthd was running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ended {
    /// Container name.
    pub name: String,
    /// [`spec_hash`] of the plan it ran with (a changed plan starts afresh).
    pub spec: String,
    /// Its restart count.
    pub restarts: u32,
    /// How it ended.
    pub outcome: Outcome,
}

/// How an [`Ended`] container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// It exited and its restart policy keeps it down.
    Exited {
        /// Exit code.
        code: i32,
        /// Killed by the OOM killer.
        oom: bool,
    },
    /// Its restart policy gave up.
    Failed {
        /// Its last exit code.
        code: i32,
    },
    /// An operator stopped it.
    Stopped {
        /// Its exit code, when it was running.
        code: Option<i32>,
    },
    /// It was running when berthd died and ended before this berthd started: its restart
    /// policy decides what happens next, as for any exit. Never saved.
    EndedWhileDown {
        /// The code PID 1 recorded ([`UNKNOWN_EXIT`] when none).
        code: i32,
    },
}

/// What the state file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The running containers.
    pub running: Vec<Record>,
    /// The containers that ended and stay down.
    pub ended: Vec<Ended>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    containers: Vec<Record>,
    #[serde(default)]
    ended: Vec<Ended>,
}

/// What the state file at `path` holds (nothing when it does not exist).
pub fn load(path: &Path) -> Result<Saved, AdoptError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Saved::default()),
        Err(source) => {
            return Err(AdoptError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let parse = |source| AdoptError::Parse {
        path: path.to_path_buf(),
        source,
    };
    let file: StateFile = serde_json::from_str(&text).map_err(parse)?;
    if file.version != VERSION {
        return Err(parse(serde::de::Error::custom(format!(
            "version {} is not {VERSION}",
            file.version
        ))));
    }
    Ok(Saved {
        running: file.containers,
        ended: file.ended,
    })
}

/// Write `saved` to `path` atomically (a temporary file renamed over it).
pub fn save(path: &Path, saved: &Saved) -> Result<(), AdoptError> {
    let write = |source| AdoptError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = StateFile {
        version: VERSION,
        containers: saved.running.clone(),
        ended: saved.ended.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| write(io::Error::other(e)))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(write)?;
    }
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, text).map_err(write)?;
    fs::rename(&tmp, path).map_err(write)
}

/// A digest of everything a container is started with (process, root, limits, security,
/// network, supervision): a changed digest means the running process no longer matches the
/// manifest.
pub fn spec_hash(plan: &ContainerPlan) -> String {
    hex::encode(Sha256::digest(format!("{plan:?}").as_bytes()))
}

/// The host's process table, as far as adoption needs it.
pub trait Processes {
    /// The start time of process `pid`, `None` when there is none.
    fn start_time(&self, pid: i32) -> Option<u64>;
}

/// The real process table (`/proc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcFs;

impl Processes for ProcFs {
    fn start_time(&self, pid: i32) -> Option<u64> {
        crate::runtime::process_start_time(pid)
    }
}

/// What becomes of a recorded container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It is taken over as it runs.
    Adopt,
    /// Its process ended while berthd was down.
    Gone,
    /// Its pid now belongs to another process.
    PidReused,
    /// The manifest no longer declares it.
    Removed,
    /// Its plan changed (manifest or image).
    Changed,
    /// Its output pipes were not in the fd store (berthd ran without PID 1's store).
    NoPipes,
}

impl Verdict {
    /// Why it is not adopted, for the console.
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Adopt => "adopted",
            Verdict::Gone => "its process ended while berthd was down",
            Verdict::PidReused => "its pid belongs to another process now",
            Verdict::Removed => "the manifest no longer declares it",
            Verdict::Changed => "its spec changed",
            Verdict::NoPipes => "its output pipes were lost (no fd store)",
        }
    }

    /// Whether its process still runs and must be killed before it starts again.
    pub fn kills(self) -> bool {
        matches!(self, Verdict::Removed | Verdict::Changed | Verdict::NoPipes)
    }
}

/// Adopt or not: the process must be alive with the recorded start time, the manifest's plan
/// (`plan_spec`, its [`spec_hash`]) unchanged and the pipes back from the store.
pub fn decide(
    record: &Record,
    plan_spec: Option<&str>,
    has_pipes: bool,
    processes: &dyn Processes,
) -> Verdict {
    match processes.start_time(record.pid) {
        None => return Verdict::Gone,
        Some(t) if t != record.start_time => return Verdict::PidReused,
        Some(_) => {}
    }
    match plan_spec {
        None => Verdict::Removed,
        Some(spec) if spec != record.spec => Verdict::Changed,
        Some(_) if !has_pipes => Verdict::NoPipes,
        Some(_) => Verdict::Adopt,
    }
}

/// A container taken over from the previous berthd.
#[derive(Debug)]
pub struct Adoption {
    /// What the previous berthd recorded.
    pub record: Record,
    /// Read end of its stdout (from the fd store).
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
    /// A pidfd of its process, readable once it ends.
    pub pidfd: OwnedFd,
}

/// pidfd_open(2): a descriptor for process `pid` that works for non-children too.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pidfd_send_signal(2): signal exactly the process `pidfd` refers to, not a pid's new owner.
fn pidfd_kill(pidfd: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal takes a pidfd we own, a signal number, no siginfo and flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Wait up to `timeout` for the process of `pidfd` to end.
fn wait_ended(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms =
            PollTimeout::try_from(left.as_millis().min(10_000) as u64).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(n) if n > 0 => return true,
            Err(Errno::EINTR) => continue,
            _ if Instant::now() >= deadline => return false,
            _ => {}
        }
    }
}

/// Delete every file of the reaped directory: exits recorded before this berthd started
/// belong to no container it can adopt.
fn clear_reaped(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The exit code PID 1 recorded for orphan `pid` in `reaped_dir`, if any.
fn recorded_exit(reaped_dir: &Path, pid: i32) -> Option<i32> {
    fs::read_to_string(reaped_dir.join(pid.to_string()))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What [`recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The containers taken over.
    pub adopted: Vec<Adoption>,
    /// The containers that ended under the previous berthd (or while none ran) and whose plan
    /// is unchanged.
    pub ended: Vec<Ended>,
}

/// Take over what the previous berthd left running (see the module docs). Containers that are
/// not adopted are killed when still running, with a console warning saying why; the caller
/// starts them like the others, except those in [`Recovered::ended`].
pub fn recover(run_dir: &Path, store: Option<&mut FdStore>, plans: &[ContainerPlan]) -> Recovered {
    let saved = match load(&run_dir.join(STATE_FILE)) {
        Ok(saved) => saved,
        Err(e) => {
            console::emit(&Event::Warning {
                what: error_chain(&e),
            });
            Saved::default()
        }
    };
    let spec_of = |name: &str| plans.iter().find(|p| p.name == name).map(spec_hash);
    let mut ended: Vec<Ended> = saved
        .ended
        .into_iter()
        .filter(|e| spec_of(&e.name).as_deref() == Some(e.spec.as_str()))
        .collect();
    let reaped_dir = run_dir.join(REAPED_DIR);
    let records = saved.running;
    // Exits of recorded containers that ended while no berthd ran, before they are cleared.
    let exits: Vec<Option<i32>> = records
        .iter()
        .map(|r| recorded_exit(&reaped_dir, r.pid))
        .collect();
    clear_reaped(&reaped_dir);
    let mut entries = match store {
        Some(store) => store
            .rotate(|key| {
                records.iter().any(|r| {
                    r.name == key.container && r.pid == key.pid && r.start_time == key.start_time
                })
            })
            .unwrap_or_else(|e| {
                console::emit(&Event::Warning {
                    what: error_chain(&e),
                });
                Vec::new()
            }),
        None => Vec::new(),
    };
    let mut adopted = Vec::new();
    for (record, exit) in records.into_iter().zip(exits) {
        // Opened before the start time is checked: if the check passes, the pidfd is the
        // recorded process's.
        let pidfd = pidfd_open(record.pid).ok();
        let spec = spec_of(&record.name);
        let pipes = entries
            .iter()
            .position(|e| e.key.container == record.name && e.key.pid == record.pid);
        let verdict = match &pidfd {
            None => Verdict::Gone,
            Some(_) => decide(&record, spec.as_deref(), pipes.is_some(), &ProcFs),
        };
        match (verdict, pidfd, pipes) {
            (Verdict::Adopt, Some(pidfd), Some(index)) => {
                let entry = entries.swap_remove(index);
                adopted.push(Adoption {
                    record,
                    stdout: entry.stdout,
                    stderr: entry.stderr,
                    pidfd,
                });
            }
            (Verdict::Gone, _, _) if spec.as_deref() == Some(record.spec.as_str()) => {
                ended.push(Ended {
                    name: record.name,
                    spec: record.spec,
                    restarts: record.restarts,
                    outcome: Outcome::EndedWhileDown {
                        code: exit.unwrap_or(UNKNOWN_EXIT),
                    },
                });
            }
            (verdict, pidfd, _) => {
                console::emit(&Event::Warning {
                    what: format!(
                        "container={}: pid={} of the previous berthd is not adopted: {}; it is started again",
                        record.name,
                        record.pid,
                        verdict.reason()
                    ),
                });
                if let (true, Some(pidfd)) = (verdict.kills(), pidfd) {
                    if pidfd_kill(&pidfd).is_ok() && !wait_ended(&pidfd, KILL_WAIT) {
                        console::emit(&Event::Error {
                            what: format!(
                                "container={}: pid={} survived SIGKILL",
                                record.name, record.pid
                            ),
                        });
                    }
                }
            }
        }
    }
    Recovered { adopted, ended }
}

/// An adopted container being watched.
#[derive(Debug)]
struct Watched {
    pid: Pid,
    pidfd: OwnedFd,
    /// When its pidfd said it ended.
    ended: Option<Instant>,
}

/// The adopted containers, which are PID 1's children, not berthd's: their end is seen on
/// their pidfd and their exit code read from the file PID 1 wrote when it reaped them.
#[derive(Debug, Default)]
pub struct Orphans {
    dir: PathBuf,
    watched: Vec<Watched>,
}

impl Orphans {
    /// Watch for exits recorded in `reaped_dir`.
    pub fn new(reaped_dir: PathBuf) -> Orphans {
        Orphans {
            dir: reaped_dir,
            watched: Vec::new(),
        }
    }

    /// Watch the adopted process `pid`.
    pub fn watch(&mut self, pid: Pid, pidfd: OwnedFd) {
        self.watched.push(Watched {
            pid,
            pidfd,
            ended: None,
        });
    }

    /// The watched processes that ended, with their exit codes (without blocking). A process
    /// whose code PID 1 has not written yet is reported on a later call, or with
    /// [`UNKNOWN_EXIT`] after a short wait.
    pub fn reap(&mut self, now: Instant) -> Vec<(Pid, i32)> {
        if self.watched.is_empty() {
            return Vec::new();
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = self
                .watched
                .iter()
                .map(|w| PollFd::new(w.pidfd.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(n) if n > 0 => fds
                    .iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect(),
                _ => vec![false; fds.len()],
            }
        };
        for (w, ready) in self.watched.iter_mut().zip(ready) {
            if ready && w.ended.is_none() {
                w.ended = Some(now);
            }
        }
        let mut exits = Vec::new();
        let dir = self.dir.clone();
        self.watched.retain(|w| {
            let Some(ended) = w.ended else { return true };
            match recorded_exit(&dir, w.pid.as_raw()) {
                Some(code) => {
                    let _ = fs::remove_file(dir.join(w.pid.as_raw().to_string()));
                    exits.push((w.pid, code));
                    false
                }
                None if now.saturating_duration_since(ended) >= STATUS_WAIT => {
                    exits.push((w.pid, UNKNOWN_EXIT));
                    false
                }
                None => true,
            }
        });
        exits
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct FakeProcs(BTreeMap<i32, u64>);

    impl Processes for FakeProcs {
        fn start_time(&self, pid: i32) -> Option<u64> {
            self.0.get(&pid).copied()
        }
    }

    fn record(name: &str, pid: i32, start_time: u64, spec: &str) -> Record {
        Record {
            name: name.into(),
            pid,
            start_time,
            spec: spec.into(),
            restarts: 2,
            started_ms: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn state_file_round_trips_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run").join(STATE_FILE);
        assert_eq!(load(&path).unwrap(), Saved::default());
        let saved = Saved {
            running: vec![record("web", 10, 500, "aa"), record("db", 11, 501, "bb")],
            ended: vec![
                Ended {
                    name: "migrate".into(),
                    spec: "cc".into(),
                    restarts: 0,
                    outcome: Outcome::Exited {
                        code: 0,
                        oom: false,
                    },
                },
                Ended {
                    name: "debug".into(),
                    spec: "dd".into(),
                    restarts: 1,
                    outcome: Outcome::Stopped { code: Some(143) },
                },
            ],
        };
        save(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap(), saved);
        save(&path, &Saved::default()).unwrap();
        assert_eq!(load(&path).unwrap(), Saved::default());
        // A file without `ended` (nothing had ended) still loads.
        fs::write(&path, "{\"version\": 1, \"containers\": []}").unwrap();
        assert_eq!(load(&path).unwrap(), Saved::default());
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
        fs::write(&path, "{\"version\": 9, \"containers\": []}").unwrap();
        assert!(matches!(load(&path), Err(AdoptError::Parse { .. })));
        fs::write(&path, "garbage").unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("not a berthd runtime state file"));
    }

    #[test]
    fn adopts_only_a_live_unchanged_process_with_its_pipes() {
        let procs = FakeProcs(BTreeMap::from([(10, 500), (11, 999)]));
        let web = record("web", 10, 500, "aa");
        assert_eq!(decide(&web, Some("aa"), true, &procs), Verdict::Adopt);
        assert_eq!(decide(&web, Some("ab"), true, &procs), Verdict::Changed);
        assert_eq!(decide(&web, None, true, &procs), Verdict::Removed);
        assert_eq!(decide(&web, Some("aa"), false, &procs), Verdict::NoPipes);
        // Pid 11 was reused by another process; pid 12 is gone.
        let reused = record("db", 11, 501, "bb");
        assert_eq!(
            decide(&reused, Some("bb"), true, &procs),
            Verdict::PidReused
        );
        let gone = record("db", 12, 501, "bb");
        assert_eq!(decide(&gone, Some("bb"), true, &procs), Verdict::Gone);
        // Only a process that is still the container's own is killed.
        assert!(Verdict::Changed.kills() && Verdict::Removed.kills() && Verdict::NoPipes.kills());
        assert!(!Verdict::Gone.kills() && !Verdict::PidReused.kills() && !Verdict::Adopt.kills());
    }

    #[test]
    fn an_ended_orphan_reports_the_code_pid1_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(REAPED_DIR);
        fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut orphans = Orphans::new(dir.clone());
        orphans.watch(Pid::from_raw(pid), pidfd_open(pid).unwrap());
        let start = Instant::now();
        assert!(orphans.reap(start).is_empty());
        // Wait for it to end (the pidfd turns readable before anyone reaps it).
        let mut child = child;
        let status = child.wait().unwrap();
        assert!(status.success());
        // PID 1 has not written the code yet: nothing is reported.
        assert!(orphans.reap(start).is_empty());
        fs::write(dir.join(pid.to_string()), "137\n").unwrap();
        assert_eq!(orphans.reap(start), vec![(Pid::from_raw(pid), 137)]);
        assert!(!dir.join(pid.to_string()).exists());
        assert!(orphans.reap(start).is_empty());
    }

    #[test]
    fn an_orphan_without_a_recorded_code_ends_unknown_after_a_while() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let mut orphans = Orphans::new(tmp.path().to_path_buf());
        orphans.watch(Pid::from_raw(pid), pidfd_open(pid).unwrap());
        child.wait().unwrap();
        let now = Instant::now();
        assert!(orphans.reap(now).is_empty());
        assert_eq!(
            orphans.reap(now + STATUS_WAIT),
            vec![(Pid::from_raw(pid), UNKNOWN_EXIT)]
        );
    }
}
