//! Importing image archives: `oci-archive` (a tar of a layout) and `docker-archive` (`docker
//! save` format, written by hand here), and refusing hostile archive entries. No root needed.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use berth_agent::manifest::ImageFormat;
use berth_agent::oci::{tar_directory, tar_from_entries, write_layout, LayoutImage, TarEntry};
use berth_agent::store::archive::ArchiveError;
use berth_agent::store::digest::sha256_of;
use berth_agent::store::{Store, StoreError};

fn tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::write(tree.join("bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
    fs::write(tree.join("motd"), "welcome\n").unwrap();
    tree
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn oci_archive_of_a_written_layout_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let image = LayoutImage {
        cmd: vec!["/bin/hello".into()],
        ..LayoutImage::default()
    };
    let info = write_layout(&tree(tmp.path()), &layout, &image).unwrap();
    let archive = tmp.path().join("web.tar");
    fs::write(&archive, tar_directory(&layout, Vec::new()).unwrap()).unwrap();

    let store = Store::open(&tmp.path().join("store")).unwrap();
    let stored = store
        .import("web", ImageFormat::OciArchive, &archive)
        .unwrap();
    assert_eq!(stored.manifest_digest, info.manifest_digest);
    assert_eq!(stored.config.cmd, ["/bin/hello"]);
    assert_eq!(
        fs::read_to_string(stored.layer_dirs[0].join("motd")).unwrap(),
        "welcome\n"
    );
    assert_eq!(store.image("web").unwrap(), stored);
    assert_eq!(
        count(&tmp.path().join("store/tmp")),
        0,
        "staging left behind"
    );
}

/// A `docker save` archive of `layers` (uncompressed layer tars), in the legacy layout:
/// `<id>/layer.tar`, `<config hex>.json`, `manifest.json`; `extra` entries are appended.
fn docker_archive(
    layers: &[(&str, Vec<u8>)],
    diff_ids: &[String],
    extra: Vec<TarEntry>,
) -> Vec<u8> {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/hello"], "Env": ["A=1"] },
        "container_config": { "Hostname": "ignored" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string();
    let config_name = format!(
        "{}.json",
        sha256_of(config.as_bytes()).trim_start_matches("sha256:")
    );
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["web:latest"],
        "Layers": layers.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
    }])
    .to_string();
    let mut entries = vec![
        TarEntry::file("manifest.json", manifest.as_bytes()),
        TarEntry::file(&config_name, config.as_bytes()),
    ];
    for (path, data) in layers {
        if !data.is_empty() {
            entries.push(TarEntry::dir(path.rsplit_once('/').unwrap().0));
            entries.push(TarEntry::file(path, data));
        }
    }
    entries.extend(extra);
    tar_from_entries(&entries).unwrap()
}

fn layer_tar() -> Vec<u8> {
    tar_from_entries(&[
        TarEntry::dir("bin"),
        TarEntry::file("bin/hello", b"#!/bin/sh\necho hi\n"),
        TarEntry::file("motd", b"welcome\n"),
    ])
    .unwrap()
}

#[test]
fn docker_archive_imports_with_shared_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = layer_tar();
    let top = tar_from_entries(&[TarEntry::file("top", b"top\n")]).unwrap();
    let diff_ids = vec![sha256_of(&layer), sha256_of(&top), sha256_of(&layer)];
    // The third layer is the first one again, shared through a symlink as `docker save` does.
    let archive_bytes = docker_archive(
        &[
            ("aaa/layer.tar", layer.clone()),
            ("bbb/layer.tar", top),
            ("ccc/layer.tar", Vec::new()),
        ],
        &diff_ids,
        vec![
            TarEntry::dir("ccc"),
            TarEntry::symlink("ccc/layer.tar", "../aaa/layer.tar"),
        ],
    );
    let archive = tmp.path().join("web.tar");
    fs::write(&archive, archive_bytes).unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let stored = store
        .import("web", ImageFormat::DockerArchive, &archive)
        .unwrap();
    assert_eq!(stored.config.cmd, ["/bin/hello"]);
    assert_eq!(stored.config.env, ["A=1"]);
    assert_eq!(stored.layer_dirs.len(), 3);
    assert_eq!(
        fs::read_to_string(stored.layer_dirs[0].join("bin/hello")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        fs::read_to_string(stored.layer_dirs[1].join("top")).unwrap(),
        "top\n"
    );
    assert!(stored.layer_dirs[2].join("motd").is_file());
    assert_eq!(store.image("web").unwrap(), stored);
    assert_eq!(
        count(&tmp.path().join("store/tmp")),
        0,
        "staging left behind"
    );
}

#[test]
fn docker_archive_layers_must_match_the_config_diff_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = layer_tar();
    let wrong = sha256_of(b"something else");
    let archive = tmp.path().join("web.tar");
    fs::write(
        &archive,
        docker_archive(
            &[("aaa/layer.tar", layer)],
            std::slice::from_ref(&wrong),
            Vec::new(),
        ),
    )
    .unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    match store.import_docker_archive("web", &archive) {
        Err(StoreError::Archive {
            source: ArchiveError::DiffIdMismatch {
                expected, index, ..
            },
            ..
        }) => {
            assert_eq!(expected, wrong);
            assert_eq!(index, 0);
        }
        other => panic!("expected a diff_id mismatch, got {other:?}"),
    }
    assert_eq!(store.list().unwrap(), Vec::<String>::new());
    assert_eq!(count(&tmp.path().join("store/tmp")), 0);
    assert_eq!(count(&tmp.path().join("store/layers")), 0);

    // A layer listed in manifest.json but absent from the archive.
    fs::write(
        &archive,
        docker_archive(
            &[("zzz/layer.tar", Vec::new())],
            &[sha256_of(b"")],
            Vec::new(),
        ),
    )
    .unwrap();
    let err = store.import_docker_archive("web", &archive).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("`zzz/layer.tar`, which is not a file"),
        "{chain}"
    );
}

#[test]
fn hostile_archive_entries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cases: Vec<(&str, Vec<TarEntry>, &str)> = vec![
        ("dotdot", vec![TarEntry::file("../../evil", b"x")], "`..`"),
        ("absolute", vec![TarEntry::file("/evil", b"x")], "absolute"),
        (
            "symlink-out",
            vec![TarEntry::symlink("manifest.json", "../../../etc/passwd")],
            "leaves the archive",
        ),
        (
            "hardlink-out",
            vec![TarEntry::hardlink("x", "../evil")],
            "leaves the archive",
        ),
        (
            "dangling",
            vec![TarEntry::symlink("x", "nowhere")],
            "is not a file of the archive",
        ),
        (
            "duplicate",
            vec![TarEntry::file("a", b"1"), TarEntry::file("a", b"2")],
            "two entries",
        ),
        (
            "device",
            vec![TarEntry::CharDevice {
                path: "null".into(),
                major: 1,
                minor: 3,
            }],
            "only files, directories and links",
        ),
    ];
    for (name, entries, fragment) in cases {
        let archive = tmp.path().join(format!("{name}.tar"));
        fs::write(&archive, tar_from_entries(&entries).unwrap()).unwrap();
        for format in [ImageFormat::OciArchive, ImageFormat::DockerArchive] {
            let err = store.import("web", format, &archive).unwrap_err();
            let mut chain = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                chain.push_str(&format!(": {s}"));
                source = s.source();
            }
            assert!(chain.contains(fragment), "{name}: {chain}");
        }
    }
    assert!(!tmp.path().join("evil").exists());
    assert!(!Path::new("/evil").exists());
    assert_eq!(count(&tmp.path().join("store/tmp")), 0);
    assert_eq!(store.list().unwrap(), Vec::<String>::new());
}
