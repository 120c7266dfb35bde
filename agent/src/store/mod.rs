//! OCI image store on the state partition.
//!
//! Images arrive as OCI image layouts (or archives converted to one, see [`archive`]) and are
//! kept as:
//! ```text
//! blobs/sha256/<hex>    blobs, verified against digest and size before they are stored
//! layers/<chain-id hex>/ unpacked layers (overlay lowerdirs), named by OCI ChainID, shared
//! layers-shifted/<base>/<chain-id hex>/ copies owned by a user namespace's range (shift.rs)
//! refs/<name>           image name -> manifest digest
//! tmp/                  staging; anything here at open() is a crash leftover and is removed
//! ```
//! Every write is staged in `tmp/` and renamed into place once complete and fsynced, so a
//! crash never leaves a half blob, half layer or half ref where readers look. A layer
//! directory that already exists is reused, never unpacked twice.
//!
//! The store root, `layers/` and `tmp/` are mode `0700` (set at every open): layers keep the
//! setuid/setgid bits images ship for use inside containers, and no host user but root can
//! reach them. Overlay mounts are made by root before a container enters its user namespace,
//! so containers are not affected. A layer blob whose declared size exceeds the store's free
//! space is refused before it is copied (see also `unpack` for files inside a layer).

pub mod archive;
pub mod blobs;
pub mod digest;
pub mod gc;
pub mod layerfs;
pub mod layout;
pub mod refs;
pub mod shift;
pub mod staging;
pub mod unpack;

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest, MediaType, Os};

use blobs::{BlobError, BlobStore};
use digest::{chain_ids, sha256_hex, BadDigest, HashingReader};
use layerfs::{HostLayerFs, LayerFs};
use layout::{EntryKind, LayoutError};
use refs::RefError;
use staging::{remove_tree, Staging};
use unpack::UnpackError;

/// The store rooted at `/var/lib/berth/store` (any directory in tests).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    blobs: BlobStore,
    staging: Staging,
    fs_ops: Arc<dyn LayerFs>,
}

/// What a container needs from an image's config (OCI image config `config` object).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` as `KEY=VALUE`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
}

/// An image ready to run: its config and unpacked layer directories.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredImage {
    /// `sha256:<hex>` of the image manifest.
    pub manifest_digest: String,
    /// The image config.
    pub config: ImageConfig,
    /// Unpacked layers, bottom (base) first: overlay lowerdirs are these reversed.
    pub layer_dirs: Vec<PathBuf>,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A store directory or file could not be created, read or renamed.
    #[error("image store: cannot {op} {}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The image name is invalid, or its ref is unreadable.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// The layout directory is not a usable OCI image layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A blob is missing, corrupt or of the wrong size.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A digest in a manifest or config is malformed.
    #[error(transparent)]
    Digest(#[from] BadDigest),
    /// A manifest or config blob does not parse.
    #[error("{what} {digest} is not valid: {message}")]
    BadDocument {
        /// "image manifest" or "image config".
        what: &'static str,
        /// Its digest.
        digest: String,
        /// The parser's message.
        message: String,
    },
    /// A descriptor has a media type the store does not handle.
    #[error(
        "{what} {digest} has unsupported media type `{media_type}` (layers must be tar, tar+gzip \
         or tar+zstd)"
    )]
    UnsupportedMediaType {
        /// "layer" or "image config".
        what: &'static str,
        /// Its digest.
        digest: String,
        /// The media type found.
        media_type: String,
    },
    /// The image is not for Linux.
    #[error("image is built for os `{os}`; only linux images can run here")]
    WrongOs {
        /// The config's `os`.
        os: String,
    },
    /// The config lists a different number of DiffIDs than the manifest has layers.
    #[error("image config lists {diff_ids} rootfs.diff_ids but the manifest has {layers} layers")]
    DiffIdCount {
        /// Layers in the manifest.
        layers: usize,
        /// DiffIDs in the config.
        diff_ids: usize,
    },
    /// A layer's uncompressed content does not match its DiffID.
    #[error("layer {layer}: uncompressed content hashes to {actual}, but the config's diff_id is {expected}")]
    DiffIdMismatch {
        /// The layer blob digest.
        layer: String,
        /// DiffID from the config.
        expected: String,
        /// Digest of the uncompressed stream.
        actual: String,
    },
    /// A blob declares more bytes than the store's filesystem has free.
    #[error(
        "not enough space in the image store for {what} {digest}: it declares {needed} bytes \
         and {free} bytes are free in {}; remove unused images (`berthctl prune`) or grow the \
         state partition",
        path.display()
    )]
    NoSpace {
        /// "layer blob".
        what: &'static str,
        /// Its digest.
        digest: String,
        /// Its declared size.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// The store root.
        path: PathBuf,
    },
    /// A layer could not be unpacked (hostile or corrupt content).
    #[error("layer {layer}: {source}")]
    Unpack {
        /// The layer blob digest.
        layer: String,
        /// What went wrong.
        #[source]
        source: UnpackError,
    },
    /// An image archive could not be extracted or converted.
    #[error("image archive {}", path.display())]
    Archive {
        /// The archive file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: archive::ArchiveError,
    },
    /// No image has this name.
    #[error("no image named `{name}` in the store at {}; import it first", root.display())]
    UnknownImage {
        /// The name asked for.
        name: String,
        /// The store root.
        root: PathBuf,
    },
    /// An image's layer directory is gone.
    #[error(
        "image `{name}`: layer directory {} is missing; the store is damaged, re-import the image",
        path.display()
    )]
    MissingLayer {
        /// The image name.
        name: String,
        /// The expected layer directory.
        path: PathBuf,
    },
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn layer_compression(desc: &Descriptor) -> Result<Compression, StoreError> {
    use MediaType::*;
    match desc.media_type() {
        ImageLayer | ImageLayerNonDistributable => Ok(Compression::None),
        ImageLayerGzip | ImageLayerNonDistributableGzip => Ok(Compression::Gzip),
        ImageLayerZstd | ImageLayerNonDistributableZstd => Ok(Compression::Zstd),
        Other(m) if m == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Ok(Compression::Gzip)
        }
        Other(m) if m == "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        Other(m) if m == "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            Ok(Compression::Zstd)
        }
        other => Err(StoreError::UnsupportedMediaType {
            what: "layer",
            digest: desc.digest().to_string(),
            media_type: other.to_string(),
        }),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

impl Store {
    /// Open (creating when missing) a store below `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Store::open_with(root, Arc::new(HostLayerFs))
    }

    /// Like [`Store::open`], with the privileged layer operations supplied (tests pass a fake).
    pub fn open_with(root: &Path, fs_ops: Arc<dyn LayerFs>) -> Result<Store, StoreError> {
        for dir in [
            root.join("blobs/sha256"),
            root.join("layers"),
            root.join("refs"),
            root.join("tmp"),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        // Root only: layers hold setuid files meant for containers, never for host users.
        for dir in [root.to_path_buf(), root.join("layers"), root.join("tmp")] {
            let mode = fs::metadata(&dir)
                .map_err(io_err("inspect", &dir))?
                .permissions()
                .mode();
            if mode & 0o777 != 0o700 {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(io_err("restrict to root", &dir))?;
            }
        }
        let staging = Staging::new(root.join("tmp"));
        staging
            .clear()
            .map_err(io_err("clean up crash leftovers in", &root.join("tmp")))?;
        Ok(Store {
            root: root.to_path_buf(),
            blobs: BlobStore::new(root.join("blobs/sha256")),
            staging,
            fs_ops,
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh scratch path in `tmp/` (removed at the next open if left behind).
    pub fn scratch_path(&self, what: &str) -> PathBuf {
        self.staging.file_path(what)
    }

    /// Where registry downloads in progress are kept (`downloads/`): unlike `tmp/` it
    /// survives a restart, so an interrupted pull resumes.
    pub fn downloads_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("downloads");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(dir)
    }

    /// The stored blob `digest`, when the store has it.
    pub fn blob_if_present(&self, digest: &str) -> Option<PathBuf> {
        self.blobs.path(digest).ok().filter(|p| p.is_file())
    }

    /// Whether image `name` is already exactly the image of the OCI layout at `layout` (its
    /// ref names the manifest the layout's index chooses, and the stored image is intact), so
    /// importing it again would change nothing: a pre-seeded or already imported image costs
    /// no copy and no hashing of its layers at boot.
    pub fn holds_layout(&self, name: &str, layout: &Path) -> bool {
        let Ok(index) = layout::read_index(layout) else {
            return false;
        };
        let Ok(desc) = layout::choose(&index) else {
            return false;
        };
        if layout::entry_kind(desc).ok() != Some(EntryKind::Manifest) {
            return false;
        }
        let current = refs::read(&self.root.join("refs"), name).ok().flatten();
        current.as_deref() == Some(desc.digest().as_ref()) && self.image(name).is_ok()
    }

    /// Remember that image `name` was pulled from `reference` (`sources/NAME`, atomically).
    pub fn record_source(&self, name: &str, reference: &str) -> Result<(), StoreError> {
        refs::validate_name(name)?;
        let dir = self.root.join("sources");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let tmp = self.staging.file_path("source");
        let path = dir.join(name);
        fs::write(&tmp, format!("{reference}\n")).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
        blobs::sync_dir(&dir).map_err(io_err("fsync", &dir))
    }

    /// The reference image `name` was pulled from, if it came from a registry.
    pub fn source_of(&self, name: &str) -> Option<String> {
        refs::validate_name(name).ok()?;
        fs::read_to_string(self.root.join("sources").join(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Names of all imported images, sorted.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        Ok(refs::list(&self.root.join("refs"))?)
    }

    /// The directory a layer with this ChainID (`sha256:<hex>`) is unpacked to.
    pub fn layer_dir(&self, chain_id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("layers").join(sha256_hex(chain_id)?))
    }

    /// Import an OCI image layout directory under `name`, verifying every blob.
    ///
    /// The manifest is chosen as described in [`layout`]; the manifest, config and every layer
    /// blob are verified by digest and size while copied into `blobs/`; every layer is checked
    /// against its DiffID while unpacked. The ref is written last, so a failed import leaves
    /// the previous image under `name` (if any) untouched.
    pub fn import_oci_layout(&self, name: &str, layout: &Path) -> Result<StoredImage, StoreError> {
        refs::validate_name(name)?;
        // A prune waits until this import's ref is written (see `gc`).
        let _lock = self.lock(false)?;
        let index = layout::read_index(layout)?;
        let mut desc = layout::choose(&index)?.clone();
        if layout::entry_kind(&desc)? == EntryKind::Index {
            let bytes = self.ingest_small(layout, &desc)?;
            let nested =
                layout::parse_index(&bytes, &layout_blob_path(layout, desc.digest().as_ref())?)?;
            desc = layout::choose(&nested)?.clone();
            if layout::entry_kind(&desc)? == EntryKind::Index {
                return Err(LayoutError::NestedTooDeep.into());
            }
        }
        let manifest_digest = desc.digest().to_string();
        let manifest = parse_manifest(&self.ingest_small(layout, &desc)?, &manifest_digest)?;

        let config_desc = manifest.config();
        let config_digest = config_desc.digest().to_string();
        match config_desc.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(m) if m == "application/vnd.docker.container.image.v1+json" => {}
            other => {
                return Err(StoreError::UnsupportedMediaType {
                    what: "image config",
                    digest: config_digest,
                    media_type: other.to_string(),
                })
            }
        }
        let config = parse_config(&self.ingest_small(layout, config_desc)?, &config_digest)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(StoreError::DiffIdCount {
                layers: manifest.layers().len(),
                diff_ids: diff_ids.len(),
            });
        }
        for diff_id in diff_ids {
            sha256_hex(diff_id)?;
        }
        let chains = chain_ids(diff_ids);
        let mut layer_dirs = Vec::with_capacity(chains.len());
        for ((layer, diff_id), chain_id) in manifest.layers().iter().zip(diff_ids).zip(&chains) {
            let compression = layer_compression(layer)?;
            self.check_space("layer blob", layer)?;
            let blob = self.ingest(layout, layer)?;
            let dir = self.layer_dir(chain_id)?;
            if !dir.is_dir() {
                self.unpack_into_place(&blob, layer.digest().as_ref(), compression, diff_id, &dir)?;
            }
            layer_dirs.push(dir);
        }
        refs::write(
            &self.root.join("refs"),
            &self.staging,
            name,
            &manifest_digest,
        )?;
        Ok(StoredImage {
            manifest_digest,
            config: image_config(&config),
            layer_dirs,
        })
    }

    /// Import an image from `path` in the given format (the entry point for manifest sources).
    pub fn import(
        &self,
        name: &str,
        format: crate::manifest::ImageFormat,
        path: &Path,
    ) -> Result<StoredImage, StoreError> {
        use crate::manifest::ImageFormat;
        match format {
            ImageFormat::OciLayout => self.import_oci_layout(name, path),
            ImageFormat::OciArchive => self.import_oci_archive(name, path),
            ImageFormat::DockerArchive => self.import_docker_archive(name, path),
        }
    }

    /// Import a tar of an OCI image layout: extracted safely into `tmp/`, then imported as a
    /// layout (every blob verified), then the extraction is removed.
    pub fn import_oci_archive(
        &self,
        name: &str,
        archive: &Path,
    ) -> Result<StoredImage, StoreError> {
        refs::validate_name(name)?;
        let work = self.staging.file_path("oci-archive");
        let result = self
            .extract_archive(archive, &work)
            .and_then(|()| self.import_oci_layout(name, &work));
        let _ = remove_tree(&work);
        result
    }

    /// Import a `docker save` archive: extracted safely into `tmp/`, converted to an OCI
    /// layout (each layer checked against the config's `rootfs.diff_ids`), then imported as a
    /// layout.
    pub fn import_docker_archive(
        &self,
        name: &str,
        archive: &Path,
    ) -> Result<StoredImage, StoreError> {
        refs::validate_name(name)?;
        let work = self.staging.file_path("docker-archive");
        let layout = self.staging.file_path("docker-layout");
        let result = self
            .extract_archive(archive, &work)
            .and_then(|()| {
                archive::docker_to_layout(&work, &layout).map_err(|source| StoreError::Archive {
                    path: archive.to_path_buf(),
                    source,
                })
            })
            .and_then(|()| self.import_oci_layout(name, &layout));
        let _ = remove_tree(&work);
        let _ = remove_tree(&layout);
        result
    }

    fn extract_archive(&self, archive: &Path, work: &Path) -> Result<(), StoreError> {
        fs::create_dir(work).map_err(io_err("create", work))?;
        archive::extract(archive, work).map_err(|source| StoreError::Archive {
            path: archive.to_path_buf(),
            source,
        })
    }

    /// The ref `name`'s manifest digest, manifest and config, read back from `blobs/` with
    /// their digests checked.
    fn documents(
        &self,
        name: &str,
    ) -> Result<(String, ImageManifest, ImageConfiguration), StoreError> {
        let manifest_digest =
            refs::read(&self.root.join("refs"), name)?.ok_or_else(|| StoreError::UnknownImage {
                name: name.to_string(),
                root: self.root.clone(),
            })?;
        let manifest = parse_manifest(
            &self.blobs.read_verified(&manifest_digest)?,
            &manifest_digest,
        )?;
        let config_digest = manifest.config().digest().to_string();
        let config = parse_config(&self.blobs.read_verified(&config_digest)?, &config_digest)?;
        Ok((manifest_digest, manifest, config))
    }

    /// Look up an imported image by name.
    ///
    /// Reads the ref, the manifest and the config back from `blobs/` (checking their digests)
    /// and checks that every layer directory is present. Nothing is re-imported.
    pub fn image(&self, name: &str) -> Result<StoredImage, StoreError> {
        let (manifest_digest, manifest, config) = self.documents(name)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(StoreError::DiffIdCount {
                layers: manifest.layers().len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut layer_dirs = Vec::with_capacity(diff_ids.len());
        for chain_id in chain_ids(diff_ids) {
            let dir = self.layer_dir(&chain_id)?;
            if !dir.is_dir() {
                return Err(StoreError::MissingLayer {
                    name: name.to_string(),
                    path: dir,
                });
            }
            layer_dirs.push(dir);
        }
        Ok(StoredImage {
            manifest_digest,
            config: image_config(&config),
            layer_dirs,
        })
    }

    /// Refuses a blob not yet stored whose declared size exceeds the store's free space.
    fn check_space(&self, what: &'static str, desc: &Descriptor) -> Result<(), StoreError> {
        let digest = desc.digest().to_string();
        if self.blob_if_present(&digest).is_some() {
            return Ok(());
        }
        let free = self
            .fs_ops
            .free_bytes(&self.root)
            .map_err(io_err("read the free space of", &self.root))?;
        if desc.size() > free {
            return Err(StoreError::NoSpace {
                what,
                digest,
                needed: desc.size(),
                free,
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    /// Copies the blob `desc` from the layout into `blobs/`, verified.
    fn ingest(&self, layout: &Path, desc: &Descriptor) -> Result<PathBuf, StoreError> {
        let digest = desc.digest().to_string();
        let source = layout_blob_path(layout, &digest)?;
        Ok(self
            .blobs
            .ingest(&self.staging, &source, &digest, desc.size())?)
    }

    /// Ingests a JSON blob and returns its bytes.
    fn ingest_small(&self, layout: &Path, desc: &Descriptor) -> Result<Vec<u8>, StoreError> {
        let digest = desc.digest().to_string();
        if desc.size() > layout::MAX_JSON {
            return Err(StoreError::BadDocument {
                what: "JSON document",
                digest,
                message: format!(
                    "{} bytes is larger than the {} bytes allowed",
                    desc.size(),
                    layout::MAX_JSON
                ),
            });
        }
        self.ingest(layout, desc)?;
        Ok(self.blobs.read_verified(&digest)?)
    }

    /// Unpacks a verified layer blob into `tmp/`, checks its DiffID, and renames it to `dest`.
    fn unpack_into_place(
        &self,
        blob: &Path,
        layer: &str,
        compression: Compression,
        diff_id: &str,
        dest: &Path,
    ) -> Result<(), StoreError> {
        let work = self.staging.file_path("layer");
        fs::create_dir(&work).map_err(io_err("create", &work))?;
        let result = self
            .unpack_checked(blob, layer, compression, diff_id, &work)
            .and_then(|()| {
                match fs::rename(&work, dest) {
                    Ok(()) => Ok(()),
                    // Another import finished the same layer first: keep theirs.
                    Err(_) if dest.is_dir() => Ok(()),
                    Err(e) => Err(io_err("move the unpacked layer to", dest)(e)),
                }
            });
        let _ = remove_tree(&work);
        result?;
        let layers = self.root.join("layers");
        blobs::sync_dir(&layers).map_err(io_err("fsync", &layers))
    }

    fn unpack_checked(
        &self,
        blob: &Path,
        layer: &str,
        compression: Compression,
        diff_id: &str,
        work: &Path,
    ) -> Result<(), StoreError> {
        let file = BufReader::new(File::open(blob).map_err(io_err("open", blob))?);
        let stream_err = |source| StoreError::Unpack {
            layer: layer.to_string(),
            source: UnpackError::Stream { source },
        };
        let decompressed: Box<dyn Read> = match compression {
            Compression::None => Box::new(file),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(stream_err)?)
            }
        };
        let mut hashing = HashingReader::new(decompressed);
        unpack::unpack_layer(&mut hashing, work, self.fs_ops.as_ref()).map_err(|source| {
            StoreError::Unpack {
                layer: layer.to_string(),
                source,
            }
        })?;
        let (actual, _) = hashing.finish().map_err(stream_err)?;
        if actual != diff_id {
            return Err(StoreError::DiffIdMismatch {
                layer: layer.to_string(),
                expected: diff_id.to_string(),
                actual,
            });
        }
        sync_filesystem(work).map_err(io_err("sync", work))
    }
}

/// Where the layout keeps blob `digest`.
fn layout_blob_path(layout: &Path, digest: &str) -> Result<PathBuf, StoreError> {
    Ok(layout.join("blobs/sha256").join(sha256_hex(digest)?))
}

/// Parse an image manifest blob (`digest` names it in errors).
pub fn parse_manifest(bytes: &[u8], digest: &str) -> Result<ImageManifest, StoreError> {
    ImageManifest::from_reader(bytes).map_err(|e| StoreError::BadDocument {
        what: "image manifest",
        digest: digest.to_string(),
        message: e.to_string(),
    })
}

/// Parse an image config blob (`digest` names it in errors).
pub fn parse_config(bytes: &[u8], digest: &str) -> Result<ImageConfiguration, StoreError> {
    let config = ImageConfiguration::from_reader(bytes).map_err(|e| StoreError::BadDocument {
        what: "image config",
        digest: digest.to_string(),
        message: e.to_string(),
    })?;
    if *config.os() != Os::Linux {
        return Err(StoreError::WrongOs {
            os: config.os().to_string(),
        });
    }
    Ok(config)
}

fn image_config(config: &ImageConfiguration) -> ImageConfig {
    let Some(c) = config.config() else {
        return ImageConfig::default();
    };
    ImageConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        user: c.user().clone().filter(|u| !u.is_empty()),
        stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
    }
}

/// Flushes the filesystem holding `path` (`syncfs`): one call makes a whole unpacked layer
/// durable before it is renamed into place.
fn sync_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path)?;
    // SAFETY: `dir` is an open file descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
