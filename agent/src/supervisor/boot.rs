//! From a manifest file to runnable container plans: load and validate the manifest, import
//! its images into the store, merge each container with its image config.
//!
//! All of it happens before anything starts, so an invalid manifest starts nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::manifest::{rules, Location, Manifest, ManifestError, MountDecl, NetworkMode};
use crate::runtime::cgroup::CgroupLimits;
use crate::runtime::rootfs::ContainerMount;
use crate::runtime::{self, rlimit, InitConfig, NetworkNamespace, RootfsLayout, SpecError};
use crate::store::{Store, StoreError};

/// One container, ready to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Container name (`[containers.NAME]`).
    pub name: String,
    /// What the init shim needs.
    pub init: InitConfig,
    /// The signal that asks it to stop: the manifest's `stop_signal`, else the image's
    /// StopSignal, else SIGTERM.
    pub stop_signal: Signal,
    /// The manifest's `stop_timeout`: time between the stop signal and SIGKILL (`None`: the
    /// supervisor's default).
    pub stop_timeout: Option<Duration>,
}

/// Why the manifest was rejected. Every variant's message starts with the `file:line:column`
/// of the manifest key it is about.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The manifest is invalid or names a missing image source.
    #[error(transparent)]
    Manifest(Box<ManifestError>),
    /// The store cannot be opened.
    #[error("{at}: cannot open the image store at {path}")]
    Store {
        /// Manifest location (`file:line:column`) of `[images]`.
        at: String,
        /// Store root.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// An image failed to import.
    #[error("{at}: image {name:?}: cannot import {}", layout.display())]
    Import {
        /// Manifest location of the image's `source`.
        at: String,
        /// `[images]` key.
        name: String,
        /// Layout directory.
        layout: PathBuf,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// A container's image is not in the store.
    #[error("{at}: container={container}: image {image:?} is not in the store")]
    Image {
        /// Manifest location of the container's `image`.
        at: String,
        /// Container name.
        container: String,
        /// Image name.
        image: String,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// The process cannot be built from image + manifest, or the image's StopSignal is bad.
    #[error("{at}: {error}")]
    Spec {
        /// Manifest location of the container's table.
        at: String,
        /// What is wrong.
        error: SpecError,
    },
    /// The container's security settings are unusable (e.g. an unknown capability).
    #[error("{at}: {source}")]
    Security {
        /// Manifest location of the container's table.
        at: String,
        /// What is wrong.
        #[source]
        source: runtime::security::SecurityError,
    },
}

impl From<ManifestError> for BootError {
    fn from(e: ManifestError) -> Self {
        BootError::Manifest(Box::new(e))
    }
}

fn at(manifest: &Manifest, key: &str) -> String {
    let loc = manifest.location_of(key).unwrap_or(Location::START);
    format!("{}:{}:{}", manifest.file().display(), loc.line, loc.column)
}

/// A validated manifest and its containers' plans (in name order).
#[derive(Debug)]
pub struct Boot {
    /// The manifest.
    pub manifest: Manifest,
    /// One plan per container.
    pub plans: Vec<ContainerPlan>,
}

/// The image store below the state directory.
pub fn store_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("store")
}

/// Per-container directories below the state directory.
pub fn containers_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("containers")
}

/// Named volumes below the state directory (`STATE/volumes/NAME`).
pub fn volumes_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("volumes")
}

/// The runtime form of a manifest mount. Bind sources are written as paths of the state
/// partition (`/var/lib/berth/...`) and mapped onto `state_dir`, which is the same directory
/// on a berth host and a temporary one in tests.
pub fn container_mount(decl: &MountDecl, state_dir: &Path) -> ContainerMount {
    match decl {
        MountDecl::Volume {
            name,
            target,
            read_only,
        } => ContainerMount::Bind {
            source: volumes_dir(state_dir).join(name),
            within: volumes_dir(state_dir),
            target: PathBuf::from(target),
            read_only: *read_only,
            create: true,
        },
        MountDecl::Bind {
            source,
            target,
            read_only,
        } => ContainerMount::Bind {
            source: state_dir.join(
                source
                    .strip_prefix(rules::STATE_PARTITION)
                    .unwrap_or(source.as_path()),
            ),
            within: state_dir.to_path_buf(),
            target: PathBuf::from(target),
            read_only: *read_only,
            create: false,
        },
        MountDecl::Tmpfs { target, size, mode } => ContainerMount::Tmpfs {
            target: PathBuf::from(target),
            size: *size,
            mode: *mode,
        },
    }
}

/// Load `manifest_path`, import its images (layouts relative to the manifest's directory) into
/// `STATE/store`, and plan every container.
pub fn prepare(manifest_path: &Path, state_dir: &Path) -> Result<Boot, BootError> {
    let manifest = Manifest::load(manifest_path)?;
    let base_dir = manifest_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let images = manifest.resolve_images(base_dir)?;

    let store_path = store_dir(state_dir);
    let store = Store::open(&store_path).map_err(|source| BootError::Store {
        at: at(&manifest, "images"),
        path: store_path.clone(),
        source: Box::new(source),
    })?;
    for image in &images {
        store
            .import(&image.name, image.format, &image.layout)
            .map_err(|source| BootError::Import {
                at: at(&manifest, &format!("images.{}.source", image.name)),
                name: image.name.clone(),
                layout: image.layout.clone(),
                source: Box::new(source),
            })?;
    }

    let containers = containers_dir(state_dir);
    let mut plans = Vec::with_capacity(manifest.containers.len());
    for (name, spec) in &manifest.containers {
        let image = store
            .image(&spec.image)
            .map_err(|source| BootError::Image {
                at: at(&manifest, &format!("containers.{name}.image")),
                container: name.clone(),
                image: spec.image.clone(),
                source: Box::new(source),
            })?;
        let spec_error = |error| BootError::Spec {
            at: at(&manifest, &format!("containers.{name}")),
            error,
        };
        let process = runtime::merge(name, &image.config, spec).map_err(spec_error)?;
        let stop_signal = match spec.stop_signal {
            Some(signal) => signal,
            None => runtime::spec::stop_signal(image.config.stop_signal.as_deref())
                .map_err(spec_error)?,
        };
        let security =
            runtime::security::for_container(name, spec, &image.config).map_err(|source| {
                BootError::Security {
                    at: at(&manifest, &format!("containers.{name}")),
                    source,
                }
            })?;
        let mut rootfs = RootfsLayout::for_container(&containers, name, &image.layer_dirs);
        rootfs.mounts = spec
            .mounts
            .iter()
            .map(|m| container_mount(m, state_dir))
            .collect();
        plans.push(ContainerPlan {
            name: name.clone(),
            init: InitConfig {
                name: name.clone(),
                process,
                limits: CgroupLimits::from_manifest(&spec.limits),
                rlimits: rlimit::from_manifest(&spec.limits),
                cgroup: None,
                security,
                rootfs,
                // berthd's network module replaces this with the namespace it prepared.
                network: match spec.network {
                    NetworkMode::Host => NetworkNamespace::Host,
                    NetworkMode::Bridge | NetworkMode::None => NetworkNamespace::New,
                },
            },
            stop_signal,
            stop_timeout: spec.stop_timeout,
        });
    }
    Ok(Boot { manifest, plans })
}
