//! `berth-image build`: a bootable kernel + initramfs directory from a host manifest.
//!
//! Everything is checked before anything is written (manifest, images, kernel, binaries),
//! and the output is staged next to `--out` and renamed into place, so a failed build leaves
//! no output and a previous good image untouched.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_agent::manifest::{ImageSource, Manifest, ManifestError};

use crate::binaries::{self, BinaryError, Overrides};
use crate::cli::Format;
use crate::disk::{self, DiskError, DiskInputs};
use crate::initramfs::{self, ImageInput, InitramfsError, Inputs};
use crate::progress::Progress;
use crate::staging::{self, Staging, StagingError};

/// The kernel's name in the output directory.
pub const KERNEL_FILE: &str = "vmlinuz";
/// The initramfs's name in the output directory.
pub const INITRAMFS_FILE: &str = "initramfs.img";
/// The raw disk image's name in the output directory.
pub const RAW_FILE: &str = "disk.raw";
/// The qcow2 disk image's name in the output directory.
pub const QCOW2_FILE: &str = "disk.qcow2";
/// Everything `build` writes (an existing output holding only these may be replaced).
pub const OUTPUTS: [&str; 4] = [KERNEL_FILE, INITRAMFS_FILE, RAW_FILE, QCOW2_FILE];

/// Errors of `berth-image build`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The manifest is invalid or names a missing image (already `file:line:column: ...`).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A `registry:` image could not be pulled at build time.
    #[error("image {name:?}: pulling it at build time failed (pass --no-pull to leave it to berthd at boot)")]
    Pull {
        /// The `[images]` key.
        name: String,
        /// Why.
        #[source]
        source: Box<berth_agent::registry::PullError>,
    },
    /// No `--kernel`.
    #[error(
        "no kernel given: pass --kernel PATH to a bzImage (e.g. the one the kernel-config \
         build produces at arch/x86/boot/bzImage)"
    )]
    NoKernel,
    /// The kernel file is unusable.
    #[error("--kernel {}: {reason}", path.display())]
    BadKernel {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The binaries are missing or dynamic.
    #[error(transparent)]
    Binaries(#[from] BinaryError),
    /// The initramfs could not be made.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// The output directory could not be prepared or published.
    #[error(transparent)]
    Output(#[from] StagingError),
    /// Copying the kernel failed.
    #[error("cannot copy the kernel {} to {}", from.display(), to.display())]
    CopyKernel {
        /// Source.
        from: PathBuf,
        /// Destination.
        to: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A disk image could not be made.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A scratch directory for the disk image could not be made.
    #[error("cannot create a scratch directory in {}", path.display())]
    Scratch {
        /// Where.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `SOURCE_DATE_EPOCH` does not fit the archive's 32-bit mtime.
    #[error("SOURCE_DATE_EPOCH={0} is after 2106 and does not fit a cpio mtime")]
    Epoch(u64),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The host manifest.
    pub manifest: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// The bzImage.
    pub kernel: Option<PathBuf>,
    /// Binary paths given on the command line.
    pub binaries: Overrides,
    /// Where default binaries are looked for.
    pub roots: Vec<PathBuf>,
    /// `SOURCE_DATE_EPOCH`: entry mtimes and the recorded build time. When unset, mtimes are
    /// 0 and the build time is the current time.
    pub source_date_epoch: Option<u64>,
    /// Output formats and disk image settings.
    pub disk: DiskOptions,
    /// Pull `registry:` images now and ship them in the image (else berthd pulls them at
    /// boot).
    pub pull: bool,
}

/// Which outputs to write and how to make disk images.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// The formats (`initramfs`, `raw`, `qcow2`).
    pub formats: Vec<Format>,
    /// Total disk image size in bytes.
    pub disk_size: u64,
    /// The systemd EFI stub.
    pub efi_stub: PathBuf,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            formats: vec![Format::Initramfs],
            disk_size: disk::DEFAULT_DISK_SIZE,
            efi_stub: PathBuf::from(crate::uki::DEFAULT_STUB),
        }
    }
}

/// A file the build wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its final path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Checks the x86 boot protocol header ("HdrS" at 0x202) so a vmlinux or a random file is
/// caught here rather than as a silent QEMU boot failure.
fn check_kernel(path: &Path) -> Result<(), BuildError> {
    let bad = |reason: String| BuildError::BadKernel {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mut head = Vec::with_capacity(0x206);
    std::fs::File::open(path)
        .and_then(|f| f.take(0x206).read_to_end(&mut head))
        .map_err(|e| bad(format!("cannot read it ({e})")))?;
    if head.starts_with(b"\x7fELF") {
        return Err(bad(
            "this is an uncompressed ELF vmlinux; pass the bzImage (arch/x86/boot/bzImage)".into(),
        ));
    }
    if head.len() < 0x206 || &head[0x202..0x206] != b"HdrS" {
        return Err(bad(
            "not an x86 bzImage (no \"HdrS\" boot header); pass arch/x86/boot/bzImage".into(),
        ));
    }
    Ok(())
}

/// The image directories the manifest names, with the relative paths it writes them as;
/// with `pull_dir`, `registry:` images are pulled into it and ship as `pulled/NAME`, where
/// berthd looks before it pulls.
fn image_inputs(
    manifest: &Manifest,
    base_dir: &Path,
    pull_dir: Option<&Path>,
    progress: &Progress,
) -> Result<Vec<ImageInput>, BuildError> {
    let mut pulled = Vec::new();
    if let Some(dir) = pull_dir {
        for (name, decl) in &manifest.images {
            let ImageSource::Registry(reference) = &decl.source else {
                continue;
            };
            progress.step(&format!("pulling image {name} from {reference}"));
            let options = berth_agent::registry::options_for(manifest, &reference.registry, None);
            let out = dir.join(name);
            berth_agent::registry::pull_to_layout(reference, &options, &out, &mut |_| {}).map_err(
                |source| BuildError::Pull {
                    name: name.clone(),
                    source: Box::new(source),
                },
            )?;
            pulled.push(ImageInput {
                name: name.clone(),
                relative: Path::new(berth_agent::registry::PULLED_DIR).join(name),
                layout: out,
            });
        }
    }
    let resolved = manifest.resolve_images(base_dir)?;
    Ok(resolved
        .into_iter()
        .map(|r| {
            let relative = match manifest.images.get(&r.name).and_then(|d| d.source.path()) {
                Some(path) => path.to_path_buf(),
                None => r
                    .layout
                    .strip_prefix(base_dir)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| r.layout.clone()),
            };
            ImageInput {
                name: r.name,
                relative,
                layout: r.layout,
            }
        })
        .chain(pulled)
        .collect())
}

fn build_info(epoch: Option<u64>) -> String {
    let built = epoch.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    format!(
        "berth_version={}\nbuilt_unix_time={built}\nbuilder=berth-image\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Builds `DIR/vmlinuz` and `DIR/initramfs.img`.
pub fn build(req: &BuildRequest, progress: &Progress) -> Result<Vec<Written>, BuildError> {
    progress.step(&format!("checking {}", req.manifest.display()));
    let manifest = Manifest::load(&req.manifest)?;
    let base_dir = req.manifest.parent().unwrap_or(Path::new(""));
    let pull_dir = tempfile::Builder::new()
        .prefix("berth-pull-")
        .tempdir()
        .map_err(|source| BuildError::Scratch {
            path: std::env::temp_dir(),
            source,
        })?;
    let images = image_inputs(
        &manifest,
        base_dir,
        req.pull.then_some(pull_dir.path()),
        progress,
    )?;
    let kernel = req.kernel.as_deref().ok_or(BuildError::NoKernel)?;
    check_kernel(kernel)?;
    let bins = binaries::locate(&req.binaries, &req.roots)?;
    let mtime = match req.source_date_epoch {
        Some(e) => u32::try_from(e).map_err(|_| BuildError::Epoch(e))?,
        None => 0,
    };
    staging::check_replaceable(&req.out, &OUTPUTS)?;

    let seeds = seed_images(&manifest, base_dir, &images);
    let inputs = Inputs {
        init: bins.init,
        berthd: bins.berthd,
        berthctl: bins.berthctl,
        manifest: req.manifest.clone(),
        images,
        build_info: build_info(req.source_date_epoch),
        ca_bundle: initramfs::host_ca_bundle(),
        mtime,
    };
    let archive = initramfs::assemble(&inputs)?;

    let stage = Staging::new(&req.out)?;
    let formats = &req.disk.formats;
    let want = |f: Format| formats.contains(&f);
    let disks = want(Format::Raw) || want(Format::Qcow2);
    // Without the initramfs format, kernel and initramfs are only inputs of the disk image.
    let scratch = if disks {
        Some(
            tempfile::Builder::new()
                .prefix(".scratch-")
                .tempdir_in(stage.path())
                .map_err(|source| BuildError::Scratch {
                    path: stage.path().to_path_buf(),
                    source,
                })?,
        )
    } else {
        None
    };
    let boot_dir = match (&scratch, want(Format::Initramfs)) {
        (Some(s), false) => s.path().to_path_buf(),
        _ => stage.path().to_path_buf(),
    };
    progress.step(&format!("copying the kernel {}", kernel.display()));
    let kernel_out = boot_dir.join(KERNEL_FILE);
    std::fs::copy(kernel, &kernel_out).map_err(|source| BuildError::CopyKernel {
        from: kernel.to_path_buf(),
        to: kernel_out.clone(),
        source,
    })?;
    let kernel_size = std::fs::metadata(&kernel_out).map(|m| m.len()).unwrap_or(0);
    let initramfs_out = boot_dir.join(INITRAMFS_FILE);
    let initramfs_size = initramfs::write_gz(&archive, &initramfs_out, progress)?;
    let mut written = Vec::new();
    if want(Format::Initramfs) {
        written.push((KERNEL_FILE, kernel_size));
        written.push((INITRAMFS_FILE, initramfs_size));
    }
    if let Some(scratch) = &scratch {
        progress.step("building the UEFI disk image (UKI, ESP, state partition)");
        let inputs = DiskInputs {
            kernel: kernel_out,
            initramfs: initramfs_out,
            manifest: req.manifest.clone(),
            stub: req.disk.efi_stub.clone(),
            disk_size: req.disk.disk_size,
            seed: build_info(req.source_date_epoch).into_bytes(),
            store_images: seeds,
        };
        let raw = if want(Format::Raw) {
            stage.path().join(RAW_FILE)
        } else {
            scratch.path().join(RAW_FILE)
        };
        disk::build_raw(&inputs, scratch.path(), &raw)?;
        if want(Format::Raw) {
            written.push((RAW_FILE, file_size(&raw)));
        }
        if want(Format::Qcow2) {
            progress.step("converting the disk image to qcow2");
            let qcow2 = stage.path().join(QCOW2_FILE);
            disk::convert_qcow2(&raw, &qcow2)?;
            written.push((QCOW2_FILE, file_size(&qcow2)));
        }
    }
    drop(scratch);
    stage.commit()?;
    Ok(written
        .into_iter()
        .map(|(name, size)| Written {
            path: req.out.join(name),
            size,
        })
        .collect())
}

/// The images to pre-seed the disk's store with: every declared image, from the inputs the
/// initramfs carries (local layouts and archives, and registry images pulled at build time).
fn seed_images(
    manifest: &Manifest,
    base_dir: &Path,
    inputs: &[ImageInput],
) -> Vec<disk::SeedImage> {
    use berth_agent::manifest::ImageFormat;
    inputs
        .iter()
        .filter_map(|input| {
            let decl = manifest.images.get(&input.name)?;
            Some(match &decl.source {
                ImageSource::Registry(reference) => disk::SeedImage {
                    name: input.name.clone(),
                    format: ImageFormat::OciLayout,
                    path: input.layout.clone(),
                    source: Some(reference.to_string()),
                },
                other => disk::SeedImage {
                    name: input.name.clone(),
                    format: other.format()?,
                    path: base_dir.join(other.path()?),
                    source: None,
                },
            })
        })
        .collect()
}

/// Bytes a file occupies on disk (disk images are sparse), or its length when unknown.
fn file_size(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| (m.blocks() * 512).min(m.len()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binaries::tests::fake_release;
    use crate::cpio::read::parse;

    /// A file with the bzImage boot header magic.
    pub(crate) fn fake_bzimage(path: &Path) {
        let mut b = vec![0u8; 0x400];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(path, b).unwrap();
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(manifest: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            fake_release(&root.join("ws"));
            fake_bzimage(&root.join("bzImage"));
            let layout = root.join("cfg/images/busybox");
            std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
            std::fs::write(
                layout.join("oci-layout"),
                r#"{"imageLayoutVersion":"1.0.0"}"#,
            )
            .unwrap();
            std::fs::write(layout.join("index.json"), "{}").unwrap();
            std::fs::write(layout.join("blobs/sha256/00"), "layer").unwrap();
            std::fs::write(root.join("cfg/host.toml"), manifest).unwrap();
            Fixture { dir }
        }

        fn request(&self) -> BuildRequest {
            let root = self.dir.path();
            BuildRequest {
                manifest: root.join("cfg/host.toml"),
                out: root.join("out/image"),
                kernel: Some(root.join("bzImage")),
                binaries: Overrides::default(),
                roots: vec![root.join("ws")],
                source_date_epoch: Some(1_700_000_000),
                disk: DiskOptions::default(),
                pull: true,
            }
        }
    }

    const GOOD: &str = r#"version = 1

[images]
busybox = { source = "oci-layout:images/busybox" }

[containers.hello]
image = "busybox"
command = ["/bin/echo", "hi"]
"#;

    #[test]
    fn builds_kernel_and_initramfs() {
        let f = Fixture::new(GOOD);
        let req = f.request();
        let written = build(&req, &Progress::Quiet).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(written[0].path, req.out.join("vmlinuz"));
        assert_eq!(written[0].size, 0x400);
        assert_eq!(
            std::fs::read(req.out.join("vmlinuz")).unwrap(),
            std::fs::read(f.dir.path().join("bzImage")).unwrap()
        );
        let members = parse(&crate::initramfs::tests::gunzip(
            &req.out.join("initramfs.img"),
        ));
        let get = |n: &str| members.iter().find(|m| m.name == n).unwrap();
        assert_eq!(get("etc/berth/manifest.toml").data, GOOD.as_bytes());
        assert_eq!(
            get("etc/berth/images/busybox/blobs/sha256/00").data,
            b"layer"
        );
        let info = String::from_utf8(get("etc/berth/build-info").data.clone()).unwrap();
        assert!(info.contains("built_unix_time=1700000000"), "{info}");
        assert!(members.iter().all(|m| m.mtime == 1_700_000_000));
    }

    #[test]
    fn rebuilds_are_byte_identical_and_replace_the_output() {
        let f = Fixture::new(GOOD);
        let req = f.request();
        build(&req, &Progress::Quiet).unwrap();
        let first = std::fs::read(req.out.join("initramfs.img")).unwrap();
        build(&req, &Progress::Quiet).unwrap();
        let second = std::fs::read(req.out.join("initramfs.img")).unwrap();
        assert_eq!(first, second);
        let entries: Vec<_> = std::fs::read_dir(req.out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("image")]);
    }

    #[test]
    fn an_invalid_manifest_writes_nothing() {
        let f = Fixture::new("version = 1\n[containers.x]\nimagee = \"busybox\"\n");
        let req = f.request();
        let err = build(&req, &Progress::Quiet).unwrap_err();
        assert!(matches!(err, BuildError::Manifest(_)));
        let msg = err.to_string();
        assert!(msg.contains("host.toml:"), "{msg}");
        assert!(!req.out.exists());
        assert!(!req.out.parent().unwrap().exists());
    }

    #[test]
    fn a_missing_image_layout_writes_nothing() {
        let f = Fixture::new(&GOOD.replace("images/busybox", "images/nope"));
        let req = f.request();
        let err = build(&req, &Progress::Quiet).unwrap_err();
        assert!(matches!(err, BuildError::Manifest(_)), "{err}");
        assert!(!req.out.parent().unwrap().exists());
    }

    #[test]
    fn kernel_is_required_and_checked() {
        let f = Fixture::new(GOOD);
        let mut req = f.request();
        req.kernel = None;
        assert!(matches!(
            build(&req, &Progress::Quiet),
            Err(BuildError::NoKernel)
        ));
        let vmlinux = f.dir.path().join("vmlinux");
        std::fs::write(&vmlinux, crate::elf::tests::elf64(2, None)).unwrap();
        req.kernel = Some(vmlinux);
        let err = build(&req, &Progress::Quiet).unwrap_err();
        assert!(err.to_string().contains("bzImage"), "{err}");
        req.kernel = Some(f.dir.path().join("missing"));
        assert!(matches!(
            build(&req, &Progress::Quiet),
            Err(BuildError::BadKernel { .. })
        ));
        assert!(!req.out.parent().unwrap().exists());
    }

    #[test]
    fn missing_binaries_write_nothing() {
        let f = Fixture::new(GOOD);
        let mut req = f.request();
        req.roots = vec![f.dir.path().join("elsewhere")];
        let err = build(&req, &Progress::Quiet).unwrap_err();
        assert!(matches!(err, BuildError::Binaries(_)));
        assert!(err.to_string().contains("cargo build --release"), "{err}");
        assert!(!req.out.parent().unwrap().exists());
    }

    #[test]
    fn a_foreign_output_directory_is_not_replaced() {
        let f = Fixture::new(GOOD);
        let req = f.request();
        std::fs::create_dir_all(&req.out).unwrap();
        std::fs::write(req.out.join("thesis.tex"), "precious").unwrap();
        let err = build(&req, &Progress::Quiet).unwrap_err();
        assert!(matches!(err, BuildError::Output(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(req.out.join("thesis.tex")).unwrap(),
            "precious"
        );
    }
}
