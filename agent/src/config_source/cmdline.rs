//! Source 1: the kernel command line.
//!
//! `berth.manifest.inline=BASE64` carries a whole (small) manifest; `berth.manifest=PATH`
//! names a file on the config drive (so one drive can hold manifests for several hosts).
//! `berth.imds=on|off` forces cloud metadata on or off (see [`super::imds`]).

use std::path::PathBuf;

use base64::Engine;

use super::drive::{self, Drives};
use super::{Found, Source, SourceError};

/// The berth settings of the kernel command line that concern the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `berth.manifest=PATH`: a file on the config drive.
    pub manifest: Option<String>,
    /// `berth.manifest.inline=BASE64`: the manifest itself.
    pub inline: Option<String>,
    /// `berth.imds=on|off`: ask cloud metadata whatever the platform says (`None`: decide
    /// from the platform).
    pub imds: Option<bool>,
}

impl BootParams {
    /// Parse the text of `/proc/cmdline`. Values may be double-quoted; the last occurrence of
    /// a key wins, as with the kernel's own parameters. Returns a warning per unusable value.
    pub fn parse(cmdline: &str) -> (BootParams, Vec<String>) {
        let mut params = BootParams::default();
        let mut warnings = Vec::new();
        for (key, value) in split(cmdline) {
            match (key.as_str(), value) {
                ("berth.manifest", Some(v)) => params.manifest = Some(v),
                ("berth.manifest.inline", Some(v)) => params.inline = Some(v),
                ("berth.imds", Some(v)) => match v.as_str() {
                    "on" | "1" | "yes" => params.imds = Some(true),
                    "off" | "0" | "no" => params.imds = Some(false),
                    _ => warnings.push(format!(
                        "berth.imds={v:?} is neither on nor off, deciding from the platform"
                    )),
                },
                ("berth.manifest" | "berth.manifest.inline" | "berth.imds", None) => {
                    warnings.push(format!("{key} needs a value ({key}=...), ignoring it"));
                }
                _ => {}
            }
        }
        (params, warnings)
    }
}

/// `key[=value]` words of a command line; double quotes group spaces and are removed.
fn split(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (w, None),
        })
        .collect()
}

/// Source 1: `berth.manifest.inline=` or `berth.manifest=` (inline wins when both are set).
#[derive(Debug)]
pub struct CmdlineSource<D> {
    params: BootParams,
    drives: D,
}

impl<D: Drives> CmdlineSource<D> {
    /// The manifest `params` point at; `drives` to read `berth.manifest=PATH` from.
    pub fn new(params: BootParams, drives: D) -> Self {
        CmdlineSource { params, drives }
    }
}

impl<D: Drives> Source for CmdlineSource<D> {
    fn kind(&self) -> &'static str {
        "cmdline"
    }

    fn fetch(&mut self) -> Result<Option<Found>, SourceError> {
        if let Some(inline) = &self.params.inline {
            let origin = "cmdline:berth.manifest.inline".to_owned();
            return base64::engine::general_purpose::STANDARD
                .decode(inline.trim())
                .map(|bytes| Some(Found {
                    origin: origin.clone(),
                    bytes,
                }))
                .map_err(|e| SourceError::Unusable {
                    origin,
                    message: format!(
                        "not base64 ({e}); write the manifest as `berth.manifest.inline=$(base64 -w0 FILE)`"
                    ),
                });
        }
        let Some(path) = &self.params.manifest else {
            return Ok(None);
        };
        let origin = format!("cmdline:berth.manifest={path}");
        let Some(file) = drive::drive_path(path) else {
            return Err(SourceError::Unusable {
                origin,
                message: "not a file path on the config drive (it must name a file and may not contain `..`), e.g. berth.manifest=/hosts/web.toml".into(),
            });
        };
        let Some(found_drive) = drive::find(&mut self.drives) else {
            return Err(SourceError::Unusable {
                origin,
                message: "names a file on a config drive, but no drive is labelled cidata or BERTH; attach one (vfat or ISO9660) holding the file".into(),
            });
        };
        match drive::read(&mut self.drives, &found_drive, &file)? {
            Some(found) => Ok(Some(found)),
            None => Err(SourceError::Unusable {
                origin: found_drive.origin(&file),
                message: format!(
                    "berth.manifest={path} names this file but the config drive has no such file"
                ),
            }),
        }
    }
}

/// Where the running kernel's command line is.
pub fn proc_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_source::drive::tests::FakeDrives;
    use crate::config_source::label::FsType;

    #[test]
    fn parses_the_berth_keys_and_ignores_the_rest() {
        let (p, w) = BootParams::parse(
            "console=ttyS0 berth.manifest=\"/hosts/a b.toml\" berth.imds=off quiet berth.manifest.inline=dmVyc2lvbiA9IDEK",
        );
        assert_eq!(p.manifest.as_deref(), Some("/hosts/a b.toml"));
        assert_eq!(p.inline.as_deref(), Some("dmVyc2lvbiA9IDEK"));
        assert_eq!(p.imds, Some(false));
        assert!(w.is_empty());
        let (p, w) = BootParams::parse("berth.imds=maybe berth.manifest");
        assert_eq!(p, BootParams::default());
        assert_eq!(w.len(), 2);
    }

    fn source(cmdline: &str, drives: FakeDrives) -> CmdlineSource<FakeDrives> {
        CmdlineSource::new(BootParams::parse(cmdline).0, drives)
    }

    #[test]
    fn inline_manifest_is_base64_decoded() {
        let mut s = source(
            "berth.manifest.inline=dmVyc2lvbiA9IDEK berth.manifest=/x",
            FakeDrives::default(),
        );
        let found = s.fetch().unwrap().unwrap();
        assert_eq!(found.bytes, b"version = 1\n");
        assert_eq!(found.origin, "cmdline:berth.manifest.inline");
        let err = source("berth.manifest.inline=!!!", FakeDrives::default())
            .fetch()
            .unwrap_err();
        assert!(err.to_string().contains("base64 -w0"), "{err}");
    }

    #[test]
    fn path_is_read_from_the_config_drive() {
        let drives = FakeDrives::with("BERTH", FsType::Vfat, &[("hosts/web.toml", "v")]);
        let found = source("berth.manifest=/hosts/web.toml", drives)
            .fetch()
            .unwrap()
            .unwrap();
        assert_eq!(found.origin, "BERTH:/dev/vdb:hosts/web.toml");
        assert_eq!(found.bytes, b"v");
    }

    #[test]
    fn path_without_drive_or_file_is_an_error_and_nothing_set_is_absent() {
        let err = source("berth.manifest=/a.toml", FakeDrives::default())
            .fetch()
            .unwrap_err();
        assert!(err.to_string().contains("no drive is labelled"), "{err}");
        let drives = FakeDrives::with("cidata", FsType::Vfat, &[]);
        let err = source("berth.manifest=a.toml", drives).fetch().unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        let err = source("berth.manifest=../a", FakeDrives::default())
            .fetch()
            .unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
        assert_eq!(
            source("console=ttyS0", FakeDrives::default())
                .fetch()
                .unwrap(),
            None
        );
    }
}
