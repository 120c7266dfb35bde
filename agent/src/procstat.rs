//! What the host's process table looks like, for `GET /v1/containers`: how many processes
//! exist, how many are zombies (exited, not yet reaped by their parent), and berthd's own
//! resident memory. berthd runs in the host's PID namespace, so its `/proc` is the host's:
//! this is how an operator (and the fault boot tests) see that runaway containers leave no
//! zombies behind and that berthd's memory stays bounded.

use std::path::Path;

/// Counts from one pass over a `/proc` directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessCounts {
    /// Every process (thread group).
    pub processes: u64,
    /// Of those, the zombies (state `Z`).
    pub zombies: u64,
}

/// The state letter of a `/proc/PID/stat` text (the field after the parenthesised command,
/// which may itself hold spaces and parentheses).
pub fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

/// Count the processes under `proc_dir` (`/proc`). Processes that vanish while being read are
/// skipped; `None` when the directory cannot be read at all.
pub fn count(proc_dir: &Path) -> Option<ProcessCounts> {
    let mut counts = ProcessCounts::default();
    for entry in std::fs::read_dir(proc_dir).ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        counts.processes += 1;
        if stat_state(&stat) == Some('Z') {
            counts.zombies += 1;
        }
    }
    Some(counts)
}

/// berthd's resident memory in KiB (`/proc/self/smaps_rollup`, else `/proc/self/status`).
pub fn own_rss_kib() -> Option<u64> {
    ["/proc/self/smaps_rollup", "/proc/self/status"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| crate::timeline::rss_kib(&t))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_command_whatever_it_holds() {
        assert_eq!(stat_state("42 (sh) S 1 42 42 0"), Some('S'));
        assert_eq!(stat_state("43 (a) b) (c) Z 42 43 43 0"), Some('Z'));
        assert_eq!(stat_state("garbage"), None);
    }

    #[test]
    fn counts_processes_and_zombies_of_a_proc_tree() {
        let tmp = tempfile::tempdir().unwrap();
        for (pid, stat) in [
            ("1", "1 (berth-init) S 0 1 1 0"),
            ("7", "7 (berthd) S 1 7 7 0"),
            ("9", "9 (sh) Z 7 9 9 0"),
        ] {
            std::fs::create_dir(tmp.path().join(pid)).unwrap();
            std::fs::write(tmp.path().join(pid).join("stat"), stat).unwrap();
        }
        // Not processes: other /proc entries, and a pid whose stat vanished.
        std::fs::create_dir(tmp.path().join("sys")).unwrap();
        std::fs::create_dir(tmp.path().join("12")).unwrap();
        std::fs::write(tmp.path().join("uptime"), "1.0 1.0").unwrap();
        assert_eq!(
            count(tmp.path()),
            Some(ProcessCounts {
                processes: 3,
                zombies: 1
            })
        );
        assert_eq!(count(&tmp.path().join("missing")), None);
    }

    #[test]
    fn the_real_proc_has_this_process_and_its_memory() {
        let counts = count(Path::new("/proc")).unwrap();
        assert!(counts.processes >= 1);
        assert!(own_rss_kib().unwrap() > 0);
    }
}
