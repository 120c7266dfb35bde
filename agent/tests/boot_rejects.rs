//! Host integration test: berthd booted on EVERY invalid manifest of tests/data/manifests/invalid
//! (and on a generated manifest over 1 MiB) refuses it the way `berthctl validate` does — the
//! same `file:line:column: message` and hint on its console — starts no container, writes no
//! saved manifest, and stays up until SIGTERM.
//!
//! Needs root: each berthd runs in its own UTS and network namespaces, like runtime_berthd.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use berth_agent::manifest::MAX_MANIFEST_BYTES;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const REJECTED: &str = "berth: manifest rejected, no containers started";

/// What `berthctl validate FILE` prints on stderr (it must fail).
fn validate(file: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .arg("validate")
        .arg(file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "validate accepted {}",
        file.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Boot berthd on `manifest` with an empty state directory until it reports the manifest
/// rejected, then SIGTERM it; its console lines.
fn boot(manifest: &Path, state: &Path) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berthd"));
    cmd.arg("--manifest")
        .arg(manifest)
        .arg("--state-dir")
        .arg(state)
        .arg("--api-socket")
        .arg(state.with_extension("sock"))
        .arg("--run-dir")
        .arg(state.join("run"))
        .args(["--config-sources", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    support::own_namespaces(&mut cmd, false);
    let mut child = cmd.spawn().unwrap();
    let rx = support::console_lines(&mut child);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line == REJECTED;
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let still_up = child.try_wait().unwrap().is_none();
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    seen.extend(rx.iter());
    assert!(
        still_up,
        "{}: berthd exited on its own; console:\n{}",
        manifest.display(),
        seen.join("\n")
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{}: berthd did not exit cleanly on SIGTERM ({status:?}); console:\n{}",
        manifest.display(),
        seen.join("\n")
    );
    seen
}

/// Boot on `file` and check everything the refusal promises; `Err` says what went wrong.
fn check(file: &Path) -> Result<(), String> {
    // Each fixture is copied as DIR/manifest.toml, DIR named after it.
    let name = file
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let expected = validate(file);
    let first = expected.lines().next().unwrap_or_default();
    let at = format!("{}:", file.display());
    if !first.starts_with(&at)
        || first
            .split(':')
            .nth(1)
            .and_then(|l| l.parse::<usize>().ok())
            .is_none()
    {
        return Err(format!(
            "{name}: validate's error has no file:line:column: {first}"
        ));
    }
    let state = file.with_extension("state");
    let seen = boot(file, &state);
    let console = seen.join("\n");
    let refusal = format!("berth: error: {first} (manifest source=image refused)");
    let Some(at) = seen.iter().position(|l| *l == refusal) else {
        return Err(format!(
            "{name}: the console does not say what validate says:\n  validate: {first}\n  console:\n{console}"
        ));
    };
    // validate's hint line, when it prints one, follows the error on the console too.
    if let Some(hint) = expected
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("  hint: "))
    {
        if seen.get(at + 1).map(String::as_str) != Some(&format!("berth: hint: {hint}")) {
            return Err(format!(
                "{name}: no hint line after the error:\n  validate: {hint}\n  console:\n{console}"
            ));
        }
    }
    if !seen.iter().any(|l| l == REJECTED) {
        return Err(format!("{name}: no rejection line:\n{console}"));
    }
    if seen
        .iter()
        .any(|l| l.contains("container=") || l.starts_with("berth: ready"))
    {
        return Err(format!("{name}: a container was started:\n{console}"));
    }
    if state.join("manifest.toml").exists() {
        return Err(format!("{name}: the refused manifest was saved"));
    }
    let containers = state.join("containers");
    if containers.exists() && fs::read_dir(&containers).unwrap().next().is_some() {
        return Err(format!("{name}: container directories were created"));
    }
    Ok(())
}

#[test]
fn berthd_refuses_every_invalid_manifest_at_boot_like_validate() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/manifests/invalid");
    let tmp = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            // Each in its own directory: image sources are relative to it.
            let dir = tmp.path().join(p.file_stem().unwrap());
            fs::create_dir(&dir).unwrap();
            let copy = dir.join("manifest.toml");
            fs::copy(&p, &copy).unwrap();
            copy
        })
        .collect();
    assert!(files.len() >= 100, "the corpus shrank: {}", files.len());

    // Over 1 MiB, refused by its size before parsing: it ends in a TOML syntax error that a
    // parser would report instead.
    let huge_dir = tmp.path().join("huge");
    fs::create_dir(&huge_dir).unwrap();
    let huge = huge_dir.join("manifest.toml");
    let mut text = String::from("version = 1\n");
    while (text.len() as u64) <= MAX_MANIFEST_BYTES + 4096 {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    text.push_str("[broken\n");
    fs::write(&huge, &text).unwrap();
    let said = validate(&huge);
    assert!(
        said.starts_with(&format!(
            "{}:1:1: the manifest is {} bytes (1.0 MiB); the limit is 1048576 bytes (1 MiB)",
            huge.display(),
            text.len()
        )),
        "{said}"
    );
    files.push(huge);

    files.sort();
    let chunks: Vec<Vec<PathBuf>> = files
        .chunks(files.len().div_ceil(4))
        .map(<[PathBuf]>::to_vec)
        .collect();
    let workers: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                chunk
                    .iter()
                    .filter_map(|f| check(f).err())
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
