//! Boot test of the UEFI disk image: the demo built as qcow2, enlarged like a cloud volume,
//! booted twice under OVMF. The first boot grows the state partition to the disk; the second
//! proves the state partition persisted (the boot counter PID 1 keeps there says 2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth_tests::{workspace_root, Guest};

/// OVMF under TCG on a loaded 2-core machine is slow; a healthy boot takes well under a minute.
const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(60);
const QEMU_LIMIT: Duration = Duration::from_secs(400);

/// The demo image directory with disk.qcow2: `BERTH_TEST_DISK_IMAGE`, or built here.
fn demo_disk_image() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_TEST_DISK_IMAGE") {
        return PathBuf::from(dir);
    }
    let out_dir = workspace_root().join("target/berth/demo-disk");
    let out = Command::new(workspace_root().join("image-build/build-demo"))
        .arg(workspace_root().join("examples/demo.toml"))
        .arg(&out_dir)
        .env("BERTH_IMAGE_FORMAT", "qcow2")
        .output()
        .expect("run image-build/build-demo");
    assert!(
        out.status.success(),
        "image-build/build-demo failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Boot `disk`, wait for readiness, check the state lines, power off; returns the console.
fn boot_once(disk: &std::path::Path, boot_number: u32) -> Vec<String> {
    let mut guest = Guest::boot_disk(disk, QEMU_LIMIT).unwrap();
    guest.wait_for("berth: init started", BOOT).unwrap();
    guest
        .wait_for(
            "(GPT partition name berth-state) mounted at /var/lib/berth",
            STEP,
        )
        .unwrap();
    guest
        .wait_for(&format!("berth: boot={boot_number}"), STEP)
        .unwrap();
    guest.wait_for("state=persistent", STEP).unwrap();
    guest.wait_for("berth: ready", STEP).unwrap();
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    let status = guest.wait_exit(STEP).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    guest.console().to_vec()
}

#[test]
fn uefi_disk_grows_its_state_partition_and_keeps_state_across_boots() {
    let image = demo_disk_image();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.qcow2");
    std::fs::copy(image.join("disk.qcow2"), &disk).unwrap();
    let resize = Command::new("qemu-img")
        .args(["resize", "-q"])
        .arg(&disk)
        .arg("2G")
        .status()
        .expect("run qemu-img");
    assert!(resize.success());

    let first = boot_once(&disk, 1);
    let grown = first
        .iter()
        .find(|l| l.contains("berth: state partition grown from"))
        .unwrap_or_else(|| panic!("no growth line in:\n{}", first.join("\n")));
    // 2 GiB minus the 64 MiB ESP and the partition tables.
    assert!(grown.ends_with("to 1982 MiB"), "{grown}");

    let second = boot_once(&disk, 2);
    assert!(
        !second.iter().any(|l| l.contains("state partition grown")),
        "the second boot grew the partition again:\n{}",
        second.join("\n")
    );
}
