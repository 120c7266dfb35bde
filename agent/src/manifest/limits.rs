//! Resource limits and stop settings of a container: `memory`, `cpus`, `pids`, `rlimits`,
//! `stop_signal`, `stop_timeout`.
//!
//! The parsers are pure and take the raw TOML value, so each unit, range and wrong spelling is
//! unit-tested; `validate.rs` adds the location. Each returns `Err(message)` saying what is
//! wrong and what to write instead.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

/// The smallest `memory` accepted (4 MiB): below it not even a shell starts.
pub const MIN_MEMORY: u64 = 4 * 1024 * 1024;

/// The largest `cpus` accepted.
pub const MAX_CPUS: f64 = 1024.0;

/// The smallest `cpus` accepted: the kernel's minimum CFS quota is 1 ms per 100 ms period.
pub const MIN_CPUS: f64 = 0.01;

/// Largest `stop_timeout` accepted (1 hour): a shutdown must end.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);

/// `RLIM_INFINITY`: "unlimited" in an rlimit.
pub const RLIM_UNLIMITED: u64 = u64::MAX;

/// The rlimit names accepted in `rlimits` (setrlimit(2) resources, without `RLIMIT_`).
pub const RLIMIT_NAMES: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// A container's resource limits; `None`/empty means "not limited".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `memory`: bytes (cgroup `memory.max`).
    pub memory: Option<u64>,
    /// `cpus`: CPUs' worth of time (cgroup `cpu.max`).
    pub cpus: Option<f64>,
    /// `pids`: most tasks at once (cgroup `pids.max`).
    pub pids: Option<u64>,
    /// `rlimits`: name (e.g. `nofile`) -> soft/hard limits.
    pub rlimits: BTreeMap<String, Rlimit>,
}

impl Limits {
    /// Whether any cgroup limit (`memory`, `cpus`, `pids`) is set.
    pub fn needs_cgroup(&self) -> bool {
        self.memory.is_some() || self.cpus.is_some() || self.pids.is_some()
    }
}

/// One rlimit: soft and hard values ([`RLIM_UNLIMITED`] for "unlimited").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// Soft limit (what the process gets).
    pub soft: u64,
    /// Hard limit (the most the process may raise it to).
    pub hard: u64,
}

fn found(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("string {s:?}"),
        other => format!("{} `{other}`", other.type_str()),
    }
}

/// `memory`: `"64Mi"`, `"1G"`, `"512K"` or a number of bytes. Suffixes K/M/G are powers of
/// 1000, Ki/Mi/Gi powers of 1024 (as in Kubernetes). At least [`MIN_MEMORY`].
pub fn memory(value: &toml::Value) -> Result<u64, String> {
    let bytes = match value {
        toml::Value::Integer(n) => u64::try_from(*n)
            .map_err(|_| format!("`memory` is {n}; write a positive size such as \"64Mi\""))?,
        toml::Value::String(text) => memory_text(text)?,
        other => {
            return Err(format!(
                "`memory` must be a size like \"64Mi\" or a number of bytes, found {}",
                found(other)
            ))
        }
    };
    if bytes < MIN_MEMORY {
        return Err(format!(
            "`memory` is {bytes} bytes; the minimum is 4 MiB ({MIN_MEMORY} bytes), write e.g. \"4Mi\" or more"
        ));
    }
    Ok(bytes)
}

/// The multiplier of a size suffix: none, `K`/`M`/`G` (powers of 1000) or `Ki`/`Mi`/`Gi`
/// (powers of 1024), as in Kubernetes.
pub(super) fn size_unit(unit: &str) -> Option<u64> {
    Some(match unit {
        "" => 1,
        "K" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    })
}

fn memory_text(text: &str) -> Result<u64, String> {
    let hint = "write a number with one of the suffixes K, M, G (10^3, 10^6, 10^9) or Ki, Mi, Gi (2^10, 2^20, 2^30), e.g. \"64Mi\", or a number of bytes";
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "`memory` {text:?} does not start with a number; {hint}"
        ));
    }
    let multiplier: u64 = match size_unit(unit) {
        Some(m) => m,
        None => {
            let upper = unit.trim().to_ascii_uppercase();
            let suggestion = match upper.trim_end_matches('B') {
                "K" | "M" | "G" => {
                    let letter = &upper[..1];
                    format!(
                        " — did you mean \"{digits}{letter}\" ({letter}, decimal) or \"{digits}{letter}i\" ({letter}i, binary)?"
                    )
                }
                "KI" | "MI" | "GI" => format!(" — did you mean \"{digits}{}i\"?", &upper[..1]),
                _ => String::new(),
            };
            return Err(format!(
                "`memory` {text:?} has an unknown unit {unit:?}{suggestion}; {hint}"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`memory` {text:?} is too large"))
}

/// `cpus`: a number of CPUs (`0.5`, `2`), more than 0 and at most [`MAX_CPUS`].
pub fn cpus(value: &toml::Value) -> Result<f64, String> {
    let n = match value {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        other => {
            return Err(format!(
                "`cpus` must be a number of CPUs such as 0.5 or 2, found {}",
                found(other)
            ))
        }
    };
    if !n.is_finite() || n <= 0.0 {
        return Err(format!(
            "`cpus` is {n}; it must be more than 0 (e.g. 0.5 for half a CPU), or leave it out for no limit"
        ));
    }
    if n < MIN_CPUS {
        return Err(format!(
            "`cpus` is {n}; the smallest limit the kernel enforces is {MIN_CPUS} (1 ms per 100 ms)"
        ));
    }
    if n > MAX_CPUS {
        return Err(format!("`cpus` is {n}; the maximum is {MAX_CPUS}"));
    }
    Ok(n)
}

/// `pids`: the most processes and threads at once, a positive integer.
pub fn pids(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) if *n > 0 => u64::try_from(*n).map_err(|_| String::new()),
        toml::Value::Integer(n) => Err(format!(
            "`pids` is {n}; it must be at least 1 (e.g. pids = 256), or leave it out for no limit"
        )),
        other => Err(format!(
            "`pids` must be an integer such as 256, found {}",
            found(other)
        )),
    }
}

/// A duration: an integer followed by `ms`, `s`, `m` or `h` (`"500ms"`, `"10s"`, `"2m"`).
pub fn duration(key: &str, value: &toml::Value) -> Result<Duration, String> {
    let hint = "write a whole number followed by ms, s, m or h, e.g. \"500ms\", \"10s\" or \"2m\"";
    let text = match value {
        toml::Value::String(s) => s.as_str(),
        toml::Value::Integer(n) => {
            return Err(format!(
                "`{key}` is the bare number {n}; give a unit: \"{n}s\" ({hint})"
            ))
        }
        other => {
            return Err(format!(
                "`{key}` must be a string, found {}; {hint}",
                found(other)
            ))
        }
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{key}` {text:?} is not a duration; {hint}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => {
            return Err(format!(
                "`{key}` {text:?} has no unit; write \"{n}s\" ({hint})"
            ))
        }
        _ => {
            return Err(format!(
                "`{key}` {text:?} has an unknown unit {unit:?}; {hint}"
            ))
        }
    };
    Ok(d)
}

/// `stop_timeout`: a [`duration`] of at most [`MAX_STOP_TIMEOUT`].
pub fn stop_timeout(value: &toml::Value) -> Result<Duration, String> {
    let d = duration("stop_timeout", value)?;
    if d > MAX_STOP_TIMEOUT {
        return Err(format!(
            "`stop_timeout` is {}s; the maximum is {}s (\"1h\")",
            d.as_secs(),
            MAX_STOP_TIMEOUT.as_secs()
        ));
    }
    Ok(d)
}

/// `stop_signal`: a signal name (`"SIGTERM"`, `"TERM"`, any case) or number.
pub fn stop_signal(value: &toml::Value) -> Result<Signal, String> {
    let bad = |what: String| {
        format!("`stop_signal` {what} is not a signal; write a name such as \"SIGTERM\", \"SIGINT\" or \"SIGQUIT\"")
    };
    match value {
        toml::Value::Integer(n) => i32::try_from(*n)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
            .ok_or_else(|| bad(n.to_string())),
        toml::Value::String(s) => {
            let upper = s.trim().to_ascii_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            Signal::from_str(&name).map_err(|_| bad(format!("{s:?}")))
        }
        other => Err(bad(found(other))),
    }
}

/// An `rlimits` entry: `name = N` (soft = hard = N), `name = [SOFT, HARD]`; each value a
/// non-negative integer or `"unlimited"`. Soft may not exceed hard.
pub fn rlimit(name: &str, value: &toml::Value) -> Result<Rlimit, String> {
    if !RLIMIT_NAMES.contains(&name) {
        let lower = name.to_ascii_lowercase();
        let bare = lower.trim_start_matches("rlimit_");
        let suggestion = if RLIMIT_NAMES.contains(&bare) {
            format!(" — write `{bare}`")
        } else {
            String::new()
        };
        return Err(format!(
            "unknown rlimit `{name}`{suggestion}; known: {}",
            RLIMIT_NAMES.join(", ")
        ));
    }
    let one = |v: &toml::Value| -> Result<u64, String> {
        match v {
            toml::Value::Integer(n) => u64::try_from(*n)
                .map_err(|_| format!("rlimit `{name}` is {n}; limits are 0 or more")),
            toml::Value::String(s) if s == "unlimited" => Ok(RLIM_UNLIMITED),
            other => Err(format!(
                "rlimit `{name}`: found {}; write an integer or \"unlimited\", or [SOFT, HARD]",
                found(other)
            )),
        }
    };
    let (soft, hard) = match value {
        toml::Value::Array(items) => match items.as_slice() {
            [soft, hard] => (one(soft)?, one(hard)?),
            _ => {
                return Err(format!(
                    "rlimit `{name}` has {} values; write one value or [SOFT, HARD], e.g. {name} = [1024, 4096]",
                    items.len()
                ))
            }
        },
        v => {
            let n = one(v)?;
            (n, n)
        }
    };
    if soft > hard {
        return Err(format!(
            "rlimit `{name}`: the soft limit {soft} is above the hard limit {hard}; write [SOFT, HARD] with SOFT <= HARD"
        ));
    }
    Ok(Rlimit { soft, hard })
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Value;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn memory_units() {
        assert_eq!(memory(&s("64Mi")), Ok(64 << 20));
        assert_eq!(memory(&s("64M")), Ok(64_000_000));
        assert_eq!(memory(&s("1Gi")), Ok(1 << 30));
        assert_eq!(memory(&s("2G")), Ok(2_000_000_000));
        assert_eq!(memory(&s("8192Ki")), Ok(8 << 20));
        assert_eq!(memory(&s("5000K")), Ok(5_000_000));
        assert_eq!(memory(&s("4194304")), Ok(MIN_MEMORY));
        assert_eq!(memory(&Value::Integer(1 << 30)), Ok(1 << 30));
    }

    #[test]
    fn memory_errors_say_what_to_write() {
        let e = memory(&s("64MB")).unwrap_err();
        assert!(e.contains("unknown unit \"MB\""), "{e}");
        assert!(e.contains("\"64M\"") && e.contains("\"64Mi\""), "{e}");
        let e = memory(&s("64mb")).unwrap_err();
        assert!(e.contains("\"64M\""), "{e}");
        let e = memory(&s("64MiB")).unwrap_err();
        assert!(e.contains("did you mean \"64Mi\""), "{e}");
        assert!(memory(&s("64X")).unwrap_err().contains("unknown unit"));
        assert!(memory(&s("M"))
            .unwrap_err()
            .contains("does not start with a number"));
        assert!(memory(&s("")).is_err());
        assert!(memory(&s("3Mi")).unwrap_err().contains("minimum is 4 MiB"));
        assert!(memory(&s("4M")).unwrap_err().contains("minimum is 4 MiB"));
        assert!(memory(&Value::Integer(-1)).is_err());
        assert!(memory(&s("99999999999999999999Gi"))
            .unwrap_err()
            .contains("too large"));
        assert!(memory(&Value::Float(1.5))
            .unwrap_err()
            .contains("found float"));
    }

    #[test]
    fn cpus_range() {
        assert_eq!(cpus(&Value::Float(0.5)), Ok(0.5));
        assert_eq!(cpus(&Value::Integer(2)), Ok(2.0));
        assert_eq!(cpus(&Value::Float(1024.0)), Ok(1024.0));
        assert!(cpus(&Value::Float(0.0))
            .unwrap_err()
            .contains("more than 0"));
        assert!(cpus(&Value::Float(-1.0))
            .unwrap_err()
            .contains("more than 0"));
        assert!(cpus(&Value::Float(f64::NAN)).is_err());
        assert!(cpus(&Value::Float(0.001)).unwrap_err().contains("smallest"));
        assert!(cpus(&Value::Float(1024.5))
            .unwrap_err()
            .contains("maximum is 1024"));
        assert!(cpus(&s("0.5")).unwrap_err().contains("found string"));
    }

    #[test]
    fn pids_positive() {
        assert_eq!(pids(&Value::Integer(256)), Ok(256));
        assert!(pids(&Value::Integer(0)).unwrap_err().contains("at least 1"));
        assert!(pids(&s("max")).unwrap_err().contains("integer"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration("t", &s("500ms")), Ok(Duration::from_millis(500)));
        assert_eq!(duration("t", &s("10s")), Ok(Duration::from_secs(10)));
        assert_eq!(duration("t", &s("2m")), Ok(Duration::from_secs(120)));
        assert_eq!(duration("t", &s("1h")), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("t", &s("0s")), Ok(Duration::ZERO));
        assert!(duration("t", &s("10"))
            .unwrap_err()
            .contains("no unit; write \"10s\""));
        assert!(duration("t", &Value::Integer(10))
            .unwrap_err()
            .contains("\"10s\""));
        assert!(duration("t", &s("1.5s"))
            .unwrap_err()
            .contains("unknown unit"));
        assert!(duration("t", &s("10 s"))
            .unwrap_err()
            .contains("unknown unit"));
        assert!(duration("t", &s("s"))
            .unwrap_err()
            .contains("not a duration"));
        assert!(duration("t", &s("10d"))
            .unwrap_err()
            .contains("unknown unit \"d\""));
        assert!(stop_timeout(&s("2h")).unwrap_err().contains("maximum"));
        assert_eq!(stop_timeout(&s("30s")), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn signals() {
        assert_eq!(stop_signal(&s("SIGTERM")), Ok(Signal::SIGTERM));
        assert_eq!(stop_signal(&s("quit")), Ok(Signal::SIGQUIT));
        assert_eq!(stop_signal(&Value::Integer(2)), Ok(Signal::SIGINT));
        assert!(stop_signal(&s("SIGNOPE"))
            .unwrap_err()
            .contains("\"SIGNOPE\" is not a signal"));
        assert!(stop_signal(&Value::Integer(99)).is_err());
    }

    #[test]
    fn rlimits() {
        assert_eq!(
            rlimit("nofile", &Value::Integer(1024)),
            Ok(Rlimit {
                soft: 1024,
                hard: 1024
            })
        );
        let pair = Value::Array(vec![Value::Integer(64), Value::Integer(128)]);
        assert_eq!(
            rlimit("nproc", &pair),
            Ok(Rlimit {
                soft: 64,
                hard: 128
            })
        );
        let unl = Value::Array(vec![Value::Integer(0), s("unlimited")]);
        assert_eq!(
            rlimit("core", &unl),
            Ok(Rlimit {
                soft: 0,
                hard: RLIM_UNLIMITED
            })
        );
        let e = rlimit("files", &Value::Integer(1)).unwrap_err();
        assert!(
            e.contains("unknown rlimit `files`") && e.contains("nofile"),
            "{e}"
        );
        assert!(rlimit("RLIMIT_NOFILE", &Value::Integer(1))
            .unwrap_err()
            .contains("write `nofile`"));
        let bad = Value::Array(vec![Value::Integer(128), Value::Integer(64)]);
        assert!(rlimit("nproc", &bad)
            .unwrap_err()
            .contains("above the hard limit"));
        let three = Value::Array(vec![Value::Integer(1); 3]);
        assert!(rlimit("nproc", &three).unwrap_err().contains("3 values"));
        assert!(rlimit("nofile", &Value::Integer(-1)).is_err());
        assert!(rlimit("nofile", &s("lots"))
            .unwrap_err()
            .contains("\"unlimited\""));
    }
}
