//! Boot test: the guest pulls its image from a registry on the build host (reached through
//! QEMU user networking at 10.0.2.2) and runs it; a second boot finds it in the store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use berth_tests::registry::Registry;
use berth_tests::{BootOptions, Guest};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(120);
const QEMU_LIMIT: Duration = Duration::from_secs(300);

fn manifest(port: u16, source_suffix: &str) -> String {
    format!(
        r#"version = 1

[images]
app = {{ source = "registry:10.0.2.2:{port}/demo/busybox{source_suffix}" }}

[registries."10.0.2.2:{port}"]
insecure = true

[containers.app]
image = "app"
command = ["/bin/sh", "-c", "echo pulled-and-running; ls /bin/busybox"]
"#
    )
}

fn boot(manifest: &str) -> (Guest, berth_tests::OverlaidImage) {
    let demo = berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"));
    let image =
        berth_tests::overlay_image(&demo, &[("etc/berth/manifest.toml", manifest.as_bytes())])
            .unwrap();
    let guest = Guest::boot(&BootOptions {
        image: image.path().to_path_buf(),
        limit: QEMU_LIMIT,
        forwards: Vec::new(),
        append: String::new(),
    })
    .unwrap();
    (guest, image)
}

#[test]
fn guest_pulls_its_image_from_the_build_host_registry() {
    let reg = Registry::start(None).unwrap();
    let demo_layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/images/busybox");
    // demo_image() builds the demo layout when it is missing.
    berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"));
    reg.push(&demo_layout, "demo/busybox:1").unwrap();

    let (mut guest, _image) = boot(&manifest(reg.port(), ":1"));
    guest.wait_for("berth: agent started", BOOT).unwrap();
    guest
        .wait_for("berth: image=app pull from 10.0.2.2:", STEP)
        .unwrap();
    guest.wait_for("app | pulled-and-running", STEP).unwrap();
    guest
        .wait_for("berth: container=app state=exited code=0", STEP)
        .unwrap();
    let console = guest.console().join("\n");
    assert!(console.contains(" verified"), "{console}");
    assert!(console.contains("app | /bin/busybox"), "{console}");
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    drop(guest);

    // A digest pin that names other content is refused with the reference in the error.
    let wrong = format!("@sha256:{}", "0".repeat(64));
    let (mut guest, _image) = boot(&manifest(reg.port(), &wrong));
    let line = guest.wait_for("berth: error: ", BOOT).unwrap();
    assert!(line.contains("cannot pull"), "{line}");
    assert!(line.contains(&"0".repeat(64)), "{line}");
    let console = guest.console().join("\n");
    assert!(!console.contains("pulled-and-running"), "{console}");
}
