//! A throwaway OCI registry on the build host's loopback for pull tests: Debian's
//! `docker-registry` serving a temp directory, images pushed from OCI layouts with `skopeo`.
//!
//! The registry listens on 127.0.0.1 only; a QEMU guest reaches it as 10.0.2.2 through user
//! networking. The process is killed and its storage removed on drop.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, TempDir};

/// Why the test registry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A program could not be run.
    #[error("cannot run {program} (apt-get install docker-registry skopeo apache2-utils)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("{program} failed: {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// What it printed.
        stderr: String,
    },
    /// The registry did not start listening.
    #[error("the registry did not listen on 127.0.0.1:{port} within {waited:?}: {log}")]
    NotListening {
        /// The port.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// Its log.
        log: String,
    },
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
    credentials: Option<(String, String)>,
    /// PEM of the private CA when serving HTTPS.
    tls: Option<String>,
}

fn run(program: &str, args: &[&str]) -> Result<String, RegistryError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RegistryError::Spawn {
            program: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(RegistryError::Failed {
            program: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Registry {
    /// Start a registry on a free loopback port; with `credentials`, basic auth (htpasswd) is
    /// required for everything.
    pub fn start(credentials: Option<(&str, &str)>) -> Result<Registry, RegistryError> {
        let port = free_port().map_err(|source| RegistryError::Spawn {
            program: "bind".into(),
            source,
        })?;
        let spawn = |source| RegistryError::Spawn {
            program: "mktemp".into(),
            source,
        };
        let dir = TempDir::new("berth-registry").map_err(spawn)?;
        let mut registry = Registry {
            port,
            child: None,
            dir,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            tls: None,
        };
        registry.spawn()?;
        Ok(registry)
    }

    /// Start a registry serving HTTPS with a certificate for 127.0.0.1 from a fresh private CA
    /// (made with `openssl`); [`Registry::certificate`] is the CA's PEM, the one to trust.
    pub fn start_tls() -> Result<Registry, RegistryError> {
        let port = free_port().map_err(|source| RegistryError::Spawn {
            program: "bind".into(),
            source,
        })?;
        let dir = TempDir::new("berth-registry").map_err(|source| RegistryError::Spawn {
            program: "mktemp".into(),
            source,
        })?;
        // A CA, and a server certificate for 127.0.0.1 it signed (a self-signed CA used as
        // the server's own certificate is refused by webpki).
        let path = |name: &str| dir.0.join(name).to_string_lossy().into_owned();
        let ext = dir.0.join("leaf.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|source| RegistryError::Spawn {
            program: "write leaf.ext".into(),
            source,
        })?;
        let steps: [Vec<String>; 3] = [
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "/CN=berth test CA".to_string(),
                "-keyout".into(),
                path("ca.key"),
                "-out".into(),
                path("ca.pem"),
            ])
            .collect(),
            vec![
                "req".into(),
                "-newkey".into(),
                "rsa:2048".into(),
                "-nodes".into(),
                "-subj".into(),
                "/CN=127.0.0.1".into(),
                "-keyout".into(),
                path("key.pem"),
                "-out".into(),
                path("leaf.csr"),
            ],
            vec![
                "x509".into(),
                "-req".into(),
                "-in".into(),
                path("leaf.csr"),
                "-CA".into(),
                path("ca.pem"),
                "-CAkey".into(),
                path("ca.key"),
                "-CAcreateserial".into(),
                "-days".into(),
                "2".into(),
                "-extfile".into(),
                path("leaf.ext"),
                "-out".into(),
                path("cert.pem"),
            ],
        ];
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            run("openssl", &args)?;
        }
        let cert = dir.0.join("ca.pem");
        let pem = std::fs::read_to_string(&cert).map_err(|source| RegistryError::Spawn {
            program: "read the certificate".into(),
            source,
        })?;
        let mut registry = Registry {
            port,
            child: None,
            dir,
            credentials: None,
            tls: Some(pem),
        };
        registry.spawn()?;
        Ok(registry)
    }

    /// The PEM of the CA that signed the certificate of a [`Registry::start_tls`] registry.
    pub fn certificate(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    fn config(&self) -> Result<PathBuf, RegistryError> {
        let root = &self.dir.0;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n",
            root.join("data").display(),
            self.port
        );
        if self.tls.is_some() {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                root.join("cert.pem").display(),
                root.join("key.pem").display()
            ));
        }
        if let Some((user, password)) = &self.credentials {
            let line = run("htpasswd", &["-Bbn", user, password])?;
            let file = root.join("htpasswd");
            std::fs::write(&file, line.trim()).map_err(|source| RegistryError::Spawn {
                program: "write htpasswd".into(),
                source,
            })?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            ));
        }
        let path = root.join("config.yml");
        std::fs::write(&path, config).map_err(|source| RegistryError::Spawn {
            program: "write config.yml".into(),
            source,
        })?;
        Ok(path)
    }

    fn spawn(&mut self) -> Result<(), RegistryError> {
        let config = self.config()?;
        let log = std::fs::File::create(self.dir.0.join("log")).map_err(|source| {
            RegistryError::Spawn {
                program: "create the registry log".into(),
                source,
            }
        })?;
        let log2 = log.try_clone().map_err(|source| RegistryError::Spawn {
            program: "dup the registry log".into(),
            source,
        })?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| RegistryError::Spawn {
                program: "docker-registry".into(),
                source,
            })?;
        self.child = Some(child);
        let waited = Duration::from_secs(20);
        let start = Instant::now();
        while start.elapsed() < waited {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.0.join("log")) {
            let _ = f.read_to_string(&mut text);
        }
        Err(RegistryError::NotListening {
            port: self.port,
            waited,
            log: text,
        })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push the single image of OCI layout `layout` as `REPO:TAG`.
    pub fn push(&self, layout: &Path, repo_tag: &str) -> Result<(), RegistryError> {
        let src = format!("oci:{}", layout.display());
        let dst = format!("docker://{}/{repo_tag}", self.host());
        // The test's own self-signed registry: skopeo need not verify it.
        let mut args = vec![
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ];
        let creds;
        if let Some((user, password)) = &self.credentials {
            creds = format!("{user}:{password}");
            args.push("--dest-creds");
            args.push(&creds);
        }
        args.push(&src);
        args.push(&dst);
        run("skopeo", &args).map(|_| ())
    }

    /// Stop the registry (its storage stays, so [`Registry::resume`] serves it again).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port.
    pub fn resume(&mut self) -> Result<(), RegistryError> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal registry speaking the distribution API's token flow, for what Debian's registry
/// cannot do without a token service: every `/v2/` request without `Authorization: Bearer`
/// gets `401` with `WWW-Authenticate: Bearer realm=".../token"`; the token endpoint hands out
/// a token only for the right basic credentials. It serves the one image of an OCI layout
/// (any tag) and its blobs. Requests are counted per path kind.
#[derive(Debug)]
pub struct TokenRegistry {
    port: u16,
    stats: std::sync::Arc<std::sync::Mutex<TokenStats>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// What a [`TokenRegistry`] was asked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TokenStats {
    /// Token requests that carried the right credentials.
    pub tokens_issued: u32,
    /// Token requests refused.
    pub tokens_refused: u32,
    /// `/v2/` requests answered with content.
    pub served: u32,
    /// `/v2/` requests refused for want of a valid bearer token.
    pub challenged: u32,
}

const TOKEN: &str = "berth-test-token-7f3a";

impl TokenRegistry {
    /// Serve `layout` on a free loopback port; tokens for `user:password` only.
    pub fn serve(layout: &Path, user: &str, password: &str) -> std::io::Result<TokenRegistry> {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stats = std::sync::Arc::new(std::sync::Mutex::new(TokenStats::default()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let basic = format!(
            "Basic {}",
            base64_encode(format!("{user}:{password}").as_bytes())
        );
        let layout = layout.to_path_buf();
        let (stats2, stop2) = (stats.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let mut stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Some((path, headers)) = read_request(&mut stream) else {
                    continue;
                };
                let auth = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let mut stats = match stats2.lock() {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
                let (status, content_type, extra, body) = if path.starts_with("/token") {
                    if auth == basic {
                        stats.tokens_issued += 1;
                        let body = format!("{{\"token\":\"{TOKEN}\",\"expires_in\":300}}");
                        (200, "application/json", String::new(), body.into_bytes())
                    } else {
                        stats.tokens_refused += 1;
                        (401, "application/json", String::new(), b"{}".to_vec())
                    }
                } else if auth != format!("Bearer {TOKEN}") {
                    stats.challenged += 1;
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"berth-test\"\r\n"
                    );
                    let body =
                        br#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#;
                    (401, "application/json", challenge, body.to_vec())
                } else {
                    stats.served += 1;
                    serve_layout(&layout, &path)
                };
                drop(stats);
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Ok(TokenRegistry { port, stats, stop })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What was asked so far.
    pub fn stats(&self) -> TokenStats {
        match self.stats.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The request line's path and the headers, or `None` for a broken request.
fn read_request(stream: &mut std::net::TcpStream) -> Option<(String, Vec<(String, String)>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((path, headers))
}

/// `/v2/REPO/manifests/REF` (any tag: the layout's manifest) and `/v2/REPO/blobs/DIGEST`.
fn serve_layout(layout: &Path, path: &str) -> (u16, &'static str, String, Vec<u8>) {
    let not_found = (
        404,
        "application/json",
        String::new(),
        b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"unknown\"}]}".to_vec(),
    );
    let blob = |digest: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .ok()
    };
    if let Some((_, reference)) = path.split_once("/manifests/") {
        let index: serde_json::Value = match std::fs::read(layout.join("index.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(v) => v,
            None => return not_found,
        };
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if reference.starts_with("sha256:") && reference != digest {
            return not_found;
        }
        return match blob(&digest) {
            Some(bytes) => (
                200,
                "application/vnd.oci.image.manifest.v1+json",
                format!("Docker-Content-Digest: {digest}\r\n"),
                bytes,
            ),
            None => not_found,
        };
    }
    if let Some((_, digest)) = path.split_once("/blobs/") {
        if let Some(bytes) = blob(digest) {
            return (200, "application/octet-stream", String::new(), bytes);
        }
    }
    if path == "/v2/" {
        return (200, "application/json", String::new(), b"{}".to_vec());
    }
    not_found
}

fn base64_encode(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
