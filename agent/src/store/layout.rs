//! Reading an OCI image layout directory: the `oci-layout` marker, `index.json`, and the
//! choice of one image manifest among the index entries.
//!
//! Selection rule when an index lists several entries: the first entry whose platform is
//! `linux/amd64`; failing that, the first entry annotated `org.opencontainers.image.ref.name`;
//! failing that, the import is refused as ambiguous. A single entry is always taken. When the
//! chosen entry is itself an index, the rule is applied once more to that index (one level of
//! nesting); a deeper nesting is refused.

use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, Descriptor, ImageIndex, MediaType, OciLayout, Os};

use super::blobs::read_small;

/// Annotation naming an image inside a layout.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The only layout version understood.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// Largest JSON document (index, manifest, config) accepted.
pub const MAX_JSON: u64 = 4 << 20;

const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Why a layout directory cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A layout file is missing or unreadable.
    #[error("cannot read {}: is this an OCI image layout directory?", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A layout JSON file does not parse.
    #[error("{what} at {} is not valid: {message}", path.display())]
    Parse {
        /// Which document.
        what: &'static str,
        /// The file or blob.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// `oci-layout` declares another version.
    #[error("unsupported OCI layout version `{found}` in {}: only {LAYOUT_VERSION} is supported", path.display())]
    Version {
        /// The `oci-layout` file.
        path: PathBuf,
        /// The version found.
        found: String,
    },
    /// The index lists nothing.
    #[error("the image index lists no manifests")]
    Empty,
    /// Several entries and no rule picks one.
    #[error(
        "the image index lists {count} manifests, none for linux/amd64 and none annotated \
         `{REF_NAME_ANNOTATION}`: cannot tell which image to import"
    )]
    Ambiguous {
        /// Number of entries.
        count: usize,
    },
    /// An index inside an index inside an index.
    #[error("image indexes nested more than one level deep are not supported")]
    NestedTooDeep,
    /// The chosen entry is not a manifest or index.
    #[error(
        "index entry {digest} has media type `{media_type}`, expected an image manifest or index"
    )]
    NotAManifest {
        /// Its digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
}

/// Reads and checks `oci-layout`, then parses `index.json`.
pub fn read_index(layout: &Path) -> Result<ImageIndex, LayoutError> {
    let marker = layout.join("oci-layout");
    let bytes = read_small(&marker, MAX_JSON).map_err(|source| LayoutError::Read {
        path: marker.clone(),
        source,
    })?;
    let parsed = OciLayout::from_reader(&bytes[..]).map_err(|e| LayoutError::Parse {
        what: "oci-layout",
        path: marker.clone(),
        message: e.to_string(),
    })?;
    if parsed.image_layout_version() != LAYOUT_VERSION {
        return Err(LayoutError::Version {
            path: marker,
            found: parsed.image_layout_version().clone(),
        });
    }
    let index_path = layout.join("index.json");
    let bytes = read_small(&index_path, MAX_JSON).map_err(|source| LayoutError::Read {
        path: index_path.clone(),
        source,
    })?;
    parse_index(&bytes, &index_path)
}

/// Parses an image index document (`index.json` or a nested index blob).
pub fn parse_index(bytes: &[u8], path: &Path) -> Result<ImageIndex, LayoutError> {
    ImageIndex::from_reader(bytes).map_err(|e| LayoutError::Parse {
        what: "image index",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// What an index entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// An image manifest.
    Manifest,
    /// Another index.
    Index,
}

/// Classifies a descriptor from an index by media type (OCI and Docker names).
pub fn entry_kind(desc: &Descriptor) -> Result<EntryKind, LayoutError> {
    match desc.media_type() {
        MediaType::ImageManifest => Ok(EntryKind::Manifest),
        MediaType::ImageIndex => Ok(EntryKind::Index),
        MediaType::Other(m) if m == DOCKER_MANIFEST => Ok(EntryKind::Manifest),
        MediaType::Other(m) if m == DOCKER_MANIFEST_LIST => Ok(EntryKind::Index),
        other => Err(LayoutError::NotAManifest {
            digest: desc.digest().to_string(),
            media_type: other.to_string(),
        }),
    }
}

/// Picks the entry to import (see the module doc for the rule).
pub fn choose(index: &ImageIndex) -> Result<&Descriptor, LayoutError> {
    let entries = index.manifests();
    match entries.len() {
        0 => return Err(LayoutError::Empty),
        1 => return entries.first().ok_or(LayoutError::Empty),
        _ => {}
    }
    let linux_amd64 = entries.iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    });
    if let Some(d) = linux_amd64 {
        return Ok(d);
    }
    let named = entries.iter().find(|d| {
        d.annotations()
            .as_ref()
            .is_some_and(|a| a.contains_key(REF_NAME_ANNOTATION))
    });
    named.ok_or(LayoutError::Ambiguous {
        count: entries.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(
        digest_char: char,
        platform: Option<(&str, &str)>,
        ref_name: Option<&str>,
    ) -> serde_json::Value {
        let mut d = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", digest_char.to_string().repeat(64)),
            "size": 10,
        });
        if let Some((os, arch)) = platform {
            d["platform"] = serde_json::json!({"os": os, "architecture": arch});
        }
        if let Some(name) = ref_name {
            d["annotations"] = serde_json::json!({ REF_NAME_ANNOTATION: name });
        }
        d
    }

    fn index(entries: Vec<serde_json::Value>) -> ImageIndex {
        let doc = serde_json::json!({"schemaVersion": 2, "manifests": entries});
        parse_index(doc.to_string().as_bytes(), Path::new("index.json")).unwrap()
    }

    fn chosen(idx: &ImageIndex) -> char {
        choose(idx)
            .unwrap()
            .digest()
            .digest()
            .chars()
            .next()
            .unwrap()
    }

    #[test]
    fn single_entry_is_taken() {
        assert_eq!(
            chosen(&index(vec![desc('a', Some(("linux", "arm64")), None)])),
            'a'
        );
    }

    #[test]
    fn linux_amd64_is_preferred() {
        let idx = index(vec![
            desc('a', Some(("linux", "arm64")), Some("x")),
            desc('b', Some(("linux", "amd64")), None),
        ]);
        assert_eq!(chosen(&idx), 'b');
    }

    #[test]
    fn ref_name_annotation_is_the_fallback() {
        let idx = index(vec![
            desc('a', Some(("linux", "arm64")), None),
            desc('c', None, Some("web")),
        ]);
        assert_eq!(chosen(&idx), 'c');
    }

    #[test]
    fn empty_and_ambiguous_are_refused() {
        assert!(matches!(choose(&index(vec![])), Err(LayoutError::Empty)));
        let idx = index(vec![desc('a', None, None), desc('b', None, None)]);
        assert!(matches!(
            choose(&idx),
            Err(LayoutError::Ambiguous { count: 2 })
        ));
    }
}
