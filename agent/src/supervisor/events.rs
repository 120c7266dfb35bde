//! Structured events: every state change of a container or of the host, kept in a bounded
//! history (for `berthctl events`), sent to live subscribers (`berthctl events -f`) and
//! printed as a console-contract line.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::console;
use crate::manifest::Condition;

/// Events kept for `berthctl events` (older ones are dropped).
pub const HISTORY: usize = 1000;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum EventKind {
    /// Its process is about to be started.
    Created,
    /// Its process runs.
    Running {
        /// Host pid.
        pid: i32,
        /// It was already running when berthd started (re-adopted after a berthd restart).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        adopted: bool,
    },
    /// Its process ended (or never started).
    Exited {
        /// Exit code, 128+N when killed by signal N.
        code: i32,
        /// `oom` when the OOM killer ended it.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// It will be restarted after `delay_ms`.
    Restarting {
        /// Delay before the restart.
        delay_ms: u64,
        /// Restarts so far, this one included.
        restarts: u32,
    },
    /// It kept failing: `max_restarts` restarts in a row were used up.
    Failed {
        /// Restarts so far.
        restarts: u32,
    },
    /// It waits for a dependency to reach a condition.
    Pending {
        /// The dependency.
        waiting: String,
        /// The condition it must reach.
        condition: Condition,
    },
    /// It cannot start: a dependency can no longer reach its condition.
    Blocked {
        /// The dependency.
        waiting: String,
        /// The condition it cannot reach.
        condition: Condition,
        /// Why (e.g. `exited code=1`).
        reason: String,
    },
    /// An operator stopped it; it stays down until started.
    Stopped,
    /// Its health check passed.
    Healthy,
    /// Its health check failed `retries` times in a row.
    Unhealthy,
    /// It was removed by `apply`.
    Removed,
    /// The host's state: `ok` or `degraded` (an essential container failed).
    Host {
        /// `ok` or `degraded`.
        host: String,
        /// The essential containers that failed.
        failed: Vec<String>,
    },
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, from 1, increasing.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The container, absent for host events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// The console-contract line for this event.
    pub fn console_line(&self) -> String {
        self.with_console_event(|e| e.to_string())
    }

    /// Print the event on the console through [`console::emit`], so the lines derived from
    /// events (the boot timeline) follow it.
    pub fn emit(&self) {
        self.with_console_event(console::emit);
    }

    /// Call `f` with this event as a console-contract event.
    fn with_console_event<R>(&self, f: impl FnOnce(&console::Event<'_>) -> R) -> R {
        let name = self.container.as_deref().unwrap_or("");
        let failed;
        let line = match &self.kind {
            EventKind::Created => console::Event::Created { container: name },
            EventKind::Running { pid, adopted } => console::Event::Running {
                container: name,
                pid: *pid,
                adopted: *adopted,
            },
            EventKind::Exited { code, reason } => console::Event::Exited {
                container: name,
                code: *code,
                reason: reason.as_deref(),
            },
            EventKind::Restarting { delay_ms, restarts } => console::Event::Restarting {
                container: name,
                delay_ms: *delay_ms,
                restarts: *restarts,
            },
            EventKind::Failed { restarts } => console::Event::GaveUp {
                container: name,
                restarts: *restarts,
            },
            EventKind::Pending { waiting, condition } => console::Event::Pending {
                container: name,
                waiting,
                condition: condition.as_str(),
            },
            EventKind::Blocked {
                waiting,
                condition,
                reason,
            } => console::Event::Blocked {
                container: name,
                waiting,
                condition: condition.as_str(),
                reason,
            },
            EventKind::Stopped => console::Event::Stopped { container: name },
            EventKind::Healthy => console::Event::Health {
                container: name,
                health: "healthy",
            },
            EventKind::Unhealthy => console::Event::Health {
                container: name,
                health: "unhealthy",
            },
            EventKind::Removed => console::Event::Removed { container: name },
            EventKind::Host { host, failed: list } => {
                failed = list.join(",");
                console::Event::Host {
                    state: host,
                    failed: &failed,
                }
            }
        };
        f(&line)
    }
}

/// The history and the live subscribers.
#[derive(Debug, Default)]
pub struct Events {
    seq: u64,
    history: VecDeque<Event>,
    subscribers: Vec<UnboundedSender<Event>>,
    /// Print each event's console line (off in unit tests that count lines themselves).
    pub quiet: bool,
}

impl Events {
    /// Record an event: history, subscribers (dropped when gone), console.
    pub fn record(&mut self, time_ms: u64, container: Option<&str>, kind: EventKind) {
        self.seq += 1;
        let event = Event {
            seq: self.seq,
            time_ms,
            container: container.map(str::to_owned),
            kind,
        };
        if !self.quiet {
            event.emit();
        }
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event);
    }

    /// Events kept so far, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Event> {
        self.history.iter()
    }

    /// Receive every future event on `tx`.
    pub fn subscribe(&mut self, tx: UnboundedSender<Event>) {
        self.subscribers.push(tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_kept_and_sent() {
        let mut events = Events {
            quiet: true,
            ..Events::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        events.record(5, Some("web"), EventKind::Created);
        events.subscribe(tx);
        events.record(
            6,
            Some("web"),
            EventKind::Restarting {
                delay_ms: 200,
                restarts: 2,
            },
        );
        let seqs: Vec<u64> = events.history().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2]);
        let live = rx.try_recv().unwrap();
        assert_eq!(live.seq, 2);
        assert_eq!(
            live.console_line(),
            "berth: container=web state=restarting delay_ms=200 restarts=2"
        );
        let json = serde_json::to_value(&live).unwrap();
        assert_eq!(json["state"], "restarting");
        assert_eq!(json["delay_ms"], 200);
        assert_eq!(json["container"], "web");
        drop(rx);
        events.record(7, None, EventKind::Stopped);
        events.record(8, None, EventKind::Stopped);
        assert!(events.subscribers.is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let mut events = Events {
            quiet: true,
            ..Events::default()
        };
        for i in 0..(HISTORY as u64 + 5) {
            events.record(i, None, EventKind::Stopped);
        }
        assert_eq!(events.history().count(), HISTORY);
        assert_eq!(events.history().next().map(|e| e.seq), Some(6));
    }
}
