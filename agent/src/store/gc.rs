//! What the store holds and garbage collection: `berthctl images` and `berthctl prune`.
//!
//! A blob or unpacked layer is kept while a kept ref reaches it (ref -> manifest -> config and
//! layer blobs -> layer directories by ChainID, and their user-namespace copies). Pruning may
//! also drop refs no manifest container uses. Whatever is still mounted as an overlay lower
//! layer by any process (seen in every `/proc/PID/mountinfo`, since containers live in their
//! own mount namespaces) is never removed, reachable or not.
//!
//! Imports hold the store lock shared and pruning holds it exclusively, so a prune never
//! removes the blobs of an import whose ref is not written yet.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::digest::{chain_ids, sha256_hex};
use super::staging::remove_tree;
use super::{io_err, Store, StoreError};

/// One image in the store, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// The ref name (`[images]` key).
    pub name: String,
    /// `sha256:` of its manifest.
    pub digest: String,
    /// Bytes of its manifest, config and layer blobs (shared layers counted in each image).
    pub size: u64,
    /// Number of layers.
    pub layers: usize,
    /// The registry reference it was pulled from, if any.
    pub source: Option<String>,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Refs dropped (not in the kept set).
    pub refs: Vec<String>,
    /// Blobs removed.
    pub blobs: usize,
    /// Unpacked layer directories (and shifted copies) removed.
    pub layers: usize,
    /// Bytes of blobs freed.
    pub bytes: u64,
    /// Layers kept only because something still mounts them.
    pub in_use: usize,
}

/// An flock on `store/lock`, released on drop.
#[derive(Debug)]
pub struct StoreLock(File);

impl Drop for StoreLock {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by self.0 and open; LOCK_UN on it has no memory effects.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Store {
    /// Take the store lock: shared for imports, exclusive for pruning.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on an fd we own; it blocks until granted and touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(io_err("lock", &path)(std::io::Error::last_os_error()));
        }
        Ok(StoreLock(file))
    }

    /// Every image, by name.
    pub fn summaries(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let mut out = Vec::new();
        for name in self.list()? {
            let reach = self.reach(&name)?;
            let size = reach
                .blobs
                .iter()
                .filter_map(|d| self.blobs.path(d).ok())
                .filter_map(|p| fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            out.push(ImageSummary {
                source: self.source_of(&name),
                name,
                digest: reach.manifest,
                size,
                layers: reach.layer_hexes.len(),
            });
        }
        Ok(out)
    }

    /// Remove refs not in `keep` (all refs stay when `keep` is `None`), then every blob and
    /// layer no remaining ref reaches, except layers something still mounts.
    pub fn prune(&self, keep: Option<&BTreeSet<String>>) -> Result<PruneReport, StoreError> {
        let _lock = self.lock(true)?;
        let mut report = PruneReport::default();
        let refs_dir = self.root.join("refs");
        for name in self.list()? {
            if keep.is_some_and(|k| !k.contains(&name)) {
                let path = refs_dir.join(&name);
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                let _ = fs::remove_file(self.root.join("sources").join(&name));
                report.refs.push(name);
            }
        }
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for name in self.list()? {
            let reach = self.reach(&name)?;
            blobs.extend(reach.blobs);
            layers.extend(reach.layer_hexes);
        }
        let mounted = mounted_lower_dirs();
        let blob_dir = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blob_dir).map_err(io_err("list", &blob_dir))? {
            let entry = entry.map_err(io_err("list", &blob_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&format!("sha256:{name}")) {
                report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
                report.blobs += 1;
            }
        }
        let mut layer_roots = vec![self.root.join("layers")];
        let shifted = self.root.join("layers-shifted");
        if let Ok(bases) = fs::read_dir(&shifted) {
            layer_roots.extend(bases.flatten().map(|e| e.path()));
        }
        for root in layer_roots {
            let Ok(entries) = fs::read_dir(&root) else {
                continue;
            };
            for entry in entries.flatten() {
                let hex = entry.file_name().to_string_lossy().into_owned();
                if layers.contains(&hex) {
                    continue;
                }
                if mounted.iter().any(|m| m == &entry.path()) {
                    report.in_use += 1;
                    continue;
                }
                remove_tree(&entry.path()).map_err(io_err("remove", &entry.path()))?;
                report.layers += 1;
            }
        }
        // Downloads of images no longer wanted would only resume a pull nobody asks for.
        if let Ok(entries) = fs::read_dir(self.root.join("downloads")) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(report)
    }

    /// What ref `name` keeps alive.
    fn reach(&self, name: &str) -> Result<Reach, StoreError> {
        let (manifest_digest, manifest, config) = self.documents(name)?;
        let config_digest = manifest.config().digest().to_string();
        let mut blobs = vec![manifest_digest.clone(), config_digest];
        blobs.extend(manifest.layers().iter().map(|l| l.digest().to_string()));
        let layer_hexes = chain_ids(config.rootfs().diff_ids())
            .iter()
            .map(|c| sha256_hex(c).map(str::to_string))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Reach {
            manifest: manifest_digest,
            blobs,
            layer_hexes,
        })
    }
}

struct Reach {
    manifest: String,
    blobs: Vec<String>,
    layer_hexes: Vec<String>,
}

/// Every overlay lower directory mounted by any process on this host.
fn mounted_lower_dirs() -> Vec<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(text) = fs::read_to_string(entry.path().join("mountinfo")) {
            out.extend(lower_dirs(&text));
        }
    }
    out.into_iter().collect()
}

/// The `lowerdir=` directories in a mountinfo text.
pub fn lower_dirs(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_once(" - overlay "))
        .flat_map(|(_, opts)| opts.split(','))
        .filter_map(|o| o.strip_prefix("lowerdir="))
        .flat_map(|dirs| dirs.split(':'))
        .map(|d| Path::new(d.trim()).to_path_buf())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_dirs_are_read_from_overlay_mounts_only() {
        let text = "36 25 0:32 / /x rw - overlay overlay rw,lowerdir=/s/layers/bb:/s/layers/aa,upperdir=/u,workdir=/w\n\
                    37 25 0:33 / /y rw - tmpfs tmpfs rw,lowerdir=/not\n";
        assert_eq!(
            lower_dirs(text),
            vec![PathBuf::from("/s/layers/bb"), PathBuf::from("/s/layers/aa")]
        );
    }
}
