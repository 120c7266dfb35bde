//! berthd's HTTP/JSON API: the types both ends share, the server ([`server`], inside berthd)
//! and the client ([`client`], used by `berthctl`).
//!
//! The API is versioned in its paths (`/v1/...`); docs/api.md is its reference. The server
//! never touches the supervisor's state itself: each request becomes a [`Command`] sent to the
//! supervisor's loop, which answers with a [`Reply`] (see `supervisor::control`), so the
//! supervisor stays single-threaded.

pub mod body;
pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::exec::ExecConfig;
use crate::supervisor::events::Event;

/// The API version in every path (`/v1/...`).
pub const VERSION: u32 = 1;

/// Where berthd listens by default.
pub const DEFAULT_SOCKET: &str = "/run/berth/api.sock";

/// The header carrying the token of the remote (TCP) API: `Authorization: Bearer TOKEN`.
pub const AUTHORIZATION: &str = "authorization";

/// `GET /v1/containers`: the host and every container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostStatus {
    /// `ok`, or `degraded` when an essential container fails.
    pub host: String,
    /// The failing essential containers.
    pub failed: Vec<String>,
    /// Every container, in start order.
    pub containers: Vec<ContainerStatus>,
    /// Processes on the host (every PID namespace), when `/proc` could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// Of those, zombies: exited but not yet reaped by their parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zombies: Option<u64>,
    /// berthd's resident memory in KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_rss_kib: Option<u64>,
}

/// One container as `berthctl ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStatus {
    /// Container name.
    pub name: String,
    /// The `[images]` entry it runs.
    pub image: String,
    /// `pending`, `running`, `restarting`, `exited`, `failed` or `stopped`.
    pub state: String,
    /// `-` (no health check), `starting`, `healthy` or `unhealthy`.
    pub health: String,
    /// Host pid while running.
    pub pid: Option<i32>,
    /// Restarts since it was first started (kept when a restarted berthd re-adopts it).
    pub restarts: u32,
    /// Start of the current run, milliseconds since the Unix epoch.
    pub started_ms: Option<u64>,
    /// How the last run ended.
    pub exit_code: Option<i32>,
    /// While pending: what it waits for, or why it cannot start.
    pub waiting: Option<String>,
    /// Its restart policy.
    pub restart: String,
    /// Whether its failure degrades the host.
    pub essential: bool,
    /// Its address, when it has its own network.
    pub ip: Option<String>,
    /// Published ports (`HOST:CONTAINER/PROTO`).
    pub ports: Vec<String>,
}

/// `GET /v1/containers/NAME`: the status plus how it is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDetail {
    /// What `ps` shows.
    pub status: ContainerStatus,
    /// The process: argv.
    pub args: Vec<String>,
    /// The process environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// UTS hostname.
    pub hostname: String,
    /// `depends_on`: name -> condition.
    pub depends_on: BTreeMap<String, String>,
    /// `max_restarts`.
    pub max_restarts: Option<u32>,
    /// Its stop signal.
    pub stop_signal: String,
    /// Its log file on the host.
    pub log_path: PathBuf,
    /// `log_max_size`.
    pub log_max_size: u64,
    /// `log_files`.
    pub log_files: u32,
}

/// An error body: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}

/// What `POST /v1/apply` and `POST /v1/diff` report.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyReport {
    /// Containers that would be / were added.
    pub added: Vec<String>,
    /// Containers that would be / were replaced (their spec or image changed).
    pub changed: Vec<String>,
    /// Containers that would be / were stopped and removed.
    pub removed: Vec<String>,
    /// Containers left as they are.
    pub unchanged: Vec<String>,
    /// Whether the change was made (false for `diff`).
    pub applied: bool,
}

/// `POST /v1/containers/NAME/exec`: a command to run in the container (output collected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// argv.
    pub args: Vec<String>,
    /// Kill it after this long (default and maximum: 10 minutes).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// What an exec through the API produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecResult {
    /// Its exit code (`null` when it was killed at its timeout).
    pub exit_code: Option<i32>,
    /// Its standard output (UTF-8, invalid bytes replaced).
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// A power request to PID 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Stop everything and power off.
    PowerOff,
    /// Stop everything and reboot.
    Reboot,
}

/// A request for the supervisor's loop.
#[derive(Debug)]
pub enum Command {
    /// The host and every container.
    List,
    /// One container in detail.
    Inspect(String),
    /// Start a container that is down.
    Start(String),
    /// Stop a container.
    Stop(String),
    /// Stop and start a container.
    Restart(String),
    /// The event history, and every later event on the channel when following.
    Events {
        /// Keep sending new events.
        follow: Option<mpsc::UnboundedSender<Event>>,
    },
    /// Where a container's log is and how many files it keeps.
    LogPath(String),
    /// Reconcile with a new manifest (text, file name for errors); `apply: false` only
    /// reports what would change.
    Apply {
        /// The manifest text.
        text: String,
        /// Make the change (else only report).
        apply: bool,
    },
    /// Ask PID 1 to power off or reboot.
    Power(Power),
    /// Where to run a command in a running container (pid, env, cwd).
    ExecTarget(String),
}

/// The supervisor's answer.
#[derive(Debug)]
pub enum Reply {
    /// For [`Command::List`].
    Host(HostStatus),
    /// For [`Command::Inspect`].
    Container(Box<ContainerDetail>),
    /// For [`Command::Events`]: the history.
    Events(Vec<Event>),
    /// For [`Command::LogPath`]: the live file and how many files are kept.
    LogPath(PathBuf, u32),
    /// For [`Command::Apply`].
    Applied(ApplyReport),
    /// For [`Command::ExecTarget`].
    ExecTarget(ExecConfig),
    /// The request was carried out.
    Done,
    /// No such container.
    NotFound(String),
    /// The request is invalid (e.g. a manifest that fails validation).
    Invalid(String),
    /// The request is valid but cannot be carried out now.
    Conflict(String),
}

/// A request and where its answer goes.
pub type Envelope = (Command, oneshot::Sender<Reply>);
