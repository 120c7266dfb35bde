//! Image archives: `oci-archive` (a tar of an OCI image layout) and `docker-archive` (the
//! `docker save` format), both turned into an OCI image layout in the store's `tmp/` and then
//! imported like any layout, so every blob is verified by the same code.
//!
//! The outer tar is as untrusted as a layer: entry names go through the layer unpacker's path
//! check (no absolute paths, no `..`), only regular files and directories are written, and
//! nothing on disk is ever a symlink. Symbolic and hard links in the archive (`docker save`
//! uses them to share identical layers) are resolved by name inside the archive and
//! materialised as hard links of files already extracted; a link leading out of the archive or
//! to something that is not a regular file is refused. Devices and fifos are refused.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use tar::EntryType;

use super::digest::{sha256_hex, HashingReader};
use super::layout::MAX_JSON;
use super::unpack::{relative_path, UnpackError};

/// Most entries accepted in an image archive.
pub const MAX_ENTRIES: usize = 100_000;

/// Most links followed resolving one archive link.
const MAX_LINK_DEPTH: usize = 40;

/// Why an archive could not be read or converted.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive file could not be opened or read, or staging failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry name escapes the archive.
    #[error("archive entry refused")]
    UnsafePath(#[source] UnpackError),
    /// An entry is refused for another reason.
    #[error("archive entry `{entry}` is refused: {reason}")]
    Refused {
        /// The entry name.
        entry: String,
        /// Why.
        reason: String,
    },
    /// Too many entries.
    #[error("the archive has more than {MAX_ENTRIES} entries; it is not an image archive")]
    TooManyEntries,
    /// The tar stream is corrupt.
    #[error("the archive is not a readable tar file")]
    Stream(#[source] io::Error),
    /// `manifest.json` of a docker archive is missing or wrong.
    #[error("docker archive: {0}")]
    DockerManifest(String),
    /// A layer's content does not hash to the config's diff_id.
    #[error(
        "docker archive: layer {layer} hashes to {actual}, but the config's rootfs.diff_ids[{index}] is {expected}"
    )]
    DiffIdMismatch {
        /// Layer path in the archive.
        layer: String,
        /// Position in the layer list.
        index: usize,
        /// diff_id from the config.
        expected: String,
        /// What the layer hashes to.
        actual: String,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { op, path, source }
}

/// Extracts `archive` into the existing, empty directory `dest` (see the module docs for
/// what is refused). On error `dest` is left half-filled for the caller to remove.
pub fn extract(archive: &Path, dest: &Path) -> Result<(), ArchiveError> {
    let file = File::open(archive).map_err(io_err("open", archive))?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    let mut links: BTreeMap<PathBuf, (PathBuf, String)> = BTreeMap::new();
    let entries = tar.entries().map_err(ArchiveError::Stream)?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries);
        }
        let mut entry = entry.map_err(ArchiveError::Stream)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = relative_path(&raw).map_err(ArchiveError::UnsafePath)?;
        let refuse = |reason: &str| ArchiveError::Refused {
            entry: raw.clone(),
            reason: reason.to_string(),
        };
        if rel.as_os_str().is_empty() {
            continue; // "./"
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Directory => {
                let path = dest.join(&rel);
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(refuse("a directory replaces a file")),
                    Err(_) => fs::create_dir_all(&path).map_err(io_err("create", &path))?,
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                let path = dest.join(&rel);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                }
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            refuse("the archive holds two entries with this name")
                        } else {
                            io_err("create", &path)(e)
                        }
                    })?;
                io::copy(&mut entry, &mut out).map_err(ArchiveError::Stream)?;
                out.flush().map_err(io_err("write", &path))?;
            }
            EntryType::Symlink | EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| refuse("a link without a target"))?;
                let base = if kind == EntryType::Symlink {
                    rel.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                let target = inside(&base, &target_raw).ok_or_else(|| {
                    refuse(&format!("link target `{target_raw}` leaves the archive"))
                })?;
                links.insert(rel, (target, raw.clone()));
            }
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName => {}
            _ => {
                return Err(refuse(
                    "only files, directories and links belong in an image archive",
                ))
            }
        }
    }
    for (link, (target, raw)) in &links {
        let mut target = target.clone();
        let mut depth = 0;
        while let Some((next, _)) = links.get(&target) {
            depth += 1;
            if depth > MAX_LINK_DEPTH {
                return Err(ArchiveError::Refused {
                    entry: raw.clone(),
                    reason: "link loop".into(),
                });
            }
            target = next.clone();
        }
        let source = dest.join(&target);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_file() => {}
            _ => {
                return Err(ArchiveError::Refused {
                    entry: raw.clone(),
                    reason: format!(
                        "link target `{}` is not a file of the archive",
                        target.display()
                    ),
                })
            }
        }
        let path = dest.join(link);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        fs::hard_link(&source, &path).map_err(io_err("link", &path))?;
    }
    Ok(())
}

/// `target` (a link target, relative to `base`, or absolute meaning archive-relative) as a
/// path inside the archive; `None` when `..` climbs out of it.
fn inside(base: &Path, target: &str) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    let start: Vec<Component<'_>> = if Path::new(target).is_absolute() {
        Vec::new()
    } else {
        base.components().collect()
    };
    for c in start.into_iter().chain(Path::new(target).components()) {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.iter().collect())
}

/// One entry of a docker archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The part of a docker image config this conversion reads.
#[derive(Debug, Deserialize)]
struct DockerConfig {
    rootfs: DockerRootfs,
}

#[derive(Debug, Deserialize)]
struct DockerRootfs {
    diff_ids: Vec<String>,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Converts an extracted `docker save` archive at `dir` into an OCI image layout in `out`
/// (created): each layer tar's sha256 (of its uncompressed content) is checked against the
/// config's `rootfs.diff_ids`, then the layers, the config and a new manifest are written as
/// blobs. The files are moved, not copied.
pub fn docker_to_layout(dir: &Path, out: &Path) -> Result<(), ArchiveError> {
    let bad = |m: String| ArchiveError::DockerManifest(m);
    let manifest_path = dir.join("manifest.json");
    let bytes = read_small(&manifest_path).map_err(|e| {
        bad(format!(
            "cannot read manifest.json ({e}); is this a `docker save` archive?"
        ))
    })?;
    let mut entries: Vec<DockerManifestEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("manifest.json is not valid: {e}")))?;
    if entries.len() != 1 {
        return Err(bad(format!(
            "manifest.json lists {} images; save exactly one image per archive (`docker save -o FILE IMAGE`)",
            entries.len()
        )));
    }
    let entry = entries.remove(0);
    let file_in = |name: &str| -> Result<PathBuf, ArchiveError> {
        let rel = relative_path(name).map_err(ArchiveError::UnsafePath)?;
        let path = dir.join(&rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            _ => Err(bad(format!(
                "manifest.json names `{name}`, which is not a file in the archive"
            ))),
        }
    };
    let config_path = file_in(&entry.config)?;
    let config_bytes = read_small(&config_path).map_err(io_err("read", &config_path))?;
    let config: DockerConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| bad(format!("config {} is not valid: {e}", entry.config)))?;
    if config.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(bad(format!(
            "the config lists {} rootfs.diff_ids but manifest.json has {} layers",
            config.rootfs.diff_ids.len(),
            entry.layers.len()
        )));
    }
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (index, (layer, expected)) in entry.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
        sha256_hex(expected).map_err(|e| bad(format!("config rootfs.diff_ids[{index}]: {e}")))?;
        let path = file_in(layer)?;
        let (media_type, diff_id) = layer_diff_id(&path)?;
        if diff_id != *expected {
            return Err(ArchiveError::DiffIdMismatch {
                layer: layer.clone(),
                index,
                expected: expected.clone(),
                actual: diff_id,
            });
        }
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let (digest, size) = HashingReader::new(file)
            .finish()
            .map_err(io_err("read", &path))?;
        move_blob(&path, &blobs, &digest)?;
        layers.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    // The store's config parser insists on `history`, which the OCI spec makes optional
    // and some tools leave out: add an empty one rather than refuse the image.
    let mut config_value: serde_json::Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| bad(format!("config {} is not valid: {e}", entry.config)))?;
    let config_bytes = match config_value.as_object_mut() {
        Some(object) if !object.contains_key("history") => {
            object.insert("history".into(), serde_json::json!([]));
            config_value.to_string().into_bytes()
        }
        _ => config_bytes,
    };
    let config_desc = write_blob(&blobs, &config_bytes, OCI_CONFIG)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": layers,
    });
    let mut manifest_desc = write_blob(&blobs, manifest.to_string().as_bytes(), OCI_MANIFEST)?;
    if let Some(tag) = entry.repo_tags.as_ref().and_then(|t| t.first()) {
        manifest_desc["annotations"] =
            serde_json::json!({ super::layout::REF_NAME_ANNOTATION: tag });
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    for (name, text) in [
        ("index.json", index.to_string()),
        (
            "oci-layout",
            r#"{"imageLayoutVersion":"1.0.0"}"#.to_string(),
        ),
    ] {
        let path = out.join(name);
        fs::write(&path, text).map_err(io_err("write", &path))?;
    }
    Ok(())
}

/// The media type of a layer file (by its magic bytes) and the sha256 of its uncompressed
/// content.
fn layer_diff_id(path: &Path) -> Result<(&'static str, String), ArchiveError> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let n = file.read(&mut magic).map_err(io_err("read", path))?;
    let file = BufReader::new(File::open(path).map_err(io_err("open", path))?);
    let (media_type, reader): (&'static str, Box<dyn Read>) = match magic.get(..n) {
        Some([0x1f, 0x8b, ..]) => (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        ),
        Some([0x28, 0xb5, 0x2f, 0xfd]) => (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Box::new(
                zstd::stream::read::Decoder::with_buffer(file)
                    .map_err(io_err("decompress", path))?,
            ),
        ),
        _ => ("application/vnd.oci.image.layer.v1.tar", Box::new(file)),
    };
    let (diff_id, _) = HashingReader::new(reader)
        .finish()
        .map_err(io_err("read", path))?;
    Ok((media_type, diff_id))
}

fn move_blob(path: &Path, blobs: &Path, digest: &str) -> Result<(), ArchiveError> {
    let hex = sha256_hex(digest).map_err(|e| ArchiveError::DockerManifest(e.to_string()))?;
    let dest = blobs.join(hex);
    if dest.exists() {
        return Ok(()); // the same layer listed twice
    }
    fs::hard_link(path, &dest).map_err(io_err("link", &dest))
}

fn write_blob(
    blobs: &Path,
    bytes: &[u8],
    media_type: &str,
) -> Result<serde_json::Value, ArchiveError> {
    let digest = super::digest::sha256_of(bytes);
    let hex = sha256_hex(&digest).map_err(|e| ArchiveError::DockerManifest(e.to_string()))?;
    let path = blobs.join(hex);
    fs::write(&path, bytes).map_err(io_err("write", &path))?;
    Ok(serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}))
}

fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    super::blobs::read_small(path, MAX_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_stay_inside() {
        assert_eq!(inside(Path::new("a/b"), "../c"), Some(PathBuf::from("a/c")));
        assert_eq!(inside(Path::new("a"), "/x/y"), Some(PathBuf::from("x/y")));
        assert_eq!(inside(Path::new("a"), "../../etc"), None);
        assert_eq!(inside(Path::new(""), ".."), None);
    }
}
