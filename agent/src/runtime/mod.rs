//! One container: namespaces, overlay rootfs, pivot_root, process start.
//!
//! INTERFACE STUB — owned by the runtime work.
