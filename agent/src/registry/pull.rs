//! The pull itself (see the module above for the steps).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{BlobResponse, Certificate, CertificateEncoding, ClientConfig};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Arch, ImageIndex, ImageManifest, Os};

use super::{PullError, RegistryRef};
use crate::store::digest::{sha256_hex, sha256_of, HashingReader};
use crate::store::{Store, StoredImage};

/// Media types asked for when fetching a manifest.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// How to talk to one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullOptions {
    /// Plain HTTP (test and lab registries).
    pub insecure: bool,
    /// Basic credentials, also used to obtain a bearer token when the registry asks for one.
    pub credentials: Option<(String, String)>,
    /// A private CA (PEM) trusted in addition to the system's bundle.
    pub ca_pem: Option<String>,
    /// Connection timeout (default 5 s).
    pub connect_timeout: Option<Duration>,
}

/// Progress of a pull, for the console or a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The image manifest was fetched and checked.
    Manifest {
        /// Its digest.
        digest: String,
        /// Number of layers.
        layers: usize,
    },
    /// A blob the store already holds: not downloaded.
    Present {
        /// Its digest.
        digest: String,
    },
    /// A download starts (`offset` > 0: resumed).
    Downloading {
        /// Its digest.
        digest: String,
        /// Bytes already on disk from an interrupted pull.
        offset: u64,
        /// Total size.
        size: u64,
    },
    /// Bytes arrived (at most one event per MiB).
    Progress {
        /// Its digest.
        digest: String,
        /// Bytes on disk.
        done: u64,
        /// Total size.
        size: u64,
    },
    /// A blob is complete and verified.
    Downloaded {
        /// Its digest.
        digest: String,
    },
}

/// Pull `reference` into `store` as image `name` and return it ready to run.
pub fn pull(
    store: &Store,
    name: &str,
    reference: &RegistryRef,
    options: &PullOptions,
    progress: &mut dyn FnMut(PullEvent),
) -> Result<StoredImage, PullError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| PullError::Io {
            op: "start the network runtime for",
            path: store.root().to_path_buf(),
            source,
        })?;
    // A panic in the HTTP stack must not take berthd down with it.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(pull_async(store, name, reference, options, progress))
    }))
    .unwrap_or_else(|_| {
        Err(PullError::Unsupported {
            reference: reference.to_string(),
            message: "the registry client failed unexpectedly (see the panic above)".into(),
        })
    })
}

/// The client for `registry` with `options`.
fn client(registry: &str, options: &PullOptions) -> Result<Client, PullError> {
    // Several threads may get here; only the first install counts, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut extra = Vec::new();
    if let Some(pem) = &options.ca_pem {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(PullError::BadCa {
                registry: registry.to_string(),
                message: "no `-----BEGIN CERTIFICATE-----` block".into(),
            });
        }
        extra.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.as_bytes().to_vec(),
        });
    }
    let config = ClientConfig {
        protocol: if options.insecure {
            oci_client::client::ClientProtocol::Http
        } else {
            oci_client::client::ClientProtocol::Https
        },
        extra_root_certificates: extra,
        connect_timeout: Some(options.connect_timeout.unwrap_or(Duration::from_secs(5))),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    // Not `Client::new`: on failure (e.g. no /etc/resolv.conf for the resolver) it falls back
    // to a default HTTP client whose construction panics.
    Client::try_from(config).map_err(|e| PullError::Unreachable {
        registry: registry.to_string(),
        message: format!(
            "cannot set up the HTTP client ({}); is there a network with DNS servers (/etc/resolv.conf)?",
            chain(&e)
        ),
    })
}

fn oci_reference(r: &RegistryRef) -> Result<Reference, PullError> {
    r.to_string()
        .parse::<Reference>()
        .map_err(|e| PullError::Unsupported {
            reference: r.to_string(),
            message: format!("not a reference the registry client accepts: {e}"),
        })
}

/// Sort a client error into what the operator needs to know.
fn classify(r: &RegistryRef, e: OciDistributionError) -> PullError {
    let reference = r.to_string();
    let registry = r.registry.clone();
    let status = |code: u16| match code {
        401 | 403 => Some(true),
        404 => Some(false),
        _ => None,
    };
    match e {
        OciDistributionError::AuthenticationFailure(message) => PullError::AuthRefused {
            registry,
            reference,
            message,
        },
        OciDistributionError::UnauthorizedError { url } => PullError::AuthRefused {
            registry,
            reference,
            message: format!("401 Unauthorized at {url}"),
        },
        OciDistributionError::ImageManifestNotFoundError(message) => {
            PullError::NotFound { reference, message }
        }
        OciDistributionError::ServerError { code, url, message } if status(code).is_some() => {
            let message = format!("HTTP {code} at {url}: {message}");
            if status(code) == Some(true) {
                PullError::AuthRefused {
                    registry,
                    reference,
                    message,
                }
            } else {
                PullError::NotFound { reference, message }
            }
        }
        OciDistributionError::RegistryError { envelope, url } => {
            use oci_client::errors::OciErrorCode as Code;
            let codes: Vec<&Code> = envelope.errors.iter().map(|e| &e.code).collect();
            let text: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            let message = format!("{} at {url}", text.join("; "));
            let any = |wanted: &[Code]| codes.iter().any(|c| wanted.contains(c));
            if any(&[
                Code::ManifestUnknown,
                Code::BlobUnknown,
                Code::NameUnknown,
                Code::NotFound,
                Code::ManifestBlobUnknown,
            ]) {
                PullError::NotFound { reference, message }
            } else if any(&[Code::Unauthorized, Code::Denied]) {
                PullError::AuthRefused {
                    registry,
                    reference,
                    message,
                }
            } else {
                PullError::Registry {
                    registry,
                    reference,
                    source: Box::new(OciDistributionError::RegistryError { envelope, url }),
                }
            }
        }
        OciDistributionError::RequestError(err) if err.is_connect() || err.is_timeout() => {
            PullError::Unreachable {
                registry,
                message: chain(&err),
            }
        }
        other => PullError::Registry {
            registry,
            reference,
            source: Box::new(other),
        },
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PullError {
    let path = path.to_path_buf();
    move |source| PullError::Io { op, path, source }
}

/// Fetch and check the manifest chain of `reference`.
async fn resolve(
    reference: &RegistryRef,
    options: &PullOptions,
    progress: &mut dyn FnMut(PullEvent),
) -> Result<Fetched, PullError> {
    let client = client(&reference.registry, options)?;
    let auth = match &options.credentials {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let oref = oci_reference(reference)?;

    // The top-level manifest or index, checked against the pinned digest.
    let (top, top_digest) = client
        .pull_manifest_raw(&oref, &auth, &MANIFEST_TYPES)
        .await
        .map_err(|e| classify(reference, e))?;
    let actual = sha256_of(&top);
    if let Some(pinned) = &reference.digest {
        if &actual != pinned {
            return Err(PullError::DigestMismatch {
                what: "the manifest".into(),
                reference: reference.to_string(),
                expected: pinned.clone(),
                actual,
            });
        }
    } else if actual != top_digest {
        return Err(PullError::DigestMismatch {
            what: "the manifest".into(),
            reference: reference.to_string(),
            expected: top_digest,
            actual,
        });
    }
    let top_type = media_type(&top);
    let mut manifests = vec![(top_type.clone(), actual.clone(), top.to_vec())];
    let manifest_bytes = if is_index(&top_type) {
        let index: ImageIndex =
            serde_json::from_slice(&top).map_err(|e| PullError::Unsupported {
                reference: reference.to_string(),
                message: format!("the image index is not valid JSON: {e}"),
            })?;
        let entry = linux_amd64(&index).ok_or_else(|| PullError::Unsupported {
            reference: reference.to_string(),
            message: "the image index has no linux/amd64 image".into(),
        })?;
        let child = reference.at_digest(entry.digest().as_ref());
        let (bytes, _) = client
            .pull_manifest_raw(&oci_reference(&child)?, &auth, &MANIFEST_TYPES)
            .await
            .map_err(|e| classify(&child, e))?;
        let actual = sha256_of(&bytes);
        if actual != entry.digest().as_ref() {
            return Err(PullError::DigestMismatch {
                what: "the linux/amd64 manifest".into(),
                reference: reference.to_string(),
                expected: entry.digest().to_string(),
                actual,
            });
        }
        manifests.push((media_type(&bytes), actual, bytes.to_vec()));
        bytes.to_vec()
    } else {
        top.to_vec()
    };
    let manifest: ImageManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| PullError::Unsupported {
            reference: reference.to_string(),
            message: format!("the image manifest is not valid: {e}"),
        })?;
    progress(PullEvent::Manifest {
        digest: manifests.last().map(|m| m.1.clone()).unwrap_or_default(),
        layers: manifest.layers().len(),
    });
    Ok(Fetched {
        client,
        oref,
        manifests,
        manifest,
    })
}

/// A resolved image: its manifest chain (top first) and the image manifest to run.
struct Fetched {
    client: Client,
    oref: Reference,
    /// (media type, digest, bytes) of the top-level manifest or index, then the chosen one.
    manifests: Vec<(String, String, Vec<u8>)>,
    manifest: ImageManifest,
}

/// Write `fetched` as an OCI image layout at `layout`: manifests written, blobs hard-linked
/// from `present` when it has them, else downloaded through `downloads` (resumed there).
/// Returns the downloaded files (to remove once the layout is no longer needed).
async fn write_layout(
    fetched: &Fetched,
    reference: &RegistryRef,
    layout: &Path,
    present: &dyn Fn(&str) -> Option<PathBuf>,
    downloads: &Path,
    progress: &mut dyn FnMut(PullEvent),
) -> Result<Vec<PathBuf>, PullError> {
    let blobs_dir = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs_dir).map_err(io("create", &blobs_dir))?;
    for (_, digest, bytes) in &fetched.manifests {
        let path = blob_in(&blobs_dir, reference, digest)?;
        fs::write(&path, bytes).map_err(io("write", &path))?;
    }
    let manifest = &fetched.manifest;
    let wanted = std::iter::once(manifest.config()).chain(manifest.layers().iter());
    let mut fetched_files = Vec::new();
    for desc in wanted {
        let digest = desc.digest().to_string();
        let target = blob_in(&blobs_dir, reference, &digest)?;
        if let Some(have) = present(&digest) {
            if fs::hard_link(&have, &target).is_ok() {
                progress(PullEvent::Present { digest });
                continue;
            }
        }
        let partial = blob_in(downloads, reference, &digest)?;
        download(
            &fetched.client,
            &fetched.oref,
            reference,
            &digest,
            desc.size(),
            &partial,
            progress,
        )
        .await?;
        if fs::hard_link(&partial, &target).is_err() {
            fs::copy(&partial, &target).map_err(io("copy", &target))?;
        }
        fetched_files.push(partial);
    }
    let (top_type, top_digest, top_bytes) = &fetched.manifests[0];
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": top_type,
            "digest": top_digest,
            "size": top_bytes.len(),
        }],
    });
    let index_path = layout.join("index.json");
    fs::write(&index_path, index.to_string()).map_err(io("write", &index_path))?;
    let marker = layout.join("oci-layout");
    fs::write(&marker, r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io("write", &marker))?;
    let source = layout.join(SOURCE_FILE);
    fs::write(&source, format!("{reference}\n")).map_err(io("write", &source))?;
    Ok(fetched_files)
}

/// File in a layout written by a pull that names the reference it came from.
pub const SOURCE_FILE: &str = "berth-source";

/// The reference a pulled layout at `layout` came from (see [`pull_to_layout`]).
pub fn layout_source(layout: &Path) -> Option<String> {
    fs::read_to_string(layout.join(SOURCE_FILE))
        .ok()
        .map(|s| s.trim().to_string())
}

async fn pull_async(
    store: &Store,
    name: &str,
    reference: &RegistryRef,
    options: &PullOptions,
    progress: &mut dyn FnMut(PullEvent),
) -> Result<StoredImage, PullError> {
    let fetched = resolve(reference, options, progress).await?;
    let layout = store.scratch_path("pull");
    let downloads = store
        .downloads_dir()
        .map_err(|e| PullError::Store(Box::new(e)))?;
    let result = async {
        let present = |digest: &str| store.blob_if_present(digest);
        let files =
            write_layout(&fetched, reference, &layout, &present, &downloads, progress).await?;
        let image = store
            .import_oci_layout(name, &layout)
            .map_err(|e| PullError::Store(Box::new(e)))?;
        store
            .record_source(name, &reference.to_string())
            .map_err(|e| PullError::Store(Box::new(e)))?;
        for done in files {
            let _ = fs::remove_file(done);
        }
        Ok(image)
    }
    .await;
    let _ = crate::store::staging::remove_tree(&layout);
    result
}

/// Pull `reference` into a fresh OCI image layout at `out` (build time: the image ships
/// pre-pulled next to the manifest). It is written in a sibling temporary directory and
/// renamed over `out`, so a failed pull leaves nothing.
pub fn pull_to_layout(
    reference: &RegistryRef,
    options: &PullOptions,
    out: &Path,
    progress: &mut dyn FnMut(PullEvent),
) -> Result<(), PullError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the network runtime for", out))?;
    let parent = out.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io("create", parent))?;
    let tmp = parent.join(format!(
        ".{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("pull")
    ));
    let downloads = tmp.join(".downloads");
    let _ = crate::store::staging::remove_tree(&tmp);
    fs::create_dir_all(&downloads).map_err(io("create", &downloads))?;
    let result = runtime.block_on(async {
        let fetched = resolve(reference, options, progress).await?;
        write_layout(&fetched, reference, &tmp, &|_| None, &downloads, progress).await
    });
    let result = result.and_then(|_| {
        fs::remove_dir_all(&downloads).map_err(io("remove", &downloads))?;
        let _ = crate::store::staging::remove_tree(out);
        fs::rename(&tmp, out).map_err(io("rename into place", out))
    });
    if result.is_err() {
        let _ = crate::store::staging::remove_tree(&tmp);
    }
    result
}

fn blob_in(dir: &Path, reference: &RegistryRef, digest: &str) -> Result<PathBuf, PullError> {
    sha256_hex(digest)
        .map(|hex| dir.join(hex))
        .map_err(|e| PullError::Unsupported {
            reference: reference.to_string(),
            message: format!("blob digest {digest:?}: {e}"),
        })
}

/// The `mediaType` a manifest or index declares about itself (the OCI default when absent).
fn media_type(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
        .unwrap_or_else(|| MANIFEST_TYPES[0].to_string())
}

fn is_index(media_type: &str) -> bool {
    media_type == MANIFEST_TYPES[1] || media_type == MANIFEST_TYPES[3]
}

/// The linux/amd64 entry of an index (or its only entry when it names no platform).
fn linux_amd64(index: &ImageIndex) -> Option<&oci_spec::image::Descriptor> {
    let entries = index.manifests();
    entries
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
        })
        .or_else(|| match entries.as_slice() {
            [only] if only.platform().is_none() => Some(only),
            _ => None,
        })
}

/// Refuse to download `needed` bytes to `path` when its filesystem has less free (a
/// descriptor declaring 10 GB is refused before a byte is fetched).
fn check_space(
    path: &Path,
    needed: u64,
    reference: &RegistryRef,
    digest: &str,
) -> Result<(), PullError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stat = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| io("read the free space of", dir)(std::io::Error::from(e)))?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    if needed > free {
        return Err(PullError::NoSpace {
            reference: reference.to_string(),
            digest: digest.to_string(),
            needed,
            free,
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Download blob `digest` of `size` bytes to `path`, resuming what is there.
async fn download(
    client: &Client,
    oref: &Reference,
    reference: &RegistryRef,
    digest: &str,
    size: u64,
    path: &Path,
    progress: &mut dyn FnMut(PullEvent),
) -> Result<(), PullError> {
    let mut offset = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if offset > size {
        fs::remove_file(path).map_err(io("remove", path))?;
        offset = 0;
    }
    check_space(path, size - offset, reference, digest)?;
    if offset < size || size == 0 {
        progress(PullEvent::Downloading {
            digest: digest.to_string(),
            offset,
            size,
        });
        let response = client
            .pull_blob_stream_partial(oref, digest, offset, None)
            .await
            .map_err(|e| classify(reference, e))?;
        let (mut stream, append) = match response {
            BlobResponse::Partial(s) => (s, true),
            // The registry ignored the range: start over.
            BlobResponse::Full(s) => (s, false),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(io("open", path))?;
        let mut done = if append { offset } else { 0 };
        let mut reported = done;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PullError::Unreachable {
                registry: reference.registry.clone(),
                message: format!("download of {digest} broke off after {done} bytes: {e}"),
            })?;
            done += chunk.len() as u64;
            if done > size {
                drop(file);
                let _ = fs::remove_file(path);
                return Err(PullError::DigestMismatch {
                    what: format!("blob {digest}"),
                    reference: reference.to_string(),
                    expected: format!("{size} bytes"),
                    actual: format!("more than {size} bytes"),
                });
            }
            file.write_all(&chunk).map_err(io("write", path))?;
            if done - reported >= 1 << 20 {
                reported = done;
                progress(PullEvent::Progress {
                    digest: digest.to_string(),
                    done,
                    size,
                });
            }
        }
        file.sync_all().map_err(io("fsync", path))?;
    }
    let file = File::open(path).map_err(io("open", path))?;
    let mut reader = HashingReader::new(file);
    io::copy(&mut reader, &mut io::sink()).map_err(io("read", path))?;
    let (actual, count) = reader.finish().map_err(io("read", path))?;
    if actual != digest || count != size {
        let _ = fs::remove_file(path);
        return Err(PullError::DigestMismatch {
            what: format!("blob ({count} of {size} bytes)"),
            reference: reference.to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    progress(PullEvent::Downloaded {
        digest: digest.to_string(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_larger_than_the_free_space_is_refused_before_download() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let reference = RegistryRef::parse("registry.example.com/team/web:1").unwrap();
        check_space(&path, 1, &reference, "sha256:00").unwrap();
        let err = check_space(&path, 1 << 62, &reference, "sha256:00").unwrap_err();
        assert!(matches!(err, PullError::NoSpace { needed, .. } if needed == 1 << 62));
        assert!(err.to_string().starts_with(
            "not enough space for blob sha256:00 of registry.example.com/team/web:1: 4611686018427387904 bytes still to download"
        ), "{err}");
        assert!(err.is_retryable(), "space can be freed");
    }

    fn index(entries: serde_json::Value) -> ImageIndex {
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }))
        .unwrap()
    }

    fn entry(c: char, platform: Option<(&str, &str)>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", c.to_string().repeat(64)),
            "size": 1,
        });
        if let Some((os, arch)) = platform {
            v["platform"] = serde_json::json!({"os": os, "architecture": arch});
        }
        v
    }

    #[test]
    fn index_resolves_to_linux_amd64_only() {
        let i = index(serde_json::json!([
            entry('a', Some(("linux", "arm64"))),
            entry('b', Some(("linux", "amd64"))),
        ]));
        assert!(linux_amd64(&i)
            .unwrap()
            .digest()
            .to_string()
            .ends_with("bbbb"));
        let i = index(serde_json::json!([entry('a', Some(("linux", "arm64")))]));
        assert!(linux_amd64(&i).is_none());
        let i = index(serde_json::json!([entry('c', None)]));
        assert!(linux_amd64(&i).is_some());
    }

    #[test]
    fn media_type_defaults_to_an_oci_manifest() {
        assert_eq!(media_type(b"{}"), MANIFEST_TYPES[0]);
        assert!(is_index(&media_type(
            br#"{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json"}"#
        )));
    }

    #[test]
    fn only_content_errors_are_final() {
        let r = RegistryRef::parse("h/a:1").unwrap();
        assert!(
            classify(&r, OciDistributionError::AuthenticationFailure("no".into())).is_retryable()
        );
        let e = classify(
            &r,
            OciDistributionError::ServerError {
                code: 404,
                url: "u".into(),
                message: "m".into(),
            },
        );
        assert!(matches!(e, PullError::NotFound { .. }), "{e}");
        let e = classify(
            &r,
            OciDistributionError::ServerError {
                code: 403,
                url: "u".into(),
                message: "m".into(),
            },
        );
        assert!(e.to_string().contains("[registries.\"h\"]"), "{e}");
        assert!(!PullError::DigestMismatch {
            what: "w".into(),
            reference: "r".into(),
            expected: "e".into(),
            actual: "a".into()
        }
        .is_retryable());
    }
}
