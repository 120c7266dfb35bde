//! Boot test of berthd surviving `kill -9`: PID 1 starts it again and it re-adopts the
//! containers that kept running — same pid, no restart counted, and the log goes on from the
//! same output pipe. A debug container with `pid = "host"` sees the host's processes and
//! kills berthd; this is done twice to show it repeats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::{free_port, host_berthctl, overlay_image, BootOptions, Guest};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(90);
const QEMU_LIMIT: Duration = Duration::from_secs(480);
const TOKEN: &str = "adopt-test-token-0123456789";

const MANIFEST: &str = r#"version = 1

[host]
hostname = "adopt"
api_port = 7070
api_token = "adopt-test-token-0123456789"

[images]
busybox = { source = "oci-layout:images/busybox" }

[containers.ticker]
image = "busybox"
command = ["/bin/sh", "-c", "i=0; while true; do echo count $i; i=$((i+1)); sleep 0.2; done"]
restart = "always"

[containers.debug]
image = "busybox"
pid = "host"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#;

/// Prints the pid of berthd itself: the process named berthd whose parent is PID 1 (exec and
/// init shims are berthd too, but children of berthd).
const FIND_BERTHD: &str = "for d in /proc/[0-9]*; do \
    if [ \"$(cat $d/comm 2>/dev/null)\" = berthd ] && grep -q '^PPid:[[:space:]]*1$' $d/status 2>/dev/null; \
    then echo ${d#/proc/}; fi; done";

struct Ctl {
    exe: PathBuf,
    api: u16,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(&self.exe)
            .args([
                "--host",
                &format!("127.0.0.1:{}", self.api),
                "--token",
                TOKEN,
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `(pid, restarts)` of a running container, from `ps --json`.
    fn status(&self, name: &str) -> (i64, i64) {
        let (code, out, err) = self.run(&["ps", "--json"]);
        assert_eq!(code, 0, "{err}");
        let ps: serde_json::Value = serde_json::from_str(&out).unwrap();
        let c = ps["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .clone();
        assert_eq!(c["state"], "running", "{out}");
        (c["pid"].as_i64().unwrap(), c["restarts"].as_i64().unwrap())
    }

    /// The counter values in ticker's log.
    fn counts(&self) -> BTreeSet<u64> {
        let (code, out, err) = self.run(&["logs", "ticker"]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .filter_map(|l| {
                l.rsplit_once("count ")
                    .and_then(|(_, n)| n.trim().parse().ok())
            })
            .collect()
    }

    /// Wait (bounded) until ticker's log holds a counter above `above`.
    fn counts_beyond(&self, above: u64) -> BTreeSet<u64> {
        let deadline = Instant::now() + STEP;
        loop {
            let counts = self.counts();
            if counts.last().is_some_and(|&max| max > above) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "ticker's log did not grow past {above}: {counts:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Kill berthd from the debug container and check everything was re-adopted.
fn kill_berthd_and_check(guest: &mut Guest, ctl: &Ctl, ticker_pid: i64) {
    let (code, out, err) = ctl.run(&["exec", "debug", "--", "/bin/sh", "-c", FIND_BERTHD]);
    assert_eq!(code, 0, "{err}");
    let pids: Vec<i64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(
        pids.len(),
        1,
        "berthd pids seen from the debug container: {out:?}"
    );
    let berthd = pids[0];

    let before = ctl.counts();
    let last_before = *before.last().expect("ticker logged nothing");
    // berthd dies while serving this request: the answer may never come.
    let kill = format!("kill -9 {berthd}");
    let _ = ctl.run(&["exec", "debug", "--", "/bin/sh", "-c", &kill]);

    guest.wait_for("agent exited code=137", STEP).unwrap();
    guest.wait_for("berth: agent started", STEP).unwrap();
    guest
        .wait_for(
            &format!("berth: container=ticker state=running pid={ticker_pid} adopted"),
            STEP,
        )
        .unwrap();
    // (The API listens before containers are adopted.)
    let started_again = guest
        .console()
        .iter()
        .rev()
        .take_while(|l| !l.contains("berth: agent started"))
        .any(|l| l.contains("container=ticker state=created"));
    assert!(!started_again, "ticker was started again");

    // Same process, no restart counted.
    assert_eq!(ctl.status("ticker"), (ticker_pid, 0));
    let (code, out, err) = ctl.run(&["exec", "debug", "--", "/bin/sh", "-c", FIND_BERTHD]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(out.trim().parse::<i64>().unwrap(), berthd);

    // The log goes on from the same pipe: values keep coming after the kill, and none is
    // missing beyond the line berthd may have been writing when it was killed.
    let after = ctl.counts_beyond(last_before + 10);
    let max = *after.last().unwrap();
    let missing: Vec<u64> = (0..=max).filter(|n| !after.contains(n)).collect();
    assert!(
        missing.len() <= 1,
        "counter values missing from the log: {missing:?}"
    );
}

#[test]
fn berthd_killed_twice_readopts_its_containers() {
    let berthctl = host_berthctl().unwrap_or_else(|e| panic!("{e}"));
    let demo = berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"));
    let image = overlay_image(&demo, &[("etc/berth/manifest.toml", MANIFEST.as_bytes())]).unwrap();
    let api = free_port().unwrap();
    let mut guest = Guest::boot(&BootOptions {
        image: image.path().to_path_buf(),
        limit: QEMU_LIMIT,
        forwards: vec![(api, 7070)],
        append: String::new(),
    })
    .unwrap();
    guest.wait_for("berth: agent started", BOOT).unwrap();
    guest
        .wait_for("berth: api listening on tcp 0.0.0.0:7070", STEP)
        .unwrap();
    guest.wait_for("berth: ready containers=2/2", STEP).unwrap();
    let ctl = Ctl { exe: berthctl, api };
    let (ticker_pid, restarts) = ctl.status("ticker");
    assert_eq!(restarts, 0);
    ctl.counts_beyond(5);

    kill_berthd_and_check(&mut guest, &ctl, ticker_pid);
    kill_berthd_and_check(&mut guest, &ctl, ticker_pid);
}
