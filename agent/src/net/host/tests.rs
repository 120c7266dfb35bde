//! What configuring the host NIC sends to the kernel, against the recording fake, and the
//! resolv.conf it writes.

use super::*;
use crate::net::RecordingNetlink;

fn fake() -> RecordingNetlink {
    let fake = RecordingNetlink::default();
    fake.add_bridge_like("berth0");
    fake.add_nic("eth0");
    fake.add_nic("eth1");
    fake.clear();
    fake
}

impl RecordingNetlink {
    fn add_bridge_like(&self, name: &str) {
        let mut me = self.clone();
        me.add_bridge(name).unwrap();
    }
}

fn lease() -> Lease {
    Lease {
        address: Ipv4Addr::new(10, 0, 2, 15),
        prefix: 24,
        router: Some(Ipv4Addr::new(10, 0, 2, 2)),
        dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
        domain: Some("example.test".into()),
        mtu: Some(1400),
        server: Ipv4Addr::new(10, 0, 2, 2),
        lease_time: Duration::from_secs(86_400),
        renew: Duration::from_secs(43_200),
        rebind: Duration::from_secs(75_600),
    }
}

#[test]
fn the_first_ethernet_interface_is_chosen_unless_one_is_named() {
    let mut nl = fake();
    assert_eq!(choose_interface(&mut nl, None).unwrap().name, "eth0");
    assert_eq!(
        choose_interface(&mut nl, Some("eth1")).unwrap().name,
        "eth1"
    );
    let e = choose_interface(&mut nl, Some("ens3")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "[host.network] interface \"ens3\" does not exist; interfaces: lo, berth0, eth0, eth1"
    );
    let mut bare = RecordingNetlink::default();
    let e = choose_interface(&mut bare, None).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("no Ethernet interface to configure (interfaces: lo)"),
        "{e}"
    );
}

#[test]
fn a_lease_sets_mtu_address_and_default_route() {
    let mut nl = fake();
    let nic = choose_interface(&mut nl, None).unwrap();
    let how = Addressing::of_lease(&lease(), &HostNetwork::default());
    assert_eq!(apply(&mut nl, &nic, &how).unwrap(), 1400);
    assert_eq!(
        nl.calls(),
        [
            "[host] set_mtu eth0 1400",
            "[host] set_up eth0",
            "[host] add_address eth0 10.0.2.15/24",
            "[host] replace_default_route via 10.0.2.2 dev eth0",
        ]
    );
    // The manifest's mtu wins; the same MTU as now is not set again; no router, no route.
    nl.clear();
    let settings = HostNetwork {
        mtu: Some(1500),
        ..HostNetwork::default()
    };
    let mut routerless = lease();
    routerless.router = None;
    let how = Addressing::of_lease(&routerless, &settings);
    assert_eq!(apply(&mut nl, &nic, &how).unwrap(), 1500);
    assert_eq!(
        nl.calls(),
        ["[host] set_up eth0", "[host] add_address eth0 10.0.2.15/24"]
    );
}

#[test]
fn an_address_already_there_is_kept_and_failures_name_the_nic() {
    let mut nl = fake();
    let nic = choose_interface(&mut nl, None).unwrap();
    let how = Addressing::of_lease(&lease(), &HostNetwork::default());
    nl.fail_on("replace_default_route");
    let e = apply(&mut nl, &nic, &how).unwrap_err();
    assert_eq!(e.to_string(), "nic=eth0: cannot route via 10.0.2.2");
}

#[test]
fn deconfigure_removes_route_then_address() {
    let mut nl = fake();
    let how = Addressing::of_lease(&lease(), &HostNetwork::default());
    deconfigure(&mut nl, "eth0", &how).unwrap();
    assert_eq!(
        nl.calls(),
        [
            "[host] delete_default_route via 10.0.2.2 dev eth0",
            "[host] delete_address eth0 10.0.2.15/24",
        ]
    );
}

#[test]
fn resolv_conf_lists_search_domain_and_servers() {
    let text = resolv_conf_text(
        &[Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
        Some("example.test"),
        "DHCP",
    );
    assert_eq!(
        text,
        "# Written by berthd from the DHCP configuration.\nsearch example.test\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
    );
    // A domain that is not a plain name is left out.
    let odd = resolv_conf_text(&[], Some("a b\nnameserver 6.6.6.6"), "DHCP");
    assert!(!odd.contains("6.6.6.6") && !odd.contains("search"), "{odd}");
}

#[test]
fn resolv_conf_is_replaced_atomically_through_the_etc_link() {
    let dir = tempfile::tempdir().unwrap();
    // A plain file is replaced, no temporary file left.
    let plain = dir.path().join("plain/resolv.conf");
    write_resolv_conf(&plain, "nameserver 10.0.2.3\n").unwrap();
    write_resolv_conf(&plain, "nameserver 10.0.2.4\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(&plain).unwrap(),
        "nameserver 10.0.2.4\n"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("plain")).unwrap().count(),
        1
    );
    // /etc/resolv.conf -> ../run/resolv.conf (the target need not exist yet): the link
    // stays, the file it names is written, nothing is left in either directory.
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let link = etc.join("resolv.conf");
    std::os::unix::fs::symlink("../run/resolv.conf", &link).unwrap();
    write_resolv_conf(&link, "nameserver 10.0.2.3\n").unwrap();
    write_resolv_conf(&link, "nameserver 10.0.2.5\n").unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("run/resolv.conf")).unwrap(),
        "nameserver 10.0.2.5\n"
    );
    assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("run")).unwrap().count(),
        1
    );
}

#[test]
fn static_mode_configures_at_once_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let paths = HostPaths {
        resolv_conf: dir.path().join("resolv.conf"),
    };
    let settings = HostNetwork {
        addressing: HostAddressing::Static {
            address: Ipv4Addr::new(192, 168, 1, 10),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
        },
        interface: Some("eth1".into()),
        dns: Some(vec![Ipv4Addr::new(192, 168, 1, 1)]),
        mtu: None,
    };
    let nl = fake();
    let (tx, rx) = std::sync::mpsc::channel();
    let host = HostNet::start(
        &settings,
        &paths,
        Box::new(nl.clone()),
        Box::new(move |e| tx.send(e.clone()).unwrap()),
    )
    .unwrap();
    assert_eq!(
        nl.calls(),
        [
            "[host] set_up eth1",
            "[host] add_address eth1 192.168.1.10/24",
            "[host] replace_default_route via 192.168.1.1 dev eth1",
        ]
    );
    let HostEvent::Configured(done) = rx.recv().unwrap() else {
        panic!()
    };
    assert_eq!(
        done.console_line(false),
        "berth: network nic=eth1 address=192.168.1.10/24 gateway=192.168.1.1 dns=192.168.1.1 mtu=1500 source=static"
    );
    assert_eq!(host.wait_configured(Duration::ZERO), Some(done));
    assert!(std::fs::read_to_string(&paths.resolv_conf)
        .unwrap()
        .contains("nameserver 192.168.1.1\n"));
}

#[test]
fn off_mode_touches_no_interface() {
    let dir = tempfile::tempdir().unwrap();
    let paths = HostPaths {
        resolv_conf: dir.path().join("resolv.conf"),
    };
    let nl = fake();
    let settings = HostNetwork {
        addressing: HostAddressing::Off,
        ..HostNetwork::default()
    };
    let host = HostNet::start(&settings, &paths, Box::new(nl.clone()), Box::new(|_| {})).unwrap();
    assert!(nl.calls().is_empty());
    assert!(!paths.resolv_conf.exists());
    assert_eq!(host.current(), None);
    // With dns, only resolv.conf is written.
    let with_dns = HostNetwork {
        dns: Some(vec![Ipv4Addr::new(9, 9, 9, 9)]),
        ..settings
    };
    HostNet::start(&with_dns, &paths, Box::new(nl.clone()), Box::new(|_| {})).unwrap();
    assert!(nl.calls().is_empty());
    assert!(std::fs::read_to_string(&paths.resolv_conf)
        .unwrap()
        .contains("nameserver 9.9.9.9"));
}

#[test]
fn console_lines_for_a_lease_and_a_renewal() {
    let c = Configured {
        nic: "eth0".into(),
        address: Ipv4Addr::new(10, 0, 2, 15),
        prefix: 24,
        gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
        dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
        mtu: 1500,
        lease: Some(Duration::from_secs(86_400)),
        source: "dhcp",
    };
    assert_eq!(
        c.console_line(false),
        "berth: network nic=eth0 address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3 mtu=1500 lease=86400s source=dhcp"
    );
    assert!(c
        .console_line(true)
        .starts_with("berth: network nic=eth0 renewed address=10.0.2.15/24 "));
}
