//! From a manifest file to runnable container plans: load and validate the manifest, import
//! its images into the store, merge each container with its image config.
//!
//! All of it happens before anything starts, so an invalid manifest starts nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::manifest::{
    rules, Condition, ContainerSpec, HealthCheck, Location, LogSettings, Manifest, ManifestError,
    MountDecl, NetworkMode, PidMode, RestartPolicy,
};
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
    /// Restart policy, dependencies, essential, logs.
    pub supervision: Supervision,
}

impl ContainerPlan {
    /// Its log file, `containers/NAME/log` (next to its `upper/` and `work/`), kept across
    /// restarts.
    pub fn log_path(&self) -> PathBuf {
        self.init
            .rootfs
            .upper
            .parent()
            .unwrap_or(Path::new("/"))
            .join("log")
    }
}

/// How the supervisor treats a container (the manifest's supervision keys).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Supervision {
    /// The `[images]` entry it runs (shown by `berthctl ps`).
    pub image: String,
    /// `restart`.
    pub restart: RestartPolicy,
    /// `max_restarts` (`None`: no limit).
    pub max_restarts: Option<u32>,
    /// `depends_on`.
    pub depends_on: BTreeMap<String, Condition>,
    /// `essential`.
    pub essential: bool,
    /// `log_max_size`, `log_files`.
    pub log: LogSettings,
    /// `healthcheck`.
    pub healthcheck: Option<HealthCheck>,
    /// `restart_on_unhealthy`.
    pub restart_on_unhealthy: bool,
    /// `ports`, as written (`HOST:CONTAINER/PROTO`), for `berthctl ps`.
    pub ports: Vec<String>,
}

impl Supervision {
    /// The supervision keys of a manifest container.
    pub fn from_spec(spec: &ContainerSpec) -> Self {
        Supervision {
            image: spec.image.clone(),
            restart: spec.restart,
            max_restarts: spec.max_restarts,
            depends_on: spec.depends_on.clone(),
            essential: spec.essential,
            log: spec.log,
            healthcheck: spec.healthcheck.clone(),
            restart_on_unhealthy: spec.restart_on_unhealthy,
            ports: spec.ports.iter().map(ToString::to_string).collect(),
        }
    }
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
    /// A `registry:` image could not be brought into the store.
    #[error("{at}: image {name:?}: cannot pull {reference}")]
    Pull {
        /// Manifest location of the image's `source`.
        at: String,
        /// `[images]` key.
        name: String,
        /// The reference.
        reference: String,
        /// Why.
        #[source]
        source: Box<crate::registry::PullError>,
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
    /// One plan per container whose image is in the store.
    pub plans: Vec<ContainerPlan>,
    /// `registry:` images that could not be pulled yet; their containers have no plan and
    /// wait (see `supervisor::images`).
    pub waiting: Vec<WaitingImage>,
}

/// A `registry:` image not in the store yet, and who waits for it.
#[derive(Debug, Clone)]
pub struct WaitingImage {
    /// `[images]` key.
    pub name: String,
    /// What to pull.
    pub reference: crate::registry::RegistryRef,
    /// `file:line:column` of its `source`.
    pub at: String,
    /// Why the last pull failed.
    pub error: String,
    /// Whether trying again can help (see [`crate::registry::PullError::is_retryable`]).
    pub retryable: bool,
    /// The containers that use it.
    pub containers: Vec<String>,
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

/// Registry image `name` from what is on this host: the store, when it holds it from the same
/// reference, else the copy pulled at build time (`MANIFEST_DIR/pulled/NAME`) when it is of
/// this reference. `None`: it must be pulled.
pub fn local_registry_image(
    store: &Store,
    base_dir: &Path,
    name: &str,
    reference: &crate::registry::RegistryRef,
) -> Result<Option<crate::store::StoredImage>, crate::registry::PullError> {
    use crate::registry::{self, PullError};
    let wanted = reference.to_string();
    if store.source_of(name).as_deref() == Some(wanted.as_str()) {
        if let Ok(image) = store.image(name) {
            return Ok(Some(image));
        }
    }
    let shipped = base_dir.join(registry::PULLED_DIR).join(name);
    if registry::layout_source(&shipped).as_deref() == Some(wanted.as_str()) {
        let store_err = |e| PullError::Store(Box::new(e));
        let image = store.import_oci_layout(name, &shipped).map_err(store_err)?;
        store.record_source(name, &wanted).map_err(store_err)?;
        return Ok(Some(image));
    }
    Ok(None)
}

/// Bring `registry:` image `name` into the store: nothing to do when the store already holds
/// it from the same reference; else import the copy pulled at build time
/// (`MANIFEST_DIR/pulled/NAME`) when it is of this reference; else pull it, with a console line
/// per layer.
pub fn ensure_registry_image(
    store: &Store,
    manifest: &Manifest,
    base_dir: &Path,
    state_dir: &Path,
    name: &str,
    reference: &crate::registry::RegistryRef,
) -> Result<crate::store::StoredImage, crate::registry::PullError> {
    use crate::registry::{self, PullEvent};
    if let Some(image) = local_registry_image(store, base_dir, name, reference)? {
        return Ok(image);
    }
    let wanted = reference.to_string();
    let options = registry::options_for(manifest, &reference.registry, Some(state_dir));
    crate::console::emit(&crate::console::Event::Pulling {
        image: name.to_string(),
        what: format!("from {wanted}"),
    });
    registry::pull(store, name, reference, &options, &mut |event| {
        let what = match event {
            PullEvent::Manifest { digest, layers } => {
                format!("manifest {digest} ({layers} layers)")
            }
            PullEvent::Present { digest } => format!("{digest} already in the store"),
            PullEvent::Downloading {
                digest,
                offset: 0,
                size,
            } => format!("downloading {digest} ({size} bytes)"),
            PullEvent::Downloading {
                digest,
                offset,
                size,
            } => format!("resuming {digest} at {offset} of {size} bytes"),
            PullEvent::Progress { .. } => return,
            PullEvent::Downloaded { digest } => format!("{digest} verified"),
        };
        crate::console::emit(&crate::console::Event::Pulling {
            image: name.to_string(),
            what,
        });
    })
}

/// The directory a manifest's image sources are relative to: the manifest's own.
pub fn base_dir_of(manifest_path: &Path) -> &Path {
    manifest_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Load `manifest_path`, import its images (layouts relative to the manifest's directory) into
/// `STATE/store`, and plan every container.
pub fn prepare(manifest_path: &Path, state_dir: &Path) -> Result<Boot, BootError> {
    let manifest = Manifest::load(manifest_path)?;
    prepare_manifest(manifest, base_dir_of(manifest_path), state_dir)
}

/// [`prepare`] for a manifest already loaded, its image sources relative to `base_dir` (an
/// applied manifest uses the boot manifest's directory, where the host's images are).
pub fn prepare_manifest(
    manifest: Manifest,
    base_dir: &Path,
    state_dir: &Path,
) -> Result<Boot, BootError> {
    prepare_manifest_with(manifest, base_dir, state_dir, true)
}

/// [`prepare_manifest`]; without `pull`, a registry image not in the store (or shipped
/// pre-pulled) is left waiting without a network attempt (the background pullers own those).
pub fn prepare_manifest_with(
    manifest: Manifest,
    base_dir: &Path,
    state_dir: &Path,
    pull: bool,
) -> Result<Boot, BootError> {
    let images = manifest.resolve_images(base_dir)?;

    let store_path = store_dir(state_dir);
    let store = Store::open(&store_path).map_err(|source| BootError::Store {
        at: at(&manifest, "images"),
        path: store_path.clone(),
        source: Box::new(source),
    })?;
    for image in &images {
        if image.format == crate::manifest::ImageFormat::OciLayout
            && store.holds_layout(&image.name, &image.layout)
        {
            continue;
        }
        store
            .import(&image.name, image.format, &image.layout)
            .map_err(|source| BootError::Import {
                at: at(&manifest, &format!("images.{}.source", image.name)),
                name: image.name.clone(),
                layout: image.layout.clone(),
                source: Box::new(source),
            })?;
    }

    // A registry image that cannot be pulled now holds back only its own containers.
    let mut waiting = Vec::new();
    for (name, decl) in &manifest.images {
        if let crate::manifest::ImageSource::Registry(reference) = &decl.source {
            let result = if pull {
                ensure_registry_image(&store, &manifest, base_dir, state_dir, name, reference)
            } else {
                local_registry_image(&store, base_dir, name, reference).and_then(|found| {
                    found.ok_or_else(|| crate::registry::PullError::NotFound {
                        reference: reference.to_string(),
                        message: "not pulled yet".into(),
                    })
                })
            };
            if let Err(e) = result {
                waiting.push(WaitingImage {
                    name: name.clone(),
                    reference: reference.clone(),
                    at: at(&manifest, &format!("images.{name}.source")),
                    error: crate::runtime::init::error_chain(&e),
                    retryable: e.is_retryable(),
                    containers: manifest
                        .containers
                        .iter()
                        .filter(|(_, c)| &c.image == name)
                        .map(|(c, _)| c.clone())
                        .collect(),
                });
            }
        }
    }

    let containers = containers_dir(state_dir);
    let mut plans = Vec::with_capacity(manifest.containers.len());
    for (name, spec) in &manifest.containers {
        if waiting.iter().any(|w| w.name == spec.image) {
            continue;
        }
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
        let layer_dirs = match security.userns {
            Some(map) => {
                store
                    .shifted_layer_dirs(&image, &map)
                    .map_err(|source| BootError::Image {
                        at: at(&manifest, &format!("containers.{name}.userns")),
                        container: name.clone(),
                        image: spec.image.clone(),
                        source: Box::new(source),
                    })?
            }
            None => image.layer_dirs.clone(),
        };
        let mut rootfs = RootfsLayout::for_container(&containers, name, &layer_dirs);
        rootfs.owner = security.userns.map(|map| map.host);
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
                host_pid: spec.pid == PidMode::Host,
            },
            stop_signal,
            stop_timeout: spec.stop_timeout,
            supervision: Supervision::from_spec(spec),
        });
    }
    Ok(Boot {
        manifest,
        plans,
        waiting,
    })
}
