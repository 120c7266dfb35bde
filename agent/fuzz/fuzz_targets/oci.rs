//! The OCI documents berth reads from images and registries (index, manifest, config) and
//! registry references, on arbitrary bytes: errors, never panics.
#![no_main]

use std::path::Path;

use berth_agent::registry::RegistryRef;
use berth_agent::store::{layout, parse_config, parse_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = layout::parse_index(data, Path::new("index.json")).map(|i| {
        let _ = layout::choose(&i).map(|d| layout::entry_kind(d));
    });
    let _ = parse_manifest(data, "sha256:fuzz");
    let _ = parse_config(data, "sha256:fuzz");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(r) = RegistryRef::parse(text) {
            // What parses prints back to something that parses the same.
            assert_eq!(RegistryRef::parse(&r.to_string()).as_ref(), Ok(&r));
        }
    }
});
