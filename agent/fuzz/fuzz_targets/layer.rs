//! The layer unpacker on arbitrary tar streams: never a panic, and nothing is ever created
//! outside the destination directory (traversal, symlinks, hardlinks are confined or refused).
#![no_main]

use berth_agent::store::layerfs::RecordingLayerFs;
use berth_agent::store::unpack::unpack_layer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(root) = tempfile::tempdir() else {
        return;
    };
    let dest = root.path().join("layer");
    if std::fs::create_dir(&dest).is_err() {
        return;
    }
    let _ = unpack_layer(data, &dest, &RecordingLayerFs::new());
    // The only thing in `root` is `layer`.
    let names: Vec<_> = std::fs::read_dir(root.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec![std::ffi::OsString::from("layer")], "escaped the layer");
});
