//! Where the host manifest comes from at boot.
//!
//! A berth image carries a manifest, but VMs and clouds configure an instance from outside:
//! the kernel command line, QEMU's fw_cfg, a config drive, cloud metadata. This module asks
//! each of them in a fixed order and takes the first that has a manifest:
//!
//! 1. kernel command line (`berth.manifest.inline=BASE64`, `berth.manifest=PATH-ON-DRIVE`)
//! 2. QEMU fw_cfg `opt/berth/manifest`
//! 3. a config drive labelled `cidata` (NoCloud `user-data`) or `BERTH` (`manifest.toml`)
//! 4. EC2-style cloud metadata (IMDSv2 `user-data`)
//! 5. the manifest last applied (kept on the state partition), then the one built into the
//!    image.
//!
//! A source that has something but whose manifest is invalid (or unreadable) is an error on the
//! console with its `file:line:column`, and boot falls back to the last good manifest (step
//! 5): never to nothing, and never to a lower-priority source the operator did not mean. The
//! chosen manifest is saved on the state partition as the new last good one.
//!
//! Each source is a [`Source`]; their side effects (files, block devices, mounts, HTTP) sit
//! behind small traits so the order and the fallback are unit-tested with fakes.

pub mod boot;
pub mod cmdline;
pub mod drive;
pub mod fw_cfg;
pub mod imds;
pub mod label;
pub mod last_good;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, ManifestError, MAX_MANIFEST_BYTES};

pub use cmdline::BootParams;
pub use last_good::LastGood;

/// Why a source that exists could not deliver its manifest.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the source failed.
    #[error("{origin}: cannot read the manifest")]
    Read {
        /// Where it was read from.
        origin: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source is present but its content is not usable as a manifest file.
    #[error("{origin}: {message}")]
    Unusable {
        /// Where it was read from.
        origin: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The manifest it holds is invalid.
    #[error(transparent)]
    Invalid(Box<ManifestError>),
    /// Nothing could be loaded at all: no source had a valid manifest.
    #[error("no valid manifest: {0}")]
    NoManifest(String),
}

/// A manifest file a source found, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where it came from, used as the file name in errors (e.g. `fw_cfg:opt/berth/manifest`).
    pub origin: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// One place a manifest may come from.
pub trait Source {
    /// Short name logged as `source=...` (`cmdline`, `fw_cfg`, `config-drive`, `imds`,
    /// `state`, `image`).
    fn kind(&self) -> &'static str;
    /// `Ok(None)`: this source is absent (ask the next one); `Ok(Some)`: it holds a file;
    /// `Err`: it is present but broken.
    fn fetch(&mut self) -> Result<Option<Found>, SourceError>;
}

/// The manifest boot will apply and where it came from.
#[derive(Debug)]
pub struct Selection {
    /// The validated manifest (its images checked below the images directory).
    pub manifest: Manifest,
    /// The file it was read from.
    pub found: Found,
    /// Its source's [`Source::kind`].
    pub kind: &'static str,
    /// The source whose manifest was refused, when this one is a fallback.
    pub fallback_from: Option<&'static str>,
}

/// What happened while choosing, for the console (errors as they occur).
pub trait Report {
    /// A source was present but refused.
    fn refused(&mut self, kind: &'static str, error: &SourceError);
}

/// Parse and validate a found file, checking its images exist below `images_dir`.
/// Compressed user-data (gzip, as EC2 and cloud-init allow) is unpacked first; the returned
/// file holds the plain text.
pub fn check(found: Found, images_dir: &Path) -> Result<(Manifest, Found), SourceError> {
    let found = gunzip_if_compressed(found)?;
    let file = PathBuf::from(&found.origin);
    let manifest = Manifest::parse_bytes(&found.bytes, &file)
        .map_err(|e| SourceError::Invalid(Box::new(e)))?;
    manifest
        .resolve_images(images_dir)
        .map_err(|e| SourceError::Invalid(Box::new(e)))?;
    Ok((manifest, found))
}

fn gunzip_if_compressed(found: Found) -> Result<Found, SourceError> {
    if !found.bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(found);
    }
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(found.bytes.as_slice())
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SourceError::Read {
            origin: found.origin.clone(),
            source,
        })?;
    Ok(Found {
        origin: found.origin,
        bytes,
    })
}

/// Choose the manifest: the first `primary` source that has one wins; when it is refused, or
/// no primary source has one, the first valid `fallback` (last applied, then built in).
pub fn select(
    primary: &mut [Box<dyn Source + '_>],
    fallback: &mut [Box<dyn Source + '_>],
    images_dir: &Path,
    report: &mut dyn Report,
) -> Result<Selection, SourceError> {
    let mut fallback_from = None;
    for source in primary.iter_mut() {
        let kind = source.kind();
        match source.fetch().and_then(|found| match found {
            Some(found) => check(found, images_dir).map(Some),
            None => Ok(None),
        }) {
            Ok(None) => continue,
            Ok(Some((manifest, found))) => {
                return Ok(Selection {
                    manifest,
                    found,
                    kind,
                    fallback_from: None,
                })
            }
            Err(e) => {
                report.refused(kind, &e);
                fallback_from = Some(kind);
                break;
            }
        }
    }
    let mut last_error = None;
    for source in fallback.iter_mut() {
        let kind = source.kind();
        let result = source.fetch().and_then(|found| match found {
            Some(found) => check(found, images_dir).map(Some),
            None => Ok(None),
        });
        match result {
            Ok(None) => continue,
            Ok(Some((manifest, found))) => {
                return Ok(Selection {
                    manifest,
                    found,
                    kind,
                    fallback_from,
                })
            }
            Err(e) => {
                report.refused(kind, &e);
                last_error = Some(e);
            }
        }
    }
    Err(match last_error {
        Some(e) => e,
        None => SourceError::NoManifest(
            "no source has a manifest and the image has none built in".into(),
        ),
    })
}

/// A file on the local file system as a source (the built-in manifest, the last applied one).
#[derive(Debug, Clone)]
pub struct FileSource {
    kind: &'static str,
    path: PathBuf,
}

impl FileSource {
    /// `path` reported as source `kind`.
    pub fn new(kind: &'static str, path: impl Into<PathBuf>) -> Self {
        FileSource {
            kind,
            path: path.into(),
        }
    }
}

impl Source for FileSource {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn fetch(&mut self) -> Result<Option<Found>, SourceError> {
        let origin = self.path.display().to_string();
        read_limited(&self.path, &origin).map(|bytes| bytes.map(|bytes| Found { origin, bytes }))
    }
}

/// Read a manifest file through [`crate::manifest::read_bounded`] (refused by its size when
/// over [`MAX_MANIFEST_BYTES`]); `None` when it does not exist.
pub(crate) fn read_limited(path: &Path, origin: &str) -> Result<Option<Vec<u8>>, SourceError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SourceError::Read {
                origin: origin.to_owned(),
                source,
            })
        }
    };
    // The same size check as `berthctl validate`: a huge file is refused by its size,
    // before it is read.
    crate::manifest::read_bounded(file, Path::new(origin))
        .map(Some)
        .map_err(|e| SourceError::Invalid(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that returns a fixed answer and counts how often it was asked.
    struct Fake {
        kind: &'static str,
        answer: Option<Result<&'static str, &'static str>>,
        asked: std::rc::Rc<std::cell::Cell<u32>>,
    }

    impl Source for Fake {
        fn kind(&self) -> &'static str {
            self.kind
        }
        fn fetch(&mut self) -> Result<Option<Found>, SourceError> {
            self.asked.set(self.asked.get() + 1);
            match self.answer {
                None => Ok(None),
                Some(Ok(text)) => Ok(Some(Found {
                    origin: format!("{}:test", self.kind),
                    bytes: text.as_bytes().to_vec(),
                })),
                Some(Err(why)) => Err(SourceError::Unusable {
                    origin: format!("{}:test", self.kind),
                    message: why.into(),
                }),
            }
        }
    }

    #[derive(Default)]
    struct Recorded(Vec<String>);

    impl Report for Recorded {
        fn refused(&mut self, kind: &'static str, error: &SourceError) {
            self.0.push(format!("{kind}: {error}"));
        }
    }

    const GOOD: &str = "version = 1\n[host]\nhostname = \"good\"\n";
    const OTHER: &str = "version = 1\n[host]\nhostname = \"other\"\n";
    const BAD: &str = "version = 1\n[host]\nhostnme = \"typo\"\n";

    type Counter = std::rc::Rc<std::cell::Cell<u32>>;

    fn fake(
        kind: &'static str,
        answer: Option<Result<&'static str, &'static str>>,
    ) -> (Box<dyn Source>, Counter) {
        let asked = Counter::default();
        (
            Box::new(Fake {
                kind,
                answer,
                asked: asked.clone(),
            }),
            asked,
        )
    }

    fn hostname(s: &Selection) -> &str {
        &s.manifest.host.hostname
    }

    #[test]
    fn first_source_with_a_manifest_wins_and_later_ones_are_not_asked() {
        let (cmdline, _) = fake("cmdline", None);
        let (fw_cfg, _) = fake("fw_cfg", Some(Ok(GOOD)));
        let (drive, drive_asked) = fake("config-drive", Some(Ok(OTHER)));
        let (image, image_asked) = fake("image", Some(Ok(OTHER)));
        let mut report = Recorded::default();
        let chosen = select(
            &mut [cmdline, fw_cfg, drive],
            &mut [image],
            Path::new("/nonexistent"),
            &mut report,
        )
        .unwrap();
        assert_eq!(chosen.kind, "fw_cfg");
        assert_eq!(hostname(&chosen), "good");
        assert_eq!(chosen.fallback_from, None);
        assert_eq!(drive_asked.get(), 0);
        assert_eq!(image_asked.get(), 0);
        assert!(report.0.is_empty());
    }

    #[test]
    fn no_source_uses_the_last_applied_before_the_built_in() {
        let (fw_cfg, _) = fake("fw_cfg", None);
        let (state, _) = fake("state", Some(Ok(OTHER)));
        let (image, image_asked) = fake("image", Some(Ok(GOOD)));
        let chosen = select(
            &mut [fw_cfg],
            &mut [state, image],
            Path::new("/nonexistent"),
            &mut Recorded::default(),
        )
        .unwrap();
        assert_eq!(chosen.kind, "state");
        assert_eq!(hostname(&chosen), "other");
        assert_eq!(image_asked.get(), 0);
    }

    #[test]
    fn invalid_manifest_falls_back_to_last_good_not_to_the_next_source() {
        let (drive, _) = fake("config-drive", Some(Ok(BAD)));
        let (imds, imds_asked) = fake("imds", Some(Ok(OTHER)));
        let (state, _) = fake("state", None);
        let (image, _) = fake("image", Some(Ok(GOOD)));
        let mut report = Recorded::default();
        let chosen = select(
            &mut [drive, imds],
            &mut [state, image],
            Path::new("/nonexistent"),
            &mut report,
        )
        .unwrap();
        assert_eq!(chosen.kind, "image");
        assert_eq!(chosen.fallback_from, Some("config-drive"));
        assert_eq!(hostname(&chosen), "good");
        assert_eq!(imds_asked.get(), 0);
        assert_eq!(report.0.len(), 1);
        // Located in the source's own name: line 3, column 1 (the unknown key).
        assert!(
            report.0[0].starts_with("config-drive: config-drive:test:3:1: "),
            "{:?}",
            report.0
        );
    }

    #[test]
    fn broken_source_falls_back_with_its_error() {
        let (fw_cfg, _) = fake("fw_cfg", Some(Err("unreadable")));
        let (image, _) = fake("image", Some(Ok(GOOD)));
        let mut report = Recorded::default();
        let chosen = select(&mut [fw_cfg], &mut [image], Path::new("/x"), &mut report).unwrap();
        assert_eq!(chosen.fallback_from, Some("fw_cfg"));
        assert_eq!(report.0, ["fw_cfg: fw_cfg:test: unreadable"]);
    }

    #[test]
    fn invalid_last_applied_is_reported_and_skipped_for_the_built_in() {
        let (state, _) = fake("state", Some(Ok(BAD)));
        let (image, _) = fake("image", Some(Ok(GOOD)));
        let mut report = Recorded::default();
        let chosen = select(&mut [], &mut [state, image], Path::new("/x"), &mut report).unwrap();
        assert_eq!(chosen.kind, "image");
        assert_eq!(report.0.len(), 1);
    }

    #[test]
    fn nothing_valid_anywhere_is_an_error_carrying_the_last_problem() {
        let (image, _) = fake("image", Some(Ok(BAD)));
        let mut report = Recorded::default();
        let err = select(&mut [], &mut [image], Path::new("/x"), &mut report).unwrap_err();
        assert!(err.to_string().starts_with("image:test:3:1: "), "{err}");
        let (image, _) = fake("image", None);
        let err = select(&mut [], &mut [image], Path::new("/x"), &mut report).unwrap_err();
        assert!(matches!(err, SourceError::NoManifest(_)), "{err}");
    }

    #[test]
    fn missing_image_layouts_make_a_manifest_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let found = Found {
            origin: "fw_cfg:opt/berth/manifest".into(),
            bytes: b"version = 1\n[images]\nweb = { source = \"oci-layout:images/web\" }\n"
                .to_vec(),
        };
        let err = check(found, dir.path()).unwrap_err();
        assert!(
            err.to_string().starts_with("fw_cfg:opt/berth/manifest:3:"),
            "{err}"
        );
    }

    #[test]
    fn gzip_user_data_is_unpacked() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(GOOD.as_bytes()).unwrap();
        let found = Found {
            origin: "imds:user-data".into(),
            bytes: gz.finish().unwrap(),
        };
        let (manifest, plain) = check(found, Path::new("/x")).unwrap();
        assert_eq!(manifest.host.hostname, "good");
        assert_eq!(plain.bytes, GOOD.as_bytes());
    }

    #[test]
    fn file_source_reads_a_file_and_is_absent_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.toml");
        let mut source = FileSource::new("state", &path);
        assert_eq!(source.fetch().unwrap(), None);
        std::fs::write(&path, GOOD).unwrap();
        let found = source.fetch().unwrap().unwrap();
        assert_eq!(found.bytes, GOOD.as_bytes());
        assert_eq!(found.origin, path.display().to_string());
    }
}
