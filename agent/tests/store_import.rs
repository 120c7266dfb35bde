//! Importing OCI layouts into the store: round trips, verification failures, hostile layers,
//! layer sharing and compression formats. Runs without root (whiteouts are in store_root.rs).

// This whole crate is test code: helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_agent::oci::{
    tar_from_entries, write_layout, write_layout_from_layers, LayerBlob, LayerCompression,
    LayoutImage, TarEntry,
};
use berth_agent::store::blobs::BlobError;
use berth_agent::store::{ImageConfig, Store, StoreError};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn store(&self) -> Store {
        Store::open(&self.path("store")).unwrap()
    }
}

fn layer(entries: &[TarEntry], compression: LayerCompression) -> LayerBlob {
    LayerBlob::from_tar(&tar_from_entries(entries).unwrap(), compression).unwrap()
}

fn layout_with(fx: &Fixture, name: &str, layers: &[LayerBlob]) -> (PathBuf, String) {
    let out = fx.path(name);
    let info = write_layout_from_layers(&out, layers, &LayoutImage::default()).unwrap();
    (out, info.manifest_digest)
}

fn blob_file(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn layer_blob_digest(layout: &Path, manifest_digest: &str) -> String {
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob_file(layout, manifest_digest)).unwrap()).unwrap();
    manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

/// The store is as if nothing had been imported: no ref, no layer, nothing staged.
fn assert_nothing_imported(store_root: &Path) {
    assert_eq!(count(&store_root.join("refs")), 0, "a ref was written");
    assert_eq!(
        count(&store_root.join("layers")),
        0,
        "a layer was left under layers/"
    );
    assert_eq!(count(&store_root.join("tmp")), 0, "staging was not cleaned");
}

#[test]
fn write_layout_output_round_trips_config_and_files() {
    let fx = Fixture::new();
    let tree = fx.path("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::create_dir_all(tree.join("srv/www")).unwrap();
    fs::write(tree.join("bin/app"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(
        tree.join("bin/app"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::write(tree.join("srv/www/index.html"), b"hello").unwrap();
    std::os::unix::fs::symlink("app", tree.join("bin/app2")).unwrap();
    let image = LayoutImage {
        entrypoint: vec!["/bin/app".into()],
        cmd: vec!["--port".into(), "80".into()],
        env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
        working_dir: Some("/srv/www".into()),
        ref_name: Some("web".into()),
    };
    let info = write_layout(&tree, &fx.path("layout"), &image).unwrap();

    let store = fx.store();
    let imported = store.import_oci_layout("web", &fx.path("layout")).unwrap();
    assert_eq!(imported.manifest_digest, info.manifest_digest);
    assert_eq!(
        imported.config,
        ImageConfig {
            entrypoint: image.entrypoint.clone(),
            cmd: image.cmd.clone(),
            env: image.env.clone(),
            working_dir: image.working_dir.clone(),
            user: None,
            stop_signal: None,
        }
    );
    assert_eq!(imported.layer_dirs.len(), 1);
    let root = &imported.layer_dirs[0];
    assert!(root.starts_with(fx.path("store/layers")));
    assert_eq!(fs::read(root.join("srv/www/index.html")).unwrap(), b"hello");
    assert_eq!(
        fs::read_link(root.join("bin/app2")).unwrap(),
        Path::new("app")
    );
    assert_eq!(
        fs::metadata(root.join("bin/app")).unwrap().mode() & 0o777,
        0o755
    );

    // Looked up again (also from a freshly opened store) without re-importing.
    assert_eq!(store.image("web").unwrap(), imported);
    assert_eq!(
        Store::open(&fx.path("store"))
            .unwrap()
            .image("web")
            .unwrap(),
        imported
    );
    assert_eq!(store.list().unwrap(), vec!["web".to_string()]);
    // Every blob of the image is in the store.
    for digest in info
        .layer_digests
        .iter()
        .chain([&info.config_digest, &info.manifest_digest])
    {
        assert!(
            blob_file(&fx.path("store"), digest).is_file(),
            "{digest} not stored"
        );
    }
}

#[test]
fn flipped_byte_in_a_layer_blob_is_refused() {
    let fx = Fixture::new();
    let (layout, manifest) = layout_with(
        &fx,
        "layout",
        &[layer(
            &[TarEntry::file("f", b"data")],
            LayerCompression::Gzip,
        )],
    );
    let blob = blob_file(&layout, &layer_blob_digest(&layout, &manifest));
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, bytes).unwrap();

    let store = fx.store();
    let err = store.import_oci_layout("img", &layout).unwrap_err();
    assert!(
        matches!(err, StoreError::Blob(BlobError::DigestMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_nothing_imported(store.root());
    assert!(matches!(
        store.image("img"),
        Err(StoreError::UnknownImage { .. })
    ));
}

#[test]
fn size_mismatch_and_missing_blob_are_refused() {
    let fx = Fixture::new();
    let (layout, manifest) = layout_with(
        &fx,
        "layout",
        &[layer(
            &[TarEntry::file("f", b"data")],
            LayerCompression::None,
        )],
    );
    let blob = blob_file(&layout, &layer_blob_digest(&layout, &manifest));
    let original = fs::read(&blob).unwrap();
    let store = fx.store();

    let mut longer = original.clone();
    longer.push(0);
    fs::write(&blob, &longer).unwrap();
    let err = store.import_oci_layout("img", &layout).unwrap_err();
    assert!(
        matches!(err, StoreError::Blob(BlobError::SizeMismatch { .. })),
        "{err}"
    );
    assert_nothing_imported(store.root());

    fs::write(&blob, &original[..original.len() - 1]).unwrap();
    let err = store.import_oci_layout("img", &layout).unwrap_err();
    assert!(
        matches!(err, StoreError::Blob(BlobError::SizeMismatch { .. })),
        "{err}"
    );
    assert_nothing_imported(store.root());

    fs::remove_file(&blob).unwrap();
    let err = store.import_oci_layout("img", &layout).unwrap_err();
    assert!(
        matches!(err, StoreError::Blob(BlobError::Missing { .. })),
        "{err}"
    );
    assert_nothing_imported(store.root());
}

#[test]
fn hostile_layers_are_refused_without_writing_outside() {
    let fx = Fixture::new();
    let sentinel = fx.path("sentinel");
    fs::create_dir_all(&sentinel).unwrap();
    fs::write(sentinel.join("passwd"), b"original").unwrap();
    let sentinel_str = sentinel.to_str().unwrap().to_string();
    let cases: Vec<(Vec<TarEntry>, &str)> = vec![
        (vec![TarEntry::file("../x", b"bad")], "../x"),
        (
            vec![TarEntry::file("../../sentinel/passwd", b"bad")],
            "../../sentinel/passwd",
        ),
        (vec![TarEntry::file("/abs", b"bad")], "/abs"),
        (
            vec![
                TarEntry::dir("ok"),
                TarEntry::symlink("a", &sentinel_str),
                TarEntry::file("a/passwd", b"bad"),
            ],
            "a/passwd",
        ),
        (
            vec![TarEntry::hardlink("h", &format!("{sentinel_str}/passwd"))],
            "h",
        ),
        (
            vec![TarEntry::CharDevice {
                path: "dev/mem".into(),
                major: 1,
                minor: 1,
            }],
            "dev/mem",
        ),
        (
            vec![TarEntry::Fifo {
                path: "fifo".into(),
            }],
            "fifo",
        ),
    ];
    let store = fx.store();
    for (i, (entries, name)) in cases.into_iter().enumerate() {
        let (layout, _) = layout_with(
            &fx,
            &format!("layout{i}"),
            &[layer(&entries, LayerCompression::Gzip)],
        );
        let err = store.import_oci_layout("evil", &layout).unwrap_err();
        assert!(matches!(err, StoreError::Unpack { .. }), "{name}: {err}");
        assert!(
            err.to_string().contains(&format!("`{name}`")),
            "{name}: error does not name the entry: {err}"
        );
        assert_nothing_imported(store.root());
        assert_eq!(
            fs::read(sentinel.join("passwd")).unwrap(),
            b"original",
            "{name}"
        );
        assert_eq!(
            count(&sentinel),
            1,
            "{name}: something was written into the sentinel dir"
        );
        assert!(
            !fx.path("store/x").exists() && !fx.path("x").exists() && !Path::new("/abs").exists()
        );
    }
}

#[test]
fn shared_base_layer_is_unpacked_once() {
    let fx = Fixture::new();
    let base = layer(
        &[TarEntry::file("etc/os-release", b"base")],
        LayerCompression::Gzip,
    );
    let (first, _) = layout_with(
        &fx,
        "first",
        &[
            base.clone(),
            layer(&[TarEntry::file("a", b"a")], LayerCompression::Gzip),
        ],
    );
    let (second, _) = layout_with(
        &fx,
        "second",
        &[
            base,
            layer(&[TarEntry::file("b", b"b")], LayerCompression::Zstd),
        ],
    );
    let store = fx.store();
    let a = store.import_oci_layout("first", &first).unwrap();
    let base_dir = a.layer_dirs[0].clone();
    let inode = fs::metadata(base_dir.join("etc/os-release")).unwrap().ino();
    // A marker only survives if the second import reuses the directory instead of unpacking.
    fs::write(base_dir.join("marker"), b"").unwrap();
    let b = store.import_oci_layout("second", &second).unwrap();
    assert_eq!(b.layer_dirs[0], base_dir);
    assert_ne!(a.layer_dirs[1], b.layer_dirs[1]);
    assert!(base_dir.join("marker").exists());
    assert_eq!(
        fs::metadata(base_dir.join("etc/os-release")).unwrap().ino(),
        inode
    );
    assert_eq!(count(&fx.path("store/layers")), 3);
    assert!(b.layer_dirs[1].join("b").is_file() && !b.layer_dirs[1].join("a").exists());
    // Re-importing the same image is idempotent.
    assert_eq!(store.import_oci_layout("first", &first).unwrap(), a);
    assert_eq!(count(&fx.path("store/layers")), 3);
}

#[test]
fn plain_gzip_and_zstd_layers_stack_in_order() {
    let fx = Fixture::new();
    let layers = [
        layer(
            &[
                TarEntry::file("plain", b"p"),
                TarEntry::file("shadowed", b"1"),
            ],
            LayerCompression::None,
        ),
        layer(
            &[
                TarEntry::file("gzip", b"g"),
                TarEntry::file("shadowed", b"2"),
            ],
            LayerCompression::Gzip,
        ),
        layer(&[TarEntry::file("zstd", b"z")], LayerCompression::Zstd),
    ];
    let (layout, _) = layout_with(&fx, "layout", &layers);
    let image = fx.store().import_oci_layout("stack", &layout).unwrap();
    assert_eq!(image.layer_dirs.len(), 3);
    assert_eq!(fs::read(image.layer_dirs[0].join("plain")).unwrap(), b"p");
    assert_eq!(fs::read(image.layer_dirs[1].join("gzip")).unwrap(), b"g");
    assert_eq!(
        fs::read(image.layer_dirs[1].join("shadowed")).unwrap(),
        b"2"
    );
    assert_eq!(fs::read(image.layer_dirs[2].join("zstd")).unwrap(), b"z");
}

#[test]
fn truncated_compressed_streams_leave_nothing_behind() {
    let fx = Fixture::new();
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let tar = tar_from_entries(&[TarEntry::file("big", &big)]).unwrap();
    let store = fx.store();
    for (i, compression) in [LayerCompression::Gzip, LayerCompression::Zstd]
        .into_iter()
        .enumerate()
    {
        let mut blob = LayerBlob::from_tar(&tar, compression).unwrap();
        // The blob itself is consistent with its descriptor; the stream inside is cut short.
        blob.data.truncate(blob.data.len() / 2);
        let (layout, _) = layout_with(&fx, &format!("layout{i}"), &[blob]);
        let err = store.import_oci_layout("cut", &layout).unwrap_err();
        assert!(
            matches!(err, StoreError::Unpack { .. }),
            "{compression:?}: {err}"
        );
        assert_nothing_imported(store.root());
    }
}

#[test]
fn wrong_diff_id_is_refused() {
    let fx = Fixture::new();
    let mut blob = layer(&[TarEntry::file("f", b"x")], LayerCompression::Gzip);
    blob.diff_id = LayerBlob::from_tar(
        &tar_from_entries(&[TarEntry::file("f", b"y")]).unwrap(),
        LayerCompression::None,
    )
    .unwrap()
    .diff_id;
    let (layout, _) = layout_with(&fx, "layout", &[blob]);
    let store = fx.store();
    let err = store.import_oci_layout("img", &layout).unwrap_err();
    assert!(matches!(err, StoreError::DiffIdMismatch { .. }), "{err}");
    assert_nothing_imported(store.root());
}

#[test]
fn failed_reimport_keeps_the_previous_image() {
    let fx = Fixture::new();
    let (good, good_digest) = layout_with(
        &fx,
        "good",
        &[layer(&[TarEntry::file("v", b"1")], LayerCompression::Gzip)],
    );
    let (bad, _) = layout_with(
        &fx,
        "bad",
        &[layer(
            &[TarEntry::file("../v", b"2")],
            LayerCompression::Gzip,
        )],
    );
    let store = fx.store();
    store.import_oci_layout("app", &good).unwrap();
    assert!(store.import_oci_layout("app", &bad).is_err());
    assert_eq!(store.image("app").unwrap().manifest_digest, good_digest);
}

#[test]
fn image_lookup_errors_are_clear() {
    let fx = Fixture::new();
    let store = fx.store();
    let err = store.image("nope").unwrap_err();
    assert!(err.to_string().contains("no image named `nope`"), "{err}");
    assert!(matches!(store.image("../etc"), Err(StoreError::Ref(_))));
    assert!(store.import_oci_layout("bad/name", &fx.path("x")).is_err());

    let (layout, _) = layout_with(
        &fx,
        "layout",
        &[layer(&[TarEntry::file("f", b"x")], LayerCompression::Gzip)],
    );
    let image = store.import_oci_layout("img", &layout).unwrap();
    fs::remove_dir_all(&image.layer_dirs[0]).unwrap();
    let err = store.image("img").unwrap_err();
    assert!(matches!(err, StoreError::MissingLayer { .. }), "{err}");
    assert!(err.to_string().contains("re-import"), "{err}");
}

#[test]
fn not_a_layout_is_refused() {
    let fx = Fixture::new();
    fs::create_dir_all(fx.path("empty")).unwrap();
    let err = fx
        .store()
        .import_oci_layout("img", &fx.path("empty"))
        .unwrap_err();
    assert!(err.to_string().contains("oci-layout"), "{err}");
    fs::write(
        fx.path("empty/oci-layout"),
        br#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    let err = fx
        .store()
        .import_oci_layout("img", &fx.path("empty"))
        .unwrap_err();
    assert!(err.to_string().contains("2.0.0"), "{err}");
}

#[test]
fn open_removes_crash_leftovers_from_tmp() {
    let fx = Fixture::new();
    let store = fx.store();
    let leftover = store.root().join("tmp/layer-123");
    fs::create_dir_all(leftover.join("usr/bin")).unwrap();
    fs::write(leftover.join("usr/bin/half"), b"").unwrap();
    fs::set_permissions(
        leftover.join("usr"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    fs::write(store.root().join("tmp/blob-1"), b"partial").unwrap();
    drop(store);
    let store = fx.store();
    assert_eq!(count(&store.root().join("tmp")), 0);
}

#[test]
fn opening_the_store_again_keeps_scratch_space_in_use() {
    let fx = Fixture::new();
    let store = fx.store();
    // An import in progress in one thread...
    let busy = store.scratch_path("pull");
    fs::create_dir_all(busy.join("blobs")).unwrap();
    fs::write(store.root().join("tmp/blob-1"), b"crash leftover").unwrap();
    // ...while another thread opens the store (a background pull retry, an API request).
    let again = fx.store();
    assert!(busy.join("blobs").is_dir());
    assert_eq!(count(&again.root().join("tmp")), 1);
}

#[test]
fn holds_layout_only_for_the_same_intact_image() {
    let fx = Fixture::new();
    let store = fx.store();
    let (a, _) = layout_with(
        &fx,
        "a",
        &[layer(&[TarEntry::file("f", b"a")], LayerCompression::Gzip)],
    );
    let (b, _) = layout_with(
        &fx,
        "b",
        &[layer(&[TarEntry::file("f", b"b")], LayerCompression::Gzip)],
    );
    assert!(!store.holds_layout("img", &a), "nothing imported yet");
    let image = store.import_oci_layout("img", &a).unwrap();
    assert!(store.holds_layout("img", &a));
    assert!(
        !store.holds_layout("img", &b),
        "another image under the same name"
    );
    assert!(!store.holds_layout("other", &a));
    // A damaged stored image is not "held": it gets imported again.
    fs::remove_dir_all(&image.layer_dirs[0]).unwrap();
    assert!(!store.holds_layout("img", &a));
}
