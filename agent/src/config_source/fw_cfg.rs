//! Source 2: QEMU's fw_cfg file `opt/berth/manifest` (`qemu-system-x86_64 -fw_cfg
//! name=opt/berth/manifest,file=FILE`, what `qemu/boot --manifest FILE` passes).
//!
//! The kernel's `qemu_fw_cfg` driver (CONFIG_FW_CFG_SYSFS) shows each fw_cfg file under
//! `/sys/firmware/qemu_fw_cfg/by_name/NAME/raw`; outside QEMU the directory does not exist
//! and the source is absent.

use std::path::PathBuf;

use super::{read_limited, Found, Source, SourceError};

/// The fw_cfg file name berth reads.
pub const NAME: &str = "opt/berth/manifest";

/// Source 2: the fw_cfg file [`NAME`].
#[derive(Debug, Clone)]
pub struct FwCfgSource {
    by_name: PathBuf,
}

impl Default for FwCfgSource {
    fn default() -> Self {
        FwCfgSource::new("/sys/firmware/qemu_fw_cfg/by_name")
    }
}

impl FwCfgSource {
    /// Reads fw_cfg files below `by_name` (the sysfs `by_name` directory).
    pub fn new(by_name: impl Into<PathBuf>) -> Self {
        FwCfgSource {
            by_name: by_name.into(),
        }
    }
}

impl Source for FwCfgSource {
    fn kind(&self) -> &'static str {
        "fw_cfg"
    }

    fn fetch(&mut self) -> Result<Option<Found>, SourceError> {
        let origin = format!("fw_cfg:{NAME}");
        let path = self.by_name.join(NAME).join("raw");
        Ok(read_limited(&path, &origin)?.map(|bytes| Found { origin, bytes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_raw_file_and_is_absent_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = FwCfgSource::new(dir.path());
        assert_eq!(source.fetch().unwrap(), None);
        let entry = dir.path().join("opt/berth/manifest");
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("raw"), "version = 1\n").unwrap();
        let found = source.fetch().unwrap().unwrap();
        assert_eq!(found.origin, "fw_cfg:opt/berth/manifest");
        assert_eq!(found.bytes, b"version = 1\n");
    }
}
