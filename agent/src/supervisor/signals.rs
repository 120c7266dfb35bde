//! Synchronous signal handling for berthd: SIGTERM/SIGINT/SIGCHLD are blocked in every thread
//! and collected with `sigtimedwait`, so no async handler ever runs.

use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// The blocked set berthd waits on.
#[derive(Debug)]
pub struct Signals {
    set: SigSet,
}

impl Signals {
    /// Block SIGTERM, SIGINT and SIGCHLD in the calling thread. Call it before starting any
    /// thread so every thread inherits the mask (children get a clean mask at exec).
    pub fn block() -> nix::Result<Signals> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set.add(Signal::SIGCHLD);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        Ok(Signals { set })
    }

    /// Wait up to `timeout` for one of the signals; `None` on timeout or interruption.
    pub fn wait(&self, timeout: Duration) -> Option<Signal> {
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: the set and timespec are valid for the call; a null siginfo is allowed.
        let signo = unsafe { libc::sigtimedwait(self.set.as_ref(), std::ptr::null_mut(), &ts) };
        if signo < 0 {
            return None;
        }
        Signal::try_from(signo).ok()
    }

    /// Whether `signal` asks berthd to stop.
    pub fn is_shutdown(signal: Signal) -> bool {
        matches!(signal, Signal::SIGTERM | Signal::SIGINT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_signals() {
        assert!(Signals::is_shutdown(Signal::SIGTERM));
        assert!(Signals::is_shutdown(Signal::SIGINT));
        assert!(!Signals::is_shutdown(Signal::SIGCHLD));
    }

    #[test]
    fn a_blocked_signal_sent_to_this_thread_is_collected() {
        // Runs on its own test thread: block, raise at this thread, collect.
        let signals = Signals::block().unwrap();
        // SAFETY: sending a signal to the calling thread; it is blocked, so no handler runs.
        let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGINT) };
        assert_eq!(rc, 0);
        assert_eq!(signals.wait(Duration::from_secs(5)), Some(Signal::SIGINT));
        assert_eq!(signals.wait(Duration::from_millis(10)), None);
    }
}
