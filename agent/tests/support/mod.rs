//! What the host tests that run a real berthd share: a network (and UTS) namespace of its own,
//! optionally with `lo` up, and its console read line by line on a thread.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver};

/// Run `cmd` in new UTS and network namespaces; with `loopback`, `lo` is brought up there (for
/// the remote API on 127.0.0.1).
pub fn own_namespaces(cmd: &mut Command, loopback: bool) {
    // SAFETY: unshare, socket, ioctl and close are async-signal-safe and allocate nothing;
    // `ifr` lives on this stack frame for the ioctl.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if !loopback {
                return Ok(());
            }
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            ifr.ifr_name[0] = b'l' as libc::c_char;
            ifr.ifr_name[1] = b'o' as libc::c_char;
            ifr.ifr_ifru.ifru_flags =
                (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as i16;
            let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
            libc::close(fd);
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The lines `child` prints on its (piped) stdout, read on a thread of their own.
pub fn console_lines(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}
