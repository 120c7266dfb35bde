//! Boot tests of where the manifest comes from: each config source in turn (QEMU fw_cfg, a
//! cloud-init `cidata` ISO made here with genisoimage, a `BERTH` vfat drive made with mkfs.vfat
//! and mtools and named by the kernel command line, an inline manifest on the command line, a
//! fake EC2 IMDSv2 server on this host's loopback reached through QEMU's guest forwarding),
//! an invalid user-data falling back visibly, and a UEFI disk keeping its last manifest and a
//! named volume's data across a reboot.
//!
//! Each manifest sets a distinct hostname and runs a one-shot container printing a marker, so
//! the console proves which manifest ran.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_tests::{demo_image, workspace_root, BootOptions, Guest};

const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(60);
const QEMU_LIMIT: Duration = Duration::from_secs(300);
/// OVMF under TCG is slower than a direct kernel boot.
const DISK_LIMIT: Duration = Duration::from_secs(420);

/// A manifest running one container that prints `marker`, using the image's busybox.
fn manifest(marker: &str) -> String {
    format!(
        r#"version = 1

[host]
hostname = "{marker}"

[images]
busybox = {{ source = "oci-layout:images/busybox" }}

[containers.probe]
image = "busybox"
command = ["/bin/sh", "-c", "echo marker={marker}"]
"#
    )
}

fn args(list: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    list.iter().map(|a| a.as_ref().to_os_string()).collect()
}

fn options(append: &str) -> BootOptions {
    BootOptions {
        image: demo_image().unwrap(),
        limit: QEMU_LIMIT,
        forwards: vec![],
        append: append.into(),
    }
}

/// Wait for the source line and the probe container's marker, then power off cleanly.
fn expect_source(guest: &mut Guest, source_line: &str, marker: &str) -> String {
    guest.wait_for("berth: agent started", BOOT).unwrap();
    let line = guest.wait_for("berth: manifest source=", STEP).unwrap();
    assert!(line.starts_with(source_line), "source line: {line}");
    guest
        .wait_for(&format!("probe | marker={marker}"), STEP)
        .unwrap();
    guest
        .wait_for("berth: container=probe state=exited code=0", STEP)
        .unwrap();
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    guest.wait_exit(STEP).unwrap();
    line
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cloud-init NoCloud ISO9660 drive labelled `cidata` holding `user-data`.
fn cidata_iso(dir: &Path, user_data: &str) -> PathBuf {
    let files = dir.join("cidata");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("user-data"), user_data).unwrap();
    std::fs::write(files.join("meta-data"), "instance-id: berth-test\n").unwrap();
    let iso = dir.join("cidata.iso");
    run(Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(files.join("user-data"))
        .arg(files.join("meta-data")));
    iso
}

/// A vfat drive labelled `label` holding `files` (path on the drive, contents).
fn vfat_drive(dir: &Path, label: &str, files: &[(&str, &str)]) -> PathBuf {
    let image = dir.join(format!("{label}.img"));
    run(Command::new("mkfs.vfat")
        .args(["-n", label, "-C"])
        .arg(&image)
        .arg("2048"));
    for (path, contents) in files {
        let local = dir.join(path.replace('/', "_"));
        std::fs::write(&local, contents).unwrap();
        if let Some((parent, _)) = path.rsplit_once('/') {
            run(Command::new("mmd")
                .arg("-i")
                .arg(&image)
                .arg(format!("::{parent}")));
        }
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&image)
            .arg(&local)
            .arg(format!("::{path}")));
    }
    image
}

#[test]
fn fw_cfg_manifest_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fw.toml");
    std::fs::write(&file, manifest("fwcfg")).unwrap();
    let mut guest = Guest::boot_with(&options(""), &args(&[&"--manifest", &file])).unwrap();
    expect_source(
        &mut guest,
        "berth: manifest source=fw_cfg from=fw_cfg:opt/berth/manifest",
        "fwcfg",
    );
}

#[test]
fn inline_command_line_manifest_wins_over_fw_cfg() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fw.toml");
    std::fs::write(&file, manifest("fwcfg")).unwrap();
    let inline = base64::engine::general_purpose::STANDARD.encode(manifest("inline"));
    let mut guest = Guest::boot_with(
        &options(&format!("berth.manifest.inline={inline}")),
        &args(&[&"--manifest", &file]),
    )
    .unwrap();
    expect_source(
        &mut guest,
        "berth: manifest source=cmdline from=cmdline:berth.manifest.inline",
        "inline",
    );
}

#[test]
fn cidata_iso_user_data_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let iso = cidata_iso(dir.path(), &manifest("nocloud"));
    let mut guest = Guest::boot_with(&options(""), &args(&[&"--config-drive", &iso])).unwrap();
    expect_source(
        &mut guest,
        "berth: manifest source=config-drive from=cidata:/dev/vda:user-data",
        "nocloud",
    );
}

#[test]
fn command_line_names_a_file_on_a_berth_vfat_drive() {
    let dir = tempfile::tempdir().unwrap();
    let drive = vfat_drive(
        dir.path(),
        "BERTH",
        &[
            ("manifest.toml", &manifest("drivedefault")),
            ("hosts/web.toml", &manifest("named")),
        ],
    );
    let mut guest = Guest::boot_with(
        &options("berth.manifest=/hosts/web.toml"),
        &args(&[&"--config-drive", &drive]),
    )
    .unwrap();
    expect_source(
        &mut guest,
        "berth: manifest source=cmdline from=BERTH:/dev/vda:hosts/web.toml",
        "named",
    );
}

#[test]
fn invalid_user_data_falls_back_to_the_built_in_manifest_with_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "version = 1\n\n[host]\nhostnam = \"typo\"\n";
    let iso = cidata_iso(dir.path(), bad);
    let mut guest = Guest::boot_with(&options(""), &args(&[&"--config-drive", &iso])).unwrap();
    guest.wait_for("berth: agent started", BOOT).unwrap();
    let error = guest
        .wait_for("(manifest source=config-drive refused)", STEP)
        .unwrap();
    assert!(
        error.starts_with("berth: error: cidata:/dev/vda:user-data:4:1: ")
            && error.contains("hostnam"),
        "error line: {error}"
    );
    let source = guest.wait_for("berth: manifest source=", STEP).unwrap();
    assert_eq!(
        source,
        "berth: manifest source=image from=/etc/berth/manifest.toml fallback_from=config-drive"
    );
    // The demo's own containers run.
    guest.wait_for("hello | hello from berth", STEP).unwrap();
    guest.wait_for("berth: ready", STEP).unwrap();
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
}

/// A fake EC2 IMDSv2 on 127.0.0.1: a token for `PUT /latest/api/token`, `user_data` for a
/// `GET /latest/user-data` carrying that token, 401 otherwise. Counts the user-data requests
/// that presented the token.
///
/// QEMU's `guestfwd` to a TCP address is one connection QEMU opens at start and carries every
/// guest connection over, so the server answers request after request on a connection and
/// never closes it first.
fn fake_imds(user_data: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let counter = counter.clone();
            let user_data = user_data.clone();
            std::thread::spawn(move || serve_imds(stream, &user_data, &counter));
        }
    });
    (port, served)
}

fn serve_imds(stream: std::net::TcpStream, user_data: &str, counter: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let request = head.join("\n");
        let (status, body) = if request.starts_with("PUT /latest/api/token ")
            && request.contains("X-aws-ec2-metadata-token-ttl-seconds:")
        {
            ("200 OK", "berth-test-token")
        } else if request.starts_with("GET /latest/user-data ")
            && request.contains("X-aws-ec2-metadata-token: berth-test-token")
        {
            counter.fetch_add(1, Ordering::SeqCst);
            ("200 OK", user_data)
        } else {
            ("401 Unauthorized", "")
        };
        if write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .is_err()
        {
            return;
        }
    }
}

#[test]
fn imdsv2_user_data_is_applied() {
    let (port, served) = fake_imds(manifest("cloud"));
    let mut guest = Guest::boot_with(&options(""), &args(&[&"--imds", &port.to_string()])).unwrap();
    expect_source(
        &mut guest,
        "berth: manifest source=imds from=imds:http://169.254.169.254:80/latest/user-data",
        "cloud",
    );
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

/// The demo image directory with disk.qcow2: `BERTH_TEST_DISK_IMAGE`, or built here.
fn demo_disk_image() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_TEST_DISK_IMAGE") {
        return PathBuf::from(dir);
    }
    let out_dir = std::env::temp_dir().join(format!("berth-sources-disk-{}", std::process::id()));
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

#[test]
fn disk_keeps_the_last_manifest_and_volume_data_across_a_reboot() {
    let image = demo_disk_image();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.qcow2");
    std::fs::copy(image.join("disk.qcow2"), &disk).unwrap();
    let keeper = work.path().join("keeper.toml");
    std::fs::write(
        &keeper,
        r#"version = 1

[host]
hostname = "keeper"

[images]
busybox = { source = "oci-layout:images/busybox" }

[containers.counter]
image = "busybox"
command = ["/bin/sh", "-c", "n=$(cat /data/boots 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/boots; sync; echo boots seen: $n"]

[[containers.counter.mounts]]
type = "volume"
source = "counter-data"
target = "/data"
"#,
    )
    .unwrap();

    // First boot: the manifest comes through fw_cfg and is saved on the state partition.
    let boot = |extra: &[OsString], source: &str, seen: &str| {
        let mut guest = Guest::boot_disk_with(&disk, DISK_LIMIT, extra).unwrap();
        guest.wait_for("berth: agent started", BOOT).unwrap();
        let line = guest.wait_for("berth: manifest source=", STEP).unwrap();
        assert_eq!(line, source);
        guest.wait_for(&format!("counter | {seen}"), STEP).unwrap();
        guest
            .wait_for("berth: container=counter state=exited code=0", STEP)
            .unwrap();
        guest.power_button().unwrap();
        guest.wait_for("berth: poweroff", STEP).unwrap();
        let status = guest.wait_exit(STEP).unwrap();
        assert!(status.success(), "QEMU exited with {status}");
    };
    boot(
        &args(&[&"--manifest", &keeper]),
        "berth: manifest source=fw_cfg from=fw_cfg:opt/berth/manifest",
        "boots seen: 1",
    );
    // Second boot, no fw_cfg: the last applied manifest and the volume's data are still there.
    boot(
        &[],
        "berth: manifest source=state from=/var/lib/berth/manifest.toml",
        "boots seen: 2",
    );
}
