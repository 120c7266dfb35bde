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
pub const SUPPORTED_SCHEMES: &[&str] = &["oci-layout"];

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

/// Parses an image source `SCHEME:PATH`. Only `oci-layout:PATH` exists for now; PATH is
/// relative to the manifest's directory, non-empty, without `..`, and not absolute (it ships
/// next to the manifest).
pub fn image_source(source: &str) -> Result<ImageSource, String> {
    let supported = SUPPORTED_SCHEMES
        .iter()
        .map(|s| format!("`{s}:PATH`"))
        .collect::<Vec<_>>()
        .join(", ");
    let Some((scheme, path)) = source.split_once(':') else {
        return Err(format!(
            "image source {source:?} has no scheme; write \"oci-layout:{source}\" (supported: {supported})"
        ));
    };
    if scheme != "oci-layout" {
        let note = match scheme {
            "oci-archive" | "docker-archive" | "docker" | "registry" | "http" | "https" => {
                " (planned, not in this version)"
            }
            _ => "",
        };
        return Err(format!(
            "unsupported image source scheme `{scheme}:`{note}; supported: {supported}, e.g. \"oci-layout:images/busybox\""
        ));
    }
    layout_path(path).map(ImageSource::OciLayout)
}

/// The PATH of `oci-layout:PATH`.
fn layout_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("image source path is empty; write \"oci-layout:images/NAME\" (a directory relative to the manifest)".into());
    }
    if path.contains('\0') {
        return Err("image source path contains a NUL character".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!(
            "image source path {path:?} is absolute; write it relative to the manifest's directory, e.g. \"oci-layout:images/{}\" (the layout ships next to the manifest)",
            p.file_name().map_or("NAME".into(), |n| n.to_string_lossy())
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "image source path {path:?} contains `..`; image layouts must live below the manifest's directory (move the layout there and write e.g. \"oci-layout:images/NAME\")"
        ));
    }
    if p.components().all(|c| c == Component::CurDir) {
        return Err(format!("image source path {path:?} names the manifest's own directory; point at the layout directory, e.g. \"oci-layout:images/NAME\""));
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
            (
                "oci-archive:x.tar",
                "unsupported image source scheme `oci-archive:`",
            ),
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
    }
}
