//! Raw serde types: the manifest exactly as written, before validation.
//!
//! Every table denies unknown keys, and every value that a semantic check may reject is a
//! [`Spanned`] so the check can point at it. Keys that the schema requires are still `Option`
//! here: a missing key is reported by validation, which knows the table's position and can say
//! which values are acceptable (e.g. list the declared images), instead of serde's bare
//! "missing field".
//!
//! Tables themselves are never wrapped in `Spanned` (toml 0.8 cannot span dotted-key tables
//! such as `containers.web.image = ...`); their position is the span of their key in the
//! parent map.
//!
//! Adding a key for a later schema stage: add an `Option<Spanned<T>>` field here, a check in
//! `validate.rs`, a field on the validated type, and a line in docs/manifest.md.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// Reads only `version`, ignoring everything else, so that a file written for another schema
/// version is reported as such instead of as a pile of unknown keys.
#[derive(Debug, Deserialize)]
pub(super) struct VersionProbe {
    pub version: Option<Spanned<toml::Value>>,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a manifest document")]
pub(super) struct RawManifest {
    /// Checked by [`VersionProbe`] first.
    #[allow(dead_code)]
    pub version: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub host: Option<RawHost>,
    #[serde(default)]
    pub network: Option<RawNetwork>,
    #[serde(default)]
    pub images: BTreeMap<Spanned<String>, RawImage>,
    #[serde(default)]
    pub containers: BTreeMap<Spanned<String>, RawContainer>,
    #[serde(default)]
    pub registries: BTreeMap<Spanned<String>, RawRegistry>,
}

/// One `[registries."HOST[:PORT]"]` entry: how to talk to a registry.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like `[registries.\"registry.example.com\"]` with `username`, `password`, `insecure` or `ca`"
)]
pub(super) struct RawRegistry {
    pub insecure: Option<Spanned<bool>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
}

/// `[host]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table like `[host]`")]
pub(super) struct RawHost {
    pub hostname: Option<Spanned<String>>,
    pub api_port: Option<Spanned<i64>>,
    pub api_token: Option<Spanned<String>>,
    pub network: Option<RawHostNetwork>,
}

/// `[host.network]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like `[host.network]` with mode = \"dhcp\""
)]
pub(super) struct RawHostNetwork {
    pub mode: Option<Spanned<String>>,
    pub interface: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub gateway: Option<Spanned<String>>,
    pub dns: Option<Vec<Spanned<String>>>,
    pub mtu: Option<Spanned<i64>>,
}

/// `[network]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table like `[network]`")]
pub(super) struct RawNetwork {
    pub subnet: Option<Spanned<String>>,
}

/// One `[images]` entry.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like `{ source = \"oci-layout:images/NAME\" }`"
)]
pub(super) struct RawImage {
    pub source: Option<Spanned<String>>,
}

/// One `[containers.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table like `[containers.NAME]`")]
pub(super) struct RawContainer {
    pub image: Option<Spanned<String>>,
    pub entrypoint: Option<Spanned<Vec<Spanned<String>>>>,
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    pub env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub workdir: Option<Spanned<String>>,
    pub hostname: Option<Spanned<String>>,
    pub memory: Option<Spanned<toml::Value>>,
    pub cpus: Option<Spanned<toml::Value>>,
    pub pids: Option<Spanned<toml::Value>>,
    pub rlimits: Option<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    pub stop_signal: Option<Spanned<toml::Value>>,
    pub stop_timeout: Option<Spanned<toml::Value>>,
    pub user: Option<Spanned<String>>,
    pub cap_add: Option<Vec<Spanned<String>>>,
    pub cap_drop: Option<Vec<Spanned<String>>>,
    pub seccomp: Option<Spanned<String>>,
    pub read_only: Option<Spanned<bool>>,
    pub userns: Option<Spanned<bool>>,
    pub pid: Option<Spanned<String>>,
    pub mounts: Option<Vec<RawMount>>,
    pub restart: Option<Spanned<String>>,
    pub max_restarts: Option<Spanned<i64>>,
    pub depends_on: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub essential: Option<Spanned<bool>>,
    pub log_max_size: Option<Spanned<toml::Value>>,
    pub log_files: Option<Spanned<i64>>,
    pub healthcheck: Option<RawHealthCheck>,
    pub restart_on_unhealthy: Option<Spanned<bool>>,
    pub network: Option<Spanned<String>>,
    pub ip: Option<Spanned<String>>,
    pub ports: Option<Vec<Spanned<String>>>,
}

/// `[containers.NAME.healthcheck]`; which keys apply depends on `type`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like `{ type = \"tcp\", port = 8080 }`"
)]
pub(super) struct RawHealthCheck {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    pub port: Option<Spanned<i64>>,
    pub path: Option<Spanned<String>>,
    pub status: Option<Spanned<i64>>,
    pub interval: Option<Spanned<toml::Value>>,
    pub timeout: Option<Spanned<toml::Value>>,
    pub retries: Option<Spanned<i64>>,
    pub start_period: Option<Spanned<toml::Value>>,
}

/// One `[[containers.NAME.mounts]]` entry; which keys apply depends on `type`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like `{ type = \"volume\", source = \"data\", target = \"/data\" }`"
)]
pub(super) struct RawMount {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub source: Option<Spanned<String>>,
    pub target: Option<Spanned<String>>,
    pub read_only: Option<Spanned<bool>>,
    pub size: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
}

/// An example of a correct value for `key`, used in wrong-type and missing-key messages.
pub(super) fn example_for(key: &str) -> Option<&'static str> {
    Some(match key {
        "version" => "version = 1",
        "host" => "[host] with hostname = \"demo\"",
        "hostname" => "hostname = \"demo\"",
        "images" => "[images] with busybox = { source = \"oci-layout:images/busybox\" }",
        "source" => "source = \"oci-layout:images/busybox\"",
        "registries" => "[registries.\"registry.example.com:5000\"] with insecure = true",
        "insecure" => "insecure = true",
        "username" => "username = \"deploy\"",
        "password" => "password = \"...\"",
        "ca" => "ca = \"\"\"-----BEGIN CERTIFICATE-----...\"\"\"",
        "containers" => "[containers.hello] with image = \"busybox\"",
        "image" => "image = \"busybox\"",
        "entrypoint" => "entrypoint = [\"/bin/sh\", \"-c\"]",
        "command" => "command = [\"/bin/sh\", \"-c\", \"echo hi\"]",
        "env" => "env = { GREETING = \"hello\" }",
        "workdir" => "workdir = \"/\"",
        "memory" => "memory = \"64Mi\"",
        "cpus" => "cpus = 0.5",
        "pids" => "pids = 256",
        "rlimits" => "rlimits = { nofile = 1024, nproc = [64, 128] }",
        "stop_signal" => "stop_signal = \"SIGTERM\"",
        "stop_timeout" => "stop_timeout = \"10s\"",
        "user" => "user = \"1000:1000\"",
        "cap_add" => "cap_add = [\"NET_ADMIN\"]",
        "cap_drop" => "cap_drop = [\"ALL\"]",
        "seccomp" => "seccomp = \"default\"",
        "read_only" => "read_only = true",
        "userns" => "userns = true",
        "pid" => "pid = \"host\" (or \"private\")",
        "mounts" => "mounts = [{ type = \"volume\", source = \"data\", target = \"/data\" }]",
        "type" => "type = \"volume\" (or \"bind\", \"tmpfs\")",
        "target" => "target = \"/data\"",
        "size" => "size = \"64M\"",
        "mode" => "mode = \"1777\"",
        "api_port" => "api_port = 7070",
        "api_token" => "api_token = \"a-long-random-secret\"",
        "restart" => "restart = \"on-failure\"",
        "max_restarts" => "max_restarts = 5",
        "depends_on" => "depends_on = { db = \"healthy\" }",
        "essential" => "essential = true",
        "log_max_size" => "log_max_size = \"10Mi\"",
        "log_files" => "log_files = 3",
        "healthcheck" => "healthcheck = { type = \"tcp\", port = 8080 }",
        "restart_on_unhealthy" => "restart_on_unhealthy = true",
        "port" => "port = 8080",
        "path" => "path = \"/healthz\"",
        "status" => "status = 200",
        "interval" => "interval = \"5s\"",
        "timeout" => "timeout = \"2s\"",
        "retries" => "retries = 3",
        "start_period" => "start_period = \"10s\"",
        "subnet" => "subnet = \"10.88.0.0/24\"",
        "interface" => "interface = \"eth0\"",
        "address" => "address = \"192.168.1.10/24\"",
        "gateway" => "gateway = \"192.168.1.1\"",
        "dns" => "dns = [\"192.168.1.1\"]",
        "mtu" => "mtu = 1500",
        "network" => "network = \"bridge\" (or \"host\", \"none\")",
        "ip" => "ip = \"10.88.0.10\"",
        "ports" => "ports = [\"8080:80\", \"5353:53/udp\"]",
        _ => return None,
    })
}
