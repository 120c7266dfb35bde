//! Value rules: the pure checks behind validation (names, hostnames, paths, argv, env).
//!
//! Each returns `Err(message)` saying what is wrong and what is accepted; `validate.rs` adds
//! the location. Kept free of TOML so the rules are easy to test and to reuse (e.g. by the API
//! when it accepts names from the operator).

use std::path::{Component, Path, PathBuf};

use super::ImageSource;

/// Linux's limit on a hostname (`__NEW_UTS_LEN`): `sethostname(2)` refuses longer ones.
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Longest image name (image names become file names in the store).
pub const MAX_IMAGE_NAME_LEN: usize = 128;

/// Image source schemes understood by this version.
pub const SUPPORTED_SCHEMES: &[&str] = &["oci-layout", "oci-archive", "docker-archive", "registry"];

/// The state partition: the only place bind mount sources may come from.
pub const STATE_PARTITION: &str = "/var/lib/berth";

/// Subdirectories of the state partition that belong to the agent and may not be bind-mounted
/// (the image store and the containers' root filesystems).
pub const RESERVED_STATE_DIRS: &[&str] = &["store", "containers"];

/// Container paths that the runtime mounts itself; mounts may not go there.
pub const RESERVED_TARGETS: &[&str] = &["/proc", "/sys", "/dev"];

/// Mount types in `[[containers.NAME.mounts]]`.
pub const MOUNT_TYPES: &[&str] = &["volume", "bind", "tmpfs"];

/// A container name: a DNS label (RFC 1123) in lowercase, because containers find each other
/// by name: `a-z`, `0-9` and `-`, 1 to 63 characters, not starting or ending with `-`.
pub fn container_name(name: &str) -> Result<(), String> {
    let what = format!("container name {name:?}");
    if name.is_empty() {
        return Err(format!("{what} is empty; use a DNS label such as \"web\""));
    }
    if name.len() > 63 {
        return Err(format!(
            "{what} is {} characters long; container names are DNS labels of at most 63",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        let fix = if bad.is_ascii_uppercase() || bad == '_' || bad == '.' {
            format!("; try {:?}", suggest_label(name))
        } else {
            String::new()
        };
        return Err(format!(
            "{what} contains {bad:?}; container names are DNS labels: lowercase a-z, 0-9 and '-'{fix}"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{what} starts or ends with '-'; container names are DNS labels and must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// `name` lowercased with `_` and `.` turned into `-`: the DNS label the operator probably meant.
fn suggest_label(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect::<String>()
        .trim_matches('-')
        .to_owned()
}

/// A network interface name as Linux accepts it: 1 to 15 bytes, printable ASCII without `/`,
/// `:` or spaces, and not `.` or `..`.
pub fn interface_name(name: &str) -> Result<(), String> {
    let bad = name
        .chars()
        .find(|ch| !ch.is_ascii_graphic() || matches!(ch, '/' | ':'));
    if name.is_empty() || name.len() > 15 || bad.is_some() || name == "." || name == ".." {
        return Err(format!(
            "[host.network] interface {name:?} is not an interface name (1 to 15 printable characters, no '/', ':' or spaces); write e.g. interface = \"eth0\", or leave it out to use the first Ethernet interface"
        ));
    }
    Ok(())
}

/// A hostname: dot-separated RFC 1123 labels (letters, digits, `-`; 1 to 63 characters; not
/// starting or ending with `-`), at most [`MAX_HOSTNAME_LEN`] characters in total.
pub fn hostname(name: &str) -> Result<(), String> {
    let what = format!("hostname {name:?}");
    if name.is_empty() {
        return Err(format!(
            "{what} is empty; write a name such as \"demo\" or leave the key out"
        ));
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return Err(format!(
            "{what} is {} characters long; Linux allows at most {MAX_HOSTNAME_LEN}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("{what} has an empty label (two dots, or a leading or trailing dot); write labels separated by single dots"));
        }
        if label.len() > 63 {
            return Err(format!("{what} has a label longer than 63 characters"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "{what} contains {bad:?}; hostnames may contain only letters, digits, '-' and '.'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{what}: label {label:?} starts or ends with '-'; each label must start and end with a letter or digit"
            ));
        }
    }
    Ok(())
}

/// An image name (the `[images]` key): lowercase `a-z`, `0-9`, `.`, `_`, `-`, starting and
/// ending with a letter or digit, at most [`MAX_IMAGE_NAME_LEN`] characters. Image names name
/// files in the image store, so nothing else is allowed.
pub fn image_name(name: &str) -> Result<(), String> {
    let what = format!("image name {name:?}");
    if name.is_empty() {
        return Err(format!("{what} is empty; use a name such as \"busybox\""));
    }
    if name.len() > MAX_IMAGE_NAME_LEN {
        return Err(format!(
            "{what} is longer than {MAX_IMAGE_NAME_LEN} characters"
        ));
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
    if let Some(bad) = name.chars().find(|&c| !ok(c)) {
        return Err(format!(
            "{what} contains {bad:?}; image names use lowercase a-z, 0-9, '.', '_' and '-'"
        ));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err(format!("{what} must start and end with a letter or digit"));
    }
    Ok(())
}

/// An environment variable name: not empty, no `=` and no NUL (what `execve(2)` can carry).
pub fn env_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("environment variable name is empty; write e.g. GREETING = \"hello\"".into());
    }
    if key.contains('=') {
        return Err(format!(
            "environment variable name {key:?} contains '='; write the name as the key and the value on the right: {} = \"...\"",
            key.split('=').next().unwrap_or(key)
        ));
    }
    if key.contains('\0') {
        return Err(format!(
            "environment variable name {key:?} contains a NUL character"
        ));
    }
    Ok(())
}

/// An environment variable value: no NUL.
pub fn env_value(key: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!(
            "value of environment variable {key} contains a NUL character"
        ));
    }
    Ok(())
}

/// An argv (`command`, `entrypoint`): at least one element, no element empty or containing
/// NUL. The error carries the index of the bad element (`None`: the array itself).
pub fn argv(key: &str, args: &[String]) -> Result<(), (Option<usize>, String)> {
    if args.is_empty() {
        return Err((
            None,
            format!(
                "`{key}` is empty; give the program and its arguments, e.g. {key} = [\"/bin/sh\", \"-c\", \"echo hi\"], or leave `{key}` out to use the image's"
            ),
        ));
    }
    for (i, arg) in args.iter().enumerate() {
        if arg.is_empty() {
            let which = if i == 0 { "the program" } else { "an argument" };
            return Err((
                Some(i),
                format!(
                    "`{key}` element {i} ({which}) is an empty string; remove it or fill it in"
                ),
            ));
        }
        if arg.contains('\0') {
            return Err((
                Some(i),
                format!("`{key}` element {i} contains a NUL character"),
            ));
        }
    }
    Ok(())
}

/// A working directory: an absolute path without NUL.
pub fn workdir(dir: &str) -> Result<(), String> {
    if dir.contains('\0') {
        return Err(format!("workdir {dir:?} contains a NUL character"));
    }
    if !dir.starts_with('/') {
        return Err(format!(
            "workdir {dir:?} is not absolute; write a path inside the container starting with '/', e.g. \"/{}\"",
            dir.trim_start_matches("./")
        ));
    }
    Ok(())
}

/// A `[registries."HOST[:PORT]"]` key: the host part of a registry reference.
pub fn registry_host(host: &str) -> Result<(), String> {
    crate::registry::reference::check_host(host).map_err(|m| {
        format!("[registries.{host:?}]: {m}; the key is HOST[:PORT] as written in image sources, e.g. \"registry.example.com:5000\"")
    })
}

/// Parses an image source `SCHEME:PATH`. Only `oci-layout:PATH` exists for now; PATH is
/// relative to the manifest's directory, non-empty, without `..`, and not absolute (it ships
/// next to the manifest).
pub fn image_source(source: &str) -> Result<ImageSource, String> {
    let supported = SUPPORTED_SCHEMES
        .iter()
        .map(|s| match *s {
            "registry" => "`registry:HOST/REPO:TAG`".to_string(),
            _ => format!("`{s}:PATH`"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let Some((scheme, path)) = source.split_once(':') else {
        return Err(format!(
            "image source {source:?} has no scheme; write \"oci-layout:{source}\" (supported: {supported})"
        ));
    };
    let make: fn(PathBuf) -> ImageSource = match scheme {
        "oci-layout" => ImageSource::OciLayout,
        "oci-archive" => ImageSource::OciArchive,
        "docker-archive" => ImageSource::DockerArchive,
        "registry" => return crate::registry::RegistryRef::parse(path).map(ImageSource::Registry),
        _ => {
            let note = match scheme {
                "docker" | "http" | "https" => {
                    " (a registry image is written \"registry:HOST/REPO:TAG\")"
                }
                _ => "",
            };
            return Err(format!(
                "unsupported image source scheme `{scheme}:`{note}; supported: {supported}, e.g. \"oci-layout:images/busybox\""
            ));
        }
    };
    layout_path(scheme, path).map(make)
}

/// The PATH of `SCHEME:PATH`.
fn layout_path(scheme: &str, path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        let what = if scheme == "oci-layout" {
            "images/NAME\" (a directory relative to the manifest)"
        } else {
            "images/NAME.tar\" (a file relative to the manifest)"
        };
        return Err(format!(
            "image source path is empty; write \"{scheme}:{what}"
        ));
    }
    if path.contains('\0') {
        return Err("image source path contains a NUL character".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!(
            "image source path {path:?} is absolute; write it relative to the manifest's directory, e.g. \"{scheme}:images/{}\" (the image ships next to the manifest)",
            p.file_name().map_or("NAME".into(), |n| n.to_string_lossy())
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "image source path {path:?} contains `..`; images must live below the manifest's directory (move the image there and write e.g. \"{scheme}:images/NAME\")"
        ));
    }
    if p.components().all(|c| c == Component::CurDir) {
        return Err(format!("image source path {path:?} names the manifest's own directory; point at the image, e.g. \"{scheme}:images/NAME\""));
    }
    Ok(p.to_path_buf())
}

/// A `user` value: `NAME`, `UID`, `NAME:GROUP` or `UID:GID` (resolved in the image at start).
pub fn user(spec: &str) -> Result<(), String> {
    crate::runtime::security::user::check_spec(spec)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A `cap_add` / `cap_drop` element: a capability name with or without `CAP_`, any case, or
/// `ALL`.
pub fn capability(name: &str) -> Result<(), String> {
    crate::runtime::security::capabilities::parse_name(name).map(|_| ())
}

/// Checks a path written in a mount: absolute, no NUL, no `..` component.
fn absolute_clean(what: &str, path: &str) -> Result<(), String> {
    if path.contains('\0') {
        return Err(format!("{what} {path:?} contains a NUL character"));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "{what} {path:?} is not absolute; write a path starting with '/', e.g. \"/{}\"",
            path.trim_start_matches("./")
        ));
    }
    if Path::new(path)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(format!(
            "{what} {path:?} contains `..`; write the path without it"
        ));
    }
    Ok(())
}

/// A mount target: an absolute path inside the container without `..`, not `/` and not in the
/// pseudo filesystems the runtime mounts itself ([`RESERVED_TARGETS`]).
pub fn mount_target(target: &str) -> Result<(), String> {
    absolute_clean("mount target", target)?;
    let path = Path::new(target);
    if path
        .components()
        .all(|c| c == Component::RootDir || c == Component::CurDir)
    {
        return Err(format!(
            "mount target {target:?} is the container's root; mount below it, e.g. \"/data\""
        ));
    }
    if let Some(reserved) = RESERVED_TARGETS.iter().find(|r| path.starts_with(r)) {
        return Err(format!(
            "mount target {target:?} is inside {reserved}, which the runtime mounts itself; choose another path, e.g. \"/data\""
        ));
    }
    Ok(())
}

/// A mount target in canonical form (`//a/./b/` → `/a/b`), for duplicate detection.
pub fn normalized_target(target: &str) -> PathBuf {
    Path::new(target).components().collect()
}

/// A bind mount source: an absolute path without `..` inside [`STATE_PARTITION`], and not its
/// agent-owned subdirectories ([`RESERVED_STATE_DIRS`]).
pub fn bind_source(source: &str) -> Result<PathBuf, String> {
    absolute_clean("bind mount source", source)?;
    let path: PathBuf = Path::new(source).components().collect();
    let Ok(inside) = path.strip_prefix(STATE_PARTITION) else {
        return Err(format!(
            "bind mount source {source:?} is outside the state partition; bind sources must be under {STATE_PARTITION}, e.g. \"{STATE_PARTITION}/shared/NAME\" (or use a volume)"
        ));
    };
    let Some(first) = inside.components().next() else {
        return Err(format!(
            "bind mount source {source:?} is the whole state partition; bind a directory below it, e.g. \"{STATE_PARTITION}/shared/NAME\""
        ));
    };
    if let Some(reserved) = RESERVED_STATE_DIRS
        .iter()
        .find(|r| first.as_os_str() == std::ffi::OsStr::new(r))
    {
        return Err(format!(
            "bind mount source {source:?} is inside {STATE_PARTITION}/{reserved}, which belongs to the agent; use another directory, e.g. \"{STATE_PARTITION}/shared/NAME\""
        ));
    }
    Ok(path)
}

/// A volume name: the same rules as an image name (it names a directory in the state
/// partition).
pub fn volume_name(name: &str) -> Result<(), String> {
    image_name(name).map_err(|m| {
        m.replacen("image name", "volume name", 1)
            .replace("image names", "volume names")
    })
}

/// A tmpfs size: bytes, or a number with a `k`, `M` or `G` suffix (powers of 1024), > 0.
pub fn tmpfs_size(size: &str) -> Result<u64, String> {
    let bad = || {
        format!("tmpfs size {size:?} is not a size; write bytes or a number with k, M or G, e.g. \"64M\"")
    };
    let (digits, unit) = match size.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&size[..i], c),
        _ => (size, 'b'),
    };
    let shift = match unit {
        'b' => 0,
        'k' | 'K' => 10,
        'm' | 'M' => 20,
        'g' | 'G' => 30,
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(format!(
            "tmpfs size {size:?} is zero; give a size such as \"64M\", or leave `size` out"
        ));
    }
    Ok(bytes)
}

/// A tmpfs mode: octal permission bits as a string (`"1777"`, `"0755"`), at most `7777`.
pub fn tmpfs_mode(mode: &str) -> Result<u32, String> {
    let bad =
        || format!("tmpfs mode {mode:?} is not an octal mode; write e.g. \"1777\" or \"0755\"");
    if mode.is_empty() || mode.len() > 5 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let bits = u32::from_str_radix(mode, 8).map_err(|_| bad())?;
    if bits > 0o7777 {
        return Err(bad());
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_dns_labels() {
        for ok in ["web", "a", "db-1", "0day", &"a".repeat(63)] {
            assert_eq!(container_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Web",
            "my_app",
            "-web",
            "web-",
            "a.b",
            "wéb",
            &"a".repeat(64),
        ] {
            assert!(container_name(bad).is_err(), "{bad} accepted");
        }
        let msg = container_name("My_App").unwrap_err();
        assert!(msg.contains("try \"my-app\""), "{msg}");
        assert!(container_name("-x")
            .unwrap_err()
            .contains("starts or ends with '-'"));
    }

    #[test]
    fn hostnames_follow_rfc1123_and_the_linux_limit() {
        for ok in ["berth", "Demo-1", "host.example.com", "a", &"a".repeat(63)] {
            assert_eq!(hostname(ok), Ok(()), "{ok}");
        }
        let long = format!("{}.{}", "a".repeat(40), "b".repeat(30));
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "a_b",
            "a b",
            long.as_str(),
            &"a".repeat(64 + 1),
        ] {
            assert!(hostname(bad).is_err(), "{bad} accepted");
        }
        assert!(hostname(&long).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn image_names_are_store_safe() {
        for ok in ["busybox", "web.v2", "a_b-c", "1"] {
            assert_eq!(image_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Busybox", "a/b", "..", ".hidden", "x-", "a b"] {
            assert!(image_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn env_keys_and_values() {
        assert_eq!(env_key("GREETING"), Ok(()));
        assert_eq!(env_key("lower_1"), Ok(()));
        assert!(env_key("").is_err());
        assert!(env_key("A=B").unwrap_err().contains("A = \"...\""));
        assert!(env_key("A\0").is_err());
        assert!(env_value("A", "x\0y").is_err());
        assert_eq!(env_value("A", "x=y"), Ok(()));
    }

    #[test]
    fn argv_rules() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(argv("command", &v(&["/bin/sh", "-c", "x"])), Ok(()));
        assert_eq!(argv("command", &[]).unwrap_err().0, None);
        assert_eq!(
            argv("command", &v(&["/bin/sh", ""])).unwrap_err().0,
            Some(1)
        );
        assert_eq!(argv("entrypoint", &v(&["a\0"])).unwrap_err().0, Some(0));
    }

    #[test]
    fn workdir_must_be_absolute() {
        assert_eq!(workdir("/"), Ok(()));
        assert_eq!(workdir("/srv/app"), Ok(()));
        assert!(workdir("srv").unwrap_err().contains("\"/srv\""));
        assert!(workdir("").is_err());
    }

    #[test]
    fn image_sources() {
        assert_eq!(
            image_source("oci-layout:images/busybox"),
            Ok(ImageSource::OciLayout(PathBuf::from("images/busybox")))
        );
        assert_eq!(
            image_source("oci-layout:./busybox"),
            Ok(ImageSource::OciLayout(PathBuf::from("./busybox")))
        );
        let cases = [
            ("images/busybox", "has no scheme"),
            ("ftp:x.tar", "unsupported image source scheme `ftp:`"),
            ("docker-archive:", "\"docker-archive:images/NAME.tar\""),
            ("oci-archive:/srv/web.tar", "is absolute"),
            ("oci-archive:../web.tar", "contains `..`"),
            (
                "docker://busybox",
                "unsupported image source scheme `docker:`",
            ),
            ("oci-layout:", "path is empty"),
            ("oci-layout:/srv/busybox", "is absolute"),
            ("oci-layout:images/../../etc", "contains `..`"),
            ("oci-layout:..", "contains `..`"),
            ("oci-layout:.", "own directory"),
        ];
        for (source, fragment) in cases {
            let msg = image_source(source).unwrap_err();
            assert!(msg.contains(fragment), "{source}: {msg}");
        }
        assert_eq!(
            image_source("oci-archive:images/web.tar"),
            Ok(ImageSource::OciArchive(PathBuf::from("images/web.tar")))
        );
        assert_eq!(
            image_source("docker-archive:web.tar"),
            Ok(ImageSource::DockerArchive(PathBuf::from("web.tar")))
        );
    }

    #[test]
    fn mount_targets() {
        for ok in ["/data", "/srv/www/", "/dev-data", "/tmp"] {
            assert_eq!(mount_target(ok), Ok(()), "{ok}");
        }
        for (bad, fragment) in [
            ("data", "is not absolute"),
            ("/data/../etc", "contains `..`"),
            ("/", "the container's root"),
            ("//.", "the container's root"),
            ("/proc/sys", "inside /proc"),
            ("/dev", "inside /dev"),
            ("/sys", "inside /sys"),
            ("/a\0", "NUL"),
        ] {
            let msg = mount_target(bad).unwrap_err();
            assert!(msg.contains(fragment), "{bad}: {msg}");
        }
        assert_eq!(normalized_target("//data/./x/"), PathBuf::from("/data/x"));
    }

    #[test]
    fn bind_sources_stay_in_the_state_partition() {
        assert_eq!(
            bind_source("/var/lib/berth/shared/x"),
            Ok(PathBuf::from("/var/lib/berth/shared/x"))
        );
        for (bad, fragment) in [
            ("/etc", "outside the state partition"),
            ("/var/lib/berthx/a", "outside the state partition"),
            ("/var/lib/berth/../../etc", "contains `..`"),
            ("var/lib/berth/x", "is not absolute"),
            ("/var/lib/berth", "whole state partition"),
            ("/var/lib/berth/store/blobs", "belongs to the agent"),
            ("/var/lib/berth/containers/web", "belongs to the agent"),
        ] {
            let msg = bind_source(bad).unwrap_err();
            assert!(msg.contains(fragment), "{bad}: {msg}");
        }
    }

    #[test]
    fn volume_names_sizes_and_modes() {
        assert_eq!(volume_name("data"), Ok(()));
        assert!(volume_name("../x").unwrap_err().contains("volume name"));
        assert_eq!(tmpfs_size("4096"), Ok(4096));
        assert_eq!(tmpfs_size("64M"), Ok(64 << 20));
        assert_eq!(tmpfs_size("2g"), Ok(2 << 30));
        assert_eq!(tmpfs_size("512k"), Ok(512 << 10));
        for bad in ["", "M", "64X", "-1", "1.5G", "0", "99999999999999999999G"] {
            assert!(tmpfs_size(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(tmpfs_mode("1777"), Ok(0o1777));
        assert_eq!(tmpfs_mode("0755"), Ok(0o755));
        for bad in ["", "8", "rwx", "17777", "-755"] {
            assert!(tmpfs_mode(bad).is_err(), "{bad} accepted");
        }
    }
}
