//! The agent's main loop: start the manifest's containers and watch them.
//!
//! INTERFACE STUB — owned by the runtime work.
