//! What a container start and stop send to the kernel, against the recording fakes.

use std::path::Path;

use super::*;
use crate::manifest::Manifest;

fn manifest(text: &str) -> Manifest {
    Manifest::parse(text, Path::new("test.toml")).unwrap()
}

const TWO: &str = r#"
version = 1
[images]
busybox = { source = "oci-layout:images/busybox" }
[containers.web]
image = "busybox"
ports = ["8080:80", "127.0.0.1:9000:9000/udp"]
[containers.db]
image = "busybox"
ip = "10.88.0.20"
hostname = "database"
[containers.tool]
image = "busybox"
network = "host"
[containers.sealed]
image = "busybox"
network = "none"
"#;

struct Rig {
    _dir: tempfile::TempDir,
    netlink: RecordingNetlink,
    firewall: std::sync::Arc<std::sync::Mutex<RecordingFirewall>>,
    network: Network,
    run: std::path::PathBuf,
}

/// A [`Firewall`] sharing its state with the test.
struct Shared(std::sync::Arc<std::sync::Mutex<RecordingFirewall>>);

impl Firewall for Shared {
    fn apply(&mut self, rules: &Ruleset) -> Result<(), FirewallError> {
        self.0.lock().unwrap().apply(rules)
    }
    fn remove(&mut self) -> Result<(), FirewallError> {
        self.0.lock().unwrap().remove()
    }
    fn exists(&mut self) -> Result<bool, FirewallError> {
        self.0.lock().unwrap().exists()
    }
}

fn rig(text: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut config = NetworkConfig::new(&dir.path().join("state"), &run);
    config.host_resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(&config.host_resolv_conf, "nameserver 10.0.2.3\n").unwrap();
    let netlink = RecordingNetlink::default();
    let firewall = std::sync::Arc::new(std::sync::Mutex::new(RecordingFirewall::default()));
    let network = Network::setup(
        &manifest(text),
        config,
        Box::new(netlink.clone()),
        Box::new(Shared(firewall.clone())),
    )
    .unwrap();
    Rig {
        _dir: dir,
        netlink,
        firewall,
        network,
        run,
    }
}

#[test]
fn setup_creates_the_bridge_and_the_nat_table_without_ports() {
    let r = rig(TWO);
    assert_eq!(
        r.netlink.calls(),
        [
            "[host] add_bridge berth0",
            "[host] add_address berth0 10.88.0.1/24",
            "[host] set_up berth0",
            "[host] sysctl net/ipv4/ip_forward=1",
            "[host] sysctl net/ipv4/conf/berth0/route_localnet=1",
        ]
    );
    let fw = r.firewall.lock().unwrap();
    let rules = fw.current.as_ref().unwrap();
    assert!(rules.published.is_empty());
    assert_eq!(rules.subnet.to_string(), "10.88.0.0/24");
    // Pinned first, then the others lowest first in name order.
    assert_eq!(
        r.network.address_of("db"),
        Some("10.88.0.20".parse().unwrap())
    );
    assert_eq!(
        r.network.address_of("web"),
        Some("10.88.0.2".parse().unwrap())
    );
    assert_eq!(r.network.address_of("tool"), None);
}

#[test]
fn a_bridge_container_start_and_stop() {
    let mut r = rig(TWO);
    r.netlink.clear();
    let att = r.network.attach("web").unwrap();
    let ns = r.run.join("netns/web");
    let nsd = ns.display().to_string();
    assert_eq!(att.netns, NetworkNamespace::Join(ns.clone()));
    assert_eq!(att.ip, Some("10.88.0.2".parse().unwrap()));
    assert_eq!(
        r.netlink.calls(),
        [
            format!("[host] create_netns {nsd}"),
            format!("[{nsd}] set_up lo"),
            format!("[host] add_veth bv0a580002 peer eth0 in {nsd}"),
            "[host] set_master bv0a580002 berth0".to_owned(),
            "[host] set_up bv0a580002".to_owned(),
            format!("[{nsd}] add_address eth0 10.88.0.2/24"),
            format!("[{nsd}] set_up eth0"),
            format!("[{nsd}] add_default_route via 10.88.0.1"),
        ]
    );
    {
        let fw = r.firewall.lock().unwrap();
        let published = &fw.current.as_ref().unwrap().published;
        assert_eq!(published.len(), 2);
        assert_eq!(published[0].host_port, 8080);
        assert_eq!(published[0].container_ip.to_string(), "10.88.0.2");
        assert_eq!(published[1].host_ip, Some(std::net::Ipv4Addr::LOCALHOST));
    }
    // The name files: every container by name, the host's resolvers.
    let hosts = std::fs::read_to_string(r.run.join("containers/web/hosts")).unwrap();
    assert!(hosts.contains("10.88.0.2\tweb\n"), "{hosts}");
    assert!(hosts.contains("10.88.0.20\tdb database\n"), "{hosts}");
    assert!(hosts.contains("10.88.0.1\ttool\n"), "{hosts}");
    assert!(!hosts.contains("sealed"), "{hosts}");
    let resolv = std::fs::read_to_string(r.run.join("containers/web/resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.0.2.3\n"));
    let targets: Vec<_> = att
        .mounts
        .iter()
        .map(|m| m.target().to_path_buf())
        .collect();
    assert_eq!(
        targets,
        [Path::new("/etc/hosts"), Path::new("/etc/resolv.conf")]
    );

    r.netlink.clear();
    r.network.detach("web");
    assert_eq!(
        r.netlink.calls(),
        [
            "[host] delete_link bv0a580002".to_owned(),
            format!("[host] delete_netns {nsd}"),
        ]
    );
    assert!(r
        .firewall
        .lock()
        .unwrap()
        .current
        .as_ref()
        .unwrap()
        .published
        .is_empty());
    assert!(!r.run.join("containers/web").exists());
    assert_eq!(r.netlink.links(), ["host/berth0"]);
    assert!(r.netlink.namespaces().is_empty());
}

#[test]
fn host_and_none_escape_hatches() {
    let mut r = rig(TWO);
    r.netlink.clear();
    let host = r.network.attach("tool").unwrap();
    assert_eq!(host.netns, NetworkNamespace::Host);
    assert!(r.netlink.calls().is_empty());
    let none = r.network.attach("sealed").unwrap();
    let nsd = r.run.join("netns/sealed").display().to_string();
    assert_eq!(
        r.netlink.calls(),
        [
            format!("[host] create_netns {nsd}"),
            format!("[{nsd}] set_up lo")
        ]
    );
    assert_eq!(none.ip, None);
    let hosts = std::fs::read_to_string(r.run.join("containers/sealed/hosts")).unwrap();
    assert!(hosts.contains("127.0.1.1\tsealed\n"), "{hosts}");
}

#[test]
fn a_failed_start_is_rolled_back() {
    let mut r = rig(TWO);
    r.netlink.fail_on("add_address eth0");
    let err = r.network.attach("db").unwrap_err();
    assert!(
        err.to_string()
            .contains("container=db: cannot give eth0 the address 10.88.0.20"),
        "{err}"
    );
    assert_eq!(r.netlink.links(), ["host/berth0"]);
    assert!(r.netlink.namespaces().is_empty());
}

#[test]
fn a_hundred_cycles_leak_nothing_and_teardown_removes_everything() {
    let mut r = rig(TWO);
    for _ in 0..100 {
        r.network.attach("web").unwrap();
        r.network.attach("db").unwrap();
        r.network.detach("web");
        r.network.detach("db");
    }
    assert_eq!(r.netlink.links(), ["host/berth0"]);
    assert!(r.netlink.namespaces().is_empty());
    r.network.attach("web").unwrap();
    r.network.teardown().unwrap();
    assert!(r.netlink.links().is_empty());
    assert!(r.netlink.namespaces().is_empty());
    assert!(r.firewall.lock().unwrap().current.is_none());
}

#[test]
fn a_manifest_without_bridge_containers_creates_no_bridge() {
    let r = rig(r#"
version = 1
[images]
busybox = { source = "oci-layout:images/busybox" }
[containers.tool]
image = "busybox"
network = "host"
"#);
    assert!(r.netlink.calls().is_empty());
    assert!(r.firewall.lock().unwrap().current.is_none());
}

#[test]
fn veths_follow_the_host_nics_mtu() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut config = NetworkConfig::new(&dir.path().join("state"), &run);
    config.host_resolv_conf = dir.path().join("resolv.conf");
    config.mtu = Some(1400);
    let netlink = RecordingNetlink::default();
    let mut network = Network::setup(
        &manifest(TWO),
        config,
        Box::new(netlink.clone()),
        Box::new(RecordingFirewall::default()),
    )
    .unwrap();
    netlink.clear();
    network.attach("web").unwrap();
    let nsd = run.join("netns/web").display().to_string();
    let calls = netlink.calls();
    let veth = calls
        .iter()
        .position(|c| c.starts_with("[host] add_veth"))
        .unwrap();
    assert_eq!(
        calls[veth + 1..veth + 4],
        [
            "[host] set_mtu bv0a580002 1400".to_owned(),
            format!("[{nsd}] set_mtu eth0 1400"),
            "[host] set_master bv0a580002 berth0".to_owned(),
        ]
    );
}

#[test]
fn apply_rewrites_the_hosts_file_of_running_containers_in_place() {
    use std::os::unix::fs::MetadataExt;
    let mut r = rig(TWO);
    r.network.attach("web").unwrap();
    let path = r.run.join("containers/web/hosts");
    let before = std::fs::read_to_string(&path).unwrap();
    assert!(before.contains("\tdb database\n"), "{before}");
    let inode = std::fs::metadata(&path).unwrap().ino();
    // db goes, cache comes.
    let next = TWO.replace(
        "[containers.db]\nimage = \"busybox\"\nip = \"10.88.0.20\"\nhostname = \"database\"",
        "[containers.cache]\nimage = \"busybox\"",
    );
    assert_ne!(next, TWO);
    r.network.update(&manifest(&next)).unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(!after.contains("database"), "{after}");
    let cache = r.network.address_of("cache").unwrap();
    assert!(after.contains(&format!("{cache}\tcache\n")), "{after}");
    assert!(after.contains("\tweb\n"), "{after}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "the bind-mounted file itself changed"
    );
}

#[test]
fn an_adopted_container_keeps_its_network_and_gets_its_ports_back() {
    let mut r = rig(TWO);
    r.netlink.clear();
    // The previous berthd attached web; this one takes it over without touching the kernel's
    // links or namespaces.
    r.network.adopt("web").unwrap();
    assert!(r.netlink.calls().is_empty(), "{:?}", r.netlink.calls());
    {
        let fw = r.firewall.lock().unwrap();
        let published = &fw.current.as_ref().unwrap().published;
        assert_eq!(published.len(), 2);
        assert_eq!(published[0].container_ip.to_string(), "10.88.0.2");
    }
    let hosts = std::fs::read_to_string(r.run.join("containers/web/hosts")).unwrap();
    assert!(hosts.contains("10.88.0.2\tweb\n"), "{hosts}");
    r.network.adopt("tool").unwrap();
    assert!(r.network.adopt("nope").is_err());
    // When it ends, its veth and namespace go as for any container.
    let nsd = r.run.join("netns/web").display().to_string();
    r.network.detach("web");
    assert_eq!(
        r.netlink.calls(),
        [
            "[host] delete_link bv0a580002".to_owned(),
            format!("[host] delete_netns {nsd}"),
        ]
    );
}
