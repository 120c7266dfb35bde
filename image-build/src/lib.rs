//! berth image builder library: the pieces behind the `berth-image` command, public so the
//! boot tests can build initramfs overlays with the same cpio writer.

pub mod binaries;
pub mod busybox;
pub mod cli;
pub mod cpio;
pub mod disk;
pub mod elf;
pub mod gpt;
pub mod image;
pub mod initramfs;
pub mod oci_cmd;
pub mod progress;
pub mod staging;
pub mod uki;
