//! Writing OCI image layouts from a directory tree (used by `berth-image oci` and tests).
//!
//! INTERFACE STUB — owned by the store work.
