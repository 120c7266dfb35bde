//! Process resource limits (setrlimit(2)) a container's process starts with.
//!
//! The manifest names them without the `RLIMIT_` prefix (`nofile`, `nproc`, ...); the init
//! shim's child applies them just before exec, so they bind the workload and everything it
//! forks, but not berthd.

use nix::sys::resource::Resource;
use serde::{Deserialize, Serialize};

use crate::manifest::Limits;

/// One rlimit to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlimitSetting {
    /// The manifest name (`nofile`, ...).
    pub name: String,
    /// Soft limit (`u64::MAX`: unlimited).
    pub soft: u64,
    /// Hard limit (`u64::MAX`: unlimited).
    pub hard: u64,
}

/// The rlimits of a manifest container, in name order.
pub fn from_manifest(limits: &Limits) -> Vec<RlimitSetting> {
    limits
        .rlimits
        .iter()
        .map(|(name, r)| RlimitSetting {
            name: name.clone(),
            soft: r.soft,
            hard: r.hard,
        })
        .collect()
}

/// The setrlimit(2) resource for a manifest name (see `manifest::limits::RLIMIT_NAMES`).
pub fn resource(name: &str) -> Option<Resource> {
    Some(match name {
        "as" => Resource::RLIMIT_AS,
        "core" => Resource::RLIMIT_CORE,
        "cpu" => Resource::RLIMIT_CPU,
        "data" => Resource::RLIMIT_DATA,
        "fsize" => Resource::RLIMIT_FSIZE,
        "locks" => Resource::RLIMIT_LOCKS,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        "msgqueue" => Resource::RLIMIT_MSGQUEUE,
        "nice" => Resource::RLIMIT_NICE,
        "nofile" => Resource::RLIMIT_NOFILE,
        "nproc" => Resource::RLIMIT_NPROC,
        "rss" => Resource::RLIMIT_RSS,
        "rtprio" => Resource::RLIMIT_RTPRIO,
        "rttime" => Resource::RLIMIT_RTTIME,
        "sigpending" => Resource::RLIMIT_SIGPENDING,
        "stack" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::limits::RLIMIT_NAMES;
    use crate::manifest::Rlimit;

    #[test]
    fn every_manifest_name_maps_to_a_resource() {
        for name in RLIMIT_NAMES {
            assert!(resource(name).is_some(), "{name}");
        }
        assert_eq!(resource("nofile"), Some(Resource::RLIMIT_NOFILE));
        assert_eq!(resource("files"), None);
    }

    #[test]
    fn settings_from_manifest_in_name_order() {
        let mut limits = Limits::default();
        limits.rlimits.insert(
            "nproc".into(),
            Rlimit {
                soft: 64,
                hard: 128,
            },
        );
        limits
            .rlimits
            .insert("core".into(), Rlimit { soft: 0, hard: 0 });
        let s = from_manifest(&limits);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].name.as_str(), s[0].soft, s[0].hard), ("core", 0, 0));
        assert_eq!(
            (s[1].name.as_str(), s[1].soft, s[1].hard),
            ("nproc", 64, 128)
        );
    }
}
