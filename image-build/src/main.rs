//! `berth-image`: builds berth boot images (kernel + initramfs), OCI image layouts and the
//! demo busybox rootfs. This file only dispatches to the modules and reports errors.

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;

use berth_image::cli::{Cli, Command};
use berth_image::progress::{human_size, Progress};
use berth_image::{binaries, busybox, image, oci_cmd};

/// Any command's failure.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Build(#[from] image::BuildError),
    #[error(transparent)]
    Oci(#[from] oci_cmd::OciCmdError),
    #[error(transparent)]
    Busybox(#[from] busybox::BusyboxError),
    #[error("SOURCE_DATE_EPOCH={0:?} is not a number of seconds")]
    Epoch(String),
}

fn source_date_epoch() -> Result<Option<u64>, MainError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().map(Some).map_err(|_| MainError::Epoch(v))
        }
        _ => Ok(None),
    }
}

fn run(cli: Cli) -> Result<(), MainError> {
    let progress = Progress::detect();
    match cli.command {
        Command::Build(args) => {
            let req = image::BuildRequest {
                manifest: args.manifest,
                out: args.out,
                kernel: args.kernel,
                binaries: binaries::Overrides {
                    init: args.init,
                    berthd: args.berthd,
                    berthctl: args.berthctl,
                },
                roots: binaries::default_roots(),
                source_date_epoch: source_date_epoch()?,
                disk: image::DiskOptions {
                    formats: args.format,
                    disk_size: args.disk_size,
                    efi_stub: args.efi_stub,
                },
                pull: !args.no_pull,
            };
            let written = image::build(&req, &progress)?;
            let width = written
                .iter()
                .map(|w| w.path.display().to_string().len())
                .max()
                .unwrap_or(0);
            for w in written {
                println!(
                    "{:width$}  {}",
                    w.path.display().to_string(),
                    human_size(w.size)
                );
            }
        }
        Command::Oci(args) => {
            let req = oci_cmd::OciRequest {
                rootfs: args.rootfs,
                out: args.out,
                entrypoint: args.entrypoint,
                cmd: args.cmd,
                env: args.env,
                workdir: args.workdir,
                ref_name: args.ref_name,
            };
            let info = oci_cmd::run(&req)?;
            println!(
                "{}  {}  {}",
                req.out.display(),
                info.manifest_digest,
                human_size(info.total_size)
            );
        }
        Command::BusyboxRootfs(args) => {
            let rootfs = busybox::make_rootfs(&args.busybox, &args.out, &busybox::RunBusybox)?;
            println!(
                "{}  busybox + {} applets",
                args.out.display(),
                rootfs.applets
            );
        }
    }
    Ok(())
}

/// The error and its causes, one per line, each message printed once (a cause whose text is
/// already part of the line above is skipped), plus a manifest error's hint.
fn report(err: &MainError) -> String {
    let mut out = format!("error: {err}");
    let mut last = err.to_string();
    let mut hint = None;
    let mut cause: Option<&dyn Error> = Some(err);
    while let Some(e) = cause {
        if let Some(m) = e.downcast_ref::<berth_agent::manifest::ManifestError>() {
            hint = hint.or(m.hint.clone());
        }
        let text = e.to_string();
        if !last.contains(&text) {
            out.push_str(&format!("\n  caused by: {text}"));
            last = text;
        }
        cause = e.source();
    }
    if let Some(h) = hint {
        out.push_str(&format!("\n  hint: {h}"));
    }
    out
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_prints_each_cause_once() {
        let err = MainError::Busybox(busybox::BusyboxError::List {
            path: "/bin/busybox".into(),
            source: std::io::Error::other("permission denied"),
        });
        assert_eq!(
            report(&err),
            "error: cannot list the applets of /bin/busybox\n  caused by: permission denied"
        );
    }
}
