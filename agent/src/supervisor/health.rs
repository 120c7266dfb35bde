//! The health state machine of one container run: when the next check is due and what a
//! result changes. Checks themselves run off the supervisor's thread (see
//! [`super::Runner::probe`]); this is pure bookkeeping over the supervisor's clock.

use std::time::Instant;

use super::Health;
use crate::manifest::HealthCheck;

/// One run's health checks.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// The check.
    pub check: HealthCheck,
    started: Instant,
    next: Instant,
    failures: u32,
    health: Health,
    in_flight: bool,
}

impl Tracker {
    /// Checks for a run that started at `now`: the first one after `interval`.
    pub fn new(check: HealthCheck, now: Instant) -> Self {
        let next = now + check.interval;
        Tracker {
            check,
            started: now,
            next,
            failures: 0,
            health: Health::Starting,
            in_flight: false,
        }
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// When the next check starts (`None` while one runs).
    pub fn next(&self) -> Option<Instant> {
        (!self.in_flight).then_some(self.next)
    }

    /// Whether a check should start now; if so it counts as started.
    pub fn start_due(&mut self, now: Instant) -> bool {
        if self.in_flight || now < self.next {
            return false;
        }
        self.in_flight = true;
        true
    }

    /// A check ended (`passed`) at `now`; returns the new health when it changed.
    pub fn record(&mut self, passed: bool, now: Instant) -> Option<Health> {
        self.in_flight = false;
        self.next = now + self.check.interval;
        let before = self.health;
        if passed {
            self.failures = 0;
            self.health = Health::Healthy;
        } else if now.saturating_duration_since(self.started) >= self.check.start_period
            || self.health == Health::Healthy
        {
            self.failures += 1;
            if self.failures >= self.check.retries {
                self.health = Health::Unhealthy;
            }
        }
        (self.health != before).then_some(self.health)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manifest::Probe;

    fn check() -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp { port: 80 },
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            retries: 2,
            start_period: Duration::from_secs(5),
        }
    }

    #[test]
    fn checks_are_spaced_by_interval_and_never_overlap() {
        let t0 = Instant::now();
        let mut t = Tracker::new(check(), t0);
        assert_eq!(t.health(), Health::Starting);
        assert!(!t.start_due(t0 + Duration::from_millis(1999)));
        assert!(t.start_due(t0 + Duration::from_secs(2)));
        assert_eq!(t.next(), None);
        assert!(!t.start_due(t0 + Duration::from_secs(10)), "one at a time");
        t.record(true, t0 + Duration::from_secs(3));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn start_period_failures_do_not_count_then_retries_decide() {
        let t0 = Instant::now();
        let mut t = Tracker::new(check(), t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(t.record(false, at(2)), None);
        assert_eq!(t.record(false, at(4)), None);
        assert_eq!(t.health(), Health::Starting);
        assert_eq!(t.record(false, at(6)), None, "1 of 2 retries");
        assert_eq!(t.record(false, at(8)), Some(Health::Unhealthy));
        assert_eq!(t.record(false, at(10)), None);
        assert_eq!(t.record(true, at(12)), Some(Health::Healthy));
        assert_eq!(t.record(false, at(14)), None);
        assert_eq!(t.record(true, at(16)), None, "a pass resets the count");
        assert_eq!(t.record(false, at(18)), None);
        assert_eq!(t.record(false, at(20)), Some(Health::Unhealthy));
    }

    #[test]
    fn a_pass_during_start_period_is_healthy_at_once() {
        let t0 = Instant::now();
        let mut t = Tracker::new(check(), t0);
        assert_eq!(
            t.record(true, t0 + Duration::from_secs(2)),
            Some(Health::Healthy)
        );
    }
}
