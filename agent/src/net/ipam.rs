//! Container addresses: which address of the subnet each bridge container has, persisted on
//! the state partition so a container keeps its address across restarts and reboots.
//!
//! The file (`network/addresses.json`) maps container names to addresses. At boot every
//! bridge container of the manifest gets one: its pinned `ip`, else the address it had, else
//! the lowest free one; names no longer in the manifest lose theirs. Addresses are assigned for
//! all containers up front so every `/etc/hosts` can list every container by name.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::Subnet;

/// Why addresses cannot be assigned or saved.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The subnet is full.
    #[error("subnet {subnet} has no free address left for container {container:?}; use a larger `[network] subnet`")]
    Exhausted {
        /// The subnet.
        subnet: String,
        /// Who asked.
        container: String,
    },
    /// The file cannot be written.
    #[error("cannot save container addresses to {}", path.display())]
    Save {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file cannot be encoded.
    #[error("cannot encode container addresses")]
    Encode(#[source] serde_json::Error),
}

/// The persisted form.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    subnet: String,
    containers: BTreeMap<String, Ipv4Addr>,
}

/// What a container asks of IPAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Container name.
    pub name: String,
    /// Its pinned `ip`, if any.
    pub pinned: Option<Ipv4Addr>,
}

/// The file holding the assignments below `state_dir`.
pub fn addresses_file(state_dir: &Path) -> PathBuf {
    state_dir.join("network").join("addresses.json")
}

/// Read what was saved (an unreadable or foreign file counts as empty: addresses are then
/// handed out afresh).
fn load(path: &Path, subnet: Subnet) -> BTreeMap<String, Ipv4Addr> {
    let Ok(text) = std::fs::read(path) else {
        return BTreeMap::new();
    };
    match serde_json::from_slice::<Saved>(&text) {
        Ok(saved) if saved.subnet == subnet.to_string() => saved.containers,
        _ => BTreeMap::new(),
    }
}

/// Assign an address to every request and save the result to `path`.
pub fn assign(
    path: &Path,
    subnet: Subnet,
    requests: &[Request],
) -> Result<BTreeMap<String, Ipv4Addr>, IpamError> {
    let previous = load(path, subnet);
    let mut taken: Vec<Ipv4Addr> = requests.iter().filter_map(|r| r.pinned).collect();
    let mut assigned = BTreeMap::new();
    for r in requests {
        if let Some(ip) = r.pinned {
            assigned.insert(r.name.clone(), ip);
        }
    }
    // Keep previous addresses that nobody pinned.
    for r in requests.iter().filter(|r| r.pinned.is_none()) {
        if let Some(ip) = previous.get(&r.name) {
            if subnet.usable_for_container(*ip) && !taken.contains(ip) {
                taken.push(*ip);
                assigned.insert(r.name.clone(), *ip);
            }
        }
    }
    for r in requests {
        if assigned.contains_key(&r.name) {
            continue;
        }
        let ip = subnet
            .container_addresses()
            .find(|ip| !taken.contains(ip))
            .ok_or_else(|| IpamError::Exhausted {
                subnet: subnet.to_string(),
                container: r.name.clone(),
            })?;
        taken.push(ip);
        assigned.insert(r.name.clone(), ip);
    }
    save(path, subnet, &assigned)?;
    Ok(assigned)
}

/// Write the assignments atomically (temp file, fsync, rename, fsync of the directory); nothing
/// is written when the file already says the same (an `apply` on a full disk still gets as far
/// as saving its manifest, and says why that failed).
fn save(
    path: &Path,
    subnet: Subnet,
    containers: &BTreeMap<String, Ipv4Addr>,
) -> Result<(), IpamError> {
    let saved = Saved {
        subnet: subnet.to_string(),
        containers: containers.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&saved).map_err(IpamError::Encode)?;
    let err = |source| IpamError::Save {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("json.tmp");
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::DEFAULT_SUBNET;

    fn req(name: &str, pinned: Option<[u8; 4]>) -> Request {
        Request {
            name: name.into(),
            pinned: pinned.map(Ipv4Addr::from),
        }
    }

    #[test]
    fn addresses_are_handed_out_lowest_first_around_pins() {
        let dir = tempfile::tempdir().unwrap();
        let file = addresses_file(dir.path());
        let got = assign(
            &file,
            DEFAULT_SUBNET,
            &[
                req("a", None),
                req("b", Some([10, 88, 0, 2])),
                req("c", None),
            ],
        )
        .unwrap();
        assert_eq!(got["b"], Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(got["a"], Ipv4Addr::new(10, 88, 0, 3));
        assert_eq!(got["c"], Ipv4Addr::new(10, 88, 0, 4));
    }

    #[test]
    fn a_container_keeps_its_address_across_boots_and_new_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let file = addresses_file(dir.path());
        let first = assign(&file, DEFAULT_SUBNET, &[req("web", None), req("zz", None)]).unwrap();
        assert_eq!(first["zz"], Ipv4Addr::new(10, 88, 0, 3));
        // A new container sorting first does not take zz's address; a removed one frees its own.
        let second = assign(&file, DEFAULT_SUBNET, &[req("aa", None), req("zz", None)]).unwrap();
        assert_eq!(second["zz"], Ipv4Addr::new(10, 88, 0, 3));
        assert_eq!(second["aa"], Ipv4Addr::new(10, 88, 0, 2));
        let saved: Saved = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(saved.containers.len(), 2);
        assert!(!saved.containers.contains_key("web"));
    }

    #[test]
    fn unchanged_assignments_are_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = addresses_file(dir.path());
        assign(&file, DEFAULT_SUBNET, &[req("web", None)]).unwrap();
        // The temporary file cannot be written (as on a full disk): the same assignments need
        // no write, a new one reports the failure and the old file stays.
        let blocker = file.with_extension("json.tmp");
        std::fs::create_dir(&blocker).unwrap();
        assign(&file, DEFAULT_SUBNET, &[req("web", None)]).unwrap();
        assert!(assign(&file, DEFAULT_SUBNET, &[req("web", None), req("db", None)]).is_err());
        let saved: Saved = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(saved.containers.len(), 1);
    }

    #[test]
    fn a_pin_wins_over_a_remembered_address() {
        let dir = tempfile::tempdir().unwrap();
        let file = addresses_file(dir.path());
        assign(&file, DEFAULT_SUBNET, &[req("old", None)]).unwrap();
        let got = assign(
            &file,
            DEFAULT_SUBNET,
            &[req("new", Some([10, 88, 0, 2])), req("old", None)],
        )
        .unwrap();
        assert_eq!(got["new"], Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(got["old"], Ipv4Addr::new(10, 88, 0, 3));
    }

    #[test]
    fn a_changed_subnet_starts_afresh_and_a_full_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = addresses_file(dir.path());
        assign(&file, DEFAULT_SUBNET, &[req("a", None)]).unwrap();
        let small: Subnet = "192.168.5.0/30".parse().unwrap();
        let got = assign(&file, small, &[req("a", None)]).unwrap();
        assert_eq!(got["a"], Ipv4Addr::new(192, 168, 5, 2));
        let e = assign(&file, small, &[req("a", None), req("b", None)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("no free address left for container \"b\""),
            "{e}"
        );
    }
}
