//! End-to-end host test of the `berthd` binary: manifest -> store import -> containers on the
//! console -> SIGTERM shutdown, and a rejected manifest leaving berthd idle.
//!
//! Needs root and a static busybox at /bin/busybox (`apt-get install busybox-static`). berthd
//! runs in its own UTS and network namespaces so its hostname, bridge and NAT rules do not
//! touch this host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use berth_agent::oci::{write_layout, LayoutImage};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn busybox_rootfs(dir: &Path) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "this test needs a static busybox at /bin/busybox to build a container image: \
         install it with `apt-get install -y busybox-static`"
    );
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "hostname", "pwd", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

struct Berthd {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Berthd {
    fn start(manifest: &Path, state: &Path) -> Berthd {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berthd"));
        cmd.arg("--manifest")
            .arg(manifest)
            .arg("--state-dir")
            .arg(state)
            .arg("--run-dir")
            .arg(state.join("run"))
            .args(["--stop-grace", "0.5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: unshare is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Berthd {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait for a line matching `pred`, keeping every line seen.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line {what} on berthd's console; saw:\n{}",
            self.seen.join("\n")
        );
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// SIGTERM, then wait for the exit (SIGKILL after 20 s).
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    fn terminate(mut self) -> Vec<String> {
        let status = self.stop();
        let status = status.expect("berthd did not exit within 20 s of SIGTERM");
        assert!(status.success(), "berthd exited with {status}");
        self.seen.extend(self.lines.try_iter());
        // Lines still in flight from the reader thread.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Berthd {
    /// A failing test must not leave berthd (and its containers) running.
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn berthd_runs_the_manifest_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    write_layout(
        &rootfs,
        &tmp.path().join("images/busybox"),
        &LayoutImage {
            entrypoint: vec![],
            cmd: vec!["/bin/sh".into()],
            env: vec!["FROM_IMAGE=img".into()],
            working_dir: None,
            ref_name: Some("latest".into()),
        },
    )
    .unwrap();
    let manifest = tmp.path().join("manifest.toml");
    fs::write(
        &manifest,
        r#"version = 1

[host]
hostname = "e2e-host"

[images]
busybox = { source = "oci-layout:images/busybox" }

[containers.broken]
image = "busybox"
command = ["/bin/nope"]

[containers.hello]
image = "busybox"
command = ["/bin/sh", "-c", "echo $$ $GREETING $FROM_IMAGE; hostname; pwd; printf partial"]
env = { GREETING = "hi" }
workdir = "/srv"
hostname = "hello-box"

[containers.sleeper]
image = "busybox"
command = ["/bin/sleep", "1000"]
"#,
    )
    .unwrap();
    let state = tmp.path().join("state");
    let host_name = nix::unistd::gethostname().unwrap();

    let mut berthd = Berthd::start(&manifest, &state);
    berthd.wait_for("agent started", |l| l == "berth: agent started");
    berthd.wait_for("ready", |l| l == "berth: ready containers=2/3");
    berthd.wait_for("hello exit", |l| {
        l == "berth: container=hello state=exited code=0"
    });
    let sleeper = berthd
        .seen
        .iter()
        .find(|l| l.starts_with("berth: container=sleeper state=running pid="))
        .cloned()
        .unwrap_or_else(|| panic!("sleeper never ran:\n{}", berthd.seen.join("\n")));
    // The machine hostname is set in berthd's (UTS) namespace, never on this host.
    let uts = Command::new("nsenter")
        .args(["-t", &berthd.pid().to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&uts.stdout).trim(), "e2e-host");
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name);

    let seen = berthd.terminate();
    let index = |line: &str| {
        seen.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("missing {line:?} in:\n{}", seen.join("\n")))
    };
    let err = seen
        .iter()
        .find(|l| l.starts_with("berth: error: container=broken: exec \"/bin/nope\""))
        .unwrap_or_else(|| panic!("no exec error for broken:\n{}", seen.join("\n")));
    assert!(err.contains("No such file or directory"), "{err}");
    let broken_exit = index("berth: container=broken state=exited code=127");
    let hello_lines = [
        "hello | 1 hi img",
        "hello | hello-box",
        "hello | /srv",
        "hello | partial",
    ];
    let positions: Vec<usize> = hello_lines.iter().map(|l| index(l)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{seen:#?}");
    let hello_running = seen
        .iter()
        .position(|l| l.starts_with("berth: container=hello state=running pid="))
        .unwrap();
    let hello_exit = index("berth: container=hello state=exited code=0");
    assert!(broken_exit < hello_running);
    assert!(
        hello_running < positions[0] && positions[3] < hello_exit,
        "{seen:#?}"
    );
    let sleeper_exit = index("berth: container=sleeper state=exited code=137");
    assert!(index(&sleeper) < sleeper_exit);
    let sleeper_pid = sleeper.rsplit('=').next().unwrap();
    assert!(!Path::new(&format!("/proc/{sleeper_pid}")).exists());

    // Nothing stays mounted below the state directory.
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&*state.to_string_lossy()),
        "{mountinfo}"
    );
}

#[test]
fn a_rejected_manifest_starts_nothing_and_berthd_stays_up() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("manifest.toml");
    fs::write(
        &manifest,
        "version = 1\n\n[host]\nhostname = \"x\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let mut berthd = Berthd::start(&manifest, &tmp.path().join("state"));
    let err = berthd.wait_for("error", |l| l.starts_with("berth: error: "));
    let expected_prefix = format!("berth: error: {}:5:", manifest.display());
    assert!(err.starts_with(&expected_prefix), "{err}");
    assert!(err.contains("colour"), "{err}");
    berthd.wait_for("rejected", |l| {
        l == "berth: manifest rejected, no containers started"
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(berthd.child.try_wait().unwrap().is_none(), "berthd exited");
    let seen = berthd.terminate();
    assert!(!seen
        .iter()
        .any(|l| l.contains("state=running") || l.starts_with("berth: ready")));
}
