//! How a container is supervised: `restart`, `max_restarts`, `depends_on`, `essential`,
//! `log_max_size`, `log_files`.
//!
//! The value parsers are pure, like [`super::limits`]; `validate.rs` adds locations. The
//! dependency graph check ([`dependency_problems`]) runs once every container is known, since
//! a dependency may be declared below its dependent.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Default size of a container's log file before it is rotated (10 MiB).
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Default number of log files kept per container (the live one plus rotated ones).
pub const DEFAULT_LOG_FILES: u32 = 3;
/// Smallest `log_max_size` accepted (4 KiB): a rotation per line would lose context.
pub const MIN_LOG_MAX_SIZE: u64 = 4096;
/// Largest `log_files` accepted.
pub const MAX_LOG_FILES: u32 = 100;

/// `restart`: what happens when the container's process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restarted (the default): a one-shot or a service that must not come back.
    #[default]
    No,
    /// Restarted when it exits with a non-zero code (or is killed).
    OnFailure,
    /// Restarted whenever it exits, until it is stopped.
    Always,
}

impl RestartPolicy {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }

    /// Whether a process that ended with `code` is restarted under this policy.
    pub fn restarts_after(self, code: i32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Always => true,
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `depends_on` condition: what the dependency must reach before the dependent starts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// Its process was started.
    Started,
    /// Its health check passed (a container without a health check counts as healthy once
    /// it runs).
    Healthy,
    /// It exited with code 0 (one-shot containers: migrations, bootstrap).
    Completed,
}

impl Condition {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Healthy => "healthy",
            Condition::Completed => "completed",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a container's output goes on disk and how much of it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// Rotate the log file once it reaches this many bytes.
    pub max_size: u64,
    /// Files kept: `log`, `log.1`, ... `log.(files-1)`.
    pub files: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            max_size: DEFAULT_LOG_MAX_SIZE,
            files: DEFAULT_LOG_FILES,
        }
    }
}

/// Default time between health checks.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// Default time a health check may take.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default failures in a row that make a container unhealthy.
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;

/// `healthcheck`: how and how often berthd checks that a container works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What is checked.
    pub probe: Probe,
    /// Time between checks (and before the first one).
    pub interval: Duration,
    /// Time one check may take before it counts as failed.
    pub timeout: Duration,
    /// Failures in a row that make it unhealthy.
    pub retries: u32,
    /// Failures during this time after a start do not count.
    pub start_period: Duration,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Probe {
    /// Run `command` inside the container's namespaces; exit code 0 passes.
    Exec {
        /// argv.
        command: Vec<String>,
    },
    /// Connect to TCP `port` on the container's address.
    Tcp {
        /// Port.
        port: u16,
    },
    /// `GET path` on `port`; the answer's status must be `status`.
    Http {
        /// Port.
        port: u16,
        /// Request path.
        path: String,
        /// Expected status.
        status: u16,
    },
}

/// A health check `port`: 1-65535.
pub fn port(value: i64) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {value} is not a TCP port; write a number from 1 to 65535"))
}

/// A health check `status`: 100-599.
pub fn http_status(value: i64) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("status {value} is not an HTTP status; write e.g. status = 200"))
}

/// A health check `retries`: 1 or more.
pub fn retries(value: i64) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|r| *r > 0)
        .ok_or_else(|| format!("retries is {value}; write how many failures in a row make it unhealthy, 1 or more (e.g. retries = 3)"))
}

/// `restart = "no" | "on-failure" | "always"`.
pub fn restart(text: &str) -> Result<RestartPolicy, String> {
    match text {
        "no" => Ok(RestartPolicy::No),
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "always" => Ok(RestartPolicy::Always),
        "unless-stopped" => Err(
            "`restart = \"unless-stopped\"` is Docker's; berth's \"always\" already stays stopped after `berthctl stop`: write restart = \"always\"".to_owned(),
        ),
        "on_failure" | "onfailure" | "on-error" => Err(format!(
            "unknown restart policy {text:?}; did you mean \"on-failure\"?"
        )),
        _ => Err(format!(
            "unknown restart policy {text:?}; write restart = \"no\", \"on-failure\" or \"always\""
        )),
    }
}

/// `max_restarts`: a non-negative integer.
pub fn max_restarts(value: i64) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| {
        format!("`max_restarts` is {value}; write a whole number from 0 (never restart) up, e.g. max_restarts = 5")
    })
}

/// A `depends_on` condition.
pub fn condition(text: &str) -> Result<Condition, String> {
    match text {
        "started" => Ok(Condition::Started),
        "healthy" => Ok(Condition::Healthy),
        "completed" => Ok(Condition::Completed),
        "service_started" | "service_healthy" | "service_completed_successfully" => {
            let ours = match text {
                "service_started" => "started",
                "service_healthy" => "healthy",
                _ => "completed",
            };
            Err(format!(
                "{text:?} is Docker Compose's spelling; write \"{ours}\""
            ))
        }
        _ => Err(format!(
            "unknown dependency condition {text:?}; write \"started\", \"healthy\" or \"completed\""
        )),
    }
}

/// `log_max_size`: `"10Mi"`, `"512K"`, or a number of bytes; at least [`MIN_LOG_MAX_SIZE`].
pub fn log_max_size(value: &toml::Value) -> Result<u64, String> {
    let hint =
        "write a size such as \"10Mi\" (suffixes K, M, G or Ki, Mi, Gi) or a number of bytes";
    let bytes = match value {
        toml::Value::Integer(n) => {
            u64::try_from(*n).map_err(|_| format!("`log_max_size` is {n}; {hint}"))?
        }
        toml::Value::String(text) => {
            let trimmed = text.trim();
            let split = trimmed
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(trimmed.len());
            let (digits, unit) = trimmed.split_at(split);
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("`log_max_size` {text:?} is not a size; {hint}"))?;
            let multiplier = super::limits::size_unit(unit).ok_or_else(|| {
                format!("`log_max_size` {text:?} has an unknown unit {unit:?}; {hint}")
            })?;
            n.checked_mul(multiplier)
                .ok_or_else(|| format!("`log_max_size` {text:?} is too large; {hint}"))?
        }
        other => {
            return Err(format!(
                "`log_max_size` must be a string or an integer, found {} `{other}`; {hint}",
                other.type_str()
            ))
        }
    };
    if bytes < MIN_LOG_MAX_SIZE {
        return Err(format!(
            "`log_max_size` is {bytes} bytes; the minimum is {MIN_LOG_MAX_SIZE} bytes, write e.g. \"1Mi\""
        ));
    }
    Ok(bytes)
}

/// `log_files`: 1 to [`MAX_LOG_FILES`].
pub fn log_files(value: i64) -> Result<u32, String> {
    match u32::try_from(value) {
        Ok(n) if (1..=MAX_LOG_FILES).contains(&n) => Ok(n),
        _ => Err(format!(
            "`log_files` is {value}; write a number of files from 1 (only the live log) to {MAX_LOG_FILES}, e.g. log_files = 3"
        )),
    }
}

/// One `depends_on` entry as written, for the graph check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge<'a> {
    /// The dependent container.
    pub from: &'a str,
    /// The container it waits for.
    pub to: &'a str,
    /// The condition.
    pub condition: Condition,
    /// The target's restart policy, when it is declared.
    pub to_restart: Option<RestartPolicy>,
}

/// A graph problem: the index of the edge to point at and the message.
pub type Problem = (usize, String);

/// Check the dependency graph: every target declared, no self-dependency, no cycle, and no
/// `completed` condition on a container that never completes (`restart = "always"`). Each
/// problem names the edge (its index in `edges`) where it is best reported.
pub fn dependency_problems(edges: &[Edge<'_>], declared: &[&str]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, e) in edges.iter().enumerate() {
        if e.from == e.to {
            problems.push((
                i,
                format!(
                    "container {:?} depends on itself; remove {:?} from its depends_on",
                    e.from, e.to
                ),
            ));
        } else if !declared.contains(&e.to) {
            let list = declared
                .iter()
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            problems.push((
                i,
                format!(
                    "container {:?} depends on {:?}, which is not declared; declared containers: {list}",
                    e.from, e.to
                ),
            ));
        } else if e.condition == Condition::Completed && e.to_restart == Some(RestartPolicy::Always)
        {
            problems.push((
                i,
                format!(
                    "container {:?} waits for {:?} to complete, but {:?} has restart = \"always\" and never completes; use \"started\"/\"healthy\", or give {:?} restart = \"no\" or \"on-failure\"",
                    e.from, e.to, e.to, e.to
                ),
            ));
        }
    }
    if let Some(cycle) = find_cycle(edges) {
        let names: Vec<&str> = cycle.iter().map(|&i| edges[i].from).collect();
        let mut path = names.join(" -> ");
        if let Some(first) = names.first() {
            path.push_str(" -> ");
            path.push_str(first);
        }
        let last = cycle.last().copied().unwrap_or_default();
        problems.push((
            last,
            format!(
                "depends_on forms a cycle: {path}; no container of it could ever start, remove one of these dependencies"
            ),
        ));
    }
    problems
}

/// The edges of one cycle (in walking order), if the graph has one.
fn find_cycle(edges: &[Edge<'_>]) -> Option<Vec<usize>> {
    let mut out: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in edges.iter().enumerate() {
        if e.from != e.to {
            out.entry(e.from).or_default().push(i);
        }
    }
    // 0 unvisited, 1 on the stack, 2 done.
    let mut mark: BTreeMap<&str, u8> = BTreeMap::new();
    let nodes: Vec<&str> = out.keys().copied().collect();
    for start in nodes {
        if mark.get(start).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut path: Vec<usize> = Vec::new();
        // (node, next outgoing edge index)
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        mark.insert(start, 1);
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let outgoing = out.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&edge) = outgoing.get(*next) {
                *next += 1;
                let to = edges[edge].to;
                match mark.get(to).copied().unwrap_or(0) {
                    0 => {
                        mark.insert(to, 1);
                        path.push(edge);
                        stack.push((to, 0));
                    }
                    1 => {
                        // The cycle starts at the first path edge leaving `to`.
                        path.push(edge);
                        let begin = path.iter().position(|&e| edges[e].from == to).unwrap_or(0);
                        return Some(path[begin..].to_vec());
                    }
                    _ => {}
                }
            } else {
                mark.insert(node, 2);
                stack.pop();
                path.pop();
            }
        }
    }
    None
}

/// Container names in an order where every dependency comes before its dependents, otherwise
/// in the given order. Containers in a cycle (refused by validation) come last.
pub fn start_order<'a>(names: &[&'a str], deps: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<&'a str> {
    let mut order: Vec<&str> = Vec::with_capacity(names.len());
    let mut left: Vec<&str> = names.to_vec();
    while !left.is_empty() {
        let ready = left.iter().position(|n| {
            deps.get(n)
                .map(|d| d.iter().all(|t| order.contains(t) || !names.contains(t)))
                .unwrap_or(true)
        });
        match ready {
            Some(i) => order.push(left.remove(i)),
            None => {
                order.append(&mut left);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge<'a>(from: &'a str, to: &'a str, condition: Condition) -> Edge<'a> {
        Edge {
            from,
            to,
            condition,
            to_restart: Some(RestartPolicy::No),
        }
    }

    #[test]
    fn restart_policies() {
        assert_eq!(restart("no"), Ok(RestartPolicy::No));
        assert_eq!(restart("on-failure"), Ok(RestartPolicy::OnFailure));
        assert_eq!(restart("always"), Ok(RestartPolicy::Always));
        assert!(restart("on_failure")
            .unwrap_err()
            .contains("\"on-failure\""));
        assert!(restart("sometimes").unwrap_err().contains("\"always\""));
        assert!(!RestartPolicy::No.restarts_after(1));
        assert!(RestartPolicy::OnFailure.restarts_after(1));
        assert!(!RestartPolicy::OnFailure.restarts_after(0));
        assert!(RestartPolicy::Always.restarts_after(0));
    }

    #[test]
    fn conditions_and_counts() {
        assert_eq!(condition("healthy"), Ok(Condition::Healthy));
        assert!(condition("service_healthy")
            .unwrap_err()
            .contains("write \"healthy\""));
        assert!(condition("up").unwrap_err().contains("\"completed\""));
        assert_eq!(max_restarts(0), Ok(0));
        assert!(max_restarts(-1).unwrap_err().contains("whole number"));
        assert_eq!(log_files(1), Ok(1));
        assert!(log_files(0).is_err());
        assert!(log_files(101).is_err());
    }

    #[test]
    fn log_sizes() {
        let s = |t: &str| toml::Value::String(t.into());
        assert_eq!(log_max_size(&s("1Mi")), Ok(1 << 20));
        assert_eq!(log_max_size(&s("64K")), Ok(64_000));
        assert_eq!(log_max_size(&toml::Value::Integer(8192)), Ok(8192));
        assert!(log_max_size(&s("1K")).unwrap_err().contains("minimum"));
        assert!(log_max_size(&s("1MB"))
            .unwrap_err()
            .contains("unknown unit"));
        assert!(log_max_size(&toml::Value::Boolean(true)).is_err());
    }

    #[test]
    fn unknown_self_and_never_completing_targets() {
        let mut always = edge("app", "web", Condition::Completed);
        always.to_restart = Some(RestartPolicy::Always);
        let edges = [
            edge("app", "db", Condition::Healthy),
            edge("app", "dbx", Condition::Started),
            edge("app", "app", Condition::Started),
            always,
        ];
        let problems = dependency_problems(&edges, &["app", "db", "web"]);
        let at: Vec<usize> = problems.iter().map(|p| p.0).collect();
        assert_eq!(at, [1, 2, 3]);
        assert!(problems[0].1.contains("\"dbx\", which is not declared"));
        assert!(problems[0].1.contains("\"app\", \"db\", \"web\""));
        assert!(problems[1].1.contains("depends on itself"));
        assert!(problems[2].1.contains("never completes"));
    }

    #[test]
    fn cycles_are_found_and_named() {
        let edges = [
            edge("a", "b", Condition::Started),
            edge("b", "c", Condition::Started),
            edge("c", "a", Condition::Healthy),
            edge("d", "a", Condition::Started),
        ];
        let problems = dependency_problems(&edges, &["a", "b", "c", "d"]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, 2);
        assert!(
            problems[0].1.contains("a -> b -> c -> a"),
            "{}",
            problems[0].1
        );
        let acyclic = [
            edge("a", "b", Condition::Started),
            edge("a", "c", Condition::Started),
            edge("b", "c", Condition::Started),
        ];
        assert!(dependency_problems(&acyclic, &["a", "b", "c"]).is_empty());
    }

    #[test]
    fn start_order_puts_dependencies_first() {
        let mut deps = BTreeMap::new();
        deps.insert("app", vec!["db", "migrate"]);
        deps.insert("migrate", vec!["db"]);
        assert_eq!(
            start_order(&["web", "app", "migrate", "db"], &deps),
            ["web", "db", "migrate", "app"]
        );
    }
}
