//! The console contract: one machine-readable line per state change.
//!
//! Boot tests, acceptance checks and operators grep the serial console for these lines, so
//! their wording is an interface: change it only together with `docs/ARCHITECTURE.md`.

use std::fmt;
use std::io::Write;

/// A state change berthd reports on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// berthd is up.
    AgentStarted,
    /// A container's process was started, or (`adopted`) found running when berthd started
    /// and taken over.
    Running {
        container: &'a str,
        pid: i32,
        adopted: bool,
    },
    /// A container's process ended with an exit code (128+N when killed by signal N), and
    /// why when the kernel said so (`oom`: the OOM killer struck in its cgroup).
    Exited {
        container: &'a str,
        code: i32,
        reason: Option<&'a str>,
    },
    /// A container's process is about to be started.
    Created { container: &'a str },
    /// A container ended and is restarted after `delay_ms`; `restarts` counts its restarts.
    Restarting {
        container: &'a str,
        delay_ms: u64,
        restarts: u32,
    },
    /// A container used up `max_restarts` and stays down.
    GaveUp { container: &'a str, restarts: u32 },
    /// A container waits for `waiting` to reach `condition` (`depends_on`).
    Pending {
        container: &'a str,
        waiting: &'a str,
        condition: &'a str,
    },
    /// A container cannot start: `waiting` can no longer reach `condition`.
    Blocked {
        container: &'a str,
        waiting: &'a str,
        condition: &'a str,
        reason: &'a str,
    },
    /// An operator stopped a container.
    Stopped { container: &'a str },
    /// `apply` removed a container.
    Removed { container: &'a str },
    /// A container's health changed (`healthy`/`unhealthy`).
    Health { container: &'a str, health: &'a str },
    /// The host's state: `ok`, or `degraded` with the essential containers that `failed`.
    Host { state: &'a str, failed: &'a str },
    /// A container's log cannot be written (disk full, ...): its output still reaches the
    /// console, but not the log file.
    LogError { container: &'a str, error: String },
    /// A container's log that could not be written (see [`Event::LogError`]) is written again.
    LogResumed { container: &'a str },
    /// The API listens on `at`.
    ApiListening { at: String },
    /// Where the manifest boot applies came from (see `config_source`); `fallback_from`
    /// names the source whose manifest was refused when this one replaces it.
    ManifestSource {
        source: &'a str,
        origin: &'a str,
        fallback_from: Option<&'a str>,
    },
    /// A manifest source was present but its manifest was refused (`error` is located).
    SourceRefused { source: &'a str, error: String },
    /// Every container that should run is running.
    Ready { running: usize, declared: usize },
    /// The manifest (or one of its images) was refused: nothing was started.
    ManifestRejected,
    /// Something went wrong that the operator must see; `what` names where and why.
    Error { what: String },
    /// Something works less well than it should (e.g. no cgroup v2); berthd carries on.
    Warning { what: String },
    /// An example of what to write, following the error it belongs to (the line
    /// `berthctl validate` prints below a manifest error).
    Hint { what: String },
    /// Progress of a registry pull of image `image`.
    Pulling { image: String, what: String },
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::AgentStarted => write!(f, "berth: agent started"),
            Event::Running {
                container,
                pid,
                adopted,
            } => {
                write!(f, "berth: container={container} state=running pid={pid}")?;
                if *adopted {
                    write!(f, " adopted")?;
                }
                Ok(())
            }
            Event::Exited {
                container,
                code,
                reason,
            } => {
                write!(f, "berth: container={container} state=exited code={code}")?;
                match reason {
                    Some(reason) => write!(f, " reason={reason}"),
                    None => Ok(()),
                }
            }
            Event::Created { container } => {
                write!(f, "berth: container={container} state=created")
            }
            Event::Restarting {
                container,
                delay_ms,
                restarts,
            } => write!(
                f,
                "berth: container={container} state=restarting delay_ms={delay_ms} restarts={restarts}"
            ),
            Event::GaveUp {
                container,
                restarts,
            } => write!(
                f,
                "berth: container={container} state=failed restarts={restarts} reason=max-restarts"
            ),
            Event::Pending {
                container,
                waiting,
                condition,
            } => write!(
                f,
                "berth: container={container} state=pending waiting={waiting} condition={condition}"
            ),
            Event::Blocked {
                container,
                waiting,
                condition,
                reason,
            } => write!(
                f,
                "berth: container={container} state=blocked waiting={waiting} condition={condition} reason=\"{reason}\""
            ),
            Event::Stopped { container } => {
                write!(f, "berth: container={container} state=stopped")
            }
            Event::Removed { container } => {
                write!(f, "berth: container={container} state=removed")
            }
            Event::Health { container, health } => {
                write!(f, "berth: container={container} health={health}")
            }
            Event::Host { state, failed } => {
                write!(f, "berth: host state={state}")?;
                if failed.is_empty() {
                    Ok(())
                } else {
                    write!(f, " failed={failed}")
                }
            }
            Event::LogError { container, error } => write!(
                f,
                "berth: error: container={container}: cannot write its log ({error}); its output goes to the console only until the log can be written again"
            ),
            Event::LogResumed { container } => write!(
                f,
                "berth: container={container}: its log is written again"
            ),
            Event::ApiListening { at } => write!(f, "berth: api listening on {at}"),
            Event::ManifestSource {
                source,
                origin,
                fallback_from,
            } => {
                write!(f, "berth: manifest source={source} from={origin}")?;
                match fallback_from {
                    Some(refused) => write!(f, " fallback_from={refused}"),
                    None => Ok(()),
                }
            }
            Event::SourceRefused { source, error } => {
                write!(
                    f,
                    "berth: error: {error} (manifest source={source} refused)"
                )
            }
            Event::Ready { running, declared } => {
                write!(f, "berth: ready containers={running}/{declared}")
            }
            Event::ManifestRejected => {
                write!(f, "berth: manifest rejected, no containers started")
            }
            Event::Error { what } => write!(f, "berth: error: {what}"),
            Event::Warning { what } => write!(f, "berth: warning: {what}"),
            Event::Hint { what } => write!(f, "berth: hint: {what}"),
            Event::Pulling { image, what } => write!(f, "berth: image={image} pull {what}"),
        }
    }
}

/// Print one event line on stdout (berthd's stdout is the console) in a single write.
/// Boot timeline phases an event marks (`berth: timeline ...`, see [`crate::timeline`]) follow
/// its line.
pub fn emit(event: &Event<'_>) {
    emit_line(&event.to_string());
    for line in crate::timeline::after(event) {
        emit_line(&line);
    }
}

/// Print one already formatted contract line (see [`Event`]) in a single write.
pub fn emit_line(text: &str) {
    let line = format!("{text}\n");
    let mut out = std::io::stdout().lock();
    // Nothing sensible can be done when the console itself fails.
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_the_console_contract() {
        assert_eq!(Event::AgentStarted.to_string(), "berth: agent started");
        assert_eq!(
            Event::Running {
                container: "web",
                pid: 42,
                adopted: false,
            }
            .to_string(),
            "berth: container=web state=running pid=42"
        );
        assert_eq!(
            Event::Running {
                container: "web",
                pid: 42,
                adopted: true,
            }
            .to_string(),
            "berth: container=web state=running pid=42 adopted"
        );
        assert_eq!(
            Event::Exited {
                container: "web",
                code: 137,
                reason: None
            }
            .to_string(),
            "berth: container=web state=exited code=137"
        );
        assert_eq!(
            Event::Exited {
                container: "web",
                code: 137,
                reason: Some("oom")
            }
            .to_string(),
            "berth: container=web state=exited code=137 reason=oom"
        );
        assert_eq!(
            Event::LogResumed { container: "web" }.to_string(),
            "berth: container=web: its log is written again"
        );
        assert_eq!(
            Event::Warning {
                what: "no cgroup v2".into()
            }
            .to_string(),
            "berth: warning: no cgroup v2"
        );
        assert_eq!(
            Event::ManifestSource {
                source: "fw_cfg",
                origin: "fw_cfg:opt/berth/manifest",
                fallback_from: None,
            }
            .to_string(),
            "berth: manifest source=fw_cfg from=fw_cfg:opt/berth/manifest"
        );
        assert_eq!(
            Event::ManifestSource {
                source: "state",
                origin: "/var/lib/berth/manifest.toml",
                fallback_from: Some("config-drive"),
            }
            .to_string(),
            "berth: manifest source=state from=/var/lib/berth/manifest.toml fallback_from=config-drive"
        );
        assert_eq!(
            Event::SourceRefused {
                source: "imds",
                error: "imds:x:1:1: bad".into(),
            }
            .to_string(),
            "berth: error: imds:x:1:1: bad (manifest source=imds refused)"
        );
        assert_eq!(
            Event::Ready {
                running: 2,
                declared: 3
            }
            .to_string(),
            "berth: ready containers=2/3"
        );
        assert_eq!(
            Event::Blocked {
                container: "app",
                waiting: "db",
                condition: "healthy",
                reason: "exited code=1"
            }
            .to_string(),
            "berth: container=app state=blocked waiting=db condition=healthy reason=\"exited code=1\""
        );
        assert_eq!(
            Event::Host {
                state: "degraded",
                failed: "db"
            }
            .to_string(),
            "berth: host state=degraded failed=db"
        );
        assert_eq!(
            Event::Host {
                state: "ok",
                failed: ""
            }
            .to_string(),
            "berth: host state=ok"
        );
    }
}
