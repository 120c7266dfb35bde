//! `berth-image oci`: a directory tree as a single-layer OCI image layout.
//!
//! The layout is written by the agent's own OCI code (`berth_agent::oci`), so what the build
//! produces is exactly what the agent's store imports. This module only turns command-line
//! arguments into a [`LayoutImage`].

use std::path::PathBuf;

use berth_agent::oci::{self, LayoutImage, LayoutInfo, OciError};

use crate::staging::{self, Staging, StagingError};

/// Errors of `berth-image oci`.
#[derive(Debug, thiserror::Error)]
pub enum OciCmdError {
    /// `--entrypoint`/`--cmd` looked like JSON but was not an array of strings.
    #[error("{flag} {value}: not a JSON array of strings (write e.g. '[\"/bin/sh\", \"-c\", \"echo hi\"]' or pass the words separately)")]
    BadJson {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// `--env` without `=`.
    #[error("--env {0:?}: expected KEY=VALUE with a non-empty KEY")]
    BadEnv(String),
    /// `--rootfs` is not a directory.
    #[error("--rootfs {}: not a directory", .0.display())]
    NoRootfs(PathBuf),
    /// The output could not be prepared or published.
    #[error(transparent)]
    Output(#[from] StagingError),
    /// Writing the layout failed.
    #[error("cannot write the OCI layout {}", out.display())]
    Write {
        /// The output.
        out: PathBuf,
        /// The cause.
        #[source]
        source: OciError,
    },
}

/// The arguments of `berth-image oci`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OciRequest {
    /// The tree to pack.
    pub rootfs: PathBuf,
    /// The layout directory to write.
    pub out: PathBuf,
    /// `--entrypoint` values (one JSON array, or the words).
    pub entrypoint: Vec<String>,
    /// `--cmd` values (one JSON array, or the words).
    pub cmd: Vec<String>,
    /// `--env K=V` values.
    pub env: Vec<String>,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// `--ref`.
    pub ref_name: Option<String>,
}

/// The names an OCI layout directory holds (an existing layout may be replaced).
pub const LAYOUT_ENTRIES: [&str; 3] = ["oci-layout", "index.json", "blobs"];

/// `["a","b"]` as one value is a JSON array; anything else is the words themselves.
pub fn words(flag: &'static str, values: &[String]) -> Result<Vec<String>, OciCmdError> {
    match values {
        [one] if one.trim_start().starts_with('[') => {
            serde_json::from_str(one).map_err(|source| OciCmdError::BadJson {
                flag,
                value: one.clone(),
                source,
            })
        }
        _ => Ok(values.to_vec()),
    }
}

/// Turns the arguments into the image config.
pub fn layout_image(req: &OciRequest) -> Result<LayoutImage, OciCmdError> {
    for e in &req.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(OciCmdError::BadEnv(e.clone())),
        }
    }
    Ok(LayoutImage {
        entrypoint: words("--entrypoint", &req.entrypoint)?,
        cmd: words("--cmd", &req.cmd)?,
        env: req.env.clone(),
        working_dir: req.workdir.clone(),
        ref_name: req.ref_name.clone(),
    })
}

/// Writes the layout (staged, then renamed into place).
pub fn run(req: &OciRequest) -> Result<LayoutInfo, OciCmdError> {
    let image = layout_image(req)?;
    if !req.rootfs.is_dir() {
        return Err(OciCmdError::NoRootfs(req.rootfs.clone()));
    }
    staging::check_replaceable(&req.out, &LAYOUT_ENTRIES)?;
    let stage = Staging::new(&req.out)?;
    let info = oci::write_layout(&req.rootfs, stage.path(), &image).map_err(|source| {
        OciCmdError::Write {
            out: req.out.clone(),
            source,
        }
    })?;
    stage.commit()?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn json_or_words() {
        assert_eq!(
            words("--cmd", &s(&[r#"["/bin/sh", "-c", "echo hi"]"#])).unwrap(),
            s(&["/bin/sh", "-c", "echo hi"])
        );
        assert_eq!(
            words("--cmd", &s(&["/bin/sh", "-c"])).unwrap(),
            s(&["/bin/sh", "-c"])
        );
        assert_eq!(words("--cmd", &[]).unwrap(), Vec::<String>::new());
        let err = words("--entrypoint", &s(&["[1, 2]"])).unwrap_err();
        assert!(err.to_string().starts_with("--entrypoint [1, 2]"), "{err}");
    }

    #[test]
    fn env_must_be_key_value() {
        let mut req = OciRequest {
            env: s(&["A=1", "B="]),
            cmd: s(&["/bin/sh"]),
            workdir: Some("/srv".into()),
            ref_name: Some("busybox".into()),
            ..OciRequest::default()
        };
        let img = layout_image(&req).unwrap();
        assert_eq!(img.env, s(&["A=1", "B="]));
        assert_eq!(img.cmd, s(&["/bin/sh"]));
        assert_eq!(img.working_dir.as_deref(), Some("/srv"));
        assert_eq!(img.ref_name.as_deref(), Some("busybox"));
        assert!(img.entrypoint.is_empty());
        for bad in ["NOVALUE", "=x"] {
            req.env = s(&[bad]);
            assert!(matches!(layout_image(&req), Err(OciCmdError::BadEnv(_))));
        }
    }

    #[test]
    fn writes_a_layout_the_manifest_resolver_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
        let req = OciRequest {
            rootfs,
            out: dir.path().join("images/hello"),
            cmd: s(&["/bin/hello"]),
            ..OciRequest::default()
        };
        let info = run(&req).unwrap();
        assert!(info.manifest_digest.starts_with("sha256:"));
        for f in berth_agent::manifest::LAYOUT_FILES {
            assert!(req.out.join(f).is_file(), "{f}");
        }
        // Writing again replaces the layout.
        run(&req).unwrap();
        assert!(matches!(
            run(&OciRequest {
                rootfs: dir.path().join("missing"),
                ..req.clone()
            }),
            Err(OciCmdError::NoRootfs(_))
        ));
    }
}
