//! Host integration tests of registry pulls against a real registry on loopback (Debian's
//! `docker-registry`, images pushed with `skopeo` from OCI layouts built here): layer sharing,
//! resuming an interrupted download, digest pins, multi-arch indexes, basic auth and the
//! errors an operator sees.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use berth_agent::oci::{
    tar_from_entries, write_layout_from_layers, LayerBlob, LayerCompression, LayoutImage, TarEntry,
};
use berth_agent::registry::{self, PullError, PullEvent, PullOptions, RegistryRef};
use berth_agent::store::Store;
use berth_tests::registry::Registry;

fn layer(files: &[(&str, &[u8])]) -> LayerBlob {
    let entries: Vec<TarEntry> = files.iter().map(|(p, d)| TarEntry::file(p, d)).collect();
    LayerBlob::from_tar(&tar_from_entries(&entries).unwrap(), LayerCompression::Gzip).unwrap()
}

/// A big-ish incompressible base layer (so a download can be cut in half) shared by images.
fn base_layer() -> LayerBlob {
    let mut data = Vec::with_capacity(3 << 20);
    let mut x: u32 = 12345;
    for _ in 0..(3 << 20) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        data.push((x >> 16) as u8);
    }
    layer(&[("base/blob", &data)])
}

fn layout(dir: &Path, name: &str, layers: &[LayerBlob]) -> (PathBuf, Vec<String>) {
    let out = dir.join(name);
    let info = write_layout_from_layers(&out, layers, &LayoutImage::default()).unwrap();
    (out, info.layer_digests)
}

fn pull(
    store: &Store,
    name: &str,
    reference: &str,
    options: &PullOptions,
) -> (
    Result<berth_agent::store::StoredImage, PullError>,
    Vec<PullEvent>,
) {
    let mut events = Vec::new();
    let r = RegistryRef::parse(reference).unwrap();
    let result = registry::pull(store, name, &r, options, &mut |e| events.push(e));
    (result, events)
}

fn insecure() -> PullOptions {
    PullOptions {
        insecure: true,
        ..PullOptions::default()
    }
}

fn downloaded(events: &[PullEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            PullEvent::Downloaded { digest } => Some(digest.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn pulls_share_layers_resume_and_verify() {
    let reg = Registry::start(None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (a, a_layers) = layout(tmp.path(), "a", &[base_layer(), layer(&[("app", b"a\n")])]);
    let (b, b_layers) = layout(tmp.path(), "b", &[base_layer(), layer(&[("app", b"b\n")])]);
    assert_eq!(a_layers[0], b_layers[0], "same base layer");
    reg.push(&a, "demo/a:1").unwrap();
    reg.push(&b, "demo/b:1").unwrap();

    let store = Store::open(&tmp.path().join("store")).unwrap();
    let ref_a = format!("{}/demo/a:1", reg.host());
    let (image, events) = pull(&store, "a", &ref_a, &insecure());
    let image = image.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(image.layer_dirs.len(), 2);
    assert_eq!(
        fs::read(image.layer_dirs[1].join("app")).unwrap(),
        b"a\n".to_vec()
    );
    assert!(image.layer_dirs[0].join("base/blob").is_file());
    // Config + 2 layers downloaded, nothing left in downloads/ or tmp/.
    assert_eq!(downloaded(&events).len(), 3, "{events:#?}");
    assert_eq!(
        fs::read_dir(store.downloads_dir().unwrap())
            .unwrap()
            .count(),
        0
    );
    assert_eq!(store.source_of("a").as_deref(), Some(ref_a.as_str()));

    // b shares the base layer: it is not downloaded again.
    let (image_b, events) = pull(
        &store,
        "b",
        &format!("{}/demo/b:1", reg.host()),
        &insecure(),
    );
    image_b.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        events.contains(&PullEvent::Present {
            digest: b_layers[0].clone()
        }),
        "{events:#?}"
    );
    assert!(!downloaded(&events).contains(&b_layers[0]));

    // An interrupted download resumes from where it stopped.
    let store2 = Store::open(&tmp.path().join("store2")).unwrap();
    let blob = a
        .join("blobs/sha256")
        .join(a_layers[0].trim_start_matches("sha256:"));
    let full = fs::read(&blob).unwrap();
    let partial = store2
        .downloads_dir()
        .unwrap()
        .join(a_layers[0].trim_start_matches("sha256:"));
    fs::write(&partial, &full[..full.len() / 2]).unwrap();
    let (image, events) = pull(&store2, "a", &ref_a, &insecure());
    image.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        events.contains(&PullEvent::Downloading {
            digest: a_layers[0].clone(),
            offset: (full.len() / 2) as u64,
            size: full.len() as u64,
        }),
        "{events:#?}"
    );

    // A corrupt partial file is caught by the digest, thrown away, and the retry succeeds.
    let store3 = Store::open(&tmp.path().join("store3")).unwrap();
    let partial = store3
        .downloads_dir()
        .unwrap()
        .join(a_layers[0].trim_start_matches("sha256:"));
    fs::write(&partial, vec![0u8; full.len() / 2]).unwrap();
    let (result, _) = pull(&store3, "a", &ref_a, &insecure());
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{err}");
    assert!(!partial.exists(), "the corrupt download was kept");
    assert!(
        store3.image("a").is_err(),
        "nothing imported from bad content"
    );
    let (result, _) = pull(&store3, "a", &ref_a, &insecure());
    result.unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn pins_indexes_and_errors() {
    let mut reg = Registry::start(None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (amd, _) = layout(tmp.path(), "amd", &[layer(&[("arch", b"amd64\n")])]);
    let (arm, _) = layout(tmp.path(), "arm", &[layer(&[("arch", b"arm64\n")])]);
    let multi = multi_arch_layout(tmp.path(), &[(&arm, "arm64"), (&amd, "amd64")]);
    reg.push(&multi, "demo/multi:1").unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();

    // A multi-arch index resolves to linux/amd64.
    let (image, _) = pull(
        &store,
        "multi",
        &format!("{}/demo/multi:1", reg.host()),
        &insecure(),
    );
    let image = image.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fs::read(image.layer_dirs[0].join("arch")).unwrap(),
        b"amd64\n".to_vec()
    );

    // A pinned digest that matches works; one that does not is refused, nothing stored.
    let index_digest = top_digest(&multi);
    let pinned = format!("{}/demo/multi@{index_digest}", reg.host());
    let (image, _) = pull(&store, "pinned", &pinned, &insecure());
    image.unwrap_or_else(|e| panic!("{e}"));
    let wrong = format!("{}/demo/multi:1@sha256:{}", reg.host(), "0".repeat(64));
    let (result, _) = pull(&store, "wrong", &wrong, &insecure());
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&"0".repeat(64)), "{err}");
    assert!(store.image("wrong").is_err());
    // Unknown tag: not found, named.
    let (result, _) = pull(
        &store,
        "nope",
        &format!("{}/demo/multi:2", reg.host()),
        &insecure(),
    );
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("demo/multi:2"), "{err}");
    assert!(err.is_retryable(), "an image may be pushed later");

    // Registry down: unreachable (retryable), then fine once it is back.
    reg.stop();
    let (result, _) = pull(
        &store,
        "late",
        &format!("{}/demo/multi:1", reg.host()),
        &insecure(),
    );
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable());
    reg.resume().unwrap();
    let (result, _) = pull(
        &store,
        "late",
        &format!("{}/demo/multi:1", reg.host()),
        &insecure(),
    );
    result.unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn basic_auth_is_required_and_used() {
    let reg = Registry::start(Some(("berth", "s3cret"))).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = layout(tmp.path(), "img", &[layer(&[("f", b"x")])]);
    reg.push(&img, "private/app:1").unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let reference = format!("{}/private/app:1", reg.host());

    let (result, _) = pull(&store, "app", &reference, &insecure());
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::AuthRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("[registries."), "{err}");

    let wrong = PullOptions {
        credentials: Some(("berth".into(), "wrong".into())),
        ..insecure()
    };
    let (result, _) = pull(&store, "app", &reference, &wrong);
    assert!(matches!(result.unwrap_err(), PullError::AuthRefused { .. }));

    let right = PullOptions {
        credentials: Some(("berth".into(), "s3cret".into())),
        ..insecure()
    };
    let (result, _) = pull(&store, "app", &reference, &right);
    result.unwrap_or_else(|e| panic!("{e}"));
}

/// The digest of the manifest or index `index.json` of `layout` points at.
fn top_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// One layout holding an image index over the images of `parts` (each a one-image layout),
/// with their platforms.
fn multi_arch_layout(dir: &Path, parts: &[(&Path, &str)]) -> PathBuf {
    let out = dir.join("multi");
    fs::create_dir_all(out.join("blobs/sha256")).unwrap();
    let mut manifests = Vec::new();
    for (part, arch) in parts {
        for entry in fs::read_dir(part.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            fs::copy(
                entry.path(),
                out.join("blobs/sha256").join(entry.file_name()),
            )
            .unwrap();
        }
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(part.join("index.json")).unwrap()).unwrap();
        let mut desc = index["manifests"][0].clone();
        desc.as_object_mut().unwrap().remove("annotations");
        desc["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        manifests.push(desc);
    }
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    })
    .to_string();
    let digest = berth_agent::store::digest::sha256_of(nested.as_bytes());
    fs::write(
        out.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
        &nested,
    )
    .unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": nested.len(),
        }],
    });
    fs::write(out.join("index.json"), top.to_string()).unwrap();
    fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    out
}

#[test]
fn images_lists_and_prune_keeps_only_what_is_declared_or_mounted() {
    use berth_agent::imagectl;
    use berth_agent::manifest::Manifest;

    let reg = Registry::start(None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (a, a_layers) = layout(tmp.path(), "a", &[base_layer(), layer(&[("app", b"a\n")])]);
    let (b, b_layers) = layout(tmp.path(), "b", &[base_layer(), layer(&[("app", b"b\n")])]);
    reg.push(&a, "demo/a:1").unwrap();
    reg.push(&b, "demo/b:1").unwrap();
    let state = tmp.path().join("state");
    let manifest_text = |images: &[&str]| {
        let mut text = format!(
            "version = 1\n[registries.\"{}\"]\ninsecure = true\n[images]\n",
            reg.host()
        );
        for i in images {
            text.push_str(&format!(
                "{i} = {{ source = \"registry:{}/demo/{i}:1\" }}\n",
                reg.host()
            ));
        }
        text.push_str("[containers.web]\nimage = \"a\"\n");
        text
    };
    let both = tmp.path().join("both.toml");
    fs::write(&both, manifest_text(&["a", "b"])).unwrap();
    let mut out = Vec::new();
    imagectl::pull(&state, &both, "a", &mut out).unwrap();
    imagectl::pull(&state, &both, "b", &mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.contains("already in the store"), "{text}");
    let err = imagectl::pull(&state, &both, "web", &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("\"a\", \"b\""), "{err}");

    let m = Manifest::load(&both).unwrap();
    let mut out = Vec::new();
    imagectl::images(&state, Some(&m), true, &mut out).unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(listed[0]["name"], "a");
    assert_eq!(listed[0]["used_by"], serde_json::json!(["web"]));
    assert_eq!(listed[1]["used_by"], serde_json::json!([]));
    assert!(listed[1]["source"].as_str().unwrap().ends_with("/demo/b:1"));
    assert!(listed[0]["size"].as_u64().unwrap() > 1 << 20);

    // b's own layer is mounted by a process in another mount namespace: kept while it is.
    let store = Store::open(&state.join("store")).unwrap();
    let b_top = store.image("b").unwrap().layer_dirs[1].clone();
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mut holder = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t overlay overlay -o lowerdir={}:{} {} && echo mounted && exec sleep 60",
            b_top.display(),
            store.image("b").unwrap().layer_dirs[0].display(),
            mnt.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "mounted");

    let only_a = tmp.path().join("a.toml");
    fs::write(&only_a, manifest_text(&["a"])).unwrap();
    let m = Manifest::load(&only_a).unwrap();
    let mut out = Vec::new();
    imagectl::prune(&state, Some(&m), &mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.contains("removed image b"), "{text}");
    assert!(
        text.contains("kept 1 unreferenced layers still mounted"),
        "{text}"
    );
    assert!(b_top.is_dir());
    let _ = holder.kill();
    let _ = holder.wait();

    let mut out = Vec::new();
    imagectl::prune(&state, Some(&m), &mut out).unwrap();
    assert!(!b_top.exists(), "{}", String::from_utf8_lossy(&out));
    // a (and the base layer it shares with b) is intact; b's blobs are gone.
    let a_image = store.image("a").unwrap();
    assert!(a_image.layer_dirs[0].join("base/blob").is_file());
    assert!(store.blob_if_present(&a_layers[0]).is_some());
    assert!(store.blob_if_present(&b_layers[1]).is_none());
    assert!(store.image("b").is_err());
}

#[test]
fn https_registries_need_a_trusted_ca() {
    let reg = Registry::start_tls().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = layout(tmp.path(), "img", &[layer(&[("f", b"tls\n")])]);
    reg.push(&img, "secure/app:1").unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let reference = format!("{}/secure/app:1", reg.host());

    // A self-signed certificate is not trusted by the system bundle.
    let (result, _) = pull(&store, "app", &reference, &PullOptions::default());
    let err = result.unwrap_err();
    let text = berth_agent::runtime::init::error_chain(&err);
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(store.image("app").is_err());

    // Trusting its CA (`[registries."HOST"] ca`) makes it work, over HTTPS.
    let trusted = PullOptions {
        ca_pem: Some(reg.certificate().unwrap().to_string()),
        ..PullOptions::default()
    };
    let (result, _) = pull(&store, "app", &reference, &trusted);
    let image =
        result.unwrap_or_else(|e| panic!("{}", berth_agent::runtime::init::error_chain(&e)));
    assert_eq!(
        fs::read(image.layer_dirs[0].join("f")).unwrap(),
        b"tls\n".to_vec()
    );

    // A `ca` that is not PEM is refused before any connection.
    let bad = PullOptions {
        ca_pem: Some("not a certificate".into()),
        ..PullOptions::default()
    };
    let (result, _) = pull(&store, "app2", &reference, &bad);
    assert!(matches!(result.unwrap_err(), PullError::BadCa { .. }));
}

#[test]
fn token_auth_is_negotiated_from_the_registry_challenge() {
    use berth_tests::registry::TokenRegistry;
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = layout(tmp.path(), "img", &[layer(&[("f", b"token\n")])]);
    let reg = TokenRegistry::serve(&img, "robot", "hunter2").unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let reference = format!("{}/private/app:1", reg.host());

    // Anonymous: challenged, no token for nobody, refused with a hint.
    let (result, _) = pull(&store, "app", &reference, &insecure());
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::AuthRefused { .. }), "{err:?}");
    assert_eq!(reg.stats().served, 0);

    // With credentials the client trades them for a bearer token and pulls with it.
    let creds = PullOptions {
        credentials: Some(("robot".into(), "hunter2".into())),
        ..insecure()
    };
    let (result, _) = pull(&store, "app", &reference, &creds);
    let image =
        result.unwrap_or_else(|e| panic!("{}", berth_agent::runtime::init::error_chain(&e)));
    assert_eq!(
        fs::read(image.layer_dirs[0].join("f")).unwrap(),
        b"token\n".to_vec()
    );
    let stats = reg.stats();
    assert!(stats.tokens_issued >= 1, "{stats:?}");
    assert!(
        stats.served >= 3,
        "manifest, config and layer with the token: {stats:?}"
    );
}
