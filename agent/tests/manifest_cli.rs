//! `berthctl validate` as operators run it: output lines and exit codes.

// Test helpers may fail loudly; clippy only exempts `#[test]` functions themselves.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn berthctl(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/manifests")
        .join(rel)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn valid_files_print_ok_and_exit_0() {
    let full = fixture("valid/full.toml");
    let minimal = fixture("valid/minimal.toml");
    let out = berthctl(&[
        "validate".as_ref(),
        "--no-images".as_ref(),
        full.as_os_str(),
        minimal.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: ok (2 containers, 2 images)\n{}: ok (0 containers, 0 images)\n",
            full.display(),
            minimal.display()
        )
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn invalid_file_prints_located_error_and_exits_1() {
    let bad = fixture("invalid/unknown-container-key.toml");
    let good = fixture("valid/minimal.toml");
    let out = berthctl(&[
        "validate".as_ref(),
        "--no-images".as_ref(),
        bad.as_os_str(),
        good.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let mut lines = stderr.lines();
    let first = lines.next().unwrap();
    assert!(
        first.starts_with(&format!("{}:7:1: unknown key `imagee`", bad.display())),
        "{stderr}"
    );
    assert!(lines.next().unwrap().starts_with("  hint: "), "{stderr}");
    // The other files are still checked.
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (0 containers, 0 images)\n", good.display())
    );
}

#[test]
fn image_sources_are_checked_relative_to_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("host.toml");
    std::fs::write(
        &manifest,
        "version = 1\n[images]\nbusybox = { source = \"oci-layout:images/busybox\" }\n[containers.a]\nimage = \"busybox\"\n",
    )
    .unwrap();

    // Missing layout: error at the source value, exit 1; --no-images skips the check.
    let out = berthctl(&["validate".as_ref(), manifest.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:3:22: image \"busybox\": no OCI image layout at ",
            manifest.display()
        )),
        "{stderr}"
    );
    let out = berthctl(&[
        "validate".as_ref(),
        "--no-images".as_ref(),
        manifest.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(0));

    // With a layout next to the manifest it passes, whatever the current directory.
    let layout = tmp.path().join("images/busybox");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        "{\"schemaVersion\":2,\"manifests\":[]}",
    )
    .unwrap();
    let out = berthctl(&["validate".as_ref(), manifest.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (1 container, 1 image)\n", manifest.display())
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(berthctl(&["validate".as_ref()]).status.code(), Some(2));
    assert_eq!(berthctl(&["frobnicate".as_ref()]).status.code(), Some(2));
    assert_eq!(berthctl(&[]).status.code(), Some(2));
    let out = berthctl(&["validate".as_ref(), "--bogus".as_ref(), "x.toml".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unreadable_file_is_an_error_not_a_panic() {
    let missing = fixture("valid/does-not-exist.toml");
    let out = berthctl(&["validate".as_ref(), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with(&format!(
        "{}:1:1: cannot read the manifest: ",
        missing.display()
    )));
}
