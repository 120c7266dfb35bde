//! Time for the supervisor, behind a trait so restart delays and health timing are unit-tested
//! with a fake clock instead of sleeps.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the supervisor reads the time.
pub trait Clock {
    /// Monotonic time, for delays and deadlines.
    fn now(&self) -> Instant;
    /// Wall-clock time in milliseconds since the Unix epoch, for event and log timestamps.
    fn unix_millis(&self) -> u64;
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_millis(&self) -> u64 {
        unix_millis(SystemTime::now())
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone)]
pub struct FakeClock {
    base: Instant,
    offset: Rc<Cell<Duration>>,
}

impl FakeClock {
    /// A fake clock at an arbitrary start.
    pub fn new() -> Self {
        FakeClock {
            base: Instant::now(),
            offset: Rc::new(Cell::new(Duration::ZERO)),
        }
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        self.offset.set(self.offset.get() + by);
    }

    /// Time since the fake clock was created.
    pub fn elapsed(&self) -> Duration {
        self.offset.get()
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.base + self.offset.get()
    }

    fn unix_millis(&self) -> u64 {
        1_700_000_000_000 + u64::try_from(self.offset.get().as_millis()).unwrap_or(u64::MAX)
    }
}
