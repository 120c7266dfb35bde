//! Source 4: EC2-style cloud metadata, IMDSv2: `PUT /latest/api/token` for a session token,
//! then `GET /latest/user-data` with it, at the link-local address 169.254.169.254.
//!
//! Only asked where the platform says it is a cloud with such a service (DMI vendor strings,
//! see [`Dmi::has_ec2_metadata`]) or when `berth.imds=on` says so, and always with short
//! timeouts, so boot is not held up elsewhere. No answer at all means "no metadata" (the next
//! source is asked); a 404 for user-data means the instance has none.
//!
//! The HTTP client is a minimal HTTP/1.1 exchange over `std::net::TcpStream` with
//! `Connection: close` (the metadata service is plain HTTP on a link-local address; no TLS,
//! no redirects, no proxies), unit-tested against a fake server on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::{Found, Source, SourceError};
use crate::manifest::MAX_MANIFEST_BYTES;

/// The metadata service's address.
pub const ADDRESS: ([u8; 4], u16) = ([169, 254, 169, 254], 80);
/// Time to connect before concluding there is no metadata service.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Time for each read or write once connected.
pub const IO_TIMEOUT: Duration = Duration::from_millis(2000);
/// Token lifetime asked for (seconds); berth asks once per boot.
const TOKEN_TTL: u32 = 60;

/// The DMI strings that name the platform (`/sys/class/dmi/id/*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dmi {
    /// `sys_vendor` (SMBIOS type 1 manufacturer).
    pub sys_vendor: String,
    /// `board_vendor`.
    pub board_vendor: String,
    /// `bios_vendor`.
    pub bios_vendor: String,
    /// `bios_version` (Xen-based EC2 instances say `4.11.amazon`).
    pub bios_version: String,
    /// `product_name` (OpenStack Nova says `OpenStack Nova`).
    pub product_name: String,
}

impl Dmi {
    /// Read the strings below `dir` (`/sys/class/dmi/id`); missing ones are empty.
    pub fn read(dir: &Path) -> Dmi {
        let field = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Dmi {
            sys_vendor: field("sys_vendor"),
            board_vendor: field("board_vendor"),
            bios_vendor: field("bios_vendor"),
            bios_version: field("bios_version"),
            product_name: field("product_name"),
        }
    }

    /// Whether this platform serves EC2-style metadata: Amazon EC2 (Nitro and Xen) and
    /// OpenStack (whose metadata service speaks the EC2 API).
    pub fn has_ec2_metadata(&self) -> bool {
        let amazon = [
            &self.sys_vendor,
            &self.board_vendor,
            &self.bios_vendor,
            &self.bios_version,
        ]
        .iter()
        .any(|s| s.to_ascii_lowercase().contains("amazon"));
        amazon || self.product_name.to_ascii_lowercase().contains("openstack")
    }
}

/// Source 4: IMDSv2 user-data.
#[derive(Debug, Clone)]
pub struct ImdsSource {
    enabled: bool,
    address: SocketAddr,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl ImdsSource {
    /// Asks 169.254.169.254 when `enabled` (see [`ImdsSource::enabled`]).
    pub fn new(enabled: bool) -> Self {
        ImdsSource {
            enabled,
            address: SocketAddr::from(ADDRESS),
            connect_timeout: CONNECT_TIMEOUT,
            io_timeout: IO_TIMEOUT,
        }
    }

    /// Whether to ask: `berth.imds=on|off` when given, else what the platform says.
    pub fn enabled(forced: Option<bool>, dmi: &Dmi) -> bool {
        forced.unwrap_or_else(|| dmi.has_ec2_metadata())
    }

    /// The same client against another address (tests).
    pub fn at(address: SocketAddr, connect_timeout: Duration, io_timeout: Duration) -> Self {
        ImdsSource {
            enabled: true,
            address,
            connect_timeout,
            io_timeout,
        }
    }

    fn origin(&self) -> String {
        format!("imds:http://{}/latest/user-data", self.address)
    }

    /// Connect: an error here means nothing serves the address.
    fn connect(&self) -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(&self.address, self.connect_timeout)
    }

    fn exchange(&self, mut stream: TcpStream, request: &str) -> std::io::Result<Response> {
        stream.set_read_timeout(Some(self.io_timeout))?;
        stream.set_write_timeout(Some(self.io_timeout))?;
        stream.write_all(request.as_bytes())?;
        // Read until the body is complete by its Content-Length (or the peer closes): a
        // forwarded connection may never show the server's close.
        let limit = usize::try_from(MAX_MANIFEST_BYTES).unwrap_or(usize::MAX) + 64 * 1024;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(response) = Response::complete(&raw)? {
                return Ok(response);
            }
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Response::parse(&raw);
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.len() > limit {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "HTTP response larger than a manifest may be",
                ));
            }
        }
    }
}

impl Source for ImdsSource {
    fn kind(&self) -> &'static str {
        "imds"
    }

    fn fetch(&mut self) -> Result<Option<Found>, SourceError> {
        if !self.enabled {
            return Ok(None);
        }
        let host = self.address;
        let read_error = |source| SourceError::Read {
            origin: self.origin(),
            source,
        };
        // Nothing answers: there is no metadata service here.
        let Ok(stream) = self.connect() else {
            return Ok(None);
        };
        let token = match self.exchange(stream, &format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: {host}\r\nX-aws-ec2-metadata-token-ttl-seconds: {TOKEN_TTL}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )) {
            Err(e) => return Err(read_error(e)),
            Ok(r) if r.status == 200 => String::from_utf8_lossy(&r.body).trim().to_owned(),
            Ok(r) => {
                return Err(SourceError::Unusable {
                    origin: self.origin(),
                    message: format!(
                        "the metadata service refused a session token (HTTP {}); berth speaks IMDSv2 only",
                        r.status
                    ),
                })
            }
        };
        let response = self
            .connect()
            .and_then(|stream| self.exchange(stream, &format!(
                "GET /latest/user-data HTTP/1.1\r\nHost: {host}\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
            )))
            .map_err(read_error)?;
        match response.status {
            200 => Ok(Some(Found {
                origin: self.origin(),
                bytes: response.body,
            })),
            404 => Ok(None),
            status => Err(SourceError::Unusable {
                origin: self.origin(),
                message: format!("the metadata service answered HTTP {status} for user-data"),
            }),
        }
    }
}

/// An HTTP response: status and body (cut at Content-Length when given).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    /// The response once `raw` holds its header and a body of its Content-Length; `None`
    /// while more is needed (or no Content-Length says when it ends).
    fn complete(raw: &[u8]) -> std::io::Result<Option<Response>> {
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&raw[..end]);
        let length = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok());
        match length {
            Some(length) if raw.len() >= end + 4 + length => Response::parse(raw).map(Some),
            _ => Ok(None),
        }
    }

    fn parse(raw: &[u8]) -> std::io::Result<Response> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("HTTP response without the end of its header"))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("HTTP header not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .filter(|l| l.starts_with("HTTP/1."))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad("not an HTTP status line"))?;
        let length = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok());
        let mut body = raw[end + 4..].to_vec();
        if let Some(length) = length {
            if body.len() < length {
                return Err(bad("HTTP body shorter than its Content-Length"));
            }
            body.truncate(length);
        }
        Ok(Response { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// A fake IMDSv2 on loopback: answers `requests` connections, checks the token.
    fn fake_imds(
        user_data: Option<&'static str>,
        requests: usize,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            // Connections stay open until the end: the client must not wait for a close.
            let mut open = Vec::new();
            for _ in 0..requests {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    head.push(line.trim_end().to_owned());
                }
                let request = head.join("\n");
                let (status, body) = if request.starts_with("PUT /latest/api/token ")
                    && request.contains("X-aws-ec2-metadata-token-ttl-seconds: ")
                {
                    ("200 OK", "TOKEN123")
                } else if request.starts_with("GET /latest/user-data ")
                    && request.contains("X-aws-ec2-metadata-token: TOKEN123")
                {
                    match user_data {
                        Some(data) => ("200 OK", data),
                        None => ("404 Not Found", ""),
                    }
                } else {
                    ("401 Unauthorized", "")
                };
                seen.push(request);
                let mut stream = stream;
                write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                open.push(stream);
            }
            seen
        });
        (addr, handle)
    }

    fn client(addr: SocketAddr) -> ImdsSource {
        ImdsSource::at(addr, Duration::from_secs(2), Duration::from_secs(5))
    }

    #[test]
    fn token_then_user_data() {
        let (addr, server) = fake_imds(Some("version = 1\n"), 2);
        let found = client(addr).fetch().unwrap().unwrap();
        assert_eq!(found.bytes, b"version = 1\n");
        assert_eq!(found.origin, format!("imds:http://{addr}/latest/user-data"));
        let seen = server.join().unwrap();
        assert!(
            seen[0].starts_with("PUT /latest/api/token HTTP/1.1"),
            "{seen:?}"
        );
        assert!(
            seen[1].starts_with("GET /latest/user-data HTTP/1.1"),
            "{seen:?}"
        );
    }

    #[test]
    fn no_user_data_is_absent() {
        let (addr, server) = fake_imds(None, 2);
        assert_eq!(client(addr).fetch().unwrap(), None);
        server.join().unwrap();
    }

    #[test]
    fn nothing_listening_is_absent_and_disabled_asks_nothing() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(client(addr).fetch().unwrap(), None);
        assert_eq!(ImdsSource::new(false).fetch().unwrap(), None);
    }

    #[test]
    fn platform_decides_unless_the_command_line_does() {
        let ec2 = Dmi {
            sys_vendor: "Amazon EC2".into(),
            ..Dmi::default()
        };
        let xen = Dmi {
            bios_version: "4.11.amazon".into(),
            ..Dmi::default()
        };
        let nova = Dmi {
            product_name: "OpenStack Nova".into(),
            ..Dmi::default()
        };
        let qemu = Dmi {
            sys_vendor: "QEMU".into(),
            ..Dmi::default()
        };
        assert!(ec2.has_ec2_metadata() && xen.has_ec2_metadata() && nova.has_ec2_metadata());
        assert!(!qemu.has_ec2_metadata());
        assert!(!ImdsSource::enabled(None, &qemu));
        assert!(ImdsSource::enabled(Some(true), &qemu));
        assert!(!ImdsSource::enabled(Some(false), &ec2));
    }

    #[test]
    fn dmi_is_read_from_sysfs_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sys_vendor"), "Amazon EC2\n").unwrap();
        let dmi = Dmi::read(dir.path());
        assert_eq!(dmi.sys_vendor, "Amazon EC2");
        assert_eq!(dmi.product_name, "");
    }

    #[test]
    fn responses_are_cut_at_content_length() {
        let r = Response::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: b"abc".to_vec()
            }
        );
        let r = Response::parse(b"HTTP/1.0 404 Not Found\r\n\r\n").unwrap();
        assert_eq!(r.status, 404);
        assert!(Response::parse(b"garbage").is_err());
        assert_eq!(
            Response::complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab").unwrap(),
            None
        );
        assert_eq!(
            Response::complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap(),
            Some(Response {
                status: 200,
                body: b"abc".to_vec()
            })
        );
        assert!(Response::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
    }
}
