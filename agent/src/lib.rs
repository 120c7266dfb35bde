//! berth management agent library.
//!
//! `berthd` (the daemon PID 1 starts) and `berthctl` (the operator's CLI) are thin binaries
//! over these modules; `berth-image` uses the same manifest and OCI code at build time so an
//! image is seeded with exactly what the agent reads at boot.

pub mod api;
pub mod config_source;
pub mod console;
pub mod imagectl;
pub mod manifest;
pub mod net;
pub mod oci;
pub mod procstat;
pub mod registry;
pub mod runtime;
pub mod store;
pub mod supervisor;
pub mod timeline;
