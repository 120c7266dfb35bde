//! Writing OCI image layouts (used by `berth-image oci` at build time and by tests to make
//! fixtures for the image store).
//!
//! [`write_layout`] turns a directory tree into a single-layer linux/amd64 image: a
//! deterministic gzip-compressed tar, the image config, the manifest, `index.json` and the
//! `oci-layout` marker, with every blob under `blobs/sha256/`. The same input always yields
//! the same digests. [`write_layout_from_layers`] takes ready-made layer blobs instead, so
//! tests can assemble multi-layer images from hand-written (even hostile) tars built with
//! [`tarball::tar_from_entries`].

pub mod tarball;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

pub use tarball::{tar_directory, tar_from_entries, TarEntry};

/// Annotation carrying the image's name in `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Errors while writing a layout.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A file could not be read or written.
    #[error("OCI layout: cannot {op} {}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The root filesystem contains something an image layer must not carry.
    #[error("{} cannot go into an image layer: {kind} are not supported (remove it from the tree)", path.display())]
    Unsupported {
        /// The offending file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A hand-written tar entry name cannot be encoded.
    #[error("tar entry `{name}`: {reason}")]
    EntryName {
        /// The name.
        name: String,
        /// Why it does not fit.
        reason: &'static str,
    },
    /// Building an OCI document failed.
    #[error("cannot build the {what}: {message}")]
    Spec {
        /// Which document.
        what: &'static str,
        /// The builder's message.
        message: String,
    },
}

impl OciError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OciError {
        let path = path.to_path_buf();
        move |source| OciError::Io { op, path, source }
    }

    fn spec(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> OciError {
        move |e| OciError::Spec {
            what,
            message: e.to_string(),
        }
    }
}

/// The runtime settings and name of an image to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayoutImage {
    /// `Entrypoint` (omitted when empty).
    pub entrypoint: Vec<String>,
    /// `Cmd` (omitted when empty).
    pub cmd: Vec<String>,
    /// `Env` as `KEY=VALUE` (omitted when empty).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// Value of the `org.opencontainers.image.ref.name` annotation in `index.json`.
    pub ref_name: Option<String>,
}

/// What [`write_layout`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutInfo {
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config.
    pub config_digest: String,
    /// Blob digests of the layers, base first.
    pub layer_digests: Vec<String>,
    /// Total bytes of all blobs (layers, config, manifest).
    pub total_size: u64,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// Plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip (`...tar+gzip`).
    Gzip,
    /// zstd (`...tar+zstd`).
    Zstd,
}

/// One ready-made layer: its blob bytes, media type and DiffID.
///
/// The fields are public so tests can lie (e.g. a truncated blob with the DiffID of the full
/// tar); [`LayerBlob::from_tar`] makes an honest one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// Layer media type, e.g. `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
    /// The blob as stored (compressed or not).
    pub data: Vec<u8>,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
}

impl LayerBlob {
    /// Compresses `tar` as asked and records its DiffID.
    pub fn from_tar(tar: &[u8], compression: LayerCompression) -> Result<LayerBlob, OciError> {
        let err = OciError::io("compress", Path::new("<layer in memory>"));
        let (media_type, data) = match compression {
            LayerCompression::None => (MediaType::ImageLayer, tar.to_vec()),
            LayerCompression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(tar)
                    .map_err(OciError::io("compress", Path::new("<layer in memory>")))?;
                (MediaType::ImageLayerGzip, enc.finish().map_err(err)?)
            }
            LayerCompression::Zstd => (
                MediaType::ImageLayerZstd,
                zstd::encode_all(tar, 3).map_err(err)?,
            ),
        };
        Ok(LayerBlob {
            media_type: media_type.to_string(),
            data,
            diff_id: sha256_string(tar),
        })
    }
}

fn sha256_string(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A writer that hashes and counts what passes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(written) = buf.get(..n) {
            self.hasher.update(written);
        }
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

/// A layer already written under `blobs/sha256/`.
struct WrittenLayer {
    media_type: MediaType,
    digest: String,
    size: u64,
    diff_id: String,
}

/// Writes a single-layer image of the tree at `rootfs` as an OCI layout in `out` (created
/// when missing). The layer is streamed: the tree is never held in memory.
pub fn write_layout(
    rootfs: &Path,
    out: &Path,
    image: &LayoutImage,
) -> Result<LayoutInfo, OciError> {
    let blobs = blobs_dir(out)?;
    let tmp = blobs.join(format!(".layer-{}.tmp", std::process::id()));
    let result = (|| {
        let file = File::create(&tmp).map_err(OciError::io("create", &tmp))?;
        let gz =
            flate2::write::GzEncoder::new(HashWriter::new(file), flate2::Compression::default());
        let tar = tarball::tar_directory(rootfs, HashWriter::new(gz))?;
        let (gz, diff_id, _) = tar.finish();
        let compressed = gz.finish().map_err(OciError::io("compress into", &tmp))?;
        let (file, digest, size) = compressed.finish();
        file.sync_all().map_err(OciError::io("fsync", &tmp))?;
        let path = blob_path(&blobs, &digest);
        fs::rename(&tmp, &path).map_err(OciError::io("rename into place", &path))?;
        Ok(WrittenLayer {
            media_type: MediaType::ImageLayerGzip,
            digest,
            size,
            diff_id,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    write_image(out, &blobs, vec![result?], image)
}

/// Writes an image made of `layers` (base first) as an OCI layout in `out`.
pub fn write_layout_from_layers(
    out: &Path,
    layers: &[LayerBlob],
    image: &LayoutImage,
) -> Result<LayoutInfo, OciError> {
    let blobs = blobs_dir(out)?;
    let mut written = Vec::with_capacity(layers.len());
    for layer in layers {
        let digest = write_blob(&blobs, &layer.data)?;
        written.push(WrittenLayer {
            media_type: MediaType::from(layer.media_type.as_str()),
            digest,
            size: layer.data.len() as u64,
            diff_id: layer.diff_id.clone(),
        });
    }
    write_image(out, &blobs, written, image)
}

fn blobs_dir(out: &Path) -> Result<PathBuf, OciError> {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(OciError::io("create", &blobs))?;
    Ok(blobs)
}

fn blob_path(blobs: &Path, digest: &str) -> PathBuf {
    blobs.join(digest.trim_start_matches("sha256:"))
}

fn write_blob(blobs: &Path, data: &[u8]) -> Result<String, OciError> {
    let digest = sha256_string(data);
    let path = blob_path(blobs, &digest);
    fs::write(&path, data).map_err(OciError::io("write", &path))?;
    Ok(digest)
}

fn digest(value: &str) -> Result<Digest, OciError> {
    Digest::from_str(value).map_err(OciError::spec("descriptor digest"))
}

fn write_image(
    out: &Path,
    blobs: &Path,
    layers: Vec<WrittenLayer>,
    image: &LayoutImage,
) -> Result<LayoutInfo, OciError> {
    let mut config = ConfigBuilder::default();
    if !image.entrypoint.is_empty() {
        config = config.entrypoint(image.entrypoint.clone());
    }
    if !image.cmd.is_empty() {
        config = config.cmd(image.cmd.clone());
    }
    if !image.env.is_empty() {
        config = config.env(image.env.clone());
    }
    if let Some(dir) = &image.working_dir {
        config = config.working_dir(dir.clone());
    }
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
        .build()
        .map_err(OciError::spec("image config rootfs"))?;
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(config.build().map_err(OciError::spec("image config"))?)
        .rootfs(rootfs)
        .build()
        .map_err(OciError::spec("image config"))?;
    let config_json = config.to_string().map_err(OciError::spec("image config"))?;
    let config_digest = write_blob(blobs, config_json.as_bytes())?;

    let layer_descs = layers
        .iter()
        .map(|l| {
            Ok(Descriptor::new(
                l.media_type.clone(),
                l.size,
                digest(&l.digest)?,
            ))
        })
        .collect::<Result<Vec<_>, OciError>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_json.len() as u64,
            digest(&config_digest)?,
        ))
        .layers(layer_descs)
        .build()
        .map_err(OciError::spec("image manifest"))?;
    let manifest_json = manifest
        .to_string()
        .map_err(OciError::spec("image manifest"))?;
    let manifest_digest = write_blob(blobs, manifest_json.as_bytes())?;

    let platform = PlatformBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .build()
        .map_err(OciError::spec("index platform"))?;
    let mut entry = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .size(manifest_json.len() as u64)
        .digest(digest(&manifest_digest)?)
        .platform(platform);
    if let Some(name) = &image.ref_name {
        entry = entry.annotations(HashMap::from([(
            REF_NAME_ANNOTATION.to_string(),
            name.clone(),
        )]));
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![entry
            .build()
            .map_err(OciError::spec("image index"))?])
        .build()
        .map_err(OciError::spec("image index"))?;
    let index_path = out.join("index.json");
    let index_json = index.to_string().map_err(OciError::spec("image index"))?;
    fs::write(&index_path, index_json).map_err(OciError::io("write", &index_path))?;
    let marker = out.join("oci-layout");
    fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(OciError::io("write", &marker))?;

    let total_size = layers.iter().map(|l| l.size).sum::<u64>()
        + config_json.len() as u64
        + manifest_json.len() as u64;
    Ok(LayoutInfo {
        manifest_digest,
        config_digest,
        layer_digests: layers.into_iter().map(|l| l.digest).collect(),
        total_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        fs::write(dir.path().join("bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("hello", dir.path().join("bin/hi")).unwrap();
        dir
    }

    #[test]
    fn write_layout_is_deterministic_and_complete() {
        let tree = sample_tree();
        let image = LayoutImage {
            cmd: vec!["/bin/hello".into()],
            ref_name: Some("hello".into()),
            ..Default::default()
        };
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let info_a = write_layout(tree.path(), a.path(), &image).unwrap();
        // Touch the tree's timestamps: digests must not change.
        let f = File::options()
            .write(true)
            .open(tree.path().join("bin/hello"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
            .unwrap();
        let info_b = write_layout(tree.path(), b.path(), &image).unwrap();
        assert_eq!(info_a, info_b);
        for d in info_a
            .layer_digests
            .iter()
            .chain([&info_a.config_digest, &info_a.manifest_digest])
        {
            let bytes = fs::read(blob_path(&a.path().join("blobs/sha256"), d)).unwrap();
            assert_eq!(&sha256_string(&bytes), d);
        }
        let index = fs::read_to_string(a.path().join("index.json")).unwrap();
        assert!(index.contains(&info_a.manifest_digest));
        assert!(index.contains(REF_NAME_ANNOTATION));
        assert!(fs::read_dir(a.path().join("blobs/sha256"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    }

    #[test]
    fn device_nodes_in_the_tree_are_refused() {
        let tree = sample_tree();
        nix::unistd::mkfifo(
            &tree.path().join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = write_layout(tree.path(), out.path(), &LayoutImage::default()).unwrap_err();
        assert!(
            matches!(err, OciError::Unsupported { kind: "fifos", .. }),
            "{err}"
        );
    }
}
