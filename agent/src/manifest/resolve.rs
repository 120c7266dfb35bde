//! Resolving image sources to OCI image layout directories on disk.
//!
//! Validation only checks how a source is written; this module checks that what it names
//! exists, so `berthctl validate` and the image build catch a missing layout before boot.
//! Errors point at the image's `source` value in the manifest.

use std::path::Path;

use super::error::{ErrorKind, ManifestError};
use super::{ImageFormat, Manifest, ResolvedImage};

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
        // Registry images are pulled, not read from disk.
        let (Some(format), Some(path)) = (decl.source.format(), decl.source.path()) else {
            continue;
        };
        let layout = base_dir.join(path);
        let problem = if format.is_directory() {
            layout_problem(&layout)
        } else {
            archive_problem(&layout)
        };
        if let Some(problem) = problem {
            let message = if format.is_directory() {
                format!(
                    "image {name:?}: no OCI image layout at {} ({problem}; expected a directory with oci-layout and index.json); create it from a directory tree with `berth-image oci --rootfs DIR --out {}`, or fix the path",
                    layout.display(),
                    layout.display(),
                )
            } else {
                format!(
                    "image {name:?}: no {} file at {} ({problem}); {}, or fix the path",
                    format.scheme(),
                    layout.display(),
                    if format == ImageFormat::DockerArchive {
                        "write it with `docker save -o FILE IMAGE`"
                    } else {
                        "write it with e.g. `skopeo copy docker://IMAGE oci-archive:FILE`"
                    }
                )
            };
            return Err(manifest
                .error_at(
                    &format!("images.{name}.source"),
                    ErrorKind::ImageNotFound,
                    message,
                )
                .with_hint(format!(
                    "the path after `{}:` is relative to the manifest's directory ({})",
                    format.scheme(),
                    display_dir(base_dir)
                )));
        }
        resolved.push(ResolvedImage {
            name: name.clone(),
            layout,
            format,
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

/// What is wrong with `file` as an image archive, if anything.
fn archive_problem(file: &Path) -> Option<String> {
    match std::fs::metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("it does not exist".into()),
        Err(e) => Some(format!("cannot access it: {e}")),
        Ok(meta) if !meta.is_file() => {
            Some("it is not a regular file (an archive is a tar file)".into())
        }
        Ok(_) => None,
    }
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
                layout: tmp.path().join("images/busybox"),
                format: ImageFormat::OciLayout,
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
    fn archives_must_be_files() {
        let tmp = tempfile::tempdir().unwrap();
        let text = "version = 1\n[images]\nweb = { source = \"docker-archive:web.tar\" }\napp = { source = \"oci-archive:app.tar\" }\n";
        let m = Manifest::parse(text, Path::new("a.toml")).unwrap();
        let err = m.resolve_images(tmp.path()).unwrap_err();
        // Name order: "app" first.
        assert_eq!((err.line, err.column), (4, 18));
        assert!(
            err.message.contains("no oci-archive file at"),
            "{}",
            err.message
        );
        fs::create_dir(tmp.path().join("app.tar")).unwrap();
        let err = m.resolve_images(tmp.path()).unwrap_err();
        assert!(
            err.message.contains("not a regular file"),
            "{}",
            err.message
        );
        fs::remove_dir(tmp.path().join("app.tar")).unwrap();
        fs::write(tmp.path().join("app.tar"), "x").unwrap();
        fs::write(tmp.path().join("web.tar"), "x").unwrap();
        let resolved = m.resolve_images(tmp.path()).unwrap();
        assert_eq!(resolved[1].format, ImageFormat::DockerArchive);
        assert_eq!(resolved[1].layout, tmp.path().join("web.tar"));
        assert_eq!(resolved[0].format, ImageFormat::OciArchive);
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
