//! Host integration test of the agent's DHCP client against busybox `udhcpd`: two network
//! namespaces this test creates, joined by a veth pair; the server in one, the client (the
//! library's [`HostNet`], as berthd runs it) in the other. The lease is 20 s, so the test sees
//! the address, route, MTU and resolv.conf applied, a renewal, and, with the server gone, the
//! lease expire and the address removed.
//!
//! Needs root and a static busybox at /bin/busybox. The machine's own interfaces are never
//! touched: every link lives in the test's namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use berth_agent::manifest::HostNetwork;
use berth_agent::net::host::{HostEvent, HostNet, HostPaths};
use berth_agent::net::{NetlinkClient, RtNetlink};
use nix::sched::CloneFlags;

/// Upper bound for any single wait: generous, since TCG and loaded CI machines are slow.
const BOUND: Duration = Duration::from_secs(120);

/// Run `f` on a thread inside the namespace bound at `ns`.
fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(ns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// `ip ARGS` inside the namespace at `ns`.
fn ip(ns: &Path, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    in_netns(ns, move || {
        let out = Command::new("ip").args(&args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// The namespaces and the server; everything goes when it drops.
struct Rig {
    dir: tempfile::TempDir,
    server_ns: PathBuf,
    client_ns: PathBuf,
    udhcpd: Option<Child>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop_server();
        let mut host = RtNetlink::new().unwrap();
        let _ = host.delete_netns(&self.server_ns);
        let _ = host.delete_netns(&self.client_ns);
    }
}

impl Rig {
    fn new() -> Rig {
        assert!(
            Path::new("/bin/busybox").is_file(),
            "this test needs a static busybox at /bin/busybox: apt-get install -y busybox-static"
        );
        let dir = tempfile::tempdir().unwrap();
        let server_ns = dir.path().join("ns-server");
        let client_ns = dir.path().join("ns-client");
        let mut host = RtNetlink::new().unwrap();
        host.create_netns(&server_ns).unwrap();
        host.create_netns(&client_ns).unwrap();
        let mut server = RtNetlink::in_netns(&server_ns).unwrap();
        server.add_veth("srv0", "cli0", &client_ns).unwrap();
        server
            .add_address("srv0", "192.168.77.1".parse().unwrap(), 24)
            .unwrap();
        server.set_up("srv0").unwrap();
        server.set_up("lo").unwrap();
        let mut rig = Rig {
            dir,
            server_ns,
            client_ns,
            udhcpd: None,
        };
        rig.start_server();
        rig
    }

    fn start_server(&mut self) {
        let conf = self.dir.path().join("udhcpd.conf");
        let leases = self.dir.path().join("udhcpd.leases");
        std::fs::write(&leases, "").unwrap();
        std::fs::write(
            &conf,
            format!(
                "start 192.168.77.100\nend 192.168.77.110\ninterface srv0\nmax_leases 10\n\
                 lease_file {}\npidfile {}\n\
                 option subnet 255.255.255.0\noption router 192.168.77.1\n\
                 option dns 192.168.77.53\noption domain berth.test\noption mtu 1400\n\
                 option lease 20\n",
                leases.display(),
                self.dir.path().join("udhcpd.pid").display()
            ),
        )
        .unwrap();
        let ns = File::open(&self.server_ns).unwrap();
        let mut cmd = Command::new("/bin/busybox");
        cmd.args(["udhcpd", "-f", "-a", "100"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; `ns` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.udhcpd = Some(cmd.spawn().unwrap());
        drop(ns);
    }

    fn stop_server(&mut self) {
        if let Some(mut child) = self.udhcpd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the client on `cli0` in the client namespace.
    fn client(&self, resolv: &Path) -> (HostNet, Receiver<HostEvent>) {
        let (tx, rx) = mpsc::channel();
        let paths = HostPaths {
            resolv_conf: resolv.to_path_buf(),
        };
        let settings = HostNetwork {
            interface: Some("cli0".into()),
            ..HostNetwork::default()
        };
        let host = in_netns(&self.client_ns, move || {
            let netlink = RtNetlink::new().unwrap();
            HostNet::start(
                &settings,
                &paths,
                Box::new(netlink),
                Box::new(move |e: &HostEvent| {
                    let _ = tx.send(e.clone());
                }),
            )
            .unwrap()
        });
        (host, rx)
    }
}

/// The next event that `want` picks, skipping others (send failures are expected while the
/// server is gone).
fn next<T>(rx: &Receiver<HostEvent>, what: &str, want: impl Fn(&HostEvent) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .unwrap_or_else(|| panic!("no {what} event"));
        let event = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no {what} event: {e}"));
        if let Some(found) = want(&event) {
            return found;
        }
    }
}

#[test]
fn the_agent_leases_renews_and_loses_an_address_from_udhcpd() {
    let mut rig = Rig::new();
    let resolv = rig.dir.path().join("etc/resolv.conf");
    let (host, events) = rig.client(&resolv);

    let lease = next(&events, "configured", |e| match e {
        HostEvent::Configured(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(lease.nic, "cli0");
    let last = lease.address.octets()[3];
    assert!(
        lease.address.octets()[..3] == [192, 168, 77] && (100..=110).contains(&last),
        "{lease:?}"
    );
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.gateway, Some("192.168.77.1".parse().unwrap()));
    assert_eq!(
        lease.dns,
        ["192.168.77.53".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(lease.mtu, 1400);
    assert_eq!(lease.lease, Some(Duration::from_secs(20)));
    assert_eq!(host.current(), Some(lease.clone()));

    // What the kernel of the client namespace has now.
    let addr = ip(&rig.client_ns, &["-4", "addr", "show", "dev", "cli0"]);
    assert!(
        addr.contains(&format!("inet {}/24", lease.address)),
        "{addr}"
    );
    assert!(addr.contains("mtu 1400"), "{addr}");
    let route = ip(&rig.client_ns, &["-4", "route", "show", "default"]);
    assert!(
        route.contains("default via 192.168.77.1 dev cli0"),
        "{route}"
    );
    let text = std::fs::read_to_string(&resolv).unwrap();
    assert!(text.contains("nameserver 192.168.77.53\n"), "{text}");
    assert!(text.contains("search berth.test\n"), "{text}");

    // T1 is half the lease: the client renews with the server, same address.
    let renewed = next(&events, "renewed", |e| match e {
        HostEvent::Renewed(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(renewed.address, lease.address);
    assert_eq!(renewed.lease, Some(Duration::from_secs(20)));

    // Without a server the lease runs out: the address and route go, DHCP starts over.
    rig.stop_server();
    let lost = next(&events, "lost", |e| match e {
        HostEvent::Lost { address, .. } => Some(*address),
        _ => None,
    });
    assert_eq!(lost, lease.address);
    assert_eq!(host.current(), None);
    let addr = ip(&rig.client_ns, &["-4", "addr", "show", "dev", "cli0"]);
    assert!(!addr.contains(&lease.address.to_string()), "{addr}");
    let route = ip(&rig.client_ns, &["-4", "route", "show", "default"]);
    assert!(route.trim().is_empty(), "{route}");

    // A server again: the client, back to DISCOVER, gets an address again.
    rig.start_server();
    let again = next(&events, "configured again", |e| match e {
        HostEvent::Configured(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(again.nic, "cli0");

    // Stopping the client removes what it configured.
    host.stop();
    let addr = ip(&rig.client_ns, &["-4", "addr", "show", "dev", "cli0"]);
    assert!(!addr.contains(&again.address.to_string()), "{addr}");
}
