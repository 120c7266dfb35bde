//! `berth-image busybox-rootfs`: a minimal container root file system from a static busybox.
//!
//! The demo image is Debian's `busybox-static` plus one symlink per applet, so it needs no
//! network and no registry to build. Listing the applets runs busybox, which sits behind the
//! [`AppletLister`] trait so the rest is tested with a fake.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf::{self, ElfError};
use crate::staging::{self, Staging, StagingError};

/// Where Debian's busybox-static installs busybox.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

/// Errors of `berth-image busybox-rootfs`.
#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    /// No busybox at the path.
    #[error(
        "{} not found: install Debian's static busybox with `apt-get install busybox-static`, \
         or pass --busybox PATH",
        .0.display()
    )]
    NotFound(PathBuf),
    /// busybox is dynamically linked (Debian's plain `busybox` package).
    #[error("busybox cannot run in a container without shared libraries")]
    NotStatic(#[source] ElfError),
    /// `busybox --list` failed.
    #[error("cannot list the applets of {}", path.display())]
    List {
        /// The busybox.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `busybox --list` printed a name that is not a plain file name.
    #[error("busybox --list printed {0:?}, which is not an applet name")]
    BadApplet(String),
    /// The output could not be prepared or published.
    #[error(transparent)]
    Output(#[from] StagingError),
    /// Writing the tree failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Lists the applets a busybox binary provides.
pub trait AppletLister {
    /// The applet names, one per entry.
    fn list(&self, busybox: &Path) -> std::io::Result<Vec<String>>;
}

/// Runs `busybox --list`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunBusybox;

impl AppletLister for RunBusybox {
    fn list(&self, busybox: &Path) -> std::io::Result<Vec<String>> {
        let out = Command::new(busybox).arg("--list").output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "`{} --list` failed ({}): {}",
                busybox.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// What was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// The number of applet links.
    pub applets: usize,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BusyboxError {
    let path = path.to_path_buf();
    move |source| BusyboxError::Io { op, path, source }
}

/// Makes the rootfs at `out` (which must be missing or empty).
pub fn make_rootfs(
    busybox: &Path,
    out: &Path,
    lister: &dyn AppletLister,
) -> Result<Rootfs, BusyboxError> {
    if !busybox.is_file() {
        return Err(BusyboxError::NotFound(busybox.to_path_buf()));
    }
    elf::require_static(
        busybox,
        "; install Debian's `busybox-static` (not `busybox`) or pass a static --busybox",
    )
    .map_err(BusyboxError::NotStatic)?;
    let mut applets = lister.list(busybox).map_err(|source| BusyboxError::List {
        path: busybox.to_path_buf(),
        source,
    })?;
    for a in &applets {
        if a.contains('/') || a == "." || a == ".." || a.contains('\0') {
            return Err(BusyboxError::BadApplet(a.clone()));
        }
    }
    applets.retain(|a| a != "busybox");
    applets.sort();
    applets.dedup();

    staging::check_replaceable(out, &[])?;
    let stage = Staging::new(out)?;
    let root = stage.path();
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("root", 0o700),
        ("tmp", 0o1777),
    ] {
        let path = root.join(dir);
        std::fs::create_dir(&path).map_err(io("create", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io("set permissions of", &path))?;
    }
    let bin = root.join("bin/busybox");
    std::fs::copy(busybox, &bin).map_err(io("copy busybox to", &bin))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .map_err(io("set permissions of", &bin))?;
    for a in &applets {
        let link = root.join("bin").join(a);
        std::os::unix::fs::symlink("busybox", &link).map_err(io("create the link", &link))?;
    }
    for (name, body) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let path = root.join(name);
        std::fs::write(&path, body).map_err(io("write", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(io("set permissions of", &path))?;
    }
    stage.commit()?;
    Ok(Rootfs {
        applets: applets.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::elf64;

    struct Fake(Vec<&'static str>);

    impl AppletLister for Fake {
        fn list(&self, _: &Path) -> std::io::Result<Vec<String>> {
            Ok(self.0.iter().map(|s| s.to_string()).collect())
        }
    }

    fn fake_busybox(dir: &Path, interp: Option<&str>) -> PathBuf {
        let p = dir.join("busybox");
        std::fs::write(&p, elf64(2, interp)).unwrap();
        p
    }

    #[test]
    fn tree_with_links_users_and_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let bb = fake_busybox(dir.path(), None);
        let out = dir.path().join("rootfs");
        let r = make_rootfs(&bb, &out, &Fake(vec!["sh", "echo", "busybox", "sh"])).unwrap();
        assert_eq!(r.applets, 2);
        assert_eq!(
            std::fs::read(out.join("bin/busybox")).unwrap(),
            std::fs::read(&bb).unwrap()
        );
        assert_eq!(
            std::fs::read_link(out.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(out.join("bin/echo").is_symlink());
        let passwd = std::fs::read_to_string(out.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0:"));
        assert!(passwd.contains("\nnobody:x:65534:65534:"));
        let group = std::fs::read_to_string(out.join("etc/group")).unwrap();
        assert!(group.contains("nobody:x:65534:"));
        let tmp = std::fs::metadata(out.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        let bin = std::fs::metadata(out.join("bin/busybox")).unwrap();
        assert_eq!(bin.permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rootfs");
        let err = make_rootfs(&dir.path().join("none"), &out, &Fake(vec![])).unwrap_err();
        assert!(
            err.to_string().contains("apt-get install busybox-static"),
            "{err}"
        );

        let dynamic = fake_busybox(dir.path(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(matches!(
            make_rootfs(&dynamic, &out, &Fake(vec!["sh"])),
            Err(BusyboxError::NotStatic(_))
        ));

        let bb = fake_busybox(dir.path(), None);
        assert!(matches!(
            make_rootfs(&bb, &out, &Fake(vec!["../etc/x"])),
            Err(BusyboxError::BadApplet(_))
        ));
        assert!(!out.exists());

        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("keep"), "").unwrap();
        assert!(matches!(
            make_rootfs(&bb, &out, &Fake(vec!["sh"])),
            Err(BusyboxError::Output(_))
        ));
    }

    #[test]
    fn real_busybox_static_when_installed() {
        let bb = Path::new(DEFAULT_BUSYBOX);
        if !bb.exists() || !Path::new("/usr/share/doc/busybox-static").exists() {
            eprintln!("busybox-static not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rootfs");
        let r = make_rootfs(bb, &out, &RunBusybox).unwrap();
        assert!(r.applets > 50, "{}", r.applets);
        for applet in ["sh", "echo", "httpd", "sleep"] {
            assert!(out.join("bin").join(applet).is_symlink(), "{applet}");
        }
        let status = Command::new(out.join("bin/echo"))
            .arg("ok")
            .output()
            .unwrap();
        assert_eq!(status.stdout, b"ok\n");
    }
}
