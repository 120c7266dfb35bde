//! Images from an OCI distribution registry: `source = "registry:HOST/REPO:TAG"`.
//!
//! [`pull`] brings an image into the [`Store`] the same way a local layout arrives — the
//! registry only replaces the directory the blobs are read from:
//!
//! 1. fetch the manifest (or index, then its linux/amd64 manifest) by tag or pinned digest and
//!    check it against the digest the registry announced and, when pinned, the manifest's own;
//! 2. for the config and each layer: skip it when the store already holds the blob (layers
//!    shared with other images are never downloaded twice), else download it to
//!    `store/downloads/<hex>`, resuming a partial file with an HTTP range request, and check
//!    size and sha256;
//! 3. assemble a throwaway OCI layout in the store's `tmp/` from those files (hard links) and
//!    import it with [`Store::import_oci_layout`], which verifies every blob again, unpacks
//!    layers atomically and writes the ref last;
//! 4. record which reference the stored image came from (`store/sources/NAME`), so the next
//!    boot pulls only when the manifest names something else.
//!
//! The HTTP work is done by the `oci-client` crate (token and basic auth, TLS with rustls and
//! the system's CA bundle plus an optional private CA, plain HTTP for `insecure` registries);
//! names are resolved by its pure-Rust resolver (a static berthd cannot use the C library's).

pub mod pull;
pub mod reference;

pub use pull::{layout_source, pull, pull_to_layout, PullEvent, PullOptions};
pub use reference::RegistryRef;

use crate::store::StoreError;

/// Why an image could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Nothing answers at the registry's address.
    #[error("cannot reach registry {registry}: {message}")]
    Unreachable {
        /// `HOST[:PORT]`.
        registry: String,
        /// What the connection attempt said.
        message: String,
    },
    /// The registry refused the credentials (or asked for some and got none).
    #[error("registry {registry} refused access to {reference}: {message}; set `username` and `password` in [registries.\"{registry}\"]")]
    AuthRefused {
        /// `HOST[:PORT]`.
        registry: String,
        /// The image.
        reference: String,
        /// The registry's answer.
        message: String,
    },
    /// The repository, tag or digest does not exist there.
    #[error("{reference} does not exist on the registry: {message}")]
    NotFound {
        /// The image.
        reference: String,
        /// The registry's answer.
        message: String,
    },
    /// Content did not match its digest (a pinned manifest, a blob).
    #[error("{what} of {reference} has digest {actual}, not the expected {expected}; refusing it")]
    DigestMismatch {
        /// Manifest, config or layer.
        what: String,
        /// The image.
        reference: String,
        /// What was asked for.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The manifest or index is not something berth can run.
    #[error("{reference}: {message}")]
    Unsupported {
        /// The image.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// Any other answer of the registry.
    #[error("registry {registry} failed for {reference}")]
    Registry {
        /// `HOST[:PORT]`.
        registry: String,
        /// The image.
        reference: String,
        /// The client's error.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// The private CA in `[registries."HOST"] ca` is not a PEM certificate.
    #[error("registry {registry}: `ca` is not a PEM certificate: {message}")]
    BadCa {
        /// `HOST[:PORT]`.
        registry: String,
        /// Why.
        message: String,
    },
    /// A blob declares more bytes than the store's disk has free.
    #[error(
        "not enough space for blob {digest} of {reference}: {needed} bytes still to download \
         and {free} bytes are free in {}; remove unused images (`berthctl prune`) or grow the \
         state partition",
        path.display()
    )]
    NoSpace {
        /// The image reference.
        reference: String,
        /// The blob.
        digest: String,
        /// Bytes its descriptor declares, minus what was already downloaded.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// Where it would be downloaded.
        path: std::path::PathBuf,
    },
    /// Writing downloads to the store's disk failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The downloaded image could not be imported.
    #[error("importing the pulled image")]
    Store(#[source] Box<StoreError>),
}

impl PullError {
    /// Whether trying again later can help: the registry may come up, the image may be pushed,
    /// credentials may be fixed on the registry's side. Content that does not match its digest
    /// or that berth cannot run will not change.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            PullError::DigestMismatch { .. }
                | PullError::Unsupported { .. }
                | PullError::BadCa { .. }
        )
    }
}

/// How to reach `registry` according to `manifest`'s `[registries."HOST"]`, with credentials
/// from `STATE/registry-auth/HOST` (`username:password` on one line) when the manifest has
/// none, so secrets can stay off the manifest.
pub fn options_for(
    manifest: &crate::manifest::Manifest,
    registry: &str,
    state_dir: Option<&std::path::Path>,
) -> PullOptions {
    let settings = manifest
        .registries
        .get(registry)
        .cloned()
        .unwrap_or_default();
    let credentials = settings.credentials.or_else(|| {
        let file = state_dir?.join("registry-auth").join(registry);
        let text = std::fs::read_to_string(file).ok()?;
        let (user, password) = text.trim_end_matches('\n').split_once(':')?;
        Some((user.to_string(), password.to_string()))
    });
    PullOptions {
        insecure: settings.insecure,
        credentials,
        ca_pem: settings.ca,
        connect_timeout: None,
    }
}

/// Where pre-pulled images ship, relative to the manifest's directory (`pulled/NAME`, each an
/// OCI layout with a `berth-source` file naming its reference).
pub const PULLED_DIR: &str = "pulled";
