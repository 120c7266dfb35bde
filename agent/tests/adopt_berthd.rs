//! Host test of berthd re-adopting its containers after `kill -9`, with this test process in
//! PID 1's role: it holds the fd store socket pair, is the child subreaper the orphaned
//! containers are re-parented to, records their exit codes in `RUN/reaped/PID` and starts
//! berthd again. A changed spec is not adopted: that container is killed and started anew; a
//! container that exited and stays down is not run again.
//!
//! Needs root and a static busybox at /bin/busybox. The test thread moves to new UTS and
//! network namespaces first, so every berthd it starts shares them (its bridge and NAT table
//! stay there); no cgroups. This file holds a single test: being a subreaper and reaping
//! every child is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_agent::oci::{write_layout, LayoutImage};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

const MANIFEST: &str = r#"version = 1

[images]
busybox = { source = "oci-layout:images/busybox" }

[containers.ticker]
image = "busybox"
command = ["/bin/sh", "-c", "i=0; while true; do echo count $i; i=$((i+1)); sleep 0.2; done"]
restart = "always"
ports = ["8080:80"]

[containers.other]
image = "busybox"
command = ["/bin/sh", "-c", "trap 'exit 3' TERM; while true; do sleep 1; done"]
"#;

struct Pid1 {
    dir: PathBuf,
    store: (OwnedFd, OwnedFd),
    agent: Option<Pid>,
}

impl Pid1 {
    fn spawn(&mut self) {
        let (send, receive) = (self.store.0.as_raw_fd(), self.store.1.as_raw_fd());
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("console.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berthd"));
        cmd.arg("--manifest")
            .arg(self.dir.join("manifest.toml"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--api-socket")
            .arg(self.dir.join("api.sock"))
            .args(["--cgroup-root", "/nonexistent", "--config-sources", "off"])
            .args(["--stop-grace", "1"])
            .env("BERTH_FDSTORE", format!("{send},{receive}"))
            .stdout(Stdio::from(console.try_clone().unwrap()))
            .stderr(Stdio::from(console));
        // SAFETY: fcntl is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for fd in [send, receive] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        // Reaped with waitpid(-1) in `reap`, like PID 1 does.
        #[allow(clippy::zombie_processes)]
        let child = cmd.spawn().unwrap();
        self.agent = Some(Pid::from_raw(child.id() as i32));
    }

    /// Reap: record orphans' codes, note the agent's exit. Returns whether the agent exited.
    fn reap(&mut self) -> bool {
        let mut agent_exited = false;
        loop {
            let (pid, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => return agent_exited,
                Ok(_) => continue,
            };
            if Some(pid) == self.agent {
                self.agent = None;
                agent_exited = true;
            } else {
                let dir = self.dir.join("run/reaped");
                fs::create_dir_all(&dir).unwrap();
                let tmp = dir.join(format!(".{pid}.tmp"));
                fs::write(&tmp, format!("{code}\n")).unwrap();
                fs::rename(&tmp, dir.join(pid.to_string())).unwrap();
            }
        }
    }

    fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// Reap while waiting for the console to contain `pattern` `times` times.
    fn wait_for(&mut self, pattern: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.console().matches(pattern).count() < times {
            self.reap();
            assert!(
                Instant::now() < deadline,
                "no {pattern:?} (x{times}) on berthd's console:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_agent(&mut self) {
        let agent = self.agent.unwrap();
        kill(agent, Signal::SIGKILL).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.reap() {
            assert!(Instant::now() < deadline, "berthd did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn counts(&self) -> BTreeSet<u64> {
        fs::read_to_string(self.dir.join("state/containers/ticker/log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit_once("count ").and_then(|(_, n)| n.parse().ok()))
            .collect()
    }

    fn wait_counts_beyond(&mut self, above: u64) -> BTreeSet<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.reap();
            let counts = self.counts();
            if counts.last().is_some_and(|&m| m > above) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "ticker's log stopped at {counts:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        if let Some(agent) = self.agent {
            let _ = kill(agent, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.agent.is_some() && Instant::now() < deadline {
                self.reap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn running_pid(console: &str, name: &str) -> i32 {
    let needle = format!("berth: container={name} state=running pid=");
    let line = console
        .lines()
        .rfind(|l| l.starts_with(&needle))
        .unwrap_or_else(|| panic!("{name} never ran:\n{console}"));
    line[needle.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn layout(dir: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "this test needs a static busybox at /bin/busybox: apt-get install -y busybox-static"
    );
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    write_layout(
        &root,
        &dir.join("images/busybox"),
        &LayoutImage {
            entrypoint: vec![],
            cmd: vec!["/bin/sh".into()],
            env: vec![],
            working_dir: None,
            ref_name: Some("latest".into()),
        },
    )
    .unwrap();
}

#[test]
fn killed_berthd_readopts_running_containers_and_replaces_changed_ones() {
    nix::sched::unshare(
        nix::sched::CloneFlags::CLONE_NEWNET | nix::sched::CloneFlags::CLONE_NEWUTS,
    )
    .unwrap();
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    layout(tmp.path());
    fs::write(tmp.path().join("manifest.toml"), MANIFEST).unwrap();
    let store = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let mut pid1 = Pid1 {
        dir: tmp.path().to_path_buf(),
        store,
        agent: None,
    };
    pid1.spawn();
    pid1.wait_for("berth: ready containers=2/2", 1);
    let console = pid1.console();
    let (ticker, other) = (
        running_pid(&console, "ticker"),
        running_pid(&console, "other"),
    );
    pid1.wait_counts_beyond(3);

    // kill -9: both are adopted with their pids, the log goes on without a gap.
    pid1.kill_agent();
    let last = *pid1.counts().last().unwrap();
    pid1.spawn();
    pid1.wait_for("berth: ready containers=2/2", 2);
    let console = pid1.console();
    assert!(console.contains(&format!(
        "berth: container=ticker state=running pid={ticker} adopted"
    )));
    assert!(console.contains(&format!(
        "berth: container=other state=running pid={other} adopted"
    )));
    assert_eq!(console.matches("container=ticker state=created").count(), 1);
    let counts = pid1.wait_counts_beyond(last + 5);
    let max = *counts.last().unwrap();
    let missing: Vec<u64> = (0..=max).filter(|n| !counts.contains(n)).collect();
    assert!(missing.len() <= 1, "missing from the log: {missing:?}");
    let state = fs::read_to_string(tmp.path().join("run/containers.json")).unwrap();
    assert!(state.contains(&format!("\"pid\": {ticker}")), "{state}");

    // An adopted container that ends is seen through its pidfd with the code PID 1 recorded.
    kill(Pid::from_raw(other), Signal::SIGTERM).unwrap();
    pid1.wait_for("berth: container=other state=exited code=3", 1);

    // A changed spec is not adopted: the old process is killed and a new one started. The
    // exited container (restart = "no") is not run again by the new berthd.
    pid1.kill_agent();
    fs::write(
        tmp.path().join("manifest.toml"),
        MANIFEST.replace("sleep 0.2", "sleep 0.3"),
    )
    .unwrap();
    pid1.spawn();
    pid1.wait_for("berth: ready containers=1/2", 1);
    let console = pid1.console();
    assert_eq!(console.matches("container=other state=created").count(), 1);
    assert!(console.contains(&format!(
        "berth: warning: container=ticker: pid={ticker} of the previous berthd is not adopted: its spec changed; it is started again"
    )));
    assert_ne!(running_pid(&console, "ticker"), ticker);
    pid1.reap();
    assert!(!Path::new(&format!("/proc/{ticker}")).exists());
}
