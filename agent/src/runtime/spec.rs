//! The process a container runs: the image config merged with the manifest, as Docker does.
//!
//! Kept pure (no I/O) so every merge rule is unit-tested: image authors and operators expect
//! `entrypoint`/`command`/`env`/`workdir` to behave exactly like `docker run`.

use std::str::FromStr;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::manifest::ContainerSpec;
use crate::store::ImageConfig;

/// `PATH` a container gets when neither the image nor the manifest sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to exec the container's process once its root is in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// argv; `args[0]` is resolved against the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// Environment as `KEY=VALUE`.
    pub env: Vec<String>,
    /// Absolute working directory inside the container (created when missing, like Docker).
    pub cwd: String,
    /// UTS hostname inside the container.
    pub hostname: String,
}

/// Why a process spec cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Neither the image nor the manifest says what to run.
    #[error(
        "container={container}: nothing to run: the image has no Entrypoint or Cmd; \
         set `command = [...]` (or `entrypoint`) in [containers.{container}]"
    )]
    NoCommand {
        /// The container name.
        container: String,
    },
    /// The working directory is not absolute.
    #[error(
        "container={container}: working directory {dir:?} is not an absolute path; \
         write it starting with `/`"
    )]
    RelativeWorkdir {
        /// The container name.
        container: String,
        /// The offending directory.
        dir: String,
    },
    /// The image's StopSignal is not a signal name or number.
    #[error(
        "the image StopSignal {0:?} is not a signal; rebuild the image with a name like \"SIGTERM\" or a number like 15"
    )]
    BadSignal(String),
}

/// Merge an image config with a manifest container table into the process to exec.
///
/// Rules (Docker's): the manifest `entrypoint` replaces the image Entrypoint and, when no
/// manifest `command` is given, also drops the image Cmd; `command` replaces Cmd; argv is
/// entrypoint ++ cmd. Env starts from `PATH` (default) and `HOSTNAME`, then the image Env,
/// then the manifest env, each replacing an existing key in place or appending. The working
/// directory is the manifest's, else the image's, else `/`.
pub fn merge(
    name: &str,
    image: &ImageConfig,
    container: &ContainerSpec,
) -> Result<ProcessSpec, SpecError> {
    let hostname = container
        .hostname
        .clone()
        .unwrap_or_else(|| name.to_string());

    let (entrypoint, cmd): (&[String], &[String]) =
        match (&container.entrypoint, &container.command) {
            (Some(ep), Some(cmd)) => (ep, cmd),
            (Some(ep), None) => (ep, &[]),
            (None, Some(cmd)) => (&image.entrypoint, cmd),
            (None, None) => (&image.entrypoint, &image.cmd),
        };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand {
            container: name.to_string(),
        });
    }

    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={hostname}"),
    ];
    for entry in &image.env {
        set_env(&mut env, entry.clone());
    }
    for (key, value) in &container.env {
        set_env(&mut env, format!("{key}={value}"));
    }

    let cwd = container
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeWorkdir {
            container: name.to_string(),
            dir: cwd,
        });
    }

    Ok(ProcessSpec {
        args,
        env,
        cwd,
        hostname,
    })
}

/// Replace the entry with the same key (text before the first `=`) or append.
fn set_env(env: &mut Vec<String>, entry: String) {
    let key = env_key(&entry).to_string();
    match env.iter_mut().find(|existing| env_key(existing) == key) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// Parse an image `StopSignal` ("SIGTERM", "TERM", "sigquit" or "15"); `None` means SIGTERM.
pub fn stop_signal(value: Option<&str>) -> Result<Signal, SpecError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(Signal::SIGTERM);
    };
    let bad = || SpecError::BadSignal(value.to_string());
    if let Ok(number) = value.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| bad());
    }
    let upper = value.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            ..ImageConfig::default()
        }
    }

    fn container() -> ContainerSpec {
        ContainerSpec {
            image: "img".into(),
            entrypoint: None,
            command: None,
            env: BTreeMap::new(),
            workdir: None,
            hostname: None,
            limits: Default::default(),
            stop_signal: None,
            stop_timeout: None,
            user: None,
            cap_add: vec![],
            cap_drop: vec![],
            seccomp: crate::manifest::SeccompProfile::Default,
            read_only: false,
            userns: false,
            pid: Default::default(),
            mounts: Vec::new(),
            restart: Default::default(),
            max_restarts: None,
            depends_on: Default::default(),
            essential: false,
            log: Default::default(),
            healthcheck: None,
            restart_on_unhealthy: false,
            network: Default::default(),
            ip: None,
            ports: Vec::new(),
        }
    }

    #[test]
    fn image_entrypoint_only() {
        let spec = merge("web", &image(&["/bin/httpd", "-f"], &[]), &container()).unwrap();
        assert_eq!(spec.args, strings(&["/bin/httpd", "-f"]));
    }

    #[test]
    fn image_cmd_only() {
        let spec = merge("web", &image(&[], &["/bin/sh", "-c", "true"]), &container()).unwrap();
        assert_eq!(spec.args, strings(&["/bin/sh", "-c", "true"]));
    }

    #[test]
    fn image_entrypoint_and_cmd_concatenate() {
        let spec = merge(
            "web",
            &image(&["/entry.sh"], &["serve", "--port=80"]),
            &container(),
        )
        .unwrap();
        assert_eq!(spec.args, strings(&["/entry.sh", "serve", "--port=80"]));
    }

    #[test]
    fn manifest_command_replaces_image_cmd_keeps_entrypoint() {
        let mut c = container();
        c.command = Some(strings(&["debug"]));
        let spec = merge("web", &image(&["/entry.sh"], &["serve"]), &c).unwrap();
        assert_eq!(spec.args, strings(&["/entry.sh", "debug"]));
    }

    #[test]
    fn manifest_entrypoint_drops_image_cmd() {
        let mut c = container();
        c.entrypoint = Some(strings(&["/bin/sh"]));
        let spec = merge("web", &image(&["/entry.sh"], &["serve"]), &c).unwrap();
        assert_eq!(spec.args, strings(&["/bin/sh"]));
    }

    #[test]
    fn manifest_entrypoint_and_command_both_used() {
        let mut c = container();
        c.entrypoint = Some(strings(&["/bin/sh", "-c"]));
        c.command = Some(strings(&["echo hi"]));
        let spec = merge("web", &image(&["/entry.sh"], &["serve"]), &c).unwrap();
        assert_eq!(spec.args, strings(&["/bin/sh", "-c", "echo hi"]));
    }

    #[test]
    fn empty_manifest_entrypoint_resets_to_image_less_command() {
        let mut c = container();
        c.entrypoint = Some(vec![]);
        c.command = Some(strings(&["/bin/true"]));
        let spec = merge("web", &image(&["/entry.sh"], &["serve"]), &c).unwrap();
        assert_eq!(spec.args, strings(&["/bin/true"]));
    }

    #[test]
    fn nothing_to_run_is_an_error_naming_the_container() {
        let err = merge("web", &image(&[], &[]), &container()).unwrap_err();
        assert_eq!(
            err,
            SpecError::NoCommand {
                container: "web".into()
            }
        );
        assert!(err.to_string().contains("[containers.web]"));
    }

    #[test]
    fn env_defaults_path_and_hostname() {
        let spec = merge("web", &image(&["/x"], &[]), &container()).unwrap();
        assert_eq!(
            spec.env,
            strings(&[&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=web"])
        );
    }

    #[test]
    fn image_env_overrides_defaults_and_manifest_overrides_image_in_place() {
        let mut img = image(&["/x"], &[]);
        img.env = strings(&["PATH=/opt/bin", "A=image", "B=image"]);
        let mut c = container();
        c.env.insert("B".into(), "manifest".into());
        c.env.insert("C".into(), "new=with=equals".into());
        c.hostname = Some("box".into());
        let spec = merge("web", &img, &c).unwrap();
        assert_eq!(
            spec.env,
            strings(&[
                "PATH=/opt/bin",
                "HOSTNAME=box",
                "A=image",
                "B=manifest",
                "C=new=with=equals"
            ])
        );
        assert_eq!(spec.hostname, "box");
    }

    #[test]
    fn manifest_may_override_hostname_variable() {
        let mut c = container();
        c.env.insert("HOSTNAME".into(), "custom".into());
        let spec = merge("web", &image(&["/x"], &[]), &c).unwrap();
        assert!(spec.env.contains(&"HOSTNAME=custom".to_string()));
        assert_eq!(spec.env.len(), 2);
    }

    #[test]
    fn workdir_manifest_then_image_then_root() {
        let mut img = image(&["/x"], &[]);
        assert_eq!(merge("w", &img, &container()).unwrap().cwd, "/");
        img.working_dir = Some(String::new());
        assert_eq!(merge("w", &img, &container()).unwrap().cwd, "/");
        img.working_dir = Some("/srv".into());
        assert_eq!(merge("w", &img, &container()).unwrap().cwd, "/srv");
        let mut c = container();
        c.workdir = Some("/data".into());
        assert_eq!(merge("w", &img, &c).unwrap().cwd, "/data");
        c.workdir = Some("data".into());
        assert!(matches!(
            merge("w", &img, &c),
            Err(SpecError::RelativeWorkdir { .. })
        ));
    }

    #[test]
    fn hostname_defaults_to_container_name() {
        assert_eq!(
            merge("db", &image(&["/x"], &[]), &container())
                .unwrap()
                .hostname,
            "db"
        );
    }

    #[test]
    fn stop_signal_forms() {
        assert_eq!(stop_signal(None).unwrap(), Signal::SIGTERM);
        assert_eq!(stop_signal(Some("")).unwrap(), Signal::SIGTERM);
        assert_eq!(stop_signal(Some("SIGQUIT")).unwrap(), Signal::SIGQUIT);
        assert_eq!(stop_signal(Some("int")).unwrap(), Signal::SIGINT);
        assert_eq!(stop_signal(Some("9")).unwrap(), Signal::SIGKILL);
        assert!(stop_signal(Some("SIGNOPE")).is_err());
        assert!(stop_signal(Some("999")).is_err());
    }
}
