//! berthctl: the berth operator CLI.
//!
//! Operators run it on their own machine (check a manifest before building an image) and on
//! the host (talk to `berthd`). Each subcommand is a variant of [`Command`] with its own args
//! struct and function; exit status 0 means success, 1 a failed check or operation, 2 a usage
//! error (clap's convention).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_agent::imagectl;
use berth_agent::manifest::Manifest;
use clap::{Args, Parser, Subcommand};

/// berth operator CLI.
#[derive(Debug, Parser)]
#[command(name = "berthctl", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check host manifests: syntax, schema, values, and (unless --no-images) that every
    /// image source exists relative to the manifest's directory.
    Validate(ValidateArgs),
    /// List the image store: name, digest, size, the containers using each, source.
    Images(ImagesArgs),
    /// Pull a `registry:` image of the manifest into the store now.
    Pull(PullArgs),
    /// Remove images the manifest does not declare, then unreferenced blobs and layers.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// The state directory holding the store.
    #[arg(long, value_name = "DIR", default_value = berth_agent::imagectl::STATE_DIR)]
    state: PathBuf,
    /// The host manifest (for `used by`, credentials, and what prune keeps).
    #[arg(long, value_name = "FILE", default_value = "/etc/berth/manifest.toml")]
    manifest: PathBuf,
}

#[derive(Debug, Args)]
struct ImagesArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PullArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The `[images]` name.
    name: String,
}

#[derive(Debug, Args)]
struct PruneArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Keep every image, only collect unreferenced blobs and layers.
    #[arg(long)]
    keep_images: bool,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// Manifest files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Do not check that image sources (OCI layout directories) exist.
    #[arg(long)]
    no_images: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let ok = match cli.command {
        Command::Validate(args) => validate(&args, &mut stdout.lock(), &mut stderr.lock()),
        Command::Images(args) => image_command(&mut stderr.lock(), || {
            let manifest = Manifest::load(&args.store.manifest).ok();
            imagectl::images(
                &args.store.state,
                manifest.as_ref(),
                args.json,
                &mut stdout.lock(),
            )
        }),
        Command::Pull(args) => image_command(&mut stderr.lock(), || {
            imagectl::pull(
                &args.store.state,
                &args.store.manifest,
                &args.name,
                &mut stdout.lock(),
            )
        }),
        Command::Prune(args) => image_command(&mut stderr.lock(), || {
            let manifest = if args.keep_images {
                None
            } else {
                Some(Manifest::load(&args.store.manifest).map_err(Box::new)?)
            };
            imagectl::prune(&args.store.state, manifest.as_ref(), &mut stdout.lock())
        }),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs an image command, printing its error chain on failure.
fn image_command(
    err: &mut impl Write,
    run: impl FnOnce() -> Result<(), imagectl::ImageCtlError>,
) -> bool {
    match run() {
        Ok(()) => true,
        Err(e) => {
            let mut text = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(s) = cur {
                text.push_str(": ");
                text.push_str(&s.to_string());
                cur = s.source();
            }
            let _ = writeln!(err, "berthctl: {text}");
            false
        }
    }
}

/// Validates each file, reporting to `out` (successes) and `err` (errors); true if all passed.
fn validate(args: &ValidateArgs, out: &mut impl Write, err: &mut impl Write) -> bool {
    let mut all_ok = true;
    for file in &args.files {
        match check(file, !args.no_images) {
            Ok(manifest) => {
                let c = manifest.containers.len();
                let i = manifest.images.len();
                // Write failures (closed pipe) are not a manifest problem; nothing to report.
                let _ = writeln!(
                    out,
                    "{}: ok ({c} {}, {i} {})",
                    file.display(),
                    plural(c, "container"),
                    plural(i, "image")
                );
            }
            Err(e) => {
                all_ok = false;
                let _ = writeln!(err, "{e}");
                if let Some(hint) = &e.hint {
                    let _ = writeln!(err, "  hint: {hint}");
                }
            }
        }
    }
    all_ok
}

/// Loads `file` and, if `images`, resolves its images relative to the file's directory.
fn check(file: &Path, images: bool) -> Result<Manifest, berth_agent::manifest::ManifestError> {
    let manifest = Manifest::load(file)?;
    if images {
        let base = file.parent().unwrap_or(Path::new(""));
        manifest.resolve_images(base)?;
    }
    Ok(manifest)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn validate_reports_each_file() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good.toml");
        std::fs::write(&good, "version = 1\n[images]\nb = { source = \"oci-layout:b\" }\n[containers.c]\nimage = \"b\"\n").unwrap();
        let bad = tmp.path().join("bad.toml");
        std::fs::write(&bad, "version = 1\n[containers.c]\nimagee = \"b\"\n").unwrap();

        let args = ValidateArgs {
            files: vec![good.clone()],
            no_images: true,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(validate(&args, &mut out, &mut err));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}: ok (1 container, 1 image)\n", good.display())
        );
        assert!(err.is_empty());

        // With image checks the missing layout fails, pointing at the source value.
        let args = ValidateArgs {
            files: vec![good.clone(), bad.clone()],
            no_images: false,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(!validate(&args, &mut out, &mut err));
        assert!(out.is_empty());
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.contains(&format!(
                "{}:3:16: image \"b\": no OCI image layout",
                good.display()
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("{}:3:1: unknown key `imagee`", bad.display())),
            "{err}"
        );
    }
}
