//! Host integration test (root): hostile image layers the other store tests do not cover —
//! setuid/setgid files and foreign owners (kept as data in a root-only store), whiteouts that
//! name `.`/`..`/nothing or sit below a symlink, fifos, devices and made-up entry types, and
//! layers that declare or unpack to more than the store's free space (on a small tmpfs in a
//! private mount namespace, never the real disk). After each refusal the store is consistent:
//! nothing staged is left, no half layer, it opens again and the image imported before still
//! verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_agent::oci::{
    tar_from_entries, write_layout_from_layers, LayerBlob, LayerCompression, LayoutImage, TarEntry,
};
use berth_agent::store::layerfs::RecordingLayerFs;
use berth_agent::store::unpack::UnpackError;
use berth_agent::store::{Store, StoreError, StoredImage};
use tar::EntryType;

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (ownership, mount namespaces, tmpfs)"
    );
}

/// One raw tar entry; the name is written verbatim (the `tar` crate's setters refuse `..`).
struct Raw<'a> {
    path: &'a str,
    kind: EntryType,
    mode: u32,
    owner: (u64, u64),
    data: &'a [u8],
    /// Overrides the size in the header (a header that lies about its data).
    size: Option<u64>,
    link: Option<&'a str>,
}

impl<'a> Raw<'a> {
    fn file(path: &'a str, data: &'a [u8]) -> Self {
        Raw {
            path,
            kind: EntryType::Regular,
            mode: 0o644,
            owner: (0, 0),
            data,
            size: None,
            link: None,
        }
    }
    fn of(path: &'a str, kind: EntryType) -> Self {
        Raw {
            kind,
            ..Raw::file(path, b"")
        }
    }
}

/// A tar stream of `entries`, ending with the two zero blocks unless `truncated`.
fn raw_tar(entries: &[Raw], truncated: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.owner.0);
        h.set_gid(e.owner.1);
        h.set_mtime(0);
        h.set_size(e.size.unwrap_or(e.data.len() as u64));
        let old = h.as_old_mut();
        old.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        if let Some(link) = e.link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    if !truncated {
        out.resize(out.len() + 1024, 0);
    }
    out
}

fn layout_of(dir: &Path, name: &str, tar: &[u8]) -> PathBuf {
    let out = dir.join(name);
    let blob = LayerBlob::from_tar(tar, LayerCompression::Gzip).unwrap();
    write_layout_from_layers(&out, &[blob], &LayoutImage::default()).unwrap();
    out
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Import the known-good image every case is checked against.
fn import_good(store: &Store, work: &Path) -> StoredImage {
    let tar =
        tar_from_entries(&[TarEntry::dir("etc"), TarEntry::file("etc/motd", b"hello")]).unwrap();
    let layout = layout_of(work, "good-layout", &tar);
    store.import_oci_layout("good", &layout).unwrap()
}

/// After a refused import: nothing staged, no extra layer or ref, and reopened, the good
/// image still verifies and reads.
fn assert_consistent(store: &Store, good: &StoredImage, what: &str) {
    let root = store.root().to_path_buf();
    assert_eq!(count(&root.join("tmp")), 0, "{what}: tmp/ was not cleaned");
    assert_eq!(
        count(&root.join("layers")),
        good.layer_dirs.len(),
        "{what}: a half layer was kept"
    );
    let reopened = Store::open(&root).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    assert_eq!(reopened.list().unwrap(), ["good"], "{what}");
    let image = reopened
        .image("good")
        .unwrap_or_else(|e| panic!("{what}: the good image no longer verifies: {e}"));
    assert_eq!(image, *good, "{what}");
    assert_eq!(
        fs::read(image.layer_dirs[0].join("etc/motd")).unwrap(),
        b"hello",
        "{what}"
    );
}

#[test]
fn setuid_files_are_kept_as_data_in_a_store_only_root_can_reach() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    // Everything above the store is open to all, so only the store's own modes protect it.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("store");
    fs::create_dir_all(root.join("layers")).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("layers"), fs::Permissions::from_mode(0o777)).unwrap();
    let store = Store::open(&root).unwrap();
    let good = import_good(&store, tmp.path());

    let script = b"#!/bin/sh\nid -u\n";
    let tar = raw_tar(
        &[
            Raw {
                mode: 0o755,
                owner: (0, 0),
                ..Raw::of("bin", EntryType::Directory)
            },
            Raw {
                mode: 0o4755,
                ..Raw::file("bin/su", script)
            },
            Raw {
                mode: 0o2755,
                owner: (1234, 5678),
                ..Raw::file("bin/sg", script)
            },
            Raw {
                mode: 0o6711,
                owner: (4242, 4242),
                ..Raw::file("bin/both", script)
            },
            Raw {
                mode: 0o1777,
                owner: (0, 0),
                ..Raw::of("tmp", EntryType::Directory)
            },
        ],
        false,
    );
    let layout = layout_of(tmp.path(), "setuid", &tar);
    let image = store.import_oci_layout("setuid", &layout).unwrap();
    let layer = &image.layer_dirs[0];
    for (path, mode, uid, gid) in [
        ("bin/su", 0o4755, 0, 0),
        ("bin/sg", 0o2755, 1234, 5678),
        ("bin/both", 0o6711, 4242, 4242),
        ("tmp", 0o1777, 0, 0),
    ] {
        let meta = fs::symlink_metadata(layer.join(path)).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{path}: mode as in the tar");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (uid, gid),
            "{path}: owner as in the tar"
        );
    }
    // The store and its layers are root's alone (tightened even where they were open) ...
    for dir in [root.clone(), root.join("layers"), root.join("tmp")] {
        let meta = fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700, "{}", dir.display());
        assert_eq!(meta.uid(), 0, "{}", dir.display());
    }
    // ... so an unprivileged host user can neither run nor even find the setuid file.
    for path in ["bin/su", "bin/both"] {
        let err = std::process::Command::new(layer.join(path))
            .uid(65534)
            .gid(65534)
            .output()
            .expect_err("nobody ran a setuid file from the store");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{path}: {err}"
        );
    }
    let err = std::process::Command::new("/bin/ls")
        .arg(root.join("layers"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!err.status.success(), "nobody listed the store's layers");
    assert_consistent_with(&store, &good, &image);
}

/// Like [`assert_consistent`] for a store holding `good` and `other`.
fn assert_consistent_with(store: &Store, good: &StoredImage, other: &StoredImage) {
    let reopened = Store::open(store.root()).unwrap();
    assert_eq!(reopened.list().unwrap(), ["good", "setuid"]);
    assert_eq!(reopened.image("good").unwrap(), *good);
    assert_eq!(reopened.image("setuid").unwrap(), *other);
}

#[test]
fn hostile_whiteouts_are_refused_and_nothing_is_written_outside() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let sentinel = tmp.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("passwd"), b"original").unwrap();
    let sentinel_str = sentinel.to_str().unwrap().to_owned();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let good = import_good(&store, tmp.path());

    // (entries, entry the error names, reason in the error)
    let cases: Vec<(Vec<Raw>, &str, &str)> = vec![
        (vec![Raw::file(".wh.", b"")], ".wh.", "whiteout of an empty"),
        (
            vec![Raw::file(".wh..", b"")],
            ".wh..",
            "whiteout of an empty, `.` or `..`",
        ),
        (
            vec![Raw::file(".wh...", b"")],
            ".wh...",
            "whiteout of an empty, `.` or `..`",
        ),
        (
            vec![
                Raw::of("etc", EntryType::Directory),
                Raw::file("etc/.wh...", b""),
            ],
            "etc/.wh...",
            "whiteout of an empty, `.` or `..`",
        ),
        (
            vec![Raw::file("../.wh.passwd", b"")],
            "../.wh.passwd",
            "`..` component",
        ),
        (
            vec![Raw::file("etc/../../.wh.sentinel", b"")],
            "etc/../../.wh.sentinel",
            "`..` component",
        ),
        (
            vec![Raw::file("/.wh.etc", b"")],
            "/.wh.etc",
            "absolute path",
        ),
        (
            vec![
                Raw {
                    link: Some(&sentinel_str),
                    ..Raw::of("link", EntryType::Symlink)
                },
                Raw::file("link/.wh.passwd", b""),
            ],
            "link/.wh.passwd",
            "its parent `link` is not a directory inside the layer",
        ),
        (
            vec![
                Raw {
                    link: Some(&sentinel_str),
                    ..Raw::of("link", EntryType::Symlink)
                },
                Raw::file("link/.wh..wh..opq", b""),
            ],
            "link/.wh..wh..opq",
            "its parent `link` is not a directory inside the layer",
        ),
    ];
    for (i, (entries, entry, reason)) in cases.iter().enumerate() {
        let layout = layout_of(tmp.path(), &format!("wh{i}"), &raw_tar(entries, false));
        let err = store.import_oci_layout("evil", &layout).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Unpack { .. }), "{entry}: {text}");
        assert!(text.contains(&format!("`{entry}`")), "{entry}: {text}");
        assert!(text.contains(reason), "{entry}: {text}");
        assert_eq!(fs::read(sentinel.join("passwd")).unwrap(), b"original");
        assert_eq!(count(&sentinel), 1, "{entry}: written into the sentinel");
        assert!(!tmp.path().join("passwd").exists() && !tmp.path().join("sentinel.wh").exists());
        assert_consistent(&store, &good, entry);
    }
}

#[test]
fn fifos_devices_and_unknown_entry_types_are_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let good = import_good(&store, tmp.path());
    // tar has no socket type: a tool smuggling one has to invent a type flag, refused like
    // every type flag tar does not define.
    let cases = [
        (Raw::of("run/fifo", EntryType::Fifo), "fifos"),
        (
            Raw::of("sock", EntryType::new(b's')),
            "entries of unknown type",
        ),
        (
            Raw::of("odd", EntryType::new(b'9')),
            "entries of unknown type",
        ),
        (Raw::of("dev/sda", EntryType::Block), "block devices"),
        (Raw::of("dev/null", EntryType::Char), "character devices"),
    ];
    for (i, (entry, kind)) in cases.into_iter().enumerate() {
        let name = entry.path;
        let layout = layout_of(tmp.path(), &format!("odd{i}"), &raw_tar(&[entry], false));
        let err = store.import_oci_layout("odd", &layout).unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Unpack {
                    source: UnpackError::Unsupported { .. },
                    ..
                }
            ),
            "{name}: {err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("`{name}` is refused: {kind} are not allowed")),
            "{name}: {err}"
        );
        assert_consistent(&store, &good, name);
    }
}

/// Run `body` on a thread in a private mount namespace with a `size` tmpfs at `dir`.
fn on_small_tmpfs(dir: &Path, size: &str, body: impl FnOnce() + Send + 'static) {
    use nix::mount::{mount, MsFlags};
    let dir = dir.to_path_buf();
    let options = format!("size={size},mode=0755");
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap();
        body();
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// Rewrite `layout`'s manifest so its first layer declares `size` bytes.
fn declare_layer_size(layout: &Path, size: u64) {
    use sha2::Digest;
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let old = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blobs = layout.join("blobs/sha256");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&old[7..])).unwrap()).unwrap();
    manifest["layers"][0]["size"] = size.into();
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let hex = hex::encode(sha2::Sha256::digest(&bytes));
    fs::write(blobs.join(&hex), &bytes).unwrap();
    index["manifests"][0]["digest"] = format!("sha256:{hex}").into();
    index["manifests"][0]["size"] = bytes.len().into();
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn layers_larger_than_the_free_space_are_refused_and_a_full_store_stays_consistent() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    fs::create_dir(&small).unwrap();
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    let ten_gb: u64 = 10 << 30;

    // Layouts live outside the small filesystem.
    let declared = {
        let tar = tar_from_entries(&[TarEntry::file("a", b"small")]).unwrap();
        let layout = layout_of(&work, "declared", &tar);
        declare_layer_size(&layout, ten_gb);
        layout
    };
    // A tar header announcing 10 GB (its data never follows).
    let header_10gb = layout_of(
        &work,
        "header",
        &raw_tar(
            &[Raw {
                size: Some(ten_gb),
                ..Raw::file("huge", b"")
            }],
            true,
        ),
    );
    // 40 files of 256 KiB (zeros: a tiny blob): 10 MiB unpacked, none larger than the free
    // space on its own.
    let zeros = vec![0u8; 256 * 1024];
    let names: Vec<String> = (0..40).map(|i| format!("fill/{i}")).collect();
    let mut entries = vec![TarEntry::dir("fill")];
    entries.extend(names.iter().map(|n| TarEntry::file(n, &zeros)));
    let filler = layout_of(&work, "filler", &tar_from_entries(&entries).unwrap());

    let root = small.join("store");
    on_small_tmpfs(&small, "8m", move || {
        let store = Store::open(&root).unwrap();
        let good = import_good(&store, &work);

        // The descriptor's size: refused before a byte is copied.
        let err = store.import_oci_layout("big", &declared).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::NoSpace { .. }), "{text}");
        assert!(
            text.contains("not enough space in the image store")
                && text.contains(&format!("declares {ten_gb} bytes")),
            "{text}"
        );
        assert_consistent(&store, &good, "declared 10 GB");

        // A file header's size: refused before its data is read.
        let err = store.import_oci_layout("big", &header_10gb).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                StoreError::Unpack {
                    source: UnpackError::NoSpace { .. },
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("`huge` is refused: not enough space in the image store")
                && text.contains(&format!("declares {ten_gb} bytes")),
            "{text}"
        );
        assert_consistent(&store, &good, "header 10 GB");

        // Many files that each fit: refused once the next one does not.
        let err = store.import_oci_layout("fill", &filler).unwrap_err();
        assert!(
            err.to_string()
                .contains("not enough space in the image store"),
            "{err}"
        );
        assert_consistent(&store, &good, "filler");

        // With the check bypassed (a fake that reports unlimited space), the filesystem
        // itself runs out: a clean ENOSPC error, and the store is as consistent.
        drop(store);
        let blind = Store::open_with(&root, Arc::new(RecordingLayerFs::new())).unwrap();
        let err = blind.import_oci_layout("fill", &filler).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                &err,
                StoreError::Unpack {
                    source: UnpackError::StoreFull { .. },
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("not enough space in the image store: the filesystem is full"),
            "{text}"
        );
        assert_consistent(&blind, &good, "ENOSPC");
        // The space is back: a small image imports again.
        let again = Store::open(&root).unwrap();
        let tar = tar_from_entries(&[TarEntry::file("b", b"fits")]).unwrap();
        let fits = layout_of(&work, "fits", &tar);
        again.import_oci_layout("fits", &fits).unwrap();
    });
}
