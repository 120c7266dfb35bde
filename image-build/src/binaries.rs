//! Finding the berth binaries that go into the image, and checking they can run there.
//!
//! The image has no shared libraries, so `/init`, `berthd` and `berthctl` must be static.
//! By default they are taken from the workspace's release build for the image's target.

use std::path::{Path, PathBuf};

use crate::elf::{self, ElfError};

/// The target the image binaries are built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// How to build the binaries, shown whenever they are missing or dynamic.
pub const BUILD_HINT: &str =
    "build the image binaries with: RUSTFLAGS='-C target-feature=+crt-static' \
     cargo build --release --target x86_64-unknown-linux-gnu -p berth-init -p berth-agent";

/// Errors while locating the binaries.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// A binary given on the command line does not exist.
    #[error("{flag} {}: no such file", path.display())]
    Missing {
        /// The flag that named it.
        flag: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A default binary was not built.
    #[error("{name} not found (looked for {looked}); {BUILD_HINT}, or pass {flag} PATH")]
    NotBuilt {
        /// The binary's name.
        name: &'static str,
        /// The flag to pass instead.
        flag: &'static str,
        /// The paths looked at.
        looked: String,
    },
    /// A binary is not a static executable.
    #[error("{name} cannot go into the image")]
    NotStatic {
        /// The binary's name.
        name: &'static str,
        /// Why.
        #[source]
        source: ElfError,
    },
}

/// The three image binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// berth-init.
    pub init: PathBuf,
    /// berthd.
    pub berthd: PathBuf,
    /// berthctl.
    pub berthctl: PathBuf,
}

/// Paths given on the command line (any may be absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--init`.
    pub init: Option<PathBuf>,
    /// `--berthd`.
    pub berthd: Option<PathBuf>,
    /// `--berthctl`.
    pub berthctl: Option<PathBuf>,
}

/// Where to look for default binaries: the workspace this tool was built from, then the
/// current directory (a checkout elsewhere).
pub fn default_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        roots.push(ws.to_path_buf());
    }
    if let Ok(cwd) = std::env::current_dir() {
        if !roots.contains(&cwd) {
            roots.push(cwd);
        }
    }
    roots
}

fn locate_one(
    name: &'static str,
    flag: &'static str,
    given: Option<&Path>,
    roots: &[PathBuf],
) -> Result<PathBuf, BinaryError> {
    let path = match given {
        Some(p) if p.is_file() => p.to_path_buf(),
        Some(p) => {
            return Err(BinaryError::Missing {
                flag,
                path: p.to_path_buf(),
            })
        }
        None => {
            let candidates: Vec<PathBuf> = roots
                .iter()
                .map(|r| r.join("target").join(TARGET).join("release").join(name))
                .collect();
            match candidates.iter().find(|c| c.is_file()) {
                Some(c) => c.clone(),
                None => {
                    return Err(BinaryError::NotBuilt {
                        name,
                        flag,
                        looked: candidates
                            .iter()
                            .map(|c| c.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
    };
    elf::require_static(&path, &format!("; {BUILD_HINT}"))
        .map_err(|source| BinaryError::NotStatic { name, source })?;
    Ok(path)
}

/// Finds and checks the binaries: the overrides where given, else `target/<TARGET>/release/`
/// under the first of `roots` that has them.
pub fn locate(overrides: &Overrides, roots: &[PathBuf]) -> Result<Binaries, BinaryError> {
    Ok(Binaries {
        init: locate_one("berth-init", "--init", overrides.init.as_deref(), roots)?,
        berthd: locate_one("berthd", "--berthd", overrides.berthd.as_deref(), roots)?,
        berthctl: locate_one(
            "berthctl",
            "--berthctl",
            overrides.berthctl.as_deref(),
            roots,
        )?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::elf::tests::elf64;

    /// Writes fake static binaries under `root/target/<TARGET>/release`.
    pub(crate) fn fake_release(root: &Path) {
        let dir = root.join("target").join(TARGET).join("release");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["berth-init", "berthd", "berthctl"] {
            std::fs::write(dir.join(name), elf64(2, None)).unwrap();
        }
    }

    #[test]
    fn defaults_come_from_the_first_root_that_has_them() {
        let empty = tempfile::tempdir().unwrap();
        let built = tempfile::tempdir().unwrap();
        fake_release(built.path());
        let roots = vec![empty.path().to_path_buf(), built.path().to_path_buf()];
        let b = locate(&Overrides::default(), &roots).unwrap();
        assert!(b.init.starts_with(built.path()));
        assert!(b.berthctl.ends_with("release/berthctl"));
    }

    #[test]
    fn missing_binaries_say_how_to_build_them() {
        let empty = tempfile::tempdir().unwrap();
        let err = locate(&Overrides::default(), &[empty.path().to_path_buf()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("berth-init not found"), "{msg}");
        assert!(msg.contains("crt-static"), "{msg}");
        assert!(msg.contains("--init PATH"), "{msg}");

        let o = Overrides {
            berthd: Some(empty.path().join("nope")),
            ..Overrides::default()
        };
        let built = tempfile::tempdir().unwrap();
        fake_release(built.path());
        let err = locate(&o, &[built.path().to_path_buf()]).unwrap_err();
        assert!(matches!(
            err,
            BinaryError::Missing {
                flag: "--berthd",
                ..
            }
        ));
    }

    #[test]
    fn dynamic_binaries_are_refused() {
        let built = tempfile::tempdir().unwrap();
        fake_release(built.path());
        let dynamic = built.path().join("dyn");
        std::fs::write(&dynamic, elf64(3, Some("/lib64/ld-linux-x86-64.so.2"))).unwrap();
        let o = Overrides {
            berthctl: Some(dynamic),
            ..Overrides::default()
        };
        let err = locate(&o, &[built.path().to_path_buf()]).unwrap_err();
        assert!(matches!(
            err,
            BinaryError::NotStatic {
                name: "berthctl",
                ..
            }
        ));
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("dynamically linked"), "{cause}");
        assert!(cause.contains("crt-static"), "{cause}");
    }
}
