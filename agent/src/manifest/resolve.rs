//! Resolving image sources to OCI image layout directories on disk.
//!
//! Validation only checks how a source is written; this module checks that what it names
//! exists, so `berthctl validate` and the image build catch a missing layout before boot.
//! Errors point at the image's `source` value in the manifest.

use std::path::Path;

use super::error::{ErrorKind, ManifestError};
use super::{ImageSource, Manifest, ResolvedImage};

/// The files an OCI image layout directory must contain (image-layout spec).
pub const LAYOUT_FILES: [&str; 2] = ["oci-layout", "index.json"];

/// Resolves every declared image (used by a container or not, so a broken declaration is
/// caught before it is needed), in name order.
pub(super) fn resolve_images(
    manifest: &Manifest,
    base_dir: &Path,
) -> Result<Vec<ResolvedImage>, ManifestError> {
    let mut resolved = Vec::with_capacity(manifest.images.len());
    for (name, decl) in &manifest.images {
        let ImageSource::OciLayout(relative) = &decl.source;
        let layout = base_dir.join(relative);
        if let Some(problem) = layout_problem(&layout) {
            let message = format!(
                "image {name:?}: no OCI image layout at {} ({problem}; expected a directory with oci-layout and index.json); create it from a directory tree with `berth-image oci --rootfs DIR --out {}`, or fix the path",
                layout.display(),
                layout.display(),
            );
            return Err(manifest
                .error_at(
                    &format!("images.{name}.source"),
                    ErrorKind::ImageNotFound,
                    message,
                )
                .with_hint(format!(
                    "the path after `oci-layout:` is relative to the manifest's directory ({})",
                    display_dir(base_dir)
                )));
        }
        resolved.push(ResolvedImage {
            name: name.clone(),
            layout,
        });
    }
    Ok(resolved)
}

/// What is wrong with `dir` as an OCI image layout, if anything.
fn layout_problem(dir: &Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some("it does not exist".into())
        }
        Err(e) => return Some(format!("cannot access it: {e}")),
        Ok(meta) if !meta.is_dir() => return Some("it is not a directory".into()),
        Ok(_) => {}
    }
    let missing: Vec<&str> = LAYOUT_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    (!missing.is_empty()).then(|| format!("the directory has no {}", missing.join(" and no ")))
}

fn display_dir(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        dir.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const TEXT: &str =
        "version = 1\n\n[images]\nbusybox = { source = \"oci-layout:images/busybox\" }\n";

    fn manifest() -> Manifest {
        Manifest::parse(TEXT, Path::new("demo.toml")).unwrap()
    }

    fn make_layout(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(
            dir.join("index.json"),
            r#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
    }

    #[test]
    fn resolves_layout_directories_below_the_base() {
        let tmp = tempfile::tempdir().unwrap();
        make_layout(&tmp.path().join("images/busybox"));
        let resolved = manifest().resolve_images(tmp.path()).unwrap();
        assert_eq!(
            resolved,
            vec![ResolvedImage {
                name: "busybox".into(),
                layout: tmp.path().join("images/busybox")
            }]
        );
    }

    #[test]
    fn missing_layout_points_at_the_source_value() {
        let tmp = tempfile::tempdir().unwrap();
        let err = manifest().resolve_images(tmp.path()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ImageNotFound);
        assert_eq!(
            (err.file.as_path(), err.line, err.column),
            (Path::new("demo.toml"), 4, 22)
        );
        assert!(
            err.message
                .starts_with("image \"busybox\": no OCI image layout at "),
            "{}",
            err.message
        );
        assert!(err.message.contains("it does not exist"), "{}", err.message);
    }

    #[test]
    fn incomplete_layout_says_which_file_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("images/busybox");
        make_layout(&dir);
        fs::remove_file(dir.join("index.json")).unwrap();
        let err = manifest().resolve_images(tmp.path()).unwrap_err();
        assert!(
            err.message.contains("the directory has no index.json"),
            "{}",
            err.message
        );

        fs::remove_dir_all(&dir).unwrap();
        fs::write(&dir, "not a dir").unwrap();
        let err = manifest().resolve_images(tmp.path()).unwrap_err();
        assert!(
            err.message.contains("it is not a directory"),
            "{}",
            err.message
        );
    }
}
