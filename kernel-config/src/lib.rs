//! berth's kernel requirements, read from the config fragments themselves.
//!
//! The fragments under `kernel-config/fragments/` are the single source of truth: the build
//! merges them into the kernel config, and `check` reads the same files to decide which options
//! any kernel `.config` must have. Each `CONFIG_X=y` line is a requirement; the comment block
//! directly above it (shared by a group of options) says why berth needs it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Errors reading fragments or a kernel config.
#[derive(Debug, thiserror::Error)]
pub enum KconfigError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A fragment line is neither a comment, blank, nor `CONFIG_X=y`.
    #[error("{path}:{line}: expected `CONFIG_NAME=y` or a `#` comment, found `{text}` (berth builds everything in: no modules, no values)")]
    BadFragmentLine {
        /// The fragment file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending text.
        text: String,
    },
    /// The same option appears in two fragments.
    #[error("{path}:{line}: {option} is already required by {first}")]
    Duplicate {
        /// The fragment file with the second occurrence.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The option.
        option: String,
        /// Where it first appeared.
        first: String,
    },
    /// No fragments were found.
    #[error("no *.config fragments in {0}")]
    NoFragments(PathBuf),
}

/// One required option and why berth needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The option, e.g. `CONFIG_OVERLAY_FS`.
    pub option: String,
    /// The reason (the comment block above it).
    pub why: String,
    /// `fragment:line` where it is declared.
    pub origin: String,
}

/// How an option is set in a kernel `.config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `=y`: built in.
    BuiltIn,
    /// `=m`: a module, which berth's module-less image cannot load.
    Module,
    /// `# CONFIG_X is not set`, or absent altogether.
    Unset,
    /// Any other value (`="..."`, numbers).
    Value,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Setting::BuiltIn => "built in",
            Setting::Module => "a module (berth images load no modules)",
            Setting::Unset => "not set",
            Setting::Value => "set to a value, not y",
        })
    }
}

/// A requirement the checked config does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing<'a> {
    /// The requirement.
    pub requirement: &'a Requirement,
    /// What the config has instead.
    pub found: Setting,
}

/// Parse the text of one fragment into requirements.
pub fn parse_fragment(path: &Path, text: &str) -> Result<Vec<Requirement>, KconfigError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let mut out = Vec::new();
    let mut comment: Vec<&str> = Vec::new();
    // A comment block stays attached to consecutive options; a blank line ends the group.
    let mut in_group = false;
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            comment.clear();
            in_group = false;
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            if in_group {
                comment.clear();
                in_group = false;
            }
            comment.push(c.trim());
            continue;
        }
        let bad = || KconfigError::BadFragmentLine {
            path: path.to_path_buf(),
            line: idx + 1,
            text: line.to_string(),
        };
        let (option, value) = line.split_once('=').ok_or_else(bad)?;
        if !option.starts_with("CONFIG_") || value != "y" {
            return Err(bad());
        }
        in_group = true;
        out.push(Requirement {
            option: option.to_string(),
            why: comment.join(" "),
            origin: format!("{name}:{}", idx + 1),
        });
    }
    Ok(out)
}

/// Read every `*.config` fragment in `dir` (sorted by name) into one requirement list.
pub fn load_fragments(dir: &Path) -> Result<Vec<Requirement>, KconfigError> {
    let read_err = |source| KconfigError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "config"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(KconfigError::NoFragments(dir.to_path_buf()));
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| KconfigError::Read {
            path: file.clone(),
            source,
        })?;
        for req in parse_fragment(&file, &text)? {
            if let Some(first) = seen.get(&req.option) {
                let line = req
                    .origin
                    .rsplit(':')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                return Err(KconfigError::Duplicate {
                    path: file,
                    line,
                    option: req.option,
                    first: first.clone(),
                });
            }
            seen.insert(req.option.clone(), req.origin.clone());
            all.push(req);
        }
    }
    Ok(all)
}

/// Parse a kernel `.config` into option -> setting.
pub fn parse_config(text: &str) -> BTreeMap<String, Setting> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(option) = rest.strip_suffix(" is not set") {
                map.insert(option.to_string(), Setting::Unset);
            }
            continue;
        }
        if let Some((option, value)) = line.split_once('=') {
            if !option.starts_with("CONFIG_") {
                continue;
            }
            let setting = match value {
                "y" => Setting::BuiltIn,
                "m" => Setting::Module,
                "n" => Setting::Unset,
                _ => Setting::Value,
            };
            map.insert(option.to_string(), setting);
        }
    }
    map
}

/// Every requirement a config does not meet (anything but built in counts as missing).
pub fn check<'a>(
    requirements: &'a [Requirement],
    config: &BTreeMap<String, Setting>,
) -> Vec<Missing<'a>> {
    requirements
        .iter()
        .filter_map(|requirement| {
            let found = config
                .get(&requirement.option)
                .copied()
                .unwrap_or(Setting::Unset);
            (found != Setting::BuiltIn).then_some(Missing { requirement, found })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAGMENT: &str = "\
# header comment about the file

# Containers need overlays.
CONFIG_OVERLAY_FS=y
# Namespaces for isolation
# of everything.
CONFIG_NAMESPACES=y
CONFIG_PID_NS=y

CONFIG_NOCOMMENT=y
";

    #[test]
    fn comment_blocks_become_reasons_for_their_group() {
        let reqs = parse_fragment(Path::new("x/10-a.config"), FRAGMENT).unwrap();
        let got: Vec<(&str, &str, &str)> = reqs
            .iter()
            .map(|r| (r.option.as_str(), r.why.as_str(), r.origin.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "CONFIG_OVERLAY_FS",
                    "Containers need overlays.",
                    "10-a.config:4"
                ),
                (
                    "CONFIG_NAMESPACES",
                    "Namespaces for isolation of everything.",
                    "10-a.config:7"
                ),
                (
                    "CONFIG_PID_NS",
                    "Namespaces for isolation of everything.",
                    "10-a.config:8"
                ),
                ("CONFIG_NOCOMMENT", "", "10-a.config:10"),
            ]
        );
    }

    #[test]
    fn modules_and_values_are_refused_in_fragments() {
        for bad in ["CONFIG_X=m", "CONFIG_X=\"s\"", "X=y", "garbage"] {
            let err = parse_fragment(Path::new("f.config"), bad).unwrap_err();
            assert!(
                matches!(err, KconfigError::BadFragmentLine { line: 1, .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn config_settings_are_classified() {
        let cfg = parse_config(
            "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"x\"\nCONFIG_E=12\n# comment\n",
        );
        assert_eq!(cfg["CONFIG_A"], Setting::BuiltIn);
        assert_eq!(cfg["CONFIG_B"], Setting::Module);
        assert_eq!(cfg["CONFIG_C"], Setting::Unset);
        assert_eq!(cfg["CONFIG_D"], Setting::Value);
        assert_eq!(cfg["CONFIG_E"], Setting::Value);
        assert_eq!(cfg.len(), 5);
    }

    #[test]
    fn check_lists_modules_unset_and_absent_options() {
        let reqs = parse_fragment(Path::new("f.config"), FRAGMENT).unwrap();
        let cfg =
            parse_config("CONFIG_OVERLAY_FS=y\nCONFIG_NAMESPACES=m\n# CONFIG_PID_NS is not set\n");
        let missing: Vec<(&str, Setting)> = check(&reqs, &cfg)
            .iter()
            .map(|m| (m.requirement.option.as_str(), m.found))
            .collect();
        assert_eq!(
            missing,
            vec![
                ("CONFIG_NAMESPACES", Setting::Module),
                ("CONFIG_PID_NS", Setting::Unset),
                ("CONFIG_NOCOMMENT", Setting::Unset),
            ]
        );
    }

    #[test]
    fn project_fragments_load_and_give_every_option_a_reason() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fragments");
        let reqs = load_fragments(&dir).unwrap();
        assert!(reqs.len() > 50, "only {} requirements", reqs.len());
        for r in &reqs {
            assert!(
                !r.why.is_empty(),
                "{} at {} has no reason",
                r.option,
                r.origin
            );
        }
        for must in [
            "CONFIG_OVERLAY_FS",
            "CONFIG_CGROUPS",
            "CONFIG_MEMCG",
            "CONFIG_VETH",
            "CONFIG_BRIDGE",
            "CONFIG_NFT_MASQ",
            "CONFIG_SECCOMP_FILTER",
            "CONFIG_FW_CFG_SYSFS",
            "CONFIG_EFI_STUB",
            "CONFIG_TMPFS_XATTR",
            "CONFIG_SYSVIPC",
            "CONFIG_ACPI",
        ] {
            assert!(reqs.iter().any(|r| r.option == must), "{must} not required");
        }
    }

    #[test]
    fn duplicate_requirements_across_fragments_are_refused() {
        let dir = tempdir_with(&[
            ("a.config", "# x\nCONFIG_A=y\n"),
            ("b.config", "# y\nCONFIG_A=y\n"),
        ]);
        let err = load_fragments(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("CONFIG_A is already required by a.config:2"),
            "{err}"
        );
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir_with(files: &[(&str, &str)]) -> TempDir {
        let dir = std::env::temp_dir().join(format!("berth-kconfig-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        TempDir(dir)
    }
}
