//! Boot tests: the demo image under QEMU (TCG), read through the serial console.
//!
//! The image comes from `BERTH_TEST_IMAGE` (set by `tests/run`), or is built here with
//! `image-build/build-demo` when that is unset, so `cargo test` alone also works.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use berth_tests::{free_port, http_get, BootOptions, Guest};

/// Generous bounds for TCG on a loaded 2-core machine; a healthy boot takes seconds.
const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);
const QEMU_LIMIT: Duration = Duration::from_secs(300);

fn demo_image() -> PathBuf {
    berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn demo_boots_serves_http_and_powers_off_in_order() {
    let port = free_port().unwrap();
    let mut guest = Guest::boot(&BootOptions {
        image: demo_image(),
        limit: QEMU_LIMIT,
        forwards: vec![(port, 8080)],
        append: String::new(),
    })
    .unwrap();

    guest.wait_for("berth: init started", BOOT).unwrap();
    guest.wait_for("berth: agent started", STEP).unwrap();
    // No `ip=` on the command line: the agent's DHCP client gets QEMU's address.
    let network = guest.wait_for("berth: network nic=", STEP).unwrap();
    assert!(
        network.contains("nic=eth0 address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3 ")
            && network.contains(" source=dhcp"),
        "network line: {network}"
    );
    // The one-shot container's output, prefixed with its name, then its exit line.
    // Container lines interleave in any order (hello's exit is reaped after `ready`).
    for line in [
        "hello | hello from berth",
        "berth: ready containers=",
        "berth: container=hello state=exited code=0",
    ] {
        if !guest.console().iter().any(|l| l.contains(line)) {
            guest.wait_for(line, STEP).unwrap();
        }
    }

    // The web container answers on the forwarded port.
    let mut answer = None;
    for _ in 0..60 {
        match http_get(port, "/", Duration::from_secs(5)) {
            Ok(reply) => {
                answer = Some(reply);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
    let (status, body) = answer.expect("the demo web container never answered");
    assert_eq!(status, 200, "body: {body}");
    assert!(body.contains("hello from the berth demo"), "body: {body}");

    // Ordered power-off through PID 1: the ACPI power button, as a cloud's "stop" presses it.
    guest.power_button().unwrap();
    guest.wait_for("berth: shutdown requested", STEP).unwrap();
    guest
        .wait_until("web exits", STEP, |l| {
            l.starts_with("berth: container=web state=exited")
        })
        .unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    let status = guest.wait_exit(STEP).unwrap();
    assert!(status.success(), "QEMU exited with {status}");

    let console = guest.console().join("\n");
    for bad in ["Kernel panic", "Attempted to kill init", "panicked at"] {
        assert!(!console.contains(bad), "console shows {bad:?}");
    }
    // The agent stopped its containers before PID 1 powered off.
    let web_exit = console.find("berth: container=web state=exited").unwrap();
    let poweroff = console.find("berth: poweroff").unwrap();
    assert!(web_exit < poweroff, "web exited after power-off");
}

/// Containers of one manifest reach each other by name over the bridge: the demo's `fetch`
/// container gets the `web` container's page from `http://web/` (its own network namespace,
/// its own address, /etc/hosts written by berthd).
#[test]
fn demo_containers_reach_each_other_by_name() {
    let mut guest = Guest::boot(&BootOptions {
        image: demo_image(),
        limit: QEMU_LIMIT,
        forwards: Vec::new(),
        append: String::new(),
    })
    .unwrap();
    guest.wait_for("berth: agent started", BOOT).unwrap();
    let line = guest.wait_for("fetch | web", STEP).unwrap();
    assert!(
        line.ends_with("fetch | web says: hello from the berth demo"),
        "fetch printed: {line}"
    );
    guest
        .wait_for("berth: container=fetch state=exited code=0", STEP)
        .unwrap();
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    let status = guest.wait_exit(STEP).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    let console = guest.console().join("\n");
    assert!(
        !console.contains("berth: error:"),
        "console shows an error:\n{console}"
    );
}

/// Boot `manifest` laid over the demo image and expect it refused: the console names the file,
/// line and column, no container starts, and PID 1 still powers the machine off in order.
fn assert_refused_at_boot(manifest: &str, expected: &str) {
    let image = berth_tests::overlay_image(
        &demo_image(),
        &[("etc/berth/manifest.toml", manifest.as_bytes())],
    )
    .unwrap();
    let mut guest = Guest::boot(&BootOptions {
        image: image.path().to_path_buf(),
        limit: QEMU_LIMIT,
        forwards: Vec::new(),
        append: String::new(),
    })
    .unwrap();
    guest.wait_for("berth: agent started", BOOT).unwrap();
    let error = guest.wait_for("berth: error:", STEP).unwrap();
    assert!(error.contains(expected), "error line: {error}");
    guest.wait_for("no containers started", STEP).unwrap();
    // PID 1 and the agent are alive: the power button still gives an ordered power-off.
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    assert!(guest.wait_exit(STEP).unwrap().success());
    let console = guest.console().join("\n");
    assert!(!console.contains("state=running"), "a container started");
    assert!(!console.contains("Kernel panic"), "kernel panic");
}

#[test]
fn manifest_with_unknown_key_is_refused_at_boot() {
    let manifest = "version = 1\n\n[images]\nbusybox = { source = \"oci-layout:images/busybox\" }\n\n[containers.web]\nimage = \"busybox\"\ncomand = [\"/bin/true\"]\n";
    assert_refused_at_boot(manifest, "manifest.toml:8:1:");
}

#[test]
fn manifest_with_missing_image_is_refused_at_boot() {
    let manifest = "version = 1\n\n[images]\nbusybox = { source = \"oci-layout:images/busybox\" }\nother = { source = \"oci-layout:images/not-shipped\" }\n\n[containers.web]\nimage = \"other\"\n";
    assert_refused_at_boot(manifest, "manifest.toml:5:");
}

/// Egress through NAT: a container reaches a server on the build host. QEMU user networking
/// maps the guest's 10.0.2.2 to this host's loopback, where the test serves one page (loopback
/// only); the container's packets leave berth0 masqueraded behind the guest's address.
#[test]
fn a_container_reaches_the_build_host_through_nat() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        // One request is all the container makes once it gets an answer.
        if let Ok((mut conn, _)) = listener.accept() {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let body = "hello from the build host\n";
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let manifest = format!(
        r#"version = 1

[images]
busybox = {{ source = "oci-layout:images/busybox" }}

[containers.out]
image = "busybox"
command = ["/bin/sh", "-c", 'for i in $(seq 1 100); do if page=$(wget -q -O - http://10.0.2.2:{port}/); then echo "outside says: $page"; exit 0; fi; sleep 0.3; done; exit 1']
"#
    );
    let image = berth_tests::overlay_image(
        &demo_image(),
        &[("etc/berth/manifest.toml", manifest.as_bytes())],
    )
    .unwrap();
    let mut guest = Guest::boot(&BootOptions {
        image: image.path().to_path_buf(),
        limit: QEMU_LIMIT,
        forwards: Vec::new(),
        append: String::new(),
    })
    .unwrap();
    guest.wait_for("berth: agent started", BOOT).unwrap();
    let line = guest.wait_for("out | outside says:", STEP).unwrap();
    assert!(
        line.ends_with("out | outside says: hello from the build host"),
        "{line}"
    );
    guest
        .wait_for("berth: container=out state=exited code=0", STEP)
        .unwrap();
    server.join().unwrap();
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    assert!(guest.wait_exit(STEP).unwrap().success());
}

/// `[host.network] mode = "static"`: the agent gives the NIC the manifest's address, route,
/// MTU and resolvers (no DHCP); the container's veth follows the MTU, its resolv.conf has the
/// manifest's resolver, and its traffic still leaves through NAT to the build host.
#[test]
fn a_static_host_network_from_the_manifest() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut conn, _)) = listener.accept() {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let body = "hello over a static address\n";
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let manifest = format!(
        r#"version = 1

[host.network]
mode = "static"
address = "10.0.2.20/24"
gateway = "10.0.2.2"
dns = ["10.0.2.3"]
mtu = 1400

[images]
busybox = {{ source = "oci-layout:images/busybox" }}

[containers.out]
image = "busybox"
command = ["/bin/sh", "-c", 'ifconfig eth0 | grep -o "MTU:[0-9]*"; grep nameserver /etc/resolv.conf; for i in $(seq 1 100); do if page=$(wget -q -O - http://10.0.2.2:{port}/); then echo "outside says: $page"; exit 0; fi; sleep 0.3; done; exit 1']
"#
    );
    let image = berth_tests::overlay_image(
        &demo_image(),
        &[("etc/berth/manifest.toml", manifest.as_bytes())],
    )
    .unwrap();
    let mut guest = Guest::boot(&BootOptions {
        image: image.path().to_path_buf(),
        limit: QEMU_LIMIT,
        forwards: Vec::new(),
        append: String::new(),
    })
    .unwrap();
    guest.wait_for("berth: agent started", BOOT).unwrap();
    let network = guest.wait_for("berth: network nic=", STEP).unwrap();
    assert!(
        network.ends_with(
            "berth: network nic=eth0 address=10.0.2.20/24 gateway=10.0.2.2 dns=10.0.2.3 mtu=1400 source=static"
        ),
        "{network}"
    );
    let mtu = guest.wait_for("out | MTU:", STEP).unwrap();
    assert!(mtu.ends_with("out | MTU:1400"), "{mtu}");
    let resolver = guest.wait_for("out | nameserver", STEP).unwrap();
    assert!(
        resolver.ends_with("out | nameserver 10.0.2.3"),
        "{resolver}"
    );
    let line = guest.wait_for("out | outside says:", STEP).unwrap();
    assert!(
        line.ends_with("out | outside says: hello over a static address"),
        "{line}"
    );
    server.join().unwrap();
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    assert!(guest.wait_exit(STEP).unwrap().success());
}
