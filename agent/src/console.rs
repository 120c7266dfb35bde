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
    /// A container's process was started.
    Running { container: &'a str, pid: i32 },
    /// A container's process ended with an exit code (128+N when killed by signal N), and
    /// why when the kernel said so (`oom`: the OOM killer struck in its cgroup).
    Exited {
        container: &'a str,
        code: i32,
        reason: Option<&'a str>,
    },
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
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::AgentStarted => write!(f, "berth: agent started"),
            Event::Running { container, pid } => {
                write!(f, "berth: container={container} state=running pid={pid}")
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
        }
    }
}

/// Print one event line on stdout (berthd's stdout is the console) in a single write.
/// Boot timeline phases an event marks (`berth: timeline ...`, see [`crate::timeline`]) follow
/// its line.
pub fn emit(event: &Event<'_>) {
    write_line(&event.to_string());
    for line in crate::timeline::after(event) {
        write_line(&line);
    }
}

/// Print one line (a newline is added) on stdout in a single write.
pub fn write_line(line: &str) {
    let line = format!("{line}\n");
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
                pid: 42
            }
            .to_string(),
            "berth: container=web state=running pid=42"
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
    }
}
