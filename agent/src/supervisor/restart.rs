//! Restart decisions: whether an ended container comes back and after how long.
//!
//! Delays grow exponentially (100 ms, doubling, capped at 30 s) with each failed run in a row;
//! a run that lasted [`STABLE_RUN`] resets the count, so a service that crashes once a day
//! restarts quickly, and `max_restarts` counts restarts in a row.

use std::time::Duration;

use crate::manifest::RestartPolicy;

/// The first restart delay.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest restart delay.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run at least this long counts as stable: the next failure starts the delays over.
pub const STABLE_RUN: Duration = Duration::from_secs(10);

/// The delay before restart number `attempt` in a row (1-based): 100 ms, 200 ms, 400 ms, ...
/// up to [`MAX_DELAY`].
pub fn delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    FIRST_DELAY.saturating_mul(1u32 << doublings).min(MAX_DELAY)
}

/// What happens after a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It stays down: the policy does not restart it.
    Stay,
    /// It is restarted after `delay`; it is restart number `attempt` in a row.
    Restart {
        /// Time until the restart.
        delay: Duration,
        /// Restarts in a row, this one included.
        attempt: u32,
    },
    /// The policy would restart it, but it already restarted `max_restarts` times in a row.
    GiveUp,
}

/// Decide for a process that ended with `code` after `in_a_row` restarts in a row (already
/// reset when its run was stable).
pub fn decide(
    policy: RestartPolicy,
    max_restarts: Option<u32>,
    code: i32,
    in_a_row: u32,
) -> Decision {
    if !policy.restarts_after(code) {
        return Decision::Stay;
    }
    if max_restarts.is_some_and(|max| in_a_row >= max) {
        return Decision::GiveUp;
    }
    let attempt = in_a_row.saturating_add(1);
    Decision::Restart {
        delay: delay(attempt),
        attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_100ms_and_cap_at_30s() {
        let ms: Vec<u128> = (1..=12).map(|n| delay(n).as_millis()).collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        assert_eq!(delay(0), FIRST_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn policies_and_limits() {
        use RestartPolicy::*;
        assert_eq!(decide(No, None, 1, 0), Decision::Stay);
        assert_eq!(decide(OnFailure, None, 0, 0), Decision::Stay);
        assert_eq!(
            decide(OnFailure, None, 1, 0),
            Decision::Restart {
                delay: FIRST_DELAY,
                attempt: 1
            }
        );
        assert_eq!(
            decide(Always, Some(3), 0, 2),
            Decision::Restart {
                delay: Duration::from_millis(400),
                attempt: 3
            }
        );
        assert_eq!(decide(Always, Some(3), 0, 3), Decision::GiveUp);
        assert_eq!(decide(OnFailure, Some(0), 1, 0), Decision::GiveUp);
    }
}
