//! Every manifest under tests/data/manifests/valid loads; every one under invalid/ fails at the
//! recorded `line:column` with the recorded message fragment — and each fixture is listed.
//! The invalid corpus covers wrong types, unknown keys, bad sizes, durations, ports, CIDRs and
//! addresses, duplicate host ports and addresses, dependency cycles, unknown and missing
//! images, paths escaping the state partition, non-UTF-8, empty files and TOML syntax errors;
//! boot_rejects.rs boots berthd on every one of them.

// Test helpers may fail loudly; clippy only exempts `#[test]` functions themselves.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_agent::manifest::{
    Condition, ErrorKind, LogSettings, Manifest, Probe, RestartPolicy, SeccompProfile,
    MAX_MANIFEST_BYTES,
};
use std::time::Duration;

/// (file, line, column, kind, message fragment).
const INVALID: &[(&str, usize, usize, ErrorKind, &str)] = &[
    ("absolute-source.toml", 4, 22, ErrorKind::InvalidValue, "is absolute; write it relative to the manifest's directory"),
    ("archive-dotdot-source.toml", 4, 18, ErrorKind::InvalidValue, "image source path \"../web.tar\" contains `..`; images must live below the manifest's directory"),
    ("bad-container-hostname.toml", 8, 12, ErrorKind::InvalidValue, "label \"web-\" starts or ends with '-'"),
    ("bad-container-name-dash.toml", 6, 13, ErrorKind::InvalidValue, "container name \"-web\" starts or ends with '-'"),
    ("bad-container-name.toml", 6, 13, ErrorKind::InvalidValue, "container names are DNS labels: lowercase a-z, 0-9 and '-'; try \"my-app\""),
    ("bad-seccomp.toml", 8, 11, ErrorKind::InvalidValue, "seccomp profile \"strict\" is not known; write \"default\""),
    ("bad-user.toml", 8, 8, ErrorKind::InvalidValue, "user \"app:\" is malformed"),
    ("bad-env-key.toml", 8, 9, ErrorKind::InvalidValue, "contains '='; write the name as the key"),
    ("bad-hostname.toml", 4, 12, ErrorKind::InvalidValue, "hostname \"my_host\" contains '_'"),
    ("bad-image-name.toml", 4, 1, ErrorKind::InvalidValue, "image name \"BusyBox\" contains 'B'"),
    ("dotdot-source.toml", 4, 22, ErrorKind::InvalidValue, "contains `..`"),
    ("duplicate-key.toml", 5, 1, ErrorKind::Syntax, "duplicate key `hostname`"),
    ("empty-command.toml", 8, 11, ErrorKind::InvalidValue, "`command` is empty"),
    ("empty-entrypoint-arg.toml", 8, 26, ErrorKind::InvalidValue, "`entrypoint` element 1 (an argument) is an empty string"),
    ("empty-env-key.toml", 8, 9, ErrorKind::InvalidValue, "environment variable name is empty"),
    ("empty-source-path.toml", 4, 22, ErrorKind::InvalidValue, "image source path is empty"),
    ("empty.toml", 1, 1, ErrorKind::Version, "the manifest is empty; a manifest starts with `version = 1`"),
    ("hostname-too-long.toml", 4, 12, ErrorKind::InvalidValue, "Linux allows at most 64"),
    ("image-not-declared-no-images.toml", 4, 9, ErrorKind::UnknownImage, "[images] is empty; declare it"),
    ("image-not-declared.toml", 7, 9, ErrorKind::UnknownImage, "image \"busyboxx\" is not declared in [images]; did you mean \"busybox\"? declared images: \"busybox\""),
    ("missing-image-key.toml", 6, 13, ErrorKind::MissingKey, "container \"web\" has no `image`"),
    ("missing-scheme.toml", 4, 18, ErrorKind::InvalidValue, "has no scheme; write \"oci-layout:images/web\""),
    ("missing-source.toml", 4, 1, ErrorKind::MissingKey, "image \"busybox\" has no `source`"),
    ("missing-version.toml", 1, 1, ErrorKind::Version, "missing `version`; add `version = 1`"),
    ("mount-bad-tmpfs-size.toml", 8, 53, ErrorKind::InvalidValue, "mounts[0]: tmpfs size \"lots\" is not a size"),
    ("mount-bind-dotdot.toml", 11, 10, ErrorKind::InvalidValue, "bind mount source \"/var/lib/berth/shared/../../../etc\" contains `..`"),
    ("mount-bind-outside-state.toml", 11, 10, ErrorKind::InvalidValue, "bind mount source \"/etc\" is outside the state partition; bind sources must be under /var/lib/berth"),
    ("mount-duplicate-target.toml", 16, 10, ErrorKind::InvalidValue, "mounts[1] and mounts[0] (line 12, column 10) both mount on \"/data/\""),
    ("mount-relative-target.toml", 8, 56, ErrorKind::InvalidValue, "mount target \"data\" is not absolute"),
    ("mount-unknown-key.toml", 8, 65, ErrorKind::UnknownKey, "unknown key `readonly` in [containers.web.mounts]; did you mean `read_only`?"),
    ("mount-unknown-type.toml", 8, 20, ErrorKind::InvalidValue, "unknown mount type \"nfs\"; the types are \"volume\", \"bind\", \"tmpfs\""),
    ("non-utf8.toml", 4, 6, ErrorKind::NotUtf8, "not valid UTF-8 (invalid byte 0xe9"),
    ("relative-workdir.toml", 8, 11, ErrorKind::InvalidValue, "workdir \"srv/www\" is not absolute"),
    ("syntax-unclosed-header.toml", 3, 16, ErrorKind::Syntax, "TOML syntax error: invalid table header"),
    ("syntax-unclosed-string.toml", 4, 17, ErrorKind::Syntax, "TOML syntax error"),
    ("unknown-cap-drop.toml", 9, 3, ErrorKind::InvalidValue, "`cap_drop`: unknown capability \"everything\""),
    ("unknown-capability.toml", 8, 25, ErrorKind::InvalidValue, "`cap_add`: unknown capability \"NET_ADMINN\""),
    ("unknown-container-key.toml", 7, 1, ErrorKind::UnknownKey, "unknown key `imagee` in [containers.web]; did you mean `image`?"),
    ("unknown-image-key.toml", 4, 13, ErrorKind::UnknownKey, "unknown key `sourc` in [images.busybox]; did you mean `source`?"),
    ("unknown-key-alias.toml", 8, 1, ErrorKind::UnknownKey, "unknown key `environment` in [containers.web]; did you mean `env`?"),
    ("unknown-key-dotted.toml", 4, 16, ErrorKind::UnknownKey, "unknown key `comand` in [containers.web]; did you mean `command`?"),
    ("unknown-top-level-key.toml", 2, 1, ErrorKind::UnknownKey, "`hostname` belongs in [host]"),
    ("unsupported-scheme.toml", 4, 18, ErrorKind::InvalidValue, "unsupported image source scheme `docker:`"),
    ("version-2.toml", 2, 11, ErrorKind::Version, "unsupported manifest version 2; this berth supports version 1"),
    ("version-string.toml", 1, 11, ErrorKind::Version, "`version` must be an integer"),
    ("wrong-type-array-element.toml", 11, 3, ErrorKind::WrongType, "wrong type for `command`: found integer `8080`, expected a string"),
    ("wrong-type-command.toml", 8, 11, ErrorKind::WrongType, "wrong type for `command`: found string \"httpd -f\", expected an array"),
    ("wrong-type-env-value.toml", 8, 16, ErrorKind::WrongType, "wrong type for `PORT`"),
    ("wrong-type-read-only.toml", 8, 13, ErrorKind::WrongType, "wrong type for `read_only`"),
    ("wrong-type-userns.toml", 8, 10, ErrorKind::WrongType, "wrong type for `userns`: found integer `1`, expected a boolean"),
    ("wrong-type-image-table.toml", 4, 11, ErrorKind::WrongType, "expected a table like `{ source = \"oci-layout:images/NAME\" }`"),
    ("bad-stop-signal.toml", 8, 15, ErrorKind::InvalidValue, "container \"web\": `stop_signal` \"SIGSTOPP\" is not a signal"),
    ("cpus-zero.toml", 8, 8, ErrorKind::InvalidValue, "`cpus` is 0; it must be more than 0"),
    ("memory-bad-unit.toml", 8, 10, ErrorKind::InvalidValue, "`memory` \"64MB\" has an unknown unit \"MB\" — did you mean \"64M\""),
    ("memory-too-small.toml", 8, 10, ErrorKind::InvalidValue, "the minimum is 4 MiB"),
    ("pids-string.toml", 8, 8, ErrorKind::InvalidValue, "`pids` must be an integer such as 256, found string \"max\""),
    ("rlimit-soft-above-hard.toml", 8, 21, ErrorKind::InvalidValue, "rlimit `nproc`: the soft limit 128 is above the hard limit 64"),
    ("stop-timeout-no-unit.toml", 8, 16, ErrorKind::InvalidValue, "`stop_timeout` \"10\" has no unit; write \"10s\""),
    ("unknown-rlimit.toml", 8, 28, ErrorKind::InvalidValue, "unknown rlimit `files`; known: as, core"),
    ("wrong-type-rlimits.toml", 8, 11, ErrorKind::WrongType, "wrong type for `rlimits`"),
    ("registry-bad-reference.toml", 4, 18, ErrorKind::InvalidValue, "repository \"Team/web\" is not valid"),
    ("registry-password-only.toml", 4, 12, ErrorKind::MissingKey, "`username` and `password` go together"),
    ("registry-bad-ca.toml", 4, 6, ErrorKind::InvalidValue, "`ca` is not a PEM certificate"),
    ("registry-bad-host.toml", 3, 13, ErrorKind::InvalidValue, "registry port \"70000\" is not a port number"),
    ("bad-restart.toml", 8, 11, ErrorKind::InvalidValue, "container \"web\": unknown restart policy \"sometimes\"; write restart = \"no\", \"on-failure\" or \"always\""),
    ("depends-on-unknown.toml", 8, 16, ErrorKind::InvalidValue, "container \"web\" depends on \"dbb\", which is not declared; declared containers: \"db\", \"web\""),
    ("depends-on-cycle.toml", 12, 16, ErrorKind::InvalidValue, "depends_on forms a cycle: a -> b -> a"),
    ("depends-on-bad-condition.toml", 8, 21, ErrorKind::InvalidValue, "\"service_healthy\" is Docker Compose's spelling; write \"healthy\""),
    ("depends-on-never-completes.toml", 8, 16, ErrorKind::InvalidValue, "\"web\" has restart = \"always\" and never completes"),
    ("log-max-size-too-small.toml", 8, 16, ErrorKind::InvalidValue, "`log_max_size` is 1000 bytes; the minimum is 4096 bytes"),
    ("max-restarts-negative.toml", 8, 16, ErrorKind::InvalidValue, "`max_restarts` is -1"),
    ("api-token-short.toml", 6, 13, ErrorKind::InvalidValue, "`api_token` must be at least 16 printable ASCII characters"),
    ("api-port-without-token.toml", 4, 12, ErrorKind::MissingKey, "`api_port` needs `api_token`"),
    ("healthcheck-bad-port.toml", 8, 38, ErrorKind::InvalidValue, "container \"web\": healthcheck: port 70000 is not a TCP port"),
    ("healthcheck-path-on-tcp.toml", 8, 49, ErrorKind::InvalidValue, "healthcheck: `path` does not apply to a tcp check; remove it"),
    ("healthcheck-exec-no-command.toml", 8, 24, ErrorKind::MissingKey, "an exec check needs `command`"),
    ("host-network-static-no-address.toml", 7, 8, ErrorKind::MissingKey, "[host.network] mode = \"static\" needs `address`: add address = \"192.168.1.10/24\""),
    ("host-network-address-no-prefix.toml", 5, 11, ErrorKind::InvalidValue, "address \"192.168.1.10\" has no prefix length; write the address with its prefix length"),
    ("host-network-network-address.toml", 5, 11, ErrorKind::InvalidValue, "is the network address of 192.168.1.0/24, not a host address; pick one from 192.168.1.1 to 192.168.1.254"),
    ("host-network-gateway-outside.toml", 6, 11, ErrorKind::InvalidValue, "gateway 192.168.2.1 is outside the host's subnet 192.168.1.0/24"),
    ("host-network-bad-mode.toml", 4, 8, ErrorKind::InvalidValue, "[host.network] mode \"manual\" is not known; write mode = \"dhcp\""),
    ("host-network-address-with-dhcp.toml", 4, 11, ErrorKind::InvalidValue, "`address` applies to mode = \"static\" only, but the mode is \"dhcp\""),
    ("host-network-bad-dns.toml", 4, 20, ErrorKind::InvalidValue, "dns[1] \"dns.example.com\" is not an IPv4 address"),
    ("host-network-unknown-key.toml", 5, 1, ErrorKind::UnknownKey, "unknown key `adress`"),
    ("host-network-bad-mtu.toml", 4, 7, ErrorKind::InvalidValue, "mtu 9 is outside 576..=65535"),
    ("host-network-bad-interface.toml", 4, 13, ErrorKind::InvalidValue, "interface \"eth0/1\" is not an interface name"),
    ("port-duplicate-host.toml", 8, 10, ErrorKind::InvalidValue, "publishes host port 8080/tcp already published by container \"api\" as \"8080:8080\" (line 12, column 10); choose another host port"),
    ("port-out-of-range.toml", 8, 10, ErrorKind::InvalidValue, "container port \"70000\" is not a number in 1..65535"),
    ("port-not-a-mapping.toml", 8, 10, ErrorKind::InvalidValue, "port mapping \"http\" is not \"HOST:CONTAINER\""),
    ("wrong-type-port.toml", 8, 10, ErrorKind::WrongType, "wrong type for `ports`: found integer `8080`, expected a string"),
    ("subnet-bad-prefix.toml", 4, 10, ErrorKind::InvalidValue, "prefix length 33 is outside 8..=30"),
    ("subnet-no-prefix.toml", 4, 10, ErrorKind::InvalidValue, "subnet \"10.88.0.0\" has no prefix length"),
    ("subnet-host-bits.toml", 4, 10, ErrorKind::InvalidValue, "has host bits set; write \"10.88.0.0/24\""),
    ("ip-duplicate.toml", 8, 6, ErrorKind::InvalidValue, "ip 10.88.0.9 is already pinned by container \"api\" (line 12, column 6)"),
    ("ip-outside-subnet.toml", 8, 6, ErrorKind::InvalidValue, "ip 10.99.0.5 is outside the subnet 10.88.0.0/24"),
    ("ip-is-gateway.toml", 8, 6, ErrorKind::InvalidValue, "bridge (10.88.0.1)"),
    ("ip-not-an-address.toml", 8, 6, ErrorKind::InvalidValue, "ip \"10.88.0.300\" is not an IPv4 address"),
    ("network-bad-mode.toml", 8, 11, ErrorKind::InvalidValue, "network \"bridged\" is not known; write \"bridge\""),
    ("ports-on-host-network.toml", 9, 10, ErrorKind::InvalidValue, "`ports` needs the bridge network, but network = \"host\""),
    ("healthcheck-bad-interval.toml", 8, 53, ErrorKind::InvalidValue, "`interval` \"fast\" is not a duration"),
    ("stop-timeout-negative.toml", 8, 16, ErrorKind::InvalidValue, "`stop_timeout` \"-5s\" is not a duration"),
    ("log-max-size-bad-unit.toml", 8, 16, ErrorKind::InvalidValue, "`log_max_size` \"10 bananas\" has an unknown unit"),
    ("memory-bare-number-too-small.toml", 8, 10, ErrorKind::InvalidValue, "`memory` is 64 bytes; the minimum is 4 MiB"),
    ("mount-volume-escapes.toml", 8, 39, ErrorKind::InvalidValue, "volume name \"../../etc\" contains '/'"),
    ("image-source-missing.toml", 4, 22, ErrorKind::ImageNotFound, "images/not-here (it does not exist"),
    ("depends-on-cycle-three.toml", 16, 16, ErrorKind::InvalidValue, "depends_on forms a cycle: a -> b -> c -> a"),
    ("depends-on-self.toml", 8, 16, ErrorKind::InvalidValue, "container \"a\" depends on itself"),
    ("duplicate-table.toml", 4, 1, ErrorKind::Syntax, "duplicate key `host`"),
    ("syntax-bad-table.toml", 2, 6, ErrorKind::Syntax, "TOML syntax error: invalid table header"),
    ("syntax-trailing-comma.toml", 2, 24, ErrorKind::Syntax, "TOML syntax error: invalid inline table"),
    ("non-utf8-invalid-byte.toml", 3, 13, ErrorKind::NotUtf8, "not valid UTF-8 (invalid byte 0xff"),
    ("whitespace-only.toml", 1, 1, ErrorKind::Version, "the manifest is empty"),
    ("nul-in-command.toml", 8, 29, ErrorKind::InvalidValue, "`command` element 2 contains a NUL character"),
];

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/manifests")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_valid_manifest_loads() {
    let files = fixtures("valid");
    assert!(files.len() >= 5, "valid fixtures missing: {files:?}");
    for file in files {
        if let Err(e) = Manifest::load(&file) {
            panic!("{} should be valid, got: {e}", file.display());
        }
    }
}

#[test]
fn every_invalid_manifest_fails_where_recorded() {
    let files = fixtures("invalid");
    let on_disk: BTreeSet<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = INVALID.iter().map(|(f, ..)| (*f).to_owned()).collect();
    assert_eq!(
        on_disk, listed,
        "every invalid fixture needs exactly one expectation"
    );

    let mut failures = Vec::new();
    for (name, line, column, kind, fragment) in INVALID {
        let path = files.iter().find(|p| p.ends_with(name)).unwrap();
        // Images are checked too, as `berthctl validate` and the boot do.
        let loaded = Manifest::load(path).and_then(|m| m.resolve_images(path.parent().unwrap()));
        match loaded {
            Ok(_) => failures.push(format!("{name}: loaded but should fail")),
            Err(e) => {
                let rendered = e.to_string();
                let prefix = format!("{}:{line}:{column}: ", path.display());
                if !rendered.starts_with(&prefix)
                    || !e.message.contains(fragment)
                    || e.kind != *kind
                {
                    failures.push(format!(
                        "{name}: expected {line}:{column} {kind:?} containing {fragment:?}\n    got {:?}: {rendered}",
                        e.kind
                    ));
                }
                assert_eq!(e.file, *path, "the error names the path as given");
                assert!(
                    !rendered.contains('\n'),
                    "{name}: error is not one line: {rendered}"
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn registry_sources_and_settings_are_read() {
    use berth_agent::manifest::ImageSource;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/manifests/valid/registry.toml");
    let m = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let ImageSource::Registry(web) = &m.images["web"].source else {
        panic!("{:?}", m.images["web"]);
    };
    assert_eq!(web.to_string(), "registry.example.com:5000/team/web:1.4");
    let ImageSource::Registry(pinned) = &m.images["pinned"].source else {
        panic!("{:?}", m.images["pinned"]);
    };
    assert!(pinned.digest.is_some() && pinned.tag.is_none());
    let private = &m.registries["registry.example.com:5000"];
    assert_eq!(
        private.credentials,
        Some(("deploy".to_string(), "not-a-real-secret".to_string()))
    );
    assert!(!private.insecure && m.registries["10.0.2.2:5000"].insecure);
    // Registry images need nothing on disk: resolving skips them.
    assert!(m.resolve_images(path.parent().unwrap()).unwrap().is_empty());
}

#[test]
fn security_keys_are_read() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/manifests/valid/security.toml");
    let m = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let locked = &m.containers["locked"];
    assert_eq!(locked.user.as_deref(), Some("nobody:nogroup"));
    assert_eq!(locked.cap_drop, ["ALL"]);
    assert_eq!(locked.cap_add, ["net_bind_service", "CAP_KILL"]);
    assert_eq!(locked.seccomp, SeccompProfile::Default);
    assert!(locked.read_only && locked.userns);
    let admin = &m.containers["admin"];
    assert!(!admin.userns);
    assert_eq!(admin.seccomp, SeccompProfile::Unconfined);
    assert!(!admin.read_only && admin.cap_drop.is_empty());
}

#[test]
fn supervision_keys_are_read() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/manifests/valid/supervision.toml");
    let m = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let db = &m.containers["db"];
    assert_eq!(db.restart, RestartPolicy::Always);
    assert!(db.essential);
    assert_eq!((db.log.max_size, db.log.files), (1 << 20, 5));
    let web = &m.containers["web"];
    assert_eq!(web.restart, RestartPolicy::OnFailure);
    assert_eq!(web.max_restarts, Some(10));
    assert_eq!(web.depends_on["db"], Condition::Healthy);
    assert_eq!(web.depends_on["migrate"], Condition::Completed);
    let migrate = &m.containers["migrate"];
    assert_eq!(migrate.restart, RestartPolicy::No);
    assert!(!migrate.essential && migrate.depends_on.is_empty());
    assert_eq!(migrate.log, LogSettings::default());
    assert_eq!(migrate.healthcheck, None);
    let check = web.healthcheck.as_ref().unwrap();
    assert_eq!(
        check.probe,
        Probe::Http {
            port: 8080,
            path: "/healthz".into(),
            status: 200
        }
    );
    assert_eq!((check.interval, check.retries), (Duration::from_secs(2), 2));
    assert_eq!(check.timeout, Duration::from_secs(5));
    assert!(web.restart_on_unhealthy);
    let cache = m.containers["cache"].healthcheck.as_ref().unwrap();
    assert_eq!(
        cache.probe,
        Probe::Exec {
            command: vec!["/bin/true".into()]
        }
    );
    assert_eq!(cache.start_period, Duration::from_secs(5));
}

#[test]
fn the_remote_api_is_off_unless_asked_for() {
    let m = Manifest::parse("version = 1\n", Path::new("m.toml")).unwrap();
    assert_eq!(m.host.api, None);
    let m = Manifest::parse(
        "version = 1\n[host]\napi_port = 7070\napi_token = \"0123456789abcdef\"\n",
        Path::new("m.toml"),
    )
    .unwrap();
    let api = m.host.api.unwrap();
    assert_eq!((api.port, api.token.as_str()), (7070, "0123456789abcdef"));
}

#[test]
fn oversized_manifest_is_refused_with_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.toml");
    let mut text = String::from("version = 1\n");
    while (text.len() as u64) <= MAX_MANIFEST_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, &text).unwrap();
    let e = Manifest::load(&path).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
    assert_eq!((e.line, e.column), (1, 1));
    assert!(
        e.message.contains(&format!("{} bytes", text.len())),
        "{}",
        e.message
    );
}

#[test]
fn the_demo_manifest_is_valid() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml");
    let m = Manifest::load(&demo).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.host.hostname, "demo");
    assert_eq!(m.images.keys().collect::<Vec<_>>(), ["busybox"]);
    assert_eq!(
        m.containers.keys().collect::<Vec<_>>(),
        ["fetch", "hello", "web"]
    );
    assert!(m.containers["hello"].env.contains_key("GREETING"));
    let web = m.containers["web"].command.as_ref().unwrap();
    let script = web.last().unwrap();
    assert!(
        script.contains("trap") && script.contains("httpd") && script.contains("-p 80 "),
        "{script}"
    );
    let ports: Vec<String> = m.containers["web"]
        .ports
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(ports, ["8080:80"]);
    assert_eq!(m.network.subnet.to_string(), "10.88.0.0/24");
}

#[test]
fn host_network_keys_are_read() {
    use berth_agent::manifest::{HostAddressing, HostNetwork};
    use std::net::Ipv4Addr;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/manifests/valid");
    let load = |f: &str| {
        Manifest::load(&dir.join(f))
            .unwrap_or_else(|e| panic!("{e}"))
            .host
            .network
    };
    assert_eq!(
        load("host-network-static.toml"),
        HostNetwork {
            addressing: HostAddressing::Static {
                address: Ipv4Addr::new(192, 168, 1, 10),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
            },
            interface: Some("eth0".into()),
            dns: Some(vec![
                Ipv4Addr::new(192, 168, 1, 1),
                Ipv4Addr::new(1, 1, 1, 1)
            ]),
            mtu: Some(1500),
        }
    );
    let dhcp = load("host-network-dhcp.toml");
    assert_eq!(dhcp.addressing, HostAddressing::Dhcp);
    assert_eq!(dhcp.dns, Some(vec![Ipv4Addr::new(9, 9, 9, 9)]));
    assert_eq!(dhcp.mtu, Some(1400));
    assert_eq!(
        load("host-network-off.toml").addressing,
        HostAddressing::Off
    );
    // Without [host.network]: DHCP on the first Ethernet interface.
    assert_eq!(load("minimal.toml"), HostNetwork::default());
}
