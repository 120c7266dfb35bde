//! Fault boot tests: power cuts (QEMU killed, nothing flushed by the guest) during an `apply`
//! over the TCP API while a container writes its log fast, and during a registry pull of a
//! large layer; then the next boot from the same state disk. And a full state disk: a
//! container fills a named volume, another with CAP_SYS_RESOURCE takes the rest.
//!
//! The state disk is a raw ext4 file labelled `berth-state` attached with `qemu/boot --disk`;
//! after a clean power-off the test reads it with `debugfs` (no mount, no root needed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_tests::{free_port, BootOptions, Guest};

const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(120);
const QEMU_LIMIT: Duration = Duration::from_secs(420);
const TOKEN: &str = "faults-test-token-0123456789";
/// The guest's `api_port`.
const API_PORT: u16 = 7070;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sparse raw disk of `mib` MiB holding an empty ext4 labelled `berth-state`, with
/// mkfs.ext4's default 5% reserved for root.
fn state_disk(dir: &Path, mib: u64) -> PathBuf {
    let path = dir.join("state.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "berth-state"])
        .arg(&path));
    path
}

/// `debugfs -R REQUEST DISK` (read-only): the request's output.
fn debugfs(disk: &Path, request: &str) -> String {
    run(Command::new("debugfs").arg("-R").arg(request).arg(disk))
}

/// The names in directory `dir` of the state filesystem (without `.` and `..`).
fn ls(disk: &Path, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = debugfs(disk, &format!("ls -p {dir}"))
        .lines()
        // /inode/mode/uid/gid/name/size/
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

/// Boot `image` with `disk` as its state disk; the guest API is forwarded to `api`.
fn boot(image: &Path, disk: &Path, forwards: Vec<(u16, u16)>) -> Guest {
    Guest::boot_with(
        &BootOptions {
            image: image.to_path_buf(),
            limit: QEMU_LIMIT,
            forwards,
            append: String::new(),
        },
        &[OsString::from("--disk"), disk.as_os_str().to_owned()],
    )
    .unwrap()
}

fn request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// One request to the guest's TCP API on 127.0.0.1:`port`: (status, body).
fn api(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream
        .write_all(request(method, path, body).as_bytes())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `exec` in container `name` through the API: (exit code, stdout).
fn exec(port: u16, name: &str, args: &[&str]) -> (Option<i64>, String) {
    let body = serde_json::json!({ "args": args, "timeout_ms": 60_000 }).to_string();
    let (status, reply) = api(port, "POST", &format!("/v1/containers/{name}/exec"), &body);
    assert_eq!(status, 200, "exec {args:?} in {name}: {reply}");
    let reply: serde_json::Value = serde_json::from_str(dechunk(&reply).trim()).unwrap();
    (
        reply["exit_code"].as_i64(),
        reply["stdout"].as_str().unwrap_or_default().to_string(),
    )
}

/// The body of a `Transfer-Encoding: chunked` response (unchanged when it is not chunked).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if size == 0 {
            return out;
        }
        let Some(chunk) = after.get(..size) else {
            return body.to_string();
        };
        out.push_str(chunk);
        rest = after.get(size + 2..).unwrap_or_default();
    }
}

/// A log line as berthd writes it: `2026-01-02T03:04:05.678Z stdout text`.
fn well_formed_log_line(line: &str) -> bool {
    let mut parts = line.splitn(3, ' ');
    let (Some(time), Some(stream)) = (parts.next(), parts.next()) else {
        return false;
    };
    time.len() == 24
        && time.ends_with('Z')
        && time.as_bytes().get(10) == Some(&b'T')
        && (stream == "stdout" || stream == "stderr")
}

/// Manifest generation `gen` of the apply test: `chatty` first prints which generation it runs
/// under, then writes log lines fast (rotated at 16 KiB, 3 files).
fn apply_manifest(gen: u32) -> String {
    format!(
        r#"version = 1

[host]
hostname = "gen{gen}"
api_port = {API_PORT}
api_token = "{TOKEN}"

[images]
busybox = {{ source = "oci-layout:images/busybox" }}

[containers.chatty]
image = "busybox"
restart = "always"
log_max_size = "16Ki"
log_files = 3
command = ["/bin/sh", "-c", """
echo manifest-gen={gen}
trap 'exit 0' TERM
i=0
while true; do
  j=0
  while [ $j -lt 20 ]; do
    i=$((i+1)); j=$((j+1))
    echo "line $i ................................................................................"
  done
  sleep 0.1
done
"""]
"#
    )
}

/// The first console line containing `pattern`, whether it already went by (containers print
/// while berthd is still starting others) or is yet to come.
fn line_with(guest: &mut Guest, pattern: &str) -> String {
    if let Some(line) = guest.console().iter().find(|l| l.contains(pattern)) {
        return line.clone();
    }
    guest.wait_for(pattern, STEP).unwrap()
}

/// The generation `chatty` announces on this boot's console.
fn running_generation(guest: &mut Guest) -> u32 {
    let line = line_with(guest, "chatty | manifest-gen=");
    line.rsplit('=').next().unwrap().trim().parse().unwrap()
}

#[test]
fn power_cuts_during_apply_leave_the_old_or_the_new_manifest_and_readable_logs() {
    let demo = berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"));
    let image = berth_tests::overlay_image(
        &demo,
        &[("etc/berth/manifest.toml", apply_manifest(0).as_bytes())],
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let disk = state_disk(work.path(), 256);
    let mut port = free_port().unwrap();

    // The generation saved on the state disk (0: the image's own manifest).
    let mut saved = 0;
    let mut guest = boot(image.path(), &disk, vec![(port, API_PORT)]);
    guest.wait_for("berth: ready", BOOT).unwrap();
    assert_eq!(running_generation(&mut guest), saved);
    // Cut the power right after the request is sent, while berthd validates, and later on.
    for (n, delay_ms) in [0u64, 300, 1500].into_iter().enumerate() {
        // chatty has rotated its log at least once.
        line_with(&mut guest, "chatty | line 300 ");
        let next = u32::try_from(n).unwrap() + 1;
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(request("POST", "/v1/apply", &apply_manifest(next)).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let console = guest.power_cut();

        drop(stream);
        // Whatever the cut interrupted, the next boot runs the old or the new manifest. (A
        // fresh API port: the old one may still be held by the cut connection.)
        port = free_port().unwrap();
        guest = boot(image.path(), &disk, vec![(port, API_PORT)]);
        guest.wait_for("berth: agent started", BOOT).unwrap();
        let source = guest.wait_for("berth: manifest source=", STEP).unwrap();
        guest.wait_for("berth: ready", STEP).unwrap();
        let running = running_generation(&mut guest);
        assert!(
            running == saved || running == next,
            "after a cut {delay_ms} ms into applying generation {next} over {saved}, \
             generation {running} runs ({source}); console before the cut:\n{}",
            console.join("\n")
        );
        assert_eq!(
            source,
            "berth: manifest source=state from=/var/lib/berth/manifest.toml"
        );
        saved = running;

        // The logs written up to the cut (and since) are readable and well formed.
        line_with(&mut guest, "chatty | line 100 ");
        let (status, body) = api(port, "GET", "/v1/containers/chatty/logs", "");
        assert_eq!(status, 200, "{body}");
        let text = dechunk(&body);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 100, "{text}");
        for line in &lines {
            assert!(well_formed_log_line(line), "malformed log line {line:?}");
        }
    }
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    assert!(guest.wait_exit(STEP).unwrap().success());

    // On the disk: the saved manifest is exactly the one running, whole (boot saves the one it
    // chose too, so generation 0 is there from the first boot); the log files are `log`,
    // `log.1`, `log.2` at most (log_files = 3).
    assert_eq!(debugfs(&disk, "cat /manifest.toml"), apply_manifest(saved));
    let logs: Vec<String> = ls(&disk, "/containers/chatty")
        .into_iter()
        .filter(|n| n.starts_with("log"))
        .collect();
    assert!(
        !logs.is_empty()
            && logs
                .iter()
                .all(|n| ["log", "log.1", "log.2"].contains(&n.as_str())),
        "{logs:?}"
    );
}

/// An OCI layout with busybox and `/big`, `size` bytes that do not compress; returns the
/// layout directory and the sha256 of `/big` as `sha256sum` prints it.
fn big_image(dir: &Path, size: usize) -> (PathBuf, String) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sha256sum", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    // xorshift64*: incompressible, and the same bytes every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    data.truncate(size);
    let big = rootfs.join("big");
    std::fs::write(&big, &data).unwrap();
    let sum = run(Command::new("sha256sum").arg(&big));
    let hash = sum.split_whitespace().next().unwrap().to_string();
    let layout = dir.join("layout");
    berth_agent::oci::write_layout(
        &rootfs,
        &layout,
        &berth_agent::oci::LayoutImage {
            entrypoint: Vec::new(),
            cmd: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: None,
            ref_name: Some("1".into()),
        },
    )
    .unwrap();
    (layout, hash)
}

/// N of a `... downloading DIGEST (N bytes)` line.
fn downloading_bytes(line: &str) -> u64 {
    line.rsplit_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(" bytes)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn power_cut_during_a_registry_pull_then_the_next_boot_runs_the_verified_image() {
    let work = tempfile::tempdir().unwrap();
    let (layout, hash) = big_image(work.path(), 48 << 20);
    let reg = berth_tests::registry::Registry::start(None).unwrap();
    reg.push(&layout, "faults/big:1").unwrap();
    let manifest = format!(
        r#"version = 1

[images]
big = {{ source = "registry:10.0.2.2:{port}/faults/big:1" }}

[registries."10.0.2.2:{port}"]
insecure = true

[containers.big]
image = "big"
command = ["/bin/sh", "-c", "sha256sum /big; trap 'exit 0' TERM; while true; do sleep 1; done"]
"#,
        port = reg.port()
    );
    let demo = berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"));
    let image =
        berth_tests::overlay_image(&demo, &[("etc/berth/manifest.toml", manifest.as_bytes())])
            .unwrap();
    let disk = state_disk(work.path(), 512);

    let mut guest = boot(image.path(), &disk, Vec::new());
    guest.wait_for("berth: agent started", BOOT).unwrap();
    // Wait for the big layer's download to start (the config blob comes first, small), then
    // cut the power a moment later.
    guest
        .wait_until("the big layer's download", STEP, |l| {
            l.contains("berth: image=big pull downloading") && downloading_bytes(l) > 1 << 20
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let first = guest.power_cut();
    assert!(
        !first.iter().any(|l| l.starts_with("big | ")),
        "the container ran before the cut: the cut came too late\n{}",
        first.join("\n")
    );

    let mut guest = boot(image.path(), &disk, Vec::new());
    guest.wait_for("berth: ready", BOOT).unwrap();
    let line = line_with(&mut guest, "big | ");
    assert_eq!(line, format!("big | {hash}  /big"));
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    assert!(guest.wait_exit(STEP).unwrap().success());
    let console = guest.console().join("\n");
    assert!(console.contains("berth: image=big pull "), "{console}");
    // Nothing half-done is left: the staging area and the download area are empty.
    assert_eq!(ls(&disk, "/store/tmp"), Vec::<String>::new());
    assert_eq!(ls(&disk, "/store/downloads"), Vec::<String>::new());
}

/// The disk-full test's manifest: `web` answers on its published port, `chatty` logs a line
/// every 0.2 s, `filler` (root, Docker's default capabilities) writes into its volume until
/// the disk refuses, and `hogger`, a container the operator gave CAP_SYS_RESOURCE, does the same
/// into another volume once `/data/go` appears there.
fn full_manifest(hostname: &str) -> String {
    format!(
        r#"version = 1

[host]
hostname = "{hostname}"
api_port = {API_PORT}
api_token = "{TOKEN}"

[images]
busybox = {{ source = "oci-layout:images/busybox" }}

[containers.web]
image = "busybox"
ports = ["8080:80"]
command = ["/bin/sh", "-c", "mkdir -p /www && echo still-serving > /www/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]

[containers.chatty]
image = "busybox"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]

[containers.filler]
image = "busybox"
command = ["/bin/sh", "-c", "dd if=/dev/zero of=/data/fill bs=64k 2>/dev/null; echo dd exit=$?; df -k /data | tail -n 1; trap 'exit 0' TERM; while true; do sleep 1; done"]

[[containers.filler.mounts]]
type = "volume"
source = "fill"
target = "/data"

[containers.hogger]
image = "busybox"
cap_add = ["SYS_RESOURCE"]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while [ ! -e /data/go ]; do sleep 0.5; done; dd if=/dev/zero of=/data/fill bs=64k 2>/dev/null; echo dd exit=$?; df -k /data | tail -n 1; while true; do sleep 1; done"]

[[containers.hogger.mounts]]
type = "volume"
source = "hog"
target = "/data"
"#
    )
}

/// Wait until `chatty`'s log file holds a tick later than `after`; returns that tick.
fn wait_for_logged_tick(port: u16, after: u64) -> u64 {
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let (status, body) = api(port, "GET", "/v1/containers/chatty/logs?tail=1", "");
        assert_eq!(status, 200, "{body}");
        let tick = dechunk(&body)
            .lines()
            .last()
            .and_then(|l| {
                l.rsplit_once("tick ")
                    .and_then(|(_, n)| n.trim().parse().ok())
            })
            .unwrap_or(0);
        if tick > after {
            return tick;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chatty's log stayed at tick {tick}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `ps` through the API answers and lists `web` running.
fn assert_ps_and_web(port: u16, web: u16) {
    let (status, body) = api(port, "GET", "/v1/containers", "");
    assert_eq!(status, 200, "{body}");
    let ps: serde_json::Value = serde_json::from_str(dechunk(&body).trim()).unwrap();
    let web_state = ps["containers"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == "web"))
        .map(|c| c["state"].clone());
    assert_eq!(
        web_state,
        Some(serde_json::Value::from("running")),
        "{body}"
    );
    let (code, page) = berth_tests::http_get(web, "/", STEP).unwrap();
    assert_eq!((code, page.trim()), (200, "still-serving"));
}

#[test]
fn a_full_state_disk_is_survived_and_recovered_from() {
    let demo = berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"));
    let image = berth_tests::overlay_image(
        &demo,
        &[("etc/berth/manifest.toml", full_manifest("full").as_bytes())],
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let disk = state_disk(work.path(), 96);
    let port = free_port().unwrap();
    let web = free_port().unwrap();
    let mut guest = boot(image.path(), &disk, vec![(port, API_PORT), (web, 8080)]);
    guest.wait_for("berth: ready", BOOT).unwrap();

    // The filler, root in its container but without CAP_SYS_RESOURCE, is refused before the
    // root reserve: berthd (with it) still has room. Its logs, ps, the web container and
    // apply (which saves the manifest) go on.
    let dd = line_with(&mut guest, "filler | dd exit=");
    assert_eq!(dd, "filler | dd exit=1");
    let tick = wait_for_logged_tick(port, 0);
    wait_for_logged_tick(port, tick);
    assert_ps_and_web(port, web);
    assert!(
        !guest
            .console()
            .iter()
            .any(|l| l.contains("cannot write its log")),
        "berthd could not write with the root reserve left:\n{}",
        guest.console().join("\n")
    );
    let (status, body) = api(port, "POST", "/v1/apply", &full_manifest("applied"));
    assert_eq!(status, 200, "apply on a disk full for containers: {body}");

    // A container the operator gave CAP_SYS_RESOURCE takes the reserve too: now berthd cannot
    // write either. It says so, keeps running, and refuses an apply it cannot save.
    let (code, _) = exec(port, "hogger", &["/bin/touch", "/data/go"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        line_with(&mut guest, "hogger | dd exit="),
        "hogger | dd exit=1"
    );
    let error = line_with(
        &mut guest,
        "berth: error: container=chatty: cannot write its log",
    );
    assert!(error.contains("No space left on device"), "{error}");
    let (status, body) = api(port, "POST", "/v1/apply", &full_manifest("again"));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    line_with(&mut guest, "berth: error: apply: cannot save the manifest");
    assert_ps_and_web(port, web);

    // The operator frees space: the log is written again, and said so; apply works again.
    let (code, _) = exec(port, "hogger", &["/bin/rm", "/data/fill"]);
    assert_eq!(code, Some(0));
    line_with(
        &mut guest,
        "berth: container=chatty: its log is written again",
    );
    let (status, body) = api(port, "POST", "/v1/apply", &full_manifest("again"));
    assert_eq!(status, 200, "{body}");
    assert_ps_and_web(port, web);

    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    assert!(guest.wait_exit(STEP).unwrap().success());
    let console = guest.console().join("\n");
    for bad in ["panicked", "agent exited", "Kernel panic"] {
        assert!(!console.contains(bad), "console shows {bad:?}:\n{console}");
    }
    assert_eq!(debugfs(&disk, "cat /manifest.toml"), full_manifest("again"));
}

/// (path, mode, data) of every member of a gzip'd newc initramfs (concatenated archives
/// included).
fn initramfs_members(path: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    let align = |n: usize| (n + 3) & !3;
    let mut members = Vec::new();
    let mut at = 0;
    while at + 110 <= raw.len() {
        if &raw[at..at + 6] != b"070701" {
            // Zero padding between concatenated archives.
            at += 1;
            continue;
        }
        let field = |i: usize| hex(&raw[at + 6 + i * 8..at + 14 + i * 8]);
        let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
        let name_at = at + 110;
        let name = String::from_utf8_lossy(&raw[name_at..name_at + namesize - 1]).into_owned();
        let data_at = align(name_at + namesize);
        let data = raw[data_at..data_at + size].to_vec();
        at = align(data_at + size);
        if name != "TRAILER!!!" {
            members.push((name, mode, data));
        }
    }
    members
}

/// Listening TCP ports (`st` 0A) of `/proc/net/tcp`-style text.
fn tcp_listening_ports(text: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = text
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            let port = local.rsplit_once(':')?.1;
            (*state == "0A").then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[test]
fn the_host_has_no_shell_listens_only_for_its_api_and_confines_containers() {
    let demo = berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"));
    // The image: berth's own three programs are the only executables; no shell, SSH daemon or
    // package manager under any name (container image layouts are data, never run on the host).
    let members = initramfs_members(&demo.join("initramfs.img"));
    assert!(members.iter().any(|(n, _, _)| n == "usr/bin/berthd"));
    let host_files = members
        .iter()
        .filter(|(name, _, _)| !name.starts_with("etc/berth/images/"));
    for (name, mode, data) in host_files {
        let regular = mode & 0o170_000 == 0o100_000;
        let program = regular && (mode & 0o111 != 0 || data.starts_with(b"\x7fELF"));
        if program {
            assert!(
                ["init", "usr/bin/berthd", "usr/bin/berthctl"].contains(&name.as_str()),
                "unexpected program {name} in the initramfs"
            );
        }
        let base = name.rsplit('/').next().unwrap_or_default();
        for banned in [
            "sh", "bash", "ash", "dash", "busybox", "sshd", "ssh", "dropbear", "apt", "apt-get",
            "dpkg", "rpm", "yum", "dnf", "apk", "opkg", "pip",
        ] {
            assert_ne!(base, banned, "{name} in the initramfs");
        }
    }

    let manifest = format!(
        r#"version = 1

[host]
api_port = {API_PORT}
api_token = "{TOKEN}"

[images]
busybox = {{ source = "oci-layout:images/busybox" }}

[containers.web]
image = "busybox"
ports = ["8080:80"]
command = ["/bin/sh", "-c", "mkdir -p /www && echo still-serving > /www/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]

# Shares the host's network namespace: its /proc/net is the host's.
[containers.probe]
image = "busybox"
network = "host"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]

# Everything by default.
[containers.plain]
image = "busybox"
command = ["/bin/sh", "-c", "echo \"status: $(grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\t\n' '  ')\""]
"#
    );
    let image =
        berth_tests::overlay_image(&demo, &[("etc/berth/manifest.toml", manifest.as_bytes())])
            .unwrap();
    let port = free_port().unwrap();
    let web = free_port().unwrap();
    let mut guest = Guest::boot(&BootOptions {
        image: image.path().to_path_buf(),
        limit: QEMU_LIMIT,
        forwards: vec![(port, API_PORT), (web, 8080)],
        append: String::new(),
    })
    .unwrap();
    // PID 1 seals the OS root once the state directory has its own mount.
    guest
        .wait_for("berth: root filesystem is read-only", BOOT)
        .unwrap();
    guest.wait_for("berth: ready", STEP).unwrap();
    let status = line_with(&mut guest, "plain | status:");
    let status = status.split_whitespace().collect::<Vec<_>>().join(" ");
    for field in ["CapEff: 00000000a80425fb", "NoNewPrivs: 1", "Seccomp: 2"] {
        assert!(status.contains(field), "{status}");
    }

    // Nothing listens on the host but the API: published ports are forwarded by nftables,
    // not by a listening proxy, and there is no SSH or other daemon.
    let (code, tcp) = exec(
        port,
        "probe",
        &["/bin/cat", "/proc/net/tcp", "/proc/net/tcp6"],
    );
    assert_eq!(code, Some(0));
    assert_eq!(tcp_listening_ports(&tcp), [API_PORT], "{tcp}");
    let (code, udp) = exec(
        port,
        "probe",
        &["/bin/cat", "/proc/net/udp", "/proc/net/udp6"],
    );
    assert_eq!(code, Some(0));
    // The one UDP socket is berthd's DHCP client (port 68), which keeps the host's lease.
    let udp_ports: Vec<u16> = udp
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|local| local.rsplit_once(':'))
        .filter_map(|(_, port)| u16::from_str_radix(port, 16).ok())
        .collect();
    assert_eq!(udp_ports, [68], "{udp}");
    let (code, page) = berth_tests::http_get(web, "/", STEP).unwrap();
    assert_eq!((code, page.trim()), (200, "still-serving"));

    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
    assert!(guest.wait_exit(STEP).unwrap().success());
}
