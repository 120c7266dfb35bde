//! Host integration test of berthd's API against hostile clients: malformed HTTP and JSON,
//! wrong types, oversized bodies, unknown containers, routes and methods, missing or wrong
//! tokens on TCP, clients that connect and send nothing or trickle a request, and many
//! concurrent `apply` calls. berthd must answer each with a clear 4xx, never crash, and end
//! with exactly one of the applied manifests in force.
//!
//! Needs root and a static busybox at /bin/busybox (`apt-get install busybox-static`). berthd
//! runs in its own UTS and network namespaces, like runtime_berthd.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

mod support;

use berth_agent::oci::{write_layout, LayoutImage};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const TOKEN: &str = "hostile-token-0123456789";

fn busybox_image(dir: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "this test needs a static busybox at /bin/busybox to build a container image: \
         install it with `apt-get install -y busybox-static`"
    );
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    write_layout(
        &root,
        &dir.join("images/busybox"),
        &LayoutImage {
            entrypoint: vec![],
            cmd: vec!["/bin/sh".into()],
            env: vec![],
            working_dir: None,
            ref_name: Some("latest".into()),
        },
    )
    .unwrap();
}

struct Berthd {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    socket: PathBuf,
}

impl Berthd {
    fn start(manifest: &Path, state: &Path) -> Berthd {
        let socket = state.parent().unwrap().join("api.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berthd"));
        cmd.arg("--manifest")
            .arg(manifest)
            .arg("--state-dir")
            .arg(state)
            .arg("--api-socket")
            .arg(&socket)
            .args(["--remote-api-address", "127.0.0.1"])
            .arg("--run-dir")
            .arg(state.join("run"))
            .args(["--stop-grace", "0.5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        support::own_namespaces(&mut cmd, true);
        let mut child = cmd.spawn().unwrap();
        let lines = support::console_lines(&mut child);
        Berthd {
            child,
            lines,
            seen: Vec::new(),
            socket,
        }
    }

    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line {what} on berthd's console; saw:\n{}",
            self.seen.join("\n")
        );
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "berthd exited; console:\n{}",
            self.seen.join("\n")
        );
        let (status, _, body) = request(&self.socket, b"GET /v1/version HTTP/1.1\r\n", b"");
        assert_eq!(status, 200, "{body}");
    }

    /// A TCP connection to the remote API inside berthd's network namespace.
    fn tcp(&self, port: u16) -> std::net::TcpStream {
        let netns = fs::File::open(format!("/proc/{}/ns/net", self.child.id())).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on this short-lived thread only; `netns` is an open namespace fd.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&netns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `head` (request line and any headers, each ending in CRLF) plus `Connection: close`
/// and `body` with its length over `stream`; returns (status, head, body) of the answer.
fn exchange(mut stream: impl Read + Write, head: &[u8], body: &[u8]) -> (u16, String, String) {
    let mut req = head.to_vec();
    req.extend_from_slice(b"Host: berth\r\nConnection: close\r\n");
    if !body.is_empty() {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    stream.write_all(&req).unwrap();
    read_response(stream)
}

fn read_response(mut stream: impl Read) -> (u16, String, String) {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

fn connect(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

fn request(socket: &Path, head: &[u8], body: &[u8]) -> (u16, String, String) {
    exchange(connect(socket), head, body)
}

fn error_of(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"))
        .to_owned()
}

fn manifest_text(port: u16, containers: &[&str]) -> String {
    let mut text = format!(
        "version = 1\n\n[host]\napi_port = {port}\napi_token = \"{TOKEN}\"\n\n[images]\nbusybox = {{ source = \"oci-layout:images/busybox\" }}\n"
    );
    for name in containers {
        text.push_str(&format!(
            "\n[containers.{name}]\nimage = \"busybox\"\ncommand = [\"/bin/sleep\", \"1000\"]\n"
        ));
    }
    text
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A berthd running `web` (and the remote API on `port`), and the test's temp dir.
fn live_berthd() -> (tempfile::TempDir, Berthd, u16) {
    let tmp = tempfile::tempdir().unwrap();
    busybox_image(tmp.path());
    let port = free_port();
    let manifest = tmp.path().join("manifest.toml");
    fs::write(&manifest, manifest_text(port, &["web"])).unwrap();
    let mut berthd = Berthd::start(&manifest, &tmp.path().join("state"));
    berthd.wait_for("api", |l| l.starts_with("berth: api listening on /"));
    berthd.wait_for("web running", |l| {
        l.starts_with("berth: container=web state=running")
    });
    (tmp, berthd, port)
}

#[test]
fn malformed_requests_get_clear_errors_and_berthd_stays_up() {
    let (_tmp, mut berthd, port) = live_berthd();
    let sock = berthd.socket.clone();

    // Not HTTP at all: hyper answers 400 and closes.
    let mut raw = connect(&sock);
    raw.write_all(b"HELLO THERE\r\n\r\n").unwrap();
    assert_eq!(read_response(raw).0, 400);
    let mut raw = connect(&sock);
    raw.write_all(&[0xff, 0x00, 0xfe, b'\r', b'\n', b'\r', b'\n'])
        .unwrap();
    assert_eq!(read_response(raw).0, 400);

    // (request head, body, status, fragment of the error message)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "POST /v1/containers/web/exec HTTP/1.1\r\n",
            b"{not json".to_vec(),
            400,
            "bad exec request",
        ),
        (
            "POST /v1/containers/web/exec HTTP/1.1\r\n",
            br#"{"args": "ls"}"#.to_vec(),
            400,
            "invalid type: string \"ls\", expected a sequence",
        ),
        (
            "POST /v1/containers/web/exec HTTP/1.1\r\n",
            br#"{"args": ["true"], "timeout_ms": "soon"}"#.to_vec(),
            400,
            "invalid type",
        ),
        (
            "POST /v1/containers/web/exec HTTP/1.1\r\n",
            br#"{"args": ["true"], "privileged": true}"#.to_vec(),
            400,
            "unknown field `privileged`",
        ),
        (
            "POST /v1/containers/web/exec HTTP/1.1\r\n",
            br#"{"args": []}"#.to_vec(),
            400,
            "exec needs a command",
        ),
        (
            "POST /v1/containers/web/exec HTTP/1.1\r\n",
            b"".to_vec(),
            400,
            "bad exec request",
        ),
        (
            "POST /v1/apply HTTP/1.1\r\n",
            b"version = 1\n[host]\nhostname = 5\n".to_vec(),
            422,
            "manifest.toml:3:12: wrong type for `hostname`",
        ),
        (
            "POST /v1/apply HTTP/1.1\r\n",
            b"version = 1\n[host\n".to_vec(),
            422,
            "TOML syntax error",
        ),
        (
            "POST /v1/diff HTTP/1.1\r\n",
            b"version = 1\n[host]\nhostname = \"caf\xe9\"\n".to_vec(),
            400,
            "not valid UTF-8",
        ),
        (
            "GET /v1/containers/ghost HTTP/1.1\r\n",
            vec![],
            404,
            "no container named \"ghost\"",
        ),
        (
            "POST /v1/containers/ghost/stop HTTP/1.1\r\n",
            vec![],
            404,
            "no container named \"ghost\"",
        ),
        (
            "POST /v1/containers/ghost/start HTTP/1.1\r\n",
            vec![],
            404,
            "no container named \"ghost\"",
        ),
        (
            "GET /v1/containers/ghost/logs HTTP/1.1\r\n",
            vec![],
            404,
            "no container named \"ghost\"",
        ),
        (
            "POST /v1/containers/ghost/exec HTTP/1.1\r\n",
            br#"{"args": ["true"]}"#.to_vec(),
            404,
            "no container named \"ghost\"",
        ),
        (
            "GET /v1/containers/web/logs?tail=lots HTTP/1.1\r\n",
            vec![],
            400,
            "tail must be a number",
        ),
        (
            "POST /v1/containers/web/explode HTTP/1.1\r\n",
            vec![],
            404,
            "unknown action \"explode\"",
        ),
        (
            "GET /v1/nothing-here HTTP/1.1\r\n",
            vec![],
            404,
            "unknown request GET /v1/nothing-here",
        ),
        (
            "GET /v9/containers HTTP/1.1\r\n",
            vec![],
            404,
            "serves API version 1 under /v1/",
        ),
        (
            "DELETE /v1/containers HTTP/1.1\r\n",
            vec![],
            405,
            "DELETE is not allowed on /v1/containers; use GET",
        ),
        (
            "GET /v1/apply HTTP/1.1\r\n",
            vec![],
            405,
            "GET is not allowed on /v1/apply; use POST",
        ),
        (
            "PUT /v1/containers/web/stop HTTP/1.1\r\n",
            vec![],
            405,
            "use POST",
        ),
    ];
    for (head, body, status, fragment) in &cases {
        let (got, resp_head, resp_body) = request(&sock, head.as_bytes(), body);
        assert_eq!(got, *status, "{head}: {resp_head}\n{resp_body}");
        let message = error_of(&resp_body);
        assert!(
            message.contains(fragment),
            "{head}: {message:?} lacks {fragment:?}"
        );
        if *status == 405 {
            let allow = resp_head
                .lines()
                .find_map(|l| l.strip_prefix("allow: "))
                .unwrap_or_else(|| panic!("{head}: no Allow header in {resp_head}"));
            assert!(fragment.ends_with(allow), "{head}: Allow {allow}");
        }
    }

    // Oversized bodies: refused from Content-Length before the body is sent ...
    let mut big = connect(&sock);
    big.write_all(
        b"POST /v1/apply HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nContent-Length: 2097152\r\n\r\n",
    )
    .unwrap();
    let (status, _, body) = read_response(big);
    assert_eq!(status, 413);
    let message = error_of(&body);
    assert!(
        message.contains("2097152 bytes; the limit is 1048576 bytes (1 MiB)"),
        "{message}"
    );
    // ... and, without one (chunked), once more than the limit arrived.
    let mut chunked = connect(&sock);
    chunked
        .write_all(b"POST /v1/apply HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b'#'; 64 * 1024];
    for _ in 0..20 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if chunked.write_all(&frame).is_err() {
            break; // berthd answered and closed early
        }
    }
    let _ = chunked.write_all(b"0\r\n\r\n");
    let (status, _, body) = read_response(chunked);
    assert_eq!(status, 413, "{body}");
    assert!(
        error_of(&body).contains("more than 1048576 bytes"),
        "{body}"
    );
    // A refused apply changed nothing.
    let (status, _, body) = request(&sock, b"GET /v1/containers HTTP/1.1\r\n", b"");
    assert_eq!(status, 200);
    let ps: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ps["containers"][0]["name"], "web");
    assert_eq!(ps["containers"].as_array().unwrap().len(), 1);

    // The remote API: no token, a wrong one, the wrong scheme, then the right one.
    assert!(
        berthd.seen.iter().any(|l| l.contains("(token required)")),
        "{:?}",
        berthd.seen
    );
    for auth in [
        "",
        "Authorization: Bearer wrong-token-0123456789\r\n",
        "Authorization: Basic aG9zdGlsZQ==\r\n",
        "Authorization: Bearer \r\n",
    ] {
        let head = format!("GET /v1/containers HTTP/1.1\r\n{auth}");
        let (status, _, body) = exchange(berthd.tcp(port), head.as_bytes(), b"");
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(error_of(&body).contains("missing or wrong token"), "{body}");
    }
    // Even an unknown route or an oversized body is 401 before anything else.
    let (status, _, _) = exchange(berthd.tcp(port), b"DELETE /v1/apply HTTP/1.1\r\n", b"");
    assert_eq!(status, 401);
    let head = format!("GET /v1/containers HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n");
    let (status, _, body) = exchange(berthd.tcp(port), head.as_bytes(), b"");
    assert_eq!(status, 200, "{body}");

    berthd.assert_alive();
}

#[test]
fn idle_and_trickling_clients_are_disconnected() {
    let (_tmp, mut berthd, _port) = live_berthd();
    let sock = berthd.socket.clone();
    // Connects and sends nothing.
    let silent = connect(&sock);
    // Sends its request line one byte at a time and never finishes the head.
    let trickle = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            let mut stream = connect(&sock);
            for byte in b"GET /v1/containers HTTP/1.1\r\nX-Slow: ".iter().cycle() {
                if stream.write_all(&[*byte]).is_err() {
                    return true; // closed by berthd
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            false
        })
    };
    // Sends a complete head announcing a body that never comes.
    let mut stalled = connect(&sock);
    stalled
        .write_all(b"POST /v1/apply HTTP/1.1\r\nHost: berth\r\nContent-Length: 100\r\n\r\nversion")
        .unwrap();

    // Meanwhile berthd keeps serving others.
    berthd.assert_alive();

    // The silent client is disconnected: EOF (or a reset), not our 60 s read timeout.
    let mut silent = silent;
    let mut buf = [0u8; 256];
    match silent.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "berthd sent {:?}", &buf[..n]),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // The stalled body is answered 408.
    let (status, _, body) = read_response(stalled);
    assert_eq!(status, 408, "{body}");
    assert!(error_of(&body).contains("did not arrive within"), "{body}");
    let watchdog = Instant::now() + Duration::from_secs(120);
    while !trickle.is_finished() {
        assert!(
            Instant::now() < watchdog,
            "berthd never disconnected a client trickling its request head"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(trickle.join().unwrap());
    berthd.assert_alive();
}

#[test]
fn concurrent_applies_leave_exactly_one_manifest_in_force() {
    let (tmp, mut berthd, port) = live_berthd();
    let sock = berthd.socket.clone();
    let manifests: Vec<String> = (0..6)
        .map(|i| {
            let a = format!("a{i}");
            let b = format!("b{i}");
            manifest_text(port, &[a.as_str(), b.as_str()])
        })
        .collect();
    // Invalid ones race with them: an unknown key, a port clash, a missing image.
    let invalid = [
        manifest_text(port, &["x"]).replace("[containers.x]", "[containers.x]\ncolour = 1"),
        manifest_text(port, &["p", "q"])
            .replace("[containers.p]", "[containers.p]\nports = [\"8080:80\"]")
            .replace("[containers.q]", "[containers.q]\nports = [\"8080:81\"]"),
        manifest_text(port, &["m"]).replace("image = \"busybox\"", "image = \"nginx\""),
    ];
    let mut threads = Vec::new();
    for round in 0..2 {
        for (i, text) in manifests.iter().enumerate() {
            let sock = sock.clone();
            let text = text.clone();
            threads.push(std::thread::spawn(move || {
                let (status, _, body) =
                    request(&sock, b"POST /v1/apply HTTP/1.1\r\n", text.as_bytes());
                (format!("valid {i} round {round}"), status, body)
            }));
        }
        for (i, text) in invalid.iter().enumerate() {
            let sock = sock.clone();
            let text = text.clone();
            threads.push(std::thread::spawn(move || {
                let (status, _, body) =
                    request(&sock, b"POST /v1/apply HTTP/1.1\r\n", text.as_bytes());
                (format!("invalid {i} round {round}"), status, body)
            }));
        }
    }
    for thread in threads {
        let (what, status, body) = thread.join().unwrap();
        if what.starts_with("valid") {
            assert_eq!(status, 200, "{what}: {body}");
            let report: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(report["applied"], true, "{what}: {body}");
        } else {
            assert_eq!(status, 422, "{what}: {body}");
            assert!(error_of(&body).contains("manifest.toml:"), "{what}: {body}");
        }
    }
    berthd.assert_alive();

    // The saved manifest is exactly one of the valid ones, and `ps` runs exactly its
    // containers.
    let saved = fs::read_to_string(tmp.path().join("state/manifest.toml")).unwrap();
    let winner = manifests
        .iter()
        .position(|m| *m == saved)
        .unwrap_or_else(|| panic!("the saved manifest is none of the applied ones:\n{saved}"));
    let expected: BTreeSet<String> = [format!("a{winner}"), format!("b{winner}")].into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = request(&sock, b"GET /v1/containers HTTP/1.1\r\n", b"");
        assert_eq!(status, 200);
        let ps: serde_json::Value = serde_json::from_str(&body).unwrap();
        let names: BTreeSet<String> = ps["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        // Containers of earlier applies may still be stopping; in the end exactly the
        // saved manifest's containers run.
        let all_running = ps["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "running");
        if names == expected && all_running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ps never matched manifest #{winner}: {ps:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    berthd.assert_alive();
}
