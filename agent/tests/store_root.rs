//! Host-integration test (root): a layer with whiteouts and an opaque directory is really
//! unpacked into overlayfs form — a 0/0 character device and `trusted.overlay.opaque=y`.
//! Skipped, with a message, when not running as root.

// This whole crate is test code: helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_agent::oci::{
    tar_from_entries, write_layout_from_layers, LayerBlob, LayerCompression, LayoutImage, TarEntry,
};
use berth_agent::store::Store;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn opaque_xattr(dir: &Path) -> Option<Vec<u8>> {
    let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: `path` and the name are NUL-terminated and live across the call; `buf` is
    // writable for `buf.len()` bytes.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn whiteouts_and_opaque_dirs_become_overlayfs_markers() {
    if !is_root() {
        eprintln!("SKIPPED whiteouts_and_opaque_dirs_become_overlayfs_markers: needs root (mknod, trusted.* xattrs)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = tar_from_entries(&[
        TarEntry::file("etc/motd", b"hello"),
        TarEntry::file("var/cache/old", b"stale"),
    ])
    .unwrap();
    let top = tar_from_entries(&[
        TarEntry::dir("etc"),
        TarEntry::file("etc/.wh.motd", b""),
        TarEntry::dir("var/cache"),
        TarEntry::file("var/cache/.wh..wh..opq", b""),
        TarEntry::file("var/cache/new", b"fresh"),
    ])
    .unwrap();
    let layers = [
        LayerBlob::from_tar(&base, LayerCompression::Gzip).unwrap(),
        LayerBlob::from_tar(&top, LayerCompression::Gzip).unwrap(),
    ];
    write_layout_from_layers(&dir.path().join("layout"), &layers, &LayoutImage::default()).unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let image = store
        .import_oci_layout("wh", &dir.path().join("layout"))
        .unwrap();
    let upper = &image.layer_dirs[1];

    let whiteout = fs::symlink_metadata(upper.join("etc/motd")).unwrap();
    assert!(
        whiteout.file_type().is_char_device(),
        "etc/motd is not a character device"
    );
    assert_eq!(whiteout.rdev(), 0, "whiteout must be device 0/0");
    assert!(!upper.join("etc/.wh.motd").exists());

    assert_eq!(
        opaque_xattr(&upper.join("var/cache")).as_deref(),
        Some(&b"y"[..])
    );
    assert!(!upper.join("var/cache/.wh..wh..opq").exists());
    assert_eq!(fs::read(upper.join("var/cache/new")).unwrap(), b"fresh");
    assert_eq!(
        opaque_xattr(&upper.join("etc")),
        None,
        "only the marked directory is opaque"
    );

    // The base layer is untouched by the whiteouts of the layer above it.
    assert_eq!(
        fs::read(image.layer_dirs[0].join("etc/motd")).unwrap(),
        b"hello"
    );
}
