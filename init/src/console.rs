//! The console: PID 1's only output channel.
//!
//! Every line PID 1 prints goes to `/dev/console` in a single `write(2)` so that it does not
//! interleave with the agent's lines. Writing never panics (unlike `println!`): when the console
//! itself fails there is nobody left to tell.

use std::fs::OpenOptions;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Where the kernel gives PID 1 its console (and where we open it when it did not).
const CONSOLE: &str = "/dev/console";

/// Make sure file descriptors 0, 1 and 2 are open, opening `/dev/console` for any that is not.
///
/// The kernel opens the console for `/init` only when `/dev/console` exists in the initramfs;
/// call this again once devtmpfs is mounted in case it did not.
pub fn ensure_stdio() {
    let missing: Vec<i32> = (0..=2).filter(|fd| !fd_is_open(*fd)).collect();
    if missing.is_empty() {
        return;
    }
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(CONSOLE)
    {
        Ok(file) => file,
        // No console yet (no /dev/console before devtmpfs is mounted): try again later.
        Err(_) => return,
    };
    let console = file.into_raw_fd();
    for fd in &missing {
        if *fd != console {
            // SAFETY: dup2 on a descriptor we own onto a descriptor number that is closed.
            unsafe { libc::dup2(console, *fd) };
        }
    }
    if !missing.contains(&console) {
        // SAFETY: `console` came from `into_raw_fd` above and is owned by nobody else.
        unsafe { libc::close(console) };
    }
}

fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Format one console line: `berth: <message>` with a trailing newline.
pub fn format_line(message: &str) -> String {
    format!("berth: {message}\n")
}

/// Print `berth: <message>` on the console in one write.
pub fn log(message: &str) {
    write_all(1, format_line(message).as_bytes());
}

/// Write raw bytes to a descriptor, retrying short writes and EINTR, ignoring errors.
pub fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length come from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if n == 0 {
            return;
        }
        bytes = bytes.get(n.unsigned_abs()..).unwrap_or_default();
    }
}

/// `log!("fmt", args)`: format and print one `berth: ` line.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::console::log(&format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_prefix_and_one_newline() {
        assert_eq!(format_line("init started"), "berth: init started\n");
    }

    #[test]
    fn write_all_writes_everything_to_a_pipe() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() fills in.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        write_all(fds[1], b"hello console\n");
        let mut buf = [0u8; 64];
        // SAFETY: reading into a live buffer of the given size.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..n as usize], b"hello console\n");
        // SAFETY: closing the descriptors this test created.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
