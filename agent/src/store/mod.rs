//! OCI image store on the state partition.
//!
//! INTERFACE STUB — owned by the store work; replace the bodies, keep the public names.

use std::path::{Path, PathBuf};

/// The store rooted at `/var/lib/berth/store` (any directory in tests).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
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
    /// Placeholder.
    #[error("store stub")]
    Stub,
}

impl Store {
    /// Open (creating when missing) a store below `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Ok(Store { root: root.to_path_buf() })
    }

    /// Import an OCI image layout directory under `name`, verifying every blob.
    pub fn import_oci_layout(&self, name: &str, layout: &Path) -> Result<StoredImage, StoreError> {
        let _ = (name, layout, &self.root);
        Err(StoreError::Stub)
    }

    /// Look up an imported image by name.
    pub fn image(&self, name: &str) -> Result<StoredImage, StoreError> {
        let _ = name;
        Err(StoreError::Stub)
    }
}
