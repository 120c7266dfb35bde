//! Kernel command line settings for PID 1 (`berth.hostname=`, `berth.agent=`,
//! `berth.stop_timeout=`).
//!
//! The command line is the only configuration PID 1 reads, so parsing is forgiving: a bad value
//! falls back to its default and produces a warning for the console instead of an error.

use std::path::PathBuf;
use std::time::Duration;

/// Default hostname when the command line sets none.
pub const DEFAULT_HOSTNAME: &str = "berth";
/// Default agent binary.
pub const DEFAULT_AGENT: &str = "/usr/bin/berthd";
/// Default grace period the agent gets to stop its containers on shutdown.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest accepted `berth.stop_timeout` (one hour).
pub const MAX_STOP_TIMEOUT_SECS: u64 = 3600;

/// PID 1's settings after parsing `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Hostname set at boot.
    pub hostname: String,
    /// Agent binary started and supervised by PID 1.
    pub agent: PathBuf,
    /// How long the agent gets to stop after SIGTERM before it is killed.
    pub stop_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: DEFAULT_HOSTNAME.to_string(),
            agent: PathBuf::from(DEFAULT_AGENT),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }
}

/// Split a kernel command line into `(key, value)` parameters the way the kernel does:
/// whitespace separates parameters except inside double quotes, and the quotes are removed
/// (`berth.hostname="a b"` and `"berth.hostname=a b"` both give `a b`). A parameter without
/// `=` has value `None`.
pub fn split_params(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut params = Vec::new();
    let mut current = String::new();
    let mut in_quote = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                started = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if started {
                    params.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        params.push(current);
    }
    params
        .into_iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (p, None),
        })
        .collect()
}

/// Parse PID 1's settings from the text of `/proc/cmdline`.
///
/// Returns the settings and one warning per ignored value. The last occurrence of a key wins,
/// as with the kernel's own parameters.
pub fn parse(cmdline: &str) -> (Config, Vec<String>) {
    let mut config = Config::default();
    let mut warnings = Vec::new();
    for (key, value) in split_params(cmdline) {
        let known = matches!(
            key.as_str(),
            "berth.hostname" | "berth.agent" | "berth.stop_timeout"
        );
        if !known {
            continue;
        }
        let Some(value) = value else {
            warnings.push(format!("{key} needs a value ({key}=...), ignoring it"));
            continue;
        };
        match key.as_str() {
            "berth.hostname" => match valid_hostname(&value) {
                true => config.hostname = value,
                false => warnings.push(format!(
                    "berth.hostname={value:?} is not a valid hostname (1-64 characters of \
                     a-z, A-Z, 0-9, '-' and '.'), using {:?}",
                    config.hostname
                )),
            },
            "berth.agent" => {
                if value.starts_with('/') {
                    config.agent = PathBuf::from(value);
                } else {
                    warnings.push(format!(
                        "berth.agent={value:?} must be an absolute path, using {}",
                        config.agent.display()
                    ));
                }
            }
            _ => match value.parse::<u64>() {
                Ok(secs) if secs <= MAX_STOP_TIMEOUT_SECS => {
                    config.stop_timeout = Duration::from_secs(secs);
                }
                _ => warnings.push(format!(
                    "berth.stop_timeout={value:?} is not a number of seconds between 0 and \
                     {MAX_STOP_TIMEOUT_SECS}, using {}",
                    config.stop_timeout.as_secs()
                )),
            },
        }
    }
    (config, warnings)
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_give_defaults_without_warnings() {
        let (config, warnings) = parse("console=ttyS0 quiet root=/dev/vda1\n");
        assert_eq!(config, Config::default());
        assert!(warnings.is_empty());
        assert_eq!(config.hostname, "berth");
        assert_eq!(config.agent, PathBuf::from("/usr/bin/berthd"));
        assert_eq!(config.stop_timeout, Duration::from_secs(20));
    }

    #[test]
    fn reads_all_keys() {
        let (config, warnings) = parse(
            "console=ttyS0 berth.hostname=node-1 berth.agent=/sbin/agent berth.stop_timeout=5\n",
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.hostname, "node-1");
        assert_eq!(config.agent, PathBuf::from("/sbin/agent"));
        assert_eq!(config.stop_timeout, Duration::from_secs(5));
    }

    #[test]
    fn quoted_values_keep_their_spaces() {
        let params = split_params("a=1 b=\"two words\" \"c=x y\"  d");
        assert_eq!(
            params,
            vec![
                ("a".to_string(), Some("1".to_string())),
                ("b".to_string(), Some("two words".to_string())),
                ("c".to_string(), Some("x y".to_string())),
                ("d".to_string(), None),
            ]
        );
        let (config, _) = parse("berth.agent=\"/opt/my agent/berthd\"");
        assert_eq!(config.agent, PathBuf::from("/opt/my agent/berthd"));
    }

    #[test]
    fn bad_values_fall_back_with_a_warning() {
        let (config, warnings) =
            parse("berth.stop_timeout=soon berth.hostname=bad_name! berth.agent=relative/berthd");
        assert_eq!(config, Config::default());
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("berth.stop_timeout=\"soon\""));
        assert!(warnings[1].contains("berth.hostname"));
        assert!(warnings[2].contains("absolute path"));
    }

    #[test]
    fn out_of_range_and_negative_timeouts_are_rejected() {
        for bad in ["-1", "99999", "", "1.5"] {
            let (config, warnings) = parse(&format!("berth.stop_timeout={bad}"));
            assert_eq!(config.stop_timeout, DEFAULT_STOP_TIMEOUT, "{bad}");
            assert_eq!(warnings.len(), 1, "{bad}");
        }
        let (config, warnings) = parse("berth.stop_timeout=0");
        assert_eq!(config.stop_timeout, Duration::ZERO);
        assert!(warnings.is_empty());
    }

    #[test]
    fn key_without_value_warns_and_last_value_wins() {
        let (config, warnings) = parse("berth.hostname berth.hostname=a berth.hostname=b");
        assert_eq!(config.hostname, "b");
        assert_eq!(warnings.len(), 1);
    }
}
