//! Boot tests of the supervisor and its API: restarts with growing delays while a healthy
//! container keeps serving, `depends_on` healthy ordering, and `berthctl` on this machine
//! driving the guest through its remote API (forwarded by QEMU): ps, logs -f, exec, apply
//! (unchanged containers keep their pid), shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_tests::{free_port, host_berthctl, http_get, overlay_image, BootOptions, Guest};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(90);
const QEMU_LIMIT: Duration = Duration::from_secs(420);
const TOKEN: &str = "boot-test-token-0123456789";

const MANIFEST: &str = r#"version = 1

[host]
hostname = "sup"
api_port = 7070
api_token = "boot-test-token-0123456789"

[images]
busybox = { source = "oci-layout:images/busybox" }

[containers.web]
image = "busybox"
command = ["/bin/sh", "-c", "mkdir -p /www && echo 'hello from web' > /www/index.html; trap 'kill $h; exit 0' TERM; httpd -f -p 8080 -h /www & h=$!; wait $h"]
restart = "always"
ports = ["8080:8080"]
healthcheck = { type = "http", port = 8080, path = "/", interval = "1s" }

[containers.crash]
image = "busybox"
command = ["/bin/sh", "-c", "echo crashing; exit 1"]
restart = "always"

[containers.app]
image = "busybox"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
depends_on = { web = "healthy" }

[containers.old]
image = "busybox"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#;

fn demo_image() -> PathBuf {
    berth_tests::demo_image().unwrap_or_else(|e| panic!("{e}"))
}

struct Ctl {
    exe: PathBuf,
    api: u16,
}

impl Ctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "--host",
            &format!("127.0.0.1:{}", self.api),
            "--token",
            TOKEN,
        ])
        .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ps(&self) -> serde_json::Value {
        let (code, out, err) = self.run(&["ps", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    fn pid(&self, name: &str) -> Option<i64> {
        self.ps()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["pid"].as_i64())
    }
}

/// The console index of the first line containing `pattern` (waiting for it if needed).
fn line_index(guest: &mut Guest, pattern: &str) -> usize {
    if let Some(i) = guest.console().iter().position(|l| l.contains(pattern)) {
        return i;
    }
    guest.wait_for(pattern, STEP).unwrap();
    guest
        .console()
        .iter()
        .position(|l| l.contains(pattern))
        .unwrap()
}

#[test]
fn supervisor_restarts_orders_and_answers_berthctl_from_outside() {
    let berthctl = host_berthctl().unwrap_or_else(|e| panic!("{e}"));
    let image = overlay_image(
        &demo_image(),
        &[("etc/berth/manifest.toml", MANIFEST.as_bytes())],
    )
    .unwrap();
    let (web_port, api_port) = (free_port().unwrap(), free_port().unwrap());
    let mut guest = Guest::boot(&BootOptions {
        image: image.path().to_path_buf(),
        limit: QEMU_LIMIT,
        forwards: vec![(web_port, 8080), (api_port, 7070)],
        append: String::new(),
    })
    .unwrap();
    guest.wait_for("berth: agent started", BOOT).unwrap();
    guest
        .wait_for("berth: api listening on tcp 0.0.0.0:7070", STEP)
        .unwrap();

    // depends_on healthy: app waits until web's HTTP check passed.
    let pending = line_index(
        &mut guest,
        "berth: container=app state=pending waiting=web condition=healthy",
    );
    let healthy = line_index(&mut guest, "berth: container=web health=healthy");
    let app_running = line_index(&mut guest, "berth: container=app state=running");
    assert!(
        pending < healthy && healthy < app_running,
        "{:#?}",
        guest.console()
    );

    // The crash loop backs off 100, 200, 400, 800, 1600 ms ...
    let mut previous = 0;
    for delay in [100, 200, 400, 800, 1600] {
        let at = line_index(
            &mut guest,
            &format!("berth: container=crash state=restarting delay_ms={delay} "),
        );
        assert!(at > previous, "delays out of order: {:#?}", guest.console());
        previous = at;
    }
    // ... while web keeps serving and app keeps running.
    let (status, body) = http_get(web_port, "/", Duration::from_secs(20)).unwrap();
    assert_eq!((status, body.trim()), (200, "hello from web"));

    let ctl = Ctl {
        exe: berthctl,
        api: api_port,
    };
    let ps = ctl.ps();
    let state = |name: &str| {
        ps["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(state("web")["state"], "running");
    assert_eq!(state("web")["health"], "healthy");
    assert_eq!(state("web")["restarts"], 0);
    assert_eq!(state("app")["state"], "running");
    assert!(state("crash")["restarts"].as_u64().unwrap() >= 5, "{ps:#}");

    // logs -f streams new lines.
    let mut follow = ctl
        .command(&["logs", "-f", "--tail", "0", "app"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(follow.stdout.take().unwrap());
    let mut numbers = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains(" stdout tick "), "{line:?}");
        numbers.push(
            line.trim()
                .rsplit(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(numbers[1], numbers[0] + 1);

    // exec runs inside the container (its hostname and files).
    let (code, out, err) = ctl.run(&[
        "exec",
        "web",
        "--",
        "/bin/sh",
        "-c",
        "hostname; cat /www/index.html",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "web\nhello from web\n");

    // apply: crash changed, old removed, extra added; web and app keep their pid.
    let (web_pid, app_pid) = (ctl.pid("web").unwrap(), ctl.pid("app").unwrap());
    let next = MANIFEST
        .replace(
            "echo crashing; exit 1\"]\nrestart = \"always\"",
            "echo fixed\"]\nrestart = \"no\"",
        )
        .replace("[containers.old]", "[containers.extra]");
    assert!(next.contains("echo fixed") && next.contains("[containers.extra]"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("next.toml");
    std::fs::write(&file, &next).unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = ctl.run(&["diff", file]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "+ extra (add)\n~ crash (replace)\n- old (remove)\n= app (keep)\n= web (keep)\n3 changes to apply\n"
    );
    let (code, out, err) = ctl.run(&["apply", file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("applied 3 changes\n"), "{out}");
    // (Each may already have gone by: line_index looks at the whole console.)
    line_index(&mut guest, "berth: container=old state=removed");
    line_index(&mut guest, "berth: container=extra state=running");
    line_index(&mut guest, "crash | fixed");
    assert_eq!(ctl.pid("web"), Some(web_pid));
    assert_eq!(ctl.pid("app"), Some(app_pid));

    // shutdown through the API: PID 1 stops everything and powers off.
    let (code, _, err) = ctl.run(&["shutdown"]);
    assert_eq!(code, 0, "{err}");
    guest.wait_for("berth: poweroff", STEP).unwrap();
    let status = guest.wait_exit(STEP).unwrap();
    assert!(status.success(), "{status}");
}
