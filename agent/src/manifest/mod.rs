//! The host manifest: versioned TOML schema, `parse` then `validate`.
//!
//! INTERFACE STUB — owned by the manifest work; replace the bodies, keep the public names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed and validated host manifest (schema version 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Schema version; only 1 exists.
    pub version: u32,
    /// `[host]`.
    pub host: Host,
    /// `[images]`: name -> declaration.
    pub images: BTreeMap<String, ImageDecl>,
    /// `[containers.NAME]`, in name order.
    pub containers: BTreeMap<String, ContainerSpec>,
}

/// `[host]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The machine's hostname (default "berth").
    pub hostname: String,
}

/// One `[images]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDecl {
    /// Where the image comes from.
    pub source: ImageSource,
}

/// An image source.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// `oci-layout:PATH`, PATH relative to the manifest's directory.
    OciLayout(PathBuf),
}

/// One `[containers.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Name of an `[images]` entry.
    pub image: String,
    /// Replaces the image's Entrypoint when set (Docker `--entrypoint`).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd when set (Docker's trailing arguments).
    pub command: Option<Vec<String>>,
    /// Added to / overriding the image's Env.
    pub env: BTreeMap<String, String>,
    /// Replaces the image's WorkingDir.
    pub workdir: Option<String>,
    /// UTS hostname inside the container (default: the container name).
    pub hostname: Option<String>,
}

/// A manifest error: where (file:line:column) and what to write instead.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ManifestError {
    /// The manifest file as given.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// An image resolved to a directory on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// The `[images]` key.
    pub name: String,
    /// The OCI image layout directory.
    pub layout: PathBuf,
}

impl Manifest {
    /// Read, parse and validate a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let _ = path;
        unimplemented!("manifest stub")
    }

    /// Check that every image source exists below `base_dir` (the manifest's directory)
    /// and return them; errors point at the `source` value in the file.
    pub fn resolve_images(&self, base_dir: &Path) -> Result<Vec<ResolvedImage>, ManifestError> {
        let _ = base_dir;
        unimplemented!("manifest stub")
    }
}
