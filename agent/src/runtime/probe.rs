//! One health check, run to completion within its timeout: connect to a TCP port, ask an HTTP
//! path for a status, or run a command in the container (through the exec shim). Called on a
//! probe thread, never on the supervisor's loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::exec::{self, ExecConfig, Reaped};
use super::launch::InitProgram;
use crate::manifest::Probe;

/// Where TCP and HTTP checks connect: the container's bridge address, or loopback for a
/// container on the host's network (`address` is `None`).
pub fn target(address: Option<std::net::Ipv4Addr>, port: u16) -> SocketAddr {
    SocketAddr::from((address.unwrap_or(std::net::Ipv4Addr::LOCALHOST), port))
}

/// Run `probe` against the container whose exec settings are `exec`; true when it passed.
pub fn check(
    probe: &Probe,
    address: Option<std::net::Ipv4Addr>,
    timeout: Duration,
    shim: &InitProgram,
    exec: &ExecConfig,
    reaped: &Reaped,
) -> bool {
    match probe {
        Probe::Tcp { port } => TcpStream::connect_timeout(&target(address, *port), timeout).is_ok(),
        Probe::Http { port, path, status } => {
            http_status(target(address, *port), path, timeout).is_some_and(|s| s == *status)
        }
        Probe::Exec { command } => {
            let cfg = ExecConfig {
                args: command.clone(),
                ..exec.clone()
            };
            run_with_timeout(shim, &cfg, timeout, reaped)
        }
    }
}

/// `GET path` over HTTP/1.0; the answer's status code.
pub fn http_status(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left)).ok()?;
    stream.set_write_timeout(Some(left)).ok()?;
    // One write: a server may read the request head in a single call.
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: berth-healthcheck\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    parse_status(&head[..got])
}

/// The status of an HTTP status line (`HTTP/1.x NNN ...`).
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12.min(head.len()))?).ok()?;
    let rest = text.strip_prefix("HTTP/")?;
    let code = rest.split_whitespace().nth(1)?;
    code.parse().ok()
}

fn run_with_timeout(
    shim: &InitProgram,
    cfg: &ExecConfig,
    timeout: Duration,
    reaped: &Reaped,
) -> bool {
    let Ok(mut cmd) = exec::command(shim, cfg) else {
        return false;
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    // On timeout the shim is killed, and its command with it (PR_SET_PDEATHSIG).
    exec::wait_child(&mut child, Some(Instant::now() + timeout), reaped) == Some(0)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(parse_status(b"SSH-2.0-x"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn tcp_and_http_checks_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for reply in ["HTTP/1.0 200 OK\r\n\r\nok", "HTTP/1.0 503 Busy\r\n\r\n"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 256];
                while !buf.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut chunk).unwrap();
                    assert!(n > 0, "request ended early: {buf:?}");
                    buf.extend_from_slice(&chunk[..n]);
                }
                assert!(buf.starts_with(b"GET /healthz HTTP/1.0\r\n"));
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        let addr = target(None, port);
        assert_eq!(
            target(Some(std::net::Ipv4Addr::new(10, 88, 0, 2)), 80),
            SocketAddr::from(([10, 88, 0, 2], 80))
        );
        assert_eq!(
            http_status(addr, "/healthz", Duration::from_secs(5)),
            Some(200)
        );
        assert_eq!(
            http_status(addr, "/healthz", Duration::from_secs(5)),
            Some(503)
        );
        server.join().unwrap();
        // Nothing listens any more.
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    }
}
