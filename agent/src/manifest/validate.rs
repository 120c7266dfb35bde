//! Validation: raw serde types in, a [`Manifest`] out (cloud-hypervisor style `parse` then
//! `validate`).
//!
//! Every check is located on the offending key or value. All problems are collected and the
//! one that comes first in the file is reported, so fixing errors top to bottom converges.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::diagnose::closest;
use super::error::{ErrorKind, ManifestError};
use super::location::Location;
use super::network::{self, HostAddressing, HostNetwork, NetworkMode, PortMapping, Subnet};
use super::schema::{
    RawContainer, RawHealthCheck, RawHostNetwork, RawImage, RawManifest, RawMount, RawRegistry,
    VersionProbe,
};
use super::supervision::{self, Condition, HealthCheck, LogSettings, Probe, RestartPolicy};
use super::{
    limits, rules, ContainerSpec, Host, ImageDecl, Manifest, MountDecl, NetworkDecl, Origin,
    PidMode, RemoteApi, SeccompProfile, DEFAULT_HOSTNAME, MIN_API_TOKEN, SUPPORTED_VERSIONS,
};

/// Checks `version` (read by the probe before the full schema is applied).
pub(super) fn check_version(
    probe: &VersionProbe,
    text: &str,
    file: &Path,
) -> Result<u32, ManifestError> {
    let supported = SUPPORTED_VERSIONS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let Some(version) = &probe.version else {
        let blank = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        let message = if blank {
            "the manifest is empty; a manifest starts with `version = 1`".to_owned()
        } else {
            format!("missing `version`; add `version = 1` as the first line (supported versions: {supported})")
        };
        return Err(
            ManifestError::new(ErrorKind::Version, file, Location::START, message)
                .with_hint("see docs/manifest.md for a complete example"),
        );
    };
    let at = Location::of_offset(text, version.span().start);
    match version.get_ref() {
        toml::Value::Integer(n) if u32::try_from(*n).is_ok_and(|n| SUPPORTED_VERSIONS.contains(&n)) => {
            Ok(u32::try_from(*n).unwrap_or_default())
        }
        toml::Value::Integer(n) => Err(ManifestError::new(
            ErrorKind::Version,
            file,
            at,
            format!("unsupported manifest version {n}; this berth supports version {supported}: write `version = 1` (and only keys of that version)"),
        )),
        other => Err(ManifestError::new(
            ErrorKind::Version,
            file,
            at,
            format!("`version` must be an integer, found {} {other}; write `version = 1`", other.type_str()),
        )),
    }
}

/// Collects located problems and the positions of everything valid.
struct Checker<'a> {
    text: &'a str,
    file: &'a Path,
    problems: Vec<(usize, ManifestError)>,
    origin: Origin,
    /// `depends_on` entries (from, to, condition, span of `to`), checked as a graph at the end.
    edges: Vec<(String, String, Condition, Range<usize>)>,
    /// Each valid container's restart policy, for the graph check.
    restarts: BTreeMap<String, RestartPolicy>,
}

impl Checker<'_> {
    fn at(&self, span: &Range<usize>) -> Location {
        Location::of_offset(self.text, span.start)
    }

    fn fail(&mut self, kind: ErrorKind, span: &Range<usize>, message: String) {
        let e = ManifestError::new(kind, self.file, self.at(span), message);
        self.problems.push((span.start, e));
    }

    fn fail_with_hint(
        &mut self,
        kind: ErrorKind,
        span: &Range<usize>,
        message: String,
        hint: &str,
    ) {
        let e = ManifestError::new(kind, self.file, self.at(span), message).with_hint(hint);
        self.problems.push((span.start, e));
    }

    fn record(&mut self, key: String, span: &Range<usize>) {
        let at = self.at(span);
        self.origin.locations.insert(key, at);
    }

    /// Runs a value rule and records a located error when it fails.
    fn rule(&mut self, span: &Range<usize>, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => true,
            Err(message) => {
                self.fail(ErrorKind::InvalidValue, span, message);
                false
            }
        }
    }
}

/// Validates `raw` (parsed from `text`, the content of `file`).
pub(super) fn validate(
    raw: RawManifest,
    version: u32,
    text: &str,
    file: &Path,
) -> Result<Manifest, ManifestError> {
    let mut c = Checker {
        text,
        file,
        problems: Vec::new(),
        origin: Origin {
            file: file.to_path_buf(),
            locations: BTreeMap::new(),
        },
        edges: Vec::new(),
        restarts: BTreeMap::new(),
    };

    let mut host = Host {
        hostname: DEFAULT_HOSTNAME.to_owned(),
        api: None,
        network: HostNetwork::default(),
    };
    if let Some(raw_host) = raw.host {
        if let Some(hostname) = raw_host.hostname {
            c.record("host.hostname".into(), &hostname.span());
            if c.rule(&hostname.span(), rules::hostname(hostname.get_ref())) {
                host.hostname = hostname.into_inner();
            }
        }
        host.api = remote_api(&mut c, raw_host.api_port, raw_host.api_token);
        if let Some(raw_network) = raw_host.network {
            host.network = host_network(&mut c, raw_network);
        }
    }

    let mut network = NetworkDecl::default();
    if let Some(subnet) = raw.network.and_then(|n| n.subnet) {
        c.record("network.subnet".into(), &subnet.span());
        match subnet.get_ref().parse::<Subnet>() {
            Ok(parsed) => network.subnet = parsed,
            Err(message) => c.fail(ErrorKind::InvalidValue, &subnet.span(), message),
        }
    }

    let mut images = BTreeMap::new();
    for (name, image) in raw.images {
        if let Some(decl) = image_decl(&mut c, &name, image) {
            images.insert(name.into_inner(), decl);
        }
    }

    let declared: Vec<String> = images.keys().cloned().collect();
    let names: Vec<String> = raw.containers.keys().map(|k| k.get_ref().clone()).collect();
    let mut containers = BTreeMap::new();
    let mut addressing = Addressing::default();
    for (name, raw_container) in raw.containers {
        let net = container_network(
            &mut c,
            &name,
            raw_container.network.clone(),
            raw_container.ip.clone(),
            raw_container.ports.clone(),
            network.subnet,
            &mut addressing,
        );
        if let Some(mut spec) = container(&mut c, &name, raw_container, &declared) {
            if let Some((mode, ip, ports)) = net {
                (spec.network, spec.ip, spec.ports) = (mode, ip, ports);
                containers.insert(name.into_inner(), spec);
            }
        }
    }
    check_dependencies(&mut c, &names);

    let mut registries = BTreeMap::new();
    for (host, raw_registry) in raw.registries {
        if let Some(settings) = registry(&mut c, &host, raw_registry) {
            registries.insert(host.into_inner(), settings);
        }
    }

    if let Some((_, first)) = c.problems.into_iter().min_by_key(|(offset, _)| *offset) {
        return Err(first);
    }
    Ok(Manifest {
        version,
        host,
        network,
        images,
        containers,
        registries,
        origin: c.origin,
    })
}

/// One `[registries."HOST"]` table.
fn registry(
    c: &mut Checker<'_>,
    host: &Spanned<String>,
    raw: RawRegistry,
) -> Option<super::RegistrySettings> {
    let key = format!("registries.{}", host.get_ref());
    c.record(key.clone(), &host.span());
    let mut ok = c.rule(&host.span(), rules::registry_host(host.get_ref()));
    let mut settings = super::RegistrySettings {
        insecure: raw.insecure.as_ref().is_some_and(|i| *i.get_ref()),
        ..Default::default()
    };
    match (raw.username, raw.password) {
        (Some(user), Some(password)) => {
            ok &= c.rule(
                &user.span(),
                if user.get_ref().is_empty() || user.get_ref().contains(':') {
                    Err(format!(
                        "registry {:?}: `username` must be non-empty and without ':'",
                        host.get_ref()
                    ))
                } else {
                    Ok(())
                },
            );
            settings.credentials = Some((user.into_inner(), password.into_inner()));
        }
        (Some(only), None) | (None, Some(only)) => {
            c.fail(
                ErrorKind::MissingKey,
                &only.span(),
                format!(
                    "registry {:?}: `username` and `password` go together; write both (or neither, to pull anonymously)",
                    host.get_ref()
                ),
            );
            ok = false;
        }
        (None, None) => {}
    }
    if let Some(ca) = raw.ca {
        ok &= c.rule(
            &ca.span(),
            if ca.get_ref().contains("-----BEGIN CERTIFICATE-----") {
                Ok(())
            } else {
                Err(format!(
                    "registry {:?}: `ca` is not a PEM certificate; paste the CA's certificate including its -----BEGIN CERTIFICATE----- line, e.g. in a \"\"\" multi-line string",
                    host.get_ref()
                ))
            },
        );
        settings.ca = Some(ca.into_inner());
    }
    ok.then_some(settings)
}

/// `[host.network]`: the mode and the keys that go with it. Invalid keys are reported; what
/// is returned then does not matter (the manifest is rejected).
fn host_network(c: &mut Checker<'_>, raw: RawHostNetwork) -> HostNetwork {
    let mut out = HostNetwork::default();
    let mut mode = "dhcp";
    if let Some(m) = &raw.mode {
        c.record("host.network.mode".into(), &m.span());
        match m.get_ref().as_str() {
            known @ ("dhcp" | "static" | "off") => mode = known,
            other => c.fail(
                ErrorKind::InvalidValue,
                &m.span(),
                format!(
                    "[host.network] mode {other:?} is not known; write mode = \"dhcp\" (the default), \"static\" (with `address`) or \"off\" (leave the interface alone)"
                ),
            ),
        }
    }
    if let Some(i) = raw.interface {
        c.record("host.network.interface".into(), &i.span());
        if c.rule(&i.span(), rules::interface_name(i.get_ref())) {
            out.interface = Some(i.into_inner());
        }
    }
    if let Some(list) = raw.dns {
        let mut servers = Vec::new();
        for (n, d) in list.iter().enumerate() {
            match d.get_ref().parse::<Ipv4Addr>() {
                Ok(ip) if !ip.is_unspecified() && !ip.is_broadcast() => servers.push(ip),
                _ => c.fail(
                    ErrorKind::InvalidValue,
                    &d.span(),
                    format!(
                        "[host.network] dns[{n}] {:?} is not an IPv4 address of a resolver; write e.g. dns = [\"192.168.1.1\", \"1.1.1.1\"]",
                        d.get_ref()
                    ),
                ),
            }
        }
        out.dns = Some(servers);
    }
    if let Some(m) = raw.mtu {
        c.record("host.network.mtu".into(), &m.span());
        match u32::try_from(*m.get_ref()) {
            Ok(mtu) if (576..=65535).contains(&mtu) => out.mtu = Some(mtu),
            _ => c.fail(
                ErrorKind::InvalidValue,
                &m.span(),
                format!(
                    "[host.network] mtu {} is outside 576..=65535; Ethernet's is 1500, write e.g. mtu = 1500",
                    m.get_ref()
                ),
            ),
        }
    }
    let static_only = |c: &mut Checker<'_>, key: &str, span: &Range<usize>| {
        c.fail(
            ErrorKind::InvalidValue,
            span,
            format!(
                "[host.network] `{key}` applies to mode = \"static\" only, but the mode is \"{mode}\"; remove `{key}` or write mode = \"static\""
            ),
        );
    };
    if mode != "static" {
        if let Some(a) = &raw.address {
            static_only(c, "address", &a.span());
        }
        if let Some(g) = &raw.gateway {
            static_only(c, "gateway", &g.span());
        }
        out.addressing = if mode == "off" {
            HostAddressing::Off
        } else {
            HostAddressing::Dhcp
        };
        return out;
    }
    let Some(address) = raw.address else {
        if let Some(m) = &raw.mode {
            c.fail(
                ErrorKind::MissingKey,
                &m.span(),
                "[host.network] mode = \"static\" needs `address`: add address = \"192.168.1.10/24\" (the host's address with its prefix length), or use mode = \"dhcp\"".into(),
            );
        }
        return out;
    };
    c.record("host.network.address".into(), &address.span());
    let (ip, prefix) = match network::host_cidr(address.get_ref()) {
        Ok(parsed) => parsed,
        Err(message) => {
            c.fail(
                ErrorKind::InvalidValue,
                &address.span(),
                format!("[host.network] {message}"),
            );
            return out;
        }
    };
    let mut gateway = None;
    if let Some(g) = raw.gateway {
        c.record("host.network.gateway".into(), &g.span());
        match g.get_ref().parse::<Ipv4Addr>() {
            Err(_) => c.fail(
                ErrorKind::InvalidValue,
                &g.span(),
                format!(
                    "[host.network] gateway {:?} is not an IPv4 address; write e.g. gateway = \"{}\"",
                    g.get_ref(),
                    Ipv4Addr::from((u32::from(ip) & Subnet::mask_of(prefix)) + 1)
                ),
            ),
            Ok(gw) if gw == ip => c.fail(
                ErrorKind::InvalidValue,
                &g.span(),
                format!("[host.network] gateway {gw} is the host's own address; write the router's address"),
            ),
            Ok(gw) if !network::on_link(ip, prefix, gw) => c.fail(
                ErrorKind::InvalidValue,
                &g.span(),
                format!(
                    "[host.network] gateway {gw} is outside the host's subnet {}/{prefix} (from address {:?}); the gateway must be on the same network as the address — fix the gateway or the prefix length",
                    Ipv4Addr::from(u32::from(ip) & Subnet::mask_of(prefix)),
                    address.get_ref()
                ),
            ),
            Ok(gw) => gateway = Some(gw),
        }
    }
    out.addressing = HostAddressing::Static {
        address: ip,
        prefix,
        gateway,
    };
    out
}

/// `api_port` and `api_token` go together; the token must be long enough to guess badly.
fn remote_api(
    c: &mut Checker<'_>,
    port: Option<Spanned<i64>>,
    token: Option<Spanned<String>>,
) -> Option<RemoteApi> {
    match (port, token) {
        (None, None) => None,
        (Some(p), None) => {
            c.fail(
                ErrorKind::MissingKey,
                &p.span(),
                "`api_port` needs `api_token`: the remote API only answers clients that send it; add api_token = \"...\" (at least 16 characters, e.g. from `head -c 24 /dev/urandom | base64`)".into(),
            );
            None
        }
        (None, Some(t)) => {
            c.fail(
                ErrorKind::MissingKey,
                &t.span(),
                "`api_token` without `api_port`: add api_port = 7070 to turn the remote API on, or remove the token".into(),
            );
            None
        }
        (Some(p), Some(t)) => {
            c.record("host.api_port".into(), &p.span());
            c.record("host.api_token".into(), &t.span());
            let port = match supervision::port(*p.get_ref()) {
                Ok(port) => Some(port),
                Err(m) => {
                    c.fail(
                        ErrorKind::InvalidValue,
                        &p.span(),
                        format!("`api_port`: {m}"),
                    );
                    None
                }
            };
            let token = t.get_ref();
            let good_token = token.chars().count() >= MIN_API_TOKEN
                && token.chars().all(|ch| ch.is_ascii_graphic());
            if !good_token {
                c.fail(
                    ErrorKind::InvalidValue,
                    &t.span(),
                    format!("`api_token` must be at least {MIN_API_TOKEN} printable ASCII characters without spaces; generate one with `head -c 24 /dev/urandom | base64`"),
                );
                return None;
            }
            Some(RemoteApi {
                port: port?,
                token: t.into_inner(),
            })
        }
    }
}

fn image_decl(c: &mut Checker<'_>, name: &Spanned<String>, image: RawImage) -> Option<ImageDecl> {
    let key = format!("images.{}", name.get_ref());
    c.record(key.clone(), &name.span());
    let name_ok = c.rule(&name.span(), rules::image_name(name.get_ref()));
    let Some(source) = image.source else {
        c.fail_with_hint(
            ErrorKind::MissingKey,
            &name.span(),
            format!(
                "image {:?} has no `source`; write {} = {{ source = \"oci-layout:images/{}\" }}",
                name.get_ref(),
                name.get_ref(),
                name.get_ref()
            ),
            "the path is relative to the manifest's directory",
        );
        return None;
    };
    c.record(format!("{key}.source"), &source.span());
    match rules::image_source(source.get_ref()) {
        Ok(parsed) => name_ok.then_some(ImageDecl { source: parsed }),
        Err(message) => {
            c.fail(
                ErrorKind::InvalidValue,
                &source.span(),
                format!("image {:?}: {message}", name.get_ref()),
            );
            None
        }
    }
}

fn argv(
    c: &mut Checker<'_>,
    key: &str,
    value: Option<Spanned<Vec<Spanned<String>>>>,
) -> Option<Option<Vec<String>>> {
    let Some(value) = value else {
        return Some(None);
    };
    let span = value.span();
    let items = value.into_inner();
    let args: Vec<String> = items.iter().map(|a| a.get_ref().clone()).collect();
    match rules::argv(key, &args) {
        Ok(()) => Some(Some(args)),
        Err((index, message)) => {
            let at = index
                .and_then(|i| items.get(i))
                .map_or(span, |item| item.span());
            c.fail(ErrorKind::InvalidValue, &at, message);
            None
        }
    }
}

fn container(
    c: &mut Checker<'_>,
    name: &Spanned<String>,
    raw: RawContainer,
    declared: &[String],
) -> Option<ContainerSpec> {
    let cname = name.get_ref().as_str();
    let key = format!("containers.{cname}");
    c.record(key.clone(), &name.span());
    let mut ok = c.rule(&name.span(), rules::container_name(cname));
    let declared_list = if declared.is_empty() {
        "none are declared".to_owned()
    } else {
        declared
            .iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    let image = match raw.image {
        None => {
            let example = declared.first().map_or("busybox", String::as_str);
            c.fail_with_hint(
                ErrorKind::MissingKey,
                &name.span(),
                format!("container {cname:?} has no `image`; add image = \"NAME\" naming an [images] entry (declared: {declared_list})"),
                &format!("write e.g.: image = \"{example}\""),
            );
            None
        }
        Some(image) => {
            c.record(format!("{key}.image"), &image.span());
            if declared.iter().any(|d| d == image.get_ref()) {
                Some(image.into_inner())
            } else {
                let refs: Vec<&str> = declared.iter().map(String::as_str).collect();
                let suggestion = closest(image.get_ref(), &refs)
                    .map(|b| format!("did you mean {b:?}? "))
                    .unwrap_or_default();
                let message = if declared.is_empty() {
                    format!(
                        "container {cname:?}: image {:?} is not declared and [images] is empty; declare it: [images] {} = {{ source = \"oci-layout:images/{}\" }}",
                        image.get_ref(), image.get_ref(), image.get_ref()
                    )
                } else {
                    format!(
                        "container {cname:?}: image {:?} is not declared in [images]; {suggestion}declared images: {declared_list}",
                        image.get_ref()
                    )
                };
                c.fail(ErrorKind::UnknownImage, &image.span(), message);
                None
            }
        }
    };

    if let Some(v) = &raw.entrypoint {
        c.record(format!("{key}.entrypoint"), &v.span());
    }
    if let Some(v) = &raw.command {
        c.record(format!("{key}.command"), &v.span());
    }
    let entrypoint = argv(c, "entrypoint", raw.entrypoint);
    let command = argv(c, "command", raw.command);

    let mut env = BTreeMap::new();
    for (k, v) in raw.env.unwrap_or_default() {
        c.record(format!("{key}.env.{}", k.get_ref()), &k.span());
        ok &= c.rule(&k.span(), rules::env_key(k.get_ref()));
        ok &= c.rule(&v.span(), rules::env_value(k.get_ref(), v.get_ref()));
        env.insert(k.into_inner(), v.into_inner());
    }

    let mut workdir = None;
    if let Some(w) = raw.workdir {
        c.record(format!("{key}.workdir"), &w.span());
        ok &= c.rule(&w.span(), rules::workdir(w.get_ref()));
        workdir = Some(w.into_inner());
    }

    let mut hostname = None;
    if let Some(h) = raw.hostname {
        c.record(format!("{key}.hostname"), &h.span());
        ok &= c.rule(&h.span(), rules::hostname(h.get_ref()));
        hostname = Some(h.into_inner());
    }

    let mut spec_limits = limits::Limits::default();
    let value = |c: &mut Checker<'_>, field: &str, raw: &Option<Spanned<toml::Value>>| {
        let v = raw.as_ref()?;
        c.record(format!("{key}.{field}"), &v.span());
        Some((v.span(), v.get_ref().clone()))
    };
    let mut check = |c: &mut Checker<'_>, span: &Range<usize>, result: Result<(), String>| {
        let good = c.rule(
            span,
            result.map_err(|m| format!("container {cname:?}: {m}")),
        );
        ok &= good;
    };
    if let Some((span, v)) = value(c, "memory", &raw.memory) {
        check(
            c,
            &span,
            limits::memory(&v).map(|n| spec_limits.memory = Some(n)),
        );
    }
    if let Some((span, v)) = value(c, "cpus", &raw.cpus) {
        check(
            c,
            &span,
            limits::cpus(&v).map(|n| spec_limits.cpus = Some(n)),
        );
    }
    if let Some((span, v)) = value(c, "pids", &raw.pids) {
        check(
            c,
            &span,
            limits::pids(&v).map(|n| spec_limits.pids = Some(n)),
        );
    }
    let mut stop_signal = None;
    if let Some((span, v)) = value(c, "stop_signal", &raw.stop_signal) {
        check(
            c,
            &span,
            limits::stop_signal(&v).map(|s| stop_signal = Some(s)),
        );
    }
    let mut stop_timeout = None;
    if let Some((span, v)) = value(c, "stop_timeout", &raw.stop_timeout) {
        check(
            c,
            &span,
            limits::stop_timeout(&v).map(|d| stop_timeout = Some(d)),
        );
    }
    for (name, v) in raw.rlimits.unwrap_or_default() {
        c.record(format!("{key}.rlimits.{}", name.get_ref()), &name.span());
        match limits::rlimit(name.get_ref(), v.get_ref()) {
            Ok(r) => {
                spec_limits.rlimits.insert(name.into_inner(), r);
            }
            Err(message) => {
                // An unknown name points at the name, a bad value at the value.
                let span = if limits::RLIMIT_NAMES.contains(&name.get_ref().as_str()) {
                    v.span()
                } else {
                    name.span()
                };
                check(c, &span, Err(message));
            }
        }
    }
    let mut user = None;
    if let Some(u) = raw.user {
        c.record(format!("{key}.user"), &u.span());
        ok &= c.rule(&u.span(), rules::user(u.get_ref()));
        user = Some(u.into_inner());
    }

    let mut capability_list =
        |c: &mut Checker<'_>, list: Option<Vec<Spanned<String>>>, which: &str| {
            let mut names = Vec::new();
            for (i, name) in list.unwrap_or_default().into_iter().enumerate() {
                if i == 0 {
                    c.record(format!("{key}.{which}"), &name.span());
                }
                let good = c.rule(
                    &name.span(),
                    rules::capability(name.get_ref()).map_err(|m| format!("`{which}`: {m}")),
                );
                ok &= good;
                names.push(name.into_inner());
            }
            names
        };
    let cap_add = capability_list(c, raw.cap_add, "cap_add");
    let cap_drop = capability_list(c, raw.cap_drop, "cap_drop");

    let mut seccomp = SeccompProfile::Default;
    if let Some(s) = raw.seccomp {
        c.record(format!("{key}.seccomp"), &s.span());
        match SeccompProfile::parse(s.get_ref()) {
            Ok(profile) => seccomp = profile,
            Err(message) => {
                c.fail(ErrorKind::InvalidValue, &s.span(), message);
                ok = false;
            }
        }
    }
    let read_only = raw.read_only.is_some_and(|r| {
        c.record(format!("{key}.read_only"), &r.span());
        r.into_inner()
    });
    let userns = raw.userns.is_some_and(|u| {
        c.record(format!("{key}.userns"), &u.span());
        u.into_inner()
    });
    let mut pid = PidMode::default();
    if let Some(p) = raw.pid {
        c.record(format!("{key}.pid"), &p.span());
        match PidMode::parse(p.get_ref()) {
            Ok(mode) => pid = mode,
            Err(message) => {
                c.fail(
                    ErrorKind::InvalidValue,
                    &p.span(),
                    format!("container {cname:?}: {message}"),
                );
                ok = false;
            }
        }
        if pid == PidMode::Host && userns {
            c.fail(
                ErrorKind::InvalidValue,
                &p.span(),
                format!(
                    "container {cname:?}: pid = \"host\" cannot be combined with userns = true (a user namespace cannot mount the host's /proc); remove one of them"
                ),
            );
            ok = false;
        }
    }
    let mut mounts = Vec::new();
    let mut seen: Vec<(std::path::PathBuf, Location, usize)> = Vec::new();
    for (index, raw_mount) in raw.mounts.unwrap_or_default().into_iter().enumerate() {
        let mkey = format!("{key}.mounts.{index}");
        let target_span = raw_mount.target.as_ref().map(Spanned::span);
        match mount(c, cname, index, &name.span(), &mkey, raw_mount) {
            Some(decl) => {
                let normalized = rules::normalized_target(decl.target());
                let span = target_span.unwrap_or_else(|| name.span());
                let at = c.at(&span);
                if let Some((_, first_at, first_index)) =
                    seen.iter().find(|(t, _, _)| *t == normalized)
                {
                    c.fail(
                        ErrorKind::InvalidValue,
                        &span,
                        format!(
                            "container {cname:?}: mounts[{index}] and mounts[{first_index}] (line {}, column {}) both mount on {:?}; each target may be mounted once",
                            first_at.line, first_at.column, decl.target()
                        ),
                    );
                    ok = false;
                } else {
                    seen.push((normalized, at, index));
                    mounts.push(decl);
                }
            }
            None => ok = false,
        }
    }

    let supervision = supervision(
        c,
        cname,
        &key,
        &raw.restart,
        &raw.max_restarts,
        raw.depends_on,
        &raw.essential,
        &raw.log_max_size,
        &raw.log_files,
    );
    let (image, entrypoint, command) = (image?, entrypoint?, command?);
    let healthcheck = match raw.healthcheck {
        None => Some(None),
        Some(h) => healthcheck(c, cname, &name.span(), &key, h).map(Some),
    };
    let restart_on_unhealthy = raw.restart_on_unhealthy.is_some_and(|r| {
        c.record(format!("{key}.restart_on_unhealthy"), &r.span());
        r.into_inner()
    });
    let (restart, max_restarts, depends_on, essential, log) = supervision?;
    let healthcheck = healthcheck?;
    c.restarts.insert(cname.to_owned(), restart);
    ok.then_some(ContainerSpec {
        image,
        entrypoint,
        command,
        env,
        workdir,
        hostname,
        limits: spec_limits,
        stop_signal,
        stop_timeout,
        user,
        cap_add,
        cap_drop,
        seccomp,
        read_only,
        userns,
        pid,
        mounts,
        restart,
        max_restarts,
        depends_on,
        essential,
        log,
        healthcheck,
        restart_on_unhealthy,
        network: NetworkMode::default(),
        ip: None,
        ports: Vec::new(),
    })
}

/// `healthcheck = { type = ..., ... }`: `type` decides which keys are required and allowed.
fn healthcheck(
    c: &mut Checker<'_>,
    cname: &str,
    container_span: &Range<usize>,
    key: &str,
    raw: RawHealthCheck,
) -> Option<HealthCheck> {
    let what = format!("container {cname:?}: healthcheck");
    let key = format!("{key}.healthcheck");
    let entry_span = [
        raw.kind.as_ref().map(Spanned::span),
        raw.command.as_ref().map(Spanned::span),
        raw.port.as_ref().map(Spanned::span),
        raw.path.as_ref().map(Spanned::span),
        raw.interval.as_ref().map(Spanned::span),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|s| s.start)
    .unwrap_or_else(|| container_span.clone());
    c.record(key.clone(), &entry_span);
    let mut ok = true;
    let Some(kind) = raw.kind else {
        c.fail(
            ErrorKind::MissingKey,
            &entry_span,
            format!("{what} has no `type`; write type = \"exec\", \"tcp\" or \"http\""),
        );
        return None;
    };
    let kind_name = kind.get_ref().as_str();
    if !["exec", "tcp", "http"].contains(&kind_name) {
        c.fail(
            ErrorKind::InvalidValue,
            &kind.span(),
            format!(
                "{what}: unknown type {kind_name:?}; the types are \"exec\", \"tcp\", \"http\""
            ),
        );
        return None;
    }
    let refused = [
        (
            "command",
            raw.command.as_ref().map(Spanned::span),
            kind_name != "exec",
        ),
        (
            "port",
            raw.port.as_ref().map(Spanned::span),
            kind_name == "exec",
        ),
        (
            "path",
            raw.path.as_ref().map(Spanned::span),
            kind_name != "http",
        ),
        (
            "status",
            raw.status.as_ref().map(Spanned::span),
            kind_name != "http",
        ),
    ];
    for (k, span, refuse) in refused {
        if let (Some(span), true) = (span, refuse) {
            c.fail(
                ErrorKind::InvalidValue,
                &span,
                format!("{what}: `{k}` does not apply to a {kind_name} check; remove it"),
            );
            ok = false;
        }
    }
    let mut rule = |c: &mut Checker<'_>, span: &Range<usize>, r: Result<(), String>| {
        let good = c.rule(span, r.map_err(|m| format!("{what}: {m}")));
        ok &= good;
    };
    let mut duration =
        |c: &mut Checker<'_>, field: &str, v: &Option<Spanned<toml::Value>>, default: Duration| {
            let Some(v) = v else { return default };
            c.record(format!("{key}.{field}"), &v.span());
            match limits::duration(field, v.get_ref()) {
                Ok(d) if d.is_zero() && field != "start_period" => {
                    rule(c, &v.span(), Err(format!("`{field}` must be more than 0")));
                    default
                }
                Ok(d) => d,
                Err(m) => {
                    rule(c, &v.span(), Err(m));
                    default
                }
            }
        };
    let interval = duration(
        c,
        "interval",
        &raw.interval,
        supervision::DEFAULT_HEALTH_INTERVAL,
    );
    let timeout = duration(
        c,
        "timeout",
        &raw.timeout,
        supervision::DEFAULT_HEALTH_TIMEOUT,
    );
    let start_period = duration(c, "start_period", &raw.start_period, Duration::ZERO);
    let mut retries = supervision::DEFAULT_HEALTH_RETRIES;
    if let Some(r) = &raw.retries {
        match supervision::retries(*r.get_ref()) {
            Ok(n) => retries = n,
            Err(m) => rule(c, &r.span(), Err(m)),
        }
    }
    let port = match &raw.port {
        Some(p) => match supervision::port(*p.get_ref()) {
            Ok(n) => Some(n),
            Err(m) => {
                rule(c, &p.span(), Err(m));
                None
            }
        },
        None => None,
    };
    let probe = match kind_name {
        "exec" => {
            let Some(command) = argv(c, "command", raw.command)? else {
                c.fail(
                    ErrorKind::MissingKey,
                    &kind.span(),
                    format!("{what}: an exec check needs `command`, e.g. command = [\"/bin/sh\", \"-c\", \"test -f /ready\"]"),
                );
                return None;
            };
            Probe::Exec { command }
        }
        _ => {
            let Some(port) = port else {
                if raw.port.is_none() {
                    c.fail(
                        ErrorKind::MissingKey,
                        &kind.span(),
                        format!("{what}: a {kind_name} check needs `port`, e.g. port = 8080"),
                    );
                }
                return None;
            };
            if kind_name == "tcp" {
                Probe::Tcp { port }
            } else {
                let path = raw.path.map_or_else(|| "/".to_owned(), |p| {
                    if !p.get_ref().starts_with('/') || p.get_ref().contains(char::is_whitespace) {
                        rule(c, &p.span(), Err(format!("path {:?} must start with '/' and contain no spaces, e.g. \"/healthz\"", p.get_ref())));
                    }
                    p.into_inner()
                });
                let status = match &raw.status {
                    Some(s) => match supervision::http_status(*s.get_ref()) {
                        Ok(n) => n,
                        Err(m) => {
                            rule(c, &s.span(), Err(m));
                            200
                        }
                    },
                    None => 200,
                };
                Probe::Http { port, path, status }
            }
        }
    };
    ok.then_some(HealthCheck {
        probe,
        interval,
        timeout,
        retries,
        start_period,
    })
}

/// What [`supervision`] returns: restart, max_restarts, depends_on, essential, log settings.
type Supervision = (
    RestartPolicy,
    Option<u32>,
    BTreeMap<String, Condition>,
    bool,
    LogSettings,
);

/// `restart`, `max_restarts`, `depends_on`, `essential`, `log_max_size`, `log_files`. The
/// dependency targets are only recorded here; [`check_dependencies`] checks the graph.
#[allow(clippy::too_many_arguments)]
fn supervision(
    c: &mut Checker<'_>,
    cname: &str,
    key: &str,
    restart: &Option<Spanned<String>>,
    max_restarts: &Option<Spanned<i64>>,
    depends_on: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    essential: &Option<Spanned<bool>>,
    log_max_size: &Option<Spanned<toml::Value>>,
    log_files: &Option<Spanned<i64>>,
) -> Option<Supervision> {
    let mut ok = true;
    let mut fail = |c: &mut Checker<'_>, span: &Range<usize>, m: String| {
        c.fail(
            ErrorKind::InvalidValue,
            span,
            format!("container {cname:?}: {m}"),
        );
        ok = false;
    };
    let mut policy = RestartPolicy::No;
    if let Some(r) = restart {
        c.record(format!("{key}.restart"), &r.span());
        match supervision::restart(r.get_ref()) {
            Ok(p) => policy = p,
            Err(m) => fail(c, &r.span(), m),
        }
    }
    let mut max = None;
    if let Some(m) = max_restarts {
        c.record(format!("{key}.max_restarts"), &m.span());
        match supervision::max_restarts(*m.get_ref()) {
            Ok(n) => max = Some(n),
            Err(e) => fail(c, &m.span(), e),
        }
    }
    let mut deps = BTreeMap::new();
    for (target, cond) in depends_on.unwrap_or_default() {
        c.record(
            format!("{key}.depends_on.{}", target.get_ref()),
            &target.span(),
        );
        match supervision::condition(cond.get_ref()) {
            Ok(condition) => {
                c.edges.push((
                    cname.to_owned(),
                    target.get_ref().clone(),
                    condition,
                    target.span(),
                ));
                deps.insert(target.into_inner(), condition);
            }
            Err(e) => fail(
                c,
                &cond.span(),
                format!("depends_on.{}: {e}", target.get_ref()),
            ),
        }
    }
    let essential = essential.as_ref().is_some_and(|e| {
        c.record(format!("{key}.essential"), &e.span());
        *e.get_ref()
    });
    let mut log = LogSettings::default();
    if let Some(size) = log_max_size {
        c.record(format!("{key}.log_max_size"), &size.span());
        match supervision::log_max_size(size.get_ref()) {
            Ok(n) => log.max_size = n,
            Err(e) => fail(c, &size.span(), e),
        }
    }
    if let Some(files) = log_files {
        c.record(format!("{key}.log_files"), &files.span());
        match supervision::log_files(*files.get_ref()) {
            Ok(n) => log.files = n,
            Err(e) => fail(c, &files.span(), e),
        }
    }
    ok.then_some((policy, max, deps, essential, log))
}

/// The `depends_on` graph: unknown targets, self-dependencies, cycles, and `completed` on a
/// container that never completes. `names` are all declared containers, valid or not (an
/// invalid one is reported on its own; naming it is not a second error).
fn check_dependencies(c: &mut Checker<'_>, names: &[String]) {
    let edges: Vec<supervision::Edge<'_>> = c
        .edges
        .iter()
        .map(|(from, to, condition, _)| supervision::Edge {
            from,
            to,
            condition: *condition,
            to_restart: c.restarts.get(to).copied(),
        })
        .collect();
    let declared: Vec<&str> = names.iter().map(String::as_str).collect();
    let problems = supervision::dependency_problems(&edges, &declared);
    let spans: Vec<Range<usize>> = c.edges.iter().map(|e| e.3.clone()).collect();
    for (index, message) in problems {
        if let Some(span) = spans.get(index) {
            c.fail(ErrorKind::InvalidValue, span, message);
        }
    }
}

/// Pinned addresses and published ports seen so far, to report clashes naming both
/// containers.
#[derive(Default)]
struct Addressing {
    ips: Vec<(std::net::Ipv4Addr, String, Location)>,
    ports: Vec<(PortMapping, String, Location)>,
}

/// A container's `network`, `ip` and `ports`; `None` when any of them is invalid.
fn container_network(
    c: &mut Checker<'_>,
    name: &Spanned<String>,
    network: Option<Spanned<String>>,
    ip: Option<Spanned<String>>,
    ports: Option<Vec<Spanned<String>>>,
    subnet: Subnet,
    seen: &mut Addressing,
) -> Option<(NetworkMode, Option<std::net::Ipv4Addr>, Vec<PortMapping>)> {
    let cname = name.get_ref().as_str();
    let key = format!("containers.{cname}");
    let mut ok = true;
    let mut mode = NetworkMode::default();
    if let Some(n) = &network {
        c.record(format!("{key}.network"), &n.span());
        match NetworkMode::parse(n.get_ref()) {
            Ok(m) => mode = m,
            Err(message) => {
                c.fail(
                    ErrorKind::InvalidValue,
                    &n.span(),
                    format!("container {cname:?}: {message}"),
                );
                ok = false;
            }
        }
    }
    let only_bridge = |c: &mut Checker<'_>, what: &str, span: &Range<usize>| {
        c.fail(
            ErrorKind::InvalidValue,
            span,
            format!(
                "container {cname:?}: `{what}` needs the bridge network, but network = \"{}\"; remove `{what}` or the `network` line",
                mode.as_str()
            ),
        );
    };
    let mut address = None;
    if let Some(ip) = &ip {
        c.record(format!("{key}.ip"), &ip.span());
        if mode != NetworkMode::Bridge {
            only_bridge(c, "ip", &ip.span());
            ok = false;
        } else {
            match ip.get_ref().parse::<std::net::Ipv4Addr>() {
                Err(_) => {
                    c.fail(
                        ErrorKind::InvalidValue,
                        &ip.span(),
                        format!(
                            "container {cname:?}: ip {:?} is not an IPv4 address; write e.g. ip = \"{}\"",
                            ip.get_ref(),
                            subnet.container_addresses().nth(8).unwrap_or(subnet.gateway())
                        ),
                    );
                    ok = false;
                }
                Ok(addr) if !subnet.usable_for_container(addr) => {
                    let why = if subnet.contains(addr) {
                        format!(
                            "is the subnet's network, bridge ({}) or broadcast address",
                            subnet.gateway()
                        )
                    } else {
                        format!("is outside the subnet {subnet}")
                    };
                    c.fail(
                        ErrorKind::InvalidValue,
                        &ip.span(),
                        format!(
                            "container {cname:?}: ip {addr} {why}; pick an address from {} to {}",
                            subnet
                                .container_addresses()
                                .next()
                                .unwrap_or(subnet.gateway()),
                            subnet
                                .container_addresses()
                                .last()
                                .unwrap_or(subnet.gateway())
                        ),
                    );
                    ok = false;
                }
                Ok(addr) => {
                    let at = c.at(&ip.span());
                    if let Some((_, other, other_at)) = seen.ips.iter().find(|(a, _, _)| *a == addr)
                    {
                        let message = format!(
                            "container {cname:?}: ip {addr} is already pinned by container {other:?} (line {}, column {}); each container needs its own address",
                            other_at.line, other_at.column
                        );
                        c.fail(ErrorKind::InvalidValue, &ip.span(), message);
                        ok = false;
                    } else {
                        seen.ips.push((addr, cname.to_owned(), at));
                        address = Some(addr);
                    }
                }
            }
        }
    }
    let mut mappings = Vec::new();
    for (index, entry) in ports.unwrap_or_default().into_iter().enumerate() {
        if index == 0 {
            c.record(format!("{key}.ports"), &entry.span());
        }
        if mode != NetworkMode::Bridge {
            only_bridge(c, "ports", &entry.span());
            ok = false;
            break;
        }
        match entry.get_ref().parse::<PortMapping>() {
            Err(message) => {
                c.fail(
                    ErrorKind::InvalidValue,
                    &entry.span(),
                    format!("container {cname:?}: {message}"),
                );
                ok = false;
            }
            Ok(mapping) => {
                let at = c.at(&entry.span());
                if let Some((other_map, other, other_at)) = seen
                    .ports
                    .iter()
                    .find(|(m, _, _)| m.conflicts_with(&mapping))
                {
                    let whose = if other == cname {
                        "another of its own ports".to_owned()
                    } else {
                        format!("container {other:?}")
                    };
                    let message = format!(
                        "container {cname:?}: port {:?} publishes host port {}/{} already published by {whose} as {:?} (line {}, column {}); choose another host port",
                        entry.get_ref(),
                        mapping.host_port,
                        mapping.protocol.as_str(),
                        other_map.to_string(),
                        other_at.line,
                        other_at.column
                    );
                    c.fail(ErrorKind::InvalidValue, &entry.span(), message);
                    ok = false;
                } else {
                    seen.ports.push((mapping, cname.to_owned(), at));
                    mappings.push(mapping);
                }
            }
        }
    }
    ok.then_some((mode, address, mappings))
}

/// One mount entry: `type` decides which keys are required and which are refused.
fn mount(
    c: &mut Checker<'_>,
    cname: &str,
    index: usize,
    container_span: &Range<usize>,
    key: &str,
    raw: RawMount,
) -> Option<MountDecl> {
    let what = format!("container {cname:?}: mounts[{index}]");
    // The entry table itself has no span: point at its first key, else at the container.
    let entry_span = [
        raw.kind.as_ref().map(Spanned::span),
        raw.source.as_ref().map(Spanned::span),
        raw.target.as_ref().map(Spanned::span),
        raw.read_only.as_ref().map(Spanned::span),
        raw.size.as_ref().map(Spanned::span),
        raw.mode.as_ref().map(Spanned::span),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|s| s.start)
    .unwrap_or_else(|| container_span.clone());
    c.record(key.to_owned(), &entry_span);
    let types = rules::MOUNT_TYPES.join("\", \"");
    let Some(kind) = raw.kind else {
        c.fail(
            ErrorKind::MissingKey,
            &entry_span,
            format!("{what} has no `type`; write type = \"volume\", \"bind\" or \"tmpfs\""),
        );
        return None;
    };
    let kind_name = kind.get_ref().as_str();
    if !rules::MOUNT_TYPES.contains(&kind_name) {
        c.fail(
            ErrorKind::InvalidValue,
            &kind.span(),
            format!("{what}: unknown mount type {kind_name:?}; the types are \"{types}\""),
        );
        return None;
    }
    // Keys that do not apply to this type.
    let refused: &[(&str, Option<Range<usize>>)] = &[
        (
            "source",
            raw.source
                .as_ref()
                .map(Spanned::span)
                .filter(|_| kind_name == "tmpfs"),
        ),
        (
            "read_only",
            raw.read_only
                .as_ref()
                .map(Spanned::span)
                .filter(|_| kind_name == "tmpfs"),
        ),
        (
            "size",
            raw.size
                .as_ref()
                .map(Spanned::span)
                .filter(|_| kind_name != "tmpfs"),
        ),
        (
            "mode",
            raw.mode
                .as_ref()
                .map(Spanned::span)
                .filter(|_| kind_name != "tmpfs"),
        ),
    ];
    let mut ok = true;
    for (k, span) in refused {
        if let Some(span) = span {
            c.fail(
                ErrorKind::InvalidValue,
                span,
                format!("{what}: `{k}` does not apply to a {kind_name} mount; remove it"),
            );
            ok = false;
        }
    }
    let target = match raw.target {
        None => {
            c.fail(
                ErrorKind::MissingKey,
                &entry_span,
                format!("{what} has no `target`; write target = \"/data\" (an absolute path inside the container)"),
            );
            None
        }
        Some(t) => {
            c.record(format!("{key}.target"), &t.span());
            let fine = c.rule(
                &t.span(),
                rules::mount_target(t.get_ref()).map_err(|m| format!("{what}: {m}")),
            );
            fine.then(|| t.into_inner())
        }
    };
    let read_only = raw.read_only.is_some_and(Spanned::into_inner);
    let decl = match kind_name {
        "tmpfs" => {
            let mut parse = |value: Option<Spanned<String>>,
                             rule: fn(&str) -> Result<u64, String>| {
                let value = value?;
                match rule(value.get_ref()) {
                    Ok(n) => Some(n),
                    Err(m) => {
                        c.fail(
                            ErrorKind::InvalidValue,
                            &value.span(),
                            format!("{what}: {m}"),
                        );
                        ok = false;
                        None
                    }
                }
            };
            let size = parse(raw.size, rules::tmpfs_size);
            let mode = parse(raw.mode, |m| rules::tmpfs_mode(m).map(u64::from))
                .and_then(|m| u32::try_from(m).ok());
            MountDecl::Tmpfs {
                target: target?,
                size,
                mode,
            }
        }
        _ => {
            let Some(source) = raw.source else {
                let example = if kind_name == "volume" {
                    "source = \"data\" (a volume name)"
                } else {
                    "source = \"/var/lib/berth/shared/NAME\""
                };
                c.fail(
                    ErrorKind::MissingKey,
                    &entry_span,
                    format!("{what} has no `source`; write {example}"),
                );
                return None;
            };
            c.record(format!("{key}.source"), &source.span());
            if kind_name == "volume" {
                let fine = c.rule(
                    &source.span(),
                    rules::volume_name(source.get_ref()).map_err(|m| format!("{what}: {m}")),
                );
                MountDecl::Volume {
                    name: fine.then(|| source.into_inner())?,
                    target: target?,
                    read_only,
                }
            } else {
                match rules::bind_source(source.get_ref()) {
                    Ok(path) => MountDecl::Bind {
                        source: path,
                        target: target?,
                        read_only,
                    },
                    Err(m) => {
                        c.fail(
                            ErrorKind::InvalidValue,
                            &source.span(),
                            format!("{what}: {m}"),
                        );
                        return None;
                    }
                }
            }
        }
    };
    ok.then_some(decl)
}
