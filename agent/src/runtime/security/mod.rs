//! Process security of a container: capabilities, `no_new_privs`, the seccomp filter and the
//! user it runs as — everything that happens between "root is in place" and `execve`.
//!
//! berthd turns the manifest and image config into a serialisable [`SecuritySpec`] (part of
//! the shim's config); the shim [`prepare`]s it before forking (parsing names, compiling the
//! BPF, which allocates) and the container's process runs [`apply`] through the
//! [`Sys`](super::rootfs::Sys) trait as its last steps, so the order is unit-tested with the
//! recording fake:
//!
//! 1. resolve the user against the container's /etc/passwd and /etc/group;
//! 2. drop the bounding set to the container's capabilities (still root, so allowed);
//! 3. setgroups, setresgid, `PR_SET_KEEPCAPS`, setresuid;
//! 4. set effective, permitted, inheritable — and, for a non-root user, ambient, so the
//!    capabilities survive exec;
//! 5. `PR_SET_NO_NEW_PRIVS`;
//! 6. install the seccomp filter (the very last step before exec).

pub mod capabilities;
pub mod seccomp;
pub mod user;

use std::path::Path;

use self::capabilities::CapSet;
use seccompiler::BpfProgram;
use serde::{Deserialize, Serialize};

pub use seccomp::SeccompProfile;
pub use user::Credentials;

use super::rootfs::Sys;
use crate::manifest::ContainerSpec;
use crate::store::ImageConfig;

/// The security settings of one container, as the shim receives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// `NAME|UID[:GROUP|GID]`, resolved in the container; empty means root.
    pub user: String,
    /// Canonical capability names (`CAP_...`) the process keeps.
    pub capabilities: Vec<String>,
    /// Seccomp profile.
    pub seccomp: SeccompProfile,
    /// Whether the container's root filesystem is mounted read-only.
    pub read_only: bool,
    /// The id map of the container's user namespace (`None`: the host's user namespace).
    #[serde(default)]
    pub userns: Option<super::userns::IdMap>,
}

impl Default for SecuritySpec {
    /// Root, Docker's default capabilities, the default filter, a writable root.
    fn default() -> Self {
        SecuritySpec {
            user: String::new(),
            capabilities: capabilities::names(&capabilities::DEFAULT_CAPS.into_iter().collect()),
            seccomp: SeccompProfile::Default,
            read_only: false,
            userns: None,
        }
    }
}

/// Why a container's security settings cannot be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A capability name is wrong (the manifest validation normally catches this).
    #[error("container={container}: {message}")]
    Capability {
        /// The container.
        container: String,
        /// What is wrong.
        message: String,
    },
    /// The seccomp filter cannot be compiled.
    #[error("container={container}: cannot build the seccomp filter")]
    Seccomp {
        /// The container.
        container: String,
        /// Why.
        #[source]
        source: seccomp::SeccompError,
    },
}

/// Docker's rule: the manifest `user`, else the image's `User`, else root.
pub fn for_container(
    name: &str,
    container: &ContainerSpec,
    image: &ImageConfig,
) -> Result<SecuritySpec, SecurityError> {
    let set = capabilities::effective_set(&container.cap_add, &container.cap_drop).map_err(
        |message| SecurityError::Capability {
            container: name.to_string(),
            message,
        },
    )?;
    Ok(SecuritySpec {
        user: container
            .user
            .clone()
            .or_else(|| image.user.clone())
            .unwrap_or_default()
            .trim()
            .to_string(),
        capabilities: capabilities::names(&set),
        seccomp: container.seccomp,
        read_only: container.read_only,
        userns: container.userns.then_some(super::userns::IdMap::DEFAULT),
    })
}

/// A [`SecuritySpec`] made ready before the fork: parsed capabilities and compiled filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The user spec.
    pub user: String,
    /// Capabilities kept.
    pub capabilities: CapSet,
    /// Seccomp programs to install (empty when unconfined).
    pub seccomp: Vec<BpfProgram>,
}

/// Parse and compile `spec` for container `name`.
pub fn prepare(name: &str, spec: &SecuritySpec) -> Result<Prepared, SecurityError> {
    let set = capabilities::effective_set(&spec.capabilities, &[capabilities::ALL.to_string()])
        .map_err(|message| SecurityError::Capability {
            container: name.to_string(),
            message,
        })?;
    let seccomp = match spec.seccomp {
        SeccompProfile::Unconfined => Vec::new(),
        SeccompProfile::Default => {
            seccomp::compile(&seccomp::default_rules(&set)).map_err(|source| {
                SecurityError::Seccomp {
                    container: name.to_string(),
                    source,
                }
            })?
        }
    };
    Ok(Prepared {
        user: spec.user.clone(),
        capabilities: set,
        seccomp,
    })
}

/// Steps 1–6 of the module doc, in the container's process, after its root is in place.
/// Returns a message for the 125 "setup failed" report.
pub fn apply(prepared: &Prepared, sys: &mut dyn Sys) -> Result<(), String> {
    let read = |sys: &mut dyn Sys, path: &str| {
        sys.read_file(Path::new(path))
            .map_err(|e| format!("reading the image's {path}: {e}"))
    };
    let passwd = read(sys, "/etc/passwd")?;
    let group = read(sys, "/etc/group")?;
    let creds = user::resolve(&prepared.user, passwd.as_deref(), group.as_deref())
        .map_err(|e| e.to_string())?;
    sys.drop_bounding(&prepared.capabilities)
        .map_err(|e| format!("dropping capabilities from the bounding set: {e}"))?;
    sys.set_ids(&creds).map_err(|e| {
        format!(
            "switching to uid {} gid {} groups {:?}: {e}",
            creds.uid, creds.gid, creds.groups
        )
    })?;
    sys.set_caps(&prepared.capabilities, creds.uid != 0)
        .map_err(|e| format!("setting capabilities: {e}"))?;
    sys.no_new_privs()
        .map_err(|e| format!("setting no_new_privs: {e}"))?;
    if !prepared.seccomp.is_empty() {
        sys.install_seccomp(&prepared.seccomp)
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}

/// What the real [`Sys`] does for [`Sys::set_ids`]: groups and gid first (they need
/// CAP_SETGID), then keep the permitted capabilities across the uid change.
pub fn set_ids_real(creds: &Credentials) -> std::io::Result<()> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let io = |e: nix::Error| std::io::Error::from_raw_os_error(e as i32);
    let groups: Vec<Gid> = creds.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(io)?;
    let gid = Gid::from_raw(creds.gid);
    setresgid(gid, gid, gid).map_err(io)?;
    nix::sys::prctl::set_keepcaps(true).map_err(io)?;
    let uid = Uid::from_raw(creds.uid);
    setresuid(uid, uid, uid).map_err(io)
}

fn caps_io(e: caps::errors::CapsError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// What the real [`Sys`] does for [`Sys::drop_bounding`]: every capability this kernel knows
/// that is not kept leaves the bounding set.
pub fn drop_bounding_real(keep: &CapSet) -> std::io::Result<()> {
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, caps::CapSet::Bounding, cap).map_err(caps_io)?;
        }
    }
    Ok(())
}

/// What the real [`Sys`] does for [`Sys::set_caps`]: effective first (it must stay within
/// permitted), then permitted, inheritable and, when asked, ambient.
pub fn set_caps_real(set: &CapSet, ambient: bool) -> std::io::Result<()> {
    let hash: caps::CapsHashSet = set.iter().collect();
    for which in [
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
        caps::CapSet::Inheritable,
    ] {
        caps::set(None, which, &hash).map_err(caps_io)?;
    }
    caps::clear(None, caps::CapSet::Ambient).map_err(caps_io)?;
    if ambient {
        for cap in set.iter() {
            caps::raise(None, caps::CapSet::Ambient, cap).map_err(caps_io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use caps::Capability;

    use super::*;
    use crate::runtime::rootfs::FakeSys;

    fn container() -> ContainerSpec {
        ContainerSpec {
            image: "img".into(),
            entrypoint: None,
            command: None,
            env: BTreeMap::new(),
            workdir: None,
            hostname: None,
            limits: Default::default(),
            stop_signal: None,
            stop_timeout: None,
            user: None,
            cap_add: vec![],
            cap_drop: vec![],
            seccomp: SeccompProfile::Default,
            read_only: false,
            userns: false,
            pid: Default::default(),
            mounts: Vec::new(),
            restart: Default::default(),
            max_restarts: None,
            depends_on: Default::default(),
            essential: false,
            log: Default::default(),
            healthcheck: None,
            restart_on_unhealthy: false,
            network: Default::default(),
            ip: None,
            ports: Vec::new(),
        }
    }

    #[test]
    fn manifest_user_wins_over_image_user_and_root_is_the_default() {
        let mut image = ImageConfig {
            user: Some("daemon".into()),
            ..ImageConfig::default()
        };
        let mut c = container();
        assert_eq!(for_container("web", &c, &image).unwrap().user, "daemon");
        c.user = Some("1000:1000".into());
        assert_eq!(for_container("web", &c, &image).unwrap().user, "1000:1000");
        image.user = None;
        c.user = None;
        let spec = for_container("web", &c, &image).unwrap();
        assert_eq!(spec, SecuritySpec::default());
    }

    #[test]
    fn capabilities_travel_as_canonical_names_and_come_back() {
        let mut c = container();
        c.cap_drop = vec!["all".into()];
        c.cap_add = vec!["net_admin".into(), "CAP_KILL".into()];
        let spec = for_container("web", &c, &ImageConfig::default()).unwrap();
        assert_eq!(spec.capabilities, ["CAP_KILL", "CAP_NET_ADMIN"]);
        let prepared = prepare("web", &spec).unwrap();
        assert_eq!(
            prepared.capabilities,
            [Capability::CAP_KILL, Capability::CAP_NET_ADMIN]
                .into_iter()
                .collect()
        );
        assert_eq!(prepared.seccomp.len(), 2);
        c.cap_add = vec!["bogus".into()];
        let err = for_container("web", &c, &ImageConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("container=web: unknown capability"),
            "{err}"
        );
    }

    #[test]
    fn unconfined_compiles_no_filter() {
        let spec = SecuritySpec {
            seccomp: SeccompProfile::Unconfined,
            ..SecuritySpec::default()
        };
        assert!(prepare("web", &spec).unwrap().seccomp.is_empty());
    }

    fn prepared(user: &str) -> Prepared {
        prepare(
            "web",
            &SecuritySpec {
                user: user.into(),
                ..SecuritySpec::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn apply_order_ends_with_no_new_privs_then_seccomp() {
        let mut sys = FakeSys::default();
        sys.files.insert(
            PathBuf::from("/etc/passwd"),
            "app:x:1000:1000::/:/bin/sh\n".into(),
        );
        sys.files
            .insert(PathBuf::from("/etc/group"), "wheel:x:10:app\n".into());
        apply(&prepared("app"), &mut sys).unwrap();
        assert_eq!(
            sys.calls,
            [
                "drop_bounding keep 0xa80425fb",
                "set_ids uid=1000 gid=1000 groups=[10]",
                "set_caps 0xa80425fb ambient=true",
                "no_new_privs",
                "seccomp 2 programs",
            ]
        );
    }

    #[test]
    fn root_gets_no_ambient_caps_and_unknown_users_stop_before_any_change() {
        let mut sys = FakeSys::default();
        apply(&prepared(""), &mut sys).unwrap();
        assert!(sys
            .calls
            .contains(&"set_caps 0xa80425fb ambient=false".to_string()));
        assert!(sys
            .calls
            .contains(&"set_ids uid=0 gid=0 groups=[]".to_string()));

        let mut sys = FakeSys::default();
        let err = apply(&prepared("nobody"), &mut sys).unwrap_err();
        assert!(err.contains("unable to find user \"nobody\""), "{err}");
        assert!(sys.calls.is_empty(), "{:?}", sys.calls);
    }

    #[test]
    fn a_failing_step_is_named_and_stops_the_rest() {
        let mut sys = FakeSys {
            failures: vec![("set_ids".into(), libc::EPERM)],
            ..FakeSys::default()
        };
        let err = apply(&prepared("1000:1000"), &mut sys).unwrap_err();
        assert!(err.starts_with("switching to uid 1000 gid 1000"), "{err}");
        assert!(!sys.calls.iter().any(|c| c.starts_with("seccomp")));
    }
}
