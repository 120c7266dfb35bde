//! Host integration test of container networking through the real `berthd`: containers reach
//! each other by name, a published port answers from outside the host and from the host
//! itself, egress is masqueraded, and a stopped container / a stopped berthd leave no
//! interface, namespace or NAT rule behind.
//!
//! Needs root and a static busybox at /bin/busybox. berthd runs in network and UTS namespaces
//! of its own (its "host"); the "outside world" is another namespace this test creates, joined
//! to berthd's by a veth pair. The machine's own interfaces are never touched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

mod support;

use berth_agent::net::{Firewall, NetlinkClient, NfTables, RtNetlink};
use berth_agent::oci::{write_layout, LayoutImage};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn busybox_image(dir: &Path) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "this test needs a static busybox at /bin/busybox: apt-get install -y busybox-static"
    );
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "mkdir", "httpd", "wget", "ping", "seq", "hostname",
        "timeout",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let layout = dir.join("images/busybox");
    write_layout(
        &root,
        &layout,
        &LayoutImage {
            entrypoint: vec![],
            cmd: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: None,
            ref_name: Some("latest".into()),
        },
    )
    .unwrap();
    layout
}

const MANIFEST: &str = r#"
version = 1

[images]
busybox = { source = "oci-layout:images/busybox" }

[containers.server]
image = "busybox"
ports = ["8080:80"]
command = ["/bin/sh", "-c", "mkdir -p /www && echo hello-from-server > /www/index.html && trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]

[containers.client]
image = "busybox"
command = ["/bin/sh", "-c", '''
for i in $(seq 1 100); do
  if out=$(timeout 2 wget -q -O - http://server/); then echo "by-name: $out"; break; fi
  sleep 0.2
done
ping -c 1 -W 2 server >/dev/null && echo "ping-ok"
echo "hosts: $(cat /etc/hosts | grep -c server)"
''']

[containers.egress]
image = "busybox"
command = ["/bin/sh", "-c", '''
trap 'exit 0' TERM
for i in $(seq 1 300); do
  if out=$(timeout 2 wget -q -O - http://192.168.250.2:8081/); then echo "egress: $out"; break; fi
  sleep 0.2
done
sleep 1000 & wait
''']
"#;

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
            .args(["--stop-grace", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        support::own_namespaces(&mut cmd, false);
        let mut child = cmd.spawn().unwrap();
        let lines = support::console_lines(&mut child);
        Berthd {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        if let Some(line) = self.seen.iter().find(|l| l.contains(what)) {
            return line.clone();
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {what:?} from berthd; saw:\n{}",
            self.seen.join("\n")
        );
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn stop(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A process killed when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `f` on a thread inside the network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &File, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.try_clone().unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A new network namespace, held open by the returned file.
fn new_netns() -> File {
    std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
        File::open("/proc/thread-self/ns/net").unwrap()
    })
    .join()
    .unwrap()
}

fn run(ns: &File, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    in_netns(ns, move || {
        let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

fn http_get(ns: &File, addr: &'static str) -> String {
    in_netns(ns, move || {
        let mut last = String::new();
        for _ in 0..50 {
            match std::net::TcpStream::connect(addr) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
                    let mut body = String::new();
                    let _ = s.read_to_string(&mut body);
                    return body;
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot connect to {addr}: {last}")
    })
}

fn links(ns: &File) -> Vec<String> {
    run(ns, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

#[test]
fn containers_talk_by_name_publish_ports_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    busybox_image(dir.path());
    let manifest = dir.path().join("manifest.toml");
    fs::write(&manifest, MANIFEST).unwrap();
    let state = dir.path().join("state");

    let mut berthd = Berthd::start(&manifest, &state);
    berthd.wait_for("berth: ready containers=3/3");
    // Keep berthd's namespace reachable after it exits, to check its teardown.
    let host = File::open(format!("/proc/{}/ns/net", berthd.pid())).unwrap();

    // The outside world: a namespace joined to berthd's by a veth pair, with a web server.
    let outside = new_netns();
    let outside_fd = format!("/proc/{}/fd/{}", std::process::id(), {
        use std::os::fd::AsRawFd;
        outside.as_raw_fd()
    });
    run(
        &host,
        &[
            "ip",
            "link",
            "add",
            "ext0",
            "type",
            "veth",
            "peer",
            "name",
            "ext1",
            "netns",
            &outside_fd,
        ],
    );
    run(
        &host,
        &["ip", "addr", "add", "192.168.250.1/24", "dev", "ext0"],
    );
    run(&host, &["ip", "link", "set", "ext0", "up"]);
    // On a berth machine PID 1 brings lo up; here the test plays PID 1.
    run(&host, &["ip", "link", "set", "lo", "up"]);
    run(
        &outside,
        &["ip", "addr", "add", "192.168.250.2/24", "dev", "ext1"],
    );
    run(&outside, &["ip", "link", "set", "ext1", "up"]);
    run(&outside, &["ip", "link", "set", "lo", "up"]);
    let www = dir.path().join("www");
    fs::create_dir_all(&www).unwrap();
    fs::write(www.join("index.html"), "hello-from-outside\n").unwrap();
    let www_arg = www.display().to_string();
    let outside_server = KillOnDrop(in_netns(&outside, move || {
        Command::new("/bin/busybox")
            .args(["httpd", "-f", "-p", "192.168.250.2:8081", "-h", &www_arg])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }));

    // By name, both ways of resolving.
    assert_eq!(
        berthd.wait_for("client | by-name:"),
        "client | by-name: hello-from-server"
    );
    berthd.wait_for("client | ping-ok");
    berthd.wait_for("client | hosts: 1");
    // Egress: the outside namespace has no route to the container subnet, so this answer
    // came back only because the request was masqueraded.
    assert_eq!(
        berthd.wait_for("egress | egress:"),
        "egress | egress: hello-from-outside"
    );
    // The published port from outside (prerouting DNAT) and from the host itself, on its
    // external address and on 127.0.0.1 (output DNAT).
    assert!(http_get(&outside, "192.168.250.1:8080").contains("hello-from-server"));
    assert!(http_get(&host, "192.168.250.1:8080").contains("hello-from-server"));
    assert!(http_get(&host, "127.0.0.1:8080").contains("hello-from-server"));

    // The client exited: its veth is gone, the others' remain.
    berthd.wait_for("container=client state=exited code=0");
    let addresses: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join("network/addresses.json")).unwrap()).unwrap();
    let client_ip: std::net::Ipv4Addr = addresses["containers"]["client"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let client_veth = berth_agent::net::veth_name(client_ip);
    let deadline = Instant::now() + Duration::from_secs(10);
    while links(&host).contains(&client_veth) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = links(&host);
    assert!(
        !now.contains(&client_veth),
        "{client_veth} left after the client exited: {now:?}"
    );
    assert_eq!(
        now.iter().filter(|l| l.starts_with("bv")).count(),
        2,
        "{now:?}"
    );
    assert!(now.contains(&"berth0".to_owned()));
    assert!(!state.join("run/netns/client").exists());

    // berthd stops: bridge, veths, namespaces and the NAT table are gone.
    assert!(berthd.stop(), "berthd did not exit cleanly");
    drop(outside_server);
    let left = links(&host);
    assert_eq!(left, ["lo", "ext0"], "interfaces left behind: {left:?}");
    let table = in_netns(&host, || NfTables::new().unwrap().exists().unwrap());
    assert!(!table, "the berth nftables table was left behind");
    assert!(fs::read_dir(state.join("run/netns"))
        .unwrap()
        .next()
        .is_none());
    let bridge = in_netns(&host, || {
        RtNetlink::new().unwrap().link_exists("berth0").unwrap()
    });
    assert!(!bridge);
}
