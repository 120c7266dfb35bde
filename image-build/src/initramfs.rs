//! The initramfs: what the kernel unpacks as the root file system at boot.
//!
//! It holds PID 1 (`/init`), the agent binaries, the host manifest and the image layouts the
//! manifest names, laid out so the manifest's relative `oci-layout:` paths resolve the same
//! way at boot (`/etc/berth/manifest.toml` next to `/etc/berth/<relative path>`). The
//! archive is a gzip-compressed newc cpio (the kernel needs `CONFIG_RD_GZIP`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use flate2::{Compression, GzBuilder};

use crate::cpio::{Archive, CpioError};
use crate::progress::{CountingWriter, Progress};

/// Where the manifest lives in the image.
pub const MANIFEST_PATH: &str = "etc/berth/manifest.toml";
/// Where the build description lives in the image.
pub const BUILD_INFO_PATH: &str = "etc/berth/build-info";

/// Directories every image has (in creation order; `/sys/fs/cgroup` is created by init).
const DIRS: [(&str, u32); 13] = [
    ("dev", 0o755),
    ("etc", 0o755),
    ("etc/berth", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("var", 0o755),
    ("var/lib", 0o755),
    ("var/lib/berth", 0o755),
];

/// Errors while assembling or writing the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// An image path in the manifest would land outside `/etc/berth`.
    #[error(
        "image {name:?}: its layout path {} must be relative and stay below the manifest's \
         directory (no `..`, not absolute) so it resolves the same way inside the image",
        path.display()
    )]
    ImagePath {
        /// The `[images]` key.
        name: String,
        /// The path as written.
        path: PathBuf,
    },
    /// Describing an entry failed.
    #[error("cannot add {what} to the initramfs")]
    Entry {
        /// What was being added.
        what: String,
        /// The cause.
        #[source]
        source: CpioError,
    },
    /// Writing the compressed archive failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: CpioError,
    },
    /// Finishing the output file failed.
    #[error("cannot write {}", path.display())]
    Io {
        /// The output file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One image layout to carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInput {
    /// The `[images]` key (for messages).
    pub name: String,
    /// The path as written in the manifest, relative to its directory.
    pub relative: PathBuf,
    /// The layout directory (or, for archive sources, the archive file) on this machine.
    pub layout: PathBuf,
}

/// Where the CA bundle goes (where rustls' native certificate loading looks first).
pub const CA_BUNDLE_PATH: &str = "etc/ssl/certs/ca-certificates.crt";

/// The build machine's CA bundle (Debian's `ca-certificates`), when it has one.
pub fn host_ca_bundle() -> Option<PathBuf> {
    let path = Path::new("/").join(CA_BUNDLE_PATH);
    path.is_file().then_some(path)
}

/// Everything that goes into the initramfs.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// berth-init, installed as `/init`.
    pub init: PathBuf,
    /// `/usr/bin/berthd`.
    pub berthd: PathBuf,
    /// `/usr/bin/berthctl`.
    pub berthctl: PathBuf,
    /// The host manifest, installed as `/etc/berth/manifest.toml`.
    pub manifest: PathBuf,
    /// Image layouts and archives, installed below `/etc/berth`.
    pub images: Vec<ImageInput>,
    /// Contents of `/etc/berth/build-info`.
    pub build_info: String,
    /// The CA bundle berthd trusts for HTTPS registries, installed as
    /// `/etc/ssl/certs/ca-certificates.crt` (`None`: no bundle, only private CAs work).
    pub ca_bundle: Option<PathBuf>,
    /// mtime of every entry.
    pub mtime: u32,
}

/// The archive name of an image's layout: `etc/berth/<relative>`.
fn image_dir(image: &ImageInput) -> Result<String, InitramfsError> {
    let bad = || InitramfsError::ImagePath {
        name: image.name.clone(),
        path: image.relative.clone(),
    };
    let mut parts = Vec::new();
    for c in image.relative.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(bad)?),
            Component::CurDir => {}
            _ => return Err(bad()),
        }
    }
    if parts.is_empty() {
        return Err(bad());
    }
    Ok(format!("etc/berth/{}", parts.join("/")))
}

/// Describes the initramfs.
pub fn assemble(inputs: &Inputs) -> Result<Archive, InitramfsError> {
    let entry = |what: &str| {
        let what = what.to_string();
        move |source| InitramfsError::Entry { what, source }
    };
    let mut a = Archive::new(inputs.mtime);
    for (dir, perm) in DIRS {
        a.add_dir(dir, perm).map_err(entry(dir))?;
    }
    a.add_char_device("dev/console", 0o600, 5, 1)
        .map_err(entry("/dev/console"))?;
    a.add_char_device("dev/null", 0o666, 1, 3)
        .map_err(entry("/dev/null"))?;
    a.add_file("init", 0o755, &inputs.init)
        .map_err(entry("/init"))?;
    a.add_file("usr/bin/berthd", 0o755, &inputs.berthd)
        .map_err(entry("/usr/bin/berthd"))?;
    a.add_file("usr/bin/berthctl", 0o755, &inputs.berthctl)
        .map_err(entry("/usr/bin/berthctl"))?;
    a.add_file(MANIFEST_PATH, 0o644, &inputs.manifest)
        .map_err(entry("the manifest"))?;
    a.add_bytes(
        BUILD_INFO_PATH,
        0o644,
        inputs.build_info.clone().into_bytes(),
    )
    .map_err(entry("the build info"))?;
    if let Some(bundle) = &inputs.ca_bundle {
        a.add_dir_all("etc/ssl/certs")
            .map_err(entry("/etc/ssl/certs"))?;
        a.add_file(CA_BUNDLE_PATH, 0o644, bundle)
            .map_err(entry("the CA bundle"))?;
    }
    for image in &inputs.images {
        let dir = image_dir(image)?;
        let what = format!("image {:?} ({})", image.name, image.layout.display());
        if let Some((parent, _)) = dir.rsplit_once('/') {
            a.add_dir_all(parent).map_err(entry(&what))?;
        }
        if a.contains(&dir) {
            // Two names for the same layout: it is carried once.
            continue;
        }
        if image.layout.is_file() {
            // An oci-archive or docker-archive: one file.
            a.add_file(&dir, 0o644, &image.layout)
                .map_err(entry(&what))?;
        } else {
            a.add_tree(&dir, &image.layout).map_err(entry(&what))?;
        }
    }
    Ok(a)
}

/// Writes `archive` gzip-compressed to `out` and returns the compressed size.
pub fn write_gz(archive: &Archive, out: &Path, progress: &Progress) -> Result<u64, InitramfsError> {
    let io = |source| InitramfsError::Io {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(io)?;
    let bar = progress.bytes(
        &format!(
            "compressing the initramfs ({} entries)",
            archive.entries().count()
        ),
        archive.encoded_len(),
    );
    // mtime 0 and no file name in the gzip header: the output depends only on the archive.
    let gz = GzBuilder::new()
        .mtime(0)
        .write(BufWriter::new(file), Compression::best());
    let mut counted = CountingWriter::new(gz, bar);
    archive
        .write_to(&mut counted)
        .map_err(|source| InitramfsError::Write {
            path: out.to_path_buf(),
            source,
        })?;
    let gz = counted.into_inner();
    let mut buffered = gz.finish().map_err(io)?;
    buffered.flush().map_err(io)?;
    let file = buffered.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(file.metadata().map_err(io)?.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpio::read::{parse, Member};
    use std::io::Read;

    pub(crate) fn gunzip(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn inputs(dir: &Path) -> Inputs {
        for (name, body) in [("init", "I"), ("berthd", "D"), ("berthctl", "C")] {
            std::fs::write(dir.join(name), body).unwrap();
        }
        std::fs::write(dir.join("manifest.toml"), "version = 1\n").unwrap();
        let layout = dir.join("images/busybox");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(layout.join("oci-layout"), "{}").unwrap();
        std::fs::write(layout.join("index.json"), "{}").unwrap();
        std::fs::write(layout.join("blobs/sha256/aa"), "blob").unwrap();
        std::fs::write(dir.join("images/web.tar"), "docker save output").unwrap();
        Inputs {
            init: dir.join("init"),
            berthd: dir.join("berthd"),
            berthctl: dir.join("berthctl"),
            manifest: dir.join("manifest.toml"),
            images: vec![
                ImageInput {
                    name: "busybox".into(),
                    relative: "images/busybox".into(),
                    layout,
                },
                ImageInput {
                    name: "web".into(),
                    relative: "images/web.tar".into(),
                    layout: dir.join("images/web.tar"),
                },
            ],
            build_info: "version=0.1.0\n".into(),
            ca_bundle: None,
            mtime: 7,
        }
    }

    #[test]
    fn contents_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initramfs.img");
        let size = write_gz(
            &assemble(&inputs(dir.path())).unwrap(),
            &out,
            &Progress::Quiet,
        )
        .unwrap();
        assert_eq!(size, std::fs::metadata(&out).unwrap().len());
        let members = parse(&gunzip(&out));
        let get = |n: &str| -> &Member {
            members
                .iter()
                .find(|m| m.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(get("init").data, b"I");
        assert_eq!(get("init").mode, 0o100_755);
        assert_eq!(get("usr/bin/berthd").data, b"D");
        assert_eq!(get("usr/bin/berthctl").data, b"C");
        assert_eq!(get(MANIFEST_PATH).data, b"version = 1\n");
        assert_eq!(get(BUILD_INFO_PATH).data, b"version=0.1.0\n");
        assert_eq!(
            get("etc/berth/images/busybox/blobs/sha256/aa").data,
            b"blob"
        );
        assert_eq!(get("etc/berth/images").mode, 0o040_755);
        // An archive source is carried as the one file it is.
        let web = get("etc/berth/images/web.tar");
        assert_eq!(
            (web.mode, web.data.as_slice()),
            (0o100_644, &b"docker save output"[..])
        );
        let console = get("dev/console");
        assert_eq!(
            (console.mode, console.rmajor, console.rminor),
            (0o020_600, 5, 1)
        );
        let null = get("dev/null");
        assert_eq!((null.mode, null.rmajor, null.rminor), (0o020_666, 1, 3));
        assert_eq!(get("tmp").mode, 0o041_777);
        for d in ["proc", "sys", "run", "var/lib/berth", "root"] {
            assert_eq!(get(d).mode & 0o170_000, 0o040_000, "{d}");
        }
        assert!(members
            .iter()
            .all(|m| m.uid == 0 && m.gid == 0 && m.mtime == 7));
        let names: Vec<_> = members.iter().map(|m| m.name.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn two_builds_are_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let i = inputs(dir.path());
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        write_gz(&assemble(&i).unwrap(), &a, &Progress::Quiet).unwrap();
        // Touch the inputs: host mtimes must not leak into the image.
        std::fs::write(&i.init, "I").unwrap();
        write_gz(&assemble(&i).unwrap(), &b, &Progress::Quiet).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }

    #[test]
    fn image_paths_must_stay_below_etc_berth() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../outside", "/abs/layout", "", "."] {
            let mut i = inputs(dir.path());
            i.images[0].relative = PathBuf::from(bad);
            assert!(
                matches!(assemble(&i), Err(InitramfsError::ImagePath { .. })),
                "{bad:?}"
            );
        }
        let mut i = inputs(dir.path());
        i.images[0].relative = PathBuf::from("./images/busybox");
        let a = assemble(&i).unwrap();
        assert!(a.contains("etc/berth/images/busybox/oci-layout"));
    }
}
