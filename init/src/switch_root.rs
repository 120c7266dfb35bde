//! Leaving the initramfs rootfs for a tmpfs root (what `switch_root` does).
//!
//! pivot_root(2) fails in any mount namespace whose root is the initramfs rootfs, and the
//! agent's containers enter their root filesystems with pivot_root. So PID 1 copies the
//! initramfs into a tmpfs, moves that tmpfs onto `/`, chroots into it, frees the old rootfs
//! contents and re-executes itself with [`MARKER_ENV`] set. Every failure is reported and boot
//! continues on the rootfs.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, fstatat, mknod, Mode, SFlag};
use nix::unistd::{chdir, chroot, execve, unlinkat, UnlinkatFlags};

/// Set in the environment of the re-executed PID 1 so it does not switch again.
pub const MARKER_ENV: &str = "BERTH_SWITCHED";
/// Where the new root is assembled before it is moved onto `/`.
pub const NEW_ROOT: &str = "/.berth-root";
/// The binary re-executed after the switch.
pub const INIT_PATH: &str = "/init";

/// `statfs` magic of ramfs (the initramfs rootfs without tmpfs support).
pub const RAMFS_MAGIC: i64 = 0x8584_58f6;
/// `statfs` magic of tmpfs (the rootfs when the kernel backs it with tmpfs).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Why switching the root failed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// A syscall failed.
    #[error("{what} failed: {source}")]
    Sys {
        /// The call and its arguments.
        what: String,
        /// The error.
        #[source]
        source: Errno,
    },
    /// Copying a file or directory failed.
    #[error("cannot copy {path} into the new root: {source}")]
    Copy {
        /// The entry being copied.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(Errno) -> SwitchError {
    let what = what.into();
    move |source| SwitchError::Sys { what, source }
}

fn copy_err(path: &Path) -> impl FnOnce(std::io::Error) -> SwitchError + '_ {
    move |source| SwitchError::Copy {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether PID 1 must leave the rootfs: it is PID 1, `/` is ramfs/tmpfs, and it has not
/// switched already (`marker_set`).
pub fn should_switch(pid: i32, root_fs_magic: i64, marker_set: bool) -> bool {
    pid == 1 && !marker_set && (root_fs_magic == RAMFS_MAGIC || root_fs_magic == TMPFS_MAGIC)
}

/// The `statfs` magic of the filesystem at `path`.
pub fn fs_magic(path: &Path) -> Result<i64, SwitchError> {
    let st =
        nix::sys::statfs::statfs(path).map_err(sys_err(format!("statfs {}", path.display())))?;
    // The magic's integer type differs between libcs; it always fits in i64.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.filesystem_type().0 as i64)
}

/// Copy the tree under `src` into the existing directory `dst`: directories, regular files,
/// symlinks, device nodes, FIFOs and sockets, with their mode and ownership. Entries on
/// another filesystem than `dev` (mount points) become empty directories; `skip` is left out.
/// Returns the number of entries copied.
pub fn copy_tree(src: &Path, dst: &Path, dev: u64, skip: &Path) -> Result<u64, SwitchError> {
    let mut count = 0;
    let entries = fs::read_dir(src).map_err(copy_err(src))?;
    for entry in entries {
        let entry = entry.map_err(copy_err(src))?;
        let path = entry.path();
        if path == skip {
            continue;
        }
        let meta = fs::symlink_metadata(&path).map_err(copy_err(&path))?;
        let target = dst.join(entry.file_name());
        let kind = meta.file_type();
        if kind.is_dir() {
            match fs::create_dir(&target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(copy_err(&target)(e)),
            }
            if meta.dev() == dev {
                count += copy_tree(&path, &target, dev, skip)?;
            }
        } else if kind.is_symlink() {
            let link = fs::read_link(&path).map_err(copy_err(&path))?;
            std::os::unix::fs::symlink(&link, &target).map_err(copy_err(&target))?;
        } else if kind.is_file() {
            fs::copy(&path, &target).map_err(copy_err(&path))?;
        } else {
            let sflag = if kind.is_char_device() {
                SFlag::S_IFCHR
            } else if kind.is_block_device() {
                SFlag::S_IFBLK
            } else if kind.is_fifo() {
                SFlag::S_IFIFO
            } else if kind.is_socket() {
                SFlag::S_IFSOCK
            } else {
                continue;
            };
            mknod(
                &target,
                sflag,
                Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(|e| copy_err(&target)(std::io::Error::from(e)))?;
        }
        // Ownership first: chown clears the set-id bits that the chmod below restores.
        std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()))
            .map_err(copy_err(&target))?;
        if !kind.is_symlink() {
            fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(copy_err(&target))?;
        }
        count += 1;
    }
    Ok(count)
}

/// Delete everything below the directory open at `dir_fd` that lives on filesystem `dev`,
/// without following symlinks or crossing into other mounts. Returns how many entries could
/// not be removed.
pub fn remove_contents(dir_fd: RawFd, dev: u64) -> u64 {
    let names: Vec<CString> = match Dir::openat(
        Some(dir_fd),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(mut dir) => dir
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect(),
        Err(_) => return 1,
    };
    let mut failures = 0;
    for name in names {
        failures += remove_entry(dir_fd, &name, dev);
    }
    failures
}

fn remove_entry(dir_fd: RawFd, name: &CStr, dev: u64) -> u64 {
    let Ok(st) = fstatat(Some(dir_fd), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return 1;
    };
    // Widen for libcs where st_dev is narrower.
    #[allow(clippy::unnecessary_cast)]
    if st.st_dev as u64 != dev {
        return 0;
    }
    let is_dir = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR;
    if !is_dir {
        return u64::from(unlinkat(Some(dir_fd), name, UnlinkatFlags::NoRemoveDir).is_err());
    }
    let mut failures = match Dir::openat(
        Some(dir_fd),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => remove_contents(dir.as_raw_fd(), dev),
        Err(_) => 1,
    };
    if unlinkat(Some(dir_fd), name, UnlinkatFlags::RemoveDir).is_err() {
        failures += 1;
    }
    failures
}

/// Whether [`switch`] re-executed (it then never returns) or finished in the same process.
#[derive(Debug)]
pub enum Switched {
    /// The root was switched but re-executing `/init` failed; boot continues on the new root.
    WithoutReexec(SwitchError),
}

/// Copy the rootfs into a tmpfs, make it `/`, free the old contents and re-execute `/init`.
///
/// On success this does not return (the process image is replaced). `Ok` means the root was
/// switched but the re-exec failed; `Err` means nothing changed and boot continues on the
/// rootfs. `log` receives progress lines.
pub fn switch(log: &dyn Fn(&str)) -> Result<Switched, SwitchError> {
    let root = Path::new("/");
    let new_root = Path::new(NEW_ROOT);
    let old_root = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys_err("open /"))?;
    let old_root = OwnedRaw(old_root);
    #[allow(clippy::unnecessary_cast)]
    let root_dev = fstat(old_root.0).map_err(sys_err("fstat /"))?.st_dev as u64;

    match fs::create_dir(new_root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(copy_err(new_root)(e)),
    }
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys_err(format!("mount tmpfs on {NEW_ROOT}")))?;

    let undo = |err: SwitchError| {
        let _ = chdir(root);
        let _ = umount2(new_root, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(new_root);
        err
    };
    let copied = copy_tree(root, new_root, root_dev, new_root).map_err(undo)?;
    log(&format!(
        "switch_root: copied {copied} entries to a tmpfs root"
    ));
    chdir(new_root)
        .map_err(sys_err(format!("chdir {NEW_ROOT}")))
        .map_err(undo)?;
    mount(
        Some("."),
        root,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(sys_err(format!("mount --move {NEW_ROOT} /")))
    .map_err(undo)?;
    // After the move there is no way back: the tmpfs sits on top of the rootfs.
    chroot(".").map_err(sys_err("chroot ."))?;
    chdir(root).map_err(sys_err("chdir /"))?;

    let failures = remove_contents(old_root.0, root_dev);
    if failures > 0 {
        log(&format!(
            "warning: switch_root: {failures} entries of the old rootfs could not be freed"
        ));
    }
    drop(old_root);
    Ok(Switched::WithoutReexec(reexec()))
}

/// Re-execute `/init` with the original arguments and [`MARKER_ENV`]=1; returns only on error.
fn reexec() -> SwitchError {
    let to_c = |s: &OsStr| CString::new(s.as_bytes()).ok();
    let mut args: Vec<CString> = std::env::args_os().filter_map(|a| to_c(&a)).collect();
    if args.is_empty() {
        args.push(c"/init".to_owned());
    }
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != MARKER_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            to_c(&kv)
        })
        .collect();
    env.push(c"BERTH_SWITCHED=1".to_owned());
    match execve(c"/init", &args, &env) {
        Err(source) => SwitchError::Sys {
            what: format!("execve {INIT_PATH}"),
            source,
        },
        Ok(never) => match never {},
    }
}

/// A raw descriptor closed on drop.
struct OwnedRaw(RawFd);

impl Drop for OwnedRaw {
    fn drop(&mut self) {
        let _ = nix::unistd::close(self.0);
    }
}

/// The directory-entry type of `dir/name`, as `remove_contents` sees it.
#[cfg(test)]
fn entry_type(dir: &Path, name: &str) -> Option<nix::dir::Type> {
    let mut d = Dir::open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).ok()?;
    let found = d
        .iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_bytes() == name.as_bytes())?;
    found.file_type()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_only_as_pid1_on_rootfs_without_marker() {
        assert!(should_switch(1, RAMFS_MAGIC, false));
        assert!(should_switch(1, TMPFS_MAGIC, false));
        assert!(!should_switch(1, TMPFS_MAGIC, true));
        assert!(!should_switch(2, RAMFS_MAGIC, false));
        assert!(!should_switch(1, 0xEF53, false));
    }

    #[test]
    fn reads_the_magic_of_a_real_filesystem() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(fs_magic(tmp.path()).unwrap() != 0);
        assert!(fs_magic(Path::new("/does/not/exist")).is_err());
    }

    fn dev_of(path: &Path) -> u64 {
        fs::symlink_metadata(path).unwrap().dev()
    }

    #[test]
    fn copies_files_dirs_symlinks_fifos_with_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir_all(src.join("usr/bin")).unwrap();
        fs::create_dir_all(src.join("skipme")).unwrap();
        fs::write(src.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("usr/bin/tool"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::set_permissions(src.join("usr"), fs::Permissions::from_mode(0o705)).unwrap();
        std::os::unix::fs::symlink("usr/bin", src.join("bin")).unwrap();
        mknod(
            &src.join("fifo"),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        fs::create_dir(&dst).unwrap();

        let n = copy_tree(&src, &dst, dev_of(&src), &src.join("skipme")).unwrap();
        assert_eq!(n, 5); // usr, usr/bin, usr/bin/tool, bin, fifo
        assert_eq!(fs::read(dst.join("usr/bin/tool")).unwrap(), b"#!/bin/sh\n");
        let mode = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("usr/bin/tool"), 0o751);
        assert_eq!(mode("usr"), 0o705);
        assert_eq!(
            fs::read_link(dst.join("bin")).unwrap(),
            PathBuf::from("usr/bin")
        );
        assert!(fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(!dst.join("skipme").exists());
        assert_eq!(entry_type(&dst, "bin"), Some(nix::dir::Type::Symlink));
    }

    #[test]
    fn copies_device_nodes_when_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: mknod of a character device needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir_all(src.join("dev")).unwrap();
        fs::create_dir(&dst).unwrap();
        let console = nix::sys::stat::makedev(5, 1);
        mknod(
            &src.join("dev/console"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            console,
        )
        .unwrap();
        copy_tree(&src, &dst, dev_of(&src), Path::new("/nonexistent")).unwrap();
        let meta = fs::symlink_metadata(dst.join("dev/console")).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), console);
        assert_eq!(meta.mode() & 0o7777, 0o600);
    }

    #[test]
    fn removes_contents_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        let keep = tmp.path().join("keep");
        fs::create_dir_all(victim.join("a/b/c")).unwrap();
        fs::write(victim.join("a/b/c/file"), b"x").unwrap();
        fs::write(victim.join("top"), b"y").unwrap();
        fs::create_dir(&keep).unwrap();
        fs::write(keep.join("precious"), b"z").unwrap();
        std::os::unix::fs::symlink(&keep, victim.join("link-to-keep")).unwrap();

        let dir = fs::File::open(&victim).unwrap();
        let failures = remove_contents(dir.as_raw_fd(), dev_of(&victim));
        assert_eq!(failures, 0);
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
        assert_eq!(fs::read(keep.join("precious")).unwrap(), b"z");
    }

    #[test]
    fn remove_contents_skips_other_filesystems() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("file"), b"x").unwrap();
        let dir = fs::File::open(tmp.path()).unwrap();
        assert_eq!(remove_contents(dir.as_raw_fd(), u64::MAX), 0);
        assert!(tmp.path().join("file").exists());
    }
}
