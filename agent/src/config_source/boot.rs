//! The boot-time wiring: the real sources in their order, console lines for each decision,
//! and the chosen manifest saved as the last good one.

use std::path::{Path, PathBuf};

use super::cmdline::{self, BootParams, CmdlineSource};
use super::drive::{DriveSource, HostDrives};
use super::fw_cfg::FwCfgSource;
use super::imds::{Dmi, ImdsSource};
use super::{select, FileSource, LastGood, Report, Selection, Source, SourceError};
use crate::console::{self, Event};
use crate::runtime::init::error_chain;

/// Where boot looks besides the outside sources.
#[derive(Debug, Clone)]
pub struct BootPaths {
    /// The manifest built into the image (`/etc/berth/manifest.toml`); image sources of every
    /// manifest are relative to its directory, where the image's layouts are.
    pub builtin: PathBuf,
    /// The state directory holding the last good manifest.
    pub state_dir: PathBuf,
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// DMI strings (`/sys/class/dmi/id`).
    pub dmi: PathBuf,
    /// Whether to ask the outside sources and keep a last good manifest. Off, only the
    /// built-in manifest is read (a berthd run by hand or by tests, not as the host's agent:
    /// it must not read the machine's drives or metadata).
    pub outside: bool,
}

impl BootPaths {
    /// The paths of a berth host, with the built-in manifest and state directory given.
    pub fn host(builtin: PathBuf, state_dir: PathBuf, outside: bool) -> Self {
        BootPaths {
            builtin,
            state_dir,
            cmdline: cmdline::proc_cmdline(),
            dmi: PathBuf::from("/sys/class/dmi/id"),
            outside,
        }
    }

    /// The directory image sources are relative to.
    pub fn images_dir(&self) -> &Path {
        self.builtin
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }
}

/// Whether a source in use is reached over the network (cloud metadata), so the host network
/// must be configured before the manifest is chosen.
pub fn needs_network(paths: &BootPaths) -> bool {
    if !paths.outside {
        return false;
    }
    let cmdline = std::fs::read_to_string(&paths.cmdline).unwrap_or_default();
    let (params, _) = BootParams::parse(&cmdline);
    ImdsSource::enabled(params.imds, &Dmi::read(&paths.dmi))
}

struct ConsoleReport;

impl Report for ConsoleReport {
    fn refused(&mut self, kind: &'static str, error: &SourceError) {
        console::emit(&Event::SourceRefused {
            source: kind,
            error: error_chain(error),
        });
        if let SourceError::Invalid(e) = error {
            if let Some(hint) = &e.hint {
                console::emit(&Event::Hint { what: hint.clone() });
            }
        }
    }
}

/// Choose the host manifest from the first source that has one, print where it came from,
/// and save it as the last good one. `None` when no valid manifest exists anywhere (the
/// reasons are already on the console).
pub fn load(paths: &BootPaths) -> Option<Selection> {
    if !paths.outside {
        // Not the host's agent: no outside source, nothing saved; an applied manifest
        // (`berthctl apply` writes the last good one) still wins over the built-in one.
        let last_good = LastGood::in_state_dir(&paths.state_dir);
        let mut local: Vec<Box<dyn Source>> = vec![
            Box::new(FileSource::new("state", last_good.path())),
            Box::new(FileSource::new("image", &paths.builtin)),
        ];
        return announce(select(
            &mut [],
            &mut local,
            paths.images_dir(),
            &mut ConsoleReport,
        ));
    }
    let cmdline = std::fs::read_to_string(&paths.cmdline).unwrap_or_default();
    let (params, warnings) = BootParams::parse(&cmdline);
    for what in warnings {
        console::emit(&Event::Warning { what });
    }
    let imds = ImdsSource::enabled(params.imds, &Dmi::read(&paths.dmi));
    let last_good = LastGood::in_state_dir(&paths.state_dir);
    let mut primary: Vec<Box<dyn Source>> = vec![
        Box::new(CmdlineSource::new(params, HostDrives::default())),
        Box::new(FwCfgSource::default()),
        Box::new(DriveSource::new(HostDrives::default())),
        Box::new(ImdsSource::new(imds)),
    ];
    let mut fallback: Vec<Box<dyn Source>> = vec![
        Box::new(FileSource::new("state", last_good.path())),
        Box::new(FileSource::new("image", &paths.builtin)),
    ];
    let selection = announce(select(
        &mut primary,
        &mut fallback,
        paths.images_dir(),
        &mut ConsoleReport,
    ))?;
    if selection.kind != "state" {
        if let Err(e) = last_good.save(&selection.found.bytes) {
            console::emit(&Event::Warning {
                what: format!("{}; the next boot may not find it", error_chain(&e)),
            });
        }
    }
    Some(selection)
}

/// Print where the manifest came from, or why there is none.
fn announce(result: Result<Selection, SourceError>) -> Option<Selection> {
    let selection = match result {
        Ok(selection) => selection,
        Err(SourceError::NoManifest(why)) => {
            console::emit(&Event::Error { what: why });
            return None;
        }
        // Already reported as the last fallback's refusal.
        Err(_) => return None,
    };
    console::emit(&Event::ManifestSource {
        source: selection.kind,
        origin: &selection.found.origin,
        fallback_from: selection.fallback_from,
    });
    Some(selection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_outside_sources_only_local_manifests_are_read_and_nothing_saved() {
        let dir = tempfile::tempdir().unwrap();
        let builtin = dir.path().join("etc/manifest.toml");
        std::fs::create_dir_all(builtin.parent().unwrap()).unwrap();
        std::fs::write(&builtin, "version = 1\n[host]\nhostname = \"built-in\"\n").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let paths = BootPaths::host(builtin.clone(), state.clone(), false);
        assert_eq!(paths.images_dir(), dir.path().join("etc"));
        let selection = load(&paths).unwrap();
        assert_eq!(selection.kind, "image");
        assert_eq!(selection.manifest.host.hostname, "built-in");
        assert!(!state.join("manifest.toml").exists(), "nothing saved");
        // An applied manifest (the last good one) wins over the built-in one.
        std::fs::write(state.join("manifest.toml"), "version = 1\n").unwrap();
        let selection = load(&paths).unwrap();
        assert_eq!(selection.kind, "state");
        std::fs::remove_file(state.join("manifest.toml")).unwrap();
        std::fs::write(&builtin, "version = 1\nbogus = 1\n").unwrap();
        assert!(load(&paths).is_none());
    }
}
