//! `registry:HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]` image references, as written in the
//! manifest.
//!
//! Unlike Docker there is no default registry: the host is always written, so what a berth
//! host pulls from is visible in its manifest. A missing tag means `latest`; a digest pins the
//! image (and the tag, if also written, is only informative).

use std::fmt;

/// A parsed registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// `REPO[/REPO...]`.
    pub repository: String,
    /// The tag (`latest` when neither a tag nor a digest was written).
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when pinned.
    pub digest: Option<String>,
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

const EXAMPLE: &str = "registry:registry.example.com:5000/web/nginx:1.25";

impl RegistryRef {
    /// Parses the part after `registry:`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((registry, rest)) = text.split_once('/') else {
            return Err(format!(
                "registry reference {text:?} has no repository; write HOST[:PORT]/REPOSITORY[:TAG], e.g. \"{EXAMPLE}\""
            ));
        };
        check_host(registry)
            .map_err(|m| format!("registry reference {text:?}: {m}; e.g. \"{EXAMPLE}\""))?;
        let (name_tag, digest) = match rest.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (rest, None),
        };
        if let Some(d) = digest {
            check_digest(d).map_err(|m| format!("registry reference {text:?}: {m}"))?;
        }
        // A ':' after the last '/' separates the tag.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        check_repository(repository).map_err(|m| format!("registry reference {text:?}: {m}"))?;
        if let Some(t) = tag {
            check_tag(t).map_err(|m| format!("registry reference {text:?}: {m}"))?;
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(RegistryRef {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// The same repository at `digest` (a child manifest of an index, or a blob's owner).
    pub fn at_digest(&self, digest: &str) -> RegistryRef {
        RegistryRef {
            digest: Some(digest.to_string()),
            tag: None,
            ..self.clone()
        }
    }
}

/// Checks `HOST[:PORT]` (a DNS name or IPv4 address, and a port 1-65535).
pub fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        || name.starts_with(['.', '-'])
        || name.ends_with(['.', '-'])
    {
        return Err(format!(
            "registry host {host:?} is not a host name or IPv4 address"
        ));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "registry port {p:?} is not a port number (1-65535)"
            ));
        }
    }
    Ok(())
}

fn check_repository(repo: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && c.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
    };
    if repo.len() > 255 || !repo.split('/').all(component_ok) {
        return Err(format!(
            "repository {repo:?} is not valid: lowercase letters, digits and . _ - separated by '/', each part starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not valid: up to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        ))
    }
}

fn check_digest(digest: &str) -> Result<(), String> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "digest {digest:?} is not `sha256:` followed by 64 lowercase hex digits"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e2ca4a1285a3336d99e434af3e08d91c49ee7834c96c0692a6024d89c4d72461";

    #[test]
    fn forms_that_parse() {
        let r = RegistryRef::parse("10.0.2.2:5000/demo/busybox:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("10.0.2.2:5000", "demo/busybox", Some("1"))
        );
        let r = RegistryRef::parse("registry.example.com/web").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "registry.example.com/web:latest");
        let r = RegistryRef::parse(&format!("localhost:5000/a/b@{D}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(D)));
        let r = RegistryRef::parse(&format!("h/a:v1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("h/a:v1@{D}"));
        assert_eq!(
            r.at_digest("sha256:00").to_string(),
            "h/a@sha256:00",
            "a child reference drops the tag"
        );
    }

    #[test]
    fn mistakes_are_explained() {
        for (text, fragment) in [
            ("busybox", "has no repository"),
            ("host:99999/a", "is not a port number"),
            ("ho_st/a", "is not a host name"),
            ("h/Web", "repository \"Web\" is not valid"),
            ("h/a//b", "is not valid"),
            ("h/a:", "tag \"\" is not valid"),
            ("h/a:-x", "is not valid"),
            ("h/a@sha256:abc", "64 lowercase hex digits"),
            ("h/a@md5:abc", "is not `sha256:`"),
        ] {
            let err = RegistryRef::parse(text).unwrap_err();
            assert!(err.contains(fragment), "{text}: {err}");
        }
    }
}
