//! User namespaces (`userns = true`): container root is an unprivileged host user.
//!
//! Like Docker's `userns-remap`, every such container maps its uids and gids `0..65536` onto
//! one host range starting at [`IdMap::DEFAULT`]'s `host` (100000), so a process that escapes
//! its container is a nobody on the host, and a file it writes on a volume is owned by
//! 100000+uid there.
//!
//! The order matters and is split between the container's process and the shim:
//!
//! 1. The container's process builds its root filesystem as real root (overlay, `/proc`,
//!    `/dev`, masks) in the mount namespace owned by the host's user namespace, so nothing in
//!    the container can later unmount or remount it.
//! 2. It unshares `CLONE_NEWUSER` ([`Sys::enter_user_namespace`](super::rootfs::Sys)) and
//!    tells the shim, which — still root on the host — writes `/proc/PID/uid_map` and
//!    `gid_map` ([`write_maps`]) and answers; only then does the process switch to the
//!    container's user and drop capabilities (they now count only inside its namespace).
//!
//! Image layers are owned by host root; a mapped container root would see them as `nobody`
//! and could not write where root can. The store therefore keeps a copy of each layer with
//! ownership shifted by the map's base (`store/layers-shifted/BASE/CHAIN`, made once per
//! layer), and berthd gives the container's upper directory, fresh volumes and tmpfs mounts
//! the mapped root as owner.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

/// The id range a user-namespaced container's ids `0..size` map onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdMap {
    /// Host uid and gid that container uid/gid 0 maps to.
    pub host: u32,
    /// Number of ids mapped.
    pub size: u32,
}

impl IdMap {
    /// Docker's conventional remap range: container 0..65536 -> host 100000..165536.
    pub const DEFAULT: IdMap = IdMap {
        host: 100_000,
        size: 65_536,
    };

    /// The line written to `uid_map` and `gid_map`.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host, self.size)
    }

    /// The host id of container id `id`, if it is mapped.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        (id < self.size).then(|| self.host + id)
    }
}

/// The container process's half of the handshake with the shim.
#[derive(Debug)]
pub struct ChildSync {
    /// Written once the user namespace exists.
    pub ready: OwnedFd,
    /// Read: one byte once the maps are written, EOF when the shim failed.
    pub mapped: OwnedFd,
}

/// The shim's half of the handshake.
#[derive(Debug)]
pub struct ShimSync {
    /// Read: one byte once the child has unshared its user namespace, EOF if it failed first.
    pub ready: OwnedFd,
    /// Written once the maps are in place.
    pub mapped: OwnedFd,
}

/// Both halves, created by the shim before it forks.
pub fn handshake() -> io::Result<(ChildSync, ShimSync)> {
    let flags = nix::fcntl::OFlag::O_CLOEXEC;
    let (ready_r, ready_w) = nix::unistd::pipe2(flags).map_err(io::Error::from)?;
    let (mapped_r, mapped_w) = nix::unistd::pipe2(flags).map_err(io::Error::from)?;
    Ok((
        ChildSync {
            ready: ready_w,
            mapped: mapped_r,
        },
        ShimSync {
            ready: ready_r,
            mapped: mapped_w,
        },
    ))
}

impl ChildSync {
    /// Unshare the user namespace, then wait until the shim has mapped it.
    pub fn enter(self) -> io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(io::Error::from)?;
        File::from(self.ready).write_all(b"u")?;
        let mut answer = [0u8; 1];
        match File::from(self.mapped).read(&mut answer)? {
            1 => Ok(()),
            _ => Err(io::Error::other(
                "the shim could not write the user namespace's id maps",
            )),
        }
    }
}

impl ShimSync {
    /// Wait for the child's namespace, map it through `proc` (a directory fd of the host's
    /// /proc, opened before the container's root replaced the shim's), answer. Returns
    /// `Ok(false)` when the child ended before asking (its own error report explains why).
    pub fn serve(self, proc: &File, pid: i32, map: &IdMap) -> io::Result<bool> {
        let mut byte = [0u8; 1];
        if File::from(self.ready).read(&mut byte)? == 0 {
            return Ok(false);
        }
        write_maps(proc, pid, map)?;
        File::from(self.mapped).write_all(b"m")?;
        Ok(true)
    }
}

/// Write `uid_map` and `gid_map` of process `pid` (as the host's root, no `setgroups` deny is
/// needed).
pub fn write_maps(proc: &File, pid: i32, map: &IdMap) -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let line = map.map_line();
    for file in ["uid_map", "gid_map"] {
        let path = format!("{pid}/{file}");
        let fd = nix::fcntl::openat(
            Some(proc.as_raw_fd()),
            path.as_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(io::Error::from(e).kind(), format!("open /proc/{path}: {e}"))
        })?;
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        (&file)
            .write_all(line.as_bytes())
            .map_err(|e| io::Error::new(e.kind(), format!("write /proc/{path}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_line_and_host_ids() {
        let m = IdMap::DEFAULT;
        assert_eq!(m.map_line(), "0 100000 65536\n");
        assert_eq!(m.to_host(0), Some(100_000));
        assert_eq!(m.to_host(65_535), Some(165_535));
        assert_eq!(m.to_host(65_536), None);
    }

    #[test]
    fn a_child_that_dies_before_asking_is_not_mapped() {
        let (child, shim) = handshake().unwrap();
        drop(child);
        let proc = File::open("/proc").unwrap();
        // The pid is never used: EOF on `ready` comes first.
        assert!(!shim.serve(&proc, i32::MAX, &IdMap::DEFAULT).unwrap());
    }
}
