//! Boot test: resource limits inside the real image (pure cgroup v2, controllers enabled by
//! PID 1). A container over its memory limit is OOM-killed and reported `reason=oom`, a fork
//! loop stops at `pids`, a fork storm of short-lived orphans leaves no zombie on the host, a
//! container reads its own limits through its cgroup namespace and its rlimits, and each
//! container is stopped with its own signal and timeout. Meanwhile a well-behaved container
//! keeps answering on its published port, `ps` answers and berthd's memory stays bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use berth_tests::{BootOptions, Guest};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(90);
const QEMU_LIMIT: Duration = Duration::from_secs(400);

const TOKEN: &str = "limits-test-token-0123456789";

const MANIFEST: &str = r#"version = 1

[host]
api_port = 7070
api_token = "limits-test-token-0123456789"

[images]
busybox = { source = "oci-layout:images/busybox" }

# The well-behaved neighbour of the runaways below.
[containers.steady]
image = "busybox"
ports = ["8080:80"]
command = ["/bin/sh", "-c", "mkdir -p /www && echo steady > /www/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]

# A fork storm whose children exit at once: `(true &)` orphans each `true` to the container's
# init (this shell); bounded by its pids limit. Leaves no zombie behind.
[containers.storm]
image = "busybox"
pids = 16
command = ["/bin/sh", "-c", "i=0; while [ $i -lt 400 ]; do (true &) 2>/dev/null; i=$((i+1)); done; echo storm-done"]

# Reads 64 MB into a shell variable: far over its 16 MiB.
[containers.hog]
image = "busybox"
memory = "16Mi"
command = ["/bin/sh", "-c", "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived ${#x}"]

# Forks until pids.max refuses; only builtins run afterwards (no pid left for `cat`).
[containers.forker]
image = "busybox"
pids = 10
command = ["/bin/sh", "-c", """
sh -c 'i=0; while [ $i -lt 40 ]; do sleep 60 & i=$((i+1)); done; echo no-limit-hit'
echo "fork-loop-exit=$?"
read e < /sys/fs/cgroup/pids.events; echo "pids.events: $e"
read m < /sys/fs/cgroup/pids.max; echo "pids.max=$m"
"""]

# Reads its own limits, then waits for its stop signal (SIGINT, not SIGTERM).
[containers.limited]
image = "busybox"
memory = "32Mi"
cpus = 0.5
pids = 64
rlimits = { nofile = [100, 200] }
stop_signal = "SIGINT"
stop_timeout = "20s"
command = ["/bin/sh", "-c", """
read m < /sys/fs/cgroup/memory.max; read c < /sys/fs/cgroup/cpu.max; read p < /sys/fs/cgroup/pids.max
echo "limits: memory.max=$m cpu.max=$c pids.max=$p"
echo "cgroup: $(cat /proc/self/cgroup)"
echo "rlimits: nofile=$(ulimit -n) hard=$(ulimit -Hn)"
trap 'echo got-sigint; exit 5' INT
echo waiting
while true; do sleep 0.2; done
"""]

# Isolation and process security inside the real image, in a user namespace.
[containers.isolated]
image = "busybox"
userns = true
command = ["/bin/sh", "-c", """
echo "uid_map: $(cat /proc/self/uid_map)"
echo "status: $(grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\t\n' '  ')"
echo "pids: $(ls /proc | grep -c '^[0-9]')"
echo "hostname: $(cat /proc/sys/kernel/hostname)"
mount -t tmpfs none /mnt 2>/dev/null && echo "mount: allowed" || echo "mount: refused"
echo probe > /written && echo "rootfs: writable as $(id -u)"
"""]

# Ignores SIGTERM (PID 1 without a trap): killed after its 1 s stop_timeout.
[containers.stubborn]
image = "busybox"
stop_timeout = "1s"
command = ["/bin/sleep", "100000"]
"#;

#[test]
fn limits_are_enforced_inside_the_image() {
    let demo = berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"));
    let image =
        berth_tests::overlay_image(&demo, &[("etc/berth/manifest.toml", MANIFEST.as_bytes())])
            .unwrap();
    let api = berth_tests::free_port().unwrap();
    let web = berth_tests::free_port().unwrap();
    let mut guest = Guest::boot(&BootOptions {
        image: image.path().to_path_buf(),
        limit: QEMU_LIMIT,
        forwards: vec![(api, 7070), (web, 8080)],
        append: String::new(),
    })
    .unwrap();
    guest.wait_for("berth: agent started", BOOT).unwrap();

    // memory: the OOM killer ends the hog, and the exit line says so.
    let hog = line_with(&mut guest, "berth: container=hog state=exited");
    assert_eq!(hog, "berth: container=hog state=exited code=137 reason=oom");

    // pids: the loop hits pids.max = 10.
    line_with(&mut guest, "forker | pids.max=");
    line_with(&mut guest, "berth: container=forker state=exited");

    // The container's own cgroup (its namespace root) carries its limits.
    let limits = line_with(&mut guest, "limited | limits:");
    assert!(
        limits.ends_with("limits: memory.max=33554432 cpu.max=50000 100000 pids.max=64"),
        "{limits}"
    );
    let cgroup = line_with(&mut guest, "limited | cgroup:");
    assert!(cgroup.ends_with("cgroup: 0::/"), "{cgroup}");
    let rlimits = line_with(&mut guest, "limited | rlimits:");
    assert!(
        rlimits.ends_with("rlimits: nofile=100 hard=200"),
        "{rlimits}"
    );
    line_with(&mut guest, "limited | waiting");

    // Isolation: own user (mapped), PID and UTS namespaces; Docker's capabilities,
    // no_new_privs and the seccomp filter.
    let uid_map = line_with(&mut guest, "isolated | uid_map:");
    assert_eq!(
        uid_map.split_whitespace().rev().take(3).collect::<Vec<_>>(),
        ["65536", "100000", "0"],
        "{uid_map}"
    );
    let status = line_with(&mut guest, "isolated | status:");
    for field in ["CapEff: 00000000a80425fb", "NoNewPrivs: 1", "Seccomp: 2"] {
        assert!(
            status
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(field),
            "{status}"
        );
    }
    let pids = line_with(&mut guest, "isolated | pids:");
    let visible: u32 = pids.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(visible <= 5, "the container sees host processes: {pids}");
    assert!(line_with(&mut guest, "isolated | hostname:").ends_with("hostname: isolated"));
    assert!(line_with(&mut guest, "isolated | mount:").ends_with("mount: refused"));
    assert!(line_with(&mut guest, "isolated | rootfs:").ends_with("rootfs: writable as 0"));
    line_with(&mut guest, "berth: container=stubborn state=running");

    // After the runaways: ps answers, the neighbour serves, berthd's memory is bounded and the
    // fork storm left no zombie anywhere on the host (polled: a process that just exited is a
    // zombie for a moment until its parent reaps it).
    line_with(&mut guest, "storm | storm-done");
    line_with(&mut guest, "berth: container=storm state=exited code=0");
    let (code, page) = berth_tests::http_get(web, "/", STEP).unwrap();
    assert_eq!((code, page.trim()), (200, "steady"));
    let deadline = std::time::Instant::now() + STEP;
    let ps = loop {
        let ps = ps(api);
        if ps["zombies"] == 0 || std::time::Instant::now() > deadline {
            break ps;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(ps["zombies"], 0, "{ps}");
    assert!(ps["processes"].as_u64().unwrap() > 0, "{ps}");
    let steady = ps["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "steady")
        .unwrap();
    assert_eq!(steady["state"], "running", "{ps}");
    let rss = ps["agent_rss_kib"].as_u64().unwrap();
    assert!(rss < 64 * 1024, "berthd uses {rss} KiB");

    // Stop: `limited` gets SIGINT (its trap answers), `stubborn` the SIGKILL after 1 s.
    guest.power_button().unwrap();
    line_with(&mut guest, "berth: container=limited state=exited code=5");
    line_with(
        &mut guest,
        "berth: container=stubborn state=exited code=137",
    );
    guest.wait_for("berth: poweroff", STEP).unwrap();
    assert!(guest.wait_exit(STEP).unwrap().success());

    let console = guest.console().join("\n");
    for bad in [
        "Kernel panic",
        "panicked at",
        "survived",
        "no-limit-hit",
        "berth: warning: cgroup",
    ] {
        assert!(!console.contains(bad), "console shows {bad:?}:\n{console}");
    }
    let fork_exit = line_after(&console, "forker | fork-loop-exit=");
    assert_ne!(fork_exit, "0", "the fork loop was not stopped:\n{console}");
    let events = line_after(&console, "forker | pids.events: ");
    let count: u64 = events
        .strip_prefix("max ")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("pids.events line {events:?}"));
    assert!(count > 0, "pids.max was never hit: {events}");
    assert!(console.contains("forker | pids.max=10"), "{console}");
    assert!(console.contains("limited | got-sigint"), "{console}");
    // Only the hog was OOM-killed.
    assert_eq!(console.matches("reason=oom").count(), 1, "{console}");
}

/// `GET /v1/containers` through the forwarded TCP API.
fn ps(port: u16) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(STEP)).unwrap();
    write!(
        stream,
        "GET /v1/containers HTTP/1.0\r\nHost: berth\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{response}"
    );
    let body = response.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The first console line containing `pattern`, whether it already went by or is yet to come
/// (the containers run concurrently, so their lines interleave in any order).
fn line_with(guest: &mut Guest, pattern: &str) -> String {
    if let Some(line) = guest.console().iter().find(|l| l.contains(pattern)) {
        return line.clone();
    }
    guest.wait_for(pattern, STEP).unwrap()
}

/// The rest of the first console line containing `prefix`, after it.
fn line_after<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no line with {prefix:?}:\n{console}"))
}
