//! The host manifest: a versioned TOML file declaring the host, its images and its containers.
//!
//! It is the one input an operator writes, so it is read strictly and explained well: the text
//! is parsed into raw serde types ([`schema`], unknown keys rejected), then validated into
//! [`Manifest`] ([`validate`]); every error names `file:line:column` and says what to write
//! instead. `berthd` loads it at boot, `berth-image` at build time, `berthctl validate` on the
//! operator's machine — all through [`Manifest::load`] / [`Manifest::parse`].
//!
//! The reference for operators is docs/manifest.md.

mod diagnose;
mod error;
pub mod limits;
mod location;
pub mod network;
mod resolve;
pub mod rules;
mod schema;
pub mod supervision;
mod validate;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use error::{ErrorKind, ManifestError};
pub use limits::{Limits, Rlimit};
pub use location::Location;
pub use network::{
    HostAddressing, HostNetwork, NetworkMode, PortMapping, Protocol, Subnet, DEFAULT_SUBNET,
};
pub use resolve::LAYOUT_FILES;
pub use supervision::{Condition, HealthCheck, LogSettings, Probe, RestartPolicy};

pub use crate::runtime::security::SeccompProfile;

/// Manifest schema versions this build understands.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// Largest manifest accepted, in bytes (1 MiB): manifests hold declarations, not data.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The machine's hostname when `[host] hostname` is not set.
pub const DEFAULT_HOSTNAME: &str = "berth";

/// A parsed and validated host manifest (schema version 1).
///
/// Besides the public fields it remembers where each key was written, so later errors about
/// its content (a missing image layout, a failed import) can point into the file; see
/// [`Manifest::error_at`]. Equality compares only the content.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Schema version; only 1 exists.
    pub version: u32,
    /// `[host]`.
    pub host: Host,
    /// `[network]`.
    pub network: NetworkDecl,
    /// `[images]`: name -> declaration.
    pub images: BTreeMap<String, ImageDecl>,
    /// `[containers.NAME]`, in name order.
    pub containers: BTreeMap<String, ContainerSpec>,
    /// `[registries."HOST[:PORT]"]`: how to reach each registry images are pulled from.
    pub registries: BTreeMap<String, RegistrySettings>,
    /// Where the manifest came from and where each key is in it.
    origin: Origin,
}

/// `[registries."HOST[:PORT]"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Plain HTTP instead of HTTPS (lab and test registries only).
    pub insecure: bool,
    /// Basic credentials (also exchanged for a bearer token when the registry asks).
    pub credentials: Option<(String, String)>,
    /// A private CA certificate (PEM) trusted in addition to the system's bundle.
    pub ca: Option<String>,
}

/// The file a manifest was read from and the location of each key in it, by dotted path
/// (`images.busybox.source`, `containers.web.command`, ...).
#[derive(Debug, Clone, Default)]
struct Origin {
    file: PathBuf,
    locations: BTreeMap<String, Location>,
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.host == other.host
            && self.network == other.network
            && self.images == other.images
            && self.containers == other.containers
            && self.registries == other.registries
    }
}

/// `[host]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The machine's hostname (default "berth").
    pub hostname: String,
    /// `api_port` + `api_token`: the remote API (off when `None`).
    pub api: Option<RemoteApi>,
    /// `[host.network]`: how the host's NIC is configured.
    pub network: HostNetwork,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            hostname: DEFAULT_HOSTNAME.to_owned(),
            api: None,
            network: HostNetwork::default(),
        }
    }
}

/// The remote API: berthd's API on a TCP port of every address, for clients that send the
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteApi {
    /// TCP port.
    pub port: u16,
    /// The bearer token clients must send.
    pub token: String,
}

/// Shortest `api_token` accepted.
pub const MIN_API_TOKEN: usize = 16;

/// `[network]`: the container bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDecl {
    /// `subnet`: the bridge gets its first address, containers the others.
    pub subnet: Subnet,
}

impl Default for NetworkDecl {
    fn default() -> Self {
        NetworkDecl {
            subnet: DEFAULT_SUBNET,
        }
    }
}

/// One `[images]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDecl {
    /// Where the image comes from.
    pub source: ImageSource,
}

/// An image source.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// `oci-layout:PATH`, PATH relative to the manifest's directory: an OCI image layout
    /// directory.
    OciLayout(PathBuf),
    /// `oci-archive:PATH`: a tar of an OCI image layout (a file).
    OciArchive(PathBuf),
    /// `docker-archive:PATH`: a `docker save` tar (a file).
    DockerArchive(PathBuf),
    /// `registry:HOST[:PORT]/REPO[:TAG][@DIGEST]`: pulled from an OCI registry.
    Registry(crate::registry::RegistryRef),
}

impl ImageSource {
    /// The path after the scheme, relative to the manifest's directory (`None`: a registry
    /// image, which is pulled rather than read from disk).
    pub fn path(&self) -> Option<&Path> {
        match self {
            ImageSource::OciLayout(p)
            | ImageSource::OciArchive(p)
            | ImageSource::DockerArchive(p) => Some(p),
            ImageSource::Registry(_) => None,
        }
    }

    /// The format of the image at [`ImageSource::path`].
    pub fn format(&self) -> Option<ImageFormat> {
        match self {
            ImageSource::OciLayout(_) => Some(ImageFormat::OciLayout),
            ImageSource::OciArchive(_) => Some(ImageFormat::OciArchive),
            ImageSource::DockerArchive(_) => Some(ImageFormat::DockerArchive),
            ImageSource::Registry(_) => None,
        }
    }
}

/// How an image is packaged on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// An OCI image layout directory.
    OciLayout,
    /// A tar file holding an OCI image layout.
    OciArchive,
    /// A `docker save` tar file.
    DockerArchive,
}

impl ImageFormat {
    /// The scheme written in the manifest (`oci-layout`, ...).
    pub fn scheme(self) -> &'static str {
        match self {
            ImageFormat::OciLayout => "oci-layout",
            ImageFormat::OciArchive => "oci-archive",
            ImageFormat::DockerArchive => "docker-archive",
        }
    }

    /// Whether the source is a directory (a layout) rather than a file (an archive).
    pub fn is_directory(self) -> bool {
        self == ImageFormat::OciLayout
    }
}

/// One `[[containers.NAME.mounts]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountDecl {
    /// A named volume: `STATE/volumes/NAME`, created on first use, kept across restarts.
    Volume {
        /// Volume name (a store-safe file name).
        name: String,
        /// Absolute path inside the container.
        target: String,
        /// Mounted read-only.
        read_only: bool,
    },
    /// A directory or file of the state partition (an absolute path under
    /// [`rules::STATE_PARTITION`]).
    Bind {
        /// Absolute host path under the state partition.
        source: PathBuf,
        /// Absolute path inside the container.
        target: String,
        /// Mounted read-only.
        read_only: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Absolute path inside the container.
        target: String,
        /// Size limit in bytes (`None`: the kernel's default, half of RAM).
        size: Option<u64>,
        /// Permission bits of its root (`None`: 0755).
        mode: Option<u32>,
    },
}

impl MountDecl {
    /// The absolute path inside the container.
    pub fn target(&self) -> &str {
        match self {
            MountDecl::Volume { target, .. }
            | MountDecl::Bind { target, .. }
            | MountDecl::Tmpfs { target, .. } => target,
        }
    }
}

/// One `[containers.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Name of an `[images]` entry.
    pub image: String,
    /// Replaces the image's Entrypoint when set (Docker `--entrypoint`).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd when set (Docker's trailing arguments).
    pub command: Option<Vec<String>>,
    /// Added to / overriding the image's Env.
    pub env: BTreeMap<String, String>,
    /// Replaces the image's WorkingDir.
    pub workdir: Option<String>,
    /// UTS hostname inside the container (default: the container name).
    pub hostname: Option<String>,
    /// `memory`, `cpus`, `pids`, `rlimits`.
    pub limits: Limits,
    /// `stop_signal`: replaces the image's StopSignal.
    pub stop_signal: Option<nix::sys::signal::Signal>,
    /// `stop_timeout`: time between the stop signal and SIGKILL (default: berthd's, 10 s).
    pub stop_timeout: Option<std::time::Duration>,
    /// `NAME|UID[:GROUP|GID]` to run as; replaces the image's User (default: root).
    pub user: Option<String>,
    /// Capabilities added to Docker's default set (names as written; `ALL` allowed).
    pub cap_add: Vec<String>,
    /// Capabilities removed from Docker's default set (applied before `cap_add`).
    pub cap_drop: Vec<String>,
    /// Seccomp profile (default: Docker's default filter).
    pub seccomp: SeccompProfile,
    /// Mount the container's root filesystem read-only.
    pub read_only: bool,
    /// Run in a user namespace: container root maps to an unprivileged host range.
    pub userns: bool,
    /// `pid`: its own PID namespace (default) or the host's.
    pub pid: PidMode,
    /// Volumes, bind mounts and tmpfs mounts, in manifest order.
    pub mounts: Vec<MountDecl>,
    /// `restart`: what happens when its process ends (default: never restarted).
    pub restart: RestartPolicy,
    /// `max_restarts`: restarts allowed in a row before berthd gives up (`None`: no limit).
    pub max_restarts: Option<u32>,
    /// `depends_on`: containers that must reach a condition before this one starts.
    pub depends_on: BTreeMap<String, Condition>,
    /// `essential`: its failure puts the host in the degraded state.
    pub essential: bool,
    /// `log_max_size` and `log_files`.
    pub log: LogSettings,
    /// `healthcheck`.
    pub healthcheck: Option<HealthCheck>,
    /// `restart_on_unhealthy`: restart it when its health check says unhealthy.
    pub restart_on_unhealthy: bool,
    /// `network`: bridge (default), host or none.
    pub network: NetworkMode,
    /// `ip`: a pinned address in the subnet (bridge network only).
    pub ip: Option<Ipv4Addr>,
    /// `ports`: published ports (bridge network only).
    pub ports: Vec<PortMapping>,
}

/// A container's `pid`: which PID namespace it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PidMode {
    /// Its own PID namespace: it is PID 1 and sees only its own processes (the default).
    #[default]
    Private,
    /// The host's PID namespace: it sees (and, with the capability, signals) every process
    /// of the host, like Docker's `--pid=host`. For debugging containers.
    Host,
}

impl PidMode {
    /// From its manifest spelling.
    pub fn parse(s: &str) -> Result<PidMode, String> {
        match s {
            "private" => Ok(PidMode::Private),
            "host" => Ok(PidMode::Host),
            other => Err(format!(
                "pid {other:?} is not known; write \"private\" (own PID namespace, the default) or \"host\" (see the host's processes)"
            )),
        }
    }
}

impl ContainerSpec {
    /// The container's UTS hostname: `hostname` if set, else the container's `name`.
    pub fn hostname_or<'a>(&'a self, name: &'a str) -> &'a str {
        self.hostname.as_deref().unwrap_or(name)
    }
}

/// An image resolved to a directory or file on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// The `[images]` key.
    pub name: String,
    /// The OCI image layout directory or the archive file (base directory joined with the
    /// source's path).
    pub layout: PathBuf,
    /// How the image at `layout` is packaged.
    pub format: ImageFormat,
}

impl Manifest {
    /// A manifest built in code (tests, defaults) rather than read from a file; its errors
    /// from [`Manifest::error_at`] point at `<manifest>:1:1`.
    pub fn new(
        host: Host,
        images: BTreeMap<String, ImageDecl>,
        containers: BTreeMap<String, ContainerSpec>,
    ) -> Manifest {
        Manifest {
            version: 1,
            host,
            network: NetworkDecl::default(),
            images,
            containers,
            registries: BTreeMap::new(),
            origin: Origin {
                file: PathBuf::from("<manifest>"),
                locations: BTreeMap::new(),
            },
        }
    }

    /// Read, parse and validate a manifest file. Errors name `path` as given.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let read_error = |e: std::io::Error| {
            ManifestError::new(
                ErrorKind::Read,
                path,
                Location::START,
                format!("cannot read the manifest: {e}"),
            )
            .with_source(e)
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let bytes = read_bounded(file, path)?;
        Manifest::parse_bytes(&bytes, path)
    }

    /// Parse and validate manifest bytes read from `file` (which is only used in errors):
    /// checks the size limit and UTF-8, then [`Manifest::parse`].
    pub fn parse_bytes(bytes: &[u8], file: &Path) -> Result<Manifest, ManifestError> {
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > MAX_MANIFEST_BYTES {
            return Err(too_large(file, size));
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Manifest::parse(text, file),
            Err(e) => {
                let offset = e.valid_up_to();
                Err(ManifestError::new(
                    ErrorKind::NotUtf8,
                    file,
                    Location::of_valid_prefix(bytes, offset),
                    format!(
                        "the manifest is not valid UTF-8 (invalid byte 0x{:02x} at byte offset {offset}); save the file as UTF-8",
                        bytes.get(offset).copied().unwrap_or_default()
                    ),
                ))
            }
        }
    }

    /// Parse and validate manifest `text` read from `file` (which is only used in errors).
    pub fn parse(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
        let probe: schema::VersionProbe =
            toml::from_str(text).map_err(|e| diagnose::toml_error(&e, text, file))?;
        let version = validate::check_version(&probe, text, file)?;
        let raw: schema::RawManifest =
            toml::from_str(text).map_err(|e| diagnose::toml_error(&e, text, file))?;
        validate::validate(raw, version, text, file)
    }

    /// Check that every declared image source exists below `base_dir` (the manifest's
    /// directory) and return them in name order — all declared images, used by a container
    /// or not; errors point at the `source` value in the file.
    pub fn resolve_images(&self, base_dir: &Path) -> Result<Vec<ResolvedImage>, ManifestError> {
        resolve::resolve_images(self, base_dir)
    }

    /// The file this manifest was read from (as given to `load`/`parse`).
    pub fn file(&self) -> &Path {
        &self.origin.file
    }

    /// Where the key at dotted `path` (e.g. `images.busybox.source`, `containers.web`,
    /// `containers.web.command`) was written, falling back to its closest parent that was.
    pub fn location_of(&self, path: &str) -> Option<Location> {
        let mut key = path;
        loop {
            if let Some(at) = self.origin.locations.get(key) {
                return Some(*at);
            }
            key = &key[..key.rfind('.')?];
        }
    }

    /// An error about the key at dotted `path`, located where it is written (line 1 column 1
    /// when unknown). Lets later stages (image import, container start) report problems in
    /// the manifest's `file:line:column` form.
    pub fn error_at(
        &self,
        path: &str,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> ManifestError {
        let at = self.location_of(path).unwrap_or(Location::START);
        ManifestError::new(kind, &self.origin.file, at, message)
    }
}

/// Read an open manifest file (`path` names it in errors): refused by its size before a byte
/// is read when it is larger than [`MAX_MANIFEST_BYTES`], and never more than one byte past
/// the limit read (a file that grows, or reports no size, is refused by
/// [`Manifest::parse_bytes`]). `berthctl validate` ([`Manifest::load`]) and every file the
/// boot reads (built-in, last good, fw_cfg) go through this one check.
pub fn read_bounded(file: std::fs::File, path: &Path) -> Result<Vec<u8>, ManifestError> {
    let read_error = |e: std::io::Error| {
        ManifestError::new(
            ErrorKind::Read,
            path,
            Location::START,
            format!("cannot read the manifest: {e}"),
        )
        .with_source(e)
    };
    let size = file.metadata().map_err(read_error)?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(too_large(path, size));
    }
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    Ok(bytes)
}

fn too_large(file: &Path, size: u64) -> ManifestError {
    ManifestError::new(
        ErrorKind::TooLarge,
        file,
        Location::START,
        format!(
            "the manifest is {size} bytes ({:.1} MiB); the limit is {MAX_MANIFEST_BYTES} bytes (1 MiB) — manifests hold declarations, ship data inside images",
            size as f64 / (1024.0 * 1024.0)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
version = 1

[host]
hostname = "demo"

[images]
busybox = { source = "oci-layout:images/busybox" }

[containers.hello]
image = "busybox"
command = ["/bin/sh", "-c", "echo hi"]
env = { GREETING = "hello" }
workdir = "/"

[containers.web]
image = "busybox"
entrypoint = ["/bin/httpd"]
hostname = "www"
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("m.toml"))
    }

    #[test]
    fn parses_every_key() {
        let m = parse(DEMO).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.host.hostname, "demo");
        assert_eq!(
            m.images["busybox"].source,
            ImageSource::OciLayout("images/busybox".into())
        );
        let hello = &m.containers["hello"];
        assert_eq!(hello.image, "busybox");
        assert_eq!(
            hello.command.as_deref(),
            Some(&["/bin/sh".to_owned(), "-c".into(), "echo hi".into()][..])
        );
        assert_eq!(hello.entrypoint, None);
        assert_eq!(hello.env.get("GREETING").map(String::as_str), Some("hello"));
        assert_eq!(hello.workdir.as_deref(), Some("/"));
        assert_eq!(hello.hostname_or("hello"), "hello");
        let web = &m.containers["web"];
        assert_eq!(
            web.entrypoint.as_deref(),
            Some(&["/bin/httpd".to_owned()][..])
        );
        assert_eq!(web.command, None);
        assert_eq!(web.hostname_or("web"), "www");
        assert_eq!(m.file(), Path::new("m.toml"));
    }

    #[test]
    fn parses_limits_and_stop_settings() {
        let m = parse(
            "version = 1\n[images]\nb = { source = \"oci-layout:b\" }\n[containers.c]\nimage = \"b\"\nmemory = \"16Mi\"\ncpus = 0.25\npids = 10\nstop_signal = \"int\"\nstop_timeout = \"1500ms\"\nrlimits = { nofile = [10, 20] }\n[containers.d]\nimage = \"b\"\n",
        )
        .unwrap();
        let c = &m.containers["c"];
        assert_eq!(c.limits.memory, Some(16 << 20));
        assert_eq!(c.limits.cpus, Some(0.25));
        assert_eq!(c.limits.pids, Some(10));
        assert!(c.limits.needs_cgroup());
        assert_eq!(c.limits.rlimits["nofile"], Rlimit { soft: 10, hard: 20 });
        assert_eq!(c.stop_signal, Some(nix::sys::signal::Signal::SIGINT));
        assert_eq!(c.stop_timeout, Some(std::time::Duration::from_millis(1500)));
        assert_eq!(
            m.location_of("containers.c.memory"),
            Some(Location {
                line: 6,
                column: 10
            })
        );
        let d = &m.containers["d"];
        assert_eq!(d.limits, Limits::default());
        assert!(!d.limits.needs_cgroup());
        assert_eq!((d.stop_signal, d.stop_timeout), (None, None));
    }

    #[test]
    fn mounts_of_every_type() {
        let text = r#"version = 1
[images]
b = { source = "oci-layout:b" }
[containers.web]
image = "b"
[[containers.web.mounts]]
type = "volume"
source = "data"
target = "/data"
[[containers.web.mounts]]
type = "bind"
source = "/var/lib/berth/shared/x"
target = "/x"
read_only = true
[[containers.web.mounts]]
type = "tmpfs"
target = "/tmp"
size = "64M"
mode = "1777"
"#;
        let m = parse(text).unwrap();
        assert_eq!(
            m.containers["web"].mounts,
            vec![
                MountDecl::Volume {
                    name: "data".into(),
                    target: "/data".into(),
                    read_only: false
                },
                MountDecl::Bind {
                    source: "/var/lib/berth/shared/x".into(),
                    target: "/x".into(),
                    read_only: true
                },
                MountDecl::Tmpfs {
                    target: "/tmp".into(),
                    size: Some(64 << 20),
                    mode: Some(0o1777)
                },
            ]
        );
        assert_eq!(
            m.location_of("containers.web.mounts.1.target"),
            Some(Location {
                line: 13,
                column: 10
            })
        );
        let inline = parse("version = 1\n[images]\nb = { source = \"oci-layout:b\" }\n[containers.web]\nimage = \"b\"\nmounts = [{ type = \"tmpfs\", target = \"/run\" }]\n").unwrap();
        assert_eq!(
            inline.containers["web"].mounts,
            vec![MountDecl::Tmpfs {
                target: "/run".into(),
                size: None,
                mode: None
            }]
        );
    }

    #[test]
    fn mount_errors_are_located() {
        let base = "version = 1\n[images]\nb = { source = \"oci-layout:b\" }\n[containers.web]\nimage = \"b\"\n";
        let cases = [
            // (mounts line, line, column, fragment)
            ("mounts = [{ type = \"volume\", source = \"d\", target = \"/d\" }, { type = \"tmpfs\", target = \"/d/\" }]", 6, 88, "mounts[1] and mounts[0] (line 6, column 53) both mount on \"/d/\""),
            ("mounts = [{ type = \"bind\", source = \"/etc\", target = \"/e\" }]", 6, 37, "outside the state partition"),
            ("mounts = [{ type = \"bind\", source = \"/var/lib/berth/../x\", target = \"/e\" }]", 6, 37, "contains `..`"),
            ("mounts = [{ type = \"volume\", source = \"d\", target = \"d\" }]", 6, 53, "is not absolute"),
            ("mounts = [{ type = \"volume\", source = \"d\", target = \"/a/../b\" }]", 6, 53, "contains `..`"),
            ("mounts = [{ type = \"nfs\", target = \"/d\" }]", 6, 20, "unknown mount type \"nfs\""),
            ("mounts = [{ target = \"/d\" }]", 6, 22, "has no `type`"),
            ("mounts = [{ type = \"volume\", target = \"/d\" }]", 6, 20, "has no `source`"),
            ("mounts = [{ type = \"tmpfs\", target = \"/t\", size = \"lots\" }]", 6, 51, "is not a size"),
            ("mounts = [{ type = \"tmpfs\", target = \"/t\", mode = \"999\" }]", 6, 51, "not an octal mode"),
            ("mounts = [{ type = \"volume\", source = \"d\", target = \"/t\", size = \"1M\" }]", 6, 66, "`size` does not apply to a volume mount"),
        ];
        for (line, l, col, fragment) in cases {
            let e = parse(&format!("{base}{line}\n")).unwrap_err();
            assert!(e.message.contains(fragment), "{line}: {}", e.message);
            assert_eq!((e.line, e.column), (l, col), "{line}: {}", e.message);
        }
    }

    #[test]
    fn defaults_and_empty_host() {
        let m = parse("version = 1\n").unwrap();
        assert_eq!(m.host, Host::default());
        assert_eq!(m.host.hostname, "berth");
        assert!(m.images.is_empty() && m.containers.is_empty());
        assert_eq!(
            m,
            Manifest::new(Host::default(), BTreeMap::new(), BTreeMap::new())
        );
    }

    #[test]
    fn dotted_keys_and_subtables_are_equivalent() {
        let a = parse("version = 1\n[images.b]\nsource = \"oci-layout:b\"\n[containers.c]\nimage = \"b\"\n[containers.c.env]\nX = \"1\"\n").unwrap();
        let b = parse("version = 1\nimages.b.source = \"oci-layout:b\"\ncontainers.c.image = \"b\"\ncontainers.c.env.X = \"1\"\n").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn remembers_locations_for_later_errors() {
        let m = parse(DEMO).unwrap();
        assert_eq!(
            m.location_of("images.busybox.source"),
            Some(Location {
                line: 8,
                column: 22
            })
        );
        assert_eq!(
            m.location_of("containers.web"),
            Some(Location {
                line: 16,
                column: 13
            })
        );
        // Unknown keys fall back to their closest recorded parent.
        assert_eq!(
            m.location_of("containers.web.ports"),
            Some(Location {
                line: 16,
                column: 13
            })
        );
        assert_eq!(m.location_of("nothing"), None);
        let e = m.error_at("containers.hello.command", ErrorKind::InvalidValue, "boom");
        assert_eq!(e.to_string(), "m.toml:12:11: boom");
        let built = Manifest::new(Host::default(), BTreeMap::new(), BTreeMap::new());
        assert_eq!(
            built
                .error_at("x", ErrorKind::InvalidValue, "y")
                .to_string(),
            "<manifest>:1:1: y"
        );
    }

    #[test]
    fn the_first_problem_in_the_file_is_reported() {
        let text =
            "version = 1\n[containers.zz]\nimage = \"nope\"\n[containers.Aa]\nimage = \"nope\"\n";
        let e = parse(text).unwrap_err();
        // Name order would visit "Aa" first; file order reports line 3 first.
        assert_eq!((e.line, e.column), (3, 9));
        assert_eq!(e.kind, ErrorKind::UnknownImage);
    }

    #[test]
    fn version_is_checked_before_the_schema() {
        let e = parse("version = 2\n[network]\nsubnet = \"10.0.0.0/24\"\n").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Version);
        assert_eq!((e.line, e.column), (1, 11));
        assert!(e.message.contains("supports version 1"), "{}", e.message);
        let e = parse("version = \"1\"\n").unwrap_err();
        assert!(e.message.contains("must be an integer"), "{}", e.message);
    }

    #[test]
    fn size_and_encoding_limits() {
        let big = vec![b'#'; usize::try_from(MAX_MANIFEST_BYTES).unwrap() + 1];
        let e = Manifest::parse_bytes(&big, Path::new("big.toml")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge);
        assert!(e.message.contains("1048577 bytes"), "{}", e.message);
        let e = Manifest::parse_bytes(b"version = 1\n# \xc3\xa9\xfe\n", Path::new("x.toml"))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotUtf8);
        assert_eq!((e.line, e.column), (2, 4));
    }

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.toml");
        std::fs::write(&path, DEMO).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), parse(DEMO).unwrap());
        let missing = tmp.path().join("missing.toml");
        let e = Manifest::load(&missing).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Read);
        assert_eq!(e.file, missing);
        assert!(std::error::Error::source(&e).is_some());
    }
}

#[cfg(test)]
mod pid_mode_tests {
    use std::path::Path;

    use super::{Manifest, PidMode};

    const HEAD: &str =
        "version = 1\n[images]\nbusybox = { source = \"oci-layout:images/busybox\" }\n";

    fn parse(body: &str) -> Result<Manifest, String> {
        Manifest::parse(&format!("{HEAD}{body}"), Path::new("m.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn pid_is_private_unless_host_is_asked_for() {
        let m = parse(
            "[containers.debug]\nimage = \"busybox\"\npid = \"host\"\n[containers.web]\nimage = \"busybox\"\n[containers.p]\nimage = \"busybox\"\npid = \"private\"\n",
        )
        .unwrap();
        assert_eq!(m.containers["debug"].pid, PidMode::Host);
        assert_eq!(m.containers["web"].pid, PidMode::Private);
        assert_eq!(m.containers["p"].pid, PidMode::Private);
    }

    #[test]
    fn bad_pid_values_are_located_and_explained() {
        let err =
            parse("[containers.debug]\nimage = \"busybox\"\npid = \"container\"\n").unwrap_err();
        assert!(err.contains("m.toml:6:7"), "{err}");
        assert!(err.contains("pid \"container\" is not known"), "{err}");
        let err = parse("[containers.debug]\nimage = \"busybox\"\npid = \"host\"\nuserns = true\n")
            .unwrap_err();
        assert!(
            err.contains("pid = \"host\" cannot be combined with userns = true"),
            "{err}"
        );
    }
}
