//! The host manifest parser and validator on arbitrary bytes: never a panic, and every
//! rejection carries a location inside the text.
#![no_main]

use std::path::Path;

use berth_agent::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Manifest::parse_bytes(data, Path::new("fuzz.toml")) {
        Ok(m) => {
            // A valid manifest also resolves (or refuses) its images without panicking.
            let _ = m.resolve_images(Path::new("/nonexistent"));
        }
        Err(e) => {
            let lines = data.split(|b| *b == b'\n').count().max(1);
            assert!(e.line >= 1 && e.line <= lines + 1, "line {} of {lines}", e.line);
            assert!(!e.message.is_empty());
        }
    }
});
