//! `depends_on`: whether a container's dependencies let it start, and if not, what it waits
//! for or why it never will. Pure over a [`DepView`] of each dependency, so the rules are
//! unit-tested without processes.

use std::collections::BTreeMap;

use crate::manifest::Condition;

/// What the supervisor knows about a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DepView {
    /// Its process was started at least once.
    pub started_once: bool,
    /// Its process runs now.
    pub running: bool,
    /// It runs and its health check passed (or it has none).
    pub healthy: bool,
    /// It is down for good (no restart coming) with this exit code.
    pub final_exit: Option<i32>,
    /// It cannot start itself (its own dependency failed).
    pub blocked: bool,
}

/// Whether a container may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepStatus {
    /// Every dependency reached its condition.
    Ready,
    /// `on` has not reached `condition` yet.
    Waiting {
        /// The dependency.
        on: String,
        /// Its condition.
        condition: Condition,
    },
    /// `on` can no longer reach `condition` (until an operator starts it again).
    Blocked {
        /// The dependency.
        on: String,
        /// Its condition.
        condition: Condition,
        /// Why.
        reason: String,
    },
}

/// Evaluate `deps` (in name order; the first unmet one is reported) with `view` giving each
/// dependency's state (`None`: not declared, e.g. removed by `apply`).
pub fn evaluate(
    deps: &BTreeMap<String, Condition>,
    view: impl Fn(&str) -> Option<DepView>,
) -> DepStatus {
    for (on, &condition) in deps {
        let blocked = |reason: String| DepStatus::Blocked {
            on: on.clone(),
            condition,
            reason,
        };
        let Some(v) = view(on) else {
            return blocked("not declared".into());
        };
        if v.blocked {
            return blocked("it is blocked itself".into());
        }
        let met = match condition {
            Condition::Started => v.started_once,
            Condition::Healthy => v.running && v.healthy,
            Condition::Completed => v.final_exit == Some(0),
        };
        if met {
            continue;
        }
        return match v.final_exit {
            Some(code) if !(condition == Condition::Started && v.started_once) => {
                blocked(format!("exited code={code}"))
            }
            _ => DepStatus::Waiting {
                on: on.clone(),
                condition,
            },
        };
    }
    DepStatus::Ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(list: &[(&str, Condition)]) -> BTreeMap<String, Condition> {
        list.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn conditions() {
        let running = DepView {
            started_once: true,
            running: true,
            healthy: false,
            ..DepView::default()
        };
        let d = deps(&[("db", Condition::Started)]);
        assert_eq!(evaluate(&d, |_| Some(running)), DepStatus::Ready);
        let d = deps(&[("db", Condition::Healthy)]);
        assert_eq!(
            evaluate(&d, |_| Some(running)),
            DepStatus::Waiting {
                on: "db".into(),
                condition: Condition::Healthy
            }
        );
        let healthy = DepView {
            healthy: true,
            ..running
        };
        assert_eq!(evaluate(&d, |_| Some(healthy)), DepStatus::Ready);
        let done = DepView {
            started_once: true,
            final_exit: Some(0),
            ..DepView::default()
        };
        let d = deps(&[("migrate", Condition::Completed)]);
        assert_eq!(evaluate(&d, |_| Some(done)), DepStatus::Ready);
        assert!(matches!(
            evaluate(&d, |_| Some(running)),
            DepStatus::Waiting { .. }
        ));
    }

    #[test]
    fn failures_block_with_a_reason() {
        let failed = DepView {
            started_once: true,
            final_exit: Some(3),
            ..DepView::default()
        };
        let d = deps(&[("migrate", Condition::Completed)]);
        assert_eq!(
            evaluate(&d, |_| Some(failed)),
            DepStatus::Blocked {
                on: "migrate".into(),
                condition: Condition::Completed,
                reason: "exited code=3".into()
            }
        );
        // Once started, "started" stays met even after the dependency ended.
        let d = deps(&[("db", Condition::Started)]);
        assert_eq!(evaluate(&d, |_| Some(failed)), DepStatus::Ready);
        let never = DepView {
            final_exit: Some(127),
            ..DepView::default()
        };
        assert!(matches!(
            evaluate(&d, |_| Some(never)),
            DepStatus::Blocked { .. }
        ));
        assert!(
            matches!(evaluate(&d, |_| None), DepStatus::Blocked { reason, .. } if reason == "not declared")
        );
        let chained = DepView {
            blocked: true,
            ..DepView::default()
        };
        assert!(matches!(
            evaluate(&d, |_| Some(chained)),
            DepStatus::Blocked { .. }
        ));
    }

    #[test]
    fn the_first_unmet_dependency_is_reported() {
        let d = deps(&[("a", Condition::Started), ("b", Condition::Started)]);
        let status = evaluate(&d, |n| {
            Some(DepView {
                started_once: n == "a",
                ..DepView::default()
            })
        });
        assert_eq!(
            status,
            DepStatus::Waiting {
                on: "b".into(),
                condition: Condition::Started
            }
        );
    }
}
