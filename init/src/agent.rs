//! Supervision of the agent (`berthd`): restart with exponential backoff.
//!
//! The supervisor is a pure state machine over a monotonic clock; the main loop feeds it reaped
//! exits and asks it when to spawn next, so the backoff is unit-tested without processes.

use std::time::Duration;

/// First restart delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Largest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A run at least this long resets the delay to [`BACKOFF_INITIAL`].
pub const STABLE_RUN: Duration = Duration::from_secs(10);

/// Exponential restart delay: 100 ms doubling up to 5 s, reset after a stable run.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    /// The delay before the next start, given how long the last run lasted.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= STABLE_RUN {
            self.next = BACKOFF_INITIAL;
        }
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Where the agent is in its life cycle. Times are monotonic clock readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// Start it as soon as possible (at boot).
    NotStarted,
    /// Running since `since`.
    Running {
        /// Process ID.
        pid: i32,
        /// When it was started.
        since: Duration,
    },
    /// Waiting to be restarted at `at`.
    Backoff {
        /// When to start it again.
        at: Duration,
    },
}

/// The agent's supervisor.
#[derive(Debug, Clone)]
pub struct Supervisor {
    state: AgentState,
    backoff: Backoff,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            state: AgentState::NotStarted,
            backoff: Backoff::default(),
        }
    }
}

impl Supervisor {
    /// The current state.
    #[cfg(test)]
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// The running agent's PID.
    pub fn pid(&self) -> Option<i32> {
        match self.state {
            AgentState::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Whether the agent should be (re)started now.
    pub fn start_due(&self, now: Duration) -> bool {
        match self.state {
            AgentState::NotStarted => true,
            AgentState::Backoff { at } => now >= at,
            AgentState::Running { .. } => false,
        }
    }

    /// How long the main loop may sleep before [`Supervisor::start_due`] turns true.
    pub fn wait_hint(&self, now: Duration) -> Option<Duration> {
        match self.state {
            AgentState::NotStarted => Some(Duration::ZERO),
            AgentState::Backoff { at } => Some(at.saturating_sub(now)),
            AgentState::Running { .. } => None,
        }
    }

    /// Record a successful start.
    pub fn started(&mut self, pid: i32, now: Duration) {
        self.state = AgentState::Running { pid, since: now };
    }

    /// Record a failed start; returns the delay before the next try.
    pub fn start_failed(&mut self, now: Duration) -> Duration {
        let delay = self.backoff.next_delay(Duration::ZERO);
        self.state = AgentState::Backoff { at: now + delay };
        delay
    }

    /// Record that `pid` was reaped. Returns the restart delay if it was the agent.
    pub fn reaped(&mut self, pid: i32, now: Duration) -> Option<Duration> {
        let AgentState::Running { pid: agent, since } = self.state else {
            return None;
        };
        if agent != pid {
            return None;
        }
        let delay = self.backoff.next_delay(now.saturating_sub(since));
        self.state = AgentState::Backoff { at: now + delay };
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::default();
        let seq: Vec<u64> = (0..9)
            .map(|_| b.next_delay(ms(10)).as_millis() as u64)
            .collect();
        assert_eq!(seq, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn backoff_resets_after_a_stable_run() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(ms(1));
        }
        assert_eq!(b.next_delay(ms(9_999)), ms(3200));
        assert_eq!(b.next_delay(Duration::from_secs(10)), ms(100));
        assert_eq!(b.next_delay(ms(1)), ms(200));
    }

    #[test]
    fn supervisor_restarts_after_the_delay() {
        let mut s = Supervisor::default();
        assert!(s.start_due(ms(0)));
        s.started(42, ms(0));
        assert_eq!(s.pid(), Some(42));
        assert!(!s.start_due(ms(1)));
        assert_eq!(s.wait_hint(ms(1)), None);
        // Some other orphan exiting is not the agent.
        assert_eq!(s.reaped(7, ms(5)), None);
        assert_eq!(s.reaped(42, ms(50)), Some(ms(100)));
        assert_eq!(s.pid(), None);
        assert!(!s.start_due(ms(149)));
        assert_eq!(s.wait_hint(ms(120)), Some(ms(30)));
        assert!(s.start_due(ms(150)));
        s.started(43, ms(150));
        assert_eq!(s.reaped(43, ms(160)), Some(ms(200)));
        assert_eq!(s.start_failed(ms(400)), ms(400));
        assert_eq!(s.state(), &AgentState::Backoff { at: ms(800) });
        s.started(44, ms(800));
        // Ran for 10 s: the delay resets.
        assert_eq!(s.reaped(44, ms(10_800)), Some(ms(100)));
    }
}
