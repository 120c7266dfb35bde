//! Which capabilities a container process keeps: Docker's default set, adjusted by the
//! manifest's `cap_add` / `cap_drop`.
//!
//! Pure set arithmetic on [`caps::Capability`] so the rules (names with or without `CAP_`,
//! any case, `ALL`, drop-before-add) are unit-tested; the shim applies the result just before
//! exec (see `super::apply`).

use std::str::FromStr;

use caps::Capability;

/// A set of capabilities, kept as the kernel's bit mask (so it is ordered and `Copy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSet(u64);

impl CapSet {
    /// Whether `cap` is in the set.
    pub fn contains(&self, cap: &Capability) -> bool {
        self.0 & cap.bitmask() != 0
    }
    /// Add `cap`.
    pub fn insert(&mut self, cap: Capability) {
        self.0 |= cap.bitmask();
    }
    /// Remove `cap`.
    pub fn remove(&mut self, cap: &Capability) {
        self.0 &= !cap.bitmask();
    }
    /// Remove everything.
    pub fn clear(&mut self) {
        self.0 = 0;
    }
    /// Number of capabilities.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    /// The members, by capability number.
    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        let mut all: Vec<Capability> = caps::all().into_iter().collect();
        all.sort_by_key(Capability::index);
        all.into_iter().filter(|c| self.contains(c))
    }
}

impl FromIterator<Capability> for CapSet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut set = CapSet::default();
        set.extend(iter);
        set
    }
}

impl Extend<Capability> for CapSet {
    fn extend<I: IntoIterator<Item = Capability>>(&mut self, iter: I) {
        for cap in iter {
            self.insert(cap);
        }
    }
}

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The word that stands for every capability in `cap_add` / `cap_drop`.
pub const ALL: &str = "ALL";

/// A capability name as written in a manifest, understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapName {
    /// `ALL`.
    All,
    /// One capability.
    One(Capability),
}

/// Parse `net_admin`, `NET_ADMIN`, `cap_net_admin` or `ALL` (any case).
pub fn parse_name(name: &str) -> Result<CapName, String> {
    let trimmed = name.trim();
    if trimmed.eq_ignore_ascii_case(ALL) {
        return Ok(CapName::All);
    }
    let canonical = caps::to_canonical(trimmed);
    Capability::from_str(&canonical)
        .map(CapName::One)
        .map_err(|_| {
            format!(
                "unknown capability {name:?}; write a Linux capability name such as \"NET_ADMIN\" \
                 or \"CAP_SYS_TIME\" (see capabilities(7)), or \"ALL\""
            )
        })
}

/// The container's capability set: start from [`DEFAULT_CAPS`], remove `drop` (`ALL` empties
/// the set), then add `add` (`ALL` adds every capability). Adding wins over dropping, as in
/// Docker, so `cap_drop = ["ALL"], cap_add = ["NET_BIND_SERVICE"]` keeps exactly one.
pub fn effective_set(add: &[String], drop: &[String]) -> Result<CapSet, String> {
    let mut set: CapSet = DEFAULT_CAPS.into_iter().collect();
    for name in drop {
        match parse_name(name)? {
            CapName::All => set.clear(),
            CapName::One(cap) => {
                set.remove(&cap);
            }
        }
    }
    for name in add {
        match parse_name(name)? {
            CapName::All => set.extend(caps::all()),
            CapName::One(cap) => {
                set.insert(cap);
            }
        }
    }
    Ok(set)
}

/// The kernel's bit mask of a set (`CapEff` in /proc/PID/status is this in hex).
pub fn mask(set: &CapSet) -> u64 {
    set.0
}

/// Canonical names (`CAP_...`) of a set, sorted by capability number.
pub fn names(set: &CapSet) -> Vec<String> {
    set.iter().map(|c| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_set_matches_dockers_mask() {
        let set = effective_set(&[], &[]).unwrap();
        assert_eq!(set.len(), 14);
        assert_eq!(format!("{:016x}", mask(&set)), "00000000a80425fb");
    }

    #[test]
    fn names_parse_with_or_without_prefix_in_any_case() {
        for name in [
            "NET_ADMIN",
            "net_admin",
            "CAP_NET_ADMIN",
            "cap_Net_Admin",
            " NET_ADMIN ",
        ] {
            assert_eq!(
                parse_name(name),
                Ok(CapName::One(Capability::CAP_NET_ADMIN)),
                "{name}"
            );
        }
        assert_eq!(parse_name("all"), Ok(CapName::All));
        let err = parse_name("NET_ADMINN").unwrap_err();
        assert!(err.contains("unknown capability \"NET_ADMINN\""), "{err}");
        assert!(parse_name("CAP_").is_err());
        assert!(parse_name("").is_err());
    }

    #[test]
    fn add_and_drop_adjust_the_default_set() {
        let set =
            effective_set(&strings(&["NET_ADMIN"]), &strings(&["cap_chown", "KILL"])).unwrap();
        assert!(set.contains(&Capability::CAP_NET_ADMIN));
        assert!(!set.contains(&Capability::CAP_CHOWN));
        assert!(!set.contains(&Capability::CAP_KILL));
        assert_eq!(set.len(), 13);
    }

    #[test]
    fn drop_all_then_add_keeps_only_the_added_ones() {
        let set = effective_set(&strings(&["NET_BIND_SERVICE"]), &strings(&["ALL"])).unwrap();
        assert_eq!(names(&set), ["CAP_NET_BIND_SERVICE"]);
        // Order inside the lists does not matter: drop is applied first, then add.
        let set = effective_set(&strings(&["chown"]), &strings(&["chown", "all"])).unwrap();
        assert_eq!(names(&set), ["CAP_CHOWN"]);
        assert_eq!(mask(&effective_set(&[], &strings(&["ALL"])).unwrap()), 0);
    }

    #[test]
    fn add_all_gives_every_capability() {
        let set = effective_set(&strings(&["ALL"]), &[]).unwrap();
        assert_eq!(set.len(), caps::all().len());
        assert!(set.contains(&Capability::CAP_SYS_ADMIN));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(effective_set(&strings(&["SYS_EVERYTHING"]), &[]).is_err());
        assert!(effective_set(&[], &strings(&["nope"])).is_err());
    }
}
