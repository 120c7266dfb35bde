//! The privileged filesystem operations layer unpacking needs: whiteout device nodes,
//! the overlayfs opaque xattr and ownership changes.
//!
//! They sit behind [`LayerFs`] so the whiteout/opaque conversion and ownership handling are
//! unit-tested without root through [`RecordingLayerFs`]; [`HostLayerFs`] does the real calls.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Privileged operations used while unpacking a layer.
pub trait LayerFs: std::fmt::Debug + Send + Sync {
    /// Creates an overlayfs whiteout at `path`: a character device with device number 0/0.
    fn make_whiteout(&self, path: &Path) -> io::Result<()>;
    /// Marks the directory `dir` opaque for overlayfs (`trusted.overlay.opaque=y`).
    fn set_opaque(&self, dir: &Path) -> io::Result<()>;
    /// Changes the owner of `path` without following a symlink there.
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// Whether the directory `dir` is marked opaque. A query: fakes do not record it.
    fn is_opaque(&self, dir: &Path) -> io::Result<bool>;
    /// Bytes that can still be written on the filesystem holding `path` (`statvfs`: the blocks
    /// available to unprivileged users, so the root reserve is kept). A query.
    fn free_bytes(&self, path: &Path) -> io::Result<u64>;
}

/// The real operations on the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostLayerFs;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

impl LayerFs for HostLayerFs {
    fn make_whiteout(&self, path: &Path) -> io::Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
    }

    fn set_opaque(&self, dir: &Path) -> io::Result<()> {
        let path = c_path(dir)?;
        let name = c"trusted.overlay.opaque";
        let value = b"y";
        // SAFETY: `path` and `name` are valid NUL-terminated strings that outlive the call, and
        // `value` points to `value.len()` readable bytes.
        let rc = unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let stat = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }

    fn is_opaque(&self, dir: &Path) -> io::Result<bool> {
        let path = c_path(dir)?;
        let name = c"trusted.overlay.opaque";
        let mut value = [0u8; 4];
        // SAFETY: `path` and `name` are valid NUL-terminated strings that outlive the call, and
        // `value` has `value.len()` writable bytes.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n >= 0 {
            return Ok(value.first() == Some(&b'y'));
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENODATA)
                || e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                Ok(false)
            }
            e => Err(e),
        }
    }
}

/// One call recorded by [`RecordingLayerFs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerFsCall {
    /// `make_whiteout(path)`.
    Whiteout(PathBuf),
    /// `set_opaque(dir)`.
    Opaque(PathBuf),
    /// `lchown(path, uid, gid)`.
    Chown(PathBuf, u32, u32),
}

/// A fake that records calls instead of making them; optionally fails privileged ones with
/// `EPERM` the way an unprivileged process would see them.
#[derive(Debug, Default)]
pub struct RecordingLayerFs {
    calls: Mutex<Vec<LayerFsCall>>,
    deny_privileged: bool,
    free: Option<u64>,
}

impl RecordingLayerFs {
    /// A fake where every call succeeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake where every call fails with `EPERM` (what a non-root process gets).
    pub fn unprivileged() -> Self {
        RecordingLayerFs {
            calls: Mutex::new(Vec::new()),
            deny_privileged: true,
            free: None,
        }
    }

    /// A fake reporting `free` bytes free (by default: unlimited, i.e. the space check never
    /// refuses and only the real filesystem can run out).
    pub fn with_free_bytes(free: u64) -> Self {
        RecordingLayerFs {
            free: Some(free),
            ..Self::default()
        }
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<LayerFsCall> {
        match self.calls.lock() {
            Ok(calls) => calls.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn record(&self, call: LayerFsCall) -> io::Result<()> {
        match self.calls.lock() {
            Ok(mut calls) => calls.push(call),
            Err(poisoned) => poisoned.into_inner().push(call),
        }
        if self.deny_privileged {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        } else {
            Ok(())
        }
    }
}

impl LayerFs for RecordingLayerFs {
    fn make_whiteout(&self, path: &Path) -> io::Result<()> {
        self.record(LayerFsCall::Whiteout(path.to_path_buf()))
    }

    fn set_opaque(&self, dir: &Path) -> io::Result<()> {
        self.record(LayerFsCall::Opaque(dir.to_path_buf()))
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.record(LayerFsCall::Chown(path.to_path_buf(), uid, gid))
    }

    fn is_opaque(&self, dir: &Path) -> io::Result<bool> {
        Ok(self
            .calls()
            .contains(&LayerFsCall::Opaque(dir.to_path_buf())))
    }

    fn free_bytes(&self, _path: &Path) -> io::Result<u64> {
        Ok(self.free.unwrap_or(u64::MAX))
    }
}
