//! `berthctl images`, `berthctl pull` and `berthctl prune`: the image store seen by an
//! operator on the host. They work on the store directly (as root, on the state partition),
//! so they also work while berthd is down; pruning takes the store lock, so it never races an
//! import.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::manifest::{ImageSource, Manifest, ManifestError};
use crate::registry::{self, PullError, PullEvent};
use crate::store::{Store, StoreError};

/// Default state directory on a berth host.
pub const STATE_DIR: &str = "/var/lib/berth";

/// Why an image command failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageCtlError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] Box<ManifestError>),
    /// The store failed.
    #[error("image store {path}")]
    Store {
        /// The store root.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// `pull NAME` names no `registry:` image of the manifest.
    #[error(
        "{manifest}: no image {name:?} with a `registry:` source; registry images there: {known}"
    )]
    NotARegistryImage {
        /// The manifest file.
        manifest: PathBuf,
        /// What was asked for.
        name: String,
        /// What exists.
        known: String,
    },
    /// The pull failed.
    #[error("image {name:?}: pull failed")]
    Pull {
        /// The image.
        name: String,
        /// Why.
        #[source]
        source: Box<PullError>,
    },
}

fn store_at(state: &Path) -> Result<Store, ImageCtlError> {
    let path = state.join("store");
    Store::open(&path).map_err(|source| ImageCtlError::Store {
        path,
        source: Box::new(source),
    })
}

/// Images the manifest's containers use, by image name.
fn users(manifest: Option<&Manifest>) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut by_image: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (container, spec) in manifest.map(|m| m.containers.iter()).into_iter().flatten() {
        by_image
            .entry(spec.image.clone())
            .or_default()
            .push(container.clone());
    }
    by_image
}

/// `images`: name, digest, size, used by (from `manifest`, when given), source.
pub fn images(
    state: &Path,
    manifest: Option<&Manifest>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), ImageCtlError> {
    let store = store_at(state)?;
    let summaries = store.summaries().map_err(|source| ImageCtlError::Store {
        path: store.root().to_path_buf(),
        source: Box::new(source),
    })?;
    let users = users(manifest);
    if json {
        let list: Vec<serde_json::Value> = summaries
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "digest": s.digest,
                    "size": s.size,
                    "layers": s.layers,
                    "source": s.source,
                    "used_by": users.get(&s.name).cloned().unwrap_or_default(),
                })
            })
            .collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(list));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<16} {:<19} {:>10} {:<20} SOURCE",
        "NAME", "DIGEST", "SIZE", "USED BY"
    );
    for s in summaries {
        let short = s.digest.trim_start_matches("sha256:");
        let used = users
            .get(&s.name)
            .map(|u| u.join(","))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<16} {:<19} {:>10} {:<20} {}",
            s.name,
            format!("sha256:{}", &short[..short.len().min(12)]),
            human(s.size),
            used,
            s.source.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `pull NAME`: pull the `registry:` image `name` of `manifest` into the store now.
pub fn pull(
    state: &Path,
    manifest_path: &Path,
    name: &str,
    out: &mut dyn Write,
) -> Result<(), ImageCtlError> {
    let manifest = Manifest::load(manifest_path).map_err(Box::new)?;
    let registry_images: Vec<&String> = manifest
        .images
        .iter()
        .filter(|(_, d)| matches!(d.source, ImageSource::Registry(_)))
        .map(|(n, _)| n)
        .collect();
    let Some(ImageSource::Registry(reference)) = manifest.images.get(name).map(|d| &d.source)
    else {
        return Err(ImageCtlError::NotARegistryImage {
            manifest: manifest_path.to_path_buf(),
            name: name.to_string(),
            known: if registry_images.is_empty() {
                "none".into()
            } else {
                registry_images
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    };
    let store = store_at(state)?;
    let options = registry::options_for(&manifest, &reference.registry, Some(state));
    let _ = writeln!(out, "pulling {name} from {reference}");
    let image = registry::pull(&store, name, reference, &options, &mut |event| {
        let line = match event {
            PullEvent::Manifest { digest, layers } => format!("manifest {digest}, {layers} layers"),
            PullEvent::Present { digest } => format!("{digest}: already in the store"),
            PullEvent::Downloading {
                digest,
                offset,
                size,
            } if offset > 0 => {
                format!("{digest}: resuming at {} of {}", human(offset), human(size))
            }
            PullEvent::Downloading { digest, size, .. } => {
                format!("{digest}: downloading {}", human(size))
            }
            PullEvent::Progress { digest, done, size } => {
                format!("{digest}: {} of {}", human(done), human(size))
            }
            PullEvent::Downloaded { digest } => format!("{digest}: verified"),
        };
        let _ = writeln!(out, "  {line}");
    })
    .map_err(|source| ImageCtlError::Pull {
        name: name.to_string(),
        source: Box::new(source),
    })?;
    let _ = writeln!(out, "{name}: {}", image.manifest_digest);
    Ok(())
}

/// `prune`: drop images `manifest` does not declare (all images are kept without one), then
/// unreferenced blobs and layers.
pub fn prune(
    state: &Path,
    manifest: Option<&Manifest>,
    out: &mut dyn Write,
) -> Result<(), ImageCtlError> {
    let store = store_at(state)?;
    let keep: Option<BTreeSet<String>> = manifest.map(|m| m.images.keys().cloned().collect());
    let report = store
        .prune(keep.as_ref())
        .map_err(|source| ImageCtlError::Store {
            path: store.root().to_path_buf(),
            source: Box::new(source),
        })?;
    for name in &report.refs {
        let _ = writeln!(out, "removed image {name}");
    }
    let _ = writeln!(
        out,
        "removed {} blobs ({}) and {} layers{}",
        report.blobs,
        human(report.bytes),
        report.layers,
        if report.in_use > 0 {
            format!("; kept {} unreferenced layers still mounted", report.in_use)
        } else {
            String::new()
        }
    );
    Ok(())
}
