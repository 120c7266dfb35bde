//! End-to-end host test of the `berthd` binary: manifest -> store import -> containers on the
//! console -> SIGTERM shutdown, a rejected manifest leaving berthd idle, and `berthctl`
//! driving a live berthd through its API (restarts, logs, stop/start, events, apply).
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
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

mod support;

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

/// The API socket of a test berthd: next to its state directory, never the host's.
fn api_socket(state: &Path) -> PathBuf {
    state.parent().unwrap().join("api.sock")
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
            .arg("--api-socket")
            .arg(api_socket(state))
            .args(["--remote-api-address", "127.0.0.1"])
            .arg("--run-dir")
            .arg(state.join("run"))
            .args(["--stop-grace", "0.5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        support::own_namespaces(&mut cmd, true);
        let mut child = cmd.spawn().unwrap();
        let lines = support::console_lines(&mut child);
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

    // The same lines are in hello's log file, timestamped and tagged.
    let log = fs::read_to_string(state.join("containers/hello/log")).unwrap();
    let logged: Vec<&str> = log.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    assert_eq!(
        logged,
        [
            "stdout 1 hi img",
            "stdout hello-box",
            "stdout /srv",
            "stdout partial"
        ],
        "{log}"
    );

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
    // The built-in manifest is the only source here: refused, located, and nothing else.
    let err = berthd.wait_for("error", |l| l.starts_with("berth: error: "));
    let expected_prefix = format!("berth: error: {}:5:", manifest.display());
    assert!(err.starts_with(&expected_prefix), "{err}");
    assert!(err.contains("colour"), "{err}");
    berthd.wait_for("rejected", |l| {
        l == "berth: manifest rejected, no containers started"
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(berthd.child.try_wait().unwrap().is_none(), "berthd exited");
    // Its local API still answers, and a fixed manifest can be applied.
    let state = tmp.path().join("state");
    berthd.wait_for("api", |l| l.starts_with("berth: api listening on /"));
    let (code, out, err) = berthctl(&state, &["ps"]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "host: ok\nNAME  STATE  HEALTH  PID  IP  PORTS  UPTIME  RESTARTS\n"
        ),
        "{err}"
    );
    let fixed = tmp.path().join("fixed.toml");
    fs::write(&fixed, "version = 1\n\n[host]\nhostname = \"x\"\n").unwrap();
    let (code, out, err) = berthctl(&state, &["apply", fixed.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "no changes\n"), "{err}");
    assert!(state.join("manifest.toml").is_file());
    let seen = berthd.terminate();
    assert!(!seen
        .iter()
        .any(|l| l.contains("state=running") || l.starts_with("berth: ready")));
}

/// Run berthctl against the test berthd's socket: (exit code, stdout, stderr).
fn berthctl(state: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .arg("--socket")
        .arg(api_socket(state))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ps(state: &Path) -> serde_json::Value {
    let (code, out, err) = berthctl(state, &["ps", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn container<'a>(ps: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    ps["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

/// Poll `ps` until `pred` holds (20 s bound).
fn wait_ps(
    state: &Path,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = ps(state);
        if pred(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "never {what}: {now:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const LIVE: &str = r#"version = 1

[host]
api_port = API_PORT
api_token = "test-token-0123456789"

[images]
busybox = { source = "oci-layout:images/busybox" }

[containers.web]
image = "busybox"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
restart = "always"

[containers.crash]
image = "busybox"
command = ["/bin/sh", "-c", "echo boom >&2; exit 3"]
restart = "on-failure"
max_restarts = 2

[containers.app]
image = "busybox"
command = ["/bin/sleep", "1000"]
depends_on = { web = "healthy", crash = "completed" }

[containers.db]
image = "busybox"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1; echo > /ready; while true; do sleep 1; done"]
healthcheck = { type = "exec", command = ["/bin/sh", "-c", "test -f /ready"], interval = "300ms" }

[containers.api]
image = "busybox"
command = ["/bin/sleep", "1000"]
depends_on = { db = "healthy" }
"#;

#[test]
fn berthctl_drives_a_live_berthd() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    write_layout(
        &rootfs,
        &tmp.path().join("images/busybox"),
        &LayoutImage {
            entrypoint: vec![],
            cmd: vec!["/bin/sh".into()],
            env: vec![],
            working_dir: None,
            ref_name: Some("latest".into()),
        },
    )
    .unwrap();
    let manifest = tmp.path().join("manifest.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let live = LIVE.replace("API_PORT", &port.to_string());
    fs::write(&manifest, &live).unwrap();
    let state = tmp.path().join("state");
    let mut berthd = Berthd::start(&manifest, &state);
    berthd.wait_for("api", |l| l.starts_with("berth: api listening on /"));
    berthd.wait_for("remote api", |l| {
        l == format!("berth: api listening on tcp 127.0.0.1:{port} (token required)")
    });
    let mode = fs::metadata(api_socket(&state)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // crash restarts twice with growing delays, then gives up; app stays blocked behind it.
    let now = wait_ps(&state, "crash failed", |p| {
        container(p, "crash").is_some_and(|c| c["state"] == "failed")
    });
    let crash = container(&now, "crash").unwrap();
    assert_eq!(crash["restarts"], 2);
    assert_eq!(crash["exit_code"], 3);
    let app = container(&now, "app").unwrap();
    assert_eq!(app["state"], "pending");
    assert!(
        app["waiting"]
            .as_str()
            .unwrap()
            .contains("blocked: crash cannot become completed (exited code=3)"),
        "{app}"
    );
    let (code, out, _) = berthctl(&state, &["events", "--json"]);
    assert_eq!(code, 0);
    let delays: Vec<u64> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["container"] == "crash" && e["state"] == "restarting")
        .map(|e| e["delay_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(delays, [100, 200]);
    let (code, table, _) = berthctl(&state, &["ps"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("crash") && table.contains("failed (3)"),
        "{table}"
    );
    berthd.wait_for("failed line", |l| {
        l == "berth: container=crash state=failed restarts=2 reason=max-restarts"
    });

    // db turns healthy through its exec check (run inside it); only then does api start.
    let now = wait_ps(&state, "api running", |p| {
        container(p, "api").is_some_and(|c| c["state"] == "running")
    });
    assert_eq!(container(&now, "db").unwrap()["health"], "healthy");
    let (_, out, _) = berthctl(&state, &["events", "--json"]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seq = |container: &str, state: &str| {
        events
            .iter()
            .find(|e| e["container"] == container && e["state"] == state)
            .unwrap_or_else(|| panic!("no {container} {state} in {out}"))["seq"]
            .as_u64()
            .unwrap()
    };
    assert!(seq("api", "pending") < seq("db", "healthy"));
    assert!(seq("db", "healthy") < seq("api", "running"));

    // Logs: tail, and follow while web keeps printing.
    let (code, out, _) = berthctl(&state, &["logs", "--tail", "2", "web"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l.contains(" stdout tick ")), "{out}");
    let (_, out, _) = berthctl(&state, &["logs", "crash"]);
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" stderr boom")).count(),
        3,
        "{out}"
    );
    let mut follow = Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .arg("--socket")
        .arg(api_socket(&state))
        .args(["logs", "-f", "--tail", "0", "web"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(follow.stdout.take().unwrap());
    let mut followed = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        followed.push(line);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let numbers: Vec<u64> = followed
        .iter()
        .map(|l| l.trim().rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{followed:?}");
    assert!(numbers[0] > 2, "followed lines are new ones: {followed:?}");

    // exec on the host: inside web's namespaces, its exit code passed through.
    let (code, out, err) = berthctl(
        &state,
        &[
            "exec",
            "web",
            "--",
            "/bin/sh",
            "-c",
            "hostname; pwd; test -f /ready || echo not-db; exit 7",
        ],
    );
    assert_eq!(code, 7, "{err}");
    assert_eq!(out, "web\n/\nnot-db\n");
    // exec and ps through the remote API with the token; a wrong token is refused.
    // berthd has its own network namespace: the remote client joins it.
    let netns = fs::File::open(format!("/proc/{}/ns/net", berthd.child.id())).unwrap();
    let remote = |token: &str, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berthctl"));
        cmd.args(["--host", &format!("127.0.0.1:{port}"), "--token", token])
            .args(args);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&netns);
        // SAFETY: setns is async-signal-safe; `netns` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = remote(
        "test-token-0123456789",
        &[
            "exec",
            "db",
            "--",
            "/bin/sh",
            "-c",
            "test -f /ready && hostname",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "db\n"), "{err}");
    let (code, out, _) = remote("test-token-0123456789", &["ps"]);
    assert_eq!(code, 0);
    assert!(out.contains("web") && out.contains("running"), "{out}");
    let (code, _, err) = remote("wrong-token-0123456789", &["ps"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing or wrong token"), "{err}");

    // stop / start / inspect; a missing container is exit code 4.
    let web_pid = container(&ps(&state), "web").unwrap()["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(berthctl(&state, &["stop", "web"]).0, 0);
    wait_ps(&state, "web stopped", |p| {
        container(p, "web").unwrap()["state"] == "stopped"
    });
    assert_eq!(berthctl(&state, &["start", "web"]).0, 0);
    let now = wait_ps(&state, "web running", |p| {
        container(p, "web").unwrap()["state"] == "running"
    });
    let web_pid2 = container(&now, "web").unwrap()["pid"].as_i64().unwrap();
    assert_ne!(web_pid, web_pid2);
    let (code, out, _) = berthctl(&state, &["inspect", "web"]);
    assert_eq!(code, 0);
    assert!(out.contains("policy always"), "{out}");
    let (code, _, err) = berthctl(&state, &["inspect", "nope"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no container named \"nope\""), "{err}");

    // diff and apply: web unchanged (same pid), crash changed, app removed, extra added.
    let next = live
        .replace("echo boom >&2; exit 3", "echo fixed")
        .replace(
            "[containers.app]\nimage = \"busybox\"\ncommand = [\"/bin/sleep\", \"1000\"]\ndepends_on = { web = \"healthy\", crash = \"completed\" }\n",
            "[containers.extra]\nimage = \"busybox\"\ncommand = [\"/bin/sleep\", \"1000\"]\ndepends_on = { crash = \"completed\" }\n",
        );
    assert!(next.contains("extra") && !next.contains("containers.app"));
    let next_file = tmp.path().join("next.toml");
    fs::write(&next_file, &next).unwrap();
    let (code, out, err) = berthctl(&state, &["diff", next_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "+ extra (add)\n~ crash (replace)\n- app (remove)\n= api (keep)\n= db (keep)\n= web (keep)\n3 changes to apply\n"
    );
    assert_eq!(
        container(&ps(&state), "app").unwrap()["state"],
        "pending",
        "diff changed nothing"
    );
    let bad_file = tmp.path().join("bad.toml");
    fs::write(
        &bad_file,
        next.replace("restart = \"always\"", "restart = \"sometimes\""),
    )
    .unwrap();
    // The boot saved the manifest it ran as the last good one; a refused apply keeps it.
    let last_good = fs::read_to_string(state.join("manifest.toml")).ok();
    let (code, _, err) = berthctl(&state, &["apply", bad_file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{}:13:11: container \"web\": unknown restart policy",
            bad_file.display()
        )),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(state.join("manifest.toml")).ok(),
        last_good
    );

    let (code, out, err) = berthctl(&state, &["apply", next_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("applied 3 changes\n"), "{out}");
    let now = wait_ps(&state, "extra running and app gone", |p| {
        container(p, "app").is_none()
            && container(p, "extra").is_some_and(|c| c["state"] == "running")
    });
    assert_eq!(
        container(&now, "web").unwrap()["pid"].as_i64(),
        Some(web_pid2)
    );
    assert_eq!(container(&now, "crash").unwrap()["exit_code"], 0);
    assert_eq!(
        fs::read_to_string(state.join("manifest.toml")).unwrap(),
        next
    );
    assert!(!state.join("containers/app").exists());

    // The applied manifest is the one used at the next start.
    drop(berthd);
    let mut again = Berthd::start(&manifest, &state);
    again.wait_for("extra runs", |l| {
        l.starts_with("berth: container=extra state=running")
    });
    let seen = again.terminate();
    assert!(
        !seen.iter().any(|l| l.contains("container=app")),
        "{seen:#?}"
    );
}
