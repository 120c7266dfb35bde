//! Boot test: the guest pulls images from a registry on the build host (reached through QEMU
//! user networking at 10.0.2.2). The registry is down at boot: the containers that need it
//! wait with retries while another container runs; once it is up they start. A pinned digest
//! that the registry does not have is refused and its container never starts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use berth_tests::registry::Registry;
use berth_tests::{BootOptions, Guest};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(120);
const QEMU_LIMIT: Duration = Duration::from_secs(400);

fn manifest(port: u16) -> String {
    let zeros = "0".repeat(64);
    format!(
        r#"version = 1

[images]
local = {{ source = "oci-layout:images/busybox" }}
app = {{ source = "registry:10.0.2.2:{port}/demo/busybox:1" }}
pinned = {{ source = "registry:10.0.2.2:{port}/demo/busybox@sha256:{zeros}" }}

[registries."10.0.2.2:{port}"]
insecure = true

[containers.other]
image = "local"
command = ["/bin/sh", "-c", "echo other-running; trap 'exit 0' TERM; while true; do sleep 1; done"]

[containers.app]
image = "app"
command = ["/bin/sh", "-c", "echo pulled-and-running; ls /bin/busybox"]

[containers.never]
image = "pinned"
command = ["/bin/sh", "-c", "echo should-not-run"]
"#
    )
}

#[test]
fn registry_images_are_pulled_with_retries_without_holding_others_up() {
    let mut reg = Registry::start(None).unwrap();
    // demo_image() builds the demo layout when it is missing.
    let demo = berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"));
    let demo_layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/images/busybox");
    reg.push(&demo_layout, "demo/busybox:1").unwrap();
    reg.stop();

    let text = manifest(reg.port());
    let image =
        berth_tests::overlay_image(&demo, &[("etc/berth/manifest.toml", text.as_bytes())]).unwrap();
    let mut guest = Guest::boot(&BootOptions {
        image: image.path().to_path_buf(),
        limit: QEMU_LIMIT,
        forwards: Vec::new(),
        append: String::new(),
    })
    .unwrap();
    guest.wait_for("berth: agent started", BOOT).unwrap();
    // The registry is down: app waits and is retried, other runs meanwhile.
    let line = guest
        .wait_for("berth: error: /etc/berth/manifest.toml:5:", STEP)
        .unwrap();
    assert!(line.contains("cannot reach registry 10.0.2.2:"), "{line}");
    assert!(
        line.contains("container(s) app wait for it; retrying in 1s"),
        "{line}"
    );
    guest.wait_for("other | other-running", STEP).unwrap();
    guest.wait_for("retrying in 4s", STEP).unwrap();

    // The registry comes up: app is pulled and starts; other is not restarted.
    reg.resume().unwrap();
    guest.wait_for("app | pulled-and-running", STEP).unwrap();
    guest
        .wait_for("berth: container=app state=exited code=0", STEP)
        .unwrap();
    let console = guest.console().join("\n");
    assert!(
        console.contains("berth: image=app pull done after"),
        "{console}"
    );
    // The registry image has the local image's layers: shared, not downloaded again.
    assert!(console.contains("already in the store"), "{console}");
    assert_eq!(
        console
            .matches("berth: container=other state=running")
            .count(),
        1,
        "{console}"
    );
    // The pinned digest does not exist there: refused, named, never started.
    assert!(
        console.contains(&format!("demo/busybox@sha256:{}", "0".repeat(64))),
        "{console}"
    );
    assert!(!console.contains("should-not-run"), "{console}");
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
}
