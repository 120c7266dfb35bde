//! The command line (clap derive). Kept apart from `main` so parsing is unit-tested.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// berth image builder.
#[derive(Debug, Parser)]
#[command(
    name = "berth-image",
    version,
    about = "Build berth images: kernel + initramfs, OCI layouts, demo rootfs"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build DIR/vmlinuz and DIR/initramfs.img from a host manifest.
    Build(BuildArgs),
    /// Turn a directory into a single-layer OCI image layout.
    Oci(OciArgs),
    /// Make a minimal rootfs from Debian's static busybox.
    BusyboxRootfs(BusyboxArgs),
}

/// `berth-image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The host manifest (TOML).
    pub manifest: PathBuf,
    /// Output directory (replaced atomically).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The kernel (an x86 bzImage).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// berth-init (default: the workspace's static release build).
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// berthd (default: the workspace's static release build).
    #[arg(long, value_name = "PATH")]
    pub berthd: Option<PathBuf>,
    /// berthctl (default: the workspace's static release build).
    #[arg(long, value_name = "PATH")]
    pub berthctl: Option<PathBuf>,
    /// What to write (comma-separated): `initramfs` (vmlinuz + initramfs.img), `raw`
    /// (disk.raw) and/or `qcow2` (disk.qcow2), the disks being UEFI-bootable GPT images.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "initramfs")]
    pub format: Vec<Format>,
    /// Total size of disk images (e.g. 320M, 2G); the state partition gets what the ESP
    /// leaves, and grows to fill a larger disk on first boot.
    #[arg(long, value_name = "SIZE", value_parser = crate::disk::parse_size, default_value = "320M")]
    pub disk_size: u64,
    /// The systemd EFI stub the UKI is built from (package systemd-boot-efi).
    #[arg(long, value_name = "PATH", default_value = crate::uki::DEFAULT_STUB)]
    pub efi_stub: PathBuf,
    /// Do not pull `registry:` images now; berthd pulls them at boot instead.
    #[arg(long)]
    pub no_pull: bool,
}

/// An output format of `berth-image build`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// vmlinuz + initramfs.img, for direct kernel boot.
    Initramfs,
    /// disk.raw: a GPT disk with an ESP (UKI) and the state partition.
    Raw,
    /// disk.qcow2: the same disk as qcow2.
    Qcow2,
}

/// `berth-image oci`.
#[derive(Debug, Args)]
pub struct OciArgs {
    /// The directory tree to pack.
    #[arg(long, value_name = "DIR")]
    pub rootfs: PathBuf,
    /// The OCI layout directory to write (replaced atomically).
    #[arg(long, value_name = "LAYOUT")]
    pub out: PathBuf,
    /// Entrypoint: a JSON array ('["/bin/sh","-c"]') or the words.
    #[arg(long, num_args = 1.., value_name = "JSON_ARRAY|ARG")]
    pub entrypoint: Vec<String>,
    /// Cmd: a JSON array ('["/bin/sh","-c","echo hi"]') or the words.
    #[arg(long, num_args = 1.., value_name = "JSON_ARRAY|ARG")]
    pub cmd: Vec<String>,
    /// Environment variable (repeatable).
    #[arg(long, value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(long, value_name = "PATH")]
    pub workdir: Option<String>,
    /// Image name recorded in index.json.
    #[arg(long = "ref", value_name = "NAME")]
    pub ref_name: Option<String>,
}

/// `berth-image busybox-rootfs`.
#[derive(Debug, Args)]
pub struct BusyboxArgs {
    /// The rootfs directory to create (must be missing or empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A static busybox.
    #[arg(long, value_name = "PATH", default_value = crate::busybox::DEFAULT_BUSYBOX)]
    pub busybox: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("berth-image").chain(args.iter().copied()))
    }

    #[test]
    fn build_arguments() {
        let cli = parse(&[
            "build",
            "examples/demo.toml",
            "--out",
            "o",
            "--kernel",
            "bz",
        ])
        .unwrap();
        let Command::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(b.manifest, PathBuf::from("examples/demo.toml"));
        assert_eq!(b.out, PathBuf::from("o"));
        assert_eq!(b.kernel, Some(PathBuf::from("bz")));
        assert_eq!(b.init, None);
        assert_eq!(b.format, [Format::Initramfs]);
        assert_eq!(b.disk_size, 320 * 1024 * 1024);
        assert!(parse(&["build", "m.toml"]).is_err(), "--out is required");
    }

    #[test]
    fn disk_formats_combine() {
        let cli = parse(&[
            "build",
            "m.toml",
            "--out",
            "o",
            "--format",
            "raw,qcow2",
            "--disk-size",
            "2G",
        ])
        .unwrap();
        let Command::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(b.format, [Format::Raw, Format::Qcow2]);
        assert_eq!(b.disk_size, 2 << 30);
        assert!(parse(&["build", "m.toml", "--out", "o", "--format", "iso"]).is_err());
        assert!(parse(&["build", "m.toml", "--out", "o", "--disk-size", "lots"]).is_err());
    }

    #[test]
    fn oci_arguments_words_and_json() {
        let cli = parse(&[
            "oci",
            "--rootfs",
            "r",
            "--out",
            "l",
            "--cmd",
            "/bin/sh",
            "x",
            "--env",
            "A=1",
            "--env",
            "B=2",
            "--entrypoint",
            r#"["/bin/env"]"#,
            "--ref",
            "busybox",
        ])
        .unwrap();
        let Command::Oci(o) = cli.command else {
            panic!("not oci")
        };
        assert_eq!(o.cmd, ["/bin/sh", "x"]);
        assert_eq!(o.env, ["A=1", "B=2"]);
        assert_eq!(o.entrypoint, [r#"["/bin/env"]"#]);
        assert_eq!(o.ref_name.as_deref(), Some("busybox"));
        assert_eq!(o.workdir, None);
    }

    #[test]
    fn busybox_default_path() {
        let Command::BusyboxRootfs(b) = parse(&["busybox-rootfs", "--out", "r"]).unwrap().command
        else {
            panic!("not busybox-rootfs")
        };
        assert_eq!(b.busybox, PathBuf::from("/bin/busybox"));
    }
}
